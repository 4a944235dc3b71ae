//! ironvme: a userspace NVMe driver stack.
//!
//! - [`nvme`] (crate `ironvme-nvme`): the NVMe protocol core and the PCIe controller
//!   driver, written against register-access and DMA traits.
//! - [`vfio`] (crate `ironvme-vfio`): VFIO plumbing that gives the driver a controller's
//!   BAR0 and IOMMU-mapped memory.
//! - [`admin`]: admin commands (Identify, log pages, features, Format NVM) over any device
//!   that can issue them.
//! - [`claim`]: one writer per device, and none while the kernel uses it.
//! - [`open_vfio`]: a controller bound to vfio-pci, initialised by ironvme's driver
//!   ([`open_vfio_all`]: several at once, from one thread).

pub mod admin;
pub mod claim;
pub mod cli;
pub mod device;
mod error;
pub mod export;
pub mod vde;

pub use device::{Backend, Device, IoQueue, OpenOptions, Target, choose_backend};
pub use error::Error;
pub use ironvme_nvme as nvme;
pub use ironvme_nvme::block;
pub use ironvme_vfio as vfio;

use ironvme_nvme::ctrl::{Controller, ControllerConfig, ControllerInit};
use ironvme_vfio::{BarRevoker, DeviceNotifier, MmioBar, Notice, NvmeDeviceInfo};
use std::sync::Arc;

/// An NVMe controller driven by ironvme's driver through VFIO (polled, or in interrupt mode
/// when opened with interrupts).
pub struct VfioController {
    /// Hands the device back when the kernel asks for it (hot-unplug, unbind) and reports
    /// PCI Express errors ([`ironvme_vfio::DeviceNotifier`]); `None` if vfio-pci offers no
    /// request interrupt. It lives as long as this `VfioController`: keep it while clones
    /// of `controller` or its queue pairs live, or a removal waits until they are all
    /// dropped. Declared first, so it stops before the controller shuts down.
    pub notifier: Option<DeviceNotifier>,
    /// The initialised controller.
    pub controller: Controller<MmioBar>,
    /// PCI and IOMMU facts about the device.
    pub info: NvmeDeviceInfo,
}

/// Opens the controller at PCI address `bdf` (`0000:00:05.0`, `00:05.0` or
/// `pci:0000:00:05.0`), which must be bound to vfio-pci, and initialises it. With
/// `interrupts`, MSI-X is enabled with a vector for the admin queue and one per I/O queue
/// ([`ControllerConfig::io_queues`]), and the I/O completion queues signal them (interrupt
/// mode: `BlockQueue::wait` sleeps); `config.interrupts` is then replaced. Unless
/// `config.quirks` names them, the quirks are those of the function's PCI vendor and
/// device ID ([`ironvme_nvme::quirks::lookup`]).
///
/// Errors: [`Error::Vfio`] names the BDF, the IOMMU group and the fix (bound to nvme,
/// group not viable, no permission, ...); [`Error::Nvme`] if initialisation fails.
pub fn open_vfio(bdf: &str, config: ControllerConfig, interrupts: bool) -> Result<VfioController, Error> {
    open_vfio_all(&[bdf], config, interrupts)
        .pop()
        .expect("one result per address")
}

/// [`open_vfio`] for several controllers at once: each is opened through VFIO, then this
/// thread brings them all up together ([`ironvme_nvme::ctrl::init_all`]), so their
/// CSTS.RDY waits and admin commands overlap. Gives each one's result, in the order of
/// `bdfs`; a failure of one does not stop the others.
///
/// Errors: as [`open_vfio`], for each controller.
pub fn open_vfio_all(bdfs: &[&str], config: ControllerConfig, interrupts: bool) -> Vec<Result<VfioController, Error>> {
    let mut inits = Vec::with_capacity(bdfs.len());
    let attached: Vec<Result<Attached, Error>> = bdfs
        .iter()
        .map(|bdf| {
            attach_vfio(bdf, config.clone(), interrupts).map(|(a, init)| {
                inits.push(init);
                a
            })
        })
        .collect();
    let started = std::time::Instant::now();
    let count = inits.len();
    let mut controllers = ironvme_nvme::ctrl::init_all(inits).into_iter();
    if count > 1 {
        tracing::info!(
            controllers = count,
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "controllers brought up together"
        );
    }
    attached
        .into_iter()
        .map(|a| {
            let a = a?;
            let controller = controllers
                .next()
                .expect("one controller per attached device")
                .map_err(|source| Error::Init {
                    device: a.bdf.clone(),
                    source,
                })?;
            Ok(a.finish(controller))
        })
        .collect()
}

