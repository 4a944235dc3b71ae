//! Feature identifiers and values for Get Features (admin opcode 0Ah) and Set Features
//! (admin opcode 09h), NVMe Base Specification 2.0 §5.27.1.
//!
//! A feature value travels in Set Features CDW11 and comes back from Get Features in
//! completion DW0. Each value type here decodes any `u32` with `from_dw0` (total: no value
//! is rejected) and encodes itself for CDW11 with `to_dw11`, masking fields to their
//! widths. The Timestamp feature uses an 8-byte data buffer instead, see [`Timestamp`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::parse::{ParseError, need};

/// Feature Identifier (FID), CDW10 bits 7:0 of Get/Set Features (Base 2.0 §5.27.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct FeatureId(pub u8);

impl FeatureId {
    /// 01h: Arbitration (§5.27.1.1), see [`Arbitration`].
    pub const ARBITRATION: FeatureId = FeatureId(0x01);
    /// 02h: Power Management (§5.27.1.2), see [`PowerManagement`].
    pub const POWER_MANAGEMENT: FeatureId = FeatureId(0x02);
    /// 03h: LBA Range Type (§5.27.1.3), data buffer of 64-byte entries.
    pub const LBA_RANGE_TYPE: FeatureId = FeatureId(0x03);
    /// 04h: Temperature Threshold (§5.27.1.4), see [`TemperatureThreshold`].
    pub const TEMPERATURE_THRESHOLD: FeatureId = FeatureId(0x04);
    /// 05h: Error Recovery (§5.27.1.5): TLER in units of 100 ms, DULBE.
    pub const ERROR_RECOVERY: FeatureId = FeatureId(0x05);
    /// 06h: Volatile Write Cache (§5.27.1.6), see [`VolatileWriteCache`].
    pub const VOLATILE_WRITE_CACHE: FeatureId = FeatureId(0x06);
    /// 07h: Number of Queues (§5.27.1.7), see [`NumberOfQueues`].
    pub const NUMBER_OF_QUEUES: FeatureId = FeatureId(0x07);
    /// 08h: Interrupt Coalescing (§5.27.1.8): aggregation threshold and time (100 µs units).
    pub const INTERRUPT_COALESCING: FeatureId = FeatureId(0x08);
    /// 09h: Interrupt Vector Configuration (§5.27.1.9).
    pub const INTERRUPT_VECTOR_CONFIG: FeatureId = FeatureId(0x09);
    /// 0Ah: Write Atomicity Normal (§5.27.1.10).
    pub const WRITE_ATOMICITY: FeatureId = FeatureId(0x0A);
    /// 0Bh: Asynchronous Event Configuration (§5.27.1.11), see [`AsyncEventConfig`].
    pub const ASYNC_EVENT_CONFIG: FeatureId = FeatureId(0x0B);
    /// 0Ch: Autonomous Power State Transition (§5.27.1.12).
    pub const AUTONOMOUS_POWER_STATE_TRANSITION: FeatureId = FeatureId(0x0C);
    /// 0Dh: Host Memory Buffer (§5.27.1.13).
    pub const HOST_MEMORY_BUFFER: FeatureId = FeatureId(0x0D);
    /// 0Eh: Timestamp (§5.27.1.14), see [`Timestamp`].
    pub const TIMESTAMP: FeatureId = FeatureId(0x0E);
    /// 0Fh: Keep Alive Timer (§5.27.1.15): KATO in ms.
    pub const KEEP_ALIVE_TIMER: FeatureId = FeatureId(0x0F);
    /// 10h: Host Controlled Thermal Management (§5.27.1.16): TMT1/TMT2 in Kelvin.
    pub const HOST_CONTROLLED_THERMAL_MGMT: FeatureId = FeatureId(0x10);
    /// 11h: Non-Operational Power State Config (§5.27.1.17).
    pub const NON_OPERATIONAL_POWER_STATE: FeatureId = FeatureId(0x11);
    /// 12h: Read Recovery Level Config: RRL in DW0 bits 3:0.
    pub const READ_RECOVERY_LEVEL: FeatureId = FeatureId(0x12);
    /// 13h: Predictable Latency Mode Config (per NVM Set).
    pub const PREDICTABLE_LATENCY_MODE_CONFIG: FeatureId = FeatureId(0x13);
    /// 14h: Predictable Latency Mode Window (per NVM Set).
    pub const PREDICTABLE_LATENCY_MODE_WINDOW: FeatureId = FeatureId(0x14);
    /// 15h: LBA Status Information Attributes: LSIRI and LSIPI (100 ms units).
    pub const LBA_STATUS_INFORMATION: FeatureId = FeatureId(0x15);
    /// 16h: Host Behavior Support: a 512-byte data buffer.
    pub const HOST_BEHAVIOR_SUPPORT: FeatureId = FeatureId(0x16);
    /// 17h: Sanitize Config: NODRM in DW0 bit 0.
    pub const SANITIZE_CONFIG: FeatureId = FeatureId(0x17);
    /// 18h: Endurance Group Event Configuration: ENDGID and critical warnings.
    pub const ENDURANCE_GROUP_EVENT_CONFIG: FeatureId = FeatureId(0x18);
    /// 19h: I/O Command Set Profile: IOCSCI in DW0 bits 8:0.
    pub const IO_COMMAND_SET_PROFILE: FeatureId = FeatureId(0x19);
    /// 1Ah: Spinup Control: SPUCE in DW0 bit 0.
    pub const SPINUP_CONTROL: FeatureId = FeatureId(0x1A);
    /// 1Dh: Flexible Data Placement (per Endurance Group).
    pub const FLEXIBLE_DATA_PLACEMENT: FeatureId = FeatureId(0x1D);
    /// 1Eh: FDP Events: a data buffer of event types.
    pub const FDP_EVENTS: FeatureId = FeatureId(0x1E);
    /// 7Dh: Enhanced Controller Metadata (management interface).
    pub const ENHANCED_CONTROLLER_METADATA: FeatureId = FeatureId(0x7D);
    /// 7Eh: Controller Metadata (management interface).
    pub const CONTROLLER_METADATA: FeatureId = FeatureId(0x7E);
    /// 7Fh: Namespace Metadata (management interface).
    pub const NAMESPACE_METADATA: FeatureId = FeatureId(0x7F);
    /// 80h: Software Progress Marker: PBSLC in DW0 bits 7:0.
    pub const SOFTWARE_PROGRESS_MARKER: FeatureId = FeatureId(0x80);
    /// 81h: Host Identifier: an 8- or 16-byte data buffer (HOSTID).
    pub const HOST_IDENTIFIER: FeatureId = FeatureId(0x81);
    /// 82h: Reservation Notification Mask: REGPRE, RESREL, RESPRE in DW0 bits 3:1.
    pub const RESERVATION_NOTIFICATION_MASK: FeatureId = FeatureId(0x82);
    /// 83h: Reservation Persistence: PTPL in DW0 bit 0.
    pub const RESERVATION_PERSISTENCE: FeatureId = FeatureId(0x83);
    /// 84h: Namespace Write Protection Config: WPS in DW0 bits 2:0.
    pub const NAMESPACE_WRITE_PROTECTION: FeatureId = FeatureId(0x84);

