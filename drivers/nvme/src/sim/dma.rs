//! DMA memory the simulated controller can reach, and the controller's address translation.
//!
//! [`SimDma`] hands out zeroed, 4 KiB-aligned heap memory ([`HeapRegion`]) at synthetic
//! IOVAs from a bump allocator starting at [`IOVA_BASE`]. Addresses are never reused and
//! every region is followed by an unmapped 4 KiB guard gap, so a DMA to freed memory or
//! past the end of a buffer hits nothing and is reported instead of silently landing in
//! some other buffer.
//!
//! Every region registers itself in a [`DmaTable`] when it is created and removes itself
//! when it is dropped. The controller reaches host memory only through the table, and
//! holds the table's lock for the duration of each access, so a region cannot be freed in
//! the middle of a transfer.
//!
//! Lock ordering: the table lock is a leaf. The controller takes it while holding its state
//! lock; a region's `Drop` takes only the table lock; nothing takes another lock while
//! holding it.

use crate::cmd::Command;
use crate::completion::Completion;
use crate::hw::{DmaAllocator, DmaBuf, DmaError, DmaRegion, HeapRegion, new_domain_id};
use std::collections::BTreeMap;
use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The first IOVA [`SimDma`] hands out.
pub const IOVA_BASE: u64 = 0x1_0000_0000;
/// Allocation granularity and alignment in bytes.
const PAGE: usize = 4096;
/// Unmapped gap after each region, in bytes.
const GUARD: u64 = 4096;
/// How many freed ranges are remembered, to tell "freed" from "never mapped".
const FREED_REMEMBERED: usize = 65536;

/// A host address in the translation table.
#[derive(Clone, Copy)]
struct HostPtr(NonNull<u8>);

// SAFETY: the pointer is only an address here; it is dereferenced only by `DmaTable`
// while the table lock is held and the owning region is still registered (alive).
unsafe impl Send for HostPtr {}

#[derive(Clone, Copy)]
struct Mapping {
    host: HostPtr,
    len: u64,
}

#[derive(Default)]
struct Table {
    /// Live regions by first IOVA.
    live: BTreeMap<u64, Mapping>,
    /// Recently freed regions by first IOVA, with their length in bytes.
    freed: BTreeMap<u64, u64>,
}

/// A device access that hit no live region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DmaFault {
    /// First IOVA of the access.
    pub(super) iova: u64,
    /// Length of the access in bytes.
    pub(super) len: u64,
    /// Whether the IOVA belonged to a region that has been freed.
    pub(super) freed: bool,
}

impl fmt::Display for DmaFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = if self.freed {
            "memory that was freed"
        } else {
            "no mapped region"
        };
        write!(f, "{} bytes at IOVA {:#x} reach {why}", self.len, self.iova)
    }
}

/// The controller's IOVA → host translation table.
pub(super) struct DmaTable {
    table: Mutex<Table>,
    next_iova: AtomicU64,
    /// The DMA domain of every region in the table (one per controller).
    domain: u64,
}

