//! ironvme's output against nvme-cli 2.3's, byte for byte, from the same data.
//!
//! `testdata/nvme-cli-2.3/` holds what nvme-cli 2.3 (libnvme 1.3, Debian bookworm)
//! printed in the test guest for QEMU's emulated controller (`qemu/run`, the kernel-owned
//! controller 0000:00:04.0, and for the namespaces with metadata and protection
//! information, `meta-*`, the controller 0000:00:08.0): each structure as nvme-cli read it
//! (`-o binary`), its text, its text with `-H` (`*-H.txt`: bit fields decoded) and its JSON
//! (`-o json`, which `-H` changes only for smart-log); for get-feature, which prints no
//! JSON, the values it printed. ironvme parses the binary and must print the same text and
//! an equal JSON object with the same keys. The guest test
//! `a_kernel_owned_controller_prints_what_nvme_cli_prints` (`tests/guest_cli.rs`)
//! compares live output the same way.

mod common;

use common::{assert_same_json, assert_same_text};
use ironvme::cli::Select;
use ironvme::cli::features::{FeatureReply, render_text};
use ironvme::cli::identify::{
    render_controller_json, render_controller_text, render_list_ns_json, render_list_ns_text, render_namespace_json,
    render_namespace_text,
};
use ironvme::cli::logs::{
    render_error_json, render_error_text, render_firmware_json, render_firmware_text, render_smart_json,
    render_smart_text,
};
use ironvme::nvme::ctrl::NSID_ALL;
use ironvme::nvme::identify::{IdentifyController, IdentifyNamespace};
use ironvme::nvme::log::{FirmwareSlotLog, SmartLog, parse_error_log_entries};
use serde_json::Value;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!("testdata/nvme-cli-2.3/", $name)).as_slice()
    };
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap()
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

#[test]
fn id_ctrl() {
    let id = IdentifyController::parse(fixture!("id-ctrl.bin")).unwrap();
    assert_same_text(&render_controller_text(&id, false), text(fixture!("id-ctrl.txt")));
    assert_same_text(&render_controller_text(&id, true), text(fixture!("id-ctrl-H.txt")));
    assert_same_json(&render_controller_json(&id), &json(fixture!("id-ctrl.json")));
}

#[test]
fn id_ns() {
    for (nsid, bin, txt, human, js) in [
        (
            1,
            fixture!("id-ns1.bin"),
            fixture!("id-ns1.txt"),
            fixture!("id-ns1-H.txt"),
            fixture!("id-ns1.json"),
        ),
        (
            2,
            fixture!("id-ns2.bin"),
            fixture!("id-ns2.txt"),
            fixture!("id-ns2-H.txt"),
            fixture!("id-ns2.json"),
        ),
        // Extended LBAs (FLBAS bit 4) and protection information type 1 (DPS).
        (
            1,
            fixture!("meta-id-ns1.bin"),
            fixture!("meta-id-ns1.txt"),
            fixture!("meta-id-ns1-H.txt"),
            fixture!("meta-id-ns1.json"),
        ),
        (
            2,
            fixture!("meta-id-ns2.bin"),
            fixture!("meta-id-ns2.txt"),
            fixture!("meta-id-ns2-H.txt"),
            fixture!("meta-id-ns2.json"),
        ),
    ] {
        let ns = IdentifyNamespace::parse(bin).unwrap();
        assert_same_text(&render_namespace_text(nsid, &ns, false), text(txt));
        assert_same_text(&render_namespace_text(nsid, &ns, true), text(human));
        assert_same_json(&Value::Object(render_namespace_json(&ns)), &json(js));
    }
}

#[test]
fn smart_log() {
    let log = SmartLog::parse(fixture!("smart-log.bin")).unwrap();
    assert_same_text(
        &render_smart_text("nvme0", &log, false),
        text(fixture!("smart-log.txt")),
    );
    assert_same_json(&render_smart_json(&log, false), &json(fixture!("smart-log.json")));
    // -H: critical_warning's bits under its line; in JSON an object of them. The log
    // with a warning was read after the temperature threshold was set below the
    // temperature (Temp. Threshold[1] : 1).
    for (bin, human, human_json) in [
        (
            fixture!("smart-log.bin"),
            fixture!("smart-log-H.txt"),
            fixture!("smart-log-H.json"),
        ),
        (
            fixture!("smart-log-warning.bin"),
            fixture!("smart-log-warning-H.txt"),
            fixture!("smart-log-warning-H.json"),
        ),
    ] {
        let log = SmartLog::parse(bin).unwrap();
        assert_same_text(&render_smart_text("nvme0", &log, true), text(human));
        assert_same_json(&render_smart_json(&log, true), &json(human_json));
    }
}

/// `get-feature-values.txt` holds, one line per `nvme get-feature -f FID` run, whether it
/// ran with -H, the FID, the value it printed (DW0) and the data buffer in hex (`-` for
/// none; the Timestamp's from the time printed); `get-feature-H.txt` and
/// `get-feature.txt` are what those runs printed, with and without -H, in turn. They
/// cover every feature QEMU's controller answers, with its defaults and with values set
/// (Temperature Threshold, Error Recovery, Async Event Configuration).
#[test]
fn get_feature() {
    let mut ours = [String::new(), String::new()];
    for line in text(fixture!("get-feature-values.txt"))
        .lines()
        .filter(|l| !l.starts_with('#'))
    {
        let [mode, fid, dw0, data] = line.split_whitespace().collect::<Vec<_>>()[..] else {
            panic!("{line}")
        };
        let num = |s: &str| u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
        let data = match data {
            "-" => Vec::new(),
            hex => (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect(),
        };
        let reply = FeatureReply {
            fid: num(fid) as u8,
            sel: Select::Current,
            nsid: NSID_ALL,
            cdw11: 0,
            dw0: num(dw0),
            data,
        };
        let human = mode == "H";
        ours[usize::from(human)].push_str(&render_text(&reply, human));
    }
    assert_same_text(&ours[0], text(fixture!("get-feature.txt")));
    assert_same_text(&ours[1], text(fixture!("get-feature-H.txt")));
}

#[test]
fn error_log() {
    let entries = parse_error_log_entries(fixture!("error-log.bin")).unwrap();
    let theirs = common::without_libnvme_status_sentences(text(fixture!("error-log.txt")));
    assert_same_text(&render_error_text("nvme0", &entries), &theirs);
    assert_same_json(&render_error_json(&entries), &json(fixture!("error-log.json")));
}

#[test]
fn fw_log() {
    let log = FirmwareSlotLog::parse(fixture!("fw-log.bin")).unwrap();
    assert_same_text(&render_firmware_text("nvme0", &log), text(fixture!("fw-log.txt")));
    assert_same_json(&render_firmware_json("nvme0", &log), &json(fixture!("fw-log.json")));
}

#[test]
fn list_ns() {
    let ids = ironvme::nvme::identify::NamespaceList::parse(&{
        let mut b = vec![0u8; 4096];
        b[0..4].copy_from_slice(&1u32.to_le_bytes());
        b[4..8].copy_from_slice(&2u32.to_le_bytes());
        b
    })
    .unwrap();
    assert_same_text(&render_list_ns_text(&ids), text(fixture!("list-ns.txt")));
    assert_same_json(&render_list_ns_json(&ids), &json(fixture!("list-ns.json")));
}
