//! `list`: the NVMe controllers on the PCI bus, from sysfs alone.
//!
//! Nothing is opened: a controller bound to vfio-pci may be in use by another process,
//! and opening it through VFIO would reset it. Kernel-owned controllers (driver `nvme`)
//! also show what the kernel publishes: serial number, model and firmware revision
//! (`/sys/class/nvme/nvmeX/`) and their namespaces (`/sys/block/nvmeXnY`).

use super::output::si_bytes;
use super::{CliError, ListArgs, write_json};
use crate::vfio::pci::NVME_CLASS;
use crate::vfio::{Bdf, Sysfs};
use serde::Serialize;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What sysfs says about one NVMe controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ControllerInfo {
    /// PCI address, `0000:00:04.0`.
    pub bdf: String,
    /// PCI vendor ID.
    pub vendor_id: u16,
    /// PCI device ID.
    pub device_id: u16,
    /// Bound driver (`nvme`, `vfio-pci`, ...), `None` when unbound.
    pub driver: Option<String>,
    /// IOMMU group number, `None` without an IOMMU.
    pub iommu_group: Option<u32>,
    /// The kernel's controller name (`nvme0`), for controllers bound to nvme.
    pub controller: Option<String>,
    /// Serial number, for controllers bound to nvme.
    pub serial: Option<String>,
    /// Model number, for controllers bound to nvme.
    pub model: Option<String>,
    /// Firmware revision, for controllers bound to nvme.
    pub firmware: Option<String>,
    /// Namespaces the kernel exposes as block devices, for controllers bound to nvme.
    pub namespaces: Vec<NamespaceInfo>,
}

/// A namespace the kernel exposes as a block device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NamespaceInfo {
    /// Block device name, `nvme0n1`.
    pub name: String,
    /// Namespace ID, if the kernel publishes it.
    pub nsid: Option<u32>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Logical block (LBA) size in bytes.
    pub lba_size: Option<u32>,
}

impl NamespaceInfo {
    /// Size in logical blocks, when the LBA size is known.
    pub fn blocks(&self) -> Option<u64> {
        self.lba_size.filter(|&s| s > 0).map(|s| self.size_bytes / u64::from(s))
    }
}

/// Reads a sysfs attribute, trimmed; `None` if it cannot be read.
fn attr(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// The names in a directory, sorted; empty if it cannot be read.
fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|a| natural_key(a));
    out
}

/// Sorts `nvme10n1` after `nvme2n1`: digit runs compare as numbers.
fn natural_key(s: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut n = u64::from(c as u8 - b'0');
            while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                n = n.saturating_mul(10).saturating_add(u64::from(d));
                chars.next();
            }
            out.push((std::mem::take(&mut text), n));
        } else {
            text.push(c);
        }
    }
    out.push((text, 0));
    out
}

/// A kernel namespace block device name: `nvme<i>n<j>` (namespace, or multipath head)
/// or `nvme<i>c<k>n<j>` (one path of a multipath namespace).
fn namespace_kind(name: &str) -> Option<bool> {
    let rest = name.strip_prefix("nvme")?;
    let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    let (ctrl, ns) = rest.split_once('n')?;
    if !digits(ns) {
        return None;
    }
    match ctrl.split_once('c') {
        None if digits(ctrl) => Some(false),
        Some((a, b)) if digits(a) && digits(b) => Some(true),
        _ => None,
    }
}

/// The namespaces of kernel controller directory `ctrl_dir`: its `nvmeXnY` children,
/// and for multipath paths (`nvmeXcYnZ`) the head block device that lists the path in
/// `/sys/block/<head>/multipath/`.
fn kernel_namespaces(sysfs: &Sysfs, ctrl_dir: &Path) -> Vec<NamespaceInfo> {
    let block = sysfs.root().join("block");
    let mut seen: Vec<String> = Vec::new();
    for name in names(ctrl_dir) {
        let dev = match namespace_kind(&name) {
            Some(false) => name,
            Some(true) => names(&block)
                .into_iter()
                .find(|head| block.join(head).join("multipath").join(&name).exists())
                .unwrap_or(name),
            None => continue,
        };
        if !seen.contains(&dev) {
            seen.push(dev);
        }
    }
    seen.into_iter()
        .map(|name| {
            let dir = if block.join(&name).exists() {
                block.join(&name)
            } else {
                ctrl_dir.join(&name)
            };
            let sectors: u64 = attr(&dir.join("size")).and_then(|s| s.parse().ok()).unwrap_or(0);
            NamespaceInfo {
                nsid: attr(&dir.join("nsid")).and_then(|s| s.parse().ok()),
                size_bytes: sectors.saturating_mul(512),
                lba_size: attr(&dir.join("queue/logical_block_size")).and_then(|s| s.parse().ok()),
                name,
            }
        })
        .collect()
}

