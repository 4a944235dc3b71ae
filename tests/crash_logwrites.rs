//! Crash-state enumeration from QEMU's own write log: the VDE runs in a guest on VFIO,
//! on namespaces whose every write and Flush QEMU's `blklogwrites` block driver logs to a
//! host file (`qemu/run --topology crash`); on the host, the log is parsed
//! ([`ironvme::nvme::crash::logwrites`]), crash states are built from it, and each is
//! opened with the psync backend and checked like `tests/crash_states.rs` does.
//!
//! [`crash_states_from_qemu_blklogwrites`] runs on the host (scripts/test runs it after the
//! process crashes): it boots one guest, which runs [`workload_in_guest`] on the 512 B and the
//! 4 KiB namespace in turn. The guest notes, for each operation, the log file's size before
//! it and when it was acknowledged (the run directory is 9p without caching, so the size is
//! QEMU's; QEMU writes an entry's record before completing its request), which the host
//! turns into log positions. `IRONVME_CRASH_STATES` / `IRONVME_CRASH_SEED` as in
//! `tests/crash_states.rs` (default [`DEFAULT_STATES`] per namespace).

mod common;
mod crash_suite;
mod vde_suite;

use crash_suite::{Op, check_all, check_positions, options, workload};
use ironvme::nvme::crash::CrashConfig;
use ironvme::nvme::crash::logwrites::parse;
use ironvme::vde::{Vde, VdeOptions};
use ironvme::{Backend, Device, OpenOptions};
use std::io::{BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// States checked per namespace by default.
const DEFAULT_STATES: usize = 300;
/// Workload steps per namespace.
const STEPS: u64 = 30;
/// The logged namespaces: (NSID, logical block size in bytes).
const NAMESPACES: [(u32, u32); 2] = [(1, 512), (2, 4096)];
/// The namespaces' size in bytes (`qemu/run`'s crash topology).
const NS_BYTES: usize = 32 << 20;

fn seed() -> u64 {
    std::env::var("IRONVME_CRASH_SEED").map_or(1, |s| s.parse().expect("IRONVME_CRASH_SEED"))
}

/// The guest's half: the workload on each logged namespace through VFIO; the operations
/// (with log file sizes for positions) go to `ops-ns<N>.txt` in the run directory.
#[test]
#[ignore = "guest: run by crash_states_from_qemu_blklogwrites"]
fn workload_in_guest() {
    let ctrl = common::OnVfio::bind("IRONVME_LOGGED_BDF");
    let run = PathBuf::from(common::env("IRONVME_RUN_DIR"));
    for (nsid, lba) in NAMESPACES {
        let log = PathBuf::from(common::env(&format!("IRONVME_LOGGED_NS{nsid}_WRITE_LOG")));
        let dev = Device::open(
            &ctrl.bdf,
            &OpenOptions {
                backend: Some(Backend::Vfio),
                ..Default::default()
            },
        )
        .expect("open the VFIO controller");
        assert_eq!(dev.namespace(Some(nsid)).unwrap().block_size, lba);
        let opts = VdeOptions {
            nsid: Some(nsid),
            ..options()
        };
        let t = Instant::now();
        let size = || std::fs::metadata(&log).expect("the write log").len();
        let ops = workload(|| Vde::format(dev, opts).expect("format"), seed(), STEPS, 1, &size);
        println!(
            "namespace {nsid} ({lba} B): {} operations in {:.1} s, write log {} KiB",
            ops.len(),
            t.elapsed().as_secs_f64(),
            size() / 1024
        );
        let text: String = ops.iter().map(|op| op.to_line() + "\n").collect();
        std::fs::write(run.join(format!("ops-ns{nsid}.txt")), text).unwrap();
    }
}

/// Boots the crash topology once, runs [`workload_in_guest`], then checks crash states of
/// each namespace's log on the host.
#[test]
#[ignore = "boots QEMU: run by scripts/test"]
fn crash_states_from_qemu_blklogwrites() {
    let crash = CrashConfig::from_env(DEFAULT_STATES);
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let disks = work.path().join("disks");
    let t = Instant::now();
    let status = std::process::Command::new(common::repo().join("qemu/run"))
        .args(["--tty", "no", "--timeout", "900", "--topology", "crash", "--disks"])
        .arg(&disks)
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "workload_in_guest",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("IRONVME_CRASH_SEED", crash.seed.to_string())
        .stdin(std::process::Stdio::null())
        .status()
        .expect("run qemu/run");
    assert!(status.success(), "the guest's workload failed: {status}");
    println!("guest workload: {:.1} s", t.elapsed().as_secs_f64());
    // The states are written to a file in memory where there is one.
    let shm = Path::new("/dev/shm");
    let scratch = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir_in(work.path()).unwrap()
    };
    for (nsid, lba) in NAMESPACES {
        let run = disks.join("run");
        let bytes = std::fs::read(run.join(format!("logged-ns{nsid}.writes"))).unwrap();
        // A fresh log file (qemu/run makes one per run): the entries past the superblock's
        // count (after the last Flush) are QEMU's too.
        let parsed = parse(&bytes, true).unwrap_or_else(|e| panic!("namespace {nsid}: the write log: {e}"));
        let log = &parsed.log;
        // The log is the namespace: replayed onto the blank image it gives the final disk.
        let image = std::fs::read(disks.join(format!("logged-ns{nsid}.img"))).unwrap();
        assert_eq!(image.len(), NS_BYTES);
        assert!(
            log.apply_all(&vec![0u8; NS_BYTES]).unwrap() == image,
            "namespace {nsid}: the write log replayed differs from the disk image"
        );
        let ops: Vec<Op> = std::io::BufReader::new(std::fs::File::open(run.join(format!("ops-ns{nsid}.txt"))).unwrap())
            .lines()
            .map(|l| {
                let mut op = Op::from_line(&l.unwrap());
                op.start = parsed.position(op.start) as u64;
                op.ack = op.ack.map(|a| parsed.position(a) as u64);
                op
            })
            .collect();
        println!(
            "namespace {nsid} ({lba} B): {} operations, write log of {} KiB: {} entries \
             ({} Flushes, {} past the superblock's count)",
            ops.len(),
            bytes.len() / 1024,
            log.entries.len(),
            log.flushes(),
            parsed.trailing
        );
        check_positions(&ops, log);
        let config = CrashConfig {
            atomic_unit: Some(lba),
            ..crash.clone()
        };
        let path = scratch.path().join(format!("state-ns{nsid}.img"));
        let mut file = std::fs::File::create(&path).unwrap();
        let t = Instant::now();
        let tally = check_all(log, vec![0u8; NS_BYTES], &config, &ops, &mut |image| {
            file.rewind().unwrap();
            file.write_all(image).unwrap();
            let o = OpenOptions {
                backend: Some(Backend::Psync),
                file_block_size: Some(lba),
                ..Default::default()
            };
            Vde::open(Device::open(path.to_str().unwrap(), &o).unwrap(), options())
        });
        println!(
            "namespace {nsid} ({lba} B): {}, in {:.1} s ({config:?})",
            tally.summary(),
            t.elapsed().as_secs_f64()
        );
        assert!(tally.in_flight > 0, "the sample has in-flight states");
        tally.assert_clean(&format!("QEMU blklogwrites, namespace {nsid} ({lba} B)"), &ops);
    }
}
