//! Crash-state enumeration, the method of xfstests' dm-log-writes and CrashMonkey: from a
//! log of every completed write and Flush of a workload on one namespace, and the
//! namespace's image when the log started, build the images a crash could have left, so a
//! test can open each one with the store under test and check what it promised.
//!
//! The model is a device with a volatile write cache. A write that completed is in the
//! cache; a completed Flush makes every write that completed before it durable. A crash
//! after log entry `cut - 1` (and before entry `cut`) leaves on the media:
//!
//! - every write before the last Flush before the cut, whole and in order (a *prefix*);
//! - any subset of the writes between that Flush and the cut (the cache may have written
//!   back any of them, in any order; overlapping writes that both reached the media leave
//!   the later one); a write that was durable at completion (FUA, or the cache was off) is
//!   always there;
//! - and a write may be *torn*: only some of its atomic write units reached the media
//!   (512 B on a 512 B namespace, so one 4 KiB block can tear; on a 4 KiB namespace only a
//!   multi-block write can, between blocks).
//!
//! [`CrashStates`] yields such states: every prefix ending at a Flush (and the empty one,
//! and the whole log), seeded random subsets of the writes after each Flush with a random
//! cut among them, and torn writes on top of such subsets. [`CrashConfig`] bounds their
//! number (`IRONVME_CRASH_STATES=N`) or asks for the exhaustive-ish set
//! (`IRONVME_CRASH_STATES=all`). Each [`CrashState`] says how it was made (its
//! [`Display`](std::fmt::Display) is meant for failure messages) and which log entries
//! are in it, so a test can tell which of its operations were acknowledged before the cut.
//!
//! The logs come from the simulated controller
//! ([`SimController::record_writes`](crate::sim::SimController::record_writes)) and from
//! QEMU's `blklogwrites` block driver ([`logwrites::parse`]). Nothing here knows the
//! store under test.

pub mod logwrites;

use std::collections::HashSet;
use std::fmt;

/// What a logged command did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LogOp {
    /// A Write: [`LoggedWrite::data`] went to the blocks.
    Write,
    /// A Write Zeroes: the blocks read as zeros afterwards.
    WriteZeroes,
    /// One range of a Dataset Management deallocate (or a discard): the blocks read as
    /// zeros afterwards (the simulator and QEMU's raw files both return zeros).
    Deallocate,
    /// A Flush of the namespace (or of all namespaces): every write logged before it is
    /// durable.
    Flush,
}

/// One completed media change or Flush of a namespace, in completion order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedWrite {
    /// What it did.
    pub op: LogOp,
    /// First logical block (in [`WriteLog::lba_size`] units); 0 for a Flush.
    pub slba: u64,
    /// Logical blocks; 0 for a Flush.
    pub nlb: u64,
    /// For [`LogOp::Write`]: the `nlb * lba_size` bytes written. Empty otherwise.
    pub data: Vec<u8>,
    /// Durable at completion: written with FUA, or while the volatile write cache was
    /// off. A crash never loses it once it completed.
    pub durable: bool,
}

impl LoggedWrite {
    /// A Flush entry.
    pub fn flush() -> LoggedWrite {
        LoggedWrite {
            op: LogOp::Flush,
            slba: 0,
            nlb: 0,
            data: Vec::new(),
            durable: false,
        }
    }

    /// Whether this is a Flush.
    pub fn is_flush(&self) -> bool {
        self.op == LogOp::Flush
    }
}

/// The write log of one namespace: its entries in completion order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteLog {
    /// The logical block size of [`LoggedWrite::slba`] and [`LoggedWrite::nlb`], in bytes.
    pub lba_size: u32,
    /// The entries, oldest first.
    pub entries: Vec<LoggedWrite>,
}

impl WriteLog {
    /// Flush entries in the log.
    pub fn flushes(&self) -> usize {
        self.entries.iter().filter(|e| e.is_flush()).count()
    }

    /// The image after every entry was applied to `start`.
    ///
    /// Errors: as [`CrashStates::new`].
    pub fn apply_all(&self, start: &[u8]) -> Result<Vec<u8>, CrashError> {
        let mut image = start.to_vec();
        self.check(image.len() as u64)?;
        for e in &self.entries {
            apply(&mut image, self.lba_size as u64, e, None, None);
        }
        Ok(image)
    }

