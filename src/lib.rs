//! ironvme: a userspace NVMe driver stack.
pub use ironvme_nvme as nvme;
