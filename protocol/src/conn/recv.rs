//! The receiving half of a [`Connection`]: whole messages within the bounds, payload reads,
//! the fds that came with them, and the waits every receive and send is bounded by.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

use super::{ConnError, Connection, Message};
use crate::wire::{HEADER_SIZE, Header};

impl Connection {
    /// Receives one whole message and checks its version (R-WIRE-03).
    pub fn recv(&self) -> Result<Message, ConnError> {
        let msg = self.recv_unchecked()?;
        if msg.header.flags().version() != crate::wire::VERSION {
            return Err(ConnError::BadVersion { header: msg.header });
        }
        Ok(msg)
    }

    /// Receives the reply to request `code`: version 1, REPLY set, same code (R-WIRE-02/05).
    pub fn recv_reply(&self, code: u32) -> Result<Message, ConnError> {
        let msg = self.recv()?;
        if !msg.header.is_reply() || msg.header.request != code {
            return Err(ConnError::UnexpectedReply {
                expected: code,
                message: Box::new(msg),
            });
        }
        Ok(msg)
    }

    /// Receives one whole message without checking its header, within the bounds.
    pub fn recv_unchecked(&self) -> Result<Message, ConnError> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let mut header = [0u8; HEADER_SIZE];
        let mut fds = Vec::new();
        let mut truncated = false;
        let mut got = 0;
        let mut first = self.blocking_first_read();
        while got < HEADER_SIZE {
            let buf = &mut header[got..];
            let n = if std::mem::take(&mut first) {
                // One blocking recvmsg, bounded by SO_RCVTIMEO (= the whole deadline); on a
                // non-blocking socket or EINTR it returns at once and the loop polls.
                match self.recv_some(buf, &mut fds, &mut truncated, true)? {
                    Some(n) => n,
                    None => continue,
                }
            } else {
                self.recv_ready(buf, &mut fds, &mut truncated, deadline, got)?
            };
            if n == 0 {
                return Err(if got == 0 {
                    ConnError::PeerClosed
                } else {
                    ConnError::ShortRead {
                        part: "header",
                        got,
                        wanted: HEADER_SIZE,
                    }
                });
            }
            got += n;
        }
        let header = Header::from_bytes(&header);
        if header.size > self.max_payload {
            return Err(ConnError::OversizedPayload {
                header,
                max: self.max_payload,
            });
        }
        if fds.len() > self.max_fds || truncated {
            // Dropping the OwnedFds closes every fd that arrived.
            let got = fds.len();
            drop(fds);
            self.drain_payload(&header, deadline)?;
            return Err(ConnError::TooManyFds {
                got,
                max: self.max_fds,
                truncated,
                header,
            });
        }
        let payload = self.read_payload(&header, deadline)?;
        Ok(Message {
            header,
            payload,
            fds,
        })
    }

    fn read_payload(
        &self,
        header: &Header,
        deadline: Option<Instant>,
    ) -> Result<Vec<u8>, ConnError> {
        let wanted = header.size as usize;
        let mut payload = vec![0u8; wanted];
        let mut got = 0;
        let mut stray = Vec::new();
        let mut truncated = false;
        while got < wanted {
            // fds may only ride on the first read of a message: any that come later are closed.
            let buf = &mut payload[got..];
            let n =
                self.recv_ready(buf, &mut stray, &mut truncated, deadline, HEADER_SIZE + got)?;
            stray.clear();
            if n == 0 {
                return Err(ConnError::ShortRead {
                    part: "payload",
                    got,
                    wanted,
                });
            }
            got += n;
        }
        Ok(payload)
    }

    fn drain_payload(&self, header: &Header, deadline: Option<Instant>) -> Result<(), ConnError> {
        self.read_payload(header, deadline).map(drop)
    }

    /// Reads what is there, waiting (poll) until the deadline only when nothing is: the bytes
    /// of a message that has begun have usually all arrived, so no poll is spent on them.
    fn recv_ready(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        truncated: &mut bool,
        deadline: Option<Instant>,
        got: usize,
    ) -> Result<usize, ConnError> {
        loop {
            if let Some(n) = self.recv_some(buf, fds, truncated, false)? {
                return Ok(n);
            }
            self.wait(PollFlags::POLLIN, deadline, got)?;
        }
    }

    /// One `recvmsg`: `Some(bytes)`, or `None` when nothing was there (EAGAIN, which is also
    /// what a blocking read returns when SO_RCVTIMEO expires, or EINTR of a blocking read).
    fn recv_some(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        truncated: &mut bool,
        block: bool,
    ) -> Result<Option<usize>, ConnError> {
        // Room for the most fds one sendmsg can carry (SCM_MAX_FD), so a surplus is received
        // and closed by us, never truncated: nix refuses to parse a truncated control buffer,
        // which would leak the fds that did fit. On the stack: no allocation per read.
        let mut space = [0u8; CMSG_BUF];
        let cmsg_space = &mut space[..cmsg_space_for(SCM_MAX_FD)];
        let mut iov = [IoSliceMut::new(buf)];
        let flags = if block {
            MsgFlags::MSG_CMSG_CLOEXEC
        } else {
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT
        };
        loop {
            match recvmsg::<()>(self.stream.as_raw_fd(), &mut iov, Some(cmsg_space), flags) {
                Ok(msg) => {
                    *truncated |= msg.flags.contains(MsgFlags::MSG_CTRUNC);
                    let Ok(cmsgs) = msg.cmsgs() else {
                        return Ok(Some(msg.bytes));
                    };
                    for cmsg in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = cmsg {
                            // SAFETY: SCM_RIGHTS just installed these fds in this process and
                            // nothing else owns them.
                            fds.extend(
                                raw.into_iter()
                                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                            );
                        }
                    }
                    return Ok(Some(msg.bytes));
                }
                Err(Errno::EINTR) if block => return Ok(None),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return Ok(None),
                Err(source) => {
                    return Err(ConnError::Io {
                        op: "recvmsg",
                        source,
                    });
                }
            }
        }
    }

    /// Waits until the socket is ready for `events`, or the deadline passes.
    pub(super) fn wait(
        &self,
        events: PollFlags,
        deadline: Option<Instant>,
        got: usize,
    ) -> Result<(), ConnError> {
        let start = Instant::now();
        loop {
            let timeout = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32 + 1)
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            let mut pfd = [PollFd::new(self.stream.as_fd(), events)];
            match poll(&mut pfd, timeout) {
                Ok(0) if deadline.is_some_and(|d| Instant::now() >= d) => {
                    // Measured from the start of the receive, which may have blocked in
                    // recvmsg before this poll.
                    let since_deadline =
                        deadline.map(|d| Instant::now().saturating_duration_since(d));
                    let waited = match (self.timeout, since_deadline) {
                        (Some(t), Some(over)) => t + over,
                        _ => start.elapsed(),
                    };
                    return Err(ConnError::Timeout { waited, got });
                }
                Ok(0) => {}
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => {}
                Err(source) => return Err(ConnError::Io { op: "poll", source }),
            }
        }
    }
}

