//! A parser of the dm-log-writes log format, as QEMU's `blklogwrites` block driver writes
//! it (QEMU 7.2 `block/blklogwrites.c`, after Linux `drivers/md/dm-log-writes.c`).
//!
//! All integers little-endian. Sector 0 (of `sectorsize` bytes) is the superblock:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `0x6a736677736872` |
//! | 8 | 8 | version, 1 |
//! | 16 | 8 | `nr_entries`: entries logged up to the last Flush (QEMU rewrites the superblock only on a Flush) |
//! | 24 | 4 | `sectorsize`: the log's sector size in bytes, a power of two |
//!
//! From sector 1, one entry after another: a sector holding the 32-byte header (`sector`,
//! `nr_sectors`, `flags`, `data_len`, each u64; then, for the kernel's marks, `data_len`
//! bytes of mark text), followed, unless the entry is a discard, by `nr_sectors` sectors of
//! the data written. `sector` and `nr_sectors` count `sectorsize` units. Flags: 1 Flush,
//! 2 FUA, 4 discard, 8 mark, 16 metadata (a hint). QEMU logs a Write as flags 0 with its
//! data, a Write Zeroes as flags 0 with zeros for data, a discard as flag 4 without data,
//! a Flush as flag 1 with no sectors, and never sets FUA; the kernel logs a write with
//! REQ_PREFLUSH as flag 1 *with* data (the Flush comes first) and marks as flag 8.
//!
//! [`parse`] is total: any bytes give a [`Parsed`] or a [`LogWritesError`], never a panic,
//! with memory bounded by the input's size.

use super::{LogOp, LoggedWrite, WriteLog};

/// The superblock's magic number.
pub const MAGIC: u64 = 0x006a_7366_7773_6872;
/// The only format version.
pub const VERSION: u64 = 1;
/// Entry flag: a Flush (before the entry's data, if any).
pub const FLUSH: u64 = 1 << 0;
/// Entry flag: the write had Forced Unit Access.
pub const FUA: u64 = 1 << 1;
/// Entry flag: a discard (no data follows).
pub const DISCARD: u64 = 1 << 2;
/// Entry flag: a mark (`data_len` bytes of text after the header).
pub const MARK: u64 = 1 << 3;
/// Entry flag: the write was metadata (a hint; ignored).
pub const METADATA: u64 = 1 << 4;
/// Bytes of an entry header.
pub const ENTRY_BYTES: usize = 32;

/// A parsed log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The writes and Flushes, in the log's order, in units of the log's sector size.
    pub log: WriteLog,
    /// The superblock's `nr_entries`.
    pub counted: u64,
    /// Entries read past `nr_entries` (only with `trailing`): logged after the last Flush.
    pub trailing: u64,
    /// Marks (kernel dm-log-writes): (number of [`WriteLog`] entries before the mark, text).
    pub marks: Vec<(usize, String)>,
    /// For each [`WriteLog`] entry, the byte offset in the log file just past its record
    /// (a preflush and its write share one record); ascending.
    pub ends: Vec<u64>,
}

impl Parsed {
    /// How many entries the log held when its file was `file_len` bytes long: those whose
    /// records end within it. QEMU extends the file with an entry's record before it
    /// completes the request, so a guest that sees the file at `file_len` bytes after a
    /// request completed finds that request's entries counted.
    pub fn position(&self, file_len: u64) -> usize {
        self.ends.partition_point(|&end| end <= file_len)
    }
}

/// Why bytes are not a dm-log-writes log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogWritesError {
    /// Shorter than the superblock.
    #[error("{0} bytes: too short for a dm-log-writes superblock")]
    TooShort(usize),
    /// The magic number is wrong.
    #[error("not a dm-log-writes log: magic {0:#x}")]
    BadMagic(u64),
    /// An unknown version.
    #[error("dm-log-writes version {0} (only 1 is known)")]
    BadVersion(u64),
    /// The sector size is not a power of two of at least 32 and below 16 MiB.
    #[error("bad log sector size {0}")]
    BadSectorSize(u32),
    /// An entry or its data reaches past the end of the log.
    #[error("entry {entry}: needs bytes up to {need}, the log has {have}")]
    Truncated {
        /// The entry's number.
        entry: u64,
        /// The end of what it needs, in bytes (saturated).
        need: u64,
        /// The log's length in bytes.
        have: u64,
    },
    /// Unknown flag bits.
    #[error("entry {entry}: unknown flags {flags:#x}")]
    BadFlags {
        /// The entry's number.
        entry: u64,
        /// Its flags.
        flags: u64,
    },
    /// A mark longer than its sector.
    #[error("entry {entry}: mark of {len} bytes does not fit its sector")]
    BadMark {
        /// The entry's number.
        entry: u64,
        /// Its `data_len`.
        len: u64,
    },
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// One entry read at byte `at`: the entries it makes, its mark, and the next entry's byte
/// offset.
type Entry = (Vec<LoggedWrite>, Option<String>, u64);

