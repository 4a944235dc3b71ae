//! The verify report, as text and as JSON.

use super::*;

/// What was verified, for the report.
#[derive(Clone, Debug)]
pub struct Subject {
    /// The device as the user named it.
    pub device: String,
    /// Backend name.
    pub backend: String,
    /// The arguments a read-only re-check needs besides --seed and --pass.
    pub recheck_args: String,
}

/// Consecutive mismatches of one pass with the same problem: (first, count).
pub(super) fn runs(mismatches: &[Mismatch]) -> Vec<(Mismatch, u64)> {
    let mut out: Vec<(Mismatch, u64)> = Vec::new();
    let mut prev: Option<Mismatch> = None;
    for m in mismatches {
        match (out.last_mut(), prev) {
            (Some((_, count)), Some(p))
                if p.pass == m.pass && m.lba == p.lba + 1 && p.problem.continues(&m.problem) =>
            {
                *count += 1
            }
            _ => out.push((*m, 1)),
        }
        prev = Some(*m);
    }
    out
}

/// The report for people.
pub fn human(s: &Subject, plan: &Plan, f: &Findings) -> String {
    let mut o = String::new();
    let bs = u64::from(plan.block_size);
    let bytes = plan.blocks * bs;
    let last = plan.first_pass + plan.passes - 1;
    let passes = if plan.passes == 1 {
        format!("{last}")
    } else {
        format!("{}-{last}", plan.first_pass)
    };
    let _ = writeln!(
        o,
        "verify{}: dev={} backend={} nsid={} region={}+{} ({} blocks of {bs} B) bs={} qd={} seed={} pass={passes}",
        if plan.read_only { " (read-only)" } else { "" },
        s.device,
        s.backend,
        plan.nsid,
        iec_exact(plan.first_lba * bs),
        iec_exact(bytes),
        plan.blocks,
        iec_exact(plan.bs() as u64),
        plan.qd,
        plan.seed
    );
    if let Some(zones) = &plan.zones {
        let how = if plan.read_only {
            "each read from its start to its capacity (ZCAP)".to_string()
        } else {
            format!(
                "each reset, then written from its start to its capacity (ZCAP), {} at a time",
                plan.zones_at_once.min(zones.len())
            )
        };
        let _ = writeln!(
            o,
            "zoned: {} zones, {how}: {} blocks",
            zones.len(),
            plan.checked_blocks()
        );
    }
    if plan.with_metadata() {
        let how = if plan.metadata.pi_type == 0 {
            "a pattern written with each block and checked on read-back"
        } else {
            "a pattern and PI written with each block; PI checked by the device on write and read (PRCHK) \
             and with the pattern on read-back"
        };
        let _ = writeln!(o, "metadata: {}: {how}", plan.metadata);
    }
    // What each pass moves: the region, or on a zoned namespace its zones' capacity.
    let moved = plan.checked_blocks() * bs;
    let mib = moved as f64 / f64::from(1 << 20);
    let rate = |secs: f64| {
        if secs > 0.0 {
            format!("{:.1}MiB/s", mib / secs)
        } else {
            "-".into()
        }
    };
    for p in &f.passes {
        let wrote = p.write_s.map_or(String::new(), |w| {
            format!("wrote {} and flushed in {w:.2}s ({}); ", iec_exact(moved), rate(w))
        });
        let _ = writeln!(
            o,
            "pass {}: {wrote}read back and checked in {:.2}s ({}): {} mismatched blocks, {} I/O errors",
            p.pass,
            p.read_s,
            rate(p.read_s),
            p.mismatches,
            p.errors
        );
    }
    if f.mismatch_count > 0 {
        let _ = writeln!(o, "mismatches:");
        for (m, count) in runs(&f.mismatches) {
            let lbas = if count == 1 {
                format!("LBA {}", m.lba)
            } else {
                format!("LBA {}-{} ({count} blocks)", m.lba, m.lba + count - 1)
            };
            let expected = Stamp {
                lba: m.lba,
                pass: m.pass,
                seed: plan.seed,
            };
            let _ = writeln!(o, "  pass {}: {lbas}: {}", m.pass, m.problem.describe(expected, count));
        }
        if f.mismatch_count > f.mismatches.len() as u64 {
            let _ = writeln!(
                o,
                "  ... and {} more, not listed",
                f.mismatch_count - f.mismatches.len() as u64
            );
        }
    }
    if f.error_count > 0 {
        let _ = writeln!(o, "I/O errors:");
        for e in &f.errors {
            let what = if e.blocks == 0 {
                String::new()
            } else {
                format!(" of LBA {}+{} blocks", e.lba, e.blocks)
            };
            let _ = writeln!(o, "  pass {}: {}{what}: {}", e.pass, e.op, e.status);
        }
        if f.error_count > f.errors.len() as u64 {
            let _ = writeln!(
                o,
                "  ... and {} more, not listed",
                f.error_count - f.errors.len() as u64
            );
        }
    }
    if let Some(why) = &f.fatal {
        let _ = writeln!(o, "stopped early: {why}");
    }
    if f.ok() {
        let _ = writeln!(
            o,
            "OK: {} blocks intact after {} pass{}",
            plan.checked_blocks(),
            plan.passes,
            if plan.passes == 1 { "" } else { "es" }
        );
        if !plan.read_only {
            let _ = writeln!(
                o,
                "check this data again later without writing (after a power cycle, say):\n  ironvme verify {} \
                 --read-only --seed {} --pass {last}{}",
                s.device, plan.seed, s.recheck_args
            );
        }
    } else {
        let _ = writeln!(
            o,
            "FAILED: {} mismatched blocks, {} I/O errors",
            f.mismatch_count, f.error_count
        );
    }
    o
}

