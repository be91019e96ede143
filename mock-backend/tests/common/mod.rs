//! Test double of a front-end, written by hand over `vhu_protocol::Connection`: the
//! `vhu-mock-backend` process on a temp socket, one memfd of guest memory, and a split-ring
//! driver that writes descriptors into the memfd itself.

#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use vhu_protocol::virtio::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, blk};
use vhu_protocol::wire::payload::{
    Body, DeviceStateParams, MemRegion, VringAddr, VringState, vring_fd_word,
};
use vhu_protocol::{Connection, FrontendReq, ProtocolFeatures, VirtioFeatures};

/// Every wait of the tests.
pub const T: Duration = Duration::from_secs(2);
/// Guest memory: one region at GPA 0.
pub const MEM_SIZE: u64 = 1 << 20;
/// The front-end's user address of GPA 0 (≠ GPA, so translation is exercised).
pub const UA_BASE: u64 = 0x7f00_0000_0000;
/// Ring size.
pub const QSIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;

/// The back-end process with its socket in a temp dir; killed on drop.
pub struct Backend {
    pub child: Child,
    pub sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `vhu-mock-backend --socket-path TMP ARGS` and waits for the socket.
pub fn start(args: &[&str]) -> Backend {
    start_with(args, Stdio::null())
}

/// As [`start`], with the process's stderr piped (read it with [`stderr_of`]).
pub fn start_piped(args: &[&str]) -> Backend {
    start_with(args, Stdio::piped())
}

fn start_with(args: &[&str], stderr: Stdio) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("be.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_vhu-mock-backend"))
        .arg("--socket-path")
        .arg(&sock)
        .args(args)
        .stderr(stderr)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    Backend {
        child,
        sock,
        _dir: dir,
    }
}

