//! The Virtual Disk Engine: a crash-safe, checksummed object store on any backend.
//!
//! A [`Vde`] stores objects — byte strings of up to [`MAX_OBJECT`] bytes (30 MiB) under
//! keys of 1..=[`MAX_KEY`] (255) bytes — on one namespace of a [`Device`], through the
//! block interface only, so it runs unchanged on VFIO, io_uring, io_uring passthrough,
//! ioctl and psync. `docs/vde-format.md` describes the on-disk format.
//!
//! # Guarantees
//!
//! - **Durability.** When [`Vde::put`] or [`Vde::delete`] returns `Ok`, the change is on
//!   stable media (its journal transaction and its data were flushed) and survives a
//!   crash or power loss at any later point.
//! - **Atomicity.** A change that did not return is either wholly visible after a crash
//!   or not at all: a put never shows a mix of old and new bytes, nor a key without its
//!   data.
//! - **Integrity.** Every metadata block carries a trailer (kind, generation, its own
//!   block number, xxh3-64) checked on every read; every data extent has an xxh3-64 in
//!   its inode checked before any of its bytes are returned. A read returns the stored
//!   bytes or an error ([`VdeError::Corrupt`], [`VdeError::DataCorrupt`]), never other
//!   bytes.
//!
//! # How a put works
//!
//! 1. Take the key's stripe lock (one of a power-of-two number of `RwLock`s, chosen by
//!    the key's xxh3): writers of the same key are serialised, writers of different keys
//!    are not.
//! 2. Reserve free data blocks (at most 30 extents of up to 1 MiB) and write the data
//!    into them through a lane — in parallel with other threads' puts. The blocks are
//!    free in the committed metadata, so a crash here loses nothing.
//! 3. Under the global metadata lock: allocate an inode, insert the key in the B+tree
//!    index, free the key's previous inode and extents, mark the new extents in the
//!    allocation map; write the changed metadata blocks to the journal as one
//!    transaction and flush ([`meta::Meta::commit`]). One flush makes the data and the
//!    transaction durable together; at replay the journal's last transaction counts only
//!    if its data extents read back with their checksums.
//! 4. Blocks the put freed become allocatable only after that flush.
//!
//! Checkpoints (writing journalled blocks home, then the superblock) run under the same
//! global lock when the journal fills, and at close.
//!
//! # One owner
//!
//! A store belongs to one [`Vde`] at a time: two writers on one device (two processes,
//! or two opens in one) would each journal and checkpoint over the other's metadata. The
//! library does not know where its [`Device`] came from, so whoever opens it by path
//! claims it first with [`crate::claim::Claim`], as the `ironvme vde` commands do.
//!
//! # Memory
//!
//! Bounded whatever the number of objects: the allocation maps (1 bit per data block,
//! inode and index node: fixed at format time), an LRU cache of metadata blocks
//! ([`VdeOptions::cache_blocks`]), journalled images not yet checkpointed (at most the
//! journal's size), and each lane's staging buffers. Listing is paged ([`Vde::list`]).

pub mod bitmap;
pub mod block;
pub mod btree;
pub mod format;
pub mod fsck;
pub mod lane;
pub mod meta;
pub mod space;
pub mod tree;

use self::bitmap::Bitmap;
use self::format::*;
use self::lane::Lane;
use self::meta::{MapKind, Meta};
use crate::Device;
use crate::block::NamespaceInfo;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, RwLock};
use xxhash_rust::xxh3::xxh3_64;

pub use self::format::{MAX_KEY, MAX_OBJECT};
pub use self::fsck::FsckReport;

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
    /// Stripe locks (rounded up to a power of two).
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

/// An object's metadata.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ObjectStat {
    /// Size in bytes.
    pub size: u64,
    /// Inode number.
    pub inode: u64,
    /// The journal transaction that wrote it (grows with every change to the store).
    pub version: u64,
    /// Data extents as (first block, blocks).
    pub extents: Vec<(u64, u64)>,
}

