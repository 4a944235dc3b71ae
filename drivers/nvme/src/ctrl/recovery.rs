//! Recovery: command deadlines, Abort, controller reset.
//!
//! Every command has a deadline. An I/O command past its deadline is aborted (Abort,
//! §5.1); the CQ is looked at again, and if the command still has not completed after
//! [`super::ControllerConfig::abort_timeout`] — whether the controller said it aborted it or
//! not — the controller is reset (at once, after one more look at the CQ, on a controller
//! with the [`crate::quirks::Quirks::ABORT_NOOP`] quirk). An admin command past its deadline (the reset then runs
//! under the admin lock, so no other command reuses memory the late command may write),
//! CSTS.CFS = 1, CSTS.RDY = 0 seen by a
//! queue pair while no reset runs, or a failed Abort also lead to a reset. Register reads
//! of all ones mean the device is gone: Bus Master Enable is cleared and the controller is
//! marked failed.
//!
//! A reset (§3.7.2, Controller Level Reset through CC.EN) runs the initialisation state
//! machine ([`super::InitState`]) from Disable: it disables the controller, which makes it
//! forget every queue and stop touching host memory, then brings the admin queue back and
//! re-sends Number of Queues, Doorbell Buffer Config (when shadow doorbells are in use),
//! asynchronous event configuration (with the Changed Namespace List read and the
//! requests) and the Timestamp. One the driver decides on runs in the thread that found
//! the problem, under the admin lock; [`ResetInProgress`] runs one without waiting. I/O
//! queue pairs notice the new generation on their next poll: they hand back completions
//! already in their CQ, complete every other outstanding command with
//! [`Status::ABORTED_BY_HOST`] — each exactly once — and create their queues again. The
//! data path only ever reads two atomics for this.

use super::admin::AdminQueue;
use super::init::{self, Backoff, InitState, Machine};
use super::{Error, Inner};
use crate::cmd::Command;
use crate::hw::Registers;
use crate::regs::{Cc, Csts, offset};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::task::{Poll, ready};

/// Why the controller is being reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// An I/O command passed its deadline and Abort did not complete it (or, with
    /// [`crate::quirks::Quirks::ABORT_NOOP`], none was sent).
    IoTimeout {
        /// Queue of the command.
        qid: u16,
        /// Its command identifier.
        cid: u16,
    },
    /// An admin command passed its deadline.
    AdminTimeout,
    /// The controller reported a fatal error (CSTS.CFS = 1).
    FatalStatus,
    /// CSTS.RDY went to 0 while the controller was enabled and working, without CSTS.CFS
    /// (§3.1.4: the controller no longer processes commands).
    ReadyLost,
    /// The caller asked for it ([`super::Controller::reset`]).
    Requested,
}

/// A step of recovery, reported to [`super::ControllerConfig::recovery_observer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryEvent {
    /// An I/O command passed its deadline.
    CommandTimedOut {
        /// Queue ID.
        qid: u16,
        /// Command identifier.
        cid: u16,
        /// Opcode.
        opcode: u8,
    },
    /// Abort was sent for a timed-out command; `aborted` is the controller's answer.
    AbortSent {
        /// Queue ID.
        qid: u16,
        /// Command identifier.
        cid: u16,
        /// Whether the controller says it aborted the command.
        aborted: bool,
    },
    /// A reset is about to disable the controller. Commands the device still holds are
    /// given up on from here.
    ResetStarting(ResetReason),
    /// The controller is ready again; I/O queue pairs re-create their queues.
    ResetDone {
        /// Resets so far, this one included.
        generation: u64,
    },
    /// Recovery failed, or the device is being removed; the controller is unusable.
    Failed {
        /// Why.
        reason: String,
    },
    /// The platform reported an uncorrectable PCI Express error of the device (Linux's
    /// AER or DPC recovery, relayed by VFIO's error interrupt:
    /// [`super::Controller::pci_error`]). After a fatal one Linux resets the link, and so
    /// the controller, behind the driver's back; the queue pairs then see CSTS.RDY = 0 and
    /// reset it.
    PciError {
        /// The PCI Express Device Status register read just after (PCIe Base 4.0,
        /// §7.5.3.5; bits 0-3: correctable, non-fatal, fatal, unsupported request
        /// detected), if it could be read and did not read all ones (link down).
        device_status: Option<u16>,
    },
}

