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

/// A size in the largest binary unit that divides it exactly: `4KiB`, `128KiB`, `1GiB`,
/// `1536B`. fio prints block sizes this way.
pub fn iec_exact(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    for (unit, shift) in UNITS {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
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
}
