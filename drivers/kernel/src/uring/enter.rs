//! `io_uring_enter` for both io_uring backends ([`super::UringQueue`],
//! [`crate::uring_cmd::UringCmdQueue`]): which failures are retried, and the deadlines that
//! keep a queue from spinning forever on one that persists (`io_uring_enter(2)`, ERRORS):
//!
//! - `EINTR`: a signal arrived before anything was submitted or while waiting: enter
//!   again at once;
//! - `EAGAIN` (the kernel could not allocate what a request needs) and `EBUSY` (the
//!   completion queue overflowed: with `IORING_FEAT_NODROP` the kernel keeps the extra
//!   completions and takes no new submissions until the application has reaped some):
//!   reap the completion queue, then enter again;
//! - anything else fails the call.
//!
//! `ring` retries at most [`RETRIES`] times and then reports the error, leaving the
//! SQEs queued; `wait` keeps trying (reaping in between) for [`Enter::error_deadline`]
//! and then fails the queue; dropping a queue waits [`Enter::drain_timeout`] for the
//! operations in flight, then leaks their buffers rather than free memory the kernel may
//! still write.
//!
//! Tests put errnos into [`Enter::inject`]: the next calls fail with them without entering
//! the kernel.

use io_uring::Submitter;
use io_uring::types::{SubmitArgs, Timespec};
use std::io;
use std::time::Duration;

/// How many times one `ring` enters again after `EINTR`, `EAGAIN` or `EBUSY` before it
/// reports the error.
pub(crate) const RETRIES: u32 = 64;

/// How long `wait` keeps entering the kernel while every attempt fails, before it fails
/// the queue.
pub(crate) const ERROR_DEADLINE: Duration = Duration::from_secs(10);

/// How long dropping a queue waits for operations in flight: longer than the kernel's
/// default I/O timeout (30 s) plus its abort and controller reset.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(75);

/// What to do after a failed `io_uring_enter`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retry {
    /// `EINTR`: enter again.
    Now,
    /// `EAGAIN`, `EBUSY`: reap completions, then enter again.
    AfterReaping,
    /// Any other error.
    No,
}

/// What to do after `e`.
pub(crate) fn retry_for(e: &io::Error) -> Retry {
    match e.raw_os_error() {
        Some(libc::EINTR) => Retry::Now,
        Some(libc::EAGAIN | libc::EBUSY) => Retry::AfterReaping,
        _ => Retry::No,
    }
}

/// A queue's way into the kernel, with its deadlines.
#[derive(Debug)]
pub(crate) struct Enter {
    /// See [`ERROR_DEADLINE`].
    pub(crate) error_deadline: Duration,
    /// See [`DRAIN_TIMEOUT`].
    pub(crate) drain_timeout: Duration,
    /// Errnos the next calls fail with, first one first; the last one repeats forever
    /// when `inject_forever`. Tests only.
    #[cfg(test)]
    pub(crate) inject: std::collections::VecDeque<i32>,
    #[cfg(test)]
    pub(crate) inject_forever: bool,
}

impl Enter {
    pub(crate) fn new() -> Enter {
        Enter {
            error_deadline: ERROR_DEADLINE,
            drain_timeout: DRAIN_TIMEOUT,
            #[cfg(test)]
            inject: std::collections::VecDeque::new(),
            #[cfg(test)]
            inject_forever: false,
        }
    }

    /// Submits the queued SQEs and waits for `want` completions (0: does not wait), at
    /// most `timeout` when given (`IORING_ENTER_EXT_ARG`, Linux 5.11+; running out is not
    /// an error: `Ok(0)`). Returns what the kernel returned: SQEs consumed.
    ///
    /// Errors: the `io_uring_enter` errno (see [`retry_for`]).
    pub(crate) fn enter(
        &mut self,
        submitter: &Submitter<'_>,
        want: usize,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        #[cfg(test)]
        {
            let errno = if self.inject_forever && self.inject.len() == 1 {
                self.inject.front().copied()
            } else {
                self.inject.pop_front()
            };
            if let Some(errno) = errno {
                return Err(io::Error::from_raw_os_error(errno));
            }
        }
        match timeout {
            None => submitter.submit_and_wait(want),
            Some(t) => {
                let ts = Timespec::from(t);
                let args = SubmitArgs::new().timespec(&ts);
                match submitter.submit_with_args(want, &args) {
                    Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(0),
                    other => other,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_retried_at_once_and_a_full_completion_queue_after_reaping() {
        let e = |errno| io::Error::from_raw_os_error(errno);
        assert_eq!(retry_for(&e(libc::EINTR)), Retry::Now);
        assert_eq!(retry_for(&e(libc::EAGAIN)), Retry::AfterReaping);
        assert_eq!(retry_for(&e(libc::EBUSY)), Retry::AfterReaping);
        assert_eq!(retry_for(&e(libc::EBADF)), Retry::No);
        assert_eq!(retry_for(&e(libc::EFAULT)), Retry::No);
    }
}
