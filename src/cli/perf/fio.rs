//! fio's JSON output: `--output-format=json` and `json+`, so that tools made for fio's
//! output read perf's.
//!
//! The shape is fio 3.x's (`show_thread_status_json` and `add_ddir_status_json` in fio's
//! `stat.c`; checked key by key against fio 3.33's output): a top-level object with
//! `fio version`, `timestamp`, `timestamp_ms`, `time` and `jobs`; one job per thread, as
//! fio reports each clone of a job (`numjobs`), or one for all with `--group_reporting`;
//! each job with `jobname`, `groupid`, `error`, `job options`, a `read`, `write` and
//! `trim` object, `sync`, `job_runtime`, `usr_cpu`, `sys_cpu`, `ctx`, `majf`, `minf` and
//! the `latency_ns`/`latency_us`/`latency_ms` distributions. `json+` adds each latency
//! histogram's `bins` (`clat_ns.bins`: latency in ns → I/Os), as fio does.
//!
//! # What the numbers are
//!
//! - **Latency.** ironvme measures one latency per I/O: from just before it is queued to
//!   its completion. It is given as `clat_ns` (with the percentiles) and, since there is
//!   no separate submission latency, also as `lat_ns`; `slat_ns` has `N` = 0 and zeros,
//!   which is what fio itself prints for its synchronous engines. Values come from the
//!   run's hdrhistogram (3 significant digits; min and max are exact); a percentile is the
//!   highest latency of its histogram bucket, as fio's are.
//! - **Not measured, so zero as fio prints them when it took no samples:**
//!   `bw_min`, `bw_max`, `bw_agg`, `bw_mean`, `bw_dev` with `bw_samples` = 0 and
//!   `iops_min`, `iops_max`, `iops_mean`, `iops_stddev` with `iops_samples` = 0 (fio
//!   samples bandwidth every 500 ms per job; perf does not); `short_ios`, `drop_ios` (perf
//!   never issues a short or dropped I/O); `sync` (perf issues no fsync). `eta` is 0 (the
//!   run is over). The depth distributions (`iodepth_level`, `iodepth_submit`,
//!   `iodepth_complete`) and `disk_util` are left out rather than made up.
//! - **CPU.** `usr_cpu`/`sys_cpu` are the thread's user and system time
//!   (`getrusage(RUSAGE_THREAD)`) over its measured run, in percent of that run, as fio
//!   computes them per job; `ctx`, `majf` and `minf` come from the same readings.
//! - **Who wrote it.** `fio version` names the fio release whose output this follows
//!   (consumers check it to know the shape: `clat_ns` since fio 3.0); the top-level
//!   `ironvme version` and `job options.ioengine` (`ironvme-<backend>`) say that ironvme
//!   wrote it.

use super::engine::ThreadStats;
use super::report::RunInfo;
use super::workload::{DIR_NAMES, DIRS};
use crate::block::IoStatus;
use crate::cli::io_shared::units::{FIO_PERCENTILES, fio_size};
use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// The fio release whose JSON shape this follows.
pub const FIO_SHAPE: &str = "fio-3.33";

/// Which of fio's JSON outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// `json`.
    Json,
    /// `json+`: with the latency histograms' bins.
    JsonPlus,
}

/// What the fio report needs besides the run's description.
pub struct FioRun<'a> {
    /// Each thread's statistics.
    pub stats: &'a [ThreadStats],
    /// Each thread's measured run, in seconds.
    pub runtimes_s: &'a [f64],
    /// The clock's rate over the run.
    pub ticks_per_ns: f64,
    /// Seconds from the start of the run (ramp included) to its end.
    pub elapsed_s: f64,
    /// When the run ended.
    pub ended: SystemTime,
    /// The percentiles to report (`--percentile_list`, or fio's default list).
    pub percentiles: &'a [f64],
}

