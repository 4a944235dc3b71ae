//! PCI addresses (BDF) and the sysfs facts about a PCI device that decide whether
//! ironvme may take it: vendor/device/class ids, bound driver, IOMMU group and the other
//! devices in that group.
//!
//! Everything is read under a root path ([`Sysfs::new`]), `/sys` in production
//! ([`Sysfs::system`]), so unit tests run over a fake tree in a temporary directory:
//!
//! ```text
//! <root>/bus/pci/devices/<BDF>/{vendor,device,class}     "0x1b36\n" ...
//! <root>/bus/pci/devices/<BDF>/driver -> .../drivers/<name>   (absent: unbound)
//! <root>/bus/pci/devices/<BDF>/iommu_group -> .../kernel/iommu_groups/<N>
//! <root>/kernel/iommu_groups/<N>/devices/<BDF> -> .../devices/<BDF>
//! ```

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A PCI address: domain, bus, device (slot) and function, written `0000:00:04.0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// PCI domain (segment). Usually 0; up to 32 bits wide (e.g. behind Intel VMD).
    pub domain: u32,
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0..=31.
    pub device: u8,
    /// Function number, 0..=7.
    pub function: u8,
}

/// Why a string is not a PCI address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a PCI address ({reason}); expected DDDD:BB:SS.F such as 0000:00:04.0, or BB:SS.F")]
pub struct BdfParseError {
    /// The string given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for Bdf {
    type Err = BdfParseError;

    /// Parses `DDDD:BB:SS.F` or `BB:SS.F` (domain 0), hexadecimal, case-insensitive.
    fn from_str(input: &str) -> Result<Bdf, BdfParseError> {
        let err = |reason| BdfParseError {
            input: input.to_string(),
            reason,
        };
        let s = input.trim();
        let (addr, function) = s.rsplit_once('.').ok_or_else(|| err("no `.function`"))?;
        let parts: Vec<&str> = addr.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, s] => (*d, *b, *s),
            [b, s] => ("0", *b, *s),
            _ => return Err(err("expected two or three `:`-separated fields before `.`")),
        };
        let hex = |field: &str, max_digits: usize, what| {
            if field.is_empty() || field.len() > max_digits || !field.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err(what));
            }
            u32::from_str_radix(field, 16).map_err(|_| err(what))
        };
        let domain = hex(domain, 8, "domain is not 1-8 hex digits")?;
        let bus = hex(bus, 2, "bus is not 1-2 hex digits")? as u8;
        let device = hex(device, 2, "device is not 1-2 hex digits")?;
        let function = hex(function, 1, "function is not one hex digit")?;
        if device > 0x1f {
            return Err(err("device number above 0x1f"));
        }
        if function > 7 {
            return Err(err("function number above 7"));
        }
        Ok(Bdf {
            domain,
            bus,
            device: device as u8,
            function: function as u8,
        })
    }
}

impl fmt::Display for Bdf {
    /// The canonical sysfs form, `0000:00:04.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// PCI class code of an NVMe controller: mass storage (0x01), non-volatile memory
/// (0x08), NVM Express programming interface (0x02).
pub const NVME_CLASS: u32 = 0x01_08_02;

/// Drivers whose presence in an IOMMU group does not spoil its viability for VFIO.
pub const VFIO_FRIENDLY_DRIVERS: [&str; 2] = ["vfio-pci", "pci-stub"];

/// A device in an IOMMU group, with the driver bound to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    /// Device name, normally a BDF.
    pub name: String,
    /// Bound driver, `None` if unbound.
    pub driver: Option<String>,
}

impl fmt::Display for GroupMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.driver {
            Some(d) => write!(f, "{} (driver {d})", self.name),
            None => write!(f, "{} (no driver)", self.name),
        }
    }
}

impl GroupMember {
    /// Whether this member keeps the group from being viable for VFIO: bound to a driver
    /// other than vfio-pci / pci-stub.
    pub fn blocks_vfio(&self) -> bool {
        self.driver
            .as_deref()
            .is_some_and(|d| !VFIO_FRIENDLY_DRIVERS.contains(&d))
    }
}

