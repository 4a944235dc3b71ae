//! The table of registered (fixed) buffers of one ring: which memory sits in which slot
//! of the kernel's sparse buffer table. Both io_uring backends use it: the block backend
//! ([`super::UringQueue`]) registers whole DMA regions ([`Span::Region`]), NVMe
//! passthrough ([`crate::UringCmdQueue`]) each buffer's own pages ([`Span::Window`]).

use io_uring::Submitter;
use ironvme_nvme::hw::DmaBuf;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Slots in each block-I/O ring's registered-buffer table: how many distinct memory
/// regions one queue can use as fixed buffers. Allocate a few large regions and split
/// them ([`DmaBuf::into_chunks`]) rather than many small ones.
pub const FIXED_BUFFER_SLOTS: usize = 64;

/// Largest buffer the kernel registers, in bytes (`SZ_1G` in `io_uring/rsrc.c`).
const MAX_REGISTERED_BYTES: usize = 1 << 30;

/// Page size of registered buffers, in bytes.
const PAGE: usize = 4096;

/// What one registration covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Span {
    /// The buffer's whole DMA region ([`DmaBuf::region_span`]): one registration serves
    /// every buffer cut from the region. For io_uring reads and writes, whose cost does
    /// not depend on the registration's size.
    Region,
    /// The pages of the buffer itself, registered the first time a buffer starting on
    /// that page is used; a buffer is served by a registration only if it lies inside it
    /// and starts at most `max_pages` pages before the registration's end. For NVMe
    /// passthrough: Linux 6.1's `blk_rq_map_user_bvec` counts every page from the
    /// command's first page to the end of the registered buffer against the queue's
    /// `max_segments` and walks them per command, so a registration much larger than the
    /// transfer costs on every command (measured: 4 KiB reads at QD128 from one 512 KiB
    /// registration ran at about 0.6× the IOPS of plain addresses).
    Window {
        /// The queue's `max_segments`.
        max_pages: usize,
    },
}

/// Hashes the addresses the table is keyed by with one multiply (Fibonacci hashing),
/// rotated so that both the low bits (the bucket) and the high bits (hashbrown's tag) come
/// from the product's well-mixed middle: the keys are page-aligned addresses the program
/// chose, which need no protection from collisions, and the lookup runs on every submit.
#[derive(Clone, Copy, Default)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 << 8 | u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_right(32);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// One registration the table knows.
struct Entry {
    /// The registered bytes: `start..start + len`.
    start: usize,
    len: usize,
    /// A zero-length buffer carved from the region: it holds the region's `Arc`, so the
    /// region stays mapped while the kernel has it registered.
    keep: DmaBuf,
    /// The kernel accepted the registration; `false`: it refused, and the memory's I/O
    /// is plain (remembered so that it is not retried on every I/O).
    registered: bool,
    /// Fixed-buffer operations in flight on this slot.
    inflight: u32,
}

/// Counters of the fixed-buffer machinery (see [`super::UringStats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FixedCounters {
    pub(crate) registrations: u64,
    pub(crate) refusals: u64,
    pub(crate) table_full: u64,
}

/// A table of `slots` registrations, found by their first byte.
pub(crate) struct FixedBuffers {
    span: Span,
    entries: Vec<Option<Entry>>,
    /// Registration start → slot.
    by_start: HashMap<usize, usize, BuildHasherDefault<AddrHasher>>,
    /// The sparse table exists in the kernel, and I/O uses it.
    active: bool,
    /// Index of the last hit, checked first.
    last: usize,
    pub(crate) counters: FixedCounters,
}

impl FixedBuffers {
    /// A table of `slots` entries registering `span`s; `active` says whether the ring has
    /// a sparse buffer table of that many slots registered.
    pub(crate) fn new(active: bool, span: Span, slots: usize) -> FixedBuffers {
        let mut entries = Vec::with_capacity(slots);
        entries.resize_with(slots, || None);
        FixedBuffers {
            span,
            entries,
            by_start: HashMap::with_capacity_and_hasher(slots, BuildHasherDefault::default()),
            active,
            last: 0,
            counters: FixedCounters::default(),
        }
    }

    /// Whether I/O uses the registered buffer table.
    pub(crate) fn active(&self) -> bool {
        self.active
    }

    /// Stops using registered buffers (the kernel does not honour them for this kind of
    /// I/O); what is registered stays so until the ring closes.
    pub(crate) fn disable(&mut self) {
        self.active = false;
    }

    /// The most pages one registration may span ([`Span::Window`]); `None` for
    /// [`Span::Region`].
    pub(crate) fn max_pages(&self) -> Option<usize> {
        match self.span {
            Span::Region => None,
            Span::Window { max_pages } => Some(max_pages),
        }
    }

