//! ironvme's driver on QEMU's NVMe controllers through VFIO (polled, and in interrupt mode
//! on MSI-X): identification, I/O from one block to MDTS, several threads, Write Zeroes /
//! Deallocate / Compare, bad requests, injected media errors, command timeouts and
//! recovery, shadow doorbells, and handing the controller back to the kernel.
//!
//! Runs inside the guest (`scripts/test`); each test binds the controller it uses to
//! vfio-pci and gives it back when it ends.

mod common;

use common::{OnVfio, env, kernel_ctrl, monitor, number, nvme_cli_field, pattern, run};
use ironvme::nvme::cmd::Command;
use ironvme::nvme::ctrl::{
    Controller, ControllerConfig, DataPointerMode, Error, IoQueuePair, Namespace, RecoveryEvent, RecoveryObserver,
    ResetReason,
};
use ironvme::nvme::hw::DmaBuf;
use ironvme::nvme::status::Status;
use ironvme::vfio::MmioBar;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Ctrl = Controller<MmioBar>;

fn open(bdf: &str, config: ControllerConfig) -> Ctrl {
    ironvme::open_vfio(bdf, config, false)
        .unwrap_or_else(|e| panic!("open {bdf}: {e}"))
        .controller
}

fn buf(ctrl: &Ctrl, len: usize) -> DmaBuf {
    ctrl.dma().allocate(len).expect("DMA memory")
}

