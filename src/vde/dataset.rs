//! Thin volumes, snapshots and clones (format 2), tracked ZFS's way: by birth txg and
//! dead lists.
//!
//! A **volume** is a dataset whose extent map sends volume blocks (4 KiB) to data
//! extents; unmapped blocks read as zeros. Every extent and every tree node records its
//! birth txg. A **snapshot** `VOL@SNAP` is a dataset record holding the volume's extent
//! map root as it was when txg `T` committed: creating one commits the open txg and
//! copies one pointer, whatever the volume's size. The volume remembers `prev_txg`, the
//! txg of its newest snapshot (or of its origin, for a clone).
//!
//! When the volume stops referencing a block (an overwrite, Write Zeroes, Deallocate, or
//! copying a tree node on write), the block is freed at once if it was born after
//! `prev_txg` (no snapshot can hold it), and otherwise goes on the volume's **dead
//! list**, keyed by (birth, block). Creating a snapshot hands the volume's dead list to
//! the snapshot and starts an empty one. Deleting snapshot S, between P (the one before,
//! `S.prev_txg`) and N (the one after, or the volume):
//!
//! - the entries of N's dead list born in `(P.txg, S.txg]` were held by S alone: freed;
//! - S's own dead list (blocks born before P, which P holds) moves to N's;
//! - S's dead-list tree blocks are freed.
//!
//! No scan of the whole volume, and exactly the blocks nothing else references are
//! freed. Why birth times rather than reference counts: a snapshot costs one pointer
//! instead of touching a count for every shared extent, a partial overwrite of a shared
//! extent needs no count splitting, and `send` finds what changed since a snapshot by
//! pruning every subtree born before it (`docs/vde-format.md` has the longer argument).
//!
//! A **clone** is a volume whose extent map starts as a snapshot's; `prev_txg` is the
//! snapshot's txg, so blocks it shares with its origin go on its dead list when it
//! overwrites them. A snapshot with clones cannot be deleted (as in ZFS, without
//! promotion).

use super::VdeError;
use super::block::{BLOCK, BlockPtr, NodeKind};
use super::format::{get32, get64};
use super::pool;
use super::store::{State, Vde, rec};
use super::tree::{Tree, Visit};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Longest data extent of a volume, in blocks (128 KiB): its per-block checksums fit a
/// tree entry.
pub const MAX_VOL_EXTENT: u64 = 32;
/// How many times a volume read whose data fails its checksum looks its extents up
/// again and retries ([`Vde::vol_read`]). A read plans first (the extents' device blocks
/// and checksums, under the store's lock) and reads the blocks after (without it); an
/// overwrite, Write Zeroes or Deallocate in between frees the planned blocks, and once
/// the second commit after the free releases them another write may reuse them, so the
/// read finds other bytes although nothing is corrupt. A new plan that differs from the
/// old one means the volume changed: read again. A new plan equal to the old one means
/// the blocks are still the volume's and hold the wrong bytes: the corruption is real,
/// and reported at once.
pub const READ_REPLANS: usize = 3;
/// Longest volume or snapshot name, bytes.
pub const MAX_NAME: usize = 64;
/// Dead list entry kinds.
const DEAD_DATA: u8 = 0;
const DEAD_META: u8 = 1;

/// What a dataset record describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum DatasetKind {
    /// A writable volume (or clone).
    Volume,
    /// A read-only snapshot.
    Snapshot,
}

/// A dataset record in the dataset directory (key: `VOL` or `VOL@SNAP`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetRec {
    /// Volume or snapshot.
    pub kind: DatasetKind,
    /// Globally unique id: random, non-zero; a received dataset keeps its sender's.
    /// Replication matches snapshots by it (ZFS's `guid`).
    pub guid: u64,
    /// Size in bytes (a multiple of 4096).
    pub size: u64,
    /// The txg it was created in (a snapshot: the txg whose state it holds).
    pub created_txg: u64,
    /// A volume: its newest snapshot's txg, or its origin's, or 0. A snapshot: the txg of
    /// the snapshot before it (or of the origin), or 0.
    pub prev_txg: u64,
    /// Root of the extent map.
    pub extents: Option<BlockPtr>,
    /// Root of the dead list.
    pub deadlist: Option<BlockPtr>,
    /// Data blocks the extent map references.
    pub refer_blocks: u64,
    /// Blocks (data and tree nodes) on the dead list.
    pub dead_blocks: u64,
    /// A snapshot: clones made from it.
    pub clones: u32,
    /// A clone: its origin snapshot `VOL@SNAP` (empty otherwise).
    pub origin: Vec<u8>,
    /// A receive's hidden volume (`VOL%recv`): the volume byte offset up to which the
    /// stream's records are applied and durable (a resume starts there); 0 otherwise.
    pub recv_offset: u64,
}

impl DatasetRec {
    /// Encoded: `u8 kind, u8 0, u16 0, u32 block size (4096), u64 guid, u64 size,
    /// u64 created_txg, u64 prev_txg, BlockPtr extents, BlockPtr deadlist,
    /// u64 refer_blocks, u64 dead_blocks, u32 clones, u8 origin length, u64 recv_offset,
    /// origin`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![0u8; 117];
        v[0] = match self.kind {
            DatasetKind::Volume => 1,
            DatasetKind::Snapshot => 2,
        };
        v[4..8].copy_from_slice(&(BLOCK as u32).to_le_bytes());
        for (at, x) in [
            (8, self.guid),
            (16, self.size),
            (24, self.created_txg),
            (32, self.prev_txg),
        ] {
            v[at..at + 8].copy_from_slice(&x.to_le_bytes());
        }
        BlockPtr::put(self.extents, &mut v, 40);
        BlockPtr::put(self.deadlist, &mut v, 64);
        v[88..96].copy_from_slice(&self.refer_blocks.to_le_bytes());
        v[96..104].copy_from_slice(&self.dead_blocks.to_le_bytes());
        v[104..108].copy_from_slice(&self.clones.to_le_bytes());
        v[108] = self.origin.len() as u8;
        v[109..117].copy_from_slice(&self.recv_offset.to_le_bytes());
        v.extend_from_slice(&self.origin);
        v
    }

    /// Decodes a record.
    ///
    /// Errors: a description of what is wrong.
    pub fn decode(v: &[u8]) -> Result<DatasetRec, String> {
        if v.len() < 117 {
            return Err(format!("dataset record of {} bytes is too short", v.len()));
        }
        let kind = match v[0] {
            1 => DatasetKind::Volume,
            2 => DatasetKind::Snapshot,
            k => return Err(format!("unknown dataset kind {k}")),
        };
        if get32(v, 4) as usize != BLOCK {
            return Err(format!("volume block size {} is not {BLOCK}", get32(v, 4)));
        }
        let olen = v[108] as usize;
        if v.len() != 117 + olen || olen > 2 * MAX_NAME + 1 {
            return Err(format!("dataset record of {} bytes with an origin of {olen}", v.len()));
        }
        let size = get64(v, 16);
        if size % BLOCK as u64 != 0 {
            return Err(format!("volume size {size} is not a multiple of {BLOCK}"));
        }
        Ok(DatasetRec {
            kind,
            guid: get64(v, 8),
            size,
            created_txg: get64(v, 24),
            prev_txg: get64(v, 32),
            extents: BlockPtr::get(v, 40),
            deadlist: BlockPtr::get(v, 64),
            refer_blocks: get64(v, 88),
            dead_blocks: get64(v, 96),
            clones: get32(v, 104),
            origin: v[117..].to_vec(),
            recv_offset: get64(v, 109),
        })
    }
}

/// One data extent of a volume: `len` blocks at `pba`, born in `birth`, with the
/// xxh3-64 (seeded with the store tag) of each block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolExtent {
    /// First block on the device.
    pub pba: u64,
    /// Blocks (1..=[`MAX_VOL_EXTENT`]).
    pub len: u64,
    /// The txg that wrote it.
    pub birth: u64,
    /// One checksum per block.
    pub sums: Vec<u64>,
}

