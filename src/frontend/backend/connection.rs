//! Serving one connection: the poll loop over the main socket, the pending channel ack and the
//! kicks, and the dispatch of each front-end request to the handler of its family.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::time::Instant;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vhu_protocol::wire::ReplyKind;
use vhu_protocol::wire::payload::Body;
use vhu_protocol::{Connection, FrontendReq, Message};

use super::datapath::drain_eventfd;
use super::probe::ProbeKind;
use super::{CHANNEL_ACK_WAIT, End, JudgingBackend, Misbehave};

impl JudgingBackend {
    /// Serves one connection until the front-end closes it, `stop` says so, or `deadline`.
    pub fn serve(
        &mut self,
        conn: Connection,
        deadline: Instant,
        stop: &mut dyn FnMut() -> bool,
    ) -> End {
        self.connections += 1;
        self.judge.new_connection();
        self.mem.clear();
        self.rings.clear();
        self.acked_features = 0;
        self.acked_protocol = 0;
        self.backend_channel = None;
        self.pending = None;
        self.channel_armed = false;
        self.blocked_once = false;
        self.probes = Vec::new();
        self.last_main = Instant::now();
        self.liveness_sent = false;
        self.shmem_mapped = false;
        self.iotlb.clear();
        self.misses = 0;
        let mut handled = 0usize;
        loop {
            if Instant::now() >= deadline {
                return End::Stopped;
            }
            if stop() {
                // The process is gone; what it sent before it went (and the hang-up its exit
                // caused) is still read, so an ending the front-end chose is judged as one.
                let mut pfd = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
                let readable = poll(&mut pfd, PollTimeout::ZERO).is_ok_and(|n| n > 0);
                if !readable {
                    return End::Stopped;
                }
            }
            let kicks: Vec<u32> = self
                .rings
                .iter()
                .filter(|(_, r)| r.started && r.kick.is_some())
                .map(|(i, _)| *i)
                .collect();
            self.next_probe();
            self.maybe_liveness();
            if let Some((p, at)) = &self.pending {
                if at.elapsed() >= CHANNEL_ACK_WAIT {
                    // No ack in time: judged once, and the channel is not probed again (one
                    // missing ack is one finding, not one per probe).
                    let p = p.clone();
                    self.pending = None;
                    self.probes.clear();
                    self.judge_probe(&p, None, true);
                    if matches!(p.kind, ProbeKind::Liveness) {
                        return End::Hung;
                    }
                }
            }
            let channel_fd = self
                .pending
                .as_ref()
                .and(self.backend_channel.as_ref())
                .map(|c| c.stream().as_raw_fd());
            let mut fds = vec![PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
            // SAFETY: the channel's fd lives in self.backend_channel for the whole poll.
            let channel_borrow = channel_fd.map(|fd| unsafe { BorrowedFd::borrow_raw(fd) });
            if let Some(b) = channel_borrow {
                fds.push(PollFd::new(b, PollFlags::POLLIN));
            }
            let kick_base = fds.len();
            for i in &kicks {
                if let Some(k) = &self.rings[i].kick {
                    fds.push(PollFd::new(k.as_fd(), PollFlags::POLLIN));
                }
            }
            let _ = poll(&mut fds, PollTimeout::from(50u16));
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            // The main socket first: a front-end that sent an IOTLB update and then acked the
            // miss on its channel is seen in that order (R-IOTLB-04).
            if ready[0] {
                let msg = match conn.recv_unchecked() {
                    Ok(m) => m,
                    Err(e) if e.is_peer_gone() => return End::FrontendClosed,
                    Err(e) => return End::Unreadable(e.to_string()),
                };
                self.last_main = Instant::now();
                self.record(true, msg.header, &msg.payload, msg.fds.len());
                self.judge.observe(&msg);
                self.maybe_block(&msg);
                let after_channel = self.backend_channel.is_some()
                    && msg.header.request != FrontendReq::SetBackendReqFd as u32;
                let kick = msg.header.request == FrontendReq::SetVringKick as u32;
                self.handle(&conn, msg);
                // Probes start once a message after SET_BACKEND_REQ_FD was answered: the
                // front-end has had its ack and serves the channel by then.
                self.channel_armed |= after_channel;
                handled += 1;
                if self.connections == 1
                    && (self.misbehave == Misbehave::CloseAfter(handled)
                        || self.misbehave == Misbehave::CloseAfterKick && kick)
                {
                    return End::WeClosed;
                }
            }
            if channel_fd.is_some() && ready[1] && self.pending.is_some() {
                if let Some((p, _)) = self.pending.take() {
                    let got = self.backend_channel.as_ref().map(|c| c.recv_unchecked());
                    match got {
                        Some(Ok(m)) => {
                            self.record_channel(true, m.header, &m.payload, m.fds.len());
                            self.judge_probe(&p, Some(&m), false);
                        }
                        _ => {
                            // The channel closed: the front-end is going away, which is no
                            // hang (its main socket's end follows).
                            self.probes.clear();
                            self.judge_probe(&p, None, false);
                        }
                    }
                }
            }
            for (n, i) in kicks.iter().enumerate() {
                if ready[n + kick_base] {
                    if let Some(k) = &self.rings[i].kick {
                        drain_eventfd(k);
                    }
                    self.judge.kicked(*i);
                    self.process(*i);
                }
            }
            let polled: Vec<u32> = self
                .rings
                .iter()
                .filter(|(_, r)| r.started && r.poll)
                .map(|(i, _)| *i)
                .collect();
            for i in polled {
                self.process(i);
            }
        }
    }

    /// Hands `msg` to the handler of its request's family; what no family takes gets
    /// [`Self::not_implemented`].
    fn handle(&mut self, conn: &Connection, msg: Message) {
        use FrontendReq::*;
        let Ok(req) = FrontendReq::from_code(msg.header.request) else {
            return;
        };
        let body = Body::decode(req.request_body(), &msg.payload).ok();
        match req {
            GetFeatures | GetProtocolFeatures | SetFeatures | SetProtocolFeatures | GetQueueNum
            | GetMaxMemSlots | GetStatus => self.handle_features(conn, msg, req, body),
            SetMemTable | AddMemReg | RemMemReg | IotlbMsg => {
                self.handle_memory_table(conn, msg, req, body);
            }
            GetVringBase
            | GetVringBaseSkipDrain
            | SetVringNum
            | SetVringBase
            | SetVringAddr
            | SetVringKick
            | SetVringCall
            | SetVringEnable
            | VringKick
            | ResetDevice => {
                self.handle_vrings(conn, msg, req, body);
            }
            GetConfig | GetShmemConfig => self.handle_config(conn, msg, req, body),
            SetLogBase | PostcopyAdvise | PostcopyEnd | SetDeviceStateFd | CheckDeviceState
            | GetInflightFd => self.handle_state(conn, msg, req, body),
            SetBackendReqFd => self.take_channel(conn, msg, req),
            _ => self.not_implemented(conn, &msg, req),
        }
    }

    /// A request this back-end does not implement, or whose payload did not decode. An
    /// explicit-reply one (it offered nothing that gates it) gets the error form, an empty
    /// payload, so the front-end is not left waiting; any other is acked 0 where asked.
    pub(super) fn not_implemented(&mut self, conn: &Connection, msg: &Message, req: FrontendReq) {
        if req.reply_kind() == ReplyKind::Always {
            self.reply(conn, msg.header.request, &Body::Empty);
        } else {
            self.ack(conn, msg, req, 0);
        }
    }
}
