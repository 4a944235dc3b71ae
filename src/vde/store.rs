//! Format 2's store: objects (put, get, delete, list, stat) and the machinery every
//! dataset operation shares — the pool state behind one lock, the lanes data moves
//! through, commits and replay.
//!
//! # How a put works
//!
//! 1. Take the key's stripe lock (writers of one key are serialised, of different keys
//!    not).
//! 2. Reserve free blocks (at most [`MAX_EXTENTS`] runs of up to 1 MiB) and write the
//!    data through a lane, hashing it (xxh3-64 seeded with the store tag) while the
//!    device writes. The blocks are free in every committed state: a crash loses nothing.
//! 3. Under the pool lock: insert the key in the object index (copy-on-write, in
//!    memory), free the previous version's extents, mark the new ones in use. The change
//!    belongs to the open txg T.
//! 4. Append a record (key, size, extents with checksums, T) to the intent log and wait
//!    until it is durable: one Flush covers the data and the record, and concurrent
//!    operations share it (group commit).
//!
//! A commit writes txg T's trees (two Flushes) when the log fills past half, when dirty
//! metadata passes its bound, at a snapshot, and at close. Replay applies the logged
//! records newer than the committed txg whose data verifies: a record whose data does not
//! verify was never acknowledged (its Flush did not complete).

use super::VdeError;
use super::block::{BLOCK, Block, BlockPtr, NodeKind};
use super::format::{MAX_EXTENT_BLOCKS, MAX_EXTENTS, MAX_KEY, MAX_OBJECT, get32, get64, random_uuid};
use super::intent::{IntentLog, LaneLog, LogDev};
use super::lane::Lane;
use super::pool::{self, Cache, LOG_START, MetaIo, PoolStats, SUPER2, Superblock2, log_blocks_for, write_queued};
use super::space::SpaceMap;
use super::tree::Tree;
use crate::Device;
use crate::block::NamespaceInfo;
use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex, MutexGuard, RwLock};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

pub use super::VdeOptions;

/// Intent log record kinds (first byte of a record; the next 8 bytes are its txg).
pub mod rec {
    /// An object put: `u8` key length, key, object value (see [`super::ObjectValue`]).
    pub const PUT: u8 = 1;
    /// An object delete: `u8` key length, key.
    pub const DELETE: u8 = 2;
    /// A volume write's new mapping (see `dataset.rs`).
    pub const VOL_MAP: u8 = 3;
    /// A volume range made to read as zeros (Write Zeroes, Deallocate).
    pub const VOL_UNMAP: u8 = 4;
}

/// An object's value in the object index: size in bytes, birth txg, then its data
/// extents (block, length in blocks, xxh3-64 seeded with the store tag over the
/// extent's bytes, the last block zero-padded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectValue {
    /// Size in bytes.
    pub size: u64,
    /// The txg that wrote it.
    pub birth: u64,
    /// (first block, blocks, checksum).
    pub extents: Vec<(u64, u64, u64)>,
}

impl ObjectValue {
    /// Encoded bytes: `u64 size, u64 birth, u8 n, n × (u64 block, u32 blocks, u64 checksum)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(17 + 20 * self.extents.len());
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.birth.to_le_bytes());
        v.push(self.extents.len() as u8);
        for &(start, blocks, sum) in &self.extents {
            v.extend_from_slice(&start.to_le_bytes());
            v.extend_from_slice(&(blocks as u32).to_le_bytes());
            v.extend_from_slice(&sum.to_le_bytes());
        }
        v
    }

    /// Decodes and checks a value against a pool of `total` blocks starting at `first`.
    ///
    /// Errors: a description of what is wrong.
    pub fn decode(v: &[u8], first: u64, total: u64) -> Result<ObjectValue, String> {
        if v.len() < 17 {
            return Err(format!("object value of {} bytes is too short", v.len()));
        }
        let n = v[16] as usize;
        if n > MAX_EXTENTS || v.len() != 17 + 20 * n {
            return Err(format!("object value of {} bytes does not hold {n} extents", v.len()));
        }
        let size = get64(v, 0);
        let mut extents = Vec::with_capacity(n);
        let mut blocks_total = 0u64;
        for i in 0..n {
            let at = 17 + 20 * i;
            let (start, blocks) = (get64(v, at), get32(v, at + 8) as u64);
            if blocks == 0 || blocks > MAX_EXTENT_BLOCKS || start < first || start.saturating_add(blocks) > total {
                return Err(format!(
                    "extent {i} ({start}+{blocks}) is outside the pool {first}..{total}"
                ));
            }
            blocks_total += blocks;
            extents.push((start, blocks, get64(v, at + 12)));
        }
        if size > MAX_OBJECT || size.div_ceil(BLOCK as u64) != blocks_total {
            return Err(format!("size {size} does not match {blocks_total} extent blocks"));
        }
        Ok(ObjectValue {
            size,
            birth: get64(v, 8),
            extents,
        })
    }
}

/// Held blocks (freed, deferred) below which space alone never asks for a commit.
const HELD_MIN: u64 = 256;

