//! A tiny test-only host: enables the simulated controller through its registers and runs
//! admin and I/O commands synchronously with the crate's own queue types. (The real driver
//! lives in `ctrl/`; these tests do not depend on it.)

use super::{SimConfig, SimController, SimDma};
use crate::cmd::Command;
use crate::completion::Completion;
use crate::hw::{DmaAllocator, DmaBuf, Registers};
use crate::prp::{build_prps, list_pages_for_transfer};
use crate::queue::{CompletionQueue, SubmissionQueue};
use crate::regs::{Aqa, Cap, Cc, Csts, offset};
use std::time::{Duration, Instant};

/// Admin queue size in entries.
const ADMIN_ENTRIES: u32 = 16;

pub(super) struct Harness {
    pub(super) sim: SimController,
    pub(super) dma: SimDma,
    pub(super) cap: Cap,
    pub(super) asq: SubmissionQueue,
    pub(super) acq: CompletionQueue,
    next_cid: u16,
}

/// An I/O queue pair created through the harness.
pub(super) struct IoPair {
    pub(super) qid: u16,
    pub(super) sq: SubmissionQueue,
    pub(super) cq: CompletionQueue,
    cap: Cap,
    dma: SimDma,
    next_cid: u16,
}

fn wait_ready(sim: &SimController, ready: bool) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Csts(sim.read32(offset::CSTS)).rdy() != ready {
        assert!(Instant::now() < deadline, "CSTS.RDY did not become {ready}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Harness {
    /// A default controller, enabled.
    pub(super) fn new() -> Harness {
        Harness::with(SimConfig::default())
    }

    /// A controller with `cfg`, enabled.
    pub(super) fn with(cfg: SimConfig) -> Harness {
        let mut h = Harness::attach(SimController::new(cfg));
        h.enable();
        h
    }

    /// Admin queue memory for `sim`, without touching any register.
    pub(super) fn attach(sim: SimController) -> Harness {
        let dma = sim.dma();
        let asq = SubmissionQueue::new(dma.allocate(4096).unwrap(), ADMIN_ENTRIES).unwrap();
        let acq = CompletionQueue::new(dma.allocate(4096).unwrap(), ADMIN_ENTRIES).unwrap();
        let cap = Cap(sim.read64(offset::CAP));
        Harness {
            sim,
            dma,
            cap,
            asq,
            acq,
            next_cid: 0,
        }
    }

    /// CC for enabling: NVM command set, 4 KiB pages, 64/16-byte entries, EN = 1.
    pub(super) fn cc() -> Cc {
        Cc(0)
            .with_css(0)
            .with_mps(0)
            .with_iosqes(6)
            .with_iocqes(4)
            .with_en(true)
    }

    /// The usual sequence: AQA, ASQ, ACQ, CC.EN = 1, wait for CSTS.RDY.
    pub(super) fn enable(&mut self) {
        self.sim
            .write32(offset::AQA, Aqa::new(ADMIN_ENTRIES as u16, ADMIN_ENTRIES as u16).0);
        self.sim.write64(offset::ASQ, self.asq.iova());
        self.sim.write64(offset::ACQ, self.acq.iova());
        self.sim.write32(offset::CC, Harness::cc().0);
        wait_ready(&self.sim, true);
    }

    /// Disables (waiting for RDY = 0), forgets the host side of the queues, re-enables.
    pub(super) fn reset(&mut self) {
        self.sim.write32(offset::CC, Harness::cc().with_en(false).0);
        wait_ready(&self.sim, false);
        self.asq.reset();
        self.acq.reset();
        self.enable();
    }

    pub(super) fn dma_buf(&self, len: usize) -> DmaBuf {
        self.dma.allocate(len).unwrap()
    }

    /// Posts an admin command (with a fresh CID) and rings the doorbell; returns the CID.
    pub(super) fn submit_admin(&mut self, mut cmd: Command) -> u16 {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        cmd.set_cid(cid);
        self.asq.push(&cmd).expect("admin SQ full");
        let tail = self.asq.take_doorbell().unwrap();
        self.sim.write32(self.cap.sq_tail_doorbell(0), tail);
        cid
    }

    /// The next admin completion, if one was posted (consumes it and rings the head).
    pub(super) fn poll_admin(&mut self) -> Option<Completion> {
        let c = self.acq.pop()?;
        assert!(self.asq.update_head(c.sqhd), "bad SQHD {}", c.sqhd);
        if let Some(head) = self.acq.take_doorbell() {
            self.sim.write32(self.cap.cq_head_doorbell(0), head);
        }
        Some(c)
    }

    /// Runs an admin command to completion (the simulator completes inline).
    pub(super) fn admin(&mut self, cmd: Command) -> Completion {
        let cid = self.submit_admin(cmd);
        let c = self.poll_admin().expect("admin command completed inline");
        assert_eq!(c.cid, cid);
        c
    }

    /// Runs an admin command that returns `len` bytes (PRPs, at most two pages).
    pub(super) fn admin_read(&mut self, mut cmd: Command, len: usize) -> (Completion, Vec<u8>) {
        let buf = self.dma_buf(len);
        cmd.set_prp(buf.iova(), if len > 4096 { buf.iova() + 4096 } else { 0 });
        let c = self.admin(cmd);
        (c, buf.as_slice()[..len].to_vec())
    }

    /// Runs an admin command that sends `data` (one page at most).
    pub(super) fn admin_write(&mut self, mut cmd: Command, data: &[u8]) -> Completion {
        let mut buf = self.dma_buf(data.len());
        buf.as_mut_slice()[..data.len()].copy_from_slice(data);
        cmd.set_prp(buf.iova(), 0);
        self.admin(cmd)
    }

    /// Creates I/O CQ and SQ `qid` of `entries` entries each.
    pub(super) fn create_io(&mut self, qid: u16, entries: u32) -> IoPair {
        self.create_io_sized(qid, entries, entries)
    }

    pub(super) fn create_io_sized(&mut self, qid: u16, sq_entries: u32, cq_entries: u32) -> IoPair {
        let cq = CompletionQueue::new(self.dma_buf(cq_entries as usize * 16), cq_entries).unwrap();
        let sq = SubmissionQueue::new(self.dma_buf(sq_entries as usize * 64), sq_entries).unwrap();
        let c = self.admin(Command::create_io_cq(qid, cq_entries, cq.iova(), true, None));
        assert!(c.status().is_success(), "Create I/O CQ {qid}: {}", c.status());
        let c = self.admin(Command::create_io_sq(qid, sq_entries, sq.iova(), true, 0, qid));
        assert!(c.status().is_success(), "Create I/O SQ {qid}: {}", c.status());
        IoPair {
            qid,
            sq,
            cq,
            cap: self.cap,
            dma: self.dma.clone(),
            next_cid: 0,
        }
    }
}

impl IoPair {
    /// Posts a command with a fresh CID without ringing the doorbell; returns the CID.
    pub(super) fn post(&mut self, mut cmd: Command) -> u16 {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        cmd.set_cid(cid);
        self.sq.push(&cmd).expect("I/O SQ full");
        cid
    }

    /// Rings the SQ tail doorbell if anything was posted.
    pub(super) fn ring(&mut self, sim: &SimController) {
        if let Some(tail) = self.sq.take_doorbell() {
            sim.write32(self.cap.sq_tail_doorbell(self.qid), tail);
        }
    }

    /// Posts and rings; returns the CID.
    pub(super) fn submit(&mut self, sim: &SimController, cmd: Command) -> u16 {
        let cid = self.post(cmd);
        self.ring(sim);
        cid
    }

    /// The next completion, if posted (consumes it, rings the CQ head doorbell).
    pub(super) fn poll(&mut self, sim: &SimController) -> Option<Completion> {
        let c = self.pop()?;
        self.ring_head(sim);
        Some(c)
    }

    /// The next completion without ringing the CQ head doorbell.
    pub(super) fn pop(&mut self) -> Option<Completion> {
        let c = self.cq.pop()?;
        assert!(self.sq.update_head(c.sqhd), "bad SQHD {}", c.sqhd);
        assert_eq!(c.sqid, self.qid);
        Some(c)
    }

    /// Rings the CQ head doorbell if entries were consumed.
    pub(super) fn ring_head(&mut self, sim: &SimController) {
        if let Some(head) = self.cq.take_doorbell() {
            sim.write32(self.cap.cq_head_doorbell(self.qid), head);
        }
    }

    /// Runs a command to completion (inline).
    pub(super) fn run(&mut self, sim: &SimController, cmd: Command) -> Completion {
        let cid = self.submit(sim, cmd);
        let c = self.poll(sim).expect("I/O command completed inline");
        assert_eq!(c.cid, cid);
        c
    }

    /// Waits up to 2 s for the next completion (for delayed ones).
    pub(super) fn wait(&mut self, sim: &SimController) -> Completion {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(c) = self.poll(sim) {
                return c;
            }
            assert!(Instant::now() < deadline, "no completion within 2 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn rw_prp(&mut self, sim: &SimController, mut cmd: Command, buf: &DmaBuf, blocks: u32) -> Completion {
        let len = blocks as usize * 512;
        let mut list = self
            .dma
            .allocate(list_pages_for_transfer(len, 4096).max(1) * 4096)
            .unwrap();
        let (p1, p2) = build_prps(buf.iova(), len, 4096, &mut list).unwrap();
        cmd.set_prp(p1, p2);
        self.run(sim, cmd)
    }

    /// Reads `blocks` 512-byte blocks at `slba` of NSID 1 into `buf` through PRPs.
    pub(super) fn read_prp(&mut self, sim: &SimController, slba: u64, buf: &DmaBuf, blocks: u32) -> Completion {
        self.rw_prp(sim, Command::read(1, slba, blocks), buf, blocks)
    }

    /// Writes `blocks` 512-byte blocks at `slba` of NSID 1 from `buf` through PRPs.
    pub(super) fn write_prp(&mut self, sim: &SimController, slba: u64, buf: &DmaBuf, blocks: u32) -> Completion {
        self.rw_prp(sim, Command::write(1, slba, blocks, false), buf, blocks)
    }
}
