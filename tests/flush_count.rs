//! The count of Flush commands a process submits ([`ironvme::device::flushes_submitted`])
//! and the Flushes-per-operation figure of `ironvme vde bench`, which
//! `scripts/bench-vde` reports.
//!
//! The counter is process-wide: this file's tests are its own process, and only
//! `flushes_are_counted_once_each_and_nothing_else_is` submits I/O in it (the other test
//! runs the CLI as a child process).

use ironvme::block::{BlockQueue, Op, run_one};
use ironvme::device::flushes_submitted;
use ironvme::{Backend, Device, OpenOptions};

fn psync() -> OpenOptions {
    OpenOptions {
        backend: Some(Backend::Psync),
        ..Default::default()
    }
}

#[test]
fn flushes_are_counted_once_each_and_nothing_else_is() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path).unwrap().set_len(1 << 20).unwrap();
    let dev = Device::open(path.to_str().unwrap(), &psync()).unwrap();
    let mut q = dev.create_queue(None, 4).unwrap();
    let bs = q.namespace().block_size as usize;
    let before = flushes_submitted();
    let buf = dev.dma().allocate(bs).unwrap();
    let buf = run_one(&mut q, Op::Write { lba: 0, fua: false }, Some(buf))
        .map_err(|e| e.error)
        .unwrap();
    run_one(&mut q, Op::Read { lba: 0 }, buf).map_err(|e| e.error).unwrap();
    assert_eq!(flushes_submitted(), before, "a read or a write counted as a Flush");
    for i in 1..=3 {
        run_one(&mut q, Op::Flush, None).map_err(|e| e.error).unwrap();
        assert_eq!(flushes_submitted(), before + i);
    }
}

fn ironvme(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ironvme"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Puts must reach the device with Flushes (each is durable before it returns, and a
/// file has no FUA), gets need none; the figure is the count over the operations.
#[test]
fn vde_bench_reports_the_flushes_of_its_operations() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("store.img");
    std::fs::File::create(&path).unwrap().set_len(64 << 20).unwrap();
    let img = path.to_str().unwrap();
    ironvme(&["vde", "format", img, "--backend", "psync", "--force"]);
    for op in ["put", "get"] {
        let r: serde_json::Value = serde_json::from_str(&ironvme(&[
            "vde",
            "bench",
            img,
            "--backend",
            "psync",
            "--op",
            op,
            "--size",
            "4k",
            "--keys",
            "4",
            "--time",
            "300ms",
            "--json",
        ]))
        .unwrap();
        let ops = r["ops"].as_u64().unwrap();
        let flushes = r["flushes"].as_u64().unwrap();
        assert!(ops > 0, "{r}");
        if op == "put" {
            assert!(flushes > 0, "puts without a Flush: {r}");
        } else {
            assert_eq!(flushes, 0, "gets flushed: {r}");
        }
        let per_op = r["flushes_per_op"].as_f64().unwrap();
        assert!((per_op - flushes as f64 / ops as f64).abs() < 1e-9, "{r}");
    }
}
