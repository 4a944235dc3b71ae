//! A Get Features value decoded as `nvme get-feature -H` prints it (nvme-cli 2.3's
//! `nvme_feature_show_fields`): one tab-indented line per field, in nvme-cli's words,
//! spacing and units, checked against its output captured in the test guest
//! (`tests/testdata/nvme-cli-2.3/get-feature-H.txt`).
//!
//! The FIDs decoded are those of NVMe Base 2.0 §5.27.1 whose value is all in DW0, and the
//! ones whose data buffer nvme-cli reads: Autonomous Power State Transition, Host Memory
//! Buffer, Timestamp, Host Behavior Support and Host Identifier. A FID nvme-cli does not
//! decode gets no lines, as in nvme-cli; so do LBA Range Type (03h), the Predictable
//! Latency Mode features (13h, 14h), the metadata features (7Dh-7Fh), Namespace Write
//! Protect (84h) and Flexible Data Placement (1Dh, 1Eh), which nvme-cli decodes and
//! ironvme does not yet.

use super::super::output::{kelvin, utc_date};
use crate::nvme::features::{
    Arbitration, AsyncEventConfig, FeatureId, NumberOfQueues, PowerManagement, TemperatureThreshold, Timestamp,
    VolatileWriteCache,
};
use std::fmt::Write as _;

/// nvme-cli's word for a one-bit flag in most features.
fn true_false(on: bool) -> &'static str {
    if on { "True" } else { "False" }
}

/// nvme-cli's word for an enable bit.
fn enabled(on: bool) -> &'static str {
    if on { "Enabled" } else { "Disabled" }
}

/// The Asynchronous Event Configuration notices nvme-cli 2.3 lists, most significant bit
/// first (it has no line for bit 15, Normal NVM Subsystem Shutdown).
const ASYNC_EVENT_NOTICES: [(AsyncEventConfig, &str); 9] = [
    (AsyncEventConfig::DISCOVERY_LOG, "Discovery Log Page Change Notices"),
    (
        AsyncEventConfig::ENDURANCE_GROUP,
        "Endurance Group Event Aggregate Log Change Notices",
    ),
    (AsyncEventConfig::LBA_STATUS, "LBA Status Information Notices"),
    (
        AsyncEventConfig::PREDICTABLE_LATENCY,
        "Predictable Latency Event Aggregate Log Change Notices",
    ),
    (
        AsyncEventConfig::ANA_CHANGE,
        "Asymmetric Namespace Access Change Notices",
    ),
    (AsyncEventConfig::TELEMETRY_LOG, "Telemetry Log Notices"),
    (AsyncEventConfig::FIRMWARE_ACTIVATION, "Firmware Activation Notices"),
    (AsyncEventConfig::NAMESPACE_ATTRIBUTE, "Namespace Attribute Notices"),
    (
        AsyncEventConfig::SMART_CRITICAL_WARNINGS,
        "SMART / Health Critical Warnings",
    ),
];

/// `n` little-endian bytes of `data` from `offset` (bytes past its end read as zero).
fn le(data: &[u8], offset: usize, n: usize) -> u64 {
    (0..n).rev().fold(0, |v, i| {
        (v << 8) | u64::from(data.get(offset + i).copied().unwrap_or(0))
    })
}

