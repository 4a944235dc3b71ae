//! The VDE's on-disk format: block trailers, the superblock, the region directory, inodes.
//!
//! `docs/vde-format.md` is the prose description of the same layout; this file is the
//! authority. All integers are little-endian. A VDE block is [`BLOCK`] bytes (a whole
//! number of the device's logical blocks); block numbers count VDE blocks from the start
//! of the namespace.

use super::VdeError;
use xxhash_rust::xxh3::xxh3_64;

/// Size of a VDE block in bytes. Devices with 512 B or 4 KiB logical blocks hold whole
/// VDE blocks.
pub const BLOCK: usize = 4096;
/// Size of the trailer that ends every metadata block, in bytes.
pub const TRAILER: usize = 32;
/// Bytes of a metadata block before its trailer.
pub const PAYLOAD: usize = BLOCK - TRAILER;
/// The trailer's magic number ("VDEB").
pub const TRAILER_MAGIC: u32 = 0x4245_4456;
/// The superblock's magic bytes.
pub const SUPER_MAGIC: [u8; 8] = *b"IRONVDE\0";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// The two superblock copies live at these block numbers.
pub const SUPER_BLOCKS: [u64; 2] = [0, 1];
/// The region directory's block number.
pub const REGION_DIR_BLOCK: u64 = 2;
/// Longest key, in bytes.
pub const MAX_KEY: usize = 255;
/// Size of an inode in bytes.
pub const INODE_SIZE: usize = 512;
/// Inodes per inode-table block.
pub const INODES_PER_BLOCK: u64 = (PAYLOAD / INODE_SIZE) as u64;
/// Extents an inode holds.
pub const MAX_EXTENTS: usize = 30;
/// Longest extent, in VDE blocks (1 MiB): an extent is read whole and its checksum
/// checked before any of its bytes are returned.
pub const MAX_EXTENT_BLOCKS: u64 = 256;
/// Largest object, in bytes (30 MiB).
pub const MAX_OBJECT: u64 = MAX_EXTENTS as u64 * MAX_EXTENT_BLOCKS * BLOCK as u64;
/// Bits one allocation-map block holds.
pub const BITS_PER_BITMAP_BLOCK: u64 = (PAYLOAD * 8) as u64;

/// What a metadata block is, as recorded in its trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// One of the two superblock copies.
    Superblock = 1,
    /// The region directory.
    RegionDir = 2,
    /// A journal transaction's descriptor.
    JournalDescriptor = 3,
    /// A journal transaction's commit record.
    JournalCommit = 4,
    /// An allocation-map block.
    Bitmap = 5,
    /// An inode-table block.
    Inodes = 6,
    /// The key index's header (root node, object count).
    IndexHeader = 7,
    /// A key-index leaf.
    IndexLeaf = 8,
    /// A key-index interior node.
    IndexInterior = 9,
}

impl Kind {
    /// The kind with this number.
    pub fn from_u32(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::Superblock,
            2 => Kind::RegionDir,
            3 => Kind::JournalDescriptor,
            4 => Kind::JournalCommit,
            5 => Kind::Bitmap,
            6 => Kind::Inodes,
            7 => Kind::IndexHeader,
            8 => Kind::IndexLeaf,
            9 => Kind::IndexInterior,
            _ => return None,
        })
    }

    /// A name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Superblock => "superblock",
            Kind::RegionDir => "region directory",
            Kind::JournalDescriptor => "journal descriptor",
            Kind::JournalCommit => "journal commit",
            Kind::Bitmap => "allocation map",
            Kind::Inodes => "inode table",
            Kind::IndexHeader => "key index header",
            Kind::IndexLeaf => "key index leaf",
            Kind::IndexInterior => "key index node",
        }
    }
}

/// A metadata block's bytes.
pub type Block = [u8; BLOCK];

