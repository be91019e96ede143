//! The back-end request channel (checklist 1.6 and 4.14, R-BCH): requests this back-end sends to
//! the front-end on the socket given with SET_BACKEND_REQ_FD, with the front-end's ack awaited
//! (bounded) when NEED_REPLY is set. Used for in-band call/err notifications (R-INB-04) and for
//! the SHMEM map device request (R-SHM-05, R-SHM-11).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhu_mock_device::VendorRequests;
use vhu_protocol::virtio::{VhuShmemBody, blk};
use vhu_protocol::wire::payload::{Body, ShmemMapMsg, VringState};
use vhu_protocol::{BackendReq, Connection, Header};
use zerocopy::FromBytes;

/// How long the front-end may take to ack a back-end request.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Byte the memfd of a SHMEM map is filled with, so the front-end can see it mapped.
pub const SHMEM_FILL: u8 = 0xa5;

/// The back-end channel.
#[derive(Debug)]
pub struct BackendChannel {
    conn: Connection,
}

impl BackendChannel {
    /// Wraps the socket the front-end sent.
    pub fn new(fd: OwnedFd) -> Self {
        Self {
            conn: Connection::new(UnixStream::from(fd), Some(ACK_TIMEOUT)),
        }
    }

    /// Sends one request; with `need_reply`, waits for the front-end's ack and returns it
    /// (0 when no ack was asked for).
    ///
    /// # Errors
    /// The channel failed, or the ack did not come, or was malformed.
    pub fn request(
        &self,
        req: BackendReq,
        body: &Body,
        fds: &[BorrowedFd<'_>],
        need_reply: bool,
    ) -> Result<u64, String> {
        let payload = body.encode();
        let header = Header::request(req as u32, payload.len() as u32, need_reply);
        self.conn
            .send(header, &payload, fds)
            .map_err(|e| e.to_string())?;
        if !need_reply {
            return Ok(0);
        }
        let reply = self
            .conn
            .recv_reply(req as u32)
            .map_err(|e| e.to_string())?;
        reply.u64().ok_or_else(|| "malformed ack".into())
    }

    /// BACKEND_VRING_CALL or BACKEND_VRING_ERR for ring `index` (R-INB-04, R-BCH-05: num 0).
    pub fn notify(&self, req: BackendReq, index: u32, need_reply: bool) -> bool {
        let body = Body::VringState(VringState { index, num: 0 });
        self.request(req, &body, &[], need_reply) == Ok(0)
    }
}

/// A SHMEM device request (vendor blk types `T_VHU_SHMEM_MAP` / `T_VHU_SHMEM_UNMAP`, see the
/// crate docs), decoded from its 24-byte body.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ShmemReq {
    /// Map (true) or unmap.
    pub map: bool,
    /// The shared memory region.
    pub shmid: u8,
    /// Offset into the region.
    pub offset: u64,
    /// Bytes to map.
    pub len: u64,
}

impl ShmemReq {
    /// The request of blk type `kind` with driver-readable `body`; `None` unless the body is
    /// exactly one [`VhuShmemBody`] and nothing is device-writable besides the status byte.
    pub fn decode(kind: u32, body: &[u8], writable: u64) -> Option<Self> {
        let b = VhuShmemBody::read_from_bytes(body)
            .ok()
            .filter(|_| writable == 0)?;
        Some(Self {
            map: kind == blk::T_VHU_SHMEM_MAP,
            shmid: b.shmid,
            offset: b.shm_offset,
            len: b.len,
        })
    }
}

/// The SHMEM device request as the blk device's vendor hook: the session's [`Shmem`] with
/// what the negotiation allows it.
pub struct ShmemHook<'a> {
    /// The regions and mappings.
    pub shmem: &'a mut Shmem,
    /// What the session allows.
    pub ctx: ShmemCtx<'a>,
}

impl VendorRequests for ShmemHook<'_> {
    fn serves(&self, kind: u32) -> bool {
        matches!(kind, blk::T_VHU_SHMEM_MAP | blk::T_VHU_SHMEM_UNMAP)
    }

    fn serve(&mut self, kind: u32, body: &[u8], writable: u64) -> u8 {
        match ShmemReq::decode(kind, body, writable) {
            Some(r) if self.shmem.request(&self.ctx, r) => blk::S_OK,
            _ => blk::S_IOERR,
        }
    }
}

