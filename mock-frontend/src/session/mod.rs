//! A vhost-user session from the front-end's side (spec "Communication", "Feature negotiation",
//! checklist Appendix A): it sends requests, sets NEED_REPLY where REPLY_ACK is negotiated,
//! checks every reply's framing (R-WIRE-02/03/05), tracks what was negotiated and records a
//! transcript. A back-end's misbehaviour comes back as a [`SessionError`] that says so.
//!
//! The [`Session`] type and its state live here; its methods are spread by job: the checked
//! request/reply path (`request`), unchecked sending and receiving (`raw`), one typed method per
//! message (`messages`) and the Appendix A negotiation (`negotiate`).

mod error;
mod messages;
mod negotiate;
mod options;
mod raw;
mod request;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use vhu_protocol::{Connection, ProtocolFeatures};

use crate::channel::BackendChannel;
use crate::iommu::Iommu;
use crate::transcript::{Recorder, Transcript};

pub use error::{ReplyViolation, SessionError};
pub use negotiate::{Negotiated, Wanted};
pub use options::{Ack, SessionOptions};

/// A front-end session over one connection.
#[derive(Debug)]
pub struct Session {
    /// The main socket; the back-end channel's thread borrows it to answer IOTLB misses, so
    /// every request holds the lock until its reply is read.
    conn: Arc<Mutex<Connection>>,
    /// The IOMMU's mappings and the misses answered (VIRTIO_F_ACCESS_PLATFORM).
    iommu: Iommu,
    opts: SessionOptions,
    /// Every message on the main socket, decoded only when the transcript is asked for.
    transcript: Recorder,
    start: Instant,
    offered_features: Option<u64>,
    offered_protocol: Option<u64>,
    acked_features: Option<u64>,
    acked_protocol: Option<u64>,
    channel: Option<BackendChannel>,
    /// GET_SHMEM_CONFIG's last valid answer (index = shmid), for the back-end channel.
    shmem_sizes: Option<Vec<u64>>,
    /// The last ack-only request sent without NEED_REPLY: a reply carrying its code is an
    /// unrequested ack (R-ACK-03).
    last_unacked: Option<u32>,
    /// Messages received on the main socket.
    received: usize,
}

impl Session {
    /// A session over a connected socket; every reply is waited for `opts.reply_timeout`.
    pub fn new(mut conn: Connection, opts: SessionOptions) -> Self {
        conn.set_timeout(Some(opts.reply_timeout));
        Self {
            conn: Arc::new(Mutex::new(conn)),
            iommu: Iommu::default(),
            opts,
            transcript: Recorder::default(),
            start: Instant::now(),
            offered_features: None,
            offered_protocol: None,
            acked_features: None,
            acked_protocol: None,
            channel: None,
            shmem_sizes: None,
            last_unacked: None,
            received: 0,
        }
    }

    /// Changes how long each reply is waited for (a slow-starting back-end's first reply).
    pub fn set_reply_timeout(&mut self, timeout: Duration) {
        self.opts.reply_timeout = timeout;
        self.conn().set_timeout(Some(timeout));
    }

    /// The main connection, locked (see [`Session`]'s `conn`).
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The IOMMU: its mappings answer the back-end's IOTLB misses; misses can be held.
    pub fn iommu(&self) -> &Iommu {
        &self.iommu
    }

    /// How many messages arrived on the main socket so far.
    pub fn received(&self) -> usize {
        self.received
    }

    /// Connects to a listening back-end.
    pub fn connect(path: &Path, opts: SessionOptions) -> Result<Self, SessionError> {
        let stream = UnixStream::connect(path).map_err(|source| SessionError::Local {
            what: format!("cannot connect to {}", path.display()),
            source,
        })?;
        Ok(Self::new(
            Connection::new(stream, Some(opts.reply_timeout)),
            opts,
        ))
    }

    /// Every message so far (the back-end channel's included).
    pub fn transcript(&self) -> Transcript {
        let mut t = self.transcript.transcript();
        if let Some(ch) = &self.channel {
            t.entries.extend(ch.transcript().entries);
            t.entries.sort_by_key(|e| e.at_us);
            t.entries
                .iter_mut()
                .enumerate()
                .for_each(|(i, e)| e.seq = i as u64);
        }
        t
    }

    /// The options in force (the reply timeout as last set).
    pub fn options(&self) -> &SessionOptions {
        &self.opts
    }

    /// GET_FEATURES's last answer.
    pub fn offered_features(&self) -> Option<u64> {
        self.offered_features
    }

    /// GET_PROTOCOL_FEATURES's last answer.
    pub fn offered_protocol(&self) -> Option<u64> {
        self.offered_protocol
    }

    /// What SET_FEATURES last acked.
    pub fn acked_features(&self) -> Option<u64> {
        self.acked_features
    }

    /// What SET_PROTOCOL_FEATURES last acked.
    pub fn acked_protocol(&self) -> Option<u64> {
        self.acked_protocol
    }

    /// Whether a protocol feature was acked.
    pub fn has_protocol(&self, f: ProtocolFeatures) -> bool {
        self.acked_protocol
            .is_some_and(|p| ProtocolFeatures::from_bits_retain(p).contains(f))
    }

    /// Whether REPLY_ACK is negotiated.
    pub fn reply_ack(&self) -> bool {
        self.has_protocol(ProtocolFeatures::REPLY_ACK)
    }

    /// The back-end request channel, once SET_BACKEND_REQ_FD was sent.
    pub fn channel(&self) -> Option<&BackendChannel> {
        self.channel.as_ref()
    }

    /// Takes the back-end channel out of the session (to keep watching it after a new
    /// SET_BACKEND_REQ_FD, or to close it by dropping it).
    pub fn take_channel(&mut self) -> Option<BackendChannel> {
        self.channel.take()
    }
}
