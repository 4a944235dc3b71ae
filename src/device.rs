//! Opening a device by path or PCI address, and the one block interface over every
//! backend.
//!
//! [`Device::open`] picks the backend from what it is given — a PCI address is a
//! controller for ironvme's VFIO driver; `/dev/ngXnY` goes to io_uring NVMe passthrough;
//! `/dev/nvmeXnY` (and any block device) to io_uring; `/dev/nvmeX` to the NVMe ioctl
//! passthrough; a regular file to io_uring, or to psync when io_uring is unavailable —
//! and [`OpenOptions::backend`] overrides the choice. A backend that cannot work says
//! which backend and why; nothing falls back silently (the one automatic choice, psync
//! for a file when io_uring is unavailable, is explained by [`choose_backend`] and logged).
//!
//! [`Device`] and [`IoQueue`] are enums over the backends: one `match` per call at the
//! top, static dispatch inside each backend (as firecracker's `FileEngine`).

use crate::admin::AdminCommands;
use crate::{Error, VfioController};
use ironvme_kernel::node::{self, NodeKind};
use ironvme_kernel::{
    IoctlDevice, IoctlQueue, KernelDma, KernelError, PsyncDevice, PsyncQueue, UringCmdDevice, UringCmdQueue,
    UringDevice, UringOptions, UringQueue,
};
use ironvme_nvme::block::{BlockError, BlockQueue, Completion, NamespaceInfo, Op, Protection, SubmitError};
use ironvme_nvme::cmd::Command;
use ironvme_nvme::ctrl::{ControllerConfig, NamespaceQueue};
use ironvme_nvme::hw::{DmaAllocator, DmaBuf};
use ironvme_vfio::MmioBar;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// ironvme's driver through VFIO (a PCI address bound to vfio-pci), polled unless
    /// [`OpenOptions::interrupts`] asks for interrupt mode.
    Vfio,
    /// The kernel's NVMe ioctl passthrough (`/dev/nvmeX`, `/dev/nvmeXnY`, `/dev/ngXnY`).
    Ioctl,
    /// io_uring block I/O with `O_DIRECT` (block devices and regular files).
    Uring,
    /// io_uring NVMe passthrough, `IORING_OP_URING_CMD` (`/dev/ngXnY`).
    UringCmd,
    /// `pread`/`pwrite` (any file or block device).
    Psync,
    /// The in-process simulated controller (tests and benchmarks).
    #[cfg(feature = "sim")]
    Sim,
}

impl Backend {
    /// Every backend that works on real devices, in the order users see them.
    pub const ALL: [Backend; 5] = [
        Backend::Vfio,
        Backend::Ioctl,
        Backend::Uring,
        Backend::UringCmd,
        Backend::Psync,
    ];

    /// The name users write (`--backend uring-cmd`).
    pub const fn name(self) -> &'static str {
        match self {
            Backend::Vfio => "vfio",
            Backend::Ioctl => ironvme_kernel::error::BACKEND_IOCTL,
            Backend::Uring => ironvme_kernel::error::BACKEND_URING,
            Backend::UringCmd => ironvme_kernel::error::BACKEND_URING_CMD,
            Backend::Psync => ironvme_kernel::error::BACKEND_PSYNC,
            #[cfg(feature = "sim")]
            Backend::Sim => "sim",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Backend, String> {
        Backend::ALL.into_iter().find(|b| b.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Backend::ALL.iter().map(|b| b.name()).collect();
            format!("unknown backend {s:?}; one of: {}", names.join(", "))
        })
    }
}

/// How to open a device.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Use this backend instead of the one the device's kind suggests.
    pub backend: Option<Backend>,
    /// The VFIO driver's configuration.
    pub controller: ControllerConfig,
    /// VFIO: MSI-X interrupts for the I/O completion queues, so that
    /// [`crate::block::BlockQueue::wait`] sleeps until one fires instead of spinning
    /// (interrupt mode). Default false (polled).
    pub interrupts: bool,
    /// io_uring options (block backend).
    pub uring: UringOptions,
    /// Logical block size for regular files (default: the filesystem's direct I/O
    /// alignment, else 4096).
    pub file_block_size: Option<u32>,
    /// Back kernel-backend buffers with 2 MiB hugepages when reserved.
    pub hugepages: bool,
}

