//! One front-end connection (checklist 4.1 to 4.10): negotiated state, the memory table, and a
//! flat dispatcher whose arms each call one handler. REPLY_ACK bookkeeping (R-ACK-01..04) and
//! the reply header (R-WIRE-03/04/05) live in [`Session::finish`] only. Ring handlers are in
//! `rings`, device state transfer in `state`, inflight tracking in `inflight`.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use vhu_protocol::wire::ReplyKind;
use vhu_protocol::wire::payload::{Body, BodyKind, ConfigHeader, LogDesc, MemRegion};
use vhu_protocol::{
    ConnError, Connection, FrontendReq, Header, Message, ProtocolFeatures, VirtioFeatures,
};

use crate::channel::{BackendChannel, Shmem};
use crate::devices::Device;
use crate::faults::{Fault, Faults};
use crate::inflight::InflightArea;
use crate::iotlb::Iotlb;
use crate::memory::{DirtyLog, Memory, Region};
use crate::rings::Vring;
use crate::state::Transfer;

/// Limits and declarations fixed for the process.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest ring size SET_VRING_NUM accepts.
    pub queue_size_max: u32,
    /// Declared shared memory regions: (shmid, size).
    pub shmem: Vec<(u8, u64)>,
}

/// The answer of a handler: a reply of its own, or success / failure for the ack.
pub(crate) enum Outcome {
    /// An explicit reply.
    Reply(Body),
    /// A reply that carries one fd (GET_INFLIGHT_FD).
    ReplyWithFd(Body, OwnedFd),
    /// Success: ack 0 if asked.
    Done,
    /// Failure: ack non-zero if asked (R-ACK-04).
    Failed,
    /// An explicit reply that reports the request refused (GET_CONFIG's empty payload, a
    /// non-zero u64).
    Refused(Body),
    /// The connection must close (R-NEG-12, R-WIRE-13).
    Close,
    /// Nothing is sent back, not even for a request that is always answered (the fault
    /// `iotlb-ack-only`).
    Silent,
}

impl Outcome {
    /// Whether the back-end refused the request (what `exit-after-refusal` and
    /// `close-after-refusal` act on).
    fn refuses(&self) -> bool {
        matches!(self, Self::Failed | Self::Refused(_) | Self::Close)
    }
}

/// Why the process stops after a connection (fault modes and legal variations).
#[derive(Debug)]
pub enum Stop {
    /// `exit-on-disconnect`: exit 0 once the front-end has gone.
    Disconnected,
    /// `exit-after-refusal`: exit 1, having refused what this says.
    Refused(String),
}

/// Memory slots offered with CONFIGURE_MEM_SLOTS (R-MEM-07).
const MAX_MEM_SLOTS: u64 = 32;

/// The config space's length under `config-8` (vsock's).
const CONFIG_8_LEN: u64 = 8;

/// How much of a refused request's decoded payload the refusal line shows.
const SHOWN_PAYLOAD: usize = 200;

/// Per-connection state.
pub struct Session<'a> {
    pub(crate) conn: Connection,
    pub(crate) dev: &'a mut Device,
    pub(crate) faults: &'a Faults,
    pub(crate) limits: &'a Limits,
    pub(crate) offered_protocol: u64,
    pub(crate) features: u64,
    pub(crate) protocol: u64,
    pub(crate) mem: Memory,
    pub(crate) queues: Vec<Vring>,
    pub(crate) leaked: Vec<OwnedFd>,
    /// Fault `keep-old-log`: replaced logs, still mapped.
    pub(crate) kept_logs: Vec<crate::memory::DirtyLog>,
    pub(crate) channel: Option<BackendChannel>,
    pub(crate) shmem: Shmem,
    pub(crate) status: u64,
    pub(crate) log_fd: Option<OwnedFd>,
    /// The inflight tracking area handed out or handed back (R-INFL-01, R-INFL-03).
    pub(crate) inflight: Option<InflightArea>,
    /// A device state transfer in progress.
    pub(crate) transfer: Option<Transfer>,
    /// The device IOTLB (VIRTIO_F_ACCESS_PLATFORM).
    pub(crate) iotlb: Iotlb,
    /// An IOTLB update arrived: rings held up by a miss are retried after its reply.
    pub(crate) iotlb_changed: bool,
    /// What was wrong with the request being refused (payload, fds), for the refusal line of
    /// `exit-after-refusal` and `close-after-refusal`.
    pub(crate) why: Option<String>,
    /// `exit-after-refusal`: the refusal that ends the process.
    exit_refusal: Option<String>,
}

