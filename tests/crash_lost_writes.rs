//! Lost and misdirected metadata writes, from the simulated controller's write log: the
//! crash-state workload (`crash_suite::workload`: objects, volume writes, unmaps, flushes,
//! snapshots, a clone) runs with the namespace's writes recorded. Each write of a metadata
//! block (a 4 KiB block whose header magic is `VDE2` and whose kind is not the intent log)
//! is then, in turn, taken out of the final image:
//!
//! - **dropped**: the device acknowledged it but the block keeps what it held before;
//! - **misdirected**: it also lands on another block the workload wrote (chosen by seed).
//!
//! Each such image is opened and read completely: every object, every volume, snapshot and
//! clone block must read back as the workload left it, or fail with an error that names
//! the block ([`VdeError::Mismatch`], [`VdeError::DataCorrupt`], [`VdeError::Corrupt`]);
//! never other bytes. And when anything is wrong, open or fsck must say so.
//!
//! Classification of each write:
//! - *overwritten*: a later write of the log covers the same block (for a misdirected
//!   write: both blocks), so the final image is unchanged: nothing to check;
//! - *detected*: open failed naming a block, or a read did and fsck reports violations;
//! - *harmless*: everything read back right and fsck is clean — the block is not reached
//!   from the last committed state (fsck walks every pointer from the superblock and
//!   checks each block against its pointer), e.g. a node of a tree a later commit
//!   replaced, or a superblock copy of an older txg whose other copy is newer.
//!
//! `IRONVME_CRASH_STATES=N` checks N writes per test (default [`DEFAULT_WRITES`]; a seeded
//! sample), `IRONVME_CRASH_STATES=all` every one; `IRONVME_CRASH_SEED` picks them.

mod common;
mod crash_suite;
mod vde_suite;

use crash_suite::{CLONE, Kind, Op, VB, VOL_BLOCKS, options, vol_block, workload};
use ironvme::Device;
use ironvme::nvme::crash::{CrashConfig, LogOp, WriteLog};
use ironvme::nvme::sim::{SimConfig, SimController, SimNamespace};
use ironvme::vde::{Vde, VdeError};
use std::collections::BTreeMap;
use std::time::Instant;

/// Metadata writes checked per test (each dropped and misdirected) by default.
const DEFAULT_WRITES: usize = 60;
/// Workload steps.
const STEPS: u64 = 40;
/// The VDE block size in bytes.
const BLOCK: usize = 4096;
/// Header magic of a format-2 metadata block ("VDE2").
const MAGIC2: u32 = 0x3245_4456;
/// Header kind of an intent log block.
const KIND_LOG: u16 = 8;

fn config(ns: SimNamespace) -> SimConfig {
    SimConfig {
        namespaces: vec![ns],
        ..SimConfig::default()
    }
}

/// What the store must hold after the workload: objects, and each volume's, snapshot's
/// and clone's blocks (0: zeros, else the op number of [`vol_block`]).
struct Expected {
    objects: BTreeMap<String, Vec<u8>>,
    volumes: BTreeMap<String, Vec<u64>>,
}

fn expected(ops: &[Op]) -> Expected {
    let mut objects = BTreeMap::new();
    let mut volumes: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for op in ops {
        match op.kind {
            Kind::Put(_) => {
                objects.insert(op.key.clone(), op.bytes().unwrap());
            }
            Kind::Delete => {
                objects.remove(&op.key);
            }
            Kind::VolCreate => {
                volumes.insert(op.key.clone(), vec![0; VOL_BLOCKS as usize]);
            }
            Kind::VolWrite { block, n } | Kind::VolUnmap { block, n } => {
                let value = if matches!(op.kind, Kind::VolWrite { .. }) {
                    op.n
                } else {
                    0
                };
                let v = volumes.get_mut(&op.key).unwrap();
                v[block as usize..(block + n) as usize].fill(value);
            }
            Kind::Snap => {
                let content = volumes[op.key.split_once('@').unwrap().0].clone();
                volumes.insert(op.key.clone(), content);
            }
            Kind::Clone => {
                let content = volumes[&op.key].clone();
                volumes.insert(CLONE.into(), content);
            }
            _ => {}
        }
    }
    Expected { objects, volumes }
}

/// Whether `e` names a damaged block (what a lost or misdirected write must produce).
fn names_a_block(e: &VdeError) -> bool {
    matches!(
        e,
        VdeError::Mismatch { .. } | VdeError::DataCorrupt { .. } | VdeError::Corrupt { .. }
    )
}

/// What opening and reading one image showed.
enum Seen {
    /// Open failed naming a block.
    OpenFailed,
    /// Reads that failed naming a block, and fsck's violations (or its error).
    Opened { read_errors: usize, fsck: Vec<String> },
}

