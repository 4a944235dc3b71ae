//! A VDE volume (or snapshot) as a [`Device`] behind the block interface, so `perf`,
//! `verify` and the export path run on it unchanged.
//!
//! The spec is `vde:DEV:VOL` for a volume and `vde:DEV:VOL@SNAP` for a snapshot
//! (read-only); DEV is any device spec (a PCI address, a device node, a file). The
//! volume's namespace has 4096-byte blocks, a volatile write cache (a write is durable
//! once a Flush completes, or at completion with FUA), Write Zeroes and Deallocate that
//! free space and read back as zeros.
//!
//! A [`VolumeQueue`] owns a queue on the store's device. A read of one extent piece is
//! submitted there with the caller's buffer and checked against its per-block checksums
//! when it completes (one that fails them is done again by [`Vde::vol_read`], which looks
//! the extents up again: an overwrite may have freed the blocks and another write reused
//! them since the read was planned); a write of up to one extent (128 KiB) goes to newly
//! reserved blocks with the caller's buffer and is mapped when it completes. Holes, reads
//! across several pieces, longer writes, Write Zeroes, Deallocate and Flush run
//! synchronously in `submit` and complete at the next poll.

use super::dataset::{DatasetKind, MAX_VOL_EXTENT};
use super::store::Vde;
use super::{VdeError, VdeOptions};
use crate::block::{BlockError, BlockQueue, Completion, IoStatus, NamespaceInfo, Op, SubmitError};
use crate::claim::{Access, Claim};
use crate::nvme::hw::DmaBuf;
use crate::nvme::status::Status;
use crate::{Device, Error, IoQueue, OpenOptions, Target};
use std::collections::VecDeque;
use std::sync::Arc;

/// Volume block size, bytes.
pub const VOLUME_BLOCK: u32 = 4096;

/// A parsed `vde:DEV:VOL[@SNAP]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The store's device spec.
    pub dev: String,
    /// The store's namespace (`vde:DEV,nsid=N:VOL`), or `None` for the device's first.
    pub nsid: Option<u32>,
    /// The volume.
    pub volume: String,
    /// The snapshot, for `VOL@SNAP`.
    pub snapshot: Option<String>,
}

impl VolumeSpec {
    /// Parses `spec` if it starts with `vde:`; the volume is after the last `:` (volume
    /// names have no `:`, PCI addresses do), and a device ending in `,nsid=N` names the
    /// store's namespace ([`crate::device::split_nsid`]).
    ///
    /// Errors: [`Error::Open`] for `vde:` without a device or a volume, a malformed
    /// `,nsid=`, or naming a receive's hidden volume (`VOL%recv`).
    pub fn parse(spec: &str) -> Option<Result<VolumeSpec, Error>> {
        let rest = spec.strip_prefix("vde:")?;
        let bad = |why: &str| Error::Open {
            device: spec.to_string(),
            why: format!("{why}: a volume is vde:DEV:VOL, a snapshot vde:DEV:VOL@SNAP"),
        };
        let Some((dev, vol)) = rest.rsplit_once(':') else {
            return Some(Err(bad("no volume named")));
        };
        if dev.is_empty() || vol.is_empty() {
            return Some(Err(bad("empty device or volume")));
        }
        if let Err(e) = super::dataset::check_visible(vol) {
            return Some(Err(Error::Open {
                device: spec.to_string(),
                why: e.to_string(),
            }));
        }
        let (volume, snapshot) = match vol.split_once('@') {
            Some((v, s)) => (v.to_string(), Some(s.to_string())),
            None => (vol.to_string(), None),
        };
        let (dev, nsid) = match crate::device::split_nsid(dev) {
            Ok(split) => split,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(VolumeSpec {
            dev: dev.to_string(),
            nsid,
            volume,
            snapshot,
        }))
    }

    /// The dataset name: `VOL` or `VOL@SNAP`.
    pub fn dataset(&self) -> String {
        match &self.snapshot {
            Some(s) => format!("{}@{s}", self.volume),
            None => self.volume.clone(),
        }
    }
}

/// An open volume: the store, which dataset, its geometry, and the claim on the store's
/// device (exclusive for a volume, shared for a snapshot).
pub struct VolumeDevice {
    store: Arc<Vde>,
    name: String,
    read_only: bool,
    ns: NamespaceInfo,
    // Released after the store is closed (fields drop in order).
    _claim: Claim,
}

