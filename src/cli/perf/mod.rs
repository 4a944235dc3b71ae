//! `ironvme perf`: a time-based I/O benchmark in the manner of fio and `spdk_nvme_perf`,
//! on any backend.
//!
//! `--rw`, `--bs`, `--qd` (fio's iodepth, per thread), `--threads` (numjobs), `--time`
//! (runtime), `--ramp` (ramp_time), `--size`, `--offset` and `--rwmixread` mean what fio
//! means by them: every thread runs the whole job on its own queue over the same region;
//! sequential offsets wrap at the end of the region; random offsets are uniform over it
//! and aligned to `--bs` from `--offset`; `--size` defaults to the whole namespace from
//! `--offset` on.
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
//!   there. `--completions wait` makes the io_uring backends (uring, uring-cmd) sleep in
//!   io_uring_enter instead of spinning, like fio's default; VFIO can only spin and the
//!   synchronous backends can only wait, and the other mode is refused there. The
//!   report gives the mode and the CPU the run used.
//! - **Writes** need `--allow-write` unless DEV is a regular file ([`target`]). Write
//!   buffers are filled once with random bytes, never per I/O.
//! - **Failures.** Every failed I/O is counted and the first few are shown with their
//!   decoded status; the report is printed either way, and the exit status is 1 if
//!   anything failed.

pub mod clock;
pub mod engine;
pub mod report;
pub mod target;
pub mod units;
pub mod workload;

use self::clock::{Clock, ClockSource};
use self::engine::{Completions, Phases, ThreadStats};
use self::report::{CpuUse, RunInfo, Summary};
use self::units::{iec_exact, parse_duration, parse_nonzero_size, parse_positive_duration, parse_size, si_count};
use self::workload::{Generator, Region, Rw, SplitMix64};
use super::progress::Progress;
use super::{CliError, parse_nsid, write_json};
use crate::block::{BlockQueue, NamespaceInfo};
use crate::nvme::hw::DmaBuf;
use crate::{Backend, Device, IoQueue};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The DEV help of the I/O subcommands.
pub const IO_DEV_HELP: &str = "The device: a PCI address of a controller bound to vfio-pci (0000:00:05.0; opening it \
                                resets the controller), /dev/nvmeX, /dev/nvmeXnY, /dev/ngXnY, another block device, \
                                or a regular file. The backend follows from it unless --backend says otherwise.";

/// The --backend help of the I/O subcommands.
pub const BACKEND_HELP: &str = "Backend: vfio, ioctl, uring, uring-cmd or psync. Default: vfio for a PCI address, \
                                uring-cmd for /dev/ngXnY, ioctl for /dev/nvmeX, uring for block devices and files \
                                (psync when io_uring is unavailable).";

/// Latencies above this are recorded as this (an I/O that slow has long been aborted).
const MAX_LATENCY: Duration = Duration::from_secs(600);

/// `--time` above which a live IOPS line is shown on a terminal.
const PROGRESS_AFTER: Duration = Duration::from_secs(3);

