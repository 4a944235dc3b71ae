//! An in-process simulated NVMe controller: a test double behind [`Registers`] and
//! [`DmaAllocator`](crate::hw::DmaAllocator), so driver logic — initialization, admin
//! commands, I/O, timeouts, aborts and resets — runs in host tests in seconds, on any
//! machine.
//!
//! It mimics QEMU 7.2's emulated controller (1b36:0010; see DESIGN.md) and the NVMe Base
//! Specification 2.0 / NVM Command Set 1.0, and it is strict: instead of papering over
//! driver bugs it records them — bad register sequences and doorbell values in
//! [`SimController::protocol_violations`], DMA to unmapped or freed memory in
//! [`SimController::dma_violations`] — and answers the way a controller would (CSTS.CFS,
//! Data Transfer Error, PRP Offset Invalid, …). Tests should assert both lists are empty.
//!
//! # How it works
//!
//! - Memory: allocate with [`SimController::dma`]. Buffers get synthetic IOVAs from
//!   0x1_0000_0000 that are never reused, with an unmapped guard page after each, and the
//!   controller reaches host memory only through its translation table.
//! - Commands run synchronously, in the thread that writes the SQ tail doorbell: every
//!   command between the SQ head and the new tail is fetched, executed and completed before
//!   the doorbell write returns. A completion that does not fit in its CQ (tail + 1 == head
//!   as last written to the CQ head doorbell) waits until the head doorbell makes room.
//! - CSTS.RDY follows CC.EN after [`SimConfig::ready_delay`]; doorbells before RDY = 1 are
//!   violations and are ignored.
//! - One mutex guards the state; the per-command work is small (the simulator is also used
//!   by microbenchmarks of the driver's submit and complete paths).
//! - Faults ([`FaultRule`]) make commands fail, hang, vanish or complete late, or make the
//!   device break the protocol on purpose ([`Misbehaviour`]: the hostile controller); see
//!   [`SimController::set_fatal`] and [`SimController::set_removed`] for whole-controller
//!   failures.
//!
//! # Power loss
//!
//! For crash tests of software that must place its flushes correctly, turn on the model of
//! the volatile write cache with [`SimController::set_volatile_write_cache`]. Completed
//! writes then stay visible to reads as usual, but until a Flush covers them they are only
//! in the (simulated) cache: [`SimController::power_cut`] kills the controller for good and
//! loses a seeded subset of them, leaving the media a crash could have left. Copy it out
//! with [`SimController::namespace_data`] and "reboot" onto it with a new controller and
//! [`SimController::restore_namespace`]:
//!
//! ```
//! use ironvme_nvme::sim::{SimConfig, SimController};
//!
//! let sim = SimController::new(SimConfig::default());
//! sim.set_volatile_write_cache(true);
//! // ... run the software under test against `sim`, through the driver ...
//! let report = sim.power_cut(42);
//! assert!(report.dropped <= report.unflushed);
//! let image = sim.namespace_data(1);
//!
//! let rebooted = SimController::new(sim.config());
//! rebooted.restore_namespace(1, &image);
//! // ... start a new driver on `rebooted` and check recovery ...
//! # assert_eq!(rebooted.namespace_data(1), image);
//! ```
//!
//! # Crash states
//!
//! The power cut above gives one crash per run. To check every crash a workload could
//! suffer, record its namespace's writes and Flushes instead and enumerate the states with
//! [`crate::crash::CrashStates`] (prefixes ending at a Flush, subsets of the writes after
//! one, torn writes):
//!
//! ```
//! use ironvme_nvme::crash::{CrashConfig, CrashStates};
//! use ironvme_nvme::sim::{SimConfig, SimController};
//!
//! let sim = SimController::new(SimConfig::default());
//! let start = sim.namespace_data(1);
//! sim.record_writes(1);
//! // ... run the workload against `sim`, noting sim.write_log_len() at each acknowledgement ...
//! let log = sim.take_write_log().unwrap();
//! let mut states = CrashStates::new(&log, start, &CrashConfig::bounded(100)).unwrap();
//! while let Some((state, image)) = states.next_state() {
//!     let rebooted = SimController::new(sim.config());
//!     rebooted.restore_namespace(1, image);
//!     // ... open the store on `rebooted`, check what was acknowledged before state.cut ...
//! }
//! ```
//!
//! # Differences from QEMU 7.2, on purpose
//!
//! - Doorbell Buffer Config (shadow doorbells) is Invalid Command Opcode: not implemented.
//! - The Error Information log lists the errors the simulator returned (QEMU's is zeros).
//! - With [`SimConfig::answer_max_queues`] the Number of Queues answer is the maximum, as on
//!   QEMU, but Create I/O SQ/CQ only accepts queue IDs up to what the host *asked for* —
//!   the limit a real controller may enforce — so a driver that trusts the quirky answer
//!   fails here.
//! - Identify Controller NN is the number of configured namespaces (QEMU reports 256).
//! - With the power-loss model on ([`SimController::set_volatile_write_cache`]), a Write or
//!   Write Zeroes with FUA is durable at completion, as the specification says; QEMU 7.2
//!   ignores FUA.
//! - Verify and Write Zeroes have no size limit; Dataset Management fails with LBA Out of
//!   Range if any range is past the end (and then deallocates nothing).
//!
//! # Not modelled
//!
//! Interrupts other than MSI-X-style signal counters ([`SimController::interrupts`]: no
//! INTx, masking or coalescing), metadata and protection information,
//! fused commands, weighted round robin, the CMB/PMR, NVM subsystem reset, non-contiguous
//! (PRP-list) queues, the Commands Supported and Effects log, power states beyond PS0, and
//! torn writes (a power cut loses or keeps each command whole; for torn writes, record
//! the writes with [`SimController::record_writes`] and build crash states with
//! [`crate::crash::CrashStates`]).

