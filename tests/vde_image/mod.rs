//! Reading a format-2 image file behind the store's back: the superblocks, every tree
//! node, space map block and data block the committed state reaches, found from the
//! superblock's pointers (never guessed), for the corruption and lost-write tests.
#![allow(dead_code)]

use ironvme::vde::VdeError;
use ironvme::vde::block::{self, BLOCK, Block, BlockPtr, NodeKind};
use ironvme::vde::dataset::{DatasetRec, VolExtent};
use ironvme::vde::pool::Superblock2;
use ironvme::vde::store::ObjectValue;
use ironvme::vde::tree::{NodeBlock, NodeIo, Tree, Visit};
use std::sync::Arc;

/// Reads tree nodes out of an image held in memory, checked against their pointers.
pub struct ImageIo<'a> {
    /// The image's bytes.
    pub img: &'a [u8],
    /// The store tag.
    pub tag: u64,
}

impl ImageIo<'_> {
    /// The 4 KiB block `addr`.
    pub fn block(&self, addr: u64) -> Result<Box<Block>, VdeError> {
        let at = addr as usize * BLOCK;
        let bytes = self.img.get(at..at + BLOCK).ok_or_else(|| VdeError::Mismatch {
            block: addr,
            kind: "block",
            expected: "a block inside the image".into(),
            found: "a pointer past its end".into(),
        })?;
        let mut b = Box::new([0u8; BLOCK]);
        b.copy_from_slice(bytes);
        Ok(b)
    }
}

impl NodeIo for ImageIo<'_> {
    fn tag(&self) -> u64 {
        self.tag
    }
    fn txg(&self) -> u64 {
        0
    }
    fn read(&mut self, ptr: &BlockPtr, kind: NodeKind) -> Result<Arc<NodeBlock>, VdeError> {
        let b = self.block(ptr.addr)?;
        block::check(&b, ptr.addr, kind, Some(ptr), self.tag)?;
        Ok(Arc::new(NodeBlock::new(&b)))
    }
    fn alloc(&mut self) -> Result<u64, VdeError> {
        Err(VdeError::ReadOnly)
    }
    fn write(&mut self, _: u64, _: Box<Block>) -> Result<(), VdeError> {
        Err(VdeError::ReadOnly)
    }
    fn release(&mut self, _: u64, _: u64) {}
}

/// What the committed state of an image reaches.
#[derive(Debug, Default)]
pub struct ImageMap {
    /// The newest valid superblock copy, and its block (0 or 1).
    pub sb: Option<(u64, Superblock2)>,
    /// Object index nodes: (pointer, level).
    pub objects: Vec<(BlockPtr, u16)>,
    /// Dataset directory nodes: (pointer, level).
    pub datasets: Vec<(BlockPtr, u16)>,
    /// Extent map nodes: (dataset name, pointer, level).
    pub extents: Vec<(String, BlockPtr, u16)>,
    /// Dead list nodes: (dataset name, pointer).
    pub deadlists: Vec<(String, BlockPtr)>,
    /// Space map blocks: pointer and kind (bitmap or indirect).
    pub space: Vec<(BlockPtr, NodeKind)>,
    /// Object data extents: (key, first block, blocks).
    pub object_data: Vec<(Vec<u8>, u64, u64)>,
    /// Volume data: (dataset name, volume block, device block).
    pub volume_data: Vec<(String, u64, u64)>,
}

