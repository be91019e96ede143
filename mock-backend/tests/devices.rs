//! `vhu-mock-backend --device net|rng` over a real socket and memfd, driven by hand: a frame
//! sent on transmitq0 comes back on receiveq0 byte for byte, control commands are acked, rng
//! fills its buffers with bytes that differ request to request; `--print-capabilities` names
//! each device's type, and a device's fault mode is refused with another device.

mod common;

use std::os::fd::AsFd;
use std::process::Command;
use std::time::Instant;

use common::{Backend, Guest, QSIZE, T, UA_BASE, ack, connect, get_u64, start};
use nix::sys::eventfd::{EfdFlags, EventFd};
use vhu_protocol::virtio::{VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use vhu_protocol::wire::payload::{Body, ConfigHeader, VringAddr, VringState, vring_fd_word};
use vhu_protocol::{Connection, FrontendReq, ProtocolFeatures, VirtioFeatures};

/// Where queue `q`'s split ring lives (well above the buffers `Guest::alloc` hands out).
fn ring_base(q: u32) -> u64 {
    0xC0000 + 0x4000 * u64::from(q)
}

/// net feature bits (virtio 1.2 5.1.3), written here from the spec.
const NET_F_CTRL_VQ: u64 = 1 << 17;
const NET_F_CTRL_RX: u64 = 1 << 18;
const NET_F_MRG_RXBUF: u64 = 1 << 15;
const NET_F_MAC: u64 = 1 << 5;
const NET_F_MTU: u64 = 1 << 3;
const NET_F_STATUS: u64 = 1 << 16;

/// The driver side of one split ring of any index.
struct Queue {
    index: u32,
    call: EventFd,
    kick: EventFd,
    avail_idx: u16,
    next_desc: u16,
}

impl Queue {
    /// NUM, BASE, ADDR, CALL, KICK and ENABLE for ring `index`, every ack 0.
    fn setup(c: &Connection, index: u32) -> Self {
        let state = |num| Body::VringState(VringState { index, num });
        assert_eq!(
            ack(c, FrontendReq::SetVringNum, &state(QSIZE.into()), &[]),
            0
        );
        assert_eq!(ack(c, FrontendReq::SetVringBase, &state(0), &[]), 0);
        let base = UA_BASE + ring_base(index);
        let addr = VringAddr {
            index,
            flags: 0,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            log: 0,
        };
        assert_eq!(
            ack(c, FrontendReq::SetVringAddr, &Body::VringAddr(addr), &[]),
            0
        );
        let q = Self {
            index,
            call: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap(),
            kick: EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).unwrap(),
            avail_idx: 0,
            next_desc: 0,
        };
        let word = Body::U64(vring_fd_word(index as u8, false));
        assert_eq!(
            ack(c, FrontendReq::SetVringCall, &word, &[q.call.as_fd()]),
            0
        );
        assert_eq!(
            ack(c, FrontendReq::SetVringKick, &word, &[q.kick.as_fd()]),
            0
        );
        assert_eq!(ack(c, FrontendReq::SetVringEnable, &state(1), &[]), 0);
        q
    }

    /// Makes the chain `bufs` (gpa, len, writable) available and kicks.
    fn submit(&mut self, g: &Guest, bufs: &[(u64, u32, bool)]) {
        let ring = ring_base(self.index);
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
            g.write(ring + 16 * u64::from(me), &d);
        }
        self.next_desc = (head + bufs.len() as u16) % QSIZE;
        let slot = ring + 0x1000 + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        g.write(slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        g.write(ring + 0x1000 + 2, &self.avail_idx.to_le_bytes());
        self.kick.write(1).unwrap();
    }

    /// The used idx the back-end wrote.
    fn used_idx(&self, g: &Guest) -> u16 {
        u16::from_le_bytes(
            g.read(ring_base(self.index) + 0x2002, 2)
                .try_into()
                .unwrap(),
        )
    }

    /// Waits (up to `T`) until every submitted chain is used; the last used element's
    /// (id, len).
    fn wait(&self, g: &Guest) -> Option<(u32, u32)> {
        let deadline = Instant::now() + T;
        while self.used_idx(g) != self.avail_idx {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let slot = u64::from(self.avail_idx.wrapping_sub(1) % QSIZE);
        let e = g.read(ring_base(self.index) + 0x2004 + 8 * slot, 8);
        Some((
            u32::from_le_bytes(e[..4].try_into().unwrap()),
            u32::from_le_bytes(e[4..].try_into().unwrap()),
        ))
    }
}

/// Negotiates bit 30, VERSION_1 and `device_bits` (which must be offered), REPLY_ACK and
/// CONFIG when offered, and the memory table; the offered (features, protocol features).
fn open(be: &Backend, g: &Guest, device_bits: u64) -> (Connection, u64, u64) {
    let c = connect(&be.sock);
    let offered = get_u64(&c, FrontendReq::GetFeatures);
    let want = (VirtioFeatures::PROTOCOL_FEATURES | VirtioFeatures::VERSION_1).bits() | device_bits;
    assert_eq!(offered & want, want, "offered {offered:#x}");
    let protocol = get_u64(&c, FrontendReq::GetProtocolFeatures);
    let asked = protocol & (ProtocolFeatures::REPLY_ACK | ProtocolFeatures::CONFIG).bits();
    c.send_request(
        FrontendReq::SetProtocolFeatures as u32,
        &Body::U64(asked),
        false,
        &[],
    )
    .unwrap();
    assert_eq!(ack(&c, FrontendReq::SetFeatures, &Body::U64(want), &[]), 0);
    let table = Body::MemTable(vec![g.region()]);
    assert_eq!(
        ack(&c, FrontendReq::SetMemTable, &table, &[g.file.as_fd()]),
        0
    );
    (c, offered, protocol)
}

/// A 12-byte virtio_net_hdr_v1 of zeros, then `frame`, as one transmit chain (two buffers).
fn transmit(g: &mut Guest, tx: &mut Queue, frame: &[u8]) {
    let hdr = g.alloc(12);
    g.write(hdr, &[0; 12]);
    let body = g.alloc(frame.len() as u64);
    g.write(body, frame);
    tx.submit(g, &[(hdr, 12, false), (body, frame.len() as u32, false)]);
}

/// A receive chain of `len` bytes filled with 0xEE; its address.
fn post_rx(g: &mut Guest, rx: &mut Queue, len: u32) -> u64 {
    let at = g.alloc(u64::from(len));
    g.write(at, &vec![0xEE; len as usize]);
    rx.submit(g, &[(at, len, true)]);
    at
}

fn frame(seed: u8) -> Vec<u8> {
    // Broadcast destination, a locally administered source, an IPv4 ethertype, then payload.
    let mut f = vec![0xFF; 6];
    f.extend([0x02, 0, 0, 0, 0, seed, 0x08, 0x00]);
    f.extend((0..100u8).map(|i| i.wrapping_mul(seed)));
    f
}

#[test]
fn a_transmitted_frame_comes_back_on_receive_intact() {
    let be = start(&["--device", "net"]);
    let mut g = Guest::new();
    let (c, _, protocol) = open(&be, &g, NET_F_MAC | NET_F_STATUS | NET_F_MTU);
    for missing in [
        ProtocolFeatures::INFLIGHT_SHMFD,
        ProtocolFeatures::DEVICE_STATE,
        ProtocolFeatures::SHMEM,
    ] {
        assert_eq!(protocol & missing.bits(), 0, "{missing:?} offered for net");
    }
    assert_ne!(protocol & ProtocolFeatures::CONFIG.bits(), 0);
    // One queue pair (rx 0, tx 1) and the control queue 2.
    assert_eq!(get_u64(&c, FrontendReq::GetQueueNum), 1);
    let mut rx = Queue::setup(&c, 0);
    let mut tx = Queue::setup(&c, 1);

    // A buffer waiting first: the frame lands in it at once.
    let at = post_rx(&mut g, &mut rx, 1526);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        rx.used_idx(&g),
        0,
        "a receive buffer used with no frame sent"
    );
    let f1 = frame(3);
    transmit(&mut g, &mut tx, &f1);
    assert_eq!(tx.wait(&g).map(|u| u.1), Some(0), "transmit used length");
    assert_eq!(rx.wait(&g).map(|u| u.1), Some(12 + f1.len() as u32));
    let hdr = g.read(at, 12);
    assert_eq!(
        hdr,
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        "flags 0, GSO_NONE, num_buffers 1"
    );
    assert_eq!(g.read(at + 12, f1.len()), f1);
    assert_eq!(
        g.read(at + 12 + f1.len() as u64, 1),
        [0xEE],
        "written past the packet"
    );

    // Frames first, buffers later: both wait in the backlog and arrive in order.
    let (f2, f3) = (frame(5), frame(7));
    transmit(&mut g, &mut tx, &f2);
    transmit(&mut g, &mut tx, &f3);
    assert_eq!(tx.wait(&g).map(|u| u.1), Some(0));
    let a2 = post_rx(&mut g, &mut rx, 2048);
    let a3 = post_rx(&mut g, &mut rx, 2048);
    assert_eq!(rx.wait(&g).map(|u| u.1), Some(12 + f3.len() as u32));
    assert_eq!(g.read(a2 + 12, f2.len()), f2);
    assert_eq!(g.read(a3 + 12, f3.len()), f3);
    assert!(
        rx.call.read().is_ok(),
        "receive completions were not signalled"
    );
}

