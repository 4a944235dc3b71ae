//! Format 2's space map: which blocks are in use, allocation, deferred frees, and the
//! copy-on-write persistence of the allocation bitmap.
//!
//! # In memory
//!
//! Two bitmaps over every block of the device, one bit per block each, as `u64` words:
//!
//! - `durable`: what the next committed txg says is in use (data extents whose reservation
//!   was [`SpaceMap::commit_use`]d, metadata blocks from [`SpaceMap::alloc_meta`], the
//!   space map's own blocks, blocks `0..first`).
//! - `busy`: `durable`, plus reservations in flight, plus blocks freed but still deferred.
//!   Allocation takes only blocks whose `busy` bit is clear.
//!
//! Allocation is next-fit from a cursor (just past the last block handed out), scanning
//! `busy` a word at a time and skipping full words, so a search costs the words it
//! scans; in the common case the cursor sits at free space and it is O(1).
//!
//! Memory: 2 bits per device block (both bitmaps, rounded up to whole bitmap blocks), one
//! block pointer per bitmap block and per indirect block (24 B per 32 448 blocks), the set
//! of bitmap blocks changed since the last commit (at most one entry per bitmap block), and
//! the deferred frees (runs; a block is freed at most once while deferred, so at most one
//! entry per device block). All of it is bounded by the device size, independent of the
//! number of objects, datasets or snapshots.
//!
//! # Deferred frees
//!
//! [`SpaceMap::free`] clears `durable` at once (the next txg no longer counts the block),
//! but the block stays `busy` until two [`SpaceMap::committed`] calls have happened after
//! the [`SpaceMap::commit`] of the txg the free belongs to. Exactly: a free made while
//! txg T is open (before `commit` for T returns, including the old homes that commit
//! frees itself) is released by the `committed` call for txg T + 1.
//!
//! Why: the two superblock copies hold the newest two committed txgs, and open falls back
//! to the older copy when the newer one is lost or torn. A block freed in T is reachable
//! from T − 1. After T commits the copies hold T and T − 1, so reusing the block then would
//! let a lost superblock write of T (falling back one txg to T − 1) find it overwritten.
//! Once T + 1 has committed the copies hold T + 1 and T, neither reaches the block, and it
//! may be written again. (A free made after `commit` for T but before `committed` for T
//! belongs to T + 1 and is released by `committed` for T + 2.)
//!
//! [`SpaceMap::load`] starts with `busy = durable`: deferrals are not persisted.
//!
//! # On disk
//!
//! The bitmap is cut into bitmap blocks of [`BITS_PER_BITMAP`] bits (kind `SpaceBitmap`,
//! level 0; payload: [`WORDS_PER_BITMAP`] little-endian `u64` words, bit `b` of word `w` of
//! bitmap block `i` is device block `i * BITS_PER_BITMAP + w * 64 + b`; bits at or past the
//! device's end are zero). Above them sit indirect blocks (kind `SpaceIndirect`, level
//! 1 or more; payload: `u16 count`, then `count` block pointers of 24 B, at most [`FANOUT`]):
//! indirect `j` of level `l` points to nodes `j * FANOUT ..` of level `l − 1`, and `count`
//! is exactly the number of level-`l − 1` nodes it covers (the last one may cover fewer).
//! Levels are added until one node remains: the root, one [`BlockPtr`] (the single bitmap
//! block when there is only one). A bitmap block that is all zero, and an indirect block
//! whose pointers are all empty, need not be stored: its pointer is empty (address 0). So
//! a large, mostly empty device costs only the bitmap blocks that hold a set bit.
//!
//! [`SpaceMap::commit`] rewrites, copy-on-write, every bitmap block changed since the last
//! commit and every indirect above one: each at a new home taken from the map itself with
//! [`SpaceMap::alloc_meta`] (which sets bits and so may change further bitmap blocks,
//! hence a loop to a fixpoint), the old home freed (deferred, as above). The bitmap written
//! for txg T therefore counts the homes of T's own space map blocks and every other
//! metadata block allocated in T, and no reservation not yet `commit_use`d.

use super::VdeError;
use super::block::{self, BLOCK, Block, BlockPtr, NodeKind, PAYLOAD2};
use super::format::{get16, get64, put16, put64};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// `u64` words in one bitmap block's payload.
pub const WORDS_PER_BITMAP: usize = PAYLOAD2 / 8;
/// Device blocks one bitmap block covers (one bit each).
pub const BITS_PER_BITMAP: u64 = (WORDS_PER_BITMAP * 64) as u64;
/// Block pointers in one indirect block.
pub const FANOUT: usize = (PAYLOAD2 - 2) / BlockPtr::SIZE;
const _: () = assert!(2 + FANOUT * BlockPtr::SIZE <= PAYLOAD2 && FANOUT <= u16::MAX as usize);

/// The space map: allocation bitmaps, deferred frees, copy-on-write persistence. See the
/// module documentation.
#[derive(Debug)]
pub struct SpaceMap {
    /// Device blocks.
    total: u64,
    /// One bit per block: in use as of the next committed txg.
    durable: Vec<u64>,
    /// One bit per block: durable, reserved, or freed and deferred. Bits at or past `total`
    /// are set, so the search never returns them.
    busy: Vec<u64>,
    /// Set bits of `durable`.
    used: u64,
    /// Set bits of `busy` below `total`.
    busy_used: u64,
    /// Where the next search starts (< total).
    cursor: u64,
    /// `ptrs[l][i]`: the committed pointer of node `i` of level `l` (level 0: bitmap
    /// blocks); the last level has one node, the root.
    ptrs: Vec<Vec<Option<BlockPtr>>>,
    /// Bitmap blocks whose `durable` bits changed since the last commit.
    dirty: BTreeSet<usize>,
    /// Frees still held busy: (commits when freed, first block, blocks).
    deferred: VecDeque<(u64, u64, u64)>,
    /// `commit` calls completed.
    commits: u64,
    /// `committed` calls.
    committed: u64,
}

/// Sets bits `start..start + len`; returns how many were clear.
fn set_bits(words: &mut [u64], start: u64, len: u64) -> u64 {
    let (mut pos, end, mut changed) = (start, start + len, 0);
    while pos < end {
        let (w, b) = ((pos / 64) as usize, pos % 64);
        let n = (64 - b).min(end - pos);
        let mask = if n == 64 { !0 } else { ((1u64 << n) - 1) << b };
        changed += u64::from((mask & !words[w]).count_ones());
        words[w] |= mask;
        pos += n;
    }
    changed
}

/// Clears bits `start..start + len`; returns how many were set.
fn clear_bits(words: &mut [u64], start: u64, len: u64) -> u64 {
    let (mut pos, end, mut changed) = (start, start + len, 0);
    while pos < end {
        let (w, b) = ((pos / 64) as usize, pos % 64);
        let n = (64 - b).min(end - pos);
        let mask = if n == 64 { !0 } else { ((1u64 << n) - 1) << b };
        changed += u64::from((mask & words[w]).count_ones());
        words[w] &= !mask;
        pos += n;
    }
    changed
}

