//! What each I/O of a perf run does: its direction and its offset.
//!
//! The random source is SplitMix64 (Steele, Lea and Flood, 2014; the seeding generator of
//! xoshiro): one add, two multiplies and three xor-shifts per 64 bits, no table, passes
//! BigCrush — far better than a job that picks offsets needs, and cheaper than a call into a
//! general-purpose crate. Bounded values use Lemire's multiply-shift (`(x * n) >> 64`)
//! instead of a division; its bias is below `n / 2^64`, invisible for any region size.

/// The SplitMix64 generator.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose sequence is fixed by `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// A value uniform in `0..n` (`n` > 0).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// SplitMix64's output function: a bijective 64-bit mix (also a good hash of a counter).
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The workloads of `--rw`, with fio's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Rw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Random reads and writes, mixed by --rwmixread.
    Randrw,
}

impl Rw {
    /// fio's name of the workload.
    pub const fn name(self) -> &'static str {
        match self {
            Rw::Read => "read",
            Rw::Write => "write",
            Rw::Randread => "randread",
            Rw::Randwrite => "randwrite",
            Rw::Randrw => "randrw",
        }
    }

    /// Whether the workload writes (and so destroys data).
    pub const fn writes(self) -> bool {
        !matches!(self, Rw::Read | Rw::Randread)
    }

    /// Whether offsets are random.
    pub const fn random(self) -> bool {
        matches!(self, Rw::Randread | Rw::Randwrite | Rw::Randrw)
    }

    /// Percentage of reads: 100 for read workloads, 0 for write workloads, `mix` for randrw.
    pub const fn read_percent(self, mix: u8) -> u8 {
        match self {
            Rw::Read | Rw::Randread => 100,
            Rw::Write | Rw::Randwrite => 0,
            Rw::Randrw => mix,
        }
    }
}

/// Direction of one I/O: an index into per-direction statistics.
pub type Dir = usize;
/// Reads.
pub const READ: Dir = 0;
/// Writes.
pub const WRITE: Dir = 1;

/// Where in the namespace a job works and how it walks it, in logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First logical block of the region (`--offset` / block size).
    pub first_lba: u64,
    /// Logical blocks per I/O (`--bs` / block size).
    pub lbas_per_io: u64,
    /// I/O-sized slots in the region (`--size` / `--bs`, rounded down; at least 1).
    pub slots: u64,
}

/// The offset and direction of each I/O of one thread, in order.
#[derive(Clone, Debug)]
pub struct Generator {
    region: Region,
    random: bool,
    read_percent: u8,
    next_slot: u64,
    rng: SplitMix64,
}

impl Generator {
    /// A generator for `rw` over `region`; `seed` fixes the random sequence (each thread
    /// gets its own seed).
    pub fn new(rw: Rw, read_percent: u8, region: Region, seed: u64) -> Generator {
        assert!(region.slots > 0 && region.lbas_per_io > 0, "empty region {region:?}");
        Generator {
            region,
            random: rw.random(),
            read_percent: rw.read_percent(read_percent),
            next_slot: 0,
            rng: SplitMix64::new(seed),
        }
    }

    /// The next I/O: its first LBA and direction. Sequential offsets wrap to the start
    /// of the region at its end; random ones are uniform over the region's slots, so
    /// block-aligned to the I/O size relative to the region's start, as fio's are.
    #[inline]
    pub fn next_io(&mut self) -> (u64, Dir) {
        let slot = if self.random {
            self.rng.below(self.region.slots)
        } else {
            let s = self.next_slot;
            self.next_slot = if s + 1 == self.region.slots { 0 } else { s + 1 };
            s
        };
        let dir = match self.read_percent {
            100 => READ,
            0 => WRITE,
            p => {
                if self.rng.below(100) < u64::from(p) {
                    READ
                } else {
                    WRITE
                }
            }
        };
        (self.region.first_lba + slot * self.region.lbas_per_io, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGION: Region = Region {
        first_lba: 1000,
        lbas_per_io: 8,
        slots: 10,
    };

    #[test]
    fn splitmix_matches_the_reference() {
        // The first outputs for seed 1234567 from the reference C implementation
        // (https://prng.di.unimi.it/splitmix64.c).
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
        assert_eq!(r.next_u64(), 9_817_491_932_198_370_423);
    }

    #[test]
    fn bounded_values_stay_in_range_and_cover_it() {
        let mut r = SplitMix64::new(7);
        let mut seen = [0u32; 10];
        for _ in 0..100_000 {
            let v = r.below(10);
            seen[v as usize] += 1;
        }
        // Uniform: each value near 10 000 (binomial σ ≈ 95).
        assert!(seen.iter().all(|&n| (9_500..10_500).contains(&n)), "{seen:?}");
        assert_eq!(r.below(1), 0);
        let big = u64::MAX - 1;
        assert!((0..1000).all(|_| r.below(big) < big));
    }

    #[test]
    fn random_offsets_are_aligned_and_inside_the_region() {
        let mut g = Generator::new(Rw::Randread, 50, REGION, 42);
        let mut hit = [false; 10];
        for _ in 0..10_000 {
            let (lba, dir) = g.next_io();
            assert_eq!(dir, READ);
            assert!((1000..1080).contains(&lba), "{lba}");
            assert_eq!((lba - 1000) % 8, 0, "{lba} not aligned to the I/O size");
            hit[((lba - 1000) / 8) as usize] = true;
        }
        assert!(hit.iter().all(|&h| h), "every slot is reached: {hit:?}");
    }

    #[test]
    fn sequential_offsets_wrap_at_the_end() {
        let mut g = Generator::new(Rw::Write, 50, REGION, 42);
        let lbas: Vec<u64> = (0..12)
            .map(|_| g.next_io())
            .map(|(l, d)| (assert_eq!(d, WRITE), l).1)
            .collect();
        assert_eq!(
            lbas,
            [1000, 1008, 1016, 1024, 1032, 1040, 1048, 1056, 1064, 1072, 1000, 1008]
        );
        let one = Region { slots: 1, ..REGION };
        let mut g = Generator::new(Rw::Read, 0, one, 0);
        assert_eq!((g.next_io(), g.next_io()), ((1000, READ), (1000, READ)));
    }

    #[test]
    fn rwmixread_sets_the_share_of_reads() {
        for pct in [0u8, 10, 50, 90, 100] {
            let mut g = Generator::new(Rw::Randrw, pct, REGION, 9);
            let reads = (0..100_000).filter(|_| g.next_io().1 == READ).count() as f64 / 1000.0;
            assert!((reads - f64::from(pct)).abs() < 1.0, "{pct}%: {reads}% reads");
        }
    }

    #[test]
    fn threads_with_different_seeds_differ_and_a_seed_repeats() {
        let run = |seed| {
            let mut g = Generator::new(Rw::Randread, 100, REGION, seed);
            (0..32).map(|_| g.next_io().0).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn workload_properties() {
        assert!(Rw::Randrw.writes() && Rw::Write.writes() && !Rw::Randread.writes());
        assert!(Rw::Randrw.random() && !Rw::Read.random());
        assert_eq!(Rw::Randread.read_percent(30), 100);
        assert_eq!(Rw::Randwrite.read_percent(30), 0);
        assert_eq!(Rw::Randrw.read_percent(30), 30);
        assert_eq!(Rw::Randrw.name(), "randrw");
    }
}