/// Reads a little-endian u16 at `at`.
pub fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
/// Reads a little-endian u32 at `at`.
pub fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
/// Reads a little-endian u64 at `at`.
pub fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
/// Writes a little-endian u16 at `at`.
pub fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
/// Writes a little-endian u32 at `at`.
pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
/// Writes a little-endian u64 at `at`.
pub fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Seals `block` as a metadata block of `kind` at block number `blockno`, written by
/// transaction `generation`: fills the trailer (magic, kind, generation, block number,
/// xxh3-64 of everything before the checksum field).
pub fn seal(block: &mut Block, kind: Kind, generation: u64, blockno: u64) {
    put32(block, PAYLOAD, TRAILER_MAGIC);
    put32(block, PAYLOAD + 4, kind as u32);
    put64(block, PAYLOAD + 8, generation);
    put64(block, PAYLOAD + 16, blockno);
    let sum = xxh3_64(&block[..BLOCK - 8]);
    put64(block, BLOCK - 8, sum);
}

/// A verified trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// The block's kind.
    pub kind: Kind,
    /// The transaction that wrote it.
    pub generation: u64,
}

/// Checks `block`'s trailer: magic, checksum, that it claims to be block `blockno` and of
/// kind `want`.
///
/// Errors: [`VdeError::Corrupt`] naming the block, the expected kind and what is wrong.
pub fn verify(block: &Block, want: Kind, blockno: u64) -> Result<Trailer, VdeError> {
    let corrupt = |reason: String| VdeError::Corrupt {
        block: blockno,
        kind: want.name(),
        reason,
    };
    if get32(block, PAYLOAD) != TRAILER_MAGIC {
        if block.iter().all(|&b| b == 0) {
            return Err(corrupt("block is all zeros (never written)".into()));
        }
        return Err(corrupt(format!("bad trailer magic {:#010x}", get32(block, PAYLOAD))));
    }
    let stored = get64(block, BLOCK - 8);
    let actual = xxh3_64(&block[..BLOCK - 8]);
    if stored != actual {
        return Err(corrupt(format!(
            "checksum mismatch: stored {stored:#018x}, computed {actual:#018x}"
        )));
    }
    let kind = get32(block, PAYLOAD + 4);
    if kind != want as u32 {
        let found = Kind::from_u32(kind).map_or_else(|| format!("unknown kind {kind}"), |k| k.name().to_string());
        return Err(corrupt(format!("holds a {found} block")));
    }
    let at = get64(block, PAYLOAD + 16);
    if at != blockno {
        return Err(corrupt(format!("block claims to be block {at} (misdirected write)")));
    }
    Ok(Trailer {
        kind: want,
        generation: get64(block, PAYLOAD + 8),
    })
}

/// A region of the device: `blocks` VDE blocks from block `start`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Extent {
    /// First block.
    pub start: u64,
    /// Length in blocks.
    pub blocks: u64,
}

impl Extent {
    /// One past the last block.
    pub fn end(&self) -> u64 {
        self.start + self.blocks
    }
}

/// Where each region lives (the region directory, block 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Layout {
    /// VDE blocks on the device.
    pub total_blocks: u64,
    /// The write-ahead journal.
    pub journal: Extent,
    /// Allocation map of key-index nodes (1 bit per node).
    pub index_map: Extent,
    /// Allocation map of inodes (1 bit per inode).
    pub inode_map: Extent,
    /// Allocation map of data blocks (1 bit per data block).
    pub data_map: Extent,
    /// The inode table.
    pub inodes: Extent,
    /// The key index: block 0 of it is the header, the rest are B+tree nodes.
    pub index: Extent,
    /// Object data.
    pub data: Extent,
}

/// Region names in directory order, with their numbers in the directory.
pub const REGIONS: [&str; 7] = [
    "journal",
    "allocation map (index nodes)",
    "allocation map (inodes)",
    "allocation map (data)",
    "inode table",
    "key index",
    "data",
];

