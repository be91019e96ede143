//! The driver side of virtio-vsock (virtio 1.2 section 5.10): packets ([`vsock::Hdr`] and
//! payload) sent on the tx queue, receive buffers posted on the rx queue and parsed when the
//! device uses them, a small connection state machine keeping the driver's credit (buf_alloc,
//! fwd_cnt) and the peer's, and a host-side Unix listener for hybrid vsock (a guest connection to
//! host port P reaches the Unix socket `<uds>_P`). Facts only: the engine judges them.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhu_protocol::virtio::vsock::{self, HDR_SIZE, Hdr};
use zerocopy::{FromBytes, IntoBytes};

use crate::exchange::{self, ChainSpec, Exchanged, Submitted};
use crate::memory::GuestMemory;
use crate::vring::{DriverQueue, WaitError};

/// A packet: header and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The header.
    pub hdr: Hdr,
    /// The payload (`hdr.len` bytes when well formed).
    pub payload: Vec<u8>,
}

impl Packet {
    /// The tx chain: the header in one readable descriptor and the payload, if any, in another
    /// (or both in one, `split = false`).
    pub fn chain(&self, split: bool, indirect: bool) -> ChainSpec {
        let hdr = self.hdr.as_bytes().to_vec();
        let readable = if self.payload.is_empty() {
            vec![hdr]
        } else if split {
            vec![hdr, self.payload.clone()]
        } else {
            vec![[hdr, self.payload.clone()].concat()]
        };
        ChainSpec {
            readable,
            writable: vec![],
            indirect,
        }
    }
}

/// A packet the device put in an rx buffer.
#[derive(Clone, Debug)]
pub struct Received {
    /// The ring-level facts.
    pub ring: Exchanged,
    /// The header, when the used length covers one.
    pub hdr: Option<Hdr>,
    /// The bytes after the header, cut at the used length.
    pub payload: Vec<u8>,
    /// Whether the device owed a notification for this buffer: it was used after the driver
    /// asked for a call at exactly its used-ring position (used_event with EVENT_IDX, flags 0
    /// without), rather than before, when a call may have covered a batch (split rings only;
    /// on packed rings `false`).
    pub notification_due: bool,
    /// Whether a call arrived while the driver waited for this buffer.
    pub notified_now: bool,
}

impl Received {
    fn parse(ring: Exchanged) -> Self {
        let reply = ring.reply();
        let hdr = Hdr::read_from_prefix(&reply).ok().map(|(h, _)| h);
        let payload = reply.get(HDR_SIZE..).unwrap_or_default().to_vec();
        Self {
            ring,
            hdr,
            payload,
            notification_due: false,
            notified_now: false,
        }
    }
}

/// Receive buffers posted on the rx queue: each one device-writable chain of `size` bytes
/// (header and payload in one buffer, as Linux 6.2+ posts them; `split` puts the header in its
/// own 44-byte descriptor first). A used buffer is replaced by a fresh one.
#[derive(Debug)]
pub struct RxPool {
    pending: Vec<Submitted>,
    /// Split rings: the used-ring index of the next buffer to collect.
    next_used: Option<u16>,
    size: u32,
    split: bool,
    indirect: bool,
}

impl RxPool {
    /// An empty pool of buffers of `size` bytes.
    pub fn new(size: u32, split: bool, indirect: bool) -> Self {
        Self {
            pending: Vec::new(),
            next_used: None,
            size: size.max(HDR_SIZE as u32 + 1),
            split,
            indirect,
        }
    }

    fn spec(&self) -> ChainSpec {
        let writable = if self.split {
            vec![HDR_SIZE as u32, self.size - HDR_SIZE as u32]
        } else {
            vec![self.size]
        };
        ChainSpec {
            readable: vec![],
            writable,
            indirect: self.indirect,
        }
    }

    /// Posts `n` more buffers (their memory stays allocated for the session).
    ///
    /// # Errors
    /// Guest memory or the ring is full.
    pub fn post(
        &mut self,
        q: &mut DriverQueue,
        mem: &mut GuestMemory,
        n: usize,
    ) -> Result<(), WaitError> {
        if self.next_used.is_none() && q.layout() == crate::vring::RingLayout::Split {
            self.next_used = Some(q.used_idx(mem));
        }
        let specs = vec![self.spec(); n];
        let mut subs = exchange::submit_batch(q, mem, &specs)?;
        self.pending.append(&mut subs);
        Ok(())
    }

    /// Buffers posted and not yet used.
    pub fn posted(&self) -> usize {
        self.pending.len()
    }

