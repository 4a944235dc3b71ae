//! The send stream's reader (`ironvme::vde::stream`) on hostile streams: what `vde recv`
//! reads from a pipe.
//!
//! # Input
//!
//! - byte 0: bit 0 set: **reseal** the stream before reading it: the header's checksum,
//!   and, record by record as far as the frames' lengths allow, each Write's data
//!   checksum and each record's chained checksum are recomputed, so the checks behind the
//!   checksums (types, lengths, ranges, order, the End record's counts) are what is
//!   fuzzed. Bit 0 clear: the bytes as they are (the checksums themselves are fuzzed).
//!   Bit 1 set: the rest is not a stream but a resume token as a user types it to
//!   `vde send -t` (`ResumeToken::from_str`).
//! - the rest: the stream.
//!
//! # Oracles
//!
//! 1. Nothing panics, whatever the bytes.
//! 2. A stream the reader accepts to its End record re-encodes, through `StreamWriter`
//!    with the header and records the reader returned, to exactly the bytes it read:
//!    nothing the reader accepts is ambiguous, and nothing is accepted that the writer
//!    would not have written.
//! 3. A token that parses prints as the same text (trimmed): a token is unambiguous.
//! 4. A reader that refused a stream keeps refusing (`next_record` after an error is not called:
//!    the API says not to), and one that returned `None` returns `None` again.

#![no_main]

use ironvme::vde::ResumeToken;
use ironvme::vde::stream::{FRAME_BYTES, HEADER_BYTES, Record, StreamReader, StreamWriter, chained_bytes};
use libfuzzer_sys::fuzz_target;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Recomputes the header's checksum and every whole record's checksums in place.
fn reseal(s: &mut [u8]) {
    if s.len() < HEADER_BYTES {
        return;
    }
    let sum = xxh3_64(&s[..HEADER_BYTES - 8]);
    s[HEADER_BYTES - 8..HEADER_BYTES].copy_from_slice(&sum.to_le_bytes());
    let mut seed = sum;
    let mut at = HEADER_BYTES;
    while at + FRAME_BYTES <= s.len() {
        let len = get32(s, at + 4) as usize;
        let Some(end) = (at + 8).checked_add(len) else { return };
        if end + 8 > s.len() {
            return;
        }
        if s[at] == 1 && len >= 16 {
            let data = xxh3_64(&s[at + 24..end]);
            s[at + 16..at + 24].copy_from_slice(&data.to_le_bytes());
        }
        seed = xxh3_64_with_seed(&s[at..at + chained_bytes(s[at], len)], seed);
        s[end..end + 8].copy_from_slice(&seed.to_le_bytes());
        at = end + 8;
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    if mode & 2 == 2 {
        let Ok(text) = std::str::from_utf8(rest) else { return };
        if let Ok(t) = text.parse::<ResumeToken>() {
            assert_eq!(t.to_string(), text.trim(), "a token prints as it was read");
        }
        return;
    }
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 {
        reseal(&mut bytes);
    }
    let Ok(mut r) = StreamReader::new(&bytes[..]) else {
        return;
    };
    let mut records = Vec::new();
    loop {
        match r.next_record() {
            Ok(Some(rec)) => records.push(rec),
            Ok(None) => break,
            Err(_) => return,
        }
    }
    assert!(
        r.next_record().unwrap().is_none(),
        "a reader that ended must stay ended"
    );
    let mut again = Vec::new();
    let mut w = StreamWriter::new(&mut again, r.header()).unwrap();
    for rec in &records {
        match rec {
            Record::Write { offset, data } => w.write(*offset, data).unwrap(),
            Record::Free { offset, len } => w.free(*offset, *len).unwrap(),
        }
    }
    let totals = w.finish().unwrap();
    assert_eq!(totals, r.totals(), "the totals the reader counted");
    assert!(again == bytes, "an accepted stream re-encodes to other bytes");
});
