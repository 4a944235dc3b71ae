//! One perf thread's I/O loop: keep the queue full for the run, stamp every I/O.
//!
//! Everything is allocated before the clock starts: the buffers (one DMA allocation cut
//! into `qd` chunks), a slot per tag (submit time, LBA, direction), the list of buffers
//! ready to go, two latency histograms and room for the first error samples. The loop
//! then does, per I/O, a submit, two clock readings, a histogram record and a vector
//! push/pop within capacity — no allocation, lock or system call of its own:
//!
//! 1. submit an I/O for every ready buffer (a tag is the buffer's index), then `ring`
//!    once for the batch;
//! 2. `poll` (or `wait`, on backends that complete synchronously at `ring`); each
//!    completion is timestamped, recorded if it finished inside the measured window, and
//!    its buffer becomes ready again;
//! 3. after the window ends, stop submitting and drain what is outstanding.

use super::clock::{Clock, Ticks};
use super::workload::{Dir, Generator, READ};
use crate::block::{BlockError, BlockQueue, Completion, IoStatus, Op};
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
    /// [`BlockQueue::wait`]: sleeps in the kernel until a completion arrives (io_uring:
    /// `io_uring_enter` with GETEVENTS); on the synchronous backends, which do the I/O
    /// inside `ring`, it finds it done.
    Wait,
}

/// A failed I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorSample {
    /// Read or write.
    pub dir: Dir,
    /// Its first LBA.
    pub lba: u64,
    /// Why it failed.
    pub status: IoStatus,
}

/// What one thread measured.
#[derive(Debug)]
pub struct ThreadStats {
    /// Successful I/Os that completed in the measured window, by direction.
    pub ios: [u64; 2],
    /// Their latencies (submit to completion) in ticks, by direction.
    pub latency: [Histogram<u64>; 2],
    /// Exact smallest and largest latency in ticks, by direction (`u64::MAX`/0 if none).
    pub min_max: [(Ticks, Ticks); 2],
    /// Failed I/Os (all of them, ramp included).
    pub errors: u64,
    /// The first [`ERROR_SAMPLES`] failed I/Os.
    pub error_samples: Vec<ErrorSample>,
    /// Why the thread stopped early (a refused submission, a failed `ring`).
    pub fatal: Option<String>,
}

impl ThreadStats {
    /// Empty statistics with histograms for latencies up to `max_latency` ticks (3
    /// significant figures), allocated now.
    pub fn new(max_latency: Ticks) -> ThreadStats {
        let hist = || Histogram::new_with_bounds(1, max_latency.max(2), 3).expect("valid histogram bounds");
        ThreadStats {
            ios: [0; 2],
            latency: [hist(), hist()],
            min_max: [(u64::MAX, 0); 2],
            errors: 0,
            error_samples: Vec::with_capacity(ERROR_SAMPLES),
            fatal: None,
        }
    }

