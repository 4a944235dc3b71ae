//! [`UringQueue`]: one ring (two with IOPOLL), a fixed table of operation slots, and the
//! registered-buffer table.

use super::enter::{Enter, InFlight, Ready, RingTries, WaitErrors, retry_for};
use super::fixed::{FixedBuffers, Span};
use super::{Shared, TaskRun};
use crate::error::{BACKEND_URING, KernelError};
use crate::geometry::os;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use ironvme_nvme::block::{self, BlockError, BlockQueue, Completion, IoStatus, NamespaceInfo, Op, SubmitError};
use ironvme_nvme::hw::DmaBuf;
use std::cell::Cell;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `Slot::fixed` of an operation that uses no registered buffer.
const NO_FIXED: u16 = u16::MAX;

/// One operation slot; its index is the SQE's `user_data`.
struct Slot {
    tag: u64,
    buf: Option<DmaBuf>,
    /// Bytes a read or write must transfer; 0 for operations without data.
    expect: u32,
    /// The registered-buffer slot the operation uses, or [`NO_FIXED`].
    fixed: u16,
    /// The operation went to the auxiliary ring.
    aux: bool,
    /// An operation is in flight in this slot.
    busy: bool,
}

/// Counters of one queue, for tests and reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UringStats {
    /// Memory regions registered as fixed buffers (one `io_uring_register` each).
    pub buffer_registrations: u64,
    /// Regions the kernel refused to register (locked-memory limit, over 1 GiB); their
    /// reads and writes are plain.
    pub registration_refusals: u64,
    /// Reads and writes from a registered buffer (`READ_FIXED` / `WRITE_FIXED`).
    pub fixed_ios: u64,
    /// Plain reads and writes (`IORING_OP_READ` / `WRITE`): fixed buffers off or
    /// unavailable, the region refused, or the table full.
    pub plain_ios: u64,
    /// Of `plain_ios`, those whose region found the registered-buffer table full.
    pub table_full_ios: u64,
}

/// How an SQE names the device's file.
#[derive(Clone, Copy)]
enum FileRef {
    /// Index 0 of the ring's registered files.
    Fixed,
    /// The raw descriptor.
    Raw(i32),
}

/// Builds an opcode with the right file argument type (`types::Fixed` or `types::Fd`).
macro_rules! with_file {
    ($file:expr, $fd:ident => $e:expr) => {
        match $file {
            FileRef::Fixed => {
                let $fd = types::Fixed(0);
                $e
            }
            FileRef::Raw(raw) => {
                let $fd = types::Fd(raw);
                $e
            }
        }
    };
}

impl InFlight for Slot {
    fn busy(&self) -> bool {
        self.busy
    }

    fn abandon(&mut self) {
        std::mem::forget(self.buf.take());
        // Its region stays counted in flight, so it is never released.
        self.fixed = NO_FIXED;
    }
}

/// An I/O queue on an io_uring: the uring backend of the block interface. See the
/// [module documentation](super) for how each operation is issued.
///
/// A read or write that transfers fewer bytes than asked (`res` < length) completes with
/// `EIO`: on a block device or a file of fixed size that only happens when something
/// changed underneath (the file was truncated, the device resized). A negative `res`
/// completes with that errno ([`IoStatus::Os`]).
///
/// `io_uring_enter` failures: `EINTR` is retried; `EAGAIN` and
/// `EBUSY` (completion queue full) are retried after reaping the completion queue (`ring`
/// keeps what it reaps for the next `poll`); `ring` reports an error that persists after a
/// bounded number of tries, leaving the SQEs queued. When `wait` cannot enter the kernel
/// for 10 s, the queue fails: every operation in flight completes with the errno and
/// **without its buffer**, which is leaked (the kernel may still write it), and the queue
/// refuses everything after ([`BlockError::Dead`]).
///
/// Completions are posted by the kernel in the context of the thread that submitted the
/// operations: move a queue to another thread only when nothing is in flight (the first
/// use there replaces a deferred ring by a cooperative one; a queue moved with operations
/// in flight cannot complete them on a deferred ring, and on a cooperative one sees them
/// complete only when the submitting thread next enters the kernel).
///
/// Dropping the queue waits up to 75 s (the kernel's I/O timeout plus its recovery) for
/// every operation still in flight (the kernel may be writing to their buffers; on a
/// deferred ring dropped by another thread than its creator, which cannot complete them,
/// that is usually the whole 75 s), then
/// unregisters the buffers and closes the ring. Operations still in flight after that,
/// or on a failed queue, keep their buffers and registered regions forever: they are
/// leaked deliberately rather than unmapped while the kernel may write into them.
pub struct UringQueue {
    ring: IoUring,
    /// An ordinary ring for Flush, Write Zeroes and Deallocate, which an IOPOLL ring
    /// refuses; only with IOPOLL.
    aux: Option<IoUring>,
    shared: Arc<Shared>,
    file: FileRef,
    depth: usize,
    slots: Box<[Slot]>,
    free: Vec<u32>,
    /// SQEs written since the last `io_uring_enter`, per ring.
    pending: bool,
    aux_pending: bool,
    /// Operations in flight per ring.
    inflight: usize,
    fixed: FixedBuffers,
    stats: UringStats,
    /// `io_uring_enter`, with its deadlines.
    sys: Enter,
    /// CQEs reaped by `ring` to make room in a full completion queue, for the next
    /// `poll`; the failed operations of a failed queue, and why it failed.
    ready: Ready,
    /// How the ring runs completion work ([`super::build_ring`]).
    taskrun: TaskRun,
    /// A queue belongs to one thread at a time: `Send`, not `Sync`.
    _not_sync: PhantomData<Cell<()>>,
}