/// What a device argument names, before any backend is chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A PCI address (`0000:00:05.0`, `00:05.0`, `pci:0000:00:05.0`).
    Pci(String),
    /// An NVMe controller character device (`/dev/nvmeX`).
    NvmeController(PathBuf),
    /// An NVMe namespace generic character device (`/dev/ngXnY`).
    NvmeGeneric(PathBuf),
    /// An NVMe namespace block device (`/dev/nvmeXnY`).
    NvmeBlock(PathBuf),
    /// Any other block device.
    Block(PathBuf),
    /// A regular file.
    File(PathBuf),
}

impl Target {
    /// Classifies `spec`: a PCI address, or a path that must exist. A path is classified
    /// by the name of the node it resolves to, so a udev link such as
    /// `/dev/disk/by-id/nvme-<model>_<serial>` is the NVMe namespace `/dev/nvmeXnY` it points
    /// to (and claimed like it, [`crate::claim`]); the target keeps the path as given.
    ///
    /// Errors: [`Error::Open`] when the path does not exist or is neither a block device,
    /// an NVMe character device, nor a regular file.
    pub fn parse(spec: &str) -> Result<Target, Error> {
        if pci_address(spec).is_some() {
            return Ok(Target::Pci(pci_address_text(spec).to_string()));
        }
        let path = PathBuf::from(spec);
        let found = node::classify(&path).map_err(|e| Error::Open {
            device: spec.to_string(),
            why: format!("{e} (give a PCI address such as 0000:00:05.0, a device under /dev, or a file)"),
        })?;
        Ok(match found.kind {
            NodeKind::NvmeDisk => Target::NvmeBlock(path),
            NodeKind::Block => Target::Block(path),
            NodeKind::NvmeGeneric => Target::NvmeGeneric(path),
            NodeKind::NvmeController => Target::NvmeController(path),
            NodeKind::File => Target::File(path),
            NodeKind::Char | NodeKind::Other(_) => {
                return Err(Error::Open {
                    device: spec.to_string(),
                    why: "not a block device, an NVMe character device (/dev/nvmeX, /dev/ngXnY) or a regular file"
                        .into(),
                });
            }
        })
    }

    /// The backend this kind of target uses unless told otherwise.
    pub fn default_backend(&self) -> Backend {
        match self {
            Target::Pci(_) => Backend::Vfio,
            Target::NvmeController(_) => Backend::Ioctl,
            Target::NvmeGeneric(_) => Backend::UringCmd,
            Target::NvmeBlock(_) | Target::Block(_) | Target::File(_) => Backend::Uring,
        }
    }

    fn path(&self) -> Option<&Path> {
        match self {
            Target::Pci(_) => None,
            Target::NvmeController(p)
            | Target::NvmeGeneric(p)
            | Target::NvmeBlock(p)
            | Target::Block(p)
            | Target::File(p) => Some(p),
        }
    }
}

/// Splits a device spec into the device and the namespace it names: `DEV,nsid=N` is
/// namespace N (decimal or 0x hex) of DEV, anything else (and a path that exists as
/// written, commas and all) the whole text with no NSID. `serve` and `vde:DEV:VOL` take
/// it where a flag cannot say which namespace.
///
/// Errors: [`Error::Open`] for a `,nsid=` that is not a namespace ID.
pub fn split_nsid(spec: &str) -> Result<(&str, Option<u32>), Error> {
    match spec.rsplit_once(",nsid=") {
        Some((dev, n)) if !Path::new(spec).exists() => {
            crate::cli::parse_nsid(n)
                .map(|nsid| (dev, Some(nsid)))
                .map_err(|why| Error::Open {
                    device: spec.to_string(),
                    why,
                })
        }
        _ => Ok((spec, None)),
    }
}

/// A DEV argument without its `pci:` prefix: the text to read as a PCI address
/// ([`ironvme_vfio::Bdf`]: `0000:00:05.0`, `00:05.0`, `pci:0000:00:05.0`).
pub fn pci_address_text(spec: &str) -> &str {
    spec.strip_prefix("pci:").unwrap_or(spec)
}

/// The PCI address a DEV argument names ([`pci_address_text`]), unless no address is
/// readable in it or a path of that name exists (a file called `00:05.0` is a file).
pub fn pci_address(spec: &str) -> Option<ironvme_vfio::Bdf> {
    pci_address_text(spec)
        .parse::<ironvme_vfio::Bdf>()
        .ok()
        .filter(|_| !Path::new(spec).exists())
}

