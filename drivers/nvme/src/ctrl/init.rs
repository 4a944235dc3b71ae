//! Controller initialisation as an explicit, polled state machine.
//!
//! The order follows NVMe Base Specification 2.0, §3.5.1 ("Memory-based Controller
//! Initialization"): read CAP and VS; disable and wait for CSTS.RDY = 0; program the
//! admin queue (AQA, ASQ, ACQ); write CC (MPS, IOSQES = 6, IOCQES = 4, CSS, AMS) with
//! EN = 1 and wait for CSTS.RDY = 1 within CAP.TO; Identify Controller; Set Features
//! Number of Queues; Identify the active namespaces; configure asynchronous events and
//! keep requests outstanding; set the Timestamp.

use super::admin::{AdminData, AdminQueue, PendingAdmin};
use super::shadow::ShadowDoorbells;
use super::{Controller, ControllerConfig, Error, Namespace};
use crate::cmd::Command;
use crate::features::{AsyncEventConfig, FeatureId, NumberOfQueues, Timestamp};
use crate::hw::{DmaAllocator, Registers};
use crate::identify::{Cns, IdentifyController, IdentifyNamespace, NamespaceList, Oacs, Oncs};
use crate::log::LogPageId;
use crate::regs::{Aqa, Cap, Cc, Csts, MAX_ADMIN_QUEUE_ENTRIES, Vs, offset};

/// Smallest admin queue (entries) that takes asynchronous events: a queue of N entries
/// holds N − 1 commands, and at least one Asynchronous Event Request, the Get Log Page an
/// event leads to, and one synchronous command must fit at once.
pub(crate) const MIN_ADMIN_ENTRIES_WITH_EVENTS: u32 = 4;
use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::{Duration, Instant};

/// The states of controller initialisation, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitState {
    /// Read CAP and VS; check the NVM command set and the memory page size.
    ReadCapabilities,
    /// Clear CC.EN if set.
    Disable,
    /// Wait for CSTS.RDY = 0 within CAP.TO.
    WaitNotReady,
    /// Allocate the admin queues; write AQA, ASQ, ACQ.
    ConfigureAdminQueue,
    /// Write CC with the configuration and EN = 1.
    Enable,
    /// Wait for CSTS.RDY = 1 within CAP.TO.
    WaitReady,
    /// Identify Controller (CNS 01h).
    IdentifyController,
    /// Set Features Number of Queues; use min(asked, granted).
    SetNumberOfQueues,
    /// Doorbell Buffer Config, when asked for and the controller has it (OACS bit 8).
    ConfigureShadowDoorbells,
    /// Identify the active namespace list (CNS 02h) and each namespace (CNS 00h).
    IdentifyNamespaces,
    /// Set Features Asynchronous Event Configuration; send Asynchronous Event Requests.
    ConfigureAsyncEvents,
    /// Set Features Timestamp from the host clock.
    SetTimestamp,
    /// Initialisation is complete.
    Ready,
}

/// What initialisation found out; becomes the controller's state.
pub(crate) struct Initialized {
    pub(crate) cap: Cap,
    pub(crate) vs: Vs,
    pub(crate) page_size: usize,
    pub(crate) admin: AdminQueue,
    pub(crate) identify: IdentifyController,
    pub(crate) io_queues: u16,
    pub(crate) namespaces: Vec<Namespace>,
    pub(crate) max_transfer: usize,
    pub(crate) trace: Vec<InitState>,
    /// Shadow doorbells the controller took, if any.
    pub(crate) shadow: Option<ShadowDoorbells>,
}

/// Reads CSTS once: whether RDY equals `want`.
///
/// Errors: [`Error::Removed`] if CSTS reads all ones; [`Error::Fatal`] on CSTS.CFS while
/// waiting for RDY = 1.
fn ready_is<R: Registers>(regs: &R, want: bool) -> Result<bool, Error> {
    let csts = Csts(regs.read32(offset::CSTS));
    if csts.is_all_ones() {
        return Err(Error::Removed {
            during: "waiting for CSTS.RDY",
        });
    }
    if want && !csts.rdy() && csts.cfs() {
        return Err(Error::Fatal {
            during: "while enabling",
        });
    }
    Ok(csts.rdy() == want)
}

/// Polls CSTS until RDY equals `want`, CFS appears, the device vanishes, or `timeout`,
/// sleeping in between: for the blocking paths (shutdown's disable, removal).
pub(crate) fn wait_ready<R: Registers>(regs: &R, want: bool, timeout: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    let mut pause = Backoff::default();
    loop {
        if ready_is(regs, want)? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::ReadyTimeout { want, timeout });
        }
        pause.sleep();
    }
}

