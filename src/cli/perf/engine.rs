//! One perf thread's I/O loop: keep the queue full for the run, stamp every I/O.
//!
//! Everything is allocated before the clock starts: the buffers (one DMA allocation cut
//! into `qd` chunks; none for trims), a slot per tag (submit time, LBA, size, direction),
//! the list of buffers ready to go, a latency histogram per direction and room for the
//! first error samples. The loop then does, per I/O, a submit, two clock readings, a
//! histogram record and a vector push/pop within capacity, and spinning, one more clock
//! reading per poll ([`PollStats`]) — no allocation, lock or system call of its own (the
//! thread's CPU use is read twice per run, not per I/O):
//!
//! 1. submit an I/O for every ready buffer (a tag is the buffer's index), then `ring`
//!    once for the batch;
//! 2. `poll` (or `wait`, on backends that complete synchronously at `ring`); each
//!    completion is timestamped, recorded if it finished inside the measured window, and
//!    its buffer becomes ready again;
//! 3. after the window ends (or, in a size-based run, once the thread's bytes are
//!    submitted), stop submitting and drain what is outstanding.

use super::clock::{Clock, Ticks};
use super::workload::{DIRS, Dir, Generator, Io, READ, TRIM, WRITE};
use super::zones::{Placement, ZoneWriter};
use crate::block::{BlockError, BlockQueue, Completion, IoStatus, Op};
use crate::cli::io_shared::zones::ZoneLayout;
use crate::nvme::hw::DmaBuf;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many failed I/Os a thread keeps the details of.
pub const ERROR_SAMPLES: usize = 8;

/// A clock reading that has not been taken yet.
pub const NOT_YET: Ticks = Ticks::MAX;

/// The measured window, shared by every thread: perf's main thread keeps the time (with
/// `Instant`, so the window is exactly as long as asked whatever the tick rate) and
/// publishes the clock readings at which measuring starts (after the ramp) and stops.
/// Each I/O thread reads both once per loop iteration — two relaxed loads of a cache line
/// written twice per run.
#[derive(Debug)]
pub struct Phases {
    start: AtomicU64,
    end: AtomicU64,
}

impl Default for Phases {
    fn default() -> Phases {
        Phases {
            start: AtomicU64::new(NOT_YET),
            end: AtomicU64::new(NOT_YET),
        }
    }
}

impl Phases {
    /// I/Os completing from `at` on count.
    pub fn start(&self, at: Ticks) {
        self.start.store(at, Ordering::Relaxed);
    }

    /// I/Os completing from `at` on do not count, and the threads stop submitting.
    pub fn end(&self, at: Ticks) {
        if self.start.load(Ordering::Relaxed) == NOT_YET {
            self.start(at);
        }
        self.end.store(at, Ordering::Relaxed);
    }

    #[inline]
    fn get(&self) -> (Ticks, Ticks) {
        (self.start.load(Ordering::Relaxed), self.end.load(Ordering::Relaxed))
    }
}

/// How the loop waits for completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Completions {
    /// Non-blocking `poll` in a spin loop (VFIO, io_uring): the lowest latency; a CPU per
    /// thread.
    Spin,
    /// [`BlockQueue::wait`]: sleeps until a completion's interrupt arrives (VFIO: on the
    /// I/O CQ's MSI-X eventfd; io_uring: `io_uring_enter` with GETEVENTS, the kernel
    /// driver taking the interrupt); on the synchronous backends, which do the I/O inside
    /// `ring`, it finds it done. `wait` is another name for it.
    #[value(alias = "wait")]
    Interrupt,
    /// Spins on `poll` for a while once the polls come back empty (`--hybrid-spin-us`),
    /// then sleeps as `interrupt` does.
    Hybrid,
}

impl Completions {
    /// The name the reports use.
    pub fn name(self) -> &'static str {
        match self {
            Completions::Spin => "spin",
            Completions::Interrupt => "interrupt",
            Completions::Hybrid => "hybrid",
        }
    }
}

/// A failed I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorSample {
    /// Read, write or trim.
    pub dir: Dir,
    /// Its first LBA.
    pub lba: u64,
    /// Why it failed.
    pub status: IoStatus,
}

/// CPU use of one thread over the measured window (`getrusage(RUSAGE_THREAD)` when it
/// began and when the thread stopped).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ThreadCpu {
    /// User time in seconds.
    pub user_s: f64,
    /// System time in seconds.
    pub sys_s: f64,
    /// Context switches, voluntary and involuntary.
    pub ctx: u64,
    /// Major page faults.
    pub majf: u64,
    /// Minor page faults.
    pub minf: u64,
}

/// One reading of `getrusage(RUSAGE_THREAD)`, for [`ThreadCpu`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    user_s: f64,
    sys_s: f64,
    ctx: u64,
    majf: u64,
    minf: u64,
}

impl Usage {
    /// The calling thread's usage so far (zeros if the kernel refuses, which it does not
    /// for a valid pointer).
    pub fn thread() -> Usage {
        use crate::cli::io_shared::{getrusage, seconds};
        let Some(ru) = getrusage(libc::RUSAGE_THREAD) else {
            return Usage::default();
        };
        let n = |v: libc::c_long| v.max(0) as u64;
        Usage {
            user_s: seconds(ru.ru_utime),
            sys_s: seconds(ru.ru_stime),
            ctx: n(ru.ru_nvcsw) + n(ru.ru_nivcsw),
            majf: n(ru.ru_majflt),
            minf: n(ru.ru_minflt),
        }
    }

