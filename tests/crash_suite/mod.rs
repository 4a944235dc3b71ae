//! The store side of crash-state enumeration, shared by `tests/crash_states.rs` (the
//! simulated controller's write log) and `tests/crash_logwrites.rs` (QEMU blklogwrites'
//! log): a workload of object puts/deletes and volume writes, unmaps, flushes, snapshots
//! and a clone that notes, for each operation, where the write log stood when it started
//! and when it was acknowledged, and the check of one crash state against those notes.
#![allow(dead_code)]

use super::vde_suite::{check_value, small, value};
use ironvme::nvme::crash::{CrashConfig, CrashState, CrashStates, WriteLog};
use ironvme::vde::{Vde, VdeError};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `Vde::format` on the blank namespace.
    Format,
    /// A put of a [`value`] of `len` payload bytes (writer 0, counter = the op's `n`).
    Put(usize),
    /// A delete (of a key that exists).
    Delete,
    /// A checkpoint (changes no object).
    Checkpoint,
    /// `vol_create` of volume `key` ([`VOL_BLOCKS`] blocks).
    VolCreate,
    /// `vol_write` of `n` blocks at `block` of volume `key`: block `b` gets
    /// [`vol_block`]`(op n, b)`.
    VolWrite { block: u64, n: u64 },
    /// `vol_unmap` of `n` blocks at `block` of volume `key`.
    VolUnmap { block: u64, n: u64 },
    /// `vol_flush` (key empty): every volume write and unmap completed before it is durable
    /// when it returns.
    VolFlush,
    /// `snap_create` of `key` (`VOL@SNAP`).
    Snap,
    /// `clone_snapshot` of `key` (`VOL@SNAP`) as the volume [`CLONE`].
    Clone,
}

/// Blocks (4 KiB) of each volume of the workload.
pub const VOL_BLOCKS: u64 = 48;
/// The workload's volume.
pub const VOL: &str = "v0";
/// The clone the workload makes of one of its snapshots.
pub const CLONE: &str = "c0";
/// Bytes of a volume block.
pub const VB: usize = 4096;

/// The 4 KiB a volume write of op `n` puts in volume block `b`: `n`, `b`, then a pattern.
pub fn vol_block(n: u64, b: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(VB);
    v.extend_from_slice(&n.to_le_bytes());
    v.extend_from_slice(&b.to_le_bytes());
    v.extend(super::vde_suite::bytes(n << 20 | b, VB - 16));
    v
}

/// Describes the contents of a volume block: `zeros`, `op N's value`, or `other bytes`.
pub fn describe_block(data: &[u8], b: u64) -> String {
    if data.iter().all(|&x| x == 0) {
        return "zeros".into();
    }
    let n = u64::from_le_bytes(data[..8].try_into().unwrap());
    if data == vol_block(n, b) {
        format!("op {n}'s value")
    } else {
        "other bytes".into()
    }
}

/// One operation of the workload and where the write log stood around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Its number in the workload.
    pub n: u64,
    /// What it did.
    pub kind: Kind,
    /// The key, volume or `VOL@SNAP` (empty for Format, Checkpoint and VolFlush).
    pub key: String,
    /// The write log's position (entries logged) before it started.
    pub start: u64,
    /// The position when it returned `Ok`; `None` if it did not return.
    pub ack: Option<u64>,
}

impl Op {
    /// The bytes a put stored.
    pub fn bytes(&self) -> Option<Vec<u8>> {
        match self.kind {
            Kind::Put(len) => Some(value(self.key.as_bytes(), 0, self.n, len)),
            _ => None,
        }
    }

    /// Whether it is an object put or delete.
    pub fn is_object(&self) -> bool {
        matches!(self.kind, Kind::Put(_) | Kind::Delete)
    }

    /// One line of text (no spaces in keys): `n kind key start ack`.
    pub fn to_line(&self) -> String {
        let kind = match self.kind {
            Kind::Format => "format".to_string(),
            Kind::Put(len) => format!("put:{len}"),
            Kind::Delete => "del".to_string(),
            Kind::Checkpoint => "checkpoint".to_string(),
            Kind::VolCreate => "volcreate".to_string(),
            Kind::VolWrite { block, n } => format!("volwrite:{block}:{n}"),
            Kind::VolUnmap { block, n } => format!("volunmap:{block}:{n}"),
            Kind::VolFlush => "volflush".to_string(),
            Kind::Snap => "snap".to_string(),
            Kind::Clone => "clone".to_string(),
        };
        let key = if self.key.is_empty() { "-" } else { &self.key };
        let ack = self.ack.map_or("-".to_string(), |a| a.to_string());
        format!("{} {kind} {key} {} {ack}", self.n, self.start)
    }