impl VolExtent {
    /// Encoded: `u64 pba, u32 len, u64 birth, len × u64 checksum`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(20 + 8 * self.sums.len());
        self.encode_into(&mut v);
        v
    }

    /// [`VolExtent::encode`], appended to `v`.
    pub fn encode_into(&self, v: &mut Vec<u8>) {
        v.extend_from_slice(&self.pba.to_le_bytes());
        v.extend_from_slice(&(self.len as u32).to_le_bytes());
        v.extend_from_slice(&self.birth.to_le_bytes());
        for s in &self.sums {
            v.extend_from_slice(&s.to_le_bytes());
        }
    }

    /// Decodes and checks an extent against a pool `first..total`.
    ///
    /// Errors: a description of what is wrong.
    pub fn decode(v: &[u8], first: u64, total: u64) -> Result<VolExtent, String> {
        if v.len() < 20 {
            return Err(format!("extent of {} bytes is too short", v.len()));
        }
        let (pba, len, birth) = (get64(v, 0), get32(v, 8) as u64, get64(v, 12));
        if len == 0 || len > MAX_VOL_EXTENT || v.len() as u64 != 20 + 8 * len {
            return Err(format!("extent of {len} blocks in {} bytes", v.len()));
        }
        if pba < first || pba.saturating_add(len) > total {
            return Err(format!("extent {pba}+{len} is outside the pool {first}..{total}"));
        }
        Ok(VolExtent {
            pba,
            len,
            birth,
            sums: (0..len as usize).map(|i| get64(v, 20 + 8 * i)).collect(),
        })
    }

    /// The blocks `from..from + n` of this extent (offsets in blocks).
    pub fn slice(&self, from: u64, n: u64) -> VolExtent {
        VolExtent {
            pba: self.pba + from,
            len: n,
            birth: self.birth,
            sums: self.sums[from as usize..(from + n) as usize].to_vec(),
        }
    }
}

/// A new dataset GUID: random, non-zero.
pub fn new_guid() -> u64 {
    loop {
        let g = u64::from_le_bytes(super::format::random_uuid()[..8].try_into().expect("8 bytes"));
        if g != 0 {
            return g;
        }
    }
}

fn vkey(vblock: u64) -> [u8; 8] {
    vblock.to_be_bytes()
}

fn dkey(birth: u64, addr: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&birth.to_be_bytes());
    k[8..].copy_from_slice(&addr.to_be_bytes());
    k
}

/// An open volume (or snapshot, read-only) in memory: its record and trees.
pub struct Head {
    /// The record (roots as last committed; counters current).
    pub rec: DatasetRec,
    /// The extent map.
    pub extents: Tree,
    /// The dead list.
    pub deadlist: Tree,
    /// Changed since the last commit.
    pub dirty: bool,
}

impl Head {
    /// A clean head for `rec`: its trees as the record's roots say.
    pub fn new(rec: DatasetRec) -> Head {
        Head {
            extents: Tree::open(NodeKind::Extents, rec.extents),
            deadlist: Tree::open(NodeKind::Deadlist, rec.deadlist),
            rec,
            dirty: false,
        }
    }

    /// Dirty tree nodes held.
    pub fn dirty_nodes(&self) -> usize {
        self.extents.dirty_nodes() + self.deadlist.dirty_nodes()
    }
}

fn corrupt(name: &[u8], reason: String) -> VdeError {
    VdeError::Corrupt {
        block: 0,
        kind: NodeKind::Datasets.name(),
        reason: format!("{}: {reason}", String::from_utf8_lossy(name)),
    }
}

pub(super) fn not_found(name: &[u8]) -> VdeError {
    VdeError::NotFound(String::from_utf8_lossy(name).into_owned())
}

/// Checks a volume or snapshot name part: 1..=64 bytes of `[A-Za-z0-9_.:-]`.
///
/// Errors: [`VdeError::Unsupported`] saying what is wrong.
pub fn check_name(what: &str, name: &str) -> Result<(), VdeError> {
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
    {
        return Err(VdeError::Unsupported(format!(
            "{what} name {name:?}: use 1 to {MAX_NAME} of A-Z a-z 0-9 _ . : -"
        )));
    }
    Ok(())
}

/// Refuses a receive's hidden volume (`VOL%recv`, [`super::replicate`]): only the receive
/// writes it, and `vde recv -A` discards it.
///
/// Errors: [`VdeError::Unsupported`].
pub fn check_visible(name: &str) -> Result<(), VdeError> {
    if name.contains('%') {
        return Err(VdeError::Unsupported(format!(
            "{name} is a receive's hidden volume: only the receive changes it (`vde recv -A` discards it)"
        )));
    }
    Ok(())
}

/// Runs `f` on the tree taken out of `st.datasets` (so `st.io()` can be borrowed).
pub(super) fn with_datasets<R>(
    st: &mut State,
    f: impl FnOnce(&mut Tree, &mut State) -> Result<R, VdeError>,
) -> Result<R, VdeError> {
    let mut t = std::mem::replace(&mut st.datasets, Tree::open(NodeKind::Datasets, None));
    let r = f(&mut t, st);
    st.datasets = t;
    st.free_released();
    r
}

/// The record of `name`, from an open head or the directory.
pub fn lookup(st: &mut State, name: &[u8]) -> Result<Option<DatasetRec>, VdeError> {
    if let Some(h) = st.heads.get(name) {
        return Ok(Some(h.rec.clone()));
    }
    let v = with_datasets(st, |t, st| t.get(&mut st.io(), name))?;
    v.map(|v| DatasetRec::decode(&v).map_err(|r| corrupt(name, r)))
        .transpose()
}

pub(super) fn store_rec(st: &mut State, name: &[u8], rec: &DatasetRec) -> Result<(), VdeError> {
    if let Some(h) = st.heads.get_mut(name) {
        h.rec = rec.clone();
    }
    let v = rec.encode();
    with_datasets(st, |t, st| t.insert(&mut st.io(), name, &v).map(|_| ()))
}

/// Opens `name`'s head in `st.heads` (loading its record) and returns it taken out of
/// the map; put it back with [`put_head`].
pub(super) fn take_head(st: &mut State, name: &[u8]) -> Result<Head, VdeError> {
    take_head_keyed(st, name).map(|(_, h)| h)
}

/// As [`take_head`], with the key to put it back under (`st.heads.insert(key, h)`): an
/// open head's own, so the per-I/O paths allocate no name.
fn take_head_keyed(st: &mut State, name: &[u8]) -> Result<(Vec<u8>, Head), VdeError> {
    if let Some(kh) = st.heads.remove_entry(name) {
        return Ok(kh);
    }
    let rec = lookup(st, name)?.ok_or_else(|| not_found(name))?;
    Ok((name.to_vec(), Head::new(rec)))
}

pub(super) fn put_head(st: &mut State, name: &[u8], h: Head) {
    st.heads.insert(name.to_vec(), h);
}

/// Takes snapshot `full` (`VOL@SNAP`) of volume `vol` with GUID `guid` in the open txg:
/// the volume's trees are written, the snapshot's record holds its extent map root and
/// dead list, and the volume starts an empty dead list. The caller commits (or poisons
/// the store on error).
pub(super) fn snapshot_head(st: &mut State, vol: &[u8], full: &[u8], guid: u64) -> Result<(), VdeError> {
    let mut h = take_head(st, vol)?;
    let r = (|| {
        write_trees(st, &mut h)?;
        let txg = st.txg;
        let snap_rec = DatasetRec {
            kind: DatasetKind::Snapshot,
            guid,
            created_txg: txg,
            origin: Vec::new(),
            clones: 0,
            recv_offset: 0,
            ..h.rec.clone()
        };
        store_rec(st, full, &snap_rec)?;
        h.rec.prev_txg = txg;
        h.rec.deadlist = None;
        h.rec.dead_blocks = 0;
        h.deadlist = Tree::open(NodeKind::Deadlist, None);
        h.dirty = true;
        Ok(())
    })();
    put_head(st, vol, h);
    r
}

/// Writes head `h`'s dirty trees and points its record at them: the extent map (the
/// blocks it released routed: freed, or onto the dead list), then the dead list (its
/// released blocks are its own: freed).
fn write_trees(st: &mut State, h: &mut Head) -> Result<(), VdeError> {
    let root = h.extents.commit(&mut st.io())?;
    route(st, h)?;
    h.rec.extents = root;
    let saved = std::mem::take(&mut st.released);
    let dl = h.deadlist.commit(&mut st.io());
    st.free_released();
    st.released = saved;
    h.rec.deadlist = dl?;
    Ok(())
}

/// Routes the blocks the head's extent map released: born after `prev_txg` → freed; else
/// → the dead list (a snapshot holds them).
fn route(st: &mut State, h: &mut Head) -> Result<(), VdeError> {
    let released = std::mem::take(&mut st.released);
    for (addr, birth) in released {
        kill(st, h, addr, 1, birth, DEAD_META)?;
    }
    Ok(())
}

/// `len` blocks at `addr` born in `birth` left the head: free them, or put them on its dead
/// list when a snapshot (or the origin) still holds them.
fn kill(st: &mut State, h: &mut Head, addr: u64, len: u64, birth: u64, kind: u8) -> Result<(), VdeError> {
    if birth > h.rec.prev_txg {
        st.space.free(addr, len);
        return Ok(());
    }
    let mut v = [0u8; 5];
    v[..4].copy_from_slice(&(len as u32).to_le_bytes());
    v[4] = kind;
    let saved = std::mem::take(&mut st.released);
    let r = h.deadlist.insert(&mut st.io(), &dkey(birth, addr), &v);
    // Dead-list blocks belong to this dataset alone: freed, never routed.
    st.free_released();
    st.released = saved;
    r?;
    count_more(&mut h.rec.dead_blocks, len, "dead")
}

