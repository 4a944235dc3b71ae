//! The io_uring and psync backends on the host: regular files in a temporary directory
//! (`IRONVME_TEST_DIR`, else the system's), loop devices when the host allows them, and a
//! block device named by `IRONVME_TEST_BLOCK_DEVICE` (its contents are overwritten: use it
//! in the QEMU guest only).
//!
//! io_uring tests print why and pass when io_uring is unavailable here (seccomp,
//! `kernel.io_uring_disabled`); loop-device tests likewise without root or `losetup`.

use ironvme_kernel::uring::FIXED_BUFFER_SLOTS;
use ironvme_kernel::{KernelDma, KernelError, PsyncDevice, UringDevice, UringOptions, io_uring_available};
use ironvme_nvme::block::{BlockError, BlockQueue, Completion, GeometrySource, IoStatus, Op, run_one};
use ironvme_nvme::hw::{DmaAllocator, DmaBuf};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

// ---------------------------------------------------------------------------------------
// Helpers

fn uring_ok() -> bool {
    match io_uring_available() {
        Ok(()) => true,
        Err(why) => {
            eprintln!("skipped: io_uring is unavailable here: {why}");
            false
        }
    }
}

fn scratch_dir() -> tempfile::TempDir {
    match std::env::var_os("IRONVME_TEST_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

/// A file of `size` bytes filled with 0xEE, in a fresh directory.
fn scratch_file(size: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = scratch_dir();
    let path = dir.path().join("ns.img");
    std::fs::write(&path, vec![0xEE; size as usize]).unwrap();
    (dir, path)
}

/// Opens a uring device, or prints why the file system does not allow it and returns
/// `None` (tmpfs before Linux 6.6 refuses `O_DIRECT`).
fn uring_open(path: &Path, opts: &UringOptions) -> Option<UringDevice> {
    match UringDevice::open(path, opts) {
        Ok(d) => Some(d),
        Err(e @ KernelError::WrongDevice { .. }) if e.to_string().contains("O_DIRECT") => {
            eprintln!("skipped: {e}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// The byte at `i` of block `lba` in the pattern `seed`.
fn pattern_byte(seed: u8, lba: u64, i: usize, bs: usize) -> u8 {
    let b = lba + (i / bs) as u64;
    (b as u8).wrapping_mul(31) ^ (i as u8) ^ seed ^ ((b >> 8) as u8)
}

fn fill(buf: &mut DmaBuf, seed: u8, lba: u64, bs: usize) {
    for (i, x) in buf.as_mut_slice().iter_mut().enumerate() {
        *x = pattern_byte(seed, lba, i, bs);
    }
}

fn assert_pattern(bytes: &[u8], seed: u8, lba: u64, bs: usize, what: &str) {
    if let Some(i) = (0..bytes.len()).find(|&i| bytes[i] != pattern_byte(seed, lba, i, bs)) {
        panic!(
            "{what}: byte {i} (block {}) is {:#x}, expected {:#x}",
            lba + (i / bs) as u64,
            bytes[i],
            pattern_byte(seed, lba, i, bs)
        );
    }
}

/// A buffer of `len` bytes at `offset` into a fresh allocation.
fn buf_at(dma: &KernelDma, offset: usize, len: usize) -> DmaBuf {
    let mut b = dma.allocate(offset + len).unwrap();
    b.set_window(offset, len).unwrap();
    b
}

fn write<Q: BlockQueue>(q: &mut Q, lba: u64, buf: DmaBuf) -> DmaBuf {
    run_one(q, Op::Write { lba, fua: false }, Some(buf)).unwrap().unwrap()
}

fn read<Q: BlockQueue>(q: &mut Q, dma: &KernelDma, lba: u64, blocks: u64) -> DmaBuf {
    let len = blocks as usize * q.namespace().block_size as usize;
    run_one(q, Op::Read { lba }, Some(dma.allocate(len).unwrap()))
        .unwrap()
        .unwrap()
}

/// Submits `op`, expecting a refusal; checks that the buffer came back unchanged.
fn refused<Q: BlockQueue>(q: &mut Q, op: Op, buf: Option<DmaBuf>) -> BlockError {
    let before = buf.as_ref().map(|b| (b.as_ptr(), b.len()));
    let e = q.submit(op, buf, 7).expect_err("refused");
    assert_eq!(
        e.buf.as_ref().map(|b| (b.as_ptr(), b.len())),
        before,
        "the buffer comes back as it was"
    );
    assert_eq!(q.outstanding(), 0);
    e.error
}

// ---------------------------------------------------------------------------------------
// The scenarios, generic over the backend

/// Writes and reads back every size from one block to the largest transfer, with buffers
/// at page offsets and (for 512-byte blocks) at block offsets inside a page.
fn round_trips<Q: BlockQueue>(q: &mut Q, dma: &KernelDma) {
    let ns = q.namespace().clone();
    let bs = ns.block_size as usize;
    let mut sizes = vec![bs, 2 * bs, 7 * bs, 64 * 1024, ns.max_transfer_bytes];
    sizes.retain(|&s| s % bs == 0 && s <= ns.max_transfer_bytes && (s / bs) as u64 <= ns.blocks);
    let mut offsets = vec![0, 4096, 3 * 4096];
    if bs < 4096 {
        offsets.push(bs);
    }
    let mut lba = 0u64;
    for (n, &size) in sizes.iter().enumerate() {
        for &off in &offsets {
            let blocks = (size / bs) as u64;
            if lba + blocks > ns.blocks {
                lba = 0;
            }
            let seed = (n * 7 + off / 512) as u8;
            let mut b = buf_at(dma, off, size);
            fill(&mut b, seed, lba, bs);
            write(q, lba, b);
            let mut back = buf_at(dma, off, size);
            back = run_one(q, Op::Read { lba }, Some(back)).unwrap().unwrap();
            assert_eq!((back.window_offset(), back.len()), (off, size));
            assert_pattern(
                back.as_slice(),
                seed,
                lba,
                bs,
                &format!("{size} bytes at buffer offset {off}"),
            );
            lba += blocks;
        }
    }
    // The last block of the namespace, with FUA.
    let last = ns.blocks - 1;
    let mut b = dma.allocate(bs).unwrap();
    fill(&mut b, 0x5A, last, bs);
    run_one(q, Op::Write { lba: last, fua: true }, Some(b)).unwrap();
    assert_pattern(read(q, dma, last, 1).as_slice(), 0x5A, last, bs, "last block");
}

/// Every rule of `check` refuses with its error and hands the buffer back.
fn refusals<Q: BlockQueue>(q: &mut Q, dma: &KernelDma) {
    let ns = q.namespace().clone();
    let bs = ns.block_size as usize;
    let e = refused(q, Op::Read { lba: 0 }, Some(buf_at(dma, bs / 2, bs)));
    assert!(
        matches!(e, BlockError::Misaligned { align, .. } if align == ns.buffer_alignment),
        "{e}"
    );
    let e = refused(q, Op::Read { lba: 0 }, Some(buf_at(dma, 1, bs)));
    assert!(matches!(e, BlockError::Misaligned { .. }), "{e}");
    let e = refused(
        q,
        Op::Write {
            lba: ns.blocks,
            fua: false,
        },
        Some(dma.allocate(bs).unwrap()),
    );
    assert!(matches!(e, BlockError::LbaOutOfRange { .. }), "{e}");
    let e = refused(q, Op::Read { lba: ns.blocks - 1 }, Some(dma.allocate(2 * bs).unwrap()));
    assert!(matches!(e, BlockError::LbaOutOfRange { .. }), "{e}");
    let e = refused(q, Op::Read { lba: 0 }, Some(dma.allocate(bs + 100).unwrap()));
    assert!(matches!(e, BlockError::BadLength { .. }), "{e}");
    let e = refused(
        q,
        Op::Read { lba: 0 },
        Some(dma.allocate(ns.max_transfer_bytes + bs).unwrap()),
    );
    assert!(
        matches!(e, BlockError::TransferTooLarge { max, .. } if max == ns.max_transfer_bytes),
        "{e}"
    );
    let e = refused(q, Op::Compare { lba: 0 }, Some(dma.allocate(bs).unwrap()));
    assert!(matches!(e, BlockError::Unsupported { .. }), "{e}");
    let e = refused(q, Op::Verify { lba: 0, blocks: 1 }, None);
    assert!(matches!(e, BlockError::Unsupported { .. }), "{e}");
    let e = refused(q, Op::Flush, Some(dma.allocate(bs).unwrap()));
    assert!(matches!(e, BlockError::BufferMismatch { needs: false, .. }), "{e}");
    let e = refused(
        q,
        Op::WriteZeroes {
            lba: ns.blocks,
            blocks: 1,
            deallocate: false,
        },
        None,
    );
    assert!(
        matches!(e, BlockError::LbaOutOfRange { .. } | BlockError::Unsupported { .. }),
        "{e}"
    );
}

/// Writes a pattern, zeroes and deallocates parts of it, and reads back zeros exactly
/// where the namespace promises them.
fn zeroes_and_deallocate<Q: BlockQueue>(q: &mut Q, dma: &KernelDma, base: u64) {
    let ns = q.namespace().clone();
    let bs = ns.block_size as usize;
    let mut b = dma.allocate(16 * bs).unwrap();
    fill(&mut b, 0x33, base, bs);
    write(q, base, b);
    run_one(q, Op::Flush, None).unwrap();
    let mut zeroed = [false; 16];
    if ns.write_zeroes {
        run_one(
            q,
            Op::WriteZeroes {
                lba: base + 1,
                blocks: 3,
                deallocate: false,
            },
            None,
        )
        .unwrap();
        run_one(
            q,
            Op::WriteZeroes {
                lba: base + 5,
                blocks: 2,
                deallocate: true,
            },
            None,
        )
        .unwrap();
        zeroed[1..4].fill(true);
        zeroed[5..7].fill(true);
    } else {
        eprintln!("note: write zeroes not supported here");
    }
    if ns.deallocate {
        run_one(
            q,
            Op::Deallocate {
                lba: base + 9,
                blocks: 4,
            },
            None,
        )
        .unwrap();
        if ns.deallocate_zeroes {
            zeroed[9..13].fill(true);
        }
    } else {
        eprintln!("note: deallocate not supported here");
    }
    let back = read(q, dma, base, 16);
    for (i, z) in zeroed.iter().enumerate() {
        let block = &back.as_slice()[i * bs..(i + 1) * bs];
        let lba = base + i as u64;
        if *z {
            assert!(block.iter().all(|&x| x == 0), "block {lba} should read back as zeros");
        } else if !(ns.deallocate && (9..13).contains(&i)) {
            assert_pattern(block, 0x33, lba, bs, &format!("block {lba}, untouched"));
        }
    }
}

/// Fills the queue to its depth with writes, checks `QueueFull`, reaps everything, then
/// reads it all back the same way. Every tag completes exactly once.
fn many_outstanding<Q: BlockQueue>(q: &mut Q, dma: &KernelDma) -> bool {
    let depth = q.depth();
    let bs = q.namespace().block_size as usize;
    assert!(q.namespace().blocks >= depth as u64);
    let mut bufs = dma.allocate(depth * bs).unwrap().into_chunks(bs, depth).unwrap();
    for (i, b) in bufs.iter_mut().enumerate() {
        fill(b, 0x77, i as u64, bs);
    }
    let mut out_of_order = false;
    for read_pass in [false, true] {
        for (i, b) in bufs.drain(..).enumerate() {
            let op = if read_pass {
                Op::Read { lba: i as u64 }
            } else {
                Op::Write {
                    lba: i as u64,
                    fua: false,
                }
            };
            q.submit(op, Some(b), i as u64).unwrap();
        }
        assert_eq!(q.outstanding(), depth);
        let e = q
            .submit(Op::Read { lba: 0 }, Some(dma.allocate(bs).unwrap()), 9999)
            .unwrap_err();
        assert!(matches!(e.error, BlockError::QueueFull(n) if n == depth), "{}", e.error);
        assert!(e.buf.is_some());
        q.ring().unwrap();
        let mut seen = HashSet::new();
        let mut order = Vec::with_capacity(depth);
        let mut slots: Vec<Option<DmaBuf>> = (0..depth).map(|_| None).collect();
        while q.outstanding() > 0 {
            q.wait(64, |c: Completion| {
                c.result.unwrap_or_else(|s| panic!("tag {} failed: {s}", c.tag));
                assert!(seen.insert(c.tag), "tag {} completed twice", c.tag);
                order.push(c.tag);
                slots[c.tag as usize] = c.buf;
            });
        }
        assert_eq!(seen.len(), depth);
        out_of_order |= order.windows(2).any(|w| w[0] > w[1]);
        bufs = slots.into_iter().map(|b| b.expect("every buffer comes back")).collect();
        if read_pass {
            for (i, b) in bufs.iter().enumerate() {
                assert_pattern(b.as_slice(), 0x77, i as u64, bs, "read back after the batch");
            }
        } else {
            for b in bufs.iter_mut() {
                b.as_mut_slice().fill(0);
            }
        }
    }
    out_of_order
}

/// A read past the end of a file that shrank underneath: a short read, which completes
/// with `EIO`.
fn short_read_is_eio<Q: BlockQueue>(q: &mut Q, dma: &KernelDma, path: &Path) {
    let ns = q.namespace().clone();
    let bs = ns.block_size as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len((ns.blocks - 2) * bs)
        .unwrap();
    let e = run_one(
        q,
        Op::Read { lba: ns.blocks - 3 },
        Some(dma.allocate(2 * bs as usize).unwrap()),
    )
    .unwrap_err();
    assert!(e.buf.is_some());
    assert!(e.to_string().contains("read failed"), "{e}");
    assert!(
        matches!(
            e.error,
            ironvme_nvme::block::IoError::Failed {
                status: IoStatus::Os(libc::EIO),
                ..
            }
        ),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// io_uring on regular files

#[test]
fn uring_round_trips_on_a_file() {
    if !uring_ok() {
        return;
    }
    let dma = KernelDma::new(false);
    for block_size in [None, Some(4096), Some(512)] {
        let (_dir, path) = scratch_file(8 << 20);
        let opts = UringOptions {
            block_size,
            ..Default::default()
        };
        let Some(dev) = uring_open(&path, &opts) else { return };
        let ns = dev.namespace();
        assert_eq!(ns.source, GeometrySource::File);
        assert_eq!(ns.nsid, 1);
        assert_eq!(ns.capacity_bytes(), 8 << 20);
        assert!(!ns.compare && !ns.verify && ns.volatile_write_cache);
        if let Some(bs) = block_size {
            assert_eq!(ns.block_size, bs);
        }
        let mut q = dev.create_queue(8).unwrap();
        round_trips(&mut q, &dma);
        refusals(&mut q, &dma);
        run_one(&mut q, Op::Flush, None).unwrap();
        assert!(q.stats().fixed_ios > 0 || !q.fixed_buffers_active());
    }
}

/// On a cooperative ring (Linux 5.19+) the kernel does not interrupt a spinning thread to
/// post completions: `poll` alone, never `wait`, must still bring every one back.
#[test]
fn a_cooperative_ring_completes_everything_through_poll_alone() {
    if !uring_ok() {
        return;
    }
    let (_dir, path) = scratch_file(1 << 20);
    let Some(dev) = uring_open(&path, &UringOptions::default()) else {
        return;
    };
    let mut q = dev.create_queue(32).unwrap();
    assert!(q.cooperative(), "this kernel has IORING_SETUP_COOP_TASKRUN (5.19+)");
    let sqpoll = UringOptions {
        sqpoll: true,
        ..Default::default()
    };
    if let Some(Ok(sq)) = uring_open(&path, &sqpoll).map(|d| d.create_queue(8)) {
        assert!(!sq.cooperative(), "SQPOLL rings refuse the cooperative flags");
    }
    let dma = KernelDma::new(false);
    let bs = q.namespace().block_size as usize;
    let bufs = dma.allocate(32 * bs).unwrap().into_chunks(bs, 32).unwrap();
    for (i, b) in bufs.into_iter().enumerate() {
        q.submit(Op::Read { lba: i as u64 }, Some(b), i as u64).unwrap();
    }
    q.ring().unwrap();
    let mut done = 0;
    while q.outstanding() > 0 {
        done += q.poll(32, |c| c.result.unwrap());
    }
    assert_eq!(done, 32);
}

#[test]
fn uring_zeroes_and_deallocate_on_a_file() {
    if !uring_ok() {
        return;
    }
    let dma = KernelDma::new(false);
    let (_dir, path) = scratch_file(1 << 20);
    let Some(dev) = uring_open(&path, &UringOptions::default()) else {
        return;
    };
    eprintln!("namespace: {:?}", dev.namespace());
    let mut q = dev.create_queue(4).unwrap();
    zeroes_and_deallocate(&mut q, &dma, 3);
    // The file keeps its size whatever was zeroed or punched.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
}

#[test]
fn uring_keeps_512_operations_in_flight() {
    if !uring_ok() {
        return;
    }
    let dma = KernelDma::new(false);
    let (_dir, path) = scratch_file(4 << 20);
    let opts = UringOptions {
        block_size: Some(4096),
        ..Default::default()
    };
    let Some(dev) = uring_open(&path, &opts) else { return };
    let mut q = dev.create_queue(512).unwrap();
    let out_of_order = many_outstanding(&mut q, &dma);
    eprintln!("completions out of submission order: {out_of_order}");
    let s = q.stats();
    assert_eq!(
        (s.buffer_registrations, s.fixed_ios, s.plain_ios),
        (1, 1024, 0),
        "{s:?}"
    );
}

#[test]
fn uring_registers_each_region_once() {
    if !uring_ok() {
        return;
    }
    let dma = KernelDma::new(false);
    let (_dir, path) = scratch_file(1 << 20);
    let opts = UringOptions {
        block_size: Some(4096),
        ..Default::default()
    };
    let Some(dev) = uring_open(&path, &opts) else { return };
    let mut q = dev.create_queue(16).unwrap();
    assert!(q.fixed_buffers_active(), "this kernel has sparse buffer tables (5.19+)");
    let mut regions: Vec<Vec<DmaBuf>> = (0..2)
        .map(|_| dma.allocate(8 * 4096).unwrap().into_chunks(4096, 8).unwrap())
        .collect();
    // Each region: 8 chunks × 5 rounds × (write + read).
    let mut total = 0;
    for round in 0..5u64 {
        for chunks in regions.iter_mut() {
            for (i, c) in std::mem::take(chunks).into_iter().enumerate() {
                let lba = round * 8 + i as u64;
                let c = run_one(&mut q, Op::Write { lba, fua: false }, Some(c))
                    .unwrap()
                    .unwrap();
                let c = run_one(&mut q, Op::Read { lba }, Some(c)).unwrap().unwrap();
                chunks.push(c);
                total += 2;
            }
        }
    }
    let s = q.stats();
    assert_eq!(s.buffer_registrations, 2, "{s:?}");
    assert_eq!((s.fixed_ios, s.plain_ios), (total, 0), "{s:?}");
    assert_eq!(q.registered_regions(), 2);
    // Regions let go of and used again are registered again.
    assert_eq!(q.release_idle_buffers(), 2);
    assert_eq!(q.registered_regions(), 0);
    let c = regions[0].pop().unwrap();
    run_one(&mut q, Op::Read { lba: 0 }, Some(c)).unwrap();
    assert_eq!(q.stats().buffer_registrations, 3);
}

#[test]
fn uring_falls_back_to_plain_io_when_the_table_is_full() {
    if !uring_ok() {
        return;
    }
    let dma = KernelDma::new(false);
    let (_dir, path) = scratch_file(1 << 20);
    let opts = UringOptions {
        block_size: Some(4096),
        ..Default::default()
    };
    let Some(dev) = uring_open(&path, &opts) else { return };
    let mut q = dev.create_queue(4).unwrap();
    let n = FIXED_BUFFER_SLOTS + 3;
    for i in 0..n as u64 {
        let mut b = dma.allocate(4096).unwrap();
        fill(&mut b, 9, i, 4096);
        write(&mut q, i, b);
    }
    for i in 0..n as u64 {
        assert_pattern(
            read(&mut q, &dma, i, 1).as_slice(),
            9,
            i,
            4096,
            "after the table filled up",
        );
    }
    let s = q.stats();
    assert_eq!(s.buffer_registrations, FIXED_BUFFER_SLOTS as u64, "{s:?}");
    // The 3 extra write buffers, and every read buffer (each its own region, allocated
    // after the table filled up), go plain.
    assert_eq!(s.table_full_ios, 3 + n as u64, "{s:?}");
    assert_eq!(s.plain_ios, s.table_full_ios, "{s:?}");
    assert_eq!(s.fixed_ios, FIXED_BUFFER_SLOTS as u64, "{s:?}");
}

#[test]
fn uring_without_fixed_buffers_or_files_uses_plain_io() {
    if !uring_ok() {
        return;
    }
    let dma = KernelDma::new(false);
    let (_dir, path) = scratch_file(1 << 20);
    let opts = UringOptions {
        fixed_buffers: false,
        fixed_files: false,
        ..Default::default()
    };
    let Some(dev) = uring_open(&path, &opts) else { return };
    let mut q = dev.create_queue(4).unwrap();
    assert!(!q.fixed_buffers_active());
    round_trips(&mut q, &dma);
    zeroes_and_deallocate(&mut q, &dma, 0);
    let s = q.stats();
    assert_eq!((s.buffer_registrations, s.fixed_ios), (0, 0), "{s:?}");
    assert!(s.plain_ios > 0);
}

#[test]
fn uring_with_sqpoll() {
    if !uring_ok() {
        return;
    }
    let dma = KernelDma::new(false);
    let (_dir, path) = scratch_file(2 << 20);
    let opts = UringOptions {
        sqpoll: true,
        block_size: Some(4096),
        ..Default::default()
    };
    let Some(dev) = uring_open(&path, &opts) else { return };
    let mut q = match dev.create_queue(64) {
        Ok(q) => q,
        Err(e) => return eprintln!("skipped: {e}"),
    };
    round_trips(&mut q, &dma);
    many_outstanding(&mut q, &dma);
    zeroes_and_deallocate(&mut q, &dma, 100);
}

#[test]
fn uring_queues_on_several_threads() {
    if !uring_ok() {
        return;
    }
    let (_dir, path) = scratch_file(4 << 20);
    let opts = UringOptions {
        block_size: Some(4096),
        ..Default::default()
    };
    let Some(dev) = uring_open(&path, &opts) else { return };
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let q = dev.create_queue(32).unwrap();
            // A queue is created here and moves to its thread.
            s.spawn(move || {
                let mut q = q;
                let dma = KernelDma::new(false);
                let base = t * 256;
                let mut bufs = dma.allocate(32 * 4096).unwrap().into_chunks(4096, 32).unwrap();
                for round in 0..8u64 {
                    for (i, mut b) in bufs.drain(..).enumerate() {
                        let lba = base + round * 32 + i as u64;
                        fill(&mut b, t as u8, lba, 4096);
                        q.submit(Op::Write { lba, fua: false }, Some(b), lba).unwrap();
                    }
                    q.ring().unwrap();
                    while q.outstanding() > 0 {
                        q.wait(32, |c| {
                            c.result.unwrap();
                            bufs.push(c.buf.unwrap());
                        });
                    }
                }
                let mut b = bufs.pop().unwrap();
                for lba in base..base + 256 {
                    b = run_one(&mut q, Op::Read { lba }, Some(b)).unwrap().unwrap();
                    assert_pattern(b.as_slice(), t as u8, lba, 4096, "thread's own range");
                }
                let s = q.stats();
                assert_eq!((s.buffer_registrations, s.fixed_ios, s.plain_ios), (1, 512, 0), "{s:?}");
            });
        }
    });
}

/// A queue's ring defers completion work to the thread that created it (Linux 6.1+, as
/// fio's io_uring engines set up theirs), and the kernel lets no other thread enter it.
/// A queue that moves to another thread with nothing in flight keeps working there (its
/// ring is replaced by a cooperative one), and after moving back.
#[test]
fn a_queue_used_on_one_thread_then_another_keeps_working() {
    if !uring_ok() {
        return;
    }
    let (_dir, path) = scratch_file(1 << 20);
    let opts = UringOptions {
        block_size: Some(4096),
        ..Default::default()
    };
    let Some(dev) = uring_open(&path, &opts) else { return };
    let dma = KernelDma::new(false);
    let mut q = dev.create_queue(8).unwrap();
    assert!(q.deferred(), "this kernel has IORING_SETUP_DEFER_TASKRUN (6.1+)");
    let mut b = dma.allocate(4096).unwrap();
    fill(&mut b, 7, 0, 4096);
    let b = write(&mut q, 0, b);
    let before = q.stats();
    assert_eq!((before.buffer_registrations, before.fixed_ios), (1, 1), "{before:?}");
    let (mut q, b) = std::thread::spawn(move || {
        let mut b = b;
        fill(&mut b, 7, 1, 4096);
        let b = write(&mut q, 1, b);
        assert!(!q.deferred(), "moved: the ring was replaced");
        assert!(q.cooperative());
        // The counters carry over; the new ring registered the region again.
        let after = q.stats();
        assert_eq!((after.buffer_registrations, after.fixed_ios), (2, 2), "{after:?}");
        let back = read(&mut q, &KernelDma::new(false), 0, 2);
        for lba in 0..2 {
            assert_pattern(
                &back.as_slice()[lba * 4096..][..4096],
                7,
                lba as u64,
                4096,
                "on the second thread",
            );
        }
        (q, b)
    })
    .join()
    .unwrap();
    let mut b = b;
    fill(&mut b, 7, 2, 4096);
    write(&mut q, 2, b);
    let back = read(&mut q, &dma, 0, 3);
    for lba in 0..3 {
        assert_pattern(
            &back.as_slice()[lba * 4096..][..4096],
            7,
            lba as u64,
            4096,
            "back on the first thread",
        );
    }
}

#[test]
fn uring_dropping_a_busy_queue_waits_for_its_operations() {
    if !uring_ok() {
        return;
    }
    let dma = KernelDma::new(false);
    let (_dir, path) = scratch_file(4 << 20);
    let opts = UringOptions {
        block_size: Some(4096),
        ..Default::default()
    };
    let Some(dev) = uring_open(&path, &opts) else { return };
    let mut q = dev.create_queue(64).unwrap();
    for (i, mut b) in dma
        .allocate(64 * 4096)
        .unwrap()
        .into_chunks(4096, 64)
        .unwrap()
        .into_iter()
        .enumerate()
    {
        fill(&mut b, 0x42, i as u64, 4096);
        q.submit(
            Op::Write {
                lba: i as u64,
                fua: false,
            },
            Some(b),
            i as u64,
        )
        .unwrap();
    }
    // Submitted, never rung: the drop hands them to the kernel and waits for them.
    drop(q);
    let mut q = dev.create_queue(4).unwrap();
    let back = read(&mut q, &dma, 0, 64);
    for i in 0..64 {
        assert_pattern(
            &back.as_slice()[i * 4096..(i + 1) * 4096],
            0x42,
            i as u64,
            4096,
            "written before the drop",
        );
    }
}

#[test]
fn uring_short_read_is_eio() {
    if !uring_ok() {
        return;
    }
    let dma = KernelDma::new(false);
    let (_dir, path) = scratch_file(1 << 20);
    let opts = UringOptions {
        block_size: Some(4096),
        ..Default::default()
    };
    let Some(dev) = uring_open(&path, &opts) else { return };
    let mut q = dev.create_queue(4).unwrap();
    short_read_is_eio(&mut q, &dma, &path);
}

#[test]
fn uring_refuses_what_it_cannot_do_and_says_why() {
    if !uring_ok() {
        return;
    }
    let (_dir, path) = scratch_file(1 << 20);
    let Some(dev) = uring_open(&path, &UringOptions::default()) else {
        return;
    };
    let msg = |p: &Path, o: &UringOptions| UringDevice::open(p, o).expect_err("refused").to_string();
    let e = msg(
        &path,
        &UringOptions {
            iopoll: true,
            ..Default::default()
        },
    );
    assert!(
        e.contains("IOPOLL") && e.contains("regular file") && e.contains("poll_queues"),
        "{e}"
    );
    let e = msg(Path::new("/dev/null"), &UringOptions::default());
    assert!(e.contains("/dev/null") && e.contains("character device"), "{e}");
    let e = msg(path.parent().unwrap(), &UringOptions::default());
    assert!(e.contains("directory"), "{e}");
    let e = msg(&path.with_extension("missing"), &UringOptions::default());
    assert!(e.starts_with("uring: stat ") && e.contains("No such file"), "{e}");
    std::fs::write(path.with_extension("odd"), vec![0u8; 5000]).unwrap();
    let e = msg(
        &path.with_extension("odd"),
        &UringOptions {
            block_size: Some(4096),
            ..Default::default()
        },
    );
    assert!(e.contains("5000 bytes") && e.contains("4096 bytes"), "{e}");
    let e = msg(
        &path,
        &UringOptions {
            block_size: Some(3000),
            ..Default::default()
        },
    );
    assert!(e.contains("power of two"), "{e}");
    let e = dev.create_queue(0).unwrap_err().to_string();
    assert!(e.contains("queue depth 0"), "{e}");
    let e = dev.create_queue(1 << 20).unwrap_err().to_string();
    assert!(e.contains("32768"), "{e}");
}

// ---------------------------------------------------------------------------------------
// psync on regular files

#[test]
fn psync_round_trips_on_a_file() {
    let dma = KernelDma::new(false);
    for block_size in [None, Some(4096), Some(512)] {
        let (_dir, path) = scratch_file(8 << 20);
        let dev = PsyncDevice::open(&path, block_size).unwrap();
        eprintln!("psync: O_DIRECT {}", dev.direct());
        let ns = dev.namespace();
        assert_eq!((ns.source, ns.capacity_bytes()), (GeometrySource::File, 8 << 20));
        let mut q = dev.create_queue(8).unwrap();
        round_trips(&mut q, &dma);
        refusals(&mut q, &dma);
        run_one(&mut q, Op::Flush, None).unwrap();
    }
}

#[test]
fn psync_zeroes_deallocate_and_depth() {
    let dma = KernelDma::new(false);
    let (_dir, path) = scratch_file(4 << 20);
    let dev = PsyncDevice::open(&path, Some(4096)).unwrap();
    let mut q = dev.create_queue(512).unwrap();
    zeroes_and_deallocate(&mut q, &dma, 7);
    assert!(!many_outstanding(&mut q, &dma), "psync completes in submission order");
    assert!(dev.create_queue(0).is_err());
}

#[test]
fn psync_short_read_is_eio() {
    let dma = KernelDma::new(false);
    let (_dir, path) = scratch_file(1 << 20);
    let dev = PsyncDevice::open(&path, Some(4096)).unwrap();
    let mut q = dev.create_queue(4).unwrap();
    short_read_is_eio(&mut q, &dma, &path);
}

#[test]
fn psync_runs_nothing_until_rung_or_polled() {
    let dma = KernelDma::new(false);
    let (_dir, path) = scratch_file(1 << 20);
    let dev = PsyncDevice::open(&path, Some(4096)).unwrap();
    let mut q = dev.create_queue(4).unwrap();
    let mut b = dma.allocate(4096).unwrap();
    fill(&mut b, 1, 0, 4096);
    q.submit(Op::Write { lba: 0, fua: false }, Some(b), 1).unwrap();
    assert_eq!(std::fs::read(&path).unwrap()[0], 0xEE, "not written before ring");
    q.ring().unwrap();
    assert_eq!(q.outstanding(), 1, "completed, not yet polled");
    assert_eq!(std::fs::read(&path).unwrap()[0], pattern_byte(1, 0, 0, 4096));
    let mut tags = vec![];
    assert_eq!(q.poll(8, |c| tags.push((c.tag, c.result))), 1);
    assert_eq!(tags, [(1, Ok(()))]);
}

#[test]
fn psync_refuses_char_devices() {
    let e = PsyncDevice::open(Path::new("/dev/null"), None).unwrap_err().to_string();
    assert!(
        e.starts_with("psync: /dev/null") && e.contains("character device"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// Block devices: a loop device (root and losetup), and IRONVME_TEST_BLOCK_DEVICE

/// A loop device over a file, detached on drop.
struct Loop {
    dev: PathBuf,
    _dir: tempfile::TempDir,
}

impl Loop {
    fn new(size: u64, sector_size: u32) -> Option<Loop> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: loop devices need root");
            return None;
        }
        let dir = scratch_dir();
        let img = dir.path().join("loop.img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        let out = Command::new("losetup")
            .args([
                "--find",
                "--show",
                "--direct-io=on",
                "--sector-size",
                &sector_size.to_string(),
            ])
            .arg(&img)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let dev = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
                Some(Loop { dev, _dir: dir })
            }
            Ok(o) => {
                eprintln!("skipped: losetup failed: {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run losetup: {e}");
                None
            }
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("--detach").arg(&self.dev).status();
    }
}

/// Everything both backends should do on a block device they may overwrite.
fn block_device_suite(dev: &Path) {
    let dma = KernelDma::new(false);
    let sysfs_queue = |name: &str| {
        let meta = std::fs::metadata(dev).unwrap();
        let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
        let d = std::fs::canonicalize(format!("/sys/dev/block/{}:{}", libc::major(rdev), libc::minor(rdev))).unwrap();
        let d = if d.join("partition").exists() {
            d.parent().unwrap().to_path_buf()
        } else {
            d
        };
        std::fs::read_to_string(d.join("queue").join(name))
            .unwrap()
            .trim()
            .to_string()
    };
    let lbs: u32 = sysfs_queue("logical_block_size").parse().unwrap();
    let wz_hw = sysfs_queue("write_zeroes_max_bytes") != "0";
    let discard = sysfs_queue("discard_max_bytes") != "0";

    let p = PsyncDevice::open(dev, None).unwrap();
    let ns = p.namespace().clone();
    eprintln!("{}: {ns:?}", dev.display());
    assert_eq!(
        (ns.source, ns.block_size, ns.buffer_alignment),
        (GeometrySource::BlockDevice, lbs, lbs as usize)
    );
    assert_eq!(
        (ns.write_zeroes, ns.deallocate, ns.deallocate_zeroes),
        (true, discard, false)
    );
    assert!(p.direct());
    assert!(
        PsyncDevice::open(dev, Some(lbs * 2))
            .unwrap_err()
            .to_string()
            .contains("block device")
    );
    eprintln!("psync on {}", dev.display());
    let mut q = p.create_queue(32).unwrap();
    round_trips(&mut q, &dma);
    refusals(&mut q, &dma);
    zeroes_and_deallocate(&mut q, &dma, 40);
    many_outstanding(&mut q, &dma);
    drop((q, p));

    if !uring_ok() {
        return;
    }
    let u = UringDevice::open(dev, &UringOptions::default()).unwrap();
    let uns = u.namespace().clone();
    assert_eq!(
        (uns.block_size, uns.blocks, uns.max_transfer_bytes),
        (ns.block_size, ns.blocks, ns.max_transfer_bytes)
    );
    assert_eq!(
        (uns.deallocate, uns.deallocate_zeroes),
        (wz_hw, wz_hw),
        "uring deallocates through write zeroes"
    );
    eprintln!("uring on {}", dev.display());
    let mut q = u.create_queue(128).unwrap();
    round_trips(&mut q, &dma);
    refusals(&mut q, &dma);
    zeroes_and_deallocate(&mut q, &dma, 80);
    many_outstanding(&mut q, &dma);
    let s = q.stats();
    assert!(s.fixed_ios > 0 && s.buffer_registrations > 0, "{s:?}");
    drop(q);

    let iopoll = UringOptions {
        iopoll: true,
        ..Default::default()
    };
    if sysfs_queue("io_poll") == "1" {
        let u = UringDevice::open(dev, &iopoll).unwrap();
        eprintln!("uring with IOPOLL on {}: round trips", dev.display());
        let mut q = u.create_queue(64).unwrap();
        round_trips(&mut q, &dma);
        eprintln!("uring with IOPOLL: write zeroes and deallocate (auxiliary ring)");
        zeroes_and_deallocate(&mut q, &dma, 120);
        eprintln!("uring with IOPOLL: {} in flight", q.depth());
        many_outstanding(&mut q, &dma);
        let s = q.stats();
        eprintln!(
            "IOPOLL: {:?}; max transfer {} bytes",
            s,
            q.namespace().max_transfer_bytes
        );
        assert!(
            s.fixed_ios > 0 && q.namespace().max_transfer_bytes <= ns.max_transfer_bytes,
            "{s:?}"
        );
        drop(q);
        eprintln!("uring with IOPOLL and SQPOLL");
        let u = UringDevice::open(
            dev,
            &UringOptions {
                sqpoll: true,
                ..iopoll.clone()
            },
        )
        .unwrap();
        let mut q = u.create_queue(64).unwrap();
        round_trips(&mut q, &dma);
        zeroes_and_deallocate(&mut q, &dma, 160);
        many_outstanding(&mut q, &dma);
    } else {
        let e = UringDevice::open(dev, &iopoll).unwrap_err().to_string();
        assert!(e.contains("io_poll") && e.contains("poll_queues"), "{e}");
        eprintln!("IOPOLL refused as expected: {e}");
    }
}

#[test]
fn loop_device_512() {
    if let Some(l) = Loop::new(64 << 20, 512) {
        block_device_suite(&l.dev);
    }
}

#[test]
fn loop_device_4096() {
    if let Some(l) = Loop::new(64 << 20, 4096) {
        block_device_suite(&l.dev);
    }
}

/// Overwrites the device named by `IRONVME_TEST_BLOCK_DEVICE` (for the QEMU guest).
#[test]
fn named_block_device() {
    match std::env::var_os("IRONVME_TEST_BLOCK_DEVICE") {
        Some(dev) => block_device_suite(Path::new(&dev)),
        None => eprintln!("skipped: set IRONVME_TEST_BLOCK_DEVICE to a block device it may overwrite"),
    }
}