    /// The specification's name of the feature (NVMe Base 2.0, with TP4146's Flexible Data
    /// Placement), or `"Unknown"` for an identifier this crate does not name.
    pub fn name(self) -> &'static str {
        match self {
            Self::ARBITRATION => "Arbitration",
            Self::POWER_MANAGEMENT => "Power Management",
            Self::LBA_RANGE_TYPE => "LBA Range Type",
            Self::TEMPERATURE_THRESHOLD => "Temperature Threshold",
            Self::ERROR_RECOVERY => "Error Recovery",
            Self::VOLATILE_WRITE_CACHE => "Volatile Write Cache",
            Self::NUMBER_OF_QUEUES => "Number of Queues",
            Self::INTERRUPT_COALESCING => "Interrupt Coalescing",
            Self::INTERRUPT_VECTOR_CONFIG => "Interrupt Vector Configuration",
            Self::WRITE_ATOMICITY => "Write Atomicity Normal",
            Self::ASYNC_EVENT_CONFIG => "Asynchronous Event Configuration",
            Self::AUTONOMOUS_POWER_STATE_TRANSITION => "Autonomous Power State Transition",
            Self::HOST_MEMORY_BUFFER => "Host Memory Buffer",
            Self::TIMESTAMP => "Timestamp",
            Self::KEEP_ALIVE_TIMER => "Keep Alive Timer",
            Self::HOST_CONTROLLED_THERMAL_MGMT => "Host Controlled Thermal Management",
            Self::NON_OPERATIONAL_POWER_STATE => "Non-Operational Power State Config",
            Self::READ_RECOVERY_LEVEL => "Read Recovery Level Config",
            Self::PREDICTABLE_LATENCY_MODE_CONFIG => "Predictable Latency Mode Config",
            Self::PREDICTABLE_LATENCY_MODE_WINDOW => "Predictable Latency Mode Window",
            Self::LBA_STATUS_INFORMATION => "LBA Status Information Attributes",
            Self::HOST_BEHAVIOR_SUPPORT => "Host Behavior Support",
            Self::SANITIZE_CONFIG => "Sanitize Config",
            Self::ENDURANCE_GROUP_EVENT_CONFIG => "Endurance Group Event Configuration",
            Self::IO_COMMAND_SET_PROFILE => "I/O Command Set Profile",
            Self::SPINUP_CONTROL => "Spinup Control",
            Self::FLEXIBLE_DATA_PLACEMENT => "Flexible Data Placement",
            Self::FDP_EVENTS => "FDP Events",
            Self::ENHANCED_CONTROLLER_METADATA => "Enhanced Controller Metadata",
            Self::CONTROLLER_METADATA => "Controller Metadata",
            Self::NAMESPACE_METADATA => "Namespace Metadata",
            Self::SOFTWARE_PROGRESS_MARKER => "Software Progress Marker",
            Self::HOST_IDENTIFIER => "Host Identifier",
            Self::RESERVATION_NOTIFICATION_MASK => "Reservation Notification Mask",
            Self::RESERVATION_PERSISTENCE => "Reservation Persistence",
            Self::NAMESPACE_WRITE_PROTECTION => "Namespace Write Protection Config",
            _ => "Unknown",
        }
    }
}

