//! The io_uring NVMe passthrough backend: NVMe I/O commands sent with
//! `IORING_OP_URING_CMD` to a namespace's generic character device `/dev/ngXnY`
//! (Linux 5.19+).
//!
//! - The ring has 128-byte SQEs and 32-byte CQEs (`IORING_SETUP_SQE128 |
//!   IORING_SETUP_CQE32`): each SQE carries `cmd_op = NVME_URING_CMD_IO` and the 72-byte
//!   `struct nvme_uring_cmd` in its 80-byte command area; each CQE carries `res` — 0 for
//!   success (not a byte count), a positive NVMe status (the 15-bit status field), or
//!   `-errno` — and completion DW0 in the big CQE (`big_cqe()[0]`).
//! - Submission is batched: [`BlockQueue::submit`] only writes an SQE; [`BlockQueue::ring`]
//!   is one `io_uring_enter` for everything queued. Completions are reaped by polling the
//!   CQ ring in memory ([`BlockQueue::poll`] makes no system call when nothing is waiting
//!   to be submitted, unless the kernel flags completion work for the thread to run:
//!   see [`crate::uring`]'s task running); [`BlockQueue::wait`] sleeps in
//!   `io_uring_enter` instead of spinning.
//! - Every operation has a slot, allocated with the queue (`depth` of them, at most
//!   [`MAX_QUEUE_DEPTH`](crate::ioctl::MAX_QUEUE_DEPTH)): the slot index is the SQE's `user_data`, and the slot holds the
//!   caller's buffer until the CQE arrives. A Deallocate's 16-byte range lives in the
//!   slot's part of a per-queue range buffer. Nothing is allocated per operation.
//! - Fixed buffers: the queue registers a sparse table of [`FIXED_BUFFERS`] buffers at
//!   creation, and the first time a buffer is used, registers the buffer's own pages into
//!   a free slot (one `IORING_REGISTER_BUFFERS_UPDATE` per distinct buffer, never per
//!   command: a program that reuses its buffers, as perf and the NVMe/TCP target do,
//!   registers each once), keeping its DMA region mapped while registered. Commands on
//!   registered memory carry `IORING_URING_CMD_FIXED` and the table index, so the kernel
//!   skips pinning user pages per command. Linux 6.0 added fixed-buffer uring_cmd
//!   (`io_uring_cmd_import_fixed`), and Linux 6.1 honours the flag (a command whose
//!   address lies outside the registered buffer it names fails with `EFAULT`), with a
//!   cost that decides the registration's size: its `blk_rq_map_user_bvec` takes every
//!   page from the command's first page to the *registered buffer's* end (not the
//!   transfer's), refuses the command when they are more than the queue's `max_segments`
//!   (127 for QEMU's controller) and walks them per command. Registering whole DMA
//!   regions, as the block backend does ([`crate::uring`]), made 4 KiB reads at QD128
//!   from one 512 KiB region run at about 0.6× the IOPS of plain addresses; registering
//!   each buffer's pages makes the walk the
//!   transfer's own pages. Linux 6.12 dropped that check ("block: fix queue limits checks
//!   in blk_rq_map_user_bvec for real"); Debian's 6.1 has only the earlier fix. A buffer
//!   larger than `max_segments` pages, one that does not fit the registration made for
//!   its first page, or one that comes when the table is full or that the kernel refuses
//!   (`RLIMIT_MEMLOCK`) goes with a plain user address, which the kernel pins per
//!   command. Kernels before 6.1 fail every command carrying the flag with `EINVAL`
//!   (5.19 refuses any `uring_cmd_flags`), so each queue reads one block into a
//!   registered buffer when it is created and, if that fails with an OS error, uses plain
//!   addresses only, with a warning.
//! - The namespace's node is a registered file (`IOSQE_FIXED_FILE`) when the kernel
//!   allows it.
//! - Admin commands go through the admin ioctl on the same `/dev/ngXnY` node
//!   (`NVME_IOCTL_ADMIN64_CMD`, see [`crate::ioctl`]). Admin commands over io_uring
//!   (`NVME_URING_CMD_ADMIN`) exist from Linux 6.0 but only on the controller node
//!   `/dev/nvmeX`, which this backend does not open; they need `CAP_SYS_ADMIN` either way.
//!
//! Errors say which kernel feature is missing: a ring with big SQEs/CQEs refused
//! (`EINVAL`), no `IORING_OP_URING_CMD` in the opcode probe, or `EOPNOTSUPP`/`EINVAL` for
//! the first command (a Flush sent when the queue is created) mean the kernel is older
//! than 5.19; `EPERM` from `io_uring_setup` is explained with
//! `/proc/sys/kernel/io_uring_disabled` when the kernel has it (6.6+).

use crate::dma::KernelDma;
use crate::error::{BACKEND_URING_CMD, KernelError};
use crate::ioctl::{
    Node, PassthruFile, Transfer, check_depth, check_op, classify, controller_namespaces, namespace_info, queue_limits,
};
use crate::nvme_ioctl::{NVME_URING_CMD_IO, NvmeUringCmd, decode_return};
use crate::uring::TaskRun;
use crate::uring::enter::{Enter, InFlight, Ready, Retry, RingTries, WaitErrors, retry_for};
use crate::uring::fixed::{FixedBuffers, Span};
use io_uring::types::{Fd, Fixed};
use io_uring::{IoUring, Probe, cqueue, opcode, squeue};
use ironvme_nvme::block::{BlockError, BlockQueue, Completion, IoStatus, NamespaceInfo, Op, Protection, SubmitError};
use ironvme_nvme::cmd::{Command, DSM_RANGE_BYTES, DsmRange};
use ironvme_nvme::hw::{DmaAllocator, DmaBuf};
use ironvme_nvme::identify::{IdentifyController, MetadataUnsupported};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Entries in a queue's sparse table of registered buffers: the most distinct buffers
/// (each registered as its own pages) one queue uses as fixed buffers; further buffers'
/// commands use plain addresses.
pub const FIXED_BUFFERS: usize = 1024;

