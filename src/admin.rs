//! Admin commands over any device that can issue them.
//!
//! [`AdminCommands`] is the one thing a backend provides: run a command and move its data.
//! ironvme's VFIO driver implements it; the kernel's NVMe ioctl and io_uring passthrough
//! backends do too. The helpers here build the commands and parse the answers, so the CLI
//! prints the same thing whichever backend is underneath.

use crate::Error;
use ironvme_nvme::cmd::Command;
use ironvme_nvme::ctrl::{Controller, NSID_ALL};
use ironvme_nvme::features::{FeatureId, FeatureSelect};
use ironvme_nvme::hw::Registers;
use ironvme_nvme::identify::{
    Cns, IDENTIFY_DATA_LEN, IdentifyController, IdentifyNamespace, NamespaceDescriptor, NamespaceList,
};
use ironvme_nvme::log::{ErrorLogEntry, FirmwareSlotLog, LogPageId, SmartLog};

/// Bytes one Get Log Page command reads at most; larger logs are read in pieces.
pub const LOG_PIECE_BYTES: usize = 64 * 1024;

/// A device that runs NVMe admin commands (Base Specification 2.0, §5).
pub trait AdminCommands {
    /// Runs `cmd`, which reads `len` bytes (at most [`LOG_PIECE_BYTES`]) from the
    /// controller; returns completion DW0 and the data. The data pointer is set by the
    /// implementation.
    ///
    /// Errors: the command's decoded NVMe status, or why it could not be sent.
    fn admin_read(&self, cmd: Command, len: usize) -> Result<(u32, Vec<u8>), Error>;

    /// Runs `cmd`, sending `data` (possibly empty) to the controller; returns DW0.
    ///
    /// Errors: as [`AdminCommands::admin_read`].
    fn admin_write(&self, cmd: Command, data: &[u8]) -> Result<u32, Error>;

    /// As [`AdminCommands::admin_write`], for a command that may run longer than the
    /// usual admin timeout (Format NVM with secure erase): the device gives it up to
    /// `timeout`. The kernel backends pass it to the ioctl (`timeout_ms`; otherwise the
    /// kernel's `nvme_core.admin_timeout`, 60 s, aborts it and resets the controller);
    /// ironvme's VFIO driver applies the admin timeout it was opened with
    /// ([`ironvme_nvme::ctrl::ControllerConfig::admin_timeout`]), so open it with this one.
    ///
    /// Errors: as [`AdminCommands::admin_read`].
    fn admin_write_within(&self, cmd: Command, data: &[u8], timeout: std::time::Duration) -> Result<u32, Error>;
}

impl<R: Registers> AdminCommands for Controller<R> {
    fn admin_read(&self, cmd: Command, len: usize) -> Result<(u32, Vec<u8>), Error> {
        let (c, data) = self.admin_command(cmd, len)?;
        Ok((c.dw0, data))
    }

    fn admin_write(&self, cmd: Command, data: &[u8]) -> Result<u32, Error> {
        if data.is_empty() {
            return Ok(self.admin_command(cmd, 0)?.0.dw0);
        }
        Ok(self.admin_command_write(cmd, data)?.dw0)
    }

    fn admin_write_within(&self, cmd: Command, data: &[u8], _timeout: std::time::Duration) -> Result<u32, Error> {
        // The deadline is the controller's configured admin timeout (see the trait).
        self.admin_write(cmd, data)
    }
}

/// The 4096-byte data structure Identify returns for `cns` and `nsid` (Base
/// Specification 2.0, §5.17), as the controller returned it.
///
/// Errors: as [`AdminCommands::admin_read`].
pub fn identify(dev: &dyn AdminCommands, cns: Cns, nsid: u32) -> Result<Vec<u8>, Error> {
    Ok(dev.admin_read(Command::identify(cns, nsid, 0), IDENTIFY_DATA_LEN)?.1)
}

