//! Geometry and capabilities of block devices and regular files, for the kernel backends.
//!
//! - Block devices: size, logical and physical block size from the `linux/fs.h` ioctls
//!   (`BLKGETSIZE64`, `BLKSSZGET`, `BLKPBSZGET`, `BLKSECTGET`), the rest from sysfs
//!   (`/sys/dev/block/MAJ:MIN/queue/`, or the parent disk's `queue/` for a partition):
//!   `max_sectors_kb`, `max_hw_sectors_kb`, `discard_max_bytes`, `write_zeroes_max_bytes`,
//!   `write_cache`, `io_poll` (Documentation/ABI/stable/sysfs-block).
//! - Regular files: size from `fstat`, block size from the caller, or the file system's
//!   `O_DIRECT` alignment (`statx(2)` with `STATX_DIOALIGN`, Linux 6.1+), or 4096 bytes;
//!   which `fallocate(2)` modes work is probed once, past the end of the file (see
//!   [`probe_fallocate`]).
//!
//! [`BlockDeviceGeometry::namespace_info`] and [`FileGeometry::namespace_info`] give a
//! generic [`NamespaceInfo`]; backends that implement an operation differently adjust the
//! capability flags from the raw facts in those structs.

use crate::error::KernelError;
use crate::node::{self, NodeKind};
use ironvme_nvme::block::{GeometrySource, MetadataFormat, NamespaceInfo};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Largest transfer per operation on a regular file, in bytes. Files have no hardware
/// limit; 1 MiB keeps one operation's latency bounded and matches common device limits.
pub const FILE_MAX_TRANSFER_BYTES: usize = 1 << 20;
/// Block size of a regular file when neither the caller nor `statx` gives one, in bytes.
pub const FILE_DEFAULT_BLOCK_SIZE: u32 = 4096;
/// Smallest block size accepted for a regular file, in bytes.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size accepted for a regular file, in bytes (the largest NVMe LBA size in
/// common use).
pub const MAX_BLOCK_SIZE: u32 = 64 * 1024;
/// Largest transfer assumed when neither sysfs nor `BLKSECTGET` gives one, in bytes.
pub const BLOCK_DEFAULT_MAX_TRANSFER_BYTES: usize = 128 * 1024;

/// `fallocate(2)` mode bits (`linux/falloc.h`).
pub mod falloc {
    /// Do not change the file size.
    pub const KEEP_SIZE: i32 = libc::FALLOC_FL_KEEP_SIZE;
    /// Deallocate the range; it reads back as zeros. Needs `KEEP_SIZE`.
    pub const PUNCH_HOLE: i32 = libc::FALLOC_FL_PUNCH_HOLE;
    /// Zero the range, preferably without writing data; it stays allocated.
    pub const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE;
}

/// The `linux/fs.h` block device ioctls. `BLKSSZGET` and friends are `_IO` numbers that
/// nonetheless take a pointer argument, hence the `_bad` macros.
mod blk {
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);
    nix::ioctl_read_bad!(blkpbszget, nix::request_code_none!(0x12, 123), libc::c_uint);
    nix::ioctl_read_bad!(blksectget, nix::request_code_none!(0x12, 103), libc::c_ushort);
    nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
}

/// What a path names, from its `stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A block device (`S_IFBLK`) with its device number.
    BlockDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A regular file.
    Regular,
    /// A character device, with what sysfs says it is.
    CharDevice {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
        /// Its class.
        class: CharDeviceClass,
    },
    /// A directory, FIFO, socket or anything else no backend does block I/O on.
    Other(&'static str),
}

/// The kinds of character device a user may name by mistake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CharDeviceClass {
    /// An NVMe generic namespace device (`/dev/ngXnY`, sysfs class `nvme-generic`).
    NvmeGeneric,
    /// An NVMe controller device (`/dev/nvmeX`, sysfs class `nvme`).
    NvmeController,
    /// Anything else.
    Other,
}

