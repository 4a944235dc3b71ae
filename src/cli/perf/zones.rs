//! Writes on a zoned namespace: where each of one thread's writes goes.
//!
//! A write cannot go anywhere on a zoned namespace: a Write must start at its zone's
//! write pointer, so two in flight on one zone may reach the device in either order and
//! fail (the kernel serialises them per zone; fio's `zonemode=zbd` follows it). perf uses
//! Zone Append instead (ZNS 1.1 §3.4.1), which names only the zone — the device writes at
//! the write pointer and reports where — so a whole queue of writes can be in flight on one
//! zone, as on a conventional namespace.
//!
//! Each thread owns its zones (every `threads`-th writable zone of the region) and fills
//! them in turn, one at a time ([`ZoneWriter::place`]):
//!
//! - appends go to the current zone while they fit in its capacity (ZCAP), counting those
//!   in flight; the last one is cut to the room left, so every zone fills exactly and
//!   becomes Full rather than staying open with room no write fits in. A thread so holds
//!   at most two zones active (open or closed): the one it fills and the one whose last
//!   appends are completing; at the end of a run the zone being filled stays open, and
//!   the next run starts there; after a failed append (whose room stays counted) its zone
//!   stays open until the thread comes back round to it;
//! - a full zone is left for the next one, once the zone before it has no append in
//!   flight; a zone that already holds data when the thread comes to it (from this run's
//!   previous round, or from before the run) is reset first, once the appends in flight
//!   on it have completed. The thread's first zone is the one it holds partly written, if
//!   any (an earlier run stopped there): it goes on appending to it;
//! - until that reset completes, the thread waits with the write it drew (its I/Os are
//!   submitted in the generator's order, reads included), polling what is in flight.

use crate::cli::io_shared::zones::ZoneSpan;

/// One zone of a thread.
#[derive(Clone, Copy, Debug)]
struct Zone {
    /// ZSLBA.
    start: u64,
    /// ZCAP in blocks.
    capacity: u64,
    /// Blocks appended or in flight, from `start`.
    taken: u64,
    /// Appends in flight.
    in_flight: u32,
    /// It holds data and the thread has come to it: reset it before appending.
    needs_reset: bool,
    /// A Reset Zone is in flight.
    resetting: bool,
}

/// Where the next write goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Zone Append `lbas` blocks (the write's size, or less: the room left in the zone) to
    /// the zone starting at `zslba`, the thread's zone number `zone`.
    Append {
        /// ZSLBA.
        zslba: u64,
        /// Blocks to append.
        lbas: u64,
        /// The zone's index in the thread's list ([`ZoneWriter::appended`]).
        zone: usize,
    },
    /// Reset the zone starting at `zslba` first (then [`ZoneWriter::reset_done`]); the
    /// write waits.
    Reset {
        /// ZSLBA.
        zslba: u64,
        /// The zone's index in the thread's list.
        zone: usize,
    },
    /// Nothing can be written until something completes (a reset, or the appends still
    /// in flight on the zone to reset next).
    Wait,
}

/// One thread's zones, and where its writes go ([the module's rules](self)).
#[derive(Clone, Debug)]
pub struct ZoneWriter {
    zones: Vec<Zone>,
    current: usize,
}

impl ZoneWriter {
    /// A writer over `zones`, in the order they are filled; it starts at the first.
    ///
    /// Panics on an empty list (the plan gives every thread at least one zone).
    pub fn new(zones: impl IntoIterator<Item = ZoneSpan>) -> ZoneWriter {
        let zones: Vec<Zone> = zones
            .into_iter()
            .map(|z| Zone {
                start: z.start,
                capacity: z.capacity,
                taken: z.written,
                in_flight: 0,
                needs_reset: false,
                resetting: false,
            })
            .collect();
        assert!(!zones.is_empty(), "a zone writer needs a zone");
        ZoneWriter { zones, current: 0 }
    }

    /// Where a write of `lbas` blocks (at least 1) goes, counted as in flight when it is
    /// an append.
    pub fn place(&mut self, lbas: u64) -> Placement {
        // At most twice round: the current zone, then the next one, which is empty (an
        // append fits: the plan keeps writes within every zone's capacity) or waits
        // for a reset.
        for _ in 0..2 {
            let zone = self.current;
            let z = &mut self.zones[zone];
            if z.resetting {
                return Placement::Wait;
            }
            if z.needs_reset {
                if z.in_flight > 0 {
                    return Placement::Wait;
                }
                z.needs_reset = false;
                z.resetting = true;
                return Placement::Reset { zslba: z.start, zone };
            }
            let room = z.capacity - z.taken;
            if room > 0 {
                let lbas = lbas.min(room);
                z.taken += lbas;
                z.in_flight += 1;
                return Placement::Append {
                    zslba: z.start,
                    lbas,
                    zone,
                };
            }
            // Another zone goes active only once the one before this one has drained: a
            // thread holds at most two (this full one, whose appends may be completing,
            // and the next).
            let left = self.current;
            if self.zones.iter().enumerate().any(|(i, z)| i != left && z.in_flight > 0) {
                return Placement::Wait;
            }
            self.current = (self.current + 1) % self.zones.len();
            let next = &mut self.zones[self.current];
            next.needs_reset = next.taken > 0;
        }
        Placement::Wait
    }

    /// An append to zone `zone` completed (whatever its outcome: a failed one still took
    /// its room, as the write pointer of a zone that took part of it may have moved).
    pub fn appended(&mut self, zone: usize) {
        let z = &mut self.zones[zone];
        z.in_flight = z.in_flight.saturating_sub(1);
    }

