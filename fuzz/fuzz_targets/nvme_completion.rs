//! The I/O completion path against a misbehaving controller: ironvme's real
//! `IoQueuePair` on the simulated controller (`ironvme_nvme::sim`), with fuzzer-chosen
//! device behaviour — completion queue entries written straight into the CQ ring (any CID,
//! SQID, SQ head, status and phase tag, in any slot), commands that hang, vanish, complete
//! late or fail with any status, a fatal controller status, registers reading all ones —
//! interleaved with submissions, polls and waits.
//!
//! Invariants checked on every input:
//! - the driver never panics;
//! - a tag is completed at most once, and only a tag that was accepted by `submit`;
//! - a completion hands back the very buffer that was submitted with its tag;
//! - nothing is lost: once the device stops misbehaving, every accepted command completes
//!   (through the controller, or through the driver's timeout, abort and reset path);
//! - when no forged entry was written, the controller never DMAs into freed memory, i.e.
//!   the driver never handed back a buffer the device could still write.
//!
//! A surprise removal (registers reading all ones) may end: the device can come back and
//! finish commands it still held. The driver must clear Bus Master Enable before it hands
//! back the buffers of a controller it declared gone, so a device that returns cannot
//! DMA into them (the DMA check catches it if it does). The seed
//! `corpus/nvme_completion/all-ones-then-back` is such an input: before the driver
//! cleared Bus Master Enable, it failed the DMA check.
//!
//! Input: a sequence of one-byte operations, each followed by its argument bytes (see
//! `Op` below); missing bytes read as zero.

#![no_main]

use ironvme_nvme::ctrl::{Controller, ControllerConfig, IoCompletion, IoQueuePair, Namespace};
use ironvme_nvme::hw::{DmaAllocator, DmaBuf, DmaError};
use ironvme_nvme::sim::{FaultAction, FaultRule, SimConfig, SimController, SimDma, SimNamespace};
use ironvme_nvme::{Completion, Status};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Entries of the fuzzed I/O queue pair: small, so the ring wraps and the phase flips
/// within a few commands.
const ENTRIES: u32 = 8;

/// `SimDma` that also keeps the I/O completion queue's ring alive after the driver frees
/// it and remembers where it is, so the harness can write entries into it as the device
/// would.
struct RingTap {
    inner: SimDma,
    /// Set while the queue pair is being created: the allocation of `ENTRIES × 16` bytes
    /// made then is the CQ ring.
    capturing: Mutex<bool>,
    cq: Mutex<Option<DmaBuf>>,
}

impl DmaAllocator for RingTap {
    fn allocate(&self, len: usize) -> Result<DmaBuf, DmaError> {
        let mut buf = self.inner.allocate(len)?;
        if len == ENTRIES as usize * 16 && *self.capturing.lock().unwrap() {
            *self.cq.lock().unwrap() = Some(buf.region_keeper());
        }
        Ok(buf)
    }

    fn page_size(&self) -> usize {
        self.inner.page_size()
    }

    fn domain(&self) -> u64 {
        self.inner.domain()
    }
}

impl RingTap {
    /// Writes `entry` into slot `slot` of the CQ ring, as the controller's DMA would.
    fn post(&self, slot: u32, entry: Completion) {
        let cq = self.cq.lock().unwrap();
        let Some(keeper) = cq.as_ref() else { return };
        let (base, len) = keeper.region_span();
        let at = (slot % ENTRIES) as usize * 16;
        assert!(at + 16 <= len);
        let words = [
            entry.dw0,
            entry.dw1,
            u32::from(entry.sqhd) | u32::from(entry.sqid) << 16,
            u32::from(entry.cid) | u32::from(entry.status) << 16,
        ];
        for (i, w) in words.iter().enumerate() {
            // SAFETY: the ring's region is alive (`keeper` holds it) and `at + 16 <= len`.
            // It is device-shared memory that the driver reads only through volatile
            // loads of whole dwords, so this store is what a controller's DMA write is;
            // the phase-tag dword goes last, as a controller posts it.
            unsafe { std::ptr::write_volatile((base as *mut u32).add(at / 4 + i), *w) };
        }
    }
}

/// Reads the input a byte at a time; zero past the end.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
}

/// What the harness has seen of each tag.
#[derive(Default)]
struct Ledger {
    /// Accepted and not yet completed: tag → IOVA of its buffer (if any).
    open: HashMap<u64, Option<u64>>,
    completed: u64,
}

impl Ledger {
    fn complete(&mut self, c: IoCompletion) {
        let Some(iova) = self.open.remove(&c.tag) else {
            panic!(
                "tag {} completed twice, or never submitted (status {})",
                c.tag, c.status
            );
        };
        if let Some(buf) = &c.buf {
            assert_eq!(Some(buf.iova()), iova, "tag {} came back with another buffer", c.tag);
        }
        self.completed += 1;
    }
}

fn config() -> ControllerConfig {
    ControllerConfig {
        admin_queue_entries: 16,
        io_queue_entries: ENTRIES,
        io_queues: 2,
        admin_timeout: Duration::from_millis(20),
        io_timeout: Duration::from_millis(3),
        abort_timeout: Duration::from_millis(2),
        shutdown_timeout: Duration::from_millis(10),
        async_events: false,
        set_timestamp: false,
        ..ControllerConfig::default()
    }
}

