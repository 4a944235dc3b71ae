//! DEV for the I/O subcommands (`perf`, `verify`): opening it on any backend, and the rule
//! for writing to it.
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
//! A block device is also opened with `O_EXCL` for as long as the command writes to it:
//! the kernel refuses that while the device or one of its partitions is mounted or held
//! by md, dm, swap or another exclusive opener, so a mounted disk is refused even with
//! `--allow-write`, and nothing can mount it while ironvme writes. NVMe passthrough nodes
//! (`/dev/nvmeX`, `/dev/ngXnY`) have no such check in the kernel; PCI addresses are
//! covered by `scripts/setup.sh bind`, which refuses a controller with mounted namespaces.

use crate::cli::CliError;
use crate::{Backend, Device, OpenOptions, Target};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;

/// An opened device for I/O, with the exclusive claim that guards writes to a block
/// device.
pub struct IoDevice {
    /// The device.
    pub device: Device,
    /// The device as the user named it (a `pci:` prefix dropped), for reports.
    pub name: String,
    /// Held for as long as the device is written; released on drop.
    _claim: Option<File>,
}

impl IoDevice {
    /// The device and the exclusive claim on it (`None` unless it is a block device
    /// opened for writing); keep the claim for as long as the device is written.
    pub fn into_parts(self) -> (Device, Option<File>) {
        (self.device, self._claim)
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
/// write (`Some("verify")`), or is `None` for a read-only use.
///
/// Errors: [`CliError::Refused`] for a write without consent or to a block device in use
/// (nothing is opened then); [`CliError::Ironvme`] when the device cannot be opened.
pub fn open(
    dev: &str,
    backend: Option<Backend>,
    writes: Option<&str>,
    allow_write: bool,
) -> Result<IoDevice, CliError> {
    let target = Target::parse(dev)?;
    let mut claim = None;
    if let Some(what) = writes {
        if let Some(why) = write_refusal(&target, dev, what, allow_write) {
            return Err(CliError::Refused(why));
        }
        if let Target::NvmeBlock(path) | Target::Block(path) = &target {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_EXCL)
                .open(path)
                .map_err(|e| {
                    CliError::Refused(format!(
                        "refusing to write: {dev} is in use (mounted, a partition mounted, or held by another driver): \
                         {e}"
                    ))
                })?;
            claim = Some(file);
        }
    }
    let options = OpenOptions {
        backend,
        ..Default::default()
    };
    let device = Device::open(dev, &options)?;
    let name = match &target {
        Target::Pci(bdf) => bdf.clone(),
        _ => dev.to_string(),
    };
    Ok(IoDevice {
        device,
        name,
        _claim: claim,
    })
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
