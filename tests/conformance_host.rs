//! The conformance suite on the host: io_uring and psync on regular files, and ironvme's
//! driver on the simulated controller.

mod common;
mod conformance;

use conformance::{REGION_BLOCKS, Subject, run};
use ironvme::{Backend, Device, OpenOptions};

fn file_subject(backend: Backend, block_size: u32) -> (tempfile::TempDir, Subject) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.img");
    let blocks = REGION_BLOCKS + 16;
    std::fs::File::create(&path)
        .unwrap()
        .set_len(blocks * block_size as u64)
        .unwrap();
    let options = OpenOptions {
        backend: Some(backend),
        file_block_size: Some(block_size),
        ..Default::default()
    };
    let device = Device::open(path.to_str().unwrap(), &options).unwrap_or_else(|e| panic!("open {backend}: {e}"));
    let name = format!("{backend} on a file ({block_size} B blocks)");
    (
        dir,
        Subject {
            name,
            device,
            nsid: None,
            base_lba: 0,
        },
    )
}

#[test]
fn io_uring_on_a_file_with_4096_byte_blocks() {
    let (_dir, s) = file_subject(Backend::Uring, 4096);
    run(&s);
}

#[test]
fn io_uring_on_a_file_with_512_byte_blocks() {
    let (_dir, s) = file_subject(Backend::Uring, 512);
    run(&s);
}

#[test]
fn psync_on_a_file_with_4096_byte_blocks() {
    let (_dir, s) = file_subject(Backend::Psync, 4096);
    run(&s);
}

#[test]
fn psync_on_a_file_with_512_byte_blocks() {
    let (_dir, s) = file_subject(Backend::Psync, 512);
    run(&s);
}

#[cfg(feature = "sim")]
#[test]
fn ironvme_driver_on_the_simulated_controller() {
    use ironvme::nvme::sim::{SimConfig, SimController, SimNamespace};
    for block_size in [512, 4096] {
        let sim = SimController::new(SimConfig {
            namespaces: vec![SimNamespace {
                block_size,
                blocks: REGION_BLOCKS + 4096,
            }],
            ..SimConfig::default()
        });
        let device = Device::simulated(sim, Default::default()).unwrap();
        run(&Subject {
            name: format!("sim ({block_size} B blocks)"),
            device,
            nsid: None,
            base_lba: 0,
        });
    }
}
