//! Guest tests of the VFIO plumbing (`ironvme-vfio`) on QEMU's emulated NVMe controllers.
//!
//! They run inside the guest started by `qemu/run`, which exports `IRONVME_KERNEL_BDF`,
//! `IRONVME_VFIO_4K_BDF` and `IRONVME_VFIO_512_BDF` and boots with every controller bound
//! to the kernel nvme driver. Each test that needs a controller on vfio-pci binds it with
//! `scripts/setup.sh bind` and gives it back with `scripts/setup.sh unbind` when it ends
//! (also on failure), so the tests are independent and can run in any order — but one at
//! a time, since they share the controllers:
//!
//! ```text
//! cargo test --no-run --test guest_vfio_plumbing
//! qemu/run -- target/debug/deps/guest_vfio_plumbing-<hash> --ignored --test-threads=1 --nocapture
//! ```

mod common;

use common::{OnVfio, driver_of, env};
use ironvme_nvme::ctrl::Controller;
use ironvme_nvme::hw::{DmaAllocator, DmaBuf, Registers};
use ironvme_nvme::regs::{Cap, Vs, offset};
use ironvme_vfio::{DmaOptions, Error, HugePages, OpenOptions, Sysfs, VfioNvme, open_nvme, open_nvme_with};

/// QEMU's NVMe controller: vendor Red Hat (1b36), device 0010.
const QEMU_NVME_IDS: (u16, u16) = (0x1b36, 0x0010);
/// EBUSY on Linux (the root package does not depend on libc).
const EBUSY: i32 = 16;
const HUGEPAGES_2M: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";

/// Sets the number of reserved 2 MiB hugepages for a test, restoring it on drop.
struct Hugepages {
    before: String,
}

impl Hugepages {
    fn reserve(n: u32) -> Hugepages {
        let before = std::fs::read_to_string(HUGEPAGES_2M)
            .expect("read nr_hugepages")
            .trim()
            .to_string();
        std::fs::write(HUGEPAGES_2M, n.to_string()).expect("write nr_hugepages");
        Hugepages { before }
    }
}

impl Drop for Hugepages {
    fn drop(&mut self) {
        let _ = std::fs::write(HUGEPAGES_2M, &self.before);
    }
}

fn free_hugepages() -> u64 {
    Sysfs::system().free_hugepages_2m()
}

fn open_with(bdf: &str, hugepages: HugePages) -> VfioNvme {
    let options = OpenOptions {
        dma: DmaOptions {
            hugepages,
            ..DmaOptions::default()
        },
        ..OpenOptions::default()
    };
    open_nvme_with(bdf, &options).unwrap_or_else(|e| panic!("open {bdf}: {e}"))
}

fn fill(buf: &mut DmaBuf, seed: u8) {
    for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
        *b = seed ^ (i as u8).wrapping_mul(31);
    }
}

