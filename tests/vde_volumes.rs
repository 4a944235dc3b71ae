//! Format 2's volumes, snapshots and clones on the host: the model-based property test
//! (`tests/vde_model`, shared with `tests/guest_vde.rs`: objects, volume writes, reads,
//! zeroes, deallocates, snapshots, clones, rollbacks, deletes and reopens) on psync and
//! io_uring over files, and the space tests: a snapshot overwritten then deleted returns
//! to one copy, and 10,000 snapshot create/delete cycles with writes in between leak
//! nothing (fsck checks every count).

mod vde_model;

use ironvme::block::{BlockQueue, IoError, Op, run_one};
use ironvme::nvme::status::Status;
use ironvme::vde::volume::{VolumeDevice, VolumeSpec};
use ironvme::vde::{Vde, VdeError, VdeOptions};
use ironvme::{Backend, Device, OpenOptions};
use proptest::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vde_model::{BS, Step, block_bytes};

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

    fn options(&self) -> OpenOptions {
        OpenOptions {
            backend: Some(self.backend),
            file_block_size: Some(4096),
            ..Default::default()
        }
    }

    fn device(&self) -> Device {
        Device::open(self.path.to_str().unwrap(), &self.options()).unwrap()
    }

    fn format(&self) -> Vde {
        Vde::format(self.device(), VdeOptions::default()).unwrap()
    }

    fn open(&self) -> Vde {
        Vde::open(self.device(), VdeOptions::default()).unwrap()
    }
}

