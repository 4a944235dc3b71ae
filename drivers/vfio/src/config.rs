//! PCI configuration space through the VFIO config region (pread/pwrite on the device
//! fd at the region's offset).
//!
//! vfio-pci virtualises parts of config space (BARs, the INTx-disable bit, MSI/MSI-X
//! capabilities); the identity registers and the Memory Space / Bus Master bits pass
//! through. ironvme polls completions, or takes MSI-X interrupts in interrupt mode
//! ([`crate::MsixVectors`]), never INTx, so [`PciConfig::enable_for_polling`] sets Memory
//! Space Enable and Bus Master Enable and also Interrupt Disable (INTx off).

use crate::device::Device;
use crate::error::OsError;
use crate::ioctl::RegionInfo;
use std::io;
use std::sync::Arc;
use vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;

/// Offsets of the type 0 configuration header registers used here (PCI Local Bus 3.0,
/// §6.1), in bytes.
pub mod reg {
    /// Vendor ID, 16 bits.
    pub const VENDOR_ID: u64 = 0x00;
    /// Device ID, 16 bits.
    pub const DEVICE_ID: u64 = 0x02;
    /// Command, 16 bits.
    pub const COMMAND: u64 = 0x04;
    /// Status, 16 bits (bit 4: Capabilities List).
    pub const STATUS: u64 = 0x06;
    /// Revision ID (bits 7:0) and Class Code (bits 31:8), 32 bits.
    pub const CLASS_REVISION: u64 = 0x08;
    /// Capabilities Pointer, 8 bits (bits 1:0 reserved).
    pub const CAPABILITIES: u64 = 0x34;
    /// Capability ID of the PCI Express Capability (PCIe Base 4.0, §7.5.3).
    pub const CAP_ID_PCIE: u8 = 0x10;
    /// Device Status within the PCI Express Capability, 16 bits (PCIe Base 4.0, §7.5.3.5).
    pub const PCIE_DEVICE_STATUS: u64 = 0x0A;
}

/// Bits of the Command register (PCI Local Bus 3.0, §6.2.2).
pub mod command {
    /// Memory Space Enable: the device answers memory accesses to its BARs.
    pub const MEMORY_SPACE: u16 = 1 << 1;
    /// Bus Master Enable: the device may issue DMA.
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Interrupt Disable: the device does not assert INTx.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// The Command register value for a polled driver: `cmd` with Memory Space, Bus Master
/// and Interrupt Disable set, every other bit kept.
pub fn command_for_polling(cmd: u16) -> u16 {
    cmd | command::MEMORY_SPACE | command::BUS_MASTER | command::INTX_DISABLE
}

/// The Command register value that stops the function's DMA: `cmd` with Bus Master
/// Enable clear, every other bit kept (Memory Space stays on, so the registers can still
/// be read).
pub fn command_without_bus_master(cmd: u16) -> u16 {
    cmd & !command::BUS_MASTER
}

/// A device's PCI configuration space.
#[derive(Debug)]
pub struct PciConfig {
    device: Arc<Device>,
    region: RegionInfo,
}

impl PciConfig {
    /// The config region of `device`.
    ///
    /// Errors: the OS error of `VFIO_DEVICE_GET_REGION_INFO`; `InvalidData` if the
    /// region is smaller than the 64-byte header.
    pub fn new(device: Arc<Device>) -> Result<PciConfig, OsError> {
        let region = device.region_info(VFIO_PCI_CONFIG_REGION_INDEX)?;
        if region.size < 64 {
            let e = io::Error::new(
                io::ErrorKind::InvalidData,
                format!("config region is {} bytes", region.size),
            );
            return Err(OsError::new("VFIO_DEVICE_GET_REGION_INFO", device.path(), e));
        }
        Ok(PciConfig { device, region })
    }

    /// The config region's info.
    pub fn region(&self) -> &RegionInfo {
        &self.region
    }

    fn read<const N: usize>(&self, offset: u64) -> Result<[u8; N], OsError> {
        let mut b = [0u8; N];
        self.check(offset, N)?;
        self.device.read_exact_at(&mut b, self.region.offset + offset)?;
        Ok(b)
    }

    fn check(&self, offset: u64, width: usize) -> Result<(), OsError> {
        if offset % width as u64 != 0 || offset + width as u64 > self.region.size {
            let e = io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("config offset {offset:#x} width {width}"),
            );
            return Err(OsError::new("config space access", self.device.path(), e));
        }
        Ok(())
    }

    /// Reads the 16-bit register at `offset` (little-endian, as PCI is).
    pub fn read16(&self, offset: u64) -> Result<u16, OsError> {
        self.read::<2>(offset).map(u16::from_le_bytes)
    }

    /// Reads the 32-bit register at `offset`.
    pub fn read32(&self, offset: u64) -> Result<u32, OsError> {
        self.read::<4>(offset).map(u32::from_le_bytes)
    }

