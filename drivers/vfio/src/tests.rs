//! Host tests of the preflight checks and of the error messages, over fake sysfs trees.

use super::*;
use crate::pci::GroupMember;
use crate::pci::fake::FakeSysfs;
use std::io;

const QEMU_VENDOR: u16 = 0x1b36;
const QEMU_NVME: u16 = 0x0010;

/// A fake machine: sysfs tree plus a /dev/vfio directory.
struct Machine {
    sys: FakeSysfs,
    dev: tempfile::TempDir,
}

impl Machine {
    fn new() -> Machine {
        Machine {
            sys: FakeSysfs::new(),
            dev: tempfile::tempdir().unwrap(),
        }
    }

    fn nvme(&self, bdf: &str, driver: Option<&str>, group: Option<u32>) -> &Machine {
        self.sys.add(bdf, QEMU_VENDOR, QEMU_NVME, NVME_CLASS, driver, group);
        self
    }

    fn node(&self, name: &str) -> &Machine {
        std::fs::write(self.dev.path().join(name), b"").unwrap();
        self
    }

    fn options(&self) -> OpenOptions {
        OpenOptions {
            sysfs: self.sys.sysfs(),
            dev_vfio: self.dev.path().to_path_buf(),
            ..OpenOptions::default()
        }
    }

    fn preflight(&self, bdf: &str) -> Result<Preflight, Error> {
        preflight(bdf, &self.options())
    }
}

fn message(e: &Error) -> String {
    e.to_string()
}

#[test]
fn garbage_addresses_are_refused_before_anything_else() {
    let m = Machine::new();
    let e = m.preflight("nvme0n1").unwrap_err();
    assert!(matches!(e, Error::InvalidBdf(_)), "{e:?}");
    assert!(message(&e).contains("`nvme0n1` is not a PCI address"), "{e}");
}

#[test]
fn a_missing_device_is_named() {
    let m = Machine::new();
    let e = m.preflight("0000:00:09.0").unwrap_err();
    assert!(matches!(e, Error::NoSuchDevice { .. }), "{e:?}");
    let msg = message(&e);
    assert!(
        msg.contains("no PCI device 0000:00:09.0") && msg.contains("lspci"),
        "{msg}"
    );
}

#[test]
fn a_device_that_is_not_nvme_is_refused_whatever_its_driver() {
    let m = Machine::new();
    m.sys
        .add("0000:00:02.0", 0x8086, 0x10d3, 0x020000, Some("e1000e"), Some(2));
    let e = m.preflight("0000:00:02.0").unwrap_err();
    assert!(matches!(e, Error::NotNvme { class: 0x020000, .. }), "{e:?}");
    let msg = message(&e);
    assert!(
        msg.contains("0000:00:02.0 is not an NVMe controller") && msg.contains("0x020000"),
        "{msg}"
    );
}

#[test]
fn a_controller_bound_to_nvme_says_so_and_how_to_bind_it() {
    // Nothing else is set up (no /dev/vfio node): the driver check comes first.
    let m = Machine::new();
    m.nvme("0000:00:04.0", Some("nvme"), Some(3));
    let e = m.preflight("00:04.0").unwrap_err();
    assert!(matches!(e, Error::BoundToNvme { .. }), "{e:?}");
    assert_eq!(
        message(&e),
        "0000:00:04.0 (IOMMU group 3) is bound to the kernel nvme driver; run `scripts/setup.sh bind 0000:00:04.0` \
         to hand it to vfio-pci (unmount its filesystems first)"
    );
}

#[test]
fn a_controller_bound_to_nvme_without_iommu_mentions_the_iommu_too() {
    let m = Machine::new();
    m.nvme("0000:00:04.0", Some("nvme"), None);
    let e = m.preflight("0000:00:04.0").unwrap_err();
    let msg = message(&e);
    assert!(
        msg.contains("bound to the kernel nvme driver") && msg.contains("intel_iommu=on"),
        "{msg}"
    );
}