fn run(backend: Backend, steps: &[Step]) {
    let disk = Disk::new(backend, 64);
    vde_model::run(&|| disk.format(), &|| disk.open(), steps);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn volumes_snapshots_and_clones_match_the_model_on_psync(steps in vde_model::steps(120)) {
        run(Backend::Psync, &steps);
    }

    #[test]
    fn volumes_snapshots_and_clones_match_the_model_on_io_uring(steps in vde_model::steps(80)) {
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

/// 10,000 cycles (`IRONVME_SNAPSHOT_CYCLES` sets another number) of: write, snapshot,
/// overwrite part of what was written, delete the snapshot; fsck every 500 cycles and at
/// the end, and the volume uses exactly what it references.
#[test]
fn ten_thousand_snapshot_cycles_with_writes_leak_nothing() {
    let cycles: u32 = std::env::var("IRONVME_SNAPSHOT_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
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

/// Volume block `vblock` as written in round `round`: the round in its first 8 bytes, the
/// rest [`block_bytes`] of both, so a read says which round it saw.
fn stamped(round: u64, vblock: u64) -> Vec<u8> {
    let mut b = block_bytes(round as u32, vblock);
    b[..8].copy_from_slice(&round.to_le_bytes());
    b
}

/// The round `b` was written in if it is block `vblock` of one (0: unwritten, zeros).
fn round_of(b: &[u8], vblock: u64) -> Option<u64> {
    if b.iter().all(|&x| x == 0) {
        return Some(0);
    }
    let round = u64::from_le_bytes(b[..8].try_into().unwrap());
    (round > 0 && round < u32::MAX as u64 && b == stamped(round, vblock)).then_some(round)
}

/// A read planned (its blocks looked up) before a concurrent overwrite or Deallocate
/// freed those blocks and another write reused them must still return data the volume
/// held, not fail its checksum as an Unrecovered Read Error.
///
/// One thread overwrites every block of volume `v` per round (and deallocates one),
/// committing after each round; another writes volume `w` without pause; both reuse the
/// blocks the overwrites free (a 2 MiB store: next-fit allocation comes round to them
/// within 20 rounds). The reader submits a read of each block of `v` to a volume queue on psync,
/// which plans it at submission, and rings only after several rounds have freed and
/// reused the planned blocks; then it reads the whole volume with `vol_read`. Every read
/// must succeed and return, for every block, one of the rounds written.
#[test]
fn a_read_whose_block_was_freed_and_reused_meanwhile_reads_the_current_data() {
    const BLOCKS: u64 = 16;
    const READS: usize = 24;
    /// Rounds of overwrites between a read's plan and its data transfer.
    const ROUNDS_BETWEEN: u64 = 20;
    let disk = Disk::new(Backend::Psync, 2);
    {
        let vde = disk.format();
        for name in ["v", "w"] {
            vde.vol_create(name, BLOCKS * BS as u64).unwrap();
        }
        let data: Vec<u8> = (0..BLOCKS).flat_map(|b| stamped(1, b)).collect();
        vde.vol_write("v", 0, &data, false).unwrap();
        vde.close().unwrap();
    }
    let spec = VolumeSpec::parse(&format!("vde:{}:v", disk.path.display()))
        .unwrap()
        .unwrap();
    let dev = VolumeDevice::open(&spec, &disk.options()).unwrap();
    let store = Arc::clone(dev.store());
    // The last round written to `v` whole.
    let round = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let overwriter = {
        let (store, round, stop) = (Arc::clone(&store), Arc::clone(&round), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut r = 1;
            while !stop.load(Ordering::Relaxed) {
                r += 1;
                for b in 0..BLOCKS {
                    store.vol_write("v", b, &stamped(r, b), false).unwrap();
                }
                store.vol_unmap("v", r % BLOCKS, 1).unwrap();
                store.checkpoint().unwrap();
                round.store(r, Ordering::Release);
            }
        })
    };
    let other = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut r = 1;
            while !stop.load(Ordering::Relaxed) {
                r += 1;
                let at = (r * 4) % BLOCKS;
                let data: Vec<u8> = (at..at + 4).flat_map(|b| stamped(r, b)).collect();
                store.vol_write("w", at, &data, false).unwrap();
                // Frees come back with commits; a store this small cannot hold many.
                if r % 8 == 0 {
                    store.checkpoint().unwrap();
                }
            }
        })
    };
    // `written`: the last whole round when the read completed; the next may be under way.
    let check = |what: &str, b: u64, bytes: &[u8], written: u64| {
        let r = round_of(bytes, b).unwrap_or_else(|| panic!("{what}: block {b} holds bytes no round wrote"));
        assert!(
            r <= written + 1,
            "{what}: block {b} from round {r}, after round {written}"
        );
    };
    let mut q = dev.create_queue(BLOCKS as usize).unwrap();
    let dma = dev.device().dma();
    let mut bufs: Vec<_> = (0..BLOCKS).map(|_| Some(dma.allocate(BS).unwrap())).collect();
    let mut whole = vec![0u8; BLOCKS as usize * BS];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failed = Vec::new();
    'reads: for i in 0..READS {
        for b in 0..BLOCKS {
            q.submit(Op::Read { lba: b }, bufs[b as usize].take(), b).unwrap();
        }
        let planned = round.load(Ordering::Acquire);
        while round.load(Ordering::Acquire) < planned + ROUNDS_BETWEEN {
            // A writer that failed has said why; its join below fails the test.
            if overwriter.is_finished() || other.is_finished() {
                break 'reads;
            }
            assert!(Instant::now() < deadline, "the overwriter stalled");
            std::thread::sleep(Duration::from_micros(200));
        }
        q.ring().unwrap();
        let mut ok = [false; BLOCKS as usize];
        let mut done = 0;
        while done < BLOCKS {
            done += q.poll(BLOCKS as usize, |c| {
                match c.result {
                    Ok(()) => ok[c.tag as usize] = true,
                    Err(e) => failed.push(format!("read {i}, block {}: {e}", c.tag)),
                }
                bufs[c.tag as usize] = c.buf;
            }) as u64;
        }
        let written = round.load(Ordering::Acquire);
        for (b, buf) in bufs.iter().enumerate().filter(|(b, _)| ok[*b]) {
            let buf = buf.as_ref().expect("the queue gave the buffer back");
            check(&format!("queued read {i}"), b as u64, buf.as_slice(), written);
        }
        store
            .vol_read("v", 0, &mut whole)
            .unwrap_or_else(|e| panic!("vol_read {i}: {e}"));
        let written = round.load(Ordering::Acquire);
        for (b, bytes) in whole.chunks(BS).enumerate() {
            check(&format!("vol_read {i}"), b as u64, bytes, written);
        }
    }
    stop.store(true, Ordering::Relaxed);
    overwriter.join().unwrap();
    other.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} queued reads failed: {failed:#?}",
        failed.len(),
        READS as u64 * BLOCKS
    );
    let r = store.fsck().unwrap();
    assert!(r.clean(), "{:?}", r.violations);
}

