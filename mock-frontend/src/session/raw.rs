//! Unchecked traffic: raw bytes out (a malformed message, a stream cut anywhere) and whatever
//! comes in, for the scenarios that test a back-end's framing and its silence.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use vhu_protocol::{FrontendReq, Header, Message, RawMessage};

use super::{Session, SessionError};

impl Session {
    /// Sends raw bytes, unvalidated.
    pub fn send_raw(
        &mut self,
        raw: &RawMessage,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), SessionError> {
        let header = Header::from_bytes(&raw.header);
        self.record_sent(&header, &raw.body, fds.len());
        let r = self.conn().send_raw(raw, fds);
        r.map_err(|e| self.conn_error(None, e))
    }

    /// Sends `messages` as one byte stream cut at `cuts` (ascending offsets into their
    /// concatenation), pausing `pause` between pieces, with `fds` on the first piece: however
    /// the stream is cut, a back-end must read the same messages (R-WIRE-07). Each message is
    /// recorded in the transcript as sent.
    pub fn send_stream(
        &mut self,
        messages: &[RawMessage],
        cuts: &[usize],
        fds: &[BorrowedFd<'_>],
        pause: Duration,
    ) -> Result<(), SessionError> {
        let mut bytes = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let header = Header::from_bytes(&m.header);
            self.record_sent(&header, &m.body, if i == 0 { fds.len() } else { 0 });
            bytes.extend_from_slice(&m.to_bytes());
        }
        let mut start = 0;
        let ends = cuts
            .iter()
            .copied()
            .filter(|&c| c > 0 && c < bytes.len())
            .chain([bytes.len()]);
        for end in ends {
            if end <= start {
                continue;
            }
            let with = if start == 0 { fds } else { &[] };
            let r = self.conn().send_bytes(&bytes[start..end], with);
            r.map_err(|e| self.conn_error(None, e))?;
            start = end;
            if start < bytes.len() {
                std::thread::sleep(pause);
            }
        }
        Ok(())
    }

    /// Receives whatever comes next within `timeout`.
    pub fn recv_any(&mut self, timeout: Duration) -> Result<Message, SessionError> {
        let r = {
            let mut conn = self.conn();
            let old = conn.timeout();
            conn.set_timeout(Some(timeout));
            let r = conn.recv_unchecked();
            conn.set_timeout(old);
            r
        };
        let msg = r.map_err(|e| self.conn_error(None, e))?;
        self.record_received(&msg);
        Ok(msg)
    }

    /// Checks that nothing arrives within `window`.
    pub fn expect_silence(&mut self, window: Duration) -> Result<(), SessionError> {
        match self.recv_any(window) {
            Ok(message) => Err(SessionError::UnexpectedMessage {
                message: Box::new(message),
            }),
            Err(SessionError::Timeout { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends GET_FEATURES and reads until its reply arrives (within `timeout`), returning what
    /// came before it. A back-end serves one connection's messages in order, so a message it
    /// answers comes before the reply to the GET_FEATURES sent after it: an empty list proves
    /// that nothing answered the messages sent earlier, without waiting out a window (the probe
    /// of checklist R-ACK-03).
    pub fn round_trip(&mut self, timeout: Duration) -> Result<Vec<Message>, SessionError> {
        /// Messages read before giving up on the probe's reply.
        const AT_MOST: usize = 8;
        let deadline = std::time::Instant::now() + timeout;
        let probe = Header::request(FrontendReq::GetFeatures as u32, 0, false);
        self.send_raw(&RawMessage::new(probe, vec![]), &[])?;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let m = self.recv_any(left)?;
            if m.header.request == FrontendReq::GetFeatures as u32 && m.header.is_reply() {
                return Ok(before);
            }
            before.push(m);
            if before.len() >= AT_MOST {
                return Err(SessionError::UnexpectedMessage {
                    message: Box::new(before.swap_remove(0)),
                });
            }
        }
    }

    /// Ends the session as a front-end that leaves: shuts down the sending side, then waits up
    /// to `within` for the back-end to close its end (EOF or a reset), discarding what it still
    /// sends; whether it did. The back-end's disconnect handling runs in between, so when this
    /// returns `true` a teardown that crashes has had its chance to.
    pub fn leave(self, within: Duration) -> bool {
        use std::io::Read;
        let conn = self.conn();
        let mut stream = conn.stream();
        if stream.shutdown(std::net::Shutdown::Write).is_err() {
            return true;
        }
        let deadline = std::time::Instant::now() + within;
        let mut sink = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                return false;
            }
            match stream.read(&mut sink) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    );
                }
            }
        }
    }
}
