//! How what follows a sent message is judged: its ack against the step's expectation
//! (`judge_ack`), no reply at all (`no_reply`), and the back-end still serving (`alive`).

use std::time::Duration;

use vhu_mock_frontend::{Ack, SessionError};

use super::{Ctx, StepError, StepResult};
use crate::engine::chain;
use crate::scenario::Expect;
use crate::scenario::model::Step;

impl Ctx<'_> {
    /// Nothing answers what was sent: by a GET_FEATURES round trip (its reply must come first),
    /// or, when the step gives `window_ms`, by waiting out that window.
    pub(super) fn no_reply(
        &mut self,
        window_ms: Option<u64>,
    ) -> Result<Result<(), SessionError>, StepError> {
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
