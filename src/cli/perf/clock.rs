//! The clock perf stamps every I/O with, twice.
//!
//! `Instant::now()` is a vDSO call (about 20 ns) where the kernel's clocksource is the TSC,
//! but a system call (a microsecond or more) where it is not — under QEMU's TCG, for one.
//! Two readings per I/O at that price would be a measurable share of the work, so perf
//! measures what `Instant::now()` costs before it starts and, when it is expensive, reads
//! the time-stamp counter (`rdtsc`) instead, as the driver does for command deadlines.
//!
//! Either way a reading is a [`Ticks`] count: nanoseconds since the clock was made
//! ([`ClockSource::Instant`]) or raw TSC cycles ([`ClockSource::Tsc`]). Latencies are
//! recorded in ticks and converted once, at the end, with a rate measured against
//! `Instant` over the whole measured window ([`Calibration`]). That window is seconds
//! long, so the rate is far more exact than a calibration taken before the run: in the
//! TCG guest a 10 ms calibration was once 25% off, the vCPU having been descheduled
//! between its readings. The pre-run estimate only sizes the latency histograms.

use std::time::{Duration, Instant};

/// A clock reading.
pub type Ticks = u64;

/// `Instant::now()` costing more than this (mean, ns) makes `auto` pick the TSC.
const EXPENSIVE_INSTANT_NS: f64 = 100.0;

/// What the clock reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClockSource {
    /// `std::time::Instant` (the kernel's clocksource through the vDSO).
    Instant,
    /// The x86-64 time-stamp counter, calibrated against `Instant`.
    Tsc,
}

impl ClockSource {
    /// The name in reports.
    pub const fn name(self) -> &'static str {
        match self {
            ClockSource::Instant => "instant",
            ClockSource::Tsc => "tsc",
        }
    }
}

/// A monotonic clock whose readings are cheap enough to take twice per I/O.
#[derive(Clone, Debug)]
pub struct Clock {
    source: ClockSource,
    origin: Instant,
    /// Ticks per nanosecond, from a short calibration; for sizing only.
    estimate: f64,
    /// What one `Instant::now()` cost when measured, in ns.
    instant_cost_ns: f64,
}

impl Clock {
    /// A clock reading `source`, or for `None` the TSC when `Instant::now()` is expensive
    /// here and a usable TSC exists (x86-64 only), `Instant` otherwise.
    pub fn new(source: Option<ClockSource>) -> Clock {
        let instant_cost_ns = instant_cost_ns();
        let tsc = tsc_rate_estimate();
        let source = match (source, tsc) {
            (Some(ClockSource::Tsc), Some(_)) => ClockSource::Tsc,
            (Some(_), _) => ClockSource::Instant,
            (None, Some(_)) if instant_cost_ns > EXPENSIVE_INSTANT_NS => ClockSource::Tsc,
            (None, _) => ClockSource::Instant,
        };
        let estimate = match source {
            ClockSource::Tsc => tsc.unwrap_or(1.0),
            ClockSource::Instant => 1.0,
        };
        Clock {
            source,
            origin: Instant::now(),
            estimate,
            instant_cost_ns,
        }
    }

    /// What the clock reads.
    pub fn source(&self) -> ClockSource {
        self.source
    }

    /// The measured cost of one `Instant::now()`, in ns.
    pub fn instant_cost_ns(&self) -> f64 {
        self.instant_cost_ns
    }

    /// The current time.
    #[inline]
    pub fn now(&self) -> Ticks {
        match self.source {
            ClockSource::Tsc => rdtsc(),
            ClockSource::Instant => self.origin.elapsed().as_nanos() as u64,
        }
    }

    /// `d` in ticks, by the pre-run estimate of the rate (for bounds, not measurements).
    pub fn ticks_for(&self, d: Duration) -> Ticks {
        (d.as_secs_f64() * 1e9 * self.estimate).min(u64::MAX as f64 / 4.0) as u64
    }

    /// Starts measuring the tick rate against `Instant`; see [`Calibration::finish`].
    pub fn calibration(&self) -> Calibration {
        Calibration {
            ticks: self.now(),
            at: Instant::now(),
        }
    }
}

/// The start of a tick-rate measurement.
#[derive(Clone, Copy, Debug)]
pub struct Calibration {
    ticks: Ticks,
    at: Instant,
}

impl Calibration {
    /// The tick reading at the start.
    pub fn ticks(&self) -> Ticks {
        self.ticks
    }

    /// The `Instant` at the start.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// Ticks per nanosecond between the start and `now` (a reading of `clock` taken just
    /// before); exactly 1 for [`ClockSource::Instant`].
    pub fn rate(&self, clock: &Clock, now: Ticks) -> f64 {
        if clock.source == ClockSource::Instant {
            return 1.0;
        }
        let ticks = now.wrapping_sub(self.ticks) as f64;
        let ns = self.at.elapsed().as_nanos() as f64;
        if ns > 0.0 && ticks > 0.0 {
            ticks / ns
        } else {
            clock.estimate
        }
    }

    /// Ticks per nanosecond between the start and now, on `clock`.
    pub fn finish(&self, clock: &Clock) -> f64 {
        self.rate(clock, clock.now())
    }
}

/// The mean cost of `Instant::now()` here, in ns.
fn instant_cost_ns() -> f64 {
    const CALLS: u32 = 2000;
    let start = Instant::now();
    let mut last = start;
    for _ in 0..CALLS {
        last = std::hint::black_box(Instant::now());
    }
    (last - start).as_nanos() as f64 / f64::from(CALLS)
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn rdtsc() -> Ticks {
    // SAFETY: `rdtsc` has no preconditions on x86-64; it only reads the time-stamp counter.
    unsafe { std::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn rdtsc() -> Ticks {
    unreachable!("ClockSource::Tsc is only chosen on x86-64")
}

/// TSC ticks per ns over 10 ms, if the TSC advances at a plausible rate (x86-64 only).
fn tsc_rate_estimate() -> Option<f64> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    let (t0, i0) = (rdtsc(), Instant::now());
    std::thread::sleep(Duration::from_millis(10));
    let (t1, ns) = (rdtsc(), i0.elapsed().as_nanos() as f64);
    let rate = t1.wrapping_sub(t0) as f64 / ns;
    // Between 50 MHz and 100 GHz: anything else is a TSC that stands still or jumps.
    (0.05..100.0).contains(&rate).then_some(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sources_measure_a_sleep() {
        let sources: &[ClockSource] = if cfg!(target_arch = "x86_64") {
            &[ClockSource::Instant, ClockSource::Tsc]
        } else {
            &[ClockSource::Instant]
        };
        for &source in sources {
            let clock = Clock::new(Some(source));
            assert_eq!(clock.source(), source);
            let cal = clock.calibration();
            let a = clock.now();
            std::thread::sleep(Duration::from_millis(30));
            let b = clock.now();
            let per_ns = cal.finish(&clock);
            let ms = (b - a) as f64 / per_ns / 1e6;
            assert!((25.0..2000.0).contains(&ms), "{source:?}: {ms} ms");
            let est = clock.ticks_for(Duration::from_millis(30)) as f64;
            assert!(((b - a) as f64 / est) > 0.5, "{source:?}: estimate {est} vs {}", b - a);
        }
    }

    #[test]
    fn auto_picks_a_working_clock() {
        let clock = Clock::new(None);
        assert!(clock.instant_cost_ns() > 0.0);
        let a = clock.now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(clock.now() > a, "{:?}", clock.source());
    }
}
