//! A framed vhost-user connection over a Unix stream socket (checklist 1.1, 1.4).
//!
//! It sends a message with its fds attached to the `sendmsg` that carries the first header byte,
//! reads whole messages across partial reads, bounds the payload size and fd count before
//! allocating, closes fds it did not expect, and bounds every wait by a deadline. It applies no
//! protocol policy: it reports what arrived.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use thiserror::Error;

use crate::wire::payload::{Body, BodyKind};
use crate::wire::{HEADER_SIZE, Header, HeaderFlags, Violation};

/// Default payload bound. The largest payload the spec defines is GET_SHMEM_CONFIG's 2056
/// bytes; rust-vmm and crosvm cap at 4096 too (checklist 1.3).
pub const DEFAULT_MAX_PAYLOAD: u32 = 4096;
/// Default fd bound: SET_MEM_TABLE and the back-end channel carry at most 8 (checklist 1.3).
pub const DEFAULT_MAX_FDS: usize = 8;

/// Errors of the connection layer.
#[derive(Debug, Error)]
pub enum ConnError {
    /// The message's version bits are not 1 (R-WIRE-03). The whole message was consumed.
    #[error("message has version {}, not 1 (header {header:?})", HeaderFlags::from_bits_retain(header.flags).version())]
    BadVersion {
        /// The header received.
        header: Header,
    },
    /// A system call failed.
    #[error("{op} failed")]
    Io {
        /// The operation.
        op: &'static str,
        /// The error.
        #[source]
        source: Errno,
    },
    /// The header announces more payload than allowed; the payload was not read, so the stream
    /// is out of step and should be closed.
    #[error("payload of {} bytes exceeds the bound of {max} (header {header:?})", header.size)]
    OversizedPayload {
        /// The header received.
        header: Header,
        /// The bound.
        max: u32,
    },
    /// The peer closed the connection between messages.
    #[error("peer closed the connection")]
    PeerClosed,
    /// The peer closed the connection in the middle of a message.
    #[error("peer closed the connection after {got} of {wanted} bytes of the {part}")]
    ShortRead {
        /// Header or payload.
        part: &'static str,
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        wanted: usize,
    },
    /// The peer stopped reading: no byte of the message could be sent for the whole timeout
    /// (its receive buffer stayed full). The stream is out of step if `sent` is not 0.
    #[error(
        "timed out after {waited:?} with {sent} of {total} bytes of a message sent (the peer does not read)"
    )]
    SendTimeout {
        /// How long it waited without progress.
        waited: Duration,
        /// Bytes of the message sent by then.
        sent: usize,
        /// Bytes of the message.
        total: usize,
    },
    /// No (complete) message arrived before the deadline.
    #[error("timed out after {waited:?} with {got} bytes of a message received")]
    Timeout {
        /// How long it waited.
        waited: Duration,
        /// Bytes of the message received by then.
        got: usize,
    },
    /// More fds arrived than allowed; all of them were closed.
    #[error("{got} fds arrived, at most {max} allowed{}", if *truncated { " (kernel truncated the rest)" } else { "" })]
    TooManyFds {
        /// fds received (before the kernel's truncation, if any).
        got: usize,
        /// The bound.
        max: usize,
        /// Whether the kernel dropped surplus fds (MSG_CTRUNC).
        truncated: bool,
        /// The header of the message they came with.
        header: Header,
    },
    /// A message arrived that is not the reply to the request sent (wrong code, or no REPLY
    /// flag). The whole message was consumed and is returned.
    #[error("expected a reply to request {expected}, got request {} with flags {:#x}", message.header.request, message.header.flags)]
    UnexpectedReply {
        /// The request code the reply should carry.
        expected: u32,
        /// What arrived instead.
        message: Box<Message>,
    },
}

impl ConnError {
    /// Whether the peer is gone (closed, reset or broken pipe), as opposed to a protocol error.
    pub fn is_peer_gone(&self) -> bool {
        match self {
            Self::PeerClosed | Self::ShortRead { .. } => true,
            Self::Io { source, .. } => {
                matches!(source, Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN)
            }
            _ => false,
        }
    }

