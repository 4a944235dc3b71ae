//! The completion status field — NVMe Base Specification 2.0, §4.6.1 (Figures 92–101).
//!
//! The 15-bit status field holds the Status Code (SC, bits 7:0), Status Code Type
//! (SCT, bits 10:8), Command Retry Delay (CRD, bits 12:11), More (M, bit 13) and Do Not
//! Retry (DNR, bit 14). This is also the value Linux's NVMe ioctls return on command
//! failure (`include/uapi/linux/nvme_ioctl.h`: the CQE status shifted right by one).

use std::fmt;

/// The Status Code Type (§4.6.1.1, Figure 93).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StatusCodeType {
    /// 0h: Generic Command Status.
    Generic,
    /// 1h: Command Specific Status.
    CommandSpecific,
    /// 2h: Media and Data Integrity Errors.
    MediaDataIntegrity,
    /// 3h: Path Related Status.
    PathRelated,
    /// 4h–6h: reserved.
    Reserved(u8),
    /// 7h: Vendor Specific.
    VendorSpecific,
}

impl StatusCodeType {
    /// Decodes the 3-bit SCT.
    pub const fn from_bits(sct: u8) -> StatusCodeType {
        match sct & 0x7 {
            0 => StatusCodeType::Generic,
            1 => StatusCodeType::CommandSpecific,
            2 => StatusCodeType::MediaDataIntegrity,
            3 => StatusCodeType::PathRelated,
            7 => StatusCodeType::VendorSpecific,
            other => StatusCodeType::Reserved(other),
        }
    }

    /// The specification's name of the type.
    pub const fn name(self) -> &'static str {
        match self {
            StatusCodeType::Generic => "Generic Command Status",
            StatusCodeType::CommandSpecific => "Command Specific Status",
            StatusCodeType::MediaDataIntegrity => "Media and Data Integrity Errors",
            StatusCodeType::PathRelated => "Path Related Status",
            StatusCodeType::Reserved(_) => "Reserved",
            StatusCodeType::VendorSpecific => "Vendor Specific",
        }
    }
}

/// A completion status: the 15-bit status field of a completion queue entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(u16);