/// The backend [`Device::open`] uses for `target`: the one `options` asks for, else the
/// one the target's kind suggests — except a regular file when io_uring is unavailable,
/// which gets psync; the second value then says why.
pub fn choose_backend(target: &Target, options: &OpenOptions) -> (Backend, Option<String>) {
    if let Some(b) = options.backend {
        return (b, None);
    }
    match (target, target.default_backend()) {
        (Target::File(_), Backend::Uring) => match ironvme_kernel::io_uring_available() {
            Ok(()) => (Backend::Uring, None),
            Err(why) => (
                Backend::Psync,
                Some(format!("io_uring is unavailable ({why}); using psync")),
            ),
        },
        (_, b) => (b, None),
    }
}

/// An open device, whatever backend is underneath.
pub enum Device {
    /// ironvme's driver through VFIO.
    Vfio(Box<VfioController>),
    /// NVMe ioctl passthrough.
    Ioctl(IoctlDevice, Arc<KernelDma>),
    /// io_uring block I/O.
    Uring(UringDevice, Arc<KernelDma>),
    /// io_uring NVMe passthrough.
    UringCmd(UringCmdDevice, Arc<KernelDma>),
    /// pread/pwrite.
    Psync(PsyncDevice, Arc<KernelDma>),
    /// The simulated controller with ironvme's driver.
    #[cfg(feature = "sim")]
    Sim(ironvme_nvme::ctrl::Controller<ironvme_nvme::sim::SimController>),
    /// A VDE volume or snapshot (`vde:DEV:VOL[@SNAP]`) on a store on another device.
    Volume(Box<crate::vde::volume::VolumeDevice>),
}

impl Device {
    /// Opens `spec` (a PCI address or a path) with the backend `options` asks for, or the
    /// one its kind suggests.
    ///
    /// Errors: [`Error::Open`] for a missing or unusable path; the chosen backend's error,
    /// which names the backend and the reason ([`Error::Vfio`], [`Error::Kernel`], ...).
    pub fn open(spec: &str, options: &OpenOptions) -> Result<Device, Error> {
        if let Some(volume) = crate::vde::volume::VolumeSpec::parse(spec) {
            return Ok(Device::Volume(Box::new(crate::vde::volume::VolumeDevice::open(
                &volume?, options,
            )?)));
        }
        let target = Target::parse(spec)?;
        let (backend, why) = choose_backend(&target, options);
        if let Some(why) = why {
            tracing::warn!(device = spec, %backend, "{why}");
        }
        Device::open_with(&target, spec, backend, options)
    }

    fn open_with(target: &Target, spec: &str, backend: Backend, options: &OpenOptions) -> Result<Device, Error> {
        let dma = || Arc::new(KernelDma::new(options.hugepages));
        let path = || {
            target.path().ok_or_else(|| Error::Open {
                device: spec.to_string(),
                why: format!("the {backend} backend needs a device path, not a PCI address"),
            })
        };
        Ok(match backend {
            Backend::Vfio => {
                let bdf = match target {
                    Target::Pci(bdf) => bdf.clone(),
                    other => pci_address_of(other).ok_or_else(|| Error::Open {
                        device: spec.to_string(),
                        why: "the vfio backend needs an NVMe controller's PCI address (DDDD:BB:DD.F)".into(),
                    })?,
                };
                Device::Vfio(Box::new(crate::open_vfio(
                    &bdf,
                    options.controller.clone(),
                    options.interrupts,
                )?))
            }
            Backend::Ioctl => Device::Ioctl(IoctlDevice::open(path()?)?, dma()),
            Backend::Uring => Device::Uring(
                UringDevice::open(path()?, &options.uring_with_block_size(options.file_block_size))?,
                dma(),
            ),
            Backend::UringCmd => Device::UringCmd(UringCmdDevice::open(path()?)?, dma()),
            Backend::Psync => Device::Psync(PsyncDevice::open(path()?, options.file_block_size)?, dma()),
            #[cfg(feature = "sim")]
            Backend::Sim => {
                return Err(Error::Open {
                    device: spec.to_string(),
                    why: "use Device::simulated for the sim backend".into(),
                });
            }
        })
    }

