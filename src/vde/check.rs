//! `fsck` for format 2: every invariant of the committed state, read from the device
//! (never from the metadata cache), in memory bounded by the device's size (one bit per
//! block) and one tree path — not by the number of objects, volumes or snapshots.
//!
//! 1. Both superblock copies decode (a damaged copy is reported; the store still opens
//!    from the other).
//! 2. Every block pointer in every tree (object index, dataset directory, each dataset's
//!    extent map and dead list, the space map) names a block whose address, birth and
//!    checksum match ([`super::block::check`]).
//! 3. No metadata block and no object extent is referenced twice (extent maps of a
//!    volume and its snapshots and clones share blocks by design; dead lists never do).
//! 4. Every data extent's bytes match their checksums (each block once).
//! 5. Counts: the object count; each dataset's referenced blocks and dead-list blocks.
//! 6. Every dead-list entry names blocks some extent map still references (a snapshot
//!    or origin holds them).
//! 7. The space map marks exactly the referenced blocks: nothing referenced is free, and
//!    nothing allocated is unreferenced (a leak).

use super::VdeError;
use super::block::{BLOCK, BlockPtr, NodeKind};
use super::dataset::{DatasetKind, DatasetRec, VolExtent};
use super::lane::Lane;
use super::pool::{self, MetaIo};
use super::space::SpaceMap;
use super::store::{ObjectValue, State, Vde};
use super::tree::{Tree, Visit};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// What fsck found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FsckReport {
    /// Objects found.
    pub objects: u64,
    /// Volumes (clones included) found.
    pub volumes: u64,
    /// Snapshots found.
    pub snapshots: u64,
    /// Metadata blocks reached (tree nodes and space map blocks).
    pub meta_blocks: u64,
    /// Data blocks referenced.
    pub data_blocks: u64,
    /// Data bytes checked against their checksums.
    pub bytes_checked: u64,
    /// Blocks the space map marks in use.
    pub used_blocks: u64,
    /// Every violation, one line each (the first 1000).
    pub violations: Vec<String>,
}

impl FsckReport {
    /// Whether the store is consistent.
    pub fn clean(&self) -> bool {
        self.violations.is_empty()
    }

    fn violation(&mut self, v: String) {
        if self.violations.len() < 1000 {
            self.violations.push(v);
        }
    }
}

/// One bit per block.
struct Seen(Vec<u64>);

impl Seen {
    fn get(&self, b: u64) -> bool {
        self.0[(b / 64) as usize] >> (b % 64) & 1 == 1
    }
    /// Sets the bit; returns whether it was set before.
    fn set(&mut self, b: u64) -> bool {
        let w = &mut self.0[(b / 64) as usize];
        let was = *w >> (b % 64) & 1 == 1;
        *w |= 1 << (b % 64);
        was
    }
}

fn uncached(st: &mut State) -> MetaIo<'_> {
    let mut io = st.io();
    io.bypass_cache = true;
    io
}

