//! The PCIe NVMe controller driver, generic over register access and DMA memory.
//!
//! The same code drives a controller whose BAR is mapped through VFIO and the in-process
//! simulated controller. [`Controller::init`] runs the initialisation state machine
//! ([`InitState`]); the controller then hands out [`IoQueuePair`]s, one per thread, and
//! offers the admin commands (Identify, Get Log Page, Get/Set Features, Format NVM,
//! Firmware Image Download/Commit, Abort). Dropping the last handle shuts the controller
//! down normally (CC.SHN, CSTS.SHST).

mod admin;
mod block;
mod clock;
mod config;
mod error;
mod init;
mod io;
mod namespace;
mod recovery;
#[cfg(test)]
mod recovery_tests;
mod shadow;
#[cfg(test)]
mod tests;

pub use admin::AsyncEvent;
pub use block::NamespaceQueue;
pub use config::{ControllerConfig, DataPointerMode};
pub use error::Error;
pub use init::{ControllerInit, InitState, init_all};
pub use io::{DoorbellCounts, IoCompletion, IoError, IoQueuePair, SleepCounts};
pub use namespace::Namespace;
pub use recovery::{RecoveryEvent, RecoveryObserver, ResetInProgress, ResetReason};

use crate::cmd::Command;
use crate::completion::Completion;
use crate::features::{FeatureId, FeatureSelect};
use crate::hw::{DmaAllocator, Registers};
use crate::identify::{Cns, IdentifyController, IdentifyNamespace, NamespaceDescriptor, NamespaceList, Oacs};
use crate::log::{ErrorLogEntry, FirmwareSlotLog, LogPageId, SmartLog};
use crate::queue::{CompletionQueue, SubmissionQueue};
use crate::regs::{Cap, Cc, Csts, ShutdownNotification, ShutdownStatus, Vs, offset};
use admin::{ADMIN_DATA_BYTES, AdminData, AdminQueue};
use recovery::Health;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// NSID meaning "all namespaces" / "the controller" in log pages and Flush.
pub const NSID_ALL: u32 = 0xFFFF_FFFF;

/// State shared by the controller handle and its I/O queue pairs.
pub(crate) struct Inner<R: Registers> {
    pub(crate) regs: R,
    pub(crate) dma: Arc<dyn DmaAllocator>,
    pub(crate) domain: u64,
    pub(crate) cap: Cap,
    pub(crate) vs: Vs,
    pub(crate) page_size: usize,
    pub(crate) config: ControllerConfig,
    pub(crate) identify: IdentifyController,
    pub(crate) max_transfer: usize,
    pub(crate) sgl_supported: bool,
    pub(crate) io_queues: u16,
    /// [`Health`] as a `u8`: read by every queue pair's poll.
    pub(crate) health: AtomicU8,
    /// Completed resets. A queue pair whose queues belong to an older generation must
    /// create them again.
    pub(crate) generation: AtomicU64,
    /// After a failure: whether the device is known to have stopped touching host memory.
    pub(crate) quiesced: AtomicBool,
    failure: Mutex<Option<String>>,
    /// Dropped only after a successful shutdown: until then the controller may DMA to it.
    /// Resets run while holding this lock, so no admin command reuses the admin buffers
    /// between a timeout and the reset that makes the late command harmless.
    admin: ManuallyDrop<Mutex<AdminQueue>>,
    /// Queues the controller may still have (their deletion failed): their QIDs stay taken
    /// and their memory allocated until a reset makes the controller forget them.
    orphans: Mutex<Vec<Orphan>>,
    namespaces: RwLock<Vec<Namespace>>,
    /// Held across a whole rescan (read, then store), so two rescans cannot leave the
    /// older list in place.
    rescan: Mutex<()>,
    /// `qids[i]` is true when QID i + 1 is in use.
    qids: Mutex<Vec<bool>>,
    init_trace: Vec<InitState>,
    /// Shadow doorbells in use, if any. Dropped with the admin queue, only after a
    /// successful shutdown: the controller writes the EventIdx page.
    pub(crate) shadow: ManuallyDrop<Option<shadow::ShadowDoorbells>>,
}

/// Memory of an I/O queue pair the controller may still use (its deletion failed), kept
/// with its QID until a reset makes the controller forget the queue. Its fields are never
/// read: holding them keeps the memory allocated (and mapped).
#[allow(dead_code)]
pub(crate) struct Orphan {
    pub(crate) qid: u16,
    pub(crate) sq: SubmissionQueue,
    pub(crate) cq: CompletionQueue,
    /// PRP list pages and the buffers of commands that were outstanding.
    pub(crate) buffers: Vec<crate::DmaBuf>,
}

/// Why creating an I/O queue pair on the controller failed.
pub(crate) struct CreateFailed {
    pub(crate) error: Error,
    /// Whether the controller may still have the CQ or the SQ (so may use their rings).
    /// False when Create I/O CQ never reached the controller (the controller was failed,
    /// or the admin queue refused it: [`Error::QueueFull`] and the other errors raised
    /// before a command is posted), when the controller refused it ([`Error::Command`]),
    /// and when a reset or a quiesced failure made it forget every queue since. True when
    /// a create command was posted and never answered ([`Error::Timeout`],
    /// [`Error::Fatal`], [`Error::Removed`]) and no reset followed, or when the CQ exists
    /// and deleting it again failed.
    pub(crate) queues_may_exist: bool,
    /// The controller generation the attempt was made in.
    pub(crate) generation: u64,
}

