//! Host tests of `ironvme perf` and `ironvme verify` on a scratch file, through the psync
//! and io_uring backends: the JSON they print, the refusals, and verify finding each kind
//! of damage done to the file between a writing run and a `--read-only` check.
//!
//! The scratch files live under Cargo's target tmpdir (a real file system: `O_DIRECT`
//! works there, unlike on an older kernel's tmpfs). The same subcommands run on the VFIO
//! driver and the kernel's NVMe devices in `tests/guest_perf.rs`.

mod common;

use common::ironvme;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Output;

/// The backends a regular file works with.
const BACKENDS: [&str; 2] = ["psync", "uring"];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs ironvme, expects success, returns stdout.
fn ok(args: &[&str]) -> String {
    let o = ironvme(args);
    assert!(o.status.success(), "{args:?}: {}\n{}", text(&o.stderr), text(&o.stdout));
    text(&o.stdout)
}

/// Runs ironvme with --json, expects success, returns the object.
fn ok_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&ok(&all)).unwrap_or_else(|e| panic!("{args:?}: not JSON: {e}"))
}

/// Asserts exit status `code` with one `ironvme: ` line on stderr; returns the line.
fn failure(o: &Output, code: i32) -> String {
    let err = text(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(code),
        "stderr: {err}\nstdout: {}",
        text(&o.stdout)
    );
    if code == 1 || code == 3 {
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("ironvme: "), "{err}");
    }
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn help_describes_both_subcommands() {
    let top = ok(&["--help"]);
    assert!(top.contains("perf") && top.contains("verify"), "{top}");
    let perf = ok(&["perf", "--help"]);
    for want in [
        "--rw",
        "randrw",
        "--rwmixread",
        "--qd",
        "--threads",
        "--ramp",
        "--allow-write",
        "uring-cmd",
    ] {
        assert!(perf.contains(want), "perf --help lacks {want}:\n{perf}");
    }
    let verify = ok(&["verify", "--help"]);
    for want in ["--read-only", "--seed", "--passes", "misdirected", "--allow-write"] {
        assert!(verify.contains(want), "verify --help lacks {want}:\n{verify}");
    }
}

#[test]
fn perf_prints_one_json_object_on_each_backend() {
    let (_dir, file) = common::scratch_file(64 << 20);
    for backend in BACKENDS {
        for (rw, threads) in [("randread", "1"), ("randrw", "2"), ("write", "1")] {
            let v = ok_json(&[
                "perf",
                s(&file),
                "--rw",
                rw,
                "--bs",
                "4k",
                "--qd",
                "8",
                "--threads",
                threads,
                "--time",
                "1",
                "--backend",
                backend,
            ]);
            let what = format!("{backend} {rw}: {v}");
            for key in [
                "iops",
                "mib_per_s",
                "lat_us",
                "rw",
                "bs",
                "qd",
                "threads",
                "backend",
                "device",
                "runtime_s",
                "ios",
                "errors",
                "cpu",
                "per_thread",
            ] {
                assert!(v.get(key).is_some(), "{key} missing: {what}");
            }
            for key in ["min", "mean", "max", "p50", "p90", "p99", "p99_9", "p99_99"] {
                assert!(
                    v["lat_us"][key].as_f64().is_some_and(|x| x >= 0.0),
                    "lat_us.{key}: {what}"
                );
            }
            for key in ["user_s", "sys_s", "percent"] {
                assert!(v["cpu"][key].is_number(), "cpu.{key}: {what}");
            }
            assert_eq!(v["rw"], rw, "{what}");
            assert_eq!(v["backend"], backend, "{what}");
            assert_eq!(v["device"], s(&file), "{what}");
            assert_eq!((v["bs"].as_u64(), v["qd"].as_u64()), (Some(4096), Some(8)), "{what}");
            assert!(v["iops"].as_f64().unwrap() > 0.0, "{what}");
            assert_eq!(v["errors"], 0, "{what}");
            // The run lasts --time: it never stops early; on a loaded machine the last
            // completions and the threads' joining may take it a little past.
            assert!((0.99..1.5).contains(&v["runtime_s"].as_f64().unwrap()), "{what}");
            let per_thread = v["per_thread"].as_array().unwrap();
            assert_eq!(per_thread.len().to_string(), threads, "{what}");
            assert!(per_thread.iter().all(|t| t["iops"].as_f64().unwrap() > 0.0), "{what}");
            if rw == "randrw" {
                assert!(
                    v["read"]["ios"].as_u64().unwrap() > 0 && v["write"]["ios"].as_u64().unwrap() > 0,
                    "{what}"
                );
            }
            // Synchronous backends run at depth 1 and say so.
            let effective = if backend == "psync" { 1 } else { 8 };
            assert_eq!(v["qd_effective"], effective, "{what}");
        }
    }
}