/// Arguments of `perf`.
#[derive(Debug, Args)]
pub struct PerfArgs {
    /// The device.
    #[arg(value_name = "DEV", help = IO_DEV_HELP)]
    pub dev: String,
    /// The workload, as fio's --rw.
    #[arg(long, value_enum, value_name = "RW")]
    pub rw: Rw,
    /// Bytes per I/O (fio's bs): a multiple of the logical block size, at most the
    /// largest transfer; binary suffixes (4k = 4096, 1m).
    #[arg(long, value_name = "SIZE", default_value = "4k", value_parser = parse_nonzero_size)]
    pub bs: u64,
    /// I/Os kept outstanding per thread (fio's iodepth).
    #[arg(long, alias = "iodepth", value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub qd: u32,
    /// Threads, each with its own queue (fio's numjobs).
    #[arg(long, alias = "numjobs", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: u32,
    /// Measured run time (fio's runtime, time-based): seconds, or with ms/s/m/h.
    #[arg(long, alias = "runtime", value_name = "SECS", default_value = "10", value_parser = parse_positive_duration)]
    pub time: Duration,
    /// Percentage of reads in randrw.
    #[arg(long, value_name = "PCT", default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub rwmixread: u8,
    /// Run before the measured time starts, excluded from the statistics (fio's
    /// ramp_time).
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_duration)]
    pub ramp: Duration,
    #[arg(long, value_name = "B", help = BACKEND_HELP)]
    /// The backend.
    pub backend: Option<Backend>,
    /// Namespace ID (decimal or 0x hex). Default: the device's first namespace.
    #[arg(long, short = 'n', value_name = "N", value_parser = parse_nsid)]
    pub nsid: Option<u32>,
    /// Bytes of the region to work on (fio's size). Default: the namespace from --offset
    /// to its end. Rounded down to a multiple of --bs.
    #[arg(long, value_name = "BYTES", value_parser = parse_nonzero_size)]
    pub size: Option<u64>,
    /// Byte offset of the region (a multiple of the logical block size).
    #[arg(long, value_name = "BYTES", default_value = "0", value_parser = parse_size)]
    pub offset: u64,
    /// Seed of the random offsets; thread N uses SEED + N. Runs with the same seed
    /// repeat the same offsets (fio's randseed).
    #[arg(long, value_name = "S", default_value_t = 0x1234_5678)]
    pub seed: u64,
    /// Allow a write workload on a device (it destroys the data there). Regular files
    /// need no confirmation.
    #[arg(long)]
    pub allow_write: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Timestamp source: `instant` or `tsc` (default: tsc when Instant::now() is
    /// expensive here).
    #[arg(long, value_enum, value_name = "C", hide = true)]
    pub clock: Option<ClockSource>,
    /// How to wait for completions: `spin` polls in a loop (lowest latency, one busy CPU
    /// per thread; SPDK's way), `wait` sleeps in the kernel (io_uring's io_uring_enter
    /// with GETEVENTS, as fio's io_uring engines do by default). Default: spin, except on
    /// the synchronous backends (psync, ioctl), which complete inside the submission and
    /// can only wait. VFIO can only spin (no interrupt mode yet). A mode the backend
    /// cannot do is refused.
    #[arg(long, value_enum, value_name = "MODE")]
    pub completions: Option<Completions>,
}

/// A validated job: what every thread runs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The workload.
    pub rw: Rw,
    /// Reads in percent (randrw).
    pub rwmixread: u8,
    /// Bytes per I/O.
    pub bs: u64,
    /// Queue depth asked for.
    pub qd: usize,
    /// Queue depth run: `qd`, or 1 on synchronous backends.
    pub qd_effective: usize,
    /// How the loop waits.
    pub completions: Completions,
    /// Threads.
    pub threads: usize,
    /// Namespace.
    pub nsid: u32,
    /// Logical block size.
    pub block_size: u32,
    /// The region in LBAs.
    pub region: Region,
    /// Measured time.
    pub time: Duration,
    /// Ramp time.
    pub ramp: Duration,
    /// Seed of thread 0.
    pub seed: u64,
}