/// Fills in what the kernel nvme driver publishes about the controller at `bdf`.
fn add_kernel_details(sysfs: &Sysfs, bdf: Bdf, info: &mut ControllerInfo) {
    let nvme_dir = sysfs.device_dir(bdf).join("nvme");
    let Some(ctrl) = names(&nvme_dir).into_iter().find(|n| n.starts_with("nvme")) else {
        return;
    };
    let dir: PathBuf = nvme_dir.join(&ctrl);
    info.serial = attr(&dir.join("serial"));
    info.model = attr(&dir.join("model"));
    info.firmware = attr(&dir.join("firmware_rev"));
    info.namespaces = kernel_namespaces(sysfs, &dir);
    info.controller = Some(ctrl);
}

/// Every NVMe controller (PCI class 010802h) in `sysfs`, by BDF.
///
/// Errors: [`CliError::Io`] when the PCI device directory cannot be read (sysfs not
/// mounted); a device whose attributes cannot be read is left out.
pub fn scan(sysfs: &Sysfs) -> Result<Vec<ControllerInfo>, CliError> {
    let dir = sysfs.root().join("bus/pci/devices");
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot list PCI devices in {}: {e}", dir.display())))?;
    let mut bdfs: Vec<Bdf> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    bdfs.sort();
    let mut out = Vec::new();
    for bdf in bdfs {
        if sysfs.class(bdf).ok() != Some(NVME_CLASS) {
            continue;
        }
        let Ok(dev) = sysfs.device(bdf) else { continue };
        let mut info = ControllerInfo {
            bdf: bdf.to_string(),
            vendor_id: dev.vendor,
            device_id: dev.device,
            driver: dev.driver.clone(),
            iommu_group: dev.iommu_group,
            controller: None,
            serial: None,
            model: None,
            firmware: None,
            namespaces: Vec::new(),
        };
        if dev.driver.as_deref() == Some("nvme") {
            add_kernel_details(sysfs, bdf, &mut info);
        }
        out.push(info);
    }
    Ok(out)
}

/// The controllers as a table, with each controller's namespaces indented below it.
pub fn render_text(list: &[ControllerInfo]) -> String {
    if list.is_empty() {
        return "No NVMe controllers (PCI class 010802) found.\n".to_string();
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_string());
    let header = [
        "BDF",
        "Vendor:Dev",
        "Driver",
        "IOMMU",
        "Ctrl",
        "Serial",
        "Model",
        "FW Rev",
    ];
    let rows: Vec<[String; 8]> = list
        .iter()
        .map(|c| {
            [
                c.bdf.clone(),
                format!("{:04x}:{:04x}", c.vendor_id, c.device_id),
                c.driver.clone().unwrap_or_else(|| "none".to_string()),
                c.iommu_group.map_or("-".to_string(), |g| g.to_string()),
                dash(&c.controller),
                dash(&c.serial),
                dash(&c.model),
                dash(&c.firmware),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}  ");
            }
        }
        s
    };
    let mut out = line(&header.map(String::from));
    out.push('\n');
    for (c, row) in list.iter().zip(&rows) {
        out.push_str(&line(row));
        out.push('\n');
        for ns in &c.namespaces {
            let nsid = ns.nsid.map_or("nsid ?".to_string(), |n| format!("nsid {n}"));
            let blocks = match (ns.blocks(), ns.lba_size) {
                (Some(b), Some(s)) => format!("{b} x {s} B blocks"),
                _ => "LBA size unknown".to_string(),
            };
            let _ = writeln!(
                out,
                "  {:<10} {nsid:<8} {:>10}  {blocks}",
                ns.name,
                si_bytes(u128::from(ns.size_bytes))
            );
        }
    }
    out
}

