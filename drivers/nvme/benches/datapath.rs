//! Per-command CPU cost of ironvme's data path, on the host.
//!
//! - `prp/*`: building PRP1/PRP2 (and the PRP list) for one transfer.
//! - `ring/*`: posting a command to the SQ and consuming a CQE, on plain memory.
//! - `queue_pair/*`: `submit` + `ring` + `poll` through an `IoQueuePair` on the simulated
//!   controller, one command at a time and in batches of 32 (one doorbell per batch).
//!   The simulated controller executes commands inline when the doorbell is written, so
//!   this includes its cost (copying 4 KiB, posting the CQE); compare batch sizes and
//!   data pointer modes with each other, not with a real device.
//!
//! Run: `cargo bench -p ironvme-nvme --features sim --bench datapath`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ironvme_nvme::ctrl::{Controller, ControllerConfig, DataPointerMode};
use ironvme_nvme::hw::{DmaAllocator, DmaBuf};
use ironvme_nvme::prp::{build_prps, list_pages_for_transfer};
use ironvme_nvme::queue::{CompletionQueue, SubmissionQueue};
use ironvme_nvme::sim::{SimConfig, SimController};
use ironvme_nvme::{Command, Completion, Status};
use std::hint::black_box;
use std::sync::Arc;

fn prp(c: &mut Criterion) {
    let sim = SimController::new(SimConfig::default());
    let dma = sim.dma();
    let mut group = c.benchmark_group("prp");
    for len in [4096usize, 8192, 128 * 1024, 512 * 1024] {
        let mut list = dma.allocate(list_pages_for_transfer(len, 4096).max(1) * 4096).unwrap();
        let iova = 0x10_0000_0200u64; // a first page with an offset
        group.bench_with_input(BenchmarkId::new("build", len), &len, |b, &len| {
            b.iter(|| build_prps(black_box(iova), black_box(len), 4096, &mut list).unwrap())
        });
    }
    group.finish();
}

fn ring(c: &mut Criterion) {
    let sim = SimController::new(SimConfig::default());
    let dma = sim.dma();
    let mut sq = SubmissionQueue::new(dma.allocate(256 * 64).unwrap(), 256).unwrap();
    let cq_mem = dma.allocate(256 * 16).unwrap();
    // The benchmark plays the controller: it writes CQEs into the ring's memory.
    let base = cq_mem.as_ptr().cast::<Completion>();
    let mut cq = CompletionQueue::new(cq_mem, 256).unwrap();
    let cmd = Command::read(1, 0, 8);
    c.bench_function("ring/sq_push_and_doorbell", |b| {
        b.iter(|| {
            sq.push(black_box(&cmd)).unwrap();
            let tail = sq.take_doorbell().unwrap();
            sq.update_head(tail as u16);
        })
    });
    let mut slot = 0u32;
    let mut phase = true;
    c.bench_function("ring/cq_pop", |b| {
        b.iter(|| {
            // Play the controller: post one entry, then consume it.
            let entry = Completion::new(7, 1, 0, Status::SUCCESS, phase, 0);
            // SAFETY: `slot` < 256 entries of the CQ's memory, which `cq` keeps alive for
            // the whole loop; no device is attached, so nothing else writes it.
            unsafe { base.add(slot as usize).write_volatile(entry) };
            slot = (slot + 1) % 256;
            if slot == 0 {
                phase = !phase;
            }
            black_box(cq.pop().unwrap());
        })
    });
}

fn queue_pair(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue_pair");
    for mode in [DataPointerMode::Prp, DataPointerMode::Sgl] {
        for batch in [1usize, 32] {
            let sim = SimController::new(SimConfig::default());
            let config = ControllerConfig {
                data_pointer: mode,
                ..Default::default()
            };
            let ctrl = Controller::init(sim.clone(), Arc::new(sim.dma()), config).unwrap();
            let ns = ctrl.namespace(1).unwrap();
            let mut q = ctrl.create_io_queue_pair().unwrap();
            let mut bufs: Vec<DmaBuf> = ctrl
                .dma()
                .allocate(batch * 4096)
                .unwrap()
                .into_chunks(4096, batch)
                .unwrap();
            group.throughput(Throughput::Elements(batch as u64));
            let name = format!("read_4k_{mode:?}_batch").to_lowercase();
            group.bench_with_input(BenchmarkId::new(name, batch), &batch, |b, &batch| {
                b.iter(|| {
                    for (i, buf) in bufs.drain(..).enumerate() {
                        q.read(&ns, (i * 8) as u64, buf, i as u64).unwrap();
                    }
                    q.ring();
                    let mut done = 0;
                    while done < batch {
                        done += q.poll(batch, |c| bufs.push(c.buf.unwrap()));
                    }
                })
            });
        }
    }
    group.finish();
}

// criterion_group! defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, prp, ring, queue_pair);
}

criterion_main!(group::benches);