#[test]
fn another_driver_is_named() {
    let m = Machine::new();
    m.nvme("0000:00:05.0", Some("uio_pci_generic"), Some(4));
    let e = m.preflight("0000:00:05.0").unwrap_err();
    assert!(
        matches!(&e, Error::BoundToOtherDriver { driver, .. } if driver == "uio_pci_generic"),
        "{e:?}"
    );
    let msg = message(&e);
    assert!(
        msg.contains("(IOMMU group 4)")
            && msg.contains("`uio_pci_generic`")
            && msg.contains("setup.sh bind 0000:00:05.0")
    );
}

#[test]
fn an_unbound_controller_is_not_taken() {
    let m = Machine::new();
    m.nvme("0000:00:05.0", None, Some(4)).node("4");
    let e = m.preflight("0000:00:05.0").unwrap_err();
    assert!(matches!(e, Error::NotBoundToVfio { .. }), "{e:?}");
    assert!(message(&e).contains("not bound to vfio-pci (it has no driver)"), "{e}");
}

#[test]
fn no_iommu_group_points_at_the_kernel_command_line() {
    let m = Machine::new();
    m.nvme("0000:00:05.0", Some("vfio-pci"), None);
    let e = m.preflight("0000:00:05.0").unwrap_err();
    assert!(matches!(e, Error::NoIommuGroup { .. }), "{e:?}");
    let msg = message(&e);
    assert!(
        msg.contains("0000:00:05.0 has no IOMMU group")
            && msg.contains("intel_iommu=on")
            && msg.contains("amd_iommu=on")
    );
}

#[test]
fn a_missing_group_node_is_named() {
    let m = Machine::new();
    m.nvme("0000:00:05.0", Some("vfio-pci"), Some(4));
    let e = m.preflight("0000:00:05.0").unwrap_err();
    assert!(matches!(e, Error::VfioNodeMissing { group: 4, .. }), "{e:?}");
    let msg = message(&e);
    assert!(
        msg.contains("(IOMMU group 4)") && msg.contains("/4 does not exist") && msg.contains("modprobe vfio-pci"),
        "{msg}"
    );
}

#[test]
fn a_ready_controller_passes_preflight() {
    let m = Machine::new();
    m.nvme("0000:00:05.0", Some("vfio-pci"), Some(4)).node("4");
    let p = m.preflight("0000:00:05.0").unwrap();
    assert_eq!(
        (p.group, p.device.vendor, p.device.device, p.device.class),
        (4, QEMU_VENDOR, QEMU_NVME, NVME_CLASS)
    );
    assert_eq!(p.group_node, m.dev.path().join("4"));
}

#[test]
fn opening_reaches_the_container_after_preflight() {
    let m = Machine::new();
    m.nvme("0000:00:05.0", Some("vfio-pci"), Some(4)).node("4");
    // No container node.
    let e = open_nvme_with("0000:00:05.0", &m.options()).unwrap_err();
    assert!(
        matches!(&e, Error::VfioNodeMissing { path, .. } if path.ends_with("vfio")),
        "{e:?}"
    );
    // A container node that is not a VFIO device: the first ioctl fails, errno kept.
    m.node("vfio");
    let e = open_nvme_with("0000:00:05.0", &m.options()).unwrap_err();
    let msg = message(&e);
    assert!(matches!(e, Error::DeviceOs { .. }), "{e:?}");
    assert_eq!(e.errno(), Some(libc::ENOTTY));
    assert!(
        msg.starts_with("0000:00:05.0 (IOMMU group 4): VFIO_GET_API_VERSION on "),
        "{msg}"
    );
}

fn os(op: &'static str, path: &str, errno: i32) -> OsError {
    OsError::new(op, path, io::Error::from_raw_os_error(errno))
}