#[test]
fn perf_prints_a_fio_like_report() {
    let (_dir, file) = common::scratch_file(16 << 20);
    let out = ok(&[
        "perf",
        s(&file),
        "--rw",
        "randread",
        "--qd",
        "4",
        "--threads",
        "2",
        "--time",
        "1",
        "--ramp",
        "200ms",
    ]);
    let first = out.lines().next().unwrap();
    assert_eq!(
        first,
        format!(
            "randread: bs=4KiB qd=4 threads=2 backend=uring dev={} nsid=1",
            file.display()
        ),
        "{out}"
    );
    for want in [
        "  read: IOPS=",
        "    lat (usec): min=",
        "    lat percentiles (usec): 50.00th=",
        "99.99th=",
        "  thread 0: IOPS=",
        "  thread 1: IOPS=",
        "  cpu: usr=",
        "% of one CPU)",
        "  errors: 0",
        "ramp=0.2s",
    ] {
        assert!(out.contains(want), "{want:?} missing from\n{out}");
    }
}

#[test]
fn perf_refuses_what_the_device_cannot_do_before_running() {
    let (_dir, file) = common::scratch_file(16 << 20);
    let f = s(&file);
    for (args, wanted) in [
        (
            &["--bs", "1000"][..],
            "is not a multiple of the namespace's logical block size",
        ),
        (&["--bs", "4m"], "exceeds the largest transfer of one command here"),
        (&["--offset", "16m"], "at or beyond the end of the namespace"),
        (
            &["--offset", "8m", "--size", "9m"],
            "goes beyond the end of the namespace",
        ),
        (&["--nsid", "2"], "no active namespace 2"),
    ] {
        let mut all = vec!["perf", f, "--rw", "randread", "--time", "1"];
        all.extend_from_slice(args);
        let err = failure(&ironvme(&all), 1);
        assert!(err.contains(wanted), "{args:?}: {err}");
    }
    for bad in [
        &["--rw", "randread", "--bs", "4q"][..],
        &["--rw", "trimwrite"],
        &["--rw", "read", "--time", "soon"],
    ] {
        let mut all = vec!["perf", f];
        all.extend_from_slice(bad);
        failure(&ironvme(&all), 2);
    }
}

#[test]
fn perf_runs_the_completion_mode_asked_for_and_refuses_one_the_backend_cannot_do() {
    let (_dir, file) = common::scratch_file(16 << 20);
    let f = s(&file);
    for (backend, mode, ran) in [
        ("uring", None, "spin"),
        ("uring", Some("wait"), "interrupt"),
        ("uring", Some("interrupt"), "interrupt"),
        ("uring", Some("hybrid"), "hybrid"),
        ("uring", Some("spin"), "spin"),
        ("psync", None, "interrupt"),
        ("psync", Some("wait"), "interrupt"),
    ] {
        let mut args = vec!["perf", f, "--rw", "randread", "--time", "1", "--backend", backend];
        if let Some(m) = mode {
            args.extend(["--completions", m]);
        }
        let v = ok_json(&args);
        assert_eq!(v["completions"], ran, "{backend} --completions {mode:?}: {v}");
    }
    let err = failure(
        &ironvme(&[
            "perf",
            f,
            "--rw",
            "randread",
            "--time",
            "1",
            "--backend",
            "psync",
            "--completions",
            "spin",
        ]),
        1,
    );
    assert!(err.contains("nothing to poll"), "{err}");
}

#[test]
fn writing_to_a_device_needs_allow_write() {
    // A PCI address no machine has: the refusal comes before any attempt to open it.
    for args in [
        &["perf", "dead:be:1f.7", "--rw", "randwrite"][..],
        &["verify", "dead:be:1f.7"],
    ] {
        let err = failure(&ironvme(args), 1);
        assert!(
            err.contains("refusing to write") && err.contains("--allow-write"),
            "{err}"
        );
    }
    // Read workloads and read-only checks are not refused (they fail to open instead).
    let err = failure(&ironvme(&["perf", "dead:be:1f.7", "--rw", "randread"]), 1);
    assert!(!err.contains("refusing"), "{err}");
}

