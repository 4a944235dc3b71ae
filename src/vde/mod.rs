//! The Virtual Disk Engine: a crash-safe, checksummed store of objects and thin
//! volumes, with snapshots and clones, on any backend.
//!
//! A [`Vde`] lives on one namespace of a [`crate::Device`] and reaches it through the
//! block interface only, so it runs unchanged on VFIO, io_uring, io_uring passthrough,
//! ioctl and psync. It stores:
//!
//! - **objects**: byte strings of up to [`MAX_OBJECT`] bytes (30 MiB) under keys of
//!   1..=[`MAX_KEY`] (255) bytes ([`Vde::put`], [`Vde::get`], [`Vde::delete`],
//!   [`Vde::list`], [`Vde::stat`]);
//! - **thin volumes** addressed in 4 KiB blocks ([`Vde::vol_create`], [`Vde::vol_write`],
//!   [`Vde::vol_read`], [`Vde::vol_unmap`], [`Vde::vol_flush`]), which also open as a
//!   [`crate::Device`] with the spec `vde:DEV:VOL` ([`volume`]);
//! - **snapshots and clones** of volumes ([`Vde::snap_create`], [`Vde::clone_snapshot`],
//!   [`Vde::rollback`]), tracked by birth txg and dead lists ([`dataset`]).
//!
//! `docs/vde-format.md` describes format 2 byte by byte and why it is shaped so.
//!
//! # Guarantees
//!
//! - **Durability.** When [`Vde::put`] or [`Vde::delete`] returns `Ok`, the change is on
//!   stable media. A volume behaves as a disk with a volatile write cache: a write is
//!   durable once [`Vde::vol_flush`] returns (or at once with FUA).
//! - **Atomicity.** An operation that did not return is either wholly visible after a
//!   crash or not at all.
//! - **Integrity.** Every metadata block is checked against its parent's pointer
//!   (address, birth txg, checksum seeded with the store's identity); every data block
//!   against its checksum. A read returns the stored bytes or an error
//!   ([`VdeError::Mismatch`], [`VdeError::DataCorrupt`]), never other bytes.
//!
//! # One owner
//!
//! A store belongs to one [`Vde`] at a time. The library does not know where its
//! [`crate::Device`] came from, so whoever opens it by path claims it first with
//! [`crate::claim::Claim`], as the `ironvme vde` commands and `vde:` specs do.
//!
//! # Memory
//!
//! Bounded whatever the number of objects, volumes, snapshots and extents: two bits per
//! device block for the space map, an LRU cache of metadata blocks
//! ([`VdeOptions::cache_blocks`]), dirty tree nodes up to half the cache (a commit
//! writes them), each lane's staging buffers, and at open the intent log's records
//! (at most its region: 16 MiB).

pub mod block;
pub mod check;
pub mod dataset;
pub mod format;
pub mod intent;
pub mod lane;
pub mod pool;
pub mod replicate;
pub mod space;
pub mod store;
pub mod stream;
pub mod tree;
pub mod volume;

pub use self::check::{FsckProgress, FsckReport};
pub use self::dataset::{DatasetInfo, DatasetKind};
pub use self::format::{MAX_KEY, MAX_OBJECT};
pub use self::replicate::{RecvStats, ResumeToken, SendStats};
pub use self::store::{ObjectStat, Vde, VdeInfo};