/// `max_segments` to assume when sysfs does not say.
const DEFAULT_MAX_SEGMENTS: usize = 64;

/// What this backend takes, for error messages.
const NEEDS: &str = "io_uring NVMe passthrough needs a namespace's generic character device, /dev/ngXnY";

/// The kernel version io_uring NVMe passthrough needs, for error messages.
const NEEDS_KERNEL: &str = "io_uring NVMe passthrough needs Linux 5.19+";

/// A namespace opened for io_uring NVMe passthrough (`/dev/ngXnY`).
#[derive(Debug)]
pub struct UringCmdDevice {
    file: Arc<PassthruFile>,
    identify: IdentifyController,
    info: NamespaceInfo,
    /// The kernel queue's `max_segments`.
    max_segments: usize,
    /// Why I/O without metadata buffers is refused on the namespace: its metadata needs
    /// one ([`UringCmdDevice::create_queue`] refuses it;
    /// [`UringCmdDevice::create_metadata_queue`] does not).
    refused: Option<MetadataUnsupported>,
}

impl UringCmdDevice {
    /// Opens the generic character device `/dev/ngXnY` of a namespace read-write and
    /// reads its geometry with Identify (through the admin ioctl) and sysfs, as
    /// [`crate::ioctl::IoctlDevice`] does.
    ///
    /// Errors: [`KernelError::WrongDevice`] for anything but an NVMe generic node — a
    /// namespace's block device (`/dev/nvmeXnY`: use its `/dev/ngXnY`, or the uring backend
    /// for block I/O), the controller node (`/dev/nvmeX`: use one of its namespaces'
    /// nodes), or a non-NVMe file; [`KernelError::PermissionDenied`]; [`KernelError::Os`];
    /// [`KernelError::Status`] or [`KernelError::Parse`] if Identify fails;
    /// [`KernelError::Invalid`] if the namespace is inactive or its format unusable.
    pub fn open(path: &Path) -> Result<UringCmdDevice, KernelError> {
        let wrong = |why: String| KernelError::WrongDevice {
            backend: BACKEND_URING_CMD,
            path: path.to_owned(),
            why,
        };
        let node = classify(BACKEND_URING_CMD, path, NEEDS)?;
        let disk = match &node {
            node @ Node::Generic(_) => node.disk().unwrap_or_default(),
            Node::Block(name) => {
                let generic = crate::node::NvmeName::parse(name)
                    .and_then(|n| n.generic())
                    .map_or_else(|| "ngXnY".to_string(), |g| g.to_string());
                return Err(wrong(format!(
                    "{name} is the block device of an NVMe namespace; {NEEDS}: use /dev/{generic} \
                     (or the uring backend for block I/O on /dev/{name})"
                )));
            }
            Node::Controller(name) => {
                let nodes: Vec<String> = controller_namespaces(Path::new("/sys"), name)
                    .iter()
                    .map(|n| format!("/dev/{}", n.generic()))
                    .collect();
                let list = if nodes.is_empty() {
                    "one of its namespaces' /dev/ngXnY".to_string()
                } else {
                    nodes.join(", ")
                };
                return Err(wrong(format!(
                    "{name} is an NVMe controller's character device; {NEEDS}: use {list}"
                )));
            }
        };
        let file = Arc::new(PassthruFile::open(BACKEND_URING_CMD, path, false)?);
        let nsid = file.namespace_id()?;
        let identify = file.identify_controller()?;
        let ns = file.identify_namespace(nsid)?;
        let limits = queue_limits(Path::new("/sys"), &disk);
        let quirks = node.quirks_in(Path::new("/sys"));
        let info = namespace_info(nsid, &ns, &identify, &limits, quirks).ok_or_else(|| KernelError::Invalid {
            backend: BACKEND_URING_CMD,
            why: format!(
                "{}: namespace {nsid} is inactive or has an unusable LBA format",
                path.display()
            ),
        })?;
        tracing::debug!(path = %path.display(), nsid, "uring-cmd: opened");
        let max_segments = limits.max_segments.unwrap_or(DEFAULT_MAX_SEGMENTS);
        Ok(UringCmdDevice {
            file,
            identify,
            info,
            max_segments,
            refused: node.check_plain_io(nsid, &ns).err(),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &NamespaceInfo {
        &self.info
    }

    /// The device node this was opened from.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Identify Controller, as read at open.
    pub fn identify(&self) -> &IdentifyController {
        &self.identify
    }

    /// Runs an I/O command for this node's namespace that moves `len` bytes from the
    /// controller (0 for none), one at a time outside the queues, through
    /// `NVME_IOCTL_IO64_CMD` on this node (zone management, for one); returns the
    /// command's result (DW1:DW0) and the data.
    ///
    /// Errors: [`KernelError::WrongDevice`] for a command on another namespace; as
    /// [`crate::ioctl::IoctlDevice::io_read`].
    pub fn io_read(&self, cmd: Command, len: usize) -> Result<(u64, Vec<u8>), KernelError> {
        if cmd.nsid != self.info.nsid {
            return Err(KernelError::WrongDevice {
                backend: BACKEND_URING_CMD,
                path: self.file.path().to_path_buf(),
                why: format!(
                    "an I/O command for namespace {} runs on that namespace's node, not namespace {}'s",
                    cmd.nsid, self.info.nsid
                ),
            });
        }
        self.file.read_command(false, cmd, len)
    }

    /// Runs an admin command that transfers `len` bytes from the controller (0 for none)
    /// and returns completion DW0 and the data — through the admin ioctl on this node
    /// (`NVME_IOCTL_ADMIN64_CMD`), not io_uring.
    ///
    /// Errors: as [`crate::ioctl::IoctlDevice::admin_read`].
    pub fn admin_read(&self, cmd: Command, len: usize) -> Result<(u32, Vec<u8>), KernelError> {
        self.file.admin_read(cmd, len)
    }

    /// Runs an admin command that transfers `data` to the controller (empty for none)
    /// and returns completion DW0, through the admin ioctl on this node.
    ///
    /// Errors: as [`crate::ioctl::IoctlDevice::admin_write`].
    pub fn admin_write(&self, cmd: Command, data: &[u8]) -> Result<u32, KernelError> {
        self.file.admin_write(cmd, data, None)
    }

    /// As [`UringCmdDevice::admin_write`], with `timeout` instead of the kernel's admin
    /// command timeout: see [`crate::ioctl::IoctlDevice::admin_write_within`].
    ///
    /// Errors: as [`crate::ioctl::IoctlDevice::admin_write`].
    pub fn admin_write_within(&self, cmd: Command, data: &[u8], timeout: Duration) -> Result<u32, KernelError> {
        self.file.admin_write(cmd, data, Some(timeout))
    }

    /// An I/O queue of `depth` operations (1..=[`MAX_QUEUE_DEPTH`](crate::ioctl::MAX_QUEUE_DEPTH)) on its own io_uring
    /// (SQ of `depth` rounded up to a power of two, CQ twice that), with registered
    /// buffers where the kernel takes them. Sends one Flush to check that the kernel takes
    /// NVMe commands over io_uring, then a 1-block read of LBA 0 from a registered buffer
    /// to check that it takes those (`IORING_URING_CMD_FIXED`, Linux 6.1: older kernels
    /// fail every such command with `EINVAL`); if not, the queue uses plain addresses and
    /// a warning says so ([`UringCmdQueue::fixed_buffers_active`]).
    ///
    /// Errors: [`KernelError::MetadataUnsupported`] for a namespace whose metadata needs a
    /// buffer (see
    /// [`IdentifyNamespace::check_plain_io`](ironvme_nvme::identify::IdentifyNamespace::check_plain_io));
    /// [`KernelError::Unavailable`] when io_uring is missing or disabled or the
    /// kernel is older than 5.19; [`KernelError::Invalid`] for a depth out of range;
    /// [`KernelError::PermissionDenied`]; [`KernelError::Os`]; [`KernelError::Dma`].
    pub fn create_queue(&self, depth: usize) -> Result<UringCmdQueue, KernelError> {
        self.create_queue_with(depth, true)
    }

    /// [`Self::create_queue`] for a caller that carries metadata
    /// ([`BlockQueue::submit_with_metadata`]): it opens on any namespace.
    ///
    /// Errors: as [`Self::create_queue`], without [`KernelError::MetadataUnsupported`].
    pub fn create_metadata_queue(&self, depth: usize) -> Result<UringCmdQueue, KernelError> {
        self.open_queue(depth, true)
    }

    /// As [`UringCmdDevice::create_queue`]; without `fixed_buffers`, every command uses a
    /// plain user address (the kernel pins its pages per command) and nothing is probed.
    ///
    /// Errors: as [`UringCmdDevice::create_queue`].
    pub fn create_queue_with(&self, depth: usize, fixed_buffers: bool) -> Result<UringCmdQueue, KernelError> {
        if let Some(why) = &self.refused {
            return Err(KernelError::MetadataUnsupported {
                backend: BACKEND_URING_CMD,
                path: self.path().to_owned(),
                source: Box::new(why.clone()),
            });
        }
        self.open_queue(depth, fixed_buffers)
    }

    fn open_queue(&self, depth: usize, fixed_buffers: bool) -> Result<UringCmdQueue, KernelError> {
        check_depth(BACKEND_URING_CMD, depth)?;
        UringCmdQueue::new(
            Arc::clone(&self.file),
            self.info.clone(),
            depth,
            self.max_segments,
            fixed_buffers,
        )
    }
}

/// What a slot of the queue holds while its command is outstanding.
#[derive(Debug, Default)]
struct Slot {
    buf: Option<DmaBuf>,
    tag: u64,
    busy: bool,
    /// The registered buffer the command uses, if any.
    fixed: Option<u16>,
}

impl InFlight for Slot {
    fn busy(&self) -> bool {
        self.busy
    }

    fn abandon(&mut self) {
        std::mem::forget(self.buf.take());
    }
}

/// How the queue names the namespace's node in its SQEs.
#[derive(Clone, Copy, Debug)]
enum FileRef {
    /// Registered file 0.
    Fixed,
    /// The plain file descriptor.
    Fd(i32),
}

/// An I/O queue on one namespace over io_uring NVMe passthrough.
///
/// Completions are posted in the context of the thread that submitted the commands (see
/// [`crate::uring`]'s task running): move a queue to another thread only
/// when nothing is in flight. Registered buffers keep their DMA regions mapped until the
/// queue is dropped.
///
/// `io_uring_enter` failures are handled as by [`crate::UringQueue`]: `EINTR` retried, `EAGAIN`/`EBUSY` retried after reaping,
/// `ring` gives up after a bounded number of tries; when `wait` cannot enter the kernel
/// for 10 s the queue fails, completing its commands without their buffers (leaked: the
/// kernel may still write them). Dropping the queue waits up to 75 s for outstanding
/// commands, then leaks their buffers.
pub struct UringCmdQueue {
    // Field order is drop order: the ring closes before the regions it registered and the
    // node it submits to are released.
    ring: IoUring<squeue::Entry128, cqueue::Entry32>,
    fixed: FixedBuffers,
    file: Arc<PassthruFile>,
    file_ref: FileRef,
    info: NamespaceInfo,
    slots: Box<[Slot]>,
    free: Vec<u32>,
    outstanding: usize,
    /// `depth` DSM ranges, slot i's at byte 16 × i.
    ranges: DmaBuf,
    /// `io_uring_enter`, with its deadlines.
    sys: Enter,
    /// CQEs (DW0 unused) reaped by `ring` to make room in a full completion queue, for
    /// the next `poll`; the failed commands of a failed queue, and why it failed.
    ready: Ready,
    /// How the ring runs completion work ([`crate::uring::build_ring`]).
    taskrun: TaskRun,
}

impl std::fmt::Debug for UringCmdQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringCmdQueue")
            .field("path", &self.file.path())
            .field("nsid", &self.info.nsid)
            .field("depth", &self.slots.len())
            .field("outstanding", &self.outstanding)
            .field("registered_buffers", &self.fixed.registered())
            .finish()
    }
}

impl UringCmdQueue {
    fn new(
        file: Arc<PassthruFile>,
        info: NamespaceInfo,
        depth: usize,
        max_segments: usize,
        fixed_buffers: bool,
    ) -> Result<UringCmdQueue, KernelError> {
        let mut q = UringCmdQueue::build(file, info, depth, max_segments, fixed_buffers, true)?;
        q.check_passthrough()?;
        if q.fixed.active() {
            q.probe_fixed_buffers()?;
        }
        Ok(q)
    }

