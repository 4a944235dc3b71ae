//! A lane: one I/O queue of the block interface with its own staging DMA buffers, used
//! by one thread at a time.
//!
//! The VDE moves bytes between callers' memory and the device through a lane. Transfers
//! are cut into pieces of at most one command ([`NamespaceInfo::max_transfer_bytes`],
//! capped at 256 KiB), and as many pieces as there are staging buffers are outstanding at
//! once, so a 1 MiB extent is written at queue depth 4 or more. A write rings the
//! doorbell for each piece as soon as it is staged, and hashes the piece (xxh3-64,
//! streaming) while the device writes it; reads ring once per batch. The staging buffers
//! are allocated once, when the lane is made; nothing on these paths allocates.

use super::VdeError;
use super::format::BLOCK;
use crate::block::{BlockQueue, NamespaceInfo, Op};
use crate::nvme::hw::DmaBuf;
use crate::{Device, IoQueue};
use xxhash_rust::xxh3::Xxh3;

/// Largest piece one command moves, in bytes.
const MAX_PIECE: usize = 256 * 1024;

/// The padding of a write that ends inside a block, for its checksum.
static ZEROS: [u8; BLOCK] = [0; BLOCK];

/// An I/O queue and its staging buffers.
pub struct Lane {
    q: IoQueue,
    free: Vec<DmaBuf>,
    piece: usize,
    pieces: usize,
    lbas_per_block: u64,
    /// The transfer in progress (first block, direction), for error messages.
    current: (u64, &'static str),
}

/// The direction of a transfer; a write may hash what it writes.
enum Dir<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8], Option<&'a mut Xxh3>),
}

impl Lane {
    /// Makes a lane on namespace `ns` of `dev` with about `staging` bytes of staging
    /// buffers (at least two pieces).
    ///
    /// Errors: [`VdeError::Device`] if the queue or the buffers cannot be had.
    pub fn new(dev: &Device, ns: &NamespaceInfo, staging: usize) -> Result<Lane, VdeError> {
        let piece = (ns.max_transfer_bytes.min(MAX_PIECE) / BLOCK) * BLOCK;
        if piece == 0 {
            return Err(VdeError::Unsupported(format!(
                "the device moves at most {} bytes per command; the VDE needs {BLOCK}",
                ns.max_transfer_bytes
            )));
        }
        let pieces = (staging / piece).max(2);
        let q = dev
            .create_queue(Some(ns.nsid), pieces + 1)
            .map_err(|e| VdeError::Device {
                what: "create an I/O queue",
                source: Box::new(e),
            })?;
        let buf = dev.dma().allocate(piece * pieces).map_err(|e| VdeError::Device {
            what: "allocate DMA staging buffers",
            source: Box::new(e),
        })?;
        let free = buf.into_chunks(piece, pieces).map_err(|e| VdeError::Device {
            what: "carve DMA staging buffers",
            source: Box::new(e),
        })?;
        Ok(Lane {
            q,
            free,
            piece,
            pieces,
            lbas_per_block: (BLOCK / ns.block_size as usize) as u64,
            current: (0, "read"),
        })
    }

    /// Reads `out.len()` bytes (a whole number of blocks) from block `start` on.
    ///
    /// Errors: [`VdeError::Io`] naming the first failed piece.
    pub fn read(&mut self, start: u64, out: &mut [u8]) -> Result<(), VdeError> {
        self.transfer(start, Dir::Read(out))
    }

