//! The hostile controller: ways the simulated device breaks the NVMe protocol on purpose,
//! so tests can check that the host survives a broken or malicious device.
//!
//! A misbehaviour is a fault action ([`super::FaultAction::Misbehave`]): inject a
//! [`super::FaultRule`] and every command it matches suffers it, e.g.
//! `FaultRule { qid: Some(1), times: Some(1), ..FaultRule::new(FaultAction::Misbehave(Misbehaviour::DuplicateCompletion)) }`.
//! Everything else about the simulator stays strict: mistakes of the *host* are still
//! recorded in [`super::SimController::protocol_violations`] and
//! [`super::SimController::dma_violations`]. What the device does wrong on purpose is not
//! a host mistake: device accesses outside mapped memory made by [`Misbehaviour::DmaOutside`]
//! are blocked (as an IOMMU would) and listed in
//! [`super::SimController::hostile_dma_blocked`] instead, and doorbells written while the
//! device has dropped CSTS.RDY by itself are ignored without a violation.

use super::state::{ParkKind, Parked, Pending, State, ViolationKind};
use crate::cmd::Command;
use crate::status::Status;
use std::collections::VecDeque;
use std::time::Duration;

/// Completions remembered for [`Misbehaviour::StaleCompletion`].
const HISTORY: usize = 64;

/// A way the controller breaks the protocol (NVMe Base Specification 2.0 section named
/// on each variant) for the command that triggers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Before the real completion, post one whose CID (§4.6.1, Figure 92) names no command:
    /// the command's CID plus 8000h.
    UnknownCid,
    /// Post the command's completion twice (§4.6: a CID completes once).
    DuplicateCompletion,
    /// After the real completion, post again the oldest remembered completion of an earlier
    /// command of the same SQ — a CID the host has already seen complete and may have
    /// given to a new command.
    StaleCompletion,
    /// Before the real completion, post one naming another SQ (SQID + 1) and carrying the
    /// CID of a command this SQ still holds unfinished (or the command's own CID when
    /// nothing is held). A host that ignores SQID completes a command the device has not
    /// finished.
    WrongSqid,
    /// Report an SQ head pointer (SQHD) past the end of the ring.
    SqhdPastRing,
    /// Report an SQ head pointer two entries behind the real one (the head went backwards).
    SqhdBackwards,
    /// Invert the CQ's phase tag (§4.6, "Phase Tag") now instead of at the wrap: this
    /// completion and the ones after it, up to the wrap, carry the old phase and look
    /// like stale entries.
    EarlyPhase,
    /// Complete with a status whose Status Code Type is reserved (4, 5 or 6; §4.6.1.2,
    /// Figure 95) and DNR set, whatever the command did.
    ReservedStatus,
    /// Surprise removal in the middle of the command: from now on every register read
    /// returns all ones and nothing is processed; the command never completes (like
    /// [`super::SimController::set_removed`]).
    Removed,
    /// CSTS.RDY drops to 0 by itself (without CSTS.CFS), the command is dropped, and the
    /// controller stops processing until the host resets it (CC.EN 1 → 0 → 1), after which
    /// RDY comes back.
    ReadyDrops,
    /// As [`Misbehaviour::ReadyDrops`], but CSTS.RDY never becomes 1 again, whatever the
    /// host does.
    ReadyNeverAgain,
    /// Identify returns nonsense (only for the Identify CNS the lie is about; other
    /// commands run normally).
    Identify(IdentifyLie),
    /// Execute the command normally, then write 64 bytes just past the end of the memory
    /// region its last data segment lies in, and 64 bytes at IOVA 0: DMA outside every
    /// mapped buffer, blocked and recorded in
    /// [`super::SimController::hostile_dma_blocked`]. Commands without data are only
    /// executed.
    DmaOutside,
}

/// Identify data that makes no sense (Base Specification 2.0 §5.17.2; NVM Command Set
/// 1.0 §4.1.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentifyLie {
    /// Identify Controller NN (bytes 519:516) = FFFFFFFFh, the broadcast NSID.
    NnMax,
    /// Identify Controller MDTS (byte 77) = this value (0 means no limit; large values
    /// overflow any byte count).
    Mdts(u8),
    /// Identify Namespace FLBAS (byte 26) points one past the last LBA format (NLBAF + 1).
    FormatIndexOutOfRange,
    /// Identify Namespace: LBADS of the current LBA format = this value (e.g. 0, or 40:
    /// a terabyte block).
    Lbads(u8),
    /// Identify Namespace NSZE, NCAP and NUSE = the smallest block count whose size in
    /// bytes overflows a `u64` with the current block size.
    NszeOverflow,
}

