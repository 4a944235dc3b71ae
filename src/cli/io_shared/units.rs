//! Sizes and durations as fio users write them, and the number formats fio prints.
//!
//! Sizes are binary, as fio's default (`kb_base=1024`): `4k`, `4K`, `4KiB` and `4kb` are
//! all 4096 bytes; `1m` is 1 MiB, `1g` 1 GiB, `1t` 1 TiB. Durations are seconds unless
//! they say otherwise: `10`, `10s`, `500ms`, `2m`, `1h`.

use std::time::Duration;

/// Parses a size in bytes: digits with an optional binary suffix (k, m, g, t; optionally
/// followed by `b` or `ib`, any case).
///
/// Errors: a message naming the text and the accepted forms.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let bad = || format!("`{s}` is not a size: give bytes, or a number with a k/m/g/t suffix (binary: 4k = 4096)");
    if digits == 0 {
        return Err(bad());
    }
    let number: u64 = t[..digits].parse().map_err(|_| bad())?;
    let suffix = t[digits..].to_ascii_lowercase();
    let shift = match suffix.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("`{s}` is too large (more than 2^64 bytes)"))
}

/// Parses a size that must not be zero.
///
/// Errors: as [`parse_size`], and for zero.
pub fn parse_nonzero_size(s: &str) -> Result<u64, String> {
    match parse_size(s)? {
        0 => Err(format!("`{s}`: the size must not be zero")),
        n => Ok(n),
    }
}

/// Parses a duration: a number (decimals allowed) of seconds, or with a unit suffix `ms`,
/// `s`, `m` or `h`.
///
/// Errors: a message naming the text and the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let bad = || format!("`{s}` is not a duration: give seconds (`10`, `2.5`) or a unit (`500ms`, `10s`, `2m`, `1h`)");
    let number: f64 = t[..end].parse().map_err(|_| bad())?;
    let unit = match &t[end..] {
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(number * unit).map_err(|_| bad())
}

/// Parses a duration that must be longer than zero.
///
/// Errors: as [`parse_duration`], and for zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("`{s}`: the duration must be longer than zero")),
        d => Ok(d),
    }
}

/// fio's `bssplit`: I/O sizes and their weights in percent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BsSplit(pub Vec<(u64, u8)>);

impl BsSplit {
    /// fio's spelling: `4KiB/50:64KiB/50`.
    pub fn fio(&self) -> String {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(bs, pct)| format!("{}/{pct}", iec_exact(*bs)))
            .collect();
        parts.join(":")
    }
}

/// Parses fio's `bssplit`: `SIZE/PCT` entries separated by `:` (`4k/50:64k/50`). An entry
/// without a percentage (`8k/` or `8k`) shares what the others leave of 100 equally with
/// the other such entries, as in fio; the weights must then add up to 100. Sizes repeat
/// as one entry. One list for every direction (fio's per-direction `,` lists are not
/// taken).
///
/// Errors: a message naming the entry and the rule it breaks.
pub fn parse_bssplit(s: &str) -> Result<BsSplit, String> {
    if s.contains(',') {
        return Err(format!(
            "`{s}`: one bssplit list serves reads, writes and trims alike here (per-direction lists separated by \
             `,` are not supported)"
        ));
    }
    let mut given: Vec<(u64, Option<u32>)> = Vec::new();
    for part in s.split(':') {
        let (size, pct) = part.split_once('/').unwrap_or((part, ""));
        let size = parse_nonzero_size(size).map_err(|e| format!("bssplit entry `{part}`: {e}"))?;
        let pct = match pct.trim() {
            "" => None,
            p => Some(
                p.parse::<u32>()
                    .ok()
                    .filter(|&v| v <= 100)
                    .ok_or_else(|| format!("bssplit entry `{part}`: `{p}` is not a percentage (0 to 100)"))?,
            ),
        };
        given.push((size, pct));
    }
    let set: u32 = given.iter().filter_map(|(_, p)| *p).sum();
    let blanks = given.iter().filter(|(_, p)| p.is_none()).count() as u32;
    if set > 100 || (blanks == 0 && set != 100) {
        return Err(format!("`{s}`: the bssplit percentages add up to {set}, not 100"));
    }
    let mut entries: Vec<(u64, u8)> = Vec::new();
    let mut blank_index = 0;
    for (size, pct) in given {
        let pct = pct.unwrap_or_else(|| {
            // The blanks share the rest; the first ones get the remainder's odd units.
            let rest = 100 - set;
            let share = rest / blanks + u32::from(blank_index < rest % blanks);
            blank_index += 1;
            share
        }) as u8;
        match entries.iter_mut().find(|(b, _)| *b == size) {
            Some(e) => e.1 += pct,
            None => entries.push((size, pct)),
        }
    }
    entries.retain(|&(_, pct)| pct > 0);
    Ok(BsSplit(entries))
}