impl Layout {
    /// Plans the regions of a device of `total_blocks` VDE blocks with `inodes` inodes
    /// (0: one per 8 data blocks, at least 64).
    ///
    /// Errors: [`VdeError::TooSmall`] if the regions do not fit.
    pub fn plan(total_blocks: u64, inodes: u64) -> Result<Layout, VdeError> {
        let too_small = || VdeError::TooSmall {
            blocks: total_blocks,
            min: 256,
        };
        if total_blocks < 256 {
            return Err(too_small());
        }
        let journal = (total_blocks / 64).clamp(64, 2048);
        let inodes = if inodes == 0 {
            (total_blocks / 8).clamp(64, 1 << 24)
        } else {
            inodes
        };
        let inode_blocks = inodes.div_ceil(INODES_PER_BLOCK);
        let inodes = inode_blocks * INODES_PER_BLOCK;
        // Every key needs at most ~270 bytes of a leaf; nodes are at least a third full
        // after splits. One header block plus the nodes.
        let index_nodes = inodes / 4 + 16;
        let index_blocks = index_nodes + 1;
        // The index map has one bit per index block, the header's included
        // ([`Layout::index_nodes`]).
        let index_map = index_blocks.div_ceil(BITS_PER_BITMAP_BLOCK);
        let inode_map = inodes.div_ceil(BITS_PER_BITMAP_BLOCK);
        let fixed = 3 + journal + index_map + inode_map + inode_blocks + index_blocks;
        let rest = total_blocks.checked_sub(fixed).ok_or_else(too_small)?;
        let data_map = rest.div_ceil(BITS_PER_BITMAP_BLOCK + 1);
        let data = rest - data_map;
        if data < 16 {
            return Err(too_small());
        }
        let mut at = 3;
        let mut next = |blocks: u64| {
            let e = Extent { start: at, blocks };
            at += blocks;
            e
        };
        Ok(Layout {
            total_blocks,
            journal: next(journal),
            index_map: next(index_map),
            inode_map: next(inode_map),
            data_map: next(data_map),
            inodes: next(inode_blocks),
            index: next(index_blocks),
            data: next(data),
        })
    }

    /// The regions in directory order.
    pub fn regions(&self) -> [Extent; 7] {
        [
            self.journal,
            self.index_map,
            self.inode_map,
            self.data_map,
            self.inodes,
            self.index,
            self.data,
        ]
    }

    /// Inodes in the table.
    pub fn inode_count(&self) -> u64 {
        self.inodes.blocks * INODES_PER_BLOCK
    }

    /// Key-index nodes (node 0 is the header and is never allocated).
    pub fn index_nodes(&self) -> u64 {
        self.index.blocks
    }

    /// Encodes the region directory block.
    pub fn encode(&self, generation: u64) -> Box<Block> {
        let mut b = Box::new([0u8; BLOCK]);
        put64(&mut b[..], 0, self.total_blocks);
        put32(&mut b[..], 8, REGIONS.len() as u32);
        for (i, r) in self.regions().iter().enumerate() {
            let at = 16 + i * 24;
            put32(&mut b[..], at, i as u32);
            put64(&mut b[..], at + 8, r.start);
            put64(&mut b[..], at + 16, r.blocks);
        }
        seal(&mut b, Kind::RegionDir, generation, REGION_DIR_BLOCK);
        b
    }