/// The report for scripts: one JSON object.
pub fn json(s: &Subject, plan: &Plan, f: &Findings) -> Value {
    let mismatches: Vec<Value> = f
        .mismatches
        .iter()
        .map(|m| {
            let expected = Stamp {
                lba: m.lba,
                pass: m.pass,
                seed: plan.seed,
            };
            let mut v = json!({
                "lba": m.lba,
                "pass": m.pass,
                "kind": m.problem.kind(),
                "problem": m.problem.describe(expected, 1),
            });
            let found = match m.problem {
                Problem::Misdirected { found }
                | Problem::Stale { found }
                | Problem::Corrupt { header: Some(found) } => Some(found),
                _ => None,
            };
            if let Some(h) = found {
                v["found_lba"] = h.lba.into();
                v["found_pass"] = h.pass.into();
                v["found_seed"] = h.seed.into();
            }
            match m.problem {
                Problem::Metadata {
                    fault:
                        MetadataFault::Pattern {
                            offset,
                            found,
                            expected,
                            differing,
                        },
                } => {
                    v["metadata_offset"] = offset.into();
                    v["found"] = found.into();
                    v["expected"] = expected.into();
                    v["differing_bytes"] = differing.into();
                }
                Problem::Metadata {
                    fault: MetadataFault::Pi { field, found, expected },
                } => {
                    v["pi_field"] = field.key().into();
                    v["found"] = found.into();
                    v["expected"] = expected.into();
                }
                _ => {}
            }
            v
        })
        .collect();
    let errors: Vec<Value> = f
        .errors
        .iter()
        .map(|e| json!({"pass": e.pass, "op": e.op, "lba": e.lba, "blocks": e.blocks, "status": e.status.to_string()}))
        .collect();
    let passes: Vec<Value> = f
        .passes
        .iter()
        .map(|p| json!({"pass": p.pass, "write_s": p.write_s, "read_s": p.read_s, "mismatches": p.mismatches, "errors": p.errors}))
        .collect();
    let mut v = json!({
        "device": s.device,
        "backend": s.backend,
        "nsid": plan.nsid,
        "block_size": plan.block_size,
        "offset": plan.first_lba * u64::from(plan.block_size),
        "size": plan.blocks * u64::from(plan.block_size),
        "bs": plan.bs(),
        "qd": plan.qd,
        "seed": plan.seed,
        "read_only": plan.read_only,
        "first_pass": plan.first_pass,
        "blocks": plan.checked_blocks(),
        "zones": plan.zones.as_ref().map(Vec::len),
        "passes": plan.passes,
        "pass_results": passes,
        "mismatch_count": f.mismatch_count,
        "mismatches_truncated": f.mismatch_count > f.mismatches.len() as u64,
        "mismatches": mismatches,
        "error_count": f.error_count,
        "errors": errors,
        "stopped": f.fatal,
        "ok": f.ok(),
    });
    if plan.with_metadata() {
        v["metadata"] = json!(plan.metadata);
    }
    v
}
