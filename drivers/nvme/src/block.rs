//! The block interface every backend keeps: its vocabulary and its queue contract.
//!
//! ironvme drives storage through several backends — its own VFIO driver, the kernel's
//! NVMe ioctl passthrough, io_uring block I/O, io_uring NVMe passthrough (`URING_CMD`),
//! and plain `pread`/`pwrite`. They all speak this interface, so everything above them
//! (tools, the VDE, the export path) runs unchanged on any of them:
//!
//! - a namespace is described by [`NamespaceInfo`] (block size, size in blocks, largest
//!   transfer, buffer alignment, which optional operations work);
//! - an I/O queue ([`BlockQueue`]) belongs to one thread and one namespace. `submit`
//!   takes an [`Op`], an owned [`DmaBuf`] and a caller tag without notifying the device;
//!   `ring` notifies it once for the whole batch (one doorbell write, one
//!   `io_uring_enter`); `poll` hands back [`Completion`]s — tag, buffer and result;
//! - requests are checked before submission ([`check`]) with errors that say which rule
//!   was broken ([`BlockError`]); the buffer comes back with the error.
//!
//! Nothing here allocates per I/O.

use crate::cmd::{Command, DsmAttributes, DsmRange};
use crate::hw::DmaBuf;
use crate::status::Status;
use std::fmt;

/// One I/O operation on a namespace. Block counts and LBAs are in the namespace's
/// logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read `buf.len()` bytes (a whole number of blocks) starting at `lba` into the buffer.
    Read {
        /// First logical block.
        lba: u64,
    },
    /// Write the buffer (a whole number of blocks) at `lba`. `fua` asks for durability
    /// at completion; devices that ignore FUA (QEMU) need [`Op::Flush`].
    Write {
        /// First logical block.
        lba: u64,
        /// Force Unit Access.
        fua: bool,
    },
    /// Compare the buffer with the blocks at `lba` (NVMe Compare; passthrough and VFIO).
    Compare {
        /// First logical block.
        lba: u64,
    },
    /// Verify `blocks` blocks at `lba` without transferring data (NVMe Verify).
    Verify {
        /// First logical block.
        lba: u64,
        /// Number of blocks (1..=65536).
        blocks: u32,
    },
    /// Zero `blocks` blocks at `lba`; with `deallocate` the device may deallocate them.
    WriteZeroes {
        /// First logical block.
        lba: u64,
        /// Number of blocks (1..=65536: one NVMe command's worth).
        blocks: u32,
        /// Allow deallocation (NVMe DEAC; `FALLOC_FL_PUNCH_HOLE` semantics on files).
        deallocate: bool,
    },
    /// Deallocate (discard, trim) `blocks` blocks at `lba`; they read back as zeros on
    /// devices and files that guarantee it ([`NamespaceInfo::deallocate_zeroes`]).
    Deallocate {
        /// First logical block.
        lba: u64,
        /// Number of blocks.
        blocks: u32,
    },
    /// Make every write completed before this one durable.
    Flush,
}