impl UringQueue {
    /// A queue of `depth` operations whose ring the calling thread uses alone when
    /// `single_issuer` ([`TaskRun::Deferred`]).
    pub(super) fn new(shared: Arc<Shared>, depth: usize, single_issuer: bool) -> Result<UringQueue, KernelError> {
        let path = shared.path.as_path();
        let opts = &shared.opts;
        if depth == 0 || depth > super::MAX_QUEUE_DEPTH {
            return Err(KernelError::BadOption {
                backend: BACKEND_URING,
                why: format!("queue depth {depth}: must be from 1 to {}", super::MAX_QUEUE_DEPTH),
            });
        }
        let mut builder = IoUring::builder();
        if opts.sqpoll {
            builder.setup_sqpoll(super::SQPOLL_IDLE_MS);
        }
        if opts.iopoll {
            builder.setup_iopoll();
        }
        let (ring, taskrun) = super::build_ring(&builder, depth as u32, !opts.sqpoll, single_issuer)
            .map_err(|e| ring_setup_error(&shared, e))?;
        if opts.sqpoll && !opts.fixed_files && !ring.params().is_feature_sqpoll_nonfixed() {
            return Err(KernelError::BadOption {
                backend: BACKEND_URING,
                why: "SQPOLL without fixed files needs Linux 5.11+ (IORING_FEAT_SQPOLL_NONFIXED): enable fixed files"
                    .into(),
            });
        }
        let raw = shared.file.as_raw_fd();
        let file = if opts.fixed_files {
            let register = |r: &IoUring| r.submitter().register_files(&[raw]);
            register(&ring).map_err(|e| os(BACKEND_URING, "IORING_REGISTER_FILES", path, e))?;
            FileRef::Fixed
        } else {
            FileRef::Raw(raw)
        };
        let aux = if opts.iopoll {
            let aux = IoUring::new(depth as u32).map_err(|e| ring_setup_error(&shared, e))?;
            if opts.fixed_files {
                aux.submitter()
                    .register_files(&[raw])
                    .map_err(|e| os(BACKEND_URING, "IORING_REGISTER_FILES", path, e))?;
            }
            Some(aux)
        } else {
            None
        };
        let fixed_active = opts.fixed_buffers
            && match ring
                .submitter()
                .register_buffers_sparse(super::FIXED_BUFFER_SLOTS as u32)
            {
                Ok(()) => true,
                Err(e) => {
                    // Sparse tables need Linux 5.19 (IORING_RSRC_REGISTER_SPARSE).
                    tracing::info!(error = %e, "uring: no sparse registered-buffer table: plain reads and writes");
                    false
                }
            };
        let slots = (0..depth)
            .map(|_| Slot {
                tag: 0,
                buf: None,
                expect: 0,
                fixed: NO_FIXED,
                aux: false,
                busy: false,
            })
            .collect();
        let free = (0..depth as u32).rev().collect();
        tracing::debug!(
            path = %path.display(),
            depth,
            sq_entries = ring.params().sq_entries(),
            cq_entries = ring.params().cq_entries(),
            fixed_active,
            "uring: queue created"
        );
        let sys = Enter::new(ring.params().is_feature_ext_arg());
        Ok(UringQueue {
            ring,
            aux,
            file,
            depth,
            slots,
            free,
            pending: false,
            aux_pending: false,
            inflight: 0,
            fixed: FixedBuffers::new(fixed_active, Span::Region, super::FIXED_BUFFER_SLOTS),
            stats: UringStats::default(),
            sys,
            ready: Ready::new(depth),
            shared,
            taskrun,
            _not_sync: PhantomData,
        })
    }

