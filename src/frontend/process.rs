//! The front-end as a process: waiting for its connection, its end (ended by us after a grace,
//! or by itself), and the judging of that end (a crash signal is R-FE-07).

use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::engine::Finding;
use crate::rules::id;
use crate::scenario::Level;

use super::FrontendError;
use super::backend::JudgingBackend;

/// The signals that mean a crash (memory corruption, an assertion).
const CRASH_SIGNALS: &[(i32, &str)] = &[
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGABRT, "SIGABRT"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGFPE, "SIGFPE"),
];

/// How the front-end process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum ProcessEnd {
    /// It exited by itself with this status.
    Exited(i32),
    /// A signal ended it that we did not send.
    Signalled(i32),
    /// We ended it (the scenario's time was up).
    EndedByUs,
}

fn crash_signal(end: &ProcessEnd) -> Option<(i32, &'static str)> {
    let sig = match end {
        ProcessEnd::Signalled(s) => *s,
        // A wrapper script reports its child's death by signal N as 128 + N.
        ProcessEnd::Exited(c) if *c > 128 => c - 128,
        _ => return None,
    };
    CRASH_SIGNALS.iter().copied().find(|(s, _)| *s == sig)
}

pub(super) struct Spawned {
    pub(super) child: Child,
    pub(super) log: PathBuf,
    pub(super) end: Option<ProcessEnd>,
}

impl Spawned {
    pub(super) fn poll(&mut self) -> Option<ProcessEnd> {
        if self.end.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.end = Some(match (st.code(), st.signal()) {
                    (Some(c), _) => ProcessEnd::Exited(c),
                    (_, Some(s)) => ProcessEnd::Signalled(s),
                    _ => ProcessEnd::Exited(-1),
                });
            }
        }
        self.end.clone()
    }

    /// Ends the process group (SIGTERM, then SIGKILL after 2 s) unless it already ended.
    pub(super) fn finish(&mut self) -> ProcessEnd {
        if let Some(e) = self.poll() {
            return e;
        }
        let pgid = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if self.poll().is_some() {
                return ProcessEnd::EndedByUs;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        self.end = Some(ProcessEnd::EndedByUs);
        ProcessEnd::EndedByUs
    }

    pub(super) fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }
}

pub(super) fn local(what: &str) -> impl FnOnce(std::io::Error) -> FrontendError + '_ {
    move |source| FrontendError::Local {
        what: what.into(),
        source,
    }
}

/// Waits for a connection on `listener` (non-blocking) until `until` or `stop`.
pub(super) fn accept(
    listener: &UnixListener,
    until: Instant,
    stop: &mut dyn FnMut() -> bool,
) -> Option<std::os::unix::net::UnixStream> {
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                let _ = s.set_nonblocking(false);
                return Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
        if Instant::now() >= until || stop() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The front-end process's end: a death by a crash signal is R-FE-07; any other end is
/// allowed (the spec lets a front-end give up on a back-end it cannot use).
pub(super) fn judge_process(
    be: &mut JudgingBackend,
    end: &ProcessEnd,
    tail: &str,
    notes: &mut Vec<String>,
) {
    match crash_signal(end) {
        Some((sig, name)) => be.judge.push_finding(Finding {
            rule: id::R_FE_07,
            level: Level::Must,
            summary: format!("the front-end died by {name}"),
            sent: "the session in the transcript".into(),
            received: format!("{end:?}"),
            expected: "no death by a signal, whatever the back-end does".into(),
            crash: Some(crate::engine::Crash {
                signal: sig,
                signal_name: name.into(),
                stderr_tail: tail.into(),
            }),
        }),
        None => be.judge.mark_checked(id::R_FE_07),
    }
    notes.push(match end {
        ProcessEnd::Exited(c) => format!("the front-end exited with status {c}"),
        ProcessEnd::Signalled(s) => format!("the front-end was ended by signal {s}"),
        ProcessEnd::EndedByUs => {
            "the front-end was still running at the end: ended by vhu-conform".into()
        }
    });
    if !matches!(end, ProcessEnd::EndedByUs | ProcessEnd::Exited(0 | 124)) && !tail.is_empty() {
        notes.push(format!("its output ends: {}", tail.replace('\n', " | ")));
    }
}