/// An initialised NVMe controller. Cheap to clone: clones share the controller.
pub struct Controller<R: Registers> {
    inner: Arc<Inner<R>>,
}

/// A [`Controller`] that may have been dropped ([`Controller::downgrade`]).
pub struct WeakController<R: Registers> {
    inner: std::sync::Weak<Inner<R>>,
}

impl<R: Registers> WeakController<R> {
    /// The controller, if some [`Controller`] handle still holds it.
    pub fn upgrade(&self) -> Option<Controller<R>> {
        self.inner.upgrade().map(|inner| Controller { inner })
    }
}

impl<R: Registers> Clone for Controller<R> {
    fn clone(&self) -> Self {
        Controller {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<R: Registers> Controller<R> {
    /// Initialises the controller behind `regs`, allocating queue memory from `dma`.
    ///
    /// Errors: [`Error::Removed`] if registers read all ones; [`Error::ReadyTimeout`] if
    /// CSTS.RDY does not follow CC.EN within CAP.TO; [`Error::Fatal`] on CSTS.CFS;
    /// [`Error::Unsupported`] / [`Error::Config`] for capabilities ironvme cannot use;
    /// [`Error::Command`] if an init command fails; [`Error::Dma`] if memory runs out.
    /// Blocks until done: [`ControllerInit`] polled with short sleeps. To bring up several
    /// controllers from one thread, use [`ControllerInit`] or [`init_all`].
    pub fn init(regs: R, dma: Arc<dyn DmaAllocator>, config: ControllerConfig) -> Result<Controller<R>, Error> {
        ControllerInit::new(regs, dma, config).wait()
    }

    /// The controller the state machine brought up.
    fn from_initialized(
        regs: R,
        dma: Arc<dyn DmaAllocator>,
        config: ControllerConfig,
        done: init::Initialized,
    ) -> Self {
        let sgl_supported = done.identify.sgl_supported();
        let inner = Inner {
            domain: dma.domain(),
            dma,
            cap: done.cap,
            vs: done.vs,
            page_size: done.page_size,
            identify: done.identify,
            max_transfer: done.max_transfer,
            sgl_supported,
            io_queues: done.io_queues,
            health: AtomicU8::new(Health::Live as u8),
            generation: AtomicU64::new(0),
            quiesced: AtomicBool::new(false),
            failure: Mutex::new(None),
            orphans: Mutex::new(Vec::new()),
            admin: ManuallyDrop::new(Mutex::new(done.admin)),
            namespaces: RwLock::new(done.namespaces),
            rescan: Mutex::new(()),
            qids: Mutex::new(vec![false; done.io_queues as usize]),
            init_trace: done.trace,
            shadow: ManuallyDrop::new(done.shadow),
            regs,
            config,
        };
        Controller { inner: Arc::new(inner) }
    }

    /// CAP as read at init.
    pub fn cap(&self) -> Cap {
        self.inner.cap
    }

    /// VS as read at init.
    pub fn version(&self) -> Vs {
        self.inner.vs
    }

    /// Identify Controller data read at init.
    pub fn identify(&self) -> &IdentifyController {
        &self.inner.identify
    }

    /// The states initialisation went through, in order.
    pub fn init_trace(&self) -> &[InitState] {
        &self.inner.init_trace
    }

    /// Memory page size in bytes (CC.MPS).
    pub fn page_size(&self) -> usize {
        self.inner.page_size
    }

    /// Largest transfer per command in bytes: min(MDTS, `max_transfer_bytes`).
    pub fn max_transfer_bytes(&self) -> usize {
        self.inner.max_transfer
    }

    /// Whether the I/O queues use shadow doorbells (asked for in the configuration,
    /// supported and accepted by the controller).
    pub fn shadow_doorbells(&self) -> bool {
        self.inner.shadow.is_some()
    }

    /// Whether I/O commands use SGLs (the controller supports them and the configuration
    /// allows them).
    pub fn sgl_supported(&self) -> bool {
        self.inner.sgl_supported
    }

    /// The quirks the driver applies to this controller
    /// ([`ControllerConfig::quirks`]).
    pub fn quirks(&self) -> crate::quirks::Quirks {
        self.inner.config.quirks_in_use()
    }

    /// I/O queue pairs available: min(asked, granted).
    pub fn io_queue_limit(&self) -> u16 {
        self.inner.io_queues
    }

    /// The DMA allocator whose buffers this controller's queues accept.
    pub fn dma(&self) -> &Arc<dyn DmaAllocator> {
        &self.inner.dma
    }

    /// The register access, for diagnostics.
    pub fn registers(&self) -> &R {
        &self.inner.regs
    }

    /// The active namespaces found at init (or by [`Self::rescan_namespaces`]).
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.inner.namespaces.read().expect("namespace lock").clone()
    }

    /// The active namespace `nsid`.
    ///
    /// Errors: [`Error::NoSuchNamespace`].
    pub fn namespace(&self, nsid: u32) -> Result<Namespace, Error> {
        let all = self.inner.namespaces.read().expect("namespace lock");
        all.iter()
            .find(|n| n.nsid == nsid)
            .cloned()
            .ok_or(Error::NoSuchNamespace(nsid))
    }

    /// Creates an I/O queue pair of the configured size (clamped to CAP.MQES + 1): Create I/O Completion Queue, then
    /// Create I/O Submission Queue, with rings and PRP list pages allocated here.
    ///
    /// Errors: [`Error::NoQueuesLeft`] when every granted queue is in use; [`Error::Dma`];
    /// [`Error::Command`] if the controller refuses a queue.
    pub fn create_io_queue_pair(&self) -> Result<IoQueuePair<R>, Error> {
        let entries = self
            .inner
            .config
            .io_queue_entries
            .min(self.inner.cap.max_queue_entries());
        self.create_io_queue_pair_sized(entries)
    }

    /// As [`Self::create_io_queue_pair`] with `entries` entries (2..=CAP.MQES + 1; the
    /// pair holds `entries − 1` outstanding commands).
    ///
    /// Errors: as [`Self::create_io_queue_pair`], and [`Error::Queue`] for a size outside
    /// the controller's limits.
    pub fn create_io_queue_pair_sized(&self, entries: u32) -> Result<IoQueuePair<R>, Error> {
        let inner = &self.inner;
        crate::queue::check_entries(entries, inner.cap.max_queue_entries())?;
        let qid = inner.allocate_qid()?;
        let (sq, cq, lists, list_bytes, generation) = inner.create_queues(qid, entries)?;
        Ok(IoQueuePair::new(
            Arc::clone(inner),
            qid,
            sq,
            cq,
            lists,
            list_bytes,
            generation,
        ))
    }

    fn admin(&self) -> MutexGuard<'_, AdminQueue> {
        self.inner.admin()
    }

    /// Sends an admin command and waits for it. With `data_len > 0` the command reads
    /// that many bytes (at most 64 KiB) from the controller, returned with the
    /// completion. The command's data pointer is set here. A command that times out, or
    /// CSTS.CFS, resets the controller before the error is returned.
    ///
    /// Errors: [`Error::Command`] with the decoded status; [`Error::Timeout`],
    /// [`Error::Fatal`], [`Error::Removed`]; [`Error::ControllerFailed`].
    pub fn admin_command(&self, cmd: Command, data_len: usize) -> Result<(Completion, Vec<u8>), Error> {
        let mut out = Vec::new();
        let data = if data_len > 0 {
            AdminData::FromDevice(data_len)
        } else {
            AdminData::None
        };
        let c = self
            .inner
            .run_admin_with(cmd, data, |bytes| out.extend_from_slice(&bytes[..data_len]))?;
        Ok((c, out))
    }

    /// Sends an admin command that writes `data` (at most 64 KiB) to the controller.
    ///
    /// Errors: as [`Self::admin_command`].
    pub fn admin_command_write(&self, cmd: Command, data: &[u8]) -> Result<Completion, Error> {
        self.inner.run_admin(cmd, AdminData::ToDevice(data))
    }

    /// Resets the controller (CC.EN 1 → 0 → 1) through the initialisation state machine
    /// and brings the admin queue back: [`Self::start_reset`], polled with short sleeps.
    /// Commands outstanding on I/O queue pairs complete with
    /// [`crate::Status::ABORTED_BY_HOST`] at their next poll, and the pairs create their
    /// queues again.
    ///
    /// Errors: the controller did not come back (it is then marked failed).
    pub fn reset(&self) -> Result<(), Error> {
        self.start_reset().wait()
    }

    /// Starts a reset without waiting for it to end: the returned [`ResetInProgress`]
    /// is polled to the end, so one thread can reset several controllers at once
    /// ([`Self::reset_all`]). Takes the admin lock first (waiting for an admin command or
    /// a reset under way on another thread) and holds it until the reset ends.
    pub fn start_reset(&self) -> ResetInProgress<'_, R> {
        ResetInProgress::start(&self.inner, ResetReason::Requested)
    }

