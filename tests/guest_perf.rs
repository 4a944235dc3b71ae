//! Guest tests of `ironvme perf` and `ironvme verify` on every backend: ironvme's VFIO
//! driver (`$IRONVME_VFIO_4K_BDF`), and the kernel's controller (`$IRONVME_KERNEL_BDF`,
//! namespace 2, 4096-byte blocks) through io_uring (`/dev/nvmeXnY`), io_uring passthrough
//! (`/dev/ngXnY`), the ioctl passthrough (`/dev/nvmeX --nsid 2`) and psync. Plus the fault
//! controller, whose failing LBA must show up in both reports with its decoded status, and
//! `--rw trim|randtrim` (Dataset Management deallocate, a discard on the block device) on
//! every backend, read back from fio's JSON.
//!
//! Every test needs the guest started by `qemu/run` and is ignored on the host. By hand:
//!
//! ```text
//! cargo test --all-features --no-run --test guest_perf
//! qemu/run -- target/debug/deps/guest_perf-<hash> --ignored --test-threads=1 --nocapture
//! ```
//!
//! The IOPS each backend reached are printed (stderr) for the record; they are not
//! asserted (DESIGN.md: speed is measured by the perf tool, never by timed tests). Runs
//! are short — 2 s of perf and an 8 MiB verify per backend — and write only at 768 MiB
//! and beyond, away from the ranges other guest tests use.

mod common;

use common::{OnVfio, env, ironvme, kernel_ctrl};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Output;

/// Where the tests write: far from LBA 0 and from the other tests' ranges.
const WRITE_OFFSET: &str = "768m";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json_of(o: &Output, what: &str) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: not JSON ({e}): {}\nstderr: {}",
            text(&o.stdout),
            text(&o.stderr)
        )
    })
}

/// How the ironvme binary under test was built (its IOPS depend on it).
const BUILD: &str = if cfg!(debug_assertions) {
    "debug build"
} else {
    "release build"
};

/// `ironvme perf DEV --rw randread --bs 4k --qd 32 --json ARGS...` (ARGS include
/// `--time`): succeeds, reads something, no errors. Prints the IOPS.
fn perf_randread(label: &str, dev: &str, args: &[&str]) -> Value {
    let mut all = vec!["perf", dev, "--rw", "randread", "--bs", "4k", "--qd", "32", "--json"];
    all.extend_from_slice(args);
    let o = ironvme(&all);
    assert!(o.status.success(), "{label}: {}", text(&o.stderr));
    let v = json_of(&o, label);
    assert!(v["iops"].as_f64().unwrap() > 0.0, "{label}: {v}");
    assert_eq!(v["errors"], 0, "{label}: {v}");
    assert!(v["lat_us"]["p99"].as_f64().unwrap() > 0.0, "{label}: {v}");
    eprintln!(
        "{label:>10}: randread 4KiB qd={} threads={} backend={}: {:.0} IOPS, {:.1} MiB/s, lat mean {:.0} µs p99 {:.0} µs, \
         cpu {:.0}%, clock {} ({BUILD})",
        v["qd_effective"],
        v["threads"],
        v["backend"].as_str().unwrap(),
        v["iops"].as_f64().unwrap(),
        v["mib_per_s"].as_f64().unwrap(),
        v["lat_us"]["mean"].as_f64().unwrap(),
        v["lat_us"]["p99"].as_f64().unwrap(),
        v["cpu"]["percent"].as_f64().unwrap(),
        v["clock"].as_str().unwrap(),
    );
    v
}

/// `ironvme verify DEV --size 8m --offset 768m --allow-write --json ARGS...`: passes.
fn verify_passes(label: &str, dev: &str, args: &[&str]) -> Value {
    let mut all = vec![
        "verify",
        dev,
        "--size",
        "8m",
        "--offset",
        WRITE_OFFSET,
        "--allow-write",
        "--json",
    ];
    all.extend_from_slice(args);
    let o = ironvme(&all);
    let v = json_of(&o, label);
    assert!(o.status.success(), "{label}: {}\n{v}", text(&o.stderr));
    assert_eq!(v["ok"], true, "{label}: {v}");
    assert_eq!(v["blocks"], 2048, "{label}: 8 MiB of 4 KiB blocks: {v}");
    let p = &v["pass_results"][0];
    eprintln!(
        "{label:>10}: verify 8 MiB backend={}: write+flush {:.2} s, read+check {:.2} s, ok",
        v["backend"].as_str().unwrap(),
        p["write_s"].as_f64().unwrap(),
        p["read_s"].as_f64().unwrap()
    );
    v
}

