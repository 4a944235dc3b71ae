//! Constants and byte helpers every part of the VDE's format shares.
//!
//! `docs/vde-format.md` describes the on-disk format; `block.rs` (the metadata block and
//! its pointer), `pool.rs` (the superblock), `tree.rs`, `space.rs`, `intent.rs`,
//! `store.rs` and `dataset.rs` are its code. All integers are little-endian.

/// Size of a VDE block in bytes. Devices with 512 B or 4 KiB logical blocks hold whole
/// VDE blocks.
pub const BLOCK: usize = 4096;
/// The magic bytes that open a format-1 superblock: recognised so that such a store is
/// refused with a clear message instead of being called unformatted.
pub const SUPER_MAGIC: [u8; 8] = *b"IRONVDE\0";
/// Longest key, in bytes.
pub const MAX_KEY: usize = 255;
/// Extents an object holds.
pub const MAX_EXTENTS: usize = 30;
/// Longest object extent, in VDE blocks (1 MiB): an extent is read whole and its
/// checksum checked before any of its bytes are returned.
pub const MAX_EXTENT_BLOCKS: u64 = 256;
/// Largest object, in bytes (30 MiB).
pub const MAX_OBJECT: u64 = MAX_EXTENTS as u64 * MAX_EXTENT_BLOCKS * BLOCK as u64;

/// Reads a little-endian u16 at `at`.
pub fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}
/// Reads a little-endian u32 at `at`.
pub fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
/// Reads a little-endian u64 at `at`.
pub fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
/// Writes a little-endian u16 at `at`.
pub fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
/// Writes a little-endian u32 at `at`.
pub fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
/// Writes a little-endian u64 at `at`.
pub fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A random 128-bit identity from the OS.
pub fn random_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut u);
    }
    if u == [0; 16] {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        u = (t ^ (std::process::id() as u128) << 64).to_le_bytes();
    }
    u
}
