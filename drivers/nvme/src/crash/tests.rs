use super::*;

const BS: u32 = 512;
const BLOCKS: u64 = 64;

/// A write of `nlb` blocks at `slba`, every byte `fill`.
fn w(slba: u64, nlb: u64, fill: u8) -> LoggedWrite {
    LoggedWrite {
        op: LogOp::Write,
        slba,
        nlb,
        data: vec![fill; (nlb * BS as u64) as usize],
        durable: false,
    }
}

fn fua(slba: u64, nlb: u64, fill: u8) -> LoggedWrite {
    LoggedWrite {
        durable: true,
        ..w(slba, nlb, fill)
    }
}

fn zeroes(op: LogOp, slba: u64, nlb: u64) -> LoggedWrite {
    LoggedWrite {
        op,
        slba,
        nlb,
        data: Vec::new(),
        durable: false,
    }
}

fn log(entries: Vec<LoggedWrite>) -> WriteLog {
    WriteLog { lba_size: BS, entries }
}

/// A start image whose block `b` is filled with `0x80 | b` (so zeroing is visible).
fn start() -> Vec<u8> {
    (0..BLOCKS).flat_map(|b| vec![0x80 | b as u8; BS as usize]).collect()
}

/// A workload: flushed writes, overlapping unflushed ones, a FUA write, zeroes, and a tail
/// after the last Flush.
fn workload() -> WriteLog {
    log(vec![
        w(0, 8, 1),
        w(4, 8, 2), // overlaps
        LoggedWrite::flush(),
        w(8, 4, 3),
        fua(20, 2, 4),
        zeroes(LogOp::WriteZeroes, 0, 2),
        w(9, 1, 5),
        LoggedWrite::flush(),
        LoggedWrite::flush(), // an empty epoch
        zeroes(LogOp::Deallocate, 30, 3),
        w(40, 16, 6),
        w(41, 2, 7),
    ])
}

/// The model: block by block, the last entry (in log order) of the state that covers it,
/// whole or with this block among its torn units (unit = block here).
fn model(log: &WriteLog, s: &CrashState) -> Vec<u8> {
    let mut image = start();
    for (i, e) in log.entries.iter().enumerate().take(s.cut.max(s.prefix)) {
        for b in e.slba..e.slba + e.nlb {
            let lands = match s.presence(i) {
                Presence::Whole => true,
                Presence::Torn => s.tear.as_ref().unwrap().units.contains(&(b - e.slba)),
                Presence::Absent => false,
            };
            if !lands {
                continue;
            }
            let at = (b * BS as u64) as usize..((b + 1) * BS as u64) as usize;
            match e.op {
                LogOp::Write => {
                    image[at].copy_from_slice(&e.data[((b - e.slba) * BS as u64) as usize..][..BS as usize])
                }
                _ => image[at].fill(0),
            }
        }
    }
    image
}

fn all(log: &WriteLog, config: &CrashConfig) -> Vec<(CrashState, Vec<u8>)> {
    let mut states = CrashStates::new(log, start(), config).unwrap();
    let mut out = Vec::new();
    while let Some((s, image)) = states.next_state() {
        out.push((s.clone(), image.to_vec()));
    }
    out
}

