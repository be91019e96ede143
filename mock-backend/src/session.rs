//! One front-end connection: negotiated state, the memory table, the rings and their state
//! machine (spec "Ring states": started on SET_VRING_KICK, stopped by GET_VRING_BASE, enabled by
//! SET_VRING_ENABLE or by SET_FEATURES without bit 30), and a flat dispatcher whose arms each call
//! one handler. REPLY_ACK bookkeeping lives in [`Session::finish`] only.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vhu_protocol::wire::ReplyKind;
use vhu_protocol::wire::payload::{
    Body, ConfigHeader, MemRegion, VRING_IDX_MASK, VRING_NOFD_MASK, VringAddr, VringState,
};
use vhu_protocol::{Connection, FrontendReq, Header, Message, ProtocolFeatures, VirtioFeatures};

use crate::device::{Blk, DataFaults, SplitRing};
use crate::faults::{Fault, Faults};
use crate::memory::{Memory, Region};

/// The answer of a handler: a reply of its own, or success / failure for the ack.
enum Outcome {
    Reply(Body),
    /// A reply that carries one fd (GET_INFLIGHT_FD).
    ReplyWithFd(Body, OwnedFd),
    Done,
    Failed,
}

#[derive(Debug, Default)]
struct Queue {
    size: u16,
    base: u16,
    addr: Option<VringAddr>,
    kick: Option<OwnedFd>,
    call: Option<OwnedFd>,
    err: Option<OwnedFd>,
    polling: bool,
    enabled: bool,
    ring: Option<SplitRing>,
}

/// Per-connection state.
pub struct Session<'a> {
    conn: Connection,
    dev: &'a mut Blk,
    faults: &'a Faults,
    offered_protocol: u64,
    features: u64,
    protocol: u64,
    mem: Memory,
    queues: Vec<Queue>,
    leaked: Vec<OwnedFd>,
    backend_channel: Option<OwnedFd>,
    status: u64,
    /// The inflight tracking area handed out or handed back (R-INFL-01, R-INFL-03).
    inflight: Option<OwnedFd>,
    /// A device state transfer in progress: the thread moving the bytes (a load returns them).
    transfer: Option<std::thread::JoinHandle<Result<Option<Vec<u8>>, String>>>,
}

/// Memory slots offered with CONFIGURE_MEM_SLOTS.
const MAX_MEM_SLOTS: u64 = 32;

impl<'a> Session<'a> {
    /// A session over an accepted connection.
    pub fn new(conn: Connection, dev: &'a mut Blk, faults: &'a Faults) -> Self {
        let n = dev.num_queues;
        let shmem = if dev.shmem.is_empty() {
            0
        } else {
            ProtocolFeatures::SHMEM.bits()
        };
        let offered_protocol = (ProtocolFeatures::MQ
            | ProtocolFeatures::REPLY_ACK
            | ProtocolFeatures::BACKEND_REQ
            | ProtocolFeatures::CONFIG
            | ProtocolFeatures::CONFIGURE_MEM_SLOTS
            | ProtocolFeatures::RESET_DEVICE
            | ProtocolFeatures::STATUS
            | ProtocolFeatures::DEVICE_STATE
            | ProtocolFeatures::INFLIGHT_SHMFD)
            .bits()
            | shmem;
        Self {
            conn,
            dev,
            faults,
            offered_protocol,
            features: 0,
            protocol: 0,
            mem: Memory::default(),
            queues: (0..n).map(|_| Queue::default()).collect(),
            leaked: vec![],
            backend_channel: None,
            status: 0,
            transfer: None,
            inflight: None,
        }
    }

    fn offered_features(&self) -> u64 {
        self.dev.features()
            | (VirtioFeatures::INDIRECT_DESC
                | VirtioFeatures::PROTOCOL_FEATURES
                | VirtioFeatures::VERSION_1)
                .bits()
    }

