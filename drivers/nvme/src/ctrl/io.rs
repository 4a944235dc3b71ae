//! I/O queue pairs: the polled data path.
//!
//! One [`IoQueuePair`] belongs to one thread; nothing on its path takes a lock, makes a
//! syscall or allocates. Command slots, PRP list pages and the rings are allocated when
//! the pair is created. A command takes ownership of its [`DmaBuf`]; the completion gives
//! it back, so memory the device may still touch can't be freed or reused early.
//!
//! Submitting posts commands without ringing the doorbell; [`IoQueuePair::ring`] (or the
//! next [`IoQueuePair::poll`]) writes the SQ tail doorbell once for the whole batch, and a
//! poll writes the CQ head doorbell once for all the completions it consumed. With shadow
//! doorbells (`ctrl/shadow.rs`) each of those writes goes to the shadow page, and to the
//! register only when the controller's EventIdx asks for it.

use super::config::DataPointerMode;
use super::recovery::{Health, RecoveryEvent, ResetReason};
use super::shadow::ShadowDoorbells;
use super::{Error, Inner, Namespace, clock};
use crate::block::Op;
use crate::cmd::{Command, DSM_RANGE_BYTES, DsmAttributes, DsmRange, MAX_DSM_RANGES};
use crate::hw::{DmaBuf, InterruptVectors, Registers};
use crate::prp;
use crate::queue::{CidTable, CompletionQueue, QueuePair, SubmissionQueue};
use crate::quirks::Quirks;
use crate::regs::{Csts, offset};
use crate::sgl::SglDescriptor;
use crate::status::Status;
use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A finished I/O command.
#[derive(Debug)]
pub struct IoCompletion {
    /// The caller's tag given at submission.
    pub tag: u64,
    /// The data buffer given at submission, returned.
    pub buf: Option<DmaBuf>,
    /// The completion status; [`Status::ABORTED_BY_HOST`] when the driver completed the
    /// command itself (controller reset or queue teardown).
    pub status: Status,
    /// Completion DW0 (command specific).
    pub dw0: u32,
    /// Completion DW1 (command specific; with DW0, Zone Append's first block written:
    /// [`IoCompletion::dw0_dw1`]).
    pub dw1: u32,
}

impl IoCompletion {
    /// DW1:DW0 as one 64-bit value: for a Zone Append, the first logical block it wrote
    /// (ZNS 1.1 §3.4.1).
    pub fn dw0_dw1(&self) -> u64 {
        self.dw0 as u64 | (self.dw1 as u64) << 32
    }

    /// `Ok(())` on success, else the command's error with its decoded status.
    pub fn result(&self) -> Result<(), Status> {
        if self.status.is_success() {
            Ok(())
        } else {
            Err(self.status)
        }
    }
}

/// A command that could not be submitted, with its buffer given back.
#[derive(Debug)]
pub struct IoError {
    /// Why.
    pub error: Error,
    /// The buffer the caller passed, returned unchanged.
    pub buf: Option<DmaBuf>,
}

impl std::fmt::Display for IoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

fn refuse(error: Error, buf: Option<DmaBuf>) -> IoError {
    IoError { error, buf }
}

/// An outstanding command.
struct InFlight {
    tag: u64,
    buf: Option<DmaBuf>,
    opcode: u8,
    /// Clock ticks after which the command has timed out (or, once aborted, after which
    /// the abort has failed).
    deadline: u64,
    aborted: bool,
    /// Given up on: a reset is under way because of it, so its completion, if it still
    /// arrives, is discarded and it completes with [`Status::ABORTED_BY_HOST`].
    expired: bool,
}

/// An I/O submission queue and its completion queue (one CQ per SQ), owned by one thread.
///
/// Created by [`super::Controller::create_io_queue_pair`]; deleted from the controller
/// when dropped (Delete I/O SQ, then Delete I/O CQ).
pub struct IoQueuePair<R: Registers> {
    inner: Arc<Inner<R>>,
    // Device-visible memory is dropped only after the controller deleted the queues.
    rings: ManuallyDrop<QueuePair>,
    slots: CidTable<InFlight>,
    lists: ManuallyDrop<DmaBuf>,
    list_bytes: usize,
    use_sgl_above: Option<usize>,
    dead: Option<&'static str>,
    /// The controller generation the queues were created in.
    generation: u64,
    timeout_ticks: u64,
    abort_ticks: u64,
    scan_ticks: u64,
    next_scan: u64,
    /// Doorbell updates (SQ tail and CQ head), and those written to the registers.
    doorbells: DoorbellCounts,
    /// Where to sleep on the CQ's interrupt vector, which is `qid` ([`Self::wait`]);
    /// `None`: polled.
    irq: Option<Arc<dyn InterruptVectors>>,
    /// Sleeps on the vector, and those the vector ended (not the timeout).
    sleeps: SleepCounts,
}

/// How often [`IoQueuePair::wait`] slept on its interrupt vector, and how many of those
/// sleeps a signal ended (the others hit the deadline-scan timeout). A signal may be left
/// over from a completion an earlier poll already took, so `woken` counts some wake-ups
/// that found nothing new.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SleepCounts {
    /// Sleeps on the vector.
    pub sleeps: u64,
    /// Of those, the ones the vector's signal ended.
    pub woken: u64,
}