    /// The queue, before checking that the kernel runs commands from it.
    fn build(
        file: Arc<PassthruFile>,
        info: NamespaceInfo,
        depth: usize,
        max_segments: usize,
        fixed_buffers: bool,
        single_issuer: bool,
    ) -> Result<UringCmdQueue, KernelError> {
        let entries = depth.next_power_of_two() as u32;
        let builder = IoUring::<squeue::Entry128, cqueue::Entry32>::builder();
        let (ring, taskrun) = crate::uring::build_ring(&builder, entries, true, single_issuer)
            .map_err(|e| setup_error(file.path(), e))?;
        let mut probe = Probe::new();
        if ring.submitter().register_probe(&mut probe).is_ok() && !probe.is_supported(opcode::UringCmd80::CODE) {
            return Err(unavailable(format!(
                "{NEEDS_KERNEL}: this kernel's io_uring has no IORING_OP_URING_CMD"
            )));
        }
        let enabled = fixed_buffers
            && match ring.submitter().register_buffers_sparse(FIXED_BUFFERS as u32) {
                Ok(()) => true,
                Err(e) => {
                    tracing::info!(error = %e, "uring-cmd: no sparse registered-buffer table; using plain addresses");
                    false
                }
            };
        let fd = file.fd().as_raw_fd();
        let file_ref = match ring.submitter().register_files(&[fd]) {
            Ok(()) => FileRef::Fixed,
            Err(_) => FileRef::Fd(fd),
        };
        let ranges = KernelDma::new(false).allocate(depth * DSM_RANGE_BYTES)?;
        let sys = Enter::new(ring.params().is_feature_ext_arg());
        Ok(UringCmdQueue {
            ring,
            fixed: FixedBuffers::new(
                enabled,
                Span::Window {
                    max_pages: max_segments,
                },
                FIXED_BUFFERS,
            ),
            file,
            file_ref,
            info,
            slots: (0..depth).map(|_| Slot::default()).collect(),
            free: (0..depth as u32).rev().collect(),
            outstanding: 0,
            ranges,
            sys,
            ready: Ready::new(depth),
            taskrun,
        })
    }