impl Plan {
    /// Checks the arguments against the namespace and the backend.
    ///
    /// Errors: [`CliError::Invalid`] naming the argument and the limit it breaks.
    pub fn new(a: &PerfArgs, ns: &NamespaceInfo, backend: Backend) -> Result<Plan, CliError> {
        let block = u64::from(ns.block_size);
        let capacity = ns.capacity_bytes();
        let invalid = |s: String| Err(CliError::Invalid(s));
        if a.bs % block != 0 {
            return invalid(format!(
                "--bs {} is not a multiple of the namespace's logical block size ({block} bytes)",
                a.bs
            ));
        }
        if a.bs > ns.max_transfer_bytes as u64 {
            return invalid(format!(
                "--bs {} exceeds the largest transfer of one command here ({}, {} bytes: MDTS or the {backend} \
                 backend's limit)",
                iec_exact(a.bs),
                iec_exact(ns.max_transfer_bytes as u64),
                ns.max_transfer_bytes
            ));
        }
        let (offset, size) = region_bytes(a.offset, a.size, block, capacity)?;
        if size < a.bs {
            return invalid(format!(
                "the region ({size} bytes from offset {offset}) is smaller than one --bs {} I/O",
                iec_exact(a.bs)
            ));
        }
        let synchronous = matches!(backend, Backend::Psync | Backend::Ioctl);
        let completions = match a.completions {
            None if synchronous => Completions::Wait,
            None => Completions::Spin,
            Some(Completions::Spin) if synchronous => {
                return invalid(format!(
                    "--completions spin: the {backend} backend completes each I/O inside its system call, so \
                     there is nothing to poll; it always waits (the default there)"
                ));
            }
            Some(Completions::Wait) if !synchronous && !matches!(backend, Backend::Uring | Backend::UringCmd) => {
                return invalid(format!(
                    "--completions wait: the {backend} backend has no interrupt mode (ironvme's driver and \
                     its simulation poll the completion queue), so its completions can only be polled (spin, the \
                     default)"
                ));
            }
            Some(c) => c,
        };
        Ok(Plan {
            rw: a.rw,
            rwmixread: a.rwmixread,
            bs: a.bs,
            qd: a.qd as usize,
            qd_effective: if synchronous { 1 } else { a.qd as usize },
            completions,
            threads: a.threads as usize,
            nsid: ns.nsid,
            block_size: ns.block_size,
            region: Region {
                first_lba: offset / block,
                lbas_per_io: a.bs / block,
                slots: size / a.bs,
            },
            time: a.time,
            ramp: a.ramp,
            seed: a.seed,
        })
    }

    /// Bytes of the region that I/Os cover (a whole number of `bs`).
    pub fn size(&self) -> u64 {
        self.region.slots * self.bs
    }

    /// Byte offset of the region.
    pub fn offset(&self) -> u64 {
        self.region.first_lba * u64::from(self.block_size)
    }
}

/// Checks `--offset` and `--size` (default: to the end) against a namespace of
/// `capacity` bytes with `block`-byte blocks; returns (offset, size) in bytes.
///
/// Errors: [`CliError::Invalid`] for a misaligned offset or a region beyond the end.
pub fn region_bytes(offset: u64, size: Option<u64>, block: u64, capacity: u64) -> Result<(u64, u64), CliError> {
    if offset % block != 0 {
        return Err(CliError::Invalid(format!(
            "--offset {offset} is not a multiple of the namespace's logical block size ({block} bytes)"
        )));
    }
    if offset >= capacity {
        return Err(CliError::Invalid(format!(
            "--offset {offset} is at or beyond the end of the namespace ({capacity} bytes)"
        )));
    }
    let size = size.unwrap_or(capacity - offset);
    if offset.checked_add(size).is_none_or(|end| end > capacity) {
        return Err(CliError::Invalid(format!(
            "the region {offset}+{size} bytes goes beyond the end of the namespace ({capacity} bytes)"
        )));
    }
    Ok((offset, size))
}

