//! Guest tests: metadata and end-to-end protection information (PI) on QEMU's controller,
//! through every backend that sends NVMe commands itself (the VFIO driver, NVMe ioctl
//! passthrough, io_uring passthrough).
//!
//! The controller with serial `ironvme-meta` of the default topology has nsid 1 with 4 KiB
//! blocks and 8 bytes of metadata at the end of each (extended LBA; LBA format 5 of QEMU's
//! eight, capacity 0 as a block device on Linux 6.1, while `/dev/ngXn1` works) and nsid 2
//! with 512-byte blocks, 8 bytes of separate metadata and protection information type 1
//! (LBA format 1).
//!
//! What is checked:
//! - round trips of data and metadata in both layouts (`submit_with_metadata`), with the
//!   host's PI checked by the controller on the way in and out;
//! - a wrong guard gives End-to-end Guard Check Error (0x282) and a wrong reference tag
//!   End-to-end Reference Tag Check Error (0x284), on writes and on reads; an
//!   application tag checked against another value gives 0x283 on a read;
//! - after `ironvme format --pi --pil --ms`: type 1 last (separate and extended), type 2
//!   first, type 3 last with 8 bytes of metadata before the tuple;
//! - plain I/O where the controller inserts and strips the PI (PRACT, MS = 8), and the
//!   refusal of plain I/O where the metadata needs a buffer, naming the reformat command;
//! - `ironvme verify` on both namespaces.
//!
//! ```text
//! cargo test --all-features --no-run --test guest_metadata
//! qemu/run -- target/debug/deps/guest_metadata-<hash> --ignored --test-threads=1
//! ```

mod common;

use common::{OnVfio, env, ironvme, kernel_ctrl};
use ironvme::block::{self, BlockQueue, IoStatus, Op};
use ironvme::nvme::ctrl::{ControllerConfig, Error, NamespaceQueue};
use ironvme::nvme::pi::{self, MetadataFormat, PiTuple, Protection};
use ironvme::nvme::status::Status;
use ironvme::{Backend, Device, OpenOptions};
use ironvme_kernel::{IoctlDevice, KernelError};
use std::path::{Path, PathBuf};

/// What the refusal of nsid 1 (4 KiB + 8 bytes at the end of each block, no PI) says.
const EXTENDED: &str = "LBA format 5 (LBADS 12: 4096-byte blocks; MS 8: 8 bytes of metadata at the end of each \
                        block (extended LBA); DPS 0x00: no protection information)";

fn assert_refusal(what: &str, message: &str, device: &str) {
    assert!(
        message.contains(&format!("namespace 1 is formatted with {EXTENDED}")),
        "{what}: {message}"
    );
    assert!(
        message.contains(&format!("`ironvme format {device} --nsid 1 --lbaf 4`")),
        "{what}: {message}"
    );
    assert!(
        message.contains("`ironvme verify` carries metadata"),
        "{what}: {message}"
    );
}

/// `/dev/ngXnY` of namespace `nsid` of controller node `/dev/nvmeX`.
fn generic(ctrl: &Path, nsid: u32) -> PathBuf {
    let name = ctrl.file_name().unwrap().to_string_lossy();
    PathBuf::from(format!("/dev/ng{}n{nsid}", &name["nvme".len()..]))
}

/// Runs one operation with a buffer that carries metadata; the buffer, or the status.
fn run_md<Q: BlockQueue>(
    q: &mut Q,
    op: Op,
    buf: ironvme::nvme::hw::DmaBuf,
    p: Protection,
) -> (ironvme::nvme::hw::DmaBuf, Result<(), IoStatus>) {
    q.submit_with_metadata(op, Some(buf), p, 7)
        .unwrap_or_else(|e| panic!("{} refused: {e}", op.name()));
    let mut done = None;
    while done.is_none() {
        q.wait(1, |c| done = Some(c));
    }
    let c = done.unwrap();
    assert_eq!(c.tag, 7);
    (c.buf.expect("buffer back"), c.result)
}

