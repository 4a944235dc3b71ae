//! The controller's state behind its lock, and the command pipeline: doorbells, fetching,
//! fault matching, execution, completion posting (with the phase tag and CQ-full
//! back-pressure), held and delayed commands.

use super::config::SimConfig;
use super::dma::{DmaFault, DmaTable};
use super::fault::{FaultAction, FaultTable};
use super::features::FeatureState;
use super::hostile::HostileState;
use super::irq::SimInterrupts;
use super::logs::ErrorLog;
use super::namespace::Namespace;
use super::power::PowerModel;
use super::regs::RegAccess;
use super::{Shared, SimStats, ticker};
use crate::cmd::{Command, admin};
use crate::completion::Completion;
use crate::regs::{Aqa, Cc};
use crate::status::Status;
use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Register accesses remembered by the register log.
pub(super) const REG_LOG_LEN: usize = 4096;
/// Violations remembered.
const VIOLATIONS_KEPT: usize = 4096;
/// Asynchronous events queued while no AER is outstanding.
const EVENTS_KEPT: usize = 64;

/// What a violation was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ViolationKind {
    /// A device access to memory that is not mapped.
    Dma,
    /// A register, doorbell or initialization-sequence mistake.
    Protocol,
    /// A device access outside mapped memory made on purpose by
    /// [`super::Misbehaviour::DmaOutside`] (not a host mistake).
    HostileDma,
}

/// A driver mistake the simulator noticed.
#[derive(Clone, Debug)]
pub(super) struct Violation {
    pub(super) kind: ViolationKind,
    pub(super) message: String,
}

/// A submission queue as the controller sees it.
#[derive(Debug)]
pub(super) struct Sq {
    pub(super) base: u64,
    pub(super) size: u32,
    pub(super) head: u32,
    pub(super) tail: u32,
    pub(super) cqid: u16,
}

/// A completion waiting for room in its CQ (phase tag not yet known).
#[derive(Clone, Copy, Debug)]
pub(super) struct Pending {
    pub(super) cid: u16,
    pub(super) sqid: u16,
    pub(super) sqhd: u16,
    pub(super) status: Status,
    pub(super) dw0: u32,
}

/// A completion queue as the controller sees it.
#[derive(Debug)]
pub(super) struct Cq {
    pub(super) base: u64,
    pub(super) size: u32,
    /// Head as last written to the CQ head doorbell.
    pub(super) head: u32,
    pub(super) tail: u32,
    pub(super) phase: bool,
    /// Completions that did not fit, oldest first.
    pub(super) overflow: VecDeque<Pending>,
    /// The MSI-X vector signalled on each post (IEN = 1), or `None` (IEN = 0).
    pub(super) vector: Option<u16>,
}

impl Cq {
    pub(super) fn new(base: u64, size: u32, vector: Option<u16>) -> Cq {
        Cq {
            vector,
            base,
            size,
            head: 0,
            tail: 0,
            phase: true,
            overflow: VecDeque::new(),
        }
    }
    fn is_full(&self) -> bool {
        (self.tail + 1) % self.size == self.head
    }
    /// Entries posted and not yet released by the head doorbell.
    fn used(&self) -> u32 {
        (self.tail + self.size - self.head) % self.size
    }
}

/// Why a fetched command is being kept instead of completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ParkKind {
    Hang,
    Lost,
    /// Run at this time.
    Delay(Instant),
}

/// A command the controller holds.
#[derive(Clone, Debug)]
pub(super) struct Parked {
    pub(super) sqid: u16,
    pub(super) cmd: Command,
    pub(super) kind: ParkKind,
}

/// The outcome of executing a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Post a completion with this status and DW0.
    Done(Status, u32),
    /// The command completes later (an Asynchronous Event Request).
    Deferred,
}