    /// Whether the ring defers completion work to its one issuing thread
    /// (`IORING_SETUP_DEFER_TASKRUN`: Linux 6.1+; not after the queue moved to another
    /// thread). See [`crate::uring`]'s task running.
    pub fn deferred(&self) -> bool {
        matches!(self.taskrun, TaskRun::Deferred { .. })
    }

    /// Makes the ring usable from the calling thread, as [`crate::UringQueue`] does: a
    /// deferred ring that another thread created is replaced, when nothing is
    /// outstanding, by a cooperative one, with the checks made at creation kept (the
    /// passthrough check and the registered-buffer probe are not run again; the counters
    /// and deadlines carry over). With commands outstanding the kernel refuses this
    /// thread (`EEXIST`).
    ///
    /// Errors: [`BlockError::Os`] when the new ring cannot be made; the queue is
    /// unchanged.
    fn claim(&mut self) -> Result<(), BlockError> {
        if !self.taskrun.needs_new_ring(self.outstanding, self.ready.is_dead()) {
            return Ok(());
        }
        let max_segments = self.fixed.max_pages().expect("passthrough registers windows");
        let mut moved = UringCmdQueue::build(
            Arc::clone(&self.file),
            self.info.clone(),
            self.slots.len(),
            max_segments,
            self.fixed.active(),
            false,
        )
        .map_err(crate::uring::new_ring_error)?;
        tracing::debug!(
            path = %self.file.path().display(),
            "uring-cmd: queue moved to another thread; its deferred ring is replaced by a cooperative one"
        );
        moved.fixed.counters = self.fixed.counters;
        std::mem::swap(&mut moved.sys, &mut self.sys);
        *self = moved;
        Ok(())
    }

    /// The node the queue's commands go to.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// How many buffers are registered (each as its own pages, see the module
    /// documentation).
    pub fn registered_buffers(&self) -> usize {
        self.fixed.registered()
    }

    /// Whether commands use registered buffers (`IORING_URING_CMD_FIXED`): asked for,
    /// the kernel has sparse buffer tables (5.19+), and the probe at creation passed (the
    /// kernel honours the flag: 6.1+).
    pub fn fixed_buffers_active(&self) -> bool {
        self.fixed.active()
    }

