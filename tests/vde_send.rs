//! Replication on the host (`docs/vde-stream.md`): `Vde::send` and `Vde::recv` between
//! stores over files, one with 4 KiB logical blocks and one with 512 B.
//!
//! - A full stream and five incrementals across two clones, each after random writes,
//!   zeroes and deallocates, then one back the other way: every snapshot on the replica
//!   reads byte for byte as on the source, with the same GUID, and both stores stay
//!   fsck-clean.
//! - An incremental ships at most 1.05× the bytes changed plus the stream's fixed
//!   overhead, and reads only the changed extents.
//! - Every flipped byte of a small stream, and truncations, are refused, and the target
//!   is unchanged; a truncated receive resumes with `send_resume` to the same result.
//! - Refused targets: a missing base, a volume written after the base (accepted with
//!   `force`, which rolls it back), another volume of the same name, a full stream onto
//!   an existing volume, a resumed stream with nothing to resume, a new stream while a
//!   receive is waiting.
//! - The CLI: a receive killed with SIGKILL mid-stream leaves the replica at its previous
//!   snapshot and fsck-clean, `vde recv-token` names where it stopped, and `vde send -t`
//!   piped to `vde recv` completes it.

use ironvme::vde::{RecvStats, ResumeToken, SendStats, Vde, VdeError, VdeOptions};
use ironvme::{Backend, Device, OpenOptions};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

const BS: usize = 4096;

struct Disk {
    _dir: tempfile::TempDir,
    path: PathBuf,
    lba: u32,
}

impl Disk {
    fn new(mib: u64, lba: u32) -> Disk {
        let dir = tempfile::tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let path = dir.path().join("vde.img");
        std::fs::File::create(&path).unwrap().set_len(mib << 20).unwrap();
        Disk { _dir: dir, path, lba }
    }