impl ImageMap {
    /// Maps `img` (the whole image file). Panics if the image does not read cleanly:
    /// call it on an undamaged image.
    pub fn read(img: &[u8]) -> ImageMap {
        let device_blocks = (img.len() / BLOCK) as u64;
        let mut best: Option<(u64, Superblock2)> = None;
        for at in [0u64, 1] {
            let mut b = Box::new([0u8; BLOCK]);
            b.copy_from_slice(&img[at as usize * BLOCK..(at as usize + 1) * BLOCK]);
            if let Ok(sb) = Superblock2::decode(&b, at, device_blocks)
                && best.is_none_or(|(_, s)| sb.txg > s.txg)
            {
                best = Some((at, sb));
            }
        }
        let (_, sb) = best.expect("a valid superblock");
        let first = sb.pool_start();
        let total = sb.total_blocks;
        let mut io = ImageIo { img, tag: sb.tag() };
        let mut m = ImageMap {
            sb: best,
            ..ImageMap::default()
        };
        Tree::walk(&mut io, NodeKind::Objects, sb.objects, 0, &mut |v| {
            match v {
                Visit::Node { ptr, level } => m.objects.push((ptr, level)),
                Visit::Entry { key, value } => {
                    let ov = ObjectValue::decode(value, first, total).expect("object value");
                    for (start, blocks, _) in ov.extents {
                        m.object_data.push((key.to_vec(), start, blocks));
                    }
                }
            }
            Ok(())
        })
        .expect("walk the object index");
        let mut recs = Vec::new();
        Tree::walk(&mut io, NodeKind::Datasets, sb.datasets, 0, &mut |v| {
            match v {
                Visit::Node { ptr, level } => m.datasets.push((ptr, level)),
                Visit::Entry { key, value } => recs.push((
                    String::from_utf8_lossy(key).into_owned(),
                    DatasetRec::decode(value).expect("dataset record"),
                )),
            }
            Ok(())
        })
        .expect("walk the dataset directory");
        for (name, rec) in recs {
            Tree::walk(&mut io, NodeKind::Extents, rec.extents, 0, &mut |v| {
                match v {
                    Visit::Node { ptr, level } => m.extents.push((name.clone(), ptr, level)),
                    Visit::Entry { key, value } => {
                        let vblock = u64::from_be_bytes(key.try_into().expect("8-byte extent key"));
                        let e = VolExtent::decode(value, first, total).expect("extent");
                        for i in 0..e.len {
                            m.volume_data.push((name.clone(), vblock + i, e.pba + i));
                        }
                    }
                }
                Ok(())
            })
            .expect("walk an extent map");
            Tree::walk(&mut io, NodeKind::Deadlist, rec.deadlist, 0, &mut |v| {
                if let Visit::Node { ptr, .. } = v {
                    m.deadlists.push((name.clone(), ptr));
                }
                Ok(())
            })
            .expect("walk a dead list");
        }
        if let Some(root) = sb.space {
            space_walk(&io, root, &mut m.space);
        }
        m
    }
}

/// The space map blocks under `ptr`: an indirect block (level >= 1) or a bitmap block.
fn space_walk(io: &ImageIo<'_>, ptr: BlockPtr, out: &mut Vec<(BlockPtr, NodeKind)>) {
    let b = io.block(ptr.addr).unwrap();
    let kind = NodeKind::from_u16(u16::from_le_bytes([b[4], b[5]])).expect("a node kind");
    block::check(&b, ptr.addr, kind, Some(&ptr), io.tag).expect("a space map block");
    out.push((ptr, kind));
    if kind == NodeKind::SpaceIndirect {
        let p = block::payload(&b);
        let count = u16::from_le_bytes([p[0], p[1]]) as usize;
        for i in 0..count {
            if let Some(child) = BlockPtr::get(p, 2 + i * BlockPtr::SIZE) {
                space_walk(io, child, out);
            }
        }
    }
}

/// Whether `e` names block `block`: a pointer mismatch of that block, or a data
/// checksum failure of a range holding it, or a corruption report of it.
pub fn names_block(e: &VdeError, block: u64) -> bool {
    match e {
        VdeError::Mismatch { block: b, .. } | VdeError::Corrupt { block: b, .. } => *b == block,
        VdeError::DataCorrupt { start, end, .. } => (*start..*end).contains(&block),
        _ => false,
    }
}

/// An image edited behind the store's back so that it still verifies: an edited
/// metadata block is resealed, and every pointer to it (in the tree nodes and dataset
/// records the committed state reaches, and in the newest superblock) is fixed, up to
/// the superblock. The store then opens, and only the invariant the edit breaks is
/// broken: for the fsck tests.
pub struct Forge {
    /// The image's bytes.
    pub img: Vec<u8>,
    /// What the unedited image reached.
    pub map: ImageMap,
    /// The store tag.
    pub tag: u64,
}

impl Forge {
    /// Maps `img` (an undamaged image).
    pub fn new(img: Vec<u8>) -> Forge {
        let map = ImageMap::read(&img);
        let tag = map.sb.expect("a superblock").1.tag();
        Forge { img, map, tag }
    }

