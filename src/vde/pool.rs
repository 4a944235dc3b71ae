//! Format 2's pool: the superblock pair, transaction groups (txgs), the metadata cache,
//! and replay of the intent log.
//!
//! Every change is applied to in-memory copy-on-write trees while txg T is open and
//! becomes durable one of two ways:
//!
//! - **Commit of txg T** ([`State::commit`](super::store::State::commit)): every dirty tree node and space map block
//!   is written at a new home, one Flush, then the superblock copy `T % 2` that points
//!   at the new roots, and a second Flush. Nothing live is overwritten, so a crash at
//!   any point leaves the previous superblock's tree intact.
//! - **The intent log**, for operations that must be durable before the next commit
//!   (object puts and deletes, a volume's Flush): a record carrying T is appended and
//!   flushed, group-committed with concurrent operations. Replay at open applies the
//!   records whose txg is newer than the committed one and whose data verifies.
//!
//! Blocks a txg frees stay out of reach of allocation until two more txgs have
//! committed ([`SpaceMap::free`]): neither the committed root nor the previous
//! superblock copy can reach a block that is handed out again.

use super::VdeError;
use super::block::{self, BLOCK, Block, BlockPtr, HEADER, NodeKind, check, seal, store_tag};
use super::format::{get32, get64, put32, put64};
use super::lane::Lane;
use super::space::SpaceMap;
use super::tree::{NodeBlock, NodeIo, Tree};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::Arc;

/// The format version this code writes and reads.
pub const VERSION2: u32 = 2;
/// The two superblock copies: txg `T` is written to `SUPER2[T % 2]`.
pub const SUPER2: [u64; 2] = [0, 1];
/// The first block of the intent log region.
pub const LOG_START: u64 = 2;

/// Feature flags a store may carry, as ext4 has them. A store with an `incompat` bit this
/// build does not know is refused; with an unknown `ro_compat` bit it opens read-only
/// only; unknown `compat` bits are ignored. Format 2 as written by this build sets none.
pub mod features {
    /// Compatible features this build knows.
    pub const COMPAT_KNOWN: u64 = 0;
    /// Read-only compatible features this build knows.
    pub const RO_COMPAT_KNOWN: u64 = 0;
    /// Incompatible features this build knows.
    pub const INCOMPAT_KNOWN: u64 = 0;
}

/// The intent log region's size for a store of `total` blocks: 1/256 of it, 64..=4096
/// blocks.
pub fn log_blocks_for(total: u64) -> u64 {
    (total / 256).clamp(64, 4096)
}

/// A format-2 superblock (both copies have this shape; payload offsets after the
/// 32-byte header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock2 {
    /// The txg this copy commits.
    pub txg: u64,
    /// The namespace's logical block size at format time, bytes.
    pub lba_size: u32,
    /// Feature flags ([`features`]).
    pub compat: u64,
    /// Read-only compatible feature flags.
    pub ro_compat: u64,
    /// Incompatible feature flags.
    pub incompat: u64,
    /// The store's identity; its xxh3-64 seeds every checksum.
    pub uuid: [u8; 16],
    /// Blocks in the store.
    pub total_blocks: u64,
    /// Root of the object index.
    pub objects: Option<BlockPtr>,
    /// Root of the dataset directory.
    pub datasets: Option<BlockPtr>,
    /// Root of the space map.
    pub space: Option<BlockPtr>,
    /// The intent log region: first block and length in blocks.
    pub log_start: u64,
    /// Intent log region length, blocks.
    pub log_blocks: u64,
    /// Where replay starts: offset in the log region, and the sequence number expected
    /// there.
    pub log_head: u64,
    /// Sequence number of the block at `log_head`.
    pub log_seq: u64,
    /// Objects stored.
    pub objects_count: u64,
}

