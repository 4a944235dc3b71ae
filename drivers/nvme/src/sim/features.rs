//! Get Features and Set Features (Base Specification 2.0, §5.15, §5.27) for the features
//! the simulator implements: Arbitration, Power Management, Temperature Threshold,
//! Volatile Write Cache, Number of Queues, Asynchronous Event Configuration and Timestamp.
//! Any other feature identifier is Invalid Field in Command. No feature is saveable.

use super::config::SimConfig;
use super::state::State;
use crate::cmd::Command;
use crate::features::FeatureId;
use crate::status::Status;
use std::time::Instant;

/// Default Arbitration value: Arbitration Burst 111b (no limit), as QEMU.
const DEFAULT_ARBITRATION: u32 = 0x7;
/// Default over-temperature threshold of the composite sensor: 343 K (WCTEMP).
pub(super) const WCTEMP_KELVIN: u16 = 343;
/// Timestamp values are 48 bits wide.
const TIMESTAMP_MASK: u64 = (1 << 48) - 1;

/// Current values of the changeable features.
#[derive(Clone, Debug)]
pub(super) struct FeatureState {
    arbitration: u32,
    power_state: u32,
    temp_over: u16,
    temp_under: u16,
    write_cache: bool,
    /// DW0 of the last Set Features Number of Queues, if any since the last reset.
    queues: Option<u32>,
    /// Asynchronous Event Configuration (bits 7:0 enable SMART critical warning events).
    async_events: u32,
}

impl FeatureState {
    pub(super) fn new(cfg: &SimConfig) -> FeatureState {
        FeatureState {
            arbitration: DEFAULT_ARBITRATION,
            power_state: 0,
            temp_over: WCTEMP_KELVIN,
            temp_under: 0,
            write_cache: cfg.vwc,
            queues: None,
            async_events: 0,
        }
    }

    /// Back to defaults, as a controller reset does.
    pub(super) fn reset(&mut self, cfg: &SimConfig) {
        *self = FeatureState::new(cfg);
    }

    /// Whether the volatile write cache is enabled (feature 06h WCE).
    pub(super) fn write_cache_enabled(&self) -> bool {
        self.write_cache
    }

    /// The I/O submission and completion queues the host may create (1-based).
    pub(super) fn allowed_queues(&self, cfg: &SimConfig) -> (u16, u16) {
        match self.queues {
            Some(dw0) => ((dw0 & 0xFFFF) as u16 + 1, (dw0 >> 16) as u16 + 1),
            None => (cfg.max_io_queues, cfg.max_io_queues),
        }
    }
}

/// Number of Queues DW0 answering a request for `asked` (CDW11, both halves 0's based).
fn queues_answer(cfg: &SimConfig, asked: u32) -> u32 {
    let max = cfg.max_io_queues as u32 - 1;
    if cfg.answer_max_queues {
        max | max << 16
    } else {
        (asked & 0xFFFF).min(max) | ((asked >> 16).min(max)) << 16
    }
}

impl State {
    /// Get Features (§5.15): `Ok(dw0)` or a failing status.
    pub(super) fn get_features(&mut self, cmd: &Command) -> Result<u32, Status> {
        let fid = FeatureId(cmd.cdw10 as u8);
        let sel = (cmd.cdw10 >> 8) & 0x7;
        if sel > 3 {
            return Err(Status::INVALID_FIELD);
        }
        if !self.feature_supported(fid) {
            return Err(Status::INVALID_FIELD);
        }
        if sel == 3 {
            return Ok(0x4); // supported capabilities: changeable, not saveable, not per namespace
        }
        // No feature is saveable, so Saved (2) reports the default, as on QEMU.
        let current = if sel == 0 {
            self.features.clone()
        } else {
            FeatureState::new(&self.cfg)
        };
        Ok(match fid {
            FeatureId::ARBITRATION => current.arbitration,
            FeatureId::POWER_MANAGEMENT => current.power_state,
            FeatureId::TEMPERATURE_THRESHOLD => {
                let (tmpsel, thsel) = ((cmd.cdw11 >> 16) & 0xF, (cmd.cdw11 >> 20) & 0x3);
                match (tmpsel, thsel) {
                    (0, 0) => current.temp_over as u32,
                    (0, 1) => current.temp_under as u32,
                    _ => return Err(Status::INVALID_FIELD),
                }
            }
            FeatureId::VOLATILE_WRITE_CACHE => current.write_cache as u32,
            FeatureId::NUMBER_OF_QUEUES => {
                let max = self.cfg.max_io_queues as u32 - 1;
                match current.queues {
                    Some(allowed) if !self.cfg.answer_max_queues => allowed,
                    _ => max | max << 16,
                }
            }
            FeatureId::ASYNC_EVENT_CONFIG => current.async_events,
            FeatureId::TIMESTAMP => {
                self.send_timestamp(cmd)?;
                0
            }
            _ => return Err(Status::INVALID_FIELD),
        })
    }

