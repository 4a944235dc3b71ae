//! VDE checks written once and run on every backend: on the host (psync and io_uring on
//! files, the simulated controller) by `tests/vde.rs`, and in the guest (VFIO, io_uring,
//! io_uring passthrough, ioctl, psync on QEMU's controllers) by `tests/guest_vde.rs`.
#![allow(dead_code)]

use ironvme::Device;
use ironvme::vde::{Vde, VdeError, VdeOptions};
use std::collections::BTreeMap;
use xxhash_rust::xxh3::xxh3_64;

/// Small caches and buffers, so tests reach the device rather than memory.
pub fn small() -> VdeOptions {
    VdeOptions {
        cache_blocks: 32,
        lanes: 4,
        staging_bytes: 256 * 1024,
        ..VdeOptions::default()
    }
}

/// `len` bytes that depend on `seed`.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    super::common::pattern(seed, len)
}

/// A self-describing value: key, writer, counter, then payload, then an xxh3 of it all.
pub fn value(key: &[u8], writer: u64, n: u64, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len.max(32) + 8);
    v.extend_from_slice(&(key.len() as u64).to_le_bytes());
    v.extend_from_slice(&writer.to_le_bytes());
    v.extend_from_slice(&n.to_le_bytes());
    v.extend_from_slice(&xxh3_64(key).to_le_bytes());
    v.extend(bytes(writer << 32 | n, len.saturating_sub(32)));
    let sum = xxh3_64(&v);
    v.extend_from_slice(&sum.to_le_bytes());
    v
}

/// Checks a value made by [`value`] for `key`; returns (writer, counter).
pub fn check_value(key: &[u8], v: &[u8]) -> (u64, u64) {
    assert!(v.len() >= 40, "value of {} bytes for {key:?} is too short", v.len());
    let (body, sum) = v.split_at(v.len() - 8);
    assert_eq!(xxh3_64(body).to_le_bytes(), sum, "value for {key:?} is damaged");
    let word = |i: usize| u64::from_le_bytes(body[i * 8..i * 8 + 8].try_into().unwrap());
    assert_eq!(word(3), xxh3_64(key), "value under {key:?} was written for another key");
    (word(1), word(2))
}

/// Random put/get/delete/list steps against a BTreeMap, reopening the store every
/// `reopen_every` steps with `reopen`. Sizes reach past one extent (1 MiB) now and then.
pub fn model_run(mut vde: Vde, seed: u64, steps: usize, reopen_every: usize, reopen: &dyn Fn(Vde) -> Vde) -> Vde {
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut rng = seed | 1;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for step in 0..steps {
        let k = format!("dir{}/key{:03}", next(3), next(40)).into_bytes();
        match next(10) {
            0..=3 => {
                let len = match next(20) {
                    0 => 1_100_000 + next(100_000) as usize,
                    1 => 0,
                    2..=5 => next(70_000) as usize,
                    _ => next(5000) as usize,
                };
                let v = bytes(seed ^ step as u64, len);
                vde.put(&k, &v)
                    .unwrap_or_else(|e| panic!("step {step}: put {len} B: {e}"));
                model.insert(k, v);
            }
            4..=5 => match (vde.delete(&k), model.remove(&k)) {
                (Ok(()), Some(_)) | (Err(VdeError::NotFound(_)), None) => {}
                (r, m) => panic!("step {step}: delete gave {r:?}, model had {}", m.is_some()),
            },
            6..=7 => match (vde.get(&k), model.get(&k)) {
                (Ok(v), Some(m)) => assert!(v == *m, "step {step}: get returned other bytes"),
                (Err(VdeError::NotFound(_)), None) => {}
                (r, m) => panic!(
                    "step {step}: get gave {:?}, model has {:?}",
                    r.map(|v| v.len()),
                    m.map(Vec::len)
                ),
            },
            8 => {
                let prefix = format!("dir{}/", next(3)).into_bytes();
                let keys: Vec<Vec<u8>> = vde.keys(&prefix).map(Result::unwrap).collect();
                let want: Vec<Vec<u8>> = model.keys().filter(|k| k.starts_with(&prefix)).cloned().collect();
                assert_eq!(keys, want, "step {step}: list");
                if let Some(k) = want.first() {
                    assert_eq!(vde.stat(k).unwrap().size, model[k].len() as u64);
                }
            }
            _ => {}
        }
        if reopen_every > 0 && step % reopen_every == reopen_every - 1 {
            vde = reopen(vde);
        }
    }
    vde = reopen(vde);
    for (k, v) in &model {
        assert!(vde.get(k).unwrap() == *v, "after the run: {k:?} differs");
    }
    assert_eq!(vde.info().unwrap().objects, model.len() as u64);
    let r = vde.fsck().unwrap();
    assert!(r.clean(), "fsck: {:?}", r.violations);
    vde
}

