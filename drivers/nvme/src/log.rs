//! Log pages (Get Log Page, admin opcode 02h), NVMe Base Specification 2.0 §5.16.
//!
//! - [`ErrorLogEntry`] / [`parse_error_log`]: Error Information (LID 01h, §5.16.1.2).
//! - [`SmartLog`]: SMART / Health Information (LID 02h, §5.16.1.3).
//! - [`FirmwareSlotLog`]: Firmware Slot Information (LID 03h, §5.16.1.4).
//!
//! Every parser is total: any byte slice gives a value or a [`ParseError`], never a panic.

use crate::parse::{ParseError, ascii, le16, le32, le64, le128, need};

/// Log Page Identifier (LID), CDW10 bits 7:0 of Get Log Page (Base 2.0 §5.16).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LogPageId(pub u8);

impl LogPageId {
    /// 01h: Error Information (§5.16.1.2), 64 bytes per entry.
    pub const ERROR_INFORMATION: LogPageId = LogPageId(0x01);
    /// 02h: SMART / Health Information (§5.16.1.3), 512 bytes.
    pub const SMART_HEALTH: LogPageId = LogPageId(0x02);
    /// 03h: Firmware Slot Information (§5.16.1.4), 512 bytes.
    pub const FIRMWARE_SLOT: LogPageId = LogPageId(0x03);
    /// 04h: Changed Namespace List (§5.16.1.5), 4096 bytes.
    pub const CHANGED_NAMESPACE_LIST: LogPageId = LogPageId(0x04);
    /// 05h: Commands Supported and Effects (§5.16.1.6), 4096 bytes.
    pub const COMMANDS_SUPPORTED_AND_EFFECTS: LogPageId = LogPageId(0x05);
    /// 06h: Device Self-test (§5.16.1.7), 564 bytes.
    pub const DEVICE_SELF_TEST: LogPageId = LogPageId(0x06);
    /// 07h: Telemetry Host-Initiated (§5.16.1.8).
    pub const TELEMETRY_HOST: LogPageId = LogPageId(0x07);
    /// 08h: Telemetry Controller-Initiated (§5.16.1.9).
    pub const TELEMETRY_CONTROLLER: LogPageId = LogPageId(0x08);
    /// 09h: Endurance Group Information (§5.16.1.10), 512 bytes.
    pub const ENDURANCE_GROUP: LogPageId = LogPageId(0x09);
    /// 0Ah: Predictable Latency Per NVM Set (§5.16.1.11), 512 bytes.
    pub const PREDICTABLE_LATENCY_NVM_SET: LogPageId = LogPageId(0x0A);
    /// 0Ch: Asymmetric Namespace Access (§5.16.1.13).
    pub const ASYMMETRIC_NAMESPACE_ACCESS: LogPageId = LogPageId(0x0C);
    /// 0Dh: Persistent Event Log (§5.16.1.14).
    pub const PERSISTENT_EVENT: LogPageId = LogPageId(0x0D);
    /// 80h: Reservation Notification (an I/O command set specific log page), 64 bytes.
    pub const RESERVATION_NOTIFICATION: LogPageId = LogPageId(0x80);
    /// 81h: Sanitize Status, 512 bytes.
    pub const SANITIZE_STATUS: LogPageId = LogPageId(0x81);

    /// The specification's name of the log page, or `"Unknown"` for an identifier this
    /// crate does not name.
    pub fn name(self) -> &'static str {
        match self {
            Self::ERROR_INFORMATION => "Error Information",
            Self::SMART_HEALTH => "SMART / Health Information",
            Self::FIRMWARE_SLOT => "Firmware Slot Information",
            Self::CHANGED_NAMESPACE_LIST => "Changed Namespace List",
            Self::COMMANDS_SUPPORTED_AND_EFFECTS => "Commands Supported and Effects",
            Self::DEVICE_SELF_TEST => "Device Self-test",
            Self::TELEMETRY_HOST => "Telemetry Host-Initiated",
            Self::TELEMETRY_CONTROLLER => "Telemetry Controller-Initiated",
            Self::ENDURANCE_GROUP => "Endurance Group Information",
            Self::PREDICTABLE_LATENCY_NVM_SET => "Predictable Latency Per NVM Set",
            Self::ASYMMETRIC_NAMESPACE_ACCESS => "Asymmetric Namespace Access",
            Self::PERSISTENT_EVENT => "Persistent Event Log",
            Self::RESERVATION_NOTIFICATION => "Reservation Notification",
            Self::SANITIZE_STATUS => "Sanitize Status",
            _ => "Unknown",
        }
    }
}

