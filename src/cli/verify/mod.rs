//! `ironvme verify`: write every block of a region with a self-describing stamp, flush,
//! read it all back, and report every block that is not what was written.
//!
//! # The block format
//!
//! Every logical block (512 B or more) is written as, little-endian:
//!
//! | bytes | content |
//! | --- | --- |
//! | 0..8 | magic `IRNVMVFY` |
//! | 8..16 | the LBA the block was written to |
//! | 16..24 | the pass number |
//! | 24..32 | the run's seed |
//! | 32..len-8 | a pattern from SplitMix64 seeded by (LBA, pass, seed) |
//! | len-8..len | xxh3-64 of bytes 0..len-8 |
//!
//! so a block read back says by itself what is wrong with it ([`Problem`]):
//!
//! - **zeros**: the whole block is zero: never written, or deallocated;
//! - **corrupt**: the checksum does not match: the data changed after it was written
//!   (the header is shown when it survived);
//! - **misdirected**: a valid block stamped with another LBA: a write landed in the
//!   wrong place (or a read read the wrong place);
//! - **stale**: a valid block for this LBA, but from an earlier pass or another run (a
//!   different seed): a write was lost and old data survived;
//! - **metadata**: the data is intact but the block's metadata is not (see below).
//!
//! # Metadata
//!
//! On a namespace whose blocks carry metadata (MS > 0 bytes per block, with or without
//! end-to-end protection information), every transfer carries its blocks' metadata too
//! ([`BlockQueue::submit_with_metadata`], on a queue from
//! [`Device::create_metadata_queue`]). Its buffer holds NLB × (LBADS + MS) bytes for NLB
//! blocks of LBADS data bytes: each block's data followed by its metadata for an
//! extended-LBA format, or the data of every block followed by the metadata of every
//! block for a separate one ([`MetadataFormat::ranges`]); `--bs` counts data bytes only.
//! Each block's MS metadata bytes are written as:
//!
//! - a pattern from SplitMix64 seeded by (LBA, pass, seed), unlike the data's pattern
//!   ([`stamp_metadata`]);
//! - with protection information (PI types 1 to 3), the 8-byte PI tuple in place of the
//!   first or last 8 bytes of the pattern, as the format says ([`pi::generate`]): the
//!   CRC-16 T10-DIF guard of the block's data (and of the metadata bytes before a
//!   trailing tuple), application tag 0, and as reference tag the low 32 bits of the
//!   LBA (types 1 and 2) or 0 (type 3).
//!
//! Every write and read asks the controller to check the PI on its way (PRCHK: the
//! guard, and the reference tag for types 1 and 2; [`Protection::checked`]). A block
//! whose PI fails there fails its whole command: an I/O error with NVMe status 0x282
//! (End-to-end Guard Check Error) or 0x284 (End-to-end Reference Tag Check Error), whose
//! blocks are not checked further. Read back, a block whose data is intact then has its
//! metadata checked ([`check_blocks`]): the bytes outside the PI tuple must be the
//! pattern, and the tuple must be exactly the one written (which also catches what
//! PRCHK leaves out: the application tag, and the reference tag of type 3). A
//! difference is a **metadata** problem naming the first differing byte or PI field
//! ([`Problem::Metadata`]). A block whose data is all zeros is **zeros** only when every
//! metadata byte is 0x00 or 0xFF, as in a deallocated or never-written block;
//! otherwise it is **corrupt**.
//!
//! Metadata is carried by ironvme's VFIO driver and by the NVMe ioctl and io_uring
//! passthrough (`URING_CMD`) backends. io_uring block I/O and psync go through the
//! kernel's block layer, which handles integrity itself: there the namespace shows no
//! metadata and verify checks data only.
//!
//! # Decisions
//!
//! - **Each pass writes a new pass number** (1, 2, …, or from `--pass`) and each run
//!   draws a new random seed (shown; fix it with `--seed`), so data left from an earlier
//!   pass or run is always told apart from what this one wrote.
//! - **Flush before reading back**: with a volatile write cache a completed write is not
//!   yet durable, and on the psync backend reads may otherwise come from the page cache.
//! - **`--read-only`** checks data an earlier run wrote without writing: `verify
//!   --passes 1`, power-cycle the machine (or pull the drive), then `verify --read-only
//!   --seed S --pass 1` with the same region finds every write the device acknowledged
//!   and then lost. The writing run prints that command line.
//! - **Every mismatch is reported**: each one in JSON (up to a million; the count is
//!   always exact), and in text as runs of consecutive blocks with the same problem.
//!   I/O errors are listed with their decoded status; their blocks are not checked.
//! - **Writes need consent** on devices: the rule of `perf` ([`super::io_shared::target`]).
//! - It uses only Read, Write and Flush, so it runs on every backend (Reset Zone too, on a
//!   zoned namespace: below); `--qd` I/Os of `--bs` data bytes stay outstanding (`wait`
//!   for completions: a verify is not a latency test).
//! - **On a zoned namespace** (found through the zoned Identify data, so with ironvme's
//!   driver or NVMe passthrough) the region must be whole zones. Each pass resets every
//!   zone of it (Reset Zone) and writes each zone from its start up to its capacity
//!   (ZCAP) with plain Writes, one in flight per zone (a Write must start at the write
//!   pointer, and two on one zone may reach it in either order), `--qd` zones at a time;
//!   the blocks past ZCAP, which cannot be written, are neither written nor read. Fewer
//!   zones are written at once when the controller's active and open zone limits (MAR,
//!   MOR), less the zones active outside the region, leave fewer; a write that fails ends
//!   its zone's writing (the write pointer stayed behind), and the read-back finds the
//!   rest. The read-back reads every zone up to its capacity, at `--qd`; `--read-only`
//!   reads every zone of the region whatever its state (an Offline zone's reads fail). A
//!   zoned block device through the kernel's block layer (uring, psync) is refused: it
//!   carries no zone reports nor resets.

