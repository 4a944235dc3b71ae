//! Errors of the VFIO layer.
//!
//! Every variant's message is the meaning in its doc comment, and every message that
//! concerns a device names the BDF, the IOMMU group and what to do about it. OS errors
//! keep their errno ([`std::io::Error::raw_os_error`]) and the path they concern.

use crate::pci::{Bdf, BdfParseError, GroupMember, SysfsError};
use std::fmt;
use std::io;
use std::path::PathBuf;

/// A failed system call: what was done, to which path, and the OS error (errno kept).
#[derive(Debug, thiserror::Error)]
#[error("{op} on {}: {source}", path.display())]
pub struct OsError {
    /// The operation, e.g. `"VFIO_GROUP_GET_STATUS"` or `"open"`.
    pub op: &'static str,
    /// The file the operation was applied to.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl OsError {
    /// An error of `op` on `path`.
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> OsError {
        OsError {
            op,
            path: path.into(),
            source,
        }
    }

    /// The errno, if the error came from the OS.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// An IOMMU group as named in messages: `IOMMU group 7`, or the hint that the device has
/// none because the IOMMU is off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupLabel(pub Option<u32>);

impl fmt::Display for GroupLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(g) => write!(f, "IOMMU group {g}"),
            None => f.write_str("no IOMMU group: the IOMMU is off, boot with intel_iommu=on or amd_iommu=on first"),
        }
    }
}

