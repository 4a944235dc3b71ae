//! The stamped block format and its metadata (see the module docs of `verify`).

use super::*;

/// The first 8 bytes of every stamped block.
pub const MAGIC: [u8; 8] = *b"IRNVMVFY";
/// Bytes of the header (magic, LBA, pass, seed).
pub const HEADER_BYTES: usize = 32;
/// Bytes of the checksum at the end.
pub const CHECKSUM_BYTES: usize = 8;

/// What a block's header says: where, in which pass and run it was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The LBA it was written to.
    pub lba: u64,
    /// The pass number.
    pub pass: u64,
    /// The run's seed.
    pub seed: u64,
}

/// What is wrong with a block read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    /// All zeros: never written, or deallocated.
    Zeros,
    /// The checksum does not match; the header if its magic survived.
    Corrupt {
        /// The (possibly damaged) header.
        header: Option<Stamp>,
    },
    /// A valid block written for another LBA.
    Misdirected {
        /// Its header.
        found: Stamp,
    },
    /// A valid block for this LBA from another pass or run.
    Stale {
        /// Its header.
        found: Stamp,
    },
    /// The data is what was written (this LBA, pass and run) but the block's metadata is
    /// not.
    Metadata {
        /// What differs.
        fault: MetadataFault,
    },
}

/// What is wrong with the metadata of a block whose data is intact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetadataFault {
    /// Metadata bytes outside the PI tuple differ from the pattern written.
    Pattern {
        /// Offset in bytes, within the block's metadata, of the first differing byte.
        offset: u16,
        /// The byte read there.
        found: u8,
        /// The byte written there.
        expected: u8,
        /// How many bytes outside the PI tuple differ.
        differing: u16,
    },
    /// A field of the PI tuple differs from what was written.
    Pi {
        /// The first differing field, in the order a controller checks them.
        field: PiField,
        /// Its value read back.
        found: u32,
        /// Its value written: for the guard, the CRC-16 T10-DIF of the data read back
        /// (and of the metadata bytes before a trailing tuple).
        expected: u32,
    },
}

impl MetadataFault {
    /// Whether the next block's fault continues this one's run: the same first differing
    /// byte, or the same PI field.
    fn continues(&self, next: &MetadataFault) -> bool {
        match (self, next) {
            (MetadataFault::Pattern { offset: a, .. }, MetadataFault::Pattern { offset: b, .. }) => a == b,
            (MetadataFault::Pi { field: a, .. }, MetadataFault::Pi { field: b, .. }) => a == b,
            _ => false,
        }
    }
}

/// A field of the 8-byte PI tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PiField {
    /// The 16-bit guard (CRC-16 T10-DIF of the block); a controller fails it with 0x282.
    Guard,
    /// The 16-bit application tag (verify writes 0).
    AppTag,
    /// The 32-bit reference tag (the low 32 bits of the LBA for types 1 and 2; verify
    /// writes 0 for type 3); a controller fails it with 0x284.
    RefTag,
}

impl PiField {
    /// Its name in reports: `guard`, `application tag` or `reference tag`.
    pub const fn name(self) -> &'static str {
        match self {
            PiField::Guard => "guard",
            PiField::AppTag => "application tag",
            PiField::RefTag => "reference tag",
        }
    }

    /// Its name in JSON: `guard`, `app_tag` or `ref_tag`.
    pub const fn key(self) -> &'static str {
        match self {
            PiField::Guard => "guard",
            PiField::AppTag => "app_tag",
            PiField::RefTag => "ref_tag",
        }
    }

    /// `value` as hex digits of the field's width (4 for the tags of 16 bits, 8 for the
    /// reference tag).
    fn hex(self, value: u32) -> String {
        match self {
            PiField::RefTag => format!("{value:#010x}"),
            PiField::Guard | PiField::AppTag => format!("{value:#06x}"),
        }
    }
}

