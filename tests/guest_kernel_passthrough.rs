//! Guest tests of the kernel passthrough backends: NVMe ioctl passthrough
//! (`ironvme_kernel::ioctl`) and io_uring NVMe passthrough (`ironvme_kernel::uring_cmd`), on
//! the kernel-owned controller of the default topology (serial `ironvme-kern`: nsid 1 with
//! 512-byte blocks, nsid 2 with 4096-byte blocks) and the fault controller (serial
//! `ironvme-fault`, reads of LBA 1000 fail with Unrecovered Read Error).
//!
//! Every test needs the guest started by `qemu/run` and is ignored on the host. By hand:
//!
//! ```text
//! cargo test --no-run --test guest_kernel_passthrough
//! qemu/run -- target/debug/deps/guest_kernel_passthrough-<hash> --ignored --test-threads=1
//! ```
//!
//! Devices are found by serial number in `/sys/class/nvme/*/serial`, never by kernel name.
//! Each test writes its own range of blocks, so the tests do not depend on each other.

mod common;

use common::{env, number, nvme_cli_field, pattern, run};
use ironvme_kernel::nvme_ioctl::{self, NvmePassthruCmd64};
use ironvme_kernel::{IoctlDevice, KernelDma, KernelError, UringCmdDevice};
use ironvme_nvme::block::{BlockError, BlockQueue, IoError, IoStatus, NamespaceInfo, Op, run_one};
use ironvme_nvme::cmd::Command;
use ironvme_nvme::features::{FeatureId, FeatureSelect};
use ironvme_nvme::hw::{DmaAllocator, DmaBuf};
use ironvme_nvme::identify::{Cns, IdentifyNamespace};
use ironvme_nvme::log::LogPageId;
use ironvme_nvme::status::Status;
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

// ---- finding the devices ---------------------------------------------------------------

/// A kernel-owned controller: its node and its namespaces' nodes.
#[derive(Debug)]
struct KernelCtrl {
    /// `/dev/nvmeX`.
    ctrl: PathBuf,
    /// (nsid, `/dev/nvmeXnY`, `/dev/ngXnY`), by NSID.
    namespaces: Vec<(u32, PathBuf, PathBuf)>,
}

impl KernelCtrl {
    fn block(&self, nsid: u32) -> &Path {
        &self.namespaces.iter().find(|n| n.0 == nsid).expect("namespace").1
    }
    fn generic(&self, nsid: u32) -> &Path {
        &self.namespaces.iter().find(|n| n.0 == nsid).expect("namespace").2
    }
}

/// The controller with the serial in environment variable `var`, found in sysfs.
fn kernel_ctrl(var: &str) -> KernelCtrl {
    let serial = env(var);
    let dir = fs::read_dir("/sys/class/nvme")
        .expect("/sys/class/nvme")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|c| fs::read_to_string(c.join("serial")).is_ok_and(|s| s.trim() == serial))
        .unwrap_or_else(|| panic!("no kernel controller with serial {serial} (is it bound to nvme?)"));
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let mut namespaces: Vec<(u32, PathBuf, PathBuf)> = fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let entry = e.file_name().to_string_lossy().into_owned();
            let rest = entry.strip_prefix(&name)?.strip_prefix('n')?;
            let nsid = fs::read_to_string(e.path().join("nsid")).ok()?.trim().parse().ok()?;
            Some((
                nsid,
                PathBuf::from(format!("/dev/{entry}")),
                PathBuf::from(format!("/dev/ng{}n{rest}", &name[4..])),
            ))
        })
        .collect();
    namespaces.sort();
    for (_, block, generic) in &namespaces {
        assert!(
            block.exists() && generic.exists(),
            "{} / {} missing",
            block.display(),
            generic.display()
        );
    }
    KernelCtrl {
        ctrl: PathBuf::from("/dev").join(name),
        namespaces,
    }
}

// ---- helpers ---------------------------------------------------------------------------

