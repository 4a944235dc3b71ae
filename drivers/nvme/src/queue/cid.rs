//! Command identifier allocation and tracking (Base Specification 2.0, §4.2: the CID
//! is unique among outstanding commands of one submission queue).

use std::collections::VecDeque;

/// A fixed-capacity table of outstanding commands keyed by command identifier.
///
/// Everything is allocated up front: inserting and removing never allocate. Free slots are
/// handed out first-in first-out, so a slot that just completed is reused as late as
/// possible.
///
/// A CID is a slot index in its low bits and the slot's *generation* in the bits above
/// (as Linux's `nvme_cid_install_genctr` does): each time a slot is freed its generation
/// advances, so a completion that arrives late, twice, or made up — for a command that
/// has completed and whose slot now holds a new command — carries an old generation and
/// is refused instead of completing the new command, whose buffer the device may still
/// be writing. With `capacity` slots there are `16 − ⌈log2 capacity⌉` generation bits:
/// 13 for a 7-command queue, 4 for a 4095-command one, none above 32768 (such tables
/// cannot tell a stale completion from a new command's). The generation that would make
/// CID FFFFh is skipped, so when the capacity is a power of two the slot whose index bits
/// are all ones has one generation fewer than the others. With one generation bit that
/// slot would have a single generation, so a table asked for 32768 slots tracks 32767:
/// whenever there are generation bits, every slot has at least two generations.
pub struct CidTable<T> {
    slots: Box<[Option<T>]>,
    /// The generation each slot's next (or current) command carries.
    generations: Box<[u16]>,
    free: VecDeque<u16>,
    /// Bits of the CID holding the slot index.
    index_bits: u32,
}

impl<T> CidTable<T> {
    /// A table for `capacity` outstanding commands (1..=65535; CID 0xFFFF is never used
    /// because the Error Information log reserves it to mean "no command"). A capacity of
    /// 32768 gives a table of 32767 (see the type's documentation): [`Self::capacity`]
    /// says how many it tracks.
    ///
    /// # Panics
    ///
    /// If `capacity` is 0 or 65536 or more — a programming error, not a device condition.
    pub fn new(capacity: usize) -> CidTable<T> {
        assert!(
            (1..=0xFFFF).contains(&capacity),
            "CID table capacity {capacity} is outside 1..=65535"
        );
        let index_bits = usize::BITS - (capacity - 1).leading_zeros();
        // One generation bit, and slot 7FFFh exists: its second generation would make CID
        // FFFFh, so it would never change generation. Leave that slot out.
        let capacity = if index_bits == 15 && capacity == 1 << 15 {
            capacity - 1
        } else {
            capacity
        };
        CidTable {
            slots: (0..capacity).map(|_| None).collect(),
            generations: vec![0; capacity].into_boxed_slice(),
            free: (0..capacity as u16).collect(),
            index_bits,
        }
    }

    /// The CID of slot `index` in its current generation.
    fn cid(&self, index: u16) -> u16 {
        // `index_bits` is 16 only when there are no generation bits (capacity > 32768).
        let generation = self.generations[index as usize]
            .checked_shl(self.index_bits)
            .unwrap_or(0);
        generation | index
    }

    /// The slot `cid` names, if its generation is the slot's current one.
    fn index(&self, cid: u16) -> Option<usize> {
        let mask = (1u32 << self.index_bits) - 1;
        let index = (cid as u32 & mask) as usize;
        (index < self.slots.len() && self.cid(index as u16) == cid).then_some(index)
    }

    /// Advances slot `index`'s generation, skipping the one that would make CID 0xFFFF.
    fn next_generation(&mut self, index: u16) {
        let generation_bits = 16 - self.index_bits;
        let count = 1u32 << generation_bits;
        let g = &mut self.generations[index as usize];
        *g = ((*g as u32 + 1) % count) as u16;
        if self.cid(index) == 0xFFFF {
            let g = &mut self.generations[index as usize];
            *g = ((*g as u32 + 1) % count) as u16;
        }
    }

    /// The slot (0..capacity) of outstanding command `cid`: an index for per-command
    /// resources such as PRP list pages, which CIDs are not (they carry a generation).
    pub fn slot(&self, cid: u16) -> Option<usize> {
        self.index(cid).filter(|&i| self.slots[i].is_some())
    }

    /// The most commands the table can track.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Commands currently outstanding.
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Whether no command is outstanding.
    pub fn is_idle(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    /// Whether every CID is in use.
    pub fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// Tracks `value` under a free CID and returns the CID; gives `value` back if every
    /// CID is in use.
    pub fn insert(&mut self, value: T) -> Result<u16, T> {
        match self.free.pop_front() {
            Some(index) => {
                self.slots[index as usize] = Some(value);
                Ok(self.cid(index))
            }
            None => Err(value),
        }
    }

    /// Stops tracking `cid` and returns its value; `None` if `cid` is not outstanding
    /// (a completion for an unknown, already completed or stale command).
    pub fn remove(&mut self, cid: u16) -> Option<T> {
        let index = self.index(cid)?;
        let value = self.slots[index].take()?;
        self.next_generation(index as u16);
        self.free.push_back(index as u16);
        Some(value)
    }

    /// The value tracked under `cid`, if outstanding.
    pub fn get(&self, cid: u16) -> Option<&T> {
        self.slots[self.index(cid)?].as_ref()
    }

    /// The value tracked under `cid`, mutably, if outstanding.
    pub fn get_mut(&mut self, cid: u16) -> Option<&mut T> {
        let index = self.index(cid)?;
        self.slots[index].as_mut()
    }

    /// The outstanding commands, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((self.cid(i as u16), v.as_ref()?)))
    }