impl VolumeDevice {
    /// Opens `spec` with the store's device opened by `options`.
    ///
    /// Errors: [`Error::Open`] (no such volume, a claim refused, the store's errors, which
    /// name the store's device), the device's own errors.
    pub fn open(spec: &VolumeSpec, options: &OpenOptions) -> Result<VolumeDevice, Error> {
        let full = match spec.nsid {
            Some(n) => format!("vde:{},nsid={n}:{}", spec.dev, spec.dataset()),
            None => format!("vde:{}:{}", spec.dev, spec.dataset()),
        };
        let open_err = |why: String| Error::Open {
            device: full.clone(),
            why,
        };
        let target = Target::parse(&spec.dev)?;
        let read_only = spec.snapshot.is_some();
        let access = if read_only { Access::Shared } else { Access::Exclusive };
        let claim = Claim::acquire(&target, &spec.dev, access).map_err(|e| open_err(e.to_string()))?;
        let device = Device::open(&spec.dev, options)?;
        let store = Vde::open(
            device,
            VdeOptions {
                read_only,
                nsid: spec.nsid,
                ..Default::default()
            },
        )
        .map_err(|e| open_err(e.to_string()))?;
        let name = spec.dataset();
        let rec = store.dataset(&name).map_err(|e| open_err(e.to_string()))?;
        if (rec.kind == DatasetKind::Snapshot) != read_only {
            return Err(open_err(format!(
                "{name} is not a {}",
                if read_only { "snapshot" } else { "volume" }
            )));
        }
        let inner = store.namespace().clone();
        let ns = NamespaceInfo {
            nsid: 1,
            block_size: VOLUME_BLOCK,
            blocks: rec.size / VOLUME_BLOCK as u64,
            max_transfer_bytes: inner.max_transfer_bytes.max(VOLUME_BLOCK as usize),
            buffer_alignment: inner.buffer_alignment,
            write_zeroes: !read_only,
            deallocate: !read_only,
            deallocate_zeroes: true,
            compare: false,
            verify: false,
            volatile_write_cache: true,
            zone_commands: false,
            // The VDE's blocks carry no metadata of their own.
            metadata: crate::nvme::block::MetadataFormat::NONE,
            source: inner.source,
        };
        Ok(VolumeDevice {
            store: Arc::new(store),
            name,
            read_only,
            ns,
            _claim: claim,
        })
    }

    /// The volume's namespace (NSID 1).
    pub fn namespace(&self) -> &NamespaceInfo {
        &self.ns
    }

    /// The store's device (its allocator serves the volume's buffers).
    pub fn device(&self) -> &Device {
        self.store.device()
    }

    /// The store.
    pub fn store(&self) -> &Arc<Vde> {
        &self.store
    }

    /// A queue of `depth` operations for the calling thread.
    ///
    /// Errors: the store's device's queue creation errors.
    pub fn create_queue(&self, depth: usize) -> Result<VolumeQueue, Error> {
        let inner = self
            .store
            .device()
            .create_queue(Some(self.store.namespace().nsid), depth)?;
        Ok(VolumeQueue {
            store: Arc::clone(&self.store),
            name: self.name.clone(),
            read_only: self.read_only,
            ns: self.ns.clone(),
            lbas_per_block: (VOLUME_BLOCK / self.store.namespace().block_size) as u64,
            inner: Box::new(inner),
            slots: (0..depth.max(1)).map(|_| None).collect(),
            free: (0..depth.max(1)).rev().collect(),
            done: VecDeque::with_capacity(depth.max(1)),
            outstanding: 0,
        })
    }
}

/// What an operation on the store's device is for.
enum Slot {
    /// A read of one extent piece: check its blocks when it completes.
    Read {
        tag: u64,
        vblock: u64,
        extent: super::dataset::VolExtent,
    },
    /// A write to new blocks: map them when it completes.
    Write {
        tag: u64,
        vblock: u64,
        pba: u64,
        blocks: u64,
        sums: Vec<u64>,
        fua: bool,
    },
}

/// What [`VolumeQueue::try_async`] did with an operation.
enum Async {
    /// On the device queue; it completes through [`VolumeQueue::reap_inner`].
    Started,
    /// Not one piece, or the device queue refused it: run it synchronously.
    NotStarted(DmaBuf),
    /// The store refused it (range, space, a snapshot): complete it with this error.
    Failed(Box<VdeError>, DmaBuf),
}

