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
//!   was broken ([`BlockError`]); the buffer comes back with the error;
//! - on a namespace whose blocks carry metadata ([`NamespaceInfo::metadata`]),
//!   [`BlockQueue::submit_with_metadata`] moves it: the one buffer holds NLB × (LBADS + MS)
//!   bytes, interleaved per block for an extended-LBA format and data first, then the
//!   metadata of every block, for a separate one ([`MetadataFormat::ranges`]). Plain
//!   `submit` works there only when the metadata is 8 bytes of protection information,
//!   which the controller inserts and strips (PRACT, [`Protection::by_controller`]).
//!
//! Nothing here allocates per I/O.

use crate::cmd::{Command, DsmAttributes, DsmRange};
use crate::hw::DmaBuf;
pub use crate::pi::{MetadataFormat, Protection};
use crate::status::Status;
use crate::zns::ZoneAction;
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
    /// Zone Append (NVMe Zoned Namespace Command Set 1.1 §3.4.1): write the buffer (a
    /// whole number of blocks) at the write pointer of the zone starting at `zslba`; the
    /// device chooses where, so several may be outstanding on one zone. Only where
    /// [`NamespaceInfo::zone_commands`] says zone commands reach the device, on a
    /// namespace without metadata; the Zone Append Size Limit (ZASL) may be below
    /// [`NamespaceInfo::max_transfer_bytes`].
    ZoneAppend {
        /// The zone's first logical block (ZSLBA).
        zslba: u64,
    },
    /// Reset Zone (Zone Management Send with ZSA 04h, ZNS 1.1 §3.4.3.1.4): the zone
    /// starting at `zslba` becomes Empty, its write pointer back at `zslba` and its data
    /// gone. Only where [`NamespaceInfo::zone_commands`].
    ZoneReset {
        /// The zone's first logical block (ZSLBA).
        zslba: u64,
    },
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
            Op::ZoneAppend { .. } => "zone append",
            Op::ZoneReset { .. } => "zone reset",
        }
    }

    /// Whether the operation moves data through a buffer (read, write, compare, zone
    /// append).
    pub const fn needs_buffer(&self) -> bool {
        matches!(
            self,
            Op::Read { .. } | Op::Write { .. } | Op::Compare { .. } | Op::ZoneAppend { .. }
        )
    }

    /// The first LBA of an operation that carries end-to-end protection fields (read,
    /// write, compare, verify, write zeroes); `None` for the others.
    pub const fn protected_lba(&self) -> Option<u64> {
        match *self {
            Op::Read { lba }
            | Op::Write { lba, .. }
            | Op::Compare { lba }
            | Op::Verify { lba, .. }
            | Op::WriteZeroes { lba, .. } => Some(lba),
            Op::Deallocate { .. } | Op::Flush | Op::ZoneAppend { .. } | Op::ZoneReset { .. } => None,
        }
    }

    /// The protection fields of the operation when the host supplies no PI, on a
    /// namespace of format `fmt` with protection information (Linux's `nvme_setup_rw`
    /// and `nvme_setup_write_zeroes`, NVM Command Set 1.0 §5.2.3): reads and writes let
    /// the controller insert, strip and check it ([`Protection::by_controller`]); Verify
    /// checks it without PRACT (QEMU refuses PRACT on Verify and Compare); Write Zeroes
    /// sets PRACT with no check (QEMU refuses PRCHK there). `None` without PI, or for an
    /// operation without protection fields. Plain Compare is refused on such a namespace
    /// ([`check`]).
    pub fn controller_protection(&self, fmt: &MetadataFormat) -> Option<Protection> {
        if fmt.pi_type == 0 {
            return None;
        }
        match *self {
            Op::Read { lba } | Op::Write { lba, .. } => Some(Protection::by_controller(fmt, lba)),
            Op::Verify { lba, .. } => Some(Protection::checked(fmt, lba)),
            Op::WriteZeroes { lba, .. } => Some(Protection {
                pract: true,
                ref_tag: crate::pi::initial_ref_tag(fmt, lba),
                ..Protection::default()
            }),
            Op::Compare { .. } | Op::Deallocate { .. } | Op::Flush | Op::ZoneAppend { .. } | Op::ZoneReset { .. } => {
                None
            }
        }
    }

    /// The NVM command for the operation on namespace `nsid` formatted with `metadata`,
    /// `blocks` long (as [`check`] or [`check_with_metadata`] counted them), with its
    /// protection fields: `host` when the caller supplies them
    /// ([`BlockQueue::submit_with_metadata`]), else [`Op::controller_protection`].
    pub fn command_for(&self, nsid: u32, metadata: &MetadataFormat, blocks: u32, host: Option<&Protection>) -> Command {
        let mut cmd = self.command(nsid, blocks);
        match host {
            Some(p) if self.protected_lba().is_some() => cmd.set_protection(p),
            Some(_) => {}
            None => {
                if let Some(p) = self.controller_protection(metadata) {
                    cmd.set_protection(&p);
                }
            }
        }
        cmd
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
            Op::ZoneAppend { zslba } => Command::zone_append(nsid, zslba, blocks),
            Op::ZoneReset { zslba } => Command::zone_management_send(nsid, zslba, ZoneAction::Reset, false),
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
    /// limit), as the controller counts it: the data, and for extended LBAs carried with
    /// their metadata the metadata too (NVM Command Set 1.0 §5.2.3).
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
    /// [`Op::Compare`] works through [`BlockQueue::submit`]: the device has Compare, and
    /// its blocks carry no metadata (which Compare would need, and which QEMU will not
    /// generate for it with PRACT).
    pub compare: bool,
    /// [`Op::Verify`] works.
    pub verify: bool,
    /// Completed writes sit in a volatile cache until [`Op::Flush`].
    pub volatile_write_cache: bool,
    /// The backend sends NVMe I/O commands as built (ironvme's driver, the NVMe ioctl and
    /// io_uring passthrough), so [`Op::ZoneAppend`] and [`Op::ZoneReset`] reach the
    /// device — which refuses them (Invalid Command Opcode) on a namespace that is not
    /// zoned. The kernel's block layer (io_uring block I/O, psync) and VDE volumes do not
    /// take them.
    pub zone_commands: bool,
    /// How each block carries metadata and protection information
    /// ([`MetadataFormat::NONE`] for block devices and files, whose kernel handles it).
    pub metadata: MetadataFormat,
    /// Where this came from.
    pub source: GeometrySource,
}

