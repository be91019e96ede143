//! The back-end request channel (spec "Back-end communication", checklist 1.6 and R-BCH): a
//! socket the back-end sends requests on. A thread serves it while the main socket is used, so
//! neither side can deadlock waiting on the other (R-BCH-07). Every request is recorded, framing
//! violations are noted, and NEED_REPLY requests are acked (R-ACK-08): 0 when the request is
//! valid and done, non-zero otherwise (unknown codes included, R-BCH-08). SHMEM_MAP and
//! SHMEM_UNMAP really map and unmap the back-end's fd in the regions GET_SHMEM_CONFIG declared
//! (see [`crate::shmem`]). An IOTLB miss is answered with the IOTLB update on the main socket
//! before it is acked (see [`crate::iommu`]).

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;
use vhu_protocol::wire::payload::{Body, IotlbMsg};
use vhu_protocol::{BackendReq, ConnError, Connection, Message, Violation};

use crate::iommu::{Iommu, MainLink, MissAnswer, Pending, TYPE_MISS};
use crate::shmem::{MAX_SHMEM_TOTAL, ShmemMapping, ShmemRefusal, ShmemSpace};

/// What the back-end sent wrong on the channel. The texts say what happened and name no rule:
/// the engine maps each kind to the rule it breaks (one table, `src/engine/violations.rs` of
/// vhu-conform).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ChannelViolation {
    /// A request whose header flags are invalid (version, reserved bits) or say REPLY.
    #[error("back-end request {code} has flags {flags:#x}")]
    BadFlags {
        /// The request code.
        code: u32,
        /// The header flags it carried.
        flags: u32,
    },
    /// A request code no spec or vendor defines.
    #[error("unknown back-end request code {code}")]
    UnknownCode {
        /// The request code.
        code: u32,
    },
    /// A request with more or fewer fds than its code takes.
    #[error("{} carries {got} fds, expected {min}..={max}", req.spec_name())]
    WrongFdCount {
        /// The request.
        req: BackendReq,
        /// The fds attached.
        got: usize,
        /// The fewest its code takes.
        min: usize,
        /// The most its code takes.
        max: usize,
    },
    /// A payload that breaks its layout (the validator's violation).
    #[error("{}: {violation}", req.spec_name())]
    BadPayload {
        /// The request.
        req: BackendReq,
        /// What is wrong with the payload.
        violation: Violation,
    },
    /// A SHMEM_MAP or SHMEM_UNMAP the shared memory regions refuse as a rule violation.
    #[error("{}: {error}", req.spec_name())]
    Shmem {
        /// The request.
        req: BackendReq,
        /// Why it was refused.
        error: ShmemRefusal,
    },
    /// A message that could not be received (bad framing, too many fds, an oversized payload):
    /// the connection's error, rendered.
    #[error("back-end channel: {0}")]
    Receive(String),
    /// More than [`MAX_RECORDS`] requests: later ones are served but not recorded.
    #[error(
        "back-end channel: more than {MAX_RECORDS} requests; later ones are served but not recorded"
    )]
    TooManyRequests,
    /// The regions GET_SHMEM_CONFIG declared could not be reserved (together more than
    /// [`MAX_SHMEM_TOTAL`] bytes, or the address space is exhausted).
    #[error(
        "harness: cannot reserve shared memory regions of {total:#x} bytes in all (at most \
         {MAX_SHMEM_TOTAL:#x}): {error}"
    )]
    ShmemReserve {
        /// The sizes declared, added (saturating).
        total: u64,
        /// Why the reservation failed.
        error: nix::Error,
    },
}