/// The hostile part of the controller's state.
#[derive(Debug, Default)]
pub(super) struct HostileState {
    /// CSTS.RDY was dropped by a misbehaviour: doorbells while it is 0 are the device's
    /// fault, not the host's.
    pub(super) ready_dropped: bool,
    /// CSTS.RDY never becomes 1 again.
    pub(super) never_ready: bool,
    /// The misbehaviour to apply to the completion of the command being executed.
    pub(super) mangle: Option<Misbehaviour>,
    /// The lie to tell in the Identify data of the command being executed.
    pub(super) identify_lie: Option<IdentifyLie>,
    /// Recent completions posted, oldest first.
    pub(super) history: VecDeque<Pending>,
}

impl HostileState {
    pub(super) fn remember(&mut self, p: Pending) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(p);
    }
}

/// Applies `lie` to Identify data `b` returned for CNS `cns`.
pub(super) fn lie_in_identify(lie: IdentifyLie, cns: crate::identify::Cns, b: &mut [u8]) {
    use crate::identify::Cns;
    if b.len() < 4096 {
        return;
    }
    let put64 = |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    match (lie, cns) {
        (IdentifyLie::NnMax, Cns::CONTROLLER) => b[516..520].copy_from_slice(&u32::MAX.to_le_bytes()),
        (IdentifyLie::Mdts(v), Cns::CONTROLLER) => b[77] = v,
        (IdentifyLie::FormatIndexOutOfRange, Cns::NAMESPACE) => b[26] = (b[25] + 1) & 0xF,
        (IdentifyLie::Lbads(v), Cns::NAMESPACE) => {
            let at = 128 + 4 * (b[26] & 0xF) as usize + 2;
            b[at] = v;
        }
        (IdentifyLie::NszeOverflow, Cns::NAMESPACE) => {
            let lbads = b[128 + 4 * (b[26] & 0xF) as usize + 2].min(63);
            let blocks = (u64::MAX >> lbads) + 1;
            for at in [0, 8, 16] {
                put64(b, at, blocks);
            }
        }
        _ => {}
    }
}

impl State {
    /// Runs `cmd` from SQ `sqid` misbehaving as `m`.
    pub(super) fn misbehave(&mut self, sqid: u16, cmd: Command, m: Misbehaviour) {
        match m {
            Misbehaviour::Removed => {
                self.removed = true;
                self.park_lost(sqid, cmd);
            }
            Misbehaviour::ReadyDrops | Misbehaviour::ReadyNeverAgain => {
                self.ready.go(false, Duration::ZERO);
                self.hostile.ready_dropped = true;
                self.hostile.never_ready |= m == Misbehaviour::ReadyNeverAgain;
                self.park_lost(sqid, cmd);
            }
            Misbehaviour::Identify(lie) => {
                self.hostile.identify_lie = Some(lie);
                self.run(sqid, &cmd);
                self.hostile.identify_lie = None;
            }
            Misbehaviour::DmaOutside => {
                self.segs.clear();
                self.run(sqid, &cmd);
                if let Some(&(iova, _)) = self.segs.last() {
                    let past = self.dma.region_end(iova).unwrap_or(iova);
                    self.hostile_dma(sqid, &cmd, past);
                }
                self.hostile_dma(sqid, &cmd, 0);
            }
            _ => {
                self.hostile.mangle = Some(m);
                self.run(sqid, &cmd);
                self.hostile.mangle = None;
            }
        }
    }

    fn park_lost(&mut self, sqid: u16, cmd: Command) {
        self.parked.push(Parked {
            sqid,
            cmd,
            kind: ParkKind::Lost,
        });
    }

    /// A deliberate device write of 64 bytes at `iova`, recorded if blocked.
    fn hostile_dma(&mut self, sqid: u16, cmd: &Command, iova: u64) {
        let what = match self.dma.write(iova, &[0xA5; 64]) {
            Ok(()) => format!("64 bytes written at IOVA {iova:#x} (inside a mapped region)"),
            Err(f) => format!("blocked: {f}"),
        };
        let msg = format!("SQ {sqid} CID {}: deliberate DMA: {what}", cmd.cid());
        self.violation(ViolationKind::HostileDma, msg);
    }

