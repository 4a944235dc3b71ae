//! Host tests of the `ironvme` binary: help, argument errors and refusals that need no
//! NVMe hardware. The commands that talk to a controller are tested in the guest
//! (`tests/guest_cli.rs`).

mod common;

use common::ironvme;
use std::process::Output;

/// A PCI address no machine has (PCI domain 0xdead).
const ABSENT_BDF: &str = "dead:be:1f.7";

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a failure with exit status 1 and one `ironvme: ` line on stderr; returns it.
fn one_line_failure(o: &Output) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(o.stdout.is_empty(), "stdout: {}", stdout(o));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("ironvme: "), "{err}");
    err
}

#[test]
fn help_lists_every_subcommand() {
    let o = ironvme(&["--help"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for sub in [
        "identify",
        "identify-ns",
        "smart-log",
        "error-log",
        "fw-log",
        "get-feature",
        "format",
        "list",
    ] {
        assert!(text.contains(sub), "{sub} missing from\n{text}");
    }
    assert!(text.contains("RUST_LOG"), "{text}");
    // DEV is a PCI address or a kernel device: the help must not say otherwise.
    let long = stdout(&ironvme(&["--help"]));
    assert!(long.contains("/dev/nvme0") && !long.contains("not supported"), "{long}");
    let identify = stdout(&ironvme(&["identify", "--help"]));
    assert!(
        identify.contains("/dev/nvme0") && identify.contains("ioctl passthrough"),
        "{identify}"
    );
}

#[test]
fn every_subcommand_has_help() {
    for (sub, wanted) in [
        ("identify", "vfio-pci"),
        ("identify-ns", "every active namespace"),
        ("smart-log", "DEV"),
        ("error-log", "ELPE"),
        ("fw-log", "DEV"),
        ("get-feature", "Number of Queues"),
        ("format", "seconds"),
        ("list", "NOT opened"),
    ] {
        let o = ironvme(&[sub, "--help"]);
        assert!(o.status.success(), "{sub}: {}", stderr(&o));
        let text = stdout(&o);
        assert!(text.contains(wanted), "{sub} --help lacks {wanted:?}:\n{text}");
    }
    let format = stdout(&ironvme(&["format", "--help"]));
    assert!(format.contains("\"yes\"") && format.contains("--force"), "{format}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["identify"][..],
        &["get-feature"],
        &["get-feature", "00:05.0", "--fid", "7", "--sel", "sometimes"],
        &["id-ctrl", "00:05.0", "-o", "xml"],
        &["get-log", "00:05.0", "--log-id", "2"],
        &["format", "00:05.0"],
        &["no-such-subcommand"],
    ] {
        let o = ironvme(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

/// ironvme's own checks of the command line, made before any device is opened, are usage
/// errors too: status 2 and one `ironvme: ` line naming the mistake.
#[test]
fn our_own_usage_errors_exit_2() {
    for (args, says) in [
        (&["vde", "snap", "create", "absent.img", "nosnap"][..], "write VOL@NAME"),
        (&["vde", "clone", "absent.img", "v", "c"], "write VOL@NAME"),
        (&["vde", "send", "absent.img", "-t", "garbage"], "not a resume token"),
        (&["serve", "--nvme-tcp", "127.0.0.1:0"], "needs --nqn"),
        (
            &["serve", "--nbd", "127.0.0.1:0", "--export", "no-equals-sign"],
            "expected NAME=SPEC",
        ),
    ] {
        let o = ironvme(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("ironvme: ") && err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn help_documents_the_exit_statuses() {
    let text = stdout(&ironvme(&["--help"]));
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "Exit status: 0 success; 1 a device or OS error; 2 a usage error",
        "3 a data mismatch",
        "vde fsck found violations",
        "an I/O error wins: 1",
    ] {
        assert!(flat.contains(want), "--help lacks {want:?}:\n{text}");
    }
    let flat = |t: String| t.split_whitespace().collect::<Vec<_>>().join(" ");
    let verify = flat(stdout(&ironvme(&["verify", "--help"])));
    assert!(verify.contains("Exits 3 when blocks mismatched"), "{verify}");
    let fsck = flat(stdout(&ironvme(&["vde", "fsck", "--help"])));
    assert!(fsck.contains("exits 3 on violations, 1 if a read failed"), "{fsck}");
}

/// A VDE store in a scratch file with one object; returns the directory, the file and
/// the byte offset in the file of the object's data.
fn store_with_an_object() -> (tempfile::TempDir, String, usize) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = dir.path().join("vde.img");
    std::fs::File::create(&file).unwrap().set_len(64 << 20).unwrap();
    let object = dir.path().join("object");
    let pattern: Vec<u8> = b"ironvme-exit-status-test!".repeat(20_000);
    std::fs::write(&object, &pattern).unwrap();
    let f = file.to_str().unwrap().to_string();
    for args in [
        &["vde", "format", &f, "--force"][..],
        &["vde", "put", &f, "k", object.to_str().unwrap()],
        &["vde", "vol", "create", &f, "v", "--size", "4m"],
        &["vde", "snap", "create", &f, "v@s"],
    ] {
        let o = ironvme(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
    let image = std::fs::read(&file).unwrap();
    let at = image
        .windows(pattern.len().min(4096))
        .position(|w| w == &pattern[..w.len()])
        .expect("the object's data in the image");
    (dir, f, at)
}

#[test]
fn vde_fsck_exits_3_on_violations() {
    let (_dir, f, at) = store_with_an_object();
    let o = ironvme(&["vde", "fsck", &f]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).ends_with("clean\n"), "{}", stdout(&o));
    // One byte of the object's data changes behind the store's back.
    let disk = std::fs::OpenOptions::new().read(true).write(true).open(&f).unwrap();
    let mut b = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&disk, &mut b, at as u64 + 5000).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&disk, &[b[0] ^ 0x20], at as u64 + 5000).unwrap();
    disk.sync_all().unwrap();
    let o = ironvme(&["vde", "fsck", &f]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert_eq!(err, format!("ironvme: {f}: fsck found 1 violations\n"));
    let out = stdout(&o);
    assert!(
        out.contains("VIOLATION: object \"k\": extent") && out.contains("does not match its checksum"),
        "{out}"
    );
    assert!(out.ends_with("NOT CLEAN\n"), "{out}");
    let v: serde_json::Value = serde_json::from_slice(&ironvme(&["vde", "fsck", &f, "--json"]).stdout).unwrap();
    assert_eq!(
        (v["violations"].as_array().unwrap().len(), v["io_errors"].as_u64()),
        (1, Some(0)),
        "{v}"
    );
    // A store that cannot be opened at all is a device error, not a mismatch.
    let o = ironvme(&["vde", "fsck", "/nonexistent/vde.img"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

/// `vde fsck` and `vde send` draw a bar with an ETA when stderr is a terminal, and
/// write nothing on stderr when it is a pipe.
#[test]
fn vde_progress_is_drawn_on_a_terminal_only() {
    let (dir, f, _) = store_with_an_object();
    let stream = dir.path().join("stream");
    let s = stream.to_str().unwrap();
    for args in [&["vde", "fsck", &f][..], &["vde", "send", &f, "v@s", "-o", s]] {
        let o = ironvme(args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{args:?}: progress on a pipe");
        let (code, seen) = common::under_a_terminal(args);
        assert_eq!(code, Some(0), "{args:?}: {seen}");
        assert!(
            seen.contains("ETA") && seen.contains("] "),
            "{args:?}: no bar in {seen:?}"
        );
    }
    let (_, seen) = common::under_a_terminal(&["vde", "fsck", &f]);
    assert!(seen.contains(" blocks ETA"), "{seen:?}");
    // Where the terminal shows the report, the bar has been cleared before it.
    assert!(seen.contains("\r\u{1b}[2K") && seen.contains("clean"), "{seen:?}");
}

#[test]
fn devices_that_cannot_answer_admin_commands_say_why() {
    // A path that does not exist.
    let o = ironvme(&["identify", "/dev/nvme-absent-77"]);
    let err = one_line_failure(&o);
    assert!(
        err.starts_with("ironvme: /dev/nvme-absent-77: No such file or directory"),
        "{err}"
    );
    // A regular file goes to the ioctl passthrough backend, which explains what it needs.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("disk.img");
    std::fs::write(&file, [0u8; 4096]).unwrap();
    let o = ironvme(&["identify", file.to_str().unwrap()]);
    let err = one_line_failure(&o);
    assert!(err.contains("ioctl") && err.contains("/dev/nvmeX"), "{err}");
}

#[test]
fn a_missing_bdf_gives_the_vfio_error_naming_it() {
    for sub in ["identify", "smart-log", "fw-log"] {
        let err = one_line_failure(&ironvme(&[sub, ABSENT_BDF]));
        assert!(err.contains("no PCI device dead:be:1f.7"), "{err}");
    }
    let err = one_line_failure(&ironvme(&["identify", "pci:0000:00:1f.8"]));
    assert!(err.contains("not a PCI address"), "{err}");
}

#[test]
fn format_without_force_and_without_a_terminal_refuses() {
    // A BDF that does not exist: if format tried to open it, the error would say so.
    let o = ironvme(&["format", ABSENT_BDF, "--lbaf", "0"]);
    let err = one_line_failure(&o);
    assert!(err.contains("refusing to format dead:be:1f.7"), "{err}");
    assert!(err.contains("not a terminal") && err.contains("--force"), "{err}");
    assert!(err.contains("nothing was done"), "{err}");
    // With --force it goes on, and fails only at opening the device.
    let err = one_line_failure(&ironvme(&["format", ABSENT_BDF, "--lbaf", "0", "--force"]));
    assert!(err.contains("no PCI device dead:be:1f.7"), "{err}");
}

#[test]
fn list_reads_sysfs_and_prints_json() {
    let o = ironvme(&["list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.trim_start().starts_with('{') && text.contains("\"controllers\""),
        "{text}"
    );
    assert!(ironvme(&["list"]).status.success());
}

/// Runs ironvme (without `RUST_LOG`, plus `env`) with io_uring blocked by a seccomp
/// filter: `io_uring_setup` fails with `ENOSYS`, as on a kernel without io_uring.
fn ironvme_without_io_uring(args: &[&str], env: &[(&str, &str)]) -> Output {
    use std::os::unix::process::CommandExt;
    const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const DENY: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    // Classic BPF over `struct seccomp_data` (linux/seccomp.h): `nr` is at offset 0.
    let filter = [
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: DENY,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: ALLOW,
        },
    ];
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ironvme"));
    cmd.args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only makes two prctl
    // calls (async-signal-safe) on data it captured by value; `filter` outlives the call.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const _) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output().expect("run ironvme")
}

#[test]
fn warnings_are_printed_by_default() {
    // Without io_uring, a regular file falls back to psync, with a warning.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = dir.path().join("disk.img");
    std::fs::File::create(&file).unwrap().set_len(1 << 20).unwrap();
    let args = [
        "perf",
        file.to_str().unwrap(),
        "--rw",
        "randread",
        "--time",
        "1",
        "--json",
    ];
    let o = ironvme_without_io_uring(&args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let warning = err
        .lines()
        .find(|l| l.contains("io_uring is unavailable"))
        .unwrap_or_else(|| panic!("no warning on stderr: {err:?}"));
    assert!(warning.contains("WARN") && warning.contains("using psync"), "{warning}");
    assert!(stdout(&o).contains("\"backend\": \"psync\""), "{}", stdout(&o));
    // RUST_LOG still decides when set.
    let o = ironvme_without_io_uring(&args, &[("RUST_LOG", "off")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
}

/// get-log checks the length and offset (Get Log Page counts dwords) before it opens
/// anything.
#[test]
fn get_log_refuses_lengths_that_are_not_dwords() {
    for (len, lpo) in [("6", "0"), ("0", "0"), ("512", "2")] {
        let o = ironvme(&[
            "get-log",
            "/dev/nvme-absent-77",
            "--log-id=2",
            "--log-len",
            len,
            "--lpo",
            lpo,
        ]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "a usage error: {err}");
        assert!(err.contains("must be multiples of 4 bytes"), "{len} {lpo}: {err}");
    }
}