impl From<Result<u32, Status>> for Outcome {
    fn from(r: Result<u32, Status>) -> Outcome {
        match r {
            Ok(dw0) => Outcome::Done(Status::SUCCESS, dw0),
            Err(s) => Outcome::Done(s, 0),
        }
    }
}

/// Counters behind [`SimStats`].
pub(super) struct Counters {
    pub(super) admin: [u64; 256],
    pub(super) io: [u64; 256],
    pub(super) sq_doorbells: u64,
    pub(super) cq_doorbells: u64,
    pub(super) enables: u64,
    pub(super) resets: u64,
    pub(super) shutdowns: u64,
    pub(super) completions: u64,
    pub(super) faults: u64,
    pub(super) dma_blocked: u64,
    /// The last I/O command fetched, as the host wrote it.
    pub(super) last_io: Option<Command>,
}

/// SMART / Health counters.
#[derive(Debug, Default)]
pub(super) struct Health {
    pub(super) critical_warning: u8,
    pub(super) bytes_read: u64,
    pub(super) bytes_written: u64,
    pub(super) read_commands: u64,
    pub(super) write_commands: u64,
}

/// CSTS.RDY as a transition in time: `from` until `at`, then `to`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ready {
    from: bool,
    to: bool,
    at: Instant,
}

impl Ready {
    pub(super) fn value(&self) -> bool {
        if self.from == self.to || Instant::now() >= self.at {
            self.to
        } else {
            self.from
        }
    }
    /// Forgets a finished transition, so `value` needs no clock read.
    pub(super) fn settle(&mut self) {
        if self.from != self.to && Instant::now() >= self.at {
            self.from = self.to;
        }
    }
    pub(super) fn go(&mut self, to: bool, delay: Duration) {
        *self = Ready {
            from: self.value(),
            to,
            at: Instant::now() + delay,
        };
    }
}

/// Everything behind the controller's lock.
pub(super) struct State {
    pub(super) cfg: SimConfig,
    pub(super) dma: Arc<DmaTable>,
    /// The controller itself, for starting the ticker thread.
    pub(super) me: Weak<Shared>,
    pub(super) created: Instant,

    // Registers.
    pub(super) cc: Cc,
    pub(super) aqa: Aqa,
    pub(super) asq: u64,
    pub(super) acq: u64,
    pub(super) intms: u32,

    // Controller condition.
    /// The last CC.EN 0→1 succeeded and no reset happened since: the admin queues exist.
    pub(super) enabled: bool,
    pub(super) ready: Ready,
    /// CSTS.CFS set by the controller itself (bad enable, unreachable queue memory).
    pub(super) cfs: bool,
    /// CSTS.CFS forced by `set_fatal`.
    pub(super) fatal: bool,
    /// A shutdown notification was processed: no more commands until a reset.
    pub(super) shutdown: bool,
    /// CSTS.SHST.
    pub(super) shst: u8,
    pub(super) removed: bool,
    /// Registers read all ones and ignore writes, but the controller keeps running.
    pub(super) bar_dead: bool,
    /// PCI Command register bit 2. While clear the controller issues no DMA: it fetches
    /// nothing, and delayed commands that come due are dropped (counted in
    /// `counters.dma_blocked`).
    pub(super) bus_master: bool,
    /// PCI configuration space fails whenever BAR0 reads all ones (Bus Master Enable
    /// cannot be cleared then).
    pub(super) config_follows_bar: bool,
    /// The power-loss model of the volatile write cache; `power.off` after a power cut.
    pub(super) power: PowerModel,
    /// CC.MPS in bytes, fixed at enable.
    pub(super) page_size: usize,

    // Queues and commands.
    pub(super) sqs: Vec<Option<Sq>>,
    pub(super) cqs: Vec<Option<Cq>>,
    pub(super) parked: Vec<Parked>,
    pub(super) aers: Vec<Command>,
    pub(super) events: VecDeque<u32>,
    /// Per Asynchronous Event Type (index = type): the Log Page Identifier whose read with
    /// RAE = 0 unmasks that type, while an event of that type was reported and not cleared.
    pub(super) masked: [Option<u8>; 8],

