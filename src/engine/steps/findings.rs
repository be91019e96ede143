//! How a step's departures become findings: the one constructor ([`Ctx::fail`]), the step's
//! rule and level, session errors sorted into findings, refusals and harness errors, and the
//! back-end's death (a signal is a crash, R-CRASH-01; an exit after a refusal is allowed).

use super::*;

impl Ctx<'_> {
    /// The finding of the check of `rule` that failed, at the scenario's level capped by the
    /// rule's, as the [`StepError`] that stops the scenario: `return Err(ctx.fail(..))`. A
    /// check that lets the scenario go on records it with [`Ctx::record`] instead. This is the
    /// one way a finding is made.
    #[must_use = "a finding stops the scenario (return it) or is recorded (Ctx::record)"]
    pub fn fail(
        &mut self,
        rule: RuleId,
        summary: &str,
        expected: &str,
        received: String,
    ) -> StepError {
        // Behind the IOMMU, a write where only an IOVA taken for a guest address leads
        // explains whatever failed: the device did not translate through the IOTLB (R-MEM-19).
        // Recorded once: `push` drops a second R-MEM-19.
        if let Some(write) = self.guest_addr_write().filter(|_| rule != id::R_MEM_19) {
            return self.fail(
                id::R_MEM_19,
                &format!("{summary}: the device reached guest memory through the region guest addresses"),
                "with ACCESS_PLATFORM every ring and buffer access goes through the IOTLB; the region guest addresses are unused",
                format!("{received}; {write}"),
            );
        }
        StepError::Finding(Box::new(Finding {
            level: self.level_for(rule),
            rule,
            summary: format!("step {}: {summary}", self.step_no),
            sent: self.last_sent(),
            received,
            expected: expected.into(),
            crash: None,
        }))
    }

    /// Records the finding a failed check made and lets the scenario go on; any other
    /// [`StepError`] is dropped (a check that goes on past its own failure has nothing else
    /// to stop).
    pub fn record(&mut self, e: StepError) {
        if let StepError::Finding(f) = e {
            self.push(*f);
        }
    }

    /// Records the finding of a failed check of `rule` and goes on: [`Ctx::fail`], recorded.
    pub fn report(&mut self, rule: RuleId, summary: &str, expected: &str, received: String) {
        let e = self.fail(rule, summary, expected, received);
        self.record(e);
    }

    /// Behind the IOMMU, a write into the decoy region no check reported yet (R-MEM-19;
    /// `push` keeps only the first).
    pub(super) fn report_guest_addr_write(&mut self) {
        if let Some(write) = self.guest_addr_write() {
            self.report(
                id::R_MEM_19,
                "with ACCESS_PLATFORM, the device reached guest memory through the region guest addresses",
                "every ring and buffer access through the IOTLB; the region guest addresses unused",
                write,
            );
        }
    }

    /// Findings for what the back-end sent wrong on the back-end channel (framing, flags,
    /// codes, fd counts: R-WIRE-16, R-BCH-*), seen by the channel's server during the session.
    pub(super) fn report_channel_violations(&mut self) {
        let Some(ch) = self.session.as_ref().and_then(|s| s.channel()) else {
            return;
        };
        let records = ch.requests();
        let violations = ch.violations();
        self.judge_backend_requests(&records);
        let mut seen = std::collections::BTreeSet::new();
        for v in violations {
            let text = v.to_string();
            if !seen.insert(text.clone()) {
                continue;
            }
            self.report(
                crate::engine::violations::channel_rule(&v),
                &format!("on the back-end channel: {text}"),
                "back-end requests framed, flagged and sized as the spec says, with the fds their code takes",
                text,
            );
        }
        self.mark(id::R_WIRE_16);
    }

    /// Records that a check of `rule` ran (a rule is `pass` only when one did and none failed).
    pub fn mark(&mut self, rule: RuleId) {
        self.checked.insert(rule);
    }

    /// Adds a finding to the scenario's; a second R-MEM-19 is dropped (the first explains
    /// every later failure behind the IOMMU).
    pub(super) fn push(&mut self, f: Finding) {
        self.checked.insert(f.rule);
        if f.rule == id::R_MEM_19 && self.findings.iter().any(|g| g.rule == id::R_MEM_19) {
            return;
        }
        self.findings.push(f);
    }

    /// Records an informative note (never a finding).
    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Turns a session error into a finding citing `rule` (a back-end fault) or a harness error.
    pub fn session_error(&mut self, rule: RuleId, e: SessionError) -> StepError {
        let step = Step::of(Action::Probe(NoArgs {})).citing(rule);
        self.session_failed(&step, e)
    }

    /// A session error during a built-in's setup: a refusal (nack or close) makes the
    /// scenario not applicable, as for a file's setup step; anything else is `session_error`.
    pub fn setup_error(&mut self, rule: RuleId, e: SessionError) -> StepError {
        if matches!(e, SessionError::Nack { .. } | SessionError::Closed { .. }) {
            let step = Step::of(Action::Vring(Default::default()));
            return self.refused_setup(&step, e.to_string());
        }
        self.session_error(rule, e)
    }

    /// At the end of a scenario: a crash is a finding (R-CRASH-01) even when no step noticed it;
    /// an exit with a status (after the front-end left, or a policy) is only noted.
    pub(super) fn check_process(&mut self) {
        if self.inst().is_spawned() {
            // The process was watched throughout: a crash could not have gone unseen.
            self.mark(id::R_CRASH_01);
        }
        let st = self.inst().state();
        let Some(death) = st.death() else { return };
        if death.is_crash() {
            if !self.findings.iter().any(|f| f.crash.is_some()) {
                let sent = self.last_sent();
                self.crash_finding(&death, "during the scenario", sent);
            }
            return;
        }
        if self.exit_expected {
            return;
        }
        let reported = self.findings.iter().any(|f| f.received.contains("process"))
            || self.notes.iter().any(|n| n.contains("process"));
        if !reported {
            let tail = self.inst().stderr_tail(400);
            self.notes
                .push(format!("{} during the scenario", describe_exit(&st, &tail)));
        }
    }

    /// Records the R-CRASH-01 finding for a back-end that died by a crash signal.
    pub(super) fn crash_finding(&mut self, death: &Death, when: &str, sent: String) {
        let tail = self.inst().stderr_tail(600);
        let step_no = self.step_no;
        let summary =
            |how: &str| format!("step {step_no}: CRASH: the back-end process died, {how}, {when}");
        if let Some(finding) = crate::engine::crash_finding(death, tail, summary, sent) {
            self.push(finding);
        }
    }

    /// Whether the back-end process has ended, waiting up to `within` (spawn mode). A crash is
    /// recorded (R-CRASH-01, and `rule`'s check fails: the message was not refused cleanly);
    /// an exit with a status is the rejection the spec allows ("it may also close the
    /// connection") taken further: noted, and the scenario ends there.
    pub(super) fn gone(
        &mut self,
        rule: RuleId,
        within: Duration,
        trigger: &str,
    ) -> Option<StepError> {
        let after = &shorten(trigger, 160);
        let st = self.inst().wait_exit(within);
        let death = st.death()?;
        let tail = self.inst().stderr_tail(400);
        match death {
            Death::Crash { .. } => {
                self.crash_finding(&death, &format!("after {after}"), trigger.to_string());
                let e = self.fail(
                    rule,
                    "the back-end crashed instead of handling the message",
                    "the message is refused (or handled) and the back-end keeps running",
                    describe_exit(&st, &tail),
                );
                Some(e.about(trigger.to_string()))
            }
            Death::Exit(code) => {
                let panic = if code == 101 {
                    " (101: a Rust panic)"
                } else {
                    ""
                };
                Some(StepError::Ended(format!(
                    "step {}: the back-end process exited with status {code}{panic} after {after}: \
                     a refusal the spec allows, but the whole daemon went away (robustness){}",
                    self.step_no,
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!("; stderr: {tail}")
                    }
                )))
            }
            Death::Killed(_) => Some(self.fail(
                rule,
                "the back-end process was killed by a signal",
                "the back-end keeps running",
                describe_exit(&st, &tail),
            )),
        }
    }

    /// The rule a step's own expectation checks: its `rule`, else the scenario's first (the
    /// scenario's subject). Intrinsic checks (used lengths, wire framing, crashes) cite their own.
    pub(super) fn rule_of(&self, step: &Step) -> RuleId {
        step.rule.unwrap_or(self.scenario.spec.rules[0])
    }

    /// A finding weighs what its rule says (a SHOULD rule warns even in a MUST scenario); for
    /// the rules the scenario itself cites, never more than the scenario's level either (a
    /// scenario graded `rob` probes where the spec is silent). A rule the scenario does not cite
    /// is an intrinsic check (an ack that lied, a malformed reply): it weighs the same wherever
    /// it is found.
    pub(super) fn level_for(&self, rule: RuleId) -> Level {
        let cap = rule.level().finding_cap();
        let spec = &self.scenario.spec;
        let cited = spec.rules.contains(&rule) || spec.steps.iter().any(|s| s.rule == Some(rule));
        if cited { spec.level.min(cap) } else { cap }
    }

    /// [`Ctx::fail`] citing the rule `step` checks.
    #[must_use = "a finding stops the scenario (return it) or is recorded (Ctx::record)"]
    pub(super) fn finding(
        &mut self,
        step: &Step,
        summary: &str,
        expected: &str,
        received: String,
    ) -> StepError {
        let rule = self.rule_of(step);
        self.fail(rule, summary, expected, received)
    }

    /// Whether `step` only sets the stage for the scenario's checks (no expectation or rule of
    /// its own): if the back-end refuses it, the scenario cannot be judged, which is not a
    /// departure (a back-end may refuse what it cannot do, e.g. a ring larger than it supports).
    pub(super) fn is_setup(step: &Step) -> bool {
        step.expect.is_none()
            && step.rule.is_none()
            && matches!(
                step.action,
                Action::Negotiate(_)
                    | Action::Memory(_)
                    | Action::AddMemReg(_)
                    | Action::Vring(_)
                    | Action::Enable(_)
            )
    }

    /// The back-end refused (nack or close) a setup step: a crash is a finding; anything else
    /// makes the scenario not applicable, with the reason.
    pub(super) fn refused_setup(&mut self, step: &Step, what: String) -> StepError {
        let after = self.last_sent();
        if let Some(e) = self.gone(self.rule_of(step), Duration::from_millis(200), &after) {
            if matches!(e, StepError::Finding(_)) {
                return e;
            }
        }
        StepError::NotApplicable(format!(
            "the back-end refused setup step {} ({after}): {what}; the scenario's checks could not run",
            self.step_no
        ))
    }

    /// Turns a session error into a finding (back-end fault) or a harness error.
    pub(super) fn session_failed(&mut self, step: &Step, e: SessionError) -> StepError {
        if !e.is_backend_fault() {
            return StepError::Harness(chain(&e));
        }
        if Self::is_setup(step)
            && matches!(e, SessionError::Nack { .. } | SessionError::Closed { .. })
        {
            return self.refused_setup(step, e.to_string());
        }
        let closed = matches!(e, SessionError::Closed { .. });
        if closed {
            let after = self.last_sent();
            match self.gone(self.rule_of(step), Duration::from_millis(200), &after) {
                Some(e @ StepError::Finding(_)) => return e,
                // The connection made after the front-end left was closed by a process that
                // was exiting: the policy R-ROB-09 allows, not this step's failure.
                Some(StepError::Ended(_)) if self.reconnected => {
                    let st = self.inst().state();
                    return StepError::NotApplicable(format!(
                        "the back-end exits when its front-end leaves ({st}), a policy the spec \
                         allows (R-ROB-09, reported by session/serves-after-disconnect); this \
                         scenario needs a reconnect to the same process"
                    ));
                }
                _ => {}
            }
        }
        // The framing rule a malformed reply breaks; a payload the step's own rule describes
        // (an explicit `rule`) cites that rule rather than the generic R-WIRE-01.
        let wire = wire_rule(&e)
            .filter(|_| !matches!(e, SessionError::Nack { .. } | SessionError::Closed { .. }));
        let rule = match wire {
            Some(w) if w != id::R_WIRE_01 => w,
            _ => step.rule.or(wire).unwrap_or_else(|| self.rule_of(step)),
        };
        let received = self.describe_failure(&e);
        let expected = match &e {
            SessionError::Timeout { .. } => "a reply within the step timeout",
            SessionError::Nack { .. } => "an ack of 0 for a valid request",
            SessionError::Closed { .. } => "the connection stays open",
            SessionError::Stalled { .. } => "the back-end reads what it is sent",
            _ => "a well-formed reply to the request",
        };
        self.fail(rule, &e.to_string(), expected, received)
    }

    pub(super) fn describe_failure(&mut self, e: &SessionError) -> String {
        let st = self.inst().wait_exit(Duration::from_millis(
            if matches!(e, SessionError::Closed { .. }) {
                200
            } else {
                0
            },
        ));
        let base = match e {
            SessionError::BadReply {
                message, reason, ..
            } => format!(
                "{reason}; header {:?}, {} payload bytes",
                message.header,
                message.payload.len()
            ),
            other => other.to_string(),
        };
        match st {
            ProcessState::Exited(_) | ProcessState::Signaled(_) => {
                let tail = self.inst().stderr_tail(400);
                format!("{base}; {}", describe_exit(&st, &tail))
            }
            _ => base,
        }
    }
}

/// The wire rule a framing error breaks.
fn wire_rule(e: &SessionError) -> Option<RuleId> {
    match e {
        SessionError::BadReply { reason, .. } => {
            Some(crate::engine::violations::reply_rule(reason))
        }
        SessionError::UnexpectedMessage { .. } => Some(id::R_ACK_09),
        SessionError::Nack { .. } => Some(id::R_ACK_01),
        SessionError::Timeout { during, .. } if during.reply_kind() == ReplyKind::AckOnly => {
            Some(id::R_ACK_01)
        }
        _ => None,
    }
}

/// `s` cut to `max` characters (a rendered message can carry a whole payload), marked when cut.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{} ...", &s[..i]),
        None => s.to_string(),
    }
}