    /// Resets every controller of `controllers` from this thread ([`Self::start_reset`]
    /// on each, taking their admin locks in one global order so that two callers cannot
    /// deadlock, then polled in turn); gives each one's result, in the order given. A
    /// controller named twice is reset once.
    pub fn reset_all(controllers: &[Controller<R>]) -> Vec<Result<(), Error>> {
        let mut order: Vec<&Controller<R>> = controllers.iter().collect();
        order.sort_by_key(|c| Arc::as_ptr(&c.inner));
        order.dedup_by_key(|c| Arc::as_ptr(&c.inner));
        let resets = order.iter().map(|c| c.start_reset()).collect();
        let done = init::poll_all(resets, ResetInProgress::poll, ResetInProgress::progress);
        let mut results: Vec<(*const Inner<R>, Result<(), Error>)> =
            order.iter().map(|c| Arc::as_ptr(&c.inner)).zip(done).collect();
        controllers
            .iter()
            .map(|c| {
                let at = results
                    .iter()
                    .position(|(p, _)| *p == Arc::as_ptr(&c.inner))
                    .expect("every controller was reset");
                // Named again: the reset ran once; say how the controller is now.
                std::mem::replace(&mut results[at].1, c.inner.live())
            })
            .collect()
    }

    /// Resets completed since init.
    pub fn reset_count(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// The device is about to be taken away: the kernel asked for it back (a VFIO request
    /// interrupt on hot-unplug, unbind or sysfs remove). Under the admin lock, the
    /// controller is shut down (CC.SHN: it writes back its volatile write cache) and
    /// disabled (CC.EN = 0, CSTS.RDY = 0), each only while its registers still answer,
    /// then marked failed with the reason `device removed: WHY` (a controller that had
    /// failed already keeps its first reason, and gets no shutdown). Every I/O queue pair then
    /// completes each outstanding command exactly once at its next poll — what the CQ
    /// already holds as the controller answered it, the rest with
    /// [`crate::Status::ABORTED_BY_HOST`] — and sleepers in interrupt mode are woken; later
    /// submissions and admin commands fail with [`Error::ControllerFailed`]. Afterwards the
    /// caller releases the device (its fd and BAR mappings). Idempotent: the kernel asks
    /// again every 10 s until the device is released.
    pub fn removal_requested(&self, why: &str) {
        self.inner.remove(format!("device removed: {why}"));
    }

    /// The platform reported an uncorrectable PCI Express error of the device (AER or DPC
    /// recovery, relayed by VFIO's error interrupt): reported as
    /// [`RecoveryEvent::PciError`]. Nothing else is done here: Linux relays it before it
    /// resets the link for a fatal error (and with DPC the link is down meanwhile), so the
    /// registers may read all ones for a while. Whatever the error leaves behind (CSTS.CFS,
    /// CSTS.RDY = 0 after the link reset, a device that stays gone) the queue pairs find and
    /// recover from as usual.
    pub fn pci_error(&self, device_status: Option<u16>) {
        self.inner.notify(RecoveryEvent::PciError { device_status });
    }

    /// A handle that does not keep the controller alive ([`WeakController::upgrade`]), for
    /// callbacks such as a device notifier's that must not outlive it.
    pub fn downgrade(&self) -> WeakController<R> {
        WeakController {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Why the controller failed for good, or `None` while it works.
    pub fn failure(&self) -> Option<String> {
        self.inner.failure()
    }

    /// Identify Controller (CNS 01h), read now.
    ///
    /// Errors: as [`Self::admin_command`]; [`Error::Parse`].
    pub fn identify_controller(&self) -> Result<IdentifyController, Error> {
        let (_, data) = self.admin_command(Command::identify(Cns::CONTROLLER, 0, 0), 4096)?;
        Ok(IdentifyController::parse(&data)?)
    }

    /// Identify Namespace (CNS 00h) of `nsid`.
    ///
    /// Errors: as [`Self::identify_controller`].
    pub fn identify_namespace(&self, nsid: u32) -> Result<IdentifyNamespace, Error> {
        let (_, data) = self.admin_command(Command::identify(Cns::NAMESPACE, nsid, 0), 4096)?;
        Ok(IdentifyNamespace::parse(&data)?)
    }

    /// The active namespace ID list (CNS 02h).
    ///
    /// Errors: as [`Self::identify_controller`].
    pub fn active_namespace_ids(&self) -> Result<Vec<u32>, Error> {
        let (_, data) = self.admin_command(Command::identify(Cns::ACTIVE_NAMESPACE_LIST, 0, 0), 4096)?;
        Ok(NamespaceList::parse(&data)?)
    }

    /// The namespace identification descriptor list (CNS 03h) of `nsid`.
    ///
    /// Errors: as [`Self::identify_controller`].
    pub fn namespace_descriptors(&self, nsid: u32) -> Result<Vec<NamespaceDescriptor>, Error> {
        let (_, data) = self.admin_command(Command::identify(Cns::NAMESPACE_ID_DESCRIPTORS, nsid, 0), 4096)?;
        Ok(crate::identify::parse_namespace_descriptors(&data)?)
    }

    /// Reads the active namespaces again (after Format NVM or a namespace change).
    ///
    /// Errors: as [`Self::identify_controller`].
    pub fn rescan_namespaces(&self) -> Result<Vec<Namespace>, Error> {
        let _one_at_a_time = self.inner.rescan.lock().expect("rescan lock");
        let mut found = Vec::new();
        for nsid in self.active_namespace_ids()? {
            let id = match self.identify_namespace(nsid) {
                Ok(id) => id,
                Err(e) => {
                    namespace::skip_refused(nsid, e)?;
                    continue;
                }
            };
            if let Some(ns) = Namespace::new(
                nsid,
                id,
                &self.inner.identify,
                self.inner.max_transfer,
                self.inner.config.quirks_in_use(),
            ) {
                found.push(ns);
            }
        }
        *self.inner.namespaces.write().expect("namespace lock") = found.clone();
        Ok(found)
    }

    /// Get Log Page: `len` bytes (a multiple of 4) of log `lid` for `nsid` from byte
    /// `offset` (a multiple of 4), read in pieces of at most 64 KiB.
    ///
    /// Errors: [`Error::Config`] for a length or offset that is not dword aligned; as
    /// [`Self::admin_command`].
    pub fn get_log_page(&self, lid: LogPageId, nsid: u32, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        let piece_max = ADMIN_DATA_BYTES.min(self.inner.max_transfer);
        let pieces = Command::get_log_page_pieces(lid, nsid, offset, len, piece_max).ok_or_else(|| {
            Error::Config(format!(
                "log page length {len} and offset {offset} must be non-zero multiples of 4"
            ))
        })?;
        let mut out = Vec::with_capacity(len);
        for (cmd, piece) in pieces {
            out.extend_from_slice(&self.admin_command(cmd, piece)?.1);
        }
        Ok(out)
    }

    /// The SMART / Health Information log (LID 02h) for the whole controller.
    ///
    /// Errors: as [`Self::get_log_page`]; [`Error::Parse`].
    pub fn smart_log(&self) -> Result<SmartLog, Error> {
        Ok(SmartLog::parse(&self.get_log_page(
            LogPageId::SMART_HEALTH,
            NSID_ALL,
            0,
            512,
        )?)?)
    }

    /// The Error Information log (LID 01h): up to ELPE + 1 entries, empty ones left out.
    ///
    /// Errors: as [`Self::smart_log`].
    pub fn error_log(&self) -> Result<Vec<ErrorLogEntry>, Error> {
        let entries = self.inner.identify.elpe as usize + 1;
        let data = self.get_log_page(LogPageId::ERROR_INFORMATION, NSID_ALL, 0, entries * 64)?;
        Ok(crate::log::parse_error_log(&data)?)
    }

    /// The Firmware Slot Information log (LID 03h).
    ///
    /// Errors: as [`Self::smart_log`].
    pub fn firmware_slot_log(&self) -> Result<FirmwareSlotLog, Error> {
        Ok(FirmwareSlotLog::parse(&self.get_log_page(
            LogPageId::FIRMWARE_SLOT,
            NSID_ALL,
            0,
            512,
        )?)?)
    }

    /// Get Features `fid` with select `sel`; returns completion DW0 (the value for most
    /// features) and `data_len` bytes of data for features that return a buffer
    /// (e.g. Timestamp: 8).
    ///
    /// Errors: as [`Self::admin_command`].
    pub fn get_features(
        &self,
        fid: FeatureId,
        sel: FeatureSelect,
        nsid: u32,
        cdw11: u32,
        data_len: usize,
    ) -> Result<(u32, Vec<u8>), Error> {
        let (c, data) = self.admin_command(Command::get_features(fid, sel, nsid, cdw11), data_len)?;
        Ok((c.dw0, data))
    }

    /// Set Features `fid` to `cdw11` (with `data` for features that take a buffer);
    /// returns completion DW0.
    ///
    /// Errors: as [`Self::admin_command`].
    pub fn set_features(&self, fid: FeatureId, nsid: u32, cdw11: u32, save: bool, data: &[u8]) -> Result<u32, Error> {
        let cmd = Command::set_features(fid, nsid, cdw11, save);
        let c = if data.is_empty() {
            self.admin_command(cmd, 0)?.0
        } else {
            self.admin_command_write(cmd, data)?
        };
        Ok(c.dw0)
    }

    /// Format NVM: formats namespace `nsid` as `settings` say (LBA format, secure erase,
    /// metadata setting, protection information), then reads the namespaces again.
    /// Destroys the namespace's data.
    /// I/O queue pairs must not be using the namespace.
    ///
    /// Errors: as [`Self::admin_command`] (the deadline is 10 × the admin timeout).
    pub fn format_nvm(&self, nsid: u32, settings: crate::cmd::FormatSettings) -> Result<Vec<Namespace>, Error> {
        let timeout = self.inner.config.admin_timeout * 10;
        let cmd = settings.command(nsid);
        self.inner.run_admin_timeout(cmd, AdminData::None, timeout, |_| ())?;
        self.rescan_namespaces()
    }

    /// Firmware Image Download of `image`, in pieces of at most 64 KiB (or FWUG).
    ///
    /// Errors: [`Error::Config`] if the image length is not a multiple of 4;
    /// [`Error::Unsupported`] if OACS says the controller has no firmware commands; as
    /// [`Self::admin_command`] (QEMU 7.2 answers Invalid Command Opcode).
    pub fn firmware_download(&self, image: &[u8]) -> Result<(), Error> {
        if image.is_empty() || image.len() % 4 != 0 {
            return Err(Error::Config(format!(
                "firmware image of {} bytes is not a non-zero multiple of 4",
                image.len()
            )));
        }
        let piece = match self.inner.identify.fwug {
            0 | 0xFF => ADMIN_DATA_BYTES,
            units => (units as usize * 4096).min(ADMIN_DATA_BYTES),
        };
        for (i, chunk) in image.chunks(piece).enumerate() {
            let cmd = Command::firmware_image_download((i * piece) as u32, chunk.len() as u32)
                .expect("pieces are dword multiples");
            self.admin_command_write(cmd, chunk)?;
        }
        Ok(())
    }

    /// Firmware Commit with commit action `action` into `slot`.
    ///
    /// Errors: as [`Self::admin_command`].
    pub fn firmware_commit(&self, slot: u8, action: u8) -> Result<u32, Error> {
        Ok(self
            .admin_command(Command::firmware_commit(slot, action, false), 0)?
            .0
            .dw0)
    }

    /// Whether OACS advertises Firmware Commit / Image Download.
    pub fn supports_firmware_update(&self) -> bool {
        self.inner.identify.oacs.contains(Oacs::FIRMWARE)
    }

    /// Abort the command `cid` on submission queue `sqid`. Returns whether the controller
    /// says it aborted it (completion DW0 bit 0 clear).
    ///
    /// Errors: as [`Self::admin_command`].
    pub fn abort(&self, sqid: u16, cid: u16) -> Result<bool, Error> {
        self.inner.abort_command(sqid, cid)
    }

    /// Asynchronous events the controller reported since the last call (polls the admin
    /// queue). Their log pages are already read (which clears them). After a Namespace
    /// Attribute Changed event ([`AsyncEvent::is_namespace_attribute_changed`]) the
    /// namespaces are read again ([`Self::rescan_namespaces`]), so [`Self::namespaces`]
    /// shows attached namespaces and no longer shows detached ones; a rescan that fails
    /// (logged) is tried again on the next call. Queue pairs already open on a namespace
    /// keep their view of it; I/O to a detached one fails with the controller's status
    /// (Invalid Namespace or Format, or as QEMU 7.2 answers, Invalid Field in Command).
    /// As SPDK's `spdk_nvme_ctrlr_process_admin_completions`, call it periodically in a
    /// long-running program: events are noticed only when the admin queue is polled.
    pub fn take_async_events(&self) -> Vec<AsyncEvent> {
        let (events, changed) = {
            let mut admin = self.admin();
            let events = admin.take_events(&self.inner.regs);
            self.inner.reset_if_event_log_overdue(&mut admin);
            (events, admin.take_namespace_change())
        };
        if changed {
            match self.rescan_namespaces() {
                Ok(_) => {}
                // A failed controller answers nothing more: no point asking again.
                Err(error @ Error::ControllerFailed(_)) => {
                    tracing::warn!(%error, "the namespaces could not be read again after a Namespace Attribute Changed event");
                }
                Err(error) => {
                    tracing::warn!(%error, "reading the namespaces after a Namespace Attribute Changed event failed; trying again at the next poll");
                    self.admin().note_namespace_change();
                }
            }
        }
        events
    }

    /// Namespace Attachment (§5.22): attaches namespace `nsid` to the controllers
    /// `controllers` (CNTLIDs, [`crate::identify::IdentifyController::cntlid`]), or
    /// detaches it from them. When the list names this controller, its namespaces are read
    /// again at once (as SPDK does after attaching or detaching); the other controllers
    /// report the change with a Namespace Attribute Changed event.
    ///
    /// Errors: [`Error::Config`] for an empty list or one of more than 2047 controllers;
    /// [`Error::Unsupported`] when OACS bit 3 (Namespace Management) is clear; as
    /// [`Self::admin_command`] (Namespace Already Attached 118h, Namespace Not Attached
    /// 11Ah, Controller List Invalid 11Ch, Invalid Field for an NSID the subsystem does not
    /// have).
    pub fn namespace_attachment(&self, nsid: u32, attach: bool, controllers: &[u16]) -> Result<(), Error> {
        if !self.inner.identify.oacs.contains(Oacs::NAMESPACE_MANAGEMENT) {
            return Err(Error::Unsupported(
                "the controller has no namespace management (OACS bit 3 is clear)".into(),
            ));
        }
        let list = crate::cmd::controller_list(controllers).map_err(Error::Config)?;
        self.admin_command_write(Command::namespace_attachment(nsid, attach), &list)?;
        if controllers.contains(&self.inner.identify.cntlid) {
            self.rescan_namespaces()?;
        }
        Ok(())
    }

    /// Asynchronous Event Requests outstanding now.
    pub fn outstanding_async_event_requests(&self) -> usize {
        self.admin().outstanding_aers()
    }

    /// CSTS as the controller reports it now.
    pub fn status_register(&self) -> Csts {
        Csts(self.inner.regs.read32(offset::CSTS))
    }
}

impl<R: Registers> Inner<R> {
    fn admin(&self) -> MutexGuard<'_, AdminQueue> {
        // A panic while holding the lock leaves the queue usable (its state is rings and
        // CIDs); recover the guard rather than poison every later admin command.
        self.admin.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs an admin command with the configured deadline.
    pub(crate) fn run_admin(&self, cmd: Command, data: AdminData<'_>) -> Result<Completion, Error> {
        self.run_admin_timeout(cmd, data, self.config.admin_timeout, |_| ())
    }

    /// Runs an admin command; `read` sees the admin data buffer before the lock drops.
    fn run_admin_with(&self, cmd: Command, data: AdminData<'_>, read: impl FnOnce(&[u8])) -> Result<Completion, Error> {
        self.run_admin_timeout(cmd, data, self.config.admin_timeout, read)
    }

    /// Runs an admin command with deadline `timeout` (see [`Self::execute_locked`]).
    fn run_admin_timeout(
        &self,
        cmd: Command,
        data: AdminData<'_>,
        timeout: Duration,
        read: impl FnOnce(&[u8]),
    ) -> Result<Completion, Error> {
        let mut admin = self.admin();
        let r = self.execute_locked(&mut admin, cmd, data, timeout);
        if r.is_ok() {
            read(admin.data(ADMIN_DATA_BYTES));
        }
        r
    }

    /// Runs an admin command on the locked admin queue. A timeout or CSTS.CFS resets the
    /// controller before the lock is released, so the next command cannot reuse the data
    /// buffer or PRP list the late command may still write; all ones marks it failed.
    pub(crate) fn execute_locked(
        &self,
        admin: &mut AdminQueue,
        cmd: Command,
        data: AdminData<'_>,
        timeout: Duration,
    ) -> Result<Completion, Error> {
        if self.health() == Health::Failed {
            return Err(self.failed_error());
        }
        self.reset_if_event_log_overdue(admin);
        if self.health() == Health::Failed {
            return Err(self.failed_error());
        }
        let seen = self.generation.load(Ordering::Acquire);
        let result = admin.execute(&self.regs, cmd, data, timeout);
        match &result {
            Err(Error::Timeout { .. }) => {
                let _ = self.reset_locked(admin, ResetReason::AdminTimeout, seen);
            }
            Err(Error::Fatal { .. }) => {
                let _ = self.reset_locked(admin, ResetReason::FatalStatus, seen);
            }
            Err(Error::Removed { during }) => self.fail(format!("device gone while {during}"), false),
            _ => {}
        }
        result
    }

    /// Resets the controller if the Get Log Page read for an asynchronous event missed its
    /// deadline (the admin timeout), as for any admin command that did: under the admin
    /// lock the caller holds, so nothing reuses the event log buffer before the controller
    /// is disabled, and the reset sends the Asynchronous Event Requests again.
    fn reset_if_event_log_overdue(&self, admin: &mut AdminQueue) {
        if !admin.event_log_overdue() || self.health() == Health::Failed {
            return;
        }
        tracing::warn!(
            timeout = ?self.config.admin_timeout,
            "the controller did not answer an asynchronous event's Get Log Page in time; resetting it"
        );
        let seen = self.generation.load(Ordering::Acquire);
        let _ = self.reset_locked(admin, ResetReason::AdminTimeout, seen);
    }

    /// Whether the controller has forgotten every I/O queue created in `generation`: a
    /// reset completed since, or it failed and is known to have stopped DMA.
    fn forgot_queues_of(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) != generation
            || (self.health() == Health::Failed && self.quiesced.load(Ordering::Acquire))
    }

    /// Keeps the memory of a queue the controller may still have, and its QID, until a
    /// reset (see [`Self::release_orphans`]).
    pub(crate) fn adopt_orphan(&self, orphan: Orphan) {
        tracing::warn!(
            qid = orphan.qid,
            "the controller may still use I/O queue {}; keeping its QID and memory until a reset",
            orphan.qid
        );
        self.orphans.lock().unwrap_or_else(|p| p.into_inner()).push(orphan);
    }

    /// Frees the orphaned queues and their QIDs. Only once the controller has forgotten
    /// every I/O queue (CSTS.RDY = 0 after CC.EN = 0).
    pub(crate) fn release_orphans(&self) {
        let orphans = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|p| p.into_inner()));
        for o in orphans {
            tracing::debug!(qid = o.qid, "controller reset: freeing an orphaned I/O queue");
            self.release_qid(o.qid);
        }
    }

