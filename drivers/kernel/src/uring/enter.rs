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
//! SQEs queued; `wait` keeps trying (reaping in between, pausing 100 µs doubling to 10 ms)
//! for [`Enter::error_deadline`]
//! and then fails the queue; dropping a queue waits [`Enter::drain_timeout`] for the
//! operations in flight, then leaks their buffers rather than free memory the kernel may
//! still write.
//!
//! Tests put errnos into [`Enter::inject`]: the next calls fail with them without entering
//! the kernel.

use super::TaskRun;
use io_uring::Submitter;
use io_uring::cqueue::EntryMarker;
use io_uring::types::{SubmitArgs, Timespec};
use ironvme_nvme::block::BlockError;
use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

/// How many times one `ring` enters again after `EINTR`, `EAGAIN` or `EBUSY` before it
/// reports the error.
pub(crate) const RETRIES: u32 = 64;

/// How long `wait` keeps entering the kernel while every attempt fails, before it fails
/// the queue.
pub(crate) const ERROR_DEADLINE: Duration = Duration::from_secs(10);

/// How long dropping a queue waits for operations in flight: longer than the kernel's
/// default I/O timeout (30 s) plus its abort and controller reset.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(75);

/// How long [`Enter::wait_up_to`] sleeps between looks at the completion queue on a
/// kernel without `IORING_FEAT_EXT_ARG` (before Linux 5.11), which cannot bound a wait.
pub(crate) const NO_EXT_ARG_PAUSE: Duration = Duration::from_millis(1);

/// The first pause of `wait` after a failed `io_uring_enter`; it doubles up to
/// [`MAX_BACKOFF`].
pub(crate) const FIRST_BACKOFF: Duration = Duration::from_micros(100);

/// The longest pause of `wait` between failed `io_uring_enter`s.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_millis(10);

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

/// Counts the tries of one `ring`: [`RETRIES`] at most.
#[derive(Debug, Default)]
pub(crate) struct RingTries(u32);

impl RingTries {
    /// After `ring`'s `io_uring_enter` failed with `e`: `Ok(reap)` to enter again
    /// (reaping the completion queue first if `reap`), or `Err(e)` to report it (not
    /// retryable, or [`RETRIES`] reached).
    pub(crate) fn after(&mut self, e: io::Error) -> io::Result<bool> {
        let retry = retry_for(&e);
        if retry == Retry::No || self.0 == RETRIES {
            return Err(e);
        }
        self.0 += 1;
        Ok(retry == Retry::AfterReaping)
    }
}

/// Tracks how long `wait`'s `io_uring_enter` has been failing.
#[derive(Debug, Default)]
pub(crate) struct WaitErrors {
    since: Option<Instant>,
    /// The next pause; zero before the first failure.
    backoff: Duration,
}

impl WaitErrors {
    /// An `io_uring_enter` succeeded.
    pub(crate) fn ok(&mut self) {
        self.since = None;
        self.backoff = Duration::ZERO;
    }

    /// An `io_uring_enter` failed with `e`: true when it has been failing for `deadline`
    /// and the queue must fail (`EINTR`, a signal, neither counts nor waits). Otherwise
    /// sleeps before the next try, [`FIRST_BACKOFF`] doubling to [`MAX_BACKOFF`], so a
    /// persistent `EAGAIN` or `EBUSY` (or any other error) does not spin a core for
    /// the whole deadline.
    pub(crate) fn failed(&mut self, e: &io::Error, deadline: Duration) -> bool {
        if retry_for(e) == Retry::Now {
            return false;
        }
        if self.since.get_or_insert_with(Instant::now).elapsed() >= deadline {
            return true;
        }
        self.backoff = (self.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
        std::thread::sleep(self.backoff);
        false
    }
}

/// An operation slot of a queue, as [`Ready::fail`] sees it.
pub(crate) trait InFlight {
    /// An operation is in flight in this slot.
    fn busy(&self) -> bool;
    /// The queue failed while the slot's operation was in flight: give up its buffer
    /// (leak it: the kernel may still write it) and whatever else it holds.
    fn abandon(&mut self);
}

/// The completions a queue has in hand for its next `poll` — CQEs `ring` reaped to make
/// room in a full completion queue, and the operations of a failed queue — and why the
/// queue failed. One per queue, shared by both io_uring backends.
#[derive(Debug)]
pub(crate) struct Ready {
    /// (`user_data`, `res`), oldest first.
    cqes: VecDeque<(u64, i32)>,
    /// Why the queue failed (`io_uring_enter` kept failing); it refuses everything after.
    dead: Option<String>,
}

impl Ready {
    /// Room for `depth` operations without reallocating, twice over.
    pub(crate) fn new(depth: usize) -> Ready {
        Ready {
            cqes: VecDeque::with_capacity(2 * depth),
            dead: None,
        }
    }

