//! Crash-state enumeration on the simulated controller: the VDE's workload runs with the
//! namespace's writes and Flushes recorded; every prefix ending at a Flush, random subsets
//! of the writes after each Flush, and torn writes (at 512 B on a 512 B namespace, where a
//! 4 KiB block tears; between blocks of a multi-block write on a 4 KiB one) are each
//! restored onto a fresh simulated namespace, opened, and checked: every operation
//! acknowledged before the cut is there with its bytes, one cut in flight is there wholly
//! or not at all, nothing else is there, and fsck is clean.
//!
//! `IRONVME_CRASH_STATES=N` checks N states per namespace (default [`DEFAULT_STATES`]),
//! `IRONVME_CRASH_STATES=all` the exhaustive-ish set; `IRONVME_CRASH_SEED` picks them
//! and the workload.
//!
//! Format 1 has known crash behaviour this test found ([`format1_known`]): the states
//! that show it are counted and printed, not failed, unless `IRONVME_CRASH_STRICT=1`.

mod common;
mod crash_suite;
mod vde_suite;

use crash_suite::{Tally, check_state, options, workload};
use ironvme::Device;
use ironvme::nvme::crash::{CrashConfig, CrashState, CrashStates};
use ironvme::nvme::sim::{SimConfig, SimController, SimNamespace};
use ironvme::vde::Vde;
use std::time::Instant;

/// States checked per namespace by default (about 20 s each on a 2-core machine, debug).
const DEFAULT_STATES: usize = 250;
/// Workload steps.
const STEPS: u64 = 40;

fn config(ns: SimNamespace) -> SimConfig {
    SimConfig {
        namespaces: vec![ns],
        ..SimConfig::default()
    }
}

/// A superblock write the crash tore (512 B namespaces) or left out: open recovers from the
/// other copy and rewrites it, but fsck reports the damage found at open as a violation.
const F1_REPAIRED: &str = "format 1: fsck reports a superblock copy the crash tore or lost, although open \
                           repaired it (`found at open; rewritten from the other copy`)";
/// A crash in format's superblock writes that leaves copy 0 good and copy 1 bad: the repair
/// checkpoint writes generation 2 to copy 0 (format gave both copies generation 1), so
/// copy 1 stays bad until the next checkpoint and fsck reports it.
const F1_FORMAT_COPY1: &str = "format 1: a format cut in its superblock writes leaves copy 1 damaged after the \
                               repair at open (both copies get generation 1; the repair writes copy 0)";
/// A crash in format's superblock writes that leaves one copy blank and the other torn:
/// open says the store is corrupt, not "not formatted" as `Vde::format` promises.
const F1_FORMAT_CORRUPT: &str = "format 1: a format cut in its superblock writes leaves a device that open calls \
                                 corrupt, not \"not formatted\"";

/// Format 1's known crash behaviour (found by this test): the problem lines that show it,
/// by name. `IRONVME_CRASH_STRICT=1`: none (they fail). Format 2 must have none.
fn format1_known(format_acked: u64) -> impl Fn(&CrashState, &str) -> Option<&'static str> {
    let strict = std::env::var("IRONVME_CRASH_STRICT").is_ok_and(|v| v == "1");
    move |state, line| {
        let in_format = (state.cut as u64) < format_acked;
        if strict {
            None
        } else if line.starts_with("fsck: ") && line.ends_with("(found at open; rewritten from the other copy)") {
            Some(F1_REPAIRED)
        } else if in_format && line.starts_with("fsck: superblock copy 1: ") {
            Some(F1_FORMAT_COPY1)
        } else if in_format && line.starts_with("open: corrupt superblock block ") {
            Some(F1_FORMAT_CORRUPT)
        } else {
            None
        }
    }
}

/// Records the workload on `ns`, then checks its crash states.
fn enumerate(ns: SimNamespace) {
    let crash = CrashConfig::from_env(DEFAULT_STATES);
    let sim = SimController::new(config(ns));
    let start = sim.namespace_data(1);
    sim.record_writes(1);
    let dev = Device::simulated(sim.clone(), Default::default()).unwrap();
    let t = Instant::now();
    let ops = workload(
        || Vde::format(dev, 0, options()).expect("format"),
        crash.seed,
        STEPS,
        &|| sim.write_log_len() as u64,
    );
    let log = sim.take_write_log().expect("the recording");
    let written: usize = log.entries.iter().map(|e| e.data.len()).sum();
    println!(
        "{} B blocks: workload of {} ops: {} log entries ({} Flushes, {} KiB written) in {:.1} s",
        ns.block_size,
        ops.len(),
        log.entries.len(),
        log.flushes(),
        written / 1024,
        t.elapsed().as_secs_f64()
    );
    // The log is the workload: replayed onto the start, it is the final media.
    assert!(log.apply_all(&start).unwrap() == sim.namespace_data(1));
    let t = Instant::now();
    let mut states = CrashStates::new(&log, start, &crash).unwrap();
    let total = states.len();
    let mut tally = Tally::default();
    let known = format1_known(ops[0].ack.unwrap());
    while let Some((state, image)) = states.next_state() {
        let again = SimController::new(config(ns));
        again.restore_namespace(1, image);
        let r = check_state(
            state,
            &ops,
            || Vde::open(Device::simulated(again, Default::default()).unwrap(), options()),
            &known,
        );
        tally.add(state, r);
    }
    println!(
        "{} B blocks: {} crash states checked ({} of them torn, {} before the format said \
         \"not formatted\"), {} operations cut in flight of which {} landed whole, in {:.1} s \
         ({:?})",
        ns.block_size,
        tally.states,
        tally.torn,
        tally.not_formatted,
        tally.in_flight,
        tally.landed,
        t.elapsed().as_secs_f64(),
        crash
    );
    print!("{}", tally.known_report());
    assert_eq!(tally.states, total);
    assert!(
        tally.torn > 0 && tally.in_flight > 0,
        "the sample has torn and in-flight states"
    );
    tally.assert_clean(&format!("{} B blocks", ns.block_size), &ops);
}

#[test]
fn crash_states_on_512_byte_blocks() {
    enumerate(SimNamespace::new(512, 32 * 1024));
}

#[test]
fn crash_states_on_4k_blocks() {
    enumerate(SimNamespace::new(4096, 4 * 1024));
}
