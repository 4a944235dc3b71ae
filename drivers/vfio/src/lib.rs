//! VFIO plumbing for ironvme: container, group, device, regions, DMA mapping.
//!
//! The entry point is [`open_nvme`]: given a PCI address, it checks that the device is
//! an NVMe controller handed to vfio-pci in a viable IOMMU group, opens it through the
//! legacy VFIO container/group interface with the Type1v2 IOMMU, resets it, enables
//! memory space and bus mastering (INTx off; MSI-X only when [`OpenOptions::msix_vectors`]
//! asks, for interrupt mode), maps BAR0 and sets up a DMA allocator. The result plugs
//! straight into the NVMe driver:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = ironvme_vfio::open_nvme("0000:00:05.0")?;
//! let ctrl = ironvme_nvme::ctrl::Controller::init(dev.bar, dev.dma, Default::default())?;
//! println!("serial {}", ctrl.identify().sn);
//! # Ok(()) }
//! ```
//!
//! Modules, one per concern: [`ioctl`] (request numbers and thin wrappers), [`pci`] (BDF,
//! sysfs), [`container`] / [`group`] / [`device`] (the VFIO objects), [`iommu`] (the
//! [`DmaMapper`] trait the DMA allocator is written against), [`config`] (PCI config
//! space), [`bar`] ([`MmioBar`], the NVMe registers), [`iova`] (the IOVA allocator),
//! [`dma`] ([`VfioDma`]), [`msix`] (interrupt mode), [`notify`] (the request and error
//! interrupts: hot-unplug and AER), [`error`].
//!
//! Ownership: [`MmioBar`] → [`device::Device`] → [`container::Container`] → its groups;
//! [`VfioDma`] and every DMA buffer → the container. Whatever is dropped last closes the
//! VFIO fds, so the BAR and DMA memory never outlive them.

pub mod bar;
pub mod config;
pub mod container;
pub mod device;
pub mod dma;
pub mod error;
pub mod group;
pub mod ioctl;
pub mod iommu;
pub mod iova;
pub mod msix;
pub mod notify;
pub mod pci;

pub use bar::{BarRevoker, MmioBar};
pub use config::PciConfig;
pub use dma::{DmaOptions, DmaStats, HugePages, VfioDma};
pub use error::Error;
pub use iommu::DmaMapper;
pub use msix::MsixVectors;
pub use notify::{DeviceNotifier, Notice, NoticeIrq};
pub use pci::{Bdf, PciDevice, Sysfs};

use container::Container;
use device::Device;
use error::{GroupLabel, OsError};
use group::Group;
use pci::NVME_CLASS;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vfio_bindings::bindings::vfio::VFIO_PCI_BAR0_REGION_INDEX;

/// The smallest BAR0 mapping accepted, in bytes: the 4 KiB register page plus a page of
/// doorbells (room for 512 doorbells at CAP.DSTRD = 0).
pub const MIN_BAR0_BYTES: usize = 0x2000;

/// The driver a controller must be bound to.
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";

/// Where [`open_nvme_with`] looks for things, and what it does.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// sysfs tree. Default `/sys`.
    pub sysfs: Sysfs,
    /// Directory of the VFIO nodes (`vfio` and the group numbers). Default `/dev/vfio`.
    pub dev_vfio: PathBuf,
    /// DMA memory policy.
    pub dma: DmaOptions,
    /// Reset the device (`VFIO_DEVICE_RESET`) after opening it, when it supports reset.
    /// Default true.
    pub reset: bool,
    /// MSI-X vectors to enable, all but vector 0 (the polled admin queue's) signalling their
    /// own eventfd ([`MsixVectors`]), for a
    /// driver in interrupt mode: fewer if the device's MSI-X table is smaller. Default 0:
    /// MSI-X stays off and the driver polls.
    pub msix_vectors: u16,
}

impl Default for OpenOptions {
    fn default() -> OpenOptions {
        OpenOptions {
            sysfs: Sysfs::system(),
            dev_vfio: PathBuf::from("/dev/vfio"),
            dma: DmaOptions::default(),
            reset: true,
            msix_vectors: 0,
        }
    }
}

/// What the preflight checks found: a vfio-pci-bound NVMe controller with an IOMMU group
/// whose node exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preflight {
    /// The sysfs facts.
    pub device: PciDevice,
    /// The IOMMU group number.
    pub group: u32,
    /// The group node, `/dev/vfio/<group>`.
    pub group_node: PathBuf,
}

