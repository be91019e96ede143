//! The front-end's IOMMU (spec "IOMMU support"). With VIRTIO_F_ACCESS_PLATFORM the device
//! addresses guest memory by I/O virtual address: this front-end maps each region at an IOVA of
//! its own choosing ([`GuestMemory::map_iova`](crate::GuestMemory::map_iova)), pushes entries with
//! IOTLB_MSG when asked ([`Session::iotlb_update`](crate::Session::iotlb_update)), and answers
//! the back-end's misses (BACKEND_IOTLB_MSG type 1) on the back-end channel: the update for the
//! mapping that covers the address goes out on the main socket, its u64 reply is read, and only
//! then is the miss acked if it asked for NEED_REPLY; a miss no mapping covers is invalid:
//! nothing is sent and the ack is non-zero (checklist R-IOTLB-04).
//!
//! Misses can be held ([`Iommu::hold`]): they wait, unanswered and unacked, until released, so
//! a test can see that a request is not completed without the translation. What was done for
//! each miss is recorded as a [`MissAnswer`]: facts, no verdicts.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use vhu_protocol::wire::payload::{Body, IotlbMsg};
use vhu_protocol::{ConnError, Connection, FrontendReq, Header, Message};

/// `perm`: read-only.
pub const PERM_RO: u8 = 1;
/// `perm`: write-only.
pub const PERM_WO: u8 = 2;
/// `perm`: read-write.
pub const PERM_RW: u8 = 3;
/// `type`: miss (back-end to front-end).
pub const TYPE_MISS: u8 = 1;
/// `type`: update (front-end to back-end).
pub const TYPE_UPDATE: u8 = 2;
/// `type`: invalidate (front-end to back-end).
pub const TYPE_INVALIDATE: u8 = 3;
/// `type`: access failure (back-end to front-end).
pub const TYPE_ACCESS_FAIL: u8 = 4;

/// One translation of the IOMMU: `size` bytes from `iova` are the user addresses from `uaddr`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First I/O virtual address.
    pub iova: u64,
    /// Bytes mapped.
    pub size: u64,
    /// The user address announced for `iova` (a memory table user address).
    pub uaddr: u64,
    /// Accesses allowed (bit 0 read, bit 1 write).
    pub perm: u8,
}

impl Mapping {
    /// Whether `iova` lies in the mapping and `perm` is allowed.
    pub fn covers(&self, iova: u64, perm: u8) -> bool {
        iova >= self.iova && iova - self.iova < self.size && self.perm & perm == perm
    }

    /// The IOTLB_MSG update that installs this mapping.
    pub fn update(&self) -> IotlbMsg {
        IotlbMsg {
            iova: self.iova,
            size: self.size,
            uaddr: self.uaddr,
            perm: self.perm,
            kind: TYPE_UPDATE,
            padding: [0; 6],
        }
    }

    /// The IOTLB_MSG invalidation of this mapping's range.
    pub fn invalidate(&self) -> IotlbMsg {
        IotlbMsg {
            iova: self.iova,
            size: self.size,
            uaddr: 0,
            perm: 0,
            kind: TYPE_INVALIDATE,
            padding: [0; 6],
        }
    }
}

/// What the front-end did about one miss.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissAnswer {
    /// The miss as the back-end sent it.
    pub miss: IotlbMsg,
    /// Whether the miss asked for an ack (NEED_REPLY).
    pub need_reply: bool,
    /// The mapping sent as an update; `None` for an invalid miss (no mapping covers it).
    pub update: Option<Mapping>,
    /// The back-end's u64 answer to the update, or why none came (nothing sent, a timeout, a
    /// malformed reply, the connection closed).
    pub reply: Result<u64, String>,
    /// The ack sent on the back-end channel, when one was asked for.
    pub ack: Option<u64>,
    /// Microseconds since the session started when the miss was answered.
    pub at_us: u64,
}

/// A miss waiting for an answer.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub(crate) miss: IotlbMsg,
    pub(crate) need_reply: bool,
    /// Its index in the channel's records, to note the ack there.
    pub(crate) record: Option<usize>,
}

#[derive(Debug, Default)]
struct State {
    mappings: Vec<Mapping>,
    hold: bool,
    held: Vec<Pending>,
    /// Misses being answered now (their update's reply not read yet).
    answering: usize,
    answers: Vec<MissAnswer>,
}

/// The IOMMU's mappings and the misses answered, shared by the session and its back-end
/// channel. Cloning gives another handle on the same state.
#[derive(Clone, Debug, Default)]
pub struct Iommu(Arc<Shared>);

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when a miss's answer is recorded, for [`Iommu::settle`].
    answered: Condvar,
}

impl Iommu {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the mappings a miss is answered from.
    pub fn set_mappings(&self, mappings: Vec<Mapping>) {
        self.lock().mappings = mappings;
    }