    /// What was used from `self` to `later`.
    pub fn until(&self, later: &Usage) -> ThreadCpu {
        ThreadCpu {
            user_s: (later.user_s - self.user_s).max(0.0),
            sys_s: (later.sys_s - self.sys_s).max(0.0),
            ctx: later.ctx.saturating_sub(self.ctx),
            majf: later.majf.saturating_sub(self.majf),
            minf: later.minf.saturating_sub(self.minf),
        }
    }
}

/// A spinning thread's polls over the measured window, split as SPDK's reactor splits its
/// pollers' time (`spdk_thread_stats`: `busy_tsc`, `idle_tsc`, a poller's call counted
/// idle when it did no work): an iteration of the loop that neither submitted nor
/// completed an I/O is idle, its time spent waiting on the device rather than on the
/// thread's own work (submitting, ringing, reaping, stamping). A thread idle most of the
/// time is held back by the device, and a cheaper loop would not make it faster (where
/// the loop and the device do not share CPUs; time the thread is preempted counts too).
///
/// Counted: the iterations that began inside the window and ended before it closed. In a
/// size-based run the window stays open until the thread has drained, as its measured
/// I/Os do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollStats {
    /// Loop iterations counted (each one poll).
    pub polls: u64,
    /// Of those, the idle ones: nothing submitted, nothing completed.
    pub empty: u64,
    /// Clock ticks spent in all of those iterations.
    pub ticks: Ticks,
    /// Of those, the ticks spent in the empty ones.
    pub empty_ticks: Ticks,
}

impl PollStats {
    /// Counts one iteration of `ticks` that submitted or completed `work` I/Os.
    #[inline]
    fn count(&mut self, work: usize, ticks: Ticks) {
        self.polls += 1;
        self.ticks += ticks;
        if work == 0 {
            self.empty += 1;
            self.empty_ticks += ticks;
        }
    }

    /// The share of the polling time spent in idle iterations, in percent; `None` before
    /// any.
    pub fn idle_percent(&self) -> Option<f64> {
        (self.ticks > 0).then(|| self.empty_ticks as f64 * 100.0 / self.ticks as f64)
    }

    /// Adds another thread's polls to these.
    fn merge(&mut self, other: &PollStats) {
        self.polls += other.polls;
        self.empty += other.empty;
        self.ticks += other.ticks;
        self.empty_ticks += other.empty_ticks;
    }
}

/// What one thread measured.
#[derive(Debug, Clone)]
pub struct ThreadStats {
    /// Successful I/Os that were measured, by direction ([`Dir`]).
    pub ios: [u64; DIRS],
    /// Their bytes, by direction.
    pub bytes: [u64; DIRS],
    /// Their latencies (submit to completion) in ticks, by direction.
    pub latency: [Histogram<u64>; DIRS],
    /// Exact smallest and largest latency in ticks, by direction (`u64::MAX`/0 if none).
    pub min_max: [(Ticks, Ticks); DIRS],
    /// Failed I/Os (all of them, ramp included).
    pub errors: u64,
    /// The first [`ERROR_SAMPLES`] failed I/Os.
    pub error_samples: Vec<ErrorSample>,
    /// Why the thread stopped early (a refused submission, a failed `ring`).
    pub fatal: Option<String>,
    /// When the thread's last I/O completed (the clock's reading), [`NOT_YET`] if it
    /// never ran.
    pub finished: Ticks,
    /// CPU the thread used over the measured window.
    pub cpu: ThreadCpu,
    /// The CPUs the thread was allowed to run on, read back after pinning
    /// (`--cpus_allowed`); `None` when not pinned.
    pub cpus: Option<Vec<usize>>,
    /// The CPU its queue's completion interrupt was steered to (interrupt and hybrid
    /// modes, a thread pinned to one CPU, a backend that takes interrupts itself).
    pub interrupt_cpu: Option<usize>,
    /// Its polls ([`Completions::Spin`] only: a thread that sleeps in `wait` spends its
    /// idle time asleep, where no poll counts it).
    pub polls: Option<PollStats>,
}

impl ThreadStats {
    /// Empty statistics with histograms for latencies up to `max_latency` ticks (3
    /// significant figures), allocated now.
    pub fn new(max_latency: Ticks) -> ThreadStats {
        let hist = || Histogram::new_with_bounds(1, max_latency.max(2), 3).expect("valid histogram bounds");
        ThreadStats {
            ios: [0; DIRS],
            bytes: [0; DIRS],
            latency: [hist(), hist(), hist()],
            min_max: [(u64::MAX, 0); DIRS],
            errors: 0,
            error_samples: Vec::with_capacity(ERROR_SAMPLES),
            fatal: None,
            finished: NOT_YET,
            cpu: ThreadCpu::default(),
            cpus: None,
            interrupt_cpu: None,
            polls: None,
        }
    }

