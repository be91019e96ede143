//! The fs and vsock devices of the real `vhu-mock-backend` process, driven over its socket with
//! memfd guest memory and split rings on several queues: `--device fs --shared-dir` on a temp
//! dir, `--device vsock` with a host Unix listener at `<uds>_<port>`, and each device fault
//! mode showing the symptom of the rule it breaks. Messages are built by hand here from the
//! FUSE and virtio-vsock layouts, not with the device's own types.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Backend, Buf, Guest, T, ack, connect, negotiate, start};
use nix::sys::eventfd::{EfdFlags, EventFd};
use vhu_protocol::virtio::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use vhu_protocol::wire::payload::{Body, ConfigHeader, VringAddr, VringState, vring_fd_word};
use vhu_protocol::{Connection, FrontendReq, ProtocolFeatures};

/// Ring size of every queue here.
const QSIZE: u16 = 64;

/// The driver side of split ring `index`, its areas below the buffers [`Guest`] allocates.
struct Vq {
    base: u64,
    _call: EventFd,
    kick: EventFd,
    avail_idx: u16,
    next_desc: u16,
    used_seen: u16,
}

impl Vq {
    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 0x400
    }
    fn used(&self) -> u64 {
        self.base + 0x600
    }

    /// NUM, BASE, ADDR, CALL, KICK and ENABLE of ring `index`, every ack 0.
    fn setup(c: &Connection, index: u32) -> Self {
        let q = Vq {
            base: 0x3000 + 0x1000 * u64::from(index),
            _call: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap(),
            kick: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap(),
            avail_idx: 0,
            next_desc: 0,
            used_seen: 0,
        };
        let state = |num| Body::VringState(VringState { index, num });
        assert_eq!(
            ack(c, FrontendReq::SetVringNum, &state(QSIZE.into()), &[]),
            0
        );
        assert_eq!(ack(c, FrontendReq::SetVringBase, &state(0), &[]), 0);
        let addr = VringAddr {
            index,
            flags: 0,
            desc: common::UA_BASE + q.desc(),
            used: common::UA_BASE + q.used(),
            avail: common::UA_BASE + q.avail(),
            log: 0,
        };
        assert_eq!(
            ack(c, FrontendReq::SetVringAddr, &Body::VringAddr(addr), &[]),
            0
        );
        let word = Body::U64(vring_fd_word(index as u8, false));
        assert_eq!(
            ack(c, FrontendReq::SetVringCall, &word, &[q._call.as_fd()]),
            0
        );
        assert_eq!(
            ack(c, FrontendReq::SetVringKick, &word, &[q.kick.as_fd()]),
            0
        );
        assert_eq!(ack(c, FrontendReq::SetVringEnable, &state(1), &[]), 0);
        q
    }

    /// Writes a chain, makes it available and kicks; its head.
    fn submit(&mut self, g: &Guest, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, &(gpa, len, writable)) in bufs.iter().enumerate() {
            let me = (head + i as u16) % QSIZE;
            let last = i + 1 == bufs.len();
            let flags = if writable { VIRTQ_DESC_F_WRITE } else { 0 }
                | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            let mut d = gpa.to_le_bytes().to_vec();
            d.extend_from_slice(&len.to_le_bytes());
            d.extend_from_slice(&flags.to_le_bytes());
            d.extend_from_slice(&((me + 1) % QSIZE).to_le_bytes());
            g.write(self.desc() + 16 * u64::from(me), &d);
        }
        self.next_desc = (head + bufs.len() as u16) % QSIZE;
        let slot = self.avail() + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        g.write(slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        g.write(self.avail() + 2, &self.avail_idx.to_le_bytes());
        self.kick.write(1).unwrap();
        head
    }

    /// The next used element (id, len) within `T`, or `None`.
    fn next_used(&mut self, g: &Guest) -> Option<(u16, u32)> {
        let deadline = Instant::now() + T;
        loop {
            let idx = u16::from_le_bytes(g.read(self.used() + 2, 2).try_into().unwrap());
            if idx != self.used_seen {
                break;
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let e = g.read(self.used() + 4 + 8 * u64::from(self.used_seen % QSIZE), 8);
        self.used_seen = self.used_seen.wrapping_add(1);
        let id = u32::from_le_bytes(e[..4].try_into().unwrap());
        Some((id as u16, u32::from_le_bytes(e[4..].try_into().unwrap())))
    }

    /// Whether nothing more is used within `wait`.
    fn quiet(&self, g: &Guest, wait: Duration) -> bool {
        std::thread::sleep(wait);
        u16::from_le_bytes(g.read(self.used() + 2, 2).try_into().unwrap()) == self.used_seen
    }
}

/// A started session: features negotiated (REPLY_ACK, CONFIG), the memory table sent.
fn session(be: &Backend) -> (Connection, Guest) {
    let c = connect(&be.sock);
    negotiate(&c, ProtocolFeatures::REPLY_ACK | ProtocolFeatures::CONFIG);
    let g = Guest::new();
    let table = Body::MemTable(vec![g.region()]);
    assert_eq!(
        ack(&c, FrontendReq::SetMemTable, &table, &[g.file.as_fd()]),
        0
    );
    (c, g)
}

fn get_config(c: &Connection, size: u32) -> Vec<u8> {
    let h = ConfigHeader {
        offset: 0,
        size,
        flags: 0,
    };
    let body = Body::Config(h, vec![0; size as usize]);
    c.send_request(FrontendReq::GetConfig as u32, &body, false, &[])
        .unwrap();
    let m = c.recv_reply(FrontendReq::GetConfig as u32).unwrap();
    m.payload[12..].to_vec()
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

// ---- fs ----------------------------------------------------------------------------------

const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_INIT: u32 = 26;
const ENOENT: i32 = 2;
const ENOSYS: i32 = 38;

/// `fuse_in_header` (40 bytes: len, opcode, unique, nodeid, uid, gid, pid, extlen, pad) + body.
fn fuse_req(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let mut r = ((40 + body.len()) as u32).to_le_bytes().to_vec();
    r.extend_from_slice(&opcode.to_le_bytes());
    r.extend_from_slice(&unique.to_le_bytes());
    r.extend_from_slice(&nodeid.to_le_bytes());
    r.extend_from_slice(&[0; 16]);
    r.extend_from_slice(body);
    r
}

/// A FUSE exchange on `q`: the reply (`None` if the chain was not used within T) as
/// (used len, out header len, error, unique, body).
struct Fuse<'a> {
    g: &'a mut Guest,
}

impl Fuse<'_> {
    fn call(&mut self, q: &mut Vq, req: &[u8], room: u32) -> Option<(u32, u32, i32, u64, Vec<u8>)> {
        let rd = self.g.alloc(req.len() as u64);
        self.g.write(rd, req);
        let mut bufs = vec![(rd, req.len() as u32, false)];
        let wr = self.g.alloc(u64::from(room).max(1));
        if room > 0 {
            bufs.push((wr, room, true));
        }
        let head = q.submit(self.g, &bufs);
        let (id, used) = q.next_used(self.g)?;
        assert_eq!(id, head, "R-DEV-03: the used element names the chain");
        let out = self.g.read(wr, used.min(room) as usize);
        if out.len() < 16 {
            return Some((used, 0, 0, 0, Vec::new()));
        }
        let err = u32_at(&out, 4) as i32;
        Some((
            used,
            u32_at(&out, 0),
            err,
            u64_at(&out, 8),
            out[16..].to_vec(),
        ))
    }
}

