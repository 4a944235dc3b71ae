//! The device's two notification interrupts from vfio-pci
//! (`drivers/vfio/pci/vfio_pci_intrs.c`, `include/uapi/linux/vfio.h`):
//!
//! - **REQ** (`VFIO_PCI_REQ_IRQ_INDEX`): the kernel wants the device back — a hot-unplug
//!   (`device_del`, a surprise removal seen by pciehp or acpiphp), an unbind from
//!   vfio-pci, or `echo 1 > /sys/bus/pci/devices/BDF/remove`. The removal blocks until the
//!   user closes the device fd and unmaps its BARs; vfio-pci signals again every 10 s
//!   until then. Without a handler the removing task hangs until the process exits.
//! - **ERR** (`VFIO_PCI_ERR_IRQ_INDEX`, PCI Express devices only): AER or DPC recovery
//!   found an uncorrectable error (non-fatal or fatal) on the device.
//!
//! [`DeviceNotifier`] registers an eventfd for each and runs a thread that sleeps in
//! `ppoll` on them and hands each signal to a handler as a [`Notice`]. This is what
//! DPDK's `pci_vfio_enable_notifier` does for SPDK's hot-remove; libvfn has no equivalent.

use crate::config::PciConfig;
use crate::device::Device;
use crate::error::OsError;
use crate::ioctl;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use vfio_bindings::bindings::vfio::{VFIO_IRQ_INFO_EVENTFD, VFIO_PCI_ERR_IRQ_INDEX, VFIO_PCI_REQ_IRQ_INDEX};

/// What vfio-pci signalled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The kernel asks for the device back (REQ). The handler must make the process
    /// release it: [`Device::revoke`] and [`crate::bar::BarRevoker::revoke`].
    RemovalRequested {
        /// Requests so far, this one included (vfio-pci repeats it every 10 s).
        requests: u64,
    },
    /// An uncorrectable PCI Express error was reported for the device (ERR).
    PciError {
        /// The PCI Express Device Status register read just after
        /// ([`PciConfig::pcie_device_status`]); `None` if it could not be read or read all
        /// ones.
        device_status: Option<u16>,
    },
}

/// The interrupts a [`DeviceNotifier`] listens to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeIrq {
    /// `VFIO_PCI_REQ_IRQ_INDEX`.
    Request,
    /// `VFIO_PCI_ERR_IRQ_INDEX`.
    Error,
}

impl NoticeIrq {
    fn index(self) -> u32 {
        match self {
            NoticeIrq::Request => VFIO_PCI_REQ_IRQ_INDEX,
            NoticeIrq::Error => VFIO_PCI_ERR_IRQ_INDEX,
        }
    }
}

/// REQ and ERR eventfds registered with vfio-pci, and the thread (`vfio-notify`) that
/// hands their signals to a handler. Dropping it unregisters them (unless the device was
/// revoked) and stops the thread.
#[derive(Debug)]
pub struct DeviceNotifier {
    device: Arc<Device>,
    /// Whether the ERR interrupt is registered (PCI Express devices only).
    error_irq: bool,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceNotifier {
    /// Registers an eventfd for REQ and, on a PCI Express device, one for ERR, and starts
    /// the thread that calls `handler` with each [`Notice`], in order, one at a time.
    ///
    /// Errors: `VFIO_DEVICE_GET_IRQ_INFO` or `VFIO_DEVICE_SET_IRQS` failing for REQ, or
    /// `InvalidInput` if VFIO does not signal REQ through an eventfd; `eventfd` failing;
    /// the thread not starting. ERR missing (EINVAL: not PCI Express) is not an error.
    pub fn enable(
        device: Arc<Device>,
        handler: impl FnMut(Notice) + Send + 'static,
    ) -> Result<DeviceNotifier, OsError> {
        let stop = Arc::new(new_eventfd(&device)?);
        let request = register(&device, NoticeIrq::Request)?
            .ok_or_else(|| device.err("VFIO_DEVICE_GET_IRQ_INFO", io::Error::from_raw_os_error(libc::EINVAL)))?;
        let error = match register(&device, NoticeIrq::Error) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(bdf = %device.bdf(), error = %e, "PCI error interrupt not registered");
                None
            }
        };
        // From here a failure drops `notifier`, which unregisters both eventfds.
        let mut notifier = DeviceNotifier {
            error_irq: error.is_some(),
            device: Arc::clone(&device),
            stop: Arc::clone(&stop),
            thread: None,
        };
        let config = PciConfig::new(Arc::clone(&device)).ok();
        let name = format!("vfio-notify-{}", device.bdf());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || listen(request, error, &stop, config, handler))
            .map_err(|e| device.err("spawn", e))?;
        notifier.thread = Some(thread);
        tracing::debug!(bdf = %device.bdf(), error_irq = notifier.error_irq, "VFIO device notifier running");
        Ok(notifier)
    }

    /// Whether the ERR interrupt is registered (false on a device that is not PCI
    /// Express).
    pub fn has_error_irq(&self) -> bool {
        self.error_irq
    }

    /// Makes vfio-pci signal `irq`'s eventfd now, as it would for a real request or error
    /// (`VFIO_IRQ_SET_DATA_NONE` with count 1: the kernel's loopback test path).
    ///
    /// Errors: the OS error of `VFIO_DEVICE_SET_IRQS` (EINVAL for ERR on a device that is
    /// not PCI Express; ENOTTY once the device was revoked).
    pub fn trigger(&self, irq: NoticeIrq) -> Result<(), OsError> {
        ioctl::device_trigger_irq(self.device.file().as_fd(), irq.index(), 0)
            .map_err(|e| self.device.err("VFIO_DEVICE_SET_IRQS", e))
    }
}