/// Blocks that data may not take, kept for the metadata of the commits that follow (ZFS's
/// slop space): a 1/32 of the store, at least 1024 blocks (4 MiB) but at most a quarter
/// of a small store, and at most 32768 blocks (128 MiB) plus two per space-map bitmap (a
/// commit may rewrite every bitmap and its indirect blocks). Without it the last data
/// write takes the blocks the next commit's copy-on-write needs: the commit fails, and a
/// full store cannot be opened (replay ends in a commit), nor a delete run on it.
pub fn slop_blocks(total: u64) -> u64 {
    let bitmaps = total.div_ceil(super::space::BITS_PER_BITMAP);
    (total / 32).clamp(1024.min(total / 4), 32768 + 2 * bitmaps)
}

/// The pool state, behind the store's one metadata lock.
pub struct State {
    /// The last committed superblock.
    pub sb: Superblock2,
    /// The open txg (the committed one + 1).
    pub txg: u64,
    /// Allocation.
    pub space: SpaceMap,
    /// The object index.
    pub objects: Tree,
    /// The dataset directory.
    pub datasets: Tree,
    /// Objects stored.
    pub objects_count: u64,
    /// Open volume heads (dataset.rs): name → in-memory state.
    pub heads: HashMap<Vec<u8>, super::dataset::Head>,
    /// Volume mapping records of the open txg not yet in the intent log: a volume Flush
    /// appends them.
    pub pending_vol: Vec<Vec<u8>>,
    /// The lane metadata moves through.
    pub lane: Lane,
    /// Clean metadata blocks.
    pub cache: Cache,
    /// Sealed blocks the commit will write.
    pub writes: Vec<(u64, Box<Block>)>,
    /// Blocks the trees released, waiting to be routed.
    pub released: Vec<(u64, u64)>,
    /// Counters.
    pub stats: PoolStats,
    /// Set when a metadata write failed: the in-memory state may hold what never became
    /// durable, so nothing is served until reopen.
    pub poisoned: Option<String>,
    /// Operations applied since the last commit.
    pub ops_since_commit: u64,
    /// Dirty-node bound that triggers a commit.
    pub dirty_limit: usize,
    tag: u64,
}

