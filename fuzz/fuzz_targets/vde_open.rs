//! Opening a format-2 VDE on an arbitrary image: the superblock pair, the space map,
//! intent log replay, the object index, the dataset directory, every volume's and
//! snapshot's extent map and dead list, then listing, reading objects and volumes, `stat`,
//! `info`, `fsck`, and (read-write) a put and a volume write on whatever the image holds.
//!
//! # Images
//!
//! Random bytes almost never get past a superblock's checksum, so the fuzzer mutates a
//! real store instead. Two base images of 512 blocks (2 MiB) are made once per process
//! with the real `Vde::format`, `put`, `delete`, `vol_create`, `vol_write`, `vol_unmap`,
//! `snap_create` and `clone_snapshot`: one closed (everything committed), and one copied
//! from the file while the store was open after more durable operations, so their intent
//! log records are past the superblock's log head and replay has work to do. Long keys
//! give the object index interior nodes over several leaves.
//!
//! The input's byte 0 picks the base (bit 0) and whether to open read-only (bit 1); the
//! rest is a list of edits applied to it (see `edit`): byte writes, bit flips,
//! whole-block copies (a misdirected or stale block), zeroed blocks, 64-bit writes, and
//! "repairs" that recompute checksums as a buggy or malicious writer would. A repair
//! either reseals one block in place (its own checksum: enough for superblocks and intent
//! log blocks, which have no parent) or reseals a metadata block of the base and then
//! every block pointer that names it, up to the superblocks, as found in the base image
//! (a tree node's parent, a dataset record holding an extent map's root, the superblock
//! holding a tree's root). So edited node payloads get past the self-validating pointers
//! and reach the decoders behind them.
//!
//! # Oracles
//!
//! 1. Nothing panics (open, list, get, stat, volume reads, info, fsck, put, volume write,
//!    close).
//! 2. Memory is bounded: a counting global allocator aborts the process when, while the
//!    store is being used, one allocation exceeds `MAX_ONE` (4 MiB) or the bytes live at
//!    once exceed `MAX_LIVE` (16 MiB) above what the harness held before. Everything a
//!    store keeps is bounded by the device (2 MiB here) or by the options below (a
//!    64-block cache, 256 KiB staging buffers). An allocation twice the size of the
//!    device can only come from trusting a length read from the image.
//! 3. What a read returns is on the device: a successful `get(key)` returns exactly the
//!    image's bytes at the extents `stat(key)` names, cut to the size it reports; a
//!    successful volume read returns, for each piece of `vol_read_plan`, zeros for a hole
//!    or the image's bytes at the piece's device blocks. The image is read back from the
//!    file by the harness, not through the store.
//! 4. A write never changes what an earlier read returned: after a put and a volume
//!    write on a read-write store, every object that read successfully before reads the
//!    same bytes again or fails with an error, never other bytes.
//! 5. On the unmodified base images every object and every volume, snapshot and clone
//!    block reads back as written and fsck is clean (checked once at start), so the
//!    harness cannot pass by opening nothing.

#![no_main]

#[path = "../../tests/vde_image/mod.rs"]
mod vde_image;

use ironvme::vde::block::{BLOCK, BlockPtr, CHECKSUM_AT, HEADER, NodeKind, seal, store_tag};
use ironvme::vde::format::{get16, get64, put64};
use ironvme::vde::{Vde, VdeOptions};
use ironvme::{Backend, Device, OpenOptions};
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use vde_image::ImageMap;
use xxhash_rust::xxh3::xxh3_64;

/// One allocation larger than this, while the store is in use, is a failure.
const MAX_ONE: usize = 4 << 20;
/// More bytes than this live at once (above the harness's own), likewise.
const MAX_LIVE: usize = 16 << 20;

/// Counts live heap bytes and enforces the bounds while `ARMED`.
struct Bounded;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static BASELINE: AtomicUsize = AtomicUsize::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);

fn over_bound(what: &str, bytes: usize) -> ! {
    // No allocation here: print with a fixed buffer and abort (libFuzzer reports the
    // deadly signal and saves the input).
    let mut msg = [0u8; 128];
    let mut w = std::io::Cursor::new(&mut msg[..]);
    let _ = std::io::Write::write_fmt(
        &mut w,
        format_args!("vde_open: {what} of {bytes} bytes is past the bound\n"),
    );
    let n = w.position() as usize;
    let _ = std::io::Write::write_all(&mut std::io::stderr(), &msg[..n]);
    std::process::abort();
}

