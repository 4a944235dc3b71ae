//! Zoned namespaces on QEMU's controller (`ironvme-zoned`: 8 zones of 2048 blocks, each
//! writable to 1536): `ironvme zns` against nvme-cli's `nvme zns` through the kernel, and
//! the zone commands through ironvme's driver (Zone Append, writes at the write pointer,
//! Zone Management Send and Receive), with CC.CSS selecting the Zoned Namespace command
//! set.
//!
//! Runs inside the guest (`scripts/test`).

mod common;

use common::{OnVfio, env, ironvme, kernel_ctrl, run};
use ironvme::nvme::ctrl::ControllerConfig;
use ironvme::nvme::status::Status;
use ironvme::nvme::zns::{ZoneAction, ZoneReport, ZoneState};
use std::collections::BTreeSet;

fn zone_blocks() -> u64 {
    env("IRONVME_ZONED_ZONE_BLOCKS").parse().unwrap()
}

fn zone_capacity() -> u64 {
    env("IRONVME_ZONED_ZONE_CAPACITY").parse().unwrap()
}

/// ironvme's stdout; fails the test with its stderr if it fails.
fn ours(args: &[&str]) -> String {
    let out = ironvme(args);
    assert!(
        out.status.success(),
        "ironvme {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn zns_commands_print_what_nvme_cli_prints_through_the_kernel() {
    let ns = format!("{}n1", kernel_ctrl(&env("IRONVME_ZONED_BDF")).display());
    let z = zone_blocks();
    run("nvme", &["zns", "reset-zone", &ns, "-a"]);
    // Zone 1 explicitly opened, zone 2 with 8 blocks appended, zone 3 finished.
    for (nvme_cli, ours_name, slba) in [("open-zone", "open", z), ("finish-zone", "finish", 3 * z)] {
        let theirs = run("nvme", &["zns", nvme_cli, &ns, "-s", &slba.to_string()]);
        run("nvme", &["zns", "reset-zone", &ns, "-s", &slba.to_string()]);
        let mine = ours(&["zns", ours_name, &ns, "-s", &slba.to_string()]);
        assert_eq!(mine, theirs, "zns {ours_name}");
    }
    let data = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(data.path(), vec![0x5a; 8 * 4096]).unwrap();
    let appended = run(
        "nvme",
        &[
            "zns",
            "zone-append",
            &ns,
            "-s",
            &(2 * z).to_string(),
            "-z",
            "32768",
            "-d",
            data.path().to_str().unwrap(),
        ],
    );
    assert!(appended.contains("Success"), "{appended}");
    for flags in [&[][..], &["-v"], &["-s", "4096", "-d", "2"], &["-S", "5"]] {
        let mut args = vec!["zns", "report-zones", ns.as_str()];
        args.extend_from_slice(flags);
        let theirs = run("nvme", &args);
        let mine = ours(&args);
        assert_eq!(mine, theirs, "report-zones {flags:?}");
    }
    let json: serde_json::Value = serde_json::from_str(&ours(&["zns", "report-zones", &ns, "-o", "json"])).unwrap();
    let states: Vec<&str> = json["zone_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["state"].as_str().unwrap())
        .collect();
    assert_eq!(&states[..4], ["EMPTY", "EXP_OPENED", "IMP_OPENED", "FULL"]);
    assert_eq!(json["zone_list"][2]["wp"], 2 * z + 8);
    // Closing an empty zone is an invalid transition: the controller's status, exit != 0.
    let out = ironvme(&["zns", "close", &ns, "-s", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Invalid Zone State Transition"), "{err}");
    // A held namespace (here by O_EXCL, as a mount holds it) is not reset under its user.
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(&ns)
            .unwrap_or_else(|e| panic!("{ns}: {e}"));
        let out = ironvme(&["zns", "reset", &ns, "-a"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("refusing to run zns-reset-zone"),
            "{err}"
        );
    }
    let full = ours(&["zns", "report-zones", &ns, "-S", "5"]);
    assert!(full.lines().count() > 1, "the finished zone is still full: {full}");
    run("nvme", &["zns", "reset-zone", &ns, "-a"]);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn the_driver_appends_writes_at_the_write_pointer_and_manages_zones() {
    let vfio = OnVfio::bind("IRONVME_ZONED_BDF");
    let ctrl = ironvme::open_vfio(&vfio.bdf, ControllerConfig::default(), false)
        .unwrap()
        .controller;
    let ns = ctrl.namespace(1).unwrap();
    let (z, cap) = (zone_blocks(), zone_capacity());
    let mut q = ctrl.create_io_queue_pair().unwrap();
    let send = |q: &mut ironvme::nvme::ctrl::IoQueuePair<_>, zslba, action, all| {
        q.wait_for(|q| q.zone_management_send(&ns, zslba, action, all, 0))
            .map(|_| ())
            .map_err(|e| e.error.to_string())
    };
    send(&mut q, 0, ZoneAction::Reset, true).unwrap();
    // 32 Zone Appends of 4 blocks in flight on zone 0: each lands somewhere distinct, all
    // together exactly the first 128 blocks.
    let bufs = ctrl
        .dma()
        .allocate(32 * 4 * 4096)
        .unwrap()
        .into_chunks(4 * 4096, 32)
        .unwrap();
    for (i, mut b) in bufs.into_iter().enumerate() {
        b.as_mut_slice().fill(i as u8);
        q.zone_append(&ns, 0, b, i as u64).unwrap();
    }
    q.ring();
    let mut lbas = BTreeSet::new();
    let mut where_tag = Vec::new();
    while lbas.len() < 32 {
        q.wait(64, |c| {
            assert!(c.result().is_ok(), "append {}: {}", c.tag, c.status);
            assert!(lbas.insert(c.dw0_dw1()), "two appends at one LBA");
            where_tag.push((c.tag, c.dw0_dw1()));
        });
    }
    assert_eq!(
        lbas,
        (0..32).map(|i| i * 4).collect(),
        "appends fill the zone from its start"
    );
    for (tag, lba) in where_tag {
        let b = q.read_at(&ns, lba, ctrl.dma().allocate(4 * 4096).unwrap()).unwrap();
        assert!(
            b.as_slice().iter().all(|&x| x == tag as u8),
            "append {tag} at LBA {lba}"
        );
    }
    // A write must land at the write pointer (128): elsewhere it is Zone Invalid Write.
    let e = q.write_at(&ns, 200, ctrl.dma().allocate(4096).unwrap()).unwrap_err();
    let status = e.error.status().expect("the controller's status");
    assert_eq!(status.with_dnr(false), Status::new(1, 0xBC), "{e}");
    drop(e); // its buffer holds the VFIO container open
    q.write_at(&ns, 128, ctrl.dma().allocate(4096).unwrap()).unwrap();
    // A zone report says the same, from the driver.
    let report = |q: &mut ironvme::nvme::ctrl::IoQueuePair<_>, slba| {
        let b = q
            .wait_for(|q| q.zone_management_receive(&ns, slba, ctrl.dma().allocate(4096).unwrap(), false, 0, false, 0))
            .unwrap()
            .unwrap();
        ZoneReport::parse(b.as_slice(), 0).unwrap()
    };
    let r = report(&mut q, 0);
    assert_eq!(r.zones, ns.blocks / z);
    assert_eq!((r.descriptors[0].write_pointer, r.descriptors[0].capacity), (129, cap));
    assert_eq!(r.descriptors[0].state(), Some(ZoneState::ImplicitlyOpened));
    // Open, close, finish and reset change the zone's state as ZNS says; an Open of a
    // full zone is an invalid transition (0x1BF).
    send(&mut q, z, ZoneAction::Open, false).unwrap();
    assert_eq!(
        report(&mut q, z).descriptors[0].state(),
        Some(ZoneState::ExplicitlyOpened)
    );
    send(&mut q, z, ZoneAction::Close, false).unwrap();
    assert_eq!(report(&mut q, z).descriptors[0].state(), Some(ZoneState::Closed));
    send(&mut q, z, ZoneAction::Finish, false).unwrap();
    let full = report(&mut q, z).descriptors[0];
    assert_eq!((full.state(), full.write_pointer), (Some(ZoneState::Full), u64::MAX));
    let e = send(&mut q, z, ZoneAction::Open, false).unwrap_err();
    assert!(e.contains("Invalid Zone State Transition"), "{e}");
    // An append that would cross the zone's writable capacity (ZCAP) is a Zone Boundary
    // Error (0x1B8); one that ends exactly there fills the zone.
    let append = |q: &mut ironvme::nvme::ctrl::IoQueuePair<_>, blocks: u64| {
        q.wait_for(|q| q.zone_append(&ns, 0, ctrl.dma().allocate(blocks as usize * 4096).unwrap(), 0))
            .map(|_| ())
    };
    let mut wp = 129;
    while cap - wp >= 32 {
        append(&mut q, 32).unwrap(); // 128 KiB: ZASL's limit
        wp += 32;
    }
    let e = append(&mut q, cap - wp + 1).unwrap_err();
    assert_eq!(
        e.error.status().map(|s| s.with_dnr(false)),
        Some(Status::new(1, 0xB8)),
        "{e}"
    );
    drop(e);
    append(&mut q, cap - wp).unwrap();
    assert_eq!(report(&mut q, 0).descriptors[0].state(), Some(ZoneState::Full));
    send(&mut q, 2 * z, ZoneAction::Finish, false).unwrap();
    send(&mut q, 2 * z, ZoneAction::Reset, false).unwrap();
    assert_eq!(report(&mut q, 2 * z).descriptors[0].state(), Some(ZoneState::Empty));
    send(&mut q, 0, ZoneAction::Reset, true).unwrap();
    assert!(
        report(&mut q, 0)
            .descriptors
            .iter()
            .all(|d| d.state() == Some(ZoneState::Empty)),
        "reset all"
    );
    // The CLI on the PCI address: the same report as the driver's.
    drop((q, ns, ctrl));
    let text = ours(&["zns", "report-zones", &vfio.bdf, "-d", "1"]);
    assert!(
        text.starts_with(&format!("nr_zones: 8\nSLBA: 0          WP: 0          Cap: {:#x}", cap)),
        "{text}"
    );
}

/// ironvme's stdout as JSON; fails the test with its stderr if it fails.
fn ours_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ours(args)).unwrap_or_else(|e| panic!("ironvme {args:?}: {e}"))
}

/// ironvme's stderr; fails the test if ironvme succeeds.
fn refused(args: &[&str]) -> String {
    let out = ironvme(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "ironvme {args:?} succeeded: {err}");
    err
}

/// Each zone's state from `ironvme zns report-zones DEV -o json`.
fn zone_states(dev: &str) -> Vec<String> {
    ours_json(&["zns", "report-zones", dev, "-o", "json"])["zone_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| z["state"].as_str().unwrap().to_string())
        .collect()
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn perf_and_verify_write_zones_by_their_rules() {
    let blk = format!("{}n1", kernel_ctrl(&env("IRONVME_ZONED_BDF")).display());
    let ng = blk.replacen("/dev/nvme", "/dev/ng", 1);
    let cap = zone_capacity();
    run("nvme", &["zns", "reset-zone", &blk, "-a"]);
    // verify through io_uring passthrough on two zones (16 MiB): each reset, written up
    // to its capacity one write at a time, read back; then checked again through the
    // ioctl backend without writing.
    let v = ours_json(&["verify", &ng, "--size", "16m", "--allow-write", "--seed", "7", "--json"]);
    assert_eq!(
        (v["backend"].as_str(), v["zones"].as_u64()),
        (Some("uring-cmd"), Some(2)),
        "{v}"
    );
    assert_eq!(
        (v["blocks"].as_u64(), v["mismatch_count"].as_u64()),
        (Some(2 * cap), Some(0)),
        "{v}"
    );
    assert_eq!(&zone_states(&blk)[..3], ["FULL", "FULL", "EMPTY"]);
    let again = ours(&[
        "verify",
        &blk,
        "--backend",
        "ioctl",
        "--read-only",
        "--seed",
        "7",
        "--pass",
        "1",
        "--size",
        "16m",
    ]);
    assert!(again.contains(&format!("OK: {} blocks intact", 2 * cap)), "{again}");
    // Only whole zones; not through the kernel's block layer; no trims.
    let e = refused(&["verify", &ng, "--size", "4m", "--allow-write"]);
    assert!(e.contains("whole zones"), "{e}");
    let e = refused(&["verify", &blk, "--size", "16m", "--allow-write"]);
    assert!(e.contains("is a zoned block device (host-managed)"), "{e}");
    let e = refused(&["perf", &blk, "--rw", "randwrite", "--time", "1", "--allow-write"]);
    assert!(e.contains("is a zoned block device (host-managed)"), "{e}");
    let e = refused(&["perf", &ng, "--rw", "randtrim", "--time", "1", "--allow-write"]);
    assert!(e.contains("Reset Zone"), "{e}");
    // Reads go anywhere. Through the block layer the kernel splits them at zone
    // boundaries: sequential 12 KiB reads cross the first one at LBA 2046. Through
    // passthrough ironvme keeps each inside its zone, where QEMU would refuse one across
    // (Zone Boundary Error): sequential, and 60 KiB ones at random 4 KiB offsets.
    for dev in [&blk, &ng] {
        let p = ours_json(&[
            "perf", dev, "--rw", "read", "--bs", "12k", "--size", "16m", "--time", "1", "--json",
        ]);
        assert!(p["errors"] == 0 && p["read"]["ios"].as_u64() > Some(683), "{dev}: {p}");
    }
    let p = ours_json(&[
        "perf",
        &ng,
        "--rw",
        "randread",
        "--bssplit",
        "4k/50:60k/50",
        "--size",
        "16m",
        "--time",
        "1",
        "--json",
    ]);
    assert!(p["errors"] == 0 && p["read"]["ios"].as_u64() > Some(100), "{p}");
    // Each perf thread holds two zones active, and the controller allows four.
    assert_eq!(env("IRONVME_ZONED_MAX_ACTIVE"), "4");
    let e = refused(&[
        "perf",
        &ng,
        "--rw",
        "randwrite",
        "--threads",
        "3",
        "--size",
        "24m",
        "--allow-write",
    ]);
    assert!(
        e.contains("up to 6 zones active at once") && e.contains("room for 4 (at most 4 active and 4 open at once)"),
        "{e}"
    );
    // perf's writes are Zone Appends (through URING_CMD here), two threads with a zone
    // each, filled and reset over and over: more than both zones' capacity is written,
    // without an error, and no zone but the two is touched.
    let p = ours_json(&[
        "perf",
        &ng,
        "--rw",
        "randrw",
        "--bs",
        "64k",
        "--qd",
        "16",
        "--threads",
        "2",
        "--size",
        "16m",
        "--time",
        "3",
        "--allow-write",
        "--json",
    ]);
    assert_eq!(p["errors"], 0, "{p}");
    let written = p["write"]["bytes"].as_u64().unwrap();
    assert!(written > 2 * cap * 4096, "{written} bytes written: {p}");
    let states = zone_states(&blk);
    assert!(states[2..].iter().all(|s| s == "EMPTY"), "{states:?}");
    // Run again on the zones the first run left open: each thread goes on in its own.
    let again = ironvme(&[
        "perf",
        &ng,
        "--rw",
        "randwrite",
        "--bs",
        "64k",
        "--threads",
        "2",
        "--size",
        "16m",
        "--time",
        "1",
        "--allow-write",
    ]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    // The same through ironvme's driver, one thread at QD32 on four zones, and verify
    // with three passes over six.
    let vfio = OnVfio::bind("IRONVME_ZONED_BDF");
    let p = ours_json(&[
        "perf",
        &vfio.bdf,
        "--rw",
        "randwrite",
        "--bs",
        "128k",
        "--qd",
        "32",
        "--size",
        "32m",
        "--time",
        "3",
        "--allow-write",
        "--json",
    ]);
    assert_eq!(p["errors"], 0, "{p}");
    assert!(p["write"]["bytes"].as_u64().unwrap() > 4 * cap * 4096, "{p}");
    let e = refused(&[
        "perf",
        &vfio.bdf,
        "--rw",
        "write",
        "--bs",
        "256k",
        "--time",
        "1",
        "--allow-write",
    ]);
    assert!(e.contains("Zone Append Size Limit (ZASL) is 128KiB"), "{e}");
    let v = ours_json(&[
        "verify",
        &vfio.bdf,
        "--size",
        "48m",
        "--passes",
        "3",
        "--allow-write",
        "--json",
    ]);
    // Six zones, at most four written at once (more would be Too Many Active Zones).
    assert_eq!(
        (v["zones"].as_u64(), v["mismatch_count"].as_u64()),
        (Some(6), Some(0)),
        "{v}"
    );
    assert_eq!(v["error_count"], 0, "{v}");
    let states = zone_states(&vfio.bdf);
    assert_eq!(&states[..7], ["FULL", "FULL", "FULL", "FULL", "FULL", "FULL", "EMPTY"]);
}