    /// Decodes and checks the region directory: every region inside the device, in order,
    /// not overlapping, with the sizes the allocation maps need.
    ///
    /// Errors: [`VdeError::Corrupt`].
    pub fn decode(b: &Block, device_blocks: u64) -> Result<Layout, VdeError> {
        verify(b, Kind::RegionDir, REGION_DIR_BLOCK)?;
        let corrupt = |reason: String| VdeError::Corrupt {
            block: REGION_DIR_BLOCK,
            kind: Kind::RegionDir.name(),
            reason,
        };
        let total_blocks = get64(b, 0);
        if total_blocks > device_blocks {
            return Err(corrupt(format!(
                "formatted for {total_blocks} blocks but the device has {device_blocks}"
            )));
        }
        if get32(b, 8) as usize != REGIONS.len() {
            return Err(corrupt(format!("{} regions, expected {}", get32(b, 8), REGIONS.len())));
        }
        let mut r = [Extent::default(); 7];
        let mut at = 3;
        for (i, e) in r.iter_mut().enumerate() {
            let o = 16 + i * 24;
            *e = Extent {
                start: get64(b, o + 8),
                blocks: get64(b, o + 16),
            };
            if get32(b, o) as usize != i || e.start != at || e.blocks == 0 || e.end() > total_blocks {
                return Err(corrupt(format!("region {} ({}) is {:?}", i, REGIONS[i], e)));
            }
            at = e.end();
        }
        let l = Layout {
            total_blocks,
            journal: r[0],
            index_map: r[1],
            inode_map: r[2],
            data_map: r[3],
            inodes: r[4],
            index: r[5],
            data: r[6],
        };
        let fits = |map: Extent, bits: u64| map.blocks * BITS_PER_BITMAP_BLOCK >= bits;
        if !fits(l.index_map, l.index_nodes())
            || !fits(l.inode_map, l.inode_count())
            || !fits(l.data_map, l.data.blocks)
        {
            return Err(corrupt("an allocation map is too small for its region".into()));
        }
        Ok(l)
    }
}

/// One of the two superblock copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Incremented on every superblock write; the valid copy with the highest wins.
    pub generation: u64,
    /// The device's logical block size in bytes when formatted.
    pub lba_size: u32,
    /// VDE blocks in the store.
    pub total_blocks: u64,
    /// The first journal transaction to replay (all earlier ones are checkpointed).
    pub journal_seq: u64,
    /// Random identity chosen at format time.
    pub uuid: [u8; 16],
}

impl Superblock {
    /// Encodes the copy for block `blockno`.
    pub fn encode(&self, blockno: u64) -> Box<Block> {
        let mut b = Box::new([0u8; BLOCK]);
        b[..8].copy_from_slice(&SUPER_MAGIC);
        put32(&mut b[..], 8, VERSION);
        put32(&mut b[..], 12, BLOCK as u32);
        put32(&mut b[..], 16, self.lba_size);
        put64(&mut b[..], 24, self.total_blocks);
        put64(&mut b[..], 32, self.generation);
        put64(&mut b[..], 40, REGION_DIR_BLOCK);
        put64(&mut b[..], 48, self.journal_seq);
        b[56..72].copy_from_slice(&self.uuid);
        seal(&mut b, Kind::Superblock, self.generation, blockno);
        b
    }

    /// Decodes the copy at `blockno`.
    ///
    /// Errors: [`VdeError::Corrupt`] (bad trailer or magic), [`VdeError::Unsupported`]
    /// (another format version or block size).
    pub fn decode(b: &Block, blockno: u64) -> Result<Superblock, VdeError> {
        if b[..8] != SUPER_MAGIC {
            return Err(VdeError::Corrupt {
                block: blockno,
                kind: Kind::Superblock.name(),
                reason: "no VDE magic".into(),
            });
        }
        verify(b, Kind::Superblock, blockno)?;
        let version = get32(b, 8);
        if version != VERSION || get32(b, 12) as usize != BLOCK {
            return Err(VdeError::Unsupported(format!(
                "VDE format version {version} with {}-byte blocks (this build reads version {VERSION}, {BLOCK}-byte blocks)",
                get32(b, 12)
            )));
        }
        let mut uuid = [0; 16];
        uuid.copy_from_slice(&b[56..72]);
        Ok(Superblock {
            generation: get64(b, 32),
            lba_size: get32(b, 16),
            total_blocks: get64(b, 24),
            journal_seq: get64(b, 48),
            uuid,
        })
    }
}

/// An object's data extent: `blocks` data blocks from `start` (a block number on the
/// device) and the xxh3-64 of their bytes (the object's bytes, zero-padded to the block).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataExtent {
    /// First block.
    pub start: u64,
    /// Length in blocks (1..=[`MAX_EXTENT_BLOCKS`]).
    pub blocks: u64,
    /// xxh3-64 of the extent's `blocks * BLOCK` bytes.
    pub checksum: u64,
}

