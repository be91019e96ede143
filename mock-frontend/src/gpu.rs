//! The driver side of virtio-gpu (virtio 1.2 section 5.7) on the device-neutral
//! [`exchange`](crate::exchange) path, and the front-end's end of the vhost-user-gpu protocol
//! (QEMU `docs/interop/vhost-user-gpu.rst`): the socket GPU_SET_SOCKET (vhost-user request 33)
//! hands the back-end, served by a thread that answers what the back-end asks
//! (GET_PROTOCOL_FEATURES, GET_DISPLAY_INFO, GET_EDID, DMABUF_UPDATE) and records every message.
//! Facts only: the engine judges them.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhu_protocol::virtio::gpu::{
    self, CtrlHdr, DISPLAY_INFO_SIZE, DisplayOne, Rect, RespDisplayInfo, vugpu,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::exchange::{ChainSpec, Exchanged};

/// The display the front-end announces on scanout 0.
pub const DISPLAY_WIDTH: u32 = 1280;
/// Its height.
pub const DISPLAY_HEIGHT: u32 = 800;
/// The vhost-user-gpu protocol features the front-end offers: EDID.
pub const OFFERED_FEATURES: u64 = vugpu::F_EDID;
/// The largest message payload read. Why: an UPDATE carries pixels; 64 MiB bounds what a
/// back-end can make the harness buffer.
const MAX_PAYLOAD: u32 = 64 << 20;

/// A command of `type_` with nothing after its header (GET_DISPLAY_INFO) and room for a
/// `reply`-byte response.
pub fn ctrl_chain(type_: u32, reply: u32, indirect: bool) -> ChainSpec {
    let h = CtrlHdr {
        type_,
        ..CtrlHdr::default()
    };
    ChainSpec {
        readable: vec![h.as_bytes().to_vec()],
        writable: vec![reply],
        indirect,
    }
}

/// GET_DISPLAY_INFO with room for the 408-byte response.
pub fn display_info_chain(indirect: bool) -> ChainSpec {
    ctrl_chain(
        gpu::CMD_GET_DISPLAY_INFO,
        DISPLAY_INFO_SIZE as u32,
        indirect,
    )
}

/// RESOURCE_CREATE_2D of `resource_id`, 64x64 B8G8R8A8_UNORM, with room for a header.
pub fn resource_create_2d_chain(resource_id: u32, indirect: bool) -> ChainSpec {
    let mut req = CtrlHdr {
        type_: gpu::CMD_RESOURCE_CREATE_2D,
        ..CtrlHdr::default()
    }
    .as_bytes()
    .to_vec();
    for v in [resource_id, gpu::FORMAT_B8G8R8A8_UNORM, 64, 64] {
        req.extend(v.to_le_bytes());
    }
    ChainSpec {
        readable: vec![req],
        writable: vec![gpu::CTRL_HDR_SIZE as u32],
        indirect,
    }
}

/// RESOURCE_UNREF of `resource_id`, with room for a header.
pub fn resource_unref_chain(resource_id: u32, indirect: bool) -> ChainSpec {
    let mut req = CtrlHdr {
        type_: gpu::CMD_RESOURCE_UNREF,
        ..CtrlHdr::default()
    }
    .as_bytes()
    .to_vec();
    req.extend(resource_id.to_le_bytes());
    req.extend(0u32.to_le_bytes());
    ChainSpec {
        readable: vec![req],
        writable: vec![gpu::CTRL_HDR_SIZE as u32],
        indirect,
    }
}

/// The response header, when the used length covers one.
pub fn response_hdr(done: &Exchanged) -> Option<CtrlHdr> {
    CtrlHdr::read_from_prefix(&done.reply())
        .ok()
        .map(|(h, _)| h)
}

/// The whole display info response, when the used length covers 408 bytes.
pub fn display_info(done: &Exchanged) -> Option<RespDisplayInfo> {
    RespDisplayInfo::read_from_prefix(&done.reply())
        .ok()
        .map(|(r, _)| r)
}

/// What the front-end answers GET_DISPLAY_INFO with: scanout 0 enabled at
/// [`DISPLAY_WIDTH`] x [`DISPLAY_HEIGHT`].
pub fn frontend_display_info() -> RespDisplayInfo {
    let mut r = RespDisplayInfo {
        hdr: CtrlHdr {
            type_: gpu::RESP_OK_DISPLAY_INFO,
            ..CtrlHdr::default()
        },
        ..RespDisplayInfo::default()
    };
    r.pmodes[0] = DisplayOne {
        r: Rect {
            x: 0,
            y: 0,
            width: DISPLAY_WIDTH,
            height: DISPLAY_HEIGHT,
        },
        enabled: 1,
        flags: 0,
    };
    r
}

/// One message the back-end sent on the vhost-user-gpu socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuMessage {
    /// The header.
    pub hdr: vugpu::Hdr,
    /// The payload. Fds (DMABUF_SCANOUT's) are not taken: the plain reads drop them.
    pub payload: Vec<u8>,
}

#[derive(Debug, Default)]
struct Seen {
    messages: Vec<GpuMessage>,
    /// What was wrong with the stream, if anything (the server stops there).
    broken: Option<String>,
    /// The features the back-end set.
    set_features: Option<u64>,
}