/// The fields of feature `fid` with completion DW0 `dw0` and data buffer `data` (empty
/// for a feature that returns none), as `nvme get-feature -H` prints them under the value
/// line; empty for a feature it does not decode.
pub fn fields(fid: u8, dw0: u32, data: &[u8]) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push('\t');
        out.push_str(&s);
        out.push('\n');
    };
    match FeatureId(fid) {
        FeatureId::ARBITRATION => {
            let a = Arbitration::from_dw0(dw0);
            line(format!("High Priority Weight   (HPW): {}", u32::from(a.hpw) + 1));
            line(format!("Medium Priority Weight (MPW): {}", u32::from(a.mpw) + 1));
            line(format!("Low Priority Weight    (LPW): {}", u32::from(a.lpw) + 1));
            let burst = a.burst().map_or("No limit".to_string(), |b| b.to_string());
            line(format!("Arbitration Burst       (AB): {burst}"));
        }
        FeatureId::POWER_MANAGEMENT => {
            let p = PowerManagement::from_dw0(dw0);
            let hint = match p.wh {
                0 => "No Workload",
                1 => "Extended Idle Period with a Burst of Random Writes",
                2 => "Heavy Sequential Writes",
                _ => "Reserved",
            };
            line(format!("Workload Hint (WH): {} - {hint}", p.wh));
            line(format!("Power State   (PS): {}", p.ps));
        }
        FeatureId::TEMPERATURE_THRESHOLD => {
            // nvme-cli reads THSEL and TMPSEL from DW0, which not every controller fills
            // (QEMU's does not: they print as 0 whatever CDW11 asked).
            let TemperatureThreshold { tmpth, tmpsel, thsel } = TemperatureThreshold::from_dw0(dw0);
            let thsel_name = match thsel {
                TemperatureThreshold::THSEL_OVER => "Over Temperature Threshold",
                TemperatureThreshold::THSEL_UNDER => "Under Temperature Threshold",
                _ => "Reserved",
            };
            let tmpsel_name = match tmpsel {
                TemperatureThreshold::TMPSEL_COMPOSITE => "Composite Temperature".to_string(),
                n @ 1..=8 => format!("Temperature Sensor {n}"),
                _ => "Reserved".to_string(),
            };
            line(format!("Threshold Type Select         (THSEL): {thsel} - {thsel_name}"));
            line(format!(
                "Threshold Temperature Select (TMPSEL): {tmpsel} - {tmpsel_name}"
            ));
            line(format!("Temperature Threshold         (TMPTH): {}", kelvin(tmpth)));
        }
        FeatureId::ERROR_RECOVERY => {
            line(format!(
                "Deallocated or Unwritten Logical Block Error Enable (DULBE): {}",
                enabled(dw0 & (1 << 16) != 0)
            ));
            line(format!(
                "Time Limited Error Recovery                          (TLER): {} ms",
                (dw0 & 0xffff) * 100
            ));
        }
        FeatureId::VOLATILE_WRITE_CACHE => {
            let on = VolatileWriteCache::from_dw0(dw0).enabled;
            line(format!("Volatile Write Cache Enable (WCE): {}", enabled(on)));
        }
        FeatureId::NUMBER_OF_QUEUES => {
            let q = NumberOfQueues::from_dw0(dw0);
            line(format!("Number of IO Completion Queues Allocated (NCQA): {}", q.cq));
            line(format!("Number of IO Submission Queues Allocated (NSQA): {}", q.sq));
        }
        FeatureId::INTERRUPT_COALESCING => {
            line(format!(
                "Aggregation Time     (TIME): {} usec",
                ((dw0 >> 8) & 0xff) * 100
            ));
            line(format!("Aggregation Threshold (THR): {}", (dw0 & 0xff) + 1));
        }
        FeatureId::INTERRUPT_VECTOR_CONFIG => {
            line(format!("Coalescing Disable (CD): {}", true_false(dw0 & (1 << 16) != 0)));
            line(format!("Interrupt Vector   (IV): {}", dw0 & 0xffff));
        }
        FeatureId::WRITE_ATOMICITY => line(format!("Disable Normal (DN): {}", true_false(dw0 & 1 != 0))),
        FeatureId::ASYNC_EVENT_CONFIG => {
            let aec = AsyncEventConfig::from_dw0(dw0);
            for (bits, name) in ASYNC_EVENT_NOTICES {
                let send = if aec.intersects(bits) {
                    "Send async event"
                } else {
                    "Do not send async event"
                };
                line(format!("{name:<58}: {send}"));
            }
        }
        FeatureId::AUTONOMOUS_POWER_STATE_TRANSITION => {
            line(format!(
                "Autonomous Power State Transition Enable (APSTE): {}",
                enabled(dw0 & 1 != 0)
            ));
            if !data.is_empty() {
                apst_entries(data, &mut out);
            }
        }
        FeatureId::HOST_MEMORY_BUFFER => {
            line(format!("Enable Host Memory (EHM): {}", enabled(dw0 & 1 != 0)));
            if !data.is_empty() {
                // Host Memory Buffer attributes: HSIZE, HMDLAL, HMDLAU, HMDLEC (dwords).
                let dword = |i: usize| le(data, 4 * i, 4);
                line(format!(
                    "Host Memory Descriptor List Entry Count (HMDLEC): {}",
                    dword(3)
                ));
                line(format!(
                    "Host Memory Descriptor List Address     (HMDLAU): {:#x}",
                    dword(2)
                ));
                line(format!(
                    "Host Memory Descriptor List Address     (HMDLAL): {:#x}",
                    dword(1)
                ));
                line(format!(
                    "Host Memory Buffer Size                  (HSIZE): {}",
                    dword(0)
                ));
            }
        }
        // Without its data buffer (-l 0), nvme-cli prints nothing for these.
        FeatureId::TIMESTAMP if !data.is_empty() => timestamp(data, &mut out),
        FeatureId::KEEP_ALIVE_TIMER => line(format!("Keep Alive Timeout (KATO) in milliseconds: {dw0}")),
        FeatureId::HOST_CONTROLLED_THERMAL_MGMT => {
            for (n, k) in [(1, dw0 >> 16), (2, dw0 & 0xffff)] {
                line(format!(
                    "Thermal Management Temperature {n} (TMT{n}) : {k} Kelvin ({}°C)",
                    i64::from(k) - 273
                ));
            }
        }
        FeatureId::NON_OPERATIONAL_POWER_STATE => line(format!(
            "Non-Operational Power State Permissive Mode Enable (NOPPME): {}",
            true_false(dw0 & 1 != 0)
        )),
        FeatureId::READ_RECOVERY_LEVEL => line(format!("Read Recovery Level (RRL): {}", dw0 & 0xf)),
        FeatureId::LBA_STATUS_INFORMATION => {
            line(format!("LBA Status Information Poll Interval (LSIPI)  : {}", dw0 >> 16));
            line(format!(
                "LBA Status Information Report Interval (LSIRI): {}",
                dw0 & 0xffff
            ));
        }
        FeatureId::HOST_BEHAVIOR_SUPPORT => {
            if let Some(b) = data.first() {
                line(format!("Host Behavior Support: {}", true_false(b & 1 != 0)));
            }
        }
        FeatureId::SANITIZE_CONFIG => line(format!("No-Deallocate Response Mode (NODRM) : {}", dw0 & 1)),
        FeatureId::ENDURANCE_GROUP_EVENT_CONFIG => {
            line(format!("Endurance Group Identifier (ENDGID): {}", dw0 & 0xffff));
            line(format!("Endurance Group Critical Warnings  : {}", (dw0 >> 16) & 0xff));
        }
        FeatureId::IO_COMMAND_SET_PROFILE => line(format!("I/O Command Set Profile: {}", true_false(dw0 & 1 != 0))),
        FeatureId::SPINUP_CONTROL => line(format!("Spinup control feature Enabled: {}", true_false(dw0 & 1 != 0))),
        FeatureId::SOFTWARE_PROGRESS_MARKER => line(format!("Pre-boot Software Load Count (PBSLC): {}", dw0 & 0xff)),
        FeatureId::HOST_IDENTIFIER if !data.is_empty() => {
            line(format!("Host Identifier (HOSTID):  {}", le(data, 0, 8)))
        }
        FeatureId::RESERVATION_NOTIFICATION_MASK => {
            line(format!(
                "Mask Reservation Preempted Notification  (RESPRE): {}",
                true_false(dw0 & (1 << 3) != 0)
            ));
            line(format!(
                "Mask Reservation Released Notification   (RESREL): {}",
                true_false(dw0 & (1 << 2) != 0)
            ));
            line(format!(
                "Mask Registration Preempted Notification (REGPRE): {}",
                true_false(dw0 & (1 << 1) != 0)
            ));
        }
        FeatureId::RESERVATION_PERSISTENCE => line(format!(
            "Persist Through Power Loss (PTPL): {}",
            true_false(dw0 & 1 != 0)
        )),
        _ => {}
    }
    out
}