/// Select (SEL) field of Get Features, CDW10 bits 10:8 (Base 2.0 §5.15, Get Features).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[repr(u8)]
pub enum FeatureSelect {
    /// 000b: the value in use now.
    Current = 0,
    /// 001b: the default value.
    Default = 1,
    /// 010b: the saved value (needs ONCS bit 4).
    Saved = 2,
    /// 011b: the capabilities of the feature (saveable, namespace specific, changeable)
    /// in completion DW0 bits 2:0.
    SupportedCapabilities = 3,
}

impl FeatureSelect {
    /// The 3-bit SEL value, to place in CDW10 bits 10:8.
    pub fn bits(self) -> u8 {
        self as u8
    }

    /// Decodes a SEL value; `None` for reserved values 4..=7 (and anything wider).
    pub fn from_bits(sel: u8) -> Option<FeatureSelect> {
        match sel {
            0 => Some(FeatureSelect::Current),
            1 => Some(FeatureSelect::Default),
            2 => Some(FeatureSelect::Saved),
            3 => Some(FeatureSelect::SupportedCapabilities),
            _ => None,
        }
    }
}

/// Number of Queues (FID 07h, Base 2.0 §5.27.1.7): how many I/O submission and completion
/// queues the host asks for (Set Features) or the controller granted (completion DW0).
///
/// Counts here are 1-based (the number of queues, admin queue excluded). On the wire they
/// are 0's based — CDW11 NSQR bits 15:0, NCQR bits 31:16; DW0 NSQA bits 15:0, NCQA bits
/// 31:16 — so [`NumberOfQueues::to_dw11`] subtracts one and [`NumberOfQueues::from_dw0`]
/// adds one. The 0's based value FFFFh is reserved, so the largest count is 65535 and it
/// fits a `u16`: decoding clamps a reserved FFFFh to 65535, encoding clamps a count of 0
/// up to 1 (a host cannot ask for no queues).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct NumberOfQueues {
    /// Number of I/O submission queues, 1..=65535.
    pub sq: u16,
    /// Number of I/O completion queues, 1..=65535.
    pub cq: u16,
}

impl NumberOfQueues {
    /// Largest count a controller can grant (0's based FFFFh is reserved).
    pub const MAX: u16 = 0xFFFF;

