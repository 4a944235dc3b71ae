//! Guest tests: namespaces formatted with metadata or protection information are listed
//! and identified, but I/O on them is refused — by every backend that sends NVMe commands
//! itself (the VFIO driver, NVMe ioctl passthrough, io_uring passthrough) — with an error
//! naming the LBA format and how to reformat. ironvme does not transfer metadata yet: on
//! such a namespace the controller would move NLB × (LBADS + MS) bytes into a buffer of
//! NLB × LBADS, or write metadata to MPTR = 0.
//!
//! The controller with serial `ironvme-meta` of the default topology has nsid 1 with 4 KiB
//! blocks and 8 bytes of metadata at the end of each (extended LBA; LBA format 5 of QEMU's
//! eight, capacity 0 as a block device on Linux 6.1, while `/dev/ngXn1` works) and nsid 2
//! with 512-byte blocks, 8 bytes of separate metadata and protection information type 1
//! (LBA format 1).
//!
//! ```text
//! cargo test --all-features --no-run --test guest_metadata
//! qemu/run -- target/debug/deps/guest_metadata-<hash> --ignored --test-threads=1
//! ```

mod common;

use common::{OnVfio, env, ironvme, kernel_ctrl};
use ironvme::nvme::ctrl::{ControllerConfig, Error, NamespaceQueue};
use ironvme::{Backend, Device, OpenOptions};
use ironvme_kernel::{IoctlDevice, KernelError, UringCmdDevice};
use std::path::{Path, PathBuf};

/// What the refusal of each namespace must say: (nsid, its format, the format to use).
const EXPECTED: [(u32, &str, &str); 2] = [
    (
        1,
        "LBA format 5 (LBADS 12: 4096-byte blocks; MS 8: 8 bytes of metadata at the end of each block (extended \
         LBA); DPS 0x00: no protection information)",
        "--lbaf 4`",
    ),
    (
        2,
        "LBA format 1 (LBADS 9: 512-byte blocks; MS 8: 8 bytes of metadata per block in a separate buffer; DPS \
         0x01: protection information type 1)",
        "--lbaf 0`",
    ),
];

fn assert_refusal(what: &str, nsid: u32, message: &str, device: &str) {
    let (_, format, alternative) = EXPECTED.iter().find(|e| e.0 == nsid).unwrap();
    assert!(
        message.contains(&format!("namespace {nsid} is formatted with {format}")),
        "{what}: {message}"
    );
    assert!(
        message.contains(&format!("`ironvme format {device} --nsid {nsid} {alternative}")),
        "{what}: {message}"
    );
    assert!(message.contains("nvme format /dev/nvme"), "{what}: {message}");
}

/// `/dev/ngXnY` of namespace `nsid` of controller node `/dev/nvmeX`.
fn generic(ctrl: &Path, nsid: u32) -> PathBuf {
    let name = ctrl.file_name().unwrap().to_string_lossy();
    PathBuf::from(format!("/dev/ng{}n{nsid}", &name["nvme".len()..]))
}

