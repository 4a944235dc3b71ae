//! The psync backend: `pread(2)` / `pwrite(2)` on any regular file or block device.
//!
//! The simplest backend, and the one that works everywhere: no io_uring, no NVMe. Its
//! queue keeps the block interface but is synchronous underneath: `submit` puts the
//! operation in a fixed-capacity queue, `ring` executes everything queued, in order, in
//! the calling thread, and `poll` hands back the completions.
//!
//! | operation | regular file | block device |
//! | --- | --- | --- |
//! | Read / Write | `pread` / `pwrite`, looping on short transfers; FUA is `pwritev2(RWF_DSYNC)` | same |
//! | Flush | `fdatasync` | `fdatasync` |
//! | Write Zeroes | `fallocate(FALLOC_FL_ZERO_RANGE)`, or `FALLOC_FL_PUNCH_HOLE` where zero-range does not work | `BLKZEROOUT` |
//! | Deallocate | `fallocate(FALLOC_FL_PUNCH_HOLE)` (reads back as zeros) | `BLKDISCARD` (offered when `discard_max_bytes` > 0; what it reads back as is up to the device) |
//!
//! Files are opened with `O_DIRECT`; if the file system refuses it (`EINVAL`: tmpfs
//! before Linux 6.6, some FUSE file systems) the backend falls back to buffered I/O and
//! says so ([`PsyncDevice::direct`]). Buffers must still be aligned to
//! [`NamespaceInfo::buffer_alignment`], so that code written against this backend also
//! runs on the others.

use crate::error::{BACKEND_PSYNC, KernelError};
use crate::geometry::{self, FallocateSupport, FileKind, os};
use crate::sync_queue::{Executor, SyncQueue};
use ironvme_nvme::block::{self, BlockError, IoStatus, NamespaceInfo, Op, Protection};
use ironvme_nvme::hw::DmaBuf;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How Write Zeroes and Deallocate are done.
#[derive(Clone, Copy, Debug)]
enum Target {
    /// `BLKZEROOUT` / `BLKDISCARD`.
    BlockDevice,
    /// `fallocate(2)` with the modes the file system supports.
    File(FallocateSupport),
}

/// An open file and its geometry: what a [`PsyncQueue`] runs its operations on.
#[derive(Debug)]
pub struct PsyncFile {
    file: File,
    path: PathBuf,
    info: NamespaceInfo,
    target: Target,
    direct: bool,
}

/// A block device or regular file open for `pread`/`pwrite` (`O_RDWR`, with `O_DIRECT`
/// where the file system allows it).
pub struct PsyncDevice {
    shared: Arc<PsyncFile>,
}

impl PsyncDevice {
    /// Opens `path` — a block device or a regular file — for reading and writing.
    /// `block_size` (bytes) is for regular files (see [`crate::UringOptions::block_size`]);
    /// for a block device it must be `None` or its logical block size.
    ///
    /// Errors: [`KernelError::WrongDevice`] for a character device (an NVMe generic or
    /// controller device names the backend to use), directory or FIFO, or a file whose
    /// size is not a whole number of blocks; [`KernelError::BadOption`] for an unusable
    /// block size; [`KernelError::Os`] if opening (permission denied, read-only file
    /// system, ...) or an ioctl fails.
    pub fn open(path: &Path, block_size: Option<u32>) -> Result<PsyncDevice, KernelError> {
        let meta = std::fs::metadata(path).map_err(|e| os(BACKEND_PSYNC, "stat", path, e))?;
        geometry::refuse_non_block(geometry::kind_of(&meta, path), path, BACKEND_PSYNC)?;
        let open = |flags: i32| OpenOptions::new().read(true).write(true).custom_flags(flags).open(path);
        let (file, direct) = match open(libc::O_DIRECT | libc::O_CLOEXEC) {
            Ok(f) => (f, true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(path = %path.display(), "psync: the file system refuses O_DIRECT: buffered I/O");
                let f = open(libc::O_CLOEXEC).map_err(|e| os(BACKEND_PSYNC, "open read-write", path, e))?;
                (f, false)
            }
            Err(e) => return Err(os(BACKEND_PSYNC, "open read-write with O_DIRECT", path, e)),
        };
        let meta = file.metadata().map_err(|e| os(BACKEND_PSYNC, "fstat", path, e))?;
        let kind = geometry::kind_of(&meta, path);
        geometry::refuse_non_block(kind, path, BACKEND_PSYNC)?;
        let (info, target) = match kind {
            FileKind::BlockDevice { .. } => {
                let g = geometry::block_device_geometry(&file, path, BACKEND_PSYNC)?;
                geometry::check_block_size(block_size, &g, path, BACKEND_PSYNC)?;
                (g.namespace_info(), Target::BlockDevice)
            }
            _ => {
                let g = geometry::file_geometry(&file, path, block_size, direct, BACKEND_PSYNC)?;
                (g.namespace_info(), Target::File(g.fallocate))
            }
        };
        tracing::debug!(path = %path.display(), direct, ?info, "psync: opened");
        Ok(PsyncDevice {
            shared: Arc::new(PsyncFile {
                file,
                path: path.into(),
                info,
                target,
                direct,
            }),
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

    /// Whether I/O bypasses the page cache (`O_DIRECT`). `false` when the file system
    /// refused `O_DIRECT` and the backend fell back to buffered I/O: then completed writes
    /// sit in the page cache until [`Op::Flush`].
    pub fn direct(&self) -> bool {
        self.shared.direct
    }

    /// A queue of `depth` operations.
    ///
    /// Errors: [`KernelError::BadOption`] for a depth of 0.
    pub fn create_queue(&self, depth: usize) -> Result<PsyncQueue, KernelError> {
        if depth == 0 {
            return Err(KernelError::BadOption {
                backend: BACKEND_PSYNC,
                why: "queue depth 0: must be at least 1".into(),
            });
        }
        Ok(SyncQueue::new(Arc::clone(&self.shared), depth))
    }
}

impl std::fmt::Debug for PsyncDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PsyncDevice")
            .field("path", &self.shared.path)
            .field("direct", &self.shared.direct)
            .field("info", &self.shared.info)
            .finish()
    }
}

/// A queue of synchronous operations: the psync backend of the block interface
/// ([`SyncQueue`]).
///
/// At most `depth` operations are queued or completed-but-not-polled at once. A read or
/// write is repeated until all of it is transferred; one that hits the end of the file
/// (the file shrank) completes with `EIO`.
pub type PsyncQueue = SyncQueue<Arc<PsyncFile>>;

impl Executor for Arc<PsyncFile> {
    fn namespace(&self) -> &NamespaceInfo {
        &self.info
    }

