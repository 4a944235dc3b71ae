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
    /// How blocks carry metadata and protection information (MS, FLBAS bit 4, DPS).
    pub metadata: crate::pi::MetadataFormat,
    /// Largest transfer per command in blocks (MDTS and the driver's limit).
    pub max_transfer_blocks: u32,
    /// Write Zeroes is supported (ONCS bit 3).
    pub write_zeroes: bool,
    /// Dataset Management (deallocate) is supported (ONCS bit 2).
    pub deallocate: bool,
    /// Compare is supported (ONCS bit 0).
    pub compare: bool,
    /// Verify is supported (ONCS bit 7, or the controller's
    /// [`crate::quirks::Quirks::VERIFY_UNADVERTISED`]).
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
        quirks: crate::quirks::Quirks,
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
            metadata: id.metadata_format(),
            max_transfer_blocks,
            write_zeroes: ctrl.oncs.contains(Oncs::WRITE_ZEROES),
            deallocate: ctrl.oncs.contains(Oncs::DATASET_MANAGEMENT),
            compare: ctrl.oncs.contains(Oncs::COMPARE),
            verify: ctrl.verify_supported(quirks),
            volatile_write_cache: ctrl.vwc_present(),
            identify: Box::new(id),
        })
    }

    /// The NVM command for `op`, `blocks` long, on this namespace, with the protection
    /// fields the controller needs when the host supplies no PI
    /// ([`crate::block::Op::command_for`]).
    pub fn command(&self, op: crate::block::Op, blocks: u32) -> crate::cmd::Command {
        op.command_for(self.nsid, &self.metadata, blocks, None)
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.blocks.saturating_mul(self.block_size as u64)
    }

    /// Largest transfer per command in bytes.
    pub fn max_transfer_bytes(&self) -> usize {
        self.max_transfer_blocks as usize * self.block_size as usize
    }

    /// Whether I/O without a metadata buffer works on this namespace: no metadata, or 8
    /// bytes of protection information the controller inserts and strips
    /// ([`crate::pi::MetadataFormat::plain_io`], [`IdentifyNamespace::check_plain_io`]). A plain queue
    /// ([`super::NamespaceQueue::new`]) and the pair's read, write and compare
    /// ([`Self::check_range`]) check it; a queue that carries metadata
    /// ([`super::NamespaceQueue::with_metadata`]), listing and Identify do not.
    ///
    /// Errors: [`super::Error::MetadataUnsupported`].
    pub fn check_usable(&self) -> Result<(), super::Error> {
        Ok(self.identify.check_plain_io(self.nsid)?)
    }

    /// Checks that the namespace is usable ([`Self::check_usable`]) and that `blocks`
    /// blocks at `slba` lie inside it and fit one command.
    pub fn check_range(&self, slba: u64, blocks: u64) -> Result<(), super::Error> {
        self.check_usable()?;
        self.check_bounds(slba, blocks)?;
        if blocks > self.max_transfer_blocks as u64 {
            return Err(super::Error::TransferTooLarge {
                bytes: (blocks as usize).saturating_mul(self.block_size as usize),
                max: self.max_transfer_bytes(),
            });
        }
        Ok(())
    }

    /// [`super::Error::LbaOutOfRange`] unless `blocks` (at least 1) blocks at `slba` lie
    /// inside the namespace. Zone commands, which move no data, check only this.
    pub(crate) fn check_bounds(&self, slba: u64, blocks: u64) -> Result<(), super::Error> {
        let end = slba.checked_add(blocks);
        if blocks == 0 || end.is_none_or(|e| e > self.blocks) {
            return Err(super::Error::LbaOutOfRange {
                nsid: self.nsid,
                slba,
                blocks,
                nsze: self.blocks,
            });
        }
        Ok(())
    }
}

/// For a scan of the active namespaces (at init and at a rescan): `Ok` when Identify
/// Namespace failed for `nsid` with a status, so the namespace is skipped — with
/// CC.CSS = 110b, namespaces of command sets ironvme does not know may be active, and the
/// controller may refuse to describe them — else the error, which fails the scan.
pub(crate) fn skip_refused(nsid: u32, e: super::Error) -> Result<(), super::Error> {
    match e {
        super::Error::Command { status, .. } => {
            tracing::warn!(nsid, %status, "skipping a namespace Identify Namespace refuses");
            Ok(())
        }
        e => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctrl::Error;
    use crate::identify::LbaFormat;
    use crate::quirks::Quirks;

    /// Identify Namespace of 1000 blocks with QEMU's formats 0 (512 B) and 1 (512 + 8 B).
    fn identify(flbas: u8, dps: u8) -> IdentifyNamespace {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(&1000u64.to_le_bytes());
        b[25] = 1;
        b[26] = flbas;
        b[29] = dps;
        b[128..132].copy_from_slice(&LbaFormat { ms: 0, lbads: 9, rp: 0 }.to_raw().to_le_bytes());
        b[132..136].copy_from_slice(&LbaFormat { ms: 8, lbads: 9, rp: 0 }.to_raw().to_le_bytes());
        IdentifyNamespace::parse(&b).unwrap()
    }

    #[test]
    fn verify_follows_oncs_or_the_quirk() {
        let mut id = [0u8; 4096];
        id[520] = 1; // ONCS: Compare only
        let ctrl = IdentifyController::parse(&id).unwrap();
        let plain = Namespace::new(1, identify(0, 0), &ctrl, 128 * 1024, Quirks::empty()).unwrap();
        assert!(!plain.verify);
        let quirky = Namespace::new(1, identify(0, 0), &ctrl, 128 * 1024, Quirks::VERIFY_UNADVERTISED).unwrap();
        assert!(quirky.verify);
        id[520] = 1 | 1 << 7; // Compare and Verify
        let ctrl = IdentifyController::parse(&id).unwrap();
        assert!(
            Namespace::new(1, identify(0, 0), &ctrl, 128 * 1024, Quirks::empty())
                .unwrap()
                .verify
        );
    }

    #[test]
    fn a_namespace_whose_metadata_needs_a_buffer_is_listed_but_its_plain_io_refused() {
        let mut oncs_compare = [0u8; 4096];
        oncs_compare[520] = 1;
        let ctrl = IdentifyController::parse(&oncs_compare).unwrap();
        let plain = Namespace::new(1, identify(0, 0), &ctrl, 128 * 1024, Quirks::empty()).unwrap();
        plain.check_usable().unwrap();
        plain.check_range(0, 8).unwrap();
        // 8 bytes of protection information: the controller inserts and strips it.
        let pi = Namespace::new(2, identify(1, 1), &ctrl, 128 * 1024, Quirks::empty()).unwrap();
        pi.check_usable().unwrap();
        assert_eq!((pi.metadata.bytes, pi.metadata.pi_type), (8, 1));
        // Compare would need the metadata.
        assert!(plain.info().compare);
        assert!(!pi.info().compare);
        for (flbas, dps) in [(1 | 1 << 4, 0), (1, 0), (0, 1)] {
            let ns = Namespace::new(3, identify(flbas, dps), &ctrl, 128 * 1024, Quirks::empty()).expect("still listed");
            assert_eq!(ns.block_size, 512);
            let e = ns.check_usable().unwrap_err();
            assert!(matches!(&e, Error::MetadataUnsupported(m) if m.nsid == 3), "{e}");
            assert!(e.to_string().contains("--lbaf 0"), "{e}");
            let e = ns.check_range(0, 8).unwrap_err();
            assert!(matches!(e, Error::MetadataUnsupported(_)), "{flbas} {dps}: {e}");
        }
    }
}