/// Classifies an open file (or a path's metadata) with [`node::classify_metadata`]:
/// character devices by their sysfs class, or without sysfs by their name (`ngXnY`,
/// `nvmeX`).
pub fn kind_of(meta: &std::fs::Metadata, path: &Path) -> FileKind {
    let found = node::classify_metadata(Path::new(node::SYSFS), meta, path);
    let (major, minor) = found.devno.unwrap_or_default();
    match found.kind {
        NodeKind::NvmeDisk | NodeKind::Block => FileKind::BlockDevice { major, minor },
        NodeKind::File => FileKind::Regular,
        NodeKind::NvmeController | NodeKind::NvmeGeneric | NodeKind::Char => FileKind::CharDevice {
            major,
            minor,
            class: match found.kind {
                NodeKind::NvmeGeneric => CharDeviceClass::NvmeGeneric,
                NodeKind::NvmeController => CharDeviceClass::NvmeController,
                _ => CharDeviceClass::Other,
            },
        },
        NodeKind::Other(what) => FileKind::Other(what),
    }
}

/// A block device's geometry and limits, as the kernel reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDeviceGeometry {
    /// Device number.
    pub major: u32,
    /// Device number.
    pub minor: u32,
    /// Size in bytes (`BLKGETSIZE64`).
    pub size_bytes: u64,
    /// Logical block size in bytes (`BLKSSZGET`): the unit of `O_DIRECT` offsets, lengths
    /// and buffer addresses.
    pub logical_block_size: u32,
    /// Physical block size in bytes (`BLKPBSZGET`).
    pub physical_block_size: u32,
    /// Largest request the block layer builds, in bytes (`queue/max_sectors_kb`, else
    /// `BLKSECTGET`); `None` if neither is readable.
    pub max_sectors_bytes: Option<usize>,
    /// Largest request the hardware takes, in bytes (`queue/max_hw_sectors_kb`).
    pub max_hw_sectors_bytes: Option<usize>,
    /// Largest discard, in bytes; 0: no discard (`queue/discard_max_bytes`).
    pub discard_max_bytes: u64,
    /// Largest hardware write zeroes, in bytes; 0: the kernel writes zero pages instead
    /// (`queue/write_zeroes_max_bytes`).
    pub write_zeroes_max_bytes: u64,
    /// The device has a volatile write cache (`queue/write_cache` is `write back`;
    /// assumed when unreadable).
    pub volatile_write_cache: bool,
    /// Largest number of memory segments in one request (`queue/max_segments`).
    pub max_segments: Option<u32>,
    /// Requests may not cross a multiple of this many bytes; 0: no such boundary
    /// (`queue/chunk_sectors` × 512; NVMe sets it from NOIOB).
    pub chunk_bytes: u64,
    /// Polled completions work (`queue/io_poll` is 1: the NVMe driver has poll queues).
    pub io_poll: bool,
    /// The sysfs `queue/` directory the limits came from, if found.
    pub queue_dir: Option<PathBuf>,
}

impl BlockDeviceGeometry {
    /// The device's kernel name (`nvme0n1`, `loop3`), from sysfs.
    pub fn name(&self) -> Option<String> {
        let link = std::fs::canonicalize(format!("/sys/dev/block/{}:{}", self.major, self.minor)).ok()?;
        Some(link.file_name()?.to_string_lossy().into_owned())
    }

    /// Size in logical blocks.
    pub fn blocks(&self) -> u64 {
        self.size_bytes / self.logical_block_size as u64
    }

    /// Largest transfer per operation, in bytes: `max_sectors_kb` rounded down to whole
    /// logical blocks (at least one block), or [`BLOCK_DEFAULT_MAX_TRANSFER_BYTES`].
    pub fn max_transfer_bytes(&self) -> usize {
        let bs = self.logical_block_size as usize;
        let max = self
            .max_sectors_bytes
            .unwrap_or(BLOCK_DEFAULT_MAX_TRANSFER_BYTES)
            .min(u32::MAX as usize);
        (max / bs * bs).max(bs)
    }

    /// Largest transfer the block layer never has to split, in bytes, for buffers aligned
    /// to `buffer_alignment`: [`Self::max_transfer_bytes`], and no more pages than
    /// `max_segments` (one less when a buffer may start inside a page) or 256 (one bio,
    /// `BIO_MAX_VECS`). Polled I/O needs it: Linux 6.1 submits a polled bio with
    /// `REQ_NOWAIT`, a bio that must be split then fails with `EAGAIN`, and io_uring's
    /// worker retries an IOPOLL request on `EAGAIN` forever (seen with QEMU's NVMe
    /// controller: 127 segments, and a 512 KiB read from 128 scattered pages).
    pub fn polled_max_transfer_bytes(&self, buffer_alignment: usize) -> usize {
        const PAGE: usize = 4096;
        const BIO_MAX_VECS: usize = 256;
        let bs = self.logical_block_size as usize;
        let segments = (self.max_segments.unwrap_or(BIO_MAX_VECS as u32) as usize).min(BIO_MAX_VECS);
        let pages = if buffer_alignment % PAGE == 0 {
            segments
        } else {
            segments.saturating_sub(1)
        };
        let max = self.max_transfer_bytes().min(pages * PAGE);
        (max / bs * bs).max(bs)
    }