    /// Decodes completion DW0 of Get/Set Features Number of Queues (NSQA bits 15:0, NCQA
    /// bits 31:16, both 0's based). Total for any `u32`.
    pub fn from_dw0(dw0: u32) -> NumberOfQueues {
        let count = |raw: u32| ((raw & 0xffff) + 1).min(u32::from(Self::MAX)) as u16;
        NumberOfQueues {
            sq: count(dw0),
            cq: count(dw0 >> 16),
        }
    }

    /// Encodes CDW11 for Set Features Number of Queues (NSQR bits 15:0, NCQR bits 31:16,
    /// both 0's based). A count of 0 is sent as 1 queue.
    pub fn to_dw11(self) -> u32 {
        let raw = |n: u16| u32::from(n.max(1) - 1);
        raw(self.sq) | (raw(self.cq) << 16)
    }

    /// The queues the host may use after Set Features: per kind, the smaller of what was
    /// asked and what the controller reports in `dw0`. The controller may grant more than
    /// asked (QEMU 7.2 answers its maximum whatever is asked) or fewer.
    pub fn granted(asked: NumberOfQueues, dw0: u32) -> NumberOfQueues {
        let got = NumberOfQueues::from_dw0(dw0);
        NumberOfQueues {
            sq: asked.sq.min(got.sq),
            cq: asked.cq.min(got.cq),
        }
    }
}

/// Volatile Write Cache (FID 06h, Base 2.0 §5.27.1.6): CDW11 / DW0 bit 0 WCE. Only valid
/// when Identify Controller VWC bit 0 is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct VolatileWriteCache {
    /// WCE (bit 0): the volatile write cache is enabled.
    pub enabled: bool,
}

impl VolatileWriteCache {
    /// Decodes completion DW0 (bit 0); other bits are ignored.
    pub fn from_dw0(dw0: u32) -> VolatileWriteCache {
        VolatileWriteCache { enabled: dw0 & 1 != 0 }
    }

    /// Encodes CDW11 (bit 0).
    pub fn to_dw11(self) -> u32 {
        u32::from(self.enabled)
    }
}

bitflags::bitflags! {
    /// Asynchronous Event Configuration (FID 0Bh, Base 2.0 §5.27.1.11): which events cause
    /// an Asynchronous Event Request to complete. CDW11 and DW0 share this layout; unknown
    /// bits are kept.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct AsyncEventConfig: u32 {
        /// Bit 0: SMART critical warning — available spare below threshold.
        const SMART_SPARE = 1 << 0;
        /// Bit 1: SMART critical warning — temperature.
        const SMART_TEMPERATURE = 1 << 1;
        /// Bit 2: SMART critical warning — reliability degraded.
        const SMART_RELIABILITY = 1 << 2;
        /// Bit 3: SMART critical warning — media read only.
        const SMART_READ_ONLY = 1 << 3;
        /// Bit 4: SMART critical warning — volatile memory backup failed.
        const SMART_VOLATILE_MEMORY_BACKUP = 1 << 4;
        /// Bit 5: SMART critical warning — persistent memory region read only.
        const SMART_PMR_READ_ONLY = 1 << 5;
        /// Bits 7:0: every SMART / Health critical warning (one bit per Critical Warning bit).
        const SMART_CRITICAL_WARNINGS = 0xff;
        /// Bit 8: Namespace Attribute Notices.
        const NAMESPACE_ATTRIBUTE = 1 << 8;
        /// Bit 9: Firmware Activation Notices.
        const FIRMWARE_ACTIVATION = 1 << 9;
        /// Bit 10: Telemetry Log Notices.
        const TELEMETRY_LOG = 1 << 10;
        /// Bit 11: Asymmetric Namespace Access Change Notices.
        const ANA_CHANGE = 1 << 11;
        /// Bit 12: Predictable Latency Event Aggregate Log Change Notices.
        const PREDICTABLE_LATENCY = 1 << 12;
        /// Bit 13: LBA Status Information Notices.
        const LBA_STATUS = 1 << 13;
        /// Bit 14: Endurance Group Event Aggregate Log Change Notices.
        const ENDURANCE_GROUP = 1 << 14;
        /// Bit 15: Normal NVM Subsystem Shutdown event notices.
        const NORMAL_NVM_SUBSYSTEM_SHUTDOWN = 1 << 15;
        /// Bit 31: Discovery Log Page Change Notification (fabrics discovery controllers).
        const DISCOVERY_LOG = 1 << 31;
    }
}

