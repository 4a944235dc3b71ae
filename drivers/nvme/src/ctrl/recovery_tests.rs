//! Recovery scenarios on the simulated controller: every fault hook, with every
//! outstanding command completed exactly once and the queue usable afterwards.

use super::*;
use crate::cmd::nvm;
use crate::sim::{FaultAction, FaultRule, SimConfig, SimController};
use crate::status::Status;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

struct Rig {
    sim: SimController,
    ctrl: Controller<SimController>,
    events: Arc<Mutex<Vec<RecoveryEvent>>>,
}

fn rig(sim_config: SimConfig) -> Rig {
    rig_with_timeout(sim_config, Duration::from_millis(100))
}

fn rig_with_timeout(sim_config: SimConfig, io_timeout: Duration) -> Rig {
    rig_with(
        sim_config,
        ControllerConfig {
            io_timeout,
            abort_timeout: Duration::from_millis(100),
            ..Default::default()
        },
    )
}

/// A rig with `config` (its admin timeout is set to 500 ms, and the observer is added).
fn rig_with(sim_config: SimConfig, config: ControllerConfig) -> Rig {
    let sim = SimController::new(sim_config);
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let config = ControllerConfig {
        admin_timeout: Duration::from_millis(500),
        recovery_observer: Some(RecoveryObserver(Arc::new(move |e| {
            sink.lock().unwrap().push(e.clone())
        }))),
        ..config
    };
    let ctrl = Controller::init(sim.clone(), Arc::new(sim.dma()), config).expect("init");
    Rig { sim, ctrl, events }
}

impl Rig {
    fn events(&self) -> Vec<RecoveryEvent> {
        self.events.lock().unwrap().clone()
    }
    fn buf(&self, len: usize) -> crate::DmaBuf {
        self.ctrl.dma().allocate(len).unwrap()
    }
}

#[test]
fn a_reset_waiting_behind_a_removal_does_not_enable_the_controller_again() {
    // The removal's shutdown and disable take a while (CSTS.RDY follows CC.EN after
    // 200 ms); a reset asked for meanwhile waits for the admin lock, and must then find
    // the controller failed.
    let r = rig(SimConfig {
        ready_delay: Duration::from_millis(200),
        ..SimConfig::default()
    });
    let enables = r.sim.stats().enables;
    let c = r.ctrl.clone();
    let removal = std::thread::spawn(move || c.removal_requested("unplugged"));
    std::thread::sleep(Duration::from_millis(50));
    let e = r.ctrl.reset().unwrap_err();
    removal.join().unwrap();
    assert!(
        matches!(&e, Error::ControllerFailed(why) if why.starts_with("device removed")),
        "{e}"
    );
    assert_eq!(r.sim.stats().enables, enables, "CC.EN stays 0");
}

/// A rig whose controller holds every read, and a queue pair with `count` reads
/// outstanding (tags 0..count).
fn held_reads(count: u64) -> (Rig, IoQueuePair<SimController>) {
    let r = rig(SimConfig::default());
    let mut q = r.ctrl.create_io_queue_pair().unwrap();
    r.sim.inject(FaultRule {
        opcode: Some(nvm::READ),
        action: FaultAction::Hang,
        ..Default::default()
    });
    submit_reads(&r, &mut q, count);
    (r, q)
}