/// Runs every check on `store` after committing its open txg.
///
/// Errors: I/O errors that make going on pointless, [`VdeError::Poisoned`]; everything
/// else is a violation in the report.
pub fn check(store: &Vde) -> Result<FsckReport, VdeError> {
    // Data is read through a lane of its own while the walks hold the metadata lane.
    let mut dlane = store.lane()?;
    let mut st = store.state()?;
    if !store.opts.read_only {
        st.commit(&store.log)?;
    }
    let mut r = FsckReport::default();
    let sb = st.sb;
    let total = sb.total_blocks;
    let first = sb.pool_start();
    let tag = sb.tag();
    let mut seen = Seen(vec![0; total.div_ceil(64) as usize]);
    for b in 0..first {
        seen.set(b);
    }
    // 1. Both copies.
    for at in pool::SUPER2 {
        let mut b = Box::new([0u8; BLOCK]);
        st.lane.read(at, &mut b[..])?;
        if let Err(e) = pool::Superblock2::decode(&b, at, total) {
            r.violation(format!("superblock copy {at}: {e}"));
        }
    }
    // 2-3. The space map (its own blocks are metadata like any other).
    let space = {
        let State { lane, .. } = &mut *st;
        let mut read = |ptr: &BlockPtr, kind: NodeKind| {
            let mut b = Box::new([0u8; BLOCK]);
            if ptr.addr >= total {
                return Err(VdeError::Mismatch {
                    block: ptr.addr,
                    kind: kind.name(),
                    expected: format!("a block below {total}"),
                    found: "a pointer past the end of the store".into(),
                });
            }
            lane.read(ptr.addr, &mut b[..])?;
            super::block::check(&b, ptr.addr, kind, Some(ptr), tag)?;
            if seen.set(ptr.addr) {
                r.violation(format!("space map block {} is referenced twice", ptr.addr));
            }
            r.meta_blocks += 1;
            Ok(std::sync::Arc::from(b))
        };
        match SpaceMap::load(total, sb.space, &mut read) {
            Ok(s) => Some(s),
            Err(e) => {
                r.violation(format!("space map: {e}"));
                None
            }
        }
    };
    // The object index.
    let mut objects = 0u64;
    let mut buf = Vec::new();
    let walked = {
        let mut io = uncached(&mut st);
        let mut visit = |v: Visit<'_>| {
            match v {
                Visit::Node { ptr, .. } => {
                    if seen.set(ptr.addr) {
                        r.violation(format!("object index node {} is referenced twice", ptr.addr));
                    }
                    r.meta_blocks += 1;
                }
                Visit::Entry { key, value } => {
                    objects += 1;
                    match ObjectValue::decode(value, first, total) {
                        Ok(o) => {
                            for (s, n, sum) in o.extents {
                                for b in s..s + n {
                                    if seen.set(b) {
                                        r.violation(format!(
                                            "object {:?}: block {b} is referenced twice",
                                            String::from_utf8_lossy(key)
                                        ));
                                    }
                                }
                                r.data_blocks += n;
                                buf.resize(n as usize * BLOCK, 0);
                                dlane.read(s, &mut buf)?;
                                r.bytes_checked += buf.len() as u64;
                                if xxh3_64_with_seed(&buf, tag) != sum {
                                    r.violation(format!(
                                        "object {:?}: extent {s}+{n} does not match its checksum",
                                        String::from_utf8_lossy(key)
                                    ));
                                }
                            }
                        }
                        Err(e) => r.violation(format!("object {:?}: {e}", String::from_utf8_lossy(key))),
                    }
                }
            }
            Ok(())
        };
        Tree::walk(&mut io, NodeKind::Objects, sb.objects, 0, &mut visit)
    };
    if let Err(e) = walked {
        r.violation(format!("object index: {e}"));
    }
    r.objects = objects;
    if objects != sb.objects_count {
        r.violation(format!(
            "the superblock counts {} objects; the index holds {objects}",
            sb.objects_count
        ));
    }
    // The dataset directory, a page at a time; then each dataset's trees.
    let mut dir = Tree::open(NodeKind::Datasets, sb.datasets);
    if let Err(e) = Tree::walk(&mut uncached(&mut st), NodeKind::Datasets, sb.datasets, 0, &mut |v| {
        if let Visit::Node { ptr, .. } = v {
            if seen.set(ptr.addr) {
                r.violation(format!("dataset directory node {} is referenced twice", ptr.addr));
            }
            r.meta_blocks += 1;
        }
        Ok(())
    }) {
        r.violation(format!("dataset directory: {e}"));
    }
    // Pass 1: extent maps. Pass 2: dead lists (their entries must be held by a map).
    for pass in 0..2 {
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let page = match dir.page(&mut uncached(&mut st), cursor.as_deref(), 64) {
                Ok(p) => p,
                Err(e) => {
                    r.violation(format!("dataset directory: {e}"));
                    break;
                }
            };
            let Some(last) = page.last() else { break };
            cursor = Some(last.0.clone());
            for (name, v) in page {
                let n = String::from_utf8_lossy(&name).into_owned();
                let rec = match DatasetRec::decode(&v) {
                    Ok(rec) => rec,
                    Err(e) => {
                        if pass == 0 {
                            r.violation(format!("dataset {n}: {e}"));
                        }
                        continue;
                    }
                };
                if pass == 0 {
                    match rec.kind {
                        DatasetKind::Volume => r.volumes += 1,
                        DatasetKind::Snapshot => r.snapshots += 1,
                    }
                    check_extents(&mut st, &mut dlane, &mut r, &mut seen, &n, &rec, (first, total, tag));
                } else {
                    check_deadlist(&mut st, &mut r, &mut seen, &n, &rec);
                }
            }
        }
    }
    // 7. The space map against what is referenced.
    if let Some(space) = space {
        r.used_blocks = space.used();
        let mut shown = 0;
        for b in 0..total {
            let (used, refd) = (space.is_used(b), seen.get(b));
            if used != refd {
                shown += 1;
                if shown <= 20 {
                    r.violation(if refd {
                        format!("block {b} is referenced but the space map says it is free")
                    } else {
                        format!("block {b} is allocated but nothing references it (a leak)")
                    });
                }
            }
        }
        if shown > 20 {
            r.violation(format!(
                "... {} more blocks where the space map and the references differ",
                shown - 20
            ));
        }
    }
    Ok(r)
}

