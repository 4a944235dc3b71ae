//! The completion ring with its phase tag (Base Specification 2.0, §3.3.1, §4.6).

use super::{CQ_ENTRY_SIZE, QueueError, check_entries};
use crate::completion::Completion;
use crate::hw::DmaBuf;
use volatile_register::RO;

/// A completion queue entry as the device writes it: four dwords read one at a time with
/// volatile loads, so the phase/status dword can be read before the rest.
#[repr(C)]
struct CqeCells {
    dw0: RO<u32>,
    dw1: RO<u32>,
    dw2: RO<u32>,
    dw3: RO<u32>,
}

const _: () = assert!(std::mem::size_of::<CqeCells>() == CQ_ENTRY_SIZE);

/// A completion queue: a ring of 16-byte entries the controller writes.
///
/// The host owns the head. An entry at the head is new when its phase tag equals the
/// host's expected phase, which starts at 1 and inverts each time the head wraps
/// (§4.6, "Phase Tag"). The controller learns the head from the CQ head doorbell.
pub struct CompletionQueue {
    mem: DmaBuf,
    entries: u32,
    head: u32,
    phase: bool,
    rung_head: u32,
}

impl CompletionQueue {
    /// A ring of `entries` completions (2..=65536) over `mem` (at least `entries × 16`
    /// bytes, 4 KiB-aligned, zeroed so no entry starts with phase 1).
    ///
    /// Errors: [`QueueError`] for a bad size, too little memory, or misaligned memory.
    pub fn new(mut mem: DmaBuf, entries: u32) -> Result<CompletionQueue, QueueError> {
        check_entries(entries, super::MAX_QUEUE_ENTRIES)?;
        let need = entries as usize * CQ_ENTRY_SIZE;
        if mem.len() < need {
            return Err(QueueError::MemoryTooSmall { need, have: mem.len() });
        }
        if mem.iova() % 4096 != 0 || mem.as_ptr() as usize % 16 != 0 {
            return Err(QueueError::Misaligned {
                iova: mem.iova(),
                align: 4096,
            });
        }
        mem.as_mut_slice()[..need].fill(0);
        Ok(CompletionQueue {
            mem,
            entries,
            head: 0,
            phase: true,
            rung_head: 0,
        })
    }

    /// Ring size in entries.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// IOVA of the ring (for Create I/O Completion Queue or ACQ).
    pub fn iova(&self) -> u64 {
        self.mem.iova()
    }

    /// The host's head index.
    pub fn head(&self) -> u32 {
        self.head
    }

    /// The phase tag the next new entry will carry.
    pub fn phase(&self) -> bool {
        self.phase
    }

    fn cell(&self, index: u32) -> &CqeCells {
        let base = self.mem.as_ptr().cast::<CqeCells>();
        // The cells are UnsafeCell-based volatile registers read with single volatile
        // loads, so sharing memory the device writes concurrently is sound.
        // SAFETY: index < entries, and the memory holds `entries` aligned 16-byte entries
        // (checked in new).
        unsafe { &*base.add(index as usize) }
    }

    /// The entry at the head if the controller has posted it, without consuming it.
    pub fn peek(&self) -> Option<Completion> {
        let cell = self.cell(self.head);
        let dw3 = cell.dw3.read();
        if (dw3 >> 16) & 1 != self.phase as u32 {
            return None;
        }
        // The phase tag says the entry is complete; read the rest only after it, so we
        // never combine a new phase with stale contents.
        crate::barrier::dma_rmb();
        let dw2 = cell.dw2.read();
        Some(Completion {
            dw0: cell.dw0.read(),
            dw1: cell.dw1.read(),
            sqhd: dw2 as u16,
            sqid: (dw2 >> 16) as u16,
            cid: dw3 as u16,
            status: (dw3 >> 16) as u16,
        })
    }