/// The fio-shaped report of a run.
pub fn report(info: &RunInfo, run: &FioRun, flavor: Flavor) -> Value {
    let total = if info.group_reporting {
        ThreadStats::total(run.stats)
    } else {
        None
    };
    let jobs: Vec<Value> = if let Some(all) = total {
        let runtime = run.runtimes_s.iter().copied().fold(0.0, f64::max);
        let cpu_time: f64 = run.runtimes_s.iter().sum();
        vec![job(info, run, &all, runtime, cpu_time, flavor)]
    } else {
        run.stats
            .iter()
            .zip(run.runtimes_s)
            .map(|(s, &rt)| job(info, run, s, rt, rt, flavor))
            .collect()
    };
    let since_epoch = run.ended.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    json!({
        "fio version": FIO_SHAPE,
        "ironvme version": env!("CARGO_PKG_VERSION"),
        "timestamp": since_epoch.as_secs(),
        "timestamp_ms": since_epoch.as_millis() as u64,
        "time": ctime(since_epoch.as_secs() as i64),
        "jobs": jobs,
    })
}

/// One job: `s` over `runtime_s` seconds; `cpu_runtime_s` is what its CPU time is a share
/// of (the sum of the threads' runs when grouped, as fio's group_reporting does).
fn job(info: &RunInfo, run: &FioRun, s: &ThreadStats, runtime_s: f64, cpu_runtime_s: f64, flavor: Flavor) -> Value {
    let mut j = Map::new();
    j.insert("jobname".into(), info.name.clone().into());
    j.insert("groupid".into(), 0.into());
    j.insert("error".into(), error_number(s).into());
    j.insert("eta".into(), 0.into());
    j.insert("elapsed".into(), (run.elapsed_s.round() as u64).into());
    j.insert("job options".into(), job_options(info, run.percentiles));
    for (d, name) in DIR_NAMES.iter().enumerate() {
        j.insert((*name).into(), ddir(s, d, runtime_s, run, flavor));
    }
    j.insert(
        "sync".into(),
        json!({ "total_ios": 0, "lat_ns": lat(None, 0, (0, 0), 1.0, &[], Flavor::Json) }),
    );
    j.insert("job_runtime".into(), ms(runtime_s).into());
    let pct = |secs: f64| {
        if cpu_runtime_s > 0.0 {
            f6(secs / cpu_runtime_s * 100.0)
        } else {
            f6(0.0)
        }
    };
    j.insert("usr_cpu".into(), pct(s.cpu.user_s));
    j.insert("sys_cpu".into(), pct(s.cpu.sys_s));
    j.insert("ctx".into(), s.cpu.ctx.into());
    j.insert("majf".into(), s.cpu.majf.into());
    j.insert("minf".into(), s.cpu.minf.into());
    let (ns, us, msec) = latency_buckets(&s.latency, run.ticks_per_ns);
    j.insert("latency_ns".into(), ns);
    j.insert("latency_us".into(), us);
    j.insert("latency_ms".into(), msec);
    j.insert("latency_depth".into(), info.qd_effective.into());
    j.insert("latency_target".into(), 0.into());
    j.insert("latency_percentile".into(), f6(100.0));
    j.insert("latency_window".into(), 0.into());
    Value::Object(j)
}

/// fio's `error`: the errno of the first failed I/O (EIO for an NVMe status), 0 if none.
fn error_number(s: &ThreadStats) -> i32 {
    match s.error_samples.first().map(|e| e.status) {
        Some(IoStatus::Os(errno)) => errno,
        Some(IoStatus::Nvme(_)) => libc::EIO,
        None if s.errors > 0 || s.fatal.is_some() => libc::EIO,
        None => 0,
    }
}

