//! Controller driver scenarios on the simulated controller.

use super::*;
use crate::hw::DmaBuf;
use crate::regs::Aqa;
use crate::sim::{FaultAction, FaultRule, SimConfig, SimController, SimNamespace};
use crate::status::Status;

fn sim_with(config: SimConfig) -> SimController {
    SimController::new(config)
}

fn two_namespaces() -> SimConfig {
    SimConfig {
        namespaces: vec![
            SimNamespace {
                block_size: 512,
                blocks: 32768,
            },
            SimNamespace {
                block_size: 4096,
                blocks: 4096,
            },
        ],
        ..SimConfig::default()
    }
}

fn start(sim: &SimController, config: ControllerConfig) -> Controller<SimController> {
    Controller::init(sim.clone(), Arc::new(sim.dma()), config).expect("controller init")
}

fn buffer(ctrl: &Controller<SimController>, len: usize) -> DmaBuf {
    ctrl.dma().allocate(len).expect("dma")
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn init_walks_every_state_and_programs_the_registers() {
    let sim = sim_with(two_namespaces());
    let ctrl = start(&sim, ControllerConfig::default());
    assert_eq!(
        ctrl.init_trace(),
        [
            InitState::ReadCapabilities,
            InitState::Disable,
            InitState::WaitNotReady,
            InitState::ConfigureAdminQueue,
            InitState::Enable,
            InitState::WaitReady,
            InitState::IdentifyController,
            InitState::SetNumberOfQueues,
            InitState::ConfigureShadowDoorbells,
            InitState::IdentifyNamespaces,
            InitState::ConfigureAsyncEvents,
            InitState::SetTimestamp,
            InitState::Ready,
        ]
    );
    let writes: Vec<(u32, u64)> = sim
        .register_log()
        .iter()
        .filter(|a| a.write)
        .map(|a| (a.offset, a.value))
        .collect();
    let aqa = writes.iter().find(|w| w.0 == offset::AQA).expect("AQA written").1;
    assert_eq!(aqa, Aqa::new(32, 32).0 as u64);
    assert!(writes.iter().any(|w| w.0 == offset::ASQ && w.1 != 0 && w.1 % 4096 == 0));
    assert!(writes.iter().any(|w| w.0 == offset::ACQ && w.1 != 0 && w.1 % 4096 == 0));
    let cc = Cc(writes.iter().find(|w| w.0 == offset::CC).expect("CC written").1 as u32);
    assert!(cc.en());
    assert_eq!(
        (cc.iosqes(), cc.iocqes(), cc.mps(), cc.css(), cc.ams()),
        (6, 4, 0, 0, 0)
    );
    // The queues were set up before enabling.
    let pos = |off| writes.iter().position(|w| w.0 == off).unwrap();
    assert!(
        pos(offset::AQA) < pos(offset::CC) && pos(offset::ASQ) < pos(offset::CC) && pos(offset::ACQ) < pos(offset::CC)
    );
    assert!(sim.dma_violations().is_empty(), "{:?}", sim.dma_violations());
    assert!(sim.protocol_violations().is_empty(), "{:?}", sim.protocol_violations());
    assert_eq!(
        sim.stats().admin(crate::cmd::admin::DOORBELL_BUFFER_CONFIG),
        0,
        "shadow doorbells are never set up"
    );
}

#[test]
fn identify_data_matches_the_device() {
    let sim = sim_with(SimConfig {
        serial: "sim-serial".into(),
        model: "ironvme sim".into(),
        ..two_namespaces()
    });
    let ctrl = start(&sim, ControllerConfig::default());
    let id = ctrl.identify();
    assert_eq!(
        (id.vid, id.sn.as_str(), id.mn.as_str(), id.mdts),
        (0x1b36, "sim-serial", "ironvme sim", 7)
    );
    assert_eq!(ctrl.max_transfer_bytes(), 512 * 1024, "MDTS 7 with 4 KiB pages");
    let ns = ctrl.namespaces();
    assert_eq!(ns.len(), 2);
    assert_eq!((ns[0].nsid, ns[0].block_size, ns[0].blocks), (1, 512, 32768));
    assert_eq!((ns[1].nsid, ns[1].block_size, ns[1].blocks), (2, 4096, 4096));
    assert_eq!(ns[1].max_transfer_blocks, 128);
    assert!(ns[0].write_zeroes && ns[0].deallocate && ns[0].compare);
    assert_eq!(ctrl.active_namespace_ids().unwrap(), [1, 2]);
    assert_eq!(ctrl.identify_controller().unwrap(), *id);
    assert!(matches!(ctrl.namespace(9), Err(Error::NoSuchNamespace(9))));
}

#[test]
fn number_of_queues_uses_the_smaller_of_asked_and_granted() {
    // The simulated controller, like QEMU, answers its maximum whatever is asked.
    let sim = sim_with(SimConfig {
        max_io_queues: 64,
        ..SimConfig::default()
    });
    let ctrl = start(
        &sim,
        ControllerConfig {
            io_queues: 3,
            ..Default::default()
        },
    );
    assert_eq!(ctrl.io_queue_limit(), 3);
    let pairs: Vec<_> = (0..3).map(|_| ctrl.create_io_queue_pair().unwrap()).collect();
    assert!(matches!(ctrl.create_io_queue_pair(), Err(Error::NoQueuesLeft(3))));
    let qids: Vec<u16> = pairs.iter().map(IoQueuePair::qid).collect();
    assert_eq!(qids, [1, 2, 3]);
    drop(pairs);
    assert_eq!(
        ctrl.create_io_queue_pair().unwrap().qid(),
        1,
        "dropping a pair frees its QID"
    );
    let granted_less = sim_with(SimConfig {
        max_io_queues: 2,
        answer_max_queues: false,
        ..SimConfig::default()
    });
    assert_eq!(
        start(
            &granted_less,
            ControllerConfig {
                io_queues: 8,
                ..Default::default()
            }
        )
        .io_queue_limit(),
        2
    );
}

#[test]
fn queue_sizes_are_bounded_by_mqes() {
    let sim = sim_with(SimConfig {
        mqes: 63,
        ..SimConfig::default()
    });
    let ctrl = start(&sim, ControllerConfig::default());
    assert!(matches!(ctrl.create_io_queue_pair_sized(65), Err(Error::Queue(_))));
    assert!(matches!(ctrl.create_io_queue_pair_sized(1), Err(Error::Queue(_))));
    let q = ctrl.create_io_queue_pair_sized(64).unwrap();
    assert_eq!(q.depth(), 63);
    drop(q);
    assert_eq!(
        ctrl.create_io_queue_pair().unwrap().depth(),
        63,
        "the configured 256 entries are clamped to CAP.MQES + 1"
    );
}

fn round_trip(
    ctrl: &Controller<SimController>,
    q: &mut IoQueuePair<SimController>,
    ns: &Namespace,
    slba: u64,
    len: usize,
    offset: usize,
    seed: u64,
) {
    let mut buf = buffer(ctrl, offset + len);
    buf.set_window(offset, len).unwrap();
    let data = pattern(seed, len);
    buf.as_mut_slice().copy_from_slice(&data);
    let buf = q
        .write_at(ns, slba, buf)
        .unwrap_or_else(|e| panic!("write {len} bytes at window offset {offset}: {e}"));
    let mut back = buffer(ctrl, offset + len);
    back.set_window(offset, len).unwrap();
    let back = q.read_at(ns, slba, back).unwrap();
    assert!(
        back.as_slice() == data.as_slice(),
        "data mismatch for {len} bytes at window offset {offset}"
    );
    drop(buf);
}

#[test]
fn round_trips_from_one_block_to_mdts_with_prps_and_sgls() {
    for mode in [DataPointerMode::Prp, DataPointerMode::Sgl, DataPointerMode::Auto] {
        let sim = sim_with(two_namespaces());
        let ctrl = start(
            &sim,
            ControllerConfig {
                data_pointer: mode,
                ..Default::default()
            },
        );
        let mut q = ctrl.create_io_queue_pair().unwrap();
        for ns in ctrl.namespaces() {
            let bs = ns.block_size as usize;
            let max = ns.max_transfer_bytes();
            // One block, two pages, a PRP list, exactly MDTS; buffers starting mid-page.
            for (i, &len) in [bs, 2 * bs, 4096, 8192, 3 * 4096, 64 * 1024 + bs, max]
                .iter()
                .enumerate()
            {
                for offset in [0, 512, 4096 - 512] {
                    if offset % 4 == 0 && offset + len <= offset + max {
                        round_trip(&ctrl, &mut q, &ns, (i * 256) as u64, len, offset, (i + offset) as u64);
                    }
                }
            }
        }
        assert!(sim.dma_violations().is_empty(), "{mode:?}: {:?}", sim.dma_violations());
        assert!(
            sim.protocol_violations().is_empty(),
            "{mode:?}: {:?}",
            sim.protocol_violations()
        );
    }
}

#[test]
fn bad_requests_are_refused_before_the_device_sees_them() {
    let sim = sim_with(two_namespaces());
    let ctrl = start(&sim, ControllerConfig::default());
    let mut q = ctrl.create_io_queue_pair().unwrap();
    let ns = ctrl.namespace(2).unwrap();
    let before = sim.stats();
    let e = q.read(&ns, ns.blocks, buffer(&ctrl, 4096), 1).unwrap_err();
    assert!(matches!(e.error, Error::LbaOutOfRange { .. }), "{e}");
    assert!(e.buf.is_some(), "the buffer comes back");
    let e = q.read(&ns, 0, buffer(&ctrl, 1024 * 1024), 1).unwrap_err();
    assert!(matches!(e.error, Error::TransferTooLarge { .. }), "{e}");
    let e = q.write(&ns, 0, buffer(&ctrl, 1000), false, 1).unwrap_err();
    assert!(matches!(e.error, Error::BadLength { .. }), "{e}");
    let mut odd = buffer(&ctrl, 8192);
    odd.set_window(2, 4096).unwrap();
    let e = q.read(&ns, 0, odd, 1).unwrap_err();
    assert!(matches!(e.error, Error::Misaligned { .. }), "{e}");
    let other = sim_with(SimConfig::default());
    let foreign = other.dma().allocate(4096).unwrap();
    let e = q.read(&ns, 0, foreign, 1).unwrap_err();
    assert!(matches!(e.error, Error::WrongDomain { .. }), "{e}");
    assert_eq!(
        sim.stats().sq_doorbells,
        before.sq_doorbells,
        "nothing reached the device"
    );
    // The queue still works.
    round_trip(&ctrl, &mut q, &ns, 0, 4096, 0, 7);
}

#[test]
fn device_errors_come_back_decoded_and_the_queue_keeps_working() {
    let sim = sim_with(two_namespaces());
    let ctrl = start(&sim, ControllerConfig::default());
    let mut q = ctrl.create_io_queue_pair().unwrap();
    let ns = ctrl.namespace(1).unwrap();
    sim.inject(FaultRule {
        opcode: Some(crate::cmd::nvm::READ),
        lba: Some(16..17),
        times: Some(1),
        action: FaultAction::Status(Status::UNRECOVERED_READ_ERROR),
        ..Default::default()
    });
    let e = q.read_at(&ns, 16, buffer(&ctrl, 512)).unwrap_err();
    assert_eq!(e.error.status(), Some(Status::UNRECOVERED_READ_ERROR));
    assert!(e.buf.is_some());
    q.read_at(&ns, 16, buffer(&ctrl, 512)).expect("the fault fired once");
    // A raw command the driver does not validate: the device's own range check.
    let raw = crate::cmd::Command::read(1, ns.blocks, 1);
    let e = q.wait_for(|q| q.submit(raw, Some(buffer(&ctrl, 512)), 9)).unwrap_err();
    assert_eq!(e.error.status(), Some(Status::LBA_OUT_OF_RANGE));
}

#[test]
fn compare_zeroes_and_deallocate() {
    let sim = sim_with(two_namespaces());
    let ctrl = start(&sim, ControllerConfig::default());
    let mut q = ctrl.create_io_queue_pair().unwrap();
    let ns = ctrl.namespace(2).unwrap();
    let mut b = buffer(&ctrl, 8192);
    b.as_mut_slice().fill(0x5A);
    let b = q.write_at(&ns, 10, b).unwrap();
    let b = q.wait_for(|q| q.compare(&ns, 10, b, 0)).unwrap().unwrap();
    let mut other = b;
    other.as_mut_slice()[100] ^= 1;
    let e = q.wait_for(|q| q.compare(&ns, 10, other, 0)).unwrap_err();
    assert_eq!(e.error.status(), Some(Status::COMPARE_FAILURE));
    assert_eq!(e.error.status().unwrap().code(), 0x285);

    q.wait_for(|q| q.write_zeroes(&ns, 10, 1, false, 0)).unwrap();
    q.wait_for(|q| q.deallocate(&ns, &[(11, 1)], buffer(&ctrl, 4096), 0))
        .unwrap();
    let back = q.read_at(&ns, 10, buffer(&ctrl, 8192)).unwrap();
    assert!(back.as_slice().iter().all(|&x| x == 0));
    q.wait_for(|q| q.verify(&ns, 0, 100, 0)).unwrap();
    q.wait_for(|q| q.flush(&ns, 0)).unwrap();
}

#[test]
fn doorbells_are_batched() {
    let sim = sim_with(two_namespaces());
    let ctrl = start(&sim, ControllerConfig::default());
    let mut q = ctrl.create_io_queue_pair().unwrap();
    let ns = ctrl.namespace(1).unwrap();
    let bufs = buffer(&ctrl, 32 * 512).into_chunks(512, 32).unwrap();
    let before = sim.stats();
    for (i, b) in bufs.into_iter().enumerate() {
        q.read(&ns, i as u64, b, i as u64).unwrap();
    }
    assert_eq!(sim.stats().sq_doorbells, before.sq_doorbells, "submit does not ring");
    q.ring();
    assert_eq!(
        sim.stats().sq_doorbells,
        before.sq_doorbells + 1,
        "32 commands, one SQ doorbell write"
    );
    let mut tags = Vec::new();
    while tags.len() < 32 {
        q.poll(64, |c| {
            assert!(c.result().is_ok());
            tags.push(c.tag);
        });
    }
    tags.sort_unstable();
    assert_eq!(tags, (0..32).collect::<Vec<u64>>());
    assert_eq!(
        sim.stats().cq_doorbells,
        before.cq_doorbells + 1,
        "one CQ doorbell write for the batch"
    );
}

#[test]
fn a_full_queue_refuses_more_until_polled() {
    let sim = sim_with(SimConfig::default());
    let ctrl = start(&sim, ControllerConfig::default());
    let mut q = ctrl.create_io_queue_pair_sized(8).unwrap();
    let ns = ctrl.namespace(1).unwrap();
    for i in 0..7 {
        q.flush(&ns, i).unwrap();
    }
    let e = q.flush(&ns, 7).unwrap_err();
    assert!(matches!(e.error, Error::QueueFull(7)));
    let mut done = 0;
    while done < 7 {
        done += q.poll(8, |_| {});
    }
    q.flush(&ns, 8).unwrap();
}

#[test]
fn threads_each_own_a_queue_pair() {
    let sim = sim_with(two_namespaces());
    let ctrl = start(&sim, ControllerConfig::default());
    let ns = ctrl.namespace(1).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (ctrl, ns) = (ctrl.clone(), ns.clone());
            s.spawn(move || {
                let mut q = ctrl.create_io_queue_pair().unwrap();
                for i in 0..20u64 {
                    round_trip(&ctrl, &mut q, &ns, t * 1000 + i * 8, 4096, 0, t * 100 + i);
                }
            });
        }
    });
    assert!(sim.dma_violations().is_empty());
    assert!(sim.protocol_violations().is_empty(), "{:?}", sim.protocol_violations());
}

