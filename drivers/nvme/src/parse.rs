//! Errors from parsing data structures returned by a controller.
//!
//! Every parser in this crate is total: any byte slice yields either a value or a
//! [`ParseError`], never a panic.

/// A data structure returned by the controller (Identify data, a log page, a feature
/// value) could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The buffer is shorter than the structure's defined size.
    #[error("{what}: need {needed} bytes, got {got}")]
    TooShort {
        /// The structure being parsed, e.g. "Identify Controller".
        what: &'static str,
        /// Minimum length in bytes.
        needed: usize,
        /// Length supplied in bytes.
        got: usize,
    },
    /// A field holds a value the specification does not allow.
    #[error("{what}: {reason}")]
    Invalid {
        /// The structure being parsed.
        what: &'static str,
        /// Which field and why it is invalid.
        reason: String,
    },
}

/// Checks that `buf` holds at least `needed` bytes for the structure `what`.
pub(crate) fn need(what: &'static str, buf: &[u8], needed: usize) -> Result<(), ParseError> {
    if buf.len() < needed {
        Err(ParseError::TooShort {
            what,
            needed,
            got: buf.len(),
        })
    } else {
        Ok(())
    }
}

/// Reads a little-endian `u16` at byte `off`; the caller has checked the length (panics
/// past the end).
pub fn le16(buf: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([buf[off], buf[off + 1]])
}

/// Reads a little-endian `u32` at byte `off`; the caller has checked the length (panics
/// past the end).
pub fn le32(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]])
}

/// Reads a little-endian `u64` at byte `off`; the caller has checked the length (panics
/// past the end).
pub fn le64(buf: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[off..off + 8]);
    u64::from_le_bytes(b)
}

/// Reads a little-endian 128-bit counter (SMART log counters) at `off`.
pub(crate) fn le128(buf: &[u8], off: usize) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&buf[off..off + 16]);
    u128::from_le_bytes(b)
}

/// Decodes a space-padded ASCII string field (SN, MN, FR, SUBNQN), trimming padding and
/// NULs and replacing bytes outside printable ASCII with U+FFFD.
pub(crate) fn ascii(buf: &[u8]) -> String {
    let s: String = buf
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else if b == 0 {
                ' '
            } else {
                '\u{fffd}'
            }
        })
        .collect();
    s.trim().to_string()
}