/// What [`execute`] measured.
#[derive(Debug)]
pub struct Outcome {
    /// Each thread's statistics.
    pub stats: Vec<ThreadStats>,
    /// The clock's rate over the run.
    pub ticks_per_ns: f64,
    /// Length of the measured window in seconds.
    pub window_s: f64,
    /// CPU use over the measured window.
    pub cpu: CpuUse,
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
/// and buffer exists. `progress` shows a live IOPS line on stderr.
///
/// Errors: [`CliError::Invalid`] when a queue cannot be as deep as asked; [`CliError::Device`]
/// when a queue or the buffers cannot be created.
pub fn execute(device: &Device, plan: &Plan, clock: &Clock, progress: bool) -> Result<Outcome, CliError> {
    let n = plan.threads;
    let start = Barrier::new(n + 1);
    let finish = Barrier::new(n + 1);
    let setup_failed = AtomicBool::new(false);
    let counters: Vec<Counter> = (0..n).map(|_| Counter(AtomicU64::new(0))).collect();
    let phases = Phases::default();
    let max_latency = clock.ticks_for(MAX_LATENCY);

    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|t| {
                let (start, finish, setup_failed, counter, phases) =
                    (&start, &finish, &setup_failed, &counters[t].0, &phases);
                s.spawn(move || -> Result<ThreadStats, Option<CliError>> {
                    // Declared in this order so that a panic arrives at `start` first.
                    let mut at_finish = Arrive(Some(finish));
                    let mut at_start = Arrive(Some(start));
                    let setup = prepare(device, plan, t);
                    if setup.is_err() {
                        setup_failed.store(true, Ordering::SeqCst);
                    }
                    at_start.arrive();
                    let (mut q, bufs) = match setup {
                        Ok(ready) if !setup_failed.load(Ordering::SeqCst) => ready,
                        other => return Err(other.err()),
                    };
                    let seed = plan.seed.wrapping_add(t as u64);
                    let mut ios = Generator::new(plan.rw, plan.rwmixread, plan.region, seed);
                    let stats = engine::run(
                        &mut q,
                        bufs,
                        &mut ios,
                        clock,
                        phases,
                        max_latency,
                        plan.completions,
                        counter,
                    );
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
        let bar = if progress {
            Progress::timed(plan.ramp + plan.time)
        } else {
            Progress::hidden()
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
        sleep_until(began + plan.ramp, &bar, &mut || show(&bar, &mut last));
        // The measured window: its ends are read on both clocks, so its length is exact
        // and the tick rate is measured over all of it.
        let (usage0, calibration) = (rusage_self(), clock.calibration());
        phases.start(calibration.ticks());
        sleep_until(calibration.instant() + plan.time, &bar, &mut || show(&bar, &mut last));
        let end = clock.now();
        phases.end(end);
        let (usage1, wall_s) = (rusage_self(), calibration.instant().elapsed().as_secs_f64());
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
        let cpu = CpuUse {
            user_s: usage1.0 - usage0.0,
            sys_s: usage1.1 - usage0.1,
            wall_s,
            max_rss_kib: usage1.2,
        };
        Ok(Outcome {
            stats,
            ticks_per_ns,
            window_s: wall_s,
            cpu,
        })
    })
}

/// Creates thread `t`'s queue and its `qd` buffers (one DMA allocation, cut in chunks;
/// filled with random bytes once if the workload writes).
fn prepare(device: &Device, plan: &Plan, t: usize) -> Result<(IoQueue, Vec<DmaBuf>), CliError> {
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
    let bs = plan.bs as usize;
    let alloc_err =
        |e: crate::nvme::hw::DmaError| CliError::Device(format!("thread {t}: {qd} buffers of {bs} bytes: {e}"));
    let mut bufs = device
        .dma()
        .allocate(qd * bs)
        .map_err(alloc_err)?
        .into_chunks(bs, qd)
        .map_err(alloc_err)?;
    if plan.rw.writes() {
        let mut rng = SplitMix64::new(plan.seed ^ (t as u64).rotate_left(32));
        for b in &mut bufs {
            for word in b.as_mut_slice().chunks_mut(8) {
                let bytes = rng.next_u64().to_le_bytes();
                word.copy_from_slice(&bytes[..word.len()]);
            }
        }
    }
    Ok((q, bufs))
}

/// Sleeps until `deadline`, calling `tick` about twice a second if there is a bar.
fn sleep_until(deadline: Instant, bar: &Progress, tick: &mut dyn FnMut()) {
    let step = if bar.is_drawn() {
        Duration::from_millis(500)
    } else {
        Duration::MAX
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(step));
        tick();
    }
}

/// (user, system) CPU seconds of the whole process so far, and its peak resident set in
/// KiB (`ru_maxrss`).
pub(crate) fn rusage_self() -> (f64, f64, u64) {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is a writable, properly aligned rusage; getrusage fills it and has no
    // other effect. RUSAGE_SELF cannot fail with a valid pointer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return (0.0, 0.0, 0);
    }
    // SAFETY: zero-initialised, and filled by the successful call above.
    let ru = unsafe { ru.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime), ru.ru_maxrss.max(0) as u64)
}