    /// ironvme's driver on a fresh simulated controller (host tests and benchmarks).
    ///
    /// Errors: initialisation errors of the driver.
    #[cfg(feature = "sim")]
    pub fn simulated(sim: ironvme_nvme::sim::SimController, config: ControllerConfig) -> Result<Device, Error> {
        let dma = Arc::new(sim.dma());
        let ctrl = ironvme_nvme::ctrl::Controller::init(sim, dma, config).map_err(|source| Error::Init {
            device: "sim".into(),
            source,
        })?;
        Ok(Device::Sim(ctrl))
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        match self {
            Device::Vfio(_) => Backend::Vfio,
            Device::Ioctl(..) => Backend::Ioctl,
            Device::Uring(..) => Backend::Uring,
            Device::UringCmd(..) => Backend::UringCmd,
            Device::Psync(..) => Backend::Psync,
            #[cfg(feature = "sim")]
            Device::Sim(_) => Backend::Sim,
            Device::Volume(v) => v.device().backend(),
        }
    }

    /// The namespaces (one for block devices, files and `/dev/ngXnY`).
    pub fn namespaces(&self) -> Vec<NamespaceInfo> {
        match self {
            Device::Vfio(v) => v.controller.namespaces().iter().map(|n| n.info()).collect(),
            Device::Ioctl(d, _) => d.namespaces().to_vec(),
            Device::Uring(d, _) => vec![d.namespace().clone()],
            Device::UringCmd(d, _) => vec![d.namespace().clone()],
            Device::Psync(d, _) => vec![d.namespace().clone()],
            #[cfg(feature = "sim")]
            Device::Sim(c) => c.namespaces().iter().map(|n| n.info()).collect(),
            Device::Volume(v) => vec![v.namespace().clone()],
        }
    }

    /// The namespace a kernel namespace node names (`/dev/nvme0n2` → 2) when the device
    /// was opened from one with the ioctl backend; `None` otherwise (a controller node, a
    /// PCI address, a file).
    pub fn node_namespace(&self) -> Option<u32> {
        match self {
            Device::Ioctl(d, _) => d.node_namespace(),
            _ => None,
        }
    }

    /// The namespace `nsid`, or the first one for `None`.
    ///
    /// Errors: [`Error::Open`] if there is no such namespace.
    pub fn namespace(&self, nsid: Option<u32>) -> Result<NamespaceInfo, Error> {
        let all = self.namespaces();
        let found = match nsid {
            Some(id) => all.into_iter().find(|n| n.nsid == id),
            None => all.into_iter().next(),
        };
        found.ok_or_else(|| Error::Open {
            device: self.backend().to_string(),
            why: format!(
                "no active namespace {}",
                nsid.map_or("at all".into(), |n| n.to_string())
            ),
        })
    }

    /// The allocator for buffers this device's queues accept.
    pub fn dma(&self) -> Arc<dyn DmaAllocator> {
        match self {
            Device::Vfio(v) => Arc::clone(v.controller.dma()),
            Device::Ioctl(_, dma) | Device::Uring(_, dma) | Device::UringCmd(_, dma) | Device::Psync(_, dma) => {
                Arc::clone(dma) as Arc<dyn DmaAllocator>
            }
            #[cfg(feature = "sim")]
            Device::Sim(c) => Arc::clone(c.dma()),
            Device::Volume(v) => v.device().dma(),
        }
    }

    /// Whether the I/O queues use shadow doorbells: `Some` on VFIO (ironvme's driver),
    /// `None` on the backends whose doorbells the kernel rings.
    pub fn shadow_doorbells(&self) -> Option<bool> {
        match self {
            Device::Vfio(v) => Some(v.controller.shadow_doorbells()),
            _ => None,
        }
    }

    /// Admin commands, on backends that can issue them (VFIO, ioctl, io_uring
    /// passthrough).
    pub fn admin(&self) -> Option<&dyn AdminCommands> {
        match self {
            Device::Vfio(v) => Some(&v.controller),
            Device::Ioctl(d, _) => Some(d),
            Device::UringCmd(d, _) => Some(d),
            Device::Uring(..) | Device::Psync(..) | Device::Volume(_) => None,
            #[cfg(feature = "sim")]
            Device::Sim(c) => Some(c),
        }
    }