impl Op {
    /// The operation's name, for errors and reports.
    pub const fn name(&self) -> &'static str {
        match self {
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
            Op::Compare { .. } => "compare",
            Op::Verify { .. } => "verify",
            Op::WriteZeroes { .. } => "write zeroes",
            Op::Deallocate { .. } => "deallocate",
            Op::Flush => "flush",
        }
    }

    /// Whether the operation moves data through a buffer (read, write, compare).
    pub const fn needs_buffer(&self) -> bool {
        matches!(self, Op::Read { .. } | Op::Write { .. } | Op::Compare { .. })
    }

    /// The NVM command for the operation on namespace `nsid`, `blocks` long (as [`check`]
    /// counted them). A Deallocate is Dataset Management with AD set over one range,
    /// [`Op::dsm_range`], which goes in the command's data buffer.
    pub fn command(&self, nsid: u32, blocks: u32) -> Command {
        match *self {
            Op::Read { lba } => Command::read(nsid, lba, blocks),
            Op::Write { lba, fua } => Command::write(nsid, lba, blocks, fua),
            Op::Compare { lba } => Command::compare(nsid, lba, blocks),
            Op::Verify { lba, .. } => Command::verify(nsid, lba, blocks),
            Op::WriteZeroes { lba, deallocate, .. } => Command::write_zeroes(nsid, lba, blocks, deallocate),
            Op::Deallocate { .. } => Command::dataset_management(
                nsid,
                1,
                DsmAttributes {
                    deallocate: true,
                    ..Default::default()
                },
            ),
            Op::Flush => Command::flush(nsid),
        }
    }

    /// The one Dataset Management range of a Deallocate (an empty range for any other
    /// operation).
    pub fn dsm_range(&self) -> DsmRange {
        match *self {
            Op::Deallocate { lba, blocks } => DsmRange {
                context_attributes: 0,
                nlb: blocks,
                slba: lba,
            },
            _ => DsmRange::default(),
        }
    }
}

/// Where a namespace's geometry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeometrySource {
    /// NVMe Identify Namespace (VFIO, ioctl and io_uring passthrough).
    Identify,
    /// The block device's ioctls (BLKGETSIZE64, BLKSSZGET, BLKPBSZGET) and sysfs.
    BlockDevice,
    /// A regular file's size.
    File,
}

/// A namespace (or block device, or file) as the block interface sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// NVMe namespace ID (1 for block devices and files).
    pub nsid: u32,
    /// Logical block size in bytes: every transfer is a whole number of blocks.
    pub block_size: u32,
    /// Size in logical blocks.
    pub blocks: u64,
    /// Largest transfer per command, in bytes (MDTS, `max_hw_sectors_kb`, or a backend
    /// limit).
    pub max_transfer_bytes: usize,
    /// Required alignment of buffer addresses, in bytes (4 for NVMe DMA; the logical
    /// block size for `O_DIRECT`).
    pub buffer_alignment: usize,
    /// [`Op::WriteZeroes`] works.
    pub write_zeroes: bool,
    /// [`Op::Deallocate`] works.
    pub deallocate: bool,
    /// Deallocated blocks read back as zeros.
    pub deallocate_zeroes: bool,
    /// [`Op::Compare`] works.
    pub compare: bool,
    /// [`Op::Verify`] works.
    pub verify: bool,
    /// Completed writes sit in a volatile cache until [`Op::Flush`].
    pub volatile_write_cache: bool,
    /// Where this came from.
    pub source: GeometrySource,
}

impl NamespaceInfo {
    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.block_size as u64)
    }
}

/// Why an operation failed on the device.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoStatus {
    /// The NVMe completion status (VFIO, passthrough).
    Nvme(Status),
    /// An OS error number from the kernel (io_uring, psync): `EIO`, `ENODATA`, ...
    Os(i32),
}

impl IoStatus {
    /// The NVMe status, if the error is one.
    pub fn nvme(self) -> Option<Status> {
        match self {
            IoStatus::Nvme(s) => Some(s),
            IoStatus::Os(_) => None,
        }
    }
}

impl fmt::Display for IoStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IoStatus::Nvme(s) => write!(f, "NVMe status {s}"),
            IoStatus::Os(errno) => write!(f, "{}", std::io::Error::from_raw_os_error(*errno)),
        }
    }
}

impl fmt::Debug for IoStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IoStatus({self})")
    }
}

/// A finished operation.
#[derive(Debug)]
pub struct Completion {
    /// The caller's tag from submission.
    pub tag: u64,
    /// The buffer given at submission, returned (`None` if none was given, or — VFIO only
    /// — if the device could not be stopped and the memory had to be leaked).
    pub buf: Option<DmaBuf>,
    /// Success, or why it failed.
    pub result: Result<(), IoStatus>,
}

