//! The driver against a tiny in-test back-end over a real socketpair: the back-end maps the
//! memfds SET_MEM_TABLE hands it, translates the user addresses of SET_VRING_ADDR itself, waits
//! for the kick eventfd, walks the descriptor chain the driver wrote, writes the used ring and
//! signals the call eventfd. That proves real shared memory, the ring layout of virtio 1.2
//! section 2.7 and the address translation, with code that shares nothing with the driver.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{Ordering, fence};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vhu_mock_frontend::transcript::Direction;
use vhu_mock_frontend::{
    Ack, Buffer, DriverQueue, GuestMemory, RingLayout, Session, SessionOptions, Wanted,
};
use vhu_protocol::virtio::{SplitDesc, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
use vhu_protocol::wire::payload::{Body, VringAddr};

use common::{BackendMemory, map_region};
use vhu_protocol::{Connection, FrontendReq, ProtocolFeatures, VirtioFeatures};
use zerocopy::FromBytes;

const T: Duration = Duration::from_secs(3);

/// What the back-end saw and did.
struct Report {
    need_reply: Vec<(FrontendReq, bool)>,
    request_bytes: Vec<u8>,
}

/// Serves negotiation and ring setup, then completes one request: copies the readable bytes,
/// uppercased, into the writable buffer.
fn backend(be: Connection) -> Report {
    let mut need_reply = vec![];
    let mut mem = None;
    let mut addr: Option<VringAddr> = None;
    let (mut kick, mut call): (Option<OwnedFd>, Option<OwnedFd>) = (None, None);
    let mut size = 0u16;
    loop {
        let m = be.recv().expect("the front-end sends the whole setup");
        let code = FrontendReq::from_code(m.header.request).unwrap();
        need_reply.push((code, m.header.need_reply()));
        let body = m.body(code.request_body()).unwrap();
        let reply = match (code, body) {
            (FrontendReq::GetFeatures, _) => {
                Some(VirtioFeatures::PROTOCOL_FEATURES.bits() | VirtioFeatures::VERSION_1.bits())
            }
            (FrontendReq::GetProtocolFeatures, _) => Some(ProtocolFeatures::REPLY_ACK.bits()),
            (FrontendReq::SetMemTable, Body::MemTable(regions)) => {
                assert_eq!(regions.len(), m.fds.len(), "one fd per region");
                let maps = regions.iter().zip(&m.fds).map(|(r, fd)| map_region(*r, fd));
                mem = Some(BackendMemory(maps.collect()));
                None
            }
            (FrontendReq::SetVringNum, Body::VringState(s)) => {
                size = s.num as u16;
                None
            }
            (FrontendReq::SetVringAddr, Body::VringAddr(a)) => {
                addr = Some(a);
                None
            }
            (FrontendReq::SetVringKick, _) => {
                kick = m.fds.into_iter().next();
                None
            }
            (FrontendReq::SetVringCall, _) => {
                call = m.fds.into_iter().next();
                None
            }
            _ => None,
        };
        if let Some(v) = reply {
            be.send_reply(m.header.request, &Body::U64(v), &[]).unwrap();
        } else if m.header.need_reply() {
            be.send_reply(m.header.request, &Body::U64(0), &[]).unwrap();
        }
        if code == FrontendReq::SetVringEnable {
            break;
        }
    }
    let (mem, addr) = (mem.expect("a memory table"), addr.expect("ring addresses"));
    let (kick, call) = (kick.expect("a kick fd"), call.expect("a call fd"));
    // Wait for a kick that comes with a buffer (the first one is the injected kick).
    let deadline = Instant::now() + T;
    while mem.u16_at(addr.avail + 2) == 0 {
        assert!(Instant::now() < deadline, "no buffer made available");
        let mut pfd = [PollFd::new(kick.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut pfd, PollTimeout::from(50u16));
        let mut b = [0u8; 8];
        let _ = nix::unistd::read(&kick, &mut b);
    }
    fence(Ordering::Acquire);
    let head = mem.u16_at(addr.avail + 4);
    let mut request_bytes = vec![];
    let mut written = 0u32;
    let mut i = head;
    loop {
        let mut raw = [0u8; 16];
        mem.read(addr.desc + 16 * u64::from(i), &mut raw, true);
        let d = SplitDesc::read_from_bytes(&raw).unwrap();
        if d.flags & VIRTQ_DESC_F_WRITE == 0 {
            let mut buf = vec![0u8; d.len as usize];
            mem.read(d.addr, &mut buf, false);
            request_bytes.extend(buf);
        } else {
            let reply = request_bytes.to_ascii_uppercase();
            mem.write(d.addr, &reply[..d.len as usize], false);
            written += d.len;
        }
        if d.flags & VIRTQ_DESC_F_NEXT == 0 {
            break;
        }
        i = d.next;
    }
    let mut elem = [0u8; 8];
    elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
    elem[4..].copy_from_slice(&written.to_le_bytes());
    mem.write(addr.used + 4, &elem, true);
    fence(Ordering::Release);
    mem.write(addr.used + 2, &1u16.to_le_bytes(), true);
    nix::unistd::write(&call, &1u64.to_ne_bytes()).unwrap();
    assert!(size > 0, "SET_VRING_NUM came first");
    // Keep the connection open until the front-end has finished: its last request is acked.
    if let Ok(m) = be.recv() {
        be.send_reply(m.header.request, &Body::U64(0), &[]).unwrap();
    }
    Report {
        need_reply,
        request_bytes,
    }
}

#[test]
fn a_backend_completes_a_split_ring_request_through_the_shared_memfds() {
    let (a, b) = Connection::pair(Some(T)).unwrap();
    let server = std::thread::spawn(move || backend(b));
    let mut s = Session::new(a, SessionOptions::default());
    let n = s.negotiate(&Wanted::all()).unwrap();
    assert_eq!(n.protocol, ProtocolFeatures::REPLY_ACK.bits());
    let mut mem = GuestMemory::new(&GuestMemory::default_layout(4 << 20)).unwrap();
    assert_eq!(s.set_mem_table(&mem).unwrap(), Ack::Ok);
    // Fill the first region so the rings and buffers land in the second (behind the hole, at a
    // non-zero offset in its memfd).
    mem.alloc(2 << 20, 4096).unwrap();
    let mut q = DriverQueue::new(&mut mem, 0, 16, RingLayout::Split, false).unwrap();
    q.setup(&mut s, &mem, 0).unwrap();
    assert_eq!(s.set_vring_enable(0, true).unwrap(), Ack::Ok);

    let out = mem.alloc(11, 8).unwrap();
    let back = mem.alloc(11, 8).unwrap();
    mem.write(out, b"hello, ring").unwrap();
    assert!(out >= mem.regions()[1].spec.guest_addr);
    let head = q
        .add_chain(
            &mem,
            &[
                Buffer {
                    gpa: out,
                    len: 11,
                    writable: false,
                },
                Buffer {
                    gpa: back,
                    len: 11,
                    writable: true,
                },
            ],
        )
        .unwrap();
    q.publish(&mem).unwrap();
    q.kick();
    let used = q.wait_used(&mem, 1, T).unwrap();
    assert_eq!((used[0].id, used[0].len), (u32::from(head), 11));
    assert_eq!(q.used_idx(&mem), 1);
    assert!(q.calls >= 1, "the call eventfd was read");
    let mut got = [0u8; 11];
    mem.read(back, &mut got).unwrap();
    assert_eq!(&got, b"HELLO, RING");

    // Ends the back-end's last recv.
    s.set_vring_enable(0, false).unwrap();
    let report = server.join().unwrap();
    assert_eq!(report.request_bytes, b"hello, ring");
    for (req, need) in &report.need_reply {
        let expected = matches!(
            req,
            FrontendReq::SetOwner
                | FrontendReq::SetFeatures
                | FrontendReq::SetMemTable
                | FrontendReq::SetVringNum
                | FrontendReq::SetVringBase
                | FrontendReq::SetVringAddr
                | FrontendReq::SetVringKick
                | FrontendReq::SetVringCall
                | FrontendReq::SetVringErr
                | FrontendReq::SetVringEnable
        );
        assert_eq!(*need, expected, "NEED_REPLY on {req:?}");
    }

    let t = s.transcript();
    let find = |name: &str, dir: Direction| {
        t.entries
            .iter()
            .find(|e| e.name == name && e.direction == dir)
            .unwrap_or_else(|| panic!("{name} {dir:?} is in the transcript"))
    };
    assert_eq!(find("SET_MEM_TABLE", Direction::ToBackend).fds, 2);
    assert_eq!(find("SET_VRING_KICK", Direction::ToBackend).fds, 1);
    let ack = find("SET_MEM_TABLE", Direction::FromBackend);
    assert_eq!((ack.fds, ack.size), (0, 8));
    let offer = find("GET_FEATURES", Direction::FromBackend);
    assert!(offer.decoded.contains(&format!("{}", 1u64 << 32 | 1 << 30)));
    assert!(t.entries.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    assert_eq!(
        t.render().lines().count(),
        t.entries.len(),
        "one line per message"
    );
}