/// A buffer of `len` bytes starting `offset` bytes into a fresh page-aligned region.
fn buf(dma: &KernelDma, offset: usize, len: usize) -> DmaBuf {
    let mut b = dma.allocate(offset + len).unwrap();
    b.set_window(offset, len).unwrap();
    b
}

/// The first block of the test area `mib` MiB into a namespace.
fn lba_at(ns: &NamespaceInfo, mib: u64) -> u64 {
    (mib << 20) / ns.block_size as u64
}

fn write<Q: BlockQueue>(q: &mut Q, dma: &KernelDma, lba: u64, data: &[u8], offset: usize) {
    let mut w = buf(dma, offset, data.len());
    w.as_mut_slice().copy_from_slice(data);
    run_one(q, Op::Write { lba, fua: false }, Some(w))
        .unwrap_or_else(|e| panic!("write {} B at LBA {lba} (offset {offset}): {e}", data.len()));
}

fn read<Q: BlockQueue>(q: &mut Q, dma: &KernelDma, lba: u64, len: usize, offset: usize) -> Vec<u8> {
    let r = run_one(q, Op::Read { lba }, Some(buf(dma, offset, len)))
        .unwrap_or_else(|e| panic!("read {len} B at LBA {lba} (offset {offset}): {e}"))
        .expect("a read gives its buffer back");
    r.as_slice().to_vec()
}

fn failed_with(e: &IoError) -> Option<Status> {
    match e {
        IoError::Failed {
            status: IoStatus::Nvme(s),
            ..
        } => Some(*s),
        _ => None,
    }
}

fn read_status<Q: BlockQueue>(q: &mut Q, dma: &KernelDma, lba: u64) -> Result<(), Status> {
    let bs = q.namespace().block_size as usize;
    match run_one(q, Op::Read { lba }, Some(buf(dma, 0, bs))) {
        Ok(_) => Ok(()),
        Err(e) => Err(failed_with(&e.error).unwrap_or_else(|| panic!("read of LBA {lba}: {e}"))),
    }
}

