//! Hot-unplug and PCI Express errors on QEMU's controller behind a `pcie-root-port`
//! (`ironvme-hotplug`): the VFIO request interrupt (`device_del` mid-I/O through the
//! monitor, an unbind from vfio-pci, and vfio-pci's loopback trigger) and the error
//! interrupt (AER injected at the root port).
//!
//! Runs inside the guest (`scripts/test`). The removal test plugs the controller back
//! (`device_add`) and reads back what it wrote before the removal.

mod common;

use common::{OnVfio, env, hotplug_readd, hotplug_wait_removed, monitor, pattern, setup};
use ironvme::nvme::ctrl::{Controller, ControllerConfig, Error, RecoveryEvent, RecoveryObserver};
use ironvme::nvme::hw::DmaBuf;
use ironvme::nvme::status::Status;
use ironvme::vfio::{MmioBar, NoticeIrq};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

type Ctrl = Controller<MmioBar>;

/// Commands kept in flight by [`storm`].
const DEPTH: usize = 32;
/// Where [`storm`] writes and reads: LBAs 0..STORM_BLOCKS.
const STORM_BLOCKS: u64 = 2048;
/// Where the tests keep data that must survive: LBAs KEPT..KEPT + 16, away from the storm.
const KEPT: u64 = 10_000;

/// What a queue pair saw while the controller went away under it.
#[derive(Debug, Default)]
struct Storm {
    /// Completions per tag: each must be 1.
    completions: HashMap<u64, u32>,
    submitted: u64,
    succeeded: u64,
    /// Completed by the driver itself (Command Aborted By Host).
    aborted: u64,
    /// Any other status.
    other: Vec<Status>,
    /// The first refused submission.
    refused: Option<String>,
    /// Buffers handed back (of the DEPTH given).
    buffers_back: usize,
}

/// Keeps DEPTH 4 KiB reads and writes in flight on a new queue pair of `ctrl` (namespace
/// 1, LBAs 0..STORM_BLOCKS), counting completions in `done`, until a submission is
/// refused and nothing is outstanding; `interrupts` waits on the pair's MSI-X vector
/// instead of spinning. Buffers are allocated once, before the first command, since a
/// released device maps no more DMA memory.
fn storm(ctrl: &Ctrl, done: &AtomicU64, interrupts: bool) -> Storm {
    let ns = ctrl.namespace(1).unwrap();
    let mut q = ctrl.create_io_queue_pair().unwrap();
    let mut free: Vec<DmaBuf> = ctrl
        .dma()
        .allocate(DEPTH * 4096)
        .unwrap()
        .into_chunks(4096, DEPTH)
        .unwrap();
    let mut s = Storm::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        while s.refused.is_none() && q.outstanding() < DEPTH {
            let Some(mut b) = free.pop() else { break };
            let tag = s.submitted;
            let lba = (tag * 7) % STORM_BLOCKS;
            let r = if tag % 2 == 0 {
                b.as_mut_slice().copy_from_slice(&pattern(tag, 4096));
                q.write(&ns, lba, b, false, tag)
            } else {
                q.read(&ns, lba, b, tag)
            };
            match r {
                Ok(()) => s.submitted += 1,
                // While the controller is shut down, as during a reset: poll, then retry.
                Err(e) if matches!(e.error, Error::Recovering { .. }) => {
                    free.extend(e.buf);
                    break;
                }
                Err(e) => {
                    s.refused = Some(e.error.to_string());
                    free.extend(e.buf);
                }
            }
        }
        q.ring();
        if s.refused.is_some() && q.outstanding() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the storm did not end: {} submitted, {} succeeded, {} aborted, refused: {:?}",
            s.submitted,
            s.succeeded,
            s.aborted,
            s.refused
        );
        let mut on_complete = |c: ironvme::nvme::ctrl::IoCompletion| {
            *s.completions.entry(c.tag).or_default() += 1;
            match c.status {
                st if st.is_success() => s.succeeded += 1,
                st if st.with_dnr(false) == Status::ABORTED_BY_HOST => s.aborted += 1,
                st => s.other.push(st),
            }
            free.extend(c.buf);
            done.fetch_add(1, Ordering::Relaxed);
        };
        if interrupts {
            q.wait(64, &mut on_complete);
        } else {
            q.poll(64, &mut on_complete);
        }
    }
    s.buffers_back = free.len();
    s
}