/// Totals for reports.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct VdeInfo {
    /// Where the regions are.
    pub layout: Layout,
    /// Objects stored.
    pub objects: u64,
    /// Inodes in use / in the table.
    pub inodes_used: u64,
    /// Data blocks in use (4 KiB each).
    pub data_blocks_used: u64,
    /// Index nodes in use (the header included).
    pub index_nodes_used: u64,
    /// The next journal transaction's sequence number.
    pub seq: u64,
    /// Superblock generation.
    pub generation: u64,
    /// Metadata counters since open.
    pub stats: meta::MetaStats,
    /// The most puts that were writing data at the same moment since open (greater than
    /// one shows puts of different keys overlapping).
    pub max_parallel_data_writes: usize,
}

struct DataUse {
    /// Data blocks committed, reserved by puts in flight, or freed by a transaction
    /// that is not yet durable.
    map: Bitmap,
    cursor: u64,
}

/// An open store. Share it between threads (`&Vde` or `Arc<Vde>`).
pub struct Vde {
    stripes: Box<[RwLock<()>]>,
    meta: Mutex<Meta>,
    used: Mutex<DataUse>,
    lanes: Mutex<(Vec<Lane>, usize)>,
    lane_free: Condvar,
    writing: AtomicUsize,
    max_writing: AtomicUsize,
    opts: VdeOptions,
    ns: NamespaceInfo,
    layout: Layout,
    // Dropped last: the lanes above hold queues on it.
    device: Device,
}

fn check_geometry(ns: &NamespaceInfo) -> Result<u64, VdeError> {
    let bs = ns.block_size as usize;
    if bs == 0 || bs > BLOCK || BLOCK % bs != 0 {
        return Err(VdeError::Unsupported(format!(
            "the VDE needs a logical block size that divides {BLOCK} bytes; this namespace has {bs}"
        )));
    }
    Ok(ns.capacity_bytes() / BLOCK as u64)
}

impl Vde {
    /// Writes an empty store on `device` and opens it. `inodes` sets the inode table's
    /// size (0: one inode per 8 data blocks). Everything on the namespace is lost.
    ///
    /// Order: both superblocks are blanked and flushed first, then every metadata block
    /// is written and flushed, then the superblocks, and a final flush — a format cut
    /// short leaves a device that says "not formatted", never a half-made store.
    ///
    /// Errors: [`VdeError::Unsupported`] (block size), [`VdeError::TooSmall`], I/O errors.
    pub fn format(device: Device, inodes: u64, opts: VdeOptions) -> Result<Vde, VdeError> {
        let ns = device.namespace(opts.nsid).map_err(|e| VdeError::Device {
            what: "find the namespace",
            source: Box::new(e),
        })?;
        let total = check_geometry(&ns)?;
        let layout = Layout::plan(total, inodes)?;
        let mut lane = Lane::new(&device, &ns, opts.staging_bytes)?;
        lane.write(0, &[0u8; 2 * BLOCK])?;
        lane.flush()?;
        let gen0 = 1;
        let mut blocks: Vec<(u64, Box<Block>)> = vec![(REGION_DIR_BLOCK, layout.encode(gen0))];
        let blank = |kind: Kind, at: u64| {
            let mut b = Box::new([0u8; BLOCK]);
            seal(&mut b, kind, gen0, at);
            (at, b)
        };
        for map in [layout.index_map, layout.inode_map, layout.data_map] {
            for n in 0..map.blocks {
                let (at, mut b) = blank(Kind::Bitmap, map.start + n);
                if map == layout.index_map && n == 0 {
                    b[0] = 1; // node 0: the index header
                    seal(&mut b, Kind::Bitmap, gen0, at);
                }
                blocks.push((at, b));
            }
        }
        for n in 0..layout.inodes.blocks {
            blocks.push(blank(Kind::Inodes, layout.inodes.start + n));
        }
        blocks.push(blank(Kind::IndexHeader, layout.index.start));
        // The journal's first block must not hold a descriptor from an older store.
        blocks.push((layout.journal.start, Box::new([0u8; BLOCK])));
        for chunk in blocks.chunks(256) {
            let refs: Vec<(u64, &Block)> = chunk.iter().map(|(a, b)| (*a, &**b)).collect();
            lane.write_scattered(&refs)?;
        }
        lane.flush()?;
        let sb = Superblock {
            generation: gen0,
            lba_size: ns.block_size,
            total_blocks: total,
            journal_seq: 1,
            uuid: random_uuid(),
        };
        for at in SUPER_BLOCKS {
            lane.write(at, &sb.encode(at)[..])?;
        }
        lane.flush()?;
        drop(lane);
        Vde::open(device, opts)
    }

