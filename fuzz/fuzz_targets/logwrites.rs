//! A dm-log-writes log as QEMU's `blklogwrites` block driver writes it (a host file QEMU
//! filled while a guest ran), parsed by `ironvme_nvme::crash::logwrites::parse` for the
//! crash-state tests. The parser is total: any bytes give a log or a `LogWritesError`.
//! A log that parses and fits a small image also goes through the crash-state builder.
//!
//! Input: the first byte chooses `trailing` (bit 0); the rest is the log file.

#![no_main]

use ironvme_nvme::crash::logwrites::parse;
use ironvme_nvme::crash::{CrashConfig, CrashStates, LogOp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, bytes)) = data.split_first() else {
        return;
    };
    let Ok(p) = parse(bytes, first & 1 == 1) else {
        return;
    };
    let ss = p.log.lba_size as u64;
    assert!(ss.is_power_of_two() && ss >= 32);
    assert!(p.trailing == 0 || first & 1 == 1);
    let data_bytes: usize = p.log.entries.iter().map(|e| e.data.len()).sum();
    assert!(data_bytes <= bytes.len());
    for e in &p.log.entries {
        match e.op {
            LogOp::Write => assert_eq!(e.data.len() as u64, e.nlb * ss),
            _ => assert!(e.data.is_empty()),
        }
    }
    assert!(p.marks.iter().all(|&(at, _)| at <= p.log.entries.len()));
    assert_eq!(p.ends.len(), p.log.entries.len());
    assert!(p.ends.windows(2).all(|w| w[0] <= w[1]));
    assert!(p.ends.last().is_none_or(|&end| end <= bytes.len() as u64));
    assert_eq!(p.position(u64::MAX), p.log.entries.len());
    // Into crash states when the log fits 256 KiB.
    let end = p
        .log
        .entries
        .iter()
        .map(|e| e.slba.saturating_add(e.nlb).saturating_mul(ss))
        .max()
        .unwrap_or(0);
    if end <= 256 * 1024 {
        let config = CrashConfig {
            atomic_unit: Some(p.log.lba_size.max(512)),
            ..CrashConfig::bounded(8)
        };
        if let Ok(mut states) = CrashStates::new(&p.log, vec![0u8; 256 * 1024], &config) {
            let n = states.len();
            assert!((1..=8).contains(&n));
            let mut seen = 0;
            while let Some((s, image)) = states.next_state() {
                assert_eq!(image.len(), 256 * 1024);
                assert!(s.prefix <= s.cut && s.cut <= p.log.entries.len());
                seen += 1;
            }
            assert_eq!(seen, n);
        }
    }
});
