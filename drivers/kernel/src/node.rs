//! What a device path or a kernel device name is: the one classifier of NVMe device
//! nodes.
//!
//! Everything in ironvme that must tell a controller node from a namespace node, a
//! namespace from a partition or another disk, or a device from a file asks this module:
//! the `DEV` argument (`ironvme::Target`, the CLI's bare names such as `nvme0`), the
//! kernel backends ([`crate::ioctl`], [`crate::uring_cmd`], and [`crate::geometry::kind_of`]
//! for uring and psync), the device claims (`ironvme::claim`) and the controller's
//! namespaces in sysfs ([`crate::ioctl::controller_namespaces`]).
//!
//! - [`NvmeName`] reads the kernel's NVMe names: `nvmeX` (controller), `nvmeXnY`
//!   (namespace disk), `nvmeScXnY` (a path of a multipath disk, sysfs only), `nvmeXnYpZ`
//!   (partition), `ngXnY` (generic node).
//! - [`classify`] tells what a path is from its `stat` and sysfs: the device number's
//!   entry `/sys/dev/{char,block}/MAJ:MIN` gives the kernel name and the class
//!   (`subsystem`: `nvme`, `nvme-generic`, `block`, ...). Without that entry (no sysfs),
//!   the name of the node the path resolves to decides, by [`NvmeName`]'s rules.
//!
//! `scripts/setup.sh` stays bash (as SPDK's: it runs as root on hosts where ironvme may
//! not be built, and must not depend on it) and has a twin of the rules it needs for the
//! names it reads in sysfs: `ctrl_entry_disk` ([`controller_entry_disk`]) and
//! `nvme_generic_of` ([`NvmeName::generic`]). A test runs both on the same names.

use std::fmt;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where sysfs is mounted.
pub const SYSFS: &str = "/sys";

/// A kernel NVMe device name. `X`, `Y`, ... are decimal numbers without leading zeros
/// (as the kernel writes them) that fit a `u32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NvmeName {
    /// `nvmeX`: controller `X`'s character device.
    Controller {
        /// The controller's instance `X`.
        ctrl: u32,
    },
    /// `nvmeXnY`: a namespace's block device (its disk). `X` is the controller's
    /// instance, or under native multipath the subsystem's; `Y` is the namespace head's
    /// instance within the subsystem.
    Disk {
        /// `X`.
        instance: u32,
        /// `Y`.
        head: u32,
    },
    /// `nvmeScXnY`: under native multipath, the path through controller `X` to disk
    /// `nvmeSnY` (a hidden disk: in sysfs, never in `/dev`).
    Path {
        /// The subsystem's instance `S`.
        subsys: u32,
        /// The controller's instance `X`.
        ctrl: u32,
        /// `Y`.
        head: u32,
    },
    /// `nvmeXnYpZ`: partition `Z` of disk `nvmeXnY`.
    Partition {
        /// `X`.
        instance: u32,
        /// `Y`.
        head: u32,
        /// `Z`.
        part: u32,
    },
    /// `ngXnY`: the generic character device of disk `nvmeXnY`'s namespace.
    Generic {
        /// `X`.
        instance: u32,
        /// `Y`.
        head: u32,
    },
}