    /// Reads LBA 0 (with its metadata where plain I/O cannot run) into a registered
    /// buffer and waits: kernels before 6.1 fail every
    /// command with `IORING_URING_CMD_FIXED` (`EINVAL`), so on any OS error the queue
    /// stops using registered buffers ([`fixed_buffers_work`]), with a warning. The
    /// probe's table slot is emptied again once its read has completed.
    ///
    /// Errors: [`KernelError::Dma`] if the buffer cannot be allocated;
    /// [`KernelError::Unavailable`] if the read cannot be queued, or if waiting for it
    /// failed the queue (`io_uring_enter` kept failing).
    fn probe_fixed_buffers(&mut self) -> Result<(), KernelError> {
        // On a namespace whose metadata needs a buffer the probe carries one (the block's
        // metadata after its data, or interleaved), checking nothing.
        let fmt = self.info.metadata;
        let carry = !fmt.plain_io();
        let len = if carry {
            fmt.bytes_per_block(self.info.block_size)
        } else {
            self.info.block_size as usize
        };
        let mut buf = KernelDma::new(false).allocate(len)?;
        match self.fixed.slot_for(&self.ring.submitter(), &mut buf) {
            // Counted again when the probe's read is submitted.
            Some(slot) => self.fixed.complete(slot),
            // The buffer could not be registered: nothing to probe, and commands on
            // memory that cannot be registered use plain addresses anyway. The refused
            // entry lets go of the probe's buffer.
            None => {
                self.fixed.release_idle(&self.ring.submitter());
                return Ok(());
            }
        }
        let queued = if carry {
            self.submit_with_metadata(Op::Read { lba: 0 }, Some(buf), Protection::default(), 0)
        } else {
            self.submit(Op::Read { lba: 0 }, Some(buf), 0)
        };
        queued.map_err(|e| unavailable(format!("cannot queue the registered-buffer probe: {}", e.error)))?;
        let mut result = None;
        while result.is_none() && self.outstanding > 0 {
            self.wait(1, |c| result = Some(c.result));
        }
        if let Err(e) = self.ready.alive() {
            return Err(unavailable(format!(
                "{}: waiting for the registered-buffer probe: {e}",
                self.file.path().display()
            )));
        }
        let Some(result) = result else {
            return Ok(());
        };
        // The probe's slot is emptied: its buffer is gone.
        self.fixed.release_idle(&self.ring.submitter());
        if !fixed_buffers_work(&result) {
            let error = result.expect_err("not working means an error");
            if carry {
                tracing::warn!(
                    path = %self.file.path().display(),
                    %error,
                    "uring-cmd: a read with metadata into a registered buffer (IORING_URING_CMD_FIXED) failed: this \
                     kernel takes no registered buffers for NVMe passthrough (Linux 6.1+ does), or no metadata for \
                     this namespace (it needs CONFIG_BLK_DEV_INTEGRITY); using plain addresses, which the kernel \
                     pins per command"
                );
            } else {
                tracing::warn!(
                    path = %self.file.path().display(),
                    %error,
                    "uring-cmd: a read into a registered buffer (IORING_URING_CMD_FIXED) failed: this kernel does not \
                     take registered buffers for NVMe passthrough (Linux 6.1+ does); using plain addresses, which \
                     the kernel pins per command"
                );
            }
            self.fixed.disable();
        }
        Ok(())
    }

    /// Sends a Flush and waits for it: proves the kernel runs NVMe commands from this
    /// ring before the queue is handed out.
    fn check_passthrough(&mut self) -> Result<(), KernelError> {
        let mut result = None;
        self.submit(Op::Flush, None, 0)
            .map_err(|e| unavailable(format!("cannot queue a Flush: {e}")))?;
        if let Err(e) = self.ring() {
            return Err(match e {
                BlockError::Os { source, .. } => self.file.os_error("io_uring_enter", source),
                other => unavailable(other.to_string()),
            });
        }
        while result.is_none() {
            self.wait(1, |c| result = Some(c.result));
        }
        match result.expect("loop ends when set") {
            Ok(()) | Err(IoStatus::Nvme(_)) => Ok(()),
            Err(IoStatus::Os(errno)) if errno == libc::EOPNOTSUPP || errno == libc::EINVAL => {
                Err(unavailable(format!(
                    "{NEEDS_KERNEL}: a Flush through NVME_URING_CMD_IO on {} failed with {}",
                    self.file.path().display(),
                    io::Error::from_raw_os_error(errno)
                )))
            }
            Err(IoStatus::Os(errno)) => Err(self
                .file
                .os_error("IORING_OP_URING_CMD", io::Error::from_raw_os_error(errno))),
        }
    }

    /// Builds and queues the SQE for `cmd` in `slot`, moving the data and metadata of `t`.
    fn push(&mut self, slot: u32, cmd: &Command, t: Transfer, fixed: Option<u16>) -> bool {
        let payload = NvmeUringCmd {
            metadata: t.metadata.0,
            metadata_len: t.metadata.1,
            ..NvmeUringCmd::from_command(cmd, t.addr, t.len)
        }
        .to_sqe_cmd();
        let sqe = match self.file_ref {
            FileRef::Fixed => opcode::UringCmd80::new(Fixed(0), NVME_URING_CMD_IO),
            FileRef::Fd(fd) => opcode::UringCmd80::new(Fd(fd), NVME_URING_CMD_IO),
        }
        .cmd(payload)
        .buf_index(fixed)
        .build()
        .user_data(slot as u64);
        // The caller's buffer moves into `slots[slot]` until `poll` takes the CQE; a DSM
        // range lives in the queue's `ranges`; a registered region is kept mapped by
        // `fixed`; dropping the queue waits for outstanding commands or leaks their memory.
        // `t.metadata.1` is the command's NLB × MS (`Transfer::of`), which the kernel
        // trusts for the size of its bounce buffer.
        // SAFETY: per the above, every address in the SQE stays valid until its CQE is
        // reaped, and the metadata length is the one the controller will move.
        unsafe { self.ring.submission().push(&sqe) }.is_ok()
    }

    /// Takes a slot's command back after its CQE (`user_data`, `res`).
    fn complete(
        slots: &mut [Slot],
        free: &mut Vec<u32>,
        fixed: &mut FixedBuffers,
        user_data: u64,
        res: i32,
    ) -> Option<Completion> {
        let slot = slots.get_mut(user_data as usize).filter(|s| s.busy)?;
        slot.busy = false;
        free.push(user_data as u32);
        if let Some(i) = slot.fixed.take() {
            fixed.complete(i);
        }
        let result = if res < 0 {
            Err(IoStatus::Os(-res))
        } else {
            decode_return(res).map_err(IoStatus::Nvme)
        };
        Some(Completion {
            tag: slot.tag,
            buf: slot.buf.take(),
            result,
        })
    }
}

impl BlockQueue for UringCmdQueue {
    fn namespace(&self) -> &NamespaceInfo {
        &self.info
    }

    fn depth(&self) -> usize {
        self.slots.len()
    }