#[test]
fn permission_denied_mentions_root_and_the_memlock_limit() {
    let bdf: Bdf = "0000:00:05.0".parse().unwrap();
    let e = opening_error(bdf, 4, os("open", "/dev/vfio/4", libc::EACCES));
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e:?}");
    assert_eq!(e.errno(), Some(libc::EACCES));
    let msg = message(&e);
    for needle in [
        "0000:00:05.0",
        "IOMMU group 4",
        "/dev/vfio/4",
        "run as root",
        "ulimit -l",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from {msg}");
    }
}

#[test]
fn a_busy_group_is_in_use() {
    let bdf: Bdf = "0000:00:05.0".parse().unwrap();
    let e = opening_error(bdf, 4, os("open", "/dev/vfio/4", libc::EBUSY));
    assert!(matches!(e, Error::InUse { .. }), "{e:?}");
    let msg = message(&e);
    assert!(
        msg.contains("0000:00:05.0 (IOMMU group 4) is in use") && msg.contains("/dev/vfio/4") && msg.contains("EBUSY"),
        "{msg}"
    );
    let e = opening_error(bdf, 4, os("VFIO_GROUP_GET_DEVICE_FD", "/dev/vfio/4", libc::EBUSY));
    assert!(matches!(e, Error::InUse { .. }), "{e:?}");
    // Named holders replace the hint to run fuser.
    let e = Error::InUse {
        bdf,
        group: 4,
        path: "/dev/vfio/4".into(),
        holders: vec!["qemu (pid 7)".into(), "ironvme (pid 9, this process)".into()],
    };
    assert_eq!(
        message(&e),
        "0000:00:05.0 (IOMMU group 4) is in use: /dev/vfio/4 is already open by qemu (pid 7), \
         ironvme (pid 9, this process) (EBUSY); close it first"
    );
    let e = opening_error(bdf, 4, os("VFIO_SET_IOMMU", "/dev/vfio/vfio", libc::EINVAL));
    assert!(
        matches!(e, Error::DeviceOs { .. }) && e.errno() == Some(libc::EINVAL),
        "{e:?}"
    );
}

#[test]
fn a_group_that_is_not_viable_lists_its_members() {
    let e = Error::GroupNotViable {
        bdf: "0000:01:00.0".parse().unwrap(),
        group: 9,
        members: vec![
            GroupMember {
                name: "0000:01:00.0".into(),
                driver: Some("vfio-pci".into()),
            },
            GroupMember {
                name: "0000:01:00.1".into(),
                driver: Some("e1000e".into()),
            },
        ],
    };
    let msg = message(&e);
    assert!(msg.contains("0000:01:00.0 (IOMMU group 9) is not viable"), "{msg}");
    assert!(
        msg.contains("0000:01:00.0 (driver vfio-pci), 0000:01:00.1 (driver e1000e)"),
        "{msg}"
    );
}

#[test]
fn sysfs_lists_the_members_a_non_viable_error_would_show() {
    let m = Machine::new();
    m.nvme("0000:01:00.0", Some("vfio-pci"), Some(9));
    m.sys
        .add("0000:01:00.1", 0x8086, 0x10d3, 0x020000, Some("e1000e"), Some(9));
    let members = m.sys.sysfs().group_members(9).unwrap();
    assert_eq!(members.iter().filter(|m| m.blocks_vfio()).count(), 1);
}

#[test]
fn the_holders_of_an_open_node_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("group");
    std::fs::write(&node, b"").unwrap();
    let proc = std::path::Path::new("/proc");
    assert_eq!(holders_of(&node, proc), Vec::<String>::new(), "nobody has it open yet");
    let held = std::fs::File::open(&node).unwrap();
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(
        holders_of(&node, proc),
        [format!("{} (pid {}, this process)", comm.trim(), std::process::id())]
    );
    drop(held);
    assert_eq!(holders_of(&node, proc), Vec::<String>::new());
    assert_eq!(holders_of(&node, &dir.path().join("no-proc")), Vec::<String>::new());
}
