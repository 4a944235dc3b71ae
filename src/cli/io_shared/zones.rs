//! The zones of a zoned namespace (NVMe Zoned Namespace Command Set 1.1) as `perf` and
//! `verify` write them: every zone is written sequentially from its write pointer up to
//! its capacity (ZCAP), and must be reset (Reset Zone) before it is written again. The
//! blocks from ZCAP to the zone size (ZSZE) can never be written; reads of them return
//! what the device returns for unwritten blocks.

use super::super::CliError;
use super::super::zns::ZoneAccess;
use crate::nvme::zns::{ZoneDescriptor, ZoneState};
use crate::{Backend, Device};
use std::path::Path;

/// A zone: where it starts, how much of it can be written, and how much is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneSpan {
    /// ZSLBA: the zone's first logical block.
    pub start: u64,
    /// ZCAP: logical blocks that can be written from `start`.
    pub capacity: u64,
    /// Blocks written from `start` (write pointer − ZSLBA; the capacity for a Full zone).
    pub written: u64,
}

impl ZoneSpan {
    /// The span of a zone descriptor, `None` for a zone that cannot be written (Read Only,
    /// Offline, or an unknown state) or whose descriptor is inconsistent (a write pointer
    /// outside the zone's capacity, a capacity of 0).
    pub fn of(d: &ZoneDescriptor) -> Option<ZoneSpan> {
        let written = match d.state()? {
            ZoneState::Empty => 0,
            ZoneState::Full => d.capacity,
            ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened | ZoneState::Closed => {
                d.write_pointer.checked_sub(d.start)?
            }
            ZoneState::ReadOnly | ZoneState::Offline => return None,
        };
        (d.capacity > 0 && written <= d.capacity).then_some(ZoneSpan {
            start: d.start,
            capacity: d.capacity,
            written,
        })
    }
}

/// A zoned namespace's geometry and its zones, read once before a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZoneLayout {
    /// ZSZE: zone size in logical blocks; zone `i` starts at `i × zone_blocks`.
    pub zone_blocks: u64,
    /// ZASL in bytes: the largest Zone Append (`None`: MDTS alone limits it).
    pub append_limit: Option<usize>,
    /// Every zone's descriptor, in LBA order.
    pub zones: Vec<ZoneDescriptor>,
}

impl ZoneLayout {
    /// The layout of namespace `nsid` of `device` (named `name` in errors): `None` when it
    /// is not zoned, or the backend cannot tell (io_uring block I/O, psync, VDE volumes,
    /// which send no NVMe commands).
    ///
    /// Errors: [`CliError::OnDevice`] for a failed Identify or Zone Management Receive;
    /// [`CliError::Unsupported`] for zoned Identify data without a zone size.
    pub fn probe(device: &Device, name: &str, nsid: u32) -> Result<Option<ZoneLayout>, CliError> {
        let Some(z) = ZoneAccess::new(device, name.to_string(), nsid)? else {
            return Ok(None);
        };
        Ok(Some(ZoneLayout {
            zone_blocks: z.zone_blocks,
            append_limit: z.append_limit,
            zones: z.zones(0, None)?,
        }))
    }

    /// [`CliError::Unsupported`] when `what` (a command that writes) would write through
    /// the kernel's block layer (io_uring block I/O, psync) to a zoned block device
    /// `name` (sysfs `queue/zoned`): perf and verify write zones with NVMe commands, which
    /// that path does not carry; the error names the backends that do.
    pub fn refuse_kernel_zoned(device: &Device, name: &str, what: &str) -> Result<(), CliError> {
        if !matches!(device.backend(), Backend::Uring | Backend::Psync) {
            return Ok(());
        }
        match ironvme_kernel::geometry::zoned_model(Path::new(name)) {
            Some(model) => Err(CliError::Unsupported(format!(
                "{what}: {name} is a zoned block device ({model}), whose zones {what} writes with NVMe zone \
                 commands: use --backend uring-cmd or ioctl (or the namespace's /dev/ngXnY node), or a PCI address"
            ))),
            None => Ok(()),
        }
    }

