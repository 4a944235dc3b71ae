//! A perf run's results: merged statistics, and their rendering for people (fio-like) and
//! for scripts (one JSON object).

use super::engine::{ErrorSample, PollStats, ThreadStats};
use super::workload::{DIR_NAMES, DIRS, READ, Rw, TRIM, WRITE};
use crate::cli::io_shared::units::{BsSplit, CpuList, iec_exact, percentile_name, si_count};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::fmt::Write as _;

/// What was run, for the header and the JSON object.
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// The workload.
    pub rw: Rw,
    /// Reads in percent (randrw).
    pub rwmixread: u8,
    /// Bytes per I/O.
    pub bs: u64,
    /// Queue depth asked for, per thread.
    pub qd: usize,
    /// Queue depth run (1 on synchronous backends).
    pub qd_effective: usize,
    /// Threads (one queue each).
    pub threads: usize,
    /// Backend name.
    pub backend: String,
    /// The device as the user named it.
    pub device: String,
    /// Namespace ID.
    pub nsid: u32,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Region start in bytes.
    pub offset: u64,
    /// Region length in bytes.
    pub size: u64,
    /// Measured seconds asked for.
    pub time_s: f64,
    /// Ramp seconds.
    pub ramp_s: f64,
    /// Clock source name.
    pub clock: &'static str,
    /// What one `Instant::now()` cost here, in ns (why the clock was chosen).
    pub instant_now_ns: f64,
    /// How completions were awaited (`spin`, `interrupt` or `hybrid`).
    pub completions: &'static str,
    /// VFIO: whether the I/O queues used shadow doorbells; `None` on other backends.
    pub shadow_doorbells: Option<bool>,
    /// The job's name (fio's `name`).
    pub name: String,
    /// I/O sizes and weights, when `--bssplit` chose them (`bs` is then the largest).
    pub bssplit: Option<BsSplit>,
    /// The percentiles reported (`--percentile_list`, or [`PERCENTILES`]).
    pub percentiles: Vec<f64>,
    /// Bytes each thread transfers in a size-based run; `None` when time-based.
    pub size_based: Option<u64>,
    /// Whether Ctrl-C (SIGINT) ended the run early.
    pub interrupted: bool,
    /// The CPUs the threads were pinned to (`--cpus_allowed`), and whether each thread
    /// got one of them (`split`) or all (`shared`).
    pub cpus_allowed: Option<(CpuList, &'static str)>,
    /// Seed of thread 0's random sequence.
    pub seed: u64,
    /// fio's `group_reporting`: one job for all threads in fio's JSON.
    pub group_reporting: bool,
}

impl RunInfo {
    /// `bs=4KiB`, or `bssplit=4KiB/50:64KiB/50`.
    pub fn bs_text(&self) -> String {
        match &self.bssplit {
            Some(split) => format!("bssplit={}", split.fio()),
            None => format!("bs={}", iec_exact(self.bs)),
        }
    }
}

/// CPU time of the whole process over the measured window (`getrusage(RUSAGE_SELF)`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuUse {
    /// User time in seconds.
    pub user_s: f64,
    /// System time in seconds.
    pub sys_s: f64,
    /// Wall-clock length of the window in seconds.
    pub wall_s: f64,
    /// Peak resident set size of the process at the end of the run, KiB
    /// (`ru_maxrss`).
    pub max_rss_kib: u64,
}

impl CpuUse {
    /// (user + system) / wall, in percent of one CPU.
    pub fn percent(&self) -> f64 {
        if self.wall_s > 0.0 {
            (self.user_s + self.sys_s) / self.wall_s * 100.0
        } else {
            0.0
        }
    }
}

/// Latency statistics in µs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    /// Smallest (exact).
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Largest (exact).
    pub max: f64,
    /// Standard deviation.
    pub stdev: f64,
    /// Percentiles 50, 90, 99, 99.9, 99.99 (upper bounds of their histogram buckets).
    pub pct: [f64; 5],
}

