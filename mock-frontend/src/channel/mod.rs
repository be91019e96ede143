//! The back-end request channel (spec "Back-end communication", checklist 1.6 and R-BCH): a
//! socket the back-end sends requests on. A thread serves it while the main socket is used, so
//! neither side can deadlock waiting on the other (R-BCH-07). Every request is recorded, framing
//! violations are noted, and NEED_REPLY requests are acked (R-ACK-08): 0 when the request is
//! valid and done, non-zero otherwise (unknown codes included, R-BCH-08). SHMEM_MAP and
//! SHMEM_UNMAP really map and unmap the back-end's fd in the regions GET_SHMEM_CONFIG declared
//! (see [`crate::shmem`]). An IOTLB miss is answered with the IOTLB update on the main socket
//! before it is acked (see [`crate::iommu`]).
//!
//! The violation and refusal types are in `violation.rs`, the serving thread (each request
//! received, checked, carried out and acked) in `serve.rs`, and its answers to IOTLB misses in
//! `iotlb_miss.rs`.

mod iotlb_miss;
mod serve;
mod violation;

use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhu_protocol::Connection;

pub use violation::{ChannelViolation, Refusal};

use self::serve::serve;
use crate::iommu::{Iommu, MainLink};
use crate::shmem::{ShmemMapping, ShmemSpace};
use crate::transcript::Transcript;

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

fn trim_zeros(sizes: &[u64]) -> &[u64] {
    let len = sizes.iter().rposition(|&s| s != 0).map_or(0, |i| i + 1);
    &sizes[..len]
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