    /// The namespace as a generic kernel backend sees it: write zeroes always works
    /// (`BLKZEROOUT` and `fallocate(FALLOC_FL_ZERO_RANGE)` fall back to writing zeros);
    /// deallocate is a discard, offered when `discard_max_bytes` > 0; whether discarded
    /// blocks read back as zeros is not promised (`discard_zeroes_data` has read 0 on every
    /// kernel since 4.12), so `deallocate_zeroes` is false. Compare and Verify need NVMe
    /// passthrough.
    pub fn namespace_info(&self) -> NamespaceInfo {
        NamespaceInfo {
            nsid: 1,
            block_size: self.logical_block_size,
            blocks: self.blocks(),
            max_transfer_bytes: self.max_transfer_bytes(),
            buffer_alignment: self.logical_block_size as usize,
            write_zeroes: true,
            deallocate: self.discard_max_bytes > 0,
            deallocate_zeroes: false,
            compare: false,
            verify: false,
            volatile_write_cache: self.volatile_write_cache,
            zone_commands: false,
            metadata: MetadataFormat::NONE,
            source: GeometrySource::BlockDevice,
        }
    }
}

/// Reads a block device's geometry from its ioctls and sysfs. `file` must be open on
/// the block device `path`; `backend` names the backend in errors.
///
/// Errors: [`KernelError::WrongDevice`] if `file` is not a block device or reports a
/// block size that is not a power of two of at least 512 bytes; [`KernelError::Os`] if
/// an ioctl fails.
pub fn block_device_geometry(
    file: &File,
    path: &Path,
    backend: &'static str,
) -> Result<BlockDeviceGeometry, KernelError> {
    let meta = file.metadata().map_err(|source| os(backend, "fstat", path, source))?;
    let FileKind::BlockDevice { major, minor } = kind_of(&meta, path) else {
        return Err(KernelError::WrongDevice {
            backend,
            path: path.into(),
            why: "is not a block device".into(),
        });
    };
    let fd = file.as_raw_fd();
    let mut size_bytes = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 (size_t on 64-bit Linux) through the pointer,
    // which points to a live local.
    unsafe { blk::blkgetsize64(fd, &mut size_bytes) }.map_err(|e| os(backend, "BLKGETSIZE64", path, e.into()))?;
    let mut lbs: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points to a live local.
    unsafe { blk::blksszget(fd, &mut lbs) }.map_err(|e| os(backend, "BLKSSZGET", path, e.into()))?;
    let mut pbs: libc::c_uint = 0;
    // SAFETY: BLKPBSZGET writes one unsigned int through the pointer, a live local.
    unsafe { blk::blkpbszget(fd, &mut pbs) }.map_err(|e| os(backend, "BLKPBSZGET", path, e.into()))?;
    let logical_block_size = u32::try_from(lbs).unwrap_or(0);
    if logical_block_size < MIN_BLOCK_SIZE || !logical_block_size.is_power_of_two() {
        return Err(KernelError::WrongDevice {
            backend,
            path: path.into(),
            why: format!("reports a logical block size of {lbs} bytes (BLKSSZGET); expected a power of two >= 512"),
        });
    }
    let queue_dir = sysfs_queue_dir(major, minor);
    let read = |name: &str| queue_dir.as_ref().and_then(|d| read_sysfs(&d.join(name)));
    let kib = |name: &str| {
        read(name)
            .and_then(|s| s.parse::<usize>().ok())
            .map(|k| k.saturating_mul(1024))
    };
    let bytes = |name: &str| read(name).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let max_sectors_bytes = kib("max_sectors_kb").or_else(|| {
        let mut sectors: libc::c_ushort = 0;
        // SAFETY: BLKSECTGET writes one unsigned short through the pointer, a live local.
        unsafe { blk::blksectget(fd, &mut sectors) }
            .ok()
            .filter(|_| sectors > 0)
            .map(|_| sectors as usize * 512)
    });
    Ok(BlockDeviceGeometry {
        major,
        minor,
        size_bytes,
        logical_block_size,
        physical_block_size: pbs.max(logical_block_size),
        max_sectors_bytes,
        max_hw_sectors_bytes: kib("max_hw_sectors_kb"),
        discard_max_bytes: bytes("discard_max_bytes"),
        write_zeroes_max_bytes: bytes("write_zeroes_max_bytes"),
        volatile_write_cache: read("write_cache").is_none_or(|s| s == "write back"),
        max_segments: read("max_segments").and_then(|s| s.parse().ok()),
        chunk_bytes: read("chunk_sectors")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            .saturating_mul(512),
        io_poll: read("io_poll").is_some_and(|s| s == "1"),
        queue_dir,
    })
}