    /// The queue's counters.
    pub fn stats(&self) -> UringStats {
        let c = self.fixed.counters;
        UringStats {
            buffer_registrations: c.registrations,
            registration_refusals: c.refusals,
            table_full_ios: c.table_full,
            ..self.stats
        }
    }

    /// Whether the kernel flags completion work instead of interrupting the thread
    /// (`IORING_SETUP_TASKRUN_FLAG` with deferred or cooperative task running: Linux
    /// 5.19+, not with SQPOLL); see the module documentation.
    pub fn cooperative(&self) -> bool {
        self.taskrun.flagged()
    }

    /// Whether the ring defers completion work to its one issuing thread
    /// (`IORING_SETUP_DEFER_TASKRUN`: Linux 6.1+, not with SQPOLL, and not after the
    /// queue moved to another thread); see the module documentation.
    pub fn deferred(&self) -> bool {
        matches!(self.taskrun, TaskRun::Deferred { .. })
    }

    /// Makes the ring usable from the calling thread. A deferred ring answers only the
    /// thread that created it: when the queue has moved to another thread with nothing
    /// in flight, the ring is replaced by a cooperative one, which any thread may use
    /// (its registered buffers are registered again on first use; the counters and the
    /// deadlines carry over). With operations in flight nothing changes, and the kernel
    /// refuses this thread (`EEXIST`): only the issuing thread can complete them.
    ///
    /// Errors: [`BlockError::Os`] when the new ring cannot be made (`io_uring_setup`,
    /// `IORING_REGISTER_FILES`); the queue is unchanged.
    fn claim(&mut self) -> Result<(), BlockError> {
        if !self.taskrun.needs_new_ring(self.outstanding(), self.ready.is_dead()) {
            return Ok(());
        }
        let mut moved = UringQueue::new(Arc::clone(&self.shared), self.depth, false).map_err(super::new_ring_error)?;
        tracing::debug!(
            path = %self.shared.path.display(),
            "uring: queue moved to another thread; its deferred ring is replaced by a cooperative one"
        );
        moved.stats = self.stats;
        moved.fixed.counters = self.fixed.counters;
        std::mem::swap(&mut moved.sys, &mut self.sys);
        // The old ring closes here; the kernel lets go of its registrations after.
        *self = moved;
        Ok(())
    }

    /// Whether the ring has a registered-buffer table (fixed buffers asked for, and the
    /// kernel has sparse tables: Linux 5.19+).
    pub fn fixed_buffers_active(&self) -> bool {
        self.fixed.active()
    }

    /// Memory regions the registered-buffer table holds.
    pub fn registered_regions(&self) -> usize {
        self.fixed.regions()
    }

    /// Unregisters every region with no read or write in flight and lets the table's
    /// hold on it go, so that memory freed by its users is unmapped; returns how many.
    /// Costs one system call per region; a region used again is registered again.
    pub fn release_idle_buffers(&mut self) -> usize {
        if self.claim().is_err() {
            return 0;
        }
        self.fixed.release_idle(&self.ring.submitter())
    }