    /// The first LBA of zone `zone` (ZSLBA).
    pub fn start(&self, zone: usize) -> u64 {
        self.zones[zone].start
    }

    /// The append [`Self::place`] placed in zone `zone`, `lbas` blocks, was not submitted
    /// after all (the queue refused it): its room is free again.
    pub fn unplace(&mut self, zone: usize, lbas: u64) {
        let z = &mut self.zones[zone];
        z.in_flight = z.in_flight.saturating_sub(1);
        z.taken = z.taken.saturating_sub(lbas);
    }

    /// The reset of zone `zone` completed: it is empty again when `ok`; otherwise it is
    /// reset again the next time a write comes to it.
    pub fn reset_done(&mut self, zone: usize, ok: bool) {
        let z = &mut self.zones[zone];
        z.resetting = false;
        if ok {
            z.taken = 0;
        } else {
            z.needs_reset = true;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Zones given as (ZSLBA, ZCAP, blocks written).
    pub(crate) fn spans(zones: &[(u64, u64, u64)]) -> Vec<ZoneSpan> {
        zones
            .iter()
            .map(|&(start, capacity, written)| ZoneSpan {
                start,
                capacity,
                written,
            })
            .collect()
    }

    #[test]
    fn appends_fill_each_zone_exactly_then_move_on() {
        let mut w = ZoneWriter::new(spans(&[(0, 10, 0), (100, 10, 0)]));
        assert_eq!(
            w.place(4),
            Placement::Append {
                zslba: 0,
                lbas: 4,
                zone: 0
            }
        );
        assert_eq!(
            w.place(4),
            Placement::Append {
                zslba: 0,
                lbas: 4,
                zone: 0
            }
        );
        // The last one is cut to the room left.
        assert_eq!(
            w.place(4),
            Placement::Append {
                zslba: 0,
                lbas: 2,
                zone: 0
            }
        );
        // The next zone is empty: no reset.
        assert_eq!(
            w.place(4),
            Placement::Append {
                zslba: 100,
                lbas: 4,
                zone: 1
            }
        );
    }

    #[test]
    fn a_used_zone_is_reset_once_its_appends_complete() {
        let mut w = ZoneWriter::new(spans(&[(0, 4, 0), (100, 4, 3)]));
        assert!(matches!(w.place(4), Placement::Append { zone: 0, lbas: 4, .. }));
        // Zone 1 holds 3 blocks from before the run: reset first.
        assert_eq!(w.place(4), Placement::Reset { zslba: 100, zone: 1 });
        assert_eq!(w.place(4), Placement::Wait);
        w.reset_done(1, true);
        assert!(matches!(w.place(4), Placement::Append { zone: 1, lbas: 4, .. }));
        // Back to zone 0, whose append is still in flight: wait, then reset.
        assert_eq!(w.place(4), Placement::Wait);
        assert_eq!(w.place(4), Placement::Wait);
        w.appended(0);
        assert_eq!(w.place(4), Placement::Reset { zslba: 0, zone: 0 });
        // A failed reset is tried again.
        w.reset_done(0, false);
        assert_eq!(w.place(4), Placement::Reset { zslba: 0, zone: 0 });
        w.reset_done(0, true);
        assert!(matches!(w.place(1), Placement::Append { zone: 0, lbas: 1, .. }));
    }

    #[test]
    fn a_third_zone_waits_until_the_first_has_drained() {
        let mut w = ZoneWriter::new(spans(&[(0, 1, 0), (10, 1, 0), (20, 1, 0)]));
        assert!(matches!(w.place(1), Placement::Append { zone: 0, .. }));
        assert!(matches!(w.place(1), Placement::Append { zone: 1, .. }));
        assert_eq!(w.place(1), Placement::Wait, "zone 0's append is still in flight");
        w.appended(1);
        assert_eq!(w.place(1), Placement::Wait, "zone 0's, still");
        w.appended(0);
        assert!(matches!(w.place(1), Placement::Append { zone: 2, .. }));
    }

    #[test]
    fn one_zone_is_reset_and_refilled() {
        let mut w = ZoneWriter::new(spans(&[(50, 2, 2)]));
        assert_eq!(w.place(1), Placement::Reset { zslba: 50, zone: 0 });
        w.reset_done(0, true);
        assert!(matches!(w.place(1), Placement::Append { zslba: 50, .. }));
        assert!(matches!(w.place(1), Placement::Append { zslba: 50, .. }));
        assert_eq!(w.place(1), Placement::Wait);
        w.appended(0);
        assert_eq!(w.place(1), Placement::Wait, "one append still in flight");
        w.appended(0);
        assert_eq!(w.place(1), Placement::Reset { zslba: 50, zone: 0 });
    }

    #[test]
    fn a_zone_never_takes_more_than_its_capacity() {
        let mut w = ZoneWriter::new(spans(&[(0, 7, 0), (7, 5, 0), (12, 9, 0)]));
        let mut taken = [0u64; 3];
        for i in 0..1000u64 {
            match w.place(1 + i % 3) {
                Placement::Append { zone, lbas, .. } => {
                    taken[zone] += lbas;
                    assert!(taken[zone] <= [7, 5, 9][zone]);
                    w.appended(zone);
                }
                Placement::Reset { zone, .. } => {
                    taken[zone] = 0;
                    w.reset_done(zone, true);
                }
                Placement::Wait => panic!("nothing is in flight"),
            }
        }
    }
}
