//! The back-end request channel (spec "Back-end communication", checklist 1.6 and R-BCH): a
//! socket the back-end sends requests on. A thread serves it while the main socket is used, so
//! neither side can deadlock waiting on the other (R-BCH-07). Every request is recorded, framing
//! violations are noted, and NEED_REPLY requests are acked (R-ACK-08): 0 when the request is
//! valid, non-zero otherwise (unknown codes included, R-BCH-08).

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhu_protocol::wire::payload::Body;
use vhu_protocol::{BackendReq, ConnError, Connection, Message};

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
}

#[derive(Debug, Default)]
struct Shared {
    records: Vec<BackendRecord>,
    violations: Vec<String>,
    transcript: Transcript,
    shmem_sizes: Vec<u64>,
    refuse: usize,
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

    /// Framing or payload violations seen on the channel (R-WIRE-16, R-BCH-02).
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// The channel's part of the transcript.
    pub fn transcript(&self) -> Transcript {
        self.lock().transcript.clone()
    }

    /// Declares the shared memory regions (GET_SHMEM_CONFIG's sizes) SHMEM_MAP is checked against.
    pub fn set_shmem_config(&self, sizes: &[u64]) {
        self.lock().shmem_sizes = sizes.to_vec();
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
            Ok(msg) => handle(conn, shared, &msg, epoch),
            Err(ConnError::Timeout { .. }) => {}
            Err(e) if e.is_peer_gone() => return,
            Err(e) => {
                let mut s = shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                s.violations.push(format!("back-end channel: {e}"));
                if matches!(e, ConnError::OversizedPayload { .. } | ConnError::Io { .. }) {
                    return;
                }
            }
        }
    }
}

fn handle(conn: &Connection, shared: &Mutex<Shared>, msg: &Message, epoch: Instant) {
    let mut s = shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let at = epoch.elapsed().as_micros() as u64;
    s.transcript.record(
        at,
        Channel::Backend,
        Direction::FromBackend,
        &msg.header,
        &msg.payload,
        msg.fds.len(),
    );
    let problem = check(msg, &s.shmem_sizes);
    if let Some(p) = &problem {
        s.violations.push(p.clone());
    }
    let mut ack = None;
    if msg.header.need_reply() {
        let refuse = s.refuse > 0;
        s.refuse = s.refuse.saturating_sub(1);
        let value = u64::from(problem.is_some() || refuse);
        let reply = vhu_protocol::Header::reply(msg.header.request, 8);
        s.transcript.record(
            epoch.elapsed().as_micros() as u64,
            Channel::Backend,
            Direction::ToBackend,
            &reply,
            &value.to_ne_bytes(),
            0,
        );
        let _ = conn.send_reply(msg.header.request, &Body::U64(value), &[]);
        ack = Some(value);
    }
    s.records.push(BackendRecord {
        code: msg.header.request,
        flags: msg.header.flags,
        payload: msg.payload.clone(),
        fds: msg.fds.len(),
        ack,
    });
}

/// Syntax and range checks of one back-end request (R-WIRE-16, R-BCH-02, R-SHM-05).
fn check(msg: &Message, shmem_sizes: &[u64]) -> Option<String> {
    let h = &msg.header;
    if h.validate().is_err() || h.is_reply() {
        return Some(format!(
            "back-end request {} has flags {:#x} (R-WIRE-16)",
            h.request, h.flags
        ));
    }
    let Ok(req) = BackendReq::from_code(h.request) else {
        return Some(format!(
            "unknown back-end request code {} (R-BCH-08)",
            h.request
        ));
    };
    let (min, max) = req.fd_range();
    if !(min..=max).contains(&msg.fds.len()) {
        return Some(format!(
            "{} carries {} fds, expected {min}..={max} (R-BCH-02)",
            req.spec_name(),
            msg.fds.len()
        ));
    }
    let body = match msg
        .body(req.request_body())
        .and_then(|b| b.validate().map(|()| b))
    {
        Ok(b) => b,
        Err(v) => return Some(format!("{}: {v} (R-BCH-02)", req.spec_name())),
    };
    if let (BackendReq::ShmemMap, Body::ShmemMap(m)) = (req, &body) {
        let size = shmem_sizes.get(usize::from(m.shmid)).copied().unwrap_or(0);
        if size == 0 || m.shm_offset.saturating_add(m.len) > size {
            return Some(format!(
                "SHMEM_MAP of shmid {} range {:#x}+{:#x} outside the declared region of {size:#x} bytes (R-SHM-05)",
                m.shmid, m.shm_offset, m.len
            ));
        }
    }
    None
}
