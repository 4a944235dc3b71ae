//! Host tests of the raw I/O commands (`read`, `write`, `compare`, `flush`,
//! `write-zeroes`, `dsm`) on regular files, on the io_uring and psync backends. The
//! guest test `raw_io_round_trips_with_the_kernel_on_every_backend` (`tests/guest_cli.rs`)
//! runs them on QEMU's controller.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Output;

fn ok(o: Output, what: &str) -> Output {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// A 1 MiB scratch file of 0xee bytes (4096-byte blocks for the io_uring backend's
/// O_DIRECT, 512 for psync: both see the file's own geometry).
fn scratch() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, vec![0xee; 1 << 20]).unwrap();
    let p = path.to_str().unwrap().to_string();
    (dir, p)
}

fn file_bytes(path: &str, offset: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, offset)
        .unwrap();
    b
}

/// The block size ironvme sees for `path` on `backend`.
fn block_size(path: &str, backend: &str) -> usize {
    let o = ok(
        common::ironvme(&["read", path, "--backend", backend, "-s", "0", "-c", "0"]),
        "read one block",
    );
    o.stdout.len()
}

#[test]
fn write_then_read_round_trips_through_stdin_stdout_and_files() {
    for backend in ["uring", "psync"] {
        let (dir, disk) = scratch();
        let bs = block_size(&disk, backend);
        let data = common::pattern(7, 3 * bs);
        let o = ok(
            common::ironvme_with_input(&["write", &disk, "--backend", backend, "-s", "5", "-c", "2"], &data),
            "write",
        );
        assert!(o.stdout.is_empty());
        assert_eq!(String::from_utf8_lossy(&o.stderr), "write: Success\n");
        assert_eq!(file_bytes(&disk, 5 * bs as u64, 3 * bs), data, "{backend}");
        // The blocks around are untouched.
        assert_eq!(file_bytes(&disk, 4 * bs as u64, bs), vec![0xee; bs]);
        assert_eq!(file_bytes(&disk, 8 * bs as u64, bs), vec![0xee; bs]);

        let o = ok(
            common::ironvme(&["read", &disk, "--backend", backend, "-s", "5", "-c", "2", "-z", "8"]),
            "read",
        );
        assert_eq!(o.stdout, data, "{backend}: read to stdout");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("Rounding data size to fit block count") && err.ends_with("read: Success\n"),
            "{err}"
        );

        let out = dir.path().join("out.bin");
        ok(
            common::ironvme(&[
                "read",
                &disk,
                "--backend",
                backend,
                "--start-block=6",
                "--block-count=0",
                "--data",
                out.to_str().unwrap(),
            ]),
            "read to a file",
        );
        assert_eq!(std::fs::read(&out).unwrap(), data[bs..2 * bs]);

        let input = dir.path().join("in.bin");
        std::fs::write(&input, &data[..bs]).unwrap();
        ok(
            common::ironvme(&[
                "write",
                &disk,
                "--backend",
                backend,
                "-s",
                "0",
                "-d",
                input.to_str().unwrap(),
            ]),
            "write from a file",
        );
        assert_eq!(file_bytes(&disk, 0, bs), data[..bs]);
    }
}