    /// Writes the 16-bit register at `offset`.
    pub fn write16(&self, offset: u64, value: u16) -> Result<(), OsError> {
        self.check(offset, 2)?;
        self.device
            .write_all_at(&value.to_le_bytes(), self.region.offset + offset)
    }

    /// The offset of the capability `id` in the capability list, if the device has it
    /// (PCI Local Bus 3.0, §6.7). The walk stops after 48 entries, so a looping list ends.
    pub fn capability(&self, id: u8) -> Result<Option<u64>, OsError> {
        if self.read16(reg::STATUS)? & (1 << 4) == 0 {
            return Ok(None);
        }
        let mut at = (self.read16(reg::CAPABILITIES)? & 0xFC) as u64;
        for _ in 0..48 {
            if at < 0x40 {
                return Ok(None);
            }
            let [cap, next] = self.read16(at)?.to_le_bytes();
            if cap == id {
                return Ok(Some(at));
            }
            at = (next & 0xFC) as u64;
        }
        Ok(None)
    }

    /// The PCI Express Device Status register (PCIe Base 4.0, §7.5.3.5): `None` when the
    /// device has no PCI Express Capability, or the register reads all ones (the link is
    /// down or being reset). Read only: vfio-pci lets the user write DEVCTL but not
    /// DEVSTA, whose error bits the kernel's AER driver clears itself.
    ///
    /// Errors: the OS error of a config access (after [`Device::revoke`]: end of file).
    pub fn pcie_device_status(&self) -> Result<Option<u16>, OsError> {
        let Some(cap) = self.capability(reg::CAP_ID_PCIE)? else {
            return Ok(None);
        };
        let status = self.read16(cap + reg::PCIE_DEVICE_STATUS)?;
        Ok((status != u16::MAX).then_some(status))
    }

    /// PCI vendor id.
    pub fn vendor_id(&self) -> Result<u16, OsError> {
        self.read16(reg::VENDOR_ID)
    }

    /// PCI device id.
    pub fn device_id(&self) -> Result<u16, OsError> {
        self.read16(reg::DEVICE_ID)
    }

    /// 24-bit class code (base class, subclass, programming interface).
    pub fn class_code(&self) -> Result<u32, OsError> {
        Ok(self.read32(reg::CLASS_REVISION)? >> 8)
    }

    /// The Command register.
    pub fn command(&self) -> Result<u16, OsError> {
        self.read16(reg::COMMAND)
    }

    /// Sets Memory Space Enable, Bus Master Enable and Interrupt Disable
    /// ([`command_for_polling`]); returns the Command register read back.
    pub fn enable_for_polling(&self) -> Result<u16, OsError> {
        let cmd = self.command()?;
        self.write16(reg::COMMAND, command_for_polling(cmd))?;
        let now = self.command()?;
        tracing::debug!(before = cmd, after = now, "PCI command register");
        Ok(now)
    }

    /// Clears Bus Master Enable ([`command_without_bus_master`]) so the function issues no
    /// more DMA, and reads it back; what Linux's `pci_disable_device` does to a failed
    /// NVMe controller before its memory is freed. If the Command register reads all ones
    /// (config space does not answer, e.g. after a surprise removal) the write is still
    /// attempted, with Memory Space and Interrupt Disable set and Bus Master Enable clear
    /// (what [`Self::enable_for_polling`] set, less Bus Master Enable), in case only the
    /// read failed.
    ///
    /// Errors: the OS error of the config access; `InvalidData` if the result cannot be
    /// confirmed — the Command register reads all ones after the write — or Bus Master
    /// Enable still reads set after the write.
    pub fn disable_bus_master(&self) -> Result<(), OsError> {
        let outcome = clear_bus_master(|| self.command(), |v| self.write16(reg::COMMAND, v))?;
        match outcome {
            BusMasterOff::Cleared { before, after } => {
                tracing::warn!(before, after, "Bus Master Enable cleared: the device can no longer DMA");
                Ok(())
            }
            BusMasterOff::StillSet { after } => {
                Err(self.invalid_command(format!("Bus Master Enable still set (Command register {after:#06x})")))
            }
            BusMasterOff::Unconfirmed { wrote, write_error } => Err(self.invalid_command(format!(
                "the Command register reads all ones: config space does not answer; wrote {wrote:#06x} \
                 (Bus Master Enable clear) anyway{}, but whether it took effect cannot be confirmed",
                write_error
                    .map(|e| format!(" (the write failed: {e})"))
                    .unwrap_or_default()
            ))),
        }
    }

    fn invalid_command(&self, what: String) -> OsError {
        let e = io::Error::new(io::ErrorKind::InvalidData, what);
        OsError::new("clear Bus Master Enable", self.device.path(), e)
    }
}