/// A callback for [`RecoveryEvent`]s.
#[derive(Clone)]
pub struct RecoveryObserver(pub Arc<dyn Fn(&RecoveryEvent) + Send + Sync>);

impl fmt::Debug for RecoveryObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryObserver(..)")
    }
}

/// Controller health as the data path sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Health {
    /// Working.
    Live = 0,
    /// A reset is in progress.
    Resetting = 1,
    /// Unusable: the device is gone or did not come back from a reset.
    Failed = 2,
}

impl Health {
    pub(crate) fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Live,
            1 => Health::Resetting,
            _ => Health::Failed,
        }
    }
}

impl<R: Registers> Inner<R> {
    pub(crate) fn notify(&self, event: RecoveryEvent) {
        match &event {
            RecoveryEvent::Failed { reason } => tracing::error!(%reason, "nvme controller failed"),
            other => tracing::warn!(event = ?other, "nvme recovery"),
        }
        if let Some(observer) = &self.config.recovery_observer {
            (observer.0)(&event);
        }
    }

    pub(crate) fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Acquire))
    }

    /// Marks the controller failed for good. `disabled` says whether CSTS.RDY = 0 was seen
    /// after CC.EN = 0, so the device is known to have stopped touching host memory. If
    /// not (registers read all ones, the disable timed out), Bus Master Enable is cleared
    /// first, as Linux does; only if that works are buffers of unfinished commands handed
    /// back (`quiesced`), else they are leaked.
    ///
    /// Idempotent: once failed and quiesced, later calls change nothing (no configuration
    /// space write, no second report). Once failed but not quiesced, a later call tries to
    /// quiesce again and keeps the first reason.
    pub(crate) fn fail(&self, reason: String, disabled: bool) {
        let already_failed = self.health() == Health::Failed;
        if already_failed && self.quiesced.load(Ordering::Acquire) {
            tracing::debug!(%reason, "nvme controller already failed");
            return;
        }
        let quiesced = disabled
            || match self.regs.disable_bus_master() {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "the device may still DMA; buffers of unfinished commands will be leaked");
                    false
                }
            };
        self.quiesced.store(quiesced, Ordering::Release);
        {
            let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
            if failure.is_none() {
                *failure = Some(reason.clone());
            }
        }
        self.health.store(Health::Failed as u8, Ordering::Release);
        self.wake_sleepers();
        if !already_failed {
            self.notify(RecoveryEvent::Failed { reason });
        }
    }

    /// Wakes every I/O queue pair asleep on its interrupt vector
    /// ([`crate::hw::InterruptVectors::kick`]): a reset that ended (the pairs create their
    /// queues again) or the controller failing (their commands complete with an error)
    /// changes what they must do, and no interrupt announces it. A reset's start needs no
    /// kick: a pair can do nothing until it ends.
    pub(crate) fn wake_sleepers(&self) {
        if let Some(v) = &self.config.interrupts {
            for vector in 1..v.count() {
                v.kick(vector);
            }
        }
    }

    /// [`Error::ControllerFailed`] with the reason the controller failed.
    pub(crate) fn failed_error(&self) -> Error {
        Error::ControllerFailed(self.failure().unwrap_or_else(|| "controller failed".into()))
    }

    /// Why the controller failed, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Resets the controller unless another thread already did since `seen_generation`.
    ///
    /// Errors: the reset's own failure (the controller is then marked failed);
    /// [`Error::ControllerFailed`] if the controller had failed already, or failed while
    /// the reset ran (e.g. a queue pair saw its registers read all ones).
    pub(crate) fn reset(&self, reason: ResetReason, seen_generation: u64) -> Result<(), Error> {
        let mut admin = self.admin();
        self.reset_locked(&mut admin, reason, seen_generation)
    }

    /// [`Self::reset`] for a caller that holds the admin lock. Resets happen only under
    /// that lock, which makes them one at a time. Blocks: the state machine polled with
    /// short sleeps.
    pub(crate) fn reset_locked(
        &self,
        admin: &mut AdminQueue,
        reason: ResetReason,
        seen_generation: u64,
    ) -> Result<(), Error> {
        let _unwinding = FailOnUnwind(self, reason);
        let Some(mut machine) = self.begin_reset(reason, seen_generation)? else {
            return Ok(());
        };
        Backoff::block_on(&mut machine, |m| self.poll_reset(admin, m, reason), Machine::progress)
    }

    /// Ok, or why the controller failed.
    pub(crate) fn live(&self) -> Result<(), Error> {
        match self.health() {
            Health::Failed => Err(self.failed_error()),
            _ => Ok(()),
        }
    }

    /// Starts a reset under the admin lock the caller holds: `None` when another thread
    /// reset the controller since `seen_generation`; else the controller is marked
    /// resetting (the queue pairs leave their commands alone) and the state machine that
    /// [`Self::poll_reset`] drives is returned.
    ///
    /// Errors: [`Error::ControllerFailed`] if the controller had failed already, or is
    /// not live (a reset abandoned by a panic leaves it failed).
    fn begin_reset(&self, reason: ResetReason, seen_generation: u64) -> Result<Option<Machine>, Error> {
        if self.generation.load(Ordering::Acquire) != seen_generation {
            return Ok(None); // someone else reset it meanwhile
        }
        // fail() runs without the admin lock: a failure from now on stands.
        self.health
            .compare_exchange(
                Health::Live as u8,
                Health::Resetting as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map_err(|_| self.failed_error())?;
        self.notify(RecoveryEvent::ResetStarting(reason));
        Ok(Some(Machine::reset(
            self.cap,
            self.page_size,
            self.identify.clone(),
            self.io_queues,
        )))
    }

    /// One poll of a reset [`Self::begin_reset`] started: the state machine from
    /// [`super::InitState::Disable`] (disable, forget the queues and free the orphaned
    /// ones, program the admin queue, enable, Number of Queues, shadow doorbells,
    /// asynchronous events, Timestamp). When it ends, the new generation is published, or
    /// the controller is marked failed.
    ///
    /// Errors: the reset's own failure; [`Error::ControllerFailed`] if the controller
    /// failed while the reset ran (e.g. a queue pair saw its registers read all ones):
    /// the reset then stops at its next poll.
    fn poll_reset(
        &self,
        admin: &mut AdminQueue,
        machine: &mut Machine,
        reason: ResetReason,
    ) -> Poll<Result<(), Error>> {
        if self.health() == Health::Failed {
            // fail() decided what the device may still touch; waiting on it is pointless.
            return Poll::Ready(Err(self.failed_error()));
        }
        let release = || self.release_orphans();
        let mut cx = init::Cx {
            regs: &self.regs,
            dma: self.dma.as_ref(),
            config: &self.config,
            admin: init::AdminAccess::Controller(admin),
            shadow_in_use: self.shadow.as_ref(),
            on_disabled: &release,
        };
        Poll::Ready(match ready!(machine.poll(&mut cx)) {
            Ok(()) => {
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                // fail() runs without the admin lock (a queue pair that read all ones):
                // a failure during the reset stands, the reset's success does not undo it.
                let back = self.health.compare_exchange(
                    Health::Resetting as u8,
                    Health::Live as u8,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if back.is_err() {
                    return Poll::Ready(Err(self.failed_error()));
                }
                // Sleeping pairs create their queues again now, not at their next scan.
                self.wake_sleepers();
                self.notify(RecoveryEvent::ResetDone { generation });
                Ok(())
            }
            Err(failure) => {
                self.fail(
                    format!("reset after {reason:?} failed: {}", failure.error),
                    failure.disabled,
                );
                Err(failure.error)
            }
        })
    }

    /// [`super::Controller::removal_requested`]: under the admin lock, so after any reset
    /// or admin command under way, a normal shutdown (CC.SHN, so the controller writes
    /// back its volatile cache as before a power-off) and a disable (CC.EN = 0, CSTS.RDY = 0:
    /// the controller forgets its queues and stops touching memory), each skipped once the
    /// registers read all ones; then the controller is marked failed with `reason`.
    pub(crate) fn remove(&self, reason: String) {
        let admin = self.admin();
        let disabled = match self.health() {
            Health::Failed if self.quiesced.load(Ordering::Acquire) => true,
            // A controller that failed (a reset that did not bring it back, registers
            // reading all ones) gets no shutdown, which could only wait out its timeout.
            Health::Failed => disable(&self.regs, self.cap.ready_timeout()).is_ok(),
            _ => {
                // As during a reset: the queue pairs leave their commands alone, and do not
                // take the shutdown's CSTS.RDY = 0 for a controller to reset.
                let _ = self.health.compare_exchange(
                    Health::Live as u8,
                    Health::Resetting as u8,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
                if let Err(e) = self.shutdown() {
                    tracing::warn!(error = %e, "shutdown before the removal failed");
                }
                match disable(&self.regs, self.cap.ready_timeout()) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "disable before the removal failed");
                        false
                    }
                }
            }
        };
        // Still under the admin lock: a reset waiting for it must find the controller
        // failed, not enable it again.
        self.fail(reason, disabled);
        drop(admin);
    }

    /// Abort command `cid` on SQ `qid`; `Ok(true)` if the controller says it aborted it.
    pub(crate) fn abort_command(&self, qid: u16, cid: u16) -> Result<bool, Error> {
        let c = self.run_admin(Command::abort(qid, cid), super::admin::AdminData::None)?;
        Ok(c.dw0 & 1 == 0)
    }
}