#[test]
fn async_events_reach_the_caller_and_requests_are_resent() {
    let sim = sim_with(SimConfig::default());
    let ctrl = start(&sim, ControllerConfig::default());
    let outstanding = ctrl.outstanding_async_event_requests();
    assert!(outstanding >= 1);
    sim.set_critical_warning(0x02);
    sim.raise_async_event(1, 0x01, 0x02);
    let events = ctrl.take_async_events();
    assert_eq!(
        events,
        [AsyncEvent {
            event_type: 1,
            info: 1,
            log_page: 2
        }]
    );
    assert_eq!(events[0].type_name(), "SMART / Health status");
    assert_eq!(
        ctrl.outstanding_async_event_requests(),
        outstanding,
        "the request was sent again"
    );
    assert_eq!(ctrl.smart_log().unwrap().critical_warning.bits(), 0x02);
}

/// The active NSIDs the controller lists now.
fn nsids(namespaces: &[Namespace]) -> Vec<u32> {
    namespaces.iter().map(|n| n.nsid).collect()
}

/// Namespace Attachment sent as a raw admin command, as another host or tool would:
/// this controller learns of it only from the event.
fn attach_behind_its_back(ctrl: &Controller<SimController>, nsid: u32, attach: bool) {
    let list = crate::cmd::controller_list(&[ctrl.identify().cntlid]).unwrap();
    ctrl.admin_command_write(Command::namespace_attachment(nsid, attach), &list)
        .unwrap();
}

