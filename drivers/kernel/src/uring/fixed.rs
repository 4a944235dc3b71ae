//! The table of registered (fixed) buffers of one ring: which memory region sits in which
//! slot of the kernel's sparse buffer table.

use io_uring::Submitter;
use ironvme_nvme::hw::DmaBuf;

/// Slots in each ring's registered-buffer table: how many distinct memory regions one
/// queue can use as fixed buffers. Allocate a few large regions and split them
/// ([`DmaBuf::into_chunks`]) rather than many small ones.
pub const FIXED_BUFFER_SLOTS: usize = 64;

/// Largest region the kernel registers as one buffer, in bytes (`SZ_1G` in
/// `io_uring/rsrc.c`).
const MAX_REGISTERED_BYTES: usize = 1 << 30;

/// One region the table knows.
struct Entry {
    /// A zero-length buffer carved from the region: it holds the region's `Arc`, so the
    /// region stays mapped while the kernel has it registered.
    keep: DmaBuf,
    /// The kernel accepted the registration; `false`: it refused, and the region's I/O
    /// is plain (remembered so that it is not retried on every I/O).
    registered: bool,
    /// Fixed-buffer operations in flight on this slot.
    inflight: u32,
}

/// Counters of the fixed-buffer machinery (see [`super::UringStats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct FixedCounters {
    pub(super) registrations: u64,
    pub(super) refusals: u64,
    pub(super) table_full: u64,
}

/// A fixed-size region → slot table, scanned linearly.
pub(super) struct FixedBuffers {
    entries: Vec<Option<Entry>>,
    /// The sparse table exists in the kernel.
    active: bool,
    /// Index of the last hit, checked first.
    last: usize,
    pub(super) counters: FixedCounters,
}

impl FixedBuffers {
    /// A table; `active` says whether the ring has a sparse buffer table registered.
    pub(super) fn new(active: bool) -> FixedBuffers {
        let mut entries = Vec::with_capacity(FIXED_BUFFER_SLOTS);
        entries.resize_with(FIXED_BUFFER_SLOTS, || None);
        FixedBuffers {
            entries,
            active,
            last: 0,
            counters: FixedCounters::default(),
        }
    }

    /// Whether the ring has a registered buffer table.
    pub(super) fn active(&self) -> bool {
        self.active
    }

    /// The slot holding `buf`'s region, registering the region into a free slot the
    /// first time it is seen (one `io_uring_register` call). `None`: use plain I/O (no
    /// table, table full, or the kernel refused the region). Counts the I/O in flight
    /// on the slot; [`FixedBuffers::complete`] ends it.
    pub(super) fn slot_for(&mut self, submitter: &Submitter<'_>, buf: &mut DmaBuf) -> Option<u16> {
        if !self.active {
            return None;
        }
        let hit = match &self.entries[self.last] {
            Some(e) if e.keep.same_region(buf) => Some(self.last),
            _ => self
                .entries
                .iter()
                .position(|e| e.as_ref().is_some_and(|e| e.keep.same_region(buf))),
        };
        let index = match hit {
            Some(i) => i,
            None => {
                let Some(free) = self.entries.iter().position(Option::is_none) else {
                    self.counters.table_full += 1;
                    return None;
                };
                let registered = self.register(submitter, free, buf);
                self.entries[free] = Some(Entry {
                    keep: buf.region_keeper(),
                    registered,
                    inflight: 0,
                });
                free
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

    /// Registers `buf`'s whole region into slot `index`.
    fn register(&mut self, submitter: &Submitter<'_>, index: usize, buf: &DmaBuf) -> bool {
        let (addr, len) = buf.region_span();
        if len > MAX_REGISTERED_BYTES {
            self.counters.refusals += 1;
            tracing::debug!(len, "uring: region larger than 1 GiB: plain reads and writes for it");
            return false;
        }
        let iov = libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        };
        // The entry holds the region's Arc (`DmaBuf::region_keeper`) until the slot is emptied
        // (`release_idle`) or the table is unregistered (`unregister`).
        // SAFETY: the iovec covers a live region (`region_span`) that, per the above, stays
        // mapped for as long as the kernel has it registered.
        match unsafe { submitter.register_buffers_update(index as u32, &[iov], None) } {
            Ok(()) => {
                self.counters.registrations += 1;
                true
            }
            Err(e) => {
                self.counters.refusals += 1;
                tracing::debug!(len, error = %e, "uring: the kernel refused to register a region: plain I/O for it");
                false
            }
        }
    }

    /// A fixed-buffer operation on `slot` completed.
    pub(super) fn complete(&mut self, slot: u16) {
        if let Some(e) = self.entries.get_mut(slot as usize).and_then(Option::as_mut) {
            e.inflight = e.inflight.saturating_sub(1);
        }
    }

    /// Regions the table holds (registered or refused).
    pub(super) fn regions(&self) -> usize {
        self.entries.iter().filter(|e| e.is_some()).count()
    }

    /// Unregisters every region with no operation in flight and lets go of it; returns
    /// how many. A slot the kernel will not clear is kept.
    pub(super) fn release_idle(&mut self, submitter: &Submitter<'_>) -> usize {
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
                // let go of the region, it registers no memory.
                if unsafe { submitter.register_buffers_update(index as u32, &[empty], None) }.is_err() {
                    continue;
                }
            }
            *slot = None;
            released += 1;
        }
        released
    }

    /// Unregisters the whole table (the ring must have no I/O in flight) and lets go of
    /// the regions. If the kernel refuses, the regions are leaked rather than unmapped
    /// while it may still hold them.
    pub(super) fn unregister(&mut self, submitter: &Submitter<'_>) {
        if !self.active {
            return;
        }
        if submitter.unregister_buffers().is_err() {
            self.leak();
        }
        self.active = false;
    }

    /// Forgets the regions without unmapping them (their I/O may still be in flight).
    pub(super) fn leak(&mut self) {
        for e in self.entries.iter_mut().filter_map(Option::take) {
            std::mem::forget(e.keep);
        }
    }
}