fn entry(bytes: &[u8], n: u64, at: u64, ss: u64) -> Result<Entry, LogWritesError> {
    let have = bytes.len() as u64;
    let truncated = |need: u64| LogWritesError::Truncated { entry: n, need, have };
    let head_end = at.checked_add(ss).ok_or(truncated(u64::MAX))?;
    if head_end > have {
        return Err(truncated(head_end));
    }
    let head = &bytes[at as usize..head_end as usize];
    let (sector, nr, flags, data_len) = (u64_at(head, 0), u64_at(head, 8), u64_at(head, 16), u64_at(head, 24));
    if flags & !(FLUSH | FUA | DISCARD | MARK | METADATA) != 0 {
        return Err(LogWritesError::BadFlags { entry: n, flags });
    }
    let mut out = Vec::new();
    let mut mark = None;
    if flags & MARK != 0 {
        if data_len > ss - ENTRY_BYTES as u64 {
            return Err(LogWritesError::BadMark {
                entry: n,
                len: data_len,
            });
        }
        let text = &head[ENTRY_BYTES..ENTRY_BYTES + data_len as usize];
        mark = Some(String::from_utf8_lossy(text).trim_end_matches('\0').to_string());
    }
    if flags & FLUSH != 0 {
        out.push(LoggedWrite::flush());
    }
    let mut next = head_end;
    if flags & DISCARD != 0 {
        if nr > 0 {
            out.push(LoggedWrite {
                op: LogOp::Deallocate,
                slba: sector,
                nlb: nr,
                data: Vec::new(),
                durable: flags & FUA != 0,
            });
        }
    } else {
        let len = nr.checked_mul(ss).ok_or(truncated(u64::MAX))?;
        next = head_end.checked_add(len).ok_or(truncated(u64::MAX))?;
        if next > have {
            return Err(truncated(next));
        }
        if nr > 0 {
            out.push(LoggedWrite {
                op: LogOp::Write,
                slba: sector,
                nlb: nr,
                data: bytes[head_end as usize..next as usize].to_vec(),
                durable: flags & FUA != 0,
            });
        }
    }
    Ok((out, mark, next))
}