#[test]
fn a_namespace_attribute_changed_event_rescans_the_namespaces() {
    let sim = sim_with(two_namespaces());
    let ctrl = start(&sim, ControllerConfig::default());
    let mut q = ctrl.create_io_queue_pair().unwrap();
    let second = ctrl.namespace(2).unwrap();
    attach_behind_its_back(&ctrl, 2, false);
    // Until the event is taken, the controller's list is the old one.
    assert_eq!(nsids(&ctrl.namespaces()), [1, 2]);
    let events = ctrl.take_async_events();
    assert_eq!(
        events,
        [AsyncEvent {
            event_type: 2,
            info: 0,
            log_page: 0x04
        }]
    );
    assert!(events[0].is_namespace_attribute_changed());
    assert_eq!(nsids(&ctrl.namespaces()), [1], "the detached namespace is gone");
    assert!(matches!(ctrl.namespace(2), Err(Error::NoSuchNamespace(2))));
    // A queue pair holding the old view gets the controller's answer.
    let e = q.read_at(&second, 0, buffer(&ctrl, 4096)).unwrap_err();
    assert_eq!(e.error.status(), Some(Status::INVALID_NAMESPACE_OR_FORMAT));

    // Attached again (the log read unmasked the event), the rescan finds it, and I/O on
    // it works.
    attach_behind_its_back(&ctrl, 2, true);
    assert_eq!(ctrl.take_async_events().len(), 1);
    assert_eq!(nsids(&ctrl.namespaces()), [1, 2]);
    let back = ctrl.namespace(2).unwrap();
    assert_eq!((back.block_size, back.blocks), (4096, 4096));
    round_trip(&ctrl, &mut q, &back, 7, 8192, 0, 99);
    assert!(ctrl.take_async_events().is_empty());
    assert!(sim.protocol_violations().is_empty(), "{:?}", sim.protocol_violations());
}

#[test]
fn namespace_attachment_reads_this_controllers_namespaces_at_once() {
    let sim = sim_with(two_namespaces());
    let ctrl = start(&sim, ControllerConfig::default());
    let me = ctrl.identify().cntlid;
    ctrl.namespace_attachment(2, false, &[me]).unwrap();
    assert_eq!(nsids(&ctrl.namespaces()), [1], "no need to wait for the event");
    let e = ctrl.namespace_attachment(2, false, &[me]).unwrap_err();
    assert_eq!(e.status(), Some(Status::NAMESPACE_NOT_ATTACHED));
    let e = ctrl.namespace_attachment(2, true, &[me + 1]).unwrap_err();
    assert_eq!(e.status(), Some(Status::CONTROLLER_LIST_INVALID));
    assert!(matches!(ctrl.namespace_attachment(2, true, &[]), Err(Error::Config(_))));
    ctrl.namespace_attachment(2, true, &[me]).unwrap();
    assert_eq!(nsids(&ctrl.namespaces()), [1, 2]);
    let e = ctrl.namespace_attachment(2, true, &[me]).unwrap_err();
    assert_eq!(e.status(), Some(Status::NAMESPACE_ALREADY_ATTACHED));
    assert!(
        ctrl.take_async_events()
            .iter()
            .all(AsyncEvent::is_namespace_attribute_changed)
    );
    assert_eq!(nsids(&ctrl.namespaces()), [1, 2]);
}