/// The pause between polls of something that is not done: 10 µs, doubling up to 1 ms,
/// so a command that completes at once costs little and a wait of seconds (CAP.TO)
/// costs a poll per millisecond.
#[derive(Debug)]
pub(crate) struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff(Duration::from_micros(10))
    }
}

impl Backoff {
    /// Polls `poll` on `task` until it is ready, sleeping between polls; the pause starts
    /// again from 10 µs whenever `progress` (a state) changes.
    pub(crate) fn block_on<S, T, P: PartialEq>(
        task: &mut S,
        mut poll: impl FnMut(&mut S) -> Poll<T>,
        progress: impl Fn(&S) -> P,
    ) -> T {
        let mut pause = Backoff::default();
        loop {
            let before = progress(task);
            if let Poll::Ready(v) = poll(task) {
                return v;
            }
            if progress(task) != before {
                pause = Backoff::default();
            }
            pause.sleep();
        }
    }

    /// Sleeps for the current pause and doubles it.
    pub(crate) fn sleep(&mut self) {
        std::thread::sleep(self.0);
        self.0 = (self.0 * 2).min(Duration::from_millis(1));
    }
}

/// Writes AQA, ASQ and ACQ for `admin` (the controller must be disabled).
pub(crate) fn program_admin_queue<R: Registers>(regs: &R, admin: &AdminQueue) {
    let entries = admin.entries() as u16;
    regs.write32(offset::AQA, Aqa::new(entries, entries).0);
    regs.write64(offset::ASQ, admin.sq_iova());
    regs.write64(offset::ACQ, admin.cq_iova());
}

/// CC for every I/O command set the controller supports (`cap`'s
/// [`Cap::command_set_selection`]: the NVM command set alone, or with the Zoned Namespace
/// one), round robin, 64-byte SQEs, 16-byte CQEs, memory page `page_size` bytes, and
/// EN = 1.
pub(crate) fn enabled_cc(cap: Cap, page_size: usize) -> Cc {
    let mps = (page_size.trailing_zeros() - 12) as u8;
    Cc(0)
        .with_css(cap.command_set_selection())
        .with_mps(mps)
        .with_ams(0)
        .with_iosqes(6)
        .with_iocqes(4)
        .with_en(true)
}

/// OAES bit 8: the controller sends Namespace Attribute Notices.
const OAES_NAMESPACE_ATTRIBUTE: u32 = 1 << 8;
/// OAES bit 9: the controller sends Firmware Activation Notices.
const OAES_FIRMWARE_ACTIVATION: u32 = 1 << 9;

/// Why the state machine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// First bring-up: every state, allocating the admin queue and shadow doorbells.
    Init,
    /// A reset of a working controller (§3.7.2): from [`InitState::Disable`], on the
    /// controller's own admin queue and shadow doorbells. Identify Controller and the
    /// namespace scan are skipped (what the controller handle reports does not change
    /// under its users; the admin queue rescans the namespaces at its next poll), and
    /// the controller must grant at least the `io_queues` I/O queues in use and take
    /// the shadow doorbells again.
    Reset {
        /// I/O queue pairs the controller handle hands out.
        io_queues: u16,
    },
}

/// The admin queue a step works on.
pub(crate) enum AdminAccess<'a> {
    /// Init's own: empty until [`InitState::ConfigureAdminQueue`] allocates it.
    Own(&'a mut Option<AdminQueue>),
    /// A reset's: the controller's, under its admin lock.
    Controller(&'a mut AdminQueue),
}

impl AdminAccess<'_> {
    fn get(&mut self) -> &mut AdminQueue {
        match self {
            AdminAccess::Own(q) => q.as_mut().expect("admin queue exists after ConfigureAdminQueue"),
            AdminAccess::Controller(q) => q,
        }
    }
}

/// What a step of the state machine works with besides its own state.
pub(crate) struct Cx<'a, R: Registers> {
    pub(crate) regs: &'a R,
    pub(crate) dma: &'a dyn DmaAllocator,
    pub(crate) config: &'a ControllerConfig,
    pub(crate) admin: AdminAccess<'a>,
    /// A reset's shadow doorbells in use (the controller's), handed over again.
    pub(crate) shadow_in_use: Option<&'a ShadowDoorbells>,
    /// Runs once a reset has seen CSTS.RDY = 0, before the admin queue is programmed
    /// again: the controller has forgotten every queue, so their memory may be reused.
    pub(crate) on_disabled: &'a dyn Fn(),
}

/// Why the state machine stopped short of [`InitState::Ready`].
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    /// Whether the controller is known to touch no queue memory: it was seen disabled
    /// (CC.EN = 0, CSTS.RDY = 0) after the failure, or the failure came after that was
    /// seen and before CC.EN = 1 was written again. False when disabling failed (in
    /// [`InitState::Disable`] or [`InitState::WaitNotReady`], a reset's first ones
    /// included). A failure after [`InitState::Enable`] disables the controller again
    /// (through those two states) before it is reported.
    pub(crate) disabled: bool,
}

