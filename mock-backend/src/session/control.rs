//! The session-wide requests: RESET_OWNER, the device status and its reset, the back-end
//! channel (R-BCH-10) and the gpu socket (R-MISC-03).

use std::os::fd::OwnedFd;

use crate::channel::BackendChannel;
use crate::faults::Fault;
use crate::rings::Vring;

use super::{Outcome, Session};

impl Session<'_> {
    pub(super) fn disable_all(&mut self) -> Outcome {
        self.queues.iter_mut().for_each(|q| q.enabled = false);
        Outcome::Done
    }

    /// R-MISC-03: a gpu device takes the socket (one fd) for the vhost-user-gpu protocol;
    /// any other device refuses it.
    pub(super) fn set_gpu_socket(&mut self, mut fds: Vec<OwnedFd>) -> Outcome {
        match fds.pop() {
            Some(fd) if fds.is_empty() => {
                match self
                    .dev
                    .set_gpu_socket(std::os::unix::net::UnixStream::from(fd))
                {
                    true => Outcome::Done,
                    false => Outcome::Failed,
                }
            }
            _ => Outcome::Failed,
        }
    }

    pub(super) fn set_backend_req_fd(&mut self, mut fds: Vec<OwnedFd>) -> Outcome {
        match fds.pop() {
            Some(fd) => {
                // R-BCH-10: a second channel replaces (and closes) the first.
                let old = self.channel.replace(BackendChannel::new(fd));
                if self.has(Fault::KeepOldBackendChannel) {
                    std::mem::forget(old);
                }
                Outcome::Done
            }
            None => Outcome::Failed,
        }
    }

    pub(super) fn reset_device(&mut self) -> Outcome {
        for q in &mut self.queues {
            *q = Vring::default();
        }
        self.status = 0;
        self.shmem.clear();
        self.dev.reset();
        Outcome::Done
    }

    pub(super) fn set_status(&mut self, v: u64) -> Outcome {
        self.status = v;
        Outcome::Done
    }
}