/// Splits the decimal number at the start of `s` from the rest; `None` if there is none,
/// it has a leading zero (the kernel writes none, so `nvme01` names no device) or it does
/// not fit a `u32`.
fn number(s: &str) -> Option<(u32, &str)> {
    let end = s.bytes().take_while(u8::is_ascii_digit).count();
    if end > 1 && s.starts_with('0') {
        return None;
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}

impl NvmeName {
    /// Reads a kernel NVMe name (a file name, not a path); `None` for anything else
    /// (`sda`, `nvme-fabrics`, `nvme0c1`, `ng0`, `nvme0n1x`, `nvme01`).
    pub fn parse(name: &str) -> Option<NvmeName> {
        if let Some(rest) = name.strip_prefix("ng") {
            let (instance, rest) = number(rest)?;
            let (head, rest) = number(rest.strip_prefix('n')?)?;
            return rest.is_empty().then_some(NvmeName::Generic { instance, head });
        }
        let (x, rest) = number(name.strip_prefix("nvme")?)?;
        if rest.is_empty() {
            return Some(NvmeName::Controller { ctrl: x });
        }
        if let Some(rest) = rest.strip_prefix('c') {
            let (ctrl, rest) = number(rest)?;
            let (head, rest) = number(rest.strip_prefix('n')?)?;
            return rest.is_empty().then_some(NvmeName::Path { subsys: x, ctrl, head });
        }
        let (head, rest) = number(rest.strip_prefix('n')?)?;
        if rest.is_empty() {
            return Some(NvmeName::Disk { instance: x, head });
        }
        let (part, rest) = number(rest.strip_prefix('p')?)?;
        rest.is_empty().then_some(NvmeName::Partition {
            instance: x,
            head,
            part,
        })
    }

    /// The namespace head's instance `Y`, shared by a namespace's disk, generic node,
    /// paths and partitions; `None` for a controller.
    pub fn head(&self) -> Option<u32> {
        match *self {
            NvmeName::Controller { .. } => None,
            NvmeName::Disk { head, .. }
            | NvmeName::Path { head, .. }
            | NvmeName::Partition { head, .. }
            | NvmeName::Generic { head, .. } => Some(head),
        }
    }

    /// The namespace's disk, `nvmeXnY`: itself, a generic node's or a partition's disk,
    /// a path's multipath disk `nvmeSnY`; `None` for a controller.
    pub fn disk(&self) -> Option<NvmeName> {
        match *self {
            NvmeName::Controller { .. } => None,
            NvmeName::Disk { instance, head }
            | NvmeName::Partition { instance, head, .. }
            | NvmeName::Generic { instance, head } => Some(NvmeName::Disk { instance, head }),
            NvmeName::Path { subsys, head, .. } => Some(NvmeName::Disk { instance: subsys, head }),
        }
    }

    /// The namespace's generic node, `ngXnY`, of the same disk as [`NvmeName::disk`];
    /// `None` for a controller.
    pub fn generic(&self) -> Option<NvmeName> {
        match self.disk()? {
            NvmeName::Disk { instance, head } => Some(NvmeName::Generic { instance, head }),
            _ => None,
        }
    }

    /// The controller the name itself suggests, `nvmeX`: the controller's own, a path's
    /// controller, and for a disk, partition or generic node the `X` of its name — which
    /// under native multipath is the subsystem's instance and may name another
    /// controller or none ([`controller_in`] asks sysfs).
    pub fn controller(&self) -> NvmeName {
        let ctrl = match *self {
            NvmeName::Controller { ctrl } | NvmeName::Path { ctrl, .. } => ctrl,
            NvmeName::Disk { instance, .. }
            | NvmeName::Partition { instance, .. }
            | NvmeName::Generic { instance, .. } => instance,
        };
        NvmeName::Controller { ctrl }
    }
}

impl fmt::Display for NvmeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            NvmeName::Controller { ctrl } => write!(f, "nvme{ctrl}"),
            NvmeName::Disk { instance, head } => write!(f, "nvme{instance}n{head}"),
            NvmeName::Path { subsys, ctrl, head } => write!(f, "nvme{subsys}c{ctrl}n{head}"),
            NvmeName::Partition { instance, head, part } => write!(f, "nvme{instance}n{head}p{part}"),
            NvmeName::Generic { instance, head } => write!(f, "ng{instance}n{head}"),
        }
    }
}

/// The namespace disk (`nvmeXnY`) an entry of a controller's sysfs directory
/// (`/sys/class/nvme/nvmeX/`) stands for: a disk `nvmeXnY` itself, a multipath path
/// `nvmeScXnY` its disk `nvmeSnY`; `None` for every other entry (the generic nodes
/// `ngXnY`, `hwmon2`, `power`, ...). The rule of
/// [`crate::ioctl::controller_namespaces`], and of setup.sh's `ctrl_entry_disk`.
pub fn controller_entry_disk(entry: &str) -> Option<NvmeName> {
    match NvmeName::parse(entry)? {
        name @ (NvmeName::Disk { .. } | NvmeName::Path { .. }) => name.disk(),
        _ => None,
    }
}