impl Status {
    /// Successful Completion (SCT 0h, SC 00h).
    pub const SUCCESS: Status = Status::new(0, 0x00);
    /// Invalid Command Opcode (SCT 0h, SC 01h).
    pub const INVALID_OPCODE: Status = Status::new(0, 0x01);
    /// Invalid Field in Command (SCT 0h, SC 02h).
    pub const INVALID_FIELD: Status = Status::new(0, 0x02);
    /// Command ID Conflict (SCT 0h, SC 03h).
    pub const CID_CONFLICT: Status = Status::new(0, 0x03);
    /// Data Transfer Error (SCT 0h, SC 04h).
    pub const DATA_TRANSFER_ERROR: Status = Status::new(0, 0x04);
    /// Internal Error (SCT 0h, SC 06h).
    pub const INTERNAL_ERROR: Status = Status::new(0, 0x06);
    /// Command Abort Requested (SCT 0h, SC 07h).
    pub const ABORT_REQUESTED: Status = Status::new(0, 0x07);
    /// Command Aborted due to SQ Deletion (SCT 0h, SC 08h).
    pub const ABORTED_SQ_DELETION: Status = Status::new(0, 0x08);
    /// Invalid Namespace or Format (SCT 0h, SC 0Bh).
    pub const INVALID_NAMESPACE_OR_FORMAT: Status = Status::new(0, 0x0B);
    /// Command Sequence Error (SCT 0h, SC 0Ch).
    pub const COMMAND_SEQUENCE_ERROR: Status = Status::new(0, 0x0C);
    /// Data SGL Length Invalid (SCT 0h, SC 0Fh).
    pub const DATA_SGL_LENGTH_INVALID: Status = Status::new(0, 0x0F);
    /// SGL Descriptor Type Invalid (SCT 0h, SC 11h).
    pub const SGL_DESCRIPTOR_TYPE_INVALID: Status = Status::new(0, 0x11);
    /// PRP Offset Invalid (SCT 0h, SC 13h).
    pub const PRP_OFFSET_INVALID: Status = Status::new(0, 0x13);
    /// LBA Out of Range (SCT 0h, SC 80h).
    pub const LBA_OUT_OF_RANGE: Status = Status::new(0, 0x80);
    /// Capacity Exceeded (SCT 0h, SC 81h).
    pub const CAPACITY_EXCEEDED: Status = Status::new(0, 0x81);
    /// Completion Queue Invalid (SCT 1h, SC 00h).
    pub const COMPLETION_QUEUE_INVALID: Status = Status::new(1, 0x00);
    /// Invalid Queue Identifier (SCT 1h, SC 01h).
    pub const INVALID_QUEUE_IDENTIFIER: Status = Status::new(1, 0x01);
    /// Invalid Queue Size (SCT 1h, SC 02h).
    pub const INVALID_QUEUE_SIZE: Status = Status::new(1, 0x02);
    /// Abort Command Limit Exceeded (SCT 1h, SC 03h).
    pub const ABORT_COMMAND_LIMIT_EXCEEDED: Status = Status::new(1, 0x03);
    /// Asynchronous Event Request Limit Exceeded (SCT 1h, SC 05h).
    pub const AER_LIMIT_EXCEEDED: Status = Status::new(1, 0x05);
    /// Invalid Interrupt Vector (SCT 1h, SC 08h).
    pub const INVALID_INTERRUPT_VECTOR: Status = Status::new(1, 0x08);
    /// Invalid Log Page (SCT 1h, SC 09h).
    pub const INVALID_LOG_PAGE: Status = Status::new(1, 0x09);
    /// Invalid Format (SCT 1h, SC 0Ah).
    pub const INVALID_FORMAT: Status = Status::new(1, 0x0A);
    /// Invalid Queue Deletion (SCT 1h, SC 0Ch).
    pub const INVALID_QUEUE_DELETION: Status = Status::new(1, 0x0C);
    /// Feature Identifier Not Saveable (SCT 1h, SC 0Dh).
    pub const FEATURE_NOT_SAVEABLE: Status = Status::new(1, 0x0D);
    /// Namespace Already Attached (SCT 1h, SC 18h).
    pub const NAMESPACE_ALREADY_ATTACHED: Status = Status::new(1, 0x18);
    /// Namespace Not Attached (SCT 1h, SC 1Ah).
    pub const NAMESPACE_NOT_ATTACHED: Status = Status::new(1, 0x1A);
    /// Controller List Invalid (SCT 1h, SC 1Ch).
    pub const CONTROLLER_LIST_INVALID: Status = Status::new(1, 0x1C);
    /// Write Fault (SCT 2h, SC 80h).
    pub const WRITE_FAULT: Status = Status::new(2, 0x80);
    /// Unrecovered Read Error (SCT 2h, SC 81h).
    pub const UNRECOVERED_READ_ERROR: Status = Status::new(2, 0x81);
    /// Invalid Protection Information (SCT 1h, SC 81h): the command's PRINFO, EILBRT or
    /// ELBAT fields do not fit the namespace's protection information type.
    pub const INVALID_PROTECTION_INFORMATION: Status = Status::new(1, 0x81);
    /// End-to-end Guard Check Error (SCT 2h, SC 82h).
    pub const GUARD_CHECK_ERROR: Status = Status::new(2, 0x82);
    /// End-to-end Application Tag Check Error (SCT 2h, SC 83h).
    pub const APPLICATION_TAG_CHECK_ERROR: Status = Status::new(2, 0x83);
    /// End-to-end Reference Tag Check Error (SCT 2h, SC 84h).
    pub const REFERENCE_TAG_CHECK_ERROR: Status = Status::new(2, 0x84);
    /// Compare Failure (SCT 2h, SC 85h).
    pub const COMPARE_FAILURE: Status = Status::new(2, 0x85);
    /// Deallocated or Unwritten Logical Block (SCT 2h, SC 87h).
    pub const DEALLOCATED_OR_UNWRITTEN: Status = Status::new(2, 0x87);
    /// Command Aborted By Host (SCT 3h, SC 71h): the host driver completed the command
    /// itself, e.g. because the controller was reset while it was outstanding.
    pub const ABORTED_BY_HOST: Status = Status::new(3, 0x71);
    /// Invalid I/O Command Set (SCT 1h, SC 2Ch): e.g. Identify for a command set the
    /// namespace does not belong to.
    pub const INVALID_IO_COMMAND_SET: Status = Status::new(1, 0x2C);

