//! Metadata and end-to-end protection information (PI): how a namespace's blocks carry
//! metadata, the per-command protection fields, and the 8-byte PI tuple with its T10-DIF
//! guard, computed and checked on the host.
//!
//! Sources: NVM Command Set Specification 1.0 §5.2.3 (end-to-end data protection and its
//! 16-bit guard protection information format) and §4.1.5.1 (Identify Namespace FLBAS,
//! DPS); Linux's `include/linux/t10-pi.h` (`struct t10_pi_tuple`); QEMU's
//! `hw/nvme/dif.c`, whose checks this module mirrors. Only the 16-bit guard format is
//! handled: the 64-bit guard (PIF 2h, a 16-byte tuple, NVM Command Set 1.0's Extended LBA
//! Formats) is not read from the device.

use std::fmt;

/// Bytes of one 16-bit-guard PI tuple: guard (2), application tag (2), reference tag (4),
/// all big-endian (`struct t10_pi_tuple`).
pub const PI_TUPLE_BYTES: usize = 8;

/// How a namespace's logical blocks carry metadata: the current LBA format's MS, FLBAS
/// bit 4 and DPS (Identify Namespace, NVM Command Set 1.0 §4.1.5.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct MetadataFormat {
    /// Metadata bytes per logical block (LBAF.MS); 0 for none.
    pub bytes: u16,
    /// The metadata sits at the end of each block in the data buffer (extended LBA,
    /// FLBAS bit 4); otherwise it is transferred in a separate buffer (MPTR).
    pub extended: bool,
    /// Protection information type (DPS bits 2:0): 0 for none, 1, 2 or 3.
    pub pi_type: u8,
    /// The PI tuple is the first 8 bytes of the metadata (DPS bit 3); otherwise the last 8.
    pub pi_first: bool,
}

impl MetadataFormat {
    /// No metadata, no protection information.
    pub const NONE: MetadataFormat = MetadataFormat {
        bytes: 0,
        extended: false,
        pi_type: 0,
        pi_first: false,
    };

    /// From Identify Namespace's MS (current LBA format), FLBAS and DPS bytes.
    pub fn from_identify(ms: u16, flbas: u8, dps: u8) -> MetadataFormat {
        MetadataFormat {
            bytes: ms,
            extended: ms != 0 && flbas & (1 << 4) != 0,
            pi_type: dps & 0x7,
            pi_first: dps & (1 << 3) != 0,
        }
    }

    /// Whether the blocks carry metadata or protection information at all.
    pub fn is_none(&self) -> bool {
        self.bytes == 0 && self.pi_type == 0
    }

    /// Whether I/O without a metadata buffer works: no metadata at all, or protection
    /// information that is the whole metadata (MS = 8), which the controller inserts on
    /// writes and strips on reads when the command sets PRACT (as Linux does for a
    /// namespace whose integrity the block layer does not handle).
    pub fn plain_io(&self) -> bool {
        match self.pi_type {
            0 => self.bytes == 0,
            1..=3 => self.bytes as usize == PI_TUPLE_BYTES,
            _ => false,
        }
    }

    /// Whether ironvme can carry this format's metadata: a PI type of 0 to 3 (4 to 7 are
    /// reserved) with room for the tuple when PI is on.
    pub fn supported(&self) -> bool {
        match self.pi_type {
            0 => true,
            1..=3 => self.bytes as usize >= PI_TUPLE_BYTES,
            _ => false,
        }
    }

    /// Bytes the data pointer covers in a buffer of `blocks` blocks that carries
    /// metadata: all of it for extended LBAs, else the data before the separate metadata
    /// (NLB × LBADS; MPTR points after it).
    pub fn data_bytes(&self, block_size: u32, blocks: usize) -> usize {
        if self.extended {
            blocks * self.bytes_per_block(block_size)
        } else {
            blocks * block_size as usize
        }
    }

