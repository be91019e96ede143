//! The extra fds a `send` or `raw` step attaches (pipes, memfds, socket pairs, eventfds),
//! and the check that the back-end closed the one whose other end we hold.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{Ctx, StepError, StepResult};
use crate::scenario::model::{FdKind, Step};

impl Ctx<'_> {
    /// The back-end closed the fd it was sent (a pipe's write end): EOF on `read_end` within
    /// the step timeout, else a leak found against the step's rule, naming the message `code`
    /// that carried it.
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
}

pub(super) struct ExtraFds {
    pub(super) sent: Vec<OwnedFd>,
    /// Our end of the first pipe or socket pair sent: it reads EOF (hang-up) once the
    /// back-end has closed every copy of the end it was given.
    pub(super) pipe_read: Option<OwnedFd>,
}

/// Size of a memfd sent as an extra fd: large enough for the regions scenarios describe, so
/// a refusal is never just "the fd is smaller than the region" (sparse: costs no memory).
const EXTRA_MEMFD_BYTES: u64 = 2 << 20;

/// `n` fds of `kind` to attach to a message, and our end of a pipe or socket pair among them.
pub(super) fn make_fds(n: usize, kind: FdKind) -> Result<ExtraFds, StepError> {
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