fn init_body() -> Vec<u8> {
    [7u32, 31, 65536, 0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// A shared dir with one file, the back-end serving it, and a session with INIT done.
fn fs_started(extra: &[&str]) -> (tempfile::TempDir, Backend, Connection, Guest, Vq, Vq) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), b"hello from the host\n").unwrap();
    let mut args = vec![
        "--device",
        "fs",
        "--shared-dir",
        dir.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let be = start(&args);
    let (c, mut g) = session(&be);
    let hiprio = Vq::setup(&c, 0);
    let mut req = Vq::setup(&c, 1);
    let init = fuse_req(FUSE_INIT, 1, 0, &init_body());
    let r = Fuse { g: &mut g }
        .call(&mut req, &init, 256)
        .expect("INIT answered");
    assert_eq!(r.2, 0, "INIT error");
    (dir, be, c, g, hiprio, req)
}

#[test]
fn fs_serves_the_shared_directory() {
    let (_dir, be, c, mut g, mut hiprio, mut q) = fs_started(&[]);
    let cfg = get_config(&c, 40);
    assert_eq!(&cfg[..12], b"vhu-mock-fs\0");
    assert_eq!(u32_at(&cfg, 36), 1, "num_request_queues");
    let mut f = Fuse { g: &mut g };

    let (used, len, err, unique, body) = f
        .call(&mut q, &fuse_req(FUSE_GETATTR, 2, 1, &[0; 16]), 256)
        .unwrap();
    assert_eq!((used, len, err, unique), (120, 120, 0, 2));
    assert_eq!(
        u32_at(&body, 16 + 60) & 0o170_000,
        0o040_000,
        "root is a directory"
    );

    let (used, len, err, unique, body) = f
        .call(&mut q, &fuse_req(FUSE_LOOKUP, 3, 1, b"hello.txt\0"), 256)
        .unwrap();
    assert_eq!((used, len, err, unique), (144, 144, 0, 3));
    let node = u64_at(&body, 0);
    assert_eq!(u64_at(&body, 40 + 8), 20, "size");

    let (_, _, err, _, body) = f
        .call(&mut q, &fuse_req(FUSE_OPEN, 4, node, &[0; 8]), 64)
        .unwrap();
    assert_eq!(err, 0);
    let fh = u64_at(&body, 0);
    let mut read = fh.to_le_bytes().to_vec();
    read.extend_from_slice(&6u64.to_le_bytes());
    read.extend_from_slice(&4096u32.to_le_bytes());
    read.extend_from_slice(&[0; 20]);
    let (used, len, err, _, body) = f
        .call(&mut q, &fuse_req(FUSE_READ, 5, node, &read), 4096)
        .unwrap();
    assert_eq!((used, len, err), (30, 30, 0));
    assert_eq!(body, b"from the host\n");

    let (used, len, err, _, _) = f
        .call(&mut q, &fuse_req(FUSE_LOOKUP, 6, 1, b"missing\0"), 256)
        .unwrap();
    assert_eq!((used, len, err), (16, 16, -ENOENT));
    let (_, _, err, _, _) = f.call(&mut q, &fuse_req(4242, 7, 1, &[]), 256).unwrap();
    assert_eq!(err, -ENOSYS);

    // FORGET on hiprio: no reply, used with 0.
    let forget = fuse_req(FUSE_FORGET, 8, node, &1u64.to_le_bytes());
    assert_eq!(f.call(&mut hiprio, &forget, 0).unwrap().0, 0);
    drop(be);
}