mod admin;
mod config;
mod dma;
mod fault;
mod features;
mod hostile;
mod identify_data;
mod io;
mod irq;
mod logs;
mod namespace;
mod power;
mod regs;
mod state;
mod ticker;
mod xfer;

#[cfg(test)]
mod testing;

pub use config::{SimConfig, SimNamespace};
pub use dma::{IOVA_BASE, SimDma};
pub use fault::{FaultAction, FaultId, FaultRule};
pub use hostile::{IdentifyLie, Misbehaviour};
pub use irq::SimInterrupts;
pub use power::{PowerCutReport, UnflushedWrite};
pub use regs::RegAccess;

use crate::hw::Registers;
use state::{State, ViolationKind};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// What the controller did, counted since it was created.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Admin commands fetched, by opcode (only opcodes seen at least once).
    pub admin_commands: BTreeMap<u8, u64>,
    /// I/O commands fetched, by opcode (only opcodes seen at least once).
    pub io_commands: BTreeMap<u8, u64>,
    /// Writes to SQ tail doorbells (valid or not).
    pub sq_doorbells: u64,
    /// Writes to CQ head doorbells (valid or not).
    pub cq_doorbells: u64,
    /// Successful CC.EN 0→1 transitions.
    pub enables: u64,
    /// Controller resets: CC.EN 1→0 transitions.
    pub resets: u64,
    /// Shutdown notifications (CC.SHN written non-zero).
    pub shutdowns: u64,
    /// Completion queue entries written (admin and I/O).
    pub completions_posted: u64,
    /// Commands a fault rule applied to.
    pub faults_applied: u64,
    /// Delayed commands that came due while Bus Master Enable was clear, and were dropped
    /// without moving data or posting a completion (see
    /// [`SimController::set_bar_unreachable`]).
    pub dma_blocked: u64,
    /// The last I/O command fetched, as the host wrote it (data pointers, MPTR, PRINFO).
    pub last_io_command: Option<crate::cmd::Command>,
}

impl SimStats {
    /// Admin commands fetched with `opcode`.
    pub fn admin(&self, opcode: u8) -> u64 {
        self.admin_commands.get(&opcode).copied().unwrap_or(0)
    }

    /// I/O commands fetched with `opcode`.
    pub fn io(&self, opcode: u8) -> u64 {
        self.io_commands.get(&opcode).copied().unwrap_or(0)
    }

    /// I/O commands fetched, all opcodes.
    pub fn io_total(&self) -> u64 {
        self.io_commands.values().sum()
    }
}

