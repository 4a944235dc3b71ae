//! Identify data structures (Identify command, admin opcode 06h).
//!
//! - [`IdentifyController`]: CNS 01h, NVMe Base Specification 2.0 §5.17.2.1, Figure 275 (2.0c).
//! - [`IdentifyNamespace`]: CNS 00h for the NVM command set, NVM Command Set Specification 1.0
//!   §4.1.5.1.
//! - [`NamespaceList`]: CNS 02h, the Active Namespace ID list (Base 2.0 §5.17.2.2).
//! - [`parse_namespace_descriptors`]: CNS 03h, the Namespace Identification Descriptor list
//!   (Base 2.0 §5.17.2.3).
//!
//! Every parser is total: any byte slice gives a value or a [`ParseError`], never a panic.
//! Counts the device reports (NPSS, NLBAF) are clamped to what the structure can hold.

use crate::parse::{ParseError, ascii, le16, le32, le64, le128, need};

/// Length in bytes of every Identify data structure (one 4 KiB page).
pub const IDENTIFY_DATA_LEN: usize = 4096;

/// Controller or Namespace Structure (CNS) value, CDW10 bits 7:0 of the Identify command
/// (Base 2.0 §5.17).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Cns(pub u8);

impl Cns {
    /// 00h: Identify Namespace data structure for the NSID in CDW1.
    pub const NAMESPACE: Cns = Cns(0x00);
    /// 01h: Identify Controller data structure.
    pub const CONTROLLER: Cns = Cns(0x01);
    /// 02h: Active Namespace ID list (NSIDs greater than CDW1.NSID).
    pub const ACTIVE_NAMESPACE_LIST: Cns = Cns(0x02);
    /// 03h: Namespace Identification Descriptor list for the NSID in CDW1.
    pub const NAMESPACE_ID_DESCRIPTORS: Cns = Cns(0x03);
    /// 10h: Allocated Namespace ID list (NSIDs greater than CDW1.NSID, attached or not;
    /// needs Namespace Management, OACS bit 3). Same layout as the active list.
    pub const ALLOCATED_NAMESPACE_LIST: Cns = Cns(0x10);
    /// 05h: I/O Command Set specific Identify Namespace data for the CSI in CDW11 (for
    /// zoned namespaces: [`crate::zns::IdentifyZonedNamespace`]).
    pub const IO_COMMAND_SET_NAMESPACE: Cns = Cns(0x05);
    /// 06h: I/O Command Set specific Identify Controller data for the CSI in CDW11 (for
    /// zoned namespaces: the Zone Append Size Limit, [`crate::zns::zone_append_limit`]).
    pub const IO_COMMAND_SET_CONTROLLER: Cns = Cns(0x06);
}

bitflags::bitflags! {
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities (CMIC, Identify
    /// Controller byte 76). Unknown bits are kept.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Cmic: u8 {
        /// Bit 0: the NVM subsystem may contain more than one port.
        const MULTI_PORT = 1 << 0;
        /// Bit 1: the NVM subsystem may contain more than one controller.
        const MULTI_CONTROLLER = 1 << 1;
        /// Bit 2: the controller is associated with an SR-IOV Virtual Function.
        const SRIOV_VF = 1 << 2;
        /// Bit 3: Asymmetric Namespace Access reporting is supported.
        const ANA_REPORTING = 1 << 3;
    }
}

/// Serialized as the raw bits (a number), as nvme-cli prints the field.
#[cfg(feature = "serde")]
impl serde::Serialize for Cmic {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.bits(), serializer)
    }
}

bitflags::bitflags! {
    /// Optional Admin Command Support (OACS, Identify Controller bytes 257:256).
    /// Unknown bits are kept.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Oacs: u16 {
        /// Bit 0: Security Send and Security Receive.
        const SECURITY_SEND_RECEIVE = 1 << 0;
        /// Bit 1: Format NVM.
        const FORMAT_NVM = 1 << 1;
        /// Bit 2: Firmware Commit and Firmware Image Download.
        const FIRMWARE = 1 << 2;
        /// Bit 3: Namespace Management and Namespace Attachment.
        const NAMESPACE_MANAGEMENT = 1 << 3;
        /// Bit 4: Device Self-test.
        const DEVICE_SELF_TEST = 1 << 4;
        /// Bit 5: Directives (Directive Send and Directive Receive).
        const DIRECTIVES = 1 << 5;
        /// Bit 6: NVMe-MI Send and NVMe-MI Receive.
        const NVME_MI = 1 << 6;
        /// Bit 7: Virtualization Management.
        const VIRTUALIZATION_MANAGEMENT = 1 << 7;
        /// Bit 8: Doorbell Buffer Config.
        const DOORBELL_BUFFER_CONFIG = 1 << 8;
        /// Bit 9: Get LBA Status.
        const GET_LBA_STATUS = 1 << 9;
        /// Bit 10: Command and Feature Lockdown.
        const COMMAND_FEATURE_LOCKDOWN = 1 << 10;
    }
}

/// Serialized as the raw bits (a number), as nvme-cli prints the field.
#[cfg(feature = "serde")]
impl serde::Serialize for Oacs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.bits(), serializer)
    }
}

bitflags::bitflags! {
    /// Optional NVM Command Support (ONCS, Identify Controller bytes 521:520).
    /// Unknown bits are kept.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Oncs: u16 {
        /// Bit 0: Compare.
        const COMPARE = 1 << 0;
        /// Bit 1: Write Uncorrectable.
        const WRITE_UNCORRECTABLE = 1 << 1;
        /// Bit 2: Dataset Management (deallocate).
        const DATASET_MANAGEMENT = 1 << 2;
        /// Bit 3: Write Zeroes.
        const WRITE_ZEROES = 1 << 3;
        /// Bit 4: the Save field of Set Features and the Select field of Get Features.
        const SAVE_SELECT_FEATURES = 1 << 4;
        /// Bit 5: Reservations.
        const RESERVATIONS = 1 << 5;
        /// Bit 6: the Timestamp feature.
        const TIMESTAMP = 1 << 6;
        /// Bit 7: Verify.
        const VERIFY = 1 << 7;
        /// Bit 8: Copy.
        const COPY = 1 << 8;
    }
}

/// Serialized as the raw bits (a number), as nvme-cli prints the field.
#[cfg(feature = "serde")]
impl serde::Serialize for Oncs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.bits(), serializer)
    }
}

bitflags::bitflags! {
    /// Log Page Attributes (LPA, Identify Controller byte 261). Unknown bits are kept.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Lpa: u8 {
        /// Bit 0: the SMART / Health Information log page is available per namespace.
        const SMART_PER_NAMESPACE = 1 << 0;
        /// Bit 1: the Commands Supported and Effects log page is supported.
        const COMMANDS_EFFECTS = 1 << 1;
        /// Bit 2: extended data for Get Log Page (NUMDU, LPOL/LPOU offsets).
        const EXTENDED_DATA = 1 << 2;
        /// Bit 3: Telemetry Host-Initiated and Controller-Initiated log pages.
        const TELEMETRY = 1 << 3;
        /// Bit 4: the Persistent Event log page.
        const PERSISTENT_EVENT = 1 << 4;
        /// Bit 5: the Supported Log Pages log page and the LID 00h/05h/0Ch/0Dh variants.
        const SUPPORTED_LOG_PAGES = 1 << 5;
        /// Bit 6: Telemetry Data Area 4.
        const TELEMETRY_DATA_AREA_4 = 1 << 6;
    }
}

/// Serialized as the raw bits (a number), as nvme-cli prints the field.
#[cfg(feature = "serde")]
impl serde::Serialize for Lpa {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.bits(), serializer)
    }
}

/// Firmware Updates (FRMW, Identify Controller byte 260), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Frmw {
    /// Bit 0: firmware slot 1 is read only.
    pub slot1_read_only: bool,
    /// Bits 3:1: number of firmware slots, 1..=7 (0 is not a valid value).
    pub num_slots: u8,
    /// Bit 4: firmware activation without a reset is supported.
    pub activation_without_reset: bool,
    /// Bit 5: multiple update detection is supported (2.0).
    pub multiple_update_detection: bool,
}

impl Frmw {
    /// Decodes the raw FRMW byte; reserved bits 7:6 are ignored.
    pub fn from_raw(raw: u8) -> Frmw {
        Frmw {
            slot1_read_only: raw & 1 != 0,
            num_slots: (raw >> 1) & 0x7,
            activation_without_reset: raw & (1 << 4) != 0,
            multiple_update_detection: raw & (1 << 5) != 0,
        }
    }

    /// Encodes back to the raw FRMW byte (bits 7:6 zero, `num_slots` masked to 3 bits).
    pub fn to_raw(self) -> u8 {
        u8::from(self.slot1_read_only)
            | ((self.num_slots & 0x7) << 1)
            | (u8::from(self.activation_without_reset) << 4)
            | (u8::from(self.multiple_update_detection) << 5)
    }
}

bitflags::bitflags! {
    /// Flags byte (byte 3) of a Power State Descriptor (Base 2.0 §5.17.2.1).
    /// Unknown bits are kept.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct PsdFlags: u8 {
        /// MXPS (bit 0): Max Power Scale — MP is in 0.0001 W units when set, 0.01 W when clear.
        const MXPS = 1 << 0;
        /// NOPS (bit 1): Non-Operational State — no I/O commands are processed in it.
        const NOPS = 1 << 1;
    }
}

/// Serialized as the raw bits (a number), as nvme-cli prints the field.
#[cfg(feature = "serde")]
impl serde::Serialize for PsdFlags {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.bits(), serializer)
    }
}