/// The zoned model of the block device at `path`, from sysfs `queue/zoned`
/// (Documentation/ABI/stable/sysfs-block): `host-managed` or `host-aware`; `None` for a
/// conventional device, for anything that is not a block device, or without sysfs.
pub fn zoned_model(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let FileKind::BlockDevice { major, minor } = kind_of(&meta, path) else {
        return None;
    };
    let model = read_sysfs(&sysfs_queue_dir(major, minor)?.join("zoned"))?;
    (model != "none").then_some(model)
}

/// The `queue/` directory of a block device in sysfs: its own, or its disk's for a
/// partition (partitions have no `queue/`).
fn sysfs_queue_dir(major: u32, minor: u32) -> Option<PathBuf> {
    let dev = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
    let dir = if dev.join("partition").exists() {
        dev.parent()?.join("queue")
    } else {
        dev.join("queue")
    };
    dir.is_dir().then_some(dir)
}

/// A sysfs attribute's value, trimmed; `None` if it cannot be read.
fn read_sysfs(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// Which `fallocate(2)` modes a file system supports on a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FallocateSupport {
    /// `FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE` works (ext4, xfs, btrfs; not tmpfs).
    pub zero_range: bool,
    /// `FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE` works (ext4, xfs, btrfs, tmpfs).
    pub punch_hole: bool,
}

impl FallocateSupport {
    /// The mode that zeroes a range and keeps it allocated if possible: `ZERO_RANGE`, else
    /// `PUNCH_HOLE` (the range reads back as zeros but is deallocated); `None` if
    /// neither works. With `allow_deallocate`, `PUNCH_HOLE` is preferred.
    pub fn zero_mode(&self, allow_deallocate: bool) -> Option<i32> {
        let zero = self.zero_range.then_some(falloc::ZERO_RANGE | falloc::KEEP_SIZE);
        let punch = self.punch_hole.then_some(falloc::PUNCH_HOLE | falloc::KEEP_SIZE);
        if allow_deallocate {
            punch.or(zero)
        } else {
            zero.or(punch)
        }
    }

    /// The mode that deallocates a range: `PUNCH_HOLE`, if it works.
    pub fn deallocate_mode(&self) -> Option<i32> {
        self.punch_hole.then_some(falloc::PUNCH_HOLE | falloc::KEEP_SIZE)
    }
}

/// Probes which `fallocate(2)` modes work on `file` (open for writing) without touching
/// its data or size: both modes, with `FALLOC_FL_KEEP_SIZE`, on one 4 KiB range starting
/// at the end of the file rounded up to 64 KiB — past the end, where a punched hole
/// changes nothing and a zeroed range is at most a preallocation beyond EOF, which the
/// final punch releases again. A mode that fails with any error (`EOPNOTSUPP`, `EPERM` on
/// an append-only file, `ENOSPC`, ...) counts as unsupported.
pub fn probe_fallocate(file: &File, size: u64) -> FallocateSupport {
    let fd = file.as_raw_fd();
    let Some(offset) = size
        .checked_next_multiple_of(64 * 1024)
        .and_then(|o| i64::try_from(o).ok())
    else {
        return FallocateSupport::default();
    };
    let try_mode = |mode: i32| {
        // SAFETY: fallocate only reads its integer arguments; the fd is open for as long
        // as `file` is borrowed.
        let r = unsafe { libc::fallocate(fd, mode, offset, 4096) };
        r == 0
    };
    let punch_hole = try_mode(falloc::PUNCH_HOLE | falloc::KEEP_SIZE);
    let zero_range = try_mode(falloc::ZERO_RANGE | falloc::KEEP_SIZE);
    if zero_range && punch_hole {
        // Release the preallocation the zero-range probe may have made beyond EOF.
        try_mode(falloc::PUNCH_HOLE | falloc::KEEP_SIZE);
    }
    FallocateSupport { zero_range, punch_hole }
}