impl<'a> Session<'a> {
    /// A session over an accepted connection.
    pub fn new(
        conn: Connection,
        dev: &'a mut Device,
        faults: &'a Faults,
        limits: &'a Limits,
    ) -> Self {
        // A new front-end finds the device as reset (a blk disk keeps its data).
        dev.reset();
        dev.set_features(0);
        let n = dev.num_queues();
        let shmem = if limits.shmem.is_empty() {
            ProtocolFeatures::empty()
        } else {
            ProtocolFeatures::SHMEM
        };
        // `no-reply-ack`: neither REPLY_ACK nor INBAND_NOTIFICATIONS, which requires it (R-NEG-12).
        let reply_ack = if faults.has(Fault::NoReplyAck) {
            ProtocolFeatures::empty()
        } else {
            ProtocolFeatures::REPLY_ACK | ProtocolFeatures::INBAND_NOTIFICATIONS
        };
        let offered_protocol = ProtocolFeatures::MQ
            | ProtocolFeatures::GET_VRING_BASE_INFLIGHT
            | ProtocolFeatures::GET_VRING_BASE_SKIP_DRAIN
            | ProtocolFeatures::LOG_SHMFD
            | ProtocolFeatures::BACKEND_REQ
            | ProtocolFeatures::CONFIG
            | ProtocolFeatures::BACKEND_SEND_FD
            | ProtocolFeatures::INFLIGHT_SHMFD
            | ProtocolFeatures::RESET_DEVICE
            | ProtocolFeatures::CONFIGURE_MEM_SLOTS
            | ProtocolFeatures::STATUS
            | ProtocolFeatures::DEVICE_STATE
            | ProtocolFeatures::CROSS_ENDIAN
            | ProtocolFeatures::XEN_MMAP
            | reply_ack
            | shmem;
        let offered_protocol = match dev {
            Device::Blk(_) => offered_protocol,
            // Inflight tracking, device state and SHMEM are blk's (a non-blk device cannot
            // honour them); CONFIG only with a config space to read (rng has none).
            Device::Virtio(_) => {
                let mut p = offered_protocol
                    - (ProtocolFeatures::INFLIGHT_SHMFD
                        | ProtocolFeatures::GET_VRING_BASE_INFLIGHT
                        | ProtocolFeatures::GET_VRING_BASE_SKIP_DRAIN
                        | ProtocolFeatures::DEVICE_STATE
                        | ProtocolFeatures::SHMEM);
                if dev.config_len() == 0 {
                    p -= ProtocolFeatures::CONFIG;
                }
                p
            }
        };
        Self {
            conn,
            dev,
            faults,
            limits,
            offered_protocol: offered_protocol.bits(),
            features: 0,
            protocol: 0,
            mem: Memory::default(),
            queues: (0..n).map(|_| Vring::default()).collect(),
            leaked: vec![],
            kept_logs: vec![],
            channel: None,
            shmem: Shmem::new(limits.shmem.clone()),
            status: 0,
            log_fd: None,
            transfer: None,
            iotlb: Iotlb::default(),
            iotlb_changed: false,
            inflight: None,
            why: None,
            exit_refusal: None,
        }
    }

    pub(crate) fn has(&self, f: Fault) -> bool {
        self.faults.has(f)
    }

    pub(crate) fn negotiated(&self, f: ProtocolFeatures) -> bool {
        self.protocol & f.bits() == f.bits()
    }

    /// The device's bits (blk, VERSION_1 and the ring layouts it drives) and the vhost-user
    /// ones, with ACCESS_PLATFORM for every device: addresses through the IOTLB (`iotlb`).
    fn offered_features(&self) -> u64 {
        let mut f = self.dev.device_features()
            | (VirtioFeatures::LOG_ALL
                | VirtioFeatures::PROTOCOL_FEATURES
                | VirtioFeatures::ACCESS_PLATFORM)
                .bits();
        if self.has(Fault::NoAccessPlatform) {
            f &= !VirtioFeatures::ACCESS_PLATFORM.bits();
        }
        if self.has(Fault::Config8) && matches!(self.dev, Device::Blk(_)) {
            // An 8-byte config space has no writeback byte (offset 32) to make writable.
            f &= !vhu_protocol::virtio::blk::F_CONFIG_WCE;
        }
        f
    }

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