    /// Adds `other`'s I/Os, latencies, errors and CPU to these (fio's group_reporting);
    /// `finished` becomes the later of the two.
    pub fn merge(&mut self, other: &ThreadStats) {
        for d in 0..DIRS {
            self.ios[d] += other.ios[d];
            self.bytes[d] += other.bytes[d];
            // Same bounds on both sides (one run): adding cannot fail.
            let _ = self.latency[d].add(&other.latency[d]);
            self.min_max[d] = (
                self.min_max[d].0.min(other.min_max[d].0),
                self.min_max[d].1.max(other.min_max[d].1),
            );
        }
        self.errors += other.errors;
        for e in &other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES {
                self.error_samples.push(*e);
            }
        }
        if self.fatal.is_none() {
            self.fatal.clone_from(&other.fatal);
        }
        self.finished = match (self.finished, other.finished) {
            (NOT_YET, f) | (f, NOT_YET) => f,
            (a, b) => a.max(b),
        };
        let (a, b) = (&mut self.cpu, &other.cpu);
        a.user_s += b.user_s;
        a.sys_s += b.sys_s;
        a.ctx += b.ctx;
        a.majf += b.majf;
        a.minf += b.minf;
        if let Some(theirs) = &other.polls {
            self.polls.get_or_insert_with(PollStats::default).merge(theirs);
        }
    }

    /// Every thread's statistics merged ([`ThreadStats::merge`]); `None` for no threads.
    pub fn total(stats: &[ThreadStats]) -> Option<ThreadStats> {
        let (first, rest) = stats.split_first()?;
        let mut all = first.clone();
        for s in rest {
            all.merge(s);
        }
        Some(all)
    }

    #[inline]
    fn record(&mut self, dir: Dir, bytes: u64, latency: Ticks) {
        self.ios[dir] += 1;
        self.bytes[dir] += bytes;
        self.latency[dir].saturating_record(latency);
        let (min, max) = &mut self.min_max[dir];
        *min = (*min).min(latency);
        *max = (*max).max(latency);
    }

    #[inline]
    fn failed(&mut self, sample: ErrorSample) {
        self.errors += 1;
        if self.error_samples.len() < ERROR_SAMPLES {
            self.error_samples.push(sample);
        }
    }
}

/// Submit time, place, direction and accounting of the I/O under one tag.
#[derive(Clone, Copy, Default)]
struct Slot {
    submitted: Ticks,
    lba: u64,
    bytes: u64,
    dir: Dir,
    /// Counted toward a size-based run's bytes (submitted inside the measured window).
    counted: bool,
    /// A Zone Append's zone, in the thread's [`ZoneWriter`].
    zone: usize,
}

/// How a thread's loop runs, besides its queue, buffers and I/Os.
#[derive(Clone, Copy)]
pub struct LoopConfig<'a> {
    /// The clock every I/O is stamped with.
    pub clock: &'a Clock,
    /// The measured window.
    pub phases: &'a Phases,
    /// Latencies above this many ticks are recorded as this.
    pub max_latency: Ticks,
    /// How to wait for completions.
    pub completions: Completions,
    /// [`Completions::Hybrid`]: how long to spin without a completion before sleeping.
    pub hybrid_spin: Ticks,
    /// A size-based run (fio's `size` without `runtime`): the bytes this thread transfers
    /// inside the measured window before it stops on its own. `None`: it runs until the
    /// window ends.
    pub budget: Option<u64>,
    /// Whether the run has a ramp (I/O before the measured window). Without one, a
    /// size-based run submits nothing until the window opens, so that it transfers
    /// exactly its budget and `--randseed` repeats exactly its offsets.
    pub ramps: bool,
    /// Logical block size in bytes.
    pub block_size: u64,
    /// Gets the number of completed I/Os (any outcome, ramp included) after every batch,
    /// for the live display.
    pub progress: &'a AtomicU64,
    /// On a zoned namespace, its zone size in blocks: reads are kept inside one zone
    /// ([`ZoneLayout::inside_zone`]).
    pub zone_blocks: Option<u64>,
}

