//! The power-loss model of the volatile write cache: an undo log of the media changes that
//! completed since the last Flush, and the power cut that forgets a seeded subset of them.
//!
//! While the model is on (see [`super::SimController::set_volatile_write_cache`]) and the
//! host has the cache enabled (feature 06h WCE), every completed Write, Write Zeroes and
//! Dataset Management deallocate saves the old contents of the ranges it changed, before
//! changing them. A Flush forgets the saved contents of its namespace (all of them for the
//! broadcast NSID), which makes those writes durable. A power cut picks the lost writes,
//! then walks the log newest first: a lost write puts back its old contents except where a
//! newer surviving write covers them, a surviving write marks its ranges covered. That
//! yields exactly the media as if the surviving writes alone had been applied, in order,
//! to the flushed contents.
//!
//! The same hooks feed the write recorder ([`super::SimController::record_writes`]): a
//! redo log of one namespace's completed media changes, with their data, and its Flushes,
//! from which [`crate::crash::CrashStates`] builds every state a crash could leave.

use super::namespace::Saved;
use super::state::State;
use crate::cmd::nvm;
use crate::crash::{LogOp, LoggedWrite, WriteLog};
use std::collections::BTreeMap;

/// What a power cut did to the media; see [`super::SimController::power_cut`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PowerCutReport {
    /// Write, Write Zeroes and Dataset Management (deallocate) commands that had completed
    /// on the media since the last Flush of their namespace, without FUA: the ones the cut
    /// could lose.
    pub unflushed: usize,
    /// How many of those were lost: their blocks went back to their previous contents
    /// (except where a newer surviving write covers them).
    pub dropped: usize,
    /// The unflushed writes, oldest completion first, with what became of each.
    pub writes: Vec<UnflushedWrite>,
}

/// One media change that was still in the volatile write cache at a power cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnflushedWrite {
    /// The namespace it changed.
    pub nsid: u32,
    /// Its opcode: [`WRITE`](crate::cmd::nvm::WRITE), [`WRITE_ZEROES`](crate::cmd::nvm::WRITE_ZEROES)
    /// or [`DATASET_MANAGEMENT`](crate::cmd::nvm::DATASET_MANAGEMENT).
    pub opcode: u8,
    /// The logical blocks it changed, as (SLBA, number of blocks) in the namespace's block
    /// size when it ran; one range for Write and Write Zeroes, one per DSM range.
    pub ranges: Vec<(u64, u64)>,
    /// Whether the power cut lost it.
    pub lost: bool,
}

/// A completed media change that is not yet durable.
struct Undo {
    /// Index into `State::namespaces`.
    ns: usize,
    opcode: u8,
    /// (SLBA, blocks) as the command named them.
    ranges: Vec<(u64, u64)>,
    /// Forced Unit Access: durable at completion, so never lost; kept only because it
    /// covers older writes to the same blocks.
    durable: bool,
    /// The byte ranges it changed, `start..end`.
    extents: Vec<(u64, u64)>,
    /// Their contents before the change (empty when `durable`).
    saved: Vec<Saved>,
}

/// The power-loss model's state, behind the controller's lock.
#[derive(Default)]
pub(super) struct PowerModel {
    /// The test turned the model on.
    pub(super) enabled: bool,
    /// Power was cut: the controller is dead for good.
    pub(super) off: bool,
    /// Unflushed media changes, oldest first.
    log: Vec<Undo>,
    /// The write recorder, from `record_writes` to `take_write_log`.
    pub(super) recording: Option<Recording>,
}

/// The write recorder's state.
pub(super) struct Recording {
    /// Index into `State::namespaces`.
    pub(super) ns: usize,
    /// What was logged so far.
    pub(super) log: WriteLog,
    /// Still logging (a Format that changed the block size ends it).
    pub(super) open: bool,
}

impl PowerModel {
    /// The log of namespace index `ns`, if it is being recorded.
    pub(super) fn recording(&mut self, ns: usize) -> Option<&mut WriteLog> {
        self.recording
            .as_mut()
            .filter(|r| r.open && r.ns == ns)
            .map(|r| &mut r.log)
    }
}

