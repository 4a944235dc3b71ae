//! The io_uring block backend: `O_DIRECT` reads and writes on an io_uring, on
//! `/dev/nvmeXnY`, any other block device, or a regular file.
//!
//! One [`UringDevice`] per open device or file; one [`UringQueue`] — one ring — per
//! thread. A queue keeps the block interface ([`BlockQueue`]):
//!
//! - `submit` checks the request ([`ironvme_nvme::block::check`]) and writes one SQE; it
//!   makes no system call, except the first time a buffer from a memory region not yet
//!   registered with this ring is used (see *Fixed buffers*).
//! - `ring` hands every SQE written since the last `ring` to the kernel with one
//!   `io_uring_enter` (none at all with SQPOLL while the kernel's SQ thread is awake).
//! - `poll` reaps the CQ without a system call (with IOPOLL it enters the kernel with
//!   `IORING_ENTER_GETEVENTS`, which is what polls the device; on a cooperative ring it
//!   enters when the CQ is empty and the kernel flags completion work, see
//!   *Cooperative task running*); `wait` sleeps in `io_uring_enter` until something
//!   completes.
//!
//! | operation | SQE (`linux/io_uring.h`) |
//! | --- | --- |
//! | Read / Write | `IORING_OP_READ_FIXED` / `IORING_OP_WRITE_FIXED` from a registered buffer, else `IORING_OP_READ` / `IORING_OP_WRITE`; FUA is `RWF_DSYNC` |
//! | Flush | `IORING_OP_FSYNC` with `IORING_FSYNC_DATASYNC` |
//! | Write Zeroes | `IORING_OP_FALLOCATE`, `FALLOC_FL_ZERO_RANGE \| FALLOC_FL_KEEP_SIZE` (files without zero-range support: `FALLOC_FL_PUNCH_HOLE`) |
//! | Deallocate | `IORING_OP_FALLOCATE`, `FALLOC_FL_PUNCH_HOLE \| FALLOC_FL_KEEP_SIZE` |
//! | Compare, Verify | not supported: they need NVMe passthrough (`uring-cmd`, `ioctl`) |
//!
//! **Deallocate on block devices.** The kernel's `blkdev_fallocate` implements
//! `PUNCH_HOLE | KEEP_SIZE` as a Write Zeroes that may unmap (`BLKDEV_ZERO_NOFALLBACK`; on
//! NVMe, Write Zeroes with DEAC set) and has no discard mode reachable through
//! `fallocate(2)`. So this backend offers Deallocate on a block device when the device
//! has a hardware Write Zeroes (`queue/write_zeroes_max_bytes` > 0), not when it can
//! discard, and deallocated blocks read back as zeros. (`psync` discards with
//! `BLKDISCARD` instead.)
//!
//! **Fixed buffers.** Each ring registers a sparse table of [`FIXED_BUFFER_SLOTS`] buffers
//! when it is created (`IORING_REGISTER_BUFFERS2` with `IORING_RSRC_REGISTER_SPARSE`,
//! Linux 5.19+). The first I/O with a buffer from a region ([`DmaBuf::region_span`]) the
//! table does not hold registers the whole region into a free slot
//! (`IORING_REGISTER_BUFFERS_UPDATE`): one system call per region, never per I/O. The
//! table keeps the region mapped while it is registered. When the table is full, or the
//! kernel refuses a region (locked-memory limit, regions over 1 GiB), that region's I/O
//! uses plain `IORING_OP_READ`/`WRITE`; [`UringQueue::stats`] counts all of it.
//! Registered regions stay mapped until the queue is dropped or
//! [`UringQueue::release_idle_buffers`] is called.
//!
//! **Task running.** The kernel posts a CQE in the context of the thread that submitted
//! the operation (task work). By default it interrupts that thread to do so
//! (`TWA_SIGNAL`: an IPI when the thread runs on another CPU), once per completion while
//! the thread spins in user space. Rings are created, where the kernel has the flags
//! (not with SQPOLL, which refuses them), with `IORING_SETUP_TASKRUN_FLAG` and either
//! (Linux 6.1+) `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN`, as fio's
//! io_uring engines create theirs, or (5.19+) `IORING_SETUP_COOP_TASKRUN`. The kernel
//! then only sets `IORING_SQ_TASKRUN`, and `poll`, finding the CQ empty and the flag set,
//! enters the kernel once (with `IORING_ENTER_GETEVENTS`) to run the work of every
//! completion waiting. A deferred ring keeps that work on the ring's own list and lets
//! only the thread that created it enter; a queue used from another thread with nothing
//! in flight replaces its ring with a cooperative one, once, which any thread may then
//! use. The cost either way: completions wait for the submitting thread, so poll a queue
//! from the thread that submitted its operations (from another, a deferred ring answers
//! `EEXIST`, and `wait` fails the queue after its error deadline).
//!
//! **Fixed files.** The device's file descriptor is registered with each ring
//! (`IORING_REGISTER_FILES`), so the kernel skips the fd lookup on every SQE.
//!
//! **SQPOLL and IOPOLL.** [`UringOptions::sqpoll`] has a kernel thread poll the SQ
//! (`IORING_SETUP_SQPOLL`, unprivileged since Linux 5.11). [`UringOptions::iopoll`]
//! polls the device for completions (`IORING_SETUP_IOPOLL`); it needs a block device
//! whose driver has poll queues (`queue/io_poll` = 1; for NVMe `modprobe nvme
//! poll_queues=N`), and [`UringDevice::open`] refuses it otherwise. An IOPOLL ring
//! accepts only reads and writes, so an IOPOLL queue sends Flush, Write Zeroes and
//! Deallocate through a second, ordinary ring of its own. The kernel cannot split a
//! polled request (Linux 6.1 retries such a request in an io_uring worker forever, and
//! the process can then not even exit), so with IOPOLL the namespace's
//! `max_transfer_bytes` is lowered to what needs no split
//! ([`BlockDeviceGeometry::polled_max_transfer_bytes`]: `max_segments` pages), and a
//! transfer crossing a `chunk_sectors` boundary is refused.
//!
//! Buffers come from [`crate::KernelDma`] (page-aligned); any [`DmaBuf`] whose address is
//! aligned to [`NamespaceInfo::buffer_alignment`] works, since the kernel reaches buffers
//! by host address.