impl NamespaceInfo {
    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.block_size as u64)
    }

    /// The most blocks one command may move ([`Self::max_transfer_bytes`]), with their
    /// metadata in the buffer when `with_metadata` (which counts for extended LBAs).
    pub fn max_transfer_blocks(&self, with_metadata: bool) -> u64 {
        let per_block = if with_metadata {
            self.metadata.data_bytes(self.block_size, 1)
        } else {
            self.block_size as usize
        };
        (self.max_transfer_bytes / per_block) as u64
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
/// On a namespace with metadata, an operation that moves data is refused unless the
/// metadata is 8 bytes of protection information the controller inserts and strips
/// ([`MetadataFormat::plain_io`]): the controller would otherwise write metadata past the
/// buffer or to address 0.
///
/// Errors: [`BlockError::BufferMismatch`], [`BlockError::BadLength`],
/// [`BlockError::Misaligned`], [`BlockError::TransferTooLarge`],
/// [`BlockError::LbaOutOfRange`], [`BlockError::Unsupported`].
pub fn check(ns: &NamespaceInfo, op: &Op, buf: Option<&DmaBuf>) -> Result<u64, BlockError> {
    if op.needs_buffer() && !ns.metadata.plain_io() {
        return Err(BlockError::Unsupported {
            op: op.name(),
            reason: format!(
                "namespace {} carries {}, which I/O without a metadata buffer cannot transfer (use \
                 submit_with_metadata, or reformat the namespace without metadata)",
                ns.nsid, ns.metadata
            ),
        });
    }
    check_buffer_and_range(ns, op, buf, false)
}

/// [`check`] for [`BlockQueue::submit_with_metadata`] with protection fields `pi`: the
/// buffer holds a whole number of blocks of LBADS + MS bytes each (data and metadata,
/// [`MetadataFormat::ranges`]). [`NamespaceInfo::max_transfer_bytes`] limits the data,
/// and for extended LBAs the metadata with it. PRACT with 8 bytes of metadata is refused:
/// the controller then transfers no metadata, so the buffer's layout would be wrong
/// (plain [`check`] and `submit` are that path).
///
/// Errors: as [`check`]; [`BlockError::Unsupported`] on a namespace without metadata,
/// with a reserved PI type, or for PRACT with 8 bytes of metadata.
pub fn check_with_metadata(
    ns: &NamespaceInfo,
    op: &Op,
    buf: Option<&DmaBuf>,
    pi: &Protection,
) -> Result<u64, BlockError> {
    let unsupported = |reason: String| Err(BlockError::Unsupported { op: op.name(), reason });
    if ns.metadata.bytes == 0 {
        return unsupported(format!("namespace {} has no metadata (MS 0)", ns.nsid));
    }
    if !ns.metadata.supported() {
        return unsupported(format!(
            "namespace {} has protection information type {}, which is reserved",
            ns.nsid, ns.metadata.pi_type
        ));
    }
    if pi.pract && ns.metadata.bytes as usize == crate::pi::PI_TUPLE_BYTES {
        return unsupported(format!(
            "with PRACT and 8 bytes of metadata the controller transfers no metadata: submit namespace {}'s data \
             without it",
            ns.nsid
        ));
    }
    check_buffer_and_range(ns, op, buf, true)
}

/// The rules of [`check`]; with `with_metadata`, the buffer carries LBADS + MS bytes per
/// block.
fn check_buffer_and_range(
    ns: &NamespaceInfo,
    op: &Op,
    buf: Option<&DmaBuf>,
    with_metadata: bool,
) -> Result<u64, BlockError> {
    let unit = if with_metadata {
        ns.metadata.bytes_per_block(ns.block_size)
    } else {
        ns.block_size as usize
    };
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
    if matches!(op, Op::ZoneAppend { .. } | Op::ZoneReset { .. }) {
        if !ns.zone_commands {
            return Err(unsupported(
                "zone commands need ironvme's driver or NVMe passthrough (the ioctl or uring-cmd backend)",
            ));
        }
        // A reset moves no data; an append's metadata would need its own rules here.
        if matches!(op, Op::ZoneAppend { .. }) && (with_metadata || !ns.metadata.is_none()) {
            return Err(unsupported("zone append on a namespace with metadata is not supported"));
        }
    }
    let (lba, blocks) = match *op {
        Op::Read { lba } | Op::Write { lba, .. } | Op::Compare { lba } | Op::ZoneAppend { zslba: lba } => {
            let b = buf.expect("checked above");
            if b.is_empty() || b.len() % unit != 0 {
                return Err(BlockError::BadLength {
                    len: b.len(),
                    block_size: unit as u32,
                });
            }
            // What the controller counts against MDTS: the data pointer's bytes.
            let transfer = if with_metadata {
                ns.metadata.data_bytes(ns.block_size, b.len() / unit)
            } else {
                b.len()
            };
            let addr = b.as_ptr() as usize;
            if addr % ns.buffer_alignment != 0 {
                return Err(BlockError::Misaligned {
                    addr,
                    align: ns.buffer_alignment,
                });
            }
            if transfer > ns.max_transfer_bytes {
                return Err(BlockError::TransferTooLarge {
                    bytes: transfer,
                    max: ns.max_transfer_bytes,
                });
            }
            // With its metadata in the buffer a Compare needs no PRACT.
            if matches!(op, Op::Compare { .. }) && !ns.compare && !with_metadata {
                return Err(unsupported(if ns.metadata.is_none() {
                    "the device has no Compare command (needs NVMe passthrough or VFIO)"
                } else {
                    "Compare on a namespace with metadata needs the metadata (submit_with_metadata)"
                }));
            }
            (lba, (b.len() / unit) as u64)
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
        // A reset names its zone by its first block; the device checks that it starts one.
        Op::ZoneReset { zslba } => (zslba, 1),
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

    /// Queues `op` with a buffer that carries metadata as well as data (NLB × (LBADS + MS)
    /// bytes, laid out as [`MetadataFormat::ranges`] says) and the protection fields `pi`
    /// (for Verify and Write Zeroes, which move no data, `buf` is `None` and `pi` still
    /// applies). The host's PI, if any, must already be in the metadata ([`crate::pi::generate`]).
    ///
    /// Errors: as [`BlockQueue::submit`] ([`check_with_metadata`]);
    /// [`BlockError::Unsupported`] from backends that cannot carry metadata (the default:
    /// io_uring block I/O and psync, whose kernel handles integrity itself).
    fn submit_with_metadata(
        &mut self,
        op: Op,
        buf: Option<DmaBuf>,
        pi: Protection,
        tag: u64,
    ) -> Result<(), SubmitError> {
        let _ = (pi, tag);
        Err(SubmitError {
            error: BlockError::Unsupported {
                op: op.name(),
                reason: "this backend does not carry metadata (needs ironvme's driver or NVMe passthrough)".to_string(),
            },
            buf,
        })
    }

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
            zone_commands: false,
            metadata: MetadataFormat::NONE,
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
    fn zone_commands_reach_only_backends_that_send_them() {
        let append = (Op::ZoneAppend { zslba: 2048 }).command(1, 8);
        assert_eq!((append.opcode(), append.slba(), append.nlb()), (0x7D, 2048, 8));
        let reset = (Op::ZoneReset { zslba: 4096 }).command(1, 1);
        assert_eq!(
            (reset.opcode(), reset.cdw10, reset.cdw11, reset.cdw13),
            (0x79, 4096, 0, 0x04)
        );
        let mut n = ns();
        let e = check(&n, &Op::ZoneReset { zslba: 0 }, None).unwrap_err().to_string();
        assert!(
            e.contains("zone reset is not supported here: zone commands need"),
            "{e}"
        );
        let e = check(&n, &Op::ZoneAppend { zslba: 0 }, Some(&sized(512)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("zone append is not supported"), "{e}");
        n.zone_commands = true;
        assert_eq!(
            check(&n, &Op::ZoneAppend { zslba: 992 }, Some(&sized(4096))).unwrap(),
            8
        );
        assert_eq!(check(&n, &Op::ZoneReset { zslba: 999 }, None).unwrap(), 1);
        let e = |op: Op, b: Option<DmaBuf>| check(&n, &op, b.as_ref()).unwrap_err().to_string();
        assert!(e(Op::ZoneReset { zslba: 1000 }, None).contains("outside the namespace"));
        assert!(e(Op::ZoneReset { zslba: 0 }, Some(sized(512))).contains("takes no data buffer"));
        assert!(e(Op::ZoneAppend { zslba: 993 }, Some(sized(4096))).contains("outside the namespace"));
        assert!(e(Op::ZoneAppend { zslba: 0 }, None).contains("needs a data buffer"));
        assert!(e(Op::ZoneAppend { zslba: 0 }, Some(sized(256 * 1024))).contains("exceeds"));
        n.metadata = MetadataFormat {
            bytes: 8,
            ..MetadataFormat::NONE
        };
        assert_eq!(check(&n, &Op::ZoneReset { zslba: 0 }, None).unwrap(), 1);
        n.metadata.pi_type = 1;
        let e = check(&n, &Op::ZoneAppend { zslba: 0 }, Some(&sized(512)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("zone append on a namespace with metadata"), "{e}");
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
    fn metadata_needs_its_own_submission_unless_the_controller_handles_the_pi() {
        let mut n = ns();
        let read = Op::Read { lba: 8 };
        let none = Protection::default();
        // 8 bytes of separate metadata without PI: plain data I/O is refused, naming the
        // format; a buffer of LBADS + MS per block is taken by check_with_metadata.
        n.metadata = MetadataFormat::from_identify(8, 0, 0);
        let e = check(&n, &read, Some(&sized(4096))).unwrap_err().to_string();
        assert!(e.contains("8 bytes of metadata per block in a separate buffer"), "{e}");
        assert!(e.contains("use submit_with_metadata"), "{e}");
        assert_eq!(check_with_metadata(&n, &read, Some(&sized(8 * 520)), &none).unwrap(), 8);
        let e = check_with_metadata(&n, &read, Some(&sized(4096)), &none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("multiple of the 520-byte block size"), "{e}");
        // No data moves: Verify, Write Zeroes and Flush need no metadata buffer.
        check(&n, &Op::Verify { lba: 0, blocks: 8 }, None).unwrap();
        check(&n, &Op::Flush, None).unwrap();
        // Separate metadata: the data alone is what the transfer limit counts.
        let max = n.max_transfer_bytes / 512;
        assert_eq!(
            check_with_metadata(&n, &read, Some(&sized(max * 520)), &none).unwrap(),
            max as u64
        );
        // Extended LBAs: the metadata travels with the data, and counts.
        n.metadata = MetadataFormat::from_identify(8, 0x10, 0);
        let e = check_with_metadata(&n, &read, Some(&sized(max * 520)), &none).unwrap_err();
        assert!(
            matches!(e, BlockError::TransferTooLarge { bytes, .. } if bytes == max * 520),
            "{e}"
        );
        let fits = n.max_transfer_bytes / 520;
        assert_eq!(n.max_transfer_blocks(true), fits as u64);
        assert_eq!(n.max_transfer_blocks(false), (n.max_transfer_bytes / 512) as u64);
        assert_eq!(
            check_with_metadata(&n, &read, Some(&sized(fits * 520)), &none).unwrap(),
            fits as u64
        );
        // 8 bytes of PI: the controller inserts and strips it (plain I/O); PRACT with a
        // metadata buffer would move none of it, so that is refused.
        n.metadata = MetadataFormat::from_identify(8, 0, 1);
        assert_eq!(check(&n, &read, Some(&sized(4096))).unwrap(), 8);
        let pract = Protection::by_controller(&n.metadata, 8);
        let e = check_with_metadata(&n, &read, Some(&sized(8 * 520)), &pract).unwrap_err();
        assert!(e.to_string().contains("transfers no metadata"), "{e}");
        let checked = Protection::checked(&n.metadata, 8);
        check_with_metadata(&n, &read, Some(&sized(8 * 520)), &checked).unwrap();
        // Compare: refused without the metadata (as the namespace says), taken with it.
        n.compare = false;
        let e = check(&n, &Op::Compare { lba: 0 }, Some(&sized(512))).unwrap_err();
        assert!(e.to_string().contains("needs the metadata"), "{e}");
        check_with_metadata(&n, &Op::Compare { lba: 0 }, Some(&sized(520)), &checked).unwrap();
        // Reserved PI types and namespaces without metadata are refused.
        n.metadata = MetadataFormat::from_identify(8, 0, 6);
        let e = check_with_metadata(&n, &read, Some(&sized(520)), &none).unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
        assert!(check(&n, &read, Some(&sized(512))).is_err());
        let e = check_with_metadata(&ns(), &read, Some(&sized(512)), &none)
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no metadata"), "{e}");
    }

    #[test]
    fn commands_carry_the_protection_fields_of_the_namespace_or_the_caller() {
        let mut n = ns();
        let prinfo = |c: &Command| c.cdw12 >> 26 & 0xF;
        let write = Op::Write {
            lba: 0x1_0000_0009,
            fua: false,
        };
        // No PI: nothing set.
        assert_eq!(prinfo(&write.command_for(n.nsid, &n.metadata, 8, None)), 0);
        n.metadata = MetadataFormat::from_identify(8, 0, 1);
        // Reads and writes: PRACT with guard and reference tag checks at the LBA.
        let c = write.command_for(n.nsid, &n.metadata, 8, None);
        assert_eq!((prinfo(&c), c.cdw14), (0b1101, 9));
        // Verify checks without PRACT; Write Zeroes has PRACT and no check.
        let c = (Op::Verify { lba: 9, blocks: 8 }).command_for(n.nsid, &n.metadata, 8, None);
        assert_eq!((prinfo(&c), c.cdw14), (0b0101, 9));
        let wz = Op::WriteZeroes {
            lba: 9,
            blocks: 8,
            deallocate: false,
        };
        let c = wz.command_for(n.nsid, &n.metadata, 8, None);
        assert_eq!((prinfo(&c), c.cdw14), (0b1000, 9));
        // Type 3: no reference tag.
        n.metadata = MetadataFormat::from_identify(8, 0, 3);
        let c = write.command_for(n.nsid, &n.metadata, 8, None);
        assert_eq!((prinfo(&c), c.cdw14), (0b1100, 0));
        // The caller's fields win.
        let p = Protection {
            check_app_tag: true,
            app_tag: 7,
            app_mask: 0xFFFF,
            ..Protection::default()
        };
        let c = write.command_for(n.nsid, &n.metadata, 8, Some(&p));
        assert_eq!((prinfo(&c), c.cdw15), (0b0010, 0xFFFF_0007));
        assert_eq!(
            Op::Flush.command_for(n.nsid, &n.metadata, 0, Some(&p)).cdw15,
            0,
            "flush has no PI fields"
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
