//! The model-based test of format 2's objects, volumes, snapshots and clones, written
//! once for every backend: random steps (object puts and deletes, volume writes, unmaps
//! and Flushes, snapshots, snapshot deletes, clones, rollbacks, volume creates and
//! deletes, reopens) run against the store and an in-memory model, and after every
//! reopen and at the end the store must hold exactly what the model holds, with fsck
//! clean. `tests/vde_volumes.rs` runs it on psync and io_uring on the host,
//! `tests/guest_vde.rs` on VFIO in the guest.
#![allow(dead_code)]

use ironvme::vde::{Vde, VdeError};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

/// Volume block size, bytes.
pub const BS: usize = 4096;
/// Blocks of every volume the model creates.
pub const VOL_BLOCKS: u64 = 96;

/// The bytes of volume block `vblock` written with `seed` (0: never written, zeros).
pub fn block_bytes(seed: u32, vblock: u64) -> Vec<u8> {
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

/// `len` bytes of object data that depend on `seed`.
pub fn object_bytes(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as u8)
        .collect()
}

/// One step of the model test. Volumes are `vol0`..`vol3`; `which` picks one of a
/// volume's snapshots (modulo their number).
#[derive(Clone, Debug)]
pub enum Step {
    /// Put object `k{key}` of `len` bytes.
    Put { key: u8, len: usize, seed: u32 },
    /// Delete object `k{key}`.
    Delete { key: u8 },
    /// Write `n` blocks from block `at` (clipped to the volume's end).
    Write { vol: u8, at: u64, n: u64, seed: u32 },
    /// Unmap (Deallocate) `n` blocks from block `at` (clipped).
    Unmap { vol: u8, at: u64, n: u64 },
    /// A volume Flush.
    Flush,
    /// Take a snapshot.
    Snap { vol: u8 },
    /// Delete a snapshot (refused while it has clones).
    SnapRm { vol: u8, which: u8 },
    /// Clone a snapshot to a new volume.
    Clone { vol: u8, which: u8 },
    /// Roll a volume back to its newest snapshot.
    Rollback { vol: u8 },
    /// Delete a volume with its snapshots (refused while one has clones).
    VolRm { vol: u8 },
    /// Create a volume of [`VOL_BLOCKS`] blocks (refused if it exists).
    Create { vol: u8 },
    /// Close the store and open it again; everything is checked.
    Reopen,
}

/// One random [`Step`].
pub fn step() -> impl Strategy<Value = Step> {
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

/// 1 to `max - 1` random steps.
pub fn steps(max: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(step(), 1..max)
}

/// A volume in the model: the seed of each written block, its snapshots oldest first
/// (name, blocks, clones made from it), and the snapshot it was cloned from.
#[derive(Clone, Default)]
pub struct VolModel {
    /// Seed of each written block.
    pub blocks: HashMap<u64, u32>,
    /// (name, blocks, number of clones).
    pub snaps: Vec<(String, HashMap<u64, u32>, u32)>,
    /// (volume, snapshot) of a clone's origin.
    pub origin: Option<(String, String)>,
}

/// What the store must hold.
#[derive(Default)]
pub struct Model {
    /// Objects by key.
    pub objects: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Volumes by name.
    pub vols: BTreeMap<String, VolModel>,
    next_snap: u32,
    next_clone: u32,
}

fn vol_name(v: u8) -> String {
    format!("vol{v}")
}

/// Reads all of volume (or snapshot) `name` and compares every block with the model.
pub fn check_volume(vde: &Vde, name: &str, want: &HashMap<u64, u32>) {
    let mut buf = vec![0u8; VOL_BLOCKS as usize * BS];
    vde.vol_read(name, 0, &mut buf)
        .unwrap_or_else(|e| panic!("read {name}: {e}"));
    for b in 0..VOL_BLOCKS {
        let seed = want.get(&b).copied().unwrap_or(0);
        assert!(
            buf[b as usize * BS..(b as usize + 1) * BS] == block_bytes(seed, b)[..],
            "{name} block {b}: expected seed {seed}"
        );
    }
}

/// Checks every object, the key list, the volume list, every volume and snapshot.
pub fn check_all(vde: &Vde, m: &Model) {
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

/// Runs `steps` on a store made by `format`, reopening it with `open` (after closing
/// it) at each [`Step::Reopen`] and at the end; panics at the first difference from the
/// model or fsck violation.
pub fn run(format: &dyn Fn() -> Vde, open: &dyn Fn() -> Vde, steps: &[Step]) {
    let mut vde = Some(format());
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
                    None => assert!(matches!(r, Err(VdeError::NotFound(_))), "{r:?}"),
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
                    None => assert!(matches!(r, Err(VdeError::NotFound(_))), "{r:?}"),
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
                vde = Some(open());
                check_all(vde.as_ref().unwrap(), &m);
            }
        }
    }
    let v = vde.take().unwrap();
    check_all(&v, &m);
    let r = v.fsck().unwrap();
    assert!(r.clean(), "{:?}", r.violations);
    v.close().unwrap();
    let v = open();
    check_all(&v, &m);
    let r = v.fsck().unwrap();
    assert!(r.clean(), "{:?}", r.violations);
    v.close().unwrap();
}
