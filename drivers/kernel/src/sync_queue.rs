//! The queue of the synchronous backends (ioctl passthrough and psync): operations are
//! checked and queued by `submit`, run one at a time, in order, by `ring` (each call
//! blocks until its operation is done), and handed back by `poll`.

use ironvme_nvme::block::{BlockError, BlockQueue, Completion, IoStatus, NamespaceInfo, Op, SubmitError};
use ironvme_nvme::hw::DmaBuf;
use std::collections::VecDeque;

/// What a [`SyncQueue`] runs its operations on.
pub trait Executor {
    /// The namespace the operations address.
    fn namespace(&self) -> &NamespaceInfo;

    /// Checks `op` with `buf` before it is queued; its length in logical blocks.
    ///
    /// Errors: the [`BlockError`] that refuses it.
    fn check(&self, op: &Op, buf: Option<&DmaBuf>) -> Result<u64, BlockError>;

    /// Runs `op` (`blocks` long, as [`Executor::check`] counted) to completion.
    fn execute(&self, op: &Op, buf: Option<&mut DmaBuf>, blocks: u64) -> Result<(), IoStatus>;
}

/// An operation submitted and not yet run.
#[derive(Debug)]
struct Queued {
    op: Op,
    blocks: u64,
    buf: Option<DmaBuf>,
    tag: u64,
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
        let blocks = match self.exec.check(&op, buf.as_ref()) {
            Ok(n) => n,
            Err(error) => return Err(SubmitError { error, buf }),
        };
        if self.outstanding() >= self.depth {
            return Err(SubmitError {
                error: BlockError::QueueFull(self.outstanding()),
                buf,
            });
        }
        self.queued.push_back(Queued { op, blocks, buf, tag });
        Ok(())
    }

    /// Runs every queued operation, in order, before returning.
    fn ring(&mut self) -> Result<(), BlockError> {
        while let Some(mut q) = self.queued.pop_front() {
            let result = self.exec.execute(&q.op, q.buf.as_mut(), q.blocks);
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
