//! The VDE on the host: model-based, stress, refusal, corruption and crash tests on
//! psync and io_uring over files, and power-loss tests on the simulated controller with
//! a volatile write cache.

mod common;
mod vde_image;
mod vde_suite;

use ironvme::vde::block::NodeKind;
use ironvme::vde::{Vde, VdeError};
use ironvme::{Backend, Device, OpenOptions};
use proptest::prelude::*;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use vde_suite::*;

struct Disk {
    _dir: tempfile::TempDir,
    path: PathBuf,
    backend: Backend,
}

impl Disk {
    fn new(backend: Backend, mib: u64) -> Disk {
        let dir = tempfile::tempdir().unwrap();
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

    fn open(&self) -> Result<Vde, VdeError> {
        Vde::open(self.device(), small())
    }

    /// Flips one bit of the byte at `offset` of block `block`, behind the store's back.
    fn flip(&self, block: u64, offset: usize) {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .unwrap();
        let at = block * 4096 + offset as u64;
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(at)).unwrap();
        std::io::Read::read_exact(&mut f, &mut b).unwrap();
        b[0] ^= 0x20;
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&b).unwrap();
        f.sync_all().unwrap();
    }
}

const BACKENDS: [Backend; 2] = [Backend::Psync, Backend::Uring];

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]
    /// Random put/get/delete/list against a BTreeMap with reopens, on psync and io_uring.
    #[test]
    fn behaves_like_a_map_across_reopens(seed in any::<u64>(), reopen_every in 1usize..40) {
        for backend in BACKENDS {
            let disk = Disk::new(backend, 64);
            let vde = format(disk.device());
            model_run(vde, seed, 150, reopen_every, &|v: Vde| {
                v.close().unwrap();
                disk.open().unwrap()
            });
        }
    }
}

/// A sparse image file of `blocks` blocks of 4 KiB on psync, in memory (/dev/shm) where
/// there is one.
fn sparse_disk(blocks: u64) -> Disk {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let path = dir.path().join("vde.img");
    std::fs::File::create(&path).unwrap().set_len(blocks * 4096).unwrap();
    Disk {
        _dir: dir,
        path,
        backend: Backend::Psync,
    }
}

