//! Output building blocks shared by the subcommands: a [`Record`] of named fields that
//! renders both as nvme-cli's `name : value` lines and as a JSON object, and the value
//! formats nvme-cli uses (C's `%#x`, 128-bit counters, SI sizes, hex dumps, dates).

use super::{CliError, write_json};
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// One field of a data structure: its nvme-cli names, the text printed for people and
/// the JSON value printed for machines.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// The name nvme-cli prints the field under (`vid`, `sn`, `Data Units Read`, ...).
    pub name: String,
    /// The key of the field in nvme-cli's JSON; usually the same as `name`.
    pub key: String,
    /// The human form of the value.
    pub text: String,
    /// The JSON form of the value; `None` for a field nvme-cli prints only as text (an
    /// empty `subnqn`).
    pub json: Option<Value>,
    /// Lines printed under the field's line, its bits decoded (nvme-cli's `-H`); empty
    /// when none. Text only: where `-H` changes nvme-cli's JSON too (smart-log's
    /// `critical_warning`), the caller gives the field a different JSON value.
    pub decoded: String,
}

/// An ordered list of [`Field`]s: one source for the human and the JSON output, so the
/// two always name and order the same fields.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    fields: Vec<Field>,
    /// Whether [`Record::decoded`] keeps what it is given.
    decode: bool,
}

impl Record {
    /// An empty record.
    pub fn new() -> Record {
        Record::default()
    }

    /// An empty record that keeps the decoded lines [`Record::decoded`] gives its fields
    /// when `decode` is true (nvme-cli's `-H`), and ignores them when it is false.
    pub fn decoding(decode: bool) -> Record {
        Record {
            fields: Vec::new(),
            decode,
        }
    }

    /// Appends a field with its text and JSON forms given separately. Its JSON key is the
    /// name without the tabs nvme-cli aligns some text names with (`"sqid\t\t"`: `sqid`);
    /// [`Record::key`] gives another.
    pub fn field(&mut self, name: impl Into<String>, text: impl Into<String>, json: Value) -> &mut Record {
        let name = name.into();
        self.fields.push(Field {
            key: name.trim_end_matches('\t').to_string(),
            name,
            text: text.into(),
            json: Some(json),
            decoded: String::new(),
        });
        self
    }

    /// Gives the last field the lines `lines` renders, printed under it, when the record
    /// decodes (see [`Record::decoding`]); `lines` is not called otherwise.
    pub fn decoded(&mut self, lines: impl FnOnce() -> String) -> &mut Record {
        if self.decode
            && let Some(f) = self.fields.last_mut()
        {
            f.decoded = lines();
        }
        self
    }

    /// Leaves the last field out of the JSON object (it is still printed as text).
    pub fn text_only(&mut self) -> &mut Record {
        if let Some(f) = self.fields.last_mut() {
            f.json = None;
        }
        self
    }

    /// Gives the last field another JSON key (nvme-cli's text and JSON names differ for
    /// some logs: `available_spare` is `avail_spare` in JSON).
    pub fn key(&mut self, key: &str) -> &mut Record {
        if let Some(f) = self.fields.last_mut() {
            f.key = key.to_string();
        }
        self
    }

    /// A number printed in decimal (`%d`, `%u`); JSON number.
    pub fn dec(&mut self, name: &str, value: impl Into<u64>) -> &mut Record {
        let v = value.into();
        self.field(name, v.to_string(), Value::from(v))
    }

    /// A number printed as C's `%#x` (`0x1b36`, but `0` for zero); JSON number.
    pub fn hex(&mut self, name: &str, value: impl Into<u64>) -> &mut Record {
        let v = value.into();
        self.field(name, c_hex(v), Value::from(v))
    }

    /// A 128-bit counter printed in decimal; a JSON string, as nvme-cli writes 128-bit
    /// values (JSON numbers lose precision beyond 2^53 in most parsers).
    pub fn u128(&mut self, name: &str, value: u128) -> &mut Record {
        self.field(name, value.to_string(), Value::String(value.to_string()))
    }

    /// A string, printed as is; JSON string.
    pub fn text(&mut self, name: &str, value: &str) -> &mut Record {
        self.field(name, value, Value::String(value.to_string()))
    }

