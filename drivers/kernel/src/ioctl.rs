//! The NVMe ioctl passthrough backend: NVMe commands through the kernel's nvme driver,
//! with `NVME_IOCTL_ADMIN64_CMD` / `NVME_IOCTL_IO64_CMD` (falling back to the 32-bit
//! `NVME_IOCTL_ADMIN_CMD` / `NVME_IOCTL_IO_CMD` on kernels before 5.5, which answer the
//! 64-bit requests with `ENOTTY`).
//!
//! [`IoctlDevice::open`] takes any of the kernel's NVMe nodes:
//!
//! - `/dev/nvmeX`, the controller's character device: every active namespace (Active
//!   Namespace ID list, then Identify Namespace for each). I/O for a namespace goes
//!   through that namespace's own node — `/dev/ngXnY`, else `/dev/nvmeXnY`, found in
//!   sysfs — because the kernel refuses I/O on the controller node when the controller
//!   has more than one namespace, and deprecates it otherwise;
//! - `/dev/ngXnY`, a namespace's generic character device, or `/dev/nvmeXnY`, its block
//!   device: that namespace only (its ID from `NVME_IOCTL_ID`).
//!
//! Admin commands (Identify, Get Log Page, Get/Set Features, Format NVM) work on every
//! node, so the CLI can inspect a controller the kernel owns. On Linux 6.1 they need
//! `CAP_SYS_ADMIN`; from 6.2 the kernel lets users with read access send Identify and log
//! page reads (`nvme_cmd_allowed`).
//!
//! Namespace geometry comes from Identify, limited by what the kernel's queue accepts
//! (sysfs `queue/max_hw_sectors_kb`, `queue/max_segments`, `queue/dma_alignment` of the
//! namespace's disk). See [`IoctlDevice::namespaces`].
//!
//! The queue ([`IoctlQueue`], a [`SyncQueue`]) is synchronous underneath: `submit` queues
//! into a ring of `depth` entries allocated with the queue; `ring` runs the queued
//! commands in order, one blocking ioctl each; `poll` hands back their completions. Commands are not retried by the kernel (passthrough requests are
//! fail-fast), so a device error comes back as the device reported it.

use crate::error::{BACKEND_IOCTL, KernelError};
use crate::node::{self, NodeKind, NvmeName};
use crate::nvme_ioctl::{self, NvmePassthruCmd, NvmePassthruCmd64, Passthru};
use crate::sync_queue::{Executor, SyncQueue};
use ironvme_nvme::block::{self, BlockError, GeometrySource, IoStatus, NamespaceInfo, Op, Protection};
use ironvme_nvme::cmd::{Command, DSM_RANGE_BYTES, DsmRange, MAX_BLOCKS_PER_COMMAND};
use ironvme_nvme::hw::DmaBuf;
use ironvme_nvme::identify::{
    Cns, IDENTIFY_DATA_LEN, IdentifyController, IdentifyNamespace, MetadataUnsupported, NamespaceList, Oncs,
};
use ironvme_nvme::quirks::Quirks;
use ironvme_nvme::status::Status;
use nix::errno::Errno;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The most operations one kernel-backend queue holds (its `depth` bound).
pub const MAX_QUEUE_DEPTH: usize = 4096;

/// Page size the kernel maps user buffers in, in bytes.
const PAGE: usize = 4096;

/// Largest transfer when neither MDTS nor sysfs gives a limit, in bytes.
const FALLBACK_MAX_TRANSFER: usize = 128 * 1024;

/// Where sysfs and device nodes live.
const SYSFS: &str = node::SYSFS;
const DEV: &str = "/dev";

// ---- the kernel's NVMe nodes ------------------------------------------------------------

/// Which of the kernel's NVMe nodes a path is, with its kernel name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    /// `/dev/nvmeX`: the controller's character device (`nvme` class).
    Controller(String),
    /// `/dev/ngXnY`: a namespace's generic character device (`nvme-generic` class).
    Generic(String),
    /// `/dev/nvmeXnY`: a namespace's block device.
    Block(String),
}

impl Node {
    /// The controller's character device, `/dev/nvmeX`, from the sysfs under `/sys`
    /// (see [`Node::controller_path_in`]).
    pub(crate) fn controller_path(&self) -> String {
        self.controller_path_in(Path::new(SYSFS))
    }

    /// The controller's character device, `/dev/nvmeX`, with `sys` the sysfs root: for a
    /// namespace node, a controller with a path to the namespace
    /// ([`node::controller_in`]).
    pub(crate) fn controller_path_in(&self, sys: &Path) -> String {
        let name = match self {
            Node::Controller(name) | Node::Generic(name) | Node::Block(name) => name,
        };
        let ctrl = node::controller_in(sys, name).unwrap_or_else(|| name.clone());
        format!("{DEV}/{ctrl}")
    }

    /// Refuses I/O without metadata buffers on a namespace whose metadata needs one
    /// ([`IdentifyNamespace::check_plain_io`]), naming this node's controller in the
    /// reformatting command.
    pub(crate) fn check_plain_io(&self, nsid: u32, ns: &IdentifyNamespace) -> Result<(), MetadataUnsupported> {
        ns.check_plain_io(nsid).map_err(|e| e.on_device(self.controller_path()))
    }

    /// The quirks of this node's controller, by its PCI vendor and device ID
    /// ([`ironvme_nvme::quirks::lookup`]); none when sysfs names no PCI function.
    pub(crate) fn quirks_in(&self, sys: &Path) -> Quirks {
        let name = match self {
            Node::Controller(name) | Node::Generic(name) | Node::Block(name) => name,
        };
        node::controller_in(sys, name)
            .and_then(|ctrl| node::pci_id_in(sys, &ctrl))
            .map_or(Quirks::empty(), |(vendor, device)| {
                ironvme_nvme::quirks::lookup(vendor, device)
            })
    }

    /// The block device (`nvmeXnY`) whose sysfs `queue/` holds this namespace's limits.
    pub(crate) fn disk(&self) -> Option<String> {
        match self {
            Node::Controller(_) => None,
            Node::Generic(name) => NvmeName::parse(name)?.disk().map(|d| d.to_string()),
            Node::Block(name) => Some(name.clone()),
        }
    }
}

/// Identifies the NVMe node at `path` ([`node::classify`]: from its device number and
/// sysfs), without opening it.
///
/// Errors: [`KernelError::Os`] if `path` cannot be looked up; [`KernelError::WrongDevice`]
/// if it is not one of the kernel's NVMe nodes, saying what it is and which nodes work.
/// `needs` finishes the error message: which nodes the backend takes.
pub(crate) fn classify(backend: &'static str, path: &Path, needs: &str) -> Result<Node, KernelError> {
    classify_in(Path::new(SYSFS), backend, path, needs)
}

/// What the ioctl backend takes, for error messages.
const IOCTL_NEEDS: &str =
    "NVMe ioctl passthrough needs the kernel's NVMe nodes (/dev/nvmeX, /dev/ngXnY or /dev/nvmeXnY)";