/// Checks what a storm ended by a removal saw: every command completed exactly once, the
/// buffers came back, and submissions are refused as removed.
fn assert_removed_cleanly(s: &Storm, ctrl: &Ctrl) {
    eprintln!(
        "storm: {} submitted, {} succeeded, {} aborted by host, refused with {:?}",
        s.submitted, s.succeeded, s.aborted, s.refused
    );
    assert_eq!(s.completions.len() as u64, s.submitted, "every command completed");
    assert!(
        s.completions.values().all(|&n| n == 1),
        "each exactly once: {:?}",
        s.completions.iter().filter(|e| *e.1 != 1).collect::<Vec<_>>()
    );
    assert!(
        s.other.is_empty(),
        "only success or Command Aborted By Host: {:?}",
        s.other
    );
    assert!(
        s.succeeded >= 200,
        "I/O ran before the removal: {} succeeded",
        s.succeeded
    );
    assert_eq!(s.buffers_back, DEPTH, "the buffers of aborted commands come back");
    let failure = ctrl.failure().expect("the controller is failed");
    assert!(failure.starts_with("device removed"), "{failure}");
    let refused = s.refused.as_deref().unwrap_or_default();
    assert!(refused.contains("device removed"), "submissions say why: {refused}");
}

/// Records every recovery event.
fn observer() -> (RecoveryObserver, Arc<Mutex<Vec<RecoveryEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let observer = RecoveryObserver(Arc::new(move |e: &RecoveryEvent| seen.lock().unwrap().push(e.clone())));
    (observer, events)
}

/// Opens `bdf` with a recording observer; the controller and what it records.
fn open(bdf: &str, interrupts: bool) -> (ironvme::VfioController, Arc<Mutex<Vec<RecoveryEvent>>>) {
    let (observer, events) = observer();
    let config = ControllerConfig {
        recovery_observer: Some(observer),
        ..ControllerConfig::default()
    };
    let v = ironvme::open_vfio(bdf, config, interrupts).unwrap_or_else(|e| panic!("open {bdf}: {e}"));
    (v, events)
}

/// Writes 16 blocks of a pattern at LBA KEPT and flushes them.
fn keep(ctrl: &Ctrl, seed: u64) {
    let ns = ctrl.namespace(1).unwrap();
    let mut q = ctrl.create_io_queue_pair().unwrap();
    let mut b = ctrl.dma().allocate(16 * 4096).unwrap();
    b.as_mut_slice().copy_from_slice(&pattern(seed, 16 * 4096));
    q.write_at(&ns, KEPT, b).unwrap();
    q.wait_for(|q| q.flush(&ns, 0)).unwrap();
}

fn read_kept(ctrl: &Ctrl) -> Vec<u8> {
    let ns = ctrl.namespace(1).unwrap();
    let mut q = ctrl.create_io_queue_pair().unwrap();
    let b = q.read_at(&ns, KEPT, ctrl.dma().allocate(16 * 4096).unwrap()).unwrap();
    b.as_slice().to_vec()
}

