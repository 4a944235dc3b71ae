//! Opening a VDE on an arbitrary image: superblocks, region directory, journal replay,
//! allocation maps, the key index (header, leaves, interior nodes) and inodes, then
//! listing, reading, `stat`, `info` and `fsck` whatever the image holds.
//!
//! # Images
//!
//! Random bytes almost never get past the superblock's checksum, so the fuzzer mutates a
//! real store instead. Two base images of 256 blocks (1 MiB, the smallest store) are made
//! once per process with the real `Vde::format`, `put` and `delete`: one checkpointed, and
//! one with three transactions still in the journal (copied from the file before the
//! store closed), so replay has work to do. Their keys include 24 of 240 bytes, enough for
//! an index of interior nodes over several leaves.
//!
//! The input picks a base (bit 0 of byte 0) and is then a list of edits applied to it (see
//! `edit`): byte writes, bit flips, whole-block copies (a misdirected or stale block) and
//! zeroed blocks, and "repairs" that recompute checksums as a buggy or malicious writer
//! would — a block's trailer, an inode block's extent checksums, the journal's descriptor,
//! image and commit checksums — so mutated structures get past the checksums and reach
//! the decoders behind them.
//!
//! # Oracles
//!
//! 1. Nothing panics (open, list, get, stat, info, fsck, close).
//! 2. Memory is bounded: a counting global allocator aborts the process when, while the
//!    store is being used, one allocation exceeds `MAX_ONE` (4 MiB) or the bytes live at
//!    once exceed `MAX_LIVE` (16 MiB) above what the harness held before. Everything a
//!    store keeps is bounded by the device — 1 MiB here — or by the options below (a
//!    64-block cache, 256 KiB staging buffers): the journal, the allocation maps, the
//!    largest object and the largest journal transaction (160 blocks) are all smaller than
//!    the whole image. An allocation 4× the size of the device can only come from trusting
//!    a length read from the image.
//! 3. A `get` returns exactly the bytes the image's checksums vouch for, or an error.
//!    The harness checks a successful `get(key)` against the image itself, with its own
//!    reading of the format rather than the store's code: `stat(key)` names the inode; the
//!    inode-table block holding it, read from the image file after open (open checkpoints,
//!    so the file holds every block the store uses), must carry a valid trailer (magic,
//!    kind, its own block number, xxh3-64 of the block) and the inode must be in use and
//!    name the key (its length and xxh3-64); each of its extents must lie on the image and
//!    hash to the xxh3-64 the inode records for it; and the returned bytes must be those
//!    extents' bytes, in order, cut to the inode's size. So even an image whose checksums
//!    were recomputed by the fuzzer can only make `get` return what those checksums cover.
//! 4. On the unmodified base images every object reads back as written and fsck is clean
//!    (checked once at start), so the harness cannot pass by opening nothing.

#![no_main]

use ironvme::vde::format::{
    BLOCK, INODE_SIZE, INODES_PER_BLOCK, Kind, PAYLOAD, TRAILER_MAGIC, get16, get32, get64, put64, seal,
};
use ironvme::vde::{Vde, VdeOptions};
use ironvme::{Backend, Device, OpenOptions};
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// 256 blocks of 4 KiB: the smallest store `Vde::format` makes.
const IMAGE_BLOCKS: usize = 256;

struct Base {
    image: Vec<u8>,
    objects: BTreeMap<Vec<u8>, Vec<u8>>,
}

struct World {
    /// The image file (unlinked), and its name through /proc/self/fd.
    file: std::fs::File,
    path: PathBuf,
    bases: [Base; 2],
}