/// One Error Information log entry, 64 bytes (Base 2.0 §5.16.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ErrorLogEntry {
    /// Error Count (bytes 7:0): a unique, incrementing identifier of the error; 0 marks an
    /// empty entry.
    pub error_count: u64,
    /// Submission Queue ID (bytes 9:8) of the failed command (FFFFh = not applicable).
    pub sqid: u16,
    /// Command ID (bytes 11:10) of the failed command (FFFFh = not applicable).
    pub cid: u16,
    /// Status Field (bytes 13:12), raw as in the log: bit 0 is the phase tag of the
    /// completion, bits 15:1 the status (as in completion DW3 bits 31:17). See
    /// [`ErrorLogEntry::status_raw15`].
    pub status_field: u16,
    /// Parameter Error Location (bytes 15:14): bits 7:0 the byte in the command, bits 10:8
    /// the bit in that byte; FFFFh = not applicable. See
    /// [`ErrorLogEntry::parameter_error_location`].
    pub parameter_error_location: u16,
    /// LBA (bytes 23:16): first LBA that hit the error, if any.
    pub lba: u64,
    /// Namespace (bytes 27:24): NSID of the failed command (FFFFFFFFh / 0 = not applicable).
    pub nsid: u32,
    /// Vendor Specific Information Available (byte 28): log page ID of vendor specific
    /// information, 0 = none.
    pub vendor_specific_info: u8,
    /// Transport Type (byte 29), TRTYPE: 0 = not indicated (always 0 on PCIe before 1.4).
    pub trtype: u8,
    /// Command Specific Information (bytes 39:32).
    pub command_specific_info: u64,
    /// Transport Type Specific Information (bytes 41:40).
    pub transport_type_specific_info: u16,
}

impl ErrorLogEntry {
    /// Size in bytes of one entry.
    pub const LEN: usize = 64;

    /// Parses one 64-byte entry; longer buffers are accepted and the extra bytes ignored.
    /// An empty entry (error count 0) parses like any other.
    ///
    /// # Errors
    /// [`ParseError::TooShort`] if `buf` holds fewer than 64 bytes.
    pub fn parse(buf: &[u8]) -> Result<ErrorLogEntry, ParseError> {
        need("Error Information log entry", buf, Self::LEN)?;
        Ok(ErrorLogEntry {
            error_count: le64(buf, 0),
            sqid: le16(buf, 8),
            cid: le16(buf, 10),
            status_field: le16(buf, 12),
            parameter_error_location: le16(buf, 14),
            lba: le64(buf, 16),
            nsid: le32(buf, 24),
            vendor_specific_info: buf[28],
            trtype: buf[29],
            command_specific_info: le64(buf, 32),
            transport_type_specific_info: le16(buf, 40),
        })
    }

    /// The 15-bit status (Status Field bits 15:1, phase tag dropped): bits 7:0 SC,
    /// 10:8 SCT, 12:11 CRD, 13 More, 14 DNR.
    pub fn status_raw15(&self) -> u16 {
        self.status_field >> 1
    }

    /// The phase tag bit (Status Field bit 0) of the failed command's completion.
    pub fn phase_tag(&self) -> bool {
        self.status_field & 1 != 0
    }

    /// Parameter Error Location as (byte, bit): the byte offset 0..=255 in the command and
    /// the bit 0..=7 in that byte; `None` when the field is FFFFh (not applicable).
    pub fn parameter_error_location(&self) -> Option<(u8, u8)> {
        if self.parameter_error_location == 0xffff {
            None
        } else {
            let p = self.parameter_error_location;
            Some((p as u8, ((p >> 8) & 0x7) as u8))
        }
    }
}

