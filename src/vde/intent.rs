//! The intent log of format 2 (ZFS's ZIL in spirit): a circular region of blocks that
//! makes operations durable between transaction group commits, with group commit.
//!
//! Each log block: the metadata header (kind [`NodeKind::Log`], birth = the txg open when
//! it was written, its own block number, the store tag), then `u64 seq` (block *k* of the
//! store's life, never reused), `u16 nrecords`, and records of `u16 len` + bytes. A record
//! is at most [`MAX_RECORD`] bytes and never spans blocks. Records are opaque here; the
//! store encodes them (each carries its txg).
//!
//! Replay reads from the superblock's (offset, seq) and stops at the first block that
//! fails its own checksum, kind, tag, address or expected sequence number (a torn block,
//! a block of an earlier lap, of another store, or never written), and at a block whose
//! record framing does not fit its payload (treated like a torn one). Everything before is
//! returned in order.
//!
//! Space: the blocks between the release point and the write position are in use. After a
//! commit's superblock is durable, [`IntentLog::release_to`] frees everything before the
//! position [`IntentLog::position`] reported when the commit began writing its
//! superblock; until then a crash replays from the older head, whose blocks are intact.

use super::VdeError;
use super::block::{BLOCK, Block, NodeKind, PAYLOAD2, check, payload, payload_mut, seal};
use super::format::{get16, get64, put16, put64};
use super::lane::Lane;
use std::sync::{Condvar, Mutex};

/// Longest record, bytes.
pub const MAX_RECORD: usize = PAYLOAD2 - 10 - 2;

/// The device the log lives on.
pub trait LogDev: Send {
    /// Writes whole blocks from block number `block`.
    ///
    /// Errors: I/O errors.
    fn write(&mut self, block: u64, data: &[u8]) -> Result<(), VdeError>;
    /// Makes completed writes durable (NVMe Flush).
    ///
    /// Errors: I/O errors.
    fn flush(&mut self) -> Result<(), VdeError>;
    /// Reads whole blocks from block number `block`.
    ///
    /// Errors: I/O errors.
    fn read(&mut self, block: u64, out: &mut [u8]) -> Result<(), VdeError>;
}

/// A [`LogDev`] over a lane of the store's device.
pub struct LaneLog(Lane);

impl LaneLog {
    /// The log device on `lane`.
    pub fn new(lane: Lane) -> LaneLog {
        LaneLog(lane)
    }
}

impl LogDev for LaneLog {
    fn write(&mut self, block: u64, data: &[u8]) -> Result<(), VdeError> {
        self.0.write(block, data)
    }
    fn flush(&mut self) -> Result<(), VdeError> {
        self.0.flush()
    }
    fn read(&mut self, block: u64, out: &mut [u8]) -> Result<(), VdeError> {
        self.0.read(block, out)
    }
}

/// Counters since the log was made.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct LogStats {
    /// Flushes issued.
    pub flushes: u64,
    /// Records made durable.
    pub records: u64,
    /// Blocks written.
    pub blocks: u64,
    /// Appends (callers) made durable.
    pub appends: u64,
}

/// How records pack into log blocks: a block's payload holds a 10-byte header, then
/// records of a 2-byte length and their bytes; a record that does not fit starts a block.
#[derive(Clone, Copy, Default)]
struct Packing {
    /// Blocks started.
    blocks: u64,
    /// Payload bytes used in the last block.
    used: usize,
}

impl Packing {
    /// Adds a record of `len` bytes; true when it starts a new block.
    fn add(&mut self, len: usize) -> bool {
        let new = self.blocks == 0 || self.used + 2 + len > PAYLOAD2;
        if new {
            self.blocks += 1;
            self.used = 10;
        }
        self.used += 2 + len;
        new
    }
}

struct Inner {
    /// Records waiting for a leader, with the ticket of the append they belong to.
    pending: Vec<(u64, Vec<u8>)>,
    /// How the pending records pack into blocks.
    pending_packing: Packing,
    /// Highest txg among pending records (goes in the blocks' headers).
    pending_txg: u64,
    /// The next ticket to hand out.
    next_ticket: u64,
    /// Every ticket below this is durable.
    durable: u64,
    /// A leader is writing.
    busy: bool,
    /// Blocks the leader is writing, not yet counted in `seq`.
    inflight: u64,
    /// Offset in the region of the next block to write, and its sequence number.
    head: u64,
    seq: u64,
    /// Offset of the oldest block still needed and its sequence number.
    tail_seq: u64,
    poisoned: Option<String>,
    stats: LogStats,
}