    /// A status from its Status Code Type (3 bits) and Status Code, with DNR, More and
    /// CRD clear.
    pub const fn new(sct: u8, sc: u8) -> Status {
        Status(((sct as u16 & 0x7) << 8) | sc as u16)
    }

    /// A status from the raw 15-bit status field (bit 15 is ignored).
    pub const fn from_raw(raw: u16) -> Status {
        Status(raw & 0x7FFF)
    }

    /// The raw 15-bit status field.
    pub const fn raw(self) -> u16 {
        self.0
    }

    /// SC: the Status Code (bits 7:0).
    pub const fn sc(self) -> u8 {
        self.0 as u8
    }

    /// SCT: the Status Code Type (bits 10:8).
    pub const fn sct(self) -> StatusCodeType {
        StatusCodeType::from_bits((self.0 >> 8) as u8)
    }

    /// `SCT << 8 | SC`, the form nvme-cli and the kernel log print (e.g. 0x281).
    pub const fn code(self) -> u16 {
        self.0 & 0x7FF
    }

    /// CRD: Command Retry Delay (bits 12:11), an index into CRDT1–3 of Identify Controller.
    pub const fn crd(self) -> u8 {
        ((self.0 >> 11) & 0x3) as u8
    }

    /// M: More — more status information is in the Error Information log page (bit 13).
    pub const fn more(self) -> bool {
        self.0 & (1 << 13) != 0
    }

    /// DNR: Do Not Retry — the same command is expected to fail again (bit 14).
    pub const fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }

    /// Returns a copy with DNR set to `dnr`.
    #[must_use]
    pub const fn with_dnr(self, dnr: bool) -> Status {
        Status((self.0 & !(1 << 14)) | (dnr as u16) << 14)
    }

    /// Whether this is Successful Completion (SCT 0, SC 0). DNR/More/CRD are ignored.
    pub const fn is_success(self) -> bool {
        self.code() == 0
    }

    /// Whether two statuses carry the same Status Code Type and Status Code, ignoring
    /// DNR, More and CRD.
    pub const fn same_code(self, other: Status) -> bool {
        self.code() == other.code()
    }

    /// The specification's name of this status code, or `None` for codes ironvme does not
    /// know (reserved and vendor specific values).
    pub fn name(self) -> Option<&'static str> {
        let sc = self.sc();
        Some(match self.sct() {
            StatusCodeType::Generic => generic_name(sc)?,
            StatusCodeType::CommandSpecific => command_specific_name(sc)?,
            StatusCodeType::MediaDataIntegrity => media_name(sc)?,
            StatusCodeType::PathRelated => path_name(sc)?,
            StatusCodeType::Reserved(_) | StatusCodeType::VendorSpecific => return None,
        })
    }
}

/// Generic Command Status values (Figure 94) and the NVM command set's additions (80h+).
fn generic_name(sc: u8) -> Option<&'static str> {
    Some(match sc {
        0x00 => "Successful Completion",
        0x01 => "Invalid Command Opcode",
        0x02 => "Invalid Field in Command",
        0x03 => "Command ID Conflict",
        0x04 => "Data Transfer Error",
        0x05 => "Commands Aborted due to Power Loss Notification",
        0x06 => "Internal Error",
        0x07 => "Command Abort Requested",
        0x08 => "Command Aborted due to SQ Deletion",
        0x09 => "Command Aborted due to Failed Fused Command",
        0x0A => "Command Aborted due to Missing Fused Command",
        0x0B => "Invalid Namespace or Format",
        0x0C => "Command Sequence Error",
        0x0D => "Invalid SGL Segment Descriptor",
        0x0E => "Invalid Number of SGL Descriptors",
        0x0F => "Data SGL Length Invalid",
        0x10 => "Metadata SGL Length Invalid",
        0x11 => "SGL Descriptor Type Invalid",
        0x12 => "Invalid Use of Controller Memory Buffer",
        0x13 => "PRP Offset Invalid",
        0x14 => "Atomic Write Unit Exceeded",
        0x15 => "Operation Denied",
        0x16 => "SGL Offset Invalid",
        0x18 => "Host Identifier Inconsistent Format",
        0x19 => "Keep Alive Timer Expired",
        0x1A => "Keep Alive Timeout Invalid",
        0x1B => "Command Aborted due to Preempt and Abort",
        0x1C => "Sanitize Failed",
        0x1D => "Sanitize In Progress",
        0x1E => "SGL Data Block Granularity Invalid",
        0x1F => "Command Not Supported for Queue in CMB",
        0x20 => "Namespace is Write Protected",
        0x21 => "Command Interrupted",
        0x22 => "Transient Transport Error",
        0x23 => "Command Prohibited by Command and Feature Lockdown",
        0x24 => "Admin Command Media Not Ready",
        0x80 => "LBA Out of Range",
        0x81 => "Capacity Exceeded",
        0x82 => "Namespace Not Ready",
        0x83 => "Reservation Conflict",
        0x84 => "Format In Progress",
        _ => return None,
    })
}

