//! The IOMMU as the DMA allocator sees it: map, unmap, and the valid IOVA ranges.
//!
//! [`DmaMapper`] is the only thing [`crate::dma::VfioDma`] knows about the IOMMU. Today
//! it is implemented by the legacy type1v2 container ([`crate::container::Container`]:
//! `/dev/vfio/vfio` + `/dev/vfio/<group>`, `VFIO_IOMMU_MAP_DMA`). Kernels 6.6 and later
//! also offer iommufd with VFIO device cdevs (`/dev/iommu` + `/dev/vfio/devices/vfioN`:
//! `IOMMU_IOAS_ALLOC`, `VFIO_DEVICE_BIND_IOMMUFD`, `VFIO_DEVICE_ATTACH_IOMMUFD_PT`,
//! `IOMMU_IOAS_MAP` with a fixed IOVA, `IOMMU_IOAS_IOVA_RANGES`), and some kernels are
//! built without the group interface at all. That path is added by implementing
//! `DmaMapper` for an IOAS and opening the device through its cdev; the DMA allocator,
//! the BAR mapping and the NVMe driver do not change.

use crate::error::OsError;
use std::ops::Range;
use std::ptr::NonNull;

/// An IOMMU address space that process memory can be mapped into.
pub trait DmaMapper: Send + Sync {
    /// Maps `len` bytes of process memory at `vaddr` to `iova`, readable and writable by
    /// the devices attached to this address space. The pages are pinned (and charged to
    /// `RLIMIT_MEMLOCK` unless the process has `CAP_IPC_LOCK`) until unmapped.
    ///
    /// # Safety
    ///
    /// `vaddr..vaddr + len` must be memory the caller owns and keeps mapped until
    /// [`DmaMapper::unmap`] removes this mapping; the caller must not rely on that memory
    /// staying unchanged (no Rust reference may assume it is not written) while it is
    /// mapped, since a device may write it at any time.
    unsafe fn map(&self, vaddr: NonNull<u8>, iova: u64, len: usize) -> Result<(), OsError>;

    /// Removes the mapping of `len` bytes at `iova` made by [`DmaMapper::map`].
    fn unmap(&self, iova: u64, len: usize) -> Result<(), OsError>;

    /// The IOVA ranges this address space can map, half-open and sorted.
    fn iova_ranges(&self) -> &[Range<u64>];

    /// The DMA domain id of this address space (from
    /// [`ironvme_nvme::hw::new_domain_id`]): buffers mapped here are valid only for
    /// devices attached to it.
    fn domain(&self) -> u64;

    /// The smallest IOMMU page size in bytes (at least 4096): IOVAs and lengths are
    /// multiples of it.
    fn min_page_size(&self) -> u64 {
        4096
    }
}
