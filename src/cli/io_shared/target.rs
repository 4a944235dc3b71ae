//! DEV for the I/O subcommands (`perf`, `verify`, `vde`, the raw I/O commands, `format`'s
//! claim, `serve`): opening it on any backend, and the rule for writing to it. The raw
//! I/O commands (`write`, `write-zeroes`, `dsm`) take the claim but not the consent flag:
//! naming the command is the consent, as in nvme-cli.
//!
//! # Writing needs consent, except to a regular file
//!
//! ironvme never touches a device the user did not name, and a write workload destroys
//! the data of the device it is given. fio asks nothing; SPDK's perf takes whatever it is
//! pointed at. ironvme takes the middle road: naming a **regular file** is consent enough
//! (it is what fio users do every day, and a file is never someone's root filesystem by
//! accident), while a **device** — a PCI address, `/dev/nvmeX`, `/dev/nvmeXnY`,
//! `/dev/ngXnY`, any block device — needs `--allow-write` as well. Without it the command
//! stops before opening anything (opening a VFIO controller already resets it) and says
//! which flag confirms.
//!
//! A VDE volume (`vde:DEV:VOL`) is written like a regular file: naming it is consent,
//! since writing it changes only the volume; opening it claims the store's device.
//!
//! # One writer, and none while the kernel uses the device
//!
//! A command that writes holds an exclusive [`Claim`] on DEV for as long as it writes
//! (see [`crate::claim`]): on a block device that is `O_EXCL`, which the kernel refuses
//! while the device or one of its partitions is mounted or held by md, dm, swap or
//! another exclusive opener, so a mounted disk is refused even with `--allow-write`, and
//! nothing can mount it while ironvme writes. `/dev/ngXnY` claims its namespace's block
//! device and `/dev/nvmeX` those of all its namespaces, since the passthrough nodes have
//! no such check of their own. A regular file gets a `flock` lock, which every other
//! ironvme writer and reader of it meets. PCI addresses need nothing more: the VFIO group
//! is exclusive, and `scripts/setup.sh bind` refuses a controller with mounted namespaces.

use crate::claim::{Access, Claim};
use crate::cli::CliError;
use crate::{Backend, Device, OpenOptions, Target};

/// An opened device for I/O, with the claim that guards it.
pub struct IoDevice {
    /// The device (dropped before the claim: closed before others may open it).
    pub device: Device,
    /// The device as the user named it (a `pci:` prefix dropped), for reports.
    pub name: String,
    /// Held for as long as the device is used; released on drop.
    claim: Claim,
}

impl IoDevice {
    /// The device and the claim on it; keep the claim for as long as the device is used,
    /// and drop it last.
    pub fn into_parts(self) -> (Device, Claim) {
        (self.device, self.claim)
    }
}

/// Why writing to `target` is refused without `--allow-write`, or `None` if it is not.
/// `what` says what would write (`"perf --rw randwrite"`).
pub fn write_refusal(target: &Target, dev: &str, what: &str, allow_write: bool) -> Option<String> {
    let kind = match target {
        Target::File(_) => return None,
        _ if allow_write => return None,
        Target::Pci(_) => "an NVMe controller (through VFIO)",
        Target::NvmeController(_) => "an NVMe controller",
        Target::NvmeGeneric(_) => "an NVMe namespace (generic device)",
        Target::NvmeBlock(_) => "an NVMe namespace",
        Target::Block(_) => "a block device",
    };
    Some(format!(
        "refusing to write: {what} overwrites the data on {dev}, {kind}; add --allow-write to confirm (not needed for \
         regular files)"
    ))
}

/// Opens `dev` with `backend` (or the one its kind suggests). `writes` names what will
/// write (`Some("verify")`): it needs consent ([`write_refusal`]) and gets an exclusive
/// claim; `None` is a read-only use, which claims nothing (reading a device in use is
/// harmless).
///
/// Errors: [`CliError::Refused`] for a write without consent or to a device in use
/// (nothing is opened then); [`CliError::Ironvme`] when the device cannot be opened.
pub fn open(
    dev: &str,
    backend: Option<Backend>,
    writes: Option<&str>,
    allow_write: bool,
) -> Result<IoDevice, CliError> {
    open_with(dev, &OpenOptions::with_backend(backend), writes, allow_write)
}

/// [`open`] with all of [`OpenOptions`] (the VFIO driver's configuration among them).
///
/// Errors: as [`open`].
pub fn open_with(
    dev: &str,
    options: &OpenOptions,
    writes: Option<&str>,
    allow_write: bool,
) -> Result<IoDevice, CliError> {
    match writes {
        Some(what) => open_claimed(dev, options, Some((Access::Exclusive, what)), allow_write),
        None => open_claimed(dev, options, None, allow_write),
    }
}