/// Percentiles reported by default, and their JSON keys (the text names come from
/// [`percentile_name`]).
pub const PERCENTILES: [(f64, &str); 5] = [
    (50.0, "p50"),
    (90.0, "p90"),
    (99.0, "p99"),
    (99.9, "p99_9"),
    (99.99, "p99_99"),
];

impl Latency {
    /// From a histogram in ticks, the exact (min, max) in ticks and the tick rate;
    /// `None` for no samples.
    pub fn from_ticks(h: &Histogram<u64>, (min, max): (u64, u64), ticks_per_ns: f64) -> Option<Latency> {
        if h.is_empty() {
            return None;
        }
        let us = |ticks: f64| ticks / ticks_per_ns / 1000.0;
        Some(Latency {
            min: us(min as f64),
            mean: us(h.mean()),
            max: us(max as f64),
            stdev: us(h.stdev()),
            pct: PERCENTILES.map(|(p, _)| us(h.value_at_percentile(p) as f64)),
        })
    }

    /// min, mean, max, stdev and the [`PERCENTILES`] by their JSON keys, in µs.
    pub(crate) fn json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("min".into(), round3(self.min));
        m.insert("mean".into(), round3(self.mean));
        m.insert("max".into(), round3(self.max));
        m.insert("stdev".into(), round3(self.stdev));
        for ((_, key), v) in PERCENTILES.iter().zip(self.pct) {
            m.insert((*key).into(), round3(v));
        }
        Value::Object(m)
    }
}

/// The latency at each of `list`'s percentiles, in µs: (percentile, µs); empty without
/// samples.
pub fn percentiles_us(h: &Histogram<u64>, list: &[f64], ticks_per_ns: f64) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    list.iter()
        .map(|&p| (p, h.value_at_percentile(p) as f64 / ticks_per_ns / 1000.0))
        .collect()
}

/// A percentile as a JSON key of ironvme's report: `99`, `99.9`, `99.99`.
fn percentile_key(p: f64) -> String {
    format!("{p}")
}

/// Throughput and latency of a set of I/Os.
#[derive(Clone, Debug, PartialEq)]
pub struct Rate {
    /// Successful I/Os in the window.
    pub ios: u64,
    /// Their bytes.
    pub bytes: u64,
    /// I/Os per second.
    pub iops: f64,
    /// MiB (2^20 bytes) per second.
    pub mib_per_s: f64,
    /// Latency, if there were I/Os.
    pub lat: Option<Latency>,
    /// The latency at each reported percentile (`--percentile_list`): (percentile, µs).
    pub percentiles: Vec<(f64, f64)>,
}

impl Rate {
    fn new(ios: u64, bytes: u64, seconds: f64, lat: Option<Latency>, percentiles: Vec<(f64, f64)>) -> Rate {
        let per_s = |v: u64| if seconds > 0.0 { v as f64 / seconds } else { 0.0 };
        Rate {
            ios,
            bytes,
            iops: per_s(ios),
            mib_per_s: per_s(bytes) / (1u64 << 20) as f64,
            lat,
            percentiles,
        }
    }

    fn json(&self) -> Value {
        let lat = self.lat.map_or(Value::Null, |l| {
            let mut v = l.json();
            let pct: serde_json::Map<String, Value> = self
                .percentiles
                .iter()
                .map(|&(p, us)| (percentile_key(p), round3(us)))
                .collect();
            v["percentiles"] = Value::Object(pct);
            v
        });
        json!({
            "ios": self.ios,
            "bytes": self.bytes,
            "iops": round3(self.iops),
            "mib_per_s": round3(self.mib_per_s),
            "lat_us": lat,
        })
    }
}

