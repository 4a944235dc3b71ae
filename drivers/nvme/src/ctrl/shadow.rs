//! Shadow doorbells: Doorbell Buffer Config (NVMe Base Specification 2.0, §5.8; OACS bit
//! 8), as Linux's `nvme_dbbuf_*` in `drivers/nvme/host/pci.c` uses it.
//!
//! The host keeps two memory pages the controller also reads and writes: the **shadow
//! doorbell** page, where it writes every SQ tail and CQ head it would otherwise write to
//! the doorbell registers, and the **EventIdx** page, where the controller writes, per
//! queue, the value at which it wants an MMIO doorbell write again. Both use the layout
//! of the doorbell registers: the SQ `y` tail at word `2y × (4 << DSTRD) / 4`, the CQ `y`
//! head one stride after it. The MMIO doorbell is written only when the new value passes
//! the EventIdx ([`need_event`]): a controller that is still working through a queue
//! reads the shadow value itself and is not interrupted by an MMIO write, which under
//! emulation is an exit to the device model.
//!
//! Only I/O queues use them, as in Linux: the admin queue always rings its registers.
//!
//! The pages are validated before the command is sent (QEMU 7.2 accepts IOVA 0 and then
//! DMAs there), zeroed before each Doorbell Buffer Config (at init and after
//! every reset, when the controller has forgotten them), and each queue's four words are
//! zeroed before its queues are created (a controller reads the shadow SQ tail of a new
//! queue; a stale one from an earlier queue with that QID would make it fetch entries that
//! were never written).
//!
//! Every access to a word is an atomic one (relaxed; the DMA barriers order them against
//! the device): a queue pair's update can race a reset's [`ShadowDoorbells::clear`] on
//! another thread. The late update lands on a queue the controller no longer has, and the
//! pair zeroes its words ([`ShadowDoorbells::reset_queue`]) before creating its queues
//! again.

use crate::cmd::Command;
use crate::ctrl::Error;
use crate::hw::{DmaAllocator, DmaBuf};
use crate::regs::Cap;
use std::sync::atomic::{AtomicU32, Ordering};

/// The two pages, and the doorbell stride in 32-bit words.
pub(crate) struct ShadowDoorbells {
    doorbells: DmaBuf,
    eventidx: DmaBuf,
    stride_words: usize,
}

impl ShadowDoorbells {
    /// Two zeroed pages of `page_size` bytes (CC.MPS) for queues up to `max_qid`.
    ///
    /// Errors: [`Error::Dma`]; [`Error::Unsupported`] when the doorbells of `max_qid` do
    /// not fit in one page (a large DSTRD) or a page's IOVA is 0 or not page-aligned
    /// (nothing is then sent to the controller).
    pub(crate) fn allocate(
        dma: &dyn DmaAllocator,
        page_size: usize,
        cap: Cap,
        max_qid: u16,
    ) -> Result<ShadowDoorbells, Error> {
        Self::from_pages(
            dma.allocate(page_size)?,
            dma.allocate(page_size)?,
            page_size,
            cap,
            max_qid,
        )
    }

    /// [`Self::allocate`] with the two pages given.
    ///
    /// Errors: as [`Self::allocate`], but for [`Error::Dma`].
    fn from_pages(
        doorbells: DmaBuf,
        eventidx: DmaBuf,
        page_size: usize,
        cap: Cap,
        max_qid: u16,
    ) -> Result<ShadowDoorbells, Error> {
        let stride_words = (cap.cq_head_doorbell(0) - cap.sq_tail_doorbell(0)) as usize / 4;
        let words = 2 * (max_qid as usize + 1) * stride_words;
        if words * 4 > page_size {
            return Err(Error::Unsupported(format!(
                "shadow doorbells for {max_qid} I/O queues need {} bytes, more than a {page_size}-byte page",
                words * 4
            )));
        }
        for page in [&doorbells, &eventidx] {
            let aligned = page.as_ptr() as usize % page_size == 0 && page.iova() % page_size as u64 == 0;
            if page.iova() == 0 || !aligned || page.len() < page_size {
                return Err(Error::Unsupported(format!(
                    "shadow doorbell page at IOVA {:#x} ({} bytes): not a nonzero, page-aligned {page_size}-byte page",
                    page.iova(),
                    page.len()
                )));
            }
        }
        let s = ShadowDoorbells {
            doorbells,
            eventidx,
            stride_words,
        };
        s.clear();
        Ok(s)
    }