impl Problem {
    /// A one-word name: `zeros`, `corrupt`, `misdirected`, `stale` or `metadata`.
    pub const fn kind(&self) -> &'static str {
        match self {
            Problem::Zeros => "zeros",
            Problem::Corrupt { .. } => "corrupt",
            Problem::Misdirected { .. } => "misdirected",
            Problem::Stale { .. } => "stale",
            Problem::Metadata { .. } => "metadata",
        }
    }

    /// What is wrong with `count` consecutive blocks starting at the one `expected` was
    /// written to, that all have this problem (shifted by their position).
    pub fn describe(&self, expected: Stamp, count: u64) -> String {
        let lbas = |first: u64| {
            if count == 1 {
                format!("LBA {first}")
            } else {
                format!("LBA {first}-{}", first + count - 1)
            }
        };
        match self {
            Problem::Zeros => "never written or deallocated: all zeros".to_string(),
            Problem::Corrupt { header: None } => {
                "corruption: checksum mismatch, no verify header (foreign or garbled data)".to_string()
            }
            Problem::Corrupt { header: Some(h) } => format!(
                "corruption: checksum mismatch (header intact: {}, pass {}, seed {})",
                lbas(h.lba),
                h.pass,
                h.seed
            ),
            Problem::Misdirected { found } => format!(
                "misdirected write: holds the data written for {} (pass {}, seed {})",
                lbas(found.lba),
                found.pass,
                found.seed
            ),
            Problem::Stale { found } if found.seed == expected.seed => format!(
                "lost write: holds pass {}'s data, not pass {}'s",
                found.pass, expected.pass
            ),
            Problem::Stale { found } => format!(
                "lost write: holds another run's data (seed {}, pass {}), not this run's (seed {}, pass {})",
                found.seed, found.pass, expected.seed, expected.pass
            ),
            Problem::Metadata {
                fault: MetadataFault::Pattern { offset, .. },
            } if count > 1 => format!("metadata damaged, data intact: from metadata byte {offset}"),
            Problem::Metadata {
                fault:
                    MetadataFault::Pattern {
                        offset,
                        found,
                        expected,
                        differing,
                    },
            } => {
                let more = if *differing > 1 {
                    format!(" ({differing} bytes differ)")
                } else {
                    String::new()
                };
                format!(
                    "metadata damaged, data intact: metadata byte {offset} is {found:#04x}, not {expected:#04x}{more}"
                )
            }
            Problem::Metadata {
                fault: MetadataFault::Pi { field, .. },
            } if count > 1 => format!("bad protection information, data intact: PI {} differs", field.name()),
            Problem::Metadata {
                fault: MetadataFault::Pi { field, found, expected },
            } => format!(
                "bad protection information, data intact: PI {} {}, expected {}",
                field.name(),
                field.hex(*found),
                field.hex(*expected)
            ),
        }
    }

    /// Whether the next block's problem continues this one's run (the same problem,
    /// shifted by one LBA where it names one).
    pub(super) fn continues(&self, next: &Problem) -> bool {
        let shifted = |a: &Stamp, b: &Stamp| b.lba == a.lba.wrapping_add(1) && a.pass == b.pass && a.seed == b.seed;
        match (self, next) {
            (Problem::Zeros, Problem::Zeros) => true,
            (Problem::Corrupt { header: None }, Problem::Corrupt { header: None }) => true,
            (Problem::Corrupt { header: Some(a) }, Problem::Corrupt { header: Some(b) }) => shifted(a, b),
            (Problem::Misdirected { found: a }, Problem::Misdirected { found: b }) => shifted(a, b),
            (Problem::Stale { found: a }, Problem::Stale { found: b }) => shifted(a, b),
            (Problem::Metadata { fault: a }, Problem::Metadata { fault: b }) => a.continues(b),
            _ => false,
        }
    }
}

