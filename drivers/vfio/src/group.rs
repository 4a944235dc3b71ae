//! A VFIO group: `/dev/vfio/<N>`, the unit of isolation the IOMMU gives us.
//!
//! Opening the group node is exclusive (a second open, even in the same process, fails
//! with EBUSY). The group must be *viable* — every device in it bound to vfio-pci or to
//! no driver — before it can be attached to a container
//! ([`crate::container::Container::attach`]); after that, device fds are obtained by
//! name ([`Group::device_fd`]).

use crate::error::OsError;
use crate::ioctl;
use crate::pci::Bdf;
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use vfio_bindings::bindings::vfio::{VFIO_GROUP_FLAGS_CONTAINER_SET, VFIO_GROUP_FLAGS_VIABLE};

/// An open VFIO group.
#[derive(Debug)]
pub struct Group {
    file: File,
    number: u32,
    path: PathBuf,
}

impl Group {
    /// Opens `<dev_vfio>/<number>` (normally `/dev/vfio/<number>`) read-write.
    ///
    /// Errors: the OS error of `open`: ENOENT (no such group node), EACCES/EPERM (no
    /// access), EBUSY (already open elsewhere).
    pub fn open(dev_vfio: &Path, number: u32) -> Result<Group, OsError> {
        let path = dev_vfio.join(number.to_string());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| OsError::new("open", &path, e))?;
        Ok(Group { file, number, path })
    }

    /// The group number.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The group node's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `VFIO_GROUP_GET_STATUS`: the `VFIO_GROUP_FLAGS_*` bits.
    pub fn status(&self) -> Result<u32, OsError> {
        ioctl::group_get_status(self.file.as_fd()).map_err(|e| self.err("VFIO_GROUP_GET_STATUS", e))
    }

    /// Whether every device in the group is bound to vfio-pci or to no driver.
    pub fn is_viable(&self) -> Result<bool, OsError> {
        Ok(self.status()? & VFIO_GROUP_FLAGS_VIABLE != 0)
    }

    /// Whether the group is attached to a container.
    pub fn has_container(&self) -> Result<bool, OsError> {
        Ok(self.status()? & VFIO_GROUP_FLAGS_CONTAINER_SET != 0)
    }

    /// `VFIO_GROUP_SET_CONTAINER`: attaches the group to the container `container`.
    pub(crate) fn set_container(&self, container: BorrowedFd<'_>) -> Result<(), OsError> {
        ioctl::group_set_container(self.file.as_fd(), container).map_err(|e| self.err("VFIO_GROUP_SET_CONTAINER", e))
    }

    /// `VFIO_GROUP_GET_DEVICE_FD`: the device fd of `bdf`, which must be in this group.
    /// The group must be attached to a container with its IOMMU set.
    ///
    /// Errors: EBUSY if the device is already open; EINVAL/ENODEV if it is not in the
    /// group.
    pub fn device_fd(&self, bdf: Bdf) -> Result<OwnedFd, OsError> {
        let name =
            CString::new(bdf.to_string()).map_err(|e| self.err("VFIO_GROUP_GET_DEVICE_FD", io::Error::other(e)))?;
        ioctl::group_get_device_fd(self.file.as_fd(), &name).map_err(|e| self.err("VFIO_GROUP_GET_DEVICE_FD", e))
    }

    fn err(&self, op: &'static str, e: io::Error) -> OsError {
        OsError::new(op, &self.path, e)
    }
}
