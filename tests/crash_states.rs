//! Crash-state enumeration on the simulated controller: the VDE's workload runs with the
//! namespace's writes and Flushes recorded; every prefix ending at a Flush, random subsets
//! of the writes after each Flush, and torn writes (at 512 B on a 512 B namespace, where a
//! 4 KiB block tears; between blocks of a multi-block write on a 4 KiB one) are each
//! restored onto a fresh simulated namespace, opened, and checked: every operation
//! acknowledged before the cut is there with its bytes, one cut in flight is there wholly
//! or not at all, nothing else is there, and fsck is clean. Volumes: every write or unmap
//! acknowledged by a completed `vol_flush` holds (or a later one replaced it), each block
//! reads as a value written to it or zeros, snapshots read exactly what the volume held
//! when they returned (`crash_suite::check_state`).
//!
//! `IRONVME_CRASH_STATES=N` checks N states per test (default [`DEFAULT_STATES`]),
//! `IRONVME_CRASH_STATES=all` the exhaustive-ish set; `IRONVME_CRASH_SEED` picks them
//! and the workload.

mod common;
mod crash_suite;
mod vde_suite;

use crash_suite::{check_all, check_positions, options, workload};
use ironvme::Device;
use ironvme::nvme::crash::{CrashConfig, WriteLog};
use ironvme::nvme::sim::{SimConfig, SimController, SimNamespace};
use ironvme::vde::{Vde, VdeError};
use std::time::Instant;

/// States checked per test by default (about 13 s of CPU each, debug build).
const DEFAULT_STATES: usize = 150;
/// Workload steps.
const STEPS: u64 = 40;

fn config(ns: SimNamespace) -> SimConfig {
    SimConfig {
        namespaces: vec![ns],
        ..SimConfig::default()
    }
}

/// Records the workload of `threads` writers on `ns`, then checks its crash states.
fn enumerate(ns: SimNamespace, threads: u64) {
    let crash = CrashConfig::from_env(DEFAULT_STATES);
    let sim = SimController::new(config(ns));
    let start = sim.namespace_data(1);
    sim.record_writes(1);
    let dev = Device::simulated(sim.clone(), Default::default()).unwrap();
    let t = Instant::now();
    let ops = workload(
        || Vde::format(dev, options()).expect("format"),
        crash.seed,
        STEPS / threads,
        threads,
        &|| sim.write_log_len() as u64,
    );
    let log = sim.take_write_log().expect("the recording");
    let written: usize = log.entries.iter().map(|e| e.data.len()).sum();
    println!(
        "{} B blocks, {threads} writers: workload of {} ops: {} log entries ({} Flushes, {} KiB written) in {:.1} s",
        ns.block_size,
        ops.len(),
        log.entries.len(),
        log.flushes(),
        written / 1024,
        t.elapsed().as_secs_f64()
    );
    // The log is the workload: replayed onto the start, it is the final media.
    assert!(log.apply_all(&start).unwrap() == sim.namespace_data(1));
    if threads == 1 {
        check_positions(&ops, &log);
    }
    let t = Instant::now();
    let tally = check_all(&log, start, &crash, &ops, &mut |image| {
        let again = SimController::new(config(ns));
        again.restore_namespace(1, image);
        Vde::open(Device::simulated(again, Default::default()).unwrap(), options())
    });
    println!(
        "{} B blocks, {threads} writers: {}, in {:.1} s ({crash:?})",
        ns.block_size,
        tally.summary(),
        t.elapsed().as_secs_f64()
    );
    assert!(
        tally.torn > 0 && tally.in_flight > 0,
        "the sample has torn and in-flight states"
    );
    tally.assert_clean(&format!("{} B blocks, {threads} writers", ns.block_size), &ops);
}

#[test]
fn crash_states_on_512_byte_blocks() {
    enumerate(SimNamespace::new(512, 32 * 1024), 1);
}

#[test]
fn crash_states_on_4k_blocks() {
    enumerate(SimNamespace::new(4096, 4 * 1024), 1);
}

/// Two writers at once (their puts share intent log appends: group commit); writer 0
/// also runs the volume operations.
#[test]
fn crash_states_with_two_writers() {
    enumerate(SimNamespace::new(512, 32 * 1024), 2);
}