    /// Builds the SQE for `op` on `buf`, choosing a fixed buffer if the table has (or
    /// can take) the buffer's region.
    fn build(&mut self, op: &Op, buf: Option<&mut DmaBuf>, blocks: u64) -> (squeue::Entry, u32, u16) {
        let bs = self.shared.info.block_size as u64;
        let file = self.file;
        let rw = |lba: u64, buf: &mut DmaBuf, fixed: &mut FixedBuffers, ring: &IoUring| {
            let slot = fixed.slot_for(&ring.submitter(), buf);
            (lba * bs, buf.as_ptr(), buf.len() as u32, slot)
        };
        match (*op, buf) {
            (Op::Read { lba }, Some(buf)) => {
                let (off, ptr, len, slot) = rw(lba, buf, &mut self.fixed, &self.ring);
                self.count(slot);
                let e = match slot {
                    Some(i) => with_file!(file, fd => opcode::ReadFixed::new(fd, ptr, len, i).offset(off).build()),
                    None => with_file!(file, fd => opcode::Read::new(fd, ptr, len).offset(off).build()),
                };
                (e, len, slot.unwrap_or(NO_FIXED))
            }
            (Op::Write { lba, fua }, Some(buf)) => {
                let (off, ptr, len, slot) = rw(lba, buf, &mut self.fixed, &self.ring);
                self.count(slot);
                let flags = if fua { libc::RWF_DSYNC } else { 0 };
                let e = match slot {
                    Some(i) => with_file!(file, fd => opcode::WriteFixed::new(fd, ptr, len, i)
                        .offset(off)
                        .rw_flags(flags)
                        .build()),
                    None => {
                        with_file!(file, fd => opcode::Write::new(fd, ptr, len).offset(off).rw_flags(flags).build())
                    }
                };
                (e, len, slot.unwrap_or(NO_FIXED))
            }
            (Op::Flush, _) => {
                let e = with_file!(file, fd => opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build());
                (e, 0, NO_FIXED)
            }
            (Op::WriteZeroes { lba, deallocate, .. }, _) => {
                let mode = if deallocate {
                    self.shared.zero_unmap_mode
                } else {
                    self.shared.zero_mode
                };
                (
                    self.fallocate(lba * bs, blocks * bs, mode.expect("checked: write zeroes is supported")),
                    0,
                    NO_FIXED,
                )
            }
            (Op::Deallocate { lba, .. }, _) => {
                let mode = self.shared.deallocate_mode.expect("checked: deallocate is supported");
                (self.fallocate(lba * bs, blocks * bs, mode), 0, NO_FIXED)
            }
            (op, _) => unreachable!("{} passed check() without support or a buffer", op.name()),
        }
    }

    /// With IOPOLL on a device with `chunk_sectors`: the chunk size in bytes if the read
    /// or write crosses a chunk boundary.
    fn crossed_chunk(&self, op: &Op, buf: Option<&DmaBuf>) -> Option<u64> {
        let chunk = self.shared.polled_chunk_bytes;
        let (Op::Read { lba } | Op::Write { lba, .. }) = *op else {
            return None;
        };
        let len = buf?.len() as u64;
        let start = lba * self.shared.info.block_size as u64;
        (chunk > 0 && start / chunk != (start + len - 1) / chunk).then_some(chunk)
    }

    fn fallocate(&self, offset: u64, len: u64, mode: i32) -> squeue::Entry {
        with_file!(self.file, fd => opcode::Fallocate::new(fd, len).offset(offset).mode(mode).build())
    }

    fn count(&mut self, fixed: Option<u16>) {
        match fixed {
            Some(_) => self.stats.fixed_ios += 1,
            None => self.stats.plain_ios += 1,
        }
    }

    /// Takes a slot's operation back after its CQE (`res`) arrived.
    fn finish(&mut self, index: usize, res: i32) -> Option<Completion> {
        let slot = self.slots.get_mut(index)?;
        if !slot.busy {
            debug_assert!(false, "CQE for idle slot {index}");
            return None;
        }
        slot.busy = false;
        let result = if res < 0 {
            Err(IoStatus::Os(-res))
        } else if slot.expect != 0 && res as u32 != slot.expect {
            Err(IoStatus::Os(libc::EIO))
        } else {
            Ok(())
        };
        let (tag, buf, fixed, aux) = (slot.tag, slot.buf.take(), slot.fixed, slot.aux);
        slot.expect = 0;
        slot.fixed = NO_FIXED;
        if fixed != NO_FIXED {
            self.fixed.complete(fixed);
        }
        if !aux {
            self.inflight -= 1;
        }
        self.free.push(index as u32);
        Some(Completion { tag, buf, result })
    }

    /// Hands back up to `max` operations whose CQEs `ring` reaped, or that a failure
    /// completed.
    fn deliver_ready<F: FnMut(Completion)>(&mut self, max: usize, on_complete: &mut F) -> usize {
        let mut n = 0;
        while n < max {
            let Some((user_data, res)) = self.ready.pop() else {
                break;
            };
            if let Some(c) = self.finish(user_data as usize, res) {
                on_complete(c);
                n += 1;
            }
        }
        n
    }

