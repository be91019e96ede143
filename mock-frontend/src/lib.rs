//! The mock VMM (front-end) of vhu-conform: guest memory over memfd, a strict vhost-user session
//! that tracks what was negotiated, the driver side of virtqueues, virtio-blk requests, the
//! back-end request channel, an IOMMU that answers IOTLB misses, and a transcript of every message.
//!
//! A back-end that misbehaves is never a panic here: it is a [`session::SessionError`] whose
//! [`is_backend_fault`](session::SessionError::is_backend_fault) says so, for the engine to turn
//! into a finding that cites a rule.

pub mod blk;
pub mod channel;
pub mod console;
pub mod exchange;
pub mod fs;
pub mod gpio;
pub mod gpu;
pub mod i2c;
pub mod inflight;
pub mod input;
pub mod iommu;
pub mod memory;
pub mod net;
pub mod rng;
pub mod scmi;
pub mod session;
pub mod shmem;
pub mod sound;
pub mod transcript;
pub mod vring;
pub mod vsock;

pub use memory::{GuestMemory, GuestRegion, MemoryError, RegionSpec};
pub use session::{Ack, Negotiated, ReplyViolation, Session, SessionError, SessionOptions, Wanted};
pub use transcript::Transcript;
pub use vring::{Buffer, DriverQueue, RingLayout, WaitError};