    /// Opens the store on `device`, replaying its journal (unless
    /// [`VdeOptions::read_only`]).
    ///
    /// Errors: [`VdeError::NotFormatted`], [`VdeError::Corrupt`] (naming the block),
    /// [`VdeError::Unsupported`], [`VdeError::NeedsRecovery`] (read-only), I/O errors.
    pub fn open(device: Device, opts: VdeOptions) -> Result<Vde, VdeError> {
        let ns = device.namespace(opts.nsid).map_err(|e| VdeError::Device {
            what: "find the namespace",
            source: Box::new(e),
        })?;
        let total = check_geometry(&ns)?;
        let lane = Lane::new(&device, &ns, opts.staging_bytes.min(512 * 1024))?;
        let meta = Meta::open(lane, total, opts.cache_blocks, opts.read_only)?;
        let layout = meta.layout;
        let used = DataUse {
            map: meta.data_map.clone(),
            cursor: 0,
        };
        let stripes = opts.stripes.max(1).next_power_of_two();
        Ok(Vde {
            stripes: (0..stripes).map(|_| RwLock::new(())).collect(),
            meta: Mutex::new(meta),
            used: Mutex::new(used),
            lanes: Mutex::new((Vec::new(), 0)),
            lane_free: Condvar::new(),
            writing: AtomicUsize::new(0),
            max_writing: AtomicUsize::new(0),
            opts,
            ns,
            layout,
            device,
        })
    }

    /// [`VdeError::ReadOnly`] if opened read-only: checked before a put writes data.
    fn check_writable(&self) -> Result<(), VdeError> {
        if self.opts.read_only {
            return Err(VdeError::ReadOnly);
        }
        Ok(())
    }

    /// The device underneath.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The namespace the store lives on.
    pub fn namespace(&self) -> &NamespaceInfo {
        &self.ns
    }

    /// Stores `data` under `key`, replacing any object with that key. Durable and
    /// atomic when it returns `Ok`.
    ///
    /// Errors: [`VdeError::BadKey`], [`VdeError::ObjectTooLarge`], [`VdeError::NoSpace`],
    /// I/O errors (nothing changed), [`VdeError::Poisoned`], [`VdeError::ReadOnly`].
    pub fn put(&self, key: &[u8], data: &[u8]) -> Result<(), VdeError> {
        check_key(key)?;
        self.check_writable()?;
        if data.len() as u64 > MAX_OBJECT {
            return Err(VdeError::ObjectTooLarge(data.len() as u64));
        }
        let _w = self.stripe(key).write().unwrap_or_else(|e| e.into_inner());
        // No metadata lock until the commit (which refuses a poisoned store): a put's
        // data write never waits for another put's journal write and flush.
        let runs = self.reserve(data.len().div_ceil(BLOCK) as u64)?;
        let extents = match self.write_data(&runs, data) {
            Ok(e) => e,
            Err(e) => {
                self.unreserve(&runs);
                return Err(e);
            }
        };
        self.commit(|meta| commit_put(meta, key, data.len() as u64, &extents))
            .inspect_err(|_| self.unreserve(&runs))
    }