pub(crate) mod enter;
pub(crate) mod fixed;
mod queue;

pub use fixed::FIXED_BUFFER_SLOTS;
pub use queue::{UringQueue, UringStats};

use crate::error::{BACKEND_URING, KernelError};
use crate::geometry::{self, BlockDeviceGeometry, FallocateSupport, FileKind, falloc, os};
use io_uring::{IoUring, opcode};
use ironvme_nvme::block::NamespaceInfo;
#[cfg(doc)]
use ironvme_nvme::{block::BlockQueue, hw::DmaBuf};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::ThreadId;

/// Largest queue depth, in operations (`IORING_MAX_ENTRIES`, `io_uring/io_uring.h`).
pub const MAX_QUEUE_DEPTH: usize = 32768;
/// How long the SQPOLL kernel thread spins without work before it sleeps, in ms.
pub const SQPOLL_IDLE_MS: u32 = 1000;

/// How to open a device with io_uring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UringOptions {
    /// A kernel thread polls the submission queue (`IORING_SETUP_SQPOLL`): `ring` makes
    /// no system call while the thread is awake (the thread may pick up an SQE as soon as
    /// `submit` writes it; `ring` only wakes the thread when it sleeps). Costs a CPU
    /// spinning for [`SQPOLL_IDLE_MS`] after the last submission.
    pub sqpoll: bool,
    /// Poll the device for completions instead of taking interrupts
    /// (`IORING_SETUP_IOPOLL`). Needs a block device with poll queues.
    pub iopoll: bool,
    /// Register buffer memory with each ring, region by region, on first use (default
    /// true). Off: every read and write is a plain `IORING_OP_READ`/`WRITE`.
    pub fixed_buffers: bool,
    /// Register the device's file descriptor with each ring (default true).
    pub fixed_files: bool,
    /// Block size of a regular file, in bytes (a power of two from 512 to 65536); default:
    /// the file system's `O_DIRECT` alignment, else 4096. For a block device it must be
    /// `None` or the device's logical block size.
    pub block_size: Option<u32>,
}