/// What clearing Bus Master Enable achieved ([`clear_bus_master`]).
#[derive(Debug, PartialEq, Eq)]
pub enum BusMasterOff {
    /// The Command register read back with Bus Master Enable clear.
    Cleared {
        /// The Command register before.
        before: u16,
        /// The Command register read back.
        after: u16,
    },
    /// The write happened but Bus Master Enable still reads set.
    StillSet {
        /// The Command register read back.
        after: u16,
    },
    /// Config space reads all ones: `wrote` was written (or the write failed with
    /// `write_error`), and nothing can be read back to confirm it.
    Unconfirmed {
        /// The value written to the Command register.
        wrote: u16,
        /// The write's error, if it failed.
        write_error: Option<String>,
    },
}

/// Clears Bus Master Enable through `read` / `write` of the Command register: writes the
/// value read without Bus Master Enable — or, when it reads FFFFh (no answer), Memory
/// Space and Interrupt Disable alone — then reads it back.
///
/// Errors: `read`'s error, and `write`'s when the register could be read.
pub fn clear_bus_master<E: std::fmt::Display>(
    mut read: impl FnMut() -> Result<u16, E>,
    mut write: impl FnMut(u16) -> Result<(), E>,
) -> Result<BusMasterOff, E> {
    let before = read()?;
    if before == u16::MAX {
        let wrote = command_without_bus_master(command_for_polling(0));
        let write_error = write(wrote).err().map(|e| e.to_string());
        return Ok(match read() {
            Ok(after) if write_error.is_none() && after != u16::MAX && after & command::BUS_MASTER == 0 => {
                BusMasterOff::Cleared { before, after }
            }
            _ => BusMasterOff::Unconfirmed { wrote, write_error },
        });
    }
    write(command_without_bus_master(before))?;
    let after = read()?;
    if after & command::BUS_MASTER != 0 {
        Ok(BusMasterOff::StillSet { after })
    } else {
        Ok(BusMasterOff::Cleared { before, after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopping_dma_clears_only_bus_master() {
        assert_eq!(
            command_without_bus_master(0x0406),
            0x0402,
            "memory space and INTx disable kept"
        );
        assert_eq!(command_without_bus_master(0x0102), 0x0102);
        assert_eq!(
            command_without_bus_master(command_for_polling(0)) & command::BUS_MASTER,
            0
        );
    }

    #[test]
    fn polling_sets_memory_bus_master_and_intx_disable() {
        assert_eq!(command_for_polling(0), 0x0406);
        assert_eq!(command_for_polling(0x0100), 0x0506, "SERR# enable kept");
        assert_eq!(command_for_polling(0x0406), 0x0406);
    }

    /// A config space that reads `reads` in turn and records writes.
    fn fake(reads: &[u16], write_fails: bool) -> (Result<BusMasterOff, String>, Vec<u16>) {
        let mut reads = reads.iter().copied();
        let mut writes = Vec::new();
        let r = clear_bus_master(
            || reads.next().ok_or_else(|| "no more reads".to_string()),
            |v| {
                writes.push(v);
                if write_fails { Err("EIO".to_string()) } else { Ok(()) }
            },
        );
        (r, writes)
    }

    #[test]
    fn a_command_register_reading_all_ones_still_gets_the_write() {
        let (r, writes) = fake(&[0xFFFF, 0xFFFF], false);
        assert_eq!(
            writes,
            [0x0402],
            "Memory Space and INTx Disable, Bus Master Enable clear"
        );
        assert_eq!(
            r,
            Ok(BusMasterOff::Unconfirmed {
                wrote: 0x0402,
                write_error: None
            })
        );
        let (r, writes) = fake(&[0xFFFF, 0xFFFF], true);
        assert_eq!(writes, [0x0402]);
        assert_eq!(
            r,
            Ok(BusMasterOff::Unconfirmed {
                wrote: 0x0402,
                write_error: Some("EIO".into())
            })
        );
        // Only the first read failed: the read-back confirms it.
        let (r, _) = fake(&[0xFFFF, 0x0402], false);
        assert_eq!(
            r,
            Ok(BusMasterOff::Cleared {
                before: 0xFFFF,
                after: 0x0402
            })
        );
    }

    #[test]
    fn clearing_bus_master_keeps_the_other_bits_and_checks_the_read_back() {
        let (r, writes) = fake(&[0x0506, 0x0502], false);
        assert_eq!(writes, [0x0502]);
        assert_eq!(
            r,
            Ok(BusMasterOff::Cleared {
                before: 0x0506,
                after: 0x0502
            })
        );
        let (r, _) = fake(&[0x0406, 0x0406], false);
        assert_eq!(r, Ok(BusMasterOff::StillSet { after: 0x0406 }));
        let (r, _) = fake(&[0x0406], true);
        assert_eq!(r, Err("EIO".into()));
    }
}
