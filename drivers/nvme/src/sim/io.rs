//! NVM command set I/O commands (NVM Command Set Specification 1.0, §3): Read, Write,
//! Compare, Verify, Write Zeroes, Dataset Management and Flush, on RAM-backed namespaces.
//! Write Uncorrectable and Copy are not advertised and are Invalid Command Opcode.

use super::namespace::Namespace;
use super::state::{Outcome, State};
use crate::cmd::{Command, nvm};
use crate::status::Status;

/// The broadcast NSID, accepted by Flush.
const NSID_ALL: u32 = u32::MAX;

impl State {
    /// Executes an I/O command from SQ `sqid`.
    pub(super) fn io(&mut self, sqid: u16, cmd: &Command) -> Outcome {
        if (cmd.cdw0 >> 8) & 0x3 != 0 {
            return Outcome::Done(Status::INVALID_FIELD, 0); // fused operations are unsupported
        }
        let r = match cmd.opcode() {
            nvm::FLUSH => self.flush(cmd),
            nvm::READ | nvm::WRITE | nvm::COMPARE | nvm::VERIFY | nvm::WRITE_ZEROES => self.block_io(sqid, cmd),
            nvm::DATASET_MANAGEMENT => self.dataset_management(sqid, cmd),
            _ => {
                // As QEMU: a bad NSID is reported before an unsupported opcode.
                self.active_namespace(cmd.nsid).and(Err(Status::INVALID_OPCODE))
            }
        };
        Outcome::from(r)
    }

    /// The active namespace `nsid` (index into `self.namespaces`).
    fn active_namespace(&self, nsid: u32) -> Result<usize, Status> {
        let i = (nsid as usize).wrapping_sub(1);
        match self.namespaces.get(i) {
            Some(ns) if ns.is_active() => Ok(i),
            _ => Err(Status::INVALID_NAMESPACE_OR_FORMAT),
        }
    }

    /// Flush: makes the namespace's completed writes durable (all namespaces' for the
    /// broadcast NSID), which matters only to the power-loss model.
    fn flush(&mut self, cmd: &Command) -> Result<u32, Status> {
        if cmd.nsid == NSID_ALL {
            self.flushed(None);
        } else {
            let ns = self.active_namespace(cmd.nsid)?;
            self.flushed(Some(ns));
        }
        Ok(0)
    }

    /// Read, Write, Compare, Verify and Write Zeroes: commands naming SLBA and NLB.
    fn block_io(&mut self, sqid: u16, cmd: &Command) -> Result<u32, Status> {
        let ns = self.active_namespace(cmd.nsid)?;
        let op = cmd.opcode();
        let (slba, nlb) = (cmd.slba(), cmd.nlb() as u64);
        let bs = self.namespaces[ns].block_size as u64;
        let bytes = nlb * bs;
        let moves_data = matches!(op, nvm::READ | nvm::WRITE | nvm::COMPARE);
        if moves_data && self.cfg.max_transfer_bytes().is_some_and(|max| bytes > max) {
            return Err(Status::INVALID_FIELD);
        }
        if slba.checked_add(nlb).is_none_or(|end| end > self.namespaces[ns].blocks) {
            return Err(Status::LBA_OUT_OF_RANGE);
        }
        let offset = slba * bs;
        match op {
            nvm::READ => {
                self.map(sqid, cmd, bytes)?;
                let mut data = std::mem::take(&mut self.scratch);
                data.resize(bytes as usize, 0);
                self.namespaces[ns].read(offset, &mut data);
                let r = self.copy_out(sqid, cmd, &data);
                self.scratch = data;
                r?;
                self.health.bytes_read += bytes;
                self.health.read_commands += 1;
            }
            nvm::WRITE => {
                // FUA (CDW12 bit 30) makes the write durable at completion for the
                // power-loss model; otherwise it is volatile until a Flush.
                self.map(sqid, cmd, bytes)?;
                self.copy_in(sqid, cmd, bytes as usize)?;
                let data = std::mem::take(&mut self.scratch);
                self.before_media_change(
                    ns,
                    op,
                    cmd.cdw12 & 1 << 30 != 0,
                    &[(slba, nlb)],
                    &data[..bytes as usize],
                );
                self.namespaces[ns].write(offset, &data[..bytes as usize]);
                self.scratch = data;
                self.health.bytes_written += bytes;
                self.health.write_commands += 1;
            }
            nvm::COMPARE => {
                self.map(sqid, cmd, bytes)?;
                self.copy_in(sqid, cmd, bytes as usize)?;
                self.health.read_commands += 1;
                if !self.namespaces[ns].equals(offset, &self.scratch[..bytes as usize]) {
                    return Err(Status::COMPARE_FAILURE);
                }
            }
            nvm::VERIFY => self.health.read_commands += 1,
            _ => {
                // Write Zeroes; DEAC (bit 25) may deallocate, which reads back as zeros too.
                self.before_media_change(ns, op, cmd.cdw12 & 1 << 30 != 0, &[(slba, nlb)], &[]);
                self.namespaces[ns].zero(offset, bytes);
                self.health.write_commands += 1;
            }
        }
        Ok(0)
    }