/// One thread's results.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreadSummary {
    /// All directions together.
    pub all: Rate,
    /// Failed I/Os.
    pub errors: u64,
    /// Why it stopped early, if it did.
    pub fatal: Option<String>,
    /// The CPUs it was allowed to run on, read back after pinning.
    pub cpus: Option<Vec<usize>>,
    /// The CPU its queue's completion interrupt was steered to, if it was.
    pub interrupt_cpu: Option<usize>,
    /// Its polls, when it spun.
    pub polls: Option<PollStats>,
}

/// The merged results of a run.
#[derive(Clone, Debug)]
pub struct Summary {
    /// What was run.
    pub info: RunInfo,
    /// Measured window in seconds.
    pub runtime_s: f64,
    /// All I/Os.
    pub all: Rate,
    /// Reads only, writes only, trims only.
    pub dirs: [Rate; DIRS],
    /// Per thread.
    pub threads: Vec<ThreadSummary>,
    /// Failed I/Os.
    pub errors: u64,
    /// The first few failed I/Os: (thread, sample).
    pub error_samples: Vec<(usize, ErrorSample)>,
    /// CPU use over the window.
    pub cpu: CpuUse,
    /// Every spinning thread's polls together; `None` when none spun.
    pub polls: Option<PollStats>,
}

impl Summary {
    /// Merges the threads' statistics over a window of `runtime_s` seconds;
    /// `ticks_per_ns` converts their clock readings.
    pub fn new(info: RunInfo, stats: &[ThreadStats], runtime_s: f64, ticks_per_ns: f64, cpu: CpuUse) -> Summary {
        let max_latency = stats.iter().map(|s| s.latency[READ].high()).max().unwrap_or(2);
        let empty = || Histogram::<u64>::new_with_bounds(1, max_latency, 3).expect("valid bounds");
        let mut threads = Vec::new();
        let mut error_samples = Vec::new();
        let rate = |ios: u64, bytes: u64, h: &Histogram<u64>, mm| {
            Rate::new(
                ios,
                bytes,
                runtime_s,
                Latency::from_ticks(h, mm, ticks_per_ns),
                percentiles_us(h, &info.percentiles, ticks_per_ns),
            )
        };
        for (i, s) in stats.iter().enumerate() {
            let mut mine = empty();
            let mut mm = (u64::MAX, 0u64);
            for d in 0..DIRS {
                // Same bounds on both sides: adding cannot fail.
                let _ = mine.add(&s.latency[d]);
                mm = (mm.0.min(s.min_max[d].0), mm.1.max(s.min_max[d].1));
            }
            threads.push(ThreadSummary {
                all: rate(s.ios.iter().sum(), s.bytes.iter().sum(), &mine, mm),
                errors: s.errors,
                fatal: s.fatal.clone(),
                cpus: s.cpus.clone(),
                interrupt_cpu: s.interrupt_cpu,
                polls: s.polls,
            });
            error_samples.extend(s.error_samples.iter().map(|e| (i, *e)));
        }
        error_samples.truncate(super::engine::ERROR_SAMPLES);
        // The run's totals: every thread merged.
        let (dirs, dir_min_max, ios, bytes, errors, polls) = match ThreadStats::total(stats) {
            Some(t) => (t.latency, t.min_max, t.ios, t.bytes, t.errors, t.polls),
            None => (
                [empty(), empty(), empty()],
                [(u64::MAX, 0); DIRS],
                [0; DIRS],
                [0; DIRS],
                0,
                None,
            ),
        };
        let mut all = empty();
        let mut all_mm = (u64::MAX, 0u64);
        for d in 0..DIRS {
            let _ = all.add(&dirs[d]);
            all_mm = (all_mm.0.min(dir_min_max[d].0), all_mm.1.max(dir_min_max[d].1));
        }
        Summary {
            all: rate(ios.iter().sum(), bytes.iter().sum(), &all, all_mm),
            dirs: [READ, WRITE, TRIM].map(|d| rate(ios[d], bytes[d], &dirs[d], dir_min_max[d])),
            errors,
            error_samples,
            threads,
            runtime_s,
            cpu,
            polls,
            info,
        }
    }