    /// Reads `len` bytes (a whole number of blocks) from block `start` on, one piece
    /// (at most [`Lane::piece_bytes`]) at a time, and hands each piece to `f`, in order,
    /// straight from its staging buffer: no copy, for callers that only look at the bytes
    /// (checksums, `vde send`). One piece is outstanding at a time.
    ///
    /// Errors: [`VdeError::Io`] naming the failed piece; `f`'s error (the rest is not
    /// read).
    pub fn read_with(
        &mut self,
        start: u64,
        len: usize,
        f: &mut dyn FnMut(&[u8]) -> Result<(), VdeError>,
    ) -> Result<(), VdeError> {
        debug_assert_eq!(len % BLOCK, 0);
        self.current = (start, "read");
        let mut at = 0;
        while at < len {
            let n = (len - at).min(self.piece);
            let mut err = None;
            let buf = self.take_buf(&mut None, &mut err);
            let lba = (start + (at / BLOCK) as u64) * self.lbas_per_block;
            self.submit(Op::Read { lba }, buf, n, at as u64, &mut err);
            self.drain(&mut None, &mut err);
            if let Some(e) = err {
                return Err(e);
            }
            // The one buffer that was out came back last; its bytes are the piece.
            let piece = self.free.last().expect("the piece's buffer is back");
            f(&piece.as_slice()[..n])?;
            at += n;
        }
        Ok(())
    }

    /// Commands in flight on the lane's queue: 0 between transfers, unless one was left
    /// part-way (a panic).
    pub fn outstanding(&self) -> usize {
        self.q.outstanding()
    }

    /// Bytes one piece (one command) moves at most.
    pub fn piece_bytes(&self) -> usize {
        self.piece
    }

    /// Writes `data` (a whole number of blocks) from block `start` on. Not durable until
    /// [`Lane::flush`].
    ///
    /// Errors: [`VdeError::Io`] naming the first failed piece.
    pub fn write(&mut self, start: u64, data: &[u8]) -> Result<(), VdeError> {
        self.transfer(start, Dir::Write(data, None))
    }

    /// Writes `data` like [`Lane::write`], zero-padded to a whole number of blocks, and
    /// returns the xxh3-64 (with `seed`; 0 is plain xxh3-64) of the padded bytes, computed piece by piece while the device
    /// writes the pieces before (each piece's doorbell is rung as soon as it is staged),
    /// so hashing costs no time the device is busy anyway.
    ///
    /// Errors: [`VdeError::Io`] naming the first failed piece.
    pub fn write_hashed(&mut self, start: u64, data: &[u8], seed: u64) -> Result<u64, VdeError> {
        let mut h = Xxh3::with_seed(seed);
        self.transfer(start, Dir::Write(data, Some(&mut h)))?;
        Ok(h.digest())
    }

    /// Writes single blocks at the given block numbers, runs of consecutive blocks
    /// together. Not durable until [`Lane::flush`].
    ///
    /// Errors: [`VdeError::Io`].
    pub fn write_scattered(&mut self, blocks: &[(u64, &[u8; BLOCK])]) -> Result<(), VdeError> {
        let mut first_err = None;
        self.current = (blocks.first().map_or(0, |b| b.0), "write");
        let mut i = 0;
        while i < blocks.len() {
            let mut buf = self.take_buf(&mut None, &mut first_err);
            let start = blocks[i].0;
            let mut n = 0;
            while i + n < blocks.len() && blocks[i + n].0 == start + n as u64 && (n + 1) * BLOCK <= self.piece {
                buf.as_mut_slice()[n * BLOCK..(n + 1) * BLOCK].copy_from_slice(blocks[i + n].1);
                n += 1;
            }
            i += n;
            self.submit(
                Op::Write {
                    lba: start * self.lbas_per_block,
                    fua: false,
                },
                buf,
                n * BLOCK,
                u64::MAX,
                &mut first_err,
            );
        }
        self.drain(&mut None, &mut first_err);
        first_err.map_or(Ok(()), Err)
    }

    /// Makes every completed write durable (NVMe Flush).
    ///
    /// Errors: [`VdeError::Io`].
    pub fn flush(&mut self) -> Result<(), VdeError> {
        crate::block::run_one(&mut self.q, Op::Flush, None)
            .map(|_| ())
            .map_err(|e| VdeError::Io {
                what: "flush".into(),
                source: Box::new(e.error),
            })
    }