/// The intent log; shared by threads.
pub struct IntentLog {
    dev: Mutex<Box<dyn LogDev>>,
    inner: Mutex<Inner>,
    done: Condvar,
    start: u64,
    blocks: u64,
    tag: u64,
}

fn encode_block(records: &[&[u8]], seq: u64, txg: u64, addr: u64, tag: u64) -> Box<Block> {
    let mut b = Box::new([0u8; BLOCK]);
    let p = payload_mut(&mut b);
    put64(p, 0, seq);
    put16(p, 8, records.len() as u16);
    let mut at = 10;
    for r in records {
        put16(p, at, r.len() as u16);
        p[at + 2..at + 2 + r.len()].copy_from_slice(r);
        at += 2 + r.len();
    }
    seal(&mut b, NodeKind::Log, 0, txg, addr, tag);
    b
}

/// The records of a verified log block, or `None` if its framing does not fit.
fn decode_block(b: &Block) -> Option<Vec<&[u8]>> {
    let p = payload(b);
    let n = get16(p, 8) as usize;
    let mut at = 10;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        if at + 2 > p.len() {
            return None;
        }
        let len = get16(p, at) as usize;
        if len == 0 || at + 2 + len > p.len() {
            return None;
        }
        out.push(&p[at + 2..at + 2 + len]);
        at += 2 + len;
    }
    Some(out)
}

impl IntentLog {
    /// A log in region `[start, start + blocks)` whose next block is offset `head` with
    /// sequence number `seq` (where replay ended).
    pub fn new(dev: Box<dyn LogDev>, start: u64, blocks: u64, tag: u64, head: u64, seq: u64) -> IntentLog {
        IntentLog {
            dev: Mutex::new(dev),
            inner: Mutex::new(Inner {
                pending: Vec::new(),
                pending_packing: Packing::default(),
                pending_txg: 0,
                next_ticket: 1,
                durable: 1,
                busy: false,
                inflight: 0,
                head,
                seq,
                tail_seq: seq,
                poisoned: None,
                stats: LogStats::default(),
            }),
            done: Condvar::new(),
            start,
            blocks,
            tag,
        }
    }

    /// Reads the records after (`head`, `seq`) in order, calling `f` for each, until the
    /// first block that is not the expected one; returns the (offset, seq) after the last
    /// valid block. Never writes.
    ///
    /// Errors: I/O errors, and `f`'s.
    pub fn replay(
        dev: &mut dyn LogDev,
        start: u64,
        blocks: u64,
        tag: u64,
        head: u64,
        seq: u64,
        f: &mut dyn FnMut(&[u8]) -> Result<(), VdeError>,
    ) -> Result<(u64, u64), VdeError> {
        let (mut at, mut seq) = (head % blocks.max(1), seq);
        let mut b = Box::new([0u8; BLOCK]);
        for _ in 0..blocks {
            dev.read(start + at, &mut b[..])?;
            if check(&b, start + at, NodeKind::Log, None, tag).is_err() || get64(payload(&b), 0) != seq {
                break;
            }
            let Some(records) = decode_block(&b) else { break };
            for r in records {
                f(r)?;
            }
            at = (at + 1) % blocks;
            seq += 1;
        }
        Ok((at, seq))
    }