/// Parses an Error Information log page: N consecutive 64-byte entries (the controller
/// keeps up to ELPE + 1 of them).
///
/// Entries whose Error Count is 0 are empty and are left out of the result, so the
/// returned `Vec` holds only real errors, in the order of the log (QEMU 7.2 always returns
/// zeros, i.e. an empty `Vec`). An empty buffer gives an empty `Vec`. For every entry,
/// empty ones included (as `nvme error-log` prints them), see [`parse_error_log_entries`].
///
/// # Errors
/// [`ParseError::Invalid`] if the length is not a multiple of 64 bytes.
pub fn parse_error_log(buf: &[u8]) -> Result<Vec<ErrorLogEntry>, ParseError> {
    let mut entries = parse_error_log_entries(buf)?;
    entries.retain(|e| e.error_count != 0);
    Ok(entries)
}

/// Parses every 64-byte entry of an Error Information log page, empty ones (Error Count
/// 0) included, in the order of the log.
///
/// # Errors
/// [`ParseError::Invalid`] if the length is not a multiple of 64 bytes.
pub fn parse_error_log_entries(buf: &[u8]) -> Result<Vec<ErrorLogEntry>, ParseError> {
    if buf.len() % ErrorLogEntry::LEN != 0 {
        return Err(ParseError::Invalid {
            what: "Error Information log",
            reason: format!("length {} is not a multiple of 64 bytes", buf.len()),
        });
    }
    buf.chunks_exact(ErrorLogEntry::LEN).map(ErrorLogEntry::parse).collect()
}

bitflags::bitflags! {
    /// Critical Warning (byte 0 of the SMART / Health log, Base 2.0 §5.16.1.3).
    /// The same bit positions select Asynchronous Event notices in the Asynchronous Event
    /// Configuration feature. Unknown bits are kept.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct CriticalWarning: u8 {
        /// Bit 0: available spare capacity has fallen below the threshold.
        const SPARE_BELOW_THRESHOLD = 1 << 0;
        /// Bit 1: a temperature is above an over temperature or below an under temperature
        /// threshold.
        const TEMPERATURE = 1 << 1;
        /// Bit 2: NVM subsystem reliability is degraded by media or internal errors.
        const RELIABILITY_DEGRADED = 1 << 2;
        /// Bit 3: all of the media has been placed in read only mode.
        const READ_ONLY = 1 << 3;
        /// Bit 4: the volatile memory backup device has failed.
        const VOLATILE_MEMORY_BACKUP_FAILED = 1 << 4;
        /// Bit 5: the Persistent Memory Region has become read-only or unreliable.
        const PMR_READ_ONLY = 1 << 5;
    }
}

/// Serialized as the raw bits (a number), as nvme-cli prints the field.
#[cfg(feature = "serde")]
impl serde::Serialize for CriticalWarning {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.bits(), serializer)
    }
}

/// Converts a SMART Data Units Read/Written count to bytes: one data unit is 1000 units
/// of 512 bytes (512 000 bytes). Saturates at `u128::MAX`.
pub fn data_units_to_bytes(units: u128) -> u128 {
    units.saturating_mul(512_000)
}