/// One Power State Descriptor: 32 bytes at Identify Controller offset 2048 + 32 × n
/// (Base 2.0 §5.17.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PowerStateDescriptor {
    /// MP (bytes 1:0): maximum power, in centiwatts (0.01 W) when `flags` lacks MXPS, in
    /// 0.0001 W units when MXPS is set. See [`PowerStateDescriptor::max_power_microwatts`].
    pub mp: u16,
    /// Byte 3: MXPS and NOPS.
    pub flags: PsdFlags,
    /// ENLAT (bytes 7:4): entry latency in µs (0 = not reported).
    pub enlat: u32,
    /// EXLAT (bytes 11:8): exit latency in µs (0 = not reported).
    pub exlat: u32,
    /// RRT (byte 12 bits 4:0): relative read throughput, 0 is best.
    pub rrt: u8,
    /// RRL (byte 13 bits 4:0): relative read latency, 0 is best.
    pub rrl: u8,
    /// RWT (byte 14 bits 4:0): relative write throughput, 0 is best.
    pub rwt: u8,
    /// RWL (byte 15 bits 4:0): relative write latency, 0 is best.
    pub rwl: u8,
    /// IDLP (bytes 17:16): idle power, scaled by `ips`.
    pub idlp: u16,
    /// IPS (byte 18 bits 7:6): idle power scale — 0 not reported, 1 = 0.0001 W, 2 = 0.01 W.
    pub ips: u8,
    /// ACTP (bytes 21:20): active power, scaled by `aps`.
    pub actp: u16,
    /// APW (byte 22 bits 2:0): active power workload.
    pub apw: u8,
    /// APS (byte 22 bits 7:6): active power scale — 0 not reported, 1 = 0.0001 W, 2 = 0.01 W.
    pub aps: u8,
}

impl PowerStateDescriptor {
    /// Size in bytes of one descriptor.
    pub const LEN: usize = 32;

    /// Decodes one descriptor from exactly [`PowerStateDescriptor::LEN`] or more bytes.
    fn parse(buf: &[u8]) -> Result<PowerStateDescriptor, ParseError> {
        need("Power State Descriptor", buf, Self::LEN)?;
        Ok(PowerStateDescriptor {
            mp: le16(buf, 0),
            flags: PsdFlags::from_bits_retain(buf[3]),
            enlat: le32(buf, 4),
            exlat: le32(buf, 8),
            rrt: buf[12] & 0x1f,
            rrl: buf[13] & 0x1f,
            rwt: buf[14] & 0x1f,
            rwl: buf[15] & 0x1f,
            idlp: le16(buf, 16),
            ips: buf[18] >> 6,
            actp: le16(buf, 20),
            apw: buf[22] & 0x7,
            aps: buf[22] >> 6,
        })
    }

    /// Maximum power in µW, taking MXPS into account (never overflows: at most
    /// 65535 × 10 000 µW).
    pub fn max_power_microwatts(&self) -> u32 {
        let unit = if self.flags.contains(PsdFlags::MXPS) {
            100
        } else {
            10_000
        };
        u32::from(self.mp) * unit
    }

    /// True for a non-operational power state (NOPS).
    pub fn non_operational(&self) -> bool {
        self.flags.contains(PsdFlags::NOPS)
    }
}

/// Identify Controller data structure (CNS 01h), 4096 bytes: NVMe Base Specification 2.0
/// §5.17.2.1, Figure 275 (2.0c). Field names are the specification's, in snake case.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct IdentifyController {
    /// VID (bytes 1:0): PCI Vendor ID.
    pub vid: u16,
    /// SSVID (bytes 3:2): PCI Subsystem Vendor ID.
    pub ssvid: u16,
    /// SN (bytes 23:4): serial number, ASCII, padding trimmed.
    pub sn: String,
    /// MN (bytes 63:24): model number, ASCII, padding trimmed.
    pub mn: String,
    /// FR (bytes 71:64): firmware revision, ASCII, padding trimmed.
    pub fr: String,
    /// RAB (byte 72): recommended arbitration burst, as a power of two (2^RAB commands).
    pub rab: u8,
    /// IEEE (bytes 75:73): IEEE OUI, in the byte order of the structure (least significant
    /// byte first).
    pub ieee: [u8; 3],
    /// CMIC (byte 76): multi-path I/O and namespace sharing capabilities.
    pub cmic: Cmic,
    /// MDTS (byte 77): maximum data transfer size, a power of two in units of CAP.MPSMIN;
    /// 0 = no limit. See [`IdentifyController::max_transfer_bytes`].
    pub mdts: u8,
    /// CNTLID (bytes 79:78): controller ID.
    pub cntlid: u16,
    /// VER (bytes 83:80): version, major in bits 31:16, minor 15:8, tertiary 7:0
    /// (0 before NVMe 1.2). See [`IdentifyController::version`].
    pub ver: u32,
    /// RTD3R (bytes 87:84): RTD3 resume latency in µs (0 = not reported).
    pub rtd3r: u32,
    /// RTD3E (bytes 91:88): RTD3 entry latency in µs (0 = not reported).
    pub rtd3e: u32,
    /// OAES (bytes 95:92): optional asynchronous events supported, raw bits.
    pub oaes: u32,
    /// CTRATT (bytes 99:96): controller attributes, raw bits.
    pub ctratt: u32,
    /// RRLS (bytes 101:100): read recovery levels supported, one bit per level.
    pub rrls: u16,
    /// CNTRLTYPE (byte 111): controller type — 0 not reported, 1 I/O, 2 discovery,
    /// 3 administrative.
    pub cntrltype: u8,
    /// FGUID (bytes 127:112): FRU globally unique identifier (all zero = not reported).
    pub fguid: [u8; 16],
    /// CRDT1..CRDT3 (bytes 133:128): command retry delay times, in units of 100 ms.
    pub crdt: [u16; 3],
    /// NVMSR (byte 253): NVM subsystem report — bit 0 NVMe storage device, bit 1 NVMe
    /// enclosure.
    pub nvmsr: u8,
    /// VWCI (byte 254): VPD write cycle information — bit 7 valid, bits 6:0 write cycles
    /// remaining.
    pub vwci: u8,
    /// MEC (byte 255): management endpoint capabilities — bit 0 SMBus/I2C port, bit 1
    /// PCIe port.
    pub mec: u8,
    /// OACS (bytes 257:256): optional admin commands supported.
    pub oacs: Oacs,
    /// ACL (byte 258): abort command limit, 0's based (ACL + 1 concurrent Aborts).
    pub acl: u8,
    /// AERL (byte 259): asynchronous event request limit, 0's based.
    pub aerl: u8,
    /// FRMW (byte 260): firmware updates.
    pub frmw: Frmw,
    /// LPA (byte 261): log page attributes.
    pub lpa: Lpa,
    /// ELPE (byte 262): error log page entries, 0's based (ELPE + 1 entries).
    pub elpe: u8,
    /// NPSS (byte 263): number of power states supported, 0's based.
    pub npss: u8,
    /// AVSCC (byte 264): admin vendor specific command configuration, raw bits.
    pub avscc: u8,
    /// APSTA (byte 265): autonomous power state transition attributes (bit 0: supported).
    pub apsta: u8,
    /// WCTEMP (bytes 267:266): warning composite temperature threshold, Kelvin (0 = none).
    pub wctemp: u16,
    /// CCTEMP (bytes 269:268): critical composite temperature threshold, Kelvin (0 = none).
    pub cctemp: u16,
    /// MTFA (bytes 271:270): maximum time for firmware activation, in units of 100 ms.
    pub mtfa: u16,
    /// HMPRE (bytes 275:272): host memory buffer preferred size, in 4 KiB units.
    pub hmpre: u32,
    /// HMMIN (bytes 279:276): host memory buffer minimum size, in 4 KiB units.
    pub hmmin: u32,
    /// TNVMCAP (bytes 295:280): total NVM capacity, bytes.
    pub tnvmcap: u128,
    /// UNVMCAP (bytes 311:296): unallocated NVM capacity, bytes.
    pub unvmcap: u128,
    /// RPMBS (bytes 315:312): replay protected memory block support, raw bits.
    pub rpmbs: u32,
    /// EDSTT (bytes 317:316): extended device self-test time, minutes.
    pub edstt: u16,
    /// DSTO (byte 318): device self-test options (bit 0: one self-test at a time per
    /// NVM subsystem).
    pub dsto: u8,
    /// FWUG (byte 319): firmware update granularity, in 4 KiB units (0 = not reported,
    /// FFh = no restriction).
    pub fwug: u8,
    /// KAS (bytes 321:320): keep alive support granularity, in units of 100 ms
    /// (0 = Keep Alive not supported).
    pub kas: u16,
    /// HCTMA (bytes 323:322): host controlled thermal management attributes (bit 0:
    /// supported).
    pub hctma: u16,
    /// MNTMT (bytes 325:324): minimum thermal management temperature, Kelvin (0 = not
    /// supported).
    pub mntmt: u16,
    /// MXTMT (bytes 327:326): maximum thermal management temperature, Kelvin (0 = not
    /// supported).
    pub mxtmt: u16,
    /// SANICAP (bytes 331:328): sanitize capabilities, raw bits.
    pub sanicap: u32,
    /// HMMINDS (bytes 335:332): host memory buffer minimum descriptor entry size, in
    /// 4 KiB units (0 = no minimum).
    pub hmminds: u32,
    /// HMMAXD (bytes 337:336): host memory maximum descriptors entries (0 = no limit).
    pub hmmaxd: u16,
    /// NSETIDMAX (bytes 339:338): NVM set identifier maximum.
    pub nsetidmax: u16,
    /// ENDGIDMAX (bytes 341:340): endurance group identifier maximum.
    pub endgidmax: u16,
    /// ANATT (byte 342): ANA transition time, seconds.
    pub anatt: u8,
    /// ANACAP (byte 343): asymmetric namespace access capabilities, raw bits.
    pub anacap: u8,
    /// ANAGRPMAX (bytes 347:344): ANA group identifier maximum.
    pub anagrpmax: u32,
    /// NANAGRPID (bytes 351:348): number of ANA group identifiers.
    pub nanagrpid: u32,
    /// PELS (bytes 355:352): persistent event log size, in 64 KiB units.
    pub pels: u32,
    /// DOMAINID (bytes 357:356): domain identifier.
    pub domainid: u16,
    /// MEGCAP (bytes 383:368): max endurance group capacity, bytes.
    pub megcap: u128,
    /// SQES (byte 512): submission queue entry size — bits 3:0 required, 7:4 maximum, each
    /// log2 of bytes. See [`IdentifyController::sqe_sizes`].
    pub sqes: u8,
    /// CQES (byte 513): completion queue entry size — bits 3:0 required, 7:4 maximum, each
    /// log2 of bytes. See [`IdentifyController::cqe_sizes`].
    pub cqes: u8,
    /// MAXCMD (bytes 515:514): maximum outstanding commands (0 = not reported; fabrics).
    pub maxcmd: u16,
    /// NN (bytes 519:516): maximum value of a valid NSID.
    pub nn: u32,
    /// ONCS (bytes 521:520): optional NVM commands supported.
    pub oncs: Oncs,
    /// FUSES (bytes 523:522): fused operations supported (bit 0: Compare and Write).
    pub fuses: u16,
    /// FNA (byte 524): format NVM attributes — bit 0 format applies to all namespaces,
    /// bit 1 secure erase applies to all namespaces, bit 2 cryptographic erase supported.
    pub fna: u8,
    /// VWC (byte 525): volatile write cache — bit 0 present, bits 2:1 Flush with broadcast
    /// NSID support. See [`IdentifyController::vwc_present`].
    pub vwc: u8,
    /// AWUN (bytes 527:526): atomic write unit normal, in logical blocks, 0's based.
    pub awun: u16,
    /// AWUPF (bytes 529:528): atomic write unit power fail, in logical blocks, 0's based.
    pub awupf: u16,
    /// ICSVSCC (byte 530): I/O command set vendor specific command configuration.
    pub icsvscc: u8,
    /// NWPC (byte 531): namespace write protection capabilities, raw bits.
    pub nwpc: u8,
    /// ACWU (bytes 533:532): atomic compare & write unit, in logical blocks, 0's based.
    pub acwu: u16,
    /// OCFS (bytes 535:534): optional copy formats supported, one bit per format.
    pub ocfs: u16,
    /// SGLS (bytes 539:536): SGL support, raw bits. Bits 1:0: 00b not supported, 01b
    /// supported, 10b supported with dword alignment and granularity, 11b reserved.
    /// See [`IdentifyController::sgl_supported`].
    pub sgls: u32,
    /// MNAN (bytes 543:540): maximum number of allowed namespaces (0 = not reported).
    pub mnan: u32,
    /// MAXDNA (bytes 559:544): maximum domain namespace attachments (0 = not reported).
    pub maxdna: u128,
    /// MAXCNA (bytes 563:560): maximum I/O controller namespace attachments (0 = not
    /// reported).
    pub maxcna: u32,
    /// SUBNQN (bytes 1023:768): NVM subsystem NVMe Qualified Name, padding trimmed.
    pub subnqn: String,
    /// IOCCSZ (bytes 1795:1792, fabrics only): I/O queue command capsule supported size,
    /// in 16-byte units.
    pub ioccsz: u32,
    /// IORCSZ (bytes 1799:1796, fabrics only): I/O queue response capsule supported size,
    /// in 16-byte units.
    pub iorcsz: u32,
    /// ICDOFF (bytes 1801:1800, fabrics only): in-capsule data offset, in 16-byte units.
    pub icdoff: u16,
    /// FCATT (byte 1802, fabrics only): fabrics controller attributes (bit 0: dynamic
    /// controller model).
    pub fcatt: u8,
    /// MSDBD (byte 1803, fabrics only): maximum SGL data block descriptors per capsule
    /// (0 = no limit).
    pub msdbd: u8,
    /// OFCS (bytes 1805:1804, fabrics only): optional fabric commands supported (bit 0:
    /// Disconnect).
    pub ofcs: u16,
    /// PSD0..PSDn (bytes 3071:2048): the NPSS + 1 power state descriptors, clamped to the
    /// 32 the structure can hold.
    pub psd: Vec<PowerStateDescriptor>,
}

