//! Inflight I/O tracking (checklist 4.8, R-INFL): the shared buffer of GET_INFLIGHT_FD is read
//! by the harness between requests (it holds the memfd), and a reconnect with a request left in
//! flight must complete that request exactly once.
//!
//! Split-ring region of queue 0 (R-INFL-02): a 16-byte header (u64 features, u16 version,
//! u16 desc_num, u16 last_batch_head, u16 used_idx) and desc_num 16-byte entries (u8 inflight,
//! 5 bytes padding, u16 next, u64 counter).

use crate::rules::{RuleId, id};
use std::time::Duration;

use vhu_mock_frontend::blk::{self, BlkReq};
use vhu_mock_frontend::inflight::{InflightBuffer, InflightError, SPLIT_ENTRY, SPLIT_HEADER};
use vhu_mock_frontend::{ReplyViolation, SessionError, Wanted};
use vhu_protocol::{FrontendReq, ProtocolFeatures};

use super::{Builtin, BuiltinMeta, Needs, default_memory, start_queue};
use crate::engine::{Ctx, StepError};

const HEADER: u64 = SPLIT_HEADER;
const ENTRY: u64 = SPLIT_ENTRY;

/// The inflight buffer the back-end handed out (its description checked by the session: it
/// holds queue 0's region and lies inside the fd). Every value read from it is the back-end's.
struct Buffer(InflightBuffer);

/// An access to the buffer that failed: the back-end's fault (it shrank the fd) is a finding
/// citing `rule`, a local failure a harness error.
fn access_error(ctx: &mut Ctx<'_>, rule: RuleId, e: &InflightError) -> StepError {
    if !e.is_backend_fault() {
        return StepError::Harness(format!("the inflight buffer: {}", crate::engine::chain(e)));
    }
    ctx.fail(
        rule,
        &format!("the inflight buffer cannot be accessed: {e}"),
        "the area GET_INFLIGHT_FD described stays readable and writable in its fd",
        e.to_string(),
    )
}

impl Buffer {
    fn read(&self, at: u64, len: usize) -> Result<Vec<u8>, InflightError> {
        let mut b = vec![0u8; len];
        self.0.read(at, &mut b)?;
        Ok(b)
    }

    fn write(&self, at: u64, data: &[u8]) -> Result<(), InflightError> {
        self.0.write(at, data)
    }

    /// (version, desc_num, used_idx) of queue 0.
    fn header(&self) -> Result<(u16, u16, u16), InflightError> {
        let h = self.read(0, HEADER as usize)?;
        let u16_at = |i: usize| u16::from_ne_bytes([h[i], h[i + 1]]);
        Ok((u16_at(8), u16_at(10), u16_at(14)))
    }

    /// (inflight, counter) of entry `i` of queue 0.
    fn entry(&self, i: u16) -> Result<(u8, u64), InflightError> {
        let e = self.read(HEADER + ENTRY * u64::from(i), ENTRY as usize)?;
        let mut counter = [0u8; 8];
        counter.copy_from_slice(&e[8..16]);
        Ok((e[0], u64::from_ne_bytes(counter)))
    }
}

/// Negotiates with INFLIGHT_SHMFD, gets the buffer for one queue, gives it back. The session
/// checks the description (R-INFL-01): exactly one fd, a size that holds queue 0's region and
/// is bounded, an area that neither wraps nor leaves the fd.
fn inflight_session(ctx: &mut Ctx<'_>) -> Result<(Buffer, u64), StepError> {
    inflight_session_with(ctx, ProtocolFeatures::empty())
}

