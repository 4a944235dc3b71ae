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
    /// Written, but not to its capacity: the zone is active (open or closed).
    pub fn partly_written(&self) -> bool {
        self.written > 0 && self.written < self.capacity
    }

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
    /// Zones that may be active (open or closed) at once: MAR + 1 (`None`: no limit).
    pub max_active: Option<u32>,
    /// Zones that may be open at once: MOR + 1 (`None`: no limit).
    pub max_open: Option<u32>,
    /// ZOC bit 0 (Variable Zone Capacity): a reset may change a zone's capacity.
    pub variable_capacity: bool,
    /// Every zone's descriptor, in LBA order.
    pub zones: Vec<ZoneDescriptor>,
}

impl ZoneLayout {
    /// The layout of namespace `nsid` of `device` (named `name` in errors): `None` when it
    /// is not zoned, or the backend cannot tell (io_uring block I/O, psync, VDE volumes,
    /// which send no NVMe commands).
    ///
    /// Errors: [`CliError::OnDevice`] for a failed Identify or Zone Management Receive.
    pub fn probe(device: &Device, name: &str, nsid: u32) -> Result<Option<ZoneLayout>, CliError> {
        let Some(z) = ZoneAccess::new(device, name.to_string(), nsid)? else {
            return Ok(None);
        };
        Ok(Some(ZoneLayout {
            zone_blocks: z.zone_blocks,
            append_limit: z.append_limit,
            max_active: z.max_active,
            max_open: z.max_open,
            variable_capacity: z.variable_capacity,
            zones: z.zones(0, None)?,
        }))
    }

    /// [`CliError::Unsupported`] when `what` would go through the kernel's block layer
    /// (io_uring block I/O, psync) to a zoned block device `name` (sysfs `queue/zoned`):
    /// perf's writes and verify need zone reports and Reset Zone, which that path does not
    /// carry; the error names the ways that do.
    pub fn refuse_kernel_zoned(device: &Device, name: &str, what: &str) -> Result<(), CliError> {
        if !matches!(device.backend(), Backend::Uring | Backend::Psync) {
            return Ok(());
        }
        match ironvme_kernel::geometry::zoned_model(Path::new(name)) {
            Some(model) => Err(CliError::Unsupported(format!(
                "{what}: {name} is a zoned block device ({model}); {what} on zones needs zone reports and Reset Zone \
                 through NVMe commands: use --backend ioctl, the namespace's /dev/ngXnY node, or its PCI address"
            ))),
            None => Ok(()),
        }
    }

    /// The zones wholly inside the `blocks` blocks from `first_lba`, in order. With
    /// `writes`, every one of them must be writable ([`ZoneSpan::of`]); without, any
    /// state goes (a Read Only zone reads, an Offline one fails its reads: both are what
    /// a read-back must report), and `written` is the capacity.
    ///
    /// Errors: [`CliError::Invalid`] when the region does not start and end on zone
    /// boundaries (a write must start at a zone's write pointer, and verify resets every
    /// zone it writes), holds no zone, or, with `writes`, holds one that cannot be
    /// written; [`CliError::Device`] for descriptors that describe no zones of ZSZE blocks
    /// in LBA order (a start off the zone grid or not after the previous one, a capacity
    /// above the zone size).
    pub fn spans_in(&self, first_lba: u64, blocks: u64, what: &str, writes: bool) -> Result<Vec<ZoneSpan>, CliError> {
        let zb = self.zone_blocks;
        if first_lba % zb != 0 || blocks % zb != 0 {
            return Err(CliError::Invalid(format!(
                "{what} on a zoned namespace works on whole zones: its region (--offset, and --size or by default \
                 the rest of the namespace) must start and end on zone boundaries, multiples of the zone size ({zb} \
                 blocks)"
            )));
        }
        let end = first_lba + blocks;
        let inside = |d: &&ZoneDescriptor| d.start >= first_lba && d.start.checked_add(zb).is_some_and(|e| e <= end);
        let mut spans: Vec<ZoneSpan> = Vec::new();
        for d in self.zones.iter().filter(inside) {
            if d.start % zb != 0 || d.capacity > zb || spans.last().is_some_and(|p| p.start >= d.start) {
                return Err(CliError::Device(format!(
                    "the device reports a zone at LBA {} with a capacity of {} blocks, which is not the next zone of \
                     {zb} blocks (ZSZE)",
                    d.start, d.capacity
                )));
            }
            let span = match ZoneSpan::of(d) {
                Some(span) => span,
                None if writes => {
                    let state = d.state().map_or("in an unknown state", ZoneState::nvme_cli_name);
                    return Err(CliError::Invalid(format!(
                        "{what}: the zone at LBA {} is {state} (write pointer {:#x}, capacity {}): it cannot be \
                         written; choose a region without it",
                        d.start, d.write_pointer, d.capacity
                    )));
                }
                None => ZoneSpan {
                    start: d.start,
                    capacity: d.capacity,
                    written: d.capacity,
                },
            };
            spans.push(span);
        }
        if spans.is_empty() {
            return Err(CliError::Invalid(format!(
                "{what}: the device reports no zone between LBA {first_lba} and {end}"
            )));
        }
        if spans.len() as u64 != blocks / zb {
            return Err(CliError::Device(format!(
                "the device reports {} zones between LBA {first_lba} and {end}, where {} zones of {zb} blocks (ZSZE) lie",
                spans.len(),
                blocks / zb
            )));
        }
        Ok(spans)
    }