fn classify_in(sys: &Path, backend: &'static str, path: &Path, needs: &str) -> Result<Node, KernelError> {
    let found = node::classify_in(sys, path).map_err(|source| KernelError::Os {
        backend,
        op: "stat",
        path: path.to_owned(),
        source,
    })?;
    let wrong = |why: String| KernelError::WrongDevice {
        backend,
        path: path.to_owned(),
        why,
    };
    let kind = match found.kind {
        NodeKind::NvmeController => return Ok(Node::Controller(found.name)),
        NodeKind::NvmeGeneric => return Ok(Node::Generic(found.name)),
        NodeKind::NvmeDisk => return Ok(Node::Block(found.name)),
        NodeKind::Char => "character",
        NodeKind::Block => "block",
        NodeKind::Other("a directory") => {
            return Err(wrong(format!("a directory, not a character or block device: {needs}")));
        }
        NodeKind::File | NodeKind::Other(_) => {
            return Err(wrong(format!(
                "a regular file or other non-device, not a character or block device: {needs}"
            )));
        }
    };
    let majmin = found.majmin();
    let what = if found.sysfs_dir.is_none() {
        format!("{kind} device {majmin}")
    } else {
        format!(
            "{kind} device {} ({majmin}, class {})",
            found.name,
            found.class.unwrap_or_default()
        )
    };
    Err(wrong(format!("{what} is not an NVMe device: {needs}")))
}

/// A namespace of a controller as the kernel shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceNodes {
    /// Namespace ID.
    pub nsid: u32,
    /// The namespace's disk, `nvmeXnY` (under native multipath, the head's disk).
    pub disk: String,
}

impl NamespaceNodes {
    /// The generic node's name, `ngXnY`.
    pub fn generic(&self) -> String {
        NvmeName::parse(&self.disk)
            .and_then(|d| d.generic())
            .map_or_else(String::new, |g| g.to_string())
    }
}

/// The namespaces the kernel created for controller `ctrl` (`nvmeX`): the entries
/// `nvmeXnY` (or, under native multipath, the paths `nvmeScXnY` of disk `nvmeSnY`) of
/// `/sys/class/nvme/nvmeX/`, each with its `nsid`, in NSID order. `sys` is the sysfs
/// root (`/sys`). Used by the I/O queues of a controller node and by ironvme's device
/// claims (`ironvme::claim`).
pub fn controller_namespaces(sys: &Path, ctrl: &str) -> Vec<NamespaceNodes> {
    let Ok(dir) = std::fs::read_dir(sys.join("class/nvme").join(ctrl)) else {
        return Vec::new();
    };
    let mut found: Vec<NamespaceNodes> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let disk = node::controller_entry_disk(&e.file_name().to_string_lossy())?.to_string();
            let nsid = std::fs::read_to_string(e.path().join("nsid"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some(NamespaceNodes { nsid, disk })
        })
        .collect();
    found.sort_by_key(|n| n.nsid);
    found.dedup_by_key(|n| n.nsid);
    found
}

/// What the kernel's block queue of a namespace accepts, from sysfs `queue/`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct QueueLimits {
    /// `max_hw_sectors_kb` × 1024: the largest request, in bytes.
    pub max_hw_bytes: Option<usize>,
    /// `max_segments`: the most physically discontiguous pieces one request may have.
    pub max_segments: Option<usize>,
    /// `dma_alignment` + 1: required alignment of user buffers, in bytes (the attribute
    /// is the mask, e.g. 3 for dword alignment).
    pub dma_alignment: Option<usize>,
}

/// Reads `/sys/block/<disk>/queue/{max_hw_sectors_kb,max_segments,dma_alignment}`;
/// attributes that are missing stay `None`.
pub(crate) fn queue_limits(sys: &Path, disk: &str) -> QueueLimits {
    let q = sys.join("block").join(disk).join("queue");
    let read = |attr: &str| -> Option<usize> { std::fs::read_to_string(q.join(attr)).ok()?.trim().parse().ok() };
    QueueLimits {
        max_hw_bytes: read("max_hw_sectors_kb").and_then(|kb| kb.checked_mul(1024)),
        max_segments: read("max_segments"),
        dma_alignment: read("dma_alignment").map(|mask| mask + 1),
    }
}

/// The namespace as the block interface sees it through passthrough, or `None` if it is
/// inactive or its LBA format unusable.
///
/// - block size from LBADS of the format in use, size from NSZE;
/// - largest transfer: the smallest of MDTS (in units of 4 KiB, the kernel's controller
///   page size), `max_hw_sectors_kb`, `max_segments − 1` pages (so a buffer that starts
///   inside a page still fits the kernel's segment limit), and 65536 blocks (NLB), in whole
///   blocks; 128 KiB when nothing says;
/// - buffer alignment `dma_alignment` + 1 from sysfs (4 on kernels that set dword
///   alignment for NVMe), else 512;
/// - compare, verify, write zeroes and deallocate from ONCS (verify also with the
///   controller's [`Quirks::VERIFY_UNADVERTISED`]); deallocated blocks read as zeros when
///   DLFEAT bits 2:0 are 001b; VWC bit 0 for the volatile write cache.
pub(crate) fn namespace_info(
    nsid: u32,
    ns: &IdentifyNamespace,
    ctrl: &IdentifyController,
    limits: &QueueLimits,
    quirks: Quirks,
) -> Option<NamespaceInfo> {
    if !ns.is_active() {
        return None;
    }
    let block_size = u32::try_from(ns.block_size()?).ok()?;
    let bs = block_size as usize;
    let mut max = bs.saturating_mul(MAX_BLOCKS_PER_COMMAND as usize);
    let mut known = false;
    let mut limit = |l: Option<usize>| {
        if let Some(l) = l {
            max = max.min(l);
            known = true;
        }
    };
    limit(
        ctrl.max_transfer_bytes(PAGE as u64)
            .map(|b| usize::try_from(b).unwrap_or(usize::MAX)),
    );
    limit(limits.max_hw_bytes);
    limit(limits.max_segments.filter(|&s| s >= 2).map(|s| (s - 1) * PAGE));
    if !known {
        max = max.min(FALLBACK_MAX_TRANSFER);
    }
    let max_transfer_bytes = (max / bs * bs).max(bs);
    Some(NamespaceInfo {
        nsid,
        block_size,
        blocks: ns.nsze,
        max_transfer_bytes,
        buffer_alignment: limits.dma_alignment.filter(|a| a.is_power_of_two()).unwrap_or(512),
        write_zeroes: ctrl.oncs.contains(Oncs::WRITE_ZEROES),
        deallocate: ctrl.oncs.contains(Oncs::DATASET_MANAGEMENT),
        deallocate_zeroes: ns.dlfeat & 0x7 == 1,
        // Plain Compare would need the metadata.
        compare: ctrl.oncs.contains(Oncs::COMPARE) && ns.metadata_format().is_none(),
        verify: ctrl.verify_supported(quirks),
        volatile_write_cache: ctrl.vwc_present(),
        zone_commands: true,
        metadata: ns.metadata_format(),
        source: GeometrySource::Identify,
    })
}

// ---- one open passthrough node ------------------------------------------------------------

/// An open NVMe node that passthrough ioctls go to, remembering whether the 64-bit
/// requests work.
#[derive(Debug)]
pub(crate) struct PassthruFile {
    file: File,
    path: PathBuf,
    backend: &'static str,
    /// `NVME_IOCTL_ADMIN64_CMD` works here (cleared on its first `ENOTTY`).
    wide_admin: AtomicBool,
    /// `NVME_IOCTL_IO64_CMD` works here (cleared on its first `ENOTTY`; the controller
    /// node of Linux 6.1 answers it with `ENOTTY` although the admin one works).
    wide_io: AtomicBool,
}