    /// The object stored under `key`.
    ///
    /// Errors: [`VdeError::NotFound`], [`VdeError::DataCorrupt`], [`VdeError::Corrupt`],
    /// I/O errors, [`VdeError::Poisoned`].
    pub fn get(&self, key: &[u8]) -> Result<Vec<u8>, VdeError> {
        check_key(key)?;
        let _r = self.stripe(key).read().unwrap_or_else(|e| e.into_inner());
        let (_, inode) = self.find(key)?;
        let blocks: u64 = inode.extents.iter().map(|e| e.blocks).sum();
        // Each extent is read straight into its place in the result and checked there;
        // the zero padding of the last block is cut off at the end.
        let mut out = vec![0u8; blocks as usize * BLOCK];
        let mut lane = self.lane()?;
        let mut at = 0;
        for (i, e) in inode.extents.iter().enumerate() {
            let n = e.blocks as usize * BLOCK;
            lane.read(e.start, &mut out[at..at + n])?;
            if xxh3_64(&out[at..at + n]) != e.checksum {
                return Err(VdeError::DataCorrupt {
                    key: String::from_utf8_lossy(key).into_owned(),
                    extent: i,
                    start: e.start,
                    end: e.start + e.blocks,
                });
            }
            at += n;
        }
        out.truncate(inode.size as usize);
        Ok(out)
    }

    /// Removes the object under `key`. Durable when it returns `Ok`.
    ///
    /// Errors: [`VdeError::NotFound`], I/O errors, [`VdeError::Poisoned`],
    /// [`VdeError::ReadOnly`].
    pub fn delete(&self, key: &[u8]) -> Result<(), VdeError> {
        check_key(key)?;
        self.check_writable()?;
        let _w = self.stripe(key).write().unwrap_or_else(|e| e.into_inner());
        self.commit(|meta| commit_delete(meta, key))
    }

    /// The metadata of the object under `key`.
    ///
    /// Errors: [`VdeError::NotFound`], [`VdeError::Corrupt`], I/O errors,
    /// [`VdeError::Poisoned`].
    pub fn stat(&self, key: &[u8]) -> Result<ObjectStat, VdeError> {
        check_key(key)?;
        let (ino, i) = self.find(key)?;
        Ok(ObjectStat {
            size: i.size,
            inode: ino,
            version: i.version,
            extents: i.extents.iter().map(|e| (e.start, e.blocks)).collect(),
        })
    }

    /// Up to `limit` keys starting with `prefix`, in byte order, after `after` (for the
    /// next page: pass the last key of the previous one).
    ///
    /// Errors: [`VdeError::Corrupt`], I/O errors, [`VdeError::Poisoned`].
    pub fn list(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, VdeError> {
        let mut meta = self.meta()?;
        let mut out = Vec::new();
        let root = meta.root;
        btree::scan(&mut *meta, root, prefix, after, limit, &mut out)?;
        Ok(out.into_iter().map(|(k, _)| k).collect())
    }

    /// Every key starting with `prefix`, fetched a page at a time.
    pub fn keys<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = Result<Vec<u8>, VdeError>> + 'a {
        let mut page: std::vec::IntoIter<Vec<u8>> = Vec::new().into_iter();
        let mut last: Option<Vec<u8>> = None;
        let mut done = false;
        std::iter::from_fn(move || {
            loop {
                if let Some(k) = page.next() {
                    last = Some(k.clone());
                    return Some(Ok(k));
                }
                if done {
                    return None;
                }
                match self.list(prefix, last.as_deref(), 256) {
                    Ok(p) => {
                        done = p.len() < 256;
                        page = p.into_iter();
                    }
                    Err(e) => {
                        done = true;
                        return Some(Err(e));
                    }
                }
            }
        })
    }