/// Payload offsets of the superblock fields (after the header). Documented byte by byte
/// in `docs/vde-format.md`.
mod sb {
    pub const MAGIC: usize = 32; // [u8; 8] "IRONVDE2"
    pub const VERSION: usize = 40; // u32
    pub const BLOCK_SIZE: usize = 44; // u32
    pub const LBA_SIZE: usize = 48; // u32
    pub const COMPAT: usize = 56; // u64
    pub const RO_COMPAT: usize = 64; // u64
    pub const INCOMPAT: usize = 72; // u64
    pub const UUID: usize = 80; // [u8; 16]
    pub const TOTAL: usize = 96; // u64
    pub const TXG: usize = 104; // u64
    pub const OBJECTS: usize = 112; // BlockPtr
    pub const DATASETS: usize = 136; // BlockPtr
    pub const SPACE: usize = 160; // BlockPtr
    pub const LOG_START: usize = 184; // u64
    pub const LOG_BLOCKS: usize = 192; // u64
    pub const LOG_HEAD: usize = 200; // u64
    pub const LOG_SEQ: usize = 208; // u64
    pub const OBJECTS_COUNT: usize = 216; // u64
    /// Everything from here to the checksum is reserved and written as zeros.
    pub const RESERVED: usize = 224;
}

/// Magic bytes at payload offset 0 of a format-2 superblock.
pub const SUPER2_MAGIC: [u8; 8] = *b"IRONVDE2";

impl Superblock2 {
    /// The sealed copy for block `addr`.
    pub fn encode(&self, addr: u64) -> Box<Block> {
        let mut b = Box::new([0u8; BLOCK]);
        b[sb::MAGIC..sb::MAGIC + 8].copy_from_slice(&SUPER2_MAGIC);
        put32(&mut b[..], sb::VERSION, VERSION2);
        put32(&mut b[..], sb::BLOCK_SIZE, BLOCK as u32);
        put32(&mut b[..], sb::LBA_SIZE, self.lba_size);
        put64(&mut b[..], sb::COMPAT, self.compat);
        put64(&mut b[..], sb::RO_COMPAT, self.ro_compat);
        put64(&mut b[..], sb::INCOMPAT, self.incompat);
        b[sb::UUID..sb::UUID + 16].copy_from_slice(&self.uuid);
        put64(&mut b[..], sb::TOTAL, self.total_blocks);
        put64(&mut b[..], sb::TXG, self.txg);
        BlockPtr::put(self.objects, &mut b[..], sb::OBJECTS);
        BlockPtr::put(self.datasets, &mut b[..], sb::DATASETS);
        BlockPtr::put(self.space, &mut b[..], sb::SPACE);
        put64(&mut b[..], sb::LOG_START, self.log_start);
        put64(&mut b[..], sb::LOG_BLOCKS, self.log_blocks);
        put64(&mut b[..], sb::LOG_HEAD, self.log_head);
        put64(&mut b[..], sb::LOG_SEQ, self.log_seq);
        put64(&mut b[..], sb::OBJECTS_COUNT, self.objects_count);
        seal(&mut b, NodeKind::Superblock, 0, self.txg, addr, store_tag(&self.uuid));
        b
    }