    /// Byte offset of the PI tuple inside one block's metadata, `None` without PI (or
    /// with metadata too small for a tuple).
    pub fn pi_offset(&self) -> Option<usize> {
        let ms = self.bytes as usize;
        if self.pi_type == 0 || ms < PI_TUPLE_BYTES {
            return None;
        }
        Some(if self.pi_first { 0 } else { ms - PI_TUPLE_BYTES })
    }

    /// Bytes one block takes in a buffer that carries metadata: LBADS + MS, the data
    /// and the metadata in either layout.
    pub fn bytes_per_block(&self, block_size: u32) -> usize {
        block_size as usize + self.bytes as usize
    }

    /// Block `i`'s data and metadata byte ranges inside a buffer of `blocks` blocks that
    /// carries metadata: interleaved (extended LBA) or data first, then the metadata of
    /// every block (separate metadata, MPTR pointing after the data).
    pub fn ranges(&self, block_size: u32, blocks: usize, i: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (bs, ms) = (block_size as usize, self.bytes as usize);
        if self.extended {
            let at = i * (bs + ms);
            (at..at + bs, at + bs..at + bs + ms)
        } else {
            let md = blocks * bs + i * ms;
            (i * bs..i * bs + bs, md..md + ms)
        }
    }
}

impl fmt::Display for MetadataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.bytes == 0 {
            write!(f, "no metadata")?;
        } else if self.extended {
            write!(
                f,
                "{} bytes of metadata at the end of each block (extended LBA)",
                self.bytes
            )?;
        } else {
            write!(f, "{} bytes of metadata per block in a separate buffer", self.bytes)?;
        }
        match self.pi_type {
            0 => write!(f, ", no protection information"),
            t => write!(
                f,
                ", protection information type {t} in its {} 8 bytes",
                if self.pi_first { "first" } else { "last" }
            ),
        }
    }
}

/// The end-to-end protection fields of one Read, Write, Compare, Verify or Write Zeroes
/// (NVM Command Set 1.0 §5.2.3; [`crate::cmd::Command::set_protection`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Protection {
    /// PRACT: the controller inserts PI on writes and strips it on reads. When MS is 8 no
    /// metadata is transferred at all, so such a command goes through plain I/O, never
    /// with a metadata buffer; otherwise the controller fills (or checks) the PI in the
    /// metadata the host transfers.
    pub pract: bool,
    /// PRCHK bit 2: check the guard (CRC-16 T10-DIF of the block).
    pub check_guard: bool,
    /// PRCHK bit 1: check the application tag under [`Self::app_mask`].
    pub check_app_tag: bool,
    /// PRCHK bit 0: check the reference tag (types 1 and 2).
    pub check_ref_tag: bool,
    /// EILBRT (CDW14): the expected reference tag of the first block; the controller adds
    /// one per block for types 1 and 2. Type 1 needs the low 32 bits of the LBA.
    pub ref_tag: u32,
    /// ELBAT (CDW15 bits 15:0): the expected application tag.
    pub app_tag: u16,
    /// ELBATM (CDW15 bits 31:16): which application tag bits are checked.
    pub app_mask: u16,
}

impl Protection {
    /// What a command at `lba` on a namespace of format `fmt` sets when the host supplies
    /// no PI and the controller generates and checks it (Linux's `nvme_setup_rw` without
    /// block-layer integrity): PRACT, the guard check, and for types 1 and 2 the reference
    /// tag check against the low 32 bits of the LBA. Nothing without PI.
    pub fn by_controller(fmt: &MetadataFormat, lba: u64) -> Protection {
        if fmt.pi_type == 0 {
            return Protection::default();
        }
        Protection {
            pract: true,
            ..Protection::checked(fmt, lba)
        }
    }