/// A regular file's geometry as a namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileGeometry {
    /// Size in bytes.
    pub size_bytes: u64,
    /// The block size chosen, in bytes.
    pub block_size: u32,
    /// `O_DIRECT` alignment of file offsets and of memory, in bytes, from `statx`
    /// (`STATX_DIOALIGN`, Linux 6.1+); `None` if the kernel does not say; `Some((0, 0))`
    /// if the file system does not support `O_DIRECT` on this file.
    pub dio_align: Option<(u32, u32)>,
    /// Which `fallocate(2)` modes work.
    pub fallocate: FallocateSupport,
}

impl FileGeometry {
    /// The file as a namespace: 1 MiB transfers ([`FILE_MAX_TRANSFER_BYTES`]), buffers
    /// aligned to the block size (or the file system's `O_DIRECT` memory alignment if that
    /// is larger), write zeroes where `ZERO_RANGE` or `PUNCH_HOLE` works, deallocate where
    /// `PUNCH_HOLE` works (a punched hole reads back as zeros), and a volatile write cache
    /// (the page cache and the disk's cache: only `fdatasync` makes writes durable).
    pub fn namespace_info(&self) -> NamespaceInfo {
        let mem_align = self.dio_align.map_or(0, |(mem, _)| mem) as usize;
        NamespaceInfo {
            nsid: 1,
            block_size: self.block_size,
            blocks: self.size_bytes / self.block_size as u64,
            max_transfer_bytes: FILE_MAX_TRANSFER_BYTES,
            buffer_alignment: (self.block_size as usize).max(mem_align),
            write_zeroes: self.fallocate.zero_mode(false).is_some(),
            deallocate: self.fallocate.punch_hole,
            deallocate_zeroes: self.fallocate.punch_hole,
            compare: false,
            verify: false,
            volatile_write_cache: true,
            zone_commands: false,
            metadata: MetadataFormat::NONE,
            source: GeometrySource::File,
        }
    }
}

/// `O_DIRECT` alignment of `file` from `statx(2)`: `(memory, offset)` in bytes, `None`
/// if the kernel does not report `STATX_DIOALIGN` (before Linux 6.1).
pub fn dio_alignment(file: &File) -> Option<(u32, u32)> {
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a NUL-terminated empty string, AT_EMPTY_PATH makes statx use the
    // fd, and `stx` is a live, writable statx.
    let r = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    (r == 0 && stx.stx_mask & libc::STATX_DIOALIGN != 0).then_some((stx.stx_dio_mem_align, stx.stx_dio_offset_align))
}

