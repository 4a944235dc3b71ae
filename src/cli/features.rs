//! `get-feature`, printed as `nvme get-feature -H` prints it: the raw value line, then
//! the decoded fields of the features ironvme knows.

use super::device;
use super::output::{OutputFormat, hex_bytes, hex_dump, kelvin, utc_date};
use super::{CliError, GetFeatureArgs, Select, write_json};
use crate::admin::get_feature;
use crate::nvme::ctrl::{ControllerConfig, NSID_ALL};
use crate::nvme::features::{
    Arbitration, AsyncEventConfig, FeatureId, NumberOfQueues, PowerManagement, TemperatureThreshold, Timestamp,
    VolatileWriteCache,
};
use crate::nvme::status::Status;
use serde_json::{Map, Value, json};
use std::fmt::Write as _;
use std::io::Write;

/// What Get Features returned, with what was asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureReply {
    /// Feature Identifier.
    pub fid: u8,
    /// Select.
    pub sel: Select,
    /// Namespace ID sent.
    pub nsid: u32,
    /// CDW11 sent.
    pub cdw11: u32,
    /// Completion DW0.
    pub dw0: u32,
    /// The data buffer, for features that return one (empty otherwise).
    pub data: Vec<u8>,
}

/// Bytes of data Get Features returns for `fid` (0 for features whose value is all in
/// DW0), as nvme-cli sizes them: LBA Range Type 4096, Autonomous Power State Transition
/// 256, Host Memory Buffer 4096, Timestamp 8, Predictable Latency Mode Config 512, Host
/// Behavior Support 512, Host Identifier 8 (16 with CDW11 bit 0, EXHID). Asking for
/// less than the controller writes would let it DMA past the buffer.
pub fn data_len(fid: u8, cdw11: u32) -> usize {
    match fid {
        0x03 | 0x0D => 4096,
        0x0C => 256,
        0x0E => Timestamp::LEN,
        0x14 | 0x16 => 512,
        0x81 if cdw11 & 1 != 0 => 16,
        0x81 => 8,
        _ => 0,
    }
}

/// The largest data buffer of any Get Features FID, in bytes (LBA Range Type, Host
/// Memory Buffer, and the NVMe 2.0 data structures of 4 KiB): every Get Features
/// transfers into a buffer this large.
const FEATURE_BUFFER_MAX: usize = 4096;

/// nvme-cli's name of a Select value in the value line.
fn select_name(sel: Select) -> &'static str {
    match sel {
        Select::Current => "Current",
        Select::Default => "Default",
        Select::Saved => "Saved",
        Select::Supported => "Supported capabilities",
    }
}

/// C's `%#0*x` with width 10 for a non-zero value and 8 for zero, as nvme-cli prints the
/// value (`0x003f003f`, `00000000`).
fn value_hex(v: u32) -> String {
    if v == 0 {
        "00000000".to_string()
    } else {
        format!("{v:#010x}")
    }
}

/// The `Send async event` lines of Asynchronous Event Configuration, most significant
/// notice first as nvme-cli lists them.
const ASYNC_EVENT_NOTICES: [(AsyncEventConfig, &str); 9] = [
    (AsyncEventConfig::DISCOVERY_LOG, "Discovery Log Page Change Notices"),
    (
        AsyncEventConfig::NORMAL_NVM_SUBSYSTEM_SHUTDOWN,
        "Normal NVM Subsystem Shutdown Event Notices",
    ),
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
];

