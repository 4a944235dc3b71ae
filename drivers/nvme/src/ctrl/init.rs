//! Controller initialisation as an explicit, polled state machine.
//!
//! The order follows NVMe Base Specification 2.0, §3.5.1 ("Memory-based Controller
//! Initialization"): read CAP and VS; disable and wait for CSTS.RDY = 0; program the
//! admin queue (AQA, ASQ, ACQ); write CC (MPS, IOSQES = 6, IOCQES = 4, CSS, AMS) with
//! EN = 1 and wait for CSTS.RDY = 1 within CAP.TO; Identify Controller; Set Features
//! Number of Queues; Identify the active namespaces; configure asynchronous events and
//! keep requests outstanding; set the Timestamp.

use super::admin::{AdminData, AdminQueue};
use super::shadow::ShadowDoorbells;
use super::{ControllerConfig, Error, Namespace};
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

/// Polls CSTS until RDY equals `want`, CFS appears, the device vanishes, or `timeout`.
pub(crate) fn wait_ready<R: Registers>(regs: &R, want: bool, timeout: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(10);
    loop {
        let csts = Csts(regs.read32(offset::CSTS));
        if csts.is_all_ones() {
            return Err(Error::Removed {
                during: "waiting for CSTS.RDY",
            });
        }
        if csts.rdy() == want {
            return Ok(());
        }
        if want && csts.cfs() {
            return Err(Error::Fatal {
                during: "while enabling",
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::ReadyTimeout { want, timeout });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
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

/// Set Features Number of Queues asking for `asked` SQ/CQ pairs; returns the pairs the
/// driver may use: min(asked, granted).
pub(crate) fn set_number_of_queues<R: Registers>(
    regs: &R,
    admin: &mut AdminQueue,
    asked: u16,
    timeout: Duration,
) -> Result<u16, Error> {
    let asked = NumberOfQueues {
        sq: asked.max(1),
        cq: asked.max(1),
    };
    let cmd = Command::set_features(FeatureId::NUMBER_OF_QUEUES, 0, asked.to_dw11(), false);
    let done = admin.execute(regs, cmd, AdminData::None, timeout)?;
    let granted = NumberOfQueues::granted(asked, done.dw0);
    Ok(granted.sq.min(granted.cq))
}

/// Zeroes the shadow doorbell pages and hands them to the controller (Doorbell Buffer
/// Config), before any I/O queue exists: at init and after a reset.
pub(crate) fn configure_shadow_doorbells<R: Registers>(
    regs: &R,
    admin: &mut AdminQueue,
    shadow: &ShadowDoorbells,
    timeout: Duration,
) -> Result<(), Error> {
    shadow.clear();
    admin
        .execute(regs, shadow.command(), AdminData::None, timeout)
        .map(drop)
}

/// OAES bit 8: the controller sends Namespace Attribute Notices.
const OAES_NAMESPACE_ATTRIBUTE: u32 = 1 << 8;
/// OAES bit 9: the controller sends Firmware Activation Notices.
const OAES_FIRMWARE_ACTIVATION: u32 = 1 << 9;

/// Asynchronous Event Configuration (§5.27.1.7): SMART / Health critical warnings, and the
/// notices Identify Controller's OAES says the controller sends (namespace attribute,
/// firmware activation). With namespace attribute notices, then reads the Changed
/// Namespace List (log 04h, RAE clear): a controller reports a namespace again only once
/// that log was read, so a change whose event a controller reset lost would otherwise
/// silence later changes of the same namespace (QEMU 7.2 keeps the list across resets).
/// Then min(AERL + 1, 4) Asynchronous Event Requests.
pub(crate) fn configure_async_events<R: Registers>(
    regs: &R,
    admin: &mut AdminQueue,
    id: &IdentifyController,
    timeout: Duration,
) -> Result<(), Error> {
    let mut aec = AsyncEventConfig::SMART_CRITICAL_WARNINGS;
    if id.oaes & OAES_NAMESPACE_ATTRIBUTE != 0 {
        aec |= AsyncEventConfig::NAMESPACE_ATTRIBUTE;
    }
    if id.oaes & OAES_FIRMWARE_ACTIVATION != 0 {
        aec |= AsyncEventConfig::FIRMWARE_ACTIVATION;
    }
    let cmd = Command::set_features(FeatureId::ASYNC_EVENT_CONFIG, 0, aec.bits(), false);
    admin.execute(regs, cmd, AdminData::None, timeout)?;
    if aec.contains(AsyncEventConfig::NAMESPACE_ATTRIBUTE) {
        let cmd = Command::get_log_page(LogPageId::CHANGED_NAMESPACE_LIST, super::NSID_ALL, 0, 4096, 0, false)
            .expect("4096 is a multiple of 4");
        match admin.execute(regs, cmd, AdminData::FromDevice(4096), timeout) {
            Ok(_) => {}
            // A controller that refuses the log still works; its events may stay masked.
            Err(e) if e.status().is_some() => {
                tracing::warn!(error = %e, "reading the Changed Namespace List failed");
            }
            Err(e) => return Err(e),
        }
    }
    admin.start_async_events(regs, (id.aerl as u32 + 1).min(4), timeout)
}

struct Machine<'a, R: Registers> {
    regs: &'a R,
    dma: &'a dyn DmaAllocator,
    config: &'a ControllerConfig,
    cap: Cap,
    vs: Vs,
    page_size: usize,
    admin: Option<AdminQueue>,
    identify: Option<IdentifyController>,
    io_queues: u16,
    namespaces: Vec<Namespace>,
    max_transfer: usize,
    shadow: Option<ShadowDoorbells>,
}

/// Runs the state machine to [`InitState::Ready`].
pub(crate) fn initialize<R: Registers>(
    regs: &R,
    dma: &dyn DmaAllocator,
    config: &ControllerConfig,
) -> Result<Initialized, Error> {
    let mut m = Machine {
        regs,
        dma,
        config,
        cap: Cap(0),
        vs: Vs(0),
        page_size: config.page_size,
        admin: None,
        identify: None,
        io_queues: 0,
        namespaces: Vec::new(),
        max_transfer: 0,
        shadow: None,
    };
    let mut state = InitState::ReadCapabilities;
    let mut trace = Vec::with_capacity(12);
    while state != InitState::Ready {
        trace.push(state);
        tracing::debug!(?state, "nvme controller init");
        state = match m.step(state) {
            Ok(next) => next,
            Err(e) => {
                m.abandon();
                return Err(e);
            }
        };
    }
    trace.push(InitState::Ready);
    Ok(Initialized {
        cap: m.cap,
        vs: m.vs,
        page_size: m.page_size,
        admin: m.admin.expect("set in ConfigureAdminQueue"),
        identify: m.identify.expect("set in IdentifyController"),
        io_queues: m.io_queues,
        namespaces: m.namespaces,
        max_transfer: m.max_transfer,
        trace,
        shadow: m.shadow,
    })
}

impl<R: Registers> Machine<'_, R> {
    /// After a failed step: the controller may hold admin commands that still write into
    /// the admin queue's memory (a timed-out Identify, outstanding event requests). Free
    /// that memory only once the controller is disabled (CC.EN = 0 and CSTS.RDY = 0 seen);
    /// if it cannot be disabled, leak it.
    fn abandon(&mut self) {
        let Some(admin) = self.admin.take() else {
            return; // nothing the controller could reach was allocated yet
        };
        let shadow = self.shadow.take();
        match super::recovery::disable(self.regs, self.cap.ready_timeout()) {
            Ok(()) => drop((admin, shadow)),
            Err(e) => {
                tracing::warn!(error = %e, "could not disable the controller after a failed init; leaking the admin queue memory");
                std::mem::forget((admin, shadow));
            }
        }
    }

    fn admin(&mut self) -> &mut AdminQueue {
        self.admin
            .as_mut()
            .expect("admin queue exists after ConfigureAdminQueue")
    }

    fn step(&mut self, state: InitState) -> Result<InitState, Error> {
        Ok(match state {
            InitState::ReadCapabilities => {
                self.read_capabilities()?;
                InitState::Disable
            }
            InitState::Disable => {
                let cc = Cc(self.regs.read32(offset::CC));
                if cc.en() {
                    self.regs.write32(offset::CC, cc.with_en(false).0);
                }
                InitState::WaitNotReady
            }
            InitState::WaitNotReady => {
                wait_ready(self.regs, false, self.cap.ready_timeout())?;
                InitState::ConfigureAdminQueue
            }
            InitState::ConfigureAdminQueue => {
                self.configure_admin_queue()?;
                InitState::Enable
            }
            InitState::Enable => {
                self.regs.write32(offset::CC, enabled_cc(self.cap, self.page_size).0);
                InitState::WaitReady
            }
            InitState::WaitReady => {
                wait_ready(self.regs, true, self.cap.ready_timeout())?;
                InitState::IdentifyController
            }
            InitState::IdentifyController => {
                self.identify_controller()?;
                InitState::SetNumberOfQueues
            }
            InitState::SetNumberOfQueues => {
                self.set_number_of_queues()?;
                InitState::ConfigureShadowDoorbells
            }
            InitState::ConfigureShadowDoorbells => {
                let supported = self
                    .identify
                    .as_ref()
                    .is_some_and(|id| id.oacs.contains(Oacs::DOORBELL_BUFFER_CONFIG));
                if self.config.shadow_doorbells && supported {
                    self.configure_shadow_doorbells()?;
                }
                InitState::IdentifyNamespaces
            }
            InitState::IdentifyNamespaces => {
                self.identify_namespaces()?;
                InitState::ConfigureAsyncEvents
            }
            InitState::ConfigureAsyncEvents => {
                if self.config.async_events {
                    self.configure_async_events()?;
                }
                InitState::SetTimestamp
            }
            InitState::SetTimestamp => {
                let supported = self
                    .identify
                    .as_ref()
                    .is_some_and(|id| id.oncs.contains(Oncs::TIMESTAMP));
                if self.config.set_timestamp && supported {
                    self.set_timestamp()?;
                }
                InitState::Ready
            }
            InitState::Ready => InitState::Ready,
        })
    }

    fn read_capabilities(&mut self) -> Result<(), Error> {
        let cap = Cap(self.regs.read64(offset::CAP));
        if cap.0 == u64::MAX {
            return Err(Error::Removed { during: "reading CAP" });
        }
        self.cap = cap;
        self.vs = Vs(self.regs.read32(offset::VS));
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
        let align = self.dma.page_size();
        if ps > align {
            return Err(Error::Config(format!(
                "page size {ps} bytes is larger than the {align}-byte alignment of the DMA allocator; \
                 queues would not be aligned to a memory page (CC.MPS): use a page size of {align} bytes"
            )));
        }
        Ok(())
    }

    fn configure_admin_queue(&mut self) -> Result<(), Error> {
        let entries = self
            .config
            .admin_queue_entries
            .min(MAX_ADMIN_QUEUE_ENTRIES as u32)
            .min(self.cap.max_queue_entries());
        if entries < 2 {
            return Err(Error::Config(format!(
                "admin queue of {entries} entries; at least 2 needed"
            )));
        }
        if self.config.async_events && entries < MIN_ADMIN_ENTRIES_WITH_EVENTS {
            return Err(Error::Config(format!(
                "admin queue of {entries} entries (asked {}, CAP.MQES allows {}) is too small for \
                 asynchronous events: an Asynchronous Event Request, an event's log page read and a \
                 synchronous command need {MIN_ADMIN_ENTRIES_WITH_EVENTS} entries; use more entries \
                 or set async_events to false",
                self.config.admin_queue_entries,
                self.cap.max_queue_entries()
            )));
        }
        let admin = AdminQueue::new(self.dma, self.cap, entries, self.page_size)?;
        program_admin_queue(self.regs, &admin);
        self.admin = Some(admin);
        Ok(())
    }

    fn run(&mut self, cmd: Command, data: AdminData<'_>) -> Result<crate::Completion, Error> {
        let (regs, timeout) = (self.regs, self.config.admin_timeout);
        self.admin().execute(regs, cmd, data, timeout)
    }

    fn identify_controller(&mut self) -> Result<(), Error> {
        self.run(Command::identify(Cns::CONTROLLER, 0, 0), AdminData::FromDevice(4096))?;
        let id = IdentifyController::parse(self.admin().data(4096))?;
        let mdts = id
            .max_transfer_bytes(self.cap.min_page_size() as u64)
            .unwrap_or(u64::MAX);
        self.max_transfer = (self.config.max_transfer_bytes as u64).min(mdts) as usize;
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

    fn set_number_of_queues(&mut self) -> Result<(), Error> {
        let (regs, timeout, asked) = (self.regs, self.config.admin_timeout, self.config.io_queues);
        self.io_queues = set_number_of_queues(regs, self.admin(), asked, timeout)?;
        Ok(())
    }

    /// Allocates and hands over the shadow doorbell pages. A controller that refuses
    /// the command, or pages that cannot be used, leave the doorbell registers in use (a
    /// warning); a controller that does not answer fails init.
    fn configure_shadow_doorbells(&mut self) -> Result<(), Error> {
        let shadow = match ShadowDoorbells::allocate(self.dma, self.page_size, self.cap, self.io_queues) {
            Ok(s) => s,
            Err(Error::Unsupported(why)) => {
                tracing::warn!(%why, "not using shadow doorbells");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let (regs, timeout) = (self.regs, self.config.admin_timeout);
        match configure_shadow_doorbells(regs, self.admin(), &shadow, timeout) {
            Ok(()) => {
                self.shadow = Some(shadow);
                Ok(())
            }
            Err(e @ Error::Command { .. }) => {
                tracing::warn!(error = %e, "controller refused Doorbell Buffer Config; not using shadow doorbells");
                Ok(())
            }
            Err(e) => {
                // It may still take the pages: they stay until it is disabled.
                self.shadow = Some(shadow);
                Err(e)
            }
        }
    }

    fn identify_namespaces(&mut self) -> Result<(), Error> {
        let nn = self.identify.as_ref().map_or(0, |id| id.nn);
        // The active namespace list (CNS 02h) exists from NVMe 1.1 on.
        let nsids = if self.vs >= Vs::new(1, 1, 0) {
            self.run(
                Command::identify(Cns::ACTIVE_NAMESPACE_LIST, 0, 0),
                AdminData::FromDevice(4096),
            )?;
            NamespaceList::parse(self.admin().data(4096))?
        } else {
            (1..=nn.min(1024)).collect()
        };
        for nsid in nsids {
            if let Err(e) = self.run(Command::identify(Cns::NAMESPACE, nsid, 0), AdminData::FromDevice(4096)) {
                super::namespace::skip_refused(nsid, e)?;
                continue;
            }
            let id = IdentifyNamespace::parse(self.admin().data(4096))?;
            let ctrl = self.identify.as_ref().expect("identified");
            match Namespace::new(nsid, id, ctrl, self.max_transfer, self.config.quirks_in_use()) {
                Some(ns) => self.namespaces.push(ns),
                None => tracing::warn!(nsid, "skipping inactive namespace or one with an unusable LBA format"),
            }
        }
        Ok(())
    }

    fn configure_async_events(&mut self) -> Result<(), Error> {
        let id = self.identify.clone().expect("identified before asynchronous events");
        let (regs, timeout) = (self.regs, self.config.admin_timeout);
        configure_async_events(regs, self.admin(), &id, timeout)
    }

    fn set_timestamp(&mut self) -> Result<(), Error> {
        let ts = Timestamp::from_system_time(std::time::SystemTime::now());
        let bytes = ts.encode();
        self.run(
            Command::set_features(FeatureId::TIMESTAMP, 0, 0, false),
            AdminData::ToDevice(&bytes),
        )?;
        Ok(())
    }
}
