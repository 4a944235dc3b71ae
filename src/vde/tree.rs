//! Format 2's copy-on-write B+tree: the object index, the dataset directory, extent maps
//! and dead lists are all one of these, told apart by their [`NodeKind`].
//!
//! # Nodes
//!
//! A node is one metadata block ([`super::block`]): the header (kind, level — 0 for a
//! leaf —, birth txg, block number, store tag), then the payload:
//!
//! - leaf: `u16 count`, then `count` × (`u16 klen`, `u16 vlen`, key, value), keys strictly
//!   ascending (bytewise), each 1..=[`Tree::MAX_KEY`] bytes, key + value at most
//!   [`Tree::MAX_ENTRY`] bytes;
//! - interior: `u16 count`, then `count` × (`u16 klen`, key, [`BlockPtr`] 24 B): child `i`
//!   holds the keys `>= key i` and `< key i+1`. Key 0 is written empty (it means "everything
//!   below key 1"); a non-empty key 0 read from disk is ignored.
//!
//! Decoding is total: a node whose checksum verifies but whose bytes are hostile (counts or
//! lengths beyond the payload, keys out of order or outside the range its parent gives it,
//! a level other than its parent's minus one or above [`MAX_LEVEL`], an empty node, a child
//! born after its parent) is a [`VdeError::Corrupt`] naming the block, never a panic. A
//! child is read only through [`NodeIo::read`], which checks it against the parent's
//! [`BlockPtr`] (a stale, torn or misdirected child is a [`VdeError::Mismatch`]).
//!
//! # Copy-on-write
//!
//! A clean node (one a committed root reaches) is never modified in place. The first change
//! below a clean node copies it into a dirty in-memory node and releases its block at once
//! ([`NodeIo::release`], with the block's address and birth): the tree no longer references
//! it from the open txg. Dirty nodes are written only by [`Tree::commit`], children before
//! parents, each at a fresh [`NodeIo::alloc`] address and sealed with birth
//! [`NodeIo::txg`]; the tree is then clean. So a node's birth is >= every descendant's,
//! which [`Tree::walk`] uses to skip old subtrees.
//!
//! Nodes split (by bytes) when their encoding would pass [`PAYLOAD2`]; a node under a quarter
//! of it after a removal merges with a sibling, or, when the two do not fit one node, shares
//! their entries evenly with it (a borrow). A root with one child is replaced by the child;
//! a tree that loses its last entry has no root (every block it had is released).
//!
//! # Errors in the middle of a change
//!
//! An [`Tree::insert`] or [`Tree::remove`] that fails (a node that does not read or does not
//! decode) may leave the tree holding part of the change, with the blocks it copied so far
//! already released. The store must not commit such a tree: it stops (poisons) and recovers
//! from the last committed root and its own records of what was released.
//!
//! # Memory
//!
//! The tree holds its dirty nodes and, during an operation, the path being read (one block
//! per level, at most [`MAX_LEVEL`] + 1). Clean nodes are read again through
//! [`NodeIo::read`] each time they are needed: caching is the store's business.

use super::VdeError;
use super::block::{BLOCK, Block, BlockPtr, NodeKind, PAYLOAD2, payload, payload_mut, seal};
use super::format::{get16, put16};
use std::sync::{Arc, OnceLock};

/// The highest level a node may have (a leaf is level 0). A tree needs ~log₄ of its leaves
/// levels at worst, so 16 is never reached by real data; a node claiming more is corrupt.
pub const MAX_LEVEL: u16 = 16;

/// Most entries a node can hold: a leaf entry is at least 5 bytes (4 of lengths, a 1-byte
/// key), an interior entry at least 26.
const MAX_FANOUT: usize = (PAYLOAD2 - 2) / 5;

/// A node under this many payload bytes after a removal merges with or borrows from a
/// sibling.
const MIN_FILL: usize = PAYLOAD2 / 4;

/// What a tree needs from the store (implemented by pool.rs; tests use an in-memory one).
pub trait NodeIo {
    /// The store tag (seeds checksums; goes in every header).
    fn tag(&self) -> u64;
    /// The open txg: the birth of every node written now.
    fn txg(&self) -> u64;
    /// The block `ptr` names, read (or taken from a cache) and checked with
    /// `block::check(.., kind, Some(ptr), tag)`. A cache should hand out the same
    /// [`NodeBlock`] while it holds the block: its layout is found once, on the first parse.
    fn read(&mut self, ptr: &BlockPtr, kind: NodeKind) -> Result<Arc<NodeBlock>, VdeError>;
    /// A block number for a node written in the open txg (never one a committed root reaches).
    fn alloc(&mut self) -> Result<u64, VdeError>;
    /// Writes a sealed block at its number; durable when the txg commits.
    fn write(&mut self, addr: u64, block: Box<Block>) -> Result<(), VdeError>;
    /// The tree stopped referencing block `addr` born in txg `birth` (copied on write or
    /// removed). The store decides: free it (deferred) or put it on a dead list.
    fn release(&mut self, addr: u64, birth: u64);
}

/// What [`Tree::walk`] shows its visitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visit<'a> {
    /// A node (before its entries or children), with the pointer it was read through and
    /// its level (0: leaf).
    Node {
        /// The pointer the parent (or the caller, for the root) holds.
        ptr: BlockPtr,
        /// 0 for a leaf.
        level: u16,
    },
    /// A leaf entry, in key order within its leaf.
    Entry {
        /// 1..=[`Tree::MAX_KEY`] bytes.
        key: &'a [u8],
        /// The value bytes.
        value: &'a [u8],
    },
}

/// A leaf entry as the read paths return it: (key, value).
pub type Entry = (Vec<u8>, Vec<u8>);

/// The body of an operation on one node (see `with`).
type NodeFn<'f, R> = dyn FnMut(&mut dyn NodeIo, &dyn Access, Expect<'_>) -> Result<R, VdeError> + 'f;

/// A child as a node holds it: on disk (clean) or in memory (dirty).
enum Child {
    Clean(BlockPtr),
    Dirty(Box<Node>),
}

/// A dirty node in memory. Leaves use `keys`/`vals`; interior nodes `keys`/`kids`, with
/// `keys[0]` always empty.
struct Node {
    level: u16,
    keys: Vec<Bytes>,
    vals: Vec<Bytes>,
    kids: Vec<Child>,
    /// Encoded payload bytes ([`Node::size`]), kept current by every change: a leaf's
    /// insert, replace and remove adjust it, rarer changes measure the node again.
    bytes: usize,
}

/// A key or value of a dirty node: up to [`Bytes::INLINE`] bytes in place (every entry
/// of a dead list, and the keys and short extents of an extent map), longer ones on the
/// heap. Copying a clean node into a dirty one then allocates nothing per entry for them.
#[derive(Clone)]
enum Bytes {
    Inline { len: u8, buf: [u8; Bytes::INLINE] },
    Heap(Box<[u8]>),
}

impl Bytes {
    /// Bytes kept in place: a 2-block extent map value (20 + 2 × 8), 40 bytes in all.
    const INLINE: usize = 38;

