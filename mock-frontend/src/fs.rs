//! virtio-fs requests through a request queue or the hiprio queue (virtio 1.2 section 5.11): a
//! FUSE request ([`fs::InHeader`] and body) in driver-readable buffers, room for the reply
//! ([`fs::OutHeader`] and body) in device-writable ones, on the guarded chains of
//! [`crate::exchange`]. What came back is returned as facts ([`FuseExchanged`]); judging it is
//! the engine's job.

use std::time::Duration;

use vhu_protocol::virtio::fs::{self, InHeader, OutHeader};
use zerocopy::{FromBytes, IntoBytes};

use crate::exchange::{self, ChainSpec, Exchanged};
use crate::memory::GuestMemory;
use crate::vring::{DriverQueue, WaitError};

/// One FUSE request: opcode, node and body, and how many reply bytes the driver makes room for
/// (0: none, as for FORGET).
#[derive(Clone, Debug)]
pub struct FuseRequest {
    /// `fs::OP_*` (or any value, to probe an unknown opcode).
    pub opcode: u32,
    /// The node the request is about.
    pub nodeid: u64,
    /// The opcode's body.
    pub body: Vec<u8>,
    /// Device-writable bytes for the reply, out header included (0: no reply expected).
    pub reply_room: u32,
}

impl FuseRequest {
    /// FUSE_INIT, protocol 7.31, no capability flags (room for a 64-byte fuse_init_out).
    pub fn init() -> Self {
        let body = fs::InitIn {
            major: fs::KERNEL_VERSION,
            minor: fs::KERNEL_MINOR,
            max_readahead: 128 << 10,
            flags: 0,
        };
        Self::with(fs::OP_INIT, 0, body.as_bytes(), 16 + 256)
    }

    /// FUSE_GETATTR of `nodeid`.
    pub fn getattr(nodeid: u64) -> Self {
        Self::with(
            fs::OP_GETATTR,
            nodeid,
            fs::GetattrIn::default().as_bytes(),
            16 + 128,
        )
    }

    /// FUSE_LOOKUP of `name` in directory `parent`.
    pub fn lookup(parent: u64, name: &str) -> Self {
        let mut body = name.as_bytes().to_vec();
        body.push(0);
        Self::with(fs::OP_LOOKUP, parent, &body, 16 + 160)
    }

    /// FUSE_OPEN of `nodeid`, read-only.
    pub fn open(nodeid: u64) -> Self {
        Self::with(
            fs::OP_OPEN,
            nodeid,
            fs::OpenIn::default().as_bytes(),
            16 + 32,
        )
    }

    /// FUSE_READ of `size` bytes at `offset` of the open file `fh`.
    pub fn read(nodeid: u64, fh: u64, offset: u64, size: u32) -> Self {
        let body = fs::ReadIn {
            fh,
            offset,
            size,
            ..fs::ReadIn::default()
        };
        Self::with(fs::OP_READ, nodeid, body.as_bytes(), 16 + size)
    }

    /// FUSE_RELEASE of the open file `fh`.
    pub fn release(nodeid: u64, fh: u64) -> Self {
        let body = fs::ReleaseIn {
            fh,
            ..fs::ReleaseIn::default()
        };
        Self::with(fs::OP_RELEASE, nodeid, body.as_bytes(), 16 + 16)
    }

    /// FUSE_FORGET of `nlookup` lookups of `nodeid`: no reply, so no device-writable buffer.
    pub fn forget(nodeid: u64, nlookup: u64) -> Self {
        Self::with(
            fs::OP_FORGET,
            nodeid,
            fs::ForgetIn { nlookup }.as_bytes(),
            0,
        )
    }

    /// A request with opcode `opcode` and an 8-byte body of zeros (an opcode FUSE does not
    /// define, for the -ENOSYS check).
    pub fn unknown(opcode: u32) -> Self {
        Self::with(opcode, fs::ROOT_ID, &[0; 8], 16 + 64)
    }

    fn with(opcode: u32, nodeid: u64, body: &[u8], reply_room: u32) -> Self {
        Self {
            opcode,
            nodeid,
            body: body.to_vec(),
            reply_room,
        }
    }

    /// The in header for this request as request `unique` of caller `uid`/`gid`.
    pub fn header(&self, unique: u64, uid: u32, gid: u32) -> InHeader {
        InHeader {
            len: (size_of::<InHeader>() + self.body.len()) as u32,
            opcode: self.opcode,
            unique,
            nodeid: self.nodeid,
            uid,
            gid,
            pid: std::process::id(),
            total_extlen: 0,
            padding: 0,
        }
    }

    /// The chain as Linux's virtio-fs driver lays it out: the in header and the body in their
    /// own readable descriptors, the out header and the reply body in their own writable ones.
    pub fn chain(&self, unique: u64, uid: u32, gid: u32, indirect: bool) -> ChainSpec {
        let mut readable = vec![self.header(unique, uid, gid).as_bytes().to_vec()];
        if !self.body.is_empty() {
            readable.push(self.body.clone());
        }
        let mut writable = Vec::new();
        if self.reply_room > 0 {
            writable.push(size_of::<OutHeader>() as u32);
            if self.reply_room > 16 {
                writable.push(self.reply_room - 16);
            }
        }
        ChainSpec {
            readable,
            writable,
            indirect,
        }
    }
}

/// What one FUSE request came back with.
#[derive(Clone, Debug)]
pub struct FuseExchanged {
    /// The ring-level facts (used length, canaries, notification).
    pub ring: Exchanged,
    /// The out header, when the device wrote at least 16 bytes.
    pub header: Option<OutHeader>,
    /// The reply bytes after the out header, cut at the used length.
    pub body: Vec<u8>,
}

impl FuseExchanged {
    /// The reply body read as `T` (its first `size_of::<T>()` bytes), when long enough.
    pub fn body_as<T: FromBytes>(&self) -> Option<T> {
        T::read_from_prefix(&self.body).ok().map(|(t, _)| t)
    }
}

/// Splits what the device wrote into the out header and the body.
pub fn parse(ring: Exchanged) -> FuseExchanged {
    let reply = ring.reply();
    let header = OutHeader::read_from_prefix(&reply).ok().map(|(h, _)| h);
    let body = reply
        .get(size_of::<OutHeader>()..)
        .unwrap_or_default()
        .to_vec();
    FuseExchanged { ring, header, body }
}

/// Sends one FUSE request on `q` and waits up to `timeout` for its chain to be used. The
/// request's guest memory is given back before returning.
///
/// # Errors
/// Guest memory or the ring is full, the device did not use the chain in time, or named
/// another one.
pub fn fuse_exchange(
    q: &mut DriverQueue,
    mem: &mut GuestMemory,
    chain: &ChainSpec,
    timeout: Duration,
) -> Result<FuseExchanged, WaitError> {
    let mark = mem.mark();
    let r = exchange::exchange(q, mem, chain, timeout);
    mem.release(mark);
    r.map(parse)
}