impl PowerModel {
    /// Unflushed media changes (FUA writes excluded).
    pub(super) fn unflushed(&self) -> usize {
        self.log.iter().filter(|u| !u.durable).count()
    }

    /// Forgets every saved content: everything completed so far counts as durable.
    pub(super) fn forget(&mut self) {
        self.log.clear();
    }

    /// Forgets the saved contents of namespace index `ns` (after a Flush of it, a Format or
    /// a restore).
    pub(super) fn forget_namespace(&mut self, ns: usize) {
        self.log.retain(|u| u.ns != ns);
    }
}

/// SplitMix64: a tiny, well-mixed deterministic generator for choosing the lost writes.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A set of byte ranges, kept as disjoint, non-adjacent `start → end` intervals.
#[derive(Default)]
struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    /// Adds `start..end`.
    fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        if let Some((&s, &e)) = self.0.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.0.remove(&s);
            }
        }
        while let Some((&s, &e)) = self.0.range(start..=end).next() {
            end = end.max(e);
            self.0.remove(&s);
        }
        self.0.insert(start, end);
    }

    /// The parts of `start..end` not in the set, in order.
    fn uncovered(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = start;
        if let Some((_, &e)) = self.0.range(..start).next_back() {
            at = at.max(e);
        }
        for (&s, &e) in self.0.range(start..end) {
            if s > at {
                out.push((at, s));
            }
            at = at.max(e);
        }
        if at < end {
            out.push((at, end));
        }
        out
    }
}

impl State {
    /// Whether completed media changes are volatile now: the model is on and the host has
    /// the write cache enabled (it can only be when [`super::SimConfig::vwc`] is set).
    fn cache_is_volatile(&self) -> bool {
        self.power.enabled && self.features.write_cache_enabled()
    }

    /// Called just before a command changes the blocks `ranges` ((SLBA, NLB) pairs, all
    /// checked to be inside the namespace) of namespace index `ns`: remembers their
    /// contents if the change will be volatile, and logs the change if the namespace is
    /// being recorded (`data`: what a Write writes, `ranges`' blocks in order). `fua`
    /// makes the change durable at once.
    pub(super) fn before_media_change(&mut self, ns: usize, opcode: u8, fua: bool, ranges: &[(u64, u64)], data: &[u8]) {
        let durable = fua || !self.features.write_cache_enabled();
        if let Some(log) = self.power.recording(ns) {
            let op = match opcode {
                nvm::WRITE => LogOp::Write,
                nvm::WRITE_ZEROES => LogOp::WriteZeroes,
                _ => LogOp::Deallocate,
            };
            let mut at = 0usize;
            for &(slba, nlb) in ranges.iter().filter(|&&(_, nlb)| nlb > 0) {
                let data = match op {
                    LogOp::Write => {
                        let len = (nlb * log.lba_size as u64) as usize;
                        at += len;
                        data[at - len..at].to_vec()
                    }
                    _ => Vec::new(),
                };
                log.entries.push(LoggedWrite {
                    op,
                    slba,
                    nlb,
                    data,
                    durable,
                });
            }
        }
        if !self.cache_is_volatile() {
            return;
        }
        if fua && !self.power.log.iter().any(|u| u.ns == ns) {
            return; // durable, and there is nothing older for it to cover
        }
        let namespace = &self.namespaces[ns];
        let bs = namespace.block_size as u64;
        let extents: Vec<(u64, u64)> = ranges
            .iter()
            .filter(|&&(_, nlb)| nlb > 0)
            .map(|&(slba, nlb)| (slba * bs, (slba + nlb) * bs))
            .collect();
        let mut saved = Vec::new();
        if !fua {
            for &(start, end) in &extents {
                namespace.save(start, end - start, &mut saved);
            }
        }
        self.power.log.push(Undo {
            ns,
            opcode,
            ranges: ranges.to_vec(),
            durable: fua,
            extents,
            saved,
        });
    }