/// Why a passthrough ioctl did not give a result.
#[derive(Debug)]
pub(crate) enum IoctlFailure {
    /// The system call failed: errno, and the request that failed.
    Os(io::Error, &'static str),
    /// The command completed with this NVMe status.
    Status(Status),
}

impl PassthruFile {
    /// Opens `path` read-write (read-only if `read_only_ok` and read-write is refused).
    ///
    /// Errors: [`KernelError::PermissionDenied`], [`KernelError::Os`].
    pub(crate) fn open(backend: &'static str, path: &Path, read_only_ok: bool) -> Result<PassthruFile, KernelError> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Err(e) if read_only_ok && is_permission(&e) => {
                tracing::info!(path = %path.display(), "{backend}: read-write access refused; opening read-only");
                OpenOptions::new().read(true).open(path)
            }
            other => other,
        }
        .map_err(|source| open_error(backend, path, source))?;
        Ok(PassthruFile {
            file,
            path: path.to_owned(),
            backend,
            wide_admin: AtomicBool::new(true),
            wide_io: AtomicBool::new(true),
        })
    }

    /// The node's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The node's file descriptor.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// `NVME_IOCTL_ID`: the namespace this node is.
    pub(crate) fn namespace_id(&self) -> Result<u32, KernelError> {
        nvme_ioctl::namespace_id(self.fd()).map_err(|e| self.os_error("NVME_IOCTL_ID", e.into()))
    }

    /// Runs `cmd` on the admin queue (`admin`) or as an I/O command, moving `len` bytes
    /// at `addr`, through the 64-bit ioctl or — after it answered `ENOTTY` once — the
    /// 32-bit one. `timeout` replaces the kernel's default command timeout
    /// (`nvme_core.admin_timeout`, 60 s, or `io_timeout`, 30 s) when given (see
    /// [`timeout_ms`]).
    ///
    /// `metadata` is the user address and length of a separate metadata buffer
    /// (`metadata`/`metadata_len` of the request; `(0, 0)` for none), which the kernel
    /// copies through a bounce buffer ([`Transfer`]).
    ///
    /// # Safety
    ///
    /// `addr` must point at `len` bytes, and `metadata.0` at `metadata.1` bytes, that stay
    /// valid until this returns, writable if the opcode moves data from the controller
    /// (bit 0 clear: the kernel writes them), and not accessed by anyone else meanwhile.
    /// `metadata.1` must be exactly the metadata the command moves (NLB × MS), and `(0, 0)`
    /// unless `cmd` moves data with separate metadata: Linux sizes its bounce buffer by
    /// `metadata_len` without checking it against the command, so a shorter length lets
    /// the controller write past the kernel's buffer.
    pub(crate) unsafe fn passthru(
        &self,
        admin: bool,
        cmd: &Command,
        addr: u64,
        len: u32,
        metadata: (u64, u32),
        timeout: Option<Duration>,
    ) -> Result<u64, IoctlFailure> {
        let fd = self.fd();
        let done = |r: Result<Passthru, Errno>, op: &'static str| match r {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(status)) => Err(IoctlFailure::Status(status)),
            Err(e) => Err(IoctlFailure::Os(e.into(), op)),
        };
        let wide = if admin { &self.wide_admin } else { &self.wide_io };
        if wide.load(Ordering::Relaxed) {
            let mut c = NvmePassthruCmd64 {
                timeout_ms: timeout_ms(timeout),
                metadata: metadata.0,
                metadata_len: metadata.1,
                ..NvmePassthruCmd64::from_command(cmd, addr, len)
            };
            // SAFETY: `c` names the caller's buffer, valid and exclusive until we return.
            let r = unsafe {
                if admin {
                    nvme_ioctl::admin64(fd, &mut c)
                } else {
                    nvme_ioctl::io64(fd, &mut c)
                }
            };
            if r != Err(Errno::ENOTTY) {
                return done(
                    r,
                    if admin {
                        "NVME_IOCTL_ADMIN64_CMD"
                    } else {
                        "NVME_IOCTL_IO64_CMD"
                    },
                );
            }
            tracing::info!(path = %self.path.display(), admin, "no 64-bit NVMe passthrough ioctl (Linux < 5.5): using the 32-bit one");
            wide.store(false, Ordering::Relaxed);
        }
        let mut c = NvmePassthruCmd {
            timeout_ms: timeout_ms(timeout),
            metadata: metadata.0,
            metadata_len: metadata.1,
            ..NvmePassthruCmd::from_command(cmd, addr, len)
        };
        // SAFETY: as above.
        let r = unsafe {
            if admin {
                nvme_ioctl::admin32(fd, &mut c)
            } else {
                nvme_ioctl::io32(fd, &mut c)
            }
        };
        done(
            r,
            if admin {
                "NVME_IOCTL_ADMIN_CMD"
            } else {
                "NVME_IOCTL_IO_CMD"
            },
        )
    }

    /// Runs an admin command that moves `len` bytes from the controller (or none); returns
    /// completion DW0 and the data.
    ///
    /// Errors: [`KernelError::Invalid`] for a host-to-controller opcode with data or a
    /// length above 4 GiB; [`KernelError::Status`]; [`KernelError::PermissionDenied`];
    /// [`KernelError::Os`].
    pub(crate) fn admin_read(&self, cmd: Command, len: usize) -> Result<(u32, Vec<u8>), KernelError> {
        self.read_command(true, cmd, len)
            .map(|(result, data)| (result as u32, data))
    }

    /// [`PassthruFile::admin_read`] for an admin (`admin`) or I/O command; returns the
    /// whole 64-bit result (completion DW1:DW0 through the 64-bit ioctls).
    pub(crate) fn read_command(&self, admin: bool, cmd: Command, len: usize) -> Result<(u64, Vec<u8>), KernelError> {
        if len > 0 && cmd.opcode() & 1 == 1 {
            return Err(self.invalid(format!(
                "opcode {:#04x} ({}) moves data to the controller, not from it",
                cmd.opcode(),
                cmd.name(admin)
            )));
        }
        let len32 = self.len32(len)?;
        let mut data = vec![0u8; len];
        let addr = if len == 0 { 0 } else { data.as_mut_ptr() as u64 };
        // SAFETY: `data` is `len` writable bytes owned by this frame and untouched until
        // the ioctl returns.
        let r = unsafe { self.passthru(admin, &cmd, addr, len32, (0, 0), None) };
        let result = self.command_result(admin, &cmd, r)?;
        Ok((result, data))
    }

    /// Runs an admin command that moves `data` to the controller (or none); returns
    /// completion DW0. `timeout`: as [`PassthruFile::passthru`].
    ///
    /// Errors: as [`PassthruFile::admin_read`], with a controller-to-host opcode refused.
    pub(crate) fn admin_write(&self, cmd: Command, data: &[u8], timeout: Option<Duration>) -> Result<u32, KernelError> {
        if !data.is_empty() && cmd.opcode() & 1 == 0 {
            return Err(self.invalid(format!(
                "admin_write: opcode {:#04x} ({}) moves data from the controller: use admin_read",
                cmd.opcode(),
                cmd.name(true)
            )));
        }
        let len32 = self.len32(data.len())?;
        let addr = if data.is_empty() { 0 } else { data.as_ptr() as u64 };
        // SAFETY: the opcode's bit 0 is set (checked above), so the kernel only reads the
        // `data.len()` bytes, which the shared borrow keeps valid and unchanged until the
        // ioctl returns.
        let r = unsafe { self.passthru(true, &cmd, addr, len32, (0, 0), timeout) };
        self.admin_result(&cmd, r)
    }

    fn admin_result(&self, cmd: &Command, r: Result<u64, IoctlFailure>) -> Result<u32, KernelError> {
        self.command_result(true, cmd, r).map(|result| result as u32)
    }

    fn command_result(&self, admin: bool, cmd: &Command, r: Result<u64, IoctlFailure>) -> Result<u64, KernelError> {
        match r {
            Ok(result) => Ok(result),
            Err(IoctlFailure::Status(status)) => Err(KernelError::Status {
                backend: self.backend,
                command: cmd.name(admin),
                status,
            }),
            Err(IoctlFailure::Os(e, op)) => Err(self.os_error(op, e)),
        }
    }

    fn len32(&self, len: usize) -> Result<u32, KernelError> {
        u32::try_from(len)
            .map_err(|_| self.invalid(format!("a transfer of {len} bytes exceeds the ioctl's 32-bit length")))
    }

    fn invalid(&self, why: String) -> KernelError {
        KernelError::Invalid {
            backend: self.backend,
            why,
        }
    }

    pub(crate) fn os_error(&self, op: &'static str, source: io::Error) -> KernelError {
        if is_permission(&source) {
            return KernelError::PermissionDenied {
                backend: self.backend,
                op,
                path: self.path.clone(),
                errno: source.raw_os_error().unwrap_or(libc::EACCES),
                hint: "NVMe admin passthrough needs CAP_SYS_ADMIN on Linux 6.1 (run as root); I/O passthrough \
                       needs the node opened read-write",
            };
        }
        KernelError::Os {
            backend: self.backend,
            op,
            path: self.path.clone(),
            source,
        }
    }

    /// Identify Controller.
    pub(crate) fn identify_controller(&self) -> Result<IdentifyController, KernelError> {
        let (_, data) = self.admin_read(Command::identify(Cns::CONTROLLER, 0, 0), IDENTIFY_DATA_LEN)?;
        IdentifyController::parse(&data).map_err(|e| KernelError::Parse(e, self.backend))
    }

    /// Identify Namespace `nsid`.
    pub(crate) fn identify_namespace(&self, nsid: u32) -> Result<IdentifyNamespace, KernelError> {
        let (_, data) = self.admin_read(Command::identify(Cns::NAMESPACE, nsid, 0), IDENTIFY_DATA_LEN)?;
        IdentifyNamespace::parse(&data).map_err(|e| KernelError::Parse(e, self.backend))
    }

    /// The active namespace IDs: the Active Namespace ID list (CNS 02h) page by page, or
    /// 1..=NN on controllers before NVMe 1.1.
    pub(crate) fn active_namespaces(&self, ctrl: &IdentifyController) -> Result<Vec<u32>, KernelError> {
        if ctrl.version() < (1, 1, 0) {
            return Ok((1..=ctrl.nn.min(NamespaceList::MAX_ENTRIES as u32)).collect());
        }
        let mut all = Vec::new();
        let mut after = 0;
        // Bounded: each page holds up to 1024 IDs greater than the last one seen.
        for _ in 0..=(ctrl.nn as usize / NamespaceList::MAX_ENTRIES) {
            let cmd = Command::identify(Cns::ACTIVE_NAMESPACE_LIST, after, 0);
            let (_, data) = self.admin_read(cmd, IDENTIFY_DATA_LEN)?;
            let page = NamespaceList::parse(&data).map_err(|e| KernelError::Parse(e, self.backend))?;
            let full = page.len() == NamespaceList::MAX_ENTRIES;
            all.extend(page.iter().copied().filter(|&n| n > after));
            match (full, all.last()) {
                (true, Some(&last)) if last > after => after = last,
                _ => break,
            }
        }
        Ok(all)
    }
}

