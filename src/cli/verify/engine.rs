//! Running a verify: writing the stamped region (with its metadata), flushing, reading it
//! back.

use super::*;

/// A validated verify run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Namespace.
    pub nsid: u32,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// First LBA of the region.
    pub first_lba: u64,
    /// Blocks in the region.
    pub blocks: u64,
    /// Blocks per transfer (their data, `lbas_per_io` × `block_size` bytes, and for
    /// extended LBAs their metadata with it, fits in one command).
    pub lbas_per_io: u64,
    /// Transfers outstanding.
    pub qd: usize,
    /// The run's seed.
    pub seed: u64,
    /// Number of the first pass.
    pub first_pass: u64,
    /// Passes.
    pub passes: u64,
    /// Check only.
    pub read_only: bool,
    /// How each block carries metadata: the namespace's format when its blocks carry
    /// metadata bytes (MS > 0), which verify then writes and checks with the data;
    /// [`MetadataFormat::NONE`] otherwise.
    pub metadata: MetadataFormat,
    /// On a zoned namespace, the region's zones ([`Plan::on_zones`]): each is reset before
    /// it is written, written sequentially from its start with one write in flight, and
    /// written and read up to its capacity (ZCAP), not its size.
    pub zones: Option<Vec<ZoneSpan>>,
    /// On a zoned namespace, how many zones are written at once: `qd`, or fewer when the
    /// controller's active and open zone limits leave fewer
    /// ([`ZoneLayout::writable_at_once`]).
    pub zones_at_once: usize,
}

impl Plan {
    /// Checks the arguments against the namespace.
    ///
    /// Errors: [`CliError::Invalid`] naming the argument and the limit.
    pub fn new(a: &VerifyArgs, ns: &block::NamespaceInfo) -> Result<Plan, CliError> {
        let block = u64::from(ns.block_size);
        let capacity = ns.capacity_bytes();
        if (block as usize) < HEADER_BYTES + CHECKSUM_BYTES + 8 || block % 8 != 0 {
            return Err(CliError::Invalid(format!("{block}-byte blocks are too small to stamp")));
        }
        let default = a
            .size
            .is_none()
            .then(|| (64u64 << 20).min(capacity.saturating_sub(a.offset)));
        let (offset, size) = region_bytes(a.offset, a.size.or(default), block, capacity)?;
        if size % block != 0 {
            return Err(CliError::Invalid(format!(
                "--size {size} is not a multiple of the namespace's logical block size ({block} bytes)"
            )));
        }
        if a.bs % block != 0 {
            return Err(CliError::Invalid(format!(
                "--bs {} is not a multiple of the namespace's logical block size ({block} bytes)",
                a.bs
            )));
        }
        // With extended LBAs the metadata counts against the transfer limit too.
        let max = ns.max_transfer_blocks(ns.metadata.bytes > 0).max(1) * block;
        Ok(Plan {
            nsid: ns.nsid,
            block_size: ns.block_size,
            first_lba: offset / block,
            blocks: size / block,
            lbas_per_io: a.bs.min(max) / block,
            qd: a.qd as usize,
            seed: a.seed.unwrap_or_else(fresh_seed),
            first_pass: a.pass,
            passes: if a.read_only { 1 } else { a.passes },
            read_only: a.read_only,
            metadata: if ns.metadata.bytes > 0 {
                ns.metadata
            } else {
                MetadataFormat::NONE
            },
            zones: None,
            zones_at_once: a.qd as usize,
        })
    }

    /// The plan on a zoned namespace whose zones are `layout` ([`Plan::zones`]).
    ///
    /// Errors: [`CliError::Invalid`] for a region that is not whole zones, holds none,
    /// or (unless read-only) holds one that cannot be written ([`ZoneLayout::spans_in`]),
    /// or when the controller's active zone limits leave none to write
    /// ([`ZoneLayout::writable_at_once`]); [`CliError::Unsupported`] for a namespace whose
    /// blocks carry metadata (not tested: no such zoned namespace in the test topology)
    /// and for writes with Variable Zone Capacity.
    pub fn on_zones(mut self, layout: &ZoneLayout) -> Result<Plan, CliError> {
        if self.with_metadata() {
            // Its writes and Reset Zone would work; no zoned namespace with metadata here
            // (QEMU's topology) has tested them.
            return Err(CliError::Unsupported(
                "verify on a zoned namespace whose blocks carry metadata is not supported (untested)".into(),
            ));
        }
        let writes = !self.read_only;
        if writes && layout.variable_capacity {
            return Err(CliError::Unsupported(
                "verify: the namespace's zone capacities may change at every reset (Variable Zone Capacity, ZOC bit \
                 0), so the blocks a pass writes are not known before it resets them"
                    .into(),
            ));
        }
        self.zones = Some(layout.spans_in(self.first_lba, self.blocks, "verify", writes)?);
        if writes {
            self.zones_at_once = layout.writable_at_once(self.first_lba, self.blocks, self.qd, "verify")?;
        }
        Ok(self)
    }