    /// Whether a registration of `start..start + span` serves `addr..addr + len`.
    fn serves(&self, start: usize, span: usize, addr: usize, len: usize) -> bool {
        let end = start + span;
        addr >= start
            && addr + len <= end
            && match self.span {
                Span::Region => true,
                Span::Window { max_pages } => end.div_ceil(PAGE) - addr / PAGE <= max_pages,
            }
    }

    /// The slot serving `buf`, registering its span into a free slot the first time it
    /// is seen (one `io_uring_register` call). `None`: use plain I/O (no table, table
    /// full, a span the kernel refused or that does not fit, see [`Span`]). Counts the
    /// I/O in flight on the slot; [`FixedBuffers::complete`] ends it.
    pub(crate) fn slot_for(&mut self, submitter: &Submitter<'_>, buf: &mut DmaBuf) -> Option<u16> {
        if !self.active {
            return None;
        }
        let (addr, len) = (buf.as_ptr() as usize, buf.len());
        let last_serves = self.entries[self.last]
            .as_ref()
            .is_some_and(|e| self.serves(e.start, e.len, addr, len));
        let index = if last_serves {
            self.last
        } else {
            let (start, span_len) = match self.span {
                Span::Region => buf.region_span(),
                Span::Window { .. } => {
                    // The buffer's pages, clamped to its region (which need not be
                    // page-aligned or page-sized for every allocator).
                    let (base, region_len) = buf.region_span();
                    let start = (addr / PAGE * PAGE).max(base);
                    let end = (addr + len.max(1)).next_multiple_of(PAGE).min(base + region_len);
                    (start, end - start)
                }
            };
            match self.by_start.get(&start) {
                Some(&i) => {
                    let e = self.entries[i].as_ref().expect("indexed slots are full");
                    if !self.serves(e.start, e.len, addr, len) {
                        return None;
                    }
                    i
                }
                None => {
                    if !self.serves(start, span_len, addr, len) {
                        return None;
                    }
                    let Some(free) = self.entries.iter().position(Option::is_none) else {
                        self.counters.table_full += 1;
                        return None;
                    };
                    let registered = self.register(submitter, free, start, span_len);
                    self.entries[free] = Some(Entry {
                        start,
                        len: span_len,
                        keep: buf.region_keeper(),
                        registered,
                        inflight: 0,
                    });
                    self.by_start.insert(start, free);
                    free
                }
            }
        };
        self.last = index;
        let e = self.entries[index].as_mut().expect("found above");
        if !e.registered {
            return None;
        }
        e.inflight += 1;
        Some(index as u16)
    }