    fn set_features(&mut self, v: u64) -> Outcome {
        if v & !self.offered_features() != 0 && !self.has(Fault::AcceptUnofferedFeatures) {
            return Outcome::Failed; // R-NEG-06: bits that were not offered.
        }
        self.features = v;
        self.dev.set_features(v);
        self.mem.logging = v & VirtioFeatures::LOG_ALL.bits() != 0 && !self.has(Fault::NoDirtyLog);
        if v & VirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
            // R-RING-09: without bit 30 every ring is enabled at once.
            self.queues.iter_mut().for_each(|q| q.enabled = true);
        }
        Outcome::Done
    }

    fn set_protocol_features(&mut self, v: u64) -> Outcome {
        if v & !self.offered_protocol != 0 {
            return Outcome::Failed; // R-NEG-05
        }
        // R-NEG-13: SKIP_DRAIN needs GET_VRING_BASE_INFLIGHT and INFLIGHT_SHMFD; bit 20 needs 12.
        let p = ProtocolFeatures::from_bits_retain(v);
        let inflight = p.contains(ProtocolFeatures::INFLIGHT_SHMFD);
        let base_inflight = p.contains(ProtocolFeatures::GET_VRING_BASE_INFLIGHT);
        // SKIP_DRAIN without bit 20 is refused, and bit 20 without 12 (so SKIP_DRAIN without 12).
        if (p.contains(ProtocolFeatures::GET_VRING_BASE_SKIP_DRAIN) && !base_inflight)
            || (base_inflight && !inflight)
        {
            return Outcome::Failed;
        }
        let inband = ProtocolFeatures::INBAND_NOTIFICATIONS.bits();
        let needs = (ProtocolFeatures::BACKEND_REQ | ProtocolFeatures::REPLY_ACK).bits();
        if v & inband != 0 && v & needs != needs && !self.has(Fault::InbandWithoutChannel) {
            return Outcome::Close; // R-NEG-12: the only way to refuse it.
        }
        self.protocol = v;
        Outcome::Done
    }

    fn disable_all(&mut self) -> Outcome {
        self.queues.iter_mut().for_each(|q| q.enabled = false);
        Outcome::Done
    }

    fn get_max_mem_slots(&self) -> Outcome {
        let slots = if self.has(Fault::MaxMemSlotsZero) {
            0
        } else {
            MAX_MEM_SLOTS
        };
        Outcome::Reply(Body::U64(slots))
    }

    pub(crate) fn set_mem_table(&mut self, regions: Vec<MemRegion>, fds: Vec<OwnedFd>) -> Outcome {
        if regions.len() != fds.len() || regions.is_empty() {
            return Outcome::Failed; // R-MEM-20
        }
        let mut mapped: Vec<Region> = vec![];
        for (r, fd) in regions.into_iter().zip(fds) {
            if mapped.iter().any(|o| o.overlaps(&r)) {
                return Outcome::Failed; // R-MEM-04
            }
            match Region::map(r, fd) {
                Ok(region) => mapped.push(region),
                Err(_) => return Outcome::Failed,
            }
        }
        self.mem.replace_regions(mapped);
        self.retranslate();
        Outcome::Done
    }

    pub(crate) fn add_mem_reg(&mut self, r: MemRegion, mut fds: Vec<OwnedFd>) -> Outcome {
        let Some(fd) = fds.pop().filter(|_| fds.is_empty()) else {
            return Outcome::Failed;
        };
        let overlaps = self.mem.regions().iter().any(|o| o.overlaps(&r));
        let full = self.mem.regions().len() as u64 >= MAX_MEM_SLOTS
            && !self.has(Fault::AcceptPastMaxSlots);
        if overlaps || full {
            return Outcome::Failed; // R-MEM-04, R-MEM-10
        }
        match Region::map(r, fd) {
            Ok(region) => {
                self.mem.add_region(region);
                self.retranslate();
                Outcome::Done
            }
            Err(_) => Outcome::Failed,
        }
    }

    fn rem_mem_reg(&mut self, r: MemRegion) -> Outcome {
        let lax = self.has(Fault::LaxRemMemReg);
        let pos = self.mem.regions().iter().position(|o| {
            o.desc.guest_addr == r.guest_addr
                && o.desc.size == r.size
                && (lax || o.desc.user_addr == r.user_addr)
        });
        match pos {
            Some(_) if self.has(Fault::IgnoreRemMemReg) => Outcome::Done,
            // R-MEM-11: dropping the region unmaps it and closes its fd.
            Some(i) => {
                self.mem.remove_region(i);
                self.retranslate();
                Outcome::Done
            }
            None if lax => Outcome::Done,
            None => Outcome::Failed, // R-MEM-14
        }
    }

    /// SET_LOG_BASE (R-LOG-02, R-LOG-07): maps the log; a second one replaces the first. The
    /// reply is a u64, 0 on success.
    fn set_log_base(&mut self, l: LogDesc, mut fds: Vec<OwnedFd>) -> Outcome {
        let ok = self.negotiated(ProtocolFeatures::LOG_SHMFD) && l.size > 0;
        let mapped = fds
            .pop()
            .filter(|_| ok)
            .and_then(|fd| DirtyLog::new(fd, l.size, l.offset).ok());
        match mapped {
            Some(log) => {
                if let Some(old) = self
                    .mem
                    .log
                    .replace(log)
                    .filter(|_| self.has(Fault::KeepOldLog))
                {
                    self.kept_logs.push(old);
                }
                Outcome::Reply(Body::U64(0))
            }
            None => Outcome::Refused(Body::U64(1)),
        }
    }

    fn set_log_fd(&mut self, mut fds: Vec<OwnedFd>) -> Outcome {
        match fds.pop() {
            Some(fd) => {
                self.log_fd = Some(fd);
                Outcome::Done
            }
            None => Outcome::Failed,
        }
    }

    /// Whether `config-8` makes the config space end before `offset + len`.
    fn past_config_8(&self, offset: u32, len: usize) -> bool {
        self.has(Fault::Config8) && u64::from(offset) + len as u64 > CONFIG_8_LEN
    }

    fn get_config(&mut self, h: ConfigHeader) -> Outcome {
        let read = self.dev.read_config(h.offset, h.size as usize);
        let inside = h.size > 0 && !self.past_config_8(h.offset, h.size as usize);
        let Some(mut data) = read.ok().filter(|_| inside) else {
            return Outcome::Refused(Body::Empty); // R-CFG-02: an empty payload signals the error.
        };
        if self.has(Fault::ConfigWrongSize) {
            data.resize(data.len() + 4, 0);
        }
        let header = ConfigHeader {
            size: data.len() as u32,
            ..h
        };
        Outcome::Reply(Body::Config(header, data))
    }

    /// R-CFG-03: a guest write (flags 0) may change only `writeback`; a migration restore
    /// (flags 1) any field.
    fn set_config(&mut self, h: ConfigHeader, data: &[u8]) -> Outcome {
        if self.past_config_8(h.offset, data.len()) {
            return Outcome::Failed;
        }
        if self.has(Fault::ConfigWriteInvisible) && h.flags == 0 {
            return Outcome::Done;
        }
        match self.dev.write_config(h.offset, data, h.flags) {
            Ok(()) => Outcome::Done,
            Err(_) => Outcome::Failed,
        }
    }

    /// R-MISC-03: a gpu device takes the socket (one fd) for the vhost-user-gpu protocol;
    /// any other device refuses it.
    fn set_gpu_socket(&mut self, mut fds: Vec<OwnedFd>) -> Outcome {
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

    fn set_backend_req_fd(&mut self, mut fds: Vec<OwnedFd>) -> Outcome {
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

    fn reset_device(&mut self) -> Outcome {
        for q in &mut self.queues {
            *q = Vring::default();
        }
        self.status = 0;
        self.shmem.clear();
        self.dev.reset();
        Outcome::Done
    }

    fn set_status(&mut self, v: u64) -> Outcome {
        self.status = v;
        Outcome::Done
    }

    /// GET_SHMEM_CONFIG (R-SHM-02): sizes indexed by shmid, nregions counting the non-zero ones.
    fn get_shmem_config(&mut self) -> Outcome {
        if !self.negotiated(ProtocolFeatures::SHMEM) {
            return Outcome::Failed; // R-NEG-11: not negotiated.
        }
        let mut c = vhu_protocol::wire::payload::ShmemConfig::default();
        for &(id, size) in &self.shmem.declared {
            c.sizes[usize::from(id)] = size + u64::from(self.has(Fault::ShmemSizeUnaligned));
        }
        c.nregions = c.sizes.iter().filter(|&&s| s != 0).count() as u32
            + u32::from(self.has(Fault::ShmemConfigCount));
        Outcome::Reply(Body::ShmemConfig(Box::new(c)))
    }

    /// Whether the process must stop after this connection, and how (fault modes).
    pub fn stop(&mut self) -> Option<Stop> {
        if let Some(what) = self.exit_refusal.take() {
            Some(Stop::Refused(what))
        } else if self.has(Fault::ExitOnDisconnect) {
            Some(Stop::Disconnected)
        } else {
            None
        }
    }
}

/// A fault mode that never answers: the session thread sleeps; the harness must time out.
fn hang() -> Outcome {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