/// Reads the whole block `lba` of `file`.
fn read_block(file: &File, lba: u64, bs: u64) -> Vec<u8> {
    let mut b = vec![0u8; bs as usize];
    file.read_exact_at(&mut b, lba * bs).unwrap();
    b
}

fn write_block(file: &File, lba: u64, bs: u64, data: &[u8]) {
    file.write_all_at(data, lba * bs).unwrap();
    file.sync_all().unwrap();
}

#[test]
fn verify_passes_on_a_good_file_and_finds_every_kind_of_damage() {
    for backend in BACKENDS {
        let (_dir, file) = common::scratch_file(4 << 20);
        let f = s(&file);
        let region = ["--size", "1m", "--seed", "77", "--backend", backend];
        let with = |extra: &[&'static str]| [&["verify", f][..], &region, extra].concat();

        // Pass 1, then keep one block of it; then pass 2 over it.
        let v = ok_json(&with(&[]));
        assert_eq!((v["ok"].as_bool(), v["passes"].as_u64()), (Some(true), Some(1)), "{v}");
        assert_eq!(v["mismatches"], serde_json::json!([]));
        assert_eq!(v["errors"], serde_json::json!([]));
        let bs = v["block_size"].as_u64().unwrap();
        assert_eq!(v["blocks"].as_u64().unwrap(), (1 << 20) / bs);
        let disk = OpenOptions::new().read(true).write(true).open(&file).unwrap();
        let pass1_block_40 = read_block(&disk, 40, bs);
        let v = ok_json(&with(&["--pass", "2", "--qd", "4", "--bs", "8k"]));
        assert!(v["ok"].as_bool().unwrap(), "{v}");
        let report = ok(&with(&["--read-only", "--pass", "2"]));
        assert!(report.contains("OK: "), "{report}");

        // Damage four blocks behind verify's back.
        let mut b = read_block(&disk, 5, bs);
        b[100] ^= 0x01;
        write_block(&disk, 5, bs, &b);
        write_block(&disk, 9, bs, &vec![0u8; bs as usize]);
        write_block(&disk, 30, bs, &read_block(&disk, 20, bs));
        write_block(&disk, 40, bs, &pass1_block_40);

        // Mismatches alone: exit 3.
        let o = ironvme(&[with(&["--read-only", "--pass", "2"]), vec!["--json"]].concat());
        let err = failure(&o, 3);
        assert!(err.contains("4 mismatched blocks, 0 I/O errors"), "{backend}: {err}");
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["ok"], false);
        let found: Vec<(u64, String)> = v["mismatches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["lba"].as_u64().unwrap(), m["kind"].as_str().unwrap().to_string()))
            .collect();
        let want = [(5, "corrupt"), (9, "zeros"), (30, "misdirected"), (40, "stale")];
        assert_eq!(found, want.map(|(l, k)| (l, k.to_string())), "{backend}: {v}");
        let m = &v["mismatches"];
        assert_eq!(
            (m[2]["found_lba"].as_u64(), m[3]["found_pass"].as_u64()),
            (Some(20), Some(1)),
            "{m}"
        );
        assert!(
            m.as_array()
                .unwrap()
                .iter()
                .all(|m| m["pass"] == 2 && m["problem"].is_string()),
            "{m}"
        );

        // The same in text: each block with what is wrong with it.
        let o = ironvme(&with(&["--read-only", "--pass", "2"]));
        failure(&o, 3);
        let out = text(&o.stdout);
        for want in [
            "  pass 2: LBA 5: corruption: checksum mismatch (header intact: LBA 5, pass 2, seed 77)",
            "  pass 2: LBA 9: never written or deallocated: all zeros",
            "  pass 2: LBA 30: misdirected write: holds the data written for LBA 20 (pass 2, seed 77)",
            "  pass 2: LBA 40: lost write: holds pass 1's data, not pass 2's",
            "FAILED: 4 mismatched blocks, 0 I/O errors",
        ] {
            assert!(out.contains(want), "{backend}: {want:?} missing from\n{out}");
        }

        // A fresh writing run overwrites the damage; another seed sees every block stale.
        ok(&with(&[]));
        let o = ironvme(&[
            "verify",
            f,
            "--size",
            "1m",
            "--read-only",
            "--seed",
            "78",
            "--backend",
            backend,
            "--json",
        ]);
        failure(&o, 3);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["mismatch_count"].as_u64().unwrap(), (1 << 20) / bs);
        assert!(
            v["mismatches"][0]["problem"]
                .as_str()
                .unwrap()
                .contains("another run's data (seed 77"),
            "{v}"
        );
    }
}