/// `ironvme list`: scans `sysfs` (the system's `/sys` in the binary).
///
/// Errors: see [`scan`].
pub fn run(args: &ListArgs, sysfs: &Sysfs, out: &mut dyn Write) -> Result<(), CliError> {
    let list = scan(sysfs)?;
    if args.json {
        let value = serde_json::json!({ "controllers": list });
        write_json(out, &value)
    } else {
        out.write_all(render_text(&list).as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs tree shaped like the QEMU guest's.
    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            Tree {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn root(&self) -> &Path {
            self.dir.path()
        }

        fn write(&self, path: &Path, text: &str) {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }

        fn pci(&self, bdf: &str, class: u32, driver: Option<&str>, group: Option<u32>) -> PathBuf {
            let dev = self.root().join("devices/pci0000:00").join(bdf);
            self.write(&dev.join("vendor"), "0x1b36\n");
            self.write(&dev.join("device"), "0x0010\n");
            self.write(&dev.join("class"), &format!("0x{class:06x}\n"));
            let bus = self.root().join("bus/pci/devices");
            std::fs::create_dir_all(&bus).unwrap();
            symlink(&dev, bus.join(bdf)).unwrap();
            if let Some(d) = driver {
                let drv = self.root().join("bus/pci/drivers").join(d);
                std::fs::create_dir_all(&drv).unwrap();
                symlink(&drv, dev.join("driver")).unwrap();
            }
            if let Some(g) = group {
                let gdir = self.root().join("kernel/iommu_groups").join(g.to_string());
                std::fs::create_dir_all(&gdir).unwrap();
                symlink(&gdir, dev.join("iommu_group")).unwrap();
            }
            dev
        }

        fn kernel_ctrl(&self, dev: &Path, name: &str, serial: &str) -> PathBuf {
            let ctrl = dev.join("nvme").join(name);
            self.write(&ctrl.join("serial"), &format!("{serial:<20}\n"));
            self.write(&ctrl.join("model"), "QEMU NVMe Ctrl                          \n");
            self.write(&ctrl.join("firmware_rev"), "7.2.22  \n");
            ctrl
        }

        /// A namespace block device under `parent`, linked from `<root>/block`.
        fn block(&self, parent: &Path, name: &str, nsid: u32, sectors: u64, lba: u32) -> PathBuf {
            let dir = parent.join(name);
            self.write(&dir.join("nsid"), &format!("{nsid}\n"));
            self.write(&dir.join("size"), &format!("{sectors}\n"));
            self.write(&dir.join("queue/logical_block_size"), &format!("{lba}\n"));
            let block = self.root().join("block");
            std::fs::create_dir_all(&block).unwrap();
            symlink(&dir, block.join(name)).unwrap();
            dir
        }
    }

    fn guest_like_tree() -> Tree {
        let t = Tree::new();
        let kern = t.pci("0000:00:04.0", NVME_CLASS, Some("nvme"), Some(3));
        let ctrl = t.kernel_ctrl(&kern, "nvme0", "ironvme-kern");
        t.block(&ctrl, "nvme0n1", 1, 2_097_152, 512);
        t.block(&ctrl, "nvme0n2", 2, 2_097_152, 4096);
        t.pci("0000:00:05.0", NVME_CLASS, Some("vfio-pci"), Some(4));
        t.pci("0000:00:06.0", NVME_CLASS, None, Some(5));
        t.pci("0000:00:01.0", 0x030000, Some("bochs-drm"), Some(1));
        t.pci("0000:00:1f.2", 0x010601, Some("ahci"), Some(6));
        t
    }

    #[test]
    fn scans_only_nvme_controllers_and_reads_kernel_details() {
        let t = guest_like_tree();
        let list = scan(&Sysfs::new(t.root())).unwrap();
        let bdfs: Vec<&str> = list.iter().map(|c| c.bdf.as_str()).collect();
        assert_eq!(bdfs, ["0000:00:04.0", "0000:00:05.0", "0000:00:06.0"]);
        let k = &list[0];
        assert_eq!((k.vendor_id, k.device_id), (0x1b36, 0x0010));
        assert_eq!(k.driver.as_deref(), Some("nvme"));
        assert_eq!(k.iommu_group, Some(3));
        assert_eq!(k.controller.as_deref(), Some("nvme0"));
        assert_eq!(k.serial.as_deref(), Some("ironvme-kern"));
        assert_eq!(k.model.as_deref(), Some("QEMU NVMe Ctrl"));
        assert_eq!(k.firmware.as_deref(), Some("7.2.22"));
        assert_eq!(
            k.namespaces,
            [
                NamespaceInfo {
                    name: "nvme0n1".into(),
                    nsid: Some(1),
                    size_bytes: 1 << 30,
                    lba_size: Some(512)
                },
                NamespaceInfo {
                    name: "nvme0n2".into(),
                    nsid: Some(2),
                    size_bytes: 1 << 30,
                    lba_size: Some(4096)
                },
            ]
        );
        assert_eq!(k.namespaces[1].blocks(), Some(262_144));
        let v = &list[1];
        assert_eq!(v.driver.as_deref(), Some("vfio-pci"));
        assert_eq!((v.controller.as_ref(), v.serial.as_ref()), (None, None));
        assert!(v.namespaces.is_empty());
        assert_eq!(list[2].driver, None);
    }

    #[test]
    fn text_and_json() {
        let t = guest_like_tree();
        let list = scan(&Sysfs::new(t.root())).unwrap();
        let text = render_text(&list);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("BDF           Vendor:Dev  Driver    IOMMU  Ctrl   Serial"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("0000:00:04.0  1b36:0010   nvme      3      nvme0  ironvme-kern  QEMU NVMe Ctrl"),
            "{text}"
        );
        assert_eq!(lines[2], "  nvme0n1    nsid 1      1.07 GB  2097152 x 512 B blocks");
        assert_eq!(lines[3], "  nvme0n2    nsid 2      1.07 GB  262144 x 4096 B blocks");
        assert!(
            lines[4].starts_with("0000:00:05.0  1b36:0010   vfio-pci  4      -      -"),
            "{text}"
        );
        assert!(lines[5].starts_with("0000:00:06.0  1b36:0010   none      5"), "{text}");
        assert_eq!(lines.len(), 6);

        let mut out = Vec::new();
        run(&ListArgs { json: true }, &Sysfs::new(t.root()), &mut out).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let c = &v["controllers"];
        assert_eq!(c.as_array().unwrap().len(), 3);
        assert_eq!(c[0]["bdf"], "0000:00:04.0");
        assert_eq!(c[0]["serial"], "ironvme-kern");
        assert_eq!(c[0]["namespaces"][1]["lba_size"], 4096);
        assert_eq!(c[0]["namespaces"][1]["size_bytes"], 1u64 << 30);
        assert_eq!(c[1]["driver"], "vfio-pci");
        assert_eq!(c[1]["serial"], serde_json::Value::Null);
        assert_eq!(c[2]["driver"], serde_json::Value::Null);
        assert_eq!(c[2]["iommu_group"], 5);
    }

    #[test]
    fn multipath_paths_resolve_to_their_head() {
        let t = Tree::new();
        let dev = t.pci("0000:00:04.0", NVME_CLASS, Some("nvme"), Some(3));
        let ctrl = t.kernel_ctrl(&dev, "nvme1", "mp");
        std::fs::create_dir_all(ctrl.join("nvme1c1n1")).unwrap();
        let subsys = t.root().join("devices/virtual/nvme-subsystem/nvme-subsys0");
        let head = t.block(&subsys, "nvme0n1", 1, 8, 4096);
        std::fs::create_dir_all(head.join("multipath")).unwrap();
        symlink(ctrl.join("nvme1c1n1"), head.join("multipath/nvme1c1n1")).unwrap();
        let list = scan(&Sysfs::new(t.root())).unwrap();
        assert_eq!(list[0].namespaces.len(), 1);
        assert_eq!(list[0].namespaces[0].name, "nvme0n1");
        assert_eq!(list[0].namespaces[0].lba_size, Some(4096));
    }

    #[test]
    fn names_and_edge_cases() {
        assert_eq!(namespace_kind("nvme0n1"), Some(false));
        assert_eq!(namespace_kind("nvme12n34"), Some(false));
        assert_eq!(namespace_kind("nvme0c1n1"), Some(true));
        for not in ["nvme0", "ng0n1", "nvme0n", "nvmen1", "hwmon0", "nvme0n1p1", "power"] {
            assert_eq!(namespace_kind(not), None, "{not}");
        }
        let mut v = vec!["nvme10n1", "nvme2n1", "nvme1n10", "nvme1n2"];
        v.sort_by_key(|s| natural_key(s));
        assert_eq!(v, ["nvme1n2", "nvme1n10", "nvme2n1", "nvme10n1"]);
        assert_eq!(render_text(&[]), "No NVMe controllers (PCI class 010802) found.\n");
        let e = scan(&Sysfs::new("/nonexistent-sysfs")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-sysfs/bus/pci/devices"), "{e}");
    }
}