    /// Checks that every entry lies inside an image of `bytes` bytes and that each Write
    /// carries `nlb * lba_size` bytes.
    fn check(&self, bytes: u64) -> Result<(), CrashError> {
        let bs = self.lba_size as u64;
        if bs == 0 {
            return Err(CrashError::BadLog("the logical block size is 0".into()));
        }
        for (i, e) in self.entries.iter().enumerate() {
            let end = e.slba.checked_add(e.nlb).and_then(|n| n.checked_mul(bs));
            if end.is_none_or(|end| end > bytes) {
                return Err(CrashError::OutOfRange {
                    entry: i,
                    slba: e.slba,
                    nlb: e.nlb,
                    bytes,
                });
            }
            if e.op == LogOp::Write && e.data.len() as u64 != e.nlb * bs {
                return Err(CrashError::BadLog(format!(
                    "entry {i}: a write of {} blocks carries {} bytes",
                    e.nlb,
                    e.data.len()
                )));
            }
        }
        Ok(())
    }
}

/// Why a log cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrashError {
    /// An entry reaches past the end of the image.
    #[error("log entry {entry} (LBA {slba}, {nlb} blocks) reaches past the image's {bytes} bytes")]
    OutOfRange {
        /// Its index in the log.
        entry: usize,
        /// Its first block.
        slba: u64,
        /// Its blocks.
        nlb: u64,
        /// The image's size in bytes.
        bytes: u64,
    },
    /// The log is not self-consistent (message says how).
    #[error("bad write log: {0}")]
    BadLog(String),
    /// The atomic write unit is not a positive multiple of the log's block size.
    #[error("atomic write unit of {unit} bytes is not a multiple of the log's {lba} byte blocks")]
    BadUnit {
        /// The unit asked for, in bytes.
        unit: u32,
        /// The log's logical block size, in bytes.
        lba: u32,
    },
}

/// How many crash states to make, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashConfig {
    /// At most this many states (a seeded sample of the candidates, kept in log order);
    /// `None`: every candidate.
    pub max_states: Option<usize>,
    /// Exhaustive-ish: every subset of the writes after a Flush when there are at most
    /// [`CrashConfig::EXHAUSTIVE_WRITES`] of them, many random ones otherwise, and several
    /// tears of every write that can tear.
    pub exhaustive: bool,
    /// Seeds every random choice: the same log, image and config give the same states.
    pub seed: u64,
    /// The atomic write unit in bytes (a multiple of the log's block size): the pieces a
    /// write tears into. `None`: the log's block size.
    pub atomic_unit: Option<u32>,
}

impl CrashConfig {
    /// In exhaustive mode, epochs (writes between two Flushes) of at most this many
    /// writes get every subset.
    pub const EXHAUSTIVE_WRITES: usize = 10;

    /// Bounded to `max_states`, seed 1.
    pub fn bounded(max_states: usize) -> CrashConfig {
        CrashConfig {
            max_states: Some(max_states),
            exhaustive: false,
            seed: 1,
            atomic_unit: None,
        }
    }

    /// From the environment: `IRONVME_CRASH_STATES` = `all` (exhaustive-ish, unbounded) or
    /// a number of states (default `default_max`); `IRONVME_CRASH_SEED` = the seed
    /// (default 1).
    ///
    /// # Panics
    ///
    /// If a variable is set but not a number (or `all`).
    pub fn from_env(default_max: usize) -> CrashConfig {
        let mut c = CrashConfig::bounded(default_max);
        if let Ok(v) = std::env::var("IRONVME_CRASH_STATES") {
            if v.trim() == "all" {
                c.max_states = None;
                c.exhaustive = true;
            } else {
                c.max_states =
                    Some(v.trim().parse().unwrap_or_else(|e| {
                        panic!("IRONVME_CRASH_STATES={v:?}: not `all` or a number of states: {e}")
                    }));
            }
        }
        if let Ok(v) = std::env::var("IRONVME_CRASH_SEED") {
            c.seed = v
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("IRONVME_CRASH_SEED={v:?}: {e}"));
        }
        c
    }
}

/// How a crash state was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// Every entry before the cut, which is just after a Flush (or at the start or end of
    /// the log).
    Prefix,
    /// A prefix ending at a Flush, plus a subset of the writes after it.
    Subset,
    /// A subset state in which one write is torn.
    Torn,
}

