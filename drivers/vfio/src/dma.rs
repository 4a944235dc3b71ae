//! DMA memory for a VFIO device: host memory mapped into the IOMMU at IOVAs chosen by
//! the [`IovaAllocator`].
//!
//! # Policy
//!
//! - **Backing memory.** A mapping is backed by 2 MiB hugepages (`MAP_HUGETLB`,
//!   [`MmapOptions::huge`]) when [`HugePages::Auto`] is in effect and
//!   `/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages` shows enough free pages;
//!   if that mmap fails anyway, or no hugepages are free, it is backed by anonymous
//!   4 KiB pages. Every mapping is advised `MADV_DONTFORK`, so a `fork` (e.g. to run a
//!   helper) cannot move pages under the device by copy-on-write.
//! - **Locking.** 4 KiB pages are not `mlock`ed separately: `VFIO_IOMMU_MAP_DMA` pins
//!   them (long-term pin: resident, never swapped or migrated) and charges them to
//!   `RLIMIT_MEMLOCK`; an extra `mlock` would charge the same pages twice.
//! - **Sizes.** Every allocation is rounded up to [`PAGE_SIZE`] (4 KiB) and is 4 KiB
//!   aligned on the host and in IOVA space (2 MiB aligned when hugepage-backed).
//!   Allocations of [`CHUNK_BYTES`] (2 MiB) or more get a mapping of their own, rounded
//!   up to 2 MiB when hugepage-backed.
//! - **Small allocations** (< 2 MiB) are carved from a shared 2 MiB chunk by a bump
//!   pointer, so 256 queues' worth of 4 KiB buffers cost a few chunks rather than a
//!   hugepage (and an IOMMU mapping) each. A carve that does not fit in what is left of
//!   the current chunk starts a new chunk; the rest of the old one is not reused. A
//!   chunk is unmapped and freed when its last carve is dropped and it is no longer the
//!   current chunk; the current chunk is rewound to its start when none of its carves is
//!   alive (reused memory is zeroed again).
//! - **Release.** Dropping the last [`DmaBuf`] of a mapping unmaps it from the IOMMU,
//!   returns its IOVA range and unmaps the memory — in that order. If the unmap ioctl
//!   fails the IOVA range is never reused (the device might still reach it).
//!
//! Allocation takes a mutex and may make system calls: it is for queue creation and
//! buffer pools, not the I/O path.

use crate::iommu::DmaMapper;
use crate::iova::{IovaAllocator, IovaError};
use crate::pci::Sysfs;
use ironvme_nvme::hw::{DmaAllocator, DmaBuf, DmaError, DmaRegion};
use memmap2::{Advice, MmapOptions, MmapRaw};
use std::fmt;

use std::ops::Range;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Allocation granularity and alignment in bytes ([`DmaAllocator::page_size`]).
pub const PAGE_SIZE: usize = 4096;
/// Size of a 2 MiB hugepage in bytes.
pub const HUGEPAGE_BYTES: usize = 2 << 20;
/// Size of a shared chunk for small allocations, and the threshold at or above which an
/// allocation gets a mapping of its own, in bytes.
pub const CHUNK_BYTES: usize = 2 << 20;
/// `MAP_HUGE_2MB`: log2 of the hugepage size.
const HUGEPAGE_SHIFT: u8 = 21;

/// Whether DMA memory may come from 2 MiB hugepages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HugePages {
    /// Use hugepages when enough are free, else 4 KiB pages.
    #[default]
    Auto,
    /// Always use 4 KiB pages.
    Never,
}

/// Options of a [`VfioDma`].
#[derive(Clone, Debug, Default)]
pub struct DmaOptions {
    /// Hugepage policy. Default [`HugePages::Auto`].
    pub hugepages: HugePages,
    /// Where to read `free_hugepages` from. Default `/sys`.
    pub sysfs: Sysfs,
}

/// Counters of a [`VfioDma`], for diagnostics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DmaStats {
    /// Live IOMMU mappings backed by 2 MiB hugepages.
    pub hugepage_mappings: u64,
    /// Live IOMMU mappings backed by 4 KiB pages.
    pub small_page_mappings: u64,
    /// Bytes currently mapped in the IOMMU.
    pub mapped_bytes: u64,
    /// Shared chunks created so far.
    pub chunks_created: u64,
    /// Times a hugepage mmap failed and 4 KiB pages were used instead.
    pub hugepage_fallbacks: u64,
    /// Mappings whose IOMMU unmap failed (their IOVA range is retired).
    pub unmap_failures: u64,
}

