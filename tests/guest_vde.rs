//! The VDE (format 2) on QEMU's NVMe controllers: ironvme's VFIO driver on the 4 KiB and
//! 512 B controllers, and io_uring, io_uring passthrough, ioctl and psync on the
//! kernel-owned controller — the same object checks as on the host (`tests/vde_suite`),
//! and the model-based test of volumes, snapshots and clones (`tests/vde_model`) on VFIO.
//! Plus the CLI on VFIO, volumes as devices (`vde:DEV:VOL`) under `ironvme perf` and
//! `ironvme verify`, writers killed mid-put on VFIO, and second openers refused. Runs
//! inside the guest (`scripts/test`).

mod common;
mod vde_model;
mod vde_suite;

use common::{OnVfio, env, ironvme, kernel_ctrl, send_recv, volume_hash};
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
    ok(&["vde", "format", dev, "--force"]);
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

/// Model cases per controller in the guest: each formats the store and runs up to
/// [`MODEL_STEPS`] steps under TCG, so a few keep the guest phase short (the host runs
/// many more on psync and io_uring, `tests/vde_volumes.rs`).
const MODEL_CASES: u32 = 8;
/// Most steps of one model case in the guest.
const MODEL_STEPS: usize = 80;

/// The model of objects, volumes, snapshots, clones and rollbacks (`tests/vde_model`) on
/// ironvme's VFIO driver, on the 4 KiB and the 512 B controller, with reopens (each a
/// controller reset).
#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn volumes_snapshots_and_clones_match_the_model_on_vfio() {
    use proptest::test_runner::{Config, TestRunner};
    for var in ["IRONVME_VFIO_4K_BDF", "IRONVME_VFIO_512_BDF"] {
        let ctrl = OnVfio::bind(var);
        let spec = ctrl.bdf.as_str();
        let format = || Vde::format(open_device(spec, Backend::Vfio), small()).unwrap();
        let open = || Vde::open(open_device(spec, Backend::Vfio), small()).unwrap();
        let mut runner = TestRunner::new(Config {
            cases: MODEL_CASES,
            // The host's source tree is read-only in the guest; a failure prints its
            // minimal steps instead.
            failure_persistence: None,
            max_shrink_iters: 64,
            ..Config::default()
        });
        let started = std::time::Instant::now();
        runner
            .run(&vde_model::steps(MODEL_STEPS), |steps| {
                vde_model::run(&format, &open, &steps);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{var} ({spec}): {e}"));
        println!(
            "{var}: {MODEL_CASES} model cases in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// Runs `ironvme ARGS`; fails the test unless it succeeds. Returns standard output.
fn cli_ok(args: &[&str]) -> String {
    let out = ironvme(args);
    assert!(
        out.status.success(),
        "ironvme {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `ironvme ARGS --json`; fails the test unless it succeeds.
fn cli_json(args: &[&str]) -> serde_json::Value {
    let text = cli_ok(&[args, &["--json"]].concat());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("ironvme {args:?}: {e}: {text}"))
}

/// Runs `ironvme ARGS`; fails the test unless it exits 1 (a device or OS error). Returns
/// (stdout, stderr).
fn cli_fails(args: &[&str]) -> (String, String) {
    cli_exits(args, 1)
}

/// Runs `ironvme ARGS`; fails the test unless it exits with `code`. Returns (stdout,
/// stderr).
fn cli_exits(args: &[&str], code: i32) -> (String, String) {
    let out = ironvme(args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "ironvme {args:?} did not exit {code}: {stdout}{stderr}"
    );
    (stdout, stderr)
}

/// A volume on a store on `dev` runs `ironvme perf` and `ironvme verify` unchanged as
/// `vde:DEV:VOL`, on the store's backend; its snapshot `vde:DEV:VOL@SNAP` reads back what
/// verify wrote before it even after perf overwrote the volume, and refuses writes.
fn volume_under_perf_and_verify(dev: &str, backend: &str) {
    let vol = format!("vde:{dev}:v");
    let snap = format!("vde:{dev}:v@s");
    cli_ok(&["vde", "format", dev, "--force"]);
    cli_ok(&["vde", "vol", "create", dev, "v", "--size", "16m"]);
    let region = ["--size", "4m", "--seed", "11"];
    let v = cli_json(&[&["verify", vol.as_str(), "--passes", "2"][..], &region].concat());
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(
        (v["device"].as_str(), v["backend"].as_str()),
        (Some(vol.as_str()), Some(backend)),
        "{v}"
    );
    assert_eq!(
        (v["block_size"].as_u64(), v["blocks"].as_u64()),
        (Some(4096), Some(1024)),
        "{v}"
    );
    cli_ok(&["vde", "snap", "create", dev, "v@s"]);
    // Overwrite the volume: random 4 KiB writes from two threads, then mixed I/O.
    let p = cli_json(&[
        "perf",
        &vol,
        "--rw",
        "randwrite",
        "--size",
        "4m",
        "--qd",
        "16",
        "--threads",
        "2",
        "--time",
        "1",
    ]);
    assert_eq!(
        (p["device"].as_str(), p["backend"].as_str()),
        (Some(vol.as_str()), Some(backend)),
        "{p}"
    );
    assert!(p["ios"].as_u64().unwrap() > 0 && p["errors"] == 0, "{p}");
    let p = cli_json(&["perf", &vol, "--rw", "randrw", "--qd", "8", "--time", "1"]);
    assert!(
        p["read"]["ios"].as_u64().unwrap() > 0 && p["write"]["ios"].as_u64().unwrap() > 0 && p["errors"] == 0,
        "{p}"
    );
    // The snapshot still holds pass 2 of the verify run; the volume does not.
    let ro = [&region[..], &["--read-only", "--pass", "2"]].concat();
    let s = cli_json(&[&["verify", snap.as_str()][..], &ro].concat());
    assert_eq!(s["ok"], true, "the snapshot changed: {s}");
    // Mismatches and no I/O error: exit 3.
    let (out, _) = cli_exits(&[&["verify", vol.as_str()][..], &ro, &["--json"]].concat(), 3);
    let o: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        o["mismatch_count"].as_u64().unwrap() > 0,
        "perf's writes did not reach the volume: {o}"
    );
    // Reads of the snapshot run; writes are refused.
    let p = cli_json(&["perf", &snap, "--rw", "randread", "--qd", "8", "--time", "1"]);
    assert!(p["ios"].as_u64().unwrap() > 0 && p["errors"] == 0, "{p}");
    for args in [
        &["perf", snap.as_str(), "--rw", "randwrite", "--time", "1"][..],
        &["verify", snap.as_str(), "--size", "1m", "--seed", "12"],
    ] {
        // The reason is in the report (stdout); the summary on stderr. Failed writes are
        // I/O errors: exit 1, whatever the read-back found.
        let (out, err) = cli_fails(args);
        assert!(out.contains("v@s is a snapshot, read-only"), "{args:?}: {out}{err}");
    }
    let s = cli_json(&[&["verify", snap.as_str()][..], &ro].concat());
    assert_eq!(s["ok"], true, "a refused write changed the snapshot: {s}");
    let f = cli_json(&["vde", "fsck", dev]);
    assert_eq!(
        (f["volumes"].as_u64(), f["snapshots"].as_u64()),
        (Some(1), Some(1)),
        "{f}"
    );
    assert_eq!(f["violations"], serde_json::json!([]), "{f}");
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn a_volume_runs_perf_and_verify_on_vfio_and_io_uring() {
    {
        let ctrl = OnVfio::bind("IRONVME_VFIO_4K_BDF");
        volume_under_perf_and_verify(&ctrl.bdf, "vfio");
    }
    // The 512 B namespace: each volume block is eight of its blocks.
    volume_under_perf_and_verify(&kernel_ns(1), "uring");
}

/// A second opener of a store whose volume is open (`vde:DEV:VOL`) — another volume, a
/// snapshot, the store itself through `ironvme vde`, in this process or another — is
/// refused, naming who holds it; the holder's I/O is unharmed, and once it closes, the
/// next opener gets the store.
fn second_openers_refused(dev: &str, aliases: &[&str]) {
    use ironvme::block::{Op, run_one};
    cli_ok(&["vde", "format", dev, "--force"]);
    cli_ok(&["vde", "vol", "create", dev, "v", "--size", "1m"]);
    cli_ok(&["vde", "vol", "create", dev, "w", "--size", "1m"]);
    cli_ok(&["vde", "snap", "create", dev, "v@s"]);
    let me = std::process::id();
    let held = Device::open(&format!("vde:{dev}:v"), &OpenOptions::default()).expect("open the volume");
    let mut q = held.create_queue(None, 4).unwrap();
    let buf = held.dma().allocate(4096).unwrap();
    let buf = run_one(&mut q, Op::Write { lba: 3, fua: true }, Some(buf))
        .map_err(|e| e.error)
        .unwrap();
    // In this process: a second open of any dataset of the store is refused.
    for spec in [format!("vde:{dev}:v"), format!("vde:{dev}:w"), format!("vde:{dev}:v@s")] {
        let e = Device::open(&spec, &OpenOptions::default())
            .err()
            .unwrap_or_else(|| panic!("{spec} opened beside the holder"))
            .to_string();
        assert!(
            e.contains("is in use") && e.contains(&format!("(pid {me}, this process)")),
            "{spec}: {e}"
        );
    }
    // Another process: through `vde:` on every alias of the device, and `ironvme vde`.
    let mut attempts: Vec<Vec<String>> = Vec::new();
    for d in std::iter::once(&dev).chain(aliases) {
        for ds in ["v", "w", "v@s"] {
            attempts.push(
                ["perf", &format!("vde:{d}:{ds}"), "--rw", "randread", "--time", "1"]
                    .map(String::from)
                    .to_vec(),
            );
        }
        attempts.push(["vde", "vol", "ls", d].map(String::from).to_vec());
    }
    attempts.push(["vde", "snap", "create", dev, "v@t"].map(String::from).to_vec());
    for args in &attempts {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (_, err) = cli_fails(&args);
        assert!(
            err.contains("is in use") && err.contains(&format!("(pid {me})")),
            "{args:?} was not refused naming this process: {err}"
        );
    }
    // The holder's volume still works.
    let buf = run_one(&mut q, Op::Read { lba: 3 }, buf).map_err(|e| e.error).unwrap();
    assert!(buf.is_some(), "a read returns its buffer");
    run_one(&mut q, Op::Flush, None).map_err(|e| e.error).unwrap();
    // Its buffer keeps the device's DMA mappings (and so the VFIO group) open.
    drop(buf);
    drop(q);
    drop(held);
    // Released: the next opener gets the store.
    let p = cli_json(&[
        "perf",
        &format!("vde:{dev}:w"),
        "--rw",
        "randwrite",
        "--time",
        "1",
        "--qd",
        "4",
    ]);
    assert!(p["ios"].as_u64().unwrap() > 0 && p["errors"] == 0, "{p}");
    let f = cli_json(&["vde", "fsck", dev]);
    assert_eq!(f["violations"], serde_json::json!([]), "{f}");
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn a_second_opener_of_a_volume_is_refused_on_vfio_and_io_uring() {
    {
        let ctrl = OnVfio::bind("IRONVME_VFIO_4K_BDF");
        second_openers_refused(&ctrl.bdf, &[]);
    }
    let block = kernel_ns(2);
    second_openers_refused(&block, &[&block.replace("/dev/nvme", "/dev/ng")]);
}

/// Random writes, zeroes and deallocates (the VDE stores both as holes) to volume `vol`
/// of the store on `spec`, through the library on `backend`.
fn mutate_volume(spec: &str, backend: Backend, vol: &str, seed: u64, ops: u64) {
    let vde = Vde::open(open_device(spec, backend), VdeOptions::default()).unwrap();
    let blocks = vde.dataset(vol).unwrap().size / 4096;
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..ops {
        let n = 1 + next() % 40;
        let at = next() % (blocks - n);
        if next() % 4 == 0 {
            vde.vol_unmap(vol, at, n).unwrap();
        } else {
            vde.vol_write(vol, at, &bytes(seed ^ i, n as usize * 4096), false)
                .unwrap();
        }
    }
    vde.close().unwrap();
}

/// Replication (docs/vde-stream.md) across controllers and backends, through the CLI and
/// pipes: a full send and five incrementals across two clones, each after random writes,
/// zeroes and deallocates, from the VFIO driver on the 4 KiB controller to io_uring on
/// the kernel's 512 B namespace, then one back the other way. Every snapshot hashes the
/// same on both stores, read through `vde:` volume devices, and both stay fsck-clean.
#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn replication_from_vfio_4k_to_io_uring_512_and_back() {
    let ctrl = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let (src, dst) = (ctrl.bdf.as_str(), kernel_ns(1));
    let dst = dst.as_str();
    let uring = ["--backend", "uring"];
    cli_ok(&["vde", "format", src, "--force"]);
    cli_ok(&[&["vde", "format", dst, "--force"][..], &uring].concat());
    cli_ok(&["vde", "vol", "create", src, "v", "--size", "16m"]);
    mutate_volume(src, Backend::Vfio, "v", 1, 60);
    cli_ok(&["vde", "snap", "create", src, "v@s0"]);
    let (sent, got) = send_recv(
        &["vde", "send", src, "v@s0"],
        &[&["vde", "recv", dst, "v"][..], &uring].concat(),
    );
    assert_eq!(sent["writes"], got["writes"]);
    // (snapshot, base, the clone's origin when the snapshot is of a new clone)
    let steps = [
        ("v@s1", "v@s0", None),
        ("c1@s2", "v@s1", Some("v@s1")),
        ("c1@s3", "c1@s2", None),
        ("c2@s4", "c1@s3", Some("c1@s3")),
        ("c2@s5", "c2@s4", None),
    ];
    for (i, (target, base, origin)) in steps.into_iter().enumerate() {
        let vol = target.split_once('@').unwrap().0;
        if let Some(o) = origin {
            cli_ok(&["vde", "clone", src, o, vol]);
        }
        mutate_volume(src, Backend::Vfio, vol, 10 + i as u64, 40);
        cli_ok(&["vde", "snap", "create", src, target]);
        let (sent, got) = send_recv(
            &["vde", "send", src, target, "-i", base],
            &[&["vde", "recv", dst, vol][..], &uring].concat(),
        );
        assert_eq!((&sent["writes"], &sent["frees"]), (&got["writes"], &got["frees"]));
        // An incremental carries only what changed.
        assert!(sent["blocks_skipped"].as_u64().unwrap() > 0, "{sent}");
    }
    // And back: changes made on the replica go home.
    mutate_volume(dst, Backend::Uring, "c2", 99, 30);
    cli_ok(&[&["vde", "snap", "create", dst, "c2@s6"][..], &uring].concat());
    send_recv(
        &[&["vde", "send", dst, "c2@s6", "-i", "@s5"][..], &uring].concat(),
        &["vde", "recv", src, "c2"],
    );
    for name in ["v@s0", "v@s1", "c1@s2", "c1@s3", "c2@s4", "c2@s5", "c2@s6"] {
        assert_eq!(
            volume_hash(src, Backend::Vfio, name),
            volume_hash(dst, Backend::Uring, name),
            "{name} differs between the source and the replica"
        );
    }
    assert!(cli_ok(&["vde", "fsck", src]).contains("clean"));
    assert!(cli_ok(&[&["vde", "fsck", dst][..], &uring].concat()).contains("clean"));
}