/// Writes a pattern through a buffer whose data starts `offset` bytes into its first page,
/// reads it back into another such buffer, and compares.
fn round_trip(ctrl: &Ctrl, q: &mut IoQueuePair<MmioBar>, ns: &Namespace, slba: u64, len: usize, offset: usize) {
    let data = pattern(slba ^ len as u64 ^ offset as u64, len);
    let mut w = buf(ctrl, offset + len);
    w.set_window(offset, len).unwrap();
    w.as_mut_slice().copy_from_slice(&data);
    q.write_at(ns, slba, w)
        .unwrap_or_else(|e| panic!("write {len} B at LBA {slba}, offset {offset}: {e}"));
    let mut r = buf(ctrl, offset + len);
    r.set_window(offset, len).unwrap();
    let r = q
        .read_at(ns, slba, r)
        .unwrap_or_else(|e| panic!("read {len} B at LBA {slba}, offset {offset}: {e}"));
    assert!(
        r.as_slice() == data.as_slice(),
        "{len} B at LBA {slba} (buffer offset {offset}) read back different"
    );
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn identify_matches_what_nvme_cli_reports_through_the_kernel() {
    for var in ["IRONVME_VFIO_4K_BDF", "IRONVME_VFIO_512_BDF"] {
        let bdf = env(var);
        // First through the kernel driver, with nvme-cli.
        let dev = kernel_ctrl(&bdf);
        let dev = dev.to_str().unwrap();
        let id_ctrl = run("nvme", &["id-ctrl", dev]);
        let id_ns = run("nvme", &["id-ns", &format!("{dev}n1")]);
        // Then through VFIO with ironvme.
        let _vfio = OnVfio::bind(var);
        let ctrl = open(&bdf, ControllerConfig::default());
        let id = ctrl.identify();
        let field = |k| nvme_cli_field(&id_ctrl, k).unwrap_or_else(|| panic!("nvme id-ctrl has no {k}"));
        assert_eq!(id.vid as u64, number(&field("vid")), "{bdf} VID");
        assert_eq!(id.sn, field("sn"), "{bdf} SN");
        assert_eq!(id.mn, field("mn"), "{bdf} MN");
        assert_eq!(id.fr, field("fr"), "{bdf} FR");
        assert_eq!(id.mdts as u64, number(&field("mdts")), "{bdf} MDTS");
        assert_eq!(id.nn as u64, number(&field("nn")), "{bdf} NN");
        let ns = ctrl.identify_namespace(1).unwrap();
        let nsf = |k| nvme_cli_field(&id_ns, k).unwrap_or_else(|| panic!("nvme id-ns has no {k}"));
        assert_eq!(ns.nsze, number(&nsf("nsze")), "{bdf} NSZE");
        assert_eq!(ns.flbas as u64, number(&nsf("flbas")), "{bdf} FLBAS");
        let in_use = id_ns
            .lines()
            .find(|l| l.contains("(in use)"))
            .expect("an LBA format in use");
        let lbads = in_use
            .split("lbads:")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        assert_eq!(
            ns.current_format().unwrap().lbads as u64,
            number(lbads),
            "{bdf} LBADS in use"
        );
        eprintln!(
            "{bdf}: SN {} MN {} FR {} MDTS {} NN {} NSZE {} LBADS {lbads}",
            id.sn, id.mn, id.fr, id.mdts, id.nn, ns.nsze
        );
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn round_trips_from_one_block_to_mdts_on_both_block_sizes() {
    for var in ["IRONVME_VFIO_4K_BDF", "IRONVME_VFIO_512_BDF"] {
        for mode in [DataPointerMode::Prp, DataPointerMode::Sgl] {
            let _vfio = OnVfio::bind(var);
            let ctrl = open(
                &env(var),
                ControllerConfig {
                    data_pointer: mode,
                    ..Default::default()
                },
            );
            assert_eq!(ctrl.max_transfer_bytes(), 512 * 1024, "QEMU: MDTS 7 with 4 KiB pages");
            let ns = ctrl.namespace(1).unwrap();
            let mut q = ctrl.create_io_queue_pair().unwrap();
            let bs = ns.block_size as usize;
            let mdts = ns.max_transfer_bytes();
            // One block; one page; two pages (PRP2 is data); three pages (PRP list); a
            // list ending exactly on a page; MDTS.
            let sizes = [bs, 4096, 8192, 12288, 64 * 1024, 256 * 1024 - bs, mdts];
            let mut slba = 0;
            for &len in &sizes {
                // Buffers that start at a page, mid-page, and 512 bytes before a page end
                // (so even small transfers cross a page boundary).
                for offset in [0, 2048, 4096 - 512] {
                    round_trip(&ctrl, &mut q, &ns, slba, len, offset);
                    slba += (len / bs) as u64;
                }
            }
            eprintln!("{var} {mode:?}: {} round trips up to {mdts} bytes", sizes.len() * 3);
        }
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn several_threads_each_with_its_own_queue_pair() {
    let _vfio = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let ctrl = open(&env("IRONVME_VFIO_4K_BDF"), ControllerConfig::default());
    let ns = ctrl.namespace(1).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (ctrl, ns) = (ctrl.clone(), ns.clone());
            s.spawn(move || {
                let mut q = ctrl.create_io_queue_pair().unwrap();
                // 32 commands in flight at once, each thread in its own LBA range.
                let base = 100_000 + t * 10_000;
                let bufs = buf(&ctrl, 32 * 8192).into_chunks(8192, 32).unwrap();
                for (i, mut b) in bufs.into_iter().enumerate() {
                    b.as_mut_slice().copy_from_slice(&pattern(base + i as u64, 8192));
                    q.write(&ns, base + 2 * i as u64, b, false, i as u64).unwrap();
                }
                let mut done = 0;
                while done < 32 {
                    done += q.poll(64, |c| {
                        assert!(c.result().is_ok(), "thread {t} write {}: {}", c.tag, c.status)
                    });
                }
                for i in 0..32u64 {
                    let r = q.read_at(&ns, base + 2 * i, buf(&ctrl, 8192)).unwrap();
                    assert!(
                        r.as_slice() == pattern(base + i, 8192).as_slice(),
                        "thread {t} block {i}"
                    );
                }
            });
        }
    });
}

/// 32 writes in flight (the doorbell rung after each), then 32 reads in flight, each
/// checked: the controller is still working when the next doorbell update comes, which is
/// where shadow doorbells and their EventIdx matter.
fn thirty_two_in_flight(ctrl: &Ctrl, q: &mut IoQueuePair<MmioBar>, ns: &Namespace, base: u64) {
    let bufs = buf(ctrl, 32 * 4096).into_chunks(4096, 32).unwrap();
    for (i, mut b) in bufs.into_iter().enumerate() {
        b.as_mut_slice().copy_from_slice(&pattern(base + i as u64, 4096));
        q.write(ns, base + i as u64 * 8, b, false, i as u64).unwrap();
        // A doorbell update per command, while the controller works through the earlier
        // ones: the updates shadow doorbells spare a register write.
        q.ring();
    }
    // `wait` sleeps on the CQ's MSI-X vector in interrupt mode, and polls without it.
    let mut done = 0;
    while done < 32 {
        done += q.wait(64, |c| assert!(c.result().is_ok(), "write {}: {}", c.tag, c.status));
    }
    let bufs = buf(ctrl, 32 * 4096).into_chunks(4096, 32).unwrap();
    for (i, b) in bufs.into_iter().enumerate() {
        q.read(ns, base + i as u64 * 8, b, i as u64).unwrap();
    }
    let mut done = 0;
    while done < 32 {
        done += q.wait(64, |c| {
            assert!(c.result().is_ok(), "read {}: {}", c.tag, c.status);
            let b = c.buf.as_ref().expect("a read gives its buffer back");
            assert!(
                b.as_slice() == pattern(base + c.tag, 4096).as_slice(),
                "block {} read back different",
                c.tag
            );
        });
    }
}

/// One thread brings up both QEMU controllers at once (`open_vfio_all`: one failure, a
/// controller still on the kernel's nvme driver, does not stop the other), then resets
/// both at once, polling each reset in turn through the initialisation states, and again
/// with `Controller::reset_all`; each does I/O before and after.
#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn one_thread_brings_up_and_resets_two_controllers_at_once() {
    let _a = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let (a, b) = (env("IRONVME_VFIO_4K_BDF"), env("IRONVME_VFIO_512_BDF"));
    let mut one = ironvme::open_vfio_all(&[&a, &b], ControllerConfig::default(), false);
    let e = one.pop().unwrap().err().expect("the second controller is on nvme");
    eprintln!("open_vfio_all, second controller: {e}");
    assert!(e.to_string().contains(&b), "{e}");
    one.pop()
        .unwrap()
        .unwrap_or_else(|e| panic!("the first controller opens anyway: {e}"));
    drop(one);
    let _b = OnVfio::bind("IRONVME_VFIO_512_BDF");
    let opened: Vec<_> = ironvme::open_vfio_all(&[&a, &b], ControllerConfig::default(), false)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("open_vfio_all: {e}")))
        .collect();
    let ctrls: Vec<Ctrl> = opened.iter().map(|v| v.controller.clone()).collect();
    let mut io: Vec<_> = ctrls
        .iter()
        .map(|c| (c.namespace(1).unwrap(), c.create_io_queue_pair().unwrap()))
        .collect();
    for (i, (c, (ns, q))) in ctrls.iter().zip(&mut io).enumerate() {
        assert_eq!(c.init_trace().last(), Some(&ironvme::nvme::ctrl::InitState::Ready));
        thirty_two_in_flight(c, q, ns, 60_000 + i as u64 * 1000);
    }
    {
        let mut resets: Vec<_> = ctrls.iter().map(|c| c.start_reset()).collect();
        let mut pending_together = 0;
        let mut results: Vec<Option<Result<(), Error>>> = vec![None, None];
        while results.iter().any(Option::is_none) {
            for (r, result) in resets.iter_mut().zip(&mut results) {
                if result.is_none()
                    && let std::task::Poll::Ready(done) = r.poll()
                {
                    *result = Some(done);
                }
            }
            pending_together += usize::from(results.iter().all(Option::is_none));
            std::thread::sleep(Duration::from_micros(50));
        }
        for (r, result) in resets.iter().zip(results) {
            result.unwrap().unwrap_or_else(|e| panic!("reset: {e}"));
            assert_eq!(r.trace().first(), Some(&ironvme::nvme::ctrl::InitState::Disable));
            assert_eq!(r.trace().last(), Some(&ironvme::nvme::ctrl::InitState::Ready));
            eprintln!("reset states: {:?}", r.trace());
        }
        eprintln!("polls with both resets under way: {pending_together}");
        // QEMU answers a command from its own thread, after the doorbell write returned.
        assert!(pending_together > 0, "the resets ran one after the other");
    }
    for result in Controller::reset_all(&ctrls) {
        result.unwrap_or_else(|e| panic!("reset_all: {e}"));
    }
    for (i, (c, (ns, q))) in ctrls.iter().zip(&mut io).enumerate() {
        assert_eq!(c.reset_count(), 2);
        thirty_two_in_flight(c, q, ns, 64_000 + i as u64 * 1000);
    }
    drop(io);
    drop(ctrls);
    drop(opened);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn shadow_doorbells_are_used_when_asked_and_survive_a_reset() {
    let _vfio = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let bdf = env("IRONVME_VFIO_4K_BDF");
    for asked in [true, false] {
        let config = ControllerConfig {
            shadow_doorbells: asked,
            ..ControllerConfig::default()
        };
        let ctrl = open(&bdf, config);
        // QEMU's controller has Doorbell Buffer Config (OACS bit 8).
        assert_eq!(ctrl.shadow_doorbells(), asked);
        let ns = ctrl.namespace(1).unwrap();
        let mut q = ctrl.create_io_queue_pair().unwrap();
        thirty_two_in_flight(&ctrl, &mut q, &ns, 200_000);
        let counts = q.doorbell_counts();
        assert!(counts.updates > 0, "{counts:?}");
        eprintln!("shadow doorbells {asked}: {counts:?}");
        // With them, how many register writes the EventIdx spares depends on how far the
        // controller got (in QEMU: 0 to a few of 35): data checked either way, and the
        // rule itself by ctrl/shadow.rs's unit tests.
        assert!(counts.mmio <= counts.updates, "{counts:?}");
        if !asked {
            assert_eq!(
                counts.mmio, counts.updates,
                "without shadow doorbells every update is a register write"
            );
        }
        // After a reset the controller has forgotten the pages: they are handed over again,
        // and the queue pair's new queues start from zeroed shadow words.
        ctrl.reset().unwrap();
        thirty_two_in_flight(&ctrl, &mut q, &ns, 210_000);
        assert_eq!(ctrl.shadow_doorbells(), asked);
        drop(q);
        // A second queue pair, on a QID whose words an earlier pair used.
        let mut q2 = ctrl.create_io_queue_pair().unwrap();
        thirty_two_in_flight(&ctrl, &mut q2, &ns, 220_000);
    }
}

