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
    let vde = Vde::format(open_device(spec, backend), options(nsid))
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
    Vde::format(open_device(&dev, Backend::Vfio), small())
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

/// A store held open by this process with an exclusive claim, as `ironvme vde put`
/// holds it; the store is closed before the claim is released.
struct Held {
    vde: Vde,
    _claim: ironvme::claim::Claim,
}

fn hold(spec: &str, backend: Backend) -> Held {
    let target = ironvme::Target::parse(spec).unwrap();
    let claim = ironvme::claim::Claim::acquire(&target, spec, ironvme::claim::Access::Exclusive)
        .unwrap_or_else(|e| panic!("claim {spec}: {e}"));
    let vde = Vde::format(open_device(spec, backend), small()).unwrap_or_else(|e| panic!("format {spec}: {e}"));
    Held { vde, _claim: claim }
}

/// Runs `ironvme ARGS` and expects a refusal because the store is in use by this process.
fn refused_as_in_use(args: &[&str], via: Option<&str>) {
    let o = ironvme(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "ironvme {args:?} was not refused: {err}");
    let me = format!("(pid {}) for writing", std::process::id());
    assert!(
        err.starts_with("ironvme: refusing to run vde ") && err.contains(" is in use") && err.contains(&me),
        "ironvme {args:?}: {err}"
    );
    if let Some(node) = via {
        assert!(
            err.contains(&format!("(its block device {node})")),
            "ironvme {args:?}: {err}"
        );
    }
}

/// The store's device and backend, the commands a second process tries, and the block
/// device through which their claim meets the holder's (`None`: the device itself).
type Case<'a> = (&'a str, Backend, Vec<Vec<&'a str>>, Option<&'a str>);

/// A second process opening a store this process holds — on a regular file, on a block
/// device, and on a generic node, by every path to the same namespace — is refused with
/// an error naming this process; the store's data and fsck stay clean, and the store is
/// usable again once released.
#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn a_second_opener_is_refused() {
    let dir = tempfile::tempdir_in("/run").unwrap();
    let obj = dir.path().join("obj");
    std::fs::write(&obj, bytes(9, 50_000)).unwrap();
    let obj = obj.to_str().unwrap();
    let image = dir.path().join("vde.img");
    std::fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
    let image = image.to_str().unwrap().to_string();
    let ctrl = kernel_ctrl(&env("IRONVME_KERNEL_BDF")).display().to_string();
    let (block1, generic1) = (kernel_ns(1), kernel_ns(1).replace("/dev/nvme", "/dev/ng"));
    let (block2, generic2) = (kernel_ns(2), kernel_ns(2).replace("/dev/nvme", "/dev/ng"));
    let cases: Vec<Case> = vec![
        (
            &image,
            Backend::Psync,
            vec![
                vec!["vde", "put", "--backend", "psync", &image, "x", obj],
                vec!["vde", "get", "--backend", "psync", &image, "k"],
                vec!["vde", "fsck", "--backend", "psync", &image],
            ],
            None,
        ),
        (
            &block1,
            Backend::Uring,
            vec![
                vec!["vde", "put", &block1, "x", obj],
                vec!["vde", "ls", &block1],
                vec!["vde", "put", &generic1, "x", obj],
                vec!["vde", "stat", &generic1, "k"],
                vec!["vde", "put", &ctrl, "--nsid", "1", "x", obj],
            ],
            Some(&block1),
        ),
        (
            &generic2,
            Backend::UringCmd,
            vec![
                vec!["vde", "put", &generic2, "x", obj],
                vec!["vde", "get", &generic2, "k"],
                vec!["vde", "rm", &block2, "k"],
                vec!["vde", "info", &ctrl, "--nsid", "2"],
                vec!["vde", "format", &block2, "--force"],
            ],
            Some(&block2),
        ),
    ];
    for (dev, backend, attempts, via) in cases {
        let held = hold(dev, backend);
        let data = bytes(5, 300_000);
        held.vde.put(b"k", &data).unwrap();
        for args in attempts {
            // The node named is the claimed one itself when it is the block device.
            let via = via.filter(|v| !args.contains(v));
            refused_as_in_use(&args, via);
        }
        assert_eq!(held.vde.get(b"k").unwrap(), data, "{dev}: the holder's data");
        let r = held.vde.fsck().unwrap();
        assert!(r.clean(), "{dev}: {:?}", r.violations);
        assert_eq!(held.vde.list(b"", None, 10).unwrap(), [b"k".to_vec()], "{dev}");
        drop(held);
        // Released: the next opener gets the store, with the holder's data.
        let mut put = vec!["vde", "put", dev, "x", obj];
        let mut fsck = vec!["vde", "fsck", dev];
        if backend == Backend::Psync {
            put.insert(2, "--backend");
            put.insert(3, "psync");
            fsck.insert(2, "--backend");
            fsck.insert(3, "psync");
        }
        for args in [put, fsck] {
            let o = ironvme(&args);
            assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
}