    /// Whether anything failed (an I/O, or a thread that stopped early).
    pub fn failed(&self) -> bool {
        self.errors > 0 || self.threads.iter().any(|t| t.fatal.is_some())
    }

    /// The header line, like fio's job line.
    pub fn header(&self) -> String {
        let i = &self.info;
        let mix = if i.rw.mixed() {
            format!(" rwmixread={}", i.rwmixread)
        } else {
            String::new()
        };
        let qd = if i.qd_effective == i.qd {
            i.qd.to_string()
        } else {
            format!(
                "{} (runs as {}: {} completes each I/O before the next)",
                i.qd, i.qd_effective, i.backend
            )
        };
        format!(
            "{}: {}{mix} qd={qd} threads={} backend={} dev={} nsid={}",
            i.rw.name(),
            i.bs_text(),
            i.threads,
            i.backend,
            i.device,
            i.nsid
        )
    }

    /// The report for people.
    pub fn human(&self) -> String {
        let i = &self.info;
        let mut o = String::new();
        let _ = writeln!(o, "{}", self.header());
        let ios = match &i.bssplit {
            Some(_) => format!("{} B blocks", i.block_size),
            None => format!("{} I/O slots, {} B blocks", i.size / i.bs, i.block_size),
        };
        let _ = writeln!(
            o,
            "  region: offset={} size={} ({ios}), runtime={:.2}s ramp={}s clock={} completions={}",
            iec_exact(i.offset),
            iec_exact(i.size),
            self.runtime_s,
            i.ramp_s,
            i.clock,
            i.completions
        );
        if let Some(bytes) = i.size_based {
            let _ = writeln!(o, "  size-based: {} per thread", iec_exact(bytes));
        }
        if let Some((cpus, policy)) = &i.cpus_allowed {
            let _ = writeln!(o, "  cpus_allowed={} ({policy})", cpus.fio());
        }
        if i.interrupted {
            let _ = writeln!(o, "  interrupted (SIGINT): what was measured until then");
        }
        let dirs = i.rw.dirs();
        for &d in dirs {
            write_rate(&mut o, DIR_NAMES[d], &self.dirs[d], self.runtime_s);
        }
        if dirs.len() > 1 {
            write_rate(&mut o, "total", &self.all, self.runtime_s);
        }
        if self.threads.len() > 1 {
            for (n, t) in self.threads.iter().enumerate() {
                let lat = t
                    .all
                    .lat
                    .map_or("-".to_string(), |l| format!("avg={} p99={}", us(l.mean), us(l.pct[2])));
                let _ = writeln!(
                    o,
                    "  thread {n}: IOPS={}, BW={:.1}MiB/s, lat (usec): {lat}, errors={}",
                    si_count(t.all.iops),
                    t.all.mib_per_s,
                    t.errors
                );
            }
        }
        let c = &self.cpu;
        let _ = writeln!(
            o,
            "  cpu: usr={:.2}s sys={:.2}s ({:.1}% of one CPU), peak memory {} MiB",
            c.user_s,
            c.sys_s,
            c.percent(),
            c.max_rss_kib.div_ceil(1024)
        );
        if let Some(p) = &self.polls {
            let _ = writeln!(
                o,
                "  polls: {} ({} idle: nothing submitted or completed), idle {} of the polling time",
                si_count(p.polls as f64),
                si_count(p.empty as f64),
                p.idle_percent().map_or("-".to_string(), |v| format!("{v:.1}%"))
            );
        }
        let _ = writeln!(o, "  errors: {}", self.errors);
        for (t, e) in &self.error_samples {
            let _ = writeln!(o, "    thread {t}: {} of LBA {}: {}", DIR_NAMES[e.dir], e.lba, e.status);
        }
        if self.errors > self.error_samples.len() as u64 {
            let _ = writeln!(o, "    ... and {} more", self.errors - self.error_samples.len() as u64);
        }
        for (n, t) in self.threads.iter().enumerate() {
            if let Some(why) = &t.fatal {
                let _ = writeln!(o, "  thread {n} stopped early: {why}");
            }
        }
        o
    }

