//! The Zoned Namespace Command Set (NVM Express Zoned Namespace Command Set
//! Specification 1.1, "ZNS"): its Identify data, Zone Management Send and Receive, and
//! Zone Append.
//!
//! A zoned namespace is divided into zones of ZSZE logical blocks, each written only
//! sequentially at its write pointer (Sequential Write Required), or by Zone Append, which
//! writes at the write pointer and returns where. A controller runs the zone commands only
//! when the host enabled every I/O command set it supports (CC.CSS = 110b, which needs
//! CAP.CSS bit 6; [`crate::ctrl`] selects it when offered).

use crate::cmd::Command;
use crate::identify::Cns;
use crate::parse::{ParseError, le16, le32, le64, need};

/// Command Set Identifier of the NVM command set (Base 2.0, Figure 286).
pub const CSI_NVM: u8 = 0x00;
/// Command Set Identifier of the Zoned Namespace command set.
pub const CSI_ZONED: u8 = 0x02;

/// ZNS I/O opcodes (ZNS 1.1, Figure 15).
pub mod opcode {
    /// Zone Management Send.
    pub const ZONE_MANAGEMENT_SEND: u8 = 0x79;
    /// Zone Management Receive.
    pub const ZONE_MANAGEMENT_RECEIVE: u8 = 0x7A;
    /// Zone Append.
    pub const ZONE_APPEND: u8 = 0x7D;
}

/// Zone Send Action, Zone Management Send CDW13 bits 7:0 (ZNS 1.1, Figure 35).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneAction {
    /// Close Zone: an open zone becomes Closed.
    Close = 0x01,
    /// Finish Zone: the zone becomes Full.
    Finish = 0x02,
    /// Open Zone: an Empty, Implicitly Opened or Closed zone becomes Explicitly Opened.
    Open = 0x03,
    /// Reset Zone: the zone becomes Empty, its write pointer back at its start.
    Reset = 0x04,
    /// Offline Zone: a Read Only zone becomes Offline.
    Offline = 0x05,
}

impl ZoneAction {
    /// nvme-cli's command name for it (`nvme zns reset-zone`: "reset-zone").
    pub const fn nvme_cli_name(self) -> &'static str {
        match self {
            ZoneAction::Close => "close-zone",
            ZoneAction::Finish => "finish-zone",
            ZoneAction::Open => "open-zone",
            ZoneAction::Reset => "reset-zone",
            ZoneAction::Offline => "offline-zone",
        }
    }
}

/// Zone State, the upper nibble of a zone descriptor's ZS byte (ZNS 1.1, Figure 37).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum ZoneState {
    /// ZSE: Empty.
    Empty,
    /// ZSIO: Implicitly Opened (by a write).
    ImplicitlyOpened,
    /// ZSEO: Explicitly Opened (by Open Zone).
    ExplicitlyOpened,
    /// ZSC: Closed.
    Closed,
    /// ZSRO: Read Only.
    ReadOnly,
    /// ZSF: Full.
    Full,
    /// ZSO: Offline.
    Offline,
}

impl ZoneState {
    /// The state of a ZS byte (state in bits 7:4), if it names one.
    pub const fn from_zs(zs: u8) -> Option<ZoneState> {
        Some(match zs >> 4 {
            0x1 => ZoneState::Empty,
            0x2 => ZoneState::ImplicitlyOpened,
            0x3 => ZoneState::ExplicitlyOpened,
            0x4 => ZoneState::Closed,
            0xD => ZoneState::ReadOnly,
            0xE => ZoneState::Full,
            0xF => ZoneState::Offline,
            _ => return None,
        })
    }

    /// The Zone Receive Action Specific filter that selects only this state (Zone
    /// Management Receive CDW13 bits 15:8; ZNS 1.1, Figure 40).
    pub const fn filter(self) -> u8 {
        match self {
            ZoneState::Empty => 1,
            ZoneState::ImplicitlyOpened => 2,
            ZoneState::ExplicitlyOpened => 3,
            ZoneState::Closed => 4,
            ZoneState::Full => 5,
            ZoneState::ReadOnly => 6,
            ZoneState::Offline => 7,
        }
    }

    /// The name nvme-cli 2.3 prints (`zone_state_to_string`).
    pub const fn nvme_cli_name(self) -> &'static str {
        match self {
            ZoneState::Empty => "EMPTY",
            ZoneState::ImplicitlyOpened => "IMP_OPENED",
            ZoneState::ExplicitlyOpened => "EXP_OPENED",
            ZoneState::Closed => "CLOSED",
            ZoneState::ReadOnly => "READONLY",
            ZoneState::Full => "FULL",
            ZoneState::Offline => "OFFLINE",
        }
    }
}

/// Zone Type 2h: Sequential Write Required, the only type ZNS 1.1 defines.
pub const ZONE_TYPE_SEQUENTIAL_WRITE_REQUIRED: u8 = 0x2;