    /// The fields, in order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// The JSON object: the fields' keys and JSON values, in order.
    pub fn to_json(&self) -> Map<String, Value> {
        self.fields
            .iter()
            .filter_map(|f| Some((f.key.clone(), f.json.clone()?)))
            .collect()
    }

    /// Appends one `name : text` line per field to `out`, names padded to `width`
    /// characters (nvme-cli's `%-10s: %s` layout), each followed by its decoded lines. A
    /// name that ends in a tab is printed as it is: nvme-cli aligns some fields with tabs
    /// (`nsattr\t: `, the SMART log's `critical_warning\t\t\t: `).
    pub fn write_human(&self, width: usize, out: &mut String) {
        for f in &self.fields {
            // Writing to a String cannot fail.
            let _ = if f.name.ends_with('\t') {
                writeln!(out, "{}: {}", f.name, f.text)
            } else {
                writeln!(out, "{:<width$}: {}", f.name, f.text)
            };
            out.push_str(&f.decoded);
        }
    }
}

/// C's `printf("%#x")`: `0x` and lowercase hex digits, except plain `0` for zero.
pub fn c_hex(v: u64) -> String {
    if v == 0 { "0".to_string() } else { format!("{v:#x}") }
}

/// Bytes as lowercase hex digits with no separators (`nguid`, `eui64`).
pub fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// 16 bytes as a UUID string in the canonical 8-4-4-4-12 form, bytes in order.
pub fn uuid_string(b: &[u8; 16]) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        hex_bytes(&b[0..4]),
        hex_bytes(&b[4..6]),
        hex_bytes(&b[6..8]),
        hex_bytes(&b[8..10]),
        hex_bytes(&b[10..16])
    )
}

/// A size in bytes with SI prefixes and two decimals, as nvme-cli prints sizes
/// (`512.00 kB`, `1.07 GB`, `0.00 B`).
pub fn si_bytes(bytes: u128) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    // Precision beyond f64's 53 bits does not show in two decimals.
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.2} {}", UNITS[unit])
}

/// Bytes as text, `!`..`~` as themselves and any other byte as `.` (nvme-cli's hex dump
/// and firmware revision text).
pub fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
        .collect()
}

/// A temperature in Kelvin as nvme-cli prints it: `50°C (323 Kelvin)`.
pub fn kelvin(k: u16) -> String {
    format!("{}°C ({k} Kelvin)", i32::from(k) - 273)
}

/// A hex dump in nvme-cli's layout (its `d()`): a column header, then 16 bytes per line
/// with the offset and the bytes `!`..`~` as text (others as `.`).
pub fn hex_dump(data: &[u8]) -> String {
    let mut out = String::from("       0  1  2  3  4  5  6  7  8  9  a  b  c  d  e  f\n");
    for (i, chunk) in data.chunks(16).enumerate() {
        let _ = write!(out, "{:04x}:", i * 16);
        for b in chunk {
            let _ = write!(out, " {b:02x}");
        }
        // A short last line is padded to where a full one's text starts, plus one space.
        if chunk.len() < 16 {
            out.push_str(&" ".repeat(3 * (16 - chunk.len()) + 1));
        }
        let _ = writeln!(out, " \"{}\"", printable(chunk));
    }
    out
}

/// nvme-cli's `-o/--output-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Text, `name : value` lines.
    #[default]
    Normal,
    /// One JSON object with nvme-cli's keys.
    Json,
    /// The structure's bytes exactly as the controller returned them.
    Binary,
}

/// Writes a structure read from the controller in `format`: `raw` as is for
/// [`OutputFormat::Binary`], else the text or the JSON the closures render.
///
/// Errors: [`CliError::Io`] when writing fails.
pub fn emit(
    out: &mut dyn std::io::Write,
    format: OutputFormat,
    raw: &[u8],
    text: impl FnOnce() -> String,
    json: impl FnOnce() -> Value,
) -> Result<(), CliError> {
    match format {
        OutputFormat::Normal => out.write_all(text().as_bytes())?,
        OutputFormat::Json => write_json(out, &json())?,
        OutputFormat::Binary => out.write_all(raw)?,
    }
    Ok(())
}