    /// The report for scripts: one JSON object.
    pub fn json(&self) -> Value {
        let i = &self.info;
        let mut v = json!({
            "rw": i.rw.name(),
            "bs": i.bs,
            "qd": i.qd,
            "qd_effective": i.qd_effective,
            "threads": i.threads,
            "rwmixread": if i.rw.mixed() { Value::from(i.rwmixread) } else { Value::Null },
            "bssplit": i.bssplit.as_ref().map_or(Value::Null, |b| json!(b.0)),
            "size_based": i.size_based,
            "interrupted": i.interrupted,
            "seed": i.seed,
            "cpus_allowed": i.cpus_allowed.as_ref().map_or(Value::Null, |(c, _)| json!(c.0)),
            "backend": i.backend,
            "device": i.device,
            "nsid": i.nsid,
            "block_size": i.block_size,
            "offset": i.offset,
            "size": i.size,
            "ramp_s": i.ramp_s,
            "runtime_s": round3(self.runtime_s),
            "clock": i.clock,
            "instant_now_ns": round3(i.instant_now_ns),
            "completions": i.completions,
            "shadow_doorbells": i.shadow_doorbells,
            "ios": self.all.ios,
            "iops": round3(self.all.iops),
            "mib_per_s": round3(self.all.mib_per_s),
            "lat_us": self.all.lat.map_or(Value::Null, |l| l.json()),
            "read": self.dirs[READ].json(),
            "write": self.dirs[WRITE].json(),
            "trim": self.dirs[TRIM].json(),
            "cpu": {
                "user_s": round3(self.cpu.user_s),
                "sys_s": round3(self.cpu.sys_s),
                "percent": round3(self.cpu.percent()),
            },
            "max_rss_kib": self.cpu.max_rss_kib,
            "polls": polls_json(self.polls.as_ref()),
            "errors": self.errors,
        });
        let samples: Vec<Value> = self
            .error_samples
            .iter()
            .map(|(t, e)| {
                json!({
                    "thread": t,
                    "op": DIR_NAMES[e.dir],
                    "lba": e.lba,
                    "status": e.status.to_string(),
                })
            })
            .collect();
        let threads: Vec<Value> = self
            .threads
            .iter()
            .enumerate()
            .map(|(n, t)| {
                let mut r = t.all.json();
                r["thread"] = n.into();
                r["errors"] = t.errors.into();
                r["stopped"] = t.fatal.clone().map_or(Value::Null, Value::String);
                r["cpus"] = t.cpus.as_ref().map_or(Value::Null, |c| json!(c));
                r["interrupt_cpu"] = t.interrupt_cpu.map_or(Value::Null, |c| json!(c));
                r["polls"] = polls_json(t.polls.as_ref());
                r
            })
            .collect();
        v["error_samples"] = Value::Array(samples);
        v["per_thread"] = Value::Array(threads);
        v
    }
}

/// A spinning run's polls as JSON (`{polls, empty, idle_percent}`), `null` when none spun.
fn polls_json(p: Option<&PollStats>) -> Value {
    p.map_or(Value::Null, |p| {
        json!({
            "polls": p.polls,
            "empty": p.empty,
            "idle_percent": p.idle_percent().map_or(Value::Null, round3),
        })
    })
}

