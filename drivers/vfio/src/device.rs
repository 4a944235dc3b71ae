//! A VFIO device fd: device info, region info, reset, and region reads/writes.
//!
//! The device keeps its container (and so its group and the IOMMU domain) alive through
//! an `Arc`, so anything that holds the device — a mapped BAR, the config space — keeps
//! the whole VFIO stack open.

use crate::container::Container;
use crate::error::OsError;
use crate::ioctl::{self, RegionInfo};
use crate::pci::Bdf;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use vfio_bindings::bindings::vfio::{VFIO_DEVICE_FLAGS_PCI, VFIO_DEVICE_FLAGS_RESET};

/// An open VFIO device.
#[derive(Debug)]
pub struct Device {
    file: File,
    bdf: Bdf,
    group: u32,
    /// The group node, named in errors (the device fd itself has no path).
    path: PathBuf,
    flags: u32,
    num_regions: u32,
    num_irqs: u32,
    container: Arc<Container>,
    /// Set by [`Device::revoke`].
    revoked: AtomicBool,
}

impl Device {
    /// Gets the fd of `bdf` from the container's group `group` and reads the device info.
    ///
    /// Errors: ENODEV if the group is not attached to `container`; the OS error of
    /// `VFIO_GROUP_GET_DEVICE_FD` (EBUSY: already open) or `VFIO_DEVICE_GET_INFO`.
    pub fn open(container: Arc<Container>, group: u32, bdf: Bdf) -> Result<Device, OsError> {
        let Some(g) = container.group(group) else {
            let path = container.path().join(format!("(group {group})"));
            return Err(OsError::new(
                "VFIO_GROUP_GET_DEVICE_FD",
                path,
                io::Error::from_raw_os_error(libc::ENODEV),
            ));
        };
        let path = g.path().to_path_buf();
        let file = File::from(g.device_fd(bdf)?);
        let info = ioctl::device_get_info(file.as_fd()).map_err(|e| OsError::new("VFIO_DEVICE_GET_INFO", &path, e))?;
        tracing::debug!(%bdf, flags = info.flags, regions = info.num_regions, irqs = info.num_irqs, "VFIO device open");
        Ok(Device {
            file,
            bdf,
            group,
            path,
            flags: info.flags,
            num_regions: info.num_regions,
            num_irqs: info.num_irqs,
            container,
            revoked: AtomicBool::new(false),
        })
    }

    /// The device's PCI address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// Its IOMMU group number.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// The group node path (used in error messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `VFIO_DEVICE_FLAGS_*`.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// Whether VFIO describes a PCI device.
    pub fn is_pci(&self) -> bool {
        self.flags & VFIO_DEVICE_FLAGS_PCI != 0
    }

    /// Whether the device supports `VFIO_DEVICE_RESET`.
    pub fn supports_reset(&self) -> bool {
        self.flags & VFIO_DEVICE_FLAGS_RESET != 0
    }

    /// Number of regions (for PCI: BAR0..BAR5, ROM, config, VGA, device-specific).
    pub fn num_regions(&self) -> u32 {
        self.num_regions
    }

    /// Number of IRQ indexes (INTx, MSI, MSI-X, ERR, REQ for PCI).
    pub fn num_irqs(&self) -> u32 {
        self.num_irqs
    }

    /// The container the device's group is attached to.
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }

    /// `VFIO_DEVICE_GET_REGION_INFO` for region `index`, with sparse-mmap areas.
    pub fn region_info(&self, index: u32) -> Result<RegionInfo, OsError> {
        ioctl::device_get_region_info(self.file.as_fd(), index).map_err(|e| self.err("VFIO_DEVICE_GET_REGION_INFO", e))
    }

    /// `VFIO_DEVICE_RESET`. Check [`Self::supports_reset`] first.
    pub fn reset(&self) -> Result<(), OsError> {
        ioctl::device_reset(self.file.as_fd()).map_err(|e| self.err("VFIO_DEVICE_RESET", e))
    }

    /// Reads exactly `buf.len()` bytes at `offset` in the device fd (a region's offset
    /// plus the offset within the region).
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), OsError> {
        self.file.read_exact_at(buf, offset).map_err(|e| self.err("pread", e))
    }

    /// Writes all of `buf` at `offset` in the device fd.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<(), OsError> {
        self.file.write_all_at(buf, offset).map_err(|e| self.err("pwrite", e))
    }

    /// Gives the device back to the kernel while this `Device` (and whatever holds it)
    /// lives on, as a VFIO request interrupt asks ([`crate::notify`]): the device fd is
    /// replaced, atomically and under the same number, by an fd of `/dev/null`, so the
    /// kernel's last reference to the VFIO device file goes once the BARs are unmapped
    /// too ([`crate::bar::BarRevoker`]); the container refuses new DMA mappings and takes
    /// every unmap for done ([`Container::revoke`]). From here every ioctl on the device
    /// fails (ENOTTY), reads find end of file and writes are discarded (and report
    /// success), so drops skip their ioctls ([`Device::is_revoked`]). Idempotent.
    ///
    /// Errors: opening `/dev/null` or `dup3` failing; the device is then still held.
    pub fn revoke(&self) -> Result<(), OsError> {
        if self.revoked.load(Ordering::Acquire) {
            return Ok(());
        }
        let null = File::options()
            .read(true)
            .write(true)
            .open("/dev/null")
            .map_err(|e| self.err("open /dev/null", e))?;
        // Other threads may hold the device fd's number borrowed (MSI-X, the notifier, PCI
        // config reads): from here their calls reach /dev/null and fail (ioctl: ENOTTY,
        // read: end of file) or are discarded (write), which every caller handles.
        // SAFETY: both fds are open and owned (`null` here, the device fd by `self.file`,
        // which keeps the number); dup3 swaps the file behind it in one step, so no fd is
        // closed twice and the number never dangles or gets reused by another open.
        if unsafe { libc::dup3(null.as_raw_fd(), self.file.as_raw_fd(), libc::O_CLOEXEC) } < 0 {
            return Err(self.err("dup3", io::Error::last_os_error()));
        }
        self.revoked.store(true, Ordering::Release);
        self.container.revoke();
        tracing::info!(bdf = %self.bdf, "VFIO device fd released");
        Ok(())
    }

    /// Whether [`Device::revoke`] gave the device back.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    /// The device fd, for mmap.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// An [`OsError`] of `op` on this device.
    pub(crate) fn err(&self, op: &'static str, e: io::Error) -> OsError {
        OsError::new(op, &self.path, e)
    }
}