/// Identify Controller (CNS 01h).
///
/// Errors: as [`AdminCommands::admin_read`]; [`Error::Parse`].
pub fn identify_controller(dev: &dyn AdminCommands) -> Result<IdentifyController, Error> {
    Ok(IdentifyController::parse(&identify(dev, Cns::CONTROLLER, 0)?)?)
}

/// Identify Namespace (CNS 00h) of `nsid`.
///
/// Errors: as [`identify_controller`].
pub fn identify_namespace(dev: &dyn AdminCommands, nsid: u32) -> Result<IdentifyNamespace, Error> {
    Ok(IdentifyNamespace::parse(&identify(dev, Cns::NAMESPACE, nsid)?)?)
}

/// The active namespace IDs (CNS 02h).
///
/// Errors: as [`identify_controller`].
pub fn active_namespaces(dev: &dyn AdminCommands) -> Result<Vec<u32>, Error> {
    Ok(NamespaceList::parse(&identify(dev, Cns::ACTIVE_NAMESPACE_LIST, 0)?)?)
}

/// The namespace identification descriptors (CNS 03h) of `nsid`.
///
/// Errors: as [`identify_controller`].
pub fn namespace_descriptors(dev: &dyn AdminCommands, nsid: u32) -> Result<Vec<NamespaceDescriptor>, Error> {
    Ok(ironvme_nvme::identify::parse_namespace_descriptors(&identify(
        dev,
        Cns::NAMESPACE_ID_DESCRIPTORS,
        nsid,
    )?)?)
}