/// Bytes of a Zone Report header and of each zone descriptor (ZNS 1.1, Figures 41-42).
pub const ZONE_DESCRIPTOR_BYTES: usize = 64;

/// One zone descriptor (ZNS 1.1, Figure 42). Block counts and addresses in logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ZoneDescriptor {
    /// ZT, byte 0 as reported (bits 3:0 the type: [`ZONE_TYPE_SEQUENTIAL_WRITE_REQUIRED`]).
    pub zone_type: u8,
    /// ZS, byte 1 as reported: the state in bits 7:4 ([`ZoneDescriptor::state`]).
    pub zs: u8,
    /// ZA, byte 2: zone attributes (bit 0 Zone Finished by Controller, 1 Finish Zone
    /// Recommended, 2 Reset Zone Recommended, 7 Zone Descriptor Extension Valid).
    pub attributes: u8,
    /// ZAI, byte 3: zone attributes information (reset and finish recommended limits).
    pub attributes_info: u8,
    /// ZCAP, bytes 15:8: how many blocks of the zone can be written.
    pub capacity: u64,
    /// ZSLBA, bytes 23:16: the zone's first block.
    pub start: u64,
    /// WP, bytes 31:24: the write pointer (all ones when the zone is Full, Read Only or
    /// Offline: not valid).
    pub write_pointer: u64,
}

impl ZoneDescriptor {
    /// The zone's state; `None` for a reserved value.
    pub fn state(&self) -> Option<ZoneState> {
        ZoneState::from_zs(self.zs)
    }

    /// Parses a descriptor from the first 64 bytes of `buf`.
    ///
    /// Errors: [`ParseError::TooShort`].
    pub fn parse(buf: &[u8]) -> Result<ZoneDescriptor, ParseError> {
        need("Zone Descriptor", buf, ZONE_DESCRIPTOR_BYTES)?;
        Ok(ZoneDescriptor {
            zone_type: buf[0],
            zs: buf[1],
            attributes: buf[2],
            attributes_info: buf[3],
            capacity: le64(buf, 8),
            start: le64(buf, 16),
            write_pointer: le64(buf, 24),
        })
    }
}

/// A Zone Management Receive report (ZNS 1.1, Figure 41).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneReport {
    /// Number of Zones in the header: matching zones from the first one reported to the
    /// end of the namespace, or (Partial Report) how many descriptors the buffer holds.
    pub zones: u64,
    /// The descriptors in the buffer: `min(zones, what fits)`.
    pub descriptors: Vec<ZoneDescriptor>,
}

impl ZoneReport {
    /// Parses a report of `buf.len()` bytes whose descriptors are each followed by
    /// `extension_bytes` of descriptor extension (0 for a plain report).
    ///
    /// Errors: [`ParseError::TooShort`] if `buf` has no 64-byte header.
    pub fn parse(buf: &[u8], extension_bytes: usize) -> Result<ZoneReport, ParseError> {
        need("Zone Report", buf, ZONE_DESCRIPTOR_BYTES)?;
        let zones = le64(buf, 0);
        let stride = ZONE_DESCRIPTOR_BYTES + extension_bytes;
        let fit = (buf.len() - ZONE_DESCRIPTOR_BYTES) / stride;
        let count = (zones.min(fit as u64)) as usize;
        let descriptors = (0..count)
            .map(|i| ZoneDescriptor::parse(&buf[ZONE_DESCRIPTOR_BYTES + i * stride..]))
            .collect::<Result<_, _>>()?;
        Ok(ZoneReport { zones, descriptors })
    }
}

/// I/O Command Set specific Identify Namespace data of a zoned namespace (CNS 05h, CSI
/// 02h; ZNS 1.1, Figure 47).
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct IdentifyZonedNamespace {
    /// ZOC: Zone Operation Characteristics (bit 0 variable zone capacity, bit 1 zone
    /// active excursions).
    pub zoc: u16,
    /// OZCS: Optional Zoned Command Support (bit 0: reads may cross zone boundaries).
    pub ozcs: u16,
    /// MAR: Maximum Active Resources, 0-based (0xFFFF_FFFF: no limit).
    pub mar: u32,
    /// MOR: Maximum Open Resources, 0-based (0xFFFF_FFFF: no limit).
    pub mor: u32,
    /// RRL: Reset Recommended Limit, in seconds (0: not reported).
    pub rrl: u32,
    /// FRL: Finish Recommended Limit, in seconds (0: not reported).
    pub frl: u32,
    /// LBAFE: for LBA format i, (ZSZE: zone size in logical blocks, ZDES: descriptor
    /// extension size in 64-byte units); indexed like Identify Namespace's LBA formats.
    pub zone_formats: Vec<(u64, u8)>,
}

