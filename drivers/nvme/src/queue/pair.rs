//! A queue pair's rings and doorbells: the steps the admin queue and every I/O queue take
//! alike (Base Specification 2.0, §3.3).

use super::{CompletionQueue, SubmissionQueue};
use crate::cmd::Command;
use crate::completion::Completion;

/// A submission queue, the completion queue its commands complete on, and the offsets of
/// their doorbell registers (SQ y tail and CQ y head, §3.1.2.1 with CAP.DSTRD).
///
/// Its four steps are the whole protocol with the controller:
///
/// - **post** ([`Self::post`]): a command into the SQ slot at the tail, not yet seen;
/// - **ring** ([`Self::ring`]): once for everything posted since the last ring, a write
///   barrier (the commands reach memory first), then the SQ tail doorbell;
/// - **reap** ([`Self::reap`]): completion entries while their phase tag says they are
///   new, each checked for its SQ ID and its SQ head (SQHD) recorded, then the SQ's
///   in-ring count bounded by the commands still outstanding; and **release**
///   ([`Self::release`]): once for all the entries reaped, a write barrier and the CQ head
///   doorbell.
///
/// Where a doorbell value is written is the caller's choice, given as a closure of
/// (register offset, value): straight to the register (the admin queue), or through a
/// shadow doorbell that writes the register only when the controller's EventIdx asks
/// (I/O queues with Doorbell Buffer Config).
pub struct QueuePair {
    sq: SubmissionQueue,
    cq: CompletionQueue,
    qid: u16,
    sq_db: u32,
    cq_db: u32,
    /// A made-up entry, an unknown CID or an impossible SQHD was reported (at warn level,
    /// once; later ones at debug level, so a broken controller cannot flood the log at
    /// full IOPS).
    warned: bool,
}

impl QueuePair {
    /// Queue pair `qid` over `sq` and `cq`, whose doorbells are the registers at `sq_db`
    /// and `cq_db` (bytes into BAR0: [`crate::regs::Cap::sq_tail_doorbell`] and
    /// [`crate::regs::Cap::cq_head_doorbell`]).
    pub fn new(sq: SubmissionQueue, cq: CompletionQueue, qid: u16, sq_db: u32, cq_db: u32) -> QueuePair {
        QueuePair {
            sq,
            cq,
            qid,
            sq_db,
            cq_db,
            warned: false,
        }
    }

    /// Logs a controller fault: the first at warn level, the rest at debug level.
    #[cold]
    fn fault(&mut self, what: &str, sqid: u16, cid: u16, sqhd: u16) {
        if std::mem::replace(&mut self.warned, true) {
            tracing::debug!(qid = self.qid, sqid, cid, sqhd, "{what}");
        } else {
            tracing::warn!(qid = self.qid, sqid, cid, sqhd, "{what} (further ones at debug level)");
        }
    }

    /// The queue ID (0 for the admin queue).
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// SQ ring size in entries.
    pub fn entries(&self) -> u32 {
        self.sq.entries()
    }

    /// IOVA of the SQ ring.
    pub fn sq_iova(&self) -> u64 {
        self.sq.iova()
    }

    /// IOVA of the CQ ring.
    pub fn cq_iova(&self) -> u64 {
        self.cq.iova()
    }

    /// Whether the SQ has no free slot.
    pub fn is_full(&self) -> bool {
        self.sq.is_full()
    }

    /// Empties both rings (head, tail and phase back to their reset values). Only once
    /// the controller has forgotten the queues: after CC.EN = 0 and CSTS.RDY = 0, or
    /// before it recreates them with the same memory.
    pub fn reset(&mut self) {
        self.sq.reset();
        self.cq.reset();
    }

    /// Posts `cmd` (its CID and data pointer already set) at the SQ tail. The controller
    /// does not see it until [`Self::ring`].
    ///
    /// Errors: gives the command back when the SQ is full.
    #[inline]
    pub fn post(&mut self, cmd: &Command) -> Result<(), Command> {
        self.sq.push(cmd)
    }

    /// If commands were posted since the last ring: a write barrier, then `write(SQ tail
    /// doorbell offset, new tail)`. Returns whether it wrote.
    #[inline]
    pub fn ring(&mut self, write: impl FnOnce(u32, u32)) -> bool {
        doorbell(self.sq.take_doorbell(), self.sq_db, write)
    }

    /// Consumes new completion entries until `take` has accepted `max` of them or none is
    /// left, calling `take` with each entry of this pair's SQ; it must return `true` only
    /// for an entry that completed one of the `outstanding` commands, which is then no
    /// longer outstanding; an entry it refuses (an unknown, stale or duplicate CID) is
    /// reported here as a controller fault. Entries naming another SQ are made up (a CQ
    /// here serves one SQ), and their CID may be that of a command the controller has not
    /// run yet: they are ignored. Each entry's SQHD moves the SQ head; then, whatever SQHD said, the
    /// commands that completed were fetched, so the SQ's in-ring count is bounded by the
    /// commands still outstanding (a controller whose SQHD is stuck or bogus cannot fill
    /// the ring with commands it finished). Returns how many `take` accepted. The
    /// consumed entries are the controller's again after [`Self::release`].
    #[inline]
    pub fn reap(&mut self, max: usize, outstanding: usize, mut take: impl FnMut(Completion) -> bool) -> usize {
        let mut n = 0;
        while n < max {
            let Some(c) = self.cq.pop() else { break };
            if c.sqid != self.qid {
                self.fault(
                    "controller posted a completion for another submission queue; ignored",
                    c.sqid,
                    c.cid,
                    c.sqhd,
                );
                continue;
            }
            if !self.sq.update_head(c.sqhd) {
                self.fault("controller reported an impossible SQ head", c.sqid, c.cid, c.sqhd);
            }
            if take(c) {
                n += 1;
            } else {
                self.fault(
                    "completion for a command that is not outstanding (unknown, stale or duplicate CID); ignored",
                    c.sqid,
                    c.cid,
                    c.sqhd,
                );
            }
        }
        debug_assert!(
            n <= outstanding,
            "{n} completions accepted of {outstanding} outstanding"
        );
        self.sq.limit_in_ring(outstanding.saturating_sub(n) as u32);
        n
    }