fn options() -> VdeOptions {
    VdeOptions {
        stripes: 4,
        lanes: 2,
        staging_bytes: 256 << 10,
        cache_blocks: 64,
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
        let mut objects = BTreeMap::new();
        let vde = Vde::format(device(&path), 0, options()).expect("format");
        let put = |vde: &Vde, objects: &mut BTreeMap<Vec<u8>, Vec<u8>>, key: &[u8], len: usize| {
            let v = value(key, len);
            vde.put(key, &v).expect("put");
            objects.insert(key.to_vec(), v);
        };
        for (key, len) in [
            (&b"empty"[..], 0),
            (b"one", 1),
            (b"block", 4096),
            (b"more", 5000),
            (b"three", 9000),
        ] {
            put(&vde, &mut objects, key, len);
        }
        for i in 0..24 {
            let key = format!("{i:02}-{}", "k".repeat(237)).into_bytes();
            put(&vde, &mut objects, &key, 100 + i * 13);
        }
        vde.delete(b"one").expect("delete");
        objects.remove(&b"one"[..]);
        put(&vde, &mut objects, b"more", 6000);
        vde.close().expect("close");
        let checkpointed = Base {
            image: read_image(&file),
            objects: objects.clone(),
        };
        // Three transactions left in the journal: copy the file while the store is open.
        let vde = Vde::open(device(&path), options()).expect("reopen");
        put(&vde, &mut objects, b"block", 7000);
        vde.delete(b"three").expect("delete");
        objects.remove(&b"three"[..]);
        put(&vde, &mut objects, b"new", 3000);
        let journalled = Base {
            image: read_image(&file),
            objects,
        };
        drop(vde);
        let world = World {
            file,
            path,
            bases: [checkpointed, journalled],
        };
        for base in &world.bases {
            let vde = open(&world, &base.image).expect("an unmodified base image opens");
            for (k, v) in &base.objects {
                assert_eq!(vde.get(k).expect("an unmodified object reads back"), *v);
            }
            assert_eq!(vde.list(b"", None, 1000).unwrap().len(), base.objects.len());
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

fn open(world: &World, image: &[u8]) -> Result<Vde, ironvme::vde::VdeError> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&world.path)
        .expect("open the image");
    f.write_all_at(image, 0).expect("write the image");
    drop(f);
    Vde::open(device(&world.path), options())
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
        usize::from(self.u8()) % IMAGE_BLOCKS
    }
    fn offset(&mut self) -> usize {
        usize::from(self.u16()) % BLOCK
    }
}

fn block_mut(image: &mut [u8], n: usize) -> &mut [u8; BLOCK] {
    (&mut image[n * BLOCK..(n + 1) * BLOCK]).try_into().expect("one block")
}

/// Recomputes block `n`'s trailer checksum for the block number it sits at, keeping the
/// kind and generation it claims (nothing if the kind is unknown).
fn reseal(image: &mut [u8], n: usize) {
    let b = block_mut(image, n);
    if let Some(kind) = Kind::from_u32(get32(b, PAYLOAD + 4)) {
        let generation = get64(b, PAYLOAD + 8);
        seal(b, kind, generation, n as u64);
    }
}

/// Recomputes the extent checksums of every in-use inode in block `n` from the image, then
/// the block's trailer.
fn fix_inodes(image: &mut [u8], n: usize) {
    let snapshot = image.to_vec();
    let b = block_mut(image, n);
    for slot in 0..INODES_PER_BLOCK as usize {
        let s = &mut b[slot * INODE_SIZE..(slot + 1) * INODE_SIZE];
        if get32(s, 0) != 1 {
            continue;
        }
        for i in 0..usize::from(get16(s, 4)).min(30) {
            let w = get64(s, 32 + i * 16);
            let (start, blocks) = ((w & ((1 << 48) - 1)) as usize, (w >> 48) as usize + 1);
            if let Some(bytes) = snapshot.get(start * BLOCK..(start + blocks) * BLOCK) {
                put64(s, 40 + i * 16, xxh3_64(bytes));
            }
        }
    }
    reseal(image, n);
}

/// Makes every transaction in the journal (at `journal_start`, of `journal_blocks`)
/// self-consistent again: each image's checksum in its descriptor, the descriptor's
/// trailer, the commit record's descriptor hash and trailer.
fn fix_journal(image: &mut [u8], journal_start: usize, journal_blocks: usize) {
    let mut pos = 0;
    while pos + 2 <= journal_blocks {
        let at = journal_start + pos;
        let n = get32(block_mut(image, at), 8) as usize;
        if n == 0 || n > 160 || pos + n + 2 > journal_blocks || 32 + 16 * n > PAYLOAD {
            return;
        }
        for i in 0..n {
            let sum = xxh3_64(&image[(at + 1 + i) * BLOCK..(at + 2 + i) * BLOCK]);
            put64(block_mut(image, at), 32 + 16 * i + 8, sum);
        }
        let desc = block_mut(image, at);
        let generation = get64(desc, PAYLOAD + 8);
        seal(desc, Kind::JournalDescriptor, generation, at as u64);
        let desc_sum = xxh3_64(&desc[..]);
        let commit = block_mut(image, at + n + 1);
        put64(commit, 16, desc_sum);
        let generation = get64(commit, PAYLOAD + 8);
        seal(commit, Kind::JournalCommit, generation, (at + n + 1) as u64);
        pos += n + 2;
    }
}