/// `timeout_ms` of a passthrough command: 0 (the kernel's default) for `None`, else the
/// duration rounded up to whole milliseconds (so never 0), at most `u32::MAX`.
pub(crate) fn timeout_ms(timeout: Option<Duration>) -> u32 {
    match timeout {
        None => 0,
        Some(t) => u32::try_from(t.as_nanos().div_ceil(1_000_000))
            .unwrap_or(u32::MAX)
            .max(1),
    }
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

fn open_error(backend: &'static str, path: &Path, source: io::Error) -> KernelError {
    if is_permission(&source) {
        return KernelError::PermissionDenied {
            backend,
            op: "open",
            path: path.to_owned(),
            errno: source.raw_os_error().unwrap_or(libc::EACCES),
            hint: "run as root, or give this user read-write access to the device node",
        };
    }
    KernelError::Os {
        backend,
        op: "open",
        path: path.to_owned(),
        source,
    }
}

// ---- the device ----------------------------------------------------------------------------

/// A kernel-owned NVMe controller or namespace, driven through NVMe ioctl passthrough.
#[derive(Debug)]
pub struct IoctlDevice {
    file: Arc<PassthruFile>,
    node: Node,
    identify: IdentifyController,
    namespaces: Vec<NamespaceInfo>,
    /// The namespace a namespace node is (`NVME_IOCTL_ID`); `None` for `/dev/nvmeX`.
    node_nsid: Option<u32>,
    /// Namespaces of `namespaces` whose metadata needs a buffer, for
    /// [`IoctlDevice::create_queue`] to refuse (and [`IoctlDevice::create_metadata_queue`]
    /// not to).
    refused: Vec<MetadataUnsupported>,
}

impl IoctlDevice {
    /// Opens `/dev/nvmeX` (the controller's character device: all its active
    /// namespaces), `/dev/ngXnY` (a namespace's generic character device) or
    /// `/dev/nvmeXnY` (its block device: that namespace only), and reads Identify
    /// Controller and Identify Namespace through the admin ioctl. Opens read-write, or
    /// read-only when that is refused (admin commands for inspection then still work
    /// where the kernel allows them; I/O does not).
    ///
    /// Errors: [`KernelError::WrongDevice`] if `path` is not one of the kernel's NVMe
    /// nodes; [`KernelError::PermissionDenied`]; [`KernelError::Os`];
    /// [`KernelError::Status`] or [`KernelError::Parse`] if Identify fails.
    pub fn open(path: &Path) -> Result<IoctlDevice, KernelError> {
        let node = classify(BACKEND_IOCTL, path, IOCTL_NEEDS)?;
        let file = Arc::new(PassthruFile::open(BACKEND_IOCTL, path, true)?);
        let identify = file.identify_controller()?;
        let mut dev = IoctlDevice {
            file,
            node,
            identify,
            namespaces: Vec::new(),
            node_nsid: None,
            refused: Vec::new(),
        };
        dev.scan_namespaces()?;
        tracing::debug!(path = %path.display(), namespaces = dev.namespaces.len(), "ioctl: opened");
        Ok(dev)
    }

    /// Reads the namespaces again (after Format NVM or a namespace change).
    ///
    /// Errors: as [`IoctlDevice::open`].
    pub fn rescan(&mut self) -> Result<(), KernelError> {
        self.identify = self.file.identify_controller()?;
        self.scan_namespaces()
    }

    /// Reads the namespaces, with the Identify Controller data the device holds.
    fn scan_namespaces(&mut self) -> Result<(), KernelError> {
        let sys = Path::new(SYSFS);
        let mut found = Vec::new();
        let mut refused = Vec::new();
        let quirks = self.node.quirks_in(sys);
        let mut add = |nsid: u32, ns: &IdentifyNamespace, limits: &QueueLimits| {
            found.extend(namespace_info(nsid, ns, &self.identify, limits, quirks));
            if let Err(e) = self.node.check_plain_io(nsid, ns) {
                refused.push(e);
            }
        };
        match &self.node {
            Node::Controller(ctrl) => {
                let nodes = controller_namespaces(sys, ctrl);
                for nsid in self.file.active_namespaces(&self.identify)? {
                    let ns = self.file.identify_namespace(nsid)?;
                    let limits = nodes
                        .iter()
                        .find(|n| n.nsid == nsid)
                        .map(|n| queue_limits(sys, &n.disk))
                        .unwrap_or_default();
                    add(nsid, &ns, &limits);
                }
            }
            node => {
                let nsid = self.file.namespace_id()?;
                let ns = self.file.identify_namespace(nsid)?;
                let limits = node.disk().map(|d| queue_limits(sys, &d)).unwrap_or_default();
                add(nsid, &ns, &limits);
                self.node_nsid = Some(nsid);
            }
        }
        self.namespaces = found;
        self.refused = refused;
        Ok(())
    }

    /// The device node this was opened from.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Identify Controller, as read at open (or the last [`IoctlDevice::rescan`]).
    pub fn identify(&self) -> &IdentifyController {
        &self.identify
    }

    /// The namespace ID of the node this was opened from when it is a namespace node
    /// (`/dev/ngXnY`, `/dev/nvmeXnY`; from `NVME_IOCTL_ID`, whatever its format), `None`
    /// for the controller node `/dev/nvmeX`.
    pub fn node_namespace(&self) -> Option<u32> {
        self.node_nsid
    }

    /// The active namespaces with a usable LBA format, in NSID order: all of the
    /// controller's for `/dev/nvmeX`, the node's own for a namespace node.
    pub fn namespaces(&self) -> &[NamespaceInfo] {
        &self.namespaces
    }

    /// Runs an admin command that transfers `len` bytes from the controller (0 for none;
    /// the opcode's bit 0 must be clear when `len > 0`) and returns completion DW0 and the
    /// data.
    ///
    /// Errors: [`KernelError::Status`] with the decoded NVMe status if the command fails;
    /// [`KernelError::PermissionDenied`] without `CAP_SYS_ADMIN`; [`KernelError::Os`];
    /// [`KernelError::Invalid`] for a host-to-controller opcode.
    pub fn admin_read(&self, cmd: Command, len: usize) -> Result<(u32, Vec<u8>), KernelError> {
        self.file.admin_read(cmd, len)
    }

    /// Runs an admin command that transfers `data` to the controller (empty for none; the
    /// opcode's bit 0 must be set when `data` is not empty — Set Features with data,
    /// Firmware Image Download, Security Send) and returns completion DW0. Format NVM is
    /// `admin_write(Command::format_nvm(..), &[])`; call [`IoctlDevice::rescan`] after it.
    ///
    /// Errors: as [`IoctlDevice::admin_read`].
    pub fn admin_write(&self, cmd: Command, data: &[u8]) -> Result<u32, KernelError> {
        self.file.admin_write(cmd, data, None)
    }

    /// As [`IoctlDevice::admin_write`], with `timeout` instead of the kernel's admin
    /// command timeout (`nvme_core.admin_timeout`, 60 s by default), which a Format NVM
    /// with secure erase or a Sanitize can outlast: the kernel then aborts the command
    /// and resets the controller. Rounded up to whole milliseconds, at most `u32::MAX`.
    ///
    /// Errors: as [`IoctlDevice::admin_read`].
    pub fn admin_write_within(&self, cmd: Command, data: &[u8], timeout: Duration) -> Result<u32, KernelError> {
        self.file.admin_write(cmd, data, Some(timeout))
    }

    /// Runs an I/O command that moves `len` bytes from the controller (0 for none), one at
    /// a time through `NVME_IOCTL_IO64_CMD` on the command's namespace's node (zone
    /// management, for one; on the controller node that namespace's own node is opened,
    /// as [`IoctlDevice::create_queue`] does); returns the command's result (DW1:DW0
    /// through the 64-bit ioctl, DW0 alone through the 32-bit one of Linux < 5.5) and the
    /// data.
    ///
    /// Errors: [`KernelError::WrongDevice`] on another namespace's node, or when the
    /// kernel made no node for the namespace; as [`IoctlDevice::admin_read`].
    pub fn io_read(&self, cmd: Command, len: usize) -> Result<(u64, Vec<u8>), KernelError> {
        match (&self.node, self.node_nsid) {
            (Node::Controller(ctrl), _) => self.open_namespace_node(ctrl, cmd.nsid)?.read_command(false, cmd, len),
            (_, Some(nsid)) if nsid == cmd.nsid => self.file.read_command(false, cmd, len),
            _ => Err(KernelError::WrongDevice {
                backend: "ioctl",
                path: self.path().to_path_buf(),
                why: format!(
                    "an I/O command for namespace {} runs on that namespace's node (/dev/ngXnY or /dev/nvmeXnY)",
                    cmd.nsid
                ),
            }),
        }
    }

    /// An I/O queue of `depth` entries (1..=[`MAX_QUEUE_DEPTH`]) on namespace `nsid`. On
    /// the controller node this opens the namespace's own node (`/dev/ngXnY`, else
    /// `/dev/nvmeXnY`, found in `/sys/class/nvme/nvmeX/`).
    ///
    /// Errors: [`KernelError::NoSuchNamespace`]; [`KernelError::MetadataUnsupported`] for
    /// a namespace whose metadata needs a buffer (see
    /// [`IdentifyNamespace::check_plain_io`]); [`KernelError::Invalid`] for a depth out
    /// of range; [`KernelError::WrongDevice`] if the kernel made no node for the
    /// namespace; as [`IoctlDevice::open`] for opening it.
    pub fn create_queue(&self, nsid: u32, depth: usize) -> Result<IoctlQueue, KernelError> {
        if let Some(why) = self.refused.iter().find(|m| m.nsid == nsid) {
            return Err(KernelError::MetadataUnsupported {
                backend: BACKEND_IOCTL,
                path: self.path().to_owned(),
                source: Box::new(why.clone()),
            });
        }
        self.create_metadata_queue(nsid, depth)
    }

    /// [`Self::create_queue`] for a caller that carries metadata
    /// ([`BlockQueue::submit_with_metadata`](ironvme_nvme::block::BlockQueue::submit_with_metadata)):
    /// it opens on any namespace.
    ///
    /// Errors: as [`Self::create_queue`], without [`KernelError::MetadataUnsupported`].
    pub fn create_metadata_queue(&self, nsid: u32, depth: usize) -> Result<IoctlQueue, KernelError> {
        let info = self
            .namespaces
            .iter()
            .find(|n| n.nsid == nsid)
            .cloned()
            .ok_or_else(|| KernelError::NoSuchNamespace {
                backend: BACKEND_IOCTL,
                path: self.path().to_owned(),
                nsid,
            })?;
        check_depth(BACKEND_IOCTL, depth)?;
        let file = match &self.node {
            Node::Controller(ctrl) => Arc::new(self.open_namespace_node(ctrl, nsid)?),
            _ => Arc::clone(&self.file),
        };
        Ok(SyncQueue::new(IoctlNamespace { file, info }, depth))
    }

    fn open_namespace_node(&self, ctrl: &str, nsid: u32) -> Result<PassthruFile, KernelError> {
        let nodes = controller_namespaces(Path::new(SYSFS), ctrl);
        let ns = nodes
            .iter()
            .find(|n| n.nsid == nsid)
            .ok_or_else(|| KernelError::WrongDevice {
                backend: BACKEND_IOCTL,
                path: self.path().to_owned(),
                why: format!(
                    "the kernel made no device node for namespace {nsid} of {ctrl} (none in /sys/class/nvme/{ctrl}/), \
                 and I/O on the controller node is refused when it has several namespaces"
                ),
            })?;
        let generic = Path::new(DEV).join(ns.generic());
        let path = if generic.exists() {
            generic
        } else {
            Path::new(DEV).join(&ns.disk)
        };
        let file = PassthruFile::open(BACKEND_IOCTL, &path, false)?;
        let id = file.namespace_id()?;
        if id != nsid {
            return Err(KernelError::WrongDevice {
                backend: BACKEND_IOCTL,
                path,
                why: format!("sysfs says namespace {nsid}, but the node answers NVME_IOCTL_ID with {id}"),
            });
        }
        Ok(file)
    }
}

pub(crate) fn check_depth(backend: &'static str, depth: usize) -> Result<(), KernelError> {
    if (1..=MAX_QUEUE_DEPTH).contains(&depth) {
        Ok(())
    } else {
        Err(KernelError::Invalid {
            backend,
            why: format!("queue depth {depth} is outside 1..={MAX_QUEUE_DEPTH}"),
        })
    }
}

// ---- operations as NVMe commands -------------------------------------------------------------

/// [`block::check`] (or, with protection fields `pi`, [`block::check_with_metadata`]), with the
/// block count as the 32 bits a command carries: Deallocate's range length is 32 bits,
/// and the checks keep the others to one command.
pub(crate) fn check_op(
    ns: &NamespaceInfo,
    op: &Op,
    buf: Option<&DmaBuf>,
    pi: Option<&Protection>,
) -> Result<u32, BlockError> {
    let blocks = match pi {
        Some(pi) => block::check_with_metadata(ns, op, buf, pi)?,
        None => block::check(ns, op, buf)?,
    };
    Ok(blocks as u32)
}

/// Where a passthrough command's data and metadata are: the user address and length of
/// each, as `struct nvme_passthru_cmd64` and `struct nvme_uring_cmd` carry them
/// (`addr`/`data_len`, `metadata`/`metadata_len`; `include/uapi/linux/nvme_ioctl.h`).
/// The kernel maps the data and copies the metadata through a bounce buffer of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Transfer {
    /// Data address (0 for none).
    pub addr: u64,
    /// Data bytes.
    pub len: u32,
    /// Separate metadata: address and bytes (`(0, 0)` for none).
    pub metadata: (u64, u32),
}