/// An I/O queue on a volume; see the module documentation.
pub struct VolumeQueue {
    store: Arc<Vde>,
    name: String,
    read_only: bool,
    ns: NamespaceInfo,
    lbas_per_block: u64,
    inner: Box<IoQueue>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    done: VecDeque<Completion>,
    outstanding: usize,
}

/// The NVMe status a store error completes with: a checksum failure is an Unrecovered
/// Read Error (as a disk reports a bad sector), no space is Capacity Exceeded, a write
/// to a snapshot is Invalid Field; anything else is an Internal Error.
fn status_of(e: &VdeError) -> IoStatus {
    IoStatus::Nvme(match e {
        VdeError::DataCorrupt { .. } => Status::UNRECOVERED_READ_ERROR,
        VdeError::NoSpace { .. } => Status::CAPACITY_EXCEEDED,
        VdeError::ReadOnly => Status::INVALID_FIELD,
        _ => Status::INTERNAL_ERROR,
    })
}

impl VolumeQueue {
    fn finish(&mut self, tag: u64, buf: Option<DmaBuf>, r: Result<(), VdeError>) {
        if let Err(e) = &r {
            tracing::warn!(volume = %self.name, "{e}");
        }
        self.done.push_back(Completion {
            tag,
            buf,
            result: r.map_err(|e| status_of(&e)),
        });
    }

    /// Runs `op` now, without the device queue.
    fn run_sync(&mut self, op: Op, buf: &mut Option<DmaBuf>, blocks: u64) -> Result<(), VdeError> {
        let s = &self.store;
        match op {
            Op::Read { lba } => s.vol_read(&self.name, lba, buf.as_mut().expect("checked").as_mut_slice())?,
            Op::Write { lba, fua } => s.vol_write(&self.name, lba, buf.as_ref().expect("checked").as_slice(), fua)?,
            Op::WriteZeroes { lba, .. } | Op::Deallocate { lba, .. } => s.vol_unmap(&self.name, lba, blocks)?,
            Op::Flush => s.vol_flush()?,
            Op::Compare { .. } | Op::Verify { .. } | Op::ZoneAppend { .. } | Op::ZoneReset { .. } => {
                unreachable!("refused by submit (check refuses zone commands here)")
            }
        }
        Ok(())
    }

    /// Starts `op` on the device queue if it is one piece; gives the buffer back if not.
    fn try_async(&mut self, op: Op, buf: DmaBuf, blocks: u64, tag: u64) -> Async {
        let Some(&slot) = self.free.last() else {
            return Async::NotStarted(buf);
        };
        match op {
            Op::Read { lba } => {
                let mut plan = match self.store.vol_read_plan(&self.name, lba, blocks) {
                    Ok(p) => p,
                    Err(e) => return Async::Failed(Box::new(e), buf),
                };
                // One piece, on the device (not a hole): moved out of the plan.
                let extent = match plan.pop() {
                    Some((_, _, Some(e))) if plan.is_empty() => e,
                    _ => return Async::NotStarted(buf),
                };
                let inner_op = Op::Read {
                    lba: extent.pba * self.lbas_per_block,
                };
                match self.inner.submit(inner_op, Some(buf), slot as u64) {
                    Ok(()) => {
                        self.free.pop();
                        self.slots[slot] = Some(Slot::Read {
                            tag,
                            vblock: lba,
                            extent,
                        });
                        Async::Started
                    }
                    Err(e) => Async::NotStarted(e.buf.expect("a refused submission returns its buffer")),
                }
            }
            Op::Write { lba, fua } if blocks <= MAX_VOL_EXTENT => {
                let runs = match self.store.vol_write_begin(&self.name, lba, blocks) {
                    Ok(r) => r,
                    Err(e) => return Async::Failed(Box::new(e), buf),
                };
                let [(pba, n)] = runs.as_slice() else {
                    self.store.vol_write_abort(&runs);
                    return Async::NotStarted(buf);
                };
                let sums = self.store.block_sums(buf.as_slice());
                let inner_op = Op::Write {
                    lba: pba * self.lbas_per_block,
                    fua: false,
                };
                match self.inner.submit(inner_op, Some(buf), slot as u64) {
                    Ok(()) => {
                        self.free.pop();
                        self.slots[slot] = Some(Slot::Write {
                            tag,
                            vblock: lba,
                            pba: *pba,
                            blocks: *n,
                            sums,
                            fua,
                        });
                        Async::Started
                    }
                    Err(e) => {
                        self.store.vol_write_abort(&runs);
                        Async::NotStarted(e.buf.expect("a refused submission returns its buffer"))
                    }
                }
            }
            _ => Async::NotStarted(buf),
        }
    }

