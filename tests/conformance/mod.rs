//! The block-interface conformance suite, written once and run against every backend.
//!
//! A [`Subject`] is an opened [`Device`] and a namespace. [`run`] checks that the backend
//! keeps the contract of `ironvme_nvme::block`: data round trips across sizes and buffer
//! alignments; flush; write zeroes and deallocate where the namespace says they work
//! (and a clear refusal where it says they don't); compare and verify likewise; bad
//! requests refused before submission with the buffer returned; hundreds of outstanding
//! operations each completing exactly once; several threads with their own queues.
//!
//! Runners include `tests/common` too (for [`pattern`]). Host runners: `tests/conformance_host.rs` (io_uring and psync on files, the simulated
//! controller). Guest runner: `tests/guest_conformance.rs` (every backend on QEMU's
//! controllers).
#![allow(dead_code)] // each runner uses part of it

use super::common::pattern;
use ironvme::block::{BlockError, BlockQueue, Completion, IoError, NamespaceInfo, Op, run_one};
use ironvme::nvme::hw::DmaBuf;
use ironvme::{Device, IoQueue};
use std::collections::BTreeSet;

/// A device and namespace under test.
pub struct Subject {
    /// Shown in failure messages: backend and device.
    pub name: String,
    /// The opened device.
    pub device: Device,
    /// The namespace (first one if `None`).
    pub nsid: Option<u32>,
    /// First LBA the suite may write; it uses `REGION_BLOCKS` blocks from there.
    pub base_lba: u64,
}

/// Blocks of the namespace the suite writes to, from [`Subject::base_lba`].
pub const REGION_BLOCKS: u64 = 8192;

impl Subject {
    fn ns(&self) -> NamespaceInfo {
        self.device
            .namespace(self.nsid)
            .unwrap_or_else(|e| panic!("{}: namespace: {e}", self.name))
    }
    fn queue(&self, depth: usize) -> IoQueue {
        self.device
            .create_queue(self.nsid, depth)
            .unwrap_or_else(|e| panic!("{}: create queue: {e}", self.name))
    }
    fn buf(&self, len: usize) -> DmaBuf {
        self.device
            .dma()
            .allocate(len)
            .unwrap_or_else(|e| panic!("{}: allocate {len} bytes: {e}", self.name))
    }
    /// A buffer whose window of `len` bytes starts `offset` bytes into its first page.
    fn buf_at(&self, offset: usize, len: usize) -> DmaBuf {
        let mut b = self.buf(offset + len);
        b.set_window(offset, len).unwrap();
        b
    }
}

/// Runs every check against `s`, printing what was skipped and why.
pub fn run(s: &Subject) {
    let ns = s.ns();
    eprintln!(
        "{}: nsid {} {} x {} B, max transfer {} B, alignment {} B, wz {} dealloc {} compare {} verify {}",
        s.name,
        ns.nsid,
        ns.blocks,
        ns.block_size,
        ns.max_transfer_bytes,
        ns.buffer_alignment,
        ns.write_zeroes,
        ns.deallocate,
        ns.compare,
        ns.verify
    );
    assert!(
        ns.blocks >= s.base_lba + REGION_BLOCKS,
        "{}: namespace too small for the suite",
        s.name
    );
    round_trips_across_sizes_and_alignments(s);
    flush_succeeds(s);
    write_zeroes_and_deallocate(s);
    compare_and_verify(s);
    bad_requests_are_refused_with_the_buffer_returned(s);
    hundreds_of_outstanding_operations_complete_exactly_once(s);
    threads_with_their_own_queues(s);
}

fn write_sync(s: &Subject, q: &mut IoQueue, lba: u64, data: &[u8], offset: usize) {
    let mut b = s.buf_at(offset, data.len());
    b.as_mut_slice().copy_from_slice(data);
    run_one(q, Op::Write { lba, fua: false }, Some(b))
        .unwrap_or_else(|e| panic!("{}: write {} B at LBA {lba} (offset {offset}): {e}", s.name, data.len()));
}

fn read_sync(s: &Subject, q: &mut IoQueue, lba: u64, len: usize, offset: usize) -> Vec<u8> {
    let b = run_one(q, Op::Read { lba }, Some(s.buf_at(offset, len)))
        .unwrap_or_else(|e| panic!("{}: read {len} B at LBA {lba} (offset {offset}): {e}", s.name));
    b.expect("a read returns its buffer").as_slice().to_vec()
}