impl IdentifyController {
    /// Offset in bytes of the first power state descriptor.
    pub const PSD_OFFSET: usize = 2048;
    /// Number of power state descriptors the structure can hold.
    pub const MAX_POWER_STATES: usize = 32;

    /// Parses the 4096-byte Identify Controller data structure. Longer buffers are accepted
    /// and the extra bytes ignored.
    ///
    /// # Errors
    /// [`ParseError::TooShort`] if `buf` holds fewer than [`IDENTIFY_DATA_LEN`] bytes.
    pub fn parse(buf: &[u8]) -> Result<IdentifyController, ParseError> {
        need("Identify Controller", buf, IDENTIFY_DATA_LEN)?;
        let npsd = (usize::from(buf[263]) + 1).min(Self::MAX_POWER_STATES);
        let psd = buf[Self::PSD_OFFSET..Self::PSD_OFFSET + npsd * PowerStateDescriptor::LEN]
            .chunks_exact(PowerStateDescriptor::LEN)
            .map(PowerStateDescriptor::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let mut fguid = [0u8; 16];
        fguid.copy_from_slice(&buf[112..128]);
        Ok(IdentifyController {
            vid: le16(buf, 0),
            ssvid: le16(buf, 2),
            sn: ascii(&buf[4..24]),
            mn: ascii(&buf[24..64]),
            fr: ascii(&buf[64..72]),
            rab: buf[72],
            ieee: [buf[73], buf[74], buf[75]],
            cmic: Cmic::from_bits_retain(buf[76]),
            mdts: buf[77],
            cntlid: le16(buf, 78),
            ver: le32(buf, 80),
            rtd3r: le32(buf, 84),
            rtd3e: le32(buf, 88),
            oaes: le32(buf, 92),
            ctratt: le32(buf, 96),
            rrls: le16(buf, 100),
            cntrltype: buf[111],
            fguid,
            crdt: [le16(buf, 128), le16(buf, 130), le16(buf, 132)],
            nvmsr: buf[253],
            vwci: buf[254],
            mec: buf[255],
            oacs: Oacs::from_bits_retain(le16(buf, 256)),
            acl: buf[258],
            aerl: buf[259],
            frmw: Frmw::from_raw(buf[260]),
            lpa: Lpa::from_bits_retain(buf[261]),
            elpe: buf[262],
            npss: buf[263],
            avscc: buf[264],
            apsta: buf[265],
            wctemp: le16(buf, 266),
            cctemp: le16(buf, 268),
            mtfa: le16(buf, 270),
            hmpre: le32(buf, 272),
            hmmin: le32(buf, 276),
            tnvmcap: le128(buf, 280),
            unvmcap: le128(buf, 296),
            rpmbs: le32(buf, 312),
            edstt: le16(buf, 316),
            dsto: buf[318],
            fwug: buf[319],
            kas: le16(buf, 320),
            hctma: le16(buf, 322),
            mntmt: le16(buf, 324),
            mxtmt: le16(buf, 326),
            sanicap: le32(buf, 328),
            hmminds: le32(buf, 332),
            hmmaxd: le16(buf, 336),
            nsetidmax: le16(buf, 338),
            endgidmax: le16(buf, 340),
            anatt: buf[342],
            anacap: buf[343],
            anagrpmax: le32(buf, 344),
            nanagrpid: le32(buf, 348),
            pels: le32(buf, 352),
            domainid: le16(buf, 356),
            megcap: le128(buf, 368),
            sqes: buf[512],
            cqes: buf[513],
            maxcmd: le16(buf, 514),
            nn: le32(buf, 516),
            oncs: Oncs::from_bits_retain(le16(buf, 520)),
            fuses: le16(buf, 522),
            fna: buf[524],
            vwc: buf[525],
            awun: le16(buf, 526),
            awupf: le16(buf, 528),
            icsvscc: buf[530],
            nwpc: buf[531],
            acwu: le16(buf, 532),
            ocfs: le16(buf, 534),
            sgls: le32(buf, 536),
            mnan: le32(buf, 540),
            maxdna: le128(buf, 544),
            maxcna: le32(buf, 560),
            subnqn: ascii(&buf[768..1024]),
            ioccsz: le32(buf, 1792),
            iorcsz: le32(buf, 1796),
            icdoff: le16(buf, 1800),
            fcatt: buf[1802],
            msdbd: buf[1803],
            ofcs: le16(buf, 1804),
            psd,
        })
    }

    /// Maximum data transfer size in bytes, given CAP.MPSMIN as a page size in bytes
    /// (e.g. 4096): `min_page_size_bytes × 2^MDTS`.
    ///
    /// `None` when MDTS is 0 (no limit), or when the product does not fit in a `u64`
    /// (a limit no transfer can reach, so also no limit in practice).
    pub fn max_transfer_bytes(&self, min_page_size_bytes: u64) -> Option<u64> {
        if self.mdts == 0 {
            return None;
        }
        let factor = 1u64.checked_shl(u32::from(self.mdts))?;
        min_page_size_bytes.checked_mul(factor)
    }

    /// VER as (major, minor, tertiary), e.g. (1, 4, 0) for NVMe 1.4.
    pub fn version(&self) -> (u16, u8, u8) {
        ((self.ver >> 16) as u16, (self.ver >> 8) as u8, self.ver as u8)
    }

    /// SGLS bits 1:0 are non-zero: the controller supports SGLs for the NVM command set
    /// (on I/O commands; admin commands always use PRPs over PCIe).
    pub fn sgl_supported(&self) -> bool {
        self.sgls & 0b11 != 0
    }

    /// SGLS bits 1:0 are 10b: SGLs are supported but data blocks must be dword aligned and
    /// a multiple of dwords long.
    pub fn sgl_dword_aligned_required(&self) -> bool {
        self.sgls & 0b11 == 0b10
    }

    /// Whether Verify may be sent: ONCS bit 7, or a controller whose `quirks` include
    /// [`crate::quirks::Quirks::VERIFY_UNADVERTISED`].
    pub fn verify_supported(&self, quirks: crate::quirks::Quirks) -> bool {
        self.oncs.contains(Oncs::VERIFY) || quirks.contains(crate::quirks::Quirks::VERIFY_UNADVERTISED)
    }

    /// VWC bit 0: a volatile write cache is present.
    pub fn vwc_present(&self) -> bool {
        self.vwc & 1 != 0
    }

    /// VWC bits 2:1: whether Flush accepts the broadcast NSID FFFFFFFFh — `Some(false)` for
    /// 10b, `Some(true)` for 11b, `None` when not indicated (00b) or reserved (01b).
    pub fn flush_broadcast_supported(&self) -> Option<bool> {
        match (self.vwc >> 1) & 0b11 {
            0b10 => Some(false),
            0b11 => Some(true),
            _ => None,
        }
    }

    /// SQES as (required, maximum) submission queue entry sizes, each log2 of bytes
    /// (6 = 64 bytes).
    pub fn sqe_sizes(&self) -> (u8, u8) {
        (self.sqes & 0xf, self.sqes >> 4)
    }

    /// CQES as (required, maximum) completion queue entry sizes, each log2 of bytes
    /// (4 = 16 bytes).
    pub fn cqe_sizes(&self) -> (u8, u8) {
        (self.cqes & 0xf, self.cqes >> 4)
    }
}

/// One LBA Format descriptor (LBAF), 4 bytes at Identify Namespace offset 128 + 4 × n
/// (NVM Command Set Specification 1.0 §4.1.5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LbaFormat {
    /// MS (bits 15:0): metadata size per logical block, bytes.
    pub ms: u16,
    /// LBADS (bits 23:16): LBA data size, log2 of bytes (9 = 512 B, 12 = 4 KiB).
    /// A value below 9 means the format is not supported.
    pub lbads: u8,
    /// RP (bits 25:24): relative performance — 0 best, 1 better, 2 good, 3 degraded.
    pub rp: u8,
}

