//! Format 2's volumes, snapshots and clones on the host: the model-based property test
//! (`tests/vde_model`, shared with `tests/guest_vde.rs`: objects, volume writes, reads,
//! zeroes, deallocates, snapshots, clones, rollbacks, deletes and reopens) on psync and
//! io_uring over files, and the space tests: a snapshot overwritten then deleted returns
//! to one copy, and 10,000 snapshot create/delete cycles with writes in between leak
//! nothing (fsck checks every count).

mod vde_model;

use ironvme::vde::{Vde, VdeOptions};
use ironvme::{Backend, Device, OpenOptions};
use proptest::prelude::*;
use std::path::PathBuf;
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
