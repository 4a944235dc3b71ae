//! Guest tests of the `ironvme` command-line tool on QEMU's emulated NVMe controllers.
//!
//! They run inside the guest started by `qemu/run`, which exports `IRONVME_<CTRL>_BDF`
//! and `IRONVME_<CTRL>_SERIAL` for every controller and boots with all of them bound to
//! the kernel nvme driver. A test that needs a controller on vfio-pci binds it with
//! `scripts/setup.sh bind` and gives it back with `scripts/setup.sh unbind` when it ends
//! (also on failure). One at a time, since they share the controllers:
//!
//! ```text
//! cargo test --no-run --test guest_cli
//! qemu/run -- target/debug/deps/guest_cli-<hash> --ignored --test-threads=1
//! ```

mod common;

use common::{OnVfio, driver_of, env, ironvme};
use serde_json::Value;
use std::process::{Command, Stdio};

/// Runs ironvme, expects success, returns stdout.
fn ok(args: &[&str]) -> String {
    let o = ironvme(args);
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(
        o.status.success(),
        "ironvme {args:?} failed ({}):\n{err}{out}",
        o.status
    );
    assert!(err.is_empty(), "ironvme {args:?} wrote to stderr:\n{err}");
    out.into_owned()
}

/// Runs ironvme with --json, expects success, returns the parsed object.
fn ok_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let text = ok(&all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("ironvme {all:?}: not JSON ({e}):\n{text}"))
}