impl LbaFormat {
    /// Decodes a raw LBAF dword; reserved bits 31:26 are ignored.
    pub fn from_raw(raw: u32) -> LbaFormat {
        LbaFormat {
            ms: raw as u16,
            lbads: (raw >> 16) as u8,
            rp: ((raw >> 24) & 0b11) as u8,
        }
    }

    /// Encodes back to the raw LBAF dword (`rp` masked to 2 bits).
    pub fn to_raw(self) -> u32 {
        u32::from(self.ms) | (u32::from(self.lbads) << 16) | (u32::from(self.rp & 0b11) << 24)
    }

    /// Logical block data size in bytes (`2^LBADS`), or `None` if LBADS < 9 (per the
    /// specification the format is then unsupported) or > 63 (does not fit a `u64`).
    pub fn data_size(&self) -> Option<u64> {
        if (9..=63).contains(&self.lbads) {
            Some(1u64 << self.lbads)
        } else {
            None
        }
    }
}

/// Identify Namespace data structure for the NVM command set (CNS 00h), 4096 bytes: NVM
/// Command Set Specification 1.0 §4.1.5.1. Field names are the specification's,
/// in snake case.
///
/// An inactive (or unallocated) NSID returns an all-zero structure; it parses to a value
/// with `nsze == 0`, see [`IdentifyNamespace::is_active`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct IdentifyNamespace {
    /// NSZE (bytes 7:0): namespace size, logical blocks.
    pub nsze: u64,
    /// NCAP (bytes 15:8): namespace capacity, logical blocks.
    pub ncap: u64,
    /// NUSE (bytes 23:16): namespace utilization, logical blocks.
    pub nuse: u64,
    /// NSFEAT (byte 24): namespace features — bit 0 thin provisioning, bit 1 NAWUN/NAWUPF/
    /// NACWU valid, bit 2 deallocated/unwritten error, bit 3 NGUID/EUI64 never reused,
    /// bits 4:3 (1.0: bit 4) NPWG..NOWS valid.
    pub nsfeat: u8,
    /// NLBAF (byte 25): number of LBA formats, 0's based, as reported (may exceed 63 on a
    /// broken device; [`IdentifyNamespace::lba_formats`] is clamped).
    pub nlbaf: u8,
    /// FLBAS (byte 26): formatted LBA size — bits 3:0 format index (low), bit 4 metadata
    /// transferred at the end of the data LBA, bits 6:5 format index (high).
    pub flbas: u8,
    /// MC (byte 27): metadata capabilities — bit 0 extended LBA, bit 1 separate buffer.
    pub mc: u8,
    /// DPC (byte 28): end-to-end data protection capabilities, raw bits.
    pub dpc: u8,
    /// DPS (byte 29): data protection type settings — bits 2:0 PI type (0 = disabled),
    /// bit 3 PI in the first bytes of metadata.
    pub dps: u8,
    /// NMIC (byte 30): namespace multi-path I/O and sharing (bit 0: may be shared).
    pub nmic: u8,
    /// RESCAP (byte 31): reservation capabilities, raw bits.
    pub rescap: u8,
    /// FPI (byte 32): format progress indicator — bit 7 supported, bits 6:0 percent remaining.
    pub fpi: u8,
    /// DLFEAT (byte 33): deallocate logical block features — bits 2:0 value read from a
    /// deallocated block (1 = zeroes), bit 3 Write Zeroes may deallocate.
    pub dlfeat: u8,
    /// NAWUN (bytes 35:34): namespace atomic write unit normal, logical blocks, 0's based.
    pub nawun: u16,
    /// NAWUPF (bytes 37:36): namespace atomic write unit power fail, logical blocks,
    /// 0's based.
    pub nawupf: u16,
    /// NACWU (bytes 39:38): namespace atomic compare & write unit, logical blocks, 0's based.
    pub nacwu: u16,
    /// NABSN (bytes 41:40): namespace atomic boundary size normal, logical blocks,
    /// 0's based.
    pub nabsn: u16,
    /// NABO (bytes 43:42): namespace atomic boundary offset, logical blocks.
    pub nabo: u16,
    /// NABSPF (bytes 45:44): namespace atomic boundary size power fail, logical blocks,
    /// 0's based.
    pub nabspf: u16,
    /// NOIOB (bytes 47:46): namespace optimal I/O boundary, logical blocks (0 = none).
    pub noiob: u16,
    /// NVMCAP (bytes 63:48): NVM capacity, bytes (0 = not reported).
    pub nvmcap: u128,
    /// NPWG (bytes 65:64): namespace preferred write granularity, logical blocks, 0's based.
    pub npwg: u16,
    /// NPWA (bytes 67:66): namespace preferred write alignment, logical blocks, 0's based.
    pub npwa: u16,
    /// NPDG (bytes 69:68): namespace preferred deallocate granularity, logical blocks,
    /// 0's based.
    pub npdg: u16,
    /// NPDA (bytes 71:70): namespace preferred deallocate alignment, logical blocks,
    /// 0's based.
    pub npda: u16,
    /// NOWS (bytes 73:72): namespace optimal write size, logical blocks, 0's based.
    pub nows: u16,
    /// MSSRL (bytes 75:74): maximum single source range length for Copy, logical blocks.
    pub mssrl: u16,
    /// MCL (bytes 79:76): maximum copy length, logical blocks.
    pub mcl: u32,
    /// MSRC (byte 80): maximum source range count for Copy, 0's based.
    pub msrc: u8,
    /// NULBAF (byte 82): number of unique attribute LBA formats (formats beyond NLBAF
    /// that are reported separately), 0 when not reported.
    pub nulbaf: u8,
    /// ANAGRPID (bytes 95:92): ANA group identifier (0 = not in a group).
    pub anagrpid: u32,
    /// NSATTR (byte 99): namespace attributes (bit 0: write protected).
    pub nsattr: u8,
    /// NVMSETID (bytes 101:100): NVM set identifier.
    pub nvmsetid: u16,
    /// ENDGID (bytes 103:102): endurance group identifier.
    pub endgid: u16,
    /// NGUID (bytes 119:104): namespace globally unique identifier (all zero = none).
    pub nguid: [u8; 16],
    /// EUI64 (bytes 127:120): IEEE extended unique identifier (all zero = none).
    pub eui64: [u8; 8],
    /// LBAF0..LBAFn (bytes 383:128): the NLBAF + 1 supported LBA formats and the NULBAF
    /// unique attribute formats after them, clamped to the 64 descriptors the structure
    /// holds.
    pub lba_formats: Vec<LbaFormat>,
}

impl IdentifyNamespace {
    /// Offset in bytes of LBAF0.
    pub const LBAF_OFFSET: usize = 128;
    /// Number of LBA format descriptors the structure can hold.
    pub const MAX_LBA_FORMATS: usize = 64;