    /// Moves every CQE of both rings into `ready`: the completion queue is full, and the
    /// kernel takes no submissions until some are reaped. Returns how many.
    fn stash_completions(&mut self) -> usize {
        let mut n = 0;
        for ring in [Some(&mut self.ring), self.aux.as_mut()].into_iter().flatten() {
            n += self.ready.stash(ring.completion());
        }
        n
    }

    /// Fails the queue after `io_uring_enter` kept failing with `e`: every operation in
    /// flight completes (through `ready`) with the errno and without its buffer, which is
    /// leaked with the registered regions, because the kernel may still write to them.
    fn fail(&mut self, e: &std::io::Error) {
        let outstanding = self.outstanding();
        let why = self.ready.fail(e, self.sys.error_deadline, &mut self.slots);
        tracing::error!(
            path = %self.shared.path.display(),
            outstanding,
            "uring: {why}; failing the queue and leaking the buffers of its operations in flight"
        );
        self.fixed.leak();
    }

    /// Reaps up to `max` CQEs from one ring.
    fn reap<F: FnMut(Completion)>(&mut self, aux: bool, max: usize, on_complete: &mut F) -> usize {
        const BATCH: usize = 32;
        let mut n = 0;
        while n < max {
            let ring = if aux {
                self.aux.as_mut().expect("aux ring exists")
            } else {
                &mut self.ring
            };
            let mut batch = [(0u64, 0i32); BATCH];
            let mut got = 0;
            // The CQ head moves once per batch, when the iterator drops.
            for (i, cqe) in ring.completion().take(BATCH.min(max - n)).enumerate() {
                let cqe: cqueue::Entry = cqe;
                batch[i] = (cqe.user_data(), cqe.result());
                got = i + 1;
            }
            if got == 0 {
                break;
            }
            for &(user_data, res) in &batch[..got] {
                if let Some(c) = self.finish(user_data as usize, res) {
                    on_complete(c);
                    n += 1;
                }
            }
        }
        n
    }

    /// Submits pending SQEs of one ring: retries `EINTR`, and `EAGAIN`/`EBUSY` after
    /// reaping ([`RingTries`]).
    fn enter(&mut self, aux: bool) -> Result<(), BlockError> {
        let sqpoll = self.shared.opts.sqpoll && !aux;
        let mut tries = RingTries::default();
        loop {
            let ring = if aux {
                self.aux.as_mut().expect("aux ring exists")
            } else {
                &mut self.ring
            };
            let Err(e) = self.sys.enter(&ring.submitter(), 0, None) else {
                break;
            };
            let reap = tries.after(e).map_err(|source| BlockError::Os {
                op: "io_uring_enter",
                source,
            })?;
            if reap && self.stash_completions() == 0 {
                std::thread::yield_now();
            }
        }
        let ring = if aux {
            self.aux.as_mut().expect("aux ring exists")
        } else {
            &mut self.ring
        };
        // Without SQPOLL the kernel consumes every SQE it is given unless it fails; with
        // SQPOLL its thread takes them when it runs.
        let left = !sqpoll && !ring.submission().is_empty();
        if aux {
            self.aux_pending = left
        } else {
            self.pending = left
        }
        Ok(())
    }

    /// Waits until one operation completes, on the ring that has some in flight: in the
    /// kernel without a bound, or at most `limit` ([`Enter::wait_up_to`]: without
    /// `IORING_FEAT_EXT_ARG` it only pauses).
    fn wait_one(&mut self, limit: Option<Duration>) -> std::io::Result<()> {
        let ring = if self.inflight > 0 {
            &self.ring
        } else {
            self.aux.as_ref().unwrap_or(&self.ring)
        };
        match limit {
            None => self.sys.enter(&ring.submitter(), 1, None).map(drop),
            Some(limit) => self.sys.wait_up_to(&ring.submitter(), limit, self.taskrun),
        }
    }
}

impl UringQueue {
    /// `ring`, on the ring as it is ([`UringQueue::claim`] is the caller's business).
    fn ring_here(&mut self) -> Result<(), BlockError> {
        self.ready.alive()?;
        let main = if self.pending { self.enter(false) } else { Ok(()) };
        let aux = if self.aux_pending { self.enter(true) } else { Ok(()) };
        main.and(aux)
    }

