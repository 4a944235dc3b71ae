//! Identify data from a controller (Base Specification 2.0 §5.17.2): Identify Controller
//! (CNS 01h), Identify Namespace (CNS 00h), the Active Namespace ID list (CNS 02h) and the
//! Namespace Identification Descriptor list (CNS 03h), then everything ironvme derives
//! from them or prints about them (`identify`, `identify-ns`, `format`'s description, both
//! as text and JSON). The parsers are total: any bytes give a value or a `ParseError`.
//!
//! Input: the 4096-byte Identify data buffer (shorter inputs are tried as they are, so the
//! length checks are exercised too).

#![no_main]

use ironvme::cli::{format, identify};
use ironvme_nvme::identify::{IdentifyController, IdentifyNamespace, NamespaceList, parse_namespace_descriptors};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ctrl = IdentifyController::parse(data);
    if let Ok(c) = &ctrl {
        for page in [4096u64, 1 << 16, u64::MAX] {
            let _ = c.max_transfer_bytes(page);
        }
        let _ = (c.version(), c.sgl_supported(), c.sgl_dword_aligned_required());
        let _ = (
            c.vwc_present(),
            c.flush_broadcast_supported(),
            c.sqe_sizes(),
            c.cqe_sizes(),
        );
        for ps in &c.psd {
            let _ = (ps.max_power_microwatts(), ps.non_operational());
        }
        for human in [false, true] {
            let _ = identify::render_controller_text(c, human);
        }
        let _ = identify::render_controller_json(c);
    }
    let ns = IdentifyNamespace::parse(data);
    if let Ok(n) = &ns {
        let _ = (n.is_active(), n.current_format_index(), n.current_format());
        let _ = (
            n.block_size(),
            n.metadata_size(),
            n.metadata_extended(),
            n.capacity_bytes(),
        );
        let _ = n.metadata_format().to_string();
        for f in &n.lba_formats {
            assert_eq!(ironvme_nvme::identify::LbaFormat::from_raw(f.to_raw()), *f);
            let _ = f.data_size();
        }
        for human in [false, true] {
            let _ = identify::render_namespace_text(1, n, human);
        }
        let _ = identify::render_namespace_json(n);
        let _ = identify::namespaces_json(&[(1, n.clone())]);
        if let Ok(c) = &ctrl {
            for lbaf in [0u8, 1, n.current_format_index() as u8, 63, 255] {
                for (pi, pil, mset) in [(0, false, false), (1, false, true), (2, true, false), (3, true, true)] {
                    let req = ironvme::admin::FormatSettings {
                        lbaf,
                        ses: 1,
                        pi,
                        pil,
                        mset,
                    };
                    let _ = format::check_request("fuzz", c, n, req);
                    let _ = format::describe("fuzz", c, 1, n, req);
                }
            }
        }
    }
    if let Ok(list) = NamespaceList::parse(data) {
        assert!(list.len() <= NamespaceList::MAX_ENTRIES);
        assert!(list.windows(2).all(|w| w[0] < w[1]), "the list is strictly increasing");
        assert!(!list.contains(&0));
    }
    if let Ok(descs) = parse_namespace_descriptors(data) {
        for d in &descs {
            let _ = d.nidt();
        }
    }
});
