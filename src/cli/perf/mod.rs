//! `ironvme perf`: a time-based I/O benchmark in the manner of fio and `spdk_nvme_perf`,
//! on any backend.
//!
//! `--rw`, `--bs`, `--qd` (fio's iodepth, per thread), `--threads` (numjobs), `--time`
//! (runtime), `--ramp` (ramp_time), `--size`, `--offset` and `--rwmixread` mean what fio
//! means by them, and fio's own spellings are taken too (`--iodepth`, `--numjobs`,
//! `--runtime`, `--ramp_time`, `--randseed`, `--bssplit`, `--percentile_list`,
//! `--cpus_allowed`, `--group_reporting`, `--name`, `--output-format`): every thread runs
//! the whole job on its own queue over the same region; sequential offsets wrap at the
//! end of the region (`rw`/`readwrite` keeps one position for reads and one for writes,
//! as fio does); random offsets are uniform over it and aligned to the smallest I/O size
//! from `--offset`; `--size` defaults to the whole namespace from `--offset` on.
//!
//! - **Size-based runs.** `--size` without `--time` runs until every thread has
//!   transferred `--size` bytes (after the ramp), as fio does without `runtime`; random
//!   offsets are drawn with replacement (fio's `norandommap`), so some blocks are visited
//!   twice and others not at all.
//! - **Trims.** `--rw trim|randtrim` deallocates each I/O's blocks ([`crate::block::Op::Deallocate`]:
//!   NVMe Dataset Management with the deallocate attribute, a discard on block devices, a
//!   punched hole in a file); a backend or device that cannot is refused before the run.
//! - **Zoned namespaces** (found by their zoned Identify data, on a PCI address or an NVMe
//!   passthrough node): reads stay inside one zone; writes are Zone Appends
//!   ([`crate::block::Op::ZoneAppend`]) to zones each thread owns, filled one at a time
//!   and reset ([`crate::block::Op::ZoneReset`]) when the thread comes back to them
//!   ([`zones`]); the region must be whole zones, and trims are refused. Writing a zoned
//!   block device through the kernel's block layer (uring, psync) is refused.
//! - **`--bssplit`** draws each I/O's size by weight (`4k/50:64k/50`); `--bs` is then
//!   ignored, buffers are as large as the largest size, and offsets align to the smallest.
//! - **`--cpus_allowed`** pins every I/O thread to the CPUs given (`0-1,3`), or with
//!   `--cpus_allowed_policy split` each thread to one of them in turn, as fio does. A
//!   spinning thread then keeps its CPU; without pinning the scheduler may move it.
//! - **Ctrl-C** (SIGINT) ends the measured window at once: the threads stop submitting,
//!   drain, and the report covers what was measured until then; the exit status is 0
//!   unless I/Os failed. A second Ctrl-C kills the process. The I/O threads block SIGINT,
//!   so their system calls are never interrupted.
//! - **Output.** Text like fio's (`--output-format normal`, the default), ironvme's own
//!   JSON object (`--json`), or fio's JSON (`--output-format json` or `json+`, see
//!   [`fio`]).
//!
//! # Decisions
//!
//! - **Measurement.** Latency is submit to completion of each I/O, in a per-thread
//!   [`hdrhistogram`] with 3 significant figures, allocated before the run and merged at
//!   the end; min and max are exact. I/Os count when they *complete* inside the measured
//!   window (after the ramp); failed I/Os are counted as errors, not in IOPS or latency.
//!   The main thread keeps the time with `Instant` and publishes the window's start and
//!   end as clock readings ([`engine::Phases`]); IOPS is I/Os over the window, CPU is
//!   `getrusage(RUSAGE_SELF)` over the same window.
//! - **Clock.** Two readings per I/O: [`clock`] picks `rdtsc` when `Instant::now()` is
//!   expensive here (a system call under TCG), and converts with a rate measured over the
//!   whole run.
//! - **Offsets.** SplitMix64 with a multiply-shift bound ([`workload`]); each thread seeds
//!   it with `--seed` + its index, so runs repeat (fio's `randrepeat`).
//! - **The loop** ([`engine`]) keeps `qd` I/Os outstanding, spinning on `poll` for the
//!   polled backends (VFIO, io_uring, io_uring passthrough: completions appear in shared
//!   memory) — the lowest latency, at the price of one busy CPU per thread, as SPDK does.
//!   The synchronous backends (psync, ioctl) do each I/O inside `ring`, so a deeper queue
//!   only delays completions that have already happened: they run at depth 1 per thread,
//!   as fio's sync engines do, and the report says so. Use `--threads` for parallelism
//!   there. `--completions interrupt` makes VFIO sleep on each I/O completion queue's
//!   MSI-X eventfd, and the io_uring backends (uring, uring-cmd) sleep in io_uring_enter,
//!   like fio's default; `hybrid` spins first for `--hybrid-spin-us`. The synchronous
//!   backends can only wait, and the other modes are refused there. The report gives the
//!   mode and the CPU the run used.
//! - **Writes** need `--allow-write` unless DEV is a regular file ([`target`]). Write
//!   buffers are filled once with random bytes, never per I/O.
//! - **Failures.** Every failed I/O is counted and the first few are shown with their
//!   decoded status; the report is printed either way, and the exit status is 1 if
//!   anything failed.

pub mod clock;
pub mod engine;
pub mod fio;
pub mod report;
pub mod workload;
pub mod zones;

use self::clock::{Clock, ClockSource, Ticks};
use self::engine::{Completions, LoopConfig, NOT_YET, Phases, ThreadStats};
use self::report::{CpuUse, PERCENTILES, RunInfo, Summary};
use self::workload::{Generator, Region, Rw, SplitMix64};
use self::zones::ZoneWriter;
use super::io_shared::cpus::{allowed_cpus, check_allowed, pin_current_thread};
use super::io_shared::units::{
    BsSplit, CpuList, PercentileList, iec_exact, parse_bssplit, parse_cpu_list, parse_duration, parse_nonzero_size,
    parse_percentile_list, parse_positive_duration, parse_size, si_count,
};
use super::io_shared::zones::{ZoneLayout, ZoneSpan};
use super::io_shared::{BACKEND_HELP, IO_DEV_HELP, region_bytes, rusage_self, target};
use super::progress::Progress;
use super::{CliError, parse_nsid, write_json};
use crate::block::{BlockQueue, NamespaceInfo};
use crate::nvme::hw::DmaBuf;
use crate::{Backend, Device, IoQueue};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Latencies above this are recorded as this (an I/O that slow has long been aborted).
const MAX_LATENCY: Duration = Duration::from_secs(600);

/// `--time` above which a live IOPS line is shown on a terminal.
const PROGRESS_AFTER: Duration = Duration::from_secs(3);

/// The measured time when neither `--time` nor `--size` says how long to run.
const DEFAULT_TIME: Duration = Duration::from_secs(10);
/// `--hybrid-spin-us`: about one 4 KiB read's device latency on a fast NVMe drive.
const DEFAULT_HYBRID_SPIN_US: u64 = 20;

/// How often the main thread looks for Ctrl-C and for threads that are done.
const WATCH_STEP: Duration = Duration::from_millis(10);

/// `--output-format`: fio's report formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// The text report.
    Normal,
    /// fio's JSON.
    Json,
    /// fio's JSON with each latency histogram's bins.
    #[value(name = "json+")]
    JsonPlus,
}

/// `--cpus_allowed_policy`: how the threads share `--cpus_allowed` (fio's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CpusPolicy {
    /// Every thread may run on every CPU of the list.
    Shared,
    /// Thread N runs on the list's CPU N (modulo its length).
    Split,
}

impl CpusPolicy {
    /// fio's name.
    pub const fn name(self) -> &'static str {
        match self {
            CpusPolicy::Shared => "shared",
            CpusPolicy::Split => "split",
        }
    }
}