/// Writes the stamped block for `stamp` into `block` (whose length is the logical block
/// size, at least 64 bytes).
pub fn stamp_block(block: &mut [u8], stamp: Stamp) {
    let body = block.len() - CHECKSUM_BYTES;
    block[0..8].copy_from_slice(&MAGIC);
    block[8..16].copy_from_slice(&stamp.lba.to_le_bytes());
    block[16..24].copy_from_slice(&stamp.pass.to_le_bytes());
    block[24..32].copy_from_slice(&stamp.seed.to_le_bytes());
    let mut rng = pattern(stamp, 0);
    for word in block[HEADER_BYTES..body].chunks_mut(8) {
        let bytes = rng.next_u64().to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&block[..body]);
    block[body..].copy_from_slice(&sum.to_le_bytes());
}

/// Checks a block read back against the stamp it was written with.
///
/// Errors: the [`Problem`].
pub fn check_block(block: &[u8], expected: Stamp) -> Result<(), Problem> {
    let body = block.len() - CHECKSUM_BYTES;
    let word = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().expect("8 bytes"));
    let header = (block[0..8] == MAGIC).then(|| Stamp {
        lba: word(8),
        pass: word(16),
        seed: word(24),
    });
    if xxhash_rust::xxh3::xxh3_64(&block[..body]) != word(body) {
        if block.iter().all(|&b| b == 0) {
            return Err(Problem::Zeros);
        }
        return Err(Problem::Corrupt { header });
    }
    match header {
        None => Err(Problem::Corrupt { header: None }),
        Some(found) if found.lba != expected.lba => Err(Problem::Misdirected { found }),
        Some(found) if found != expected => Err(Problem::Stale { found }),
        Some(_) => Ok(()),
    }
}

/// Salt of the metadata's pattern ("METADATA" little-endian), which sets it apart from
/// the data's pattern (salt 0) for the same stamp.
const METADATA_SALT: u64 = u64::from_le_bytes(*b"METADATA");

/// The pattern generator of a block written for `stamp`: SplitMix64 seeded by (LBA,
/// pass, seed) and `salt`.
fn pattern(stamp: Stamp, salt: u64) -> SplitMix64 {
    SplitMix64::new(mix64(stamp.seed ^ mix64(stamp.lba ^ mix64(stamp.pass ^ salt))))
}

/// Fills `md`, one block's metadata (any length), with the metadata pattern for `stamp`
/// (a SplitMix64 stream seeded apart from the data's, little-endian).
pub fn stamp_metadata(md: &mut [u8], stamp: Stamp) {
    let mut rng = pattern(stamp, METADATA_SALT);
    for word in md.chunks_mut(8) {
        let bytes = rng.next_u64().to_le_bytes();
        word.copy_from_slice(&bytes[..word.len()]);
    }
}

/// Writes `blocks` consecutive blocks into `buf`, laid out as `fmt.ranges` says for
/// `block_size`-byte blocks: block `i` is stamped for `first` at LBA `first.lba + i`, its
/// data with [`stamp_block`] and its metadata (`fmt.bytes` bytes, none on
/// [`MetadataFormat::NONE`]) with [`stamp_metadata`]; then, with protection information,
/// each block's PI tuple overwrites its 8 bytes of the pattern: the guard of the block,
/// application tag 0 and the reference tag of [`Protection::checked`] at `first.lba`
/// ([`pi::generate`]).
///
/// Panics if `buf` is shorter than `blocks` × (`block_size` + `fmt.bytes`) bytes.
pub fn stamp_blocks(buf: &mut [u8], fmt: &MetadataFormat, block_size: u32, blocks: usize, first: Stamp) {
    for i in 0..blocks {
        let (data, md) = fmt.ranges(block_size, blocks, i);
        let stamp = Stamp {
            lba: first.lba + i as u64,
            ..first
        };
        stamp_block(&mut buf[data], stamp);
        stamp_metadata(&mut buf[md], stamp);
    }
    pi::generate(fmt, block_size, buf, blocks, &Protection::checked(fmt, first.lba));
}