    /// Consumes and returns the entry at the head if the controller has posted it,
    /// advancing the head (and inverting the expected phase when it wraps). The
    /// controller may reuse the slot only after the head doorbell is written with
    /// [`Self::take_doorbell`]'s value.
    pub fn pop(&mut self) -> Option<Completion> {
        let c = self.peek()?;
        self.head += 1;
        if self.head == self.entries {
            self.head = 0;
            self.phase = !self.phase;
        }
        Some(c)
    }

    /// The head value to write to the CQ head doorbell if entries were consumed since
    /// the last call, or `None`. Consuming a batch and calling this once rings once.
    pub fn take_doorbell(&mut self) -> Option<u32> {
        if self.head == self.rung_head {
            return None;
        }
        self.rung_head = self.head;
        Some(self.head)
    }

    /// Resets the ring to empty with phase 1 and zeroes its memory (after a controller
    /// reset, before the queue is created again).
    pub fn reset(&mut self) {
        let need = self.entries as usize * CQ_ENTRY_SIZE;
        self.mem.as_mut_slice()[..need].fill(0);
        self.head = 0;
        self.rung_head = 0;
        self.phase = true;
    }
}

impl std::fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("iova", &format_args!("{:#x}", self.iova()))
            .field("entries", &self.entries)
            .field("head", &self.head)
            .field("phase", &self.phase)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::HeapRegion;
    use crate::status::Status;
    use std::sync::Arc;

    fn cq(entries: u32) -> CompletionQueue {
        let mem = DmaBuf::from_region(Arc::new(HeapRegion::new(4096, 4096, 0x2000).unwrap()));
        CompletionQueue::new(mem, entries).unwrap()
    }

    /// Plays the controller: writes a completion into slot `i`.
    fn post(q: &CompletionQueue, i: u32, c: Completion) {
        // SAFETY: test-only write inside the ring, standing in for the device's DMA.
        unsafe { q.mem.as_ptr().cast::<Completion>().add(i as usize).write_volatile(c) };
    }

    #[test]
    fn empty_until_phase_matches() {
        let mut q = cq(4);
        assert!(q.pop().is_none());
        post(&q, 0, Completion::new(7, 1, 1, Status::SUCCESS, false, 0));
        assert!(q.pop().is_none(), "phase 0 is stale on the first pass");
        post(&q, 0, Completion::new(7, 1, 1, Status::SUCCESS, true, 42));
        let c = q.pop().unwrap();
        assert_eq!((c.cid, c.sqhd, c.sqid, c.dw0), (7, 1, 1, 42));
        assert!(q.pop().is_none());
    }

    #[test]
    fn phase_inverts_on_wrap() {
        let mut q = cq(2);
        post(&q, 0, Completion::new(1, 1, 0, Status::SUCCESS, true, 0));
        post(&q, 1, Completion::new(2, 1, 0, Status::SUCCESS, true, 0));
        assert_eq!(q.pop().unwrap().cid, 1);
        assert_eq!(q.pop().unwrap().cid, 2);
        assert!(!q.phase());
        assert!(q.pop().is_none(), "old entries carry phase 1 and are not new on pass 2");
        post(&q, 0, Completion::new(3, 1, 0, Status::INVALID_FIELD, false, 0));
        let c = q.pop().unwrap();
        assert_eq!((c.cid, c.status()), (3, Status::INVALID_FIELD));
    }

    #[test]
    fn doorbell_batches() {
        let mut q = cq(8);
        for i in 0..3 {
            post(&q, i, Completion::new(i as u16, 1, 0, Status::SUCCESS, true, 0));
        }
        assert_eq!(q.take_doorbell(), None);
        while q.pop().is_some() {}
        assert_eq!(q.take_doorbell(), Some(3));
        assert_eq!(q.take_doorbell(), None);
    }

    #[test]
    fn reset_clears_stale_entries() {
        let mut q = cq(2);
        post(&q, 0, Completion::new(1, 1, 0, Status::SUCCESS, true, 0));
        q.reset();
        assert!(q.pop().is_none());
        assert!(q.phase());
    }
}