    /// Parses [`Op::to_line`].
    pub fn from_line(line: &str) -> Op {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 5, "bad op line {line:?}");
        let kind = match f[1] {
            "format" => Kind::Format,
            "del" => Kind::Delete,
            "checkpoint" => Kind::Checkpoint,
            "volcreate" => Kind::VolCreate,
            "volflush" => Kind::VolFlush,
            "snap" => Kind::Snap,
            "clone" => Kind::Clone,
            k if k.starts_with("volwrite:") || k.starts_with("volunmap:") => {
                let v: Vec<u64> = k.split(':').skip(1).map(|x| x.parse().unwrap()).collect();
                assert_eq!(v.len(), 2, "bad op line {line:?}");
                if k.starts_with("volwrite:") {
                    Kind::VolWrite { block: v[0], n: v[1] }
                } else {
                    Kind::VolUnmap { block: v[0], n: v[1] }
                }
            }
            k => Kind::Put(
                k.strip_prefix("put:")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or_else(|| panic!("bad op line {line:?}")),
            ),
        };
        Op {
            n: f[0].parse().unwrap(),
            kind,
            key: if f[2] == "-" { String::new() } else { f[2].to_string() },
            start: f[3].parse().unwrap(),
            ack: (f[4] != "-").then(|| f[4].parse().unwrap()),
        }
    }
}

/// The next number of an xorshift64 sequence.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// Keys of the workload.
pub const KEYS: u64 = 8;