/// Runs one thread's workload on `q` with `bufs` (one per tag: a buffer of the largest
/// I/O size for the data workloads, `None` for trims) until the window in `cfg.phases`
/// ends or, in a size-based run, until its bytes are done; then drains the queue.
///
/// With `zones` (writes on a zoned namespace), each write is a Zone Append where the
/// writer places it, and the writer's zone resets are submitted with tags from
/// `bufs.len()` on. A reset goes in place of the write it comes before, whose buffer waits
/// in the ready list, so the queue never holds more commands than there are buffers. A
/// reset that fails stops the thread. Resets are not I/Os: they are neither measured nor
/// counted.
///
/// What is measured: in a time-based run, every I/O that completes inside the window; in
/// a size-based run, every I/O submitted inside the window (so that exactly the budget is
/// measured) that completes before it is cut short (Ctrl-C).
pub fn run<Q: BlockQueue>(
    q: &mut Q,
    bufs: Vec<Option<DmaBuf>>,
    ios: &mut Generator,
    mut zones: Option<&mut ZoneWriter>,
    cfg: LoopConfig,
) -> ThreadStats {
    let LoopConfig {
        clock,
        phases,
        max_latency,
        completions,
        hybrid_spin,
        budget,
        ramps,
        block_size,
        progress,
        zone_blocks,
    } = cfg;
    // Hybrid: when the polls started coming back empty.
    let mut idle_since: Option<Ticks> = None;
    // Spin: the polls, and when the last one ended.
    let mut polls = (completions == Completions::Spin).then(PollStats::default);
    let mut last_poll = clock.now();
    let qd = bufs.len();
    let mut stats = ThreadStats::new(max_latency);
    let mut slots = vec![Slot::default(); qd];
    let mut ready: Vec<(usize, Option<DmaBuf>)> = bufs.into_iter().enumerate().collect();
    let mut done = 0u64;
    let mut stopping = false;
    let mut left = budget.unwrap_or(u64::MAX);
    let mut usage: Option<Usage> = None;
    // An I/O drawn but refused (queue full, recovering): the next one submitted, so the
    // offsets follow the generator's sequence whatever the queue does.
    let mut refused: Option<Io> = None;

    loop {
        // I/Os this iteration submitted (for the polls' busy time).
        let mut submitted = 0;
        let (from, until) = phases.get();
        if usage.is_none() && from != NOT_YET {
            usage = Some(Usage::thread());
        }
        stopping |= until != NOT_YET;
        let measuring = from != NOT_YET;
        let may_submit = measuring || budget.is_none() || ramps;
        if !stopping && left > 0 && may_submit {
            while let Some((tag, mut buf)) = ready.pop() {
                if left == 0 {
                    ready.push((tag, buf));
                    break;
                }
                let io = refused.take().unwrap_or_else(|| ios.next_io());
                let Io { lba, mut lbas, dir } = io;
                let mut zone = 0;
                let op = match dir {
                    READ => Op::Read {
                        lba: zone_blocks.map_or(lba, |zb| ZoneLayout::inside_zone(zb, lba, lbas)),
                    },
                    WRITE => match zones.as_deref_mut().map(|w| w.place(lbas)) {
                        None => Op::Write { lba, fua: false },
                        Some(Placement::Append {
                            zslba,
                            lbas: n,
                            zone: z,
                        }) => {
                            (lbas, zone) = (n, z);
                            Op::ZoneAppend { zslba }
                        }
                        Some(placement) => {
                            ready.push((tag, buf));
                            refused = Some(io);
                            if let Placement::Reset { zslba, zone } = placement {
                                let reset = Op::ZoneReset { zslba };
                                if let Err(e) = q.submit(reset, None, (qd + zone) as u64) {
                                    // Tried again at the next write, unless it cannot work.
                                    if let Some(w) = zones.as_deref_mut() {
                                        w.reset_done(zone, false);
                                    }
                                    if !matches!(e.error, BlockError::QueueFull(_) | BlockError::Recovering) {
                                        stats.fatal =
                                            Some(format!("reset of the zone at LBA {zslba} refused: {}", e.error));
                                        stopping = true;
                                    }
                                } else {
                                    submitted += 1;
                                }
                            }
                            break;
                        }
                    },
                    _ => Op::Deallocate {
                        lba,
                        blocks: lbas as u32,
                    },
                };
                let bytes = lbas * block_size;
                let data = if dir == TRIM {
                    None
                } else if let Some(b) = buf.as_mut() {
                    if b.len() as u64 != bytes {
                        // Within the buffer's capacity: it holds the largest size.
                        let _ = b.set_window(0, bytes as usize);
                    }
                    buf.take()
                } else {
                    None
                };
                let counted = budget.is_some() && measuring;
                // Where it goes: a read moved back into its zone, an append's zone.
                let at = match op {
                    Op::Read { lba: at } | Op::ZoneAppend { zslba: at } => at,
                    _ => lba,
                };
                slots[tag] = Slot {
                    submitted: clock.now(),
                    lba: at,
                    bytes,
                    dir,
                    counted,
                    zone,
                };
                if let Err(e) = q.submit(op, data, tag as u64) {
                    ready.push((tag, e.buf.or(buf)));
                    refused = Some(io);
                    if let Some(w) = zones.as_deref_mut() {
                        if let Op::ZoneAppend { .. } = op {
                            w.unplace(zone, lbas);
                        }
                    }
                    if !matches!(e.error, BlockError::QueueFull(_) | BlockError::Recovering) {
                        stats.fatal = Some(format!("{} of LBA {at} refused: {}", op.name(), e.error));
                        stopping = true;
                    }
                    break;
                }
                if counted {
                    left = left.saturating_sub(bytes);
                }
                submitted += 1;
            }
            if let Err(e) = q.ring() {
                stats.fatal = Some(format!("ring: {e}"));
                stopping = true;
            }
        }
        if q.outstanding() == 0 && (stopping || left == 0 || ready.is_empty()) {
            if !stopping && left > 0 {
                stats.fatal = Some("every buffer was lost to failed commands".into());
            }
            break;
        }

        let mut on_complete = |c: Completion| {
            let tag = c.tag as usize;
            if tag >= qd {
                // A zone reset (run() only submits them with a writer).
                let Some(w) = zones.as_deref_mut() else { return };
                let zone = tag - qd;
                w.reset_done(zone, c.result.is_ok());
                if let Err(status) = c.result {
                    stats.fatal = Some(format!("reset of the zone at LBA {} failed: {status}", w.start(zone)));
                    stopping = true;
                }
                return;
            }
            let t = clock.now();
            done += 1;
            let slot = slots[tag];
            if slot.dir == WRITE {
                if let Some(w) = zones.as_deref_mut() {
                    w.appended(slot.zone);
                }
            }
            let measured = t < until && if budget.is_some() { slot.counted } else { t >= from };
            match c.result {
                Ok(()) if measured => stats.record(slot.dir, slot.bytes, t.saturating_sub(slot.submitted)),
                Ok(()) => {}
                Err(status) => stats.failed(ErrorSample {
                    dir: slot.dir,
                    lba: slot.lba,
                    status,
                }),
            }
            // A trim has no buffer; a data I/O whose buffer did not come back (VFIO,
            // after a controller that could not be stopped) loses its tag.
            if slot.dir == TRIM || c.buf.is_some() {
                ready.push((tag, c.buf));
            }
        };
        if q.outstanding() == 0 && !may_submit {
            // Nothing in flight while the window is not open yet: yield, so the thread
            // that opens it gets the CPU. (A refused submission still polls below: a
            // recovering queue finishes its recovery there.)
            std::thread::yield_now();
            continue;
        }
        let n = match completions {
            Completions::Spin => q.poll(qd, &mut on_complete),
            Completions::Interrupt => q.wait(qd, &mut on_complete),
            Completions::Hybrid => match q.poll(qd, &mut on_complete) {
                0 if q.outstanding() > 0 => {
                    let now = clock.now();
                    let since = *idle_since.get_or_insert(now);
                    if now.saturating_sub(since) < hybrid_spin {
                        0
                    } else {
                        idle_since = None;
                        q.wait(qd, &mut on_complete)
                    }
                }
                n => {
                    idle_since = None;
                    n
                }
            },
        };
        // No PAUSE (`spin_loop`) after an empty poll: each iteration is a whole poll, not
        // a wait on one cache line, and neither SPDK's perf nor fio pause in theirs. Under
        // QEMU's TCG a PAUSE ends the translated block (`helper_pause` exits the CPU
        // loop): without it the io_uring backends made 7–32% more IOPS spinning at QD32
        // (one A/B run, three rounds).
        if n > 0 {
            progress.store(done, Ordering::Relaxed);
        }
        if let Some(p) = polls.as_mut() {
            let now = clock.now();
            // The window's end read again: the iteration it closed during does not count.
            if from <= last_poll && now < phases.get().1 {
                p.count(n + submitted, now.saturating_sub(last_poll));
            }
            last_poll = now;
        }
    }
    stats.polls = polls;
    stats.finished = clock.now();
    let end = Usage::thread();
    stats.cpu = usage.unwrap_or(end).until(&end);
    stats
}