    fn outstanding(&self) -> usize {
        self.outstanding
    }

    fn submit(&mut self, op: Op, buf: Option<DmaBuf>, tag: u64) -> Result<(), SubmitError> {
        self.queue(op, buf, None, tag)
    }

    /// Separate metadata goes in the request's `metadata` field, after the data in the
    /// same buffer; the kernel copies it through a bounce buffer.
    fn submit_with_metadata(
        &mut self,
        op: Op,
        buf: Option<DmaBuf>,
        pi: Protection,
        tag: u64,
    ) -> Result<(), SubmitError> {
        self.queue(op, buf, Some(pi), tag)
    }

    fn ring(&mut self) -> Result<(), BlockError> {
        self.claim()?;
        self.ring_here()
    }

    fn poll<F: FnMut(Completion)>(&mut self, max: usize, on_complete: F) -> usize {
        // A queue claim refuses has nothing outstanding: nothing to reap.
        if self.claim().is_err() {
            return 0;
        }
        self.poll_here(max, on_complete)
    }
    fn wait<F: FnMut(Completion)>(&mut self, max: usize, mut on_complete: F) -> usize {
        let mut errors = WaitErrors::default();
        loop {
            let n = self.poll(max, &mut on_complete);
            if n > 0 || self.outstanding == 0 || max == 0 {
                return n;
            }
            match self.sys.enter(&self.ring.submitter(), 1, None) {
                Ok(_) => errors.ok(),
                Err(e) if errors.failed(&e, self.sys.error_deadline) => self.fail(&e),
                Err(_) => {}
            }
        }
    }
}

impl UringCmdQueue {
    /// Checks and queues an operation; `pi` when its buffer carries metadata.
    fn queue(&mut self, op: Op, buf: Option<DmaBuf>, pi: Option<Protection>, tag: u64) -> Result<(), SubmitError> {
        if let Err(error) = self.ready.alive() {
            return Err(SubmitError { error, buf });
        }
        if let Err(error) = self.claim() {
            return Err(SubmitError { error, buf });
        }
        if self.free.is_empty() {
            return Err(SubmitError {
                error: BlockError::QueueFull(self.outstanding),
                buf,
            });
        }
        let blocks = match check_op(&self.info, &op, buf.as_ref(), pi.as_ref()) {
            Ok(n) => n,
            Err(error) => return Err(SubmitError { error, buf }),
        };
        let slot = self.free.pop().expect("checked non-empty");
        let cmd = op.command_for(self.info.nsid, &self.info.metadata, blocks, pi.as_ref());
        let mut buf = buf;
        let (t, fixed) = match (&mut buf, op) {
            (Some(b), _) => {
                let index = self.fixed.slot_for(&self.ring.submitter(), b);
                let t = Transfer::of(&self.info, b.as_ptr() as u64, b.len(), blocks as u64, pi.is_some());
                (t, index)
            }
            (None, Op::Deallocate { .. }) => {
                let range: DsmRange = op.dsm_range();
                let at = slot as usize * DSM_RANGE_BYTES;
                // A raw-pointer write leaves other slots' bytes, which the kernel may be
                // reading, unborrowed.
                // SAFETY: slot `slot` is free, so no command reads its 16 bytes of `ranges`,
                // which holds `depth` ranges, so `at + 16` is in bounds.
                unsafe { std::ptr::write_unaligned(self.ranges.as_ptr().add(at).cast::<DsmRange>(), range) };
                // SAFETY: as above, `at` is within the buffer.
                let addr = unsafe { self.ranges.as_ptr().add(at) } as u64;
                let t = Transfer {
                    addr,
                    len: DSM_RANGE_BYTES as u32,
                    metadata: (0, 0),
                };
                (t, None)
            }
            (None, _) => (Transfer::default(), None),
        };
        if !self.push(slot, &cmd, t, fixed) {
            self.free.push(slot);
            if let Some(i) = fixed {
                self.fixed.complete(i);
            }
            return Err(SubmitError {
                error: BlockError::QueueFull(self.outstanding),
                buf,
            });
        }
        self.slots[slot as usize] = Slot {
            buf,
            tag,
            busy: true,
            fixed,
        };
        self.outstanding += 1;
        Ok(())
    }
}

impl UringCmdQueue {
    /// Moves every CQE into `ready`: the completion queue is full, and the kernel takes
    /// no submissions until some are reaped. Returns how many.
    fn stash_completions(&mut self) -> usize {
        self.ready.stash(self.ring.completion())
    }

    /// Fails the queue after `io_uring_enter` kept failing with `e`: every outstanding
    /// command completes (through `ready`) with the errno and without its buffer, which is
    /// leaked (the kernel may still write it), as are the DSM ranges.
    fn fail(&mut self, e: &io::Error) {
        let outstanding = self.outstanding;
        let why = self.ready.fail(e, self.sys.error_deadline, &mut self.slots);
        tracing::error!(
            path = %self.file.path().display(),
            outstanding,
            "uring-cmd: {why}; failing the queue and leaking the buffers of its outstanding commands"
        );
        if let Ok(all) = self.ranges.split_off(0) {
            std::mem::forget(all);
        }
        self.fixed.leak();
    }
}

impl UringCmdQueue {
    /// `ring`, on the ring as it is ([`UringCmdQueue::claim`] is the caller's business).
    fn ring_here(&mut self) -> Result<(), BlockError> {
        self.ready.alive()?;
        let mut tries = RingTries::default();
        while !self.ring.submission().is_empty() {
            let Err(e) = self.sys.enter(&self.ring.submitter(), 0, None) else {
                break;
            };
            let reap = tries.after(e).map_err(|source| BlockError::Os {
                op: "io_uring_enter",
                source,
            })?;
            if reap && self.stash_completions() == 0 {
                std::thread::yield_now();
            }
        }
        Ok(())
    }

