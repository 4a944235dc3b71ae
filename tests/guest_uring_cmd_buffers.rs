//! Guest test: io_uring NVMe passthrough with and without registered buffers.
//!
//! A uring-cmd queue probes at creation whether the kernel takes registered buffers for
//! NVMe passthrough (`IORING_URING_CMD_FIXED`: Linux 6.1+; older kernels fail every such
//! command with `EINVAL`) and falls back to plain addresses when it does not. The guest
//! runs Linux 6.1, so the probe passes there; the fallback's decision is unit-tested in
//! `ironvme_kernel::uring_cmd`. Data written one way reads back the other.
//!
//! ```text
//! cargo test --all-features --no-run --test guest_uring_cmd_buffers
//! qemu/run -- target/debug/deps/guest_uring_cmd_buffers-<hash> --ignored --test-threads=1
//! ```

mod common;

use common::{env, kernel_ctrl, pattern};
use ironvme_kernel::{KernelDma, UringCmdDevice, UringCmdQueue};
use ironvme_nvme::block::{Op, run_one};
use ironvme_nvme::hw::DmaAllocator;
use std::path::PathBuf;

/// Writes `data` at `lba` and reads it back, in a fresh buffer region each way.
fn write(q: &mut UringCmdQueue, lba: u64, data: &[u8]) {
    let mut b = KernelDma::new(false).allocate(data.len()).unwrap();
    b.as_mut_slice().copy_from_slice(data);
    run_one(q, Op::Write { lba, fua: false }, Some(b)).unwrap_or_else(|e| panic!("write at LBA {lba}: {e}"));
}

fn read(q: &mut UringCmdQueue, lba: u64, len: usize) -> Vec<u8> {
    let b = KernelDma::new(false).allocate(len).unwrap();
    let b = run_one(q, Op::Read { lba }, Some(b))
        .unwrap_or_else(|e| panic!("read at LBA {lba}: {e}"))
        .expect("a read gives its buffer back");
    b.as_slice().to_vec()
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn registered_buffers_pass_the_probe_on_linux_6_1_and_io_works_with_and_without_them() {
    let ctrl = kernel_ctrl(&env("IRONVME_KERNEL_BDF"));
    let name = ctrl.file_name().unwrap().to_string_lossy().into_owned();
    let ng = PathBuf::from(format!("/dev/ng{}n2", &name["nvme".len()..]));
    let dev = UringCmdDevice::open(&ng).unwrap();
    assert_eq!(dev.namespace().block_size, 4096);
    // The namespace's last MiB: away from what the other guest tests write.
    let lba = dev.namespace().blocks - 256;
    let len = 64 << 10;

    let mut fixed = dev.create_queue(8).unwrap();
    assert!(fixed.fixed_buffers_active(), "the probe read failed on this kernel");
    assert_eq!(fixed.registered_buffers(), 0, "the probe's slot is emptied after it");
    let mut plain = dev.create_queue_with(8, false).unwrap();
    assert!(!plain.fixed_buffers_active());

    let a = pattern(lba, len);
    write(&mut fixed, lba, &a);
    assert_eq!(fixed.registered_buffers(), 1, "the write used a registered buffer");
    assert_eq!(read(&mut plain, lba, len), a, "written with, read without");
    let b = pattern(lba + 1, len);
    write(&mut plain, lba, &b);
    assert_eq!(read(&mut fixed, lba, len), b, "written without, read with");
    assert_eq!(plain.registered_buffers(), 0);
}
