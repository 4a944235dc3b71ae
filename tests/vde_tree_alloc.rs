//! Heap allocations of format 2's B+tree (`ironvme::vde::tree`) on its hot paths, counted
//! by a global allocator: a `get` allocates only the value it returns, an `insert` or
//! replace below nodes already copied allocates only the key and value it stores (plus, at
//! most, one growth of the leaf's two vectors). Clean nodes come from a cache of
//! `Arc<NodeBlock>`s, as the pool's do: the first parse of a node allocates its layout
//! (entry offsets), kept with the block, and reading it again allocates nothing.
//!
//! With `--nocapture` it also prints gets and inserts per second on a tree of 100,000
//! entries (meaningful in `--release`).

use ironvme::vde::VdeError;
use ironvme::vde::block::{Block, BlockPtr, NodeKind, check};
use ironvme::vde::tree::{NodeBlock, NodeIo, Tree};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

struct Counting;

thread_local! {
    /// Whether this thread is inside `allocations_in`.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// Allocations this thread made while counting. Per thread, so that tests running in
    /// parallel do not count each other's allocations.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: the allocator also runs while a thread's locals are being destroyed.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every method forwards to the system allocator with the caller's arguments; the
// counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged; the caller upholds GlobalAlloc::alloc's contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as for alloc.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: as for alloc; `ptr` came from this allocator, i.e. from System.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from System, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Counts the allocations `f` makes on this thread.
fn allocations_in<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (ALLOCATIONS.with(Cell::get) - before, r)
}

const TAG: u64 = 0xa110_c0de;
const KIND: NodeKind = NodeKind::Objects;

/// Blocks kept as `Arc`s: a read is a checked clone, as from the pool's cache.
struct Cache {
    blocks: HashMap<u64, Arc<NodeBlock>>,
    next: u64,
    txg: u64,
}

impl NodeIo for Cache {
    fn tag(&self) -> u64 {
        TAG
    }
    fn txg(&self) -> u64 {
        self.txg
    }
    fn read(&mut self, ptr: &BlockPtr, kind: NodeKind) -> Result<Arc<NodeBlock>, VdeError> {
        let b = self.blocks.get(&ptr.addr).expect("a live block").clone();
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
    fn release(&mut self, addr: u64, _birth: u64) {
        self.blocks.remove(&addr).expect("a live block released");
    }
}

fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

fn filled(n: u64) -> (Cache, Tree) {
    let mut io = Cache {
        blocks: HashMap::new(),
        next: 100,
        txg: 1,
    };
    let mut t = Tree::open(KIND, None);
    for i in 0..n {
        t.insert(&mut io, &key(i), &[i as u8; 100]).unwrap();
    }
    t.commit(&mut io).unwrap();
    io.txg += 1;
    (io, t)
}

#[test]
fn the_counter_sees_allocations() {
    // Proves the tests below can fail.
    let (n, _) = allocations_in(|| drop(std::hint::black_box(vec![1u8; 100])));
    assert_eq!(n, 1);
}

#[test]
fn get_allocates_only_the_value_it_returns() {
    let (mut io, mut t) = filled(20_000);
    for i in [0, 7, 19_999] {
        // The first read of each node on the path allocates its layout, once.
        let (n, v) = allocations_in(|| t.get(&mut io, &key(i)).unwrap());
        assert_eq!(v, Some(vec![i as u8; 100]));
        assert!(n <= 4, "first get of key {i}: {n} allocations");
        let (n, v) = allocations_in(|| t.get(&mut io, &key(i)).unwrap());
        assert_eq!(v, Some(vec![i as u8; 100]));
        assert_eq!(n, 1, "get of key {i}");
    }
    assert_eq!(t.get(&mut io, b"absent").unwrap(), None);
    let (n, v) = allocations_in(|| t.get(&mut io, b"absent").unwrap());
    assert_eq!((n, v), (0, None));
    // On a dirty path too.
    t.insert(&mut io, &key(7), b"seven").unwrap();
    let (n, v) = allocations_in(|| t.get(&mut io, &key(7)).unwrap());
    assert_eq!((n, v), (1, Some(b"seven".to_vec())));
}

#[test]
fn insert_below_copied_nodes_allocates_only_what_it_stores() {
    let (mut io, mut t) = filled(20_000);
    // The first change copies the path (and may allocate for the copies).
    t.insert(&mut io, &key(5), &[1; 100]).unwrap();
    let dirty = t.dirty_nodes();
    // Replacing a value on the copied path: the new value only.
    let (n, old) = allocations_in(|| t.insert(&mut io, &key(5), &[2; 100]).unwrap());
    assert_eq!(old, Some(vec![1; 100]));
    assert_eq!(n, 1);
    // A new key next to it (same leaf unless it splits): key and value, and at most one
    // growth of the leaf's key and value vectors.
    let mut k = key(5);
    k[15] ^= 0x80;
    let (n, old) = allocations_in(|| t.insert(&mut io, &k, &[3; 100]).unwrap());
    assert_eq!(old, None);
    if t.dirty_nodes() == dirty {
        assert!(n <= 4, "{n} allocations");
    }
}

#[test]
fn rates() {
    const N: u64 = 100_000;
    let t0 = Instant::now();
    let (mut io, mut t) = filled(N);
    let fill = t0.elapsed();
    let t0 = Instant::now();
    for i in 0..N {
        assert!(t.get(&mut io, &key(i)).unwrap().is_some());
    }
    let get = t0.elapsed();
    let t0 = Instant::now();
    for i in (0..N).step_by(10) {
        t.insert(&mut io, &key(i), &[9; 100]).unwrap();
        if i % 10_000 == 0 {
            t.commit(&mut io).unwrap();
            io.txg += 1;
        }
    }
    t.commit(&mut io).unwrap();
    let replace = t0.elapsed();
    println!(
        "tree of {N} entries (16 B keys, 100 B values): fill {:.0}/s, get {:.0}/s, replace with commit every 1,000 {:.0}/s",
        N as f64 / fill.as_secs_f64(),
        N as f64 / get.as_secs_f64(),
        (N / 10) as f64 / replace.as_secs_f64()
    );
}