    /// Whether the error is a timeout (of a receive, or of a send the peer does not read).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::SendTimeout { .. })
    }
}

/// A received message: header, payload and the fds that came with it.
#[derive(Debug)]
pub struct Message {
    /// The header, as received.
    pub header: Header,
    /// The payload, exactly `header.size` bytes.
    pub payload: Vec<u8>,
    /// The fds attached to the message's first read.
    pub fds: Vec<OwnedFd>,
}

impl Message {
    /// Decodes the payload as the given layout.
    pub fn body(&self, kind: BodyKind) -> Result<Body, Violation> {
        Body::decode(kind, &self.payload)
    }

    /// The payload as a u64, if it is exactly 8 bytes.
    pub fn u64(&self) -> Option<u64> {
        Some(u64::from_ne_bytes(self.payload.as_slice().try_into().ok()?))
    }
}

/// Bytes to send as they are, without any validation: for malformed-input scenarios.
#[derive(Clone, Debug, Default)]
pub struct RawMessage {
    /// The 12 header bytes (may lie about anything).
    pub header: [u8; HEADER_SIZE],
    /// The payload bytes (need not match the header's size).
    pub body: Vec<u8>,
}

impl RawMessage {
    /// A raw message from a header that may lie and arbitrary payload bytes.
    pub fn new(header: Header, body: Vec<u8>) -> Self {
        Self {
            header: header.to_bytes(),
            body,
        }
    }

    /// Header and payload as one byte string.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.header.to_vec();
        out.extend_from_slice(&self.body);
        out
    }
}

/// A framed connection. Every receive waits at most `timeout` (None: forever), and so does a
/// send whose peer stops reading (no progress for `timeout`: [`ConnError::SendTimeout`]).
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    timeout: Option<Duration>,
    max_payload: u32,
    max_fds: usize,
    /// Whether SO_RCVTIMEO holds `timeout`, so a blocking read is bounded by it.
    rcvtimeo_set: bool,
}

impl Connection {
    /// Wraps a connected stream with the default bounds and the given receive timeout.
    pub fn new(stream: UnixStream, timeout: Option<Duration>) -> Self {
        let mut conn = Self {
            stream,
            timeout,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_fds: DEFAULT_MAX_FDS,
            rcvtimeo_set: false,
        };
        conn.apply_timeout();
        conn
    }

    /// A connected pair, for tests.
    pub fn pair(timeout: Option<Duration>) -> std::io::Result<(Self, Self)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Self::new(a, timeout), Self::new(b, timeout)))
    }

    /// Sets the receive timeout (None: wait forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        if timeout != self.timeout {
            self.timeout = timeout;
            self.apply_timeout();
        }
    }

    /// Whether the first read of a message may block in `recvmsg` itself, bounded by the
    /// socket's receive timeout (SO_RCVTIMEO, kept equal to `timeout`): saves a `poll` per
    /// message. Timeouts below a millisecond take the `poll` path, whose bound is exact.
    fn blocking_first_read(&self) -> bool {
        self.rcvtimeo_set && self.timeout.is_none_or(|t| t >= Duration::from_millis(1))
    }

    /// Sets SO_RCVTIMEO to the receive timeout (none: forever). If that fails, every read
    /// polls first, as the bound then rests on `poll` alone.
    fn apply_timeout(&mut self) {
        let t = self.timeout.filter(|t| !t.is_zero());
        self.rcvtimeo_set = self.stream.set_read_timeout(t).is_ok();
    }

    /// The receive timeout.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Sets the payload bound checked before any payload is read.
    pub fn set_max_payload(&mut self, max: u32) {
        self.max_payload = max;
    }

    /// Sets how many fds one message may carry.
    pub fn set_max_fds(&mut self, max: usize) {
        self.max_fds = max;
    }

    /// The underlying stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Consumes the connection, returning the stream.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

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
    fn wait(
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

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
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
