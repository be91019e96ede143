//! The sending half of a [`Connection`]: well-formed messages, typed requests and replies,
//! and raw bytes, with their fds on the first `sendmsg`.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::PollFlags;
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

use super::{ConnError, Connection, RawMessage};
use crate::wire::Header;
use crate::wire::payload::Body;

impl Connection {
    /// Sends a well-formed message: header (whose size is set from the payload), payload, fds.
    pub fn send(
        &self,
        mut header: Header,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnError> {
        header.size = payload.len() as u32;
        self.send_parts(&header.to_bytes(), payload, fds)
    }

    /// Sends a typed request: version 1, NEED_REPLY as asked.
    pub fn send_request(
        &self,
        code: u32,
        body: &Body,
        need_reply: bool,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnError> {
        self.send(Header::request(code, 0, need_reply), &body.encode(), fds)
    }

    /// Sends a reply (flags exactly 0x5).
    pub fn send_reply(
        &self,
        code: u32,
        body: &Body,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnError> {
        self.send(Header::reply(code, 0), &body.encode(), fds)
    }

    /// Sends raw bytes, unvalidated, with fds on the first `sendmsg`.
    pub fn send_raw(&self, raw: &RawMessage, fds: &[BorrowedFd<'_>]) -> Result<(), ConnError> {
        self.send_parts(&raw.header, &raw.body, fds)
    }

    /// Sends arbitrary bytes (a fragment of a message, or several messages), fds on the first
    /// `sendmsg`: for framing probes (R-WIRE-07).
    pub fn send_bytes(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ConnError> {
        self.send_parts(bytes, &[], fds)
    }

    fn send_parts(
        &self,
        head: &[u8],
        tail: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), ConnError> {
        let raw_fds: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let mut sent = 0usize;
        let total = head.len() + tail.len();
        // With a timeout, never block in the kernel: a full socket buffer (a peer that does not
        // read) is waited for with poll, up to `timeout` without progress.
        let flags = if self.timeout.is_some() {
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT
        } else {
            MsgFlags::MSG_NOSIGNAL
        };
        let mut deadline = self.timeout.map(|t| Instant::now() + t);
        while sent < total || (total == 0 && sent == 0 && !raw_fds.is_empty()) {
            let (h, t) = if sent < head.len() {
                (&head[sent..], tail)
            } else {
                (&[][..], &tail[sent - head.len()..])
            };
            let iov = [IoSlice::new(h), IoSlice::new(t)];
            let cmsg = [ControlMessage::ScmRights(&raw_fds)];
            // fds ride on the first sendmsg only (spec: with the first byte of the header).
            let cmsgs: &[ControlMessage<'_>] = if sent == 0 && !raw_fds.is_empty() {
                &cmsg
            } else {
                &[]
            };
            match sendmsg::<()>(self.stream.as_raw_fd(), &iov, cmsgs, flags, None) {
                Ok(0) if total == 0 => break,
                Ok(n) => {
                    sent += n;
                    deadline = self.timeout.map(|t| Instant::now() + t);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => match self.wait(PollFlags::POLLOUT, deadline, sent) {
                    Err(ConnError::Timeout { waited, .. }) => {
                        return Err(ConnError::SendTimeout {
                            waited,
                            sent,
                            total,
                        });
                    }
                    r => r?,
                },
                Err(source) => {
                    return Err(ConnError::Io {
                        op: "sendmsg",
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}