/// The shared memory regions declared with `--shmem` and what is mapped in them now.
#[derive(Debug, Default)]
pub struct Shmem {
    /// Declared regions: (shmid, size).
    pub declared: Vec<(u8, u64)>,
    /// Current mappings: (shmid, offset, len).
    maps: Vec<(u8, u64, u64)>,
}

/// What the session lets a SHMEM request use.
pub struct ShmemCtx<'c> {
    /// The channel, if SHMEM and BACKEND_REQ are negotiated and one was set (R-SHM-10).
    pub channel: Option<&'c BackendChannel>,
    /// REPLY_ACK negotiated: ask for an ack (R-SHM-11).
    pub reply_ack: bool,
    /// BACKEND_SEND_FD negotiated: a map, which carries an fd, may be sent (checklist 1.6).
    pub send_fd: bool,
    /// Fault `shmem-out-of-range`: the map lands one region size further.
    pub out_of_range: bool,
    /// Fault `crash-on-shmem-refusal`: a refused map aborts the process.
    pub abort_on_refusal: bool,
}

impl Shmem {
    /// A new set of declared regions, nothing mapped.
    pub fn new(declared: Vec<(u8, u64)>) -> Self {
        Self {
            declared,
            maps: vec![],
        }
    }

    /// Forgets every mapping (device reset; the front-end drops them too, R-SHM-09).
    pub fn clear(&mut self) {
        self.maps.clear();
    }

    /// Carries out a SHMEM device request; true when the front-end accepted it.
    pub fn request(&mut self, ctx: &ShmemCtx<'_>, r: ShmemReq) -> bool {
        let Some(channel) = ctx.channel else {
            return false;
        };
        if !self.in_region(r) {
            return false;
        }
        if r.map && ctx.send_fd {
            self.map(channel, ctx, r)
        } else if r.map {
            false
        } else {
            self.unmap(channel, ctx.reply_ack, r)
        }
    }

    fn in_region(&self, r: ShmemReq) -> bool {
        let size = self.declared.iter().find(|d| d.0 == r.shmid).map(|d| d.1);
        let end = r.offset.checked_add(r.len);
        r.len > 0 && size.zip(end).is_some_and(|(size, end)| end <= size)
    }

    fn map(&mut self, channel: &BackendChannel, ctx: &ShmemCtx<'_>, r: ShmemReq) -> bool {
        let overlaps = self
            .maps
            .iter()
            .any(|&(id, off, len)| id == r.shmid && r.offset < off + len && off < r.offset + r.len);
        let Some(fd) = filled_memfd(r.len).filter(|_| !overlaps) else {
            return false;
        };
        let size = self
            .declared
            .iter()
            .find(|d| d.0 == r.shmid)
            .map_or(0, |d| d.1);
        let msg = ShmemMapMsg {
            shmid: r.shmid,
            fd_offset: 0,
            shm_offset: r.offset + if ctx.out_of_range { size } else { 0 },
            len: r.len,
            flags: 1,
            ..Default::default()
        };
        let body = Body::ShmemMap(msg);
        let ok =
            channel.request(BackendReq::ShmemMap, &body, &[fd.as_fd()], ctx.reply_ack) == Ok(0);
        if ok {
            self.maps.push((r.shmid, r.offset, r.len));
        } else if ctx.abort_on_refusal {
            std::process::abort();
        }
        ok
    }

    fn unmap(&mut self, channel: &BackendChannel, reply_ack: bool, r: ShmemReq) -> bool {
        let Some(i) = self
            .maps
            .iter()
            .position(|&m| m == (r.shmid, r.offset, r.len))
        else {
            return false; // R-SHM-08: only a whole existing mapping is unmapped.
        };
        let msg = ShmemMapMsg {
            shmid: r.shmid,
            shm_offset: r.offset,
            len: r.len,
            ..Default::default()
        };
        let ok =
            channel.request(BackendReq::ShmemUnmap, &Body::ShmemMap(msg), &[], reply_ack) == Ok(0);
        if ok {
            self.maps.remove(i);
        }
        ok
    }
}