/// fio's `read: IOPS=..., BW=...` block with latency lines.
fn write_rate(o: &mut String, name: &str, r: &Rate, runtime_s: f64) {
    let _ = writeln!(
        o,
        "  {name}: IOPS={}, BW={:.1}MiB/s ({:.1}MB/s)({}/{}msec)",
        si_count(r.iops),
        r.mib_per_s,
        r.mib_per_s * 1.048_576,
        human_bytes(r.bytes),
        (runtime_s * 1000.0).round()
    );
    if let Some(l) = &r.lat {
        let _ = writeln!(
            o,
            "    lat (usec): min={}, max={}, avg={}, stdev={}",
            us(l.min),
            us(l.max),
            us(l.mean),
            us(l.stdev)
        );
        let pct: Vec<String> = r
            .percentiles
            .iter()
            .map(|&(p, v)| format!("{}={}", percentile_name(p), us(v)))
            .collect();
        let _ = writeln!(o, "    lat percentiles (usec): {}", pct.join(", "));
    }
}

/// A byte count in binary units with one decimal, as fio prints totals (`192MiB`).
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v >= 100.0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// Microseconds with precision that fits their size: `3.27`, `86.4`, `1287`.
fn us(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// A JSON number rounded to three decimals.
fn round3(v: f64) -> Value {
    let r = (v * 1000.0).round() / 1000.0;
    serde_json::Number::from_f64(r).map_or(Value::Null, Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::IoStatus;

    fn info(rw: Rw, threads: usize) -> RunInfo {
        RunInfo {
            rw,
            rwmixread: 70,
            bs: 4096,
            qd: 32,
            qd_effective: 32,
            threads,
            backend: "vfio".into(),
            device: "0000:00:05.0".into(),
            nsid: 1,
            block_size: 4096,
            offset: 0,
            size: 1 << 30,
            time_s: 2.0,
            ramp_s: 0.0,
            clock: "tsc",
            instant_now_ns: 25.0,
            completions: "spin",
            shadow_doorbells: None,
            name: "perf".into(),
            bssplit: None,
            percentiles: PERCENTILES.iter().map(|p| p.0).collect(),
            size_based: None,
            interrupted: false,
            cpus_allowed: None,
            seed: 1,
            group_reporting: false,
        }
    }

    /// A thread that did `n` reads and `w` writes at latencies 10..=10+n-1 µs, at 2 ticks
    /// per ns, over 2 s.
    fn thread(n: u64, w: u64) -> ThreadStats {
        let mut s = ThreadStats::new(2_000_000_000);
        for (d, count) in [(READ, n), (WRITE, w)] {
            for k in 0..count {
                let ticks = (10_000 + k * 1000) * 2;
                s.latency[d].record(ticks).unwrap();
                s.ios[d] += 1;
                s.bytes[d] += 4096;
                s.min_max[d] = (s.min_max[d].0.min(ticks), s.min_max[d].1.max(ticks));
            }
        }
        s
    }

    #[test]
    fn threads_merge_and_convert_to_microseconds() {
        let mut a = thread(100, 0);
        a.errors = 1;
        a.error_samples.push(ErrorSample {
            dir: READ,
            lba: 1000,
            status: IoStatus::Os(libc::EIO),
        });
        let b = thread(100, 0);
        let cpu = CpuUse {
            user_s: 0.5,
            sys_s: 1.0,
            wall_s: 2.0,
            max_rss_kib: 4096,
        };
        let s = Summary::new(info(Rw::Randread, 2), &[a, b], 2.0, 2.0, cpu);
        assert_eq!(s.all.ios, 200);
        assert!((s.runtime_s - 2.0).abs() < 1e-9);
        assert!((s.all.iops - 100.0).abs() < 1e-9);
        assert!((s.all.mib_per_s - 100.0 * 4096.0 / 1048576.0).abs() < 1e-9);
        let l = s.all.lat.unwrap();
        assert!((l.min - 10.0).abs() < 1e-9 && (l.max - 109.0).abs() < 1e-9, "{l:?}");
        assert!((l.mean - 59.5).abs() < 0.1, "{l:?}");
        assert!((l.pct[0] - 59.0).abs() < 0.2 && (l.pct[2] - 108.0).abs() < 0.2, "{l:?}");
        assert!((s.cpu.percent() - 75.0).abs() < 1e-9);
        assert!(s.failed());
        assert_eq!(s.threads.len(), 2);
        assert!((s.threads[0].all.iops - 50.0).abs() < 1e-9);

        let text = s.human();
        assert!(
            text.starts_with("randread: bs=4KiB qd=32 threads=2 backend=vfio dev=0000:00:05.0 nsid=1\n"),
            "{text}"
        );
        for want in [
            "  read: IOPS=100, BW=0.4MiB/s",
            "lat (usec): min=10.0, max=109.0, avg=59.5",
            "lat percentiles (usec): 50.00th=59.0, 90.00th=",
            "99.99th=",
            "  thread 1: IOPS=50,",
            "  cpu: usr=0.50s sys=1.00s (75.0% of one CPU), peak memory 4 MiB",
            "  errors: 1\n    thread 0: read of LBA 1000: Input/output error (os error 5)",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        assert!(!text.contains("write:"), "{text}");
    }

    #[test]
    fn json_has_every_key() {
        let s = Summary::new(info(Rw::Randrw, 1), &[thread(10, 5)], 2.0, 2.0, CpuUse::default());
        let v = s.json();
        for key in [
            "rw",
            "bs",
            "qd",
            "threads",
            "backend",
            "device",
            "runtime_s",
            "ios",
            "iops",
            "mib_per_s",
            "lat_us",
            "read",
            "write",
            "cpu",
            "errors",
            "error_samples",
            "per_thread",
            "rwmixread",
            "clock",
            "polls",
        ] {
            assert!(v.get(key).is_some(), "{key} missing from {v}");
        }
        for key in ["min", "mean", "max", "p50", "p90", "p99", "p99_9", "p99_99"] {
            assert!(v["lat_us"][key].is_number(), "lat_us.{key} in {v}");
        }
        for key in ["user_s", "sys_s", "percent"] {
            assert!(v["cpu"][key].is_number(), "cpu.{key}");
        }
        assert_eq!(
            (v["rw"].as_str(), v["ios"].as_u64(), v["rwmixread"].as_u64()),
            (Some("randrw"), Some(15), Some(70))
        );
        assert_eq!(
            (v["read"]["ios"].as_u64(), v["write"]["ios"].as_u64()),
            (Some(10), Some(5))
        );
        assert_eq!(v["per_thread"][0]["thread"], 0);
        assert!(v["per_thread"][0]["lat_us"]["p99"].is_number());
        let text = s.human();
        assert!(text.contains("  read: IOPS") && text.contains("  write: IOPS") && text.contains("  total: IOPS"));
        assert!(
            !text.contains("thread 0:"),
            "no per-thread lines for one thread: {text}"
        );
        assert!(!s.failed());

        // No I/O at all: latencies are null, not zeros.
        let none = Summary::new(info(Rw::Read, 1), &[thread(0, 0)], 1.0, 1.0, CpuUse::default());
        assert!(none.json()["lat_us"].is_null());
        assert!(none.human().contains("IOPS=0"));
        // Nobody spun: no polls.
        assert!(v["polls"].is_null() && v["per_thread"][0]["polls"].is_null(), "{v}");
        assert!(!text.contains("polls:"), "{text}");
    }

    #[test]
    fn spinning_threads_polls_add_up() {
        let (mut a, mut b) = (thread(10, 0), thread(10, 0));
        a.polls = Some(PollStats {
            polls: 100,
            empty: 90,
            ticks: 1000,
            empty_ticks: 600,
        });
        b.polls = Some(PollStats {
            polls: 50,
            empty: 10,
            ticks: 1000,
            empty_ticks: 200,
        });
        let s = Summary::new(info(Rw::Randread, 2), &[a, b], 2.0, 2.0, CpuUse::default());
        let v = s.json();
        assert_eq!(v["polls"], json!({"polls": 150, "empty": 100, "idle_percent": 40.0}));
        assert_eq!(v["per_thread"][0]["polls"]["idle_percent"], 60.0);
        assert_eq!(v["per_thread"][1]["polls"]["empty"], 10);
        let text = s.human();
        assert!(
            text.contains("  polls: 150 (100 idle: nothing submitted or completed), idle 40.0% of the polling time"),
            "{text}"
        );
    }

    #[test]
    fn synchronous_backends_say_what_depth_ran() {
        let mut i = info(Rw::Read, 1);
        i.backend = "psync".into();
        i.qd_effective = 1;
        let s = Summary::new(i, &[thread(1, 0)], 1.0, 1.0, CpuUse::default());
        assert!(
            s.header()
                .contains("qd=32 (runs as 1: psync completes each I/O before the next)"),
            "{}",
            s.header()
        );
        assert_eq!(s.json()["qd_effective"], 1);
    }

    #[test]
    fn number_formats() {
        assert_eq!(us(3.271), "3.27");
        assert_eq!(us(86.44), "86.4");
        assert_eq!(us(1287.4), "1287");
        assert_eq!(human_bytes(192 << 20), "192MiB");
        assert_eq!(human_bytes(1536), "1.5KiB");
        assert_eq!(human_bytes(10), "10B");
        assert_eq!(round3(1.23456), json!(1.235));
    }

    #[test]
    fn percentile_list_sets_the_percentiles_reported() {
        let mut i = info(Rw::Randread, 1);
        i.percentiles = vec![25.0, 99.5, 99.995];
        let s = Summary::new(i, &[thread(100, 0)], 2.0, 2.0, CpuUse::default());
        let text = s.human();
        assert!(
            text.contains("lat percentiles (usec): 25.00th=34.0, 99.50th=109.1, 99.995th=109.1\n"),
            "{text}"
        );
        assert!(!text.contains("50.00th"), "{text}");
        let v = s.json();
        let p = &v["read"]["lat_us"]["percentiles"];
        let near = |key: &str, want: f64| (p[key].as_f64().unwrap() - want).abs() < 0.2;
        assert!(near("25", 34.0) && near("99.5", 109.0) && near("99.995", 109.0), "{v}");
        assert_eq!(p.as_object().unwrap().len(), 3);
        // The fixed keys stay for scripts that read them.
        assert!(v["lat_us"]["p99_99"].is_number());
    }

    #[test]
    fn trims_and_bssplit_report_their_bytes() {
        let mut i = info(Rw::Randtrim, 1);
        i.bssplit = Some(BsSplit(vec![(4096, 50), (65536, 50)]));
        let mut t = ThreadStats::new(2_000_000_000);
        t.ios[TRIM] = 4;
        t.bytes[TRIM] = 2 * 4096 + 2 * 65536;
        for k in 0..4 {
            t.latency[TRIM].record(20_000 + k).unwrap();
        }
        t.min_max[TRIM] = (20_000, 20_003);
        let s = Summary::new(i, &[t], 2.0, 2.0, CpuUse::default());
        let text = s.human();
        assert!(text.starts_with("randtrim: bssplit=4KiB/50:64KiB/50 qd=32"), "{text}");
        assert!(
            text.contains("  trim: IOPS=2, BW=0.1MiB/s (0.1MB/s)(136KiB/2000msec)"),
            "{text}"
        );
        assert!(!text.contains("  read:") && !text.contains("  total:"), "{text}");
        let v = s.json();
        assert_eq!(
            (v["trim"]["ios"].as_u64(), v["trim"]["bytes"].as_u64()),
            (Some(4), Some(139_264))
        );
        assert_eq!(v["bssplit"], json!([[4096, 50], [65536, 50]]));
    }
}