/// Parses a dm-log-writes log. Reads the superblock's `nr_entries` entries; with
/// `trailing`, then goes on reading entries while they are whole and well-formed and not
/// all-zero headers (QEMU counts entries in the superblock only at a Flush, so a log whose
/// writer died ends with uncounted ones; a log file that was longer before QEMU reused it
/// also ends with stale ones, so ask for them only on a fresh file).
///
/// Errors: [`LogWritesError`] for a bad superblock or a counted entry that is malformed
/// or cut short.
pub fn parse(bytes: &[u8], trailing: bool) -> Result<Parsed, LogWritesError> {
    if bytes.len() < 28 {
        return Err(LogWritesError::TooShort(bytes.len()));
    }
    let magic = u64_at(bytes, 0);
    if magic != MAGIC {
        return Err(LogWritesError::BadMagic(magic));
    }
    let version = u64_at(bytes, 8);
    if version != VERSION {
        return Err(LogWritesError::BadVersion(version));
    }
    let counted = u64_at(bytes, 16);
    let ss = u32::from_le_bytes(bytes[24..28].try_into().expect("4 bytes"));
    if !ss.is_power_of_two() || (ss as usize) < ENTRY_BYTES || ss >= 1 << 24 {
        return Err(LogWritesError::BadSectorSize(ss));
    }
    let mut parsed = Parsed {
        log: WriteLog {
            lba_size: ss,
            entries: Vec::new(),
        },
        counted,
        ..Parsed::default()
    };
    let mut at = ss as u64;
    let mut n = 0u64;
    loop {
        let more = n < counted;
        if !more && (!trailing || at >= bytes.len() as u64) {
            break;
        }
        if !more
            && at
                .checked_add(ENTRY_BYTES as u64)
                .is_some_and(|end| end <= bytes.len() as u64)
            && bytes[at as usize..at as usize + ENTRY_BYTES].iter().all(|&b| b == 0)
        {
            break; // an all-zero header: the end of what was written
        }
        match entry(bytes, n, at, ss as u64) {
            Ok((writes, mark, next)) => {
                if let Some(m) = mark {
                    parsed.marks.push((parsed.log.entries.len(), m));
                }
                parsed.ends.extend(std::iter::repeat_n(next, writes.len()));
                parsed.log.entries.extend(writes);
                at = next;
                if !more {
                    parsed.trailing += 1;
                }
            }
            Err(e) if more => return Err(e),
            Err(_) => break,
        }
        n += 1;
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log as QEMU writes it: superblock, then entries (sector, sectors, flags, data).
    fn build(ss: usize, counted: Option<u64>, entries: &[(u64, u64, u64, Vec<u8>)]) -> Vec<u8> {
        let mut out = vec![0u8; ss];
        out[..8].copy_from_slice(&MAGIC.to_le_bytes());
        out[8..16].copy_from_slice(&VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&counted.unwrap_or(entries.len() as u64).to_le_bytes());
        out[24..28].copy_from_slice(&(ss as u32).to_le_bytes());
        for (sector, nr, flags, data) in entries {
            let mut head = vec![0u8; ss];
            head[..8].copy_from_slice(&sector.to_le_bytes());
            head[8..16].copy_from_slice(&nr.to_le_bytes());
            head[16..24].copy_from_slice(&flags.to_le_bytes());
            if flags & MARK != 0 {
                head[24..32].copy_from_slice(&(data.len() as u64).to_le_bytes());
                head[32..32 + data.len()].copy_from_slice(data);
                out.extend(head);
            } else {
                out.extend(head);
                out.extend(data);
            }
        }
        out
    }

    #[test]
    fn parses_writes_zeroes_discards_flushes_and_marks() {
        let bytes = build(
            512,
            None,
            &[
                (8, 2, 0, vec![0xAB; 1024]),
                (0, 0, FLUSH, vec![]),
                (100, 1, 0, vec![0; 512]), // Write Zeroes: zeros for data
                (64, 16, DISCARD, vec![]),
                (0, 0, MARK, b"acked 3".to_vec()),
                (2, 1, FLUSH | FUA, vec![7; 512]), // a preflush write with FUA (kernel)
            ],
        );
        let p = parse(&bytes, false).unwrap();
        assert_eq!((p.counted, p.trailing, p.log.lba_size), (6, 0, 512));
        let e = &p.log.entries;
        assert_eq!(e.len(), 6);
        assert_eq!(
            (e[0].op, e[0].slba, e[0].nlb, e[0].data.len()),
            (LogOp::Write, 8, 2, 1024)
        );
        assert!(e[0].data.iter().all(|&b| b == 0xAB) && !e[0].durable);
        assert!(e[1].is_flush());
        assert_eq!((e[2].slba, &e[2].data[..]), (100, &[0u8; 512][..]));
        assert_eq!((e[3].op, e[3].slba, e[3].nlb), (LogOp::Deallocate, 64, 16));
        assert!(e[4].is_flush(), "the preflush comes first");
        assert_eq!((e[5].op, e[5].slba, e[5].durable), (LogOp::Write, 2, true));
        assert_eq!(p.marks, [(4, "acked 3".to_string())]);
        // Records of 1 + 2, 1, 1 + 1, 1, 1 (the mark: no entry) and 1 + 1 sectors from
        // sector 1.
        assert_eq!(p.ends, [2048, 2560, 3584, 4096, 5632, 5632]);
        assert_eq!(p.ends.len(), e.len());
        assert_eq!(
            [0, 2047, 2048, 3000, 5119, 5120, 1 << 20].map(|n| p.position(n)),
            [0, 0, 1, 2, 4, 4, 6]
        );
    }

    /// A log QEMU 7.2 wrote (qemu/run --topology crash) while the guest's kernel driver did,
    /// on the 512 B namespace: `dd` of two 1 KiB direct writes at LBA 0, `nvme flush`,
    /// `nvme write-zeroes -s 8 -c 1`, `blkdiscard -o 65536 -l 65536`, `nvme flush`, a 512 B
    /// write at LBA 20, and the Flush of the controller's shutdown.
    #[test]
    fn parses_a_log_qemu_wrote() {
        let bytes = include_bytes!("testdata/qemu-7.2.writes");
        let p = parse(bytes, false).unwrap();
        assert_eq!((p.counted, p.trailing, p.log.lba_size), (8, 0, 512));
        let ops: Vec<(LogOp, u64, u64)> = p.log.entries.iter().map(|e| (e.op, e.slba, e.nlb)).collect();
        assert_eq!(
            ops,
            [
                (LogOp::Write, 0, 2),
                (LogOp::Write, 2, 2),
                (LogOp::Flush, 0, 0),
                (LogOp::Write, 8, 2), // Write Zeroes: logged as zeros
                (LogOp::Deallocate, 128, 128),
                (LogOp::Flush, 0, 0),
                (LogOp::Write, 20, 1),
                (LogOp::Flush, 0, 0),
            ]
        );
        assert!(p.log.entries[3].data.iter().all(|&b| b == 0));
        assert!(p.log.entries[0].data.iter().any(|&b| b != 0), "dd wrote random bytes");
        assert!(p.log.entries.iter().all(|e| !e.durable), "QEMU never logs FUA");
        assert_eq!(*p.ends.last().unwrap(), bytes.len() as u64);
        assert_eq!(parse(bytes, true).unwrap(), p, "nothing past the count");
    }

    #[test]
    fn entries_past_the_count_are_read_only_when_asked() {
        // Superblock counted 2 (the last Flush); two more followed, then zeros.
        let mut bytes = build(
            512,
            Some(2),
            &[
                (0, 1, 0, vec![1; 512]),
                (0, 0, FLUSH, vec![]),
                (1, 1, 0, vec![2; 512]),
                (2, 2, 0, vec![3; 1024]),
            ],
        );
        bytes.extend([0u8; 4096]);
        let p = parse(&bytes, false).unwrap();
        assert_eq!((p.log.entries.len(), p.trailing), (2, 0));
        let p = parse(&bytes, true).unwrap();
        assert_eq!((p.log.entries.len(), p.trailing), (4, 2));
        // A trailing entry cut short is left out, not an error.
        let cut = &bytes[..bytes.len() - 4096 - 100];
        let p = parse(cut, true).unwrap();
        assert_eq!((p.log.entries.len(), p.trailing), (3, 1));
        // But a counted one is an error.
        let e = parse(&bytes[..512 + 512 + 100], false).unwrap_err();
        assert_eq!(
            e,
            LogWritesError::Truncated {
                entry: 0,
                need: 1536,
                have: 1124
            }
        );
    }

    #[test]
    fn bad_superblocks_and_entries_are_named() {
        let good = build(4096, None, &[(1, 1, 0, vec![5; 4096])]);
        assert_eq!(parse(&good, false).unwrap().log.lba_size, 4096);
        assert_eq!(parse(&good[..20], false), Err(LogWritesError::TooShort(20)));
        let mut b = good.clone();
        b[0] ^= 1;
        assert!(matches!(parse(&b, false), Err(LogWritesError::BadMagic(_))));
        let mut b = good.clone();
        b[8] = 2;
        assert_eq!(parse(&b, false), Err(LogWritesError::BadVersion(2)));
        for ss in [0u32, 16, 1000, 1 << 24] {
            let mut b = good.clone();
            b[24..28].copy_from_slice(&ss.to_le_bytes());
            assert_eq!(parse(&b, false), Err(LogWritesError::BadSectorSize(ss)));
        }
        let mut b = good.clone();
        b[4096 + 16] = 0x40;
        assert_eq!(
            parse(&b, false),
            Err(LogWritesError::BadFlags { entry: 0, flags: 0x40 })
        );
        let mut b = good.clone();
        b[4096 + 8..4096 + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(parse(&b, false), Err(LogWritesError::Truncated { .. })));
        let mut b = build(512, None, &[(0, 0, MARK, b"m".to_vec())]);
        b[512 + 24..512 + 32].copy_from_slice(&481u64.to_le_bytes());
        assert_eq!(parse(&b, false), Err(LogWritesError::BadMark { entry: 0, len: 481 }));
        // A huge count over a short file: an error after the entries there are.
        let mut b = good.clone();
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            parse(&b, false),
            Err(LogWritesError::Truncated { entry: 1, .. })
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x = 0x1234_5678_9abc_def1u64;
        let good = build(512, Some(9), &[(1, 1, 0, vec![5; 512]), (0, 0, FLUSH, vec![])]);
        for round in 0..3000 {
            let mut b = good.clone();
            for _ in 0..1 + round % 8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x % b.len() as u64) as usize;
                b[at] = (x >> 32) as u8;
            }
            b.truncate((x >> 40) as usize % (b.len() + 1));
            let _ = parse(&b, round % 2 == 0);
        }
    }
}