/// Arguments of `perf`.
#[derive(Debug, Args)]
pub struct PerfArgs {
    /// The device.
    #[arg(value_name = "DEV", help = IO_DEV_HELP)]
    pub dev: String,
    /// The workload, as fio's --rw: read, write, randread, randwrite, randrw, rw
    /// (readwrite: sequential mixed), trim, randtrim (deallocate/discard: refused where
    /// the backend cannot). On a zoned namespace writes are Zone Appends to each thread's
    /// own zones, which it resets as it comes back to them; trims are refused.
    #[arg(long, alias = "readwrite", value_enum, value_name = "RW")]
    pub rw: Rw,
    /// Bytes per I/O (fio's bs): a multiple of the logical block size, at most the
    /// largest transfer; binary suffixes (4k = 4096, 1m).
    #[arg(long, alias = "blocksize", value_name = "SIZE", default_value = "4k", value_parser = parse_nonzero_size)]
    pub bs: u64,
    /// I/O sizes by weight, as fio's bssplit: SIZE/PERCENT entries separated by `:`
    /// (`4k/50:64k/50`); an entry without a percentage shares what is left. Replaces
    /// --bs.
    #[arg(long, value_name = "SPLIT", value_parser = parse_bssplit)]
    pub bssplit: Option<BsSplit>,
    /// I/Os kept outstanding per thread (fio's iodepth).
    #[arg(long, alias = "iodepth", value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub qd: u32,
    /// Threads, each with its own queue (fio's numjobs).
    #[arg(long, alias = "numjobs", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,
    /// Measured run time (fio's runtime, time-based): seconds, or with ms/s/m/h. Default:
    /// 10 s, unless --size is given without it: then the run is size-based, and each
    /// thread stops after --size bytes, as fio's jobs do without runtime.
    #[arg(long, alias = "runtime", value_name = "SECS", value_parser = parse_positive_duration)]
    pub time: Option<Duration>,
    /// Percentage of reads in randrw and rw.
    #[arg(long, value_name = "PCT", default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmixread: u8,
    /// Run before the measured time starts, excluded from the statistics (fio's
    /// ramp_time).
    #[arg(long, alias = "ramp_time", value_name = "SECS", default_value = "0", value_parser = parse_duration)]
    pub ramp: Duration,
    #[arg(long, value_name = "B", help = BACKEND_HELP)]
    /// The backend.
    pub backend: Option<Backend>,
    /// Namespace ID (decimal or 0x hex). Default: the device's first namespace.
    #[arg(long, short = 'n', value_name = "N", value_parser = parse_nsid)]
    pub nsid: Option<u32>,
    /// Bytes of the region to work on (fio's size). Default: the namespace from --offset
    /// to its end. Rounded down to a multiple of the (smallest) I/O size. Without --time,
    /// also the bytes each thread transfers (a size-based run).
    #[arg(long, value_name = "BYTES", value_parser = parse_nonzero_size)]
    pub size: Option<u64>,
    /// Byte offset of the region (a multiple of the logical block size).
    #[arg(long, value_name = "BYTES", default_value = "0", value_parser = parse_size)]
    pub offset: u64,
    /// Seed of the random offsets, sizes and directions (fio's randseed); thread N uses
    /// SEED + N. Runs with the same seed repeat the same offsets.
    #[arg(long, alias = "randseed", value_name = "S", default_value_t = 0x1234_5678)]
    pub seed: u64,
    /// The latency percentiles reported, as fio's percentile_list: `99:99.9:99.99`
    /// (default: 50, 90, 99, 99.9 and 99.99 in the text and --json; fio's 17 in
    /// --output-format json).
    #[arg(long = "percentile_list", alias = "percentile-list", value_name = "LIST",
          value_parser = parse_percentile_list)]
    pub percentile_list: Option<PercentileList>,
    /// Pin the I/O threads to these CPUs, as fio's cpus_allowed: `0-1,3`. Worth doing
    /// when the threads spin (--completions spin).
    #[arg(long = "cpus_allowed", alias = "cpus-allowed", value_name = "CPUS", value_parser = parse_cpu_list)]
    pub cpus_allowed: Option<CpuList>,
    /// With --cpus_allowed: `shared` (every thread on all of them, fio's default) or
    /// `split` (thread N on the Nth CPU of the list, wrapping).
    #[arg(
        long = "cpus_allowed_policy",
        alias = "cpus-allowed-policy",
        value_enum,
        value_name = "P",
        default_value = "shared",
        requires = "cpus_allowed"
    )]
    pub cpus_allowed_policy: CpusPolicy,
    /// The job's name in fio's JSON (fio's name).
    #[arg(long, value_name = "NAME", default_value = "perf")]
    pub name: String,
    /// In fio's JSON, one job for all threads instead of one per thread (fio's
    /// group_reporting).
    #[arg(long = "group_reporting", alias = "group-reporting")]
    pub group_reporting: bool,
    /// Allow a write or trim workload on a device (it destroys the data there). Regular
    /// files need no confirmation.
    #[arg(long)]
    pub allow_write: bool,
    /// Print ironvme's JSON object instead of text.
    #[arg(long, conflicts_with = "output_format")]
    pub json: bool,
    /// Report format, as fio's --output-format: `normal` (text), `json` (fio's JSON shape:
    /// jobs[].read.iops, clat_ns.percentile, ...), `json+` (with the latency bins).
    #[arg(long = "output-format", alias = "output_format", value_enum, value_name = "FMT")]
    pub output_format: Option<OutputFormat>,
    /// Timestamp source: `instant` or `tsc` (default: tsc when Instant::now() is
    /// expensive here).
    #[arg(long, value_enum, value_name = "C", hide = true)]
    pub clock: Option<ClockSource>,
    /// How to wait for completions: `spin` polls in a loop (lowest latency, one busy CPU
    /// per thread; SPDK's way); `interrupt` (or `wait`) sleeps until the completion's
    /// interrupt (VFIO: MSI-X, one eventfd per I/O completion queue; io_uring:
    /// io_uring_enter with GETEVENTS, as fio's io_uring engines do by default); `hybrid`
    /// keeps polling for --hybrid-spin-us once the polls come back empty, then sleeps as
    /// `interrupt` does. Default: spin, except on the synchronous backends (psync, ioctl), which
    /// complete inside the submission and can only wait (`interrupt`). A mode the backend
    /// cannot do is refused.
    #[arg(long, value_enum, value_name = "MODE")]
    pub completions: Option<Completions>,
    /// `--completions hybrid`: how long to keep polling once the polls come back empty
    /// before sleeping, in µs (other modes ignore it).
    #[arg(long, value_name = "US", default_value_t = DEFAULT_HYBRID_SPIN_US)]
    pub hybrid_spin_us: u64,
    /// VFIO: use shadow doorbells (Doorbell Buffer Config) when the controller has them:
    /// doorbell values go to a memory page, and to the registers only when the
    /// controller's EventIdx asks. Off by default (on QEMU's controller they cost more than
    /// they save); the JSON report's `shadow_doorbells` says whether they were used.
    #[arg(long)]
    pub shadow_doorbells: bool,
}

/// A validated job: what every thread runs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The workload.
    pub rw: Rw,
    /// Reads in percent (randrw, rw).
    pub rwmixread: u8,
    /// Bytes per I/O: the largest size with --bssplit (the size of every buffer).
    pub bs: u64,
    /// The I/O sizes in bytes and their weights in percent (one entry of 100 without
    /// --bssplit).
    pub sizes: Vec<(u64, u8)>,
    /// --bssplit, as given.
    pub bssplit: Option<BsSplit>,
    /// Queue depth asked for.
    pub qd: usize,
    /// Queue depth run: `qd`, or 1 on synchronous backends.
    pub qd_effective: usize,
    /// How the loop waits.
    pub completions: Completions,
    /// `--completions hybrid`: polling before sleeping.
    pub hybrid_spin: Duration,
    /// Threads.
    pub threads: usize,
    /// Namespace.
    pub nsid: u32,
    /// Logical block size.
    pub block_size: u32,
    /// The region in LBAs.
    pub region: Region,
    /// Measured time; `None` for a size-based run.
    pub time: Option<Duration>,
    /// Bytes each thread transfers in a size-based run.
    pub budget: Option<u64>,
    /// Ramp time.
    pub ramp: Duration,
    /// Seed of thread 0.
    pub seed: u64,
    /// The percentiles of the text and `--json` reports.
    pub percentiles: Vec<f64>,
    /// The percentiles of fio's JSON.
    pub fio_percentiles: Vec<f64>,
    /// CPUs to pin the threads to, and how.
    pub cpus: Option<(CpuList, CpusPolicy)>,
    /// On a zoned namespace, its zones ([`Plan::on_zones`]).
    pub zones: Option<PlanZones>,
    /// The region as asked, in bytes (offset, size), before rounding to whole I/Os.
    pub region_bytes: (u64, u64),
}

