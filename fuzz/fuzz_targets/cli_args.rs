//! The CLI's argument parsers for text a user (or a script) types: sizes (`--bs 4k`),
//! durations (`--runtime 2.5m`), numbers and namespace IDs (decimal or 0x hex), and device
//! names (PCI addresses, kernel node names), and fio's option values (`--bssplit`,
//! `--percentile_list`, `--cpus_allowed`). Each either returns a value or an error
//! message, never panics; and what they accept round-trips: a size printed by
//! `iec_exact` parses back to the same number of bytes.
//!
//! Input: any bytes; non-UTF-8 is decoded lossily, as the shell would hand it over.

#![no_main]

use ironvme::cli::device::parse_device;
use ironvme::cli::io_shared::units::{
    iec_exact, parse_bssplit, parse_cpu_list, parse_duration, parse_nonzero_size, parse_percentile_list,
    parse_positive_duration, parse_size,
};
use ironvme::cli::{parse_nsid, parse_u8, parse_u32};
use ironvme_vfio::Bdf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let s = text.as_ref();
    if let Ok(n) = parse_size(s) {
        assert_eq!(parse_size(&iec_exact(n)), Ok(n), "{s:?} -> {n} -> {}", iec_exact(n));
        assert_eq!(parse_nonzero_size(s).is_ok(), n != 0);
    } else {
        assert!(parse_nonzero_size(s).is_err());
    }
    match parse_duration(s) {
        Ok(d) => assert_eq!(parse_positive_duration(s).is_ok(), !d.is_zero()),
        Err(_) => assert!(parse_positive_duration(s).is_err()),
    }
    if let Ok(v) = parse_u32(s) {
        assert_eq!(parse_nsid(s).is_ok(), v != 0);
    }
    let _ = parse_u8(s);
    if let Ok(bdf) = s.parse::<Bdf>() {
        assert_eq!(bdf.to_string().parse::<Bdf>().ok(), Some(bdf), "{s:?}");
    }
    if let Ok(spec) = parse_device(s) {
        let _ = spec.to_string();
    }
    // fio's option values perf takes: --bssplit, --percentile_list, --cpus_allowed.
    let _ = parse_bssplit(s);
    let _ = parse_percentile_list(s);
    let _ = parse_cpu_list(s);
});