    /// The runs of blocks verify writes and reads, as (first LBA, blocks): the region, or
    /// on a zoned namespace each zone up to its capacity.
    pub fn extents(&self) -> Vec<(u64, u64)> {
        match &self.zones {
            Some(zones) => zones.iter().map(|z| (z.start, z.capacity)).collect(),
            None => vec![(self.first_lba, self.blocks)],
        }
    }

    /// Blocks written (unless read-only) and checked in each pass: the extents' total.
    pub fn checked_blocks(&self) -> u64 {
        self.extents().iter().map(|e| e.1).sum()
    }

    /// Data bytes per transfer (`--bs`, clamped).
    pub(super) fn bs(&self) -> usize {
        self.lbas_per_io as usize * self.block_size as usize
    }

    /// Whether the blocks carry metadata, moved with [`BlockQueue::submit_with_metadata`].
    pub fn with_metadata(&self) -> bool {
        self.metadata.bytes > 0
    }

    /// Buffer bytes per transfer: `lbas_per_io` × (`block_size` + metadata bytes per
    /// block), data and metadata laid out as [`MetadataFormat::ranges`] says.
    pub fn buffer_bytes(&self) -> usize {
        self.lbas_per_io as usize * self.metadata.bytes_per_block(self.block_size)
    }
}

/// A random seed for a run: 32 bits, easy to type again.
fn fresh_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (mix64(nanos ^ (u64::from(std::process::id()) << 32)) & 0xFFFF_FFFF).max(1)
}

/// A block that is not what was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Its LBA.
    pub lba: u64,
    /// The pass that found it.
    pub pass: u64,
    /// What is wrong.
    pub problem: Problem,
}

/// A failed I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoFailure {
    /// The pass.
    pub pass: u64,
    /// `read`, `write` or `flush`.
    pub op: &'static str,
    /// First LBA (0 for flush).
    pub lba: u64,
    /// Blocks (0 for flush).
    pub blocks: u64,
    /// Why.
    pub status: IoStatus,
}

/// One pass's numbers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PassResult {
    /// Its number.
    pub pass: u64,
    /// Seconds to write and flush (`None` when read-only).
    pub write_s: Option<f64>,
    /// Seconds to read back and check.
    pub read_s: f64,
    /// Mismatched blocks.
    pub mismatches: u64,
    /// Failed I/Os.
    pub errors: u64,
}

/// Everything a verify run found.
#[derive(Clone, Debug, Default)]
pub struct Findings {
    /// Per pass.
    pub passes: Vec<PassResult>,
    /// Mismatches, sorted by pass and LBA (at most [`MAX_LISTED`]).
    pub mismatches: Vec<Mismatch>,
    /// All mismatches, listed or not.
    pub mismatch_count: u64,
    /// I/O failures (at most [`MAX_ERRORS_LISTED`]).
    pub errors: Vec<IoFailure>,
    /// All failures.
    pub error_count: u64,
    /// Why the run stopped early, if it did.
    pub fatal: Option<String>,
}

impl Findings {
    /// Nothing went wrong.
    pub fn ok(&self) -> bool {
        self.mismatch_count == 0 && self.error_count == 0 && self.fatal.is_none()
    }

    pub(super) fn mismatch(&mut self, m: Mismatch) {
        self.mismatch_count += 1;
        if self.mismatches.len() < MAX_LISTED {
            self.mismatches.push(m);
        }
    }

    pub(super) fn failed(&mut self, f: IoFailure) {
        self.error_count += 1;
        if self.errors.len() < MAX_ERRORS_LISTED {
            self.errors.push(f);
        }
    }
}

impl Plan {
    /// Bytes the run transfers: every block of the region written (unless read-only) and
    /// read, in every pass. The total of its progress bar.
    pub fn transfer_bytes(&self) -> u64 {
        let per_pass = if self.read_only { 1 } else { 2 };
        self.passes * per_pass * self.checked_blocks() * u64::from(self.block_size)
    }
}

/// Runs `plan` on `device`, showing nothing.
///
/// Errors: see [`verify_with_progress`].
pub fn verify(device: &Device, plan: &Plan) -> Result<Findings, CliError> {
    verify_with_progress(device, plan, &Progress::hidden())
}

