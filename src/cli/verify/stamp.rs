//! The stamped block format (see the module docs of `verify`).

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
}

impl Problem {
    /// A one-word name: `zeros`, `corrupt`, `misdirected` or `stale`.
    pub const fn kind(&self) -> &'static str {
        match self {
            Problem::Zeros => "zeros",
            Problem::Corrupt { .. } => "corrupt",
            Problem::Misdirected { .. } => "misdirected",
            Problem::Stale { .. } => "stale",
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
    let mut rng = SplitMix64::new(mix64(stamp.seed ^ mix64(stamp.lba ^ mix64(stamp.pass))));
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