/// A run on a zoned namespace: reads stay inside a zone, writes are Zone Appends
/// ([`zones`]).
#[derive(Clone, Debug)]
pub struct PlanZones {
    /// ZSZE in logical blocks.
    pub zone_blocks: u64,
    /// Each thread's zones as (ZSLBA, ZCAP, blocks written), when the workload writes:
    /// thread `t` has the region's writable zones `t`, `t + threads`, ...
    pub writers: Option<Vec<Vec<ZoneSpan>>>,
}

impl Plan {
    /// Checks the arguments against the namespace and the backend.
    ///
    /// Errors: [`CliError::Invalid`] naming the argument and the limit it breaks.
    pub fn new(a: &PerfArgs, ns: &NamespaceInfo, backend: Backend) -> Result<Plan, CliError> {
        let block = u64::from(ns.block_size);
        let capacity = ns.capacity_bytes();
        let invalid = |s: String| Err(CliError::Invalid(s));
        let sizes = a.bssplit.as_ref().map_or_else(|| vec![(a.bs, 100)], |b| b.0.clone());
        let what = if a.bssplit.is_some() { "--bssplit size" } else { "--bs" };
        for &(bs, _) in &sizes {
            if bs % block != 0 {
                return invalid(format!(
                    "{what} {bs} is not a multiple of the namespace's logical block size ({block} bytes)"
                ));
            }
            if a.rw.trims() {
                // Nothing is transferred; one Dataset Management range holds 2^32 - 1 blocks.
                if bs / block > u64::from(u32::MAX) {
                    return invalid(format!(
                        "{what} {} is more blocks than one deallocate range holds ({})",
                        iec_exact(bs),
                        u32::MAX
                    ));
                }
            } else if bs > ns.max_transfer_bytes as u64 {
                return invalid(format!(
                    "{what} {} exceeds the largest transfer of one command here ({}, {} bytes: MDTS or the {backend} \
                     backend's limit)",
                    iec_exact(bs),
                    iec_exact(ns.max_transfer_bytes as u64),
                    ns.max_transfer_bytes
                ));
            }
        }
        let min_bs = sizes.iter().map(|s| s.0).min().unwrap_or(a.bs);
        let max_bs = sizes.iter().map(|s| s.0).max().unwrap_or(a.bs);
        if a.rw.trims() && !ns.deallocate {
            return invalid(format!(
                "--rw {}: the {backend} backend cannot deallocate (discard, NVMe Dataset Management) on this \
                 device, so there is nothing to trim with; nothing was run",
                a.rw.name()
            ));
        }
        let (offset, size) = region_bytes(a.offset, a.size, block, capacity)?;
        let granules = size / min_bs;
        if granules * min_bs < max_bs {
            return invalid(format!(
                "the region ({size} bytes from offset {offset}) is smaller than one {what} {} I/O",
                iec_exact(max_bs)
            ));
        }
        let synchronous = matches!(backend, Backend::Psync | Backend::Ioctl);
        let completions = match a.completions {
            None if synchronous => Completions::Interrupt,
            None => Completions::Spin,
            Some(c @ (Completions::Spin | Completions::Hybrid)) if synchronous => {
                return invalid(format!(
                    "--completions {}: the {backend} backend completes each I/O inside its system call, so \
                     there is nothing to poll; it always waits (interrupt, the default there)",
                    c.name()
                ));
            }
            Some(c @ (Completions::Interrupt | Completions::Hybrid))
                if !synchronous && !matches!(backend, Backend::Vfio | Backend::Uring | Backend::UringCmd) =>
            {
                return invalid(format!(
                    "--completions {}: the {backend} backend is opened without interrupt vectors here, so its \
                     completions can only be polled (spin, the default)",
                    c.name()
                ));
            }
            Some(c) => c,
        };
        let (time, budget) = match (a.time, a.size) {
            (Some(t), _) => (Some(t), None),
            (None, Some(_)) => (None, Some(granules * min_bs)),
            (None, None) => (Some(DEFAULT_TIME), None),
        };
        let cpus = match &a.cpus_allowed {
            Some(list) => {
                check_allowed(&format!("--cpus_allowed {}", list.fio()), &list.0)?;
                Some((list.clone(), a.cpus_allowed_policy))
            }
            None => None,
        };
        let default_text: Vec<f64> = PERCENTILES.iter().map(|p| p.0).collect();
        Ok(Plan {
            rw: a.rw,
            rwmixread: a.rwmixread,
            bs: max_bs,
            sizes,
            bssplit: a.bssplit.clone(),
            qd: a.qd as usize,
            qd_effective: if synchronous { 1 } else { a.qd as usize },
            completions,
            hybrid_spin: Duration::from_micros(a.hybrid_spin_us),
            threads: a.threads as usize,
            nsid: ns.nsid,
            block_size: ns.block_size,
            region: Region {
                first_lba: offset / block,
                granule: min_bs / block,
                granules,
            },
            time,
            budget,
            ramp: a.ramp,
            seed: a.seed,
            percentiles: a.percentile_list.as_ref().map_or(default_text, |l| l.0.clone()),
            fio_percentiles: a
                .percentile_list
                .as_ref()
                .map_or_else(fio::default_percentiles, |l| l.0.clone()),
            cpus,
            zones: None,
            region_bytes: (offset, size),
        })
    }

    /// The plan on a zoned namespace with zones `layout` ([`PlanZones`]).
    ///
    /// Errors: [`CliError::Invalid`] for trims (zones are emptied with Reset Zone); an
    /// I/O larger than a zone; an offset that starts no zone; for writes, a region that
    /// is not whole writable zones ([`ZoneLayout::spans_in`]), fewer of them than
    /// threads, an I/O larger than a zone's capacity or than the Zone Append Size Limit,
    /// too few active zones left for two per thread ([`ZoneLayout::writable_at_once`]);
    /// [`CliError::Unsupported`] for writes with Variable Zone Capacity.
    pub fn on_zones(mut self, layout: &ZoneLayout, ns: &NamespaceInfo) -> Result<Plan, CliError> {
        let invalid = |s: String| Err(CliError::Invalid(s));
        let rw = self.rw.name();
        if self.rw.trims() {
            return invalid(format!(
                "--rw {rw}: a zoned namespace is emptied zone by zone with Reset Zone (ironvme zns reset), not \
                 deallocated; nothing was run"
            ));
        }
        let block = u64::from(self.block_size);
        let largest = self.bs / block;
        let zb = layout.zone_blocks;
        if largest > zb {
            return invalid(format!(
                "--bs {} is larger than a zone ({zb} blocks): an I/O cannot cross a zone boundary",
                iec_exact(self.bs)
            ));
        }
        // Reads moved back to stay in their zone stay in the region too.
        if self.region.first_lba % zb != 0 {
            return invalid(format!(
                "--offset {} on a zoned namespace must start a zone (a multiple of {zb} blocks)",
                self.region.first_lba * block
            ));
        }
        let what = format!("perf --rw {rw}");
        let writers = if self.rw.writes() {
            if layout.variable_capacity {
                return Err(CliError::Unsupported(format!(
                    "{what}: the namespace's zone capacities may change at every reset (Variable Zone Capacity, ZOC \
                     bit 0), which perf's writes do not follow"
                )));
            }
            if ns.metadata.bytes > 0 {
                return Err(CliError::Unsupported(format!(
                    "{what}: Zone Append on a namespace whose blocks carry metadata is not supported"
                )));
            }
            // The region as asked (not rounded to --bs: appends place themselves).
            let (offset, size) = self.region_bytes;
            let spans = layout.spans_in(offset / block, size / block, &what, true)?;
            if spans.len() < self.threads {
                return invalid(format!(
                    "--threads {}: every thread writes zones of its own, and the region has {} writable zones",
                    self.threads,
                    spans.len()
                ));
            }
            // Thread t's zones: every threads-th one from the t-th, starting with one it
            // holds partly written, if any (where an earlier run stopped), so that it goes
            // on filling it rather than holding it open while it fills another.
            let threads = self.threads;
            let writers: Vec<Vec<ZoneSpan>> = (0..threads)
                .map(|t| {
                    let mut mine: Vec<ZoneSpan> = spans.iter().skip(t).step_by(threads).copied().collect();
                    if let Some(first) = mine.iter().position(ZoneSpan::partly_written) {
                        mine.rotate_left(first);
                    }
                    mine
                })
                .collect();
            // Each thread holds two zones active (the one it fills, the one whose last
            // appends are completing), and its other partly written zones until it comes
            // back to them; zones active outside the region count against the limit.
            let need: usize = writers
                .iter()
                .map(|mine| 1 + mine.iter().filter(|z| z.partly_written()).count().max(1))
                .sum();
            let room = layout.writable_at_once(offset / block, size / block, need, &what)?;
            if room < need {
                return invalid(format!(
                    "--threads {}: the threads hold up to {need} zones active at once (two each, and those of their \
                     zones already partly written), and the controller has room for {room} (at most {} active and {} \
                     open at once): use fewer threads, or reset or finish open zones",
                    self.threads,
                    layout.max_active.map_or("any number".into(), |n| n.to_string()),
                    layout.max_open.map_or("any number".into(), |n| n.to_string()),
                ));
            }
            let smallest = spans.iter().map(|z| z.capacity).min().unwrap_or(0);
            if largest > smallest {
                return invalid(format!(
                    "--bs {} is larger than the smallest zone capacity in the region ({smallest} blocks)",
                    iec_exact(self.bs)
                ));
            }
            if let Some(limit) = layout.append_limit.filter(|&l| self.bs > l as u64) {
                return invalid(format!(
                    "--bs {}: writes on a zoned namespace are Zone Appends, and the controller's Zone Append Size \
                     Limit (ZASL) is {}",
                    iec_exact(self.bs),
                    iec_exact(limit as u64)
                ));
            }
            Some(writers)
        } else {
            None
        };
        self.zones = Some(PlanZones {
            zone_blocks: layout.zone_blocks,
            writers,
        });
        Ok(self)
    }

