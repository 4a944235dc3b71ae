//! Feature values from a controller (Base Specification 2.0 §5.27.1): completion DW0 of
//! Get Features and the data buffers some features return (Timestamp), decoded by
//! `ironvme_nvme::features` and printed by `ironvme get-feature` (text and JSON), plus the
//! other controller-written dwords ironvme decodes: the completion status field and an
//! Asynchronous Event Request's DW0.
//!
//! Input: byte 0 the Feature Identifier, byte 1 the Select field, bytes 2..6 DW0,
//! bytes 6..10 the CDW11 that was sent, the rest the feature's data buffer.

#![no_main]

use ironvme::cli::Select;
use ironvme::cli::features::{FeatureReply, data_len, render_json, render_text};
use ironvme_nvme::Status;
use ironvme_nvme::ctrl::AsyncEvent;
use ironvme_nvme::features::{
    Arbitration, AsyncEventConfig, FeatureId, FeatureSelect, NumberOfQueues, PowerManagement, TemperatureThreshold,
    Timestamp, VolatileWriteCache,
};
use libfuzzer_sys::fuzz_target;

fn dword(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w[..b.len().min(4)].copy_from_slice(&b[..b.len().min(4)]);
    u32::from_le_bytes(w)
}

fuzz_target!(|data: &[u8]| {
    let fid = data.first().copied().unwrap_or(0);
    let sel = data.get(1).copied().unwrap_or(0);
    let dw0 = dword(data.get(2..).unwrap_or(&[]));
    let cdw11 = dword(data.get(6..).unwrap_or(&[]));
    let buf = data.get(10..).unwrap_or(&[]);

    let _ = FeatureId(fid).name();
    if let Some(s) = FeatureSelect::from_bits(sel) {
        assert_eq!(s.bits(), sel);
    }
    let q = NumberOfQueues::from_dw0(dw0);
    assert!(q.sq >= 1 && q.cq >= 1, "NCQA/NSQA are 0's based: at least one queue");
    let _ = q.to_dw11();
    let asked = NumberOfQueues::from_dw0(cdw11);
    let granted = NumberOfQueues::granted(asked, dw0);
    assert!(
        granted.sq <= asked.sq && granted.cq <= asked.cq,
        "never more queues than asked"
    );
    let _ = VolatileWriteCache::from_dw0(dw0).to_dw11();
    let _ = AsyncEventConfig::from_dw0(dw0).to_dw11();
    let arb = Arbitration::from_dw0(dw0);
    let _ = (arb.to_dw11(), arb.burst());
    let _ = PowerManagement::from_dw0(dw0).to_dw11();
    let _ = TemperatureThreshold::from_dw0(dw0).to_dw11();
    if let Ok(t) = Timestamp::parse(buf) {
        let _ = t.to_system_time();
        assert_eq!(Timestamp::parse(&t.encode()).map(|u| u.encode()), Ok(t.encode()));
    }
    let status = Status::from_raw(dw0 as u16 >> 1);
    let _ = (status.to_string(), status.is_success());
    let event = AsyncEvent::from_dw0(dw0);
    let _ = event.type_name();

    let len = data_len(fid, cdw11);
    let select = [Select::Current, Select::Default, Select::Saved, Select::Supported][sel as usize % 4];
    let reply = FeatureReply {
        fid,
        sel: select,
        nsid: cdw11,
        cdw11,
        dw0,
        data: buf[..buf.len().min(len)].to_vec(),
    };
    let _ = (render_text(&reply, false), render_text(&reply, true));
    let _ = render_json(&reply);
});
