//! `fsck` for format 2: every invariant of the committed state, read from the device
//! (never from the metadata cache), in memory bounded by the device's size (four bits
//! per block), one tree path, one directory page and, for the clone counts, 1024
//! snapshot names — not by the number of objects, volumes or snapshots.
//!
//! 1. Both superblock copies decode (a damaged copy is reported; the store still opens
//!    from the other).
//! 2. Every block pointer in every tree (object index, dataset directory, each dataset's
//!    extent map and dead list, the space map) names a block whose address, birth and
//!    checksum match ([`super::block::check`]).
//! 3. No block is referenced twice, except by extent maps of one **family** (a volume
//!    that is no clone, its snapshots, the clones made from them, theirs, and so on):
//!    the superblocks and intent log, object data, space map blocks and every tree node
//!    but an extent map's are referenced once; a block an extent map references is
//!    referenced by nothing else, and by no extent map of another family. A violation
//!    names the block and its users. Within a family: a snapshot's extents were born no
//!    later than the snapshot, and a block that a volume's extent map holds and that was
//!    born after the volume's newest snapshot (its `prev_txg`) is referenced by no other
//!    member.
//! 4. Every data extent's bytes match their checksums (each block once).
//! 5. Counts: the object count; each dataset's referenced blocks and dead-list blocks;
//!    each snapshot's clones (the volumes naming it as their origin).
//! 6. Every dataset's chain: a snapshot names its volume (`VOL@SNAP`), a clone's origin
//!    is a snapshot, and origins lead to a volume that is no clone. A volume's
//!    snapshots, oldest first, chain by txg: each one's `prev_txg` is the `created_txg`
//!    of the one before it (the first one's: the origin's, or 0), and the volume's
//!    `prev_txg` is its newest snapshot's `created_txg` (none: the origin's, or 0).
//! 7. Every dead-list entry was born no later than its dataset's `prev_txg` (blocks born
//!    after it are freed, never put on the list) and names blocks that an extent map of
//!    its own family references (the snapshot before it, or the origin, holds them).
//! 8. The space map marks exactly the referenced blocks: nothing referenced is free, and
//!    nothing allocated is unreferenced (a leak).

use super::VdeError;
use super::block::{BLOCK, BlockPtr, NodeKind};
use super::dataset::{DatasetKind, DatasetRec, VolExtent};
use super::lane::Lane;
use super::pool::{self, MetaIo};
use super::space::SpaceMap;
use super::store::{ObjectValue, State, Vde};
use super::tree::{Entry, Tree, Visit};
use std::collections::{BTreeMap, BTreeSet};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Blocks referenced twice that fsck names with their users (the rest are counted).
const MAX_NAMED: usize = 64;
/// Users named per block referenced twice.
const MAX_USERS: usize = 4;
/// Snapshots whose clones are counted per pass over the directory.
const CLONE_CHUNK: usize = 1024;
/// Longest origin chain followed (a clone of a clone of ...); longer is a cycle.
const MAX_CHAIN: usize = 64;

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
    /// Every violation, one line each (the first 1000, each once).
    pub violations: Vec<String>,
    /// Reads that failed ([`VdeError::Io`]) and stopped a part of the check; each is also
    /// a violation. What they would have read is unchecked, so a report with any is
    /// incomplete.
    pub io_errors: u64,
}

impl FsckReport {
    /// Whether the store is consistent.
    pub fn clean(&self) -> bool {
        self.violations.is_empty()
    }

    fn violation(&mut self, v: String) {
        if self.violations.len() < 1000 && !self.violations.contains(&v) {
            self.violations.push(v);
        }
    }

    /// A part of the check (`what`) stopped with `e`: a violation, and an I/O error when
    /// `e` is one.
    fn stopped(&mut self, what: &str, e: &VdeError) {
        if matches!(e, VdeError::Io { .. }) {
            self.io_errors += 1;
        }
        self.violation(format!("{what}: {e}"));
    }
}

/// How far a check has got, for a progress display
/// ([`Vde::fsck_with_progress`](super::Vde::fsck_with_progress)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsckProgress {
    /// Distinct blocks reached so far (metadata and data; the superblocks and intent log
    /// not counted).
    pub checked_blocks: u64,
    /// The blocks a healthy store has to reach: those its space map marks in use, less
    /// the superblocks and intent log. On a damaged store (a leak, a dangling pointer)
    /// `checked_blocks` may end below or above it.
    pub total_blocks: u64,
}