    /// Totals and layout.
    ///
    /// Errors: [`VdeError::Poisoned`].
    pub fn info(&self) -> Result<VdeInfo, VdeError> {
        let meta = self.meta()?;
        Ok(VdeInfo {
            layout: self.layout,
            objects: meta.objects,
            inodes_used: meta.inode_map.count_ones(),
            data_blocks_used: meta.data_map.count_ones(),
            index_nodes_used: meta.index_map.count_ones(),
            seq: meta.seq,
            generation: meta.sb.generation,
            stats: meta.stats,
            max_parallel_data_writes: self.max_writing.load(Ordering::Relaxed),
        })
    }

    /// Checks every invariant of the store (see [`fsck`]).
    ///
    /// Errors: I/O errors that stop the check, [`VdeError::Poisoned`]; violations are in
    /// the report.
    pub fn fsck(&self) -> Result<FsckReport, VdeError> {
        let mut meta = self.meta()?;
        meta.checkpoint()?;
        fsck::check(&mut meta)
    }

    /// Checkpoints the journal, so the next open has nothing to replay.
    ///
    /// Errors: I/O errors.
    pub fn checkpoint(&self) -> Result<(), VdeError> {
        self.meta()?.checkpoint()
    }

    /// Checkpoints and closes the store (dropping it does the same, but can only log a
    /// failure).
    ///
    /// Errors: I/O errors of the checkpoint (the journal still holds every change).
    pub fn close(self) -> Result<(), VdeError> {
        self.checkpoint()
    }

    /// Applies `change` to the metadata under the global lock and commits it; the data
    /// blocks it freed become allocatable once that is durable. On failure the in-memory
    /// state is rolled back to the committed one.
    fn commit(&self, change: impl FnOnce(&mut Meta) -> Result<Vec<DataExtent>, VdeError>) -> Result<(), VdeError> {
        let mut meta = self.meta()?;
        match change(&mut meta) {
            Ok(freed) => {
                drop(meta);
                self.unreserve(&freed);
                Ok(())
            }
            Err(e) => {
                rollback(&mut meta, &e);
                Err(e)
            }
        }
    }

    fn stripe(&self, key: &[u8]) -> &RwLock<()> {
        &self.stripes[xxh3_64(key) as usize & (self.stripes.len() - 1)]
    }