    /// A Flush of namespace index `ns` (`None`: all namespaces) completed, or something
    /// equivalent happened: its completed writes are durable.
    pub(super) fn flushed(&mut self, ns: Option<usize>) {
        if let Some(r) = self.power.recording.as_mut().filter(|r| r.open) {
            if ns.is_none_or(|i| i == r.ns) {
                r.log.entries.push(LoggedWrite::flush());
            }
        }
        match ns {
            Some(i) => self.power.forget_namespace(i),
            None => self.power.forget(),
        }
    }

    /// Cuts the power: the controller stops for good, every held or delayed command is
    /// dropped, and a subset of the unflushed writes chosen by `seed` is undone.
    pub(super) fn power_cut(&mut self, seed: u64) -> PowerCutReport {
        self.power.off = true;
        self.parked.clear();
        self.aers.clear();
        for cq in self.cqs.iter_mut().flatten() {
            cq.overflow.clear();
        }
        let log = std::mem::take(&mut self.power.log);
        // The seed picks a loss rate, then each unflushed write is lost with that
        // probability: across seeds this gives both near-total and near-zero losses.
        let mut rng = SplitMix64(seed);
        let rate = rng.next();
        let lost: Vec<bool> = log.iter().map(|u| !u.durable && rng.next() < rate).collect();
        let mut covered: BTreeMap<usize, Ranges> = BTreeMap::new();
        for (u, &is_lost) in log.iter().zip(&lost).rev() {
            let cov = covered.entry(u.ns).or_default();
            if is_lost {
                for s in &u.saved {
                    for (from, to) in cov.uncovered(s.offset, s.offset + s.len) {
                        self.namespaces[u.ns].put_back(s, from, to);
                    }
                }
            } else {
                for &(start, end) in &u.extents {
                    cov.insert(start, end);
                }
            }
        }
        let writes: Vec<UnflushedWrite> = log
            .into_iter()
            .zip(lost)
            .filter(|(u, _)| !u.durable)
            .map(|(u, lost)| UnflushedWrite {
                nsid: u.ns as u32 + 1,
                opcode: u.opcode,
                ranges: u.ranges,
                lost,
            })
            .collect();
        PowerCutReport {
            unflushed: writes.len(),
            dropped: writes.iter().filter(|w| w.lost).count(),
            writes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Harness, IoPair};
    use super::super::{FaultAction, FaultRule, SimConfig, SimNamespace};
    use super::*;
    use crate::cmd::{Command, DsmAttributes, nvm};
    use crate::features::FeatureId;
    use crate::hw::Registers;
    use crate::regs::{Cc, ShutdownNotification, offset};

    /// Writes `blocks` 512-byte blocks of `fill` at `slba` of NSID `nsid`.
    fn write(h: &Harness, io: &mut IoPair, nsid: u32, slba: u64, blocks: u32, fill: u8, fua: bool) {
        let mut buf = h.dma_buf(blocks as usize * 512);
        buf.as_mut_slice().fill(fill);
        let mut w = Command::write(nsid, slba, blocks, fua);
        w.set_prp(buf.iova(), if blocks > 8 { buf.iova() + 4096 } else { 0 });
        assert!(io.run(&h.sim, w).status().is_success());
    }

    fn run_ok(h: &Harness, io: &mut IoPair, cmd: Command) {
        let c = io.run(&h.sim, cmd);
        assert!(c.status().is_success(), "{}", c.status());
    }

    /// Blocks `range` of `image` all hold `fill`.
    fn holds(image: &[u8], range: std::ops::Range<usize>, fill: u8) -> bool {
        image[range.start * 512..range.end * 512].iter().all(|&b| b == fill)
    }

    fn model_on(cfg: SimConfig) -> (Harness, IoPair) {
        let mut h = Harness::with(cfg);
        h.sim.set_volatile_write_cache(true);
        let io = h.create_io(1, 64);
        (h, io)
    }

    /// One step of the scenario below: (SLBA, blocks, fill, FUA).
    type Step = (u64, u32, u8, bool);

    /// Flushed, then overlapping unflushed writes, one with FUA.
    const AFTER_FLUSH: [Step; 6] = [
        (0, 2, 0xB1, false),
        (1, 2, 0xB2, false), // overlaps the previous one
        (2, 4, 0xB3, false),
        (10, 1, 0xB4, true), // FUA
        (4, 1, 0xB5, false),
        (20, 8, 0xB6, false),
    ];

    /// The media as if `steps` were applied in order to `image`, skipping the `lost` ones.
    fn apply(mut image: Vec<u8>, steps: &[Step], lost: &[bool]) -> Vec<u8> {
        for (&(slba, blocks, fill, _), _) in steps.iter().zip(lost).filter(|(_, l)| !**l) {
            image[slba as usize * 512..(slba as usize + blocks as usize) * 512].fill(fill);
        }
        image
    }

    #[test]
    fn a_power_cut_keeps_flushed_writes_and_survivors_in_order() {
        let mut saw_partial = false;
        for seed in 0..64 {
            let (h, mut io) = model_on(SimConfig::default());
            write(&h, &mut io, 1, 0, 8, 0xA0, false);
            write(&h, &mut io, 1, 30, 2, 0xA1, false);
            run_ok(&h, &mut io, Command::flush(1));
            let flushed = h.sim.namespace_data(1);
            for &(slba, blocks, fill, fua) in &AFTER_FLUSH {
                write(&h, &mut io, 1, slba, blocks, fill, fua);
            }
            assert_eq!(h.sim.unflushed_writes(), 5, "the FUA write is durable");
            let report = h.sim.power_cut(seed);
            assert!(h.sim.is_powered_off());
            assert_eq!((report.unflushed, report.writes.len()), (5, 5));
            assert_eq!(report.dropped, report.writes.iter().filter(|w| w.lost).count());
            assert!(report.writes.iter().all(|w| w.nsid == 1 && w.opcode == nvm::WRITE));
            let unflushed: Vec<&Step> = AFTER_FLUSH.iter().filter(|s| !s.3).collect();
            let ranges: Vec<Vec<(u64, u64)>> = unflushed.iter().map(|s| vec![(s.0, s.1 as u64)]).collect();
            assert_eq!(
                report.writes.iter().map(|w| w.ranges.clone()).collect::<Vec<_>>(),
                ranges
            );
            let mut lost = report.writes.iter().map(|w| w.lost);
            let lost: Vec<bool> = AFTER_FLUSH.iter().map(|s| !s.3 && lost.next().unwrap()).collect();
            let image = h.sim.namespace_data(1);
            assert!(image == apply(flushed, &AFTER_FLUSH, &lost), "seed {seed}: {report:?}");
            assert!(holds(&image, 30..32, 0xA1) && holds(&image, 10..11, 0xB4));
            saw_partial |= report.dropped > 0 && report.dropped < report.unflushed;
            // Deterministic.
            let (h2, mut io2) = model_on(SimConfig::default());
            write(&h2, &mut io2, 1, 0, 8, 0xA0, false);
            write(&h2, &mut io2, 1, 30, 2, 0xA1, false);
            run_ok(&h2, &mut io2, Command::flush(1));
            for &(slba, blocks, fill, fua) in &AFTER_FLUSH {
                write(&h2, &mut io2, 1, slba, blocks, fill, fua);
            }
            assert_eq!(h2.sim.power_cut(seed), report);
            assert_eq!(h2.sim.namespace_data(1), image);
        }
        assert!(saw_partial, "some seed loses some but not all writes");
    }

    #[test]
    fn flushes_are_per_namespace_or_broadcast() {
        let cfg = SimConfig {
            namespaces: vec![SimNamespace::new(512, 256), SimNamespace::new(512, 256)],
            ..SimConfig::default()
        };
        for broadcast in [false, true] {
            let (h, mut io) = model_on(cfg.clone());
            write(&h, &mut io, 1, 0, 1, 0x11, false);
            write(&h, &mut io, 2, 0, 1, 0x22, false);
            run_ok(&h, &mut io, Command::flush(if broadcast { u32::MAX } else { 1 }));
            assert_eq!(h.sim.unflushed_writes(), if broadcast { 0 } else { 1 });
            // A seed that loses every write (the loss rate is drawn first).
            let seed = (0..).find(|&s| lose_all(s)).unwrap();
            let report = h.sim.power_cut(seed);
            assert_eq!(report.dropped, report.unflushed);
            assert!(holds(&h.sim.namespace_data(1), 0..1, 0x11));
            let ns2 = h.sim.namespace_data(2);
            assert!(
                holds(&ns2, 0..1, if broadcast { 0x22 } else { 0 }),
                "broadcast {broadcast}"
            );
        }
    }

    /// Whether `seed` loses each of the first 8 unflushed writes.
    fn lose_all(seed: u64) -> bool {
        let mut rng = SplitMix64(seed);
        let rate = rng.next();
        (0..8).all(|_| rng.next() < rate)
    }

    #[test]
    fn write_zeroes_and_deallocate_are_undone_too() {
        let (h, mut io) = model_on(SimConfig::default());
        write(&h, &mut io, 1, 0, 16, 0x5A, false);
        run_ok(&h, &mut io, Command::flush(1));
        run_ok(&h, &mut io, Command::write_zeroes(1, 0, 2, false));
        let mut ranges = h.dma_buf(4096);
        let m = ranges.as_mut_slice();
        for (i, (slba, nlb)) in [(4u64, 2u32), (8, 1)].into_iter().enumerate() {
            m[i * 16 + 4..i * 16 + 8].copy_from_slice(&nlb.to_le_bytes());
            m[i * 16 + 8..i * 16 + 16].copy_from_slice(&slba.to_le_bytes());
        }
        let mut dsm = Command::dataset_management(
            1,
            2,
            DsmAttributes {
                deallocate: true,
                ..Default::default()
            },
        );
        dsm.set_prp(ranges.iova(), 0);
        run_ok(&h, &mut io, dsm);
        // Without AD, Dataset Management changes nothing and is not logged.
        let mut hint = Command::dataset_management(1, 1, DsmAttributes::default());
        hint.set_prp(ranges.iova(), 0);
        run_ok(&h, &mut io, hint);
        let image = h.sim.namespace_data(1);
        assert!(holds(&image, 0..2, 0) && holds(&image, 4..6, 0) && holds(&image, 8..9, 0));
        assert_eq!(h.sim.unflushed_writes(), 2);
        let seed = (0..).find(|&s| lose_all(s)).unwrap();
        let report = h.sim.power_cut(seed);
        assert_eq!(
            report.writes,
            [
                UnflushedWrite {
                    nsid: 1,
                    opcode: nvm::WRITE_ZEROES,
                    ranges: vec![(0, 2)],
                    lost: true
                },
                UnflushedWrite {
                    nsid: 1,
                    opcode: nvm::DATASET_MANAGEMENT,
                    ranges: vec![(4, 2), (8, 1)],
                    lost: true
                },
            ]
        );
        assert!(holds(&h.sim.namespace_data(1), 0..16, 0x5A));
    }

    #[test]
    fn after_a_power_cut_nothing_reaches_the_media() {
        let (mut h, mut io) = model_on(SimConfig::default());
        write(&h, &mut io, 1, 0, 1, 0x01, false);
        run_ok(&h, &mut io, Command::flush(1));
        // A write held by a fault rule when the power goes.
        h.sim.inject(FaultRule {
            opcode: Some(nvm::WRITE),
            times: Some(1),
            action: FaultAction::Hang,
            ..Default::default()
        });
        let mut buf = h.dma_buf(512);
        buf.as_mut_slice().fill(0xEE);
        let mut w = Command::write(1, 0, 1, false);
        w.set_prp(buf.iova(), 0);
        io.submit(&h.sim, w);
        assert_eq!(h.sim.held_commands(), 1);
        let before = h.sim.namespace_data(1);
        let report = h.sim.power_cut(1);
        assert_eq!((report.unflushed, report.dropped), (0, 0));
        assert_eq!(h.sim.held_commands(), 0, "in-flight commands die with the power");
        h.sim.release_held();
        h.sim.set_removed(false);
        h.sim.set_fatal(false);
        io.submit(&h.sim, w);
        io.submit(&h.sim, Command::write_zeroes(1, 0, 1, false));
        h.submit_admin(Command::format_nvm(1, 0, 0, 0, false, false));
        assert!(
            io.poll(&h.sim).is_none() && h.poll_admin().is_none(),
            "nothing completes"
        );
        assert_eq!(h.sim.read32(offset::CSTS), u32::MAX, "registers read all ones");
        // Not even a reset brings it back.
        h.sim.write32(offset::CC, Harness::cc().with_en(false).0);
        h.sim.write32(offset::CC, Harness::cc().0);
        io.submit(&h.sim, w);
        assert_eq!(h.sim.namespace_data(1), before);
        assert!(holds(&before, 0..1, 0x01));
        assert_eq!(h.sim.power_cut(2), PowerCutReport::default());
    }

    #[test]
    fn durable_without_the_model_the_cache_or_after_shutdown() {
        // Model off (the default): nothing is tracked.
        let mut h = Harness::new();
        let mut io = h.create_io(1, 16);
        write(&h, &mut io, 1, 0, 1, 0x33, false);
        assert_eq!(h.sim.unflushed_writes(), 0);
        assert_eq!(h.sim.power_cut(0).unflushed, 0);
        assert!(holds(&h.sim.namespace_data(1), 0..1, 0x33));
        // No volatile write cache: nothing is tracked either.
        let (h, mut io) = model_on(SimConfig {
            vwc: false,
            ..SimConfig::default()
        });
        write(&h, &mut io, 1, 0, 1, 0x33, false);
        assert_eq!(h.sim.unflushed_writes(), 0);
        // The host disables the cache: written back, and later writes are durable.
        let (mut h, mut io) = model_on(SimConfig::default());
        write(&h, &mut io, 1, 0, 1, 0x44, false);
        assert_eq!(h.sim.unflushed_writes(), 1);
        let c = h.admin(Command::set_features(FeatureId::VOLATILE_WRITE_CACHE, 0, 0, false));
        assert!(c.status().is_success());
        write(&h, &mut io, 1, 1, 1, 0x44, false);
        assert_eq!(h.sim.unflushed_writes(), 0);
        // ... and enables it again.
        let c = h.admin(Command::set_features(FeatureId::VOLATILE_WRITE_CACHE, 0, 1, false));
        assert!(c.status().is_success());
        write(&h, &mut io, 1, 2, 1, 0x44, false);
        assert_eq!(h.sim.unflushed_writes(), 1);
        // A controller reset keeps the cache; a shutdown notification writes it back.
        drop(io);
        h.reset();
        assert_eq!(h.sim.unflushed_writes(), 1);
        h.sim.write32(
            offset::CC,
            Cc(h.sim.read32(offset::CC)).with_shn(ShutdownNotification::Normal).0,
        );
        assert_eq!(h.sim.unflushed_writes(), 0);
        // Turning the model off makes everything durable.
        let (h, mut io) = model_on(SimConfig::default());
        write(&h, &mut io, 1, 0, 1, 0x55, false);
        h.sim.set_volatile_write_cache(false);
        assert_eq!(h.sim.unflushed_writes(), 0);
    }

    #[test]
    fn format_and_restore_count_as_flushed() {
        let (mut h, mut io) = model_on(SimConfig::default());
        write(&h, &mut io, 1, 0, 1, 0x66, false);
        let c = h.admin(Command::format_nvm(1, 0, 0, 0, false, false));
        assert!(c.status().is_success(), "{}", c.status());
        assert_eq!(h.sim.unflushed_writes(), 0);
        write(&h, &mut io, 1, 0, 1, 0x77, false);
        let mut image = vec![0u8; 16 * 1024 * 1024];
        image[512..1024].fill(0x99);
        h.sim.restore_namespace(1, &image);
        assert_eq!(h.sim.unflushed_writes(), 0);
        assert_eq!(h.sim.namespace_data(1), image);
        let back = h.dma_buf(1024);
        assert!(io.read_prp(&h.sim, 0, &back, 2).status().is_success());
        assert_eq!(back.as_slice(), &image[..1024]);
    }

    #[test]
    #[should_panic(expected = "do not fit")]
    fn restore_refuses_an_image_larger_than_the_namespace() {
        let h = Harness::new();
        h.sim.restore_namespace(1, &vec![0u8; 16 * 1024 * 1024 + 1]);
    }

    #[test]
    #[should_panic(expected = "not an active namespace")]
    fn restore_refuses_an_unknown_namespace() {
        let h = Harness::new();
        h.sim.restore_namespace(2, &[]);
    }

    #[test]
    fn the_recorder_logs_every_change_and_flush_of_its_namespace_in_order() {
        use crate::crash::{LogOp, LoggedWrite};
        let cfg = SimConfig {
            namespaces: vec![SimNamespace::new(512, 256), SimNamespace::new(512, 256)],
            ..SimConfig::default()
        };
        let mut h = Harness::with(cfg);
        let mut io = h.create_io(1, 64);
        write(&h, &mut io, 1, 0, 4, 0x01, false); // before the recording: not logged
        let start = h.sim.namespace_data(1);
        h.sim.record_writes(1);
        assert_eq!(h.sim.write_log_len(), 0);
        write(&h, &mut io, 1, 2, 8, 0x02, false);
        write(&h, &mut io, 2, 0, 1, 0x03, false); // the other namespace: not logged
        assert_eq!(h.sim.write_log_len(), 1);
        run_ok(&h, &mut io, Command::flush(2)); // not this namespace's Flush
        run_ok(&h, &mut io, Command::flush(1));
        write(&h, &mut io, 1, 20, 1, 0x04, true);
        run_ok(&h, &mut io, Command::write_zeroes(1, 3, 2, false));
        let mut ranges = h.dma_buf(4096);
        let m = ranges.as_mut_slice();
        for (i, (slba, nlb)) in [(30u64, 2u32), (40, 0), (50, 1)].into_iter().enumerate() {
            m[i * 16 + 4..i * 16 + 8].copy_from_slice(&nlb.to_le_bytes());
            m[i * 16 + 8..i * 16 + 16].copy_from_slice(&slba.to_le_bytes());
        }
        let mut dsm = Command::dataset_management(
            1,
            3,
            DsmAttributes {
                deallocate: true,
                ..Default::default()
            },
        );
        dsm.set_prp(ranges.iova(), 0);
        run_ok(&h, &mut io, dsm);
        // A failed write is not logged.
        let buf = h.dma_buf(512);
        assert!(!io.write_prp(&h.sim, 300, &buf, 1).status().is_success());
        run_ok(&h, &mut io, Command::flush(u32::MAX));
        // Disabling the cache counts as a Flush, and later writes are durable.
        let c = h.admin(Command::set_features(FeatureId::VOLATILE_WRITE_CACHE, 0, 0, false));
        assert!(c.status().is_success());
        write(&h, &mut io, 1, 60, 1, 0x05, false);
        let end = h.sim.namespace_data(1);
        let log = h.sim.take_write_log().expect("a recording");
        assert!(h.sim.take_write_log().is_none(), "taking ends it");
        write(&h, &mut io, 1, 61, 1, 0x06, false);
        let kinds: Vec<(LogOp, u64, u64, bool)> =
            log.entries.iter().map(|e| (e.op, e.slba, e.nlb, e.durable)).collect();
        assert_eq!(
            kinds,
            [
                (LogOp::Write, 2, 8, false),
                (LogOp::Flush, 0, 0, false),
                (LogOp::Write, 20, 1, true),
                (LogOp::WriteZeroes, 3, 2, false),
                (LogOp::Deallocate, 30, 2, false),
                (LogOp::Deallocate, 50, 1, false),
                (LogOp::Flush, 0, 0, false),
                (LogOp::Flush, 0, 0, false),
                (LogOp::Write, 60, 1, true),
            ]
        );
        assert_eq!(log.lba_size, 512);
        assert_eq!(log.entries[0].data, vec![0x02; 8 * 512]);
        assert!(
            log.entries
                .iter()
                .filter(|e| e.op != LogOp::Write)
                .all(|e| e.data.is_empty())
        );
        assert_eq!(log.entries[1], LoggedWrite::flush());
        assert!(
            log.apply_all(&start).unwrap() == end,
            "replaying the log gives the media"
        );
    }

    #[test]
    fn the_recorder_logs_a_format_and_refuses_a_restore() {
        use crate::crash::LogOp;
        let (mut h, mut io) = model_on(SimConfig::default());
        h.sim.record_writes(1);
        write(&h, &mut io, 1, 0, 1, 0x66, false);
        let c = h.admin(Command::format_nvm(1, 0, 0, 0, false, false));
        assert!(c.status().is_success(), "{}", c.status());
        write(&h, &mut io, 1, 1, 1, 0x67, false);
        // A new block size ends the recording.
        let c = h.admin(Command::format_nvm(1, 1, 0, 0, false, false));
        assert!(c.status().is_success(), "{}", c.status());
        let restore = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            h.sim.restore_namespace(1, &[1; 512]);
        }));
        assert!(restore.is_ok(), "the recording ended: a restore is fine");
        let log = h.sim.take_write_log().unwrap();
        let ops: Vec<(LogOp, u64, u64, bool)> = log.entries.iter().map(|e| (e.op, e.slba, e.nlb, e.durable)).collect();
        let all = 16 * 1024 * 1024 / 512;
        assert_eq!(
            ops,
            [
                (LogOp::Write, 0, 1, false),
                (LogOp::Deallocate, 0, all, true),
                (LogOp::Flush, 0, 0, false),
                (LogOp::Write, 1, 1, false),
                (LogOp::Deallocate, 0, all, true),
                (LogOp::Flush, 0, 0, false),
            ]
        );
        h.sim.record_writes(1);
        let restore = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            h.sim.restore_namespace(1, &[1; 512]);
        }));
        assert!(restore.is_err(), "a restore under a recording would not be in the log");
    }

    #[test]
    fn ranges_merge_and_report_gaps() {
        let mut r = Ranges::default();
        r.insert(10, 20);
        r.insert(30, 40);
        assert_eq!(r.uncovered(0, 50), [(0, 10), (20, 30), (40, 50)]);
        assert_eq!(r.uncovered(12, 18), []);
        assert_eq!(r.uncovered(15, 35), [(20, 30)]);
        r.insert(20, 30); // adjacent on both sides: one interval
        assert_eq!(r.0.len(), 1);
        assert_eq!(r.uncovered(0, 50), [(0, 10), (40, 50)]);
        r.insert(5, 45);
        r.insert(0, 1);
        assert_eq!(r.0.iter().map(|(&s, &e)| (s, e)).collect::<Vec<_>>(), [(0, 1), (5, 45)]);
        assert_eq!(r.uncovered(0, 50), [(1, 5), (45, 50)]);
        r.insert(7, 7);
        assert_eq!(r.0.len(), 2, "an empty range adds nothing");
    }

    #[test]
    fn splitmix_is_deterministic_and_mixes() {
        let (mut a, mut b) = (SplitMix64(7), SplitMix64(7));
        let xs: Vec<u64> = (0..4).map(|_| a.next()).collect();
        assert_eq!(xs, (0..4).map(|_| b.next()).collect::<Vec<_>>());
        assert_ne!(xs[0], SplitMix64(8).next());
        assert!(xs.windows(2).all(|w| w[0] != w[1]));
    }
}