/// An inode: one object's size and extents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inode {
    /// Object size in bytes.
    pub size: u64,
    /// The transaction that created the object.
    pub version: u64,
    /// xxh3-64 of the key (cross-checked against the index by fsck).
    pub key_hash: u64,
    /// Key length in bytes.
    pub key_len: u16,
    /// Data extents in object order.
    pub extents: Vec<DataExtent>,
}

const INODE_IN_USE: u32 = 1;

impl Inode {
    /// Writes the inode into its 512-byte slot.
    pub fn encode(&self, slot: &mut [u8]) {
        slot.fill(0);
        put32(slot, 0, INODE_IN_USE);
        put16(slot, 4, self.extents.len() as u16);
        put16(slot, 6, self.key_len);
        put64(slot, 8, self.size);
        put64(slot, 16, self.version);
        put64(slot, 24, self.key_hash);
        for (i, e) in self.extents.iter().enumerate() {
            let at = 32 + i * 16;
            // start: 48 bits; blocks - 1: 16 bits.
            put64(slot, at, e.start | ((e.blocks - 1) << 48));
            put64(slot, at + 8, e.checksum);
        }
    }

    /// Reads the inode in `slot`: `None` if the slot is free.
    ///
    /// Errors: a description of what is inconsistent (for [`VdeError::Corrupt`]).
    pub fn decode(slot: &[u8]) -> Result<Option<Inode>, String> {
        match get32(slot, 0) {
            0 => return Ok(None),
            INODE_IN_USE => {}
            f => return Err(format!("bad inode flags {f:#x}")),
        }
        let n = get16(slot, 4) as usize;
        if n > MAX_EXTENTS {
            return Err(format!("{n} extents (at most {MAX_EXTENTS})"));
        }
        let mut inode = Inode {
            key_len: get16(slot, 6),
            size: get64(slot, 8),
            version: get64(slot, 16),
            key_hash: get64(slot, 24),
            extents: Vec::with_capacity(n),
        };
        for i in 0..n {
            let w = get64(slot, 32 + i * 16);
            inode.extents.push(DataExtent {
                start: w & ((1 << 48) - 1),
                blocks: (w >> 48) + 1,
                checksum: get64(slot, 40 + i * 16),
            });
        }
        if let Some(e) = inode.extents.iter().find(|e| e.blocks > MAX_EXTENT_BLOCKS) {
            return Err(format!(
                "an extent of {} blocks (at most {MAX_EXTENT_BLOCKS})",
                e.blocks
            ));
        }
        let blocks: u64 = inode.extents.iter().map(|e| e.blocks).sum();
        if inode.size.div_ceil(BLOCK as u64) != blocks || inode.key_len as usize > MAX_KEY || inode.key_len == 0 {
            return Err(format!(
                "size {} B does not match {} extent blocks, or key length {} is invalid",
                inode.size, blocks, inode.key_len
            ));
        }
        Ok(Some(inode))
    }
}