    /// `poll`, on the ring as it is.
    fn poll_here<F: FnMut(Completion)>(&mut self, max: usize, mut on_complete: F) -> usize {
        let ready = self.deliver_ready(max, &mut on_complete);
        if self.ready.is_dead() {
            // The rings are not reaped again: their late CQEs belong to abandoned slots.
            return ready;
        }
        let max = max - ready;
        // An error leaves the SQEs queued; the next poll or ring tries again.
        let _ = self.ring_here();
        if self.shared.opts.iopoll && self.inflight > 0 && self.ring.completion().is_empty() {
            // IOPOLL: completions are found by polling the device, which only
            // io_uring_enter(GETEVENTS) does (`submit` sets it on IOPOLL rings).
            let _ = self.sys.enter(&self.ring.submitter(), 0, None);
        }
        let mut n = ready + self.reap(false, max, &mut on_complete);
        if n == 0 && super::run_task_work(&mut self.ring, &mut self.sys, self.taskrun, self.inflight > 0) {
            n = self.reap(false, max, &mut on_complete);
        }
        if self.aux.is_some() {
            n + self.reap(true, max + ready - n, &mut on_complete)
        } else {
            n
        }
    }
}

impl std::fmt::Debug for UringQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringQueue")
            .field("path", &self.shared.path)
            .field("depth", &self.depth)
            .field("outstanding", &self.outstanding())
            .field("stats", &self.stats())
            .finish()
    }
}

impl BlockQueue for UringQueue {
    fn namespace(&self) -> &NamespaceInfo {
        &self.shared.info
    }

    fn depth(&self) -> usize {
        self.depth
    }

    fn outstanding(&self) -> usize {
        self.depth - self.free.len()
    }

    fn submit(&mut self, op: Op, mut buf: Option<DmaBuf>, tag: u64) -> Result<(), SubmitError> {
        if let Err(error) = self.ready.alive() {
            return Err(SubmitError { error, buf });
        }
        if let Err(error) = self.claim() {
            return Err(SubmitError { error, buf });
        }
        let blocks = match block::check(&self.shared.info, &op, buf.as_ref()) {
            Ok(n) => n,
            Err(error) => return Err(SubmitError { error, buf }),
        };
        if let Some(chunk) = self.crossed_chunk(&op, buf.as_ref()) {
            let reason = format!(
                "with IOPOLL a transfer may not cross a multiple of {chunk} bytes (the device's chunk_sectors): the \
                 kernel cannot split polled I/O"
            );
            return Err(SubmitError {
                error: BlockError::Unsupported { op: op.name(), reason },
                buf,
            });
        }
        let aux = self.aux.is_some() && !op.needs_buffer();
        let sq_full = match self.aux.as_mut() {
            Some(r) if aux => r.submission().is_full(),
            _ => self.ring.submission().is_full(),
        };
        if self.free.is_empty() || sq_full {
            return Err(SubmitError {
                error: BlockError::QueueFull(self.outstanding()),
                buf,
            });
        }
        let index = self.free.pop().expect("checked non-empty");
        let (entry, expect, fixed) = self.build(&op, buf.as_mut(), blocks);
        let entry = entry.user_data(index as u64);
        let ring = if aux {
            self.aux.as_mut().expect("aux ring exists")
        } else {
            &mut self.ring
        };
        // A fixed buffer's region is also held by the buffer table; the file (registered or
        // raw) is kept open by `shared` for as long as the queue lives.
        // SAFETY: the SQE's buffer (if any) is `buf`, which moves into slot `index` below and
        // stays there, alive and untouched, until the CQE with this user_data is reaped.
        let pushed = unsafe { ring.submission().push(&entry) };
        if pushed.is_err() {
            if fixed != NO_FIXED {
                self.fixed.complete(fixed);
            }
            self.free.push(index);
            return Err(SubmitError {
                error: BlockError::QueueFull(self.outstanding()),
                buf,
            });
        }
        let slot = &mut self.slots[index as usize];
        *slot = Slot {
            tag,
            buf,
            expect,
            fixed,
            aux,
            busy: true,
        };
        if aux {
            self.aux_pending = true;
        } else {
            self.pending = true;
            self.inflight += 1;
        }
        Ok(())
    }

    fn ring(&mut self) -> Result<(), BlockError> {
        self.claim()?;
        self.ring_here()
    }

