//! Host tests of `ironvme perf`'s fio habits on a scratch file: fio's option names
//! (`--rw rw|trim|randtrim`, `--bssplit`, `--percentile_list`, `--randseed`,
//! `--ramp_time`, `--cpus_allowed`, size-based runs), fio's JSON read by fio's own tools,
//! and Ctrl-C.
//!
//! fio's JSON is checked against fio itself: the same job is run by fio (Debian's `fio`
//! package, which `qemu/run --prepare` installs) and every key fio writes must be in
//! perf's, with the same kind of value; then `fio_jsonplus_clat2csv`, the json+ reader
//! that ships with fio, turns perf's json+ into CSV and the counts it read are checked.
//! These are behaviour tests, not timing tests: no assertion depends on how fast the
//! machine is.

mod common;

use common::{IRONVME, ironvme};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs ironvme, expects success, returns stdout.
fn ok(args: &[&str]) -> String {
    let o = ironvme(args);
    assert!(o.status.success(), "{args:?}: {}\n{}", text(&o.stderr), text(&o.stdout));
    text(&o.stdout)
}

/// Runs ironvme, expects success and one JSON object on stdout.
fn ok_json(args: &[&str]) -> Value {
    let out = ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{out}"))
}

/// A program the test needs; fails with how to get it.
fn tool(name: &str) -> &str {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(found, "{name} is needed (Debian's fio package: apt-get install fio)");
    name
}