/// The initialisation state machine ([`InitState`]), for a bring-up or a reset. Never
/// waits: [`Machine::poll`] runs the states it can and returns [`Poll::Pending`] while
/// CSTS.RDY has not followed CC.EN or an admin command has not completed, so one thread
/// can drive several controllers.
pub(crate) struct Machine {
    purpose: Purpose,
    state: InitState,
    trace: Vec<InitState>,
    cap: Cap,
    vs: Vs,
    page_size: usize,
    identify: Option<IdentifyController>,
    io_queues: u16,
    namespaces: Vec<Namespace>,
    max_transfer: usize,
    /// Shadow doorbells init allocated and the controller took.
    shadow: Option<ShadowDoorbells>,
    /// When the CSTS.RDY wait of the current state gives up (set on its first poll).
    deadline: Option<Instant>,
    /// The admin command the current state waits for.
    pending: Option<PendingAdmin>,
    /// The current state's next admin command, for states that send several.
    part: u8,
    /// Namespaces still to identify.
    nsids: VecDeque<u32>,
    /// Whether this run wrote CC.EN = 1.
    enabled: bool,
    /// A failure being reported once the controller is disabled again.
    failure: Option<Error>,
    /// Admin commands completed so far: with the state, what tells a poll that moved on.
    completed: u32,
}

impl Machine {
    /// A bring-up, from [`InitState::ReadCapabilities`], with `page_size` (CC.MPS).
    pub(crate) fn init(page_size: usize) -> Machine {
        Machine::new(Purpose::Init, InitState::ReadCapabilities, Cap(0), page_size, None)
    }

    /// A reset of the controller init described (CAP, page size, Identify Controller)
    /// with `io_queues` pairs in use, from [`InitState::Disable`]. VS and the maximum
    /// transfer are read only by the states a reset skips.
    pub(crate) fn reset(cap: Cap, page_size: usize, identify: IdentifyController, io_queues: u16) -> Machine {
        Machine::new(
            Purpose::Reset { io_queues },
            InitState::Disable,
            cap,
            page_size,
            Some(identify),
        )
    }

    fn new(
        purpose: Purpose,
        first: InitState,
        cap: Cap,
        page_size: usize,
        identify: Option<IdentifyController>,
    ) -> Machine {
        let mut trace = Vec::with_capacity(16);
        trace.push(first);
        Machine {
            purpose,
            state: first,
            trace,
            cap,
            vs: Vs(0),
            page_size,
            identify,
            io_queues: 0,
            namespaces: Vec::new(),
            max_transfer: 0,
            shadow: None,
            deadline: None,
            pending: None,
            part: 0,
            nsids: VecDeque::new(),
            enabled: false,
            failure: None,
            completed: 0,
        }
    }

    /// The state the machine is in.
    pub(crate) fn state(&self) -> InitState {
        self.state
    }

    /// The states entered so far, in order.
    pub(crate) fn trace(&self) -> &[InitState] {
        &self.trace
    }

    /// [`Self::trace`], once the machine is no longer needed.
    pub(crate) fn into_trace(self) -> Vec<InitState> {
        self.trace
    }

    /// The state and the admin commands completed: changes whenever a poll moved on,
    /// also inside a state that sends several commands.
    pub(crate) fn progress(&self) -> (InitState, u32) {
        (self.state, self.completed)
    }

