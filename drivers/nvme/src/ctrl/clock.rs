//! A cheap monotonic clock for command deadlines.
//!
//! Every I/O command gets a deadline, so reading the clock is on the submission path. On
//! x86_64 this is one `rdtsc` (no syscall even where the kernel's clocksource is not the
//! TSC, as under QEMU's TCG), calibrated once per process against `Instant`; elsewhere it
//! is `Instant`. Ticks are only compared with ticks; [`ticks_for`] converts durations.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Calibration {
    origin: Instant,
    #[cfg(target_arch = "x86_64")]
    tsc_origin: u64,
    /// Ticks per microsecond.
    per_us: f64,
}

fn calibration() -> &'static Calibration {
    static CAL: OnceLock<Calibration> = OnceLock::new();
    CAL.get_or_init(|| {
        let origin = Instant::now();
        #[cfg(target_arch = "x86_64")]
        {
            let tsc_origin = rdtsc();
            std::thread::sleep(Duration::from_millis(10));
            let (tsc_end, elapsed) = (rdtsc(), origin.elapsed());
            let per_us = (tsc_end.wrapping_sub(tsc_origin)) as f64 / elapsed.as_secs_f64() / 1e6;
            // A TSC that does not advance (or runs backwards) is useless: fall back to
            // nanoseconds from Instant by pretending 1000 ticks per µs and using Instant.
            Calibration {
                origin,
                tsc_origin,
                per_us: if per_us.is_finite() && per_us >= 1.0 {
                    per_us
                } else {
                    0.0
                },
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Calibration { origin, per_us: 1000.0 }
        }
    })
}

#[cfg(target_arch = "x86_64")]
fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` has no preconditions on x86_64; it only reads the time-stamp counter.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// The current time in ticks.
pub(crate) fn now() -> u64 {
    let cal = calibration();
    #[cfg(target_arch = "x86_64")]
    if cal.per_us > 0.0 {
        return rdtsc().wrapping_sub(cal.tsc_origin);
    }
    cal.origin.elapsed().as_nanos() as u64
}

/// Ticks per microsecond: the TSC's rate, or 1000 (nanoseconds from `Instant`).
fn per_us() -> f64 {
    let cal = calibration();
    if cal.per_us > 0.0 { cal.per_us } else { 1000.0 }
}

/// `d` in ticks (saturating).
pub(crate) fn ticks_for(d: Duration) -> u64 {
    (d.as_secs_f64() * 1e6 * per_us()).min(u64::MAX as f64) as u64
}

/// `ticks` as a duration (the inverse of [`ticks_for`]).
pub(crate) fn duration_of(ticks: u64) -> Duration {
    Duration::from_secs_f64(ticks as f64 / per_us() / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_advance_with_time() {
        let a = now();
        std::thread::sleep(Duration::from_millis(20));
        let b = now();
        let elapsed = b.wrapping_sub(a);
        assert!(
            elapsed >= ticks_for(Duration::from_millis(15)),
            "{elapsed} ticks in 20 ms"
        );
        assert!(elapsed <= ticks_for(Duration::from_secs(5)));
        assert_eq!(ticks_for(Duration::ZERO), 0);
        let ms = duration_of(ticks_for(Duration::from_millis(3)));
        assert!(
            ms.abs_diff(Duration::from_millis(3)) < Duration::from_micros(5),
            "{ms:?}"
        );
    }
}