    /// Serves the connection until the front-end leaves or the session must close.
    pub fn serve(&mut self) {
        loop {
            let mut fds: Vec<PollFd<'_>> = vec![PollFd::new(self.conn.as_fd(), PollFlags::POLLIN)];
            let kick_queues: Vec<usize> = (0..self.queues.len())
                .filter(|&i| self.queues[i].ring.is_some() && self.queues[i].kick.is_some())
                .collect();
            for &i in &kick_queues {
                fds.push(PollFd::new(
                    self.queues[i].kick.as_ref().expect("filtered").as_fd(),
                    PollFlags::POLLIN,
                ));
            }
            if poll(&mut fds, PollTimeout::from(50u8)).is_err() {
                continue;
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            for (k, &i) in kick_queues.iter().enumerate() {
                if ready[k + 1] {
                    let mut buf = [0u8; 8];
                    let _ = nix::unistd::read(
                        self.queues[i].kick.as_ref().expect("filtered"),
                        &mut buf,
                    );
                    self.run_queue(i);
                }
            }
            // Rings in polling mode (SET_VRING_KICK with bit 8) are looked at on every tick.
            for i in 0..self.queues.len() {
                if self.queues[i].polling {
                    self.run_queue(i);
                }
            }
            if ready[0] && !self.handle_one() {
                return;
            }
        }
    }

    fn run_queue(&mut self, i: usize) {
        let faults = DataFaults {
            wrong_used_len: self.faults.has(Fault::WrongUsedLen),
            write_past: self.faults.has(Fault::WritePastDescriptor),
        };
        let ignore_enable = self.faults.has(Fault::IgnoreVringEnable);
        let no_call = self.faults.has(Fault::NoCall);
        let q = &mut self.queues[i];
        let Some(ring) = q.ring.as_mut().filter(|_| q.enabled || ignore_enable) else {
            return;
        };
        match self.dev.process(&self.mem, ring, faults) {
            Ok(false) => {}
            Ok(true) if no_call => {}
            Ok(true) => {
                if let Some(call) = &q.call {
                    let _ = nix::unistd::write(call, &1u64.to_ne_bytes());
                }
            }
            Err(_) => {
                if let Some(err) = &q.err {
                    let _ = nix::unistd::write(err, &1u64.to_ne_bytes());
                }
            }
        }
    }

    /// Reads and handles one message; false when the connection ends.
    fn handle_one(&mut self) -> bool {
        let msg = match self.conn.recv_unchecked() {
            Ok(m) => m,
            Err(e) if e.is_timeout() => return true,
            Err(_) => return false,
        };
        if msg.header.validate().is_err() && msg.header.flags().version() != 1 {
            return false; // R-WIRE-13: a request of another version is refused by closing.
        }
        let Ok(req) = FrontendReq::from_code(msg.header.request) else {
            if self.faults.has(Fault::CrashOnUnknownCode) {
                std::process::abort();
            }
            return self.finish(msg.header, None, Outcome::Failed);
        };
        let header = msg.header;
        let outcome = self.dispatch(req, msg);
        self.finish(header, Some(req), outcome)
    }

    /// Sends the reply or ack a request earned; false when the connection must close.
    fn finish(&mut self, h: Header, req: Option<FrontendReq>, outcome: Outcome) -> bool {
        let reply_ack = self.protocol & ProtocolFeatures::REPLY_ACK.bits() != 0;
        let always = req.is_some_and(|r| r.reply_kind() == ReplyKind::Always);
        let mut fd = None;
        let body = match outcome {
            Outcome::Reply(b) => Some(b),
            Outcome::ReplyWithFd(b, f) => {
                fd = Some(f);
                Some(b)
            }
            // A request that must be answered but failed: a u64 reply carries a non-zero value;
            // other replies are empty ("error" for GET_CONFIG, R-CFG-02).
            _ if always => Some(match req.map(FrontendReq::reply_body) {
                Some(vhu_protocol::wire::payload::BodyKind::U64) => Body::U64(1),
                _ => Body::Empty,
            }),
            Outcome::Done | Outcome::Failed if self.faults.has(Fault::NoAck) => None,
            Outcome::Done
                if reply_ack && (h.need_reply() || self.faults.has(Fault::UnrequestedAck)) =>
            {
                Some(Body::U64(0))
            }
            Outcome::Failed if h.need_reply() && reply_ack => Some(Body::U64(1)),
            _ => None,
        };
        let Some(body) = body else { return true };
        let payload = body.encode();
        let mut reply = Header::reply(h.request, payload.len() as u32);
        if self.faults.has(Fault::WrongReplyCode) {
            reply.request += 1;
        }
        if self.faults.has(Fault::ReplyFlagsNeedReply) {
            reply.flags |= h.flags & 0x8;
        }
        if self.faults.has(Fault::BadReplyVersion) {
            reply.flags = (reply.flags & !3) | 2;
        }
        let fds: Vec<_> = fd.iter().map(AsFd::as_fd).collect();
        self.conn.send(reply, &payload, &fds).is_ok()
    }

    /// Closes fds the request does not take (R-WIRE-09), unless the fault keeps them.
    fn take_fds(&mut self, msg: &mut Message, n: usize) -> Vec<OwnedFd> {
        let extra = msg.fds.split_off(n.min(msg.fds.len()));
        if self.faults.has(Fault::LeakFds) {
            self.leaked.extend(extra);
        }
        std::mem::take(&mut msg.fds)
    }

    /// The flat dispatcher: one handler per request.
    fn dispatch(&mut self, req: FrontendReq, mut msg: Message) -> Outcome {
        use FrontendReq::*;
        let body = match msg
            .body(req.request_body())
            .and_then(|b| b.validate().map(|()| b))
        {
            Ok(b) => b,
            Err(_) => {
                self.take_fds(&mut msg, 0);
                return Outcome::Failed;
            }
        };
        let (_, max_fds) = req.fd_range();
        let fds = self.take_fds(&mut msg, max_fds);
        match (req, body) {
            (GetFeatures, _) => Outcome::Reply(Body::U64(self.offered_features())),
            (SetFeatures, Body::U64(v)) => self.set_features(v),
            (SetOwner, _) => Outcome::Done,
            (ResetOwner, _) => self.disable_all(),
            (GetProtocolFeatures, _) => Outcome::Reply(Body::U64(self.offered_protocol)),
            (SetProtocolFeatures, Body::U64(v)) => self.set_protocol_features(v),
            (GetQueueNum, _) if self.faults.has(Fault::NoReplyGetQueueNum) => loop_forever(),
            (GetQueueNum, _) => Outcome::Reply(Body::U64(self.queues.len() as u64)),
            (GetMaxMemSlots, _) => {
                Outcome::Reply(Body::U64(if self.faults.has(Fault::MaxMemSlotsZero) {
                    0
                } else {
                    MAX_MEM_SLOTS
                }))
            }
            (SetMemTable, _) if self.faults.has(Fault::HangSetMemTable) => loop_forever(),
            (SetMemTable, Body::MemTable(regions)) => self.set_mem_table(regions, fds),
            (AddMemReg, Body::SingleRegion(r)) => self.add_mem_reg(r, fds),
            (RemMemReg, Body::SingleRegion(r)) => self.rem_mem_reg(r),
            (SetVringNum, Body::VringState(s)) => self.set_vring_num(s),
            (SetVringBase, Body::VringState(s)) => self.set_vring_base(s),
            (SetVringAddr, Body::VringAddr(a)) => self.set_vring_addr(a),
            (GetVringBase, Body::VringState(s)) => self.get_vring_base(s),
            (SetVringKick | SetVringCall | SetVringErr, Body::U64(w)) => {
                self.set_vring_fd(req, w, fds)
            }
            (SetVringEnable, Body::VringState(s)) => self.set_vring_enable(s),
            (GetConfig, Body::Config(h, _)) => self.get_config(h),
            (SetConfig, Body::Config(h, data)) => self.set_config(h, &data),
            (SetBackendReqFd, _) => self.set_backend_req_fd(fds),
            (ResetDevice, _) => self.reset_device(),
            (SetStatus, Body::U64(v)) => {
                self.status = v;
                Outcome::Done
            }
            (GetStatus, _) => Outcome::Reply(Body::U64(self.status)),
            (SetDeviceStateFd, Body::DeviceState(p)) => self.set_device_state_fd(p.direction, fds),
            (CheckDeviceState, _) => self.check_device_state(),
            (GetShmemConfig, _) => self.get_shmem_config(),
            (GetInflightFd, Body::Inflight(d)) => self.get_inflight_fd(d),
            (SetInflightFd, Body::Inflight(d)) => self.set_inflight_fd(d, fds),
            _ => Outcome::Failed,
        }
    }

    fn set_features(&mut self, v: u64) -> Outcome {
        if v & !self.offered_features() != 0 && !self.faults.has(Fault::AcceptUnofferedFeatures) {
            return Outcome::Failed; // R-NEG-06: bits that were not offered.
        }
        self.features = v;
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
        self.protocol = v;
        Outcome::Done
    }

    fn disable_all(&mut self) -> Outcome {
        self.queues.iter_mut().for_each(|q| q.enabled = false);
        Outcome::Done
    }

    fn set_mem_table(&mut self, regions: Vec<MemRegion>, fds: Vec<OwnedFd>) -> Outcome {
        if regions.len() != fds.len() || regions.is_empty() {
            return Outcome::Failed; // R-MEM-20
        }
        let mut mem = Memory::default();
        for (r, fd) in regions.into_iter().zip(fds) {
            match Region::map(r, fd) {
                Ok(region) => mem.regions.push(region),
                Err(_) => return Outcome::Failed,
            }
        }
        self.mem = mem;
        self.retranslate();
        Outcome::Done
    }

    fn add_mem_reg(&mut self, r: MemRegion, mut fds: Vec<OwnedFd>) -> Outcome {
        let Some(fd) = fds.pop().filter(|_| fds.is_empty()) else {
            return Outcome::Failed;
        };
        let overlaps = self.mem.regions.iter().any(|o| {
            let d = &o.desc;
            r.guest_addr < d.guest_addr + d.size && d.guest_addr < r.guest_addr + r.size
                || r.user_addr < d.user_addr + d.size && d.user_addr < r.user_addr + r.size
        });
        if overlaps || self.mem.regions.len() as u64 >= MAX_MEM_SLOTS {
            return Outcome::Failed; // R-MEM-04, R-MEM-10
        }
        match Region::map(r, fd) {
            Ok(region) => {
                self.mem.regions.push(region);
                self.retranslate();
                Outcome::Done
            }
            Err(_) => Outcome::Failed,
        }
    }

    fn rem_mem_reg(&mut self, r: MemRegion) -> Outcome {
        let lax = self.faults.has(Fault::LaxRemMemReg);
        let pos = self.mem.regions.iter().position(|o| {
            o.desc.guest_addr == r.guest_addr
                && o.desc.size == r.size
                && (lax || o.desc.user_addr == r.user_addr)
        });
        match pos {
            // R-MEM-11: dropping the region unmaps it and closes its fd.
            Some(i) => {
                self.mem.regions.remove(i);
                Outcome::Done
            }
            None if lax => Outcome::Done,
            None => Outcome::Failed, // R-MEM-14
        }
    }

    fn queue(&mut self, index: u32) -> Option<&mut Queue> {
        if index as usize >= self.queues.len() && self.faults.has(Fault::CrashOnBadIndex) {
            std::process::abort();
        }
        self.queues.get_mut(index as usize)
    }

    fn set_vring_num(&mut self, s: VringState) -> Outcome {
        let nack = self.faults.has(Fault::NackValid);
        let ok = s.num.is_power_of_two() && s.num <= 32768;
        match self.queue(s.index) {
            Some(q) if ok && !nack => {
                q.size = s.num as u16;
                Outcome::Done
            }
            _ => Outcome::Failed, // R-VRING-02, R-VRING-17
        }
    }

    fn set_vring_base(&mut self, s: VringState) -> Outcome {
        match self.queue(s.index) {
            Some(q) if s.num >> 16 == 0 => {
                q.base = s.num as u16;
                Outcome::Done
            }
            _ => Outcome::Failed,
        }
    }

    fn set_vring_addr(&mut self, a: VringAddr) -> Outcome {
        let covered = [a.desc, a.avail, a.used]
            .iter()
            .all(|&ua| self.mem.ua_to_gpa(ua).is_some());
        match self.queue(a.index) {
            Some(q) if covered && a.flags == 0 => {
                q.addr = Some(a);
                Outcome::Done
            }
            _ => Outcome::Failed, // R-VRING-05
        }
    }

    fn get_vring_base(&mut self, s: VringState) -> Outcome {
        let stale = self.faults.has(Fault::StaleVringBase);
        if self.faults.has(Fault::ProcessAfterStop) {
            let num = self
                .queue(s.index)
                .map(|q| q.ring.map_or(q.base, |r| r.next_avail));
            return Outcome::Reply(Body::VringState(VringState {
                index: s.index,
                num: num.unwrap_or(0).into(),
            }));
        }
        let Some(q) = self.queue(s.index) else {
            return Outcome::Failed;
        };
        // R-RING-11: the ring stops; its kick and call fds are dropped (the front-end re-sends
        // them to restart, R-RING-13).
        let num = match q.ring.take() {
            Some(r) if !stale => r.next_avail,
            _ => q.base,
        };
        q.base = num;
        q.kick = None;
        q.call = None;
        q.polling = false;
        Outcome::Reply(Body::VringState(VringState {
            index: s.index,
            num: num.into(),
        }))
    }

    fn set_vring_fd(&mut self, req: FrontendReq, word: u64, mut fds: Vec<OwnedFd>) -> Outcome {
        let index = (word & VRING_IDX_MASK) as u32;
        let no_fd = word & VRING_NOFD_MASK != 0;
        let mismatch = no_fd != fds.is_empty() && !self.faults.has(Fault::IgnoreNoFdFlag);
        if mismatch || self.queue(index).is_none() {
            return Outcome::Failed; // R-VRING-11
        }
        let fd = fds.pop();
        let q = self.queue(index).expect("checked");
        match req {
            FrontendReq::SetVringCall => q.call = fd,
            FrontendReq::SetVringErr => q.err = fd,
            _ => {
                q.kick = fd;
                q.polling = no_fd;
                return self.start_ring(index as usize);
            }
        }
        Outcome::Done
    }

    /// R-RING-03: SET_VRING_KICK starts the ring; buffers already available are processed
    /// without waiting for a kick (R-RING-04).
    fn start_ring(&mut self, i: usize) -> Outcome {
        let Some(ring) = self.translate(i) else {
            return Outcome::Failed;
        };
        self.queues[i].ring = Some(ring);
        self.run_queue(i);
        Outcome::Done
    }

    fn translate(&self, i: usize) -> Option<SplitRing> {
        let q = &self.queues[i];
        let a = q.addr?;
        if q.size == 0 {
            return None;
        }
        let used = self.mem.ua_to_gpa(a.used)?;
        // R-VRING-06: the used index is read from the ring in memory.
        let next_used = q
            .ring
            .map(|r| r.next_used)
            .or_else(|| self.mem.read_u16(used + 2).ok())?;
        let next_avail = q.ring.map_or(q.base, |r| r.next_avail);
        Some(SplitRing {
            event_idx: self.features & VirtioFeatures::EVENT_IDX.bits() != 0,
            size: q.size,
            desc: self.mem.ua_to_gpa(a.desc)?,
            avail: self.mem.ua_to_gpa(a.avail)?,
            used,
            next_avail,
            next_used,
        })
    }

    /// After a memory table change, started rings are translated again (R-MEM-05).
    fn retranslate(&mut self) {
        for i in 0..self.queues.len() {
            if self.queues[i].ring.is_some() {
                self.queues[i].ring = self.translate(i);
            }
        }
    }

    fn set_vring_enable(&mut self, s: VringState) -> Outcome {
        let Some(q) = self.queue(s.index) else {
            return Outcome::Failed;
        };
        q.enabled = s.num == 1;
        self.run_queue(s.index as usize);
        Outcome::Done
    }

    fn get_config(&mut self, h: ConfigHeader) -> Outcome {
        let cfg = self.dev.config();
        let end = h.offset as usize + h.size as usize;
        if end > cfg.len() {
            return Outcome::Reply(Body::Empty); // R-CFG-02: an empty payload signals the error.
        }
        let extra = if self.faults.has(Fault::ConfigWrongSize) {
            4
        } else {
            0
        };
        let mut data = cfg[h.offset as usize..end].to_vec();
        data.resize(data.len() + extra, 0);
        Outcome::Reply(Body::Config(
            ConfigHeader {
                size: data.len() as u32,
                ..h
            },
            data,
        ))
    }

    fn set_config(&mut self, h: ConfigHeader, data: &[u8]) -> Outcome {
        // R-CFG-03: a guest write (flags 0) may change only the writable `writeback` byte.
        match (h.flags, h.offset, data) {
            (0 | 1, 32, [wce]) => {
                self.dev.wce = *wce;
                Outcome::Done
            }
            _ => Outcome::Failed,
        }
    }

    fn set_backend_req_fd(&mut self, mut fds: Vec<OwnedFd>) -> Outcome {
        match fds.pop() {
            Some(fd) => {
                self.backend_channel = Some(fd);
                Outcome::Done
            }
            None => Outcome::Failed,
        }
    }

    fn reset_device(&mut self) -> Outcome {
        for q in &mut self.queues {
            *q = Queue::default();
        }
        self.status = 0;
        Outcome::Done
    }

    /// Starts a device state transfer over the front-end's pipe (R-MIG-02..07): a thread writes
    /// (save) or reads (load) the bytes while the main socket keeps being served. Refused while a
    /// ring is started (R-MIG-03). The reply's bit 8 says no fd of ours is returned.
    fn set_device_state_fd(&mut self, direction: u32, mut fds: Vec<OwnedFd>) -> Outcome {
        let running = self.queues.iter().any(|q| q.ring.is_some());
        let Some(fd) = fds.pop().filter(|_| !running && self.transfer.is_none()) else {
            return Outcome::Reply(Body::U64(1));
        };
        let mut file = std::fs::File::from(fd);
        let handle = if direction == 0 {
            let bases: Vec<u16> = self.queues.iter().map(|q| q.base).collect();
            let state = self
                .dev
                .save(&bases, self.faults.has(Fault::BadDeviceState));
            std::thread::spawn(move || {
                std::io::Write::write_all(&mut file, &state)
                    .map(|()| None)
                    .map_err(|e| e.to_string())
            })
        } else {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut file, &mut buf)
                    .map(|_| Some(buf))
                    .map_err(|e| e.to_string())
            })
        };
        self.transfer = Some(handle);
        Outcome::Reply(Body::U64(VRING_NOFD_MASK))
    }

    /// CHECK_DEVICE_STATE: 0 once the transfer completed and (for a load) the state applied.
    fn check_device_state(&mut self) -> Outcome {
        let result = match self.transfer.take().map(std::thread::JoinHandle::join) {
            Some(Ok(Ok(None))) => Ok(()),
            Some(Ok(Ok(Some(state)))) => self.dev.load(&state).map(|bases| {
                for (q, b) in self.queues.iter_mut().zip(bases) {
                    q.base = b;
                }
            }),
            _ => Err("no transfer, or it failed".to_string()),
        };
        Outcome::Reply(Body::U64(u64::from(result.is_err())))
    }

    /// GET_INFLIGHT_FD (R-INFL-01): a zeroed memfd (every region's version 0, "not yet used")
    /// sized for the queues asked for, per-queue regions of a 16-byte header and 16-byte
    /// descriptor entries aligned to 64 bytes, as libvhost-user and DPDK lay them out.
    fn get_inflight_fd(&mut self, d: vhu_protocol::wire::payload::InflightDesc) -> Outcome {
        let Some(size) = self.inflight_size(d.num_queues, d.queue_size) else {
            return Outcome::Failed;
        };
        let Ok(m) = memfd::MemfdOptions::default()
            .close_on_exec(true)
            .create("vhu-inflight")
        else {
            return Outcome::Failed;
        };
        let file = m.into_file();
        if file.set_len(size).is_err() {
            return Outcome::Failed;
        }
        let fd = OwnedFd::from(file);
        let Ok(ours) = fd.try_clone() else {
            return Outcome::Failed;
        };
        self.inflight = Some(ours);
        let reply = vhu_protocol::wire::payload::InflightDesc {
            mmap_size: size,
            mmap_offset: 0,
            ..d
        };
        Outcome::ReplyWithFd(Body::Inflight(reply), fd)
    }

    /// SET_INFLIGHT_FD (R-INFL-03): the area must fit the queues it claims (BUG-11: a
    /// num_queues past the device's queues is refused, never walked).
    fn set_inflight_fd(
        &mut self,
        d: vhu_protocol::wire::payload::InflightDesc,
        mut fds: Vec<OwnedFd>,
    ) -> Outcome {
        let needed = self.inflight_size(d.num_queues, d.queue_size);
        match (fds.pop(), needed) {
            (Some(fd), Some(n)) if d.mmap_size >= n => {
                self.inflight = Some(fd);
                Outcome::Done
            }
            _ => Outcome::Failed,
        }
    }

    fn inflight_size(&self, num_queues: u16, queue_size: u16) -> Option<u64> {
        // R-NEG-11: only once INFLIGHT_SHMFD is negotiated.
        let negotiated = self.protocol & ProtocolFeatures::INFLIGHT_SHMFD.bits() != 0;
        let ok = negotiated
            && (1..=self.queues.len() as u16).contains(&num_queues)
            && (1..=32768).contains(&queue_size);
        ok.then(|| u64::from(num_queues) * (16 + 16 * u64::from(queue_size)).next_multiple_of(64))
    }

    /// GET_SHMEM_CONFIG (R-SHM-02): sizes indexed by shmid, nregions counting the non-zero ones.
    fn get_shmem_config(&mut self) -> Outcome {
        if self.protocol & ProtocolFeatures::SHMEM.bits() == 0 {
            return Outcome::Failed; // R-NEG-11: not negotiated.
        }
        let mut c = vhu_protocol::wire::payload::ShmemConfig::default();
        for &(id, size) in &self.dev.shmem {
            c.sizes[usize::from(id)] = size;
        }
        c.nregions = c.sizes.iter().filter(|&&s| s != 0).count() as u32
            + u32::from(self.faults.has(Fault::ShmemConfigCount));
        Outcome::Reply(Body::ShmemConfig(Box::new(c)))
    }

    /// Whether the process must exit after this connection (fault mode).
    pub fn exit_after(&self) -> bool {
        self.faults.has(Fault::ExitOnDisconnect)
    }
}

/// A fault mode that never answers: the session thread sleeps; the harness must time out.
fn loop_forever() -> Outcome {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