/// SMART / Health Information log page, 512 bytes (Base 2.0 §5.16.1.3).
/// Counters are 128-bit as on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SmartLog {
    /// Critical Warning (byte 0).
    pub critical_warning: CriticalWarning,
    /// Composite Temperature (bytes 2:1), Kelvin. See [`SmartLog::temperature_celsius`].
    pub composite_temperature: u16,
    /// Available Spare (byte 3), percent 0..=100 of the spare capacity remaining.
    pub available_spare: u8,
    /// Available Spare Threshold (byte 4), percent 0..=100.
    pub available_spare_threshold: u8,
    /// Percentage Used (byte 5): vendor estimate of life used, percent; may exceed 100
    /// (255 max).
    pub percentage_used: u8,
    /// Endurance Group Critical Warning Summary (byte 6): bit 0 spare below threshold,
    /// bit 2 reliability degraded, bit 3 read only, in any endurance group.
    pub endurance_group_critical_warning_summary: u8,
    /// Data Units Read (bytes 47:32), in units of 1000 × 512 bytes, rounded up. See
    /// [`data_units_to_bytes`].
    pub data_units_read: u128,
    /// Data Units Written (bytes 63:48), in units of 1000 × 512 bytes, rounded up.
    pub data_units_written: u128,
    /// Host Read Commands (bytes 79:64) completed.
    pub host_read_commands: u128,
    /// Host Write Commands (bytes 95:80) completed.
    pub host_write_commands: u128,
    /// Controller Busy Time (bytes 111:96), minutes.
    pub controller_busy_time: u128,
    /// Power Cycles (bytes 127:112).
    pub power_cycles: u128,
    /// Power On Hours (bytes 143:128), hours.
    pub power_on_hours: u128,
    /// Unsafe Shutdowns (bytes 159:144).
    pub unsafe_shutdowns: u128,
    /// Media and Data Integrity Errors (bytes 175:160): unrecovered data integrity errors.
    pub media_errors: u128,
    /// Number of Error Information Log Entries (bytes 191:176) over the controller's life.
    pub num_err_log_entries: u128,
    /// Warning Composite Temperature Time (bytes 195:192), minutes above WCTEMP.
    pub warning_composite_temperature_time: u32,
    /// Critical Composite Temperature Time (bytes 199:196), minutes above CCTEMP.
    pub critical_composite_temperature_time: u32,
    /// Temperature Sensor 1..8 (bytes 215:200), Kelvin; `None` where the sensor is not
    /// implemented (reported as 0).
    pub temperature_sensors: [Option<u16>; 8],
    /// Thermal Management Temperature 1 Transition Count (bytes 219:216).
    pub thermal_mgmt_temp1_transition_count: u32,
    /// Thermal Management Temperature 2 Transition Count (bytes 223:220).
    pub thermal_mgmt_temp2_transition_count: u32,
    /// Total Time For Thermal Management Temperature 1 (bytes 227:224), seconds.
    pub thermal_mgmt_temp1_total_time: u32,
    /// Total Time For Thermal Management Temperature 2 (bytes 231:228), seconds.
    pub thermal_mgmt_temp2_total_time: u32,
}

impl SmartLog {
    /// Size in bytes of the log page.
    pub const LEN: usize = 512;

    /// Parses the 512-byte SMART / Health Information log page; longer buffers are
    /// accepted and the extra bytes ignored.
    ///
    /// # Errors
    /// [`ParseError::TooShort`] if `buf` holds fewer than 512 bytes.
    pub fn parse(buf: &[u8]) -> Result<SmartLog, ParseError> {
        need("SMART / Health Information log", buf, Self::LEN)?;
        let mut temperature_sensors = [None; 8];
        for (i, t) in temperature_sensors.iter_mut().enumerate() {
            let k = le16(buf, 200 + 2 * i);
            *t = if k == 0 { None } else { Some(k) };
        }
        Ok(SmartLog {
            critical_warning: CriticalWarning::from_bits_retain(buf[0]),
            composite_temperature: le16(buf, 1),
            available_spare: buf[3],
            available_spare_threshold: buf[4],
            percentage_used: buf[5],
            endurance_group_critical_warning_summary: buf[6],
            data_units_read: le128(buf, 32),
            data_units_written: le128(buf, 48),
            host_read_commands: le128(buf, 64),
            host_write_commands: le128(buf, 80),
            controller_busy_time: le128(buf, 96),
            power_cycles: le128(buf, 112),
            power_on_hours: le128(buf, 128),
            unsafe_shutdowns: le128(buf, 144),
            media_errors: le128(buf, 160),
            num_err_log_entries: le128(buf, 176),
            warning_composite_temperature_time: le32(buf, 192),
            critical_composite_temperature_time: le32(buf, 196),
            temperature_sensors,
            thermal_mgmt_temp1_transition_count: le32(buf, 216),
            thermal_mgmt_temp2_transition_count: le32(buf, 220),
            thermal_mgmt_temp1_total_time: le32(buf, 224),
            thermal_mgmt_temp2_total_time: le32(buf, 228),
        })
    }