/// What a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// An NVMe controller's character device, `/dev/nvmeX` (class `nvme`).
    NvmeController,
    /// An NVMe namespace's generic character device, `/dev/ngXnY` (class
    /// `nvme-generic`).
    NvmeGeneric,
    /// An NVMe namespace's block device, `/dev/nvmeXnY`.
    NvmeDisk,
    /// Any other block device, partitions of NVMe namespaces (`nvmeXnYpZ`) included.
    Block,
    /// Any other character device.
    Char,
    /// A regular file.
    File,
    /// A directory, FIFO, socket or anything else: what it is.
    Other(&'static str),
}

impl NodeKind {
    /// A character device, NVMe or not.
    pub fn is_char(self) -> bool {
        matches!(self, NodeKind::NvmeController | NodeKind::NvmeGeneric | NodeKind::Char)
    }

    /// A block device, NVMe or not.
    pub fn is_block(self) -> bool {
        matches!(self, NodeKind::NvmeDisk | NodeKind::Block)
    }
}

/// A classified path: what it is and what sysfs says of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceNode {
    /// What it is.
    pub kind: NodeKind,
    /// The kernel's name of the device (`nvme0n1`, `ng0n1`, `loop3`, `null`) from sysfs,
    /// else the file name of the node the path resolves to (following symlinks, so a
    /// udev link `/dev/disk/by-id/nvme-...` has its device's name), else the path's own
    /// file name.
    pub name: String,
    /// A device's number (major, minor).
    pub devno: Option<(u32, u32)>,
    /// A device's sysfs directory (`/sys/dev/{char,block}/MAJ:MIN` resolved, below
    /// `/sys/devices`), when sysfs shows it.
    pub sysfs_dir: Option<PathBuf>,
    /// A device's class, the name its sysfs `subsystem` link points to (`nvme`,
    /// `nvme-generic`, `block`, `mem`, ...), when sysfs shows it.
    pub class: Option<String>,
}

impl DeviceNode {
    /// The kernel NVMe name of the device, if [`DeviceNode::name`] is one.
    pub fn nvme_name(&self) -> Option<NvmeName> {
        NvmeName::parse(&self.name)
    }

    /// `MAJ:MIN`, empty for a non-device.
    pub fn majmin(&self) -> String {
        self.devno.map(|(a, b)| format!("{a}:{b}")).unwrap_or_default()
    }
}

/// Classifies `path` from its `stat` and the sysfs under `/sys` (see the module
/// documentation), without opening it.
///
/// Errors: `stat`'s.
pub fn classify(path: &Path) -> io::Result<DeviceNode> {
    classify_in(Path::new(SYSFS), path)
}

/// [`classify`] with `sys` the sysfs root.
///
/// Errors: `stat`'s.
pub fn classify_in(sys: &Path, path: &Path) -> io::Result<DeviceNode> {
    let meta = std::fs::metadata(path)?;
    Ok(classify_metadata(sys, &meta, path))
}

/// [`classify`] for a path already looked up (or a file already open: `meta` from
/// `fstat`, `path` its name), with `sys` the sysfs root.
pub fn classify_metadata(sys: &Path, meta: &Metadata, path: &Path) -> DeviceNode {
    let ft = meta.file_type();
    let devno = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
    if ft.is_block_device() {
        return classify_device(sys, true, devno, node_name(path));
    }
    if ft.is_char_device() {
        return classify_device(sys, false, devno, node_name(path));
    }
    let kind = if ft.is_file() {
        NodeKind::File
    } else if ft.is_dir() {
        NodeKind::Other("a directory")
    } else if ft.is_fifo() {
        NodeKind::Other("a FIFO")
    } else if ft.is_socket() {
        NodeKind::Other("a socket")
    } else {
        NodeKind::Other("not a file or device")
    };
    DeviceNode {
        kind,
        name: node_name(path),
        devno: None,
        sysfs_dir: None,
        class: None,
    }
}

