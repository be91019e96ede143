//! The back-end request channel (spec "Back-end communication", checklist 1.6 and R-BCH): a
//! socket the back-end sends requests on. A thread serves it while the main socket is used, so
//! neither side can deadlock waiting on the other (R-BCH-07). Every request is recorded, framing
//! violations are noted, and NEED_REPLY requests are acked (R-ACK-08): 0 when the request is
//! valid and done, non-zero otherwise (unknown codes included, R-BCH-08). SHMEM_MAP and
//! SHMEM_UNMAP really map and unmap the back-end's fd in the regions GET_SHMEM_CONFIG declared
//! (see [`crate::shmem`]).

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhu_protocol::wire::payload::Body;
use vhu_protocol::{BackendReq, ConnError, Connection, Message};

use crate::shmem::{MAX_SHMEM_TOTAL, ShmemMapping, ShmemSpace};
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
    pub refused: Option<String>,
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
    violations: Vec<String>,
    transcript: Transcript,
    shmem: ShmemSpace,
    refuse: usize,
}

impl Shared {
    /// Notes a violation, up to [`MAX_RECORDS`] of them.
    fn violation(&mut self, v: String) {
        if self.violations.len() < MAX_RECORDS {
            self.violations.push(v);
        }
    }
}

/// The front-end's server for the back-end channel.
#[derive(Debug)]
pub struct BackendChannel {
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl BackendChannel {
    /// Starts serving `stream` on a thread.
    pub fn start(stream: UnixStream, epoch: Instant, _reply_ack: bool) -> std::io::Result<Self> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let conn = Connection::new(stream, Some(Duration::from_millis(50)));
        let (s, st) = (shared.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("vhu-backend-channel".into())
            .spawn(move || serve(&conn, &s, &st, epoch))?;
        Ok(Self {
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<BackendRecord> {
        self.lock().records.clone()
    }

    /// Requests served but not recorded: more than [`MAX_RECORDS`] arrived.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Framing or payload violations seen on the channel (R-WIRE-16, R-BCH-02).
    pub fn violations(&self) -> Vec<String> {
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
            Err(e) => {
                let total = trimmed.iter().fold(0u64, |t, &x| t.saturating_add(x));
                s.violations.push(format!(
                    "harness: cannot reserve shared memory regions of {total:#x} bytes in all \
                     (at most {MAX_SHMEM_TOTAL:#x}): {e}"
                ));
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

fn serve(conn: &Connection, shared: &Mutex<Shared>, stop: &AtomicBool, epoch: Instant) {
    while !stop.load(Ordering::Relaxed) {
        match conn.recv_unchecked() {
            Ok(msg) => handle(conn, shared, msg, epoch),
            Err(ConnError::Timeout { .. }) => {}
            Err(e) if e.is_peer_gone() => return,
            Err(e) => {
                let mut s = shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.violation(format!("back-end channel: {e}"));
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

fn handle(conn: &Connection, shared: &Mutex<Shared>, msg: Message, epoch: Instant) {
    let mut s = shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        s.violation(format!(
            "back-end channel: more than {MAX_RECORDS} requests; later ones are served but not recorded"
        ));
    }
    let refuse = msg.header.need_reply() && s.refuse > 0;
    if refuse {
        s.refuse -= 1;
    }
    let outcome = match check(&msg) {
        Err(violation) => Err((violation, true)),
        Ok(_) if refuse => Err(("refused on purpose (refuse_next)".to_string(), false)),
        Ok(body) => carry_out(&mut s, &msg, body),
    };
    if let Err((why, true)) = &outcome {
        s.violation(why.clone());
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
        refused: outcome.err().map(|(why, _)| why),
    });
}

/// Does what a valid request asks: SHMEM_MAP/UNMAP act on the shared memory regions; the others
/// only need recording. `Err((why, is_violation))` when it cannot be done.
fn carry_out(s: &mut Shared, msg: &Message, body: Body) -> Result<(), (String, bool)> {
    let req = BackendReq::from_code(msg.header.request).map_err(|e| (e.to_string(), true))?;
    let r = match (req, &body) {
        (BackendReq::ShmemMap, Body::ShmemMap(m)) => {
            let Some(fd) = msg.fds.first().and_then(|fd| fd.try_clone().ok()) else {
                return Err(("cannot duplicate the SHMEM_MAP fd".into(), false));
            };
            s.shmem.map(m, fd)
        }
        (BackendReq::ShmemUnmap, Body::ShmemMap(m)) => s.shmem.unmap(m),
        _ => return Ok(()),
    };
    r.map_err(|e| {
        let why = format!("{}: {e}", req.spec_name());
        (why, e.is_violation())
    })
}

/// Syntax checks of one back-end request (R-WIRE-16, R-BCH-02, R-BCH-08): its decoded body.
fn check(msg: &Message) -> Result<Body, String> {
    let h = &msg.header;
    if h.validate().is_err() || h.is_reply() {
        return Err(format!(
            "back-end request {} has flags {:#x} (R-WIRE-16)",
            h.request, h.flags
        ));
    }
    let Ok(req) = BackendReq::from_code(h.request) else {
        return Err(format!(
            "unknown back-end request code {} (R-BCH-08)",
            h.request
        ));
    };
    let (min, max) = req.fd_range();
    if !(min..=max).contains(&msg.fds.len()) {
        return Err(format!(
            "{} carries {} fds, expected {min}..={max} (R-BCH-02)",
            req.spec_name(),
            msg.fds.len()
        ));
    }
    msg.body(req.request_body())
        .and_then(|b| b.validate().map(|()| b))
        .map_err(|v| format!("{}: {v} (R-BCH-02)", req.spec_name()))
}