    /// Composite temperature in whole degrees Celsius (Kelvin − 273, truncating the .15).
    pub fn temperature_celsius(&self) -> i32 {
        i32::from(self.composite_temperature) - 273
    }

    /// Data Units Read in bytes, saturating. See [`data_units_to_bytes`].
    pub fn bytes_read(&self) -> u128 {
        data_units_to_bytes(self.data_units_read)
    }

    /// Data Units Written in bytes, saturating. See [`data_units_to_bytes`].
    pub fn bytes_written(&self) -> u128 {
        data_units_to_bytes(self.data_units_written)
    }
}

/// Firmware Slot Information log page, 512 bytes (Base 2.0 §5.16.1.4).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct FirmwareSlotLog {
    /// AFI (byte 0): Active Firmware Info — bits 2:0 the slot running now, bits 6:4 the
    /// slot activated at the next reset (0 = none indicated).
    pub afi: u8,
    /// FRS1..FRS7 (bytes 63:8, 8 ASCII bytes each): the firmware revision in each slot,
    /// padding trimmed; `None` for an empty or unsupported slot (all zeros per the
    /// specification; an all-space field is treated the same).
    pub frs: [Option<String>; 7],
    /// FRS1..FRS7 as the 8 bytes the controller returned, for tools that print them raw
    /// (nvme-cli shows a slot whose first byte is non-zero, as a little-endian u64).
    pub frs_raw: [[u8; 8]; 7],
}

impl FirmwareSlotLog {
    /// Size in bytes of the log page.
    pub const LEN: usize = 512;