    /// Parses the 4096-byte Identify Namespace data structure. Longer buffers are accepted
    /// and the extra bytes ignored. An all-zero buffer (an inactive NSID) parses without
    /// error to a namespace with `nsze == 0`.
    ///
    /// # Errors
    /// [`ParseError::TooShort`] if `buf` holds fewer than [`IDENTIFY_DATA_LEN`] bytes.
    pub fn parse(buf: &[u8]) -> Result<IdentifyNamespace, ParseError> {
        need("Identify Namespace", buf, IDENTIFY_DATA_LEN)?;
        let nlbaf = buf[25];
        // NLBAF + 1 formats, then NULBAF unique attribute formats (NVMe 2.0 §5.17.2.1,
        // Figure 276), packed in order.
        let count = (usize::from(nlbaf) + usize::from(buf[82]) + 1).min(Self::MAX_LBA_FORMATS);
        let lba_formats = buf[Self::LBAF_OFFSET..Self::LBAF_OFFSET + 4 * count]
            .chunks_exact(4)
            .map(|c| LbaFormat::from_raw(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let mut nguid = [0u8; 16];
        nguid.copy_from_slice(&buf[104..120]);
        let mut eui64 = [0u8; 8];
        eui64.copy_from_slice(&buf[120..128]);
        Ok(IdentifyNamespace {
            nsze: le64(buf, 0),
            ncap: le64(buf, 8),
            nuse: le64(buf, 16),
            nsfeat: buf[24],
            nlbaf,
            flbas: buf[26],
            mc: buf[27],
            dpc: buf[28],
            dps: buf[29],
            nmic: buf[30],
            rescap: buf[31],
            fpi: buf[32],
            dlfeat: buf[33],
            nawun: le16(buf, 34),
            nawupf: le16(buf, 36),
            nacwu: le16(buf, 38),
            nabsn: le16(buf, 40),
            nabo: le16(buf, 42),
            nabspf: le16(buf, 44),
            noiob: le16(buf, 46),
            nvmcap: le128(buf, 48),
            npwg: le16(buf, 64),
            npwa: le16(buf, 66),
            npdg: le16(buf, 68),
            npda: le16(buf, 70),
            nows: le16(buf, 72),
            mssrl: le16(buf, 74),
            mcl: le32(buf, 76),
            msrc: buf[80],
            nulbaf: buf[82],
            anagrpid: le32(buf, 92),
            nsattr: buf[99],
            nvmsetid: le16(buf, 100),
            endgid: le16(buf, 102),
            nguid,
            eui64,
            lba_formats,
        })
    }

    /// True if the namespace is active (NSZE ≠ 0); the controller returns zeros for an
    /// inactive NSID.
    pub fn is_active(&self) -> bool {
        self.nsze != 0
    }

    /// Index of the LBA format the namespace is formatted with: FLBAS bits 3:0, with bits
    /// 6:5 as bits 5:4 of the index (used when more than 16 formats exist). 0..=63.
    pub fn current_format_index(&self) -> usize {
        usize::from(self.flbas & 0xf) | (usize::from((self.flbas >> 5) & 0b11) << 4)
    }

    /// The current LBA format, or `None` if FLBAS points past the reported formats.
    pub fn current_format(&self) -> Option<&LbaFormat> {
        self.lba_formats.get(self.current_format_index())
    }

    /// Logical block data size in bytes of the current format (512, 4096, ...), or `None`
    /// if the current format is missing or unsupported.
    pub fn block_size(&self) -> Option<u64> {
        self.current_format()?.data_size()
    }

    /// Metadata bytes per logical block of the current format, or `None` if the current
    /// format is missing.
    pub fn metadata_size(&self) -> Option<u16> {
        self.current_format().map(|f| f.ms)
    }

    /// FLBAS bit 4: metadata is transferred at the end of each data block (extended LBA)
    /// rather than in a separate buffer.
    pub fn metadata_extended(&self) -> bool {
        self.flbas & (1 << 4) != 0
    }

    /// Namespace size in bytes (NSZE × block size), or `None` if the block size is unknown
    /// or the product overflows a `u64`.
    pub fn capacity_bytes(&self) -> Option<u64> {
        self.nsze.checked_mul(self.block_size()?)
    }
}

// ---- metadata and protection information: I/O without a metadata buffer ---------------

impl IdentifyNamespace {
    /// The current format's metadata layout and protection information
    /// ([`crate::pi::MetadataFormat`]; none when the current format is missing).
    pub fn metadata_format(&self) -> crate::pi::MetadataFormat {
        crate::pi::MetadataFormat::from_identify(self.metadata_size().unwrap_or(0), self.flbas, self.dps)
    }

    /// Whether I/O without a metadata buffer works on this namespace
    /// ([`crate::pi::MetadataFormat::plain_io`]): no metadata, or 8 bytes of protection
    /// information that the controller inserts and strips (PRACT). Any other metadata
    /// needs a buffer: without one the controller would move NLB × (LBADS + MS) bytes into
    /// a buffer sized for NLB × LBADS (metadata at the end of each block, FLBAS bit 4), or
    /// write metadata to MPTR = 0 (separate metadata) — NVM Command Set Specification 1.0
    /// §5.2.3 and Base Specification 2.0 §5.2.3.
    ///
    /// The check every backend that sends NVMe commands (the VFIO driver, NVMe ioctl and
    /// io_uring passthrough) makes when a queue without metadata opens on the namespace.
    /// A namespace whose current format is missing passes: other checks refuse it. `nsid`
    /// only fills the error.
    ///
    /// Errors: [`MetadataUnsupported`], naming the format and a format to reformat to.
    pub fn check_plain_io(&self, nsid: u32) -> Result<(), MetadataUnsupported> {
        let Some(current) = self.current_format() else {
            return Ok(());
        };
        if self.metadata_format().plain_io() {
            return Ok(());
        }
        let usable = |f: &&LbaFormat| f.ms == 0 && f.data_size().is_some();
        let alternative = self
            .lba_formats
            .iter()
            .position(|f| usable(&f) && f.lbads == current.lbads)
            .or_else(|| self.lba_formats.iter().position(|f| usable(&f)))
            .map(|i| (i, self.lba_formats[i]));
        Err(MetadataUnsupported {
            nsid,
            format_index: self.current_format_index(),
            format: *current,
            extended: self.metadata_extended(),
            dps: self.dps,
            alternative,
            device: None,
        })
    }
}

/// A namespace whose metadata I/O without a metadata buffer cannot carry (see
/// [`IdentifyNamespace::check_plain_io`]). The message names the LBA format (index,
/// LBADS, MS, DPS), the tool that carries metadata, and how to reformat the namespace.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct MetadataUnsupported {
    /// Namespace ID.
    pub nsid: u32,
    /// Index of the namespace's current LBA format (FLBAS).
    pub format_index: usize,
    /// The current LBA format.
    pub format: LbaFormat,
    /// FLBAS bit 4: metadata at the end of each block (extended LBA), else a separate
    /// buffer.
    pub extended: bool,
    /// DPS (Identify Namespace byte 29): bits 2:0 protection information type, bit 3 PI
    /// position.
    pub dps: u8,
    /// A format of the namespace without metadata (the same data size if one exists):
    /// its index and descriptor; `None` if the namespace lists none.
    pub alternative: Option<(usize, LbaFormat)>,
    /// The device as `ironvme format` takes it (a PCI address, `/dev/nvmeX`), when known.
    pub device: Option<String>,
}

impl MetadataUnsupported {
    /// The same error, naming `device` in the reformatting command.
    pub fn on_device(mut self, device: impl Into<String>) -> MetadataUnsupported {
        self.device = Some(device.into());
        self
    }

    fn message(&self) -> String {
        let f = &self.format;
        let size = |f: &LbaFormat| f.data_size().map_or(String::new(), |b| format!(": {b}-byte blocks"));
        let metadata = match (f.ms, self.extended) {
            (0, _) => "MS 0: no metadata".to_string(),
            (ms, true) => format!("MS {ms}: {ms} bytes of metadata at the end of each block (extended LBA)"),
            (ms, false) => format!("MS {ms}: {ms} bytes of metadata per block in a separate buffer"),
        };
        let pi = match self.dps & 0x7 {
            0 => "no protection information".to_string(),
            t => format!("protection information type {t}"),
        };
        let mut m = format!(
            "namespace {} is formatted with LBA format {} (LBADS {}{}; {metadata}; DPS {:#04x}: {pi}): I/O without \
             a metadata buffer cannot carry it, so ironvme refuses plain I/O on this namespace (`ironvme verify` \
             carries metadata; so does the block interface's submit_with_metadata)",
            self.nsid,
            self.format_index,
            f.lbads,
            size(f),
            self.dps
        );
        match &self.alternative {
            Some((i, alt)) => {
                let dev = self.device.as_deref().unwrap_or("DEV");
                let nvme_dev = match self.device.as_deref() {
                    Some(d) if d.starts_with("/dev/nvme") => d,
                    _ => "/dev/nvmeX",
                };
                m.push_str(&format!(
                    ". Reformat it to LBA format {i} (LBADS {}{}, no metadata), which ERASES the namespace: \
                     `ironvme format {dev} --nsid {} --lbaf {i}`, or with nvme-cli \
                     `nvme format {nvme_dev} -n {} -l {i}`",
                    alt.lbads,
                    size(alt),
                    self.nsid,
                    self.nsid
                ));
            }
            None => m.push_str(". The namespace lists no LBA format without metadata"),
        }
        m
    }
}

/// The Active Namespace ID list (CNS 02h, Base 2.0 §5.17.2.2): up to 1024 NSIDs as
/// little-endian `u32`s in one 4096-byte page, in strictly increasing order, the unused
/// tail zero-filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NamespaceList;

impl NamespaceList {
    /// Maximum number of entries in one list (4096 / 4).
    pub const MAX_ENTRIES: usize = IDENTIFY_DATA_LEN / 4;

    /// Parses an Active Namespace ID list into its NSIDs, in increasing order.
    ///
    /// Accepts any length that is a multiple of 4 bytes up to 4096 (a truncated list is
    /// parsed as far as it goes); the list ends at the first zero entry or the end of the
    /// buffer, and entries after a zero are ignored.
    ///
    /// # Errors
    /// [`ParseError::Invalid`] if the length is not a multiple of 4 or exceeds 4096 bytes,
    /// if the NSIDs are not strictly increasing (the specification requires increasing
    /// order), or if an entry is the broadcast NSID FFFFFFFFh.
    pub fn parse(buf: &[u8]) -> Result<Vec<u32>, ParseError> {
        const WHAT: &str = "Active Namespace ID list";
        if buf.len() % 4 != 0 || buf.len() > IDENTIFY_DATA_LEN {
            return Err(ParseError::Invalid {
                what: WHAT,
                reason: format!(
                    "length {} is not a multiple of 4 bytes up to {IDENTIFY_DATA_LEN}",
                    buf.len()
                ),
            });
        }
        let mut nsids = Vec::new();
        for c in buf.chunks_exact(4) {
            let nsid = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            if nsid == 0 {
                break;
            }
            if nsid == u32::MAX {
                return Err(ParseError::Invalid {
                    what: WHAT,
                    reason: "entry is the broadcast NSID FFFFFFFFh".to_string(),
                });
            }
            let prev = nsids.last().copied().unwrap_or(0);
            if nsid <= prev {
                return Err(ParseError::Invalid {
                    what: WHAT,
                    reason: format!("NSID {nsid} follows {prev}; the list must be increasing"),
                });
            }
            nsids.push(nsid);
        }
        Ok(nsids)
    }
}

/// One Namespace Identification Descriptor (CNS 03h, Base 2.0 §5.17.2.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum NamespaceDescriptor {
    /// NIDT 1h: IEEE Extended Unique Identifier, NIDL 8.
    Eui64([u8; 8]),
    /// NIDT 2h: Namespace Globally Unique Identifier, NIDL 16.
    Nguid([u8; 16]),
    /// NIDT 3h: Namespace UUID (RFC 4122), NIDL 16.
    Uuid([u8; 16]),
    /// NIDT 4h: Command Set Identifier (0 = NVM, 2 = Zoned Namespace), NIDL 1.
    Csi(u8),
    /// Any other NIDT, kept with its raw NID bytes.
    Unknown {
        /// Namespace Identifier Type.
        nidt: u8,
        /// The NIDL bytes of the Namespace Identifier.
        nid: Vec<u8>,
    },
}

impl NamespaceDescriptor {
    /// NIDT value for an IEEE EUI-64.
    pub const NIDT_EUI64: u8 = 0x1;
    /// NIDT value for an NGUID.
    pub const NIDT_NGUID: u8 = 0x2;
    /// NIDT value for a UUID.
    pub const NIDT_UUID: u8 = 0x3;
    /// NIDT value for a Command Set Identifier.
    pub const NIDT_CSI: u8 = 0x4;

    /// The descriptor's Namespace Identifier Type.
    pub fn nidt(&self) -> u8 {
        match self {
            NamespaceDescriptor::Eui64(_) => Self::NIDT_EUI64,
            NamespaceDescriptor::Nguid(_) => Self::NIDT_NGUID,
            NamespaceDescriptor::Uuid(_) => Self::NIDT_UUID,
            NamespaceDescriptor::Csi(_) => Self::NIDT_CSI,
            NamespaceDescriptor::Unknown { nidt, .. } => *nidt,
        }
    }
}