#[cfg(test)]
mod tests {
    use super::super::workload::{Region, Rw, WRITE};
    use super::*;
    use crate::block::{NamespaceInfo, SubmitError};
    use crate::nvme::block::GeometrySource;
    use crate::nvme::hw::HeapRegion;
    use std::collections::VecDeque;
    use std::sync::Arc;
    use std::time::Duration;

    /// A queue that completes everything at `ring`, failing I/Os to one LBA.
    struct FakeQueue {
        info: NamespaceInfo,
        depth: usize,
        queued: Vec<Completion>,
        done: VecDeque<Completion>,
        bad_lba: u64,
        dead: bool,
        ops: [u64; 3],
        max_outstanding: usize,
        /// After each poll that may complete something, this many find nothing (a device
        /// still busy), and how many of those are left.
        empty_polls: u64,
        stalls: u64,
        /// A zoned namespace: zone size, capacity, each zone's write pointer (from its
        /// start) and appends outstanding, and the zone of each outstanding append's tag.
        zones: Option<Zones>,
    }

    struct Zones {
        size: u64,
        capacity: u64,
        wp: Vec<u64>,
        in_flight: Vec<u32>,
        tag_zone: std::collections::HashMap<u64, usize>,
        resets: u64,
    }

    impl FakeQueue {
        fn new(depth: usize, bad_lba: u64) -> FakeQueue {
            FakeQueue {
                info: NamespaceInfo {
                    nsid: 1,
                    block_size: 512,
                    blocks: 1 << 20,
                    max_transfer_bytes: 1 << 20,
                    buffer_alignment: 512,
                    write_zeroes: false,
                    deallocate: false,
                    deallocate_zeroes: false,
                    compare: false,
                    verify: false,
                    volatile_write_cache: false,
                    zone_commands: false,
                    metadata: crate::nvme::block::MetadataFormat::NONE,
                    source: GeometrySource::File,
                },
                depth,
                queued: Vec::with_capacity(depth),
                done: VecDeque::with_capacity(depth),
                bad_lba,
                dead: false,
                ops: [0; 3],
                max_outstanding: 0,
                empty_polls: 0,
                stalls: 0,
                zones: None,
            }
        }

        /// A zoned namespace of `count` zones of `size` blocks, `capacity` writable.
        fn zoned(depth: usize, size: u64, capacity: u64, count: usize) -> FakeQueue {
            let mut q = FakeQueue::new(depth, u64::MAX);
            q.info.zone_commands = true;
            q.zones = Some(Zones {
                size,
                capacity,
                wp: vec![0; count],
                in_flight: vec![0; count],
                tag_zone: Default::default(),
                resets: 0,
            });
            q
        }

        /// What a zoned device does with `op`: its direction and result.
        fn zoned_op(&mut self, op: Op, buf: Option<&DmaBuf>, tag: u64) -> (Option<Dir>, Result<(), IoStatus>) {
            let z = self.zones.as_mut().expect("zoned");
            let blocks = buf.map_or(0, |b| b.len() as u64 / 512);
            match op {
                Op::Read { lba } => {
                    assert_eq!(lba / z.size, (lba + blocks - 1) / z.size, "a read across zones");
                    (Some(READ), Ok(()))
                }
                Op::ZoneAppend { zslba } => {
                    assert_eq!(zslba % z.size, 0, "ZSLBA {zslba} starts no zone");
                    let zone = (zslba / z.size) as usize;
                    z.tag_zone.insert(tag, zone);
                    z.in_flight[zone] += 1;
                    if z.wp[zone] + blocks > z.capacity {
                        return (Some(WRITE), Err(IoStatus::Nvme(crate::nvme::Status::new(1, 0xB9))));
                    }
                    z.wp[zone] += blocks;
                    (Some(WRITE), Ok(()))
                }
                Op::ZoneReset { zslba } => {
                    let zone = (zslba / z.size) as usize;
                    assert_eq!(z.in_flight[zone], 0, "zone {zone} reset under its appends");
                    z.wp[zone] = 0;
                    z.resets += 1;
                    (None, Ok(()))
                }
                other => panic!("{} on a zoned namespace", other.name()),
            }
        }
    }