/// How many doorbell updates an I/O queue pair made, and how many of them were MMIO
/// register writes: all of them without shadow doorbells; with them, those the
/// controller's EventIdx asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DoorbellCounts {
    /// SQ tail and CQ head updates.
    pub updates: u64,
    /// Of those, writes to the doorbell registers.
    pub mmio: u64,
}

/// Writes doorbell `reg` (queue pair `qid`'s SQ tail or CQ head) with `value`, after the
/// queue pair's write barrier ([`QueuePair::ring`], [`QueuePair::release`]): to its shadow
/// word through `shadow` ([`ShadowDoorbells::sq_tail`] or `cq_head`) when shadow doorbells
/// are in use, and to the register unless the controller's EventIdx says it will read the
/// shadow word itself. Counts both in `counts`.
fn write_doorbell<R: Registers>(
    inner: &Inner<R>,
    counts: &mut DoorbellCounts,
    qid: u16,
    reg: u32,
    value: u32,
    shadow: fn(&ShadowDoorbells, u16, u16) -> bool,
) {
    counts.updates += 1;
    if inner.shadow.as_ref().is_none_or(|s| shadow(s, qid, value as u16)) {
        counts.mmio += 1;
        inner.regs.write32(reg, value);
    }
}

impl<R: Registers> IoQueuePair<R> {
    pub(super) fn new(
        inner: Arc<Inner<R>>,
        qid: u16,
        sq: SubmissionQueue,
        cq: CompletionQueue,
        lists: DmaBuf,
        list_bytes: usize,
        generation: u64,
    ) -> IoQueuePair<R> {
        let depth = sq.entries() as usize - 1;
        let use_sgl_above = match (inner.sgl_supported, inner.config.data_pointer) {
            (false, _) | (_, DataPointerMode::Prp) => None,
            (true, DataPointerMode::Sgl) => Some(0),
            (true, DataPointerMode::Auto) => Some(2 * inner.page_size),
        };
        let timeout_ticks = clock::ticks_for(inner.config.io_timeout);
        // Look for expired commands a few times per timeout period, at most every 500 ms.
        let scan_ticks = clock::ticks_for((inner.config.io_timeout / 8).clamp(
            std::time::Duration::from_millis(1),
            std::time::Duration::from_millis(500),
        ));
        IoQueuePair {
            timeout_ticks,
            abort_ticks: clock::ticks_for(inner.config.abort_timeout),
            scan_ticks,
            next_scan: clock::now().saturating_add(scan_ticks),
            doorbells: DoorbellCounts::default(),
            irq: inner.interrupt_vector(qid).and(inner.config.interrupts.clone()),
            sleeps: SleepCounts::default(),
            generation,
            rings: ManuallyDrop::new(QueuePair::new(
                sq,
                cq,
                qid,
                inner.cap.sq_tail_doorbell(qid),
                inner.cap.cq_head_doorbell(qid),
            )),
            inner,
            slots: CidTable::new(depth),
            lists: ManuallyDrop::new(lists),
            list_bytes,
            use_sgl_above,
            dead: None,
        }
    }

    /// The queue ID (1..=granted).
    pub fn qid(&self) -> u16 {
        self.rings.qid()
    }

    /// The most commands that can be outstanding at once (queue size − 1).
    pub fn depth(&self) -> usize {
        self.slots.capacity()
    }