    // Device state.
    pub(super) features: FeatureState,
    /// Timestamp feature: the host's value in ms and when it was set.
    pub(super) timestamp: Option<(u64, Instant)>,
    pub(super) namespaces: Vec<Namespace>,
    /// NSIDs attached or detached since the Changed Namespace List (log 04h) was last
    /// read.
    pub(super) changed_nsids: std::collections::BTreeSet<u32>,
    pub(super) faults: FaultTable,
    /// Misbehaviours in progress (the hostile controller).
    pub(super) hostile: HostileState,
    pub(super) errors: ErrorLog,
    pub(super) health: Health,

    // Observation.
    pub(super) counters: Counters,
    pub(super) reg_log: VecDeque<RegAccess>,
    pub(super) violations: VecDeque<Violation>,
    pub(super) last_error: Option<String>,
    pub(super) ticker: Option<Thread>,

    // Reused buffers.
    pub(super) scratch: Vec<u8>,
    pub(super) segs: Vec<(u64, u64)>,
    /// The MSI-X vectors CQs signal.
    pub(super) interrupts: Arc<SimInterrupts>,
}

impl State {
    pub(super) fn new(cfg: SimConfig, dma: Arc<DmaTable>, me: Weak<Shared>) -> State {
        let queues = cfg.max_io_queues as usize + 1;
        let namespaces = cfg.namespaces.iter().map(Namespace::new).collect();
        let features = FeatureState::new(&cfg);
        State {
            interrupts: Arc::new(SimInterrupts::new(cfg.max_io_queues.saturating_add(1))),
            dma,
            me,
            created: Instant::now(),
            cc: Cc(0),
            aqa: Aqa(0),
            asq: 0,
            acq: 0,
            intms: 0,
            enabled: false,
            ready: Ready {
                from: false,
                to: false,
                at: Instant::now(),
            },
            cfs: false,
            fatal: false,
            shutdown: false,
            shst: 0,
            removed: false,
            bar_dead: false,
            bus_master: true,
            config_follows_bar: false,
            power: PowerModel::default(),
            page_size: 4096,
            sqs: (0..queues).map(|_| None).collect(),
            cqs: (0..queues).map(|_| None).collect(),
            parked: Vec::new(),
            aers: Vec::new(),
            events: VecDeque::new(),
            masked: [None; 8],
            features,
            timestamp: None,
            namespaces,
            changed_nsids: Default::default(),
            faults: FaultTable::default(),
            hostile: HostileState::default(),
            errors: ErrorLog::default(),
            health: Health::default(),
            counters: Counters {
                admin: [0; 256],
                io: [0; 256],
                sq_doorbells: 0,
                cq_doorbells: 0,
                enables: 0,
                resets: 0,
                shutdowns: 0,
                completions: 0,
                faults: 0,
                dma_blocked: 0,
                last_io: None,
            },
            reg_log: VecDeque::with_capacity(REG_LOG_LEN),
            violations: VecDeque::new(),
            last_error: None,
            ticker: None,
            scratch: Vec::new(),
            segs: Vec::new(),
            cfg,
        }
    }

    /// Whether the controller processes commands now.
    pub(super) fn operational(&self) -> bool {
        self.enabled
            && !self.cfs
            && !self.fatal
            && !self.shutdown
            && !self.removed
            && self.bus_master
            && !self.power.off
            && self.ready.value()
    }

    pub(super) fn violation(&mut self, kind: ViolationKind, message: String) {
        if self.violations.len() == VIOLATIONS_KEPT {
            self.violations.pop_front();
        }
        self.violations.push_back(Violation { kind, message });
    }

    /// Sets CSTS.CFS because of `why`.
    pub(super) fn fail(&mut self, why: String) {
        self.cfs = true;
        self.last_error = Some(why);
    }