/// `len` bytes (a multiple of 4) of log page `lid` for `nsid` from byte `offset` (a
/// multiple of 4), read in pieces of [`LOG_PIECE_BYTES`].
///
/// Errors: [`Error::Unsupported`] for unaligned lengths or offsets; as
/// [`AdminCommands::admin_read`].
pub fn get_log_page(
    dev: &dyn AdminCommands,
    lid: LogPageId,
    nsid: u32,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, Error> {
    let pieces = Command::get_log_page_pieces(lid, nsid, offset, len, LOG_PIECE_BYTES).ok_or_else(|| {
        Error::Unsupported(format!(
            "log page length {len} and offset {offset} must be non-zero multiples of 4"
        ))
    })?;
    let mut out = Vec::with_capacity(len);
    for (cmd, piece) in pieces {
        out.extend_from_slice(&dev.admin_read(cmd, piece)?.1);
    }
    Ok(out)
}

/// The SMART / Health Information log (LID 02h), controller-wide: its 512 bytes.
///
/// Errors: as [`get_log_page`].
pub fn smart_log_bytes(dev: &dyn AdminCommands) -> Result<Vec<u8>, Error> {
    get_log_page(dev, LogPageId::SMART_HEALTH, NSID_ALL, 0, SmartLog::LEN)
}

/// The SMART / Health Information log (LID 02h), controller-wide.
///
/// Errors: as [`get_log_page`]; [`Error::Parse`].
pub fn smart_log(dev: &dyn AdminCommands) -> Result<SmartLog, Error> {
    Ok(SmartLog::parse(&smart_log_bytes(dev)?)?)
}

/// The Error Information log (LID 01h): `entries` 64-byte entries (ELPE + 1), empty
/// ones (Error Count 0) included: `entries` × 64 bytes.
///
/// Errors: as [`get_log_page`].
pub fn error_log_bytes(dev: &dyn AdminCommands, entries: usize) -> Result<Vec<u8>, Error> {
    get_log_page(
        dev,
        LogPageId::ERROR_INFORMATION,
        NSID_ALL,
        0,
        entries.max(1) * ErrorLogEntry::LEN,
    )
}

/// The Error Information log (LID 01h), parsed: see [`error_log_bytes`].
///
/// Errors: as [`smart_log`].
pub fn error_log(dev: &dyn AdminCommands, entries: usize) -> Result<Vec<ErrorLogEntry>, Error> {
    Ok(ironvme_nvme::log::parse_error_log_entries(&error_log_bytes(
        dev, entries,
    )?)?)
}

/// The Firmware Slot Information log (LID 03h): its 512 bytes.
///
/// Errors: as [`get_log_page`].
pub fn firmware_slot_log_bytes(dev: &dyn AdminCommands) -> Result<Vec<u8>, Error> {
    get_log_page(dev, LogPageId::FIRMWARE_SLOT, NSID_ALL, 0, FirmwareSlotLog::LEN)
}

/// The Firmware Slot Information log (LID 03h).
///
/// Errors: as [`smart_log`].
pub fn firmware_slot_log(dev: &dyn AdminCommands) -> Result<FirmwareSlotLog, Error> {
    Ok(FirmwareSlotLog::parse(&firmware_slot_log_bytes(dev)?)?)
}

/// Get Features `fid` (select `sel`, namespace `nsid`, input `cdw11`); returns DW0 and
/// `data_len` bytes of data for features that return a buffer (Timestamp: 8).
///
/// Errors: as [`AdminCommands::admin_read`].
pub fn get_feature(
    dev: &dyn AdminCommands,
    fid: FeatureId,
    sel: FeatureSelect,
    nsid: u32,
    cdw11: u32,
    data_len: usize,
) -> Result<(u32, Vec<u8>), Error> {
    dev.admin_read(Command::get_features(fid, sel, nsid, cdw11), data_len)
}

pub use crate::nvme::cmd::FormatSettings;

/// Format NVM of `nsid` with `settings`, allowed to take up to `timeout`
/// ([`AdminCommands::admin_write_within`]). Destroys the namespace's data.
///
/// Errors: as [`AdminCommands::admin_write`].
pub fn format_nvm(
    dev: &dyn AdminCommands,
    nsid: u32,
    settings: FormatSettings,
    timeout: std::time::Duration,
) -> Result<(), Error> {
    dev.admin_write_within(settings.command(nsid), &[], timeout)?;
    Ok(())
}

/// Namespace Attachment (Base Specification 2.0, §5.22): attaches namespace `nsid` to the
/// controllers `controllers` (CNTLIDs), or detaches it from them.
///
/// Errors: [`Error::Nvme`] with [`ironvme_nvme::ctrl::Error::Config`] for an empty list or
/// one of more than 2047 controllers; the device's answer (Namespace Already Attached
/// 118h, Namespace Not Attached 11Ah, Controller List Invalid 11Ch, ...).
pub fn namespace_attachment(
    dev: &dyn AdminCommands,
    nsid: u32,
    attach: bool,
    controllers: &[u16],
) -> Result<(), Error> {
    let list = ironvme_nvme::cmd::controller_list(controllers).map_err(ironvme_nvme::ctrl::Error::Config)?;
    dev.admin_write(Command::namespace_attachment(nsid, attach), &list)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::time::Duration;

    /// Records the admin commands written and the timeout each was given.
    #[derive(Default)]
    struct Recorder(RefCell<Vec<(u8, Option<Duration>)>>);

    impl AdminCommands for Recorder {
        fn admin_read(&self, _cmd: Command, len: usize) -> Result<(u32, Vec<u8>), Error> {
            Ok((0, vec![0; len]))
        }
        fn admin_write(&self, cmd: Command, _data: &[u8]) -> Result<u32, Error> {
            self.0.borrow_mut().push((cmd.opcode(), None));
            Ok(0)
        }
        fn admin_write_within(&self, cmd: Command, _data: &[u8], timeout: Duration) -> Result<u32, Error> {
            self.0.borrow_mut().push((cmd.opcode(), Some(timeout)));
            Ok(0)
        }
    }

    #[test]
    fn format_nvm_gives_the_device_the_callers_timeout() {
        let dev = Recorder::default();
        let settings = FormatSettings {
            lbaf: 4,
            ses: 1,
            ..FormatSettings::default()
        };
        format_nvm(&dev, 1, settings, Duration::from_secs(600)).unwrap();
        assert_eq!(*dev.0.borrow(), [(0x80, Some(Duration::from_secs(600)))]);
    }
}
