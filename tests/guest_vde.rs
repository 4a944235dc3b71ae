//! The VDE on QEMU's NVMe controllers: ironvme's VFIO driver on the 4 KiB and 512 B
//! controllers, and io_uring, io_uring passthrough, ioctl and psync on the kernel-owned
//! controller — the same checks as on the host (`tests/vde_suite`). Plus the CLI on VFIO,
//! and writers killed mid-put on VFIO. Runs inside the guest (`scripts/test`).

mod common;
mod vde_suite;

use common::{OnVfio, env, ironvme, kernel_ctrl};
use ironvme::vde::{Vde, VdeOptions};
use ironvme::{Backend, Device, OpenOptions};
use vde_suite::*;

/// Inodes for guest stores: enough for the tests, few enough that format is quick.
const INODES: u64 = 4096;

fn open_device(spec: &str, backend: Backend) -> Device {
    let o = OpenOptions {
        backend: Some(backend),
        ..Default::default()
    };
    Device::open(spec, &o).unwrap_or_else(|e| panic!("open {spec} with {backend}: {e}"))
}

fn options(nsid: Option<u32>) -> VdeOptions {
    VdeOptions { nsid, ..small() }
}

/// The suite on one device: the model with reopens, refusals, and threads.
fn suite(spec: &str, backend: Backend, nsid: Option<u32>) {
    let vde = Vde::format(open_device(spec, backend), INODES, options(nsid))
        .unwrap_or_else(|e| panic!("{backend} {spec}: format: {e}"));
    assert_eq!(vde.device().backend(), backend);
    refusals(&vde);
    let vde = model_run(vde, 0x5eed ^ backend as u64, 60, 20, &|v: Vde| {
        v.close().unwrap();
        Vde::open(open_device(spec, backend), options(nsid)).unwrap()
    });
    let vde = stress(vde, 2, 40, 8000);
    vde.close().unwrap();
}

fn kernel_ns(nsid: u32) -> String {
    format!("{}n{nsid}", kernel_ctrl(&env("IRONVME_KERNEL_BDF")).display())
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn on_vfio_4k_and_512() {
    for var in ["IRONVME_VFIO_4K_BDF", "IRONVME_VFIO_512_BDF"] {
        let ctrl = OnVfio::bind(var);
        suite(&ctrl.bdf, Backend::Vfio, None);
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn on_the_kernel_backends() {
    suite(&kernel_ns(1), Backend::Uring, None);
    suite(&kernel_ns(2).replace("/dev/nvme", "/dev/ng"), Backend::UringCmd, None);
    suite(
        &kernel_ctrl(&env("IRONVME_KERNEL_BDF")).display().to_string(),
        Backend::Ioctl,
        Some(1),
    );
    suite(&kernel_ns(2), Backend::Psync, None);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn the_cli_on_vfio() {
    let ctrl = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let dev = ctrl.bdf.as_str();
    let ok = |args: &[&str]| {
        let out = ironvme(args);
        assert!(
            out.status.success(),
            "ironvme {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let refused = ironvme(&["vde", "format", dev]);
    assert!(
        !refused.status.success(),
        "format without --force and no answer must not run"
    );
    ok(&["vde", "format", dev, "--force", "--inodes", "2048"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("obj");
    let data = bytes(3, 700_000);
    std::fs::write(&file, &data).unwrap();
    ok(&["vde", "put", dev, "dir/a", file.to_str().unwrap()]);
    ok(&["vde", "put", dev, "dir/b", file.to_str().unwrap()]);
    ok(&["vde", "put", dev, "other", file.to_str().unwrap()]);
    let got = ironvme(&["vde", "get", dev, "dir/a"]);
    assert!(got.status.success() && got.stdout == data, "get returned other bytes");
    assert_eq!(ok(&["vde", "ls", dev, "dir/"]), "dir/a\ndir/b\n");
    let stat: serde_json::Value = serde_json::from_str(&ok(&["vde", "stat", dev, "dir/b", "--json"])).unwrap();
    assert_eq!(stat["size"], 700_000);
    ok(&["vde", "rm", dev, "dir/a"]);
    let gone = ironvme(&["vde", "get", dev, "dir/a"]);
    assert!(!gone.status.success() && String::from_utf8_lossy(&gone.stderr).contains("no object"));
    let fsck: serde_json::Value = serde_json::from_str(&ok(&["vde", "fsck", dev, "--json"])).unwrap();
    assert_eq!(fsck["objects"], 2);
    assert_eq!(fsck["violations"].as_array().unwrap().len(), 0);
}

/// `ironvme vde put` on VFIO killed mid-stream, twice: acknowledged puts survive, fsck
/// is clean.
#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn killed_writers_on_vfio() {
    use std::os::unix::process::CommandExt;
    let ctrl = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let dev = ctrl.bdf.clone();
    Vde::format(open_device(&dev, Backend::Vfio), 2048, small())
        .unwrap()
        .close()
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_ironvme");
    let mut expected: [Option<u64>; 4] = [None; 4];
    for round in 0..2u64 {
        let log = work.path().join(format!("log{round}"));
        for i in 0..4u64 {
            let k = format!("k{i}");
            std::fs::write(
                work.path().join(format!("v{round}_{i}")),
                value(k.as_bytes(), round, i, 200_000),
            )
            .unwrap();
        }
        let script = format!(
            "i=0; while :; do k=$((i % 4)); echo START $k $i >> {log}; {bin} vde put {dev} k$k {dir}/v{round}_$k && echo ACK $k $i >> {log}; i=$((i+1)); done",
            log = log.display(),
            dir = work.path().display(),
        );
        let mut child = std::process::Command::new("sh")
            .args(["-c", &script])
            .process_group(0)
            .spawn()
            .unwrap();
        // Long enough for several puts under TCG, then kill in the middle of one.
        let start = std::time::Instant::now();
        while std::fs::read_to_string(&log).unwrap_or_default().matches("ACK").count() < 3 {
            assert!(start.elapsed().as_secs() < 120, "no puts finished");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(137 * (round + 1)));
        // SAFETY: kill(2) on the process group we made; no memory is involved.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        child.wait().unwrap();
        // The killed process's VFIO file descriptors close as it exits; wait for that.
        let start = std::time::Instant::now();
        let device = loop {
            match Device::open(
                &dev,
                &OpenOptions {
                    backend: Some(Backend::Vfio),
                    ..Default::default()
                },
            ) {
                Ok(d) => break d,
                Err(e) if start.elapsed().as_secs() < 20 && e.to_string().contains("EBUSY") => {
                    std::thread::sleep(std::time::Duration::from_millis(100))
                }
                Err(e) => panic!("reopen {dev}: {e}"),
            }
        };
        let vde = Vde::open(device, small()).unwrap();
        check_after_kill(&vde, &std::fs::read_to_string(&log).unwrap(), round, &mut expected);
        vde.close().unwrap();
    }
}