    /// Whether the queue failed.
    pub(crate) fn is_dead(&self) -> bool {
        self.dead.is_some()
    }

    /// `Ok` while the queue works.
    ///
    /// Errors: [`BlockError::Dead`], saying why, once it failed.
    pub(crate) fn alive(&self) -> Result<(), BlockError> {
        match &self.dead {
            Some(why) => Err(BlockError::Dead(why.clone())),
            None => Ok(()),
        }
    }

    /// The oldest completion in hand: (`user_data`, `res`).
    pub(crate) fn pop(&mut self) -> Option<(u64, i32)> {
        self.cqes.pop_front()
    }

    /// Takes every CQE of `cq` (a completion queue: the kernel takes no submissions
    /// while it is full). Returns how many.
    pub(crate) fn stash<E: EntryMarker>(&mut self, cq: impl Iterator<Item = E>) -> usize {
        let before = self.cqes.len();
        self.cqes.extend(cq.map(|cqe| {
            let cqe: io_uring::cqueue::Entry = cqe.into();
            (cqe.user_data(), cqe.result())
        }));
        self.cqes.len() - before
    }

    /// Fails the queue after `io_uring_enter` kept failing with `e` for `deadline`: each
    /// slot of `slots` (its index is its `user_data`) with an operation in flight and no
    /// CQE in hand is abandoned ([`InFlight::abandon`]) and completes with the errno
    /// (`EIO` if `e` has none). Returns why, for the log and [`BlockError::Dead`].
    pub(crate) fn fail<S: InFlight>(&mut self, e: &io::Error, deadline: Duration, slots: &mut [S]) -> String {
        let errno = e.raw_os_error().unwrap_or(libc::EIO);
        let why = format!("io_uring_enter kept failing for {deadline:?}: {e}");
        for (i, slot) in slots.iter_mut().enumerate() {
            let reaped = self.cqes.iter().any(|&(user_data, _)| user_data == i as u64);
            if slot.busy() && !reaped {
                slot.abandon();
                self.cqes.push_back((i as u64, -errno));
            }
        }
        self.dead = Some(why.clone());
        why
    }
}

/// Runs `f` on another thread; fails the test if it does not return within `limit`.
#[cfg(test)]
pub(crate) fn within<T: Send + 'static>(limit: Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what} did not return within {limit:?}"))
}

/// Checks how `wait` fails a queue whose `io_uring_enter` fails with `EBADF` from now on
/// (the test injected it, with an error deadline of `deadline`), with a 4 KiB Read of tag
/// 3 in flight: `wait` (on another thread, at most 10 s) returns no sooner than the
/// deadline, completing the Read with `EBADF` and without its buffer; the queue then
/// refuses submissions (handing the buffer back) and `ring` with [`BlockError::Dead`],
/// and drops within 10 s.
#[cfg(test)]
pub(crate) fn check_wait_fails_the_queue<Q>(mut q: Q, deadline: Duration)
where
    Q: ironvme_nvme::block::BlockQueue + Send + 'static,
{
    use ironvme_nvme::block::{IoStatus, Op};
    use ironvme_nvme::hw::DmaAllocator;
    let started = Instant::now();
    let (mut q, done) = within(Duration::from_secs(10), "wait on a failing io_uring_enter", move || {
        let mut done = Vec::new();
        while done.is_empty() && q.outstanding() > 0 {
            q.wait(8, |c| done.push((c.tag, c.buf.is_some(), c.result)));
        }
        (q, done)
    });
    assert!(started.elapsed() >= deadline, "not before the deadline");
    // The kernel may own the buffer: it is not handed back.
    assert_eq!(done, [(3, false, Err(IoStatus::Os(libc::EBADF)))]);
    assert_eq!(q.outstanding(), 0);
    let buf = crate::KernelDma::new(false).allocate(4096).unwrap();
    let e = q.submit(Op::Read { lba: 0 }, Some(buf), 4).unwrap_err();
    assert!(
        matches!(&e.error, BlockError::Dead(why) if why.contains("io_uring_enter")),
        "{}",
        e.error
    );
    assert!(e.buf.is_some());
    assert!(matches!(q.ring(), Err(BlockError::Dead(_))));
    within(Duration::from_secs(10), "dropping a failed queue", move || drop(q));
}