    /// The I/O sizes in logical blocks, with their weights.
    pub fn sizes_in_blocks(&self) -> Vec<(u64, u8)> {
        let block = u64::from(self.block_size);
        self.sizes.iter().map(|&(b, p)| (b / block, p)).collect()
    }

    /// Bytes of the region that I/Os cover (a whole number of the smallest I/O size).
    pub fn size(&self) -> u64 {
        self.region.lbas() * u64::from(self.block_size)
    }

    /// Byte offset of the region.
    pub fn offset(&self) -> u64 {
        self.region.first_lba * u64::from(self.block_size)
    }
}

/// What [`execute`] measured.
#[derive(Debug)]
pub struct Outcome {
    /// Each thread's statistics.
    pub stats: Vec<ThreadStats>,
    /// The clock's rate over the run.
    pub ticks_per_ns: f64,
    /// Length of the measured window in seconds: `--time`, or in a size-based run until
    /// the last thread finished; shorter when Ctrl-C ended it.
    pub window_s: f64,
    /// Each thread's measured run in seconds (the window, or in a size-based run until
    /// that thread finished).
    pub runtimes_s: Vec<f64>,
    /// Seconds from the start (ramp included) to the end of the window.
    pub elapsed_s: f64,
    /// CPU use over the measured window.
    pub cpu: CpuUse,
    /// Whether `stop` ended the run early.
    pub interrupted: bool,
}

/// Waits at a barrier once: when told to, or when dropped — also while unwinding from a
/// panic, so a failing thread never leaves the others waiting for it.
struct Arrive<'a>(Option<&'a Barrier>);

impl Arrive<'_> {
    fn arrive(&mut self) {
        if let Some(barrier) = self.0.take() {
            barrier.wait();
        }
    }
}

impl Drop for Arrive<'_> {
    fn drop(&mut self) {
        self.arrive();
    }
}

/// One thread's completed-I/O counter, alone on its cache line.
#[repr(align(64))]
struct Counter(AtomicU64);

/// Runs `plan` on `device`: one queue per thread, started together after every queue
/// and buffer exists. `progress` shows a live IOPS line on stderr. `stop` (set by a
/// SIGINT handler) ends the run early: what was measured until then is returned.
///
/// Errors: [`CliError::Invalid`] when a queue cannot be as deep as asked; [`CliError::Device`]
/// when a queue or the buffers cannot be created, or a thread cannot be pinned.
pub fn execute(
    device: &Device,
    plan: &Plan,
    clock: &Clock,
    progress: bool,
    stop: &AtomicBool,
) -> Result<Outcome, CliError> {
    let n = plan.threads;
    let start = Barrier::new(n + 1);
    let finish = Barrier::new(n + 1);
    let setup_failed = AtomicBool::new(false);
    let counters: Vec<Counter> = (0..n).map(|_| Counter(AtomicU64::new(0))).collect();
    let finished = AtomicUsize::new(0);
    let phases = Phases::default();
    let max_latency = clock.ticks_for(MAX_LATENCY);
    let sizes = plan.sizes_in_blocks();

    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|t| {
                let (start, finish, setup_failed, counter, phases, finished, sizes) = (
                    &start,
                    &finish,
                    &setup_failed,
                    &counters[t].0,
                    &phases,
                    &finished,
                    &sizes,
                );
                s.spawn(move || -> Result<ThreadStats, Option<CliError>> {
                    // Declared in this order so that a panic arrives at `start` first.
                    let mut at_finish = Arrive(Some(finish));
                    let mut at_start = Arrive(Some(start));
                    // Ctrl-C goes to the main thread, never into an I/O system call here.
                    block_sigint();
                    let setup = pin(plan, t).and_then(|cpus| {
                        let (mut q, bufs) = prepare(device, plan, t)?;
                        // Before the start barrier: the sysfs walk stays out of the run.
                        let interrupt_cpu = steer(&mut q, plan, cpus.as_deref(), t);
                        Ok(((q, bufs), cpus, interrupt_cpu))
                    });
                    if setup.is_err() {
                        setup_failed.store(true, Ordering::SeqCst);
                    }
                    at_start.arrive();
                    let ((mut q, bufs), cpus, interrupt_cpu) = match setup {
                        Ok(ready) if !setup_failed.load(Ordering::SeqCst) => ready,
                        other => return Err(other.err()),
                    };
                    let seed = plan.seed.wrapping_add(t as u64);
                    let mut ios = Generator::new(plan.rw, plan.rwmixread, plan.region, sizes, seed);
                    let cfg = LoopConfig {
                        clock,
                        phases,
                        max_latency,
                        completions: plan.completions,
                        hybrid_spin: clock.ticks_for(plan.hybrid_spin),
                        budget: plan.budget,
                        ramps: !plan.ramp.is_zero(),
                        block_size: u64::from(plan.block_size),
                        progress: counter,
                        zone_blocks: plan.zones.as_ref().map(|z| z.zone_blocks),
                    };
                    let mut writer = plan
                        .zones
                        .as_ref()
                        .and_then(|z| z.writers.as_ref())
                        .map(|w| ZoneWriter::new(w[t].iter().copied()));
                    let mut stats = engine::run(&mut q, bufs, &mut ios, writer.as_mut(), cfg);
                    stats.cpus = cpus;
                    stats.interrupt_cpu = interrupt_cpu;
                    finished.fetch_add(1, Ordering::SeqCst);
                    at_finish.arrive();
                    // The queue is deleted here, after the measured window.
                    drop(q);
                    Ok(stats)
                })
            })
            .collect();

        start.wait();
        if setup_failed.load(Ordering::SeqCst) {
            finish.wait();
            let first = handles
                .into_iter()
                .filter_map(|h| h.join().ok()?.err().flatten())
                .next();
            return Err(first.unwrap_or_else(|| CliError::Device("a perf thread could not start".into())));
        }
        let began = Instant::now();
        let bar = match plan.time {
            Some(time) if progress => Progress::timed(plan.ramp + time),
            _ => Progress::hidden(),
        };
        let show = |bar: &Progress, last: &mut (Instant, u64)| {
            if bar.is_drawn() {
                let done: u64 = counters.iter().map(|c| c.0.load(Ordering::Relaxed)).sum();
                let dt = last.0.elapsed().as_secs_f64();
                bar.set(began.elapsed().as_millis() as u64);
                bar.message(format!("IOPS={}", si_count((done - last.1) as f64 / dt.max(1e-3))));
                *last = (Instant::now(), done);
            }
        };
        let mut last = (began, 0);
        let all_done = || finished.load(Ordering::SeqCst) == n;
        let mut interrupted = watch(Some(began + plan.ramp), &all_done, stop, &bar, &mut || {
            show(&bar, &mut last)
        });
        // The measured window: its ends are read on both clocks, so its length is exact
        // and the tick rate is measured over all of it.
        let (usage0, calibration) = (rusage_self(), clock.calibration());
        phases.start(calibration.ticks());
        if !interrupted {
            let deadline = plan.time.map(|t| calibration.instant() + t);
            interrupted = watch(deadline, &all_done, stop, &bar, &mut || show(&bar, &mut last));
        }
        let end = clock.now();
        phases.end(end);
        let (usage1, wall_s) = (rusage_self(), calibration.instant().elapsed().as_secs_f64());
        let elapsed_s = began.elapsed().as_secs_f64();
        let ticks_per_ns = calibration.rate(clock, end);
        finish.wait();
        bar.finish();
        let mut stats = Vec::with_capacity(n);
        for h in handles {
            match h.join() {
                Ok(Ok(s)) => stats.push(s),
                Ok(Err(e)) => return Err(e.unwrap_or_else(|| CliError::Device("a perf thread failed".into()))),
                Err(_) => return Err(CliError::Device("a perf thread panicked".into())),
            }
        }
        // A size-based run's window ends when its last thread finished; each thread's run
        // when it did.
        let since_start = |t: Ticks| t.min(end).saturating_sub(calibration.ticks()) as f64 / ticks_per_ns / 1e9;
        let (window_s, runtimes_s) = if plan.time.is_none() && !interrupted {
            let runtimes: Vec<f64> = stats
                .iter()
                .map(|s| {
                    if s.finished == NOT_YET {
                        0.0
                    } else {
                        since_start(s.finished)
                    }
                })
                .collect();
            (runtimes.iter().copied().fold(0.0, f64::max), runtimes)
        } else {
            (wall_s, vec![wall_s; n])
        };
        let cpu = CpuUse {
            user_s: usage1.0 - usage0.0,
            sys_s: usage1.1 - usage0.1,
            wall_s,
            max_rss_kib: usage1.2,
        };
        Ok(Outcome {
            stats,
            ticks_per_ns,
            window_s,
            runtimes_s,
            elapsed_s,
            cpu,
            interrupted,
        })
    })
}

