//! The simulated controller's MSI-X vectors: one signal counter per vector, which a
//! completion queue created with IEN = 1 increments on every post, and a thread can sleep
//! on, as on VFIO's per-vector eventfds.

use crate::hw::InterruptVectors;
use std::io;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The vectors of one simulated controller: as many as it has queues (admin + I/O), as
/// QEMU's controller has `max_ioqpairs + 1`.
#[derive(Debug)]
pub struct SimInterrupts {
    /// Signals not yet consumed by [`InterruptVectors::wait`], and in total, per vector.
    counts: Mutex<Vec<(u64, u64)>>,
    cond: Condvar,
    /// How many vectors there are (the length of `counts`, which never changes).
    count: u16,
}

impl SimInterrupts {
    pub(super) fn new(count: u16) -> SimInterrupts {
        SimInterrupts {
            counts: Mutex::new(vec![(0, 0); count as usize]),
            cond: Condvar::new(),
            count,
        }
    }

    /// Signals `vector` (a post to a CQ with interrupts enabled).
    pub(super) fn signal(&self, vector: u16) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((pending, total)) = counts.get_mut(vector as usize) {
            *pending += 1;
            *total += 1;
            self.cond.notify_all();
        }
    }

    /// How often `vector` was signalled (posts and kicks) since the controller was
    /// created.
    pub fn signalled(&self, vector: u16) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(vector as usize).map_or(0, |c| c.1)
    }
}

impl InterruptVectors for SimInterrupts {
    fn count(&self) -> u16 {
        self.count
    }

    fn kick(&self, vector: u16) {
        self.signal(vector);
    }

    fn wait(&self, vector: u16, timeout: Duration) -> io::Result<bool> {
        // A timeout too long to add is a wait without one.
        let deadline = Instant::now().checked_add(timeout);
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if vector as usize >= counts.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no vector {vector}"),
            ));
        }
        loop {
            let pending = &mut counts[vector as usize].0;
            if *pending > 0 {
                *pending = 0;
                return Ok(true);
            }
            counts = match deadline {
                None => self.cond.wait(counts).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(false);
                    }
                    self.cond
                        .wait_timeout(counts, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}