/// Device blocks: mostly small stores, and now and then sizes at the edges of a space
/// map bitmap block (32,448 blocks each) and of the intent log's clamp (64 blocks below
/// 16,384 blocks, 4096 from 1,048,576).
fn store_sizes() -> impl Strategy<Value = u64> {
    let bitmap = ironvme::vde::space::BITS_PER_BITMAP;
    prop_oneof![
        4 => 100u64..60_000,
        1 => (1u64..40, 0u64..7).prop_map(move |(k, d)| k * bitmap + d - 3),
        1 => 16_380u64..16_390,
        1 => 1_048_570u64..1_048_590,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    /// Whatever the device size, a store that formats opens again, holds an object and a
    /// volume block, and fscks clean.
    #[test]
    fn every_size_that_formats_opens_again(blocks in store_sizes()) {
        let disk = sparse_disk(blocks);
        let vde = match Vde::format(disk.device(), small()) {
            Ok(v) => v,
            Err(VdeError::TooSmall { .. }) => return Ok(()),
            Err(e) => panic!("{blocks} blocks: format: {e}"),
        };
        vde.put(b"k", b"v").unwrap();
        vde.vol_create("v", 1 << 20).unwrap();
        vde.vol_write("v", 255, &[7u8; 4096], true).unwrap();
        vde.close().unwrap();
        let vde = disk.open().unwrap_or_else(|e| panic!("{blocks} blocks: open: {e}"));
        prop_assert_eq!(vde.get(b"k").unwrap(), b"v");
        let mut buf = [0u8; 4096];
        vde.vol_read("v", 255, &mut buf).unwrap();
        prop_assert!(buf == [7u8; 4096]);
        let r = vde.fsck().unwrap();
        prop_assert!(r.clean(), "{} blocks: {:?}", blocks, r.violations);
    }
}

#[test]
fn refusals_and_a_full_store() {
    for backend in BACKENDS {
        let disk = Disk::new(backend, 24);
        let vde = format(disk.device());
        refusals(&vde);
        fill(&vde);
        vde.close().unwrap();
        let r = disk.open().unwrap().fsck().unwrap();
        assert!(r.clean(), "{:?}", r.violations);
    }
}

#[test]
fn a_blank_or_tiny_device_is_refused_clearly() {
    let disk = Disk::new(Backend::Psync, 8);
    assert!(matches!(disk.open(), Err(VdeError::NotFormatted)));
    let tiny = Disk::new(Backend::Psync, 0);
    std::fs::File::create(&tiny.path).unwrap().set_len(512 * 1024).unwrap();
    let e = Vde::format(tiny.device(), small()).err().unwrap();
    assert!(matches!(e, VdeError::TooSmall { .. }), "{e}");
    // The format counts 4 KiB blocks: a store made through 512 B logical blocks reads the
    // same through 4 KiB ones.
    let o = OpenOptions {
        backend: Some(Backend::Psync),
        file_block_size: Some(512),
        ..Default::default()
    };
    let vde = Vde::format(Device::open(disk.path.to_str().unwrap(), &o).unwrap(), small()).unwrap();
    vde.put(b"k", b"on 512-byte blocks").unwrap();
    vde.close().unwrap();
    assert_eq!(disk.open().unwrap().get(b"k").unwrap(), b"on 512-byte blocks");
}

#[test]
fn threads_write_different_keys_in_parallel() {
    for backend in BACKENDS {
        let disk = Disk::new(backend, 64);
        let vde = stress(format(disk.device()), 4, 150, 20_000);
        // Group commit: concurrent puts and deletes share intent log Flushes.
        let info = vde.info().unwrap();
        eprintln!(
            "{backend}: {} operations acknowledged with {} log Flushes",
            info.acked_ops, info.log_flushes
        );
        assert!(
            info.log_flushes < info.acked_ops,
            "{backend}: {} log Flushes for {} operations: no group commit",
            info.log_flushes,
            info.acked_ops
        );
        vde.close().unwrap();
        let r = disk.open().unwrap().fsck().unwrap();
        assert!(r.clean(), "{:?}", r.violations);
    }
}

/// Keys and values.
type Objects = Vec<(Vec<u8>, Vec<u8>)>;

/// Blocks of the test volume `v` (4 KiB each).
const VOL_BLOCKS: u64 = 96;

/// What a populated store holds: objects, and every block of `v` and `v@s`.
struct Contents {
    objects: Objects,
    /// Dataset name and its blocks' bytes (VOL_BLOCKS × 4 KiB).
    volumes: Vec<(String, Vec<u8>)>,
}

/// A store with known contents, closed: 226 small objects (an object index of two
/// levels) and one of 300 KiB, a volume
/// `v` of 96 blocks written in part, a snapshot `v@s`, then part of `v` overwritten
/// after it (copy-on-write).
fn populated(backend: Backend) -> (Disk, Contents) {
    let disk = Disk::new(backend, 16);
    let vde = format(disk.device());
    let mut objects = Vec::new();
    for c in b'a'..=b'z' {
        objects.push((vec![c], bytes(c as u64, 100 + c as usize)));
    }
    objects.push((b"big".to_vec(), bytes(7, 300 * 1024)));
    // Enough keys for an object index of more than one level.
    for i in 0..200u64 {
        objects.push((
            format!("many/{i:04}/a-key-long-enough-to-fill-leaves").into_bytes(),
            bytes(1000 + i, 10 + i as usize % 50),
        ));
    }
    for (k, v) in &objects {
        vde.put(k, v).unwrap();
    }
    let mut vol = vec![0u8; VOL_BLOCKS as usize * 4096];
    vde.vol_create("v", VOL_BLOCKS * 4096).unwrap();
    let first = bytes(100, 40 * 4096);
    vde.vol_write("v", 8, &first, false).unwrap();
    vol[8 * 4096..48 * 4096].copy_from_slice(&first);
    vde.vol_flush().unwrap();
    vde.snap_create("v", "s").unwrap();
    let snap = vol.clone();
    let second = bytes(101, 20 * 4096);
    vde.vol_write("v", 30, &second, false).unwrap();
    vol[30 * 4096..50 * 4096].copy_from_slice(&second);
    vde.vol_flush().unwrap();
    vde.close().unwrap();
    let contents = Contents {
        objects,
        volumes: vec![("v".into(), vol), ("v@s".into(), snap)],
    };
    (disk, contents)
}

/// Reads every object and every block of every volume and snapshot in `want`: each read
/// returns the right bytes or an error, never other bytes. Returns the errors.
fn read_everything(vde: &Vde, want: &Contents) -> Vec<VdeError> {
    let mut errors = Vec::new();
    for (k, v) in &want.objects {
        match vde.get(k) {
            Ok(got) => assert!(got == *v, "get {k:?} returned other bytes"),
            Err(e) => errors.push(e),
        }
    }
    for (name, data) in &want.volumes {
        let mut buf = vec![0u8; 4096];
        for b in 0..VOL_BLOCKS {
            match vde.vol_read(name, b, &mut buf) {
                Ok(()) => assert!(
                    buf[..] == data[b as usize * 4096..(b as usize + 1) * 4096],
                    "{name} block {b}: other bytes"
                ),
                Err(e) => errors.push(e),
            }
        }
    }
    errors
}

/// Whether a report line names `block`: "block N", or a run "S+N" or "S..E" holding it.
fn names_in_text(line: &str, block: u64) -> bool {
    if line.contains(&format!("block {block}")) {
        return true;
    }
    line.split(|c: char| !(c.is_ascii_digit() || c == '+' || c == '.'))
        .filter_map(|t| {
            let (a, b, run) = match t.split_once('+') {
                Some((a, b)) => (a, b, true),
                None => {
                    let (a, b) = t.split_once("..")?;
                    (a, b, false)
                }
            };
            let (a, b) = (a.parse::<u64>().ok()?, b.trim_end_matches('.').parse::<u64>().ok()?);
            Some(if run { a..a + b } else { a..b })
        })
        .any(|r| r.contains(&block))
}

/// Opens `disk` after block `block` was damaged: either the open fails naming the
/// block, or every read returns the right bytes or an error naming the block, at least
/// one read fails when `reads_fail`, and fsck reports the block (or fails naming it).
fn damage_is_named(disk: &Disk, want: &Contents, block: u64, what: &str, reads_fail: bool) {
    let vde = match disk.open() {
        Err(e) => {
            assert!(
                vde_image::names_block(&e, block),
                "{what} (block {block}): open failed otherwise: {e}"
            );
            eprintln!("{what}: open refused: {e}");
            return;
        }
        Ok(v) => v,
    };
    let errors = read_everything(&vde, want);
    for e in &errors {
        assert!(
            vde_image::names_block(e, block),
            "{what} (block {block}): a read failed otherwise: {e}"
        );
    }
    assert!(
        !reads_fail || !errors.is_empty(),
        "{what} (block {block}): every read succeeded"
    );
    if let Some(e) = errors.first() {
        eprintln!("{what}: {} reads failed, e.g. {e}", errors.len());
    }
    match vde.fsck() {
        Ok(r) => assert!(
            r.violations.iter().any(|v| names_in_text(v, block)),
            "{what} (block {block}): fsck: {:?}",
            r.violations
        ),
        Err(e) => assert!(vde_image::names_block(&e, block), "{what}: fsck failed otherwise: {e}"),
    }
}

/// Damages one block of each kind the committed state reaches (found from the
/// superblock's pointers), one fresh store per case; each is named by the error.
#[test]
fn every_kind_of_corruption_is_named() {
    type Pick = fn(&vde_image::ImageMap) -> u64;
    let cases: [(&str, Pick, bool); 8] = [
        (
            "object index root",
            |m| {
                assert!(m.objects[0].1 > 0, "the object index has one level");
                m.objects[0].0.addr
            },
            true,
        ),
        (
            "object index leaf",
            |m| m.objects.iter().rfind(|n| n.1 == 0).unwrap().0.addr,
            true,
        ),
        ("dataset directory node", |m| m.datasets[0].0.addr, true),
        (
            "extent map node of v",
            |m| m.extents.iter().find(|e| e.0 == "v").unwrap().1.addr,
            true,
        ),
        (
            "extent map node of v@s",
            |m| m.extents.iter().find(|e| e.0 == "v@s").unwrap().1.addr,
            true,
        ),
        ("space map root", |m| m.space[0].0.addr, false),
        (
            "a data block of an object",
            |m| {
                let (_, start, blocks) = m.object_data.iter().find(|d| d.0 == b"big").unwrap();
                start + blocks / 2
            },
            true,
        ),
        (
            "a data block of a volume",
            |m| m.volume_data.iter().find(|d| d.0 == "v" && d.1 == 35).unwrap().2,
            true,
        ),
    ];
    for (what, pick, reads_fail) in cases {
        let (disk, want) = populated(Backend::Psync);
        let map = vde_image::ImageMap::read(&std::fs::read(&disk.path).unwrap());
        let block = pick(&map);
        disk.flip(block, 100);
        damage_is_named(&disk, &want, block, what, reads_fail);
    }
}

/// One superblock copy damaged (either one): the store opens from the other with every
/// byte, fsck reports the copy, a read-only open says NeedsRecovery, and a writable open
/// rewrites it. Both damaged: the open fails naming a copy.
#[test]
fn a_store_survives_one_superblock_copy_and_not_two() {
    let read_only = ironvme::vde::VdeOptions {
        read_only: true,
        ..small()
    };
    for copy in [0u64, 1] {
        let (disk, want) = populated(Backend::Psync);
        disk.flip(copy, 50);
        let e = Vde::open(disk.device(), read_only.clone())
            .err()
            .expect("NeedsRecovery");
        assert!(matches!(e, VdeError::NeedsRecovery(_)), "{e}");
        let vde = disk.open().unwrap();
        let errors = read_everything(&vde, &want);
        assert!(errors.is_empty(), "copy {copy}: {errors:?}");
        vde.close().unwrap();
        let vde = Vde::open(disk.device(), read_only.clone()).expect("the copy was rewritten");
        assert!(read_everything(&vde, &want).is_empty());
        let r = vde.fsck().unwrap();
        assert!(r.clean(), "copy {copy}: {:?}", r.violations);
    }
    // fsck reports a damaged copy. An open repairs one, and fsck commits first (which
    // writes the older copy), so damage the newest copy of an open store.
    let (disk, _) = populated(Backend::Psync);
    let vde = disk.open().unwrap();
    let newest = vde.info().unwrap().txg % 2;
    disk.flip(newest, 50);
    let r = vde.fsck().unwrap();
    assert!(
        r.violations
            .iter()
            .any(|v| v.contains(&format!("superblock copy {newest}"))),
        "{:?}",
        r.violations
    );
    drop(vde);

    let (disk, _) = populated(Backend::Psync);
    disk.flip(0, 50);
    disk.flip(1, 50);
    match disk.open() {
        Err(e @ (VdeError::Mismatch { .. } | VdeError::Corrupt { .. })) => {
            assert!(vde_image::names_block(&e, 0) || vde_image::names_block(&e, 1), "{e}")
        }
        Err(e) => panic!("both copies damaged: {e}"),
        Ok(_) => panic!("opened with both superblock copies damaged"),
    }
}

/// A format-1 store (its superblock: magic `IRONVDE\0`, version 1 at offset 8) is
/// refused with a message naming format 1, whichever copies look so.
#[test]
fn a_format_1_store_is_refused_clearly() {
    for blocks in [&[0u64][..], &[0, 1]] {
        let disk = Disk::new(Backend::Psync, 8);
        let mut f = std::fs::OpenOptions::new().write(true).open(&disk.path).unwrap();
        for &b in blocks {
            let mut sb = vec![0u8; 4096];
            sb[..8].copy_from_slice(b"IRONVDE\0");
            sb[8..12].copy_from_slice(&1u32.to_le_bytes());
            sb[12..20].copy_from_slice(&4096u64.to_le_bytes());
            f.seek(SeekFrom::Start(b * 4096)).unwrap();
            f.write_all(&sb).unwrap();
        }
        drop(f);
        match disk.open() {
            Err(VdeError::Unsupported(m)) => assert!(m.contains("format-1 VDE superblock"), "{m}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a format-1 store opened"),
        }
    }
}

/// A store whose writer died before its checkpoint (intent log records newer than the
/// committed txg), or
/// whose superblock copy is damaged, opened read-only: the open fails with
/// `NeedsRecovery` and not one byte of the image changes. A clean store opened read-only
/// serves reads, refuses changes, and writes nothing, not even at close.
#[test]
fn a_read_only_store_never_writes() {
    let disk = Disk::new(Backend::Psync, 16);
    let vde = format(disk.device());
    vde.put(b"k", b"old").unwrap();
    vde.checkpoint().unwrap();
    vde.put(b"k", b"new").unwrap();
    std::mem::forget(vde); // no checkpoint at close: like a killed process
    let read_only = ironvme::vde::VdeOptions {
        read_only: true,
        ..small()
    };
    let before = std::fs::read(&disk.path).unwrap();
    let e = Vde::open(disk.device(), read_only.clone())
        .err()
        .expect("a store that needs recovery");
    assert!(matches!(e, VdeError::NeedsRecovery(_)), "{e}");
    assert!(e.to_string().contains("intent log records to replay"), "{e}");
    assert!(
        std::fs::read(&disk.path).unwrap() == before,
        "a read-only open wrote the image"
    );

    // Recovered by a writable open, the store opens read-only and stays byte for byte.
    disk.open().unwrap().close().unwrap();
    let before = std::fs::read(&disk.path).unwrap();
    let vde = Vde::open(disk.device(), read_only.clone()).unwrap();
    assert_eq!(vde.get(b"k").unwrap(), b"new");
    assert!(vde.fsck().unwrap().clean());
    assert!(matches!(vde.put(b"k2", b"x"), Err(VdeError::ReadOnly)));
    assert!(matches!(vde.delete(b"k"), Err(VdeError::ReadOnly)));
    assert_eq!(vde.get(b"k").unwrap(), b"new");
    vde.checkpoint().unwrap();
    drop(vde);
    assert!(
        std::fs::read(&disk.path).unwrap() == before,
        "a read-only store wrote the image"
    );

    // A damaged superblock copy needs a write to repair: refused read-only.
    disk.flip(1, 100);
    let before = std::fs::read(&disk.path).unwrap();
    let e = Vde::open(disk.device(), read_only)
        .err()
        .expect("a store that needs repair");
    assert!(matches!(e, VdeError::NeedsRecovery(_)), "{e}");
    assert!(e.to_string().contains("superblock copy is damaged"), "{e}");
    assert!(
        std::fs::read(&disk.path).unwrap() == before,
        "a read-only open repaired the superblock"
    );
}

/// `ironvme vde get` (a reader, shared claim) on a store whose writer died before its
/// checkpoint: it recovers the store under an exclusive claim and prints the value the
/// dead writer acknowledged; on the recovered store readers write nothing.
#[test]
fn a_cli_reader_recovers_a_store_that_needs_it() {
    let bin = env!("CARGO_BIN_EXE_ironvme");
    let disk = Disk::new(Backend::Psync, 16);
    let vde = format(disk.device());
    vde.put(b"k", b"old").unwrap();
    vde.checkpoint().unwrap();
    vde.put(b"k", b"new").unwrap();
    std::mem::forget(vde);
    let img = disk.path.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    // While another reader holds the store, recovery (a write) is refused and nothing
    // is written.
    let target = ironvme::Target::parse(img).unwrap();
    let other = ironvme::claim::Claim::acquire(&target, img, ironvme::claim::Access::Shared).unwrap();
    let before = std::fs::read(&disk.path).unwrap();
    let out = std::process::Command::new(bin)
        .args(["vde", "get", img, "k"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "{err}");
    assert!(
        err.contains(&format!("{img} is in use: locked by ")) && err.contains("for reading"),
        "{err}"
    );
    assert!(
        std::fs::read(&disk.path).unwrap() == before,
        "a refused reader wrote the image"
    );
    drop(other);
    assert_eq!(run(&["vde", "get", img, "k"]), b"new");
    // Recovered: a writable open has nothing left to replay.
    let vde = disk.open().unwrap();
    assert_eq!(vde.info().unwrap().pool.replayed, 0);
    vde.close().unwrap();
    let before = std::fs::read(&disk.path).unwrap();
    for args in [
        &["vde", "get", img, "k"][..],
        &["vde", "ls", img],
        &["vde", "stat", img, "k"],
        &["vde", "info", img],
        &["vde", "fsck", img],
    ] {
        run(args);
    }
    assert!(std::fs::read(&disk.path).unwrap() == before, "a reader wrote the image");
}

/// Kills a process that keeps putting objects (`ironvme vde put`) at a random moment,
/// again and again; after each kill every acknowledged put is there with its bytes, the
/// one in flight is wholly there or wholly not, and fsck is clean.
#[test]
fn killed_writers_lose_nothing_acknowledged() {
    use std::os::unix::process::CommandExt;
    let bin = env!("CARGO_BIN_EXE_ironvme");
    for backend in BACKENDS {
        let disk = Disk::new(backend, 32);
        format(disk.device()).close().unwrap();
        let work = tempfile::tempdir().unwrap();
        let mut expected: [Option<u64>; 8] = [None; 8];
        for round in 0..4u64 {
            let log = work.path().join(format!("acks{round}"));
            for i in 0..8 {
                std::fs::write(
                    work.path().join(format!("v{round}_{i}")),
                    value(format!("k{i}").as_bytes(), round, i, 20_000 + 5000 * i as usize),
                )
                .unwrap();
            }
            let script = format!(
                "i=0; while :; do k=$((i % 8)); echo START $k $i >> {log}; {bin} vde put --backend {backend} {img} k$k {dir}/v{round}_$k && echo ACK $k $i >> {log}; i=$((i+1)); done",
                log = log.display(),
                img = disk.path.display(),
                dir = work.path().display(),
            );
            let mut child = std::process::Command::new("sh")
                .args(["-c", &script])
                .process_group(0)
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(300 + round * 170));
            // SAFETY: kill(2) on the process group we just made; no memory is involved.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            child.wait().unwrap();
            let lines = std::fs::read_to_string(&log).unwrap();
            assert!(lines.contains("ACK"), "round {round}: no put finished in time");
            let vde = disk.open().unwrap();
            check_after_kill(&vde, &lines, round, &mut expected);
            vde.close().unwrap();
        }
    }
}

/// Two shell loops put different keys into one image file at the same time (the
/// issue's reproduction: without claims all 80 puts "succeeded", `ls` listed 63 keys and
/// fsck found 42 violations). Now a put that finds the store open by the other is
/// refused with an error naming the holder, and every acknowledged put is there with its
/// bytes, `ls` lists exactly those keys, and fsck is clean.
#[test]
fn two_processes_never_share_a_store() {
    let bin = env!("CARGO_BIN_EXE_ironvme");
    let disk = Disk::new(Backend::Psync, 32);
    format(disk.device()).close().unwrap();
    let work = tempfile::tempdir().unwrap();
    let puts = 40;
    let loops: Vec<std::process::Child> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(w, name)| {
            for i in 0..puts {
                let k = format!("{name}{i}");
                std::fs::write(
                    work.path().join(&k),
                    value(k.as_bytes(), w as u64, i, 9000 + 1000 * i as usize),
                )
                .unwrap();
            }
            let script = format!(
                "for i in $(seq 0 {last}); do \
                   if {bin} vde put {img} {name}$i {dir}/{name}$i 2> {dir}/err_{name}$i; then echo ACK {name}$i; \
                   else echo FAIL {name}$i; fi; done",
                last = puts - 1,
                img = disk.path.display(),
                dir = work.path().display(),
            );
            std::process::Command::new("sh")
                .args(["-c", &script])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut acked = std::collections::BTreeSet::new();
    let mut refused = 0;
    for child in loops {
        let out = child.wait_with_output().unwrap();
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            match line.split_once(' ') {
                Some(("ACK", k)) => {
                    acked.insert(k.to_string());
                }
                Some(("FAIL", k)) => {
                    let err = std::fs::read_to_string(work.path().join(format!("err_{k}"))).unwrap();
                    // The holder is named unless it let go between the refusal and the look
                    // at /proc/locks ("another process"), or exited and was reaped between
                    // that look and the one at /proc/PID/comm ("a process (pid N)").
                    let in_use = format!("{} is in use: locked by ", disk.path.display());
                    assert!(
                        err.starts_with("ironvme: refusing to run vde put: ")
                            && err.contains(&in_use)
                            && ((err.contains("locked by ironvme (pid ") || err.contains("locked by a process (pid "))
                                && err.contains("for writing")
                                || err.contains("locked by another process")),
                        "put {k} failed otherwise: {err}"
                    );
                    refused += 1;
                }
                _ => panic!("{line}"),
            }
        }
    }
    eprintln!("{} puts acknowledged, {refused} refused", acked.len());
    assert!(refused > 0, "the two loops never met: nothing was tested");
    assert!(!acked.is_empty());
    let vde = disk.open().unwrap();
    let listed: std::collections::BTreeSet<String> =
        vde.keys(b"").map(|k| String::from_utf8(k.unwrap()).unwrap()).collect();
    assert_eq!(listed, acked, "ls lists exactly the acknowledged keys");
    for k in &acked {
        check_value(
            k.as_bytes(),
            &vde.get(k.as_bytes()).unwrap_or_else(|e| panic!("get {k}: {e}")),
        );
    }
    let r = vde.fsck().unwrap();
    assert!(r.clean(), "{:?}", r.violations);
}

/// `vde put KEY -` reads at most the largest object (30 MiB) and one byte more from
/// standard input: an endless input is refused with a clear error, in bounded memory
/// (here: under a 1 GiB address-space limit), and nothing is stored.
#[test]
fn an_endless_standard_input_is_refused_at_the_object_limit() {
    let disk = Disk::new(Backend::Psync, 16);
    format(disk.device()).close().unwrap();
    let bin = env!("CARGO_BIN_EXE_ironvme");
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            &format!(
                "ulimit -v 1048576; exec {bin} vde put --backend psync {} k - < /dev/zero",
                disk.path.display()
            ),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{:?}: {err}", out.status);
    assert!(
        err.contains("standard input") && err.contains("31457280 bytes") && err.contains("nothing was stored"),
        "{err}"
    );
    assert!(matches!(disk.open().unwrap().get(b"k"), Err(VdeError::NotFound(_))));
}

#[cfg(feature = "sim")]
mod power_loss {
    use super::*;
    use ironvme::nvme::sim::{SimConfig, SimController, SimNamespace};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    fn config() -> SimConfig {
        SimConfig {
            namespaces: vec![SimNamespace::new(4096, 8192)],
            ..SimConfig::default()
        }
    }

    #[derive(Clone, Debug)]
    enum Step {
        Put(Vec<u8>, Vec<u8>),
        Delete(Vec<u8>),
    }

    /// Power fails at a random moment of a put/delete workload on a device with a
    /// volatile write cache that then loses a random subset of the unflushed writes.
    /// After "reboot" every acknowledged change is there, the one in flight is wholly
    /// there or not, and fsck is clean. 24 seeds.
    #[test]
    fn power_loss_at_random_points() {
        for seed in 0..24u64 {
            let sim = SimController::new(config());
            sim.set_volatile_write_cache(true);
            let dev = Device::simulated(sim.clone(), Default::default()).unwrap();
            let vde = Vde::format(dev, small()).unwrap();
            // Baseline objects, acknowledged.
            for i in 0..6u64 {
                vde.put(
                    format!("k{i}").as_bytes(),
                    &value(format!("k{i}").as_bytes(), 0, i, 3000),
                )
                .unwrap();
            }
            let log: Mutex<Vec<(Step, bool)>> = Mutex::new(Vec::new());
            std::thread::scope(|s| {
                let (vde, log) = (&vde, &log);
                s.spawn(move || {
                    for n in 1.. {
                        let i = (n * 7 + seed) % 6;
                        let k = format!("k{i}").into_bytes();
                        let step = if n % 5 == 0 {
                            Step::Delete(k.clone())
                        } else {
                            let len = if n % 7 == 0 {
                                1_200_000
                            } else {
                                1000 + (n as usize * 997) % 60_000
                            };
                            Step::Put(k.clone(), value(&k, 1, n, len))
                        };
                        log.lock().unwrap().push((step.clone(), false));
                        let r = match &step {
                            Step::Put(k, v) => vde.put(k, v),
                            Step::Delete(k) => vde.delete(k).or_else(|e| match e {
                                VdeError::NotFound(_) => Ok(()),
                                e => Err(e),
                            }),
                        };
                        if r.is_err() {
                            return;
                        }
                        log.lock().unwrap().last_mut().unwrap().1 = true;
                    }
                });
                std::thread::sleep(std::time::Duration::from_millis(5 + seed * 13 % 150));
                let report = sim.power_cut(seed);
                eprintln!(
                    "seed {seed}: {} unflushed writes, {} lost",
                    report.unflushed, report.dropped
                );
            });
            std::mem::forget(vde); // the device is gone; nothing to close
            let image = sim.namespace_data(1);
            let rebooted = SimController::new(config());
            rebooted.restore_namespace(1, &image);
            let vde = Vde::open(Device::simulated(rebooted, Default::default()).unwrap(), small())
                .unwrap_or_else(|e| panic!("seed {seed}: reopen: {e}"));
            // Expected: replay acknowledged steps; the last unacknowledged one may or may
            // not have happened.
            let log = log.into_inner().unwrap();
            let mut want: BTreeMap<Vec<u8>, Option<Vec<u8>>> = (0..6u64)
                .map(|i| {
                    let k = format!("k{i}").into_bytes();
                    let v = value(&k, 0, i, 3000);
                    (k, Some(v))
                })
                .collect();
            let mut maybe: Option<Step> = None;
            for (step, acked) in log {
                if !acked {
                    maybe = Some(step);
                    break;
                }
                match step {
                    Step::Put(k, v) => want.insert(k, Some(v)),
                    Step::Delete(k) => want.insert(k, None),
                };
            }
            for (k, v) in &want {
                let got = match vde.get(k) {
                    Ok(g) => Some(g),
                    Err(VdeError::NotFound(_)) => None,
                    Err(e) => panic!("seed {seed}: {k:?}: {e}"),
                };
                let alt = match &maybe {
                    Some(Step::Put(mk, mv)) if mk == k => Some(Some(mv.clone())),
                    Some(Step::Delete(mk)) if mk == k => Some(None),
                    _ => None,
                };
                assert!(
                    got == *v || alt.as_ref() == Some(&got),
                    "seed {seed}: {k:?} holds {:?} bytes, expected {:?} or {:?}",
                    got.as_ref().map(Vec::len),
                    v.as_ref().map(Vec::len),
                    alt.map(|a| a.map(|v| v.len()))
                );
            }
            let r = vde.fsck().unwrap();
            assert!(r.clean(), "seed {seed}: {:?}", r.violations);
        }
    }

    /// Runs `f` on a thread and fails the test if it takes longer than `limit` (a hang
    /// fails instead of hanging the suite).
    fn within<T: Send + 'static>(limit: std::time::Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| panic!("{what}: still waiting after {limit:?} (a hang)"))
    }

    /// A lane that fails to be made wakes the threads waiting for a lane: with one lane
    /// allowed, a get waits while another thread makes it; that creation fails (Create
    /// I/O SQ is refused after a slow Create I/O CQ); the waiting get must then make its
    /// own lane rather than wait forever.
    #[test]
    fn a_failed_lane_creation_wakes_the_waiters() {
        use ironvme::nvme::cmd::admin;
        use ironvme::nvme::sim::{FaultAction, FaultRule};
        use ironvme::nvme::status::Status;
        let sim = SimController::new(config());
        let dev = Device::simulated(sim.clone(), Default::default()).unwrap();
        let opts = ironvme::vde::VdeOptions { lanes: 1, ..small() };
        let vde = Vde::format(dev, opts.clone()).unwrap();
        vde.put(b"k", b"value").unwrap();
        vde.close().unwrap();
        let vde =
            std::sync::Arc::new(Vde::open(Device::simulated(sim.clone(), Default::default()).unwrap(), opts).unwrap());
        // The data lane is made at the first get: its Create I/O CQ is slow, its Create
        // I/O SQ fails.
        sim.inject(FaultRule {
            qid: Some(0),
            opcode: Some(admin::CREATE_IO_CQ),
            times: Some(1),
            ..FaultRule::new(FaultAction::Delay(std::time::Duration::from_millis(400)))
        });
        sim.inject(FaultRule {
            qid: Some(0),
            opcode: Some(admin::CREATE_IO_SQ),
            times: Some(1),
            ..FaultRule::new(FaultAction::Status(Status::INTERNAL_ERROR))
        });
        let get = |pause: u64| {
            let v = std::sync::Arc::clone(&vde);
            within(
                std::time::Duration::from_secs(20),
                "a get waiting for a lane",
                move || {
                    std::thread::sleep(std::time::Duration::from_millis(pause));
                    v.get(b"k")
                },
            )
        };
        // The second get starts while the first one's lane is being made (normally).
        let (first, second) = std::thread::scope(|s| {
            let first = s.spawn(|| get(0));
            let second = s.spawn(|| get(100));
            (first.join().unwrap(), second.join().unwrap())
        });
        // Whichever made the failing lane gets the error; the other one the object.
        let (ok, err): (Vec<_>, Vec<_>) = [first, second].into_iter().partition(Result::is_ok);
        assert_eq!(ok.len(), 1, "{ok:?} {err:?}");
        assert_eq!(ok[0].as_ref().unwrap(), b"value");
        let e = err[0].as_ref().unwrap_err();
        assert!(e.to_string().contains("I/O queue"), "{e}");
    }

    /// After a failed journal Flush the store is poisoned: reads fail with the poison
    /// error instead of serving the failed transaction's in-memory state; reopening
    /// recovers the committed state.
    #[test]
    fn a_poisoned_store_serves_no_reads() {
        use ironvme::nvme::cmd::nvm;
        use ironvme::nvme::sim::{FaultAction, FaultRule};
        use ironvme::nvme::status::Status;
        let sim = SimController::new(config());
        let vde = Vde::format(Device::simulated(sim.clone(), Default::default()).unwrap(), small()).unwrap();
        vde.put(b"old", b"committed").unwrap();
        sim.inject(FaultRule {
            opcode: Some(nvm::FLUSH),
            times: Some(1),
            ..FaultRule::new(FaultAction::Status(Status::INTERNAL_ERROR))
        });
        let e = vde.put(b"new", b"never acknowledged").unwrap_err();
        assert!(matches!(e, VdeError::Poisoned(_)), "{e}");
        let poisoned = |what: &str, r: Result<String, VdeError>| match r {
            Err(VdeError::Poisoned(_)) => {}
            other => panic!("{what} on a poisoned store: {other:?}"),
        };
        poisoned("get", vde.get(b"old").map(|v| format!("{v:?}")));
        poisoned("get", vde.get(b"new").map(|v| format!("{v:?}")));
        poisoned("stat", vde.stat(b"old").map(|s| format!("{s:?}")));
        poisoned("list", vde.list(b"", None, 10).map(|l| format!("{l:?}")));
        poisoned("keys", vde.keys(b"").next().unwrap().map(|k| format!("{k:?}")));
        poisoned("info", vde.info().map(|i| format!("{} objects", i.objects)));
        poisoned("fsck", vde.fsck().map(|r| format!("{r:?}")));
        std::mem::forget(vde);
        let image = sim.namespace_data(1);
        let again = SimController::new(config());
        again.restore_namespace(1, &image);
        let vde = Vde::open(Device::simulated(again, Default::default()).unwrap(), small()).unwrap();
        assert_eq!(vde.get(b"old").unwrap(), b"committed");
        assert!(vde.fsck().unwrap().clean());
    }

    /// A read that fails during fsck is a violation and an I/O error: the report says the
    /// check is incomplete, so `vde fsck` exits 1, not 3.
    #[test]
    fn fsck_counts_failed_reads_as_io_errors() {
        use ironvme::nvme::cmd::nvm;
        use ironvme::nvme::sim::{FaultAction, FaultRule};
        use ironvme::nvme::status::Status;
        let sim = SimController::new(config());
        let vde = Vde::format(Device::simulated(sim.clone(), Default::default()).unwrap(), small()).unwrap();
        vde.put(b"k", &[7u8; 3 * 4096]).unwrap();
        let r = vde.fsck().unwrap();
        assert!(r.clean() && r.io_errors == 0, "{r:?}");
        // The namespace has 4 KiB blocks: a VDE block is one LBA.
        let (start, n) = vde.stat(b"k").unwrap().extents[0];
        sim.inject(FaultRule {
            opcode: Some(nvm::READ),
            lba: Some(start..start + n),
            ..FaultRule::new(FaultAction::Status(Status::INTERNAL_ERROR))
        });
        let r = vde.fsck().unwrap();
        assert_eq!(r.io_errors, 1, "{r:?}");
        assert!(
            r.violations.iter().any(|v| v.starts_with("object index: ")),
            "{:?}",
            r.violations
        );
    }

    #[test]
    fn the_simulated_controller_runs_the_model() {
        let sim = SimController::new(config());
        let dev = Device::simulated(sim.clone(), Default::default()).unwrap();
        let vde = Vde::format(dev, small()).unwrap();
        let current = std::cell::RefCell::new(sim);
        // Reopen = a fresh controller on the same media.
        model_run(vde, 11, 120, 25, &|v: Vde| {
            v.close().unwrap();
            let image = current.borrow().namespace_data(1);
            let again = SimController::new(config());
            again.restore_namespace(1, &image);
            *current.borrow_mut() = again.clone();
            Vde::open(Device::simulated(again, Default::default()).unwrap(), small()).unwrap()
        });
    }
}

