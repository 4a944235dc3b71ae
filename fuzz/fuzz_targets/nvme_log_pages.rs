//! Log pages from a controller (Base Specification 2.0 §5.16.1): Error Information,
//! SMART / Health Information and Firmware Slot Information, parsed by
//! `ironvme_nvme::log` and printed by `ironvme smart-log`, `error-log` and `fw-log` (text
//! and JSON). The parsers are total: any bytes give a value or a `ParseError`.
//!
//! Input: the log page's bytes (any length; the real reads are 512 bytes for SMART and
//! firmware slots and 64 bytes per error log entry).

#![no_main]

use ironvme::cli::logs;
use ironvme_nvme::log::{ErrorLogEntry, FirmwareSlotLog, SmartLog, parse_error_log, parse_error_log_entries};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = parse_error_log(data) {
        assert!(entries.len() <= data.len() / ErrorLogEntry::LEN);
        for e in &entries {
            let _ = (e.status_raw15(), e.phase_tag(), e.parameter_error_location());
        }
        let _ = logs::render_error_text("fuzz", &entries);
        let _ = logs::render_error_json(&entries);
    }
    if let Ok(all) = parse_error_log_entries(data) {
        assert_eq!(all.len(), data.len() / ErrorLogEntry::LEN);
        let _ = logs::render_error_text("fuzz", &all);
        let _ = logs::render_error_json(&all);
    }
    if let Ok(e) = ErrorLogEntry::parse(data) {
        let _ = logs::error_entry_record(&e);
    }
    if let Ok(s) = SmartLog::parse(data) {
        let _ = (s.temperature_celsius(), s.bytes_read(), s.bytes_written());
        let _ = logs::render_smart_text("fuzz", &s, true);
        let _ = logs::render_smart_json(&s, true);
    }
    if let Ok(f) = FirmwareSlotLog::parse(data) {
        let _ = (f.active_slot(), f.next_reset_slot(), f.active_revision());
        for slot in 0..=8 {
            let _ = f.revision(slot);
        }
        let _ = logs::render_firmware_text("fuzz", &f);
        let _ = logs::render_firmware_json("fuzz", &f);
    }
});