/// Writing to a device without `--allow-write` is refused, and nothing runs.
fn writes_are_refused_without_consent(dev: &str, args: &[&str]) {
    for cmd in [
        &["perf", dev, "--rw", "randwrite", "--time", "1"][..],
        &["verify", dev, "--size", "8m"],
    ] {
        let all = [cmd, args].concat();
        let o = ironvme(&all);
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{all:?}: {err}");
        assert!(
            err.contains("refusing to write") && err.contains("--allow-write"),
            "{all:?}: {err}"
        );
        assert!(o.stdout.is_empty(), "{all:?}");
    }
}

/// The kernel controller's namespace `nsid`: (`/dev/nvmeX`, `/dev/nvmeXnY`, `/dev/ngXnY`).
fn kernel_namespace(bdf_var: &str, nsid: u32) -> (String, String, String) {
    let ctrl = kernel_ctrl(&env(bdf_var));
    let name = ctrl.file_name().unwrap().to_string_lossy().into_owned();
    let sys = PathBuf::from("/sys/class/nvme").join(&name);
    let ns = std::fs::read_dir(&sys)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|e| e.starts_with(&format!("{name}n")))
        .find(|e| std::fs::read_to_string(sys.join(e).join("nsid")).is_ok_and(|s| s.trim() == nsid.to_string()))
        .unwrap_or_else(|| panic!("{name} has no namespace {nsid}"));
    let generic = format!("/dev/ng{}", &ns["nvme".len()..]);
    (ctrl.display().to_string(), format!("/dev/{ns}"), generic)
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn perf_and_verify_on_the_vfio_driver() {
    let dev = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let v = perf_randread("vfio", &dev.bdf, &["--time", "2"]);
    assert_eq!(
        (v["backend"].as_str(), v["device"].as_str()),
        (Some("vfio"), Some(dev.bdf.as_str()))
    );
    assert_eq!(v["qd_effective"], 32);
    // Spinning, it counts its polls: some idle (the controller is slower than one
    // poll), some busy (every I/O was submitted and reaped in one).
    let polls = &v["polls"];
    let idle = polls["idle_percent"].as_f64().unwrap();
    assert!(idle > 0.0 && idle < 100.0, "{polls}");
    assert!(
        polls["empty"].as_u64().unwrap() < polls["polls"].as_u64().unwrap(),
        "{polls}"
    );
    // Two threads, two queue pairs; and a write workload with consent.
    let v = perf_randread("vfio x2", &dev.bdf, &["--threads", "2", "--time", "1"]);
    assert_eq!(v["per_thread"].as_array().unwrap().len(), 2);
    for t in v["per_thread"].as_array().unwrap() {
        assert!(t["polls"]["polls"].as_u64().unwrap() > 0, "{t}");
    }
    assert_eq!(
        v["polls"]["polls"].as_u64(),
        Some(
            v["per_thread"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["polls"]["polls"].as_u64().unwrap())
                .sum()
        ),
        "the run's polls are its threads'"
    );
    // Sleeping on the interrupt, it has no polls to count.
    let v = perf_randread("vfio irq", &dev.bdf, &["--time", "1", "--completions", "interrupt"]);
    assert_eq!(v["completions"], "interrupt");
    assert!(v["polls"].is_null(), "{v}");
    let o = ironvme(&[
        "perf",
        &dev.bdf,
        "--rw",
        "randrw",
        "--time",
        "1",
        "--offset",
        WRITE_OFFSET,
        "--size",
        "64m",
        "--allow-write",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v = json_of(&o, "vfio randrw");
    assert!(
        v["read"]["ios"].as_u64().unwrap() > 0 && v["write"]["ios"].as_u64().unwrap() > 0,
        "{v}"
    );
    writes_are_refused_without_consent(&dev.bdf, &[]);
    verify_passes("vfio", &dev.bdf, &[]);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn perf_and_verify_on_io_uring() {
    let (_, block, _) = kernel_namespace("IRONVME_KERNEL_BDF", 2);
    let v = perf_randread("uring", &block, &["--time", "2"]);
    assert_eq!(v["backend"], "uring");
    writes_are_refused_without_consent(&block, &[]);
    verify_passes("uring", &block, &[]);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn perf_and_verify_on_io_uring_passthrough() {
    let (_, _, generic) = kernel_namespace("IRONVME_KERNEL_BDF", 2);
    let v = perf_randread("uring-cmd", &generic, &["--time", "2"]);
    assert_eq!(v["backend"], "uring-cmd");
    verify_passes("uring-cmd", &generic, &[]);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn perf_and_verify_on_the_ioctl_passthrough() {
    let (ctrl, _, _) = kernel_namespace("IRONVME_KERNEL_BDF", 2);
    let v = perf_randread("ioctl", &ctrl, &["--time", "2", "--nsid", "2"]);
    assert_eq!((v["backend"].as_str(), v["nsid"].as_u64()), (Some("ioctl"), Some(2)));
    assert_eq!(v["qd_effective"], 1, "synchronous: runs at depth 1");
    verify_passes("ioctl", &ctrl, &["--nsid", "2"]);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn perf_and_verify_on_psync() {
    let (_, block, _) = kernel_namespace("IRONVME_KERNEL_BDF", 2);
    let v = perf_randread("psync", &block, &["--time", "2", "--backend", "psync"]);
    assert_eq!(v["backend"], "psync");
    verify_passes("psync", &block, &["--backend", "psync"]);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn failed_reads_are_reported_with_their_status() {
    let bad: u64 = env("IRONVME_FAULT_BAD_LBA").parse().unwrap();
    let (_, _, generic) = kernel_namespace("IRONVME_FAULT_BDF", 1);
    // Sequential 4 KiB reads over the first 8 MiB pass the bad block every 2048 I/Os.
    let o = ironvme(&[
        "perf", &generic, "--rw", "read", "--qd", "4", "--size", "8m", "--time", "1", "--json",
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("I/O errors"), "{err}");
    let v = json_of(&o, "fault perf");
    assert!(
        v["errors"].as_u64().unwrap() >= 1 && v["iops"].as_f64().unwrap() > 0.0,
        "{v}"
    );
    let sample = &v["error_samples"][0];
    assert_eq!(
        (sample["op"].as_str(), sample["lba"].as_u64()),
        (Some("read"), Some(bad)),
        "{v}"
    );
    assert!(
        sample["status"].as_str().unwrap().contains("Unrecovered Read Error"),
        "{v}"
    );
    eprintln!("fault perf: {} errors, first: {}", v["errors"], sample);

    // verify writes the bad block fine, then cannot read it back: an I/O error, not a
    // mismatch, and the run fails.
    let o = ironvme(&["verify", &generic, "--size", "8m", "--allow-write", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let v = json_of(&o, "fault verify");
    assert_eq!(
        (v["ok"].as_bool(), v["mismatch_count"].as_u64()),
        (Some(false), Some(0)),
        "{v}"
    );
    let e = &v["errors"][0];
    assert_eq!(e["op"], "read", "{v}");
    let (lba, blocks) = (e["lba"].as_u64().unwrap(), e["blocks"].as_u64().unwrap());
    assert!((lba..lba + blocks).contains(&bad), "{v}");
    assert!(e["status"].as_str().unwrap().contains("Unrecovered Read Error"), "{v}");
}

/// `ironvme perf DEV --rw trim` and `randtrim` over 8 MiB at 768 MiB, size-based, with
/// fio's JSON: every trim (NVMe Dataset Management deallocate, a discard on the block
/// device) succeeds and is counted in `jobs[0].trim`.
fn trims(label: &str, dev: &str, args: &[&str]) {
    for rw in ["trim", "randtrim"] {
        let mut all = vec![
            "perf",
            dev,
            "--rw",
            rw,
            "--bs",
            "64k",
            "--offset",
            WRITE_OFFSET,
            "--size",
            "8m",
            "--qd",
            "8",
            "--allow-write",
            "--output-format",
            "json",
        ];
        all.extend_from_slice(args);
        let o = ironvme(&all);
        assert!(o.status.success(), "{label} {rw}: {}", text(&o.stderr));
        let v = json_of(&o, label);
        let job = &v["jobs"][0];
        assert_eq!(job["error"], 0, "{label} {rw}: {v}");
        assert_eq!(
            (job["trim"]["total_ios"].as_u64(), job["trim"]["io_bytes"].as_u64()),
            (Some(128), Some(8 << 20)),
            "{label} {rw}: 8 MiB in 64 KiB trims: {v}"
        );
        assert_eq!(job["read"]["total_ios"], 0, "{label} {rw}");
        eprintln!(
            "{label:>10}: {rw} 64KiB: {:.0} IOPS, clat mean {:.0} ns",
            job["trim"]["iops"].as_f64().unwrap(),
            job["trim"]["clat_ns"]["mean"].as_f64().unwrap()
        );
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn trims_on_the_vfio_driver() {
    let dev = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    trims("vfio", &dev.bdf, &[]);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn trims_on_the_kernel_backends() {
    let (ctrl, block, generic) = kernel_namespace("IRONVME_KERNEL_BDF", 2);
    trims("uring", &block, &[]);
    trims("psync", &block, &["--backend", "psync"]);
    trims("uring-cmd", &generic, &[]);
    trims("ioctl", &ctrl, &["--nsid", "2"]);
}
