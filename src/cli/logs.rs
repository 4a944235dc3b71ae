//! `smart-log`, `error-log`, `fw-log` and `get-log`, printed as `nvme smart-log`, `nvme
//! error-log`, `nvme fw-log` and `nvme get-log` print them.

use super::device::{self, OpenDevice};
use super::output::{OutputFormat, Record, c_hex, emit, hex_bytes, hex_dump, kelvin, printable, si_bytes};
use super::{CliError, DeviceArgs, GetLogArgs, SmartLogArgs};
use crate::admin::{error_log_bytes, firmware_slot_log_bytes, get_log_page, identify_controller, smart_log_bytes};
use crate::nvme::ctrl::{ControllerConfig, NSID_ALL};
use crate::nvme::log::{
    ErrorLogEntry, FirmwareSlotLog, LogPageId, SmartLog, data_units_to_bytes, parse_error_log_entries,
};
use crate::nvme::status::Status;
use serde_json::{Map, Value, json};
use std::fmt::Write as _;
use std::io::Write;

/// Width of the field names in `nvme error-log` output (`trtype_spec_info`, the only
/// name not followed by tabs).
const ERROR_NAME_WIDTH: usize = 16;
/// The separator line of `nvme error-log`.
const ERROR_RULE: &str = ".................";

/// The Critical Warning bits (SMART / Health log byte 0, Base 2.0 §5.16.1.3) as
/// `nvme smart-log -H` names them, bit 0 first: its text label and its JSON key.
const CRITICAL_WARNING_BITS: [(&str, &str); 6] = [
    ("Available Spare", "available_spare"),
    ("Temp. Threshold", "temp_threshold"),
    ("NVM subsystem Reliability", "reliability_degraded"),
    ("Read-only", "ro"),
    ("Volatile mem. backup failed", "vmbu_failed"),
    ("Persistent Mem. RO", "pmr_ro"),
];

/// Critical Warning's bits, one `      Label[bit]   : 0|1` line each, as `nvme smart-log
/// -H` prints them under its line.
fn critical_warning_lines(warning: u8) -> String {
    let mut out = String::new();
    for (bit, (label, _)) in CRITICAL_WARNING_BITS.iter().enumerate() {
        let _ = writeln!(out, "      {:<31}: {}", format!("{label}[{bit}]"), (warning >> bit) & 1);
    }
    out
}

/// Critical Warning as `nvme smart-log -H -o json` writes it: `value`, then one key per
/// bit (0 or 1).
fn critical_warning_json(warning: u8) -> Value {
    let mut obj = Map::new();
    obj.insert("value".to_string(), Value::from(warning));
    for (bit, (_, key)) in CRITICAL_WARNING_BITS.iter().enumerate() {
        obj.insert((*key).to_string(), Value::from((warning >> bit) & 1));
    }
    Value::Object(obj)
}