/// Command Specific Status values (Figure 95) and the NVM command set's additions (80h+).
fn command_specific_name(sc: u8) -> Option<&'static str> {
    Some(match sc {
        0x00 => "Completion Queue Invalid",
        0x01 => "Invalid Queue Identifier",
        0x02 => "Invalid Queue Size",
        0x03 => "Abort Command Limit Exceeded",
        0x05 => "Asynchronous Event Request Limit Exceeded",
        0x06 => "Invalid Firmware Slot",
        0x07 => "Invalid Firmware Image",
        0x08 => "Invalid Interrupt Vector",
        0x09 => "Invalid Log Page",
        0x0A => "Invalid Format",
        0x0B => "Firmware Activation Requires Conventional Reset",
        0x0C => "Invalid Queue Deletion",
        0x0D => "Feature Identifier Not Saveable",
        0x0E => "Feature Not Changeable",
        0x0F => "Feature Not Namespace Specific",
        0x10 => "Firmware Activation Requires NVM Subsystem Reset",
        0x11 => "Firmware Activation Requires Controller Level Reset",
        0x12 => "Firmware Activation Requires Maximum Time Violation",
        0x13 => "Firmware Activation Prohibited",
        0x14 => "Overlapping Range",
        0x15 => "Namespace Insufficient Capacity",
        0x16 => "Namespace Identifier Unavailable",
        0x18 => "Namespace Already Attached",
        0x19 => "Namespace Is Private",
        0x1A => "Namespace Not Attached",
        0x1B => "Thin Provisioning Not Supported",
        0x1C => "Controller List Invalid",
        0x1D => "Device Self-test In Progress",
        0x1E => "Boot Partition Write Prohibited",
        0x1F => "Invalid Controller Identifier",
        0x20 => "Invalid Secondary Controller State",
        0x21 => "Invalid Number of Controller Resources",
        0x22 => "Invalid Resource Identifier",
        0x23 => "Sanitize Prohibited While Persistent Memory Region is Enabled",
        0x24 => "ANA Group Identifier Invalid",
        0x25 => "ANA Attach Failed",
        0x26 => "Insufficient Capacity",
        0x27 => "Namespace Attachment Limit Exceeded",
        0x28 => "Prohibition of Command Execution Not Supported",
        0x29 => "I/O Command Set Not Supported",
        0x2A => "I/O Command Set Not Enabled",
        0x2B => "I/O Command Set Combination Rejected",
        0x2C => "Invalid I/O Command Set",
        0x2D => "Identifier Unavailable",
        0x80 => "Conflicting Attributes",
        0x81 => "Invalid Protection Information",
        0x82 => "Attempted Write to Read Only Range",
        0x83 => "Command Size Limit Exceeded",
        // Zoned Namespace Command Set 1.1, Figure 26.
        0xB6 => "Invalid Zone Operation Request",
        0xB7 => "ZRWA Resources Unavailable",
        0xB8 => "Zone Boundary Error",
        0xB9 => "Zone Is Full",
        0xBA => "Zone Is Read Only",
        0xBB => "Zone Is Offline",
        0xBC => "Zone Invalid Write",
        0xBD => "Too Many Active Zones",
        0xBE => "Too Many Open Zones",
        0xBF => "Invalid Zone State Transition",
        _ => return None,
    })
}

