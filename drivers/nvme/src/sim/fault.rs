//! Fault injection: rules that change what the simulated controller does with the commands
//! they match.
//!
//! Rules are checked in insertion order against every command the controller fetches
//! (admin and I/O); the first rule that matches and has uses left applies. The
//! counterparts on real test hardware are QEMU's `blkdebug` errors (a status), `break` /
//! `resume` (a held command) and `null-co,latency-ns` (a slow device).

use super::hostile::Misbehaviour;
use crate::cmd::{Command, nvm};
use crate::status::Status;
use std::ops::Range;
use std::time::Duration;

/// What a matching command suffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Complete with this status, without transferring any data.
    Status(Status),
    /// Hold the command: it never completes on its own. Abort completes it (with Command
    /// Abort Requested) when [`super::SimConfig::abort_works`] is set; deleting its SQ
    /// completes it with Command Aborted due to SQ Deletion; a controller reset (CC.EN 1→0)
    /// drops it; [`super::SimController::release_held`] runs it.
    Hang,
    /// Hold the command invisibly, like a completion the controller believes it posted but
    /// that never arrived: Abort does not find it and deleting its SQ drops it silently.
    /// A controller reset drops it; [`super::SimController::release_held`] runs it.
    Lost,
    /// Execute and complete the command normally, but only after this delay (data moves at
    /// completion time, like a slow device). Posted by a background ticker thread, or at
    /// the next doorbell write, whichever comes first.
    Delay(Duration),
    /// Break the protocol on purpose (the hostile controller): see [`Misbehaviour`].
    Misbehave(Misbehaviour),
}

/// A fault rule: which commands it matches and what happens to them.
///
/// Every `None` matches anything. Build one with struct update syntax:
/// `FaultRule { qid: Some(1), times: Some(1), ..FaultRule::new(FaultAction::Hang) }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRule {
    /// The submission queue (0 = admin), or `None` for any.
    pub qid: Option<u16>,
    /// The opcode, or `None` for any.
    pub opcode: Option<u8>,
    /// The command's NSID field, or `None` for any.
    pub nsid: Option<u32>,
    /// LBAs: matches I/O commands that carry an LBA range (Read, Write, Compare, Verify,
    /// Write Zeroes, Write Uncorrectable) overlapping this range of logical blocks. Other
    /// commands never match a rule with an LBA range.
    pub lba: Option<Range<u64>>,
    /// How many matching commands the rule applies to; `None` is forever. The rule is
    /// removed when its count is used up.
    pub times: Option<u32>,
    /// What happens to a matching command.
    pub action: FaultAction,
}

impl FaultRule {
    /// A rule matching every command, forever, with `action`.
    pub fn new(action: FaultAction) -> FaultRule {
        FaultRule {
            qid: None,
            opcode: None,
            nsid: None,
            lba: None,
            times: None,
            action,
        }
    }

    /// Whether the rule matches `cmd` fetched from SQ `qid`.
    fn matches(&self, qid: u16, cmd: &Command) -> bool {
        self.qid.is_none_or(|q| q == qid)
            && self.opcode.is_none_or(|o| o == cmd.opcode())
            && self.nsid.is_none_or(|n| n == cmd.nsid)
            && self
                .lba
                .as_ref()
                .is_none_or(|r| lba_range(qid, cmd).is_some_and(|l| l.start < r.end && r.start < l.end))
    }
}

impl Default for FaultRule {
    /// Matches every command, forever, with action `Status(Internal Error)`: set the
    /// action you want.
    fn default() -> FaultRule {
        FaultRule::new(FaultAction::Status(Status::INTERNAL_ERROR))
    }
}

/// The LBAs an I/O command touches, if it names a range in CDW10–12.
fn lba_range(qid: u16, cmd: &Command) -> Option<Range<u64>> {
    if qid == 0 {
        return None;
    }
    match cmd.opcode() {
        nvm::READ | nvm::WRITE | nvm::COMPARE | nvm::VERIFY | nvm::WRITE_ZEROES | nvm::WRITE_UNCORRECTABLE => {
            let start = cmd.slba();
            Some(start..start.saturating_add(cmd.nlb() as u64))
        }
        _ => None,
    }
}