impl Transfer {
    /// The transfer of a buffer of `len` bytes at `addr` that [`check_op`] accepted,
    /// `blocks` blocks long: all data, unless it carries separate metadata
    /// (`with_metadata` on a namespace without extended LBAs), whose NLB × MS bytes follow
    /// the NLB × LBADS of data ([`ironvme_nvme::pi::MetadataFormat::ranges`]). The kernel
    /// trusts `metadata_len` (it sizes its bounce buffer by it, and the controller moves
    /// NLB × MS bytes), so it is computed from the command's block count, never from
    /// what is left of the buffer.
    ///
    /// Panics if `len` is not what the check accepted (a bug, not bad input).
    pub(crate) fn of(ns: &NamespaceInfo, addr: u64, len: usize, blocks: u64, with_metadata: bool) -> Transfer {
        if !with_metadata || ns.metadata.extended || len == 0 {
            return Transfer {
                addr,
                len: len as u32,
                metadata: (0, 0),
            };
        }
        let data = ns.metadata.data_bytes(ns.block_size, blocks as usize);
        let metadata = blocks as usize * ns.metadata.bytes as usize;
        assert_eq!(data + metadata, len, "a checked buffer holds NLB x (LBADS + MS) bytes");
        Transfer {
            addr,
            len: data as u32,
            metadata: (addr + data as u64, metadata as u32),
        }
    }
}