/// Formats with `format`, then `threads` writers each run `steps` operations, calling
/// `mark()` (the write log's position) before and after each. Every writer puts and deletes
/// on [`KEYS`] keys of its own (`t<writer>k<i>`), values from a few bytes to 1.2 MiB (two
/// extents). Writer 0 also creates volume [`VOL`] (its first step), writes it (1 to 8
/// blocks), unmaps ranges, flushes, takes snapshots, clones its second snapshot as
/// [`CLONE`] and writes that too, and now and then checkpoints. Ends with a
/// [`Kind::VolFlush`] and closes the store (a checkpoint; logged as one). Returns the
/// operations ordered by start (each writer's in the order they ran). With more than one
/// writer the interleaving, and so the log, differs from run to run.
pub fn workload(
    format: impl FnOnce() -> Vde,
    seed: u64,
    steps: u64,
    threads: u64,
    mark: &(dyn Fn() -> u64 + Sync),
) -> Vec<Op> {
    let start = mark();
    let vde = format();
    let format_op = Op {
        n: 0,
        kind: Kind::Format,
        key: String::new(),
        start,
        ack: Some(mark()),
    };
    let writer = |t: u64| {
        let mut ops = Vec::new();
        let mut x = (seed ^ t.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        let mut present = [false; KEYS as usize];
        let (mut snaps, mut cloned) = (0, false);
        for step in 1..=steps {
            let n = (step - 1) * threads + t + 1;
            let i = next(&mut x) % KEYS;
            let mut key = format!("t{t}k{i}");
            let roll = next(&mut x) % 16;
            let vol = if cloned && next(&mut x) % 3 == 0 { CLONE } else { VOL };
            let range = |x: &mut u64, most: u64| {
                let len = 1 + next(x) % most;
                (next(x) % (VOL_BLOCKS - len + 1), len)
            };
            let kind = if t == 0 && step == 1 {
                key = VOL.into();
                Kind::VolCreate
            } else if t == 0 && step % 13 == 0 {
                Kind::Checkpoint
            } else if t == 0 && step % 9 == 0 {
                snaps += 1;
                key = format!("{VOL}@s{step}");
                Kind::Snap
            } else if t == 0 && snaps >= 2 && !cloned {
                cloned = true;
                key = ops
                    .iter()
                    .rev()
                    .find(|o: &&Op| o.kind == Kind::Snap)
                    .map(|o: &Op| o.key.clone())
                    .unwrap();
                Kind::Clone
            } else if t == 0 && roll < 5 {
                key = vol.into();
                let (block, n) = range(&mut x, 8);
                Kind::VolWrite { block, n }
            } else if t == 0 && roll < 6 {
                key = vol.into();
                let (block, n) = range(&mut x, 12);
                Kind::VolUnmap { block, n }
            } else if t == 0 && roll < 8 {
                Kind::VolFlush
            } else if present[i as usize] && next(&mut x) % 4 == 0 {
                Kind::Delete
            } else {
                Kind::Put(match next(&mut x) % 12 {
                    0 => 1_100_000 + (next(&mut x) % 100_000) as usize,
                    1..=4 => 5000 + (next(&mut x) % 60_000) as usize,
                    _ => (next(&mut x) % 3000) as usize,
                })
            };
            if matches!(kind, Kind::Checkpoint | Kind::VolFlush) {
                key.clear();
            }
            let mut op = Op {
                n,
                kind: kind.clone(),
                key: key.clone(),
                start: mark(),
                ack: None,
            };
            let r = run(&vde, &op);
            r.unwrap_or_else(|e| panic!("op {n} {kind:?} {key}: {e}"));
            op.ack = Some(mark());
            match kind {
                Kind::Put(_) => present[i as usize] = true,
                Kind::Delete => present[i as usize] = false,
                _ => {}
            }
            ops.push(op);
        }
        if t == 0 {
            let mut op = Op {
                n: steps * threads + 1,
                kind: Kind::VolFlush,
                key: String::new(),
                start: mark(),
                ack: None,
            };
            run(&vde, &op).expect("the last vol_flush");
            op.ack = Some(mark());
            ops.push(op);
        }
        ops
    };
    let mut ops: Vec<Op> = std::thread::scope(|s| {
        let writer = &writer;
        let handles: Vec<_> = (0..threads).map(|t| s.spawn(move || writer(t))).collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a writer failed"))
            .collect()
    });
    ops.sort_by_key(|op| (op.start, op.ack));
    ops.insert(0, format_op);
    let mut close = Op {
        n: steps * threads + 2,
        kind: Kind::Checkpoint,
        key: String::new(),
        start: mark(),
        ack: None,
    };
    vde.close().expect("close");
    close.ack = Some(mark());
    ops.push(close);
    ops
}

/// Runs one operation of the workload on `vde`.
pub fn run(vde: &Vde, op: &Op) -> Result<(), VdeError> {
    let key = op.key.as_str();
    match &op.kind {
        Kind::Put(_) => vde.put(key.as_bytes(), &op.bytes().unwrap()),
        Kind::Delete => vde.delete(key.as_bytes()),
        Kind::Checkpoint => vde.checkpoint(),
        Kind::VolCreate => vde.vol_create(key, VOL_BLOCKS * VB as u64),
        Kind::VolWrite { block, n } => {
            let data: Vec<u8> = (*block..block + n).flat_map(|b| vol_block(op.n, b)).collect();
            vde.vol_write(key, *block, &data, false)
        }
        Kind::VolUnmap { block, n } => vde.vol_unmap(key, *block, *n),
        Kind::VolFlush => vde.vol_flush(),
        Kind::Snap => {
            let (v, s) = key.split_once('@').unwrap();
            vde.snap_create(v, s)
        }
        Kind::Clone => {
            let (v, s) = key.split_once('@').unwrap();
            vde.clone_snapshot(v, s, CLONE)
        }
        Kind::Format => unreachable!(),
    }
}

/// What one crash state showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Cut before the format was acknowledged, and the store says it is not formatted.
    NotFormatted,
    /// Opened and checked: `keys` objects; `in_flight` operations were cut (neither
    /// acknowledged nor unstarted), `landed` of them are visible.
    Checked {
        keys: usize,
        in_flight: usize,
        landed: usize,
    },
}