/// A write applied only in part.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tear {
    /// The log entry.
    pub entry: usize,
    /// The atomic units of it that reached the media (indices from its first byte, in
    /// units of [`Tear::unit`] bytes).
    pub units: Vec<u64>,
    /// Units the write has.
    pub of: u64,
    /// The unit in bytes.
    pub unit: u32,
}

/// How much of a log entry a crash state holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    /// All of it.
    Whole,
    /// Some of its atomic units ([`CrashState::tear`]).
    Torn,
    /// None of it.
    Absent,
}

/// One crash state: what it holds and how it was made.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CrashState {
    /// Its number among the states yielded (0-based).
    pub index: usize,
    /// How it was made.
    pub kind: StateKind,
    /// Log entries `0..prefix` are in it, whole. `prefix` is 0 or just after a Flush (or
    /// the log's length).
    pub prefix: usize,
    /// The crash came after entry `cut - 1` completed and before entry `cut` did: an
    /// operation acknowledged when the log had `n <= cut` entries was acknowledged before
    /// the crash. `prefix <= cut`, and no Flush lies in `prefix..cut`.
    pub cut: usize,
    /// Entries of `prefix..cut` that are in it whole, ascending.
    pub applied: Vec<usize>,
    /// The entry of `prefix..cut` that is in it in part, if any.
    pub tear: Option<Tear>,
}

impl CrashState {
    /// How much of log entry `entry` this state holds.
    pub fn presence(&self, entry: usize) -> Presence {
        if entry < self.prefix || self.applied.binary_search(&entry).is_ok() {
            Presence::Whole
        } else if self.tear.as_ref().is_some_and(|t| t.entry == entry) {
            Presence::Torn
        } else {
            Presence::Absent
        }
    }
}

impl fmt::Display for CrashState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "crash state {} ({:?}): entries 0..{} whole",
            self.index, self.kind, self.prefix
        )?;
        if self.cut > self.prefix {
            write!(
                f,
                ", then {} of entries {}..{} {:?}",
                self.applied.len(),
                self.prefix,
                self.cut,
                self.applied
            )?;
        }
        if let Some(t) = &self.tear {
            write!(
                f,
                ", entry {} torn: {} of its {} units of {} B {:?}",
                t.entry,
                t.units.len(),
                t.of,
                t.unit,
                t.units
            )?;
        }
        write!(f, "; cut before entry {}", self.cut)
    }
}

/// SplitMix64: small, well mixed, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

/// The crash states of one log: built by [`CrashStates::new`], walked with
/// [`CrashStates::next_state`].
///
/// Memory: the image once (the states are made by applying entries to it and undoing
/// them), the log, and the plan (the entry numbers of each state).
pub struct CrashStates<'a> {
    log: &'a WriteLog,
    image: Vec<u8>,
    /// Entries `0..base` are applied to `image` for good.
    base: usize,
    /// Bytes the current state changed: (offset, old contents), to undo newest first.
    undo: Vec<(u64, Vec<u8>)>,
    plan: Vec<CrashState>,
    next: usize,
}