#[test]
fn fs_faults_show_their_symptoms() {
    let lookup_missing = fuse_req(FUSE_LOOKUP, 30, 1, b"missing\0");
    let getattr = fuse_req(FUSE_GETATTR, 31, 1, &[0; 16]);

    let (_d, _be, _c, mut g, _h, mut q) = fs_started(&["--fault", "fs-unique-not-echoed"]);
    let r = Fuse { g: &mut g }.call(&mut q, &getattr, 256).unwrap();
    assert_ne!(r.3, 31, "R-FS-01: unique not echoed");

    let (_d, _be, _c, mut g, _h, mut q) = fs_started(&["--fault", "fs-len-mismatch"]);
    let r = Fuse { g: &mut g }.call(&mut q, &getattr, 256).unwrap();
    assert_ne!(r.0, r.1, "R-FS-01: out header len is not the used length");

    let (_d, _be, _c, mut g, _h, mut q) = fs_started(&["--fault", "fs-positive-errno"]);
    let r = Fuse { g: &mut g }
        .call(&mut q, &lookup_missing, 256)
        .unwrap();
    assert_eq!(r.2, ENOENT, "R-FS-03: +ENOENT");

    let (_d, _be, _c, mut g, mut h, _q) = fs_started(&["--fault", "fs-forget-reply"]);
    let forget = fuse_req(FUSE_FORGET, 32, 2, &1u64.to_le_bytes());
    let r = Fuse { g: &mut g }.call(&mut h, &forget, 0).unwrap();
    assert!(r.0 > 0, "R-FS-06: FORGET used with a length");
}

#[test]
fn device_faults_need_their_device() {
    for (device, fault) in [
        ("blk", "fs-len-mismatch"),
        ("fs", "vsock-no-rst"),
        ("vsock", "fs-forget-reply"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("be.sock");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vhu-mock-backend"))
            .arg("--socket-path")
            .arg(&sock)
            .args(["--device", device, "--fault", fault])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "--device {device} --fault {fault} started"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(fault), "{err}");
    }
}

