//! Active namespaces as the driver sees them.

use crate::identify::{IdentifyController, IdentifyNamespace, Oncs};

/// An active namespace: geometry and the optional commands that work on it.
///
/// Built from Identify Namespace (NVM Command Set 1.0, §4.1.5.1) and the controller's
/// ONCS/VWC fields (Base Specification 2.0, Figure 275).
#[derive(Clone, Debug)]
pub struct Namespace {
    /// Namespace ID.
    pub nsid: u32,
    /// Logical block size in bytes (from the current LBA format's LBADS).
    pub block_size: u32,
    /// Size in logical blocks (NSZE).
    pub blocks: u64,
    /// Metadata bytes per block of the current format (0 for none).
    pub metadata_size: u16,
    /// Largest transfer per command in blocks (MDTS and the driver's limit).
    pub max_transfer_blocks: u32,
    /// Write Zeroes is supported (ONCS bit 3).
    pub write_zeroes: bool,
    /// Dataset Management (deallocate) is supported (ONCS bit 2).
    pub deallocate: bool,
    /// Compare is supported (ONCS bit 0).
    pub compare: bool,
    /// Verify is supported (ONCS bit 7). QEMU 7.2 executes Verify without advertising it.
    pub verify: bool,
    /// The controller has a volatile write cache: completed writes are durable only after
    /// a Flush (VWC bit 0).
    pub volatile_write_cache: bool,
    /// The raw Identify Namespace data.
    pub identify: Box<IdentifyNamespace>,
}

impl Namespace {
    /// Builds the namespace record; `None` if the namespace is inactive or its current LBA
    /// format is unusable: missing (FLBAS past NLBAF), LBADS below 512 bytes or above
    /// 2^31, or a block larger than the largest transfer (`max_transfer` bytes: MDTS and
    /// the driver's limit), which no command could read or write.
    pub(crate) fn new(
        nsid: u32,
        id: IdentifyNamespace,
        ctrl: &IdentifyController,
        max_transfer: usize,
    ) -> Option<Namespace> {
        if !id.is_active() {
            return None;
        }
        let block_size = u32::try_from(id.block_size()?).ok()?;
        if block_size as usize > max_transfer {
            return None;
        }
        let max_transfer_blocks =
            (max_transfer / block_size as usize).min(crate::cmd::MAX_BLOCKS_PER_COMMAND as usize) as u32;
        Some(Namespace {
            nsid,
            block_size,
            blocks: id.nsze,
            metadata_size: id.metadata_size().unwrap_or(0),
            max_transfer_blocks,
            write_zeroes: ctrl.oncs.contains(Oncs::WRITE_ZEROES),
            deallocate: ctrl.oncs.contains(Oncs::DATASET_MANAGEMENT),
            compare: ctrl.oncs.contains(Oncs::COMPARE),
            verify: ctrl.oncs.contains(Oncs::VERIFY),
            volatile_write_cache: ctrl.vwc_present(),
            identify: Box::new(id),
        })
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.block_size as u64)
    }

    /// Largest transfer per command in bytes.
    pub fn max_transfer_bytes(&self) -> usize {
        self.max_transfer_blocks as usize * self.block_size as usize
    }

    /// Checks that `blocks` blocks at `slba` lie inside the namespace and fit one command.
    pub fn check_range(&self, slba: u64, blocks: u64) -> Result<(), super::Error> {
        let end = slba.checked_add(blocks);
        if blocks == 0 || end.is_none_or(|e| e > self.blocks) {
            return Err(super::Error::LbaOutOfRange {
                nsid: self.nsid,
                slba,
                blocks,
                nsze: self.blocks,
            });
        }
        if blocks > self.max_transfer_blocks as u64 {
            return Err(super::Error::TransferTooLarge {
                bytes: (blocks as usize).saturating_mul(self.block_size as usize),
                max: self.max_transfer_bytes(),
            });
        }
        Ok(())
    }
}