#[test]
fn every_state_is_legal_and_its_image_matches_the_model() {
    let log = workload();
    for config in [
        CrashConfig {
            max_states: None,
            ..CrashConfig::bounded(0)
        },
        CrashConfig {
            max_states: None,
            exhaustive: true,
            ..CrashConfig::bounded(0)
        },
    ] {
        let states = all(&log, &config);
        assert!(states.len() > 10, "{}", states.len());
        let mut kinds = HashSet::new();
        for (i, (s, image)) in states.iter().enumerate() {
            assert_eq!(s.index, i);
            kinds.insert(s.kind);
            assert!(s.prefix <= s.cut && s.cut <= log.entries.len(), "{s}");
            assert!(
                s.prefix == 0 || log.entries[s.prefix - 1].is_flush() || s.prefix == log.entries.len(),
                "{s}"
            );
            assert!(log.entries[s.prefix..s.cut].iter().all(|e| !e.is_flush()), "{s}");
            assert!(s.applied.iter().all(|&a| (s.prefix..s.cut).contains(&a)), "{s}");
            assert!(s.applied.windows(2).all(|w| w[0] < w[1]), "{s}");
            for i in s.prefix..s.cut {
                if log.entries[i].durable {
                    assert_eq!(s.presence(i), Presence::Whole, "durable entry {i} lost in {s}");
                }
            }
            for i in s.cut..log.entries.len() {
                assert_eq!(s.presence(i), Presence::Absent, "{s}");
            }
            if let Some(t) = &s.tear {
                assert_eq!(s.kind, StateKind::Torn);
                assert!(
                    (s.prefix..s.cut).contains(&t.entry) && !s.applied.contains(&t.entry),
                    "{s}"
                );
                assert!(!t.units.is_empty() && (t.units.len() as u64) < t.of, "{s}");
                assert_eq!(t.of, log.entries[t.entry].nlb);
            }
            assert!(*image == model(&log, s), "{s}: image differs from the model");
        }
        assert_eq!(kinds.len(), 3, "prefix, subset and torn states");
        // Every Flush point, the start and the end are prefix states.
        let prefixes: Vec<usize> = states
            .iter()
            .filter(|(s, _)| s.kind == StateKind::Prefix)
            .map(|(s, _)| s.prefix)
            .collect();
        assert_eq!(prefixes, [0, 3, 8, 9, 12]);
        let last = &states.iter().find(|(s, _)| s.prefix == 12).unwrap().1;
        assert!(*last == log.apply_all(&start()).unwrap());
        // No two states alike.
        let unique: HashSet<_> = states
            .iter()
            .map(|(s, _)| (s.prefix, s.cut, &s.applied, &s.tear))
            .collect();
        assert_eq!(unique.len(), states.len());
    }
}

#[test]
fn exhaustive_mode_has_every_subset_of_a_small_epoch() {
    let log = workload();
    let config = CrashConfig {
        max_states: None,
        exhaustive: true,
        ..CrashConfig::bounded(0)
    };
    let states = all(&log, &config);
    // Epoch 3..7: four entries, one durable: 2^3 subsets at the cut before the Flush.
    let subsets: HashSet<Vec<usize>> = states
        .iter()
        .filter(|(s, _)| s.kind == StateKind::Subset && s.prefix == 3 && s.cut == 7)
        .map(|(s, _)| s.applied.clone())
        .collect();
    assert_eq!(subsets.len(), 8);
    assert!(
        subsets.iter().all(|a| a.contains(&4)),
        "the FUA write is in every subset"
    );
    // Every write that can tear is torn somewhere.
    let torn: HashSet<usize> = states
        .iter()
        .filter_map(|(s, _)| s.tear.as_ref().map(|t| t.entry))
        .collect();
    assert_eq!(torn, [0, 1, 3, 5, 9, 10, 11].into_iter().collect());
}