fn bit(words: &[u64], at: u64) -> bool {
    words[(at / 64) as usize] >> (at % 64) & 1 == 1
}

impl SpaceMap {
    /// A map of `total` blocks with nothing in use, no committed blocks.
    fn empty(total: u64) -> SpaceMap {
        let nb = total.div_ceil(BITS_PER_BITMAP).max(1) as usize;
        let nwords = nb * WORDS_PER_BITMAP;
        let mut busy = vec![0u64; nwords];
        // Blocks past the end are permanently busy.
        set_bits(&mut busy, total, nwords as u64 * 64 - total);
        let mut ptrs = vec![vec![None; nb]];
        while ptrs.last().expect("one level").len() > 1 {
            let n = ptrs.last().expect("one level").len().div_ceil(FANOUT);
            ptrs.push(vec![None; n]);
        }
        SpaceMap {
            total,
            durable: vec![0u64; nwords],
            busy,
            used: 0,
            busy_used: 0,
            cursor: 0,
            ptrs,
            dirty: BTreeSet::new(),
            deferred: VecDeque::new(),
            commits: 0,
            committed: 0,
        }
    }

    /// A fresh map of `total` blocks: blocks `0..first` (superblocks, intent log) in use,
    /// the rest free. Nothing is committed yet: the first [`SpaceMap::commit`] writes it.
    ///
    /// Panics if `first > total`.
    pub fn format(total: u64, first: u64) -> SpaceMap {
        assert!(
            first <= total,
            "space map: {first} reserved blocks on a device of {total}"
        );
        let mut m = SpaceMap::empty(total);
        m.set_durable(0, first);
        m.busy_used += set_bits(&mut m.busy, 0, first);
        m.cursor = if first < total { first } else { 0 };
        m
    }

    /// Loads the committed map at `root` for a device of `total` blocks, reading bitmap
    /// and indirect blocks through `read` (which checks them against their pointers with
    /// [`block::check`]). The result's `busy` bitmap equals its `durable` one.
    ///
    /// Errors: whatever `read` returns; [`VdeError::Corrupt`] naming the block for a
    /// pointer outside `2..total`, a child born after its parent, a block of the wrong
    /// kind or level, an indirect block whose count is not the number of nodes it covers,
    /// a set bit past the device's end, two pointers to one block, or a space map block
    /// its own bitmap does not mark in use.
    #[allow(clippy::type_complexity)] // the signature v2.md gives
    pub fn load(
        total: u64,
        root: Option<BlockPtr>,
        read: &mut dyn FnMut(&BlockPtr, NodeKind) -> Result<Arc<Block>, VdeError>,
    ) -> Result<SpaceMap, VdeError> {
        let mut m = SpaceMap::empty(total);
        let mut homes = Vec::new();
        if let Some(r) = root {
            let top = m.ptrs.len() - 1;
            m.load_node(top, 0, r, None, u64::MAX, read, &mut homes)?;
        }
        let nwords = m.durable.len() as u64;
        if total < nwords * 64 {
            let mut tail = m.durable.clone();
            clear_bits(&mut tail, 0, total);
            if let Some(w) = tail.iter().position(|&w| w != 0) {
                let at = w as u64 * 64 + u64::from(tail[w].trailing_zeros());
                let i = (at / BITS_PER_BITMAP) as usize;
                return Err(VdeError::Corrupt {
                    block: m.ptrs[0][i].map_or(0, |p| p.addr),
                    kind: NodeKind::SpaceBitmap.name(),
                    reason: format!("marks block {at} in use, past the device's end ({total} blocks)"),
                });
            }
        }
        homes.sort_unstable();
        if let Some(w) = homes.windows(2).find(|w| w[0] == w[1]) {
            return Err(VdeError::Corrupt {
                block: w[0],
                kind: "space map",
                reason: "two space map pointers name this block".into(),
            });
        }
        if let Some(&h) = homes.iter().find(|&&h| !bit(&m.durable, h)) {
            return Err(VdeError::Corrupt {
                block: h,
                kind: "space map",
                reason: "a space map block its own bitmap marks free".into(),
            });
        }
        m.used = m.durable.iter().map(|w| u64::from(w.count_ones())).sum();
        for (b, d) in m.busy.iter_mut().zip(&m.durable) {
            *b |= d;
        }
        m.busy_used = m.used;
        Ok(m)
    }