/// Why a VDE operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VdeError {
    /// The device holds no VDE (both superblock copies are blank).
    #[error("no VDE here: the superblocks are blank (run `ironvme vde format DEV` first)")]
    NotFormatted,
    /// A metadata block failed its check.
    #[error("corrupt {kind} block {block}: {reason}")]
    Corrupt {
        /// The block number (VDE blocks of 4 KiB from the start of the namespace).
        block: u64,
        /// What the block should be.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A format-2 metadata block is not what its parent (or, for blocks without a parent,
    /// its own checksum) says it must be: a lost, stale, torn or misdirected write, or a
    /// block of another store.
    #[error("corrupt {kind} block {block}: expected {expected}, found {found}")]
    Mismatch {
        /// The block number (4 KiB blocks from the start of the namespace).
        block: u64,
        /// What the block should be.
        kind: &'static str,
        /// What its reader expected (generation and checksum from the parent pointer).
        expected: String,
        /// What the block holds.
        found: String,
    },
    /// An object's data extent does not match its checksum.
    #[error("object {key:?}: data extent {extent} (blocks {start}..{end}) does not match its checksum")]
    DataCorrupt {
        /// The object's key (lossy UTF-8).
        key: String,
        /// Which extent of the object (0-based).
        extent: usize,
        /// Its first block.
        start: u64,
        /// One past its last block.
        end: u64,
    },
    /// No object has this key.
    #[error("no object with key {0:?}")]
    NotFound(String),
    /// A volume, snapshot or clone of that name exists already.
    #[error("{0} exists already")]
    Exists(String),
    /// The key is empty or longer than [`MAX_KEY`] bytes.
    #[error("keys are 1 to {MAX_KEY} bytes; this one has {0}")]
    BadKey(usize),
    /// The object is larger than [`MAX_OBJECT`].
    #[error("object of {0} bytes is larger than the VDE's limit of {MAX_OBJECT} bytes")]
    ObjectTooLarge(u64),
    /// Space ran out.
    #[error("no space left: out of {what}")]
    NoSpace {
        /// What ran out: data blocks, inodes, key index nodes.
        what: &'static str,
    },
    /// The device is too small for a VDE.
    #[error("the device has {blocks} blocks of 4 KiB; a VDE needs at least {min}")]
    TooSmall {
        /// Blocks available.
        blocks: u64,
        /// Blocks needed.
        min: u64,
    },
    /// The device or store cannot be used this way.
    #[error("{0}")]
    Unsupported(String),
    /// An earlier metadata write failed; the store must be reopened. Until then it serves
    /// neither writes nor reads (its in-memory state may hold a transaction that never
    /// became durable).
    #[error("the store stopped after an earlier failure ({0}); reopen it to recover from the journal")]
    Poisoned(String),
    /// An I/O failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The block interface's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A read-only open ([`VdeOptions::read_only`]) found a store that must be written
    /// before it can be served: a writer died before its last checkpoint, or a
    /// superblock copy is damaged. Nothing was written; open it writable to recover.
    #[error(
        "the store needs recovery, which writes ({0}); it was opened read-only, so nothing was written: \
         open it for writing to replay and checkpoint"
    )]
    NeedsRecovery(String),
    /// A change was asked of a store opened read-only ([`VdeOptions::read_only`]).
    #[error("the store was opened read-only: it cannot be changed")]
    ReadOnly,
    /// The device could not provide a queue or buffers.
    #[error("cannot {what}: {source}")]
    Device {
        /// What was asked.
        what: &'static str,
        /// Why not.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How to open a store.
#[derive(Clone, Debug)]
pub struct VdeOptions {
    /// Namespace (`None`: the device's first).
    pub nsid: Option<u32>,
    /// Stripe locks (rounded up to a power of two): writers of one key are serialised.
    pub stripes: usize,
    /// Most lanes (I/O queues) for data; one more is used for metadata.
    pub lanes: usize,
    /// Staging buffer bytes per lane.
    pub staging_bytes: usize,
    /// Clean metadata blocks kept in memory (4 KiB each).
    pub cache_blocks: usize,
    /// Open read-only: the store never writes the device — not at open (no journal
    /// replay, no superblock repair: [`Vde::open`] fails with [`VdeError::NeedsRecovery`]
    /// instead), not for changes ([`VdeError::ReadOnly`]), not at close (no checkpoint).
    /// For readers that share a device with other readers. [`Vde::format`] writes
    /// regardless, then opens the new store read-only.
    pub read_only: bool,
}

impl Default for VdeOptions {
    fn default() -> VdeOptions {
        VdeOptions {
            nsid: None,
            stripes: 64,
            lanes: 8,
            staging_bytes: 1 << 20,
            cache_blocks: 2048,
            read_only: false,
        }
    }
}