#[test]
fn the_bound_holds_keeps_flush_points_and_the_seed_decides() {
    let log = workload();
    let full = all(
        &log,
        &CrashConfig {
            max_states: None,
            ..CrashConfig::bounded(0)
        },
    );
    let bounded = all(&log, &CrashConfig::bounded(12));
    assert_eq!(bounded.len(), 12);
    assert!(bounded.iter().filter(|(s, _)| s.kind == StateKind::Prefix).count() == 5);
    assert!(bounded.iter().all(|(s, image)| *image == model(&log, s)));
    // In log order, and a sample of the full set.
    assert!(bounded.windows(2).all(|w| w[0].0.prefix <= w[1].0.prefix));
    for (s, _) in &bounded {
        assert!(
            full.iter()
                .any(|(f, _)| (f.prefix, f.cut, &f.applied, &f.tear) == (s.prefix, s.cut, &s.applied, &s.tear))
        );
    }
    // Deterministic; another seed, other states.
    let again = all(&log, &CrashConfig::bounded(12));
    assert_eq!(
        again.iter().map(|x| &x.0).collect::<Vec<_>>(),
        bounded.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    let other = all(
        &log,
        &CrashConfig {
            seed: 2,
            ..CrashConfig::bounded(12)
        },
    );
    assert_ne!(
        other.iter().map(|x| &x.0).collect::<Vec<_>>(),
        bounded.iter().map(|x| &x.0).collect::<Vec<_>>()
    );
    // Fewer than the prefixes: still within the bound.
    assert_eq!(all(&log, &CrashConfig::bounded(3)).len(), 3);
}

#[test]
fn a_larger_atomic_unit_tears_only_between_units() {
    // 4 KiB units over 512 B blocks: the 16-block write has 2 units, the rest 1 or less.
    let log = log(vec![LoggedWrite::flush(), w(0, 16, 9), w(16, 8, 8), w(24, 2, 7)]);
    let config = CrashConfig {
        max_states: None,
        exhaustive: true,
        atomic_unit: Some(4096),
        ..CrashConfig::bounded(0)
    };
    let mut states = CrashStates::new(&log, start(), &config).unwrap();
    let mut torn = 0;
    while let Some((s, image)) = states.next_state() {
        if let Some(t) = &s.tear {
            assert_eq!((t.entry, t.of, t.unit), (1, 2, 4096), "{s}");
            let first = image[..4096].iter().all(|&b| b == 9);
            let second = image[4096..8192].iter().all(|&b| b == 9);
            assert_eq!((first, second), (t.units == [0], t.units == [1]), "{s}");
            torn += 1;
        }
    }
    assert_eq!(torn, 2, "unit 0 alone and unit 1 alone");
}

#[test]
fn bad_logs_and_units_are_refused() {
    let past = log(vec![w(BLOCKS - 1, 2, 1)]);
    let e = CrashStates::new(&past, start(), &CrashConfig::bounded(5))
        .err()
        .unwrap();
    assert!(matches!(e, CrashError::OutOfRange { entry: 0, .. }), "{e}");
    let overflow = log(vec![zeroes(LogOp::Deallocate, u64::MAX, 2)]);
    assert!(CrashStates::new(&overflow, start(), &CrashConfig::bounded(5)).is_err());
    let mut short = w(0, 2, 1);
    short.data.pop();
    let e = CrashStates::new(&log(vec![short]), start(), &CrashConfig::bounded(5))
        .err()
        .unwrap();
    assert!(matches!(e, CrashError::BadLog(_)), "{e}");
    let e = CrashStates::new(
        &workload(),
        start(),
        &CrashConfig {
            atomic_unit: Some(700),
            ..CrashConfig::bounded(5)
        },
    )
    .err()
    .unwrap();
    assert_eq!(e, CrashError::BadUnit { unit: 700, lba: BS });
    let zero = WriteLog {
        lba_size: 0,
        entries: Vec::new(),
    };
    assert!(CrashStates::new(&zero, start(), &CrashConfig::bounded(5)).is_err());
}

#[test]
fn an_empty_log_has_one_state_the_start() {
    let empty = log(Vec::new());
    let states = all(&empty, &CrashConfig::bounded(10));
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].0.kind, StateKind::Prefix);
    assert!(states[0].1 == start());
}

#[test]
fn the_description_names_the_entries() {
    let s = CrashState {
        index: 4,
        kind: StateKind::Torn,
        prefix: 3,
        cut: 7,
        applied: vec![4, 6],
        tear: Some(Tear {
            entry: 5,
            units: vec![0, 2],
            of: 8,
            unit: 512,
        }),
    };
    assert_eq!(
        s.to_string(),
        "crash state 4 (Torn): entries 0..3 whole, then 2 of entries 3..7 [4, 6], entry 5 torn: 2 of \
         its 8 units of 512 B [0, 2]; cut before entry 7"
    );
    assert_eq!(
        (
            s.presence(2),
            s.presence(3),
            s.presence(5),
            s.presence(6),
            s.presence(7)
        ),
        (
            Presence::Whole,
            Presence::Absent,
            Presence::Torn,
            Presence::Whole,
            Presence::Absent
        )
    );
}