mod engine;
mod report;
mod stamp;

pub use engine::{Findings, IoFailure, Mismatch, PassResult, Plan, verify, verify_with_progress};
pub use report::{Subject, human, json};
pub use stamp::{
    CHECKSUM_BYTES, HEADER_BYTES, MAGIC, MetadataFault, PiField, Problem, Stamp, check_block, check_blocks,
    stamp_block, stamp_blocks, stamp_metadata,
};

use super::io_shared::rng::{SplitMix64, mix64};
use super::io_shared::target;
use super::io_shared::units::{iec_exact, parse_nonzero_size, parse_size};
use super::io_shared::zones::{ZoneLayout, ZoneSpan};
use super::io_shared::{BACKEND_HELP, IO_DEV_HELP, region_bytes};
use super::progress::Progress;
use super::{CliError, parse_nsid, write_json};
use crate::block::{self, BlockError, BlockQueue, Completion, IoStatus, MetadataFormat, Op, Protection};
use crate::nvme::hw::DmaBuf;
use crate::nvme::pi;
use crate::{Backend, Device};
use clap::Args;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::io::Write;
use std::time::Instant;

/// The most mismatches kept for listing; more are counted only.
pub const MAX_LISTED: usize = 1 << 20;
/// The most I/O errors kept for listing.
pub const MAX_ERRORS_LISTED: usize = 1000;

/// Arguments of `verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The device.
    #[arg(value_name = "DEV", help = IO_DEV_HELP)]
    pub dev: String,
    /// Bytes to verify (a multiple of the logical block size). Default: 64 MiB, or up to
    /// the end of the namespace if that is less.
    #[arg(long, value_name = "BYTES", value_parser = parse_nonzero_size)]
    pub size: Option<u64>,
    /// Byte offset of the region (a multiple of the logical block size).
    #[arg(long, value_name = "BYTES", default_value = "0", value_parser = parse_size)]
    pub offset: u64,
    /// Write-flush-read passes, each with its own pass number.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub passes: u64,
    /// Pass number of the first pass; with --read-only, the pass the data must be from.
    #[arg(long, value_name = "P", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub pass: u64,
    /// Data bytes per transfer (a multiple of the logical block size; clamped to the
    /// largest transfer of one command). The blocks' metadata, if any, comes on top.
    #[arg(long, value_name = "SIZE", default_value = "128k", value_parser = parse_nonzero_size)]
    pub bs: u64,
    /// Transfers kept outstanding.
    #[arg(long, alias = "iodepth", value_name = "N", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub qd: u32,
    /// The run's seed, stamped in every block (default: a fresh random one, printed).
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Check data an earlier run wrote, without writing: needs that run's --seed, and
    /// --pass (its last pass), --offset and --size.
    #[arg(long, requires = "seed", conflicts_with_all = ["passes", "allow_write"])]
    pub read_only: bool,
    /// The backend.
    #[arg(long, value_name = "B", help = BACKEND_HELP)]
    pub backend: Option<Backend>,
    /// Namespace ID (decimal or 0x hex). Default: the device's first namespace.
    #[arg(long, short = 'n', value_name = "N", value_parser = parse_nsid)]
    pub nsid: Option<u32>,
    /// Allow writing to a device (it destroys the data in the region). Regular files need
    /// no confirmation.
    #[arg(long)]
    pub allow_write: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `ironvme verify`.
