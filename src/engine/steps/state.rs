//! Device state transfer steps (spec "Migrating back-end state", checklist 4.11): save over a
//! pipe, load over a pipe, CHECK_DEVICE_STATE, and a fresh back-end process to load into.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use vhu_protocol::Message;

use super::{Ctx, StepError, StepResult};
use crate::engine::chain;
use crate::scenario::Expect;
use crate::scenario::model::Step;
use crate::target::Instance;

impl Ctx<'_> {
    /// SET_DEVICE_STATE_FD(save) over a pipe, read to EOF, then CHECK_DEVICE_STATE = 0
    /// (R-MIG-04, R-MIG-06, R-MIG-08).
    pub(super) fn save_state(&mut self, step: &Step) -> StepResult {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| StepError::Harness(format!("pipe: {e}")))?;
        let reply = self.session()?.set_device_state_fd(0, w.as_fd());
        drop(w);
        let reply = reply.map_err(|e| self.session_failed(step, e))?;
        if step.expect == Some(Expect::AckFail) {
            return self.check_transfer_refused(step, &reply);
        }
        self.check_transfer_reply(step, &reply)?;
        // A state can be large: at least two seconds for it to arrive whole.
        let timeout = self.opts.step_timeout.max(Duration::from_secs(2));
        let reader = std::thread::spawn(move || {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::fs::File::from(r), &mut buf).map(|_| buf)
        });
        let deadline = Instant::now() + timeout;
        while !reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !reader.is_finished() {
            self.finding(
                step,
                "the saved state never ended (no EOF on the pipe)",
                "the back-end writes its state and closes its end (R-MIG-06)",
                format!("no EOF within {timeout:?}"),
            );
            return Err(StepError::Finding);
        }
        let state = reader
            .join()
            .map_err(|_| StepError::Harness("pipe reader panicked".into()))?
            .map_err(|e| StepError::Harness(format!("reading the state: {e}")))?;
        self.check_state_result(step, "save")?;
        self.saved_state = Some(state);
        Ok(())
    }

    /// SET_DEVICE_STATE_FD(load), write the saved state, close, then CHECK_DEVICE_STATE = 0
    /// (R-MIG-07, R-MIG-08, R-MIG-11).
    pub(super) fn load_state(&mut self, step: &Step) -> StepResult {
        let mut state = self.saved_state.clone().ok_or_else(|| {
            StepError::Harness("no saved state: add a `save_state` step first".into())
        })?;
        // `size`: only the first bytes of the state, to check a truncated stream is refused.
        if let Some(n) = step.size {
            state.truncate(n as usize);
        }
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| StepError::Harness(format!("pipe: {e}")))?;
        let reply = self.session()?.set_device_state_fd(1, r.as_fd());
        drop(r);
        let reply = reply.map_err(|e| self.session_failed(step, e))?;
        self.check_transfer_reply(step, &reply)?;
        // The spec has the front-end close the pipe before CHECK_DEVICE_STATE, so the state is
        // written whole first; a thread keeps the step bounded if the back-end never reads.
        let len = state.len();
        let writer = std::thread::spawn(move || {
            std::io::Write::write_all(&mut std::fs::File::from(w), &state)
        });
        let timeout = self.opts.step_timeout.max(Duration::from_secs(2));
        let deadline = Instant::now() + timeout;
        while !writer.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        if !writer.is_finished() {
            self.finding(
                step,
                "the back-end did not read the state from the pipe",
                "the back-end reads the state until EOF (R-MIG-07)",
                format!("{len} bytes not consumed within {timeout:?}"),
            );
            return Err(StepError::Finding);
        }
        if let Ok(Err(e)) = writer.join() {
            self.notes.push(format!(
                "step {}: writing the state stopped early: {e} (the back-end closed its end)",
                self.step_no
            ));
        }
        self.check_state_result(step, "load")
    }

    /// A transfer that must be refused (rings running, R-MIG-03): bits 0-7 non-zero and no fd
    /// returned with the error (R-MIG-05).
    fn check_transfer_refused(&mut self, step: &Step, reply: &Message) -> StepResult {
        let v = reply.u64().unwrap_or(u64::MAX);
        if v & 0xff == 0 {
            self.finding(
                step,
                "SET_DEVICE_STATE_FD was accepted although it must be refused",
                "bits 0-7 of the reply non-zero",
                format!("value {v:#x}"),
            );
            return Err(StepError::Finding);
        }
        if !reply.fds.is_empty() {
            self.finding_with(
                "R-MIG-05".into(),
                "SET_DEVICE_STATE_FD reports an error and returns an fd in the same reply",
                "no fd with an error",
                format!("value {v:#x} with {} fds", reply.fds.len()),
            );
            return Err(StepError::Finding);
        }
        Ok(())
    }

    fn check_transfer_reply(&mut self, step: &Step, reply: &Message) -> StepResult {
        let v = reply.u64().unwrap_or(u64::MAX);
        if v & 0xff != 0 || (v & 0x100 == 0) != (reply.fds.len() == 1) {
            self.finding_with(
                step.rule.clone().unwrap_or_else(|| "R-MIG-04".into()),
                "SET_DEVICE_STATE_FD was refused or its reply is inconsistent",
                "bits 0-7 = 0, and bit 8 set exactly when no fd is returned",
                format!("value {v:#x} with {} fds", reply.fds.len()),
            );
            return Err(StepError::Finding);
        }
        Ok(())
    }

    fn check_state_result(&mut self, step: &Step, what: &str) -> StepResult {
        let r = self.session()?.check_device_state();
        let must_fail = step.expect == Some(Expect::AckFail);
        match r {
            Ok(0) if must_fail => {
                self.finding(
                    step,
                    &format!("CHECK_DEVICE_STATE after the {what} reports success"),
                    "non-zero: the state was truncated or corrupt",
                    "0".into(),
                );
                Err(StepError::Finding)
            }
            Ok(_) if must_fail => Ok(()),
            Ok(0) => Ok(()),
            Ok(v) => {
                self.finding(
                    step,
                    &format!("CHECK_DEVICE_STATE after the {what} reports failure ({v})"),
                    "0: the transfer and its processing succeeded",
                    format!("{v}"),
                );
                Err(StepError::Finding)
            }
            Err(e) => Err(self.session_failed(step, e)),
        }
    }

    /// Starts a fresh back-end process (spawn mode) and connects to it; with other targets the
    /// same back-end is used again.
    pub(super) fn new_process(&mut self) -> StepResult {
        self.archive_session();
        self.mem = None;
        if matches!(self.spec, crate::target::TargetSpec::Spawn(_)) {
            let inst = Instance::start(self.spec, self.opts.connect_timeout)
                .map_err(|e| StepError::Harness(chain(&e)))?;
            self.fresh = Some(inst);
        } else {
            self.notes.push(format!(
                "step {}: not in spawn mode, so the same back-end process is used",
                self.step_no
            ));
        }
        Ok(())
    }
}
