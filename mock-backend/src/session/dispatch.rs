//! One message's path: reading it (closing on what cannot be framed or read), its checks
//! (version, code, payload, fds), the dispatch to its handler, and the reply or ack it earned
//! (R-ACK-01..04, R-WIRE-03/04/05), with the refusal that may end the connection.

use std::os::fd::{AsFd, OwnedFd};

use vhu_protocol::wire::ReplyKind;
use vhu_protocol::wire::payload::{Body, BodyKind};
use vhu_protocol::{ConnError, FrontendReq, Header, Message, ProtocolFeatures};

use crate::faults::Fault;

use super::{Outcome, SHOWN_PAYLOAD, Session, hang};

impl Session<'_> {
    /// `frame-by-read`: whether the next message arrived whole in what is buffered now (a
    /// back-end that frames by `read` calls sees a split message as two malformed ones).
    fn whole_message_buffered(&self) -> bool {
        use nix::sys::socket::{MsgFlags, recv};
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 4096];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        let Ok(n) = recv(self.conn.stream().as_raw_fd(), &mut buf, flags) else {
            return true;
        };
        if n == 0 {
            return true;
        }
        n >= 12 && {
            let size = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]) as usize;
            n >= 12 + size.min(4096 - 12)
        }
    }

    /// Reads and handles one message; false when the connection ends.
    pub(crate) fn handle_one(&mut self) -> bool {
        if self.has(Fault::FrameByRead) && !self.whole_message_buffered() {
            return false;
        }
        let msg = match self.conn.recv_unchecked() {
            Ok(m) => m,
            Err(e) if e.is_timeout() => return true,
            // Refused by closing: the stream is out of step, or the fds were too many.
            Err(e @ (ConnError::OversizedPayload { .. } | ConnError::TooManyFds { .. })) => {
                self.refused(e.to_string());
                return false;
            }
            Err(_) => return false,
        };
        let h = msg.header;
        if h.flags().version() != 1 {
            // R-WIRE-13: a request of another version is refused by closing.
            let version = h.flags().version();
            self.refused(format!("request {} has version {version}", h.request));
            return false;
        }
        let Ok(req) = FrontendReq::from_code(h.request) else {
            if self.has(Fault::CrashOnUnknownCode) {
                std::process::abort();
            }
            let open = self.finish(h, None, Outcome::Failed);
            return self.refused(format!("unknown request code {}", h.request)) && open;
        };
        self.why = None;
        if self.has(Fault::CrashOnLyingCount)
            && crate::faults::count_lies(req, &msg.payload, &msg.fds, self.queues.len())
        {
            // The fault trusts the count, as a back-end reading past its buffer would: it dies.
            std::process::abort();
        }
        let outcome = self.dispatch(req, msg);
        let refused = outcome.refuses();
        let open = self.finish(h, Some(req), outcome);
        if refused {
            let why = self
                .why
                .take()
                .map(|w| format!(": {w}"))
                .unwrap_or_default();
            let what = format!("{} ({}) refused{why}", req.spec_name(), h.request);
            return self.refused(what) && open;
        }
        open
    }

    /// Whether a refusal makes the connection close (or the process exit).
    fn refusal_ends(&self) -> bool {
        self.has(Fault::ExitAfterRefusal) || self.has(Fault::CloseAfterRefusal)
    }

    /// After a refusal (its nack, if any, sent): false when the connection must close, which
    /// the legal variations `close-after-refusal` and `exit-after-refusal` (the process goes
    /// too, with status 1) do.
    fn refused(&mut self, what: String) -> bool {
        if self.has(Fault::ExitAfterRefusal) {
            // Printed by `run_from_args` as the process exits.
            self.exit_refusal = Some(what);
            false
        } else if self.has(Fault::CloseAfterRefusal) {
            eprintln!("vhu-mock-backend: close-after-refusal: {what}; closing the connection");
            false
        } else {
            true
        }
    }

    /// Sends the reply or ack a request earned; false when the connection must close.
    fn finish(&mut self, h: Header, req: Option<FrontendReq>, outcome: Outcome) -> bool {
        let reply_ack = self.negotiated(ProtocolFeatures::REPLY_ACK);
        let always = req.is_some_and(|r| r.reply_kind() == ReplyKind::Always);
        let mut fd = None;
        let body = match outcome {
            Outcome::Close => return false,
            Outcome::Silent => return true,
            Outcome::Reply(b) | Outcome::Refused(b) => Some(b),
            Outcome::ReplyWithFd(b, f) => {
                fd = Some(f);
                Some(b)
            }
            // A request that must be answered but failed: a u64 reply carries a non-zero value;
            // other replies are empty ("error" for GET_CONFIG, R-CFG-02).
            _ if always => Some(match req.map(FrontendReq::reply_body) {
                Some(BodyKind::U64) => Body::U64(1),
                _ => Body::Empty,
            }),
            Outcome::Done | Outcome::Failed if self.has(Fault::NoAck) => None,
            Outcome::Done if reply_ack && (h.need_reply() || self.has(Fault::UnrequestedAck)) => {
                Some(Body::U64(0))
            }
            Outcome::Failed if h.need_reply() && reply_ack => Some(Body::U64(1)),
            _ => None,
        };
        let Some(body) = body else { return true };
        let payload = body.encode();
        let fds: Vec<_> = fd.iter().map(AsFd::as_fd).collect();
        self.conn
            .send(self.reply_header(h, payload.len()), &payload, &fds)
            .is_ok()
    }

    /// Replies carry exactly flags 0x5 and the request's code (R-WIRE-03/04/05), unless a
    /// fault breaks that on purpose.
    fn reply_header(&self, h: Header, len: usize) -> Header {
        let mut reply = Header::reply(h.request, len as u32);
        if self.has(Fault::WrongReplyCode) {
            reply.request += 1;
        }
        if self.has(Fault::ReplyFlagsNeedReply) {
            reply.flags |= h.flags & 0x8;
        }
        if self.has(Fault::BadReplyVersion) {
            reply.flags = (reply.flags & !3) | 2;
        }
        reply
    }

    /// Closes fds the request does not take (R-WIRE-09), unless the fault keeps them.
    fn take_fds(&mut self, msg: &mut Message, n: usize) -> Vec<OwnedFd> {
        let extra = msg.fds.split_off(n.min(msg.fds.len()));
        if self.has(Fault::LeakFds) {
            self.leaked.extend(extra);
        }
        std::mem::take(&mut msg.fds)
    }

    /// The flat dispatcher: one handler per request.
    fn dispatch(&mut self, req: FrontendReq, mut msg: Message) -> Outcome {
        use FrontendReq::*;
        let xen =
            self.negotiated(ProtocolFeatures::XEN_MMAP) && !self.has(Fault::XenRegionsIgnored);
        if xen && matches!(req, SetMemTable | AddMemReg) {
            // R-MEM-17: 40-byte regions, not the usual 32.
            return self.xen_regions(req, msg);
        }
        let body = match msg
            .body(req.request_body())
            .and_then(|b| b.validate().map(|()| b))
        {
            Ok(b) => b,
            Err(e) => {
                if req == SetMemTable && self.has(Fault::MemTableDroppedOnRefusal) {
                    // The fault half-executes the message: the old table goes first.
                    self.mem.replace_regions(vec![]);
                }
                self.why = Some(format!("malformed payload: {e}"));
                self.take_fds(&mut msg, 0);
                return Outcome::Failed;
            }
        };
        let (_, max_fds) = req.fd_range();
        if max_fds > 0 && msg.fds.len() > max_fds {
            // More fds than the request takes (a KICK with two, R-WIRE-10): refused, all closed.
            self.why = Some(format!("{} fds, it takes at most {max_fds}", msg.fds.len()));
            self.take_fds(&mut msg, 0);
            return Outcome::Failed;
        }
        if self.refusal_ends() {
            // The refusal line shows what the handler was given (bad index, size, bits...).
            let shown = match &body {
                Body::U64(v) => format!("{v:#x}"),
                b => format!("{b:?}").chars().take(SHOWN_PAYLOAD).collect(),
            };
            let fds = match msg.fds.len() {
                0 => String::new(),
                n => format!(" with {n} fds"),
            };
            self.why = Some(format!("{shown}{fds}"));
        }
        let fds = self.take_fds(&mut msg, max_fds);
        let need_reply = msg.header.need_reply();
        match (req, body) {
            (GetFeatures, _) if self.has(Fault::NoReplyGetFeatures) => hang(),
            (GetFeatures, _) => Outcome::Reply(Body::U64(self.offered_features())),
            (SetFeatures, Body::U64(v)) => self.set_features(v),
            (SetOwner, _) => Outcome::Done,
            (ResetOwner, _) => self.disable_all(),
            (GetProtocolFeatures, _) => Outcome::Reply(Body::U64(self.offered_protocol)),
            (SetProtocolFeatures, Body::U64(v)) => self.set_protocol_features(v),
            (GetQueueNum, _) if self.has(Fault::NoReplyGetQueueNum) => hang(),
            (GetQueueNum, _) => Outcome::Reply(Body::U64(self.dev.queue_num())),
            (GetMaxMemSlots, _) => self.get_max_mem_slots(),
            (SetMemTable, _) if self.has(Fault::HangSetMemTable) => hang(),
            (SetMemTable, Body::MemTable(regions)) => self.set_mem_table(regions, fds),
            // R-NEG-11: a message of a protocol feature not negotiated is refused.
            (AddMemReg | RemMemReg, _)
                if !self.negotiated(ProtocolFeatures::CONFIGURE_MEM_SLOTS)
                    && !self.has(Fault::MemSlotsUnnegotiated) =>
            {
                Outcome::Failed
            }
            (AddMemReg, Body::SingleRegion(r)) => self.add_mem_reg(r, fds),
            (RemMemReg, Body::SingleRegion(r)) => self.rem_mem_reg(r),
            (SetLogBase, Body::Log(l)) => self.set_log_base(l, fds),
            (SetLogFd, _) => self.set_log_fd(fds),
            (SetVringNum, Body::VringState(s)) => self.set_vring_num(s),
            (SetVringBase, Body::VringState(s)) => self.set_vring_base(s),
            (SetVringAddr, Body::VringAddr(a)) => self.set_vring_addr(a),
            (SetVringEndian, Body::VringState(s)) => self.set_vring_endian(s),
            (GetVringBase, Body::VringState(s)) => self.get_vring_base(s),
            (GetVringBaseSkipDrain, Body::VringState(s))
                if self.negotiated(ProtocolFeatures::GET_VRING_BASE_SKIP_DRAIN) =>
            {
                self.get_vring_base_skip_drain(s)
            }
            (SetVringKick | SetVringCall | SetVringErr, Body::U64(w)) => {
                self.set_vring_fd(req, w, fds)
            }
            (SetVringEnable, Body::VringState(s)) => self.set_vring_enable(s),
            (VringKick, Body::VringState(s)) => self.vring_kick(s),
            (GetConfig, Body::Config(h, _)) => self.get_config(h),
            (SetConfig, Body::Config(h, data)) => self.set_config(h, &data),
            (SetBackendReqFd, _) => self.set_backend_req_fd(fds),
            (ResetDevice, _) => self.reset_device(),
            (SetStatus, Body::U64(v)) => self.set_status(v),
            (GetStatus, _) => Outcome::Reply(Body::U64(self.status)),
            (SetDeviceStateFd, Body::DeviceState(p)) => self.set_device_state_fd(p.direction, fds),
            (CheckDeviceState, _) => self.check_device_state(),
            (GetShmemConfig, _) => self.get_shmem_config(),
            // R-MISC-03: GPU_SET_SOCKET is a gpu device's message; R-MISC-05: crypto sessions
            // are a crypto device's, with CRYPTO_SESSION (never offered here).
            (GpuSetSocket, _) if self.has(Fault::AcceptGpuSocket) => Outcome::Done,
            (GpuSetSocket, _) => self.set_gpu_socket(fds),
            (CloseCryptoSession, _) if self.has(Fault::AcceptCryptoSession) => Outcome::Done,
            (GetInflightFd, Body::Inflight(d)) => self.get_inflight_fd(d),
            (SetInflightFd, Body::Inflight(d)) => self.set_inflight_fd(d, fds),
            (IotlbMsg, Body::Iotlb(m)) => self.iotlb_msg(m, need_reply),
            _ => Outcome::Failed,
        }
    }
}