/// The 32 entries of the Autonomous Power State Transition data (8 bytes each: ITPS bits
/// 7:3, ITPT bits 31:8 in ms), as nvme-cli lists them, its missing line break after the
/// title included.
fn apst_entries(data: &[u8], out: &mut String) {
    const RULE: &str = "\t.................\n";
    out.push_str("\tAuto PST Entries");
    out.push_str(RULE);
    for i in 0..32 {
        let entry = le(data, 8 * i, 8);
        let _ = write!(out, "\tEntry[{i:2}]   \n{RULE}");
        let _ = writeln!(
            out,
            "\tIdle Time Prior to Transition (ITPT): {} ms",
            (entry >> 8) & 0xff_ffff
        );
        let _ = writeln!(out, "\tIdle Transition Power State   (ITPS): {}", (entry >> 3) & 0x1f);
        out.push_str(RULE);
    }
}

/// The Timestamp data as nvme-cli prints it: milliseconds and the date (the guest's
/// local time is UTC), then what Timestamp Origin bit 0 and Synch say, in its words.
fn timestamp(data: &[u8], out: &mut String) {
    let mut buf = [0u8; Timestamp::LEN];
    for (b, d) in buf.iter_mut().zip(data) {
        *b = *d;
    }
    let Ok(t) = Timestamp::parse(&buf) else {
        return;
    };
    let _ = writeln!(out, "\tThe timestamp is : {} ({})", t.millis, utc_date(t.millis));
    let origin = if t.origin & 1 != 0 {
        "The Timestamp field was initialized with a Timestamp value using a Set Features command."
    } else {
        "The Timestamp field was initialized to \u{2018}0\u{2019} by a Controller Level Reset."
    };
    let synch = if t.synch {
        "The controller may have stopped counting during vendor specific intervals after the Timestamp \
         value was initialized"
    } else {
        "The controller counted time in milliseconds continuously since the Timestamp value was initialized."
    };
    let _ = writeln!(out, "\t{origin}\n\t{synch}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dw0_only_features() {
        assert_eq!(
            fields(0x05, 0x0001_0005, &[]),
            "\tDeallocated or Unwritten Logical Block Error Enable (DULBE): Enabled\n\
             \tTime Limited Error Recovery                          (TLER): 500 ms\n"
        );
        assert_eq!(
            fields(0x08, 0x0a05, &[]),
            "\tAggregation Time     (TIME): 1000 usec\n\tAggregation Threshold (THR): 6\n"
        );
        assert_eq!(
            fields(0x09, 0x0001_0002, &[]),
            "\tCoalescing Disable (CD): True\n\tInterrupt Vector   (IV): 2\n"
        );
        assert_eq!(
            fields(0x10, 0x0157_0160, &[]),
            "\tThermal Management Temperature 1 (TMT1) : 343 Kelvin (70°C)\n\
             \tThermal Management Temperature 2 (TMT2) : 352 Kelvin (79°C)\n"
        );
        assert_eq!(fields(0x84, 1, &[]), "");
    }

    #[test]
    fn features_with_a_data_buffer() {
        let mut apst = vec![0u8; 256];
        apst[8..16].copy_from_slice(&((100u64 << 8) | (3 << 3)).to_le_bytes());
        let text = fields(0x0c, 1, &apst);
        assert!(
            text.starts_with(
                "\tAutonomous Power State Transition Enable (APSTE): Enabled\n\
                 \tAuto PST Entries\t.................\n\
                 \tEntry[ 0]   \n\t.................\n\
                 \tIdle Time Prior to Transition (ITPT): 0 ms\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "\tEntry[ 1]   \n\t.................\n\
                 \tIdle Time Prior to Transition (ITPT): 100 ms\n\
                 \tIdle Transition Power State   (ITPS): 3\n"
            ),
            "{text}"
        );
        assert_eq!(text.matches("Entry[").count(), 32);
        // Without the buffer (-l 0), only DW0's line.
        assert_eq!(fields(0x0c, 0, &[]).lines().count(), 1);
        assert_eq!(fields(0x16, 0, &[1]), "\tHost Behavior Support: True\n");
        assert_eq!(
            fields(0x81, 0, &[1, 2, 0, 0, 0, 0, 0, 0]),
            "\tHost Identifier (HOSTID):  513\n"
        );
    }
}