/// Classifies the block (`block`) or character device `devno`, whose node's name is
/// `node_name`, by its sysfs entry under `sys`:
///
/// - a character device of class `nvme` is a controller, of class `nvme-generic` a
///   generic node, of any other class another character device; when sysfs shows no
///   class, its name decides ([`NvmeName::Controller`], [`NvmeName::Generic`]);
/// - a block device named `nvmeXnY` ([`NvmeName::Disk`]) is a namespace's disk, any
///   other (a partition `nvmeXnYpZ`, `sda`, `loop0`) another block device.
///
/// The name is sysfs's when it shows the device, else `node_name`.
pub fn classify_device(sys: &Path, block: bool, devno: (u32, u32), node_name: String) -> DeviceNode {
    let entry = sys
        .join("dev")
        .join(if block { "block" } else { "char" })
        .join(format!("{}:{}", devno.0, devno.1));
    let sysfs_dir = std::fs::canonicalize(&entry).ok();
    let class = std::fs::read_link(entry.join("subsystem"))
        .ok()
        .and_then(|p| Some(p.file_name()?.to_string_lossy().into_owned()));
    let name = sysfs_dir
        .as_deref()
        .and_then(Path::file_name)
        .map_or(node_name, |n| n.to_string_lossy().into_owned());
    let by_name = NvmeName::parse(&name);
    let kind = if block {
        match by_name {
            Some(NvmeName::Disk { .. }) => NodeKind::NvmeDisk,
            _ => NodeKind::Block,
        }
    } else {
        match (class.as_deref(), by_name) {
            (Some("nvme"), _) | (None, Some(NvmeName::Controller { .. })) => NodeKind::NvmeController,
            (Some("nvme-generic"), _) | (None, Some(NvmeName::Generic { .. })) => NodeKind::NvmeGeneric,
            _ => NodeKind::Char,
        }
    };
    DeviceNode {
        kind,
        name,
        devno: Some(devno),
        sysfs_dir,
        class,
    }
}