/// Facts about an opened controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmeDeviceInfo {
    /// PCI address.
    pub bdf: Bdf,
    /// IOMMU group number.
    pub iommu_group: u32,
    /// PCI vendor id (from config space).
    pub vendor_id: u16,
    /// PCI device id (from config space).
    pub device_id: u16,
    /// 24-bit class code (from config space): 0x010802.
    pub class: u32,
    /// The IOMMU's valid IOVA ranges, half-open.
    pub iova_ranges: Vec<Range<u64>>,
    /// Whether the IOMMU reported the ranges (else defaults were assumed).
    pub iova_ranges_reported: bool,
    /// The IOMMU's supported page sizes (bit n: 2^n bytes), if reported.
    pub iova_pgsizes: Option<u64>,
    /// Bytes of BAR0 mapped.
    pub bar0_bytes: usize,
    /// Whether `VFIO_DEVICE_RESET` was done at open.
    pub reset: bool,
    /// The PCI Command register after enabling memory space and bus mastering.
    pub command: u16,
}

/// An NVMe controller opened through VFIO: everything `Controller::init` needs.
///
/// `bar` and `dma` are independent owners of the VFIO stack: each keeps the device's
/// container (and group) open, so they can be moved apart.
#[derive(Debug)]
pub struct VfioNvme {
    /// BAR0, the controller registers.
    pub bar: MmioBar,
    /// DMA memory in the device's IOMMU domain.
    pub dma: Arc<VfioDma>,
    /// PCI configuration space.
    pub config: PciConfig,
    /// Facts about the device.
    pub info: NvmeDeviceInfo,
    /// The MSI-X vectors [`OpenOptions::msix_vectors`] asked for; `None` when it was 0.
    pub msix: Option<Arc<MsixVectors>>,
}

/// Opens the NVMe controller at `bdf` (`0000:00:05.0` or `00:05.0`) with the default
/// [`OpenOptions`]. See [`open_nvme_with`].
pub fn open_nvme(bdf: &str) -> Result<VfioNvme, Error> {
    open_nvme_with(bdf, &OpenOptions::default())
}

/// Checks, without opening anything, that `bdf` can be handed to ironvme. The checks run
/// in this order, and the first failure is returned:
///
/// 1. the address parses ([`Error::InvalidBdf`]) and the device exists
///    ([`Error::NoSuchDevice`]);
/// 2. it is an NVMe controller ([`Error::NotNvme`]);
/// 3. it is bound to vfio-pci ([`Error::BoundToNvme`], [`Error::BoundToOtherDriver`],
///    [`Error::NotBoundToVfio`]);
/// 4. it has an IOMMU group ([`Error::NoIommuGroup`]) whose node exists
///    ([`Error::VfioNodeMissing`]).
pub fn preflight(bdf: &str, options: &OpenOptions) -> Result<Preflight, Error> {
    let bdf: Bdf = bdf.parse()?;
    let sysfs = &options.sysfs;
    if !sysfs.exists(bdf) {
        return Err(Error::NoSuchDevice {
            bdf,
            path: sysfs.device_dir(bdf),
        });
    }
    let sys = |source| Error::Sysfs { bdf, source };
    let class = sysfs.class(bdf).map_err(sys)?;
    if class != NVME_CLASS {
        return Err(Error::NotNvme {
            bdf,
            class,
            source_of_class: "sysfs",
        });
    }
    let device = sysfs.device(bdf).map_err(sys)?;
    let group = GroupLabel(device.iommu_group);
    match device.driver.as_deref() {
        Some(VFIO_PCI_DRIVER) => {}
        Some("nvme") => return Err(Error::BoundToNvme { bdf, group }),
        Some(other) => {
            return Err(Error::BoundToOtherDriver {
                bdf,
                group,
                driver: other.to_string(),
            });
        }
        None => return Err(Error::NotBoundToVfio { bdf, group }),
    }
    let Some(group) = device.iommu_group else {
        return Err(Error::NoIommuGroup { bdf });
    };
    let group_node = options.dev_vfio.join(group.to_string());
    if !group_node.exists() {
        return Err(Error::VfioNodeMissing {
            bdf,
            group,
            path: group_node,
        });
    }
    Ok(Preflight {
        device,
        group,
        group_node,
    })
}