impl Default for UringOptions {
    fn default() -> UringOptions {
        UringOptions {
            sqpoll: false,
            iopoll: false,
            fixed_buffers: true,
            fixed_files: true,
            block_size: None,
        }
    }
}

/// Whether this process can use io_uring block I/O: `Ok`, or why not, in words.
///
/// Creates (and drops) a two-entry ring and checks that the kernel knows every opcode the
/// backend uses (`IORING_REGISTER_PROBE`, Linux 5.6+).
///
/// Errors: `ENOSYS` (no io_uring in this kernel), `EPERM`/`EACCES` (disabled by the
/// `kernel.io_uring_disabled` sysctl, whose value the message gives, or blocked by a
/// seccomp filter or sandbox), `ENOMEM` (locked-memory limit), or missing opcodes.
pub fn io_uring_available() -> Result<(), String> {
    let ring = IoUring::new(2).map_err(|e| setup_error(&e))?;
    let mut probe = io_uring::Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut probe) {
        return Err(format!(
            "IORING_REGISTER_PROBE failed ({e}): the kernel's io_uring is too old (needs Linux 5.6+)"
        ));
    }
    let needed = [
        (opcode::Read::CODE, "IORING_OP_READ (Linux 5.6)"),
        (opcode::Write::CODE, "IORING_OP_WRITE (Linux 5.6)"),
        (opcode::ReadFixed::CODE, "IORING_OP_READ_FIXED"),
        (opcode::WriteFixed::CODE, "IORING_OP_WRITE_FIXED"),
        (opcode::Fsync::CODE, "IORING_OP_FSYNC"),
        (opcode::Fallocate::CODE, "IORING_OP_FALLOCATE (Linux 5.6)"),
    ];
    match needed.iter().find(|(code, _)| !probe.is_supported(*code)) {
        Some((_, name)) => Err(format!("the kernel's io_uring lacks {name}")),
        None => Ok(()),
    }
}

/// How a ring's completion work runs: the kernel posts a CQE in the context of the thread
/// that submitted the operation (task work), and a ring's setup flags decide when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TaskRun {
    /// `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG`
    /// (Linux 6.1+; fio's io_uring engines set up their rings so): the work waits on the
    /// ring's own list until `issuer`, the thread that created the ring, enters with
    /// `IORING_ENTER_GETEVENTS`, and is then run for the whole batch. No other thread
    /// may enter or register anything: the kernel answers `EEXIST`.
    Deferred {
        /// The creating thread, the only one the kernel lets in.
        issuer: ThreadId,
    },
    /// `IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG` (Linux 5.19+): the work
    /// waits until the submitting thread next enters the kernel; any thread may enter.
    Cooperative,
    /// Neither (older kernels, SQPOLL rings): a completion that arrives while the thread
    /// spins in user space interrupts it (`TWA_SIGNAL`, an IPI when it runs on another
    /// CPU) to post the CQE.
    Signalled,
}

impl TaskRun {
    /// The kernel sets `IORING_SQ_TASKRUN` when work waits ([`run_task_work`]).
    pub(crate) fn flagged(self) -> bool {
        self != TaskRun::Signalled
    }

    /// Whether a queue on this ring, with `outstanding` operations and `dead` when it
    /// failed, needs a new (cooperative) ring before the calling thread uses it: a
    /// deferred ring another thread made, with nothing in flight (only the issuing thread
    /// could complete it), on a queue that still works.
    pub(crate) fn needs_new_ring(self, outstanding: usize, dead: bool) -> bool {
        // The thread check last: while operations are in flight (every submit and poll
        // of a busy queue) it is not made.
        outstanding == 0 && !dead && !self.usable_here()
    }

    /// Whether the calling thread may enter the ring: false only for a deferred ring
    /// another thread created.
    pub(crate) fn usable_here(self) -> bool {
        match self {
            TaskRun::Deferred { issuer } => issuer == this_thread(),
            _ => true,
        }
    }
}

/// The error of a queue whose new ring ([`TaskRun::needs_new_ring`]) could not be made.
pub(crate) fn new_ring_error(e: KernelError) -> ironvme_nvme::block::BlockError {
    ironvme_nvme::block::BlockError::Os {
        op: "io_uring_setup (a new ring for the thread the queue moved to)",
        source: std::io::Error::other(e.to_string()),
    }
}

