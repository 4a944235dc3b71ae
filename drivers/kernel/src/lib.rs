//! Kernel backends for ironvme: NVMe ioctl passthrough, io_uring, io_uring NVMe passthrough, psync.
