//! fsck against forged stores: each test edits a healthy format-2 image behind the
//! store's back (resealing what it edits and fixing the pointers up to the superblock,
//! so only the invariant under test breaks) and checks that fsck names the damage.
//! The store they start from has objects, two volume families, snapshots, a clone, a
//! deleted snapshot and dead lists, and fsck finds it clean.

mod vde_image;

use ironvme::vde::block::NodeKind;
use ironvme::vde::dataset::VolExtent;
use ironvme::vde::{Vde, VdeOptions};
use ironvme::{Backend, Device, OpenOptions};
use std::path::PathBuf;
use vde_image::Forge;

const BS: usize = 4096;

struct Disk {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Disk {
    fn device(&self) -> Device {
        let o = OpenOptions {
            backend: Some(Backend::Psync),
            file_block_size: Some(4096),
            ..Default::default()
        };
        Device::open(self.path.to_str().unwrap(), &o).unwrap()
    }
}

fn data(seed: u8, blocks: usize) -> Vec<u8> {
    (0..blocks * BS).map(|i| seed ^ (i / 7) as u8).collect()
}

/// A healthy store (checked clean), closed: objects `a`, `big` and `late` (written
/// last, so its blocks come after the volumes'); volume `v` with snapshots `v@s1` and
/// `v@s2` and overwrites after each (dead lists); clone `c` of `v@s1`; volume `w` whose
/// snapshot `w@t` was deleted, with `w@u` kept.
fn healthy() -> (Disk, Forge) {
    let dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let path = dir.path().join("vde.img");
    std::fs::File::create(&path).unwrap().set_len(32 << 20).unwrap();
    let disk = Disk { _dir: dir, path };
    let vde = Vde::format(disk.device(), VdeOptions::default()).unwrap();
    vde.put(b"a", &data(1, 3)).unwrap();
    vde.put(b"big", &data(2, 16)).unwrap();
    vde.vol_create("v", 1 << 20).unwrap();
    vde.vol_write("v", 0, &data(3, 8), true).unwrap();
    vde.snap_create("v", "s1").unwrap();
    vde.vol_write("v", 0, &data(4, 4), true).unwrap();
    vde.clone_snapshot("v", "s1", "c").unwrap();
    vde.vol_write("c", 8, &data(5, 4), true).unwrap();
    vde.snap_create("v", "s2").unwrap();
    vde.vol_write("v", 4, &data(6, 4), true).unwrap();
    vde.vol_create("w", 1 << 20).unwrap();
    vde.vol_write("w", 0, &data(7, 4), true).unwrap();
    vde.snap_create("w", "t").unwrap();
    vde.vol_write("w", 2, &data(8, 4), true).unwrap();
    vde.snap_create("w", "u").unwrap();
    vde.vol_write("w", 0, &data(9, 1), true).unwrap();
    vde.snap_remove("w", "t").unwrap();
    vde.put(b"late", &data(10, 8)).unwrap();
    let r = vde.fsck().unwrap();
    assert!(r.clean(), "the healthy store: {:?}", r.violations);
    assert_eq!((r.volumes, r.snapshots), (3, 3));
    vde.close().unwrap();
    let img = std::fs::read(&disk.path).unwrap();
    (disk, Forge::new(img))
}

/// Writes the forged image and returns fsck's violations.
fn fsck(disk: &Disk, f: &Forge) -> Vec<String> {
    std::fs::write(&disk.path, &f.img).unwrap();
    let vde = Vde::open(disk.device(), VdeOptions::default()).expect("the forged store opens");
    vde.fsck().expect("fsck").violations
}

/// Asserts one violation holds every one of `parts`.
fn reported(violations: &[String], parts: &[&str]) {
    assert!(
        violations.iter().any(|v| parts.iter().all(|p| v.contains(p))),
        "no violation with {parts:?}: {violations:#?}"
    );
}

/// Volume `name`'s extents: (extent map leaf, volume block key, extent).
fn extents(f: &Forge, name: &str) -> Vec<(u64, Vec<u8>, VolExtent)> {
    let (_, rec) = f.dataset(name);
    let sb = f.map.sb.unwrap().1;
    f.entries(NodeKind::Extents, rec.extents)
        .into_iter()
        .map(|(leaf, k, v)| {
            (
                leaf,
                k,
                VolExtent::decode(&v, sb.pool_start(), sb.total_blocks).unwrap(),
            )
        })
        .collect()
}

/// Points the extent of `name` at volume block `vblock` at device block `pba`.
fn move_extent(f: &mut Forge, name: &str, vblock: u64, pba: u64) {
    let (leaf, _, e) = extents(f, name)
        .into_iter()
        .find(|x| x.1 == vblock.to_be_bytes())
        .expect("an extent at the block");
    let moved = VolExtent { pba, ..e.clone() };
    f.replace(leaf, &e.encode(), &moved.encode());
}

/// The last entry of `name`'s dead list: (leaf, key, value).
fn last_dead(f: &Forge, name: &str) -> (u64, Vec<u8>, Vec<u8>) {
    let (_, rec) = f.dataset(name);
    f.entries(NodeKind::Deadlist, rec.deadlist)
        .pop()
        .expect("a dead list entry")
}

fn object_block(f: &Forge, key: &[u8]) -> u64 {
    f.map.object_data.iter().find(|d| d.0 == key).expect("the object").1
}

/// An extent of `v` moved onto a block of object `big`: the block has two users.
#[test]
fn an_extent_on_an_objects_block_is_a_double_allocation() {
    let (disk, mut f) = healthy();
    let b = object_block(&f, b"big") + 1;
    move_extent(&mut f, "v", 4, b);
    let v = fsck(&disk, &f);
    reported(
        &v,
        &[
            &format!("block {b} is referenced twice"),
            "object \"big\"",
            "extent map of v",
        ],
    );
}

/// An extent of `w` moved onto a block only `v` (another family) references.
#[test]
fn extent_maps_of_two_families_do_not_share_blocks() {
    let (disk, mut f) = healthy();
    let b = extents(&f, "v")
        .iter()
        .find(|x| x.1 == 4u64.to_be_bytes())
        .unwrap()
        .2
        .pba;
    move_extent(&mut f, "w", 2, b);
    let v = fsck(&disk, &f);
    reported(
        &v,
        &[
            &format!("block {b} is referenced twice"),
            "extent map of v",
            "extent map of w",
        ],
    );
}

/// A dead-list entry of `v` naming a block of object `late`.
#[test]
fn a_dead_list_entry_naming_an_objects_block_is_reported() {
    let (disk, mut f) = healthy();
    let (leaf, key, val) = last_dead(&f, "v");
    let b = object_block(&f, b"late");
    assert!(
        b > u64::from_be_bytes(key[8..].try_into().unwrap()),
        "keys stay in order"
    );
    let mut forged = key.clone();
    forged[8..].copy_from_slice(&b.to_be_bytes());
    f.replace(leaf, &[&key[..], &val[..]].concat(), &[&forged[..], &val[..]].concat());
    let v = fsck(&disk, &f);
    reported(&v, &["v: dead list entry", &format!("block {b} is no volume's")]);
}

/// A dead-list entry whose block number plus length overflows (it panicked in debug
/// builds).
#[test]
fn a_dead_list_entry_past_the_end_is_reported_not_overflowed() {
    let (disk, mut f) = healthy();
    let (leaf, key, val) = last_dead(&f, "v");
    let mut forged = key.clone();
    forged[8..].copy_from_slice(&u64::MAX.to_be_bytes());
    f.replace(leaf, &[&key[..], &val[..]].concat(), &[&forged[..], &val[..]].concat());
    let v = fsck(&disk, &f);
    reported(&v, &["v: dead list entry 18446744073709551615+", "runs past the end"]);
}

/// A dead-list entry born after its dataset's prev_txg (such a block is freed at once).
#[test]
fn a_dead_list_entry_born_after_prev_txg_is_reported() {
    let (disk, mut f) = healthy();
    let prev = f.dataset("v").1.prev_txg;
    let (leaf, key, val) = last_dead(&f, "v");
    let mut forged = key.clone();
    forged[..8].copy_from_slice(&(prev + 1).to_be_bytes());
    f.replace(leaf, &[&key[..], &val[..]].concat(), &[&forged[..], &val[..]].concat());
    let v = fsck(&disk, &f);
    reported(
        &v,
        &[
            "v: dead list entry",
            &format!("born in txg {}, after its prev_txg {prev}", prev + 1),
        ],
    );
}

/// A snapshot whose clones count says 0 while a clone names it (snap rm would free the
/// clone's blocks).
#[test]
fn a_snapshots_clones_count_is_checked() {
    let (disk, mut f) = healthy();
    assert_eq!(f.dataset("v@s1").1.clones, 1);
    f.edit_dataset("v@s1", |r| r.clones = 0);
    let v = fsck(&disk, &f);
    reported(&v, &["v@s1: its record counts 0 clones; 1 volumes name it"]);
}

/// A snapshot's prev_txg that skips the snapshot before it.
#[test]
fn a_snapshots_prev_txg_chains_to_the_one_before() {
    let (disk, mut f) = healthy();
    let s1 = f.dataset("v@s1").1.created_txg;
    f.edit_dataset("v@s2", |r| r.prev_txg = 0);
    let v = fsck(&disk, &f);
    reported(
        &v,
        &[&format!(
            "v@s2: its prev_txg is 0, but the snapshot before it (or v's origin) was created in txg {s1}"
        )],
    );
}

/// A clone's prev_txg other than its origin's txg (it has no snapshots).
#[test]
fn a_volumes_prev_txg_is_its_newest_snapshots_or_origins_txg() {
    let (disk, mut f) = healthy();
    let s1 = f.dataset("v@s1").1.created_txg;
    assert_eq!(f.dataset("c").1.prev_txg, s1);
    f.edit_dataset("c", |r| r.prev_txg = s1 - 1);
    let v = fsck(&disk, &f);
    reported(
        &v,
        &[&format!(
            "c: its prev_txg is {}, but its newest snapshot (or its origin) was created in txg {s1}",
            s1 - 1
        )],
    );
}

/// A clone whose origin does not exist.
#[test]
fn a_clones_origin_must_exist() {
    let (disk, mut f) = healthy();
    f.edit_dataset("c", |r| r.origin = b"v@zz".to_vec());
    let v = fsck(&disk, &f);
    reported(&v, &["dataset c: c's origin v@zz does not exist"]);
}

/// An extent of snapshot `v@s1` whose birth is after the snapshot was taken.
#[test]
fn a_snapshot_extent_born_after_the_snapshot_is_reported() {
    let (disk, mut f) = healthy();
    let (_, rec) = f.dataset("v@s1");
    let (leaf, _, e) = extents(&f, "v@s1").into_iter().next().expect("an extent");
    let later = VolExtent {
        birth: rec.created_txg + 1,
        ..e.clone()
    };
    f.replace(leaf, &e.encode(), &later.encode());
    let v = fsck(&disk, &f);
    reported(
        &v,
        &[
            "v@s1",
            &format!("born in txg {}", rec.created_txg + 1),
            "after the snapshot",
        ],
    );
}

/// Clone `c`'s extent moved onto a block that `v` wrote after its newest snapshot: one
/// family, so the block is not "referenced twice" across families, but no member but `v`
/// can hold it.
#[test]
fn a_block_a_volume_wrote_after_its_newest_snapshot_is_its_alone() {
    let (disk, mut f) = healthy();
    let (_, v) = f.dataset("v");
    let own = extents(&f, "v")
        .into_iter()
        .find(|x| x.1 == 4u64.to_be_bytes())
        .unwrap()
        .2;
    assert!(own.birth > v.prev_txg, "v's write at block 4 came after v@s2");
    move_extent(&mut f, "c", 8, own.pba);
    let viol = fsck(&disk, &f);
    reported(
        &viol,
        &[&format!("block {}", own.pba), "born after the volume's newest snapshot"],
    );
}

/// `fsck_with_progress` counts up to its total: on a healthy store fsck reaches every
/// block in use outside the superblocks and intent log, so the last report is N of N.
#[test]
fn fsck_reports_progress_up_to_its_total() {
    let (disk, f) = healthy();
    std::fs::write(&disk.path, &f.img).unwrap();
    let vde = Vde::open(disk.device(), VdeOptions::default()).unwrap();
    let mut seen = Vec::new();
    let r = vde.fsck_with_progress(&mut |p| seen.push(p)).unwrap();
    assert!(r.clean(), "{:?}", r.violations);
    assert!(seen.len() > 2, "{seen:?}");
    assert_eq!(seen[0].checked_blocks, 0, "the first report comes before any read");
    assert!(
        seen.windows(2).all(|w| w[0].checked_blocks <= w[1].checked_blocks),
        "{seen:?}"
    );
    let last = seen.last().unwrap();
    assert_eq!(last.checked_blocks, last.total_blocks, "{last:?}");
    assert!(
        last.total_blocks > 0 && last.total_blocks < r.used_blocks,
        "{last:?} {r:?}"
    );
    assert_eq!(r.io_errors, 0);
}