/// A random 128-bit identity from the OS.
pub fn random_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut u);
    }
    if u == [0; 16] {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        u = (t ^ (std::process::id() as u128) << 64).to_le_bytes();
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_blocks_verify_and_any_flipped_byte_is_caught() {
        let mut b = Box::new([7u8; BLOCK]);
        seal(&mut b, Kind::Inodes, 9, 42);
        assert_eq!(verify(&b, Kind::Inodes, 42).unwrap().generation, 9);
        assert!(verify(&b, Kind::Bitmap, 42).is_err(), "wrong kind");
        assert!(verify(&b, Kind::Inodes, 43).is_err(), "misdirected");
        for at in [0, 100, PAYLOAD, PAYLOAD + 8, BLOCK - 1] {
            let mut c = b.clone();
            c[at] ^= 0x10;
            assert!(verify(&c, Kind::Inodes, 42).is_err(), "flip at {at}");
        }
    }

    #[test]
    fn layouts_round_trip_through_the_directory() {
        for total in [256u64, 1000, 65536, 1 << 20, 1 << 28] {
            let l = Layout::plan(total, 0).unwrap();
            assert_eq!(l.data.end(), total);
            let b = l.encode(1);
            assert_eq!(Layout::decode(&b, total).unwrap(), l);
        }
        assert!(Layout::plan(255, 0).is_err());
    }

    /// Every plan decodes: each allocation map holds a bit for every item of its region.
    /// The index map once had room for `index_nodes` bits while the index has one block
    /// more (its header), so `--inodes 390076..=390082` (and the default inodes of devices
    /// of 3,120,608..3,120,663 blocks) gave stores that never opened again.
    #[test]
    fn every_plan_decodes() {
        let check = |total: u64, inodes: u64| {
            let Ok(l) = Layout::plan(total, inodes) else {
                return;
            };
            assert_eq!(l.data.end(), total, "{total} blocks, {inodes} inodes");
            if let Err(e) = Layout::decode(&l.encode(1), total) {
                panic!("{total} blocks, {inodes} inodes: {e}");
            }
        };
        for inodes in 390_060..390_100 {
            check(1 << 20, inodes);
        }
        for total in 3_120_560..3_120_700 {
            check(total, 0);
        }
        // Every inode count whose index needs one map block more than its node count, up
        // to 2^24 inodes, and the sizes around them.
        let mut nodes = BITS_PER_BITMAP_BLOCK;
        while nodes < (1 << 22) {
            let inodes = (nodes - 16) * 4;
            for i in inodes.saturating_sub(8)..inodes + 8 {
                check(i * 2, i);
                check(i * 8, 0);
                check(i * 8 + 7, 0);
            }
            nodes += BITS_PER_BITMAP_BLOCK;
        }
        // Device sizes around data-map block boundaries.
        for k in 1..8u64 {
            let edge = k * (BITS_PER_BITMAP_BLOCK + 1);
            for total in edge..edge + 3000 {
                check(total, 64);
            }
        }
    }

    #[test]
    fn inodes_round_trip() {
        let i = Inode {
            size: 5000,
            version: 3,
            key_hash: 77,
            key_len: 5,
            extents: vec![
                DataExtent {
                    start: 1 << 40,
                    blocks: 1,
                    checksum: 1,
                },
                DataExtent {
                    start: 9,
                    blocks: 1,
                    checksum: 2,
                },
            ],
        };
        let mut slot = [0u8; INODE_SIZE];
        i.encode(&mut slot);
        assert_eq!(Inode::decode(&slot).unwrap(), Some(i));
        assert_eq!(Inode::decode(&[0u8; INODE_SIZE]).unwrap(), None);
    }

    /// Caught by the allocation bound of fuzz/fuzz_targets/vde_open.rs (input
    /// fuzz/corpus/vde_open/inode-extent-of-65536-blocks): an inode (with a valid block
    /// checksum) claiming an extent of 65536 blocks made `get` allocate 256 MiB before
    /// reading anything; 30 such extents would be 8 GiB. No put writes an extent longer
    /// than MAX_EXTENT_BLOCKS, so a longer one is corruption.
    #[test]
    fn inodes_with_extents_longer_than_the_format_allows_are_corrupt() {
        let inode = |blocks: u64| Inode {
            size: blocks * BLOCK as u64,
            version: 1,
            key_hash: 5,
            key_len: 1,
            extents: vec![DataExtent {
                start: 300,
                blocks,
                checksum: 9,
            }],
        };
        let mut slot = [0u8; INODE_SIZE];
        inode(MAX_EXTENT_BLOCKS).encode(&mut slot);
        assert_eq!(Inode::decode(&slot).unwrap(), Some(inode(MAX_EXTENT_BLOCKS)));
        for blocks in [MAX_EXTENT_BLOCKS + 1, 1 << 16] {
            inode(blocks).encode(&mut slot);
            let e = Inode::decode(&slot).unwrap_err();
            assert!(e.contains("at most 256"), "{blocks} blocks: {e}");
        }
    }
}
