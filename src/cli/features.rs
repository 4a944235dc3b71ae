//! `get-feature`, printed as `nvme get-feature` prints it: the value line, then a hex
//! dump of the data buffer, or with `-H` the fields decoded ([`decoded`]).

pub mod decoded;

use super::device;
use super::output::{OutputFormat, hex_bytes, hex_dump};
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

/// The name nvme-cli 2.3 gives feature `fid` in the value line (its
/// `nvme_feature_to_string`): the specification's name ([`FeatureId::name`]), except for
/// the ones nvme-cli names its own way.
pub fn feature_name(fid: u8) -> &'static str {
    match FeatureId(fid) {
        FeatureId::ASYNC_EVENT_CONFIG => "Async Event Configuration",
        FeatureId::READ_RECOVERY_LEVEL => "Read Recovery Level",
        FeatureId::LBA_STATUS_INFORMATION => "LBA Status Interval",
        FeatureId::HOST_BEHAVIOR_SUPPORT => "Host Behavior",
        FeatureId::SANITIZE_CONFIG => "Sanitize",
        FeatureId::ENDURANCE_GROUP_EVENT_CONFIG => "Endurance Event Group Configuration",
        FeatureId::FLEXIBLE_DATA_PLACEMENT => "Flexible Direct Placement",
        FeatureId::FDP_EVENTS => "Flexible Direct Placement Events",
        FeatureId::SOFTWARE_PROGRESS_MARKER => "Software Progress",
        FeatureId::NAMESPACE_WRITE_PROTECTION => "Namespace Write Protect",
        f => f.name(),
    }
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