/// Opens `image` and reads everything; `Err` for a wrong answer (other bytes, a missing
/// object or volume, an error that names no block).
fn check_image(ns: SimNamespace, image: &[u8], want: &Expected) -> Result<Seen, String> {
    let sim = SimController::new(config(ns));
    sim.restore_namespace(1, image);
    let vde = match Vde::open(Device::simulated(sim, Default::default()).unwrap(), options()) {
        Ok(v) => v,
        Err(e) if names_a_block(&e) => return Ok(Seen::OpenFailed),
        Err(e) => return Err(format!("open: {e} (names no block)")),
    };
    let mut read_errors = 0;
    let mut wrong = Vec::new();
    for (key, bytes) in &want.objects {
        match vde.get(key.as_bytes()) {
            Ok(v) if &v == bytes => {}
            Ok(v) => wrong.push(format!("{key}: {} other bytes", v.len())),
            Err(e) if names_a_block(&e) => read_errors += 1,
            Err(e) => wrong.push(format!("{key}: {e}")),
        }
    }
    match vde.keys(b"").collect::<Result<Vec<_>, _>>() {
        Ok(keys) => {
            for k in keys {
                if !want.objects.contains_key(String::from_utf8_lossy(&k).as_ref()) {
                    wrong.push(format!("{} exists", String::from_utf8_lossy(&k)));
                }
            }
        }
        Err(e) if names_a_block(&e) => read_errors += 1,
        Err(e) => wrong.push(format!("list: {e}")),
    }
    let mut buf = vec![0u8; VOL_BLOCKS as usize * VB];
    for (name, blocks) in &want.volumes {
        match vde.vol_read(name, 0, &mut buf) {
            Ok(()) => {
                for (b, (data, &v)) in buf.chunks(VB).zip(blocks).enumerate() {
                    let right = if v == 0 {
                        data.iter().all(|&x| x == 0)
                    } else {
                        data == vol_block(v, b as u64)
                    };
                    if !right {
                        wrong.push(format!(
                            "{name} block {b}: {}, not value {v}",
                            crash_suite::describe_block(data, b as u64)
                        ));
                    }
                }
            }
            Err(e) if names_a_block(&e) => read_errors += 1,
            Err(e) => wrong.push(format!("{name}: {e}")),
        }
    }
    let fsck = match vde.fsck() {
        Ok(r) => r.violations,
        Err(e) if names_a_block(&e) => vec![e.to_string()],
        Err(e) => vec![format!("fsck failed: {e}")],
    };
    drop(vde);
    if !wrong.is_empty() {
        return Err(wrong.join("; "));
    }
    Ok(Seen::Opened { read_errors, fsck })
}

/// One recorded metadata write: log entry, VDE block, the 4 KiB it wrote.
struct MetaWrite {
    entry: usize,
    block: u64,
    data: Vec<u8>,
}

/// The VDE blocks an entry covers whole, as (block, byte offset in the entry's data).
fn blocks_of(log: &WriteLog, i: usize) -> Vec<(u64, usize)> {
    let e = &log.entries[i];
    let bs = log.lba_size as u64;
    let (start, end) = (e.slba * bs, (e.slba + e.nlb) * bs);
    (start.div_ceil(BLOCK as u64)..end / BLOCK as u64)
        .map(|b| (b, (b * BLOCK as u64 - start) as usize))
        .collect()
}

/// Whether an entry after `i` changes any byte of VDE block `block`.
fn touched_after(log: &WriteLog, i: usize, block: u64) -> bool {
    let bs = log.lba_size as u64;
    let (a, b) = (block * BLOCK as u64, (block + 1) * BLOCK as u64);
    log.entries[i + 1..]
        .iter()
        .any(|e| e.op != LogOp::Flush && e.slba * bs < b && (e.slba + e.nlb) * bs > a)
}

/// Block `block` as entries `..i` left it on `start`.
fn block_before(log: &WriteLog, start: &[u8], i: usize, block: u64) -> Vec<u8> {
    let bs = log.lba_size as u64;
    let (a, b) = (block * BLOCK as u64, (block + 1) * BLOCK as u64);
    let mut out = start[a as usize..b as usize].to_vec();
    for e in &log.entries[..i] {
        let (s, t) = (e.slba * bs, (e.slba + e.nlb) * bs);
        if e.op == LogOp::Flush || s >= b || t <= a {
            continue;
        }
        for x in s.max(a)..t.min(b) {
            out[(x - a) as usize] = match e.op {
                LogOp::Write => e.data[(x - s) as usize],
                _ => 0,
            };
        }
    }
    out
}

/// The SplitMix64 step.
fn mix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Default, Debug)]
struct Counts {
    overwritten: usize,
    detected_at_open: usize,
    detected_by_read_and_fsck: usize,
    detected_by_fsck: usize,
    harmless: usize,
}