#[derive(Default)]
struct Counters {
    huge: AtomicU64,
    small: AtomicU64,
    bytes: AtomicU64,
    chunks: AtomicU64,
    fallbacks: AtomicU64,
    unmap_failures: AtomicU64,
}

/// State shared by the allocator and every mapping it made.
struct Shared {
    mapper: Arc<dyn DmaMapper>,
    iova: Mutex<IovaAllocator>,
    counters: Counters,
}

impl Shared {
    fn iova(&self) -> MutexGuard<'_, IovaAllocator> {
        // The allocator's state is consistent between calls, so a panic elsewhere
        // while the lock was held does not corrupt it.
        self.iova.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One mmap of host memory, mapped in the IOMMU at `iova`. Unmapped and freed on drop.
struct Mapping {
    /// The host memory; unmapped from the process when the Mapping drops, after the
    /// IOMMU unmap in `Drop::drop`.
    mem: MmapRaw,
    len: usize,
    iova: u64,
    huge: bool,
    shared: Arc<Shared>,
}

impl Mapping {
    /// The host address of the first byte.
    fn base(&self) -> NonNull<u8> {
        NonNull::new(self.mem.as_mut_ptr()).expect("checked non-null when mapped")
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let c = &self.shared.counters;
        match self.shared.mapper.unmap(self.iova, self.len) {
            Ok(()) => {
                if let Err(e) = self.shared.iova().free(self.iova, self.len as u64) {
                    tracing::error!(iova = self.iova, len = self.len, "IOVA bookkeeping: {e}");
                }
            }
            Err(e) => {
                c.unmap_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    iova = self.iova,
                    len = self.len,
                    "DMA unmap failed, IOVA range retired: {e}"
                );
            }
        }
        let kind = if self.huge { &c.huge } else { &c.small };
        kind.fetch_sub(1, Ordering::Relaxed);
        c.bytes.fetch_sub(self.len as u64, Ordering::Relaxed);
        tracing::debug!(
            iova = self.iova,
            len = self.len,
            huge = self.huge,
            "DMA mapping released"
        );
        // `mem` is unmapped from the process after this, when its field drops.
    }
}

/// An allocation with a mapping of its own; `len` may be less than the mapping (a
/// hugepage-backed mapping is rounded up to 2 MiB).
struct Dedicated {
    mapping: Mapping,
    len: usize,
}

// SAFETY: `mapping` is a private anonymous mmap of at least `len` bytes, mapped in the
// IOMMU at `mapping.iova` for as long as the Mapping lives (it unmaps in Drop before the
// memory is freed). Nothing else refers to it.
unsafe impl DmaRegion for Dedicated {
    fn vaddr(&self) -> NonNull<u8> {
        self.mapping.base()
    }
    fn iova(&self) -> u64 {
        self.mapping.iova
    }
    fn len(&self) -> usize {
        self.len
    }
    fn domain(&self) -> u64 {
        self.mapping.shared.mapper.domain()
    }
}

/// A slice of a shared chunk.
struct Carve {
    chunk: Arc<Mapping>,
    offset: usize,
    len: usize,
}

// SAFETY: `offset + len <= chunk.len`; the chunk stays mapped (host and IOMMU) while
// this carve holds its Arc; the slab hands each byte range to one carve at a time and
// rewinds only when no carve of the chunk is alive.
unsafe impl DmaRegion for Carve {
    fn vaddr(&self) -> NonNull<u8> {
        // SAFETY: offset < chunk.len, so the result stays inside the chunk's mmap.
        unsafe { self.chunk.base().add(self.offset) }
    }
    fn iova(&self) -> u64 {
        self.chunk.iova + self.offset as u64
    }
    fn len(&self) -> usize {
        self.len
    }
    fn domain(&self) -> u64 {
        self.chunk.shared.mapper.domain()
    }
}

/// The chunk small allocations are currently carved from.
struct Slab {
    chunk: Arc<Mapping>,
    /// Offset of the next carve.
    next: usize,
    /// Bytes from the start that have been handed out at least once (may be non-zero).
    dirty: usize,
}