thread_local! {
    static THIS_THREAD: ThreadId = std::thread::current().id();
}

/// The calling thread's id, without the reference count `std::thread::current` takes.
fn this_thread() -> ThreadId {
    THIS_THREAD.with(|id| *id)
}

/// Builds a ring of `entries` SQEs from `builder`, with its completion work run the
/// cheapest way the kernel offers ([`TaskRun`]): deferred when `single_issuer` (the ring
/// will be used by the calling thread only), else cooperative, else signalled. Without
/// `IORING_SETUP_TASKRUN_FLAG` a completion that arrives while the thread spins in user
/// space interrupts it to post the CQE; with it the kernel only sets
/// `IORING_SQ_TASKRUN`, and the queue's `poll` enters the kernel when it sees the flag and
/// the completion queue empty (see [`run_task_work`]), running the work for a whole
/// batch in one system call. Not for SQPOLL rings, which the kernel refuses these flags
/// on: pass `flagged` false.
///
/// Errors: `io_uring_setup`'s, from the plain setup when the others are refused with
/// `EINVAL`.
pub(crate) fn build_ring<S: io_uring::squeue::EntryMarker, C: io_uring::cqueue::EntryMarker>(
    builder: &io_uring::Builder<S, C>,
    entries: u32,
    flagged: bool,
    single_issuer: bool,
) -> std::io::Result<(IoUring<S, C>, TaskRun)> {
    let mut tries = Vec::with_capacity(2);
    if flagged && single_issuer {
        let mut deferred = builder.clone();
        deferred
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag();
        tries.push((deferred, TaskRun::Deferred { issuer: this_thread() }));
    }
    if flagged {
        let mut coop = builder.clone();
        coop.setup_coop_taskrun().setup_taskrun_flag();
        tries.push((coop, TaskRun::Cooperative));
    }
    for (b, taskrun) in tries {
        match b.build(entries) {
            Ok(ring) => return Ok((ring, taskrun)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    builder.build(entries).map(|ring| (ring, TaskRun::Signalled))
}

/// The step of a queue's `poll` that reaped nothing on a flagged ring ([`build_ring`])
/// with operations in flight: when the kernel flags completion work
/// (`IORING_SQ_TASKRUN`) and the completion queue is empty, enters the kernel once to run
/// it (with `IORING_ENTER_GETEVENTS`, which a deferred ring needs). Returns whether it
/// did (the caller reaps again).
pub(crate) fn run_task_work<S: io_uring::squeue::EntryMarker, C: io_uring::cqueue::EntryMarker>(
    ring: &mut IoUring<S, C>,
    sys: &mut enter::Enter,
    taskrun: TaskRun,
    in_flight: bool,
) -> bool {
    if !taskrun.flagged() || !in_flight || !ring.completion().is_empty() || !ring.submission().taskrun() {
        return false;
    }
    // An error leaves the work for the next poll or wait. (`submit_and_wait` adds
    // GETEVENTS when the flag is set.)
    let _ = sys.enter(&ring.submitter(), 0, None);
    true
}

/// Why `io_uring_setup` failed, in words.
fn setup_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => {
            "io_uring_setup: ENOSYS: this kernel has no io_uring (needs Linux 5.1+ built with CONFIG_IO_URING)".into()
        }
        Some(errno @ (libc::EPERM | libc::EACCES)) => {
            let name = if errno == libc::EPERM { "EPERM" } else { "EACCES" };
            let read = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_string());
            match read("/proc/sys/kernel/io_uring_disabled").as_deref() {
                Some("2") => format!(
                    "io_uring_setup: {name}: io_uring is disabled for all processes by sysctl kernel.io_uring_disabled=2"
                ),
                Some("1") => format!(
                    "io_uring_setup: {name}: sysctl kernel.io_uring_disabled=1 allows io_uring only to CAP_SYS_ADMIN and \
                     members of group kernel.io_uring_group (gid {})",
                    read("/proc/sys/kernel/io_uring_group").unwrap_or_else(|| "?".into())
                ),
                Some(v) => format!(
                    "io_uring_setup: {name} although sysctl kernel.io_uring_disabled={v}: a seccomp filter or sandbox \
                     blocks io_uring (container runtimes' default profiles, gVisor, ...)"
                ),
                None => format!(
                    "io_uring_setup: {name}: a seccomp filter or sandbox blocks io_uring (container runtimes' default \
                     profiles, gVisor, ...)"
                ),
            }
        }
        Some(libc::ENOMEM) => format!(
            "io_uring_setup: {e}: the locked-memory limit (ulimit -l) is too low for the ring's memory \
             (kernels before 5.12 count it against RLIMIT_MEMLOCK)"
        ),
        _ => format!("io_uring_setup: {e}"),
    }
}