    fn poll<F: FnMut(Completion)>(&mut self, max: usize, on_complete: F) -> usize {
        // A queue claim refuses has nothing in flight: nothing to reap.
        if self.claim().is_err() {
            return 0;
        }
        self.poll_here(max, on_complete)
    }

    fn wait<F: FnMut(Completion)>(&mut self, max: usize, mut on_complete: F) -> usize {
        let mut errors = WaitErrors::default();
        loop {
            let n = self.poll(max, &mut on_complete);
            if n > 0 || self.outstanding() == 0 || max == 0 {
                return n;
            }
            match self.wait_one(None) {
                Ok(()) => errors.ok(),
                Err(e) if errors.failed(&e, self.sys.error_deadline) => self.fail(&e),
                Err(_) => {}
            }
        }
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        // The kernel may still write into the buffers of operations in flight: wait for
        // them (up to the drain timeout) before anything is unmapped.
        let deadline = Instant::now() + self.sys.drain_timeout;
        let _ = self.ring_here();
        while !self.ready.is_dead() && self.outstanding() > 0 {
            if self.poll_here(usize::MAX, drop) > 0 {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            // Waits of at most 1 s, so the deadline is checked.
            match self.wait_one(Some((deadline - now).min(Duration::from_secs(1)))) {
                Err(e) if retry_for(&e) == super::enter::Retry::No => {
                    tracing::error!(error = %e, "uring: cannot wait for operations in flight");
                    break;
                }
                _ => {}
            }
        }
        self.poll_here(usize::MAX, drop);
        if self.ready.is_dead() || self.outstanding() > 0 {
            tracing::error!(
                path = %self.shared.path.display(),
                outstanding = self.outstanding(),
                "uring: dropping a queue with operations the kernel has not completed; leaking their buffers"
            );
            for slot in self.slots.iter_mut() {
                std::mem::forget(slot.buf.take());
            }
            self.fixed.leak();
            return;
        }
        if self.taskrun.usable_here() {
            self.fixed.unregister(&self.ring.submitter());
        }
        // Else the kernel refuses this thread's unregistration; closing the ring (the
        // first field to drop, before the table lets go of the regions) has the kernel
        // release them (after the close returns; the pages stay pinned until then).
    }
}

/// Turns an `io_uring_setup` failure for a queue into an error that says why.
fn ring_setup_error(shared: &Shared, e: std::io::Error) -> KernelError {
    let opts = &shared.opts;
    let why = match e.raw_os_error() {
        Some(libc::EPERM) if opts.sqpoll => {
            "io_uring_setup with SQPOLL: EPERM: before Linux 5.11 SQPOLL needs CAP_SYS_ADMIN".to_string()
        }
        Some(libc::EINVAL) if opts.sqpoll || opts.iopoll => {
            format!("io_uring_setup: {e}: this kernel refuses the SQPOLL/IOPOLL setup flags")
        }
        _ => super::setup_error(&e),
    };
    KernelError::Unavailable {
        backend: BACKEND_URING,
        why: format!("{}: {why}", shared.path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KernelDma;
    use crate::uring::enter::{check_wait_fails_the_queue, within};
    use crate::uring::{UringDevice, UringOptions};
    use ironvme_nvme::block::GeometrySource;
    use ironvme_nvme::hw::DmaAllocator;
    use std::time::{Duration, Instant};

    /// A queue on a 1 MiB scratch file.
    fn file_queue(depth: usize) -> (tempfile::TempDir, UringQueue) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
        let dev = UringDevice::open(&path, &UringOptions::default()).unwrap();
        let q = dev.create_queue(depth).unwrap();
        (dir, q)
    }

    /// A queue whose "device" is the read end of a pipe nobody writes to: a read never
    /// completes while the write end (returned) is open.
    fn pipe_queue() -> (UringQueue, std::os::fd::OwnedFd) {
        let (r, w) = nix::unistd::pipe().unwrap();
        let shared = Shared {
            file: std::fs::File::from(r),
            path: "pipe".into(),
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
                metadata: ironvme_nvme::block::MetadataFormat::NONE,
                source: GeometrySource::File,
            },
            opts: UringOptions {
                fixed_buffers: false,
                fixed_files: false,
                ..UringOptions::default()
            },
            zero_mode: None,
            zero_unmap_mode: None,
            deallocate_mode: None,
            polled_chunk_bytes: 0,
        };
        (UringQueue::new(Arc::new(shared), 4, true).unwrap(), w)
    }

    fn read_buf() -> DmaBuf {
        KernelDma::new(false).allocate(4096).unwrap()
    }

    #[test]
    fn ring_retries_signals_and_a_full_completion_queue() {
        let (_dir, mut q) = file_queue(4);
        q.submit(Op::Read { lba: 0 }, Some(read_buf()), 7).unwrap();
        q.sys.inject.extend([libc::EINTR, libc::EAGAIN, libc::EBUSY]);
        q.ring().expect("EINTR, EAGAIN and EBUSY are retried");
        assert!(q.sys.inject.is_empty());
        let mut done = Vec::new();
        while done.is_empty() {
            q.wait(1, |c| done.push((c.tag, c.result)));
        }
        assert_eq!(done, [(7, Ok(()))]);
    }

    #[test]
    fn ring_gives_up_on_a_persistent_busy_after_a_bounded_number_of_tries() {
        let (_dir, mut q) = file_queue(4);
        q.submit(Op::Read { lba: 0 }, Some(read_buf()), 1).unwrap();
        q.sys.inject.push_back(libc::EBUSY);
        q.sys.inject_forever = true;
        let e = q.ring().unwrap_err();
        assert!(
            matches!(&e, BlockError::Os { source, .. } if source.raw_os_error() == Some(libc::EBUSY)),
            "{e}"
        );
        // The SQE stays queued: the next ring submits it.
        q.sys.inject.clear();
        q.ring().unwrap();
        let mut done = Vec::new();
        while done.is_empty() {
            q.wait(1, |c| done.push((c.tag, c.result)));
        }
        assert_eq!(done, [(1, Ok(()))]);
    }

    #[test]
    fn wait_fails_the_queue_after_a_persistent_enter_error_and_keeps_the_buffer() {
        let (_dir, mut q) = file_queue(4);
        q.sys.error_deadline = Duration::from_millis(200);
        q.submit(Op::Read { lba: 0 }, Some(read_buf()), 3).unwrap();
        q.sys.inject.push_back(libc::EBADF);
        q.sys.inject_forever = true;
        check_wait_fails_the_queue(q, Duration::from_millis(200));
    }

    #[test]
    fn dropping_a_queue_without_ext_arg_waits_for_a_late_completion_instead_of_leaking() {
        // All on one thread: only the thread that made a deferred ring can complete its
        // operations.
        let took = within(Duration::from_secs(20), "the queue's life", || {
            let (mut q, writer) = pipe_queue();
            // A Linux 5.6–5.10 kernel: no bounded waits (IORING_FEAT_EXT_ARG).
            q.sys.ext_arg = false;
            q.sys.drain_timeout = Duration::from_secs(10);
            q.submit(Op::Read { lba: 0 }, Some(read_buf()), 1).unwrap();
            q.ring().unwrap();
            assert_eq!(q.poll(8, |_| panic!("nothing was written to the pipe")), 0);
            let write_later = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                // EPIPE if the queue (the read end) is gone already: the assertion below
                // says so.
                let _ = nix::unistd::write(&writer, &[0u8; 512]);
                writer
            });
            let started = Instant::now();
            drop(q);
            let took = started.elapsed();
            drop(write_later.join().unwrap());
            took
        });
        assert!(
            took >= Duration::from_millis(200),
            "the drop returned after {took:?}, before the read completed: it leaked the read's buffer"
        );
        assert!(took < Duration::from_secs(5), "the drop took {took:?}");
    }

    /// Dropped on another thread than the one that made its (deferred) ring, which alone
    /// can complete the read: the drop still returns, at the drain timeout.
    #[test]
    fn dropping_a_queue_whose_read_never_completes_returns_after_the_drain_timeout() {
        let (mut q, writer) = pipe_queue();
        q.sys.drain_timeout = Duration::from_millis(300);
        q.submit(Op::Read { lba: 0 }, Some(read_buf()), 1).unwrap();
        q.ring().unwrap();
        assert_eq!(q.poll(8, |_| panic!("nothing was written to the pipe")), 0);
        let started = Instant::now();
        within(Duration::from_secs(10), "dropping the queue", move || drop(q));
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "not before the deadline"
        );
        // The read's buffer was leaked, so the kernel may still complete into it.
        drop(writer);
    }
}