impl State {
    /// Metadata I/O of the open txg.
    pub fn io(&mut self) -> MetaIo<'_> {
        MetaIo {
            lane: &mut self.lane,
            cache: &mut self.cache,
            space: &mut self.space,
            writes: &mut self.writes,
            released: &mut self.released,
            stats: &mut self.stats,
            tag: self.tag,
            txg: self.txg,
            bypass_cache: false,
        }
    }

    /// The store tag.
    pub fn tag(&self) -> u64 {
        self.tag
    }

    /// Frees every block the trees released since the last call (object index and
    /// dataset directory blocks: never shared with a snapshot).
    pub fn free_released(&mut self) {
        for (addr, _) in std::mem::take(&mut self.released) {
            self.space.free(addr, 1);
        }
    }

    /// [`VdeError::Poisoned`] once a metadata write failed.
    pub fn check_poison(&self) -> Result<(), VdeError> {
        match &self.poisoned {
            Some(why) => Err(VdeError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    /// Marks the store poisoned by `e` and returns it.
    pub fn poison(&mut self, e: VdeError) -> VdeError {
        if self.poisoned.is_none() {
            self.poisoned = Some(e.to_string());
        }
        e
    }

    /// Reserves `blocks` data blocks in runs of at most `max_run` blocks, and at most
    /// `max_runs` runs: next-fit from the cursor, or, when that cuts them into more runs,
    /// from free runs long enough wherever they are ([`SpaceMap::reserve_long_runs`]).
    /// When the space map has too few free blocks but holds deferred frees (blocks freed
    /// in the last two txgs), commits until they are released (at most three times) and
    /// tries again, as ZFS waits for a txg sync when space is short: a delete on a full
    /// store gives its space back to the next write. Data never takes the last
    /// [`slop_blocks`].
    ///
    /// Errors: [`VdeError::NoSpace`] (nothing reserved), commit errors (the store is then
    /// poisoned).
    pub fn reserve(
        &mut self,
        log: &IntentLog,
        blocks: u64,
        max_run: u64,
        max_runs: usize,
    ) -> Result<Vec<(u64, u64)>, VdeError> {
        let mut commits = 0;
        let slop = slop_blocks(self.sb.total_blocks);
        loop {
            let r = if self.space.free_now() < blocks.saturating_add(slop) {
                Err(VdeError::NoSpace { what: "data blocks" })
            } else {
                match self.space.reserve(blocks, max_run) {
                    Ok(runs) if runs.len() > max_runs => {
                        for &(s, n) in &runs {
                            self.space.unreserve(s, n);
                        }
                        let min_run = blocks.div_ceil(max_runs.max(1) as u64);
                        match self.space.reserve_long_runs(blocks, max_run, min_run) {
                            // Runs capped at `max_run` below `min_run` can still be too many.
                            Ok(runs) if runs.len() > max_runs => {
                                for &(s, n) in &runs {
                                    self.space.unreserve(s, n);
                                }
                                Err(VdeError::NoSpace {
                                    what: "contiguous data blocks (the free space is too fragmented)",
                                })
                            }
                            r => r,
                        }
                    }
                    r => r,
                }
            };
            match r {
                Err(VdeError::NoSpace { .. }) if commits < 3 && self.space.deferred_blocks() > 0 => {
                    self.commit(log)?;
                    commits += 1;
                }
                r => return r,
            }
        }
    }

    /// Whether dirty metadata, the log or space asks for a commit. Space: blocks freed by
    /// overwrites stay held until the second commit after their free, so a stream of
    /// overwrites with few commits (volume writes without Flush) would run out of space
    /// on a device with room; a commit is due once the held blocks pass a quarter of
    /// those still free.
    pub fn wants_commit(&self, log: &IntentLog) -> bool {
        let dirty = self.objects.dirty_nodes()
            + self.datasets.dirty_nodes()
            + self.heads.values().map(|h| h.dirty_nodes()).sum::<usize>();
        // Freed blocks come back only through commits (the second after their free):
        // commit once the held ones pass a quarter of the free ones, or 1/32 of the store.
        let held = self.space.held();
        dirty > self.dirty_limit
            || log.used() * 2 > self.sb.log_blocks
            || self.pending_vol.len() > 65536
            || (held >= HELD_MIN && (held * 4 > self.space.free_now() || held > self.sb.total_blocks / 32))
    }

    /// Commits the open txg: every dirty tree and the space map at new homes, Flush, the
    /// superblock copy `txg % 2`, Flush. Poisons the store on failure.
    ///
    /// Errors: I/O errors (the store is then poisoned).
    pub fn commit(&mut self, log: &IntentLog) -> Result<(), VdeError> {
        self.check_poison()?;
        self.commit_inner(log).map_err(|e| self.poison(e))
    }

    fn commit_inner(&mut self, log: &IntentLog) -> Result<(), VdeError> {
        super::dataset::commit_heads(self)?;
        let objects = {
            let mut objects = std::mem::replace(&mut self.objects, Tree::open(NodeKind::Objects, None));
            let r = objects.commit(&mut self.io());
            self.objects = objects;
            r?
        };
        self.free_released();
        let datasets = {
            let mut datasets = std::mem::replace(&mut self.datasets, Tree::open(NodeKind::Datasets, None));
            let r = datasets.commit(&mut self.io());
            self.datasets = datasets;
            r?
        };
        self.free_released();
        let (txg, tag) = (self.txg, self.tag);
        let mut queued = std::mem::take(&mut self.writes);
        let space = self.space.commit(txg, tag, &mut |addr, b| {
            queued.push((addr, b));
            Ok(())
        })?;
        let written = write_queued(&mut self.lane, &mut queued)?;
        self.writes = queued;
        self.lane.flush()?;
        let (log_head, log_seq) = log.position();
        let sb = Superblock2 {
            txg,
            objects,
            datasets,
            space,
            log_head,
            log_seq,
            objects_count: self.objects_count,
            ..self.sb
        };
        let at = SUPER2[(txg % 2) as usize];
        self.lane.write(at, &sb.encode(at)[..])?;
        self.lane.flush()?;
        log.release_to(log_seq);
        self.space.committed();
        self.sb = sb;
        self.txg = txg + 1;
        self.pending_vol.clear();
        self.ops_since_commit = 0;
        self.stats.commits += 1;
        self.stats.commit_flushes += 2;
        self.stats.meta_blocks_written += written;
        Ok(())
    }
}

/// Lanes for data, made on demand up to a bound and shared by threads.
pub struct Lanes {
    pool: Mutex<(Vec<Lane>, usize)>,
    free: Condvar,
    max: usize,
    staging: usize,
}

impl Lanes {
    /// At most `max` lanes with `staging` bytes of staging buffers each.
    pub fn new(max: usize, staging: usize) -> Lanes {
        Lanes {
            pool: Mutex::new((Vec::new(), 0)),
            free: Condvar::new(),
            max: max.max(1),
            staging,
        }
    }

    /// A lane, made on `device` if none is free and fewer than the bound exist; waits
    /// otherwise.
    ///
    /// Errors: [`VdeError::Device`] when a new lane cannot be made.
    pub fn get<'a>(&'a self, device: &Device, ns: &NamespaceInfo) -> Result<LaneGuard<'a>, VdeError> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(l) = pool.0.pop() {
                return Ok(LaneGuard {
                    lanes: self,
                    lane: Some(l),
                });
            }
            if pool.1 < self.max {
                pool.1 += 1;
                drop(pool);
                return match Lane::new(device, ns, self.staging) {
                    Ok(l) => Ok(LaneGuard {
                        lanes: self,
                        lane: Some(l),
                    }),
                    Err(e) => {
                        self.pool.lock().unwrap_or_else(|e| e.into_inner()).1 -= 1;
                        // A thread waiting for this lane may now make one itself.
                        self.free.notify_one();
                        Err(e)
                    }
                };
            }
            pool = self.free.wait(pool).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A lane borrowed from [`Lanes`]; goes back on drop.
pub struct LaneGuard<'a> {
    lanes: &'a Lanes,
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
            let mut pool = self.lanes.pool.lock().unwrap_or_else(|e| e.into_inner());
            if l.outstanding() == 0 {
                pool.0.push(l);
            } else {
                // Left mid-transfer (a panic): only this thread may be able to complete
                // its I/O (a deferred io_uring ring), so the lane is not handed to
                // another. Dropping it here waits for its I/O; a new lane may be made.
                pool.1 -= 1;
                drop(pool);
                drop(l);
            }
            self.lanes.free.notify_one();
        }
    }
}