#[test]
fn net_config_and_control_commands() {
    let be = start(&["--device", "net"]);
    let g = Guest::new();
    let bits = NET_F_CTRL_VQ | NET_F_CTRL_RX | NET_F_MRG_RXBUF;
    let (c, _, _) = open(&be, &g, bits);
    let h = ConfigHeader {
        offset: 0,
        size: 12,
        flags: 0,
    };
    c.send_request(
        FrontendReq::GetConfig as u32,
        &Body::Config(h, vec![0; 12]),
        false,
        &[],
    )
    .unwrap();
    let reply = c.recv_reply(FrontendReq::GetConfig as u32).unwrap();
    let config = &reply.payload[12..];
    assert_eq!(config.len(), 12);
    assert_eq!(config[0] & 1, 0, "a multicast MAC");
    // status LINK_UP, max_virtqueue_pairs 1, mtu 1500.
    assert_eq!(config[6..], [1, 0, 1, 0, 0xDC, 0x05]);

    let mut g = g;
    let mut ctrl = Queue::setup(&c, 2);
    let mut ask = |g: &mut Guest, cmd: &[u8]| {
        let at = g.alloc(cmd.len() as u64);
        g.write(at, cmd);
        let ack_at = g.alloc(1);
        g.write(ack_at, &[0xAA]);
        ctrl.submit(g, &[(at, cmd.len() as u32, false), (ack_at, 1, true)]);
        let used = ctrl.wait(g).map(|u| u.1);
        (used, g.read(ack_at, 1)[0])
    };
    assert_eq!(
        ask(&mut g, &[0, 0, 1]),
        (Some(1), 0),
        "RX PROMISC on: VIRTIO_NET_OK"
    );
    assert_eq!(
        ask(&mut g, &[0, 1, 0]),
        (Some(1), 0),
        "RX ALLMULTI off: VIRTIO_NET_OK"
    );
    assert_eq!(
        ask(&mut g, &[0x7F, 0, 0]),
        (Some(1), 1),
        "unknown class: VIRTIO_NET_ERR"
    );
}