    /// Records a DMA fault by `cmd` (from SQ `sqid`) and returns Data Transfer Error.
    pub(super) fn dma_failed(&mut self, sqid: u16, cmd: &Command, what: &str, fault: DmaFault) -> Status {
        let name = cmd.name(sqid == 0);
        self.violation(
            ViolationKind::Dma,
            format!("SQ {sqid} CID {} ({name}): {what}: {fault}", cmd.cid()),
        );
        Status::DATA_TRANSFER_ERROR
    }

    pub(super) fn stats(&self) -> SimStats {
        let by_opcode = |counts: &[u64; 256]| {
            counts
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(op, n)| (op as u8, *n))
                .collect()
        };
        SimStats {
            admin_commands: by_opcode(&self.counters.admin),
            io_commands: by_opcode(&self.counters.io),
            sq_doorbells: self.counters.sq_doorbells,
            cq_doorbells: self.counters.cq_doorbells,
            enables: self.counters.enables,
            resets: self.counters.resets,
            shutdowns: self.counters.shutdowns,
            completions_posted: self.counters.completions,
            faults_applied: self.counters.faults,
            dma_blocked: self.counters.dma_blocked,
            last_io_command: self.counters.last_io,
        }
    }

    // --- Doorbells ---------------------------------------------------------------------

    /// A write of `value` to doorbell `index` (SQ y tail = 2y, CQ y head = 2y + 1).
    pub(super) fn doorbell(&mut self, index: u32, value: u32) {
        let qid = (index / 2) as u16;
        let is_cq = index % 2 == 1;
        if is_cq {
            self.counters.cq_doorbells += 1;
        } else {
            self.counters.sq_doorbells += 1;
        }
        self.ready.settle();
        self.post_due();
        if self.cfs || self.fatal {
            return; // a failed controller ignores doorbells; the host learns it from CSTS
        }
        let which = if is_cq { "CQ head" } else { "SQ tail" };
        if !self.operational() && self.hostile.ready_dropped {
            return; // the device dropped CSTS.RDY by itself: not the host's mistake
        }
        if !self.operational() {
            let why = if self.shutdown {
                "after a shutdown notification"
            } else if !self.bus_master {
                "with Bus Master Enable clear"
            } else {
                "while CSTS.RDY is 0"
            };
            self.violation(
                ViolationKind::Protocol,
                format!("{which} doorbell {qid} written ({value}) {why}"),
            );
            return;
        }
        if is_cq {
            self.cq_head_doorbell(qid, value)
        } else {
            self.sq_tail_doorbell(qid, value)
        }
    }

    fn sq_tail_doorbell(&mut self, qid: u16, tail: u32) {
        let Some(sq) = self.sqs[qid as usize].as_mut() else {
            self.violation(
                ViolationKind::Protocol,
                format!("SQ tail doorbell {qid} written ({tail}) but SQ {qid} does not exist"),
            );
            return;
        };
        if tail >= sq.size {
            let size = sq.size;
            self.violation(
                ViolationKind::Protocol,
                format!("SQ {qid} tail doorbell value {tail} is past the end of the {size}-entry ring; write ignored"),
            );
            return;
        }
        sq.tail = tail;
        self.drain_sq(qid);
    }

    fn cq_head_doorbell(&mut self, qid: u16, head: u32) {
        let Some(cq) = self.cqs[qid as usize].as_mut() else {
            self.violation(
                ViolationKind::Protocol,
                format!("CQ head doorbell {qid} written ({head}) but CQ {qid} does not exist"),
            );
            return;
        };
        if head >= cq.size || (head + cq.size - cq.head) % cq.size > cq.used() {
            let (size, old, tail) = (cq.size, cq.head, cq.tail);
            self.violation(
                ViolationKind::Protocol,
                format!("CQ {qid} head doorbell value {head} is invalid (ring of {size}, head {old}, tail {tail}); write ignored"),
            );
            return;
        }
        cq.head = head;
        self.flush_overflow(qid);
    }

    // --- Fetch and execute -------------------------------------------------------------

    /// Fetches and executes every command between SQ `qid`'s head and tail.
    fn drain_sq(&mut self, qid: u16) {
        let Some(size) = self.sqs[qid as usize].as_ref().map(|sq| sq.size) else {
            return;
        };
        // Bounded: at most one ring's worth per doorbell.
        for _ in 0..size {
            if !self.operational() {
                return;
            }
            let Some(sq) = self.sqs[qid as usize].as_mut() else {
                return;
            };
            if sq.head == sq.tail {
                return;
            }
            let (slot, iova) = (sq.head, sq.base + sq.head as u64 * 64);
            let cmd = match self.dma.read_command(iova) {
                Ok(c) => c,
                Err(f) => {
                    let msg = format!("SQ {qid} fetch of slot {slot}: {f}");
                    self.violation(ViolationKind::Dma, msg.clone());
                    self.fail(msg);
                    return;
                }
            };
            sq.head = (sq.head + 1) % sq.size;
            self.dispatch(qid, cmd);
        }
    }

    /// Applies fault rules to a fetched command, then runs it.
    fn dispatch(&mut self, sqid: u16, cmd: Command) {
        let counts = if sqid == 0 {
            &mut self.counters.admin
        } else {
            &mut self.counters.io
        };
        counts[cmd.opcode() as usize] += 1;
        if sqid != 0 {
            self.counters.last_io = Some(cmd);
        }
        if !self.faults.is_empty() {
            if let Some(action) = self.faults.take(sqid, &cmd) {
                self.counters.faults += 1;
                match action {
                    FaultAction::Status(s) => self.finish(sqid, &cmd, s, 0),
                    FaultAction::Hang => self.parked.push(Parked {
                        sqid,
                        cmd,
                        kind: ParkKind::Hang,
                    }),
                    FaultAction::Lost => self.parked.push(Parked {
                        sqid,
                        cmd,
                        kind: ParkKind::Lost,
                    }),
                    FaultAction::Delay(d) => {
                        self.parked.push(Parked {
                            sqid,
                            cmd,
                            kind: ParkKind::Delay(Instant::now() + d),
                        });
                        ticker::kick(self);
                    }
                    FaultAction::Misbehave(m) => self.misbehave(sqid, cmd, m),
                }
                return;
            }
        }
        self.run(sqid, &cmd);
    }

    /// Executes a command and completes it (unless it is deferred).
    pub(super) fn run(&mut self, sqid: u16, cmd: &Command) {
        let outcome = if sqid == 0 { self.admin(cmd) } else { self.io(sqid, cmd) };
        if let Outcome::Done(status, dw0) = outcome {
            self.finish(sqid, cmd, status, dw0);
        }
    }

    // --- Completions -------------------------------------------------------------------

    /// Completes `cmd` from SQ `sqid`: records an error, then posts to the SQ's CQ. A
    /// completion for an SQ that no longer exists is dropped.
    pub(super) fn finish(&mut self, sqid: u16, cmd: &Command, status: Status, dw0: u32) {
        let Some(sq) = self.sqs[sqid as usize].as_ref() else {
            return;
        };
        let (cqid, sqhd) = (sq.cqid, sq.head as u16);
        if !status.is_success() {
            let phase = self.cqs[cqid as usize].as_ref().is_some_and(|c| c.phase);
            self.errors.record(sqid, cmd, status, phase);
        }
        let p = Pending {
            cid: cmd.cid(),
            sqid,
            sqhd,
            status,
            dw0,
        };
        match self.hostile.mangle.take() {
            Some(m) => self.post_mangled(cqid, p, m),
            None => self.post(cqid, p),
        }
        self.hostile.remember(p);
    }

    pub(super) fn post(&mut self, cqid: u16, p: Pending) {
        let Some(cq) = self.cqs[cqid as usize].as_mut() else {
            return;
        };
        if !cq.overflow.is_empty() || cq.is_full() {
            cq.overflow.push_back(p);
            return;
        }
        self.write_cqe(cqid, p);
    }

    /// Writes one completion at CQ `cqid`'s tail, which must have room.
    fn write_cqe(&mut self, cqid: u16, p: Pending) {
        let Some(cq) = self.cqs[cqid as usize].as_mut() else {
            return;
        };
        let c = Completion::new(p.cid, p.sqid, p.sqhd, p.status, cq.phase, p.dw0);
        let slot = cq.tail;
        match self.dma.write_completion(cq.base + slot as u64 * 16, &c) {
            Ok(()) => {
                cq.tail = (cq.tail + 1) % cq.size;
                if cq.tail == 0 {
                    cq.phase = !cq.phase;
                }
                if let Some(v) = cq.vector {
                    self.interrupts.signal(v);
                }
                self.counters.completions += 1;
            }
            Err(f) => {
                let msg = format!("CQ {cqid} post to slot {slot}: {f}");
                self.violation(ViolationKind::Dma, msg.clone());
                self.fail(msg);
            }
        }
    }

    /// Posts completions that waited for room in CQ `cqid`.
    fn flush_overflow(&mut self, cqid: u16) {
        loop {
            let Some(cq) = self.cqs[cqid as usize].as_mut() else {
                return;
            };
            if cq.is_full() || self.cfs {
                return;
            }
            let Some(p) = cq.overflow.pop_front() else { return };
            self.write_cqe(cqid, p);
        }
    }

    // --- Held and delayed commands -----------------------------------------------------

    /// Runs delayed commands whose time has come.
    pub(super) fn post_due(&mut self) {
        if self.parked.is_empty() {
            return;
        }
        let now = Instant::now();
        if !self.bus_master && !self.removed && !self.power.off {
            // Without Bus Master Enable a due command can neither move its data nor post
            // its completion: it is lost.
            let before = self.parked.len();
            self.parked
                .retain(|p| !matches!(p.kind, ParkKind::Delay(t) if t <= now));
            self.counters.dma_blocked += (before - self.parked.len()) as u64;
            return;
        }
        while self.operational() {
            let due = self
                .parked
                .iter()
                .enumerate()
                .filter_map(|(i, p)| match p.kind {
                    ParkKind::Delay(t) if t <= now => Some((t, i)),
                    _ => None,
                })
                .min();
            let Some((_, i)) = due else { return };
            let p = self.parked.remove(i);
            self.run(p.sqid, &p.cmd);
        }
    }

    /// When the next delayed command is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.parked
            .iter()
            .filter_map(|p| match p.kind {
                ParkKind::Delay(t) => Some(t),
                _ => None,
            })
            .min()
    }

    /// Commands held by Hang or Lost.
    pub(super) fn held(&self) -> usize {
        self.parked
            .iter()
            .filter(|p| matches!(p.kind, ParkKind::Hang | ParkKind::Lost))
            .count()
    }

    /// Runs every held (Hang or Lost) command now, in the order they arrived.
    pub(super) fn release_held(&mut self) {
        if !self.operational() {
            return;
        }
        let (held, rest): (Vec<Parked>, Vec<Parked>) = self
            .parked
            .drain(..)
            .partition(|p| matches!(p.kind, ParkKind::Hang | ParkKind::Lost));
        self.parked = rest;
        for p in held {
            self.run(p.sqid, &p.cmd);
        }
    }

    /// Removes a held or delayed command visible to Abort: `cid` on SQ `sqid`.
    pub(super) fn take_abortable(&mut self, sqid: u16, cid: u16) -> Option<Parked> {
        let i = self
            .parked
            .iter()
            .position(|p| p.sqid == sqid && p.cmd.cid() == cid && p.kind != ParkKind::Lost)?;
        Some(self.parked.remove(i))
    }

    // --- Asynchronous events -----------------------------------------------------------

    /// Reports an event: queues it, then completes the oldest outstanding AER with it if
    /// its type is not masked.
    pub(super) fn async_event(&mut self, dw0: u32) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_front();
        }
        self.events.push_back(dw0);
        self.deliver_events();
    }

    /// Takes the oldest queued event whose type is not masked, and masks its type until
    /// its log page is read with RAE = 0 (§5.2, §5.16).
    fn next_event(&mut self) -> Option<u32> {
        let i = self
            .events
            .iter()
            .position(|dw0| self.masked[(dw0 & 0x7) as usize].is_none())?;
        let dw0 = self.events.remove(i)?;
        self.masked[(dw0 & 0x7) as usize] = Some((dw0 >> 16) as u8);
        Some(dw0)
    }

    /// Completes outstanding AERs with the queued events that are not masked.
    pub(super) fn deliver_events(&mut self) {
        while self.operational() && !self.aers.is_empty() {
            let Some(dw0) = self.next_event() else { return };
            let aer = self.aers.remove(0);
            self.finish(0, &aer, Status::SUCCESS, dw0);
        }
    }

    /// A Get Log Page of `lid` with RAE = 0 completed: events of the types it clears are
    /// reported again.
    pub(super) fn log_read_clears_events(&mut self, lid: u8) {
        for m in &mut self.masked {
            if *m == Some(lid) {
                *m = None;
            }
        }
        self.deliver_events();
    }

    /// Asynchronous Event Request (§5.2): completes at once with a queued event whose type
    /// is not masked, else waits.
    pub(super) fn aer(&mut self, cmd: &Command) -> Outcome {
        if self.aers.len() > super::identify_data::AERL as usize {
            return Outcome::Done(Status::AER_LIMIT_EXCEEDED, 0);
        }
        match self.next_event() {
            Some(dw0) => Outcome::Done(Status::SUCCESS, dw0),
            None => {
                debug_assert_eq!(cmd.opcode(), admin::ASYNC_EVENT_REQUEST);
                self.aers.push(*cmd);
                Outcome::Deferred
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Harness;
    use crate::cmd::Command;
    use crate::hw::Registers;
    use crate::status::Status;

    #[test]
    fn a_full_cq_holds_completions_until_the_head_moves() {
        let mut h = Harness::new();
        let mut io = h.create_io_sized(1, 16, 4);
        let cids: Vec<u16> = (0..6).map(|_| io.post(Command::flush(1))).collect();
        io.ring(&h.sim); // six commands, one doorbell; the 4-entry CQ holds three
        let mut got = Vec::new();
        while let Some(c) = io.pop() {
            got.push(c);
        }
        assert_eq!(got.len(), 3, "tail + 1 == head: full");
        io.ring_head(&h.sim);
        while let Some(c) = io.pop() {
            got.push(c);
        }
        io.ring_head(&h.sim);
        assert_eq!(got.iter().map(|c| c.cid).collect::<Vec<_>>(), cids);
        assert!(got.iter().all(|c| c.status().is_success()));
        assert_eq!(
            got.iter().map(|c| c.phase()).collect::<Vec<_>>(),
            [true, true, true, true, false, false]
        );
        assert_eq!(got.last().unwrap().sqhd, 6, "SQHD when fetched");
        assert!(
            h.sim.protocol_violations().is_empty(),
            "{:?}",
            h.sim.protocol_violations()
        );
    }

    #[test]
    fn phase_tag_inverts_on_every_wrap() {
        let mut h = Harness::new();
        let mut io = h.create_io_sized(1, 2, 3);
        let mut phases = Vec::new();
        for _ in 0..9 {
            let c = io.run(&h.sim, Command::flush(1));
            phases.push(c.phase());
            assert_eq!(c.sqhd as u32, io.sq.tail(), "the controller consumed everything");
        }
        assert_eq!(phases, [true, true, true, false, false, false, true, true, true]);
        assert_eq!(h.sim.stats().io(crate::cmd::nvm::FLUSH), 9);
    }

    #[test]
    fn bad_doorbell_values_are_violations_and_ignored() {
        let mut h = Harness::new();
        let io = h.create_io(1, 8);
        let cap = h.cap;
        h.sim.write32(cap.sq_tail_doorbell(1), 8); // past the ring
        h.sim.write32(cap.sq_tail_doorbell(2), 0); // no SQ 2
        h.sim.write32(cap.cq_head_doorbell(1), 3); // past the tail (nothing was posted)
        h.sim.write32(cap.cq_head_doorbell(64), 0); // no CQ 64
        h.sim.write32(cap.cq_head_doorbell(1), u32::MAX);
        let v = h.sim.protocol_violations();
        assert_eq!(v.len(), 5, "{v:?}");
        assert!(
            v[0].contains("past the end") && v[1].contains("does not exist"),
            "{v:?}"
        );
        assert!(
            v[2].contains("CQ 1 head doorbell value 3 is invalid") && v[3].contains("CQ 64"),
            "{v:?}"
        );
        assert_eq!(
            h.sim.stats().sq_doorbells,
            2 + 2,
            "create CQ + create SQ + two bad ones"
        );
        drop(io);
        assert!(h.admin(Command::delete_io_sq(1)).status() == Status::SUCCESS);
    }

    #[test]
    fn an_event_masks_its_type_until_its_log_is_read_with_rae_clear() {
        use crate::log::LogPageId;
        let mut h = Harness::new();
        let a = h.submit_admin(Command::async_event_request());
        let b = h.submit_admin(Command::async_event_request());
        h.sim.raise_async_event(0x1, 0x1, 0x02);
        assert_eq!(h.poll_admin().map(|c| c.cid), Some(a));
        h.sim.raise_async_event(0x1, 0x2, 0x02); // SMART again: masked
        assert!(h.poll_admin().is_none(), "masked until the SMART log is read");
        h.sim.raise_async_event(0x2, 0x0, 0x03); // another type is not masked
        let notice = h.poll_admin().expect("a notice");
        assert_eq!((notice.cid, notice.dw0), (b, 0x2 | 0x03 << 16));
        let c = h.submit_admin(Command::async_event_request());
        let retain = Command::get_log_page(LogPageId::SMART_HEALTH, u32::MAX, 0, 512, 0, true).unwrap();
        assert!(h.admin_read(retain, 512).0.status().is_success());
        assert!(h.poll_admin().is_none(), "RAE = 1 keeps the event");
        let mut clear = Command::get_log_page(LogPageId::SMART_HEALTH, u32::MAX, 0, 512, 0, false).unwrap();
        let buf = h.dma_buf(512);
        clear.set_prp(buf.iova(), 0);
        let cid = h.submit_admin(clear);
        let mut done: Vec<(u16, u32)> = std::iter::from_fn(|| h.poll_admin()).map(|c| (c.cid, c.dw0)).collect();
        done.sort();
        let mut want = vec![(cid, 0), (c, 0x1 | 0x2 << 8 | 0x02 << 16)];
        want.sort();
        assert_eq!(done, want, "the read with RAE = 0 releases the masked SMART event");
    }

    #[test]
    fn unmapped_sq_memory_is_fatal() {
        let mut h = Harness::new();
        let io = h.create_io(1, 8);
        let cap = h.cap;
        drop(io); // the host frees the rings while the queues still exist
        h.sim.write32(cap.sq_tail_doorbell(1), 1);
        assert!(crate::regs::Csts(h.sim.read32(crate::regs::offset::CSTS)).cfs());
        assert!(
            h.sim.dma_violations()[0].contains("SQ 1 fetch of slot 0"),
            "{:?}",
            h.sim.dma_violations()
        );
        assert!(h.sim.last_error().unwrap().contains("freed"));
    }
}