/// Waits until `deadline` (if any), until `done`, or until `stop`; calls `tick` about
/// twice a second if there is a bar. Returns whether `stop` ended the wait.
fn watch(
    deadline: Option<Instant>,
    done: &dyn Fn() -> bool,
    stop: &AtomicBool,
    bar: &Progress,
    tick: &mut dyn FnMut(),
) -> bool {
    let mut last_tick = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            return true;
        }
        let now = Instant::now();
        if done() || deadline.is_some_and(|d| now >= d) {
            return false;
        }
        let left = deadline.map_or(WATCH_STEP, |d| d - now);
        std::thread::sleep(left.min(WATCH_STEP));
        if bar.is_drawn() && last_tick.elapsed() >= Duration::from_millis(500) {
            tick();
            last_tick = Instant::now();
        }
    }
}

/// Blocks SIGINT in the calling thread (the I/O threads: the main thread takes it).
fn block_sigint() {
    // SAFETY: the set is initialised by sigemptyset before use; pthread_sigmask only
    // changes the calling thread's mask.
    unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::zeroed();
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
    }
}

/// Pins the calling thread, thread `t`, as `plan` says; returns the CPUs it may run on
/// afterwards, read back (`None` when nothing was pinned).
fn pin(plan: &Plan, t: usize) -> Result<Option<Vec<usize>>, CliError> {
    let Some((list, policy)) = &plan.cpus else {
        return Ok(None);
    };
    let cpus: Vec<usize> = match policy {
        CpusPolicy::Shared => list.0.clone(),
        CpusPolicy::Split => vec![list.0[t % list.0.len()]],
    };
    pin_current_thread(&cpus).map_err(|e| CliError::Device(format!("thread {t}: {e}")))?;
    let now = allowed_cpus()?;
    Ok(Some(now))
}

/// In the modes that sleep, has the completion interrupt of thread `t`'s queue delivered
/// to the one CPU the thread is pinned to, as Linux's nvme driver binds each queue's
/// vector to its CPUs: the wake-up then needs no inter-processor interrupt. Returns that
/// CPU; `None` when spinning, not pinned to one CPU, or the backend takes no interrupts
/// itself. A failure is a warning: the run goes on with the interrupt where it was.
fn steer(q: &mut IoQueue, plan: &Plan, cpus: Option<&[usize]>, t: usize) -> Option<usize> {
    let (Completions::Interrupt | Completions::Hybrid, Some(&[cpu])) = (plan.completions, cpus) else {
        return None;
    };
    match q.steer_interrupts(cpu) {
        Ok(steered) => steered.then_some(cpu),
        Err(e) => {
            tracing::warn!(thread = t, cpu, error = %e, "could not steer the queue's interrupt to the thread's CPU");
            None
        }
    }
}

/// Creates thread `t`'s queue and its `qd` buffers (one DMA allocation cut in chunks of
/// the largest I/O size, filled with random bytes once if the workload writes; none for
/// trims, which move no data).
fn prepare(device: &Device, plan: &Plan, t: usize) -> Result<(IoQueue, Vec<Option<DmaBuf>>), CliError> {
    let qd = plan.qd_effective;
    let backend = device.backend();
    let q = device.create_queue(Some(plan.nsid), qd).map_err(|e| {
        CliError::Device(format!(
            "thread {t}: cannot create a {backend} queue of depth {qd}: {e}"
        ))
    })?;
    if q.depth() < qd {
        return Err(CliError::Invalid(format!(
            "--qd {qd} is deeper than a {backend} queue can be here ({} outstanding I/Os at most)",
            q.depth()
        )));
    }
    if plan.rw.trims() {
        return Ok((q, (0..qd).map(|_| None).collect()));
    }
    let bs = plan.bs as usize;
    let alloc_err =
        |e: crate::nvme::hw::DmaError| CliError::Device(format!("thread {t}: {qd} buffers of {bs} bytes: {e}"));
    let mut bufs = device
        .dma()
        .allocate(qd * bs)
        .map_err(alloc_err)?
        .into_chunks(bs, qd)
        .map_err(alloc_err)?;
    if plan.rw.writes_data() {
        let mut rng = SplitMix64::new(plan.seed ^ (t as u64).rotate_left(32));
        for b in &mut bufs {
            for word in b.as_mut_slice().chunks_mut(8) {
                let bytes = rng.next_u64().to_le_bytes();
                word.copy_from_slice(&bytes[..word.len()]);
            }
        }
    }
    Ok((q, bufs.into_iter().map(Some).collect()))
}

/// Sets `flag` on SIGINT for as long as it lives; a second SIGINT while the flag is set
/// kills the process (the default action), so a stuck run can still be ended.
struct SigintFlag {
    flag: Arc<AtomicBool>,
    ids: Vec<signal_hook::SigId>,
}

impl SigintFlag {
    fn register() -> SigintFlag {
        let flag = Arc::new(AtomicBool::new(false));
        let sig = signal_hook::consts::SIGINT;
        // The conditional default first: it sees the flag as the previous SIGINT left it.
        let ids = [
            signal_hook::flag::register_conditional_default(sig, Arc::clone(&flag)),
            signal_hook::flag::register(sig, Arc::clone(&flag)),
        ]
        .into_iter()
        .filter_map(Result::ok)
        .collect();
        SigintFlag { flag, ids }
    }
}