    fn device(&self) -> Device {
        let o = OpenOptions {
            backend: Some(Backend::Psync),
            file_block_size: Some(self.lba),
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

    fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// A source store (4 KiB blocks) and a replica (`lba`-byte blocks), formatted.
fn two_stores(a_mib: u64, b_mib: u64, lba: u32) -> (Disk, Disk, Vde, Vde) {
    let (da, db) = (Disk::new(a_mib, 4096), Disk::new(b_mib, lba));
    let (a, b) = (da.format(), db.format());
    (da, db, a, b)
}

/// Volume `v` of 1 MiB on `a` with its first 64 blocks written, and its snapshot `v@s0`.
fn small_volume(a: &Vde) {
    a.vol_create("v", 1 << 20).unwrap();
    a.vol_write("v", 0, &[1; 64 * BS], false).unwrap();
    snap(a, "v@s0");
}

/// xorshift64*: deterministic test data and choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

fn send(v: &Vde, snap: &str, base: Option<&str>) -> (Vec<u8>, SendStats) {
    let mut out = Vec::new();
    let stats = v.send(snap, base, 0, &mut out, &mut |_| {}).unwrap();
    assert_eq!(stats.stream_bytes, out.len() as u64, "{snap}");
    (out, stats)
}

fn recv(v: &Vde, vol: &str, stream: &[u8]) -> Result<RecvStats, VdeError> {
    v.recv(vol, false, &mut &stream[..], &mut |_| {})
}

/// The whole contents of a volume or snapshot.
fn contents(v: &Vde, name: &str) -> Vec<u8> {
    let size = v.dataset(name).unwrap().size as usize;
    let mut out = vec![0u8; size];
    for (i, chunk) in out.chunks_mut(1 << 20).enumerate() {
        v.vol_read(name, (i * (1 << 20) / BS) as u64, chunk).unwrap();
    }
    out
}

/// Random writes, zeroes and deallocates (the VDE stores both as holes) on `vol`;
/// returns the blocks written.
fn mutate(v: &Vde, vol: &str, rng: &mut Rng, ops: usize) -> BTreeSet<u64> {
    let blocks = v.dataset(vol).unwrap().size / BS as u64;
    let mut written = BTreeSet::new();
    for _ in 0..ops {
        let n = 1 + rng.below(48);
        let at = rng.below(blocks - n);
        if rng.below(4) == 0 {
            v.vol_unmap(vol, at, n).unwrap();
        } else {
            v.vol_write(vol, at, &rng.bytes(n as usize * BS), false).unwrap();
            written.extend(at..at + n);
        }
    }
    v.vol_flush().unwrap();
    written
}

fn snap(v: &Vde, name: &str) {
    let (vol, s) = name.split_once('@').unwrap();
    v.snap_create(vol, s).unwrap();
}

fn names(v: &Vde) -> Vec<String> {
    let mut n: Vec<String> = v.vol_list().unwrap().into_iter().map(|d| d.name).collect();
    n.extend(v.snap_list(None).unwrap().into_iter().map(|d| d.name));
    n
}

fn assert_clean(v: &Vde) {
    let r = v.fsck().unwrap();
    assert!(r.violations.is_empty(), "{:?}", r.violations);
}

fn assert_same(a: &Vde, b: &Vde, name: &str) {
    assert_eq!(
        a.dataset(name).unwrap().guid,
        b.dataset(name).unwrap().guid,
        "{name}'s GUID"
    );
    assert!(contents(a, name) == contents(b, name), "{name} differs on the replica");
}

#[test]
fn a_full_send_and_five_incrementals_across_two_clones_replicate_every_snapshot() {
    let (da, db, a, b) = two_stores(96, 96, 512);
    let mut rng = Rng(0x5eed_5e4d);
    a.vol_create("v", 8 << 20).unwrap();
    mutate(&a, "v", &mut rng, 60);
    snap(&a, "v@s0");
    recv(&b, "v", &send(&a, "v@s0", None).0).unwrap();
    // (snapshot, base, volume it is received into; a clone is made from the base)
    let steps = [
        ("v@s1", "v@s0", None),
        ("c1@s2", "v@s1", Some("v@s1")),
        ("c1@s3", "c1@s2", None),
        ("c2@s4", "c1@s3", Some("c1@s3")),
        ("c2@s5", "c2@s4", None),
    ];
    for (target, base, clone_of) in steps {
        let vol = target.split_once('@').unwrap().0;
        if let Some(origin) = clone_of {
            let (ov, os) = origin.split_once('@').unwrap();
            a.clone_snapshot(ov, os, vol).unwrap();
        }
        let written = mutate(&a, vol, &mut rng, 40);
        snap(&a, target);
        let (stream, stats) = send(&a, target, Some(base));
        // Only changed extents are read and shipped: at most the blocks written.
        assert!(stats.write_bytes <= written.len() as u64 * BS as u64, "{stats:?}");
        let got = recv(&b, vol, &stream).unwrap();
        assert_eq!((got.writes, got.frees), (stats.writes, stats.frees));
    }
    for name in ["v@s0", "v@s1", "c1@s2", "c1@s3", "c2@s4", "c2@s5"] {
        assert_same(&a, &b, name);
    }
    for vol in ["v", "c1", "c2"] {
        if vol != "v" {
            assert_eq!(
                contents(&b, vol),
                contents(&b, &format!("{vol}@s{}", if vol == "c1" { 3 } else { 5 }))
            );
        }
    }
    // And back: the replica's changes to c2 go home.
    mutate(&b, "c2", &mut rng, 30);
    snap(&b, "c2@s6");
    // The source's c2 is as its snapshot s5 left it: the stream applies without -F.
    recv(&a, "c2", &send(&b, "c2@s6", Some("c2@s5")).0).unwrap();
    assert_same(&a, &b, "c2@s6");
    assert_clean(&a);
    assert_clean(&b);
    // Both survive a reopen.
    drop((a, b));
    let (a, b) = (da.open(), db.open());
    assert_same(&a, &b, "c2@s6");
    assert_same(&a, &b, "v@s0");
}

#[test]
fn random_histories_on_deep_extent_maps_replicate_exactly() {
    // Thousands of small extents make a multi-level extent map, so sends prune shared
    // subtrees at every level; large deallocates empty whole leaves (merges).
    for seed in [1u64, 2, 3] {
        let (_da, _db, a, b) = two_stores(96, 96, 512);
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let blocks = 8192u64;
        a.vol_create("v", blocks * BS as u64).unwrap();
        for _ in 0..6000 {
            let at = rng.below(blocks);
            a.vol_write("v", at, &rng.bytes(BS), false).unwrap();
        }
        snap(&a, "v@r0");
        recv(&b, "v", &send(&a, "v@r0", None).0).unwrap();
        for round in 1..=6 {
            for _ in 0..rng.below(300) {
                let n = 1 + rng.below(8);
                let at = rng.below(blocks - n);
                a.vol_write("v", at, &rng.bytes(n as usize * BS), false).unwrap();
            }
            for _ in 0..rng.below(4) {
                let most = if rng.below(2) == 0 { 16 } else { 3000 };
                let n = 1 + rng.below(most);
                let at = rng.below(blocks - n);
                a.vol_unmap("v", at, n).unwrap();
            }
            let (name, base) = (format!("v@r{round}"), format!("v@r{}", round - 1));
            snap(&a, &name);
            let (stream, _) = send(&a, &name, Some(&base));
            recv(&b, "v", &stream).unwrap();
            assert_same(&a, &b, &name);
        }
        assert_clean(&b);
    }
}

#[test]
fn an_incremental_ships_at_most_1_05x_the_bytes_changed() {
    let (_da, _db, a, b) = two_stores(160, 160, 4096);
    a.vol_create("v", 64 << 20).unwrap();
    // A full volume, then 1 MiB of random 4 KiB writes.
    let mut rng = Rng(7);
    for i in 0..64u64 {
        a.vol_write("v", i * 256, &rng.bytes(1 << 20), false).unwrap();
    }
    snap(&a, "v@full");
    let mut changed = BTreeSet::new();
    for _ in 0..256 {
        let at = rng.below(16384);
        a.vol_write("v", at, &rng.bytes(BS), false).unwrap();
        changed.insert(at);
    }
    snap(&a, "v@inc");
    let (full, fs) = send(&a, "v@full", None);
    let (inc, is) = send(&a, "v@inc", Some("v@full"));
    let changed = changed.len() as u64 * BS as u64;
    // Fixed overhead: the header (256 B) and End record (56 B).
    assert!(
        is.stream_bytes as f64 <= 1.05 * changed as f64 + 312.0,
        "{} stream bytes for {changed} bytes changed",
        is.stream_bytes
    );
    assert_eq!(is.write_bytes, changed);
    assert_eq!(is.blocks_skipped, 16384 - changed / BS as u64);
    assert!(fs.efficiency > 1.0 && fs.efficiency < 1.001, "{fs:?}");
    recv(&b, "v", &full).unwrap();
    recv(&b, "v", &inc).unwrap();
    assert_same(&a, &b, "v@inc");
}

/// A small incremental with Write and Free records, its target store at the base, and
/// what the target looked like.
fn small_incremental() -> (Disk, Vde, Vec<u8>, Vec<String>, Vec<u8>) {
    let (_da, db, a, b) = two_stores(32, 32, 512);
    a.vol_create("v", 1 << 20).unwrap();
    a.vol_write("v", 0, &[1; 16 * BS], false).unwrap();
    snap(&a, "v@s0");
    recv(&b, "v", &send(&a, "v@s0", None).0).unwrap();
    a.vol_write("v", 3, &[2; BS], false).unwrap();
    a.vol_unmap("v", 8, 4).unwrap();
    a.vol_write("v", 100, &[3; 2 * BS], false).unwrap();
    snap(&a, "v@s1");
    let (s, st) = send(&a, "v@s1", Some("v@s0"));
    assert_eq!((st.writes, st.frees), (2, 1), "{st:?}");
    let before = names(&b);
    let vol = contents(&b, "v");
    drop(a);
    (db, b, s, before, vol)
}

#[test]
fn every_flipped_byte_and_sampled_truncations_are_refused_and_changes_nothing() {
    let (_d, b, stream, before, vol) = small_incremental();
    let unchanged = |b: &Vde, what: &str| {
        assert_eq!(names(b), before, "{what}");
        // Whatever arrived waits in the hidden volume; discard it for the next try.
        b.recv_abort("v").unwrap();
        assert!(b.recv_token("v").unwrap().is_none(), "{what}");
    };
    for at in 0..stream.len() {
        let mut bad = stream.clone();
        bad[at] ^= 0x20;
        let r = recv(&b, "v", &bad);
        assert!(r.is_err(), "byte {at} flipped was accepted");
        unchanged(&b, &format!("byte {at} flipped"));
        if at % 512 == 0 {
            assert!(contents(&b, "v") == vol, "byte {at} flipped changed the volume");
        }
    }
    // Every length in the header and first record, then sampled, and each record's end.
    let lens = (0..600)
        .chain((600..stream.len()).step_by(61))
        .chain([4392, 4424, 4456, 12712, stream.len() - 1]);
    for len in lens.filter(|&l| l < stream.len()) {
        let r = recv(&b, "v", &stream[..len]);
        assert!(r.is_err(), "a stream cut at {len} bytes was accepted");
        unchanged(&b, &format!("cut at {len}"));
    }
    // Bytes after the End record.
    let mut long = stream.clone();
    long.push(0);
    assert!(recv(&b, "v", &long).is_err());
    unchanged(&b, "a byte after End");
    assert!(contents(&b, "v") == vol);
    recv(&b, "v", &stream).unwrap();
    assert_clean(&b);
}

#[test]
fn a_truncated_receive_resumes_from_its_token() {
    let (_da, _db, a, b) = two_stores(96, 192, 512);
    let mut rng = Rng(99);
    a.vol_create("v", 32 << 20).unwrap();
    for i in 0..32u64 {
        a.vol_write("v", i * 256, &rng.bytes(1 << 20), false).unwrap();
    }
    snap(&a, "v@s0");
    let (full, _) = send(&a, "v@s0", None);
    // Cut after ~20 MiB: what was applied before the cut is recorded (19 whole 1 MiB
    // records).
    let err = recv(&b, "v", &full[..20 << 20]).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(b.dataset("v").is_err() && b.snap_list(None).unwrap().is_empty());
    let token = b.recv_token("v").unwrap().expect("a token");
    assert!(token.offset >= 19 << 20, "{token:?}");
    let token: ResumeToken = token.to_string().parse().unwrap();
    // Another stream is refused while the receive waits.
    a.vol_write("v", 0, &[5; BS], false).unwrap();
    snap(&a, "v@s1");
    let r = recv(&b, "v", &send(&a, "v@s1", None).0);
    assert!(r.unwrap_err().to_string().contains("waiting"));
    let mut rest = Vec::new();
    let st = a.send_resume(&token, &mut rest, &mut |_| {}).unwrap();
    assert!(st.write_bytes <= (32 << 20) - token.offset, "{st:?}");
    let got = recv(&b, "v", &rest).unwrap();
    assert_eq!(got.resumed_at, token.offset);
    assert_same(&a, &b, "v@s0");
    assert!(contents(&b, "v") == contents(&a, "v@s0"));
    assert_clean(&b);
    // Cut inside the first record: the token's offset is 0, and it still resumes (it
    // once named a stream no receive would take).
    let err = recv(&b, "w", &full[..1000]).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    let t0 = b.recv_token("w").unwrap().expect("a token");
    assert_eq!(t0.offset, 0);
    let mut again = Vec::new();
    a.send_resume(&t0, &mut again, &mut |_| {}).unwrap();
    recv(&b, "w", &again).unwrap();
    assert!(contents(&b, "w") == contents(&a, "v@s0"));
    // The same stream from the start continues a waiting receive too.
    recv(&b, "x", &full[..5 << 20]).unwrap_err();
    recv(&b, "x", &full).unwrap();
    assert!(contents(&b, "x") == contents(&a, "v@s0"));
    assert_clean(&b);
    // A resumed stream with nothing to resume is refused.
    let r = recv(&b, "y", &rest);
    assert!(r.unwrap_err().to_string().contains("none into y is waiting"));
}

#[test]
fn receives_onto_the_wrong_target_are_refused_with_their_reason() {
    let (_da, _db, a, b) = two_stores(32, 32, 4096);
    a.vol_create("v", 1 << 20).unwrap();
    a.vol_write("v", 0, &[1; 4 * BS], false).unwrap();
    snap(&a, "v@s0");
    a.vol_write("v", 1, &[2; BS], false).unwrap();
    snap(&a, "v@s1");
    let (full, _) = send(&a, "v@s0", None);
    let (inc, _) = send(&a, "v@s1", Some("v@s0"));
    let err = |r: Result<RecvStats, VdeError>| r.unwrap_err().to_string();
    // No base here.
    assert!(err(recv(&b, "v", &inc)).contains("is not on this store"));
    // Another volume named v.
    b.vol_create("v", 1 << 20).unwrap();
    snap(&b, "v@s0");
    assert!(err(recv(&b, "v", &inc)).contains("another volume"));
    assert!(err(recv(&b, "v", &full)).contains("exists"));
    b.vol_remove("v", true).unwrap();
    recv(&b, "v", &full).unwrap();
    // Written after the base: refused, and -F rolls back.
    b.vol_write("v", 2, &[9; BS], false).unwrap();
    assert!(err(recv(&b, "v", &inc)).contains("written after"));
    assert!(contents(&b, "v")[2 * BS] == 9);
    b.recv("v", true, &mut &inc[..], &mut |_| {}).unwrap();
    assert_same(&a, &b, "v@s1");
    assert!(contents(&b, "v") == contents(&a, "v@s1"));
    // The same stream again: its snapshot exists.
    assert!(err(recv(&b, "v", &inc)).contains("exists"));
    assert_clean(&b);
}

fn ironvme(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ironvme")).args(args).output().unwrap()
}

/// `ironvme ARGS` with `input` on its standard input; its output once it exits.
fn fed(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut r = Command::new(env!("CARGO_BIN_EXE_ironvme"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    r.stdin.take().unwrap().write_all(input).unwrap();
    r.wait_with_output().unwrap()
}

fn ok(args: &[&str]) -> Vec<u8> {
    let o = ironvme(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

#[test]
fn a_receive_killed_mid_stream_keeps_the_replica_and_resumes_with_send_t() {
    let (da, db) = (Disk::new(96, 4096), Disk::new(96, 512));
    {
        let a = da.format();
        let mut rng = Rng(3);
        a.vol_create("v", 24 << 20).unwrap();
        a.vol_write("v", 0, &rng.bytes(1 << 20), false).unwrap();
        snap(&a, "v@s0");
        for i in 0..24u64 {
            a.vol_write("v", i * 256, &rng.bytes(1 << 20), false).unwrap();
        }
        snap(&a, "v@s1");
        a.close().unwrap();
        db.format().close().unwrap();
    }
    let s0 = ok(&["vde", "send", da.path(), "v@s0"]);
    assert!(fed(&["vde", "recv", db.path(), "v"], &s0).status.success());
    let s1 = ok(&["vde", "send", da.path(), "v@s1", "-i", "@s0"]);
    // A stream cut short: with -s the receive keeps what arrived and names the token,
    // the one `recv-token` prints (it once named the last commit's, 0 here).
    let o = fed(&["vde", "recv", db.path(), "v", "-s"], &s1[..12 << 20]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success() && err.contains("truncated"), "{err}");
    let token = String::from_utf8(ok(&["vde", "recv-token", db.path(), "v"])).unwrap();
    assert!(err.contains(&format!("send -t {}", token.trim())), "{err} / {token}");
    assert!(
        token.trim().parse::<ResumeToken>().unwrap().offset >= 11 << 20,
        "{token}"
    );
    ok(&["vde", "recv", db.path(), "v", "-A"]);
    // Without -s a failed receive keeps nothing.
    assert!(!fed(&["vde", "recv", db.path(), "v"], &s1[..12 << 20]).status.success());
    assert!(!ironvme(&["vde", "recv-token", db.path(), "v"]).status.success());
    let mut r = Command::new(env!("CARGO_BIN_EXE_ironvme"))
        .args(["vde", "recv", db.path(), "v"])
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // 20 of the stream's 24 MiB: the receiver has flushed at least 16 MiB when the
    // last of it is taken from the pipe; give it time to apply, then SIGKILL.
    let mut pipe = r.stdin.take().unwrap();
    pipe.write_all(&s1[..20 << 20]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    r.kill().unwrap();
    r.wait().unwrap();
    drop(pipe);
    let fsck = ok(&["vde", "fsck", db.path()]);
    assert!(String::from_utf8_lossy(&fsck).contains("clean"));
    let snaps = String::from_utf8_lossy(&ok(&["vde", "snap", "ls", db.path()])).into_owned();
    assert!(snaps.contains("v@s0") && !snaps.contains("v@s1"), "{snaps}");
    let token = String::from_utf8(ok(&["vde", "recv-token", db.path(), "v"])).unwrap();
    let t: ResumeToken = token.trim().parse().unwrap();
    assert!(t.offset >= 8 << 20, "{t:?}");
    let rest = ok(&["vde", "send", da.path(), "-t", token.trim()]);
    assert!(rest.len() < s1.len());
    let o = fed(&["vde", "recv", db.path(), "v", "--json"], &rest);
    assert!(o.status.success());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["resumed_at"], t.offset);
    let (a, b) = (da.open(), db.open());
    assert_same(&a, &b, "v@s1");
    assert_same(&a, &b, "v@s0");
    assert_clean(&b);
}

#[test]
fn shrinks_grows_and_rollbacks_replicate_and_a_rollback_restores_the_size() {
    let (_da, _db, a, b) = two_stores(32, 32, 512);
    a.vol_create("v", 256 * BS as u64).unwrap();
    a.vol_write("v", 200, &[7; 8 * BS], false).unwrap();
    snap(&a, "v@p");
    recv(&b, "v", &send(&a, "v@p", None).0).unwrap();
    // Shrunk past the data, then rolled back: the size comes back with the data (it once
    // stayed shrunk, and a send then met extents past the end).
    a.vol_resize("v", 100 * BS as u64).unwrap();
    a.rollback("v", "p").unwrap();
    assert_eq!(a.dataset("v").unwrap().size, 256 * BS as u64);
    assert!(contents(&a, "v") == contents(&a, "v@p"));
    snap(&a, "v@s");
    recv(&b, "v", &send(&a, "v@s", Some("v@p")).0).unwrap();
    assert_same(&a, &b, "v@s");
    // Shrunk across data (the blocks past the end freed), then grown: the replica follows.
    a.vol_resize("v", 204 * BS as u64).unwrap();
    snap(&a, "v@small");
    recv(&b, "v", &send(&a, "v@small", Some("v@s")).0).unwrap();
    assert_same(&a, &b, "v@small");
    assert_eq!(b.dataset("v").unwrap().size, 204 * BS as u64);
    a.vol_resize("v", 300 * BS as u64).unwrap();
    a.vol_write("v", 290, &[9; BS], false).unwrap();
    snap(&a, "v@big");
    // From an older base than the newest on the sender (the replica has small too; -F
    // rolls it back and deletes it).
    let (old, _) = send(&a, "v@big", Some("v@s"));
    assert!(recv(&b, "v", &old).unwrap_err().to_string().contains("newer than"));
    b.recv("v", true, &mut &old[..], &mut |_| {}).unwrap();
    assert_same(&a, &b, "v@big");
    assert!(b.dataset("v@small").is_err());
    assert_eq!(b.dataset("v").unwrap().size, 300 * BS as u64);
    assert_clean(&a);
    assert_clean(&b);
}

#[test]
fn a_forced_receive_that_fails_changes_nothing_and_refusals_leave_the_store_usable() {
    let (_da, _db, a, b) = two_stores(32, 32, 4096);
    small_volume(&a);
    a.vol_write("v", 10, &[2; 32 * BS], false).unwrap();
    snap(&a, "v@s1");
    recv(&b, "v", &send(&a, "v@s0", None).0).unwrap();
    let (inc, _) = send(&a, "v@s1", Some("v@s0"));
    // The replica moved on: a newer snapshot and writes after it.
    b.vol_write("v", 3, &[8; BS], false).unwrap();
    snap(&b, "v@n1");
    b.vol_write("v", 4, &[9; BS], false).unwrap();
    let before = contents(&b, "v");
    // -F with a stream cut short: nothing is deleted or rolled back (it once was before
    // the stream had arrived).
    let err = b
        .recv("v", true, &mut &inc[..inc.len() - 100], &mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    assert!(b.dataset("v@n1").is_ok());
    assert!(contents(&b, "v") == before);
    b.recv_abort("v").unwrap();
    // -F when a snapshot it would delete has a clone: refused before anything changes.
    b.clone_snapshot("v", "n1", "c").unwrap();
    let err = b.recv("v", true, &mut &inc[..], &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("clone"), "{err}");
    assert!(b.dataset("v@n1").is_ok() && contents(&b, "v") == before);
    assert!(b.recv_token("v").unwrap().is_none());
    b.vol_remove("c", false).unwrap();
    // A partial receive, then the volume is written: the resume is refused, and the
    // store stays usable (a refusal once poisoned it).
    b.snap_remove("v", "n1").unwrap();
    b.rollback("v", "s0").unwrap();
    let cut = recv(&b, "v", &inc[..inc.len() / 2]).unwrap_err();
    assert!(cut.to_string().contains("truncated"), "{cut}");
    b.vol_write("v", 5, &[4; BS], false).unwrap();
    let err = recv(&b, "v", &inc).unwrap_err();
    assert!(err.to_string().contains("written after"), "{err}");
    b.vol_write("v", 6, &[4; BS], false).unwrap();
    // With -F it goes through, rolling the write back.
    b.recv("v", true, &mut &inc[..], &mut |_| {}).unwrap();
    assert_same(&a, &b, "v@s1");
    assert!(contents(&b, "v") == contents(&a, "v@s1"));
    // A full stream waiting, then a volume of that name made: refused, store usable.
    let (full1, _) = send(&a, "v@s1", None);
    recv(&b, "w", &full1[..full1.len() / 2]).unwrap_err();
    b.vol_create("w", 1 << 20).unwrap();
    assert!(recv(&b, "w", &full1).unwrap_err().to_string().contains("exists"));
    b.vol_write("w", 0, &[1; BS], false).unwrap();
    assert!(b.recv_abort("w").unwrap());
    assert_clean(&b);
}

#[test]
fn the_hidden_volume_of_a_receive_cannot_be_reached() {
    use ironvme::vde::volume::VolumeSpec;
    let (_da, db, a, b) = two_stores(32, 32, 4096);
    small_volume(&a);
    let (full, _) = send(&a, "v@s0", None);
    recv(&b, "v", &full[..full.len() / 2]).unwrap_err();
    let hidden = "v%recv";
    for r in [
        b.snap_create(hidden, "x"),
        b.vol_remove(hidden, true),
        b.vol_resize(hidden, 4096),
        b.rollback(hidden, "x"),
        b.clone_snapshot(hidden, "x", "y"),
    ] {
        assert!(r.unwrap_err().to_string().contains("hidden"));
    }
    let spec = format!("vde:{}:{hidden}", db.path());
    assert!(VolumeSpec::parse(&spec).unwrap().is_err());
    assert!(names(&b).is_empty(), "{:?}", names(&b));
    recv(&b, "v", &full).unwrap();
    assert_same(&a, &b, "v@s0");
}