    fn allocate_qid(&self) -> Result<u16, Error> {
        let mut qids = self.qids.lock().expect("qid lock");
        let free = qids
            .iter()
            .position(|used| !used)
            .ok_or(Error::NoQueuesLeft(self.io_queues))?;
        qids[free] = true;
        Ok(free as u16 + 1)
    }

    fn release_qid(&self, qid: u16) {
        if let Some(slot) = self.qids.lock().expect("qid lock").get_mut(qid as usize - 1) {
            *slot = false;
        }
    }

    /// Allocates the rings and list pages of queue `qid` (allocated by the caller) and
    /// creates them on the controller. On error the QID is released, unless the controller
    /// may still have one of the queues: then the QID and the rings are kept as an orphan.
    #[allow(clippy::type_complexity)]
    fn create_queues(
        &self,
        qid: u16,
        entries: u32,
    ) -> Result<(SubmissionQueue, CompletionQueue, crate::DmaBuf, usize, u64), Error> {
        let dma = self.dma.as_ref();
        let depth = entries as usize - 1;
        let allocated = (|| {
            let sq = SubmissionQueue::new(dma.allocate(entries as usize * 64)?, entries)?;
            let cq = CompletionQueue::new(dma.allocate(entries as usize * 16)?, entries)?;
            let list_bytes =
                crate::prp::list_pages_for_transfer(self.max_transfer, self.page_size).max(1) * self.page_size;
            let lists = dma.allocate(depth * list_bytes)?;
            Ok::<_, Error>((sq, cq, lists, list_bytes))
        })();
        let (sq, cq, lists, list_bytes) = match allocated {
            Ok(a) => a,
            Err(e) => {
                self.release_qid(qid);
                return Err(e);
            }
        };
        match self.create_on_controller(qid, entries, sq.iova(), cq.iova()) {
            Ok(generation) => Ok((sq, cq, lists, list_bytes, generation)),
            Err(failed) => {
                if failed.queues_may_exist {
                    self.adopt_orphan(Orphan {
                        qid,
                        sq,
                        cq,
                        buffers: vec![lists],
                    });
                } else {
                    self.release_qid(qid);
                }
                Err(failed.error)
            }
        }
    }