/// A non-blocking, close-on-exec eventfd.
fn new_eventfd(device: &Device) -> Result<EventFd, OsError> {
    EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(|e| device.err("eventfd", io::Error::from(e)))
}

/// An eventfd registered as `irq`'s trigger, or `None` when VFIO does not offer `irq`
/// (GET_IRQ_INFO fails with EINVAL, or reports no vector).
fn register(device: &Device, irq: NoticeIrq) -> Result<Option<EventFd>, OsError> {
    let info = match ioctl::device_get_irq_info(device.file().as_fd(), irq.index()) {
        Ok(info) => info,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(None),
        Err(e) => return Err(device.err("VFIO_DEVICE_GET_IRQ_INFO", e)),
    };
    if info.count == 0 {
        return Ok(None);
    }
    if info.flags & VFIO_IRQ_INFO_EVENTFD == 0 {
        let why = format!(
            "VFIO signals IRQ index {} without eventfds (flags {:#x})",
            irq.index(),
            info.flags
        );
        return Err(device.err(
            "VFIO_DEVICE_GET_IRQ_INFO",
            io::Error::new(io::ErrorKind::InvalidInput, why),
        ));
    }
    let fd = new_eventfd(device)?;
    ioctl::device_set_irq_eventfds(device.file().as_fd(), irq.index(), 0, &[fd.as_raw_fd()])
        .map_err(|e| device.err("VFIO_DEVICE_SET_IRQS", e))?;
    Ok(Some(fd))
}

/// The notifier thread: sleeps until REQ, ERR or `stop` is signalled, reads the counters
/// back to zero (vfio-pci adds 1 per signal) and calls `handler`.
fn listen(
    request: EventFd,
    error: Option<EventFd>,
    stop: &EventFd,
    config: Option<PciConfig>,
    mut handler: impl FnMut(Notice),
) {
    let mut requests = 0u64;
    loop {
        let mut fds = vec![
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(request.as_fd(), PollFlags::POLLIN),
        ];
        if let Some(e) = &error {
            fds.push(PollFd::new(e.as_fd(), PollFlags::POLLIN));
        }
        match ppoll(&mut fds, None, None) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::error!(error = %e, "VFIO device notifier stops: ppoll failed");
                return;
            }
        }
        if stop.read().is_ok() {
            return;
        }
        if let Ok(n) = request.read() {
            requests += n;
            tracing::warn!(requests, "the kernel asks for the device back (VFIO request interrupt)");
            handler(Notice::RemovalRequested { requests });
        }
        if let Some(Ok(n)) = error.as_ref().map(EventFd::read) {
            let device_status = config.as_ref().and_then(|c| match c.pcie_device_status() {
                Ok(status) => status,
                Err(e) => {
                    tracing::warn!(error = %e, "PCI Express Device Status not read");
                    None
                }
            });
            tracing::error!(
                signals = n,
                ?device_status,
                "PCI Express error reported (VFIO error interrupt)"
            );
            handler(Notice::PciError { device_status });
        }
    }
}

impl Drop for DeviceNotifier {
    fn drop(&mut self) {
        if !self.device.is_revoked() {
            let fd = self.device.file().as_fd();
            let irqs = [NoticeIrq::Request]
                .into_iter()
                .chain(self.error_irq.then_some(NoticeIrq::Error));
            for irq in irqs {
                // -1 unregisters the trigger; DATA_NONE with count 0 would fail with EINVAL
                // when none is set.
                if let Err(e) = ioctl::device_set_irq_eventfds(fd, irq.index(), 0, &[-1]) {
                    tracing::warn!(bdf = %self.device.bdf(), ?irq, error = %e, "could not unregister the VFIO notification eventfd");
                }
            }
        }
        // Only fails when the count would overflow, and then the thread wakes anyway.
        let _ = self.stop.write(1);
        if let Some(thread) = self.thread.take() {
            // The last handle may be dropped by the handler itself, on the thread: it
            // returns to `listen`, which then finds `stop` set.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}