    /// Set Features (§5.27): `Ok(dw0)` or a failing status.
    pub(super) fn set_features(&mut self, cmd: &Command) -> Result<u32, Status> {
        let fid = FeatureId(cmd.cdw10 as u8);
        if !self.feature_supported(fid) {
            return Err(Status::INVALID_FIELD);
        }
        if cmd.cdw10 >> 31 != 0 {
            return Err(Status::FEATURE_NOT_SAVEABLE);
        }
        let v = cmd.cdw11;
        match fid {
            FeatureId::ARBITRATION => self.features.arbitration = v,
            FeatureId::POWER_MANAGEMENT => {
                if v & 0x1F > super::identify_data::NPSS as u32 {
                    return Err(Status::INVALID_FIELD);
                }
                self.features.power_state = v & 0xFF;
            }
            FeatureId::TEMPERATURE_THRESHOLD => {
                let (tmpsel, thsel, kelvin) = ((v >> 16) & 0xF, (v >> 20) & 0x3, v as u16);
                match (tmpsel, thsel) {
                    (0, 0) => self.features.temp_over = kelvin,
                    (0, 1) => self.features.temp_under = kelvin,
                    _ => return Err(Status::INVALID_FIELD),
                }
            }
            FeatureId::VOLATILE_WRITE_CACHE => {
                // Disabling the cache writes its contents back, as a Flush of everything.
                if v & 1 == 0 {
                    self.flushed(None);
                }
                self.features.write_cache = v & 1 != 0;
            }
            FeatureId::NUMBER_OF_QUEUES => {
                if v & 0xFFFF == 0xFFFF || v >> 16 == 0xFFFF {
                    return Err(Status::INVALID_FIELD);
                }
                let dw0 = queues_answer(&self.cfg, v);
                // What the host may really create: the smaller of asked and the maximum,
                // whatever the (possibly quirky) answer says.
                let max = self.cfg.max_io_queues as u32 - 1;
                self.features.queues = Some((v & 0xFFFF).min(max) | ((v >> 16).min(max)) << 16);
                return Ok(dw0);
            }
            FeatureId::ASYNC_EVENT_CONFIG => self.features.async_events = v,
            FeatureId::TIMESTAMP => self.receive_timestamp(cmd)?,
            _ => return Err(Status::INVALID_FIELD),
        }
        Ok(0)
    }

    fn feature_supported(&self, fid: FeatureId) -> bool {
        match fid {
            FeatureId::ARBITRATION
            | FeatureId::POWER_MANAGEMENT
            | FeatureId::TEMPERATURE_THRESHOLD
            | FeatureId::NUMBER_OF_QUEUES
            | FeatureId::ASYNC_EVENT_CONFIG
            | FeatureId::TIMESTAMP => true,
            FeatureId::VOLATILE_WRITE_CACHE => self.cfg.vwc,
            _ => false,
        }
    }

    /// The Timestamp feature's 8-byte data: the time in ms (bits 47:0) and attributes
    /// (byte 6: Synch bit 0 = 0, Timestamp Origin bits 3:1 = 001b once the host set it).
    fn timestamp_bytes(&self) -> [u8; 8] {
        let (base, since, origin) = match self.timestamp {
            Some((ms, at)) => (ms, at, 1u64),
            None => (0, self.created, 0),
        };
        let now = (base + since.elapsed().as_millis() as u64) & TIMESTAMP_MASK;
        (now | origin << 49).to_le_bytes()
    }

    fn send_timestamp(&mut self, cmd: &Command) -> Result<(), Status> {
        let data = self.timestamp_bytes();
        self.map(0, cmd, 8)?;
        self.copy_out(0, cmd, &data)
    }