/// Writes and reads back 1 block .. the largest transfer, from buffers at every
/// allowed page offset.
pub fn round_trips_across_sizes_and_alignments(s: &Subject) {
    let ns = s.ns();
    let bs = ns.block_size as usize;
    let mut q = s.queue(8);
    let max = ns.max_transfer_bytes.min(1 << 20);
    let mut sizes: Vec<usize> = vec![bs, 2 * bs, 4096, 8192, 12288, 64 * 1024 + bs, max];
    sizes.retain(|&n| n % bs == 0 && n <= max);
    sizes.sort_unstable();
    sizes.dedup();
    let offsets: BTreeSet<usize> = [0, ns.buffer_alignment, 512, 2048, 4096 - bs.min(4096)]
        .into_iter()
        .filter(|o| o % ns.buffer_alignment == 0 && *o < 4096)
        .collect();
    let mut lba = s.base_lba;
    for &len in &sizes {
        for &offset in &offsets {
            let data = pattern(lba ^ len as u64, len);
            write_sync(s, &mut q, lba, &data, offset);
            let back = read_sync(
                s,
                &mut q,
                lba,
                len,
                (offset + ns.buffer_alignment) % 4096 / ns.buffer_alignment * ns.buffer_alignment,
            );
            assert!(
                back == data,
                "{}: {len} B at LBA {lba} (buffer offset {offset}) read back different",
                s.name
            );
            lba += (len / bs) as u64;
            if lba + (max / bs) as u64 >= s.base_lba + REGION_BLOCKS {
                lba = s.base_lba;
            }
        }
    }
}

/// Flush completes successfully.
pub fn flush_succeeds(s: &Subject) {
    let mut q = s.queue(4);
    run_one(&mut q, Op::Flush, None).unwrap_or_else(|e| panic!("{}: flush: {e}", s.name));
}

/// Write zeroes and deallocate read back zeros where supported, and are refused with
/// `Unsupported` where the namespace says they don't work.
pub fn write_zeroes_and_deallocate(s: &Subject) {
    let ns = s.ns();
    let bs = ns.block_size as usize;
    let mut q = s.queue(4);
    let lba = s.base_lba + 100;
    let ops = [
        (
            "write zeroes",
            ns.write_zeroes,
            true,
            Op::WriteZeroes {
                lba,
                blocks: 8,
                deallocate: false,
            },
        ),
        (
            "deallocate",
            ns.deallocate,
            ns.deallocate_zeroes,
            Op::Deallocate { lba, blocks: 8 },
        ),
    ];
    for (name, supported, zeroes, op) in ops {
        if !supported {
            let e = run_one(&mut q, op, None).unwrap_err();
            assert!(
                matches!(e.error, IoError::Refused(BlockError::Unsupported { .. })),
                "{}: unsupported {name} must be refused clearly, got: {e}",
                s.name
            );
            eprintln!("{}: {name} skipped: {e}", s.name);
            continue;
        }
        write_sync(s, &mut q, lba, &pattern(7, 8 * bs), 0);
        run_one(&mut q, op, None).unwrap_or_else(|e| panic!("{}: {name}: {e}", s.name));
        let back = read_sync(s, &mut q, lba, 8 * bs, 0);
        if zeroes {
            assert!(
                back.iter().all(|&b| b == 0),
                "{}: blocks after {name} read back non-zero",
                s.name
            );
        } else {
            eprintln!("{}: {name} done; the device does not promise zeros afterwards", s.name);
        }
    }
}

/// Compare and verify behave where supported and are refused clearly where not.
pub fn compare_and_verify(s: &Subject) {
    let ns = s.ns();
    let bs = ns.block_size as usize;
    let mut q = s.queue(4);
    let lba = s.base_lba + 200;
    let data = pattern(11, 4 * bs);
    write_sync(s, &mut q, lba, &data, 0);
    let mut b = s.buf(data.len());
    b.as_mut_slice().copy_from_slice(&data);
    match run_one(&mut q, Op::Compare { lba }, Some(b)) {
        Ok(b) => {
            assert!(
                ns.compare,
                "{}: compare succeeded on a namespace that says it has none",
                s.name
            );
            let mut b = b.unwrap();
            b.as_mut_slice()[bs + 3] ^= 1;
            let e = run_one(&mut q, Op::Compare { lba }, Some(b)).unwrap_err();
            let code = match e.error {
                IoError::Failed { status, .. } => status.nvme().map(|s| s.code()),
                _ => None,
            };
            assert_eq!(code, Some(0x285), "{}: a miscompare is Compare Failure: {e}", s.name);
        }
        Err(e) => {
            assert!(!ns.compare, "{}: compare failed: {e}", s.name);
            assert!(
                matches!(e.error, IoError::Refused(BlockError::Unsupported { .. })),
                "{}: {e}",
                s.name
            );
        }
    }
    match run_one(&mut q, Op::Verify { lba, blocks: 4 }, None) {
        Ok(_) => assert!(ns.verify, "{}", s.name),
        Err(e) => assert!(
            !ns.verify && matches!(e.error, IoError::Refused(BlockError::Unsupported { .. })),
            "{}: {e}",
            s.name
        ),
    }
}

