//! Allocation maps: one bit per allocatable thing (index node, inode, data block), held in
//! memory and stored as allocation-map blocks of [`BITS_PER_BITMAP_BLOCK`] bits each.

use super::format::{BITS_PER_BITMAP_BLOCK, PAYLOAD};

const WORDS_PER_BLOCK: usize = (BITS_PER_BITMAP_BLOCK / 64) as usize;

/// A fixed-size bitmap; bit `i` set means thing `i` is in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    bits: u64,
}

impl Bitmap {
    /// `bits` clear bits.
    pub fn new(bits: u64) -> Bitmap {
        Bitmap {
            words: vec![0; bits.div_ceil(64) as usize],
            bits,
        }
    }

    /// Number of bits.
    pub fn len(&self) -> u64 {
        self.bits
    }

    /// Whether the map has no bits.
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    /// Bit `i`.
    pub fn get(&self, i: u64) -> bool {
        self.words[(i / 64) as usize] >> (i % 64) & 1 == 1
    }

    /// Sets bits `[start, start + n)` to `on`.
    pub fn set_range(&mut self, start: u64, n: u64, on: bool) {
        assert!(
            start + n <= self.bits,
            "bits {start}+{n} outside a map of {}",
            self.bits
        );
        for i in start..start + n {
            let w = &mut self.words[(i / 64) as usize];
            if on {
                *w |= 1 << (i % 64);
            } else {
                *w &= !(1 << (i % 64));
            }
        }
    }

    /// Sets bit `i` to `on`.
    pub fn set(&mut self, i: u64, on: bool) {
        self.set_range(i, 1, on);
    }

    /// Bits set.
    pub fn count_ones(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }

    /// The first clear bit at or after `from`, wrapping around once.
    pub fn find_clear(&self, from: u64) -> Option<u64> {
        self.find_run(from, 1).map(|(s, _)| s)
    }

    /// The first run of clear bits at or after `from` (wrapping around once), at most
    /// `max` long: its start and length.
    pub fn find_run(&self, from: u64, max: u64) -> Option<(u64, u64)> {
        if self.bits == 0 || max == 0 {
            return None;
        }
        let from = from % self.bits;
        self.run_in(from, self.bits, max).or_else(|| self.run_in(0, from, max))
    }

    /// The start of the first run of at least `want` clear bits at or after `from`
    /// (wrapping around once).
    pub fn find_run_of(&self, from: u64, want: u64) -> Option<u64> {
        if self.bits == 0 || want == 0 || want > self.bits {
            return None;
        }
        let from = from % self.bits;
        self.run_of_in(from, self.bits, want)
            .or_else(|| self.run_of_in(0, from.min(self.bits), want))
    }

    fn run_of_in(&self, lo: u64, hi: u64, want: u64) -> Option<u64> {
        let mut i = lo;
        while i < hi {
            let (start, n) = self.run_in(i, hi, want)?;
            if n >= want {
                return Some(start);
            }
            i = start + n;
        }
        None
    }

    fn run_in(&self, lo: u64, hi: u64, max: u64) -> Option<(u64, u64)> {
        let mut i = lo;
        while i < hi {
            let w = self.words[(i / 64) as usize];
            if i % 64 == 0 && w == u64::MAX {
                i += 64;
                continue;
            }
            if !self.get(i) {
                let start = i;
                while i < hi && i - start < max && !self.get(i) {
                    i += 1;
                }
                return Some((start, i - start));
            }
            i += 1;
        }
        None
    }

    /// Number of allocation-map blocks needed to store the map.
    pub fn blocks(&self) -> u64 {
        self.bits.div_ceil(BITS_PER_BITMAP_BLOCK).max(1)
    }

    /// The map block that holds bit `i`.
    pub fn block_of(i: u64) -> u64 {
        i / BITS_PER_BITMAP_BLOCK
    }

    /// Loads map block `n` from its payload.
    pub fn load_block(&mut self, n: u64, payload: &[u8]) {
        let first = n as usize * WORDS_PER_BLOCK;
        for (k, w) in self.words.iter_mut().skip(first).take(WORDS_PER_BLOCK).enumerate() {
            *w = u64::from_le_bytes(payload[k * 8..k * 8 + 8].try_into().expect("8 bytes"));
        }
    }

    /// Writes map block `n` into `payload` ([`PAYLOAD`] bytes).
    pub fn store_block(&self, n: u64, payload: &mut [u8]) {
        payload[..PAYLOAD].fill(0);
        let first = n as usize * WORDS_PER_BLOCK;
        for (k, w) in self.words.iter().skip(first).take(WORDS_PER_BLOCK).enumerate() {
            payload[k * 8..k * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
    }

    /// Whether bits at or beyond `len()` are clear (a loaded map block may say otherwise
    /// if it is corrupt).
    pub fn tail_is_clear(&self) -> bool {
        let full = self.bits / 64;
        let rem = self.bits % 64;
        rem == 0 || self.words.get(full as usize).is_none_or(|w| w >> rem == 0)
    }

    /// Indices of bits that differ between two maps of the same size.
    pub fn differences<'a>(&'a self, other: &'a Bitmap) -> impl Iterator<Item = u64> + 'a {
        self.words
            .iter()
            .zip(&other.words)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .flat_map(|(k, (a, b))| {
                let d = a ^ b;
                (0..64).filter(move |j| d >> j & 1 == 1).map(move |j| k as u64 * 64 + j)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_found_first_fit_and_wrap() {
        let mut m = Bitmap::new(200);
        m.set_range(0, 70, true);
        assert_eq!(m.find_run(0, 10), Some((70, 10)));
        m.set_range(70, 130, true);
        assert_eq!(m.find_run(0, 10), None);
        m.set(5, false);
        assert_eq!(m.find_run(100, 10), Some((5, 1)));
        assert_eq!(m.count_ones(), 199);
        m.set_range(100, 50, false);
        m.set(30, false);
        assert_eq!(m.find_run_of(0, 20), Some(100));
        assert_eq!(m.find_run_of(120, 40), None);
    }

    #[test]
    fn blocks_round_trip() {
        let mut m = Bitmap::new(BITS_PER_BITMAP_BLOCK * 2 + 5);
        m.set(3, true);
        m.set(BITS_PER_BITMAP_BLOCK + 1, true);
        m.set(BITS_PER_BITMAP_BLOCK * 2 + 4, true);
        let mut n = Bitmap::new(m.len());
        let mut p = vec![0u8; PAYLOAD];
        for b in 0..m.blocks() {
            m.store_block(b, &mut p);
            n.load_block(b, &p);
        }
        assert_eq!(m, n);
        assert!(n.tail_is_clear());
        assert_eq!(m.differences(&Bitmap::new(m.len())).collect::<Vec<_>>().len(), 3);
    }
}