// ---- the queue --------------------------------------------------------------------------------

/// One namespace's node for I/O passthrough: what an [`IoctlQueue`] runs its commands on.
#[derive(Debug)]
pub struct IoctlNamespace {
    file: Arc<PassthruFile>,
    info: NamespaceInfo,
}

/// An I/O queue over NVMe ioctl passthrough on one namespace.
///
/// Synchronous underneath ([`SyncQueue`]): `submit` queues into a ring of `depth`
/// entries, `ring` runs the queued commands in order (each ioctl blocks until its command
/// completes), `poll` hands back completions. A Deallocate's 16-byte range lives on the
/// stack for the duration of its ioctl — commands run one at a time, so the per-queue
/// pool of range buffers the asynchronous backends need is a pool of one here.
pub type IoctlQueue = SyncQueue<IoctlNamespace>;

impl SyncQueue<IoctlNamespace> {
    /// The node the queue's ioctls go to (`/dev/ngXnY` or `/dev/nvmeXnY`).
    pub fn path(&self) -> &Path {
        self.executor().file.path()
    }
}

impl Executor for IoctlNamespace {
    fn namespace(&self) -> &NamespaceInfo {
        &self.info
    }

    fn check(&self, op: &Op, buf: Option<&DmaBuf>, pi: Option<&Protection>) -> Result<u64, BlockError> {
        check_op(&self.info, op, buf, pi).map(u64::from)
    }