/// A memfd of `len` bytes, every byte [`SHMEM_FILL`].
fn filled_memfd(len: u64) -> Option<OwnedFd> {
    let m = memfd::MemfdOptions::default()
        .close_on_exec(true)
        .create("vhu-shmem")
        .ok()?;
    let file = m.into_file();
    let chunk = vec![SHMEM_FILL; 64 << 10];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        std::io::Write::write_all(&mut &file, &chunk[..n]).ok()?;
        left -= n as u64;
    }
    Some(OwnedFd::from(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(channel: &BackendChannel) -> ShmemCtx<'_> {
        ShmemCtx {
            channel: Some(channel),
            reply_ack: true,
            send_fd: true,
            out_of_range: false,
            abort_on_refusal: false,
        }
    }

    /// A front-end double that acks every request with `ack` and reports what it got.
    fn frontend(peer: Connection, ack: u64) -> std::thread::JoinHandle<Vec<(u32, usize)>> {
        std::thread::spawn(move || {
            let mut seen = vec![];
            while let Ok(m) = peer.recv() {
                seen.push((m.header.request, m.fds.len()));
                let _ = peer.send_reply(m.header.request, &Body::U64(ack), &[]);
            }
            seen
        })
    }

    fn pair() -> (BackendChannel, Connection) {
        let (a, b) = UnixStream::pair().unwrap();
        (
            BackendChannel::new(OwnedFd::from(a)),
            Connection::new(b, None),
        )
    }

    fn req(map: bool, offset: u64, len: u64) -> ShmemReq {
        ShmemReq {
            map,
            shmid: 0,
            offset,
            len,
        }
    }

    #[test]
    fn a_map_inside_the_region_is_sent_with_one_fd_and_unmapped_whole() {
        let (ch, peer) = pair();
        let fe = frontend(peer, 0);
        let mut s = Shmem::new(vec![(0, 0x10000)]);
        assert!(s.request(&ctx(&ch), req(true, 0x1000, 0x1000)));
        assert!(!s.request(&ctx(&ch), req(true, 0x1800, 0x1000)), "overlap");
        assert!(!s.request(&ctx(&ch), req(true, 0xf000, 0x2000)), "outside");
        assert!(
            !s.request(&ctx(&ch), req(false, 0x1000, 0x800)),
            "part of a map"
        );
        assert!(s.request(&ctx(&ch), req(false, 0x1000, 0x1000)));
        drop(ch);
        assert_eq!(fe.join().unwrap(), vec![(9, 1), (10, 0)]);
    }

    #[test]
    fn only_a_24_byte_body_with_no_writable_data_is_a_shmem_request() {
        let body = [
            [1u8, 0, 0, 0, 0, 0, 0, 0],
            5u64.to_ne_bytes(),
            6u64.to_ne_bytes(),
        ]
        .concat();
        let r = ShmemReq::decode(blk::T_VHU_SHMEM_UNMAP, &body, 0);
        assert_eq!(
            r,
            Some(ShmemReq {
                map: false,
                shmid: 1,
                offset: 5,
                len: 6
            })
        );
        assert!(ShmemReq::decode(blk::T_VHU_SHMEM_MAP, &body[..23], 0).is_none());
        assert!(ShmemReq::decode(blk::T_VHU_SHMEM_MAP, &body, 1).is_none());
    }

    #[test]
    fn a_refused_map_fails_the_request_and_is_not_recorded() {
        let (ch, peer) = pair();
        let fe = frontend(peer, 1);
        let mut s = Shmem::new(vec![(0, 0x10000)]);
        assert!(!s.request(&ctx(&ch), req(true, 0, 0x1000)));
        assert!(
            !s.request(&ctx(&ch), req(false, 0, 0x1000)),
            "nothing mapped"
        );
        drop(ch);
        assert_eq!(fe.join().unwrap(), vec![(9, 1)]);
    }
}