/// The extents overlapping `vblock..vblock + n`, in order, as (first volume block, extent).
///
/// Errors: [`VdeError::Corrupt`] if the map's extents overlap or end past 2^64 (a
/// damaged or forged map), I/O errors.
fn overlapping(st: &mut State, h: &mut Head, vblock: u64, n: u64) -> Result<Vec<(u64, VolExtent)>, VdeError> {
    let out = overlapping_unchecked(st, h, vblock, n)?;
    // Extents of one map never overlap; a damaged (or forged) map whose extents do
    // would make the callers' arithmetic go wrong.
    for w in out.windows(2) {
        if w[1].0 < w[0].0 + w[0].1.len {
            return Err(VdeError::Corrupt {
                block: 0,
                kind: NodeKind::Extents.name(),
                reason: format!(
                    "extents at volume blocks {}+{} and {}+{} overlap",
                    w[0].0, w[0].1.len, w[1].0, w[1].1.len
                ),
            });
        }
    }
    Ok(out)
}

/// An extent map entry (key, value) as (first volume block, extent), checked against a
/// pool `first..total` and against ending past 2^64.
///
/// Errors: [`VdeError::Corrupt`] naming what is wrong.
pub fn decode_entry(k: &[u8], v: &[u8], first: u64, total: u64) -> Result<(u64, VolExtent), VdeError> {
    let corrupt = |reason: String| VdeError::Corrupt {
        block: 0,
        kind: NodeKind::Extents.name(),
        reason,
    };
    let e = VolExtent::decode(v, first, total).map_err(corrupt)?;
    let k: [u8; 8] = k
        .try_into()
        .map_err(|_| corrupt(format!("extent key of {} bytes", k.len())))?;
    let s = u64::from_be_bytes(k);
    if s.checked_add(e.len).is_none() {
        return Err(corrupt(format!(
            "extent at volume block {s} of {} blocks ends past 2^64",
            e.len
        )));
    }
    Ok((s, e))
}

/// [`overlapping`] without the check that the extents found do not overlap.
fn overlapping_unchecked(st: &mut State, h: &mut Head, vblock: u64, n: u64) -> Result<Vec<(u64, VolExtent)>, VdeError> {
    let (first, total) = (st.sb.pool_start(), st.sb.total_blocks);
    let end = vblock + n;
    let mut out = Vec::new();
    let decode = |k: &[u8], v: &[u8]| decode_entry(k, v, first, total);
    let mut cursor = match h.extents.floor(&mut st.io(), &vkey(vblock))? {
        Some((k, v)) => {
            let (s, e) = decode(&k, &v)?;
            if s + e.len > vblock {
                let covers = s + e.len >= end;
                out.push((s, e));
                if covers {
                    return Ok(out);
                }
            }
            k
        }
        None => vkey(vblock).to_vec(),
    };
    // Pages grow: most ranges end within the next extent or two.
    let mut limit = 2;
    loop {
        let page = h.extents.page(&mut st.io(), Some(&cursor), limit)?;
        let Some(last) = page.last() else { break };
        cursor = last.0.clone();
        for (k, v) in &page {
            let (s, e) = decode(k, v)?;
            if s >= end {
                return Ok(out);
            }
            if out.last().is_none_or(|l| l.0 != s) {
                out.push((s, e));
            }
        }
        if page.len() < limit {
            break;
        }
        limit = (limit * 2).min(64);
    }
    Ok(out)
}

/// Removes the mapping of `vblock..vblock + n` from the head: the extents it overlaps are
/// cut (a partly covered extent keeps its other pieces: at most a head and a tail), the
/// covered blocks are killed.
fn unmap(st: &mut State, h: &mut Head, vblock: u64, n: u64) -> Result<(), VdeError> {
    let end = vblock + n;
    for (s, e) in overlapping(st, h, vblock, n)? {
        let r = h.extents.remove(&mut st.io(), &vkey(s));
        route(st, h)?;
        r?;
        let cut_from = vblock.max(s) - s;
        let cut_to = end.min(s + e.len) - s;
        if cut_from > 0 {
            let r = h.extents.insert(&mut st.io(), &vkey(s), &e.slice(0, cut_from).encode());
            route(st, h)?;
            r?;
        }
        if cut_to < e.len {
            let r = h.extents.insert(
                &mut st.io(),
                &vkey(s + cut_to),
                &e.slice(cut_to, e.len - cut_to).encode(),
            );
            route(st, h)?;
            r?;
        }
        kill(st, h, e.pba + cut_from, cut_to - cut_from, e.birth, DEAD_DATA)?;
        count_less(&mut h.rec.refer_blocks, cut_to - cut_from, "referenced")?;
    }
    h.dirty = true;
    Ok(())
}

/// Maps `vblock..` to the new extent `e` (written in the open txg).
fn map(st: &mut State, h: &mut Head, vblock: u64, e: &VolExtent) -> Result<(), VdeError> {
    unmap(st, h, vblock, e.len)?;
    let r = h.extents.insert(&mut st.io(), &vkey(vblock), &e.encode());
    route(st, h)?;
    r?;
    st.space.commit_use(e.pba, e.len);
    count_more(&mut h.rec.refer_blocks, e.len, "referenced")?;
    h.dirty = true;
    Ok(())
}

/// Writes every dirty head's trees and stores its record (called by the commit).
///
/// Errors: I/O errors.
pub fn commit_heads(st: &mut State) -> Result<(), VdeError> {
    let names: Vec<Vec<u8>> = st
        .heads
        .iter()
        .filter(|(_, h)| h.dirty)
        .map(|(n, _)| n.clone())
        .collect();
    for name in names {
        let mut h = st.heads.remove(&name).expect("listed");
        let r = write_trees(st, &mut h).and_then(|_| store_rec(st, &name, &h.rec));
        h.dirty = false;
        st.heads.insert(name, h);
        r?;
    }
    // Heads stay open (their trees are clean now); drop them past a bound.
    if st.heads.len() > 256 {
        st.heads.clear();
    }
    Ok(())
}

/// Where a volume's data is for a read: pieces in order, `None` for a hole.
pub type Pieces = Vec<(u64, u64, Option<VolExtent>)>;

fn pieces(st: &mut State, h: &mut Head, vblock: u64, n: u64) -> Result<Pieces, VdeError> {
    let mut out = Vec::new();
    let mut at = vblock;
    let end = vblock + n;
    for (s, e) in overlapping(st, h, vblock, n)? {
        if s > at {
            out.push((at, s - at, None));
        }
        let from = at.max(s);
        let to = end.min(s + e.len);
        let piece = if from == s && to == s + e.len {
            e
        } else {
            e.slice(from - s, to - from)
        };
        out.push((from, to - from, Some(piece)));
        at = to;
    }
    if at < end {
        out.push((at, end - at, None));
    }
    Ok(out)
}

/// A volume's or snapshot's space, as `vol ls` and `snap ls` show it (bytes).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DatasetInfo {
    /// `VOL` or `VOL@SNAP`.
    pub name: String,
    /// Volume or snapshot.
    pub kind: DatasetKind,
    /// Volume size in bytes.
    pub size: u64,
    /// Bytes of data the dataset references (ZFS `refer`).
    pub refer: u64,
    /// A volume: bytes it uses with its snapshots (ZFS `used`: what destroying the volume
    /// and its snapshots frees). A snapshot: what deleting it frees (its unique bytes).
    pub used: u64,
    /// Bytes referenced by this dataset alone (a volume: written since its newest
    /// snapshot or origin; a snapshot: equal to `used`).
    pub unique: u64,
    /// The txg it was created in.
    pub created_txg: u64,
    /// A clone's origin snapshot.
    pub origin: Option<String>,
    /// A snapshot's clones.
    pub clones: u32,
}

/// Most volume blocks one step of an unmap covers (32 MiB): a Deallocate of a whole
/// large volume, or a shrink, goes in steps, each with its own intent log record and a
/// commit when one is due, so the extents it holds and the tree nodes it dirties stay
/// bounded whatever the volume's size.
pub const UNMAP_STEP: u64 = 8192;

/// `*count -= by` for a block count of a dataset record, which was read from the device:
/// a damaged or forged record whose count is smaller than what it loses is an error
/// ([`VdeError::Corrupt`]), not an overflow.
fn count_less(count: &mut u64, by: u64, what: &str) -> Result<(), VdeError> {
    *count = count.checked_sub(by).ok_or_else(|| VdeError::Corrupt {
        block: 0,
        kind: NodeKind::Datasets.name(),
        reason: format!("a dataset record counts {count} {what} blocks, fewer than the {by} it loses"),
    })?;
    Ok(())
}

