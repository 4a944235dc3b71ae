//! MSI-X through VFIO: an eventfd per I/O queue's vector (`VFIO_DEVICE_SET_IRQS` on
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
use std::path::Path;
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
        // TimeSpec does not clamp: a timeout past i64 seconds would turn negative (EINVAL).
        let timeout = timeout.min(Duration::from_secs(i32::MAX as u64));
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

    fn steer(&self, vector: u16, cpu: usize) -> io::Result<()> {
        self.eventfd(vector)?;
        let irq = irq_of(Path::new("/sys"), &self.device.bdf().to_string(), vector)?;
        let path = format!("/proc/irq/{irq}/smp_affinity_list");
        std::fs::write(&path, format!("{cpu}\n")).map_err(|e| io::Error::new(e.kind(), format!("{path}: {e}")))?;
        tracing::debug!(bdf = %self.device.bdf(), vector, irq, cpu, "MSI-X vector steered");
        Ok(())
    }

    fn kick(&self, vector: u16) {
        if let Ok(fd) = self.eventfd(vector) {
            // Only fails when the count would overflow, and then a waiter wakes anyway.
            let _ = fd.write(1);
        }
    }
}

/// The host IRQ number of MSI-X vector `vector` of device `bdf` as vfio-pci requested it:
/// the entry of `SYSFS/bus/pci/devices/BDF/msi_irqs/` whose handler
/// (`SYSFS/kernel/irq/N/actions`) is named `vfio-msix[VECTOR](BDF)`
/// (`drivers/vfio/pci/vfio_pci_intrs.c`).
///
/// Errors: `NotFound` when no IRQ of the device has that handler (MSI-X off, or the
/// vector has no eventfd); the OS error of reading the directory.
fn irq_of(sysfs: &Path, bdf: &str, vector: u16) -> io::Result<u32> {
    let name = format!("vfio-msix[{vector}]({bdf})");
    let dir = sysfs.join("bus/pci/devices").join(bdf).join("msi_irqs");
    for entry in std::fs::read_dir(&dir).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))? {
        let Some(irq) = entry?.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let actions = std::fs::read_to_string(sysfs.join(format!("kernel/irq/{irq}/actions"))).unwrap_or_default();
        if actions.split(',').any(|a| a.trim() == name) {
            return Ok(irq);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no IRQ of {bdf} is {name}"),
    ))
}

impl Drop for MsixVectors {
    fn drop(&mut self) {
        if self.device.is_revoked() {
            return; // vfio-pci disabled MSI-X itself when it got the device back
        }
        if let Err(e) = ioctl::device_set_irq_eventfds(self.device.file().as_fd(), VFIO_PCI_MSIX_IRQ_INDEX, 0, &[]) {
            tracing::warn!(bdf = %self.device.bdf(), error = %e, "could not disable MSI-X");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_irq_of_a_vector_is_found_by_its_handler_name() {
        let sys = tempfile::tempdir().unwrap();
        let bdf = "0000:00:05.0";
        let msi = sys.path().join("bus/pci/devices").join(bdf).join("msi_irqs");
        std::fs::create_dir_all(&msi).unwrap();
        for (irq, actions) in [
            (33, "vfio-msix[1](0000:00:05.0)\n"),
            (34, "vfio-msix[2](0000:00:05.0)\n"),
            (35, ""),
        ] {
            std::fs::write(msi.join(irq.to_string()), "msix\n").unwrap();
            let d = sys.path().join(format!("kernel/irq/{irq}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("actions"), actions).unwrap();
        }
        std::fs::write(msi.join("not-a-number"), "").unwrap();
        assert_eq!(irq_of(sys.path(), bdf, 2).unwrap(), 34);
        assert_eq!(irq_of(sys.path(), bdf, 1).unwrap(), 33);
        assert_eq!(irq_of(sys.path(), bdf, 3).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(
            irq_of(sys.path(), "0000:00:06.0", 1).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
