//! Controller quirks as data: what a controller does differently from what it advertises,
//! keyed by PCI vendor and device ID, as SPDK's `lib/nvme/nvme_quirks.c` keys its
//! `NVME_QUIRK_*` flags (and Linux's `nvme_id_table` its `NVME_QUIRK_*`).
//!
//! The driver takes them from [`crate::ctrl::ControllerConfig::quirks`], which
//! `ironvme::open_vfio` fills with [`lookup`] of the function's IDs (config space offsets
//! 00h and 02h). Each flag changes behaviour only where its device needs it; a device not
//! in [`TABLE`] gets none, and everything follows Identify Controller as the specification
//! says. Behaviour that is right for every device (Number of Queues taken as min(asked,
//! granted), register accesses never wider than 8 bytes, shadow doorbell pages validated
//! before Doorbell Buffer Config) is not a quirk and stays unconditional.

bitflags::bitflags! {
    /// Quirk flags.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Quirks: u32 {
        /// Verify (NVM command set opcode 0Ch) works although ONCS bit 7 is clear: the
        /// namespaces offer it ([`crate::ctrl::Namespace::verify`]). QEMU 7.2's
        /// controller executes Verify without advertising it.
        const VERIFY_UNADVERTISED = 1 << 0;
        /// Abort (§5.1) never aborts anything (completion DW0 bit 0 is always 1): a timed
        /// out I/O command goes straight to a controller reset instead of an Abort and
        /// then [`crate::ctrl::ControllerConfig::abort_timeout`] more of waiting. QEMU
        /// 7.2's Abort is a no-op.
        const ABORT_NOOP = 1 << 1;
    }
}

/// One row of the quirk table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuirkEntry {
    /// PCI vendor ID.
    pub vendor: u16,
    /// PCI device ID.
    pub device: u16,
    /// The device, in words.
    pub name: &'static str,
    /// Its quirks.
    pub quirks: Quirks,
}

/// The quirk table: the first row whose vendor and device match applies.
pub const TABLE: &[QuirkEntry] = &[
    QuirkEntry {
        vendor: 0x1b36,
        device: 0x0010,
        name: "QEMU NVM Express controller (hw/nvme)",
        quirks: Quirks::VERIFY_UNADVERTISED.union(Quirks::ABORT_NOOP),
    },
    // The same device with `use-intel-id=on` (Linux's nvme_id_table: "Qemu emulated
    // controller").
    QuirkEntry {
        vendor: 0x8086,
        device: 0x5845,
        name: "QEMU NVM Express controller (hw/nvme, use-intel-id=on)",
        quirks: Quirks::VERIFY_UNADVERTISED.union(Quirks::ABORT_NOOP),
    },
];

/// The quirks of the PCI function `vendor`:`device` (none for a device not in [`TABLE`]).
pub fn lookup(vendor: u16, device: u16) -> Quirks {
    TABLE
        .iter()
        .find(|e| e.vendor == vendor && e.device == device)
        .map_or(Quirks::empty(), |e| e.quirks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_has_its_quirks_and_other_devices_none() {
        assert_eq!(lookup(0x1b36, 0x0010), Quirks::VERIFY_UNADVERTISED | Quirks::ABORT_NOOP);
        assert_eq!(lookup(0x8086, 0x5845), lookup(0x1b36, 0x0010), "use-intel-id=on");
        assert_eq!(lookup(0x1b36, 0x0011), Quirks::empty());
        assert_eq!(lookup(0x8086, 0x0953), Quirks::empty());
        // One row per device: a second would never be reached.
        for (i, a) in TABLE.iter().enumerate() {
            assert!(
                TABLE[i + 1..]
                    .iter()
                    .all(|b| (b.vendor, b.device) != (a.vendor, a.device)),
                "{a:?}"
            );
        }
    }
}
