//! The connection a scenario runs on: the session (opened on first use, again after a
//! `reconnect`), what it sent and received so far, and the back-end channel's requests.

use super::*;

impl Ctx<'_> {
    /// The session, connecting first when there is none.
    pub fn session_mut(&mut self) -> Result<&mut Session, StepError> {
        self.session()
    }

    /// Forgets the session's rings and device state and keeps its transcript; the session, for
    /// a caller that ends it otherwise than by dropping it.
    pub(super) fn archive_session(&mut self) -> Option<Session> {
        self.queues.clear();
        self.pending.clear();
        self.idle.clear();
        self.net = net::NetState::default();
        self.rng = rng::RngState::default();
        self.fs.new_session();
        self.vsock.new_session();
        self.iotlb = iotlb::IotlbState::default();
        self.console = console::ConsoleState::default();
        self.input = input::InputState::default();
        self.sound = sound::SoundState::default();
        self.gpu = gpu::GpuState::default();
        if let Some(s) = self.session.take() {
            if s.received() > 0 {
                // Every reply the session took passed its framing checks.
                for rule in [
                    id::R_WIRE_01,
                    id::R_WIRE_02,
                    id::R_WIRE_03,
                    id::R_WIRE_05,
                    id::R_ACK_09,
                ] {
                    self.mark(rule);
                }
            }
            let base = self.archive.len() as u64;
            self.archive
                .extend(s.transcript().entries.into_iter().map(|mut e| {
                    e.seq += base;
                    e
                }));
            return Some(s);
        }
        None
    }

    pub(super) fn transcript_tail(&self, n: usize) -> Vec<Entry> {
        let mut all = self.archive.clone();
        if let Some(s) = &self.session {
            all.extend(s.transcript().entries);
        }
        all[all.len().saturating_sub(n)..].to_vec()
    }

    pub(super) fn last_sent(&self) -> String {
        self.last_sent_where(|_| true)
            .unwrap_or_else(|| "nothing yet".into())
    }

    /// The last message with request `code` sent to the back-end, rendered.
    pub(super) fn sent_of(&self, code: u32) -> String {
        self.last_sent_where(|e| e.code == code && e.fds > 0)
            .or_else(|| self.last_sent_where(|e| e.code == code))
            .unwrap_or_else(|| self.last_sent())
    }

    /// The last message sent to the back-end that `pick` accepts, rendered.
    pub(super) fn last_sent_where(&self, pick: impl Fn(&Entry) -> bool) -> Option<String> {
        self.transcript_tail(200)
            .iter()
            .rev()
            .find(|e| e.direction == Direction::ToBackend && pick(e))
            .map(|e| render(std::slice::from_ref(e)).trim().to_string())
    }

    /// Every request received on the back-end channel so far.
    pub(super) fn channel_records(&self) -> Vec<vhu_mock_frontend::channel::BackendRecord> {
        self.session
            .as_ref()
            .and_then(|s| s.channel())
            .map(|c| c.requests())
            .unwrap_or_default()
    }

    /// Waits (without polling) until `done` holds for the back-end channel's requests, the
    /// channel closes or `deadline` passes; the requests at the end.
    pub(super) fn wait_channel(
        &self,
        deadline: Instant,
        done: impl Fn(&[vhu_mock_frontend::channel::BackendRecord]) -> bool,
    ) -> Vec<vhu_mock_frontend::channel::BackendRecord> {
        match self.session.as_ref().and_then(|s| s.channel()) {
            Some(c) => c.wait_for(deadline, done).0,
            None => Vec::new(),
        }
    }

    /// The back-end being judged: the fresh process if a `new_process` step started one.
    pub(super) fn inst(&mut self) -> &mut Instance {
        match &mut self.fresh {
            Some(i) => i,
            None => self.inst,
        }
    }

    /// A session over a new connection, with this run's timeouts.
    pub(super) fn new_session(&self, stream: std::os::unix::net::UnixStream) -> Session {
        crate::engine::session::open(stream, self.opts.step_timeout)
    }

    pub(super) fn session(&mut self) -> Result<&mut Session, StepError> {
        if self.session.is_none() {
            let stream = self
                .inst()
                .connect()
                .map_err(|e| StepError::Harness(chain(&e)))?;
            let mut s = self.new_session(stream);
            if std::mem::take(&mut self.fresh_start) {
                // A slow starter's first reply (DPDK: about 1 s) must not eat the step timeout.
                let allowance = (self.offer.first_reply * 2).min(self.opts.connect_timeout);
                if allowance > self.opts.step_timeout / 4 {
                    s.set_reply_timeout(self.opts.step_timeout + allowance);
                    self.first_reply_pending = true;
                }
            }
            self.session = Some(s);
        }
        let s = self.session.as_mut().expect("just set");
        if self.first_reply_pending && s.received() > 0 {
            s.set_reply_timeout(self.opts.step_timeout);
            self.first_reply_pending = false;
        }
        Ok(s)
    }

    pub(super) fn probe(&mut self, step: &Step) -> StepResult {
        let r = self.session()?.get_features();
        r.map(drop).map_err(|e| self.session_failed(step, e))
    }

    pub(super) fn reconnect(&mut self, step: &Step) -> StepResult {
        self.archive_session();
        match self.inst().connect() {
            Ok(stream) => {
                // The socket accepts a new front-end after one left.
                self.reconnected = true;
                self.mark(id::R_ROB_09);
                self.session = Some(self.new_session(stream));
                Ok(())
            }
            Err(e) => {
                match self.gone(
                    id::R_ROB_09,
                    Duration::from_millis(300),
                    "the front-end left",
                ) {
                    Some(StepError::Ended(_)) => {
                        let st = self.inst().state();
                        return Err(StepError::NotApplicable(format!(
                            "the back-end exits when its front-end leaves ({st}), a policy the spec \
                             allows (R-ROB-09, reported by session/serves-after-disconnect); this \
                             scenario needs a reconnect to the same process"
                        )));
                    }
                    Some(e) => return Err(e),
                    None => {}
                }
                let st = self.inst().state();
                let received = format!(
                    "{}; {}",
                    chain(&e),
                    describe_exit(&st, &self.inst().stderr_tail(400))
                );
                Err(self.fail(
                    step.rule.unwrap_or(id::R_ROB_09),
                    "the back-end does not accept a new connection after a disconnect",
                    "a new front-end connection is served",
                    received,
                ))
            }
        }
    }
}