fn submit(
    pair: &mut IoQueuePair<SimController>,
    ns: &Namespace,
    dma: &RingTap,
    ledger: &mut Ledger,
    tag: u64,
    b: &mut Bytes,
) {
    let kind = b.u8();
    let blocks = usize::from(b.u8() % 8) + 1;
    let slba = u64::from(b.u16() % 2048);
    let accepted = match kind % 3 {
        2 => pair.flush(ns, tag).is_ok().then_some(None),
        op => {
            let Ok(buf) = dma.allocate(blocks * 512) else { return };
            let iova = buf.iova();
            let r = match op {
                0 => pair.read(ns, slba, buf, tag),
                _ => pair.write(ns, slba, buf, false, tag),
            };
            r.is_ok().then_some(Some(iova))
        }
    };
    if let Some(iova) = accepted {
        ledger.open.insert(tag, iova);
    }
}

fuzz_target!(|data: &[u8]| {
    let sim = SimController::new(SimConfig {
        namespaces: vec![SimNamespace::new(512, 2048)],
        ..SimConfig::default()
    });
    let tap = Arc::new(RingTap {
        inner: sim.dma(),
        capturing: Mutex::new(false),
        cq: Mutex::new(None),
    });
    let ctrl = Controller::init(sim.clone(), Arc::clone(&tap) as Arc<dyn DmaAllocator>, config())
        .expect("the well-behaved simulator initializes");
    let ns = ctrl.namespace(1).expect("namespace 1");
    *tap.capturing.lock().unwrap() = true;
    let mut pair = ctrl.create_io_queue_pair().expect("an I/O queue pair");
    *tap.capturing.lock().unwrap() = false;
    let qid = pair.qid();

    let mut ledger = Ledger::default();
    let mut forged = false;
    let mut next_tag = 0u64;
    let mut b = Bytes(data);
    let mut ops = 0;
    while !b.0.is_empty() && ops < 256 {
        ops += 1;
        match b.u8() % 9 {
            0 => {
                next_tag += 1;
                submit(&mut pair, &ns, &tap, &mut ledger, next_tag, &mut b);
            }
            1 => {
                let max = usize::from(b.u8() % 8) + 1;
                pair.poll(max, |c| ledger.complete(c));
            }
            2 => {
                let action = match b.u8() % 4 {
                    0 => FaultAction::Hang,
                    1 => FaultAction::Lost,
                    2 => FaultAction::Delay(Duration::from_micros(u64::from(b.u8()) * 20)),
                    _ => FaultAction::Status(Status::from_raw(b.u16() >> 1)),
                };
                sim.inject(FaultRule {
                    qid: Some(qid),
                    times: Some(1),
                    ..FaultRule::new(action)
                });
            }
            3 => {
                // A completion queue entry the controller made up.
                forged = true;
                let slot = u32::from(b.u8());
                let flags = b.u8();
                let cid = if flags & 1 != 0 {
                    b.u16()
                } else {
                    u16::from(b.u8() % (ENTRIES as u8 + 2))
                };
                let sqid = if flags & 2 != 0 { b.u16() } else { qid };
                let sqhd = if flags & 4 != 0 {
                    b.u16()
                } else {
                    u16::from(b.u8()) % ENTRIES as u16
                };
                let status = (b.u16() & !1) | u16::from(flags >> 7);
                let entry = Completion {
                    dw0: u32::from(b.u8()),
                    dw1: 0,
                    sqhd,
                    sqid,
                    cid,
                    status,
                };
                tap.post(slot, entry);
            }
            4 => sim.release_held(),
            5 => {
                let on = b.u8();
                sim.set_fatal(on & 1 != 0);
                if on & 2 != 0 {
                    sim.set_removed(true);
                } else {
                    sim.set_removed(false);
                }
            }
            6 => std::thread::sleep(Duration::from_micros(u64::from(b.u8()) * 20)),
            7 => pair.ring(),
            _ => {
                // The driver's own cancellation: Abort of a (possibly) outstanding CID.
                let cid = u16::from(b.u8() % ENTRIES as u8);
                let _ = ctrl.abort(qid, cid);
            }
        }
    }

    // The device behaves again: every accepted command must come back, once.
    sim.clear_faults();
    sim.set_fatal(false);
    sim.set_removed(false);
    for _ in 0..400 {
        pair.poll(usize::MAX, |c| ledger.complete(c));
        if pair.outstanding() == 0 {
            break;
        }
        sim.release_held();
        std::thread::sleep(Duration::from_micros(500));
    }
    assert_eq!(
        pair.outstanding(),
        0,
        "commands never completed: {:?}",
        ledger.open.keys()
    );
    assert!(
        ledger.open.is_empty(),
        "the driver forgot tags {:?}",
        ledger.open.keys()
    );
    drop(pair);
    drop(ctrl);
    drop(tap);
    if !forged {
        let dma = sim.dma_violations();
        assert!(
            dma.is_empty(),
            "the device wrote memory the driver had handed back: {dma:?}"
        );
    }
});