    /// If completion entries were consumed since the last release: a write barrier, then
    /// `write(CQ head doorbell offset, new head)`, which gives their slots back to the
    /// controller. Returns whether it wrote. Not while the controller does not have the
    /// queue (during a reset): the write would name a queue it does not know.
    #[inline]
    pub fn release(&mut self, write: impl FnOnce(u32, u32)) -> bool {
        doorbell(self.cq.take_doorbell(), self.cq_db, write)
    }

    /// The two rings, for a caller that keeps their memory past the pair (a queue the
    /// controller could not be made to forget).
    pub fn into_rings(self) -> (SubmissionQueue, CompletionQueue) {
        (self.sq, self.cq)
    }
}

/// A doorbell write, if `value` (a new SQ tail or CQ head) is due: a write barrier first
/// — the SQ entries must be in memory before the controller hears of them, and the CQ
/// entries read before their slots are given back — then `write(reg, value)`. Returns
/// whether it wrote.
#[inline]
fn doorbell(value: Option<u32>, reg: u32, write: impl FnOnce(u32, u32)) -> bool {
    let Some(value) = value else {
        return false;
    };
    crate::barrier::dma_wmb();
    write(reg, value);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::{DmaBuf, HeapRegion};
    use crate::status::Status;
    use std::sync::Arc;

    fn mem() -> DmaBuf {
        DmaBuf::from_region(Arc::new(HeapRegion::new(4096, 4096, 0x10_0000).unwrap()))
    }

    #[test]
    fn post_ring_reap_release() {
        let cq_mem = mem();
        let ring = cq_mem.as_ptr() as *mut Completion;
        let mut qp = QueuePair::new(
            SubmissionQueue::new(mem(), 4).unwrap(),
            CompletionQueue::new(cq_mem, 4).unwrap(),
            3,
            0x1018,
            0x101c,
        );
        // Plays the controller: a completion into CQ slot `i` with phase tag `phase` (1 on
        // the first pass through the ring, 0 on the second).
        let complete = |i: usize, cid: u16, sqid: u16, sqhd: u16, phase: bool| {
            debug_assert!(i < 4);
            let c = Completion::new(cid, sqid, sqhd, Status::SUCCESS, phase, 0);
            // SAFETY: the ring holds 4 entries and i < 4; its memory lives in `qp`, which
            // outlives this closure, and nothing else writes it meanwhile.
            unsafe { ring.add(i).write_volatile(c) };
        };
        let mut writes = Vec::new();
        assert!(!qp.ring(|r, v| writes.push((r, v))), "nothing posted");
        for cid in 0..3 {
            let mut cmd = Command::flush(1);
            cmd.set_cid(cid);
            qp.post(&cmd).unwrap();
        }
        assert!(qp.post(&Command::flush(1)).is_err(), "4 entries hold 3 commands");
        assert!(qp.ring(|r, v| writes.push((r, v))));
        assert_eq!(writes, [(0x1018, 3)], "one doorbell for the batch");
        // Two completions of SQ 3, and a made-up one naming SQ 1 between them whose SQHD
        // (3) would free a slot if it were believed.
        complete(0, 0, 3, 1, true);
        complete(1, 7, 1, 3, true);
        complete(2, 1, 3, 2, true);
        let mut seen = Vec::new();
        let taken = qp.reap(usize::MAX, 3, |c| {
            seen.push(c.cid);
            true
        });
        assert_eq!((taken, seen), (2, vec![0, 1]), "the other SQ's entry is ignored");
        assert!(qp.release(|r, v| writes.push((r, v))));
        assert_eq!(writes[1], (0x101c, 3), "the CQ head moves past all three entries");
        assert!(!qp.release(|r, v| writes.push((r, v))), "nothing consumed since");
        // SQHD 2: one command is still in the ring, so two slots are free.
        for cid in 3..5 {
            let mut cmd = Command::flush(1);
            cmd.set_cid(cid);
            qp.post(&cmd).unwrap();
        }
        assert!(qp.post(&Command::flush(1)).is_err(), "the made-up SQHD freed nothing");
        // `max` counts what `take` accepts: an entry it refuses is consumed, not counted.
        complete(3, 2, 3, 2, true);
        complete(0, 3, 3, 2, false);
        let mut calls = 0;
        let taken = qp.reap(1, 3, |_| {
            calls += 1;
            calls > 1
        });
        assert_eq!((taken, calls), (1, 2));
        assert!(qp.release(|r, v| writes.push((r, v))));
        assert_eq!(writes[2], (0x101c, 1), "the head wrapped past slot 3 to 1");
        // A controller whose SQHD is stuck at 2 while every command completed: the ring is
        // bounded by what is outstanding (none), so all three slots are free again.
        complete(1, 4, 3, 2, false);
        assert_eq!(qp.reap(usize::MAX, 1, |_| true), 1);
        for cid in 5..8 {
            let mut cmd = Command::flush(1);
            cmd.set_cid(cid);
            qp.post(&cmd).unwrap();
        }
    }
}
