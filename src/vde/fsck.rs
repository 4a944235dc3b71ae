//! `fsck`: every invariant of a store, checked from the device.
//!
//! 1. Both superblock copies decode and agree on the store's size and identity.
//! 2. Every allocation-map block and inode-table block has a valid trailer.
//! 3. The key index is a B+tree: every node reachable from the root has a valid trailer
//!    and sorted keys inside its parent's bounds, all leaves are at one depth, no node is
//!    reached twice, and the reached nodes are exactly those the index-node map marks
//!    (plus the header).
//! 4. Every leaf entry names an in-use inode whose key length and key hash match, and no
//!    inode is named twice; the in-use inodes are exactly those the inode map marks; the
//!    header's object count equals the number of entries.
//! 5. Every extent lies in the data region, no two overlap, the extents are exactly the
//!    blocks the data map marks, and every extent's bytes match its checksum.
//!
//! Each violation is reported with the block it concerns; the check goes on after one.

use super::VdeError;
use super::bitmap::Bitmap;
use super::btree::Node;
use super::btree::NodeStore;
use super::format::*;
use super::meta::Meta;
use std::collections::HashMap;
use xxhash_rust::xxh3::xxh3_64;

/// What fsck found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FsckReport {
    /// Objects (index entries) found.
    pub objects: u64,
    /// Key-index nodes reached.
    pub index_nodes: u64,
    /// Depth of the key index (0 when empty).
    pub depth: u32,
    /// Inodes in use.
    pub inodes: u64,
    /// Data blocks in extents.
    pub data_blocks: u64,
    /// Data bytes checked against their checksums.
    pub bytes_checked: u64,
    /// Every violation, one line each.
    pub violations: Vec<String>,
}

