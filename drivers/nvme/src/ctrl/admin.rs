//! The admin queue: synchronous admin commands and asynchronous events.
//!
//! Admin commands are rare and may block; the queue lives behind a mutex in the
//! controller. Data moves through one preallocated buffer (admin commands use PRPs
//! only, as QEMU requires). Asynchronous Event Requests stay outstanding in the same
//! CID table; their completions are turned into [`AsyncEvent`]s whenever the queue is
//! polled.
//!
//! A controller masks further events of a type until the host reads the log page the
//! event names with Retain Asynchronous Event (RAE) clear (Base Specification 2.0, §5.2,
//! §5.16). So before an event's request is sent again, that log page is read with RAE = 0
//! into a buffer of its own. Completions are consumed inside other commands' wait loops,
//! under the admin lock, so none of this waits: the Get Log Page is only posted, and its
//! completion — consumed by a later poll, or the next round of the same one — sends the
//! request again. One such read is outstanding at a time; the rest queue up. A read that
//! misses the admin timeout is handled as any late admin command: the controller is reset
//! (by the holder of the admin lock), which sends the requests again.

use super::Error;
use crate::cmd::Command;
use crate::completion::Completion;
use crate::hw::{DmaAllocator, DmaBuf, Registers};
use crate::log::LogPageId;
use crate::prp;
use crate::queue::{CidTable, CompletionQueue, QueuePair, SubmissionQueue};
use crate::regs::{Cap, Csts, offset};
use std::collections::VecDeque;
use std::task::Poll;
use std::time::{Duration, Instant};

/// Bytes of the admin data buffer; larger log pages are read in pieces.
pub(crate) const ADMIN_DATA_BYTES: usize = 64 * 1024;
/// Asynchronous events kept until the caller collects them; older ones are dropped.
const MAX_QUEUED_EVENTS: usize = 64;
/// Bytes of the buffer event log pages are read into.
const EVENT_LOG_BYTES: usize = 4096;
/// Rounds of consuming completions in one poll; another round runs only when the last one
/// posted a command (an event's log read, a request sent again), which a controller that
/// completes at once has already answered.
const REAP_ROUNDS: usize = 4;

/// How much of log page `lid` is read to clear an event: the whole page for the pages
/// events name in the specification (the newest entry of the Error Information log),
/// 512 bytes otherwise. Every one fits in [`EVENT_LOG_BYTES`], one memory page.
fn event_log_len(lid: LogPageId) -> usize {
    match lid {
        LogPageId::ERROR_INFORMATION => 64,
        LogPageId::CHANGED_NAMESPACE_LIST => 4096,
        _ => 512,
    }
}

/// An asynchronous event reported by the controller (Base Specification 2.0, §5.2,
/// Figure 146: completion DW0 of an Asynchronous Event Request).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncEvent {
    /// Asynchronous Event Type (bits 2:0): 0 error, 1 SMART / health, 2 notice,
    /// 6 I/O command set specific, 7 vendor specific.
    pub event_type: u8,
    /// Asynchronous Event Information (bits 15:8).
    pub info: u8,
    /// Log Page Identifier to read (with RAE clear) to clear the event (bits 23:16).
    pub log_page: u8,
}

impl AsyncEvent {
    /// Decodes completion DW0.
    pub fn from_dw0(dw0: u32) -> AsyncEvent {
        AsyncEvent {
            event_type: (dw0 & 0x7) as u8,
            info: (dw0 >> 8) as u8,
            log_page: (dw0 >> 16) as u8,
        }
    }

    /// Whether this is a Namespace Attribute Changed notice (type 2h, information 00h,
    /// Changed Namespace List log 04h; §5.2, Figure 150): a namespace was attached,
    /// detached, or its Identify Namespace data changed.
    pub fn is_namespace_attribute_changed(&self) -> bool {
        self.event_type == 2 && self.info == 0
    }

    /// The specification's name of the event type.
    pub fn type_name(&self) -> &'static str {
        match self.event_type {
            0 => "Error status",
            1 => "SMART / Health status",
            2 => "Notice",
            6 => "I/O Command specific status",
            7 => "Vendor specific",
            _ => "Reserved",
        }
    }
}