    /// Waits up to `timeout` for the device to use one buffer; `Ok(None)` when none was used.
    /// The used buffer is replaced.
    ///
    /// # Errors
    /// Guest memory or the ring failed, or the used element named no posted buffer.
    pub fn recv(
        &mut self,
        q: &mut DriverQueue,
        mem: &mut GuestMemory,
        timeout: Duration,
    ) -> Result<Option<Received>, WaitError> {
        // Ask for a call at the next used position (publish refreshes used_event), and see
        // whether the device already went past it.
        q.publish(mem)?;
        let due = self.next_used.is_some_and(|n| q.used_idx(mem) == n);
        let calls = q.calls;
        match exchange::wait(q, mem, &mut self.pending, 1, timeout) {
            Ok(mut v) => {
                let x = v.remove(0);
                self.next_used = self.next_used.map(|n| n.wrapping_add(1));
                let notified_now = q.calls > calls;
                self.post(q, mem, 1)?;
                let mut r = Received::parse(x);
                r.notification_due = due;
                r.notified_now = notified_now;
                Ok(Some(r))
            }
            Err(WaitError::Timeout { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Sends one packet on the tx queue and waits for its chain to be used (its memory is given
/// back before returning).
///
/// # Errors
/// Guest memory or the ring is full, or the device did not use the chain in time.
pub fn send(
    q: &mut DriverQueue,
    mem: &mut GuestMemory,
    chain: &ChainSpec,
    timeout: Duration,
) -> Result<Exchanged, WaitError> {
    let mark = mem.mark();
    let r = exchange::exchange(q, mem, chain, timeout);
    mem.release(mark);
    r
}

/// The driver's view of one stream connection: addresses, and the credit of both sides
/// (virtio 1.2 5.10.6.3: a sender may have at most `peer buf_alloc - (tx_cnt - peer fwd_cnt)`
/// bytes unread at the peer).
#[derive(Clone, Debug)]
pub struct Conn {
    /// The guest's CID.
    pub guest_cid: u64,
    /// The peer's CID.
    pub peer_cid: u64,
    /// The guest's port.
    pub local_port: u32,
    /// The peer's port.
    pub peer_port: u32,
    /// The receive buffer space the driver announces.
    pub buf_alloc: u32,
    /// Payload bytes the driver consumed (announced as fwd_cnt).
    pub fwd_cnt: u32,
    /// Payload bytes received.
    pub rx_cnt: u32,
    /// Payload bytes sent.
    pub tx_cnt: u32,
    /// The peer's buf_alloc as last seen.
    pub peer_buf_alloc: u32,
    /// The peer's fwd_cnt as last seen.
    pub peer_fwd_cnt: u32,
    /// fwd_cnt as last announced to the peer (what bounds its sending).
    pub announced_fwd_cnt: u32,
    /// buf_alloc as last announced to the peer.
    pub announced_buf_alloc: u32,
}

impl Conn {
    /// A connection from guest port `local_port` to `peer_cid:peer_port`, announcing
    /// `buf_alloc` bytes of receive space.
    pub fn new(
        guest_cid: u64,
        peer_cid: u64,
        local_port: u32,
        peer_port: u32,
        buf_alloc: u32,
    ) -> Self {
        Self {
            guest_cid,
            peer_cid,
            local_port,
            peer_port,
            buf_alloc,
            fwd_cnt: 0,
            rx_cnt: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            announced_fwd_cnt: 0,
            announced_buf_alloc: buf_alloc,
        }
    }

    /// A packet of this connection with `op`, carrying the driver's credit.
    pub fn packet(&mut self, op: u16, flags: u32, payload: Vec<u8>) -> Packet {
        self.announced_fwd_cnt = self.fwd_cnt;
        self.announced_buf_alloc = self.buf_alloc;
        Packet {
            hdr: Hdr {
                src_cid: self.guest_cid,
                dst_cid: self.peer_cid,
                src_port: self.local_port,
                dst_port: self.peer_port,
                len: payload.len() as u32,
                type_: vsock::TYPE_STREAM,
                op,
                flags,
                buf_alloc: self.buf_alloc,
                fwd_cnt: self.fwd_cnt,
            },
            payload,
        }
    }

    /// An RW packet; counts its bytes as sent.
    pub fn rw(&mut self, data: Vec<u8>) -> Packet {
        self.tx_cnt = self.tx_cnt.wrapping_add(data.len() as u32);
        self.packet(vsock::OP_RW, 0, data)
    }

    /// Bytes the driver may still send (the peer's credit).
    pub fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Bytes the device may still send: what the driver last announced, minus what arrived
    /// since (negative when the device sent more).
    pub fn own_credit(&self) -> i64 {
        i64::from(self.announced_buf_alloc)
            - i64::from(self.rx_cnt.wrapping_sub(self.announced_fwd_cnt))
    }

    /// Takes a packet of this connection into account: the peer's credit fields, and its payload
    /// as received (and consumed at once: the harness reads everything it receives).
    pub fn on_packet(&mut self, hdr: &Hdr, payload_len: u32) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        if hdr.op == vsock::OP_RW {
            self.rx_cnt = self.rx_cnt.wrapping_add(payload_len);
            self.fwd_cnt = self.fwd_cnt.wrapping_add(payload_len);
        }
    }

    /// Whether `hdr` belongs to this connection (addresses swapped).
    pub fn owns(&self, hdr: &Hdr) -> bool {
        let (sp, dp) = (hdr.src_port, hdr.dst_port);
        sp == self.peer_port && dp == self.local_port
    }
}

/// What a host-side listener does with each connection it accepts.
#[derive(Clone, Debug)]
pub enum HostBehaviour {
    /// Writes back everything it reads.
    Echo,
    /// Writes these bytes first, then echoes.
    SendThenEcho(Vec<u8>),
}

#[derive(Debug, Default)]
struct HostLog {
    accepted: usize,
    received: Vec<u8>,
    errors: Vec<String>,
}

/// A Unix listener at `<uds>_<port>`: where a hybrid-vsock back-end connects a guest's
/// connection to host port `port`. It runs on its own thread until dropped.
#[derive(Debug)]
pub struct HostListener {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<HostLog>>,
    thread: Option<JoinHandle<()>>,
}

impl HostListener {
    /// Binds `path` (replacing a stale socket file) and serves it with `behaviour`.
    ///
    /// # Errors
    /// The socket cannot be bound.
    pub fn bind(path: &Path, behaviour: HostBehaviour) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path)?;
        l.set_nonblocking(true)?;
        Ok(Self::start(Some(l), None, behaviour, path.to_path_buf()))
    }

    /// Serves one connection the host side made itself (a host-initiated hybrid vsock
    /// connection), with `behaviour`, as if it had been accepted.
    ///
    /// # Errors
    /// The stream cannot be made non-blocking.
    pub fn adopt(stream: UnixStream, behaviour: HostBehaviour) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self::start(None, Some(stream), behaviour, PathBuf::new()))
    }

    fn start(
        l: Option<UnixListener>,
        first: Option<UnixStream>,
        behaviour: HostBehaviour,
        path: PathBuf,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(HostLog::default()));
        let (s, lg) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || serve(l.as_ref(), first, &behaviour, &s, &lg));
        Self {
            path,
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.log.lock().map(|l| l.accepted).unwrap_or(0)
    }