    /// Every entry of the tree of `kind` at `root`: (leaf block, key, value).
    pub fn entries(&self, kind: NodeKind, root: Option<BlockPtr>) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
        let mut io = ImageIo {
            img: &self.img,
            tag: self.tag,
        };
        let (mut out, mut leaf) = (Vec::new(), 0);
        Tree::walk(&mut io, kind, root, 0, &mut |v| {
            match v {
                Visit::Node { ptr, .. } => leaf = ptr.addr,
                Visit::Entry { key, value } => out.push((leaf, key.to_vec(), value.to_vec())),
            }
            Ok(())
        })
        .expect("walk");
        out
    }

    /// Every dataset record: (directory leaf, name, record).
    pub fn datasets(&self) -> Vec<(u64, String, DatasetRec)> {
        let root = self.map.sb.expect("a superblock").1.datasets;
        self.entries(NodeKind::Datasets, root)
            .into_iter()
            .map(|(leaf, k, v)| (leaf, String::from_utf8(k).unwrap(), DatasetRec::decode(&v).unwrap()))
            .collect()
    }

    /// The record of dataset `name`: (directory leaf, record).
    pub fn dataset(&self, name: &str) -> (u64, DatasetRec) {
        let (leaf, _, rec) = self.datasets().into_iter().find(|d| d.1 == name).expect("a dataset");
        (leaf, rec)
    }

    /// Replaces the one occurrence of `old` in the payload of metadata block `addr` by
    /// `new` (as long), then reseals it and fixes the pointers to it.
    pub fn replace(&mut self, addr: u64, old: &[u8], new: &[u8]) {
        assert_eq!(old.len(), new.len());
        let at = addr as usize * BLOCK;
        let payload = &self.img[at + block::HEADER..at + block::CHECKSUM_AT];
        let hits: Vec<usize> = (0..=payload.len() - old.len())
            .filter(|&i| &payload[i..i + old.len()] == old)
            .collect();
        assert_eq!(hits.len(), 1, "block {addr} holds the bytes to replace once");
        let before = self.ptr_of(addr);
        let from = at + block::HEADER + hits[0];
        self.img[from..from + new.len()].copy_from_slice(new);
        self.reseal(before);
    }

    /// The pointer a parent holds for block `addr` as it is now.
    fn ptr_of(&self, addr: u64) -> BlockPtr {
        let b = &self.img[addr as usize * BLOCK..];
        let get = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        BlockPtr {
            addr,
            birth: get(8),
            checksum: get(block::CHECKSUM_AT),
        }
    }

    /// Reseals the block `before` pointed to, then every block holding `before`.
    fn reseal(&mut self, before: BlockPtr) {
        let addr = before.addr;
        let b: &mut Block = (&mut self.img[addr as usize * BLOCK..(addr as usize + 1) * BLOCK])
            .try_into()
            .unwrap();
        let kind = NodeKind::from_u16(u16::from_le_bytes([b[4], b[5]])).expect("a node kind");
        let level = u16::from_le_bytes([b[6], b[7]]);
        let after = block::seal(b, kind, level, before.birth, addr, self.tag);
        let (mut old, mut new) = ([0u8; BlockPtr::SIZE], [0u8; BlockPtr::SIZE]);
        BlockPtr::put(Some(before), &mut old, 0);
        BlockPtr::put(Some(after), &mut new, 0);
        let mut holders: Vec<u64> = self.map.objects.iter().map(|n| n.0.addr).collect();
        holders.extend(self.map.datasets.iter().map(|n| n.0.addr));
        holders.extend(self.map.extents.iter().map(|n| n.1.addr));
        holders.extend(self.map.deadlists.iter().map(|n| n.1.addr));
        holders.extend(self.map.space.iter().map(|n| n.0.addr));
        holders.sort_unstable();
        holders.dedup();
        for h in holders {
            let at = h as usize * BLOCK;
            let payload = &self.img[at + block::HEADER..at + block::CHECKSUM_AT];
            let hits: Vec<usize> = (0..=payload.len() - old.len())
                .filter(|&i| payload[i..i + old.len()] == old)
                .collect();
            if hits.is_empty() {
                continue;
            }
            let parent = self.ptr_of(h);
            for i in hits {
                let from = at + block::HEADER + i;
                self.img[from..from + new.len()].copy_from_slice(&new);
            }
            self.reseal(parent);
        }
        let (at, mut sb) = self.map.sb.expect("a superblock");
        for p in [&mut sb.objects, &mut sb.datasets, &mut sb.space] {
            if *p == Some(before) {
                *p = Some(after);
            }
        }
        self.map.sb = Some((at, sb));
        let copy = sb.encode(at);
        self.img[at as usize * BLOCK..(at as usize + 1) * BLOCK].copy_from_slice(&copy[..]);
    }

    /// Rewrites dataset `name`'s record with `edit` applied (its encoding keeps its
    /// length).
    pub fn edit_dataset(&mut self, name: &str, edit: impl FnOnce(&mut DatasetRec)) {
        let (leaf, rec) = self.dataset(name);
        let mut new = rec.clone();
        edit(&mut new);
        self.replace(leaf, &rec.encode(), &new.encode());
    }
}
