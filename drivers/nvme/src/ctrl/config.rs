//! Controller driver configuration.

use super::recovery::RecoveryObserver;
use crate::hw::InterruptVectors;
use std::sync::Arc;
use std::time::Duration;

/// How I/O commands describe their data buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DataPointerMode {
    /// Always PRPs (§4.1.1).
    Prp,
    /// SGLs (§4.1.2) when the controller supports them for I/O, else PRPs.
    Sgl,
    /// SGLs for transfers that would need a PRP list (more than two memory pages) when
    /// the controller supports them; PRPs otherwise.
    #[default]
    Auto,
}

/// Tunables of the controller driver. `Default` gives values suitable for real devices
/// and QEMU's emulated controller.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Admin queue size in entries (2..=4096, clamped to CAP.MQES + 1; at least 4 with
    /// [`Self::async_events`], else init fails with [`super::Error::Config`]). Default 32.
    pub admin_queue_entries: u32,
    /// I/O queue size in entries (2..=65536, clamped to CAP.MQES + 1). A queue holds one
    /// command fewer than its size. Default 256.
    pub io_queue_entries: u32,
    /// I/O queue pairs to ask for with Set Features Number of Queues. The driver uses
    /// min(asked, granted). Default 16.
    pub io_queues: u16,
    /// Memory page size (CC.MPS) in bytes: a power of two within CAP.MPSMIN..=MPSMAX and
    /// at most the DMA allocator's alignment ([`crate::hw::DmaAllocator::page_size`], 4 KiB
    /// for VFIO and the simulator), since every ring and PRP list must start on a memory
    /// page. Other values fail init with [`super::Error::Config`]. Default 4096.
    pub page_size: usize,
    /// Largest transfer per command in bytes, further limited by MDTS. Larger requests
    /// are refused with [`crate::ctrl::Error::TransferTooLarge`], never split. Default
    /// 1 MiB.
    pub max_transfer_bytes: usize,
    /// PRPs or SGLs for I/O data. Default [`DataPointerMode::Auto`].
    pub data_pointer: DataPointerMode,
    /// Deadline of an admin command. Default 10 s.
    pub admin_timeout: Duration,
    /// Deadline of an I/O command. When it passes the driver sends Abort (see
    /// [`Self::abort_timeout`]), or resets the controller at once when its Abort is a
    /// no-op ([`crate::quirks::Quirks::ABORT_NOOP`]). Default 30 s (Linux's
    /// `nvme_core.io_timeout`).
    pub io_timeout: Duration,
    /// How long a command may take to complete after Abort was sent for it before the
    /// controller is reset, whether the controller answered "aborted" or "not aborted"
    /// (the command may still complete by itself). Default 5 s.
    pub abort_timeout: Duration,
    /// Longest wait for CSTS.SHST on shutdown when the controller reports no RTD3E.
    /// Default 10 s.
    pub shutdown_timeout: Duration,
    /// Configure asynchronous events and keep Asynchronous Event Requests outstanding.
    /// Default true.
    pub async_events: bool,
    /// Set the controller's Timestamp feature from the host clock at init when supported.
    /// Default true.
    pub set_timestamp: bool,
    /// Use shadow doorbells (Doorbell Buffer Config, §5.8) for the I/O queues when the
    /// controller supports them (OACS bit 8). Default false: on QEMU 7.2's controller
    /// under TCG, the one measured, they cost more than they save (docs/design.md).
    pub shadow_doorbells: bool,
    /// Interrupt vectors for the I/O completion queues (interrupt mode). With them, I/O
    /// queue `qid` is created with IEN = 1 and IV = `qid` when `qid` is below
    /// [`InterruptVectors::count`] (vector 0 is the admin queue's, which stays polled),
    /// and [`super::IoQueuePair::wait`] sleeps on its vector instead of spinning. Queues
    /// beyond the vectors, and every queue without them, are polled. Default none (all
    /// polled, no interrupts generated).
    pub interrupts: Option<Arc<dyn InterruptVectors>>,
    /// Called on each recovery step (timeout, abort, reset), in the thread doing it. During
    /// a reset it runs with the admin queue locked, so it must not send admin commands
    /// (that would deadlock). Default none.
    pub recovery_observer: Option<RecoveryObserver>,
    /// What the controller does differently from what it advertises
    /// ([`crate::quirks`]). `None` (the default): `ironvme::open_vfio` looks the
    /// function's PCI vendor and device ID up ([`crate::quirks::lookup`]), and a
    /// controller without a PCI ID (the simulator) has none. `Some(q)`: exactly `q`
    /// (`Some(Quirks::empty())` turns the table off, e.g. to exercise Abort on QEMU).
    pub quirks: Option<crate::quirks::Quirks>,
}

impl ControllerConfig {
    /// The quirks the driver applies: [`ControllerConfig::quirks`], none when unset (only
    /// `ironvme::open_vfio` looks a PCI ID up).
    pub fn quirks_in_use(&self) -> crate::quirks::Quirks {
        self.quirks.unwrap_or_default()
    }
}

impl Default for ControllerConfig {
    fn default() -> ControllerConfig {
        ControllerConfig {
            admin_queue_entries: 32,
            io_queue_entries: 256,
            io_queues: 16,
            page_size: 4096,
            max_transfer_bytes: 1 << 20,
            data_pointer: DataPointerMode::Auto,
            admin_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            abort_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            async_events: true,
            set_timestamp: true,
            shadow_doorbells: false,
            interrupts: None,
            recovery_observer: None,
            quirks: None,
        }
    }
}
