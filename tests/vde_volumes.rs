//! Format 2's volumes, snapshots and clones on the host: a model-based property test
//! against an in-memory model (objects, volume writes, reads, zeroes, deallocates,
//! snapshots, clones, rollbacks, deletes and reopens) on psync and io_uring over files,
//! and the space tests: a snapshot overwritten then deleted returns to one copy, and
//! thousands of snapshot create/delete cycles leak nothing.

use ironvme::vde::{Vde, VdeError, VdeOptions};
use ironvme::{Backend, Device, OpenOptions};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

const BS: usize = 4096;

struct Disk {
    _dir: tempfile::TempDir,
    path: PathBuf,
    backend: Backend,
}

impl Disk {
    fn new(backend: Backend, mib: u64) -> Disk {
        // /dev/shm keeps the many fdatasyncs of these tests cheap.
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let path = dir.path().join("vde.img");
        std::fs::File::create(&path).unwrap().set_len(mib << 20).unwrap();
        Disk {
            _dir: dir,
            path,
            backend,
        }
    }

    fn device(&self) -> Device {
        let o = OpenOptions {
            backend: Some(self.backend),
            file_block_size: Some(4096),
            ..Default::default()
        };
        Device::open(self.path.to_str().unwrap(), &o).unwrap()
    }

    fn format(&self) -> Vde {
        Vde::format(self.device(), VdeOptions::default()).unwrap()
    }

    fn open(&self) -> Vde {
        Vde::open(self.device(), VdeOptions::default()).unwrap()
    }
}

/// The bytes of volume block `vblock` written with `seed` (0: never written, zeros).
fn block_bytes(seed: u32, vblock: u64) -> Vec<u8> {
    if seed == 0 {
        return vec![0; BS];
    }
    let mut x = (seed as u64) << 32 ^ vblock ^ 0x9E37_79B9_7F4A_7C15;
    (0..BS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn object_bytes(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as u8)
        .collect()
}

#[derive(Clone, Debug)]
enum Step {
    Put { key: u8, len: usize, seed: u32 },
    Delete { key: u8 },
    Write { vol: u8, at: u64, n: u64, seed: u32 },
    Unmap { vol: u8, at: u64, n: u64 },
    Flush,
    Snap { vol: u8 },
    SnapRm { vol: u8, which: u8 },
    Clone { vol: u8, which: u8 },
    Rollback { vol: u8 },
    VolRm { vol: u8 },
    Create { vol: u8 },
    Reopen,
}

const VOL_BLOCKS: u64 = 96;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..12, 0usize..40_000, 1u32..1000).prop_map(|(key, len, seed)| Step::Put { key, len, seed }),
        1 => (0u8..12).prop_map(|key| Step::Delete { key }),
        8 => (0u8..4, 0..VOL_BLOCKS, 1u64..40, 1u32..1000).prop_map(|(vol, at, n, seed)| Step::Write { vol, at, n, seed }),
        2 => (0u8..4, 0..VOL_BLOCKS, 1u64..40).prop_map(|(vol, at, n)| Step::Unmap { vol, at, n }),
        1 => Just(Step::Flush),
        2 => (0u8..4).prop_map(|vol| Step::Snap { vol }),
        1 => (0u8..4, 0u8..8).prop_map(|(vol, which)| Step::SnapRm { vol, which }),
        1 => (0u8..4, 0u8..8).prop_map(|(vol, which)| Step::Clone { vol, which }),
        1 => (0u8..4).prop_map(|vol| Step::Rollback { vol }),
        1 => (0u8..4).prop_map(|vol| Step::VolRm { vol }),
        1 => (0u8..4).prop_map(|vol| Step::Create { vol }),
        1 => Just(Step::Reopen),
    ]
}

/// A volume in the model: the seed of each written block, and its snapshots oldest
/// first (name, blocks, clones made from it).
#[derive(Clone, Default)]
struct VolModel {
    blocks: HashMap<u64, u32>,
    snaps: Vec<(String, HashMap<u64, u32>, u32)>,
    origin: Option<(String, String)>,
}

#[derive(Default)]
struct Model {
    objects: BTreeMap<Vec<u8>, Vec<u8>>,
    vols: BTreeMap<String, VolModel>,
    next_snap: u32,
    next_clone: u32,
}

fn vol_name(v: u8) -> String {
    format!("vol{v}")
}

