//! `ironvme serve --nbd` in the guest, exporting the kernel controller's 4 KiB namespace
//! (`/dev/nvmeXn2`, io_uring backend) to the kernel's NBD client: `nbd-client` attaches
//! `/dev/nbd0`, ext4 is made, mounted, filled, remounted and checked (`fsck.ext4 -f -n`);
//! then QEMU's client copies an image in and out (`qemu-img convert`, `qemu-img dd`) and
//! checks patterns (`qemu-io`); two more exports, QEMU's two other controllers through
//! ironvme's driver (brought up together), take patterns; SIGTERM stops the server with
//! exit status 0. Runs inside the guest (`scripts/test`).

mod common;

use common::{OnVfio, ServerProcess, env, kernel_ctrl, pattern, run, sysfs};
use std::process::Command;

const ADDR: &str = "127.0.0.1:10809";
const URL: &str = "nbd://127.0.0.1:10809/disk";

/// `/dev/nbd0` attached through `nbd-client`; detached when dropped.
struct Attached;

impl Attached {
    fn attach() -> Attached {
        run(
            "nbd-client",
            &["127.0.0.1", "10809", "/dev/nbd0", "-N", "disk", "-b", "4096"],
        );
        Attached
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("/tmp/nbd-mnt").output();
        let _ = Command::new("nbd-client").args(["-d", "/dev/nbd0"]).output();
    }
}

#[test]
#[ignore = "guest: runs inside QEMU via scripts/test"]
fn kernel_and_qemu_clients_over_nbd() {
    run("ip", &["link", "set", "lo", "up"]);
    run("modprobe", &["nbd"]);
    let spec = format!("{}n2", kernel_ctrl(&env("IRONVME_KERNEL_BDF")).display());
    let size: u64 = sysfs(&format!("/sys/block/{}/size", &spec[5..]))
        .parse::<u64>()
        .unwrap()
        * 512;
    let dir = tempfile::tempdir().unwrap();
    let export = format!("disk={spec}");
    // Two controllers through ironvme's driver, which serve brings up together.
    let (a, b) = (
        OnVfio::bind("IRONVME_VFIO_4K_BDF"),
        OnVfio::bind("IRONVME_VFIO_512_BDF"),
    );
    let (export_a, export_b) = (format!("a={}", a.bdf), format!("b=pci:{}", b.bdf));
    // Controller a again, in its short spelling: the same device, not a second opener.
    let export_a2 = format!("a2={},nsid=1", a.bdf.strip_prefix("0000:").unwrap());
    let mut server = ServerProcess::start(
        &[
            "serve", "--nbd", ADDR, "--export", &export, "--export", &export_a, "--export", &export_b, "--export",
            &export_a2,
        ],
        ADDR,
        &dir.path().join("serve.log"),
    );

    // The kernel client: a file system on /dev/nbd0.
    {
        let _nbd = Attached::attach();
        assert_eq!(sysfs("/sys/block/nbd0/size").parse::<u64>().unwrap() * 512, size);
        assert_eq!(sysfs("/sys/block/nbd0/queue/logical_block_size"), "4096");
        run("mkfs.ext4", &["-F", "-q", "/dev/nbd0"]);
        std::fs::create_dir_all("/tmp/nbd-mnt").unwrap();
        run("mount", &["/dev/nbd0", "/tmp/nbd-mnt"]);
        let files: Vec<(String, Vec<u8>)> = (0..6)
            .map(|i| (format!("/tmp/nbd-mnt/f{i}"), pattern(i, 300_000 * (i as usize + 1))))
            .collect();
        for (path, data) in &files {
            std::fs::write(path, data).unwrap();
        }
        run("sync", &[]);
        run("umount", &["/tmp/nbd-mnt"]);
        run("mount", &["/dev/nbd0", "/tmp/nbd-mnt"]);
        for (path, data) in &files {
            assert!(std::fs::read(path).unwrap() == *data, "{path} read back differs");
        }
        run("umount", &["/tmp/nbd-mnt"]);
        run("fsck.ext4", &["-f", "-n", "/dev/nbd0"]);
    }

    // QEMU's client: an image in, the same bytes out, patterns.
    let src = dir.path().join("src.img");
    let data = pattern(77, 8 << 20);
    std::fs::write(&src, &data).unwrap();
    run(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", src.to_str().unwrap(), URL],
    );
    let back = dir.path().join("back.img");
    run(
        "qemu-img",
        &[
            "dd",
            "-f",
            "raw",
            "-O",
            "raw",
            &format!("if={URL}"),
            &format!("of={}", back.display()),
            "bs=1M",
            "count=8",
        ],
    );
    assert!(std::fs::read(&back).unwrap() == data, "the image read back differs");
    let out = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5c 16M 1M",
            "-c",
            "aio_write -P 0x6d 20M 256k",
            "-c",
            "aio_write -P 0x7e 24M 4k",
            "-c",
            "aio_flush",
            "-c",
            "read -P 0x5c 16M 1M",
            "-c",
            "read -P 0x6d 20M 256k",
            "-c",
            "read -P 0x7e 24M 4k",
            "-c",
            "write -z 16M 64k",
            "-c",
            "read -P 0 16M 64k",
            URL,
        ],
    );
    assert!(!out.contains("failed") && !out.contains("error"), "{out}");

    for (name, byte) in [("a", 0x3a), ("b", 0x4b)] {
        let url = format!("nbd://127.0.0.1:10809/{name}");
        let out = run(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                &format!("write -P {byte} 1M 256k"),
                "-c",
                &format!("read -P {byte} 1M 256k"),
                &url,
            ],
        );
        assert!(!out.contains("failed") && !out.contains("error"), "{url}: {out}");
    }
    let out = run(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x3a 1M 256k", "nbd://127.0.0.1:10809/a2"],
    );
    assert!(
        !out.contains("failed") && !out.contains("error"),
        "a2 reads what a wrote: {out}"
    );

    let status = server.terminate();
    let log = server.log();
    assert!(status.success(), "ironvme serve exited {status}:\n{log}");
    assert!(log.contains("NBD transmission"), "{log}");
    assert!(log.contains("controllers brought up together"), "{log}");
    drop((a, b));
}
