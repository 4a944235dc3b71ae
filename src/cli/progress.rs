//! Progress on standard error for long runs: a bar with an ETA where the total is known,
//! a running count where it is not, a spinner for a single long command.
//!
//! # Decisions
//!
//! - **Only on a terminal.** Every constructor returns a [`Progress`] that draws nothing
//!   when stderr is not a terminal (piped, redirected to a file, under CI), so logs and
//!   scripts see exactly the report and the `ironvme: ` error line, never `\r` and
//!   escape sequences. The decision is [`on_terminal`], made once per bar.
//! - **Cleared when done.** A bar disappears when its run ends ([`Progress::finish`], or
//!   when it is dropped on an error path), so the report that follows starts on a clean
//!   line.
//! - **One look.** Every bar is `elapsed [=====>    ] done/total rate ETA eta message`,
//!   drawn at most 20 times a second by indicatif; updating it costs an atomic store.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{self, IsTerminal};
use std::time::Duration;

/// How often a spinner turns.
const TICK: Duration = Duration::from_millis(120);

/// Bytes of a known total.
const BYTES_OF: &str = "{elapsed:>4} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}";
/// Bytes of an unknown total.
const BYTES: &str = "{elapsed:>4} {bytes} {binary_bytes_per_sec} {msg}";
/// Items of a known total; the prefix names the unit.
const COUNT_OF: &str = "{elapsed:>4} [{wide_bar}] {pos}/{len} {prefix} ETA {eta} {msg}";
/// Milliseconds of a known total.
const TIMED: &str = "{elapsed:>4} [{wide_bar}] ETA {eta} {msg}";
/// A spinner.
const SPINNER: &str = "{spinner} {msg} {elapsed}";

/// Whether progress is drawn: stderr is a terminal.
pub fn on_terminal() -> bool {
    io::stderr().is_terminal()
}

/// A progress display on stderr, or nothing (not a terminal). Cheap to update either way.
#[derive(Debug, Default)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// Nothing is drawn.
    pub fn hidden() -> Progress {
        Progress(None)
    }

    /// Bytes: with a `total` (bytes), a bar with rate and ETA; without, the count and
    /// rate.
    pub fn bytes(total: Option<u64>) -> Progress {
        Progress::drawn(total, if total.is_some() { BYTES_OF } else { BYTES })
    }

    /// A count of `unit` (`"blocks"`) out of `total`, with an ETA.
    pub fn count(total: u64, unit: &'static str) -> Progress {
        let p = Progress::drawn(Some(total), COUNT_OF);
        if let Some(bar) = &p.0 {
            bar.set_prefix(unit);
        }
        p
    }

    /// Time: a bar that fills over `total` (positions are milliseconds), showing its
    /// message (`perf`'s live IOPS).
    pub fn timed(total: Duration) -> Progress {
        Progress::drawn(Some(total.as_millis() as u64), TIMED)
    }

    /// A spinner with `message` and the time elapsed, turning on its own until finished:
    /// for one long command whose progress cannot be asked (Format NVM).
    pub fn spinner(message: String) -> Progress {
        let p = Progress::drawn(None, SPINNER);
        if let Some(bar) = &p.0 {
            bar.set_message(message);
            bar.enable_steady_tick(TICK);
        }
        p
    }

    fn drawn(total: Option<u64>, template: &str) -> Progress {
        if !on_terminal() {
            return Progress::hidden();
        }
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress(Some(bar))
    }

    /// Whether anything is drawn.
    pub fn is_drawn(&self) -> bool {
        self.0.is_some()
    }

    /// Sets the position (bytes, items or milliseconds, as the bar counts).
    pub fn set(&self, position: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(position);
        }
    }

    /// Adds `n` to the position.
    pub fn add(&self, n: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(n);
        }
    }

    /// Sets the total (a bar learns it late: fsck once it has read the space map).
    pub fn set_total(&self, total: u64) {
        if let Some(bar) = &self.0 {
            bar.set_length(total);
        }
    }

    /// Sets the text after the bar.
    pub fn message(&self, text: impl Into<std::borrow::Cow<'static, str>>) {
        if let Some(bar) = &self.0 {
            bar.set_message(text);
        }
    }

    /// Removes the bar from the terminal.
    pub fn finish(self) {}
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hidden_bar_takes_every_update() {
        let p = Progress::hidden();
        assert!(!p.is_drawn());
        p.set(5);
        p.add(3);
        p.set_total(10);
        p.message("pass 1");
        p.finish();
    }

    #[test]
    fn every_template_parses() {
        for t in [BYTES_OF, BYTES, COUNT_OF, TIMED, SPINNER] {
            assert!(ProgressStyle::with_template(t).is_ok(), "{t}");
        }
    }
}