/// The sysfs facts about one PCI device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciDevice {
    /// Its address.
    pub bdf: Bdf,
    /// PCI vendor id.
    pub vendor: u16,
    /// PCI device id.
    pub device: u16,
    /// 24-bit class code (base class, subclass, programming interface).
    pub class: u32,
    /// Bound driver, `None` if unbound.
    pub driver: Option<String>,
    /// IOMMU group number, `None` if the device has none (IOMMU disabled).
    pub iommu_group: Option<u32>,
}

/// A sysfs tree: `/sys`, or a fake one for tests.
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Sysfs {
        Sysfs::system()
    }
}

impl Sysfs {
    /// The system's sysfs at `/sys`.
    pub fn system() -> Sysfs {
        Sysfs::new("/sys")
    }

    /// A sysfs tree rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/bus/pci/devices/<BDF>`.
    pub fn device_dir(&self, bdf: Bdf) -> PathBuf {
        self.root.join("bus/pci/devices").join(bdf.to_string())
    }

    /// `<root>/kernel/iommu_groups/<group>`.
    pub fn group_dir(&self, group: u32) -> PathBuf {
        self.root.join("kernel/iommu_groups").join(group.to_string())
    }

    /// Whether a PCI device with this address exists.
    pub fn exists(&self, bdf: Bdf) -> bool {
        self.device_dir(bdf).is_dir()
    }

    /// Reads every fact about `bdf`.
    ///
    /// Errors: the path and OS error of the first attribute that cannot be read or parsed
    /// (`NotFound` if the device does not exist).
    pub fn device(&self, bdf: Bdf) -> Result<PciDevice, SysfsError> {
        Ok(PciDevice {
            bdf,
            vendor: self.read_hex(bdf, "vendor")? as u16,
            device: self.read_hex(bdf, "device")? as u16,
            class: self.read_hex(bdf, "class")? & 0x00ff_ffff,
            driver: self.driver(bdf)?,
            iommu_group: self.iommu_group(bdf)?,
        })
    }

    /// The 24-bit class code (`class` attribute).
    pub fn class(&self, bdf: Bdf) -> Result<u32, SysfsError> {
        Ok(self.read_hex(bdf, "class")? & 0x00ff_ffff)
    }

    /// The bound driver's name (target of the `driver` symlink), `None` if unbound.
    pub fn driver(&self, bdf: Bdf) -> Result<Option<String>, SysfsError> {
        link_name(&self.device_dir(bdf).join("driver"))
    }

    /// The IOMMU group number (target of the `iommu_group` symlink), `None` if the
    /// device has no IOMMU group.
    pub fn iommu_group(&self, bdf: Bdf) -> Result<Option<u32>, SysfsError> {
        let path = self.device_dir(bdf).join("iommu_group");
        let Some(name) = link_name(&path)? else { return Ok(None) };
        name.parse().map(Some).map_err(|_| SysfsError::parse(&path, &name))
    }

