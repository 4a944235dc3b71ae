//! The queue of the synchronous backends (ioctl passthrough and psync): operations are
//! checked and queued by `submit`, run one at a time, in order, by `ring` (each call
//! blocks until its operation is done), and handed back by `poll`.

use ironvme_nvme::block::{BlockError, BlockQueue, Completion, IoStatus, NamespaceInfo, Op, Protection, SubmitError};
use ironvme_nvme::hw::DmaBuf;
use std::collections::VecDeque;

/// What a [`SyncQueue`] runs its operations on.
pub trait Executor {
    /// The namespace the operations address.
    fn namespace(&self) -> &NamespaceInfo;

    /// Checks `op` with `buf` before it is queued; its length in logical blocks. With
    /// protection fields `pi`, the buffer carries metadata
    /// ([`BlockQueue::submit_with_metadata`]).
    ///
    /// Errors: the [`BlockError`] that refuses it.
    fn check(&self, op: &Op, buf: Option<&DmaBuf>, pi: Option<&Protection>) -> Result<u64, BlockError>;

    /// Runs `op` (`blocks` long, as [`Executor::check`] counted) to completion; `pi` is
    /// given for a buffer that carries metadata, with the caller's protection fields.
    fn execute(&self, op: &Op, buf: Option<&mut DmaBuf>, blocks: u64, pi: Option<&Protection>) -> Result<(), IoStatus>;
}

/// An operation submitted and not yet run.
#[derive(Debug)]
struct Queued {
    op: Op,
    blocks: u64,
    buf: Option<DmaBuf>,
    tag: u64,
    /// The caller's protection fields, when the buffer carries metadata.
    pi: Option<Protection>,
}

/// A queue of at most `depth` operations (queued, or completed and not yet polled) over
/// a synchronous [`Executor`]. Both rings are allocated with the queue; nothing is
/// allocated per operation.
#[derive(Debug)]
pub struct SyncQueue<E> {
    exec: E,
    depth: usize,
    queued: VecDeque<Queued>,
    done: VecDeque<Completion>,
}

impl<E> SyncQueue<E> {
    pub(crate) fn new(exec: E, depth: usize) -> SyncQueue<E> {
        SyncQueue {
            exec,
            depth,
            queued: VecDeque::with_capacity(depth),
            done: VecDeque::with_capacity(depth),
        }
    }

    pub(crate) fn executor(&self) -> &E {
        &self.exec
    }
}

impl<E: Executor> BlockQueue for SyncQueue<E> {
    fn namespace(&self) -> &NamespaceInfo {
        self.exec.namespace()
    }

    fn depth(&self) -> usize {
        self.depth
    }

    fn outstanding(&self) -> usize {
        self.queued.len() + self.done.len()
    }

    fn submit(&mut self, op: Op, buf: Option<DmaBuf>, tag: u64) -> Result<(), SubmitError> {
        self.queue(op, buf, None, tag)
    }

    /// Carries metadata where the executor can ([`Executor::check`] refuses it otherwise).
    fn submit_with_metadata(
        &mut self,
        op: Op,
        buf: Option<DmaBuf>,
        pi: Protection,
        tag: u64,
    ) -> Result<(), SubmitError> {
        self.queue(op, buf, Some(pi), tag)
    }

    /// Runs every queued operation, in order, before returning.
    fn ring(&mut self) -> Result<(), BlockError> {
        while let Some(mut q) = self.queued.pop_front() {
            let result = self.exec.execute(&q.op, q.buf.as_mut(), q.blocks, q.pi.as_ref());
            self.done.push_back(Completion {
                tag: q.tag,
                buf: q.buf,
                result,
            });
        }
        Ok(())
    }

    fn poll<F: FnMut(Completion)>(&mut self, max: usize, mut on_complete: F) -> usize {
        let _ = self.ring();
        let n = max.min(self.done.len());
        for c in self.done.drain(..n) {
            on_complete(c);
        }
        n
    }
}

impl<E: Executor> SyncQueue<E> {
    /// Checks and queues an operation; `pi` when its buffer carries metadata.
    fn queue(&mut self, op: Op, buf: Option<DmaBuf>, pi: Option<Protection>, tag: u64) -> Result<(), SubmitError> {
        let blocks = match self.exec.check(&op, buf.as_ref(), pi.as_ref()) {
            Ok(n) => n,
            Err(error) => return Err(SubmitError { error, buf }),
        };
        if self.outstanding() >= self.depth {
            return Err(SubmitError {
                error: BlockError::QueueFull(self.outstanding()),
                buf,
            });
        }
        self.queued.push_back(Queued {
            op,
            blocks,
            buf,
            tag,
            pi,
        });
        Ok(())
    }
}