///
/// Shows a progress bar on stderr when it is a terminal ([`Progress`]).
///
/// Errors: [`CliError::Refused`] for a write without consent; [`CliError::Invalid`] for
/// arguments the device cannot take; after the report, [`CliError::Failed`] when an I/O
/// failed (mismatches or not) and [`CliError::Mismatch`] when only blocks mismatched
/// ([`outcome`]).
pub fn run(a: &VerifyArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let writes = (!a.read_only).then_some("verify");
    let dev = target::open(&a.dev, a.backend, writes, a.allow_write)?;
    let ns = dev.device.namespace(a.nsid)?;
    let plan = Plan::new(a, &ns)?;
    let plan = match ZoneLayout::probe(&dev.device, &dev.name, ns.nsid)? {
        Some(layout) => plan.on_zones(&layout)?,
        // Its read-back too: it would read the blocks past each zone's capacity.
        None => {
            ZoneLayout::refuse_kernel_zoned(&dev.device, &dev.name, "verify")?;
            plan
        }
    };
    let progress = Progress::bytes(Some(plan.transfer_bytes()));
    let findings = verify_with_progress(&dev.device, &plan, &progress)?;
    progress.finish();
    let mut recheck = format!(
        " --offset {} --size {}",
        plan.first_lba * u64::from(plan.block_size),
        plan.blocks * u64::from(plan.block_size)
    );
    if let Some(n) = a.nsid {
        recheck += &format!(" --nsid {n}");
    }
    if let Some(b) = a.backend {
        recheck += &format!(" --backend {b}");
    }
    let subject = Subject {
        device: dev.name.clone(),
        backend: dev.device.backend().to_string(),
        recheck_args: recheck,
    };
    if a.json {
        write_json(out, &json(&subject, &plan, &findings))?;
    } else {
        write!(out, "{}", human(&subject, &plan, &findings))?;
    }
    out.flush()?;
    outcome(&dev.name, &findings)
}

/// What a run's findings on `device` make of the command: success when nothing went
/// wrong; [`CliError::Failed`] (exit 1) when an I/O failed or the run stopped early,
/// whatever else it found (the check was incomplete); [`CliError::Mismatch`] (exit 3)
/// when the only problem is mismatched blocks.
pub fn outcome(device: &str, findings: &Findings) -> Result<(), CliError> {
    if findings.ok() {
        return Ok(());
    }
    let message = format!(
        "verify on {device}: {} mismatched blocks, {} I/O errors{}",
        findings.mismatch_count,
        findings.error_count,
        findings
            .fatal
            .as_ref()
            .map_or(String::new(), |w| format!("; stopped early: {w}"))
    );
    if findings.error_count == 0 && findings.fatal.is_none() {
        Err(CliError::Mismatch(message))
    } else {
        Err(CliError::Failed(message))
    }
}

#[cfg(test)]
mod tests {
    use super::report::runs;
    use super::*;
    use crate::nvme::block::GeometrySource;
    use clap::Parser;

    const S: Stamp = Stamp {
        lba: 1234,
        pass: 3,
        seed: 0xfeed,
    };

    fn block(size: usize, stamp: Stamp) -> Vec<u8> {
        let mut b = vec![0u8; size];
        stamp_block(&mut b, stamp);
        b
    }

