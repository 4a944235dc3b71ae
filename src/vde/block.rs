//! Format 2's metadata block and its self-validating block pointer.
//!
//! Every format-2 metadata block is [`BLOCK`] bytes: a 32-byte header, a payload of
//! [`PAYLOAD2`] bytes, and an xxh3-64 of everything before it, seeded with the store's
//! tag (the xxh3-64 of its UUID), so a block of another store never verifies here.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `0x32454456` ("VDE2") |
//! | 4 | 2 | [`NodeKind`] |
//! | 6 | 2 | level (0: a leaf; trees only) |
//! | 8 | 8 | birth: the transaction group (txg) that wrote the block |
//! | 16 | 8 | the block's own number (a misdirected write is caught) |
//! | 24 | 8 | the store tag (xxh3-64 of the UUID) |
//! | 32 | 4056 | payload |
//! | 4088 | 8 | xxh3-64 (seed: store tag) of bytes 0..4088 |
//!
//! A parent names a child with a [`BlockPtr`]: the child's block number, its birth txg
//! and its checksum, as ZFS block pointers and btrfs node pointers do. [`check`] reads a
//! child against its pointer, so a lost write (an older, self-consistent block left in
//! place), a torn write, a misdirected write and a block left over from an earlier store
//! are all caught, and named: block, kind, expected and found.
//!
//! `docs/vde-format.md` describes the same bytes in prose.

use super::VdeError;
use super::format::{get16, get64, put16, put32, put64};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

pub use super::format::BLOCK;

/// The header's magic number ("VDE2", little-endian).
pub const MAGIC2: u32 = 0x3245_4456;
/// Bytes of header before the payload.
pub const HEADER: usize = 32;
/// Where the checksum sits.
pub const CHECKSUM_AT: usize = BLOCK - 8;
/// Payload bytes of a metadata block.
pub const PAYLOAD2: usize = CHECKSUM_AT - HEADER;

/// What a format-2 metadata block holds (header offset 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum NodeKind {
    /// One of the two superblock copies (blocks 0 and 1).
    Superblock = 1,
    /// A node of the object index (key → object record).
    Objects = 2,
    /// A node of the dataset directory (volume or snapshot name → dataset record).
    Datasets = 3,
    /// A node of one dataset's extent map (volume block → data extent).
    Extents = 4,
    /// A node of one dataset's dead list ((birth, block) → length).
    Deadlist = 5,
    /// A block of the space map's allocation bitmap.
    SpaceBitmap = 6,
    /// An indirect block of the space map (pointers to bitmap blocks or to indirects).
    SpaceIndirect = 7,
    /// A block of the intent log.
    Log = 8,
}

impl NodeKind {
    /// The kind with this number.
    pub fn from_u16(v: u16) -> Option<NodeKind> {
        Some(match v {
            1 => NodeKind::Superblock,
            2 => NodeKind::Objects,
            3 => NodeKind::Datasets,
            4 => NodeKind::Extents,
            5 => NodeKind::Deadlist,
            6 => NodeKind::SpaceBitmap,
            7 => NodeKind::SpaceIndirect,
            8 => NodeKind::Log,
            _ => return None,
        })
    }

    /// A name for reports.
    pub fn name(self) -> &'static str {
        match self {
            NodeKind::Superblock => "superblock",
            NodeKind::Objects => "object index node",
            NodeKind::Datasets => "dataset directory node",
            NodeKind::Extents => "extent map node",
            NodeKind::Deadlist => "dead list node",
            NodeKind::SpaceBitmap => "space map bitmap",
            NodeKind::SpaceIndirect => "space map indirect block",
            NodeKind::Log => "intent log block",
        }
    }
}

/// A pointer to a metadata block: where it is, the txg that wrote it, and its checksum.
/// Encoded in [`BlockPtr::SIZE`] bytes: block number, birth, checksum (u64 each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockPtr {
    /// Block number (4 KiB blocks from the start of the namespace).
    pub addr: u64,
    /// The txg that wrote the block.
    pub birth: u64,
    /// The block's xxh3-64 (bytes 0..4088, seeded with the store tag).
    pub checksum: u64,
}

impl BlockPtr {
    /// Encoded size in bytes.
    pub const SIZE: usize = 24;