    #[inline]
    fn record(&mut self, dir: Dir, latency: Ticks) {
        self.ios[dir] += 1;
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

/// Submit time, LBA and direction of the I/O under one tag.
#[derive(Clone, Copy, Default)]
struct Slot {
    submitted: Ticks,
    lba: u64,
    dir: Dir,
}

/// Runs one thread's workload on `q` with `bufs` (one per tag, each a whole I/O) until
/// `phases` ends, then drains the queue. Latencies above `max_latency` ticks are recorded
/// as that. `progress` gets the number of completed I/Os (any outcome, ramp included)
/// after every batch, for the live display.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
pub fn run<Q: BlockQueue>(
    q: &mut Q,
    bufs: Vec<DmaBuf>,
    ios: &mut Generator,
    clock: &Clock,
    phases: &Phases,
    max_latency: Ticks,
    completions: Completions,
    progress: &AtomicU64,
) -> ThreadStats {
    let qd = bufs.len();
    let mut stats = ThreadStats::new(max_latency);
    let mut slots = vec![Slot::default(); qd];
    let mut ready: Vec<(usize, DmaBuf)> = bufs.into_iter().enumerate().collect();
    let mut done = 0u64;
    let mut stopping = false;

    loop {
        let (from, until) = phases.get();
        stopping |= until != NOT_YET;
        if !stopping {
            while let Some((tag, buf)) = ready.pop() {
                let (lba, dir) = ios.next_io();
                let op = if dir == READ {
                    Op::Read { lba }
                } else {
                    Op::Write { lba, fua: false }
                };
                slots[tag] = Slot {
                    submitted: clock.now(),
                    lba,
                    dir,
                };
                if let Err(e) = q.submit(op, Some(buf), tag as u64) {
                    if let Some(buf) = e.buf {
                        ready.push((tag, buf));
                    }
                    if !matches!(e.error, BlockError::QueueFull(_) | BlockError::Recovering) {
                        stats.fatal = Some(format!("{} of LBA {lba} refused: {}", op.name(), e.error));
                        stopping = true;
                    }
                    break;
                }
            }
            if let Err(e) = q.ring() {
                stats.fatal = Some(format!("ring: {e}"));
                stopping = true;
            }
        }
        if q.outstanding() == 0 && (stopping || ready.is_empty()) {
            if !stopping {
                stats.fatal = Some("every buffer was lost to failed commands".into());
            }
            break;
        }

        let mut on_complete = |c: Completion| {
            let t = clock.now();
            done += 1;
            let tag = c.tag as usize;
            let slot = slots[tag];
            match c.result {
                Ok(()) if t >= from && t < until => stats.record(slot.dir, t.saturating_sub(slot.submitted)),
                Ok(()) => {}
                Err(status) => stats.failed(ErrorSample {
                    dir: slot.dir,
                    lba: slot.lba,
                    status,
                }),
            }
            if let Some(buf) = c.buf {
                ready.push((tag, buf));
            }
        };
        let n = match completions {
            Completions::Spin => q.poll(qd, &mut on_complete),
            Completions::Wait => q.wait(qd, &mut on_complete),
        };
        if n == 0 {
            std::hint::spin_loop();
        } else {
            progress.store(done, Ordering::Relaxed);
        }
    }
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
        ops: [u64; 2],
        max_outstanding: usize,
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
                    source: GeometrySource::File,
                },
                depth,
                queued: Vec::with_capacity(depth),
                done: VecDeque::with_capacity(depth),
                bad_lba,
                dead: false,
                ops: [0; 2],
                max_outstanding: 0,
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
            let (lba, dir) = match op {
                Op::Read { lba } => (lba, READ),
                Op::Write { lba, .. } => (lba, WRITE),
                _ => unreachable!("perf reads and writes only"),
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
            let n = max.min(self.done.len());
            self.done.drain(..n).for_each(&mut f);
            n
        }
    }

    fn bufs(n: usize, size: usize) -> Vec<DmaBuf> {
        DmaBuf::from_region(Arc::new(HeapRegion::new(n * size, 4096, 0).unwrap()))
            .into_chunks(size, n)
            .unwrap()
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
            lbas_per_io: 8,
            slots: 4,
        };
        let mut ios = Generator::new(Rw::Randrw, 50, region, 3);
        let mut q = FakeQueue::new(16, 8);
        let clock = Clock::new(Some(super::super::clock::ClockSource::Instant));
        let progress = AtomicU64::new(0);
        let s = timed(&clock, 10, 50, |phases| {
            run(
                &mut q,
                bufs(16, 4096),
                &mut ios,
                &clock,
                phases,
                MAX,
                Completions::Spin,
                &progress,
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

    #[test]
    fn a_queue_that_never_takes_an_io_ends_at_the_deadline() {
        let region = Region {
            first_lba: 0,
            lbas_per_io: 8,
            slots: 4,
        };
        let mut ios = Generator::new(Rw::Read, 100, region, 3);
        let mut q = FakeQueue::new(0, u64::MAX);
        let clock = Clock::new(Some(super::super::clock::ClockSource::Instant));
        let progress = AtomicU64::new(0);
        let s = timed(&clock, 0, 20, |phases| {
            run(
                &mut q,
                bufs(2, 4096),
                &mut ios,
                &clock,
                phases,
                MAX,
                Completions::Wait,
                &progress,
            )
        });
        // Queue full with nothing outstanding never clears: the run simply ends.
        assert_eq!((s.ios, s.errors), ([0, 0], 0));
        assert!(s.fatal.is_none());
    }

    #[test]
    fn a_refused_submission_stops_the_thread() {
        let region = Region {
            first_lba: 0,
            lbas_per_io: 8,
            slots: 4,
        };
        let mut ios = Generator::new(Rw::Read, 100, region, 3);
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
                &clock,
                phases,
                MAX,
                Completions::Spin,
                &progress,
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
}