/// What the queues of one device share.
pub(crate) struct Shared {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) info: NamespaceInfo,
    pub(crate) opts: UringOptions,
    /// `fallocate` mode for Write Zeroes without and with deallocation allowed, and for
    /// Deallocate (`None`: not supported).
    pub(crate) zero_mode: Option<i32>,
    pub(crate) zero_unmap_mode: Option<i32>,
    pub(crate) deallocate_mode: Option<i32>,
    /// With IOPOLL: transfers may not cross a multiple of this many bytes (0: no limit);
    /// the kernel would have to split them, which it cannot do for polled I/O.
    pub(crate) polled_chunk_bytes: u64,
}

/// A block device or regular file open for io_uring I/O (`O_RDWR | O_DIRECT`).
///
/// There is no read-only mode: a device or file that cannot be opened for writing is
/// refused (`EACCES`, `EROFS`), never silently opened read-only.
pub struct UringDevice {
    shared: Arc<Shared>,
}

impl UringDevice {
    /// Opens `path` — a block device (`/dev/nvme0n1`, `/dev/loop0`, ...) or a regular
    /// file — with `O_RDWR | O_DIRECT`, checks that io_uring works
    /// ([`io_uring_available`]), and reads the geometry (see [`crate::geometry`]).
    ///
    /// Errors: [`KernelError::Unavailable`] if io_uring does not work here, or IOPOLL
    /// was asked for and the device has no poll queues; [`KernelError::WrongDevice`] for
    /// an NVMe generic or controller char device (use `uring-cmd` / `ioctl`), any other
    /// char device, directory or FIFO, a file system that refuses `O_DIRECT`, IOPOLL on a
    /// regular file, or a file whose size is not a whole number of blocks;
    /// [`KernelError::BadOption`] for an unusable block size; [`KernelError::Os`] if
    /// opening (permission denied, read-only file system, ...) or an ioctl fails.
    pub fn open(path: &Path, opts: &UringOptions) -> Result<UringDevice, KernelError> {
        io_uring_available().map_err(|why| KernelError::Unavailable {
            backend: BACKEND_URING,
            why,
        })?;
        let meta = std::fs::metadata(path).map_err(|e| os(BACKEND_URING, "stat", path, e))?;
        let kind = geometry::kind_of(&meta, path);
        geometry::refuse_non_block(kind, path, BACKEND_URING)?;
        if opts.iopoll && kind == FileKind::Regular {
            return Err(iopoll_on_file(path));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        let meta = file.metadata().map_err(|e| os(BACKEND_URING, "fstat", path, e))?;
        let kind = geometry::kind_of(&meta, path);
        geometry::refuse_non_block(kind, path, BACKEND_URING)?;
        let mut polled_chunk_bytes = 0;
        let (info, zero_mode, zero_unmap_mode, deallocate_mode) = match kind {
            FileKind::BlockDevice { .. } => {
                let g = geometry::block_device_geometry(&file, path, BACKEND_URING)?;
                geometry::check_block_size(opts.block_size, &g, path, BACKEND_URING)?;
                if opts.iopoll {
                    check_io_poll(&g, path)?;
                }
                let (mut info, zero, zero_unmap, deallocate) = block_device_modes(&g);
                if opts.iopoll {
                    info.max_transfer_bytes = g.polled_max_transfer_bytes(info.buffer_alignment);
                    polled_chunk_bytes = g.chunk_bytes;
                }
                (info, zero, zero_unmap, deallocate)
            }
            _ => {
                if opts.iopoll {
                    return Err(iopoll_on_file(path));
                }
                let g = geometry::file_geometry(&file, path, opts.block_size, true, BACKEND_URING)?;
                file_modes(g.namespace_info(), g.fallocate)
            }
        };
        tracing::debug!(path = %path.display(), ?info, "uring: opened");
        let shared = Shared {
            file,
            path: path.into(),
            info,
            opts: opts.clone(),
            zero_mode,
            zero_unmap_mode,
            deallocate_mode,
            polled_chunk_bytes,
        };
        Ok(UringDevice {
            shared: Arc::new(shared),
        })
    }

    /// The namespace: geometry and which operations work.
    pub fn namespace(&self) -> &NamespaceInfo {
        &self.shared.info
    }

    /// The path the device was opened by.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The options it was opened with.
    pub fn options(&self) -> &UringOptions {
        &self.shared.opts
    }

    /// A queue of `depth` operations on a ring of its own (SQ of `depth` entries rounded
    /// up to a power of two, CQ twice that). Create one per thread: a queue can move to
    /// another thread but not be shared.
    ///
    /// Errors: [`KernelError::BadOption`] for a depth of 0 or above [`MAX_QUEUE_DEPTH`],
    /// or SQPOLL without fixed files on a kernel that needs them; [`KernelError::Os`] if
    /// the ring cannot be created or the file registered.
    pub fn create_queue(&self, depth: usize) -> Result<UringQueue, KernelError> {
        UringQueue::new(Arc::clone(&self.shared), depth, true)
    }
}

impl std::fmt::Debug for UringDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringDevice")
            .field("path", &self.shared.path)
            .field("info", &self.shared.info)
            .finish()
    }
}