fn check_volume(vde: &Vde, name: &str, want: &HashMap<u64, u32>) {
    let mut buf = vec![0u8; VOL_BLOCKS as usize * BS];
    vde.vol_read(name, 0, &mut buf).unwrap();
    for b in 0..VOL_BLOCKS {
        let seed = want.get(&b).copied().unwrap_or(0);
        assert!(
            buf[b as usize * BS..(b as usize + 1) * BS] == block_bytes(seed, b)[..],
            "{name} block {b}: expected seed {seed}"
        );
    }
}

fn check_all(vde: &Vde, m: &Model) {
    for (k, v) in &m.objects {
        assert_eq!(&vde.get(k).unwrap(), v, "object {k:?}");
    }
    let keys: Vec<Vec<u8>> = vde.keys(b"").map(|k| k.unwrap()).collect();
    assert_eq!(keys, m.objects.keys().cloned().collect::<Vec<_>>());
    let vols: Vec<String> = vde.vol_list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(vols, m.vols.keys().cloned().collect::<Vec<_>>());
    for (name, v) in &m.vols {
        check_volume(vde, name, &v.blocks);
        for (s, blocks, _) in &v.snaps {
            check_volume(vde, &format!("{name}@{s}"), blocks);
        }
    }
}

fn run(backend: Backend, steps: &[Step]) {
    let disk = Disk::new(backend, 64);
    let mut vde = Some(disk.format());
    let mut m = Model::default();
    for s in steps {
        let v = vde.as_ref().unwrap();
        match s.clone() {
            Step::Put { key, len, seed } => {
                let k = format!("k{key}").into_bytes();
                let data = object_bytes(seed, len);
                v.put(&k, &data).unwrap();
                m.objects.insert(k, data);
            }
            Step::Delete { key } => {
                let k = format!("k{key}").into_bytes();
                match (v.delete(&k), m.objects.remove(&k)) {
                    (Ok(()), Some(_)) | (Err(VdeError::NotFound(_)), None) => {}
                    (r, w) => panic!("delete {k:?}: {r:?}, model had {}", w.is_some()),
                }
            }
            Step::Create { vol } => {
                let name = vol_name(vol);
                let r = v.vol_create(&name, VOL_BLOCKS * BS as u64);
                match m.vols.entry(name) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        assert!(matches!(r, Err(VdeError::Exists(_))), "{r:?}")
                    }
                    std::collections::btree_map::Entry::Vacant(e) => {
                        r.unwrap();
                        e.insert(VolModel::default());
                    }
                }
            }
            Step::Write { vol, at, n, seed } => {
                let name = vol_name(vol);
                let n = n.min(VOL_BLOCKS - at);
                let data: Vec<u8> = (at..at + n).flat_map(|b| block_bytes(seed, b)).collect();
                let r = v.vol_write(&name, at, &data, false);
                match m.vols.get_mut(&name) {
                    Some(mv) => {
                        r.unwrap();
                        for b in at..at + n {
                            mv.blocks.insert(b, seed);
                        }
                    }
                    None => assert!(matches!(r, Err(VdeError::NotFound(_))), "{r:?}"),
                }
            }
            Step::Unmap { vol, at, n } => {
                let name = vol_name(vol);
                let n = n.min(VOL_BLOCKS - at);
                let r = v.vol_unmap(&name, at, n);
                match m.vols.get_mut(&name) {
                    Some(mv) => {
                        r.unwrap();
                        for b in at..at + n {
                            mv.blocks.remove(&b);
                        }
                    }
                    None => assert!(r.is_err()),
                }
            }
            Step::Flush => v.vol_flush().unwrap(),
            Step::Snap { vol } => {
                let name = vol_name(vol);
                m.next_snap += 1;
                let snap = format!("s{}", m.next_snap);
                let r = v.snap_create(&name, &snap);
                match m.vols.get_mut(&name) {
                    Some(mv) => {
                        r.unwrap();
                        let blocks = mv.blocks.clone();
                        mv.snaps.push((snap, blocks, 0));
                    }
                    None => assert!(r.is_err()),
                }
            }
            Step::SnapRm { vol, which } => {
                let name = vol_name(vol);
                let Some(mv) = m.vols.get_mut(&name) else { continue };
                if mv.snaps.is_empty() {
                    continue;
                }
                let i = which as usize % mv.snaps.len();
                let r = v.snap_remove(&name, &mv.snaps[i].0);
                if mv.snaps[i].2 > 0 {
                    assert!(matches!(r, Err(VdeError::Unsupported(_))), "{r:?}");
                } else {
                    r.unwrap();
                    mv.snaps.remove(i);
                }
            }
            Step::Clone { vol, which } => {
                let name = vol_name(vol);
                let Some(mv) = m.vols.get_mut(&name) else { continue };
                if mv.snaps.is_empty() {
                    continue;
                }
                let i = which as usize % mv.snaps.len();
                m.next_clone += 1;
                let new = format!("clone{}", m.next_clone);
                v.clone_snapshot(&name, &mv.snaps[i].0, &new).unwrap();
                mv.snaps[i].2 += 1;
                let blocks = mv.snaps[i].1.clone();
                let origin = Some((name.clone(), mv.snaps[i].0.clone()));
                m.vols.insert(
                    new,
                    VolModel {
                        blocks,
                        snaps: Vec::new(),
                        origin,
                    },
                );
            }
            Step::Rollback { vol } => {
                let name = vol_name(vol);
                let Some(mv) = m.vols.get_mut(&name) else { continue };
                let Some((snap, blocks, _)) = mv.snaps.last().cloned() else {
                    continue;
                };
                v.rollback(&name, &snap).unwrap();
                mv.blocks = blocks;
            }
            Step::VolRm { vol } => {
                let name = vol_name(vol);
                let Some(mv) = m.vols.get(&name) else { continue };
                let r = v.vol_remove(&name, true);
                if mv.snaps.iter().any(|s| s.2 > 0) {
                    // Refused whole: nothing was deleted.
                    assert!(matches!(r, Err(VdeError::Unsupported(_))), "{r:?}");
                } else {
                    r.unwrap();
                    let origin = m.vols.remove(&name).unwrap().origin;
                    if let Some((ov, os)) = origin
                        && let Some(o) = m.vols.get_mut(&ov)
                        && let Some(s) = o.snaps.iter_mut().find(|s| s.0 == os)
                    {
                        s.2 -= 1;
                    }
                }
            }
            Step::Reopen => {
                vde.take().unwrap().close().unwrap();
                vde = Some(disk.open());
                check_all(vde.as_ref().unwrap(), &m);
            }
        }
    }
    let v = vde.take().unwrap();
    check_all(&v, &m);
    let r = v.fsck().unwrap();
    assert!(r.clean(), "{:?}", r.violations);
    v.close().unwrap();
    let v = disk.open();
    check_all(&v, &m);
    let r = v.fsck().unwrap();
    assert!(r.clean(), "{:?}", r.violations);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn volumes_snapshots_and_clones_match_the_model_on_psync(steps in prop::collection::vec(step(), 1..120)) {
        run(Backend::Psync, &steps);
    }

    #[test]
    fn volumes_snapshots_and_clones_match_the_model_on_io_uring(steps in prop::collection::vec(step(), 1..80)) {
        run(Backend::Uring, &steps);
    }
}