/// A [`DmaAllocator`] over a VFIO IOMMU address space. See the module docs for the
/// memory policy.
pub struct VfioDma {
    shared: Arc<Shared>,
    slab: Mutex<Option<Slab>>,
    options: DmaOptions,
}

impl fmt::Debug for VfioDma {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioDma")
            .field("domain", &self.shared.mapper.domain())
            .field("hugepages", &self.options.hugepages)
            .field("stats", &self.stats())
            .finish()
    }
}

fn oom(len: usize, reason: impl Into<String>) -> DmaError {
    DmaError::OutOfMemory {
        len,
        reason: reason.into(),
    }
}

impl VfioDma {
    /// An allocator mapping memory through `mapper`, handing out IOVAs inside
    /// `mapper.iova_ranges()`.
    ///
    /// Errors: [`IovaError`] if the ranges hold no usable page.
    pub fn new(mapper: Arc<dyn DmaMapper>, options: DmaOptions) -> Result<VfioDma, IovaError> {
        let granule = mapper.min_page_size().max(PAGE_SIZE as u64);
        let iova = IovaAllocator::new(mapper.iova_ranges(), granule)?;
        let shared = Arc::new(Shared {
            mapper,
            iova: Mutex::new(iova),
            counters: Counters::default(),
        });
        Ok(VfioDma {
            shared,
            slab: Mutex::new(None),
            options,
        })
    }

    /// The IOVA ranges allocations come from (the IOMMU's valid ranges, clipped to whole
    /// pages, without page 0).
    pub fn iova_ranges(&self) -> Vec<Range<u64>> {
        self.shared.iova().ranges().to_vec()
    }

    /// Current counters.
    pub fn stats(&self) -> DmaStats {
        let c = &self.shared.counters;
        DmaStats {
            hugepage_mappings: c.huge.load(Ordering::Relaxed),
            small_page_mappings: c.small.load(Ordering::Relaxed),
            mapped_bytes: c.bytes.load(Ordering::Relaxed),
            chunks_created: c.chunks.load(Ordering::Relaxed),
            hugepage_fallbacks: c.fallbacks.load(Ordering::Relaxed),
            unmap_failures: c.unmap_failures.load(Ordering::Relaxed),
        }
    }

    /// Carves `size` bytes (a multiple of PAGE_SIZE, < CHUNK_BYTES) from the shared chunk.
    fn carve(&self, size: usize) -> Result<DmaBuf, DmaError> {
        let mut slab = self.slab.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slab.as_mut() {
            // Only the slab holds the chunk: no carve of it is alive, start over.
            if Arc::strong_count(&s.chunk) == 1 {
                s.next = 0;
            }
        }
        if slab.as_ref().is_none_or(|s| s.next + size > s.chunk.len) {
            let chunk = self.map_new(CHUNK_BYTES)?;
            self.shared.counters.chunks.fetch_add(1, Ordering::Relaxed);
            // Replacing the old slab drops its reference; the chunk is freed once its
            // last carve goes.
            *slab = Some(Slab {
                chunk: Arc::new(chunk),
                next: 0,
                dirty: 0,
            });
        }
        let Some(s) = slab.as_mut() else {
            unreachable!("slab was just filled")
        };
        let offset = s.next;
        let dirty_end = s.dirty.min(offset + size);
        if offset < dirty_end {
            let start = s.chunk.base().as_ptr().wrapping_add(offset);
            // SAFETY: [offset, dirty_end) lies inside the chunk (next + size <= len) and
            // belongs to no live carve: it is past every live carve's end, because carves
            // are handed out in address order and the slab rewinds only when none lives.
            unsafe { std::ptr::write_bytes(start, 0, dirty_end - offset) };
        }
        s.next = offset + size;
        s.dirty = s.dirty.max(s.next);
        let carve = Carve {
            chunk: Arc::clone(&s.chunk),
            offset,
            len: size,
        };
        Ok(DmaBuf::from_region(Arc::new(carve)))
    }

    /// A mapping of its own for `size` bytes (a multiple of PAGE_SIZE).
    fn dedicated(&self, size: usize) -> Result<DmaBuf, DmaError> {
        let mapping = self.map_new(size)?;
        Ok(DmaBuf::from_region(Arc::new(Dedicated { mapping, len: size })))
    }