/// The decoded fields of a feature value, one tab-indented line each; empty for a
/// feature ironvme does not decode.
fn decoded_lines(r: &FeatureReply) -> String {
    let mut out = String::new();
    let dw0 = r.dw0;
    match FeatureId(r.fid) {
        FeatureId::ARBITRATION => {
            let a = Arbitration::from_dw0(dw0);
            let burst = a.burst().map_or("No limit".to_string(), |b| b.to_string());
            let _ = writeln!(out, "\tHigh Priority Weight   (HPW): {}", u32::from(a.hpw) + 1);
            let _ = writeln!(out, "\tMedium Priority Weight (MPW): {}", u32::from(a.mpw) + 1);
            let _ = writeln!(out, "\tLow Priority Weight    (LPW): {}", u32::from(a.lpw) + 1);
            let _ = writeln!(out, "\tArbitration Burst       (AB): {burst}");
        }
        FeatureId::POWER_MANAGEMENT => {
            let p = PowerManagement::from_dw0(dw0);
            let hint = match p.wh {
                0 => "No Workload",
                1 => "Extended Idle Period with a Burst of Random Writes",
                2 => "Heavy Sequential Writes",
                _ => "Reserved",
            };
            let _ = writeln!(out, "\tWorkload Hint (WH): {} - {hint}", p.wh);
            let _ = writeln!(out, "\tPower State   (PS): {}", p.ps);
        }
        FeatureId::TEMPERATURE_THRESHOLD => {
            let t = temperature_threshold(r);
            let thsel = match t.thsel {
                0 => "Over Temperature Threshold",
                1 => "Under Temperature Threshold",
                _ => "Reserved",
            };
            let tmpsel = match t.tmpsel {
                0 => "Composite Temperature".to_string(),
                n @ 1..=8 => format!("Temperature Sensor {n}"),
                0xf => "All Temperature Sensors".to_string(),
                _ => "Reserved".to_string(),
            };
            let _ = writeln!(out, "\tThreshold Type Select         (THSEL): {} - {thsel}", t.thsel);
            let _ = writeln!(out, "\tThreshold Temperature Select (TMPSEL): {} - {tmpsel}", t.tmpsel);
            let _ = writeln!(out, "\tTemperature Threshold         (TMPTH): {}", kelvin(t.tmpth));
        }
        FeatureId::VOLATILE_WRITE_CACHE => {
            let on = VolatileWriteCache::from_dw0(dw0).enabled;
            let _ = writeln!(
                out,
                "\tVolatile Write Cache Enable (WCE): {}",
                if on { "Enabled" } else { "Disabled" }
            );
        }
        FeatureId::NUMBER_OF_QUEUES => {
            let q = NumberOfQueues::from_dw0(dw0);
            let _ = writeln!(out, "\tNumber of IO Completion Queues Allocated (NCQA): {}", q.cq);
            let _ = writeln!(out, "\tNumber of IO Submission Queues Allocated (NSQA): {}", q.sq);
        }
        FeatureId::ASYNC_EVENT_CONFIG => {
            let aec = AsyncEventConfig::from_dw0(dw0);
            let send = |on: bool| {
                if on {
                    "Send async event"
                } else {
                    "Do not send async event"
                }
            };
            for (bit, name) in ASYNC_EVENT_NOTICES {
                let _ = writeln!(out, "\t{name:<58}: {}", send(aec.contains(bit)));
            }
            let smart = aec.intersects(AsyncEventConfig::SMART_CRITICAL_WARNINGS);
            let _ = writeln!(out, "\t{:<58}: {}", "SMART / Health Critical Warnings", send(smart));
        }
        FeatureId::TIMESTAMP => match Timestamp::parse(&r.data) {
            Ok(t) => {
                let _ = writeln!(out, "\tThe timestamp is : {} ({})", t.millis, utc_date(t.millis));
                let origin = match t.origin {
                    0 => "The Timestamp field was cleared to 0h by a Controller Level Reset.",
                    1 => "The Timestamp field was initialized with a Timestamp value using a Set Features command.",
                    _ => "Reserved",
                };
                let synch = if t.synch {
                    "The controller may have stopped counting during vendor specific intervals after the \
                     Timestamp value was initialized."
                } else {
                    "The controller counted time in milliseconds continuously since the Timestamp value was \
                     initialized."
                };
                let _ = writeln!(out, "\t{origin}\n\t{synch}");
            }
            Err(e) => {
                let _ = writeln!(out, "\t{e}");
            }
        },
        _ => {}
    }
    out
}

/// Temperature Threshold: TMPTH from DW0, and TMPSEL/THSEL as asked in CDW11 (not every
/// controller echoes them in DW0).
fn temperature_threshold(r: &FeatureReply) -> TemperatureThreshold {
    let asked = TemperatureThreshold::from_dw0(r.cdw11);
    TemperatureThreshold {
        tmpth: TemperatureThreshold::from_dw0(r.dw0).tmpth,
        ..asked
    }
}

