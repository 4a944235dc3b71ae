//! Scatter Gather Lists — NVMe Base Specification 2.0, §4.1.2.
//!
//! An SGL descriptor is 16 bytes: address (8), length (4), reserved (3), and the SGL
//! identifier (type in bits 7:4, subtype in bits 3:0). The command's DPTR holds the first
//! descriptor; for more than one data block it is a Last Segment (or Segment) descriptor
//! pointing to a list of descriptors in memory, whose final entry may link to the next
//! segment. QEMU's controller accepts SGLs on I/O commands only; admin commands use PRPs.

use crate::hw::DmaBuf;

/// SGL descriptor types (§4.1.2.1, Figure 84).
pub mod kind {
    /// SGL Data Block descriptor.
    pub const DATA_BLOCK: u8 = 0x0;
    /// SGL Bit Bucket descriptor.
    pub const BIT_BUCKET: u8 = 0x1;
    /// SGL Segment descriptor.
    pub const SEGMENT: u8 = 0x2;
    /// SGL Last Segment descriptor.
    pub const LAST_SEGMENT: u8 = 0x3;
    /// Keyed SGL Data Block descriptor (fabrics).
    pub const KEYED_DATA_BLOCK: u8 = 0x4;
    /// Transport SGL Data Block descriptor (fabrics).
    pub const TRANSPORT_DATA_BLOCK: u8 = 0x5;
}

/// Size of one SGL descriptor in bytes.
pub const DESCRIPTOR_SIZE: usize = 16;

/// A 16-byte SGL descriptor (§4.1.2, Figure 83).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SglDescriptor {
    /// Address (IOVA) of the data block or segment.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Reserved bytes.
    pub reserved: [u8; 3],
    /// SGL identifier: descriptor type (bits 7:4) and subtype (bits 3:0; 0 = address).
    pub id: u8,
}

const _: () = assert!(std::mem::size_of::<SglDescriptor>() == DESCRIPTOR_SIZE);

impl SglDescriptor {
    const fn with(kind: u8, addr: u64, len: u32) -> SglDescriptor {
        SglDescriptor {
            addr,
            len,
            reserved: [0; 3],
            id: kind << 4,
        }
    }
    /// A Data Block descriptor: `len` bytes at `addr`.
    pub const fn data_block(addr: u64, len: u32) -> SglDescriptor {
        SglDescriptor::with(kind::DATA_BLOCK, addr, len)
    }
    /// A Bit Bucket descriptor: `len` bytes of read data to discard.
    pub const fn bit_bucket(len: u32) -> SglDescriptor {
        SglDescriptor::with(kind::BIT_BUCKET, 0, len)
    }
    /// A Segment descriptor: a segment of `len` bytes (a multiple of 16) at `addr`,
    /// whose last descriptor may link to another segment.
    pub const fn segment(addr: u64, len: u32) -> SglDescriptor {
        SglDescriptor::with(kind::SEGMENT, addr, len)
    }
    /// A Last Segment descriptor: the final segment of `len` bytes at `addr`.
    pub const fn last_segment(addr: u64, len: u32) -> SglDescriptor {
        SglDescriptor::with(kind::LAST_SEGMENT, addr, len)
    }
    /// The descriptor type (bits 7:4 of the identifier).
    pub const fn kind(&self) -> u8 {
        self.id >> 4
    }
    /// The descriptor subtype (bits 3:0 of the identifier).
    pub const fn subtype(&self) -> u8 {
        self.id & 0xF
    }
    /// The descriptor as the two quadwords of a command's DPTR.
    pub const fn to_dptr(self) -> [u64; 2] {
        [self.addr, self.len as u64 | (self.id as u64) << 56]
    }
    /// The descriptor held in a command's DPTR.
    pub const fn from_dptr(dptr: [u64; 2]) -> SglDescriptor {
        SglDescriptor {
            addr: dptr[0],
            len: dptr[1] as u32,
            reserved: [0; 3],
            id: (dptr[1] >> 56) as u8,
        }
    }
    /// The descriptor encoded as 16 little-endian bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[15] = self.id;
        b
    }
    /// Decodes 16 little-endian bytes.
    pub fn from_bytes(b: &[u8; 16]) -> SglDescriptor {
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&b[..8]);
        SglDescriptor {
            addr: u64::from_le_bytes(addr),
            len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            reserved: [b[12], b[13], b[14]],
            id: b[15],
        }
    }
}