    /// Word `w` of `page` (in bounds: callers stay within the page, see `from_pages`).
    fn word(page: &DmaBuf, w: usize) -> &AtomicU32 {
        assert!(w < page.len() / 4, "shadow word {w} outside the page");
        let ptr = page.as_ptr().wrapping_add(4 * w) as *mut u32;
        // SAFETY: `ptr` is in the page (asserted), 4-byte aligned (page-aligned page), borrowed
        // with the page; this process touches the words only through this atomic view.
        unsafe { AtomicU32::from_ptr(ptr) }
    }

    /// Doorbell Buffer Config naming both pages.
    pub(crate) fn command(&self) -> Command {
        Command::doorbell_buffer_config(self.doorbells.iova(), self.eventidx.iova())
    }

    /// Zeroes both pages. Only while the controller does not use them: before Doorbell
    /// Buffer Config, with the controller disabled or before any I/O queue exists.
    pub(crate) fn clear(&self) {
        for page in [&self.doorbells, &self.eventidx] {
            for w in 0..page.len() / 4 {
                Self::word(page, w).store(0, Ordering::Relaxed);
            }
        }
    }

    /// Word index of SQ `qid`'s tail (CQ head: one stride further).
    fn sq_word(&self, qid: u16) -> usize {
        2 * qid as usize * self.stride_words
    }

    /// Zeroes the four words of queue pair `qid`, before its queues are created.
    pub(crate) fn reset_queue(&self, qid: u16) {
        let sq = self.sq_word(qid);
        for page in [&self.doorbells, &self.eventidx] {
            for w in [sq, sq + self.stride_words] {
                Self::word(page, w).store(0, Ordering::Relaxed);
            }
        }
    }

    /// Writes SQ `qid`'s new tail to its shadow doorbell, after the caller's `dma_wmb`;
    /// whether the MMIO doorbell must be written too.
    pub(crate) fn sq_tail(&self, qid: u16, tail: u16) -> bool {
        self.update(self.sq_word(qid), tail)
    }

    /// Writes CQ `qid`'s new head to its shadow doorbell; whether the MMIO doorbell must
    /// be written too.
    pub(crate) fn cq_head(&self, qid: u16, head: u16) -> bool {
        self.update(self.sq_word(qid) + self.stride_words, head)
    }

    fn update(&self, word: usize, value: u16) -> bool {
        let db = Self::word(&self.doorbells, word);
        let old = u32::from_le(db.load(Ordering::Relaxed)) as u16;
        // The caller ordered the entries (or the consumed completions) before this store
        // (`dma_wmb`, as before a register write).
        db.store(u32::from(value).to_le(), Ordering::Relaxed);
        // The shadow value before the EventIdx is read: the controller orders its EventIdx
        // write before its shadow read the same way.
        crate::barrier::dma_mb();
        let event = u32::from_le(Self::word(&self.eventidx, word).load(Ordering::Relaxed)) as u16;
        need_event(event, value, old)
    }
}