    /// The mappings.
    pub fn mappings(&self) -> Vec<Mapping> {
        self.lock().mappings.clone()
    }

    /// The mapping that translates `iova` with `perm`.
    pub fn lookup(&self, iova: u64, perm: u8) -> Option<Mapping> {
        self.lock()
            .mappings
            .iter()
            .find(|m| m.covers(iova, perm))
            .copied()
    }

    /// Holds misses (`true`): they are recorded on the channel but neither answered nor acked
    /// until `hold(false)`, after which the channel answers them in order.
    pub fn hold(&self, on: bool) {
        self.lock().hold = on;
    }

    /// Whether misses are held.
    pub fn holding(&self) -> bool {
        self.lock().hold
    }

    /// Misses waiting for an answer.
    pub fn held(&self) -> usize {
        self.lock().held.len()
    }

    /// Every miss answered so far, in order.
    pub fn answers(&self) -> Vec<MissAnswer> {
        self.lock().answers.clone()
    }

    /// Waits up to `within` until no miss is being answered (an update's reply may take the
    /// whole reply timeout); whether none is.
    pub fn settle(&self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        let mut s = self.lock();
        loop {
            if s.answering == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .0
                .answered
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Keeps `p` for later when holding; otherwise gives it back to be answered now.
    pub(crate) fn hold_or_pass(&self, p: Pending) -> Option<Pending> {
        let mut s = self.lock();
        if s.hold {
            s.held.push(p);
            None
        } else {
            s.answering += 1;
            Some(p)
        }
    }

    /// The held misses, once holding stopped.
    pub(crate) fn released(&self) -> Vec<Pending> {
        let mut s = self.lock();
        if s.hold {
            return Vec::new();
        }
        let held = std::mem::take(&mut s.held);
        s.answering += held.len();
        held
    }

    /// Records what was done for a miss [`hold_or_pass`](Self::hold_or_pass) or
    /// [`released`](Self::released) handed out.
    pub(crate) fn record(&self, a: MissAnswer) {
        let mut s = self.lock();
        s.answering = s.answering.saturating_sub(1);
        if s.answers.len() < crate::channel::MAX_RECORDS {
            s.answers.push(a);
        }
        drop(s);
        self.0.answered.notify_all();
    }
}

/// The main socket, shared by the session and the back-end channel's thread, which sends the
/// IOTLB update a miss asks for. Each takes the lock for a whole request and its reply, so a
/// reply always reaches the side that asked. The channel only borrows it: once the session is
/// dropped the socket closes, even if a channel taken out of it lives on.
#[derive(Clone, Debug)]
pub struct MainLink(Weak<Mutex<Connection>>);

impl MainLink {
    /// A link to the session's connection.
    pub(crate) fn new(conn: &Arc<Mutex<Connection>>) -> Self {
        Self(Arc::downgrade(conn))
    }

    /// Sends `msg` as an IOTLB_MSG (with NEED_REPLY if asked: the reply is due either way,
    /// R-IOTLB-02) and reads its u64 reply; `seen` is told of each message, as it is sent and
    /// as it arrives.
    pub(crate) fn iotlb(
        &self,
        msg: &IotlbMsg,
        need_reply: bool,
        mut seen: impl FnMut(&Header, &[u8]),
    ) -> Result<u64, String> {
        let shared = self
            .0
            .upgrade()
            .ok_or("the session is gone: no main socket to send the update on")?;
        let conn = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let req = FrontendReq::IotlbMsg as u32;
        let payload = Body::Iotlb(*msg).encode();
        let header = Header::request(req, payload.len() as u32, need_reply);
        seen(&header, &payload);
        conn.send(header, &payload, &[])
            .map_err(|e| describe(&e, conn.timeout()))?;
        let reply: Message = match conn.recv_reply(req) {
            Ok(m) => m,
            Err(ConnError::UnexpectedReply { message, .. }) => {
                seen(&message.header, &message.payload);
                return Err(format!(
                    "a message with code {} flags {:#x} instead of the IOTLB_MSG reply",
                    message.header.request, message.header.flags
                ));
            }
            Err(e) => return Err(describe(&e, conn.timeout())),
        };
        seen(&reply.header, &reply.payload);
        reply
            .u64()
            .filter(|_| reply.payload.len() == 8)
            .ok_or_else(|| format!("a reply of {} bytes, not a u64", reply.payload.len()))
    }
}

fn describe(e: &ConnError, timeout: Option<Duration>) -> String {
    match e {
        ConnError::Timeout { .. } => format!(
            "no reply to the IOTLB update within {}",
            timeout.map_or("the timeout".into(), |t| format!("{t:?}"))
        ),
        e if e.is_peer_gone() => "the connection closed".into(),
        e => e.to_string(),
    }
}
