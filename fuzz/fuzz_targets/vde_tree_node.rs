//! Format 2's copy-on-write B+tree (`ironvme::vde::tree`) on hostile nodes: blocks whose
//! checksums verify (the harness seals them, and points parents at their children with
//! the right birth and checksum) but whose payloads are whatever the fuzzer wrote.
//!
//! # Input
//!
//! - byte 0: how many blocks (1..=8); block `i` lives at block number `10 + i`; block 0
//!   is the root;
//! - per block: a level byte (`% 4`, or the raw byte when >= 240, so levels above the
//!   tree's limit appear), a birth byte, a little-endian u16 length, then that many payload
//!   bytes (cut to the payload size; the rest of the payload is zeros);
//! - the rest: the key the operations use (`b"k"` when empty; cut to 255 bytes).
//!
//! Blocks are sealed from the last to the first. Before block `i` is sealed, every child
//! pointer its payload holds (read the way an interior node is laid out, as far as the
//! bytes allow) whose address has its top bit clear is aimed at a later block `j > i`
//! (address `% (n - i - 1)`) and given `j`'s birth and checksum, so pointers verify and
//! the decoders behind the checksums are what is fuzzed. Pointers with the top bit set are
//! left as written (they fail their check).
//!
//! # Oracles
//!
//! 1. Nothing panics: `get`, `floor`, `page`, `walk`, `remove`, `insert`, `commit`.
//! 2. After a `remove` and an `insert` that succeed and a `commit`, the tree reads its own
//!    writes: `get` of the key returns the value inserted, and a `walk` of the new root
//!    fails, if at all, only in a hostile block the change left alone (every node the tree
//!    wrote, numbers 1001 and up, decodes). `page` returns keys above `after`, in order.
//! 3. `walk` stops after a budget of visits: a hostile DAG (every pointer of a node aimed
//!    at one child) could otherwise make it visit exponentially many nodes, which is the
//!    caller's business (fsck counts, a send stops), not a decoding fault.

#![no_main]

use ironvme::vde::VdeError;
use ironvme::vde::block::{BLOCK, Block, BlockPtr, NodeKind, PAYLOAD2, check, payload_mut, seal};
use ironvme::vde::tree::{NodeBlock, NodeIo, Tree, Visit};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::Arc;

const TAG: u64 = 0x7265_6574_5f7a_7a66;
const KIND: NodeKind = NodeKind::Extents;
const FIRST: u64 = 10;
/// Visits after which the harness stops a walk.
const WALK_BUDGET: usize = 20_000;

struct MemIo {
    /// Handed out shared, as the pool's cache does: a node's layout is found by its first
    /// parse and kept for every later read, through whichever parent.
    blocks: HashMap<u64, Arc<NodeBlock>>,
    next: u64,
    txg: u64,
}

impl NodeIo for MemIo {
    fn tag(&self) -> u64 {
        TAG
    }
    fn txg(&self) -> u64 {
        self.txg
    }
    fn read(&mut self, ptr: &BlockPtr, kind: NodeKind) -> Result<Arc<NodeBlock>, VdeError> {
        let b = self
            .blocks
            .get(&ptr.addr)
            .map_or_else(|| Arc::new(NodeBlock::zeroed()), Arc::clone);
        check(&b, ptr.addr, kind, Some(ptr), TAG)?;
        Ok(b)
    }
    fn alloc(&mut self) -> Result<u64, VdeError> {
        self.next += 1;
        Ok(self.next)
    }
    fn write(&mut self, addr: u64, block: Box<Block>) -> Result<(), VdeError> {
        self.blocks.insert(addr, Arc::new(NodeBlock::new(&block)));
        Ok(())
    }
    fn release(&mut self, _addr: u64, _birth: u64) {
        // Released blocks stay readable: a hostile tree may reach one block through
        // several pointers, and the harness fuzzes decoding, not space accounting.
    }
}

