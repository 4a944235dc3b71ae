//! Data pointers as a controller walks them (Base Specification 2.0, §4.1): PRP1/PRP2 and
//! PRP lists with [`PrpWalker`], SGL segments and data blocks, then the copies between host
//! memory and the simulator.

use super::dma::{DmaFault, DmaTable};
use super::state::State;
use crate::cmd::Command;
use crate::prp::PrpWalker;
use crate::sgl::{SglDescriptor, kind};
use crate::status::Status;
use std::cell::Cell;

/// Invalid SGL Segment Descriptor (SCT 0h, SC 0Dh).
const INVALID_SGL_SEGMENT: Status = Status::new(0, 0x0D);
/// Invalid Number of SGL Descriptors (SCT 0h, SC 0Eh).
const INVALID_SGL_COUNT: Status = Status::new(0, 0x0E);
/// The most SGL segments one command may chain (a loop guard).
const MAX_SGL_SEGMENTS: usize = 4096;
/// The most SGL descriptors one command may use, in all its segments (a loop guard).
const MAX_SGL_DESCRIPTORS: u64 = 1 << 16;

/// Why a data pointer could not be followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MapError {
    /// The pointer is malformed; complete with this status.
    Status(Status),
    /// A PRP list or SGL segment lies in unmapped memory.
    Dma(DmaFault),
}

/// Follows `cmd`'s data pointer for `len` bytes and appends the `(iova, len)` segments it
/// describes to `segs`. `allow_sgl` is false for admin commands and when SGLs are off.
pub(super) fn map_data(
    dma: &DmaTable,
    cmd: &Command,
    len: u64,
    page_size: usize,
    allow_sgl: bool,
    segs: &mut Vec<(u64, u64)>,
) -> Result<(), MapError> {
    match cmd.psdt() {
        0 => map_prp(dma, cmd.dptr[0], cmd.dptr[1], len, page_size, segs),
        1 | 2 if allow_sgl => map_sgl(dma, SglDescriptor::from_dptr(cmd.dptr), len, segs),
        _ => Err(MapError::Status(Status::INVALID_FIELD)),
    }
}

fn map_prp(
    dma: &DmaTable,
    prp1: u64,
    prp2: u64,
    len: u64,
    page: usize,
    segs: &mut Vec<(u64, u64)>,
) -> Result<(), MapError> {
    let fault = Cell::new(None);
    let read = |iova: u64| match dma.read_u64(iova) {
        Ok(v) => Some(v),
        Err(f) => {
            fault.set(Some(f));
            None
        }
    };
    let mut bad = false;
    for seg in PrpWalker::new(prp1, prp2, len, page, read) {
        match seg {
            Some(s) => segs.push(s),
            None => {
                bad = true;
                break;
            }
        }
    }
    match (bad, fault.get()) {
        (false, _) => Ok(()),
        (true, Some(f)) => Err(MapError::Dma(f)),
        (true, None) => Err(MapError::Status(Status::PRP_OFFSET_INVALID)),
    }
}

fn read_descriptor(dma: &DmaTable, iova: u64) -> Result<SglDescriptor, MapError> {
    let mut b = [0u8; 16];
    dma.read(iova, &mut b).map_err(MapError::Dma)?;
    Ok(SglDescriptor::from_bytes(&b))
}

