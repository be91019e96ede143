//! The back-end channel from the judging back-end's side: taking it (SET_BACKEND_REQ_FD), with
//! the probes the chosen departure sends on it, and [`Misbehave::ChannelBlock`]'s blocking on
//! one of its acks before a main-socket reply.

use vhu_protocol::{BackendReq, Connection, FrontendReq, Message, ProtocolFeatures};

use super::probe::{Probe, shmem_probes};
use super::{CHANNEL_ACK_WAIT, JudgingBackend, Misbehave, UNKNOWN_BACKEND_REQ};

impl JudgingBackend {
    /// The channel request for [`Misbehave::ChannelBlock`]: a known one where its feature is
    /// negotiated (CONFIG_CHANGE_MSG needs CONFIG), else the unknown code.
    pub(super) fn block_code(&self) -> u32 {
        if self.acked_protocol & ProtocolFeatures::CONFIG.bits() != 0 {
            BackendReq::ConfigChangeMsg as u32
        } else {
            UNKNOWN_BACKEND_REQ
        }
    }

    /// [`Misbehave::ChannelBlock`]: before answering `msg`, which the front-end waits on, block
    /// on a channel ack as a single-threaded back-end does.
    pub(super) fn maybe_block(&mut self, msg: &Message) {
        if self.misbehave != Misbehave::ChannelBlock
            || self.blocked_once
            || !self.channel_armed
            || !self.reply_ack_acked()
        {
            return;
        }
        let Ok(req) = FrontendReq::from_code(msg.header.request) else {
            return;
        };
        let awaited = req.reply_kind() == vhu_protocol::wire::ReplyKind::Always
            || (msg.header.need_reply()
                && req.reply_kind() == vhu_protocol::wire::ReplyKind::AckOnly);
        if !awaited || req == FrontendReq::SetBackendReqFd {
            return;
        }
        self.blocked_once = true;
        let code = self.block_code();
        if !self.send_channel(code) {
            self.judge.channel_blocked(code, req, None);
            return;
        }
        let reply = self.backend_channel.as_ref().map(|ch| ch.recv_unchecked());
        match reply {
            Some(Ok(m)) => {
                self.record_channel(true, m.header, &m.payload, m.fds.len());
                self.judge.channel_blocked(code, req, Some(&m));
            }
            _ => self.judge.channel_blocked(code, req, None),
        }
    }

    /// SET_BACKEND_REQ_FD: keeps the channel, queues the probes of the chosen departure, acks.
    pub(super) fn take_channel(&mut self, conn: &Connection, msg: Message, req: FrontendReq) {
        let mut fds = msg.fds;
        self.backend_channel = fds.pop().map(|fd| {
            Connection::new(
                std::os::unix::net::UnixStream::from(fd),
                Some(CHANNEL_ACK_WAIT),
            )
        });
        if self.misbehave == Misbehave::ChannelProbe {
            self.probes = if self.acked_protocol & ProtocolFeatures::CONFIG.bits() != 0 {
                vec![
                    Probe::plain(BackendReq::ConfigChangeMsg as u32),
                    Probe::plain(UNKNOWN_BACKEND_REQ),
                ]
            } else {
                vec![Probe::plain(UNKNOWN_BACKEND_REQ)]
            };
        }
        if self.misbehave == Misbehave::ShmemProbe {
            self.probes = shmem_probes();
        }
        let m = Message {
            header: msg.header,
            payload: msg.payload,
            fds: Vec::new(),
        };
        self.ack(conn, &m, req, 0);
    }
}
