//! Block export: namespaces and VDE volumes served to other hosts over NVMe/TCP
//! ([`nvme_tcp`]) and NBD ([`nbd`]), by `ironvme serve`.
//!
//! A served namespace is a [`Backing`]: any device spec [`Device::open`] takes (a PCI
//! address, `/dev/nvmeXnY`, `/dev/ngXnY`, a file, `vde:DEV:VOL`), optionally followed by
//! `,nsid=N` to serve namespace N of a controller rather than its first
//! ([`crate::device::split_nsid`]), opened once and held with an exclusive [`Claim`] for as long as the
//! target runs, so nothing mounts or writes it meanwhile and a mounted device is refused.
//! Namespaces of one controller share its device ([`OpenedDevices`]). Naming a device in `--namespace`
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
    /// The spec as the user wrote it (with `,nsid=N` if given).
    pub spec: String,
    /// The open device, shared by the namespaces served from it (dropped before the
    /// claim).
    pub device: Arc<Device>,
    /// The served namespace (`,nsid=N`, or the device's first).
    pub info: NamespaceInfo,
    _claim: Arc<Claim>,
}

/// Devices already opened for serving, by device (every spelling of a PCI address or a
/// path is one device): a second namespace of the same controller uses the device (and
/// the claim) the first one opened, since a controller can be opened once (a VFIO group
/// has one owner, and a claim one holder).
#[derive(Default)]
pub struct OpenedDevices(std::collections::HashMap<String, (Arc<Device>, Arc<Claim>)>);

impl OpenedDevices {
    /// The name device `dev` (a spec without `,nsid=`) is kept under, the same for every
    /// spelling of it: a PCI address in its sysfs form (`00:05.0` and `pci:0000:00:05.0`
    /// are `0000:00:05.0`), a path that exists as the file it resolves to (a relative
    /// path, a symbolic link), anything else (a volume) as written.
    fn key(dev: &str) -> String {
        match crate::device::pci_address(dev) {
            Some(bdf) => bdf.to_string(),
            None => std::fs::canonicalize(dev).map_or_else(|_| dev.to_string(), |p| p.to_string_lossy().into_owned()),
        }
    }

    /// The controllers `specs` name by PCI address that ironvme's driver drives (`DEV`
    /// or `DEV,nsid=N`, each once, in the first spelling given): the ones
    /// [`Self::open_controllers`] brings up together, after the other specs. Volumes and
    /// paths are not among them.
    ///
    /// Errors: a malformed `,nsid=` or device spec.
    pub fn together<'a>(specs: &[&'a str]) -> Result<Vec<&'a str>, CliError> {
        let options = crate::OpenOptions::default();
        let mut devs: Vec<&str> = Vec::new();
        for &spec in specs {
            if crate::vde::volume::VolumeSpec::parse(spec).is_some() {
                continue;
            }
            let (dev, _) = crate::device::split_nsid(spec)?;
            let target = crate::Target::parse(dev)?;
            let vfio = matches!(target, crate::Target::Pci(_))
                && crate::choose_backend(&target, &options).0 == crate::Backend::Vfio;
            let key = Self::key(dev);
            if vfio && !devs.iter().any(|d| Self::key(d) == key) {
                devs.push(dev);
            }
        }
        Ok(devs)
    }

    /// Opens the controllers `devs` ([`Self::together`]) for serving: one thread brings
    /// them all up at once ([`crate::cli::io_shared::target::open_controllers_claimed`]).
    /// [`Backing::open_in`] then finds them opened. Open the other specs first: their
    /// claims can be refused, and a controller is reset as it is opened.
    ///
    /// Errors: as [`Backing::open_in`], for the first controller that fails; nothing of
    /// this call stays open then.
    pub fn open_controllers(&mut self, devs: &[&str]) -> Result<(), CliError> {
        let opened = crate::cli::io_shared::target::open_controllers_claimed(
            devs,
            &crate::OpenOptions::default(),
            Some((Access::Exclusive, "serve")),
            true,
        )?;
        for (dev, io) in devs.iter().zip(opened) {
            let (device, claim) = io.into_parts();
            self.0.insert(Self::key(dev), (Arc::new(device), Arc::new(claim)));
        }
        Ok(())
    }
}

impl Backing {
    /// Opens `spec` (`DEV` or `DEV,nsid=N`) for serving, with an exclusive claim.
    ///
    /// Errors: as [`Backing::open_in`].
    pub fn open(spec: &str) -> Result<Backing, CliError> {
        Backing::open_in(spec, &mut OpenedDevices::default())
    }

    /// Opens `spec` for serving, reusing its device if `opened` has it already.
    ///
    /// Errors: [`CliError::Ironvme`] for a malformed `,nsid=`; [`CliError::Refused`] when
    /// the device is in use (mounted, held by another ironvme); [`CliError::Ironvme`]
    /// when it cannot be opened or has no such active namespace.
    pub fn open_in(spec: &str, opened: &mut OpenedDevices) -> Result<Backing, CliError> {
        // A volume names its namespace inside (vde:DEV,nsid=N:VOL).
        let (dev, nsid) = if crate::vde::volume::VolumeSpec::parse(spec).is_some() {
            (spec, None)
        } else {
            crate::device::split_nsid(spec)?
        };
        let key = OpenedDevices::key(dev);
        let (device, claim) = match opened.0.get(&key) {
            Some((device, claim)) => (Arc::clone(device), Arc::clone(claim)),
            None => {
                let (device, claim) = crate::cli::io_shared::target::open_claimed(
                    dev,
                    &Default::default(),
                    Some((Access::Exclusive, "serve")),
                    true,
                )?
                .into_parts();
                let shared = (Arc::new(device), Arc::new(claim));
                opened.0.insert(key, shared.clone());
                shared
            }
        };
        let info = device.namespace(nsid)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_the_device_lacks_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk");
        std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
        let spec = file.to_str().unwrap();
        let mut opened = OpenedDevices::default();
        let first = Backing::open_in(spec, &mut opened).unwrap();
        let again = Backing::open_in(&format!("{spec},nsid=1"), &mut opened).unwrap();
        assert!(Arc::ptr_eq(&first.device, &again.device), "one device for both");
        let Err(e) = Backing::open_in(&format!("{spec},nsid=2"), &mut opened) else {
            panic!("a file has only namespace 1");
        };
        assert!(e.to_string().contains("no active namespace 2"), "{e}");
        // Another spelling of the same file is the same device, not a second opener.
        let relative = format!(
            "{}/../{}/disk",
            dir.path().display(),
            dir.path().file_name().unwrap().to_str().unwrap()
        );
        let third = Backing::open_in(&relative, &mut opened).unwrap();
        assert!(Arc::ptr_eq(&first.device, &third.device), "{relative} is {spec}");
    }

    #[test]
    fn every_spelling_of_a_pci_address_is_one_controller() {
        let specs = ["0000:00:05.0", "00:05.0,nsid=2", "pci:0000:00:05.0", "0000:00:06.0"];
        assert_eq!(
            OpenedDevices::together(&specs).unwrap(),
            ["0000:00:05.0", "0000:00:06.0"],
            "each controller brought up once"
        );
        for spec in ["00:05.0", "pci:0000:00:05.0", "pci:00:05.0"] {
            assert_eq!(OpenedDevices::key(spec), "0000:00:05.0");
        }
    }
}