/// `*count += by`, likewise.
fn count_more(count: &mut u64, by: u64, what: &str) -> Result<(), VdeError> {
    *count = count.checked_add(by).ok_or_else(|| VdeError::Corrupt {
        block: 0,
        kind: NodeKind::Datasets.name(),
        reason: format!("a dataset record counts {count} {what} blocks, too many to add {by}"),
    })?;
    Ok(())
}

/// `blocks` VDE blocks in bytes, saturating: a count read from a damaged (or forged)
/// record shows as a huge number (fsck names the record) instead of overflowing.
fn bytes(blocks: u64) -> u64 {
    blocks.saturating_mul(BLOCK as u64)
}

impl Vde {
    /// Takes the topology lock (see the field `topology`).
    pub(super) fn topology(&self) -> std::sync::MutexGuard<'_, ()> {
        self.topology.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn writable(&self) -> Result<(), VdeError> {
        if self.opts.read_only {
            return Err(VdeError::ReadOnly);
        }
        Ok(())
    }

    /// Creates a thin volume of `size` bytes (a multiple of 4096; nothing is allocated
    /// until written). Durable when it returns.
    ///
    /// Errors: [`VdeError::Unsupported`] (name, size), [`VdeError::Exists`], I/O errors.
    pub fn vol_create(&self, name: &str, size: u64) -> Result<(), VdeError> {
        check_name("volume", name)?;
        self.vol_create_named(name, size, new_guid())
    }

    /// [`Vde::vol_create`] without the name check and with GUID `guid`: receive's hidden
    /// `VOL%recv`.
    pub(super) fn vol_create_named(&self, name: &str, size: u64, guid: u64) -> Result<(), VdeError> {
        self.writable()?;
        let _t = self.topology();
        if size == 0 || size % BLOCK as u64 != 0 || size > (1u64 << 60) {
            return Err(VdeError::Unsupported(format!(
                "volume size {size} bytes: use a non-zero multiple of {BLOCK} bytes"
            )));
        }
        let mut st = self.state()?;
        if lookup(&mut st, name.as_bytes())?.is_some() {
            return Err(VdeError::Exists(name.to_string()));
        }
        let rec = DatasetRec {
            kind: DatasetKind::Volume,
            guid,
            size,
            created_txg: st.txg,
            prev_txg: 0,
            extents: None,
            deadlist: None,
            refer_blocks: 0,
            dead_blocks: 0,
            clones: 0,
            origin: Vec::new(),
            recv_offset: 0,
        };
        store_rec(&mut st, name.as_bytes(), &rec).map_err(|e| st.poison(e))?;
        st.commit(&self.log)
    }