impl<'a> CrashStates<'a> {
    /// The crash states of `log` recorded on a namespace whose image was `start` when the
    /// log began, chosen by `config`.
    ///
    /// Errors: [`CrashError::OutOfRange`] for an entry past the end of `start`,
    /// [`CrashError::BadLog`] for a write whose data is not its length,
    /// [`CrashError::BadUnit`] for an atomic unit that is not a multiple of the log's
    /// block size.
    pub fn new(log: &'a WriteLog, start: Vec<u8>, config: &CrashConfig) -> Result<CrashStates<'a>, CrashError> {
        log.check(start.len() as u64)?;
        let unit = config.atomic_unit.unwrap_or(log.lba_size);
        if unit == 0 || unit % log.lba_size != 0 {
            return Err(CrashError::BadUnit {
                unit,
                lba: log.lba_size,
            });
        }
        let plan = plan(log, config, unit);
        Ok(CrashStates {
            log,
            image: start,
            base: 0,
            undo: Vec::new(),
            plan,
            next: 0,
        })
    }

    /// How many states there are.
    pub fn len(&self) -> usize {
        self.plan.len()
    }

    /// Whether there are none (never: the empty prefix is always one).
    pub fn is_empty(&self) -> bool {
        self.plan.is_empty()
    }

    /// The states, without their images.
    pub fn states(&self) -> &[CrashState] {
        &self.plan
    }

    /// The next state and its image (the whole namespace), or `None` after the last.
    pub fn next_state(&mut self) -> Option<(&CrashState, &[u8])> {
        let bs = self.log.lba_size as u64;
        while let Some((at, old)) = self.undo.pop() {
            self.image[at as usize..at as usize + old.len()].copy_from_slice(&old);
        }
        let state = self.plan.get(self.next)?;
        self.next += 1;
        // States come in order of prefix: move the base forward for good.
        for e in &self.log.entries[self.base..state.prefix] {
            apply(&mut self.image, bs, e, None, None);
        }
        self.base = self.base.max(state.prefix);
        for i in state.prefix..state.cut {
            let units = match (state.presence(i), &state.tear) {
                (Presence::Whole, _) => None,
                (Presence::Torn, Some(t)) => Some((t.unit as u64, &t.units[..])),
                _ => continue,
            };
            apply(&mut self.image, bs, &self.log.entries[i], units, Some(&mut self.undo));
        }
        Some((state, &self.image))
    }
}

/// Applies entry `e` to `image` (all of it, or only `units`: (unit bytes, unit indices)),
/// saving what it overwrites in `undo`.
fn apply(
    image: &mut [u8],
    bs: u64,
    e: &LoggedWrite,
    units: Option<(u64, &[u64])>,
    mut undo: Option<&mut Vec<(u64, Vec<u8>)>>,
) {
    if e.op == LogOp::Flush || e.nlb == 0 {
        return;
    }
    let start = e.slba * bs;
    let len = e.nlb * bs;
    let pieces: Vec<(u64, u64)> = match units {
        None => vec![(0, len)],
        Some((unit, list)) => list
            .iter()
            .map(|&u| (u * unit, ((u + 1) * unit).min(len)))
            .filter(|(a, b)| a < b)
            .collect(),
    };
    for (from, to) in pieces {
        let at = (start + from) as usize..(start + to) as usize;
        if let Some(u) = undo.as_deref_mut() {
            u.push((start + from, image[at.clone()].to_vec()));
        }
        match e.op {
            LogOp::Write => image[at].copy_from_slice(&e.data[from as usize..to as usize]),
            _ => image[at].fill(0),
        }
    }
}

/// The epochs of a log: (first entry, end) for each stretch of non-Flush entries that
/// starts at the log's start or just after a Flush; `end` is the next Flush or the log's
/// length. Empty stretches included.
fn epochs(log: &WriteLog) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, e) in log.entries.iter().enumerate() {
        if e.is_flush() {
            out.push((start, i));
            start = i + 1;
        }
    }
    out.push((start, log.entries.len()));
    out
}