#[test]
fn a_namespace_change_a_reset_lost_is_found_and_later_ones_still_reported() {
    let sim = sim_with(two_namespaces());
    let ctrl = start(&sim, ControllerConfig::default());
    // The event's Changed Namespace List read never completes, and the reset drops it.
    sim.inject(FaultRule {
        qid: Some(0),
        opcode: Some(crate::cmd::admin::GET_LOG_PAGE),
        times: Some(1),
        ..FaultRule::new(FaultAction::Hang)
    });
    attach_behind_its_back(&ctrl, 2, false);
    ctrl.reset().unwrap();
    ctrl.take_async_events();
    assert_eq!(nsids(&ctrl.namespaces()), [1], "rescanned after the reset");
    // The controller reports nsid 2 again only because its Changed Namespace List was
    // read after the reset.
    attach_behind_its_back(&ctrl, 2, true);
    let events = ctrl.take_async_events();
    assert!(
        events.iter().any(AsyncEvent::is_namespace_attribute_changed),
        "{events:?}"
    );
    assert_eq!(nsids(&ctrl.namespaces()), [1, 2]);
}

#[test]
fn admin_commands_the_device_rejects_return_their_status() {
    let sim = sim_with(SimConfig::default());
    let ctrl = start(&sim, ControllerConfig::default());
    let e = ctrl.firmware_download(&[0u8; 4096]).unwrap_err();
    assert_eq!(e.status(), Some(Status::INVALID_OPCODE));
    let e = ctrl
        .get_log_page(crate::log::LogPageId(0x7F), NSID_ALL, 0, 512)
        .unwrap_err();
    assert_eq!(e.status(), Some(Status::INVALID_LOG_PAGE));
    assert!(
        ctrl.get_log_page(crate::log::LogPageId::SMART_HEALTH, NSID_ALL, 0, 6)
            .is_err()
    );
    // The admin queue still works.
    assert_eq!(ctrl.firmware_slot_log().unwrap().active_slot(), 1);
    assert!(
        ctrl.error_log()
            .unwrap()
            .iter()
            .any(|e| e.status_raw15() & 0x7FF == 0x001)
    );
}

#[test]
fn features_round_trip() {
    let sim = sim_with(SimConfig::default());
    let ctrl = start(&sim, ControllerConfig::default());
    ctrl.set_features(crate::features::FeatureId::VOLATILE_WRITE_CACHE, 0, 0, false, &[])
        .unwrap();
    let (dw0, _) = ctrl
        .get_features(
            crate::features::FeatureId::VOLATILE_WRITE_CACHE,
            crate::features::FeatureSelect::Current,
            0,
            0,
            0,
        )
        .unwrap();
    assert_eq!(dw0 & 1, 0);
    let (_, ts) = ctrl
        .get_features(
            crate::features::FeatureId::TIMESTAMP,
            crate::features::FeatureSelect::Current,
            0,
            0,
            8,
        )
        .unwrap();
    let ts = crate::features::Timestamp::parse(&ts).unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        now_ms.abs_diff(ts.millis) < 60_000,
        "init set the timestamp from the host clock"
    );
}