#[test]
fn compare_tells_equal_from_different_with_its_own_exit_status() {
    let (_dir, disk) = scratch();
    let bs = block_size(&disk, "uring");
    let same = vec![0xee; 2 * bs];
    let o = ok(
        common::ironvme_with_input(&["compare", &disk, "-s", "3", "-c", "1"], &same),
        "compare",
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr), "compare: Success\n");
    let mut differs = same.clone();
    differs[bs + 17] = 0;
    let o = common::ironvme_with_input(&["compare", &disk, "-s", "3", "-c", "1"], &differs);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(ironvme::cli::EXIT_MISMATCH), "{err}");
    assert!(err.contains(&format!("byte {} (block 4) differs", bs + 17)), "{err}");
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let (_dir, disk) = scratch();
    let bs = block_size(&disk, "uring");
    let blocks = (1 << 20) / bs;
    let before = std::fs::read(&disk).unwrap();
    let (last, past_end) = ((blocks - 1).to_string(), blocks.to_string());
    let (two_blocks, big_z) = ((2 * bs).to_string(), (2 * bs + 1).to_string());
    // (command line, standard input, exit status, what stderr says)
    for (args, input, code, wanted) in [
        (
            vec!["write", &disk, "-s", "0", "-c", "1"],
            vec![1u8; bs + 1],
            1,
            format!(
                "write needs {} bytes (the blocks -c names) and standard input gave {}",
                2 * bs,
                bs + 1
            ),
        ),
        (
            vec!["write", &disk, "-s", "0", "-c", "1"],
            vec![1u8; 2 * bs + 1],
            1,
            "and standard input gave more; nothing was sent".to_string(),
        ),
        (
            vec!["compare", &disk, "-s", "0", "-c", "0x1", "-z", &big_z],
            vec![0xee; 2 * bs],
            2,
            format!("-z {big_z} bytes is more than the 2 blocks -c names ({two_blocks} bytes"),
        ),
        (
            vec!["read", &disk, "-c", "0", "-f"],
            vec![],
            2,
            "-f/--force-unit-access is for write, not read".to_string(),
        ),
        (
            vec!["write", &disk, "-s", &past_end, "-c", "0"],
            vec![1u8; bs],
            1,
            format!("outside namespace 1 ({blocks} blocks of {bs} bytes)"),
        ),
        (
            vec!["write", &disk, "-s", &last, "-c", "1"],
            vec![1u8; 2 * bs],
            1,
            "outside namespace".to_string(),
        ),
        (
            vec!["write", &disk, "-s", "0", "-c", "0xffff"],
            vec![1u8; 16],
            1,
            "outside namespace".to_string(),
        ),
        (
            vec!["dsm", &disk, "-s", "0,8", "-b", "1", "-d"],
            vec![],
            2,
            "give one length per start block".to_string(),
        ),
        (
            vec!["dsm", &disk, "-s", "0,8", "-b", "1,0", "-d"],
            vec![],
            2,
            "range 1 (at block 8) has no blocks".to_string(),
        ),
        (
            vec!["dsm", &disk, "-s", "0", "-b", "1"],
            vec![],
            2,
            "add -d/--ad".to_string(),
        ),
        (
            vec!["write-zeroes", &disk, "-s", "0xffffffffffffffff", "-c", "1"],
            vec![],
            1,
            "outside namespace".to_string(),
        ),
    ] {
        let o = common::ironvme_with_input(&args, &input);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(&wanted), "{args:?}: {err}");
    }
    assert!(std::fs::read(&disk).unwrap() == before, "the file changed");
    for count in ["65536", "0x10000"] {
        let o = common::ironvme(&["write", &disk, "-c", count]);
        assert_eq!(o.status.code(), Some(2), "a block count above 16 bits is a usage error");
    }
}

#[test]
fn write_zeroes_dsm_and_flush_on_a_file() {
    let (_dir, disk) = scratch();
    let bs = block_size(&disk, "uring");
    let o = ok(
        common::ironvme(&["write-zeroes", &disk, "-s", "2", "-c", "3"]),
        "write-zeroes",
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr), "NVME Write Zeroes Success\n");
    assert_eq!(file_bytes(&disk, 2 * bs as u64, 4 * bs), vec![0; 4 * bs]);
    assert_eq!(file_bytes(&disk, bs as u64, bs), vec![0xee; bs]);
    assert_eq!(file_bytes(&disk, 6 * bs as u64, bs), vec![0xee; bs]);

    let o = ok(
        common::ironvme(&["dsm", &disk, "--slbs=10,20", "--blocks=2,1", "--ad"]),
        "dsm",
    );
    assert_eq!(String::from_utf8_lossy(&o.stderr), "NVMe DSM: success\n");
    assert_eq!(file_bytes(&disk, 10 * bs as u64, 2 * bs), vec![0; 2 * bs]);
    assert_eq!(file_bytes(&disk, 20 * bs as u64, bs), vec![0; bs]);
    assert_eq!(file_bytes(&disk, 12 * bs as u64, 8 * bs), vec![0xee; 8 * bs]);

    let o = ok(common::ironvme(&["flush", &disk]), "flush");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "NVMe Flush: success\n");
    assert!(Path::new(&disk).exists());
}
