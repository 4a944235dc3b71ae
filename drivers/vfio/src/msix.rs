//! MSI-X through VFIO: one eventfd per vector (`VFIO_DEVICE_SET_IRQS` on
//! `VFIO_PCI_MSIX_IRQ_INDEX` with `VFIO_IRQ_SET_DATA_EVENTFD`), as SPDK's and libvfn's
//! interrupt modes do. The kernel's vfio-pci takes each interrupt and adds 1 to the
//! vector's eventfd; a thread sleeps in `ppoll` on it and reads it to consume the signals.
//!
//! Vector 0 belongs to the admin queue, which the driver polls: it gets no eventfd, so
//! vfio-pci requests no host interrupt for it and admin completions cost none.

use crate::device::Device;
use crate::error::OsError;
use crate::ioctl;
use ironvme_nvme::InterruptVectors;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::time::TimeSpec;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::Duration;
use vfio_bindings::bindings::vfio::{VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_MSIX_IRQ_INDEX};

/// A device's MSI-X vectors `0..count`, enabled; vectors 1.. each signal their own eventfd
/// (vector 0, the admin queue's, signals nothing). Dropping it disables MSI-X again.
#[derive(Debug)]
pub struct MsixVectors {
    device: Arc<Device>,
    /// The eventfds of vectors 1..count (index v - 1).
    eventfds: Vec<EventFd>,
}

impl MsixVectors {
    /// Enables MSI-X on `device` with `wanted` vectors (2 at least: vector 0 and one for an
    /// I/O queue), or as many as its MSI-X table has if that is fewer
    /// (`VFIO_DEVICE_GET_IRQ_INFO` gives the table size).
    ///
    /// Errors: `VFIO_DEVICE_GET_IRQ_INFO` failing; `InvalidInput` when the device has fewer
    /// than 2 MSI-X vectors (0: no MSI-X capability), VFIO does not signal them through
    /// eventfds, or `wanted` is below 2; `eventfd` failing; `VFIO_DEVICE_SET_IRQS` failing
    /// (e.g. ENOSPC when the host has no interrupt vectors left).
    pub fn enable(device: Arc<Device>, wanted: u16) -> Result<MsixVectors, OsError> {
        let info = ioctl::device_get_irq_info(device.file().as_fd(), VFIO_PCI_MSIX_IRQ_INDEX)
            .map_err(|e| device.err("VFIO_DEVICE_GET_IRQ_INFO", e))?;
        let count = (wanted as u32).min(info.count);
        if count < 2 || info.flags & VFIO_IRQ_INFO_EVENTFD == 0 {
            let why = format!(
                "MSI-X: the device has {} vectors (VFIO flags {:#x}) and {wanted} were wanted; interrupt mode \
                 needs 2 signalled through eventfds",
                info.count, info.flags
            );
            return Err(device.err(
                "VFIO_DEVICE_GET_IRQ_INFO",
                io::Error::new(io::ErrorKind::InvalidInput, why),
            ));
        }
        let eventfds = (1..count)
            .map(|_| {
                EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                    .map_err(|e| device.err("eventfd", io::Error::from(e)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // -1: vector 0 signals nothing.
        let fds: Vec<i32> = std::iter::once(-1)
            .chain(eventfds.iter().map(|f| f.as_raw_fd()))
            .collect();
        ioctl::device_set_irq_eventfds(device.file().as_fd(), VFIO_PCI_MSIX_IRQ_INDEX, 0, &fds)
            .map_err(|e| device.err("VFIO_DEVICE_SET_IRQS", e))?;
        tracing::debug!(bdf = %device.bdf(), vectors = count, table = info.count, "MSI-X enabled");
        Ok(MsixVectors { device, eventfds })
    }

    fn eventfd(&self, vector: u16) -> io::Result<&EventFd> {
        (vector as usize)
            .checked_sub(1)
            .and_then(|i| self.eventfds.get(i))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("no eventfd for MSI-X vector {vector}"),
                )
            })
    }
}

impl InterruptVectors for MsixVectors {
    fn count(&self) -> u16 {
        self.eventfds.len() as u16 + 1
    }

    fn wait(&self, vector: u16, timeout: Duration) -> io::Result<bool> {
        let fd = self.eventfd(vector)?;
        let mut pfd = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match ppoll(&mut pfd, Some(TimeSpec::from_duration(timeout)), None) {
            Ok(0) | Err(Errno::EINTR) => return Ok(false),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        // Only the thread that owns the queue reads its eventfd, so POLLIN means the read
        // finds a count; EAGAIN all the same is a spurious wake-up, not an error.
        match fd.read() {
            Ok(_) => Ok(true),
            Err(Errno::EAGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn kick(&self, vector: u16) {
        if let Ok(fd) = self.eventfd(vector) {
            // Only fails when the count would overflow, and then a waiter wakes anyway.
            let _ = fd.write(1);
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
