//! Running a verify: writing the stamped region, flushing, reading it back.

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
    /// Blocks per transfer.
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
        let max = (ns.max_transfer_bytes as u64 / block).max(1) * block;
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
        })
    }

    pub(super) fn bs(&self) -> usize {
        self.lbas_per_io as usize * self.block_size as usize
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
        self.passes * per_pass * self.blocks * u64::from(self.block_size)
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
/// Errors: [`CliError::Invalid`] when the queue cannot be as deep as asked;
/// [`CliError::Device`] when the queue or buffers cannot be created. Failures during the
/// run are in the [`Findings`].
pub fn verify_with_progress(device: &Device, plan: &Plan, progress: &Progress) -> Result<Findings, CliError> {
    let backend = device.backend();
    let mut q = device
        .create_queue(Some(plan.nsid), plan.qd)
        .map_err(|e| CliError::Device(format!("cannot create a {backend} queue of depth {}: {e}", plan.qd)))?;
    if q.depth() < plan.qd {
        return Err(CliError::Invalid(format!(
            "--qd {} is deeper than a {backend} queue can be here ({} outstanding I/Os at most)",
            plan.qd,
            q.depth()
        )));
    }
    let bs = plan.bs();
    let alloc_err = |e: crate::nvme::hw::DmaError| CliError::Device(format!("{} buffers of {bs} bytes: {e}", plan.qd));
    let bufs = device
        .dma()
        .allocate(plan.qd * bs)
        .map_err(alloc_err)?
        .into_chunks(bs, plan.qd)
        .map_err(alloc_err)?;
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
            stream(&mut q, &mut pool, plan, pass, true, &mut f, progress);
            if f.fatal.is_none() {
                if let Err(e) = block::run_one(&mut q, Op::Flush, None) {
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
            stream(&mut q, &mut pool, plan, pass, false, &mut f, progress);
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
    Ok(f)
}

/// Writes (stamping) or reads (checking) every block of the region once, with up to
/// `qd` transfers outstanding, adding each completed transfer's bytes to `progress`.
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
    let end = plan.first_lba + plan.blocks;
    let mut slots = vec![(0u64, 0u64); plan.qd];
    let mut next = plan.first_lba;
    let mut stop = false;
    let stamp = |lba| Stamp {
        lba,
        pass,
        seed: plan.seed,
    };
    loop {
        stop |= f.fatal.is_some();
        while !stop && next < end {
            let Some((tag, mut buf)) = pool.pop() else { break };
            let n = plan.lbas_per_io.min(end - next);
            buf.set_window(0, n as usize * bsz)
                .expect("a buffer holds a whole transfer");
            if write {
                for (i, b) in buf.as_mut_slice().chunks_exact_mut(bsz).enumerate() {
                    stamp_block(b, stamp(next + i as u64));
                }
            }
            let op = if write {
                Op::Write { lba: next, fua: false }
            } else {
                Op::Read { lba: next }
            };
            slots[tag] = (next, n);
            match q.submit(op, Some(buf), tag as u64) {
                Ok(()) => next += n,
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
            if stop || next >= end {
                return;
            }
            if pool.is_empty() {
                f.fatal = Some(format!("pass {pass}: every buffer was lost to failed commands"));
                return;
            }
        }
        q.wait(plan.qd, |c: Completion| {
            let tag = c.tag as usize;
            let (lba, n) = slots[tag];
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
                    for (i, b) in data.chunks_exact(bsz).enumerate() {
                        let lba = lba + i as u64;
                        if let Err(problem) = check_block(b, stamp(lba)) {
                            f.mismatch(Mismatch { lba, pass, problem });
                        }
                    }
                }
                Ok(()) => {}
            }
            if let Some(b) = c.buf {
                pool.push((tag, b));
            }
        });
    }
}