    /// Decodes the copy read from block `addr` of a device of `device_blocks` blocks.
    ///
    /// Errors: [`VdeError::NotFormatted`] (zeros), [`VdeError::Unsupported`] (format 1,
    /// another version or block size, unknown incompatible features),
    /// [`VdeError::Mismatch`] / [`VdeError::Corrupt`] (damaged or inconsistent copy).
    pub fn decode(b: &Block, addr: u64, device_blocks: u64) -> Result<Superblock2, VdeError> {
        if b.iter().all(|&x| x == 0) {
            return Err(VdeError::NotFormatted);
        }
        if b[..8] == super::format::SUPER_MAGIC {
            return Err(VdeError::Unsupported(format!(
                "block {addr} holds a format-{} VDE superblock; this build reads format {VERSION2} only. \
                 Copy the objects out with an older ironvme (`vde get`), then `ironvme vde format` and put them back",
                get32(b, 8)
            )));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[sb::UUID..sb::UUID + 16]);
        let tag = store_tag(&uuid);
        check(b, addr, NodeKind::Superblock, None, tag)?;
        let corrupt = |reason: String| VdeError::Corrupt {
            block: addr,
            kind: NodeKind::Superblock.name(),
            reason,
        };
        if b[sb::MAGIC..sb::MAGIC + 8] != SUPER2_MAGIC {
            return Err(corrupt("no IRONVDE2 magic".into()));
        }
        let version = get32(b, sb::VERSION);
        let bs = get32(b, sb::BLOCK_SIZE);
        if version != VERSION2 || bs as usize != BLOCK {
            return Err(VdeError::Unsupported(format!(
                "VDE format version {version} with {bs}-byte blocks (this build reads version {VERSION2}, {BLOCK}-byte blocks)"
            )));
        }
        let s = Superblock2 {
            txg: get64(b, sb::TXG),
            lba_size: get32(b, sb::LBA_SIZE),
            compat: get64(b, sb::COMPAT),
            ro_compat: get64(b, sb::RO_COMPAT),
            incompat: get64(b, sb::INCOMPAT),
            uuid,
            total_blocks: get64(b, sb::TOTAL),
            objects: BlockPtr::get(b, sb::OBJECTS),
            datasets: BlockPtr::get(b, sb::DATASETS),
            space: BlockPtr::get(b, sb::SPACE),
            log_start: get64(b, sb::LOG_START),
            log_blocks: get64(b, sb::LOG_BLOCKS),
            log_head: get64(b, sb::LOG_HEAD),
            log_seq: get64(b, sb::LOG_SEQ),
            objects_count: get64(b, sb::OBJECTS_COUNT),
        };
        if s.txg != get64(b, 8) {
            return Err(corrupt(format!(
                "its txg {} differs from its header's birth {}",
                s.txg,
                get64(b, 8)
            )));
        }
        let unknown = s.incompat & !features::INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(VdeError::Unsupported(format!(
                "the store uses incompatible features {unknown:#x} this build does not know; use a newer ironvme"
            )));
        }
        if s.total_blocks > device_blocks {
            return Err(corrupt(format!(
                "the store has {} blocks but the device only {device_blocks}",
                s.total_blocks
            )));
        }
        if s.log_start != LOG_START
            || s.log_blocks == 0
            || s.log_start
                .checked_add(s.log_blocks)
                .is_none_or(|end| end >= s.total_blocks)
            || s.log_head >= s.log_blocks
        {
            return Err(corrupt(format!(
                "intent log region {}+{} (head {}) does not fit a store of {} blocks",
                s.log_start, s.log_blocks, s.log_head, s.total_blocks
            )));
        }
        // Sequence numbers count log blocks written over the store's life; one this large
        // is damage (and would overflow the log's arithmetic).
        if s.log_seq > u64::MAX / 4 {
            return Err(corrupt(format!(
                "its intent log sequence number {} is implausible",
                s.log_seq
            )));
        }
        for (name, p) in [("objects", s.objects), ("datasets", s.datasets), ("space", s.space)] {
            if let Some(p) = p
                && (p.addr < s.log_start + s.log_blocks || p.addr >= s.total_blocks || p.birth > s.txg)
            {
                return Err(corrupt(format!(
                    "its {name} root {} (txg {}) is outside the pool or newer than the superblock",
                    p.addr, p.birth
                )));
            }
        }
        if b[sb::RESERVED..block::CHECKSUM_AT].iter().any(|&x| x != 0) {
            return Err(corrupt("its reserved bytes are not zero".into()));
        }
        Ok(s)
    }

    /// The first block of the allocatable pool (after the superblocks and the log).
    pub fn pool_start(&self) -> u64 {
        self.log_start + self.log_blocks
    }

    /// The store tag.
    pub fn tag(&self) -> u64 {
        store_tag(&self.uuid)
    }
}