    /// Creates an I/O queue of `depth` operations on namespace `nsid` (the first one for
    /// `None`), for the calling thread.
    ///
    /// Errors: the backend's (ring setup, queue creation on the controller, no such
    /// namespace).
    pub fn create_queue(&self, nsid: Option<u32>, depth: usize) -> Result<IoQueue, Error> {
        self.open_queue(nsid, depth, false)
    }

    /// [`Self::create_queue`] for a caller that carries metadata
    /// ([`BlockQueue::submit_with_metadata`]): it opens on a namespace whose metadata
    /// needs a buffer, where `create_queue` refuses. Backends that cannot carry metadata
    /// (io_uring block I/O, psync, VDE volumes) give their plain queue, which refuses
    /// `submit_with_metadata`.
    ///
    /// The queue sizes every transfer by the namespace's format as read when the device
    /// was opened. A namespace reformatted underneath it by another tool (nvme-cli) would
    /// get commands sized for the old format, data and metadata alike; `ironvme format`
    /// refuses a namespace another ironvme holds, and on VFIO no other process can reach
    /// the controller.
    ///
    /// Errors: as [`Self::create_queue`].
    pub fn create_metadata_queue(&self, nsid: Option<u32>, depth: usize) -> Result<IoQueue, Error> {
        self.open_queue(nsid, depth, true)
    }

    fn open_queue(&self, nsid: Option<u32>, depth: usize, metadata: bool) -> Result<IoQueue, Error> {
        let ns = self.namespace(nsid)?;
        let entries = (depth + 1).min(u32::MAX as usize) as u32;
        Ok(match self {
            Device::Vfio(v) => {
                let q = if metadata {
                    NamespaceQueue::with_metadata(&v.controller, ns.nsid, entries)
                } else {
                    NamespaceQueue::new(&v.controller, ns.nsid, entries)
                };
                IoQueue::Vfio(q.map_err(|e| match e {
                    // Name the PCI address in the reformatting command.
                    ironvme_nvme::ctrl::Error::MetadataUnsupported(m) => m.on_device(v.info.bdf.to_string()).into(),
                    other => other,
                })?)
            }
            Device::Ioctl(d, _) if metadata => IoQueue::Ioctl(d.create_metadata_queue(ns.nsid, depth)?),
            Device::Ioctl(d, _) => IoQueue::Ioctl(d.create_queue(ns.nsid, depth)?),
            Device::Uring(d, _) => IoQueue::Uring(d.create_queue(depth)?),
            Device::UringCmd(d, _) if metadata => IoQueue::UringCmd(d.create_metadata_queue(depth)?),
            Device::UringCmd(d, _) => IoQueue::UringCmd(d.create_queue(depth)?),
            Device::Psync(d, _) => IoQueue::Psync(d.create_queue(depth)?),
            #[cfg(feature = "sim")]
            Device::Sim(c) if metadata => IoQueue::Sim(NamespaceQueue::with_metadata(c, ns.nsid, entries)?),
            #[cfg(feature = "sim")]
            Device::Sim(c) => IoQueue::Sim(NamespaceQueue::new(c, ns.nsid, entries)?),
            Device::Volume(v) => IoQueue::Volume(Box::new(v.create_queue(depth)?)),
        })
    }
}

impl OpenOptions {
    /// The defaults, with `backend` (`None`: the one the device's kind suggests).
    pub fn with_backend(backend: Option<Backend>) -> OpenOptions {
        OpenOptions {
            backend,
            ..Default::default()
        }
    }

    fn uring_with_block_size(&self, block_size: Option<u32>) -> UringOptions {
        UringOptions {
            block_size: block_size.or(self.uring.block_size),
            ..self.uring.clone()
        }
    }
}

/// The PCI address of the controller behind a kernel NVMe device node, from sysfs: the
/// node's controller ([`node::controller_in`]) and its `device` link.
fn pci_address_of(target: &Target) -> Option<String> {
    let found = node::classify(target.path()?).ok()?;
    let ctrl = node::controller_in(Path::new(node::SYSFS), &found.name)?;
    let device = std::fs::canonicalize(Path::new(node::SYSFS).join("class/nvme").join(ctrl).join("device")).ok()?;
    Some(device.file_name()?.to_string_lossy().into_owned())
}

