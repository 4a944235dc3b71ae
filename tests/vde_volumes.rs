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