/// Counters since open, for reports and the Flush-per-operation figure.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct PoolStats {
    /// Txgs committed.
    pub commits: u64,
    /// Metadata blocks written by commits (tree nodes and space map blocks).
    pub meta_blocks_written: u64,
    /// Flushes issued by commits (two per commit).
    pub commit_flushes: u64,
    /// Metadata block reads that missed the cache.
    pub cache_misses: u64,
    /// Metadata block reads served from the cache.
    pub cache_hits: u64,
    /// Records replayed from the intent log at open.
    pub replayed: u64,
    /// Replayed records skipped because their data did not verify (never acknowledged).
    pub replay_skipped: u64,
}

/// The metadata cache: clean blocks by number, each with the checksum it was verified
/// against (a reused block number with other contents is a miss).
pub struct Cache {
    lru: LruCache<u64, (u64, Arc<NodeBlock>)>,
}

impl Cache {
    /// A cache of at most `blocks` blocks (4 KiB each).
    pub fn new(blocks: usize) -> Cache {
        Cache {
            lru: LruCache::new(NonZeroUsize::new(blocks.max(16)).expect("non-zero")),
        }
    }
}

/// Metadata I/O of the open txg: reads through the cache, writes queued for the commit,
/// releases collected for the caller to route (free, or a dead list).
pub struct MetaIo<'a> {
    /// The lane metadata goes through.
    pub lane: &'a mut Lane,
    /// Clean blocks.
    pub cache: &'a mut Cache,
    /// Allocation.
    pub space: &'a mut SpaceMap,
    /// Sealed blocks waiting for the commit's write.
    pub writes: &'a mut Vec<(u64, Box<Block>)>,
    /// Blocks the trees stopped referencing: (block, birth).
    pub released: &'a mut Vec<(u64, u64)>,
    /// Counters.
    pub stats: &'a mut PoolStats,
    /// The store tag.
    pub tag: u64,
    /// The open txg.
    pub txg: u64,
    /// Read from the device even when cached (fsck).
    pub bypass_cache: bool,
}

impl NodeIo for MetaIo<'_> {
    fn tag(&self) -> u64 {
        self.tag
    }

    fn txg(&self) -> u64 {
        self.txg
    }

    fn read(&mut self, ptr: &BlockPtr, kind: NodeKind) -> Result<Arc<NodeBlock>, VdeError> {
        if !self.bypass_cache
            && let Some((sum, b)) = self.cache.lru.get(&ptr.addr)
            && *sum == ptr.checksum
        {
            self.stats.cache_hits += 1;
            return Ok(Arc::clone(b));
        }
        if ptr.addr >= self.space.total() {
            return Err(VdeError::Mismatch {
                block: ptr.addr,
                kind: kind.name(),
                expected: format!("a block below {}", self.space.total()),
                found: "a pointer past the end of the store".into(),
            });
        }
        let mut b = Arc::new(NodeBlock::zeroed());
        let bytes = Arc::get_mut(&mut b).expect("not shared yet");
        self.lane.read(ptr.addr, &mut bytes[..])?;
        self.stats.cache_misses += 1;
        check(&b, ptr.addr, kind, Some(ptr), self.tag)?;
        if !self.bypass_cache {
            self.cache.lru.put(ptr.addr, (ptr.checksum, Arc::clone(&b)));
        }
        Ok(b)
    }

    fn alloc(&mut self) -> Result<u64, VdeError> {
        self.space.alloc_meta()
    }

    fn write(&mut self, addr: u64, block: Box<Block>) -> Result<(), VdeError> {
        let sum = get64(&block[..], block::CHECKSUM_AT);
        self.cache.lru.put(addr, (sum, Arc::new(NodeBlock::new(&block))));
        self.writes.push((addr, block));
        Ok(())
    }

    fn release(&mut self, addr: u64, birth: u64) {
        self.released.push((addr, birth));
    }
}