/// The value of `key` in `key : value` lines.
fn field(output: &str, key: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// Every controller of the topology: (BDF, serial), from `IRONVME_<CTRL>_BDF` and
/// `IRONVME_<CTRL>_SERIAL`.
fn topology() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::env::vars()
        .filter_map(|(k, v)| {
            let ctrl = k.strip_prefix("IRONVME_")?.strip_suffix("_BDF")?;
            Some((v, env(&format!("IRONVME_{ctrl}_SERIAL"))))
        })
        .collect();
    out.sort();
    out
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn identify_prints_the_controller_like_nvme_cli() {
    let dev = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let serial = env("IRONVME_VFIO_4K_SERIAL");
    let text = ok(&["identify", &dev.bdf]);
    assert!(text.starts_with("NVME Identify Controller:\n"), "{text}");
    // nvme-cli prints the ASCII fields with their padding: sn is 20 bytes.
    assert!(text.contains(&format!("\nsn        : {serial:<20}\n")), "{text}");
    assert_eq!(field(&text, "vid").as_deref(), Some("0x1b36"));
    assert_eq!(field(&text, "mn").as_deref(), Some("QEMU NVMe Ctrl"));
    assert_eq!(field(&text, "mdts").as_deref(), Some("7"));
    assert_eq!(field(&text, "ver").as_deref(), Some("0x10400"));
    assert!(text.contains("ps      0 : mp:25.00W operational"), "{text}");

    let v = ok_json(&["identify", &dev.bdf]);
    assert_eq!(v["sn"], format!("{serial:<20}").as_str());
    assert_eq!(v["mdts"], 7);
    assert_eq!(v["vid"], 0x1b36);
    assert_eq!(v["subnqn"], format!("nqn.2019-08.org.qemu:{serial}").as_str());
    assert!(v["psds"].as_array().is_some_and(|p| !p.is_empty()), "{v}");
    // The pci: spelling and the short BDF name the same controller.
    let short = dev.bdf.strip_prefix("0000:").unwrap();
    assert_eq!(ok_json(&["identify", &format!("pci:{short}")])["sn"], v["sn"]);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn identify_ns_marks_the_4096_byte_format_in_use() {
    let dev = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let text = ok(&["identify-ns", &dev.bdf, "--nsid", "1"]);
    assert!(text.starts_with("NVME Identify Namespace 1:\n"), "{text}");
    let in_use: Vec<&str> = text.lines().filter(|l| l.ends_with("(in use)")).collect();
    assert_eq!(in_use.len(), 1, "{text}");
    assert!(in_use[0].contains("lbads:12"), "{text}");
    assert_eq!(
        field(&text, "nsze").as_deref(),
        Some("0x40000"),
        "1 GiB of 4 KiB blocks"
    );

    let v = ok_json(&["identify-ns", &dev.bdf, "--nsid", "1"]);
    let flbas = v["flbas"].as_u64().unwrap() as usize;
    assert_eq!(v["lbafs"][flbas & 0xf]["ds"], 12, "{v}");

    // Without --nsid: every active namespace (just one here).
    assert_eq!(ok(&["identify-ns", &dev.bdf]), text);
    let all = ok_json(&["identify-ns", &dev.bdf]);
    assert_eq!(all["namespaces"].as_array().unwrap().len(), 1, "{all}");
    assert_eq!(all["namespaces"][0]["nsid"], 1);

    // An inactive namespace is an error, not a page of zeros.
    let o = ironvme(&["identify-ns", &dev.bdf, "--nsid", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("namespace 2 is not active (active namespaces: 1)"),
        "{err}"
    );
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn smart_firmware_and_error_logs() {
    let dev = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let smart = ok(&["smart-log", &dev.bdf]);
    assert!(
        smart.starts_with(&format!(
            "Smart Log for NVME device:{} namespace-id:ffffffff\n",
            dev.bdf
        )),
        "{smart}"
    );
    let temp = field(&smart, "temperature").unwrap();
    assert!(temp.ends_with("Kelvin)"), "{smart}");
    assert!(field(&smart, "Data Units Read").is_some(), "{smart}");
    let v = ok_json(&["smart-log", &dev.bdf]);
    assert!(v["temperature"].as_u64().is_some_and(|k| k > 273), "{v}");
    assert!(v["power_on_hours"].is_string(), "{v}");

    let fw = ok(&["fw-log", &dev.bdf]);
    assert!(
        fw.starts_with(&format!("Firmware Log for device:{}\nafi  : 0x1\n", dev.bdf)),
        "{fw}"
    );
    assert!(fw.contains("frs1 : "), "{fw}");
    let v = ok_json(&["fw-log", &dev.bdf]);
    assert_eq!(v[&dev.bdf]["Active Firmware Slot (afi)"], 1, "{v}");

    // QEMU 7.2's error log is always zeros; like nvme-cli, every entry ELPE + 1 asks for
    // (ELPE 0: one) is printed.
    let errors = ok(&["error-log", &dev.bdf]);
    assert!(
        errors.starts_with(&format!("Error Log Entries for device:{} entries:1\n", dev.bdf)),
        "{errors}"
    );
    let v = ok_json(&["error-log", &dev.bdf]);
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["errors"][0]["error_count"], 0, "{v}");
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn get_feature_decodes_number_of_queues() {
    let dev = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let text = ok(&["get-feature", &dev.bdf, "--fid", "7", "-H"]);
    assert!(
        text.starts_with("get-feature:0x07 (Number of Queues), Current value:0x"),
        "{text}"
    );
    let nsqa: u32 = field(&text, "Number of IO Submission Queues Allocated (NSQA)")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no NSQA in\n{text}"));
    assert!(nsqa >= 1, "{text}");
    let v = ok_json(&["get-feature", &dev.bdf, "--fid", "7"]);
    assert_eq!(v["value"]["sq"], nsqa, "{v}");
    assert_eq!(
        v["dw0"].as_u64(),
        Some(u64::from(
            (nsqa - 1) | (v["value"]["cq"].as_u64().unwrap() as u32 - 1) << 16
        ))
    );

    let caps = ok(&["get-feature", &dev.bdf, "--fid", "7", "--sel", "supported"]);
    assert!(caps.contains("Supported capabilities value:"), "{caps}");

    let vwc = ok(&["get-feature", &dev.bdf, "-f", "6", "-H"]);
    assert!(vwc.contains("Volatile Write Cache Enable (WCE): Enabled"), "{vwc}");
    let ts = ok(&["get-feature", &dev.bdf, "-f", "0xe", "-H"]);
    assert!(ts.contains("The timestamp is : "), "{ts}");
    let tt = ok(&["get-feature", &dev.bdf, "-f", "4", "-H"]);
    assert!(tt.contains("(TMPTH): 70°C (343 Kelvin)"), "{tt}");

    // A failing command prints its decoded NVMe status: QEMU wants a namespace for Error
    // Recovery, and NSID 0 is none.
    let o = ironvme(&["get-feature", &dev.bdf, "--fid", "5", "--nsid", "0"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        format!(
            "ironvme: {}: Get Features failed: Invalid Namespace or Format (0x00b, DNR)",
            dev.bdf
        ),
    );
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn list_shows_every_controller_with_its_driver() {
    let controllers = topology();
    assert!(controllers.len() >= 3, "{controllers:?}");
    let text = ok(&["list"]);
    for (bdf, serial) in &controllers {
        let line = text
            .lines()
            .find(|l| l.starts_with(bdf.as_str()))
            .unwrap_or_else(|| panic!("{bdf} missing from\n{text}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((cols[1], cols[2]), ("1b36:0010", "nvme"), "{line}");
        assert_eq!(cols[5], serial, "{line}");
    }

    let dev = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let v = ok_json(&["list"]);
    let list = v["controllers"].as_array().unwrap();
    for (bdf, serial) in &controllers {
        let c = list
            .iter()
            .find(|c| c["bdf"] == bdf.as_str())
            .unwrap_or_else(|| panic!("{bdf} missing from {v}"));
        assert!(c["iommu_group"].is_u64(), "{c}");
        if *bdf == dev.bdf {
            assert_eq!(c["driver"], "vfio-pci", "{c}");
            assert_eq!(
                c["serial"],
                Value::Null,
                "list must not open a vfio-pci controller: {c}"
            );
        } else {
            assert_eq!(c["driver"], "nvme", "{c}");
            assert_eq!(c["serial"], serial.as_str(), "{c}");
            assert!(!c["namespaces"].as_array().unwrap().is_empty(), "{c}");
        }
    }
    let kernel = env("IRONVME_KERNEL_BDF");
    let k = list.iter().find(|c| c["bdf"] == kernel.as_str()).unwrap();
    let sizes: Vec<u64> = k["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["lba_size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [512, 4096], "{k}");
    let text = ok(&["list"]);
    let line = text.lines().find(|l| l.starts_with(dev.bdf.as_str())).unwrap();
    assert_eq!(line.split_whitespace().nth(2), Some("vfio-pci"), "{line}");
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn a_kernel_owned_controller_is_refused_with_the_fix() {
    let bdf = env("IRONVME_KERNEL_BDF");
    let o = ironvme(&["identify", &bdf]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.starts_with(&format!("ironvme: {bdf} (IOMMU group ")), "{err}");
    assert!(err.contains("bound to the kernel nvme driver"), "{err}");
    assert!(err.contains(&format!("scripts/setup.sh bind {bdf}")), "{err}");
    assert_eq!(driver_of(&bdf).as_deref(), Some("nvme"), "untouched");
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn rust_log_shows_the_driver_spans() {
    let dev = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let o = Command::new(env!("CARGO_BIN_EXE_ironvme"))
        .args(["identify", &dev.bdf])
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("vfio_open"), "{err}");
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("NVME Identify Controller:"));
}

/// Puts the VFIO 512 namespace back to 512-byte blocks (LBA format 0) when dropped, so
/// a failing format test leaves the topology as it found it.
struct RestoreFormat<'a> {
    bdf: &'a str,
}

impl Drop for RestoreFormat<'_> {
    fn drop(&mut self) {
        let o = ironvme(&["format", self.bdf, "--lbaf", "0", "--force"]);
        if !o.status.success() {
            eprintln!("restoring LBA format 0 failed: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn format_changes_the_lba_format() {
    let dev = OnVfio::bind("IRONVME_VFIO_512_BDF");
    let before = ok_json(&["identify-ns", &dev.bdf, "--nsid", "1"]);
    let flbas = before["flbas"].as_u64().unwrap() as usize & 0xf;
    assert_eq!(before["lbafs"][flbas]["ds"], 9, "starts with 512-byte blocks: {before}");
    let four_k = before["lbafs"]
        .as_array()
        .unwrap()
        .iter()
        .position(|f| f["ds"] == 12 && f["ms"] == 0)
        .expect("a 4096 + 0 format");

    // No terminal and no --force: refused, nothing done.
    let o = ironvme(&["format", &dev.bdf, "--lbaf", &four_k.to_string()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing to format"));
    assert_eq!(
        ok_json(&["identify-ns", &dev.bdf, "--nsid", "1"])["flbas"],
        before["flbas"]
    );

    let _restore = RestoreFormat { bdf: &dev.bdf };
    let out = ok(&["format", &dev.bdf, "--lbaf", &four_k.to_string(), "--force"]);
    assert!(out.starts_with("Success formatting namespace:1\n"), "{out}");
    assert!(
        out.contains(&format!("LBA format {four_k} in use, 4096-byte blocks")),
        "{out}"
    );
    let after = ok(&["identify-ns", &dev.bdf, "--nsid", "1"]);
    let in_use: Vec<&str> = after.lines().filter(|l| l.ends_with("(in use)")).collect();
    assert_eq!(
        in_use,
        [format!("lbaf  {four_k} : ms:0   lbads:12 rp:0 (in use)")],
        "{after}"
    );

    // A format the namespace does not have is refused before anything is sent.
    let o = ironvme(&["format", &dev.bdf, "--lbaf", "63", "--force"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("LBA format 63 does not exist"), "{err}");
}

/// The SMART counters that may move between nvme-cli's read and ironvme's (text names,
/// then JSON keys); their formats are checked byte for byte by `tests/nvme_cli_golden.rs`.
const MOVING_SMART_FIELDS: [&str; 12] = [
    "Data Units Read",
    "Data Units Written",
    "host_read_commands",
    "host_write_commands",
    "controller_busy_time",
    "power_on_hours",
    "data_units_read",
    "data_units_written",
    "host_read_commands",
    "host_write_commands",
    "controller_busy_time",
    "power_on_hours",
];

/// The same command line, nvme-cli's names and flags, given to nvme-cli and to ironvme on
/// the kernel-owned controller and its namespace nodes prints the same: every line of
/// text (a field ironvme lacks is a missing line), with `-H` every decoded line too (id-ctrl,
/// id-ns, smart-log, get-feature), every JSON key at every level, and with `-o binary` the
/// same bytes. The one difference allowed is libnvme's sentence after a status name in
/// error-log.
#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn a_kernel_owned_controller_prints_what_nvme_cli_prints() {
    let ctrl = common::kernel_ctrl(&env("IRONVME_KERNEL_BDF")).display().to_string();
    let (ns2, generic1) = (
        format!("{ctrl}n2"),
        format!("{}n1", ctrl.replace("/dev/nvme", "/dev/ng")),
    );
    // The metadata controller's namespaces set the bits the kernel's leave clear
    // (extended LBAs, protection information type 1).
    let meta = common::kernel_ctrl(&env("IRONVME_META_BDF")).display().to_string();
    let commands: [&[&str]; 16] = [
        &["id-ctrl", &ctrl],
        &["id-ns", &ctrl, "--namespace-id=1"],
        // A namespace node means its own namespace.
        &["id-ns", &ns2],
        &["id-ns", &generic1],
        // -H: bit fields decoded under their lines (the JSON and bytes do not change).
        &["id-ctrl", &ctrl, "-H"],
        &["id-ctrl", &ctrl, "--human-readable"],
        &["id-ns", &ctrl, "--namespace-id=1", "-H"],
        &["id-ns", &ns2, "-H"],
        &["id-ns", &meta, "-n", "1", "-H"],
        &["id-ns", &meta, "-n", "2", "-H"],
        &["smart-log", &ctrl],
        // -H: critical_warning's bits decoded (in JSON, an object of them).
        &["smart-log", &ctrl, "-H"],
        &["smart-log", &ctrl, "--human-readable"],
        &["error-log", &ctrl],
        &["fw-log", &ctrl],
        &["list-ns", &ctrl],
    ];
    for args in commands {
        let what = format!("{args:?}");
        let text = |cmd: &str| String::from_utf8(common::run_bytes(cmd, args)).unwrap();
        let (mut ours, mut theirs) = (text(common::IRONVME), text("nvme"));
        if args[0] == "smart-log" {
            ours = common::mask_text(&ours, &MOVING_SMART_FIELDS);
            theirs = common::mask_text(&theirs, &MOVING_SMART_FIELDS);
        }
        if args[0] == "error-log" {
            theirs = common::without_libnvme_status_sentences(&theirs);
        }
        eprintln!("{what}: text");
        common::assert_same_text(&ours, &theirs);

        let json_args: Vec<&str> = args.iter().copied().chain(["-o", "json"]).collect();
        let json = |cmd: &str| -> Value {
            let out = common::run_bytes(cmd, &json_args);
            serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{cmd} {json_args:?}: not JSON: {e}"))
        };
        let (mut ours, mut theirs) = (json(common::IRONVME), json("nvme"));
        common::mask_json(&mut ours, &MOVING_SMART_FIELDS);
        common::mask_json(&mut theirs, &MOVING_SMART_FIELDS);
        eprintln!("{what}: json");
        common::assert_same_json(&ours, &theirs);

        if !matches!(args[0], "smart-log" | "list-ns") {
            let binary_args: Vec<&str> = args.iter().copied().chain(["-o", "binary"]).collect();
            let (ours, theirs) = (
                common::run_bytes(common::IRONVME, &binary_args),
                common::run_bytes("nvme", &binary_args),
            );
            assert!(
                ours == theirs,
                "{binary_args:?}: ironvme's bytes differ from nvme-cli's"
            );
        }
    }
    // get-log: any log page, as a hex dump (nvme-cli's layout) or its bytes.
    for extra in [&[][..], &["-b"]] {
        let args: Vec<&str> = ["get-log", ctrl.as_str(), "--log-id=3", "--log-len=512"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        assert!(
            common::run_bytes(common::IRONVME, &args) == common::run_bytes("nvme", &args),
            "{args:?}: ironvme and nvme-cli differ"
        );
    }
    // get-feature -f N, with and without -H, for every feature QEMU answers: the value
    // line, then the decoded fields or the data buffer's hex dump. (nvme-cli 2.3's
    // get-feature has no JSON.) The timestamp moves between the two reads.
    for fid in ["1", "2", "4", "6", "7", "8", "9", "0xa", "0xb", "0xe", "0x16", "0x19"] {
        for extra in [&["-H"][..], &["--human-readable"], &[]] {
            let args: Vec<&str> = ["get-feature", ctrl.as_str(), "-f", fid]
                .into_iter()
                .chain(extra.iter().copied())
                .collect();
            let text = |cmd: &str| {
                let out = String::from_utf8(common::run_bytes(cmd, &args)).unwrap();
                common::mask_text(&out, &["The timestamp is", "0000"])
            };
            eprintln!("{args:?}: text");
            common::assert_same_text(&text(common::IRONVME), &text("nvme"));
        }
    }
    // Error Recovery is per namespace in QEMU.
    let args = ["get-feature", ctrl.as_str(), "-f", "5", "-n", "1", "-H"];
    common::assert_same_text(
        &String::from_utf8(common::run_bytes(common::IRONVME, &args)).unwrap(),
        &String::from_utf8(common::run_bytes("nvme", &args)).unwrap(),
    );

    // get-feature without a feature ID lists every feature the controller answers, each
    // with the value nvme-cli reads for it alone. (nvme-cli 2.3 itself lists nothing: it
    // stops at FID 0.)
    let ours = ok_json(&["get-feature", &ctrl]);
    let ours: Vec<(u64, u64)> = ours["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["feature_id"].as_u64().unwrap(), f["dw0"].as_u64().unwrap()))
        .collect();
    let fids: Vec<u64> = ours.iter().map(|(fid, _)| *fid).collect();
    for fid in [1, 2, 4, 6, 7, 11, 14] {
        assert!(fids.contains(&fid), "FID {fid} missing from {fids:?}");
    }
    for (fid, dw0) in ours {
        let theirs = String::from_utf8(common::run_bytes(
            "nvme",
            &["get-feature", &ctrl, "-f", &fid.to_string()],
        ))
        .unwrap();
        let value = theirs
            .split_once("value:")
            .and_then(|(_, v)| v.split_whitespace().next())
            .unwrap_or_else(|| panic!("FID {fid}: no value in {theirs}"));
        let value = u64::from_str_radix(value.trim_start_matches("0x"), 16).unwrap();
        assert_eq!(dw0, value, "FID {fid}: ironvme (left) vs nvme-cli (right)");
    }
}

/// An ext4 file system made and mounted on a namespace for as long as the guard lives;
/// unmounted when it drops (also when the test fails).
struct Mounted {
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new(disk: &str) -> Mounted {
        common::run("/usr/sbin/mkfs.ext4", &["-q", "-F", disk]);
        let dir = tempfile::tempdir_in("/run").unwrap();
        common::run("/usr/bin/mount", &["-t", "ext4", disk, dir.path().to_str().unwrap()]);
        Mounted { dir }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("/usr/bin/umount").arg(self.dir.path()).status();
    }
}

/// Every command that writes refuses a namespace whose block device holds a mounted file
/// system, whichever node names it — the block device, its generic node `/dev/ngXnY`, or
/// the controller `/dev/nvmeX` — and names the mount; the file system stays clean. (The
/// issue: `perf /dev/ngXnY --rw randwrite --allow-write` wrote 23k IOPS into a mounted
/// ext4, and fsck then failed.)
#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn writes_to_a_mounted_namespace_are_refused_through_every_node() {
    let ctrl = common::kernel_ctrl(&env("IRONVME_KERNEL_BDF")).display().to_string();
    let (block, generic) = (
        format!("{ctrl}n2"),
        format!("{}n2", ctrl.replace("/dev/nvme", "/dev/ng")),
    );
    let mount = Mounted::new(&block);
    let file = mount.dir.path().join("precious");
    let data = common::pattern(11, 1 << 20);
    std::fs::write(&file, &data).unwrap();
    common::run("/usr/bin/sync", &[]);
    let mountpoint = mount.dir.path().display().to_string();
    let name = block.trim_start_matches("/dev/");
    let lbaf = ok_json(&["identify-ns", &ctrl, "--nsid", "1"])["flbas"]
        .as_u64()
        .unwrap()
        & 0xf;
    let lbaf = lbaf.to_string();
    // A udev-style link to namespace 1 (not mounted), as /dev/disk/by-id/nvme-... is:
    // formatting through it claims every namespace of the controller, as the node does.
    let links = tempfile::tempdir_in("/run").unwrap();
    let by_id = links.path().join("nvme-QEMU_NVMe_Ctrl_link");
    std::os::unix::fs::symlink(format!("{ctrl}n1"), &by_id).unwrap();
    let by_id = by_id.display().to_string();
    let attempts: Vec<Vec<&str>> = vec![
        vec!["perf", &generic, "--rw", "randwrite", "--allow-write", "--time", "1s"],
        vec![
            "perf",
            &ctrl,
            "--nsid",
            "2",
            "--rw",
            "randwrite",
            "--allow-write",
            "--time",
            "1s",
        ],
        vec!["perf", &block, "--rw", "write", "--allow-write", "--time", "1s"],
        vec!["verify", &generic, "--allow-write", "--size", "1m"],
        vec!["verify", &ctrl, "--nsid", "2", "--allow-write", "--size", "1m"],
        vec!["vde", "format", &generic, "--force"],
        // Format NVM of namespace 1 through the controller: namespace 2 is mounted, and
        // a controller node claims every namespace.
        vec!["format", &ctrl, "--nsid", "1", "--lbaf", &lbaf, "--force"],
        vec!["format", &by_id, "--nsid", "1", "--lbaf", &lbaf, "--force"],
        // The raw write commands, through each node.
        vec!["write", &generic, "-s", "0", "-c", "0"],
        vec!["write", &block, "-s", "0", "-c", "0", "--backend", "ioctl"],
        vec!["write-zeroes", &ctrl, "--namespace-id", "2", "-s", "0", "-c", "7"],
        vec!["dsm", &generic, "-s", "0", "-b", "8", "-d"],
    ];
    for args in &attempts {
        let o = ironvme(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "ironvme {args:?} was not refused: {err}");
        assert!(
            err.starts_with("ironvme: refusing to run ")
                && err.contains(" is in use")
                && err.contains(&format!("{name} is mounted on {mountpoint} (ext4)")),
            "ironvme {args:?}: {err}"
        );
        if args[1] != block {
            assert!(
                err.contains(&format!("(its block device {block})")),
                "ironvme {args:?}: {err}"
            );
        }
    }
    // Reading is not writing: a read workload through the generic node runs.
    let o = ironvme(&["perf", &generic, "--rw", "randread", "--time", "1s"]);
    assert!(
        o.status.success(),
        "perf randread: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(std::fs::read(&file).unwrap() == data, "the file system's data changed");
    drop(mount);
    common::run("/usr/sbin/fsck.ext4", &["-n", "-f", &block]);
}

/// Runs ironvme with `input` on stdin, expects success, returns stdout.
fn ok_with_input(args: &[&str], input: &[u8]) -> Vec<u8> {
    common::succeeded(common::ironvme_with_input(args, input), &format!("ironvme {args:?}"))
}

/// `count` blocks of `bs` bytes at `lba` of `disk`, as the kernel reads them (O_DIRECT,
/// past the page cache).
fn kernel_read(disk: &str, bs: usize, lba: u64, count: usize) -> Vec<u8> {
    common::run_bytes(
        "/usr/bin/dd",
        &[
            &format!("if={disk}"),
            &format!("bs={bs}"),
            &format!("skip={lba}"),
            &format!("count={count}"),
            "iflag=direct",
            "status=none",
        ],
    )
}

/// Writes `data` (whole blocks) at `lba` of `disk` through the kernel (O_DIRECT).
fn kernel_write(disk: &str, bs: usize, lba: u64, data: &[u8]) {
    use std::io::Write;
    let mut dd = Command::new("/usr/bin/dd")
        .args([
            &format!("of={disk}"),
            &format!("bs={bs}"),
            &format!("seek={lba}"),
            "oflag=direct",
            "iflag=fullblock",
            "conv=notrunc",
            "status=none",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    dd.stdin.take().unwrap().write_all(data).unwrap();
    assert!(dd.wait().unwrap().success(), "dd to {disk}");
}

/// The namespace block device `/dev/nvmeXn1` of the kernel-owned controller at `bdf`,
/// waiting for the kernel to create it (it scans namespaces after the probe).
fn kernel_namespace(bdf: &str) -> String {
    for _ in 0..100 {
        if let Ok(entries) = std::fs::read_dir(format!("/sys/bus/pci/devices/{bdf}/nvme")) {
            let ctrl = entries.filter_map(Result::ok).find_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("nvme").then_some(n)
            });
            if let Some(ctrl) = ctrl
                && std::path::Path::new(&format!("/dev/{ctrl}n1")).exists()
            {
                return format!("/dev/{ctrl}n1");
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("{bdf}: no namespace node appeared");
}

/// `v` as the `&str`s a command line takes.
fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs read, compare, write, write-zeroes, dsm and flush on one node and backend,
/// checking each against what the kernel wrote or reads (`bs`-byte blocks, LBAs from
/// `base`).
fn raw_io_against_the_kernel(node: &str, backend: &str, kernel_disk: &str, bs: usize, base: u64) {
    let what = format!("{node} on {backend}");
    let theirs = common::pattern(base, 4 * bs);
    kernel_write(kernel_disk, bs, base, &theirs);
    let lba = base.to_string();
    let args = |cmd: &'static str, lba: &str, count: &'static str| -> Vec<String> {
        [cmd, node, "--backend", backend, "-s", lba, "-c", count]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    assert!(
        ok_with_input(&strs(&args("read", &lba, "3")), &[]) == theirs,
        "{what}: read differs from what the kernel wrote"
    );
    ok_with_input(&strs(&args("compare", &lba, "3")), &theirs);
    let mut other = theirs.clone();
    other[3 * bs + 1] ^= 1;
    let o = common::ironvme_with_input(&strs(&args("compare", &lba, "3")), &other);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{what}: compare of different data: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let ours = common::pattern(base + 1, 4 * bs);
    let mine = (base + 8).to_string();
    ok_with_input(&strs(&args("write", &mine, "3")), &ours);
    assert!(
        kernel_read(kernel_disk, bs, base + 8, 4) == ours,
        "{what}: the kernel reads other data than ironvme wrote"
    );
    ok_with_input(&strs(&args("write-zeroes", &mine, "1")), &[]);
    ok_with_input(
        &[
            "dsm",
            node,
            "--backend",
            backend,
            "-s",
            &(base + 10).to_string(),
            "-b",
            "2",
            "-d",
        ],
        &[],
    );
    assert!(
        kernel_read(kernel_disk, bs, base + 8, 4) == vec![0; 4 * bs],
        "{what}: zeroed and deallocated blocks do not read as zeros"
    );
    ok_with_input(&["flush", node, "--backend", backend], &[]);
}

/// The raw I/O commands move the bytes the kernel sees, on every backend: what the
/// kernel writes (dd, O_DIRECT) they read and compare, what they write the kernel reads,
/// and zeroed or deallocated blocks read as zeros; nvme-cli's `nvme read` with the same
/// command line reads the same bytes. On a controller bound to vfio-pci, the kernel
/// checks the data once the controller is back on nvme.
#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn raw_io_round_trips_with_the_kernel_on_every_backend() {
    let ctrl = common::kernel_ctrl(&env("IRONVME_KERNEL_BDF")).display().to_string();
    let block = format!("{ctrl}n1");
    let generic = format!("{}n1", ctrl.replace("/dev/nvme", "/dev/ng"));
    let bs = ok_with_input(&["read", &block, "-c", "0"], &[]).len();
    for (i, (node, backend)) in [
        (&ctrl, "ioctl"),
        (&block, "ioctl"),
        (&generic, "uring-cmd"),
        (&block, "uring"),
        (&block, "psync"),
    ]
    .into_iter()
    .enumerate()
    {
        raw_io_against_the_kernel(node, backend, &block, bs, 4096 + 64 * i as u64);
    }
    // nvme-cli's read, with the same command line, gives the same bytes.
    let read = [
        "read",
        block.as_str(),
        "-s",
        "4096",
        "-c",
        "3",
        "-z",
        &(4 * bs).to_string(),
    ];
    let nvme_cli = common::run_bytes("nvme", &read);
    assert!(
        nvme_cli == common::pattern(4096, 4 * bs),
        "nvme read: not what the kernel wrote"
    );
    assert!(
        ok_with_input(&read, &[]) == nvme_cli,
        "ironvme read differs from nvme read"
    );

    // Through ironvme's own driver; the kernel checks once it has the controller back.
    let bdf = env("IRONVME_VFIO_4K_BDF");
    let (written, zeros) = {
        let dev = OnVfio::bind("IRONVME_VFIO_4K_BDF");
        let data = common::pattern(99, 2 * 4096);
        ok_with_input(&["write", &dev.bdf, "-s", "300", "-c", "1"], &data);
        assert!(ok_with_input(&["read", &dev.bdf, "-s", "300", "-c", "1"], &[]) == data);
        ok_with_input(&["compare", &dev.bdf, "-s", "300", "-c", "1"], &data);
        let o = common::ironvme_with_input(&["compare", &dev.bdf, "-s", "300", "-c", "1"], &[0; 2 * 4096]);
        assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
        ok_with_input(&["write", &dev.bdf, "-s", "310", "-c", "1"], &data);
        ok_with_input(&["write-zeroes", &dev.bdf, "-s", "310", "-c", "0"], &[]);
        ok_with_input(&["dsm", &dev.bdf, "-s", "311", "-b", "1", "-d"], &[]);
        ok_with_input(&["flush", &dev.bdf], &[]);
        (data, vec![0u8; 2 * 4096])
    };
    let disk = kernel_namespace(&bdf);
    assert!(
        kernel_read(&disk, 4096, 300, 2) == written,
        "{disk}: not what ironvme wrote over VFIO"
    );
    assert!(
        kernel_read(&disk, 4096, 310, 2) == zeros,
        "{disk}: zeroed blocks are not zeros"
    );
}

/// `ironvme list` against live `nvme list`: nvme-cli's table first, identical byte for
/// byte, then ironvme's controller table; `-o json`'s `Devices` equal to `nvme list -o
/// json`'s. Once with every controller on the kernel (the 7 namespaces of
/// `testdata/nvme-cli-2.3/list.txt` and the subsystem controller's one attached
/// namespace, behind Linux's native multipath), once with one on vfio-pci: it has no kernel nodes,
/// no row in either tool's table, and is listed from sysfs without being opened.
#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn list_prints_what_nvme_list_prints_and_every_controller() {
    let controllers = topology();
    for on_vfio in [false, true] {
        let vfio = on_vfio.then(|| OnVfio::bind("IRONVME_VFIO_4K_BDF"));
        let theirs = common::run("nvme", &["list"]);
        let ours = ok(&["list"]);
        let rows = theirs.lines().count();
        let head: String = ours.split_inclusive('\n').take(rows).collect();
        common::assert_same_text(&head, &theirs);
        if !on_vfio {
            // Every namespace of the default topology but nsattach's detached nsid 2:
            // kernel 2, vfio4k 1, vfio512 1, fault 1, meta 2, nsattach 1, zoned 1,
            // hotplug 1.
            assert_eq!(rows, 2 + 10, "{theirs}");
        }
        assert_eq!(ok(&["list", "-o", "normal"]), ours);

        // Then an empty line and ironvme's view of every controller.
        let rest: Vec<&str> = ours[theirs.len()..].lines().collect();
        assert_eq!(rest[0], "", "{ours}");
        assert!(rest[1].starts_with("BDF "), "{ours}");
        assert_eq!(rest.len(), 2 + controllers.len(), "{ours}");
        for (bdf, serial) in &controllers {
            let line = rest
                .iter()
                .find(|l| l.starts_with(bdf.as_str()))
                .unwrap_or_else(|| panic!("{bdf} missing from\n{ours}"));
            let cols: Vec<&str> = line.split_whitespace().collect();
            if vfio.as_ref().is_some_and(|v| v.bdf == *bdf) {
                assert_eq!(&cols[2..], ["vfio-pci", cols[3], "-", "-", "-", "-", "-"], "{line}");
                assert!(!theirs.contains(serial.as_str()), "{theirs}");
            } else {
                assert_eq!((cols[2], cols[5]), ("nvme", serial.as_str()), "{line}");
                assert!(
                    theirs.contains(&format!(" {serial:<20} ")),
                    "{serial} has rows in\n{theirs}"
                );
            }
        }

        let theirs: Value = serde_json::from_str(&common::run("nvme", &["list", "-o", "json"])).unwrap();
        let ours = ok_json(&["list"]);
        common::assert_same_json(&ours["Devices"], &theirs["Devices"]);
        assert_eq!(
            ours["controllers"].as_array().unwrap().len(),
            controllers.len(),
            "{ours}"
        );
        let text = ok(&["list", "-o", "json"]);
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), ours);
        if let Some(v) = &vfio {
            let c = ours["controllers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["bdf"] == v.bdf.as_str())
                .unwrap();
            assert_eq!(
                (&c["driver"], &c["serial"]),
                (&Value::from("vfio-pci"), &Value::Null),
                "{c}"
            );
        }
    }
}