impl IdentifyZonedNamespace {
    /// Offset of the LBA Format Extensions (16 bytes each).
    pub const LBAFE_OFFSET: usize = 2816;
    /// LBA Format Extensions in the structure (as many as LBA formats: 64).
    pub const MAX_FORMATS: usize = 64;

    /// Parses the 4096-byte structure.
    ///
    /// Errors: [`ParseError::TooShort`].
    pub fn parse(buf: &[u8]) -> Result<IdentifyZonedNamespace, ParseError> {
        need("Identify Namespace (ZNS)", buf, crate::identify::IDENTIFY_DATA_LEN)?;
        let zone_formats = (0..Self::MAX_FORMATS)
            .map(|i| {
                let at = Self::LBAFE_OFFSET + 16 * i;
                (le64(buf, at), buf[at + 8])
            })
            .collect();
        Ok(IdentifyZonedNamespace {
            zoc: le16(buf, 0),
            ozcs: le16(buf, 2),
            mar: le32(buf, 4),
            mor: le32(buf, 8),
            rrl: le32(buf, 12),
            frl: le32(buf, 16),
            zone_formats,
        })
    }

    /// Zones that may be active at once (MAR + 1), `None` when MAR is all ones (no limit).
    pub fn max_active(&self) -> Option<u32> {
        (self.mar != u32::MAX).then(|| self.mar + 1)
    }

    /// Zones that may be open at once (MOR + 1), `None` when MOR is all ones (no limit).
    pub fn max_open(&self) -> Option<u32> {
        (self.mor != u32::MAX).then(|| self.mor + 1)
    }

    /// Zone size in logical blocks and descriptor extension size in bytes for LBA format
    /// `format` (FLBAS's current index); `None` past the table or when ZSZE is 0.
    pub fn zone_geometry(&self, format: usize) -> Option<(u64, usize)> {
        let &(zsze, zdes) = self.zone_formats.get(format)?;
        (zsze != 0).then_some((zsze, zdes as usize * 64))
    }
}

/// The Zone Append Size Limit in bytes from the zoned I/O Command Set specific Identify
/// Controller data (CNS 06h, CSI 02h; ZNS 1.1, Figure 49: ZASL, byte 0, a power of two
/// in units of the minimum memory page size `page_size`, CAP.MPSMIN, as MDTS is): `None`
/// when ZASL is 0 (Zone Append is limited by MDTS alone) or the limit does not fit a
/// `usize`.
///
/// Errors: [`ParseError::TooShort`] for an empty buffer.
pub fn zone_append_limit(buf: &[u8], page_size: usize) -> Result<Option<usize>, ParseError> {
    need("Identify Controller (ZNS)", buf, 1)?;
    Ok(match buf[0] {
        0 => None,
        zasl => page_size
            .checked_mul(1usize.checked_shl(u32::from(zasl)).unwrap_or(0))
            .filter(|&n| n > 0),
    })
}

impl Command {
    /// Identify with a Command Set Identifier (CDW11 bits 31:24; Base 2.0 §5.17.1), for
    /// [`Cns::IO_COMMAND_SET_NAMESPACE`].
    pub fn identify_csi(cns: Cns, nsid: u32, csi: u8) -> Command {
        let mut c = Command::identify(cns, nsid, 0);
        c.cdw11 = (csi as u32) << 24;
        c
    }

    /// Zone Management Send (ZNS 1.1 §3.4.3): `action` on the zone starting at `zslba`,
    /// or on every zone the action applies to with `select_all` (ZSLBA then ignored).
    pub fn zone_management_send(nsid: u32, zslba: u64, action: ZoneAction, select_all: bool) -> Command {
        let mut c = Command::new(opcode::ZONE_MANAGEMENT_SEND).with_nsid(nsid);
        c.cdw10 = zslba as u32;
        c.cdw11 = (zslba >> 32) as u32;
        c.cdw13 = action as u32 | (select_all as u32) << 8;
        c
    }

    /// Zone Management Receive (ZNS 1.1 §3.4.2): a zone report of `len_bytes` bytes (a
    /// multiple of 4, at least 64) from the zone holding `slba`; `extended` asks for
    /// descriptor extensions, `filter` is the Zone Receive Action Specific field (0: all
    /// zones, else [`ZoneState::filter`]), `partial` makes Number of Zones count only the
    /// descriptors returned. `None` if `len_bytes` is not such a size.
    pub fn zone_management_receive(
        nsid: u32,
        slba: u64,
        len_bytes: u32,
        extended: bool,
        filter: u8,
        partial: bool,
    ) -> Option<Command> {
        if len_bytes < ZONE_DESCRIPTOR_BYTES as u32 || len_bytes % 4 != 0 {
            return None;
        }
        let mut c = Command::new(opcode::ZONE_MANAGEMENT_RECEIVE).with_nsid(nsid);
        c.cdw10 = slba as u32;
        c.cdw11 = (slba >> 32) as u32;
        c.cdw12 = len_bytes / 4 - 1;
        c.cdw13 = extended as u32 | (filter as u32) << 8 | (partial as u32) << 16;
        Some(c)
    }

