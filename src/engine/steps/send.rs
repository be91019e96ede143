//! Free-form steps: any request with a body (`send`), raw bytes (`raw`), and how an ack, a
//! reply or a closed connection is judged against the step's expectation.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use vhu_mock_frontend::{Ack, Session, SessionError};
use vhu_protocol::wire::ReplyKind;
use vhu_protocol::wire::payload::{Body, BodyKind, ConfigHeader};
use vhu_protocol::{FrontendReq, Header, Message, RawMessage};

use super::{Ctx, StepError, StepResult};
use crate::engine::chain;
use crate::scenario::Expect;
use crate::scenario::model::{BodyQueue, FdKind, RawArgs, SendArgs, Step};

impl Ctx<'_> {
    pub(super) fn send(&mut self, step: &Step, a: &SendArgs) -> StepResult {
        let req = a.request.0;
        let mut body = build_body(req, a, self.offer.device)?;
        if a.queue == Some(BodyQueue::PastEnd) {
            // The first index past the rings GET_QUEUE_NUM's answer stands for, under the
            // device's reading (or every reading, when the type is unknown) (R-MQ-04).
            let idx = self.index_past_end(&body)?;
            self.mark(crate::rules::id::R_VRING_17);
            self.mark(crate::rules::id::R_MQ_04);
            match &mut body {
                Body::VringState(v) => v.index = idx,
                Body::VringAddr(a) => a.index = idx,
                Body::U64(v) => *v = (*v & !0xff) | u64::from(idx),
                _ => {}
            }
        }
        let extra = make_fds(a.fds.unwrap_or(0), a.fd_kind.unwrap_or_default())?;
        let fds: Vec<BorrowedFd<'_>> = extra.sent.iter().map(AsFd::as_fd).collect();
        let r = self.session()?.request(req, &body, &fds, a.need_reply);
        drop(fds);
        drop(extra.sent);
        let default = if req.reply_kind() == ReplyKind::Always {
            Expect::Reply
        } else {
            Expect::Ok
        };
        let expect = step.expect.unwrap_or(default);
        match (expect, r) {
            (Expect::Reply, Ok(Some(m))) => {
                if let Body::Config(h, _) = &body {
                    self.check_config_reply(a, h, &m)?;
                }
                if req == FrontendReq::GetShmemConfig {
                    // The session validated its count and sizes on the way in.
                    self.mark(crate::rules::id::R_SHM_02);
                    self.mark(crate::rules::id::R_SHM_03);
                }
                self.check_value(step, a, &m)?;
            }
            (Expect::Reply, Ok(None)) => return Err(StepError::Harness("expect = \"reply\" on a request sent without NEED_REPLY that has no reply of its own".into())),
            (Expect::NoReply, Ok(None)) => {
                self.mark(self.rule_of(step));
                match self.no_reply(a.window_ms)? {
                    Ok(()) => {}
                    // Closing is not "a message arrived": judged as a close during the step.
                    Err(e @ SessionError::Closed { .. }) => {
                        return Err(self.session_failed(step, e));
                    }
                    Err(e) => {
                        return Err(self.finding(step, "a message arrived although no reply was due", "no reply at all without NEED_REPLY", e.to_string()));
                    }
                }
            }
            (_, Ok(m)) => {
                let ack = m.as_ref().map_or(Ack::NotRequested, |m| match m.u64() {
                    Some(0) => Ack::Ok,
                    Some(v) => Ack::Failed(v),
                    None => Ack::Failed(u64::MAX),
                });
                if let Some(m) = &m {
                    self.check_value(step, a, m)?;
                }
                self.judge_ack(step, Ok(ack), expect)?;
            }
            (_, Err(e)) => self.judge_ack(step, Err(e), expect)?,
        }
        if let Some(read_end) = extra.pipe_read {
            self.check_fd_closed(step, &read_end, Some(req as u32))?;
        }
        Ok(())
    }

    /// R-CFG-01: a GET_CONFIG reply has exactly the 12-byte header and the size asked, with
    /// the offset echoed. The error form (an empty payload, or a header whose size is 0:
    /// R-CFG-02, both readings accepted) is never a departure here: a back-end's config space
    /// may be smaller than the virtio layout (fields later features add), which the spec allows.
    fn check_config_reply(
        &mut self,
        a: &SendArgs,
        asked: &ConfigHeader,
        m: &Message,
    ) -> StepResult {
        use crate::rules::id;
        if a.reply_size.is_some() {
            return Ok(());
        }
        self.mark(id::R_CFG_01);
        let want = 12 + asked.size as usize;
        let echoed = m.payload.get(..4) == Some(&asked.offset.to_ne_bytes()[..]);
        if m.payload.len() == want && echoed {
            return Ok(());
        }
        let error_form = m.payload.is_empty()
            || (m.payload.len() >= 12 && m.payload.get(4..8) == Some(&[0u8; 4][..]));
        if error_form {
            self.notes.push(format!(
                "step {}: GET_CONFIG of {} bytes at offset {} answered with the error form ({} payload bytes): the config space is smaller, or the range refused",
                self.step_no,
                asked.size,
                asked.offset,
                m.payload.len()
            ));
            return Ok(());
        }
        Err(self.fail(
            id::R_CFG_01,
            &format!(
                "GET_CONFIG of {} bytes at offset {} answered {} payload bytes{}",
                asked.size,
                asked.offset,
                m.payload.len(),
                if echoed { "" } else { ", offset not echoed" }
            ),
            &format!("{want} payload bytes (12-byte header + the size asked), the offset echoed; or the error form"),
            format!("header {:?}, payload {:02x?}", m.header, m.payload),
        ))
    }

    /// The reply checks a `send` step gives (value, size, flags, fds, config bytes).
    pub(super) fn check_value(&mut self, step: &Step, a: &SendArgs, m: &Message) -> StepResult {
        self.mark(self.rule_of(step));
        let mut problems = Vec::new();
        if let Some(hex) = a
            .config_hex
            .as_ref()
            .filter(|_| m.header.request == FrontendReq::GetConfig as u32)
        {
            let want = &hex.0;
            let got = m.payload.get(12..).unwrap_or_default();
            if got != want.as_slice() {
                problems.push(format!("config bytes {got:02x?}, wanted {want:02x?}"));
            }
        }
        if let Some(size) = a.reply_size.filter(|&s| s as usize != m.payload.len()) {
            problems.push(format!(
                "reply payload is {} bytes, wanted {size}",
                m.payload.len()
            ));
        }
        if let Some(n) = a.reply_fds.filter(|&n| n != m.fds.len()) {
            problems.push(format!("reply carries {} fds, wanted {n}", m.fds.len()));
        }
        if let Some(flags) = a.reply_flags.filter(|&f| f != m.header.flags) {
            problems.push(format!(
                "reply flags are {:#x}, wanted exactly {flags:#x}",
                m.header.flags
            ));
        }
        let v = m.u64();
        if let Some(want) = a.value.filter(|&w| v != Some(w)) {
            problems.push(format!("reply value {v:?}, wanted {want:#x}"));
        }
        if let Some(mask) = a.value_mask.filter(|&k| v.is_none_or(|v| v & k != k)) {
            problems.push(format!("reply value {v:?} lacks bits {mask:#x}"));
        }
        if a.offered == Some(true) {
            let offer = self.session.as_ref().and_then(Session::offered_features);
            if offer.is_some() && v != offer {
                problems.push(format!(
                    "reply value {v:#x?}, but the first GET_FEATURES offered {offer:#x?}"
                ));
            }
        }
        if a.error_code == Some(true) && v.is_none_or(|v| v & 0xff == 0) {
            problems.push(format!(
                "reply value {v:#x?}: bits 0-7 (the error code) are 0, a success"
            ));
        }
        if a.nonzero == Some(true) && v.is_none_or(|v| v == 0) {
            problems.push(format!("reply value {v:?}, wanted non-zero"));
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(self.finding(
            step,
            &problems.join("; "),
            "the reply the rule describes",
            format!("header {:?}, payload {:02x?}", m.header, m.payload),
        ))
    }

    pub(super) fn check_fd_closed(
        &mut self,
        step: &Step,
        read_end: &OwnedFd,
        code: Option<u32>,
    ) -> StepResult {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let deadline = Instant::now() + self.opts.step_timeout;
        loop {
            let mut pfd = [PollFd::new(read_end.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut pfd, PollTimeout::from(50u8));
            let hup = pfd[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR));
            if hup {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let mut e = self.finding(
                    step,
                    "the back-end kept the fd it was sent (never closed: a leak)",
                    "the fd is closed (EOF on our pipe's read end)",
                    format!("no EOF within {:?}", self.opts.step_timeout),
                );
                // Name the message that carried the fd, not a probe sent since.
                if let Some(code) = code {
                    e = e.about(self.sent_of(code));
                }
                return Err(e);
            }
        }
    }

    pub(super) fn raw(&mut self, step: &Step, a: &RawArgs) -> StepResult {
        let body = a.payload_hex.clone().unwrap_or_default().0;
        let header = Header {
            request: a.request.0,
            flags: a.flags.unwrap_or(1),
            size: a.header_size.unwrap_or(body.len() as u32),
        };
        let extra = make_fds(a.fds.unwrap_or(0), a.fd_kind.unwrap_or_default())?;
        let fds: Vec<BorrowedFd<'_>> = extra.sent.iter().map(AsFd::as_fd).collect();
        let r = self
            .session()?
            .send_raw(&RawMessage::new(header, body), &fds);
        drop(fds);
        drop(extra.sent);
        if let Err(e) = r {
            return self.judge_ack(step, Err(e), step.expect.unwrap_or(Expect::Alive));
        }
        match step.expect.unwrap_or(Expect::Alive) {
            Expect::NoReply => {
                self.mark(self.rule_of(step));
                let r = self.no_reply(a.window_ms)?;
                r.map_err(|e| self.session_failed(step, e))
            }
            Expect::Alive => {
                if a.window_ms.is_none() {
                    // Answered at once: GET_FEATURES comes back, whatever came before it.
                    let t = self.opts.step_timeout;
                    if self.session()?.round_trip(t).is_ok() {
                        self.mark(self.rule_of(step));
                        return Ok(());
                    }
                } else {
                    let window = Duration::from_millis(a.window_ms.unwrap_or_default());
                    let _ = self.session()?.recv_any(window);
                }
                self.alive(step)
            }
            expect => {
                let t = self.opts.step_timeout;
                let r = self.session()?.recv_any(t);
                let ack = r.map(|m| match m.u64() {
                    Some(0) => Ack::Ok,
                    Some(v) => Ack::Failed(v),
                    None => Ack::Failed(u64::MAX),
                });
                self.judge_ack(step, ack, expect)
            }
        }
    }

    /// Nothing answers what was sent: by a GET_FEATURES round trip (its reply must come first),
    /// or, when the step gives `window_ms`, by waiting out that window.
    fn no_reply(&mut self, window_ms: Option<u64>) -> Result<Result<(), SessionError>, StepError> {
        let t = self.opts.step_timeout;
        let s = self.session()?;
        Ok(match window_ms {
            Some(ms) => s.expect_silence(Duration::from_millis(ms)),
            None => s
                .round_trip(t)
                .and_then(|before| match before.into_iter().next() {
                    None => Ok(()),
                    Some(m) => Err(SessionError::UnexpectedMessage {
                        message: Box::new(m),
                    }),
                }),
        })
    }

    /// The back-end still serves: on this connection if it is open, else on a new one.
    pub(super) fn alive(&mut self, step: &Step) -> StepResult {
        if !Self::is_setup(step) {
            self.mark(self.rule_of(step));
        }
        // A finding names the message before the probe, not the probe itself.
        let trigger = self.last_sent();
        self.alive_probe(step).map_err(|e| e.about(trigger))
    }

    pub(super) fn alive_probe(&mut self, step: &Step) -> StepResult {
        let trigger = self.last_sent();
        if self.session()?.get_features().is_ok() {
            return Ok(());
        }
        self.archive_session();
        if let Some(e) = self.gone(self.rule_of(step), Duration::from_millis(200), &trigger) {
            return Err(e);
        }
        let probe = match self.inst().connect() {
            Ok(stream) => {
                let mut s = self.new_session(stream);
                let r = s.get_features();
                self.session = Some(s);
                r.map(drop).map_err(|e| e.to_string())
            }
            Err(e) => Err(chain(&e)),
        };
        probe.map_err(|why| {
            self.finding(
                step,
                "the back-end no longer answers (liveness probe failed)",
                "a GET_FEATURES round trip answers after the message",
                why,
            )
        })
    }

    /// Judges an ack-only outcome against the expectation.
    pub(super) fn judge_ack(
        &mut self,
        step: &Step,
        r: Result<Ack, SessionError>,
        default: Expect,
    ) -> StepResult {
        let expect = step.expect.unwrap_or(default);
        let wants_failure = matches!(expect, Expect::AckFail | Expect::Rejected | Expect::Closed);
        let rule = self.rule_of(step);
        if !Self::is_setup(step) {
            self.mark(rule);
        }
        if wants_failure && matches!(r, Ok(Ack::Ok | Ack::Failed(_))) {
            // The ack of a message that must fail is judged: non-zero (R-ACK-04).
            self.mark(crate::rules::id::R_ACK_04);
        }
        match r {
            Ok(Ack::Ok) if wants_failure => {
                // An ack of 0 followed by the connection closing is a refusal whose ack lied.
                let trigger = self.last_sent();
                let closed = matches!(
                    self.session()?.get_features(),
                    Err(SessionError::Closed { .. })
                );
                if closed {
                    self.archive_session();
                    if let Some(e @ StepError::Finding(_)) =
                        self.gone(rule, Duration::from_millis(200), &trigger)
                    {
                        return Err(e);
                    }
                    let e = self.fail(
                        crate::rules::id::R_ACK_04,
                        "the back-end acked 0 (success) and then closed the connection: it refused the message but its ack said it succeeded",
                        "a non-zero ack for a refused message",
                        "ack 0, then the connection closed".into(),
                    );
                    return Err(e.about(trigger));
                }
                let e = self.finding(
                    step,
                    "the back-end acked 0 (success) where the rule requires a failure",
                    "a non-zero ack, or the connection closed",
                    "ack 0".into(),
                );
                // Name the message acked, not the probe sent since.
                Err(e.about(trigger))
            }
            Ok(Ack::Failed(v)) if !wants_failure && expect != Expect::Alive => {
                if Self::is_setup(step) {
                    return Err(self.refused_setup(step, format!("ack {v}")));
                }
                Err(self.finding(
                    step,
                    &format!("the back-end acked {v} (failure) for a valid request"),
                    "an ack of 0",
                    format!("ack {v}"),
                ))
            }
            Ok(Ack::NotRequested) if wants_failure => {
                // Without an ack, a refusal shows only as the connection closing: a round
                // trip tells (messages are handled in order).
                let trigger = self.last_sent();
                match self.session()?.get_features() {
                    Err(SessionError::Closed { .. }) => {
                        self.archive_session();
                        if self.inst().is_spawned()
                            && let Some(e) = self.gone(rule, Duration::from_millis(200), &trigger)
                        {
                            return Err(e);
                        }
                        Ok(())
                    }
                    Ok(_) if expect == Expect::Closed => {
                        let e = self.finding(
                            step,
                            "the connection stayed open",
                            "the back-end closes the connection",
                            "no ack could be asked for (REPLY_ACK not negotiated), and a GET_FEATURES after it was answered".into(),
                        );
                        Err(e.about(trigger))
                    }
                    Ok(_) => {
                        self.notes.push(format!("step {}: no ack could be asked for (REPLY_ACK not negotiated) and the connection stayed open; a rejection is not observable", self.step_no));
                        Ok(())
                    }
                    Err(e) => Err(self.session_failed(step, e)),
                }
            }
            Ok(_) if expect == Expect::Alive => self.alive(step),
            Ok(_) if expect == Expect::Closed => Err(self.finding(
                step,
                "the connection stayed open",
                "the back-end closes the connection",
                "an ack".into(),
            )),
            Ok(_) => Ok(()),
            Err(SessionError::Closed { .. }) if wants_failure || expect == Expect::Alive => {
                let trigger = self.last_sent();
                self.archive_session();
                if self.inst().is_spawned()
                    && let Some(e) = self.gone(rule, Duration::from_millis(200), &trigger)
                {
                    return Err(e);
                }
                if expect == Expect::Alive {
                    self.alive(step)
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(self.session_failed(step, e)),
        }
    }
}

/// The typed body of a `send` step, from its `body` table (the payload struct's field names).
fn build_body(
    req: FrontendReq,
    a: &SendArgs,
    device: Option<crate::device::DeviceType>,
) -> Result<Body, StepError> {
    let mut table = a.body.clone().unwrap_or_default();
    if req.request_body() == BodyKind::Config {
        config_sizes(&mut table, device)?;
    }
    let bad = |e: toml::de::Error| StepError::Harness(format!("body of {}: {e}", req.spec_name()));
    let v = toml::Value::Table(table);
    Ok(match req.request_body() {
        BodyKind::Empty => Body::Empty,
        BodyKind::U64 => Body::U64(
            v.try_into::<vhu_protocol::wire::payload::U64>()
                .map_err(bad)?
                .value,
        ),
        BodyKind::VringState => Body::VringState(v.try_into().map_err(bad)?),
        BodyKind::VringAddr => Body::VringAddr(v.try_into().map_err(bad)?),
        BodyKind::SingleRegion => Body::SingleRegion(v.try_into().map_err(bad)?),
        BodyKind::Log => Body::Log(v.try_into().map_err(bad)?),
        BodyKind::Inflight => Body::Inflight(v.try_into().map_err(bad)?),
        BodyKind::DeviceState => Body::DeviceState(v.try_into().map_err(bad)?),
        BodyKind::SharedObject => Body::SharedObject(v.try_into().map_err(bad)?),
        BodyKind::Iotlb => Body::Iotlb(v.try_into().map_err(bad)?),
        BodyKind::Config => {
            let h: ConfigHeader = v.try_into().map_err(bad)?;
            let mut data = vec![0; h.size as usize];
            if req == FrontendReq::SetConfig
                && let Some(hex) = &a.config_hex
            {
                let bytes = &hex.0;
                let n = bytes.len().min(data.len());
                data[..n].copy_from_slice(&bytes[..n]);
            }
            Body::Config(h, data)
        }
        BodyKind::MemTable => Body::MemTable(vec![]),
        other => {
            return Err(StepError::Harness(format!(
                "a `send` body of kind {other:?} is not supported; use a `raw` step"
            )));
        }
    })
}

/// GET_CONFIG / SET_CONFIG bodies may give `offset` and `size` relative to the device's config
/// space: `"config_size"`, `"config_size-4"`, `"config_size+8"` (the size of the part every
/// back-end of the device type has, [`crate::device::DeviceType::config_size`]).
fn config_sizes(
    table: &mut toml::Table,
    device: Option<crate::device::DeviceType>,
) -> Result<(), StepError> {
    for key in ["offset", "size"] {
        let Some(toml::Value::String(expr)) = table.get(key).cloned() else {
            continue;
        };
        let d = device.ok_or_else(|| {
            StepError::NotApplicable(
                "device type unknown: pass --device TYPE (this scenario sizes its request by the device's config space)".into(),
            )
        })?;
        let size = d.config_size().ok_or_else(|| {
            StepError::NotApplicable(format!(
                "the config space size of a {d} device is not known to vhu-conform"
            ))
        })?;
        if size == 0 {
            return Err(StepError::NotApplicable(format!(
                "a {d} device has no config space"
            )));
        }
        let rest = expr.trim().strip_prefix("config_size").ok_or_else(|| {
            StepError::Harness(format!(
                "body `{key}` = {expr:?}: a number or \"config_size[+-N]\""
            ))
        })?;
        let delta: i64 = match rest.trim() {
            "" => 0,
            r => r.replace(' ', "").parse().map_err(|_| {
                StepError::Harness(format!(
                    "body `{key}` = {expr:?}: a number or \"config_size[+-N]\""
                ))
            })?,
        };
        let v = (i64::from(size) + delta).max(0);
        table.insert(key.into(), toml::Value::Integer(v));
    }
    Ok(())
}

struct ExtraFds {
    sent: Vec<OwnedFd>,
    /// Our end of the first pipe or socket pair sent: it reads EOF (hang-up) once the
    /// back-end has closed every copy of the end it was given.
    pipe_read: Option<OwnedFd>,
}

/// Size of a memfd sent as an extra fd: large enough for the regions scenarios describe, so
/// a refusal is never just "the fd is smaller than the region" (sparse: costs no memory).
const EXTRA_MEMFD_BYTES: u64 = 2 << 20;

/// `n` fds of `kind` to attach to a message, and our end of a pipe or socket pair among them.
fn make_fds(n: usize, kind: FdKind) -> Result<ExtraFds, StepError> {
    let mut out = ExtraFds {
        sent: vec![],
        pipe_read: None,
    };
    let local = |what: &str, e: &dyn std::fmt::Display| {
        StepError::Harness(format!("cannot create {what}: {e}"))
    };
    for _ in 0..n {
        match kind {
            FdKind::Pipe => {
                let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| local("a pipe", &e))?;
                out.pipe_read.get_or_insert(r);
                out.sent.push(w);
            }
            FdKind::Memfd => {
                let m = memfd::MemfdOptions::default()
                    .create("vhu-extra")
                    .map_err(|e| local("a memfd", &e))?;
                let file = m.into_file();
                file.set_len(EXTRA_MEMFD_BYTES)
                    .map_err(|e| local("a memfd's size", &e))?;
                out.sent.push(file.into());
            }
            FdKind::Socket => {
                use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
                let (ours, theirs) = socketpair(
                    AddressFamily::Unix,
                    SockType::Stream,
                    None,
                    SockFlag::SOCK_CLOEXEC,
                )
                .map_err(|e| local("a socket pair", &e))?;
                out.pipe_read.get_or_insert(ours);
                out.sent.push(theirs);
            }
            FdKind::Eventfd => {
                let e = EventFd::from_flags(EfdFlags::EFD_CLOEXEC)
                    .map_err(|e| local("an eventfd", &e))?;
                out.sent.push(e.into());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::DeviceType;

    fn table(offset: &str, size: &str) -> toml::Table {
        toml::from_str(&format!("offset = {offset}\nsize = {size}\nflags = 0")).unwrap()
    }

    #[test]
    fn config_bodies_size_themselves_by_the_device() {
        let mut t = table("\"config_size-4\"", "4");
        config_sizes(&mut t, Some(DeviceType::Vsock)).unwrap();
        assert_eq!(t["offset"].as_integer(), Some(4));
        let mut t = table("0", "\"config_size\"");
        config_sizes(&mut t, Some(DeviceType::Block)).unwrap();
        assert_eq!(t["size"].as_integer(), Some(60));
        // Unknown type, no config space, unknown size: not applicable, saying why.
        for (d, why) in [
            (None, "device type unknown"),
            (Some(DeviceType::Rng), "no config space"),
            (Some(DeviceType::Video), "not known"),
        ] {
            let mut t = table("0", "\"config_size\"");
            match config_sizes(&mut t, d) {
                Err(StepError::NotApplicable(r)) => assert!(r.contains(why), "{r}"),
                other => panic!("{other:?}"),
            }
        }
        // A misspelt expression is the scenario's fault, not the back-end's.
        let mut t = table("\"config-size\"", "4");
        assert!(matches!(
            config_sizes(&mut t, Some(DeviceType::Net)),
            Err(StepError::Harness(_))
        ));
    }
}