/// What an admin CID is waiting for.
enum AdminSlot {
    /// A synchronous command the caller is waiting on.
    Waiting,
    /// An outstanding Asynchronous Event Request.
    Aer,
    /// Get Log Page (RAE = 0) of the log an event named; its completion sends the
    /// Asynchronous Event Request again.
    EventLog,
    /// A command whose caller gave up (timed out); its completion is discarded.
    Abandoned,
}

/// An admin command posted by [`AdminQueue::submit`] and not yet answered: poll it with
/// [`AdminQueue::poll_command`] until it ends (a dropped one keeps its CID until the next
/// reset).
#[must_use]
pub(crate) struct PendingAdmin {
    cid: u16,
    name: &'static str,
    timeout: Duration,
    deadline: Instant,
}

/// Direction and size of an admin command's data.
pub(crate) enum AdminData<'a> {
    /// No data.
    None,
    /// Controller to host: this many bytes land in the admin buffer.
    FromDevice(usize),
    /// Host to controller: these bytes are copied into the admin buffer first.
    ToDevice(&'a [u8]),
}

pub(crate) struct AdminQueue {
    rings: QueuePair,
    cids: CidTable<AdminSlot>,
    data: DmaBuf,
    prp_list: DmaBuf,
    page_size: usize,
    events: VecDeque<AsyncEvent>,
    aer_limit: u32,
    /// Where event log pages are read (never the command data buffer, which a waiting
    /// command may be using).
    event_log: DmaBuf,
    /// Log pages of received events still to read, oldest first.
    logs_to_read: VecDeque<LogPageId>,
    /// Whether an [`AdminSlot::EventLog`] read is outstanding (it owns `event_log`).
    reading_log: bool,
    /// When the outstanding event log read is overdue (posted + `event_log_timeout`):
    /// past it the controller is treated as having missed an admin deadline and reset.
    event_log_deadline: Option<Instant>,
    /// Deadline of an event log read: the admin timeout given to
    /// [`Self::start_async_events`].
    event_log_timeout: Duration,
    /// A Namespace Attribute Changed event arrived since [`Self::take_namespace_change`]
    /// last looked.
    namespaces_changed: bool,
}

impl AdminQueue {
    /// Allocates the admin queue pair and its data buffer.
    pub(crate) fn new(dma: &dyn DmaAllocator, cap: Cap, entries: u32, page_size: usize) -> Result<AdminQueue, Error> {
        let sq = SubmissionQueue::new(dma.allocate(entries as usize * 64)?, entries)?;
        let cq = CompletionQueue::new(dma.allocate(entries as usize * 16)?, entries)?;
        let data = dma.allocate(ADMIN_DATA_BYTES)?;
        let list_pages = prp::list_pages_for_transfer(ADMIN_DATA_BYTES, page_size).max(1);
        let prp_list = dma.allocate(list_pages * page_size)?;
        let event_log = dma.allocate(EVENT_LOG_BYTES)?;
        Ok(AdminQueue {
            rings: QueuePair::new(sq, cq, 0, cap.sq_tail_doorbell(0), cap.cq_head_doorbell(0)),
            cids: CidTable::new(entries as usize - 1),
            data,
            prp_list,
            page_size,
            events: VecDeque::with_capacity(MAX_QUEUED_EVENTS),
            namespaces_changed: false,
            aer_limit: 0,
            event_log,
            logs_to_read: VecDeque::new(),
            reading_log: false,
            event_log_deadline: None,
            event_log_timeout: Duration::MAX,
        })
    }

    pub(crate) fn sq_iova(&self) -> u64 {
        self.rings.sq_iova()
    }

    pub(crate) fn cq_iova(&self) -> u64 {
        self.rings.cq_iova()
    }

    pub(crate) fn entries(&self) -> u32 {
        self.rings.entries()
    }

    /// The admin buffer's first `len` bytes, after a command that read data.
    pub(crate) fn data(&self, len: usize) -> &[u8] {
        &self.data.as_slice()[..len]
    }