    /// Dataset Management: NR + 1 ranges of 16 bytes in the data buffer; with AD set the
    /// ranges are deallocated (read back as zeros). All ranges are checked first.
    fn dataset_management(&mut self, sqid: u16, cmd: &Command) -> Result<u32, Status> {
        let ns = self.active_namespace(cmd.nsid)?;
        let ranges = (cmd.cdw10 & 0xFF) as usize + 1;
        let len = ranges * 16;
        self.map(sqid, cmd, len as u64)?;
        self.copy_in(sqid, cmd, len)?;
        let namespace: &Namespace = &self.namespaces[ns];
        let mut parsed = Vec::with_capacity(ranges);
        for r in self.scratch[..len].chunks_exact(16) {
            let nlb = u32::from_le_bytes([r[4], r[5], r[6], r[7]]) as u64;
            let slba = u64::from_le_bytes(r[8..16].try_into().expect("16-byte range"));
            if slba.checked_add(nlb).is_none_or(|end| end > namespace.blocks) {
                return Err(Status::LBA_OUT_OF_RANGE);
            }
            parsed.push((slba, nlb));
        }
        if cmd.cdw11 & 0x4 != 0 {
            self.before_media_change(ns, cmd.opcode(), false, &parsed, &[]);
            let bs = self.namespaces[ns].block_size as u64;
            for (slba, nlb) in parsed {
                self.namespaces[ns].zero(slba * bs, nlb * bs);
            }
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Harness, IoPair};
    use super::super::{SimConfig, SimNamespace};
    use crate::cmd::{Command, DsmAttributes, DsmRange, nvm};
    use crate::hw::DmaBuf;
    use crate::prp::build_prps;
    use crate::sgl::{SglDescriptor, build_sgl};
    use crate::status::Status;

    fn pattern(buf: &mut DmaBuf, seed: u8) {
        for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
        }
    }

    /// Writes `blocks` 512-byte blocks at `slba` from `buf` with `cmd` prepared by `ptr`,
    /// reads them back into a fresh buffer the same way, and compares.
    /// `ptr` returns list memory to keep alive until the command completed.
    fn round_trip(
        h: &mut Harness,
        io: &mut IoPair,
        slba: u64,
        blocks: u32,
        ptr: impl Fn(&Harness, &mut Command, &DmaBuf) -> Option<DmaBuf>,
    ) {
        let len = blocks as usize * 512;
        let mut src = h.dma_buf(len);
        pattern(&mut src, blocks as u8);
        let mut w = Command::write(1, slba, blocks, false);
        let _list = ptr(h, &mut w, &src);
        assert_eq!(io.run(&h.sim, w).status(), Status::SUCCESS);
        let dst = h.dma_buf(len);
        let mut r = Command::read(1, slba, blocks);
        let _list = ptr(h, &mut r, &dst);
        assert_eq!(io.run(&h.sim, r).status(), Status::SUCCESS);
        assert_eq!(&dst.as_slice()[..len], &src.as_slice()[..len]);
        let off = slba as usize * 512;
        assert_eq!(&h.sim.namespace_data(1)[off..off + len], &src.as_slice()[..len]);
        assert!(h.sim.dma_violations().is_empty(), "{:?}", h.sim.dma_violations());
    }