    /// Reads node `i` of level `l` at `ptr` (named by `parent`, None: the root) and below.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn load_node(
        &mut self,
        l: usize,
        i: usize,
        ptr: BlockPtr,
        parent: Option<u64>,
        parent_birth: u64,
        read: &mut dyn FnMut(&BlockPtr, NodeKind) -> Result<Arc<Block>, VdeError>,
        homes: &mut Vec<u64>,
    ) -> Result<(), VdeError> {
        let kind = if l == 0 {
            NodeKind::SpaceBitmap
        } else {
            NodeKind::SpaceIndirect
        };
        let total = self.total;
        let bad_ptr = |reason: String| VdeError::Corrupt {
            block: parent.unwrap_or(ptr.addr),
            kind: if parent.is_some() {
                NodeKind::SpaceIndirect.name()
            } else {
                "space map root"
            },
            reason,
        };
        if ptr.addr < 2 || ptr.addr >= total {
            return Err(bad_ptr(format!(
                "points to block {} for a {}, outside 2..{total}",
                ptr.addr,
                kind.name()
            )));
        }
        if ptr.birth > parent_birth {
            return Err(bad_ptr(format!(
                "points to block {} born in txg {}, after its parent (txg {parent_birth})",
                ptr.addr, ptr.birth
            )));
        }
        let blk = read(&ptr, kind)?;
        let corrupt = |reason: String| VdeError::Corrupt {
            block: ptr.addr,
            kind: kind.name(),
            reason,
        };
        let (got_kind, level) = (get16(&blk[..], 4), get16(&blk[..], 6));
        if got_kind != kind as u16 {
            return Err(corrupt(format!("holds kind {got_kind}")));
        }
        if usize::from(level) != l {
            return Err(corrupt(format!("has level {level}, its place is level {l}")));
        }
        let p = block::payload(&blk);
        if l == 0 {
            let base = i * WORDS_PER_BITMAP;
            for (w, word) in self.durable[base..base + WORDS_PER_BITMAP].iter_mut().enumerate() {
                *word = get64(p, w * 8);
            }
        } else {
            let below = self.ptrs[l - 1].len();
            let want = FANOUT.min(below - i * FANOUT);
            let count = usize::from(get16(p, 0));
            if count != want {
                return Err(corrupt(format!("holds {count} pointers, its place covers {want}")));
            }
            for c in 0..count {
                if let Some(child) = BlockPtr::get(p, 2 + c * BlockPtr::SIZE) {
                    self.load_node(l - 1, i * FANOUT + c, child, Some(ptr.addr), ptr.birth, read, homes)?;
                }
            }
        }
        self.ptrs[l][i] = Some(ptr);
        homes.push(ptr.addr);
        Ok(())
    }

    /// Sets `durable` for `start..start + len`, marking changed bitmap blocks dirty.
    fn set_durable(&mut self, start: u64, len: u64) {
        self.change_durable(start, len, true);
    }

    fn change_durable(&mut self, start: u64, len: u64, set: bool) {
        assert!(
            start.checked_add(len).is_some_and(|e| e <= self.total),
            "space map: blocks {start}+{len} past the device's end ({})",
            self.total
        );
        let (mut pos, end) = (start, start + len);
        while pos < end {
            let i = pos / BITS_PER_BITMAP;
            let n = ((i + 1) * BITS_PER_BITMAP).min(end) - pos;
            let changed = if set {
                let c = set_bits(&mut self.durable, pos, n);
                self.used += c;
                c
            } else {
                let c = clear_bits(&mut self.durable, pos, n);
                self.used -= c;
                c
            };
            if changed > 0 {
                self.dirty.insert(i as usize);
            }
            pos += n;
        }
    }

    /// The first block at or after `from` (wrapping) whose `busy` bit is clear.
    fn find_clear(&self, from: u64) -> Option<u64> {
        let n = self.busy.len();
        let w0 = (from / 64) as usize;
        let first = self.busy[w0] | ((1u64 << (from % 64)) - 1);
        if first != !0 {
            return Some(w0 as u64 * 64 + u64::from((!first).trailing_zeros()));
        }
        (w0 + 1..n)
            .chain(0..=w0)
            .find(|&w| self.busy[w] != !0)
            .map(|w| w as u64 * 64 + u64::from((!self.busy[w]).trailing_zeros()))
    }

    /// Clear `busy` bits from `start` on, at most `max`.
    fn run_len(&self, start: u64, max: u64) -> u64 {
        // When `total` fills the last word there is no busy tail bit to stop at.
        let max = max.min(self.total - start);
        let mut n = 0;
        while n < max {
            let pos = start + n;
            let b = pos % 64;
            let free = u64::from((self.busy[(pos / 64) as usize] >> b).trailing_zeros()).min(64 - b);
            n += free;
            if free < 64 - b {
                break;
            }
        }
        n.min(max)
    }

    /// Takes the block run found next and advances the cursor.
    fn take(&mut self, max: u64) -> Option<(u64, u64)> {
        let s = self.find_clear(self.cursor)?;
        let n = self.run_len(s, max);
        self.busy_used += set_bits(&mut self.busy, s, n);
        self.cursor = if s + n >= self.total { 0 } else { s + n };
        Some((s, n))
    }

    /// Reserves `blocks` blocks for data, as runs `(first block, blocks)` of at most
    /// `max_run` blocks each (a `max_run` of 0 counts as 1), next-fit from the cursor. Only
    /// `busy` is set: the blocks become part of a txg with [`SpaceMap::commit_use`] or
    /// go back with [`SpaceMap::unreserve`].
    ///
    /// Errors: [`VdeError::NoSpace`] (nothing reserved) when fewer than `blocks` blocks
    /// are free.
    pub fn reserve(&mut self, blocks: u64, max_run: u64) -> Result<Vec<(u64, u64)>, VdeError> {
        if blocks > self.total - self.busy_used {
            return Err(VdeError::NoSpace { what: "data blocks" });
        }
        let max_run = max_run.max(1);
        let mut runs = Vec::new();
        let mut left = blocks;
        while left > 0 {
            let (s, n) = self
                .take(left.min(max_run))
                .expect("busy_used counts the busy bits, so a clear one exists");
            runs.push((s, n));
            left -= n;
        }
        Ok(runs)
    }

    /// Reserves `blocks` blocks like [`SpaceMap::reserve`], but only from free runs of at
    /// least `min_run` blocks (the last run may be shorter: what is left), scanning once
    /// around the device from the cursor: for an object that may hold only so many
    /// extents when next-fit from the cursor would cut it into too many pieces. With
    /// `min_run` = ⌈`blocks` / *n*⌉ (and `max_run` ≥ `min_run`) the result has at most
    /// *n* runs.
    ///
    /// Errors: [`VdeError::NoSpace`] (nothing reserved) when the free runs that long hold
    /// fewer than `blocks` blocks.
    pub fn reserve_long_runs(&mut self, blocks: u64, max_run: u64, min_run: u64) -> Result<Vec<(u64, u64)>, VdeError> {
        let (max_run, min_run) = (max_run.max(1), min_run.max(1));
        let mut runs = Vec::new();
        let mut left = blocks;
        let (mut at, mut scanned) = (self.cursor, 0u64);
        while left > 0 && scanned < self.total {
            let Some(s) = self.find_clear(at) else { break };
            scanned += if s >= at { s - at } else { self.total - at + s };
            if scanned >= self.total {
                break;
            }
            // Measure no further than this request can use.
            let len = self.run_len(s, left.max(min_run));
            let mut taken = 0;
            while left > 0 && len - taken >= min_run.min(left) {
                let n = (len - taken).min(left).min(max_run);
                self.busy_used += set_bits(&mut self.busy, s + taken, n);
                runs.push((s + taken, n));
                taken += n;
                left -= n;
            }
            scanned += len;
            at = if s + len >= self.total { 0 } else { s + len };
        }
        if left > 0 {
            for &(s, n) in &runs {
                self.unreserve(s, n);
            }
            return Err(VdeError::NoSpace {
                what: "contiguous data blocks (the free space is too fragmented)",
            });
        }
        self.cursor = at;
        Ok(runs)
    }

    /// Blocks `start..start + len`, reserved, become part of the next txg (`durable`
    /// set). Panics if the range passes the device's end.
    pub fn commit_use(&mut self, start: u64, len: u64) {
        debug_assert!(
            (start..start + len).all(|b| bit(&self.busy, b)),
            "commit_use of unreserved blocks {start}+{len}"
        );
        self.set_durable(start, len);
    }

    /// Blocks `start..start + len` named by an intent log record replayed at open are
    /// reserved (`busy` set), so [`SpaceMap::commit_use`] may follow and nothing is handed
    /// them again. [`SpaceMap::load`] knows only what the committed txg counts; without
    /// this a replayed object's or volume's data blocks would look free.
    ///
    /// Errors: [`VdeError::Corrupt`] (nothing changed) when the range passes the device's
    /// end or holds a block in use (`busy`: counted by the committed txg, claimed by an
    /// earlier record, or freed by one and still held): a record that names such blocks
    /// cannot have been written by this store's allocator.
    pub fn claim(&mut self, start: u64, len: u64) -> Result<(), VdeError> {
        if start.checked_add(len).is_none_or(|e| e > self.total) {
            return Err(VdeError::Corrupt {
                block: start,
                kind: NodeKind::Log.name(),
                reason: format!("a replayed record names blocks {start}+{len}, past the device's end"),
            });
        }
        // `busy`, not only `durable`: at load they are equal, and during replay `busy` also
        // holds what earlier records claimed, and what they freed (held until the second
        // commit after): the allocator never hands out a block freed in the same or the
        // previous txg, so no record of this store names one.
        if let Some(b) = (start..start + len).find(|&b| bit(&self.busy, b)) {
            return Err(VdeError::Corrupt {
                block: b,
                kind: NodeKind::Log.name(),
                reason: format!(
                    "a replayed record names block {b}, which the committed txg or an earlier record counts in use"
                ),
            });
        }
        self.busy_used += set_bits(&mut self.busy, start, len);
        Ok(())
    }

    /// A reservation `start..start + len` is given back (`busy` cleared). Panics if the
    /// range passes the device's end.
    pub fn unreserve(&mut self, start: u64, len: u64) {
        assert!(
            start.checked_add(len).is_some_and(|e| e <= self.total),
            "space map: unreserve of blocks {start}+{len} past the device's end ({})",
            self.total
        );
        debug_assert!(
            (start..start + len).all(|b| !bit(&self.durable, b)),
            "unreserve of durable blocks {start}+{len}"
        );
        self.busy_used -= clear_bits(&mut self.busy, start, len);
    }

    /// One block for a metadata node of the open txg (`busy` and `durable` set at once).
    ///
    /// Errors: [`VdeError::NoSpace`] when no block is free.
    pub fn alloc_meta(&mut self) -> Result<u64, VdeError> {
        if self.busy_used == self.total {
            return Err(VdeError::NoSpace {
                what: "metadata blocks",
            });
        }
        let (s, _) = self
            .take(1)
            .expect("busy_used counts the busy bits, so a clear one exists");
        self.set_durable(s, 1);
        Ok(s)
    }

    /// Blocks `start..start + len` are no longer referenced from the open txg: `durable`
    /// is cleared now, `busy` only by the [`SpaceMap::committed`] call that follows the
    /// commit of the next txg after this one (see the module documentation: the
    /// superblock pair). Panics if the range passes the device's end.
    pub fn free(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.change_durable(start, len, false);
        if let Some(last) = self.deferred.back_mut()
            && last.0 == self.commits
            && last.1 + last.2 == start
        {
            last.2 += len;
            return;
        }
        self.deferred.push_back((self.commits, start, len));
    }

    /// Whether node `i` of level `l` stores nothing (all-zero bitmap; indirect whose
    /// children, as they will be after this commit, are all empty).
    fn node_empty(&self, l: usize, i: usize, new: &[BTreeMap<usize, Option<u64>>]) -> bool {
        if l == 0 {
            let base = i * WORDS_PER_BITMAP;
            return self.durable[base..base + WORDS_PER_BITMAP].iter().all(|&w| w == 0);
        }
        let below = self.ptrs[l - 1].len();
        (i * FANOUT..below.min((i + 1) * FANOUT)).all(|c| match new[l - 1].get(&c) {
            Some(home) => home.is_none(),
            None => self.ptrs[l - 1][c].is_none(),
        })
    }

    /// Gives node `i` of level `l` its home for this commit (freeing the old one the first
    /// time); returns whether anything changed.
    fn place(&mut self, l: usize, i: usize, new: &mut [BTreeMap<usize, Option<u64>>]) -> Result<bool, VdeError> {
        let empty = self.node_empty(l, i, new);
        match new[l].get(&i) {
            Some(Some(_)) => Ok(false),
            Some(None) if empty => Ok(false),
            Some(None) => {
                let home = self.alloc_meta()?;
                new[l].insert(i, Some(home));
                Ok(true)
            }
            None => {
                if let Some(old) = self.ptrs[l][i] {
                    self.free(old.addr, 1);
                }
                let home = if empty { None } else { Some(self.alloc_meta()?) };
                new[l].insert(i, home);
                Ok(true)
            }
        }
    }

    /// Writes every bitmap block changed since the last commit and the indirect blocks
    /// above them, copy-on-write, sealed with birth `txg` and store `tag`, through
    /// `write(block number, sealed block)`; returns the new root (None: nothing stored,
    /// the map is all free). New homes come from the map itself (looping until no block
    /// changes any more); old homes are freed, deferred. Nothing changed: nothing is
    /// written and the root stays.
    ///
    /// Errors: [`VdeError::NoSpace`] when no block is left for a new home, or what `write`
    /// returns; the map is then unfit to commit again (the store must not write a
    /// superblock; it reopens from the last committed one).
    pub fn commit(
        &mut self,
        txg: u64,
        tag: u64,
        write: &mut dyn FnMut(u64, Box<Block>) -> Result<(), VdeError>,
    ) -> Result<Option<BlockPtr>, VdeError> {
        if self.dirty.is_empty() {
            self.commits += 1;
            return Ok(self.root());
        }
        let levels = self.ptrs.len();
        let mut new: Vec<BTreeMap<usize, Option<u64>>> = vec![BTreeMap::new(); levels];
        loop {
            let mut progress = false;
            let dirty: Vec<usize> = self.dirty.iter().copied().collect();
            for i in dirty {
                progress |= self.place(0, i, &mut new)?;
            }
            for l in 1..levels {
                // Parents of the children whose pointer changes (not: empty before and after).
                let parents: BTreeSet<usize> = new[l - 1]
                    .iter()
                    .filter(|&(&c, home)| home.is_some() || self.ptrs[l - 1][c].is_some())
                    .map(|(&c, _)| c / FANOUT)
                    .collect();
                for i in parents {
                    progress |= self.place(l, i, &mut new)?;
                }
            }
            if !progress {
                break;
            }
        }
        // Every home is placed and the bitmap is final: write children before parents.
        for (l, placed) in new.iter().enumerate() {
            for (&i, &home) in placed {
                let ptr = match home {
                    None => None,
                    Some(addr) => {
                        let mut blk: Box<Block> = Box::new([0u8; BLOCK]);
                        let p = block::payload_mut(&mut blk);
                        let kind = if l == 0 {
                            let base = i * WORDS_PER_BITMAP;
                            for (w, &word) in self.durable[base..base + WORDS_PER_BITMAP].iter().enumerate() {
                                put64(p, w * 8, word);
                            }
                            NodeKind::SpaceBitmap
                        } else {
                            let below = &self.ptrs[l - 1];
                            let children = &below[i * FANOUT..below.len().min((i + 1) * FANOUT)];
                            put16(p, 0, children.len() as u16);
                            for (c, &child) in children.iter().enumerate() {
                                BlockPtr::put(child, p, 2 + c * BlockPtr::SIZE);
                            }
                            NodeKind::SpaceIndirect
                        };
                        let ptr = block::seal(&mut blk, kind, l as u16, txg, addr, tag);
                        write(addr, blk)?;
                        Some(ptr)
                    }
                };
                self.ptrs[l][i] = ptr;
            }
        }
        self.dirty.clear();
        self.commits += 1;
        Ok(self.root())
    }

    /// The root as last committed or loaded (None: nothing stored).
    fn root(&self) -> Option<BlockPtr> {
        self.ptrs.last().expect("one level")[0]
    }

    /// The txg just committed is durable (its superblock flushed): advances the deferral,
    /// releasing (clearing `busy` of) the frees made before the previous `commit`.
    pub fn committed(&mut self) {
        self.committed = (self.committed + 1).min(self.commits);
        while let Some(&(epoch, start, len)) = self.deferred.front() {
            if epoch + 2 > self.committed {
                break;
            }
            self.deferred.pop_front();
            self.busy_used -= clear_bits(&mut self.busy, start, len);
        }
    }

    /// Blocks in use as of the next committed txg (`durable`).
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Blocks on the device.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Blocks freed but not yet released for reuse (deferred until two more commits).
    pub fn deferred_blocks(&self) -> u64 {
        self.deferred.iter().map(|d| d.2).sum()
    }

    /// Blocks neither in use, reserved nor held by a deferred free: what
    /// [`SpaceMap::reserve`] can hand out now.
    pub fn free_now(&self) -> u64 {
        self.total - self.busy_used
    }

    /// Blocks freed but still held busy by the deferral (they come back with the second
    /// [`SpaceMap::committed`] after their free), plus reservations not yet in a txg.
    pub fn held(&self) -> u64 {
        self.busy_used - self.used
    }

    /// Whether `block` is in use as of the next committed txg (`durable`); false past the
    /// device's end.
    pub fn is_used(&self, block: u64) -> bool {
        block < self.total && bit(&self.durable, block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    const TAG: u64 = 0x5eed_0123_4567_89ab;

    /// An in-memory device holding the space map's blocks.
    #[derive(Default)]
    struct Disk {
        blocks: HashMap<u64, Arc<Block>>,
        writes: Vec<u64>,
    }

    impl Disk {
        fn commit(&mut self, m: &mut SpaceMap, txg: u64) -> Option<BlockPtr> {
            let blocks = &mut self.blocks;
            let writes = &mut self.writes;
            m.commit(txg, TAG, &mut |addr, b| {
                writes.push(addr);
                blocks.insert(addr, Arc::from(b));
                Ok(())
            })
            .unwrap()
        }

        fn read(&self) -> impl FnMut(&BlockPtr, NodeKind) -> Result<Arc<Block>, VdeError> + '_ {
            |p, kind| {
                let b = self
                    .blocks
                    .get(&p.addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new([0u8; BLOCK]));
                block::check(&b, p.addr, kind, Some(p), TAG)?;
                Ok(b)
            }
        }

        fn load(&self, total: u64, root: Option<BlockPtr>) -> Result<SpaceMap, VdeError> {
            SpaceMap::load(total, root, &mut self.read())
        }

        /// Every block the tree at `root` uses (walked independently of `load`).
        fn homes(&self, total: u64, root: Option<BlockPtr>) -> HashSet<u64> {
            let levels = SpaceMap::empty(total).ptrs.len();
            let mut out = HashSet::new();
            let mut stack: Vec<(BlockPtr, usize)> = root.map(|r| (r, levels - 1)).into_iter().collect();
            while let Some((p, l)) = stack.pop() {
                out.insert(p.addr);
                if l > 0 {
                    let b = &self.blocks[&p.addr];
                    let pl = block::payload(b);
                    for c in 0..usize::from(get16(pl, 0)) {
                        if let Some(ch) = BlockPtr::get(pl, 2 + c * 24) {
                            stack.push((ch, l - 1));
                        }
                    }
                }
            }
            out
        }
    }

    fn durable_set(m: &SpaceMap) -> BTreeSet<u64> {
        (0..m.total).filter(|&b| m.is_used(b)).collect()
    }

    #[test]
    fn constants_fit_a_block() {
        assert_eq!(WORDS_PER_BITMAP, 507);
        assert_eq!(BITS_PER_BITMAP, 32448);
        assert_eq!(FANOUT, 168);
    }

    #[test]
    fn format_commit_load_round_trip() {
        let mut m = SpaceMap::format(1000, 66);
        assert_eq!(m.used(), 66);
        let mut d = Disk::default();
        let root = d.commit(&mut m, 1);
        // One bitmap block, at the first free block.
        assert_eq!(d.writes, vec![66]);
        assert_eq!(root.unwrap().addr, 66);
        assert_eq!(m.used(), 67);
        let l = d.load(1000, root).unwrap();
        assert_eq!(l.durable, m.durable);
        assert_eq!(l.busy_used, l.used());
        assert!((0..1000).all(|b| bit(&l.busy, b) == bit(&l.durable, b)));
        assert_eq!(l.used(), 67);
        assert!(l.is_used(0) && l.is_used(66) && !l.is_used(67) && !l.is_used(5000));
        // Nothing changed: nothing written.
        d.writes.clear();
        assert_eq!(d.commit(&mut m, 2), root);
        assert!(d.writes.is_empty());
    }

    #[test]
    fn reservations_are_not_durable_until_commit_use() {
        let mut m = SpaceMap::format(500, 10);
        let runs = m.reserve(20, 8).unwrap();
        assert_eq!(runs, vec![(10, 8), (18, 8), (26, 4)]);
        let mut d = Disk::default();
        let root = d.commit(&mut m, 1);
        // The home skips the reserved blocks.
        assert_eq!(root.unwrap().addr, 30);
        let l = d.load(500, root).unwrap();
        assert!(!l.is_used(10) && !l.is_used(29) && l.is_used(30));
        m.commit_use(10, 8);
        m.unreserve(18, 12);
        let root = d.commit(&mut m, 2);
        let l = d.load(500, root).unwrap();
        assert_eq!(durable_set(&l), (0..18).chain([31]).collect());
        // The unreserved blocks are reusable at once.
        assert_eq!(m.reserve(3, 100).unwrap(), vec![(32, 3)]);
    }

    /// Every block reserve hands out now (given back at once).
    fn grab(m: &mut SpaceMap) -> BTreeSet<u64> {
        let runs = m.reserve(m.total - m.busy_used, u64::MAX).unwrap();
        assert!(m.reserve(1, 1).is_err());
        let mut out = BTreeSet::new();
        for (s, n) in runs {
            m.unreserve(s, n);
            out.extend(s..s + n);
        }
        out
    }

    #[test]
    fn a_freed_block_waits_for_two_commits() {
        let mut m = SpaceMap::format(100, 2);
        let mut d = Disk::default();
        // Txg 1: blocks 2..50 in use; the bitmap's home is 50.
        assert_eq!(m.reserve(48, 1000).unwrap(), vec![(2, 48)]);
        m.commit_use(2, 48);
        assert_eq!(d.commit(&mut m, 1).unwrap().addr, 50);
        m.committed();
        // Txg 2 frees 10..20: held while txg 1 (which reaches them) is a superblock copy.
        m.free(10, 10);
        assert!(!m.is_used(10) && m.is_used(20));
        assert!(grab(&mut m).is_disjoint(&(10..20).collect()));
        // The commit of txg 2 moves the bitmap, freeing 50.
        assert_ne!(d.commit(&mut m, 2).unwrap().addr, 50);
        m.committed();
        let got = grab(&mut m);
        assert!(got.is_disjoint(&(10..20).chain([50]).collect()), "{got:?}");
        // Txg 3 commits: the copies are txg 3 and 2, neither reaches 10..20 nor 50.
        d.commit(&mut m, 3);
        m.committed();
        let got = grab(&mut m);
        assert!(got.is_superset(&(10..20).chain([50]).collect()), "{got:?}");
        // A free between commit and committed belongs to the next txg.
        d.commit(&mut m, 4);
        m.free(30, 1);
        m.committed();
        d.commit(&mut m, 5);
        m.committed();
        assert!(!grab(&mut m).contains(&30));
        d.commit(&mut m, 6);
        m.committed();
        assert!(grab(&mut m).contains(&30));
    }

    #[test]
    fn a_device_filling_whole_words_reserves_to_its_last_block() {
        for total in [64, 128, BITS_PER_BITMAP, 2 * BITS_PER_BITMAP] {
            let mut m = SpaceMap::format(total, 2);
            // The cursor moves to 12: the next search runs to the device's end, then wraps.
            assert_eq!(m.reserve(10, u64::MAX).unwrap(), vec![(2, 10)]);
            m.unreserve(2, 10);
            assert_eq!(m.reserve(total - 2, u64::MAX).unwrap(), vec![(12, total - 12), (2, 10)]);
            assert!(m.reserve(1, 1).is_err());
            m.unreserve(total - 1, 1);
            assert_eq!(m.alloc_meta().unwrap(), total - 1);
        }
    }

    #[test]
    fn long_runs_skip_short_free_pieces_and_are_all_or_nothing() {
        let mut m = SpaceMap::format(1000, 2);
        let all = m.reserve(998, u64::MAX).unwrap();
        assert_eq!(all, vec![(2, 998)]);
        // Free: every other block of 2..400, and 700..760, 900..1000.
        for b in (2..400).step_by(2) {
            m.unreserve(b, 1);
        }
        m.unreserve(700, 60);
        m.unreserve(900, 100);
        m.cursor = 2;
        let free = m.free_now();
        // 150 blocks in at most 3 runs: of 50 or more but the last (what is left).
        let runs = m.reserve_long_runs(150, 64, 50).unwrap();
        assert!(
            runs.len() <= 3 && runs[..runs.len() - 1].iter().all(|r| r.1 >= 50),
            "{runs:?}"
        );
        assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), 150);
        assert!(runs.iter().all(|r| r.0 >= 700));
        for &(s, n) in &runs {
            m.unreserve(s, n);
        }
        // 170 blocks in runs of 100: not there; nothing is left reserved.
        assert!(matches!(
            m.reserve_long_runs(170, 256, 100),
            Err(VdeError::NoSpace { .. })
        ));
        assert_eq!(m.free_now(), free);
        // A minimum run of 0 means 1 (it once pushed empty runs forever).
        m.cursor = 2;
        let runs = m.reserve_long_runs(5, 64, 0).unwrap();
        assert!(
            runs.iter().all(|r| r.1 > 0) && runs.iter().map(|r| r.1).sum::<u64>() == 5,
            "{runs:?}"
        );
    }

    #[test]
    fn no_space_when_full_and_reserve_is_all_or_nothing() {
        let mut m = SpaceMap::format(64 * 3 + 5, 3);
        let free = m.total() - 3;
        assert!(matches!(
            m.reserve(free + 1, 7),
            Err(VdeError::NoSpace { what: "data blocks" })
        ));
        // Nothing taken by the failed call.
        let runs = m.reserve(free, 7).unwrap();
        assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), free);
        assert!(runs.iter().all(|r| r.1 <= 7));
        let mut seen = HashSet::new();
        for &(s, n) in &runs {
            for b in s..s + n {
                assert!(b >= 3 && b < m.total() && seen.insert(b));
            }
        }
        assert!(matches!(
            m.alloc_meta(),
            Err(VdeError::NoSpace {
                what: "metadata blocks"
            })
        ));
        assert!(matches!(m.reserve(1, 1), Err(VdeError::NoSpace { .. })));
        // Commit needs a home and fails cleanly.
        m.commit_use(3, 4);
        let e = m.commit(1, TAG, &mut |_, _| Ok(())).unwrap_err();
        assert!(matches!(e, VdeError::NoSpace { .. }));
    }

    #[test]
    fn a_huge_device_writes_only_touched_bitmap_blocks() {
        const TOTAL: u64 = 200_000_000;
        let mut m = SpaceMap::format(TOTAL, 4098);
        // 6164 bitmap blocks, 37 indirects, one top indirect: two indirect levels.
        assert_eq!(m.ptrs.iter().map(Vec::len).collect::<Vec<_>>(), vec![6164, 37, 1]);
        // 2 bits per block plus < 1 % of pointers.
        assert!(m.durable.len() * 8 * 2 <= (TOTAL / 4 + 2 * 4096) as usize);
        let mut d = Disk::default();
        let r1 = d.commit(&mut m, 1);
        // Bitmap block 0, indirect 0 of level 1, the top.
        assert_eq!(d.writes.len(), 3);
        let l = d.load(TOTAL, r1).unwrap();
        assert_eq!(l.durable, m.durable);
        assert_eq!(l.used(), 4098 + 3);
        drop(l);
        m.committed();
        // Use blocks far apart: near the end, and in the middle.
        d.writes.clear();
        let far = TOTAL - 10;
        let mid = 100_000_000;
        // commit_use needs the blocks busy: reserve them through the bitmap directly.
        m.busy_used += set_bits(&mut m.busy, far, 5);
        m.commit_use(far, 5);
        m.busy_used += set_bits(&mut m.busy, mid, 1);
        m.commit_use(mid, 1);
        let r2 = d.commit(&mut m, 2);
        m.committed();
        // Bitmap blocks: 0 (new homes, old homes freed), mid's, far's; indirects above.
        let bm: BTreeSet<u64> = [0, mid / BITS_PER_BITMAP, far / BITS_PER_BITMAP].into();
        let ind1: BTreeSet<u64> = bm.iter().map(|b| b / FANOUT as u64).collect();
        assert_eq!(d.writes.len(), bm.len() + ind1.len() + 1, "{:?}", d.writes);
        let l = d.load(TOTAL, r2).unwrap();
        assert_eq!(l.durable, m.durable);
        assert!(l.is_used(far) && l.is_used(far + 4) && !l.is_used(far + 5) && l.is_used(mid));
        assert_eq!(l.used(), 4098 + (bm.len() + ind1.len() + 1) as u64 + 6);
        // Free them again: the far bitmap blocks become zero and are no longer stored.
        drop(l);
        m.free(far, 5);
        m.free(mid, 1);
        d.writes.clear();
        let r3 = d.commit(&mut m, 3);
        assert_eq!(d.writes.len(), 3, "{:?}", d.writes);
        assert_eq!(d.homes(TOTAL, r3).len(), 3);
        let l = d.load(TOTAL, r3).unwrap();
        assert_eq!(l.durable, m.durable);
        assert_eq!(l.used(), 4098 + 3);
    }

    fn tamper(d: &mut Disk, addr: u64, f: impl FnOnce(&mut Block) -> (NodeKind, u16)) -> BlockPtr {
        let mut b = *d.blocks[&addr];
        let (kind, level) = f(&mut b);
        let birth = get64(&b, 8);
        let p = block::seal(&mut b, kind, level, birth, addr, TAG);
        d.blocks.insert(addr, Arc::new(b));
        p
    }

    /// A two-level map (bitmap blocks under one indirect) on disk.
    fn two_level() -> (Disk, u64, BlockPtr) {
        let total = BITS_PER_BITMAP * 2 + 100;
        let mut m = SpaceMap::format(total, 10);
        m.busy_used += set_bits(&mut m.busy, BITS_PER_BITMAP + 5, 1);
        m.commit_use(BITS_PER_BITMAP + 5, 1);
        m.busy_used += set_bits(&mut m.busy, 2 * BITS_PER_BITMAP + 5, 1);
        m.commit_use(2 * BITS_PER_BITMAP + 5, 1);
        let mut d = Disk::default();
        let root = d.commit(&mut m, 1).unwrap();
        assert!(d.load(total, Some(root)).is_ok());
        (d, total, root)
    }

    fn corrupt_msg(r: Result<SpaceMap, VdeError>) -> (u64, String) {
        match r {
            Err(e @ VdeError::Corrupt { block, .. }) | Err(e @ VdeError::Mismatch { block, .. }) => {
                (block, e.to_string())
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("hostile map loaded"),
        }
    }

    #[test]
    fn hostile_pointers_and_blocks_are_named_errors() {
        let (d, total, root) = two_level();
        let top = root.addr;
        // Root outside the device, at a superblock.
        for bad in [1, total, u64::MAX] {
            let (b, msg) = corrupt_msg(d.load(total, Some(BlockPtr { addr: bad, ..root })));
            assert_eq!(b, bad);
            assert!(msg.contains("outside"), "{msg}");
        }
        // A pointer in the indirect to a block past the end / to block 1.
        for bad in [total + 7, 1] {
            let mut d2 = Disk {
                blocks: d.blocks.clone(),
                writes: vec![],
            };
            let p = tamper(&mut d2, top, |b| {
                put64(block::payload_mut(b), 2, bad);
                (NodeKind::SpaceIndirect, 1)
            });
            let (b, msg) = corrupt_msg(d2.load(total, Some(p)));
            assert_eq!(b, top);
            assert!(msg.contains(&format!("block {bad}")), "{msg}");
        }
        // Wrong count.
        let mut d2 = Disk {
            blocks: d.blocks.clone(),
            writes: vec![],
        };
        let p = tamper(&mut d2, top, |b| {
            put16(block::payload_mut(b), 0, 400);
            (NodeKind::SpaceIndirect, 1)
        });
        let (b, msg) = corrupt_msg(d2.load(total, Some(p)));
        assert_eq!(b, top);
        assert!(msg.contains("400 pointers"), "{msg}");
        // Wrong level.
        let mut d2 = Disk {
            blocks: d.blocks.clone(),
            writes: vec![],
        };
        let p = tamper(&mut d2, top, |_| (NodeKind::SpaceIndirect, 3));
        let (b, msg) = corrupt_msg(d2.load(total, Some(p)));
        assert_eq!((b, msg.contains("level 3")), (top, true), "{msg}");
        // Wrong kind (the read check catches it).
        let mut d2 = Disk {
            blocks: d.blocks.clone(),
            writes: vec![],
        };
        let p = tamper(&mut d2, top, |_| (NodeKind::SpaceBitmap, 1));
        let (b, _) = corrupt_msg(d2.load(total, Some(p)));
        assert_eq!(b, top);
        // The root pointing at a bitmap block (wrong kind for its place).
        let child = BlockPtr::get(block::payload(&d.blocks[&top]), 2).unwrap();
        let (b, _) = corrupt_msg(d.load(total, Some(child)));
        assert_eq!(b, child.addr);
        // A stale child (wrong checksum in the pointer).
        let mut d2 = Disk {
            blocks: d.blocks.clone(),
            writes: vec![],
        };
        let p = tamper(&mut d2, top, |b| {
            put64(block::payload_mut(b), 2 + 16, 12345);
            (NodeKind::SpaceIndirect, 1)
        });
        let (b, _) = corrupt_msg(d2.load(total, Some(p)));
        assert_eq!(b, child.addr);
        // A bitmap marking blocks past the end; a bitmap not marking its own home.
        let last = BlockPtr::get(block::payload(&d.blocks[&top]), 2 + 2 * 24).unwrap();
        for (at, want) in [(WORDS_PER_BITMAP - 1, "past the device's end"), (0, "marks free")] {
            let mut d2 = Disk {
                blocks: d.blocks.clone(),
                writes: vec![],
            };
            let target = if at == 0 { child.addr } else { last.addr };
            // Re-seal the bitmap and re-point the indirect at it.
            let bp = tamper(&mut d2, target, |b| {
                let p = block::payload_mut(b);
                if at == 0 {
                    put64(p, 0, 0);
                } else {
                    put64(p, at * 8, 1 << 63);
                }
                (NodeKind::SpaceBitmap, 0)
            });
            let slot = if at == 0 { 0 } else { 2 };
            let p = tamper(&mut d2, top, |b| {
                BlockPtr::put(Some(bp), block::payload_mut(b), 2 + slot * 24);
                (NodeKind::SpaceIndirect, 1)
            });
            let (_, msg) = corrupt_msg(d2.load(total, Some(p)));
            assert!(msg.contains(want), "{msg}");
        }
        // Two pointers naming one block.
        let mut d2 = Disk {
            blocks: d.blocks.clone(),
            writes: vec![],
        };
        let p = tamper(&mut d2, top, |b| {
            BlockPtr::put(Some(child), block::payload_mut(b), 2 + 24);
            (NodeKind::SpaceIndirect, 1)
        });
        let (b, msg) = corrupt_msg(d2.load(total, Some(p)));
        assert_eq!(b, child.addr);
        assert!(msg.contains("two space map pointers"), "{msg}");
        // Garbage in every byte of the root's payload, sealed validly: an error, no panic.
        for seed in 0..64u64 {
            let mut d2 = Disk {
                blocks: d.blocks.clone(),
                writes: vec![],
            };
            let p = tamper(&mut d2, top, |b| {
                let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for byte in block::payload_mut(b).iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *byte = x as u8;
                }
                if seed % 2 == 0 {
                    put16(block::payload_mut(b), 0, 3);
                }
                (NodeKind::SpaceIndirect, 1)
            });
            assert!(d2.load(total, Some(p)).is_err());
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Reserve(u64, u64),
        CommitUse(usize),
        Unreserve(usize),
        AllocMeta,
        Free(usize),
        Commit { reopen: bool },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u64..300, 1u64..100).prop_map(|(n, r)| Op::Reserve(n, r)),
            4 => any::<usize>().prop_map(Op::CommitUse),
            1 => any::<usize>().prop_map(Op::Unreserve),
            3 => Just(Op::AllocMeta),
            4 => any::<usize>().prop_map(Op::Free),
            2 => any::<bool>().prop_map(|r| Op::Commit { reopen: r }),
        ]
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum St {
        Free,
        Fixed,
        Reserved,
        Owned,
        Home,
        /// Freed; the model's commit count when freed.
        Deferred(u64),
    }

    /// The model: every block's state (the space map's own homes read off the disk).
    struct Model {
        st: Vec<St>,
        /// Durable runs the user owns (commit_use'd or alloc_meta'd).
        owned: Vec<(u64, u64)>,
        /// Reservations not yet used.
        reserved: Vec<(u64, u64)>,
        commits: u64,
        committed: u64,
    }

    impl Model {
        fn busy(&self, b: u64) -> bool {
            self.st[b as usize] != St::Free
        }
        fn busy_count(&self) -> u64 {
            self.st.iter().filter(|&&s| s != St::Free).count() as u64
        }
        fn durable(&self) -> BTreeSet<u64> {
            (0..self.st.len() as u64)
                .filter(|&b| matches!(self.st[b as usize], St::Fixed | St::Owned | St::Home))
                .collect()
        }
        fn set(&mut self, s: u64, n: u64, to: St) {
            for b in s..s + n {
                self.st[b as usize] = to;
            }
        }
        fn hand_out(&mut self, s: u64, n: u64, to: St) {
            for b in s..s + n {
                assert!(
                    (b as usize) < self.st.len() && !self.busy(b),
                    "block {b} handed out while {:?}",
                    self.st.get(b as usize)
                );
            }
            self.set(s, n, to);
        }
    }

    fn run(total: u64, ops: Vec<Op>) {
        let scale = total / 700;
        let mut m = SpaceMap::format(total, 10);
        let mut d = Disk::default();
        let mut md = Model {
            st: vec![St::Free; total as usize],
            owned: vec![],
            reserved: vec![],
            commits: 0,
            committed: 0,
        };
        md.set(0, 10, St::Fixed);
        let mut txg = 0;
        for op in ops {
            match op {
                Op::Reserve(n, r) => {
                    let (n, r) = (n * scale, r * scale);
                    let free = total - md.busy_count();
                    match m.reserve(n, r) {
                        Ok(runs) => {
                            assert_eq!(runs.iter().map(|x| x.1).sum::<u64>(), n);
                            for &(s, len) in &runs {
                                assert!(len >= 1 && len <= r);
                                md.hand_out(s, len, St::Reserved);
                                md.reserved.push((s, len));
                            }
                        }
                        Err(_) => assert!(n > free, "NoSpace with {free} free for {n}"),
                    }
                }
                Op::CommitUse(i) if !md.reserved.is_empty() => {
                    let (s, n) = md.reserved.swap_remove(i % md.reserved.len());
                    m.commit_use(s, n);
                    md.set(s, n, St::Owned);
                    md.owned.push((s, n));
                }
                Op::Unreserve(i) if !md.reserved.is_empty() => {
                    let (s, n) = md.reserved.swap_remove(i % md.reserved.len());
                    m.unreserve(s, n);
                    md.set(s, n, St::Free);
                }
                Op::AllocMeta => match m.alloc_meta() {
                    Ok(b) => {
                        md.hand_out(b, 1, St::Owned);
                        md.owned.push((b, 1));
                    }
                    Err(_) => assert_eq!(md.busy_count(), total),
                },
                Op::Free(i) if !md.owned.is_empty() => {
                    let (s, n) = md.owned.swap_remove(i % md.owned.len());
                    m.free(s, n);
                    md.set(s, n, St::Deferred(md.commits));
                }
                Op::Commit { reopen } => {
                    txg += 1;
                    d.writes.clear();
                    let root = match m.commit(txg, TAG, &mut |addr, b| {
                        d.writes.push(addr);
                        d.blocks.insert(addr, Arc::from(b));
                        Ok(())
                    }) {
                        Ok(r) => r,
                        // A full device: the store would stop here.
                        Err(VdeError::NoSpace { .. }) => return,
                        Err(e) => panic!("{e}"),
                    };
                    // New homes were free before the commit; old ones are deferred.
                    let homes = d.homes(total, root);
                    for &w in &d.writes {
                        assert!(homes.contains(&w));
                    }
                    let commits = md.commits;
                    for b in 0..total {
                        let s = md.st[b as usize];
                        if s == St::Home && !homes.contains(&b) {
                            md.st[b as usize] = St::Deferred(commits);
                        }
                    }
                    for &h in &homes {
                        match md.st[h as usize] {
                            St::Home => assert!(!d.writes.contains(&h), "home {h} rewritten in place"),
                            St::Free => md.st[h as usize] = St::Home,
                            other => panic!("new home {h} was {other:?}"),
                        }
                    }
                    md.commits += 1;
                    let l = d.load(total, root).unwrap();
                    assert_eq!(l.durable, m.durable, "load differs from what commit wrote");
                    assert_eq!(durable_set(&l), md.durable(), "durable differs from the model");
                    assert_eq!(l.used(), md.durable().len() as u64);
                    assert_eq!(m.used(), l.used());
                    m.committed();
                    md.committed += 1;
                    let c = md.committed;
                    for s in md.st.iter_mut() {
                        if let St::Deferred(e) = *s
                            && e + 2 <= c
                        {
                            *s = St::Free;
                        }
                    }
                    if reopen {
                        m = l;
                        for (s, n) in md.reserved.drain(..) {
                            for b in s..s + n {
                                md.st[b as usize] = St::Free;
                            }
                        }
                        for s in md.st.iter_mut() {
                            if let St::Deferred(_) = s {
                                *s = St::Free;
                            }
                        }
                    }
                    assert_eq!(m.busy_used, md.busy_count(), "busy count differs from the model");
                }
                _ => {}
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn random_histories_match_the_model(
            total in prop_oneof![Just(700u64), Just(BITS_PER_BITMAP), Just(BITS_PER_BITMAP * 3 + 17)],
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            run(total, ops);
        }
    }
}
