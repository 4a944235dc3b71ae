//! Buffer memory for the kernel backends.
//!
//! The kernel backends move data through host memory the kernel reads and writes itself,
//! so a "DMA buffer" here is page-aligned anonymous memory: aligned enough for `O_DIRECT`
//! on any device (4 KiB), and one `mmap` per allocation so io_uring can register each
//! allocation as a fixed buffer. The IOVA of a kernel buffer is its host address.
//!
//! Allocate a few large regions and split them ([`DmaBuf::into_chunks`]) rather than many
//! small ones: each region costs an `mmap` and, on io_uring, a registered-buffer slot.

use ironvme_nvme::hw::{DmaAllocator, DmaBuf, DmaError, DmaRegion, new_domain_id};
use memmap2::{MmapMut, MmapOptions};
use std::ptr::NonNull;
use std::sync::Arc;

/// Page size and alignment of kernel buffers, in bytes.
pub const PAGE_SIZE: usize = 4096;
/// Size of a 2 MiB hugepage, in bytes.
pub const HUGEPAGE_SIZE: usize = 2 << 20;

/// Allocates buffer memory for the kernel backends.
#[derive(Debug)]
pub struct KernelDma {
    domain: u64,
    hugepages: bool,
}

impl KernelDma {
    /// An allocator. With `hugepages`, allocations of 2 MiB or more try 2 MiB hugepages
    /// first (`MAP_HUGETLB`) and fall back to 4 KiB pages when none are reserved.
    pub fn new(hugepages: bool) -> KernelDma {
        KernelDma {
            domain: new_domain_id(),
            hugepages,
        }
    }
}

/// One anonymous mapping.
struct KernelRegion {
    map: MmapMut,
    domain: u64,
}

// SAFETY: the mapping is private to this region, valid until it drops, and `len` bytes
// long; the "IOVA" of host memory the kernel accesses itself is its address.
unsafe impl DmaRegion for KernelRegion {
    fn vaddr(&self) -> NonNull<u8> {
        NonNull::new(self.map.as_ptr() as *mut u8).expect("mmap never returns null")
    }
    fn iova(&self) -> u64 {
        self.map.as_ptr() as u64
    }
    fn len(&self) -> usize {
        self.map.len()
    }
    fn domain(&self) -> u64 {
        self.domain
    }
}

impl DmaAllocator for KernelDma {
    fn allocate(&self, len: usize) -> Result<DmaBuf, DmaError> {
        let size = len
            .max(1)
            .checked_next_multiple_of(PAGE_SIZE)
            .ok_or_else(|| DmaError::OutOfMemory {
                len,
                reason: "length overflows".into(),
            })?;
        let huge = self.hugepages && size >= HUGEPAGE_SIZE;
        let map = if huge {
            let huge_size = size.next_multiple_of(HUGEPAGE_SIZE);
            MmapOptions::new()
                .len(huge_size)
                .huge(Some(21))
                .map_anon()
                .or_else(|_| MmapOptions::new().len(size).map_anon())
        } else {
            MmapOptions::new().len(size).map_anon()
        }
        .map_err(|source| DmaError::Os {
            op: format!("mmap {size} bytes of buffer memory"),
            source,
        })?;
        let mut buf = DmaBuf::from_region(Arc::new(KernelRegion {
            map,
            domain: self.domain,
        }));
        buf.set_window(0, len)?;
        Ok(buf)
    }

    fn page_size(&self) -> usize {
        PAGE_SIZE
    }

    fn domain(&self) -> u64 {
        self.domain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_page_aligned_zeroed_and_exactly_as_long_as_asked() {
        let dma = KernelDma::new(false);
        let b = dma.allocate(10_000).unwrap();
        assert_eq!((b.len(), b.capacity()), (10_000, 12_288));
        assert_eq!(b.as_ptr() as usize % PAGE_SIZE, 0);
        assert_eq!(b.iova(), b.as_ptr() as u64);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        assert_eq!(b.domain(), dma.domain());
    }

    #[test]
    fn hugepage_requests_fall_back_when_none_are_reserved() {
        let dma = KernelDma::new(true);
        let b = dma.allocate(HUGEPAGE_SIZE).unwrap();
        assert_eq!(b.len(), HUGEPAGE_SIZE);
        let chunks = b.into_chunks(4096, 512).unwrap();
        assert_eq!(chunks.len(), 512);
    }
}