/// Media and Data Integrity Errors values (Figure 96, NVM Command Set Figure 35).
fn media_name(sc: u8) -> Option<&'static str> {
    Some(match sc {
        0x80 => "Write Fault",
        0x81 => "Unrecovered Read Error",
        0x82 => "End-to-end Guard Check Error",
        0x83 => "End-to-end Application Tag Check Error",
        0x84 => "End-to-end Reference Tag Check Error",
        0x85 => "Compare Failure",
        0x86 => "Access Denied",
        0x87 => "Deallocated or Unwritten Logical Block",
        0x88 => "End-to-End Storage Tag Check Error",
        _ => return None,
    })
}

/// Path Related Status values (Figure 97).
fn path_name(sc: u8) -> Option<&'static str> {
    Some(match sc {
        0x00 => "Internal Path Error",
        0x01 => "Asymmetric Access Persistent Loss",
        0x02 => "Asymmetric Access Inaccessible",
        0x03 => "Asymmetric Access Transition",
        0x60 => "Controller Pathing Error",
        0x70 => "Host Pathing Error",
        0x71 => "Command Aborted By Host",
        _ => return None,
    })
}

impl fmt::Display for Status {
    /// `Unrecovered Read Error (SCT 2h, SC 81h; 0x281, DNR)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}")?,
            None => write!(f, "{} status", self.sct().name())?,
        }
        write!(f, " (0x{:03x}", self.code())?;
        if self.dnr() {
            write!(f, ", DNR")?;
        }
        if self.more() {
            write!(f, ", More")?;
        }
        if self.crd() != 0 {
            write!(f, ", CRD {}", self.crd())?;
        }
        write!(f, ")")
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_fields() {
        let s = Status::from_raw(0x4000 | 0x2000 | 0x0800 | 0x281);
        assert_eq!(s.sct(), StatusCodeType::MediaDataIntegrity);
        assert_eq!(s.sc(), 0x81);
        assert!(s.dnr());
        assert!(s.more());
        assert_eq!(s.crd(), 1);
        assert_eq!(s.code(), 0x281);
        assert!(s.same_code(Status::UNRECOVERED_READ_ERROR));
        assert_eq!(s.to_string(), "Unrecovered Read Error (0x281, DNR, More, CRD 1)");
    }

    #[test]
    fn names_follow_the_specification() {
        assert_eq!(Status::SUCCESS.name(), Some("Successful Completion"));
        assert_eq!(Status::INVALID_OPCODE.name(), Some("Invalid Command Opcode"));
        assert_eq!(Status::LBA_OUT_OF_RANGE.name(), Some("LBA Out of Range"));
        assert_eq!(Status::INVALID_QUEUE_SIZE.name(), Some("Invalid Queue Size"));
        assert_eq!(Status::WRITE_FAULT.name(), Some("Write Fault"));
        assert_eq!(Status::new(1, 0xBF).name(), Some("Invalid Zone State Transition"));
        assert_eq!(Status::new(1, 0xBC).name(), Some("Zone Invalid Write"));
        assert_eq!(Status::COMPARE_FAILURE.code(), 0x285);
        assert_eq!(Status::ABORTED_BY_HOST.name(), Some("Command Aborted By Host"));
        assert_eq!(Status::new(7, 0x10).name(), None);
        assert_eq!(Status::new(7, 0x10).to_string(), "Vendor Specific status (0x710)");
        assert_eq!(Status::new(5, 0).sct(), StatusCodeType::Reserved(5));
    }

    #[test]
    fn success_ignores_dnr() {
        assert!(Status::SUCCESS.with_dnr(true).is_success());
        assert!(!Status::INVALID_FIELD.is_success());
    }

    proptest! {
        #[test]
        fn any_status_word_decodes_and_prints(raw in any::<u16>()) {
            let s = Status::from_raw(raw);
            prop_assert_eq!(s.raw(), raw & 0x7FFF);
            prop_assert!(!s.to_string().is_empty());
            prop_assert_eq!(Status::new((s.raw() >> 8) as u8 & 7, s.sc()).code(), s.code());
        }
    }
}
