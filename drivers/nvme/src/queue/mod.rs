//! Queue logic on plain memory: submission and completion rings, command identifiers,
//! and the queue pair both the admin queue and the I/O queues are made of.
//!
//! NVMe Base Specification 2.0, §3.3 ("Queue Mechanism"). These types touch only host
//! memory; where a doorbell value is written is the caller's, which is what makes
//! batching possible: post N commands with [`QueuePair::post`], then [`QueuePair::ring`]
//! once.

mod cid;
mod cq;
mod pair;
mod sq;

pub use cid::CidTable;
pub use cq::CompletionQueue;
pub use pair::QueuePair;
pub use sq::SubmissionQueue;

/// Size in bytes of a submission queue entry (CC.IOSQES = 6).
pub const SQ_ENTRY_SIZE: usize = 64;
/// Size in bytes of a completion queue entry (CC.IOCQES = 4).
pub const CQ_ENTRY_SIZE: usize = 16;
/// The smallest queue the specification allows, in entries (§3.3.1: QSIZE ≥ 1, 0's based).
pub const MIN_QUEUE_ENTRIES: u32 = 2;
/// The largest I/O queue the specification allows, in entries (QSIZE is 16-bit, 0's based).
pub const MAX_QUEUE_ENTRIES: u32 = 65536;

/// A queue could not be set up or used as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The number of entries is outside what the specification or the controller allows.
    #[error("queue size {entries} entries is outside {min}..={max}")]
    BadSize {
        /// Requested entries.
        entries: u32,
        /// Smallest allowed.
        min: u32,
        /// Largest allowed (CAP.MQES + 1 for I/O queues).
        max: u32,
    },
    /// The memory given for the ring is too small.
    #[error("queue memory of {have} bytes is smaller than the {need} bytes the ring needs")]
    MemoryTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// The memory given for the ring is not aligned as the controller requires.
    #[error("queue memory at IOVA {iova:#x} is not aligned to {align} bytes")]
    Misaligned {
        /// IOVA of the memory.
        iova: u64,
        /// Required alignment in bytes.
        align: usize,
    },
}

/// Checks a requested ring size against the spec's and the controller's limits.
pub(crate) fn check_entries(entries: u32, max: u32) -> Result<(), QueueError> {
    let max = max.min(MAX_QUEUE_ENTRIES);
    if (MIN_QUEUE_ENTRIES..=max).contains(&entries) {
        Ok(())
    } else {
        Err(QueueError::BadSize {
            entries,
            min: MIN_QUEUE_ENTRIES,
            max,
        })
    }
}