/// Runs `plan` on `device`, adding each transfer's bytes to `progress` as it completes
/// (its total is [`Plan::transfer_bytes`]) and naming the pass and phase in its message.
///
/// On a namespace whose blocks carry metadata ([`Plan::metadata`]) the queue is opened
/// with [`Device::create_metadata_queue`] and every transfer carries its blocks' metadata.
///
/// Errors: [`CliError::Invalid`] when the queue cannot be as deep as asked;
/// [`CliError::Device`] when the queue or buffers cannot be created. Failures during the
/// run are in the [`Findings`].
pub fn verify_with_progress(device: &Device, plan: &Plan, progress: &Progress) -> Result<Findings, CliError> {
    let backend = device.backend();
    let q = if plan.with_metadata() {
        device.create_metadata_queue(Some(plan.nsid), plan.qd)
    } else {
        device.create_queue(Some(plan.nsid), plan.qd)
    };
    let mut q =
        q.map_err(|e| CliError::Device(format!("cannot create a {backend} queue of depth {}: {e}", plan.qd)))?;
    if q.depth() < plan.qd {
        return Err(CliError::Invalid(format!(
            "--qd {} is deeper than a {backend} queue can be here ({} outstanding I/Os at most)",
            plan.qd,
            q.depth()
        )));
    }
    // The stride is rounded up to the block size so that each buffer starts
    // block-aligned, as without metadata (where the stride is the transfer size).
    let stride = plan.buffer_bytes().next_multiple_of(plan.block_size as usize);
    let alloc_err =
        |e: crate::nvme::hw::DmaError| CliError::Device(format!("{} buffers of {stride} bytes: {e}", plan.qd));
    let bufs = device
        .dma()
        .allocate(plan.qd * stride)
        .map_err(alloc_err)?
        .into_chunks(stride, plan.qd)
        .map_err(alloc_err)?;
    Ok(run(&mut q, bufs, plan, progress))
}

/// Runs every pass of `plan` on `q` with the transfer buffers `bufs` (at least `plan.qd`
/// of them, each of at least [`Plan::buffer_bytes`] bytes).
fn run<Q: BlockQueue>(q: &mut Q, bufs: Vec<DmaBuf>, plan: &Plan, progress: &Progress) -> Findings {
    let mut pool: Vec<(usize, DmaBuf)> = bufs.into_iter().enumerate().collect();
    let mut f = Findings::default();
    for pass in plan.first_pass..plan.first_pass + plan.passes {
        let (mismatches, errors) = (f.mismatch_count, f.error_count);
        let mut result = PassResult {
            pass,
            ..Default::default()
        };
        if !plan.read_only {
            let t = Instant::now();
            progress.message(format!("pass {pass}: write"));
            reset_zones(q, plan, &mut f);
            if f.fatal.is_none() {
                stream(q, &mut pool, plan, pass, true, &mut f, progress);
            }
            if f.fatal.is_none() {
                if let Err(e) = block::run_one(q, Op::Flush, None) {
                    match e.error {
                        block::IoError::Failed { status, .. } => f.failed(IoFailure {
                            pass,
                            op: "flush",
                            lba: 0,
                            blocks: 0,
                            status,
                        }),
                        other => f.fatal = Some(format!("flush: {other}")),
                    }
                }
            }
            result.write_s = Some(t.elapsed().as_secs_f64());
        }
        if f.fatal.is_none() {
            let t = Instant::now();
            progress.message(format!("pass {pass}: read"));
            stream(q, &mut pool, plan, pass, false, &mut f, progress);
            result.read_s = t.elapsed().as_secs_f64();
        }
        result.mismatches = f.mismatch_count - mismatches;
        result.errors = f.error_count - errors;
        f.passes.push(result);
        if f.fatal.is_some() {
            break;
        }
    }
    f.mismatches.sort_by_key(|m| (m.pass, m.lba));
    f
}

/// Empties every zone of a zoned plan (Reset Zone) before a pass writes them; the first
/// failure ends the run.
fn reset_zones<Q: BlockQueue>(q: &mut Q, plan: &Plan, f: &mut Findings) {
    for z in plan.zones.iter().flatten() {
        if let Err(e) = block::run_one(q, Op::ZoneReset { zslba: z.start }, None) {
            f.fatal = Some(format!("reset of the zone at LBA {}: {}", z.start, e.error));
            return;
        }
    }
}