/// Identifies an injected rule, for [`super::SimController::remove_fault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FaultId(u64);

/// The injected rules, in insertion order.
#[derive(Debug, Default)]
pub(super) struct FaultTable {
    rules: Vec<(FaultId, FaultRule)>,
    next: u64,
}

impl FaultTable {
    pub(super) fn insert(&mut self, rule: FaultRule) -> FaultId {
        let id = FaultId(self.next);
        self.next += 1;
        if rule.times != Some(0) {
            self.rules.push((id, rule));
        }
        id
    }

    pub(super) fn remove(&mut self, id: FaultId) {
        self.rules.retain(|(i, _)| *i != id);
    }

    pub(super) fn clear(&mut self) {
        self.rules.clear();
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The action of the first rule matching `cmd` from SQ `qid`, using up one of its
    /// applications.
    pub(super) fn take(&mut self, qid: u16, cmd: &Command) -> Option<FaultAction> {
        let i = self.rules.iter().position(|(_, r)| r.matches(qid, cmd))?;
        let rule = &mut self.rules[i].1;
        let action = rule.action.clone();
        if let Some(n) = rule.times.as_mut() {
            *n -= 1;
            if *n == 0 {
                self.rules.remove(i);
            }
        }
        Some(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_in_order_and_count_down() {
        let mut t = FaultTable::default();
        let hang = t.insert(FaultRule {
            qid: Some(1),
            lba: Some(10..20),
            times: Some(2),
            ..FaultRule::new(FaultAction::Hang)
        });
        let _err = t.insert(FaultRule {
            opcode: Some(nvm::READ),
            ..FaultRule::new(FaultAction::Status(Status::UNRECOVERED_READ_ERROR))
        });
        let hit = Command::read(1, 15, 1);
        let miss = Command::read(1, 20, 4); // 20..24 does not overlap 10..20
        assert_eq!(t.take(1, &hit), Some(FaultAction::Hang));
        assert_eq!(
            t.take(1, &miss),
            Some(FaultAction::Status(Status::UNRECOVERED_READ_ERROR))
        );
        assert_eq!(
            t.take(2, &hit),
            Some(FaultAction::Status(Status::UNRECOVERED_READ_ERROR)),
            "other queue"
        );
        assert_eq!(
            t.take(1, &Command::write(1, 9, 2, false)),
            Some(FaultAction::Hang),
            "9..11 overlaps"
        );
        assert_eq!(
            t.take(1, &Command::write(1, 12, 1, false)),
            None,
            "hang used up; not a read"
        );
        assert_eq!(t.take(0, &Command::flush(1)), None);
        t.remove(hang); // already gone: harmless
        t.clear();
        assert!(t.is_empty());
    }

    #[test]
    fn lba_rules_never_match_admin_or_rangeless_commands() {
        let rule = FaultRule {
            lba: Some(0..u64::MAX),
            ..FaultRule::default()
        };
        assert!(!rule.matches(0, &Command::read(1, 0, 1)), "admin queue");
        assert!(!rule.matches(1, &Command::flush(1)));
        assert!(rule.matches(1, &Command::read(1, 0, 1)));
        assert!(FaultRule::default().matches(0, &Command::keep_alive()));
    }
}

#[cfg(test)]
mod scenarios {
    use super::super::testing::Harness;
    use super::super::{SimConfig, SimController};
    use super::*;
    use crate::cmd::admin;
    use crate::hw::Registers;
    use crate::regs::{Cc, Csts, offset};
    use std::time::Instant;

    #[test]
    fn status_fault_fails_without_moving_data_then_runs_out() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 16);
        let mut buf = h.dma_buf(4096);
        buf.as_mut_slice().fill(0x5A);
        assert!(io.write_prp(&h.sim, 16, &buf, 8).status().is_success());
        let out = h.dma_buf(4096);
        h.sim.inject(FaultRule {
            opcode: Some(nvm::READ),
            lba: Some(16..17),
            times: Some(1),
            ..FaultRule::new(FaultAction::Status(Status::UNRECOVERED_READ_ERROR))
        });
        assert_eq!(
            io.read_prp(&h.sim, 16, &out, 8).status(),
            Status::UNRECOVERED_READ_ERROR
        );
        assert!(out.as_slice().iter().all(|&b| b == 0), "no data transferred");
        assert_eq!(io.read_prp(&h.sim, 16, &out, 8).status(), Status::SUCCESS, "times: 1");
        assert_eq!(out.as_slice()[0], 0x5A);
        let id = h.sim.inject(FaultRule {
            qid: Some(0),
            ..FaultRule::new(FaultAction::Status(Status::INTERNAL_ERROR))
        });
        assert_eq!(h.admin(Command::keep_alive()).status(), Status::INTERNAL_ERROR);
        h.sim.remove_fault(id);
        assert_eq!(h.admin(Command::keep_alive()).status(), Status::INVALID_OPCODE);
        assert_eq!(h.sim.stats().faults_applied, 2);
    }

    #[test]
    fn hang_is_aborted_when_abort_works() {
        let mut h = Harness::with(SimConfig {
            abort_works: true,
            ..SimConfig::default()
        });
        let mut io = h.create_io(1, 16);
        h.sim.inject(FaultRule {
            qid: Some(1),
            times: Some(1),
            ..FaultRule::new(FaultAction::Hang)
        });
        let hung = io.submit(&h.sim, Command::flush(1));
        assert!(io.poll(&h.sim).is_none());
        assert_eq!(h.sim.held_commands(), 1);
        let next = io.run(&h.sim, Command::flush(1));
        assert!(next.status().is_success(), "other commands pass the held one");
        let abort = h.admin(Command::abort(1, hung));
        assert_eq!((abort.status(), abort.dw0 & 1), (Status::SUCCESS, 0), "aborted");
        let c = io.poll(&h.sim).expect("the aborted command completes");
        assert_eq!((c.cid, c.status()), (hung, Status::ABORT_REQUESTED));
        assert_eq!(h.sim.held_commands(), 0);
        assert_eq!(h.admin(Command::abort(1, hung)).dw0 & 1, 1, "nothing left to abort");
    }

    #[test]
    fn hang_is_not_aborted_like_qemu_and_reset_drops_it() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 16);
        h.sim.inject(FaultRule {
            qid: Some(1),
            ..FaultRule::new(FaultAction::Hang)
        });
        let hung = io.submit(&h.sim, Command::flush(1));
        let abort = h.admin(Command::abort(1, hung));
        assert_eq!(
            (abort.status(), abort.dw0),
            (Status::SUCCESS, 1),
            "QEMU: Abort is a no-op"
        );
        assert!(io.poll(&h.sim).is_none());
        h.reset();
        assert_eq!(h.sim.held_commands(), 0, "a controller reset drops held commands");
        assert!(io.cq.pop().is_none(), "without completing them");
        assert_eq!(h.sim.stats().resets, 1);
    }

    #[test]
    fn lost_commands_escape_abort_until_released() {
        let mut h = Harness::with(SimConfig {
            abort_works: true,
            ..SimConfig::default()
        });
        let mut io = h.create_io(1, 16);
        h.sim.inject(FaultRule {
            qid: Some(1),
            times: Some(1),
            ..FaultRule::new(FaultAction::Lost)
        });
        let buf = h.dma_buf(4096);
        let mut r = Command::read(1, 0, 8);
        r.set_prp(buf.iova(), 0);
        let lost = io.submit(&h.sim, r);
        assert_eq!(h.admin(Command::abort(1, lost)).dw0 & 1, 1, "Abort cannot find it");
        assert_eq!(h.sim.held_commands(), 1);
        h.sim.release_held();
        let c = io.poll(&h.sim).expect("released");
        assert_eq!((c.cid, c.status()), (lost, Status::SUCCESS));
    }

    #[test]
    fn deleting_an_sq_aborts_its_held_commands() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 16);
        h.sim.inject(FaultRule {
            qid: Some(1),
            ..FaultRule::new(FaultAction::Hang)
        });
        let a = io.submit(&h.sim, Command::flush(1));
        assert!(h.admin(Command::delete_io_sq(1)).status().is_success());
        let c = io.cq.pop().expect("aborted before the delete completed");
        assert_eq!((c.cid, c.status()), (a, Status::ABORTED_SQ_DELETION));
    }

    #[test]
    fn delayed_commands_complete_later_by_themselves() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 16);
        let delay = std::time::Duration::from_millis(30);
        h.sim.inject(FaultRule {
            opcode: Some(nvm::WRITE),
            times: Some(1),
            ..FaultRule::new(FaultAction::Delay(delay))
        });
        let mut buf = h.dma_buf(4096);
        buf.as_mut_slice().fill(7);
        let mut w = Command::write(1, 0, 8, false);
        w.set_prp(buf.iova(), 0);
        let start = Instant::now();
        let cid = io.submit(&h.sim, w);
        assert!(io.poll(&h.sim).is_none());
        assert_eq!(h.sim.namespace_data(1)[0], 0, "data moves when the command runs");
        let c = io.wait(&h.sim);
        assert!(start.elapsed() >= delay);
        assert_eq!((c.cid, c.status()), (cid, Status::SUCCESS));
        assert_eq!(h.sim.namespace_data(1)[0], 7);
        assert_eq!(h.sim.held_commands(), 0, "delayed commands are not held ones");
    }

    #[test]
    fn the_ticker_stops_with_the_controller() {
        let mut h = Harness::new();
        h.sim.inject(FaultRule {
            qid: Some(0),
            times: Some(1),
            ..FaultRule::new(FaultAction::Delay(std::time::Duration::from_secs(60)))
        });
        h.submit_admin(Command::keep_alive());
        let weak = std::sync::Arc::downgrade(&h.sim.shared);
        drop(h);
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        while weak.strong_count() > 0 {
            assert!(Instant::now() < deadline, "the ticker keeps the controller alive");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn fatal_status_stops_processing_until_reset() {
        let mut h = Harness::new();
        let mut io = h.create_io(1, 16);
        h.sim.set_fatal(true);
        assert!(Csts(h.sim.read32(offset::CSTS)).cfs());
        io.submit(&h.sim, Command::flush(1));
        assert!(io.poll(&h.sim).is_none(), "doorbells are ignored");
        assert!(h.sim.protocol_violations().is_empty(), "the driver did nothing wrong");
        h.reset();
        assert!(!Csts(h.sim.read32(offset::CSTS)).cfs(), "CC.EN 1→0 clears it");
        let (c, _) = h.admin_read(Command::identify(crate::identify::Cns::CONTROLLER, 0, 0), 4096);
        assert!(c.status().is_success());
        assert_eq!(h.sim.stats().admin(admin::IDENTIFY), 1);
    }

    #[test]
    fn removal_reads_all_ones_and_ignores_writes() {
        let mut h = Harness::new();
        h.sim.set_removed(true);
        assert_eq!(h.sim.read32(offset::CSTS), u32::MAX);
        assert_eq!(h.sim.read64(offset::CAP), u64::MAX);
        assert!(Csts(h.sim.read32(offset::CSTS)).is_all_ones());
        h.sim.write32(offset::CC, 0);
        h.submit_admin(Command::keep_alive());
        h.sim.set_removed(false);
        assert!(Cc(h.sim.read32(offset::CC)).en(), "the CC write was ignored");
        assert!(h.poll_admin().is_none(), "the doorbell was ignored");
        assert_eq!(h.sim.stats().sq_doorbells, 0);
    }

    #[test]
    fn a_fault_on_every_command_can_hang_the_admin_queue() {
        let sim = SimController::new(SimConfig::default());
        sim.inject(FaultRule::new(FaultAction::Hang));
        let mut h = Harness::attach(sim);
        h.enable();
        h.submit_admin(Command::keep_alive());
        assert!(h.poll_admin().is_none());
        assert_eq!(h.sim.held_commands(), 1);
        h.sim.clear_faults();
        h.sim.release_held();
        assert_eq!(h.poll_admin().unwrap().status(), Status::INVALID_OPCODE);
    }
}
