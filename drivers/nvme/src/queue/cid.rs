//! Command identifier allocation and tracking (Base Specification 2.0, §4.2: the CID
//! is unique among outstanding commands of one submission queue).

use std::collections::VecDeque;

/// A fixed-capacity table of outstanding commands keyed by command identifier.
///
/// Everything is allocated up front: inserting and removing never allocate. Free CIDs are
/// handed out first-in first-out, so a CID that just completed is reused as late as
/// possible — an Abort or a late completion for an old CID is then unlikely to hit a new
/// command.
pub struct CidTable<T> {
    slots: Box<[Option<T>]>,
    free: VecDeque<u16>,
}

impl<T> CidTable<T> {
    /// A table for `capacity` outstanding commands (1..=65535; CID 0xFFFF is never used
    /// because the Error Information log reserves it to mean "no command").
    ///
    /// # Panics
    ///
    /// If `capacity` is 0 or 65536 or more — a programming error, not a device condition.
    pub fn new(capacity: usize) -> CidTable<T> {
        assert!(
            (1..=0xFFFF).contains(&capacity),
            "CID table capacity {capacity} is outside 1..=65535"
        );
        CidTable {
            slots: (0..capacity).map(|_| None).collect(),
            free: (0..capacity as u16).collect(),
        }
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
            Some(cid) => {
                self.slots[cid as usize] = Some(value);
                Ok(cid)
            }
            None => Err(value),
        }
    }

    /// Stops tracking `cid` and returns its value; `None` if `cid` is not outstanding
    /// (a completion for an unknown or already completed command).
    pub fn remove(&mut self, cid: u16) -> Option<T> {
        let value = self.slots.get_mut(cid as usize)?.take()?;
        self.free.push_back(cid);
        Some(value)
    }

    /// The value tracked under `cid`, if outstanding.
    pub fn get(&self, cid: u16) -> Option<&T> {
        self.slots.get(cid as usize)?.as_ref()
    }

    /// The value tracked under `cid`, mutably, if outstanding.
    pub fn get_mut(&mut self, cid: u16) -> Option<&mut T> {
        self.slots.get_mut(cid as usize)?.as_mut()
    }

    /// The outstanding commands, in CID order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(cid, v)| Some((cid as u16, v.as_ref()?)))
    }

    /// Removes the first outstanding command (lowest CID) and returns it; `None` when
    /// idle. Calling this until `None` completes every outstanding command exactly once,
    /// as a controller reset requires.
    pub fn pop_any(&mut self) -> Option<(u16, T)> {
        if self.is_idle() {
            return None;
        }
        let cid = self.slots.iter().position(Option::is_some)? as u16;
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
    fn reuses_cids_last() {
        let mut t = CidTable::new(4);
        let first = t.insert(()).unwrap();
        t.remove(first).unwrap();
        let next: Vec<u16> = (0..4).map(|_| t.insert(()).unwrap()).collect();
        assert_eq!(next, [1, 2, 3, 0]);
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
        assert_eq!(drained, [(0, 0), (1, 1), (3, 3), (4, 4)]);
        assert!(t.is_idle());
    }

    #[test]
    #[should_panic(expected = "outside 1..=65535")]
    fn capacity_is_bounded() {
        let _ = CidTable::<()>::new(65536);
    }
}