/// The kernel's limit of fds in one SCM_RIGHTS message.
const SCM_MAX_FD: usize = 253;

/// Bytes of the stack buffer for control messages: at least `cmsg_space_for(SCM_MAX_FD)`
/// (1032 on Linux: a 16-byte header and 253 4-byte fds, aligned to 8).
const CMSG_BUF: usize = 1088;

fn cmsg_space_for(nfds: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    unsafe { libc::CMSG_SPACE((nfds * size_of::<RawFd>()) as libc::c_uint) as usize }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_receive_with_nothing_to_read_times_out_after_the_timeout_and_says_so() {
        let t = Duration::from_millis(50);
        let (a, _b) = Connection::pair(Some(t)).unwrap();
        let start = Instant::now();
        let err = a.recv().unwrap_err();
        let took = start.elapsed();
        let ConnError::Timeout { waited, got: 0 } = err else {
            panic!("not a timeout: {err}");
        };
        assert!(took >= t && took < t * 10, "took {took:?}");
        assert!(
            waited >= t && waited <= took + Duration::from_millis(5),
            "waited {waited:?}"
        );
    }

    #[test]
    fn a_header_whose_payload_comes_later_is_read_whole() {
        let (a, b) = Connection::pair(Some(Duration::from_secs(2))).unwrap();
        let header = Header::request(1, 8, false).to_bytes();
        a.send_bytes(&header, &[]).unwrap();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            a.send_bytes(&7u64.to_ne_bytes(), &[]).unwrap();
            a
        });
        let msg = b.recv().unwrap();
        assert_eq!(msg.u64(), Some(7));
        drop(sender.join().unwrap());
    }

    #[test]
    fn a_shorter_timeout_set_later_bounds_the_blocking_read() {
        let (mut a, _b) = Connection::pair(None).unwrap();
        a.set_timeout(Some(Duration::from_millis(30)));
        let start = Instant::now();
        assert!(a.recv().unwrap_err().is_timeout());
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