    /// Commands submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.slots.outstanding()
    }

    /// Doorbell updates so far, and how many were register writes.
    pub fn doorbell_counts(&self) -> DoorbellCounts {
        self.doorbells
    }

    /// Whether another command can be submitted now.
    pub fn has_room(&self) -> bool {
        !self.slots.is_full() && !self.rings.is_full()
    }

    /// Posts `cmd` with optional data buffer `buf` under the caller's `tag`, without
    /// ringing the doorbell. The command's CID, data pointer and MPTR (0: no metadata) are
    /// filled in here; the buffer (its window) must hold the command's whole transfer.
    ///
    /// Errors (the buffer comes back in [`IoError::buf`]): [`Error::QueueFull`],
    /// [`Error::WrongDomain`], [`Error::TransferTooLarge`], [`Error::Misaligned`] (not
    /// dword aligned), [`Error::ControllerFailed`] (with why: the device was removed, it is
    /// gone, a reset failed; commands still outstanding complete at the next [`Self::poll`]),
    /// [`Error::QueueDead`], [`Error::Recovering`] (a controller reset is
    /// in progress or this pair's outstanding commands must be collected with
    /// [`Self::poll`] first).
    pub fn submit(&mut self, cmd: Command, buf: Option<DmaBuf>, tag: u64) -> Result<(), IoError> {
        self.post(cmd, buf, None, tag)
    }

    /// [`Self::submit`] for a namespace with separate metadata: `buf` holds the command's
    /// data (its first `data_len` bytes, which the data pointer covers) followed by its
    /// metadata, whose address goes in MPTR as one contiguous buffer (NVM Command Set 1.0
    /// §5.2.3; MPTR with PSDT 00b or 01b). For extended LBAs, where the metadata travels
    /// with the data, the whole buffer goes through [`Self::submit`].
    ///
    /// Crate-private: the controller moves NLB × MS bytes to MPTR whatever the buffer
    /// holds, so only a caller that checked the buffer against the command and the
    /// namespace ([`super::NamespaceQueue`], through [`crate::block::check_with_metadata`])
    /// may send one.
    ///
    /// Errors: as [`Self::submit`]; [`Error::BufferMismatch`] if `data_len` is zero, not
    /// dword-aligned, or leaves no metadata in the buffer.
    pub(crate) fn submit_with_metadata(
        &mut self,
        cmd: Command,
        buf: DmaBuf,
        data_len: usize,
        tag: u64,
    ) -> Result<(), IoError> {
        if data_len == 0 || data_len >= buf.len() || data_len % 4 != 0 {
            return Err(refuse(
                Error::BufferMismatch("the metadata must follow a non-empty, dword-aligned run of data in the buffer"),
                Some(buf),
            ));
        }
        self.post(cmd, Some(buf), Some(data_len), tag)
    }

    /// Posts a command whose buffer's first `data_len` bytes are data and the rest
    /// metadata (MPTR) when `data_len` is given, else all data.
    fn post(
        &mut self,
        mut cmd: Command,
        buf: Option<DmaBuf>,
        data_len: Option<usize>,
        tag: u64,
    ) -> Result<(), IoError> {
        if let Some(reason) = self.dead {
            return Err(refuse(self.dead_error(reason), buf));
        }
        if !self.queues_current() {
            // A reset happened (or is happening). An idle pair re-creates its queues now;
            // one with outstanding commands must hand them back through poll first.
            if self.slots.is_idle() && self.inner.health() == Health::Live {
                self.recover(&mut |_| {});
            }
            if let Some(reason) = self.dead {
                return Err(refuse(self.dead_error(reason), buf));
            }
            if self.inner.health() == Health::Failed {
                return Err(refuse(self.inner.failed_error(), buf));
            }
            if !self.queues_current() {
                return Err(refuse(Error::Recovering { qid: self.qid() }, buf));
            }
        }
        if !self.has_room() {
            return Err(refuse(Error::QueueFull(self.outstanding()), buf));
        }
        let data = buf.as_ref().map(|b| {
            let len = data_len.unwrap_or(b.len());
            self.check_buffer(b, len).map(|()| (b.iova(), len))
        });
        let data = match data.transpose() {
            Ok(d) => d,
            Err(e) => return Err(refuse(e, buf)),
        };
        let deadline = clock::now().saturating_add(self.timeout_ticks);
        let flight = InFlight {
            tag,
            buf,
            opcode: cmd.opcode(),
            deadline,
            aborted: false,
            expired: false,
        };
        let cid = match self.slots.insert(flight) {
            Ok(cid) => cid,
            Err(f) => return Err(refuse(Error::QueueFull(self.outstanding()), f.buf)),
        };
        if let Some((iova, len)) = data {
            if let Err(e) = self.set_data_pointer(&mut cmd, cid, iova, len) {
                let f = self.slots.remove(cid).expect("just inserted");
                return Err(refuse(e, f.buf));
            }
        }
        // The data pointers are the driver's: a raw command's MPTR would have the
        // controller write metadata wherever it points.
        cmd.mptr = match (data, data_len) {
            (Some((iova, len)), Some(_)) => iova + len as u64,
            _ => 0,
        };
        cmd.set_cid(cid);
        self.rings.post(&cmd).expect("room was checked");
        Ok(())
    }

    /// Checks a buffer whose first `len` bytes the data pointer covers.
    fn check_buffer(&self, b: &DmaBuf, len: usize) -> Result<(), Error> {
        if b.domain() != self.inner.domain {
            return Err(Error::WrongDomain {
                buf: b.domain(),
                queue: self.inner.domain,
            });
        }
        if len == 0 || len > self.inner.max_transfer {
            return Err(Error::TransferTooLarge {
                bytes: len,
                max: self.inner.max_transfer,
            });
        }
        if b.iova() % 4 != 0 {
            return Err(Error::Misaligned {
                iova: b.iova(),
                align: 4,
            });
        }
        Ok(())
    }

    fn set_data_pointer(&mut self, cmd: &mut Command, cid: u16, iova: u64, len: usize) -> Result<(), Error> {
        if self.use_sgl_above.is_some_and(|above| len > above) {
            // A contiguous buffer is one SGL Data Block descriptor in the command itself.
            cmd.set_sgl(SglDescriptor::data_block(iova, len as u32));
            return Ok(());
        }
        // Each slot owns one list area; CIDs carry a generation above the slot index.
        let slot = self.slots.slot(cid).expect("the command was just inserted");
        self.lists.set_window(slot * self.list_bytes, self.list_bytes)?;
        let (prp1, prp2) = prp::build_prps(iova, len, self.inner.page_size, &mut self.lists)?;
        cmd.set_prp(prp1, prp2);
        Ok(())
    }

    /// Whether the queues on the controller are the ones this pair owns: the controller is
    /// live and has not been reset since they were created.
    fn queues_current(&self) -> bool {
        self.inner.health() == Health::Live && self.inner.generation.load(Ordering::Acquire) == self.generation
    }

    /// Writes the SQ tail doorbell if commands were posted since the last ring: one MMIO
    /// write for the whole batch. Nothing is written while the controller is being reset;
    /// the next poll takes care of the commands.
    pub fn ring(&mut self) {
        if self.dead.is_some() || !self.queues_current() {
            return;
        }
        let qid = self.qid();
        let (inner, counts) = (&self.inner, &mut self.doorbells);
        self.rings
            .ring(|reg, tail| write_doorbell(inner, counts, qid, reg, tail, ShadowDoorbells::sq_tail));
    }

    /// Rings any pending submissions, then consumes up to `max` completions, calling
    /// `on_complete` for each, and writes the CQ head doorbell once. Returns how many
    /// completed.
    ///
    /// This is also where recovery happens for this pair: commands past their deadline are
    /// aborted (and the controller reset if that fails, or at once when the controller's
    /// Abort is a no-op), and after a reset the outstanding
    /// commands complete with [`Status::ABORTED_BY_HOST`] and the queues are created again.
    pub fn poll(&mut self, max: usize, mut on_complete: impl FnMut(IoCompletion)) -> usize {
        if self.dead.is_some() || !self.queues_current() {
            return self.recover(&mut on_complete);
        }
        self.ring();
        let n = self.reap(max, &mut on_complete);
        let qid = self.qid();
        let (inner, counts) = (&self.inner, &mut self.doorbells);
        self.rings
            .release(|reg, head| write_doorbell(inner, counts, qid, reg, head, ShadowDoorbells::cq_head));
        if !self.slots.is_idle() {
            let now = clock::now();
            if now >= self.next_scan {
                self.next_scan = now.saturating_add(self.scan_ticks);
                return n + self.check_deadlines(now, &mut on_complete);
            }
        }
        n
    }

    /// Consumes up to `max` completions from the CQ ([`QueuePair::reap`]), without the CQ
    /// head doorbell ([`Self::poll`] writes it; during a reset the controller does not
    /// have the queue).
    fn reap(&mut self, max: usize, on_complete: &mut impl FnMut(IoCompletion)) -> usize {
        let slots = &mut self.slots;
        let outstanding = slots.outstanding();
        self.rings.reap(max, outstanding, |c| match slots.remove(c.cid) {
            Some(f) => {
                let status = if f.expired { Status::ABORTED_BY_HOST } else { c.status() };
                on_complete(IoCompletion {
                    tag: f.tag,
                    buf: f.buf,
                    status,
                    dw0: c.dw0,
                    dw1: c.dw1,
                });
                true
            }
            // Unknown, stale or duplicate: QueuePair::reap reports it.
            None => false,
        })
    }

    /// The slow path of [`Self::poll`]: looks for expired commands and a failed device.
    /// Returns completions delivered.
    #[cold]
    fn check_deadlines(&mut self, now: u64, on_complete: &mut impl FnMut(IoCompletion)) -> usize {
        let csts = Csts(self.inner.regs.read32(offset::CSTS));
        if csts.is_all_ones() {
            self.inner
                .fail("device gone: register reads return all ones".into(), false);
            return self.recover(on_complete);
        }
        if csts.cfs() {
            self.start_reset(ResetReason::FatalStatus);
            return self.recover(on_complete);
        }
        // RDY = 0 while no reset is under way (a reset marks the controller Resetting
        // before it clears CC.EN): the controller stopped processing, and none of the
        // outstanding commands will complete. Waiting for their deadlines, then for an
        // Abort the controller cannot answer, only delays the reset.
        if !csts.rdy() && self.inner.health() == Health::Live {
            self.start_reset(ResetReason::ReadyLost);
            return self.recover(on_complete);
        }
        let expired = self.slots.iter().find(|(_, f)| now >= f.deadline && !f.expired);
        let Some((cid, already_aborted, opcode)) = expired.map(|(cid, f)| (cid, f.aborted, f.opcode)) else {
            return 0;
        };
        let qid = self.qid();
        let mut reaped = 0;
        if !already_aborted {
            self.inner.notify(RecoveryEvent::CommandTimedOut { qid, cid, opcode });
        }
        if already_aborted {
            // Its abort_timeout ran out: reset below.
        } else if self.inner.config.quirks_in_use().contains(Quirks::ABORT_NOOP) {
            // Abort would answer "not aborted" and change nothing: no Abort, no
            // abort_timeout. The command may be in the CQ already (a poll reaps at most
            // its `max`): look there before resetting.
            reaped = self.reap(usize::MAX, on_complete);
            if self.slots.get(cid).is_none() {
                return reaped;
            }
        } else {
            match self.inner.abort_command(qid, cid) {
                Ok(aborted) => {
                    self.inner.notify(RecoveryEvent::AbortSent { qid, cid, aborted });
                    // Aborted: its completion (Command Abort Requested) should arrive soon.
                    // Not aborted: the controller may have completed it meanwhile, or still
                    // be working on it. Either way it gets
                    // `abort_timeout` to show up before the controller is reset; look at the
                    // CQ again now.
                    if let Some(f) = self.slots.get_mut(cid) {
                        f.aborted = true;
                        f.deadline = now.saturating_add(self.abort_ticks);
                    }
                    return self.reap(usize::MAX, on_complete);
                }
                Err(e) => {
                    // The Abort itself failed (an admin timeout has already reset the
                    // controller, or it is failing): recover now.
                    tracing::warn!(qid, cid, error = %e, "Abort failed");
                    self.inner.notify(RecoveryEvent::AbortSent {
                        qid,
                        cid,
                        aborted: false,
                    });
                }
            }
        }
        self.start_reset(ResetReason::IoTimeout { qid, cid });
        reaped + self.recover(on_complete)
    }

    /// Gives up on the commands past their deadline (all of them for a fatal controller
    /// status) and resets the controller.
    fn start_reset(&mut self, reason: ResetReason) {
        let now = clock::now();
        let expire_all = matches!(reason, ResetReason::FatalStatus | ResetReason::ReadyLost);
        for f in self.slots.values_mut() {
            if expire_all || now >= f.deadline {
                f.expired = true;
            }
        }
        // On failure the controller is marked failed, which recover() handles.
        let _ = self.inner.reset(reason, self.generation);
    }

    /// Why a dead pair refuses commands: the controller's own failure (e.g. `device
    /// removed: ...`) when it failed, else what killed this pair.
    #[cold]
    fn dead_error(&self, reason: &'static str) -> Error {
        if self.inner.health() == Health::Failed {
            self.inner.failed_error()
        } else {
            Error::QueueDead {
                qid: self.qid(),
                reason,
            }
        }
    }

    /// After a reset or a failure: hands back what the CQ still holds, completes every
    /// other outstanding command with [`Status::ABORTED_BY_HOST`] exactly once, and
    /// creates the queues again (or marks the pair dead). Returns completions delivered.
    #[cold]
    fn recover(&mut self, on_complete: &mut impl FnMut(IoCompletion)) -> usize {
        if self.dead.is_some() {
            return 0;
        }
        let health = self.inner.health();
        if health == Health::Resetting {
            return 0; // another thread is resetting; come back later
        }
        let quiesced = health == Health::Live || self.inner.quiesced.load(Ordering::Acquire);
        // The controller was disabled (or is gone): the CQ no longer changes. Completions
        // it posted before that are real; everything else never finished.
        let mut n = if quiesced {
            self.reap(usize::MAX, on_complete)
        } else {
            0
        };
        while let Some((_, f)) = self.slots.pop_any() {
            // Memory a device may still be writing is never handed back.
            let buf = if quiesced {
                f.buf
            } else {
                std::mem::forget(f.buf);
                None
            };
            on_complete(IoCompletion {
                tag: f.tag,
                buf,
                status: Status::ABORTED_BY_HOST,
                dw0: 0,
                dw1: 0,
            });
            n += 1;
        }
        if health == Health::Failed {
            self.dead = Some("the controller failed");
            return n;
        }
        self.rings.reset();
        let entries = self.rings.entries();
        match self
            .inner
            .create_on_controller(self.qid(), entries, self.rings.sq_iova(), self.rings.cq_iova())
        {
            Ok(generation) => self.generation = generation,
            Err(failed) => {
                tracing::error!(qid = self.qid(), error = %failed.error, "could not re-create I/O queues after a reset");
                self.dead = Some("its queues could not be re-created after a reset");
                if failed.queues_may_exist {
                    // Drop must delete them (or keep their memory) as for a live pair.
                    self.generation = failed.generation;
                }
            }
        }
        n
    }

    // --- Typed submissions over a namespace ---

    fn blocks_of(ns: &Namespace, buf: &DmaBuf) -> Result<u64, Error> {
        let bs = ns.block_size as usize;
        if buf.is_empty() || buf.len() % bs != 0 {
            return Err(Error::BadLength {
                len: buf.len(),
                block_size: ns.block_size,
            });
        }
        Ok((buf.len() / bs) as u64)
    }

    fn submit_data(
        &mut self,
        ns: &Namespace,
        slba: u64,
        buf: DmaBuf,
        tag: u64,
        build: impl FnOnce(u32) -> Command,
    ) -> Result<(), IoError> {
        let checked = Self::blocks_of(ns, &buf).and_then(|blocks| ns.check_range(slba, blocks).map(|()| blocks));
        match checked {
            Ok(blocks) => self.submit(build(blocks as u32), Some(buf), tag),
            Err(e) => Err(refuse(e, Some(buf))),
        }
    }

    /// Reads `buf.len()` bytes (a whole number of blocks) from `slba`.
    ///
    /// Errors: [`Error::BadLength`], [`Error::LbaOutOfRange`], [`Error::TransferTooLarge`]
    /// before anything is sent; then as [`Self::submit`].
    pub fn read(&mut self, ns: &Namespace, slba: u64, buf: DmaBuf, tag: u64) -> Result<(), IoError> {
        self.submit_data(ns, slba, buf, tag, |n| ns.command(Op::Read { lba: slba }, n))
    }

    /// Writes `buf` (a whole number of blocks) at `slba`; `fua` asks for durability at
    /// completion (ignored by QEMU — use [`Self::flush`]).
    ///
    /// Errors: as [`Self::read`].
    pub fn write(&mut self, ns: &Namespace, slba: u64, buf: DmaBuf, fua: bool, tag: u64) -> Result<(), IoError> {
        self.submit_data(ns, slba, buf, tag, |n| ns.command(Op::Write { lba: slba, fua }, n))
    }

    /// Compares `buf` with the blocks at `slba`; a mismatch completes with Compare
    /// Failure (0x285).
    ///
    /// Errors: as [`Self::read`]; [`Error::Unsupported`] on a namespace with metadata,
    /// where Compare would need the metadata too.
    pub fn compare(&mut self, ns: &Namespace, slba: u64, buf: DmaBuf, tag: u64) -> Result<(), IoError> {
        if !ns.metadata.is_none() {
            let why = format!("Compare on namespace {} needs its metadata ({})", ns.nsid, ns.metadata);
            return Err(refuse(Error::Unsupported(why), Some(buf)));
        }
        self.submit_data(ns, slba, buf, tag, |n| ns.command(Op::Compare { lba: slba }, n))
    }

    /// Zone Append (ZNS 1.1 §3.4.1): writes `buf` (a whole number of blocks) at the write
    /// pointer of the zone that starts at `zslba`; the completion's
    /// [`IoCompletion::dw0_dw1`] is the first block written. The controller refuses it
    /// unless CC.CSS enabled the Zoned Namespace command set (Invalid Opcode) and `zslba`
    /// starts a zone (Invalid Field); a zone it does not fit fails with Zone Boundary
    /// Error (0x1B8), a full one with Zone Is Full (0x1B9).
    ///
    /// Errors: as [`Self::read`]; [`Error::Unsupported`] on a namespace with metadata.
    pub fn zone_append(&mut self, ns: &Namespace, zslba: u64, buf: DmaBuf, tag: u64) -> Result<(), IoError> {
        if !ns.metadata.is_none() {
            let why = format!("Zone Append on namespace {} with metadata ({})", ns.nsid, ns.metadata);
            return Err(refuse(Error::Unsupported(why), Some(buf)));
        }
        self.submit_data(ns, zslba, buf, tag, |n| Command::zone_append(ns.nsid, zslba, n))
    }

    /// Zone Management Send (ZNS 1.1 §3.4.3): `action` on the zone starting at `zslba`, or
    /// with `select_all` on every zone it applies to.
    ///
    /// Errors: [`Error::LbaOutOfRange`] if `zslba` is past the namespace; then as
    /// [`Self::submit`].
    pub fn zone_management_send(
        &mut self,
        ns: &Namespace,
        zslba: u64,
        action: crate::zns::ZoneAction,
        select_all: bool,
        tag: u64,
    ) -> Result<(), IoError> {
        if let Err(e) = ns.check_bounds(zslba, 1) {
            return Err(refuse(e, None));
        }
        self.submit(
            Command::zone_management_send(ns.nsid, zslba, action, select_all),
            None,
            tag,
        )
    }

    /// Zone Management Receive (ZNS 1.1 §3.4.2): a zone report into `buf` (its length a
    /// multiple of 4, at least 64 bytes) from the zone holding `slba`
    /// ([`crate::zns::ZoneReport::parse`]); see [`Command::zone_management_receive`] for
    /// `extended`, `filter` and `partial`.
    ///
    /// Errors: [`Error::LbaOutOfRange`]; [`Error::BadLength`] for a buffer of another size;
    /// then as [`Self::submit`].
    #[allow(clippy::too_many_arguments)]
    pub fn zone_management_receive(
        &mut self,
        ns: &Namespace,
        slba: u64,
        buf: DmaBuf,
        extended: bool,
        filter: u8,
        partial: bool,
        tag: u64,
    ) -> Result<(), IoError> {
        if let Err(e) = ns.check_bounds(slba, 1) {
            return Err(refuse(e, Some(buf)));
        }
        let len = u32::try_from(buf.len()).ok();
        match len.and_then(|l| Command::zone_management_receive(ns.nsid, slba, l, extended, filter, partial)) {
            Some(cmd) => self.submit(cmd, Some(buf), tag),
            None => Err(refuse(
                Error::BadLength {
                    len: buf.len(),
                    block_size: 4,
                },
                Some(buf),
            )),
        }
    }

    fn submit_range(
        &mut self,
        ns: &Namespace,
        slba: u64,
        blocks: u64,
        tag: u64,
        cmd: impl FnOnce(u32) -> Command,
    ) -> Result<(), IoError> {
        // No data moves, so MDTS does not apply; NLB's 16 bits do.
        let end_ok = slba.checked_add(blocks).is_some_and(|e| e <= ns.blocks);
        if blocks == 0 || !end_ok {
            return Err(refuse(
                Error::LbaOutOfRange {
                    nsid: ns.nsid,
                    slba,
                    blocks,
                    nsze: ns.blocks,
                },
                None,
            ));
        }
        if blocks > crate::cmd::MAX_BLOCKS_PER_COMMAND as u64 {
            return Err(refuse(
                Error::TransferTooLarge {
                    bytes: blocks as usize * ns.block_size as usize,
                    max: crate::cmd::MAX_BLOCKS_PER_COMMAND as usize * ns.block_size as usize,
                },
                None,
            ));
        }
        self.submit(cmd(blocks as u32), None, tag)
    }

    /// Verifies `blocks` blocks (1..=65536) at `slba` without transferring data.
    ///
    /// Errors: [`Error::LbaOutOfRange`], [`Error::TransferTooLarge`]; then as
    /// [`Self::submit`].
    pub fn verify(&mut self, ns: &Namespace, slba: u64, blocks: u64, tag: u64) -> Result<(), IoError> {
        self.submit_range(ns, slba, blocks, tag, |n| {
            ns.command(Op::Verify { lba: slba, blocks: n }, n)
        })
    }

    /// Zeroes `blocks` blocks (1..=65536) at `slba`; `deallocate` lets the controller
    /// deallocate them instead (DEAC).
    ///
    /// Errors: as [`Self::verify`].
    pub fn write_zeroes(
        &mut self,
        ns: &Namespace,
        slba: u64,
        blocks: u64,
        deallocate: bool,
        tag: u64,
    ) -> Result<(), IoError> {
        self.submit_range(ns, slba, blocks, tag, |n| {
            ns.command(
                Op::WriteZeroes {
                    lba: slba,
                    blocks: n,
                    deallocate,
                },
                n,
            )
        })
    }

    /// Flushes the namespace: every write completed before the flush is durable when it
    /// completes.
    ///
    /// Errors: as [`Self::submit`].
    pub fn flush(&mut self, ns: &Namespace, tag: u64) -> Result<(), IoError> {
        self.submit(Command::flush(ns.nsid), None, tag)
    }

    /// Deallocates the `(slba, blocks)` ranges with Dataset Management; the range list is
    /// written into `buf` (16 bytes per range, at most 256 ranges).
    ///
    /// Errors: [`Error::LbaOutOfRange`] for a range outside the namespace, or a block count
    /// above 2^32-1; [`Error::BadLength`] if `buf` cannot hold the list; then as
    /// [`Self::submit`].
    pub fn deallocate(
        &mut self,
        ns: &Namespace,
        ranges: &[(u64, u64)],
        mut buf: DmaBuf,
        tag: u64,
    ) -> Result<(), IoError> {
        let need = ranges.len() * DSM_RANGE_BYTES;
        if ranges.is_empty() || ranges.len() > MAX_DSM_RANGES || buf.capacity() < need {
            return Err(refuse(
                Error::BadLength {
                    len: buf.capacity(),
                    block_size: 16,
                },
                Some(buf),
            ));
        }
        for &(slba, blocks) in ranges {
            let fits =
                slba.checked_add(blocks).is_some_and(|e| e <= ns.blocks) && blocks > 0 && blocks <= u32::MAX as u64;
            if !fits {
                return Err(refuse(
                    Error::LbaOutOfRange {
                        nsid: ns.nsid,
                        slba,
                        blocks,
                        nsze: ns.blocks,
                    },
                    Some(buf),
                ));
            }
        }
        buf.set_window(0, need).expect("capacity checked");
        for (chunk, &(slba, blocks)) in buf.as_mut_slice().chunks_exact_mut(DSM_RANGE_BYTES).zip(ranges) {
            let range = DsmRange {
                context_attributes: 0,
                nlb: blocks as u32,
                slba,
            };
            chunk.copy_from_slice(&range.to_bytes());
        }
        let attrs = DsmAttributes {
            deallocate: true,
            ..Default::default()
        };
        self.submit(
            Command::dataset_management(ns.nsid, ranges.len(), attrs),
            Some(buf),
            tag,
        )
    }

    /// The MSI-X vector this pair's CQ signals, if it was created with interrupts
    /// ([`crate::ctrl::ControllerConfig::interrupts`]).
    pub fn interrupt_vector(&self) -> Option<u16> {
        self.irq.as_ref().map(|_| self.qid())
    }

    /// Has the host take this pair's interrupt on CPU `cpu`
    /// ([`crate::hw::InterruptVectors::steer`]): call it from the thread that uses the
    /// pair, pinned to `cpu`. Returns `false` when the pair has no interrupt vector.
    ///
    /// Errors: as [`crate::hw::InterruptVectors::steer`].
    pub fn steer_interrupt(&self, cpu: usize) -> std::io::Result<bool> {
        match &self.irq {
            Some(vectors) => vectors.steer(self.qid(), cpu).map(|()| true),
            None => Ok(false),
        }
    }

    /// How often [`Self::wait`] slept on the interrupt vector, and how often the vector
    /// woke it.
    pub fn sleep_counts(&self) -> SleepCounts {
        self.sleeps
    }

    /// Like [`Self::poll`], but when nothing completed and commands are outstanding, waits
    /// for a completion: on the CQ's interrupt vector when it has one (interrupt mode,
    /// the thread sleeps), else by polling again (spin). Returns how many completed (0
    /// only when nothing is outstanding, or `max` is 0). Deadlines are kept: a sleep ends
    /// by the next scan for expired commands (it lasts at least 100 µs; a whole scan
    /// interval while the controller resets), and the end of a reset or a failure of the
    /// controller wakes it
    /// ([`crate::hw::InterruptVectors::kick`]).
    ///
    /// Errors: a vector that cannot be waited on is logged once and the pair falls back to
    /// polling.
    pub fn wait(&mut self, max: usize, mut on_complete: impl FnMut(IoCompletion)) -> usize {
        if max == 0 {
            return self.poll(0, on_complete);
        }
        loop {
            let n = self.poll(max, &mut on_complete);
            if n > 0 || self.slots.is_idle() {
                return n;
            }
            // The signal count is consumed before the next poll reads the CQ, so a
            // completion posted from now on signals the vector again (the rule of
            // `InterruptVectors`): no wake-up is lost between the poll and the sleep.
            if let Some(vectors) = &self.irq {
                // While the controller resets, `poll` returns before its scan (the pair
                // can do nothing): sleep a whole scan interval then; the reset's end kicks.
                let ticks = if self.queues_current() {
                    self.next_scan.saturating_sub(clock::now())
                } else {
                    self.scan_ticks
                };
                let timeout = clock::duration_of(ticks).max(std::time::Duration::from_micros(100));
                match vectors.wait(self.qid(), timeout) {
                    Ok(woken) => {
                        self.sleeps.sleeps += 1;
                        self.sleeps.woken += woken as u64;
                    }
                    Err(e) => {
                        tracing::warn!(qid = self.qid(), error = %e,
                            "cannot wait on the completion queue's interrupt; polling instead");
                        self.irq = None;
                    }
                }
            }
        }
    }

    // --- Synchronous helpers: thin loops over submit + wait ---

    /// Submits one command built by `submit` and waits until it completes
    /// ([`Self::wait`]). The queue must be idle, so no other caller's completion is
    /// consumed here.
    ///
    /// Errors: [`Error::QueueBusy`] if commands are outstanding; the submission's error;
    /// or [`Error::Command`] with the completion status.
    pub fn wait_for(
        &mut self,
        submit: impl FnOnce(&mut Self) -> Result<(), IoError>,
    ) -> Result<Option<DmaBuf>, IoError> {
        self.complete_one(submit).map(|c| c.buf)
    }

    /// [`Self::wait_for`], giving back the whole completion (its DW0 and DW1 too: a Zone
    /// Append's LBA, a Zone Management Send's result).
    ///
    /// Errors: as [`Self::wait_for`].
    pub fn complete_one(
        &mut self,
        submit: impl FnOnce(&mut Self) -> Result<(), IoError>,
    ) -> Result<IoCompletion, IoError> {
        if !self.slots.is_idle() {
            return Err(refuse(Error::QueueBusy(self.outstanding()), None));
        }
        submit(self)?;
        let mut done = None;
        while done.is_none() {
            self.wait(1, |c| done = Some(c));
        }
        let c = done.expect("loop ends when set");
        match c.result() {
            Ok(()) => Ok(c),
            Err(status) => Err(refuse(
                Error::Command {
                    command: "I/O command",
                    status,
                },
                c.buf,
            )),
        }
    }

    /// Reads into `buf` from `slba` and waits. Returns the filled buffer.
    ///
    /// Errors: as [`Self::read`] and [`Self::wait_for`].
    pub fn read_at(&mut self, ns: &Namespace, slba: u64, buf: DmaBuf) -> Result<DmaBuf, IoError> {
        self.wait_for(|q| q.read(ns, slba, buf, 0))
            .map(|b| b.expect("read returns its buffer"))
    }

    /// Writes `buf` at `slba` and waits. Returns the buffer.
    ///
    /// Errors: as [`Self::write`] and [`Self::wait_for`].
    pub fn write_at(&mut self, ns: &Namespace, slba: u64, buf: DmaBuf) -> Result<DmaBuf, IoError> {
        self.wait_for(|q| q.write(ns, slba, buf, false, 0))
            .map(|b| b.expect("write returns its buffer"))
    }
}