/// Opens `dev` like [`open`], holding a claim of the given access for `what` (`"vde
/// get"`) — [`Access::Shared`] for readers that must not run beside a writer (a VDE
/// store's), [`Access::Exclusive`] for writers, which also need consent on a device — or
/// none.
///
/// Errors: as [`open`].
pub fn open_claimed(
    dev: &str,
    options: &OpenOptions,
    claim: Option<(Access, &str)>,
    allow_write: bool,
) -> Result<IoDevice, CliError> {
    if let Some(spec) = crate::vde::volume::VolumeSpec::parse(dev) {
        // A VDE volume: writing it is consent enough (it changes only the volume, as
        // writing a regular file changes only the file), and the device claims the
        // store's device itself (exclusive for a volume, shared for a snapshot).
        spec?;
        let device = Device::open(dev, options)?;
        return Ok(IoDevice {
            device,
            name: dev.to_string(),
            claim: Claim::none(),
        });
    }
    let target = Target::parse(dev)?;
    let claim = take_claim(&target, dev, claim, allow_write)?;
    let device = Device::open(dev, options)?;
    let name = match &target {
        Target::Pci(bdf) => bdf.clone(),
        _ => dev.to_string(),
    };
    Ok(IoDevice { device, name, claim })
}

/// The claim [`open_claimed`] holds on `target` (named `dev`), after the consent check
/// for an exclusive one.
///
/// Errors: [`CliError::Refused`] without consent, or when the device is in use.
fn take_claim(target: &Target, dev: &str, claim: Option<(Access, &str)>, allow_write: bool) -> Result<Claim, CliError> {
    Ok(match claim {
        Some((access, what)) => {
            if access == Access::Exclusive
                && let Some(why) = write_refusal(target, dev, what, allow_write)
            {
                return Err(CliError::Refused(why));
            }
            Claim::acquire(target, dev, access).map_err(|e| refused(what, e))?
        }
        None => Claim::none(),
    })
}

/// [`open_claimed`] for several controllers named by PCI address (`bdfs`, as the user
/// wrote them), through ironvme's driver: every claim is taken first (nothing is opened
/// when one is refused), then this thread brings the controllers up together
/// ([`crate::open_vfio_all`]), so their CSTS.RDY waits and admin commands overlap.
///
/// Errors: as [`open_claimed`], for the first controller that fails (each failure is
/// logged); nothing stays open or claimed then.
pub fn open_controllers_claimed(
    bdfs: &[&str],
    options: &OpenOptions,
    claim: Option<(Access, &str)>,
    allow_write: bool,
) -> Result<Vec<IoDevice>, CliError> {
    let mut claimed = Vec::with_capacity(bdfs.len());
    for &dev in bdfs {
        let target = Target::parse(dev)?;
        let Target::Pci(bdf) = &target else {
            return Err(CliError::Usage(format!("{dev} is not a PCI address")));
        };
        claimed.push((bdf.clone(), take_claim(&target, dev, claim, allow_write)?));
    }
    let addresses: Vec<&str> = claimed.iter().map(|(bdf, _)| bdf.as_str()).collect();
    let mut devices = Vec::with_capacity(claimed.len());
    let mut first_error = None;
    for opened in crate::open_vfio_all(&addresses, options.controller.clone(), options.interrupts) {
        match opened {
            Ok(v) => devices.push(Device::Vfio(Box::new(v))),
            Err(e) => {
                tracing::error!(error = %e, "opening a controller failed");
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        // The devices opened (declared after the claims) close first.
        return Err(e.into());
    }
    Ok(claimed
        .into_iter()
        .zip(devices)
        .map(|((name, claim), device)| IoDevice { device, name, claim })
        .collect())
}

/// The refusal of `what` because the device's claim was not granted (nothing was done).
pub fn refused(what: &str, e: crate::claim::ClaimError) -> CliError {
    CliError::Refused(format!("refusing to run {what}: {e}; nothing was done"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn devices_need_consent_and_files_do_not() {
        let file = Target::File(PathBuf::from("/tmp/disk.img"));
        assert_eq!(write_refusal(&file, "/tmp/disk.img", "verify", false), None);
        for (target, kind) in [
            (Target::Pci("0000:00:05.0".into()), "NVMe controller (through VFIO)"),
            (Target::NvmeController("/dev/nvme0".into()), "an NVMe controller"),
            (Target::NvmeGeneric("/dev/ng0n1".into()), "generic device"),
            (Target::NvmeBlock("/dev/nvme0n1".into()), "an NVMe namespace"),
            (Target::Block("/dev/sda".into()), "a block device"),
        ] {
            let why = write_refusal(&target, "DEV", "perf --rw write", false).expect("refused");
            assert!(
                why.contains("--allow-write") && why.contains(kind) && why.contains("perf --rw write"),
                "{why}"
            );
            assert_eq!(write_refusal(&target, "DEV", "perf --rw write", true), None);
        }
    }

    #[test]
    fn a_refused_write_opens_nothing() {
        // A PCI address no machine has: refused before any attempt to open it.
        let e = open("dead:be:1f.7", None, Some("verify"), false)
            .err()
            .expect("refused");
        assert!(matches!(e, CliError::Refused(_)), "{e}");
        // Read-only use goes on to open it, and fails there.
        let e = open("dead:be:1f.7", None, None, false).err().expect("absent");
        assert!(matches!(e, CliError::Ironvme(_)), "{e}");
    }
}