#[test]
fn verify_checks_its_arguments() {
    let (_dir, file) = common::scratch_file(1 << 20);
    let f = s(&file);
    failure(&ironvme(&["verify", f, "--read-only"]), 2); // needs --seed
    failure(
        &ironvme(&["verify", f, "--read-only", "--seed", "1", "--passes", "2"]),
        2,
    );
    let err = failure(&ironvme(&["verify", f, "--size", "2m"]), 1);
    assert!(err.contains("beyond the end of the namespace"), "{err}");
    // The default region is 64 MiB or up to the end of a smaller namespace.
    let v = ok_json(&["verify", f, "--offset", "512k"]);
    assert_eq!(
        (v["offset"].as_u64(), v["size"].as_u64()),
        (Some(512 << 10), Some(512 << 10)),
        "{v}"
    );
    assert!(v["seed"].as_u64().unwrap() > 0);
}

/// Each exit status of verify: 0 intact, 3 a mismatch (one corrupted byte), 2 a usage
/// error, 1 a device error; the mismatch is reported on stdout with a one-line summary on
/// stderr.
#[test]
fn verify_exit_status_tells_a_mismatch_from_a_failure() {
    let (_dir, file) = common::scratch_file(4 << 20);
    let f = s(&file);
    let region = ["--size", "1m", "--seed", "5"];
    // Write the pattern; check it read-only: intact.
    assert_eq!(ironvme(&[&["verify", f][..], &region].concat()).status.code(), Some(0));
    let check = [&["verify", f][..], &region, &["--read-only"]].concat();
    assert_eq!(ironvme(&check).status.code(), Some(0));
    // One byte of LBA 3 changes behind verify's back.
    let disk = OpenOptions::new().read(true).write(true).open(&file).unwrap();
    let mut b = [0u8; 1];
    disk.read_exact_at(&mut b, 3 * 512 + 200).unwrap();
    disk.write_all_at(&[!b[0]], 3 * 512 + 200).unwrap();
    disk.sync_all().unwrap();
    let o = ironvme(&check);
    let err = failure(&o, 3);
    assert_eq!(
        err,
        format!("ironvme: verify on {f}: 1 mismatched blocks, 0 I/O errors\n")
    );
    assert!(
        text(&o.stdout).contains("LBA 3: corruption: checksum mismatch"),
        "{}",
        text(&o.stdout)
    );
    // A usage error, and a device that cannot be opened.
    failure(&ironvme(&["verify", f, "--read-only"]), 2);
    let err = failure(
        &ironvme(&["verify", "/nonexistent/disk.img", "--read-only", "--seed", "5"]),
        1,
    );
    assert!(err.contains("/nonexistent/disk.img"), "{err}");
}

/// verify draws a bar with an ETA, naming the pass and phase, when stderr is a terminal;
/// on a pipe, stderr stays empty and stdout holds only the report.
#[test]
fn verify_progress_is_drawn_on_a_terminal_only() {
    let (_dir, file) = common::scratch_file(16 << 20);
    let args = [
        "verify",
        s(&file),
        "--size",
        "16m",
        "--bs",
        "64k",
        "--qd",
        "2",
        "--passes",
        "2",
    ];
    let o = ironvme(&args);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "", "progress on a pipe");
    assert!(!text(&o.stdout).contains("ETA"), "{}", text(&o.stdout));
    let (code, seen) = common::under_a_terminal(&args);
    assert_eq!(code, Some(0), "{seen}");
    for want in [
        "ETA",
        "/64.00 MiB",
        "pass 1: write",
        "pass 2: read",
        "OK: 32768 blocks intact",
    ] {
        assert!(seen.contains(want), "{want:?} missing under a terminal: {seen:?}");
    }
    // The bar is cleared before the report.
    assert!(seen.contains("\r\u{1b}[2Kverify: dev="), "{seen:?}");
}