// ---- identify and admin ------------------------------------------------------------------

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn identify_through_the_controller_node_matches_nvme_cli() {
    let k = kernel_ctrl("IRONVME_KERNEL_SERIAL");
    let dev = IoctlDevice::open(&k.ctrl).unwrap();
    let id_ctrl = run("nvme", &["id-ctrl", k.ctrl.to_str().unwrap()]);
    let field = |k: &str| nvme_cli_field(&id_ctrl, k).unwrap_or_else(|| panic!("nvme id-ctrl has no {k}"));
    let id = dev.identify();
    assert_eq!(id.vid as u64, number(&field("vid")), "VID");
    assert_eq!(id.ssvid as u64, number(&field("ssvid")), "SSVID");
    assert_eq!(id.sn, field("sn"), "SN");
    assert_eq!(id.mn, field("mn"), "MN");
    assert_eq!(id.fr, field("fr"), "FR");
    assert_eq!(id.mdts as u64, number(&field("mdts")), "MDTS");
    assert_eq!(id.cntlid as u64, number(&field("cntlid")), "CNTLID");
    assert_eq!(id.ver as u64, number(&field("ver")), "VER");
    assert_eq!(id.oncs.bits() as u64, number(&field("oncs")), "ONCS");
    assert_eq!(id.vwc as u64, number(&field("vwc")), "VWC");
    assert_eq!(id.nn as u64, number(&field("nn")), "NN");
    eprintln!(
        "{}: SN {} MN {} MDTS {} ONCS {:#x} NN {}",
        k.ctrl.display(),
        id.sn,
        id.mn,
        id.mdts,
        id.oncs.bits(),
        id.nn
    );

    let nsids: Vec<u32> = dev.namespaces().iter().map(|n| n.nsid).collect();
    assert_eq!(nsids, [1, 2], "active namespaces through the controller node");
    for info in dev.namespaces() {
        let node = k.block(info.nsid);
        let id_ns = run("nvme", &["id-ns", node.to_str().unwrap()]);
        let nsf = |k: &str| nvme_cli_field(&id_ns, k).unwrap_or_else(|| panic!("nvme id-ns has no {k}"));
        let (_, raw) = dev
            .admin_read(Command::identify(Cns::NAMESPACE, info.nsid, 0), 4096)
            .unwrap();
        let ns = IdentifyNamespace::parse(&raw).unwrap();
        assert_eq!(ns.nsze, number(&nsf("nsze")), "nsid {} NSZE", info.nsid);
        assert_eq!(ns.ncap, number(&nsf("ncap")), "nsid {} NCAP", info.nsid);
        assert_eq!(ns.flbas as u64, number(&nsf("flbas")), "nsid {} FLBAS", info.nsid);
        assert_eq!(ns.nlbaf as u64, number(&nsf("nlbaf")), "nsid {} NLBAF", info.nsid);
        assert_eq!(ns.dlfeat as u64, number(&nsf("dlfeat")), "nsid {} DLFEAT", info.nsid);
        // The geometry agrees with Identify and with the kernel's own view of the disk.
        let disk = node.file_name().unwrap().to_str().unwrap();
        let sysfs = |attr: &str| number(fs::read_to_string(format!("/sys/block/{disk}/{attr}")).unwrap().trim());
        assert_eq!(info.blocks, ns.nsze);
        assert_eq!(info.block_size as u64, sysfs("queue/logical_block_size"));
        assert_eq!(info.capacity_bytes(), sysfs("size") * 512);
        assert_eq!(info.buffer_alignment as u64, sysfs("queue/dma_alignment") + 1);
        let segments_cap = (sysfs("queue/max_segments") - 1) * 4096;
        let expect_max = (sysfs("queue/max_hw_sectors_kb") * 1024)
            .min(segments_cap)
            .min(4096 << id.mdts);
        assert_eq!(
            info.max_transfer_bytes as u64,
            expect_max / info.block_size as u64 * info.block_size as u64
        );
        assert!(
            info.write_zeroes && info.deallocate && info.compare && info.volatile_write_cache,
            "{info:?}"
        );
        assert_eq!(info.deallocate_zeroes, ns.dlfeat & 7 == 1);
        eprintln!("{}: {info:?}", k.ctrl.display());
    }
    assert_eq!(dev.namespaces()[0].block_size, 512);
    assert_eq!(dev.namespaces()[1].block_size, 4096);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn admin_commands_work_on_every_node_and_failures_are_decoded() {
    let k = kernel_ctrl("IRONVME_KERNEL_SERIAL");
    let ctrl = IoctlDevice::open(&k.ctrl).unwrap();
    // SMART / Health log: 512 bytes; Get Features Volatile Write Cache: DW0 bit 0.
    let smart = Command::get_log_page(LogPageId::SMART_HEALTH, 0xFFFF_FFFF, 0, 512, 0, false).unwrap();
    let (_, log) = ctrl.admin_read(smart, 512).unwrap();
    assert_eq!(log.len(), 512);
    let vwc = Command::get_features(FeatureId::VOLATILE_WRITE_CACHE, FeatureSelect::Current, 0, 0);
    let (dw0, _) = ctrl.admin_read(vwc, 0).unwrap();
    let cli = run("nvme", &["get-feature", k.ctrl.to_str().unwrap(), "-f", "6", "-H"]);
    eprintln!(
        "Get Features VWC: DW0 {dw0:#x}; nvme-cli: {}",
        cli.lines().next().unwrap_or("")
    );
    assert_eq!(
        dw0 & 1 == 1,
        cli.contains("Enabled"),
        "VWC DW0 {dw0:#x} vs nvme-cli:\n{cli}"
    );

    // The same admin commands through a namespace's generic and block nodes.
    for node in [k.generic(2), k.block(2)] {
        let dev = IoctlDevice::open(node).unwrap();
        assert_eq!(dev.namespaces(), &ctrl.namespaces()[1..], "{}", node.display());
        assert_eq!(dev.identify().sn, ctrl.identify().sn);
    }
    let ng = UringCmdDevice::open(k.generic(1)).unwrap();
    assert_eq!(ng.namespace(), &ctrl.namespaces()[0]);
    let (_, raw) = ng.admin_read(Command::identify(Cns::CONTROLLER, 0, 0), 4096).unwrap();
    assert_eq!(
        &raw[4..24],
        ctrl.admin_read(Command::identify(Cns::CONTROLLER, 0, 0), 4096)
            .unwrap()
            .1[4..24]
            .to_vec()
    );

    // A failing admin command comes back as its NVMe status: the ioctl's positive return.
    let e = ctrl
        .admin_read(Command::identify(Cns::NAMESPACE, 0xFFFF_FFF0, 0), 4096)
        .unwrap_err();
    let status = e
        .status()
        .unwrap_or_else(|| panic!("expected an NVMe status, got: {e}"));
    assert!(status.same_code(Status::INVALID_NAMESPACE_OR_FORMAT), "{e}");
    assert!(e.to_string().starts_with("ioctl: Identify failed: "), "{e}");
    eprintln!("Identify of NSID 0xFFFFFFF0: {e}");
    let bad_log = Command::get_log_page(LogPageId(0xBF), 0xFFFF_FFFF, 0, 512, 0, false).unwrap();
    let e = ctrl.admin_read(bad_log, 512).unwrap_err();
    assert!(
        e.status()
            .is_some_and(|s| s.same_code(Status::INVALID_LOG_PAGE) || s.same_code(Status::INVALID_FIELD)),
        "{e}"
    );
    eprintln!("Get Log Page 0xBF: {e}");
    // Data in the wrong direction is refused before the kernel is asked.
    let e = ctrl
        .admin_write(Command::identify(Cns::CONTROLLER, 0, 0), &[0u8; 4096])
        .unwrap_err();
    assert!(e.to_string().contains("use admin_read"), "{e}");
}

// ---- data path ---------------------------------------------------------------------------

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn round_trips_through_both_backends_on_both_namespaces() {
    let k = kernel_ctrl("IRONVME_KERNEL_SERIAL");
    let ctrl = IoctlDevice::open(&k.ctrl).unwrap();
    let dma = KernelDma::new(false);
    for nsid in [1, 2] {
        let mut ioq = ctrl.create_queue(nsid, 8).unwrap();
        let ng = UringCmdDevice::open(k.generic(nsid)).unwrap();
        let mut uq = ng.create_queue(8).unwrap();
        let ns = ioq.namespace().clone();
        assert_eq!(&ns, uq.namespace());
        let bs = ns.block_size as usize;
        let sizes = [bs, 4 * bs, 64 * 1024, ns.max_transfer_bytes];
        let slot = (ns.max_transfer_bytes / bs) as u64;
        let mut lba = lba_at(&ns, 0);
        for (i, &len) in sizes.iter().enumerate() {
            for (j, offset) in [0usize, 4, 1536].into_iter().enumerate() {
                let data = pattern((nsid as u64) << 32 | (i as u64) << 8 | j as u64, len);
                // ioctl writes, uring-cmd reads; then the other way round.
                write(&mut ioq, &dma, lba, &data, offset);
                assert!(
                    read(&mut uq, &dma, lba, len, offset) == data,
                    "nsid {nsid}: {len} B at +{offset}: ioctl → uring-cmd"
                );
                let data2: Vec<u8> = data.iter().map(|b| !b).collect();
                write(&mut uq, &dma, lba + slot, &data2, offset);
                assert!(
                    read(&mut ioq, &dma, lba + slot, len, offset) == data2,
                    "nsid {nsid}: {len} B at +{offset}: uring-cmd → ioctl"
                );
                lba += 2 * slot;
            }
        }
        // Flush and Verify (QEMU runs Verify without advertising it in ONCS; the quirk
        // table, by the controller's PCI ID, offers it on both backends).
        run_one(&mut ioq, Op::Flush, None).unwrap();
        run_one(&mut uq, Op::Flush, None).unwrap();
        assert!(ns.verify, "nsid {nsid}: 1b36:0010's VERIFY_UNADVERTISED");
        run_one(&mut uq, Op::Verify { lba: 0, blocks: 1 }, None).unwrap();
        run_one(&mut ioq, Op::Verify { lba: 0, blocks: 1 }, None).unwrap();
        eprintln!(
            "nsid {nsid}: {} round trips of {sizes:?} B at offsets 0, 4, 1536; fixed regions {}",
            2 * sizes.len() * 3,
            uq.registered_buffers()
        );
        assert!(uq.registered_buffers() >= 1, "uring-cmd registered no fixed buffer");
        // One block beyond the largest transfer is refused before submission.
        let e = run_one(
            &mut ioq,
            Op::Read { lba: 0 },
            Some(buf(&dma, 0, ns.max_transfer_bytes + bs)),
        )
        .unwrap_err();
        assert!(
            matches!(e.error, IoError::Refused(BlockError::TransferTooLarge { .. })),
            "{e}"
        );
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn compare_succeeds_on_equal_data_and_fails_with_compare_failure_otherwise() {
    let k = kernel_ctrl("IRONVME_KERNEL_SERIAL");
    let ctrl = IoctlDevice::open(&k.ctrl).unwrap();
    let dma = KernelDma::new(false);
    for nsid in [1, 2] {
        let mut ioq = ctrl.create_queue(nsid, 4).unwrap();
        let mut uq = UringCmdDevice::open(k.generic(nsid)).unwrap().create_queue(4).unwrap();
        let ns = ioq.namespace().clone();
        let lba = lba_at(&ns, 64);
        let data = pattern(0xC0 + nsid as u64, 8 * ns.block_size as usize);
        write(&mut ioq, &dma, lba, &data, 0);
        let mut other = data.clone();
        other[data.len() - 1] ^= 0x5A;
        for (name, q) in [("ioctl", &mut ioq as &mut dyn CompareQueue), ("uring-cmd", &mut uq)] {
            q.compare(&dma, lba, &data)
                .unwrap_or_else(|e| panic!("{name}: equal data: {e}"));
            let e = q.compare(&dma, lba, &other).unwrap_err();
            let s = failed_with(&e).unwrap_or_else(|| panic!("{name}: expected an NVMe status, got {e}"));
            assert_eq!(s.code(), 0x285, "{name}: {e}");
            assert!(s.same_code(Status::COMPARE_FAILURE));
            eprintln!("nsid {nsid} {name}: miscompare: {e}");
        }
    }
}

/// Compare through either queue type (the test loops over both).
trait CompareQueue {
    fn compare(&mut self, dma: &KernelDma, lba: u64, data: &[u8]) -> Result<(), IoError>;
}

impl<Q: BlockQueue> CompareQueue for Q {
    fn compare(&mut self, dma: &KernelDma, lba: u64, data: &[u8]) -> Result<(), IoError> {
        let mut b = buf(dma, 0, data.len());
        b.as_mut_slice().copy_from_slice(data);
        run_one(self, Op::Compare { lba }, Some(b))
            .map(drop)
            .map_err(|e| e.error)
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn write_zeroes_and_deallocate_read_back_zeros() {
    let k = kernel_ctrl("IRONVME_KERNEL_SERIAL");
    let ctrl = IoctlDevice::open(&k.ctrl).unwrap();
    let dma = KernelDma::new(false);
    for nsid in [1, 2] {
        let mut ioq = ctrl.create_queue(nsid, 4).unwrap();
        let mut uq = UringCmdDevice::open(k.generic(nsid)).unwrap().create_queue(4).unwrap();
        let ns = ioq.namespace().clone();
        assert!(
            ns.deallocate_zeroes,
            "QEMU's DLFEAT says deallocated blocks read as zeros: {ns:?}"
        );
        let bs = ns.block_size as usize;
        let base = lba_at(&ns, 128);
        let ops = |lba| {
            [
                Op::WriteZeroes {
                    lba,
                    blocks: 8,
                    deallocate: false,
                },
                Op::WriteZeroes {
                    lba,
                    blocks: 8,
                    deallocate: true,
                },
                Op::Deallocate { lba, blocks: 8 },
            ]
        };
        for i in 0..ops(0).len() {
            for (b, backend) in ["ioctl", "uring-cmd"].into_iter().enumerate() {
                let lba = base + (i * 2 + b) as u64 * 32;
                let data = pattern(lba, 16 * bs);
                write(&mut ioq, &dma, lba, &data, 0);
                let op = ops(lba)[i];
                let r = if b == 0 {
                    run_one(&mut ioq, op, None)
                } else {
                    run_one(&mut uq, op, None)
                };
                r.unwrap_or_else(|e| panic!("{backend} {op:?}: {e}"));
                let back = if b == 0 {
                    read(&mut uq, &dma, lba, 16 * bs, 0)
                } else {
                    read(&mut ioq, &dma, lba, 16 * bs, 0)
                };
                assert!(
                    back[..8 * bs].iter().all(|&x| x == 0),
                    "nsid {nsid} {backend} {op:?}: not zeros"
                );
                assert!(
                    back[8 * bs..] == data[8 * bs..],
                    "nsid {nsid} {backend} {op:?}: clobbered the blocks after"
                );
            }
        }
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn out_of_range_is_refused_before_submission_and_by_the_device() {
    let k = kernel_ctrl("IRONVME_KERNEL_SERIAL");
    let ctrl = IoctlDevice::open(&k.ctrl).unwrap();
    let dma = KernelDma::new(false);
    for nsid in [1, 2] {
        let mut ioq = ctrl.create_queue(nsid, 4).unwrap();
        let mut uq = UringCmdDevice::open(k.generic(nsid)).unwrap().create_queue(4).unwrap();
        let ns = ioq.namespace().clone();
        let bs = ns.block_size as usize;
        // The last block is fine; one past it is refused, with the buffer given back.
        read(&mut ioq, &dma, ns.blocks - 1, bs, 0);
        for (name, e) in [
            (
                "ioctl",
                ioq.submit(Op::Read { lba: ns.blocks }, Some(buf(&dma, 0, bs)), 1)
                    .unwrap_err(),
            ),
            (
                "uring-cmd",
                uq.submit(Op::Read { lba: ns.blocks - 1 }, Some(buf(&dma, 0, 2 * bs)), 1)
                    .unwrap_err(),
            ),
        ] {
            assert!(matches!(e.error, BlockError::LbaOutOfRange { .. }), "{name}: {e}");
            assert!(e.buf.is_some(), "{name}: buffer not returned");
            eprintln!("nsid {nsid} {name}: refused: {e}");
        }
        assert_eq!((ioq.outstanding(), uq.outstanding()), (0, 0));

        // The same read as a raw command through the ioctl: the device answers LBA Out of
        // Range, which the ioctl returns as a positive value.
        let node = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(k.generic(nsid))
            .unwrap();
        let mut b = buf(&dma, 0, bs);
        let mut cmd = NvmePassthruCmd64::from_command(&Command::read(nsid, ns.blocks, 1), b.as_ptr() as u64, bs as u32);
        // SAFETY: `b` is `bs` writable bytes that outlive the call.
        let r = unsafe { nvme_ioctl::io64(node.as_fd(), &mut cmd) };
        let status = r
            .expect("the ioctl itself succeeds")
            .expect_err("the device refuses the read");
        assert_eq!(status.code(), 0x080, "{status}");
        assert!(status.same_code(Status::LBA_OUT_OF_RANGE));
        eprintln!(
            "nsid {nsid}: raw read of LBA {} through NVME_IOCTL_IO64_CMD: {status}",
            ns.blocks
        );
        b.as_mut_slice()[0] = 0; // still ours
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn hundreds_of_commands_are_outstanding_at_once_on_uring_cmd() {
    const N: usize = 512;
    let k = kernel_ctrl("IRONVME_KERNEL_SERIAL");
    let dev = UringCmdDevice::open(k.generic(2)).unwrap();
    let mut q = dev.create_queue(N).unwrap();
    let ns = q.namespace().clone();
    let bs = ns.block_size as usize;
    let base = lba_at(&ns, 256);
    let dma = KernelDma::new(false);
    // One region, split into N block-sized buffers: each is registered as its own pages.
    let bufs = dma.allocate(N * bs).unwrap().into_chunks(bs, N).unwrap();
    for (i, mut b) in bufs.into_iter().enumerate() {
        b.as_mut_slice().copy_from_slice(&pattern(base + i as u64, bs));
        q.submit(
            Op::Write {
                lba: base + 2 * i as u64,
                fua: false,
            },
            Some(b),
            i as u64,
        )
        .unwrap();
    }
    assert_eq!(q.outstanding(), N);
    let e = q.submit(Op::Flush, None, 0).unwrap_err();
    assert!(matches!(e.error, BlockError::QueueFull(N)), "{e}");
    q.ring().unwrap(); // one io_uring_enter for all N
    let mut back = Vec::with_capacity(N);
    while back.len() < N {
        q.wait(N, |c| {
            assert_eq!(c.result, Ok(()), "write {}", c.tag);
            back.push(c);
        });
    }
    assert_eq!(q.outstanding(), 0);
    // Each buffer of the 512-page region is registered as its own page, and used as a
    // fixed buffer.
    assert_eq!(q.registered_buffers(), N);
    // Read them all back, N outstanding again, into the same buffers.
    for c in back.drain(..) {
        let mut b = c.buf.unwrap();
        b.as_mut_slice().fill(0);
        q.submit(Op::Read { lba: base + 2 * c.tag }, Some(b), c.tag).unwrap();
    }
    q.ring().unwrap();
    let mut seen = vec![false; N];
    while seen.iter().any(|s| !s) {
        q.wait(N, |c| {
            assert_eq!(c.result, Ok(()), "read {}", c.tag);
            let i = c.tag as usize;
            assert!(!seen[i], "tag {i} completed twice");
            seen[i] = true;
            assert!(
                c.buf.unwrap().as_slice() == pattern(base + c.tag, bs),
                "block {i} read back different"
            );
        });
    }
    eprintln!(
        "{N} writes and {N} reads outstanding at once on {}: all completed once, data intact",
        q.path().display()
    );

    // Dropping a queue with commands in flight waits for them before freeing their
    // buffers; a new queue on the same node works afterwards.
    let bufs = dma.allocate(64 * bs).unwrap().into_chunks(bs, 64).unwrap();
    for (i, b) in bufs.into_iter().enumerate() {
        q.submit(
            Op::Read {
                lba: base + 2 * i as u64,
            },
            Some(b),
            i as u64,
        )
        .unwrap();
    }
    q.ring().unwrap();
    drop(q);
    let mut q = dev.create_queue(4).unwrap();
    assert!(read(&mut q, &dma, base, bs, 0) == pattern(base, bs));
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn uring_cmd_refuses_other_nodes_with_the_fix() {
    let k = kernel_ctrl("IRONVME_KERNEL_SERIAL");
    let block = k.block(1);
    let e = UringCmdDevice::open(block).unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(matches!(e, KernelError::WrongDevice { .. }), "{msg}");
    assert!(msg.contains("is the block device"), "{msg}");
    assert!(msg.contains(&format!("use {}", k.generic(1).display())), "{msg}");
    assert!(msg.contains("uring backend"), "{msg}");
    let e = UringCmdDevice::open(&k.ctrl).unwrap_err().to_string();
    eprintln!("{e}");
    assert!(e.contains("controller's character device"), "{e}");
    assert!(
        e.contains(&k.generic(1).display().to_string()) && e.contains(&k.generic(2).display().to_string()),
        "{e}"
    );
    let e = IoctlDevice::open(Path::new("/dev/null")).unwrap_err().to_string();
    assert!(e.contains("is not an NVMe device"), "{e}");
    let e = IoctlDevice::open(&k.ctrl)
        .unwrap()
        .create_queue(3, 4)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no active namespace 3"), "{e}");
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn unprivileged_users_are_told_what_access_is_needed() {
    const CHILD: &str = "IRONVME_TEST_UNPRIVILEGED_NODE";
    if let Ok(node) = std::env::var(CHILD) {
        // In the child, as nobody.
        let e = UringCmdDevice::open(Path::new(&node)).unwrap_err();
        println!("uring-cmd: {e}");
        assert!(matches!(e, KernelError::PermissionDenied { .. }), "{e}");
        assert!(
            e.to_string().contains("permission denied") && e.to_string().contains("run as root"),
            "{e}"
        );
        assert_eq!(e.errno(), Some(EACCES));
        let e = IoctlDevice::open(Path::new(&node)).unwrap_err();
        println!("ioctl: {e}");
        assert!(matches!(e, KernelError::PermissionDenied { .. }), "{e}");
        return;
    }
    let k = kernel_ctrl("IRONVME_KERNEL_SERIAL");
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "unprivileged_users_are_told_what_access_is_needed",
            "--nocapture",
        ])
        .env(CHILD, k.generic(1))
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.contains("permission denied"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(out.status.success(), "child as nobody failed:\n{text}");
}

/// `EACCES` on Linux (the root package does not depend on libc).
const EACCES: i32 = 13;

// ---- device errors -------------------------------------------------------------------------

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn reads_of_the_bad_block_fail_with_unrecovered_read_error_on_both_backends() {
    let k = kernel_ctrl("IRONVME_FAULT_SERIAL");
    let bad: u64 = env("IRONVME_FAULT_BAD_LBA").parse().unwrap();
    let dev = IoctlDevice::open(&k.ctrl).unwrap();
    let dma = KernelDma::new(false);
    let mut ioq = dev.create_queue(1, 4).unwrap();
    let mut uq = UringCmdDevice::open(k.generic(1)).unwrap().create_queue(4).unwrap();
    assert_eq!(ioq.namespace().block_size, 4096);
    for (name, r) in [
        ("ioctl", read_status(&mut ioq, &dma, bad)),
        ("uring-cmd", read_status(&mut uq, &dma, bad)),
    ] {
        let s = r.expect_err("the bad block reads with an error");
        assert_eq!(s.code(), 0x281, "{name}: {s}");
        assert!(s.same_code(Status::UNRECOVERED_READ_ERROR));
        eprintln!("{name}: read of LBA {bad}: {}", IoStatus::Nvme(s));
    }
    // Its neighbours read fine, and writes to it work (the fault is on reads only).
    assert_eq!(read_status(&mut ioq, &dma, bad - 1), Ok(()));
    assert_eq!(read_status(&mut uq, &dma, bad + 1), Ok(()));
    write(&mut uq, &dma, bad, &pattern(bad, 4096), 0);
    // A multi-block read covering it fails as a whole.
    let e = run_one(&mut uq, Op::Read { lba: bad - 2 }, Some(buf(&dma, 0, 4 * 4096))).unwrap_err();
    assert_eq!(failed_with(&e.error).map(|s| s.code()), Some(0x281), "{e}");
}