    fn reap_inner(&mut self, max: usize) -> usize {
        let mut finished = Vec::new();
        self.inner.poll(max, |c| finished.push(c));
        let n = finished.len();
        for c in finished {
            let slot = c.tag as usize;
            let Some(s) = self.slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.free.push(slot);
            match s {
                Slot::Read { tag, vblock, extent } => {
                    let mut buf = c.buf;
                    let r = match (c.result, &mut buf) {
                        (Ok(()), Some(b)) => match self.store.vol_verify(&self.name, vblock, &extent, b.as_slice()) {
                            // Planned at submission: an overwrite since may have freed the
                            // blocks and another write reused them. The synchronous read
                            // looks the extents up again (`READ_REPLANS`).
                            Err(VdeError::DataCorrupt { .. }) => {
                                self.store.vol_read(&self.name, vblock, b.as_mut_slice())
                            }
                            r => r,
                        },
                        (Err(st), _) => {
                            self.done.push_back(Completion {
                                tag,
                                buf,
                                result: Err(st),
                            });
                            continue;
                        }
                        (Ok(()), None) => Err(VdeError::Unsupported("the device kept the read buffer".into())),
                    };
                    self.finish(tag, buf, r);
                }
                Slot::Write {
                    tag,
                    vblock,
                    pba,
                    blocks,
                    sums,
                    fua,
                } => {
                    if let Err(st) = c.result {
                        self.store.vol_write_abort(&[(pba, blocks)]);
                        self.done.push_back(Completion {
                            tag,
                            buf: c.buf,
                            result: Err(st),
                        });
                        continue;
                    }
                    let r = self
                        .store
                        .vol_write_end(&self.name, vblock, vec![(pba, blocks, sums)], fua);
                    self.finish(tag, c.buf, r);
                }
            }
        }
        n
    }
}

impl BlockQueue for VolumeQueue {
    fn namespace(&self) -> &NamespaceInfo {
        &self.ns
    }

    fn depth(&self) -> usize {
        self.slots.len()
    }

    fn outstanding(&self) -> usize {
        self.outstanding
    }

    fn submit(&mut self, op: Op, buf: Option<DmaBuf>, tag: u64) -> Result<(), SubmitError> {
        let blocks = match crate::block::check(&self.ns, &op, buf.as_ref()) {
            Ok(n) => n,
            Err(error) => return Err(SubmitError { error, buf }),
        };
        if matches!(op, Op::Compare { .. } | Op::Verify { .. }) {
            return Err(SubmitError {
                error: BlockError::Unsupported {
                    op: op.name(),
                    reason: "a VDE volume has no Compare or Verify".into(),
                },
                buf,
            });
        }
        if self.read_only && !matches!(op, Op::Read { .. } | Op::Flush) {
            return Err(SubmitError {
                error: BlockError::Unsupported {
                    op: op.name(),
                    reason: format!("{} is a snapshot, read-only", self.name),
                },
                buf,
            });
        }
        if self.outstanding >= self.slots.len() {
            return Err(SubmitError {
                error: BlockError::QueueFull(self.outstanding),
                buf,
            });
        }
        self.outstanding += 1;
        let buf = match buf {
            Some(b) if matches!(op, Op::Read { .. } | Op::Write { .. }) => match self.try_async(op, b, blocks, tag) {
                Async::Started => return Ok(()),
                Async::NotStarted(b) => Some(b),
                Async::Failed(e, b) => {
                    self.finish(tag, Some(b), Err(*e));
                    return Ok(());
                }
            },
            other => other,
        };
        // Holes, several pieces, long writes, and the operations without data.
        let mut buf = buf;
        let r = self.run_sync(op, &mut buf, blocks);
        self.finish(tag, buf, r);
        Ok(())
    }

    fn ring(&mut self) -> Result<(), BlockError> {
        self.inner.ring()
    }

    fn poll<F: FnMut(Completion)>(&mut self, max: usize, mut on_complete: F) -> usize {
        if self.done.len() < max {
            self.reap_inner(max - self.done.len());
        }
        let mut n = 0;
        while n < max {
            let Some(c) = self.done.pop_front() else { break };
            self.outstanding -= 1;
            on_complete(c);
            n += 1;
        }
        n
    }
}
