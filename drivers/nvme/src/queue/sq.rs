//! The submission ring (Base Specification 2.0, §3.3.1, §4.1).

use super::{QueueError, SQ_ENTRY_SIZE, check_entries};
use crate::cmd::Command;
use crate::hw::DmaBuf;

/// A submission queue: a ring of 64-byte commands in DMA memory.
///
/// The host owns the tail and advances it as it posts commands; the controller owns the
/// head and reports it in each completion's SQHD field, which the host feeds back through
/// [`SubmissionQueue::update_head`]. The ring is full when advancing the tail would make it
/// equal the head, so a ring of N entries holds at most N − 1 commands.
pub struct SubmissionQueue {
    mem: DmaBuf,
    entries: u32,
    tail: u32,
    head: u32,
    rung_tail: u32,
}

impl SubmissionQueue {
    /// A ring of `entries` commands (2..=65536) over `mem` (at least `entries × 64` bytes,
    /// 4 KiB-aligned in IOVA space).
    ///
    /// Errors: [`QueueError`] for a bad size, too little memory, or misaligned memory.
    pub fn new(mem: DmaBuf, entries: u32) -> Result<SubmissionQueue, QueueError> {
        check_entries(entries, super::MAX_QUEUE_ENTRIES)?;
        let need = entries as usize * SQ_ENTRY_SIZE;
        if mem.len() < need {
            return Err(QueueError::MemoryTooSmall { need, have: mem.len() });
        }
        if mem.iova() % 4096 != 0 || mem.as_ptr() as usize % 64 != 0 {
            return Err(QueueError::Misaligned {
                iova: mem.iova(),
                align: 4096,
            });
        }
        Ok(SubmissionQueue {
            mem,
            entries,
            tail: 0,
            head: 0,
            rung_tail: 0,
        })
    }

    /// Ring size in entries.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// IOVA of the ring (for Create I/O Submission Queue or ASQ).
    pub fn iova(&self) -> u64 {
        self.mem.iova()
    }

    /// The host's tail index.
    pub fn tail(&self) -> u32 {
        self.tail
    }

    /// The head index last reported by the controller.
    pub fn head(&self) -> u32 {
        self.head
    }

    /// Commands posted and not yet consumed by the controller (as far as the host knows).
    pub fn in_ring(&self) -> u32 {
        (self.tail + self.entries - self.head) % self.entries
    }

    /// How many more commands fit before the ring is full.
    pub fn free_slots(&self) -> u32 {
        self.entries - 1 - self.in_ring()
    }

    /// Whether no more commands fit.
    pub fn is_full(&self) -> bool {
        self.free_slots() == 0
    }

    /// Copies `cmd` into the slot at the tail and advances the tail. The controller does
    /// not see it until the doorbell is written with [`Self::take_doorbell`]'s value.
    ///
    /// Errors: gives the command back if the ring is full.
    pub fn push(&mut self, cmd: &Command) -> Result<(), Command> {
        if self.is_full() {
            return Err(*cmd);
        }
        let slot = self.mem.as_ptr().cast::<Command>();
        // The controller reads only slots between head and the last doorbelled tail; this
        // one is outside that range because the ring is not full.
        // SAFETY: tail < entries, the memory holds `entries` 64-byte aligned commands
        // (checked in new), and per the above the device is not reading this slot.
        unsafe { slot.add(self.tail as usize).write_volatile(*cmd) };
        self.tail = (self.tail + 1) % self.entries;
        Ok(())
    }

    /// The tail value to write to the SQ tail doorbell, if commands were posted since the
    /// last call; `None` if the doorbell is already up to date. Posting N commands and
    /// calling this once rings the doorbell once.
    pub fn take_doorbell(&mut self) -> Option<u32> {
        if self.tail == self.rung_tail {
            return None;
        }
        self.rung_tail = self.tail;
        Some(self.tail)
    }

    /// Records the controller's head pointer from a completion's SQHD.
    ///
    /// Returns `false` and changes nothing if `sqhd` is not a position the head can move
    /// to (outside the ring, or past the tail) — a controller bug the caller should treat
    /// as fatal.
    pub fn update_head(&mut self, sqhd: u16) -> bool {
        let sqhd = sqhd as u32;
        if sqhd >= self.entries {
            return false;
        }
        // The head may only move forward from its current position up to the tail.
        let advance = (sqhd + self.entries - self.head) % self.entries;
        if advance > self.in_ring() {
            return false;
        }
        self.head = sqhd;
        true
    }

    /// Bounds the commands the ring may still hold unfetched to `outstanding`, moving the
    /// head forward if the host's view says more: the controller fetches commands in order
    /// and fetches each before completing it, so only the last `outstanding` posted
    /// commands (those not completed yet) can be unfetched. This keeps the ring usable when
    /// SQHD is wrong (past the ring, or going backwards) and [`Self::update_head`] refuses
    /// it; with `outstanding` = 0 every posted command has been fetched.
    pub fn limit_in_ring(&mut self, outstanding: u32) {
        if self.in_ring() > outstanding {
            self.head = (self.tail + self.entries - outstanding.min(self.entries - 1)) % self.entries;
        }
    }