    /// Forgets every outstanding command (synchronous ones time out on their own; AERs are
    /// sent again after the reset) and empties both rings. Only after the controller was
    /// disabled (CSTS.RDY = 0), which discards its view of the queues.
    pub(crate) fn reset_rings(&mut self) {
        while self.cids.pop_any().is_some() {}
        self.rings.reset();
        self.aer_limit = 0;
        self.logs_to_read.clear();
        self.reading_log = false;
        self.event_log_deadline = None;
        // An event may have been lost with the rings: read the namespaces again at the
        // next poll, as Linux rescans after every reset.
        self.namespaces_changed = true;
    }

    /// Whether the outstanding event log read has passed its deadline. The caller must
    /// then reset the controller (under the admin lock it holds, as for any admin command
    /// that missed its deadline): until then the read owns the event log buffer, and no
    /// Asynchronous Event Request is sent again, so events would be lost.
    pub(crate) fn event_log_overdue(&self) -> bool {
        self.reading_log && self.event_log_deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Posts `cmd` with `data`, rings the doorbell, and polls until it completes or
    /// `timeout` passes: [`Self::submit`], then [`Self::poll_command`] in a loop that
    /// spins and looks at CSTS and the deadline every 64 spins.
    ///
    /// Errors: [`Error::Command`] with the decoded status if the controller fails the
    /// command; [`Error::Timeout`], [`Error::Fatal`] or [`Error::Removed`] if it does not
    /// answer (the CID is then abandoned: a late completion is discarded).
    pub(crate) fn execute<R: Registers>(
        &mut self,
        regs: &R,
        cmd: Command,
        data: AdminData<'_>,
        timeout: Duration,
    ) -> Result<Completion, Error> {
        let pending = self.submit(regs, cmd, data, timeout)?;
        let mut spins = 0u32;
        loop {
            spins += 1;
            let check = spins % 64 == 0;
            if let Poll::Ready(result) = self.poll_command(regs, &pending, check) {
                return result;
            }
            if check {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Posts `cmd` with `data` (copied into the admin buffer when it goes to the device)
    /// and rings the doorbell, without waiting: [`Self::poll_command`] collects the
    /// answer. Until then the admin buffer belongs to the command.
    ///
    /// Errors: [`Error::TransferTooLarge`] above [`ADMIN_DATA_BYTES`];
    /// [`Error::QueueFull`]; [`Error::Prp`] / [`Error::Dma`] building the data pointer.
    pub(crate) fn submit<R: Registers>(
        &mut self,
        regs: &R,
        mut cmd: Command,
        data: AdminData<'_>,
        timeout: Duration,
    ) -> Result<PendingAdmin, Error> {
        let name = cmd.name(true);
        let len = match data {
            AdminData::None => 0,
            AdminData::FromDevice(n) => n,
            AdminData::ToDevice(bytes) => bytes.len(),
        };
        if len > ADMIN_DATA_BYTES {
            return Err(Error::TransferTooLarge {
                bytes: len,
                max: ADMIN_DATA_BYTES,
            });
        }
        if len > 0 {
            self.data.set_window(0, len)?;
            if let AdminData::ToDevice(bytes) = data {
                self.data.as_mut_slice().copy_from_slice(bytes);
            }
            let (prp1, prp2) = prp::build_prps(self.data.iova(), len, self.page_size, &mut self.prp_list)?;
            cmd.set_prp(prp1, prp2);
            self.data.reset_window();
        }
        let cid = self.post(regs, cmd, AdminSlot::Waiting)?;
        Ok(PendingAdmin {
            cid,
            name,
            timeout,
            deadline: Instant::now() + timeout,
        })
    }

    /// Consumes the completions available (asynchronous events included) and gives
    /// `pending`'s result if it arrived. With `check`, also reads CSTS and the clock: a
    /// device gone (all ones), CSTS.CFS or the deadline passed end the command with an
    /// error and abandon its CID (a late completion is discarded). Never waits.
    ///
    /// Errors: as [`Self::execute`].
    pub(crate) fn poll_command<R: Registers>(
        &mut self,
        regs: &R,
        pending: &PendingAdmin,
        check: bool,
    ) -> Poll<Result<Completion, Error>> {
        if let Some(done) = self.reap(regs, Some(pending.cid)) {
            return Poll::Ready(if done.status().is_success() {
                Ok(done)
            } else {
                Err(Error::Command {
                    command: pending.name,
                    status: done.status(),
                })
            });
        }
        if !check {
            return Poll::Pending;
        }
        let csts = Csts(regs.read32(offset::CSTS));
        let failure = if csts.is_all_ones() {
            Error::Removed { during: pending.name }
        } else if csts.cfs() {
            Error::Fatal { during: pending.name }
        } else if Instant::now() >= pending.deadline {
            Error::Timeout {
                command: pending.name,
                timeout: pending.timeout,
            }
        } else {
            return Poll::Pending;
        };
        if let Some(slot) = self.cids.get_mut(pending.cid) {
            *slot = AdminSlot::Abandoned;
        }
        Poll::Ready(Err(failure))
    }

    /// Posts `cmd` under a new CID and rings at once: admin commands are not batched.
    fn post<R: Registers>(&mut self, regs: &R, mut cmd: Command, slot: AdminSlot) -> Result<u16, Error> {
        if self.rings.is_full() {
            return Err(Error::QueueFull(self.cids.outstanding()));
        }
        let cid = self
            .cids
            .insert(slot)
            .map_err(|_| Error::QueueFull(self.cids.outstanding()))?;
        cmd.set_cid(cid);
        self.rings.post(&cmd).expect("checked not full");
        self.rings.ring(|reg, value| regs.write32(reg, value));
        Ok(cid)
    }

    /// Consumes available completions: records asynchronous events (reading the log page
    /// each names, then sending the request again), drops abandoned ones, and returns the
    /// completion for `want` if it arrived. Never waits, never recurses: at most
    /// [`REAP_ROUNDS`] rounds.
    fn reap<R: Registers>(&mut self, regs: &R, want: Option<u16>) -> Option<Completion> {
        let mut found = None;
        for _ in 0..REAP_ROUNDS {
            let mut resend_aers = 0;
            let (cids, events, logs_to_read) = (&mut self.cids, &mut self.events, &mut self.logs_to_read);
            let (changed, aer_limit) = (&mut self.namespaces_changed, &mut self.aer_limit);
            let (reading_log, log_deadline) = (&mut self.reading_log, &mut self.event_log_deadline);
            let outstanding = cids.outstanding();
            self.rings.reap(usize::MAX, outstanding, |c| {
                let slot = cids.remove(c.cid);
                let known = slot.is_some();
                match slot {
                    Some(AdminSlot::Waiting) if Some(c.cid) == want => found = Some(c),
                    Some(AdminSlot::Aer) => {
                        if c.status().is_success() {
                            let event = AsyncEvent::from_dw0(c.dw0);
                            *changed |= event.is_namespace_attribute_changed();
                            if events.len() == MAX_QUEUED_EVENTS {
                                events.pop_front();
                            }
                            events.push_back(event);
                            match event.log_page {
                                0 => resend_aers += 1, // names no log page (reserved)
                                lid => logs_to_read.push_back(LogPageId(lid)),
                            }
                        } else {
                            // Aborted by a queue deletion or refused: stop asking.
                            *aer_limit = aer_limit.saturating_sub(1);
                            tracing::debug!(status = %c.status(), "asynchronous event request ended");
                        }
                    }
                    Some(AdminSlot::EventLog) => {
                        *reading_log = false;
                        *log_deadline = None;
                        if !c.status().is_success() {
                            tracing::warn!(status = %c.status(), "reading an event's log page failed; events of its type may stay masked");
                        }
                        resend_aers += 1;
                    }
                    Some(AdminSlot::Waiting | AdminSlot::Abandoned) => {
                        tracing::debug!(cid = c.cid, "discarding admin completion nobody waits for");
                    }
                    // No such command: QueuePair::reap reports it.
                    None => {}
                }
                known
            });
            self.rings.release(|reg, value| regs.write32(reg, value));
            let mut posted = false;
            for _ in 0..resend_aers {
                if self.post(regs, Command::async_event_request(), AdminSlot::Aer).is_err() {
                    self.aer_limit = self.aer_limit.saturating_sub(1);
                } else {
                    posted = true;
                }
            }
            posted |= self.read_next_event_log(regs);
            if !posted {
                break;
            }
        }
        found
    }

    /// Posts Get Log Page with RAE = 0 for the oldest event log still to read, unless one
    /// is outstanding. Returns whether a command was posted.
    fn read_next_event_log<R: Registers>(&mut self, regs: &R) -> bool {
        if self.reading_log {
            return false;
        }
        let Some(&lid) = self.logs_to_read.front() else {
            return false;
        };
        let len = event_log_len(lid);
        let mut cmd = Command::get_log_page(lid, super::NSID_ALL, 0, len as u32, 0, false)
            .expect("event log lengths are non-zero multiples of 4");
        // One page-aligned page: PRP1 alone describes it (§4.1.1).
        cmd.set_prp(self.event_log.iova(), 0);
        if self.post(regs, cmd, AdminSlot::EventLog).is_err() {
            return false; // queue full: the next poll tries again
        }
        self.logs_to_read.pop_front();
        self.reading_log = true;
        self.event_log_deadline = Instant::now().checked_add(self.event_log_timeout);
        true
    }

    /// Sends Asynchronous Event Requests until `count` are outstanding; the log page reads
    /// events lead to must complete within `timeout` (see [`Self::event_log_overdue`]).
    pub(crate) fn start_async_events<R: Registers>(
        &mut self,
        regs: &R,
        count: u32,
        timeout: Duration,
    ) -> Result<(), Error> {
        self.event_log_timeout = timeout;
        // Leave room in the queue for synchronous commands: at least two slots stay free,
        // one for a synchronous command and one for an event's log page read.
        let capacity = self.cids.capacity() as u32;
        if capacity < 3 {
            return Err(Error::Config(format!(
                "an admin queue of {} entries is too small for asynchronous events",
                self.entries()
            )));
        }
        let count = count.min(self.entries() / 4).max(1).min(capacity - 2);
        self.aer_limit = count;
        for _ in 0..count {
            self.post(regs, Command::async_event_request(), AdminSlot::Aer)?;
        }
        Ok(())
    }

    /// Polls for completions and returns the asynchronous events received so far.
    pub(crate) fn take_events<R: Registers>(&mut self, regs: &R) -> Vec<AsyncEvent> {
        self.reap(regs, None);
        self.events.drain(..).collect()
    }

    /// Whether a Namespace Attribute Changed event arrived since the last call (which
    /// clears it); [`Self::note_namespace_change`] sets it again when the rescan it asked
    /// for failed.
    pub(crate) fn take_namespace_change(&mut self) -> bool {
        std::mem::take(&mut self.namespaces_changed)
    }

    /// Remembers a namespace change still to rescan.
    pub(crate) fn note_namespace_change(&mut self) {
        self.namespaces_changed = true;
    }

    /// Takes every free CID (as commands nobody waits for) without posting anything, so
    /// the next command finds the queue full; returns the CIDs for [`Self::free_for_test`].
    #[cfg(test)]
    pub(crate) fn occupy_for_test(&mut self) -> Vec<u16> {
        std::iter::from_fn(|| self.cids.insert(AdminSlot::Abandoned).ok()).collect()
    }

    /// Frees CIDs taken by [`Self::occupy_for_test`].
    #[cfg(test)]
    pub(crate) fn free_for_test(&mut self, cids: &[u16]) {
        for &cid in cids {
            self.cids.remove(cid);
        }
    }

    /// Asynchronous Event Requests currently outstanding.
    pub(crate) fn outstanding_aers(&self) -> usize {
        self.cids.iter().filter(|(_, s)| matches!(s, AdminSlot::Aer)).count()
    }
}