impl Drop for SigintFlag {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Runs `ironvme perf`.
///
/// Errors: [`CliError::Refused`] for a write without consent; [`CliError::Invalid`] for
/// arguments the device cannot take; [`CliError::Failed`] after the report when I/Os
/// failed.
pub fn run(a: &PerfArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let what = format!("perf --rw {}", a.rw.name());
    let mut options = crate::OpenOptions::with_backend(a.backend);
    options.controller.shadow_doorbells = a.shadow_doorbells;
    // VFIO: MSI-X for the modes that sleep (other backends ignore it).
    options.interrupts = matches!(a.completions, Some(Completions::Interrupt | Completions::Hybrid));
    let dev = target::open_with(&a.dev, &options, a.rw.writes().then_some(what.as_str()), a.allow_write)?;
    let device = &dev.device;
    let ns = device.namespace(a.nsid)?;
    let plan = Plan::new(a, &ns, device.backend())?;
    let plan = match ZoneLayout::probe(device, &dev.name, ns.nsid)? {
        Some(layout) => plan.on_zones(&layout, &ns)?,
        None if a.rw.writes() => {
            ZoneLayout::refuse_kernel_zoned(device, &dev.name, &what)?;
            plan
        }
        None => plan,
    };
    let clock = Clock::new(a.clock);
    let format = if a.json {
        None
    } else {
        Some(a.output_format.unwrap_or(OutputFormat::Normal))
    };
    let progress = std::io::stderr().is_terminal()
        && plan.time.is_some_and(|t| t > PROGRESS_AFTER)
        && format == Some(OutputFormat::Normal);
    let sigint = SigintFlag::register();
    let outcome = execute(device, &plan, &clock, progress, &sigint.flag);
    drop(sigint);
    let outcome = outcome?;
    if outcome.interrupted {
        eprintln!(
            "ironvme: perf interrupted (SIGINT) after {:.2}s of measured run: reporting what was measured",
            outcome.window_s
        );
    }
    let info = RunInfo {
        rw: plan.rw,
        rwmixread: plan.rwmixread,
        bs: plan.bs,
        qd: plan.qd,
        qd_effective: plan.qd_effective,
        threads: plan.threads,
        backend: device.backend().to_string(),
        device: dev.name.clone(),
        nsid: plan.nsid,
        block_size: plan.block_size,
        offset: plan.offset(),
        size: plan.size(),
        time_s: plan.time.map_or(0.0, |t| t.as_secs_f64()),
        ramp_s: plan.ramp.as_secs_f64(),
        clock: clock.source().name(),
        instant_now_ns: clock.instant_cost_ns(),
        completions: plan.completions.name(),
        shadow_doorbells: device.shadow_doorbells(),
        name: a.name.clone(),
        bssplit: plan.bssplit.clone(),
        percentiles: plan.percentiles.clone(),
        size_based: plan.budget,
        interrupted: outcome.interrupted,
        cpus_allowed: plan.cpus.as_ref().map(|(c, p)| (c.clone(), p.name())),
        seed: plan.seed,
        group_reporting: a.group_reporting,
    };
    let fio_run = fio::FioRun {
        stats: &outcome.stats,
        runtimes_s: &outcome.runtimes_s,
        ticks_per_ns: outcome.ticks_per_ns,
        elapsed_s: outcome.elapsed_s,
        ended: SystemTime::now(),
        percentiles: &plan.fio_percentiles,
    };
    let summary = Summary::new(
        info,
        &outcome.stats,
        outcome.window_s,
        outcome.ticks_per_ns,
        outcome.cpu,
    );
    match format {
        None => write_json(out, &summary.json())?,
        Some(OutputFormat::Normal) => write!(out, "{}", summary.human())?,
        Some(OutputFormat::Json) => write_json(out, &fio::report(&summary.info, &fio_run, fio::Flavor::Json))?,
        Some(OutputFormat::JsonPlus) => write_json(out, &fio::report(&summary.info, &fio_run, fio::Flavor::JsonPlus))?,
    }
    out.flush()?;
    if summary.failed() {
        let stopped = summary.threads.iter().filter(|t| t.fatal.is_some()).count();
        return Err(CliError::Failed(format!(
            "perf on {}: {} I/O errors{}",
            dev.name,
            summary.errors,
            if stopped > 0 {
                format!(", {stopped} thread(s) stopped early")
            } else {
                String::new()
            }
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::block::GeometrySource;
    use clap::Parser;

    fn args(extra: &[&str]) -> PerfArgs {
        let cli = crate::cli::Cli::try_parse_from(["ironvme", "perf", "disk.img"].iter().chain(extra)).unwrap();
        match cli.command {
            crate::cli::Command::Perf(a) => a,
            other => panic!("{other:?}"),
        }
    }

    fn ns(block_size: u32, blocks: u64) -> NamespaceInfo {
        NamespaceInfo {
            nsid: 1,
            block_size,
            blocks,
            max_transfer_bytes: 512 * 1024,
            buffer_alignment: 4,
            write_zeroes: false,
            deallocate: false,
            deallocate_zeroes: false,
            compare: false,
            verify: false,
            volatile_write_cache: true,
            zone_commands: false,
            metadata: crate::nvme::block::MetadataFormat::NONE,
            source: GeometrySource::Identify,
        }
    }

    #[test]
    fn fio_style_arguments() {
        let a = args(&[
            "--rw",
            "randread",
            "--bs",
            "4k",
            "--iodepth",
            "8",
            "--numjobs",
            "2",
            "--runtime",
            "1500ms",
        ]);
        assert_eq!(
            (a.rw, a.bs, a.qd, a.threads, a.time),
            (Rw::Randread, 4096, 8, 2, Some(Duration::from_millis(1500)))
        );
        assert_eq!(
            (a.rwmixread, a.ramp, a.offset, a.size, a.json),
            (50, Duration::ZERO, 0, None, false)
        );
        let a = args(&[
            "--rw",
            "randrw",
            "--rwmixread",
            "70",
            "--backend",
            "uring-cmd",
            "--size",
            "1g",
            "--ramp",
            "1",
        ]);
        assert_eq!(
            (a.rwmixread, a.backend, a.size),
            (70, Some(Backend::UringCmd), Some(1 << 30))
        );
        for bad in [
            &["--rw", "write_trim"][..],
            &["--rw", "read", "--bs", "0"],
            &["--rw", "read", "--bssplit", "4k/50"],
            &["--rw", "read", "--percentile_list", "101"],
            &["--rw", "read", "--cpus_allowed", "1-0"],
            &["--rw", "read", "--cpus_allowed_policy", "split"],
            &["--rw", "read", "--output-format", "terse"],
            &["--rw", "read", "--json", "--output-format", "json"],
            &["--rw", "read", "--qd", "0"],
            &["--rw", "read", "--threads", "0"],
            &["--rw", "read", "--time", "0"],
            &["--rw", "randrw", "--rwmixread", "101"],
            &["--rw", "read", "--backend", "spdk"],
            &["--bs", "4k"],
        ] {
            let all = ["ironvme", "perf", "disk.img"].iter().chain(bad);
            let e = crate::cli::Cli::try_parse_from(all).unwrap_err();
            assert_eq!(e.exit_code(), crate::cli::EXIT_USAGE, "{bad:?}");
        }
    }

    #[test]
    fn plans_are_checked_against_the_namespace() {
        let n = ns(4096, 1 << 18); // 1 GiB
        let p = Plan::new(&args(&["--rw", "randread"]), &n, Backend::Vfio).unwrap();
        assert_eq!(
            p.region,
            Region {
                first_lba: 0,
                granule: 1,
                granules: 1 << 18
            }
        );
        assert_eq!(
            (p.qd_effective, p.completions, p.size()),
            (32, Completions::Spin, 1 << 30)
        );
        let p = Plan::new(
            &args(&["--rw", "read", "--bs", "64k", "--offset", "1m", "--size", "1000k"]),
            &n,
            Backend::Uring,
        )
        .unwrap();
        assert_eq!(
            p.region,
            Region {
                first_lba: 256,
                granule: 16,
                granules: 15
            }
        );
        assert_eq!((p.offset(), p.size()), (1 << 20, 15 * 65536));
        let p = Plan::new(&args(&["--rw", "read", "--qd", "64"]), &n, Backend::Psync).unwrap();
        assert_eq!((p.qd, p.qd_effective, p.completions), (64, 1, Completions::Interrupt));
        // --completions is what runs, where the backend can do it.
        for (backend, mode, want) in [
            (Backend::Uring, "wait", Completions::Interrupt),
            (Backend::UringCmd, "wait", Completions::Interrupt),
            (Backend::Uring, "spin", Completions::Spin),
            (Backend::Uring, "hybrid", Completions::Hybrid),
            (Backend::Vfio, "spin", Completions::Spin),
            (Backend::Vfio, "interrupt", Completions::Interrupt),
            (Backend::Vfio, "hybrid", Completions::Hybrid),
            (Backend::Psync, "wait", Completions::Interrupt),
            (Backend::Psync, "interrupt", Completions::Interrupt),
        ] {
            let p = Plan::new(&args(&["--rw", "read", "--completions", mode]), &n, backend).unwrap();
            assert_eq!(p.completions, want, "{backend} --completions {mode}");
        }
        let refused = |backend: Backend, mode: &str| {
            Plan::new(&args(&["--rw", "read", "--completions", mode]), &n, backend)
                .unwrap_err()
                .to_string()
        };
        #[cfg(feature = "sim")]
        for mode in ["interrupt", "hybrid"] {
            assert!(refused(Backend::Sim, mode).contains("without interrupt vectors"));
        }
        assert!(refused(Backend::Psync, "spin").contains("nothing to poll"));
        assert!(refused(Backend::Psync, "hybrid").contains("nothing to poll"));
        assert!(refused(Backend::Ioctl, "spin").contains("nothing to poll"));

        let err = |extra: &[&str]| Plan::new(&args(extra), &n, Backend::Vfio).unwrap_err().to_string();
        assert!(
            err(&["--rw", "read", "--bs", "512"])
                .contains("not a multiple of the namespace's logical block size (4096")
        );
        assert!(
            err(&["--rw", "read", "--bs", "1m"]).contains("exceeds the largest transfer of one command here (512KiB")
        );
        assert!(err(&["--rw", "read", "--offset", "1000"]).contains("--offset 1000 is not a multiple"));
        assert!(err(&["--rw", "read", "--offset", "1g"]).contains("at or beyond the end"));
        assert!(err(&["--rw", "read", "--offset", "4k", "--size", "1g"]).contains("goes beyond the end"));
        assert!(err(&["--rw", "read", "--bs", "8k", "--size", "4k"]).contains("smaller than one --bs 8KiB I/O"));
    }

    #[test]
    fn zoned_plans_give_each_writer_its_zones() {
        // Eight zones of 2048 4 KiB blocks, 1536 writable; zone 5 is read-only (a write
        // region without it: the first five zones and the last two).
        let zones = (0..8u64)
            .map(|i| crate::cli::io_shared::zones::zone(i * 2048, if i == 5 { 0xD } else { 0x1 }, i * 2048, 1536))
            .collect();
        let layout = ZoneLayout {
            zone_blocks: 2048,
            append_limit: Some(128 * 1024),
            max_active: None,
            max_open: None,
            variable_capacity: false,
            zones,
        };
        let n = NamespaceInfo {
            deallocate: true,
            ..ns(4096, 8 * 2048)
        };
        let plan = |extra: &[&str]| {
            Plan::new(&args(extra), &n, Backend::Vfio)
                .unwrap()
                .on_zones(&layout, &n)
        };
        let limited = ZoneLayout {
            max_active: Some(3),
            ..layout.clone()
        };
        let e = Plan::new(
            &args(&["--rw", "randwrite", "--threads", "2", "--size", "40m"]),
            &n,
            Backend::Vfio,
        )
        .unwrap()
        .on_zones(&limited, &n)
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("up to 4 zones active at once (two each, and those of their zones already partly written), and the controller has room for 3 (at most 3 active and any number open at once)"),
            "{e}"
        );
        let e = Plan::new(&args(&["--rw", "randwrite"]), &n, Backend::Vfio)
            .unwrap()
            .on_zones(
                &ZoneLayout {
                    variable_capacity: true,
                    ..layout.clone()
                },
                &n,
            )
            .unwrap_err();
        assert!(e.to_string().contains("Variable Zone Capacity"), "{e}");
        let p = plan(&["--rw", "randwrite", "--threads", "2", "--size", "40m"]).unwrap();
        let z = p.zones.unwrap();
        assert_eq!(z.zone_blocks, 2048);
        let starts = |t: usize| {
            z.writers.as_ref().unwrap()[t]
                .iter()
                .map(|w| w.start)
                .collect::<Vec<_>>()
        };
        assert_eq!((starts(0), starts(1)), (vec![0, 4096, 8192], vec![2048, 6144]));
        let p = plan(&["--rw", "randread", "--offset", "8m", "--size", "100k"]).unwrap();
        assert!(p.zones.unwrap().writers.is_none(), "reads need no whole zones");
        let err = |extra: &[&str]| plan(extra).unwrap_err().to_string();
        assert!(err(&["--rw", "randwrite"]).contains("the zone at LBA 10240 is READONLY"));
        assert!(err(&["--rw", "trim"]).contains("Reset Zone"));
        assert!(
            err(&["--rw", "write", "--bs", "256k", "--size", "8m"]).contains("Zone Append Size Limit (ZASL) is 128KiB")
        );
        assert!(err(&["--rw", "randread", "--offset", "4k"]).contains("must start a zone (a multiple of 2048 blocks)"));
        assert!(err(&["--rw", "randrw", "--size", "4m"]).contains("multiples of the zone size (2048 blocks)"));
        // A thread starts in the zone an earlier run left partly written, and it counts.
        let mut open = layout.clone();
        open.zones[1] = crate::cli::io_shared::zones::zone(2048, 0x2, 2148, 1536);
        let p = Plan::new(&args(&["--rw", "randwrite", "--size", "24m"]), &n, Backend::Vfio)
            .unwrap()
            .on_zones(&open, &n)
            .unwrap();
        let mine = &p.zones.unwrap().writers.unwrap()[0];
        assert_eq!(mine.iter().map(|z| z.start).collect::<Vec<_>>(), [2048, 4096, 0]);
        assert_eq!(mine[0].written, 100);
        // The region as asked, not rounded to whole --bs I/Os: 16 MiB is two zones.
        let p = plan(&["--rw", "randwrite", "--bs", "12k", "--size", "16m"]).unwrap();
        assert_eq!(p.zones.unwrap().writers.unwrap()[0].len(), 2);
        assert!(err(&["--rw", "write", "--size", "8m", "--threads", "2"]).contains("1 writable zones"));
        let small = ZoneLayout {
            zone_blocks: 64,
            ..layout.clone()
        };
        let e = Plan::new(&args(&["--rw", "read", "--bs", "512k"]), &n, Backend::Vfio)
            .unwrap()
            .on_zones(&small, &n)
            .unwrap_err();
        assert!(e.to_string().contains("larger than a zone (64 blocks)"), "{e}");
    }

    #[test]
    fn fio_spellings_are_options() {
        let a = args(&[
            "--readwrite",
            "readwrite",
            "--ramp_time",
            "2",
            "--randseed",
            "77",
            "--bssplit",
            "4k/50:64k/50",
            "--percentile_list",
            "99:99.9:99.99",
            "--cpus_allowed",
            "0-1,3",
            "--cpus_allowed_policy",
            "split",
            "--output-format",
            "json+",
            "--group_reporting",
            "--name",
            "job1",
        ]);
        assert_eq!(a.rw, Rw::ReadWrite);
        assert_eq!((a.ramp, a.seed), (Duration::from_secs(2), 77));
        assert_eq!(a.bssplit, Some(BsSplit(vec![(4096, 50), (65536, 50)])));
        assert_eq!(a.percentile_list, Some(PercentileList(vec![99.0, 99.9, 99.99])));
        assert_eq!(a.cpus_allowed, Some(CpuList(vec![0, 1, 3])));
        assert_eq!(a.cpus_allowed_policy, CpusPolicy::Split);
        assert_eq!(a.output_format, Some(OutputFormat::JsonPlus));
        assert!(a.group_reporting);
        assert_eq!(a.name, "job1");
        for (rw, want) in [("rw", Rw::ReadWrite), ("trim", Rw::Trim), ("randtrim", Rw::Randtrim)] {
            assert_eq!(args(&["--rw", rw]).rw, want);
        }
        // The existing names still work.
        let a = args(&["--rw", "read", "--ramp", "1", "--seed", "5", "--time", "3"]);
        assert_eq!(
            (a.ramp, a.seed, a.time),
            (Duration::from_secs(1), 5, Some(Duration::from_secs(3)))
        );
    }

    #[test]
    fn size_without_time_is_a_size_based_run() {
        let n = ns(4096, 1 << 18);
        let p = Plan::new(&args(&["--rw", "read", "--size", "1m"]), &n, Backend::Uring).unwrap();
        assert_eq!((p.time, p.budget), (None, Some(1 << 20)));
        // Rounded down to whole I/Os, like the region.
        let p = Plan::new(
            &args(&["--rw", "read", "--size", "1000k", "--bs", "64k"]),
            &n,
            Backend::Uring,
        )
        .unwrap();
        assert_eq!(p.budget, Some(15 * 65536));
        let p = Plan::new(
            &args(&["--rw", "read", "--size", "1m", "--time", "2"]),
            &n,
            Backend::Uring,
        )
        .unwrap();
        assert_eq!((p.time, p.budget), (Some(Duration::from_secs(2)), None));
        let p = Plan::new(&args(&["--rw", "read"]), &n, Backend::Uring).unwrap();
        assert_eq!((p.time, p.budget), (Some(DEFAULT_TIME), None));
    }

    #[test]
    fn trims_need_deallocate() {
        let mut n = ns(4096, 1 << 18);
        for rw in ["trim", "randtrim"] {
            let e = Plan::new(&args(&["--rw", rw]), &n, Backend::Uring).unwrap_err();
            assert!(matches!(e, CliError::Invalid(_)), "{e}");
            let e = e.to_string();
            assert!(
                e.contains(&format!("--rw {rw}: the uring backend cannot deallocate (discard")),
                "{e}"
            );
        }
        n.deallocate = true;
        let p = Plan::new(&args(&["--rw", "randtrim", "--bs", "1m"]), &n, Backend::Uring).unwrap();
        assert!(
            p.rw.trims() && p.bs == 1 << 20,
            "a trim moves no data: MDTS does not limit it"
        );
    }

    #[test]
    fn bssplit_sizes_are_checked_and_set_the_region() {
        let n = ns(4096, 1 << 18);
        let p = Plan::new(
            &args(&["--rw", "randread", "--bssplit", "64k/50:4k/50", "--size", "1m"]),
            &n,
            Backend::Uring,
        )
        .unwrap();
        assert_eq!(p.bs, 65536, "buffers hold the largest size");
        assert_eq!(
            p.region,
            Region {
                first_lba: 0,
                granule: 1,
                granules: 256
            }
        );
        assert_eq!(p.sizes_in_blocks(), vec![(16, 50), (1, 50)]);
        let err = |extra: &[&str]| Plan::new(&args(extra), &n, Backend::Uring).unwrap_err().to_string();
        assert!(err(&["--rw", "read", "--bssplit", "4k/50:6k/50"]).contains("--bssplit size 6144 is not a multiple"));
        assert!(err(&["--rw", "read", "--bssplit", "4k/50:1m/50"]).contains("--bssplit size 1MiB exceeds"));
        assert!(
            err(&["--rw", "read", "--bssplit", "4k/50:64k/50", "--size", "32k"])
                .contains("smaller than one --bssplit size 64KiB I/O")
        );
    }

    #[test]
    fn percentile_lists_reach_the_plan() {
        let n = ns(4096, 1 << 18);
        let p = Plan::new(&args(&["--rw", "read"]), &n, Backend::Uring).unwrap();
        assert_eq!(p.percentiles, [50.0, 90.0, 99.0, 99.9, 99.99]);
        assert_eq!(p.fio_percentiles.len(), 17, "fio's default list in fio's JSON");
        let p = Plan::new(
            &args(&["--rw", "read", "--percentile_list", "99.9:99"]),
            &n,
            Backend::Uring,
        )
        .unwrap();
        assert_eq!(
            (p.percentiles.clone(), p.fio_percentiles),
            (vec![99.0, 99.9], vec![99.0, 99.9])
        );
    }

    #[test]
    fn cpus_allowed_must_be_cpus_this_process_has() {
        let n = ns(4096, 1 << 18);
        let mine = allowed_cpus().unwrap();
        let first = mine[0].to_string();
        let p = Plan::new(&args(&["--rw", "read", "--cpus_allowed", &first]), &n, Backend::Uring).unwrap();
        assert_eq!(p.cpus, Some((CpuList(vec![mine[0]]), CpusPolicy::Shared)));
        let absent = (0..libc::CPU_SETSIZE as usize).find(|c| !mine.contains(c)).unwrap();
        let e = Plan::new(
            &args(&["--rw", "read", "--cpus_allowed", &absent.to_string()]),
            &n,
            Backend::Uring,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&format!("CPU {absent} is not one this process may run on")),
            "{e}"
        );
    }

    #[test]
    fn rusage_advances_with_work() {
        // Work until 20 ms of CPU time show, or 10 s of wall time pass: on a loaded
        // machine a fixed wall-clock spin may get little CPU.
        let (u0, s0, _) = rusage_self();
        let t = Instant::now();
        let mut x = 0u64;
        let (mut u1, mut s1) = (u0, s0);
        while u1 + s1 - u0 - s0 <= 0.02 && t.elapsed() < Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            (u1, s1, _) = rusage_self();
        }
        assert!(u1 + s1 - u0 - s0 > 0.02, "{u0} {s0} {u1} {s1}");
    }

    /// perf on the simulated controller, with ironvme's driver: every workload, two
    /// threads each.
    #[cfg(feature = "sim")]
    #[test]
    fn every_workload_on_the_simulated_controller() {
        use crate::nvme::sim::{SimConfig, SimController, SimNamespace};
        let sim = SimController::new(SimConfig {
            namespaces: vec![SimNamespace::new(4096, 4096)],
            ..SimConfig::default()
        });
        let device = Device::simulated(sim, Default::default()).unwrap();
        let ns = device.namespace(None).unwrap();
        let clock = Clock::new(None);
        for rw in [
            "read",
            "write",
            "randread",
            "randwrite",
            "randrw",
            "rw",
            "trim",
            "randtrim",
        ] {
            let a = args(&[
                "--rw",
                rw,
                "--qd",
                "8",
                "--threads",
                "2",
                "--time",
                "200ms",
                "--ramp",
                "50ms",
            ]);
            let plan = Plan::new(&a, &ns, device.backend()).unwrap();
            let o = execute(&device, &plan, &clock, false, &AtomicBool::new(false)).unwrap();
            assert_eq!(o.stats.len(), 2);
            for s in &o.stats {
                assert!(s.errors == 0 && s.fatal.is_none(), "{rw}: {s:?}");
                for d in 0..workload::DIRS {
                    assert_eq!(s.ios[d] > 0, plan.rw.dirs().contains(&d), "{rw}: {:?}", s.ios);
                }
            }
            assert!(o.ticks_per_ns > 0.0 && o.cpu.wall_s >= 0.2, "{o:?}");
        }
        // Size-based, with mixed sizes: each thread measures exactly its bytes and stops.
        let a = args(&[
            "--rw",
            "randwrite",
            "--bssplit",
            "4k/50:16k/50",
            "--size",
            "4m",
            "--threads",
            "2",
        ]);
        let plan = Plan::new(&a, &ns, device.backend()).unwrap();
        let o = execute(&device, &plan, &clock, false, &AtomicBool::new(false)).unwrap();
        for s in &o.stats {
            assert!(s.bytes[1] >= 4 << 20 && s.bytes[1] < (4 << 20) + 16384, "{:?}", s.bytes);
        }
        assert!(!o.interrupted && o.runtimes_s.iter().all(|&r| r > 0.0 && r <= o.window_s));
        // A stop flag already set ends the run at once, with what was measured.
        let a = args(&["--rw", "read", "--time", "60"]);
        let plan = Plan::new(&a, &ns, device.backend()).unwrap();
        let t = Instant::now();
        let o = execute(&device, &plan, &clock, false, &AtomicBool::new(true)).unwrap();
        assert!(
            o.interrupted && t.elapsed() < Duration::from_secs(10),
            "{:?}",
            t.elapsed()
        );
        // A deeper queue than the controller allows is refused before the run.
        let a = args(&["--rw", "read", "--qd", "4096", "--time", "1"]);
        let plan = Plan::new(&a, &ns, device.backend()).unwrap();
        let e = execute(&device, &plan, &clock, false, &AtomicBool::new(false))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--qd 4096 is deeper than a sim queue can be here (2047"),
            "{e}"
        );
    }
}