/// Why the front-end refused (acked non-zero) or did not carry out a back-end request.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Refusal {
    /// The request broke a rule (it is also in [`BackendChannel::violations`]).
    #[error("{0}")]
    Violation(ChannelViolation),
    /// Refused because [`BackendChannel::refuse_next`] asked for it.
    #[error("refused on purpose (refuse_next)")]
    OnPurpose,
    /// A valid SHMEM request this front-end cannot carry out (misaligned offsets, a failed
    /// mmap): a refusal the spec allows, no violation.
    #[error("{}: {error}", req.spec_name())]
    Unsupported {
        /// The request.
        req: BackendReq,
        /// Why it could not be done.
        error: ShmemRefusal,
    },
    /// A request this front-end cannot act on although it breaks no rule the harness checks
    /// (an IOTLB type only front-ends send, a miss no mapping covers: an invalid miss).
    #[error("{0}")]
    Invalid(String),
    /// A local resource failed (not the back-end's fault).
    #[error("{0}")]
    Local(String),
}

impl Refusal {
    /// The violation, when the back-end broke a rule.
    pub fn violation(&self) -> Option<&ChannelViolation> {
        match self {
            Self::Violation(v) => Some(v),
            _ => None,
        }
    }
}
use crate::transcript::{Channel, Direction, Transcript};

/// One request the back-end sent.
#[derive(Clone, Debug)]
pub struct BackendRecord {
    /// The request code.
    pub code: u32,
    /// Header flags.
    pub flags: u32,
    /// The payload.
    pub payload: Vec<u8>,
    /// Number of fds attached.
    pub fds: usize,
    /// The ack sent back, if one was asked for.
    pub ack: Option<u64>,
    /// Microseconds since the session started, on the transcript's clock.
    pub at_us: u64,
    /// Why the request was refused or not carried out (a violation or a local limit).
    pub refused: Option<Refusal>,
}

/// Requests recorded (with their transcript entries) at most: a back-end that floods the
/// channel must not grow the harness's memory without bound. Later requests are still served
/// and acked, and counted in [`BackendChannel::dropped`].
pub const MAX_RECORDS: usize = 65536;

#[derive(Debug, Default)]
struct Shared {
    records: Vec<BackendRecord>,
    /// Requests not recorded because [`MAX_RECORDS`] were.
    dropped: u64,
    violations: Vec<ChannelViolation>,
    transcript: Transcript,
    shmem: ShmemSpace,
    refuse: usize,
    /// The back-end closed its end (EOF seen).
    peer_closed: bool,
    /// The thread stopped serving (the peer left, a fatal receive error, or `stop`).
    ended: bool,
}

impl Shared {
    /// Notes a violation, up to [`MAX_RECORDS`] of them.
    fn violation(&mut self, v: ChannelViolation) {
        if self.violations.len() < MAX_RECORDS {
            self.violations.push(v);
        }
    }
}