/// The SMART / Health log's fields: nvme-cli's text names, and its JSON keys where they
/// differ. 128-bit counters are JSON strings, temperatures Kelvin. With `human` (nvme-cli's
/// `-H`), Critical Warning's bits are decoded under its line, and in JSON it becomes an
/// object of its bits.
pub fn smart_record(log: &SmartLog, human: bool) -> Record {
    let mut r = Record::decoding(human);
    let warning = log.critical_warning.bits();
    let warning_json = if human {
        critical_warning_json(warning)
    } else {
        Value::from(warning)
    };
    let percent = |v: u8| (format!("{v}%"), Value::from(v));
    let units = |v: u128| {
        (
            format!("{v} ({})", si_bytes(data_units_to_bytes(v))),
            Value::String(v.to_string()),
        )
    };
    // The names carry nvme-cli's own tabs and spaces (printed with width 0): its
    // `printf("critical_warning\t\t\t: %#x\n")` layout, reproduced byte for byte.
    r.field("critical_warning\t\t\t", c_hex(u64::from(warning)), warning_json)
        .decoded(|| critical_warning_lines(warning))
        .field(
            "temperature\t\t\t\t",
            kelvin(log.composite_temperature),
            Value::from(log.composite_temperature),
        );
    let (t, j) = percent(log.available_spare);
    r.field("available_spare\t\t\t\t", t, j).key("avail_spare");
    let (t, j) = percent(log.available_spare_threshold);
    r.field("available_spare_threshold\t\t", t, j).key("spare_thresh");
    let (t, j) = percent(log.percentage_used);
    r.field("percentage_used\t\t\t\t", t, j).key("percent_used");
    r.hex(
        "endurance group critical warning summary",
        log.endurance_group_critical_warning_summary,
    )
    .key("endurance_grp_critical_warning_summary");
    let (t, j) = units(log.data_units_read);
    r.field("Data Units Read\t\t\t\t", t, j).key("data_units_read");
    let (t, j) = units(log.data_units_written);
    r.field("Data Units Written\t\t\t", t, j).key("data_units_written");
    r.u128("host_read_commands\t\t\t", log.host_read_commands)
        .u128("host_write_commands\t\t\t", log.host_write_commands)
        .u128("controller_busy_time\t\t\t", log.controller_busy_time)
        .u128("power_cycles\t\t\t\t", log.power_cycles)
        .u128("power_on_hours\t\t\t\t", log.power_on_hours)
        .u128("unsafe_shutdowns\t\t\t", log.unsafe_shutdowns)
        .u128("media_errors\t\t\t\t", log.media_errors)
        .u128("num_err_log_entries\t\t\t", log.num_err_log_entries)
        .dec("Warning Temperature Time\t\t", log.warning_composite_temperature_time)
        .key("warning_temp_time")
        .dec(
            "Critical Composite Temperature Time\t",
            log.critical_composite_temperature_time,
        )
        .key("critical_comp_time");
    for (i, sensor) in log.temperature_sensors.iter().enumerate() {
        if let Some(k) = *sensor {
            r.field(
                format!("Temperature Sensor {}           ", i + 1),
                kelvin(k),
                Value::from(k),
            )
            .key(&format!("temperature_sensor_{}", i + 1));
        }
    }
    r.dec(
        "Thermal Management T1 Trans Count\t",
        log.thermal_mgmt_temp1_transition_count,
    )
    .key("thm_temp1_trans_count")
    .dec(
        "Thermal Management T2 Trans Count\t",
        log.thermal_mgmt_temp2_transition_count,
    )
    .key("thm_temp2_trans_count")
    .dec("Thermal Management T1 Total Time\t", log.thermal_mgmt_temp1_total_time)
    .key("thm_temp1_total_time")
    .dec("Thermal Management T2 Total Time\t", log.thermal_mgmt_temp2_total_time)
    .key("thm_temp2_total_time");
    r
}

/// The SMART / Health log as `nvme smart-log` prints it for device `dev`; with `human`, as
/// `nvme smart-log -H` prints it.
pub fn render_smart_text(dev: &str, log: &SmartLog, human: bool) -> String {
    let mut out = format!("Smart Log for NVME device:{dev} namespace-id:{NSID_ALL:x}\n");
    smart_record(log, human).write_human(0, &mut out);
    out
}

/// The SMART / Health log as `nvme smart-log -o json` prints it; with `human`, as `nvme
/// smart-log -H -o json` does (`critical_warning` an object of its bits).
pub fn render_smart_json(log: &SmartLog, human: bool) -> Value {
    Value::Object(smart_record(log, human).to_json())
}

/// nvme-cli's description of a Transport Type (TRTYPE) in the error log.
fn trtype_name(trtype: u8) -> &'static str {
    match trtype {
        0 => "The transport type is not indicated or the error is not transport related.",
        1 => "RDMA Transport error.",
        2 => "Fibre Channel Transport error.",
        3 => "TCP Transport error.",
        254 => "Intra-host Transport error.",
        _ => "Reserved",
    }
}

/// One error log entry's fields, with nvme-cli's text names and JSON keys.
pub fn error_entry_record(e: &ErrorLogEntry) -> Record {
    let status = Status::from_raw(e.status_raw15());
    let status_name = status.name().unwrap_or(status.sct().name());
    let mut r = Record::new();
    // nvme-cli aligns these names with tabs (`"sqid\t\t: %d"`); JSON keys have none.
    r.dec("error_count\t", e.error_count)
        .dec("sqid\t\t", e.sqid)
        .hex("cmdid\t\t", e.cid)
        .field(
            "status_field\t",
            format!("{}({status_name})", c_hex(u64::from(status.raw()))),
            Value::from(status.raw()),
        )
        .hex("phase_tag\t", u8::from(e.phase_tag()))
        .hex("parm_err_loc\t", e.parameter_error_location)
        .key("parm_error_location")
        .hex("lba\t\t", e.lba)
        .hex("nsid\t\t", e.nsid)
        .dec("vs\t\t", e.vendor_specific_info)
        .field("trtype\t\t", trtype_name(e.trtype), Value::from(e.trtype))
        .hex("cs\t\t", e.command_specific_info)
        .hex("trtype_spec_info", e.transport_type_specific_info);
    r
}