    /// Runs states until one has to wait ([`Poll::Pending`]: call again), the machine is
    /// [`InitState::Ready`], or a state failed. Never sleeps. After a failure past
    /// [`InitState::Enable`] it first disables the controller again (the failure is then
    /// reported when CSTS.RDY = 0 is seen, or when that fails too).
    pub(crate) fn poll<R: Registers>(&mut self, cx: &mut Cx<'_, R>) -> Poll<Result<(), Failure>> {
        loop {
            if self.state == InitState::Ready {
                return Poll::Ready(Ok(()));
            }
            match self.step(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(next)) => {
                    if next == InitState::ConfigureAdminQueue
                        && let Some(error) = self.failure.take()
                    {
                        // Disabled again after the failure.
                        return Poll::Ready(Err(Failure { error, disabled: true }));
                    }
                    self.enter(next);
                }
                Poll::Ready(Err(error)) => {
                    self.pending = None;
                    if let Some(first) = self.failure.take() {
                        tracing::warn!(%error, "disabling the controller after a failed step failed too");
                        return Poll::Ready(Err(Failure {
                            error: first,
                            disabled: false,
                        }));
                    }
                    if !self.enabled {
                        let disabled = !matches!(self.state, InitState::Disable | InitState::WaitNotReady);
                        return Poll::Ready(Err(Failure { error, disabled }));
                    }
                    // Enabled, maybe with an admin command outstanding: disable it before
                    // anyone may free memory.
                    tracing::debug!(state = ?self.state, %error, "controller init step failed; disabling it");
                    self.enabled = false;
                    self.failure = Some(error);
                    self.enter(InitState::Disable);
                }
            }
        }
    }

    fn enter(&mut self, state: InitState) {
        tracing::debug!(?state, purpose = ?self.purpose, "nvme controller init");
        self.state = state;
        self.trace.push(state);
        self.deadline = None;
        self.part = 0;
    }

    /// What the machine found out, once [`InitState::Ready`]; `admin` is the queue init
    /// allocated.
    pub(crate) fn finish(self, admin: AdminQueue) -> Initialized {
        debug_assert_eq!(self.state, InitState::Ready);
        Initialized {
            cap: self.cap,
            vs: self.vs,
            page_size: self.page_size,
            admin,
            identify: self.identify.expect("set in IdentifyController"),
            io_queues: self.io_queues,
            namespaces: self.namespaces,
            max_transfer: self.max_transfer,
            trace: self.trace,
            shadow: self.shadow,
        }
    }

    /// Shadow doorbells init allocated, taken back after a failure (the controller may
    /// have them until it is disabled).
    pub(crate) fn take_shadow(&mut self) -> Option<ShadowDoorbells> {
        self.shadow.take()
    }

    fn is_reset(&self) -> bool {
        matches!(self.purpose, Purpose::Reset { .. })
    }

    /// One state: its next state, or [`Poll::Pending`] while it waits.
    fn step<R: Registers>(&mut self, cx: &mut Cx<'_, R>) -> Poll<Result<InitState, Error>> {
        Poll::Ready(Ok(match self.state {
            InitState::ReadCapabilities => {
                self.read_capabilities(cx)?;
                InitState::Disable
            }
            InitState::Disable => {
                if Csts(cx.regs.read32(offset::CSTS)).is_all_ones() {
                    return Poll::Ready(Err(Error::Removed { during: "disabling" }));
                }
                let cc = Cc(cx.regs.read32(offset::CC));
                if cc.en() {
                    cx.regs.write32(offset::CC, cc.with_en(false).0);
                }
                InitState::WaitNotReady
            }
            InitState::WaitNotReady => {
                ready!(self.wait_ready(cx.regs, false))?;
                InitState::ConfigureAdminQueue
            }
            InitState::ConfigureAdminQueue => {
                self.configure_admin_queue(cx)?;
                InitState::Enable
            }
            InitState::Enable => {
                cx.regs.write32(offset::CC, enabled_cc(self.cap, self.page_size).0);
                self.enabled = true;
                InitState::WaitReady
            }
            InitState::WaitReady => {
                ready!(self.wait_ready(cx.regs, true))?;
                if self.is_reset() {
                    InitState::SetNumberOfQueues
                } else {
                    InitState::IdentifyController
                }
            }
            InitState::IdentifyController => {
                let cmd = Command::identify(Cns::CONTROLLER, 0, 0);
                ready!(self.command(cx, cmd, AdminData::FromDevice(4096)))?;
                self.identified_controller(cx)?;
                InitState::SetNumberOfQueues
            }
            InitState::SetNumberOfQueues => {
                ready!(self.set_number_of_queues(cx))?;
                InitState::ConfigureShadowDoorbells
            }
            InitState::ConfigureShadowDoorbells => {
                ready!(self.configure_shadow_doorbells(cx))?;
                if self.is_reset() {
                    InitState::ConfigureAsyncEvents
                } else {
                    InitState::IdentifyNamespaces
                }
            }
            InitState::IdentifyNamespaces => {
                ready!(self.identify_namespaces(cx))?;
                InitState::ConfigureAsyncEvents
            }
            InitState::ConfigureAsyncEvents => {
                if cx.config.async_events {
                    ready!(self.configure_async_events(cx))?;
                }
                InitState::SetTimestamp
            }
            InitState::SetTimestamp => {
                let supported = self
                    .identify
                    .as_ref()
                    .is_some_and(|id| id.oncs.contains(Oncs::TIMESTAMP));
                if cx.config.set_timestamp && supported {
                    let bytes = Timestamp::from_system_time(std::time::SystemTime::now()).encode();
                    let cmd = Command::set_features(FeatureId::TIMESTAMP, 0, 0, false);
                    match ready!(self.command(cx, cmd, AdminData::ToDevice(&bytes))) {
                        Ok(_) => {}
                        // As Linux: the controller works without it.
                        Err(e @ Error::Command { .. }) => tracing::warn!(error = %e, "setting the Timestamp failed"),
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                InitState::Ready
            }
            InitState::Ready => InitState::Ready,
        }))
    }

    /// Whether CSTS.RDY equals `want`, within CAP.TO of the state's first poll.
    fn wait_ready<R: Registers>(&mut self, regs: &R, want: bool) -> Poll<Result<(), Error>> {
        let timeout = self.cap.ready_timeout();
        let deadline = *self.deadline.get_or_insert_with(|| Instant::now() + timeout);
        if ready_is(regs, want)? {
            return Poll::Ready(Ok(()));
        }
        if Instant::now() >= deadline {
            return Poll::Ready(Err(Error::ReadyTimeout { want, timeout }));
        }
        Poll::Pending
    }

    /// Sends `cmd` on the first poll, then gives its completion once it arrives (or its
    /// failure: a status, the admin timeout, CSTS.CFS, the device gone).
    fn command<R: Registers>(
        &mut self,
        cx: &mut Cx<'_, R>,
        cmd: Command,
        data: AdminData<'_>,
    ) -> Poll<Result<crate::Completion, Error>> {
        let admin = cx.admin.get();
        let pending = match self.pending.take() {
            Some(p) => p,
            None => admin.submit(cx.regs, cmd, data, cx.config.admin_timeout)?,
        };
        match admin.poll_command(cx.regs, &pending, true) {
            Poll::Ready(r) => {
                self.completed += 1;
                Poll::Ready(r)
            }
            Poll::Pending => {
                self.pending = Some(pending);
                Poll::Pending
            }
        }
    }

    fn read_capabilities<R: Registers>(&mut self, cx: &Cx<'_, R>) -> Result<(), Error> {
        let cap = Cap(cx.regs.read64(offset::CAP));
        if cap.0 == u64::MAX {
            return Err(Error::Removed { during: "reading CAP" });
        }
        self.cap = cap;
        self.vs = Vs(cx.regs.read32(offset::VS));
        if !cap.supports_nvm_command_set() {
            return Err(Error::Unsupported(format!(
                "no NVM command set (CAP.CSS = {:#x})",
                cap.css()
            )));
        }
        let ps = self.page_size;
        if !ps.is_power_of_two() || ps < cap.min_page_size() || ps > cap.max_page_size() {
            return Err(Error::Config(format!(
                "page size {ps} bytes is outside the controller's {}..={} (CAP.MPSMIN..MPSMAX)",
                cap.min_page_size(),
                cap.max_page_size()
            )));
        }
        // Every ring, PRP list page and admin buffer must start on a memory page boundary
        // (§3.3.1, §4.1.1), and the allocator only promises its own alignment. Larger
        // pages buy nothing here (large transfers use SGLs), so they are refused rather
        // than paid for with over-allocation.
        let align = cx.dma.page_size();
        if ps > align {
            return Err(Error::Config(format!(
                "page size {ps} bytes is larger than the {align}-byte alignment of the DMA allocator; \
                 queues would not be aligned to a memory page (CC.MPS): use a page size of {align} bytes"
            )));
        }
        Ok(())
    }

    /// Init allocates the admin queue; a reset empties the controller's (the controller
    /// is disabled: it has forgotten it). Both program AQA, ASQ and ACQ.
    fn configure_admin_queue<R: Registers>(&mut self, cx: &mut Cx<'_, R>) -> Result<(), Error> {
        if let AdminAccess::Own(slot) = &mut cx.admin {
            let config = cx.config;
            let entries = config
                .admin_queue_entries
                .min(MAX_ADMIN_QUEUE_ENTRIES as u32)
                .min(self.cap.max_queue_entries());
            if entries < 2 {
                return Err(Error::Config(format!(
                    "admin queue of {entries} entries; at least 2 needed"
                )));
            }
            if config.async_events && entries < MIN_ADMIN_ENTRIES_WITH_EVENTS {
                return Err(Error::Config(format!(
                    "admin queue of {entries} entries (asked {}, CAP.MQES allows {}) is too small for \
                     asynchronous events: an Asynchronous Event Request, an event's log page read and a \
                     synchronous command need {MIN_ADMIN_ENTRIES_WITH_EVENTS} entries; use more entries \
                     or set async_events to false",
                    config.admin_queue_entries,
                    self.cap.max_queue_entries()
                )));
            }
            **slot = Some(AdminQueue::new(cx.dma, self.cap, entries, self.page_size)?);
        } else {
            // CSTS.RDY = 0: the controller has forgotten every queue and no longer touches
            // host memory. From here memory is safe to reuse.
            cx.admin.get().reset_rings();
            (cx.on_disabled)();
        }
        program_admin_queue(cx.regs, cx.admin.get());
        Ok(())
    }

    fn identified_controller<R: Registers>(&mut self, cx: &mut Cx<'_, R>) -> Result<(), Error> {
        let id = IdentifyController::parse(cx.admin.get().data(4096))?;
        let mdts = id
            .max_transfer_bytes(self.cap.min_page_size() as u64)
            .unwrap_or(u64::MAX);
        self.max_transfer = (cx.config.max_transfer_bytes as u64).min(mdts) as usize;
        if self.max_transfer < self.page_size {
            return Err(Error::Unsupported(format!(
                "maximum transfer of {} bytes is below one page",
                self.max_transfer
            )));
        }
        tracing::info!(vid = id.vid, model = %id.mn, serial = %id.sn, firmware = %id.fr, version = %self.vs, "nvme controller identified");
        self.identify = Some(id);
        Ok(())
    }

    /// Set Features Number of Queues asking for the configured SQ/CQ pairs; keeps
    /// min(asked, granted). A reset fails if fewer than the pairs in use are granted.
    fn set_number_of_queues<R: Registers>(&mut self, cx: &mut Cx<'_, R>) -> Poll<Result<(), Error>> {
        let asked = NumberOfQueues {
            sq: cx.config.io_queues.max(1),
            cq: cx.config.io_queues.max(1),
        };
        let cmd = Command::set_features(FeatureId::NUMBER_OF_QUEUES, 0, asked.to_dw11(), false);
        let done = ready!(self.command(cx, cmd, AdminData::None))?;
        let granted = NumberOfQueues::granted(asked, done.dw0);
        let granted = granted.sq.min(granted.cq);
        if let Purpose::Reset { io_queues } = self.purpose
            && granted < io_queues
        {
            return Poll::Ready(Err(Error::Unsupported(format!(
                "after reset the controller grants {granted} I/O queues, fewer than the {io_queues} in use"
            ))));
        }
        self.io_queues = granted;
        Poll::Ready(Ok(()))
    }

    /// Doorbell Buffer Config (§5.8), before any I/O queue exists, with zeroed pages.
    /// Init: when asked for and OACS bit 8 says the controller has it; pages that cannot
    /// be used or a controller that refuses the command leave the doorbell registers in
    /// use (a warning). A reset hands the pages in use over again, and a refusal fails it:
    /// the queue pairs rely on them.
    fn configure_shadow_doorbells<R: Registers>(&mut self, cx: &mut Cx<'_, R>) -> Poll<Result<(), Error>> {
        if let Some(shadow) = cx.shadow_in_use {
            if self.pending.is_none() {
                shadow.clear();
            }
            return self.command(cx, shadow.command(), AdminData::None).map_ok(drop);
        }
        if self.is_reset() {
            return Poll::Ready(Ok(()));
        }
        if self.pending.is_none() {
            let supported = self
                .identify
                .as_ref()
                .is_some_and(|id| id.oacs.contains(Oacs::DOORBELL_BUFFER_CONFIG));
            if !cx.config.shadow_doorbells || !supported {
                return Poll::Ready(Ok(()));
            }
            match ShadowDoorbells::allocate(cx.dma, self.page_size, self.cap, self.io_queues) {
                Ok(s) => {
                    s.clear();
                    self.shadow = Some(s);
                }
                Err(Error::Unsupported(why)) => {
                    tracing::warn!(%why, "not using shadow doorbells");
                    return Poll::Ready(Ok(()));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let cmd = self.shadow.as_ref().expect("allocated above").command();
        match ready!(self.command(cx, cmd, AdminData::None)) {
            Ok(_) => Poll::Ready(Ok(())),
            Err(e @ Error::Command { .. }) => {
                tracing::warn!(error = %e, "controller refused Doorbell Buffer Config; not using shadow doorbells");
                self.shadow = None;
                Poll::Ready(Ok(()))
            }
            // It may still take the pages: they stay until it is disabled.
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// The active namespace list (CNS 02h, from NVMe 1.1 on; NSIDs 1..=NN before), then
    /// Identify Namespace (CNS 00h) for each; a namespace the controller refuses to
    /// describe is skipped.
    fn identify_namespaces<R: Registers>(&mut self, cx: &mut Cx<'_, R>) -> Poll<Result<(), Error>> {
        if self.part == 0 {
            if self.vs >= Vs::new(1, 1, 0) {
                let cmd = Command::identify(Cns::ACTIVE_NAMESPACE_LIST, 0, 0);
                ready!(self.command(cx, cmd, AdminData::FromDevice(4096)))?;
                self.nsids = NamespaceList::parse(cx.admin.get().data(4096))?.into();
            } else {
                let nn = self.identify.as_ref().map_or(0, |id| id.nn);
                self.nsids = (1..=nn.min(1024)).collect();
            }
            self.part = 1;
        }
        while let Some(&nsid) = self.nsids.front() {
            let cmd = Command::identify(Cns::NAMESPACE, nsid, 0);
            let done = ready!(self.command(cx, cmd, AdminData::FromDevice(4096)));
            self.nsids.pop_front();
            if let Err(e) = done {
                super::namespace::skip_refused(nsid, e)?;
                continue;
            }
            let id = IdentifyNamespace::parse(cx.admin.get().data(4096))?;
            let ctrl = self.identify.as_ref().expect("identified");
            match Namespace::new(nsid, id, ctrl, self.max_transfer, cx.config.quirks_in_use()) {
                Some(ns) => self.namespaces.push(ns),
                None => tracing::warn!(nsid, "skipping inactive namespace or one with an unusable LBA format"),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Asynchronous Event Configuration (§5.27.1.7): SMART / Health critical warnings, and
    /// the notices Identify Controller's OAES says the controller sends (namespace
    /// attribute, firmware activation). With namespace attribute notices, then reads the
    /// Changed Namespace List (log 04h, RAE clear): a controller reports a namespace again
    /// only once that log was read, so a change whose event a controller reset lost would
    /// otherwise silence later changes of the same namespace (QEMU 7.2 keeps the list
    /// across resets). Then min(AERL + 1, 4) Asynchronous Event Requests.
    fn configure_async_events<R: Registers>(&mut self, cx: &mut Cx<'_, R>) -> Poll<Result<(), Error>> {
        let id = self.identify.as_ref().expect("identified before asynchronous events");
        let (oaes, aerl) = (id.oaes, id.aerl);
        let mut aec = AsyncEventConfig::SMART_CRITICAL_WARNINGS;
        if oaes & OAES_NAMESPACE_ATTRIBUTE != 0 {
            aec |= AsyncEventConfig::NAMESPACE_ATTRIBUTE;
        }
        if oaes & OAES_FIRMWARE_ACTIVATION != 0 {
            aec |= AsyncEventConfig::FIRMWARE_ACTIVATION;
        }
        if self.part == 0 {
            let cmd = Command::set_features(FeatureId::ASYNC_EVENT_CONFIG, 0, aec.bits(), false);
            ready!(self.command(cx, cmd, AdminData::None))?;
            self.part = 1;
        }
        if self.part == 1 && aec.contains(AsyncEventConfig::NAMESPACE_ATTRIBUTE) {
            let cmd = Command::get_log_page(LogPageId::CHANGED_NAMESPACE_LIST, super::NSID_ALL, 0, 4096, 0, false)
                .expect("4096 is a multiple of 4");
            match ready!(self.command(cx, cmd, AdminData::FromDevice(4096))) {
                Ok(_) => {}
                // A controller that refuses the log still works; its events may stay masked.
                Err(e) if e.status().is_some() => {
                    tracing::warn!(error = %e, "reading the Changed Namespace List failed");
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.part = 2;
        let timeout = cx.config.admin_timeout;
        Poll::Ready(
            cx.admin
                .get()
                .start_async_events(cx.regs, (aerl as u32 + 1).min(4), timeout),
        )
    }
}

/// A controller being brought up without blocking: [`Controller::init`], one
/// [`ControllerInit::poll`] at a time, so one thread can bring up several controllers
/// at once ([`init_all`]): their CAP.TO waits and admin commands overlap.
///
/// Dropping one before it finished disables the controller (waiting up to CAP.TO) and
/// frees its admin queue, or leaks that memory if the controller does not stop; while
/// the thread unwinds from a panic it leaks the memory without waiting.
pub struct ControllerInit<R: Registers> {
    /// Taken when the controller is handed out.
    regs: Option<R>,
    dma: Arc<dyn DmaAllocator>,
    config: ControllerConfig,
    admin: Option<AdminQueue>,
    /// Taken when the controller is handed out.
    machine: Option<Machine>,
}

impl<R: Registers> ControllerInit<R> {
    /// Starts bringing up the controller behind `regs`, with queue memory from `dma`.
    /// Nothing touches the device before the first [`Self::poll`].
    pub fn new(regs: R, dma: Arc<dyn DmaAllocator>, config: ControllerConfig) -> ControllerInit<R> {
        let machine = Machine::init(config.page_size);
        ControllerInit {
            regs: Some(regs),
            dma,
            config,
            admin: None,
            machine: Some(machine),
        }
    }

    /// The state bring-up is in: [`InitState::Ready`] once the controller was handed
    /// out; after a failure, the last state entered (after a failure past
    /// [`InitState::Enable`], the [`InitState::WaitNotReady`] of disabling it again).
    pub fn state(&self) -> InitState {
        self.machine.as_ref().map_or(InitState::Ready, Machine::state)
    }

    /// [`Machine::progress`], for the pause between polls.
    fn progress(&self) -> (InitState, u32) {
        progress_of(self.machine.as_ref())
    }

    /// Runs the states that need no waiting, and returns [`Poll::Pending`] while
    /// CSTS.RDY has not followed CC.EN or an admin command is outstanding: call again.
    /// Never sleeps.
    ///
    /// Errors: as [`Controller::init`].
    ///
    /// # Panics
    ///
    /// If polled again after it gave its result.
    pub fn poll(&mut self) -> Poll<Result<Controller<R>, Error>> {
        let (Some(regs), Some(machine)) = (self.regs.as_ref(), self.machine.as_mut()) else {
            panic!("ControllerInit polled after it gave its result");
        };
        let mut cx = Cx {
            regs,
            dma: self.dma.as_ref(),
            config: &self.config,
            admin: AdminAccess::Own(&mut self.admin),
            shadow_in_use: None,
            on_disabled: &|| {},
        };
        let result = ready!(machine.poll(&mut cx));
        let regs = self.regs.take().expect("checked above");
        Poll::Ready(match result {
            Ok(()) => {
                let machine = self.machine.take().expect("checked above");
                let admin = self.admin.take().expect("allocated in ConfigureAdminQueue");
                let done = machine.finish(admin);
                Ok(Controller::from_initialized(
                    regs,
                    Arc::clone(&self.dma),
                    self.config.clone(),
                    done,
                ))
            }
            Err(failure) => {
                self.release(failure.disabled);
                Err(failure.error)
            }
        })
    }

    /// Polls until done, sleeping between polls (10 µs, doubling up to 1 ms, from 10 µs
    /// again whenever a poll moved on: a new state or a completed admin command).
    ///
    /// Errors: as [`Controller::init`].
    pub fn wait(mut self) -> Result<Controller<R>, Error> {
        Backoff::block_on(&mut self, ControllerInit::poll, ControllerInit::progress)
    }

    /// After a failure or when dropped unfinished: frees the admin queue and shadow
    /// doorbells only if the controller is `disabled`, else leaks them (it may still
    /// write to them).
    fn release(&mut self, disabled: bool) {
        let Some(admin) = self.admin.take() else {
            return; // nothing the controller could reach was allocated yet
        };
        let shadow = self.machine.as_mut().and_then(Machine::take_shadow);
        if disabled {
            drop((admin, shadow));
        } else {
            tracing::warn!("the controller may still use its admin queue after a failed init; leaking its memory");
            std::mem::forget((admin, shadow));
        }
    }
}

impl<R: Registers> Drop for ControllerInit<R> {
    fn drop(&mut self) {
        if self.admin.is_none() {
            return;
        }
        let disabled = match (self.regs.as_ref(), self.machine.as_ref()) {
            // Unwinding: no waiting (a second panic would abort); the memory is leaked.
            _ if std::thread::panicking() => false,
            (Some(regs), Some(m)) => super::recovery::disable(regs, m.cap.ready_timeout())
                .inspect_err(|e| tracing::warn!(error = %e, "could not disable a controller whose init was dropped"))
                .is_ok(),
            _ => false,
        };
        self.release(disabled);
    }
}

/// Brings up every controller of `inits` from this thread, polling each in turn with a
/// short sleep after each round (10 µs, doubling up to 1 ms, from 10 µs again whenever
/// one moved on); gives each one's result, in order. A failure of one does not stop
/// the others.
pub fn init_all<R: Registers>(inits: Vec<ControllerInit<R>>) -> Vec<Result<Controller<R>, Error>> {
    poll_all(inits, ControllerInit::poll, ControllerInit::progress)
}

/// The progress of a machine that may have finished ([`InitState::Ready`] then).
pub(crate) fn progress_of(machine: Option<&Machine>) -> (InitState, u32) {
    machine.map_or((InitState::Ready, 0), Machine::progress)
}

/// Polls every task until each gives its result, in order, each finished task dropped
/// at once; sleeps ([`Backoff`]) after each round, from 10 µs again whenever a task's
/// `progress` changed.
pub(crate) fn poll_all<T, O, P: PartialEq>(
    tasks: Vec<T>,
    mut poll: impl FnMut(&mut T) -> Poll<O>,
    progress: impl Fn(&T) -> P,
) -> Vec<O> {
    enum Slot<T, O> {
        Running(T),
        Done(O),
    }
    let mut all: Vec<Slot<T, O>> = tasks.into_iter().map(Slot::Running).collect();
    Backoff::block_on(
        &mut all,
        |all| {
            for slot in all.iter_mut() {
                if let Slot::Running(task) = slot
                    && let Poll::Ready(r) = poll(task)
                {
                    *slot = Slot::Done(r); // drops the task
                }
            }
            if all.iter().all(|s| matches!(s, Slot::Done(_))) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        },
        |all| {
            all.iter()
                .map(|s| match s {
                    Slot::Running(t) => Some(progress(t)),
                    Slot::Done(_) => None,
                })
                .collect::<Vec<_>>()
        },
    );
    all.into_iter()
        .map(|s| match s {
            Slot::Done(r) => r,
            Slot::Running(_) => unreachable!("block_on returns once every task is done"),
        })
        .collect()
}