    fn new(b: &[u8]) -> Bytes {
        if b.len() <= Bytes::INLINE {
            let mut buf = [0; Bytes::INLINE];
            buf[..b.len()].copy_from_slice(b);
            Bytes::Inline {
                len: b.len() as u8,
                buf,
            }
        } else {
            Bytes::Heap(b.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Inline { len, buf } => &buf[..usize::from(*len)],
            Bytes::Heap(b) => b,
        }
    }

    /// The bytes as a `Vec` (no copy when they are on the heap).
    fn into_vec(self) -> Vec<u8> {
        match self {
            Bytes::Inline { .. } => self.as_slice().to_vec(),
            Bytes::Heap(b) => b.into_vec(),
        }
    }
}

impl Default for Bytes {
    fn default() -> Bytes {
        Bytes::Inline {
            len: 0,
            buf: [0; Bytes::INLINE],
        }
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Node {
    fn len(&self) -> usize {
        self.keys.len()
    }

    /// Encoded bytes of entry `i`.
    fn entry_size(&self, i: usize) -> usize {
        if self.level == 0 {
            4 + self.keys[i].len() + self.vals[i].len()
        } else {
            2 + self.keys[i].len() + BlockPtr::SIZE
        }
    }

    /// Encoded payload bytes.
    fn size(&self) -> usize {
        debug_assert_eq!(self.bytes, self.measure(), "a node's kept size is stale");
        self.bytes
    }

    /// Encoded payload bytes, counted entry by entry.
    fn measure(&self) -> usize {
        2 + (0..self.len()).map(|i| self.entry_size(i)).sum::<usize>()
    }

    /// This node with its size counted (after building it or changing it wholesale).
    fn measured(mut self) -> Node {
        self.bytes = self.measure();
        self
    }

    /// The child whose range holds `key`.
    fn child_index(&self, key: &[u8]) -> usize {
        self.keys[1..].partition_point(|k| k.as_slice() <= key)
    }

    /// Splits off the upper part, choosing the cut that best balances the two halves'
    /// bytes; returns the separator (the upper part's first key) and the upper part.
    /// Needs at least 2 entries.
    fn split(&mut self) -> (Bytes, Node) {
        let n = self.len();
        let sizes_total: usize = (0..n).map(|i| self.entry_size(i)).sum();
        let (mut best, mut best_max, mut left) = (1, usize::MAX, 0);
        for m in 1..n {
            left += self.entry_size(m - 1);
            // An interior upper part's first key moves up to the parent.
            let moved = if self.level == 0 { 0 } else { self.keys[m].len() };
            let worst = (2 + left).max(2 + sizes_total - left - moved);
            if worst < best_max {
                (best, best_max) = (m, worst);
            }
        }
        let mut right = Node {
            level: self.level,
            keys: self.keys.split_off(best),
            vals: if self.level == 0 {
                self.vals.split_off(best)
            } else {
                Vec::new()
            },
            kids: if self.level == 0 {
                Vec::new()
            } else {
                self.kids.split_off(best)
            },
            bytes: 0,
        };
        let sep = if self.level == 0 {
            right.keys[0].clone()
        } else {
            std::mem::take(&mut right.keys[0])
        };
        self.bytes = self.measure();
        right.bytes = right.measure();
        (sep, right)
    }

    /// Appends `right` (the next sibling, separated from this node by `sep`).
    fn merge(&mut self, sep: Bytes, mut right: Node) {
        if self.level > 0 && !right.keys.is_empty() {
            right.keys[0] = sep;
        }
        self.keys.append(&mut right.keys);
        self.vals.append(&mut right.vals);
        self.kids.append(&mut right.kids);
        // An interior node's key 0 stays empty (this node may have been empty: a lone
        // child of a hostile one-child node was removed).
        if self.level > 0
            && let Some(k) = self.keys.first_mut()
        {
            *k = Bytes::default();
        }
        self.bytes = self.measure();
    }

    /// Encodes into a payload; every child must be clean.
    fn encode(&self, p: &mut [u8]) -> Result<(), VdeError> {
        // Counted afresh: what is written must not depend on the kept size.
        let size = self.measure();
        if size > p.len() || self.len() > usize::from(u16::MAX) {
            return Err(VdeError::Unsupported(format!(
                "internal error: a tree node of {size} bytes does not fit a block"
            )));
        }
        put16(p, 0, self.len() as u16);
        let mut at = 2;
        for i in 0..self.len() {
            let k = &self.keys[i];
            put16(p, at, k.len() as u16);
            if self.level == 0 {
                let v = &self.vals[i];
                put16(p, at + 2, v.len() as u16);
                p[at + 4..at + 4 + k.len()].copy_from_slice(k);
                p[at + 4 + k.len()..at + 4 + k.len() + v.len()].copy_from_slice(v);
                at += 4 + k.len() + v.len();
            } else {
                p[at + 2..at + 2 + k.len()].copy_from_slice(k);
                let ptr = match &self.kids[i] {
                    Child::Clean(ptr) => *ptr,
                    Child::Dirty(_) => {
                        return Err(VdeError::Unsupported(
                            "internal error: a tree node written before its child".into(),
                        ));
                    }
                };
                BlockPtr::put(Some(ptr), p, at + 2 + k.len());
                at += 2 + k.len() + BlockPtr::SIZE;
            }
        }
        Ok(())
    }
}

/// A clean node's block as [`NodeIo::read`] returns it: the bytes, and their layout as a
/// node (where each entry starts) once a tree has validated them. A cache that keeps these
/// validates each block once, when a tree first reads it, not on every hit.
pub struct NodeBlock {
    block: Block,
    /// `None` until the first parse; then `Some(None)` when the bytes are not a valid node
    /// on their own (they are then re-checked, and rejected, on every parse).
    layout: OnceLock<Option<Layout>>,
}

impl NodeBlock {
    /// A block of zeros, to read into (through `DerefMut`) before it is shared.
    pub fn zeroed() -> NodeBlock {
        NodeBlock {
            block: [0; BLOCK],
            layout: OnceLock::new(),
        }
    }

    /// `block`'s bytes, not yet parsed.
    pub fn new(block: &Block) -> NodeBlock {
        NodeBlock {
            block: *block,
            layout: OnceLock::new(),
        }
    }
}

impl std::ops::Deref for NodeBlock {
    type Target = Block;
    fn deref(&self) -> &Block {
        &self.block
    }
}

impl std::ops::DerefMut for NodeBlock {
    /// The bytes, to fill in; forgets any layout found so far.
    fn deref_mut(&mut self) -> &mut Block {
        self.layout = OnceLock::new();
        &mut self.block
    }
}

/// Where a node's entries start, found by [`Layout::check`]: what a parse keeps.
struct Layout {
    level: u16,
    /// Payload offset of each entry (`count` of them, 1..=[`MAX_FANOUT`]).
    offs: Box<[u16]>,
}

/// A clean node's payload, validated: every offset and length lies inside it.
struct View<'a> {
    p: &'a [u8],
    level: u16,
    n: usize,
    offs: &'a [u16],
}

/// What a node read from disk must satisfy besides its own encoding: the level its parent
/// implies and the key range its parent gives it (`lo <= key < hi`).
#[derive(Clone, Copy)]
struct Expect<'a> {
    level: Option<u16>,
    lo: Option<&'a [u8]>,
    hi: Option<&'a [u8]>,
}

impl Expect<'_> {
    const ROOT: Expect<'static> = Expect {
        level: None,
        lo: None,
        hi: None,
    };
}

impl Layout {
    /// Validates the node `block` read from block number `addr` against its own encoding
    /// and `want`, and finds its entries. Errors: [`VdeError::Corrupt`] naming the block,
    /// its kind and the first thing wrong.
    fn check(block: &Block, kind: NodeKind, addr: u64, want: Expect<'_>) -> Result<Layout, VdeError> {
        let mut offs = Vec::new();
        let level = Layout::scan(block, kind, addr, want, Some(&mut offs))?;
        Ok(Layout {
            level,
            offs: offs.into_boxed_slice(),
        })
    }

    /// [`Layout::check`] without keeping anything (so without allocating): the node's
    /// level, or the error; each entry's offset goes to `offs` when given.
    fn scan(
        block: &Block,
        kind: NodeKind,
        addr: u64,
        want: Expect<'_>,
        mut offs: Option<&mut Vec<u16>>,
    ) -> Result<u16, VdeError> {
        let bad = |reason: String| VdeError::Corrupt {
            block: addr,
            kind: kind.name(),
            reason,
        };
        let level = get16(block, 6);
        let birth = super::format::get64(block, 8);
        if level > MAX_LEVEL {
            return Err(bad(format!("level {level} is above the most a tree has ({MAX_LEVEL})")));
        }
        if let Some(l) = want.level
            && l != level
        {
            return Err(bad(format!("level {level} where its parent implies level {l}")));
        }
        let p = payload(block);
        let n = usize::from(get16(p, 0));
        if n == 0 {
            return Err(bad("an empty node (count 0)".into()));
        }
        if n > MAX_FANOUT {
            return Err(bad(format!("count {n} is more than a node can hold ({MAX_FANOUT})")));
        }
        if let Some(o) = &mut offs {
            o.reserve_exact(n);
        }
        let mut at = 2usize;
        let mut prev: Option<&[u8]> = None;
        for i in 0..n {
            if let Some(o) = &mut offs {
                o.push(at as u16);
            }
            let fixed = if level == 0 { 4 } else { 2 };
            if at + fixed > p.len() {
                return Err(bad(format!("entry {i} of {n} starts beyond the payload")));
            }
            let klen = usize::from(get16(p, at));
            if klen > Tree::MAX_KEY || (klen == 0 && (level == 0 || i > 0)) {
                return Err(bad(format!(
                    "entry {i}: key length {klen} (keys are 1..={})",
                    Tree::MAX_KEY
                )));
            }
            let end = if level == 0 {
                let vlen = usize::from(get16(p, at + 2));
                if klen + vlen > Tree::MAX_ENTRY {
                    return Err(bad(format!(
                        "entry {i}: key and value of {} bytes (at most {})",
                        klen + vlen,
                        Tree::MAX_ENTRY
                    )));
                }
                at + 4 + klen + vlen
            } else {
                at + 2 + klen + BlockPtr::SIZE
            };
            if end > p.len() {
                return Err(bad(format!("entry {i} of {n} runs beyond the payload")));
            }
            let key = &p[at + fixed..at + fixed + klen];
            if level == 0 || i > 0 {
                if let Some(q) = prev
                    && q >= key
                {
                    return Err(bad(format!("entry {i}: keys out of order")));
                }
                // A leaf's keys lie in [lo, hi); an interior node's separators in (lo, hi)
                // (a separator equal to lo would leave child 0 an empty range).
                let low_ok = want.lo.is_none_or(|lo| if level == 0 { key >= lo } else { key > lo });
                if !low_ok || want.hi.is_some_and(|hi| key >= hi) {
                    return Err(bad(format!(
                        "entry {i}: key outside the range its parent gives this node"
                    )));
                }
                prev = Some(key);
            }
            if level > 0 {
                match BlockPtr::get(p, at + 2 + klen) {
                    None => return Err(bad(format!("entry {i}: empty child pointer"))),
                    Some(c) if c.birth > birth => {
                        return Err(bad(format!(
                            "entry {i}: child born in txg {} after its parent (txg {birth})",
                            c.birth
                        )));
                    }
                    Some(_) => {}
                }
            }
            at = end;
        }
        Ok(level)
    }
}