fn map_sgl(dma: &DmaTable, first: SglDescriptor, len: u64, segs: &mut Vec<(u64, u64)>) -> Result<(), MapError> {
    let bad = |s| Err(MapError::Status(s));
    let mut need = len;
    let take = |d: &SglDescriptor, need: &mut u64, segs: &mut Vec<(u64, u64)>| {
        let n = (d.len as u64).min(*need);
        if n > 0 {
            segs.push((d.addr, n));
            *need -= n;
        }
    };
    if first.subtype() != 0 {
        return bad(Status::SGL_DESCRIPTOR_TYPE_INVALID);
    }
    let mut seg = match first.kind() {
        kind::DATA_BLOCK => {
            take(&first, &mut need, segs);
            None
        }
        kind::SEGMENT | kind::LAST_SEGMENT => Some(first),
        _ => return bad(Status::SGL_DESCRIPTOR_TYPE_INVALID),
    };
    let mut hops = 0;
    let mut descriptors = 0u64;
    while let Some(cur) = seg.take() {
        if need == 0 {
            break;
        }
        hops += 1;
        if hops > MAX_SGL_SEGMENTS {
            return bad(INVALID_SGL_COUNT);
        }
        if cur.len == 0 || cur.len % 16 != 0 {
            return bad(INVALID_SGL_SEGMENT);
        }
        let count = cur.len as u64 / 16;
        descriptors += count;
        if descriptors > MAX_SGL_DESCRIPTORS {
            return bad(INVALID_SGL_COUNT);
        }
        for i in 0..count {
            if need == 0 {
                break;
            }
            let fault = MapError::Dma(DmaFault {
                iova: cur.addr,
                len: cur.len as u64,
                freed: false,
            });
            let d = read_descriptor(dma, cur.addr.checked_add(i * 16).ok_or(fault)?)?;
            if d.subtype() != 0 {
                return bad(Status::SGL_DESCRIPTOR_TYPE_INVALID);
            }
            match d.kind() {
                kind::DATA_BLOCK => take(&d, &mut need, segs),
                // A link must be the last descriptor of a (non-last) segment.
                kind::SEGMENT | kind::LAST_SEGMENT if i == count - 1 && cur.kind() == kind::SEGMENT => seg = Some(d),
                kind::SEGMENT | kind::LAST_SEGMENT => return bad(INVALID_SGL_SEGMENT),
                _ => return bad(Status::SGL_DESCRIPTOR_TYPE_INVALID),
            }
        }
    }
    if need > 0 {
        return bad(Status::DATA_SGL_LENGTH_INVALID);
    }
    Ok(())
}

impl State {
    /// Follows `cmd`'s data pointer for `len` bytes into `self.segs`. SGLs are allowed on
    /// I/O queues when configured; admin commands need PRPs.
    pub(super) fn map(&mut self, sqid: u16, cmd: &Command, len: u64) -> Result<(), Status> {
        let mut segs = std::mem::take(&mut self.segs);
        segs.clear();
        let r = map_data(
            &self.dma,
            cmd,
            len,
            self.page_size,
            sqid != 0 && self.cfg.sgl,
            &mut segs,
        );
        self.segs = segs;
        match r {
            Ok(()) => Ok(()),
            Err(MapError::Status(s)) => Err(s),
            Err(MapError::Dma(f)) => Err(self.dma_failed(sqid, cmd, "data pointer list", f)),
        }
    }

    /// Copies `data` to host memory along the segments of the last [`State::map`] (which
    /// must cover at least `data.len()` bytes).
    pub(super) fn copy_out(&mut self, sqid: u16, cmd: &Command, data: &[u8]) -> Result<(), Status> {
        let mut done = 0usize;
        for i in 0..self.segs.len() {
            if done == data.len() {
                break;
            }
            let (iova, len) = self.segs[i];
            let n = (len as usize).min(data.len() - done);
            if let Err(f) = self.dma.write(iova, &data[done..done + n]) {
                return Err(self.dma_failed(sqid, cmd, "data transfer to the host", f));
            }
            done += n;
        }
        debug_assert_eq!(done, data.len(), "the mapped segments cover the data");
        Ok(())
    }