/// Re-planning a read does not hide real damage: a volume block whose bytes changed on
/// the device (its extent unchanged) fails `vol_read` naming the block, and a read
/// through the volume queue with Unrecovered Read Error.
#[test]
fn a_damaged_volume_block_still_fails_its_reads() {
    let disk = Disk::new(Backend::Psync, 16);
    let pba = {
        let vde = disk.format();
        vde.vol_create("v", 4 * BS as u64).unwrap();
        vde.vol_write("v", 1, &stamped(1, 1), false).unwrap();
        let plan = vde.vol_read_plan("v", 1, 1).unwrap();
        let pba = plan[0].2.as_ref().expect("block 1 is mapped").pba;
        vde.close().unwrap();
        pba
    };
    let mut img = std::fs::read(&disk.path).unwrap();
    img[pba as usize * BS + 100] ^= 0xff;
    std::fs::write(&disk.path, &img).unwrap();
    let spec = VolumeSpec::parse(&format!("vde:{}:v", disk.path.display()))
        .unwrap()
        .unwrap();
    let dev = VolumeDevice::open(&spec, &disk.options()).unwrap();
    let mut out = vec![0u8; BS];
    match dev.store().vol_read("v", 1, &mut out) {
        Err(VdeError::DataCorrupt { start, .. }) => assert_eq!(start, pba),
        r => panic!("vol_read of a damaged block: {r:?}"),
    }
    let mut q = dev.create_queue(2).unwrap();
    let buf = dev.device().dma().allocate(BS).unwrap();
    let e = run_one(&mut q, Op::Read { lba: 1 }, Some(buf)).expect_err("the queued read failed");
    match e.error {
        IoError::Failed { status, .. } => assert!(
            status
                .nvme()
                .is_some_and(|s| s.same_code(Status::UNRECOVERED_READ_ERROR)),
            "{status}"
        ),
        other => panic!("the queued read of a damaged block: {other}"),
    }
    // The undamaged blocks still read.
    let buf = dev.device().dma().allocate(BS).unwrap();
    let buf = run_one(&mut q, Op::Read { lba: 0 }, Some(buf))
        .map_err(|e| e.error)
        .unwrap();
    assert!(buf.unwrap().as_slice().iter().all(|&b| b == 0));
}

/// A Deallocate running past the volume's end is refused whole: nothing in it is
/// unmapped, also when it spans several `UNMAP_STEP`s.
#[test]
fn a_deallocate_past_the_end_unmaps_nothing() {
    use ironvme::vde::dataset::UNMAP_STEP;
    let disk = Disk::new(Backend::Psync, 64);
    let v = disk.format();
    let blocks = 2 * UNMAP_STEP;
    v.vol_create("v", blocks * BS as u64).unwrap();
    v.vol_write("v", 0, &block_bytes(5, 0), false).unwrap();
    assert!(matches!(v.vol_unmap("v", 0, blocks + 1), Err(VdeError::Unsupported(_))));
    let mut buf = vec![0u8; BS];
    v.vol_read("v", 0, &mut buf).unwrap();
    assert!(buf == block_bytes(5, 0), "block 0 was unmapped by a refused Deallocate");
}

/// A full store stays usable: writes until the data blocks run out (objects on one store,
/// a thin volume larger than the device on another), then every acknowledged write reads
/// back after a Flush, a close and a reopen, a delete frees space, and fsck is clean.
/// Without the metadata reserve the last writes took the blocks the next commit needed:
/// the commit failed (no space for metadata), the store was poisoned, and it could not
/// even be opened again.
#[test]
fn a_full_store_commits_reopens_and_frees() {
    for mib in [2, 16] {
        // Objects of 300 KB.
        let disk = Disk::new(Backend::Psync, mib);
        let v = disk.format();
        let mut stored = Vec::new();
        for i in 0u32.. {
            let key = format!("k{i}");
            let data = vde_model::object_bytes(i, 300_000);
            match v.put(key.as_bytes(), &data) {
                Ok(()) => stored.push((key, data)),
                Err(VdeError::NoSpace { .. }) => break,
                Err(e) => panic!("{mib} MiB, put {i}: {e}"),
            }
        }
        assert!(!stored.is_empty());
        drop(v);
        let v = disk.open();
        for (k, d) in &stored {
            assert_eq!(&v.get(k.as_bytes()).unwrap(), d, "{mib} MiB: {k}");
        }
        v.delete(stored[0].0.as_bytes()).unwrap();
        v.put(b"after", b"a delete made room").unwrap();
        let r = v.fsck().unwrap();
        assert!(r.clean(), "{mib} MiB: {:?}", r.violations);

        // A thin volume twice the device, written in 64 KiB pieces without Flush.
        let disk = Disk::new(Backend::Psync, mib);
        let v = disk.format();
        v.vol_create("v", mib << 21).unwrap();
        let piece = 16u64;
        let mut written = 0;
        loop {
            let data: Vec<u8> = (written..written + piece).flat_map(|b| block_bytes(3, b)).collect();
            match v.vol_write("v", written, &data, false) {
                Ok(()) => written += piece,
                Err(VdeError::NoSpace { .. }) => break,
                Err(e) => panic!("{mib} MiB, volume block {written}: {e}"),
            }
        }
        assert!(written > 0);
        v.vol_flush().unwrap();
        drop(v);
        let v = disk.open();
        let mut buf = vec![0u8; piece as usize * BS];
        for at in (0..written).step_by(piece as usize) {
            v.vol_read("v", at, &mut buf).unwrap();
            let want: Vec<u8> = (at..at + piece).flat_map(|b| block_bytes(3, b)).collect();
            assert!(buf == want, "{mib} MiB: volume block {at}");
        }
        v.vol_unmap("v", 0, written / 2).unwrap();
        v.vol_flush().unwrap();
        let r = v.fsck().unwrap();
        assert!(r.clean(), "{mib} MiB: {:?}", r.violations);
    }
}