#[test]
fn a_snapshot_overwritten_then_deleted_returns_to_one_copy() {
    let disk = Disk::new(Backend::Psync, 64);
    let v = disk.format();
    let blocks = 512u64; // 2 MiB
    v.vol_create("v", blocks * BS as u64).unwrap();
    let data: Vec<u8> = (0..blocks).flat_map(|b| block_bytes(1, b)).collect();
    v.vol_write("v", 0, &data, false).unwrap();
    v.checkpoint().unwrap();
    let one_copy = v.info().unwrap().used_blocks;
    v.snap_create("v", "s").unwrap();
    let data2: Vec<u8> = (0..blocks).flat_map(|b| block_bytes(2, b)).collect();
    v.vol_write("v", 0, &data2, false).unwrap();
    v.checkpoint().unwrap();
    let two_copies = v.info().unwrap().used_blocks;
    assert!(two_copies >= one_copy + blocks, "{two_copies} < {one_copy} + {blocks}");
    let snaps = v.snap_list(Some("v")).unwrap();
    assert_eq!(snaps[0].used, blocks * BS as u64, "the snapshot's unique bytes");
    v.snap_remove("v", "s").unwrap();
    v.checkpoint().unwrap();
    // Deferred frees are handed back after two more commits.
    v.checkpoint().unwrap();
    v.checkpoint().unwrap();
    let after = v.info().unwrap().used_blocks;
    // Tree nodes differ a little; data is one copy again.
    assert!(
        after < one_copy + blocks / 16,
        "{after} blocks used; one copy was {one_copy}"
    );
    let r = v.fsck().unwrap();
    assert!(r.clean(), "{:?}", r.violations);
}