fn check(buf: &DmaBuf, seed: u8) -> bool {
    buf.as_slice()
        .iter()
        .enumerate()
        .all(|(i, &b)| b == seed ^ (i as u8).wrapping_mul(31))
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn kernel_owned_controller_is_refused_with_the_bind_hint() {
    let bdf = env("IRONVME_KERNEL_BDF");
    assert_eq!(driver_of(&bdf).as_deref(), Some("nvme"));
    let e = open_nvme(&bdf).expect_err("a controller bound to nvme must be refused");
    eprintln!("open_nvme({bdf}): {e}");
    assert!(matches!(e, Error::BoundToNvme { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&bdf) && msg.contains("IOMMU group"), "{msg}");
    assert!(
        msg.contains(&format!(
            "bound to the kernel nvme driver; run `scripts/setup.sh bind {bdf}`"
        )),
        "{msg}"
    );
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn vfio_controller_opens_and_bar0_reads_qemu_capabilities() {
    let on = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let dev = open_nvme(&on.bdf).unwrap_or_else(|e| panic!("{e}"));
    let info = &dev.info;
    eprintln!("{info:#x?}");
    assert_eq!((info.vendor_id, info.device_id), QEMU_NVME_IDS);
    assert_eq!(info.class, 0x010802);
    assert_eq!(info.bdf.to_string(), on.bdf);
    assert_eq!(Sysfs::system().iommu_group(info.bdf).unwrap(), Some(info.iommu_group));
    assert!(
        dev.bar.len() >= ironvme_vfio::MIN_BAR0_BYTES && dev.bar.len() <= 0x4000,
        "BAR0 {:#x}",
        dev.bar.len()
    );
    assert_eq!(info.command & 0x0406, 0x0406, "memory space, bus master, INTx disable");

    let cap = Cap(dev.bar.read64(offset::CAP));
    let vs = Vs(dev.bar.read32(offset::VS));
    eprintln!(
        "CAP {:#018x}: MQES {} TO {} DSTRD {} MPSMIN {} MPSMAX {} CQR {}; VS {}.{}.{}",
        cap.0,
        cap.mqes(),
        cap.to(),
        cap.dstrd(),
        cap.mpsmin(),
        cap.mpsmax(),
        cap.cqr(),
        vs.major(),
        vs.minor(),
        vs.tertiary()
    );
    assert_eq!((cap.mqes(), cap.to(), cap.dstrd()), (2047, 15, 0));
    assert_eq!((vs.major(), vs.minor()), (1, 4));
    // The 64-bit read and two 32-bit reads agree.
    let halves = u64::from(dev.bar.read32(offset::CAP)) | u64::from(dev.bar.read32(offset::CAP + 4)) << 32;
    assert_eq!(halves, cap.0);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn disabling_bus_master_clears_only_that_bit() {
    // What the driver does to a controller that fails without being disabled, before it
    // hands back buffers: clear Bus Master Enable through the VFIO config region.
    let on = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let dev = open_nvme(&on.bdf).unwrap_or_else(|e| panic!("{e}"));
    let before = dev.config.command().unwrap();
    assert_eq!(
        before & 0x0406,
        0x0406,
        "memory space, bus master, INTx disable after open"
    );
    dev.bar.disable_bus_master().unwrap_or_else(|e| panic!("{e}"));
    let after = dev.config.command().unwrap();
    eprintln!("PCI command {before:#06x} -> {after:#06x}");
    assert_eq!(after, before & !0x0004, "only Bus Master Enable is cleared");
    // Memory Space stays on: the registers still answer.
    assert_ne!(dev.bar.read32(offset::VS), u32::MAX);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn iommu_reports_valid_iova_ranges() {
    let on = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let dev = open_nvme(&on.bdf).unwrap_or_else(|e| panic!("{e}"));
    let info = &dev.info;
    eprintln!(
        "IOVA ranges {:#x?}, page sizes {:#x?}",
        info.iova_ranges, info.iova_pgsizes
    );
    assert!(
        info.iova_ranges_reported,
        "VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE missing"
    );
    assert!(!info.iova_ranges.is_empty());
    assert!(
        info.iova_ranges.windows(2).all(|w| w[0].end <= w[1].start),
        "sorted and disjoint"
    );
    assert!(
        !info.iova_ranges.iter().any(|r| r.contains(&0xfee0_0000)),
        "the x86 MSI window 0xfee00000 is reserved"
    );
    assert!(info.iova_pgsizes.is_some_and(|p| p & 0x1000 != 0), "4 KiB IOMMU pages");
    let usable = dev.dma.iova_ranges();
    assert!(usable[0].start >= 0x1000, "IOVA 0 is never handed out: {usable:x?}");
}

/// Allocations of 4 KiB, 2 MiB, 3 MiB and a thousand small ones: mapped at distinct,
/// aligned IOVAs inside the valid ranges, zeroed, writable, and unmapped when dropped.
fn exercise_dma(dev: &VfioNvme) {
    let dma = &dev.dma;
    let idle = dma.stats();
    let in_range = |b: &DmaBuf| {
        dev.info
            .iova_ranges
            .iter()
            .any(|r| r.start <= b.iova() && b.iova() + b.capacity() as u64 <= r.end)
    };

    let mut small = dma.allocate(4096).expect("4 KiB");
    let mut two = dma.allocate(2 << 20).expect("2 MiB");
    let mut three = dma.allocate(3 << 20).expect("3 MiB");
    for (b, seed) in [(&mut small, 1u8), (&mut two, 2), (&mut three, 3)] {
        assert!(b.as_slice().iter().all(|&x| x == 0), "fresh DMA memory is zeroed");
        assert!(b.iova() != 0 && b.iova() % 4096 == 0 && in_range(b), "{b:?}");
        fill(b, seed);
    }
    assert!(check(&small, 1) && check(&two, 2) && check(&three, 3));
    eprintln!("4K {small:?}\n2M {two:?}\n3M {three:?}\nstats {:?}", dma.stats());

    let many: Vec<DmaBuf> = (0..1000).map(|_| dma.allocate(4096).expect("small")).collect();
    let mut iovas: Vec<u64> = many.iter().map(DmaBuf::iova).collect();
    iovas.sort_unstable();
    iovas.dedup();
    assert_eq!(iovas.len(), 1000);
    assert!(many.iter().all(in_range));
    let with_many = dma.stats();
    eprintln!("after 1000 x 4 KiB: {with_many:?}");
    assert!(
        with_many.chunks_created - idle.chunks_created <= 3,
        "small buffers share 2 MiB chunks"
    );

    drop((small, two, three, many));
    let after = dma.stats();
    eprintln!("after dropping everything: {after:?}");
    assert_eq!(after.unmap_failures, 0);
    // Only the current (idle) chunk stays mapped.
    assert!(after.mapped_bytes <= 2 << 20, "{after:?}");
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn dma_on_4k_pages_maps_and_frees() {
    let on = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let dev = open_with(&on.bdf, HugePages::Never);
    exercise_dma(&dev);
    let s = dev.dma.stats();
    assert_eq!((s.hugepage_mappings, s.hugepage_fallbacks), (0, 0));
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn dma_uses_hugepages_when_reserved_else_4k_pages() {
    let on = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    eprintln!("free 2 MiB hugepages at boot: {}", free_hugepages());
    {
        let _reserved = Hugepages::reserve(16);
        let free = free_hugepages();
        eprintln!("free 2 MiB hugepages after reserving 16: {free}");
        assert!(free >= 4, "the guest could not reserve hugepages");
        let dev = open_with(&on.bdf, HugePages::Auto);
        let b = dev.dma.allocate(4096).unwrap();
        let s = dev.dma.stats();
        eprintln!("Auto with hugepages free: {s:?}, first buffer {b:?}");
        assert_eq!(
            (s.hugepage_mappings, s.small_page_mappings),
            (1, 0),
            "the chunk is one hugepage"
        );
        assert_eq!(free_hugepages(), free - 1, "one hugepage in use");
        drop(b);
        exercise_dma(&dev);
        assert_eq!(dev.dma.stats().small_page_mappings, 0, "{:?}", dev.dma.stats());
    }
    let _none = Hugepages::reserve(0);
    let dev = open_with(&on.bdf, HugePages::Auto);
    let _b = dev.dma.allocate(4096).unwrap();
    let s = dev.dma.stats();
    eprintln!("Auto without hugepages: {s:?}");
    assert_eq!(
        (s.hugepage_mappings, s.small_page_mappings, s.hugepage_fallbacks),
        (0, 1, 0)
    );
}

/// Brings the controller up on VFIO-mapped registers and DMA memory and moves data both
/// ways through the IOMMU.
fn init_and_round_trip(var_bdf: &str, var_serial: &str, expected_serial: &str) {
    let on = OnVfio::bind(var_bdf);
    let dev = open_nvme(&on.bdf).unwrap_or_else(|e| panic!("{e}"));
    let dma = dev.dma.clone();
    let ctrl =
        Controller::init(dev.bar, dev.dma, Default::default()).unwrap_or_else(|e| panic!("Controller::init: {e}"));
    let id = ctrl.identify();
    eprintln!(
        "init trace {:?}\nserial {:?} model {:?} firmware {:?} MDTS {} io queues {} namespaces {:?}",
        ctrl.init_trace(),
        id.sn,
        id.mn,
        id.fr,
        id.mdts,
        ctrl.io_queue_limit(),
        ctrl.namespaces()
            .iter()
            .map(|n| (n.nsid, n.block_size, n.blocks))
            .collect::<Vec<_>>()
    );
    assert_eq!(id.sn, expected_serial);
    assert_eq!(id.sn, env(var_serial));
    assert_eq!(id.vid, QEMU_NVME_IDS.0);

    let ns = ctrl.namespace(1).expect("namespace 1");
    let mut q = ctrl.create_io_queue_pair().unwrap_or_else(|e| panic!("I/O queue: {e}"));
    let len = 8192;
    let mut out = dma.allocate(len).unwrap();
    fill(&mut out, 0x5a);
    let out = q.write_at(&ns, 8, out).unwrap_or_else(|e| panic!("write: {}", e.error));
    let back = q
        .read_at(&ns, 8, dma.allocate(len).unwrap())
        .unwrap_or_else(|e| panic!("read: {}", e.error));
    assert!(check(&back, 0x5a), "data read back through the IOMMU matches");
    eprintln!(
        "wrote and read back {len} bytes at LBA 8 ({} B blocks); DMA {:?}",
        ns.block_size,
        dma.stats()
    );
    drop((out, back, q, ctrl));
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn controller_init_over_vfio_identifies_ironvme_vfio4k() {
    init_and_round_trip("IRONVME_VFIO_4K_BDF", "IRONVME_VFIO_4K_SERIAL", "ironvme-vfio4k");
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn controller_init_over_vfio_identifies_ironvme_vfio512() {
    init_and_round_trip("IRONVME_VFIO_512_BDF", "IRONVME_VFIO_512_SERIAL", "ironvme-vfio512");
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn opening_the_same_controller_twice_is_in_use() {
    let on = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let first = open_nvme(&on.bdf).unwrap_or_else(|e| panic!("{e}"));
    let e = open_nvme(&on.bdf).expect_err("the group is already open");
    eprintln!("second open_nvme({}): {e}", on.bdf);
    assert!(matches!(e, Error::InUse { .. }), "{e:?}");
    assert_eq!(e.errno(), Some(EBUSY));
    let msg = e.to_string();
    assert!(
        msg.contains(&on.bdf)
            && msg.contains("is in use")
            && msg.contains(&format!("IOMMU group {}", first.info.iommu_group))
    );
    // Once the first handle is gone the controller opens again.
    drop(first);
    open_nvme(&on.bdf).unwrap_or_else(|e| panic!("reopen: {e}"));
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn unbinding_gives_the_controller_back_to_nvme() {
    let bdf = {
        let on = OnVfio::bind("IRONVME_VFIO_512_BDF");
        let dev = open_nvme(&on.bdf).unwrap_or_else(|e| panic!("{e}"));
        drop(dev);
        on.bdf.clone()
    };
    assert_eq!(driver_of(&bdf).as_deref(), Some("nvme"));
    let e = open_nvme(&bdf).expect_err("back on nvme");
    assert!(matches!(e, Error::BoundToNvme { .. }), "{e:?}");
}