fn expect_metadata_refusal(what: &str, e: KernelError, nsid: u32, ctrl: &Path) {
    assert!(matches!(e, KernelError::MetadataUnsupported { .. }), "{what}: {e:?}");
    assert_refusal(what, nsid, &e.to_string(), &ctrl.display().to_string());
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn kernel_passthrough_lists_namespaces_with_metadata_and_refuses_their_io() {
    let ctrl = kernel_ctrl(&env("IRONVME_META_BDF"));
    // The controller node: both namespaces listed, no queue on either.
    let dev = IoctlDevice::open(&ctrl).unwrap();
    let listed: Vec<(u32, u32)> = dev.namespaces().iter().map(|n| (n.nsid, n.block_size)).collect();
    assert_eq!(listed, [(1, 4096), (2, 512)]);
    for nsid in [1, 2] {
        let e = dev.create_queue(nsid, 4).unwrap_err();
        expect_metadata_refusal(&format!("ioctl {} nsid {nsid}", ctrl.display()), e, nsid, &ctrl);
        // Each namespace's own nodes, through both passthrough backends.
        let ng = generic(&ctrl, nsid);
        let dev = IoctlDevice::open(&ng).unwrap();
        assert_eq!(dev.namespaces().len(), 1);
        let e = dev.create_queue(nsid, 4).unwrap_err();
        expect_metadata_refusal(&format!("ioctl {}", ng.display()), e, nsid, &ctrl);
        let dev = UringCmdDevice::open(&ng).unwrap();
        assert_eq!(dev.namespace().nsid, nsid);
        let e = dev.create_queue(4).unwrap_err();
        expect_metadata_refusal(&format!("uring-cmd {}", ng.display()), e, nsid, &ctrl);
        let block = PathBuf::from(ng.to_string_lossy().replace("/dev/ng", "/dev/nvme"));
        let e = IoctlDevice::open(&block).unwrap().create_queue(nsid, 4).unwrap_err();
        expect_metadata_refusal(&format!("ioctl {}", block.display()), e, nsid, &ctrl);
    }
    // The CLI: identify-ns still shows the namespaces; perf is refused before any I/O.
    let dev_text = ctrl.display().to_string();
    let o = ironvme(&["identify-ns", &dev_text, "--nsid", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ms:8"), "{o:?}");
    for nsid in [1, 2] {
        let ng = generic(&ctrl, nsid);
        let o = ironvme(&["perf", ng.to_str().unwrap(), "--rw", "randread", "--time", "1"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "perf {}: {err}", ng.display());
        assert_refusal(&format!("perf {}", ng.display()), nsid, &err, &dev_text);
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn the_vfio_driver_initialises_but_refuses_io_on_namespaces_with_metadata() {
    let vfio = OnVfio::bind("IRONVME_META_BDF");
    {
        let c = ironvme::open_vfio(&vfio.bdf, ControllerConfig::default(), false)
            .unwrap_or_else(|e| panic!("open {}: {e}", vfio.bdf))
            .controller;
        let listed: Vec<(u32, u32, u16)> = c
            .namespaces()
            .iter()
            .map(|n| (n.nsid, n.block_size, n.metadata_size))
            .collect();
        assert_eq!(listed, [(1, 4096, 8), (2, 512, 8)]);
        for nsid in [1, 2] {
            let e = NamespaceQueue::new(&c, nsid, 8).err().expect("queue refused");
            assert!(matches!(e, Error::MetadataUnsupported(_)), "{e:?}");
            assert_refusal("NamespaceQueue::new", nsid, &e.to_string(), "DEV");
            // The typed I/O of a queue pair too.
            let ns = c.namespace(nsid).unwrap();
            let mut pair = c.create_io_queue_pair().unwrap();
            let buf = c.dma().allocate(ns.block_size as usize).unwrap();
            let e = pair.read(&ns, 0, buf, 1).unwrap_err();
            assert!(matches!(e.error, Error::MetadataUnsupported(_)), "{e:?}");
            assert_eq!(pair.outstanding(), 0);
        }
        // The device layer names the PCI address in the reformatting command.
        drop(c);
        let options = OpenOptions {
            backend: Some(Backend::Vfio),
            ..Default::default()
        };
        let dev = Device::open(&vfio.bdf, &options).unwrap();
        assert_eq!(dev.namespaces().len(), 2);
        let e = dev.create_queue(Some(2), 8).err().expect("queue refused");
        assert_refusal("Device::create_queue", 2, &e.to_string(), &vfio.bdf);
    }
    // The CLI on the PCI address.
    let o = ironvme(&["identify-ns", &vfio.bdf, "--nsid", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = ironvme(&["perf", &vfio.bdf, "--nsid", "1", "--rw", "randread", "--time", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_refusal("perf", 1, &err, &vfio.bdf);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn reformatting_as_the_refusal_says_makes_the_namespace_usable() {
    // The kernel node's Format NVM carries --timeout to the ioctl (timeout_ms); the
    // kernel rescans the namespace after it.
    let ctrl = kernel_ctrl(&env("IRONVME_META_BDF"));
    let dev_text = ctrl.display().to_string();
    let o = ironvme(&[
        "format",
        &dev_text,
        "--nsid",
        "1",
        "--lbaf",
        "4",
        "--force",
        "--timeout",
        "600",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let restore = || {
        // Back to 4 KiB + 8 bytes at the end of each block (LBA format 5, MSET = 1).
        let o = std::process::Command::new("nvme")
            .args(["format", &dev_text, "-n", "1", "-l", "5", "-m", "1", "-f"])
            .output()
            .expect("run nvme format");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let dev = IoctlDevice::open(&ctrl).unwrap();
    let result = dev.create_queue(1, 4).map(|_| ());
    restore();
    result.unwrap_or_else(|e| panic!("after reformatting to LBA format 4: {e}"));
    let e = IoctlDevice::open(&ctrl).unwrap().create_queue(1, 4).unwrap_err();
    expect_metadata_refusal("after restoring LBA format 5", e, 1, &ctrl);
}