    /// Encodes at `b[at..at + 24]`; `None` (an empty tree) is all zeros.
    pub fn put(ptr: Option<BlockPtr>, b: &mut [u8], at: usize) {
        let p = ptr.unwrap_or_default();
        put64(b, at, p.addr);
        put64(b, at + 8, p.birth);
        put64(b, at + 16, p.checksum);
    }

    /// Decodes from `b[at..at + 24]`; block number 0 (a superblock, never a child) is
    /// `None`.
    pub fn get(b: &[u8], at: usize) -> Option<BlockPtr> {
        let addr = get64(b, at);
        (addr != 0).then(|| BlockPtr {
            addr,
            birth: get64(b, at + 8),
            checksum: get64(b, at + 16),
        })
    }
}

/// The tag of the store with `uuid`: seeds every checksum and sits in every header.
pub fn store_tag(uuid: &[u8; 16]) -> u64 {
    xxh3_64(uuid)
}

/// A metadata block's bytes.
pub type Block = [u8; BLOCK];

/// Fills the header of `block` (kind, level, birth, block number `addr`, store `tag`) and
/// its checksum; returns the pointer a parent keeps for it.
pub fn seal(block: &mut Block, kind: NodeKind, level: u16, birth: u64, addr: u64, tag: u64) -> BlockPtr {
    put32(block, 0, MAGIC2);
    put16(block, 4, kind as u16);
    put16(block, 6, level);
    put64(block, 8, birth);
    put64(block, 16, addr);
    put64(block, 24, tag);
    let checksum = xxh3_64_with_seed(&block[..CHECKSUM_AT], tag);
    put64(block, CHECKSUM_AT, checksum);
    BlockPtr { addr, birth, checksum }
}

/// The header of a block whose checksum verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// What the block holds.
    pub kind: NodeKind,
    /// Tree level (0: leaf).
    pub level: u16,
    /// The txg that wrote it.
    pub birth: u64,
}

/// Checks `block`, read from block number `addr`, against what its reader expects: the
/// kind `want`, and either the parent's pointer `ptr` (address, birth and checksum must
/// all match) or, for blocks without a parent (superblocks, intent log blocks), its own
/// stored checksum.
///
/// Errors: [`VdeError::Mismatch`] naming the block, the kind expected, what was expected
/// and what was found: a stale block (lost write: older birth, right address), a
/// misdirected one (another block's number), a torn or damaged one (its own checksum
/// fails), one from another store (another tag), or one that was never written.
pub fn check(block: &Block, addr: u64, want: NodeKind, ptr: Option<&BlockPtr>, tag: u64) -> Result<Header, VdeError> {
    let mismatch = |expected: String, found: String| VdeError::Mismatch {
        block: addr,
        kind: want.name(),
        expected,
        found,
    };
    let stored = get64(block, CHECKSUM_AT);
    let computed = xxh3_64_with_seed(&block[..CHECKSUM_AT], tag);
    let magic = u32::from_le_bytes(block[..4].try_into().expect("4 bytes"));
    let birth = get64(block, 8);
    let expected_ptr = |p: &BlockPtr| format!("generation {} with checksum {:#018x}", p.birth, p.checksum);
    if stored == computed && ptr.is_none_or(|p| p.checksum == computed && p.addr == addr) {
        // The checksum vouches for every byte; the header must still say what we expect
        // (a checksum collision aside, a parent pointing at the wrong kind is a bug or
        // a forgery).
        let kind = get16(block, 4);
        if magic != MAGIC2 || kind != want as u16 {
            return Err(mismatch(
                format!("a {}", want.name()),
                NodeKind::from_u16(kind).map_or_else(|| format!("kind {kind}"), |k| format!("a {}", k.name())),
            ));
        }
        if get64(block, 16) != addr {
            return Err(mismatch(
                format!("block number {addr}"),
                format!("block number {} (misdirected write)", get64(block, 16)),
            ));
        }
        if let Some(p) = ptr
            && p.birth != birth
        {
            return Err(mismatch(expected_ptr(p), format!("generation {birth}")));
        }
        return Ok(Header {
            kind: want,
            level: get16(block, 6),
            birth,
        });
    }
    let expected = ptr.map_or_else(|| "a valid checksum".to_string(), expected_ptr);
    let found = if block.iter().all(|&b| b == 0) {
        "zeros (never written, or a lost write)".to_string()
    } else if magic != MAGIC2 {
        format!("no format-2 block (magic {magic:#010x})")
    } else if get64(block, 24) != tag {
        format!("a block of another store (tag {:#018x})", get64(block, 24))
    } else if stored != computed {
        format!("a torn or damaged block (its checksum {stored:#018x}, computed {computed:#018x})")
    } else if get64(block, 16) != addr {
        format!("block number {} (misdirected write)", get64(block, 16))
    } else if ptr.is_some_and(|p| p.birth != birth) {
        format!("generation {birth} with checksum {computed:#018x} (a stale block: the newer write was lost)")
    } else {
        format!("generation {birth} with checksum {computed:#018x}")
    };
    Err(mismatch(expected, found))
}

