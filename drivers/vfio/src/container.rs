//! The legacy VFIO container (`/dev/vfio/vfio`) with the Type1v2 IOMMU backend.
//!
//! Sequence (Documentation/driver-api/vfio.rst): open the container, check
//! `VFIO_GET_API_VERSION` and `VFIO_CHECK_EXTENSION(VFIO_TYPE1v2_IOMMU)`; open and check
//! a group ([`crate::group::Group`]); attach it with `VFIO_GROUP_SET_CONTAINER`; on the
//! first group, `VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU)`; then `VFIO_IOMMU_GET_INFO` for the
//! valid IOVA ranges. The container then maps DMA memory for every device of its groups:
//! it implements [`DmaMapper`]. It owns its groups, so as long as the container lives
//! they stay attached and its mappings stay valid.
//!
//! The container is one DMA domain ([`DmaMapper::domain`]). The iommufd / vfio-cdev
//! alternative (kernels 6.6+) is described in [`crate::iommu`].

use crate::error::{Error, OsError};
use crate::group::Group;
use crate::ioctl::{self, IommuInfo};
use crate::iommu::DmaMapper;
use crate::iova::DEFAULT_IOVA_RANGE;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use vfio_bindings::bindings::vfio::{VFIO_API_VERSION, VFIO_TYPE1v2_IOMMU};

/// The container node.
pub const CONTAINER_PATH: &str = "/dev/vfio/vfio";

/// A VFIO container using the Type1v2 IOMMU backend.
#[derive(Debug)]
pub struct Container {
    file: File,
    path: PathBuf,
    groups: Vec<Group>,
    info: Option<IommuInfo>,
    iova_ranges: Vec<Range<u64>>,
    domain: u64,
    /// Set by [`Container::revoke`].
    revoked: AtomicBool,
}

impl Container {
    /// Opens the container node `path` (normally [`CONTAINER_PATH`]) and checks the API
    /// version and Type1v2 support.
    ///
    /// Errors: [`Error::Os`] if the node cannot be opened (errno kept);
    /// [`Error::ApiVersion`]; [`Error::NoType1v2`].
    pub fn open(path: &Path) -> Result<Container, Error> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| OsError::new("open", path, e))?;
        let err = |op, e| OsError::new(op, path, e);
        let version = ioctl::get_api_version(file.as_fd()).map_err(|e| err("VFIO_GET_API_VERSION", e))?;
        if version != VFIO_API_VERSION as i32 {
            return Err(Error::ApiVersion {
                path: path.into(),
                found: version,
                expected: VFIO_API_VERSION,
            });
        }
        let type1v2 =
            ioctl::check_extension(file.as_fd(), VFIO_TYPE1v2_IOMMU).map_err(|e| err("VFIO_CHECK_EXTENSION", e))?;
        if !type1v2 {
            return Err(Error::NoType1v2 { path: path.into() });
        }
        Ok(Container {
            file,
            path: path.into(),
            groups: Vec::new(),
            info: None,
            iova_ranges: Vec::new(),
            domain: ironvme_nvme::hw::new_domain_id(),
            revoked: AtomicBool::new(false),
        })
    }

    /// Attaches `group` (which must be viable) and keeps it open for the container's
    /// lifetime. The first group also selects the Type1v2 IOMMU and reads the IOMMU's
    /// valid IOVA ranges.
    ///
    /// Errors: the failing ioctl's OS error (EBUSY from `VFIO_GROUP_SET_CONTAINER`: the
    /// group already belongs to a container).
    pub fn attach(&mut self, group: Group) -> Result<(), OsError> {
        group.set_container(self.file.as_fd())?;
        if self.groups.is_empty() {
            // A failure here leaves the group attached; dropping it (closing its fd)
            // detaches it again.
            ioctl::set_iommu(self.file.as_fd(), VFIO_TYPE1v2_IOMMU).map_err(|e| self.err("VFIO_SET_IOMMU", e))?;
            let info = ioctl::iommu_get_info(self.file.as_fd()).map_err(|e| self.err("VFIO_IOMMU_GET_INFO", e))?;
            self.iova_ranges = info.iova_ranges.clone().unwrap_or_else(|| vec![DEFAULT_IOVA_RANGE]);
            tracing::debug!(ranges = ?self.iova_ranges, pgsizes = ?info.iova_pgsizes, "type1v2 IOMMU set");
            self.info = Some(info);
        }
        self.groups.push(group);
        Ok(())
    }

    /// The container node's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The attached group `number`, if any.
    pub fn group(&self, number: u32) -> Option<&Group> {
        self.groups.iter().find(|g| g.number() == number)
    }

    /// What `VFIO_IOMMU_GET_INFO` reported, once a group is attached.
    pub fn iommu_info(&self) -> Option<&IommuInfo> {
        self.info.as_ref()
    }

    /// Whether the IOMMU reported its valid IOVA ranges (else [`DEFAULT_IOVA_RANGE`]
    /// are assumed).
    pub fn iova_ranges_reported(&self) -> bool {
        self.info.as_ref().is_some_and(|i| i.iova_ranges.is_some())
    }

    /// The container fd.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Marks the container's device as given back to the kernel
    /// ([`crate::device::Device::revoke`]): from here [`DmaMapper::map`] fails with ENODEV
    /// and [`DmaMapper::unmap`] succeeds whatever `VFIO_IOMMU_UNMAP_DMA` says. When the
    /// kernel finishes removing the device it detaches the group, and the type1 IOMMU
    /// driver then unmaps and unpins everything itself; later unmaps fail with EINVAL,
    /// which is not a leak. The device can no longer reach the memory: vfio-pci clears
    /// its Bus Master Enable when the last device fd closes.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    fn err(&self, op: &'static str, e: io::Error) -> OsError {
        OsError::new(op, &self.path, e)
    }
}

