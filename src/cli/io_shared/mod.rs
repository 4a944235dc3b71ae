//! What the I/O subcommands (`perf`, `verify`, `vde`, the raw I/O commands, `serve`)
//! share: how DEV is opened for I/O and when writing to it is allowed ([`target`]),
//! sizes, durations and fio's option values ([`units`]), the random source ([`rng`]),
//! the region of a namespace a command works on ([`region_bytes`]), and the process's
//! CPU use ([`rusage_self`]).

pub mod cpus;
pub mod rng;
pub mod target;
pub mod units;
pub mod zones;

use super::CliError;

/// The DEV help of the I/O subcommands.
pub const IO_DEV_HELP: &str = "The device: a PCI address of a controller bound to vfio-pci (0000:00:05.0; opening it \
                                resets the controller), /dev/nvmeX, /dev/nvmeXnY, /dev/ngXnY, another block device, \
                                or a regular file. The backend follows from it unless --backend says otherwise.";

/// The --backend help of the I/O subcommands.
pub const BACKEND_HELP: &str = "Backend: vfio, ioctl, uring, uring-cmd or psync. Default: vfio for a PCI address, \
                                uring-cmd for /dev/ngXnY, ioctl for /dev/nvmeX, uring for block devices and files \
                                (psync when io_uring is unavailable).";

/// Checks `--offset` and `--size` (default: to the end) against a namespace of
/// `capacity` bytes with `block`-byte blocks; returns (offset, size) in bytes.
///
/// Errors: [`CliError::Invalid`] for a misaligned offset or a region beyond the end.
pub fn region_bytes(offset: u64, size: Option<u64>, block: u64, capacity: u64) -> Result<(u64, u64), CliError> {
    if offset % block != 0 {
        return Err(CliError::Invalid(format!(
            "--offset {offset} is not a multiple of the namespace's logical block size ({block} bytes)"
        )));
    }
    if offset >= capacity {
        return Err(CliError::Invalid(format!(
            "--offset {offset} is at or beyond the end of the namespace ({capacity} bytes)"
        )));
    }
    let size = size.unwrap_or(capacity - offset);
    if offset.checked_add(size).is_none_or(|end| end > capacity) {
        return Err(CliError::Invalid(format!(
            "the region {offset}+{size} bytes goes beyond the end of the namespace ({capacity} bytes)"
        )));
    }
    Ok((offset, size))
}

/// `getrusage(who)`: `libc::RUSAGE_SELF` (the process) or `libc::RUSAGE_THREAD` (the
/// calling thread); `None` if the kernel refuses (it does not for these).
pub fn getrusage(who: libc::c_int) -> Option<libc::rusage> {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `ru` is a writable, properly aligned rusage; getrusage fills it and has no
    // other effect.
    let rc = unsafe { libc::getrusage(who, ru.as_mut_ptr()) };
    // SAFETY: zero-initialised, and filled by the call when it succeeded.
    (rc == 0).then(|| unsafe { ru.assume_init() })
}

/// A `timeval` in seconds.
pub fn seconds(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// (user, system) CPU seconds of the whole process so far, and its peak resident set in
/// KiB (`ru_maxrss`); zeros if the kernel refuses.
pub fn rusage_self() -> (f64, f64, u64) {
    getrusage(libc::RUSAGE_SELF).map_or((0.0, 0.0, 0), |ru| {
        (seconds(ru.ru_utime), seconds(ru.ru_stime), ru.ru_maxrss.max(0) as u64)
    })
}
