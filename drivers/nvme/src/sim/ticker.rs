//! The background thread that posts delayed completions when they are due.
//!
//! Started lazily by the first [`super::FaultAction::Delay`]; it holds only a `Weak`
//! reference to the controller and exits within [`IDLE`] of the controller being dropped.

use super::Shared;
use super::state::State;
use std::sync::Weak;
use std::thread;
use std::time::{Duration, Instant};

/// Longest nap between checks.
const IDLE: Duration = Duration::from_millis(10);
/// Shortest nap.
const MIN_NAP: Duration = Duration::from_millis(1);

/// Wakes the ticker (a new delayed command may be due sooner), starting it if needed.
pub(super) fn kick(state: &mut State) {
    if let Some(t) = &state.ticker {
        t.unpark();
        return;
    }
    let me = state.me.clone();
    // If the thread cannot be spawned, delayed commands are still posted at the next
    // doorbell write.
    if let Ok(handle) = thread::Builder::new()
        .name("ironvme-sim-ticker".to_string())
        .spawn(move || run(me))
    {
        state.ticker = Some(handle.thread().clone());
    }
}

fn run(me: Weak<Shared>) {
    loop {
        let next = {
            let Some(shared) = me.upgrade() else { return };
            let mut st = shared.lock();
            st.post_due();
            st.next_due()
        };
        // At least 1 ms: a due command may be stuck behind a controller that is not
        // processing (fatal, shut down), and must not make this thread spin.
        let nap = next.map_or(IDLE, |due| {
            due.saturating_duration_since(Instant::now()).clamp(MIN_NAP, IDLE)
        });
        thread::park_timeout(nap);
    }
}