/// Applies one edit from the input to the image.
fn edit(image: &mut [u8], b: &mut Bytes, journal: (usize, usize)) {
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
        4 => reseal(image, b.block()),
        5 => fix_inodes(image, b.block()),
        6 => fix_journal(image, journal.0, journal.1),
        _ => {
            let (blk, off, v) = (b.block(), b.offset() & !7, b.u64());
            put64(block_mut(image, blk), off.min(PAYLOAD - 8), v);
        }
    }
}

/// The oracle of a successful `get(key) == got`, from the image file alone (module docs).
fn check_get(world: &World, vde: &Vde, key: &[u8], got: &[u8]) {
    let st = vde.stat(key).expect("stat of a key get just read");
    assert_eq!(got.len() as u64, st.size, "get returned another length than stat says");
    let inodes = vde.info().expect("info").layout.inodes;
    let blockno = inodes.start + st.inode / INODES_PER_BLOCK;
    let file = &world.file;
    let mut b = [0u8; BLOCK];
    file.read_exact_at(&mut b, blockno * BLOCK as u64)
        .expect("read the inode block");
    assert_eq!(get32(&b, PAYLOAD), TRAILER_MAGIC, "inode block {blockno}: no trailer");
    assert_eq!(
        get32(&b, PAYLOAD + 4),
        Kind::Inodes as u32,
        "block {blockno} is no inode block"
    );
    assert_eq!(get64(&b, PAYLOAD + 16), blockno, "inode block {blockno} is misdirected");
    assert_eq!(
        get64(&b, BLOCK - 8),
        xxh3_64(&b[..BLOCK - 8]),
        "inode block {blockno}: bad checksum"
    );
    let at = (st.inode % INODES_PER_BLOCK) as usize * INODE_SIZE;
    let slot = &b[at..at + INODE_SIZE];
    assert_eq!(get32(slot, 0), 1, "inode {} is not in use", st.inode);
    assert_eq!(
        usize::from(get16(slot, 6)),
        key.len(),
        "inode {} has another key length",
        st.inode
    );
    assert_eq!(
        get64(slot, 24),
        xxh3_64(key),
        "inode {} belongs to another key",
        st.inode
    );
    assert_eq!(get64(slot, 8), st.size, "inode {} records another size", st.inode);
    let n = usize::from(get16(slot, 4));
    assert_eq!(n, st.extents.len(), "inode {}: extent count", st.inode);
    let mut want = Vec::new();
    for (i, &(start, blocks)) in st.extents.iter().enumerate() {
        let w = get64(slot, 32 + i * 16);
        assert_eq!(
            (w & ((1 << 48) - 1), (w >> 48) + 1),
            (start, blocks),
            "inode {} extent {i}",
            st.inode
        );
        let mut bytes = vec![0u8; blocks as usize * BLOCK];
        file.read_exact_at(&mut bytes, start * BLOCK as u64)
            .expect("a returned extent lies on the image");
        assert_eq!(
            xxh3_64(&bytes),
            get64(slot, 40 + i * 16),
            "extent {i} of {key:?} does not match its checksum"
        );
        want.extend_from_slice(&bytes);
    }
    want.truncate(st.size as usize);
    assert!(
        got == want.as_slice(),
        "get({key:?}) returned bytes other than the checksummed extents"
    );
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let mut b = Bytes(data);
    let base = &world.bases[usize::from(b.u8() & 1)];
    let mut image = base.image.clone();
    // The journal region as the base was formatted (the directory may be edited too).
    let dir = &base.image[2 * BLOCK..3 * BLOCK];
    let journal = (get64(dir, 16 + 8) as usize, get64(dir, 16 + 16) as usize);
    let mut edits = 0;
    while !b.0.is_empty() && edits < 64 {
        edit(&mut image, &mut b, journal);
        edits += 1;
    }
    let Ok(vde) = bounded(|| open(world, &image)) else {
        return;
    };
    let mut keys: Vec<Vec<u8>> = bounded(|| vde.keys(b"").take(4096).map_while(Result::ok).collect());
    keys.extend(base.objects.keys().cloned());
    for key in &keys {
        if let Ok(got) = bounded(|| vde.get(key)) {
            check_get(world, &vde, key, &got);
        }
        let _ = bounded(|| vde.stat(key));
    }
    bounded(|| {
        let _ = vde.info();
        let _ = vde.fsck();
        drop(vde);
    });
});