    /// What a command at `lba` sets when the host supplies the PI in the metadata (as
    /// [`generate`] writes it) and the controller checks it: the guard, and for types 1
    /// and 2 the reference tag (the low 32 bits of the LBA). Nothing without PI.
    pub fn checked(fmt: &MetadataFormat, lba: u64) -> Protection {
        if fmt.pi_type == 0 {
            return Protection::default();
        }
        Protection {
            pract: false,
            check_guard: true,
            check_app_tag: false,
            check_ref_tag: fmt.pi_type != 3,
            ref_tag: initial_ref_tag(fmt, lba),
            app_tag: 0,
            app_mask: 0,
        }
    }
}

/// The reference tag of the first block of a command at `lba`, as Linux's
/// `t10_pi_ref_tag` gives it: the LBA's low 32 bits for types 1 and 2 (type 1 requires
/// it), 0 for type 3, whose reference tag is the application's and not checked.
pub fn initial_ref_tag(fmt: &MetadataFormat, lba: u64) -> u32 {
    if fmt.pi_type == 3 { 0 } else { lba as u32 }
}

const T10_DIF: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_T10_DIF);

/// The 16-bit guard of one block: CRC-16 T10-DIF (polynomial 0x8BB7, initial value 0,
/// not reflected) over the block's data, then over the metadata bytes before the PI tuple
/// when the tuple is last in larger metadata — as QEMU's `pract_generate_dif_crc16` and
/// `nvme_dif_prchk_crc16` compute it.
pub fn guard(data: &[u8], md_before_pi: &[u8]) -> u16 {
    let mut d = T10_DIF.digest();
    d.update(data);
    d.update(md_before_pi);
    d.finalize()
}

/// One PI tuple (`struct t10_pi_tuple`): all fields big-endian on the medium.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PiTuple {
    /// CRC-16 T10-DIF guard ([`guard`]).
    pub guard: u16,
    /// Application tag; 0xFFFF disables checking the block (with, for type 3, a reference
    /// tag of 0xFFFFFFFF).
    pub app_tag: u16,
    /// Reference tag: the low 32 bits of the LBA for type 1, opaque for type 3.
    pub ref_tag: u32,
}

impl PiTuple {
    /// The 8 bytes of the tuple.
    pub fn to_bytes(self) -> [u8; PI_TUPLE_BYTES] {
        let mut b = [0u8; PI_TUPLE_BYTES];
        b[0..2].copy_from_slice(&self.guard.to_be_bytes());
        b[2..4].copy_from_slice(&self.app_tag.to_be_bytes());
        b[4..8].copy_from_slice(&self.ref_tag.to_be_bytes());
        b
    }