    /// Every byte read from the connections so far.
    pub fn received(&self) -> Vec<u8> {
        self.log
            .lock()
            .map(|l| l.received.clone())
            .unwrap_or_default()
    }

    /// I/O errors seen on the connections.
    pub fn errors(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.errors.clone())
            .unwrap_or_default()
    }

    /// Waits up to `timeout` until at least `n` bytes were read.
    pub fn wait_received(&self, n: usize, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() >= deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A host-side connection to a hybrid vsock back-end's own socket, asking it to connect to
/// guest port `port` (the Firecracker convention: `CONNECT <port>\n`, answered `OK <host
/// port>\n` once the guest accepted).
///
/// # Errors
/// The socket cannot be reached or written.
pub fn host_connect(uds: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    Ok(s)
}

/// Reads one `\n`-terminated line from `s` within `timeout` (byte by byte, so nothing after
/// it is consumed); `None` when none came.
pub fn read_line(s: &mut UnixStream, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while Instant::now() < deadline && line.len() < 256 {
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = s.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => return Some(String::from_utf8_lossy(&line).into_owned()),
            Ok(1) => line.push(b[0]),
            _ => return None,
        }
    }
    None
}

fn serve(
    l: Option<&UnixListener>,
    first: Option<UnixStream>,
    behaviour: &HostBehaviour,
    stop: &AtomicBool,
    log: &Mutex<HostLog>,
) {
    let owed = || match behaviour {
        HostBehaviour::Echo => Vec::new(),
        HostBehaviour::SendThenEcho(b) => b.clone(),
    };
    let mut conns: Vec<(UnixStream, Vec<u8>)> = first.into_iter().map(|s| (s, owed())).collect();
    let note = |e: String| {
        if let Ok(mut g) = log.lock() {
            g.errors.push(e);
        }
    };
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok((s, _))) = l.map(UnixListener::accept) {
            let _ = s.set_nonblocking(true);
            if let Ok(mut g) = log.lock() {
                g.accepted += 1;
            }
            conns.push((s, owed()));
        }
        let mut buf = [0u8; 8192];
        for (s, out) in &mut conns {
            // Flush what is owed (a hybrid back-end may accept less at once than is written).
            while !out.is_empty() {
                match s.write(out) {
                    Ok(0) => break,
                    Ok(n) => {
                        out.drain(..n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        note(format!("write: {e}"));
                        out.clear();
                    }
                }
            }
            match s.read(&mut buf) {
                Ok(n) if n > 0 => {
                    if let Ok(mut g) = log.lock() {
                        g.received.extend_from_slice(&buf[..n]);
                    }
                    out.extend_from_slice(&buf[..n]);
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => note(format!("read: {e}")),
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