/// The payload of a block: bytes [`HEADER`]..[`CHECKSUM_AT`].
pub fn payload(block: &Block) -> &[u8] {
    &block[HEADER..CHECKSUM_AT]
}

/// The payload of a block, writable.
pub fn payload_mut(block: &mut Block) -> &mut [u8] {
    &mut block[HEADER..CHECKSUM_AT]
}

#[cfg(test)]
mod tests {
    use super::*;

    const TAG: u64 = 0x1234_5678_9abc_def0;

    fn sealed(addr: u64, birth: u64, fill: u8) -> (Box<Block>, BlockPtr) {
        let mut b = Box::new([fill; BLOCK]);
        let p = seal(&mut b, NodeKind::Extents, 0, birth, addr, TAG);
        (b, p)
    }

    fn found(e: VdeError) -> String {
        match e {
            VdeError::Mismatch { found, .. } => found,
            other => panic!("not a mismatch: {other}"),
        }
    }

    #[test]
    fn a_block_verifies_against_its_pointer_and_any_flipped_byte_is_caught() {
        let (b, p) = sealed(77, 5, 9);
        assert_eq!(check(&b, 77, NodeKind::Extents, Some(&p), TAG).unwrap().birth, 5);
        assert!(check(&b, 77, NodeKind::Extents, None, TAG).is_ok());
        for at in [0, 5, 8, 20, 31, 32, 2000, 4087, 4088, 4095] {
            let mut bad = b.clone();
            bad[at] ^= 0x40;
            assert!(
                check(&bad, 77, NodeKind::Extents, Some(&p), TAG).is_err(),
                "flip at {at}"
            );
        }
    }

    #[test]
    fn a_stale_block_is_named_as_a_lost_write() {
        let (old, _) = sealed(77, 5, 1);
        let (_, new) = sealed(77, 6, 2);
        let e = check(&old, 77, NodeKind::Extents, Some(&new), TAG).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("block 77") && msg.contains("generation 6") && msg.contains("stale"),
            "{msg}"
        );
    }

    #[test]
    fn misdirected_foreign_torn_and_blank_blocks_are_named() {
        let (b, p) = sealed(77, 5, 1);
        // The right bytes at another address: the pointer's address does not match.
        assert!(
            found(check(&b, 78, NodeKind::Extents, Some(&BlockPtr { addr: 78, ..p }), TAG).unwrap_err())
                .contains("misdirected")
        );
        assert!(found(check(&b, 77, NodeKind::Extents, Some(&p), TAG ^ 1).unwrap_err()).contains("another store"));
        let mut torn = b.clone();
        torn[1000..1512].fill(0xee);
        assert!(found(check(&torn, 77, NodeKind::Extents, Some(&p), TAG).unwrap_err()).contains("torn"));
        assert!(found(check(&[0; BLOCK], 77, NodeKind::Extents, Some(&p), TAG).unwrap_err()).contains("zeros"));
        let e = check(&b, 77, NodeKind::Deadlist, Some(&p), TAG)
            .unwrap_err()
            .to_string();
        assert!(e.contains("dead list") && e.contains("extent map"), "{e}");
    }

    #[test]
    fn pointers_round_trip_and_zero_is_empty() {
        let mut b = [0u8; 64];
        let p = BlockPtr {
            addr: 9,
            birth: 3,
            checksum: u64::MAX,
        };
        BlockPtr::put(Some(p), &mut b, 8);
        assert_eq!(BlockPtr::get(&b, 8), Some(p));
        BlockPtr::put(None, &mut b, 8);
        assert_eq!(BlockPtr::get(&b, 8), None);
    }
}