impl<'a> View<'a> {
    /// Validates the node `block` read from block number `addr` against `want`.
    ///
    /// The block's own encoding is checked once, by its first parse, and the layout kept
    /// with it; each parse then checks only what `want` adds (the level, and the range of
    /// the first and last key: keys ascend strictly). Whatever fails is checked again in
    /// full, so the error is the one a full check names first.
    fn parse(block: &'a NodeBlock, kind: NodeKind, addr: u64, want: Expect<'_>) -> Result<View<'a>, VdeError> {
        let layout = block
            .layout
            .get_or_init(|| Layout::check(&block.block, kind, addr, Expect::ROOT).ok());
        let fast = layout.as_ref().map(|l| View {
            p: payload(&block.block),
            level: l.level,
            n: l.offs.len(),
            offs: &l.offs,
        });
        let fast = fast.filter(|v| v.fits(want));
        debug_assert_eq!(
            fast.is_some(),
            Layout::scan(&block.block, kind, addr, want, None).is_ok(),
            "block {addr}: the kept layout and a full check disagree"
        );
        match fast {
            Some(v) => Ok(v),
            None => match Layout::scan(&block.block, kind, addr, want, None) {
                Err(e) => Err(e),
                // Cannot happen: the full check is stricter than the kept layout plus
                // `fits` (debug builds assert that they agree).
                Ok(_) => Err(VdeError::Corrupt {
                    block: addr,
                    kind: kind.name(),
                    reason: "internal: a node's layout and its full check disagree".into(),
                }),
            },
        }
    }

    /// Whether this node, valid on its own, satisfies `want` too. Its keys ascend strictly
    /// (checked with its layout), so the range holds for every key that a full check tests
    /// (a leaf's keys; an interior node's from key 1) when it holds for the first and last.
    fn fits(&self, want: Expect<'_>) -> bool {
        if want.level.is_some_and(|l| l != self.level) {
            return false;
        }
        let first = if self.level == 0 { 0 } else { 1 };
        if first >= self.n {
            return true;
        }
        let (low, high) = (self.key(first), self.key(self.n - 1));
        let low_ok = want
            .lo
            .is_none_or(|lo| if self.level == 0 { low >= lo } else { low > lo });
        low_ok && want.hi.is_none_or(|hi| high < hi)
    }

    fn key(&self, i: usize) -> &'a [u8] {
        let at = usize::from(self.offs[i]);
        let klen = usize::from(get16(self.p, at));
        let fixed = if self.level == 0 { 4 } else { 2 };
        &self.p[at + fixed..at + fixed + klen]
    }

    fn value(&self, i: usize) -> &'a [u8] {
        let at = usize::from(self.offs[i]);
        let klen = usize::from(get16(self.p, at));
        let vlen = usize::from(get16(self.p, at + 2));
        &self.p[at + 4 + klen..at + 4 + klen + vlen]
    }

    fn ptr(&self, i: usize) -> BlockPtr {
        let at = usize::from(self.offs[i]);
        let klen = usize::from(get16(self.p, at));
        // Validated non-empty by parse.
        BlockPtr::get(self.p, at + 2 + klen).unwrap_or_default()
    }

    /// A dirty copy.
    fn to_node(&self) -> Node {
        let mut node = Node {
            level: self.level,
            keys: Vec::with_capacity(self.n),
            vals: Vec::new(),
            kids: Vec::new(),
            bytes: 0,
        };
        if self.level == 0 {
            node.vals.reserve_exact(self.n);
            for i in 0..self.n {
                node.keys.push(Bytes::new(self.key(i)));
                node.vals.push(Bytes::new(self.value(i)));
            }
        } else {
            node.kids.reserve_exact(self.n);
            for i in 0..self.n {
                node.keys.push(if i == 0 {
                    Bytes::default()
                } else {
                    Bytes::new(self.key(i))
                });
                node.kids.push(Child::Clean(self.ptr(i)));
            }
        }
        node.measured()
    }
}

/// A node to read from: in memory or on disk.
#[derive(Clone, Copy)]
enum Ref<'a> {
    Mem(&'a Node),
    Disk(BlockPtr),
}

/// Read access common to dirty nodes and validated clean ones.
trait Access {
    fn level(&self) -> u16;
    fn len(&self) -> usize;
    fn key(&self, i: usize) -> &[u8];
    /// Leaves only.
    fn value(&self, i: usize) -> &[u8];
    /// Interior nodes only.
    fn child(&self, i: usize) -> Ref<'_>;

    /// The child whose range holds `key` (interior nodes).
    fn child_index(&self, key: &[u8]) -> usize {
        let (mut lo, mut hi) = (1, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo - 1
    }

    /// How many leaf keys are <= `key`.
    fn count_le(&self, key: &[u8]) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// What child `i` must satisfy, within this node's range `up`.
    fn expect<'s>(&'s self, i: usize, up: Expect<'s>) -> Expect<'s> {
        Expect {
            level: Some(self.level().saturating_sub(1)),
            lo: if i == 0 { up.lo } else { Some(self.key(i)) },
            hi: if i + 1 < self.len() {
                Some(self.key(i + 1))
            } else {
                up.hi
            },
        }
    }
}

impl Access for Node {
    fn level(&self) -> u16 {
        self.level
    }
    fn len(&self) -> usize {
        self.keys.len()
    }
    fn key(&self, i: usize) -> &[u8] {
        &self.keys[i]
    }
    fn value(&self, i: usize) -> &[u8] {
        &self.vals[i]
    }
    fn child(&self, i: usize) -> Ref<'_> {
        match &self.kids[i] {
            Child::Clean(p) => Ref::Disk(*p),
            Child::Dirty(n) => Ref::Mem(n),
        }
    }
}

impl Access for View<'_> {
    fn level(&self) -> u16 {
        self.level
    }
    fn len(&self) -> usize {
        self.n
    }
    fn key(&self, i: usize) -> &[u8] {
        View::key(self, i)
    }
    fn value(&self, i: usize) -> &[u8] {
        View::value(self, i)
    }
    fn child(&self, i: usize) -> Ref<'_> {
        Ref::Disk(self.ptr(i))
    }
}

/// Calls `f` with the node `r` names: a dirty node directly, a clean one read through
/// `io` and validated against `want`.
fn with<R>(
    io: &mut dyn NodeIo,
    kind: NodeKind,
    r: Ref<'_>,
    want: Expect<'_>,
    f: &mut NodeFn<'_, R>,
) -> Result<R, VdeError> {
    match r {
        Ref::Mem(n) => f(io, n, want),
        Ref::Disk(ptr) => {
            let block = io.read(&ptr, kind)?;
            let view = View::parse(&block, kind, ptr.addr, want)?;
            f(io, &view, want)
        }
    }
}

fn lookup<R>(
    io: &mut dyn NodeIo,
    kind: NodeKind,
    r: Ref<'_>,
    want: Expect<'_>,
    key: &[u8],
    f: &mut dyn FnMut(&[u8]) -> R,
) -> Result<Option<R>, VdeError> {
    with(io, kind, r, want, &mut |io, a, want| {
        if a.level() == 0 {
            let i = a.count_le(key);
            Ok((i > 0 && a.key(i - 1) == key).then(|| f(a.value(i - 1))))
        } else {
            let i = a.child_index(key);
            lookup(io, kind, a.child(i), a.expect(i, want), key, f)
        }
    })
}

