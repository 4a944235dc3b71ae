//! What each I/O of a perf run does: its direction and its offset.
//!
//! The random source is SplitMix64 (Steele, Lea and Flood, 2014; the seeding generator of
//! xoshiro): one add, two multiplies and three xor-shifts per 64 bits, no table, passes
//! BigCrush — far better than a job that picks offsets needs, and cheaper than a call into a
//! general-purpose crate. Bounded values use Lemire's multiply-shift (`(x * n) >> 64`)
//! instead of a division; its bias is below `n / 2^64`, invisible for any region size.

pub use crate::cli::io_shared::rng::{SplitMix64, mix64};

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
    /// Sequential reads and writes, mixed by --rwmixread (fio's rw, also readwrite):
    /// reads and writes each walk the region in order, from their own position.
    #[value(name = "rw", alias = "readwrite")]
    ReadWrite,
    /// Sequential trims: Dataset Management deallocate (discard) of each I/O's blocks.
    Trim,
    /// Random trims.
    Randtrim,
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
            Rw::ReadWrite => "rw",
            Rw::Trim => "trim",
            Rw::Randtrim => "randtrim",
        }
    }

    /// Whether the workload changes the data (writes or trims), and so needs consent on
    /// a device.
    pub const fn writes(self) -> bool {
        !matches!(self, Rw::Read | Rw::Randread)
    }

    /// Whether the workload writes data from buffers.
    pub const fn writes_data(self) -> bool {
        matches!(self, Rw::Write | Rw::Randwrite | Rw::Randrw | Rw::ReadWrite)
    }

    /// Whether the workload trims (deallocates) instead of transferring data.
    pub const fn trims(self) -> bool {
        matches!(self, Rw::Trim | Rw::Randtrim)
    }

    /// Whether offsets are random.
    pub const fn random(self) -> bool {
        matches!(self, Rw::Randread | Rw::Randwrite | Rw::Randrw | Rw::Randtrim)
    }

    /// Whether reads and writes are mixed by --rwmixread.
    pub const fn mixed(self) -> bool {
        matches!(self, Rw::Randrw | Rw::ReadWrite)
    }

    /// Percentage of reads: 100 for read workloads, 0 for write and trim workloads, `mix`
    /// for the mixed ones.
    pub const fn read_percent(self, mix: u8) -> u8 {
        match self {
            Rw::Read | Rw::Randread => 100,
            Rw::Write | Rw::Randwrite | Rw::Trim | Rw::Randtrim => 0,
            Rw::Randrw | Rw::ReadWrite => mix,
        }
    }

    /// The direction of the I/Os that are not reads: trims for the trim workloads,
    /// writes otherwise.
    pub const fn other_dir(self) -> Dir {
        if self.trims() { TRIM } else { WRITE }
    }

    /// The directions the workload does, in fio's order.
    pub fn dirs(self) -> &'static [Dir] {
        match self {
            Rw::Read | Rw::Randread => &[READ],
            Rw::Write | Rw::Randwrite => &[WRITE],
            Rw::Randrw | Rw::ReadWrite => &[READ, WRITE],
            Rw::Trim | Rw::Randtrim => &[TRIM],
        }
    }
}

/// Direction of one I/O: an index into per-direction statistics.
pub type Dir = usize;
/// Reads.
pub const READ: Dir = 0;
/// Writes.
pub const WRITE: Dir = 1;
/// Trims (deallocate).
pub const TRIM: Dir = 2;
/// Number of directions.
pub const DIRS: usize = 3;
/// fio's names of the directions.
pub const DIR_NAMES: [&str; DIRS] = ["read", "write", "trim"];

/// Where in the namespace a job works, in logical blocks. Offsets are multiples of
/// `granule` blocks from `first_lba` (the smallest I/O size: fio's default blockalign).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First logical block of the region (`--offset` / block size).
    pub first_lba: u64,
    /// Logical blocks of the smallest I/O (`--bs`, or the smallest of `--bssplit`).
    pub granule: u64,
    /// Granules in the region (`--size` / the smallest I/O, rounded down; at least 1).
    pub granules: u64,
}