fn lost_and_misdirected(ns: SimNamespace) {
    let crash = CrashConfig::from_env(DEFAULT_WRITES);
    let sim = SimController::new(config(ns));
    let start = sim.namespace_data(1);
    sim.record_writes(1);
    let dev = Device::simulated(sim.clone(), Default::default()).unwrap();
    let ops = workload(
        || Vde::format(dev, options()).expect("format"),
        crash.seed,
        STEPS,
        1,
        &|| sim.write_log_len() as u64,
    );
    let log = sim.take_write_log().expect("the recording");
    let fin = log.apply_all(&start).unwrap();
    assert!(fin == sim.namespace_data(1));
    let want = expected(&ops);
    // Every block the workload wrote (targets of misdirected writes), and the metadata
    // writes.
    let mut written = std::collections::BTreeSet::new();
    let mut meta = Vec::new();
    for (i, e) in log.entries.iter().enumerate() {
        if e.op == LogOp::Flush {
            continue;
        }
        for (block, at) in blocks_of(&log, i) {
            written.insert(block);
            if e.op != LogOp::Write {
                continue;
            }
            let data = &e.data[at..at + BLOCK];
            let magic = u32::from_le_bytes(data[..4].try_into().unwrap());
            let kind = u16::from_le_bytes(data[4..6].try_into().unwrap());
            if magic == MAGIC2 && kind != KIND_LOG {
                meta.push(MetaWrite {
                    entry: i,
                    block,
                    data: data.to_vec(),
                });
            }
        }
    }
    let written: Vec<u64> = written.into_iter().collect();
    let total = meta.len();
    let mut x = crash.seed ^ 0x6c6f_7374;
    if let Some(max) = crash.max_states.filter(|&m| m < meta.len()) {
        let mut keyed: Vec<(u64, MetaWrite)> = meta.into_iter().map(|m| (mix(&mut x), m)).collect();
        keyed.sort_by_key(|k| k.0);
        keyed.truncate(max);
        meta = keyed.into_iter().map(|k| k.1).collect();
        meta.sort_by_key(|m| (m.entry, m.block));
    }
    let t = Instant::now();
    let mut counts = [Counts::default(), Counts::default()];
    let mut failures = Vec::new();
    for m in &meta {
        let target = loop {
            let b = written[(mix(&mut x) % written.len() as u64) as usize];
            if b != m.block {
                break b;
            }
        };
        for (way, c) in counts.iter_mut().enumerate() {
            let mut image = fin.clone();
            let mut changed = false;
            let range = |b: u64| b as usize * BLOCK..(b as usize + 1) * BLOCK;
            if !touched_after(&log, m.entry, m.block) {
                image[range(m.block)].copy_from_slice(&block_before(&log, &start, m.entry, m.block));
                changed = true;
            }
            let what = if way == 0 {
                format!("write of block {} (entry {}) dropped", m.block, m.entry)
            } else {
                if !touched_after(&log, m.entry, target) {
                    image[range(target)].copy_from_slice(&m.data);
                    changed = true;
                }
                format!(
                    "write of block {} (entry {}) misdirected to block {target}",
                    m.block, m.entry
                )
            };
            if !changed || image == fin {
                c.overwritten += 1;
                continue;
            }
            match check_image(ns, &image, &want) {
                Err(e) => failures.push(format!("{what}: {e}")),
                Ok(Seen::OpenFailed) => c.detected_at_open += 1,
                Ok(Seen::Opened { read_errors, fsck }) => match (read_errors, fsck.is_empty()) {
                    (0, true) => c.harmless += 1,
                    (0, false) => c.detected_by_fsck += 1,
                    (_, false) => c.detected_by_read_and_fsck += 1,
                    (n, true) => failures.push(format!("{what}: {n} reads failed naming a block, but fsck is clean")),
                },
            }
        }
    }
    println!(
        "{} B blocks: {} metadata writes in the log ({} log entries), {} checked, each dropped \
         and misdirected, in {:.1} s:\n  dropped: {:?}\n  misdirected: {:?}",
        ns.block_size,
        total,
        log.entries.len(),
        meta.len(),
        t.elapsed().as_secs_f64(),
        counts[0],
        counts[1]
    );
    assert!(
        failures.is_empty(),
        "{} B blocks: {} of {} images served wrong answers:\n{}",
        ns.block_size,
        failures.len(),
        2 * meta.len(),
        failures.join("\n")
    );
    let detected = |c: &Counts| c.detected_at_open + c.detected_by_fsck + c.detected_by_read_and_fsck;
    assert!(
        detected(&counts[0]) > 0 && detected(&counts[1]) > 0,
        "the sample shows detected drops and misdirections"
    );
}

#[test]
fn lost_and_misdirected_metadata_writes_on_512_byte_blocks() {
    lost_and_misdirected(SimNamespace::new(512, 32 * 1024));
}

#[test]
fn lost_and_misdirected_metadata_writes_on_4k_blocks() {
    lost_and_misdirected(SimNamespace::new(4096, 4 * 1024));
}