    /// Every device in IOMMU group `group` (sorted by name), with its driver.
    pub fn group_members(&self, group: u32) -> Result<Vec<GroupMember>, SysfsError> {
        let dir = self.group_dir(group).join("devices");
        let entries = std::fs::read_dir(&dir).map_err(|e| SysfsError::io(&dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| SysfsError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let driver = link_name(&entry.path().join("driver"))?;
            out.push(GroupMember { name, driver });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Free 2 MiB hugepages (`kernel/mm/hugepages/hugepages-2048kB/free_hugepages`);
    /// 0 when the file is missing or unreadable.
    pub fn free_hugepages_2m(&self) -> u64 {
        let path = self.root.join("kernel/mm/hugepages/hugepages-2048kB/free_hugepages");
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn read_hex(&self, bdf: Bdf, attr: &str) -> Result<u32, SysfsError> {
        let path = self.device_dir(bdf).join(attr);
        let text = std::fs::read_to_string(&path).map_err(|e| SysfsError::io(&path, e))?;
        let t = text.trim();
        let digits = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")).unwrap_or(t);
        u32::from_str_radix(digits, 16).map_err(|_| SysfsError::parse(&path, t))
    }
}

/// The last component of a symlink's target; `None` if the link does not exist.
fn link_name(path: &Path) -> Result<Option<String>, SysfsError> {
    match std::fs::read_link(path) {
        Ok(target) => match target.file_name() {
            Some(n) => Ok(Some(n.to_string_lossy().into_owned())),
            None => Err(SysfsError::parse(path, &target.to_string_lossy())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SysfsError::io(path, e)),
    }
}

/// A sysfs attribute could not be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct SysfsError {
    /// The attribute's path.
    pub path: PathBuf,
    /// The OS error (`InvalidData` for unparsable contents).
    #[source]
    pub source: io::Error,
}

impl SysfsError {
    fn io(path: &Path, source: io::Error) -> SysfsError {
        SysfsError {
            path: path.to_path_buf(),
            source,
        }
    }

    fn parse(path: &Path, text: &str) -> SysfsError {
        let source = io::Error::new(io::ErrorKind::InvalidData, format!("unexpected contents `{text}`"));
        SysfsError {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Builds fake sysfs trees for host tests.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs tree in a temporary directory.
    pub(crate) struct FakeSysfs {
        pub(crate) dir: tempfile::TempDir,
    }

    impl FakeSysfs {
        pub(crate) fn new() -> FakeSysfs {
            FakeSysfs {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        pub(crate) fn sysfs(&self) -> Sysfs {
            Sysfs::new(self.dir.path())
        }

        /// Adds a device with the given ids; `driver` binds it, `group` puts it in an
        /// IOMMU group.
        pub(crate) fn add(
            &self,
            bdf: &str,
            vendor: u16,
            device: u16,
            class: u32,
            driver: Option<&str>,
            group: Option<u32>,
        ) {
            let root = self.dir.path();
            let dev = root.join("devices/pci0000:00").join(bdf);
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(dev.join("vendor"), format!("0x{vendor:04x}\n")).unwrap();
            std::fs::write(dev.join("device"), format!("0x{device:04x}\n")).unwrap();
            std::fs::write(dev.join("class"), format!("0x{class:06x}\n")).unwrap();
            let bus = root.join("bus/pci/devices");
            std::fs::create_dir_all(&bus).unwrap();
            symlink(&dev, bus.join(bdf)).unwrap();
            if let Some(d) = driver {
                self.bind(bdf, d);
            }
            if let Some(g) = group {
                let gdir = root.join("kernel/iommu_groups").join(g.to_string()).join("devices");
                std::fs::create_dir_all(&gdir).unwrap();
                symlink(&dev, gdir.join(bdf)).unwrap();
                symlink(
                    root.join("kernel/iommu_groups").join(g.to_string()),
                    dev.join("iommu_group"),
                )
                .unwrap();
            }
        }

        pub(crate) fn bind(&self, bdf: &str, driver: &str) {
            let root = self.dir.path();
            let drv = root.join("bus/pci/drivers").join(driver);
            std::fs::create_dir_all(&drv).unwrap();
            let link = root.join("devices/pci0000:00").join(bdf).join("driver");
            let _ = std::fs::remove_file(&link);
            symlink(&drv, link).unwrap();
        }

        pub(crate) fn set_free_hugepages(&self, n: u64) {
            let dir = self.dir.path().join("kernel/mm/hugepages/hugepages-2048kB");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("free_hugepages"), format!("{n}\n")).unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeSysfs;
    use super::*;

    fn bdf(s: &str) -> Bdf {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_formats_bdfs() {
        assert_eq!(
            bdf("0000:00:04.0"),
            Bdf {
                domain: 0,
                bus: 0,
                device: 4,
                function: 0
            }
        );
        assert_eq!(bdf("00:04.0").to_string(), "0000:00:04.0");
        assert_eq!(bdf("0001:3B:1f.7").to_string(), "0001:3b:1f.7");
        assert_eq!(bdf("10000:e1:00.0").to_string(), "10000:e1:00.0");
        assert_eq!(bdf(" 0000:00:05.0\n"), bdf("0:0:5.0"));
        for s in bdf_roundtrip_samples() {
            assert_eq!(bdf(s).to_string(), s);
        }
    }

    fn bdf_roundtrip_samples() -> [&'static str; 4] {
        ["0000:00:00.0", "0000:ff:1f.7", "abcd:12:0a.3", "0000:00:05.0"]
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        for (s, why) in [
            ("", "no `.function`"),
            ("nvme0", "no `.function`"),
            ("0000:00:04", "no `.function`"),
            ("0000:00:04.8", "function number above 7"),
            ("0000:00:20.0", "device number above 0x1f"),
            ("0000:00:04.x", "function is not one hex digit"),
            ("0000:100:04.0", "bus is not 1-2 hex digits"),
            ("0000:0g:04.0", "bus is not 1-2 hex digits"),
            ("a:b:c:d.0", "expected two or three `:`-separated fields before `.`"),
            ("04.0", "expected two or three `:`-separated fields before `.`"),
            ("/dev/nvme0n1", "no `.function`"),
            ("/dev/nvme0.1", "expected two or three `:`-separated fields before `.`"),
            ("0000:00:+4.0", "device is not 1-2 hex digits"),
        ] {
            let e = s.parse::<Bdf>().unwrap_err();
            assert_eq!(e.reason, why, "{s:?}");
            let msg = e.to_string();
            assert!(msg.contains(s) && msg.contains("0000:00:04.0"), "{msg}");
        }
    }

    #[test]
    fn reads_device_facts_from_a_fake_tree() {
        let f = FakeSysfs::new();
        f.add("0000:00:04.0", 0x1b36, 0x0010, NVME_CLASS, Some("nvme"), Some(3));
        f.add("0000:00:05.0", 0x1b36, 0x0010, NVME_CLASS, Some("vfio-pci"), Some(4));
        f.add("0000:00:06.0", 0x1b36, 0x0010, NVME_CLASS, None, None);
        let s = f.sysfs();
        let d = s.device(bdf("0000:00:04.0")).unwrap();
        assert_eq!((d.vendor, d.device, d.class), (0x1b36, 0x0010, NVME_CLASS));
        assert_eq!((d.driver.as_deref(), d.iommu_group), (Some("nvme"), Some(3)));
        assert_eq!(s.driver(bdf("0000:00:05.0")).unwrap().as_deref(), Some("vfio-pci"));
        assert_eq!(s.iommu_group(bdf("0000:00:05.0")).unwrap(), Some(4));
        let unbound = s.device(bdf("0000:00:06.0")).unwrap();
        assert_eq!((unbound.driver, unbound.iommu_group), (None, None));
        assert!(!s.exists(bdf("0000:00:07.0")));
        let e = s.device(bdf("0000:00:07.0")).unwrap_err();
        assert_eq!(e.source.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("0000:00:07.0/vendor"), "{e}");
    }

    #[test]
    fn lists_group_members_and_their_drivers() {
        let f = FakeSysfs::new();
        f.add("0000:01:00.0", 0x8086, 0x1234, NVME_CLASS, Some("vfio-pci"), Some(9));
        f.add("0000:01:00.1", 0x8086, 0x1235, 0x020000, Some("e1000e"), Some(9));
        f.add("0000:01:00.2", 0x8086, 0x1236, 0x0c0330, None, Some(9));
        let m = f.sysfs().group_members(9).unwrap();
        let names: Vec<String> = m.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "0000:01:00.0 (driver vfio-pci)",
                "0000:01:00.1 (driver e1000e)",
                "0000:01:00.2 (no driver)"
            ]
        );
        assert_eq!(
            m.iter().map(GroupMember::blocks_vfio).collect::<Vec<_>>(),
            [false, true, false]
        );
    }

    #[test]
    fn unparsable_attributes_name_the_file() {
        let f = FakeSysfs::new();
        f.add("0000:00:04.0", 0x1b36, 0x0010, NVME_CLASS, None, None);
        std::fs::write(f.dir.path().join("devices/pci0000:00/0000:00:04.0/class"), "bogus\n").unwrap();
        let e = f.sysfs().class(bdf("0000:00:04.0")).unwrap_err();
        assert_eq!(e.source.kind(), io::ErrorKind::InvalidData);
        assert!(
            e.to_string().contains("class") && e.to_string().contains("bogus"),
            "{e}"
        );
    }

    #[test]
    fn free_hugepages_default_to_zero() {
        let f = FakeSysfs::new();
        assert_eq!(f.sysfs().free_hugepages_2m(), 0);
        f.set_free_hugepages(12);
        assert_eq!(f.sysfs().free_hugepages_2m(), 12);
    }
}