impl Region {
    /// Logical blocks in the region.
    pub fn lbas(&self) -> u64 {
        self.granule * self.granules
    }
}

/// One I/O: its first block, its length in blocks and its direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Io {
    /// First logical block.
    pub lba: u64,
    /// Logical blocks.
    pub lbas: u64,
    /// Direction.
    pub dir: Dir,
}

/// The offset, length and direction of each I/O of one thread, in order.
#[derive(Clone, Debug)]
pub struct Generator {
    region: Region,
    random: bool,
    read_percent: u8,
    other: Dir,
    /// (logical blocks, cumulative percentage) of each I/O size.
    sizes: Vec<(u64, u32)>,
    /// Next sequential position of each direction, in blocks from the region's start.
    next: [u64; DIRS],
    rng: SplitMix64,
}

impl Generator {
    /// A generator for `rw` over `region`, with I/O sizes `sizes` (logical blocks and
    /// weight in percent, the weights adding up to 100; each a multiple of the region's
    /// granule and at most the region); `seed` fixes the random sequence (each thread
    /// gets its own seed).
    pub fn new(rw: Rw, read_percent: u8, region: Region, sizes: &[(u64, u8)], seed: u64) -> Generator {
        assert!(region.granules > 0 && region.granule > 0, "empty region {region:?}");
        assert!(
            !sizes.is_empty() && sizes.iter().all(|&(l, _)| l > 0 && l <= region.lbas()),
            "I/O sizes {sizes:?} do not fit {region:?}"
        );
        let mut cumulative = 0u32;
        let sizes = sizes
            .iter()
            .map(|&(lbas, pct)| {
                cumulative += u32::from(pct);
                (lbas, cumulative)
            })
            .collect();
        Generator {
            region,
            random: rw.random(),
            read_percent: rw.read_percent(read_percent),
            other: rw.other_dir(),
            sizes,
            next: [0; DIRS],
            rng: SplitMix64::new(seed),
        }
    }