/// Checks `blocks` consecutive blocks read back into `buf` (laid out as for
/// [`stamp_blocks`]) against what [`stamp_blocks`] wrote for `first`, and calls
/// `on_problem(i, problem)` for each block `i` that differs. Per block:
///
/// - the data, with [`check_block`]; a block whose data is all zeros is
///   [`Problem::Zeros`] only if every metadata byte is 0x00 or 0xFF (what a deallocated
///   or unwritten block holds), else [`Problem::Corrupt`];
/// - when the data is intact, the metadata bytes outside the PI tuple against the
///   pattern ([`MetadataFault::Pattern`]);
/// - then the PI tuple against the one written: the guard recomputed from the data read
///   back ([`pi::guard`]), application tag 0 and the reference tag of
///   [`Protection::checked`] at the block's LBA ([`MetadataFault::Pi`]). This passes
///   exactly when [`pi::check`] with every check enabled would, except that a tuple whose
///   application tag is 0xFFFF (which turns a controller's checks off) is reported, since
///   verify never writes one.
///
/// Panics if `buf` is shorter than `blocks` × (`block_size` + `fmt.bytes`) bytes.
pub fn check_blocks(
    buf: &[u8],
    fmt: &MetadataFormat,
    block_size: u32,
    blocks: usize,
    first: Stamp,
    mut on_problem: impl FnMut(usize, Problem),
) {
    for i in 0..blocks {
        let (data, md) = fmt.ranges(block_size, blocks, i);
        let expected = Stamp {
            lba: first.lba + i as u64,
            ..first
        };
        let (data, md) = (&buf[data], &buf[md]);
        let result = match check_block(data, expected) {
            Err(Problem::Zeros) if !md.iter().all(|&b| b == 0 || b == 0xFF) => Err(Problem::Corrupt { header: None }),
            Err(problem) => Err(problem),
            Ok(()) => check_metadata(data, md, fmt, expected).map_err(|fault| Problem::Metadata { fault }),
        };
        if let Err(problem) = result {
            on_problem(i, problem);
        }
    }
}

/// Checks one block's metadata `md` (with its intact `data`, which the guard covers)
/// against what [`stamp_blocks`] wrote for `expected`.
///
/// Errors: a [`MetadataFault::Pattern`] if a byte outside the PI tuple differs, else
/// the first PI field that differs.
fn check_metadata(data: &[u8], md: &[u8], fmt: &MetadataFormat, expected: Stamp) -> Result<(), MetadataFault> {
    let pi_at = fmt.pi_offset();
    let in_tuple = |at: usize| pi_at.is_some_and(|p| (p..p + pi::PI_TUPLE_BYTES).contains(&at));
    let mut rng = pattern(expected, METADATA_SALT);
    let mut first: Option<(usize, u8, u8)> = None;
    let mut differing = 0u16;
    for (w, word) in md.chunks(8).enumerate() {
        let want = rng.next_u64().to_le_bytes();
        for (j, (&got, &want)) in word.iter().zip(&want).enumerate() {
            let at = w * 8 + j;
            if got != want && !in_tuple(at) {
                differing += 1;
                first.get_or_insert((at, got, want));
            }
        }
    }
    if let Some((offset, found, expected)) = first {
        return Err(MetadataFault::Pattern {
            offset: offset as u16,
            found,
            expected,
            differing,
        });
    }
    let Some(at) = pi_at else { return Ok(()) };
    let raw: &[u8; pi::PI_TUPLE_BYTES] = md[at..at + pi::PI_TUPLE_BYTES].try_into().expect("8 bytes");
    let found = pi::PiTuple::from_bytes(raw);
    let p = Protection::checked(fmt, expected.lba);
    let fields = [
        (PiField::Guard, found.guard.into(), pi::guard(data, &md[..at]).into()),
        (PiField::AppTag, found.app_tag.into(), p.app_tag.into()),
        (PiField::RefTag, found.ref_tag, p.ref_tag),
    ];
    match fields.into_iter().find(|(_, found, expected)| found != expected) {
        Some((field, found, expected)) => Err(MetadataFault::Pi { field, found, expected }),
        None => Ok(()),
    }
}