/// A queue's way into the kernel, with its deadlines.
#[derive(Debug)]
pub(crate) struct Enter {
    /// See [`ERROR_DEADLINE`].
    pub(crate) error_deadline: Duration,
    /// See [`DRAIN_TIMEOUT`].
    pub(crate) drain_timeout: Duration,
    /// The kernel bounds waits (`IORING_FEAT_EXT_ARG`, Linux 5.11+).
    pub(crate) ext_arg: bool,
    /// Errnos the next calls fail with, first one first; the last one repeats forever
    /// when `inject_forever`. Tests only.
    #[cfg(test)]
    pub(crate) inject: std::collections::VecDeque<i32>,
    #[cfg(test)]
    pub(crate) inject_forever: bool,
}

impl Enter {
    /// `ext_arg`: the ring's `IORING_FEAT_EXT_ARG` (`io_uring_params.features`).
    pub(crate) fn new(ext_arg: bool) -> Enter {
        Enter {
            error_deadline: ERROR_DEADLINE,
            drain_timeout: DRAIN_TIMEOUT,
            ext_arg,
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
    /// Errors: the `io_uring_enter` errno (see [`retry_for`]); `EINVAL` for a `timeout`
    /// without [`Enter::ext_arg`], as such a kernel answers.
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
            Some(_) if !self.ext_arg => Err(io::Error::from_raw_os_error(libc::EINVAL)),
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

impl Enter {
    /// Waits at most `limit` for one completion, for a queue being dropped: in the kernel
    /// with `IORING_FEAT_EXT_ARG`; without it (Linux 5.6–5.10 refuse a bounded wait, and
    /// an unbounded one may never return), or on a deferred ring (`taskrun`) that another
    /// thread made, sleeps [`NO_EXT_ARG_PAUSE`] so the caller looks at the completion
    /// queue again. Either way the caller reaps after.
    ///
    /// Errors: as [`Enter::enter`].
    pub(crate) fn wait_up_to(
        &mut self,
        submitter: &Submitter<'_>,
        limit: Duration,
        taskrun: TaskRun,
    ) -> io::Result<()> {
        // The kernel lets no other thread into a deferred ring (EEXIST): that thread can
        // only look at the completion queue now and then.
        if !self.ext_arg || !taskrun.usable_here() {
            std::thread::sleep(limit.min(NO_EXT_ARG_PAUSE));
            return Ok(());
        }
        self.enter(submitter, 1, Some(limit)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persistent_busy_backs_off_instead_of_spinning() {
        let busy = io::Error::from_raw_os_error(libc::EBUSY);
        let deadline = Duration::from_millis(300);
        let mut errors = WaitErrors::default();
        let mut tries = 0u32;
        let started = Instant::now();
        while !errors.failed(&busy, deadline) {
            tries += 1;
        }
        assert!(started.elapsed() >= deadline);
        // 100 µs doubling to 10 ms: about 35 tries in 300 ms; spinning makes millions.
        assert!(tries < 100, "{tries} tries in {deadline:?}");
        assert!(tries > 10, "{tries} tries in {deadline:?}");
    }

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