    /// Parses 8 bytes.
    pub fn from_bytes(b: &[u8; PI_TUPLE_BYTES]) -> PiTuple {
        PiTuple {
            guard: u16::from_be_bytes([b[0], b[1]]),
            app_tag: u16::from_be_bytes([b[2], b[3]]),
            ref_tag: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// Why [`check`] refused a block: the check the controller would fail, with its status
/// (NVM Command Set 1.0 §5.2.3; Base Specification 2.0's Media and Data Integrity
/// Errors: SCT 2h, SC 82h, 83h, 84h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PiError {
    /// End-to-end Guard Check Error (SC 82h).
    #[error("block {block}: PI guard {found:#06x}, expected {expected:#06x} (CRC-16 T10-DIF of the block)")]
    Guard {
        /// Index of the block in the buffer.
        block: usize,
        /// The guard in the PI tuple.
        found: u16,
        /// The guard computed from the data.
        expected: u16,
    },
    /// End-to-end Application Tag Check Error (SC 83h).
    #[error("block {block}: PI application tag {found:#06x}, expected {expected:#06x} under mask {mask:#06x}")]
    AppTag {
        /// Index of the block in the buffer.
        block: usize,
        /// The tag in the PI tuple.
        found: u16,
        /// The expected tag.
        expected: u16,
        /// The mask applied to both.
        mask: u16,
    },
    /// End-to-end Reference Tag Check Error (SC 84h).
    #[error("block {block}: PI reference tag {found:#010x}, expected {expected:#010x}")]
    RefTag {
        /// Index of the block in the buffer.
        block: usize,
        /// The tag in the PI tuple.
        found: u32,
        /// The expected tag.
        expected: u32,
    },
}

/// The reference tag block `i` of a command whose first block expects `first` carries:
/// `first + i` for types 1 and 2, `first` for type 3 (NVM Command Set 1.0 §5.2.3).
fn ref_tag_of(fmt: &MetadataFormat, first: u32, i: usize) -> u32 {
    if fmt.pi_type == 3 {
        first
    } else {
        first.wrapping_add(i as u32)
    }
}

/// Writes the PI tuple of each of the `blocks` blocks in `buf` (laid out as
/// [`MetadataFormat::ranges`] says) from their data: the guard, `p.app_tag`, and the
/// reference tag `p.ref_tag` (plus the block index for types 1 and 2). Metadata bytes
/// outside the tuple are left as they are. Does nothing on a format without PI.
///
/// Panics if `buf` is shorter than `blocks` blocks with their metadata.
pub fn generate(fmt: &MetadataFormat, block_size: u32, buf: &mut [u8], blocks: usize, p: &Protection) {
    let Some(at) = fmt.pi_offset() else { return };
    for i in 0..blocks {
        let (data, md) = fmt.ranges(block_size, blocks, i);
        let g = guard(&buf[data], &buf[md.start..md.start + at]);
        let tuple = PiTuple {
            guard: g,
            app_tag: p.app_tag,
            ref_tag: ref_tag_of(fmt, p.ref_tag, i),
        };
        buf[md.start + at..md.start + at + PI_TUPLE_BYTES].copy_from_slice(&tuple.to_bytes());
    }
}

/// Checks the PI tuple of each of the `blocks` blocks in `buf` the way a controller does
/// for the checks `p` enables (guard, application tag under mask, reference tag), and
/// skips a block whose application tag is 0xFFFF (for type 3, with a reference tag of
/// 0xFFFFFFFF too). Does nothing on a format without PI.
///
/// Errors: the first failing block's [`PiError`].
///
/// Panics if `buf` is shorter than `blocks` blocks with their metadata.
pub fn check(fmt: &MetadataFormat, block_size: u32, buf: &[u8], blocks: usize, p: &Protection) -> Result<(), PiError> {
    let Some(at) = fmt.pi_offset() else { return Ok(()) };
    for i in 0..blocks {
        let (data, md) = fmt.ranges(block_size, blocks, i);
        let raw: &[u8; PI_TUPLE_BYTES] = buf[md.start + at..md.start + at + PI_TUPLE_BYTES]
            .try_into()
            .expect("8 bytes");
        let t = PiTuple::from_bytes(raw);
        let escaped = t.app_tag == 0xFFFF && (fmt.pi_type != 3 || t.ref_tag == 0xFFFF_FFFF);
        if escaped {
            continue;
        }
        if p.check_guard {
            let expected = guard(&buf[data], &buf[md.start..md.start + at]);
            if t.guard != expected {
                return Err(PiError::Guard {
                    block: i,
                    found: t.guard,
                    expected,
                });
            }
        }
        if p.check_app_tag && t.app_tag & p.app_mask != p.app_tag & p.app_mask {
            return Err(PiError::AppTag {
                block: i,
                found: t.app_tag,
                expected: p.app_tag,
                mask: p.app_mask,
            });
        }
        let expected = ref_tag_of(fmt, p.ref_tag, i);
        if p.check_ref_tag && t.ref_tag != expected {
            return Err(PiError::RefTag {
                block: i,
                found: t.ref_tag,
                expected,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_is_crc16_t10_dif() {
        // The CRC catalogue's check value of CRC-16/T10-DIF: "123456789" → 0xD0DB.
        assert_eq!(guard(b"123456789", &[]), 0xD0DB);
        // Continuing over the metadata before the tuple equals one CRC over both.
        assert_eq!(guard(b"1234", b"56789"), 0xD0DB);
        // A block of zeros has guard 0 (initial value 0, no final XOR).
        assert_eq!(guard(&[0u8; 512], &[]), 0);
    }

    #[test]
    fn tuples_are_big_endian() {
        let t = PiTuple {
            guard: 0x1234,
            app_tag: 0x5678,
            ref_tag: 0x9abc_def0,
        };
        assert_eq!(t.to_bytes(), [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0]);
        assert_eq!(PiTuple::from_bytes(&t.to_bytes()), t);
    }

    #[test]
    fn identify_fields_make_the_format() {
        let f = MetadataFormat::from_identify(8, 0x15, 0x9);
        assert_eq!(
            f,
            MetadataFormat {
                bytes: 8,
                extended: true,
                pi_type: 1,
                pi_first: true
            }
        );
        assert!(f.plain_io());
        assert!(MetadataFormat::from_identify(0, 0, 0).is_none());
        assert!(MetadataFormat::from_identify(0, 0, 0).plain_io());
        assert!(
            !MetadataFormat::from_identify(0, 0, 1).plain_io(),
            "PI without metadata is no format"
        );
        assert!(!MetadataFormat::from_identify(0, 0, 1).supported());
        let reserved = MetadataFormat::from_identify(8, 0, 5);
        assert!(
            !reserved.plain_io() && !reserved.supported(),
            "PI types 4..7 are reserved"
        );
        assert!(MetadataFormat::from_identify(16, 0, 3).supported());
        assert_eq!(MetadataFormat::from_identify(8, 0x10, 0).data_bytes(512, 4), 4 * 520);
        assert_eq!(MetadataFormat::from_identify(8, 0, 0).data_bytes(512, 4), 4 * 512);
        assert!(!MetadataFormat::from_identify(8, 0x10, 0).plain_io());
        assert!(!MetadataFormat::from_identify(16, 0, 2).plain_io());
        assert_eq!(MetadataFormat::from_identify(16, 0, 2).pi_offset(), Some(8));
        assert_eq!(MetadataFormat::from_identify(16, 0, 2 | 8).pi_offset(), Some(0));
        assert_eq!(MetadataFormat::from_identify(16, 0, 0).pi_offset(), None);
    }

    #[test]
    fn layouts_place_data_and_metadata() {
        let ext = MetadataFormat::from_identify(8, 0x10, 0);
        assert_eq!(ext.ranges(512, 4, 1), (520..1032, 1032..1040));
        let sep = MetadataFormat::from_identify(8, 0, 0);
        assert_eq!(sep.ranges(512, 4, 1), (512..1024, 2056..2064));
        assert_eq!(sep.bytes_per_block(512), 520);
    }

    fn filled(fmt: &MetadataFormat, blocks: usize) -> Vec<u8> {
        let mut b: Vec<u8> = (0..blocks * fmt.bytes_per_block(512))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        generate(fmt, 512, &mut b, blocks, &Protection::checked(fmt, 0x1_0000_0010));
        b
    }

    #[test]
    fn generated_pi_checks_and_each_corruption_has_its_error() {
        for (ms, flbas, dps) in [(8, 0x10, 1), (8, 0, 2), (16, 0, 1), (16, 0x10, 1 | 8), (64, 0, 3)] {
            let fmt = MetadataFormat::from_identify(ms, flbas, dps);
            let p = Protection::checked(&fmt, 0x1_0000_0010);
            let b = filled(&fmt, 4);
            check(&fmt, 512, &b, 4, &p).unwrap();
            let at = fmt.pi_offset().unwrap();
            let (data, md) = fmt.ranges(512, 4, 2);
            // A flipped data bit fails the guard.
            let mut bad = b.clone();
            bad[data.start + 3] ^= 1;
            assert!(matches!(
                check(&fmt, 512, &bad, 4, &p),
                Err(PiError::Guard { block: 2, .. })
            ));
            // The reference tag counts up per block for types 1 and 2 from the LBA's low 32 bits.
            let tuple = PiTuple::from_bytes(b[md.start + at..md.start + at + 8].try_into().unwrap());
            let expected_ref = if fmt.pi_type == 3 { 0 } else { 0x12 };
            assert_eq!(tuple.ref_tag, expected_ref, "{fmt}");
            let mut bad = b.clone();
            bad[md.start + at + 7] ^= 1;
            let r = check(&fmt, 512, &bad, 4, &p);
            if fmt.pi_type == 3 {
                r.unwrap();
            } else {
                assert!(matches!(r, Err(PiError::RefTag { block: 2, .. })), "{r:?}");
            }
            // Metadata bytes before a trailing tuple are covered by the guard.
            if at > 0 {
                let mut bad = b.clone();
                bad[md.start] ^= 1;
                assert!(matches!(check(&fmt, 512, &bad, 4, &p), Err(PiError::Guard { .. })));
            }
            // An application tag of 0xFFFF turns the checks off for the block.
            let mut esc = bad.clone();
            esc[md.start + at + 2..md.start + at + 4].copy_from_slice(&[0xFF, 0xFF]);
            if fmt.pi_type == 3 {
                esc[md.start + at + 4..md.start + at + 8].copy_from_slice(&[0xFF; 4]);
            }
            check(&fmt, 512, &esc, 4, &p).unwrap();
        }
    }

    #[test]
    fn application_tags_are_checked_under_the_mask() {
        let fmt = MetadataFormat::from_identify(8, 0, 1);
        let mut b = vec![0u8; 520];
        let p = Protection {
            check_app_tag: true,
            app_tag: 0x1234,
            app_mask: 0xFF00,
            ..Protection::checked(&fmt, 0)
        };
        generate(&fmt, 512, &mut b, 1, &p);
        check(&fmt, 512, &b, 1, &Protection { app_tag: 0x12FF, ..p }).unwrap();
        assert!(matches!(
            check(&fmt, 512, &b, 1, &Protection { app_tag: 0x13FF, ..p }),
            Err(PiError::AppTag { .. })
        ));
    }

    #[test]
    fn protection_by_the_controller_and_by_the_host() {
        let t1 = MetadataFormat::from_identify(8, 0, 1);
        let c = Protection::by_controller(&t1, 0x1_2345_6789);
        assert!(c.pract && c.check_guard && c.check_ref_tag && !c.check_app_tag);
        assert_eq!(c.ref_tag, 0x2345_6789);
        let t3 = MetadataFormat::from_identify(8, 0, 3);
        let h = Protection::checked(&t3, 5);
        assert!(!h.pract && h.check_guard && !h.check_ref_tag);
        assert_eq!(
            Protection::by_controller(&MetadataFormat::NONE, 5),
            Protection::default()
        );
        let mut cmd = crate::cmd::Command::read(1, 0x1_2345_6789, 8);
        cmd.set_protection(&c);
        assert_eq!(cmd.cdw12 >> 26 & 0xF, 0b1101, "PRACT, guard and reference tag checks");
        assert_eq!((cmd.cdw14, cmd.cdw15), (0x2345_6789, 0));
        assert_eq!(cmd.nlb(), 8);
        let mut cmd = crate::cmd::Command::write(1, 0, 1, true);
        cmd.set_protection(&Protection {
            check_app_tag: true,
            app_tag: 0xBEEF,
            app_mask: 0xF0F0,
            ..Protection::default()
        });
        assert_eq!(cmd.cdw12 >> 26 & 0xF, 0b0010);
        assert_eq!(cmd.cdw12 >> 30 & 1, 1, "FUA kept");
        assert_eq!(cmd.cdw15, 0xF0F0_BEEF);
    }
}
