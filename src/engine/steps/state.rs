//! Device state transfer steps (spec "Migrating back-end state", checklist 4.11): save over a
//! pipe, load over a pipe, CHECK_DEVICE_STATE, and a fresh back-end process to load into.

use crate::rules::id;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use vhu_protocol::Message;

use super::{Ctx, StepError, StepResult};
use crate::engine::chain;
use crate::scenario::Expect;
use crate::scenario::model::{LoadStateArgs, Step};
use crate::target::Instance;

/// Largest device state read from a back-end: R-MIG-06 sets no bound, this one keeps a
/// back-end that writes without end from exhausting the harness's memory. Beyond it the save
/// is a finding.
pub const MAX_STATE_BYTES: usize = 256 << 20;

/// How a bounded read of the saved state ended. Both directions use our end in non-blocking
/// mode and `poll` up to a deadline, on the calling thread: no thread is left behind, and
/// dropping our end afterwards releases the back-end's.
#[derive(Debug)]
enum Saved {
    /// EOF.
    Eof,
    /// More than the cap arrived without EOF.
    TooLarge,
    /// The deadline passed without EOF.
    Deadline,
}

/// How a bounded write of the state to load ended.
#[derive(Debug)]
enum Loaded {
    /// Every byte written.
    Done,
    /// The deadline passed: the back-end stopped reading.
    Deadline,
    /// The back-end closed its end (or the channel failed) before taking everything.
    Closed(std::io::Error),
}

fn set_nonblocking(f: &File) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(f, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NONBLOCK;
    fcntl(f, FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}

/// Waits until `f` is ready for `events` or the deadline passes; false on the deadline.
fn wait_ready(f: &File, events: PollFlags, deadline: Instant) -> std::io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        let mut pfd = [PollFd::new(f.as_fd(), events)];
        match poll(
            &mut pfd,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) => {}
            Ok(_) => return Ok(true),
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads `f` to EOF into `buf`, at most `cap` bytes, until `deadline`.
fn read_bounded(
    f: &File,
    buf: &mut Vec<u8>,
    cap: usize,
    deadline: Instant,
) -> std::io::Result<Saved> {
    set_nonblocking(f)?;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match (&*f).read(&mut chunk) {
            Ok(0) => return Ok(Saved::Eof),
            Ok(n) if buf.len().saturating_add(n) > cap => return Ok(Saved::TooLarge),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !wait_ready(f, PollFlags::POLLIN, deadline)? {
                    return Ok(Saved::Deadline);
                }
                continue;
            }
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Ok(Saved::Deadline);
        }
    }
}

/// Writes `data` into `f` until `deadline`; `written` says how far it got.
fn write_bounded(
    f: &File,
    data: &[u8],
    written: &mut usize,
    deadline: Instant,
) -> std::io::Result<Loaded> {
    set_nonblocking(f)?;
    while *written < data.len() {
        match (&*f).write(&data[*written..]) {
            Ok(0) => {
                return Ok(Loaded::Closed(std::io::ErrorKind::WriteZero.into()));
            }
            Ok(n) => *written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if !wait_ready(f, PollFlags::POLLOUT, deadline)? {
                    return Ok(Loaded::Deadline);
                }
                continue;
            }
            Err(e) => return Ok(Loaded::Closed(e)),
        }
        if *written < data.len() && Instant::now() >= deadline {
            return Ok(Loaded::Deadline);
        }
    }
    Ok(Loaded::Done)
}

/// Our end of the transfer: the fd the back-end returned (bit 8 clear, one fd: the front-end
/// must use it instead of its own, spec "Migrating back-end state"), else our pipe end. `true`
/// when it is the back-end's, whose failures are then the back-end's too.
fn transfer_end(reply: &mut Message, ours: OwnedFd) -> (File, bool) {
    let v = reply.u64().unwrap_or(u64::MAX);
    if v & 0x100 == 0 && reply.fds.len() == 1 {
        drop(ours);
        return (File::from(reply.fds.remove(0)), true);
    }
    (File::from(ours), false)
}

