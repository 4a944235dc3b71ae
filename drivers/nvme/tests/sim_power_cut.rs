//! The simulated controller's power-loss model, driven through the real driver: flushed
//! writes survive every power cut, unflushed ones may be lost (and their blocks then hold
//! what they held before), nothing reaches the media after the cut, and a new controller
//! booted onto the crashed image reads it back.

#![cfg(feature = "sim")]

use ironvme_nvme::ctrl::{Controller, ControllerConfig, IoQueuePair, Namespace};
use ironvme_nvme::sim::{PowerCutReport, SimConfig, SimController, SimNamespace};
use ironvme_nvme::{DmaBuf, Status, cmd::nvm};
use std::sync::Arc;
use std::time::Duration;

const BS: usize = 512;

fn config() -> SimConfig {
    SimConfig {
        namespaces: vec![SimNamespace::new(BS as u32, 4096)],
        ..SimConfig::default()
    }
}

/// Short timeouts, so the driver gives up on a powered-off device quickly.
fn start(sim: &SimController) -> (Controller<SimController>, IoQueuePair<SimController>, Namespace) {
    let config = ControllerConfig {
        io_timeout: Duration::from_millis(100),
        abort_timeout: Duration::from_millis(100),
        admin_timeout: Duration::from_millis(500),
        shutdown_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let ctrl = Controller::init(sim.clone(), Arc::new(sim.dma()), config).expect("init");
    let q = ctrl.create_io_queue_pair().unwrap();
    let ns = ctrl.namespace(1).unwrap();
    (ctrl, q, ns)
}

fn buffer(ctrl: &Controller<SimController>, blocks: usize, fill: u8) -> DmaBuf {
    let mut b = ctrl.dma().allocate(blocks * BS).unwrap();
    b.as_mut_slice().fill(fill);
    b
}

fn block(image: &[u8], lba: u64) -> &[u8] {
    &image[lba as usize * BS..(lba as usize + 1) * BS]
}

/// What one write of the workload put on the media.
#[derive(Clone, Copy, Debug)]
struct Put {
    slba: u64,
    blocks: u64,
    fill: u8,
}

/// The workload: a flushed "superblock" and log, then unflushed log appends and an
/// unflushed overwrite of a flushed block. Returns the unflushed writes in order.
fn workload(ctrl: &Controller<SimController>, q: &mut IoQueuePair<SimController>, ns: &Namespace) -> Vec<Put> {
    q.write_at(ns, 0, buffer(ctrl, 1, 0x50)).unwrap();
    q.write_at(ns, 1, buffer(ctrl, 7, 0x51)).unwrap();
    q.wait_for(|q| q.flush(ns, 0)).unwrap();
    let mut unflushed = Vec::new();
    for i in 0..12u8 {
        let p = Put {
            slba: 8 + 2 * i as u64,
            blocks: 2,
            fill: 0x80 + i,
        };
        q.write_at(ns, p.slba, buffer(ctrl, 2, p.fill)).unwrap();
        unflushed.push(p);
    }
    let over = Put {
        slba: 0,
        blocks: 1,
        fill: 0x60,
    };
    q.write_at(ns, over.slba, buffer(ctrl, 1, over.fill)).unwrap();
    unflushed.push(over);
    q.wait_for(|q| q.write_zeroes(ns, 100, 4, false, 0)).unwrap(); // zeros over zeros
    unflushed.push(Put {
        slba: 100,
        blocks: 4,
        fill: 0,
    });
    unflushed
}

#[test]
fn flushed_writes_survive_every_seed_and_lost_ones_revert() {
    let (mut some_lost, mut some_kept) = (false, false);
    for seed in 0..32 {
        let sim = SimController::new(config());
        sim.set_volatile_write_cache(true);
        let (ctrl, mut q, ns) = start(&sim);
        let puts = workload(&ctrl, &mut q, &ns);
        assert_eq!(sim.unflushed_writes(), puts.len());
        let report: PowerCutReport = sim.power_cut(seed);
        assert_eq!(report.unflushed, puts.len());
        assert_eq!(report.dropped, report.writes.iter().filter(|w| w.lost).count());
        let image = sim.namespace_data(1);
        // Flushed and never overwritten: always there.
        for lba in 1..8 {
            assert!(block(&image, lba).iter().all(|&b| b == 0x51), "seed {seed}: LBA {lba}");
        }
        for (put, w) in puts.iter().zip(&report.writes) {
            assert_eq!(w.ranges, [(put.slba, put.blocks)], "seed {seed}");
            let expect_op = if put.slba == 100 { nvm::WRITE_ZEROES } else { nvm::WRITE };
            assert_eq!(w.opcode, expect_op);
            // The previous contents: the flushed superblock for LBA 0, zeros elsewhere.
            let before = if put.slba == 0 { 0x50 } else { 0 };
            let want = if w.lost { before } else { put.fill };
            for lba in put.slba..put.slba + put.blocks {
                assert!(
                    block(&image, lba).iter().all(|&b| b == want),
                    "seed {seed}: LBA {lba} of {put:?} (lost: {})",
                    w.lost
                );
            }
        }
        some_lost |= report.dropped > 0;
        some_kept |= report.dropped < report.unflushed;
        drop(q);
        drop(ctrl);
    }
    assert!(some_lost && some_kept, "the seeds lose some writes and keep others");
}

#[test]
fn nothing_reaches_the_media_after_the_power_cut() {
    let sim = SimController::new(config());
    sim.set_volatile_write_cache(true);
    let (ctrl, mut q, ns) = start(&sim);
    workload(&ctrl, &mut q, &ns);
    let report = sim.power_cut(7);
    let image = sim.namespace_data(1);
    let e = q.write_at(&ns, 0, buffer(&ctrl, 8, 0xFF)).unwrap_err();
    assert!(
        e.error.status() == Some(Status::ABORTED_BY_HOST) || e.error.status().is_none(),
        "{e}"
    );
    assert!(q.wait_for(|q| q.flush(&ns, 0)).is_err());
    assert!(ctrl.identify_controller().is_err());
    drop(q);
    drop(ctrl); // a shutdown attempt: ignored by a powered-off controller
    assert_eq!(sim.namespace_data(1), image);
    assert_eq!(sim.unflushed_writes(), 0);
    assert!(sim.is_powered_off());
    assert_eq!(sim.power_cut(8), PowerCutReport::default(), "nothing more to lose");
    assert!(report.unflushed > 0);
}

#[test]
fn a_new_controller_boots_onto_the_crashed_image() {
    let sim = SimController::new(config());
    sim.set_volatile_write_cache(true);
    let (ctrl, mut q, ns) = start(&sim);
    workload(&ctrl, &mut q, &ns);
    let seed = (0..).find(|&s| {
        // A seed that loses something, on a fresh run of the same workload.
        let probe = SimController::new(config());
        probe.set_volatile_write_cache(true);
        let (c, mut pq, pns) = start(&probe);
        workload(&c, &mut pq, &pns);
        probe.power_cut(s).dropped > 0
    });
    sim.power_cut(seed.unwrap());
    let image = sim.namespace_data(1);
    drop(q);
    drop(ctrl);

    let rebooted = SimController::new(sim.config());
    rebooted.restore_namespace(1, &image);
    assert!(!rebooted.is_powered_off());
    let (ctrl, mut q, ns) = start(&rebooted);
    let back = q.read_at(&ns, 0, buffer(&ctrl, 128, 0xAA)).unwrap();
    assert_eq!(back.as_slice(), &image[..128 * BS]);
    // The rebooted controller works normally.
    q.write_at(&ns, 200, buffer(&ctrl, 1, 0x77)).unwrap();
    assert!(block(&rebooted.namespace_data(1), 200).iter().all(|&b| b == 0x77));
    assert!(rebooted.dma_violations().is_empty(), "{:?}", rebooted.dma_violations());
    assert!(
        rebooted.protocol_violations().is_empty(),
        "{:?}",
        rebooted.protocol_violations()
    );
}