/// Writes the queued metadata blocks in block order (runs of neighbours together).
///
/// Errors: I/O errors.
pub fn write_queued(lane: &mut Lane, writes: &mut Vec<(u64, Box<Block>)>) -> Result<u64, VdeError> {
    writes.sort_by_key(|w| w.0);
    let n = writes.len() as u64;
    for chunk in writes.chunks(256) {
        let refs: Vec<(u64, &Block)> = chunk.iter().map(|(a, b)| (*a, &**b)).collect();
        lane.write_scattered(&refs)?;
    }
    writes.clear();
    Ok(n)
}

/// Reads both superblock copies and returns the valid one with the highest txg, and
/// whether the other copy was damaged (for read-only opens, which cannot repair it).
///
/// Errors: [`VdeError::NotFormatted`] when both are blank; the newer copy's error when
/// neither is valid (format 1, unknown features, damage).
pub fn read_superblocks(lane: &mut Lane, device_blocks: u64) -> Result<(Superblock2, bool), VdeError> {
    let mut copies = Vec::with_capacity(2);
    // Copy 1's magic and birth (header offsets 0 and 8).
    let mut first = (0, 0);
    for at in SUPER2 {
        let mut b = Box::new([0u8; BLOCK]);
        lane.read(at, &mut b[..])?;
        if at == SUPER2[1] {
            first = (get32(&b[..], 0), get64(&b[..], 8));
        }
        copies.push(Superblock2::decode(&b, at, device_blocks));
    }
    let [a, b]: [Result<Superblock2, VdeError>; 2] = copies.try_into().map_err(|_| VdeError::NotFormatted)?;
    match (a, b) {
        (Ok(x), Ok(y)) => {
            if x.uuid != y.uuid {
                // Two stores' superblocks: the newer format wins only if it is the
                // other's successor; otherwise something wrote over half of a store.
                return Err(VdeError::Corrupt {
                    block: 0,
                    kind: NodeKind::Superblock.name(),
                    reason: "the two superblock copies belong to different stores".into(),
                });
            }
            Ok((if x.txg >= y.txg { x } else { y }, false))
        }
        (Ok(x), Err(_)) | (Err(_), Ok(x)) => Ok((x, true)),
        (Err(VdeError::NotFormatted), Err(VdeError::NotFormatted)) => Err(VdeError::NotFormatted),
        // Format writes txg 1 to copy 1 after zeroing both, and every later commit writes
        // copy 0 first (txg 2): copy 0 blank and copy 1 bad with a blank header or one of
        // txg 1 is format's superblock write torn by a crash. Format promises "not
        // formatted" then, never a half-made store.
        (Err(VdeError::NotFormatted), Err(_)) if first.0 == 0 || (first.0 == block::MAGIC2 && first.1 == 1) => {
            Err(VdeError::NotFormatted)
        }
        (Err(e @ VdeError::Unsupported(_)), _) | (_, Err(e @ VdeError::Unsupported(_))) => Err(e),
        (Err(VdeError::NotFormatted), Err(e)) | (Err(e), _) => Err(e),
    }
}

/// The tree of `kind` rooted at `root` (a new, empty one for `None`).
pub fn open_tree(kind: NodeKind, root: Option<BlockPtr>) -> Tree {
    Tree::open(kind, root)
}

/// Encoded bytes of a header-less record, for the intent log: the kind byte and txg.
pub const RECORD_HEADER: usize = 9;

/// Starts a log record of `kind` for txg `txg`.
pub fn record(kind: u8, txg: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(64);
    r.push(kind);
    r.extend_from_slice(&txg.to_le_bytes());
    r
}

/// Unused: kept so the header offset constant has one definition.
const _: () = assert!(HEADER == 32);
