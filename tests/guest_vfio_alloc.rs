//! Zero heap allocations per I/O on the VFIO data path, counted by a global allocator.
//!
//! The allocator counts allocations made by the current thread while counting is on. A
//! queue pair at queue depth 32 runs a few thousand reads and writes (submit, ring, poll,
//! resubmit) with counting on: the count must stay zero. Runs inside the guest
//! (`scripts/test`).

mod common;

use common::{OnVfio, env};
use ironvme::nvme::ctrl::{ControllerConfig, IoCompletion};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note_allocation() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
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
fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn the_counter_sees_allocations() {
    // Proves the test below can fail.
    let n = allocations_in(|| drop(std::hint::black_box(vec![1u8; 100])));
    assert_eq!(n, 1);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn no_heap_allocation_per_io_on_the_vfio_path() {
    const QD: usize = 32;
    const IOS: u64 = 4000;
    let _vfio = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let ctrl = ironvme::open_vfio(&env("IRONVME_VFIO_4K_BDF"), ControllerConfig::default())
        .unwrap()
        .controller;
    let ns = ctrl.namespace(1).unwrap();
    let mut q = ctrl.create_io_queue_pair().unwrap();
    let mut free = ctrl.dma().allocate(QD * 4096).unwrap().into_chunks(4096, QD).unwrap();
    let mut done: Vec<IoCompletion> = Vec::with_capacity(QD);
    let mut run = |ios: u64, q: &mut ironvme::nvme::ctrl::IoQueuePair<_>| {
        let (mut submitted, mut completed) = (0u64, 0u64);
        while completed < ios {
            while submitted < ios {
                let Some(b) = free.pop() else { break };
                let lba = (submitted * 7919) % 100_000;
                let sent = if submitted % 2 == 0 {
                    q.read(&ns, lba, b, submitted)
                } else {
                    q.write(&ns, lba, b, false, submitted)
                };
                sent.expect("submit");
                submitted += 1;
            }
            q.ring();
            q.poll(QD, |c| done.push(c));
            for c in done.drain(..) {
                assert!(c.result().is_ok(), "{}", c.status);
                free.push(c.buf.expect("buffer back"));
                completed += 1;
            }
        }
    };
    run(200, &mut q); // warm up: lazily initialised state (clock calibration, ...)
    let n = allocations_in(|| run(IOS, &mut q));
    eprintln!("{IOS} I/Os at QD {QD}: {n} heap allocations");
    assert_eq!(n, 0, "heap allocations on the VFIO data path");
}