// ---- vsock -------------------------------------------------------------------------------

const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const GUEST_CID: u64 = 3;
const GPORT: u32 = 50000;

/// `virtio_vsock_hdr` (44 bytes, packed) from the guest to the host, + payload.
fn vsock_pkt(op: u16, port: u32, flags: u32, buf_alloc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = GUEST_CID.to_le_bytes().to_vec();
    p.extend_from_slice(&2u64.to_le_bytes());
    p.extend_from_slice(&GPORT.to_le_bytes());
    p.extend_from_slice(&port.to_le_bytes());
    p.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    p.extend_from_slice(&1u16.to_le_bytes());
    p.extend_from_slice(&op.to_le_bytes());
    p.extend_from_slice(&flags.to_le_bytes());
    p.extend_from_slice(&buf_alloc.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(payload);
    p
}

/// A received packet's fields.
#[derive(Debug)]
struct Rx {
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    op: u16,
    kind: u16,
    buf_alloc: u32,
    payload: Vec<u8>,
}

struct Vsock {
    g: Guest,
    rx: Vq,
    tx: Vq,
    /// rx buffers posted, by head.
    rx_bufs: Vec<(u16, u64)>,
}

impl Vsock {
    fn start(c: &Connection, g: Guest) -> Self {
        let rx = Vq::setup(c, 0);
        let tx = Vq::setup(c, 1);
        let mut v = Vsock {
            g,
            rx,
            tx,
            rx_bufs: Vec::new(),
        };
        for _ in 0..8 {
            v.post_rx();
        }
        v
    }

    fn post_rx(&mut self) {
        let at = self.g.alloc(4096);
        let head = self.rx.submit(&self.g, &[(at, 4096, true)]);
        self.rx_bufs.push((head, at));
    }

    fn send(&mut self, pkt: &[u8]) {
        let at = self.g.alloc(pkt.len() as u64);
        self.g.write(at, pkt);
        self.tx.submit(&self.g, &[(at, pkt.len() as u32, false)]);
        let (_, used) = self.tx.next_used(&self.g).expect("tx chain used");
        assert_eq!(used, 0, "R-DEV-02: tx writes nothing");
    }

    /// The next packet on rx within T.
    fn recv(&mut self) -> Option<Rx> {
        let (id, used) = self.rx.next_used(&self.g)?;
        let i = self
            .rx_bufs
            .iter()
            .position(|b| b.0 == id)
            .expect("used id is a posted buffer");
        let (_, at) = self.rx_bufs.remove(i);
        self.post_rx();
        let b = self.g.read(at, used as usize);
        assert!(b.len() >= 44, "rx packet shorter than a header");
        assert_eq!(used, 44 + u32_at(&b, 24), "R-VSOCK-02: used = 44 + len");
        Some(Rx {
            dst_cid: u64_at(&b, 8),
            src_port: u32_at(&b, 16),
            dst_port: u32_at(&b, 20),
            kind: u16::from_le_bytes(b[28..30].try_into().unwrap()),
            op: u16::from_le_bytes(b[30..32].try_into().unwrap()),
            buf_alloc: u32_at(&b, 36),
            payload: b[44..].to_vec(),
        })
    }
}

fn vsock_started(uds: &Path, extra: &[&str]) -> (Backend, Connection, Vsock) {
    let mut args = vec!["--device", "vsock", "--uds-path", uds.to_str().unwrap()];
    args.extend_from_slice(extra);
    let be = start(&args);
    let (c, g) = session(&be);
    assert_eq!(u64_at(&get_config(&c, 8), 0), GUEST_CID, "guest_cid");
    let v = Vsock::start(&c, g);
    (be, c, v)
}

fn port_path(uds: &Path, port: u32) -> std::path::PathBuf {
    let mut s = uds.as_os_str().to_owned();
    s.push(format!("_{port}"));
    s.into()
}

#[test]
fn vsock_connects_guest_to_host_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let l = UnixListener::bind(port_path(&uds, 5000)).unwrap();
    let (_be, _c, mut v) = vsock_started(&uds, &[]);

    v.send(&vsock_pkt(OP_REQUEST, 5000, 0, 65536, &[]));
    let r = v.recv().expect("an answer to REQUEST");
    assert_eq!(
        (r.op, r.dst_cid, r.src_port, r.dst_port, r.kind),
        (OP_RESPONSE, 3, 5000, GPORT, 1)
    );
    assert!(r.buf_alloc > 0, "buf_alloc announced");
    let (mut host, _) = l.accept().unwrap();
    host.set_read_timeout(Some(T)).unwrap();

    v.send(&vsock_pkt(OP_RW, 5000, 0, 65536, b"ping"));
    let mut b = [0u8; 4];
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");

    host.write_all(b"pong").unwrap();
    let r = v.recv().expect("host data arrives");
    assert_eq!((r.op, r.payload.as_slice()), (OP_RW, &b"pong"[..]));

    // Nobody on 5001: RST.
    v.send(&vsock_pkt(OP_REQUEST, 5001, 0, 65536, &[]));
    let r = v.recv().unwrap();
    assert_eq!((r.op, r.src_port), (OP_RST, 5001));

    // SHUTDOWN both ways: RST, and the host sees the end of the stream.
    v.send(&vsock_pkt(OP_SHUTDOWN, 5000, 3, 65536, &[]));
    assert_eq!(v.recv().unwrap().op, OP_RST);
    assert_eq!(host.read(&mut b).unwrap(), 0);
}