fn floor_rec(
    io: &mut dyn NodeIo,
    kind: NodeKind,
    r: Ref<'_>,
    want: Expect<'_>,
    key: &[u8],
) -> Result<Option<Entry>, VdeError> {
    with(io, kind, r, want, &mut |io, a, want| {
        if a.level() == 0 {
            let i = a.count_le(key);
            return Ok((i > 0).then(|| (a.key(i - 1).to_vec(), a.value(i - 1).to_vec())));
        }
        let i = a.child_index(key);
        if let Some(e) = floor_rec(io, kind, a.child(i), a.expect(i, want), key)? {
            return Ok(Some(e));
        }
        // Everything in child i is above `key`: the answer is the greatest entry left of it.
        for j in (0..i).rev() {
            if let Some(e) = last_rec(io, kind, a.child(j), a.expect(j, want))? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    })
}

fn last_rec(io: &mut dyn NodeIo, kind: NodeKind, r: Ref<'_>, want: Expect<'_>) -> Result<Option<Entry>, VdeError> {
    with(io, kind, r, want, &mut |io, a, want| {
        if a.level() == 0 {
            let n = a.len();
            return Ok((n > 0).then(|| (a.key(n - 1).to_vec(), a.value(n - 1).to_vec())));
        }
        for j in (0..a.len()).rev() {
            if let Some(e) = last_rec(io, kind, a.child(j), a.expect(j, want))? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    })
}

fn page_rec(
    io: &mut dyn NodeIo,
    kind: NodeKind,
    r: Ref<'_>,
    want: Expect<'_>,
    after: Option<&[u8]>,
    limit: usize,
    out: &mut Vec<Entry>,
) -> Result<(), VdeError> {
    with(io, kind, r, want, &mut |io, a, want| {
        if a.level() == 0 {
            let start = after.map_or(0, |k| a.count_le(k));
            for i in start..a.len() {
                if out.len() >= limit {
                    break;
                }
                out.push((a.key(i).to_vec(), a.value(i).to_vec()));
            }
            return Ok(());
        }
        let start = after.map_or(0, |k| a.child_index(k));
        for i in start..a.len() {
            if out.len() >= limit {
                break;
            }
            page_rec(io, kind, a.child(i), a.expect(i, want), after, limit, out)?;
        }
        Ok(())
    })
}

fn walk_rec(
    io: &mut dyn NodeIo,
    kind: NodeKind,
    ptr: BlockPtr,
    want: Expect<'_>,
    prune: &mut dyn FnMut(&BlockPtr) -> bool,
    visit: &mut dyn FnMut(Visit<'_>) -> Result<(), VdeError>,
) -> Result<(), VdeError> {
    if prune(&ptr) {
        return Ok(());
    }
    let block = io.read(&ptr, kind)?;
    let view = View::parse(&block, kind, ptr.addr, want)?;
    visit(Visit::Node { ptr, level: view.level })?;
    for i in 0..view.n {
        if view.level == 0 {
            visit(Visit::Entry {
                key: view.key(i),
                value: view.value(i),
            })?;
        } else {
            walk_rec(io, kind, view.ptr(i), view.expect(i, want), prune, visit)?;
        }
    }
    Ok(())
}

/// The node `child` names, made dirty: a clean child is read, validated against `want`,
/// copied into memory and its block released.
fn make_dirty<'c>(
    io: &mut dyn NodeIo,
    kind: NodeKind,
    child: &'c mut Child,
    want: Expect<'_>,
    dirty: &mut usize,
) -> Result<&'c mut Node, VdeError> {
    if let Child::Clean(ptr) = *child {
        let block = io.read(&ptr, kind)?;
        let node = View::parse(&block, kind, ptr.addr, want)?.to_node();
        io.release(ptr.addr, ptr.birth);
        *child = Child::Dirty(Box::new(node));
        *dirty += 1;
    }
    match child {
        Child::Dirty(n) => Ok(n),
        Child::Clean(_) => unreachable!("made dirty just above"),
    }
}

/// Child `i` of `node` (range `up`) made dirty.
fn dirty_child<'n>(
    io: &mut dyn NodeIo,
    kind: NodeKind,
    node: &'n mut Node,
    i: usize,
    up: Expect<'_>,
    dirty: &mut usize,
) -> Result<&'n mut Node, VdeError> {
    let Node { keys, kids, level, .. } = node;
    let want = Expect {
        level: Some(*level - 1),
        lo: if i == 0 { up.lo } else { Some(keys[i].as_slice()) },
        hi: keys.get(i + 1).map(|k| k.as_slice()).or(up.hi),
    };
    make_dirty(io, kind, &mut kids[i], want, dirty)
}

fn dirty_ref(c: &mut Child) -> &mut Node {
    match c {
        Child::Dirty(n) => n,
        Child::Clean(_) => unreachable!("a child on the changed path is dirty"),
    }
}

/// Splits dirty child `i` of `node` in two.
fn split_child(node: &mut Node, i: usize, dirty: &mut usize) {
    let (sep, right) = dirty_ref(&mut node.kids[i]).split();
    node.keys.insert(i + 1, sep);
    node.kids.insert(i + 1, Child::Dirty(Box::new(right)));
    node.bytes = node.measure();
    *dirty += 1;
}

/// After a change below dirty child `i` of `node` (range `up`): splits it if it overflows,
/// merges it with (or borrows from) a sibling if it is under [`MIN_FILL`], drops it if it
/// is empty and has no sibling.
fn fix_child(
    io: &mut dyn NodeIo,
    kind: NodeKind,
    node: &mut Node,
    up: Expect<'_>,
    i: usize,
    dirty: &mut usize,
) -> Result<(), VdeError> {
    let c = dirty_ref(&mut node.kids[i]);
    let (size, len) = (c.size(), c.len());
    if size > PAYLOAD2 {
        if len >= 2 {
            split_child(node, i, dirty);
        }
        return Ok(());
    }
    if len > 0 && size >= MIN_FILL {
        return Ok(());
    }
    if node.kids.len() >= 2 {
        let l = i.saturating_sub(1);
        let r = l + 1;
        dirty_child(io, kind, node, if i == l { r } else { l }, up, dirty)?;
        let right = match node.kids.remove(r) {
            Child::Dirty(n) => *n,
            Child::Clean(_) => unreachable!("made dirty just above"),
        };
        let sep = node.keys.remove(r);
        node.bytes = node.measure();
        let left = dirty_ref(&mut node.kids[l]);
        left.merge(sep, right);
        *dirty -= 1;
        if left.size() > PAYLOAD2 && left.len() >= 2 {
            split_child(node, l, dirty);
        }
    } else if len == 0 {
        node.kids.remove(i);
        node.keys.remove(i);
        node.bytes = node.measure();
        *dirty -= 1;
    }
    Ok(())
}

fn insert_rec(
    io: &mut dyn NodeIo,
    kind: NodeKind,
    node: &mut Node,
    up: Expect<'_>,
    key: &[u8],
    value: &[u8],
    dirty: &mut usize,
) -> Result<Option<Vec<u8>>, VdeError> {
    if node.level == 0 {
        return Ok(match node.keys.binary_search_by(|k| k.as_slice().cmp(key)) {
            Ok(i) => {
                let old = std::mem::replace(&mut node.vals[i], Bytes::new(value));
                node.bytes = node.bytes + value.len() - old.len();
                Some(old.into_vec())
            }
            Err(i) => {
                node.keys.insert(i, Bytes::new(key));
                node.vals.insert(i, Bytes::new(value));
                node.bytes += 4 + key.len() + value.len();
                None
            }
        });
    }
    let i = node.child_index(key);
    let old = {
        let lo = if i == 0 { up.lo } else { Some(node.keys[i].as_slice()) };
        let hi = node.keys.get(i + 1).map(|k| k.as_slice()).or(up.hi);
        let want = Expect {
            level: Some(node.level - 1),
            lo,
            hi,
        };
        let child = make_dirty(io, kind, &mut node.kids[i], want, dirty)?;
        insert_rec(io, kind, child, want, key, value, dirty)?
    };
    // A replaced value may have grown the child past a block, or shrunk it under a quarter.
    fix_child(io, kind, node, up, i, dirty)?;
    Ok(old)
}

fn remove_rec(
    io: &mut dyn NodeIo,
    kind: NodeKind,
    node: &mut Node,
    up: Expect<'_>,
    key: &[u8],
    dirty: &mut usize,
) -> Result<Option<Vec<u8>>, VdeError> {
    if node.level == 0 {
        return Ok(match node.keys.binary_search_by(|k| k.as_slice().cmp(key)) {
            Ok(i) => {
                let (k, v) = (node.keys.remove(i), node.vals.remove(i));
                node.bytes -= 4 + k.len() + v.len();
                Some(v.into_vec())
            }
            Err(_) => None,
        });
    }
    let i = node.child_index(key);
    let old = {
        let lo = if i == 0 { up.lo } else { Some(node.keys[i].as_slice()) };
        let hi = node.keys.get(i + 1).map(|k| k.as_slice()).or(up.hi);
        let want = Expect {
            level: Some(node.level - 1),
            lo,
            hi,
        };
        let child = make_dirty(io, kind, &mut node.kids[i], want, dirty)?;
        remove_rec(io, kind, child, want, key, dirty)?
    };
    fix_child(io, kind, node, up, i, dirty)?;
    Ok(old)
}

/// Writes dirty `node` and its dirty descendants, children first.
fn write_node(io: &mut dyn NodeIo, kind: NodeKind, node: &mut Node, dirty: &mut usize) -> Result<BlockPtr, VdeError> {
    for kid in node.kids.iter_mut() {
        if let Child::Dirty(n) = kid {
            let ptr = write_node(io, kind, n, dirty)?;
            *kid = Child::Clean(ptr);
        }
    }
    let mut block: Box<Block> = Box::new([0; BLOCK]);
    node.encode(payload_mut(&mut block))?;
    let addr = io.alloc()?;
    let ptr = seal(&mut block, kind, node.level, io.txg(), addr, io.tag());
    io.write(addr, block)?;
    *dirty -= 1;
    Ok(ptr)
}

/// A copy-on-write B+tree of `kind` nodes: an empty root, a clean root (a committed
/// [`BlockPtr`]) or a dirty in-memory root over dirty and clean children.
pub struct Tree {
    kind: NodeKind,
    root: Option<Child>,
    committed: Option<BlockPtr>,
    dirty: usize,
}