/// Writes (stamping) or reads (checking) every block of the plan's extents once
/// ([`Plan::extents`]), with its metadata when it has some ([`stamp_blocks`],
/// [`check_blocks`]), with up to `qd` transfers outstanding — on a zoned namespace, writes
/// at most one per zone, so that each starts at its zone's write pointer — adding each
/// completed transfer's data bytes to `progress`.
fn stream<Q: BlockQueue>(
    q: &mut Q,
    pool: &mut Vec<(usize, DmaBuf)>,
    plan: &Plan,
    pass: u64,
    write: bool,
    f: &mut Findings,
    progress: &Progress,
) {
    let bsz = plan.block_size as usize;
    let unit = plan.metadata.bytes_per_block(plan.block_size);
    // Per extent: the next block, the end, transfers in flight.
    let mut extents: Vec<(u64, u64, usize)> = plan.extents().iter().map(|&(at, n)| (at, at + n, 0)).collect();
    let zoned_writes = write && plan.zones.is_some();
    let per_extent = if zoned_writes { 1 } else { usize::MAX };
    // Extents started and not finished (zones the controller holds active), and how many
    // may be: on zoned writes, what its active and open limits allow.
    let mut started = 0;
    let most_started = if zoned_writes { plan.zones_at_once } else { usize::MAX };
    let firsts: Vec<u64> = extents.iter().map(|e| e.0).collect();
    // Extents before this one are all submitted.
    let mut open = 0;
    // Per tag: first LBA, blocks, extent.
    let mut slots = vec![(0u64, 0u64, 0usize); plan.qd];
    let mut stop = false;
    let stamp = |lba| Stamp {
        lba,
        pass,
        seed: plan.seed,
    };
    loop {
        stop |= f.fatal.is_some();
        while !stop {
            while open < extents.len() && extents[open].0 >= extents[open].1 {
                open += 1;
            }
            // Zones start in order: past the first one not started, none is.
            let Some(e) = (open..extents.len())
                .take_while(|&i| started < most_started || extents[i].0 != firsts[i] || i == open)
                .find(|&i| {
                    let (next, end, in_flight) = extents[i];
                    let fresh = next == firsts[i];
                    next < end && in_flight < per_extent && (!fresh || started < most_started)
                })
            else {
                break;
            };
            let Some((tag, mut buf)) = pool.pop() else { break };
            let (next, end, _) = extents[e];
            let n = plan.lbas_per_io.min(end - next);
            buf.set_window(0, n as usize * unit)
                .expect("a buffer holds a whole transfer");
            if write {
                stamp_blocks(
                    buf.as_mut_slice(),
                    &plan.metadata,
                    plan.block_size,
                    n as usize,
                    stamp(next),
                );
            }
            let op = if write {
                Op::Write { lba: next, fua: false }
            } else {
                Op::Read { lba: next }
            };
            slots[tag] = (next, n, e);
            let submitted = if plan.with_metadata() {
                q.submit_with_metadata(op, Some(buf), Protection::checked(&plan.metadata, next), tag as u64)
            } else {
                q.submit(op, Some(buf), tag as u64)
            };
            match submitted {
                Ok(()) => {
                    started += usize::from(next == firsts[e]);
                    extents[e].0 += n;
                    extents[e].2 += 1;
                }
                Err(e) => {
                    if let Some(b) = e.buf {
                        pool.push((tag, b));
                    }
                    if !matches!(e.error, BlockError::QueueFull(_) | BlockError::Recovering) {
                        f.fatal = Some(format!(
                            "pass {pass}: {} of LBA {next}+{n} refused: {}",
                            op.name(),
                            e.error
                        ));
                        stop = true;
                    }
                    break;
                }
            }
        }
        if let Err(e) = q.ring() {
            f.fatal = Some(format!("pass {pass}: ring: {e}"));
            stop = true;
        }
        if q.outstanding() == 0 {
            if stop || open >= extents.len() {
                return;
            }
            if pool.is_empty() {
                f.fatal = Some(format!("pass {pass}: every buffer was lost to failed commands"));
                return;
            }
        }
        q.wait(plan.qd, |c: Completion| {
            let tag = c.tag as usize;
            let (lba, n, e) = slots[tag];
            extents[e].2 -= 1;
            if zoned_writes && c.result.is_err() {
                // The write pointer stayed behind: every later write in the zone would be
                // refused. Its unwritten blocks are found on the read-back.
                extents[e].0 = extents[e].1;
            }
            if extents[e].0 >= extents[e].1 && extents[e].2 == 0 {
                started = started.saturating_sub(1);
            }
            progress.add(n * bsz as u64);
            match c.result {
                Err(status) => f.failed(IoFailure {
                    pass,
                    op: if write { "write" } else { "read" },
                    lba,
                    blocks: n,
                    status,
                }),
                Ok(()) if !write => {
                    let Some(data) = c.buf.as_ref().map(DmaBuf::as_slice) else {
                        f.fatal = Some(format!(
                            "pass {pass}: the read of LBA {lba}+{n} came back without its buffer"
                        ));
                        return;
                    };
                    check_blocks(
                        data,
                        &plan.metadata,
                        plan.block_size,
                        n as usize,
                        stamp(lba),
                        |i, problem| {
                            f.mismatch(Mismatch {
                                lba: lba + i as u64,
                                pass,
                                problem,
                            })
                        },
                    );
                }
                Ok(()) => {}
            }
            if let Some(b) = c.buf {
                pool.push((tag, b));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{NamespaceInfo, SubmitError};
    use crate::nvme::Status;
    use crate::nvme::block::GeometrySource;
    use crate::nvme::hw::HeapRegion;
    use std::collections::VecDeque;
    use std::sync::Arc;

    const BS: u32 = 512;

    /// A namespace in memory: each block's data then its metadata. With `prchk` it checks
    /// the PI of each transfer with metadata as its protection fields ask (pi::check) and
    /// fails it with the controller's status; without `carries`, it refuses metadata like
    /// io_uring block I/O and psync.
    struct FakeQueue {
        info: NamespaceInfo,
        medium: Vec<u8>,
        prchk: bool,
        carries: bool,
        done: VecDeque<Completion>,
        /// Every transfer with metadata: its operation, LBA and protection fields.
        seen: Vec<(&'static str, u64, Protection)>,
        plain: usize,
        /// A zoned namespace: zones of `zone_size` blocks, `zone_capacity` writable.
        zoned: Option<ZonedFake>,
    }

    /// Zone state of a [`FakeQueue`]: it fails a Write that does not start at its zone's
    /// write pointer (Zone Invalid Write) and panics on a second Write in flight on one
    /// zone, a Reset Zone under one, or a read across zones.
    struct ZonedFake {
        size: u64,
        capacity: u64,
        wp: Vec<u64>,
        writing: Vec<bool>,
        /// The zone of each outstanding write's tag.
        tag_zone: std::collections::HashMap<u64, usize>,
        resets: usize,
        most_reads: usize,
        /// The most zones partly written at once (active).
        most_active: usize,
        /// A Write at this LBA fails (Write Fault) and leaves the write pointer.
        fail_write_at: Option<u64>,
    }

    impl FakeQueue {
        fn new(metadata: MetadataFormat, blocks: u64) -> FakeQueue {
            FakeQueue {
                info: NamespaceInfo {
                    nsid: 1,
                    block_size: BS,
                    blocks,
                    // Eight blocks, with their metadata where it travels with the data.
                    max_transfer_bytes: 8 * metadata.data_bytes(BS, 1),
                    buffer_alignment: 4,
                    write_zeroes: false,
                    deallocate: false,
                    deallocate_zeroes: false,
                    compare: false,
                    verify: false,
                    volatile_write_cache: true,
                    zone_commands: false,
                    metadata,
                    source: GeometrySource::Identify,
                },
                medium: vec![0; blocks as usize * metadata.bytes_per_block(BS)],
                prchk: true,
                carries: true,
                done: VecDeque::new(),
                seen: Vec::new(),
                plain: 0,
                zoned: None,
            }
        }

        /// A zoned namespace of `zones` zones of `size` blocks, `capacity` writable.
        fn zoned(zones: usize, size: u64, capacity: u64) -> FakeQueue {
            let mut q = FakeQueue::new(MetadataFormat::NONE, zones as u64 * size);
            q.info.zone_commands = true;
            q.zoned = Some(ZonedFake {
                size,
                capacity,
                wp: vec![0; zones],
                writing: vec![false; zones],
                tag_zone: Default::default(),
                resets: 0,
                most_reads: 0,
                most_active: 0,
                fail_write_at: None,
            });
            q
        }

        /// The zone rules for `op` of `blocks` blocks: `Some(result)` when it ends there.
        fn zone_rules(&mut self, op: Op, blocks: u64, tag: u64) -> Option<Result<(), IoStatus>> {
            let outstanding = self.done.len();
            let z = self.zoned.as_mut()?;
            match op {
                Op::Write { lba, .. } => {
                    let zone = (lba / z.size) as usize;
                    assert!(!z.writing[zone], "a second write in flight on zone {zone}");
                    z.writing[zone] = true;
                    z.tag_zone.insert(tag, zone);
                    if lba != zone as u64 * z.size + z.wp[zone] || z.wp[zone] + blocks > z.capacity {
                        return Some(Err(IoStatus::Nvme(Status::new(1, 0xBC))));
                    }
                    if z.fail_write_at == Some(lba) {
                        return Some(Err(IoStatus::Nvme(Status::new(2, 0x80))));
                    }
                    z.wp[zone] += blocks;
                    let active = z.wp.iter().filter(|&&wp| wp > 0 && wp < z.capacity).count();
                    z.most_active = z.most_active.max(active);
                    None
                }
                Op::Read { lba } => {
                    assert_eq!(lba / z.size, (lba + blocks - 1) / z.size, "a read across zones");
                    z.most_reads = z.most_reads.max(outstanding + 1);
                    None
                }
                Op::ZoneReset { zslba } => {
                    let zone = (zslba / z.size) as usize;
                    assert!(!z.writing[zone], "zone {zone} reset under a write");
                    z.wp[zone] = 0;
                    z.resets += 1;
                    let unit = self.info.metadata.bytes_per_block(BS);
                    let span = zslba as usize * unit..(zslba + z.size) as usize * unit;
                    self.medium[span].fill(0);
                    Some(Ok(()))
                }
                _ => None,
            }
        }

        /// Byte offset of block `lba`'s data in the medium; its metadata follows it.
        fn at(&self, lba: u64) -> usize {
            lba as usize * self.info.metadata.bytes_per_block(BS)
        }

        fn transfer(&mut self, op: Op, mut buf: Option<DmaBuf>, blocks: usize, pi: Option<Protection>, tag: u64) {
            let fmt = self.info.metadata;
            let bs = BS as usize;
            let zoned = self.zone_rules(op, blocks as u64, tag);
            let checks = self.prchk;
            let prchk = |b: &[u8]| match pi {
                Some(p) if checks => pi::check(&fmt, BS, b, blocks, &p).map_err(|e| {
                    IoStatus::Nvme(match e {
                        pi::PiError::Guard { .. } => Status::GUARD_CHECK_ERROR,
                        pi::PiError::AppTag { .. } => Status::APPLICATION_TAG_CHECK_ERROR,
                        pi::PiError::RefTag { .. } => Status::REFERENCE_TAG_CHECK_ERROR,
                    })
                }),
                _ => Ok(()),
            };
            let result = match (zoned, op) {
                (Some(result), _) => result,
                (None, Op::Write { lba, .. }) => {
                    let b = buf.as_ref().expect("checked").as_slice();
                    let r = prchk(b);
                    if r.is_ok() {
                        for i in 0..blocks {
                            let (data, md) = fmt.ranges(BS, blocks, i);
                            let at = self.at(lba + i as u64);
                            self.medium[at..at + bs].copy_from_slice(&b[data]);
                            self.medium[at + bs..at + bs + md.len()].copy_from_slice(&b[md]);
                        }
                    }
                    r
                }
                (None, Op::Read { lba }) => {
                    let b = buf.as_mut().expect("checked").as_mut_slice();
                    for i in 0..blocks {
                        let (data, md) = fmt.ranges(BS, blocks, i);
                        let at = self.at(lba + i as u64);
                        let len = md.len();
                        b[data].copy_from_slice(&self.medium[at..at + bs]);
                        b[md].copy_from_slice(&self.medium[at + bs..at + bs + len]);
                    }
                    prchk(b)
                }
                (None, Op::Flush) => Ok(()),
                (None, other) => unreachable!("verify reads, writes, flushes and resets only: {other:?}"),
            };
            self.done.push_back(Completion { tag, buf, result });
        }
    }

    impl BlockQueue for FakeQueue {
        fn namespace(&self) -> &NamespaceInfo {
            &self.info
        }
        fn depth(&self) -> usize {
            64
        }
        fn outstanding(&self) -> usize {
            self.done.len()
        }
        fn submit(&mut self, op: Op, buf: Option<DmaBuf>, tag: u64) -> Result<(), SubmitError> {
            let blocks = match block::check(&self.info, &op, buf.as_ref()) {
                Ok(n) => n as usize,
                Err(error) => return Err(SubmitError { error, buf }),
            };
            self.plain += 1;
            self.transfer(op, buf, blocks, None, tag);
            Ok(())
        }
        fn submit_with_metadata(
            &mut self,
            op: Op,
            buf: Option<DmaBuf>,
            pi: Protection,
            tag: u64,
        ) -> Result<(), SubmitError> {
            let checked = if self.carries {
                block::check_with_metadata(&self.info, &op, buf.as_ref(), &pi)
            } else {
                Err(BlockError::Unsupported {
                    op: op.name(),
                    reason: "this backend does not carry metadata".into(),
                })
            };
            let blocks = match checked {
                Ok(n) => n as usize,
                Err(error) => return Err(SubmitError { error, buf }),
            };
            if let Some(lba) = op.protected_lba() {
                self.seen.push((op.name(), lba, pi));
            }
            self.transfer(op, buf, blocks, Some(pi), tag);
            Ok(())
        }
        fn ring(&mut self) -> Result<(), BlockError> {
            Ok(())
        }
        fn poll<F: FnMut(Completion)>(&mut self, max: usize, mut f: F) -> usize {
            let n = max.min(self.done.len());
            for c in self.done.drain(..n) {
                if let Some(z) = self.zoned.as_mut() {
                    if let Some(zone) = z.tag_zone.remove(&c.tag) {
                        z.writing[zone] = false;
                    }
                }
                f(c);
            }
            n
        }
    }

    /// 64 blocks from LBA 16 in transfers of 8 blocks, 4 outstanding.
    fn plan(metadata: MetadataFormat, passes: u64, read_only: bool) -> Plan {
        Plan {
            nsid: 1,
            block_size: BS,
            first_lba: 16,
            blocks: 64,
            lbas_per_io: 8,
            qd: 4,
            seed: 77,
            first_pass: 1,
            passes,
            read_only,
            metadata,
            zones: None,
            zones_at_once: 4,
        }
    }

    fn run_on(q: &mut FakeQueue, plan: &Plan) -> Findings {
        let bufs = DmaBuf::from_region(Arc::new(
            HeapRegion::new(plan.qd * plan.buffer_bytes(), 4096, 0).unwrap(),
        ))
        .into_chunks(plan.buffer_bytes(), plan.qd)
        .unwrap();
        run(q, bufs, plan, &Progress::hidden())
    }

    const FORMATS: [(u16, u8, u8); 5] = [(8, 0x10, 1), (16, 0, 3 | 8), (16, 0x10, 0), (64, 0, 1), (8, 0, 0)];

    #[test]
    fn metadata_goes_to_the_device_with_every_block() {
        for (ms, flbas, dps) in FORMATS {
            let fmt = MetadataFormat::from_identify(ms, flbas, dps);
            let mut q = FakeQueue::new(fmt, 128);
            let p = plan(fmt, 2, false);
            assert_eq!(p.buffer_bytes(), 8 * (512 + ms as usize));
            let f = run_on(&mut q, &p);
            assert!(f.ok(), "{fmt}: {f:?}");
            assert_eq!(f.passes.len(), 2);
            // Two passes of 8 writes and 8 reads, each with the protection fields of
            // its first LBA; only the flushes go without metadata.
            assert_eq!(q.seen.len(), 32, "{fmt}");
            assert_eq!(q.plain, 2, "{fmt}");
            for (op, lba, pi) in &q.seen {
                assert!(*op == "read" || *op == "write");
                assert_eq!(*pi, Protection::checked(&fmt, *lba), "{fmt}: {op} at {lba}");
                assert_eq!(pi.check_guard, fmt.pi_type != 0);
            }
            // Each block reached the device with its own data and metadata (the medium
            // holds one block as a one-block buffer of either layout).
            for lba in 16..80 {
                let at = q.at(lba);
                let one = &q.medium[at..at + fmt.bytes_per_block(BS)];
                let mut problems = Vec::new();
                let stamp = Stamp { lba, pass: 2, seed: 77 };
                check_blocks(one, &fmt, BS, 1, stamp, |_, p| problems.push(p));
                assert_eq!(problems, [], "{fmt}: LBA {lba}");
            }
            assert!(
                q.medium[..q.at(16)].iter().all(|&b| b == 0),
                "nothing before the region"
            );
        }
    }

    #[test]
    fn zones_are_reset_then_written_one_write_at_a_time_up_to_their_capacity() {
        // Four zones of 32 blocks, 20 writable; the region is zones 1 and 2 (LBAs 32..96),
        // zone 2 holding 4 blocks from before. Transfers of 8 blocks, 4 outstanding.
        let mut q = FakeQueue::zoned(4, 32, 20);
        q.zoned.as_mut().unwrap().wp[2] = 4;
        let layout = ZoneLayout {
            zone_blocks: 32,
            append_limit: None,
            max_active: None,
            max_open: None,
            variable_capacity: false,
            zones: (0..4u64)
                .map(|i| match i {
                    2 => crate::cli::io_shared::zones::zone(64, 0x2, 68, 20),
                    i => crate::cli::io_shared::zones::zone(i * 32, 0x1, i * 32, 20),
                })
                .collect(),
        };
        let p = Plan {
            first_lba: 32,
            blocks: 64,
            ..plan(MetadataFormat::NONE, 2, false)
        }
        .on_zones(&layout)
        .unwrap();
        assert_eq!(p.extents(), [(32, 20), (64, 20)]);
        assert_eq!(p.transfer_bytes(), 2 * 2 * 40 * 512);
        let f = run_on(&mut q, &p);
        assert!(f.ok(), "{f:?}");
        let z = q.zoned.as_ref().unwrap();
        assert_eq!(z.resets, 4, "each zone, each pass");
        assert_eq!(z.wp, [0, 20, 20, 0]);
        assert!(z.most_reads > 1, "reads go at the queue depth");
        for lba in (32..52).chain(64..84) {
            let at = q.at(lba);
            let stamp = Stamp { lba, pass: 2, seed: 77 };
            let mut problems = Vec::new();
            check_blocks(&q.medium[at..at + 512], &MetadataFormat::NONE, BS, 1, stamp, |_, p| {
                problems.push(p)
            });
            assert_eq!(problems, [], "LBA {lba}");
        }
        assert!(q.medium[q.at(52)..q.at(64)].iter().all(|&b| b == 0), "past ZCAP");
        assert_eq!(z.most_active, 2, "both zones written at once");
        // One zone at a time when the controller's active limit leaves one; a write that
        // fails leaves its zone's write pointer, so the rest of the zone is not written
        // (one I/O error, its blocks and the rest of the zone found blank on read-back).
        let mut q = FakeQueue::zoned(4, 32, 20);
        q.zoned.as_mut().unwrap().fail_write_at = Some(72);
        let one = Plan {
            zones_at_once: 1,
            passes: 1,
            ..p.clone()
        };
        let f = run_on(&mut q, &one);
        assert_eq!(q.zoned.as_ref().unwrap().most_active, 1);
        assert_eq!((f.error_count, f.errors[0].lba), (1, 72), "{f:?}");
        assert_eq!(f.mismatch_count, 12, "LBAs 72..84: {f:?}");
        assert!(
            f.mismatches
                .iter()
                .all(|m| (72..84).contains(&m.lba) && m.problem == Problem::Zeros)
        );
        // A region that is not whole zones is refused.
        let e = Plan {
            first_lba: 16,
            ..plan(MetadataFormat::NONE, 1, false)
        }
        .on_zones(&layout)
        .unwrap_err();
        assert!(e.to_string().contains("whole zones"), "{e}");
    }

    #[test]
    fn a_namespace_without_metadata_is_verified_with_plain_io() {
        let mut q = FakeQueue::new(MetadataFormat::NONE, 128);
        let f = run_on(&mut q, &plan(MetadataFormat::NONE, 1, false));
        assert!(f.ok(), "{f:?}");
        assert_eq!((q.seen.len(), q.plain), (0, 17), "8 writes, a flush, 8 reads");
        assert_eq!(q.medium.len(), 128 * 512);
    }

    #[test]
    fn a_backend_without_metadata_stops_the_run() {
        let fmt = MetadataFormat::from_identify(16, 0, 1);
        let mut q = FakeQueue::new(fmt, 128);
        q.carries = false;
        let f = run_on(&mut q, &plan(fmt, 1, false));
        let why = f.fatal.as_deref().unwrap_or_default();
        assert!(
            why.starts_with("pass 1: write of LBA 16+8 refused: write is not supported here"),
            "{why}"
        );
        assert_eq!(q.outstanding(), 0);
    }

    #[test]
    fn damaged_metadata_and_pi_are_found() {
        // The tuple first: the guard does not cover the pattern bytes after it.
        let fmt = MetadataFormat::from_identify(16, 0, 1 | 8);
        let mut q = FakeQueue::new(fmt, 128);
        assert!(run_on(&mut q, &plan(fmt, 1, false)).ok());
        let (bs, at) = (BS as usize, fmt.pi_offset().unwrap());
        let md = |q: &FakeQueue, lba| q.at(lba) + bs;
        let m26 = md(&q, 26) + 8;
        q.medium[m26] ^= 0x40; // a pattern byte
        let m27 = md(&q, 27) + at + 3;
        q.medium[m27] ^= 1; // the application tag, which PRCHK leaves out
        let m34 = md(&q, 34) + at;
        q.medium[m34] ^= 1; // the guard
        let d41 = q.at(41) + 100;
        q.medium[d41] ^= 1; // the data
        let m50 = md(&q, 50) + at + 7;
        q.medium[m50] ^= 1; // the reference tag
        let ro = plan(fmt, 1, true);

        // The device's PI checks fail the transfers holding a bad guard or reference
        // tag; the host finds the rest.
        let f = run_on(&mut q, &ro);
        let errors: Vec<(u64, Status)> = f.errors.iter().map(|e| (e.lba, e.status.nvme().unwrap())).collect();
        assert_eq!(
            errors,
            [
                (32, Status::GUARD_CHECK_ERROR),
                (40, Status::GUARD_CHECK_ERROR),
                (48, Status::REFERENCE_TAG_CHECK_ERROR)
            ]
        );
        let problems: Vec<(u64, Problem)> = f.mismatches.iter().map(|m| (m.lba, m.problem)).collect();
        let pattern = Stamp {
            lba: 26,
            pass: 1,
            seed: 77,
        };
        let mut pattern_bytes = [0u8; 16];
        stamp_metadata(&mut pattern_bytes, pattern);
        assert_eq!(
            problems,
            [
                (
                    26,
                    Problem::Metadata {
                        fault: MetadataFault::Pattern {
                            offset: 8,
                            found: pattern_bytes[8] ^ 0x40,
                            expected: pattern_bytes[8],
                            differing: 1
                        }
                    }
                ),
                (
                    27,
                    Problem::Metadata {
                        fault: MetadataFault::Pi {
                            field: PiField::AppTag,
                            found: 1,
                            expected: 0
                        }
                    }
                ),
            ]
        );
        let subject = Subject {
            device: "nvme0n1".into(),
            backend: "vfio".into(),
            recheck_args: String::new(),
        };
        let text = human(&subject, &ro, &f);
        assert!(
            text.contains(
                "metadata: 16 bytes of metadata per block in a separate buffer, protection information type 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("pass 1: read of LBA 32+8 blocks: NVMe status End-to-end Guard Check Error (0x282"),
            "{text}"
        );
        assert!(
            text.contains(
                "pass 1: LBA 27: bad protection information, data intact: PI application tag 0x0001, expected 0x0000"
            ),
            "{text}"
        );

        // Without the device's checks (or past them) the host tells each damage apart.
        q.prchk = false;
        let f = run_on(&mut q, &ro);
        assert_eq!(f.error_count, 0);
        let kinds: Vec<(u64, String)> = f
            .mismatches
            .iter()
            .map(|m| {
                let what = match m.problem {
                    Problem::Metadata {
                        fault: MetadataFault::Pi { field, .. },
                    } => field.key().to_string(),
                    p => p.kind().to_string(),
                };
                (m.lba, what)
            })
            .collect();
        let want = [
            (26, "metadata"),
            (27, "app_tag"),
            (34, "guard"),
            (41, "corrupt"),
            (50, "ref_tag"),
        ];
        assert_eq!(kinds, want.map(|(l, k)| (l, k.to_string())));
        assert_eq!(
            f.mismatches[4].problem,
            Problem::Metadata {
                fault: MetadataFault::Pi {
                    field: PiField::RefTag,
                    found: 50 ^ 1,
                    expected: 50
                }
            }
        );
        let v = json(&subject, &ro, &f);
        assert_eq!(
            v["metadata"],
            serde_json::json!({"bytes": 16, "extended": false, "pi_type": 1, "pi_first": true})
        );
        assert_eq!(v["mismatches"][4]["pi_field"], "ref_tag");
        assert_eq!(v["mismatches"][4]["found"], 51);
        assert_eq!(v["mismatches"][0]["metadata_offset"], 8);
        assert_eq!(v["mismatches"][0]["kind"], "metadata");
    }
}