#[test]
fn rng_fills_each_buffer_with_fresh_bytes() {
    let be = start(&["--device", "rng"]);
    let mut g = Guest::new();
    let (c, _, protocol) = open(&be, &g, 0);
    assert_eq!(
        protocol & ProtocolFeatures::CONFIG.bits(),
        0,
        "CONFIG without a config space"
    );
    assert_eq!(get_u64(&c, FrontendReq::GetQueueNum), 1);
    let mut q = Queue::setup(&c, 0);
    let mut read = |g: &mut Guest| {
        let at = g.alloc(4096);
        g.write(at, &[0; 4096]);
        q.submit(g, &[(at, 1000, true), (at + 1000, 3096, true)]);
        (q.wait(g).map(|u| u.1), g.read(at, 4096))
    };
    let (used1, a) = read(&mut g);
    let (used2, b) = read(&mut g);
    assert_eq!((used1, used2), (Some(4096), Some(4096)));
    assert!(a.iter().any(|&x| x != a[0]), "4 KiB of one value");
    assert_ne!(a, b, "two requests got the same bytes");
}

fn backend(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vhu-mock-backend"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn print_capabilities_names_each_device_type() {
    for (device, kind) in [
        ("blk", "block"),
        ("net", "net"),
        ("rng", "rng"),
        ("fs", "fs"),
        ("vsock", "vsock"),
    ] {
        let out = backend(&["--device", device, "--print-capabilities"]);
        assert!(out.status.success(), "{device}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["type"], kind, "{device}");
        assert!(json["features"].as_array().is_some(), "{device}");
    }
    let out = backend(&["--print-capabilities"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["type"], "block", "the default device");
}

#[test]
fn a_device_fault_is_refused_with_another_device() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("be.sock");
    let sock = sock.to_str().unwrap();
    for (args, needle) in [
        (
            &["--device", "rng", "--fault", "net-tx-used-len"][..],
            "needs --device net",
        ),
        (&["--fault", "rng-zero-len"][..], "needs --device rng"),
        (
            &["--device", "net", "--fault", "wrong-used-len"][..],
            "needs --device blk",
        ),
        (&["--device", "net", "--shmem", "0:4096"][..], "--shmem"),
    ] {
        let out = backend(&[&["--socket-path", sock], args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            !std::path::Path::new(sock).exists(),
            "{args:?} listened anyway"
        );
    }
}