impl Tree {
    /// Longest key, bytes (keys are 1..=MAX_KEY bytes).
    pub const MAX_KEY: usize = 255;
    /// Longest key + value, bytes; at least 4 entries fit a node.
    pub const MAX_ENTRY: usize = 1000;

    /// The tree of `kind` nodes whose committed root is `root` (None: empty).
    pub fn open(kind: NodeKind, root: Option<BlockPtr>) -> Tree {
        Tree {
            kind,
            root: root.map(Child::Clean),
            committed: root,
            dirty: 0,
        }
    }

    fn root_ref(&self) -> Option<Ref<'_>> {
        self.root.as_ref().map(|c| match c {
            Child::Clean(p) => Ref::Disk(*p),
            Child::Dirty(n) => Ref::Mem(n),
        })
    }

    /// The value stored under `key`.
    ///
    /// Errors: the read and check errors of [`NodeIo::read`] ([`VdeError::Mismatch`]) and
    /// [`VdeError::Corrupt`] for a node whose contents are invalid, naming the block.
    pub fn get(&mut self, io: &mut dyn NodeIo, key: &[u8]) -> Result<Option<Vec<u8>>, VdeError> {
        match self.root_ref() {
            None => Ok(None),
            Some(r) => lookup(io, self.kind, r, Expect::ROOT, key, &mut |v| v.to_vec()),
        }
    }

    /// Greatest entry with key <= `key`. Errors as [`Tree::get`].
    pub fn floor(&mut self, io: &mut dyn NodeIo, key: &[u8]) -> Result<Option<Entry>, VdeError> {
        match self.root_ref() {
            None => Ok(None),
            Some(r) => floor_rec(io, self.kind, r, Expect::ROOT, key),
        }
    }

    /// Up to `limit` entries in key order with key > `after` (None: from the first).
    /// Errors as [`Tree::get`].
    pub fn page(&mut self, io: &mut dyn NodeIo, after: Option<&[u8]>, limit: usize) -> Result<Vec<Entry>, VdeError> {
        let mut out = Vec::new();
        if let Some(r) = self.root_ref()
            && limit > 0
        {
            page_rec(io, self.kind, r, Expect::ROOT, after, limit, &mut out)?;
        }
        Ok(out)
    }

    /// Inserts or replaces; returns the old value. Every clean node on the key's path is
    /// copied (and its block released) the first time it changes.
    ///
    /// Errors: [`VdeError::BadKey`] for a key of 0 or more than [`Tree::MAX_KEY`] bytes,
    /// [`VdeError::Unsupported`] for key + value over [`Tree::MAX_ENTRY`] bytes or a tree
    /// that would pass [`MAX_LEVEL`]; read errors as [`Tree::get`] (the tree may then hold
    /// part of the change: the store must not commit it).
    pub fn insert(&mut self, io: &mut dyn NodeIo, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, VdeError> {
        if key.is_empty() || key.len() > Self::MAX_KEY {
            return Err(VdeError::BadKey(key.len()));
        }
        if key.len() + value.len() > Self::MAX_ENTRY {
            return Err(VdeError::Unsupported(format!(
                "a tree entry of {} bytes (key and value) is over the limit of {}",
                key.len() + value.len(),
                Self::MAX_ENTRY
            )));
        }
        if self.root.is_none() {
            // A fresh leaf root.
            self.root = Some(Child::Dirty(Box::new(
                Node {
                    level: 0,
                    keys: Vec::new(),
                    vals: Vec::new(),
                    kids: Vec::new(),
                    bytes: 0,
                }
                .measured(),
            )));
            self.dirty += 1;
        }
        let Some(root) = self.root.as_mut() else {
            unreachable!("set above")
        };
        let node = make_dirty(io, self.kind, root, Expect::ROOT, &mut self.dirty)?;
        let old = insert_rec(io, self.kind, node, Expect::ROOT, key, value, &mut self.dirty)?;
        self.fix_root()?;
        Ok(old)
    }

    /// Removes `key`; returns its value. A key that is absent changes nothing (no node is
    /// copied). Errors as [`Tree::get`].
    pub fn remove(&mut self, io: &mut dyn NodeIo, key: &[u8]) -> Result<Option<Vec<u8>>, VdeError> {
        let present = match self.root_ref() {
            None => None,
            Some(r) => lookup(io, self.kind, r, Expect::ROOT, key, &mut |_| ())?,
        };
        if present.is_none() {
            return Ok(None);
        }
        let Some(root) = self.root.as_mut() else {
            return Ok(None);
        };
        let node = make_dirty(io, self.kind, root, Expect::ROOT, &mut self.dirty)?;
        let old = remove_rec(io, self.kind, node, Expect::ROOT, key, &mut self.dirty)?;
        self.fix_root()?;
        Ok(old)
    }

    /// Grows a full root, drops an empty one, replaces a root of one child by the child.
    fn fix_root(&mut self) -> Result<(), VdeError> {
        loop {
            let Some(Child::Dirty(n)) = &mut self.root else {
                return Ok(());
            };
            if n.size() > PAYLOAD2 && n.len() >= 2 {
                if n.level >= MAX_LEVEL {
                    return Err(VdeError::Unsupported(format!("a tree deeper than {MAX_LEVEL} levels")));
                }
                let level = n.level + 1;
                let old = self.root.take().expect("matched above");
                let mut top = Node {
                    level,
                    keys: vec![Bytes::default()],
                    vals: Vec::new(),
                    kids: vec![old],
                    bytes: 0,
                }
                .measured();
                split_child(&mut top, 0, &mut self.dirty);
                self.root = Some(Child::Dirty(Box::new(top)));
                self.dirty += 1;
                return Ok(());
            } else if n.len() == 0 {
                self.root = None;
                self.dirty -= 1;
                return Ok(());
            } else if n.level > 0 && n.len() == 1 {
                let kid = n.kids.pop().expect("one child");
                self.root = Some(kid);
                self.dirty -= 1;
            } else {
                return Ok(());
            }
        }
    }

    /// Dirty (in-memory, modified) nodes held: the store commits when they pass its bound.
    pub fn dirty_nodes(&self) -> usize {
        self.dirty
    }

    /// Whether the tree differs from its last committed root.
    pub fn is_dirty(&self) -> bool {
        match &self.root {
            None => self.committed.is_some(),
            Some(Child::Clean(p)) => self.committed != Some(*p),
            Some(Child::Dirty(_)) => true,
        }
    }

    /// Writes every dirty node (children first, each at `io.alloc()`, sealed with birth
    /// `io.txg()`), and returns the new root; the tree is then clean. Every block a dirty
    /// node replaced was already `io.release`d when the node was first copied (commit
    /// releases nothing).
    ///
    /// Errors: those of [`NodeIo::alloc`] and [`NodeIo::write`]; the tree then keeps the
    /// nodes not yet written dirty, and the store must not use a partial result.
    pub fn commit(&mut self, io: &mut dyn NodeIo) -> Result<Option<BlockPtr>, VdeError> {
        if let Some(Child::Dirty(n)) = &mut self.root {
            let ptr = write_node(io, self.kind, n, &mut self.dirty)?;
            self.root = Some(Child::Clean(ptr));
        }
        self.committed = match &self.root {
            Some(Child::Clean(p)) => Some(*p),
            _ => None,
        };
        Ok(self.committed)
    }

    /// The root as last committed (None: empty). Only meaningful when !is_dirty().
    pub fn root(&self) -> Option<BlockPtr> {
        self.committed
    }

    /// Visits the committed tree at `root`: every node (pre-order) and every leaf entry,
    /// skipping whole subtrees whose node birth <= `min_birth` (CoW makes a node's birth >=
    /// any descendant's, and decoding checks it). For fsck, destroying a dataset, send.
    /// Reads through `io.read`; holds one block per level. An error from `visit` stops the
    /// walk and is returned. Errors as [`Tree::get`].
    pub fn walk(
        io: &mut dyn NodeIo,
        kind: NodeKind,
        root: Option<BlockPtr>,
        min_birth: u64,
        visit: &mut dyn FnMut(Visit<'_>) -> Result<(), VdeError>,
    ) -> Result<(), VdeError> {
        Tree::walk_pruned(io, kind, root, &mut |p| p.birth <= min_birth, visit)
    }

    /// [`Tree::walk`], skipping the subtrees whose pointer `prune` returns true for
    /// (it sees every pointer before its block is read, the root's included). Send uses
    /// it to skip the subtrees two trees share.
    pub fn walk_pruned(
        io: &mut dyn NodeIo,
        kind: NodeKind,
        root: Option<BlockPtr>,
        prune: &mut dyn FnMut(&BlockPtr) -> bool,
        visit: &mut dyn FnMut(Visit<'_>) -> Result<(), VdeError>,
    ) -> Result<(), VdeError> {
        match root {
            None => Ok(()),
            Some(ptr) => walk_rec(io, kind, ptr, Expect::ROOT, prune, visit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vde::block::check;
    use crate::vde::format::get64;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet, HashMap};

    const TAG: u64 = 0x5eed_0000_7ee5_0001;
    const KIND: NodeKind = NodeKind::Objects;

    /// An in-memory store: blocks by number, numbers never reused unless queued in
    /// `reuse`; released blocks are removed, so reading one fails.
    struct MemIo {
        txg: u64,
        next: u64,
        reuse: Vec<u64>,
        /// Live blocks, handed out as they are (so a node's layout is found once, as with
        /// the pool's cache).
        blocks: HashMap<u64, Arc<NodeBlock>>,
        /// Every block number handed out by alloc, with the txg it was written in.
        written: HashMap<u64, u64>,
        allocated: Vec<u64>,
        released: Vec<(u64, u64)>,
        reads: usize,
    }

    impl MemIo {
        fn new() -> MemIo {
            MemIo {
                txg: 1,
                next: 100,
                reuse: Vec::new(),
                blocks: HashMap::new(),
                written: HashMap::new(),
                allocated: Vec::new(),
                released: Vec::new(),
                reads: 0,
            }
        }

        /// Stores a hand-made node at `addr`; returns its pointer.
        fn put(&mut self, addr: u64, level: u16, birth: u64, payload_bytes: &[u8]) -> BlockPtr {
            let mut b: Box<Block> = Box::new([0; BLOCK]);
            payload_mut(&mut b)[..payload_bytes.len()].copy_from_slice(payload_bytes);
            let ptr = seal(&mut b, KIND, level, birth, addr, TAG);
            self.blocks.insert(addr, Arc::new(NodeBlock::new(&b)));
            ptr
        }
    }

    impl NodeIo for MemIo {
        fn tag(&self) -> u64 {
            TAG
        }
        fn txg(&self) -> u64 {
            self.txg
        }
        fn read(&mut self, ptr: &BlockPtr, kind: NodeKind) -> Result<Arc<NodeBlock>, VdeError> {
            self.reads += 1;
            let b = self
                .blocks
                .get(&ptr.addr)
                .map_or_else(|| Arc::new(NodeBlock::zeroed()), Arc::clone);
            check(&b, ptr.addr, kind, Some(ptr), TAG)?;
            Ok(b)
        }
        fn alloc(&mut self) -> Result<u64, VdeError> {
            let a = self.reuse.pop().unwrap_or_else(|| {
                self.next += 1;
                self.next
            });
            self.allocated.push(a);
            Ok(a)
        }
        fn write(&mut self, addr: u64, block: Box<Block>) -> Result<(), VdeError> {
            assert_eq!(
                self.allocated.last(),
                Some(&addr),
                "write of a block not just allocated"
            );
            assert_eq!(get64(&block[..], 8), self.txg, "birth is the open txg");
            assert!(!self.blocks.contains_key(&addr), "block {addr} overwritten while live");
            self.written.insert(addr, self.txg);
            self.blocks.insert(addr, Arc::new(NodeBlock::new(&block)));
            Ok(())
        }
        fn release(&mut self, addr: u64, birth: u64) {
            let b = self
                .blocks
                .remove(&addr)
                .unwrap_or_else(|| panic!("release of block {addr}, not live"));
            assert_eq!(get64(&b[..], 8), birth, "release of block {addr} with the wrong birth");
            self.released.push((addr, birth));
        }
    }

    fn value_of(fill: u8, len: usize) -> Vec<u8> {
        (0..len).map(|j| fill.wrapping_add(j as u8)).collect()
    }

    /// Dirty nodes reachable in memory (must equal `dirty_nodes`).
    fn count_dirty(c: &Child) -> usize {
        match c {
            Child::Clean(_) => 0,
            Child::Dirty(n) => 1 + n.kids.iter().map(count_dirty).sum::<usize>(),
        }
    }

    /// Whether every dirty interior node's key 0 is empty.
    fn key0_empty(c: &Child) -> bool {
        match c {
            Child::Clean(_) => true,
            Child::Dirty(n) => (n.level == 0 || n.keys[0].is_empty()) && n.kids.iter().all(key0_empty),
        }
    }

    /// Every node of the committed tree, with its level, birth and entries (pre-order).
    type Walked = Vec<(BlockPtr, u16, Vec<(Vec<u8>, Vec<u8>)>)>;

    fn walk_all(io: &mut MemIo, root: Option<BlockPtr>, min_birth: u64) -> Walked {
        let mut out: Walked = Vec::new();
        Tree::walk(io, KIND, root, min_birth, &mut |v| {
            match v {
                Visit::Node { ptr, level } => out.push((ptr, level, Vec::new())),
                Visit::Entry { key, value } => {
                    let last = out.last_mut().expect("an entry follows its leaf");
                    assert_eq!(last.1, 0, "entries only in leaves");
                    last.2.push((key.to_vec(), value.to_vec()));
                }
            }
            Ok(())
        })
        .unwrap();
        out
    }

    /// Shape: no empty node, a root interior node has >= 2 children, other interior nodes
    /// too, and non-root leaves are at least a quarter full.
    fn check_shape(io: &MemIo, ptr: BlockPtr, is_root: bool) {
        let b = &io.blocks[&ptr.addr];
        let v = View::parse(b, KIND, ptr.addr, Expect::ROOT).unwrap();
        if v.level > 0 {
            assert!(v.n >= 2, "interior node {} has {} children", ptr.addr, v.n);
            for i in 0..v.n {
                check_shape(io, v.ptr(i), false);
            }
        } else if !is_root {
            let n = v.to_node();
            assert!(n.size() >= MIN_FILL, "leaf {} has {} bytes", ptr.addr, n.size());
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Vec<u8>, usize, u8),
        Replace(usize, usize, u8),
        Remove(usize),
        RemoveAbsent(Vec<u8>),
        Get(usize),
        GetKey(Vec<u8>),
        Floor(Vec<u8>),
        Page(Option<Vec<u8>>, usize),
        Commit,
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => proptest::collection::vec(b'a'..=b'd', 1..=5),
            2 => proptest::collection::vec(b'a'..=b'b', 1..=60),
            2 => proptest::collection::vec(any::<u8>(), 1..=255),
            2 => proptest::collection::vec(any::<u8>(), 200..=255),
        ]
    }

    fn vlen() -> impl Strategy<Value = usize> {
        prop_oneof![3 => 0usize..24, 1 => 0usize..=Tree::MAX_ENTRY]
    }

    /// Operations, `insert` and `remove` weighing the tree's growth.
    fn op(insert: u32, remove: u32) -> impl Strategy<Value = Op> {
        prop_oneof![
            insert => (key(), vlen(), any::<u8>()).prop_map(|(k, l, f)| Op::Insert(k, l, f)),
            5 => (any::<usize>(), vlen(), any::<u8>()).prop_map(|(i, l, f)| Op::Replace(i, l, f)),
            remove => any::<usize>().prop_map(Op::Remove),
            2 => key().prop_map(Op::RemoveAbsent),
            4 => any::<usize>().prop_map(Op::Get),
            2 => key().prop_map(Op::GetKey),
            4 => key().prop_map(Op::Floor),
            3 => (proptest::option::of(key()), 0usize..40).prop_map(|(k, l)| Op::Page(k, l)),
            1 => Just(Op::Commit),
        ]
    }

    fn nth_key(model: &BTreeMap<Vec<u8>, Vec<u8>>, i: usize) -> Option<Vec<u8>> {
        (!model.is_empty()).then(|| model.keys().nth(i % model.len()).cloned().expect("in range"))
    }

    fn after_commit(io: &mut MemIo, tree: &Tree, model: &BTreeMap<Vec<u8>, Vec<u8>>, commits: &[u64]) {
        assert!(!tree.is_dirty());
        assert_eq!(tree.dirty_nodes(), 0);
        let root = tree.root();
        let all = walk_all(io, root, 0);
        let entries: Vec<_> = all.iter().flat_map(|n| n.2.iter().cloned()).collect();
        let want: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(entries, want, "walk's entries are the model's");
        if let Some(r) = root {
            check_shape(io, r, true);
        }
        // Space: reachable + released = allocated, disjoint, nothing released twice.
        let reachable: BTreeSet<u64> = all.iter().map(|n| n.0.addr).collect();
        assert_eq!(reachable.len(), all.len(), "a node reached twice");
        let released: BTreeSet<u64> = io.released.iter().map(|r| r.0).collect();
        assert_eq!(released.len(), io.released.len(), "a block released twice");
        assert!(reachable.is_disjoint(&released), "a released block is still reachable");
        let allocated: BTreeSet<u64> = io.allocated.iter().copied().collect();
        let union: BTreeSet<u64> = reachable.union(&released).copied().collect();
        assert_eq!(union, allocated, "leaked or unknown blocks");
        for n in &all {
            assert_eq!(io.written[&n.0.addr], n.0.birth);
        }
        // min_birth pruning: exactly the nodes (and their entries) born after it.
        for &t in commits.iter().rev().take(4).chain([0u64, io.txg].iter()) {
            let pruned = walk_all(io, root, t);
            let expect: Walked = all.iter().filter(|n| n.0.birth > t).cloned().collect();
            assert_eq!(pruned, expect, "walk from birth {t}");
        }
    }

    fn run(ops: Vec<Op>) {
        let mut io = MemIo::new();
        let mut tree = Tree::open(KIND, None);
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        let mut commits = Vec::new();
        for op in ops.into_iter().chain([Op::Commit]) {
            match op {
                Op::Insert(k, l, f) => {
                    let v = value_of(f, l.min(Tree::MAX_ENTRY - k.len()));
                    assert_eq!(tree.insert(&mut io, &k, &v).unwrap(), model.insert(k, v));
                }
                Op::Replace(i, l, f) => {
                    if let Some(k) = nth_key(&model, i) {
                        let v = value_of(f, l.min(Tree::MAX_ENTRY - k.len()));
                        assert_eq!(tree.insert(&mut io, &k, &v).unwrap(), model.insert(k, v));
                    }
                }
                Op::Remove(i) => {
                    if let Some(k) = nth_key(&model, i) {
                        assert_eq!(tree.remove(&mut io, &k).unwrap(), model.remove(&k));
                    }
                }
                Op::RemoveAbsent(k) => {
                    let dirty = tree.dirty_nodes();
                    let released = io.released.len();
                    let had = model.remove(&k);
                    assert_eq!(tree.remove(&mut io, &k).unwrap(), had);
                    if had.is_none() {
                        assert_eq!((tree.dirty_nodes(), io.released.len()), (dirty, released));
                    }
                }
                Op::Get(i) => {
                    if let Some(k) = nth_key(&model, i) {
                        assert_eq!(tree.get(&mut io, &k).unwrap().as_ref(), model.get(&k));
                    }
                }
                Op::GetKey(k) => assert_eq!(tree.get(&mut io, &k).unwrap().as_ref(), model.get(&k)),
                Op::Floor(k) => {
                    let want = model
                        .range(..=k.clone())
                        .next_back()
                        .map(|(a, b)| (a.clone(), b.clone()));
                    assert_eq!(tree.floor(&mut io, &k).unwrap(), want);
                }
                Op::Page(after, limit) => {
                    let want: Vec<_> = match &after {
                        None => model.iter().take(limit).map(|(a, b)| (a.clone(), b.clone())).collect(),
                        Some(a) => model
                            .range::<Vec<u8>, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                            .take(limit)
                            .map(|(a, b)| (a.clone(), b.clone()))
                            .collect(),
                    };
                    assert_eq!(tree.page(&mut io, after.as_deref(), limit).unwrap(), want);
                }
                Op::Commit => {
                    let root = tree.commit(&mut io).unwrap();
                    assert_eq!(root, tree.root());
                    assert_eq!(root.is_none(), model.is_empty());
                    commits.push(io.txg);
                    after_commit(&mut io, &tree, &model, &commits);
                    io.txg += 1;
                }
            }
            assert_eq!(tree.dirty_nodes(), tree.root.as_ref().map_or(0, count_dirty));
            assert!(tree.root.as_ref().is_none_or(key0_empty));
        }
        // Emptying the tree (in an order of its own, committing now and then) releases
        // every block.
        let mut keys: Vec<_> = model.keys().cloned().collect();
        let n = keys.len();
        keys.sort_by_key(|k| xxhash_rust::xxh3::xxh3_64(k));
        for (i, k) in keys.into_iter().enumerate() {
            assert_eq!(tree.remove(&mut io, &k).unwrap(), model.remove(&k));
            if i % 64 == 63 && i + 1 < n {
                commits.push(io.txg);
                tree.commit(&mut io).unwrap();
                after_commit(&mut io, &tree, &model, &commits);
                io.txg += 1;
            }
        }
        assert_eq!(tree.commit(&mut io).unwrap(), None);
        assert_eq!(tree.dirty_nodes(), 0);
        assert!(
            io.blocks.is_empty(),
            "blocks left after emptying: {:?}",
            io.blocks.keys()
        );
        assert_eq!(io.released.len(), io.allocated.len());
    }

    fn leaf(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut p = vec![0; 2];
        put16(&mut p, 0, entries.len() as u16);
        for (k, v) in entries {
            p.extend_from_slice(&(k.len() as u16).to_le_bytes());
            p.extend_from_slice(&(v.len() as u16).to_le_bytes());
            p.extend_from_slice(k);
            p.extend_from_slice(v);
        }
        p.truncate(PAYLOAD2);
        p
    }

    fn interior(entries: &[(&[u8], Option<BlockPtr>)]) -> Vec<u8> {
        let mut p = vec![0; 2];
        put16(&mut p, 0, entries.len() as u16);
        for (k, ptr) in entries {
            p.extend_from_slice(&(k.len() as u16).to_le_bytes());
            p.extend_from_slice(k);
            let at = p.len();
            p.resize(at + BlockPtr::SIZE, 0);
            BlockPtr::put(*ptr, &mut p, at);
        }
        p.truncate(PAYLOAD2);
        p
    }

    /// Runs every path that reads `key` on the tree at `root`; each must fail with a
    /// `Corrupt` naming `block` and saying `why`.
    fn each_path_fails(io: &mut MemIo, root: BlockPtr, key: &[u8], block: u64, why: &str) {
        let expect = |what: &str, e: VdeError| match &e {
            VdeError::Corrupt { block: b, reason, .. } => {
                assert_eq!(*b, block, "{what}: {e}");
                assert!(reason.contains(why), "{what}: {e}");
            }
            other => panic!("{what}: not Corrupt: {other}"),
        };
        let mut t = Tree::open(KIND, Some(root));
        expect("get", t.get(io, key).unwrap_err());
        expect("floor", t.floor(io, key).unwrap_err());
        expect("page", t.page(io, Some(&key[..key.len() - 1]), 1000).unwrap_err());
        expect(
            "walk",
            Tree::walk(io, KIND, Some(root), 0, &mut |_| Ok(())).unwrap_err(),
        );
        expect("remove", t.remove(io, key).unwrap_err());
        // Last: a failed insert may have copied (and released) the nodes above the bad one.
        expect("insert", t.insert(io, key, b"v").unwrap_err());
    }

    /// A node parsed once (its layout kept) and then read through parents that expect
    /// another level or range fails exactly as a full check of it does, and a node that is
    /// invalid on its own stays invalid on every parse.
    #[test]
    fn a_kept_layout_is_checked_against_each_parent() {
        let mut io = MemIo::new();
        let ptr = io.put(500, 0, 1, &leaf(&[(b"b", b"1"), (b"c", b"2"), (b"d", b"3")]));
        let block = Arc::clone(&io.blocks[&ptr.addr]);
        let ok = |lo: Option<&'static [u8]>, hi: Option<&'static [u8]>, level| Expect { level, lo, hi };
        assert!(View::parse(&block, KIND, ptr.addr, Expect::ROOT).is_ok());
        let wants = [
            (ok(None, None, Some(1)), false),
            (ok(None, None, Some(0)), true),
            (ok(Some(b"b"), Some(b"e"), Some(0)), true),
            (ok(Some(b"bb"), None, None), false),
            (ok(Some(b"a"), Some(b"d"), None), false),
            (ok(Some(b"a"), Some(b"dd"), None), true),
        ];
        for (want, valid) in wants {
            let fast = View::parse(&block, KIND, ptr.addr, want).map(|v| v.n);
            let full = Layout::check(&block, KIND, ptr.addr, want).map(|l| l.offs.len());
            assert_eq!(fast.is_ok(), valid);
            assert_eq!(format!("{fast:?}"), format!("{full:?}"));
        }
        // An interior node with one child holds no key a range could exclude.
        let one = io.put(501, 1, 1, &interior(&[(b"", Some(ptr))]));
        let block = Arc::clone(&io.blocks[&one.addr]);
        for want in [Expect::ROOT, ok(Some(b"x"), Some(b"y"), Some(1))] {
            assert!(View::parse(&block, KIND, one.addr, want).is_ok());
        }
        // Keys out of order: rejected on the first parse and on every later one.
        let bad = io.put(502, 0, 1, &leaf(&[(b"c", b"1"), (b"b", b"2")]));
        let block = Arc::clone(&io.blocks[&bad.addr]);
        for _ in 0..2 {
            let e = View::parse(&block, KIND, bad.addr, Expect::ROOT)
                .err()
                .expect("corrupt");
            assert!(e.to_string().contains("keys out of order"), "{e}");
        }
    }

    #[test]
    fn hostile_leaves_are_corrupt_naming_the_block() {
        let big = [7u8; 899];
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (leaf(&[]), 0, "empty node"),
            (
                {
                    let mut p = leaf(&[(b"k", b"v")]);
                    put16(&mut p, 0, 900);
                    p
                },
                0,
                "more than a node can hold",
            ),
            (
                {
                    let mut p = leaf(&[(b"k", b"v")]);
                    put16(&mut p, 0, 2);
                    p
                },
                0,
                "key length 0",
            ),
            (
                leaf(&[(b"a", &big), (b"b", &big), (b"c", &big), (b"d", &big), (b"k", &big)]),
                0,
                "runs beyond the payload",
            ),
            (
                {
                    let mut p = leaf(&[(b"k", &[1; 1000])]);
                    p.truncate(PAYLOAD2);
                    p
                },
                0,
                "at most 1000",
            ),
            (leaf(&[(b"k", b"1"), (b"b", b"2")]), 0, "out of order"),
            (leaf(&[(b"k", b"1"), (b"k", b"2")]), 0, "out of order"),
            (leaf(&[(b"", b"1"), (b"k", b"2")]), 0, "key length 0"),
            (leaf(&[(b"k", b"1")]), MAX_LEVEL + 1, "above the most"),
            (interior(&[]), 1, "empty node"),
            (interior(&[(b"", None), (b"x", None)]), 1, "empty child pointer"),
            (
                {
                    let mut p = interior(&[(b"", None)]);
                    put16(&mut p, 2, 300);
                    p
                },
                1,
                "key length 300",
            ),
        ];
        for (payload, level, why) in cases {
            let mut io = MemIo::new();
            let root = io.put(50, level, 1, &payload);
            each_path_fails(&mut io, root, b"k", 50, why);
        }
    }

    #[test]
    fn hostile_children_are_corrupt_naming_the_block() {
        // A level-1 node where its parent (level 3) implies level 2.
        let mut io = MemIo::new();
        let l = io.put(60, 0, 1, &leaf(&[(b"k", b"v")]));
        let mid = io.put(61, 1, 1, &interior(&[(b"", Some(l))]));
        let root = io.put(62, 3, 1, &interior(&[(b"", Some(mid))]));
        each_path_fails(&mut io, root, b"k", 61, "where its parent implies level 2");

        // A leaf holding a key outside the range its parent gives it.
        let mut io = MemIo::new();
        let a = io.put(70, 0, 1, &leaf(&[(b"a", b"1")]));
        let b = io.put(71, 0, 1, &leaf(&[(b"c", b"2")]));
        let root = io.put(72, 1, 1, &interior(&[(b"", Some(a)), (b"m", Some(b))]));
        each_path_fails(&mut io, root, b"n", 71, "outside the range");

        // An interior separator outside its own range, one level down.
        let mut io = MemIo::new();
        let a = io.put(80, 0, 1, &leaf(&[(b"a", b"1")]));
        let c = io.put(82, 0, 1, &leaf(&[(b"q", b"2")]));
        let m0 = io.put(85, 1, 1, &interior(&[(b"", Some(a))]));
        let mid = io.put(83, 1, 1, &interior(&[(b"", Some(c)), (b"b", Some(c))]));
        let root = io.put(84, 2, 1, &interior(&[(b"", Some(m0)), (b"p", Some(mid))]));
        each_path_fails(&mut io, root, b"q", 83, "outside the range");

        // Separators out of order.
        let mut io = MemIo::new();
        let a = io.put(90, 0, 1, &leaf(&[(b"a", b"1")]));
        let root = io.put(91, 1, 1, &interior(&[(b"", Some(a)), (b"m", Some(a)), (b"c", Some(a))]));
        each_path_fails(&mut io, root, b"k", 91, "out of order");

        // A child born after its parent (CoW makes parents at least as young).
        let mut io = MemIo::new();
        let a = io.put(95, 0, 5, &leaf(&[(b"k", b"1")]));
        let root = io.put(96, 1, 4, &interior(&[(b"", Some(a))]));
        each_path_fails(&mut io, root, b"k", 96, "after its parent");
    }

    #[test]
    fn a_stale_child_is_rejected_through_its_pointer() {
        let mut io = MemIo::new();
        let mut t = Tree::open(KIND, None);
        for i in 0..40u32 {
            t.insert(&mut io, format!("key{i:03}").as_bytes(), &[i as u8; 300])
                .unwrap();
        }
        let r1 = t.commit(&mut io).unwrap();
        let nodes = walk_all(&mut io, r1, 0);
        assert!(nodes[0].1 == 1 && nodes.len() > 3, "a root over several leaves");
        let (first_leaf, _, entries) = nodes[1].clone();
        let old = io.blocks[&first_leaf.addr].clone();
        // Txg 2 changes the first leaf; the store hands its old number out again.
        io.txg = 2;
        t.insert(&mut io, &entries[0].0, b"new").unwrap();
        io.reuse.push(first_leaf.addr);
        let r2 = t.commit(&mut io).unwrap();
        let nodes = walk_all(&mut io, r2, 0);
        assert_eq!((nodes[1].0.addr, nodes[1].0.birth), (first_leaf.addr, 2));
        // The write of the new leaf is lost: the old, self-consistent block is read.
        io.blocks.insert(first_leaf.addr, old);
        let mut t = Tree::open(KIND, r2);
        for e in [
            t.get(&mut io, &entries[0].0).unwrap_err(),
            Tree::walk(&mut io, KIND, r2, 0, &mut |_| Ok(())).unwrap_err(),
        ] {
            match &e {
                VdeError::Mismatch { block, found, .. } => {
                    assert_eq!(*block, first_leaf.addr, "{e}");
                    assert!(found.contains("stale"), "{e}");
                }
                other => panic!("not a mismatch: {other}"),
            }
        }
        // Keys in other leaves still read.
        assert_eq!(t.get(&mut io, b"key039").unwrap(), Some(vec![39; 300]));
    }

    #[test]
    fn a_one_child_interior_node_from_disk_empties_cleanly() {
        // Valid but unbalanced (another writer's tree): the left subtree is a chain of
        // one-child nodes over a one-entry leaf.
        let mut io = MemIo::new();
        let l = io.put(120, 0, 1, &leaf(&[(b"a", b"1")]));
        let a = io.put(121, 1, 1, &interior(&[(b"", Some(l))]));
        let b1 = io.put(122, 0, 1, &leaf(&[(b"m", b"2"), (b"n", b"3")]));
        let b2 = io.put(123, 0, 1, &leaf(&[(b"t", b"4")]));
        let b = io.put(124, 1, 1, &interior(&[(b"", Some(b1)), (b"s", Some(b2))]));
        let root = io.put(125, 2, 1, &interior(&[(b"", Some(a)), (b"m", Some(b))]));
        for addr in 120..=125 {
            io.written.insert(addr, 1);
        }
        io.txg = 2;
        let mut t = Tree::open(KIND, Some(root));
        assert_eq!(t.remove(&mut io, b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(t.dirty_nodes(), t.root.as_ref().map_or(0, count_dirty));
        assert!(key0_empty(t.root.as_ref().unwrap()), "an interior key 0 is not empty");
        let r = t.commit(&mut io).unwrap();
        let all = walk_all(&mut io, r, 0);
        let entries: Vec<_> = all.iter().flat_map(|n| n.2.iter().map(|e| e.0.clone())).collect();
        assert_eq!(entries, [b"m".to_vec(), b"n".to_vec(), b"t".to_vec()]);
        // The emptied chain and the old root are released; the untouched leaves are kept.
        let released: BTreeSet<u64> = io.released.iter().map(|r| r.0).collect();
        assert!([120, 121, 125].iter().all(|a| released.contains(a)), "{released:?}");
        let reachable: BTreeSet<u64> = all.iter().map(|n| n.0.addr).collect();
        assert!(reachable.is_disjoint(&released));
        for k in [b"m", b"n", b"t"] {
            assert!(t.get(&mut io, k).unwrap().is_some());
        }
        assert_eq!(t.floor(&mut io, b"b").unwrap(), None);
    }

    /// xorshift64*: a deterministic stream for the large test.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn a_four_level_tree_fills_and_empties_without_leaks() {
        let mut io = MemIo::new();
        let mut t = Tree::open(KIND, None);
        let mut model = BTreeMap::new();
        let mut commits = Vec::new();
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut max_level = 0;
        for i in 0..24_000u64 {
            let mut k = vec![0u8; 255];
            k[..8].copy_from_slice(&rng(&mut s).to_be_bytes());
            let v = value_of(i as u8, 600 + (rng(&mut s) % 145) as usize);
            assert_eq!(t.insert(&mut io, &k, &v).unwrap(), model.insert(k, v));
            if i % 4000 == 3999 {
                commits.push(io.txg);
                t.commit(&mut io).unwrap();
                after_commit(&mut io, &t, &model, &commits);
                io.txg += 1;
                max_level = walk_all(&mut io, t.root(), 0)[0].1;
            }
        }
        assert!(max_level >= 3, "root level {max_level}");
        let mut keys: Vec<_> = model.keys().cloned().collect();
        keys.sort_by_key(|k| xxhash_rust::xxh3::xxh3_64(k));
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(t.remove(&mut io, k).unwrap(), model.remove(k));
            if i % 4000 == 3999 {
                commits.push(io.txg);
                t.commit(&mut io).unwrap();
                after_commit(&mut io, &t, &model, &commits);
                io.txg += 1;
            }
        }
        assert_eq!(t.commit(&mut io).unwrap(), None);
        assert!(io.blocks.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn behaves_like_a_btreemap_and_leaks_nothing(ops in proptest::collection::vec(op(30, 20), 1..3000)) {
            run(ops);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
        /// Mostly inserts: trees of three levels, then emptied.
        #[test]
        fn deep_trees_grow_and_shrink_like_a_btreemap(ops in proptest::collection::vec(op(60, 6), 2000..4000)) {
            run(ops);
        }
    }
}
