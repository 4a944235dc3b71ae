//! MSI-X through VFIO: one eventfd per vector (`VFIO_DEVICE_SET_IRQS` on
//! `VFIO_PCI_MSIX_IRQ_INDEX` with `VFIO_IRQ_SET_DATA_EVENTFD`), as SPDK's and libvfn's
//! interrupt modes do. The kernel's vfio-pci takes each interrupt and adds 1 to the
//! vector's eventfd; a thread sleeps in `ppoll` on it and reads it to consume the signals.

use crate::device::Device;
use crate::error::OsError;
use crate::ioctl;
use ironvme_nvme::InterruptVectors;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use vfio_bindings::bindings::vfio::{VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_MSIX_IRQ_INDEX};

/// A device's MSI-X vectors `0..count`, enabled, each signalling its own eventfd. Dropping
/// it disables MSI-X again.
#[derive(Debug)]
pub struct MsixVectors {
    device: Arc<Device>,
    eventfds: Vec<OwnedFd>,
}

impl MsixVectors {
    /// Enables MSI-X on `device` with `wanted` vectors, or as many as its MSI-X table has
    /// if that is fewer (`VFIO_DEVICE_GET_IRQ_INFO` gives the table size).
    ///
    /// Errors: `VFIO_DEVICE_GET_IRQ_INFO` or `VFIO_DEVICE_SET_IRQS` failing (ENOTSUP or
    /// EINVAL when the device has no MSI-X or the host cannot allocate the interrupts),
    /// EINVAL when VFIO does not deliver MSI-X by eventfd or `wanted` is 0, and `eventfd`
    /// failing.
    pub fn enable(device: Arc<Device>, wanted: u16) -> Result<MsixVectors, OsError> {
        let err = |op, e| OsError::new(op, device.path(), e);
        let info = ioctl::device_get_irq_info(device.file().as_fd(), VFIO_PCI_MSIX_IRQ_INDEX)
            .map_err(|e| err("VFIO_DEVICE_GET_IRQ_INFO", e))?;
        let count = (wanted as u32).min(info.count);
        if count == 0 || info.flags & VFIO_IRQ_INFO_EVENTFD == 0 {
            let why = format!(
                "MSI-X: the device has {} vectors (flags {:#x}), {wanted} wanted; none usable through eventfds",
                info.count, info.flags
            );
            return Err(err(
                "VFIO_DEVICE_GET_IRQ_INFO",
                io::Error::new(io::ErrorKind::InvalidInput, why),
            ));
        }
        let eventfds = (0..count)
            .map(|_| {
                // SAFETY: eventfd takes no pointers; a non-negative return is a new fd
                // nobody else owns.
                let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
                if fd < 0 {
                    return Err(err("eventfd", io::Error::last_os_error()));
                }
                // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let raw: Vec<i32> = eventfds.iter().map(|f| f.as_raw_fd()).collect();
        ioctl::device_set_irq_eventfds(device.file().as_fd(), VFIO_PCI_MSIX_IRQ_INDEX, 0, &raw)
            .map_err(|e| err("VFIO_DEVICE_SET_IRQS", e))?;
        tracing::debug!(bdf = %device.bdf(), vectors = count, table = info.count, "MSI-X enabled");
        Ok(MsixVectors { device, eventfds })
    }
}

impl InterruptVectors for MsixVectors {
    fn count(&self) -> u16 {
        self.eventfds.len() as u16
    }

    fn wait(&self, vector: u16, timeout: Duration) -> io::Result<bool> {
        let fd = self
            .eventfds
            .get(vector as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no MSI-X vector {vector}")))?;
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `pfd` and `ts` are live locals; ppoll reads one pollfd, writes its
        // revents, and reads the timespec; a null sigmask leaves the mask alone.
        let r = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            // A signal ends the sleep early; the caller polls and waits again.
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        if r == 0 {
            return Ok(false);
        }
        let mut count = 0u64;
        // SAFETY: reads 8 bytes (an eventfd's counter) into a live u64.
        let n = unsafe { libc::read(fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        if n == 8 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        // Only this thread reads the eventfd, so EAGAIN cannot follow POLLIN; treat it as
        // a spurious wake-up all the same.
        if n < 0 && e.kind() == io::ErrorKind::WouldBlock {
            Ok(false)
        } else {
            Err(e)
        }
    }
}

impl Drop for MsixVectors {
    fn drop(&mut self) {
        if let Err(e) = ioctl::device_set_irq_eventfds(self.device.file().as_fd(), VFIO_PCI_MSIX_IRQ_INDEX, 0, &[]) {
            tracing::warn!(bdf = %self.device.bdf(), error = %e, "could not disable MSI-X");
        }
    }
}
