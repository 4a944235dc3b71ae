//! The store side of crash-state enumeration, shared by `tests/crash_states.rs` (the
//! simulated controller's write log) and `tests/crash_logwrites.rs` (QEMU blklogwrites'
//! log): a put/delete workload that notes, for each operation, where the write log stood
//! when it started and when it was acknowledged, and the check of one crash state against
//! those notes.
//!
//! Today the store is format 1 ([`Vde`]); the workload and the check use only
//! format/open/put/delete/get/keys/fsck, so format 2 plugs in by swapping those calls.
#![allow(dead_code)]

use super::vde_suite::{check_value, small, value};
use ironvme::nvme::crash::{CrashConfig, CrashState, CrashStates, WriteLog};
use ironvme::vde::{Vde, VdeError};
use std::collections::BTreeMap;
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
}

/// One operation of the workload and where the write log stood around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Its number in the workload.
    pub n: u64,
    /// What it did.
    pub kind: Kind,
    /// The key (empty for Format and Checkpoint).
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

    /// One line of text (no spaces in keys): `n kind key start ack`.
    pub fn to_line(&self) -> String {
        let kind = match self.kind {
            Kind::Format => "format".to_string(),
            Kind::Put(len) => format!("put:{len}"),
            Kind::Delete => "del".to_string(),
            Kind::Checkpoint => "checkpoint".to_string(),
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

/// Formats with `format`, then `threads` writers each run `steps` puts, deletes and (now
/// and then, writer 0) checkpoints on [`KEYS`] keys of their own (`t<writer>k<i>`), calling
/// `mark()` (the write log's position) before and after each; values from a few bytes to
/// 1.2 MiB (two extents). Closes the store at the end (a checkpoint; logged as one).
/// Returns the operations ordered by start (each key's in the order they ran). With more
/// than one writer the interleaving, and so the log, differs from run to run.
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
        for step in 1..=steps {
            let n = (step - 1) * threads + t + 1;
            let i = next(&mut x) % KEYS;
            let key = format!("t{t}k{i}");
            let kind = if t == 0 && step % 13 == 0 {
                Kind::Checkpoint
            } else if present[i as usize] && next(&mut x) % 4 == 0 {
                Kind::Delete
            } else {
                Kind::Put(match next(&mut x) % 12 {
                    0 => 1_100_000 + (next(&mut x) % 100_000) as usize,
                    1..=4 => 5000 + (next(&mut x) % 60_000) as usize,
                    _ => (next(&mut x) % 3000) as usize,
                })
            };
            let mut op = Op {
                n,
                kind: kind.clone(),
                key: if kind == Kind::Checkpoint {
                    String::new()
                } else {
                    key.clone()
                },
                start: mark(),
                ack: None,
            };
            let r = match &kind {
                Kind::Put(_) => vde.put(key.as_bytes(), &op.bytes().unwrap()),
                Kind::Delete => vde.delete(key.as_bytes()),
                Kind::Checkpoint => vde.checkpoint(),
                Kind::Format => unreachable!(),
            };
            r.unwrap_or_else(|e| panic!("op {n} {kind:?} {key}: {e}"));
            op.ack = Some(mark());
            match kind {
                Kind::Put(_) => present[i as usize] = true,
                Kind::Delete => present[i as usize] = false,
                _ => {}
            }
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
        n: steps * threads + 1,
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
    /// Everything else held, but the state showed these known problems (see
    /// [`check_state`]'s `known`).
    Known(Vec<&'static str>),
}

/// Checks one crash state: opens the store with `open` (on a copy of the state's image)
/// and checks that every operation acknowledged before the cut is there with its bytes,
/// that an operation cut in flight is there wholly or not at all, that nothing else is
/// there, and that fsck is clean. A state cut before the format was acknowledged may
/// also say "not formatted" (format 1 promises a cut format never leaves a half-made
/// store). Errors: what is wrong, for the failure message.
///
/// `known(state, problem)` names a problem that is known behaviour of the store under
/// test (a finding already reported) rather than a failure: each problem line (`open:
/// …`, `fsck: …` one violation each, `KEY: …`) is offered to it; the ones it names are
/// counted in [`Outcome`] under that name instead of failing the state.
pub fn check_state(
    state: &CrashState,
    ops: &[Op],
    open: impl FnOnce() -> Result<Vde, VdeError>,
    known: &dyn Fn(&CrashState, &str) -> Option<&'static str>,
) -> Result<Outcome, String> {
    let cut = state.cut as u64;
    let formatted = ops[0].kind == Kind::Format && ops[0].ack.is_some_and(|a| a <= cut);
    let vde = match open() {
        Ok(v) => v,
        Err(VdeError::NotFormatted) if !formatted => return Ok(Outcome::NotFormatted),
        Err(e) => {
            let line = format!("open: {e}");
            return match known(state, &line) {
                Some(name) => Ok(Outcome::Known(vec![name])),
                None => Err(line),
            };
        }
    };
    // Per key: the acknowledged state (None: no object; Some(op index)), and the states
    // an operation in flight could leave.
    let mut acked: BTreeMap<&str, Option<usize>> = BTreeMap::new();
    let mut maybe: BTreeMap<&str, Vec<Option<usize>>> = BTreeMap::new();
    let (mut in_flight, mut landed_ops) = (Vec::new(), 0);
    for (i, op) in ops.iter().enumerate() {
        if op.key.is_empty() || op.start >= cut {
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
    std::mem::forget(vde); // nothing to write back: the image is thrown away
    let mut names = Vec::new();
    let mut failed = String::new();
    for line in problems.lines() {
        match known(state, line) {
            Some(name) => names.push(name),
            None => {
                let _ = writeln!(failed, "{line}");
            }
        }
    }
    if !failed.is_empty() {
        return Err(failed.trim_end().to_string());
    }
    if !names.is_empty() {
        return Ok(Outcome::Known(names));
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
    /// Known problems seen: (name, states showing it, the first such state).
    pub known: Vec<(&'static str, usize, String)>,
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
            Ok(Outcome::Known(mut names)) => {
                names.sort_unstable();
                names.dedup();
                for name in names {
                    match self.known.iter_mut().find(|k| k.0 == name) {
                        Some(k) => k.1 += 1,
                        None => self.known.push((name, 1, state.to_string())),
                    }
                }
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

    /// One line per known problem seen.
    pub fn known_report(&self) -> String {
        let mut out = String::new();
        for (name, n, first) in &self.known {
            let _ = writeln!(out, "  known: {name}: {n} states, e.g. {first}");
        }
        out
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
pub fn format1_known(format_acked: u64) -> impl Fn(&CrashState, &str) -> Option<&'static str> {
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

/// Builds the crash states of `log` (recorded from the image `start`) chosen by `config`,
/// opens each with `open(image)` and checks it with [`check_state`]; returns the tally.
pub fn check_all(
    log: &WriteLog,
    start: Vec<u8>,
    config: &CrashConfig,
    ops: &[Op],
    known: &dyn Fn(&CrashState, &str) -> Option<&'static str>,
    open: &mut dyn FnMut(&[u8]) -> Result<Vde, VdeError>,
) -> Tally {
    let mut states = CrashStates::new(log, start, config).expect("crash states of the log");
    let total = states.len();
    let mut tally = Tally::default();
    while let Some((state, image)) = states.next_state() {
        let r = check_state(state, ops, || open(image), known);
        tally.add(state, r);
    }
    assert_eq!(tally.states, total);
    tally
}

/// Checks the log positions of one writer's operations against the log: they never go
/// back, and every acknowledged operation's last entry before its acknowledgement is a
/// Flush (the store acknowledges only after a Flush; this also shows the positions were
/// taken right).
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
        if op.ack.is_some() && ack > op.start {
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