impl DmaTable {
    pub(super) fn new() -> Arc<DmaTable> {
        Arc::new(DmaTable {
            table: Mutex::new(Table::default()),
            next_iova: AtomicU64::new(IOVA_BASE),
            domain: new_domain_id(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn map(&self, iova: u64, host: NonNull<u8>, len: u64) {
        self.lock().live.insert(
            iova,
            Mapping {
                host: HostPtr(host),
                len,
            },
        );
    }

    fn unmap(&self, iova: u64) {
        let mut t = self.lock();
        if let Some(m) = t.live.remove(&iova) {
            t.freed.insert(iova, m.len);
            if t.freed.len() > FREED_REMEMBERED {
                t.freed.pop_first();
            }
        }
    }

    /// Number of live regions.
    pub(super) fn live_regions(&self) -> usize {
        self.lock().live.len()
    }

    /// Runs `f` on the host address of the `len` bytes at `iova`, with the table locked so
    /// the region stays alive. All `len` bytes must lie in one live region.
    fn with_host<R>(&self, iova: u64, len: u64, f: impl FnOnce(*mut u8) -> R) -> Result<R, DmaFault> {
        let t = self.lock();
        let fault = |freed| DmaFault { iova, len, freed };
        let end = iova.checked_add(len).ok_or(fault(false))?;
        if let Some((&start, m)) = t.live.range(..=iova).next_back() {
            if end <= start + m.len {
                return Ok(f(m.host.0.as_ptr().wrapping_add((iova - start) as usize)));
            }
        }
        let freed = t.freed.range(..=iova).next_back().is_some_and(|(&s, &l)| iova < s + l);
        Err(fault(freed))
    }

    /// One past the last IOVA of the live region holding `iova`.
    pub(super) fn region_end(&self, iova: u64) -> Option<u64> {
        let t = self.lock();
        let (&start, m) = t.live.range(..=iova).next_back()?;
        (iova < start + m.len).then_some(start + m.len)
    }

    /// Checks that `len` bytes at `iova` lie in one live region.
    pub(super) fn check(&self, iova: u64, len: u64) -> Result<(), DmaFault> {
        self.with_host(iova, len, |_| ())
    }

    /// Device read: copies `dst.len()` bytes at `iova` into `dst`.
    pub(super) fn read(&self, iova: u64, dst: &mut [u8]) -> Result<(), DmaFault> {
        self.with_host(iova, dst.len() as u64, |p| {
            // SAFETY: `with_host` checked that dst.len() bytes at `p` lie in a live region,
            // which cannot be freed while the table lock is held; `dst` is simulator memory
            // and cannot overlap DMA memory.
            unsafe { std::ptr::copy_nonoverlapping(p.cast_const(), dst.as_mut_ptr(), dst.len()) }
        })
    }

    /// Device write: copies `src` to `iova`.
    pub(super) fn write(&self, iova: u64, src: &[u8]) -> Result<(), DmaFault> {
        self.with_host(iova, src.len() as u64, |p| {
            // SAFETY: as in `read`: the destination lies in a live region kept alive by the
            // table lock, and `src` is simulator memory.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len()) }
        })
    }

    /// Device read of one little-endian quadword (a PRP list entry).
    pub(super) fn read_u64(&self, iova: u64) -> Result<u64, DmaFault> {
        let mut b = [0u8; 8];
        self.read(iova, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Fetches the 64-byte submission queue entry at `iova`.
    pub(super) fn read_command(&self, iova: u64) -> Result<Command, DmaFault> {
        self.with_host(iova, 64, |p| {
            // SAFETY: 64 bytes at `p` lie in a live region (checked by `with_host`, kept
            // alive by the lock); every bit pattern is a valid `Command` (plain integers);
            // `read_unaligned` has no alignment requirement.
            unsafe { p.cast::<Command>().read_unaligned() }
        })
    }

    /// Posts a completion queue entry at `iova` (16-byte aligned): DW0–DW2 first, then a
    /// Release fence, then DW3 with the phase tag, so a host that sees the new phase tag
    /// sees the whole entry.
    pub(super) fn write_completion(&self, iova: u64, c: &Completion) -> Result<(), DmaFault> {
        if iova % 16 != 0 {
            return Err(DmaFault {
                iova,
                len: 16,
                freed: false,
            });
        }
        let dw = [
            c.dw0,
            c.dw1,
            c.sqhd as u32 | (c.sqid as u32) << 16,
            c.cid as u32 | (c.status as u32) << 16,
        ];
        self.with_host(iova, 16, |p| {
            let p = p.cast::<u32>();
            for (i, &v) in dw[..3].iter().enumerate() {
                // SAFETY: 16 bytes at `p` lie in a live region (checked, kept alive by the
                // lock); `p` is 4-byte aligned because regions are page aligned and `iova`
                // is 16-byte aligned. Volatile because the host polls this memory.
                unsafe { p.wrapping_add(i).write_volatile(v) }
            }
            fence(Ordering::Release);
            // SAFETY: as above, for the last dword of the entry.
            unsafe { p.wrapping_add(3).write_volatile(dw[3]) }
        })
    }
}

/// A [`HeapRegion`] registered in a controller's translation table for as long as it lives.
struct SimRegion {
    heap: HeapRegion,
    table: Arc<DmaTable>,
}

// SAFETY: every method delegates to the HeapRegion, which upholds the DmaRegion contract.
// The heap memory is freed only when the `heap` field is dropped, which happens after
// `Drop::drop` below has removed the mapping, so the device never reaches freed memory.
unsafe impl DmaRegion for SimRegion {
    fn vaddr(&self) -> NonNull<u8> {
        self.heap.vaddr()
    }
    fn iova(&self) -> u64 {
        self.heap.iova()
    }
    fn len(&self) -> usize {
        self.heap.len()
    }
    fn domain(&self) -> u64 {
        self.heap.domain()
    }
}

impl Drop for SimRegion {
    fn drop(&mut self) {
        self.table.unmap(self.heap.iova());
    }
}

/// The DMA allocator whose memory a [`super::SimController`] can reach.
///
/// Allocations are zeroed, 4 KiB aligned on the host and in IOVA space, and never share an
/// IOVA with an earlier allocation (freed or not). A buffer's window is exactly the length
/// asked for and its capacity that length rounded up to whole 4 KiB pages, so code that
/// assumes buffer lengths are page multiples fails here rather than on a device.
#[derive(Clone)]
pub struct SimDma {
    pub(super) table: Arc<DmaTable>,
}

impl SimDma {
    /// Number of allocations currently alive (regions mapped for the device).
    pub fn live_regions(&self) -> usize {
        self.table.live_regions()
    }
}

impl DmaAllocator for SimDma {
    fn allocate(&self, len: usize) -> Result<DmaBuf, DmaError> {
        let oom = |reason: &str| DmaError::OutOfMemory {
            len,
            reason: reason.to_string(),
        };
        let size = len
            .max(1)
            .checked_next_multiple_of(PAGE)
            .ok_or_else(|| oom("size overflows"))?;
        let span = (size as u64).checked_add(GUARD).ok_or_else(|| oom("size overflows"))?;
        let iova = self.table.next_iova.fetch_add(span, Ordering::Relaxed);
        if iova.checked_add(span).is_none() {
            return Err(oom("simulated IOVA space exhausted"));
        }
        let heap = HeapRegion::in_domain(size, PAGE, iova, self.table.domain)?;
        self.table.map(iova, heap.vaddr(), size as u64);
        let mut buf = DmaBuf::from_region(Arc::new(SimRegion {
            heap,
            table: Arc::clone(&self.table),
        }));
        buf.set_window(0, len)?;
        Ok(buf)
    }

    fn page_size(&self) -> usize {
        PAGE
    }

    /// One domain per controller: memory of one simulated controller is not reachable by
    /// another.
    fn domain(&self) -> u64 {
        self.table.domain
    }
}

impl fmt::Debug for SimDma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimDma")
            .field("live_regions", &self.live_regions())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dma() -> SimDma {
        SimDma { table: DmaTable::new() }
    }

    #[test]
    fn allocations_are_zeroed_aligned_and_never_reuse_iovas() {
        let d = dma();
        let a = d.allocate(100).unwrap();
        assert_eq!((a.iova(), a.len(), a.capacity()), (IOVA_BASE, 100, 4096));
        assert!(a.as_slice().iter().all(|&b| b == 0));
        assert_eq!(a.as_ptr() as usize % 4096, 0);
        let a_iova = a.iova();
        drop(a);
        let b = d.allocate(8192).unwrap();
        assert_eq!(b.iova(), a_iova + 4096 + GUARD, "a fresh IOVA after a guard gap");
        assert_eq!(d.live_regions(), 1);
        assert_eq!(b.domain(), d.domain());
        assert_ne!(dma().domain(), d.domain());
        assert_eq!(d.allocate(0).unwrap().capacity(), 4096);
    }

    #[test]
    fn device_accesses_translate_and_report_faults() {
        let d = dma();
        let mut buf = d.allocate(4096).unwrap();
        buf.as_mut_slice()[8..16].copy_from_slice(&0x1234u64.to_le_bytes());
        let t = &d.table;
        assert_eq!(t.read_u64(buf.iova() + 8), Ok(0x1234));
        t.write(buf.iova() + 100, b"hi").unwrap();
        assert_eq!(&buf.as_slice()[100..102], b"hi");
        let past = t.read(buf.iova() + 4090, &mut [0u8; 8]).unwrap_err();
        assert!(!past.freed, "runs into the guard gap");
        let iova = buf.iova();
        drop(buf);
        let gone = t.write(iova, &[1]).unwrap_err();
        assert!(gone.freed);
        assert!(gone.to_string().contains("freed"), "{gone}");
        assert!(t.check(0x1000, 8).is_err());
    }

    #[test]
    fn completions_land_with_their_phase_tag() {
        let d = dma();
        let buf = d.allocate(4096).unwrap();
        let c = Completion::new(7, 1, 3, crate::Status::INVALID_FIELD, true, 0xAB);
        d.table.write_completion(buf.iova() + 32, &c).unwrap();
        // SAFETY: test-only read of 16 initialized bytes inside the buffer.
        let back = unsafe { buf.as_ptr().wrapping_add(32).cast::<Completion>().read() };
        assert_eq!(back, c);
        assert!(
            d.table.write_completion(buf.iova() + 8, &c).is_err(),
            "misaligned entry"
        );
    }
}