/// The reply as `nvme get-feature` prints it: the value line, then with SEL 3 the
/// capabilities; else with `human` (`-H`) the fields decoded ([`decoded::fields`]), and
/// without it a hex dump of the data buffer of a feature that returns one.
pub fn render_text(r: &FeatureReply, human: bool) -> String {
    let mut out = format!(
        "get-feature:{:#04x} ({}), {} value:{}\n",
        r.fid,
        feature_name(r.fid),
        select_name(r.sel),
        value_hex(r.dw0)
    );
    if r.sel == Select::Supported {
        for (what, on) in capabilities(r.dw0) {
            if on {
                let _ = writeln!(out, "  Feature is {what}");
            }
        }
    } else if human {
        out.push_str(&decoded::fields(r.fid, r.dw0, &r.data));
    } else if !r.data.is_empty() {
        out.push_str(&hex_dump(&r.data));
    }
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
    obj.insert("name".into(), json!(feature_name(r.fid)));
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
                out.write_all(render_text(r, args.human_readable).as_bytes())?;
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
        let line = "get-feature:0x07 (Number of Queues), Current value:0x003f003f\n";
        assert_eq!(render_text(&r, false), line);
        assert_eq!(
            render_text(&r, true),
            format!(
                "{line}\tNumber of IO Completion Queues Allocated (NCQA): 64\n\
                 \tNumber of IO Submission Queues Allocated (NSQA): 64\n"
            )
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
        let text = render_text(&reply(1, 7), true);
        assert!(
            text.starts_with("get-feature:0x01 (Arbitration), Current value:0x00000007\n"),
            "{text}"
        );
        assert!(text.contains("\tHigh Priority Weight   (HPW): 1\n"), "{text}");
        assert!(text.contains("\tArbitration Burst       (AB): No limit\n"), "{text}");
        assert!(render_text(&reply(1, 3), true).contains("(AB): 8\n"));

        let text = render_text(&reply(2, 0), true);
        assert!(
            text.starts_with("get-feature:0x02 (Power Management), Current value:00000000\n"),
            "{text}"
        );
        assert!(
            text.contains("\tWorkload Hint (WH): 0 - No Workload\n\tPower State   (PS): 0\n"),
            "{text}"
        );

        let text = render_text(&reply(4, 0x157), true);
        assert!(text.contains("(THSEL): 0 - Over Temperature Threshold\n"), "{text}");
        assert!(text.contains("(TMPSEL): 0 - Composite Temperature\n"), "{text}");
        assert!(text.contains("(TMPTH): 70°C (343 Kelvin)\n"), "{text}");
        // As nvme-cli, the text reads THSEL and TMPSEL from DW0; the JSON takes them from
        // CDW11 when the controller does not echo them.
        let text = render_text(&reply(4, 0x0012_0110), true);
        assert!(text.contains("(THSEL): 1 - Under Temperature Threshold\n"), "{text}");
        assert!(text.contains("(TMPSEL): 2 - Temperature Sensor 2\n"), "{text}");
        let mut under = reply(4, 0x110);
        under.cdw11 = 0x0012_0000; // THSEL under, TMPSEL sensor 2
        assert!(render_text(&under, true).contains("(THSEL): 0 - Over"));
        assert_eq!(
            render_json(&under)["value"],
            json!({"tmpth": 0x110, "tmpsel": 2, "thsel": 1})
        );

        assert!(render_text(&reply(6, 1), true).contains("\tVolatile Write Cache Enable (WCE): Enabled\n"));
        assert!(render_text(&reply(6, 0), true).contains("(WCE): Disabled\n"));
        assert_eq!(render_json(&reply(6, 1))["value"], json!({"enabled": true}));

        let text = render_text(&reply(0xb, 0x100), true);
        assert!(
            text.starts_with("get-feature:0x0b (Async Event Configuration)"),
            "{text}"
        );
        assert!(text.contains("\tNamespace Attribute Notices                               : Send async event\n"));
        assert!(text.contains("\tSMART / Health Critical Warnings                          : Do not send async"));
        assert!(!text.contains("Shutdown"), "{text}");
        assert_eq!(render_json(&reply(0xb, 0x100))["value"], 0x100);
        assert_eq!(render_json(&reply(0xb, 0x100))["name"], "Async Event Configuration");
    }

    #[test]
    fn timestamp_from_its_data_buffer() {
        let mut r = reply(0xe, 0);
        r.data = vec![0x11, 0x19, 0x10, 0xff, 0xa1, 0x01, 0x02, 0x00];
        let line = "get-feature:0x0e (Timestamp), Current value:00000000\n";
        assert_eq!(
            render_text(&r, true),
            format!(
                "{line}\tThe timestamp is : 1795280607505 (Sat Nov 21 17:03:27 2026 UTC)\n\
                 \tThe Timestamp field was initialized with a Timestamp value using a Set Features command.\n\
                 \tThe controller counted time in milliseconds continuously since the Timestamp value was initialized.\n"
            )
        );
        // Without -H, the data buffer as nvme-cli dumps it.
        assert_eq!(
            render_text(&r, false),
            format!(
                "{line}       0  1  2  3  4  5  6  7  8  9  a  b  c  d  e  f\n\
                 0000: 11 19 10 ff a1 01 02 00                          \"........\"\n"
            )
        );
        let v = render_json(&r);
        assert_eq!(
            v["value"],
            json!({"millis": 1_795_280_607_505u64, "synch": false, "origin": 1})
        );
        assert_eq!(v["data"], "111910ffa1010200");
        r.data[6] = 0x01; // Synch, origin 0 (reset)
        let text = render_text(&r, true);
        assert!(
            text.contains("\tThe Timestamp field was initialized to \u{2018}0\u{2019} by a Controller Level Reset.\n"),
            "{text}"
        );
        assert!(text.ends_with("after the Timestamp value was initialized\n"), "{text}");
    }

    #[test]
    fn unknown_features_print_raw_values() {
        for human in [false, true] {
            let text = render_text(&reply(0x80 | 0x40, 0x1234), human);
            assert_eq!(text, "get-feature:0xc0 (Unknown), Current value:0x00001234\n");
        }
        let v = render_json(&reply(0xc0, 0x1234));
        assert_eq!(v["dw0"], 0x1234);
        assert!(v.get("value").is_none());
        let mut r = reply(0x0c, 1);
        r.data = vec![0x41; 20];
        let text = render_text(&r, false);
        assert!(text.contains("0000: 41 41"), "{text}");
        assert!(text.contains("\n0010: 41 41 41 41 "), "{text}");
        assert_eq!(render_json(&reply(0x16, 0))["name"], "Host Behavior");
    }

    #[test]
    fn supported_capabilities() {
        let mut r = reply(7, 4);
        r.sel = Select::Supported;
        assert_eq!(
            render_text(&r, true),
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