/// Reads a regular file's geometry and probes its `fallocate(2)` support (see
/// [`probe_fallocate`]; `file` must be open for writing). The block size is
/// `block_size` if given, else the file system's `O_DIRECT` offset alignment (at least
/// 512), else 4096. With `direct` (the file is open with `O_DIRECT`) the block size must
/// be a multiple of that alignment.
///
/// Errors: [`KernelError::BadOption`] for a block size that is not a power of two from
/// 512 to 65536 or does not suit `O_DIRECT`; [`KernelError::WrongDevice`] for an empty
/// file or one whose size is not a whole number of blocks; [`KernelError::Os`] if
/// `fstat` fails.
pub fn file_geometry(
    file: &File,
    path: &Path,
    block_size: Option<u32>,
    direct: bool,
    backend: &'static str,
) -> Result<FileGeometry, KernelError> {
    let meta = file.metadata().map_err(|source| os(backend, "fstat", path, source))?;
    if !meta.is_file() {
        return Err(KernelError::WrongDevice {
            backend,
            path: path.into(),
            why: "is not a regular file".into(),
        });
    }
    let dio_align = dio_alignment(file);
    let dio_offset = dio_align.map_or(0, |(_, off)| off);
    let block_size = match block_size {
        Some(bs) => {
            if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&bs) || !bs.is_power_of_two() {
                return Err(KernelError::BadOption {
                    backend,
                    why: format!("block size {bs} bytes: must be a power of two from 512 to 65536 bytes"),
                });
            }
            if direct && dio_offset > 0 && bs % dio_offset != 0 {
                return Err(KernelError::BadOption {
                    backend,
                    why: format!(
                        "block size {bs} bytes does not suit O_DIRECT on {}: its file system needs offsets \
                         aligned to {dio_offset} bytes (statx STATX_DIOALIGN)",
                        path.display()
                    ),
                });
            }
            bs
        }
        None if dio_offset > 0 => dio_offset.clamp(MIN_BLOCK_SIZE, MAX_BLOCK_SIZE).next_power_of_two(),
        None => FILE_DEFAULT_BLOCK_SIZE,
    };
    let size_bytes = meta.len();
    if size_bytes == 0 {
        return Err(KernelError::WrongDevice {
            backend,
            path: path.into(),
            why: "is empty (0 bytes): give it a size first, e.g. `truncate -s 1G`".into(),
        });
    }
    if size_bytes % block_size as u64 != 0 {
        return Err(KernelError::WrongDevice {
            backend,
            path: path.into(),
            why: format!(
                "its size, {size_bytes} bytes, is not a multiple of the block size, {block_size} bytes \
                 (resize the file or choose another block size)"
            ),
        });
    }
    let fallocate = probe_fallocate(file, size_bytes);
    Ok(FileGeometry {
        size_bytes,
        block_size,
        dio_align,
        fallocate,
    })
}

/// Zeroes `len` bytes at byte `offset` of a block device (`BLKZEROOUT`: the device's
/// Write Zeroes, or written zero pages where it has none). Offset and length must be
/// multiples of the logical block size.
///
/// Errors: the OS error (`EINVAL` for a misaligned or out-of-range request).
pub fn blk_zero_out(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let range = [offset, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length in bytes) through the pointer, which
    // points to a live local array.
    unsafe { blk::blkzeroout(file.as_raw_fd(), &range) }
        .map(drop)
        .map_err(Into::into)
}

/// Discards `len` bytes at byte `offset` of a block device (`BLKDISCARD`). What discarded
/// blocks read back as is up to the device.
///
/// Errors: the OS error (`EOPNOTSUPP` if the device cannot discard).
pub fn blk_discard(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let range = [offset, len];
    // SAFETY: BLKDISCARD reads two u64 (start, length in bytes) through the pointer, which
    // points to a live local array.
    unsafe { blk::blkdiscard(file.as_raw_fd(), &range) }
        .map(drop)
        .map_err(Into::into)
}

/// A block device's block size is its own: `asked` may only repeat it.
///
/// Errors: [`KernelError::BadOption`] naming both sizes.
pub fn check_block_size(
    asked: Option<u32>,
    g: &BlockDeviceGeometry,
    path: &Path,
    backend: &'static str,
) -> Result<(), KernelError> {
    match asked {
        Some(bs) if bs != g.logical_block_size => Err(KernelError::BadOption {
            backend,
            why: format!(
                "block size {bs} bytes: {} is a block device with a logical block size of {} bytes (BLKSSZGET); \
                 a block size can only be chosen for regular files",
                path.display(),
                g.logical_block_size
            ),
        }),
        _ => Ok(()),
    }
}

/// A [`KernelError::Os`].
pub(crate) fn os(backend: &'static str, op: &'static str, path: &Path, source: std::io::Error) -> KernelError {
    KernelError::Os {
        backend,
        op,
        path: path.into(),
        source,
    }
}