/// A put acknowledged through the intent log only (the writer died before a commit) is
/// replayed at open, and its data blocks are in use from then on: later writes do not
/// get them (the space map loaded at open knows only the committed txg).
#[test]
fn a_replayed_put_keeps_its_blocks() {
    let disk = Disk::new(Backend::Psync, 16);
    let vde = format(disk.device());
    vde.checkpoint().unwrap();
    let v = bytes(5, 200 * 1024);
    vde.put(b"logged", &v).unwrap();
    std::mem::forget(vde); // no commit: the put is only in the intent log
    let vde = disk.open().unwrap();
    assert_eq!(vde.info().unwrap().pool.replayed, 1);
    for i in 0..8u64 {
        vde.put(format!("later{i}").as_bytes(), &bytes(i, 100 * 1024)).unwrap();
    }
    vde.vol_create("v", 1 << 20).unwrap();
    vde.vol_write("v", 0, &bytes(9, 1 << 20), true).unwrap();
    assert!(
        vde.get(b"logged").unwrap() == v,
        "a later write took the replayed put's blocks"
    );
    let r = vde.fsck().unwrap();
    assert!(r.clean(), "{:?}", r.violations);
}

/// Lost and misdirected metadata writes of one commit, on file images: the blocks one
/// `checkpoint` wrote (the diff of the image before and after it) that are format-2
/// metadata (magic VDE2, kind not Log), each (a) put back to its old bytes (lost write)
/// and (b) its new bytes put at every other block the commit wrote, its own place back
/// to old bytes (misdirected write). Every state: reads return the right bytes or an
/// error naming a changed block; fsck names a changed block, or the open fails naming
/// one. A superblock copy is the exception the pair exists for: its lost or
/// misdirected write is a crash before it, so the store opens from the other copy with
/// every byte and fsck is clean (likewise when another block's bytes land on it).
#[test]
fn lost_and_misdirected_metadata_writes_are_named() {
    let (disk, mut want) = populated(Backend::Psync);
    let vde = disk.open().unwrap();
    for (i, (k, v)) in want.objects.iter_mut().enumerate().filter(|(i, _)| i % 9 == 0) {
        *v = bytes(5000 + i as u64, 50 + i);
        vde.put(k, v).unwrap();
    }
    let data = bytes(200, 10 * 4096);
    vde.vol_write("v", 60, &data, false).unwrap();
    want.volumes[0].1[60 * 4096..70 * 4096].copy_from_slice(&data);
    vde.vol_flush().unwrap();
    let before = std::fs::read(&disk.path).unwrap();
    vde.checkpoint().unwrap();
    let after = std::fs::read(&disk.path).unwrap();
    std::mem::forget(vde);
    let written: Vec<u64> = (0..(after.len() / 4096) as u64)
        .filter(|&b| {
            after[b as usize * 4096..(b as usize + 1) * 4096] != before[b as usize * 4096..(b as usize + 1) * 4096]
        })
        .collect();
    let is_meta = |b: u64| {
        let blk = &after[b as usize * 4096..];
        u32::from_le_bytes(blk[..4].try_into().unwrap()) == ironvme::vde::block::MAGIC2
            && u16::from_le_bytes(blk[4..6].try_into().unwrap()) != NodeKind::Log as u16
    };
    let meta: Vec<u64> = written.iter().copied().filter(|&b| is_meta(b)).collect();
    assert!(meta.len() >= 3, "the commit wrote {written:?}");
    let blk = |img: &[u8], b: u64| img[b as usize * 4096..(b as usize + 1) * 4096].to_vec();
    let mut states = 0;
    for &m in &meta {
        let mut cases = vec![(vec![(m, blk(&before, m))], vec![m])];
        for &o in written.iter().filter(|&&o| o != m) {
            cases.push((vec![(m, blk(&before, m)), (o, blk(&after, m))], vec![m, o]));
        }
        for (changes, changed) in cases {
            let mut img = after.clone();
            for (b, bytes) in &changes {
                img[*b as usize * 4096..(*b as usize + 1) * 4096].copy_from_slice(bytes);
            }
            std::fs::write(&disk.path, &img).unwrap();
            states += 1;
            // The commit's superblock lost or overwritten: as if the commit never happened.
            let superblock = changed.iter().any(|&b| b < 2);
            let named = |e: &VdeError| changed.iter().any(|&b| vde_image::names_block(e, b));
            let vde = match disk.open() {
                Err(e) => {
                    assert!(!superblock && named(&e), "{changed:?}: open failed otherwise: {e}");
                    continue;
                }
                Ok(v) => v,
            };
            for e in read_everything(&vde, &want) {
                assert!(!superblock && named(&e), "{changed:?}: a read failed otherwise: {e}");
            }
            match vde.fsck() {
                Ok(r) if superblock => assert!(r.clean(), "{changed:?}: {:?}", r.violations),
                Ok(r) => assert!(
                    r.violations
                        .iter()
                        .any(|v| changed.iter().any(|&b| names_in_text(v, b))),
                    "{changed:?}: fsck: {:?}",
                    r.violations
                ),
                Err(e) => assert!(!superblock && named(&e), "{changed:?}: fsck failed otherwise: {e}"),
            }
        }
    }
    eprintln!(
        "{} blocks written by the commit, {} of them metadata: {states} states checked",
        written.len(),
        meta.len()
    );
}