    /// Copies `len` bytes from host memory along the segments of the last [`State::map`]
    /// into `self.scratch[..len]`.
    pub(super) fn copy_in(&mut self, sqid: u16, cmd: &Command, len: usize) -> Result<(), Status> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.resize(len, 0);
        let mut done = 0usize;
        let mut result = Ok(());
        for &(iova, seg_len) in &self.segs {
            if done == len {
                break;
            }
            let n = (seg_len as usize).min(len - done);
            if let Err(f) = self.dma.read(iova, &mut buf[done..done + n]) {
                result = Err(f);
                break;
            }
            done += n;
        }
        self.scratch = buf;
        result.map_err(|f| self.dma_failed(sqid, cmd, "data transfer from the host", f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::DmaAllocator;
    use crate::sim::SimDma;

    fn dma() -> SimDma {
        SimDma { table: DmaTable::new() }
    }

    fn sgl_cmd(d: SglDescriptor) -> Command {
        let mut c = Command::read(1, 0, 1);
        c.set_sgl(d);
        c
    }

    fn walk(d: &SimDma, cmd: &Command, len: u64) -> Result<Vec<(u64, u64)>, MapError> {
        let mut segs = Vec::new();
        map_data(&d.table, cmd, len, 4096, true, &mut segs).map(|()| segs)
    }

    #[test]
    fn sgl_segments_chain_and_trim_to_the_transfer() {
        let d = dma();
        let mut mem = d.allocate(4096).unwrap();
        let base = mem.iova();
        let put = |m: &mut crate::DmaBuf, i: usize, desc: SglDescriptor| {
            m.as_mut_slice()[i * 16..i * 16 + 16].copy_from_slice(&desc.to_bytes())
        };
        put(&mut mem, 0, SglDescriptor::data_block(0xA000, 100));
        put(&mut mem, 1, SglDescriptor::last_segment(base + 64, 32));
        put(&mut mem, 4, SglDescriptor::data_block(0xB000, 100));
        put(&mut mem, 5, SglDescriptor::data_block(0xC000, 1000));
        let first = SglDescriptor::segment(base, 32);
        assert_eq!(
            walk(&d, &sgl_cmd(first), 300),
            Ok(vec![(0xA000, 100), (0xB000, 100), (0xC000, 100)])
        );
        assert_eq!(
            walk(&d, &sgl_cmd(first), 2000),
            Err(MapError::Status(Status::DATA_SGL_LENGTH_INVALID)),
            "1200 bytes described, 2000 needed"
        );
        put(&mut mem, 5, SglDescriptor::bit_bucket(1000));
        assert_eq!(
            walk(&d, &sgl_cmd(first), 300),
            Err(MapError::Status(Status::SGL_DESCRIPTOR_TYPE_INVALID))
        );
        // A link in the middle of a segment, or inside a last segment, is malformed.
        put(&mut mem, 4, SglDescriptor::segment(base, 16));
        assert_eq!(
            walk(&d, &sgl_cmd(first), 300),
            Err(MapError::Status(INVALID_SGL_SEGMENT))
        );
        assert_eq!(
            walk(&d, &sgl_cmd(SglDescriptor::segment(base, 24)), 300),
            Err(MapError::Status(INVALID_SGL_SEGMENT))
        );
    }

    #[test]
    fn sgl_loops_and_unmapped_segments_are_caught() {
        let d = dma();
        let mut mem = d.allocate(4096).unwrap();
        let base = mem.iova();
        mem.as_mut_slice()[..16].copy_from_slice(&SglDescriptor::data_block(0xA000, 1).to_bytes());
        mem.as_mut_slice()[16..32].copy_from_slice(&SglDescriptor::segment(base, 32).to_bytes());
        assert_eq!(
            walk(&d, &sgl_cmd(SglDescriptor::segment(base, 32)), 1 << 20),
            Err(MapError::Status(INVALID_SGL_COUNT))
        );
        let unmapped = walk(&d, &sgl_cmd(SglDescriptor::last_segment(0x5000, 16)), 16);
        assert!(matches!(unmapped, Err(MapError::Dma(f)) if f.iova == 0x5000));
    }

    #[test]
    fn prp_errors_distinguish_offsets_from_unmapped_lists() {
        let d = dma();
        let mut c = Command::read(1, 0, 1);
        c.set_prp(0x1002, 0);
        assert_eq!(walk(&d, &c, 512), Err(MapError::Status(Status::PRP_OFFSET_INVALID)));
        c.set_prp(0x1000, 0x9000);
        assert!(matches!(walk(&d, &c, 3 * 4096), Err(MapError::Dma(f)) if f.iova == 0x9000));
        c.set_prp(0x1000, 0x2000);
        assert_eq!(
            walk(&d, &c, 8192),
            Ok(vec![(0x1000, 4096), (0x2000, 4096)]),
            "data pages are checked at copy time"
        );
        let mut no_sgl = Vec::new();
        c.set_sgl(SglDescriptor::data_block(0x1000, 512));
        assert_eq!(
            map_data(&d.table, &c, 512, 4096, false, &mut no_sgl),
            Err(MapError::Status(Status::INVALID_FIELD))
        );
    }
}
