//! The vsock device over hand-built chains and real Unix sockets.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use zerocopy::{FromBytes, IntoBytes};

use super::wire::*;
use super::*;
use crate::sg::testing::Builder;

const GUEST: u64 = 3;
const GPORT: u32 = 40000;

/// A uds path in a fresh directory, removed on drop.
struct Dir(PathBuf);
impl Dir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vhu-vsock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    fn uds(&self) -> PathBuf {
        self.0.join("v.sock")
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A guest packet header to the host.
fn pkt(op: u16, port: u32, len: u32) -> Hdr {
    Hdr {
        src_cid: GUEST,
        dst_cid: HOST_CID,
        src_port: GPORT,
        dst_port: port,
        len,
        kind: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

fn tx(dev: &mut VsockDevice, b: &mut Builder, h: Hdr, payload: &[u8]) {
    let chain = b.chain(&[h.as_bytes(), payload], &[]);
    assert_eq!(dev.serve(VSOCK_TX, &b.mem, &chain), 0);
}

/// The next rx packet into a buffer of `room` bytes, if the device has one.
fn rx(dev: &mut VsockDevice, b: &mut Builder, room: u32) -> Option<(u32, Hdr, Vec<u8>)> {
    if !dev.ready(VSOCK_RX) {
        return None;
    }
    let chain = b.chain(&[], &[room]);
    let used = dev.serve(VSOCK_RX, &b.mem, &chain);
    let bytes = b.written(&chain, used);
    let (h, rest) = Hdr::read_from_prefix(&bytes).unwrap();
    assert_eq!(
        used as usize,
        HDR_LEN + h.len as usize,
        "R-VSOCK-02 used length"
    );
    Some((used, h, rest.to_vec()))
}

/// Polls `on_input` until the device has an rx packet (host I/O is asynchronous).
fn rx_wait(dev: &mut VsockDevice, b: &mut Builder, room: u32) -> (u32, Hdr, Vec<u8>) {
    for _ in 0..200 {
        dev.on_input();
        if let Some(p) = rx(dev, b, room) {
            return p;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no rx packet within 1 s");
}

fn assert_reply(h: &Hdr, op: u16, port: u32) {
    let (src, dst, sp, dp, kind, o) = (h.src_cid, h.dst_cid, h.src_port, h.dst_port, h.kind, h.op);
    assert_eq!(
        (src, dst, sp, dp, kind, o),
        (HOST_CID, GUEST, port, GPORT, TYPE_STREAM, op)
    );
    let ba = h.buf_alloc;
    assert_eq!(ba, VSOCK_BUF_ALLOC);
}

/// A device with a host listener on port `port`, connected; returns the host's stream.
fn connected(d: &Dir, port: u32) -> (VsockDevice, Builder, UnixStream, UnixListener) {
    let mut dev = VsockDevice::new(GUEST, &d.uds(), false).unwrap();
    let l = UnixListener::bind(dev.port_path(port)).unwrap();
    let mut b = Builder::new();
    tx(&mut dev, &mut b, pkt(op::REQUEST, port, 0), &[]);
    let (_, h, _) = rx(&mut dev, &mut b, 4096).unwrap();
    assert_reply(&h, op::RESPONSE, port);
    let (s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    (dev, b, s, l)
}

#[test]
fn config_and_cid_range() {
    let d = Dir::new("cfg");
    let dev = VsockDevice::new(GUEST, &d.uds(), false).unwrap();
    assert_eq!(dev.config(), 3u64.to_le_bytes());
    assert_eq!((dev.device_id(), dev.num_queues()), (19, 3));
    assert!(!dev.ready(VSOCK_RX) && dev.ready(VSOCK_TX) && !dev.ready(VSOCK_EVENT));
    assert!(matches!(
        VsockDevice::new(2, &d.uds(), false),
        Err(VsockError::BadCid(2))
    ));
    assert!(VsockDevice::new(1 << 32, &d.uds(), false).is_err());
}

#[test]
fn request_to_a_closed_port_is_reset() {
    let d = Dir::new("closed");
    let mut dev = VsockDevice::new(GUEST, &d.uds(), false).unwrap();
    let mut b = Builder::new();
    tx(&mut dev, &mut b, pkt(op::REQUEST, 1234, 0), &[]);
    let (used, h, _) = rx(&mut dev, &mut b, 4096).unwrap();
    assert_eq!(used, 44);
    assert_reply(&h, op::RST, 1234);
    assert!(rx(&mut dev, &mut b, 4096).is_none());
}

#[test]
fn data_flows_both_ways_within_credit() {
    let d = Dir::new("data");
    let (mut dev, mut b, mut host, _l) = connected(&d, 1234);
    // Guest to host.
    tx(&mut dev, &mut b, pkt(op::RW, 1234, 5), b"hello");
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    // Host to guest, limited by the guest's credit: buf_alloc 8, nothing consumed yet.
    let mut small = pkt(op::CREDIT_UPDATE, 1234, 0);
    small.buf_alloc = 8;
    tx(&mut dev, &mut b, small, &[]);
    host.write_all(b"0123456789abcdef").unwrap();
    let (_, h, payload) = rx_wait(&mut dev, &mut b, 4096);
    assert_reply(&h, op::RW, 1234);
    assert_eq!(payload, b"01234567");
    let fwd = h.fwd_cnt;
    assert_eq!(fwd, 5, "fwd_cnt counts the 5 bytes forwarded to the host");
    dev.on_input();
    assert!(rx(&mut dev, &mut b, 4096).is_none(), "credit exhausted");
    assert!(
        dev.input_fds().is_empty(),
        "no credit: the host socket is not polled"
    );
    // The guest consumed the 8 bytes.
    small.fwd_cnt = 8;
    tx(&mut dev, &mut b, small, &[]);
    let (_, _, payload) = rx_wait(&mut dev, &mut b, 4096);
    assert_eq!(payload, b"89abcdef");
}

#[test]
fn rx_buffers_smaller_than_a_packet() {
    let d = Dir::new("split");
    let (mut dev, mut b, mut host, _l) = connected(&d, 7);
    // Too small for a header: unused, the packet waits.
    tx(&mut dev, &mut b, pkt(op::CREDIT_REQUEST, 7, 0), &[]);
    let chain = b.chain(&[], &[20]);
    assert_eq!(dev.serve(VSOCK_RX, &b.mem, &chain), 0);
    let (_, h, _) = rx(&mut dev, &mut b, 4096).unwrap();
    assert_reply(&h, op::CREDIT_UPDATE, 7);
    // An RW split over two buffers.
    host.write_all(b"abcdefgh").unwrap();
    let (used, _, p1) = rx_wait(&mut dev, &mut b, 44 + 3);
    assert_eq!((used, p1.as_slice()), (47, &b"abc"[..]));
    let (_, _, p2) = rx(&mut dev, &mut b, 4096).unwrap();
    assert_eq!(p2, b"defgh");
}

#[test]
fn shutdowns_and_closes() {
    let d = Dir::new("shut");
    let (mut dev, mut b, mut host, _l) = connected(&d, 9);
    // The host closes: SHUTDOWN (both) to the guest.
    drop(host.shutdown(std::net::Shutdown::Write));
    let (_, h, _) = rx_wait(&mut dev, &mut b, 4096);
    assert_reply(&h, op::SHUTDOWN, 9);
    let f = h.flags;
    assert_eq!(f, SHUTDOWN_RCV | SHUTDOWN_SEND);
    // The guest shuts both directions: RST, and the host sees EOF.
    let mut s = pkt(op::SHUTDOWN, 9, 0);
    s.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    tx(&mut dev, &mut b, s, &[]);
    let (_, h, _) = rx(&mut dev, &mut b, 4096).unwrap();
    assert_reply(&h, op::RST, 9);
    let mut buf = [0u8; 4];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    // The connection is gone: RW for it is reset, RST for it is not answered.
    tx(&mut dev, &mut b, pkt(op::RW, 9, 2), b"hi");
    assert_reply(&rx(&mut dev, &mut b, 4096).unwrap().1, op::RST, 9);
    tx(&mut dev, &mut b, pkt(op::RST, 9, 0), &[]);
    assert!(rx(&mut dev, &mut b, 4096).is_none());
}

#[test]
fn bad_packets_are_reset() {
    let d = Dir::new("bad");
    let mut dev = VsockDevice::new(GUEST, &d.uds(), false).unwrap();
    let _l = UnixListener::bind(dev.port_path(5)).unwrap();
    let mut b = Builder::new();
    let mut wrong_dst = pkt(op::REQUEST, 5, 0);
    wrong_dst.dst_cid = 7;
    let mut wrong_src = pkt(op::REQUEST, 5, 0);
    wrong_src.src_cid = 4;
    let mut seqpacket = pkt(op::REQUEST, 5, 0);
    seqpacket.kind = 2;
    for h in [
        wrong_dst,
        wrong_src,
        seqpacket,
        pkt(99, 5, 0),
        pkt(op::CREDIT_UPDATE, 5, 0),
    ] {
        tx(&mut dev, &mut b, h, &[]);
        let (_, r, _) = rx(&mut dev, &mut b, 4096).unwrap();
        assert_reply(&r, op::RST, 5);
    }
    // A payload shorter than len.
    tx(&mut dev, &mut b, pkt(op::RW, 5, 100), b"short");
    assert_reply(&rx(&mut dev, &mut b, 4096).unwrap().1, op::RST, 5);
    // A chain shorter than a header: dropped.
    let chain = b.chain(&[&[0u8; 10]], &[]);
    assert_eq!(dev.serve(VSOCK_TX, &b.mem, &chain), 0);
    assert!(rx(&mut dev, &mut b, 4096).is_none());
}

#[test]
fn host_initiated_connection() {
    let d = Dir::new("hostinit");
    let mut dev = VsockDevice::new(GUEST, &d.uds(), true).unwrap();
    let mut b = Builder::new();
    let mut host = UnixStream::connect(d.uds()).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    host.write_all(b"CONNECT 5000\n").unwrap();
    let (_, h, _) = rx_wait(&mut dev, &mut b, 4096);
    let (o, dport, sport) = (h.op, h.dst_port, h.src_port);
    assert_eq!((o, dport), (op::REQUEST, 5000));
    // The guest (port 5000) accepts.
    let resp = Hdr {
        src_port: 5000,
        dst_port: sport,
        ..pkt(op::RESPONSE, sport, 0)
    };
    tx(&mut dev, &mut b, resp, &[]);
    let mut line = [0u8; 32];
    let n = host.read(&mut line).unwrap();
    assert_eq!(&line[..n], format!("OK {sport}\n").as_bytes());
    host.write_all(b"ping").unwrap();
    let (_, h, payload) = rx_wait(&mut dev, &mut b, 4096);
    let (o, dport) = (h.op, h.dst_port);
    assert_eq!((o, dport, payload.as_slice()), (op::RW, 5000, &b"ping"[..]));
    drop(dev);
    assert!(!d.uds().exists(), "the listening socket is removed");
}

#[test]
fn faults_break_their_rules() {
    let d = Dir::new("faults");
    let mut dev = VsockDevice::new(GUEST, &d.uds(), false).unwrap();
    let mut b = Builder::new();
    dev.set_faults(VsockFaults {
        no_rst: true,
        ..VsockFaults::default()
    });
    tx(&mut dev, &mut b, pkt(op::REQUEST, 1, 0), &[]);
    assert!(rx(&mut dev, &mut b, 4096).is_none());

    dev.set_faults(VsockFaults {
        bad_dst_cid: true,
        ..VsockFaults::default()
    });
    tx(&mut dev, &mut b, pkt(op::REQUEST, 1, 0), &[]);
    let dst = rx(&mut dev, &mut b, 4096).unwrap().1.dst_cid;
    assert_eq!(dst, 0);

    let (mut dev, mut b, mut host, _l) = connected(&d, 2);
    dev.set_faults(VsockFaults {
        credit_overrun: true,
        ..VsockFaults::default()
    });
    let mut small = pkt(op::CREDIT_UPDATE, 2, 0);
    small.buf_alloc = 4;
    tx(&mut dev, &mut b, small, &[]);
    host.write_all(b"0123456789").unwrap();
    let (_, _, payload) = rx_wait(&mut dev, &mut b, 4096);
    assert!(
        payload.len() > 4,
        "sent {} bytes past a credit of 4",
        payload.len()
    );
}