/// fio's `percentile_list`: the latency percentiles reported.
#[derive(Clone, Debug, PartialEq)]
pub struct PercentileList(pub Vec<f64>);

/// fio's default percentile list (its `percentile_list` default).
pub const FIO_PERCENTILES: [f64; 17] = [
    1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99,
];

/// Parses fio's `percentile_list`: percentages separated by `:` (`99:99.9:99.99`), each
/// above 0 and at most 100, at most 20 of them as in fio; reported in ascending order.
///
/// Errors: a message naming the entry.
pub fn parse_percentile_list(s: &str) -> Result<PercentileList, String> {
    let mut list = Vec::new();
    for part in s.split(':') {
        let v: f64 = part
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| *v > 0.0 && *v <= 100.0)
            .ok_or_else(|| format!("percentile_list entry `{part}` is not a percentile (above 0, at most 100)"))?;
        list.push(v);
    }
    list.sort_by(f64::total_cmp);
    list.dedup();
    if list.len() > 20 {
        return Err(format!(
            "`{s}`: at most 20 percentiles (fio's limit), not {}",
            list.len()
        ));
    }
    Ok(PercentileList(list))
}

/// A percentile as fio names it in its text report (`99.00th`, `99.995th`): two decimals,
/// more when the value has them.
pub fn percentile_name(p: f64) -> String {
    let mut t = format!("{p:.6}");
    while t.ends_with('0') && t.len() - t.find('.').unwrap_or(0) > 3 {
        t.pop();
    }
    format!("{t}th")
}

/// fio's `cpus_allowed`: the CPUs perf's I/O threads may run on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl CpuList {
    /// fio's spelling, with ranges: `0-1,3`.
    pub fn fio(&self) -> String {
        let mut parts = Vec::new();
        let mut i = 0;
        while i < self.0.len() {
            let mut j = i;
            while j + 1 < self.0.len() && self.0[j + 1] == self.0[j] + 1 {
                j += 1;
            }
            parts.push(if i == j {
                self.0[i].to_string()
            } else {
                format!("{}-{}", self.0[i], self.0[j])
            });
            i = j + 1;
        }
        parts.join(",")
    }
}

