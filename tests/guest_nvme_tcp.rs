//! `ironvme serve --nvme-tcp` in the guest, serving two namespaces to the Linux kernel's
//! nvme-tcp initiator through nvme-cli: NSID 1 is the kernel controller's 4 KiB namespace
//! (`/dev/nvmeXn2`, io_uring backend), NSID 2 a VDE volume on the 4 KiB controller bound
//! to vfio-pci (`vde:0000:00:05.0:vol`, ironvme's own driver).
//!
//! - `nvme discover` lists the subsystem to the allowed host NQN and hides it from others,
//!   and `nvme connect` from a host NQN not allowed fails;
//! - `nvme connect` gives both namespaces, with their sizes and block sizes;
//! - ext4 is made on NSID 1, mounted, filled, remounted and compared, and `fsck.ext4 -f
//!   -n` is clean;
//! - fio writes random 4 KiB and 64 KiB blocks to NSID 1, and 4 KiB blocks to NSID 2, and
//!   reads them back with its verify;
//! - the target is killed (SIGKILL) during a fio verify run and restarted: the kernel
//!   reconnects (`--reconnect-delay 1`), the queued I/O is retried, and fio's verify finds
//!   nothing lost;
//! - `nvme disconnect`, then SIGTERM stops the target with exit status 0.
//!
//! Runs inside the guest (`scripts/test`).

mod common;

use common::{OnVfio, ServerProcess, env, ironvme, kernel_ctrl, pattern, run, served_block_device, sysfs};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ADDR: &str = "127.0.0.1:4420";
const NQN: &str = "nqn.2026-12.io.ironvme:guest-test";
const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:6d1c5e0a-3f3b-4a53-9d9e-1b0c1f1e0a01";
const STRANGER: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-00000000beef";
const MNT: &str = "/tmp/nvme-tcp-mnt";

fn start(specs: [&str; 2], log: &Path) -> ServerProcess {
    ServerProcess::start(
        &[
            "serve",
            "--nvme-tcp",
            ADDR,
            "--nqn",
            NQN,
            "--namespace",
            specs[0],
            "--namespace",
            specs[1],
            "--allow-host",
            HOST,
            "--stats",
            "2",
        ],
        ADDR,
        log,
    )
}

/// `nvme CMD -t tcp -a 127.0.0.1 -s 4420 ARGS`, with its output and status.
fn nvme_tcp(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("nvme")
        .args([cmd, "-t", "tcp", "-a", "127.0.0.1", "-s", "4420"])
        .args(args)
        .output()
        .expect("run nvme");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The initiator's controller for [`NQN`], disconnected when dropped (also when the test
/// fails), so a failed run leaves no half-attached device behind.
struct Connected;

impl Drop for Connected {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(MNT).output();
        let _ = Command::new("nvme").args(["disconnect", "-n", NQN]).output();
    }
}

/// fio on `dev`: random writes of `bs` over `size`, read back with fio's crc32c verify.
fn fio_verify(dev: &str, bs: &str, size: &str, engine: &str) -> Command {
    let mut c = Command::new("fio");
    c.args([
        "--name=verify",
        &format!("--filename={dev}"),
        "--rw=randwrite",
        &format!("--bs={bs}"),
        &format!("--size={size}"),
        "--iodepth=16",
        &format!("--ioengine={engine}"),
        "--direct=1",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--randrepeat=0",
        "--group_reporting",
    ]);
    c
}