    /// The outstanding commands' values, mutably, in slot order.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().filter_map(Option::as_mut)
    }

    /// Removes the first outstanding command (lowest slot) and returns it; `None` when
    /// idle. Calling this until `None` completes every outstanding command exactly once,
    /// as a controller reset requires.
    pub fn pop_any(&mut self) -> Option<(u16, T)> {
        if self.is_idle() {
            return None;
        }
        let index = self.slots.iter().position(Option::is_some)? as u16;
        let cid = self.cid(index);
        self.remove(cid).map(|v| (cid, v))
    }
}

impl<T> std::fmt::Debug for CidTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CidTable")
            .field("capacity", &self.capacity())
            .field("outstanding", &self.outstanding())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_up_to_capacity() {
        let mut t = CidTable::new(3);
        let a = t.insert("a").unwrap();
        let b = t.insert("b").unwrap();
        let c = t.insert("c").unwrap();
        assert_eq!((a, b, c), (0, 1, 2));
        assert!(t.is_full());
        assert_eq!(t.insert("d"), Err("d"));
        assert_eq!(t.get(b), Some(&"b"));
        assert_eq!(t.remove(b), Some("b"));
        assert_eq!(t.remove(b), None, "a second completion for the same CID is refused");
        assert_eq!(t.remove(40), None, "an unknown CID is refused");
        assert_eq!(t.outstanding(), 2);
    }

    #[test]
    fn reuses_slots_last_with_a_new_generation() {
        let mut t = CidTable::new(4);
        let first = t.insert(()).unwrap();
        t.remove(first).unwrap();
        let next: Vec<u16> = (0..4).map(|_| t.insert(()).unwrap()).collect();
        assert_eq!(next, [1, 2, 3, 1 << 2], "slot 0 again, generation 1");
    }

    #[test]
    fn a_completed_cid_never_matches_the_command_reusing_its_slot() {
        let mut t = CidTable::new(1);
        let a = t.insert("a").unwrap();
        assert_eq!(t.remove(a), Some("a"));
        let b = t.insert("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(t.remove(a), None, "a duplicate completion of a is refused");
        assert_eq!(t.get(a), None);
        assert_eq!(t.get(b), Some(&"b"));
        assert_eq!(t.slot(b), Some(0));
        assert_eq!(t.slot(a), None);
        assert_eq!(t.remove(b), Some("b"));
        assert_eq!(t.slot(b), None, "not outstanding");
    }

    #[test]
    fn generations_wrap_and_never_make_cid_ffff() {
        // (capacity asked, capacity tracked, generations of the last slot): 2^(generation
        // bits), one fewer when the last slot's index bits are all ones (the generation
        // making CID FFFFh is skipped), 1 without generation bits.
        let cases = [
            (1, 1, 65535),
            (2, 2, 32767),
            (3, 3, 16384),
            (4, 4, 16383),
            (7, 7, 8192),
            (8, 8, 8191),
            (255, 255, 256),
            (256, 256, 255),
            (4096, 4096, 15),
            (32767, 32767, 2),
            (32768, 32767, 2),
            (32769, 32769, 1),
            (65535, 65535, 1),
        ];
        for (capacity, tracked, generations) in cases {
            let mut t = CidTable::new(capacity);
            assert_eq!(t.capacity(), tracked, "capacity {capacity}");
            let last = (tracked - 1) as u16;
            // Fill every slot but the last, so the last is the only one handed out.
            let others: Vec<u16> = (0..last).map(|_| t.insert(()).unwrap()).collect();
            // Two full turns of the last slot's generations and a bit.
            let rounds = 2 * generations + 3;
            let mut cids = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let cid = t.insert(()).unwrap();
                assert_ne!(cid, 0xFFFF, "capacity {capacity}");
                assert_eq!(t.slot(cid), Some(last as usize), "capacity {capacity}");
                cids.push(cid);
                t.remove(cid).unwrap();
            }
            let distinct: std::collections::HashSet<_> = cids.iter().collect();
            assert_eq!(
                distinct.len(),
                generations,
                "capacity {capacity}: generations of slot {last}"
            );
            // Each generation once per turn, then the turn repeats: the generation wrapped.
            for (i, &cid) in cids.iter().enumerate() {
                assert_eq!(cid, cids[i % generations], "capacity {capacity}: CID {i} did not wrap");
            }
            for cid in others {
                t.remove(cid).unwrap();
            }
            assert!(t.is_idle());
        }
    }

    #[test]
    fn pop_any_drains_each_command_once() {
        let mut t = CidTable::new(8);
        for i in 0..5 {
            t.insert(i).unwrap();
        }
        t.remove(2).unwrap();
        let mut drained = Vec::new();
        while let Some((cid, v)) = t.pop_any() {
            drained.push((cid, v));
        }
        assert_eq!(drained, [(0, 0), (1, 1), (3, 3), (4, 4)], "first generation");
        assert!(t.is_idle());
    }

    #[test]
    #[should_panic(expected = "outside 1..=65535")]
    fn capacity_is_bounded() {
        let _ = CidTable::<()>::new(65536);
    }
}