    /// Posts completion `p` to CQ `cqid` as misbehaviour `m` asks.
    pub(super) fn post_mangled(&mut self, cqid: u16, mut p: Pending, m: Misbehaviour) {
        let sq_size = self.sqs[p.sqid as usize].as_ref().map_or(2, |sq| sq.size) as u16;
        match m {
            Misbehaviour::UnknownCid => {
                self.post(
                    cqid,
                    Pending {
                        cid: p.cid.wrapping_add(0x8000),
                        ..p
                    },
                );
                self.post(cqid, p);
            }
            Misbehaviour::DuplicateCompletion => {
                self.post(cqid, p);
                self.post(cqid, p);
            }
            Misbehaviour::StaleCompletion => {
                let old = self
                    .hostile
                    .history
                    .iter()
                    .find(|h| h.sqid == p.sqid && h.cid != p.cid)
                    .copied();
                self.post(cqid, p);
                if let Some(old) = old {
                    self.post(cqid, Pending { sqhd: p.sqhd, ..old });
                }
            }
            Misbehaviour::WrongSqid => {
                let victim = self
                    .parked
                    .iter()
                    .find(|x| x.sqid == p.sqid)
                    .map_or(p.cid, |x| x.cmd.cid());
                self.post(
                    cqid,
                    Pending {
                        cid: victim,
                        sqid: p.sqid.wrapping_add(1),
                        ..p
                    },
                );
                self.post(cqid, p);
            }
            Misbehaviour::SqhdPastRing => {
                p.sqhd = sq_size.wrapping_add(p.sqhd);
                self.post(cqid, p);
            }
            Misbehaviour::SqhdBackwards => {
                p.sqhd = ((p.sqhd as u32 + sq_size as u32 - 2) % sq_size as u32) as u16;
                self.post(cqid, p);
            }
            Misbehaviour::EarlyPhase => {
                if let Some(cq) = self.cqs[cqid as usize].as_mut() {
                    cq.phase = !cq.phase;
                }
                self.post(cqid, p);
            }
            Misbehaviour::ReservedStatus => {
                let sct = 4 + (p.cid % 3) as u8;
                p.status = Status::new(sct, p.cid as u8).with_dnr(true);
                self.post(cqid, p);
            }
            _ => self.post(cqid, p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Harness;
    use super::super::{FaultAction, FaultRule};
    use super::*;
    use crate::hw::Registers;
    use crate::identify::{Cns, IdentifyController, IdentifyNamespace};
    use crate::regs::{Csts, offset};

    fn misbehave(h: &Harness, qid: u16, m: Misbehaviour) {
        h.sim.inject(FaultRule {
            qid: Some(qid),
            times: Some(1),
            ..FaultRule::new(FaultAction::Misbehave(m))
        });
    }

    #[test]
    fn completion_lies() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 8);
        misbehave(&h, 1, Misbehaviour::DuplicateCompletion);
        let cid = io.submit(&h.sim, Command::flush(1));
        let a = io.cq.pop().unwrap();
        let b = io.cq.pop().unwrap();
        assert_eq!((a, a.cid), (b, cid), "the same completion twice");
        io.ring_head(&h.sim);

        misbehave(&h, 1, Misbehaviour::UnknownCid);
        let cid = io.submit(&h.sim, Command::flush(1));
        assert_eq!(io.cq.pop().unwrap().cid, cid.wrapping_add(0x8000));
        assert_eq!(io.cq.pop().unwrap().cid, cid);
        io.ring_head(&h.sim);

        misbehave(&h, 1, Misbehaviour::StaleCompletion);
        let cid = io.submit(&h.sim, Command::flush(1));
        assert_eq!(io.cq.pop().unwrap().cid, cid);
        let stale = io.cq.pop().unwrap();
        assert!(stale.cid < cid, "an earlier command's CID: {}", stale.cid);
        io.ring_head(&h.sim);

        misbehave(&h, 1, Misbehaviour::WrongSqid);
        io.submit(&h.sim, Command::flush(1));
        assert_eq!(io.cq.pop().unwrap().sqid, 2);
        assert_eq!(io.cq.pop().unwrap().sqid, 1);
        io.ring_head(&h.sim);

        misbehave(&h, 1, Misbehaviour::SqhdPastRing);
        io.submit(&h.sim, Command::flush(1));
        assert!(io.cq.pop().unwrap().sqhd >= 8);
        io.ring_head(&h.sim);

        misbehave(&h, 1, Misbehaviour::ReservedStatus);
        io.submit(&h.sim, Command::flush(1));
        let c = io.cq.pop().unwrap();
        assert!(matches!(
            c.status().sct(),
            crate::status::StatusCodeType::Reserved(4..=6)
        ));
        assert!(c.status().dnr());
        io.ring_head(&h.sim);

        misbehave(&h, 1, Misbehaviour::EarlyPhase);
        io.submit(&h.sim, Command::flush(1));
        assert!(io.cq.pop().is_none(), "the entry carries the old phase tag");
        assert!(
            h.sim.protocol_violations().is_empty(),
            "{:?}",
            h.sim.protocol_violations()
        );
        assert!(h.sim.dma_violations().is_empty());
    }

    #[test]
    fn ready_drops_and_comes_back_after_a_reset_unless_it_never_does() {
        let mut h = Harness::new();
        misbehave(&h, 0, Misbehaviour::ReadyDrops);
        h.submit_admin(Command::keep_alive());
        assert!(!Csts(h.sim.read32(offset::CSTS)).rdy());
        assert!(!Csts(h.sim.read32(offset::CSTS)).cfs());
        h.submit_admin(Command::keep_alive());
        assert!(h.poll_admin().is_none());
        assert!(
            h.sim.protocol_violations().is_empty(),
            "the device's fault, not the host's"
        );
        h.reset();
        assert!(Csts(h.sim.read32(offset::CSTS)).rdy());

        misbehave(&h, 0, Misbehaviour::ReadyNeverAgain);
        h.submit_admin(Command::keep_alive());
        h.sim.write32(offset::CC, Harness::cc().with_en(false).0);
        h.sim.write32(offset::CC, Harness::cc().0);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!Csts(h.sim.read32(offset::CSTS)).rdy(), "never again");
    }