/// Tells a progress callback how many blocks have been reached.
struct Ticker<'a> {
    report: &'a mut dyn FnMut(FsckProgress),
    /// Blocks before the pool (marked reached before the walks).
    before_pool: u64,
    total_blocks: u64,
}

impl Ticker<'_> {
    fn tick(&mut self, refs: &Refs) {
        (self.report)(FsckProgress {
            checked_blocks: refs.reached.saturating_sub(self.before_pool),
            total_blocks: self.total_blocks,
        });
    }
}

/// One bit per block; blocks past the end read as clear and are not set.
struct Bits(Vec<u64>);

impl Bits {
    fn new(total: u64) -> Bits {
        Bits(vec![0; total.div_ceil(64) as usize])
    }
    fn get(&self, b: u64) -> bool {
        usize::try_from(b / 64)
            .ok()
            .and_then(|i| self.0.get(i))
            .is_some_and(|w| w >> (b % 64) & 1 == 1)
    }
    /// Sets the bit; returns whether it was set before.
    fn set(&mut self, b: u64) -> bool {
        let Some(w) = usize::try_from(b / 64).ok().and_then(|i| self.0.get_mut(i)) else {
            return false;
        };
        let was = *w >> (b % 64) & 1 == 1;
        *w |= 1 << (b % 64);
        was
    }
}

/// Who references the blocks: four bits a block, and the first [`MAX_NAMED`] blocks
/// referenced twice.
struct Refs {
    /// Referenced by anything.
    seen: Bits,
    /// Referenced by something other than an extent map, which must be its only user:
    /// the superblocks and intent log, object data, space map blocks, object index,
    /// dataset directory and dead list nodes.
    solo: Bits,
    /// Referenced by an extent map of the family being checked.
    family: Bits,
    /// Of the family being checked, born after its volume's newest snapshot (or its
    /// origin): that volume's alone, no other member may reference it.
    own: Bits,
    /// Blocks referenced twice, named after the walks.
    twice: BTreeSet<u64>,
    /// Blocks referenced twice past the first [`MAX_NAMED`].
    more: u64,
    /// Blocks in `seen`: the distinct blocks reached so far.
    reached: u64,
}

impl Refs {
    /// A new family is checked from here: nothing belongs to one.
    fn new_family(&mut self) {
        self.family.0.fill(0);
        self.own.0.fill(0);
    }

    fn twice(&mut self, b: u64) {
        if self.twice.len() < MAX_NAMED {
            self.twice.insert(b);
        } else if !self.twice.contains(&b) {
            self.more += 1;
        }
    }

    /// `b` is referenced by a structure that must be its only user.
    fn solo(&mut self, b: u64) {
        self.solo.set(b);
        if self.seen.set(b) {
            self.twice(b);
        } else {
            self.reached += 1;
        }
    }

    /// An extent map of the current family references `b`; returns whether nothing
    /// referenced it before.
    fn shared(&mut self, b: u64) -> bool {
        let first = !self.seen.set(b);
        self.reached += u64::from(first);
        if !first && (self.solo.get(b) || !self.family.get(b)) {
            self.twice(b);
        }
        self.family.set(b);
        first
    }
}

fn uncached(st: &mut State) -> MetaIo<'_> {
    let mut io = st.io();
    io.bypass_cache = true;
    io
}

/// A visitor of [`each_dataset`]: the state, a dataset's name and its record (or why it
/// does not decode); returns whether to go on.
type DatasetFn<'f> = dyn FnMut(&mut State, &[u8], Result<DatasetRec, String>) -> bool + 'f;

/// A family's top volume, or what breaks the chain to it.
type FamilyOf = Result<Vec<u8>, String>;

/// Calls `f` on each dataset after `after` (all of them for `None`), in name order, a
/// directory page at a time, until it returns false. `f` gets the state to read more.
fn each_dataset(
    st: &mut State,
    root: Option<BlockPtr>,
    after: Option<&[u8]>,
    f: &mut DatasetFn<'_>,
) -> Result<(), VdeError> {
    let mut dir = Tree::open(NodeKind::Datasets, root);
    let mut cursor = after.map(<[u8]>::to_vec);
    loop {
        let page: Vec<Entry> = dir.page(&mut uncached(st), cursor.as_deref(), 64)?;
        let Some(last) = page.last() else { return Ok(()) };
        cursor = Some(last.0.clone());
        for (name, v) in page {
            if !f(st, &name, DatasetRec::decode(&v)) {
                return Ok(());
            }
        }
    }
}

