//! The block interface ([`crate::block::BlockQueue`]) over the VFIO driver's queue pairs.

use super::{Controller, Error, IoCompletion, IoQueuePair, Namespace};
use crate::block::{
    self, BlockError, BlockQueue, Completion, GeometrySource, IoStatus, NamespaceInfo, Op, Protection, SubmitError,
};
use crate::cmd::DSM_RANGE_BYTES;
use crate::hw::{DmaBuf, Registers};

impl Namespace {
    /// The namespace as the block interface describes it.
    pub fn info(&self) -> NamespaceInfo {
        NamespaceInfo {
            nsid: self.nsid,
            block_size: self.block_size,
            blocks: self.blocks,
            max_transfer_bytes: self.max_transfer_bytes(),
            // NVMe data pointers need dword alignment only.
            buffer_alignment: 4,
            write_zeroes: self.write_zeroes,
            deallocate: self.deallocate,
            // DLFEAT bits 2:0 = 001b: deallocated blocks read as zeros.
            deallocate_zeroes: self.identify.dlfeat & 0x7 == 1,
            // Plain Compare would need the metadata.
            compare: self.compare && self.metadata.is_none(),
            // As advertised in ONCS, or known from the quirk table (VERIFY_UNADVERTISED);
            // the controller driver's own `verify` sends it either way.
            verify: self.verify,
            volatile_write_cache: self.volatile_write_cache,
            zone_commands: true,
            metadata: self.metadata,
            source: GeometrySource::Identify,
        }
    }
}

impl From<Error> for BlockError {
    fn from(e: Error) -> BlockError {
        match e {
            Error::QueueFull(n) => BlockError::QueueFull(n),
            Error::WrongDomain { buf, queue } => BlockError::WrongDomain { buf, queue },
            Error::TransferTooLarge { bytes, max } => BlockError::TransferTooLarge { bytes, max },
            Error::Misaligned { iova, align } => BlockError::Misaligned {
                addr: iova as usize,
                align,
            },
            Error::LbaOutOfRange { slba, blocks, nsze, .. } => BlockError::LbaOutOfRange {
                lba: slba,
                blocks,
                size: nsze,
            },
            Error::BadLength { len, block_size } => BlockError::BadLength { len, block_size },
            Error::Recovering { .. } => BlockError::Recovering,
            other => BlockError::Dead(other.to_string()),
        }
    }
}

/// An I/O queue pair bound to one namespace: the VFIO backend of the block interface.
///
/// Deallocate is Dataset Management with one range; the 16-byte range buffers come from
/// a pool allocated with the queue, one per slot.
pub struct NamespaceQueue<R: Registers> {
    pair: IoQueuePair<R>,
    info: NamespaceInfo,
    ranges: Vec<DmaBuf>,
    /// A range buffer never lent out: buffers from its region are the pool's.
    marker: DmaBuf,
}

impl<R: Registers> NamespaceQueue<R> {
    /// A queue pair of `entries` entries (clamped to CAP.MQES + 1) on namespace `nsid`,
    /// for I/O without metadata buffers.
    ///
    /// Errors: [`Error::NoSuchNamespace`]; [`Error::MetadataUnsupported`] for a namespace
    /// whose metadata needs a buffer ([`Namespace::check_usable`]); as
    /// [`Controller::create_io_queue_pair_sized`].
    pub fn new(ctrl: &Controller<R>, nsid: u32, entries: u32) -> Result<NamespaceQueue<R>, Error> {
        ctrl.namespace(nsid)?.check_usable()?;
        Self::with_metadata(ctrl, nsid, entries)
    }

    /// [`Self::new`] for a caller that carries metadata
    /// ([`BlockQueue::submit_with_metadata`]): it opens on any namespace. Plain
    /// submissions are still refused where the metadata needs a buffer ([`block::check`]).
    ///
    /// Errors: [`Error::NoSuchNamespace`]; as [`Controller::create_io_queue_pair_sized`].
    pub fn with_metadata(ctrl: &Controller<R>, nsid: u32, entries: u32) -> Result<NamespaceQueue<R>, Error> {
        let ns = ctrl.namespace(nsid)?;
        let pair = ctrl.create_io_queue_pair_sized(entries.min(ctrl.cap().max_queue_entries()))?;
        let depth = pair.depth();
        let mut ranges = ctrl
            .dma()
            .allocate((depth + 1) * DSM_RANGE_BYTES)?
            .into_chunks(DSM_RANGE_BYTES, depth + 1)?;
        let marker = ranges.pop().expect("depth + 1 chunks");
        Ok(NamespaceQueue {
            pair,
            info: ns.info(),
            ranges,
            marker,
        })
    }