#[test]
fn thousands_of_snapshot_cycles_with_writes_leak_nothing() {
    let cycles: u32 = std::env::var("IRONVME_SNAPSHOT_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let disk = Disk::new(Backend::Psync, 64);
    let v = disk.format();
    v.vol_create("v", 256 * BS as u64).unwrap();
    for c in 0..cycles {
        let at = (c as u64 * 7) % 250;
        let data: Vec<u8> = (at..at + 3).flat_map(|b| block_bytes(c + 1, b)).collect();
        v.vol_write("v", at, &data, false).unwrap();
        v.snap_create("v", "s").unwrap();
        let data: Vec<u8> = (at..at + 2).flat_map(|b| block_bytes(c + 7, b)).collect();
        v.vol_write("v", at + 1, &data, false).unwrap();
        v.snap_remove("v", "s").unwrap();
        if c % 500 == 499 {
            let r = v.fsck().unwrap();
            assert!(r.clean(), "cycle {c}: {:?}", r.violations);
        }
    }
    let r = v.fsck().unwrap();
    assert!(r.clean(), "{:?}", r.violations);
    let listed = v.vol_list().unwrap();
    assert_eq!(listed[0].used, listed[0].refer, "no snapshot holds anything");
}

/// Snapshot deletes, clones, rollbacks and snapshot creates from threads at once, with a
/// writer overwriting the volume in between: each of them reads the snapshot list and
/// acts on it, so without one lock over the whole operation a delete could miss a clone
/// made meanwhile (and free blocks the clone shares), or merge a deleted snapshot into the
/// wrong successor. Every clone must then read without error, and fsck be clean.
#[test]
fn snapshot_deletes_clones_and_rollbacks_from_threads_at_once_free_nothing_in_use() {
    let rounds: u32 = std::env::var("IRONVME_TOPOLOGY_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let disk = Disk::new(Backend::Psync, 128);
    let v = disk.format();
    let blocks = 64u64;
    v.vol_create("v", blocks * BS as u64).unwrap();
    let data: Vec<u8> = (0..blocks).flat_map(|b| block_bytes(1, b)).collect();
    v.vol_write("v", 0, &data, false).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let clones = std::sync::Mutex::new(Vec::<String>::new());
    let target = std::sync::atomic::AtomicU32::new(u32::MAX);
    std::thread::scope(|s| {
        // The writer: overwrites, so snapshots own blocks the volume no longer holds.
        s.spawn(|| {
            let mut i = 2u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let at = (i as u64 * 5) % (blocks - 4);
                let d: Vec<u8> = (at..at + 4).flat_map(|b| block_bytes(i, b)).collect();
                v.vol_write("v", at, &d, false).unwrap();
                i += 1;
            }
        });
        // Cloners: clone the snapshot the snapshotter is about to delete, as fast as
        // they can.
        for t in 0..2 {
            let (v, clones, stop, target) = (&v, &clones, &stop, &target);
            s.spawn(move || {
                let mut j = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && j < 300 {
                    let snap = format!("s{}", target.load(std::sync::atomic::Ordering::Relaxed));
                    let name = format!("c{t}-{j}");
                    match v.clone_snapshot("v", &snap, &name) {
                        Ok(()) => {
                            clones.lock().unwrap().push(name);
                            j += 1;
                        }
                        Err(VdeError::NotFound(_)) => {}
                        Err(e) => panic!("clone of v@{snap}: {e}"),
                    }
                }
            });
        }
        // The snapshotter: creates one, deletes every older one it can (a snapshot with
        // clones is refused), and now and then rolls back.
        // (Until a clone exists, within bounds: the test is about them.)
        let mut r = 0;
        while r < rounds || (clones.lock().unwrap().is_empty() && r < 20 * rounds) {
            v.snap_create("v", &format!("s{r}")).unwrap();
            for old in v.snap_list(Some("v")).unwrap().iter().rev().skip(1) {
                let snap = old.name.split_once('@').unwrap().1;
                target.store(snap[1..].parse().unwrap(), std::sync::atomic::Ordering::Relaxed);
                match v.snap_remove("v", snap) {
                    Ok(()) | Err(VdeError::Unsupported(_)) => {}
                    Err(e) => panic!("snap rm {}: {e}", old.name),
                }
            }
            if r % 10 == 5 {
                v.rollback("v", &format!("s{r}")).unwrap();
            }
            r += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let clones = clones.into_inner().unwrap();
    assert!(!clones.is_empty(), "the test made no clone");
    let mut buf = vec![0u8; blocks as usize * BS];
    for c in &clones {
        v.vol_read(c, 0, &mut buf).unwrap_or_else(|e| panic!("clone {c}: {e}"));
    }
    v.vol_read("v", 0, &mut buf).unwrap();
    let r = v.fsck().unwrap();
    assert!(r.clean(), "{} clones: {:?}", clones.len(), r.violations);
}

/// A Deallocate of more than one step (`UNMAP_STEP` blocks) of a volume with data spread
/// over it goes in steps, each its own record: the whole range reads as zeros, before and
/// after a reopen whose replay applies those records, and fsck is clean. A shrink across
/// several steps likewise.
#[test]
fn a_deallocate_of_many_steps_frees_the_whole_range() {
    use ironvme::vde::dataset::UNMAP_STEP;
    let disk = Disk::new(Backend::Psync, 64);
    let v = disk.format();
    let blocks = 3 * UNMAP_STEP + 5;
    v.vol_create("v", blocks * BS as u64).unwrap();
    for b in (0..blocks).step_by(997) {
        v.vol_write("v", b, &block_bytes(3, b), false).unwrap();
    }
    v.vol_flush().unwrap();
    let used = v.info().unwrap().used_blocks;
    v.vol_unmap("v", 1, blocks - 1).unwrap();
    v.vol_flush().unwrap();
    let check = |v: &Vde| {
        let mut buf = vec![0u8; 1024 * BS];
        for at in (0..blocks).step_by(1024) {
            let n = (blocks - at).min(1024) as usize;
            v.vol_read("v", at, &mut buf[..n * BS]).unwrap();
            let want_first = if at == 0 { block_bytes(3, 0) } else { vec![0; BS] };
            assert!(buf[..BS] == want_first[..], "block {at}");
            assert!(buf[BS..n * BS].iter().all(|&x| x == 0), "blocks {at}+{n}");
        }
    };
    check(&v);
    // The image as a crash would leave it (the store still open, the unmap's records
    // durable in the intent log, not committed): they replay.
    let crashed = Disk::new(Backend::Psync, 64);
    std::fs::copy(&disk.path, &crashed.path).unwrap();
    check(&crashed.open());
    drop(v);
    let v = disk.open();
    check(&v);
    v.vol_resize("v", 4096 * BS as u64).unwrap();
    v.vol_resize("v", blocks * BS as u64).unwrap();
    check(&v);
    v.checkpoint().unwrap();
    v.checkpoint().unwrap();
    v.checkpoint().unwrap();
    assert!(v.info().unwrap().used_blocks < used, "space came back");
    let r = v.fsck().unwrap();
    assert!(r.clean(), "{:?}", r.violations);
}

/// A write in flight (blocks reserved and written, not yet mapped) whose volume is
/// removed meanwhile fails with NotFound, hands its blocks back, and leaves the store
/// usable (it used to poison it).
#[test]
fn a_write_to_a_volume_removed_meanwhile_fails_alone() {
    let disk = Disk::new(Backend::Psync, 64);
    let v = disk.format();
    v.vol_create("v", 64 * BS as u64).unwrap();
    v.vol_create("w", 64 * BS as u64).unwrap();
    let runs = v.vol_write_begin("v", 0, 4).unwrap();
    let written = runs.iter().map(|&(s, n)| (s, n, vec![0u64; n as usize])).collect();
    v.vol_remove("v", false).unwrap();
    assert!(matches!(
        v.vol_write_end("v", 0, written, false),
        Err(VdeError::NotFound(_))
    ));
    v.vol_write("w", 0, &block_bytes(1, 0), true).unwrap();
    v.put(b"k", b"still writable").unwrap();
    let r = v.fsck().unwrap();
    assert!(r.clean(), "{:?}", r.violations);
}