/// Aims the child pointers of an interior-looking payload at later, already sealed blocks.
fn aim_pointers(p: &mut [u8], i: usize, sealed: &[Option<BlockPtr>]) {
    let n = sealed.len();
    if i + 1 >= n || p.len() < 2 {
        return;
    }
    let count = usize::from(u16::from_le_bytes([p[0], p[1]]));
    let mut at = 2;
    for _ in 0..count {
        if at + 2 > p.len() {
            return;
        }
        let klen = usize::from(u16::from_le_bytes([p[at], p[at + 1]]));
        let ptr_at = at + 2 + klen;
        if ptr_at + BlockPtr::SIZE > p.len() {
            return;
        }
        let raw = u64::from_le_bytes(p[ptr_at..ptr_at + 8].try_into().expect("8 bytes"));
        if raw >> 63 == 0 {
            let j = i + 1 + (raw % (n - i - 1) as u64) as usize;
            if let Some(target) = sealed[j] {
                BlockPtr::put(Some(target), p, ptr_at);
            }
        }
        at = ptr_at + BlockPtr::SIZE;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, mut rest)) = data.split_first() else {
        return;
    };
    let n = 1 + usize::from(n % 8);
    let mut specs = Vec::with_capacity(n);
    for _ in 0..n {
        if rest.len() < 4 {
            break;
        }
        let level = if rest[0] >= 240 {
            u16::from(rest[0])
        } else {
            u16::from(rest[0] % 4)
        };
        let birth = u64::from(rest[1]);
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]])).min(rest.len() - 4);
        specs.push((level, birth, &rest[4..4 + len]));
        rest = &rest[4 + len..];
    }
    if specs.is_empty() {
        return;
    }
    let key: Vec<u8> = if rest.is_empty() {
        b"k".to_vec()
    } else {
        rest[..rest.len().min(255)].to_vec()
    };

    let mut io = MemIo {
        blocks: HashMap::new(),
        next: 1000,
        txg: 300,
    };
    let mut sealed: Vec<Option<BlockPtr>> = vec![None; specs.len()];
    for i in (0..specs.len()).rev() {
        let (level, birth, bytes) = specs[i];
        let mut b: Box<Block> = Box::new([0; BLOCK]);
        let p = payload_mut(&mut b);
        let len = bytes.len().min(PAYLOAD2);
        p[..len].copy_from_slice(&bytes[..len]);
        if level > 0 {
            aim_pointers(p, i, &sealed);
        }
        let addr = FIRST + i as u64;
        sealed[i] = Some(seal(&mut b, KIND, level, birth, addr, TAG));
        io.blocks.insert(addr, Arc::new(NodeBlock::new(&b)));
    }
    let root = sealed[0];

    let mut tree = Tree::open(KIND, root);
    let _ = tree.get(&mut io, &key);
    let _ = tree.floor(&mut io, &key);
    let _ = tree.page(&mut io, None, 64);
    if let Ok(page) = tree.page(&mut io, Some(&key), 1000) {
        assert!(page.len() <= 1000);
        assert!(page.windows(2).all(|w| w[0].0 < w[1].0), "page out of order");
        assert!(page.iter().all(|e| e.0 > key), "page returned a key <= after");
    }
    for min_birth in [0, 100] {
        let mut visits = 0usize;
        let _ = Tree::walk(&mut io, KIND, root, min_birth, &mut |v| {
            visits += 1;
            if let Visit::Node { ptr, .. } = v {
                assert!(ptr.birth > min_birth, "walk visited a node born at or before min_birth");
            }
            if visits > WALK_BUDGET {
                return Err(VdeError::Unsupported("walk budget".into()));
            }
            Ok(())
        });
    }

    // Changes. After an error the tree may hold part of a change and the store must not
    // commit it (see `Tree::insert`), so the harness stops there.
    if tree.remove(&mut io, &key).is_err() {
        return;
    }
    let value = vec![0x5a; (Tree::MAX_ENTRY - key.len()).min(300)];
    if tree.insert(&mut io, &key, &value).is_err() {
        return;
    }
    let Ok(new_root) = tree.commit(&mut io) else {
        return;
    };
    assert!(new_root.is_some());
    let mut reread = Tree::open(KIND, new_root);
    assert_eq!(
        reread.get(&mut io, &key).expect("the tree reads its own writes"),
        Some(value)
    );
    let mut visits = 0usize;
    let walked = Tree::walk(&mut io, KIND, new_root, 0, &mut |_| {
        visits += 1;
        if visits > WALK_BUDGET {
            return Err(VdeError::Unsupported("walk budget".into()));
        }
        Ok(())
    });
    // A walk may still fail in a hostile subtree the change did not touch, never in a
    // node the tree wrote (numbers 1001..=io.next).
    match walked {
        Ok(()) | Err(VdeError::Unsupported(_)) => {}
        Err(VdeError::Corrupt { block, .. } | VdeError::Mismatch { block, .. }) => {
            assert!(
                !(1000 < block && block <= io.next),
                "a node the tree wrote does not decode: block {block}"
            )
        }
        Err(e) => panic!("unexpected walk error: {e}"),
    }
});