    /// The underlying queue pair.
    pub fn pair(&mut self) -> &mut IoQueuePair<R> {
        &mut self.pair
    }

    fn is_range_buffer(&self, b: &DmaBuf) -> bool {
        b.same_region(&self.marker)
    }
}

impl<R: Registers> BlockQueue for NamespaceQueue<R> {
    fn namespace(&self) -> &NamespaceInfo {
        &self.info
    }

    fn depth(&self) -> usize {
        self.pair.depth()
    }

    fn outstanding(&self) -> usize {
        self.pair.outstanding()
    }

    fn submit(&mut self, op: Op, buf: Option<DmaBuf>, tag: u64) -> Result<(), SubmitError> {
        let blocks = match block::check(&self.info, &op, buf.as_ref()) {
            Ok(n) => n as u32,
            Err(error) => return Err(SubmitError { error, buf }),
        };
        self.post(op, blocks, buf, None, tag)
    }

    /// Separate metadata goes in MPTR, after the data in the same buffer; extended LBAs
    /// travel whole through the data pointer.
    fn submit_with_metadata(
        &mut self,
        op: Op,
        buf: Option<DmaBuf>,
        pi: Protection,
        tag: u64,
    ) -> Result<(), SubmitError> {
        let blocks = match block::check_with_metadata(&self.info, &op, buf.as_ref(), &pi) {
            Ok(n) => n as u32,
            Err(error) => return Err(SubmitError { error, buf }),
        };
        self.post(op, blocks, buf, Some(pi), tag)
    }

    fn ring(&mut self) -> Result<(), BlockError> {
        self.pair.ring();
        Ok(())
    }

    fn poll<F: FnMut(Completion)>(&mut self, max: usize, on_complete: F) -> usize {
        self.complete(max, on_complete, false)
    }

    fn steer_interrupts(&mut self, cpu: usize) -> std::io::Result<bool> {
        self.pair.steer_interrupt(cpu)
    }

    /// Sleeps on the queue pair's interrupt vector when it has one
    /// ([`IoQueuePair::wait`]); spins otherwise.
    fn wait<F: FnMut(Completion)>(&mut self, max: usize, on_complete: F) -> usize {
        self.complete(max, on_complete, true)
    }
}

impl<R: Registers> NamespaceQueue<R> {
    /// Posts a checked operation of `blocks` blocks; with `host_pi`, its buffer carries
    /// metadata and the caller's protection fields go in the command.
    fn post(
        &mut self,
        op: Op,
        blocks: u32,
        buf: Option<DmaBuf>,
        host_pi: Option<Protection>,
        tag: u64,
    ) -> Result<(), SubmitError> {
        let cmd = op.command_for(self.info.nsid, &self.info.metadata, blocks, host_pi.as_ref());
        let separate = host_pi.is_some() && !self.info.metadata.extended && op.needs_buffer();
        let buf = if let Op::Deallocate { .. } = op {
            let Some(mut range) = self.ranges.pop() else {
                return Err(SubmitError {
                    error: BlockError::QueueFull(self.outstanding()),
                    buf,
                });
            };
            range.as_mut_slice().copy_from_slice(&op.dsm_range().to_bytes());
            Some(range)
        } else {
            buf
        };
        let submitted = match buf {
            Some(b) if separate => {
                let data_len = self.info.metadata.data_bytes(self.info.block_size, blocks as usize);
                self.pair.submit_with_metadata(cmd, b, data_len, tag)
            }
            buf => self.pair.submit(cmd, buf, tag),
        };
        submitted.map_err(|e| {
            // A refused Deallocate gives its range buffer back to the pool, not the caller.
            let buf = match e.buf {
                Some(b) if self.is_range_buffer(&b) => {
                    self.ranges.push(b);
                    None
                }
                other => other,
            };
            SubmitError {
                error: e.error.into(),
                buf,
            }
        })
    }

    /// [`IoQueuePair::poll`] (or, with `wait`, [`IoQueuePair::wait`]) with completions in
    /// the block interface's terms.
    fn complete<F: FnMut(Completion)>(&mut self, max: usize, mut on_complete: F, wait: bool) -> usize {
        let (ranges, marker) = (&mut self.ranges, &self.marker);
        let each = |c: IoCompletion| {
            // A Deallocate's range buffer goes back to the pool; the caller gave none.
            let buf = match c.buf {
                Some(b) if b.same_region(marker) => {
                    ranges.push(b);
                    None
                }
                other => other,
            };
            let result = if c.status.is_success() {
                Ok(())
            } else {
                Err(IoStatus::Nvme(c.status))
            };
            on_complete(Completion {
                tag: c.tag,
                buf,
                result,
            });
        };
        if wait {
            self.pair.wait(max, each)
        } else {
            self.pair.poll(max, each)
        }
    }
}