    impl BlockQueue for FakeQueue {
        fn namespace(&self) -> &NamespaceInfo {
            &self.info
        }
        fn depth(&self) -> usize {
            self.depth
        }
        fn outstanding(&self) -> usize {
            self.queued.len() + self.done.len()
        }
        fn submit(&mut self, op: Op, buf: Option<DmaBuf>, tag: u64) -> Result<(), SubmitError> {
            if self.dead {
                return Err(SubmitError {
                    error: BlockError::Dead("gone".into()),
                    buf,
                });
            }
            if self.outstanding() == self.depth {
                return Err(SubmitError {
                    error: BlockError::QueueFull(self.depth),
                    buf,
                });
            }
            if self.zones.is_some() {
                let (dir, result) = self.zoned_op(op, buf.as_ref(), tag);
                if let Some(dir) = dir {
                    self.ops[dir] += 1;
                }
                self.queued.push(Completion { tag, buf, result });
                self.max_outstanding = self.max_outstanding.max(self.outstanding());
                return Ok(());
            }
            let (lba, dir) = match op {
                Op::Read { lba } => (lba, READ),
                Op::Write { lba, .. } => (lba, WRITE),
                Op::Deallocate { lba, .. } => {
                    assert!(buf.is_none(), "a trim takes no buffer");
                    (lba, TRIM)
                }
                _ => unreachable!("perf reads, writes and trims only"),
            };
            self.ops[dir] += 1;
            let result = if lba == self.bad_lba {
                Err(IoStatus::Os(libc::EIO))
            } else {
                Ok(())
            };
            self.queued.push(Completion { tag, buf, result });
            self.max_outstanding = self.max_outstanding.max(self.outstanding());
            Ok(())
        }
        fn ring(&mut self) -> Result<(), BlockError> {
            self.done.extend(self.queued.drain(..));
            Ok(())
        }
        fn poll<F: FnMut(Completion)>(&mut self, max: usize, mut f: F) -> usize {
            if self.stalls > 0 {
                self.stalls -= 1;
                return 0;
            }
            self.stalls = self.empty_polls;
            let n = max.min(self.done.len());
            for c in self.done.drain(..n) {
                if let Some(z) = self.zones.as_mut() {
                    if let Some(zone) = z.tag_zone.remove(&c.tag) {
                        z.in_flight[zone] -= 1;
                    }
                }
                f(c);
            }
            n
        }
    }

    fn bufs(n: usize, size: usize) -> Vec<Option<DmaBuf>> {
        DmaBuf::from_region(Arc::new(HeapRegion::new(n * size, 4096, 0).unwrap()))
            .into_chunks(size, n)
            .unwrap()
            .into_iter()
            .map(Some)
            .collect()
    }