/// Flush commands submitted through every [`IoQueue`] of this process (see
/// [`flushes_submitted`]).
static FLUSHES_SUBMITTED: AtomicU64 = AtomicU64::new(0);

/// How many [`Op::Flush`] commands this process has submitted through [`IoQueue`]s so
/// far, on every backend and device together (a count of commands, not bytes). A
/// benchmark reads it before and after a run for its Flushes-per-operation figure
/// (`ironvme vde bench`); the count covers the whole process, so only one workload
/// should run while it is read.
pub fn flushes_submitted() -> u64 {
    FLUSHES_SUBMITTED.load(Ordering::Relaxed)
}

/// An I/O queue on one namespace, whatever backend is underneath.
// The variants differ in size (an io_uring queue carries its ring state inline). A queue
// is created once per thread and used for its lifetime; boxing the large variants would
// add a pointer chase to every call instead.
#[allow(clippy::large_enum_variant)]
pub enum IoQueue {
    /// ironvme's VFIO driver.
    Vfio(NamespaceQueue<MmioBar>),
    /// NVMe ioctl passthrough.
    Ioctl(IoctlQueue),
    /// io_uring block I/O.
    Uring(UringQueue),
    /// io_uring NVMe passthrough.
    UringCmd(UringCmdQueue),
    /// pread/pwrite.
    Psync(PsyncQueue),
    /// The simulated controller.
    #[cfg(feature = "sim")]
    Sim(NamespaceQueue<ironvme_nvme::sim::SimController>),
    /// A VDE volume.
    Volume(Box<crate::vde::volume::VolumeQueue>),
}

macro_rules! each_backend {
    ($queue:expr, $q:ident => $body:expr) => {
        match $queue {
            IoQueue::Vfio($q) => $body,
            IoQueue::Ioctl($q) => $body,
            IoQueue::Uring($q) => $body,
            IoQueue::UringCmd($q) => $body,
            IoQueue::Psync($q) => $body,
            #[cfg(feature = "sim")]
            IoQueue::Sim($q) => $body,
            IoQueue::Volume($q) => $body,
        }
    };
}

impl BlockQueue for IoQueue {
    #[inline]
    fn namespace(&self) -> &NamespaceInfo {
        each_backend!(self, q => q.namespace())
    }

    #[inline]
    fn depth(&self) -> usize {
        each_backend!(self, q => q.depth())
    }

    #[inline]
    fn outstanding(&self) -> usize {
        each_backend!(self, q => q.outstanding())
    }