/// A 1 MiB object (at most 30 extents) on a store whose free space next to the cursor is
/// single blocks, with a long free run elsewhere: next-fit from the cursor would cut it
/// into 256 pieces, and the put failed "too fragmented" with room to spare (seen in
/// `scripts/bench-vde`, 1 MiB puts after 4 KiB ones). It lands in the long run now.
#[test]
fn a_large_put_finds_a_long_run_past_fragmented_space() {
    let disk = sparse_disk(8192); // 32 MiB
    let vde = format(disk.device());
    // Fill with 4 KiB objects, in block order as next-fit hands them out.
    let mut keys = Vec::new();
    for i in 0u32.. {
        let key = format!("small/{i:06}");
        match vde.put(key.as_bytes(), &[i as u8; 4096]) {
            Ok(()) => keys.push(key),
            Err(VdeError::NoSpace { .. }) => break,
            Err(e) => panic!("put {i}: {e}"),
        }
    }
    // Every other one of the first half gone: single free blocks there. The last 400
    // gone: a long free run at the end.
    let half = keys.len() / 2;
    for k in keys[..half].iter().step_by(2).chain(&keys[keys.len() - 400..]) {
        vde.delete(k.as_bytes()).unwrap();
    }
    for _ in 0..3 {
        vde.checkpoint().unwrap();
    }
    // The cursor wraps to the fragmented start with one more small object.
    vde.put(b"small/again", &[1; 4096]).unwrap();
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    vde.put(b"big", &big).unwrap();
    assert_eq!(vde.get(b"big").unwrap(), big);
    vde.close().unwrap();
    let r = disk.open().unwrap().fsck().unwrap();
    assert!(r.clean(), "{:?}", r.violations);
}