/// The options in effect, under fio's names, as strings (fio's `job options`).
fn job_options(i: &RunInfo, percentiles: &[f64]) -> Value {
    let mut o = Map::new();
    let mut put = |k: &str, v: String| {
        o.insert(k.into(), Value::String(v));
    };
    put("name", i.name.clone());
    put("filename", i.device.clone());
    put("ioengine", format!("ironvme-{}", i.backend));
    put("rw", i.rw.name().into());
    match &i.bssplit {
        Some(split) => {
            let parts: Vec<String> = split.0.iter().map(|(b, p)| format!("{}/{p}", fio_size(*b))).collect();
            put("bssplit", parts.join(":"));
        }
        None => put("bs", fio_size(i.bs)),
    }
    put("iodepth", i.qd.to_string());
    put("numjobs", i.threads.to_string());
    if i.rw.mixed() {
        put("rwmixread", i.rwmixread.to_string());
    }
    put("offset", fio_size(i.offset));
    put("size", fio_size(i.size));
    match i.size_based {
        Some(_) => {}
        None => {
            put("time_based", "1".into());
            put("runtime", secs(i.time_s));
        }
    }
    if i.ramp_s > 0.0 {
        put("ramp_time", secs(i.ramp_s));
    }
    put("randseed", i.seed.to_string());
    put("percentile_list", {
        let p: Vec<String> = percentiles.iter().map(|p| format!("{p}")).collect();
        p.join(":")
    });
    if let Some((cpus, policy)) = &i.cpus_allowed {
        put("cpus_allowed", cpus.fio());
        put("cpus_allowed_policy", (*policy).into());
    }
    if i.group_reporting {
        put("group_reporting", "1".into());
    }
    Value::Object(o)
}

/// One direction's object.
fn ddir(s: &ThreadStats, d: usize, runtime_s: f64, run: &FioRun, flavor: Flavor) -> Value {
    let (ios, bytes) = (s.ios[d], s.bytes[d]);
    let per_s = |v: u64| if runtime_s > 0.0 { v as f64 / runtime_s } else { 0.0 };
    let bw_bytes = per_s(bytes) as u64;
    let mut o = Map::new();
    o.insert("io_bytes".into(), bytes.into());
    o.insert("io_kbytes".into(), (bytes >> 10).into());
    o.insert("bw_bytes".into(), bw_bytes.into());
    o.insert("bw".into(), (bw_bytes >> 10).into());
    o.insert("iops".into(), f6(per_s(ios)));
    o.insert("runtime".into(), (if ios > 0 { ms(runtime_s) } else { 0 }).into());
    o.insert("total_ios".into(), ios.into());
    o.insert("short_ios".into(), 0.into());
    o.insert("drop_ios".into(), 0.into());
    o.insert("slat_ns".into(), lat(None, 0, (0, 0), 1.0, &[], Flavor::Json));
    let h = Some(&s.latency[d]);
    let mm = s.min_max[d];
    o.insert(
        "clat_ns".into(),
        lat(h, ios, mm, run.ticks_per_ns, run.percentiles, flavor),
    );
    o.insert("lat_ns".into(), lat(h, ios, mm, run.ticks_per_ns, &[], Flavor::Json));
    for k in ["bw_min", "bw_max"] {
        o.insert(k.into(), 0.into());
    }
    for k in ["bw_agg", "bw_mean", "bw_dev"] {
        o.insert(k.into(), f6(0.0));
    }
    o.insert("bw_samples".into(), 0.into());
    for k in ["iops_min", "iops_max"] {
        o.insert(k.into(), 0.into());
    }
    for k in ["iops_mean", "iops_stddev"] {
        o.insert(k.into(), f6(0.0));
    }
    o.insert("iops_samples".into(), 0.into());
    Value::Object(o)
}

/// A latency object in ns: min, max, mean, stddev, N, and with samples the `percentiles`
/// (if any) and, for json+, the bins.
fn lat(
    h: Option<&Histogram<u64>>,
    n: u64,
    (min, max): (u64, u64),
    ticks_per_ns: f64,
    percentiles: &[f64],
    flavor: Flavor,
) -> Value {
    let Some(h) = h.filter(|h| n > 0 && !h.is_empty()) else {
        return json!({ "min": 0, "max": 0, "mean": f6(0.0), "stddev": f6(0.0), "N": 0 });
    };
    let ns = |ticks: f64| ticks / ticks_per_ns;
    let mut o = Map::new();
    o.insert("min".into(), (ns(min as f64).round() as u64).into());
    o.insert("max".into(), (ns(max as f64).round() as u64).into());
    o.insert("mean".into(), f6(ns(h.mean())));
    o.insert("stddev".into(), f6(ns(h.stdev())));
    o.insert("N".into(), n.into());
    if !percentiles.is_empty() {
        let p: Map<String, Value> = percentiles
            .iter()
            .map(|&p| {
                let v = ns(h.value_at_percentile(p) as f64).round() as u64;
                (format!("{p:.6}"), v.into())
            })
            .collect();
        o.insert("percentile".into(), Value::Object(p));
    }
    if flavor == Flavor::JsonPlus {
        o.insert("bins".into(), bins(h, ticks_per_ns));
    }
    Value::Object(o)
}