/// Opens the NVMe controller at `bdf`: [`preflight`], then the container (API version,
/// Type1v2), the group (viable, not in use), the device (reset if supported), a check of
/// the class code in config space, Memory Space + Bus Master enable with INTx disabled,
/// BAR0 mapped, and a [`VfioDma`] over the container.
///
/// Errors: those of [`preflight`]; [`Error::PermissionDenied`] (not root, no access to
/// `/dev/vfio/*`); [`Error::GroupNotViable`]; [`Error::InUse`] (EBUSY: the group is open
/// elsewhere); [`Error::ApiVersion`] / [`Error::NoType1v2`]; [`Error::NotPci`];
/// [`Error::NotNvme`] from config space; [`Error::BarNotMappable`]; [`Error::Iova`];
/// [`Error::DeviceOs`] for any other failing system call.
pub fn open_nvme_with(bdf: &str, options: &OpenOptions) -> Result<VfioNvme, Error> {
    let pre = preflight(bdf, options)?;
    let (bdf, g) = (pre.device.bdf, pre.group);
    let _span = tracing::info_span!("vfio_open", %bdf, group = g).entered();
    let opening = |e: OsError| opening_error(bdf, g, e);
    let os = |source| Error::DeviceOs { bdf, group: g, source };

    let container_node = options.dev_vfio.join("vfio");
    let mut container = Container::open(&container_node).map_err(|e| match e {
        Error::Os(e) => opening(e),
        other => other,
    })?;
    let group = Group::open(&options.dev_vfio, g).map_err(opening)?;
    if !group.is_viable().map_err(os)? {
        let members = options.sysfs.group_members(g).unwrap_or_default();
        return Err(Error::GroupNotViable { bdf, group: g, members });
    }
    container.attach(group).map_err(opening)?;
    let container = Arc::new(container);
    let device = Arc::new(Device::open(Arc::clone(&container), g, bdf).map_err(opening)?);
    if !device.is_pci() {
        return Err(Error::NotPci {
            bdf,
            flags: device.flags(),
        });
    }
    let reset = options.reset && device.supports_reset();
    if reset {
        device.reset().map_err(os)?;
    }

    let config = PciConfig::new(Arc::clone(&device)).map_err(os)?;
    let class = config.class_code().map_err(os)?;
    if class != NVME_CLASS {
        return Err(Error::NotNvme {
            bdf,
            class,
            source_of_class: "config space",
        });
    }
    let vendor_id = config.vendor_id().map_err(os)?;
    let device_id = config.device_id().map_err(os)?;
    let command = config.enable_for_polling().map_err(os)?;

    let bar = MmioBar::map(Arc::clone(&device), VFIO_PCI_BAR0_REGION_INDEX, MIN_BAR0_BYTES)?;
    let msix = match options.msix_vectors {
        0 => None,
        n => Some(Arc::new(MsixVectors::enable(Arc::clone(&device), n).map_err(os)?)),
    };
    let mapper: Arc<dyn DmaMapper> = Arc::clone(&container) as Arc<dyn DmaMapper>;
    let dma = VfioDma::new(mapper, options.dma.clone()).map_err(|source| Error::Iova { bdf, group: g, source })?;
    let info = NvmeDeviceInfo {
        bdf,
        iommu_group: g,
        vendor_id,
        device_id,
        class,
        iova_ranges: container.iova_ranges().to_vec(),
        iova_ranges_reported: container.iova_ranges_reported(),
        iova_pgsizes: container.iommu_info().and_then(|i| i.iova_pgsizes),
        bar0_bytes: bar.len(),
        reset,
        command,
    };
    tracing::info!(
        vendor_id,
        device_id,
        bar0 = bar.len(),
        reset,
        "NVMe controller open through VFIO"
    );
    Ok(VfioNvme {
        bar,
        dma: Arc::new(dma),
        config,
        info,
        msix,
    })
}

/// Turns the OS error of opening a VFIO node, attaching the group or getting the device
/// fd into the error that says what to do.
fn opening_error(bdf: Bdf, group: u32, e: OsError) -> Error {
    match e.errno() {
        Some(libc::ENOENT) if e.op == "open" => Error::VfioNodeMissing {
            bdf,
            group,
            path: e.path,
        },
        Some(libc::EACCES | libc::EPERM) => Error::PermissionDenied {
            bdf,
            group,
            path: e.path,
            source: e.source,
        },
        Some(libc::EBUSY) => Error::InUse {
            bdf,
            group,
            holders: holders_of(&e.path, Path::new("/proc")),
            path: e.path,
        },
        _ => Error::DeviceOs { bdf, group, source: e },
    }
}

/// The processes that have `node` open, from the `fd` links under `proc` (`/proc`):
/// `"NAME (pid PID)"` each, `"NAME (pid PID, this process)"` for the caller, in PID
/// order. Processes whose descriptors cannot be read are left out.
pub(crate) fn holders_of(node: &Path, proc: &Path) -> Vec<String> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.into_iter()
        .filter(|pid| {
            std::fs::read_dir(proc.join(pid.to_string()).join("fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok)
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == node))
            })
        })
        .map(|pid| {
            let comm = std::fs::read_to_string(proc.join(pid.to_string()).join("comm")).unwrap_or_default();
            let comm = match comm.trim() {
                "" => "a process",
                c => c,
            };
            let this = if pid == me { ", this process" } else { "" };
            format!("{comm} (pid {pid}{this})")
        })
        .collect()
}

#[cfg(test)]
mod tests;