    fn transfer(&mut self, start: u64, dir: Dir<'_>) -> Result<(), VdeError> {
        let mut err = None;
        let (mut out, src, mut hash, len) = match dir {
            Dir::Read(o) => {
                let len = o.len();
                (Some(o), None, None, len)
            }
            Dir::Write(d, h) => (None, Some(d), h, d.len().next_multiple_of(BLOCK)),
        };
        debug_assert_eq!(len % BLOCK, 0);
        self.current = (start, if src.is_some() { "write" } else { "read" });
        let mut at = 0;
        while at < len && err.is_none() {
            let n = (len - at).min(self.piece);
            let mut buf = self.take_buf(&mut out, &mut err);
            let lba = (start + (at / BLOCK) as u64) * self.lbas_per_block;
            match src {
                Some(s) => {
                    // Only the last piece can end past the data, by less than a block.
                    let k = (s.len() - at).min(n);
                    let staged = &mut buf.as_mut_slice()[..n];
                    staged[..k].copy_from_slice(&s[at..at + k]);
                    staged[k..].fill(0);
                    self.submit(Op::Write { lba, fua: false }, buf, n, at as u64, &mut err);
                    // The device starts on this piece while the next is hashed and staged.
                    self.ring(&mut err);
                    if let Some(h) = hash.as_deref_mut() {
                        h.update(&s[at..at + k]);
                        h.update(&ZEROS[..n - k]);
                    }
                }
                None => self.submit(Op::Read { lba }, buf, n, at as u64, &mut err),
            }
            at += n;
        }
        self.drain(&mut out, &mut err);
        err.map_or(Ok(()), Err)
    }

    fn take_buf(&mut self, out: &mut Option<&mut [u8]>, err: &mut Option<VdeError>) -> DmaBuf {
        loop {
            if let Some(b) = self.free.pop() {
                return b;
            }
            self.reap(out, err);
        }
    }

    fn submit(&mut self, op: Op, mut buf: DmaBuf, len: usize, tag: u64, err: &mut Option<VdeError>) {
        buf.set_window(0, len).expect("piece fits its buffer");
        if let Err(e) = self.q.submit(op, Some(buf), tag) {
            if err.is_none() {
                *err = Some(VdeError::Io {
                    what: describe(self.current, tag),
                    source: Box::new(e.error),
                });
            }
            let mut b = e.buf.expect("buffer comes back");
            b.reset_window();
            self.free.push(b);
        }
    }

    fn reap(&mut self, out: &mut Option<&mut [u8]>, err: &mut Option<VdeError>) {
        let Lane { q, free, current, .. } = self;
        let on = |c: crate::block::Completion| {
            let mut b = c.buf.expect("lane I/O carries a buffer");
            match c.result {
                Ok(()) => {
                    if let Some(o) = out.as_deref_mut() {
                        if c.tag != u64::MAX {
                            let at = c.tag as usize;
                            o[at..at + b.len()].copy_from_slice(b.as_slice());
                        }
                    }
                }
                Err(status) => {
                    if err.is_none() {
                        *err = Some(VdeError::Io {
                            what: describe(*current, c.tag),
                            source: Box::new(crate::block::IoError::Failed { op: current.1, status }),
                        });
                    }
                }
            }
            b.reset_window();
            free.push(b);
        };
        q.wait(usize::MAX, on);
    }

    fn ring(&mut self, err: &mut Option<VdeError>) {
        if let Err(e) = self.q.ring()
            && err.is_none()
        {
            *err = Some(VdeError::Io {
                what: "ring the doorbell".into(),
                source: Box::new(e),
            });
        }
    }

    fn drain(&mut self, out: &mut Option<&mut [u8]>, err: &mut Option<VdeError>) {
        self.ring(err);
        while self.q.outstanding() > 0 {
            self.reap(out, err);
        }
        debug_assert_eq!(self.free.len(), self.pieces);
    }
}

/// Names the piece with `tag` of the transfer `current` (first block, direction), for
/// errors: tags are byte offsets into the transfer, or `u64::MAX` for scattered blocks.
fn describe(current: (u64, &'static str), tag: u64) -> String {
    if tag == u64::MAX {
        format!("{} of metadata blocks", current.1)
    } else {
        format!("{} at block {}", current.1, current.0 + tag / BLOCK as u64)
    }
}