/// As [`inflight_session`], with `extra` protocol bits negotiated too.
fn inflight_session_with(
    ctx: &mut Ctx<'_>,
    extra: ProtocolFeatures,
) -> Result<(Buffer, u64), StepError> {
    let mut wanted = Wanted::all();
    wanted.protocol |= (ProtocolFeatures::INFLIGHT_SHMFD | extra).bits();
    let r = ctx.session_mut()?.negotiate(&wanted);
    let n = r.map_err(|e| ctx.session_error(id::R_INFL_01, e))?;
    let qs = ctx.queue_size();
    let r = ctx.session_mut()?.get_inflight_fd(1, qs);
    let buf = r.map_err(|e| match e {
        // The description or its fd (not the framing): R-INFL-01's own departure.
        SessionError::BadReply {
            reason, message, ..
        } if is_inflight_description(&reason) => ctx.fail(
            id::R_INFL_01,
            &format!("GET_INFLIGHT_FD did not hand out a usable buffer: {reason}"),
            "exactly one fd (a memfd) and an area (mmap_offset, mmap_size) that holds the queues \
             asked for, is bounded, does not wrap and lies inside the fd",
            format!("{reason}; header {:?}", message.header),
        ),
        e => ctx.session_error(id::R_INFL_01, e),
    })?;
    let r = ctx.session_mut()?.set_inflight_fd(&buf);
    r.map_err(|e| ctx.session_error(id::R_INFL_03, e))?;
    Ok((Buffer(buf), n.features))
}

/// Whether a bad GET_INFLIGHT_FD reply is about the description or its fd (not the framing).
fn is_inflight_description(v: &ReplyViolation) -> bool {
    matches!(
        v,
        ReplyViolation::NotInflightDesc(_)
            | ReplyViolation::InflightFds { .. }
            | ReplyViolation::UnusableInflight(_)
    )
}

/// The buffer tracks completed requests (R-INFL-02, R-INFL-04).
#[derive(Debug)]
pub struct Bookkeeping;