/// Regression (found by `crash_states_on_4k_blocks`): a crash after puts and a volume
/// write were acknowledged through the intent log but before their txg committed. Open
/// replays them: their extents are free in the loaded space map, so replay must reserve
/// them before marking them in use, or the replay's commit allocates metadata blocks on
/// top of them (debug builds panicked: "commit_use of unreserved blocks").
#[test]
fn replay_reserves_the_blocks_it_maps() {
    let ns = SimNamespace::new(4096, 4 * 1024);
    let sim = SimController::new(config(ns));
    let vde = Vde::format(Device::simulated(sim.clone(), Default::default()).unwrap(), options()).unwrap();
    vde.vol_create("v", 64 * 4096).unwrap();
    let value = |i: u64| vde_suite::value(format!("k{i}").as_bytes(), 0, i, 20_000 + i as usize * 3000);
    for i in 0..6 {
        vde.put(format!("k{i}").as_bytes(), &value(i)).unwrap();
    }
    let data: Vec<u8> = (0..16).flat_map(|b| crash_suite::vol_block(1, b)).collect();
    vde.vol_write("v", 0, &data, false).unwrap();
    vde.vol_flush().unwrap();
    let txg = vde.info().unwrap().txg;
    // The crash: the media as it is now, with the puts and the write in the log only.
    let image = sim.namespace_data(1);
    drop(vde);
    let again = SimController::new(config(ns));
    again.restore_namespace(1, &image);
    let vde = Vde::open(Device::simulated(again, Default::default()).unwrap(), options()).unwrap();
    assert!(
        vde.info().unwrap().pool.replayed >= 7,
        "the crash left records to replay"
    );
    assert!(vde.info().unwrap().txg > txg);
    let mut out = vec![0u8; data.len()];
    let check = |vde: &Vde, out: &mut Vec<u8>| {
        for i in 0..6 {
            assert!(vde.get(format!("k{i}").as_bytes()).unwrap() == value(i), "k{i}");
        }
        vde.vol_read("v", 0, out).unwrap();
        assert!(*out == data, "the volume's blocks");
        let report = vde.fsck().unwrap();
        assert!(report.clean(), "{:?}", report.violations);
    };
    check(&vde, &mut out);
    // Metadata written after the replay lands elsewhere too.
    for i in 10..40 {
        vde.put(format!("x{i}").as_bytes(), &value(i)).unwrap();
    }
    vde.checkpoint().unwrap();
    check(&vde, &mut out);
}

/// Regression (found by `crash_logwrites` on QEMU's log, 512 B namespace): a crash that
/// tears format's first superblock write (txg 1, copy 1; copy 0 still zeros) must leave a
/// device that says "not formatted", as `Vde::format` promises — not "corrupt superblock".
#[test]
fn format_torn_in_its_superblock_write_is_not_formatted() {
    let ns = SimNamespace::new(512, 32 * 1024);
    let sim = SimController::new(config(ns));
    let start = sim.namespace_data(1);
    sim.record_writes(1);
    drop(Vde::format(Device::simulated(sim.clone(), Default::default()).unwrap(), options()).unwrap());
    let log = sim.take_write_log().unwrap();
    // Format's write of copy 1 (VDE block 1: LBAs 8..16), the first one that is not zeros.
    let i = log
        .entries
        .iter()
        .position(|e| e.slba == 8 && e.data.iter().any(|&b| b != 0))
        .expect("format writes superblock copy 1");
    let before = WriteLog {
        lba_size: 512,
        entries: log.entries[..i].to_vec(),
    };
    let base = before.apply_all(&start).unwrap();
    let mut tried = 0;
    for units in [vec![2, 4, 5, 6, 7], vec![0, 1, 2, 3, 4, 5], vec![2, 5, 7], vec![0]] {
        let mut image = base.clone();
        for u in units {
            let at = 8 * 512 + u * 512;
            image[at..at + 512].copy_from_slice(&log.entries[i].data[u * 512..u * 512 + 512]);
        }
        let again = SimController::new(config(ns));
        again.restore_namespace(1, &image);
        match Vde::open(Device::simulated(again, Default::default()).unwrap(), options()) {
            Err(VdeError::NotFormatted) => tried += 1,
            Err(e) => panic!("a torn format says {e}, not \"not formatted\""),
            Ok(_) => panic!("a torn format opened"),
        }
    }
    assert_eq!(tried, 4);
}