impl DmaMapper for Container {
    unsafe fn map(&self, vaddr: NonNull<u8>, iova: u64, len: usize) -> Result<(), OsError> {
        if self.revoked.load(Ordering::Acquire) {
            // The device was given back to the kernel.
            return Err(self.err("VFIO_IOMMU_MAP_DMA", io::Error::from_raw_os_error(libc::ENODEV)));
        }
        // SAFETY: forwarded from this function's contract: the caller owns the memory and
        // keeps it mapped until `unmap`.
        unsafe { ioctl::iommu_map_dma(self.file.as_fd(), vaddr.as_ptr() as u64, iova, len as u64) }
            .map_err(|e| self.err("VFIO_IOMMU_MAP_DMA", e))
    }

    fn unmap(&self, iova: u64, len: usize) -> Result<(), OsError> {
        if self.revoked.load(Ordering::Acquire) {
            // Whatever it answers, the kernel unmaps and unpins the range when the group
            // is detached (see `revoke`).
            let _ = ioctl::iommu_unmap_dma(self.file.as_fd(), iova, len as u64);
            return Ok(());
        }
        let done = ioctl::iommu_unmap_dma(self.file.as_fd(), iova, len as u64)
            .map_err(|e| self.err("VFIO_IOMMU_UNMAP_DMA", e))?;
        if done != len as u64 {
            let msg = format!("unmapped {done} of {len} bytes at IOVA {iova:#x}");
            return Err(self.err("VFIO_IOMMU_UNMAP_DMA", io::Error::other(msg)));
        }
        Ok(())
    }

    fn iova_ranges(&self) -> &[Range<u64>] {
        &self.iova_ranges
    }

    fn domain(&self) -> u64 {
        self.domain
    }

    fn min_page_size(&self) -> u64 {
        // The smallest page size the IOMMU supports, but never below 4 KiB.
        let pgsizes = self.info.as_ref().and_then(|i| i.iova_pgsizes).unwrap_or(4096);
        if pgsizes == 0 {
            4096
        } else {
            (1u64 << pgsizes.trailing_zeros()).max(4096)
        }
    }
}
