//! Zero heap allocations per I/O on the VFIO and io_uring data paths, counted by a global
//! allocator.
//!
//! The allocator counts allocations made by the current thread while counting is on. A
//! queue at depth 32 runs a few thousand reads and writes (submit, ring, poll, resubmit)
//! with counting on: the count must stay zero — through the driver's own queue pair, and
//! through the block interface (`ironvme::IoQueue`) on VFIO and on io_uring. Runs inside
//! the guest (`scripts/test`).

mod common;

use common::{OnVfio, env, kernel_ctrl};
use ironvme::block::{BlockQueue, Completion, Op};
use ironvme::nvme::ctrl::{ControllerConfig, IoCompletion};
use ironvme::{Backend, Device, IoQueue, OpenOptions};
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
    let ctrl = ironvme::open_vfio(&env("IRONVME_VFIO_4K_BDF"), ControllerConfig::default(), false)
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

/// Runs `ios` alternating 4 KiB reads and writes at depth `qd` through the block
/// interface; returns the heap allocations counted while the warm queue ran them.
fn block_interface_allocations(device: &Device, qd: usize, ios: u64) -> u64 {
    let mut q: IoQueue = device.create_queue(None, qd).unwrap();
    let bs = 4096;
    let mut free = device.dma().allocate(qd * bs).unwrap().into_chunks(bs, qd).unwrap();
    let mut done: Vec<Completion> = Vec::with_capacity(qd);
    let blocks = (bs as u64) / u64::from(q.namespace().block_size);
    let mut run = |ios: u64, q: &mut IoQueue| {
        let (mut submitted, mut completed) = (0u64, 0u64);
        while completed < ios {
            while submitted < ios {
                let Some(b) = free.pop() else { break };
                let lba = (submitted * 7919) % 50_000 * blocks;
                let op = if submitted % 2 == 0 {
                    Op::Read { lba }
                } else {
                    Op::Write { lba, fua: false }
                };
                q.submit(op, Some(b), submitted).expect("submit");
                submitted += 1;
            }
            q.ring().expect("ring");
            q.poll(qd, |c| done.push(c));
            for c in done.drain(..) {
                assert!(c.result.is_ok(), "{:?}", c.result);
                free.push(c.buf.expect("buffer back"));
                completed += 1;
            }
        }
    };
    run(200, &mut q); // warm up: lazily registered buffers, clock calibration, ...
    allocations_in(|| run(ios, &mut q))
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn no_heap_allocation_per_io_through_the_block_interface_on_vfio_and_io_uring() {
    const QD: usize = 32;
    const IOS: u64 = 4000;
    let uring = format!("{}n2", kernel_ctrl(&env("IRONVME_KERNEL_BDF")).display());
    let options = OpenOptions {
        backend: Some(Backend::Uring),
        ..Default::default()
    };
    let device = Device::open(&uring, &options).unwrap();
    let n = block_interface_allocations(&device, QD, IOS);
    eprintln!("io_uring {uring}: {IOS} I/Os at QD {QD}: {n} heap allocations");
    assert_eq!(n, 0, "heap allocations on the io_uring data path");

    let vfio = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let options = OpenOptions {
        backend: Some(Backend::Vfio),
        ..Default::default()
    };
    let device = Device::open(&vfio.bdf, &options).unwrap();
    let n = block_interface_allocations(&device, QD, IOS);
    eprintln!("vfio {}: {IOS} I/Os at QD {QD}: {n} heap allocations", vfio.bdf);
    assert_eq!(
        n, 0,
        "heap allocations on the VFIO data path through the block interface"
    );
}