impl<R: Registers> Drop for IoQueuePair<R> {
    fn drop(&mut self) {
        if let Err(e) = self.inner.delete_io_queue_pair(self.qid(), self.generation) {
            // The controller may still own the rings and outstanding buffers: keep their
            // memory (and the QID) until a reset makes the controller forget the queues,
            // rather than let the device write into freed memory.
            tracing::warn!(qid = self.qid(), error = %e, outstanding = self.outstanding(), "could not delete I/O queue pair");
            let mut buffers = Vec::with_capacity(self.outstanding() + 1);
            while let Some((_, f)) = self.slots.pop_any() {
                buffers.extend(f.buf);
            }
            let qid = self.qid();
            // SAFETY: each ManuallyDrop is taken exactly once, here; neither field is touched
            // again (Drop returns below, and ManuallyDrop fields are never dropped).
            let (rings, lists) = unsafe { (ManuallyDrop::take(&mut self.rings), ManuallyDrop::take(&mut self.lists)) };
            let (sq, cq) = rings.into_rings();
            buffers.push(lists);
            self.inner.adopt_orphan(super::Orphan { qid, sq, cq, buffers });
            return;
        }
        // `delete_io_queue_pair` returned Ok, so the controller no longer touches this
        // pair's memory: it deleted both queues, or a reset since `self.generation` made it
        // forget them (CSTS.RDY = 0 after CC.EN = 0), or it failed quiesced (disabled, or
        // Bus Master Enable cleared) and issues no DMA.
        // SAFETY: the controller no longer reads the SQ ring nor writes the CQ ring (above);
        // this is the only place they are dropped, and the field is not touched again.
        unsafe { ManuallyDrop::drop(&mut self.rings) };
        // SAFETY: as for the rings: the controller fetches and runs no command of this pair
        // any more, so it reads no PRP list page; dropped once, here.
        unsafe { ManuallyDrop::drop(&mut self.lists) };
    }
}