/// Out-of-range, misaligned, badly sized, oversized and buffer-less requests are refused
/// before submission, each with its own error, and the buffer comes back.
pub fn bad_requests_are_refused_with_the_buffer_returned(s: &Subject) {
    let ns = s.ns();
    let bs = ns.block_size as usize;
    let mut q = s.queue(4);
    let refused = |q: &mut IoQueue, op: Op, buf: Option<DmaBuf>| -> BlockError {
        let had = buf.is_some();
        let e = q.submit(op, buf, 0).expect_err("must be refused");
        assert_eq!(e.buf.is_some(), had, "{}: the buffer must come back", s.name);
        e.error
    };
    let e = refused(&mut q, Op::Read { lba: ns.blocks - 1 }, Some(s.buf(2 * bs)));
    assert!(matches!(e, BlockError::LbaOutOfRange { .. }), "{}: {e}", s.name);
    let e = refused(
        &mut q,
        Op::Write {
            lba: u64::MAX,
            fua: false,
        },
        Some(s.buf(bs)),
    );
    assert!(matches!(e, BlockError::LbaOutOfRange { .. }), "{}: {e}", s.name);
    if bs > 4 {
        let e = refused(&mut q, Op::Read { lba: 0 }, Some(s.buf(bs / 2)));
        assert!(matches!(e, BlockError::BadLength { .. }), "{}: {e}", s.name);
    }
    let e = refused(
        &mut q,
        Op::Read { lba: 0 },
        Some(s.buf_at(ns.buffer_alignment / 2 + 1, bs)),
    );
    assert!(matches!(e, BlockError::Misaligned { .. }), "{}: {e}", s.name);
    let too_big = ns.max_transfer_bytes + bs;
    let e = refused(&mut q, Op::Read { lba: 0 }, Some(s.buf(too_big)));
    assert!(matches!(e, BlockError::TransferTooLarge { .. }), "{}: {e}", s.name);
    let e = refused(&mut q, Op::Write { lba: 0, fua: false }, None);
    assert!(matches!(e, BlockError::BufferMismatch { .. }), "{}: {e}", s.name);
    assert_eq!(q.outstanding(), 0, "{}: nothing was queued", s.name);
    // The queue still works.
    write_sync(s, &mut q, s.base_lba, &pattern(3, bs), 0);
    assert_eq!(read_sync(s, &mut q, s.base_lba, bs, 0), pattern(3, bs), "{}", s.name);
}

/// Fills a deep queue with writes, then reads, and checks each completes exactly once.
pub fn hundreds_of_outstanding_operations_complete_exactly_once(s: &Subject) {
    let ns = s.ns();
    let bs = ns.block_size as usize;
    let mut q = s.queue(512);
    let n = q.depth().min(384);
    assert!(
        n >= 128,
        "{}: queue depth {} is too shallow for the suite",
        s.name,
        q.depth()
    );
    let bufs = s.buf(n * bs).into_chunks(bs, n).unwrap();
    let lba = |i: usize| s.base_lba + 1000 + i as u64;
    for (i, mut b) in bufs.into_iter().enumerate() {
        b.as_mut_slice().copy_from_slice(&pattern(lba(i), bs));
        q.submit(
            Op::Write {
                lba: lba(i),
                fua: false,
            },
            Some(b),
            i as u64,
        )
        .unwrap_or_else(|e| panic!("{}: submit write {i}: {e}", s.name));
    }
    assert_eq!(q.outstanding(), n);
    q.ring().unwrap();
    let mut bufs = Vec::with_capacity(n);
    let mut seen = BTreeSet::new();
    while seen.len() < n {
        q.wait(n, |c: Completion| {
            assert!(c.result.is_ok(), "{}: write {} failed: {:?}", s.name, c.tag, c.result);
            assert!(seen.insert(c.tag), "{}: write {} completed twice", s.name, c.tag);
            bufs.push(c.buf.expect("buffer back"));
        });
    }
    for (i, b) in bufs.into_iter().enumerate() {
        q.submit(Op::Read { lba: lba(i) }, Some(b), i as u64).unwrap();
    }
    q.ring().unwrap();
    let mut seen = BTreeSet::new();
    while seen.len() < n {
        q.wait(n, |c: Completion| {
            assert!(c.result.is_ok(), "{}: read {} failed: {:?}", s.name, c.tag, c.result);
            assert!(seen.insert(c.tag), "{}: read {} completed twice", s.name, c.tag);
            let b = c.buf.expect("buffer back");
            assert!(
                b.as_slice() == pattern(lba(c.tag as usize), bs).as_slice(),
                "{}: block {} differs",
                s.name,
                c.tag
            );
        });
    }
    assert_eq!(q.outstanding(), 0);
}

/// Four threads, each with its own queue, write and verify their own ranges at once.
pub fn threads_with_their_own_queues(s: &Subject) {
    let ns = s.ns();
    let bs = ns.block_size as usize;
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            scope.spawn(move || {
                let mut q = s.queue(32);
                let base = s.base_lba + 2000 + t * 500;
                for i in 0..32u64 {
                    write_sync(s, &mut q, base + i * 4, &pattern(base + i, 2 * bs), 0);
                }
                for i in 0..32u64 {
                    assert_eq!(
                        read_sync(s, &mut q, base + i * 4, 2 * bs, 0),
                        pattern(base + i, 2 * bs),
                        "{} thread {t}",
                        s.name
                    );
                }
            });
        }
    });
}