/// Milliseconds since the Unix epoch as a UTC date in the C library's `asctime` layout,
/// as nvme-cli prints the Timestamp feature: `Sat Nov 21 17:03:28 2026 UTC`.
pub fn utc_date(millis: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = millis / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{} {} {d:2} {:02}:{:02}:{:02} {y} UTC",
        DAYS[(days % 7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// (year, month 1..=12, day 1..=31) of the day `days` after 1970-01-01, proleptic
/// Gregorian calendar (H. Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_hex_matches_printf() {
        assert_eq!(c_hex(0), "0");
        assert_eq!(c_hex(0x1b36), "0x1b36");
        assert_eq!(c_hex(u64::MAX), "0xffffffffffffffff");
    }

    #[test]
    fn record_renders_both_ways_in_order() {
        let mut r = Record::new();
        r.hex("vid", 0x1b36u16)
            .text("sn", "abc")
            .dec("mdts", 7u8)
            .u128("tnvmcap", u128::MAX)
            .key("tnvm");
        let mut s = String::new();
        r.write_human(10, &mut s);
        let max = u128::MAX.to_string();
        assert_eq!(
            s,
            format!("vid       : 0x1b36\nsn        : abc\nmdts      : 7\ntnvmcap   : {max}\n")
        );
        let j = r.to_json();
        assert_eq!(j.keys().collect::<Vec<_>>(), ["vid", "sn", "mdts", "tnvm"]);
        assert_eq!(j["vid"], 0x1b36);
        assert_eq!(j["tnvm"], Value::String(max));
    }

    #[test]
    fn decoded_lines_follow_their_field_in_text_only() {
        for decode in [false, true] {
            let mut r = Record::decoding(decode);
            r.hex("cmic", 1u8)
                .decoded(|| "  [0:0] : 0x1\tMulti Port\n\n".to_string())
                .dec("mdts", 7u8);
            let mut s = String::new();
            r.write_human(10, &mut s);
            let decoded = if decode { "  [0:0] : 0x1\tMulti Port\n\n" } else { "" };
            assert_eq!(s, format!("cmic      : 0x1\n{decoded}mdts      : 7\n"));
            assert_eq!(r.to_json().keys().collect::<Vec<_>>(), ["cmic", "mdts"]);
        }
    }

    #[test]
    fn sizes_and_ids() {
        assert_eq!(si_bytes(0), "0.00 B");
        assert_eq!(si_bytes(512_000), "512.00 kB");
        assert_eq!(si_bytes(1 << 30), "1.07 GB");
        let huge = si_bytes(u128::MAX);
        assert!(huge.starts_with("340282366920938.") && huge.ends_with(" YB"), "{huge}");
        assert_eq!(hex_bytes(&[0, 0xab, 0x12]), "00ab12");
        let mut u = [0u8; 16];
        u[0] = 0x12;
        u[15] = 0xff;
        assert_eq!(uuid_string(&u), "12000000-0000-0000-0000-0000000000ff");
        assert_eq!(kelvin(323), "50°C (323 Kelvin)");
        assert_eq!(kelvin(0), "-273°C (0 Kelvin)");
    }

    #[test]
    fn hex_dump_layout() {
        let d = hex_dump(&[0x11, 0x19, 0x10, 0xff, 0xa1, 0x01, 0x02, 0x00]);
        assert_eq!(
            d,
            "       0  1  2  3  4  5  6  7  8  9  a  b  c  d  e  f\n\
             0000: 11 19 10 ff a1 01 02 00                          \"........\"\n"
        );
        let d = hex_dump(b"ABCDEFGHIJKLMNOPQ");
        assert!(d.contains("0000: 41 42"), "{d}");
        assert!(d.contains("4f 50 \"ABCDEFGHIJKLMNOP\"\n0010: 51"), "{d}");
        // Space is not printed as itself, as in nvme-cli.
        assert!(hex_dump(b"a b").contains("\"a.b\""));
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "Thu Jan  1 00:00:00 1970 UTC");
        // The value nvme-cli 2.3 printed for QEMU's timestamp in one guest run.
        assert_eq!(utc_date(1_795_280_608_339), "Sat Nov 21 17:03:28 2026 UTC");
        assert_eq!(utc_date(951_782_400_000), "Tue Feb 29 00:00:00 2000 UTC");
        assert_eq!(utc_date((1 << 48) - 1), "Tue Aug  2 05:31:50 10889 UTC");
    }
}