    /// The writable zones wholly inside the `blocks` blocks from `first_lba`, in order.
    ///
    /// Errors: [`CliError::Invalid`] when the region does not start and end on zone
    /// boundaries (a write must start at a zone's write pointer, and verify resets every
    /// zone it writes), or holds no writable zone; [`CliError::Device`] for a descriptor
    /// in it that describes no zone of ZSZE blocks (a start off the zone grid, a capacity
    /// above the zone size).
    pub fn spans_in(&self, first_lba: u64, blocks: u64, what: &str) -> Result<Vec<ZoneSpan>, CliError> {
        let zb = self.zone_blocks;
        if first_lba % zb != 0 || blocks % zb != 0 {
            return Err(CliError::Invalid(format!(
                "{what} on a zoned namespace works on whole zones: --offset and --size must be multiples of the \
                 zone size ({zb} blocks)"
            )));
        }
        let end = first_lba + blocks;
        let inside = |d: &&ZoneDescriptor| d.start >= first_lba && d.start.checked_add(zb).is_some_and(|e| e <= end);
        if let Some(d) = self
            .zones
            .iter()
            .filter(inside)
            .find(|d| d.start % zb != 0 || d.capacity > zb)
        {
            return Err(CliError::Device(format!(
                "the device reports a zone at LBA {} with a capacity of {} blocks, which is not a zone of {zb} blocks \
                 (ZSZE)",
                d.start, d.capacity
            )));
        }
        let spans: Vec<ZoneSpan> = self.zones.iter().filter(inside).filter_map(ZoneSpan::of).collect();
        if spans.is_empty() {
            return Err(CliError::Invalid(format!(
                "{what}: no writable zone (Empty, Open, Closed or Full) between LBA {first_lba} and {end}"
            )));
        }
        Ok(spans)
    }

    /// `lba` moved back so that `lbas` blocks from it stay inside one zone (a zoned
    /// namespace refuses a read across a zone boundary with Zone Boundary Error unless
    /// it allows it, OZCS.RAZB); `lba` itself when they do, or when the I/O is larger
    /// than a zone.
    pub fn inside_zone(zone_blocks: u64, lba: u64, lbas: u64) -> u64 {
        let zone_end = (lba / zone_blocks + 1) * zone_blocks;
        if lba + lbas <= zone_end || lbas > zone_blocks {
            lba
        } else {
            zone_end - lbas
        }
    }
}

/// A sequential-write-required zone's descriptor: its start, state (ZS bits 7:4), write
/// pointer and capacity.
#[cfg(test)]
pub(crate) fn zone(start: u64, zs: u8, wp: u64, capacity: u64) -> ZoneDescriptor {
    ZoneDescriptor {
        zone_type: 2,
        zs: zs << 4,
        attributes: 0,
        attributes_info: 0,
        capacity,
        start,
        write_pointer: wp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_gives_what_is_written() {
        let span = |zs, wp| ZoneSpan::of(&zone(100, zs, wp, 60)).map(|s| s.written);
        assert_eq!(span(0x1, 100), Some(0));
        assert_eq!(span(0x2, 130), Some(30));
        assert_eq!(span(0x3, 101), Some(1));
        assert_eq!(span(0x4, 160), Some(60));
        assert_eq!(span(0xE, u64::MAX), Some(60));
        assert_eq!(span(0xD, 100), None);
        assert_eq!(span(0xF, 100), None);
        assert_eq!(span(0x2, 99), None, "a write pointer before the zone");
        assert_eq!(span(0x2, 161), None, "a write pointer past the capacity");
        assert_eq!(ZoneSpan::of(&zone(0, 0x1, 0, 0)), None);
    }

    #[test]
    fn regions_are_whole_zones() {
        let layout = ZoneLayout {
            zone_blocks: 100,
            append_limit: None,
            zones: vec![zone(0, 0x1, 0, 60), zone(100, 0xF, 100, 60), zone(200, 0xE, 0, 60)],
        };
        let starts = |first, n| {
            layout
                .spans_in(first, n, "perf")
                .map(|s| s.iter().map(|z| z.start).collect::<Vec<_>>())
        };
        assert_eq!(starts(0, 300).unwrap(), [0, 200]);
        assert_eq!(starts(200, 100).unwrap(), [200]);
        let e = starts(50, 100).unwrap_err().to_string();
        assert!(e.contains("multiples of the zone size (100 blocks)"), "{e}");
        assert!(starts(0, 150).is_err());
        let e = starts(100, 100).unwrap_err().to_string();
        assert!(e.contains("no writable zone"), "{e}");
        // A device whose descriptors are no zones of ZSZE blocks.
        let mut odd = layout.clone();
        odd.zones[2].capacity = 101;
        let e = odd.spans_in(0, 300, "perf").unwrap_err().to_string();
        assert!(e.contains("zone at LBA 200 with a capacity of 101 blocks"), "{e}");
        odd.zones[2] = zone(u64::MAX - 10, 0x1, 0, 60);
        assert_eq!(
            odd.spans_in(0, 300, "perf").unwrap().len(),
            1,
            "a start near 2^64 is outside"
        );
    }

    #[test]
    fn reads_stay_inside_their_zone() {
        assert_eq!(ZoneLayout::inside_zone(100, 10, 8), 10);
        assert_eq!(ZoneLayout::inside_zone(100, 92, 8), 92);
        assert_eq!(ZoneLayout::inside_zone(100, 96, 8), 92);
        assert_eq!(ZoneLayout::inside_zone(100, 196, 8), 192);
        assert_eq!(ZoneLayout::inside_zone(100, 0, 200), 0);
    }
}