/// The error log entries read (ELPE + 1 by default, empty ones included) as `nvme
/// error-log` prints them. The status is printed with ironvme's name for it; nvme-cli
/// adds libnvme's sentence of explanation after a colon.
pub fn render_error_text(dev: &str, entries: &[ErrorLogEntry]) -> String {
    let mut out = format!(
        "Error Log Entries for device:{dev} entries:{}\n{ERROR_RULE}\n",
        entries.len()
    );
    for (i, e) in entries.iter().enumerate() {
        let _ = writeln!(out, " Entry[{i:2}]   \n{ERROR_RULE}");
        error_entry_record(e).write_human(ERROR_NAME_WIDTH, &mut out);
        let _ = writeln!(out, "{ERROR_RULE}");
    }
    out
}

/// The error log as `nvme error-log -o json` prints it: `{"errors": [...]}`.
pub fn render_error_json(entries: &[ErrorLogEntry]) -> Value {
    let errors: Vec<Value> = entries
        .iter()
        .map(|e| Value::Object(error_entry_record(e).to_json()))
        .collect();
    json!({ "errors": errors })
}

/// The slots nvme-cli shows (first byte non-zero), each as (slot number 1..=7, the 8
/// bytes as a little-endian u64, the bytes with non-graphic ones as `.`).
fn firmware_slots(log: &FirmwareSlotLog) -> impl Iterator<Item = (usize, u64, String)> + '_ {
    log.frs_raw
        .iter()
        .enumerate()
        .filter(|(_, raw)| raw[0] != 0)
        .map(|(i, raw)| (i + 1, u64::from_le_bytes(*raw), printable(raw)))
}

/// The firmware slot log as `nvme fw-log` prints it: `frsN : 0x... (text)`.
pub fn render_firmware_text(dev: &str, log: &FirmwareSlotLog) -> String {
    let mut out = format!("Firmware Log for device:{dev}\nafi  : {}\n", c_hex(u64::from(log.afi)));
    for (slot, raw, text) in firmware_slots(log) {
        let _ = writeln!(out, "frs{slot} : {raw:#016x} ({text})");
    }
    out
}

/// The firmware slot log as `nvme fw-log -o json` prints it: an object under the device
/// name with `Active Firmware Slot (afi)` and `Firmware Rev Slot N` (`"u64 (text)"`).
pub fn render_firmware_json(dev: &str, log: &FirmwareSlotLog) -> Value {
    let mut inner = Map::new();
    inner.insert("Active Firmware Slot (afi)".to_string(), Value::from(log.afi));
    for (slot, raw, text) in firmware_slots(log) {
        inner.insert(
            format!("Firmware Rev Slot {slot}"),
            Value::String(format!("{raw} ({text})")),
        );
    }
    let mut obj = Map::new();
    obj.insert(dev.to_string(), Value::Object(inner));
    Value::Object(obj)
}

/// Opens the device named in `args`.
fn open(args: &DeviceArgs) -> Result<OpenDevice, CliError> {
    device::open(device::parse_device(&args.dev)?, ControllerConfig::default())
}

/// `ironvme smart-log DEV [-H]`.
///
/// Errors: see [`CliError`].
pub fn run_smart(args: &SmartLogArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let dev = open(&args.device)?;
    let raw = smart_log_bytes(dev.admin()).map_err(CliError::on(&dev))?;
    let log = SmartLog::parse(&raw).map_err(|e| CliError::on(&dev)(e.into()))?;
    emit(
        out,
        args.device.format(),
        &raw,
        || render_smart_text(&dev.header_name(), &log, args.human_readable),
        || render_smart_json(&log, args.human_readable),
    )
}

/// `ironvme error-log DEV`: reads ELPE + 1 entries (Identify Controller).
///
/// Errors: see [`CliError`].
pub fn run_error(args: &DeviceArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let dev = open(args)?;
    let id = identify_controller(dev.admin()).map_err(CliError::on(&dev))?;
    let raw = error_log_bytes(dev.admin(), usize::from(id.elpe) + 1).map_err(CliError::on(&dev))?;
    let entries = parse_error_log_entries(&raw).map_err(|e| CliError::on(&dev)(e.into()))?;
    emit(
        out,
        args.format(),
        &raw,
        || render_error_text(&dev.header_name(), &entries),
        || render_error_json(&entries),
    )
}