    /// Parses the 512-byte Firmware Slot Information log page; longer buffers are accepted
    /// and the extra bytes ignored.
    ///
    /// # Errors
    /// [`ParseError::TooShort`] if `buf` holds fewer than 512 bytes.
    pub fn parse(buf: &[u8]) -> Result<FirmwareSlotLog, ParseError> {
        need("Firmware Slot Information log", buf, Self::LEN)?;
        let frs = std::array::from_fn(|i| {
            let off = 8 + 8 * i;
            let s = ascii(&buf[off..off + 8]);
            if s.is_empty() { None } else { Some(s) }
        });
        let frs_raw = std::array::from_fn(|i| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&buf[8 + 8 * i..16 + 8 * i]);
            raw
        });
        Ok(FirmwareSlotLog {
            afi: buf[0],
            frs,
            frs_raw,
        })
    }

    /// The active firmware slot, AFI bits 2:0 (1..=7 on a conforming controller).
    pub fn active_slot(&self) -> u8 {
        self.afi & 0x7
    }

    /// The slot to be activated at the next controller reset, AFI bits 6:4; `None` if 0
    /// (not indicated).
    pub fn next_reset_slot(&self) -> Option<u8> {
        match (self.afi >> 4) & 0x7 {
            0 => None,
            s => Some(s),
        }
    }

    /// The firmware revision in slot `slot` (1..=7), or `None` for an empty slot or a slot
    /// number out of range.
    pub fn revision(&self, slot: u8) -> Option<&str> {
        let index = usize::from(slot).checked_sub(1)?;
        self.frs.get(index)?.as_deref()
    }

    /// The revision in the active slot, if any.
    pub fn active_revision(&self) -> Option<&str> {
        self.revision(self.active_slot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn put16(b: &mut [u8], off: usize, v: u16) {
        b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn put128(b: &mut [u8], off: usize, v: u128) {
        b[off..off + 16].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn log_page_names() {
        assert_eq!(LogPageId::SMART_HEALTH.name(), "SMART / Health Information");
        assert_eq!(LogPageId(0x81).name(), "Sanitize Status");
        assert_eq!(LogPageId(0x0B).name(), "Unknown");
        assert_eq!(LogPageId::ERROR_INFORMATION.0, 1);
        assert_eq!(LogPageId::PERSISTENT_EVENT.0, 0x0D);
    }

    fn error_entry(count: u64) -> [u8; 64] {
        let mut b = [0u8; 64];
        put64(&mut b, 0, count);
        put16(&mut b, 8, 1);
        put16(&mut b, 10, 0x1234);
        // Unrecovered Read Error (SCT 2h, SC 81h) with DNR, phase tag 1.
        put16(&mut b, 12, ((0x4000 | 0x281) << 1) | 1);
        put16(&mut b, 14, (3 << 8) | 40);
        put64(&mut b, 16, 16);
        put32(&mut b, 24, 1);
        b[28] = 0xc0;
        b[29] = 0;
        put64(&mut b, 32, 0xdead_beef);
        put16(&mut b, 40, 0x55);
        b
    }

    #[test]
    fn error_entry_fields() {
        let e = ErrorLogEntry::parse(&error_entry(9)).unwrap();
        assert_eq!(e.error_count, 9);
        assert_eq!((e.sqid, e.cid), (1, 0x1234));
        assert_eq!(e.status_raw15(), 0x4281);
        assert!(e.phase_tag());
        assert_eq!(e.parameter_error_location(), Some((40, 3)));
        assert_eq!((e.lba, e.nsid), (16, 1));
        assert_eq!(e.vendor_specific_info, 0xc0);
        assert_eq!(e.command_specific_info, 0xdead_beef);
        assert_eq!(e.transport_type_specific_info, 0x55);
        let mut b = error_entry(1);
        put16(&mut b, 14, 0xffff);
        assert_eq!(ErrorLogEntry::parse(&b).unwrap().parameter_error_location(), None);
    }

    #[test]
    fn error_log_skips_empty_entries() {
        let mut b = Vec::new();
        b.extend_from_slice(&error_entry(3));
        b.extend_from_slice(&[0u8; 64]);
        b.extend_from_slice(&error_entry(2));
        let log = parse_error_log(&b).unwrap();
        assert_eq!(log.iter().map(|e| e.error_count).collect::<Vec<_>>(), vec![3, 2]);
        // QEMU 7.2: always zeros.
        assert_eq!(parse_error_log(&[0u8; 4096]), Ok(vec![]));
        assert_eq!(parse_error_log(&[]), Ok(vec![]));
    }

    #[test]
    fn error_log_bad_length() {
        assert!(matches!(parse_error_log(&[0u8; 65]), Err(ParseError::Invalid { .. })));
        assert!(matches!(
            ErrorLogEntry::parse(&[0u8; 63]),
            Err(ParseError::TooShort { .. })
        ));
    }

    #[test]
    fn smart_log_fields() {
        let mut b = vec![0u8; 512];
        b[0] = 0b0000_0110;
        put16(&mut b, 1, 323); // QEMU's default composite temperature: 50 °C
        b[3] = 100;
        b[4] = 10;
        b[5] = 2;
        b[6] = 0x4;
        put128(&mut b, 32, 7);
        put128(&mut b, 48, u128::MAX);
        put128(&mut b, 64, 100);
        put128(&mut b, 80, 200);
        put128(&mut b, 96, 5);
        put128(&mut b, 112, 6);
        put128(&mut b, 128, 1000);
        put128(&mut b, 144, 8);
        put128(&mut b, 160, 9);
        put128(&mut b, 176, 10);
        put32(&mut b, 192, 11);
        put32(&mut b, 196, 12);
        put16(&mut b, 200, 300);
        put16(&mut b, 214, 310);
        put32(&mut b, 216, 13);
        put32(&mut b, 220, 14);
        put32(&mut b, 224, 15);
        put32(&mut b, 228, 16);
        let s = SmartLog::parse(&b).unwrap();
        assert_eq!(
            s.critical_warning,
            CriticalWarning::TEMPERATURE | CriticalWarning::RELIABILITY_DEGRADED
        );
        assert_eq!(s.composite_temperature, 323);
        assert_eq!(s.temperature_celsius(), 50);
        assert_eq!(
            (s.available_spare, s.available_spare_threshold, s.percentage_used),
            (100, 10, 2)
        );
        assert_eq!(s.endurance_group_critical_warning_summary, 4);
        assert_eq!(s.data_units_read, 7);
        assert_eq!(s.bytes_read(), 3_584_000);
        assert_eq!(s.bytes_written(), u128::MAX);
        assert_eq!((s.host_read_commands, s.host_write_commands), (100, 200));
        assert_eq!((s.controller_busy_time, s.power_cycles, s.power_on_hours), (5, 6, 1000));
        assert_eq!((s.unsafe_shutdowns, s.media_errors, s.num_err_log_entries), (8, 9, 10));
        assert_eq!(s.warning_composite_temperature_time, 11);
        assert_eq!(s.critical_composite_temperature_time, 12);
        assert_eq!(
            s.temperature_sensors,
            [Some(300), None, None, None, None, None, None, Some(310)]
        );
        assert_eq!(s.thermal_mgmt_temp1_transition_count, 13);
        assert_eq!(s.thermal_mgmt_temp2_transition_count, 14);
        assert_eq!(s.thermal_mgmt_temp1_total_time, 15);
        assert_eq!(s.thermal_mgmt_temp2_total_time, 16);
    }

    #[test]
    fn smart_log_extremes() {
        assert!(matches!(SmartLog::parse(&[0u8; 511]), Err(ParseError::TooShort { .. })));
        let s = SmartLog::parse(&[0u8; 512]).unwrap();
        assert_eq!(s.temperature_celsius(), -273);
        assert_eq!(s.temperature_sensors, [None; 8]);
        let s = SmartLog::parse(&[0xffu8; 512]).unwrap();
        assert_eq!(s.temperature_celsius(), 65535 - 273);
        assert_eq!(s.critical_warning.bits(), 0xff);
        assert_eq!(data_units_to_bytes(1), 512_000);
    }

    #[test]
    fn firmware_slot_log() {
        let mut b = vec![0u8; 512];
        b[0] = (2 << 4) | 1;
        b[8..16].copy_from_slice(b"1.0     ");
        b[16..24].copy_from_slice(b"2.0-rc1 ");
        b[24..32].copy_from_slice(b"        ");
        let f = FirmwareSlotLog::parse(&b).unwrap();
        assert_eq!(f.active_slot(), 1);
        assert_eq!(f.next_reset_slot(), Some(2));
        assert_eq!(f.frs[0].as_deref(), Some("1.0"));
        assert_eq!(f.frs[1].as_deref(), Some("2.0-rc1"));
        assert_eq!(f.frs[2], None);
        assert_eq!(f.frs[6], None);
        assert_eq!(f.active_revision(), Some("1.0"));
        assert_eq!(f.revision(0), None);
        assert_eq!(f.revision(8), None);
        let empty = FirmwareSlotLog::parse(&[0u8; 512]).unwrap();
        assert_eq!(empty.next_reset_slot(), None);
        assert_eq!(empty.active_revision(), None);
        assert!(matches!(
            FirmwareSlotLog::parse(&b[..100]),
            Err(ParseError::TooShort { .. })
        ));
    }

    proptest! {
        #[test]
        fn error_log_parse_is_total(buf in proptest::collection::vec(any::<u8>(), 0..=8192)) {
            match parse_error_log(&buf) {
                Ok(v) => {
                    prop_assert_eq!(buf.len() % 64, 0);
                    prop_assert!(v.len() <= buf.len() / 64);
                    prop_assert!(v.iter().all(|e| e.error_count != 0));
                }
                Err(_) => prop_assert_ne!(buf.len() % 64, 0),
            }
            let _ = ErrorLogEntry::parse(&buf).map(|e| e.parameter_error_location());
        }

        #[test]
        fn smart_log_parse_is_total(buf in proptest::collection::vec(any::<u8>(), 0..=8192)) {
            let r = SmartLog::parse(&buf);
            prop_assert_eq!(r.is_ok(), buf.len() >= 512);
            if let Ok(s) = r {
                let _ = (s.temperature_celsius(), s.bytes_read(), s.bytes_written());
            }
        }

        #[test]
        fn firmware_slot_parse_is_total(buf in proptest::collection::vec(any::<u8>(), 0..=8192)) {
            let r = FirmwareSlotLog::parse(&buf);
            prop_assert_eq!(r.is_ok(), buf.len() >= 512);
            if let Ok(f) = r {
                let _ = (f.active_revision(), f.next_reset_slot());
            }
        }

        #[test]
        fn error_entry_round_trip(
            error_count in 1u64.., sqid: u16, cid: u16, status_field: u16, pel: u16, lba: u64,
            nsid: u32, vsi: u8, trtype: u8, csi: u64, ttsi: u16, tail in any::<[u8; 22]>(),
        ) {
            let mut b = [0u8; 64];
            put64(&mut b, 0, error_count);
            put16(&mut b, 8, sqid);
            put16(&mut b, 10, cid);
            put16(&mut b, 12, status_field);
            put16(&mut b, 14, pel);
            put64(&mut b, 16, lba);
            put32(&mut b, 24, nsid);
            b[28] = vsi;
            b[29] = trtype;
            put64(&mut b, 32, csi);
            put16(&mut b, 40, ttsi);
            b[42..].copy_from_slice(&tail);
            let want = ErrorLogEntry {
                error_count, sqid, cid, status_field, parameter_error_location: pel, lba, nsid,
                vendor_specific_info: vsi, trtype, command_specific_info: csi,
                transport_type_specific_info: ttsi,
            };
            prop_assert_eq!(parse_error_log(&b), Ok(vec![want]));
            prop_assert_eq!(want.status_raw15(), status_field >> 1);
        }

        #[test]
        fn smart_round_trip(
            cw: u8, temp: u16, counters in any::<[u128; 10]>(), sensors in any::<[u16; 8]>(),
            times in any::<[u32; 6]>(),
        ) {
            let mut b = vec![0u8; 512];
            b[0] = cw;
            put16(&mut b, 1, temp);
            for (i, c) in counters.iter().enumerate() {
                put128(&mut b, 32 + 16 * i, *c);
            }
            put32(&mut b, 192, times[0]);
            put32(&mut b, 196, times[1]);
            for (i, s) in sensors.iter().enumerate() {
                put16(&mut b, 200 + 2 * i, *s);
            }
            for (i, t) in times[2..].iter().enumerate() {
                put32(&mut b, 216 + 4 * i, *t);
            }
            let s = SmartLog::parse(&b).unwrap();
            prop_assert_eq!(s.critical_warning.bits(), cw);
            prop_assert_eq!(s.composite_temperature, temp);
            let got = [
                s.data_units_read, s.data_units_written, s.host_read_commands,
                s.host_write_commands, s.controller_busy_time, s.power_cycles,
                s.power_on_hours, s.unsafe_shutdowns, s.media_errors, s.num_err_log_entries,
            ];
            prop_assert_eq!(got, counters);
            prop_assert_eq!(s.temperature_sensors, sensors.map(|k| (k != 0).then_some(k)));
            prop_assert_eq!(
                [
                    s.warning_composite_temperature_time,
                    s.critical_composite_temperature_time,
                    s.thermal_mgmt_temp1_transition_count,
                    s.thermal_mgmt_temp2_transition_count,
                    s.thermal_mgmt_temp1_total_time,
                    s.thermal_mgmt_temp2_total_time,
                ],
                times
            );
        }

        #[test]
        fn firmware_slot_round_trip(
            afi: u8, slots in proptest::array::uniform7(proptest::option::of("[!-~]([ -~]{0,6}[!-~])?")),
        ) {
            let mut b = vec![0u8; 512];
            b[0] = afi;
            for (i, s) in slots.iter().enumerate() {
                if let Some(s) = s {
                    b[8 + 8 * i..8 + 8 * i + s.len()].copy_from_slice(s.as_bytes());
                }
            }
            let f = FirmwareSlotLog::parse(&b).unwrap();
            prop_assert_eq!(&f.frs, &slots);
            prop_assert_eq!(f.active_slot(), afi & 7);
        }
    }
}