    fn execute(&self, op: &Op, buf: Option<&mut DmaBuf>, blocks: u64, pi: Option<&Protection>) -> Result<(), IoStatus> {
        // `check` bounded `blocks` to 32 bits.
        let cmd = op.command_for(self.info.nsid, &self.info.metadata, blocks as u32, pi);
        let range = op.dsm_range();
        let t = match (&buf, *op) {
            (Some(b), _) => Transfer::of(&self.info, b.as_ptr() as u64, b.len(), blocks, pi.is_some()),
            (None, Op::Deallocate { .. }) => Transfer {
                addr: &range as *const DsmRange as u64,
                len: DSM_RANGE_BYTES as u32,
                metadata: (0, 0),
            },
            (None, _) => Transfer::default(),
        };
        // With a buffer, its window is `t.len` writable bytes at `t.addr`, followed, with
        // separate metadata, by the `t.metadata.1` bytes at `t.metadata.0` (`Transfer::of`:
        // NLB × MS). Without one, `t` is empty or the DSM range, a local the kernel only reads.
        // SAFETY: the queue owns the buffer (moved in at submit) and does not touch it until
        // the ioctl returns; the DSM range outlives the call. Both are as described above.
        let done = unsafe { self.file.passthru(false, &cmd, t.addr, t.len, t.metadata, None) };
        match done {
            Ok(_) => Ok(()),
            Err(IoctlFailure::Status(s)) => Err(IoStatus::Nvme(s)),
            Err(IoctlFailure::Os(e, _)) => Err(IoStatus::Os(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::KernelDma;
    use ironvme_nvme::block::BlockQueue;
    use ironvme_nvme::hw::DmaAllocator;

    fn id_ctrl(mdts: u8, oncs: u16, vwc: u8) -> IdentifyController {
        let mut b = vec![0u8; 4096];
        b[77] = mdts;
        b[520..522].copy_from_slice(&oncs.to_le_bytes());
        b[525] = vwc;
        b[80..84].copy_from_slice(&0x0001_0400u32.to_le_bytes()); // NVMe 1.4
        IdentifyController::parse(&b).unwrap()
    }

    fn id_ns(nsze: u64, lbads: u8, dlfeat: u8) -> IdentifyNamespace {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(&nsze.to_le_bytes());
        b[25] = 1; // two formats
        b[26] = 1; // using format 1
        b[33] = dlfeat;
        b[128..132].copy_from_slice(&(9u32 << 16).to_le_bytes());
        b[132..136].copy_from_slice(&((lbads as u32) << 16).to_le_bytes());
        IdentifyNamespace::parse(&b).unwrap()
    }

    #[test]
    fn geometry_comes_from_identify_and_the_kernel_queue_limits() {
        // QEMU 7.2: MDTS 7 (512 KiB), ONCS compare | DSM | write zeroes | timestamp | copy,
        // VWC present; the guest kernel's queue: 512 KiB, 127 segments, dword alignment.
        let ctrl = id_ctrl(7, 0x14D, 0x7);
        let limits = QueueLimits {
            max_hw_bytes: Some(512 * 1024),
            max_segments: Some(127),
            dma_alignment: Some(4),
        };
        let info = namespace_info(2, &id_ns(262_144, 12, 0x9), &ctrl, &limits, Quirks::empty()).unwrap();
        assert_eq!(
            info,
            NamespaceInfo {
                nsid: 2,
                block_size: 4096,
                blocks: 262_144,
                max_transfer_bytes: 126 * 4096,
                buffer_alignment: 4,
                write_zeroes: true,
                deallocate: true,
                deallocate_zeroes: true,
                compare: true,
                verify: false,
                volatile_write_cache: true,
                zone_commands: true,
                metadata: ironvme_nvme::block::MetadataFormat::NONE,
                source: GeometrySource::Identify,
            }
        );
        // A smaller kernel limit wins; no sysfs at all: MDTS, and 512-byte alignment.
        let small = QueueLimits {
            max_hw_bytes: Some(64 * 1024),
            ..Default::default()
        };
        assert_eq!(
            namespace_info(1, &id_ns(8, 9, 0), &ctrl, &small, Quirks::empty())
                .unwrap()
                .max_transfer_bytes,
            64 * 1024
        );
        let none = namespace_info(1, &id_ns(8, 9, 0), &ctrl, &QueueLimits::default(), Quirks::empty()).unwrap();
        assert_eq!((none.max_transfer_bytes, none.buffer_alignment), (512 * 1024, 512));
        assert!(!none.deallocate_zeroes);
        // MDTS 0 (no limit) and no sysfs: a conservative 128 KiB; NLB caps 512-byte blocks.
        let unlimited = id_ctrl(0, 0, 0);
        let n = namespace_info(1, &id_ns(8, 9, 0), &unlimited, &QueueLimits::default(), Quirks::empty()).unwrap();
        assert_eq!(n.max_transfer_bytes, 128 * 1024);
        assert!(!n.write_zeroes && !n.compare && !n.volatile_write_cache);
        let big = QueueLimits {
            max_hw_bytes: Some(1 << 30),
            ..Default::default()
        };
        assert_eq!(
            namespace_info(1, &id_ns(8, 9, 0), &unlimited, &big, Quirks::empty())
                .unwrap()
                .max_transfer_bytes,
            65536 * 512
        );
        // Inactive namespaces and unusable formats are left out.
        assert!(namespace_info(1, &id_ns(0, 9, 0), &ctrl, &limits, Quirks::empty()).is_none());
        assert!(namespace_info(1, &id_ns(8, 5, 0), &ctrl, &limits, Quirks::empty()).is_none());
    }

    #[test]
    fn verify_follows_oncs_or_the_controllers_quirk() {
        let ctrl = id_ctrl(5, 0x0D, 1); // ONCS without Verify (bit 7), as QEMU 7.2
        let limits = QueueLimits::default();
        assert!(
            !namespace_info(1, &id_ns(8, 9, 0), &ctrl, &limits, Quirks::empty())
                .unwrap()
                .verify
        );
        let quirky = namespace_info(1, &id_ns(8, 9, 0), &ctrl, &limits, Quirks::VERIFY_UNADVERTISED).unwrap();
        assert!(quirky.verify);
    }

    fn info() -> NamespaceInfo {
        namespace_info(
            1,
            &id_ns(1000, 9, 1),
            &id_ctrl(5, 0x0D, 1),
            &QueueLimits {
                dma_alignment: Some(4),
                ..Default::default()
            },
            Quirks::empty(),
        )
        .unwrap()
    }

    #[test]
    fn separate_metadata_follows_the_data_and_extended_lbas_travel_whole() {
        let mut ns = info();
        assert_eq!(
            Transfer::of(&ns, 0x1000, 4096, 8, false),
            Transfer {
                addr: 0x1000,
                len: 4096,
                metadata: (0, 0)
            }
        );
        ns.block_size = 512;
        ns.metadata = ironvme_nvme::block::MetadataFormat::from_identify(8, 0, 1);
        assert_eq!(
            Transfer::of(&ns, 0x1000, 8 * 520, 8, true),
            Transfer {
                addr: 0x1000,
                len: 4096,
                metadata: (0x1000 + 4096, 64)
            }
        );
        // PRACT (no metadata buffer): all data.
        assert_eq!(Transfer::of(&ns, 0x1000, 4096, 8, false).metadata, (0, 0));
        ns.metadata = ironvme_nvme::block::MetadataFormat::from_identify(8, 0x10, 0);
        assert_eq!(
            Transfer::of(&ns, 0x1000, 8 * 520, 8, true),
            Transfer {
                addr: 0x1000,
                len: 8 * 520,
                metadata: (0, 0)
            }
        );
    }

    #[test]
    fn write_zeroes_longer_than_one_command_is_refused() {
        let mut big = info();
        big.blocks = 1 << 20;
        let e = check_op(
            &big,
            &Op::WriteZeroes {
                lba: 0,
                blocks: 70_000,
                deallocate: false,
            },
            None,
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
        assert_eq!(
            check_op(&big, &Op::Deallocate { lba: 0, blocks: 70_000 }, None, None).unwrap(),
            70_000
        );
    }

    #[test]
    fn a_queue_refuses_bad_requests_before_any_ioctl_and_returns_the_buffer() {
        // /dev/null stands in for the node: nothing reaches it, because every request is
        // refused before `ring`.
        let file = PassthruFile::open(BACKEND_IOCTL, Path::new("/dev/null"), true).unwrap();
        let mut q = SyncQueue::new(
            IoctlNamespace {
                file: Arc::new(file),
                info: info(),
            },
            2,
        );
        let dma = KernelDma::new(false);
        let e = q
            .submit(Op::Read { lba: 999 }, Some(dma.allocate(1024).unwrap()), 1)
            .unwrap_err();
        assert!(
            matches!(
                e.error,
                BlockError::LbaOutOfRange {
                    lba: 999,
                    blocks: 2,
                    size: 1000
                }
            ),
            "{e}"
        );
        assert_eq!(e.buf.unwrap().len(), 1024);
        let mut odd = dma.allocate(8192).unwrap();
        odd.set_window(2, 512).unwrap();
        assert!(matches!(
            q.submit(Op::Read { lba: 0 }, Some(odd), 2).unwrap_err().error,
            BlockError::Misaligned { .. }
        ));
        assert_eq!(q.outstanding(), 0);
        assert_eq!(q.poll(8, |_| unreachable!()), 0);
    }

    #[test]
    fn a_queue_holds_depth_operations_and_completes_each_once() {
        // On /dev/null the ioctl fails with ENOTTY, twice (64-bit, then 32-bit): every
        // operation completes once, in order, with that errno and its buffer.
        let file = PassthruFile::open(BACKEND_IOCTL, Path::new("/dev/null"), true).unwrap();
        let mut q = SyncQueue::new(
            IoctlNamespace {
                file: Arc::new(file),
                info: info(),
            },
            3,
        );
        let dma = KernelDma::new(false);
        for tag in 0..3 {
            q.submit(
                Op::Write { lba: tag, fua: false },
                Some(dma.allocate(512).unwrap()),
                tag,
            )
            .unwrap();
        }
        let full = q.submit(Op::Flush, None, 9).unwrap_err();
        assert!(matches!(full.error, BlockError::QueueFull(3)));
        let mut seen = Vec::new();
        assert_eq!(q.poll(2, |c| seen.push((c.tag, c.buf.is_some(), c.result))), 2);
        assert_eq!(q.poll(8, |c| seen.push((c.tag, c.buf.is_some(), c.result))), 1);
        let enotty = Err(IoStatus::Os(libc::ENOTTY));
        assert_eq!(seen, [(0, true, enotty), (1, true, enotty), (2, true, enotty)]);
        assert_eq!(q.outstanding(), 0);
    }

    #[test]
    fn non_nvme_paths_are_refused_with_what_they_are() {
        let e = IoctlDevice::open(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(e.starts_with("ioctl: /dev/null: character device null (1:3"), "{e}");
        assert!(e.contains("is not an NVMe device") && e.contains("/dev/ngXnY"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("disk.img");
        std::fs::write(&f, [0u8; 512]).unwrap();
        let e = IoctlDevice::open(&f).unwrap_err().to_string();
        assert!(e.contains("not a character or block device"), "{e}");
        let e = IoctlDevice::open(&dir.path().join("missing")).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert!(e.to_string().starts_with("ioctl: stat "), "{e}");
    }

    #[test]
    fn namespace_nodes_are_found_in_a_controllers_sysfs_directory() {
        let sys = tempfile::tempdir().unwrap();
        let ctrl = sys.path().join("class/nvme/nvme3");
        for (entry, nsid) in [("nvme3n1", "1\n"), ("nvme3n2", "2\n"), ("nvme1c3n5", "5\n")] {
            std::fs::create_dir_all(ctrl.join(entry)).unwrap();
            std::fs::write(ctrl.join(entry).join("nsid"), nsid).unwrap();
        }
        for other in ["ng3n1", "hwmon2", "power", "nvme3n1p1"] {
            std::fs::create_dir_all(ctrl.join(other)).unwrap();
        }
        let found = controller_namespaces(sys.path(), "nvme3");
        let names: Vec<(u32, String, String)> = found.iter().map(|n| (n.nsid, n.disk.clone(), n.generic())).collect();
        assert_eq!(
            names,
            [
                (1, "nvme3n1".into(), "ng3n1".into()),
                (2, "nvme3n2".into(), "ng3n2".into()),
                (5, "nvme1n5".into(), "ng1n5".into()),
            ]
        );
        let q = sys.path().join("block/nvme3n1/queue");
        std::fs::create_dir_all(&q).unwrap();
        for (attr, v) in [
            ("max_hw_sectors_kb", "512\n"),
            ("max_segments", "127\n"),
            ("dma_alignment", "3\n"),
        ] {
            std::fs::write(q.join(attr), v).unwrap();
        }
        assert_eq!(
            queue_limits(sys.path(), "nvme3n1"),
            QueueLimits {
                max_hw_bytes: Some(512 * 1024),
                max_segments: Some(127),
                dma_alignment: Some(4)
            }
        );
        assert_eq!(queue_limits(sys.path(), "nvme3n2"), QueueLimits::default());
        assert_eq!(Node::Generic("ng3n2".into()).disk().as_deref(), Some("nvme3n2"));
    }

    #[test]
    fn passthrough_timeouts_are_whole_milliseconds_and_never_zero_when_given() {
        assert_eq!(timeout_ms(None), 0, "the kernel's default");
        assert_eq!(timeout_ms(Some(Duration::from_secs(600))), 600_000);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1500))), 2);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 1, "0 would mean the default");
        assert_eq!(timeout_ms(Some(Duration::from_secs(u64::MAX))), u32::MAX);
    }

    #[test]
    fn the_controller_of_a_multipath_namespace_is_found_in_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let root = sys.path();
        let link = |target: &str, at: &str| {
            std::fs::create_dir_all(root.join(at).parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(root.join(target), root.join(at)).unwrap();
        };
        // Subsystem 0 has controllers nvme2 and nvme5; only nvme5 has a path to namespace 1
        // (disk nvme0n1, path nvme0c5n1). Controller nvme0 is of another subsystem.
        let subsys = "devices/virtual/nvme-subsystem/nvme-subsys0";
        for ctrl in ["nvme2", "nvme5", "nvme0"] {
            std::fs::create_dir_all(root.join("devices/pci/nvme").join(ctrl)).unwrap();
            link(&format!("devices/pci/nvme/{ctrl}"), &format!("class/nvme/{ctrl}"));
        }
        link("devices/pci/nvme/nvme2", &format!("{subsys}/nvme2"));
        link("devices/pci/nvme/nvme5", &format!("{subsys}/nvme5"));
        std::fs::create_dir_all(root.join("devices/pci/nvme/nvme5/nvme0c5n1")).unwrap();
        std::fs::write(root.join("devices/pci/nvme/nvme5/nvme0c5n1/nsid"), "1\n").unwrap();
        std::fs::create_dir_all(root.join(subsys).join("nvme0n1")).unwrap();
        link(subsys, &format!("{subsys}/nvme0n1/device"));
        link(&format!("{subsys}/nvme0n1"), "block/nvme0n1");
        std::fs::create_dir_all(root.join(subsys).join("ng0n1")).unwrap();
        link(subsys, &format!("{subsys}/ng0n1/device"));
        link(&format!("{subsys}/ng0n1"), "class/nvme-generic/ng0n1");
        // Without native multipath: the disk's parent is its controller.
        std::fs::create_dir_all(root.join("devices/pci/nvme/nvme0/nvme0n2")).unwrap();
        link("devices/pci/nvme/nvme0", "devices/pci/nvme/nvme0/nvme0n2/device");
        link("devices/pci/nvme/nvme0/nvme0n2", "block/nvme9n2");
        assert_eq!(Node::Block("nvme0n1".into()).controller_path_in(root), "/dev/nvme5");
        assert_eq!(Node::Generic("ng0n1".into()).controller_path_in(root), "/dev/nvme5");
        assert_eq!(Node::Block("nvme9n2".into()).controller_path_in(root), "/dev/nvme0");
        // No path to the namespace found: the subsystem's first controller.
        std::fs::remove_dir_all(root.join("devices/pci/nvme/nvme5/nvme0c5n1")).unwrap();
        assert_eq!(Node::Block("nvme0n1".into()).controller_path_in(root), "/dev/nvme2");
        // Without sysfs: the node's name.
        assert_eq!(Node::Block("nvme7n1".into()).controller_path_in(root), "/dev/nvme7");
    }

    #[test]
    fn metadata_refusals_name_the_controller_node_to_reformat() {
        let no_sysfs = tempfile::tempdir().unwrap();
        let at = |node: Node| node.controller_path_in(no_sysfs.path());
        assert_eq!(at(Node::Generic("ng3n2".into())), "/dev/nvme3");
        assert_eq!(at(Node::Block("nvme12n1".into())), "/dev/nvme12");
        assert_eq!(at(Node::Controller("nvme0".into())), "/dev/nvme0");
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(&8u64.to_le_bytes());
        b[25] = 1;
        b[26] = 1 | 1 << 4; // format 1, metadata at the end of each block
        b[128..132].copy_from_slice(&(12u32 << 16).to_le_bytes());
        b[132..136].copy_from_slice(&((12u32 << 16) | 8).to_le_bytes());
        let ns = IdentifyNamespace::parse(&b).unwrap();
        Node::Generic("ng3n2".into())
            .check_plain_io(2, &id_ns(8, 12, 0))
            .unwrap();
        let e = Node::Generic("ng3n2".into()).check_plain_io(2, &ns).unwrap_err();
        let e = KernelError::MetadataUnsupported {
            backend: BACKEND_IOCTL,
            path: "/dev/ng3n2".into(),
            source: Box::new(e),
        }
        .to_string();
        assert!(
            e.starts_with("ioctl: /dev/ng3n2: namespace 2 is formatted with LBA format 1 (LBADS 12"),
            "{e}"
        );
        assert!(e.contains("`ironvme format /dev/nvme3 --nsid 2 --lbaf 0`"), "{e}");
        assert!(e.contains("`nvme format /dev/nvme3 -n 2 -l 0`"), "{e}");
    }
}