/// The front-end's end of the vhost-user-gpu socket, served on a thread until dropped.
#[derive(Debug)]
pub struct GpuSocketServer {
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GpuSocketServer {
    /// Serves `ours` (the other end goes to the back-end with GPU_SET_SOCKET).
    ///
    /// # Errors
    /// The socket cannot take a read timeout.
    pub fn serve(ours: UnixStream) -> std::io::Result<Self> {
        ours.set_read_timeout(Some(Duration::from_millis(50)))?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || serve_loop(ours, &s, &st));
        Ok(Self {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// Every message received so far.
    pub fn messages(&self) -> Vec<GpuMessage> {
        self.lock().messages.clone()
    }

    /// Why the stream could not be read on, if it could not.
    pub fn broken(&self) -> Option<String> {
        self.lock().broken.clone()
    }

    /// The protocol features the back-end set (SET_PROTOCOL_FEATURES), if it did.
    pub fn set_features(&self) -> Option<u64> {
        self.lock().set_features
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for GpuSocketServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads exactly `buf.len()` bytes unless stopped; `Ok(false)` at a clean EOF before any byte.
fn read_full(s: &mut UnixStream, buf: &mut [u8], stop: &AtomicBool) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        if stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        match s.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn serve_loop(mut s: UnixStream, seen: &Mutex<Seen>, stop: &AtomicBool) {
    let fail = |why: String| {
        seen.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .broken = Some(why);
    };
    loop {
        let mut h = [0u8; vugpu::HDR_SIZE];
        match read_full(&mut s, &mut h, stop) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => return fail(format!("reading a header: {e}")),
        }
        let hdr = vugpu::Hdr::read_from_bytes(&h).expect("12 bytes");
        if hdr.size > MAX_PAYLOAD {
            return fail(format!("a {}-byte payload announced", hdr.size));
        }
        let mut payload = vec![0u8; hdr.size as usize];
        match read_full(&mut s, &mut payload, stop) {
            Ok(true) => {}
            Ok(false) if hdr.size == 0 => {}
            Ok(false) => return,
            Err(e) => return fail(format!("reading a {}-byte payload: {e}", hdr.size)),
        }
        let reply = answer(&hdr, &payload);
        {
            let mut g = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if hdr.request == vugpu::SET_PROTOCOL_FEATURES {
                g.set_features = payload
                    .get(..8)
                    .map(|b| u64::from_le_bytes(b.try_into().expect("8")));
            }
            g.messages.push(GpuMessage { hdr, payload });
        }
        if let Some(body) = reply {
            let rh = vugpu::Hdr {
                request: hdr.request,
                flags: vugpu::FLAG_REPLY,
                size: body.len() as u32,
            };
            let mut out = rh.as_bytes().to_vec();
            out.extend(body);
            if let Err(e) = s.write_all(&out) {
                return fail(format!("writing a reply: {e}"));
            }
        }
    }
}

/// The reply a request gets, if it gets one (vhost-user-gpu.rst, each request's "reply").
fn answer(hdr: &vugpu::Hdr, payload: &[u8]) -> Option<Vec<u8>> {
    match hdr.request {
        vugpu::GET_PROTOCOL_FEATURES => Some(OFFERED_FEATURES.to_le_bytes().to_vec()),
        vugpu::GET_DISPLAY_INFO => Some(frontend_display_info().as_bytes().to_vec()),
        vugpu::GET_EDID => {
            let scanout = payload
                .get(..4)
                .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4")));
            let mut r = vec![0u8; vugpu::RESP_EDID_SIZE];
            let (t, size) = if scanout == 0 {
                (gpu::RESP_OK_EDID, 128u32)
            } else {
                (gpu::RESP_ERR_UNSPEC + 5, 0)
            };
            r[..4].copy_from_slice(&t.to_le_bytes());
            r[24..28].copy_from_slice(&size.to_le_bytes());
            if size > 0 {
                // An EDID header (00 ff ff ff ff ff ff 00); the rest zero.
                r[32..40].copy_from_slice(&[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
            }
            Some(r)
        }
        vugpu::DMABUF_UPDATE => Some(Vec::new()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(c: &mut UnixStream, request: u32, payload: &[u8]) -> (vugpu::Hdr, Vec<u8>) {
        let h = vugpu::Hdr {
            request,
            flags: 0,
            size: payload.len() as u32,
        };
        c.write_all(h.as_bytes()).unwrap();
        c.write_all(payload).unwrap();
        let mut rh = [0u8; 12];
        c.read_exact(&mut rh).unwrap();
        let rh = vugpu::Hdr::read_from_bytes(&rh).unwrap();
        let mut body = vec![0u8; rh.size as usize];
        c.read_exact(&mut body).unwrap();
        (rh, body)
    }

    #[test]
    fn the_server_answers_features_and_display_info_and_records_the_rest() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let server = GpuSocketServer::serve(ours).unwrap();
        let (h, body) = ask(&mut theirs, vugpu::GET_PROTOCOL_FEATURES, &[]);
        assert_eq!(
            (h.flags, body),
            (vugpu::FLAG_REPLY, OFFERED_FEATURES.to_le_bytes().to_vec())
        );
        let set = vugpu::Hdr {
            request: vugpu::SET_PROTOCOL_FEATURES,
            flags: 0,
            size: 8,
        };
        theirs.write_all(set.as_bytes()).unwrap();
        theirs.write_all(&1u64.to_le_bytes()).unwrap();
        let (_, body) = ask(&mut theirs, vugpu::GET_DISPLAY_INFO, &[]);
        assert_eq!(body.len(), DISPLAY_INFO_SIZE);
        let d = RespDisplayInfo::read_from_bytes(&body).unwrap();
        assert_eq!(
            (d.pmodes[0].enabled, d.pmodes[0].r.width),
            (1, DISPLAY_WIDTH)
        );
        assert_eq!(server.set_features(), Some(1));
        assert_eq!(server.messages().len(), 3);
        assert_eq!(server.broken(), None);
    }
}
