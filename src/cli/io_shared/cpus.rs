//! CPU affinity for the commands that pin their threads: perf's `--cpus_allowed` (fio's)
//! and serve's `--cpumask` (SPDK's `-m`). One check that the CPUs named are ones this
//! process may run on, and one way to pin the calling thread (`sched_setaffinity(2)`
//! through nix).

use super::units::CpuList;
use crate::cli::CliError;
use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// The CPUs the calling thread may run on (`sched_getaffinity`), ascending.
///
/// Errors: [`CliError::Device`] when the kernel refuses.
pub fn allowed_cpus() -> Result<Vec<usize>, CliError> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(|e| CliError::Device(format!("sched_getaffinity: {e}")))?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// Checks that every CPU of `cpus` is one this process may run on (its affinity, as
/// `taskset` or a cgroup set it); `what` names the option (`--cpumask 0x6`).
///
/// Errors: [`CliError::Invalid`] naming the first CPU that is not, and the allowed ones.
pub fn check_allowed(what: &str, cpus: &[usize]) -> Result<(), CliError> {
    let allowed = allowed_cpus()?;
    match cpus.iter().find(|c| !allowed.contains(c)) {
        Some(bad) => Err(CliError::Invalid(format!(
            "{what}: CPU {bad} is not one this process may run on (allowed: {})",
            CpuList(allowed).fio()
        ))),
        None => Ok(()),
    }
}

/// Pins the calling thread to `cpus`.
///
/// Errors: the `sched_setaffinity` error, in words naming the CPUs.
pub fn pin_current_thread(cpus: &[usize]) -> Result<(), String> {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c).map_err(|e| format!("CPU {c}: {e}"))?;
    }
    sched_setaffinity(Pid::from_raw(0), &set)
        .map_err(|e| format!("cannot pin to CPUs {}: {e}", CpuList(cpus.to_vec()).fio()))
}