/// The file name of the node `path` resolves to (following symlinks), or of `path`
/// itself when it cannot be resolved.
fn node_name(path: &Path) -> String {
    std::fs::canonicalize(path)
        .ok()
        .as_deref()
        .and_then(Path::file_name)
        .or_else(|| path.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The PCI vendor and device ID of kernel NVMe controller `ctrl` (`nvmeX`), from its
/// sysfs `device/vendor` and `device/device` under `sys`; `None` for a controller that is
/// not a PCI function (NVMe over Fabrics) or when sysfs does not say.
pub fn pci_id_in(sys: &Path, ctrl: &str) -> Option<(u16, u16)> {
    let read = |what: &str| -> Option<u16> {
        let text = std::fs::read_to_string(sys.join("class/nvme").join(ctrl).join("device").join(what)).ok()?;
        u16::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
    };
    Some((read("vendor")?, read("device")?))
}

/// The controller (`nvmeX`) of the kernel NVMe node named `name` (`nvmeX`, `nvmeXnY`,
/// `ngXnY`), with `sys` the sysfs root; `None` if `name` is not an NVMe name.
///
/// For a namespace node, a controller with a path to the namespace: the node's sysfs
/// `device` link (`sys/block/nvmeXnY/device`, `sys/class/nvme-generic/ngXnY/device`)
/// names its controller, or under native multipath its subsystem (`nvme-subsysS`), which
/// lists its controllers (the lowest-numbered one with a path to the namespace is taken,
/// [`crate::ioctl::controller_namespaces`], else the lowest-numbered). Without that
/// sysfs, [`NvmeName::controller`]: the `X` of the node's name, which under native
/// multipath is the subsystem's number and may name another controller.
pub fn controller_in(sys: &Path, name: &str) -> Option<String> {
    let parsed = NvmeName::parse(name)?;
    let node_dir = match parsed {
        NvmeName::Controller { .. } => return Some(name.to_owned()),
        NvmeName::Generic { .. } => Some(sys.join("class/nvme-generic").join(name)),
        NvmeName::Disk { .. } => Some(sys.join("block").join(name)),
        NvmeName::Path { .. } | NvmeName::Partition { .. } => None,
    };
    let disk = parsed.disk().map(|d| d.to_string()).unwrap_or_default();
    node_dir
        .and_then(|dir| controller_of(sys, &dir, &disk))
        .or_else(|| Some(parsed.controller().to_string()))
}

/// A controller (`nvmeX`) of the namespace node whose sysfs directory is `node` and whose
/// disk is `disk` (`nvmeXnY`), from the node's `device` link: the controller itself, or
/// under native multipath the subsystem (`nvme-subsysS`, whose entries `nvmeX` are its
/// controllers): the lowest-numbered one with a path to `disk`, else the lowest-numbered.
/// `None` without that sysfs.
fn controller_of(sys: &Path, node: &Path, disk: &str) -> Option<String> {
    let parent = std::fs::canonicalize(node.join("device")).ok()?;
    let name = parent.file_name()?.to_str()?;
    if let Some(NvmeName::Controller { .. }) = NvmeName::parse(name) {
        return Some(name.to_owned());
    }
    if !name.starts_with("nvme-subsys") {
        return None;
    }
    let mut ctrls: Vec<(u32, String)> = std::fs::read_dir(&parent)
        .ok()?
        .filter_map(|e| {
            let entry = e.ok()?.file_name().into_string().ok()?;
            match NvmeName::parse(&entry)? {
                NvmeName::Controller { ctrl } => Some((ctrl, entry)),
                _ => None,
            }
        })
        .collect();
    ctrls.sort();
    ctrls
        .iter()
        .find(|(_, c)| {
            crate::ioctl::controller_namespaces(sys, c)
                .iter()
                .any(|n| n.disk == disk)
        })
        .or(ctrls.first())
        .map(|(_, c)| c.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Option<NvmeName> {
        NvmeName::parse(s)
    }

    #[test]
    fn every_kind_of_nvme_name_is_read_and_written_back() {
        let cases = [
            ("nvme0", NvmeName::Controller { ctrl: 0 }),
            ("nvme12", NvmeName::Controller { ctrl: 12 }),
            ("nvme0n1", NvmeName::Disk { instance: 0, head: 1 }),
            ("nvme3n12", NvmeName::Disk { instance: 3, head: 12 }),
            (
                "nvme1c3n5",
                NvmeName::Path {
                    subsys: 1,
                    ctrl: 3,
                    head: 5,
                },
            ),
            (
                "nvme0n1p2",
                NvmeName::Partition {
                    instance: 0,
                    head: 1,
                    part: 2,
                },
            ),
            ("ng3n2", NvmeName::Generic { instance: 3, head: 2 }),
        ];
        for (text, name) in cases {
            assert_eq!(n(text), Some(name), "{text}");
            assert_eq!(name.to_string(), text);
        }
        for other in [
            "",
            "nvme",
            "ng",
            "ng0",
            "ng0n",
            "ngXn1",
            "nvme-fabrics",
            "nvme-subsys0",
            "nvmex",
            "nvme0n",
            "nvme0c1",
            "nvme0c1n",
            "nvme0c1n1p1",
            "nvme0n1p",
            "nvme0n1x",
            "nvme0n1c",
            "sda",
            "loop0",
            "null",
            "hwmon2",
            "power",
            "nvme99999999999",
            "nvme01",
            "nvme00n1",
            "ng0n01",
            "nvme+1",
            "nvme 1",
        ] {
            assert_eq!(n(other), None, "{other:?}");
        }
    }

    #[test]
    fn names_lead_to_their_disk_generic_node_head_and_controller() {
        let s = |x: Option<NvmeName>| x.map(|n| n.to_string());
        assert_eq!(s(n("ng3n2").unwrap().disk()), Some("nvme3n2".into()));
        assert_eq!(s(n("nvme3n2").unwrap().generic()), Some("ng3n2".into()));
        assert_eq!(s(n("nvme1c3n5").unwrap().disk()), Some("nvme1n5".into()));
        assert_eq!(s(n("nvme1c3n5").unwrap().generic()), Some("ng1n5".into()));
        assert_eq!(s(n("nvme0n1p2").unwrap().disk()), Some("nvme0n1".into()));
        assert_eq!(s(n("nvme0").unwrap().disk()), None);
        assert_eq!(s(n("nvme0").unwrap().generic()), None);
        assert_eq!(n("nvme0n1").unwrap().head(), Some(1));
        assert_eq!(n("ng3n12").unwrap().head(), Some(12));
        assert_eq!(n("nvme1c3n2").unwrap().head(), Some(2));
        assert_eq!(n("nvme0").unwrap().head(), None);
        for (name, ctrl) in [
            ("nvme7", "nvme7"),
            ("nvme7n1", "nvme7"),
            ("ng3n2", "nvme3"),
            ("nvme1c3n5", "nvme3"),
            ("nvme12n1p3", "nvme12"),
        ] {
            assert_eq!(n(name).unwrap().controller().to_string(), ctrl, "{name}");
        }
    }

    /// A fake sysfs with `dev/{char,block}/MAJ:MIN` entries pointing at device
    /// directories, each with a `subsystem` link to its class.
    struct FakeSys {
        root: tempfile::TempDir,
    }

    impl FakeSys {
        fn new() -> FakeSys {
            FakeSys {
                root: tempfile::tempdir().unwrap(),
            }
        }

        fn sys(&self) -> &Path {
            self.root.path()
        }

        /// Device `majmin` of `kind` ("char", "block") at `devices/<dir>`, of `class`
        /// (no `subsystem` link for `None`).
        fn device(&self, kind: &str, majmin: &str, dir: &str, class: Option<&str>) {
            let sys = self.sys();
            let d = sys.join("devices").join(dir);
            std::fs::create_dir_all(&d).unwrap();
            if let Some(class) = class {
                std::fs::create_dir_all(sys.join("class").join(class)).unwrap();
                std::os::unix::fs::symlink(sys.join("class").join(class), d.join("subsystem")).unwrap();
            }
            let entry = sys.join("dev").join(kind).join(majmin);
            std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(&d, entry).unwrap();
        }
    }

    /// Every kind of device by its sysfs entry: the class decides for a character
    /// device, the kernel name for a block device, and the node's own name does not
    /// count when sysfs shows the device.
    #[test]
    fn devices_are_classified_by_their_sysfs_entry() {
        let f = FakeSys::new();
        f.device("char", "240:0", "pci0000:00/0000:00:04.0/nvme/nvme0", Some("nvme"));
        f.device(
            "char",
            "241:1",
            "pci0000:00/0000:00:04.0/nvme/nvme0/ng0n1",
            Some("nvme-generic"),
        );
        f.device("char", "1:3", "virtual/mem/null", Some("mem"));
        f.device(
            "block",
            "259:0",
            "pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1",
            Some("block"),
        );
        f.device(
            "block",
            "259:1",
            "pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/nvme0n1p1",
            Some("block"),
        );
        f.device("block", "7:0", "virtual/block/loop0", Some("block"));
        let c = |block: bool, devno: (u32, u32), node: &str| classify_device(f.sys(), block, devno, node.into());
        let kinds = [
            (
                c(false, (240, 0), "whatever"),
                NodeKind::NvmeController,
                "nvme0",
                "nvme",
            ),
            (
                c(false, (241, 1), "ng9n9"),
                NodeKind::NvmeGeneric,
                "ng0n1",
                "nvme-generic",
            ),
            (c(false, (1, 3), "nvme0"), NodeKind::Char, "null", "mem"),
            (c(true, (259, 0), "sda"), NodeKind::NvmeDisk, "nvme0n1", "block"),
            (c(true, (259, 1), "nvme0n1"), NodeKind::Block, "nvme0n1p1", "block"),
            (c(true, (7, 0), "nvme0n1"), NodeKind::Block, "loop0", "block"),
        ];
        for (node, kind, name, class) in kinds {
            assert_eq!(
                (node.kind, node.name.as_str(), node.class.as_deref()),
                (kind, name, Some(class)),
                "{node:?}"
            );
            assert!(node.sysfs_dir.as_deref().unwrap().ends_with(name), "{node:?}");
        }
        assert_eq!(c(false, (240, 0), "x").majmin(), "240:0");
        // A character device sysfs shows without a class: its sysfs name decides.
        f.device("char", "242:2", "virtual/nvme-subsystem/nvme-subsys0/ng0n2", None);
        let g = c(false, (242, 2), "null");
        assert_eq!(
            (g.kind, g.name.as_str(), g.class),
            (NodeKind::NvmeGeneric, "ng0n2", None)
        );
    }

    /// Without sysfs (or without an entry for the device number), the node's name
    /// decides.
    #[test]
    fn devices_sysfs_does_not_show_are_classified_by_name() {
        let no_sysfs = tempfile::tempdir().unwrap();
        let c = |block: bool, node: &str| {
            let d = classify_device(no_sysfs.path(), block, (u32::MAX, u32::MAX), node.into());
            assert_eq!(
                (d.name.as_str(), d.sysfs_dir.as_deref(), d.class.as_deref()),
                (node, None, None)
            );
            d.kind
        };
        assert_eq!(c(false, "ng0n1"), NodeKind::NvmeGeneric);
        assert_eq!(c(false, "ng12n3"), NodeKind::NvmeGeneric);
        assert_eq!(c(false, "nvme0"), NodeKind::NvmeController);
        assert_eq!(c(false, "nvme0n1"), NodeKind::Char);
        assert_eq!(c(false, "null"), NodeKind::Char);
        assert_eq!(c(true, "nvme0n1"), NodeKind::NvmeDisk);
        assert_eq!(c(true, "nvme0n1p1"), NodeKind::Block);
        assert_eq!(c(true, "nvme0"), NodeKind::Block);
        assert_eq!(c(true, "sda"), NodeKind::Block);
    }

    /// Files, directories and real device nodes by path; a udev link is classified by
    /// the node it points to.
    #[test]
    fn paths_are_classified_by_stat_and_links_by_their_target() {
        let dir = tempfile::tempdir().unwrap();
        let no_sysfs = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nvme0n1"), [0u8; 512]).unwrap();
        let by_id = dir.path().join("disk/by-id");
        std::fs::create_dir_all(&by_id).unwrap();
        let link = by_id.join("nvme-QEMU_NVMe_Ctrl_deadbeef");
        std::os::unix::fs::symlink("../../nvme0n1", &link).unwrap();
        let file = classify_in(no_sysfs.path(), &link).unwrap();
        assert_eq!(
            (file.kind, file.name.as_str(), file.devno),
            (NodeKind::File, "nvme0n1", None)
        );
        assert_eq!(file.nvme_name(), n("nvme0n1"));
        assert_eq!(file.majmin(), "");
        assert_eq!(
            classify_in(no_sysfs.path(), dir.path()).unwrap().kind,
            NodeKind::Other("a directory")
        );
        let e = classify_in(no_sysfs.path(), &dir.path().join("missing")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        // /dev/null: by the host's sysfs (class mem), and by name without it.
        let null = classify(Path::new("/dev/null")).unwrap();
        assert_eq!((null.kind, null.devno), (NodeKind::Char, Some((1, 3))));
        let null = classify_in(no_sysfs.path(), Path::new("/dev/null")).unwrap();
        assert_eq!((null.kind, null.name.as_str()), (NodeKind::Char, "null"));
        assert!(NodeKind::Char.is_char() && NodeKind::NvmeGeneric.is_char() && !NodeKind::Block.is_char());
        assert!(NodeKind::NvmeDisk.is_block() && !NodeKind::File.is_block());
    }

    #[test]
    fn the_controller_of_a_node_is_found_in_sysfs_else_by_name() {
        let no_sysfs = tempfile::tempdir().unwrap();
        let at = |name: &str| controller_in(no_sysfs.path(), name);
        assert_eq!(at("nvme0").as_deref(), Some("nvme0"));
        assert_eq!(at("ng3n2").as_deref(), Some("nvme3"));
        assert_eq!(at("nvme12n1").as_deref(), Some("nvme12"));
        assert_eq!(at("sda"), None);
        // With sysfs: the disk's device link (here controller nvme5 for disk nvme0n1).
        let sys = tempfile::tempdir().unwrap();
        let ctrl = sys.path().join("devices/pci/nvme/nvme5");
        std::fs::create_dir_all(ctrl.join("nvme0n1")).unwrap();
        std::os::unix::fs::symlink(&ctrl, ctrl.join("nvme0n1/device")).unwrap();
        std::fs::create_dir_all(sys.path().join("block")).unwrap();
        std::os::unix::fs::symlink(ctrl.join("nvme0n1"), sys.path().join("block/nvme0n1")).unwrap();
        assert_eq!(controller_in(sys.path(), "nvme0n1").as_deref(), Some("nvme5"));
    }

    #[test]
    fn a_controllers_pci_id_is_read_from_its_device() {
        let sys = tempfile::tempdir().unwrap();
        let pci = sys.path().join("devices/pci0000:00/0000:00:05.0");
        std::fs::create_dir_all(&pci).unwrap();
        std::fs::write(pci.join("vendor"), "0x1b36\n").unwrap();
        std::fs::write(pci.join("device"), "0x0010\n").unwrap();
        let ctrl = sys.path().join("class/nvme/nvme2");
        std::fs::create_dir_all(&ctrl).unwrap();
        std::os::unix::fs::symlink(&pci, ctrl.join("device")).unwrap();
        assert_eq!(pci_id_in(sys.path(), "nvme2"), Some((0x1b36, 0x0010)));
        // A fabrics controller has no PCI function behind it.
        std::fs::create_dir_all(sys.path().join("class/nvme/nvme3")).unwrap();
        assert_eq!(pci_id_in(sys.path(), "nvme3"), None);
    }

    /// scripts/setup.sh's bash twins of [`controller_entry_disk`] (`ctrl_entry_disk`) and
    /// [`NvmeName::generic`] (`nvme_generic_of`) give the same answers on the same names.
    #[test]
    fn setup_sh_reads_names_as_nvme_name_does() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/setup.sh");
        let names = [
            "nvme0",
            "nvme12",
            "nvme0n1",
            "nvme3n12",
            "nvme1c3n5",
            "nvme0n1p2",
            "ng3n2",
            "ng0",
            "nvme",
            "nvme0c1",
            "nvme0c1n",
            "nvme0c1n1p1",
            "nvme0n1p",
            "nvme0n1x",
            "nvme-subsys0",
            "nvme-fabrics",
            "sda",
            "hwmon2",
            "nvme01",
            "nvme01n1",
            "ng0n01",
            "nvme0n1p01",
            "nvme0c01n1",
            "nvme10n0",
            "ng10n20",
            "nvme0c0n1",
        ];
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(
                r#"source "$1" || exit 1; shift
                for n in "$@"; do
                    ctrl_entry_disk "$n"; d=$REPLY
                    nvme_generic_of "$n"; echo "$n ${d:--} ${REPLY:--}"
                done"#,
            )
            .arg("bash")
            .arg(&script)
            .args(names)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let bash = String::from_utf8(out.stdout).unwrap();
        let rust: String = names
            .iter()
            .map(|name| {
                let parsed = NvmeName::parse(name);
                let show = |x: Option<NvmeName>| x.map_or("-".to_string(), |x| x.to_string());
                format!(
                    "{name} {} {}\n",
                    show(controller_entry_disk(name)),
                    show(parsed.and_then(|p| p.generic()))
                )
            })
            .collect();
        assert_eq!(bash, rust);
    }
}