/// Parses a Namespace Identification Descriptor list (CNS 03h, Base 2.0 §5.17.2.3).
///
/// Each descriptor is a 4-byte header — NIDT (byte 0), NIDL (byte 1, length of NID in
/// bytes), 2 reserved bytes — followed by NIDL bytes of NID. The list ends at a descriptor
/// with NIDT 0 or at the end of the buffer (normally 4096 bytes, but any length is
/// accepted).
///
/// # Errors
/// [`ParseError::Invalid`] if a known NIDT has the wrong NIDL (EUI64 8, NGUID 16, UUID 16,
/// CSI 1); [`ParseError::TooShort`] if a descriptor header or its NID runs past the end of
/// the buffer.
pub fn parse_namespace_descriptors(buf: &[u8]) -> Result<Vec<NamespaceDescriptor>, ParseError> {
    const WHAT: &str = "Namespace Identification Descriptor";
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < buf.len() {
        let rest = &buf[off..];
        let nidt = rest[0];
        if nidt == 0 {
            break;
        }
        need(WHAT, rest, 4)?;
        let nidl = usize::from(rest[1]);
        let total = 4 + nidl;
        need(WHAT, rest, total)?;
        let nid = &rest[4..total];
        let wrong_len = |expected: usize| ParseError::Invalid {
            what: WHAT,
            reason: format!("NIDT {nidt:#x} has NIDL {nidl}, expected {expected}"),
        };
        let desc = match nidt {
            NamespaceDescriptor::NIDT_EUI64 => NamespaceDescriptor::Eui64(nid.try_into().map_err(|_| wrong_len(8))?),
            NamespaceDescriptor::NIDT_NGUID => NamespaceDescriptor::Nguid(nid.try_into().map_err(|_| wrong_len(16))?),
            NamespaceDescriptor::NIDT_UUID => NamespaceDescriptor::Uuid(nid.try_into().map_err(|_| wrong_len(16))?),
            NamespaceDescriptor::NIDT_CSI => match nid {
                [csi] => NamespaceDescriptor::Csi(*csi),
                _ => return Err(wrong_len(1)),
            },
            _ => NamespaceDescriptor::Unknown {
                nidt,
                nid: nid.to_vec(),
            },
        };
        out.push(desc);
        off += total;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn put16(b: &mut [u8], off: usize, v: u16) {
        b[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn put32(b: &mut [u8], off: usize, v: u32) {
        b[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn put64(b: &mut [u8], off: usize, v: u64) {
        b[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn put_str(b: &mut [u8], off: usize, len: usize, s: &str, pad: u8) {
        let field = &mut b[off..off + len];
        field.fill(pad);
        field[..s.len()].copy_from_slice(s.as_bytes());
    }

    /// Identify Controller modelled on QEMU 7.2's (`-device nvme,serial=ironvme0`).
    fn qemu_ctrl() -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_DATA_LEN];
        put16(&mut b, 0, 0x1b36);
        put16(&mut b, 2, 0x1af4);
        put_str(&mut b, 4, 20, "ironvme0", b' ');
        put_str(&mut b, 24, 40, "QEMU NVMe Ctrl", b' ');
        put_str(&mut b, 64, 8, "1.0", b' ');
        b[72] = 6;
        b[73..76].copy_from_slice(&[0x00, 0x54, 0x52]);
        b[77] = 7;
        put32(&mut b, 80, 0x0001_0400);
        put16(&mut b, 256, 0x010a);
        b[258] = 3;
        b[259] = 3;
        b[260] = 0x03;
        b[261] = 0x07;
        b[262] = 3;
        put16(&mut b, 266, 0x0157);
        put16(&mut b, 268, 0x0175);
        b[512] = 0x66;
        b[513] = 0x44;
        put32(&mut b, 516, 256);
        put16(&mut b, 520, 0x015d);
        b[525] = 0x07;
        put32(&mut b, 536, 0x0001_0001);
        put_str(&mut b, 768, 256, "nqn.2019-08.org.qemu:ironvme0", 0);
        put16(&mut b, 2048, 0x9c4);
        put32(&mut b, 2048 + 4, 0x10);
        put32(&mut b, 2048 + 8, 0x4);
        b
    }

    #[test]
    fn cns_values() {
        assert_eq!(Cns::NAMESPACE.0, 0);
        assert_eq!(Cns::CONTROLLER.0, 1);
        assert_eq!(Cns::ACTIVE_NAMESPACE_LIST.0, 2);
        assert_eq!(Cns::NAMESPACE_ID_DESCRIPTORS.0, 3);
    }

    #[test]
    fn qemu_controller() {
        let id = IdentifyController::parse(&qemu_ctrl()).unwrap();
        assert_eq!(id.vid, 0x1b36);
        assert_eq!(id.ssvid, 0x1af4);
        assert_eq!(id.sn, "ironvme0");
        assert_eq!(id.mn, "QEMU NVMe Ctrl");
        assert_eq!(id.fr, "1.0");
        assert_eq!(id.rab, 6);
        assert_eq!(id.ieee, [0x00, 0x54, 0x52]);
        assert_eq!(id.mdts, 7);
        assert_eq!(id.version(), (1, 4, 0));
        assert_eq!(
            id.oacs,
            Oacs::FORMAT_NVM | Oacs::NAMESPACE_MANAGEMENT | Oacs::DOORBELL_BUFFER_CONFIG
        );
        assert_eq!(
            id.frmw,
            Frmw {
                slot1_read_only: true,
                num_slots: 1,
                activation_without_reset: false,
                multiple_update_detection: false
            }
        );
        assert_eq!(
            id.lpa,
            Lpa::SMART_PER_NAMESPACE | Lpa::COMMANDS_EFFECTS | Lpa::EXTENDED_DATA
        );
        assert_eq!(id.elpe, 3);
        assert_eq!(id.wctemp, 343);
        assert_eq!(id.cctemp, 373);
        assert_eq!(id.sqes, 0x66);
        assert_eq!(id.cqes, 0x44);
        assert_eq!(id.sqe_sizes(), (6, 6));
        assert_eq!(id.cqe_sizes(), (4, 4));
        assert_eq!(id.nn, 256);
        assert_eq!(
            id.oncs,
            Oncs::COMPARE
                | Oncs::DATASET_MANAGEMENT
                | Oncs::WRITE_ZEROES
                | Oncs::SAVE_SELECT_FEATURES
                | Oncs::TIMESTAMP
                | Oncs::COPY
        );
        assert!(!id.oncs.contains(Oncs::VERIFY));
        assert!(id.vwc_present());
        assert_eq!(id.flush_broadcast_supported(), Some(true));
        assert!(id.sgl_supported());
        assert!(!id.sgl_dword_aligned_required());
        assert_eq!(id.subnqn, "nqn.2019-08.org.qemu:ironvme0");
        // 4 KiB × 2^7 = 512 KiB.
        assert_eq!(id.max_transfer_bytes(4096), Some(512 * 1024));
        assert_eq!(id.npss, 0);
        assert_eq!(id.psd.len(), 1);
        assert_eq!(id.psd[0].mp, 0x9c4);
        assert_eq!(id.psd[0].max_power_microwatts(), 25_000_000);
        assert_eq!(id.psd[0].enlat, 16);
        assert_eq!(id.psd[0].exlat, 4);
        assert!(!id.psd[0].non_operational());
    }

    #[test]
    fn controller_too_short() {
        let b = vec![0u8; IDENTIFY_DATA_LEN - 1];
        assert_eq!(
            IdentifyController::parse(&b),
            Err(ParseError::TooShort {
                what: "Identify Controller",
                needed: IDENTIFY_DATA_LEN,
                got: IDENTIFY_DATA_LEN - 1
            })
        );
    }

    #[test]
    fn controller_power_states_clamped() {
        let mut b = qemu_ctrl();
        b[263] = 0xff;
        let last = 2048 + 31 * 32;
        put16(&mut b, last, 1234);
        b[last + 3] = 0x03;
        let id = IdentifyController::parse(&b).unwrap();
        assert_eq!(id.psd.len(), 32);
        assert_eq!(id.psd[31].mp, 1234);
        assert!(id.psd[31].non_operational());
        assert_eq!(id.psd[31].max_power_microwatts(), 123_400);
    }

    #[test]
    fn power_state_descriptor_fields() {
        let mut b = qemu_ctrl();
        let p = 2048 + 32;
        b[263] = 1;
        put16(&mut b, p, 500);
        b[p + 12] = 0xe1;
        b[p + 13] = 2;
        b[p + 14] = 3;
        b[p + 15] = 4;
        put16(&mut b, p + 16, 77);
        b[p + 18] = 0b1000_0000;
        put16(&mut b, p + 20, 88);
        b[p + 22] = 0b0100_0101;
        let psd = IdentifyController::parse(&b).unwrap().psd[1];
        assert_eq!((psd.rrt, psd.rrl, psd.rwt, psd.rwl), (1, 2, 3, 4));
        assert_eq!((psd.idlp, psd.ips, psd.actp, psd.apw, psd.aps), (77, 2, 88, 5, 1));
    }

    #[test]
    fn mdts_limits() {
        let mut id = IdentifyController::parse(&qemu_ctrl()).unwrap();
        id.mdts = 0;
        assert_eq!(id.max_transfer_bytes(4096), None);
        id.mdts = 51;
        assert_eq!(id.max_transfer_bytes(4096), Some(1 << 63));
        id.mdts = 52;
        assert_eq!(id.max_transfer_bytes(4096), None);
        id.mdts = 255;
        assert_eq!(id.max_transfer_bytes(1), None);
        id.mdts = 1;
        assert_eq!(id.max_transfer_bytes(0), Some(0));
    }

    #[test]
    fn sgl_alignment() {
        let mut id = IdentifyController::parse(&qemu_ctrl()).unwrap();
        id.sgls = 0b10;
        assert!(id.sgl_supported() && id.sgl_dword_aligned_required());
        id.sgls = 0x0001_0000;
        assert!(!id.sgl_supported());
    }

    #[test]
    fn frmw_round_trip() {
        for raw in 0u8..0x40 {
            assert_eq!(Frmw::from_raw(raw).to_raw(), raw);
        }
    }

    /// Identify Namespace as QEMU 7.2 reports a 1 GiB drive with 512-byte blocks: eight LBA
    /// formats (512/4096 B with 0/8/16/64 B of metadata), format 0 in use.
    fn qemu_ns() -> Vec<u8> {
        let mut b = vec![0u8; IDENTIFY_DATA_LEN];
        let blocks = (1u64 << 30) / 512;
        put64(&mut b, 0, blocks);
        put64(&mut b, 8, blocks);
        put64(&mut b, 16, blocks);
        b[24] = 0x14;
        b[25] = 7;
        b[33] = 0x09;
        put16(&mut b, 74, 128);
        put32(&mut b, 76, 128);
        b[80] = 127;
        let formats = [
            (0u16, 9u8),
            (8, 9),
            (16, 9),
            (64, 9),
            (0, 12),
            (8, 12),
            (16, 12),
            (64, 12),
        ];
        for (i, (ms, lbads)) in formats.iter().enumerate() {
            put32(
                &mut b,
                128 + 4 * i,
                LbaFormat {
                    ms: *ms,
                    lbads: *lbads,
                    rp: 0,
                }
                .to_raw(),
            );
        }
        b[104..120].copy_from_slice(&[0xab; 16]);
        b[120..128].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        b
    }

    #[test]
    fn qemu_namespace() {
        let ns = IdentifyNamespace::parse(&qemu_ns()).unwrap();
        assert!(ns.is_active());
        assert_eq!(ns.nsze, 2 * 1024 * 1024);
        assert_eq!(ns.nlbaf, 7);
        assert_eq!(ns.lba_formats.len(), 8);
        assert_eq!(ns.current_format_index(), 0);
        assert_eq!(ns.block_size(), Some(512));
        assert_eq!(ns.metadata_size(), Some(0));
        assert_eq!(ns.capacity_bytes(), Some(1 << 30));
        assert_eq!(ns.dlfeat, 0x09);
        assert_eq!((ns.mssrl, ns.mcl, ns.msrc), (128, 128, 127));
        assert_eq!(ns.nguid, [0xab; 16]);
        assert_eq!(ns.eui64, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            ns.lba_formats[7],
            LbaFormat {
                ms: 64,
                lbads: 12,
                rp: 0
            }
        );
    }

    #[test]
    fn namespace_4k_with_metadata() {
        let mut b = qemu_ns();
        b[26] = 5 | (1 << 4);
        let ns = IdentifyNamespace::parse(&b).unwrap();
        assert_eq!(ns.current_format_index(), 5);
        assert_eq!(ns.block_size(), Some(4096));
        assert_eq!(ns.metadata_size(), Some(8));
        assert!(ns.metadata_extended());
        assert_eq!(ns.capacity_bytes(), Some((1 << 30) * 8));
    }

    #[test]
    fn metadata_and_protection_information_are_refused_naming_the_format() {
        let mut b = qemu_ns();
        assert_eq!(IdentifyNamespace::parse(&b).unwrap().check_plain_io(1), Ok(()));
        b[26] = 4;
        assert_eq!(IdentifyNamespace::parse(&b).unwrap().check_plain_io(1), Ok(()));
        // 4096 + 8 bytes at the end of each block: the 4096-byte format without metadata
        // (index 4) is offered.
        b[26] = 5 | (1 << 4);
        let e = IdentifyNamespace::parse(&b).unwrap().check_plain_io(2).unwrap_err();
        assert_eq!(
            (e.format_index, e.format.ms, e.format.lbads, e.extended),
            (5, 8, 12, true)
        );
        assert_eq!(e.alternative.map(|(i, _)| i), Some(4));
        assert_eq!(
            e.clone().on_device("/dev/nvme1").to_string(),
            "namespace 2 is formatted with LBA format 5 (LBADS 12: 4096-byte blocks; MS 8: 8 bytes of metadata at \
             the end of each block (extended LBA); DPS 0x00: no protection information): I/O without a metadata buffer \
             cannot carry it, so ironvme refuses plain I/O on this namespace (`ironvme verify` carries metadata; so \
             does the block interface's submit_with_metadata). Reformat it to LBA format 4 (LBADS 12: 4096-byte blocks, no metadata), which ERASES the namespace: `ironvme format \
             /dev/nvme1 --nsid 2 --lbaf 4`, or with nvme-cli `nvme format /dev/nvme1 -n 2 -l 4`"
        );
        let msg = e.on_device("0000:00:05.0").to_string();
        assert!(msg.contains("`ironvme format 0000:00:05.0 --nsid 2 --lbaf 4`"), "{msg}");
        assert!(msg.contains("`nvme format /dev/nvmeX -n 2 -l 4`"), "{msg}");
        // Separate metadata with PI type 1: the controller inserts and strips the 8 bytes.
        b[26] = 1;
        b[29] = 1;
        assert_eq!(IdentifyNamespace::parse(&b).unwrap().check_plain_io(1), Ok(()));
        // 8 bytes of separate metadata without PI need a buffer.
        b[29] = 0;
        let e = IdentifyNamespace::parse(&b).unwrap().check_plain_io(1).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("LBA format 1 (LBADS 9: 512-byte blocks; MS 8: 8 bytes of metadata per block in a separate buffer; DPS 0x00: no protection information)"), "{msg}");
        assert!(msg.contains("--lbaf 0`") && msg.contains("ironvme format DEV"), "{msg}");
        b[29] = 1;
        // DPS alone (PI without metadata) is refused too.
        b[26] = 0;
        assert!(IdentifyNamespace::parse(&b).unwrap().check_plain_io(1).is_err());
        // Bit 3 (PI in the first bytes of metadata) with PI type 0 and no metadata is fine;
        // with a PI type and no metadata it is refused.
        b[29] = 0x08;
        assert_eq!(IdentifyNamespace::parse(&b).unwrap().check_plain_io(1), Ok(()));
        b[29] = 0x09;
        assert!(IdentifyNamespace::parse(&b).unwrap().check_plain_io(1).is_err());
        // No format without metadata: said so.
        b[29] = 0;
        b[26] = 1;
        b[25] = 0;
        put32(&mut b, 128, LbaFormat { ms: 8, lbads: 9, rp: 0 }.to_raw());
        b[26] = 0;
        let e = IdentifyNamespace::parse(&b).unwrap().check_plain_io(1).unwrap_err();
        assert!(e.to_string().ends_with("lists no LBA format without metadata"), "{e}");
    }

    #[test]
    fn namespace_high_format_index() {
        let mut b = qemu_ns();
        b[25] = 63;
        put32(
            &mut b,
            128 + 4 * 0x23,
            LbaFormat {
                ms: 0,
                lbads: 12,
                rp: 2,
            }
            .to_raw(),
        );
        b[26] = 0x03 | (0b01 << 5) | (1 << 7);
        let ns = IdentifyNamespace::parse(&b).unwrap();
        assert_eq!(ns.lba_formats.len(), 64);
        assert_eq!(ns.current_format_index(), 0x13);
        b[26] = 0x03 | (0b10 << 5);
        let ns = IdentifyNamespace::parse(&b).unwrap();
        assert_eq!(ns.current_format_index(), 0x23);
        assert_eq!(ns.current_format().map(|f| f.rp), Some(2));
        assert_eq!(ns.block_size(), Some(4096));
    }

    #[test]
    fn namespace_nlbaf_clamped_and_index_out_of_range() {
        let mut b = qemu_ns();
        b[25] = 0xff;
        let ns = IdentifyNamespace::parse(&b).unwrap();
        assert_eq!(ns.nlbaf, 0xff);
        assert_eq!(ns.lba_formats.len(), 64);
        b[25] = 0;
        b[26] = 3;
        let ns = IdentifyNamespace::parse(&b).unwrap();
        assert_eq!(ns.current_format(), None);
        assert_eq!(ns.block_size(), None);
        assert_eq!(ns.metadata_size(), None);
        assert_eq!(ns.capacity_bytes(), None);
    }

    #[test]
    fn inactive_namespace_is_zeroes() {
        let ns = IdentifyNamespace::parse(&[0u8; IDENTIFY_DATA_LEN]).unwrap();
        assert_eq!(ns.nsze, 0);
        assert!(!ns.is_active());
        assert_eq!(ns.lba_formats, vec![LbaFormat { ms: 0, lbads: 0, rp: 0 }]);
        assert_eq!(ns.block_size(), None);
        assert_eq!(ns.capacity_bytes(), None);
    }

    #[test]
    fn namespace_capacity_overflow() {
        let mut b = qemu_ns();
        put64(&mut b, 0, u64::MAX / 2);
        let ns = IdentifyNamespace::parse(&b).unwrap();
        assert_eq!(ns.capacity_bytes(), None);
    }

    #[test]
    fn lba_format_data_size() {
        let f = |lbads| LbaFormat { ms: 0, lbads, rp: 0 }.data_size();
        assert_eq!(f(0), None);
        assert_eq!(f(8), None);
        assert_eq!(f(9), Some(512));
        assert_eq!(f(12), Some(4096));
        assert_eq!(f(63), Some(1 << 63));
        assert_eq!(f(64), None);
        assert_eq!(f(255), None);
        assert_eq!(
            LbaFormat::from_raw(0xffff_ffff),
            LbaFormat {
                ms: 0xffff,
                lbads: 0xff,
                rp: 3
            }
        );
    }

    #[test]
    fn namespace_list() {
        let mut b = vec![0u8; IDENTIFY_DATA_LEN];
        put32(&mut b, 0, 1);
        put32(&mut b, 4, 2);
        put32(&mut b, 8, 7);
        put32(&mut b, 16, 3); // after the terminating zero: ignored
        assert_eq!(NamespaceList::parse(&b), Ok(vec![1, 2, 7]));
        assert_eq!(NamespaceList::parse(&b[..8]), Ok(vec![1, 2]));
        assert_eq!(NamespaceList::parse(&[]), Ok(vec![]));
        assert_eq!(NamespaceList::parse(&[0u8; IDENTIFY_DATA_LEN]), Ok(vec![]));
    }

    #[test]
    fn namespace_list_full() {
        let b: Vec<u8> = (1..=1024u32).flat_map(u32::to_le_bytes).collect();
        let ids = NamespaceList::parse(&b).unwrap();
        assert_eq!(ids.len(), NamespaceList::MAX_ENTRIES);
        assert_eq!(ids[1023], 1024);
    }

    #[test]
    fn namespace_list_rejects() {
        let mut b = vec![0u8; 12];
        put32(&mut b, 0, 5);
        put32(&mut b, 4, 5);
        assert!(matches!(NamespaceList::parse(&b), Err(ParseError::Invalid { .. })));
        put32(&mut b, 4, 4);
        assert!(matches!(NamespaceList::parse(&b), Err(ParseError::Invalid { .. })));
        put32(&mut b, 4, u32::MAX);
        assert!(matches!(NamespaceList::parse(&b), Err(ParseError::Invalid { .. })));
        assert!(matches!(NamespaceList::parse(&b[..5]), Err(ParseError::Invalid { .. })));
        let big = vec![0u8; IDENTIFY_DATA_LEN + 4];
        assert!(matches!(NamespaceList::parse(&big), Err(ParseError::Invalid { .. })));
    }

    fn encode_descriptors(descs: &[NamespaceDescriptor]) -> Vec<u8> {
        let mut b = Vec::new();
        for d in descs {
            let nid: Vec<u8> = match d {
                NamespaceDescriptor::Eui64(a) => a.to_vec(),
                NamespaceDescriptor::Nguid(a) | NamespaceDescriptor::Uuid(a) => a.to_vec(),
                NamespaceDescriptor::Csi(c) => vec![*c],
                NamespaceDescriptor::Unknown { nid, .. } => nid.clone(),
            };
            b.extend_from_slice(&[d.nidt(), nid.len() as u8, 0, 0]);
            b.extend_from_slice(&nid);
        }
        b
    }

    #[test]
    fn namespace_descriptors_qemu_like() {
        let descs = vec![
            NamespaceDescriptor::Uuid([0x11; 16]),
            NamespaceDescriptor::Nguid([0x22; 16]),
            NamespaceDescriptor::Eui64([0x33; 8]),
            NamespaceDescriptor::Csi(0),
        ];
        let mut b = encode_descriptors(&descs);
        b.resize(IDENTIFY_DATA_LEN, 0);
        assert_eq!(parse_namespace_descriptors(&b), Ok(descs));
    }

    #[test]
    fn namespace_descriptors_unknown_and_end_of_buffer() {
        let descs = vec![
            NamespaceDescriptor::Unknown {
                nidt: 0x9,
                nid: vec![1, 2, 3],
            },
            NamespaceDescriptor::Unknown { nidt: 0xa, nid: vec![] },
            NamespaceDescriptor::Csi(2),
        ];
        let b = encode_descriptors(&descs);
        assert_eq!(parse_namespace_descriptors(&b), Ok(descs));
        assert_eq!(parse_namespace_descriptors(&[]), Ok(vec![]));
        assert_eq!(parse_namespace_descriptors(&[0]), Ok(vec![]));
    }

    #[test]
    fn namespace_descriptors_errors() {
        // Wrong NIDL for a UUID.
        let mut b = vec![3, 8, 0, 0];
        b.extend_from_slice(&[0; 8]);
        assert!(matches!(
            parse_namespace_descriptors(&b),
            Err(ParseError::Invalid { .. })
        ));
        // NID runs past the end.
        let b = [1u8, 8, 0, 0, 1, 2, 3];
        assert!(matches!(
            parse_namespace_descriptors(&b),
            Err(ParseError::TooShort { .. })
        ));
        // Header cut short.
        let b = [4u8, 1];
        assert!(matches!(
            parse_namespace_descriptors(&b),
            Err(ParseError::TooShort { .. })
        ));
    }

    fn arb_descriptor() -> impl Strategy<Value = NamespaceDescriptor> {
        prop_oneof![
            any::<[u8; 8]>().prop_map(NamespaceDescriptor::Eui64),
            any::<[u8; 16]>().prop_map(NamespaceDescriptor::Nguid),
            any::<[u8; 16]>().prop_map(NamespaceDescriptor::Uuid),
            any::<u8>().prop_map(NamespaceDescriptor::Csi),
            (5u8.., proptest::collection::vec(any::<u8>(), 0..=255))
                .prop_map(|(nidt, nid)| NamespaceDescriptor::Unknown { nidt, nid }),
        ]
    }

    proptest! {
        #[test]
        fn controller_parse_is_total(buf in proptest::collection::vec(any::<u8>(), 0..=8192)) {
            let r = IdentifyController::parse(&buf);
            prop_assert_eq!(r.is_ok(), buf.len() >= IDENTIFY_DATA_LEN);
            if let Ok(id) = r {
                prop_assert!(id.psd.len() <= 32);
                let _ = id.max_transfer_bytes(4096);
                let _ = id.max_transfer_bytes(u64::MAX);
                let _ = id.version();
            }
        }

        #[test]
        fn namespace_parse_is_total(buf in proptest::collection::vec(any::<u8>(), 0..=8192)) {
            let r = IdentifyNamespace::parse(&buf);
            prop_assert_eq!(r.is_ok(), buf.len() >= IDENTIFY_DATA_LEN);
            if let Ok(ns) = r {
                prop_assert!(ns.lba_formats.len() <= 64);
                prop_assert!(ns.current_format_index() < 64);
                let _ = (ns.block_size(), ns.metadata_size(), ns.capacity_bytes());
            }
        }

        #[test]
        fn namespace_list_parse_is_total(buf in proptest::collection::vec(any::<u8>(), 0..=8192)) {
            if let Ok(ids) = NamespaceList::parse(&buf) {
                prop_assert!(ids.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(ids.len() <= NamespaceList::MAX_ENTRIES);
            }
        }

        #[test]
        fn descriptors_parse_is_total(buf in proptest::collection::vec(any::<u8>(), 0..=8192)) {
            let _ = parse_namespace_descriptors(&buf);
        }

        #[test]
        fn controller_round_trip(
            vid: u16, ssvid: u16, mdts: u8, cntlid: u16, ver: u32, oacs: u16, npss: u8,
            sqes: u8, cqes: u8, nn: u32, oncs: u16, vwc: u8, sgls: u32, tnvmcap: u128,
            sn in "[ -~]{0,20}", mp: u16,
        ) {
            let mut b = vec![0u8; IDENTIFY_DATA_LEN];
            put16(&mut b, 0, vid);
            put16(&mut b, 2, ssvid);
            put_str(&mut b, 4, 20, &sn, b' ');
            b[77] = mdts;
            put16(&mut b, 78, cntlid);
            put32(&mut b, 80, ver);
            put16(&mut b, 256, oacs);
            b[263] = npss;
            b[280..296].copy_from_slice(&tnvmcap.to_le_bytes());
            b[512] = sqes;
            b[513] = cqes;
            put32(&mut b, 516, nn);
            put16(&mut b, 520, oncs);
            b[525] = vwc;
            put32(&mut b, 536, sgls);
            let last = usize::from(npss).min(31);
            put16(&mut b, 2048 + 32 * last, mp);
            let id = IdentifyController::parse(&b).unwrap();
            prop_assert_eq!(id.vid, vid);
            prop_assert_eq!(id.ssvid, ssvid);
            prop_assert_eq!(id.sn.as_str(), sn.trim());
            prop_assert_eq!(id.mdts, mdts);
            prop_assert_eq!(id.cntlid, cntlid);
            prop_assert_eq!(id.ver, ver);
            prop_assert_eq!(id.oacs.bits(), oacs);
            prop_assert_eq!(id.psd.len(), last + 1);
            prop_assert_eq!(id.psd[last].mp, mp);
            prop_assert_eq!(id.tnvmcap, tnvmcap);
            prop_assert_eq!((id.sqes, id.cqes, id.nn), (sqes, cqes, nn));
            prop_assert_eq!(id.oncs.bits(), oncs);
            prop_assert_eq!(id.vwc_present(), vwc & 1 == 1);
            prop_assert_eq!(id.sgls, sgls);
        }

        #[test]
        fn namespace_round_trip(
            nsze: u64, ncap: u64, nuse: u64, flbas: u8, nvmcap: u128, anagrpid: u32,
            formats in proptest::collection::vec((any::<u16>(), any::<u8>(), 0u8..4), 1..=64),
        ) {
            let mut b = vec![0u8; IDENTIFY_DATA_LEN];
            put64(&mut b, 0, nsze);
            put64(&mut b, 8, ncap);
            put64(&mut b, 16, nuse);
            b[25] = (formats.len() - 1) as u8;
            b[26] = flbas;
            b[48..64].copy_from_slice(&nvmcap.to_le_bytes());
            put32(&mut b, 92, anagrpid);
            let formats: Vec<LbaFormat> =
                formats.into_iter().map(|(ms, lbads, rp)| LbaFormat { ms, lbads, rp }).collect();
            for (i, f) in formats.iter().enumerate() {
                put32(&mut b, 128 + 4 * i, f.to_raw());
            }
            let ns = IdentifyNamespace::parse(&b).unwrap();
            prop_assert_eq!((ns.nsze, ns.ncap, ns.nuse), (nsze, ncap, nuse));
            prop_assert_eq!(ns.nvmcap, nvmcap);
            prop_assert_eq!(ns.anagrpid, anagrpid);
            prop_assert_eq!(ns.is_active(), nsze != 0);
            prop_assert_eq!(&ns.lba_formats, &formats);
            let idx = ns.current_format_index();
            prop_assert_eq!(ns.current_format(), formats.get(idx));
            if let (Some(bs), Some(cap)) = (ns.block_size(), ns.capacity_bytes()) {
                prop_assert_eq!(u128::from(cap), u128::from(nsze) * u128::from(bs));
            }
        }

        #[test]
        fn namespace_list_round_trip(
            ids in proptest::collection::btree_set(1u32..u32::MAX, 0..=1024),
        ) {
            let ids: Vec<u32> = ids.into_iter().collect();
            let mut b: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
            b.resize(IDENTIFY_DATA_LEN, 0);
            prop_assert_eq!(NamespaceList::parse(&b), Ok(ids));
        }

        #[test]
        fn descriptors_round_trip(descs in proptest::collection::vec(arb_descriptor(), 0..8)) {
            let mut b = encode_descriptors(&descs);
            let exact = parse_namespace_descriptors(&b);
            prop_assert_eq!(exact, Ok(descs.clone()));
            b.resize(b.len() + 4096, 0);
            prop_assert_eq!(parse_namespace_descriptors(&b), Ok(descs));
        }
    }
}