/// The front-end's server for the back-end channel.
#[derive(Debug)]
pub struct BackendChannel {
    shared: Arc<Mutex<Shared>>,
    /// Signalled (with `shared`'s lock) after each message the thread handled, so waiting for a
    /// request is a wait with a deadline, not a poll.
    handled: Arc<Condvar>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the channel needs to answer IOTLB misses: the main socket and the IOMMU's mappings.
#[derive(Clone, Debug)]
pub struct IotlbLink {
    /// The main socket the update goes out on.
    pub main: MainLink,
    /// The mappings, the hold switch and the answers.
    pub iommu: Iommu,
    /// Send the update with NEED_REPLY (its u64 reply is due either way, R-IOTLB-02).
    pub need_reply: bool,
}

impl BackendChannel {
    /// Starts serving `stream` on a thread; `iotlb` answers misses (without it a miss is
    /// recorded and acked as any other request).
    pub fn start(
        stream: UnixStream,
        epoch: Instant,
        iotlb: Option<IotlbLink>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let handled = Arc::new(Condvar::new());
        let stop = Arc::new(AtomicBool::new(false));
        let conn = Connection::new(stream, Some(Duration::from_millis(50)));
        let (s, h, st) = (shared.clone(), handled.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("vhu-backend-channel".into())
            .spawn(move || {
                serve(&conn, &s, &h, &st, epoch, iotlb.as_ref());
                // A wait for a request ends at once once nothing more can come.
                lock(&s).ended = true;
                h.notify_all();
            })?;
        Ok(Self {
            shared,
            handled,
            stop,
            thread: Some(thread),
        })
    }

    /// Whether the back-end has closed its end of the channel (a replaced channel must be
    /// closed, R-BCH-10).
    pub fn peer_closed(&self) -> bool {
        self.lock().peer_closed
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<BackendRecord> {
        self.lock().records.clone()
    }

    /// Waits until `done` holds for the requests received so far, the back-end closes the
    /// channel or `deadline` passes; the requests at the end, and whether `done` held.
    pub fn wait_for(
        &self,
        deadline: Instant,
        done: impl Fn(&[BackendRecord]) -> bool,
    ) -> (Vec<BackendRecord>, bool) {
        let mut s = self.lock();
        loop {
            if done(&s.records) {
                return (s.records.clone(), true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || s.peer_closed || s.ended {
                return (s.records.clone(), false);
            }
            s = self
                .handled
                .wait_timeout(s, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Requests served but not recorded: more than [`MAX_RECORDS`] arrived.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Framing or payload violations seen on the channel (R-WIRE-16, R-BCH-02).
    pub fn violations(&self) -> Vec<ChannelViolation> {
        self.lock().violations.clone()
    }

    /// The channel's part of the transcript.
    pub fn transcript(&self) -> Transcript {
        self.lock().transcript.clone()
    }

    /// Declares the shared memory regions (GET_SHMEM_CONFIG's sizes, index = shmid) SHMEM_MAP is
    /// checked against and maps into. Declaring the same sizes again keeps the mappings; other
    /// sizes drop them. A region that cannot be reserved is noted as a violation of nothing but
    /// left undeclared (every map into it is refused).
    pub fn set_shmem_config(&self, sizes: &[u64]) {
        let mut s = self.lock();
        let trimmed = trim_zeros(sizes);
        if trim_zeros(&s.shmem.sizes()) == trimmed {
            return;
        }
        s.shmem = match ShmemSpace::new(trimmed) {
            Ok(space) => space,
            Err(error) => {
                let total = trimmed.iter().fold(0u64, |t, &x| t.saturating_add(x));
                s.violations
                    .push(ChannelViolation::ShmemReserve { total, error });
                ShmemSpace::default()
            }
        };
    }

    /// The live SHMEM mappings.
    pub fn shmem_mappings(&self) -> Vec<ShmemMapping> {
        self.lock().shmem.mappings()
    }

    /// Reads shared memory region `shmid` at `offset` through the live mappings, as the guest
    /// would see it; an error where nothing is mapped.
    pub fn shmem_read(&self, shmid: u8, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.lock().shmem.read(shmid, offset, buf)
    }

    /// Drops every SHMEM mapping, as a device reset does (R-SHM-09).
    pub fn drop_shmem_mappings(&self) {
        self.lock().shmem.clear();
    }

    /// Refuses (acks non-zero) the next `n` requests, to test the back-end's error path (R-SHM-12).
    pub fn refuse_next(&self, n: usize) {
        self.lock().refuse = n;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for BackendChannel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    conn: &Connection,
    shared: &Mutex<Shared>,
    handled: &Condvar,
    stop: &AtomicBool,
    epoch: Instant,
    iotlb: Option<&IotlbLink>,
) {
    while !stop.load(Ordering::Relaxed) {
        if let Some(link) = iotlb {
            for p in link.iommu.released() {
                answer_miss(conn, shared, link, p, epoch);
            }
        }
        match conn.recv_unchecked() {
            Ok(msg) => {
                handle(conn, shared, msg, epoch, iotlb);
                // Taken so a waiter between its check and its wait does not miss this.
                drop(lock(shared));
                handled.notify_all();
            }
            Err(ConnError::Timeout { .. }) => {}
            Err(e) if e.is_peer_gone() => {
                shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .peer_closed = true;
                return;
            }
            Err(e) => {
                let mut s = shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.violation(ChannelViolation::Receive(e.to_string()));
                if matches!(e, ConnError::OversizedPayload { .. } | ConnError::Io { .. }) {
                    return;
                }
            }
        }
    }
}

fn trim_zeros(sizes: &[u64]) -> &[u64] {
    let len = sizes.iter().rposition(|&s| s != 0).map_or(0, |i| i + 1);
    &sizes[..len]
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn handle(
    conn: &Connection,
    shared: &Mutex<Shared>,
    msg: Message,
    epoch: Instant,
    iotlb: Option<&IotlbLink>,
) {
    let mut s = lock(shared);
    let at_us = epoch.elapsed().as_micros() as u64;
    let keep = s.records.len() < MAX_RECORDS;
    if keep {
        s.transcript.record(
            at_us,
            Channel::Backend,
            Direction::FromBackend,
            &msg.header,
            &msg.payload,
            msg.fds.len(),
        );
    } else if s.dropped == 0 {
        s.violation(ChannelViolation::TooManyRequests);
    }
    let refuse = msg.header.need_reply() && s.refuse > 0;
    if refuse {
        s.refuse -= 1;
    }
    let checked = check(&msg);
    if let (Ok((BackendReq::IotlbMsg, Body::Iotlb(m))), Some(link), false) =
        (&checked, iotlb, refuse)
        && m.kind == TYPE_MISS
    {
        // Answered outside the lock: the update's round trip on the main socket comes first.
        let pending = record_miss(&mut s, &msg, *m, at_us, keep);
        drop(s);
        if let Some(p) = link.iommu.hold_or_pass(pending) {
            answer_miss(conn, shared, link, p, epoch);
        }
        return;
    }
    let outcome = match checked {
        Err(violation) => Err(Refusal::Violation(violation)),
        Ok(_) if refuse => Err(Refusal::OnPurpose),
        Ok((req, body)) => carry_out(&mut s, &msg, req, body),
    };
    if let Err(Refusal::Violation(v)) = &outcome {
        s.violation(v.clone());
    }
    let mut ack = None;
    if msg.header.need_reply() {
        let value = u64::from(outcome.is_err());
        let reply = vhu_protocol::Header::reply(msg.header.request, 8);
        if keep {
            s.transcript.record(
                epoch.elapsed().as_micros() as u64,
                Channel::Backend,
                Direction::ToBackend,
                &reply,
                &value.to_ne_bytes(),
                0,
            );
        }
        // Bounded by the connection's timeout: a back-end that does not read its acks cannot
        // block this thread (and so the session's drop, which joins it).
        let _ = conn.send_reply(msg.header.request, &Body::U64(value), &[]);
        ack = Some(value);
    }
    if !keep {
        s.dropped += 1;
        return;
    }
    s.records.push(BackendRecord {
        code: msg.header.request,
        flags: msg.header.flags,
        payload: msg.payload,
        fds: msg.fds.len(),
        ack,
        at_us,
        refused: outcome.err(),
    });
}

/// Records a miss whose ack waits for its answer; what [`answer_miss`] needs.
fn record_miss(s: &mut Shared, msg: &Message, miss: IotlbMsg, at_us: u64, keep: bool) -> Pending {
    let pending = Pending {
        miss,
        need_reply: msg.header.need_reply(),
        record: keep.then_some(s.records.len()),
    };
    if keep {
        s.records.push(BackendRecord {
            code: msg.header.request,
            flags: msg.header.flags,
            payload: msg.payload.clone(),
            fds: 0,
            ack: None,
            at_us,
            refused: None,
        });
    } else {
        s.dropped += 1;
    }
    pending
}

/// Answers a miss (R-IOTLB-04): the update of the mapping that covers it on the main socket,
/// then, if asked, the ack: 0 once the back-end answered the update 0, non-zero otherwise; a
/// miss no mapping covers is invalid: nothing is sent and the ack is non-zero.
fn answer_miss(
    conn: &Connection,
    shared: &Mutex<Shared>,
    link: &IotlbLink,
    p: Pending,
    epoch: Instant,
) {
    let update = link.iommu.lookup(p.miss.iova, p.miss.perm);
    let reply = match update {
        Some(m) => link
            .main
            .iotlb(&m.update(), link.need_reply, |header, payload| {
                let dir = if header.is_reply() {
                    Direction::FromBackend
                } else {
                    Direction::ToBackend
                };
                let at = epoch.elapsed().as_micros() as u64;
                lock(shared)
                    .transcript
                    .record(at, Channel::Main, dir, header, payload, 0);
            }),
        None => Err(format!(
            "no mapping covers iova {:#x} with perm {}: nothing sent (an invalid miss)",
            p.miss.iova, p.miss.perm
        )),
    };
    let ack = p.need_reply.then(|| u64::from(reply != Ok(0)));
    // Recorded before the ack goes out: whoever sees the ack finds the answer.
    let refused = reply.clone().err().filter(|_| update.is_none());
    link.iommu.record(MissAnswer {
        miss: p.miss,
        need_reply: p.need_reply,
        update,
        reply,
        ack,
        at_us: epoch.elapsed().as_micros() as u64,
    });
    let mut s = lock(shared);
    if let Some(r) = p.record.and_then(|i| s.records.get_mut(i)) {
        r.ack = ack;
        r.refused = refused.map(Refusal::Invalid);
    }
    if let Some(value) = ack {
        let header = vhu_protocol::Header::reply(BackendReq::IotlbMsg as u32, 8);
        let at = epoch.elapsed().as_micros() as u64;
        s.transcript.record(
            at,
            Channel::Backend,
            Direction::ToBackend,
            &header,
            &value.to_ne_bytes(),
            0,
        );
        let _ = conn.send_reply(BackendReq::IotlbMsg as u32, &Body::U64(value), &[]);
    }
}

/// Does what a valid request asks: SHMEM_MAP/UNMAP act on the shared memory regions; an IOTLB
/// message of a type only front-ends send is refused; the others only need recording. `Err`
/// when it cannot be done.
fn carry_out(s: &mut Shared, msg: &Message, req: BackendReq, body: Body) -> Result<(), Refusal> {
    if let Body::Iotlb(m) = &body
        && !matches!(m.kind, TYPE_MISS | crate::iommu::TYPE_ACCESS_FAIL)
    {
        return Err(Refusal::Invalid(format!(
            "BACKEND_IOTLB_MSG of type {}: back-ends send misses (1) and access failures (4)",
            m.kind
        )));
    }
    let r = match (req, &body) {
        (BackendReq::ShmemMap, Body::ShmemMap(m)) => {
            let Some(fd) = msg.fds.first().and_then(|fd| fd.try_clone().ok()) else {
                return Err(Refusal::Local("cannot duplicate the SHMEM_MAP fd".into()));
            };
            s.shmem.map(m, fd)
        }
        (BackendReq::ShmemUnmap, Body::ShmemMap(m)) => s.shmem.unmap(m),
        _ => return Ok(()),
    };
    r.map_err(|error| {
        if error.is_violation() {
            Refusal::Violation(ChannelViolation::Shmem { req, error })
        } else {
            Refusal::Unsupported { req, error }
        }
    })
}

/// Syntax checks of one back-end request (R-WIRE-16, R-BCH-02, R-BCH-08): its request and
/// decoded body.
fn check(msg: &Message) -> Result<(BackendReq, Body), ChannelViolation> {
    let h = &msg.header;
    if h.validate().is_err() || h.is_reply() {
        return Err(ChannelViolation::BadFlags {
            code: h.request,
            flags: h.flags,
        });
    }
    let Ok(req) = BackendReq::from_code(h.request) else {
        return Err(ChannelViolation::UnknownCode { code: h.request });
    };
    let (min, max) = req.fd_range();
    if !(min..=max).contains(&msg.fds.len()) {
        return Err(ChannelViolation::WrongFdCount {
            req,
            got: msg.fds.len(),
            min,
            max,
        });
    }
    msg.body(req.request_body())
        .and_then(|b| b.validate().map(|()| (req, b)))
        .map_err(|violation| ChannelViolation::BadPayload { req, violation })
}