fn check(size: usize) {
    if ARMED.load(Ordering::Relaxed) {
        if size > MAX_ONE {
            over_bound("one allocation", size);
        }
        let live = LIVE
            .load(Ordering::Relaxed)
            .saturating_sub(BASELINE.load(Ordering::Relaxed));
        if live > MAX_LIVE {
            over_bound("live heap", live);
        }
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter and the
// checks do not allocate.
unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        check(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        check(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        check(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Bounded = Bounded;

/// Runs `f` with the bounds enforced.
fn bounded<T>(f: impl FnOnce() -> T) -> T {
    BASELINE.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
    ARMED.store(true, Ordering::Relaxed);
    let r = f();
    ARMED.store(false, Ordering::Relaxed);
    r
}

/// 512 blocks of 4 KiB.
const IMAGE_BLOCKS: usize = 512;
/// Blocks of the volume `vol` (and so of its snapshot and clone).
const VOL_BLOCKS: u64 = 48;
/// Volume blocks one read moves.
const READ_BLOCKS: u64 = 16;

struct Base {
    image: Vec<u8>,
    objects: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Every dataset's whole contents: name → `VOL_BLOCKS` blocks.
    volumes: BTreeMap<String, Vec<u8>>,
    /// Every metadata block the committed state reaches (the superblocks first).
    meta: Vec<u64>,
    /// Block → where pointers to it sit: (the block holding the pointer, its offset).
    parents: HashMap<u64, Vec<(u64, usize)>>,
}

impl Base {
    fn new(image: Vec<u8>, objects: BTreeMap<Vec<u8>, Vec<u8>>, volumes: BTreeMap<String, Vec<u8>>) -> Base {
        let map = ImageMap::read(&image);
        let mut children: Vec<BlockPtr> = Vec::new();
        children.extend(map.objects.iter().map(|(p, _)| *p));
        children.extend(map.datasets.iter().map(|(p, _)| *p));
        children.extend(map.extents.iter().map(|(_, p, _)| *p));
        children.extend(map.deadlists.iter().map(|(_, p)| *p));
        children.extend(map.space.iter().map(|(p, _)| *p));
        children.sort_by_key(|p| p.addr);
        children.dedup_by_key(|p| p.addr);
        let mut meta = vec![0, 1];
        meta.extend(children.iter().map(|p| p.addr));
        // Find each child's pointer bytes in every metadata block: a tree node's parent,
        // a dataset record, a space map indirect block, a superblock.
        let mut parents: HashMap<u64, Vec<(u64, usize)>> = HashMap::new();
        for p in &children {
            let mut want = [0u8; BlockPtr::SIZE];
            BlockPtr::put(Some(*p), &mut want, 0);
            for &holder in &meta {
                let b = &image[holder as usize * BLOCK..(holder as usize + 1) * BLOCK];
                for at in HEADER..CHECKSUM_AT - BlockPtr::SIZE + 1 {
                    if b[at..at + BlockPtr::SIZE] == want {
                        parents.entry(p.addr).or_default().push((holder, at));
                    }
                }
            }
        }
        // The harness's own check: every block the state reaches has a pointer to it, so
        // the repairs reach every decoder.
        for p in &children {
            assert!(parents.contains_key(&p.addr), "no pointer to block {} found", p.addr);
        }
        Base {
            image,
            objects,
            volumes,
            meta,
            parents,
        }
    }
}

struct World {
    /// The image file (unlinked), and its name through /proc/self/fd.
    file: std::fs::File,
    path: PathBuf,
    bases: [Base; 2],
}

fn options(read_only: bool) -> VdeOptions {
    VdeOptions {
        stripes: 4,
        lanes: 2,
        staging_bytes: 256 << 10,
        cache_blocks: 64,
        read_only,
        ..VdeOptions::default()
    }
}

fn device(path: &std::path::Path) -> Device {
    let o = OpenOptions {
        backend: Some(Backend::Psync),
        file_block_size: Some(4096),
        ..Default::default()
    };
    Device::open(path.to_str().expect("UTF-8 path"), &o).expect("open the image file")
}

fn value(key: &[u8], len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (xxh3_64(key) as usize).wrapping_add(i * 31) as u8)
        .collect()
}

/// What the base-building operations did, kept as the harness's model.
struct Model {
    objects: BTreeMap<Vec<u8>, Vec<u8>>,
    volumes: BTreeMap<String, Vec<u8>>,
}

impl Model {
    fn put(&mut self, vde: &Vde, key: &[u8], len: usize) {
        let v = value(key, len);
        vde.put(key, &v).expect("put");
        self.objects.insert(key.to_vec(), v);
    }
    fn write(&mut self, vde: &Vde, vol: &str, vblock: u64, blocks: u64) {
        let data: Vec<u8> = (0..blocks as usize * BLOCK)
            .map(|i| (vblock as usize * 7 + i / BLOCK * 13 + vol.len()) as u8 ^ (i as u8))
            .collect();
        vde.vol_write(vol, vblock, &data, true).expect("volume write");
        let at = vblock as usize * BLOCK;
        self.volumes.get_mut(vol).expect("a volume")[at..at + data.len()].copy_from_slice(&data);
    }
    fn unmap(&mut self, vde: &Vde, vol: &str, vblock: u64, blocks: u64) {
        vde.vol_unmap(vol, vblock, blocks).expect("deallocate");
        vde.vol_flush().expect("flush");
        let at = vblock as usize * BLOCK;
        self.volumes.get_mut(vol).expect("a volume")[at..at + blocks as usize * BLOCK].fill(0);
    }
    fn snapshot(&mut self, vde: &Vde, vol: &str, snap: &str) {
        vde.snap_create(vol, snap).expect("snapshot");
        let copy = self.volumes[vol].clone();
        self.volumes.insert(format!("{vol}@{snap}"), copy);
    }
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // tmpfs where there is one: the image is rewritten for every input.
        let dir = ["/dev/shm", "/tmp"]
            .iter()
            .map(PathBuf::from)
            .find(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let named = dir.join(format!("ironvme-fuzz-vde-{}.img", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&named)
            .expect("create the image file");
        file.set_len((IMAGE_BLOCKS * BLOCK) as u64)
            .expect("size the image file");
        // Nothing is left behind when the fuzzer exits: the store opens the file through
        // this process's descriptor.
        std::fs::remove_file(&named).expect("unlink the image file");
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let mut m = Model {
            objects: BTreeMap::new(),
            volumes: BTreeMap::new(),
        };
        let vde = Vde::format(device(&path), options(false)).expect("format");
        for (key, len) in [
            (&b"empty"[..], 0),
            (b"one", 1),
            (b"block", 4096),
            (b"more", 5000),
            (b"three", 9000),
        ] {
            m.put(&vde, key, len);
        }
        for i in 0..24 {
            let key = format!("{i:02}-{}", "k".repeat(237)).into_bytes();
            m.put(&vde, &key, 100 + i * 13);
        }
        vde.delete(b"one").expect("delete");
        m.objects.remove(&b"one"[..]);
        vde.vol_create("vol", VOL_BLOCKS * BLOCK as u64)
            .expect("create a volume");
        m.volumes.insert("vol".into(), vec![0; VOL_BLOCKS as usize * BLOCK]);
        m.write(&vde, "vol", 0, 8);
        m.write(&vde, "vol", 20, 3);
        m.snapshot(&vde, "vol", "s1");
        // Copy-on-write: a partial overwrite of the shared 8-block extent.
        m.write(&vde, "vol", 2, 2);
        m.unmap(&vde, "vol", 21, 1);
        vde.clone_snapshot("vol", "s1", "cl").expect("clone");
        let copy = m.volumes["vol@s1"].clone();
        m.volumes.insert("cl".into(), copy);
        m.write(&vde, "cl", 5, 4);
        m.put(&vde, b"more", 6000);
        vde.close().expect("close");
        let closed = Base::new(read_image(&file), m.objects.clone(), m.volumes.clone());
        // Durable operations left in the intent log: copy the file while the store is
        // open (they are acknowledged, so on the device, but not yet committed).
        let vde = Vde::open(device(&path), options(false)).expect("reopen");
        m.put(&vde, b"block", 7000);
        vde.delete(b"three").expect("delete");
        m.objects.remove(&b"three"[..]);
        m.put(&vde, b"new", 3000);
        m.write(&vde, "vol", 30, 2);
        m.write(&vde, "cl", 0, 1);
        m.snapshot(&vde, "vol", "s2");
        m.write(&vde, "vol", 31, 1);
        let logged = Base::new(read_image(&file), m.objects, m.volumes);
        drop(vde);
        let world = World {
            file,
            path,
            bases: [closed, logged],
        };
        for base in &world.bases {
            let vde = open(&world, &base.image, false).expect("an unmodified base image opens");
            for (k, v) in &base.objects {
                assert_eq!(vde.get(k).expect("an unmodified object reads back"), *v);
            }
            assert_eq!(vde.list(b"", None, 1000).unwrap().len(), base.objects.len());
            for (name, want) in &base.volumes {
                let mut got = vec![0u8; want.len()];
                vde.vol_read(name, 0, &mut got)
                    .expect("an unmodified volume reads back");
                assert!(got == *want, "{name} reads back other bytes");
            }
            assert_eq!(datasets(&vde).len(), base.volumes.len());
            let report = vde.fsck().expect("fsck");
            assert!(report.clean(), "{:?}", report.violations);
        }
        world
    })
}

fn read_image(file: &std::fs::File) -> Vec<u8> {
    let mut image = vec![0u8; IMAGE_BLOCKS * BLOCK];
    file.read_exact_at(&mut image, 0).expect("read the image");
    image
}

fn open(world: &World, image: &[u8], read_only: bool) -> Result<Vde, ironvme::vde::VdeError> {
    world.file.write_all_at(image, 0).expect("write the image");
    Vde::open(device(&world.path), options(read_only))
}

/// Up to 16 volumes and snapshots the store lists, with their sizes in blocks.
fn datasets(vde: &Vde) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    if let Ok(v) = vde.vol_list() {
        out.extend(v.into_iter().map(|d| (d.name, d.size / BLOCK as u64)));
    }
    if let Ok(s) = vde.snap_list(None) {
        out.extend(s.into_iter().map(|d| (d.name, d.size / BLOCK as u64)));
    }
    out.truncate(16);
    out
}

/// Reads the input a byte at a time; zero past the end.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.u8()))
    }
    fn block(&mut self) -> usize {
        usize::from(self.u16()) % IMAGE_BLOCKS
    }
    fn offset(&mut self) -> usize {
        usize::from(self.u16()) % BLOCK
    }
}

fn block_mut(image: &mut [u8], n: usize) -> &mut [u8; BLOCK] {
    (&mut image[n * BLOCK..(n + 1) * BLOCK]).try_into().expect("one block")
}

/// Recomputes block `n`'s checksum for the block number it sits at, keeping the kind,
/// level and birth its header claims and the tag of the base's store; returns the new
/// checksum (nothing if the kind is unknown).
fn reseal(image: &mut [u8], n: usize, tag: u64) -> Option<u64> {
    let b = block_mut(image, n);
    let kind = NodeKind::from_u16(get16(b, 4))?;
    let (level, birth) = (get16(b, 6), get64(b, 8));
    Some(seal(b, kind, level, birth, n as u64, tag).checksum)
}

/// Reseals block `n`, then every pointer the base had to it and the blocks holding them,
/// up to the superblocks.
fn reseal_up(image: &mut [u8], base: &Base, n: u64, tag: u64, depth: u32) {
    let Some(sum) = reseal(image, n as usize, tag) else {
        return;
    };
    if depth == 0 {
        return;
    }
    for &(holder, at) in base.parents.get(&n).into_iter().flatten() {
        put64(block_mut(image, holder as usize), at + 16, sum);
        reseal_up(image, base, holder, tag, depth - 1);
    }
}

/// Applies one edit from the input to the image.
fn edit(image: &mut [u8], b: &mut Bytes, base: &Base, tag: u64) {
    match b.u8() % 8 {
        0 => {
            let (blk, off, len) = (b.block(), b.offset(), usize::from(b.u8() % 32) + 1);
            for i in 0..len {
                let at = blk * BLOCK + off + i;
                if at < image.len() {
                    image[at] = b.u8();
                }
            }
        }
        1 => {
            let (blk, off, mask) = (b.block(), b.offset(), b.u8());
            image[blk * BLOCK + off] ^= mask.max(1);
        }
        2 => {
            let (src, dst) = (b.block(), b.block());
            image.copy_within(src * BLOCK..(src + 1) * BLOCK, dst * BLOCK);
        }
        3 => block_mut(image, b.block()).fill(0),
        4 => {
            reseal(image, b.block(), tag);
        }
        5 => {
            let n = base.meta[usize::from(b.u8()) % base.meta.len()];
            reseal_up(image, base, n, tag, 16);
        }
        6 => {
            let (blk, off, v) = (b.block(), b.offset() & !7, b.u64());
            put64(block_mut(image, blk), off.clamp(8, CHECKSUM_AT - 8), v);
        }
        _ => {
            // Edit a metadata block's payload, then make it and its ancestors verify.
            let n = base.meta[usize::from(b.u8()) % base.meta.len()];
            let off = HEADER + usize::from(b.u16()) % (CHECKSUM_AT - HEADER);
            let len = usize::from(b.u8() % 16) + 1;
            for i in 0..len.min(CHECKSUM_AT - off) {
                image[n as usize * BLOCK + off + i] = b.u8();
            }
            reseal_up(image, base, n, tag, 16);
        }
    }
}

/// Oracle 3 for objects: a successful `get(key) == got` is the image's bytes at the
/// extents `stat` names.
fn check_get(world: &World, vde: &Vde, key: &[u8], got: &[u8]) {
    let st = vde.stat(key).expect("stat of a key get just read");
    assert_eq!(got.len() as u64, st.size, "get returned another length than stat says");
    let mut want = Vec::new();
    for &(start, blocks) in &st.extents {
        let mut bytes = vec![0u8; blocks as usize * BLOCK];
        world
            .file
            .read_exact_at(&mut bytes, start * BLOCK as u64)
            .expect("a returned extent lies on the image");
        want.extend_from_slice(&bytes);
    }
    want.truncate(st.size as usize);
    assert!(
        got == want.as_slice(),
        "get({key:?}) returned bytes other than its extents'"
    );
}

/// Oracle 3 for volumes: reads the first blocks of `name` and, where the read succeeds,
/// checks it against the image at the planned pieces.
fn check_volume(world: &World, vde: &Vde, name: &str, blocks: u64) {
    let mut at = 0;
    while at < blocks.min(4 * READ_BLOCKS) {
        let n = (blocks - at).min(READ_BLOCKS);
        let mut got = vec![0u8; n as usize * BLOCK];
        let read = bounded(|| vde.vol_read(name, at, &mut got));
        let plan = bounded(|| vde.vol_read_plan(name, at, n));
        if let (Ok(()), Ok(plan)) = (read, plan) {
            for (v, len, piece) in plan {
                let off = ((v - at) as usize) * BLOCK;
                let dst = &got[off..off + len as usize * BLOCK];
                match piece {
                    None => assert!(dst.iter().all(|&x| x == 0), "{name} block {v}: a hole read as non-zero"),
                    Some(e) => {
                        let mut want = vec![0u8; dst.len()];
                        world
                            .file
                            .read_exact_at(&mut want, e.pba * BLOCK as u64)
                            .expect("a planned piece lies on the image");
                        assert!(
                            dst == want.as_slice(),
                            "{name} blocks {v}+{len}: bytes other than device blocks {}",
                            e.pba
                        );
                    }
                }
            }
        }
        at += n;
    }
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let mut b = Bytes(data);
    let first = b.u8();
    let base = &world.bases[usize::from(first & 1)];
    let read_only = first & 2 != 0;
    let mut image = base.image.clone();
    let tag = store_tag(image[80..96].try_into().expect("the superblock's UUID is 16 bytes"));
    let mut edits = 0;
    while !b.0.is_empty() && edits < 64 {
        edit(&mut image, &mut b, base, tag);
        edits += 1;
    }
    let Ok(vde) = bounded(|| open(world, &image, read_only)) else {
        return;
    };
    let mut keys: Vec<Vec<u8>> = bounded(|| vde.keys(b"").take(4096).map_while(Result::ok).collect());
    keys.extend(base.objects.keys().cloned());
    let mut read: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for key in &keys {
        if let Ok(got) = bounded(|| vde.get(key)) {
            check_get(world, &vde, key, &got);
            read.push((key.clone(), got));
        }
        let _ = bounded(|| vde.stat(key));
    }
    let sets = bounded(|| datasets(&vde));
    for (name, blocks) in &sets {
        check_volume(world, &vde, name, *blocks);
    }
    bounded(|| {
        let _ = vde.info();
        let _ = vde.fsck();
    });
    if !read_only {
        let _ = bounded(|| vde.put(b"fuzz-new", &[0x5a; 3 * BLOCK]));
        if let Some((name, _)) = sets.iter().find(|(n, _)| !n.contains('@')) {
            let _ = bounded(|| vde.vol_write(name, 1, &[0xa5; BLOCK], true));
        }
        for (key, before) in read.iter().filter(|(k, _)| k != b"fuzz-new") {
            if let Ok(got) = bounded(|| vde.get(key)) {
                assert!(
                    got == *before,
                    "{key:?} reads other bytes after a put and a volume write"
                );
            }
        }
    }
    bounded(|| drop(vde));
});