impl FsckReport {
    /// Whether the store is consistent.
    pub fn clean(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs every check on the committed state (call after a checkpoint).
///
/// Errors: only I/O errors that make going on pointless; everything else is a
/// violation in the report.
pub fn check(meta: &mut Meta) -> Result<FsckReport, VdeError> {
    let mut r = FsckReport::default();
    let l = meta.layout;
    for bad in &meta.bad_superblocks {
        r.violations
            .push(format!("{bad} (found at open; rewritten from the other copy)"));
    }
    superblocks(meta, &mut r)?;
    for (region, kind) in [
        (l.index_map, Kind::Bitmap),
        (l.inode_map, Kind::Bitmap),
        (l.data_map, Kind::Bitmap),
        (l.inodes, Kind::Inodes),
    ] {
        for b in region.start..region.end() {
            if let Err(e) = meta.read(b, kind) {
                r.violations.push(e.to_string());
            }
        }
    }
    // 3 and 4: the tree and the inodes it names.
    let mut nodes_seen = Bitmap::new(l.index_nodes());
    nodes_seen.set(0, true);
    let mut entries: Vec<(Vec<u8>, u64)> = Vec::new();
    let root = meta.root;
    if root != 0 {
        let mut leaf_depth = None;
        walk(
            meta,
            root,
            None,
            None,
            1,
            &mut leaf_depth,
            &mut nodes_seen,
            &mut entries,
            &mut r,
        )?;
        r.depth = leaf_depth.unwrap_or(0);
    }
    r.index_nodes = nodes_seen.count_ones() - 1;
    for n in nodes_seen.differences(&meta.index_map) {
        r.violations.push(if nodes_seen.get(n) {
            format!("index node {n} is in the tree but free in the index-node map")
        } else {
            format!("index node {n} is marked in the index-node map but not in the tree (leaked)")
        });
    }
    if meta.objects != entries.len() as u64 {
        r.violations.push(format!(
            "the index header counts {} objects; the index holds {}",
            meta.objects,
            entries.len()
        ));
    }
    r.objects = entries.len() as u64;
    let mut inodes_seen = Bitmap::new(l.inode_count());
    let mut data_seen = Bitmap::new(l.data.blocks);
    let mut named: HashMap<u64, usize> = HashMap::new();
    for (i, (key, ino)) in entries.iter().enumerate() {
        if let Some(prev) = named.insert(*ino, i) {
            r.violations.push(format!(
                "inode {ino} is named by keys {:?} and {:?}",
                String::from_utf8_lossy(&entries[prev].0),
                String::from_utf8_lossy(key)
            ));
            continue;
        }
        let inode = match meta.inode(*ino) {
            Ok(i) => i,
            Err(e) => {
                r.violations
                    .push(format!("key {:?}: {e}", String::from_utf8_lossy(key)));
                continue;
            }
        };
        inodes_seen.set(*ino, true);
        if inode.key_len as usize != key.len() || inode.key_hash != xxh3_64(key) {
            r.violations.push(format!(
                "inode {ino} does not belong to key {:?}",
                String::from_utf8_lossy(key)
            ));
        }
        for (n, e) in inode.extents.iter().enumerate() {
            if e.start < l.data.start || e.start + e.blocks > l.data.end() {
                r.violations
                    .push(format!("inode {ino} extent {n} {e:?} is outside the data region"));
                continue;
            }
            let rel = e.start - l.data.start;
            if (rel..rel + e.blocks).any(|b| data_seen.get(b)) {
                r.violations
                    .push(format!("inode {ino} extent {n} {e:?} overlaps another extent"));
            }
            data_seen.set_range(rel, e.blocks, true);
            r.data_blocks += e.blocks;
            match meta.extent_matches(e) {
                Ok(true) => r.bytes_checked += e.blocks * BLOCK as u64,
                Ok(false) => r.violations.push(format!(
                    "object {:?}: data extent {n} (blocks {}..{}) does not match its checksum",
                    String::from_utf8_lossy(key),
                    e.start,
                    e.start + e.blocks
                )),
                Err(e) => return Err(e),
            }
        }
    }
    r.inodes = inodes_seen.count_ones();
    // In-use inode slots against the map and the tree.
    for b in 0..l.inodes.blocks {
        let Ok(block) = meta.read(l.inodes.start + b, Kind::Inodes) else {
            continue;
        };
        for s in 0..INODES_PER_BLOCK {
            let ino = b * INODES_PER_BLOCK + s;
            let at = s as usize * INODE_SIZE;
            match Inode::decode(&block[at..at + INODE_SIZE]) {
                Ok(Some(_)) if !inodes_seen.get(ino) => r
                    .violations
                    .push(format!("inode {ino} is in use but no key names it (leaked)")),
                Ok(_) => {}
                Err(e) => r.violations.push(format!("inode {ino}: {e}")),
            }
        }
    }
    for n in inodes_seen.differences(&meta.inode_map) {
        r.violations.push(if inodes_seen.get(n) {
            format!("inode {n} is in use but free in the inode map")
        } else {
            format!("inode {n} is marked in the inode map but unused (leaked)")
        });
    }
    let diffs: Vec<u64> = data_seen.differences(&meta.data_map).collect();
    for (shown, n) in diffs.iter().enumerate() {
        if shown == 20 {
            r.violations
                .push(format!("... {} data-map differences in all", diffs.len()));
            break;
        }
        r.violations.push(if data_seen.get(*n) {
            format!(
                "data block {} is in an extent but free in the data map",
                l.data.start + n
            )
        } else {
            format!(
                "data block {} is marked in the data map but in no extent (leaked)",
                l.data.start + n
            )
        });
    }
    Ok(r)
}

fn superblocks(meta: &mut Meta, r: &mut FsckReport) -> Result<(), VdeError> {
    let mut raw = vec![0u8; 2 * BLOCK];
    meta.lane.read(0, &mut raw)?;
    for (i, &at) in SUPER_BLOCKS.iter().enumerate() {
        let b: &Block = raw[i * BLOCK..(i + 1) * BLOCK].try_into().expect("one block");
        match Superblock::decode(b, at) {
            Ok(sb) => {
                if sb.uuid != meta.sb.uuid || sb.total_blocks != meta.sb.total_blocks {
                    r.violations
                        .push(format!("superblock copy {i} belongs to another store"));
                }
            }
            Err(e) => r.violations.push(format!("superblock copy {i}: {e}")),
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn walk(
    meta: &mut Meta,
    id: u64,
    lo: Option<&[u8]>,
    hi: Option<&[u8]>,
    depth: u32,
    leaf_depth: &mut Option<u32>,
    seen: &mut Bitmap,
    entries: &mut Vec<(Vec<u8>, u64)>,
    r: &mut FsckReport,
) -> Result<(), VdeError> {
    if id == 0 || id >= meta.layout.index_nodes() {
        r.violations
            .push(format!("index node number {id} is outside the index"));
        return Ok(());
    }
    if seen.get(id) {
        r.violations.push(format!("index node {id} is reached twice"));
        return Ok(());
    }
    seen.set(id, true);
    let node = match meta.load(id) {
        Ok(n) => n,
        Err(e) => {
            r.violations.push(e.to_string());
            return Ok(());
        }
    };
    let keys = match &node {
        Node::Leaf { keys, .. } | Node::Interior { keys, .. } => keys,
    };
    let in_bounds = |k: &[u8]| lo.is_none_or(|lo| k >= lo) && hi.is_none_or(|hi| k < hi);
    if let Some(k) = keys.iter().find(|k| !in_bounds(k)) {
        r.violations.push(format!(
            "index node {id}: key {:?} is outside the range its parent gives",
            String::from_utf8_lossy(k)
        ));
    }
    match node {
        Node::Leaf { keys, inos } => {
            if keys.is_empty() {
                r.violations.push(format!("index leaf {id} is empty"));
            }
            match *leaf_depth {
                None => *leaf_depth = Some(depth),
                Some(d) if d != depth => r
                    .violations
                    .push(format!("index leaf {id} is at depth {depth}, others at {d}")),
                Some(_) => {}
            }
            entries.extend(keys.into_iter().zip(inos));
        }
        Node::Interior { keys, children } => {
            if children.len() != keys.len() + 1 {
                r.violations.push(format!(
                    "index node {id} has {} keys and {} children",
                    keys.len(),
                    children.len()
                ));
                return Ok(());
            }
            for (i, &c) in children.iter().enumerate() {
                let clo = if i == 0 { lo } else { Some(keys[i - 1].as_slice()) };
                let chi = if i == keys.len() { hi } else { Some(keys[i].as_slice()) };
                walk(meta, c, clo, chi, depth + 1, leaf_depth, seen, entries, r)?;
            }
        }
    }
    Ok(())
}
