//! Block export: namespaces and VDE volumes served to other hosts over NVMe/TCP
//! ([`nvme_tcp`]) and NBD ([`nbd`]), by `ironvme serve`.
//!
//! A served namespace is a [`Backing`]: any device spec [`Device::open`] takes (a PCI
//! address, `/dev/nvmeXnY`, `/dev/ngXnY`, a file, `vde:DEV:VOL`), opened once and held
//! with an exclusive [`Claim`] for as long as the target runs, so nothing mounts or
//! writes it meanwhile and a mounted device is refused. Naming a device in `--namespace`
//! or `--export` is the consent to let initiators write it, as naming it in nvmet's
//! `device_path` is. Each thread that serves I/O creates its own queue on it
//! ([`Backing::queue`]): no lock per I/O.

pub mod nbd;
pub mod nvme_tcp;

use crate::claim::{Access, Claim};
use crate::cli::CliError;
use crate::{Device, IoQueue};
use ironvme_nvme::block::NamespaceInfo;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A namespace served to initiators: the device, its namespace and the claim on it.
pub struct Backing {
    /// The device spec as the user wrote it.
    pub spec: String,
    /// The open device (dropped before the claim).
    pub device: Device,
    /// The served namespace (the device's first).
    pub info: NamespaceInfo,
    _claim: Claim,
}

impl Backing {
    /// Opens `spec` for serving, with an exclusive claim.
    ///
    /// Errors: [`CliError::Refused`] when the device is in use (mounted, held by another
    /// ironvme); [`CliError::Ironvme`] when it cannot be opened.
    pub fn open(spec: &str) -> Result<Backing, CliError> {
        let opened = crate::cli::io_shared::target::open_claimed(
            spec,
            &Default::default(),
            Some((Access::Exclusive, "serve")),
            true,
        )?;
        let (device, claim) = opened.into_parts();
        let info = device.namespace(None)?;
        Ok(Backing {
            spec: spec.to_string(),
            device,
            info,
            _claim: claim,
        })
    }

    /// A new I/O queue of `depth` operations on the namespace, for the calling thread.
    ///
    /// Errors: the backend's ([`Device::create_queue`]).
    pub fn queue(&self, depth: usize) -> Result<IoQueue, crate::Error> {
        self.device.create_queue(Some(self.info.nsid), depth)
    }
}

/// Set once SIGINT or SIGTERM arrives (or a test asks): every serving loop drains its
/// outstanding I/O, flushes, and returns. Loops read it at least every
/// [`STOP_POLL`].
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

/// How often a serving loop that is idle looks at [`Stop`] and its timers.
pub const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(100);

impl Stop {
    /// A flag set by SIGINT and SIGTERM.
    ///
    /// Errors: the OS error of installing the handlers.
    pub fn on_signals() -> std::io::Result<Stop> {
        let stop = Stop::default();
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, Arc::clone(&stop.0))?;
        }
        Ok(stop)
    }

    /// Asks every loop to stop.
    pub fn set(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether stopping was asked for.
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