/// Clears CC.EN and waits for CSTS.RDY = 0 within `timeout`: afterwards the controller has
/// forgotten every queue and touches no host memory (§3.7.2).
///
/// Errors: [`Error::Removed`] if registers read all ones; [`Error::ReadyTimeout`].
pub(crate) fn disable<R: Registers>(regs: &R, timeout: std::time::Duration) -> Result<(), Error> {
    let cc = Cc(regs.read32(offset::CC));
    if Csts(regs.read32(offset::CSTS)).is_all_ones() {
        return Err(Error::Removed { during: "disabling" });
    }
    regs.write32(offset::CC, cc.with_en(false).0);
    init::wait_ready(regs, false, timeout)
}

/// A controller reset under way ([`super::Controller::start_reset`]): holds the admin
/// lock until the reset ends, and never waits; [`Self::poll`] it to the end. Not
/// [`Send`]: polled on the thread that started it, where nothing may need this
/// controller's admin lock before the reset ends (an admin command, a queue pair of this
/// controller creating its queues again).
///
/// Dropping it unfinished finishes the reset first (blocking, up to CAP.TO per
/// CSTS.RDY wait and the admin timeout per command): a reset half done would leave the
/// controller disabled with its queue pairs waiting. While the thread unwinds from a
/// panic, the controller is marked failed instead (no waiting).
pub struct ResetInProgress<'a, R: Registers> {
    inner: &'a Inner<R>,
    /// The admin lock, released as soon as the reset ends.
    admin: Option<MutexGuard<'a, AdminQueue>>,
    reason: ResetReason,
    /// `None` once finished, or when there was nothing to do.
    machine: Option<Machine>,
    /// Why the reset could not start, until a poll reports it.
    refused: Option<Error>,
    /// The states the reset went through.
    trace: Vec<InitState>,
}