/// Every key of `theirs` (fio's output) is in `ours`, recursively, with a value of the
/// same kind; keys listed in `skip` (full paths) may be absent. Maps whose keys are data
/// (`percentile`, `bins`, `job options`) are compared by presence only.
fn same_shape(ours: &Value, theirs: &Value, path: &str, skip: &[&str], problems: &mut Vec<String>) {
    match (ours, theirs) {
        (Value::Object(o), Value::Object(t)) => {
            if ["percentile", "bins", "job options"].iter().any(|k| path.ends_with(k)) {
                return;
            }
            for (k, v) in t {
                let p = format!("{path}/{k}");
                match o.get(k) {
                    Some(mine) => same_shape(mine, v, &p, skip, problems),
                    None if skip.contains(&p.as_str()) => {}
                    None => problems.push(format!("{p} is missing")),
                }
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            if let (Some(a), Some(b)) = (o.first(), t.first()) {
                same_shape(a, b, &format!("{path}[0]"), skip, problems);
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            // fio writes integers as integers and doubles with six decimals.
            if a.is_f64() != b.is_f64() {
                problems.push(format!("{path}: {a} is not the same kind of number as fio's {b}"));
            }
        }
        (a, b) if std::mem::discriminant(a) == std::mem::discriminant(b) => {}
        (a, b) => problems.push(format!("{path}: {a} where fio has {b}")),
    }
}

/// What perf leaves out of fio's JSON because it does not measure it (documented in
/// `src/cli/perf/fio.rs`).
const NOT_MEASURED: [&str; 4] = [
    "/jobs[0]/iodepth_level",
    "/jobs[0]/iodepth_submit",
    "/jobs[0]/iodepth_complete",
    "/disk_util",
];

#[test]
fn output_format_json_has_the_shape_of_fios_own() {
    let (_dir, file) = common::scratch_file(16 << 20);
    let f = s(&file);
    for format in ["json", "json+"] {
        let fio = Command::new(tool("fio"))
            .args([
                "--name=job1",
                &format!("--filename={f}"),
                "--rw=randrw",
                "--bs=4k",
                "--ioengine=psync",
                "--runtime=1",
                "--time_based",
                &format!("--output-format={format}"),
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(fio.status.success(), "fio: {}", text(&fio.stderr));
        let out = text(&fio.stdout);
        // fio may print notes before the object.
        let theirs: Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
        let ours = ok_json(&[
            "perf",
            f,
            "--name",
            "job1",
            "--rw",
            "randrw",
            "--bs",
            "4k",
            "--backend",
            "psync",
            "--runtime",
            "1",
            "--output-format",
            format,
        ]);
        let mut problems = Vec::new();
        same_shape(&ours, &theirs, "", &NOT_MEASURED, &mut problems);
        assert!(problems.is_empty(), "{format}: {problems:#?}\nours: {ours:#}");
        let job = &ours["jobs"][0];
        assert_eq!(job["jobname"], "job1");
        assert_eq!(job["job options"]["rw"], "randrw");
        for dir in ["read", "write"] {
            let d = &job[dir];
            let ios = d["total_ios"].as_u64().unwrap();
            assert!(ios > 0, "{dir}: {d}");
            assert_eq!(d["clat_ns"]["N"], ios);
            assert_eq!(d["io_bytes"], ios * 4096);
            assert_eq!(d["io_kbytes"], ios * 4);
            // fio's default percentiles, named as fio names them.
            let pct: Vec<&String> = d["clat_ns"]["percentile"].as_object().unwrap().keys().collect();
            let fios: Vec<&String> = theirs["jobs"][0][dir]["clat_ns"]["percentile"]
                .as_object()
                .unwrap()
                .keys()
                .collect();
            assert_eq!(pct, fios, "{dir}");
            assert_eq!(d.get("bins").is_some(), theirs["jobs"][0][dir].get("bins").is_some());
        }
        assert_eq!(job["trim"]["total_ios"], 0);
        assert!(
            job["trim"]["clat_ns"].get("percentile").is_none(),
            "fio has none without I/Os"
        );
    }
}

#[test]
fn fio_jsonplus_clat2csv_reads_perfs_json_plus() {
    let (dir, file) = common::scratch_file(16 << 20);
    // Size-based: each of the two jobs reads exactly 4 MiB, 1024 I/Os.
    let out = ok(&[
        "perf",
        s(&file),
        "--rw",
        "randread",
        "--bs",
        "4k",
        "--size",
        "4m",
        "--numjobs",
        "2",
        "--iodepth",
        "4",
        "--output-format",
        "json+",
    ]);
    let plus = dir.path().join("perf.json");
    std::fs::write(&plus, &out).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["jobs"].as_array().unwrap().len(),
        2,
        "a job per thread, as fio's numjobs"
    );
    let csv = dir.path().join("perf.csv");
    let converter = tool("fio_jsonplus_clat2csv");
    for extra in [&[][..], &["--validate"]] {
        let o = Command::new(converter)
            .args([s(&plus), s(&csv)])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{extra:?}: {}\n{}",
            text(&o.stderr),
            text(&o.stdout)
        );
    }
    for job in 0..2 {
        let rows = std::fs::read_to_string(dir.path().join(format!("perf_job{job}.csv"))).unwrap();
        let header: Vec<&str> = rows.lines().next().unwrap().split(',').map(str::trim).collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let (count, cumulative) = (col("read_clat_ns_count"), col("read_clat_ns_cumulative"));
        let mut total = 0u64;
        let mut last = (0u64, 0u64);
        for line in rows.lines().skip(1).filter(|l| !l.trim().is_empty()) {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            if let Ok(c) = cells[count].parse::<u64>() {
                total += c;
                last = (cells[0].parse().unwrap(), cells[cumulative].parse().unwrap());
            }
        }
        let clat = &v["jobs"][job]["read"]["clat_ns"];
        assert_eq!(total, 1024, "job {job}: the tool counted every I/O");
        assert_eq!(last.1, 1024, "job {job}");
        assert_eq!(v["jobs"][job]["read"]["total_ios"], 1024);
        // The last bin holds the slowest I/O: its bucket's upper end is at or just above
        // the exact maximum (3 significant digits).
        let max = clat["max"].as_u64().unwrap() as f64;
        assert!(
            last.0 as f64 >= max && (last.0 as f64) <= max * 1.002 + 1.0,
            "job {job}: {last:?} vs {max}"
        );
    }
}

#[test]
fn percentile_list_sets_the_percentiles_everywhere() {
    let (_dir, file) = common::scratch_file(16 << 20);
    let base = [
        "perf",
        s(&file),
        "--rw",
        "randread",
        "--size",
        "2m",
        "--percentile_list",
        "99.99:99:99.9",
    ];
    let out = ok(&base);
    let line = out.lines().find(|l| l.contains("lat percentiles")).unwrap();
    assert!(line.contains("(usec): 99.00th=") && line.contains(", 99.90th=") && line.contains(", 99.99th="));
    assert_eq!(line.matches("th=").count(), 3, "{line}");
    let mut args = base.to_vec();
    args.push("--json");
    let v = ok_json(&args);
    let keys: Vec<&String> = v["read"]["lat_us"]["percentiles"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["99", "99.9", "99.99"]);
    let mut args = base.to_vec();
    args.extend(["--output-format", "json"]);
    let v = ok_json(&args);
    let keys: Vec<&String> = v["jobs"][0]["read"]["clat_ns"]["percentile"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(keys, ["99.000000", "99.900000", "99.990000"]);
}

#[test]
fn size_based_runs_and_sequential_mixes_transfer_exactly_size() {
    let (_dir, file) = common::scratch_file(16 << 20);
    for backend in ["psync", "uring"] {
        for rw in ["rw", "readwrite"] {
            let v = ok_json(&[
                "perf",
                s(&file),
                "--rw",
                rw,
                "--size",
                "2m",
                "--numjobs",
                "2",
                "--backend",
                backend,
                "--ramp_time",
                "100ms",
                "--json",
            ]);
            let what = format!("{backend} {rw}: {v}");
            assert_eq!(v["rw"], "rw", "{what}");
            assert_eq!(v["size_based"], 2 << 20, "{what}");
            assert_eq!(v["ramp_s"], 0.1, "{what}");
            let (r, w) = (&v["read"], &v["write"]);
            assert!(
                r["ios"].as_u64().unwrap() > 0 && w["ios"].as_u64().unwrap() > 0,
                "{what}"
            );
            // Two threads, 2 MiB each, measured after the ramp.
            assert_eq!(
                r["bytes"].as_u64().unwrap() + w["bytes"].as_u64().unwrap(),
                4 << 20,
                "{what}"
            );
            for t in v["per_thread"].as_array().unwrap() {
                assert_eq!(t["bytes"], 2 << 20, "{what}");
            }
        }
    }
}

#[test]
fn bssplit_mixes_the_sizes_by_weight() {
    let (_dir, file) = common::scratch_file(16 << 20);
    let v = ok_json(&[
        "perf",
        s(&file),
        "--rw",
        "randread",
        "--bssplit",
        "4k/50:64k/50",
        "--size",
        "8m",
        "--json",
    ]);
    let (ios, bytes) = (v["read"]["ios"].as_u64().unwrap(), v["read"]["bytes"].as_u64().unwrap());
    assert!((8 << 20..(8 << 20) + 65536).contains(&bytes), "{v}");
    assert!(
        bytes > ios * 4096 && bytes < ios * 65536,
        "both sizes ran: {ios} I/Os, {bytes} bytes"
    );
    assert_eq!(v["bssplit"], serde_json::json!([[4096, 50], [65536, 50]]));
    let text = ok(&[
        "perf",
        s(&file),
        "--rw",
        "randread",
        "--bssplit",
        "4k/50:64k/50",
        "--size",
        "1m",
    ]);
    assert!(text.starts_with("randread: bssplit=4KiB/50:64KiB/50 qd=32"), "{text}");
}

/// The 4 KiB blocks of the first `bytes` of `file` that are not all zeros.
fn written_blocks(file: &Path, bytes: u64) -> BTreeSet<u64> {
    let f = File::open(file).unwrap();
    let mut b = vec![0u8; 4096];
    (0..bytes / 4096)
        .filter(|&n| {
            f.read_exact_at(&mut b, n * 4096).unwrap();
            b.iter().any(|&x| x != 0)
        })
        .collect()
}

#[test]
fn randseed_repeats_the_offsets() {
    // One random write per 4 KiB block of the first MiB, drawn with replacement: the set
    // of blocks written is the offset sequence, and a fresh file shows it.
    let blocks = |seed: &str, backend: &str| {
        let (_dir, file) = common::scratch_file(4 << 20);
        ok_json(&[
            "perf",
            s(&file),
            "--rw",
            "randwrite",
            "--size",
            "1m",
            "--randseed",
            seed,
            "--backend",
            backend,
            "--json",
        ]);
        written_blocks(&file, 4 << 20)
    };
    let a = blocks("7", "psync");
    assert!(
        a.len() > 100 && a.len() < 256 && a.iter().all(|&b| b < 256),
        "{} blocks: {a:?}",
        a.len()
    );
    assert_eq!(blocks("7", "psync"), a, "same seed, same offsets");
    assert_eq!(blocks("7", "uring"), a, "on any backend");
    assert_ne!(blocks("8", "psync"), a, "another seed, other offsets");
}

#[test]
fn trims_deallocate_the_blocks() {
    let (_dir, file) = common::scratch_file(8 << 20);
    let f = s(&file);
    for (rw, backend) in [("trim", "psync"), ("randtrim", "uring")] {
        ok_json(&["perf", f, "--rw", "write", "--size", "2m", "--bs", "64k", "--json"]);
        assert_eq!(written_blocks(&file, 2 << 20).len(), 512);
        let v = ok_json(&[
            "perf",
            f,
            "--rw",
            rw,
            "--size",
            "2m",
            "--bs",
            "64k",
            "--backend",
            backend,
            "--json",
        ]);
        assert_eq!(
            (v["trim"]["ios"].as_u64(), v["trim"]["bytes"].as_u64()),
            (Some(32), Some(2 << 20)),
            "{v}"
        );
        assert_eq!(
            (v["read"]["ios"].as_u64(), v["write"]["ios"].as_u64()),
            (Some(0), Some(0))
        );
        let left = written_blocks(&file, 2 << 20).len();
        if rw == "trim" {
            assert_eq!(left, 0, "a sequential pass trims every block");
        } else {
            assert!(left < 512, "{left} blocks left");
        }
        let fio = ok_json(&[
            "perf",
            f,
            "--rw",
            rw,
            "--size",
            "1m",
            "--bs",
            "64k",
            "--backend",
            backend,
            "--output-format",
            "json",
        ]);
        assert_eq!(fio["jobs"][0]["trim"]["total_ios"], 16);
        assert_eq!(fio["jobs"][0]["trim"]["io_bytes"], 1 << 20);
    }
}

/// The CPUs this process may run on (`Cpus_allowed_list` of /proc/self/status).
fn my_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

#[test]
fn cpus_allowed_pins_the_threads() {
    let (_dir, file) = common::scratch_file(16 << 20);
    let cpus = my_cpus();
    let first = cpus[0].to_string();
    let v = ok_json(&[
        "perf",
        s(&file),
        "--rw",
        "randread",
        "--size",
        "1m",
        "--numjobs",
        "2",
        "--cpus_allowed",
        &first,
        "--json",
    ]);
    for t in v["per_thread"].as_array().unwrap() {
        assert_eq!(t["cpus"], serde_json::json!([cpus[0]]), "{v}");
    }
    assert_eq!(v["cpus_allowed"], serde_json::json!([cpus[0]]));
    if cpus.len() >= 2 {
        let list = format!("{},{}", cpus[0], cpus[1]);
        let v = ok_json(&[
            "perf",
            s(&file),
            "--rw",
            "randread",
            "--size",
            "1m",
            "--numjobs",
            "3",
            "--cpus_allowed",
            &list,
            "--cpus_allowed_policy",
            "split",
            "--json",
        ]);
        let got: Vec<Value> = v["per_thread"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["cpus"].clone())
            .collect();
        let want = [cpus[0], cpus[1], cpus[0]].map(|c| serde_json::json!([c]));
        assert_eq!(got, want, "split: one CPU each, in turn");
    }
    // A CPU this process may not use is refused before the run.
    let absent = (0..1024).find(|c| !cpus.contains(c)).unwrap().to_string();
    let o = ironvme(&[
        "perf",
        s(&file),
        "--rw",
        "read",
        "--cpus_allowed",
        &absent,
        "--size",
        "1m",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("is not one this process may run on"),
        "{}",
        text(&o.stderr)
    );
}

/// Whether process `pid` catches SIGINT (bit 2 of `SigCgt` in its status).
fn catches_sigint(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (SIGINT - 1)) != 0)
}

/// SIGINT's number on Linux.
const SIGINT: u32 = 2;

#[test]
fn ctrl_c_stops_the_run_and_reports_what_was_measured() {
    let (_dir, file) = common::scratch_file(16 << 20);
    for (format, backend) in [
        ("--json", "psync"),
        ("--output-format=json", "uring"),
        ("--output-format=normal", "uring"),
    ] {
        let child = Command::new(IRONVME)
            .args([
                "perf",
                s(&file),
                "--rw",
                "randread",
                "--time",
                "60",
                "--backend",
                backend,
                format,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let began = Instant::now();
        // Once the handler is in place the run is under way; give it time to measure.
        while !catches_sigint(child.id()) {
            assert!(began.elapsed() < Duration::from_secs(30), "perf never caught SIGINT");
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(500));
        let kill = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let out = child.wait_with_output().unwrap();
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{format}: {stderr}\n{stdout}");
        assert!(began.elapsed() < Duration::from_secs(50), "stopped long before --time");
        assert!(stderr.contains("perf interrupted (SIGINT)"), "{stderr}");
        match format {
            "--json" => {
                let v: Value = serde_json::from_str(&stdout).unwrap();
                assert_eq!(v["interrupted"], true);
                assert!(v["ios"].as_u64().unwrap() > 0, "{v}");
                assert!(v["runtime_s"].as_f64().unwrap() < 50.0, "{v}");
            }
            "--output-format=json" => {
                let v: Value = serde_json::from_str(&stdout).unwrap();
                let read = &v["jobs"][0]["read"];
                assert!(read["total_ios"].as_u64().unwrap() > 0, "{v}");
                assert!(read["runtime"].as_u64().unwrap() < 50_000, "{v}");
            }
            _ => {
                assert!(
                    stdout.contains("  interrupted (SIGINT)") && stdout.contains("  read: IOPS="),
                    "{stdout}"
                );
            }
        }
    }
}

#[test]
fn fio_names_that_were_not_options_before() {
    let (_dir, file) = common::scratch_file(16 << 20);
    let f = s(&file);
    // --runtime, --iodepth and --numjobs are fio's names of --time, --qd and --threads.
    let v = ok_json(&[
        "perf",
        f,
        "--readwrite",
        "randread",
        "--runtime",
        "300ms",
        "--iodepth",
        "2",
        "--numjobs",
        "2",
        "--ramp_time",
        "0",
        "--json",
    ]);
    assert_eq!((v["qd"].as_u64(), v["threads"].as_u64()), (Some(2), Some(2)));
    assert_eq!(v["size_based"], Value::Null);
    // --group_reporting: one job for both threads, as fio's.
    let v = ok_json(&[
        "perf",
        f,
        "--rw",
        "randread",
        "--size",
        "1m",
        "--numjobs",
        "2",
        "--group_reporting",
        "--output-format",
        "json",
    ]);
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{v}");
    assert_eq!(jobs[0]["read"]["total_ios"], 512, "two threads of 256 I/Os");
    assert_eq!(jobs[0]["job options"]["numjobs"], "2");
    let o = ironvme(&["perf", f, "--rw", "randrw", "--json", "--output-format", "json"]);
    assert_eq!(o.status.code(), Some(2), "one JSON at a time");
}