    /// The metadata, locked; [`VdeError::Poisoned`] once a metadata write failed: the
    /// in-memory state may then hold a transaction that never became durable, so nothing
    /// reads or writes it until the store is reopened (which recovers from the journal).
    fn meta(&self) -> Result<MutexGuard<'_, Meta>, VdeError> {
        let m = match self.meta.lock() {
            Ok(m) => m,
            Err(e) => {
                let mut m = e.into_inner();
                if m.poisoned.is_none() {
                    m.poisoned = Some("a thread panicked while changing metadata".into());
                }
                m
            }
        };
        m.check_poison()?;
        Ok(m)
    }

    fn find(&self, key: &[u8]) -> Result<(u64, Inode), VdeError> {
        let mut meta = self.meta()?;
        let root = meta.root;
        let ino = btree::lookup(&mut *meta, root, key)?.ok_or_else(|| VdeError::NotFound(lossy(key)))?;
        let inode = meta.inode(ino)?;
        if inode.key_hash != xxh3_64(key) || inode.key_len as usize != key.len() {
            return Err(VdeError::Corrupt {
                block: self.layout.inodes.start + ino / INODES_PER_BLOCK,
                kind: Kind::Inodes.name(),
                reason: format!("inode {ino} belongs to another key than {:?}", lossy(key)),
            });
        }
        Ok((ino, inode))
    }

    /// Reserves `blocks` data blocks as at most [`MAX_EXTENTS`] runs of at most
    /// [`MAX_EXTENT_BLOCKS`]; device block numbers.
    fn reserve(&self, blocks: u64) -> Result<Vec<Extent>, VdeError> {
        let mut u = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let mut runs = Vec::new();
        let mut left = blocks;
        while left > 0 {
            // A whole extent's worth of contiguous blocks if there is one, else the first
            // free run.
            let want = left.min(MAX_EXTENT_BLOCKS);
            let found = if runs.len() < MAX_EXTENTS {
                u.map
                    .find_run_of(u.cursor, want)
                    .map(|s| (s, want))
                    .or_else(|| u.map.find_run(u.cursor, want))
            } else {
                None
            };
            let Some((start, n)) = found else {
                for r in &runs {
                    let r: &Extent = r;
                    u.map.set_range(r.start - self.layout.data.start, r.blocks, false);
                }
                return Err(VdeError::NoSpace {
                    what: if runs.len() >= MAX_EXTENTS {
                        "contiguous data blocks (the free space is too fragmented)"
                    } else {
                        "data blocks"
                    },
                });
            };
            u.map.set_range(start, n, true);
            u.cursor = start + n;
            runs.push(Extent {
                start: self.layout.data.start + start,
                blocks: n,
            });
            left -= n;
        }
        Ok(runs)
    }

    fn unreserve<E: Into<Extent> + Copy>(&self, runs: &[E]) {
        let mut u = self.used.lock().unwrap_or_else(|e| e.into_inner());
        for r in runs {
            let r: Extent = (*r).into();
            u.map.set_range(r.start - self.layout.data.start, r.blocks, false);
        }
    }

    fn write_data(&self, runs: &[Extent], data: &[u8]) -> Result<Vec<DataExtent>, VdeError> {
        let now = self.writing.fetch_add(1, Ordering::Relaxed) + 1;
        self.max_writing.fetch_max(now, Ordering::Relaxed);
        let r = self.write_extents(runs, data);
        self.writing.fetch_sub(1, Ordering::Relaxed);
        r
    }

    fn write_extents(&self, runs: &[Extent], data: &[u8]) -> Result<Vec<DataExtent>, VdeError> {
        let mut lane = self.lane()?;
        let mut out = Vec::with_capacity(runs.len());
        let mut at = 0;
        for r in runs {
            // The last extent's data may end inside its last block: the lane pads it.
            let end = (at + r.blocks as usize * BLOCK).min(data.len());
            let checksum = lane.write_hashed(r.start, &data[at..end])?;
            out.push(DataExtent {
                start: r.start,
                blocks: r.blocks,
                checksum,
            });
            at = end;
        }
        Ok(out)
    }

    fn lane(&self) -> Result<LaneGuard<'_>, VdeError> {
        let mut pool = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(l) = pool.0.pop() {
                return Ok(LaneGuard {
                    vde: self,
                    lane: Some(l),
                });
            }
            if pool.1 < self.opts.lanes.max(1) {
                pool.1 += 1;
                drop(pool);
                return match Lane::new(&self.device, &self.ns, self.opts.staging_bytes) {
                    Ok(l) => Ok(LaneGuard {
                        vde: self,
                        lane: Some(l),
                    }),
                    Err(e) => {
                        self.lanes.lock().unwrap_or_else(|e| e.into_inner()).1 -= 1;
                        // A thread may be waiting because this lane was being made: it can
                        // now try to make one itself (and, failing, wake the next).
                        self.lane_free.notify_one();
                        Err(e)
                    }
                };
            }
            pool = self.lane_free.wait(pool).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl From<DataExtent> for Extent {
    fn from(e: DataExtent) -> Extent {
        Extent {
            start: e.start,
            blocks: e.blocks,
        }
    }
}

impl Drop for Vde {
    fn drop(&mut self) {
        if let Ok(mut m) = self.meta.lock()
            && m.poisoned.is_none()
            && let Err(e) = m.checkpoint()
        {
            tracing::warn!("VDE checkpoint at close failed ({e}); the journal still holds every change");
        }
    }
}

/// A lane borrowed from the pool; goes back on drop.
struct LaneGuard<'a> {
    vde: &'a Vde,
    lane: Option<Lane>,
}

impl Deref for LaneGuard<'_> {
    type Target = Lane;
    fn deref(&self) -> &Lane {
        self.lane.as_ref().expect("present until drop")
    }
}