    /// The next I/O. Sequential offsets wrap to the start of the region where the next
    /// I/O would not fit; random ones are uniform over the positions where it fits, at
    /// multiples of the granule from the region's start, as fio's are. Sizes are drawn
    /// by their weights (fio's bssplit).
    #[inline]
    pub fn next_io(&mut self) -> Io {
        let dir = match self.read_percent {
            100 => READ,
            0 => self.other,
            p => {
                if self.rng.below(100) < u64::from(p) {
                    READ
                } else {
                    self.other
                }
            }
        };
        let lbas = if self.sizes.len() == 1 {
            self.sizes[0].0
        } else {
            let r = self.rng.below(100) as u32;
            self.sizes
                .iter()
                .find(|&&(_, cum)| r < cum)
                .unwrap_or(&self.sizes[self.sizes.len() - 1])
                .0
        };
        let total = self.region.lbas();
        let offset = if self.random {
            let positions = (total - lbas) / self.region.granule + 1;
            self.rng.below(positions) * self.region.granule
        } else {
            let pos = &mut self.next[dir];
            if *pos + lbas > total {
                *pos = 0;
            }
            let at = *pos;
            *pos += lbas;
            at
        };
        Io {
            lba: self.region.first_lba + offset,
            lbas,
            dir,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGION: Region = Region {
        first_lba: 1000,
        granule: 8,
        granules: 10,
    };
    const BS8: [(u64, u8); 1] = [(8, 100)];

    fn generator(rw: Rw, pct: u8, seed: u64) -> Generator {
        Generator::new(rw, pct, REGION, &BS8, seed)
    }

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
        let mut g = generator(Rw::Randread, 50, 42);
        let mut hit = [false; 10];
        for _ in 0..10_000 {
            let Io { lba, lbas, dir } = g.next_io();
            assert_eq!((dir, lbas), (READ, 8));
            assert!((1000..1080).contains(&lba), "{lba}");
            assert_eq!((lba - 1000) % 8, 0, "{lba} not aligned to the I/O size");
            hit[((lba - 1000) / 8) as usize] = true;
        }
        assert!(hit.iter().all(|&h| h), "every slot is reached: {hit:?}");
    }

    #[test]
    fn sequential_offsets_wrap_at_the_end() {
        let mut g = generator(Rw::Write, 50, 42);
        let lbas: Vec<u64> = (0..12)
            .map(|_| g.next_io())
            .map(|io| (assert_eq!(io.dir, WRITE), io.lba).1)
            .collect();
        assert_eq!(
            lbas,
            [1000, 1008, 1016, 1024, 1032, 1040, 1048, 1056, 1064, 1072, 1000, 1008]
        );
        let one = Region { granules: 1, ..REGION };
        let mut g = Generator::new(Rw::Read, 0, one, &BS8, 0);
        assert_eq!((g.next_io().lba, g.next_io().lba), (1000, 1000));
    }

    #[test]
    fn readwrite_walks_reads_and_writes_in_order_each() {
        // fio's rw: sequential, mixed by rwmixread, each direction from its own position.
        let mut g = generator(Rw::ReadWrite, 30, 5);
        let mut next = [1000u64, 1000];
        let mut count = [0u32; 2];
        for _ in 0..1000 {
            let io = g.next_io();
            assert!(io.dir == READ || io.dir == WRITE, "{io:?}");
            assert_eq!(io.lba, next[io.dir], "{io:?}");
            next[io.dir] = if io.lba == 1072 { 1000 } else { io.lba + 8 };
            count[io.dir] += 1;
        }
        assert!((250..350).contains(&count[READ]), "{count:?}");
    }

    #[test]
    fn trims_go_in_the_trim_direction() {
        for rw in [Rw::Trim, Rw::Randtrim] {
            let mut g = generator(rw, 50, 1);
            assert!((0..100).all(|_| g.next_io().dir == TRIM), "{rw:?}");
            assert!(rw.trims() && rw.writes() && !rw.writes_data());
            assert_eq!(rw.dirs(), &[TRIM]);
        }
        let mut g = generator(Rw::Trim, 50, 1);
        assert_eq!((g.next_io().lba, g.next_io().lba), (1000, 1008));
    }

    #[test]
    fn bssplit_draws_sizes_by_weight_and_keeps_them_inside() {
        // 8 blocks (25%) and 32 blocks (75%) in a 80-block region aligned to 8.
        let sizes = [(8, 25), (32, 75)];
        for rw in [Rw::Randread, Rw::Read] {
            let mut g = Generator::new(rw, 100, REGION, &sizes, 11);
            let mut big = 0;
            let mut seq_next = 1000;
            for _ in 0..40_000 {
                let Io { lba, lbas, .. } = g.next_io();
                assert!(lbas == 8 || lbas == 32, "{lbas}");
                assert!(lba >= 1000 && lba + lbas <= 1080, "{lba}+{lbas}");
                assert_eq!((lba - 1000) % 8, 0);
                if rw == Rw::Read {
                    if seq_next + lbas > 1080 {
                        seq_next = 1000;
                    }
                    assert_eq!(lba, seq_next);
                    seq_next += lbas;
                }
                big += usize::from(lbas == 32);
            }
            let share = big as f64 / 400.0;
            assert!((share - 75.0).abs() < 1.5, "{rw:?}: {share}% of 32-block I/Os");
        }
    }

    #[test]
    fn rwmixread_sets_the_share_of_reads() {
        for pct in [0u8, 10, 50, 90, 100] {
            let mut g = generator(Rw::Randrw, pct, 9);
            let reads = (0..100_000).filter(|_| g.next_io().dir == READ).count() as f64 / 1000.0;
            assert!((reads - f64::from(pct)).abs() < 1.0, "{pct}%: {reads}% reads");
        }
    }

    #[test]
    fn threads_with_different_seeds_differ_and_a_seed_repeats() {
        let run = |seed| {
            let mut g = Generator::new(Rw::Randread, 100, REGION, &[(8, 50), (16, 50)], seed);
            (0..32).map(|_| g.next_io()).collect::<Vec<_>>()
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
        assert_eq!(Rw::ReadWrite.name(), "rw");
        assert!(Rw::ReadWrite.writes_data() && !Rw::ReadWrite.random() && Rw::ReadWrite.mixed());
    }
}
