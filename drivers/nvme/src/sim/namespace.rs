//! RAM-backed namespace contents, stored sparsely: chunks spring into existence when first
//! written, and unwritten or deallocated blocks read back as zeros (DLFEAT = 001b).

use super::config::SimNamespace;
use std::collections::BTreeMap;

/// Bytes per storage chunk.
const CHUNK: u64 = 64 * 1024;

/// The contents of one byte range of a namespace, saved before a command changed it: the
/// bytes, or `None` where the range read as zeros (so zero runs cost no memory).
pub(super) struct Saved {
    /// Byte offset in the namespace.
    pub(super) offset: u64,
    /// Length in bytes.
    pub(super) len: u64,
    /// The bytes (`len` of them), or `None` for zeros.
    pub(super) old: Option<Box<[u8]>>,
}

/// One namespace: its format and its data.
pub(super) struct Namespace {
    /// Logical block size in bytes (512 or 4096).
    pub(super) block_size: u32,
    /// Capacity in logical blocks; 0 for an inactive NSID.
    pub(super) blocks: u64,
    /// Attached to the controller (Namespace Attachment detaches and attaches it again).
    pub(super) attached: bool,
    chunks: BTreeMap<u64, Box<[u8]>>,
}

/// The parts of a byte range that fall in each chunk: (chunk index, offset in the chunk,
/// offset in the range, length).
fn pieces(offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize, usize)> {
    let mut done = 0usize;
    std::iter::from_fn(move || {
        if done == len {
            return None;
        }
        let at = offset + done as u64;
        let in_chunk = (at % CHUNK) as usize;
        let n = (CHUNK as usize - in_chunk).min(len - done);
        let piece = (at / CHUNK, in_chunk, done, n);
        done += n;
        Some(piece)
    })
}

impl Namespace {
    pub(super) fn new(cfg: &SimNamespace) -> Namespace {
        Namespace {
            block_size: cfg.block_size,
            blocks: cfg.blocks,
            attached: true,
            chunks: BTreeMap::new(),
        }
    }

    /// Whether the NSID has an active namespace: allocated and attached.
    pub(super) fn is_active(&self) -> bool {
        self.is_allocated() && self.attached
    }

    /// Whether the NSID has a namespace, attached or not.
    pub(super) fn is_allocated(&self) -> bool {
        self.blocks > 0
    }

    /// Capacity in bytes.
    pub(super) fn bytes(&self) -> u64 {
        self.blocks * self.block_size as u64
    }

    /// The index of the current LBA format: 0 for 512-byte blocks, 1 for 4096.
    pub(super) fn lba_format(&self) -> u8 {
        u8::from(self.block_size == 4096)
    }

    /// Copies `dst.len()` bytes at byte `offset` into `dst`.
    pub(super) fn read(&self, offset: u64, dst: &mut [u8]) {
        for (chunk, at, pos, n) in pieces(offset, dst.len()) {
            let out = &mut dst[pos..pos + n];
            match self.chunks.get(&chunk) {
                Some(c) => out.copy_from_slice(&c[at..at + n]),
                None => out.fill(0),
            }
        }
    }

    /// Copies `src` to byte `offset`.
    pub(super) fn write(&mut self, offset: u64, src: &[u8]) {
        for (chunk, at, pos, n) in pieces(offset, src.len()) {
            let c = self
                .chunks
                .entry(chunk)
                .or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            c[at..at + n].copy_from_slice(&src[pos..pos + n]);
        }
    }

    /// Whether the `data.len()` bytes at `offset` equal `data`.
    pub(super) fn equals(&self, offset: u64, data: &[u8]) -> bool {
        pieces(offset, data.len()).all(|(chunk, at, pos, n)| match self.chunks.get(&chunk) {
            Some(c) => c[at..at + n] == data[pos..pos + n],
            None => data[pos..pos + n].iter().all(|&b| b == 0),
        })
    }