/// Parses a CPU list as fio's `cpus_allowed` and the bracketed form of SPDK's `-m` write
/// it: CPU numbers and ranges separated by commas (`0-1,3`); ascending, without repeats.
///
/// Errors: a message naming the entry.
pub fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    let limit = libc::CPU_SETSIZE as usize;
    let cpu = |t: &str| {
        let c = t
            .trim()
            .parse::<usize>()
            .map_err(|_| format!("bad CPU number `{}`", t.trim()))?;
        if c >= limit {
            return Err(format!("CPU {c} is beyond the {limit} CPUs sched_setaffinity can name"));
        }
        Ok(c)
    };
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (cpu(a)?, cpu(b)?);
                if a > b {
                    return Err(format!("bad range `{}`: it runs backwards", part.trim()));
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(cpu(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(CpuList(cpus))
}

/// A size in the largest binary unit that divides it exactly: `4KiB`, `128KiB`, `1GiB`,
/// `1536B`. fio prints block sizes this way.
pub fn iec_exact(bytes: u64) -> String {
    exact_size(bytes, ["TiB", "GiB", "MiB", "KiB", "B"])
}

/// A size in fio's short spelling (its job options): `4k`, `64k`, `1m`, `1g`, or bytes.
pub fn fio_size(bytes: u64) -> String {
    exact_size(bytes, ["t", "g", "m", "k", ""])
}

/// `bytes` in the largest binary unit that divides it exactly, with `units`' names for
/// TiB, GiB, MiB, KiB and bytes.
fn exact_size(bytes: u64, units: [&str; 5]) -> String {
    for (unit, shift) in units.iter().zip([40u32, 30, 20, 10]) {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}{}", units[4])
}

/// A count with three significant digits and a k/M/G suffix, as fio prints IOPS:
/// `987`, `9876`, `24.6k`, `246k`, `1.23M`.
pub fn si_count(v: f64) -> String {
    if !v.is_finite() || v < 10_000.0 {
        return format!("{:.0}", v.max(0.0));
    }
    let (scaled, unit) = if v < 1e6 {
        (v / 1e3, "k")
    } else if v < 1e9 {
        (v / 1e6, "M")
    } else {
        (v / 1e9, "G")
    };
    if scaled < 10.0 {
        format!("{scaled:.2}{unit}")
    } else if scaled < 100.0 {
        format!("{scaled:.1}{unit}")
    } else {
        format!("{scaled:.0}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_binary_like_fio() {
        for (text, bytes) in [
            ("4096", 4096),
            ("4k", 4096),
            ("4K", 4096),
            ("4KiB", 4096),
            ("4kb", 4096),
            ("128k", 131_072),
            ("1m", 1 << 20),
            ("1M", 1 << 20),
            ("1g", 1 << 30),
            ("2GiB", 2 << 30),
            ("1t", 1 << 40),
            ("0", 0),
            (" 512 ", 512),
            ("512b", 512),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "k", "4x", "4 k", "-1", "1.5k", "0x1000", "4kk", "4p"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("is not a size"), "{bad}: {e}");
        }
        assert!(parse_size("99999999999t").unwrap_err().contains("too large"));
        assert!(parse_nonzero_size("0").unwrap_err().contains("zero"));
        assert_eq!(parse_nonzero_size("1k"), Ok(1024));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "ten", "1d", "-1", "1e3", "1..2"] {
            assert!(parse_duration(bad).unwrap_err().contains("not a duration"), "{bad}");
        }
        assert!(parse_positive_duration("0s").unwrap_err().contains("longer than zero"));
    }

    #[test]
    fn formats() {
        assert_eq!(iec_exact(4096), "4KiB");
        assert_eq!(iec_exact(131_072), "128KiB");
        assert_eq!(iec_exact(1 << 30), "1GiB");
        assert_eq!(iec_exact(3 << 20), "3MiB");
        assert_eq!(iec_exact(1536), "1536B");
        assert_eq!(iec_exact(512), "512B");
        assert_eq!(iec_exact(0), "0B");
        assert_eq!(si_count(0.0), "0");
        assert_eq!(si_count(987.4), "987");
        assert_eq!(si_count(9876.0), "9876");
        assert_eq!(si_count(24_612.0), "24.6k");
        assert_eq!(si_count(246_120.0), "246k");
        assert_eq!(si_count(1_234_567.0), "1.23M");
    }

    #[test]
    fn bssplit_as_fio_writes_it() {
        assert_eq!(
            parse_bssplit("4k/50:64k/50"),
            Ok(BsSplit(vec![(4096, 50), (65536, 50)]))
        );
        assert_eq!(parse_bssplit("4k"), Ok(BsSplit(vec![(4096, 100)])));
        // Blanks share the rest; repeats merge; zero weights drop out.
        assert_eq!(
            parse_bssplit("4k/10:8k/:16k/:32k/0"),
            Ok(BsSplit(vec![(4096, 10), (8192, 45), (16384, 45)]))
        );
        assert_eq!(parse_bssplit("4k/40:4k/60"), Ok(BsSplit(vec![(4096, 100)])));
        assert_eq!(parse_bssplit("4k/50:64k/50").unwrap().fio(), "4KiB/50:64KiB/50");
        for (bad, why) in [
            ("4k/50:8k/40", "add up to 90, not 100"),
            ("4k/80:8k/30", "add up to 110"),
            ("4k/x", "not a percentage"),
            ("4q/100", "bssplit entry `4q/100`"),
            ("0/100", "must not be zero"),
            ("4k/50:8k/50,4k/100", "per-direction"),
        ] {
            let e = parse_bssplit(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn percentile_lists_as_fio_writes_them() {
        assert_eq!(
            parse_percentile_list("99:99.9:99.99"),
            Ok(PercentileList(vec![99.0, 99.9, 99.99]))
        );
        assert_eq!(parse_percentile_list("50:10:50"), Ok(PercentileList(vec![10.0, 50.0])));
        for bad in ["0", "101", "x", "99::1"] {
            assert!(parse_percentile_list(bad).is_err(), "{bad}");
        }
        assert!(parse_percentile_list(&vec!["1"; 21].join(":")).is_ok(), "repeats merge");
        let many: Vec<String> = (1..=21).map(|i| i.to_string()).collect();
        assert!(
            parse_percentile_list(&many.join(":"))
                .unwrap_err()
                .contains("at most 20")
        );
        assert_eq!(percentile_name(99.0), "99.00th");
        assert_eq!(percentile_name(99.9), "99.90th");
        assert_eq!(percentile_name(99.995), "99.995th");
        assert_eq!(percentile_name(5.0), "5.00th");
    }

    #[test]
    fn cpu_lists_as_fio_writes_them() {
        assert_eq!(parse_cpu_list("0-1,3"), Ok(CpuList(vec![0, 1, 3])));
        assert_eq!(parse_cpu_list("3,0,1-2,2"), Ok(CpuList(vec![0, 1, 2, 3])));
        assert_eq!(parse_cpu_list("0-1,3,5-7").unwrap().fio(), "0-1,3,5-7");
        for bad in ["", "a", "3-1", "0-", "99999"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad}");
        }
    }
}