    /// The MSI-X vector of I/O queue `qid`'s CQ: `qid` itself when interrupt vectors were
    /// configured and `qid` is below their count; `None` (polled, IEN = 0) otherwise.
    pub(crate) fn interrupt_vector(&self, qid: u16) -> Option<u16> {
        self.config.interrupts.as_ref().filter(|v| qid < v.count()).map(|_| qid)
    }

    /// Create I/O CQ then SQ `qid` over rings at the given IOVAs (one IOVA-contiguous
    /// allocation each, as CAP.CQR asks). Returns the controller generation the queues
    /// belong to. A timeout resets the controller (which then forgets the queues).
    pub(crate) fn create_on_controller(
        &self,
        qid: u16,
        entries: u32,
        sq_iova: u64,
        cq_iova: u64,
    ) -> Result<u64, CreateFailed> {
        let contiguous = true;
        if self.health() == Health::Failed {
            return Err(CreateFailed {
                error: self.failed_error(),
                queues_may_exist: false, // nothing was sent
                generation: self.generation.load(Ordering::Acquire),
            });
        }
        let create_cq = Command::create_io_cq(qid, entries, cq_iova, contiguous, self.interrupt_vector(qid));
        let create_sq = Command::create_io_sq(qid, entries, sq_iova, contiguous, 0, qid);
        // Under the admin lock, so no reset can slip between creating the queues and
        // reading the generation they belong to.
        let mut admin = self.admin();
        let generation = self.generation.load(Ordering::Acquire);
        let failed = |error: Error, queues_may_exist: bool| CreateFailed {
            error,
            queues_may_exist,
            generation,
        };
        let timeout = self.config.admin_timeout;
        if let Some(s) = self.shadow.as_ref() {
            // No queue `qid` exists on the controller: its shadow words start at 0, as
            // the new queues' tail and head do.
            s.reset_queue(qid);
        }
        match self.execute_locked(&mut admin, create_cq, AdminData::None, timeout) {
            Ok(_) => {}
            // Refused, or never posted (e.g. the admin queue was full): there is no CQ.
            Err(e) if !may_still_run(&e) => return Err(failed(e, false)),
            Err(e) => {
                let forgot = self.forgot_queues_of(generation);
                return Err(failed(e, !forgot));
            }
        }
        let e = match self.execute_locked(&mut admin, create_sq, AdminData::None, timeout) {
            Ok(_) => return Ok(generation),
            Err(e) => e,
        };
        if self.forgot_queues_of(generation) {
            return Err(failed(e, false));
        }
        if may_still_run(&e) {
            // The SQ may exist too, and the controller could not be reset.
            return Err(failed(e, true));
        }
        let undone = self
            .execute_locked(&mut admin, Command::delete_io_cq(qid), AdminData::None, timeout)
            .is_ok();
        let forgot = undone || self.forgot_queues_of(generation);
        Err(failed(e, !forgot))
    }