/// Checks one crash state: opens the store with `open` (on a copy of the state's image)
/// and checks that every operation acknowledged before the cut is there with its bytes,
/// that an operation cut in flight is there wholly or not at all, that nothing else is
/// there, and that fsck is clean; then the volumes and snapshots (see [`check_volumes`]).
/// A state cut before the format was acknowledged may also say "not formatted"
/// ([`Vde::format`] promises a cut format never leaves a half-made store). Errors: what is
/// wrong, for the failure message.
pub fn check_state(
    state: &CrashState,
    ops: &[Op],
    open: impl FnOnce() -> Result<Vde, VdeError>,
) -> Result<Outcome, String> {
    let cut = state.cut as u64;
    let formatted = ops[0].kind == Kind::Format && ops[0].ack.is_some_and(|a| a <= cut);
    let vde = match open() {
        Ok(v) => v,
        Err(VdeError::NotFormatted) if !formatted => return Ok(Outcome::NotFormatted),
        Err(e) => return Err(format!("open: {e}")),
    };
    // Per key: the acknowledged state (None: no object; Some(op index)), and the states
    // an operation in flight could leave.
    let mut acked: BTreeMap<&str, Option<usize>> = BTreeMap::new();
    let mut maybe: BTreeMap<&str, Vec<Option<usize>>> = BTreeMap::new();
    let (mut in_flight, mut landed_ops) = (Vec::new(), 0);
    for (i, op) in ops.iter().enumerate() {
        if !op.is_object() || op.start >= cut {
            continue;
        }
        let result = match op.kind {
            Kind::Put(_) => Some(i),
            _ => None,
        };
        if op.ack.is_some_and(|a| a <= cut) {
            acked.insert(&op.key, result);
            maybe.remove(op.key.as_str());
        } else {
            acked.entry(&op.key).or_insert(None);
            maybe.entry(&op.key).or_default().push(result);
            in_flight.push(i);
        }
    }
    let mut problems = String::new();
    for (&key, &want) in &acked {
        let got = match vde.get(key.as_bytes()) {
            Ok(v) => Some(v),
            Err(VdeError::NotFound(_)) => None,
            Err(e) => {
                let _ = writeln!(problems, "get {key}: {e}");
                continue;
            }
        };
        let bytes_of = |i: Option<usize>| i.and_then(|i| ops[i].bytes());
        if got == bytes_of(want) {
            continue;
        }
        let alts = maybe.get(key).cloned().unwrap_or_default();
        if alts.iter().any(|&a| got == bytes_of(a)) {
            landed_ops += 1;
            continue;
        }
        let describe = |i: Option<usize>| match i {
            Some(i) => format!(
                "op {} ({:?}, {} bytes)",
                ops[i].n,
                ops[i].kind,
                ops[i].bytes().unwrap().len()
            ),
            None => "no object".to_string(),
        };
        let found = match &got {
            None => "no object".to_string(),
            Some(v) if v.len() >= 40 => {
                let (w, n) =
                    std::panic::catch_unwind(|| check_value(key.as_bytes(), v)).unwrap_or((u64::MAX, u64::MAX));
                format!("{} bytes (value of op {n}, writer {w})", v.len())
            }
            Some(v) => format!("{} bytes", v.len()),
        };
        let _ = writeln!(
            problems,
            "{key}: holds {found}; acknowledged: {}; in flight: {}",
            describe(want),
            alts.iter().map(|&a| describe(a)).collect::<Vec<_>>().join(" or ")
        );
    }
    match vde.keys(b"").collect::<Result<Vec<_>, _>>() {
        Ok(keys) => {
            for k in keys {
                let k = String::from_utf8_lossy(&k).into_owned();
                if !acked.contains_key(k.as_str()) {
                    let _ = writeln!(problems, "{k} exists but no operation before the cut wrote it");
                }
            }
        }
        Err(e) => {
            let _ = writeln!(problems, "list: {e}");
        }
    }
    let objects = acked.len();
    match vde.fsck() {
        Ok(r) => {
            for v in r.violations {
                let _ = writeln!(problems, "fsck: {v}");
            }
        }
        Err(e) => {
            let _ = writeln!(problems, "fsck: {e}");
        }
    }
    check_volumes(&vde, ops, cut, &mut problems);
    // Dropping commits onto the state's image, which is thrown away.
    drop(vde);
    if !problems.is_empty() {
        return Err(problems.trim_end().to_string());
    }
    Ok(Outcome::Checked {
        keys: objects,
        in_flight: in_flight.len(),
        landed: landed_ops,
    })
}