/// The record of dataset `name`, read from the device.
///
/// Errors: a description (not found, unreadable, undecodable).
fn get_rec(st: &mut State, root: Option<BlockPtr>, name: &[u8]) -> Result<DatasetRec, String> {
    let shown = String::from_utf8_lossy(name);
    match Tree::open(NodeKind::Datasets, root).get(&mut uncached(st), name) {
        Ok(Some(v)) => DatasetRec::decode(&v).map_err(|e| format!("{shown}: {e}")),
        Ok(None) => Err(format!("{shown} does not exist")),
        Err(e) => Err(format!("{shown}: {e}")),
    }
}

/// The volume at the top of a dataset's origin chain (its family): a volume that is no
/// clone is its own; a snapshot `VOL@SNAP` is in `VOL`'s; a clone is in its origin's.
/// Remembers the last volume asked about (a volume's snapshots follow each other in the
/// directory).
struct Families {
    root: Option<BlockPtr>,
    last: Option<(Vec<u8>, FamilyOf)>,
}

impl Families {
    /// Errors: what breaks the chain.
    fn of(&mut self, st: &mut State, name: &[u8], rec: &DatasetRec) -> FamilyOf {
        let at = name.iter().position(|&c| c == b'@');
        let vol = match (rec.kind, at) {
            (DatasetKind::Volume, None) => name,
            (DatasetKind::Snapshot, Some(i)) => &name[..i],
            (DatasetKind::Volume, Some(_)) => return Err("a volume named like a snapshot (VOL@SNAP)".into()),
            (DatasetKind::Snapshot, None) => return Err("a snapshot not named VOL@SNAP".into()),
        };
        if let Some((v, r)) = &self.last
            && v == vol
        {
            return r.clone();
        }
        let r = self.chain(st, vol, (rec.kind == DatasetKind::Volume).then(|| rec.clone()));
        self.last = Some((vol.to_vec(), r.clone()));
        r
    }

    fn chain(&mut self, st: &mut State, vol: &[u8], rec: Option<DatasetRec>) -> FamilyOf {
        let mut vol = vol.to_vec();
        let mut rec = match rec {
            Some(r) => r,
            None => get_rec(st, self.root, &vol).map_err(|e| format!("its volume {e}"))?,
        };
        for _ in 0..MAX_CHAIN {
            let shown = String::from_utf8_lossy(&vol).into_owned();
            if rec.kind != DatasetKind::Volume {
                return Err(format!("{shown} is a snapshot, not a volume"));
            }
            if rec.origin.is_empty() {
                return Ok(vol);
            }
            let origin = String::from_utf8_lossy(&rec.origin).into_owned();
            let o = get_rec(st, self.root, &rec.origin).map_err(|e| format!("{shown}'s origin {e}"))?;
            let at = rec.origin.iter().position(|&c| c == b'@');
            let (Some(at), DatasetKind::Snapshot) = (at, o.kind) else {
                return Err(format!("{shown}'s origin {origin} is not a snapshot"));
            };
            let base = rec.origin[..at].to_vec();
            rec = get_rec(st, self.root, &base).map_err(|e| format!("{shown}'s origin's volume {e}"))?;
            vol = base;
        }
        Err(format!("its origins form a chain of more than {MAX_CHAIN} (a cycle)"))
    }
}