#[test]
fn vsock_host_close_is_a_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let l = UnixListener::bind(port_path(&uds, 6000)).unwrap();
    let (_be, _c, mut v) = vsock_started(&uds, &[]);
    v.send(&vsock_pkt(OP_REQUEST, 6000, 0, 65536, &[]));
    assert_eq!(v.recv().unwrap().op, OP_RESPONSE);
    let (host, _) = l.accept().unwrap();
    drop(host);
    assert_eq!(v.recv().expect("SHUTDOWN").op, OP_SHUTDOWN);
}

#[test]
fn vsock_host_initiated_connect() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let (_be, _c, mut v) = vsock_started(&uds, &[]);
    let mut host = UnixStream::connect(&uds).expect("the back-end listens on the uds path");
    host.set_read_timeout(Some(T)).unwrap();
    host.write_all(b"CONNECT 7000\n").unwrap();
    let r = v.recv().expect("REQUEST to the guest");
    assert_eq!((r.op, r.dst_port), (OP_REQUEST, 7000));
    // The guest (port 7000) accepts.
    let mut resp = vsock_pkt(OP_RESPONSE, r.src_port, 0, 65536, &[]);
    resp[16..20].copy_from_slice(&7000u32.to_le_bytes());
    v.send(&resp);
    let mut line = [0u8; 32];
    let n = host.read(&mut line).unwrap();
    assert_eq!(&line[..n], format!("OK {}\n", r.src_port).as_bytes());
}

#[test]
fn vsock_faults_show_their_symptoms() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");

    let (be, _c, mut v) = vsock_started(&uds, &["--fault", "vsock-no-rst"]);
    v.send(&vsock_pkt(OP_REQUEST, 1, 0, 65536, &[]));
    assert!(
        v.rx.quiet(&v.g, Duration::from_millis(300)),
        "R-VSOCK-01: no RST"
    );
    drop((be, v));

    let (be, _c, mut v) = vsock_started(&uds, &["--fault", "vsock-bad-dst-cid"]);
    v.send(&vsock_pkt(OP_REQUEST, 1, 0, 65536, &[]));
    assert_eq!(v.recv().unwrap().dst_cid, 0, "R-VSOCK-02");
    drop((be, v));

    let l = UnixListener::bind(port_path(&uds, 8000)).unwrap();
    let (_be, _c, mut v) = vsock_started(&uds, &["--fault", "vsock-credit-overrun"]);
    v.send(&vsock_pkt(OP_REQUEST, 8000, 0, 4, &[]));
    assert_eq!(v.recv().unwrap().op, OP_RESPONSE);
    let (mut host, _) = l.accept().unwrap();
    host.write_all(&[7u8; 100]).unwrap();
    let r = v.recv().unwrap();
    assert!(
        r.payload.len() > 4,
        "R-VSOCK-07: {} bytes past a credit of 4",
        r.payload.len()
    );
    let _ = OP_CREDIT_UPDATE;
}

#[test]
fn bad_device_options_fail_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("be.sock");
    for args in [
        &["--device", "fs", "--shared-dir", "/nonexistent/vhu"][..],
        &["--device", "vsock", "--guest-cid", "2"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vhu-mock-backend"))
            .arg("--socket-path")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
    }
}