    /// Zeroes (deallocates) `len` bytes at `offset`.
    pub(super) fn zero(&mut self, offset: u64, len: u64) {
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let chunk = at / CHUNK;
            let in_chunk = at % CHUNK;
            let n = (CHUNK - in_chunk).min(end - at);
            if n == CHUNK {
                self.chunks.remove(&chunk);
            } else if let Some(c) = self.chunks.get_mut(&chunk) {
                c[in_chunk as usize..(in_chunk + n) as usize].fill(0);
            }
            at += n;
        }
    }

    /// Appends the current contents of `len` bytes at `offset` to `out`, at most one piece
    /// per chunk; ranges that read as zeros are stored as `None` and merged with a
    /// preceding zero piece.
    pub(super) fn save(&self, offset: u64, len: u64, out: &mut Vec<Saved>) {
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let in_chunk = at % CHUNK;
            let n = (CHUNK - in_chunk).min(end - at);
            let bytes = self
                .chunks
                .get(&(at / CHUNK))
                .map(|c| &c[in_chunk as usize..(in_chunk + n) as usize])
                .filter(|b| b.iter().any(|&x| x != 0));
            match (bytes, out.last_mut()) {
                (Some(b), _) => out.push(Saved {
                    offset: at,
                    len: n,
                    old: Some(b.into()),
                }),
                (None, Some(last)) if last.old.is_none() && last.offset + last.len == at => last.len += n,
                (None, _) => out.push(Saved {
                    offset: at,
                    len: n,
                    old: None,
                }),
            }
            at += n;
        }
    }

    /// Writes back bytes `from..to` of `saved`, which must lie inside it.
    pub(super) fn put_back(&mut self, saved: &Saved, from: u64, to: u64) {
        debug_assert!(saved.offset <= from && from <= to && to <= saved.offset + saved.len);
        match &saved.old {
            Some(old) => self.write(from, &old[(from - saved.offset) as usize..(to - saved.offset) as usize]),
            None => self.zero(from, to - from),
        }
    }

    /// Replaces the whole contents with `data` (at most the capacity; the rest reads as
    /// zeros). All-zero chunks are not stored.
    pub(super) fn load(&mut self, data: &[u8]) {
        debug_assert!(data.len() as u64 <= self.bytes());
        self.chunks.clear();
        for (i, piece) in data.chunks(CHUNK as usize).enumerate() {
            if piece.iter().any(|&b| b != 0) {
                let mut c = vec![0u8; CHUNK as usize].into_boxed_slice();
                c[..piece.len()].copy_from_slice(piece);
                self.chunks.insert(i as u64, c);
            }
        }
    }

    /// Formats to `block_size` bytes per block: all data is erased and the capacity in
    /// bytes is kept (rounded down to whole blocks).
    pub(super) fn format(&mut self, block_size: u32) {
        let bytes = self.bytes();
        self.block_size = block_size;
        self.blocks = bytes / block_size as u64;
        self.chunks.clear();
    }

    /// The whole contents.
    pub(super) fn contents(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.bytes() as usize];
        for (&chunk, data) in &self.chunks {
            let at = (chunk * CHUNK) as usize;
            let n = data.len().min(out.len().saturating_sub(at));
            out[at..at + n].copy_from_slice(&data[..n]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_storage_reads_zeros_until_written() {
        let mut ns = Namespace::new(&SimNamespace::new(512, 1024));
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        ns.write(CHUNK - 100, &data); // spans four chunks
        let mut back = vec![0xFFu8; data.len()];
        ns.read(CHUNK - 100, &mut back);
        assert_eq!(back, data);
        assert!(ns.equals(CHUNK - 100, &data));
        assert!(!ns.equals(CHUNK - 101, &data[..10]));
        ns.zero(CHUNK - 50, 2 * CHUNK);
        ns.read(CHUNK - 100, &mut back);
        assert_eq!(&back[..50], &data[..50]);
        assert!(back[50..50 + 2 * CHUNK as usize].iter().all(|&b| b == 0));
        assert_eq!(back[50 + 2 * CHUNK as usize], data[50 + 2 * CHUNK as usize]);
        assert_eq!(ns.contents().len(), 512 * 1024);
    }

    #[test]
    fn save_and_put_back_restore_old_contents_sparsely() {
        let mut ns = Namespace::new(&SimNamespace::new(512, 1024));
        let data: Vec<u8> = (0..CHUNK as u32 + 1000).map(|i| (i % 251) as u8 + 1).collect();
        ns.write(CHUNK / 2, &data);
        let before = ns.contents();
        // A range that starts in an unwritten chunk, covers written data and ends in
        // another unwritten stretch.
        let mut saved = Vec::new();
        ns.save(0, 3 * CHUNK, &mut saved);
        let zeros: u64 = saved.iter().filter(|s| s.old.is_none()).map(|s| s.len).sum();
        assert_eq!(saved.iter().map(|s| s.len).sum::<u64>(), 3 * CHUNK);
        assert_eq!(zeros, 3 * CHUNK - 2 * CHUNK, "zero runs are not copied");
        ns.write(0, &vec![0xEE; 3 * CHUNK as usize]);
        for s in &saved {
            ns.put_back(s, s.offset, s.offset + s.len);
        }
        assert_eq!(ns.contents(), before);
        // Part of a piece only.
        ns.write(CHUNK, &[0xAA; 16]);
        let piece = saved.iter().find(|s| s.offset == CHUNK).unwrap();
        ns.put_back(piece, CHUNK + 8, CHUNK + 16);
        let mut back = [0u8; 16];
        ns.read(CHUNK, &mut back);
        assert_eq!(back[..8], [0xAA; 8]);
        assert_eq!(back[8..], before[CHUNK as usize + 8..CHUNK as usize + 16]);
    }

    #[test]
    fn load_replaces_the_contents() {
        let mut ns = Namespace::new(&SimNamespace::new(512, 300));
        ns.write(0, &[9; 512]);
        let mut image = vec![0u8; 512 * 300];
        image[512 * 299..].fill(7);
        ns.load(&image);
        assert_eq!(ns.contents(), image);
        assert_eq!(ns.chunks.len(), 1, "zero chunks are not stored");
        ns.load(&[1; 100]);
        assert!(ns.equals(0, &[1; 100]) && ns.equals(100, &[0; 412]));
    }

    #[test]
    fn format_keeps_the_capacity_in_bytes() {
        let mut ns = Namespace::new(&SimNamespace::new(512, 1024));
        ns.write(0, &[1; 512]);
        ns.format(4096);
        assert_eq!((ns.block_size, ns.blocks, ns.lba_format()), (4096, 128, 1));
        assert!(ns.equals(0, &[0; 512]));
    }
}