impl DerefMut for LaneGuard<'_> {
    fn deref_mut(&mut self) -> &mut Lane {
        self.lane.as_mut().expect("present until drop")
    }
}

impl Drop for LaneGuard<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.lane.take() {
            self.vde.lanes.lock().unwrap_or_else(|e| e.into_inner()).0.push(l);
            self.vde.lane_free.notify_one();
        }
    }
}

fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn check_key(key: &[u8]) -> Result<(), VdeError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(VdeError::BadKey(key.len()));
    }
    Ok(())
}

/// Applies a put to the metadata and commits it. Returns the extents it freed.
fn commit_put(meta: &mut Meta, key: &[u8], size: u64, extents: &[DataExtent]) -> Result<Vec<DataExtent>, VdeError> {
    let ino = meta
        .inode_map
        .find_clear(meta.inode_hint)
        .ok_or(VdeError::NoSpace { what: "inodes" })?;
    meta.inode_hint = ino + 1;
    let inode = Inode {
        size,
        version: meta.seq,
        key_hash: xxh3_64(key),
        key_len: key.len() as u16,
        extents: extents.to_vec(),
    };
    meta.inode_map.set(ino, true);
    meta.write_map_block(MapKind::Inode, ino);
    meta.set_inode(ino, Some(&inode))?;
    let root = meta.root;
    let (root, old) = btree::insert(meta, root, key, ino)?;
    meta.root = root;
    let freed = match old {
        Some(old) => free_inode(meta, old)?,
        None => {
            meta.objects += 1;
            Vec::new()
        }
    };
    let data_start = meta.layout.data.start;
    for e in extents {
        meta.data_map.set_range(e.start - data_start, e.blocks, true);
        meta.write_map_block(MapKind::Data, e.start - data_start);
        meta.write_map_block(MapKind::Data, e.start - data_start + e.blocks - 1);
        meta.note_new_data(*e);
    }
    meta.write_header();
    meta.commit()?;
    Ok(freed)
}

/// Applies a delete to the metadata and commits it. Returns the extents it freed.
fn commit_delete(meta: &mut Meta, key: &[u8]) -> Result<Vec<DataExtent>, VdeError> {
    let root = meta.root;
    let (root, old) = btree::remove(meta, root, key)?;
    let Some(old) = old else {
        return Err(VdeError::NotFound(lossy(key)));
    };
    meta.root = root;
    let freed = free_inode(meta, old)?;
    meta.objects -= 1;
    meta.write_header();
    meta.commit()?;
    Ok(freed)
}

fn free_inode(meta: &mut Meta, ino: u64) -> Result<Vec<DataExtent>, VdeError> {
    let old = meta.inode(ino)?;
    let data = meta.layout.data;
    if let Some(e) = old
        .extents
        .iter()
        .find(|e| e.start < data.start || e.start + e.blocks > data.end())
    {
        return Err(VdeError::Corrupt {
            block: meta.layout.inodes.start + ino / INODES_PER_BLOCK,
            kind: Kind::Inodes.name(),
            reason: format!("inode {ino} has an extent outside the data region: {e:?}"),
        });
    }
    meta.set_inode(ino, None)?;
    meta.inode_map.set(ino, false);
    meta.write_map_block(MapKind::Inode, ino);
    let data_start = meta.layout.data.start;
    for e in &old.extents {
        meta.data_map.set_range(e.start - data_start, e.blocks, false);
        meta.write_map_block(MapKind::Data, e.start - data_start);
        meta.write_map_block(MapKind::Data, e.start - data_start + e.blocks - 1);
    }
    Ok(old.extents)
}

/// Undoes a failed operation's in-memory changes: drops the transaction and reloads the
/// maps and the index header from the committed state. If even that fails the store is
/// poisoned.
fn rollback(meta: &mut Meta, why: &VdeError) {
    if matches!(why, VdeError::Poisoned(_)) {
        return;
    }
    if let Err(e) = meta.rollback() {
        meta.poison_now(format!("rollback after \"{why}\" failed: {e}"));
    }
}