    /// Zones active (Implicitly or Explicitly Opened, or Closed) outside the `blocks`
    /// blocks from `first_lba`, and of those the open ones: what other users hold of the
    /// controller's active and open zone resources.
    pub fn active_outside(&self, first_lba: u64, blocks: u64) -> (u32, u32) {
        let end = first_lba.saturating_add(blocks);
        let outside = self.zones.iter().filter(|d| d.start < first_lba || d.start >= end);
        outside.fold((0, 0), |(active, open), d| match d.state() {
            Some(ZoneState::ImplicitlyOpened | ZoneState::ExplicitlyOpened) => (active + 1, open + 1),
            Some(ZoneState::Closed) => (active + 1, open),
            _ => (active, open),
        })
    }

    /// How many zones of the region may be written at once, at most `want`: what the
    /// controller's active and open limits (MAR, MOR) leave after the zones active
    /// outside the region ([`Self::active_outside`]).
    ///
    /// Errors: [`CliError::Invalid`] when they leave none.
    pub fn writable_at_once(&self, first_lba: u64, blocks: u64, want: usize, what: &str) -> Result<usize, CliError> {
        let (active, open) = self.active_outside(first_lba, blocks);
        let room = |limit: Option<u32>, used: u32| limit.map_or(usize::MAX, |l| l.saturating_sub(used) as usize);
        let n = want.min(room(self.max_active, active)).min(room(self.max_open, open));
        if n == 0 {
            return Err(CliError::Invalid(format!(
                "{what}: the controller allows {} active and {} open zones, and {active} active ({open} open) zones \
                 outside the region take them all: reset or finish some (ironvme zns reset, zns finish)",
                self.max_active.map_or("any number of".into(), |n| n.to_string()),
                self.max_open.map_or("any number of".into(), |n| n.to_string()),
            )));
        }
        Ok(n)
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

    /// Zones of 100 blocks, at most three active.
    fn layout(zones: Vec<ZoneDescriptor>) -> ZoneLayout {
        ZoneLayout {
            zone_blocks: 100,
            append_limit: None,
            max_active: Some(3),
            max_open: None,
            variable_capacity: false,
            zones,
        }
    }

    #[test]
    fn regions_are_whole_zones() {
        let layout = layout(vec![
            zone(0, 0x1, 0, 60),
            zone(100, 0xF, 100, 60),
            zone(200, 0xE, 0, 60),
            zone(300, 0x2, 310, 60),
        ]);
        let starts = |first, n, writes| {
            layout
                .spans_in(first, n, "perf", writes)
                .map(|s| s.iter().map(|z| (z.start, z.written)).collect::<Vec<_>>())
        };
        assert_eq!(starts(200, 200, true).unwrap(), [(200, 60), (300, 10)]);
        // An offline zone cannot be written; read back, it is what it is.
        let e = starts(0, 300, true).unwrap_err().to_string();
        assert!(e.contains("the zone at LBA 100 is OFFLINE"), "{e}");
        assert_eq!(starts(0, 300, false).unwrap(), [(0, 0), (100, 60), (200, 60)]);
        let e = starts(50, 100, true).unwrap_err().to_string();
        assert!(e.contains("multiples of the zone size (100 blocks)"), "{e}");
        assert!(starts(0, 150, false).is_err());
        let e = starts(400, 100, false).unwrap_err().to_string();
        assert!(e.contains("no zone between LBA 400 and 500"), "{e}");
        // Descriptors that are no zones of ZSZE blocks in order.
        let mut odd = layout.clone();
        odd.zones[2].capacity = 101;
        let e = odd.spans_in(0, 400, "perf", false).unwrap_err().to_string();
        assert!(e.contains("zone at LBA 200 with a capacity of 101 blocks"), "{e}");
        // A zone missing from the reports (here one moved to near 2^64) is no region of
        // whole zones either.
        odd.zones[2] = zone(u64::MAX - 10, 0x1, 0, 60);
        let e = odd.spans_in(0, 300, "perf", false).unwrap_err().to_string();
        assert!(
            e.contains("reports 2 zones between LBA 0 and 300, where 3 zones"),
            "{e}"
        );
        let mut twice = layout.clone();
        twice.zones[1] = twice.zones[0];
        let e = twice.spans_in(0, 300, "perf", false).unwrap_err().to_string();
        assert!(e.contains("zone at LBA 0") && e.contains("not the next zone"), "{e}");
    }

    #[test]
    fn zones_active_elsewhere_limit_how_many_are_written_at_once() {
        let layout = layout(vec![
            zone(0, 0x1, 0, 60),
            zone(100, 0x4, 110, 60),
            zone(200, 0x3, 200, 60),
        ]);
        // Zone 1 is closed, zone 2 open: outside a region of zone 0 they take two of three.
        assert_eq!(layout.active_outside(0, 100), (2, 1));
        assert_eq!(layout.writable_at_once(0, 100, 32, "verify").unwrap(), 1);
        assert_eq!(layout.writable_at_once(0, 300, 32, "verify").unwrap(), 3);
        assert_eq!(layout.writable_at_once(0, 300, 2, "verify").unwrap(), 2);
        let open = ZoneLayout {
            max_active: None,
            max_open: Some(1),
            ..layout.clone()
        };
        assert_eq!(open.active_outside(0, 0), (2, 1), "an empty region: every zone");
        let e = open.writable_at_once(0, 100, 32, "verify").unwrap_err().to_string();
        assert!(
            e.contains("allows any number of active and 1 open zones, and 2 active (1 open)"),
            "{e}"
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
