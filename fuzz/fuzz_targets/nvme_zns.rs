//! Zoned Namespace data read from a device: a Zone Management Receive report
//! ([`ZoneReport::parse`]) with or without descriptor extensions, the zoned Identify
//! Namespace and Controller data ([`IdentifyZonedNamespace::parse`],
//! [`zone_append_limit`]), nvme-cli's rendering of a report (`ironvme zns report-zones`)
//! and what perf and verify make of each zone ([`ZoneSpan::of`], [`ZoneLayout::spans_in`]).
//!
//! Input: the extension size in 64-byte units (1 byte), then the bytes.
//!
//! Invariants checked on every input:
//! - nothing panics, whatever Number of Zones claims (up to 2^64 - 1) and whatever the
//!   states, types and write pointers;
//! - a report never yields more descriptors than the buffer holds, nor more than Number
//!   of Zones says;
//! - the zones of a region perf or verify would use lie inside it, one per zone in
//!   order, none written past its capacity nor larger than the zone size;
//! - report-zones' loop ([`collect_zones`]) ends after at most one report per zone of
//!   the namespace plus one, whatever the reports say.

#![no_main]

use ironvme::cli::io_shared::zones::{ZoneLayout, ZoneSpan};
use ironvme::cli::zns::{collect_zones, report_json, report_text};
use ironvme_nvme::zns::{IdentifyZonedNamespace, ZONE_DESCRIPTOR_BYTES, ZoneReport, zone_append_limit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&ext, body)) = data.split_first() else {
        return;
    };
    let ext = ext as usize * 64;
    if let Ok(r) = ZoneReport::parse(body, ext) {
        let fit = (body.len() - ZONE_DESCRIPTOR_BYTES) / (ZONE_DESCRIPTOR_BYTES + ext);
        assert!(r.descriptors.len() <= fit);
        assert!(r.descriptors.len() as u64 <= r.zones);
        let _ = report_text(r.zones, &r.descriptors, true);
        let _ = report_text(r.zones, &r.descriptors, false);
        let _ = report_json(r.zones, &r.descriptors);
        for d in &r.descriptors {
            let _ = d.state().map(|s| (s.filter(), s.nvme_cli_name()));
            if let Some(z) = ZoneSpan::of(d) {
                assert!(z.capacity > 0 && z.written <= z.capacity, "{z:?} from {d:?}");
            }
        }
        let zone_blocks = (ext / 64) as u64 + 1;
        let layout = ZoneLayout {
            zone_blocks,
            append_limit: zone_append_limit(body, 4096).ok().flatten(),
            max_active: Some((ext / 64) as u32 + 1),
            max_open: None,
            variable_capacity: false,
            zones: r.descriptors.clone(),
        };
        let (first, blocks) = (zone_blocks * 2, zone_blocks * 3);
        for writes in [true, false] {
            if let Ok(spans) = layout.spans_in(first, blocks, "fuzz", writes) {
                // In the region, one per zone, in order.
                assert!(
                    spans
                        .iter()
                        .all(|z| z.start >= first && z.start + zone_blocks <= first + blocks)
                );
                assert!(spans.windows(2).all(|w| w[0].start < w[1].start));
                assert!(
                    spans
                        .iter()
                        .all(|z| z.written <= z.capacity && z.capacity <= zone_blocks)
                );
            }
        }
        let (active, open) = layout.active_outside(first, blocks);
        assert!(open <= active && active as usize <= r.descriptors.len());
        if let Ok(n) = layout.writable_at_once(first, blocks, 32, "fuzz") {
            assert!((1..=32).contains(&n));
        }
    }
    // Identify data is 4096 bytes, more than libFuzzer's default input: the body,
    // repeated.
    let identify: Vec<u8> = body.iter().copied().cycle().take(4096).collect();
    if let Ok(z) = IdentifyZonedNamespace::parse(&identify) {
        for f in 0..=IdentifyZonedNamespace::MAX_FORMATS {
            let _ = z.zone_geometry(f);
        }
        assert!(z.max_active().is_none_or(|n| n >= 1) && z.max_open().is_none_or(|n| n >= 1));
    }
    // report-zones' loop over a device whose every report is this one: it ends, and
    // never collects more than the namespace's zones allow reports for.
    if body.len() >= 16 {
        let zone_blocks = u64::from_le_bytes(body[..8].try_into().unwrap()) >> (body[8] % 64);
        let blocks = u64::from_le_bytes(body[8..16].try_into().unwrap()) >> 40;
        let mut reports = 0u64;
        let zones = collect_zones(0, None, zone_blocks, blocks, |_| {
            reports += 1;
            ZoneReport::parse(&body[16..], ext)
        });
        let most = blocks / zone_blocks.max(1) + 1;
        assert!(reports <= most, "{reports} reports for {most}");
        let _ = zones;
    }
});