    fn cfg<'a>(
        clock: &'a Clock,
        phases: &'a Phases,
        completions: Completions,
        budget: Option<u64>,
        progress: &'a AtomicU64,
    ) -> LoopConfig<'a> {
        LoopConfig {
            clock,
            phases,
            max_latency: MAX,
            completions,
            hybrid_spin: 0,
            budget,
            ramps: true,
            block_size: 512,
            progress,
            zone_blocks: None,
        }
    }

    /// Runs `body` while another thread ends the ramp after `ramp_ms` and the run
    /// `run_ms` later.
    fn timed<T>(clock: &Clock, ramp_ms: u64, run_ms: u64, body: impl FnOnce(&Phases) -> T) -> T {
        let phases = Phases::default();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(ramp_ms));
                phases.start(clock.now());
                std::thread::sleep(Duration::from_millis(run_ms));
                phases.end(clock.now());
            });
            body(&phases)
        })
    }

    const MAX: Ticks = 1 << 40;

    #[test]
    fn keeps_the_queue_full_and_counts_errors() {
        let region = Region {
            first_lba: 0,
            granule: 8,
            granules: 4,
        };
        let mut ios = Generator::new(Rw::Randrw, 50, region, &[(8, 100)], 3);
        let mut q = FakeQueue::new(16, 8);
        let clock = Clock::new(Some(super::super::clock::ClockSource::Instant));
        let progress = AtomicU64::new(0);
        let s = timed(&clock, 10, 50, |phases| {
            run(
                &mut q,
                bufs(16, 4096),
                &mut ios,
                None,
                cfg(&clock, phases, Completions::Spin, None, &progress),
            )
        });
        assert_eq!(q.max_outstanding, 16, "the queue is kept full");
        assert_eq!(q.outstanding(), 0, "drained at the end");
        assert!(s.fatal.is_none(), "{:?}", s.fatal);
        assert!(s.ios[READ] > 100 && s.ios[WRITE] > 100, "{:?}", s.ios);
        let total = q.ops[READ] + q.ops[WRITE];
        assert_eq!(progress.load(Ordering::Relaxed), total);
        // One slot in four is the failing LBA 8; the ramp is excluded from `ios` only.
        assert!(s.errors > total / 8 && s.errors < total / 2, "{} of {total}", s.errors);
        assert!(s.ios[READ] + s.ios[WRITE] + s.errors <= total);
        assert_eq!(s.error_samples.len(), ERROR_SAMPLES);
        assert!(
            s.error_samples
                .iter()
                .all(|e| e.lba == 8 && e.status == IoStatus::Os(libc::EIO))
        );
        assert_eq!(s.latency[READ].len(), s.ios[READ]);
        assert!(s.min_max[READ].0 <= s.min_max[READ].1);
    }

    /// Runs a randrw thread with zones `mine` (ZSLBA, ZCAP, written) of a fake zoned
    /// namespace of four 64-block zones of capacity 48 whose write pointers are `wp`.
    fn zoned_run(mine: &[(u64, u64, u64)], wp: [u64; 4], depth: usize) -> (ThreadStats, FakeQueue) {
        let region = Region {
            first_lba: 0,
            granule: 8,
            granules: 32,
        };
        let mut ios = Generator::new(Rw::Randrw, 30, region, &[(8, 50), (24, 50)], 5);
        let mut q = FakeQueue::zoned(depth, 64, 48, 4);
        q.zones.as_mut().unwrap().wp = wp.to_vec();
        let mut writer = ZoneWriter::new(super::super::zones::tests::spans(mine));
        let clock = Clock::new(Some(super::super::clock::ClockSource::Instant));
        let progress = AtomicU64::new(0);
        let s = timed(&clock, 5, 50, |phases| {
            let config = LoopConfig {
                zone_blocks: Some(64),
                ..cfg(&clock, phases, Completions::Spin, None, &progress)
            };
            run(&mut q, bufs(8, 24 * 512), &mut ios, Some(&mut writer), config)
        });
        (s, q)
    }

    #[test]
    fn zoned_writes_are_appends_that_fill_and_reset_the_threads_zones() {
        // This thread has zones 1 and 3, and zone 3 already holds 40 blocks; or only zone
        // 2, so that it resets the zone its last appends went to. The fake device fails
        // an append past a zone's capacity, and panics on a read across zones or a reset
        // under appends.
        // The queue is as deep as there are buffers (eight): a reset takes the place of
        // the write it comes before (the fake refuses a ninth command).
        let cases = [
            (&[(64, 48, 0), (192, 48, 40)][..], [0, 2], 8),
            (&[(128, 48, 0)][..], [0, 1], 8),
        ];
        for (mine, other, depth) in cases {
            let (s, q) = zoned_run(mine, [0, 0, 0, 40], depth);
            assert!(s.fatal.is_none(), "{:?}", s.fatal);
            assert_eq!(s.errors, 0, "{:?}", s.error_samples);
            assert_eq!(q.outstanding(), 0, "drained at the end");
            let z = q.zones.as_ref().unwrap();
            assert!(z.resets > 10, "{} resets", z.resets);
            assert_eq!(
                (z.wp[other[0]], z.wp[other[1]]),
                (0, 0),
                "zones of other threads are not written"
            );
            assert!(s.ios[WRITE] > 100 && s.ios[READ] > 100, "{:?}", s.ios);
        }
    }

    /// A spinning thread counts its polls inside the window, and the time of those that
    /// neither submitted nor completed anything as idle; a sleeping one counts none.
    #[test]
    fn spinning_threads_count_their_idle_polls() {
        let region = Region {
            first_lba: 0,
            granule: 8,
            granules: 4,
        };
        let clock = Clock::new(Some(super::super::clock::ClockSource::Instant));
        let progress = AtomicU64::new(0);
        let polls = |empty_polls: u64, completions: Completions| {
            let mut ios = Generator::new(Rw::Randread, 100, region, &[(8, 100)], 3);
            let mut q = FakeQueue::new(4, u64::MAX);
            q.empty_polls = empty_polls;
            let (s, (from, until)) = timed(&clock, 30, 50, |phases| {
                let s = run(
                    &mut q,
                    bufs(4, 4096),
                    &mut ios,
                    None,
                    cfg(&clock, phases, completions, None, &progress),
                );
                (s, phases.get())
            });
            assert!(s.fatal.is_none(), "{:?}", s.fatal);
            // Only the window's iterations count, not the 30 ms of ramp (the slack: the
            // main thread may be preempted between reading the clock and closing it).
            if let Some(p) = s.polls {
                assert!(p.ticks <= until - from + 10_000_000, "{p:?} in {} ns", until - from);
            }
            s.polls
        };
        // Every poll completes something: nothing idle.
        let Some(busy) = polls(0, Completions::Spin) else {
            panic!("a spinning thread counts its polls")
        };
        assert!(busy.polls > 100, "{busy:?}");
        assert_eq!((busy.empty, busy.empty_ticks, busy.idle_percent()), (0, 0, Some(0.0)));
        // Two empty polls after each full one: the first of them ends the iteration that
        // submitted, so it is busy; the second did nothing. One iteration in three.
        let Some(p) = polls(2, Completions::Spin) else {
            panic!("a spinning thread counts its polls")
        };
        assert!(p.empty.abs_diff(p.polls / 3) <= 1, "{p:?}");
        let idle = p.idle_percent().unwrap();
        assert!(idle > 0.0 && idle < 100.0 && p.empty_ticks < p.ticks, "{p:?}: {idle}%");
        assert_eq!(polls(2, Completions::Interrupt), None, "a sleeping thread has no polls");
    }

    #[test]
    fn a_queue_that_never_takes_an_io_ends_at_the_deadline() {
        let region = Region {
            first_lba: 0,
            granule: 8,
            granules: 4,
        };
        let mut ios = Generator::new(Rw::Read, 100, region, &[(8, 100)], 3);
        let mut q = FakeQueue::new(0, u64::MAX);
        let clock = Clock::new(Some(super::super::clock::ClockSource::Instant));
        let progress = AtomicU64::new(0);
        let s = timed(&clock, 0, 20, |phases| {
            run(
                &mut q,
                bufs(2, 4096),
                &mut ios,
                None,
                cfg(&clock, phases, Completions::Interrupt, None, &progress),
            )
        });
        // Queue full with nothing outstanding never clears: the run simply ends.
        assert_eq!((s.ios, s.errors), ([0, 0, 0], 0));
        assert!(s.fatal.is_none());
    }

    #[test]
    fn a_refused_submission_stops_the_thread() {
        let region = Region {
            first_lba: 0,
            granule: 8,
            granules: 4,
        };
        let mut ios = Generator::new(Rw::Read, 100, region, &[(8, 100)], 3);
        let mut q = FakeQueue::new(4, u64::MAX);
        q.dead = true;
        let clock = Clock::new(Some(super::super::clock::ClockSource::Instant));
        let progress = AtomicU64::new(0);
        let (s, took) = timed(&clock, 0, 1000, |phases| {
            let t = std::time::Instant::now();
            let s = run(
                &mut q,
                bufs(2, 4096),
                &mut ios,
                None,
                cfg(&clock, phases, Completions::Spin, None, &progress),
            );
            (s, t.elapsed())
        });
        let fatal = s.fatal.expect("stopped");
        assert!(
            fatal.contains("read of LBA") && fatal.contains("queue is dead: gone"),
            "{fatal}"
        );
        assert!(
            took < Duration::from_millis(500),
            "stopped at once, not at the end: {took:?}"
        );
    }

    #[test]
    fn a_size_based_run_measures_its_bytes_and_ends_by_itself() {
        let region = Region {
            first_lba: 0,
            granule: 8,
            granules: 64,
        };
        let clock = Clock::new(Some(super::super::clock::ClockSource::Instant));
        for rw in [Rw::Randread, Rw::Write, Rw::Randtrim] {
            let mut ios = Generator::new(rw, 100, region, &[(8, 50), (16, 50)], 3);
            let mut q = FakeQueue::new(8, u64::MAX);
            let progress = AtomicU64::new(0);
            let phases = Phases::default();
            phases.start(clock.now());
            let budget = 1 << 20;
            let bufs = if rw.trims() {
                (0..8).map(|_| None).collect()
            } else {
                bufs(8, 8192)
            };
            let s = run(
                &mut q,
                bufs,
                &mut ios,
                None,
                cfg(&clock, &phases, Completions::Spin, Some(budget), &progress),
            );
            let d = rw.dirs()[0];
            assert!(s.fatal.is_none() && s.errors == 0, "{rw:?}: {s:?}");
            // 4 KiB and 8 KiB I/Os: the last one may go past the budget by less than one.
            assert!(
                s.bytes[d] >= budget && s.bytes[d] < budget + 8192,
                "{rw:?}: {:?}",
                s.bytes
            );
            assert_eq!(s.ios[d], q.ops[d], "{rw:?}: every I/O was measured");
            assert_eq!(s.latency[d].len(), s.ios[d]);
            assert!(s.ios[d] > 128 && s.ios[d] < 256, "{rw:?}: {:?}", s.ios);
            assert_ne!(s.finished, NOT_YET);
        }
        // Fixed-size I/Os measure the budget exactly; nothing before the window counts.
        let mut ios = Generator::new(Rw::Randwrite, 0, region, &[(8, 100)], 3);
        let mut q = FakeQueue::new(4, u64::MAX);
        let progress = AtomicU64::new(0);
        let phases = Phases::default();
        let s = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                phases.start(clock.now());
            });
            let c = cfg(&clock, &phases, Completions::Interrupt, Some(400 * 4096), &progress);
            run(&mut q, bufs(4, 4096), &mut ios, None, c)
        });
        assert_eq!((s.ios[WRITE], s.bytes[WRITE]), (400, 400 * 4096));
        assert!(
            q.ops[WRITE] > 400,
            "the ramp's writes ran but are not counted: {}",
            q.ops[WRITE]
        );
        // Without a ramp nothing is submitted before the window opens: exactly the budget
        // is written, so a seed repeats exactly its offsets.
        let mut ios = Generator::new(Rw::Randwrite, 0, region, &[(8, 100)], 3);
        let mut q = FakeQueue::new(4, u64::MAX);
        let phases = Phases::default();
        let s = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                phases.start(clock.now());
            });
            let c = LoopConfig {
                ramps: false,
                ..cfg(&clock, &phases, Completions::Interrupt, Some(400 * 4096), &progress)
            };
            run(&mut q, bufs(4, 4096), &mut ios, None, c)
        });
        assert_eq!((s.ios[WRITE], q.ops[WRITE]), (400, 400));
    }
}