/// An object's metadata, as `vde stat` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ObjectStat {
    /// Size in bytes.
    pub size: u64,
    /// The txg that wrote it.
    pub version: u64,
    /// Data extents as (first block, blocks).
    pub extents: Vec<(u64, u64)>,
}

/// Totals and counters of an open store, for `vde info`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VdeInfo {
    /// Blocks (4 KiB) in the store.
    pub total_blocks: u64,
    /// The intent log region: first block.
    pub log_start: u64,
    /// The intent log region: blocks.
    pub log_blocks: u64,
    /// Blocks in use (metadata, data, superblocks and the log region).
    pub used_blocks: u64,
    /// Blocks kept for metadata, never given to data ([`slop_blocks`]): data can use
    /// `total_blocks - used_blocks - reserved_blocks`.
    pub reserved_blocks: u64,
    /// Objects stored.
    pub objects: u64,
    /// The last committed txg.
    pub txg: u64,
    /// The store's UUID, hex.
    pub uuid: String,
    /// Commit and cache counters since open.
    pub pool: PoolStats,
    /// Flushes the intent log issued since open.
    pub log_flushes: u64,
    /// Records the intent log made durable since open.
    pub log_records: u64,
    /// Puts, deletes and volume flushes acknowledged since open.
    pub acked_ops: u64,
    /// The most puts that were writing data at the same moment since open (greater than
    /// one shows puts of different keys overlapping).
    pub max_parallel_data_writes: usize,
}

/// An open format-2 store. Share it between threads (`&Store` or `Arc<Store>`).
pub struct Vde {
    stripes: Box<[RwLock<()>]>,
    /// The pool state.
    pub(super) state: Mutex<State>,
    /// The intent log.
    pub(super) log: IntentLog,
    /// Data lanes.
    pub(super) lanes: Lanes,
    pub(super) opts: VdeOptions,
    pub(super) ns: NamespaceInfo,
    pub(super) tag: u64,
    pub(super) acked_ops: std::sync::atomic::AtomicU64,
    pub(super) vol_flush_lock: Mutex<()>,
    /// Held for the whole of every operation that changes the set of datasets or a
    /// volume's snapshot chain (volume create, remove, resize; snapshot create, remove;
    /// clone; rollback), so that what one reads of the snapshot list before it takes the
    /// state lock is still true when it acts. Taken before `state`, never while holding it.
    pub(super) topology: Mutex<()>,
    writing: std::sync::atomic::AtomicUsize,
    max_writing: std::sync::atomic::AtomicUsize,
    // Dropped last: lanes and the state's lane hold queues on it.
    pub(super) device: Device,
}

fn check_key(key: &[u8]) -> Result<(), VdeError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(VdeError::BadKey(key.len()));
    }
    Ok(())
}

fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn namespace_of(device: &Device, opts: &VdeOptions) -> Result<(NamespaceInfo, u64), VdeError> {
    let ns = device.namespace(opts.nsid).map_err(|e| VdeError::Device {
        what: "find the namespace",
        source: Box::new(e),
    })?;
    let bs = ns.block_size as usize;
    if bs == 0 || bs > BLOCK || BLOCK % bs != 0 {
        return Err(VdeError::Unsupported(format!(
            "the VDE needs a logical block size that divides {BLOCK} bytes; this namespace has {bs}"
        )));
    }
    let total = ns.capacity_bytes() / BLOCK as u64;
    Ok((ns, total))
}

/// The fewest blocks a store needs: superblocks, the smallest log, and room for trees.
pub const MIN_BLOCKS: u64 = 2 + 64 + 64;

impl Vde {
    /// Writes an empty format-2 store on `device` and opens it. Everything on the
    /// namespace is lost.
    ///
    /// Order: both superblock copies are zeroed and flushed first; then the first txg
    /// (an empty space map) and its superblock are written and flushed. A format cut short
    /// leaves a device that says "not formatted", never a half-made store. The log
    /// region's first block is zeroed too, so no block of an earlier store can replay.
    ///
    /// Errors: [`VdeError::Unsupported`] (block size), [`VdeError::TooSmall`], I/O errors.
    pub fn format(device: Device, opts: VdeOptions) -> Result<Vde, VdeError> {
        let (ns, total) = namespace_of(&device, &opts)?;
        if total < MIN_BLOCKS {
            return Err(VdeError::TooSmall {
                blocks: total,
                min: MIN_BLOCKS,
            });
        }
        let mut lane = Lane::new(&device, &ns, opts.staging_bytes)?;
        lane.write(0, &[0u8; 2 * BLOCK])?;
        lane.flush()?;
        let log_blocks = log_blocks_for(total);
        let uuid = random_uuid();
        let tag = super::block::store_tag(&uuid);
        // Every log block is zeroed: a block of an earlier store at the head could
        // otherwise look like a continuation (it would fail the tag check, but zeros say
        // so without relying on it).
        let zeros = vec![0u8; 64 * BLOCK];
        let mut at = 0;
        while at < log_blocks {
            let n = (log_blocks - at).min(64);
            lane.write(LOG_START + at, &zeros[..n as usize * BLOCK])?;
            at += n;
        }
        let mut space = SpaceMap::format(total, LOG_START + log_blocks);
        let txg = 1;
        let mut queued = Vec::new();
        let space_root = space.commit(txg, tag, &mut |addr, b| {
            queued.push((addr, b));
            Ok(())
        })?;
        write_queued(&mut lane, &mut queued)?;
        lane.flush()?;
        let sb = Superblock2 {
            txg,
            lba_size: ns.block_size,
            compat: 0,
            ro_compat: 0,
            incompat: 0,
            uuid,
            total_blocks: total,
            objects: None,
            datasets: None,
            space: space_root,
            log_start: LOG_START,
            log_blocks,
            log_head: 0,
            log_seq: 1,
            objects_count: 0,
        };
        let at = SUPER2[(txg % 2) as usize];
        lane.write(at, &sb.encode(at)[..])?;
        lane.flush()?;
        drop(lane);
        Vde::open(device, opts)
    }