/// `ironvme fw-log DEV`.
///
/// Errors: see [`CliError`].
pub fn run_firmware(args: &DeviceArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let dev = open(args)?;
    let raw = firmware_slot_log_bytes(dev.admin()).map_err(CliError::on(&dev))?;
    let log = FirmwareSlotLog::parse(&raw).map_err(|e| CliError::on(&dev)(e.into()))?;
    emit(
        out,
        args.format(),
        &raw,
        || render_firmware_text(&dev.header_name(), &log),
        || render_firmware_json(&dev.header_name(), &log),
    )
}

/// Any log page as `nvme get-log` prints it: `Device:nvme0 log-id:2
/// namespace-id:0xffffffff`, then a hex dump.
pub fn render_get_log_text(dev: &str, lid: u8, nsid: u32, data: &[u8]) -> String {
    format!(
        "Device:{dev} log-id:{lid} namespace-id:{}\n{}",
        c_hex(u64::from(nsid)),
        hex_dump(data)
    )
}

/// `ironvme get-log DEV --log-id LID --log-len BYTES`: Get Log Page of any log.
///
/// Errors: [`CliError::Usage`] when the length or offset is not a non-zero multiple of 4
/// (checked before the device is opened); see [`CliError`].
pub fn run_get_log(args: &GetLogArgs, out: &mut dyn Write) -> Result<(), CliError> {
    if args.log_len == 0 || args.log_len % 4 != 0 || args.lpo % 4 != 0 {
        return Err(CliError::Usage(format!(
            "--log-len {} and --lpo {} must be multiples of 4 bytes, and the length non-zero \
             (Get Log Page counts dwords)",
            args.log_len, args.lpo
        )));
    }
    let dev = open(&args.device)?;
    let data = get_log_page(
        dev.admin(),
        LogPageId(args.log_id),
        args.nsid,
        args.lpo,
        args.log_len as usize,
    )
    .map_err(CliError::on(&dev))?;
    let format = if args.raw_binary {
        OutputFormat::Binary
    } else {
        args.device.format()
    };
    emit(
        out,
        format,
        &data,
        || render_get_log_text(&dev.header_name(), args.log_id, args.nsid, &data),
        || {
            json!({
                "log_id": args.log_id,
                "namespace_id": args.nsid,
                "offset": args.lpo,
                "length": data.len(),
                "data": hex_bytes(&data),
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smart_bytes() -> Vec<u8> {
        let mut b = vec![0u8; SmartLog::LEN];
        b[0] = 0x02; // temperature warning
        b[1..3].copy_from_slice(&323u16.to_le_bytes());
        b[3] = 100;
        b[4] = 10;
        b[5] = 3;
        b[32..48].copy_from_slice(&1u128.to_le_bytes()); // data units read
        b[48..64].copy_from_slice(&2000u128.to_le_bytes()); // data units written
        b[64..80].copy_from_slice(&3u128.to_le_bytes());
        b[112..128].copy_from_slice(&(u128::from(u64::MAX) + 1).to_le_bytes()); // power cycles
        b[192..196].copy_from_slice(&5u32.to_le_bytes());
        b[202..204].copy_from_slice(&310u16.to_le_bytes()); // sensor 2
        b[216..220].copy_from_slice(&7u32.to_le_bytes());
        b
    }

    #[test]
    fn smart_text_is_nvme_cli_shaped() {
        let log = SmartLog::parse(&smart_bytes()).unwrap();
        let text = render_smart_text("0000:00:05.0", &log, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Smart Log for NVME device:0000:00:05.0 namespace-id:ffffffff");
        let field = |name: &str| {
            let line = lines
                .iter()
                .find(|l| l.split(':').next().unwrap().trim_end() == name)
                .unwrap_or_else(|| panic!("no {name} in\n{text}"));
            line.split_once(": ").unwrap().1.to_string()
        };
        assert_eq!(field("critical_warning"), "0x2");
        assert_eq!(field("temperature"), "50°C (323 Kelvin)");
        assert_eq!(field("available_spare"), "100%");
        assert_eq!(field("available_spare_threshold"), "10%");
        assert_eq!(field("percentage_used"), "3%");
        assert_eq!(field("endurance group critical warning summary"), "0");
        assert_eq!(field("Data Units Read"), "1 (512.00 kB)");
        assert_eq!(field("Data Units Written"), "2000 (1.02 GB)");
        assert_eq!(field("host_read_commands"), "3");
        assert_eq!(field("power_cycles"), "18446744073709551616");
        assert_eq!(field("Warning Temperature Time"), "5");
        assert_eq!(field("Temperature Sensor 2"), "37°C (310 Kelvin)");
        assert_eq!(field("Thermal Management T1 Trans Count"), "7");
        assert!(!text.contains("Temperature Sensor 1"), "{text}");
        let names: Vec<&str> = lines[1..]
            .iter()
            .map(|l| l.split(':').next().unwrap().trim_end())
            .collect();
        assert_eq!(names[..3], ["critical_warning", "temperature", "available_spare"]);
        assert_eq!(*names.last().unwrap(), "Thermal Management T2 Total Time");
    }

    #[test]
    fn smart_json_has_nvme_cli_keys() {
        let log = SmartLog::parse(&smart_bytes()).unwrap();
        let text = serde_json::to_string(&render_smart_json(&log, false)).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["critical_warning"], 2);
        assert_eq!(v["temperature"], 323);
        assert_eq!(v["avail_spare"], 100);
        assert_eq!(v["spare_thresh"], 10);
        assert_eq!(v["percent_used"], 3);
        assert_eq!(v["data_units_read"], "1");
        assert_eq!(v["power_cycles"], "18446744073709551616");
        assert_eq!(v["warning_temp_time"], 5);
        assert_eq!(v["temperature_sensor_2"], 310);
        assert_eq!(v["thm_temp1_trans_count"], 7);
        assert!(v.get("temperature_sensor_1").is_none());
    }

    fn error_entry() -> ErrorLogEntry {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&9u64.to_le_bytes());
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
        b[10..12].copy_from_slice(&0x12u16.to_le_bytes());
        // Status field: Unrecovered Read Error (SCT 2h, SC 81h) with DNR, phase tag 1.
        let status = (0x4000u16 | 0x281) << 1 | 1;
        b[12..14].copy_from_slice(&status.to_le_bytes());
        b[14..16].copy_from_slice(&0xffffu16.to_le_bytes());
        b[16..24].copy_from_slice(&2u64.to_le_bytes());
        b[24..28].copy_from_slice(&1u32.to_le_bytes());
        ErrorLogEntry::parse(&b).unwrap()
    }

    #[test]
    fn error_log_text_and_json() {
        let text = render_error_text("0000:00:05.0", &[error_entry()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Error Log Entries for device:0000:00:05.0 entries:1");
        assert_eq!(lines[1], ERROR_RULE);
        assert_eq!(lines[2], " Entry[ 0]   ");
        for expected in [
            "error_count\t: 9",
            "sqid\t\t: 1",
            "cmdid\t\t: 0x12",
            "status_field\t: 0x4281(Unrecovered Read Error)",
            "phase_tag\t: 0x1",
            "parm_err_loc\t: 0xffff",
            "lba\t\t: 0x2",
            "nsid\t\t: 0x1",
            "trtype\t\t: The transport type is not indicated or the error is not transport related.",
            "trtype_spec_info: 0",
        ] {
            assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
        }
        let v: Value = serde_json::from_str(&render_error_json(&[error_entry()]).to_string()).unwrap();
        assert_eq!(v["errors"][0]["error_count"], 9);
        assert_eq!(v["errors"][0]["cmdid"], 0x12);
        assert_eq!(v["errors"][0]["status_field"], 0x4281);
        assert_eq!(v["errors"][0]["parm_error_location"], 0xffff);

        let empty = render_error_text("0000:00:05.0", &[]);
        assert_eq!(
            empty,
            format!("Error Log Entries for device:0000:00:05.0 entries:0\n{ERROR_RULE}\n")
        );
        assert_eq!(render_error_json(&[]), json!({ "errors": [] }));
    }

    #[test]
    fn firmware_log_text_and_json() {
        let mut b = vec![0u8; FirmwareSlotLog::LEN];
        b[0] = 0x01;
        b[8..16].copy_from_slice(b"1.0     ");
        b[24..32].copy_from_slice(b"FW3\0\0\0\0\0");
        let log = FirmwareSlotLog::parse(&b).unwrap();
        assert_eq!(
            render_firmware_text("0000:00:05.0", &log),
            "Firmware Log for device:0000:00:05.0\nafi  : 0x1\n\
             frs1 : 0x2020202020302e31 (1.0.....)\nfrs3 : 0x00000000335746 (FW3.....)\n"
        );
        let v = render_firmware_json("0000:00:05.0", &log);
        assert_eq!(
            v,
            json!({"0000:00:05.0": {
                "Active Firmware Slot (afi)": 1,
                "Firmware Rev Slot 1": "2314885530819505713 (1.0.....)",
                "Firmware Rev Slot 3": "3364678 (FW3.....)"
            }})
        );
    }
}
