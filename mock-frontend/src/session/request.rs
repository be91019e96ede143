//! The checked request/reply path: every request goes out here, its reply (when one is due) is
//! checked for framing, size and payload syntax, and both are recorded in the transcript.

use std::os::fd::BorrowedFd;
use std::sync::{Arc, PoisonError};

use vhu_protocol::wire::ReplyKind;
use vhu_protocol::wire::payload::Body;
use vhu_protocol::{ConnError, Connection, FrontendReq, Header, Message, Violation};

use super::{Ack, ReplyViolation, Session, SessionError};
use crate::transcript::{Channel, Direction};

impl Session {
    fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    pub(super) fn record_sent(&mut self, header: &Header, payload: &[u8], fds: usize) {
        let at = self.now_us();
        self.transcript.record(
            at,
            Channel::Main,
            Direction::ToBackend,
            header,
            payload,
            fds,
        );
    }

    pub(super) fn record_received(&mut self, msg: &Message) {
        self.received += 1;
        let at = self.now_us();
        self.transcript.record(
            at,
            Channel::Main,
            Direction::FromBackend,
            &msg.header,
            &msg.payload,
            msg.fds.len(),
        );
    }

    /// Sends a request and, when one is due, receives and checks its reply. `need_reply` forces
    /// the NEED_REPLY flag; `None` follows the policy (ack-only requests once REPLY_ACK is on).
    pub fn request(
        &mut self,
        req: FrontendReq,
        body: &Body,
        fds: &[BorrowedFd<'_>],
        need_reply: Option<bool>,
    ) -> Result<Option<Message>, SessionError> {
        let ack_only = req.reply_kind() == ReplyKind::AckOnly;
        let need = need_reply.unwrap_or(self.opts.auto_need_reply && ack_only && self.reply_ack());
        let payload = body.encode();
        let header = Header::request(req as u32, payload.len() as u32, need);
        let shared = Arc::clone(&self.conn);
        let conn = shared.lock().unwrap_or_else(PoisonError::into_inner);
        self.record_sent(&header, &payload, fds.len());
        conn.send(header, &payload, fds)
            .map_err(|e| self.conn_error(Some(req), e))?;
        self.track(req, body);
        if !ack_only || need {
            let r = self.receive_reply(&conn, req, ack_only).map(Some);
            self.last_unacked = None;
            return r;
        }
        self.last_unacked = Some(req as u32);
        Ok(None)
    }

    /// Bookkeeping of what was negotiated.
    fn track(&mut self, req: FrontendReq, body: &Body) {
        match (req, body) {
            (FrontendReq::SetFeatures, Body::U64(v)) => self.acked_features = Some(*v),
            (FrontendReq::SetProtocolFeatures, Body::U64(v)) => self.acked_protocol = Some(*v),
            _ => {}
        }
    }

    fn receive_reply(
        &mut self,
        conn: &Connection,
        req: FrontendReq,
        ack_only: bool,
    ) -> Result<Message, SessionError> {
        let msg = match conn.recv_reply(req as u32) {
            Ok(m) => m,
            Err(ConnError::UnexpectedReply { message, .. }) => {
                self.record_received(&message);
                let h = &message.header;
                let reason = if h.is_reply() && Some(h.request) == self.last_unacked {
                    ReplyViolation::UnrequestedAck { code: h.request }
                } else if h.is_reply() {
                    ReplyViolation::WrongCode {
                        got: h.request,
                        want: req as u32,
                    }
                } else {
                    ReplyViolation::NoReplyFlag { flags: h.flags }
                };
                return Err(SessionError::BadReply {
                    during: req,
                    reason,
                    message,
                });
            }
            Err(e) => return Err(self.conn_error(Some(req), e)),
        };
        self.record_received(&msg);
        let expected = if ack_only {
            Some(8)
        } else {
            req.reply_body().fixed_size()
        };
        if let Some(size) = expected.filter(|&s| s != msg.payload.len()) {
            let reason = ReplyViolation::WrongSize {
                got: msg.payload.len(),
                want: size,
                ack: ack_only,
            };
            return Err(SessionError::BadReply {
                during: req,
                reason,
                message: Box::new(msg),
            });
        }
        let config_error = req == FrontendReq::GetConfig && msg.payload.is_empty();
        if !ack_only && !config_error {
            // An empty GET_CONFIG reply is that request's defined error form (R-CFG-02). Otherwise
            // the reply's own syntax (counts, reserved bits): a reply that breaks its layout is
            // the back-end's departure, not something to interpret.
            if let Err(v) = msg.body(req.reply_body()).and_then(|b| b.validate()) {
                let reason = match v {
                    Violation::CountMismatch {
                        declared, actual, ..
                    } if req == FrontendReq::GetShmemConfig => {
                        ReplyViolation::ShmemConfigCount { declared, actual }
                    }
                    v => ReplyViolation::BadPayload(v),
                };
                return Err(SessionError::BadReply {
                    during: req,
                    reason,
                    message: Box::new(msg),
                });
            }
        }
        if req == FrontendReq::GetShmemConfig
            && let Ok(vhu_protocol::wire::payload::Body::ShmemConfig(c)) =
                msg.body(req.reply_body())
        {
            let page = crate::memory::page_size();
            if let Some((index, &size)) = c.sizes.iter().enumerate().find(|&(_, &s)| s % page != 0)
            {
                return Err(SessionError::BadReply {
                    during: req,
                    reason: ReplyViolation::ShmemSizeUnaligned { index, size, page },
                    message: Box::new(msg),
                });
            }
        }
        match req {
            FrontendReq::GetFeatures => self.offered_features = msg.u64(),
            FrontendReq::GetProtocolFeatures => self.offered_protocol = msg.u64(),
            _ => {}
        }
        Ok(msg)
    }

    pub(super) fn conn_error(&mut self, during: Option<FrontendReq>, e: ConnError) -> SessionError {
        let req = during.unwrap_or(FrontendReq::GetFeatures);
        match e {
            ConnError::Timeout { waited, .. } => SessionError::Timeout {
                during: req,
                waited,
            },
            ConnError::SendTimeout {
                waited,
                sent,
                total,
            } => SessionError::Stalled {
                during,
                waited,
                sent,
                total,
            },
            e if e.is_peer_gone() => SessionError::Closed { during },
            ConnError::BadVersion { header } => SessionError::BadReply {
                during: req,
                reason: ReplyViolation::BadVersion {
                    flags: header.flags,
                },
                message: Box::new(Message {
                    header,
                    payload: vec![],
                    fds: vec![],
                }),
            },
            ConnError::OversizedPayload { header, max } => SessionError::BadReply {
                during: req,
                reason: ReplyViolation::OversizedPayload {
                    size: header.size,
                    max,
                },
                message: Box::new(Message {
                    header,
                    payload: vec![],
                    fds: vec![],
                }),
            },
            ConnError::TooManyFds { got, header, .. } => SessionError::BadReply {
                during: req,
                reason: ReplyViolation::TooManyFds { got },
                message: Box::new(Message {
                    header,
                    payload: vec![],
                    fds: vec![],
                }),
            },
            ConnError::UnexpectedReply { message, .. } => {
                SessionError::UnexpectedMessage { message }
            }
            other => SessionError::Local {
                what: format!("socket error: {other}"),
                source: std::io::Error::other(other.to_string()),
            },
        }
    }

    pub(super) fn ack(
        &mut self,
        req: FrontendReq,
        body: &Body,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Ack, SessionError> {
        Ok(match self.request(req, body, fds, None)? {
            None => Ack::NotRequested,
            Some(m) => match m.u64() {
                Some(0) => Ack::Ok,
                Some(v) => Ack::Failed(v),
                None => Ack::Failed(u64::MAX),
            },
        })
    }

    pub(super) fn u64_reply(&mut self, req: FrontendReq) -> Result<u64, SessionError> {
        let m = self
            .request(req, &Body::Empty, &[], None)?
            .expect("explicit-reply request");
        Ok(m.u64().unwrap_or_default())
    }
}