    fn receive_timestamp(&mut self, cmd: &Command) -> Result<(), Status> {
        self.map(0, cmd, 8)?;
        self.copy_in(0, cmd, 8)?;
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.scratch[..8]);
        self.timestamp = Some((u64::from_le_bytes(b) & TIMESTAMP_MASK, Instant::now()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::Harness;
    use super::super::{SimConfig, SimController};
    use crate::cmd::Command;
    use crate::features::{FeatureId, FeatureSelect};
    use crate::status::Status;

    fn set(h: &mut Harness, fid: FeatureId, dw11: u32) -> (Status, u32) {
        let c = h.admin(Command::set_features(fid, 0, dw11, false));
        (c.status(), c.dw0)
    }

    fn get(h: &mut Harness, fid: FeatureId, sel: FeatureSelect, dw11: u32) -> (Status, u32) {
        let c = h.admin(Command::get_features(fid, sel, 0, dw11));
        (c.status(), c.dw0)
    }

    #[test]
    fn number_of_queues_answers_the_maximum_like_qemu() {
        let mut h = Harness::new();
        assert_eq!(
            set(&mut h, FeatureId::NUMBER_OF_QUEUES, 3 | 3 << 16),
            (Status::SUCCESS, 63 | 63 << 16)
        );
        assert_eq!(
            get(&mut h, FeatureId::NUMBER_OF_QUEUES, FeatureSelect::Current, 0).1,
            63 | 63 << 16
        );
        assert_eq!(
            set(&mut h, FeatureId::NUMBER_OF_QUEUES, 0xFFFF).0,
            Status::INVALID_FIELD
        );
        // Only the 4 granted queues may be created, whatever the answer said.
        let io = h.create_io(4, 8);
        assert_eq!(io.qid, 4);
        let cq = h.dma_buf(4096);
        assert_eq!(
            h.admin(Command::create_io_cq(5, 8, cq.iova(), true, None)).status(),
            Status::INVALID_QUEUE_IDENTIFIER
        );
    }

    #[test]
    fn number_of_queues_without_the_quirk_grants_the_smaller() {
        let mut h = Harness::with(SimConfig {
            answer_max_queues: false,
            max_io_queues: 8,
            ..SimConfig::default()
        });
        assert_eq!(
            set(&mut h, FeatureId::NUMBER_OF_QUEUES, 3 | 20 << 16),
            (Status::SUCCESS, 3 | 7 << 16)
        );
        assert_eq!(
            get(&mut h, FeatureId::NUMBER_OF_QUEUES, FeatureSelect::Current, 0).1,
            3 | 7 << 16
        );
        assert_eq!(
            get(&mut h, FeatureId::NUMBER_OF_QUEUES, FeatureSelect::Default, 0).1,
            7 | 7 << 16
        );
    }

    #[test]
    fn simple_features_round_trip_and_reset() {
        let mut h = Harness::new();
        assert_eq!(
            get(&mut h, FeatureId::VOLATILE_WRITE_CACHE, FeatureSelect::Current, 0),
            (Status::SUCCESS, 1)
        );
        assert_eq!(set(&mut h, FeatureId::VOLATILE_WRITE_CACHE, 0).0, Status::SUCCESS);
        assert_eq!(
            get(&mut h, FeatureId::VOLATILE_WRITE_CACHE, FeatureSelect::Current, 0).1,
            0
        );
        assert_eq!(
            get(&mut h, FeatureId::VOLATILE_WRITE_CACHE, FeatureSelect::Default, 0).1,
            1
        );
        assert_eq!(
            get(
                &mut h,
                FeatureId::VOLATILE_WRITE_CACHE,
                FeatureSelect::SupportedCapabilities,
                0
            )
            .1,
            4
        );
        assert_eq!(
            get(&mut h, FeatureId::TEMPERATURE_THRESHOLD, FeatureSelect::Current, 0).1,
            343
        );
        assert_eq!(
            set(&mut h, FeatureId::TEMPERATURE_THRESHOLD, 1 << 20 | 273).0,
            Status::SUCCESS
        );
        assert_eq!(
            get(
                &mut h,
                FeatureId::TEMPERATURE_THRESHOLD,
                FeatureSelect::Current,
                1 << 20
            )
            .1,
            273
        );
        assert_eq!(
            set(&mut h, FeatureId::POWER_MANAGEMENT, 1).0,
            Status::INVALID_FIELD,
            "only power state 0"
        );
        assert_eq!(get(&mut h, FeatureId::ARBITRATION, FeatureSelect::Current, 0).1, 7);
        assert_eq!(set(&mut h, FeatureId::ASYNC_EVENT_CONFIG, 0xFF).0, Status::SUCCESS);
        assert_eq!(
            get(&mut h, FeatureId::INTERRUPT_COALESCING, FeatureSelect::Current, 0).0,
            Status::INVALID_FIELD
        );
        let saved = h.admin(Command::set_features(FeatureId::ARBITRATION, 0, 0, true));
        assert_eq!(saved.status(), Status::FEATURE_NOT_SAVEABLE);
        h.reset();
        assert_eq!(
            get(&mut h, FeatureId::VOLATILE_WRITE_CACHE, FeatureSelect::Current, 0).1,
            1,
            "reset restores defaults"
        );
    }

    #[test]
    fn write_cache_feature_needs_a_write_cache() {
        let mut h = Harness::attach(SimController::new(SimConfig {
            vwc: false,
            ..SimConfig::default()
        }));
        h.enable();
        assert_eq!(
            get(&mut h, FeatureId::VOLATILE_WRITE_CACHE, FeatureSelect::Current, 0).0,
            Status::INVALID_FIELD
        );
    }

    #[test]
    fn timestamp_keeps_the_host_value_and_advances() {
        let mut h = Harness::new();
        let cmd = Command::set_features(FeatureId::TIMESTAMP, 0, 0, false);
        let c = h.admin_write(cmd, &1_000_000u64.to_le_bytes());
        assert_eq!(c.status(), Status::SUCCESS);
        std::thread::sleep(std::time::Duration::from_millis(5));
        let (c, data) = h.admin_read(
            Command::get_features(FeatureId::TIMESTAMP, FeatureSelect::Current, 0, 0),
            8,
        );
        assert_eq!(c.status(), Status::SUCCESS);
        let v = u64::from_le_bytes(data[..8].try_into().unwrap());
        let ms = v & ((1 << 48) - 1);
        assert!((1_000_005..1_010_000).contains(&ms), "{ms}");
        assert_eq!(data[6] >> 1 & 0x7, 1, "origin: set by the host");
    }
}