    /// Zone Append (ZNS 1.1 §3.4.1): `blocks` logical blocks (1..=65536) written at the
    /// write pointer of the zone starting at `zslba`; the completion's DW0 (low) and DW1
    /// (high) give the first block written. The data pointer is set when it is posted.
    pub fn zone_append(nsid: u32, zslba: u64, blocks: u32) -> Command {
        Command::rw(opcode::ZONE_APPEND, nsid, zslba, blocks, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_limits_are_zero_based_and_all_ones_is_none() {
        let mut buf = vec![0u8; 4096];
        buf[4..8].copy_from_slice(&3u32.to_le_bytes());
        buf[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let z = IdentifyZonedNamespace::parse(&buf).unwrap();
        assert_eq!((z.max_active(), z.max_open()), (Some(4), None));
    }

    #[test]
    fn the_zone_append_limit_is_pages_times_a_power_of_two() {
        assert_eq!(zone_append_limit(&[5, 0, 0], 4096).unwrap(), Some(128 * 1024));
        assert_eq!(zone_append_limit(&[0], 4096).unwrap(), None);
        assert_eq!(zone_append_limit(&[200], 4096).unwrap(), None);
        assert!(zone_append_limit(&[], 4096).is_err());
    }

    #[test]
    fn a_report_is_parsed_up_to_what_the_buffer_holds() {
        let mut buf = vec![0u8; 64 + 2 * 64];
        buf[0..8].copy_from_slice(&5u64.to_le_bytes());
        for (i, (zs, wp)) in [(0x10u8, 0u64), (0xE0, u64::MAX)].into_iter().enumerate() {
            let d = &mut buf[64 + 64 * i..];
            d[0] = 0x2;
            d[1] = zs;
            d[8..16].copy_from_slice(&0x3E00u64.to_le_bytes());
            d[16..24].copy_from_slice(&(0x4000 * i as u64).to_le_bytes());
            d[24..32].copy_from_slice(&wp.to_le_bytes());
        }
        let r = ZoneReport::parse(&buf, 0).unwrap();
        assert_eq!(r.zones, 5, "the header counts zones to the end");
        assert_eq!(r.descriptors.len(), 2, "two fit");
        assert_eq!(r.descriptors[1].start, 0x4000);
        assert_eq!(r.descriptors[1].state(), Some(ZoneState::Full));
        assert_eq!(r.descriptors[0].state(), Some(ZoneState::Empty));
        assert_eq!(r.descriptors[0].capacity, 0x3E00);
        assert_eq!(
            ZoneReport::parse(&buf, 64).unwrap().descriptors.len(),
            1,
            "with extensions"
        );
        assert!(ZoneReport::parse(&buf[..63], 0).is_err());
    }

    #[test]
    fn commands_put_their_fields_where_zns_says() {
        let c = Command::zone_management_send(1, 0x1_0000_4000, ZoneAction::Reset, true);
        assert_eq!((c.opcode(), c.cdw10, c.cdw11, c.cdw13), (0x79, 0x4000, 1, 0x104));
        let c = Command::zone_management_receive(1, 0, 4096, false, ZoneState::Full.filter(), true).unwrap();
        assert_eq!((c.opcode(), c.cdw12, c.cdw13), (0x7A, 1023, 0x1_0500));
        assert!(Command::zone_management_receive(1, 0, 60, false, 0, false).is_none());
        let c = Command::zone_append(2, 0x8000, 8);
        assert_eq!((c.opcode(), c.nsid, c.cdw10, c.cdw12), (0x7D, 2, 0x8000, 7));
        let c = Command::identify_csi(Cns::IO_COMMAND_SET_NAMESPACE, 3, CSI_ZONED);
        assert_eq!((c.cdw10, c.cdw11, c.nsid), (5, 0x0200_0000, 3));
    }

    #[test]
    fn identify_zoned_namespace_gives_the_current_formats_zone_size() {
        let mut buf = vec![0u8; 4096];
        buf[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        buf[2816 + 16..2816 + 24].copy_from_slice(&0x4000u64.to_le_bytes());
        buf[2816 + 24] = 1;
        let z = IdentifyZonedNamespace::parse(&buf).unwrap();
        assert_eq!(z.mar, u32::MAX);
        assert_eq!(z.zone_geometry(1), Some((0x4000, 64)));
        assert_eq!(z.zone_geometry(0), None, "ZSZE 0: no zones in that format");
        assert!(IdentifyZonedNamespace::parse(&buf[..4095]).is_err());
    }
}