    /// Appends `records` (each 1..=[`MAX_RECORD`] bytes) for txg `txg` and returns once
    /// they are durable: written, and a Flush completed after. Concurrent callers share
    /// one leader's write and Flush.
    ///
    /// No records is a no-op.
    ///
    /// Errors: [`VdeError::NoSpace`] `{ what: "intent log" }` when the log has no room
    /// (commit a txg and retry; nothing was written); the I/O error of the batch that held
    /// the records; [`VdeError::Poisoned`] after an earlier failure, or after a leader
    /// panicked while writing.
    pub fn append(&self, txg: u64, records: &[&[u8]]) -> Result<(), VdeError> {
        if let Some(r) = records.iter().find(|r| r.is_empty() || r.len() > MAX_RECORD) {
            return Err(VdeError::Unsupported(format!(
                "an intent log record is 1 to {MAX_RECORD} bytes, not {}",
                r.len()
            )));
        }
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = &g.poisoned {
            return Err(VdeError::Poisoned(p.clone()));
        }
        // A ticket without records would never be in a batch, and never durable.
        if records.is_empty() {
            return Ok(());
        }
        // Room: the blocks of the batch a leader is writing (not in `seq` yet), of what
        // is pending, and of these records, packed as the leader will pack them.
        let mut packing = g.pending_packing;
        for r in records {
            packing.add(r.len());
        }
        // One block stays spare, as it always has.
        if self.used_locked(&g) + g.inflight + packing.blocks + 1 > self.blocks {
            return Err(VdeError::NoSpace { what: "intent log" });
        }
        let ticket = g.next_ticket;
        g.next_ticket += 1;
        for r in records {
            g.pending.push((ticket, r.to_vec()));
        }
        g.pending_packing = packing;
        g.pending_txg = g.pending_txg.max(txg);
        loop {
            if let Some(p) = &g.poisoned {
                return Err(VdeError::Poisoned(p.clone()));
            }
            if g.durable > ticket {
                return Ok(());
            }
            if !g.busy {
                g = self.lead(g);
                continue;
            }
            g = self.done.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Writes every pending record and flushes, as the leader.
    fn lead<'a>(&'a self, mut g: std::sync::MutexGuard<'a, Inner>) -> std::sync::MutexGuard<'a, Inner> {
        g.busy = true;
        let batch = std::mem::take(&mut g.pending);
        let txg = std::mem::take(&mut g.pending_txg);
        let last_ticket = batch.last().map_or(0, |b| b.0);
        let (head, seq) = (g.head, g.seq);
        g.inflight = std::mem::take(&mut g.pending_packing).blocks;
        drop(g);
        // If this thread panics below, the followers waiting for it must not wait forever.
        let unwinding = LeaderGuard(self);
        // Pack records into blocks.
        let mut blocks: Vec<Box<Block>> = Vec::new();
        let mut cur: Vec<&[u8]> = Vec::new();
        let mut packing = Packing::default();
        for (_, r) in &batch {
            if packing.add(r.len()) && !cur.is_empty() {
                let n = blocks.len() as u64;
                blocks.push(encode_block(
                    &cur,
                    seq + n,
                    txg,
                    self.start + (head + n) % self.blocks,
                    self.tag,
                ));
                cur.clear();
            }
            cur.push(r);
        }
        if !cur.is_empty() {
            let n = blocks.len() as u64;
            blocks.push(encode_block(
                &cur,
                seq + n,
                txg,
                self.start + (head + n) % self.blocks,
                self.tag,
            ));
        }
        let n = blocks.len() as u64;
        let result = (|| {
            let mut dev = self.dev.lock().unwrap_or_else(|e| e.into_inner());
            // One write per contiguous run: two when the batch wraps.
            let mut i = 0usize;
            while i < blocks.len() {
                let at = (head + i as u64) % self.blocks;
                let run = ((self.blocks - at) as usize).min(blocks.len() - i);
                let mut buf = Vec::with_capacity(run * BLOCK);
                for b in &blocks[i..i + run] {
                    buf.extend_from_slice(&b[..]);
                }
                dev.write(self.start + at, &buf)?;
                i += run;
            }
            dev.flush()
        })();
        std::mem::forget(unwinding);
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.busy = false;
        g.inflight = 0;
        match result {
            Ok(()) => {
                g.head = (head + n) % self.blocks;
                g.seq = seq + n;
                g.durable = g.durable.max(last_ticket + 1);
                g.stats.flushes += 1;
                g.stats.blocks += n;
                g.stats.records += batch.len() as u64;
                g.stats.appends += batch
                    .iter()
                    .map(|b| b.0)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len() as u64;
            }
            Err(e) => {
                g.poisoned = Some(format!("intent log write failed: {e}"));
            }
        }
        self.done.notify_all();
        g
    }

    fn used_locked(&self, g: &Inner) -> u64 {
        g.seq - g.tail_seq
    }

    /// The position after every block written so far: (offset, seq). A commit records it
    /// in its superblock as the replay start.
    pub fn position(&self) -> (u64, u64) {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (g.head, g.seq)
    }

    /// The superblock that starts replay at sequence `seq` is durable: the blocks before
    /// it may be written again.
    pub fn release_to(&self, seq: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.tail_seq = g.tail_seq.max(seq.min(g.seq));
    }

    /// Blocks in use between the release point and the write position.
    pub fn used(&self) -> u64 {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.used_locked(&g)
    }

    /// Counters since the log was made.
    pub fn stats(&self) -> LogStats {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).stats
    }
}

/// Armed while a leader writes: dropped only if the leader unwinds (a panic), it poisons
/// the log and wakes the followers, who would otherwise wait for a leader that is gone.
struct LeaderGuard<'a>(&'a IntentLog);

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        let mut g = self.0.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.busy = false;
        g.poisoned = Some("an intent log writer panicked; whether its records are durable is unknown".into());
        self.0.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Blocks in memory: `durable` is what a power cut keeps (the state at the last
    /// flush); `fail_write` fails the n-th write.
    #[derive(Clone, Default)]
    struct Mem {
        now: Arc<Mutex<Vec<Vec<u8>>>>,
        durable: Arc<Mutex<Vec<Vec<u8>>>>,
        flushes: Arc<Mutex<u64>>,
        fail_write: Arc<Mutex<Option<u32>>>,
    }

    impl Mem {
        fn new(blocks: usize) -> Mem {
            let m = Mem::default();
            *m.now.lock().unwrap() = vec![vec![0; BLOCK]; blocks];
            *m.durable.lock().unwrap() = vec![vec![0; BLOCK]; blocks];
            m
        }
    }

    impl LogDev for Mem {
        fn write(&mut self, block: u64, data: &[u8]) -> Result<(), VdeError> {
            if let Some(n) = self.fail_write.lock().unwrap().as_mut() {
                if *n == 0 {
                    return Err(VdeError::Unsupported("injected write failure".into()));
                }
                *n -= 1;
            }
            let mut now = self.now.lock().unwrap();
            for (i, c) in data.chunks(BLOCK).enumerate() {
                now[block as usize + i] = c.to_vec();
            }
            Ok(())
        }
        fn flush(&mut self) -> Result<(), VdeError> {
            *self.durable.lock().unwrap() = self.now.lock().unwrap().clone();
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
        fn read(&mut self, block: u64, out: &mut [u8]) -> Result<(), VdeError> {
            let now = self.now.lock().unwrap();
            for (i, c) in out.chunks_mut(BLOCK).enumerate() {
                c.copy_from_slice(&now[block as usize + i]);
            }
            Ok(())
        }
    }

    const TAG: u64 = 77;
    const START: u64 = 2;

    fn replay_all(m: &Mem, blocks: u64, head: u64, seq: u64) -> (Vec<Vec<u8>>, (u64, u64)) {
        let mut out = Vec::new();
        let mut dev = m.clone();
        let end = IntentLog::replay(&mut dev, START, blocks, TAG, head, seq, &mut |r| {
            out.push(r.to_vec());
            Ok(())
        })
        .unwrap();
        (out, end)
    }

    #[test]
    fn appended_records_replay_in_order_across_laps_and_stale_blocks_end_the_log() {
        let blocks = 8;
        let m = Mem::new((START + blocks) as usize);
        let log = IntentLog::new(Box::new(m.clone()), START, blocks, TAG, 0, 1);
        let mut all = Vec::new();
        let mut start = log.position();
        for i in 0..40u32 {
            let r = vec![i as u8; 100 + (i as usize * 97) % 3000];
            log.append(1, &[&r]).unwrap();
            all.push(r);
            if i % 5 == 4 {
                // A commit: replay would start here from now on.
                let (out, _) = replay_all(&m, blocks, start.0, start.1);
                assert_eq!(out, all, "after record {i}");
                start = log.position();
                log.release_to(start.1);
                all.clear();
            }
        }
        // The region wrapped several times; the blocks after the write position are from
        // older laps (lower sequence numbers) and end the replay.
        assert!(log.stats().blocks > 3 * blocks);
        let (out, end) = replay_all(&m, blocks, start.0, start.1);
        assert!(out.is_empty());
        assert_eq!(end, start);
    }

    #[test]
    fn a_full_log_refuses_and_a_torn_block_ends_replay() {
        let blocks = 4;
        let m = Mem::new((START + blocks) as usize);
        let log = IntentLog::new(Box::new(m.clone()), START, blocks, TAG, 0, 1);
        let big = vec![7u8; MAX_RECORD];
        log.append(1, &[&big]).unwrap();
        log.append(1, &[&big]).unwrap();
        log.append(1, &[&big]).unwrap();
        assert!(matches!(log.append(1, &[&big]), Err(VdeError::NoSpace { .. })));
        let (out, _) = replay_all(&m, blocks, 0, 1);
        assert_eq!(out.len(), 3);
        // Tear the second block at 512 B: replay keeps the first only.
        m.now.lock().unwrap()[(START + 1) as usize][512..1024].fill(0xee);
        let (out, end) = replay_all(&m, blocks, 0, 1);
        assert_eq!((out.len(), end), (1, (1, 2)));
        // Hostile framing inside a block with a valid checksum ends the log too.
        let mut b = encode_block(&[b"abc"], 1, 1, START, TAG);
        put16(payload_mut(&mut b), 10, 4050);
        seal(&mut b, NodeKind::Log, 0, 1, START, TAG);
        m.now.lock().unwrap()[START as usize] = b.to_vec();
        let (out, end) = replay_all(&m, blocks, 0, 1);
        assert_eq!((out.len(), end), (0, (0, 1)));
    }

    #[test]
    fn concurrent_appends_share_flushes_and_every_acknowledged_record_survives_a_power_cut() {
        let blocks = 4096;
        let m = Mem::new((START + blocks) as usize);
        let log = Arc::new(IntentLog::new(Box::new(m.clone()), START, blocks, TAG, 0, 1));
        let acked: Vec<Vec<Vec<u8>>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8u8)
                .map(|t| {
                    let log = Arc::clone(&log);
                    s.spawn(move || {
                        let mut mine = Vec::new();
                        for i in 0..200u32 {
                            let r = [&[t][..], &i.to_le_bytes()[..], &[0x5a; 40][..]].concat();
                            log.append(1, &[&r]).unwrap();
                            mine.push(r);
                        }
                        mine
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let st = log.stats();
        assert_eq!(st.records, 1600);
        assert!(st.flushes < 1600, "{} flushes for 1600 appends", st.flushes);
        eprintln!("group commit: {} flushes for 1600 appends from 8 threads", st.flushes);
        // A power cut keeps what was flushed: every acknowledged record, per thread in order.
        *m.now.lock().unwrap() = m.durable.lock().unwrap().clone();
        let (out, _) = replay_all(&m, blocks, 0, 1);
        for (t, mine) in acked.iter().enumerate() {
            let got: Vec<&Vec<u8>> = out.iter().filter(|r| r[0] == t as u8).collect();
            assert_eq!(got.len(), mine.len());
            assert!(got.iter().zip(mine).all(|(a, b)| *a == b));
        }
    }

    /// A [`Mem`] whose writes wait for the test: each write reports that it started, then
    /// goes on when released with `false`, or panics when released with `true`.
    struct Gated {
        mem: Mem,
        started: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<bool>,
    }

    impl LogDev for Gated {
        fn write(&mut self, block: u64, data: &[u8]) -> Result<(), VdeError> {
            self.started.send(()).unwrap();
            if self.release.recv().unwrap() {
                panic!("injected panic in a log write");
            }
            self.mem.write(block, data)
        }
        fn flush(&mut self) -> Result<(), VdeError> {
            self.mem.flush()
        }
        fn read(&mut self, block: u64, out: &mut [u8]) -> Result<(), VdeError> {
            self.mem.read(block, out)
        }
    }

    fn gated(
        m: &Mem,
        blocks: u64,
    ) -> (
        Arc<IntentLog>,
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<bool>,
    ) {
        let (started_tx, started) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let dev = Gated {
            mem: m.clone(),
            started: started_tx,
            release: release_rx,
        };
        (
            Arc::new(IntentLog::new(Box::new(dev), START, blocks, TAG, 0, 1)),
            started,
            release,
        )
    }

    #[test]
    fn the_room_check_counts_the_batch_being_written() {
        // 4 blocks: a leader writes 2 records; meanwhile 3 more ask for room. Counting only
        // what is pending (none), they fit; counting the 2 in flight, they do not. Had
        // they been written, the third would have wrapped onto block 0, still needed by
        // replay: the first two acknowledged records would be lost.
        let blocks = 4;
        let m = Mem::new((START + blocks) as usize);
        let (log, started, release) = gated(&m, blocks);
        let big = vec![7u8; MAX_RECORD];
        let (l, b) = (Arc::clone(&log), big.clone());
        let leader = std::thread::spawn(move || l.append(1, &[&b, &b]));
        started.recv().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (l, b) = (Arc::clone(&log), big.clone());
        std::thread::spawn(move || tx.send(l.append(1, &[&b, &b, &b])));
        // Until the second append was refused, or queued behind the leader.
        let refused = loop {
            if let Ok(r) = rx.try_recv() {
                break Some(r);
            }
            if log.inner.lock().unwrap().pending.len() == 3 {
                break None;
            }
            std::thread::yield_now();
        };
        release.send(false).unwrap();
        leader.join().unwrap().unwrap();
        let r = refused.unwrap_or_else(|| {
            // Queued: it leads next, and its writes (two: it wraps) wait for releases too.
            release.send(false).unwrap();
            release.send(false).unwrap();
            rx.recv().unwrap()
        });
        assert!(matches!(r, Err(VdeError::NoSpace { .. })), "{r:?}");
        let (out, _) = replay_all(&m, blocks, 0, 1);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn small_records_are_counted_by_the_blocks_they_pack_into() {
        // 200 records of 16 bytes pack into one block (18 bytes each with their length);
        // counted a block each, a 4-block log refused them, and group commit of many
        // small volume-write records ran the log "full" at a few percent of its room.
        let blocks = 4;
        let m = Mem::new((START + blocks) as usize);
        let log = IntentLog::new(Box::new(m.clone()), START, blocks, TAG, 0, 1);
        let rec = [5u8; 16];
        let records: Vec<&[u8]> = (0..200).map(|_| &rec[..]).collect();
        log.append(1, &records).unwrap();
        assert_eq!(log.stats().blocks, 1);
        let (out, _) = replay_all(&m, blocks, 0, 1);
        assert_eq!(out.len(), 200);
    }

    #[test]
    fn an_append_of_no_records_returns_at_once() {
        let m = Mem::new(20);
        let log = Arc::new(IntentLog::new(Box::new(m.clone()), START, 16, TAG, 0, 1));
        log.append(1, &[b"one"]).unwrap();
        // Not a scoped thread: one that never returns must fail the test, not hang it.
        let (tx, rx) = std::sync::mpsc::channel();
        let l = Arc::clone(&log);
        std::thread::spawn(move || tx.send(l.append(1, &[])));
        let r = rx.recv_timeout(std::time::Duration::from_secs(30));
        assert!(matches!(r, Ok(Ok(()))), "an empty append did not return: {r:?}");
        assert_eq!(log.stats().flushes, 1);
    }

    #[test]
    fn a_leader_that_panics_poisons_the_log_instead_of_stranding_its_followers() {
        let m = Mem::new(20);
        let (log, started, release) = gated(&m, 16);
        let l = Arc::clone(&log);
        let leader = std::thread::spawn(move || l.append(1, &[b"one"]));
        started.recv().unwrap();
        // The leader is writing: this append waits for it. Not a scoped thread: one that
        // never returns must fail the test, not hang it.
        let (tx, rx) = std::sync::mpsc::channel();
        let l = Arc::clone(&log);
        std::thread::spawn(move || tx.send(l.append(1, &[b"two"])));
        release.send(true).unwrap();
        assert!(leader.join().is_err(), "the leader panicked");
        let r = rx.recv_timeout(std::time::Duration::from_secs(30));
        assert!(matches!(r, Ok(Err(VdeError::Poisoned(_)))), "the follower got {r:?}");
    }

    #[test]
    fn a_failed_write_poisons_the_log() {
        let m = Mem::new(20);
        *m.fail_write.lock().unwrap() = Some(1);
        let log = IntentLog::new(Box::new(m.clone()), START, 16, TAG, 0, 1);
        log.append(1, &[b"one"]).unwrap();
        assert!(log.append(1, &[b"two"]).is_err());
        *m.fail_write.lock().unwrap() = None;
        assert!(matches!(log.append(1, &[b"three"]), Err(VdeError::Poisoned(_))));
    }
}
