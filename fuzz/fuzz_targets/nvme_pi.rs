//! Protection information read back from a device: [`pi::check`] on metadata and data
//! the fuzzer writes, in every layout Identify Namespace can describe.
//!
//! Input: MS (2 bytes), FLBAS, DPS, the block size choice (512 or 4096), the checks to
//! enable, the reference and application tags (4 + 2 bytes) and mask, then the buffer's
//! bytes (as many whole blocks with their metadata as fit, at most 8).
//!
//! Invariants checked on every input:
//! - nothing panics, whatever the format (PI types 4 to 7, MS smaller than a tuple, MS
//!   up to 64 KiB);
//! - the tuples [`pi::generate`] writes pass [`pi::check`] with every check enabled,
//!   and flipping one data byte of a block makes the guard check fail on that block.

#![no_main]

use ironvme_nvme::pi::{self, MetadataFormat, PiError, Protection};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 13 {
        return;
    }
    // Keep buffers small: MS up to 4 KiB.
    let ms = u16::from_le_bytes([data[0], data[1]]) & 0x0FFF;
    let fmt = MetadataFormat::from_identify(ms, data[2], data[3]);
    let block_size = if data[4] & 1 == 0 { 512 } else { 4096 };
    let checks = data[5];
    let ref_tag = u32::from_le_bytes([data[6], data[7], data[8], data[9]]);
    let app_tag = u16::from_le_bytes([data[10], data[11]]);
    let app_mask = u16::from(data[12]) << 8 | u16::from(data[12]);
    let _ = (fmt.to_string(), fmt.plain_io(), fmt.supported(), fmt.is_none());
    let per_block = fmt.bytes_per_block(block_size);
    let body = &data[13..];
    let blocks = (body.len() / per_block).min(8);
    if blocks == 0 {
        return;
    }
    let mut buf = body[..blocks * per_block].to_vec();
    assert!(fmt.data_bytes(block_size, blocks) <= buf.len());
    let p = Protection {
        pract: false,
        check_guard: checks & 1 != 0,
        check_app_tag: checks & 2 != 0,
        check_ref_tag: checks & 4 != 0,
        ref_tag,
        app_tag,
        app_mask,
    };
    // Whatever the device sent back: no panic.
    let _ = pi::check(&fmt, block_size, &buf, blocks, &p);
    if fmt.pi_offset().is_none() {
        return;
    }
    let all = Protection {
        check_guard: true,
        check_app_tag: true,
        check_ref_tag: true,
        // 0xFFFF escapes every check: keep the generated tuples checkable.
        app_tag: if app_tag == 0xFFFF { 0 } else { app_tag },
        ..p
    };
    pi::generate(&fmt, block_size, &mut buf, blocks, &all);
    assert_eq!(pi::check(&fmt, block_size, &buf, blocks, &all), Ok(()));
    let victim = usize::from(checks >> 3) % blocks;
    let (range, _) = fmt.ranges(block_size, blocks, victim);
    buf[range.start] ^= 0x01;
    assert!(
        matches!(pi::check(&fmt, block_size, &buf, blocks, &all), Err(PiError::Guard { block, .. }) if block == victim),
        "a flipped data byte in block {victim} must fail its guard"
    );
});