/// Chooses the states.
fn plan(log: &WriteLog, config: &CrashConfig, unit: u32) -> Vec<CrashState> {
    let mut rng = Rng(config.seed ^ 0x6372_6173_6873_7461);
    let mut seen = HashSet::new();
    let mut out: Vec<CrashState> = Vec::new();
    let mut push = |s: CrashState, out: &mut Vec<CrashState>| {
        if seen.insert((s.prefix, s.cut, s.applied.clone(), s.tear.clone())) {
            out.push(s);
        }
    };
    let bs = log.lba_size as u64;
    let units_of = |e: &LoggedWrite| {
        if e.is_flush() {
            0
        } else {
            (e.nlb * bs).div_ceil(unit as u64)
        }
    };
    let ep = epochs(log);
    for (n, &(p, end)) in ep.iter().enumerate() {
        let prefix = |cut| CrashState {
            index: 0,
            kind: StateKind::Prefix,
            prefix: p,
            cut,
            applied: Vec::new(),
            tear: None,
        };
        push(prefix(p), &mut out);
        if p == end {
            continue;
        }
        let writes = end - p;
        // Subsets: a cut in (p, end] (half the time at the end), and a loss rate per state.
        let subset = |rng: &mut Rng, cut: usize, skip: Option<usize>| -> Vec<usize> {
            let keep = rng.next();
            (p..cut)
                .filter(|&i| Some(i) != skip && (log.entries[i].durable || rng.next() < keep))
                .collect()
        };
        let random_cut = |rng: &mut Rng| {
            if rng.next() & 1 == 0 {
                end
            } else {
                p + 1 + rng.below(writes as u64) as usize
            }
        };
        let volatile: Vec<usize> = (p..end).filter(|&i| !log.entries[i].durable).collect();
        if config.exhaustive && volatile.len() <= CrashConfig::EXHAUSTIVE_WRITES {
            for mask in 0u64..1 << volatile.len() {
                let mut applied: Vec<usize> = (p..end).filter(|&i| log.entries[i].durable).collect();
                applied.extend(
                    volatile
                        .iter()
                        .enumerate()
                        .filter(|(b, _)| mask >> b & 1 == 1)
                        .map(|(_, &i)| i),
                );
                applied.sort_unstable();
                push(
                    CrashState {
                        kind: StateKind::Subset,
                        cut: end,
                        applied,
                        ..prefix(end)
                    },
                    &mut out,
                );
            }
        } else {
            let count = if config.exhaustive {
                (8 * writes).clamp(64, 512)
            } else {
                6
            };
            for _ in 0..count {
                let cut = random_cut(&mut rng);
                let applied = subset(&mut rng, cut, None);
                push(
                    CrashState {
                        kind: StateKind::Subset,
                        applied,
                        ..prefix(cut)
                    },
                    &mut out,
                );
            }
        }
        // Tears: a write of two units or more, part of it, over a subset of the others.
        // (A durable write that completed reached the media whole.)
        let tearable: Vec<usize> = (p..end)
            .filter(|&i| !log.entries[i].durable && units_of(&log.entries[i]) >= 2)
            .collect();
        if !tearable.is_empty() {
            let count = if config.exhaustive {
                (4 * tearable.len()).min(256)
            } else {
                4
            };
            for k in 0..count {
                let victim = if config.exhaustive {
                    tearable[k % tearable.len()]
                } else {
                    tearable[rng.below(tearable.len() as u64) as usize]
                };
                let cut = if rng.next() & 1 == 0 {
                    end
                } else {
                    victim + 1 + rng.below((end - victim) as u64) as usize
                };
                let applied = subset(&mut rng, cut, Some(victim));
                let of = units_of(&log.entries[victim]);
                // A non-empty proper subset of the units: half the time a leading run (the
                // device wrote in order and stopped), else any subset.
                let units: Vec<u64> = if rng.next() & 1 == 0 {
                    (0..1 + rng.below(of - 1)).collect()
                } else {
                    loop {
                        let u: Vec<u64> = (0..of).filter(|_| rng.next() & 1 == 0).collect();
                        if !u.is_empty() && (u.len() as u64) < of {
                            break u;
                        }
                    }
                };
                push(
                    CrashState {
                        kind: StateKind::Torn,
                        applied,
                        tear: Some(Tear {
                            entry: victim,
                            units,
                            of,
                            unit,
                        }),
                        ..prefix(cut)
                    },
                    &mut out,
                );
            }
        }
        if n + 1 == ep.len() && end > p {
            // The whole log (it does not end with a Flush).
            push(
                CrashState {
                    prefix: end,
                    ..prefix(end)
                },
                &mut out,
            );
        }
    }
    if let Some(max) = config.max_states.filter(|&m| m < out.len()) {
        // A seeded sample, kept in log order; prefix states first among equals so the
        // sample keeps the Flush points when it can.
        let mut keyed: Vec<(bool, u64, usize)> = out
            .iter()
            .enumerate()
            .map(|(i, s)| (s.kind != StateKind::Prefix, rng.next(), i))
            .collect();
        keyed.sort_unstable();
        let prefixes = out.iter().filter(|s| s.kind == StateKind::Prefix).count();
        // Keep at most half the budget for prefixes.
        let take_prefix = prefixes.min(max.div_ceil(2));
        let mut keep: Vec<usize> = keyed[..prefixes]
            .iter()
            .take(take_prefix)
            .chain(keyed[prefixes..].iter().take(max - take_prefix))
            .map(|&(_, _, i)| i)
            .collect();
        if keep.len() < max {
            let extra: Vec<usize> = keyed[take_prefix..prefixes]
                .iter()
                .take(max - keep.len())
                .map(|&(_, _, i)| i)
                .collect();
            keep.extend(extra);
        }
        keep.sort_unstable();
        out = keep.into_iter().map(|i| out[i].clone()).collect();
    }
    for (i, s) in out.iter_mut().enumerate() {
        s.index = i;
    }
    out
}

#[cfg(test)]
mod tests;