impl<'a, R: Registers> ResetInProgress<'a, R> {
    /// Takes the admin lock (waiting for an admin command or reset under way on another
    /// thread) and starts the reset: [`RecoveryEvent::ResetStarting`] is reported at
    /// once. Nothing is started when the controller has failed.
    pub(crate) fn start(inner: &'a Inner<R>, reason: ResetReason) -> ResetInProgress<'a, R> {
        let admin = inner.admin();
        let seen = inner.generation.load(Ordering::Acquire);
        let (machine, refused) = {
            // From here the controller is resetting; this value's Drop covers it next.
            let _unwinding = FailOnUnwind(inner, reason);
            match inner.begin_reset(reason, seen) {
                Ok(machine) => (machine, None),
                // A controller that failed already: nothing to do, poll says why.
                Err(e) => (None, Some(e)),
            }
        };
        ResetInProgress {
            inner,
            admin: machine.is_some().then_some(admin),
            reason,
            machine,
            refused,
            trace: Vec::new(),
        }
    }

    /// The state the reset is in: [`InitState::Ready`] once it ended, whether it
    /// succeeded or not ([`Self::poll`] says which), or when it never started because
    /// the controller had failed.
    pub fn state(&self) -> InitState {
        self.machine.as_ref().map_or(InitState::Ready, Machine::state)
    }

    /// [`Machine::progress`], for the pause between polls.
    pub(crate) fn progress(&self) -> (InitState, u32) {
        init::progress_of(self.machine.as_ref())
    }

    /// The states the reset has gone through, in order: the initialisation states from
    /// [`InitState::Disable`] on, without Identify Controller and the namespace scan.
    pub fn trace(&self) -> &[InitState] {
        self.machine.as_ref().map_or(&self.trace, Machine::trace)
    }

    /// Runs the reset's states that need no waiting; [`Poll::Pending`] while CSTS.RDY or
    /// an admin command is awaited. Never sleeps. Once ended (the admin lock is then
    /// released), later polls say whether the controller is working.
    ///
    /// Errors: the reset failed (the controller is then marked failed), or the
    /// controller had failed ([`Error::ControllerFailed`]).
    pub fn poll(&mut self) -> Poll<Result<(), Error>> {
        let (Some(machine), Some(admin)) = (self.machine.as_mut(), self.admin.as_mut()) else {
            return Poll::Ready(self.refused.take().map_or_else(|| self.inner.live(), Err));
        };
        let r = ready!(self.inner.poll_reset(admin, machine, self.reason));
        if let Some(m) = self.machine.take() {
            self.trace = m.into_trace();
        }
        self.admin = None;
        Poll::Ready(r)
    }

    /// Polls until the reset ends, sleeping between polls.
    ///
    /// Errors: as [`Self::poll`].
    pub fn wait(mut self) -> Result<(), Error> {
        Backoff::block_on(&mut self, ResetInProgress::poll, ResetInProgress::progress)
    }
}

impl<R: Registers> Drop for ResetInProgress<'_, R> {
    fn drop(&mut self) {
        if self.machine.is_none() {
            return;
        }
        if std::thread::panicking() {
            // Marks the controller failed, without waiting.
            drop(FailOnUnwind(self.inner, self.reason));
            return;
        }
        let _ = Backoff::block_on(self, ResetInProgress::poll, ResetInProgress::progress);
    }
}

/// Marks the controller failed if the thread unwinds from a panic while a reset runs
/// (a recovery observer's, or the driver's own): its health would otherwise stay
/// resetting, with every queue pair waiting. Does nothing when dropped otherwise.
struct FailOnUnwind<'a, R: Registers>(&'a Inner<R>, ResetReason);

impl<R: Registers> Drop for FailOnUnwind<'_, R> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let why = format!("a reset after {:?} was abandoned: its thread panicked", self.1);
            self.0.fail(why, false);
        }
    }
}