/// Turns an `open` failure into an error that says what to do.
fn open_error(path: &Path, e: std::io::Error) -> KernelError {
    if e.raw_os_error() == Some(libc::EINVAL) {
        return KernelError::WrongDevice {
            backend: BACKEND_URING,
            path: path.into(),
            why: "its file system refuses O_DIRECT (EINVAL), which the uring backend needs; the psync backend falls \
                  back to buffered I/O"
                .into(),
        };
    }
    os(BACKEND_URING, "open read-write with O_DIRECT", path, e)
}

/// IOPOLL needs a block device.
fn iopoll_on_file(path: &Path) -> KernelError {
    KernelError::WrongDevice {
        backend: BACKEND_URING,
        path: path.into(),
        why: "is a regular file: IOPOLL (polled completions) needs a block device whose driver has poll queues, \
              such as /dev/nvmeXnY with `modprobe nvme poll_queues=N`"
            .into(),
    }
}

/// IOPOLL needs poll queues.
fn check_io_poll(g: &BlockDeviceGeometry, path: &Path) -> Result<(), KernelError> {
    if g.io_poll {
        return Ok(());
    }
    let name = g.name().unwrap_or_else(|| format!("{}:{}", g.major, g.minor));
    Err(KernelError::Unavailable {
        backend: BACKEND_URING,
        why: format!(
            "IOPOLL on {}: /sys/block/{name}/queue/io_poll is not 1, so its driver has no poll queues; for NVMe, \
             reload the driver with poll queues (`modprobe -r nvme && modprobe nvme poll_queues=N`, or \
             nvme.poll_queues=N on the kernel command line), or open without IOPOLL",
            path.display()
        ),
    })
}

/// Namespace and `fallocate` modes of a block device through io_uring (see the module
/// documentation on Deallocate).
fn block_device_modes(g: &BlockDeviceGeometry) -> (NamespaceInfo, Option<i32>, Option<i32>, Option<i32>) {
    let hw_zeroes = g.write_zeroes_max_bytes > 0;
    let mut info = g.namespace_info();
    info.deallocate = hw_zeroes;
    info.deallocate_zeroes = hw_zeroes;
    let zero = falloc::ZERO_RANGE | falloc::KEEP_SIZE;
    let punch = falloc::PUNCH_HOLE | falloc::KEEP_SIZE;
    (
        info,
        Some(zero),
        Some(if hw_zeroes { punch } else { zero }),
        hw_zeroes.then_some(punch),
    )
}

/// Namespace and `fallocate` modes of a regular file.
fn file_modes(info: NamespaceInfo, f: FallocateSupport) -> (NamespaceInfo, Option<i32>, Option<i32>, Option<i32>) {
    (info, f.zero_mode(false), f.zero_mode(true), f.deallocate_mode())
}