    /// Every dataset whose name starts with `prefix`, in name order (paged through the
    /// directory; memory is one page plus the result).
    pub(super) fn datasets_with_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, DatasetRec)>, VdeError> {
        let mut st = self.state()?;
        // Open heads hold newer records than the directory: commit them first.
        if st.heads.values().any(|h| h.dirty) {
            st.commit(&self.log)?;
        }
        let mut out = Vec::new();
        let mut cursor = prefix.to_vec();
        if let Some(v) = with_datasets(&mut st, |t, st| t.get(&mut st.io(), prefix))? {
            out.push((prefix.to_vec(), DatasetRec::decode(&v).map_err(|r| corrupt(prefix, r))?));
        }
        loop {
            let page = with_datasets(&mut st, |t, st| t.page(&mut st.io(), Some(&cursor), 256))?;
            let Some(last) = page.last() else { break };
            cursor = last.0.clone();
            for (k, v) in page {
                if !k.starts_with(prefix) {
                    return Ok(out);
                }
                let r = DatasetRec::decode(&v).map_err(|r| corrupt(&k, r))?;
                out.push((k, r));
            }
        }
        Ok(out)
    }

    /// The snapshots of volume `vol`, oldest first.
    pub(super) fn snapshots_of(&self, vol: &str) -> Result<Vec<(Vec<u8>, DatasetRec)>, VdeError> {
        let mut v = self.datasets_with_prefix(format!("{vol}@").as_bytes())?;
        v.sort_by_key(|(_, r)| r.created_txg);
        Ok(v)
    }

    /// Blocks on `rec`'s dead list born in `(after, upto]` (data only when `data_only`).
    fn dead_between(&self, rec: &DatasetRec, after: u64, upto: u64, data_only: bool) -> Result<u64, VdeError> {
        let mut st = self.state()?;
        let mut t = Tree::open(NodeKind::Deadlist, rec.deadlist);
        let mut sum = 0;
        let mut cursor = dkey(after, u64::MAX).to_vec();
        loop {
            let page = t.page(&mut st.io(), Some(&cursor), 256)?;
            let Some(last) = page.last() else { break };
            cursor = last.0.clone();
            for (k, v) in &page {
                if k.len() != 16 || v.len() != 5 {
                    return Err(VdeError::Corrupt {
                        block: 0,
                        kind: NodeKind::Deadlist.name(),
                        reason: format!("dead list entry of {}+{} bytes", k.len(), v.len()),
                    });
                }
                if get64_be(k, 0) > upto {
                    return Ok(sum);
                }
                if !data_only || v[4] == DEAD_DATA {
                    sum += get32(v, 0) as u64;
                }
            }
        }
        Ok(sum)
    }

    /// Data blocks of `rec`'s extent map born after `after`.
    fn born_after(&self, rec: &DatasetRec, after: u64) -> Result<u64, VdeError> {
        let mut st = self.state()?;
        let (first, total) = (st.sb.pool_start(), st.sb.total_blocks);
        let mut sum = 0;
        Tree::walk(&mut st.io(), NodeKind::Extents, rec.extents, after, &mut |v| {
            if let Visit::Entry { key, value } = v {
                let (_, e) = decode_entry(key, value, first, total)?;
                if e.birth > after {
                    sum += e.len;
                }
            }
            Ok(())
        })?;
        Ok(sum)
    }

    /// Volumes (no snapshots), with their space.
    ///
    /// Errors: I/O errors, [`VdeError::Corrupt`].
    pub fn vol_list(&self) -> Result<Vec<DatasetInfo>, VdeError> {
        let all = self.datasets_with_prefix(b"")?;
        let mut out = Vec::new();
        for (name, rec) in all
            .iter()
            .filter(|(n, r)| r.kind == DatasetKind::Volume && !n.contains(&b'%'))
        {
            let n = String::from_utf8_lossy(name).into_owned();
            let origin_txg = self.origin_txg(rec)?;
            let unique = self.born_after(rec, rec.prev_txg)?;
            // Space freed if every snapshot went: dead-list blocks born after the origin,
            // on the volume's list and its snapshots'.
            let mut snaps = self.dead_between(rec, origin_txg, u64::MAX, true)?;
            for (_, s) in all.iter().filter(|(k, _)| k.starts_with(format!("{n}@").as_bytes())) {
                snaps += self.dead_between(s, origin_txg, u64::MAX, true)?;
            }
            // Blocks the volume references born after its origin, plus the snapshots'.
            let own = self.born_after(rec, origin_txg)?;
            out.push(DatasetInfo {
                name: n,
                kind: DatasetKind::Volume,
                size: rec.size,
                refer: bytes(rec.refer_blocks),
                used: bytes(own.saturating_add(snaps)),
                unique: bytes(unique),
                created_txg: rec.created_txg,
                origin: (!rec.origin.is_empty()).then(|| String::from_utf8_lossy(&rec.origin).into_owned()),
                clones: 0,
            });
        }
        Ok(out)
    }

    fn origin_txg(&self, rec: &DatasetRec) -> Result<u64, VdeError> {
        if rec.origin.is_empty() {
            return Ok(0);
        }
        let mut st = self.state()?;
        Ok(lookup(&mut st, &rec.origin)?.map_or(0, |o| o.created_txg))
    }

    /// Snapshots of `vol` (every volume's for `None`), oldest first per volume.
    ///
    /// Errors: I/O errors, [`VdeError::Corrupt`], [`VdeError::NotFound`].
    pub fn snap_list(&self, vol: Option<&str>) -> Result<Vec<DatasetInfo>, VdeError> {
        let vols: Vec<String> = match vol {
            Some(v) => {
                let mut st = self.state()?;
                lookup(&mut st, v.as_bytes())?.ok_or_else(|| not_found(v.as_bytes()))?;
                vec![v.to_string()]
            }
            None => self.vol_list()?.into_iter().map(|i| i.name).collect(),
        };
        let mut out = Vec::new();
        for v in vols {
            let snaps = self.snapshots_of(&v)?;
            for (i, (name, s)) in snaps.iter().enumerate() {
                let next = match snaps.get(i + 1) {
                    Some((_, n)) => n.clone(),
                    None => {
                        let mut st = self.state()?;
                        lookup(&mut st, v.as_bytes())?.ok_or_else(|| not_found(v.as_bytes()))?
                    }
                };
                let unique = bytes(self.dead_between(&next, s.prev_txg, s.created_txg, true)?);
                out.push(DatasetInfo {
                    name: String::from_utf8_lossy(name).into_owned(),
                    kind: DatasetKind::Snapshot,
                    size: s.size,
                    refer: bytes(s.refer_blocks),
                    used: unique,
                    unique,
                    created_txg: s.created_txg,
                    origin: None,
                    clones: s.clones,
                });
            }
        }
        Ok(out)
    }

    /// Takes snapshot `vol@snap`: commits the open txg with the volume's extent map
    /// shared by the snapshot. Costs one commit whatever the volume's size; holds exactly
    /// the writes that completed before it.
    ///
    /// Errors: [`VdeError::NotFound`], [`VdeError::Exists`], [`VdeError::Unsupported`]
    /// (name), I/O errors.
    pub fn snap_create(&self, vol: &str, snap: &str) -> Result<(), VdeError> {
        check_visible(vol)?;
        self.writable()?;
        let _t = self.topology();
        check_name("snapshot", snap)?;
        let full = format!("{vol}@{snap}");
        let mut st = self.state()?;
        let rec = lookup(&mut st, vol.as_bytes())?.ok_or_else(|| not_found(vol.as_bytes()))?;
        if rec.kind != DatasetKind::Volume {
            return Err(VdeError::Unsupported(format!("{vol} is not a volume")));
        }
        if lookup(&mut st, full.as_bytes())?.is_some() {
            return Err(VdeError::Exists(full));
        }
        snapshot_head(&mut st, vol.as_bytes(), full.as_bytes(), new_guid()).map_err(|e| st.poison(e))?;
        st.commit(&self.log)
    }

    /// Deletes snapshot `vol@snap`, freeing exactly the blocks nothing else references.
    ///
    /// Errors: [`VdeError::NotFound`], [`VdeError::Unsupported`] (it has clones), I/O
    /// errors.
    pub fn snap_remove(&self, vol: &str, snap: &str) -> Result<(), VdeError> {
        self.writable()?;
        let _t = self.topology();
        self.snap_remove_locked(vol, snap)
    }

    /// [`Vde::snap_remove`] with the topology lock held.
    pub(super) fn snap_remove_locked(&self, vol: &str, snap: &str) -> Result<(), VdeError> {
        let full = format!("{vol}@{snap}");
        let snaps = self.snapshots_of(vol)?;
        let i = snaps
            .iter()
            .position(|(n, _)| n == full.as_bytes())
            .ok_or_else(|| not_found(full.as_bytes()))?;
        let s = snaps[i].1.clone();
        if s.clones > 0 {
            return Err(VdeError::Unsupported(format!(
                "{full} has {} clone(s); delete them first (`ironvme vde vol rm`)",
                s.clones
            )));
        }
        let next_name = snaps.get(i + 1).map_or(vol.as_bytes().to_vec(), |n| n.0.clone());
        let mut st = self.state()?;
        let r = self.remove_snapshot(&mut st, &full, &s, &next_name);
        r.map_err(|e| st.poison(e))?;
        st.commit(&self.log)
    }

    fn remove_snapshot(&self, st: &mut State, full: &str, s: &DatasetRec, next_name: &[u8]) -> Result<(), VdeError> {
        let mut n = take_head(st, next_name)?;
        let r = (|| {
            // 1. N's dead entries born in (S.prev, S.txg] were S's alone: free them.
            let mut cursor = dkey(s.prev_txg, u64::MAX).to_vec();
            loop {
                let page = n.deadlist.page(&mut st.io(), Some(&cursor), 256)?;
                st.free_released();
                let Some(last) = page.last() else { break };
                cursor = last.0.clone();
                let mut done = false;
                for (k, v) in &page {
                    if k.len() != 16 || v.len() != 5 {
                        return Err(VdeError::Corrupt {
                            block: 0,
                            kind: NodeKind::Deadlist.name(),
                            reason: format!("dead list entry of {}+{} bytes", k.len(), v.len()),
                        });
                    }
                    if get64_be(k, 0) > s.created_txg {
                        done = true;
                        break;
                    }
                    let (addr, len) = (get64_be(k, 8), get32(v, 0) as u64);
                    n.deadlist.remove(&mut st.io(), k)?;
                    st.free_released();
                    st.space.free(addr, len);
                    count_less(&mut n.rec.dead_blocks, len, "dead")?;
                }
                if done {
                    break;
                }
            }
            // 2. S's dead list (blocks P holds) moves to N's; its tree's blocks are freed.
            let mut sdl = Tree::open(NodeKind::Deadlist, s.deadlist);
            let mut cursor: Option<Vec<u8>> = None;
            loop {
                let page = sdl.page(&mut st.io(), cursor.as_deref(), 256)?;
                let Some(last) = page.last() else { break };
                cursor = Some(last.0.clone());
                for (k, v) in &page {
                    n.deadlist.insert(&mut st.io(), k, v)?;
                    st.free_released();
                    if v.len() == 5 {
                        count_more(&mut n.rec.dead_blocks, get32(v, 0) as u64, "dead")?;
                    }
                }
            }
            free_tree(st, NodeKind::Deadlist, s.deadlist, 0)?;
            n.rec.prev_txg = s.prev_txg;
            n.dirty = true;
            with_datasets(st, |t, st| t.remove(&mut st.io(), full.as_bytes()).map(|_| ()))?;
            Ok(())
        })();
        st.heads.remove(full.as_bytes());
        if r.is_ok() && n.rec.kind == DatasetKind::Snapshot {
            // The next one is a snapshot, not a live head: store its record now.
            let root = n.deadlist.commit(&mut st.io());
            st.free_released();
            n.rec.deadlist = root?;
            n.dirty = false;
            store_rec(st, next_name, &n.rec)?;
        }
        put_head(st, next_name, n);
        r
    }

    /// Makes a writable volume `new` that starts as snapshot `vol@snap` and shares its
    /// extents.
    ///
    /// Errors: [`VdeError::NotFound`], [`VdeError::Exists`], I/O errors.
    pub fn clone_snapshot(&self, vol: &str, snap: &str, new: &str) -> Result<(), VdeError> {
        check_name("volume", new)?;
        check_visible(vol)?;
        self.clone_named(vol, snap, new, new_guid(), 0)
    }

    /// [`Vde::clone_snapshot`] without the name checks, with GUID `guid` and a size of at
    /// least `size` bytes (growing costs nothing; a smaller size is the caller's resize):
    /// receive's hidden `VOL%recv`.
    pub(super) fn clone_named(&self, vol: &str, snap: &str, new: &str, guid: u64, size: u64) -> Result<(), VdeError> {
        self.writable()?;
        let _t = self.topology();
        let full = format!("{vol}@{snap}");
        let mut st = self.state()?;
        let mut s = lookup(&mut st, full.as_bytes())?.ok_or_else(|| not_found(full.as_bytes()))?;
        if lookup(&mut st, new.as_bytes())?.is_some() {
            return Err(VdeError::Exists(new.to_string()));
        }
        let rec = DatasetRec {
            kind: DatasetKind::Volume,
            guid,
            size: s.size.max(size),
            created_txg: st.txg,
            prev_txg: s.created_txg,
            extents: s.extents,
            deadlist: None,
            refer_blocks: s.refer_blocks,
            dead_blocks: 0,
            clones: 0,
            origin: full.clone().into_bytes(),
            recv_offset: 0,
        };
        s.clones = s.clones.checked_add(1).ok_or_else(|| VdeError::Corrupt {
            block: 0,
            kind: NodeKind::Datasets.name(),
            reason: format!("snapshot {full} records {} clones already", s.clones),
        })?;
        let r = store_rec(&mut st, new.as_bytes(), &rec).and_then(|_| store_rec(&mut st, full.as_bytes(), &s));
        r.map_err(|e| st.poison(e))?;
        st.commit(&self.log)
    }

    /// Rolls volume `vol` back to its newest snapshot `vol@snap`: every write since is
    /// discarded and its blocks freed.
    ///
    /// Errors: [`VdeError::NotFound`], [`VdeError::Unsupported`] (not the newest
    /// snapshot), I/O errors.
    pub fn rollback(&self, vol: &str, snap: &str) -> Result<(), VdeError> {
        check_visible(vol)?;
        self.writable()?;
        let _t = self.topology();
        let full = format!("{vol}@{snap}");
        let snaps = self.snapshots_of(vol)?;
        let Some((last, s)) = snaps.last() else {
            return Err(not_found(full.as_bytes()));
        };
        if last != full.as_bytes() {
            if snaps.iter().any(|(n, _)| n == full.as_bytes()) {
                return Err(VdeError::Unsupported(format!(
                    "{full} is not {vol}'s newest snapshot ({}); delete the newer ones first",
                    String::from_utf8_lossy(last)
                )));
            }
            return Err(not_found(full.as_bytes()));
        }
        let s = s.clone();
        let mut st = self.state()?;
        let r = (|| {
            let mut h = take_head(&mut st, vol.as_bytes())?;
            let r = (|| {
                let root = h.extents.commit(&mut st.io())?;
                route(&mut st, &mut h)?;
                // Blocks born after the snapshot are the volume's alone.
                free_born_after(&mut st, root, s.created_txg)?;
                let dl = h.deadlist.commit(&mut st.io())?;
                free_tree(&mut st, NodeKind::Deadlist, dl, 0)?;
                st.free_released();
                h.rec.extents = s.extents;
                h.rec.deadlist = None;
                h.rec.dead_blocks = 0;
                h.rec.refer_blocks = s.refer_blocks;
                // The size too: a volume shrunk after the snapshot gets its end back (its
                // extents past the smaller size are the snapshot's).
                h.rec.size = s.size;
                h.extents = Tree::open(NodeKind::Extents, s.extents);
                h.deadlist = Tree::open(NodeKind::Deadlist, None);
                h.dirty = true;
                Ok(())
            })();
            put_head(&mut st, vol.as_bytes(), h);
            r
        })();
        r.map_err(|e| st.poison(e))?;
        st.commit(&self.log)
    }

    /// Deletes volume `vol` (with `recursive`, its snapshots first, newest first).
    ///
    /// Errors: [`VdeError::NotFound`], [`VdeError::Unsupported`] (it has snapshots and
    /// not `recursive`; a snapshot has clones), I/O errors.
    pub fn vol_remove(&self, vol: &str, recursive: bool) -> Result<(), VdeError> {
        check_visible(vol)?;
        self.vol_remove_named(vol, recursive)
    }

    /// [`Vde::vol_remove`], receive's hidden `VOL%recv` too.
    pub(super) fn vol_remove_named(&self, vol: &str, recursive: bool) -> Result<(), VdeError> {
        self.writable()?;
        let _t = self.topology();
        let snaps = self.snapshots_of(vol)?;
        if !snaps.is_empty() && !recursive {
            return Err(VdeError::Unsupported(format!(
                "{vol} has {} snapshot(s); delete them first or pass --recursive",
                snaps.len()
            )));
        }
        if let Some((name, s)) = snaps.iter().find(|(_, s)| s.clones > 0) {
            return Err(VdeError::Unsupported(format!(
                "{} has {} clone(s); delete them first; nothing was deleted",
                String::from_utf8_lossy(name),
                s.clones
            )));
        }
        for (name, _) in snaps.iter().rev() {
            let n = String::from_utf8_lossy(name).into_owned();
            let snap = n.split_once('@').map(|x| x.1).unwrap_or_default().to_string();
            self.snap_remove_locked(vol, &snap)?;
        }
        let mut st = self.state()?;
        let mut h = take_head(&mut st, vol.as_bytes())?;
        if h.rec.kind != DatasetKind::Volume {
            put_head(&mut st, vol.as_bytes(), h);
            return Err(VdeError::Unsupported(format!("{vol} is not a volume")));
        }
        let r = (|| {
            let root = h.extents.commit(&mut st.io())?;
            route(&mut st, &mut h)?;
            free_born_after(&mut st, root, h.rec.prev_txg)?;
            let dl = h.deadlist.commit(&mut st.io())?;
            free_tree(&mut st, NodeKind::Deadlist, dl, 0)?;
            st.free_released();
            if !h.rec.origin.is_empty()
                && let Some(mut o) = lookup(&mut st, &h.rec.origin)?
            {
                o.clones = o.clones.saturating_sub(1);
                store_rec(&mut st, &h.rec.origin.clone(), &o)?;
            }
            with_datasets(&mut st, |t, st| t.remove(&mut st.io(), vol.as_bytes()).map(|_| ()))
        })();
        r.map_err(|e| st.poison(e))?;
        st.commit(&self.log)
    }

    /// Changes volume `vol`'s size; shrinking frees the blocks past the new end.
    ///
    /// Errors: [`VdeError::NotFound`], [`VdeError::Unsupported`] (size), I/O errors.
    pub fn vol_resize(&self, vol: &str, size: u64) -> Result<(), VdeError> {
        check_visible(vol)?;
        self.vol_resize_named(vol, size)
    }

    /// [`Vde::vol_resize`], receive's hidden `VOL%recv` too.
    pub(super) fn vol_resize_named(&self, vol: &str, size: u64) -> Result<(), VdeError> {
        self.writable()?;
        let _t = self.topology();
        if size == 0 || size % BLOCK as u64 != 0 || size > (1u64 << 60) {
            return Err(VdeError::Unsupported(format!(
                "volume size {size} bytes: use a non-zero multiple of {BLOCK} bytes"
            )));
        }
        // Shrinking: the blocks past the new end are unmapped in bounded steps first;
        // the unmap under the lock below then finds at most what writes mapped meanwhile.
        let rec = self.dataset(vol)?;
        if rec.kind != DatasetKind::Volume {
            return Err(VdeError::Unsupported(format!("{vol} is not a volume")));
        }
        let old = rec.size / BLOCK as u64;
        if let Some(past) = old.checked_sub(size / BLOCK as u64).filter(|&p| p > 0) {
            self.vol_unmap(vol, old - past, past)?;
        }
        let mut st = self.state()?;
        let mut h = take_head(&mut st, vol.as_bytes())?;
        let r = (|| {
            if h.rec.kind != DatasetKind::Volume {
                return Err(VdeError::Unsupported(format!("{vol} is not a volume")));
            }
            let (old, new) = (h.rec.size / BLOCK as u64, size / BLOCK as u64);
            if new < old {
                unmap(&mut st, &mut h, new, old - new)?;
            }
            h.rec.size = size;
            h.dirty = true;
            Ok(())
        })();
        put_head(&mut st, vol.as_bytes(), h);
        r.map_err(|e| st.poison(e))?;
        st.commit(&self.log)
    }

    /// The size in bytes of volume or snapshot `name`, and whether it is a snapshot.
    ///
    /// Errors: [`VdeError::NotFound`], I/O errors.
    pub fn dataset(&self, name: &str) -> Result<DatasetRec, VdeError> {
        let mut st = self.state()?;
        lookup(&mut st, name.as_bytes())?.ok_or_else(|| not_found(name.as_bytes()))
    }

    fn check_range(rec: &DatasetRec, name: &str, vblock: u64, n: u64) -> Result<(), VdeError> {
        let blocks = rec.size / BLOCK as u64;
        if vblock.checked_add(n).is_none_or(|e| e > blocks) {
            return Err(VdeError::Unsupported(format!(
                "blocks {vblock}..{} are past the end of {name} ({blocks} blocks of {BLOCK} bytes)",
                vblock.saturating_add(n)
            )));
        }
        Ok(())
    }

    /// Where blocks `vblock..vblock + n` of volume or snapshot `name` are: pieces in
    /// order as (first volume block, blocks, extent piece or `None` for a hole that reads
    /// as zeros).
    ///
    /// Errors: [`VdeError::NotFound`], [`VdeError::Unsupported`] (range), I/O errors.
    pub fn vol_read_plan(&self, name: &str, vblock: u64, n: u64) -> Result<Pieces, VdeError> {
        let mut st = self.state()?;
        let (key, mut h) = take_head_keyed(&mut st, name.as_bytes())?;
        let r = Self::check_range(&h.rec, name, vblock, n).and_then(|_| pieces(&mut st, &mut h, vblock, n));
        st.heads.insert(key, h);
        r
    }

    /// Reads `out.len() / 4096` blocks of volume or snapshot `name` from block `vblock`;
    /// unwritten blocks read as zeros. Every block is checked against its checksum; a
    /// block that fails it is looked up again, and read again if the volume changed
    /// meanwhile (at most [`READ_REPLANS`] times), so a read racing an overwrite returns
    /// the old data or the new, never an error.
    ///
    /// Errors: [`VdeError::NotFound`], [`VdeError::Unsupported`] (range),
    /// [`VdeError::DataCorrupt`] (the blocks fail their checksums and the volume did not
    /// change), I/O errors.
    pub fn vol_read(&self, name: &str, vblock: u64, out: &mut [u8]) -> Result<(), VdeError> {
        let n = (out.len() / BLOCK) as u64;
        let mut plan = self.vol_read_plan(name, vblock, n)?;
        let mut replans = 0;
        loop {
            let err = match self.read_planned(name, vblock, &plan, out) {
                Err(e @ VdeError::DataCorrupt { .. }) => e,
                other => return other,
            };
            if replans == READ_REPLANS {
                return Err(err);
            }
            replans += 1;
            let again = self.vol_read_plan(name, vblock, n)?;
            if again == plan {
                return Err(err);
            }
            plan = again;
        }
    }

    /// Reads the pieces of `plan` (from [`Vde::vol_read_plan`] for `vblock..`) into
    /// `out`, checking every block.
    fn read_planned(&self, name: &str, vblock: u64, plan: &Pieces, out: &mut [u8]) -> Result<(), VdeError> {
        let mut lane = self.lane()?;
        for (v, len, e) in plan {
            let at = ((v - vblock) as usize) * BLOCK;
            let dst = &mut out[at..at + *len as usize * BLOCK];
            match e {
                None => dst.fill(0),
                Some(e) => {
                    lane.read(e.pba, dst)?;
                    self.vol_verify(name, *v, e, dst)?;
                }
            }
        }
        Ok(())
    }

    /// Writes `data` (whole blocks) to volume `name` from block `vblock`, copy-on-write:
    /// new blocks are written, then mapped. Not durable until [`Vde::vol_flush`] (a
    /// disk with a volatile write cache), or at once with `fua`.
    ///
    /// Errors: [`VdeError::NotFound`], [`VdeError::ReadOnly`] (a snapshot),
    /// [`VdeError::Unsupported`] (range, alignment), [`VdeError::NoSpace`], I/O errors.
    pub fn vol_write(&self, name: &str, vblock: u64, data: &[u8], fua: bool) -> Result<(), VdeError> {
        if data.len() % BLOCK != 0 {
            return Err(VdeError::Unsupported(format!(
                "a volume write moves whole {BLOCK}-byte blocks; {} bytes is not",
                data.len()
            )));
        }
        let runs = self.vol_write_begin(name, vblock, (data.len() / BLOCK) as u64)?;
        let written = (|| {
            let mut lane = self.lane()?;
            let mut at = 0usize;
            let mut out = Vec::with_capacity(runs.len());
            for &(pba, len) in &runs {
                let bytes = &data[at..at + len as usize * BLOCK];
                lane.write(pba, bytes)?;
                out.push((pba, len, self.block_sums(bytes)));
                at += len as usize * BLOCK;
            }
            Ok::<_, VdeError>(out)
        })();
        match written {
            Ok(w) => self.vol_write_end(name, vblock, w, fua),
            Err(e) => {
                self.vol_write_abort(&runs);
                Err(e)
            }
        }
    }

    /// The xxh3-64 (seeded with the store tag) of each 4 KiB block of `data`.
    pub fn block_sums(&self, data: &[u8]) -> Vec<u64> {
        data.chunks(BLOCK).map(|b| xxh3_64_with_seed(b, self.tag)).collect()
    }

    /// Checks `data`, read from the extent pieces of a [`Vde::vol_read_plan`], against
    /// the checksums in `e`; `vblock` names the first block for the error.
    ///
    /// Errors: [`VdeError::DataCorrupt`] naming the volume block and device block.
    pub fn vol_verify(&self, name: &str, vblock: u64, e: &VolExtent, data: &[u8]) -> Result<(), VdeError> {
        for (i, (b, sum)) in data.chunks(BLOCK).zip(&e.sums).enumerate() {
            if xxh3_64_with_seed(b, self.tag) != *sum {
                return Err(VdeError::DataCorrupt {
                    key: format!("{name} block {}", vblock + i as u64),
                    extent: i,
                    start: e.pba + i as u64,
                    end: e.pba + i as u64 + 1,
                });
            }
        }
        Ok(())
    }

    /// First step of a volume write of `n` blocks at `vblock`: checks the volume and the
    /// range and reserves new blocks, as runs of at most [`MAX_VOL_EXTENT`] (device
    /// block, blocks). Write the data there, then [`Vde::vol_write_end`] (or
    /// [`Vde::vol_write_abort`]).
    ///
    /// Errors: [`VdeError::NotFound`], [`VdeError::ReadOnly`], [`VdeError::Unsupported`]
    /// (range), [`VdeError::NoSpace`].
    pub fn vol_write_begin(&self, name: &str, vblock: u64, n: u64) -> Result<Vec<(u64, u64)>, VdeError> {
        self.writable()?;
        let mut st = self.state()?;
        let rec = lookup(&mut st, name.as_bytes())?.ok_or_else(|| not_found(name.as_bytes()))?;
        if rec.kind != DatasetKind::Volume {
            return Err(VdeError::ReadOnly);
        }
        Self::check_range(&rec, name, vblock, n)?;
        st.reserve(&self.log, n, MAX_VOL_EXTENT, usize::MAX)
    }

    /// Gives back the blocks of a write that failed.
    pub fn vol_write_abort(&self, runs: &[(u64, u64)]) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for &(s, n) in runs {
            st.space.unreserve(s, n);
        }
    }

    /// Last step of a volume write: maps the written runs `(device block, blocks,
    /// per-block checksums)` from `vblock` on, in the open txg. With `fua`, returns once
    /// durable.
    ///
    /// Errors: [`VdeError::NotFound`] (the volume was removed meanwhile; its blocks are
    /// handed back), [`VdeError::Poisoned`], I/O errors (of a commit or the log).
    pub fn vol_write_end(
        &self,
        name: &str,
        vblock: u64,
        written: Vec<(u64, u64, Vec<u64>)>,
        fua: bool,
    ) -> Result<(), VdeError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = st.check_poison() {
            for &(s, n, _) in &written {
                st.space.unreserve(s, n);
            }
            return Err(e);
        }
        let txg = st.txg;
        let mut records = Vec::new();
        let (key, mut h) = match take_head_keyed(&mut st, name.as_bytes()) {
            Ok(kh) => kh,
            Err(e) => {
                for &(s, n, _) in &written {
                    st.space.unreserve(s, n);
                }
                // A volume removed while the write was in flight: an error for this
                // write, not damage to the store.
                return Err(if matches!(e, VdeError::NotFound(_)) {
                    e
                } else {
                    st.poison(e)
                });
            }
        };
        let r = {
            let mut v = vblock;
            let mut r = Ok(());
            for (pba, len, sums) in written {
                let e = VolExtent {
                    pba,
                    len,
                    birth: txg,
                    sums,
                };
                r = map(&mut st, &mut h, v, &e);
                if r.is_err() {
                    break;
                }
                let mut rec = pool::record(rec::VOL_MAP, txg);
                rec.push(name.len() as u8);
                rec.extend_from_slice(name.as_bytes());
                rec.extend_from_slice(&v.to_le_bytes());
                e.encode_into(&mut rec);
                records.push(rec);
                v += len;
            }
            st.heads.insert(key, h);
            r
        };
        r.map_err(|e| st.poison(e))?;
        st.ops_since_commit += 1;
        // Queued behind the records of writes completed earlier, so the log keeps the
        // order of completion: a FUA write's records appended alone would precede those
        // of an older write to the same blocks appended by a later Flush, and replay
        // would map the older data over the newer.
        st.pending_vol.extend(records);
        if fua {
            drop(st);
            self.vol_flush()
        } else {
            if st.wants_commit(&self.log) {
                st.commit(&self.log)?;
            }
            Ok(())
        }
    }

    /// Makes `vblock..vblock + n` of volume `name` read as zeros, freeing its blocks
    /// (Write Zeroes and Deallocate). Durable like a write.
    ///
    /// Errors: as [`Vde::vol_write`].
    pub fn vol_unmap(&self, name: &str, vblock: u64, n: u64) -> Result<(), VdeError> {
        self.writable()?;
        // The whole range is checked before the first step changes anything: a range
        // past the end is refused whole, not after its first steps.
        let rec = self.dataset(name)?;
        if rec.kind != DatasetKind::Volume {
            return Err(VdeError::ReadOnly);
        }
        Self::check_range(&rec, name, vblock, n)?;
        let end = vblock + n;
        let mut at = vblock;
        loop {
            let step = (end - at).min(UNMAP_STEP);
            self.vol_unmap_step(name, at, step)?;
            at += step;
            if at >= end {
                return Ok(());
            }
        }
    }

    /// One step of [`Vde::vol_unmap`]: at most [`UNMAP_STEP`] blocks, one record, and a
    /// commit when one is due.
    fn vol_unmap_step(&self, name: &str, vblock: u64, n: u64) -> Result<(), VdeError> {
        let mut st = self.state()?;
        let txg = st.txg;
        let r = (|| {
            let mut h = take_head(&mut st, name.as_bytes())?;
            let r = if h.rec.kind != DatasetKind::Volume {
                Err(VdeError::ReadOnly)
            } else {
                Self::check_range(&h.rec, name, vblock, n).and_then(|_| unmap(&mut st, &mut h, vblock, n))
            };
            put_head(&mut st, name.as_bytes(), h);
            r
        })();
        match r {
            Ok(()) => {}
            Err(e @ (VdeError::ReadOnly | VdeError::Unsupported(_) | VdeError::NotFound(_))) => return Err(e),
            Err(e) => return Err(st.poison(e)),
        }
        let mut rec = pool::record(rec::VOL_UNMAP, txg);
        rec.push(name.len() as u8);
        rec.extend_from_slice(name.as_bytes());
        rec.extend_from_slice(&vblock.to_le_bytes());
        rec.extend_from_slice(&n.to_le_bytes());
        st.pending_vol.push(rec);
        st.ops_since_commit += 1;
        if st.wants_commit(&self.log) {
            st.commit(&self.log)?;
        }
        Ok(())
    }

    /// Makes every completed write and unmap of every volume durable (a volume's Flush):
    /// appends their records to the intent log (group-committed with other callers).
    ///
    /// Errors: I/O errors, [`VdeError::Poisoned`].
    pub fn vol_flush(&self) -> Result<(), VdeError> {
        if self.opts.read_only {
            return Ok(());
        }
        // Flushes are serialised: a Flush that finds nothing pending must still wait for
        // one that took the records of writes completed before it.
        let _one = self.vol_flush_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (txg, records) = {
            let mut st = self.state()?;
            (st.txg, std::mem::take(&mut st.pending_vol))
        };
        if records.is_empty() {
            return Ok(());
        }
        let refs: Vec<&[u8]> = records.iter().map(|r| r.as_slice()).collect();
        self.append_records(txg, &refs)
    }

    fn append_records(&self, txg: u64, refs: &[&[u8]]) -> Result<(), VdeError> {
        // One append (one Flush, shared with concurrent callers); a log too full for them
        // makes the store commit instead, which makes them durable just the same.
        self.make_durable(txg, refs)
    }
}