/// Polls until `count` completions arrived; fails the test instead of hanging.
fn collect(q: &mut IoQueuePair<SimController>, count: usize) -> BTreeMap<u64, (Status, bool)> {
    let mut seen = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < count {
        q.poll(usize::MAX, |c| {
            let previous = seen.insert(c.tag, (c.status, c.buf.is_some()));
            assert!(previous.is_none(), "tag {} completed twice", c.tag);
        });
        assert!(
            Instant::now() < deadline,
            "only {} of {count} completions arrived: {seen:?}",
            seen.len()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    // Nothing more trickles in afterwards.
    std::thread::sleep(Duration::from_millis(5));
    q.poll(usize::MAX, |c| {
        panic!("extra completion for tag {} ({})", c.tag, c.status)
    });
    seen
}

fn works(r: &Rig, q: &mut IoQueuePair<SimController>) {
    let ns = r.ctrl.namespace(1).unwrap();
    let mut b = r.buf(4096);
    b.as_mut_slice().fill(0xC3);
    q.write_at(&ns, 100, b).expect("write after recovery");
    let back = q.read_at(&ns, 100, r.buf(4096)).expect("read after recovery");
    assert!(back.as_slice().iter().all(|&x| x == 0xC3));
}

/// Submits `n` reads with tags 0..n; the fault rules decide which ones get stuck.
fn submit_reads(r: &Rig, q: &mut IoQueuePair<SimController>, n: u64) {
    let ns = r.ctrl.namespace(1).unwrap();
    for tag in 0..n {
        q.read(&ns, tag * 8, r.buf(4096), tag).unwrap();
    }
    q.ring();
}

#[test]
fn a_lost_completion_is_aborted_then_the_controller_reset() {
    // Like QEMU: Abort answers "not aborted"; the command stays lost, so a reset follows
    // after abort_timeout.
    let r = rig(SimConfig {
        abort_works: false,
        ..SimConfig::default()
    });
    let mut q = r.ctrl.create_io_queue_pair().unwrap();
    r.sim.inject(FaultRule {
        opcode: Some(nvm::READ),
        lba: Some(24..25),
        times: Some(1),
        action: FaultAction::Lost,
        ..Default::default()
    });
    submit_reads(&r, &mut q, 40);
    let done = collect(&mut q, 40);
    assert_eq!(
        done[&3],
        (Status::ABORTED_BY_HOST, true),
        "the lost read fails, its buffer comes back"
    );
    assert!(
        done.iter()
            .filter(|(t, _)| **t != 3)
            .all(|(_, (s, b))| s.is_success() && *b),
        "{done:?}"
    );
    assert_eq!(r.sim.stats().resets, 1);
    assert_eq!(r.ctrl.reset_count(), 1);
    let ev = r.events();
    assert!(
        matches!(
            ev[0],
            RecoveryEvent::CommandTimedOut {
                qid: 1,
                opcode: nvm::READ,
                ..
            }
        ),
        "{ev:?}"
    );
    assert!(
        matches!(ev[1], RecoveryEvent::AbortSent { aborted: false, .. }),
        "{ev:?}"
    );
    assert!(
        matches!(
            ev[2],
            RecoveryEvent::ResetStarting(ResetReason::IoTimeout { qid: 1, .. })
        ),
        "{ev:?}"
    );
    assert!(matches!(ev[3], RecoveryEvent::ResetDone { generation: 1 }), "{ev:?}");
    works(&r, &mut q);
    assert!(r.sim.dma_violations().is_empty(), "{:?}", r.sim.dma_violations());
}

#[test]
fn a_hung_command_the_controller_can_abort_needs_no_reset() {
    let r = rig(SimConfig {
        abort_works: true,
        ..SimConfig::default()
    });
    let mut q = r.ctrl.create_io_queue_pair().unwrap();
    r.sim.inject(FaultRule {
        opcode: Some(nvm::READ),
        lba: Some(0..1),
        times: Some(1),
        action: FaultAction::Hang,
        ..Default::default()
    });
    submit_reads(&r, &mut q, 4);
    let done = collect(&mut q, 4);
    assert_eq!(done[&0].0, Status::ABORT_REQUESTED);
    assert!(done[&1].0.is_success() && done[&3].0.is_success());
    assert_eq!(r.sim.stats().resets, 0);
    assert!(matches!(r.events()[1], RecoveryEvent::AbortSent { aborted: true, .. }));
    works(&r, &mut q);
}

#[test]
fn an_abort_that_does_not_complete_the_command_leads_to_a_reset() {
    // Abort says "aborted" but the command still never completes.
    let r = rig(SimConfig {
        abort_works: true,
        ..SimConfig::default()
    });
    let mut q = r.ctrl.create_io_queue_pair().unwrap();
    r.sim.inject(FaultRule {
        opcode: Some(nvm::READ),
        times: Some(1),
        action: FaultAction::Lost,
        ..Default::default()
    });
    submit_reads(&r, &mut q, 2);
    let done = collect(&mut q, 2);
    assert_eq!(done[&0].0, Status::ABORTED_BY_HOST);
    assert!(done[&1].0.is_success());
    assert_eq!(r.sim.stats().resets, 1);
    works(&r, &mut q);
}

#[test]
fn with_the_abort_noop_quirk_a_timeout_resets_without_an_abort() {
    // QEMU's Abort answers "not aborted" and does nothing: the quirk skips it and the
    // abort_timeout after it.
    let r = rig_with(
        SimConfig::default(),
        ControllerConfig {
            io_timeout: Duration::from_millis(100),
            abort_timeout: Duration::from_secs(1),
            quirks: Some(crate::quirks::Quirks::ABORT_NOOP),
            ..Default::default()
        },
    );
    let mut q = r.ctrl.create_io_queue_pair().unwrap();
    r.sim.inject(FaultRule {
        opcode: Some(nvm::READ),
        times: Some(1),
        action: FaultAction::Lost,
        ..Default::default()
    });
    submit_reads(&r, &mut q, 2);
    let done = collect(&mut q, 2);
    assert_eq!(done[&0].0, Status::ABORTED_BY_HOST);
    assert!(done[&1].0.is_success());
    let ev = r.events();
    assert!(matches!(ev[0], RecoveryEvent::CommandTimedOut { .. }), "{ev:?}");
    assert!(
        matches!(ev[1], RecoveryEvent::ResetStarting(ResetReason::IoTimeout { .. })),
        "{ev:?}"
    );
    assert!(
        !ev.iter().any(|e| matches!(e, RecoveryEvent::AbortSent { .. })),
        "{ev:?}"
    );
    assert_eq!(r.sim.stats().resets, 1);
    works(&r, &mut q);
}

#[test]
fn fatal_status_resets_and_every_outstanding_command_fails_once() {
    let (r, mut q) = held_reads(16);
    q.poll(usize::MAX, |c| panic!("nothing completes while held: {}", c.tag));
    r.sim.clear_faults();
    r.sim.set_fatal(true);
    let done = collect(&mut q, 16);
    assert!(
        done.values().all(|&(s, b)| s == Status::ABORTED_BY_HOST && b),
        "{done:?}"
    );
    assert!(matches!(
        r.events()[0],
        RecoveryEvent::ResetStarting(ResetReason::FatalStatus)
    ));
    works(&r, &mut q);
}

#[test]
fn a_vanished_device_fails_everything_without_hanging() {
    let (r, mut q) = held_reads(8);
    r.sim.set_removed(true);
    let done = collect(&mut q, 8);
    assert!(
        done.values().all(|&(s, b)| s == Status::ABORTED_BY_HOST && b),
        "a gone device cannot DMA: buffers come back"
    );
    let ns = r.ctrl.namespace(1).unwrap();
    let e = q.read(&ns, 0, r.buf(512), 99).unwrap_err();
    assert!(
        matches!(&e.error, Error::ControllerFailed(why) if why.contains("gone")),
        "a dead pair says why the controller failed: {e}"
    );
    assert!(matches!(r.ctrl.identify_controller(), Err(Error::ControllerFailed(_))));
    assert!(r.ctrl.failure().unwrap().contains("gone"));
    assert!(matches!(r.events().last(), Some(RecoveryEvent::Failed { .. })));
}

#[test]
fn a_removal_request_shuts_down_completes_everything_once_and_frees_all_memory() {
    let (r, mut q) = held_reads(8);
    let before = r.sim.stats();
    r.ctrl.removal_requested("unplugged");
    r.ctrl.removal_requested("asked again 10 s later");
    let after = r.sim.stats();
    assert_eq!(
        after.shutdowns,
        before.shutdowns + 1,
        "one normal shutdown: the cache is written back"
    );
    assert_eq!(after.resets, before.resets + 1, "then disabled (CC.EN = 0)");
    let done = collect(&mut q, 8);
    assert!(
        done.values().all(|&(s, b)| s == Status::ABORTED_BY_HOST && b),
        "each once, buffers back (the controller is disabled): {done:?}"
    );
    let ns = r.ctrl.namespace(1).unwrap();
    let e = q.read(&ns, 0, r.buf(512), 99).unwrap_err();
    assert!(
        matches!(&e.error, Error::ControllerFailed(why) if why == "device removed: unplugged"),
        "{e}"
    );
    let failed: Vec<_> = r
        .events()
        .into_iter()
        .filter(|e| matches!(e, RecoveryEvent::Failed { .. }))
        .collect();
    assert_eq!(
        failed,
        [RecoveryEvent::Failed {
            reason: "device removed: unplugged".into()
        }]
    );
    // Released to the kernel, the BAR reads all ones; the stopped controller needs no
    // shutdown at drop, and its admin queue memory is freed.
    r.sim.set_removed(true);
    let dma = r.sim.dma();
    drop((e, q, ns, r.ctrl));
    assert_eq!(dma.live_regions(), 0, "nothing leaked");
    assert!(r.sim.dma_violations().is_empty(), "{:?}", r.sim.dma_violations());
}

#[test]
fn an_admin_timeout_resets_the_controller() {
    let r = rig(SimConfig::default());
    let mut q = r.ctrl.create_io_queue_pair().unwrap();
    r.sim.inject(FaultRule {
        qid: Some(0),
        opcode: Some(crate::cmd::admin::GET_FEATURES),
        times: Some(1),
        action: FaultAction::Lost,
        ..Default::default()
    });
    let e = r.ctrl.get_features(
        crate::features::FeatureId::ARBITRATION,
        crate::features::FeatureSelect::Current,
        0,
        0,
        0,
    );
    assert!(matches!(e, Err(Error::Timeout { .. })), "{e:?}");
    assert_eq!(r.ctrl.reset_count(), 1);
    assert!(matches!(
        r.events()[0],
        RecoveryEvent::ResetStarting(ResetReason::AdminTimeout)
    ));
    // The admin queue and the I/O pair both work again.
    r.ctrl
        .get_features(
            crate::features::FeatureId::ARBITRATION,
            crate::features::FeatureSelect::Current,
            0,
            0,
            0,
        )
        .unwrap();
    assert!(
        r.ctrl.outstanding_async_event_requests() >= 1,
        "asynchronous event requests were sent again"
    );
    works(&r, &mut q);
}

#[test]
fn a_reset_reaches_every_thread_s_queue_pair() {
    let r = rig(SimConfig {
        abort_works: false,
        ..SimConfig::default()
    });
    let ns = r.ctrl.namespace(1).unwrap();
    let mut other = r.ctrl.create_io_queue_pair().unwrap();
    let mut mine = r.ctrl.create_io_queue_pair().unwrap();
    // The other pair has commands held in the device when the reset happens.
    r.sim.inject(FaultRule {
        qid: Some(other.qid()),
        opcode: Some(nvm::WRITE),
        action: FaultAction::Hang,
        ..Default::default()
    });
    for tag in 0..5 {
        other.write(&ns, 1000 + tag, r.buf(512), false, tag).unwrap();
    }
    other.ring();
    r.sim.inject(FaultRule {
        qid: Some(mine.qid()),
        opcode: Some(nvm::READ),
        times: Some(1),
        action: FaultAction::Lost,
        ..Default::default()
    });
    mine.read(&ns, 0, r.buf(512), 7).unwrap();
    let done = collect(&mut mine, 1);
    assert_eq!(done[&7].0, Status::ABORTED_BY_HOST);
    r.sim.clear_faults();
    std::thread::scope(|s| {
        s.spawn(|| {
            let done = collect(&mut other, 5);
            assert!(
                done.values().all(|&(st, b)| st == Status::ABORTED_BY_HOST && b),
                "{done:?}"
            );
            works(&r, &mut other);
        });
    });
    works(&r, &mut mine);
    assert_eq!(r.sim.stats().resets, 1);
}

#[test]
fn a_requested_reset_keeps_idle_pairs_usable() {
    let r = rig(SimConfig::default());
    let mut q = r.ctrl.create_io_queue_pair().unwrap();
    works(&r, &mut q);
    r.ctrl.reset().unwrap();
    r.ctrl.reset().unwrap();
    assert_eq!(r.ctrl.reset_count(), 2);
    works(&r, &mut q);
    drop(q);
    let q2 = r.ctrl.create_io_queue_pair().unwrap();
    assert_eq!(q2.qid(), 1);
    assert!(
        r.sim.protocol_violations().is_empty(),
        "{:?}",
        r.sim.protocol_violations()
    );
}

#[test]
fn delayed_completions_within_the_deadline_are_not_timeouts() {
    let r = rig_with_timeout(SimConfig::default(), Duration::from_secs(2));
    let mut q = r.ctrl.create_io_queue_pair().unwrap();
    r.sim.inject(FaultRule {
        opcode: Some(nvm::READ),
        action: FaultAction::Delay(Duration::from_millis(30)),
        ..Default::default()
    });
    submit_reads(&r, &mut q, 8);
    let done = collect(&mut q, 8);
    assert!(done.values().all(|&(s, _)| s.is_success()));
    assert!(r.events().is_empty(), "{:?}", r.events());
}

#[test]
fn a_delayed_completion_past_the_deadline_is_given_up_on() {
    // The completion would arrive after the reset decided to give up: it must not
    // complete the command a second time.
    let r = rig(SimConfig {
        abort_works: false,
        ..SimConfig::default()
    });
    let mut q = r.ctrl.create_io_queue_pair().unwrap();
    r.sim.inject(FaultRule {
        opcode: Some(nvm::READ),
        times: Some(1),
        action: FaultAction::Delay(Duration::from_millis(400)),
        ..Default::default()
    });
    submit_reads(&r, &mut q, 3);
    let done = collect(&mut q, 3);
    assert_eq!(done[&0].0, Status::ABORTED_BY_HOST);
    std::thread::sleep(Duration::from_millis(500));
    q.poll(usize::MAX, |c| panic!("late completion for tag {}", c.tag));
    works(&r, &mut q);
}

#[test]
fn a_command_the_controller_did_not_abort_gets_the_abort_timeout_to_complete() {
    // Like QEMU: Abort answers "not aborted". The command is only slow: it completes
    // 200 ms after its 100 ms deadline, well within the 2 s abort timeout, so no reset.
    let r = rig_with(
        SimConfig {
            abort_works: false,
            ..SimConfig::default()
        },
        ControllerConfig {
            io_timeout: Duration::from_millis(100),
            abort_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    );
    let mut q = r.ctrl.create_io_queue_pair().unwrap();
    r.sim.inject(FaultRule {
        opcode: Some(nvm::READ),
        times: Some(1),
        action: FaultAction::Delay(Duration::from_millis(300)),
        ..Default::default()
    });
    submit_reads(&r, &mut q, 2);
    let done = collect(&mut q, 2);
    assert!(done.values().all(|&(s, b)| s.is_success() && b), "{done:?}");
    assert_eq!(r.sim.stats().resets, 0, "events: {:?}", r.events());
    assert_eq!(r.ctrl.reset_count(), 0);
    let ev = r.events();
    assert!(
        matches!(
            ev.as_slice(),
            [
                RecoveryEvent::CommandTimedOut { qid: 1, .. },
                RecoveryEvent::AbortSent { aborted: false, .. }
            ]
        ),
        "{ev:?}"
    );
}

#[test]
fn an_admin_timeout_resets_before_the_admin_queue_is_free_again() {
    // A late completion of the timed-out Identify would write into the admin data buffer:
    // no other command may get the admin queue (and that buffer) before the reset.
    use std::sync::{OnceLock, Weak};
    let sim = SimController::new(SimConfig::default());
    let inner: Arc<OnceLock<Weak<Inner<SimController>>>> = Arc::new(OnceLock::new());
    let free_at_reset = Arc::new(Mutex::new(Vec::new()));
    let (slot, seen) = (Arc::clone(&inner), Arc::clone(&free_at_reset));
    let config = ControllerConfig {
        admin_timeout: Duration::from_millis(200),
        recovery_observer: Some(RecoveryObserver(Arc::new(move |e| {
            if let RecoveryEvent::ResetStarting(_) = e {
                let inner = slot.get().and_then(Weak::upgrade).expect("controller set");
                // Another thread tries to take the admin queue now.
                let free = std::thread::scope(|s| s.spawn(|| inner.admin.try_lock().is_ok()).join().unwrap());
                seen.lock().unwrap().push(free);
            }
        }))),
        ..Default::default()
    };
    let ctrl = Controller::init(sim.clone(), Arc::new(sim.dma()), config).expect("init");
    inner.set(Arc::downgrade(&ctrl.inner)).ok().unwrap();
    sim.inject(FaultRule {
        qid: Some(0),
        opcode: Some(crate::cmd::admin::IDENTIFY),
        times: Some(1),
        action: FaultAction::Delay(Duration::from_secs(1)),
        ..Default::default()
    });
    let e = ctrl.identify_controller();
    assert!(matches!(e, Err(Error::Timeout { .. })), "{e:?}");
    assert_eq!(
        *free_at_reset.lock().unwrap(),
        [false],
        "the admin queue was free for other commands between the timeout and the reset"
    );
    assert_eq!(ctrl.reset_count(), 1);
    ctrl.identify_controller().expect("identify after the reset");
    assert!(sim.dma_violations().is_empty(), "{:?}", sim.dma_violations());
}

#[test]
fn a_timeout_while_creating_a_queue_resets_the_controller() {
    let r = rig(SimConfig::default());
    r.sim.inject(FaultRule {
        qid: Some(0),
        opcode: Some(crate::cmd::admin::CREATE_IO_CQ),
        times: Some(1),
        action: FaultAction::Delay(Duration::from_secs(1)),
        ..Default::default()
    });
    let e = r.ctrl.create_io_queue_pair().err().expect("Create I/O CQ times out");
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert_eq!(
        r.sim.stats().resets,
        1,
        "a timed-out Create I/O CQ must reset the controller"
    );
    let mut q = r.ctrl.create_io_queue_pair().expect("a queue pair after the reset");
    assert_eq!(
        q.qid(),
        1,
        "the reset made the controller forget the half-created queue"
    );
    works(&r, &mut q);
    std::thread::sleep(Duration::from_millis(1100));
    works(&r, &mut q);
    assert!(r.sim.dma_violations().is_empty(), "{:?}", r.sim.dma_violations());
    assert!(
        r.sim.protocol_violations().is_empty(),
        "{:?}",
        r.sim.protocol_violations()
    );
}

#[test]
fn a_timeout_during_init_leaves_the_controller_disabled() {
    use crate::regs::{Cc, Csts, offset};
    let sim = SimController::new(SimConfig::default());
    sim.inject(FaultRule {
        qid: Some(0),
        opcode: Some(crate::cmd::admin::IDENTIFY),
        times: Some(1),
        action: FaultAction::Lost,
        ..Default::default()
    });
    let config = ControllerConfig {
        admin_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let e = Controller::init(sim.clone(), Arc::new(sim.dma()), config)
        .err()
        .expect("the Identify times out");
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(
        !Cc(sim.read32(offset::CC)).en(),
        "CC.EN is still 1 after the failed init"
    );
    assert!(!Csts(sim.read32(offset::CSTS)).rdy(), "CSTS.RDY is still 1");
    // Had the controller kept the command, it would now write into freed admin memory.
    sim.release_held();
    assert!(sim.dma_violations().is_empty(), "{:?}", sim.dma_violations());
}

#[test]
fn a_queue_whose_deletion_failed_keeps_its_qid_until_a_reset() {
    let r = rig(SimConfig::default());
    let q = r.ctrl.create_io_queue_pair().unwrap();
    assert_eq!(q.qid(), 1);
    r.sim.inject(FaultRule {
        qid: Some(0),
        opcode: Some(crate::cmd::admin::DELETE_IO_SQ),
        times: Some(1),
        action: FaultAction::Status(Status::INTERNAL_ERROR),
        ..Default::default()
    });
    drop(q); // the controller keeps SQ 1 and CQ 1
    let mut q2 = r
        .ctrl
        .create_io_queue_pair()
        .expect("a new pair next to the undeleted one");
    assert_eq!(q2.qid(), 2, "QID 1 is still in use on the controller");
    works(&r, &mut q2);
    r.ctrl.reset().unwrap(); // the controller forgets queue 1: its QID and memory are freed
    let mut q3 = r.ctrl.create_io_queue_pair().unwrap();
    assert_eq!(q3.qid(), 1);
    works(&r, &mut q3);
    works(&r, &mut q2);
    assert!(r.sim.dma_violations().is_empty(), "{:?}", r.sim.dma_violations());
}

#[test]
fn a_half_created_queue_keeps_its_qid_when_its_cq_cannot_be_deleted() {
    let r = rig(SimConfig::default());
    for opcode in [crate::cmd::admin::CREATE_IO_SQ, crate::cmd::admin::DELETE_IO_CQ] {
        r.sim.inject(FaultRule {
            qid: Some(0),
            opcode: Some(opcode),
            times: Some(1),
            action: FaultAction::Status(Status::INTERNAL_ERROR),
            ..Default::default()
        });
    }
    let e = r.ctrl.create_io_queue_pair().err().expect("Create I/O SQ fails");
    assert_eq!(e.status(), Some(Status::INTERNAL_ERROR), "{e}");
    let mut q = r.ctrl.create_io_queue_pair().expect("the next pair");
    assert_eq!(q.qid(), 2, "CQ 1 still exists on the controller");
    works(&r, &mut q);
}

/// Submits a read (tag 1, LBA 40) the controller holds for `delay`, then makes BAR0
/// unreachable, and polls until the read comes back — it must, with Aborted by Host,
/// before its data would move.
fn read_held_while_the_bar_goes(
    r: &Rig,
    q: &mut IoQueuePair<SimController>,
    ns: &Namespace,
    delay: Duration,
) -> IoCompletion {
    r.sim.inject(FaultRule {
        opcode: Some(nvm::READ),
        times: Some(1),
        action: FaultAction::Delay(delay),
        ..Default::default()
    });
    q.read(ns, 40, r.buf(4096), 1).unwrap();
    q.ring();
    r.sim.set_bar_unreachable(true);
    let mut back = None;
    let deadline = Instant::now() + delay - Duration::from_millis(50);
    while back.is_none() && Instant::now() < deadline {
        q.poll(usize::MAX, |c| back = Some(c));
        std::thread::sleep(Duration::from_millis(1));
    }
    let c = back.expect("the read fails once the device is seen gone, before its data would move");
    assert_eq!(c.status, Status::ABORTED_BY_HOST);
    c
}

#[test]
fn registers_reading_all_ones_clear_bus_master_before_buffers_come_back() {
    // BAR0 stops answering, but the controller still holds a slow read that will move
    // data when due. Its buffer may only come back once the device cannot DMA any more.
    let r = rig(SimConfig::default());
    let ns = r.ctrl.namespace(1).unwrap();
    let mut q = r.ctrl.create_io_queue_pair().unwrap();
    let mut b = r.buf(4096);
    b.as_mut_slice().fill(0x5A);
    q.write_at(&ns, 40, b).unwrap();
    let c = read_held_while_the_bar_goes(&r, &mut q, &ns, Duration::from_millis(300));
    let mut buf = c.buf.expect("the buffer comes back: the device cannot DMA");
    assert!(!r.sim.bus_master(), "Bus Master Enable was not cleared");
    buf.as_mut_slice().fill(0xEE); // the caller reuses its buffer
    std::thread::sleep(Duration::from_millis(400)); // past the read's due time
    assert!(
        buf.as_slice().iter().all(|&x| x == 0xEE),
        "the device wrote into a buffer that was handed back"
    );
    assert_eq!(r.sim.stats().dma_blocked, 1);
    assert!(r.ctrl.failure().unwrap().contains("gone"));
}

#[test]
fn a_timeout_while_deleting_a_queue_resets_the_controller() {
    let r = rig(SimConfig::default());
    let q = r.ctrl.create_io_queue_pair().unwrap();
    r.sim.inject(FaultRule {
        qid: Some(0),
        opcode: Some(crate::cmd::admin::DELETE_IO_SQ),
        times: Some(1),
        action: FaultAction::Delay(Duration::from_secs(1)),
        ..Default::default()
    });
    drop(q);
    assert_eq!(
        r.sim.stats().resets,
        1,
        "a timed-out Delete I/O SQ must reset the controller"
    );
    let mut q = r.ctrl.create_io_queue_pair().unwrap();
    assert_eq!(q.qid(), 1, "the reset deleted the queues, so their QID is free");
    works(&r, &mut q);
    assert!(r.sim.dma_violations().is_empty(), "{:?}", r.sim.dma_violations());
}

#[test]
fn a_failure_during_a_reset_is_not_undone_by_the_reset_succeeding() {
    // fail() runs without the admin lock (a queue pair's deadline scan that read all
    // ones): here it runs while a reset is under way, from the observer of its start. It
    // says the device is quiet (`disabled`) so Bus Master Enable stays set and the
    // simulated device still answers the reset's commands: the reset succeeds.
    let inner_slot: Arc<std::sync::OnceLock<std::sync::Weak<Inner<SimController>>>> = Arc::default();
    let failures = Arc::new(Mutex::new(0));
    let (slot, count) = (Arc::clone(&inner_slot), Arc::clone(&failures));
    let config = ControllerConfig {
        recovery_observer: Some(RecoveryObserver(Arc::new(move |e| match e {
            RecoveryEvent::ResetStarting(_) => {
                if let Some(inner) = slot.get().and_then(std::sync::Weak::upgrade) {
                    inner.fail("registers read all ones during the reset".into(), true);
                    // Seen twice (another queue pair, the same scan again): changes nothing.
                    inner.fail("a second report".into(), true);
                }
            }
            RecoveryEvent::Failed { .. } => *count.lock().unwrap() += 1,
            _ => {}
        }))),
        ..Default::default()
    };
    let sim = SimController::new(SimConfig::default());
    let ctrl = Controller::init(sim.clone(), Arc::new(sim.dma()), config).expect("init");
    inner_slot.set(Arc::downgrade(&ctrl.inner)).ok().unwrap();
    let e = ctrl
        .reset()
        .expect_err("the reset must report the failure that happened meanwhile");
    assert!(
        matches!(&e, Error::ControllerFailed(r) if r.contains("all ones")),
        "{e:?}"
    );
    assert_eq!(
        ctrl.inner.health(),
        recovery::Health::Failed,
        "the reset made it live again"
    );
    assert_eq!(
        ctrl.failure().as_deref(),
        Some("registers read all ones during the reset")
    );
    assert_eq!(*failures.lock().unwrap(), 1, "the failure is reported once");
    // A reset of a failed controller says why it failed.
    let e = ctrl.reset().unwrap_err();
    assert!(
        matches!(&e, Error::ControllerFailed(r) if r.contains("all ones")),
        "{e:?}"
    );
    let e = ctrl.identify_controller().unwrap_err();
    assert!(matches!(e, Error::ControllerFailed(_)), "{e:?}");
}

#[test]
fn buffers_are_withheld_when_bus_master_cannot_be_cleared() {
    // As above, but PCI configuration space is gone too (a real surprise removal): Bus
    // Master Enable cannot be cleared, the controller still holds a slow read that moves
    // its data when due, so the read's buffer must never come back. The test frees every
    // buffer it gets back, so a device write into one would be a DMA violation.
    let r = rig(SimConfig::default());
    let ns = r.ctrl.namespace(1).unwrap();
    let mut q = r.ctrl.create_io_queue_pair().unwrap();
    let delay = Duration::from_millis(300);
    r.sim.set_config_space_follows_bar(true);
    let c = read_held_while_the_bar_goes(&r, &mut q, &ns, delay);
    assert!(
        c.buf.is_none(),
        "the buffer came back though Bus Master Enable could not be cleared"
    );
    drop(c);
    assert!(r.sim.bus_master(), "the simulated config space refused the write");
    assert!(r.ctrl.failure().unwrap().contains("gone"));
    std::thread::sleep(delay + Duration::from_millis(100)); // past the read's due time
    let _ = r.sim.stats(); // runs due commands
    assert_eq!(r.sim.stats().dma_blocked, 0, "the device still had Bus Master Enable");
    assert!(r.sim.dma_violations().is_empty(), "{:?}", r.sim.dma_violations());
    // The pair refuses with the controller's failure; dropping it and the controller
    // leaks, never frees.
    let e = q.read(&ns, 0, r.buf(4096), 2).unwrap_err();
    assert!(e.to_string().contains("gone"), "{e}");
    drop(q);
    drop(r.ctrl);
    assert!(r.sim.dma_violations().is_empty(), "{:?}", r.sim.dma_violations());
}