    #[test]
    fn prp_round_trips_one_two_and_many_pages() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 64);
        let prps = |h: &Harness, c: &mut Command, b: &DmaBuf| {
            let mut list = h.dma_buf(4096);
            let (p1, p2) = build_prps(b.iova(), b.len(), 4096, &mut list).unwrap();
            c.set_prp(p1, p2);
            Some(list)
        };
        round_trip(&mut h, &mut io, 0, 8, prps); // one page
        round_trip(&mut h, &mut io, 100, 16, prps); // PRP2 is the second page
        round_trip(&mut h, &mut io, 1000, 256, prps); // 128 KiB: a PRP list
    }

    #[test]
    fn prp_first_page_offset_and_chained_lists() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 64);
        // 2 KiB starting 3 KiB into a page: PRP1 with an offset, PRP2 the next page.
        let mut src = h.dma_buf(8192);
        pattern(&mut src, 3);
        let mut w = Command::write(1, 40, 4, false);
        w.set_prp(src.iova() + 3072, src.iova() + 4096);
        assert_eq!(io.run(&h.sim, w).status(), Status::SUCCESS);
        assert_eq!(
            &h.sim.namespace_data(1)[40 * 512..44 * 512],
            &src.as_slice()[3072..4096 + 1024]
        );
        // Four data pages after PRP1 with a list that starts 16 bytes before the end of a
        // list page: one entry there, then a link to a second list page with the rest.
        let mut data = h.dma_buf(5 * 4096);
        pattern(&mut data, 9);
        let mut lists = h.dma_buf(8192);
        let l = lists.iova();
        let entries = lists.as_mut_slice();
        let put = |e: &mut [u8], at: usize, v: u64| e[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(entries, 4080, data.iova() + 4096);
        put(entries, 4088, l + 4096); // link
        for k in 0..3 {
            put(entries, 4096 + k * 8, data.iova() + (k as u64 + 2) * 4096);
        }
        let mut w = Command::write(1, 200, 40, false);
        w.set_prp(data.iova(), l + 4080);
        assert_eq!(io.run(&h.sim, w).status(), Status::SUCCESS);
        assert_eq!(&h.sim.namespace_data(1)[200 * 512..240 * 512], data.as_slice());
        // A misaligned PRP1 and a data page with an offset are PRP Offset Invalid.
        let mut bad = Command::read(1, 0, 1);
        bad.set_prp(data.iova() + 2, 0);
        assert_eq!(io.run(&h.sim, bad).status(), Status::PRP_OFFSET_INVALID);
        bad.set_prp(data.iova(), data.iova() + 4096 + 512);
        bad.cdw12 = 15; // 16 blocks: two pages
        assert_eq!(io.run(&h.sim, bad).status(), Status::PRP_OFFSET_INVALID);
        assert!(h.sim.dma_violations().is_empty());
    }

    #[test]
    fn sgl_round_trips_and_errors() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 64);
        let single = |_: &Harness, c: &mut Command, b: &DmaBuf| {
            c.set_sgl(SglDescriptor::data_block(b.iova(), b.len() as u32));
            None
        };
        round_trip(&mut h, &mut io, 0, 8, single);
        let scattered = |h: &Harness, c: &mut Command, b: &DmaBuf| {
            // Three uneven pieces, through a chain of 32-byte segments.
            let len = b.len() as u64;
            let blocks = [
                (b.iova(), 1000usize),
                (b.iova() + 1000, 3096),
                (b.iova() + 4096, (len - 4096) as usize),
            ];
            let mut seg = h.dma_buf(4096);
            c.set_sgl(build_sgl(&blocks, &mut seg, 32).unwrap());
            Some(seg)
        };
        round_trip(&mut h, &mut io, 64, 16, scattered);
        let buf = h.dma_buf(4096);
        let mut short = Command::read(1, 0, 8);
        short.set_sgl(SglDescriptor::data_block(buf.iova(), 4095));
        assert_eq!(io.run(&h.sim, short).status(), Status::DATA_SGL_LENGTH_INVALID);
        let mut bucket = Command::read(1, 0, 8);
        bucket.set_sgl(SglDescriptor::bit_bucket(4096));
        assert_eq!(io.run(&h.sim, bucket).status(), Status::SGL_DESCRIPTOR_TYPE_INVALID);
    }

    #[test]
    fn sgl_is_refused_when_not_supported() {
        let mut h = Harness::with(SimConfig {
            sgl: false,
            ..SimConfig::default()
        });
        let mut io = h.create_io(1, 8);
        let buf = h.dma_buf(4096);
        let mut r = Command::read(1, 0, 8);
        r.set_sgl(SglDescriptor::data_block(buf.iova(), 4096));
        assert_eq!(io.run(&h.sim, r).status(), Status::INVALID_FIELD);
    }

    #[test]
    fn range_size_and_namespace_checks() {
        let cfg = SimConfig {
            namespaces: vec![SimNamespace::new(512, 2048), SimNamespace::INACTIVE],
            ..SimConfig::default()
        };
        let mut h = Harness::with(cfg);
        let mut io = h.create_io(1, 16);
        let buf = h.dma_buf(1 << 20);
        assert_eq!(io.read_prp(&h.sim, 2047, &buf, 1).status(), Status::SUCCESS);
        assert_eq!(io.read_prp(&h.sim, 2047, &buf, 2).status(), Status::LBA_OUT_OF_RANGE);
        assert_eq!(
            io.read_prp(&h.sim, u64::MAX, &buf, 2).status(),
            Status::LBA_OUT_OF_RANGE,
            "SLBA + NLB overflows"
        );
        assert_eq!(
            io.read_prp(&h.sim, 0, &buf, 1024).status(),
            Status::SUCCESS,
            "512 KiB = MDTS"
        );
        assert_eq!(
            io.read_prp(&h.sim, 0, &buf, 1025).status(),
            Status::INVALID_FIELD,
            "past MDTS"
        );
        for nsid in [0, 2, 3, u32::MAX] {
            let c = io.run(&h.sim, Command::read(nsid, 0, 1));
            assert_eq!(c.status(), Status::INVALID_NAMESPACE_OR_FORMAT, "NSID {nsid:#x}");
        }
        assert_eq!(
            io.run(&h.sim, Command::new(0x7E).with_nsid(1)).status(),
            Status::INVALID_OPCODE
        );
        assert_eq!(
            io.run(&h.sim, Command::new(nvm::COPY).with_nsid(1)).status(),
            Status::INVALID_OPCODE
        );
        assert_eq!(io.run(&h.sim, Command::flush(u32::MAX)).status(), Status::SUCCESS);
        assert_eq!(
            io.run(&h.sim, Command::flush(2)).status(),
            Status::INVALID_NAMESPACE_OR_FORMAT
        );
        assert_eq!(
            io.run(&h.sim, Command::verify(1, 0, 2048)).status(),
            Status::SUCCESS,
            "no data, no MDTS"
        );
        assert_eq!(
            io.run(&h.sim, Command::write_zeroes(1, 0, 2048, false)).status(),
            Status::SUCCESS
        );
    }

    #[test]
    fn compare_matches_and_miscompares() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 16);
        let mut buf = h.dma_buf(4096);
        pattern(&mut buf, 1);
        assert!(io.write_prp(&h.sim, 8, &buf, 8).status().is_success());
        let cmp = |io: &mut IoPair, buf: &DmaBuf| {
            let mut c = Command::compare(1, 8, 8);
            c.set_prp(buf.iova(), 0);
            io.run(&h.sim, c).status()
        };
        assert_eq!(cmp(&mut io, &buf), Status::SUCCESS);
        buf.as_mut_slice()[4095] ^= 1;
        assert_eq!(cmp(&mut io, &buf), Status::COMPARE_FAILURE);
    }

    #[test]
    fn write_zeroes_and_deallocate_read_back_zeros() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 16);
        let mut buf = h.dma_buf(64 * 512);
        pattern(&mut buf, 7);
        assert!(io.write_prp(&h.sim, 0, &buf, 64).status().is_success());
        assert!(
            io.run(&h.sim, Command::write_zeroes(1, 4, 4, false))
                .status()
                .is_success()
        );
        assert!(
            io.run(&h.sim, Command::write_zeroes(1, 10, 2, true))
                .status()
                .is_success()
        );
        // Deallocate 20..24 and 30..31 with Dataset Management.
        let mut ranges = h.dma_buf(4096);
        let put = |m: &mut [u8], i: usize, r: DsmRange| {
            m[i * 16..i * 16 + 4].copy_from_slice(&r.context_attributes.to_le_bytes());
            m[i * 16 + 4..i * 16 + 8].copy_from_slice(&r.nlb.to_le_bytes());
            m[i * 16 + 8..i * 16 + 16].copy_from_slice(&r.slba.to_le_bytes());
        };
        put(
            ranges.as_mut_slice(),
            0,
            DsmRange {
                context_attributes: 0,
                nlb: 4,
                slba: 20,
            },
        );
        put(
            ranges.as_mut_slice(),
            1,
            DsmRange {
                context_attributes: 0,
                nlb: 1,
                slba: 30,
            },
        );
        let mut dsm = Command::dataset_management(
            1,
            2,
            DsmAttributes {
                deallocate: true,
                ..Default::default()
            },
        );
        dsm.set_prp(ranges.iova(), 0);
        assert!(io.run(&h.sim, dsm).status().is_success());
        let data = h.sim.namespace_data(1);
        let zero = |b: std::ops::Range<usize>| data[b.start * 512..b.end * 512].iter().all(|&x| x == 0);
        assert!(zero(4..8) && zero(10..12) && zero(20..24) && zero(30..31));
        assert!(!zero(3..4) && !zero(8..9) && !zero(12..13) && !zero(24..25) && !zero(31..32));
        // A range past the end fails the whole command and deallocates nothing.
        put(
            ranges.as_mut_slice(),
            0,
            DsmRange {
                context_attributes: 0,
                nlb: 1,
                slba: 0,
            },
        );
        put(
            ranges.as_mut_slice(),
            1,
            DsmRange {
                context_attributes: 0,
                nlb: 2,
                slba: 32767,
            },
        );
        let mut dsm = Command::dataset_management(
            1,
            2,
            DsmAttributes {
                deallocate: true,
                ..Default::default()
            },
        );
        dsm.set_prp(ranges.iova(), 0);
        assert_eq!(io.run(&h.sim, dsm).status(), Status::LBA_OUT_OF_RANGE);
        assert!(!h.sim.namespace_data(1)[..512].iter().all(|&x| x == 0));
    }

    #[test]
    fn dma_to_freed_or_unmapped_memory_is_a_violation() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 16);
        let freed = h.dma_buf(4096).iova();
        let mut r = Command::read(1, 0, 8);
        r.set_prp(freed, 0);
        assert_eq!(io.run(&h.sim, r).status(), Status::DATA_TRANSFER_ERROR);
        let mut w = Command::write(1, 0, 16, false);
        let buf = h.dma_buf(4096);
        w.set_prp(buf.iova(), buf.iova() + 4096); // the second page is the guard gap
        assert_eq!(io.run(&h.sim, w).status(), Status::DATA_TRANSFER_ERROR);
        let v = h.sim.dma_violations();
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v[0].contains("SQ 1") && v[0].contains("Read") && v[0].contains("freed"),
            "{v:?}"
        );
        assert!(v[1].contains("Write") && v[1].contains("no mapped region"), "{v:?}");
    }
}