/// Why a request was refused before it reached the device, or a queue could not work.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The queue holds as many commands as it can; poll first.
    #[error("queue full: {0} operations outstanding")]
    QueueFull(usize),
    /// The operation names blocks outside the namespace.
    #[error("LBA range {lba}+{blocks} blocks is outside the namespace ({size} blocks)")]
    LbaOutOfRange {
        /// First block.
        lba: u64,
        /// Number of blocks.
        blocks: u64,
        /// Namespace size in blocks.
        size: u64,
    },
    /// The buffer's length is zero or not a whole number of blocks.
    #[error("buffer of {len} bytes is not a non-zero multiple of the {block_size}-byte block size")]
    BadLength {
        /// Buffer length in bytes.
        len: usize,
        /// Block size in bytes.
        block_size: u32,
    },
    /// The transfer is larger than one command may move. ironvme refuses it rather than
    /// splitting it.
    #[error("transfer of {bytes} bytes exceeds the {max}-byte limit of one command")]
    TransferTooLarge {
        /// Requested bytes.
        bytes: usize,
        /// Largest allowed.
        max: usize,
    },
    /// The buffer's address is not aligned as the backend needs.
    #[error("buffer at address {addr:#x} is not {align}-byte aligned")]
    Misaligned {
        /// The buffer's host address.
        addr: usize,
        /// Required alignment in bytes.
        align: usize,
    },
    /// The buffer belongs to another device's DMA domain.
    #[error("buffer is mapped for a different device (DMA domain {buf}, queue expects {queue})")]
    WrongDomain {
        /// The buffer's domain.
        buf: u64,
        /// The queue's domain.
        queue: u64,
    },
    /// The operation needs a buffer and got none, or got one it does not use.
    #[error("{op} {}", if *.needs { "needs a data buffer" } else { "takes no data buffer" })]
    BufferMismatch {
        /// The operation.
        op: &'static str,
        /// Whether it needs one.
        needs: bool,
    },
    /// This backend or device cannot do the operation.
    #[error("{op} is not supported here: {reason}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// Why (which backend, which device property).
        reason: String,
    },
    /// The queue cannot take commands now (a controller reset is in progress); poll it
    /// and try again.
    #[error("queue is recovering from a controller reset: poll it, then submit again")]
    Recovering,
    /// The queue cannot be used any more.
    #[error("queue is dead: {0}")]
    Dead(String),
    /// A system call failed.
    #[error("{op}: {source}")]
    Os {
        /// The operation, e.g. "io_uring_enter".
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A refused submission, with the buffer given back unchanged.
#[derive(Debug)]
pub struct SubmitError {
    /// Why.
    pub error: BlockError,
    /// The caller's buffer.
    pub buf: Option<DmaBuf>,
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for SubmitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Checks `op` with `buf` against the namespace's geometry and capabilities and returns
/// the number of blocks it covers (0 for Flush). Every backend calls this before
/// submitting, so the rules and their error messages are the same everywhere.
///
/// Errors: [`BlockError::BufferMismatch`], [`BlockError::BadLength`],
/// [`BlockError::Misaligned`], [`BlockError::TransferTooLarge`],
/// [`BlockError::LbaOutOfRange`], [`BlockError::Unsupported`].
pub fn check(ns: &NamespaceInfo, op: &Op, buf: Option<&DmaBuf>) -> Result<u64, BlockError> {
    let unsupported = |why: &str| BlockError::Unsupported {
        op: op.name(),
        reason: why.to_string(),
    };
    if op.needs_buffer() != buf.is_some() {
        return Err(BlockError::BufferMismatch {
            op: op.name(),
            needs: op.needs_buffer(),
        });
    }
    let (lba, blocks) = match *op {
        Op::Read { lba } | Op::Write { lba, .. } | Op::Compare { lba } => {
            let b = buf.expect("checked above");
            let bs = ns.block_size as usize;
            if b.is_empty() || b.len() % bs != 0 {
                return Err(BlockError::BadLength {
                    len: b.len(),
                    block_size: ns.block_size,
                });
            }
            let addr = b.as_ptr() as usize;
            if addr % ns.buffer_alignment != 0 {
                return Err(BlockError::Misaligned {
                    addr,
                    align: ns.buffer_alignment,
                });
            }
            if b.len() > ns.max_transfer_bytes {
                return Err(BlockError::TransferTooLarge {
                    bytes: b.len(),
                    max: ns.max_transfer_bytes,
                });
            }
            if matches!(op, Op::Compare { .. }) && !ns.compare {
                return Err(unsupported(
                    "the device has no Compare command (needs NVMe passthrough or VFIO)",
                ));
            }
            (lba, (b.len() / bs) as u64)
        }
        Op::Verify { lba, blocks } => {
            if !ns.verify {
                return Err(unsupported(
                    "the device has no Verify command (needs NVMe passthrough or VFIO)",
                ));
            }
            if blocks == 0 || blocks > crate::cmd::MAX_BLOCKS_PER_COMMAND {
                return Err(BlockError::TransferTooLarge {
                    bytes: blocks as usize * ns.block_size as usize,
                    max: crate::cmd::MAX_BLOCKS_PER_COMMAND as usize * ns.block_size as usize,
                });
            }
            (lba, blocks as u64)
        }
        Op::WriteZeroes { lba, blocks, .. } => {
            if !ns.write_zeroes {
                return Err(unsupported("the device does not support write zeroes"));
            }
            // One NVMe command's worth (NLB is 16 bits), on every backend alike.
            if blocks > crate::cmd::MAX_BLOCKS_PER_COMMAND {
                return Err(BlockError::TransferTooLarge {
                    bytes: blocks as usize * ns.block_size as usize,
                    max: crate::cmd::MAX_BLOCKS_PER_COMMAND as usize * ns.block_size as usize,
                });
            }
            (lba, blocks as u64)
        }
        Op::Deallocate { lba, blocks } => {
            if !ns.deallocate {
                return Err(unsupported("the device does not support deallocate (discard)"));
            }
            (lba, blocks as u64)
        }
        Op::Flush => return Ok(0),
    };
    if blocks == 0 || lba.checked_add(blocks).is_none_or(|end| end > ns.blocks) {
        return Err(BlockError::LbaOutOfRange {
            lba,
            blocks,
            size: ns.blocks,
        });
    }
    Ok(blocks)
}

/// An I/O queue on one namespace, owned by one thread. Every backend implements it.
///
/// The contract: `submit` never blocks on the device and never notifies it; `ring`
/// notifies it of everything submitted since the last `ring`, at the cost of one doorbell
/// write or one system call; `poll` consumes finished operations (at most `max`) and
/// calls `on_complete` once per operation — every submitted operation completes exactly
/// once, with its buffer. No method allocates per operation.
pub trait BlockQueue {
    /// The namespace this queue works on.
    fn namespace(&self) -> &NamespaceInfo;

    /// The most operations that can be outstanding at once.
    fn depth(&self) -> usize;

    /// Operations submitted and not yet completed.
    fn outstanding(&self) -> usize;

    /// Queues `op` with `buf` under `tag`. The buffer moves into the queue and comes back
    /// with the completion (or with the error).
    ///
    /// Errors: a [`SubmitError`] whose [`BlockError`] says which rule was broken.
    fn submit(&mut self, op: Op, buf: Option<DmaBuf>, tag: u64) -> Result<(), SubmitError>;

    /// Notifies the device of everything submitted since the last call.
    ///
    /// Errors: [`BlockError::Os`] if the system call fails; the operations stay queued.
    fn ring(&mut self) -> Result<(), BlockError>;

    /// Rings if needed, then consumes up to `max` finished operations, calling
    /// `on_complete` for each; returns how many. Does not wait.
    fn poll<F: FnMut(Completion)>(&mut self, max: usize, on_complete: F) -> usize;

    /// Has the host deliver this queue's completion interrupt to CPU `cpu` (where the
    /// thread using it is pinned), when the backend takes interrupts itself (ironvme's
    /// driver in interrupt mode). Returns whether it did; the default does nothing.
    ///
    /// Errors: the OS error of setting the interrupt's affinity.
    fn steer_interrupts(&mut self, cpu: usize) -> std::io::Result<bool> {
        let _ = cpu;
        Ok(false)
    }

    /// Like [`BlockQueue::poll`], but waits until at least one operation has finished if
    /// any is outstanding. Backends that can sleep until an interrupt do (io_uring in the
    /// kernel; ironvme's driver in interrupt mode, on its MSI-X eventfd); polled backends
    /// spin.
    fn wait<F: FnMut(Completion)>(&mut self, max: usize, mut on_complete: F) -> usize {
        loop {
            let n = self.poll(max, &mut on_complete);
            if n > 0 || self.outstanding() == 0 {
                return n;
            }
            std::hint::spin_loop();
        }
    }
}

/// Runs one operation to completion on an idle queue: a thin loop over submit + wait.
/// Returns the buffer.
///
/// Errors: [`RunError`] with the buffer: refused before submission, failed by the device,
/// or the queue was busy.
pub fn run_one<Q: BlockQueue>(q: &mut Q, op: Op, buf: Option<DmaBuf>) -> Result<Option<DmaBuf>, RunError> {
    if q.outstanding() != 0 {
        return Err(RunError {
            error: IoError::Busy(q.outstanding()),
            buf,
        });
    }
    q.submit(op, buf, 0).map_err(|e| RunError {
        error: IoError::Refused(e.error),
        buf: e.buf,
    })?;
    let mut done = None;
    while done.is_none() {
        q.wait(1, |c| done = Some(c));
    }
    let c = done.expect("loop ends when set");
    match c.result {
        Ok(()) => Ok(c.buf),
        Err(status) => Err(RunError {
            error: IoError::Failed { op: op.name(), status },
            buf: c.buf,
        }),
    }
}

/// A failed [`run_one`], with the buffer given back.
#[derive(Debug)]
pub struct RunError {
    /// Why.
    pub error: IoError,
    /// The caller's buffer.
    pub buf: Option<DmaBuf>,
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for RunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// Why a synchronous operation ([`run_one`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// Refused before it reached the device.
    #[error(transparent)]
    Refused(BlockError),
    /// The device failed it.
    #[error("{op} failed: {status}")]
    Failed {
        /// The operation.
        op: &'static str,
        /// Why.
        status: IoStatus,
    },
    /// The queue has outstanding operations; synchronous helpers need an idle queue.
    #[error("queue has {0} outstanding operations; synchronous helpers need an idle queue")]
    Busy(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_become_nvm_commands() {
        let c = (Op::Write { lba: 10, fua: true }).command(3, 8);
        assert_eq!(
            (c.opcode(), c.nsid, c.slba(), c.nlb(), c.cdw12 >> 30 & 1),
            (0x01, 3, 10, 8, 1)
        );
        assert_eq!((Op::Read { lba: 1 }).command(3, 1).opcode(), 0x02);
        assert_eq!((Op::Compare { lba: 1 }).command(3, 1).opcode(), 0x05);
        assert_eq!((Op::Verify { lba: 1, blocks: 4 }).command(3, 4).nlb(), 4);
        let wz = (Op::WriteZeroes {
            lba: 5,
            blocks: 2,
            deallocate: true,
        })
        .command(3, 2);
        assert_eq!((wz.opcode(), wz.nlb(), wz.cdw12 >> 25 & 1), (0x08, 2, 1));
        let dsm = (Op::Deallocate {
            lba: 7,
            blocks: 100_000,
        })
        .command(3, 100_000);
        assert_eq!((dsm.opcode(), dsm.cdw10, dsm.cdw11), (0x09, 0, 4));
        assert_eq!(
            (Op::Deallocate {
                lba: 7,
                blocks: 100_000
            })
            .dsm_range(),
            DsmRange {
                context_attributes: 0,
                nlb: 100_000,
                slba: 7
            }
        );
        assert_eq!(
            Op::Deallocate { lba: 7, blocks: 2 }.dsm_range().to_bytes(),
            [0, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!((Op::Flush).command(3, 0).opcode(), 0x00);
    }

    use crate::hw::HeapRegion;
    use std::sync::Arc;

    fn ns() -> NamespaceInfo {
        NamespaceInfo {
            nsid: 1,
            block_size: 512,
            blocks: 1000,
            max_transfer_bytes: 128 * 1024,
            buffer_alignment: 512,
            write_zeroes: true,
            deallocate: false,
            deallocate_zeroes: false,
            compare: false,
            verify: true,
            volatile_write_cache: true,
            source: GeometrySource::File,
        }
    }

    fn buf(len: usize) -> DmaBuf {
        DmaBuf::from_region(Arc::new(HeapRegion::new(len.max(4096), 4096, 0).unwrap()))
    }

    fn sized(len: usize) -> DmaBuf {
        let mut b = buf(len + 4096);
        b.set_window(0, len).unwrap();
        b
    }

    #[test]
    fn reads_and_writes_count_blocks() {
        assert_eq!(check(&ns(), &Op::Read { lba: 0 }, Some(&sized(4096))).unwrap(), 8);
        assert_eq!(
            check(&ns(), &Op::Write { lba: 992, fua: false }, Some(&sized(4096))).unwrap(),
            8
        );
        assert_eq!(check(&ns(), &Op::Flush, None).unwrap(), 0);
    }

    #[test]
    fn each_rule_has_its_error() {
        let n = ns();
        let e = |op: Op, b: Option<DmaBuf>| check(&n, &op, b.as_ref()).unwrap_err().to_string();
        assert!(e(Op::Read { lba: 993 }, Some(sized(4096))).contains("outside the namespace"));
        assert!(e(Op::Read { lba: u64::MAX }, Some(sized(512))).contains("outside the namespace"));
        assert!(e(Op::Read { lba: 0 }, Some(sized(100))).contains("multiple of the 512-byte block size"));
        assert!(e(Op::Read { lba: 0 }, Some(sized(256 * 1024))).contains("exceeds the 131072-byte limit"));
        let mut off = buf(8192);
        off.set_window(4, 512).unwrap();
        assert!(e(Op::Read { lba: 0 }, Some(off)).contains("not 512-byte aligned"));
        assert!(e(Op::Read { lba: 0 }, None).contains("needs a data buffer"));
        assert!(e(Op::Flush, Some(sized(512))).contains("takes no data buffer"));
        assert!(e(Op::Deallocate { lba: 0, blocks: 1 }, None).contains("deallocate"));
        assert!(e(Op::Compare { lba: 0 }, Some(sized(512))).contains("Compare"));
        assert!(
            e(
                Op::WriteZeroes {
                    lba: 0,
                    blocks: 0,
                    deallocate: false
                },
                None
            )
            .contains("outside")
        );
        assert!(e(Op::Verify { lba: 0, blocks: 70_000 }, None).contains("exceeds"));
        assert!(
            e(
                Op::WriteZeroes {
                    lba: 0,
                    blocks: 65_537,
                    deallocate: false
                },
                None
            )
            .contains("exceeds")
        );
    }

    #[test]
    fn os_errors_print_their_errno() {
        assert_eq!(IoStatus::Os(61).to_string(), "No data available (os error 61)");
        assert_eq!(
            IoStatus::Nvme(Status::UNRECOVERED_READ_ERROR).nvme(),
            Some(Status::UNRECOVERED_READ_ERROR)
        );
    }
}