/// The capabilities of SEL 3 (supported capabilities) in DW0 bits 2:0.
fn capabilities(dw0: u32) -> [(&'static str, bool); 3] {
    [
        ("saveable", dw0 & 1 != 0),
        ("per-namespace", dw0 & 2 != 0),
        ("changeable", dw0 & 4 != 0),
    ]
}

/// The reply as `nvme get-feature -H` prints it: the value line, then the decoded
/// fields (or, with SEL 3, the capabilities; or a hex dump of the data of a feature
/// ironvme does not decode).
pub fn render_text(r: &FeatureReply) -> String {
    let name = FeatureId(r.fid).name();
    let mut out = format!(
        "get-feature:{:#04x} ({name}), {} value:{}\n",
        r.fid,
        select_name(r.sel),
        value_hex(r.dw0)
    );
    if r.sel == Select::Supported {
        for (what, on) in capabilities(r.dw0) {
            if on {
                let _ = writeln!(out, "  Feature is {what}");
            }
        }
        return out;
    }
    let decoded = decoded_lines(r);
    if decoded.is_empty() && !r.data.is_empty() {
        out.push_str(&hex_dump(&r.data));
    }
    out.push_str(&decoded);
    out
}

/// The decoded value as JSON (the `serde` form of ironvme-nvme's feature types), or
/// `None` for a feature ironvme does not decode.
fn decoded_json(r: &FeatureReply) -> Option<Value> {
    let v = match FeatureId(r.fid) {
        FeatureId::ARBITRATION => serde_json::to_value(Arbitration::from_dw0(r.dw0)),
        FeatureId::POWER_MANAGEMENT => serde_json::to_value(PowerManagement::from_dw0(r.dw0)),
        FeatureId::TEMPERATURE_THRESHOLD => serde_json::to_value(temperature_threshold(r)),
        FeatureId::VOLATILE_WRITE_CACHE => serde_json::to_value(VolatileWriteCache::from_dw0(r.dw0)),
        FeatureId::NUMBER_OF_QUEUES => serde_json::to_value(NumberOfQueues::from_dw0(r.dw0)),
        FeatureId::ASYNC_EVENT_CONFIG => serde_json::to_value(AsyncEventConfig::from_dw0(r.dw0)),
        FeatureId::TIMESTAMP => serde_json::to_value(Timestamp::parse(&r.data).ok()?),
        _ => return None,
    };
    v.ok()
}

/// The reply as one JSON object: `feature_id`, `name`, `sel`, `nsid`, `cdw11`, `dw0`, then
/// `capabilities` (SEL 3) or `value` (decoded features), and `data` (hex) when the
/// feature returned a buffer.
pub fn render_json(r: &FeatureReply) -> Value {
    let mut obj = Map::new();
    obj.insert("feature_id".into(), json!(r.fid));
    obj.insert("name".into(), json!(FeatureId(r.fid).name()));
    let sel = match r.sel {
        Select::Current => "current",
        Select::Default => "default",
        Select::Saved => "saved",
        Select::Supported => "supported",
    };
    obj.insert("sel".into(), json!(sel));
    obj.insert("nsid".into(), json!(r.nsid));
    obj.insert("cdw11".into(), json!(r.cdw11));
    obj.insert("dw0".into(), json!(r.dw0));
    if r.sel == Select::Supported {
        let caps: Map<String, Value> = capabilities(r.dw0)
            .into_iter()
            .map(|(what, on)| (what.replace('-', "_"), Value::Bool(on)))
            .collect();
        obj.insert("capabilities".into(), Value::Object(caps));
    } else if let Some(v) = decoded_json(r) {
        obj.insert("value".into(), v);
    }
    if !r.data.is_empty() {
        obj.insert("data".into(), json!(hex_bytes(&r.data)));
    }
    Value::Object(obj)
}

/// `ironvme get-feature DEV [--feature-id F] [--sel S] [--nsid N] [--cdw11 V]`.
///
/// Without `--feature-id`, every FID from 01h to FFh in turn, skipping the ones the
/// controller refuses with Invalid Field in Command (not supported) or Invalid Namespace
/// or Format (namespace-specific, and DEV names no namespace); JSON is then
/// `{"features": [...]}`.
/// `-o binary` prints the data buffer of the features that return one.
///
/// Errors: see [`CliError`]; a feature the controller does not support fails with its
/// NVMe status (e.g. Invalid Field in Command), as does any other failure while listing.
pub fn run(args: &GetFeatureArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let spec = device::parse_device(&args.device.dev)?;
    let dev = device::open(spec, ControllerConfig::default())?;
    let nsid = args.nsid.or_else(|| dev.node_namespace()).unwrap_or(NSID_ALL);
    let read = |fid: u8| -> Result<FeatureReply, crate::Error> {
        // SEL 3 answers in DW0 only: no data is transferred. Otherwise a feature whose
        // size ironvme does not know (vendor-specific FIDs, newer ones) still gets a
        // buffer as large as any feature's data, so a controller that returns data never
        // DMAs through a null data pointer; only `want` bytes are shown.
        let want = args
            .data_len
            .map_or_else(|| data_len(fid, args.cdw11), |len| len as usize);
        let (want, len) = if args.sel == Select::Supported {
            (0, 0)
        } else {
            (want, want.max(FEATURE_BUFFER_MAX))
        };
        let (dw0, mut data) = get_feature(dev.admin(), FeatureId(fid), args.sel.to_nvme(), nsid, args.cdw11, len)?;
        data.truncate(want);
        Ok(FeatureReply {
            fid,
            sel: args.sel,
            nsid,
            cdw11: args.cdw11,
            dw0,
            data,
        })
    };
    let replies = match args.fid {
        Some(fid) => vec![read(fid).map_err(CliError::on(&dev))?],
        None => {
            let mut all = Vec::new();
            for fid in 1..=u8::MAX {
                match read(fid) {
                    Ok(reply) => all.push(reply),
                    // Not supported, or namespace-specific and DEV names no namespace.
                    Err(e)
                        if e.status().is_some_and(|s| {
                            s.same_code(Status::INVALID_FIELD) || s.same_code(Status::INVALID_NAMESPACE_OR_FORMAT)
                        }) => {}
                    Err(e) => return Err(CliError::on(&dev)(e)),
                }
            }
            all
        }
    };
    match (args.device.format(), args.fid) {
        (OutputFormat::Binary, _) => {
            for r in &replies {
                out.write_all(&r.data)?;
            }
            Ok(())
        }
        (OutputFormat::Json, Some(_)) => write_json(out, &render_json(&replies[0])),
        (OutputFormat::Json, None) => {
            let all: Vec<Value> = replies.iter().map(render_json).collect();
            write_json(out, &json!({ "features": all }))
        }
        (OutputFormat::Normal, _) => {
            for r in &replies {
                out.write_all(render_text(r).as_bytes())?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(fid: u8, dw0: u32) -> FeatureReply {
        FeatureReply {
            fid,
            sel: Select::Current,
            nsid: 0,
            cdw11: 0,
            dw0,
            data: Vec::new(),
        }
    }

    #[test]
    fn number_of_queues() {
        let r = reply(7, 0x003f_003f);
        assert_eq!(
            render_text(&r),
            "get-feature:0x07 (Number of Queues), Current value:0x003f003f\n\
             \tNumber of IO Completion Queues Allocated (NCQA): 64\n\
             \tNumber of IO Submission Queues Allocated (NSQA): 64\n"
        );
        let v: Value = serde_json::from_str(&render_json(&r).to_string()).unwrap();
        assert_eq!(v["feature_id"], 7);
        assert_eq!(v["name"], "Number of Queues");
        assert_eq!(v["sel"], "current");
        assert_eq!(v["dw0"], 0x003f_003f);
        assert_eq!(v["value"], json!({"sq": 64, "cq": 64}));
        assert!(v.get("data").is_none());
    }

    #[test]
    fn the_other_decoded_features() {
        let text = render_text(&reply(1, 7));
        assert!(
            text.starts_with("get-feature:0x01 (Arbitration), Current value:0x00000007\n"),
            "{text}"
        );
        assert!(text.contains("\tHigh Priority Weight   (HPW): 1\n"), "{text}");
        assert!(text.contains("\tArbitration Burst       (AB): No limit\n"), "{text}");
        assert!(render_text(&reply(1, 3)).contains("(AB): 8\n"));

        let text = render_text(&reply(2, 0));
        assert!(
            text.starts_with("get-feature:0x02 (Power Management), Current value:00000000\n"),
            "{text}"
        );
        assert!(
            text.contains("\tWorkload Hint (WH): 0 - No Workload\n\tPower State   (PS): 0\n"),
            "{text}"
        );

        let text = render_text(&reply(4, 0x157));
        assert!(text.contains("(THSEL): 0 - Over Temperature Threshold\n"), "{text}");
        assert!(text.contains("(TMPSEL): 0 - Composite Temperature\n"), "{text}");
        assert!(text.contains("(TMPTH): 70°C (343 Kelvin)\n"), "{text}");
        let mut under = reply(4, 0x110);
        under.cdw11 = 0x0012_0000; // THSEL under, TMPSEL sensor 2
        let text = render_text(&under);
        assert!(text.contains("(THSEL): 1 - Under Temperature Threshold\n"), "{text}");
        assert!(text.contains("(TMPSEL): 2 - Temperature Sensor 2\n"), "{text}");
        assert_eq!(
            render_json(&under)["value"],
            json!({"tmpth": 0x110, "tmpsel": 2, "thsel": 1})
        );

        assert!(render_text(&reply(6, 1)).contains("\tVolatile Write Cache Enable (WCE): Enabled\n"));
        assert!(render_text(&reply(6, 0)).contains("(WCE): Disabled\n"));
        assert_eq!(render_json(&reply(6, 1))["value"], json!({"enabled": true}));

        let text = render_text(&reply(0xb, 0x100));
        assert!(
            text.starts_with("get-feature:0x0b (Asynchronous Event Configuration)"),
            "{text}"
        );
        assert!(text.contains("\tNamespace Attribute Notices                               : Send async event\n"));
        assert!(text.contains("\tSMART / Health Critical Warnings                          : Do not send async"));
        assert_eq!(render_json(&reply(0xb, 0x100))["value"], 0x100);
    }

    #[test]
    fn timestamp_from_its_data_buffer() {
        let mut r = reply(0xe, 0);
        r.data = vec![0x11, 0x19, 0x10, 0xff, 0xa1, 0x01, 0x02, 0x00];
        let text = render_text(&r);
        assert_eq!(
            text,
            "get-feature:0x0e (Timestamp), Current value:00000000\n\
             \tThe timestamp is : 1795280607505 (Sat Nov 21 17:03:27 2026 UTC)\n\
             \tThe Timestamp field was initialized with a Timestamp value using a Set Features command.\n\
             \tThe controller counted time in milliseconds continuously since the Timestamp value was initialized.\n"
        );
        let v = render_json(&r);
        assert_eq!(
            v["value"],
            json!({"millis": 1_795_280_607_505u64, "synch": false, "origin": 1})
        );
        assert_eq!(v["data"], "111910ffa1010200");
        r.data.truncate(3);
        assert!(render_text(&r).contains("Timestamp: need 8 bytes, got 3"));
    }

    #[test]
    fn unknown_features_print_raw_values() {
        let text = render_text(&reply(0x80, 0x1234));
        assert_eq!(text, "get-feature:0x80 (Unknown), Current value:0x00001234\n");
        let v = render_json(&reply(0x80, 0x1234));
        assert_eq!(v["dw0"], 0x1234);
        assert!(v.get("value").is_none());
        let mut r = reply(0x0c, 1);
        r.data = vec![0x41; 20];
        let text = render_text(&r);
        assert!(text.contains("0000: 41 41"), "{text}");
        assert!(text.contains("\n0010: 41 41 41 41 "), "{text}");
    }

    #[test]
    fn supported_capabilities() {
        let mut r = reply(7, 4);
        r.sel = Select::Supported;
        assert_eq!(
            render_text(&r),
            "get-feature:0x07 (Number of Queues), Supported capabilities value:0x00000004\n  Feature is changeable\n"
        );
        let v = render_json(&r);
        assert_eq!(v["sel"], "supported");
        assert_eq!(
            v["capabilities"],
            json!({"saveable": false, "per_namespace": false, "changeable": true})
        );
        assert!(v.get("value").is_none());
    }

    #[test]
    fn data_lengths() {
        assert_eq!(data_len(0x0e, 0), 8);
        assert_eq!(data_len(0x03, 0), 4096);
        assert_eq!(data_len(0x0c, 0), 256);
        assert_eq!(data_len(0x81, 0), 8);
        assert_eq!(data_len(0x81, 1), 16);
        assert_eq!(data_len(0x07, 0), 0);
    }
}
