//! One front-end connection (checklist 4.1 to 4.10): negotiated state, the memory table, and a
//! flat dispatcher whose arms each call one handler. REPLY_ACK bookkeeping (R-ACK-01..04) and
//! the reply header (R-WIRE-03/04/05) live in [`Session::finish`] only. Beside this module, the
//! crate's `rings` holds the ring handlers, `state` device state transfer and `inflight`
//! inflight tracking.
//!
//! The session's state and its constructor live here; reading a message, dispatching it and
//! sending its reply are in `dispatch`, and the handlers by family of messages in `features`
//! (feature negotiation), `memory` (the memory table and the dirty log), `config` (the config
//! space and the shared memory regions) and `control` (owner, status, reset, the back-end
//! channel, the gpu socket).

mod config;
mod control;
mod dispatch;
mod features;
mod memory;

use std::os::fd::OwnedFd;
use std::time::Duration;

use vhu_protocol::wire::payload::Body;
use vhu_protocol::{Connection, ProtocolFeatures};

use crate::channel::{BackendChannel, Shmem};
use crate::devices::Device;
use crate::faults::{Fault, Faults};
use crate::inflight::InflightArea;
use crate::iotlb::Iotlb;
use crate::memory::Memory;
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