/// The controller shared by all clones of a [`SimController`].
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A simulated NVMe controller. Clones share one controller.
///
/// Drive it through [`Registers`] (BAR0: registers at 0x0–0xFFF, doorbells from 0x1000
/// with the configured stride) and memory from [`SimController::dma`].
#[derive(Clone)]
pub struct SimController {
    shared: Arc<Shared>,
    dma: SimDma,
}

impl SimController {
    /// A controller described by `config`, disabled (CC = 0, CSTS.RDY = 0).
    ///
    /// # Panics
    ///
    /// If the configuration is impossible: a namespace block size other than 512 or 4096,
    /// `mpsmin > mpsmax`, `mqes` or `max_io_queues` of 0, and the like.
    pub fn new(config: SimConfig) -> SimController {
        config.check();
        let dma = SimDma {
            table: dma::DmaTable::new(),
        };
        let table = Arc::clone(&dma.table);
        let shared = Arc::new_cyclic(|me| Shared {
            state: Mutex::new(State::new(config, table, me.clone())),
        });
        SimController { shared, dma }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// The configuration the controller was created with.
    pub fn config(&self) -> SimConfig {
        self.lock().cfg.clone()
    }

    /// The controller's MSI-X vectors (one per queue, admin included): give them to the
    /// driver as [`crate::ctrl::ControllerConfig::interrupts`] for interrupt mode.
    pub fn interrupts(&self) -> Arc<SimInterrupts> {
        Arc::clone(&self.lock().interrupts)
    }

    /// The DMA allocator whose memory this controller can reach.
    pub fn dma(&self) -> SimDma {
        self.dma.clone()
    }

    /// Adds a fault rule after the existing ones; returns its id.
    pub fn inject(&self, rule: FaultRule) -> FaultId {
        self.lock().faults.insert(rule)
    }

    /// Removes a fault rule (no effect if it is gone already).
    pub fn remove_fault(&self, id: FaultId) {
        self.lock().faults.remove(id);
    }

    /// Removes every fault rule. Commands already held or delayed stay so.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Sets or clears a controller fatal status: CSTS.CFS = 1 and no command is processed
    /// (doorbells are ignored) until CC.EN goes 1→0, which clears it.
    pub fn set_fatal(&self, on: bool) {
        self.lock().fatal = on;
    }

    /// From now on, CSTS.RDY follows a change of CC.EN only after `delay`
    /// ([`SimConfig::ready_delay`]), e.g. to slow down a reset but not the bring-up.
    pub fn set_ready_delay(&self, delay: std::time::Duration) {
        self.lock().cfg.ready_delay = delay;
    }

    /// Surprise removal: while on, every register read returns all ones, writes are
    /// ignored and nothing is processed (held commands stay held).
    pub fn set_removed(&self, on: bool) {
        self.lock().removed = on;
    }

    /// BAR0 stops answering while the controller goes on working: register reads return
    /// all ones and writes are lost (a PCIe error on the way to the BAR, a wedged
    /// function), but commands the controller already fetched — delayed ones — still move
    /// their data and post their completions when due, unless Bus Master Enable was
    /// cleared ([`Registers::disable_bus_master`]). Unlike [`SimController::set_removed`],
    /// under which nothing runs.
    pub fn set_bar_unreachable(&self, on: bool) {
        self.lock().bar_dead = on;
    }

    /// Makes PCI configuration space fail together with BAR0, as a real surprise removal
    /// does (config reads return all ones, writes are lost): while on, whenever registers
    /// read all ones ([`SimController::set_removed`], [`SimController::set_bar_unreachable`],
    /// [`Misbehaviour::Removed`], a power cut), [`Registers::disable_bus_master`] fails and
    /// Bus Master Enable stays set — so a controller whose BAR is unreachable goes on moving
    /// the data of commands it already holds. Off by default.
    pub fn set_config_space_follows_bar(&self, on: bool) {
        self.lock().config_follows_bar = on;
    }

    /// Bus Master Enable (PCI Command register bit 2): set when the controller is created,
    /// cleared by [`Registers::disable_bus_master`]. While clear the controller issues no
    /// DMA: it fetches no command, posts no completion, and drops delayed commands that
    /// come due ([`SimStats::dma_blocked`]).
    pub fn bus_master(&self) -> bool {
        self.lock().bus_master
    }

    /// Sets Bus Master Enable, as a driver does when it takes the function.
    pub fn set_bus_master(&self, on: bool) {
        self.lock().bus_master = on;
    }

    /// Reports an asynchronous event: completes the oldest outstanding Asynchronous Event
    /// Request with DW0 = `event_type | info << 8 | log_page << 16`, or queues the event
    /// until a request arrives. Once an event of a type was reported, later events of that
    /// type wait (masked) until the host reads `log_page` with Retain Asynchronous Event
    /// clear (§5.2); a controller reset unmasks every type.
    pub fn raise_async_event(&self, event_type: u8, info: u8, log_page: u8) {
        self.lock()
            .async_event(event_type as u32 & 0x7 | (info as u32) << 8 | (log_page as u32) << 16);
    }

    /// Sets the SMART critical warning bits (byte 0 of the SMART / Health log). No event is
    /// raised: where QEMU's `qom-set smart_critical_warning` also sends a SMART / Health
    /// event, follow this with [`SimController::raise_async_event`]`(1, info, 0x02)`.
    pub fn set_critical_warning(&self, bits: u8) {
        self.lock().health.critical_warning = bits;
    }

    /// Every non-doorbell register access, oldest first (the last 4096).
    pub fn register_log(&self) -> Vec<RegAccess> {
        self.lock().reg_log.iter().copied().collect()
    }

    /// Empties the register log.
    pub fn clear_register_log(&self) {
        self.lock().reg_log.clear();
    }

    fn violations(&self, kind: ViolationKind) -> Vec<String> {
        self.lock()
            .violations
            .iter()
            .filter(|v| v.kind == kind)
            .map(|v| v.message.clone())
            .collect()
    }

    /// Every device access to an IOVA that is not mapped (never allocated, freed, or past
    /// the end of a buffer), with the queue and command that made it, oldest first.
    /// Tests assert this is empty.
    pub fn dma_violations(&self) -> Vec<String> {
        self.violations(ViolationKind::Dma)
    }

    /// Every register or doorbell mistake: unaligned or out-of-range accesses, writes to
    /// read-only registers, doorbell values past the ring or for missing queues, doorbells
    /// before CSTS.RDY = 1, enable with a bad CC or admin queue. Tests assert this is empty.
    pub fn protocol_violations(&self) -> Vec<String> {
        self.violations(ViolationKind::Protocol)
    }

    /// Device accesses outside the host's buffers made on purpose by
    /// [`Misbehaviour::DmaOutside`], oldest first: each blocked (as an IOMMU would block
    /// it) or, if it hit mapped memory, what it wrote. Not host mistakes, so not in
    /// [`SimController::dma_violations`].
    pub fn hostile_dma_blocked(&self) -> Vec<String> {
        self.violations(ViolationKind::HostileDma)
    }

    /// Why the controller last set CSTS.CFS by itself (refused enable, unreachable queue
    /// memory), if it ever did.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// Counters since the controller was created.
    pub fn stats(&self) -> SimStats {
        self.lock().stats()
    }

    /// A copy of namespace `nsid`'s contents (empty for an unknown or inactive NSID): the
    /// media as reads see it, and after [`SimController::power_cut`] the crashed media.
    /// Allocates the whole capacity: meant for small namespaces.
    pub fn namespace_data(&self, nsid: u32) -> Vec<u8> {
        let st = self.lock();
        match (nsid as usize).checked_sub(1).and_then(|i| st.namespaces.get(i)) {
            Some(ns) => ns.contents(),
            None => Vec::new(),
        }
    }

    /// Replaces namespace `nsid`'s contents with `data`, byte for byte from LBA 0 (bytes
    /// past `data.len()` read as zeros): how a test boots a new controller onto a disk image,
    /// such as [`SimController::namespace_data`] of a controller after
    /// [`SimController::power_cut`]. Meant for a controller the host has not started yet;
    /// the image counts as flushed (a later power cut never undoes it).
    ///
    /// # Panics
    ///
    /// If `nsid` is not an active namespace or `data` is longer than its capacity.
    pub fn restore_namespace(&self, nsid: u32, data: &[u8]) {
        let mut st = self.lock();
        let i = (nsid as usize).wrapping_sub(1);
        let Some(ns) = st.namespaces.get(i).filter(|ns| ns.is_active()) else {
            panic!("restore_namespace: NSID {nsid} is not an active namespace");
        };
        assert!(
            data.len() as u64 <= ns.bytes(),
            "restore_namespace: {} bytes do not fit namespace {nsid} of {} bytes",
            data.len(),
            ns.bytes()
        );
        assert!(
            !st.power.recording.as_ref().is_some_and(|r| r.open && r.ns == i),
            "restore_namespace: namespace {nsid} is being recorded (record_writes); take_write_log first"
        );
        let ns = &mut st.namespaces[i];
        ns.load(data);
        st.power.forget_namespace(i);
    }

    /// Starts recording namespace `nsid`'s completed media changes and Flushes (replacing
    /// any recording in progress), for [`crate::crash::CrashStates`]: take the image to
    /// start from with [`SimController::namespace_data`] first, run the workload, then
    /// [`SimController::take_write_log`].
    ///
    /// Logged in the order the controller executes them (it executes each command whole,
    /// at the doorbell, and completes it after; a Flush is logged after every change it
    /// covers):
    /// - each successful Write, with its data; Write Zeroes; each range of a Dataset
    ///   Management with Deallocate ([`LogOp::Deallocate`](crate::crash::LogOp)); each
    ///   marked [`durable`](crate::crash::LoggedWrite::durable) if written with FUA or
    ///   while the host had the volatile write cache disabled (or [`SimConfig::vwc`] is off);
    /// - each Flush of the namespace or of all namespaces, and what counts as one: the
    ///   host disabling the write cache, a shutdown notification;
    /// - a Format NVM of the namespace as a durable deallocation of every block and a
    ///   Flush (a Format that changes the block size ends the recording).
    ///
    /// Independent of the power-loss model ([`SimController::set_volatile_write_cache`]).
    /// Memory: every byte written while recording.
    ///
    /// # Panics
    ///
    /// If `nsid` is not an active namespace.
    pub fn record_writes(&self, nsid: u32) {
        let mut st = self.lock();
        let i = (nsid as usize).wrapping_sub(1);
        let Some(ns) = st.namespaces.get(i).filter(|ns| ns.is_active()) else {
            panic!("record_writes: NSID {nsid} is not an active namespace");
        };
        let lba_size = ns.block_size;
        st.power.recording = Some(power::Recording {
            ns: i,
            log: crate::crash::WriteLog {
                lba_size,
                entries: Vec::new(),
            },
            open: true,
        });
    }

    /// Entries logged so far by the recording in progress (0 if none): an operation that
    /// returns when this is `n` was acknowledged before any crash whose cut is at `n` or
    /// later (see [`crate::crash::CrashState::cut`]).
    pub fn write_log_len(&self) -> usize {
        self.lock().power.recording.as_ref().map_or(0, |r| r.log.entries.len())
    }

    /// Ends the recording started by [`SimController::record_writes`] and returns its log,
    /// or `None` if nothing was being recorded.
    pub fn take_write_log(&self) -> Option<crate::crash::WriteLog> {
        self.lock().power.recording.take().map(|r| r.log)
    }

    /// Turns the power-loss model of the volatile write cache on or off (default off).
    ///
    /// While on, and while the host has the cache enabled (Identify VWC is reported when
    /// [`SimConfig::vwc`] is set, and feature 06h WCE is on, its default; with `vwc` false
    /// nothing is ever volatile), each Write, Write Zeroes and Dataset Management
    /// deallocate that completes successfully is *unflushed* until a Flush of its
    /// namespace (or of NSID FFFFFFFFh) completes: reads see it as usual, but
    /// [`SimController::power_cut`] may lose it. The simulator keeps the old contents of
    /// the blocks each unflushed command changed (an undo log; zero runs are free), so
    /// memory grows with the data written between flushes.
    ///
    /// Also durable at once: a Write or Write Zeroes with FUA, everything when the host
    /// disables the cache (Set Features WCE = 0) or sends a shutdown notification (CC.SHN),
    /// and a namespace that is formatted or [restored](SimController::restore_namespace).
    /// A controller reset (CC.EN 1→0) does not write the cache back.
    ///
    /// Turning the model off makes every write completed so far durable.
    pub fn set_volatile_write_cache(&self, on: bool) {
        let mut st = self.lock();
        st.power.enabled = on;
        if !on {
            st.power.forget();
        }
    }

    /// Completed writes the next [`SimController::power_cut`] could lose (see
    /// [`SimController::set_volatile_write_cache`]); 0 while the model is off.
    pub fn unflushed_writes(&self) -> usize {
        self.lock().power.unflushed()
    }

    /// Simulates losing power now.
    ///
    /// The controller is dead from here on, for good: like [`SimController::set_removed`]
    /// (which can no longer undo it) every register read returns all ones and every
    /// register or doorbell write is ignored, so no command on any queue — admin or I/O,
    /// new, held by a fault rule, delayed, or waiting for room in its CQ — ever completes
    /// or touches the media again. (The driver notices the all-ones registers and fails
    /// its outstanding commands with Aborted by Host.)
    ///
    /// Of the unflushed writes (see [`SimController::set_volatile_write_cache`]), a subset
    /// chosen by `seed` is lost: `seed` first picks a loss rate in [0, 1), then each
    /// unflushed write is lost with that probability, so some seeds lose almost nothing and
    /// some almost everything. The choice is deterministic: the same seed after the same
    /// command sequence loses the same writes. A lost write is lost whole (never torn); its
    /// blocks go back to what they held before it, except blocks that a newer surviving
    /// write also changed, which keep that write's data. The media ends up exactly as if
    /// only the flushed and the surviving writes had been applied, in completion order.
    /// Writes covered by a completed Flush (or written with FUA) are never lost.
    ///
    /// [`SimController::namespace_data`] then returns the crashed media. Calling this again
    /// loses nothing more (there is nothing unflushed left).
    pub fn power_cut(&self, seed: u64) -> PowerCutReport {
        self.lock().power_cut(seed)
    }

    /// Whether [`SimController::power_cut`] was called.
    pub fn is_powered_off(&self) -> bool {
        self.lock().power.off
    }

    /// Commands currently held by [`FaultAction::Hang`] or [`FaultAction::Lost`].
    pub fn held_commands(&self) -> usize {
        self.lock().held()
    }

    /// Runs every held command now, as if it had just arrived (without fault matching), so
    /// it normally completes successfully — like `resume` of QEMU's blkdebug. Does nothing
    /// while the controller is not processing commands.
    pub fn release_held(&self) {
        self.lock().release_held();
    }
}

impl Registers for SimController {
    fn read32(&self, offset: u32) -> u32 {
        self.lock().read_reg(offset, 4) as u32
    }