/// Interrupts vfio-pci took for `bdf`'s MSI-X vector `vector` (all of them with `None`),
/// per CPU, from /proc/interrupts (lines such as
/// `45: 12 0 IR-PCI-MSIX-0000:00:05.0 1-edge vfio-msix[1](0000:00:05.0)`).
fn msix_per_cpu(bdf: &str, vector: Option<u16>) -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/interrupts").unwrap();
    let name = vector.map(|v| format!("vfio-msix[{v}]({bdf})"));
    let mut per_cpu = Vec::new();
    for l in text.lines().filter(|l| l.contains("vfio-msix") && l.contains(bdf)) {
        if name.as_ref().is_some_and(|n| !l.ends_with(n.as_str())) {
            continue;
        }
        for (cpu, n) in l
            .split_whitespace()
            .skip(1)
            .map_while(|w| w.parse::<u64>().ok())
            .enumerate()
        {
            if per_cpu.len() <= cpu {
                per_cpu.resize(cpu + 1, 0);
            }
            per_cpu[cpu] += n;
        }
    }
    per_cpu
}

fn msix_interrupts(bdf: &str) -> u64 {
    msix_per_cpu(bdf, None).iter().sum()
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn interrupt_mode_sleeps_on_msix_and_survives_a_reset() {
    let _vfio = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let bdf = env("IRONVME_VFIO_4K_BDF");
    let ctrl = ironvme::open_vfio(&bdf, ControllerConfig::default(), true)
        .unwrap_or_else(|e| panic!("open {bdf} with interrupts: {e}"))
        .controller;
    let ns = ctrl.namespace(1).unwrap();
    let mut q = ctrl.create_io_queue_pair().unwrap();
    assert_eq!(q.interrupt_vector(), Some(q.qid()), "I/O CQ n signals MSI-X vector n");
    let irqs = msix_interrupts(&bdf);
    thirty_two_in_flight(&ctrl, &mut q, &ns, 230_000);
    // One at a time: most completions come after the pair went to sleep (64 reads, so
    // that a loaded host, where QEMU's thread sometimes completes a read before the
    // pair's first poll, still gives enough sleeps to count).
    for i in 0..64 {
        q.read_at(&ns, 230_000 + i * 8, buf(&ctrl, 4096)).unwrap();
    }
    let (sleeps, taken) = (q.sleep_counts(), msix_interrupts(&bdf) - irqs);
    eprintln!("interrupt mode: {sleeps:?}, {taken} MSI-X interrupts");
    // Nearly every read is still in the controller when the pair first polls (QEMU's
    // controller completes from its own thread, tens of µs later), so it sleeps.
    assert!(sleeps.woken >= 8, "the vector ended the sleeps: {sleeps:?}");
    assert!(
        taken >= sleeps.woken,
        "vfio-pci took the interrupts: {taken}, {sleeps:?}"
    );
    // A reset creates the queues again with their vectors; MSI-X stays enabled.
    ctrl.reset().unwrap();
    thirty_two_in_flight(&ctrl, &mut q, &ns, 240_000);
    for i in 0..64 {
        q.read_at(&ns, 240_000 + i * 8, buf(&ctrl, 4096)).unwrap();
    }
    let after = q.sleep_counts();
    assert!(after.woken >= sleeps.woken + 8, "woken after the reset too: {after:?}");
    // Steered to each vCPU in turn, the vector's interrupts arrive there (Linux: its
    // smp_affinity_list; the guest has two vCPUs).
    for (cpu, base) in [(1usize, 250_000u64), (0, 260_000)] {
        assert!(q.steer_interrupt(cpu).unwrap(), "the pair has a vector");
        let before = msix_per_cpu(&bdf, Some(q.qid()));
        for i in 0..16 {
            q.read_at(&ns, base + i * 8, buf(&ctrl, 4096)).unwrap();
        }
        let now = msix_per_cpu(&bdf, Some(q.qid()));
        let delta: Vec<u64> = now.iter().zip(&before).map(|(a, b)| a - b).collect();
        eprintln!("steered to CPU {cpu}: interrupts per CPU {delta:?}");
        assert!(delta[cpu] >= 8, "CPU {cpu} took the interrupts: {delta:?}");
        assert!(delta[1 - cpu] <= 1, "CPU {} took almost none: {delta:?}", 1 - cpu);
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn write_zeroes_deallocate_and_compare() {
    let _vfio = OnVfio::bind("IRONVME_VFIO_512_BDF");
    let ctrl = open(&env("IRONVME_VFIO_512_BDF"), ControllerConfig::default());
    let ns = ctrl.namespace(1).unwrap();
    assert!(
        ns.write_zeroes && ns.deallocate && ns.compare,
        "QEMU advertises them in ONCS"
    );
    let mut q = ctrl.create_io_queue_pair().unwrap();
    let data = pattern(7, 16 * 512);
    let mut w = buf(&ctrl, data.len());
    w.as_mut_slice().copy_from_slice(&data);
    let w = q.write_at(&ns, 5000, w).unwrap();
    // Compare: equal data succeeds, one flipped bit fails with Compare Failure (0x285).
    let mut w = q.wait_for(|q| q.compare(&ns, 5000, w, 0)).unwrap().unwrap();
    w.as_mut_slice()[4000] ^= 0x10;
    let e = q.wait_for(|q| q.compare(&ns, 5000, w, 0)).unwrap_err();
    assert_eq!(e.error.status().map(|s| s.code()), Some(0x285), "{e}");
    // Write Zeroes on blocks 0..8, Deallocate on 8..16: all read back as zeros.
    q.wait_for(|q| q.write_zeroes(&ns, 5000, 8, false, 0)).unwrap();
    q.wait_for(|q| q.deallocate(&ns, &[(5008, 8)], buf(&ctrl, 4096), 0))
        .unwrap();
    let r = q.read_at(&ns, 5000, buf(&ctrl, 16 * 512)).unwrap();
    assert!(
        r.as_slice().iter().all(|&b| b == 0),
        "zeroed and deallocated blocks read back as zeros"
    );
    // Verify works too: QEMU executes it without advertising it (ONCS bit 7 clear), and
    // the quirk table, keyed by its PCI ID, offers it through the block interface.
    q.wait_for(|q| q.verify(&ns, 5000, 16, 0)).unwrap();
    q.wait_for(|q| q.flush(&ns, 0)).unwrap();
    assert!(!ctrl.identify().oncs.contains(ironvme::nvme::identify::Oncs::VERIFY));
    assert!(
        ctrl.quirks()
            .contains(ironvme::nvme::quirks::Quirks::VERIFY_UNADVERTISED),
        "1b36:0010"
    );
    assert!(ns.verify && ns.info().verify);
    let mut nq = ironvme::nvme::ctrl::NamespaceQueue::new(&ctrl, 1, 4).unwrap();
    ironvme::block::run_one(&mut nq, ironvme::block::Op::Verify { lba: 5000, blocks: 16 }, None).unwrap();
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn bad_requests_get_clear_errors_and_the_controller_keeps_working() {
    let _vfio = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let ctrl = open(&env("IRONVME_VFIO_4K_BDF"), ControllerConfig::default());
    let ns = ctrl.namespace(1).unwrap();
    let mut q = ctrl.create_io_queue_pair().unwrap();
    // Refused by the driver before the device sees them.
    let e = q.read(&ns, ns.blocks - 1, buf(&ctrl, 8192), 0).unwrap_err();
    assert!(matches!(e.error, Error::LbaOutOfRange { .. }), "{e}");
    eprintln!("out of range: {e}");
    let e = q.read(&ns, 0, buf(&ctrl, 1024 * 1024), 0).unwrap_err();
    assert!(matches!(e.error, Error::TransferTooLarge { max: 524288, .. }), "{e}");
    eprintln!("above MDTS: {e}");
    // Sent anyway as raw commands: QEMU's own checks answer.
    let raw = Command::read(ns.nsid, ns.blocks, 1);
    let e = q.wait_for(|q| q.submit(raw, Some(buf(&ctrl, 4096)), 0)).unwrap_err();
    assert_eq!(
        e.error.status().map(|s| s.code()),
        Some(Status::LBA_OUT_OF_RANGE.code()),
        "{e}"
    );
    let raw = Command::read(ns.nsid, 0, 256); // 1 MiB of 4 KiB blocks: above MDTS
    let mut big = buf(&ctrl, 1 << 20);
    big.set_window(0, 4096).unwrap(); // the data pointer covers only 4 KiB
    let e = q.wait_for(|q| q.submit(raw, Some(big), 0)).unwrap_err();
    assert_eq!(
        e.error.status().map(|s| s.code()),
        Some(Status::INVALID_FIELD.code()),
        "{e}"
    );
    // QEMU 7.2: an NSID above NN is Invalid Namespace or Format; a valid but inactive
    // one (NN is 256) is Invalid Field.
    let above_nn = ctrl.identify().nn + 1;
    let e = q
        .wait_for(|q| q.submit(Command::read(above_nn, 0, 1), Some(buf(&ctrl, 4096)), 0))
        .unwrap_err();
    assert_eq!(
        e.error.status().map(|s| s.code()),
        Some(Status::INVALID_NAMESPACE_OR_FORMAT.code()),
        "{e}"
    );
    let e = q
        .wait_for(|q| q.submit(Command::read(99, 0, 1), Some(buf(&ctrl, 4096)), 0))
        .unwrap_err();
    assert_eq!(
        e.error.status().map(|s| s.code()),
        Some(Status::INVALID_FIELD.code()),
        "{e}"
    );
    // The admin commands QEMU 7.2 rejects come back decoded.
    let e = ctrl.firmware_download(&[0u8; 4096]).unwrap_err();
    assert!(e.status().is_some_and(|s| s.same_code(Status::INVALID_OPCODE)), "{e}");
    assert!(!ctrl.abort(1, 0).unwrap(), "QEMU's Abort never aborts");
    // Still working.
    round_trip(&ctrl, &mut q, &ns, 42, 8192, 0);
    ctrl.smart_log().unwrap();
    assert_eq!(ctrl.reset_count(), 0);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn admin_logs_and_features() {
    let _vfio = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let ctrl = open(&env("IRONVME_VFIO_4K_BDF"), ControllerConfig::default());
    let smart = ctrl.smart_log().unwrap();
    assert!(smart.temperature_celsius() > -100 && smart.temperature_celsius() < 200);
    assert_eq!(ctrl.firmware_slot_log().unwrap().active_slot(), 1);
    ctrl.error_log().unwrap();
    // A 4 KiB read of a larger log at an offset (QEMU's SMART log is 512 bytes; offsets
    // past it are refused with Invalid Field).
    let tail = ctrl
        .get_log_page(ironvme::nvme::log::LogPageId::SMART_HEALTH, 0xFFFF_FFFF, 256, 256)
        .unwrap();
    assert_eq!(tail.len(), 256);
    use ironvme::nvme::features::{FeatureId, FeatureSelect, NumberOfQueues};
    let (dw0, _) = ctrl
        .get_features(FeatureId::NUMBER_OF_QUEUES, FeatureSelect::Current, 0, 0, 0)
        .unwrap();
    let q = NumberOfQueues::from_dw0(dw0);
    assert!(q.sq >= ctrl.io_queue_limit(), "granted {q:?}");
    assert_eq!(ctrl.io_queue_limit(), 16, "min(asked 16, granted {})", q.sq);
    let descriptors = ctrl.namespace_descriptors(1).unwrap();
    assert!(!descriptors.is_empty());
    assert!(ctrl.outstanding_async_event_requests() >= 1);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn an_injected_read_error_is_unrecovered_read_error_and_other_io_is_unaffected() {
    let bad = number(&env("IRONVME_FAULT_BAD_LBA"));
    let _vfio = OnVfio::bind("IRONVME_FAULT_BDF");
    let ctrl = open(&env("IRONVME_FAULT_BDF"), ControllerConfig::default());
    let ns = ctrl.namespace(1).unwrap();
    let mut q = ctrl.create_io_queue_pair().unwrap();
    // Three reads in flight together: the middle one hits the injected error.
    for (tag, lba) in [(0u64, bad - 1), (1, bad), (2, bad + 1)] {
        q.read(&ns, lba, buf(&ctrl, ns.block_size as usize), tag).unwrap();
    }
    let mut statuses = [None; 3];
    let mut done = 0;
    while done < 3 {
        done += q.poll(8, |c| statuses[c.tag as usize] = Some(c.status));
    }
    assert!(
        statuses[0].unwrap().is_success() && statuses[2].unwrap().is_success(),
        "{statuses:?}"
    );
    let s = statuses[1].unwrap();
    assert_eq!(s.code(), 0x281, "{s}");
    assert_eq!(s.name(), Some("Unrecovered Read Error"));
    // Writes to the LBA succeed; the controller keeps working.
    round_trip(&ctrl, &mut q, &ns, bad + 10, 4096, 0);
    assert_eq!(ctrl.reset_count(), 0);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn the_kernel_reads_what_ironvme_wrote_after_shutdown_and_unbind() {
    let bdf = env("IRONVME_VFIO_4K_BDF");
    let slba = 12_345u64;
    let data = pattern(99, 64 * 1024);
    {
        let _vfio = OnVfio::bind("IRONVME_VFIO_4K_BDF");
        let ctrl = open(&bdf, ControllerConfig::default());
        let ns = ctrl.namespace(1).unwrap();
        let mut q = ctrl.create_io_queue_pair().unwrap();
        let mut w = buf(&ctrl, data.len());
        w.as_mut_slice().copy_from_slice(&data);
        q.write_at(&ns, slba, w).unwrap();
        q.wait_for(|q| q.flush(&ns, 0)).unwrap();
        // Dropping the queue pair and the controller deletes the queues and shuts the
        // controller down (CC.SHN); the guard then unbinds it back to nvme.
    }
    let dev = format!("{}n1", kernel_ctrl(&bdf).display());
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(&dev).unwrap_or_else(|e| panic!("open {dev}: {e}"));
    let mut back = vec![0u8; data.len()];
    f.read_exact_at(&mut back, slba * 4096).unwrap();
    assert!(back == data, "{dev} shows different bytes than ironvme wrote");
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn format_nvm_changes_the_lba_format_and_back() {
    let _vfio = OnVfio::bind("IRONVME_VFIO_512_BDF");
    let ctrl = open(
        &env("IRONVME_VFIO_512_BDF"),
        ControllerConfig {
            admin_timeout: Duration::from_secs(30),
            ..Default::default()
        },
    );
    let id = ctrl.identify_namespace(1).unwrap();
    let four_k = id
        .lba_formats
        .iter()
        .position(|f| f.lbads == 12 && f.ms == 0)
        .expect("QEMU offers 4096 B without metadata");
    let ns = ctrl
        .format_nvm(
            1,
            ironvme::nvme::cmd::FormatSettings {
                lbaf: four_k as u8,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(ns[0].block_size, 4096);
    let ns = ctrl
        .format_nvm(1, ironvme::nvme::cmd::FormatSettings::default())
        .unwrap();
    assert_eq!(ns[0].block_size, 512);
    let mut q = ctrl.create_io_queue_pair().unwrap();
    round_trip(&ctrl, &mut q, &ns[0], 0, 4096, 0);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn a_held_command_times_out_and_recovery_completes_it_with_an_error() {
    // QEMU's quirks from its PCI ID (ABORT_NOOP: no Abort), then none (Abort, which QEMU
    // answers "not aborted", then abort_timeout).
    held_command_recovery(None);
    held_command_recovery(Some(ironvme::nvme::quirks::Quirks::empty()));
}

fn held_command_recovery(quirks: Option<ironvme::nvme::quirks::Quirks>) {
    let qdev = env("IRONVME_FAULT_QDEV");
    let _vfio = OnVfio::bind("IRONVME_FAULT_BDF");
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let resume_qdev = qdev.clone();
    let observer = RecoveryObserver(Arc::new(move |e: &RecoveryEvent| {
        seen.lock().unwrap().push(e.clone());
        if matches!(e, RecoveryEvent::ResetStarting(_)) {
            // QEMU 7.2 deadlocks if the controller is disabled while blkdebug holds a
            // request: release it first. The driver has already given up on the command,
            // so its late completion must not count.
            monitor(&format!("qemu-io -d {resume_qdev} \"resume hold\""));
        }
    }));
    let config = ControllerConfig {
        io_timeout: Duration::from_secs(2),
        abort_timeout: Duration::from_secs(2),
        recovery_observer: Some(observer),
        quirks,
        ..Default::default()
    };
    let ctrl = open(&env("IRONVME_FAULT_BDF"), config);
    let ns = ctrl.namespace(1).unwrap();
    let mut q = ctrl.create_io_queue_pair().unwrap();
    round_trip(&ctrl, &mut q, &ns, 64, 4096, 0);
    monitor(&format!("qemu-io -d {qdev} \"break read_aio hold\""));
    q.read(&ns, 50, buf(&ctrl, 4096), 1).unwrap();
    q.ring();
    monitor(&format!("qemu-io -d {qdev} \"wait_break hold\""));
    let started = std::time::Instant::now();
    let mut done = None;
    while done.is_none() {
        q.poll(8, |c| done = Some((c.tag, c.status, c.buf.is_some())));
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "recovery did not complete the held read"
        );
    }
    let (tag, status, buf_back) = done.unwrap();
    eprintln!("held read completed after {:?}: {status}", started.elapsed());
    assert_eq!((tag, status), (1, Status::ABORTED_BY_HOST));
    assert!(
        buf_back,
        "the controller was disabled, so the buffer is safe to hand back"
    );
    assert!(started.elapsed() >= Duration::from_secs(2), "not before the deadline");
    let events = events.lock().unwrap().clone();
    eprintln!("recovery: {events:?}");
    assert!(
        matches!(events[0], RecoveryEvent::CommandTimedOut { qid: 1, .. }),
        "{events:?}"
    );
    // QEMU's Abort is a no-op: with its quirks (ABORT_NOOP, from its PCI ID) no Abort is
    // sent and the reset follows the deadline at once; without, the Abort says "not
    // aborted" and the reset follows abort_timeout later.
    let events = match quirks {
        None => &events[1..],
        Some(_) => {
            assert!(
                matches!(events[1], RecoveryEvent::AbortSent { aborted: false, .. }),
                "{events:?}"
            );
            &events[2..]
        }
    };
    assert!(
        matches!(
            events[0],
            RecoveryEvent::ResetStarting(ResetReason::IoTimeout { qid: 1, .. })
        ),
        "{events:?}"
    );
    assert!(
        matches!(events[1], RecoveryEvent::ResetDone { generation: 1 }),
        "{events:?}"
    );
    // After the reset the same queue pair works again.
    round_trip(&ctrl, &mut q, &ns, 64, 8192, 512);
    assert_eq!(ctrl.reset_count(), 1);
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn a_smart_critical_warning_reaches_the_caller_as_an_asynchronous_event() {
    let _vfio = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let ctrl = open(&env("IRONVME_VFIO_4K_BDF"), ControllerConfig::default());
    assert!(ctrl.take_async_events().is_empty());
    // QEMU raises a SMART / Health event when its critical warning changes.
    monitor("qom-set /machine/peripheral/vfio4k smart_critical_warning 2");
    let started = std::time::Instant::now();
    let events = loop {
        let events = ctrl.take_async_events();
        if !events.is_empty() || started.elapsed() > Duration::from_secs(10) {
            break events;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    eprintln!("events: {events:?}");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].event_type, events[0].log_page),
        (1, 0x02),
        "SMART / Health, read log page 02h"
    );
    assert_eq!(ctrl.smart_log().unwrap().critical_warning.bits(), 2);
    monitor("qom-set /machine/peripheral/vfio4k smart_critical_warning 0");
}