/// Serialized as the raw bits (a number), as nvme-cli prints the field.
#[cfg(feature = "serde")]
impl serde::Serialize for AsyncEventConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.bits(), serializer)
    }
}

impl AsyncEventConfig {
    /// Decodes completion DW0; every bit is kept.
    pub fn from_dw0(dw0: u32) -> AsyncEventConfig {
        AsyncEventConfig::from_bits_retain(dw0)
    }

    /// Encodes CDW11.
    pub fn to_dw11(self) -> u32 {
        self.bits()
    }
}

/// Arbitration (FID 01h, Base 2.0 §5.27.1.1): command arbitration between submission
/// queues. Layout: AB bits 2:0, LPW bits 15:8, MPW bits 23:16, HPW bits 31:24.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Arbitration {
    /// AB (bits 2:0): arbitration burst, 2^AB commands per queue per round; 7 = no limit.
    pub ab: u8,
    /// LPW (bits 15:8): low priority weight, 0's based (weighted round robin only).
    pub lpw: u8,
    /// MPW (bits 23:16): medium priority weight, 0's based.
    pub mpw: u8,
    /// HPW (bits 31:24): high priority weight, 0's based.
    pub hpw: u8,
}

impl Arbitration {
    /// Decodes completion DW0; reserved bits 7:3 are ignored.
    pub fn from_dw0(dw0: u32) -> Arbitration {
        Arbitration {
            ab: (dw0 & 0x7) as u8,
            lpw: (dw0 >> 8) as u8,
            mpw: (dw0 >> 16) as u8,
            hpw: (dw0 >> 24) as u8,
        }
    }

    /// Encodes CDW11 (`ab` masked to 3 bits).
    pub fn to_dw11(self) -> u32 {
        u32::from(self.ab & 0x7)
            | (u32::from(self.lpw) << 8)
            | (u32::from(self.mpw) << 16)
            | (u32::from(self.hpw) << 24)
    }

    /// The arbitration burst in commands (2^AB, 1..=64), or `None` for no limit (AB = 7).
    pub fn burst(&self) -> Option<u32> {
        match self.ab & 0x7 {
            7 => None,
            ab => Some(1 << ab),
        }
    }
}

/// Power Management (FID 02h, Base 2.0 §5.27.1.2). Layout: PS bits 4:0, WH bits 7:5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct PowerManagement {
    /// PS (bits 4:0): power state, an index into Identify Controller's descriptors
    /// (0..=NPSS).
    pub ps: u8,
    /// WH (bits 7:5): workload hint (0 = no workload, 1 = extended idle, 2 = heavy
    /// sequential writes).
    pub wh: u8,
}

impl PowerManagement {
    /// Decodes completion DW0; bits 31:8 are ignored.
    pub fn from_dw0(dw0: u32) -> PowerManagement {
        PowerManagement {
            ps: (dw0 & 0x1f) as u8,
            wh: ((dw0 >> 5) & 0x7) as u8,
        }
    }

    /// Encodes CDW11 (fields masked to their widths).
    pub fn to_dw11(self) -> u32 {
        u32::from(self.ps & 0x1f) | (u32::from(self.wh & 0x7) << 5)
    }
}

/// Temperature Threshold (FID 04h, Base 2.0 §5.27.1.4). Layout: TMPTH bits 15:0,
/// TMPSEL bits 19:16, THSEL bits 21:20.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct TemperatureThreshold {
    /// TMPTH (bits 15:0): the threshold, Kelvin.
    pub tmpth: u16,
    /// TMPSEL (bits 19:16): which temperature — 0 composite, 1..=8 temperature sensor
    /// 1..=8, Fh all sensors (Set Features only).
    pub tmpsel: u8,
    /// THSEL (bits 21:20): threshold type — 0 over temperature, 1 under temperature.
    pub thsel: u8,
}

impl TemperatureThreshold {
    /// TMPSEL value for the composite temperature.
    pub const TMPSEL_COMPOSITE: u8 = 0x0;
    /// THSEL value for the over temperature threshold.
    pub const THSEL_OVER: u8 = 0x0;
    /// THSEL value for the under temperature threshold.
    pub const THSEL_UNDER: u8 = 0x1;