/// A controller opened through VFIO, not yet initialised.
struct Attached {
    bdf: String,
    device: Arc<ironvme_vfio::device::Device>,
    bar: BarRevoker,
    info: NvmeDeviceInfo,
}

/// Opens `bdf` through VFIO (with MSI-X vectors when `interrupts`) and prepares its
/// bring-up with the quirks of its vendor and device ID unless `config` names them.
fn attach_vfio(
    bdf: &str,
    mut config: ControllerConfig,
    interrupts: bool,
) -> Result<(Attached, ControllerInit<MmioBar>), Error> {
    let bdf = bdf.strip_prefix("pci:").unwrap_or(bdf);
    let options = ironvme_vfio::OpenOptions {
        // Vector 0 for the admin queue, one for each I/O queue.
        msix_vectors: if interrupts {
            config.io_queues.saturating_add(1)
        } else {
            0
        },
        ..ironvme_vfio::OpenOptions::default()
    };
    let dev = ironvme_vfio::open_nvme_with(bdf, &options)?;
    if let Some(msix) = &dev.msix {
        config.interrupts = Some(Arc::clone(msix) as _);
    }
    if config.quirks.is_none() {
        let quirks = ironvme_nvme::quirks::lookup(dev.info.vendor_id, dev.info.device_id);
        if !quirks.is_empty() {
            tracing::info!(
                bdf,
                vendor = dev.info.vendor_id,
                device = dev.info.device_id,
                ?quirks,
                "controller quirks"
            );
        }
        config.quirks = Some(quirks);
    }
    let device = Arc::clone(dev.bar.device());
    let bar = dev.bar.revoker();
    let attached = Attached {
        bdf: bdf.to_string(),
        device,
        bar,
        info: dev.info,
    };
    Ok((
        attached,
        ControllerInit::new(dev.bar, Arc::clone(&dev.dma) as _, config),
    ))
}

impl Attached {
    /// Registers the request and error interrupts of the initialised `controller`.
    fn finish(self, controller: Controller<MmioBar>) -> VfioController {
        let Attached { bdf, device, bar, info } = self;
        let notifier = DeviceNotifier::enable(Arc::clone(&device), release_on_request(&controller, device, bar))
            .inspect_err(|e| {
                tracing::warn!(bdf, error = %e, "no VFIO request interrupt: a hot-unplug or unbind of the device will wait until the controller is dropped");
            })
            .ok();
        VfioController {
            notifier,
            controller,
            info,
        }
    }
}

/// The [`DeviceNotifier`] handler of a controller opened through VFIO. When the kernel
/// asks for the device back, [`Controller::removal_requested`] shuts the controller down
/// and completes its outstanding commands, then the process lets go of the device while
/// the application may still hold the controller and its queue pairs: BAR0 is replaced by
/// memory that reads all ones ([`ironvme_vfio::BarRevoker`]) and the device fd by
/// `/dev/null` ([`ironvme_vfio::device::Device::revoke`]), so vfio-pci can finish the
/// removal. A PCI Express error goes to [`Controller::pci_error`].
fn release_on_request(
    controller: &Controller<MmioBar>,
    device: Arc<ironvme_vfio::device::Device>,
    bar: BarRevoker,
) -> impl FnMut(Notice) + Send + 'static {
    let controller = controller.downgrade();
    move |notice| match notice {
        Notice::RemovalRequested { requests } => {
            // Held until the device is released, so that the controller is not dropped
            // (and shut down) in between.
            let c = controller.upgrade();
            if let Some(c) = &c {
                c.removal_requested("the kernel asked for it back (VFIO request interrupt)");
            }
            let released = bar
                .revoke()
                .and_then(|_| device.revoke().map_err(std::io::Error::other));
            match released {
                Ok(()) => tracing::warn!(bdf = %device.bdf(), requests, "device released to the kernel"),
                Err(e) => tracing::error!(bdf = %device.bdf(), error = %e, "could not release the device"),
            }
            drop(c);
        }
        Notice::PciError { device_status } => {
            if let Some(c) = controller.upgrade() {
                c.pci_error(device_status);
            }
        }
    }
}