    /// `poll`, on the ring as it is.
    fn poll_here<F: FnMut(Completion)>(&mut self, max: usize, mut on_complete: F) -> usize {
        let mut n = 0;
        while n < max {
            let Some((user_data, res)) = self.ready.pop() else {
                break;
            };
            if let Some(c) = Self::complete(&mut self.slots, &mut self.free, &mut self.fixed, user_data, res) {
                self.outstanding -= 1;
                n += 1;
                on_complete(c);
            }
        }
        if self.ready.is_dead() {
            // The ring is not reaped again: its late CQEs belong to abandoned slots.
            return n;
        }
        if !self.ring.submission().is_empty() {
            // A failure leaves the SQEs queued; the next poll or ring tries again.
            let _ = self.ring_here();
        }
        let UringCmdQueue {
            ring,
            slots,
            free,
            fixed,
            outstanding,
            sys,
            taskrun,
            ..
        } = self;
        if n == 0 {
            crate::uring::run_task_work(ring, sys, *taskrun, *outstanding > 0);
        }
        for cqe in ring.completion().take(max - n) {
            if let Some(c) = Self::complete(slots, free, fixed, cqe.user_data(), cqe.result()) {
                *outstanding -= 1;
                n += 1;
                on_complete(c);
            }
        }
        n
    }
}

impl Drop for UringCmdQueue {
    fn drop(&mut self) {
        let deadline = Instant::now() + self.sys.drain_timeout;
        while !self.ready.is_dead() && self.outstanding > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // Waits of at most 1 s, so the deadline is checked.
            let wait = (deadline - now).min(Duration::from_secs(1));
            if let Err(e) = self.sys.wait_up_to(&self.ring.submitter(), wait, self.taskrun) {
                if retry_for(&e) == Retry::No {
                    break;
                }
            }
            self.poll_here(usize::MAX, drop);
        }
        self.poll_here(usize::MAX, drop);
        if self.outstanding > 0 {
            // The kernel may still write to these buffers: leak them rather than free them.
            tracing::error!(
                path = %self.file.path().display(),
                outstanding = self.outstanding,
                "uring-cmd: dropping a queue with commands the kernel has not completed; leaking their buffers"
            );
            for s in self.slots.iter_mut() {
                std::mem::forget(s.buf.take());
            }
            if let Ok(all) = self.ranges.split_off(0) {
                std::mem::forget(all);
            }
            self.fixed.leak();
        }
    }
}

/// The verdict of the registered-buffer probe: the read reached the controller (success,
/// or any NVMe status), so the kernel took the registered buffer. An OS error — `EINVAL`
/// from a kernel before 6.1, which refuses `IORING_URING_CMD_FIXED` (5.19 rejects any
/// `uring_cmd_flags`), or anything else — means it did not.
fn fixed_buffers_work(probe: &Result<(), IoStatus>) -> bool {
    !matches!(probe, Err(IoStatus::Os(_)))
}

fn unavailable(why: String) -> KernelError {
    KernelError::Unavailable {
        backend: BACKEND_URING_CMD,
        why,
    }
}

/// Explains an `io_uring_setup` failure.
fn setup_error(path: &Path, e: io::Error) -> KernelError {
    match e.raw_os_error() {
        Some(libc::EINVAL) => unavailable(format!(
            "{NEEDS_KERNEL}: this kernel refuses a ring with 128-byte SQEs and 32-byte CQEs (io_uring_setup: EINVAL)"
        )),
        Some(libc::ENOSYS) => unavailable(
            "this kernel has no io_uring (io_uring_setup: ENOSYS; CONFIG_IO_URING off, or a seccomp filter)".into(),
        ),
        Some(libc::EPERM) => unavailable(disabled_reason(
            std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok(),
        )),
        _ => KernelError::Os {
            backend: BACKEND_URING_CMD,
            op: "io_uring_setup for",
            path: path.to_owned(),
            source: e,
        },
    }
}

/// Why `io_uring_setup` said `EPERM`, given `/proc/sys/kernel/io_uring_disabled`.
fn disabled_reason(sysctl: Option<String>) -> String {
    match sysctl.as_deref().map(str::trim) {
        Some("2") => "io_uring is disabled on this system (sysctl kernel.io_uring_disabled = 2); set it to 0".into(),
        Some("1") => "io_uring is limited to members of the group in kernel.io_uring_group \
                      (sysctl kernel.io_uring_disabled = 1)"
            .into(),
        _ => "io_uring_setup: permission denied (EPERM), though io_uring is not disabled by sysctl: \
              a seccomp filter or container policy?"
            .into(),
    }
}