fn check_extents(
    st: &mut State,
    dlane: &mut Lane,
    r: &mut FsckReport,
    seen: &mut Seen,
    name: &str,
    rec: &DatasetRec,
    (first, total, tag): (u64, u64, u64),
) {
    let mut refer = 0u64;
    let mut buf = Vec::new();
    let walked = Tree::walk(&mut uncached(st), NodeKind::Extents, rec.extents, 0, &mut |v| {
        match v {
            Visit::Node { ptr, .. } => {
                // Shared with a snapshot or clone: seen before, and fine.
                if !seen.set(ptr.addr) {
                    r.meta_blocks += 1;
                }
            }
            Visit::Entry { key, value } => match VolExtent::decode(value, first, total) {
                Ok(e) => {
                    refer += e.len;
                    if key.len() != 8 {
                        r.violation(format!("{name}: extent key of {} bytes", key.len()));
                    }
                    let mut any_new = false;
                    for b in e.pba..e.pba + e.len {
                        any_new |= !seen.set(b);
                    }
                    if any_new {
                        r.data_blocks += e.len;
                        buf.resize(e.len as usize * BLOCK, 0);
                        dlane.read(e.pba, &mut buf)?;
                        r.bytes_checked += buf.len() as u64;
                        for (i, (b, sum)) in buf.chunks(BLOCK).zip(&e.sums).enumerate() {
                            if xxh3_64_with_seed(b, tag) != *sum {
                                r.violation(format!(
                                    "{name}: block {} does not match its checksum",
                                    e.pba + i as u64
                                ));
                            }
                        }
                    }
                }
                Err(e) => r.violation(format!("{name}: {e}")),
            },
        }
        Ok(())
    });
    if let Err(e) = walked {
        r.violation(format!("{name}: extent map: {e}"));
    }
    if refer != rec.refer_blocks {
        r.violation(format!(
            "{name}: its record counts {} referenced blocks; its extent map holds {refer}",
            rec.refer_blocks
        ));
    }
}

fn check_deadlist(st: &mut State, r: &mut FsckReport, seen: &mut Seen, name: &str, rec: &DatasetRec) {
    let mut dead = 0u64;
    let walked = Tree::walk(&mut uncached(st), NodeKind::Deadlist, rec.deadlist, 0, &mut |v| {
        match v {
            Visit::Node { ptr, .. } => {
                if seen.set(ptr.addr) {
                    r.violation(format!("{name}: dead list node {} is referenced twice", ptr.addr));
                }
                r.meta_blocks += 1;
            }
            Visit::Entry { key, value } => {
                if key.len() != 16 || value.len() != 5 {
                    r.violation(format!(
                        "{name}: dead list entry of {}+{} bytes",
                        key.len(),
                        value.len()
                    ));
                    return Ok(());
                }
                let addr = u64::from_be_bytes(key[8..].try_into().expect("8 bytes"));
                let len = u32::from_le_bytes(value[..4].try_into().expect("4 bytes")) as u64;
                dead += len;
                if let Some(b) = (addr..addr + len).find(|&b| b >= seen.0.len() as u64 * 64 || !seen.get(b)) {
                    r.violation(format!(
                        "{name}: dead list entry {addr}+{len}: block {b} is held by no snapshot or origin"
                    ));
                }
            }
        }
        Ok(())
    });
    if let Err(e) = walked {
        r.violation(format!("{name}: dead list: {e}"));
    }
    if dead != rec.dead_blocks {
        r.violation(format!(
            "{name}: its record counts {} dead-list blocks; its dead list holds {dead}",
            rec.dead_blocks
        ));
    }
}