    /// Opens the store on `device`: reads the superblock pair, loads the space map,
    /// replays the intent log (unless [`VdeOptions::read_only`]) and commits the replayed
    /// changes.
    ///
    /// Errors: [`VdeError::NotFormatted`], [`VdeError::Unsupported`] (format 1, unknown
    /// features), [`VdeError::Mismatch`] / [`VdeError::Corrupt`] naming the block,
    /// [`VdeError::NeedsRecovery`] (read-only, with a log to replay or a damaged copy),
    /// I/O errors.
    pub fn open(device: Device, opts: VdeOptions) -> Result<Vde, VdeError> {
        let (ns, total) = namespace_of(&device, &opts)?;
        let mut lane = Lane::new(&device, &ns, opts.staging_bytes.min(512 * 1024))?;
        let (sb, other_damaged) = pool::read_superblocks(&mut lane, total)?;
        let tag = sb.tag();
        let read_only = opts.read_only || sb.ro_compat & !pool::features::RO_COMPAT_KNOWN != 0;
        if read_only && !opts.read_only {
            return Err(VdeError::Unsupported(format!(
                "the store uses read-only-compatible features {:#x} this build does not know: open it read-only",
                sb.ro_compat & !pool::features::RO_COMPAT_KNOWN
            )));
        }
        let cache = Cache::new(opts.cache_blocks);
        let mut stats = PoolStats::default();
        let space = {
            let mut read = |ptr: &BlockPtr, kind: NodeKind| {
                if ptr.addr >= total {
                    return Err(VdeError::Mismatch {
                        block: ptr.addr,
                        kind: kind.name(),
                        expected: format!("a block below {total}"),
                        found: "a pointer past the end of the store".into(),
                    });
                }
                let mut b = Box::new([0u8; BLOCK]);
                lane.read(ptr.addr, &mut b[..])?;
                super::block::check(&b, ptr.addr, kind, Some(ptr), tag)?;
                stats.cache_misses += 1;
                Ok(std::sync::Arc::from(b))
            };
            SpaceMap::load(sb.total_blocks, sb.space, &mut read)?
        };
        let stripes = opts.stripes.max(1).next_power_of_two();
        let state = State {
            sb,
            txg: sb.txg + 1,
            space,
            objects: Tree::open(NodeKind::Objects, sb.objects),
            datasets: Tree::open(NodeKind::Datasets, sb.datasets),
            objects_count: sb.objects_count,
            heads: HashMap::new(),
            pending_vol: Vec::new(),
            lane,
            cache,
            writes: Vec::new(),
            released: Vec::new(),
            stats,
            poisoned: None,
            ops_since_commit: 0,
            dirty_limit: (opts.cache_blocks / 2).max(64),
            tag,
        };
        let log_lane = Lane::new(&device, &ns, 256 * 1024)?;
        let state = state;
        // Replay: read-only opens only look whether there is anything to replay.
        let mut replay_dev = LaneLog::new(Lane::new(&device, &ns, 256 * 1024)?);
        let mut pending = Vec::new();
        let (head, seq) = IntentLog::replay(
            &mut replay_dev,
            sb.log_start,
            sb.log_blocks,
            tag,
            sb.log_head,
            sb.log_seq,
            &mut |r| {
                if r.len() >= pool::RECORD_HEADER && get64(r, 1) > sb.txg {
                    pending.push(r.to_vec());
                }
                Ok(())
            },
        )?;
        drop(replay_dev);
        if read_only && (!pending.is_empty() || other_damaged) {
            return Err(VdeError::NeedsRecovery(if other_damaged {
                "a superblock copy is damaged".into()
            } else {
                format!("{} intent log records to replay", pending.len())
            }));
        }
        // New blocks go after the valid prefix, numbered one lap ahead: a block of the
        // region written before the crash (past a torn one, say) then never carries a
        // sequence number a later replay expects. The commit below records this position
        // before anything is appended.
        let log = IntentLog::new(
            Box::new(LaneLog::new(log_lane)) as Box<dyn LogDev>,
            sb.log_start,
            sb.log_blocks,
            tag,
            head,
            seq + sb.log_blocks,
        );
        let store = Vde {
            stripes: (0..stripes).map(|_| RwLock::new(())).collect(),
            topology: Mutex::new(()),
            state: Mutex::new(state),
            log,
            lanes: Lanes::new(opts.lanes, opts.staging_bytes),
            opts,
            ns,
            tag,
            acked_ops: std::sync::atomic::AtomicU64::new(0),
            vol_flush_lock: Mutex::new(()),
            writing: std::sync::atomic::AtomicUsize::new(0),
            max_writing: std::sync::atomic::AtomicUsize::new(0),
            device,
        };
        if !read_only {
            for r in pending {
                store.replay_record(&r)?;
            }
            store.state()?.commit(&store.log)?;
        }
        Ok(store)
    }