    #[inline]
    fn submit(&mut self, op: Op, buf: Option<DmaBuf>, tag: u64) -> Result<(), SubmitError> {
        let flush = matches!(op, Op::Flush);
        each_backend!(self, q => q.submit(op, buf, tag))?;
        if flush {
            FLUSHES_SUBMITTED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn submit_with_metadata(
        &mut self,
        op: Op,
        buf: Option<DmaBuf>,
        pi: Protection,
        tag: u64,
    ) -> Result<(), SubmitError> {
        each_backend!(self, q => q.submit_with_metadata(op, buf, pi, tag))
    }

    #[inline]
    fn ring(&mut self) -> Result<(), BlockError> {
        each_backend!(self, q => q.ring())
    }

    #[inline]
    fn poll<F: FnMut(Completion)>(&mut self, max: usize, on_complete: F) -> usize {
        each_backend!(self, q => q.poll(max, on_complete))
    }

    #[inline]
    fn wait<F: FnMut(Completion)>(&mut self, max: usize, on_complete: F) -> usize {
        each_backend!(self, q => q.wait(max, on_complete))
    }

    fn steer_interrupts(&mut self, cpu: usize) -> std::io::Result<bool> {
        each_backend!(self, q => q.steer_interrupts(cpu))
    }
}

impl AdminCommands for IoctlDevice {
    fn admin_read(&self, cmd: Command, len: usize) -> Result<(u32, Vec<u8>), Error> {
        Ok(IoctlDevice::admin_read(self, cmd, len)?)
    }
    fn admin_write(&self, cmd: Command, data: &[u8]) -> Result<u32, Error> {
        Ok(IoctlDevice::admin_write(self, cmd, data)?)
    }
    fn admin_write_within(&self, cmd: Command, data: &[u8], timeout: std::time::Duration) -> Result<u32, Error> {
        Ok(IoctlDevice::admin_write_within(self, cmd, data, timeout)?)
    }
}

impl AdminCommands for UringCmdDevice {
    fn admin_read(&self, cmd: Command, len: usize) -> Result<(u32, Vec<u8>), Error> {
        Ok(UringCmdDevice::admin_read(self, cmd, len)?)
    }
    fn admin_write(&self, cmd: Command, data: &[u8]) -> Result<u32, Error> {
        Ok(UringCmdDevice::admin_write(self, cmd, data)?)
    }
    fn admin_write_within(&self, cmd: Command, data: &[u8], timeout: std::time::Duration) -> Result<u32, Error> {
        Ok(UringCmdDevice::admin_write_within(self, cmd, data, timeout)?)
    }
}

impl From<KernelError> for Error {
    fn from(e: KernelError) -> Error {
        Error::Kernel(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_may_name_its_namespace() {
        assert_eq!(split_nsid("0000:00:05.0").unwrap(), ("0000:00:05.0", None));
        assert_eq!(split_nsid("0000:00:05.0,nsid=2").unwrap(), ("0000:00:05.0", Some(2)));
        assert_eq!(split_nsid("/dev/nvme0,nsid=0x10").unwrap(), ("/dev/nvme0", Some(16)));
        for bad in ["0000:00:05.0,nsid=0", "0000:00:05.0,nsid=", "0000:00:05.0,nsid=two"] {
            assert!(matches!(split_nsid(bad), Err(Error::Open { .. })), "{bad}");
        }
        // A file whose name looks like it is still the file.
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("disk,nsid=2");
        std::fs::write(&odd, b"").unwrap();
        let odd = odd.to_str().unwrap();
        assert_eq!(split_nsid(odd).unwrap(), (odd, None));
        // A volume's store names its namespace inside the spec.
        let v = crate::vde::volume::VolumeSpec::parse("vde:0000:00:05.0,nsid=2:vol@s")
            .unwrap()
            .unwrap();
        assert_eq!(
            (v.dev.as_str(), v.nsid, v.dataset()),
            ("0000:00:05.0", Some(2), "vol@s".into())
        );
        let v = crate::vde::volume::VolumeSpec::parse("vde:/dev/nvme0n1:vol")
            .unwrap()
            .unwrap();
        assert_eq!((v.dev.as_str(), v.nsid), ("/dev/nvme0n1", None));
        assert!(
            crate::vde::volume::VolumeSpec::parse("vde:0000:00:05.0,nsid=x:vol")
                .unwrap()
                .is_err()
        );
    }

    /// A udev link (`/dev/disk/by-id/nvme-<model>_<serial>` -> `../../nvme0n1`) is
    /// classified by the node it points to ([`node::classify`], whose tests cover the
    /// kinds), and the target keeps the path as given.
    #[test]
    fn links_are_classified_by_the_node_they_point_to() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("nvme0n1"), [0u8; 512]).unwrap();
        let link = dir.path().join("nvme-QEMU_NVMe_Ctrl_deadbeef");
        std::os::unix::fs::symlink("nvme0n1", &link).unwrap();
        assert_eq!(node::classify(&link).unwrap().name, "nvme0n1");
        assert_eq!(Target::parse(link.to_str().unwrap()).unwrap(), Target::File(link));
    }

    #[test]
    fn targets_pick_their_backend() {
        assert_eq!(
            Target::parse("0000:00:05.0").unwrap(),
            Target::Pci("0000:00:05.0".into())
        );
        assert_eq!(Target::parse("pci:00:05.0").unwrap().default_backend(), Backend::Vfio);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        std::fs::write(&file, vec![0u8; 8192]).unwrap();
        let t = Target::parse(file.to_str().unwrap()).unwrap();
        assert_eq!(
            (t.clone(), t.default_backend()),
            (Target::File(file.clone()), Backend::Uring)
        );
        let e = Target::parse(dir.path().join("missing").to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("No such file"), "{e}");
        let e = Target::parse(dir.path().to_str().unwrap()).unwrap_err();
        assert!(e.to_string().contains("not a block device"), "{e}");
    }

    #[test]
    fn backend_names_round_trip() {
        for b in Backend::ALL {
            assert_eq!(b.name().parse::<Backend>().unwrap(), b);
        }
        assert!("spdk".parse::<Backend>().unwrap_err().contains("uring-cmd"));
    }
}