/// json+'s `bins`: latency in ns (each histogram bucket's highest value) → I/Os in it;
/// buckets that land on the same ns add up.
fn bins(h: &Histogram<u64>, ticks_per_ns: f64) -> Value {
    let mut b: BTreeMap<u64, u64> = BTreeMap::new();
    for v in h.iter_recorded() {
        let ns = (v.value_iterated_to() as f64 / ticks_per_ns).round() as u64;
        *b.entry(ns).or_default() += v.count_at_value();
    }
    Value::Object(b.into_iter().map(|(k, v)| (k.to_string(), v.into())).collect())
}

/// fio's job-level latency distributions: the percentage of the job's I/Os (all
/// directions) whose latency falls in each range: `latency_ns` below 1 µs, `latency_us`
/// below 1 ms, `latency_ms` above; each key is the range's exclusive upper end.
fn latency_buckets(hists: &[Histogram<u64>; DIRS], ticks_per_ns: f64) -> (Value, Value, Value) {
    const EDGES: [u64; 10] = [2, 4, 10, 20, 50, 100, 250, 500, 750, 1000];
    let index = |v: u64| EDGES.iter().position(|&e| v < e).unwrap_or(EDGES.len() - 1);
    let (mut n, mut u, mut m) = ([0u64; 10], [0u64; 10], [0u64; 12]);
    let mut total = 0u64;
    for h in hists {
        for v in h.iter_recorded() {
            let count = v.count_at_value();
            let ns = (v.value_iterated_to() as f64 / ticks_per_ns) as u64;
            total += count;
            if ns < 1000 {
                n[index(ns)] += count;
            } else if ns < 1_000_000 {
                u[index(ns / 1000)] += count;
            } else {
                let msec = ns / 1_000_000;
                let i = if msec < 1000 {
                    index(msec)
                } else if msec < 2000 {
                    10
                } else {
                    11
                };
                m[i] += count;
            }
        }
    }
    let share = |c: u64| {
        f6(if total > 0 {
            c as f64 * 100.0 / total as f64
        } else {
            0.0
        })
    };
    let obj = |counts: &[u64], extra: &[&str]| {
        let keys = EDGES
            .iter()
            .map(|e| e.to_string())
            .chain(extra.iter().map(|s| s.to_string()));
        Value::Object(keys.zip(counts).map(|(k, &c)| (k, share(c))).collect())
    };
    (obj(&n, &[]), obj(&u, &[]), obj(&m, &["2000", ">=2000"]))
}

/// A float as fio prints it (`%f`: six decimals).
fn f6(v: f64) -> Value {
    let r = (v * 1e6).round() / 1e6;
    serde_json::Number::from_f64(r).map_or(Value::Null, Value::Number)
}

/// Seconds as whole milliseconds.
fn ms(secs: f64) -> u64 {
    (secs * 1000.0).round() as u64
}

/// Seconds as fio takes them (`10`, `1.5`).
fn secs(v: f64) -> String {
    format!("{v}")
}

/// fio's `time`: the local time as ctime(3) writes it, without the newline
/// (`Sun Dec  6 18:54:30 2026`).
fn ctime(secs: i64) -> String {
    let t: libc::time_t = secs as libc::time_t;
    let mut tm = std::mem::MaybeUninit::<libc::tm>::zeroed();
    // SAFETY: both pointers are valid; localtime_r fills `tm` and keeps no reference.
    let ok = !unsafe { libc::localtime_r(&t, tm.as_mut_ptr()) }.is_null();
    if !ok {
        return String::new();
    }
    let mut buf = [0u8; 64];
    // SAFETY: `buf` is writable for its length, the format is NUL-terminated, and `tm`
    // was filled by localtime_r.
    let n = unsafe {
        libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%a %b %e %H:%M:%S %Y".as_ptr(),
            tm.as_ptr(),
        )
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// fio's default percentile list.
pub fn default_percentiles() -> Vec<f64> {
    FIO_PERCENTILES.to_vec()
}