fn get64_be(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Frees every block of the extent map at `root` born after `after` (tree nodes and
/// data): the blocks a dataset owns alone when nothing newer shares them.
fn free_born_after(st: &mut State, root: Option<BlockPtr>, after: u64) -> Result<(), VdeError> {
    let (first, total) = (st.sb.pool_start(), st.sb.total_blocks);
    let mut freed = Vec::new();
    Tree::walk(&mut st.io(), NodeKind::Extents, root, after, &mut |v| {
        match v {
            Visit::Node { ptr, .. } => {
                if ptr.birth > after {
                    freed.push((ptr.addr, 1));
                }
            }
            Visit::Entry { key, value } => {
                let (_, e) = decode_entry(key, value, first, total)?;
                if e.birth > after {
                    freed.push((e.pba, e.len));
                }
            }
        }
        Ok(())
    })?;
    for (a, n) in freed {
        st.space.free(a, n);
    }
    Ok(())
}

/// Frees every block of a tree born after `after` (dead lists: all of them with 0).
fn free_tree(st: &mut State, kind: NodeKind, root: Option<BlockPtr>, after: u64) -> Result<(), VdeError> {
    let mut freed = Vec::new();
    Tree::walk(&mut st.io(), kind, root, after, &mut |v| {
        if let Visit::Node { ptr, .. } = v {
            freed.push(ptr.addr);
        }
        Ok(())
    })?;
    for a in freed {
        st.space.free(a, 1);
    }
    Ok(())
}

/// Replays a volume record (map or unmap) newer than the committed txg; a map whose data
/// does not verify is skipped (it was never flushed). Returns whether it was applied.
///
/// Errors: a malformed record ([`VdeError::Corrupt`]), I/O errors.
pub fn replay_volume_record(store: &Vde, r: &[u8]) -> Result<bool, VdeError> {
    let bad = |why: &str| VdeError::Corrupt {
        block: 0,
        kind: NodeKind::Log.name(),
        reason: format!("volume record: {why}"),
    };
    let body = &r[pool::RECORD_HEADER..];
    let nlen = *body.first().ok_or_else(|| bad("empty"))? as usize;
    if nlen == 0 || body.len() < 1 + nlen + 8 {
        return Err(bad("too short"));
    }
    let name = &body[1..1 + nlen];
    let vblock = super::format::get64(body, 1 + nlen);
    let rest = &body[1 + nlen + 8..];
    let mut st = store.state()?;
    let Some(rec) = lookup(&mut st, name)? else {
        return Ok(false);
    };
    if rec.kind != DatasetKind::Volume {
        // Only volumes are written; a record naming a snapshot is damaged or forged.
        return Err(bad(&format!(
            "it names {}, which is not a volume",
            String::from_utf8_lossy(name)
        )));
    }
    let blocks = rec.size / BLOCK as u64;
    if r[0] == rec::VOL_UNMAP {
        if rest.len() != 8 {
            return Err(bad("unmap length"));
        }
        let n = super::format::get64(rest, 0);
        if n > UNMAP_STEP {
            return Err(bad(&format!(
                "an unmap of {n} blocks (records cover at most {UNMAP_STEP})"
            )));
        }
        if vblock.checked_add(n).is_none_or(|e| e > blocks) {
            return Ok(false);
        }
        let mut h = take_head(&mut st, name)?;
        let res = unmap(&mut st, &mut h, vblock, n);
        put_head(&mut st, name, h);
        res?;
        return Ok(true);
    }
    let e = VolExtent::decode(rest, st.sb.pool_start(), st.sb.total_blocks).map_err(|w| bad(&w))?;
    if vblock.checked_add(e.len).is_none_or(|end| end > blocks) {
        return Ok(false);
    }
    drop(st);
    let mut buf = vec![0u8; e.len as usize * BLOCK];
    store.lane()?.read(e.pba, &mut buf)?;
    if buf
        .chunks(BLOCK)
        .zip(&e.sums)
        .any(|(b, s)| xxh3_64_with_seed(b, store.tag) != *s)
    {
        return Ok(false);
    }
    let mut st = store.state()?;
    st.space.claim(e.pba, e.len)?;
    let mut h = take_head(&mut st, name)?;
    let res = map(&mut st, &mut h, vblock, &e);
    put_head(&mut st, name, h);
    res?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::{BLOCK, bytes, count_less, count_more};
    use crate::vde::VdeError;

    /// Found by the `vde_open` fuzz target (seeds `dataset-refer-blocks-*`): a forged
    /// record's counts overflowed during replay and in `vol ls`.
    #[test]
    fn counts_read_from_a_record_cannot_overflow() {
        let mut n = 3;
        assert!(matches!(
            count_less(&mut n, 4, "referenced"),
            Err(VdeError::Corrupt { .. })
        ));
        assert_eq!(n, 3, "unchanged on error");
        count_less(&mut n, 3, "referenced").unwrap();
        assert_eq!(n, 0);
        let mut n = u64::MAX - 1;
        assert!(matches!(count_more(&mut n, 2, "dead"), Err(VdeError::Corrupt { .. })));
        count_more(&mut n, 1, "dead").unwrap();
        assert_eq!(n, u64::MAX);
        assert_eq!(bytes(u64::MAX / 2), u64::MAX);
        assert_eq!(bytes(2), 2 * BLOCK as u64);
    }
    use crate::vde::{Vde, VdeOptions};
    use crate::{Backend, Device, OpenOptions};

    fn device(path: &std::path::Path) -> Device {
        let o = OpenOptions {
            backend: Some(Backend::Psync),
            file_block_size: Some(4096),
            ..Default::default()
        };
        Device::open(path.to_str().expect("utf-8 path"), &o).expect("open the image")
    }

    /// Overwrites without a Flush free their old blocks only two commits later: a volume
    /// of 60% of the device, written whole three times over with no Flush, must not run
    /// out of space (the commits that release held blocks come from space pressure).
    #[test]
    fn overwrites_without_flush_do_not_run_out_of_space() {
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .expect("temporary directory");
        let path = dir.path().join("vde.img");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(64 << 20))
            .expect("image");
        let vde = Vde::format(device(&path), VdeOptions::default()).expect("format");
        let vol_blocks = (64u64 << 20) / BLOCK as u64 * 6 / 10;
        vde.vol_create("v", vol_blocks * BLOCK as u64).expect("vol create");
        let chunk = 8u64;
        for pass in 1..=3u8 {
            let data = vec![pass; chunk as usize * BLOCK];
            for at in (0..vol_blocks).step_by(chunk as usize) {
                let n = chunk.min(vol_blocks - at) as usize;
                vde.vol_write("v", at, &data[..n * BLOCK], false)
                    .unwrap_or_else(|e| panic!("pass {pass}, block {at}: {e}"));
            }
        }
        let mut out = vec![0u8; BLOCK];
        vde.vol_read("v", vol_blocks - 1, &mut out).expect("read");
        assert!(out.iter().all(|&b| b == 3), "the last pass's bytes");
        vde.vol_flush().expect("flush");
        let report = vde.fsck().expect("fsck");
        assert!(report.clean(), "{report:?}");
    }
}