/// What [`Bookkeeping`] declares.
const BOOKKEEPING_META: BuiltinMeta = BuiltinMeta {
    id: "inflight/bookkeeping",
    title: "The inflight buffer is initialised (version 1) and tracks completions: used_idx follows the ring, nothing left in flight",
    rules: &[id::R_INFL_04, id::R_INFL_02],
    requires: Needs::protocol(&["INFLIGHT_SHMFD"]),
    device: Some(crate::device::DeviceType::Block),
    description: "GET_INFLIGHT_FD for one queue of 128, SET_INFLIGHT_FD with it, queue 0 started, three \
GET_ID requests completed. Queue 0's region (read through the memfd) must then say version 1, \
desc_num 128, used_idx 3, every entry out of flight, and the heads used carry counters.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for Bookkeeping {
    fn meta(&self) -> &'static BuiltinMeta {
        &BOOKKEEPING_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let qs = ctx.queue_size();
        let (buf, features) = inflight_session(ctx)?;
        let mut mem = default_memory(ctx)?;
        let mut q = start_queue(ctx, &mut mem, features, id::R_VRING_01, |_| {})?;
        let timeout = ctx.step_timeout();
        let mut heads = Vec::new();
        for _ in 0..3 {
            let p = blk::blk_submit(&mut q, &mut mem, BlkReq::get_id())
                .map_err(|e| StepError::Harness(crate::engine::chain(&e)))?;
            heads.push(p.head());
            let r = blk::blk_complete(&mut q, &mut mem, p, timeout);
            if !matches!(&r, Ok(o) if o.status == vhu_protocol::virtio::blk::S_OK) {
                return Err(ctx.fail(
                    id::R_INFL_04,
                    "a request did not complete with inflight tracking on",
                    "the request completes",
                    format!("{r:?}"),
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(20));
        let read = |buf: &Buffer| -> Result<_, InflightError> {
            let header = buf.header()?;
            let in_flight = (0..qs)
                .map(|i| buf.entry(i).map(|e| (i, e.0)))
                .collect::<Result<Vec<_>, _>>()?;
            let counters = heads
                .iter()
                .map(|&h| buf.entry(h).map(|e| e.1))
                .collect::<Result<Vec<u64>, _>>()?;
            Ok((header, in_flight, counters))
        };
        let ((version, desc_num, used_idx), in_flight, counters) =
            read(&buf).map_err(|e| access_error(ctx, id::R_INFL_02, &e))?;
        let mut problems = Vec::new();
        if version != 1 {
            problems.push(format!("version {version}, not 1 (R-INFL-02)"));
        }
        if desc_num != qs {
            problems.push(format!("desc_num {desc_num}, not {qs}"));
        }
        if used_idx != 3 {
            problems.push(format!("used_idx {used_idx} after 3 completions"));
        }
        for (i, flag) in in_flight {
            if flag != 0 {
                problems.push(format!("entry {i} still marked in flight"));
            }
        }
        if counters.iter().all(|&c| c == 0) {
            problems.push(format!("the used heads {heads:?} carry no counter"));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(ctx.fail(
            id::R_INFL_04,
            &format!("the inflight buffer does not track the ring: {}", problems.join("; ")),
            "version 1, desc_num = queue size, used_idx = the used index, no entry in flight",
            format!("header (version {version}, desc_num {desc_num}, used_idx {used_idx}), counters of heads {heads:?}: {counters:?}"),
        ))
    }
}

/// A request in flight when the front-end left is completed exactly once after it comes back
/// (R-INFL-05).
#[derive(Debug)]
pub struct ResubmitAfterReconnect;

/// What [`ResubmitAfterReconnect`] declares.
const RESUBMIT_AFTER_RECONNECT_META: BuiltinMeta = BuiltinMeta {
    id: "inflight/resubmit-after-reconnect",
    title: "A request recorded in flight is resubmitted after a reconnect and completed exactly once",
    rules: &[id::R_INFL_05],
    requires: Needs::protocol(&["INFLIGHT_SHMFD"]),
    device: Some(crate::device::DeviceType::Block),
    description: "One GET_ID completes; GET_VRING_BASE stops the ring (base 1). A second GET_ID is made \
available and recorded in the inflight buffer as taken (inflight = 1, the next counter), as a \
back-end that died while serving it would have left it; the front-end disconnects. On a new \
connection: SET_INFLIGHT_FD with the same buffer, the same memory and ring from base 2 (the \
request already taken). The back-end must complete that request from the inflight record, once: \
used index 2 and no further completion.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for ResubmitAfterReconnect {
    fn meta(&self) -> &'static BuiltinMeta {
        &RESUBMIT_AFTER_RECONNECT_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let qs = ctx.queue_size();
        let (buf, features) = inflight_session(ctx)?;
        let mut mem = default_memory(ctx)?;
        let mut q = start_queue(ctx, &mut mem, features, id::R_VRING_01, |_| {})?;
        let timeout = ctx.step_timeout();
        let first = blk::blk_request(&mut q, &mut mem, BlkReq::get_id(), timeout);
        if !matches!(&first, Ok(o) if o.status == vhu_protocol::virtio::blk::S_OK) {
            return Err(ctx.fail(
                id::R_INFL_05,
                "the first request did not complete",
                "the request completes",
                format!("{first:?}"),
            ));
        }
        let r = ctx.session_mut()?.get_vring_base(0);
        let base = r.map_err(|e| ctx.session_error(id::R_VRING_08, e))?;
        // The ring is stopped: this request stays where it is, and is recorded as taken.
        let pending = blk::blk_submit(&mut q, &mut mem, BlkReq::get_id())
            .map_err(|e| StepError::Harness(crate::engine::chain(&e)))?;
        let head = pending.head();
        // The counters are the back-end's: the largest may be u64::MAX, and the next wraps.
        let counters = (0..qs)
            .map(|i| buf.entry(i).map(|e| e.1))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| access_error(ctx, id::R_INFL_04, &e))?;
        let counter = counters.into_iter().max().unwrap_or(0).wrapping_add(1);
        let mut entry = [0u8; ENTRY as usize];
        entry[0] = 1;
        entry[8..].copy_from_slice(&counter.to_ne_bytes());
        let r = buf.write(HEADER + ENTRY * u64::from(head), &entry);
        r.map_err(|e| access_error(ctx, id::R_INFL_05, &e))?;
        ctx.step(&crate::scenario::Step::of(
            crate::scenario::Action::Disconnect(Default::default()),
        ))?;
        // Skipped, saying why, for a back-end that exits when its front-end leaves.
        ctx.step(&crate::scenario::Step::of(
            crate::scenario::Action::Reconnect(Default::default()),
        ))?;
        // A new connection: the same buffer, memory and ring, from the base after the request.
        let mut wanted = Wanted::all();
        wanted.protocol |= ProtocolFeatures::INFLIGHT_SHMFD.bits();
        let r = ctx.session_mut()?.negotiate(&wanted);
        r.map_err(|e| ctx.session_error(id::R_INFL_05, e))?;
        let r = ctx.session_mut()?.set_inflight_fd(&buf.0);
        r.map_err(|e| ctx.session_error(id::R_INFL_03, e))?;
        let r = ctx.session_mut()?.set_mem_table(&mem);
        r.map_err(|e| ctx.session_error(id::R_MEM_01, e))?;
        // GET_VRING_BASE's answer is the back-end's: a split index wraps at 2^16.
        let resume = (base.num as u16).wrapping_add(1);
        let s = ctx.session_mut()?;
        let r = q
            .reattach(s, &mem, resume)
            .and_then(|()| s.checked(FrontendReq::SetVringEnable, |s| s.set_vring_enable(0, true)));
        r.map_err(|e| ctx.session_error(id::R_INFL_05, e))?;
        let done = blk::blk_complete(&mut q, &mut mem, pending, timeout);
        let o = match done {
            Ok(o) if o.status == vhu_protocol::virtio::blk::S_OK => o,
            other => {
                return Err(ctx.fail(
                    id::R_INFL_05,
                    "the request left in flight was not completed after the reconnect",
                    "the back-end resubmits the request the inflight buffer records and completes it",
                    format!("head {head} (counter {counter}): {other:?}"),
                ));
            }
        };
        // Exactly once: nothing more arrives.
        std::thread::sleep(Duration::from_millis(200));
        let used = q.used_idx(&mem);
        if used != resume {
            return Err(ctx.fail(
                id::R_INFL_05,
                "the request left in flight was completed more than once",
                &format!("used index {resume}: one completion"),
                format!("used index {used}; the completion: {o:?}"),
            ));
        }
        Ok(())
    }
}

/// Requests made available before GET_VRING_BASE_SKIP_DRAIN.
const SKIP_DRAIN_REQUESTS: usize = 8;

/// GET_VRING_BASE_SKIP_DRAIN stops the ring at once and loses no request it took (R-INFL-07).
#[derive(Debug)]
pub struct SkipDrainKeepsTaken;

/// What [`SkipDrainKeepsTaken`] declares.
const SKIP_DRAIN_KEEPS_TAKEN_META: BuiltinMeta = BuiltinMeta {
    id: "inflight/skip-drain-keeps-taken",
    title: "GET_VRING_BASE_SKIP_DRAIN stops the ring at once, every request it took is used or recorded in flight, and a restart completes them all",
    rules: &[id::R_INFL_07],
    requires: Needs::protocol(&[
        "INFLIGHT_SHMFD",
        "GET_VRING_BASE_INFLIGHT",
        "GET_VRING_BASE_SKIP_DRAIN",
    ]),
    device: Some(crate::device::DeviceType::Block),
    description: "With INFLIGHT_SHMFD, GET_VRING_BASE_INFLIGHT and GET_VRING_BASE_SKIP_DRAIN (protocol bits \
12, 20, 23) negotiated and the inflight buffer set, 8 GET_ID requests are made available on \
queue 0: four kicked and given up to the step timeout to complete, then four made available \
without a kick, and GET_VRING_BASE_SKIP_DRAIN follows at once. The ring stops without \
draining: from the reply on the used index must not move. Every request the back-end took (the \
returned base counts them) must be either used or marked in flight in the inflight buffer; none \
may be lost. Then the ring restarts on the same connection (SET_INFLIGHT_FD with the same \
buffer, SET_VRING_BASE at the returned base, kick): every request not yet used must complete, \
the ones in flight resubmitted from the buffer.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for SkipDrainKeepsTaken {
    fn meta(&self) -> &'static BuiltinMeta {
        &SKIP_DRAIN_KEEPS_TAKEN_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let extra =
            ProtocolFeatures::GET_VRING_BASE_INFLIGHT | ProtocolFeatures::GET_VRING_BASE_SKIP_DRAIN;
        let (buf, features) = inflight_session_with(ctx, extra)?;
        let mut mem = default_memory(ctx)?;
        let mut q = start_queue(ctx, &mut mem, features, id::R_VRING_01, |_| {})?;
        let timeout = ctx.step_timeout();
        let avail_start = q.avail_idx();
        let used_start = q.used_idx(&mem);
        let mark = mem.mark();
        let n = SKIP_DRAIN_REQUESTS.min(usize::from(ctx.queue_size() / 3));
        let mut heads = Vec::with_capacity(n);
        let mut done: Vec<u32> = Vec::new();
        for i in 0..n {
            // The first half is kicked, and given time to complete (a back-end still serving
            // it when the stop arrives holds it in flight); the second half is not kicked: it
            // is available and untaken when the stop arrives at a back-end that serves kicks
            // (one that polls may take it: allowed).
            if i == n / 2
                && let Ok(used) = q.wait_used(&mem, i, timeout)
            {
                done.extend(used.iter().map(|u| u.id));
            }
            let req = if i < n / 2 {
                BlkReq::get_id()
            } else {
                BlkReq::get_id().unkicked()
            };
            let p = blk::blk_submit(&mut q, &mut mem, req)
                .map_err(|e| StepError::Harness(crate::engine::chain(&e)))?;
            heads.push(p.head());
        }
        let r = ctx.session_mut()?.get_vring_base_skip_drain(0);
        let at_reply = q.used_idx(&mem);
        let state = r.map_err(|e| ctx.session_error(id::R_INFL_07, e))?;
        ctx.mark(id::R_INFL_07);
        // Stopped at once: nothing is used after the reply.
        std::thread::sleep(Duration::from_millis(100));
        let later = q.used_idx(&mem);
        if later != at_reply {
            return Err(ctx.fail(
                id::R_INFL_07,
                "requests kept completing after GET_VRING_BASE_SKIP_DRAIN replied",
                "the ring stopped when the reply was sent: the used index no longer moves",
                format!("used index {at_reply} at the reply, {later} 100 ms later"),
            ));
        }
        let base = state.num as u16;
        let taken = usize::from(base.wrapping_sub(avail_start));
        let used = usize::from(later.wrapping_sub(used_start));
        if taken > n || used > taken {
            return Err(ctx.fail(
                id::R_INFL_07,
                "GET_VRING_BASE_SKIP_DRAIN returned a base that does not fit the ring",
                &format!("a base from {avail_start} to {} (the requests made available), at least the used count", avail_start.wrapping_add(n as u16)),
                format!("base {base}; {used} of {n} requests used"),
            ));
        }
        let rest = q
            .wait_used(&mem, used - done.len(), Duration::ZERO)
            .map_err(|e| StepError::Harness(crate::engine::chain(&e)))?;
        done.extend(rest.iter().map(|u| u.id));
        let mut in_flight = Vec::new();
        for &h in &heads {
            if done.contains(&u32::from(h)) {
                continue;
            }
            let (flag, _) = buf
                .entry(h)
                .map_err(|e| access_error(ctx, id::R_INFL_07, &e))?;
            if flag != 0 {
                in_flight.push(h);
            }
        }
        if used + in_flight.len() < taken {
            return Err(ctx.fail(
                id::R_INFL_07,
                "requests taken before GET_VRING_BASE_SKIP_DRAIN were neither completed nor recorded in flight: they are lost",
                "every request the returned base counts as taken is used, or marked in flight in the inflight buffer",
                format!("base {base}: {taken} taken; {used} used (heads {done:?}), {} in flight (heads {in_flight:?})", in_flight.len()),
            ));
        }
        ctx.note(format!(
            "GET_VRING_BASE_SKIP_DRAIN returned base {base}: {taken} of {n} requests taken, {used} used, {} in flight",
            in_flight.len()
        ));
        // Restart on the same connection from the returned base.
        let r = ctx.session_mut()?.set_inflight_fd(&buf.0);
        r.map_err(|e| ctx.session_error(id::R_INFL_03, e))?;
        let s = ctx.session_mut()?;
        let r = q
            .reattach(s, &mem, base)
            .and_then(|()| s.checked(FrontendReq::SetVringEnable, |s| s.set_vring_enable(0, true)));
        r.map_err(|e| ctx.session_error(id::R_INFL_07, e))?;
        q.kick();
        let rest = n - used;
        if let Err(e) = q.wait_used(&mem, rest, timeout) {
            return Err(ctx.fail(
                id::R_INFL_07,
                "after the restart, the requests GET_VRING_BASE_SKIP_DRAIN left did not all complete",
                &format!("the {} in flight resubmitted from the buffer and the {} not taken processed: {rest} completions", in_flight.len(), n - taken),
                crate::engine::chain(&e),
            ));
        }
        mem.release(mark);
        Ok(())
    }
}