impl Ctx<'_> {
    /// SET_DEVICE_STATE_FD(save) over a pipe, read to EOF, then CHECK_DEVICE_STATE = 0
    /// (R-MIG-04, R-MIG-06, R-MIG-08). The read is bounded in size ([`MAX_STATE_BYTES`]) and
    /// time (the step's deadline), on this thread.
    pub(super) fn save_state(&mut self, step: &Step) -> StepResult {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| StepError::Harness(format!("pipe: {e}")))?;
        let reply = self.session()?.set_device_state_fd(0, w.as_fd());
        drop(w);
        let mut reply = reply.map_err(|e| self.session_failed(step, e))?;
        if step.expect == Some(Expect::AckFail) {
            return self.check_transfer_refused(step, &reply);
        }
        self.check_transfer_reply(step, &reply)?;
        let (end, theirs) = transfer_end(&mut reply, r);
        // A state can be large: at least two seconds for it to arrive whole.
        let timeout = self.opts.step_timeout.max(Duration::from_secs(2));
        let mut state = Vec::new();
        let r = read_bounded(&end, &mut state, MAX_STATE_BYTES, Instant::now() + timeout);
        // Our end closes here, whatever happened: a back-end still writing gets EPIPE.
        drop(end);
        match r {
            Ok(Saved::Eof) => {}
            Ok(Saved::TooLarge) => {
                return Err(self.fail(
                    id::R_MIG_06,
                    &format!("the saved state exceeds {MAX_STATE_BYTES} bytes without ending"),
                    "the back-end writes its state and closes its end (R-MIG-06), within the \
                     harness's bound",
                    format!("more than {MAX_STATE_BYTES} bytes, no EOF"),
                ));
            }
            Ok(Saved::Deadline) => {
                return Err(self.fail(
                    id::R_MIG_06,
                    "the saved state never ended (no EOF on the pipe)",
                    "the back-end writes its state and closes its end (R-MIG-06)",
                    format!("no EOF within {timeout:?} ({} bytes read)", state.len()),
                ));
            }
            Err(e) if theirs => {
                return Err(self.fail(
                    id::R_MIG_06,
                    "the state channel the back-end returned cannot be read",
                    "a readable fd, written to EOF (R-MIG-06)",
                    format!("{e}"),
                ));
            }
            Err(e) => return Err(StepError::Harness(format!("reading the state: {e}"))),
        }
        self.mark(id::R_MIG_06);
        self.check_state_result(step, "save")?;
        self.saved_state = Some(state);
        Ok(())
    }

    /// SET_DEVICE_STATE_FD(load), write the saved state, close, then CHECK_DEVICE_STATE = 0
    /// (R-MIG-07, R-MIG-08, R-MIG-11). The write is bounded by the step's deadline, on this
    /// thread.
    pub(super) fn load_state(&mut self, step: &Step, a: &LoadStateArgs) -> StepResult {
        let mut state = self.saved_state.clone().ok_or_else(|| {
            StepError::Harness("no saved state: add a `save_state` step first".into())
        })?;
        // Only the first bytes of the state, to check a truncated stream is refused.
        if let Some(n) = a.truncate_to {
            state.truncate(usize::try_from(n).unwrap_or(usize::MAX));
        }
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| StepError::Harness(format!("pipe: {e}")))?;
        let reply = self.session()?.set_device_state_fd(1, r.as_fd());
        drop(r);
        let mut reply = reply.map_err(|e| self.session_failed(step, e))?;
        self.check_transfer_reply(step, &reply)?;
        let (end, theirs) = transfer_end(&mut reply, w);
        // The spec has the front-end close the pipe before CHECK_DEVICE_STATE, so the state is
        // written whole first, within the deadline if the back-end never reads.
        let len = state.len();
        let timeout = self.opts.step_timeout.max(Duration::from_secs(2));
        let mut written = 0;
        let r = write_bounded(&end, &state, &mut written, Instant::now() + timeout);
        // Closing our end is the EOF the back-end waits for (R-MIG-07).
        drop(end);
        match r {
            Ok(Loaded::Done) => {}
            Ok(Loaded::Deadline) => {
                return Err(self.fail(
                    id::R_MIG_07,
                    "the back-end did not read the state from the pipe",
                    "the back-end reads the state until EOF (R-MIG-07)",
                    format!(
                        "{} of {len} bytes not consumed within {timeout:?}",
                        len - written
                    ),
                ));
            }
            Ok(Loaded::Closed(e)) => self.notes.push(format!(
                "step {}: writing the state stopped early after {written} of {len} bytes: {e} \
                 (the back-end closed its end)",
                self.step_no
            )),
            Err(e) if theirs => {
                return Err(self.fail(
                    id::R_MIG_07,
                    "the state channel the back-end returned cannot be written",
                    "a writable fd, read to EOF (R-MIG-07)",
                    format!("{e}"),
                ));
            }
            Err(e) => return Err(StepError::Harness(format!("writing the state: {e}"))),
        }
        self.mark(id::R_MIG_07);
        self.check_state_result(step, "load")?;
        if self.fresh.is_some() {
            // Saved by one process, loaded by another (R-MIG-11).
            self.mark(id::R_MIG_11);
        }
        Ok(())
    }

    /// A transfer that must be refused (rings running, R-MIG-03): bits 0-7 non-zero and no fd
    /// returned with the error (R-MIG-05).
    fn check_transfer_refused(&mut self, step: &Step, reply: &Message) -> StepResult {
        self.mark(self.rule_of(step));
        self.mark(id::R_MIG_05);
        let v = reply.u64().unwrap_or(u64::MAX);
        if v & 0xff == 0 {
            return Err(self.finding(
                step,
                "SET_DEVICE_STATE_FD was accepted although it must be refused",
                "bits 0-7 of the reply non-zero",
                format!("value {v:#x}"),
            ));
        }
        if !reply.fds.is_empty() {
            return Err(self.fail(
                id::R_MIG_05,
                "SET_DEVICE_STATE_FD reports an error and returns an fd in the same reply",
                "no fd with an error",
                format!("value {v:#x} with {} fds", reply.fds.len()),
            ));
        }
        Ok(())
    }

    fn check_transfer_reply(&mut self, step: &Step, reply: &Message) -> StepResult {
        let v = reply.u64().unwrap_or(u64::MAX);
        if v & 0xff != 0 || (v & 0x100 == 0) != (reply.fds.len() == 1) {
            return Err(self.fail(
                step.rule.unwrap_or(id::R_MIG_04),
                "SET_DEVICE_STATE_FD was refused or its reply is inconsistent",
                "bits 0-7 = 0, and bit 8 set exactly when no fd is returned",
                format!("value {v:#x} with {} fds", reply.fds.len()),
            ));
        }
        self.mark(step.rule.unwrap_or(id::R_MIG_04));
        // A well-formed direction and phase were accepted as the layout says.
        self.mark(id::R_MIG_02);
        self.mark(id::R_MIG_04);
        Ok(())
    }

    fn check_state_result(&mut self, step: &Step, what: &str) -> StepResult {
        let r = self.session()?.check_device_state();
        let must_fail = step.expect == Some(Expect::AckFail);
        // A corrupt or truncated load must be reported (R-MIG-09); any other outcome truly
        // (R-MIG-08).
        let rule = match (must_fail, what) {
            (true, _) => step.rule.unwrap_or(id::R_MIG_09),
            // A state saved by one process that another cannot load breaks the round trip.
            (false, "load") if self.fresh.is_some() => id::R_MIG_11,
            (false, _) => step.rule.unwrap_or(id::R_MIG_08),
        };
        self.mark(rule);
        // CHECK_DEVICE_STATE's answer itself is judged here (R-MIG-08).
        self.mark(id::R_MIG_08);
        match r {
            Ok(0) if must_fail => Err(self.fail(
                rule,
                &format!("CHECK_DEVICE_STATE after the {what} reports success"),
                "non-zero: the state was truncated or corrupt",
                "0".into(),
            )),
            Ok(_) if must_fail => Ok(()),
            Ok(0) => Ok(()),
            Ok(v) => Err(self.fail(
                rule,
                &format!("CHECK_DEVICE_STATE after the {what} reports failure ({v})"),
                "0: the transfer and its processing succeeded",
                format!("{v}"),
            )),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (File::from(r), File::from(w))
    }

    #[test]
    fn an_endless_writer_is_cut_at_the_cap() {
        let (r, w) = pipe();
        let writer = std::thread::spawn(move || {
            let chunk = [0x11u8; 4096];
            // Until our end closes: EPIPE (SIGPIPE is ignored in Rust programs).
            while (&w).write_all(&chunk).is_ok() {}
        });
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let r2 = read_bounded(&r, &mut buf, 1 << 20, deadline).unwrap();
        assert!(matches!(r2, Saved::TooLarge), "{r2:?}");
        assert!(buf.len() <= 1 << 20);
        drop(r);
        writer.join().unwrap();
    }

    #[test]
    fn a_writer_that_never_closes_ends_at_the_deadline() {
        let (r, w) = pipe();
        (&w).write_all(b"partial").unwrap();
        let mut buf = Vec::new();
        let start = Instant::now();
        let t = Duration::from_millis(200);
        let r2 = read_bounded(&r, &mut buf, MAX_STATE_BYTES, start + t).unwrap();
        assert!(matches!(r2, Saved::Deadline), "{r2:?}");
        assert!(start.elapsed() >= t && start.elapsed() < t * 10);
        assert_eq!(buf, b"partial");
        drop(w);
    }

    #[test]
    fn a_state_that_ends_is_read_whole() {
        let (r, w) = pipe();
        let writer = std::thread::spawn(move || (&w).write_all(&[7u8; 300_000]).unwrap());
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let r2 = read_bounded(&r, &mut buf, MAX_STATE_BYTES, deadline).unwrap();
        writer.join().unwrap();
        assert!(matches!(r2, Saved::Eof), "{r2:?}");
        assert_eq!(buf.len(), 300_000);
    }

    #[test]
    fn a_reader_that_never_reads_stops_the_write_at_the_deadline() {
        let (r, w) = pipe();
        let data = vec![1u8; 4 << 20];
        let mut written = 0;
        let start = Instant::now();
        let t = Duration::from_millis(200);
        let r2 = write_bounded(&w, &data, &mut written, start + t).unwrap();
        assert!(matches!(r2, Loaded::Deadline), "{r2:?}");
        assert!(written < data.len());
        assert!(start.elapsed() >= t && start.elapsed() < t * 10);
        drop(r);
    }

    #[test]
    fn a_reader_that_closes_early_stops_the_write() {
        let (r, w) = pipe();
        drop(r);
        let mut written = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        let r2 = write_bounded(&w, &[1u8; 1000], &mut written, deadline).unwrap();
        assert!(matches!(r2, Loaded::Closed(_)), "{r2:?}");
        assert_eq!(written, 0);
        let mut none = 0;
        assert!(matches!(
            write_bounded(&w, &[], &mut none, deadline).unwrap(),
            Loaded::Done
        ));
    }
}