/// An SGL could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SglError {
    /// No data blocks were given.
    #[error("an SGL needs at least one data block")]
    Empty,
    /// A data block is empty or longer than the 32-bit length field.
    #[error("data block {index} has length {len} bytes; SGL data blocks hold 1..=4 GiB-1")]
    BadLength {
        /// Index of the block.
        index: usize,
        /// Its length in bytes.
        len: usize,
    },
    /// The preallocated segment memory is too small.
    #[error("SGL needs {need} bytes of segment memory but {have} are preallocated")]
    SegmentsTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// Segments of `segment_bytes` needed to describe `blocks` data blocks.
pub fn segments_for(blocks: usize, segment_bytes: usize) -> usize {
    let per = segment_bytes / DESCRIPTOR_SIZE;
    match blocks {
        0 | 1 => 0,
        n if n <= per => 1,
        n => 1 + (n - per).div_ceil(per - 1),
    }
}

/// Builds the SGL for the data blocks `blocks` (IOVA, length in bytes) and returns the
/// descriptor for the command's DPTR. One block becomes a Data Block descriptor in the
/// command itself; more are written into `segments` (preallocated memory divided into
/// segments of `segment_bytes`, a multiple of 16), each full segment ending in a link.
///
/// Errors: [`SglError`] for no blocks, a bad block length or too little segment memory.
pub fn build_sgl(
    blocks: &[(u64, usize)],
    segments: &mut DmaBuf,
    segment_bytes: usize,
) -> Result<SglDescriptor, SglError> {
    for (index, &(_, len)) in blocks.iter().enumerate() {
        if len == 0 || len > u32::MAX as usize {
            return Err(SglError::BadLength { index, len });
        }
    }
    match blocks {
        [] => return Err(SglError::Empty),
        [(addr, len)] => return Ok(SglDescriptor::data_block(*addr, *len as u32)),
        _ => {}
    }
    let per = segment_bytes / DESCRIPTOR_SIZE;
    let need = segments_for(blocks.len(), segment_bytes) * segment_bytes;
    if per < 2 || need > segments.len() {
        return Err(SglError::SegmentsTooSmall {
            need,
            have: segments.len(),
        });
    }
    let base = segments.iova();
    let mem = segments.as_mut_slice();
    let mut put = |seg: usize, i: usize, d: SglDescriptor| {
        let off = seg * segment_bytes + i * DESCRIPTOR_SIZE;
        mem[off..off + DESCRIPTOR_SIZE].copy_from_slice(&d.to_bytes());
    };
    // The descriptor pointing at segment `seg` that holds `count` descriptors.
    let link = |seg: usize, count: usize, last: bool| {
        let addr = base + (seg * segment_bytes) as u64;
        let len = (count * DESCRIPTOR_SIZE) as u32;
        if last {
            SglDescriptor::last_segment(addr, len)
        } else {
            SglDescriptor::segment(addr, len)
        }
    };
    let (mut seg, mut rest) = (0usize, blocks);
    let mut first = None;
    loop {
        let fits_here = rest.len() <= per;
        let take = if fits_here { rest.len() } else { per - 1 };
        let count = if fits_here { take } else { per };
        let pointer = link(seg, count, fits_here);
        if seg == 0 {
            first = Some(pointer);
        } else {
            put(seg - 1, per - 1, pointer);
        }
        for (i, &(addr, len)) in rest[..take].iter().enumerate() {
            put(seg, i, SglDescriptor::data_block(addr, len as u32));
        }
        rest = &rest[take..];
        if rest.is_empty() {
            break;
        }
        seg += 1;
    }
    Ok(first.expect("at least one segment was written"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::HeapRegion;
    use std::sync::Arc;

    const SEG_IOVA: u64 = 0x9000_0000;

    fn mem(bytes: usize) -> DmaBuf {
        DmaBuf::from_region(Arc::new(HeapRegion::new(bytes, 4096, SEG_IOVA).unwrap()))
    }

    fn desc(m: &DmaBuf, off: usize) -> SglDescriptor {
        SglDescriptor::from_bytes(m.as_slice()[off..off + 16].try_into().unwrap())
    }

    /// Follows the SGL from `first` and returns the data blocks in order.
    fn walk(first: SglDescriptor, m: &DmaBuf) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        let mut cur = first;
        loop {
            match cur.kind() {
                kind::DATA_BLOCK => {
                    out.push((cur.addr, cur.len));
                    return out;
                }
                kind::SEGMENT | kind::LAST_SEGMENT => {
                    let base = (cur.addr - SEG_IOVA) as usize;
                    let n = cur.len as usize / 16;
                    let mut next = None;
                    for i in 0..n {
                        let d = desc(m, base + i * 16);
                        if d.kind() == kind::DATA_BLOCK {
                            out.push((d.addr, d.len));
                        } else {
                            assert_eq!(i, n - 1, "a link must be the last descriptor of a segment");
                            assert_eq!(cur.kind(), kind::SEGMENT, "a last segment holds no links");
                            next = Some(d);
                        }
                    }
                    match next {
                        Some(d) => cur = d,
                        None => return out,
                    }
                }
                other => panic!("unexpected descriptor type {other}"),
            }
        }
    }

    #[test]
    fn one_block_lives_in_the_command() {
        let mut m = mem(4096);
        let d = build_sgl(&[(0x1000, 512)], &mut m, 4096).unwrap();
        assert_eq!(d, SglDescriptor::data_block(0x1000, 512));
        assert_eq!(d.to_dptr(), [0x1000, 512]);
        assert_eq!(SglDescriptor::from_dptr(d.to_dptr()), d);
    }

    #[test]
    fn several_blocks_use_a_last_segment() {
        let mut m = mem(4096);
        let blocks = [(0x1000, 100), (0x3000, 200), (0x5000, 300)];
        let d = build_sgl(&blocks, &mut m, 4096).unwrap();
        assert_eq!(d, SglDescriptor::last_segment(SEG_IOVA, 48));
        assert_eq!(walk(d, &m), [(0x1000, 100), (0x3000, 200), (0x5000, 300)]);
    }

    #[test]
    fn long_lists_chain_segments() {
        // 64-byte segments hold 4 descriptors: 3 data blocks and a link, or 4 blocks last.
        let mut m = mem(4096);
        let blocks: Vec<(u64, usize)> = (0..10).map(|i| (0x10_0000 + i * 0x1000, 512)).collect();
        assert_eq!(segments_for(10, 64), 3);
        let d = build_sgl(&blocks, &mut m, 64).unwrap();
        assert_eq!(d, SglDescriptor::segment(SEG_IOVA, 64));
        assert_eq!(desc(&m, 48), SglDescriptor::segment(SEG_IOVA + 64, 64));
        assert_eq!(desc(&m, 64 + 48), SglDescriptor::last_segment(SEG_IOVA + 128, 64));
        let got = walk(d, &m);
        assert_eq!(got.len(), 10);
        assert!(got.iter().zip(&blocks).all(|(g, b)| g.0 == b.0 && g.1 as usize == b.1));
    }

    #[test]
    fn exactly_full_segment_needs_no_link() {
        let mut m = mem(4096);
        let blocks: Vec<(u64, usize)> = (0..4).map(|i| (i * 0x1000, 8)).collect();
        let d = build_sgl(&blocks, &mut m, 64).unwrap();
        assert_eq!(d, SglDescriptor::last_segment(SEG_IOVA, 64));
        assert_eq!(walk(d, &m).len(), 4);
    }

    #[test]
    fn refuses_bad_input() {
        let mut m = mem(64);
        assert_eq!(build_sgl(&[], &mut m, 64), Err(SglError::Empty));
        assert_eq!(
            build_sgl(&[(0, 0)], &mut m, 64),
            Err(SglError::BadLength { index: 0, len: 0 })
        );
        let many: Vec<(u64, usize)> = (0..5).map(|i| (i, 8)).collect();
        assert_eq!(
            build_sgl(&many, &mut m, 64),
            Err(SglError::SegmentsTooSmall { need: 128, have: 64 })
        );
    }
}