    /// Whether a mapping of `len` bytes should try hugepages.
    fn want_hugepages(&self, len: usize) -> bool {
        self.options.hugepages == HugePages::Auto
            && self.options.sysfs.free_hugepages_2m() >= len.div_ceil(HUGEPAGE_BYTES) as u64
    }

    /// Allocates zeroed host memory for at least `size` bytes: (memory, length, huge).
    fn host_memory(&self, size: usize) -> Result<(MmapRaw, usize, bool), DmaError> {
        if self.want_hugepages(size) {
            let len = size.next_multiple_of(HUGEPAGE_BYTES);
            match MmapOptions::new().len(len).huge(Some(HUGEPAGE_SHIFT)).map_anon() {
                Ok(m) => return Ok((MmapRaw::from(m), len, true)),
                Err(e) => {
                    self.shared.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(len, "2 MiB hugepage mmap failed, using 4 KiB pages: {e}");
                }
            }
        }
        let mem = MmapOptions::new()
            .len(size)
            .map_anon()
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOMEM) => oom(size, format!("mmap of {size} bytes: {e}")),
                _ => DmaError::Os {
                    op: format!("mmap {size} bytes of anonymous memory"),
                    source: e,
                },
            })?;
        Ok((MmapRaw::from(mem), size, false))
    }

    /// Allocates host memory for `size` bytes and maps it in the IOMMU.
    fn map_new(&self, size: usize) -> Result<Mapping, DmaError> {
        let (mem, len, huge) = self.host_memory(size)?;
        mem.advise(Advice::DontFork).map_err(|e| DmaError::Os {
            op: format!("madvise(MADV_DONTFORK) on {len} bytes of DMA memory"),
            source: e,
        })?;
        let base = NonNull::new(mem.as_mut_ptr()).ok_or_else(|| oom(size, "mmap returned address 0"))?;
        let align = if huge { HUGEPAGE_BYTES } else { PAGE_SIZE } as u64;
        let iova = self
            .shared
            .iova()
            .allocate(len as u64, align)
            .map_err(|e| oom(size, e.to_string()))?;
        // SAFETY: `mem` is a fresh private anonymous mapping of `len` bytes. It moves into
        // the Mapping below, whose Drop unmaps the IOMMU mapping before `mem` is freed,
        // and its bytes are reached only through DmaBufs, which allow for device writes.
        let mapped = unsafe { self.shared.mapper.map(base, iova, len) };
        if let Err(e) = mapped {
            if let Err(f) = self.shared.iova().free(iova, len as u64) {
                tracing::error!(iova, len, "IOVA bookkeeping: {f}");
            }
            let errno = e.errno();
            let what = format!("VFIO_IOMMU_MAP_DMA of {len} bytes at IOVA {iova:#x}");
            return Err(match errno {
                Some(libc::ENOMEM) => oom(
                    size,
                    format!(
                        "{what} could not pin the memory ({}): the locked-memory limit (RLIMIT_MEMLOCK, `ulimit -l`) is too low for a non-root process, or memory is exhausted",
                        e.source
                    ),
                ),
                Some(libc::ENOSPC) => oom(
                    size,
                    format!(
                        "{what}: the IOMMU's mapping limit is reached (vfio_iommu_type1 dma_entry_limit) ({})",
                        e.source
                    ),
                ),
                _ => DmaError::Os {
                    op: format!("{what} via {}", e.path.display()),
                    source: e.source,
                },
            });
        }
        let c = &self.shared.counters;
        (if huge { &c.huge } else { &c.small }).fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(len as u64, Ordering::Relaxed);
        tracing::debug!(iova, len, huge, "DMA mapping created");
        Ok(Mapping {
            mem,
            len,
            iova,
            huge,
            shared: Arc::clone(&self.shared),
        })
    }
}

impl DmaAllocator for VfioDma {
    fn allocate(&self, len: usize) -> Result<DmaBuf, DmaError> {
        let size = len
            .max(1)
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or_else(|| oom(len, "length overflows"))?;
        let mut buf = if size < CHUNK_BYTES {
            self.carve(size)?
        } else {
            self.dedicated(size)?
        };
        // The contract: the window is exactly `len`; the page-rounded slack is capacity.
        buf.set_window(0, len)?;
        Ok(buf)
    }