/// Whether moving a doorbell from `old` to `new` passes `event` (the controller asked to
/// hear of any value after `event`): Linux's `nvme_dbbuf_need_event`, in 16-bit wrapping
/// arithmetic.
pub(crate) fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::HeapRegion;
    use std::sync::Arc;

    fn page(iova: u64) -> DmaBuf {
        DmaBuf::from_region(Arc::new(HeapRegion::new(4096, 4096, iova).unwrap()))
    }

    /// CAP with DSTRD 0 (4-byte doorbells).
    const CAP: Cap = Cap(0);

    /// What the controller wrote to queue `qid`'s SQ EventIdx.
    fn set_sq_event(s: &ShadowDoorbells, qid: u16, v: u16) {
        ShadowDoorbells::word(&s.eventidx, s.sq_word(qid)).store(u32::from(v), Ordering::Relaxed);
    }

    fn sq_shadow(s: &ShadowDoorbells, qid: u16) -> u32 {
        ShadowDoorbells::word(&s.doorbells, s.sq_word(qid)).load(Ordering::Relaxed)
    }

    #[test]
    fn updates_go_to_the_shadow_page_and_to_the_register_when_the_event_index_asks() {
        let s = ShadowDoorbells::from_pages(page(0x1000), page(0x2000), 4096, CAP, 4).unwrap();
        // A new queue: shadow 0, EventIdx 0: the first update rings the register.
        assert!(s.sq_tail(1, 8));
        assert_eq!(sq_shadow(&s, 1), 8);
        // The controller is working and wants to hear only past 20.
        set_sq_event(&s, 1, 20);
        assert!(!s.sq_tail(1, 12));
        assert_eq!(sq_shadow(&s, 1), 12, "the controller reads the shadow value itself");
        // It caught up to 12: the next update passes it.
        set_sq_event(&s, 1, 12);
        assert!(s.sq_tail(1, 13));
        // CQ heads have their own words, one stride after the SQ tail.
        assert!(s.cq_head(1, 3));
        assert_eq!(sq_shadow(&s, 1), 13);
    }

    #[test]
    fn a_queues_words_are_zeroed_before_it_is_created_again_and_only_its() {
        let s = ShadowDoorbells::from_pages(page(0x1000), page(0x2000), 4096, CAP, 4).unwrap();
        s.sq_tail(1, 64);
        s.sq_tail(2, 7);
        set_sq_event(&s, 1, 64);
        s.reset_queue(1);
        assert_eq!(sq_shadow(&s, 1), 0);
        assert_eq!(sq_shadow(&s, 2), 7, "another queue's words are kept");
        // The new queue's first update: from 0, EventIdx 0: the register is written.
        assert!(s.sq_tail(1, 1));
    }

    #[test]
    fn pages_the_controller_must_not_get_are_refused() {
        let refused = |r: Result<ShadowDoorbells, Error>| matches!(r, Err(Error::Unsupported(_)));
        // IOVA 0: QEMU 7.2 would take it and DMA there.
        assert!(refused(ShadowDoorbells::from_pages(
            page(0),
            page(0x2000),
            4096,
            CAP,
            4
        )));
        assert!(refused(ShadowDoorbells::from_pages(
            page(0x1000),
            page(0x2800),
            4096,
            CAP,
            4
        )));
        // 512 queue pairs of 4-byte doorbells need 4104 bytes.
        assert!(refused(ShadowDoorbells::from_pages(
            page(0x1000),
            page(0x2000),
            4096,
            CAP,
            512
        )));
        assert!(ShadowDoorbells::from_pages(page(0x1000), page(0x2000), 4096, CAP, 511).is_ok());
    }

    #[test]
    fn an_mmio_write_is_needed_only_when_the_new_value_passes_the_event_index() {
        // The controller caught up at 10 and asked to hear of anything after it.
        assert!(need_event(10, 11, 10));
        assert!(need_event(10, 15, 10));
        // It asked at 12 while the host moved 10 -> 15: 13 passes it.
        assert!(need_event(12, 15, 10));
        // Still working (it will read the shadow value): 10 -> 15 with EventIdx at 20.
        assert!(!need_event(20, 15, 10));
        // An EventIdx the host already passed before this update.
        assert!(!need_event(5, 15, 10));
        // Nothing moved.
        assert!(!need_event(10, 10, 10));
        // Across the 16-bit wrap.
        assert!(need_event(0xFFFF, 2, 0xFFFE));
        assert!(!need_event(3, 2, 0xFFFE));
    }
}