/// Waits (up to `T`) for the process to end; its status, or None if it still runs.
pub fn wait_exit(be: &mut Backend) -> Option<ExitStatus> {
    let deadline = Instant::now() + T;
    loop {
        if let Some(s) = be.child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Everything a [`start_piped`] process wrote on stderr: killed first if it still runs.
pub fn stderr_of(be: &mut Backend) -> String {
    let _ = be.child.kill();
    let _ = be.child.wait();
    let mut text = String::new();
    if let Some(mut err) = be.child.stderr.take() {
        err.read_to_string(&mut text).unwrap();
    }
    text
}

/// Whether the back-end closed `c` (a read sees the end of the stream, not a timeout).
pub fn closed(c: &Connection) -> bool {
    match c.recv_unchecked() {
        Ok(m) => panic!("expected the connection closed, got {:?}", m.header),
        Err(e) => e.is_peer_gone(),
    }
}

/// A connection to `path`. Refusals are retried for a moment: the socket file appears at
/// bind(), just before the back-end listens.
pub fn connect(path: &Path) -> Connection {
    let deadline = Instant::now() + T;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Connection::new(s, Some(T)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                assert!(Instant::now() < deadline, "connection refused: {e}");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
}

/// Sends an ack-only request with NEED_REPLY and returns the ack.
pub fn ack(c: &Connection, req: FrontendReq, body: &Body, fds: &[BorrowedFd<'_>]) -> u64 {
    c.send_request(req as u32, body, true, fds).unwrap();
    c.recv_reply(req as u32).unwrap().u64().unwrap()
}

/// Sends a request that is always answered and returns the reply's u64.
pub fn get_u64(c: &Connection, req: FrontendReq) -> u64 {
    c.send_request(req as u32, &Body::Empty, false, &[])
        .unwrap();
    c.recv_reply(req as u32).unwrap().u64().unwrap()
}

/// Negotiates bit 30 + VERSION_1 and `protocol` (REPLY_ACK should be among them); the protocol
/// features the back-end offered.
pub fn negotiate(c: &Connection, protocol: ProtocolFeatures) -> u64 {
    let offered = get_u64(c, FrontendReq::GetFeatures);
    let want = (VirtioFeatures::PROTOCOL_FEATURES | VirtioFeatures::VERSION_1).bits();
    assert_eq!(offered & want, want);
    let offered_protocol = get_u64(c, FrontendReq::GetProtocolFeatures);
    c.send_request(
        FrontendReq::SetProtocolFeatures as u32,
        &Body::U64(protocol.bits()),
        false,
        &[],
    )
    .unwrap();
    assert_eq!(ack(c, FrontendReq::SetFeatures, &Body::U64(want), &[]), 0);
    offered_protocol
}

/// GET_VRING_BASE of ring `index`: the base it answers.
pub fn get_vring_base(c: &Connection, index: u32) -> u32 {
    let q = Body::VringState(VringState { index, num: 0 });
    c.send_request(FrontendReq::GetVringBase as u32, &q, false, &[])
        .unwrap();
    let m = c.recv_reply(FrontendReq::GetVringBase as u32).unwrap();
    u32::from_ne_bytes(m.payload[4..8].try_into().unwrap())
}

/// SET_DEVICE_STATE_FD with `direction` (0 save, 1 load), phase 0 (stopped) and `fd`: the
/// reply's u64 (0x100 is success with no fd returned).
pub fn set_device_state_fd(c: &Connection, direction: u32, fd: BorrowedFd<'_>) -> Option<u64> {
    let body = Body::DeviceState(DeviceStateParams {
        direction,
        phase: 0,
    });
    c.send_request(FrontendReq::SetDeviceStateFd as u32, &body, false, &[fd])
        .unwrap();
    c.recv_reply(FrontendReq::SetDeviceStateFd as u32)
        .unwrap()
        .u64()
}

/// CHECK_DEVICE_STATE: 0 when the transfer succeeded.
pub fn check_device_state(c: &Connection) -> u64 {
    get_u64(c, FrontendReq::CheckDeviceState)
}

/// One memfd of guest memory, written and read with pwrite/pread (the back-end maps the same
/// pages).
pub struct Guest {
    pub file: File,
    next: u64,
}

impl Guest {
    pub fn new() -> Self {
        let m = memfd::MemfdOptions::default().create("guest").unwrap();
        m.as_file().set_len(MEM_SIZE).unwrap();
        Self {
            file: m.into_file(),
            next: 0x10000,
        }
    }

    pub fn region(&self) -> MemRegion {
        MemRegion {
            guest_addr: 0,
            size: MEM_SIZE,
            user_addr: UA_BASE,
            mmap_offset: 0,
        }
    }

    pub fn write(&self, gpa: u64, data: &[u8]) {
        self.file.write_all_at(data, gpa).unwrap();
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        self.file.read_exact_at(&mut b, gpa).unwrap();
        b
    }

    fn u16_at(&self, gpa: u64) -> u16 {
        u16::from_le_bytes(self.read(gpa, 2).try_into().unwrap())
    }

    /// Ring 0's avail and used indices (split layout) both set to `base`: the ring as a driver
    /// that ran up to `base` left it (a ring resumed elsewhere, e.g. after a migration).
    pub fn set_ring_indices(&self, base: u16) {
        self.write(AVAIL + 2, &base.to_le_bytes());
        self.write(USED + 2, &base.to_le_bytes());
    }

    /// Where the next buffer will be allocated.
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// A fresh buffer of `len` bytes (never reused).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next;
        self.next = (at + len).next_multiple_of(64);
        at
    }
}

/// The driver side of ring 0.
pub struct Ring {
    pub call: EventFd,
    pub kick: EventFd,
    avail_idx: u16,
    next_desc: u16,
}

/// SET_MEM_TABLE, then ring 0 set up (NUM, BASE, ADDR, CALL, KICK, ENABLE), every ack 0.
pub fn setup_ring(c: &Connection, g: &Guest) -> Ring {
    let r = prepare_ring(c, g);
    r.start(c);
    r
}

/// SET_MEM_TABLE, then ring 0's NUM, BASE, ADDR and CALL: everything but starting it.
pub fn prepare_ring(c: &Connection, g: &Guest) -> Ring {
    prepare_ring_at(c, g, 0, 0)
}

/// As [`prepare_ring`], from avail index `base` with the next free descriptor `next_desc`.
pub fn prepare_ring_at(c: &Connection, g: &Guest, base: u16, next_desc: u16) -> Ring {
    prepare_ring_acked(c, g, base, next_desc, true)
}

/// As [`setup_ring`] without REPLY_ACK: every request sent without NEED_REPLY, none answered
/// (the data path shows whether the setup worked).
pub fn setup_ring_unacked(c: &Connection, g: &Guest) -> Ring {
    let r = prepare_ring_acked(c, g, 0, 0, false);
    let word = Body::U64(vring_fd_word(0, false));
    step(
        c,
        FrontendReq::SetVringKick,
        &word,
        &[r.kick.as_fd()],
        false,
    );
    let on = Body::VringState(VringState { index: 0, num: 1 });
    step(c, FrontendReq::SetVringEnable, &on, &[], false);
    r
}

/// An ack-only request: acked 0 with NEED_REPLY when `acked`, else sent without NEED_REPLY.
pub fn step(c: &Connection, req: FrontendReq, body: &Body, fds: &[BorrowedFd<'_>], acked: bool) {
    if acked {
        assert_eq!(ack(c, req, body, fds), 0, "{req:?}");
    } else {
        c.send_request(req as u32, body, false, fds).unwrap();
    }
}

fn prepare_ring_acked(c: &Connection, g: &Guest, base: u16, next_desc: u16, acked: bool) -> Ring {
    let fd = g.file.as_fd();
    let table = Body::MemTable(vec![g.region()]);
    step(c, FrontendReq::SetMemTable, &table, &[fd], acked);
    let state = |num| Body::VringState(VringState { index: 0, num });
    step(
        c,
        FrontendReq::SetVringNum,
        &state(QSIZE.into()),
        &[],
        acked,
    );
    step(
        c,
        FrontendReq::SetVringBase,
        &state(base.into()),
        &[],
        acked,
    );
    let addr = VringAddr {
        index: 0,
        flags: 0,
        desc: UA_BASE + DESC,
        used: UA_BASE + USED,
        avail: UA_BASE + AVAIL,
        log: 0,
    };
    step(
        c,
        FrontendReq::SetVringAddr,
        &Body::VringAddr(addr),
        &[],
        acked,
    );
    let ring = Ring {
        call: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap(),
        kick: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap(),
        avail_idx: base,
        next_desc,
    };
    let word = Body::U64(vring_fd_word(0, false));
    step(
        c,
        FrontendReq::SetVringCall,
        &word,
        &[ring.call.as_fd()],
        acked,
    );
    ring
}

/// One buffer of a chain: guest address, length, device-writable.
pub type Buf = (u64, u32, bool);

/// The driver side of a ring of either layout.
pub trait Driver {
    /// Writes a chain and makes it available; does not kick.
    fn submit_chain(&mut self, g: &Guest, bufs: &[Buf]);
    /// Writes the kick eventfd.
    fn kick_fd(&self);
    /// Waits for the last chain's completion; its used length.
    fn wait(&self, g: &Guest) -> Option<u32>;
}

impl Driver for Ring {
    fn submit_chain(&mut self, g: &Guest, bufs: &[Buf]) {
        self.submit(g, bufs);
    }
    fn kick_fd(&self) {
        self.kick();
    }
    fn wait(&self, g: &Guest) -> Option<u32> {
        self.wait_used(g)
    }
}

/// The driver side of packed ring 0 (virtio 2.8), descriptors at GPA 0, event areas zeroed
/// (notifications enabled).
pub struct PackedDriver {
    pub call: EventFd,
    pub kick: EventFd,
    next: u16,
    wrap: bool,
    last_head: Option<(u16, bool)>,
}

/// Negotiates bit 30 + VERSION_1 + RING_PACKED, then sets up packed ring 0 from base
/// 0x8000_8000 (both wrap counters 1) and starts it.
pub fn setup_packed(c: &Connection, g: &Guest, protocol: ProtocolFeatures) -> PackedDriver {
    get_u64(c, FrontendReq::GetFeatures);
    let p = Body::U64(protocol.bits());
    c.send_request(FrontendReq::SetProtocolFeatures as u32, &p, false, &[])
        .unwrap();
    let f =
        VirtioFeatures::PROTOCOL_FEATURES | VirtioFeatures::VERSION_1 | VirtioFeatures::RING_PACKED;
    assert_eq!(
        ack(c, FrontendReq::SetFeatures, &Body::U64(f.bits()), &[]),
        0
    );
    assert_eq!(
        ack(
            c,
            FrontendReq::SetMemTable,
            &Body::MemTable(vec![g.region()]),
            &[g.file.as_fd()]
        ),
        0
    );
    let state = |num| Body::VringState(VringState { index: 0, num });
    assert_eq!(
        ack(c, FrontendReq::SetVringNum, &state(QSIZE.into()), &[]),
        0
    );
    assert_eq!(
        ack(c, FrontendReq::SetVringBase, &state(0x8000_8000), &[]),
        0
    );
    let addr = VringAddr {
        index: 0,
        flags: 0,
        desc: UA_BASE + DESC,
        used: UA_BASE + USED,
        avail: UA_BASE + AVAIL,
        log: 0,
    };
    assert_eq!(
        ack(c, FrontendReq::SetVringAddr, &Body::VringAddr(addr), &[]),
        0
    );
    let d = PackedDriver {
        call: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap(),
        kick: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap(),
        next: 0,
        wrap: true,
        last_head: None,
    };
    let word = Body::U64(vring_fd_word(0, false));
    assert_eq!(
        ack(c, FrontendReq::SetVringCall, &word, &[d.call.as_fd()]),
        0
    );
    assert_eq!(
        ack(c, FrontendReq::SetVringKick, &word, &[d.kick.as_fd()]),
        0
    );
    assert_eq!(ack(c, FrontendReq::SetVringEnable, &state(1), &[]), 0);
    d
}

const F_AVAIL: u16 = 1 << 7;
const F_USED: u16 = 1 << 15;

impl Driver for PackedDriver {
    fn submit_chain(&mut self, g: &Guest, bufs: &[Buf]) {
        let head = (self.next, self.wrap);
        let mut head_flags = 0;
        for (i, &(gpa, len, writable)) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let flags = if writable { VIRTQ_DESC_F_WRITE } else { 0 }
                | if last { 0 } else { VIRTQ_DESC_F_NEXT }
                | if self.wrap { F_AVAIL } else { F_USED };
            let mut d = gpa.to_le_bytes().to_vec();
            d.extend_from_slice(&len.to_le_bytes());
            d.extend_from_slice(&head.0.to_le_bytes());
            let at = DESC + 16 * u64::from(self.next);
            if i == 0 {
                head_flags = flags;
                g.write(at, &d);
            } else {
                d.extend_from_slice(&flags.to_le_bytes());
                g.write(at, &d);
            }
            self.next += 1;
            if self.next == QSIZE {
                self.next = 0;
                self.wrap = !self.wrap;
            }
        }
        // The head's flags last: the chain becomes available at once.
        g.write(
            DESC + 16 * u64::from(head.0) + 14,
            &head_flags.to_le_bytes(),
        );
        self.last_head = Some(head);
    }

    fn kick_fd(&self) {
        self.kick.write(1).unwrap();
    }

    fn wait(&self, g: &Guest) -> Option<u32> {
        let (slot, wrap) = self.last_head?;
        let at = DESC + 16 * u64::from(slot);
        let deadline = Instant::now() + T;
        loop {
            let flags = g.u16_at(at + 14);
            if (flags & F_AVAIL != 0) == wrap && (flags & F_USED != 0) == wrap {
                return Some(u32::from_le_bytes(g.read(at + 8, 4).try_into().unwrap()));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Ring {
    /// SET_VRING_KICK then SET_VRING_ENABLE(1), both acked 0.
    pub fn start(&self, c: &Connection) {
        let word = Body::U64(vring_fd_word(0, false));
        assert_eq!(
            ack(c, FrontendReq::SetVringKick, &word, &[self.kick.as_fd()]),
            0
        );
        let on = Body::VringState(VringState { index: 0, num: 1 });
        assert_eq!(ack(c, FrontendReq::SetVringEnable, &on, &[]), 0);
    }

    /// Writes the chain's descriptors and makes it available; does not kick.
    pub fn submit(&mut self, g: &Guest, bufs: &[Buf]) -> u16 {
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
            g.write(DESC + 16 * u64::from(me), &d);
        }
        self.next_desc = (head + bufs.len() as u16) % QSIZE;
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        g.write(slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        g.write(AVAIL + 2, &self.avail_idx.to_le_bytes());
        head
    }

    pub fn kick(&self) {
        self.kick.write(1).unwrap();
    }

    /// Waits until the used index reaches the avail index; the used element's length.
    pub fn wait_used(&self, g: &Guest) -> Option<u32> {
        let deadline = Instant::now() + T;
        while g.u16_at(USED + 2) != self.avail_idx {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let i = u64::from(self.avail_idx.wrapping_sub(1) % QSIZE);
        Some(u32::from_le_bytes(
            g.read(USED + 4 + 8 * i + 4, 4).try_into().unwrap(),
        ))
    }

    /// The used index the back-end wrote.
    pub fn used_idx(&self, g: &Guest) -> u16 {
        g.u16_at(USED + 2)
    }

    /// Whether the call eventfd fires within `T` (and drains it).
    pub fn called(&self) -> bool {
        let mut fds = [PollFd::new(self.call.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::try_from(T).unwrap();
        let ready = poll(&mut fds, ms).unwrap() == 1;
        if ready {
            let _ = self.call.read();
        }
        ready
    }
}

/// The 16-byte virtio-blk request header.
pub fn blk_header(kind: u32, sector: u64) -> Vec<u8> {
    [&kind.to_le_bytes()[..], &[0; 4], &sector.to_le_bytes()].concat()
}

/// A virtio-blk request: header, optional data buffer, status; returns (status, used length).
pub fn blk_request(
    g: &mut Guest,
    r: &mut impl Driver,
    kind: u32,
    sector: u64,
    data: Option<(&[u8], bool)>,
) -> (u8, Option<u32>) {
    let hdr = g.alloc(16);
    g.write(hdr, &blk_header(kind, sector));
    let mut bufs = vec![(hdr, 16, false)];
    if let Some((bytes, writable)) = data {
        let at = g.alloc(bytes.len() as u64);
        g.write(at, bytes);
        bufs.push((at, bytes.len() as u32, writable));
    }
    let status = g.alloc(1);
    g.write(status, &[0xff]);
    bufs.push((status, 1, true));
    r.submit_chain(g, &bufs);
    r.kick_fd();
    let used = r.wait(g);
    (g.read(status, 1)[0], used)
}

/// Reads `len` bytes at `sector`; (status, data).
pub fn blk_read(g: &mut Guest, r: &mut impl Driver, sector: u64, len: usize) -> (u8, Vec<u8>) {
    let buf = vec![0u8; len];
    let hdr_next = g.next;
    let (status, _) = blk_request(g, r, blk::T_IN, sector, Some((&buf, true)));
    (status, g.read(hdr_next + 64, len))
}

/// The fds of `pid` whose link names a memfd called `name`.
pub fn memfds(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().contains(&format!("memfd:{name}")))
        .count()
}