fn fio_ok(mut c: Command) -> String {
    let out = c.stdin(Stdio::null()).output().expect("run fio");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fio failed ({}):\n{text}", out.status);
    text
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn kernel_initiator_over_nvme_tcp() {
    run("ip", &["link", "set", "lo", "up"]);
    run("modprobe", &["nvme-tcp"]);
    let spec = format!("{}n2", kernel_ctrl(&env("IRONVME_KERNEL_BDF")).display());
    let name = &spec[5..];
    let size: u64 = sysfs(&format!("/sys/block/{name}/size")).parse::<u64>().unwrap() * 512;
    let lbs = sysfs(&format!("/sys/block/{name}/queue/logical_block_size"));
    // NSID 2: a VDE volume through ironvme's own driver.
    let vfio = OnVfio::bind("IRONVME_VFIO_4K_BDF");
    let volume = format!("vde:{}:vol", vfio.bdf);
    for args in [
        &["vde", "format", &vfio.bdf, "--force"][..],
        &["vde", "vol", "create", &vfio.bdf, "vol", "--size", "192M"],
    ] {
        let out = ironvme(args);
        assert!(
            out.status.success(),
            "ironvme {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let specs = [spec.as_str(), volume.as_str()];
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(specs, &dir.path().join("serve.log"));

    // Discovery shows the subsystem to the allowed host only; a stranger cannot connect.
    let (ok, out) = nvme_tcp("discover", &["--hostnqn", HOST]);
    assert!(ok && out.contains(NQN), "nvme discover:\n{out}");
    let (_, out) = nvme_tcp("discover", &["--hostnqn", STRANGER]);
    assert!(
        !out.contains(NQN),
        "the discovery log shows {NQN} to a host not allowed:\n{out}"
    );
    let (ok, out) = nvme_tcp("connect", &["-n", NQN, "--hostnqn", STRANGER]);
    assert!(!ok, "a host not allowed connected:\n{out}");

    let (ok, out) = nvme_tcp(
        "connect",
        &[
            "-n",
            NQN,
            "--hostnqn",
            HOST,
            "--reconnect-delay",
            "1",
            "--ctrl-loss-tmo",
            "120",
        ],
    );
    let _connected = Connected;
    assert!(ok, "nvme connect:\n{out}\n{}", server.log());
    let dev = served_block_device(NQN, 1);
    let node = &dev[5..];
    assert_eq!(
        sysfs(&format!("/sys/block/{node}/size")).parse::<u64>().unwrap() * 512,
        size
    );
    assert_eq!(sysfs(&format!("/sys/block/{node}/queue/logical_block_size")), lbs);
    let vol = served_block_device(NQN, 2);
    let vol_node = &vol[5..];
    assert_eq!(
        sysfs(&format!("/sys/block/{vol_node}/size")).parse::<u64>().unwrap() * 512,
        192 << 20
    );
    let model = sysfs(&format!("/sys/block/{node}/device/model"));
    assert!(model.starts_with("ironvme"), "model {model:?}");

    // A file system through the initiator.
    run("mkfs.ext4", &["-F", "-q", &dev]);
    std::fs::create_dir_all(MNT).unwrap();
    run("mount", &[&dev, MNT]);
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("{MNT}/f{i}"), pattern(i + 100, 300_000 * (i as usize + 1))))
        .collect();
    for (path, data) in &files {
        std::fs::write(path, data).unwrap();
    }
    run("cp", &["-r", &format!("{}/src", env!("CARGO_MANIFEST_DIR")), MNT]);
    run("sync", &[]);
    run("umount", &[MNT]);
    run("mount", &[&dev, MNT]);
    for (path, data) in &files {
        assert!(std::fs::read(path).unwrap() == *data, "{path} read back differs");
    }
    run(
        "diff",
        &[
            "-r",
            &format!("{}/src", env!("CARGO_MANIFEST_DIR")),
            &format!("{MNT}/src"),
        ],
    );
    run("umount", &[MNT]);
    run("fsck.ext4", &["-f", "-n", &dev]);

    // fio's verify: 4 KiB through libaio (R2T + H2CData per write), 64 KiB through io_uring.
    fio_ok(fio_verify(&dev, "4k", "16M", "libaio"));
    fio_ok(fio_verify(&dev, "64k", "32M", "io_uring"));
    fio_ok(fio_verify(&vol, "4k", "16M", "libaio"));

    // Kill the target during a verify run, restart it: the kernel reconnects and retries.
    let fio_log = dir.path().join("fio-kill.log");
    let mut fio = fio_verify(&dev, "4k", "48M", "libaio");
    let fio_out = std::fs::File::create(&fio_log).unwrap();
    let mut fio = fio
        .stdin(Stdio::null())
        .stdout(fio_out.try_clone().unwrap())
        .stderr(fio_out)
        .spawn()
        .expect("start fio");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        fio.try_wait().unwrap().is_none(),
        "fio finished before the target was killed: make the run longer\n{}",
        std::fs::read_to_string(&fio_log).unwrap_or_default()
    );
    server.kill();
    std::thread::sleep(Duration::from_secs(2));
    let mut server = start(specs, &dir.path().join("serve-2.log"));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = fio.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(600) {
            let _ = fio.kill();
            panic!(
                "fio did not finish after the restart:\n{}\n{}",
                std::fs::read_to_string(&fio_log).unwrap_or_default(),
                server.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&fio_log).unwrap_or_default();
    assert!(
        status.success(),
        "fio across the restart failed ({status}):\n{text}\n{}",
        server.log()
    );
    let dmesg = run("dmesg", &[]);
    assert!(
        dmesg.contains("Successfully reconnected"),
        "the kernel did not log a reconnect:\n{}",
        dmesg.lines().rev().take(30).collect::<Vec<_>>().join("\n")
    );

    let out = run("nvme", &["disconnect", "-n", NQN]);
    assert!(out.contains("disconnected 1"), "{out}");
    let status = server.terminate();
    let log = server.log();
    assert!(status.success(), "ironvme serve exited {status}:\n{log}");
    assert!(log.contains("connections"), "no stats line:\n{log}");
    drop(vfio);
}