/// Runs every check on `store` after committing its open txg, telling `progress` after
/// each block it reads.
///
/// Errors: I/O errors that make going on pointless, [`VdeError::Poisoned`]; everything
/// else is a violation in the report (failed reads counted in
/// [`FsckReport::io_errors`] too).
pub fn check(store: &Vde, progress: &mut dyn FnMut(FsckProgress)) -> Result<FsckReport, VdeError> {
    // Data is read through a lane of its own while the walks hold the metadata lane.
    let mut dlane = store.lane()?;
    let mut st = store.state()?;
    if !store.opts.read_only {
        st.commit(&store.log)?;
    }
    let st = &mut *st;
    let mut r = FsckReport::default();
    let sb = st.sb;
    let total = sb.total_blocks;
    let first = sb.pool_start();
    let tag = sb.tag();
    let mut ticker = Ticker {
        report: progress,
        before_pool: first,
        total_blocks: st.space.used().saturating_sub(first),
    };
    let mut refs = Refs {
        seen: Bits::new(total),
        solo: Bits::new(total),
        family: Bits::new(total),
        own: Bits::new(total),
        twice: BTreeSet::new(),
        more: 0,
        reached: 0,
    };
    for b in 0..first {
        refs.solo(b);
    }
    ticker.tick(&refs);
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
            refs.solo(ptr.addr);
            r.meta_blocks += 1;
            ticker.tick(&refs);
            Ok(std::sync::Arc::from(b))
        };
        match SpaceMap::load(total, sb.space, &mut read) {
            Ok(s) => Some(s),
            Err(e) => {
                r.stopped("space map", &e);
                None
            }
        }
    };
    // The object index.
    let mut objects = 0u64;
    let mut buf = Vec::new();
    let walked = {
        let mut io = uncached(st);
        let mut visit = |v: Visit<'_>| {
            match v {
                Visit::Node { ptr, .. } => {
                    refs.solo(ptr.addr);
                    r.meta_blocks += 1;
                    ticker.tick(&refs);
                }
                Visit::Entry { key, value } => {
                    objects += 1;
                    match ObjectValue::decode(value, first, total) {
                        Ok(o) => {
                            for (s, n, sum) in o.extents {
                                for b in s..s + n {
                                    refs.solo(b);
                                }
                                r.data_blocks += n;
                                buf.resize(n as usize * BLOCK, 0);
                                dlane.read(s, &mut buf)?;
                                r.bytes_checked += buf.len() as u64;
                                ticker.tick(&refs);
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
        r.stopped("object index", &e);
    }
    r.objects = objects;
    if objects != sb.objects_count {
        r.violation(format!(
            "the superblock counts {} objects; the index holds {objects}",
            sb.objects_count
        ));
    }
    // The dataset directory; then its datasets, a family at a time.
    if let Err(e) = Tree::walk(&mut uncached(st), NodeKind::Datasets, sb.datasets, 0, &mut |v| {
        if let Visit::Node { ptr, .. } = v {
            refs.solo(ptr.addr);
            r.meta_blocks += 1;
            ticker.tick(&refs);
        }
        Ok(())
    }) {
        r.stopped("dataset directory", &e);
    }
    let mut fams = Families {
        root: sb.datasets,
        last: None,
    };
    let mut ck = Checker {
        dlane: &mut dlane,
        r: &mut r,
        refs: &mut refs,
        dir: sb.datasets,
        first,
        total,
        tag,
        ticker: &mut ticker,
    };
    // Every record and its family; the datasets outside any family are checked alone.
    let census = each_dataset(st, sb.datasets, None, &mut |st, name, rec| {
        let n = String::from_utf8_lossy(name).into_owned();
        match rec {
            Err(e) => ck.r.violation(format!("dataset {n}: {e}")),
            Ok(rec) => {
                match rec.kind {
                    DatasetKind::Volume => ck.r.volumes += 1,
                    DatasetKind::Snapshot => ck.r.snapshots += 1,
                }
                if let Err(e) = fams.of(st, name, &rec) {
                    ck.r.violation(format!("dataset {n}: {e}"));
                    ck.refs.new_family();
                    ck.extents(st, &n, &rec);
                    ck.deadlist(st, &n, &rec);
                }
            }
        }
        true
    });
    if let Err(e) = census {
        ck.r.stopped("dataset directory", &e);
    }
    // Each family: its extent maps, then its dead lists (their entries must be held by
    // the family's maps) and its volumes' chains.
    let _ = each_dataset(st, sb.datasets, None, &mut |st, name, rec| {
        if let Ok(rec) = rec
            && rec.kind == DatasetKind::Volume
            && rec.origin.is_empty()
            && !name.contains(&b'@')
        {
            ck.family(st, &mut fams, name);
        }
        true
    });
    ck.clones(st);
    // 3. Name the users of every block referenced twice (a walk of everything again,
    // only when there are some).
    if !refs.twice.is_empty() {
        let users = users(st, &refs.twice);
        for b in &refs.twice {
            let u = users.get(b).map(|u| u.join(" and ")).unwrap_or_default();
            r.violation(format!("block {b} is referenced twice: by {u}"));
        }
        if refs.more > 0 {
            r.violation(format!("... and {} more blocks referenced twice", refs.more));
        }
    }
    // 8. The space map against what is referenced.
    if let Some(space) = space {
        r.used_blocks = space.used();
        let mut shown = 0;
        for b in 0..total {
            let (used, refd) = (space.is_used(b), refs.seen.get(b));
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

/// What the dataset checks share.
struct Checker<'a, 'p> {
    dlane: &'a mut Lane,
    r: &'a mut FsckReport,
    refs: &'a mut Refs,
    /// The dataset directory's root.
    dir: Option<BlockPtr>,
    first: u64,
    total: u64,
    tag: u64,
    ticker: &'a mut Ticker<'p>,
}

impl Checker<'_, '_> {
    /// Checks the family of volume `root` (no clone): its members' extent maps, then their
    /// dead lists and its volumes' snapshot chains.
    fn family(&mut self, st: &mut State, fams: &mut Families, root: &[u8]) {
        self.refs.new_family();
        for pass in 0..2 {
            let _ = each_dataset(st, self.dir, None, &mut |st, name, rec| {
                let Ok(rec) = rec else { return true };
                if fams.of(st, name, &rec).ok().as_deref() != Some(root) {
                    return true;
                }
                let n = String::from_utf8_lossy(name).into_owned();
                if pass == 0 {
                    self.extents(st, &n, &rec);
                } else {
                    self.deadlist(st, &n, &rec);
                    if rec.kind == DatasetKind::Volume {
                        self.chain(st, name, &rec);
                    }
                }
                true
            });
        }
    }

    fn extents(&mut self, st: &mut State, name: &str, rec: &DatasetRec) {
        let (first, total, tag) = (self.first, self.total, self.tag);
        let Checker {
            dlane, r, refs, ticker, ..
        } = self;
        let mut refer = 0u64;
        let mut buf = Vec::new();
        let walked = Tree::walk(&mut uncached(st), NodeKind::Extents, rec.extents, 0, &mut |v| {
            match v {
                Visit::Node { ptr, .. } => {
                    if refs.shared(ptr.addr) {
                        r.meta_blocks += 1;
                        ticker.tick(refs);
                    }
                }
                Visit::Entry { key, value } => match VolExtent::decode(value, first, total) {
                    Ok(e) => {
                        refer += e.len;
                        if key.len() != 8 {
                            r.violation(format!("{name}: extent key of {} bytes", key.len()));
                        }
                        if rec.kind == DatasetKind::Snapshot && e.birth > rec.created_txg {
                            r.violation(format!(
                                "{name}: extent {}+{} was born in txg {}, after the snapshot (txg {})",
                                e.pba, e.len, e.birth, rec.created_txg
                            ));
                        }
                        // Born after the volume's newest snapshot: no other member of
                        // the family can hold it (a snapshot taken since would have
                        // moved `prev_txg` past it).
                        let own = rec.kind == DatasetKind::Volume && e.birth > rec.prev_txg;
                        let mut any_new = false;
                        for b in e.pba..e.pba + e.len {
                            if (own && refs.family.get(b)) || refs.own.get(b) {
                                r.violation(format!(
                                    "{name}: block {b} is referenced by another member of its family, \
                                     but it was born after the volume's newest snapshot"
                                ));
                            }
                            any_new |= refs.shared(b);
                            if own {
                                refs.own.set(b);
                            }
                        }
                        if any_new {
                            r.data_blocks += e.len;
                            buf.resize(e.len as usize * BLOCK, 0);
                            dlane.read(e.pba, &mut buf)?;
                            r.bytes_checked += buf.len() as u64;
                            ticker.tick(refs);
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
            r.stopped(&format!("{name}: extent map"), &e);
        }
        if refer != rec.refer_blocks {
            r.violation(format!(
                "{name}: its record counts {} referenced blocks; its extent map holds {refer}",
                rec.refer_blocks
            ));
        }
    }

    fn deadlist(&mut self, st: &mut State, name: &str, rec: &DatasetRec) {
        let total = self.total;
        let Checker { r, refs, ticker, .. } = self;
        let mut dead = 0u64;
        let walked = Tree::walk(&mut uncached(st), NodeKind::Deadlist, rec.deadlist, 0, &mut |v| {
            match v {
                Visit::Node { ptr, .. } => {
                    refs.solo(ptr.addr);
                    r.meta_blocks += 1;
                    ticker.tick(refs);
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
                    let birth = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
                    let addr = u64::from_be_bytes(key[8..].try_into().expect("8 bytes"));
                    let len = u32::from_le_bytes(value[..4].try_into().expect("4 bytes")) as u64;
                    dead = dead.saturating_add(len);
                    if birth > rec.prev_txg {
                        r.violation(format!(
                            "{name}: dead list entry {addr}+{len} was born in txg {birth}, after its \
                             prev_txg {} (such a block is freed, never listed)",
                            rec.prev_txg
                        ));
                    }
                    let Some(end) = addr.checked_add(len).filter(|&e| e <= total) else {
                        r.violation(format!(
                            "{name}: dead list entry {addr}+{len} runs past the end of the store ({total} blocks)"
                        ));
                        return Ok(());
                    };
                    if let Some(b) = (addr..end).find(|&b| refs.solo.get(b)) {
                        r.violation(format!(
                            "{name}: dead list entry {addr}+{len}: block {b} is no volume's (an object's \
                             data, a tree node other than an extent map's, or a space map block)"
                        ));
                    } else if let Some(b) = (addr..end).find(|&b| !refs.family.get(b)) {
                        r.violation(format!(
                            "{name}: dead list entry {addr}+{len}: block {b} is held by no snapshot or \
                             origin of its family"
                        ));
                    }
                }
            }
            Ok(())
        });
        if let Err(e) = walked {
            r.stopped(&format!("{name}: dead list"), &e);
        }
        if dead != rec.dead_blocks {
            r.violation(format!(
                "{name}: its record counts {} dead-list blocks; its dead list holds {dead}",
                rec.dead_blocks
            ));
        }
    }

    /// Volume `vol`'s snapshots chain by txg (see the module docs). Each snapshot finds
    /// its predecessor with a scan of the volume's snapshots: time quadratic in their
    /// number, memory one page.
    fn chain(&mut self, st: &mut State, vol: &[u8], rec: &DatasetRec) {
        let shown = String::from_utf8_lossy(vol).into_owned();
        let base = if rec.origin.is_empty() {
            0
        } else {
            match get_rec(st, self.dir, &rec.origin) {
                Ok(o) => o.created_txg,
                Err(_) => return, // reported with the family
            }
        };
        let prefix = [vol, b"@"].concat();
        let dir = self.dir;
        let r = &mut *self.r;
        let mut newest = None;
        let _ = each_dataset(st, dir, Some(&prefix), &mut |st, name, s| {
            if !name.starts_with(&prefix) {
                return false;
            }
            let Ok(s) = s else { return true };
            let n = String::from_utf8_lossy(name).into_owned();
            newest = newest.max(Some(s.created_txg));
            let (mut pred, mut twin) = (base, None);
            let _ = each_dataset(st, dir, Some(&prefix), &mut |_, other, o| {
                if !other.starts_with(&prefix) {
                    return false;
                }
                if let Ok(o) = o
                    && other != name
                {
                    if o.created_txg < s.created_txg {
                        pred = pred.max(o.created_txg);
                    } else if o.created_txg == s.created_txg {
                        twin = Some(String::from_utf8_lossy(other).into_owned());
                    }
                }
                true
            });
            if let Some(t) = twin {
                r.violation(format!("{n} and {t} were both created in txg {}", s.created_txg));
            }
            if s.prev_txg != pred {
                r.violation(format!(
                    "{n}: its prev_txg is {}, but the snapshot before it (or {shown}'s origin) was \
                     created in txg {pred}",
                    s.prev_txg
                ));
            }
            true
        });
        let want = newest.unwrap_or(base);
        if rec.prev_txg != want {
            r.violation(format!(
                "{shown}: its prev_txg is {}, but its newest snapshot (or its origin) was created in txg {want}",
                rec.prev_txg
            ));
        }
    }

    /// Each snapshot's clones count is the number of volumes naming it as their origin
    /// (counted [`CLONE_CHUNK`] snapshots per pass over the directory).
    fn clones(&mut self, st: &mut State) {
        let dir = self.dir;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let mut chunk: BTreeMap<Vec<u8>, (u32, u64)> = BTreeMap::new();
            let mut resume = None;
            let _ = each_dataset(st, dir, after.as_deref(), &mut |_, name, rec| {
                if let Ok(rec) = rec
                    && rec.kind == DatasetKind::Snapshot
                {
                    chunk.insert(name.to_vec(), (rec.clones, 0));
                    if chunk.len() == CLONE_CHUNK {
                        resume = Some(name.to_vec());
                        return false;
                    }
                }
                true
            });
            if chunk.is_empty() {
                return;
            }
            let _ = each_dataset(st, dir, None, &mut |_, _, rec| {
                if let Ok(rec) = rec
                    && rec.kind == DatasetKind::Volume
                    && let Some((_, n)) = chunk.get_mut(&rec.origin)
                {
                    *n += 1;
                }
                true
            });
            for (name, (recorded, named)) in &chunk {
                if u64::from(*recorded) != *named {
                    self.r.violation(format!(
                        "{}: its record counts {recorded} clones; {named} volumes name it as their origin",
                        String::from_utf8_lossy(name)
                    ));
                }
            }
            match resume {
                Some(a) => after = Some(a),
                None => return,
            }
        }
    }
}

/// The users of `blocks` (at most [`MAX_USERS`] each): a walk of everything the
/// superblock reaches, without reading data.
fn users(st: &mut State, blocks: &BTreeSet<u64>) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut note = |b: u64, who: &dyn Fn() -> String| {
        if blocks.contains(&b) {
            let u = out.entry(b).or_default();
            let who = who();
            if u.len() < MAX_USERS && u.last() != Some(&who) {
                u.push(who);
            }
        }
    };
    let sb = st.sb;
    let (first, total, tag) = (sb.pool_start(), sb.total_blocks, sb.tag());
    for &b in blocks.range(..first) {
        note(b, &|| "the superblocks and intent log".into());
    }
    {
        let State { lane, .. } = &mut *st;
        let mut read = |ptr: &BlockPtr, kind: NodeKind| {
            let mut b = Box::new([0u8; BLOCK]);
            if ptr.addr >= total {
                return Err(VdeError::Unsupported("past the end".into()));
            }
            lane.read(ptr.addr, &mut b[..])?;
            super::block::check(&b, ptr.addr, kind, Some(ptr), tag)?;
            note(ptr.addr, &|| "the space map".into());
            Ok(std::sync::Arc::from(b))
        };
        let _ = SpaceMap::load(total, sb.space, &mut read);
    }
    let _ = Tree::walk(&mut uncached(st), NodeKind::Objects, sb.objects, 0, &mut |v| {
        match v {
            Visit::Node { ptr, .. } => note(ptr.addr, &|| "an object index node".into()),
            Visit::Entry { key, value } => {
                for (s, n, _) in ObjectValue::decode(value, first, total)
                    .map(|o| o.extents)
                    .unwrap_or_default()
                {
                    for b in s..s + n {
                        note(b, &|| format!("object {:?}", String::from_utf8_lossy(key)));
                    }
                }
            }
        }
        Ok(())
    });
    let _ = Tree::walk(&mut uncached(st), NodeKind::Datasets, sb.datasets, 0, &mut |v| {
        if let Visit::Node { ptr, .. } = v {
            note(ptr.addr, &|| "a dataset directory node".into());
        }
        Ok(())
    });
    let _ = each_dataset(st, sb.datasets, None, &mut |st, name, rec| {
        let Ok(rec) = rec else { return true };
        let n = String::from_utf8_lossy(name);
        let _ = Tree::walk(&mut uncached(st), NodeKind::Extents, rec.extents, 0, &mut |v| {
            match v {
                Visit::Node { ptr, .. } => note(ptr.addr, &|| format!("an extent map node of {n}")),
                Visit::Entry { value, .. } => {
                    if let Ok(e) = VolExtent::decode(value, first, total) {
                        for b in e.pba..e.pba + e.len {
                            note(b, &|| format!("the extent map of {n}"));
                        }
                    }
                }
            }
            Ok(())
        });
        let _ = Tree::walk(&mut uncached(st), NodeKind::Deadlist, rec.deadlist, 0, &mut |v| {
            if let Visit::Node { ptr, .. } = v {
                note(ptr.addr, &|| format!("a dead list node of {n}"));
            }
            Ok(())
        });
        true
    });
    out
}