#[test]
fn format_changes_the_block_size() {
    let sim = sim_with(SimConfig {
        namespaces: vec![SimNamespace {
            block_size: 512,
            blocks: 8192,
        }],
        ..SimConfig::default()
    });
    let ctrl = start(&sim, ControllerConfig::default());
    let ns = ctrl
        .format_nvm(
            1,
            crate::cmd::FormatSettings {
                lbaf: 1,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((ns[0].block_size, ns[0].blocks), (4096, 1024));
    assert_eq!(ctrl.namespace(1).unwrap().block_size, 4096);
    assert_eq!(
        ctrl.format_nvm(
            1,
            crate::cmd::FormatSettings {
                lbaf: 5,
                ..Default::default()
            }
        )
        .unwrap_err()
        .status(),
        Some(Status::INVALID_FORMAT)
    );
}

#[test]
fn dropping_the_controller_shuts_it_down() {
    let sim = sim_with(SimConfig::default());
    let ctrl = start(&sim, ControllerConfig::default());
    let q = ctrl.create_io_queue_pair().unwrap();
    sim.clear_register_log();
    drop(ctrl);
    assert!(
        sim.register_log().iter().all(|a| !(a.write && a.offset == offset::CC)),
        "queue pairs keep the controller alive"
    );
    drop(q);
    let cc_writes: Vec<u64> = sim
        .register_log()
        .iter()
        .filter(|a| a.write && a.offset == offset::CC)
        .map(|a| a.value)
        .collect();
    assert_eq!(cc_writes.len(), 1);
    assert_eq!(Cc(cc_writes[0] as u32).shn(), 1, "normal shutdown notification");
    assert_eq!(Csts(sim.read32(offset::CSTS)).shst(), ShutdownStatus::Complete);
    assert!(sim.protocol_violations().is_empty(), "{:?}", sim.protocol_violations());
}

#[test]
fn init_fails_cleanly_on_a_dead_or_missing_device() {
    let gone = sim_with(SimConfig::default());
    gone.set_removed(true);
    let e = Controller::init(gone.clone(), Arc::new(gone.dma()), ControllerConfig::default())
        .err()
        .unwrap();
    assert!(matches!(e, Error::Removed { .. }), "{e}");
    let slow = sim_with(SimConfig {
        ready_delay: std::time::Duration::from_secs(5),
        cap_to: 1,
        ..SimConfig::default()
    });
    let e = Controller::init(slow.clone(), Arc::new(slow.dma()), ControllerConfig::default())
        .err()
        .unwrap();
    assert!(matches!(e, Error::ReadyTimeout { want: true, .. }), "{e}");
    let bad_page = sim_with(SimConfig::default());
    let e = Controller::init(
        bad_page.clone(),
        Arc::new(bad_page.dma()),
        ControllerConfig {
            page_size: 2 << 20,
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(e, Error::Config(_)), "{e}");
}

#[test]
fn a_page_size_the_allocator_cannot_align_is_refused() {
    // The simulator allows pages up to 64 KiB (CAP.MPSMAX = 4) but its allocator, like
    // VFIO's, aligns to 4 KiB: an 8 KiB CC.MPS would put rings off a page boundary.
    let sim = sim_with(SimConfig::default());
    assert!(sim.config().mpsmax >= 1, "the controller itself accepts 8 KiB pages");
    let e = Controller::init(
        sim.clone(),
        Arc::new(sim.dma()),
        ControllerConfig {
            page_size: 8192,
            ..Default::default()
        },
    )
    .err()
    .expect("an 8 KiB page size with a 4 KiB-aligned allocator must be refused");
    match e {
        Error::Config(msg) => assert!(msg.contains("8192") && msg.contains("4096"), "{msg}"),
        other => panic!("expected Error::Config, got {other}"),
    }
}

#[test]
fn later_events_of_a_type_arrive_because_its_log_is_read_with_rae_clear() {
    // A controller masks events of a type until the log page the event names is read
    // with RAE = 0; a driver that only re-arms the request never hears of the type again.
    let sim = sim_with(SimConfig::default());
    let ctrl = start(&sim, ControllerConfig::default());
    let outstanding = ctrl.outstanding_async_event_requests();
    let logs_before = sim.stats().admin(crate::cmd::admin::GET_LOG_PAGE);
    for round in 0..3u8 {
        sim.raise_async_event(1, round, 0x02);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut got = Vec::new();
        while got.is_empty() && std::time::Instant::now() < deadline {
            got = ctrl.take_async_events();
        }
        assert_eq!(
            got,
            [AsyncEvent {
                event_type: 1,
                info: round,
                log_page: 2
            }],
            "SMART event {round} did not arrive: events of its type stayed masked"
        );
    }
    // The third event's log read may still be on its way; a poll collects it.
    assert!(ctrl.take_async_events().is_empty());
    assert_eq!(
        ctrl.outstanding_async_event_requests(),
        outstanding,
        "every request was sent again"
    );
    assert_eq!(sim.stats().admin(crate::cmd::admin::GET_LOG_PAGE) - logs_before, 3);
    // A synchronous admin command consumes event completions in its wait loop and still
    // gets its own answer.
    sim.raise_async_event(1, 9, 0x02);
    ctrl.identify_controller()
        .expect("identify while an event is processed");
    assert_eq!(ctrl.take_async_events().len(), 1);
    assert!(sim.protocol_violations().is_empty(), "{:?}", sim.protocol_violations());
    assert!(sim.dma_violations().is_empty(), "{:?}", sim.dma_violations());
}

#[test]
fn a_namespace_whose_block_exceeds_the_largest_transfer_is_skipped() {
    use crate::sim::{IdentifyLie, Misbehaviour};
    for (lbads, usable) in [(31u8, false), (20, false), (19, true), (12, true)] {
        let sim = sim_with(SimConfig::default()); // MDTS: 512 KiB = 2^19 bytes
        sim.inject(FaultRule {
            opcode: Some(crate::cmd::admin::IDENTIFY),
            ..FaultRule::new(FaultAction::Misbehave(Misbehaviour::Identify(IdentifyLie::Lbads(
                lbads,
            ))))
        });
        let ctrl = start(&sim, ControllerConfig::default());
        match ctrl.namespace(1) {
            Ok(ns) => {
                assert!(usable, "LBADS {lbads}: a {} byte block was accepted", ns.block_size);
                assert!(ns.max_transfer_blocks >= 1);
            }
            Err(e) => assert!(!usable, "LBADS {lbads}: {e}"),
        }
    }
}

#[test]
fn a_create_queue_command_the_admin_queue_refused_does_not_keep_the_qid() {
    let sim = sim_with(SimConfig::default());
    let ctrl = start(
        &sim,
        ControllerConfig {
            io_queues: 1,
            ..ControllerConfig::default()
        },
    );
    assert_eq!(ctrl.io_queue_limit(), 1);
    let taken = ctrl.admin().occupy_for_test();
    for _ in 0..3 {
        match ctrl.create_io_queue_pair() {
            Err(Error::QueueFull(_)) => {}
            Err(e) => panic!("expected the full admin queue to refuse Create I/O CQ, got: {e}"),
            Ok(_) => panic!("created a queue pair through a full admin queue"),
        }
    }
    ctrl.admin().free_for_test(&taken);
    // Create I/O CQ was never sent: the QID is free again, with no reset.
    let q = ctrl
        .create_io_queue_pair()
        .expect("the only QID was orphaned by a command that was never sent");
    assert_eq!(q.qid(), 1);
    assert_eq!(ctrl.reset_count(), 0);
    drop(q);
    assert!(sim.protocol_violations().is_empty(), "{:?}", sim.protocol_violations());
}

#[test]
fn an_event_log_read_the_controller_never_answers_resets_it_and_events_flow_again() {
    let sim = sim_with(SimConfig::default());
    let timeout = std::time::Duration::from_millis(50);
    let ctrl = start(
        &sim,
        ControllerConfig {
            admin_timeout: timeout,
            ..ControllerConfig::default()
        },
    );
    let outstanding = ctrl.outstanding_async_event_requests();
    // The event's Get Log Page (RAE = 0) vanishes inside the device.
    sim.inject(FaultRule {
        qid: Some(0),
        opcode: Some(crate::cmd::admin::GET_LOG_PAGE),
        times: Some(1),
        ..FaultRule::new(FaultAction::Lost)
    });
    sim.raise_async_event(1, 0, 0x02);
    let started = std::time::Instant::now();
    let mut events = Vec::new();
    while ctrl.reset_count() == 0 {
        events.extend(ctrl.take_async_events());
        assert!(
            started.elapsed() < timeout * 20,
            "no reset {:?} after the event log read was lost ({} requests outstanding, {outstanding} before): \
             events of every type stay unreported",
            started.elapsed(),
            ctrl.outstanding_async_event_requests()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(started.elapsed() >= timeout, "reset before the deadline");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(ctrl.outstanding_async_event_requests(), outstanding);
    assert_eq!(ctrl.failure(), None);
    // The reset unmasked the type and sent the requests again: the next event arrives.
    sim.raise_async_event(1, 1, 0x02);
    let mut got = Vec::new();
    while got.is_empty() {
        got = ctrl.take_async_events();
        assert!(started.elapsed() < timeout * 40, "the next event never arrived");
    }
    assert_eq!(got[0].info, 1);
    ctrl.identify_controller().expect("admin commands work after the reset");
    assert!(sim.protocol_violations().is_empty(), "{:?}", sim.protocol_violations());
    assert!(sim.dma_violations().is_empty(), "{:?}", sim.dma_violations());
}

#[test]
fn admin_queues_too_small_for_async_events_are_refused_and_small_ones_still_work() {
    for entries in [2, 3] {
        let sim = sim_with(SimConfig::default());
        let config = ControllerConfig {
            admin_queue_entries: entries,
            ..ControllerConfig::default()
        };
        match Controller::init(sim.clone(), Arc::new(sim.dma()), config) {
            Err(Error::Config(msg)) => assert!(msg.contains("asynchronous events"), "{msg}"),
            Err(e) => panic!("{entries} entries: wrong error {e}"),
            Ok(ctrl) => {
                let r = ctrl.identify_controller();
                panic!(
                    "{entries} admin entries with asynchronous events accepted \
                     ({} requests outstanding); a synchronous command then gives {:?}",
                    ctrl.outstanding_async_event_requests(),
                    r.map(|i| i.vid)
                );
            }
        }
        // Without asynchronous events the small queue works.
        let ctrl = start(
            &sim_with(SimConfig::default()),
            ControllerConfig {
                admin_queue_entries: entries,
                async_events: false,
                ..ControllerConfig::default()
            },
        );
        ctrl.identify_controller().expect("identify on a small admin queue");
        assert_eq!(ctrl.outstanding_async_event_requests(), 0);
    }
    // The smallest queue that takes events: a request, the event's log read and a
    // synchronous command fit together.
    let sim = sim_with(SimConfig::default());
    let ctrl = start(
        &sim,
        ControllerConfig {
            admin_queue_entries: 4,
            ..ControllerConfig::default()
        },
    );
    assert_eq!(ctrl.outstanding_async_event_requests(), 1);
    for round in 0..3u8 {
        sim.raise_async_event(1, round, 0x02);
        ctrl.identify_controller()
            .expect("identify while an event is processed");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut got = Vec::new();
        while got.is_empty() && std::time::Instant::now() < deadline {
            got = ctrl.take_async_events();
        }
        assert_eq!(got.len(), 1, "event {round}");
    }
    assert!(sim.protocol_violations().is_empty(), "{:?}", sim.protocol_violations());
}

/// A controller in interrupt mode on the simulator's vectors, its namespace 1 and a queue
/// pair.
fn in_interrupt_mode() -> (
    SimController,
    Controller<SimController>,
    Namespace,
    IoQueuePair<SimController>,
) {
    let sim = sim_with(SimConfig::default());
    let config = ControllerConfig {
        interrupts: Some(sim.interrupts()),
        ..ControllerConfig::default()
    };
    let ctrl = start(&sim, config);
    let ns = ctrl.namespace(1).unwrap();
    let q = ctrl.create_io_queue_pair().unwrap();
    (sim, ctrl, ns, q)
}

/// Interrupt mode on the simulated controller's vectors: queue `qid` is created with
/// IEN = 1 and IV = `qid`, and `wait` sleeps on it until a delayed completion signals it.
#[test]
fn interrupt_mode_sleeps_on_the_queues_vector_until_the_completion_signals_it() {
    let (sim, ctrl, ns, mut q) = in_interrupt_mode();
    let vectors = sim.interrupts();
    let qid = q.qid();
    assert_eq!(q.interrupt_vector(), Some(qid));
    // Each round: a read the controller completes 30 ms later from its own thread, so
    // the pair finds nothing on its first poll and must sleep.
    for round in 0..2 {
        sim.inject(FaultRule {
            opcode: Some(crate::cmd::nvm::READ),
            times: Some(1),
            action: FaultAction::Delay(std::time::Duration::from_millis(30)),
            ..Default::default()
        });
        let before = (q.sleep_counts(), vectors.signalled(qid));
        q.read(&ns, 0, buffer(&ctrl, 4096), 7).unwrap();
        let mut done = Vec::new();
        while done.is_empty() {
            q.wait(8, |c| done.push(c.status));
        }
        assert_eq!(done, [Status::SUCCESS]);
        let (sleeps, signals) = (q.sleep_counts(), vectors.signalled(qid));
        assert_eq!(signals, before.1 + 1, "round {round}: one post, one signal");
        assert!(
            sleeps.woken > before.0.woken,
            "round {round}: the vector ended a sleep: {sleeps:?}"
        );
        if round == 0 {
            // A reset creates the queues again, with their vector.
            ctrl.reset().unwrap();
        }
    }
    // The admin queue's posts signal vector 0, which nobody sleeps on.
    assert!(vectors.signalled(0) > 0);
}

/// The end of a reset on another thread wakes a pair asleep on its vector (no interrupt
/// announces it): the pair's command, which the reset discarded, completes as aborted by
/// the host after a signalled wake-up, not when the sleep times out at the next deadline
/// scan.
#[test]
fn a_reset_on_another_thread_wakes_a_pair_asleep_on_its_vector() {
    let (sim, ctrl, ns, mut q) = in_interrupt_mode();
    // Far beyond the test: only the reset ends this read.
    sim.inject(FaultRule {
        opcode: Some(crate::cmd::nvm::READ),
        times: Some(1),
        action: FaultAction::Delay(std::time::Duration::from_secs(60)),
        ..Default::default()
    });
    q.read(&ns, 0, buffer(&ctrl, 4096), 1).unwrap();
    let mut done = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            // Long enough for the pair to be asleep, shorter than its 500 ms scan.
            std::thread::sleep(std::time::Duration::from_millis(200));
            ctrl.reset().unwrap();
        });
        while done.is_empty() {
            q.wait(8, |c| done.push(c.status));
        }
    });
    assert_eq!(done, [Status::ABORTED_BY_HOST]);
    assert!(q.sleep_counts().woken >= 1, "{:?}", q.sleep_counts());
}

#[test]
fn without_interrupt_vectors_queues_are_polled_and_signal_nothing() {
    let sim = sim_with(SimConfig::default());
    let ctrl = start(&sim, ControllerConfig::default());
    let ns = ctrl.namespace(1).unwrap();
    let mut q = ctrl.create_io_queue_pair().unwrap();
    assert_eq!(q.interrupt_vector(), None);
    q.read_at(&ns, 0, buffer(&ctrl, 4096)).unwrap();
    assert_eq!(sim.interrupts().signalled(q.qid()), 0);
    assert_eq!(q.sleep_counts(), SleepCounts::default());
}

/// Vectors fewer than the queues: queues at or past the count are polled.
#[test]
fn queues_past_the_last_vector_are_polled() {
    #[derive(Debug)]
    struct OneVector;
    impl crate::hw::InterruptVectors for OneVector {
        fn count(&self) -> u16 {
            1
        }
        fn wait(&self, _: u16, _: std::time::Duration) -> std::io::Result<bool> {
            unreachable!("no I/O queue has a vector")
        }
        fn kick(&self, _: u16) {}
    }
    let sim = sim_with(SimConfig::default());
    let ctrl = start(
        &sim,
        ControllerConfig {
            interrupts: Some(Arc::new(OneVector)),
            ..ControllerConfig::default()
        },
    );
    let ns = ctrl.namespace(1).unwrap();
    let mut q = ctrl.create_io_queue_pair().unwrap();
    assert_eq!(q.interrupt_vector(), None);
    q.read_at(&ns, 0, buffer(&ctrl, 4096)).unwrap();
    assert_eq!(sim.interrupts().signalled(q.qid()), 0);
}

#[test]
fn separate_metadata_goes_in_mptr_after_the_data_and_raw_commands_carry_none() {
    let sim = sim_with(two_namespaces());
    let ctrl = start(&sim, ControllerConfig::default());
    let mut q = ctrl.create_io_queue_pair().unwrap();
    // 8 blocks of 512 bytes and 8 × 8 bytes of metadata after them, in one buffer.
    let buf = buffer(&ctrl, 8 * 520);
    let iova = buf.iova();
    q.wait_for(|q| q.submit_with_metadata(Command::read(1, 0, 8), buf, 8 * 512, 3))
        .unwrap();
    let sent = sim.stats().last_io_command.expect("a read was fetched");
    assert_eq!(sent.mptr, iova + 8 * 512, "MPTR points after the data");
    assert_eq!(sent.dptr[0], iova, "the data pointer starts at the buffer");
    // A raw command's own MPTR is not sent: the driver owns the data pointers.
    let mut raw = Command::read(1, 0, 1);
    raw.mptr = 0xdead_0000;
    q.wait_for(|q| q.submit(raw, Some(buffer(&ctrl, 512)), 4)).unwrap();
    assert_eq!(sim.stats().last_io_command.unwrap().mptr, 0);
    // The metadata must follow some data in the buffer.
    let e = q
        .submit_with_metadata(Command::read(1, 0, 1), buffer(&ctrl, 512), 512, 5)
        .unwrap_err();
    assert!(matches!(e.error, Error::BufferMismatch(_)), "{e}");
    assert!(e.buf.is_some(), "the buffer comes back");
    assert_eq!(q.outstanding(), 0);
}

#[test]
fn a_namespace_identify_namespace_refuses_is_skipped_not_fatal() {
    // With CC.CSS = 110b a controller may have active namespaces of command sets ironvme
    // does not know; it refuses to describe one with a status: init and a rescan go on
    // with the others.
    let sim = SimController::new(two_namespaces());
    let refuse = FaultRule {
        qid: Some(0),
        opcode: Some(crate::cmd::admin::IDENTIFY),
        nsid: Some(2),
        action: FaultAction::Status(Status::INVALID_IO_COMMAND_SET),
        ..Default::default()
    };
    sim.inject(refuse.clone());
    let ctrl = start(&sim, ControllerConfig::default());
    let nsids: Vec<u32> = ctrl.namespaces().iter().map(|n| n.nsid).collect();
    assert_eq!(nsids, [1]);
    assert_eq!(ctrl.rescan_namespaces().unwrap().len(), 1);
    sim.clear_faults();
    assert_eq!(ctrl.rescan_namespaces().unwrap().len(), 2);
}

/// A reset's states up to Number of Queues.
const RESET_TO_QUEUES: [InitState; 6] = [
    InitState::Disable,
    InitState::WaitNotReady,
    InitState::ConfigureAdminQueue,
    InitState::Enable,
    InitState::WaitReady,
    InitState::SetNumberOfQueues,
];

/// Two simulated controllers whose CSTS.RDY follows CC.EN only after `ready_delay`.
fn slow_pair(ready_delay: std::time::Duration) -> [SimController; 2] {
    [0, 1].map(|_| {
        sim_with(SimConfig {
            ready_delay,
            ..SimConfig::default()
        })
    })
}

/// Bring-up never waits inside a poll: one thread starts two controllers, both wait for
/// CSTS.RDY at once, then both wait on an Identify Controller the device holds for a
/// while; `init_all` finishes both.
#[test]
fn one_thread_brings_up_two_controllers_at_once() {
    let delay = std::time::Duration::from_millis(300);
    let sims = slow_pair(delay);
    let mut inits: Vec<_> = sims
        .iter()
        .map(|s| ControllerInit::new(s.clone(), Arc::new(s.dma()), ControllerConfig::default()))
        .collect();
    for init in &mut inits {
        assert!(init.poll().is_pending(), "CSTS.RDY follows CC.EN only after {delay:?}");
        assert_eq!(init.state(), InitState::WaitReady);
    }
    for s in &sims {
        s.inject(FaultRule {
            qid: Some(0),
            opcode: Some(crate::cmd::admin::IDENTIFY),
            times: Some(1),
            action: FaultAction::Delay(delay),
            ..Default::default()
        });
    }
    while inits.iter().any(|i| i.state() == InitState::WaitReady) {
        for init in &mut inits {
            assert!(
                init.poll().is_pending(),
                "the Identify Controller is held for {delay:?}"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for init in &mut inits {
        assert!(init.poll().is_pending());
        assert_eq!(init.state(), InitState::IdentifyController);
    }
    let ctrls: Vec<_> = init_all(inits).into_iter().map(|r| r.expect("init")).collect();
    for ctrl in &ctrls {
        assert_eq!(ctrl.init_trace().first(), Some(&InitState::ReadCapabilities));
        assert_eq!(ctrl.init_trace().last(), Some(&InitState::Ready));
        assert_eq!(ctrl.namespaces().len(), 1);
    }
}

/// A reset goes back through the initialisation states (from Disable, without Identify
/// Controller and the namespace scan), never waiting inside a poll; `reset_all` resets
/// two controllers from one thread, and both do I/O again.
#[test]
fn resets_run_the_init_states_and_one_thread_resets_two_controllers() {
    let sims = slow_pair(std::time::Duration::from_millis(200));
    let ctrls: Vec<_> = sims.iter().map(|s| start(s, ControllerConfig::default())).collect();
    let mut pairs: Vec<_> = ctrls.iter().map(|c| c.create_io_queue_pair().unwrap()).collect();
    {
        let mut resets: Vec<_> = ctrls.iter().map(|c| c.start_reset()).collect();
        for r in &mut resets {
            assert!(
                r.poll().is_pending(),
                "CSTS.RDY = 0 follows CC.EN = 0 only after the delay"
            );
            assert_eq!(r.state(), InitState::WaitNotReady);
        }
        let mut r = resets.pop().unwrap();
        let done = init::Backoff::block_on(&mut r, ResetInProgress::poll, ResetInProgress::progress);
        done.expect("reset");
        // Ended: the admin lock is free again while the handle lives (another thread's
        // admin command, here, would otherwise wait until the handle is dropped).
        let (tx, rx) = std::sync::mpsc::channel();
        let other = ctrls[1].clone();
        std::thread::spawn(move || tx.send(other.identify_controller().map(drop)));
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("an admin command runs once the reset ended")
            .expect("Identify Controller");
        let rest = [
            InitState::ConfigureShadowDoorbells,
            InitState::ConfigureAsyncEvents,
            InitState::SetTimestamp,
            InitState::Ready,
        ];
        assert_eq!(r.trace(), [&RESET_TO_QUEUES[..], &rest].concat());
        // The other one finishes when dropped.
    }
    assert_eq!(ctrls.iter().map(|c| c.reset_count()).collect::<Vec<_>>(), [1, 1]);
    // One more controller, failed already, between them: each result is its own.
    let gone_sim = sim_with(SimConfig::default());
    let gone = start(&gone_sim, ControllerConfig::default());
    gone_sim.set_removed(true);
    assert!(gone.reset().is_err());
    let given = [ctrls[0].clone(), gone.clone(), ctrls[1].clone(), ctrls[0].clone(), gone];
    let results = Controller::reset_all(&given);
    assert_eq!(
        results.iter().map(Result::is_ok).collect::<Vec<_>>(),
        [true, false, true, true, false],
        "{results:?}"
    );
    assert_eq!(
        ctrls.iter().map(|c| c.reset_count()).collect::<Vec<_>>(),
        [2, 2],
        "each reset once"
    );
    for (ctrl, q) in ctrls.iter().zip(&mut pairs) {
        let ns = ctrl.namespace(1).unwrap();
        let buf = buffer(ctrl, 4096);
        q.read(&ns, 0, buf, 1).unwrap();
        let mut done = Vec::new();
        while done.is_empty() {
            q.poll(8, |c| done.push(c.status));
        }
        assert_eq!(done, [Status::SUCCESS]);
        assert!(ctrl.outstanding_async_event_requests() > 0, "events asked for again");
    }
}

/// A bring-up that fails after CC.EN = 1 disables the controller again before it
/// reports the failure, without waiting inside a poll.
#[test]
fn a_failed_bring_up_disables_the_controller_before_reporting() {
    let [sim, _] = slow_pair(std::time::Duration::from_millis(100));
    sim.inject(FaultRule {
        qid: Some(0),
        opcode: Some(crate::cmd::admin::IDENTIFY),
        action: FaultAction::Status(Status::INTERNAL_ERROR),
        ..Default::default()
    });
    let mut init = ControllerInit::new(sim.clone(), Arc::new(sim.dma()), ControllerConfig::default());
    let mut states = Vec::new();
    let e = loop {
        match init.poll() {
            std::task::Poll::Ready(r) => break r.err().expect("Identify Controller fails"),
            std::task::Poll::Pending => states.push(init.state()),
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(matches!(e, Error::Command { .. }), "{e}");
    assert!(states.contains(&InitState::WaitReady), "{states:?}");
    assert_eq!(
        states.last(),
        Some(&InitState::WaitNotReady),
        "disabling again after the failure: {states:?}"
    );
    assert!(!Cc(sim.read32(offset::CC)).en());
    assert!(!Csts(sim.read32(offset::CSTS)).rdy());
    assert_eq!(
        init.state(),
        InitState::WaitNotReady,
        "the state that reported the failure"
    );
    assert_eq!(
        sim.dma().live_regions(),
        0,
        "the admin queue was freed: the controller is disabled"
    );
    assert!(sim.dma_violations().is_empty(), "{:?}", sim.dma_violations());
}

/// An init dropped while its Identify Controller is outstanding disables the controller
/// and frees the admin queue; the command the controller held then touches nothing.
#[test]
fn a_bring_up_dropped_mid_command_disables_the_controller_and_frees_its_queue() {
    let sim = sim_with(SimConfig::default());
    sim.inject(FaultRule {
        qid: Some(0),
        opcode: Some(crate::cmd::admin::IDENTIFY),
        times: Some(1),
        action: FaultAction::Lost,
        ..Default::default()
    });
    let mut init = ControllerInit::new(sim.clone(), Arc::new(sim.dma()), ControllerConfig::default());
    assert!(init.poll().is_pending());
    assert_eq!(init.state(), InitState::IdentifyController);
    assert!(sim.dma().live_regions() > 0);
    drop(init);
    assert!(!Cc(sim.read32(offset::CC)).en());
    assert_eq!(sim.dma().live_regions(), 0, "freed only because it was disabled");
}

#[test]
#[should_panic(expected = "polled after it gave its result")]
fn a_bring_up_polled_after_its_result_panics() {
    let sim = sim_with(SimConfig::default());
    let mut init = ControllerInit::new(sim.clone(), Arc::new(sim.dma()), ControllerConfig::default());
    let _ctrl = init::Backoff::block_on(&mut init, ControllerInit::poll, ControllerInit::state).unwrap();
    let _ = init.poll();
}

/// A controller that refuses Set Features Timestamp still comes back from a reset (as
/// Linux, which only warns).
#[test]
fn a_refused_timestamp_does_not_fail_a_reset() {
    let sim = sim_with(SimConfig::default());
    let config = ControllerConfig {
        async_events: false,
        shadow_doorbells: false,
        ..Default::default()
    };
    let ctrl = start(&sim, config);
    // The reset's Set Features: Number of Queues (passes the first rule), then Timestamp.
    for action in [
        FaultAction::Delay(std::time::Duration::from_millis(1)),
        FaultAction::Status(Status::INTERNAL_ERROR),
    ] {
        sim.inject(FaultRule {
            qid: Some(0),
            opcode: Some(crate::cmd::admin::SET_FEATURES),
            times: Some(1),
            action,
            ..Default::default()
        });
    }
    ctrl.reset().expect("the reset succeeds without a timestamp");
    assert_eq!(ctrl.reset_count(), 1);
    assert!(ctrl.failure().is_none());
}

/// A reset under way stops at its next poll once another thread marked the controller
/// failed (registers reading all ones), instead of waiting out CAP.TO.
#[test]
fn a_reset_stops_once_the_controller_failed() {
    let sim = sim_with(SimConfig::default());
    let ctrl = start(&sim, ControllerConfig::default());
    sim.set_ready_delay(std::time::Duration::from_secs(30));
    let mut r = ctrl.start_reset();
    assert!(r.poll().is_pending());
    assert_eq!(r.state(), InitState::WaitNotReady, "CSTS.RDY = 0 comes only after 30 s");
    ctrl.inner.fail("registers read all ones".into(), false);
    match r.poll() {
        std::task::Poll::Ready(Err(Error::ControllerFailed(why))) => assert!(why.contains("all ones"), "{why}"),
        other => panic!("expected the failure at once, got {other:?}"),
    }
    assert_eq!(r.state(), InitState::Ready);
}

/// A thread that panics with a reset under way leaves the controller failed, not
/// resetting forever, and does not wait for the reset.
#[test]
fn a_reset_abandoned_by_a_panic_fails_the_controller() {
    let sim = sim_with(SimConfig::default());
    let ctrl = start(&sim, ControllerConfig::default());
    sim.set_ready_delay(std::time::Duration::from_secs(30));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut r = ctrl.start_reset();
        assert!(r.poll().is_pending());
        panic!("the caller's own bug");
    }));
    assert!(caught.is_err());
    assert!(
        ctrl.failure().is_some_and(|f| f.contains("panicked")),
        "{:?}",
        ctrl.failure()
    );
    assert!(matches!(ctrl.reset(), Err(Error::ControllerFailed(_))));
}

/// A reset that fails after CC.EN = 1 (Number of Queues refused) disables the
/// controller again through the same states before the controller is marked failed.
#[test]
fn a_reset_failing_after_enable_disables_the_controller_again() {
    let sim = sim_with(SimConfig::default());
    let ctrl = start(&sim, ControllerConfig::default());
    sim.inject(FaultRule {
        qid: Some(0),
        opcode: Some(crate::cmd::admin::SET_FEATURES),
        times: Some(1),
        action: FaultAction::Status(Status::INTERNAL_ERROR),
        ..Default::default()
    });
    let mut r = ctrl.start_reset();
    let e = init::Backoff::block_on(&mut r, ResetInProgress::poll, ResetInProgress::progress)
        .expect_err("Number of Queues is refused");
    assert!(matches!(e, Error::Command { .. }), "{e}");
    let again = [InitState::Disable, InitState::WaitNotReady];
    assert_eq!(r.trace(), [&RESET_TO_QUEUES[..], &again].concat());
    drop(r);
    assert!(!Cc(sim.read32(offset::CC)).en());
    assert!(matches!(ctrl.reset(), Err(Error::ControllerFailed(_))));
    let failure = ctrl.failure().unwrap_or_default();
    assert!(failure.contains("Set Features"), "{failure}");
    assert!(sim.dma_violations().is_empty(), "{:?}", sim.dma_violations());
}