/// Counts of a run of checks.
#[derive(Debug, Default)]
pub struct Tally {
    /// States checked.
    pub states: usize,
    /// States that said "not formatted" (cut before the format was acknowledged).
    pub not_formatted: usize,
    /// Operations cut in flight, over all states, and how many of them were visible.
    pub in_flight: usize,
    /// See `in_flight`.
    pub landed: usize,
    /// States with a torn write.
    pub torn: usize,
    /// Failures: (state description, what was wrong).
    pub failures: Vec<(String, String)>,
}

impl Tally {
    /// Adds one state's result.
    pub fn add(&mut self, state: &CrashState, r: Result<Outcome, String>) {
        self.states += 1;
        self.torn += usize::from(state.tear.is_some());
        match r {
            Ok(Outcome::NotFormatted) => self.not_formatted += 1,
            Ok(Outcome::Checked { in_flight, landed, .. }) => {
                self.in_flight += in_flight;
                self.landed += landed;
            }
            Err(e) => self.failures.push((state.to_string(), e)),
        }
    }

    /// The counts, in words.
    pub fn summary(&self) -> String {
        format!(
            "{} crash states checked ({} with a torn write, {} cut before the format and \
             \"not formatted\"); {} operations cut in flight, {} of them landed whole",
            self.states, self.torn, self.not_formatted, self.in_flight, self.landed
        )
    }

    /// Panics naming the first failures (with the ops the states cut), if any.
    pub fn assert_clean(&self, what: &str, ops: &[Op]) {
        if self.failures.is_empty() {
            return;
        }
        let mut msg = format!(
            "{what}: {} of {} crash states failed:\n",
            self.failures.len(),
            self.states
        );
        for (s, e) in self.failures.iter().take(10) {
            let _ = writeln!(msg, "- {s}\n  {}", e.replace('\n', "\n  "));
        }
        let _ = writeln!(msg, "ops (n kind key start ack):");
        for op in ops {
            let _ = writeln!(msg, "  {}", op.to_line());
        }
        panic!("{msg}");
    }
}

/// The options every open in these tests uses.
pub fn options() -> ironvme::vde::VdeOptions {
    small()
}

/// Builds the crash states of `log` (recorded from the image `start`) chosen by `config`,
/// opens each with `open(image)` and checks it with [`check_state`]; returns the tally.
pub fn check_all(
    log: &WriteLog,
    start: Vec<u8>,
    config: &CrashConfig,
    ops: &[Op],
    open: &mut dyn FnMut(&[u8]) -> Result<Vde, VdeError>,
) -> Tally {
    let mut states = CrashStates::new(log, start, config).expect("crash states of the log");
    let total = states.len();
    let mut tally = Tally::default();
    while let Some((state, image)) = states.next_state() {
        let r = check_state(state, ops, || open(image));
        tally.add(state, r);
    }
    assert_eq!(tally.states, total);
    tally
}

/// Checks the log positions of one writer's operations against the log: they never go
/// back, and every acknowledged operation's last entry before its acknowledgement is a
/// Flush (the store acknowledges only after a Flush; this also shows the positions were
/// taken right) — except volume writes and unmaps, which are durable only at a later
/// vol_flush.
pub fn check_positions(ops: &[Op], log: &WriteLog) {
    let mut last = 0;
    for op in ops {
        let ack = op.ack.unwrap_or(op.start);
        assert!(
            last <= op.start && op.start <= ack,
            "op {}: positions go back: {ops:?}",
            op.n
        );
        assert!(ack as usize <= log.entries.len(), "op {}: past the log", op.n);
        let unflushed = matches!(op.kind, Kind::VolWrite { .. } | Kind::VolUnmap { .. });
        if op.ack.is_some() && ack > op.start && !unflushed {
            assert!(
                log.entries[ack as usize - 1].is_flush(),
                "op {} ({:?}) acknowledged at log position {ack}, after a {:?}, not a Flush",
                op.n,
                op.kind,
                log.entries[ack as usize - 1].op
            );
        }
        last = ack;
    }
}

/// What the model knows of one volume or snapshot at a cut.
struct VolModel {
    /// It must exist (its creation was acknowledged before the cut); else it may.
    must_exist: bool,
    /// A snapshot: exactly these block values (0: zeros, else the writing op's number).
    exact: Option<Vec<u64>>,
    /// A volume: each block's value as of the last vol_flush acknowledged before the cut.
    durable: Vec<u64>,
    /// A volume: values written since that flush (writes and unmaps that started before
    /// the cut): each may be there instead.
    since: Vec<BTreeSet<u64>>,
    /// A volume: each block's value after the last completed write or unmap.
    cur: Vec<u64>,
}

