//! Errors of the controller driver.

use crate::hw::DmaError;
use crate::parse::ParseError;
use crate::prp::PrpError;
use crate::queue::QueueError;
use crate::status::Status;
use std::time::Duration;

/// Why a controller operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The controller completed the command with an error status.
    #[error("{command} failed: {status}")]
    Command {
        /// The command's name from the specification, e.g. "Identify".
        command: &'static str,
        /// The decoded completion status.
        status: Status,
    },
    /// CSTS.RDY did not reach the expected value within CAP.TO.
    #[error("controller did not set CSTS.RDY={want} within {timeout:?} (CAP.TO)")]
    ReadyTimeout {
        /// The value waited for.
        want: bool,
        /// How long we waited.
        timeout: Duration,
    },
    /// Shutdown did not complete (CSTS.SHST) in time.
    #[error("controller did not report shutdown complete (CSTS.SHST) within {0:?}")]
    ShutdownTimeout(Duration),
    /// The controller reports a fatal error (CSTS.CFS = 1).
    #[error("controller fatal status (CSTS.CFS=1) {during}")]
    Fatal {
        /// What the driver was doing.
        during: &'static str,
    },
    /// Register reads return all ones: the device is gone (surprise removal, dead link).
    #[error("controller is gone: register reads return all ones {during}")]
    Removed {
        /// What the driver was doing.
        during: &'static str,
    },
    /// A command did not complete within its deadline.
    #[error("{command} did not complete within {timeout:?}")]
    Timeout {
        /// The command's name.
        command: &'static str,
        /// The deadline it missed.
        timeout: Duration,
    },
    /// Recovery failed earlier; the controller cannot be used.
    #[error("controller failed: {0}")]
    ControllerFailed(String),
    /// The controller does not support something ironvme needs.
    #[error("controller unsupported: {0}")]
    Unsupported(String),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The namespace ID is not an active namespace of this controller.
    #[error("namespace {0} is not an active namespace of this controller")]
    NoSuchNamespace(u32),
    /// The namespace's metadata needs a buffer, and I/O without one was asked for (a
    /// plain queue, or the pair's typed read and write); the namespace is still listed and
    /// [`super::NamespaceQueue::with_metadata`] carries it.
    #[error(transparent)]
    MetadataUnsupported(Box<crate::identify::MetadataUnsupported>),
    /// An I/O names logical blocks outside the namespace.
    #[error("LBA range {slba}+{blocks} blocks is outside namespace {nsid} ({nsze} blocks)")]
    LbaOutOfRange {
        /// Namespace ID.
        nsid: u32,
        /// Starting LBA.
        slba: u64,
        /// Number of blocks.
        blocks: u64,
        /// Namespace size in blocks (NSZE).
        nsze: u64,
    },
    /// A data buffer's length is not a whole number of blocks, or is zero.
    #[error("buffer of {len} bytes is not a non-zero multiple of the {block_size}-byte block size")]
    BadLength {
        /// Buffer length in bytes.
        len: usize,
        /// Namespace block size in bytes.
        block_size: u32,
    },
    /// A transfer is larger than the controller accepts (MDTS) or than ironvme's
    /// per-command limit. ironvme refuses such transfers rather than splitting them.
    #[error("transfer of {bytes} bytes exceeds the {max}-byte limit (MDTS / max_transfer_bytes)")]
    TransferTooLarge {
        /// Requested bytes.
        bytes: usize,
        /// Largest allowed.
        max: usize,
    },
    /// A buffer's address is not aligned as the data pointer requires.
    #[error("buffer at IOVA {iova:#x} is not {align}-byte aligned")]
    Misaligned {
        /// IOVA of the buffer.
        iova: u64,
        /// Required alignment in bytes.
        align: usize,
    },
    /// A buffer belongs to a different DMA domain (another controller's memory).
    #[error("buffer is mapped for a different device (DMA domain {buf}, queue expects {queue})")]
    WrongDomain {
        /// The buffer's domain.
        buf: u64,
        /// The queue's domain.
        queue: u64,
    },
    /// A command that transfers data was given no buffer, or vice versa.
    #[error("{0}")]
    BufferMismatch(&'static str),
    /// The queue has no free slot; poll for completions first.
    #[error("queue full: {0} commands outstanding")]
    QueueFull(usize),
    /// Every I/O queue the controller granted is in use.
    #[error("all {0} I/O queue pairs the controller granted are in use")]
    NoQueuesLeft(u16),
    /// A synchronous helper was called while asynchronous commands are outstanding.
    #[error("queue has {0} outstanding commands; synchronous helpers need an idle queue")]
    QueueBusy(usize),
    /// The controller was reset; the pair must be polled (to collect its outstanding
    /// commands, which complete with an error) before new commands are accepted.
    #[error("queue pair {qid} is recovering from a controller reset: poll it, then submit again")]
    Recovering {
        /// Queue ID.
        qid: u16,
    },
    /// The queue pair cannot be used any more (the controller failed and was not recovered).
    #[error("queue pair {qid} is dead: {reason}")]
    QueueDead {
        /// Queue ID.
        qid: u16,
        /// What killed it.
        reason: &'static str,
    },
    /// DMA memory could not be allocated.
    #[error(transparent)]
    Dma(#[from] DmaError),
    /// A queue could not be set up.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// PRPs could not be built.
    #[error(transparent)]
    Prp(#[from] PrpError),
    /// Data returned by the controller could not be parsed.
    #[error(transparent)]
    Parse(#[from] ParseError),
}

impl Error {
    /// The NVMe status, if the controller completed the command with an error.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Command { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl From<crate::identify::MetadataUnsupported> for Error {
    fn from(e: crate::identify::MetadataUnsupported) -> Error {
        Error::MetadataUnsupported(Box::new(e))
    }
}