// Queues are created on one thread and may move to the one that uses them.
const _: () = {
    const fn send<T: Send>() {}
    send::<UringCmdQueue>();
    send::<crate::ioctl::IoctlQueue>();
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<UringCmdDevice>();
    send_sync::<crate::ioctl::IoctlDevice>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uring::enter::{check_wait_fails_the_queue, within};

    /// A queue on `/dev/null`, without the check that the kernel runs NVMe commands
    /// from it: every command completes at once (Linux 6.1+ gives `/dev/null` a
    /// `uring_cmd` that succeeds; before, it fails with `EOPNOTSUPP`).
    fn null_queue() -> UringCmdQueue {
        queue_on(Path::new("/dev/null"))
    }

    /// A queue on `path`, without the check that the kernel runs NVMe commands from it.
    fn queue_on(path: &Path) -> UringCmdQueue {
        let file = PassthruFile::open(BACKEND_URING_CMD, path, true).unwrap();
        let info = NamespaceInfo {
            nsid: 1,
            block_size: 512,
            blocks: 1 << 20,
            max_transfer_bytes: 1 << 20,
            buffer_alignment: 4,
            write_zeroes: true,
            deallocate: true,
            deallocate_zeroes: true,
            compare: true,
            verify: true,
            volatile_write_cache: true,
            zone_commands: false,
            metadata: ironvme_nvme::block::MetadataFormat::NONE,
            source: ironvme_nvme::block::GeometrySource::Identify,
        };
        UringCmdQueue::build(Arc::new(file), info, 4, 64, true, true).unwrap()
    }

    #[test]
    fn ring_retries_signals_and_a_full_completion_queue() {
        let mut q = null_queue();
        q.submit(Op::Flush, None, 7).unwrap();
        q.sys.inject.extend([libc::EINTR, libc::EAGAIN, libc::EBUSY]);
        q.ring().expect("EINTR, EAGAIN and EBUSY are retried");
        assert!(q.sys.inject.is_empty());
        let mut done = Vec::new();
        while done.is_empty() {
            q.wait(1, |c| done.push(c.tag));
        }
        assert_eq!(done, [7]);
        // A persistent EBUSY is reported after a bounded number of tries.
        q.submit(Op::Flush, None, 8).unwrap();
        q.sys.inject.push_back(libc::EBUSY);
        q.sys.inject_forever = true;
        let e = q.ring().unwrap_err();
        assert!(
            matches!(&e, BlockError::Os { source, .. } if source.raw_os_error() == Some(libc::EBUSY)),
            "{e}"
        );
        // The Flush stayed queued: dropping the queue submits it and waits for it.
        q.sys.inject.clear();
        let started = Instant::now();
        drop(q);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn wait_fails_the_queue_after_a_persistent_enter_error_and_keeps_the_buffer() {
        let mut q = null_queue();
        q.sys.error_deadline = Duration::from_millis(200);
        let buf = KernelDma::new(false).allocate(4096).unwrap();
        q.submit(Op::Read { lba: 0 }, Some(buf), 3).unwrap();
        q.sys.inject.push_back(libc::EBADF);
        q.sys.inject_forever = true;
        check_wait_fails_the_queue(q, Duration::from_millis(200));
    }

    #[test]
    fn registered_buffers_are_dropped_when_the_probe_read_fails_with_an_os_error() {
        let s = ironvme_nvme::status::Status::from_raw;
        assert!(fixed_buffers_work(&Ok(())));
        assert!(fixed_buffers_work(&Err(IoStatus::Nvme(s(0x281)))), "reached the device");
        assert!(!fixed_buffers_work(&Err(IoStatus::Os(libc::EINVAL))), "Linux < 6.1");
        assert!(!fixed_buffers_work(&Err(IoStatus::Os(libc::EFAULT))));
        // A real kernel error: a regular file has no uring_cmd (EOPNOTSUPP).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("not-nvme");
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let mut q = queue_on(&path);
        assert!(q.fixed_buffers_active());
        q.probe_fixed_buffers().unwrap();
        assert!(!q.fixed_buffers_active(), "the probe failed: plain addresses");
        assert_eq!(q.registered_buffers(), 0, "the probe's slot was emptied");
        assert_eq!(q.outstanding(), 0);
        let mut buf = KernelDma::new(false).allocate(4096).unwrap();
        assert_eq!(q.fixed.slot_for(&q.ring.submitter(), &mut buf), None);
    }

    #[test]
    fn a_queue_that_fails_during_the_registered_buffer_probe_is_not_handed_out() {
        // Made, probed and dropped on one thread, as a queue is: only that thread enters
        // a deferred ring.
        let e = within(Duration::from_secs(10), "the probe", move || {
            let mut q = null_queue();
            q.sys.error_deadline = Duration::from_millis(100);
            q.sys.inject.push_back(libc::EBADF);
            q.sys.inject_forever = true;
            let e = q.probe_fixed_buffers();
            drop(q);
            e
        });
        let e = e.expect_err("the queue is dead").to_string();
        assert!(
            e.contains(
                "/dev/null: waiting for the registered-buffer probe: queue is dead: io_uring_enter kept failing"
            ),
            "{e}"
        );
    }

    #[test]
    fn wrong_nodes_are_refused_with_the_fix() {
        let e = UringCmdDevice::open(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.starts_with("uring-cmd: /dev/null: character device null"), "{e}");
        assert!(e.contains("/dev/ngXnY"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = UringCmdDevice::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("a directory, not a character or block device"), "{e}");
    }

    #[test]
    fn disabled_io_uring_is_explained() {
        assert!(disabled_reason(Some("2\n".into())).contains("kernel.io_uring_disabled = 2"));
        assert!(disabled_reason(Some("1".into())).contains("io_uring_group"));
        assert!(disabled_reason(None).contains("seccomp"));
        let e = setup_error(Path::new("/dev/ng0n1"), io::Error::from_raw_os_error(libc::EINVAL)).to_string();
        assert_eq!(
            e,
            "uring-cmd: unavailable: io_uring NVMe passthrough needs Linux 5.19+: this kernel refuses a ring with \
             128-byte SQEs and 32-byte CQEs (io_uring_setup: EINVAL)"
        );
    }

    #[test]
    fn sqes_carry_cmd_op_the_command_and_the_fixed_buffer() {
        let cmd = NvmeUringCmd::from_command(&Command::read(1, 8, 2), 0x1000, 1024);
        let sqe = opcode::UringCmd80::new(Fixed(0), NVME_URING_CMD_IO)
            .cmd(cmd.to_sqe_cmd())
            .buf_index(Some(5))
            .build()
            .user_data(7);
        assert_eq!(std::mem::size_of_val(&sqe), 128);
        // SAFETY: Entry128 is a 128-byte repr(C) SQE of plain integers (size checked above).
        let b: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        // struct io_uring_sqe (include/uapi/linux/io_uring.h): opcode at 0, flags at 1,
        // cmd_op at 8, uring_cmd_flags at 28, user_data at 32, buf_index at 40, cmd at 48.
        assert_eq!(b[0], 46, "IORING_OP_URING_CMD");
        assert_eq!(b[1] & 1, 1, "IOSQE_FIXED_FILE");
        assert_eq!(&b[8..12], &NVME_URING_CMD_IO.to_le_bytes());
        assert_eq!(&b[28..32], &1u32.to_le_bytes(), "IORING_URING_CMD_FIXED");
        assert_eq!(&b[32..40], &7u64.to_le_bytes());
        assert_eq!(&b[40..42], &5u16.to_le_bytes());
        assert_eq!(&b[48..128], &cmd.to_sqe_cmd());
    }
}