    /// Metadata is refused: files have none, and a block device's integrity data is the
    /// kernel's to generate and check.
    fn check(&self, op: &Op, buf: Option<&DmaBuf>, pi: Option<&Protection>) -> Result<u64, BlockError> {
        if pi.is_some() {
            return Err(BlockError::Unsupported {
                op: op.name(),
                reason: "psync does not carry metadata (the kernel handles a block device's integrity data)".into(),
            });
        }
        block::check(&self.info, op, buf)
    }

    fn execute(
        &self,
        op: &Op,
        buf: Option<&mut DmaBuf>,
        blocks: u64,
        _pi: Option<&Protection>,
    ) -> Result<(), IoStatus> {
        let bs = self.info.block_size as u64;
        let file = &self.file;
        let errno = |e: std::io::Error| IoStatus::Os(e.raw_os_error().unwrap_or(libc::EIO));
        match (*op, buf) {
            (Op::Read { lba }, Some(buf)) => read_all(file, buf.as_mut_slice(), lba * bs),
            (Op::Write { lba, fua }, Some(buf)) => write_all(file, buf.as_slice(), lba * bs, fua),
            (Op::Flush, _) => file.sync_data().map_err(errno),
            (Op::WriteZeroes { lba, deallocate, .. }, _) => match self.target {
                Target::BlockDevice => geometry::blk_zero_out(file, lba * bs, blocks * bs).map_err(errno),
                Target::File(f) => fallocate(file, f.zero_mode(deallocate), lba * bs, blocks * bs),
            },
            (Op::Deallocate { lba, .. }, _) => match self.target {
                Target::BlockDevice => geometry::blk_discard(file, lba * bs, blocks * bs).map_err(errno),
                Target::File(f) => fallocate(file, f.deallocate_mode(), lba * bs, blocks * bs),
            },
            (op, _) => unreachable!("{} passed check() without support or a buffer", op.name()),
        }
    }
}

/// `pread` until `buf` is full.
fn read_all(file: &File, buf: &mut [u8], offset: u64) -> Result<(), IoStatus> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => return Err(IoStatus::Os(libc::EIO)),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IoStatus::Os(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }
    Ok(())
}

/// `pwrite` (`pwritev2` with `RWF_DSYNC` for FUA) until all of `buf` is written.
fn write_all(file: &File, buf: &[u8], offset: u64, fua: bool) -> Result<(), IoStatus> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &buf[done..];
        let at = offset + done as u64;
        let r = if fua {
            let iov = libc::iovec {
                iov_base: rest.as_ptr() as *mut libc::c_void,
                iov_len: rest.len(),
            };
            // SAFETY: the iovec describes `rest`, a live slice the kernel only reads, and
            // the fd is open for as long as `file` is borrowed.
            let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, at as libc::off_t, libc::RWF_DSYNC) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        } else {
            file.write_at(rest, at)
        };
        match r {
            Ok(0) => return Err(IoStatus::Os(libc::EIO)),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IoStatus::Os(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }
    Ok(())
}

/// `fallocate(2)` with `mode` (`None`: not supported, which `check` has ruled out).
fn fallocate(file: &File, mode: Option<i32>, offset: u64, len: u64) -> Result<(), IoStatus> {
    let mode = mode.ok_or(IoStatus::Os(libc::EOPNOTSUPP))?;
    let flags = nix::fcntl::FallocateFlags::from_bits_retain(mode);
    loop {
        match nix::fcntl::fallocate(file, flags, offset as libc::off_t, len as libc::off_t) {
            Ok(()) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(IoStatus::Os(e as i32)),
        }
    }
}