fn member_list(list: &[GroupMember]) -> String {
    list.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Why a VFIO device could not be opened or set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The string is not a PCI address.
    #[error(transparent)]
    InvalidBdf(#[from] BdfParseError),

    /// No PCI device has this address.
    #[error("no PCI device {bdf}: {} does not exist; list NVMe controllers with `lspci -D -d ::0108`", path.display())]
    NoSuchDevice {
        /// The address asked for.
        bdf: Bdf,
        /// The sysfs directory that is missing.
        path: PathBuf,
    },

    /// A sysfs attribute of the device could not be read.
    #[error("{bdf}: cannot read its sysfs attributes: {source}")]
    Sysfs {
        /// The device.
        bdf: Bdf,
        /// The failing attribute and OS error.
        #[source]
        source: SysfsError,
    },

    /// The device is not an NVMe controller (PCI class code is not 0x010802); ironvme
    /// refuses to touch it.
    #[error(
        "{bdf} is not an NVMe controller: PCI class {class:#08x} (from {source_of_class}), expected 0x010802; ironvme will not touch it"
    )]
    NotNvme {
        /// The device.
        bdf: Bdf,
        /// Its 24-bit class code.
        class: u32,
        /// Where the class was read: "sysfs" or "config space".
        source_of_class: &'static str,
    },

    /// The controller is bound to the kernel's nvme driver; bind it to vfio-pci first.
    #[error(
        "{bdf} ({group}) is bound to the kernel nvme driver; run `scripts/setup.sh bind {bdf}` to hand it to vfio-pci (unmount its filesystems first)"
    )]
    BoundToNvme {
        /// The device.
        bdf: Bdf,
        /// Its IOMMU group.
        group: GroupLabel,
    },

    /// The controller is bound to a driver other than nvme or vfio-pci; bind it to
    /// vfio-pci first.
    #[error("{bdf} ({group}) is bound to the `{driver}` driver, not vfio-pci; run `scripts/setup.sh bind {bdf}`")]
    BoundToOtherDriver {
        /// The device.
        bdf: Bdf,
        /// Its IOMMU group.
        group: GroupLabel,
        /// The bound driver.
        driver: String,
    },

    /// The controller is not bound to any driver; bind it to vfio-pci first.
    #[error("{bdf} ({group}) is not bound to vfio-pci (it has no driver); run `scripts/setup.sh bind {bdf}`")]
    NotBoundToVfio {
        /// The device.
        bdf: Bdf,
        /// Its IOMMU group.
        group: GroupLabel,
    },

    /// The device has no IOMMU group: the IOMMU is disabled, so VFIO cannot isolate it.
    #[error(
        "{bdf} has no IOMMU group: the IOMMU is disabled; boot with intel_iommu=on (Intel) or amd_iommu=on (AMD), with VT-d / AMD-Vi enabled in the firmware"
    )]
    NoIommuGroup {
        /// The device.
        bdf: Bdf,
    },

    /// The VFIO character device of the group (or `/dev/vfio/vfio`) does not exist.
    #[error(
        "{bdf} (IOMMU group {group}): {} does not exist; load VFIO (`modprobe vfio-pci`) and bind the device with `scripts/setup.sh bind {bdf}` (a kernel built without CONFIG_VFIO_GROUP offers only /dev/vfio/devices/, which ironvme does not use yet)",
        path.display()
    )]
    VfioNodeMissing {
        /// The device.
        bdf: Bdf,
        /// Its IOMMU group.
        group: u32,
        /// The missing path.
        path: PathBuf,
    },

    /// Opening a VFIO node was refused: not root and no access to the node.
    #[error(
        "{bdf} (IOMMU group {group}): permission denied opening {}: run as root, or give this user read-write access to /dev/vfio/vfio and /dev/vfio/{group} and raise the locked-memory limit (`ulimit -l`) to cover the DMA memory ({source})",
        path.display()
    )]
    PermissionDenied {
        /// The device.
        bdf: Bdf,
        /// Its IOMMU group.
        group: u32,
        /// The node that could not be opened.
        path: PathBuf,
        /// The OS error (EACCES or EPERM).
        #[source]
        source: io::Error,
    },

    /// Not every device in the IOMMU group is bound to vfio-pci (or unbound), so the
    /// kernel will not hand the group to userspace.
    #[error(
        "{bdf} (IOMMU group {group}) is not viable: every device in the group must be bound to vfio-pci or to no driver; group members: {}; bind or unbind the others (`scripts/setup.sh bind <BDF>`)",
        member_list(members)
    )]
    GroupNotViable {
        /// The device.
        bdf: Bdf,
        /// Its IOMMU group.
        group: u32,
        /// Every device in the group, with its driver.
        members: Vec<GroupMember>,
    },

    /// The IOMMU group (or the device) is already open, by another process or another
    /// handle in this one (EBUSY).
    #[error(
        "{bdf} (IOMMU group {group}) is in use: {} is already open by {} (EBUSY); close it first{}",
        path.display(),
        if holders.is_empty() { "another process or another ironvme handle".to_string() } else { holders.join(", ") },
        if holders.is_empty() { format!(" (`fuser -v {}` shows who holds it)", path.display()) } else { String::new() }
    )]
    InUse {
        /// The device.
        bdf: Bdf,
        /// Its IOMMU group.
        group: u32,
        /// The busy node.
        path: PathBuf,
        /// Who has `path` open, as `/proc/PID/fd` tells: `"ironvme (pid 4242)"`, with
        /// `", this process"` inside the parentheses for the caller; empty when Linux
        /// does not say (no permission to read other processes' descriptors).
        holders: Vec<String>,
    },

    /// The kernel speaks another VFIO API version than this driver.
    #[error("{}: VFIO API version {found}, ironvme speaks version {expected}", path.display())]
    ApiVersion {
        /// The container node.
        path: PathBuf,
        /// What the kernel reported.
        found: i32,
        /// `VFIO_API_VERSION`.
        expected: u32,
    },

    /// The kernel's VFIO has no Type1v2 IOMMU backend.
    #[error("{}: the VFIO container has no Type1v2 IOMMU backend; load it with `modprobe vfio_iommu_type1`", path.display())]
    NoType1v2 {
        /// The container node.
        path: PathBuf,
    },

    /// VFIO does not describe the device as a PCI device.
    #[error("{bdf}: VFIO does not report a PCI device (device flags {flags:#x})")]
    NotPci {
        /// The device.
        bdf: Bdf,
        /// `VFIO_DEVICE_FLAGS_*`.
        flags: u32,
    },

    /// BAR0 cannot be memory-mapped, or is too small for the NVMe registers.
    #[error(
        "{bdf}: BAR0 cannot be memory-mapped for the NVMe registers (region flags {flags:#x}, {size} bytes, {mappable} bytes mmap-able from offset 0; at least {needed} needed)"
    )]
    BarNotMappable {
        /// The device.
        bdf: Bdf,
        /// `VFIO_REGION_INFO_FLAG_*`.
        flags: u32,
        /// Region size in bytes.
        size: u64,
        /// Bytes from offset 0 that may be mmapped.
        mappable: u64,
        /// Bytes needed.
        needed: u64,
    },

    /// A system call on a device's VFIO file failed.
    #[error("{bdf} (IOMMU group {group}): {source}")]
    DeviceOs {
        /// The device.
        bdf: Bdf,
        /// Its IOMMU group.
        group: u32,
        /// The failing operation, path and OS error.
        #[source]
        source: OsError,
    },

    /// A system call failed outside the context of one device.
    #[error(transparent)]
    Os(#[from] OsError),

    /// The IOMMU's IOVA ranges leave no room for DMA memory.
    #[error("{bdf} (IOMMU group {group}): {source}")]
    Iova {
        /// The device.
        bdf: Bdf,
        /// Its IOMMU group.
        group: u32,
        /// What is wrong with the ranges.
        #[source]
        source: crate::iova::IovaError,
    },
}

impl Error {
    /// The errno behind the error, if an OS call failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::PermissionDenied { source, .. } => source.raw_os_error(),
            Error::InUse { .. } => Some(libc::EBUSY),
            Error::DeviceOs { source, .. } | Error::Os(source) => source.errno(),
            Error::Sysfs { source, .. } => source.source.raw_os_error(),
            _ => None,
        }
    }
}