    /// Resets the ring to empty (after a controller reset, when the controller's view of
    /// the queue is gone). Stale entries stay in memory and are overwritten before reuse.
    pub fn reset(&mut self) {
        self.tail = 0;
        self.head = 0;
        self.rung_tail = 0;
    }
}

impl std::fmt::Debug for SubmissionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmissionQueue")
            .field("iova", &format_args!("{:#x}", self.iova()))
            .field("entries", &self.entries)
            .field("head", &self.head)
            .field("tail", &self.tail)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::HeapRegion;
    use std::sync::Arc;

    fn sq(entries: u32) -> SubmissionQueue {
        let mem = DmaBuf::from_region(Arc::new(HeapRegion::new(entries as usize * 64, 4096, 0x1000).unwrap()));
        SubmissionQueue::new(mem, entries).unwrap()
    }

    fn slot(q: &SubmissionQueue, i: usize) -> Command {
        // SAFETY: test-only read of a slot inside the ring; no device is involved.
        unsafe { q.mem.as_ptr().cast::<Command>().add(i).read() }
    }

    #[test]
    fn holds_entries_minus_one() {
        let mut q = sq(4);
        for i in 0..3 {
            q.push(&Command::read(1, i, 1)).unwrap();
        }
        assert!(q.is_full());
        assert_eq!(q.push(&Command::flush(1)), Err(Command::flush(1)));
        assert_eq!(slot(&q, 2).slba(), 2);
    }

    #[test]
    fn doorbell_batches_and_rings_once() {
        let mut q = sq(8);
        assert_eq!(q.take_doorbell(), None);
        for _ in 0..5 {
            q.push(&Command::flush(1)).unwrap();
        }
        assert_eq!(q.take_doorbell(), Some(5));
        assert_eq!(q.take_doorbell(), None);
    }

    #[test]
    fn head_from_sqhd_frees_slots_and_wraps() {
        let mut q = sq(4);
        for _ in 0..3 {
            q.push(&Command::flush(1)).unwrap();
        }
        assert!(q.update_head(2));
        assert_eq!(q.free_slots(), 2);
        q.push(&Command::flush(1)).unwrap(); // slot 3
        q.push(&Command::flush(1)).unwrap(); // wraps to slot 0
        assert_eq!(q.tail(), 1);
        assert!(q.is_full());
        assert!(q.update_head(0)); // crosses the end of the ring
        assert_eq!(q.in_ring(), 1);
    }

    #[test]
    fn rejects_impossible_heads() {
        let mut q = sq(8);
        q.push(&Command::flush(1)).unwrap();
        q.push(&Command::flush(1)).unwrap();
        assert!(!q.update_head(8), "outside the ring");
        assert!(!q.update_head(3), "past the tail");
        assert!(q.update_head(2));
        assert!(q.update_head(2), "a repeated SQHD is fine");
    }

    #[test]
    fn limit_in_ring_trusts_completions_over_a_stuck_head() {
        let mut q = sq(4);
        for _ in 0..3 {
            q.push(&Command::flush(1)).unwrap();
        }
        assert!(!q.update_head(9), "a bogus SQHD is refused");
        assert!(q.is_full());
        q.limit_in_ring(1);
        assert_eq!(
            (q.in_ring(), q.head()),
            (1, 2),
            "only the last command may be unfetched"
        );
        q.limit_in_ring(2);
        assert_eq!(q.in_ring(), 1, "never moves the head backwards");
        q.limit_in_ring(0);
        assert_eq!(q.head(), q.tail());
        q.push(&Command::flush(1)).unwrap();
        q.push(&Command::flush(1)).unwrap(); // wraps
        q.limit_in_ring(1);
        assert_eq!((q.head(), q.tail()), (0, 1));
    }

    #[test]
    fn checks_size_memory_and_alignment() {
        let small = DmaBuf::from_region(Arc::new(HeapRegion::new(64, 4096, 0).unwrap()));
        assert!(matches!(
            SubmissionQueue::new(small, 2),
            Err(QueueError::MemoryTooSmall { .. })
        ));
        let one = DmaBuf::from_region(Arc::new(HeapRegion::new(4096, 4096, 0).unwrap()));
        assert!(matches!(SubmissionQueue::new(one, 1), Err(QueueError::BadSize { .. })));
        let mut odd = DmaBuf::from_region(Arc::new(HeapRegion::new(8192, 4096, 0).unwrap()));
        odd.set_window(64, 4096).unwrap();
        assert!(matches!(
            SubmissionQueue::new(odd, 64),
            Err(QueueError::Misaligned { .. })
        ));
    }
}