/// Runs `ironvme perf`.
///
/// Errors: [`CliError::Refused`] for a write without consent; [`CliError::Invalid`] for
/// arguments the device cannot take; [`CliError::Failed`] after the report when I/Os
/// failed.
pub fn run(a: &PerfArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let what = format!("perf --rw {}", a.rw.name());
    let dev = target::open(&a.dev, a.backend, a.rw.writes().then_some(what.as_str()), a.allow_write)?;
    let device = &dev.device;
    let ns = device.namespace(a.nsid)?;
    let plan = Plan::new(a, &ns, device.backend())?;
    let clock = Clock::new(a.clock);
    let progress = std::io::stderr().is_terminal() && a.time > PROGRESS_AFTER && !a.json;
    let outcome = execute(device, &plan, &clock, progress)?;
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
        time_s: plan.time.as_secs_f64(),
        ramp_s: plan.ramp.as_secs_f64(),
        clock: clock.source().name(),
        instant_now_ns: clock.instant_cost_ns(),
        completions: match plan.completions {
            Completions::Spin => "spin",
            Completions::Wait => "wait",
        },
    };
    let summary = Summary::new(
        info,
        &outcome.stats,
        outcome.window_s,
        outcome.ticks_per_ns,
        outcome.cpu,
    );
    if a.json {
        write_json(out, &summary.json())?;
    } else {
        write!(out, "{}", summary.human())?;
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
            (Rw::Randread, 4096, 8, 2, Duration::from_millis(1500))
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
            &["--rw", "trim"][..],
            &["--rw", "read", "--bs", "0"],
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
                lbas_per_io: 1,
                slots: 1 << 18
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
                lbas_per_io: 16,
                slots: 15
            }
        );
        assert_eq!((p.offset(), p.size()), (1 << 20, 15 * 65536));
        let p = Plan::new(&args(&["--rw", "read", "--qd", "64"]), &n, Backend::Psync).unwrap();
        assert_eq!((p.qd, p.qd_effective, p.completions), (64, 1, Completions::Wait));
        // --completions is what runs, where the backend can do it.
        for (backend, mode, want) in [
            (Backend::Uring, "wait", Completions::Wait),
            (Backend::UringCmd, "wait", Completions::Wait),
            (Backend::Uring, "spin", Completions::Spin),
            (Backend::Vfio, "spin", Completions::Spin),
            (Backend::Psync, "wait", Completions::Wait),
        ] {
            let p = Plan::new(&args(&["--rw", "read", "--completions", mode]), &n, backend).unwrap();
            assert_eq!(p.completions, want, "{backend} --completions {mode}");
        }
        let refused = |backend: Backend, mode: &str| {
            Plan::new(&args(&["--rw", "read", "--completions", mode]), &n, backend)
                .unwrap_err()
                .to_string()
        };
        assert!(refused(Backend::Vfio, "wait").contains("no interrupt mode"));
        assert!(refused(Backend::Psync, "spin").contains("nothing to poll"));
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
    fn rusage_advances_with_work() {
        let (u0, s0, _) = rusage_self();
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let (u1, s1, _) = rusage_self();
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
        for rw in ["read", "write", "randread", "randwrite", "randrw"] {
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
            let o = execute(&device, &plan, &clock, false).unwrap();
            assert_eq!(o.stats.len(), 2);
            for s in &o.stats {
                assert!(
                    s.ios[0] + s.ios[1] > 0 && s.errors == 0 && s.fatal.is_none(),
                    "{rw}: {s:?}"
                );
                assert_eq!(s.ios[1] > 0, plan.rw.writes(), "{rw}");
            }
            assert!(o.ticks_per_ns > 0.0 && o.cpu.wall_s >= 0.2, "{o:?}");
        }
        // A deeper queue than the controller allows is refused before the run.
        let a = args(&["--rw", "read", "--qd", "4096", "--time", "1"]);
        let plan = Plan::new(&a, &ns, device.backend()).unwrap();
        let e = execute(&device, &plan, &clock, false).unwrap_err().to_string();
        assert!(
            e.contains("--qd 4096 is deeper than a sim queue can be here (2047"),
            "{e}"
        );
    }
}
