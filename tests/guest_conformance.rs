//! The conformance suite on QEMU's NVMe controllers, for all five backends: io_uring on
//! `/dev/nvmeXnY`, io_uring passthrough on `/dev/ngXnY`, ioctl passthrough on
//! `/dev/nvmeX`, psync on `/dev/nvmeXnY` — all on the kernel-owned controller's 512 B and
//! 4 KiB namespaces — and ironvme's VFIO driver on the 4 KiB and 512 B VFIO controllers.
//! Runs inside the guest (`scripts/test`).

mod common;
mod conformance;

use common::{OnVfio, env, kernel_ctrl};
use conformance::{Subject, run};
use ironvme::{Backend, Device, OpenOptions};

fn open(spec: &str, backend: Backend) -> Device {
    let options = OpenOptions {
        backend: Some(backend),
        ..Default::default()
    };
    Device::open(spec, &options).unwrap_or_else(|e| panic!("open {spec} with {backend}: {e}"))
}

/// `/dev/nvmeX` of the kernel-owned controller.
fn kernel_controller() -> String {
    kernel_ctrl(&env("IRONVME_KERNEL_BDF")).display().to_string()
}

fn on_kernel_namespaces(backend: Backend, node: impl Fn(&str, u32) -> String) {
    let ctrl = kernel_controller();
    for nsid in [1, 2] {
        let spec = node(&ctrl, nsid);
        let device = open(&spec, backend);
        assert_eq!(device.backend(), backend);
        let nsid_in_device = if backend == Backend::Ioctl { Some(nsid) } else { None };
        run(&Subject {
            name: format!("{backend} {spec} nsid {nsid}"),
            device,
            nsid: nsid_in_device,
            base_lba: 0,
        });
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn uring_on_the_namespace_block_devices() {
    on_kernel_namespaces(Backend::Uring, |ctrl, nsid| format!("{ctrl}n{nsid}"));
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn uring_cmd_on_the_namespace_generic_devices() {
    on_kernel_namespaces(Backend::UringCmd, |ctrl, nsid| {
        format!("{}n{nsid}", ctrl.replace("/dev/nvme", "/dev/ng"))
    });
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn ioctl_on_the_controller_device() {
    on_kernel_namespaces(Backend::Ioctl, |ctrl, _| ctrl.to_string());
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn psync_on_the_namespace_block_devices() {
    on_kernel_namespaces(Backend::Psync, |ctrl, nsid| format!("{ctrl}n{nsid}"));
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn vfio_on_both_vfio_controllers() {
    for var in ["IRONVME_VFIO_4K_BDF", "IRONVME_VFIO_512_BDF"] {
        let vfio = OnVfio::bind(var);
        let device = open(&vfio.bdf, Backend::Vfio);
        run(&Subject {
            name: format!("vfio {}", vfio.bdf),
            device,
            nsid: None,
            base_lba: 0,
        });
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn each_kind_of_path_picks_its_backend_and_wrong_ones_say_why() {
    let ctrl = kernel_controller();
    let ng = ctrl.replace("/dev/nvme", "/dev/ng");
    for (spec, backend) in [
        (format!("{ctrl}n1"), Backend::Uring),
        (format!("{ng}n1"), Backend::UringCmd),
        (ctrl.clone(), Backend::Ioctl),
    ] {
        let d = Device::open(&spec, &OpenOptions::default()).unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(d.backend(), backend, "{spec}");
    }
    let wrong = |spec: &str, backend: Backend| -> String {
        let options = OpenOptions {
            backend: Some(backend),
            ..Default::default()
        };
        match Device::open(spec, &options) {
            Ok(_) => panic!("{spec} with {backend} must fail"),
            Err(e) => e.to_string(),
        }
    };
    let e = wrong(&format!("{ctrl}n1"), Backend::UringCmd);
    assert!(e.contains("uring-cmd") && e.contains("/dev/ng"), "{e}");
    let e = wrong(&format!("{ng}n1"), Backend::Uring);
    assert!(e.contains("uring") && e.contains("uring-cmd"), "{e}");
    let e = wrong(&format!("{ctrl}n1"), Backend::Vfio);
    assert!(
        e.contains("bound to the kernel nvme driver") && e.contains("setup.sh bind"),
        "{e}"
    );
    eprintln!("refusals say which backend and why, e.g.: {e}");
}