/// Refuses anything but a block device or regular file for the read/write backend
/// `backend` (uring, psync), saying what to use instead.
///
/// Errors: [`KernelError::WrongDevice`] naming the backend, the path and the alternative.
pub fn refuse_non_block(kind: FileKind, path: &Path, backend: &'static str) -> Result<(), KernelError> {
    let why = match kind {
        FileKind::BlockDevice { .. } | FileKind::Regular => return Ok(()),
        FileKind::CharDevice {
            class: CharDeviceClass::NvmeGeneric,
            ..
        } => "is an NVMe generic char device, which has no read/write: use the uring-cmd or ioctl backend, or the \
             namespace's block device /dev/nvmeXnY"
            .to_string(),
        FileKind::CharDevice {
            class: CharDeviceClass::NvmeController,
            ..
        } => "is an NVMe controller char device: name one of its namespaces' block devices (/dev/nvmeXnY), or use the \
             ioctl backend for admin commands"
            .to_string(),
        FileKind::CharDevice { .. } => {
            format!("is a character device: the {backend} backend needs a block device or a regular file")
        }
        FileKind::Other(what) => format!("is {what}: the {backend} backend needs a block device or a regular file"),
    };
    Err(KernelError::WrongDevice {
        backend,
        path: path.into(),
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn dev_null_is_an_ordinary_char_device() {
        let meta = std::fs::metadata("/dev/null").unwrap();
        assert!(matches!(
            kind_of(&meta, Path::new("/dev/null")),
            FileKind::CharDevice {
                major: 1,
                minor: 3,
                class: CharDeviceClass::Other
            }
        ));
    }

    #[test]
    fn block_limits_round_to_whole_blocks() {
        let mut g = BlockDeviceGeometry {
            major: 7,
            minor: 0,
            size_bytes: 1 << 30,
            logical_block_size: 4096,
            physical_block_size: 4096,
            max_sectors_bytes: Some(1_310_720 + 512),
            max_hw_sectors_bytes: None,
            discard_max_bytes: 0,
            write_zeroes_max_bytes: 0,
            volatile_write_cache: true,
            max_segments: Some(127),
            chunk_bytes: 0,
            io_poll: false,
            queue_dir: None,
        };
        assert_eq!(g.polled_max_transfer_bytes(4096), 127 * 4096);
        g.logical_block_size = 512;
        assert_eq!(g.polled_max_transfer_bytes(512), 126 * 4096);
        g.max_sectors_bytes = Some(64 * 1024);
        assert_eq!(g.polled_max_transfer_bytes(512), 64 * 1024);
        g.max_segments = None;
        g.max_sectors_bytes = Some(4 << 20);
        assert_eq!(g.polled_max_transfer_bytes(4096), 1 << 20);
        g.logical_block_size = 4096;
        g.max_segments = Some(127);
        g.max_sectors_bytes = Some(1_310_720 + 512);
        assert_eq!(g.max_transfer_bytes(), 1_310_720);
        g.max_sectors_bytes = Some(1024);
        assert_eq!(g.max_transfer_bytes(), 4096);
        g.max_sectors_bytes = None;
        assert_eq!(g.max_transfer_bytes(), BLOCK_DEFAULT_MAX_TRANSFER_BYTES);
        let ns = g.namespace_info();
        assert_eq!((ns.blocks, ns.block_size, ns.buffer_alignment), (262_144, 4096, 4096));
        assert!(ns.write_zeroes && !ns.deallocate && !ns.deallocate_zeroes);
    }

    #[test]
    fn a_file_must_hold_whole_blocks() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[1u8; 5000]).unwrap();
        let e = file_geometry(f.as_file(), f.path(), Some(4096), false, "test")
            .unwrap_err()
            .to_string();
        assert!(e.contains("5000 bytes") && e.contains("4096 bytes"), "{e}");
        let e = file_geometry(f.as_file(), f.path(), Some(1000), false, "test")
            .unwrap_err()
            .to_string();
        assert!(e.contains("power of two"), "{e}");
        f.as_file().set_len(8192).unwrap();
        let g = file_geometry(f.as_file(), f.path(), Some(512), false, "test").unwrap();
        assert_eq!(g.namespace_info().blocks, 16);
        let empty = tempfile::NamedTempFile::new().unwrap();
        let e = file_geometry(empty.as_file(), empty.path(), None, false, "test")
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn the_fallocate_probe_leaves_size_and_data_alone() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        let support = probe_fallocate(f.as_file(), 8192);
        assert_eq!(f.as_file().metadata().unwrap().len(), 8192);
        assert!(std::fs::read(f.path()).unwrap().iter().all(|&b| b == 7));
        // Whatever the file system, the modes chosen follow from the support found.
        assert_eq!(support.deallocate_mode().is_some(), support.punch_hole);
        assert_eq!(
            support.zero_mode(false).is_some(),
            support.zero_range || support.punch_hole
        );
    }
}