    /// Decodes completion DW0 (Get Features returns TMPTH; TMPSEL/THSEL echo the request
    /// on some controllers); bits 31:22 are ignored.
    pub fn from_dw0(dw0: u32) -> TemperatureThreshold {
        TemperatureThreshold {
            tmpth: dw0 as u16,
            tmpsel: ((dw0 >> 16) & 0xf) as u8,
            thsel: ((dw0 >> 20) & 0x3) as u8,
        }
    }

    /// Encodes CDW11 (fields masked to their widths). Get Features also takes TMPSEL and
    /// THSEL in CDW11 to say which threshold to return.
    pub fn to_dw11(self) -> u32 {
        u32::from(self.tmpth) | (u32::from(self.tmpsel & 0xf) << 16) | (u32::from(self.thsel & 0x3) << 20)
    }
}

/// Timestamp (FID 0Eh, Base 2.0 §5.27.1.14): an 8-byte data buffer, not a DW0 value.
///
/// Layout: bytes 5:0 the timestamp, milliseconds since the Unix epoch (00:00:00 UTC,
/// 1 January 1970), little-endian 48 bits; byte 6 attributes — bit 0 Synch (the controller
/// may have stopped counting, e.g. in a non-operational power state), bits 3:1 Timestamp
/// Origin (0 = reset and not set since, 1 = set by Set Features); byte 7 reserved. For Set
/// Features only bytes 5:0 count; bytes 7:6 are reserved and should be zero, which is what
/// [`Timestamp::from_system_time`] produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch; 48 bits on the wire.
    pub millis: u64,
    /// Synch (attribute bit 0): the timestamp may not have run continuously since set.
    pub synch: bool,
    /// Timestamp Origin (attribute bits 3:1).
    pub origin: u8,
}

impl Timestamp {
    /// Size in bytes of the Timestamp data buffer.
    pub const LEN: usize = 8;
    /// Mask of the 48 timestamp bits.
    pub const MILLIS_MASK: u64 = (1 << 48) - 1;

    /// Parses the 8-byte Timestamp data buffer returned by Get Features; longer buffers are
    /// accepted and the extra bytes ignored.
    ///
    /// # Errors
    /// [`ParseError::TooShort`] if `buf` holds fewer than 8 bytes.
    pub fn parse(buf: &[u8]) -> Result<Timestamp, ParseError> {
        need("Timestamp", buf, Self::LEN)?;
        let mut ms = [0u8; 8];
        ms[..6].copy_from_slice(&buf[..6]);
        Ok(Timestamp {
            millis: u64::from_le_bytes(ms),
            synch: buf[6] & 1 != 0,
            origin: (buf[6] >> 1) & 0x7,
        })
    }

    /// Encodes the 8-byte data buffer, masking `millis` to 48 bits and `origin` to 3 bits.
    pub fn encode(&self) -> [u8; 8] {
        let mut out = (self.millis & Self::MILLIS_MASK).to_le_bytes();
        out[6] = u8::from(self.synch) | ((self.origin & 0x7) << 1);
        out[7] = 0;
        out
    }