/// Checks the volumes and snapshots of a crash state cut at `cut` against the workload's
/// volume operations: every write acknowledged by a vol_flush acknowledged before the cut
/// holds (a later write or unmap that started before the cut may have replaced it; each
/// 4 KiB block reads as one of those values, never other bytes); each snapshot whose
/// creation was acknowledged exists and holds exactly what its volume held when it
/// returned (one in flight: that, or absent); the clone likewise starts from its
/// snapshot; nothing else exists. Appends one line per problem.
fn check_volumes(vde: &Vde, ops: &[Op], cut: u64, problems: &mut String) {
    let blocks = VOL_BLOCKS as usize;
    let mut model: BTreeMap<String, VolModel> = BTreeMap::new();
    let fresh = |must_exist, start: Vec<u64>| VolModel {
        must_exist,
        exact: None,
        durable: start.clone(),
        since: vec![BTreeSet::new(); blocks],
        cur: start,
    };
    for op in ops.iter().filter(|op| op.start < cut) {
        let acked = op.ack.is_some_and(|a| a <= cut);
        match op.kind {
            Kind::VolCreate => {
                model.insert(op.key.clone(), fresh(acked, vec![0; blocks]));
            }
            Kind::VolWrite { block, n } | Kind::VolUnmap { block, n } => {
                let value = if matches!(op.kind, Kind::VolWrite { .. }) {
                    op.n
                } else {
                    0
                };
                let v = model.get_mut(&op.key).expect("a write to a volume the model knows");
                for b in block..block + n {
                    v.since[b as usize].insert(value);
                    if acked {
                        v.cur[b as usize] = value;
                    }
                }
            }
            Kind::VolFlush if acked => {
                for v in model.values_mut().filter(|v| v.exact.is_none()) {
                    v.durable = v.cur.clone();
                    v.since.iter_mut().for_each(BTreeSet::clear);
                }
            }
            Kind::Snap => {
                let (vol, _) = op.key.split_once('@').unwrap();
                let content = model[vol].cur.clone();
                let mut s = fresh(acked, Vec::new());
                s.exact = Some(content);
                model.insert(op.key.clone(), s);
            }
            Kind::Clone => {
                let content = model[&op.key].exact.clone().unwrap();
                model.insert(CLONE.into(), fresh(acked, content));
            }
            _ => {}
        }
    }
    let mut names: Vec<String> = Vec::new();
    match (vde.vol_list(), vde.snap_list(None)) {
        (Ok(v), Ok(s)) => names.extend(v.into_iter().chain(s).map(|d| d.name)),
        (Err(e), _) | (_, Err(e)) => {
            let _ = writeln!(problems, "vol ls / snap ls: {e}");
            return;
        }
    }
    for name in &names {
        if !model.contains_key(name) {
            let _ = writeln!(problems, "{name} exists but no operation before the cut made it");
        }
    }
    let mut buf = vec![0u8; blocks * VB];
    for (name, m) in &model {
        if !names.contains(name) {
            if m.must_exist {
                let _ = writeln!(problems, "{name}: missing, although its creation was acknowledged");
            }
            continue;
        }
        if let Err(e) = vde.vol_read(name, 0, &mut buf) {
            let _ = writeln!(problems, "{name}: read: {e}");
            continue;
        }
        for (b, data) in buf.chunks(VB).enumerate() {
            let want = |v: u64| {
                if v == 0 {
                    data.iter().all(|&x| x == 0)
                } else {
                    data == vol_block(v, b as u64)
                }
            };
            let (ok, expected) = match &m.exact {
                Some(e) => (want(e[b]), format!("exactly value {} (snapshot)", e[b])),
                None => (
                    want(m.durable[b]) || m.since[b].iter().any(|&v| want(v)),
                    format!("flushed value {} or one of {:?} (0: zeros)", m.durable[b], m.since[b]),
                ),
            };
            if !ok {
                let _ = writeln!(
                    problems,
                    "{name} block {b}: holds {}; expected {expected}",
                    describe_block(data, b as u64)
                );
            }
        }
    }
}