    fn page_size(&self) -> usize {
        PAGE_SIZE
    }

    fn domain(&self) -> u64 {
        self.shared.mapper.domain()
    }
}

/// A [`DmaMapper`] for host tests: records mappings, checks them, can be told to fail.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use crate::error::OsError;
    use std::collections::BTreeMap;
    use std::io;
    use std::sync::atomic::AtomicI32;

    pub(crate) struct FakeMapper {
        pub(crate) ranges: Vec<Range<u64>>,
        /// iova → (vaddr, len)
        pub(crate) maps: Mutex<BTreeMap<u64, (usize, usize)>>,
        /// errno the next map fails with (0: succeed)
        pub(crate) fail_map: AtomicI32,
        /// errno every unmap fails with (0: succeed)
        pub(crate) fail_unmap: AtomicI32,
        pub(crate) domain: u64,
    }

    impl FakeMapper {
        pub(crate) fn new(ranges: &[Range<u64>]) -> Arc<FakeMapper> {
            Arc::new(FakeMapper {
                ranges: ranges.to_vec(),
                maps: Mutex::new(BTreeMap::new()),
                fail_map: AtomicI32::new(0),
                fail_unmap: AtomicI32::new(0),
                domain: ironvme_nvme::hw::new_domain_id(),
            })
        }

        pub(crate) fn live(&self) -> usize {
            self.maps.lock().unwrap().len()
        }

        fn err(op: &'static str, errno: i32) -> OsError {
            OsError::new(op, "/dev/vfio/vfio", io::Error::from_raw_os_error(errno))
        }
    }

    impl DmaMapper for FakeMapper {
        unsafe fn map(&self, vaddr: NonNull<u8>, iova: u64, len: usize) -> Result<(), OsError> {
            let errno = self.fail_map.swap(0, Ordering::Relaxed);
            if errno != 0 {
                return Err(Self::err("VFIO_IOMMU_MAP_DMA", errno));
            }
            assert!(iova != 0 && iova % 4096 == 0 && len % 4096 == 0 && len > 0);
            assert!(vaddr.as_ptr() as usize % 4096 == 0);
            assert!(
                self.ranges
                    .iter()
                    .any(|r| r.start <= iova && iova + len as u64 <= r.end),
                "IOVA outside ranges"
            );
            let mut maps = self.maps.lock().unwrap();
            for (&i, &(_, l)) in maps.iter() {
                assert!(
                    iova + len as u64 <= i || i + l as u64 <= iova,
                    "overlapping IOVA mapping"
                );
            }
            maps.insert(iova, (vaddr.as_ptr() as usize, len));
            Ok(())
        }

        fn unmap(&self, iova: u64, len: usize) -> Result<(), OsError> {
            let errno = self.fail_unmap.load(Ordering::Relaxed);
            if errno != 0 {
                return Err(Self::err("VFIO_IOMMU_UNMAP_DMA", errno));
            }
            let mut maps = self.maps.lock().unwrap();
            match maps.remove(&iova) {
                Some((_, l)) if l == len => Ok(()),
                _ => Err(Self::err("VFIO_IOMMU_UNMAP_DMA", libc::EINVAL)),
            }
        }

        fn iova_ranges(&self) -> &[Range<u64>] {
            &self.ranges
        }

        fn domain(&self) -> u64 {
            self.domain
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeMapper;
    use super::*;
    use crate::iova::DEFAULT_IOVA_RANGE;
    use crate::pci::fake::FakeSysfs;

    const K4: usize = 4096;

    fn small_pages(mapper: &Arc<FakeMapper>) -> VfioDma {
        let options = DmaOptions {
            hugepages: HugePages::Never,
            ..Default::default()
        };
        VfioDma::new(Arc::clone(mapper) as Arc<dyn DmaMapper>, options).unwrap()
    }

    #[test]
    fn small_allocations_share_a_chunk() {
        let m = FakeMapper::new(&[DEFAULT_IOVA_RANGE]);
        let dma = small_pages(&m);
        let mut bufs: Vec<DmaBuf> = (0..600).map(|_| dma.allocate(K4).unwrap()).collect();
        // 512 carves of 4 KiB fill a 2 MiB chunk; 600 need two.
        assert_eq!(m.live(), 2);
        assert_eq!(dma.stats().chunks_created, 2);
        assert_eq!(dma.stats().small_page_mappings, 2);
        let mut iovas: Vec<u64> = bufs.iter().map(DmaBuf::iova).collect();
        assert!(iovas.iter().all(|&i| i != 0 && i % K4 as u64 == 0));
        iovas.sort_unstable();
        iovas.dedup();
        assert_eq!(iovas.len(), 600, "distinct IOVAs");
        for (i, b) in bufs.iter_mut().enumerate() {
            assert_eq!((b.len(), b.domain()), (K4, m.domain));
            assert!(b.as_slice().iter().all(|&x| x == 0), "zeroed");
            assert_eq!(b.as_ptr() as usize % K4, 0);
            b.as_mut_slice().fill(i as u8);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.as_slice().iter().all(|&x| x == i as u8), "carves do not overlap");
        }
        // The first chunk is freed once every carve of it is gone.
        bufs.drain(..512);
        assert_eq!(m.live(), 1);
        drop(bufs);
        assert_eq!(m.live(), 1, "the current chunk stays for reuse");
        drop(dma);
        assert_eq!(m.live(), 0, "dropping the allocator releases the idle chunk");
    }

    #[test]
    fn the_current_chunk_is_rewound_and_rezeroed() {
        let m = FakeMapper::new(&[DEFAULT_IOVA_RANGE]);
        let dma = small_pages(&m);
        let mut a = dma.allocate(3 * K4).unwrap();
        let first = a.iova();
        a.as_mut_slice().fill(0xff);
        drop(a);
        let b = dma.allocate(K4).unwrap();
        assert_eq!(b.iova(), first, "rewound");
        assert!(b.as_slice().iter().all(|&x| x == 0));
        let c = dma.allocate(2 * K4).unwrap();
        assert_eq!(c.iova(), first + K4 as u64);
        assert!(c.as_slice().iter().all(|&x| x == 0));
        assert_eq!(dma.stats().chunks_created, 1);
    }

    #[test]
    fn sizes_round_up_to_pages() {
        let m = FakeMapper::new(&[DEFAULT_IOVA_RANGE]);
        let dma = small_pages(&m);
        assert_eq!(dma.allocate(0).unwrap().capacity(), K4);
        assert_eq!(dma.allocate(1).unwrap().capacity(), K4);
        assert_eq!(dma.allocate(K4 + 1).unwrap().capacity(), 2 * K4);
        assert_eq!(dma.page_size(), K4);
        assert_eq!(DmaAllocator::domain(&dma), m.domain);
        assert!(matches!(dma.allocate(usize::MAX), Err(DmaError::OutOfMemory { .. })));
    }

    #[test]
    fn large_allocations_get_their_own_mapping() {
        let m = FakeMapper::new(&[DEFAULT_IOVA_RANGE]);
        let dma = small_pages(&m);
        let mut a = dma.allocate(2 << 20).unwrap();
        let b = dma.allocate(3 << 20).unwrap();
        assert_eq!((a.capacity(), b.capacity()), (2 << 20, 3 << 20));
        assert_eq!(m.live(), 2);
        assert_eq!(dma.stats().mapped_bytes, 5 << 20);
        assert_eq!(dma.stats().chunks_created, 0);
        a.as_mut_slice().fill(7);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        drop(a);
        assert_eq!(m.live(), 1);
        drop(b);
        assert_eq!((m.live(), dma.stats().mapped_bytes), (0, 0));
    }

    #[test]
    fn buffers_outlive_the_allocator() {
        let m = FakeMapper::new(&[DEFAULT_IOVA_RANGE]);
        let dma = small_pages(&m);
        let mut b = dma.allocate(K4).unwrap();
        drop(dma);
        b.as_mut_slice().fill(1);
        assert_eq!(m.live(), 1);
        drop(b);
        assert_eq!(m.live(), 0);
    }

    #[test]
    fn iova_zero_is_never_used_and_ranges_are_honoured() {
        let m = FakeMapper::new(&[0..0x40_0000, 0x80_0000..0x100_0000]);
        let dma = small_pages(&m);
        assert_eq!(dma.iova_ranges(), vec![0x1000..0x40_0000, 0x80_0000..0x100_0000]);
        let a = dma.allocate(K4).unwrap();
        assert_eq!(a.iova(), 0x1000);
        // 2 MiB chunk at 0x1000; a 3 MiB mapping no longer fits below the hole.
        let b = dma.allocate(3 << 20).unwrap();
        assert_eq!(b.iova(), 0x80_0000);
        let e = dma.allocate(6 << 20).unwrap_err();
        assert!(
            matches!(&e, DmaError::OutOfMemory { reason, .. } if reason.contains("IOVA space exhausted")),
            "{e}"
        );
    }

    #[test]
    fn map_failures_explain_the_memlock_limit_and_free_the_iova() {
        let m = FakeMapper::new(&[DEFAULT_IOVA_RANGE]);
        let dma = small_pages(&m);
        m.fail_map.store(libc::ENOMEM, Ordering::Relaxed);
        let e = dma.allocate(K4).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("ulimit -l") && msg.contains("RLIMIT_MEMLOCK"), "{msg}");
        m.fail_map.store(libc::EFAULT, Ordering::Relaxed);
        match dma.allocate(K4).unwrap_err() {
            DmaError::Os { op, source } => {
                assert_eq!(source.raw_os_error(), Some(libc::EFAULT));
                assert!(
                    op.contains("VFIO_IOMMU_MAP_DMA") && op.contains("/dev/vfio/vfio"),
                    "{op}"
                );
            }
            other => panic!("{other}"),
        }
        assert_eq!(
            dma.allocate(K4).unwrap().iova(),
            0x1000,
            "the failed attempts' IOVA was returned"
        );
    }

    #[test]
    fn failed_unmaps_retire_the_iova() {
        let m = FakeMapper::new(&[DEFAULT_IOVA_RANGE]);
        let dma = small_pages(&m);
        let a = dma.allocate(2 << 20).unwrap();
        let first = a.iova();
        m.fail_unmap.store(libc::EINVAL, Ordering::Relaxed);
        drop(a);
        assert_eq!(dma.stats().unmap_failures, 1);
        m.fail_unmap.store(0, Ordering::Relaxed);
        let b = dma.allocate(2 << 20).unwrap();
        assert_ne!(b.iova(), first, "a range whose unmap failed is not reused");
    }

    #[test]
    fn hugepages_are_tried_when_free_and_fall_back_to_small_pages() {
        let f = FakeSysfs::new();
        f.set_free_hugepages(64);
        let m = FakeMapper::new(&[DEFAULT_IOVA_RANGE]);
        let dma = VfioDma::new(
            Arc::clone(&m) as Arc<dyn DmaMapper>,
            DmaOptions {
                hugepages: HugePages::Auto,
                sysfs: f.sysfs(),
            },
        )
        .unwrap();
        let a = dma.allocate(K4).unwrap();
        let b = dma.allocate(3 << 20).unwrap();
        let s = dma.stats();
        // The build host may or may not have hugepages reserved; either way each mapping
        // either got them or fell back.
        assert_eq!(s.hugepage_mappings + s.hugepage_fallbacks, 2, "{s:?}");
        assert_eq!(s.hugepage_mappings + s.small_page_mappings, 2, "{s:?}");
        if s.hugepage_mappings == 2 {
            assert_eq!(b.iova() % HUGEPAGE_BYTES as u64, 0);
            assert_eq!(s.mapped_bytes, (2 << 20) + (4 << 20));
        }
        drop((a, b));
        // No free hugepages reported: not even tried.
        f.set_free_hugepages(0);
        let _c = dma.allocate(2 << 20).unwrap();
        assert_eq!(dma.stats().hugepage_fallbacks, s.hugepage_fallbacks);
    }

    #[test]
    fn allocation_is_thread_safe() {
        let m = FakeMapper::new(&[DEFAULT_IOVA_RANGE]);
        let dma = Arc::new(small_pages(&m));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let dma = Arc::clone(&dma);
                std::thread::spawn(move || {
                    let mut keep = Vec::new();
                    for i in 0..200 {
                        let mut b = dma.allocate(K4 * (1 + i % 3)).unwrap();
                        b.as_mut_slice().fill(t as u8);
                        if i % 2 == 0 {
                            keep.push(b);
                        }
                    }
                    keep.iter().all(|b| b.as_slice().iter().all(|&x| x == t as u8))
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap());
        }
    }
}