/// Several threads at once: each puts, gets and deletes its own keys and a set of shared
/// keys; every value read is whole and belongs to its key. Returns the store.
pub fn stress(vde: Vde, threads: u64, ops: u64, len: usize) -> Vde {
    std::thread::scope(|s| {
        for t in 0..threads {
            let vde = &vde;
            s.spawn(move || {
                let mut rng = t * 7919 + 1;
                for n in 0..ops {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let own = format!("t{t}/{}", rng % 8).into_bytes();
                    let shared = format!("shared/{}", (rng >> 20) % 4).into_bytes();
                    let k = if n % 3 == 0 { &shared } else { &own };
                    match (rng >> 40) % 4 {
                        0 | 1 => vde.put(k, &value(k, t, n, len + (rng >> 50) as usize % len)).unwrap(),
                        2 => match vde.get(k) {
                            Ok(v) => {
                                check_value(k, &v);
                            }
                            Err(VdeError::NotFound(_)) => {}
                            Err(e) => panic!("get {k:?}: {e}"),
                        },
                        _ => match vde.delete(k) {
                            Ok(()) | Err(VdeError::NotFound(_)) => {}
                            Err(e) => panic!("delete {k:?}: {e}"),
                        },
                    }
                }
            });
        }
    });
    for prefix in [&b"t"[..], b"shared/"] {
        for k in vde.keys(prefix).map(Result::unwrap) {
            check_value(&k, &vde.get(&k).unwrap());
        }
    }
    let r = vde.fsck().unwrap();
    assert!(r.clean(), "fsck after stress: {:?}", r.violations);
    vde
}

/// Bad input: every refusal is precise and changes nothing.
pub fn refusals(vde: &Vde) {
    assert!(matches!(vde.put(b"", b"x"), Err(VdeError::BadKey(0))));
    assert!(matches!(vde.put(&[b'k'; 256], b"x"), Err(VdeError::BadKey(256))));
    assert!(matches!(vde.get(b"absent"), Err(VdeError::NotFound(_))));
    assert!(matches!(vde.delete(b"absent"), Err(VdeError::NotFound(_))));
    let huge = vec![0u8; (ironvme::vde::MAX_OBJECT + 1) as usize];
    assert!(matches!(vde.put(b"huge", &huge), Err(VdeError::ObjectTooLarge(_))));
    assert!(matches!(vde.get(b"huge"), Err(VdeError::NotFound(_))));
    let r = vde.fsck().unwrap();
    assert!(r.clean(), "{:?}", r.violations);
}

/// Fills the store with 1 MiB objects until it is full: NoSpace, nothing half-written,
/// and space comes back after a delete.
pub fn fill(vde: &Vde) {
    let v = bytes(1, 1 << 20);
    let mut n = 0;
    let err = loop {
        match vde.put(format!("fill/{n:05}").as_bytes(), &v) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 100_000, "never filled");
    };
    assert!(matches!(err, VdeError::NoSpace { .. }), "{err}");
    assert!(matches!(
        vde.get(format!("fill/{n:05}").as_bytes()),
        Err(VdeError::NotFound(_))
    ));
    vde.delete(b"fill/00000").unwrap();
    vde.put(b"fill/again", &v).unwrap();
    assert!(vde.get(b"fill/again").unwrap() == v);
    let r = vde.fsck().unwrap();
    assert!(r.clean(), "{:?}", r.violations);
    for i in 1..n {
        vde.delete(format!("fill/{i:05}").as_bytes()).unwrap();
    }
    vde.delete(b"fill/again").unwrap();
}

/// Formats `device` small enough for tests.
pub fn format(device: Device) -> Vde {
    Vde::format(device, small()).expect("format")
}

/// After a process writing keys `k0..k{n}` was killed in round `round` — its log has a
/// line `START k i` before each `ironvme vde put` of key `k{k}` and `ACK k i` after it
/// succeeded, with values from [`value`] with writer = `round` — checks that each key
/// holds this round's value if a put of it was acknowledged, else what it held before
/// (`expected`) or, for the put in flight, this round's value. Updates `expected`.
pub fn check_after_kill(vde: &Vde, log: &str, round: u64, expected: &mut [Option<u64>]) {
    let lines: Vec<&str> = log.lines().collect();
    let in_flight = lines.last().filter(|l| l.starts_with("START"));
    for (i, before) in expected.iter_mut().enumerate() {
        let k = format!("k{i}");
        let acked = lines.iter().any(|l| l.starts_with(&format!("ACK {i} ")));
        let flying = in_flight.is_some_and(|l| l.starts_with(&format!("START {i} ")));
        let got = match vde.get(k.as_bytes()) {
            Ok(v) => Some(check_value(k.as_bytes(), &v).0),
            Err(VdeError::NotFound(_)) => None,
            Err(e) => panic!("round {round}: {k}: {e}"),
        };
        let fine = if acked {
            got == Some(round)
        } else {
            got == *before || (flying && got == Some(round))
        };
        assert!(
            fine,
            "round {round}: {k} holds a value from round {got:?}; acked {acked}, in flight {flying}, before {before:?}"
        );
        *before = got;
    }
    let r = vde.fsck().unwrap();
    assert!(r.clean(), "round {round}: {:?}", r.violations);
}