    #[test]
    fn a_stamped_block_checks_out_and_says_what_it_is() {
        for size in [512, 4096] {
            let b = block(size, S);
            assert_eq!(check_block(&b, S), Ok(()));
            assert_eq!(&b[0..8], b"IRNVMVFY");
            assert_eq!(u64::from_le_bytes(b[8..16].try_into().unwrap()), 1234);
            assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 3);
            assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), 0xfeed);
            let sum = xxhash_rust::xxh3::xxh3_64(&b[..size - 8]);
            assert_eq!(u64::from_le_bytes(b[size - 8..].try_into().unwrap()), sum);
        }
        // The pattern differs with each of LBA, pass and seed.
        let base = block(512, S);
        for other in [Stamp { lba: 1235, ..S }, Stamp { pass: 4, ..S }, Stamp { seed: 1, ..S }] {
            assert_ne!(block(512, other)[32..504], base[32..504], "{other:?}");
        }
    }

    #[test]
    fn every_kind_of_damage_is_told_apart() {
        // A flipped bit anywhere: corruption, header shown while it survives.
        for at in [0, 9, 40, 300, 511] {
            let mut b = block(512, S);
            b[at] ^= 0x10;
            let header = if at < 8 {
                None
            } else if at < 32 {
                Some(Stamp {
                    lba: 1234 ^ (0x10 << 8),
                    ..S
                })
            } else {
                Some(S)
            };
            let e = check_block(&b, S).unwrap_err();
            assert_eq!(e.kind(), "corrupt", "byte {at}");
            assert_eq!(e, Problem::Corrupt { header }, "byte {at}");
        }
        // All zeros: never written or deallocated.
        assert_eq!(check_block(&[0u8; 512], S), Err(Problem::Zeros));
        // Foreign data.
        assert_eq!(check_block(&[0xa5u8; 512], S), Err(Problem::Corrupt { header: None }));
        // Another LBA's block: misdirected.
        let other = Stamp { lba: 99, ..S };
        assert_eq!(
            check_block(&block(512, other), S),
            Err(Problem::Misdirected { found: other })
        );
        // An earlier pass, or another run: stale (a lost write).
        let old = Stamp { pass: 2, ..S };
        assert_eq!(check_block(&block(512, old), S), Err(Problem::Stale { found: old }));
        let run = Stamp { seed: 7, ..S };
        assert_eq!(check_block(&block(512, run), S), Err(Problem::Stale { found: run }));
    }

    #[test]
    fn problems_describe_themselves() {
        let d = |p: Problem| p.describe(S, 1);
        assert_eq!(d(Problem::Zeros), "never written or deallocated: all zeros");
        assert!(d(Problem::Corrupt { header: Some(S) }).contains("checksum mismatch (header intact: LBA 1234, pass 3"));
        assert!(d(Problem::Corrupt { header: None }).contains("no verify header"));
        let mis = Problem::Misdirected {
            found: Stamp { lba: 99, ..S },
        };
        assert!(d(mis).starts_with("misdirected write: holds the data written for LBA 99 (pass 3"));
        assert_eq!(
            mis.describe(S, 3),
            "misdirected write: holds the data written for LBA 99-101 (pass 3, seed 65261)"
        );
        assert_eq!(
            d(Problem::Stale {
                found: Stamp { pass: 2, ..S }
            }),
            "lost write: holds pass 2's data, not pass 3's"
        );
        assert!(
            d(Problem::Stale {
                found: Stamp { seed: 7, ..S }
            })
            .contains("another run's data (seed 7, pass 3)")
        );
    }

    /// Extended and separate layouts, PI types 0, 1 and 3, the tuple first and last.
    const FORMATS: [(u16, u8, u8); 6] = [
        (8, 0x10, 1),
        (16, 0, 3 | 8),
        (16, 0x10, 0),
        (64, 0, 1),
        (8, 0, 0),
        (16, 0x10, 3),
    ];

    /// `blocks` 512-byte blocks with their metadata, stamped from `S`.
    fn stamped(fmt: &MetadataFormat, blocks: usize) -> Vec<u8> {
        let mut b = vec![0u8; blocks * fmt.bytes_per_block(512)];
        stamp_blocks(&mut b, fmt, 512, blocks, S);
        b
    }

    fn problems(buf: &[u8], fmt: &MetadataFormat, blocks: usize) -> Vec<(usize, Problem)> {
        let mut out = Vec::new();
        check_blocks(buf, fmt, 512, blocks, S, |i, p| out.push((i, p)));
        out
    }

    #[test]
    fn stamped_metadata_checks_out_in_every_layout() {
        for (ms, flbas, dps) in FORMATS {
            let fmt = MetadataFormat::from_identify(ms, flbas, dps);
            let b = stamped(&fmt, 4);
            assert_eq!(problems(&b, &fmt, 4), [], "{fmt}");
            // The controller's check agrees (what PRCHK does on the way).
            pi::check(&fmt, 512, &b, 4, &Protection::checked(&fmt, S.lba)).unwrap();
            for i in 0..4 {
                let (data, md) = fmt.ranges(512, 4, i);
                let stamp = Stamp {
                    lba: S.lba + i as u64,
                    ..S
                };
                assert_eq!(check_block(&b[data.clone()], stamp), Ok(()), "{fmt}: block {i}");
                let mut pattern = vec![0u8; ms as usize];
                stamp_metadata(&mut pattern, stamp);
                let tuple = fmt.pi_offset().map_or(0..0, |at| at..at + 8);
                for (j, (&got, &want)) in b[md.clone()].iter().zip(&pattern).enumerate() {
                    if !tuple.contains(&j) {
                        assert_eq!(got, want, "{fmt}: block {i} metadata byte {j}");
                    }
                }
                if let Some(at) = fmt.pi_offset() {
                    let t = pi::PiTuple::from_bytes(b[md.start + at..md.start + at + 8].try_into().unwrap());
                    let ref_tag = if fmt.pi_type == 3 { 0 } else { 1234 + i as u32 };
                    assert_eq!((t.app_tag, t.ref_tag), (0, ref_tag), "{fmt}: block {i}");
                    let before = if at == 0 { &[][..] } else { &b[md.start..md.start + at] };
                    assert_eq!(t.guard, pi::guard(&b[data], before), "{fmt}: block {i}");
                }
            }
        }
        // Without metadata, blocks are stamped exactly as one by one.
        let b = stamped(&MetadataFormat::NONE, 3);
        for (i, got) in b.chunks(512).enumerate() {
            assert_eq!(
                got,
                block(
                    512,
                    Stamp {
                        lba: S.lba + i as u64,
                        ..S
                    }
                ),
                "block {i}"
            );
        }
        // The metadata's pattern is not the data's, and differs with LBA, pass and seed.
        let md = |stamp| {
            let mut m = [0u8; 64];
            stamp_metadata(&mut m, stamp);
            m
        };
        assert_ne!(md(S)[..], block(512, S)[32..96]);
        for other in [Stamp { lba: 1235, ..S }, Stamp { pass: 4, ..S }, Stamp { seed: 1, ..S }] {
            assert_ne!(md(other), md(S), "{other:?}");
        }
    }

    #[test]
    fn each_metadata_damage_has_its_problem() {
        for (ms, flbas, dps) in FORMATS {
            let fmt = MetadataFormat::from_identify(ms, flbas, dps);
            let b = stamped(&fmt, 4);
            let (data, md) = fmt.ranges(512, 4, 2);
            let s2 = Stamp { lba: 1236, ..S };
            let flipped = |at: usize, bit: u8| {
                let mut bad = b.clone();
                bad[at] ^= bit;
                problems(&bad, &fmt, 4)
            };
            // A flipped data byte: corruption (whatever the metadata says).
            assert_eq!(
                flipped(data.start + 100, 4),
                [(2, Problem::Corrupt { header: Some(s2) })],
                "{fmt}"
            );
            // A flipped pattern byte outside the tuple: where and what.
            let tuple = fmt.pi_offset().map_or(0..0, |at| at..at + 8);
            if let Some(j) = (0..ms as usize).find(|j| !tuple.contains(j)) {
                let was = b[md.start + j];
                assert_eq!(
                    flipped(md.start + j, 0x40),
                    [(
                        2,
                        Problem::Metadata {
                            fault: MetadataFault::Pattern {
                                offset: j as u16,
                                found: was ^ 0x40,
                                expected: was,
                                differing: 1
                            }
                        }
                    )],
                    "{fmt}"
                );
            }
            let Some(at) = fmt.pi_offset() else { continue };
            let t = pi::PiTuple::from_bytes(b[md.start + at..md.start + at + 8].try_into().unwrap());
            let pi = |field, found, expected| {
                vec![(
                    2,
                    Problem::Metadata {
                        fault: MetadataFault::Pi { field, found, expected },
                    },
                )]
            };
            // A flipped byte of each field of the tuple: that field, found and written.
            let g = u32::from(t.guard);
            assert_eq!(flipped(md.start + at + 1, 1), pi(PiField::Guard, g ^ 1, g), "{fmt}");
            assert_eq!(
                flipped(md.start + at + 2, 0x80),
                pi(PiField::AppTag, 0x8000, 0),
                "{fmt}"
            );
            assert_eq!(
                flipped(md.start + at + 4, 0x10),
                pi(PiField::RefTag, t.ref_tag ^ 0x1000_0000, t.ref_tag),
                "{fmt}"
            );
            // An escaped tuple (application tag 0xFFFF) passes a controller's check, but
            // verify never writes one.
            let mut esc = b.clone();
            esc[md.start + at + 2..md.start + at + 4].copy_from_slice(&[0xFF, 0xFF]);
            pi::check(&fmt, 512, &esc, 4, &Protection::checked(&fmt, S.lba)).unwrap();
            assert_eq!(problems(&esc, &fmt, 4), pi(PiField::AppTag, 0xFFFF, 0), "{fmt}");
        }
    }

    #[test]
    fn zeroed_blocks_are_zeros_only_with_blank_metadata() {
        for (ms, flbas, dps) in FORMATS {
            let fmt = MetadataFormat::from_identify(ms, flbas, dps);
            let blank = vec![0u8; 2 * fmt.bytes_per_block(512)];
            assert_eq!(problems(&blank, &fmt, 2), [(0, Problem::Zeros), (1, Problem::Zeros)]);
            // Metadata of 0xFF (a deallocated block's PI) still reads as never written.
            let mut ff = blank.clone();
            for i in 0..2 {
                let (_, md) = fmt.ranges(512, 2, i);
                ff[md].fill(0xFF);
            }
            assert_eq!(problems(&ff, &fmt, 2), [(0, Problem::Zeros), (1, Problem::Zeros)]);
            // Zeroed data under metadata that was written: not a blank block.
            let mut b = stamped(&fmt, 2);
            let (data, _) = fmt.ranges(512, 2, 1);
            b[data].fill(0);
            assert_eq!(problems(&b, &fmt, 2), [(1, Problem::Corrupt { header: None })], "{fmt}");
        }
    }

    #[test]
    fn metadata_problems_describe_themselves() {
        let pattern = |offset, differing| Problem::Metadata {
            fault: MetadataFault::Pattern {
                offset,
                found: 0x12,
                expected: 0xab,
                differing,
            },
        };
        assert_eq!(
            pattern(3, 1).describe(S, 1),
            "metadata damaged, data intact: metadata byte 3 is 0x12, not 0xab"
        );
        assert_eq!(
            pattern(3, 5).describe(S, 1),
            "metadata damaged, data intact: metadata byte 3 is 0x12, not 0xab (5 bytes differ)"
        );
        assert_eq!(
            pattern(3, 5).describe(S, 4),
            "metadata damaged, data intact: from metadata byte 3"
        );
        let pi = |field, found, expected| Problem::Metadata {
            fault: MetadataFault::Pi { field, found, expected },
        };
        assert_eq!(
            pi(PiField::Guard, 0x1234, 0xbeef).describe(S, 1),
            "bad protection information, data intact: PI guard 0x1234, expected 0xbeef"
        );
        assert_eq!(
            pi(PiField::RefTag, 7, 1234).describe(S, 1),
            "bad protection information, data intact: PI reference tag 0x00000007, expected 0x000004d2"
        );
        assert_eq!(
            pi(PiField::AppTag, 1, 0).describe(S, 2),
            "bad protection information, data intact: PI application tag differs"
        );
        assert_eq!(pi(PiField::AppTag, 1, 0).kind(), "metadata");
        // Runs: the same first byte, or the same PI field.
        let m = |lba, problem| Mismatch { lba, pass: 1, problem };
        let list = [
            m(1, pattern(3, 1)),
            m(2, pattern(3, 2)),
            m(3, pattern(4, 1)),
            m(4, pi(PiField::Guard, 1, 2)),
            m(5, pi(PiField::Guard, 3, 4)),
            m(6, pi(PiField::RefTag, 3, 4)),
        ];
        let r: Vec<(u64, u64)> = runs(&list).iter().map(|(m, n)| (m.lba, *n)).collect();
        assert_eq!(r, [(1, 2), (3, 1), (4, 2), (6, 1)]);
    }

    #[test]
    fn consecutive_mismatches_are_listed_as_runs() {
        let m = |lba, pass, problem| Mismatch { lba, pass, problem };
        let mis = |lba| Problem::Misdirected {
            found: Stamp { lba, ..S },
        };
        let list = [
            m(10, 1, Problem::Zeros),
            m(11, 1, Problem::Zeros),
            m(12, 1, Problem::Zeros),
            m(13, 1, Problem::Corrupt { header: None }),
            m(20, 1, mis(50)),
            m(21, 1, mis(51)),
            m(22, 1, mis(70)),
            m(10, 2, Problem::Zeros),
        ];
        let r: Vec<(u64, u64, u64)> = runs(&list).iter().map(|(m, n)| (m.pass, m.lba, *n)).collect();
        assert_eq!(r, [(1, 10, 3), (1, 13, 1), (1, 20, 2), (1, 22, 1), (2, 10, 1)]);
    }

    fn ns(block_size: u32, blocks: u64) -> block::NamespaceInfo {
        block::NamespaceInfo {
            nsid: 1,
            block_size,
            blocks,
            max_transfer_bytes: 64 * 1024,
            buffer_alignment: 4,
            write_zeroes: false,
            deallocate: false,
            deallocate_zeroes: false,
            compare: false,
            verify: false,
            volatile_write_cache: true,
            zone_commands: false,
            metadata: crate::nvme::block::MetadataFormat::NONE,
            source: GeometrySource::Identify,
        }
    }

    fn args(extra: &[&str]) -> VerifyArgs {
        let cli = crate::cli::Cli::try_parse_from(["ironvme", "verify", "disk.img"].iter().chain(extra)).unwrap();
        match cli.command {
            crate::cli::Command::Verify(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plans() {
        let p = Plan::new(&args(&[]), &ns(4096, 1 << 20)).unwrap();
        // 64 MiB by default; 128 KiB clamped to the 64 KiB transfer limit.
        assert_eq!(
            (p.first_lba, p.blocks, p.lbas_per_io, p.qd, p.passes),
            (0, 16384, 16, 32, 1)
        );
        assert!(p.seed > 0);
        let p = Plan::new(&args(&["--offset", "1m"]), &ns(512, 4096)).unwrap();
        assert_eq!(
            (p.first_lba, p.blocks),
            (2048, 2048),
            "smaller namespace: up to its end"
        );
        assert_eq!(
            (p.metadata, p.with_metadata(), p.buffer_bytes()),
            (MetadataFormat::NONE, false, 65536)
        );
        // With metadata: the format recorded, --bs in data bytes up to the transfer limit,
        // each transfer's buffer holding the blocks' metadata too.
        let fmt = MetadataFormat::from_identify(16, 0, 1);
        let p = Plan::new(
            &args(&[]),
            &block::NamespaceInfo {
                metadata: fmt,
                ..ns(4096, 1 << 20)
            },
        )
        .unwrap();
        assert_eq!((p.metadata, p.lbas_per_io, p.bs()), (fmt, 16, 65536));
        assert_eq!(p.buffer_bytes(), 16 * (4096 + 16));
        // PI without metadata bytes is no format to carry.
        let odd = MetadataFormat::from_identify(0, 0, 1);
        let p = Plan::new(
            &args(&[]),
            &block::NamespaceInfo {
                metadata: odd,
                ..ns(4096, 1 << 20)
            },
        )
        .unwrap();
        assert!(!p.with_metadata());
        assert_eq!(p.metadata, MetadataFormat::NONE);
        let p = Plan::new(&args(&["--read-only", "--seed", "5", "--pass", "7"]), &ns(512, 4096)).unwrap();
        assert_eq!((p.seed, p.first_pass, p.passes, p.read_only), (5, 7, 1, true));
        let err = |a: &[&str]| Plan::new(&args(a), &ns(4096, 1024)).unwrap_err().to_string();
        assert!(err(&["--size", "6k"]).contains("--size 6144 is not a multiple"));
        assert!(err(&["--bs", "6k"]).contains("--bs 6144 is not a multiple"));
        assert!(err(&["--size", "8m"]).contains("beyond the end"));
        for bad in [
            &["--read-only"][..],
            &["--read-only", "--seed", "1", "--passes", "2"],
            &["--passes", "0"],
        ] {
            let all = ["ironvme", "verify", "disk.img"].iter().chain(bad);
            assert_eq!(
                crate::cli::Cli::try_parse_from(all).unwrap_err().exit_code(),
                crate::cli::EXIT_USAGE,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reports() {
        let plan = Plan::new(&args(&["--seed", "42", "--size", "16k"]), &ns(4096, 1024)).unwrap();
        let subject = Subject {
            device: "disk.img".into(),
            backend: "psync".into(),
            recheck_args: " --size 16384".into(),
        };
        let mut f = Findings::default();
        f.passes.push(PassResult {
            pass: 1,
            write_s: Some(0.5),
            read_s: 0.25,
            mismatches: 0,
            errors: 0,
        });
        let text = human(&subject, &plan, &f);
        assert!(
            text.starts_with("verify: dev=disk.img backend=psync nsid=1 region=0B+16KiB (4 blocks of 4096 B)"),
            "{text}"
        );
        assert!(text.contains("OK: 4 blocks intact after 1 pass"), "{text}");
        assert!(
            text.contains("ironvme verify disk.img --read-only --seed 42 --pass 1 --size 16384"),
            "{text}"
        );
        let v = json(&subject, &plan, &f);
        assert_eq!(
            (v["ok"].as_bool(), v["blocks"].as_u64(), v["passes"].as_u64()),
            (Some(true), Some(4), Some(1))
        );
        assert_eq!(v["mismatches"], json!([]));
        assert_eq!(v["errors"], json!([]));

        f.mismatch(Mismatch {
            lba: 2,
            pass: 1,
            problem: Problem::Stale {
                found: Stamp {
                    lba: 2,
                    pass: 1,
                    seed: 9,
                },
            },
        });
        f.failed(IoFailure {
            pass: 1,
            op: "read",
            lba: 0,
            blocks: 1,
            status: IoStatus::Os(libc::EIO),
        });
        let text = human(&subject, &plan, &f);
        assert!(
            text.contains("  pass 1: LBA 2: lost write: holds another run's data (seed 9, pass 1)"),
            "{text}"
        );
        assert!(
            text.contains("  pass 1: read of LBA 0+1 blocks: Input/output error"),
            "{text}"
        );
        assert!(text.contains("FAILED: 1 mismatched blocks, 1 I/O errors"), "{text}");
        let v = json(&subject, &plan, &f);
        assert_eq!(v["ok"], false);
        assert_eq!(
            v["mismatches"][0],
            json!({"lba": 2, "pass": 1, "kind": "stale", "problem": "lost write: holds another run's data (seed 9, pass 1), not this run's (seed 42, pass 1)", "found_lba": 2, "found_pass": 1, "found_seed": 9})
        );
        assert_eq!(v["errors"][0]["status"], "Input/output error (os error 5)");
    }

    #[test]
    fn mismatches_alone_exit_3_and_an_io_error_wins() {
        use crate::cli::{EXIT_FAILURE, EXIT_MISMATCH};
        let mismatch = Mismatch {
            lba: 7,
            pass: 1,
            problem: Problem::Zeros,
        };
        let io = IoFailure {
            pass: 1,
            op: "read",
            lba: 0,
            blocks: 1,
            status: IoStatus::Os(libc::EIO),
        };
        assert!(outcome("d", &Findings::default()).is_ok());
        let mut f = Findings::default();
        f.mismatch(mismatch);
        let e = outcome("d", &f).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_MISMATCH, "{e}");
        assert_eq!(e.to_string(), "verify on d: 1 mismatched blocks, 0 I/O errors");
        f.failed(io.clone());
        assert_eq!(outcome("d", &f).unwrap_err().exit_code(), EXIT_FAILURE);
        let mut f = Findings::default();
        f.failed(io);
        assert_eq!(outcome("d", &f).unwrap_err().exit_code(), EXIT_FAILURE);
        let mut f = Findings::default();
        f.mismatch(mismatch);
        f.fatal = Some("ring: gone".into());
        let e = outcome("d", &f).unwrap_err();
        assert_eq!(e.exit_code(), EXIT_FAILURE);
        assert!(e.to_string().ends_with("; stopped early: ring: gone"), "{e}");
    }

    /// verify on the simulated controller, and what it finds after blocks are damaged
    /// behind its back.
    #[cfg(feature = "sim")]
    #[test]
    fn on_the_simulated_controller() {
        use crate::nvme::sim::{SimConfig, SimController, SimNamespace};
        let sim = SimController::new(SimConfig {
            namespaces: vec![SimNamespace::new(512, 8192)],
            ..SimConfig::default()
        });
        let device = Device::simulated(sim, Default::default()).unwrap();
        let ns = device.namespace(None).unwrap();
        let plan = Plan::new(
            &args(&[
                "--size", "1m", "--passes", "2", "--qd", "4", "--bs", "8k", "--seed", "11",
            ]),
            &ns,
        )
        .unwrap();
        let f = verify(&device, &plan).unwrap();
        assert!(f.ok(), "{f:?}");
        assert_eq!(f.passes.iter().map(|p| p.pass).collect::<Vec<_>>(), [1, 2]);

        // Damage LBA 100 (zeros), then check read-only: one mismatch of pass 2.
        let mut q = device.create_queue(None, 1).unwrap();
        let zero = device.dma().allocate(512).unwrap();
        block::run_one(&mut q, Op::Write { lba: 100, fua: false }, Some(zero)).unwrap();
        drop(q);
        let ro = Plan::new(
            &args(&["--size", "1m", "--read-only", "--seed", "11", "--pass", "2"]),
            &ns,
        )
        .unwrap();
        let f = verify(&device, &ro).unwrap();
        assert_eq!(
            f.mismatches,
            [Mismatch {
                lba: 100,
                pass: 2,
                problem: Problem::Zeros
            }]
        );
        // A read-only check for pass 1 finds every block stale.
        let ro1 = Plan::new(
            &args(&["--size", "1m", "--read-only", "--seed", "11", "--pass", "1"]),
            &ns,
        )
        .unwrap();
        let f = verify(&device, &ro1).unwrap();
        assert_eq!(f.mismatch_count, 2048);
        assert!(matches!(
            f.mismatches[0].problem,
            Problem::Stale {
                found: Stamp { pass: 2, .. }
            }
        ));
    }
}