    /// Delete I/O SQ then CQ `qid` (if they still exist: created in `generation`) and
    /// free the QID. `Ok` means the controller no longer touches the queues' memory; on
    /// error the QID stays taken (the caller hands the memory to [`Self::adopt_orphan`]).
    pub(crate) fn delete_io_queue_pair(&self, qid: u16, generation: u64) -> Result<(), Error> {
        let result = if self.forgot_queues_of(generation) {
            Ok(()) // a reset deleted them, or the controller is failed and quiet
        } else if self.health() == Health::Failed {
            Err(self.failed_error())
        } else {
            let mut admin = self.admin();
            if self.forgot_queues_of(generation) {
                return self.deleted(qid); // a reset ran while we waited for the lock
            }
            let timeout = self.config.admin_timeout;
            let deleted = self
                .execute_locked(&mut admin, Command::delete_io_sq(qid), AdminData::None, timeout)
                .and_then(|_| self.execute_locked(&mut admin, Command::delete_io_cq(qid), AdminData::None, timeout));
            match deleted {
                Ok(_) => Ok(()),
                // A timeout reset the controller, which forgot the queues.
                Err(e) if self.forgot_queues_of(generation) => {
                    tracing::warn!(qid, error = %e, "deleting I/O queues failed, but a reset removed them");
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        if result.is_ok() {
            self.release_qid(qid);
        }
        result
    }

    /// The queues of `qid` are gone from the controller: frees the QID.
    fn deleted(&self, qid: u16) -> Result<(), Error> {
        self.release_qid(qid);
        Ok(())
    }

    /// Normal shutdown: CC.SHN = 01b, then wait for CSTS.SHST = complete.
    fn shutdown(&self) -> Result<(), Error> {
        let cc = Cc(self.regs.read32(offset::CC));
        if Csts(self.regs.read32(offset::CSTS)).is_all_ones() {
            return Err(Error::Removed {
                during: "shutting down",
            });
        }
        self.regs
            .write32(offset::CC, cc.with_shn(ShutdownNotification::Normal).0);
        let timeout = match self.identify.rtd3e {
            0 => self.config.shutdown_timeout,
            us => Duration::from_micros(us as u64).clamp(Duration::from_secs(1), Duration::from_secs(60)),
        };
        let deadline = Instant::now() + timeout;
        loop {
            let csts = Csts(self.regs.read32(offset::CSTS));
            if csts.is_all_ones() {
                return Err(Error::Removed {
                    during: "shutting down",
                });
            }
            if csts.shst() == ShutdownStatus::Complete {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::ShutdownTimeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Whether an admin command that failed with `e` may still be run by the controller: it
/// was posted and never answered ([`Error::Timeout`], [`Error::Fatal`], [`Error::Removed`]).
/// Every other error means the controller completed it ([`Error::Command`]) or it was
/// never posted ([`Error::QueueFull`], [`Error::ControllerFailed`], [`Error::Dma`],
/// [`Error::TransferTooLarge`], [`Error::Prp`]).
fn may_still_run(e: &Error) -> bool {
    matches!(e, Error::Timeout { .. } | Error::Fatal { .. } | Error::Removed { .. })
}

impl<R: Registers> Drop for Inner<R> {
    fn drop(&mut self) {
        // Failed and quiesced (disabled, or Bus Master Enable cleared): the controller no
        // longer touches memory, and a shutdown has nothing left to do (or no device).
        let stopped = self.health() == Health::Failed && self.quiesced.load(Ordering::Acquire);
        let released = if stopped {
            tracing::debug!("nvme controller released: it had failed and was stopped");
            Ok(())
        } else {
            self.shutdown()
                .inspect(|()| tracing::debug!("nvme controller shut down"))
        };
        match released {
            Ok(()) => {
                // Neither field is used after this point.
                // SAFETY: shutdown completed, or the failed controller was disabled or lost
                // Bus Master Enable: it touches neither the admin queue nor the shadow pages.
                unsafe {
                    ManuallyDrop::drop(&mut self.admin);
                    ManuallyDrop::drop(&mut self.shadow);
                }
            }
            // The controller may still own the admin rings: never free them (they stay
            // in the ManuallyDrop, leaked).
            Err(e) => {
                tracing::warn!(error = %e, "nvme controller shutdown failed; leaking admin queue memory");
                let orphans = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|p| p.into_inner()));
                std::mem::forget(orphans);
            }
        }
    }
}