/// Data and metadata bytes for `blocks` blocks at `lba`, with the host's PI in place.
fn filled(fmt: &MetadataFormat, block_size: u32, lba: u64, blocks: usize, salt: u8) -> Vec<u8> {
    let mut b: Vec<u8> = (0..blocks * fmt.bytes_per_block(block_size))
        .map(|i| (i as u64 * 31 + lba * 7 + salt as u64) as u8)
        .collect();
    pi::generate(fmt, block_size, &mut b, blocks, &Protection::checked(fmt, lba));
    b
}

fn nvme_status(r: Result<(), IoStatus>) -> Option<Status> {
    match r {
        Ok(()) => None,
        Err(IoStatus::Nvme(s)) => Some(s),
        Err(other) => panic!("expected an NVMe status, got {other}"),
    }
}

/// Round trips and PI errors on `dev`'s namespace `nsid` through a queue that carries
/// metadata. `what` names the backend in failures.
fn metadata_round_trips(what: &str, dev: &Device, nsid: u32) {
    let mut q = dev.create_metadata_queue(Some(nsid), 4).unwrap();
    let ns = q.namespace().clone();
    let fmt = ns.metadata;
    assert_ne!(fmt.bytes, 0, "{what}: nsid {nsid} has metadata");
    // Whole 4 KiB host pages: QEMU fills the PI of blocks it reports unallocated with
    // 0xFF (checks off), and a raw image on tmpfs is allocated a page at a time, so a
    // partial page would leave blocks with zero PI that later PRACT reads fail.
    let (blocks, lba) = ((4096 / ns.block_size as usize).max(4), 40u64);
    let len = blocks * fmt.bytes_per_block(ns.block_size);
    let mut buf = dev.dma().allocate(len).unwrap();
    // Write and read back data and metadata; with PI the controller checks the host's.
    let written = filled(&fmt, ns.block_size, lba, blocks, 1);
    buf.as_mut_slice().copy_from_slice(&written);
    let checked = Protection::checked(&fmt, lba);
    let (mut buf, r) = run_md(&mut q, Op::Write { lba, fua: false }, buf, checked);
    r.unwrap_or_else(|e| panic!("{what}: write of data and metadata ({fmt}): {e}"));
    buf.as_mut_slice().fill(0xA5);
    let (mut buf, r) = run_md(&mut q, Op::Read { lba }, buf, checked);
    r.unwrap_or_else(|e| panic!("{what}: read of data and metadata: {e}"));
    assert!(
        buf.as_slice() == written.as_slice(),
        "{what}: data and metadata read back differ"
    );
    pi::check(&fmt, ns.block_size, buf.as_slice(), blocks, &checked).unwrap();
    // Plain I/O: refused where the metadata needs a buffer, else the controller strips
    // the PI (PRACT) and checks it.
    let mut plain = dev.dma().allocate(blocks * ns.block_size as usize).unwrap();
    match q.submit(Op::Read { lba }, Some(plain), 1) {
        Err(e) if !fmt.plain_io() => {
            assert!(
                e.to_string().contains("cannot transfer (use submit_with_metadata"),
                "{what}: {e}"
            );
        }
        Err(e) => panic!("{what}: plain read refused on {fmt}: {e}"),
        Ok(()) => {
            assert!(fmt.plain_io(), "{what}: plain read accepted on {fmt}");
            plain = block_done(&mut q, what);
            let data: Vec<u8> = (0..blocks)
                .flat_map(|i| written[fmt.ranges(ns.block_size, blocks, i).0].to_vec())
                .collect();
            assert!(plain.as_slice() == data.as_slice(), "{what}: PRACT read differs");
        }
    }
    if fmt.pi_type == 0 {
        return;
    }
    // A wrong guard: refused on write (nothing stored) ...
    let (data0, md0) = fmt.ranges(ns.block_size, blocks, 2);
    let at = md0.start + fmt.pi_offset().unwrap();
    let mut bad = written.clone();
    bad[data0.start] ^= 0x40;
    buf.as_mut_slice().copy_from_slice(&bad);
    let (mut buf, r) = run_md(&mut q, Op::Write { lba, fua: false }, buf, checked);
    assert_eq!(
        nvme_status(r),
        Some(Status::GUARD_CHECK_ERROR),
        "{what}: write with a wrong guard"
    );
    // ... and found on read when written unchecked.
    let unchecked = Protection {
        ref_tag: checked.ref_tag,
        ..Protection::default()
    };
    buf.as_mut_slice().copy_from_slice(&bad);
    let (buf, r) = run_md(&mut q, Op::Write { lba, fua: false }, buf, unchecked);
    r.unwrap_or_else(|e| panic!("{what}: unchecked write of a wrong guard: {e}"));
    let (mut buf, r) = run_md(&mut q, Op::Read { lba }, buf, checked);
    assert_eq!(
        nvme_status(r),
        Some(Status::GUARD_CHECK_ERROR),
        "{what}: read of a wrong guard"
    );
    // A wrong reference tag (types 1 and 2 check it; type 3 has none to check).
    let mut bad = written.clone();
    let mut tuple = PiTuple::from_bytes(bad[at..at + 8].try_into().unwrap());
    tuple.ref_tag = tuple.ref_tag.wrapping_add(1000);
    bad[at..at + 8].copy_from_slice(&tuple.to_bytes());
    buf.as_mut_slice().copy_from_slice(&bad);
    let (mut buf, r) = run_md(&mut q, Op::Write { lba, fua: false }, buf, checked);
    let expected = (fmt.pi_type != 3).then_some(Status::REFERENCE_TAG_CHECK_ERROR);
    assert_eq!(
        nvme_status(r),
        expected,
        "{what}: write with a wrong reference tag ({fmt})"
    );
    // ... and on read, when written unchecked.
    buf.as_mut_slice().copy_from_slice(&bad);
    let (buf, r) = run_md(&mut q, Op::Write { lba, fua: false }, buf, unchecked);
    r.unwrap_or_else(|e| panic!("{what}: unchecked write of a wrong reference tag: {e}"));
    let (mut buf, r) = run_md(&mut q, Op::Read { lba }, buf, checked);
    assert_eq!(
        nvme_status(r),
        expected,
        "{what}: read of a wrong reference tag ({fmt})"
    );
    // Leave valid PI behind: later readers (perf, with PRACT) check it.
    buf.as_mut_slice().copy_from_slice(&written);
    let (buf, r) = run_md(&mut q, Op::Write { lba, fua: false }, buf, checked);
    r.unwrap_or_else(|e| panic!("{what}: rewriting valid PI: {e}"));
    // The application tag (0 as written) checked under a mask against another value.
    let app = Protection {
        check_app_tag: true,
        app_tag: 0x0100,
        app_mask: 0xFF00,
        ..checked
    };
    let (_buf, r) = run_md(&mut q, Op::Read { lba }, buf, app);
    assert_eq!(
        nvme_status(r),
        Some(Status::APPLICATION_TAG_CHECK_ERROR),
        "{what}: read expecting another application tag"
    );
}