    /// Registers `start..start + len` (inside a live DMA region) into slot `index`.
    fn register(&mut self, submitter: &Submitter<'_>, index: usize, start: usize, len: usize) -> bool {
        if len > MAX_REGISTERED_BYTES {
            self.counters.refusals += 1;
            tracing::debug!(len, "uring: buffer larger than 1 GiB: plain I/O for it");
            return false;
        }
        let iov = libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: len,
        };
        // The entry holds the region's Arc (`DmaBuf::region_keeper`) until the slot is
        // emptied (`release_idle`) or the table is unregistered (`unregister`), or the
        // ring that holds the registration is closed first (its owner's field order).
        // SAFETY: the iovec lies in a live region (`region_span`, or a buffer of it rounded
        // to pages and clamped to the region) that, per the above, stays mapped for as
        // long as the kernel has it registered.
        match unsafe { submitter.register_buffers_update(index as u32, &[iov], None) } {
            Ok(()) => {
                self.counters.registrations += 1;
                true
            }
            Err(e) => {
                self.counters.refusals += 1;
                tracing::debug!(len, error = %e, "uring: the kernel refused to register a buffer: plain I/O for it");
                false
            }
        }
    }

    /// A fixed-buffer operation on `slot` completed.
    pub(crate) fn complete(&mut self, slot: u16) {
        if let Some(e) = self.entries.get_mut(slot as usize).and_then(Option::as_mut) {
            e.inflight = e.inflight.saturating_sub(1);
        }
    }

    /// Registrations the table holds (registered or refused).
    pub(crate) fn regions(&self) -> usize {
        self.entries.iter().filter(|e| e.is_some()).count()
    }

    /// Registrations the kernel accepted.
    pub(crate) fn registered(&self) -> usize {
        self.entries.iter().flatten().filter(|e| e.registered).count()
    }

    /// Unregisters every entry with no operation in flight and lets go of its memory;
    /// returns how many. A slot the kernel will not clear is kept.
    pub(crate) fn release_idle(&mut self, submitter: &Submitter<'_>) -> usize {
        let mut released = 0;
        for (index, slot) in self.entries.iter_mut().enumerate() {
            let Some(e) = slot else { continue };
            if e.inflight > 0 {
                continue;
            }
            if e.registered {
                let empty = libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                // SAFETY: a null, zero-length iovec empties the slot; it makes the kernel
                // let go of the memory, it registers none.
                if unsafe { submitter.register_buffers_update(index as u32, &[empty], None) }.is_err() {
                    continue;
                }
            }
            self.by_start.remove(&e.start);
            *slot = None;
            released += 1;
        }
        released
    }

    /// Unregisters the whole table (the ring must have no I/O in flight) and lets go of
    /// the memory. If the kernel refuses, the regions are leaked rather than unmapped
    /// while it may still hold them.
    pub(crate) fn unregister(&mut self, submitter: &Submitter<'_>) {
        if !self.active {
            return;
        }
        if submitter.unregister_buffers().is_err() {
            self.leak();
        }
        self.active = false;
    }

    /// Forgets the regions without unmapping them (their I/O may still be in flight),
    /// and uses plain I/O from now on.
    pub(crate) fn leak(&mut self) {
        for e in self.entries.iter_mut().filter_map(Option::take) {
            std::mem::forget(e.keep);
        }
        self.by_start.clear();
        self.active = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KernelDma;
    use io_uring::IoUring;
    use ironvme_nvme::hw::DmaAllocator;

    /// A ring with a sparse table of `slots`, and a table over it.
    fn table(span: Span, slots: usize) -> (IoUring, FixedBuffers) {
        let ring = IoUring::new(8).unwrap();
        ring.submitter().register_buffers_sparse(slots as u32).unwrap();
        (ring, FixedBuffers::new(true, span, slots))
    }

    #[test]
    fn a_region_is_registered_once_for_all_its_buffers() {
        let (ring, mut t) = table(Span::Region, 4);
        let bufs = KernelDma::new(false)
            .allocate(8 * PAGE)
            .unwrap()
            .into_chunks(PAGE, 8)
            .unwrap();
        for mut b in bufs {
            assert_eq!(t.slot_for(&ring.submitter(), &mut b), Some(0));
        }
        assert_eq!((t.counters.registrations, t.registered()), (1, 1));
    }

    #[test]
    fn windows_register_each_buffers_pages_and_only_serve_what_fits() {
        let (ring, mut t) = table(Span::Window { max_pages: 4 }, 16);
        let s = ring.submitter();
        let dma = KernelDma::new(false);
        let mut bufs = dma.allocate(8 * PAGE).unwrap().into_chunks(PAGE, 8).unwrap();
        let slots: Vec<Option<u16>> = bufs.iter_mut().map(|b| t.slot_for(&s, b)).collect();
        assert_eq!(
            slots,
            (0..8).map(Some).collect::<Vec<_>>(),
            "one registration per buffer"
        );
        // Used again: the same slots, no new registration.
        assert_eq!(t.slot_for(&s, &mut bufs[5]), Some(5));
        assert_eq!(t.counters.registrations, 8);
        // Part of a registered window is served by it.
        let mut part = bufs[3].split_off(512).unwrap();
        assert_eq!(t.slot_for(&s, &mut part), Some(3));
        // A buffer longer than max_pages pages is never registered.
        let mut big = dma.allocate(5 * PAGE).unwrap();
        assert_eq!(t.slot_for(&s, &mut big), None);
        let mut four = dma.allocate(4 * PAGE).unwrap();
        assert_eq!(t.slot_for(&s, &mut four), Some(8));
        assert_eq!(t.counters.registrations, 9);
        // A buffer starting on a registered page but running past its window: plain.
        let mut two = dma.allocate(2 * PAGE).unwrap();
        two.set_window(0, PAGE).unwrap();
        assert_eq!(t.slot_for(&s, &mut two), Some(9));
        two.reset_window();
        assert_eq!(t.slot_for(&s, &mut two), None, "two pages from a one-page window");
    }

    #[test]
    fn a_full_table_falls_back_to_plain_io_and_idle_slots_are_released() {
        let (ring, mut t) = table(Span::Window { max_pages: 4 }, 2);
        let s = ring.submitter();
        let mut bufs = KernelDma::new(false)
            .allocate(3 * PAGE)
            .unwrap()
            .into_chunks(PAGE, 3)
            .unwrap();
        assert_eq!(t.slot_for(&s, &mut bufs[0]), Some(0));
        assert_eq!(t.slot_for(&s, &mut bufs[1]), Some(1));
        assert_eq!(t.slot_for(&s, &mut bufs[2]), None);
        assert_eq!(t.counters.table_full, 1);
        // Slot 1's I/O completes; slot 0's is still in flight and keeps its slot.
        t.complete(1);
        assert_eq!(t.release_idle(&s), 1);
        assert_eq!(t.slot_for(&s, &mut bufs[2]), Some(1));
        assert_eq!(t.slot_for(&s, &mut bufs[0]), Some(0));
        t.disable();
        assert_eq!(t.slot_for(&s, &mut bufs[0]), None);
    }
}