/// Runs a storm on `ctrl` in a thread, calls `remove` once 200 commands completed, and
/// returns what the storm saw (within 60 s, or the test fails).
fn storm_until_removed(ctrl: &Ctrl, interrupts: bool, remove: impl FnOnce()) -> Storm {
    let done = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();
    let (c, d) = (ctrl.clone(), Arc::clone(&done));
    std::thread::spawn(move || {
        let _ = tx.send(storm(&c, &d, interrupts));
    });
    let start = Instant::now();
    while done.load(Ordering::Relaxed) < 200 {
        assert!(start.elapsed() < Duration::from_secs(60), "the storm does not run");
        std::thread::sleep(Duration::from_millis(5));
    }
    let removed_at = Instant::now();
    remove();
    let s = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the storm ended after the removal (no hang)");
    eprintln!("the storm ended {:?} after the removal began", removed_at.elapsed());
    s
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn device_del_mid_io_completes_every_command_once_and_releases_the_device() {
    let vfio = OnVfio::bind("IRONVME_HOTPLUG_BDF");
    let qdev = env("IRONVME_HOTPLUG_QDEV");
    let (v, events) = open(&vfio.bdf, false);
    assert!(v.notifier.is_some(), "vfio-pci offers the request interrupt");
    assert!(
        v.notifier.as_ref().unwrap().has_error_irq(),
        "a PCI Express device offers the error interrupt"
    );
    let ctrl = v.controller.clone();
    let seed = Instant::now().elapsed().as_nanos() as u64 ^ 0x5eed;
    keep(&ctrl, seed);
    let s = storm_until_removed(&ctrl, false, || {
        monitor(&format!("device_del {qdev}"));
    });
    assert_removed_cleanly(&s, &ctrl);
    assert!(
        events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, RecoveryEvent::Failed { reason } if reason.starts_with("device removed"))),
        "reported: {:?}",
        events.lock().unwrap()
    );
    // The application still holds the controller, its queue pairs' memory and the VFIO
    // container: the kernel and QEMU finish the removal all the same.
    let took = hotplug_wait_removed(&vfio.bdf, &qdev, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("the removal did not finish while ironvme held the controller: {e}"));
    eprintln!("device_del finished {took:?} after the storm ended");
    assert!(ctrl.identify_controller().is_err(), "admin commands are refused");
    drop((v, ctrl));
    // Plugged back: what was written and flushed before the removal is there.
    let bdf = hotplug_readd();
    assert_eq!(bdf, vfio.bdf, "the controller comes back at the same address");
    let (again, _) = open(&bdf, false);
    assert!(
        read_kept(&again.controller) == pattern(seed, 16 * 4096),
        "data acknowledged before the removal survives it"
    );
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn an_unbind_in_interrupt_mode_completes_every_command_once_and_returns() {
    let vfio = OnVfio::bind("IRONVME_HOTPLUG_BDF");
    let (v, _) = open(&vfio.bdf, true);
    let ctrl = v.controller.clone();
    let unbind = Arc::new(Mutex::new(None));
    let s = storm_until_removed(&ctrl, true, || {
        // The write blocks in vfio-pci's remove until the process lets go of the device.
        let bdf = vfio.bdf.clone();
        let result = Arc::clone(&unbind);
        std::thread::spawn(move || {
            let start = Instant::now();
            let r = std::fs::write("/sys/bus/pci/drivers/vfio-pci/unbind", &bdf);
            *result.lock().unwrap() = Some((r.map_err(|e| e.to_string()), start.elapsed()));
        });
    });
    assert_removed_cleanly(&s, &ctrl);
    let start = Instant::now();
    let (r, took) = loop {
        if let Some(done) = unbind.lock().unwrap().take() {
            break done;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "unbind still blocked while ironvme holds the controller"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("unbind returned after {took:?}");
    r.expect("unbind succeeded");
    assert_eq!(common::driver_of(&vfio.bdf), None, "unbound");
    drop((v, ctrl));
    setup("bind", &vfio.bdf);
    let (again, _) = open(&vfio.bdf, false);
    again
        .controller
        .namespace(1)
        .expect("the controller works after it comes back");
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn the_request_interrupt_loopback_releases_the_device_and_it_opens_again() {
    let vfio = OnVfio::bind("IRONVME_HOTPLUG_BDF");
    let (v, _) = open(&vfio.bdf, false);
    let ctrl = v.controller.clone();
    let notifier = v.notifier.as_ref().expect("request interrupt");
    let s = storm_until_removed(&ctrl, false, || {
        notifier.trigger(NoticeIrq::Request).expect("vfio-pci loopback");
    });
    assert_removed_cleanly(&s, &ctrl);
    // Released: the group can be opened again only once everything is dropped, but the
    // device fd is already /dev/null's, so a second trigger cannot reach vfio-pci.
    assert!(
        notifier.trigger(NoticeIrq::Request).is_err(),
        "the device fd is released"
    );
    drop((v, ctrl));
    let (again, _) = open(&vfio.bdf, false);
    keep(&again.controller, 7);
    assert!(read_kept(&again.controller) == pattern(7, 16 * 4096));
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn an_aer_error_at_the_root_port_is_reported_and_io_goes_on() {
    let vfio = OnVfio::bind("IRONVME_HOTPLUG_BDF");
    let (v, events) = open(&vfio.bdf, false);
    let port = env("IRONVME_HOTPLUG_PORT_QDEV");
    let pci_errors = || {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, RecoveryEvent::PciError { .. }))
            .count()
    };
    // Correctable: logged by AER, never sent to the driver.
    monitor(&format!("pcie_aer_inject_error -c {port} RCVR"));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        pci_errors(),
        0,
        "no event for a correctable error: {:?}",
        events.lock().unwrap()
    );
    // Uncorrectable, non-fatal (poisoned TLP): error_detected → the ERR eventfd.
    monitor(&format!("pcie_aer_inject_error {port} POISON_TLP"));
    let start = Instant::now();
    while pci_errors() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no PciError event: {:?}",
            events.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "PCI error event after {:?}: {:?}",
        start.elapsed(),
        events.lock().unwrap()
    );
    keep(&v.controller, 9);
    assert!(read_kept(&v.controller) == pattern(9, 16 * 4096), "I/O goes on");
    assert_eq!(v.controller.failure(), None);
}