/// Waits for the one outstanding plain operation of `q`; its buffer.
fn block_done<Q: BlockQueue>(q: &mut Q, what: &str) -> ironvme::nvme::hw::DmaBuf {
    let mut done = None;
    while done.is_none() {
        q.wait(1, |c| done = Some(c));
    }
    let c = done.unwrap();
    c.result.unwrap_or_else(|e| panic!("{what}: plain I/O failed: {e}"));
    c.buf.unwrap()
}

fn vfio_device(bdf: &str) -> Device {
    Device::open(bdf, &OpenOptions::with_backend(Some(Backend::Vfio))).unwrap()
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn the_vfio_driver_moves_metadata_and_protection_information() {
    let vfio = OnVfio::bind("IRONVME_META_BDF");
    {
        let c = ironvme::open_vfio(&vfio.bdf, ControllerConfig::default(), false)
            .unwrap_or_else(|e| panic!("open {}: {e}", vfio.bdf))
            .controller;
        let listed: Vec<(u32, u32, MetadataFormat)> = c
            .namespaces()
            .iter()
            .map(|n| (n.nsid, n.block_size, n.metadata))
            .collect();
        assert_eq!(
            listed,
            [
                (1, 4096, MetadataFormat::from_identify(8, 0x15, 0)),
                (2, 512, MetadataFormat::from_identify(8, 0x01, 1))
            ]
        );
        // Plain queues: refused on nsid 1, whose metadata needs a buffer; nsid 2's PI the
        // controller inserts and strips.
        let e = NamespaceQueue::new(&c, 1, 8).err().expect("queue refused");
        assert!(matches!(e, Error::MetadataUnsupported(_)), "{e:?}");
        assert_refusal("NamespaceQueue::new", &e.to_string(), "DEV");
        let ns = c.namespace(1).unwrap();
        let mut pair = c.create_io_queue_pair().unwrap();
        let e = pair.read(&ns, 0, c.dma().allocate(4096).unwrap(), 1).unwrap_err();
        assert!(matches!(e.error, Error::MetadataUnsupported(_)), "{e:?}");
        let ns2 = c.namespace(2).unwrap();
        let mut q = NamespaceQueue::new(&c, 2, 8).unwrap();
        let mut b = c.dma().allocate(4096).unwrap();
        b.as_mut_slice()
            .iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = i as u8 ^ 0x5A);
        let expect = b.as_slice().to_vec();
        let b = block::run_one(&mut q, Op::Write { lba: 100, fua: false }, Some(b))
            .unwrap()
            .unwrap();
        let mut b = b;
        b.as_mut_slice().fill(0);
        let b = block::run_one(&mut q, Op::Read { lba: 100 }, Some(b)).unwrap().unwrap();
        assert!(b.as_slice() == expect.as_slice(), "PRACT round trip on nsid 2");
        // Compare would need the metadata: refused before anything is sent.
        let e = pair.compare(&ns2, 100, b, 2).unwrap_err();
        assert!(
            e.to_string().contains("Compare on namespace 2 needs its metadata"),
            "{e}"
        );
        drop((q, pair));
    }
    let dev = vfio_device(&vfio.bdf);
    for nsid in [1, 2] {
        metadata_round_trips(&format!("vfio nsid {nsid}"), &dev, nsid);
    }
    let e = dev.create_queue(Some(1), 8).err().expect("queue refused");
    assert_refusal("Device::create_queue", &e.to_string(), &vfio.bdf);
    drop(dev);
    // PI types 2 and 3, first and last, separate and extended, through the CLI's format.
    let format = |args: &[&str]| {
        let mut all = vec!["format", vfio.bdf.as_str(), "--nsid", "2", "--force"];
        all.extend_from_slice(args);
        let o = ironvme(&all);
        assert!(
            o.status.success(),
            "format {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let cases: [(&[&str], MetadataFormat); 4] = [
        // Extended LBAs with 8 bytes of PI: plain I/O moves 512-byte blocks (PRACT).
        (
            &["--lbaf", "1", "--pi", "1", "--ms", "1"],
            MetadataFormat::from_identify(8, 0x11, 1),
        ),
        (
            &["--lbaf", "1", "--pi", "2", "--pil", "1"],
            MetadataFormat::from_identify(8, 0x01, 2 | 8),
        ),
        (
            &["--lbaf", "2", "--pi", "3"],
            MetadataFormat::from_identify(16, 0x02, 3),
        ),
        (
            &["--lbaf", "2", "--pi", "1", "--ms", "1"],
            MetadataFormat::from_identify(16, 0x12, 1),
        ),
    ];
    for (args, fmt) in cases {
        let out = format(args);
        assert!(out.contains(&fmt.to_string()), "format {args:?} says {out}");
        let dev = vfio_device(&vfio.bdf);
        assert_eq!(dev.namespace(Some(2)).unwrap().metadata, fmt, "{args:?}");
        metadata_round_trips(&format!("vfio nsid 2 {args:?}"), &dev, 2);
    }
    // A format the namespace cannot take is refused before anything is sent.
    let o = ironvme(&[
        "format", &vfio.bdf, "--nsid", "2", "--lbaf", "0", "--pi", "1", "--force",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("at least 8 bytes of metadata"),
        "{o:?}"
    );
    // Back to the topology's format.
    format(&["--lbaf", "1", "--pi", "1"]);
    let dev = vfio_device(&vfio.bdf);
    assert_eq!(
        dev.namespace(Some(2)).unwrap().metadata,
        MetadataFormat::from_identify(8, 0x01, 1)
    );
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn kernel_passthrough_moves_metadata_and_protection_information() {
    let ctrl = kernel_ctrl(&env("IRONVME_META_BDF"));
    let dev_text = ctrl.display().to_string();
    // The controller node lists both; a plain queue is refused on nsid 1 only.
    let dev = IoctlDevice::open(&ctrl).unwrap();
    let listed: Vec<(u32, u32)> = dev.namespaces().iter().map(|n| (n.nsid, n.block_size)).collect();
    assert_eq!(listed, [(1, 4096), (2, 512)]);
    let e = dev.create_queue(1, 4).unwrap_err();
    assert!(matches!(e, KernelError::MetadataUnsupported { .. }), "{e:?}");
    assert_refusal("ioctl create_queue", &e.to_string(), &dev_text);
    dev.create_queue(2, 4).unwrap();
    for nsid in [1, 2] {
        let ng = generic(&ctrl, nsid);
        let ng_text = ng.to_str().unwrap();
        for backend in [Backend::Ioctl, Backend::UringCmd] {
            let dev = Device::open(ng_text, &OpenOptions::with_backend(Some(backend))).unwrap();
            metadata_round_trips(&format!("{backend} {ng_text}"), &dev, nsid);
        }
    }
    // The CLI: perf is refused on nsid 1 before any I/O, and runs on nsid 2 (PRACT).
    let ng1 = generic(&ctrl, 1);
    let o = ironvme(&["perf", ng1.to_str().unwrap(), "--rw", "randread", "--time", "1"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_refusal("perf", &String::from_utf8_lossy(&o.stderr), &dev_text);
    let ng2 = generic(&ctrl, 2);
    let o = ironvme(&[
        "perf",
        ng2.to_str().unwrap(),
        "--rw",
        "randread",
        "--time",
        "1",
        "--size",
        "1M",
        "--json",
    ]);
    assert!(
        o.status.success(),
        "perf on nsid 2: {}{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn verify_checks_data_and_metadata_on_every_layout() {
    let ctrl = kernel_ctrl(&env("IRONVME_META_BDF"));
    for nsid in [1, 2] {
        let ng = generic(&ctrl, nsid);
        let o = ironvme(&[
            "verify",
            ng.to_str().unwrap(),
            "--size",
            "1M",
            "--bs",
            "64k",
            "--qd",
            "4",
            "--allow-write",
        ]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "verify {}: {out}{}",
            ng.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            out.contains("metadata"),
            "verify {} mentions the metadata: {out}",
            ng.display()
        );
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn reformatting_as_the_refusal_says_makes_the_namespace_usable() {
    // The kernel node's Format NVM carries --timeout to the ioctl (timeout_ms); the
    // kernel rescans the namespace after it.
    let ctrl = kernel_ctrl(&env("IRONVME_META_BDF"));
    let dev_text = ctrl.display().to_string();
    let format = |args: &[&str]| {
        let mut all = vec![
            "format",
            dev_text.as_str(),
            "--nsid",
            "1",
            "--force",
            "--timeout",
            "600",
        ];
        all.extend_from_slice(args);
        let o = ironvme(&all);
        assert!(
            o.status.success(),
            "format {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    format(&["--lbaf", "4"]);
    let dev = IoctlDevice::open(&ctrl).unwrap();
    let result = dev.create_queue(1, 4).map(|_| ());
    // Back to 4 KiB + 8 bytes at the end of each block (LBA format 5, MSET = 1).
    format(&["--lbaf", "5", "--ms", "1"]);
    result.unwrap_or_else(|e| panic!("after reformatting to LBA format 4: {e}"));
    let e = IoctlDevice::open(&ctrl).unwrap().create_queue(1, 4).unwrap_err();
    assert_refusal("after restoring LBA format 5", &e.to_string(), &dev_text);
}