    /// Applies one intent log record newer than the committed txg, if its data verifies.
    fn replay_record(&self, r: &[u8]) -> Result<(), VdeError> {
        let bad = |why: String| VdeError::Corrupt {
            block: 0,
            kind: NodeKind::Log.name(),
            reason: why,
        };
        let body = &r[pool::RECORD_HEADER..];
        let ok = match r[0] {
            rec::PUT | rec::DELETE => {
                let klen = *body.first().ok_or_else(|| bad("empty object record".into()))? as usize;
                if klen == 0 || body.len() < 1 + klen {
                    return Err(bad(format!("object record with key length {klen}")));
                }
                let key = &body[1..1 + klen];
                if r[0] == rec::DELETE {
                    let mut st = self.state()?;
                    self.apply_delete(&mut st, key)?;
                    true
                } else {
                    let (first, total) = {
                        let st = self.state()?;
                        (st.sb.pool_start(), st.sb.total_blocks)
                    };
                    let value = ObjectValue::decode(&body[1 + klen..], first, total).map_err(bad)?;
                    if self.data_verifies(&value)? {
                        let mut st = self.state()?;
                        for &(s, n, _) in &value.extents {
                            st.space.claim(s, n)?;
                        }
                        self.apply_put(&mut st, key, &value)?;
                        true
                    } else {
                        false
                    }
                }
            }
            rec::VOL_MAP | rec::VOL_UNMAP => super::dataset::replay_volume_record(self, r)?,
            other => return Err(bad(format!("unknown intent log record kind {other}"))),
        };
        let mut st = self.state()?;
        if ok {
            st.stats.replayed += 1;
        } else {
            st.stats.replay_skipped += 1;
        }
        Ok(())
    }