    /// A timestamp for Set Features from the host clock: whole milliseconds since the Unix
    /// epoch (0 for a time before it), masked to 48 bits; Synch and Origin zero.
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        let millis = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let millis = (millis & u128::from(Self::MILLIS_MASK)) as u64;
        Timestamp {
            millis,
            synch: false,
            origin: 0,
        }
    }

    /// The timestamp as a `SystemTime` (`millis` masked to 48 bits).
    pub fn to_system_time(&self) -> SystemTime {
        // 2^48 ms is about 8900 years: within SystemTime's range on every platform Rust
        // supports, so the addition cannot overflow; fall back to the epoch regardless.
        let d = Duration::from_millis(self.millis & Self::MILLIS_MASK);
        UNIX_EPOCH.checked_add(d).unwrap_or(UNIX_EPOCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn feature_names() {
        assert_eq!(FeatureId::NUMBER_OF_QUEUES.name(), "Number of Queues");
        assert_eq!(FeatureId(0x0E).name(), "Timestamp");
        assert_eq!(FeatureId(0x7f).name(), "Namespace Metadata");
        assert_eq!(FeatureId(0x1b).name(), "Unknown");
        assert_eq!(FeatureId(0xC0).name(), "Unknown");
        assert_eq!(FeatureId::NON_OPERATIONAL_POWER_STATE.0, 0x11);
    }

    #[test]
    fn feature_select() {
        for sel in 0..=3u8 {
            assert_eq!(FeatureSelect::from_bits(sel).map(FeatureSelect::bits), Some(sel));
        }
        assert_eq!(FeatureSelect::from_bits(4), None);
        assert_eq!(FeatureSelect::Saved.bits(), 2);
    }

    #[test]
    fn number_of_queues_wire_format() {
        let q = NumberOfQueues { sq: 4, cq: 2 };
        assert_eq!(q.to_dw11(), 0x0001_0003);
        assert_eq!(NumberOfQueues::from_dw0(0x0001_0003), q);
        assert_eq!(NumberOfQueues::from_dw0(0), NumberOfQueues { sq: 1, cq: 1 });
        // Reserved FFFFh clamps to the largest count.
        assert_eq!(
            NumberOfQueues::from_dw0(u32::MAX),
            NumberOfQueues { sq: 65535, cq: 65535 }
        );
        assert_eq!(NumberOfQueues { sq: 65535, cq: 65535 }.to_dw11(), 0xfffe_fffe);
        assert_eq!(NumberOfQueues { sq: 0, cq: 0 }.to_dw11(), 0);
    }

    #[test]
    fn number_of_queues_granted_qemu() {
        // QEMU 7.2 with max_ioqpairs=64 answers 63/63 (0's based) whatever is asked.
        let asked = NumberOfQueues { sq: 4, cq: 4 };
        assert_eq!(NumberOfQueues::granted(asked, 0x003f_003f), asked);
        // A controller granting fewer than asked.
        assert_eq!(
            NumberOfQueues::granted(asked, 0x0000_0001),
            NumberOfQueues { sq: 2, cq: 1 }
        );
    }

    #[test]
    fn volatile_write_cache() {
        assert!(VolatileWriteCache::from_dw0(1).enabled);
        assert!(!VolatileWriteCache::from_dw0(0xffff_fffe).enabled);
        assert_eq!(VolatileWriteCache { enabled: true }.to_dw11(), 1);
        assert_eq!(VolatileWriteCache { enabled: false }.to_dw11(), 0);
    }

    #[test]
    fn async_event_config() {
        let c = AsyncEventConfig::SMART_CRITICAL_WARNINGS
            | AsyncEventConfig::NAMESPACE_ATTRIBUTE
            | AsyncEventConfig::FIRMWARE_ACTIVATION;
        assert_eq!(c.to_dw11(), 0x3ff);
        assert!(c.contains(AsyncEventConfig::SMART_TEMPERATURE));
        assert_eq!(AsyncEventConfig::from_dw0(0x8000_0000), AsyncEventConfig::DISCOVERY_LOG);
        assert_eq!(AsyncEventConfig::from_dw0(0x0010_0000).bits(), 0x0010_0000);
        assert_eq!(AsyncEventConfig::NORMAL_NVM_SUBSYSTEM_SHUTDOWN.bits(), 1 << 15);
    }

    #[test]
    fn arbitration() {
        let a = Arbitration::from_dw0(0x0302_0103);
        assert_eq!(
            a,
            Arbitration {
                ab: 3,
                lpw: 1,
                mpw: 2,
                hpw: 3
            }
        );
        assert_eq!(a.burst(), Some(8));
        assert_eq!(a.to_dw11(), 0x0302_0103);
        assert_eq!(Arbitration::from_dw0(7).burst(), None);
        assert_eq!(
            Arbitration {
                ab: 0xff,
                lpw: 0,
                mpw: 0,
                hpw: 0
            }
            .to_dw11(),
            7
        );
    }

    #[test]
    fn power_management() {
        let p = PowerManagement::from_dw0(0b010_00011);
        assert_eq!(p, PowerManagement { ps: 3, wh: 2 });
        assert_eq!(p.to_dw11(), 0b010_00011);
        assert_eq!(PowerManagement { ps: 0xff, wh: 0xff }.to_dw11(), 0xff);
    }

    #[test]
    fn temperature_threshold() {
        // QEMU's default over temperature threshold: 343 K.
        let t = TemperatureThreshold::from_dw0(0x157);
        assert_eq!(
            t,
            TemperatureThreshold {
                tmpth: 343,
                tmpsel: 0,
                thsel: 0
            }
        );
        let under = TemperatureThreshold {
            tmpth: 273,
            tmpsel: 2,
            thsel: TemperatureThreshold::THSEL_UNDER,
        };
        assert_eq!(under.to_dw11(), 0x0012_0111);
        assert_eq!(TemperatureThreshold::from_dw0(under.to_dw11()), under);
    }

    #[test]
    fn timestamp_buffer() {
        let b = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0b0000_0011, 0xff];
        let t = Timestamp::parse(&b).unwrap();
        assert_eq!(t.millis, 0x0605_0403_0201);
        assert!(t.synch);
        assert_eq!(t.origin, 1);
        assert_eq!(t.encode(), [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0b0000_0011, 0]);
        assert!(matches!(Timestamp::parse(&b[..7]), Err(ParseError::TooShort { .. })));
        let wide = Timestamp {
            millis: u64::MAX,
            synch: false,
            origin: 0xff,
        };
        assert_eq!(wide.encode(), [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0b1110, 0]);
    }

    #[test]
    fn timestamp_system_time() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let ts = Timestamp::from_system_time(t);
        assert_eq!(
            ts,
            Timestamp {
                millis: 1_700_000_000_123,
                synch: false,
                origin: 0
            }
        );
        assert_eq!(ts.to_system_time(), t);
        assert_eq!(ts.encode()[6..], [0, 0]);
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(Timestamp::from_system_time(before).millis, 0);
        let now = Timestamp::from_system_time(SystemTime::now());
        assert!(now.millis > 1_700_000_000_000);
    }

    proptest! {
        #[test]
        fn dw0_decoders_are_total_and_round_trip(dw0: u32) {
            let q = NumberOfQueues::from_dw0(dw0);
            prop_assert!(q.sq >= 1 && q.cq >= 1);
            // Every non-reserved 0's based value survives a round trip.
            if dw0 & 0xffff != 0xffff && dw0 >> 16 != 0xffff {
                prop_assert_eq!(q.to_dw11(), dw0);
            }
            prop_assert_eq!(VolatileWriteCache::from_dw0(dw0).to_dw11(), dw0 & 1);
            prop_assert_eq!(AsyncEventConfig::from_dw0(dw0).to_dw11(), dw0);
            prop_assert_eq!(Arbitration::from_dw0(dw0).to_dw11(), dw0 & 0xffff_ff07);
            prop_assert_eq!(PowerManagement::from_dw0(dw0).to_dw11(), dw0 & 0xff);
            prop_assert_eq!(TemperatureThreshold::from_dw0(dw0).to_dw11(), dw0 & 0x3f_ffff);
            let _ = Arbitration::from_dw0(dw0).burst();
        }

        #[test]
        fn number_of_queues_round_trip(sq in 1u16..=65535, cq in 1u16..=65535) {
            let q = NumberOfQueues { sq, cq };
            prop_assert_eq!(NumberOfQueues::from_dw0(q.to_dw11()), q);
        }

        #[test]
        fn granted_never_exceeds_either(asq in 1u16.., acq in 1u16.., dw0: u32) {
            let asked = NumberOfQueues { sq: asq, cq: acq };
            let g = NumberOfQueues::granted(asked, dw0);
            let offered = NumberOfQueues::from_dw0(dw0);
            prop_assert!(g.sq <= asked.sq && g.sq <= offered.sq && g.sq >= 1);
            prop_assert!(g.cq <= asked.cq && g.cq <= offered.cq && g.cq >= 1);
        }

        #[test]
        fn timestamp_parse_is_total(buf in proptest::collection::vec(any::<u8>(), 0..=8192)) {
            let r = Timestamp::parse(&buf);
            prop_assert_eq!(r.is_ok(), buf.len() >= 8);
            if let Ok(t) = r {
                prop_assert!(t.millis <= Timestamp::MILLIS_MASK);
                let mut want = [0u8; 7];
                want.copy_from_slice(&buf[..7]);
                want[6] &= 0x0f;
                prop_assert_eq!(&t.encode()[..7], &want[..]);
                let _ = t.to_system_time();
            }
        }

        #[test]
        fn timestamp_round_trip(millis in 0u64..=Timestamp::MILLIS_MASK, synch: bool, origin in 0u8..8) {
            let t = Timestamp { millis, synch, origin };
            prop_assert_eq!(Timestamp::parse(&t.encode()), Ok(t));
        }
    }
}