    #[test]
    fn removal_mid_command_reads_all_ones() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 8);
        misbehave(&h, 1, Misbehaviour::Removed);
        io.submit(&h.sim, Command::flush(1));
        assert!(io.cq.pop().is_none());
        assert_eq!(h.sim.read32(offset::CSTS), u32::MAX);
    }

    #[test]
    fn identify_lies() {
        let mut h = Harness::new();
        let lie = |h: &mut Harness, l: IdentifyLie, cns: Cns, nsid: u32| {
            h.sim.inject(FaultRule {
                qid: Some(0),
                times: Some(1),
                ..FaultRule::new(FaultAction::Misbehave(Misbehaviour::Identify(l)))
            });
            h.admin_read(Command::identify(cns, nsid, 0), 4096).1
        };
        let c = IdentifyController::parse(&lie(&mut h, IdentifyLie::NnMax, Cns::CONTROLLER, 0)).unwrap();
        assert_eq!(c.nn, u32::MAX);
        let c = IdentifyController::parse(&lie(&mut h, IdentifyLie::Mdts(255), Cns::CONTROLLER, 0)).unwrap();
        assert_eq!(c.mdts, 255);
        let n = IdentifyNamespace::parse(&lie(&mut h, IdentifyLie::FormatIndexOutOfRange, Cns::NAMESPACE, 1)).unwrap();
        assert!(n.current_format().is_none());
        let n = IdentifyNamespace::parse(&lie(&mut h, IdentifyLie::Lbads(40), Cns::NAMESPACE, 1)).unwrap();
        assert_eq!(n.block_size(), Some(1 << 40));
        let n = IdentifyNamespace::parse(&lie(&mut h, IdentifyLie::NszeOverflow, Cns::NAMESPACE, 1)).unwrap();
        assert_eq!(n.capacity_bytes(), None);
        assert!(n.nsze > 0);
        let n = IdentifyNamespace::parse(&lie(&mut h, IdentifyLie::NnMax, Cns::NAMESPACE, 1)).unwrap();
        assert_eq!(n.block_size(), Some(512), "a controller lie leaves namespaces alone");
    }

    #[test]
    fn dma_outside_is_blocked_and_recorded_apart() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 8);
        misbehave(&h, 1, Misbehaviour::DmaOutside);
        let buf = h.dma_buf(4096);
        assert!(io.read_prp(&h.sim, 0, &buf, 8).status().is_success());
        let blocked = h.sim.hostile_dma_blocked();
        assert_eq!(blocked.len(), 2, "{blocked:?}");
        assert!(blocked.iter().all(|m| m.contains("blocked")), "{blocked:?}");
        assert!(h.sim.dma_violations().is_empty());
    }
}