    fn data_verifies(&self, v: &ObjectValue) -> Result<bool, VdeError> {
        let mut lane = self.lane()?;
        let mut buf = Vec::new();
        for &(start, blocks, sum) in &v.extents {
            buf.resize(blocks as usize * BLOCK, 0);
            lane.read(start, &mut buf)?;
            if xxh3_64_with_seed(&buf, self.tag) != sum {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The pool state, locked; [`VdeError::Poisoned`] after a failed metadata write.
    pub(super) fn state(&self) -> Result<MutexGuard<'_, State>, VdeError> {
        let st = self.state.lock().unwrap_or_else(|e| {
            let mut st = e.into_inner();
            if st.poisoned.is_none() {
                st.poisoned = Some("a thread panicked while changing metadata".into());
            }
            st
        });
        st.check_poison()?;
        Ok(st)
    }

    /// A data lane.
    pub(super) fn lane(&self) -> Result<LaneGuard<'_>, VdeError> {
        self.lanes.get(&self.device, &self.ns)
    }

    fn check_writable(&self) -> Result<(), VdeError> {
        if self.opts.read_only {
            return Err(VdeError::ReadOnly);
        }
        Ok(())
    }

    fn stripe(&self, key: &[u8]) -> &RwLock<()> {
        &self.stripes[xxh3_64(key) as usize & (self.stripes.len() - 1)]
    }

    /// The device underneath.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The namespace the store lives on.
    pub fn namespace(&self) -> &NamespaceInfo {
        &self.ns
    }

    /// Makes the operation applied in `txg` durable through the intent log (group
    /// committed), or by a commit when the log is full. Counts it as acknowledged.
    pub(super) fn make_durable(&self, txg: u64, records: &[&[u8]]) -> Result<(), VdeError> {
        let r = match self.log.append(txg, records) {
            Ok(()) => Ok(()),
            Err(VdeError::NoSpace { .. }) => {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if st.txg > txg { Ok(()) } else { st.commit(&self.log) }
            }
            Err(e) => {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                Err(st.poison(e))
            }
        };
        r?;
        self.acked_ops.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.maybe_commit()
    }

    /// Commits if dirty metadata or the log asks for it.
    pub(super) fn maybe_commit(&self) -> Result<(), VdeError> {
        let mut st = self.state()?;
        if st.wants_commit(&self.log) {
            st.commit(&self.log)?;
        }
        Ok(())
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
        let blocks = data.len().div_ceil(BLOCK) as u64;
        let runs = {
            let mut st = self.state()?;
            st.reserve(&self.log, blocks, MAX_EXTENT_BLOCKS, MAX_EXTENTS)?
        };
        debug_assert!(runs.len() <= MAX_EXTENTS, "{} runs", runs.len());
        let written = self
            .write_runs(&runs, data)
            .and_then(|w| self.state().map(|st| (w, st)));
        let (extents, mut st) = match written {
            Ok(x) => x,
            Err(e) => {
                let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
                for &(s, n) in &runs {
                    st.space.unreserve(s, n);
                }
                return Err(e);
            }
        };
        let value = ObjectValue {
            size: data.len() as u64,
            birth: st.txg,
            extents,
        };
        let txg = st.txg;
        if let Err(e) = self.apply_put(&mut st, key, &value) {
            return Err(st.poison(e));
        }
        drop(st);
        let mut r = Vec::with_capacity(pool::RECORD_HEADER + 1 + key.len() + 17 + 20 * value.extents.len());
        r.extend_from_slice(&pool::record(rec::PUT, txg));
        r.push(key.len() as u8);
        r.extend_from_slice(key);
        r.extend_from_slice(&value.encode());
        self.make_durable(txg, &[&r])
    }

    fn write_runs(&self, runs: &[(u64, u64)], data: &[u8]) -> Result<Vec<(u64, u64, u64)>, VdeError> {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.writing.fetch_add(1, Relaxed) + 1;
        self.max_writing.fetch_max(now, Relaxed);
        let r = self.write_runs_on_a_lane(runs, data);
        self.writing.fetch_sub(1, Relaxed);
        r
    }

    fn write_runs_on_a_lane(&self, runs: &[(u64, u64)], data: &[u8]) -> Result<Vec<(u64, u64, u64)>, VdeError> {
        let mut lane = self.lane()?;
        let mut out = Vec::with_capacity(runs.len());
        let mut at = 0;
        for &(start, blocks) in runs {
            let end = (at + blocks as usize * BLOCK).min(data.len());
            let sum = lane.write_hashed(start, &data[at..end], self.tag)?;
            out.push((start, blocks, sum));
            at = end;
        }
        Ok(out)
    }

    /// Inserts `key` → `value` in the object index of the open txg, frees the old
    /// version's extents and marks the new ones in use.
    fn apply_put(&self, st: &mut State, key: &[u8], value: &ObjectValue) -> Result<(), VdeError> {
        let mut objects = std::mem::replace(&mut st.objects, Tree::open(NodeKind::Objects, None));
        let old = objects.insert(&mut st.io(), key, &value.encode());
        st.objects = objects;
        let old = old?;
        st.free_released();
        match old {
            Some(old) => self.free_object(st, key, &old)?,
            None => st.objects_count += 1,
        }
        for &(s, n, _) in &value.extents {
            st.space.commit_use(s, n);
        }
        st.ops_since_commit += 1;
        Ok(())
    }

    fn free_object(&self, st: &mut State, key: &[u8], old: &[u8]) -> Result<(), VdeError> {
        let old =
            ObjectValue::decode(old, st.sb.pool_start(), st.sb.total_blocks).map_err(|reason| VdeError::Corrupt {
                block: 0,
                kind: NodeKind::Objects.name(),
                reason: format!("object {:?}: {reason}", lossy(key)),
            })?;
        for (s, n, _) in old.extents {
            st.space.free(s, n);
        }
        Ok(())
    }

    fn apply_delete(&self, st: &mut State, key: &[u8]) -> Result<bool, VdeError> {
        let mut objects = std::mem::replace(&mut st.objects, Tree::open(NodeKind::Objects, None));
        let old = objects.remove(&mut st.io(), key);
        st.objects = objects;
        let old = old?;
        st.free_released();
        let Some(old) = old else { return Ok(false) };
        self.free_object(st, key, &old)?;
        st.objects_count -= 1;
        st.ops_since_commit += 1;
        Ok(true)
    }

    /// The object stored under `key`.
    ///
    /// Errors: [`VdeError::NotFound`], [`VdeError::DataCorrupt`], [`VdeError::Mismatch`],
    /// I/O errors, [`VdeError::Poisoned`].
    pub fn get(&self, key: &[u8]) -> Result<Vec<u8>, VdeError> {
        check_key(key)?;
        let _r = self.stripe(key).read().unwrap_or_else(|e| e.into_inner());
        let v = self.find(key)?;
        let blocks: u64 = v.extents.iter().map(|e| e.1).sum();
        let mut out = vec![0u8; blocks as usize * BLOCK];
        let mut lane = self.lane()?;
        let mut at = 0;
        for (i, &(start, n, sum)) in v.extents.iter().enumerate() {
            let len = n as usize * BLOCK;
            lane.read(start, &mut out[at..at + len])?;
            if xxh3_64_with_seed(&out[at..at + len], self.tag) != sum {
                return Err(VdeError::DataCorrupt {
                    key: lossy(key),
                    extent: i,
                    start,
                    end: start + n,
                });
            }
            at += len;
        }
        out.truncate(v.size as usize);
        Ok(out)
    }

    fn find(&self, key: &[u8]) -> Result<ObjectValue, VdeError> {
        let mut st = self.state()?;
        let mut objects = std::mem::replace(&mut st.objects, Tree::open(NodeKind::Objects, None));
        let v = objects.get(&mut st.io(), key);
        st.objects = objects;
        let v = v?.ok_or_else(|| VdeError::NotFound(lossy(key)))?;
        ObjectValue::decode(&v, st.sb.pool_start(), st.sb.total_blocks).map_err(|reason| VdeError::Corrupt {
            block: 0,
            kind: NodeKind::Objects.name(),
            reason: format!("object {:?}: {reason}", lossy(key)),
        })
    }

    /// Removes the object under `key`. Durable when it returns `Ok`.
    ///
    /// Errors: [`VdeError::NotFound`], I/O errors, [`VdeError::Poisoned`],
    /// [`VdeError::ReadOnly`].
    pub fn delete(&self, key: &[u8]) -> Result<(), VdeError> {
        check_key(key)?;
        self.check_writable()?;
        let _w = self.stripe(key).write().unwrap_or_else(|e| e.into_inner());
        let mut st = self.state()?;
        let txg = st.txg;
        match self.apply_delete(&mut st, key) {
            Ok(true) => {}
            Ok(false) => return Err(VdeError::NotFound(lossy(key))),
            Err(e) => return Err(st.poison(e)),
        }
        drop(st);
        let mut r = pool::record(rec::DELETE, txg);
        r.push(key.len() as u8);
        r.extend_from_slice(key);
        self.make_durable(txg, &[&r])
    }

    /// The metadata of the object under `key`.
    ///
    /// Errors: [`VdeError::NotFound`], [`VdeError::Mismatch`], I/O errors,
    /// [`VdeError::Poisoned`].
    pub fn stat(&self, key: &[u8]) -> Result<ObjectStat, VdeError> {
        check_key(key)?;
        let v = self.find(key)?;
        Ok(ObjectStat {
            size: v.size,
            version: v.birth,
            extents: v.extents.iter().map(|e| (e.0, e.1)).collect(),
        })
    }

    /// Up to `limit` keys starting with `prefix`, in byte order, after `after` (for the
    /// next page: pass the last key of the previous one).
    ///
    /// Errors: [`VdeError::Mismatch`], I/O errors, [`VdeError::Poisoned`].
    pub fn list(&self, prefix: &[u8], after: Option<&[u8]>, limit: usize) -> Result<Vec<Vec<u8>>, VdeError> {
        let mut st = self.state()?;
        let mut objects = std::mem::replace(&mut st.objects, Tree::open(NodeKind::Objects, None));
        let mut out = Vec::new();
        let r = (|| {
            // Keys > cursor, in pages; the first page starts at the prefix itself.
            let mut cursor = match after {
                Some(a) if a >= prefix => a.to_vec(),
                _ => {
                    if !prefix.is_empty() && limit > 0 && objects.get(&mut st.io(), prefix)?.is_some() {
                        out.push(prefix.to_vec());
                    }
                    prefix.to_vec()
                }
            };
            while out.len() < limit {
                let page = objects.page(&mut st.io(), Some(&cursor), (limit - out.len()).min(256))?;
                let Some((last, _)) = page.last() else { break };
                cursor = last.clone();
                for (k, _) in page {
                    if !k.starts_with(prefix) {
                        return Ok(());
                    }
                    out.push(k);
                }
            }
            Ok::<(), VdeError>(())
        })();
        st.objects = objects;
        r?;
        Ok(out)
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

    /// Totals and counters.
    ///
    /// Errors: [`VdeError::Poisoned`].
    pub fn info(&self) -> Result<VdeInfo, VdeError> {
        let st = self.state()?;
        let log = self.log.stats();
        let acked = self.acked_ops.load(std::sync::atomic::Ordering::Relaxed);
        Ok(VdeInfo {
            total_blocks: st.sb.total_blocks,
            log_start: st.sb.log_start,
            log_blocks: st.sb.log_blocks,
            used_blocks: st.space.used(),
            reserved_blocks: slop_blocks(st.sb.total_blocks),
            objects: st.objects_count,
            txg: st.sb.txg,
            uuid: st.sb.uuid.iter().map(|b| format!("{b:02x}")).collect(),
            pool: st.stats,
            log_flushes: log.flushes,
            log_records: log.records,
            acked_ops: acked,
            max_parallel_data_writes: self.max_writing.load(std::sync::atomic::Ordering::Relaxed),
        })
    }

    /// Checks every invariant of the store from the device (see [`super::check`]).
    ///
    /// Errors: I/O errors that stop the check, [`VdeError::Poisoned`]; violations are in
    /// the report.
    pub fn fsck(&self) -> Result<super::check::FsckReport, VdeError> {
        self.fsck_with_progress(&mut |_| {})
    }

    /// [`Vde::fsck`], calling `progress` after each block it reads and checks (every
    /// metadata block, every data extent), for a progress display.
    ///
    /// Errors: as [`Vde::fsck`].
    pub fn fsck_with_progress(
        &self,
        progress: &mut dyn FnMut(super::check::FsckProgress),
    ) -> Result<super::check::FsckReport, VdeError> {
        super::check::check(self, progress)
    }

    /// Commits the open txg, so the next open has nothing to replay.
    ///
    /// Errors: I/O errors, [`VdeError::Poisoned`].
    pub fn checkpoint(&self) -> Result<(), VdeError> {
        if self.opts.read_only {
            return Ok(());
        }
        self.state()?.commit(&self.log)
    }

    /// Commits and closes the store (dropping it does the same, but can only log a
    /// failure).
    ///
    /// Errors: I/O errors of the commit (the intent log still holds every acknowledged
    /// change).
    pub fn close(self) -> Result<(), VdeError> {
        self.checkpoint()
    }
}

impl Drop for Vde {
    fn drop(&mut self) {
        if self.opts.read_only {
            return;
        }
        if let Ok(mut st) = self.state.lock()
            && st.poisoned.is_none()
            && let Err(e) = st.commit(&self.log)
        {
            tracing::warn!("VDE commit at close failed ({e}); the intent log still holds every acknowledged change");
        }
    }
}