    fn write32(&self, offset: u32, value: u32) {
        self.lock().write_reg(offset, 4, value as u64);
    }

    fn read64(&self, offset: u32) -> u64 {
        self.lock().read_reg(offset, 8)
    }

    fn write64(&self, offset: u32, value: u64) {
        self.lock().write_reg(offset, 8, value);
    }

    /// Configuration space stays reachable whatever BAR0 does, unless
    /// [`SimController::set_config_space_follows_bar`] is on and BAR0 reads all ones: then
    /// the PCI Command register reads FFFFh, Bus Master Enable stays as it was and this
    /// fails.
    fn disable_bus_master(&self) -> Result<(), crate::hw::BusMasterError> {
        let mut st = self.lock();
        if st.config_follows_bar && (st.removed || st.bar_dead || st.power.off) {
            return Err(crate::hw::BusMasterError(
                "simulated controller: PCI configuration space reads all ones (Command register \
                 FFFFh) after a surprise removal; Bus Master Enable cannot be cleared"
                    .into(),
            ));
        }
        st.bus_master = false;
        Ok(())
    }
}

impl fmt::Debug for SimController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("SimController")
            .field("cc", &format_args!("{:#x}", st.cc.0))
            .field("enabled", &st.enabled)
            .field("cfs", &(st.cfs || st.fatal))
            .field("removed", &st.removed)
            .field("powered_off", &st.power.off)
            .field("io_sqs", &st.sqs.iter().skip(1).flatten().count())
            .field("held", &st.held())
            .finish()
    }
}
