//! The front-end's IOMMU against an in-test back-end over real sockets (spec "IOMMU support",
//! checklist R-IOTLB-04): a miss is answered with the IOTLB update on the main socket before
//! its ack; a miss no mapping covers gets no update and a non-zero ack; held misses wait until
//! released; descriptors and ring addresses carry IOVAs behind the IOMMU.

use std::os::unix::net::UnixStream;
use std::time::Duration;

use vhu_mock_frontend::iommu::{Mapping, PERM_RO, PERM_RW, TYPE_MISS, TYPE_UPDATE};
use vhu_mock_frontend::{
    Ack, Buffer, DriverQueue, GuestMemory, RingLayout, Session, SessionOptions,
};
use vhu_protocol::virtio::SplitDesc;
use vhu_protocol::wire::payload::{Body, IotlbMsg};
use vhu_protocol::{BackendReq, ConnError, Connection, FrontendReq, Header};
use zerocopy::FromBytes;

const T: Option<Duration> = Some(Duration::from_secs(2));

const MAPPING: Mapping = Mapping {
    iova: 0x10_0000,
    size: 0x10_0000,
    uaddr: 0x7f00_0000_0000,
    perm: PERM_RW,
};

/// A session whose back-end channel is set up, the back-end's ends of both sockets, and the
/// IOMMU mapping [`MAPPING`].
fn session_with_channel() -> (Session, Connection, Connection) {
    let (a, be) = Connection::pair(T).unwrap();
    let mut s = Session::new(
        a,
        SessionOptions {
            reply_timeout: Duration::from_millis(500),
            auto_need_reply: true,
        },
    );
    // No REPLY_ACK: SET_BACKEND_REQ_FD is sent without NEED_REPLY and needs no answer.
    assert_eq!(s.set_backend_req_fd().unwrap(), Ack::NotRequested);
    let m = be.recv().unwrap();
    assert_eq!(m.header.request, FrontendReq::SetBackendReqFd as u32);
    let fd = m.fds.into_iter().next().unwrap();
    let channel = Connection::new(UnixStream::from(fd), T);
    s.iommu().set_mappings(vec![MAPPING]);
    (s, be, channel)
}

fn miss(iova: u64, perm: u8) -> Body {
    Body::Iotlb(IotlbMsg {
        iova,
        size: 0,
        uaddr: 0,
        perm,
        kind: TYPE_MISS,
        padding: [0; 6],
    })
}

fn send_miss(channel: &Connection, iova: u64, need_reply: bool) {
    channel
        .send_request(
            BackendReq::IotlbMsg as u32,
            &miss(iova, PERM_RO),
            need_reply,
            &[],
        )
        .unwrap();
}

/// Reads the IOTLB_MSG the front-end sends on the main socket and answers it `answer`.
fn serve_update(be: &Connection, answer: u64) -> IotlbMsg {
    let m = be.recv().unwrap();
    assert_eq!(m.header.request, FrontendReq::IotlbMsg as u32);
    assert!(
        !m.header.need_reply(),
        "IOTLB_MSG is always answered: no NEED_REPLY needed"
    );
    let msg = IotlbMsg::read_from_bytes(&m.payload).unwrap();
    be.send_reply(FrontendReq::IotlbMsg as u32, &Body::U64(answer), &[])
        .unwrap();
    msg
}

fn nothing_within(c: &mut Connection, ms: u64) -> bool {
    c.set_timeout(Some(Duration::from_millis(ms)));
    let r = matches!(c.recv_unchecked(), Err(ConnError::Timeout { .. }));
    c.set_timeout(T);
    r
}

#[test]
fn a_miss_gets_the_covering_update_first_and_then_its_ack() {
    let (s, be, mut channel) = session_with_channel();
    send_miss(&channel, MAPPING.iova + 0x1234, true);
    let update = serve_update(&be, 0);
    assert_eq!(update.kind, TYPE_UPDATE);
    assert_eq!(
        (update.iova, update.size, update.uaddr, update.perm),
        (MAPPING.iova, MAPPING.size, MAPPING.uaddr, MAPPING.perm),
        "the update installs the mapping that covers the missed address"
    );
    // Only now, the update answered, may the ack come (R-IOTLB-04).
    let ack = channel.recv_reply(BackendReq::IotlbMsg as u32).unwrap();
    assert_eq!(ack.u64(), Some(0));
    assert!(nothing_within(&mut channel, 100));
    let answers = s.iommu().answers();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].reply, Ok(0));
    assert_eq!(answers[0].ack, Some(0));
    assert_eq!(answers[0].update, Some(MAPPING));
    // The update and its reply are in the transcript, on the main socket.
    let t = vhu_mock_frontend::transcript::render(&s.transcript().entries);
    assert!(t.contains("IOTLB_MSG"), "{t}");
}

#[test]
fn an_update_refused_by_the_back_end_makes_the_ack_non_zero() {
    let (s, be, channel) = session_with_channel();
    send_miss(&channel, MAPPING.iova, true);
    serve_update(&be, 7);
    let ack = channel.recv_reply(BackendReq::IotlbMsg as u32).unwrap();
    assert_ne!(ack.u64(), Some(0));
    assert_eq!(s.iommu().answers()[0].reply, Ok(7));
}

#[test]
fn an_invalid_miss_sends_nothing_and_is_acked_non_zero() {
    let (s, mut be, channel) = session_with_channel();
    send_miss(&channel, 0x9000_0000, true);
    let ack = channel.recv_reply(BackendReq::IotlbMsg as u32).unwrap();
    assert_ne!(ack.u64(), Some(0));
    assert!(
        nothing_within(&mut be, 150),
        "no update for an address no mapping covers"
    );
    let a = &s.iommu().answers()[0];
    assert_eq!(a.update, None);
    assert!(a.reply.is_err());
    let rec = &s.channel().unwrap().requests()[0];
    assert!(rec.refused.is_some() && rec.refused.as_ref().unwrap().violation().is_none());
}

#[test]
fn held_misses_wait_until_released_and_a_miss_without_need_reply_is_not_acked() {
    let (s, mut be, mut channel) = session_with_channel();
    s.iommu().hold(true);
    send_miss(&channel, MAPPING.iova + 8, false);
    assert!(nothing_within(&mut be, 200), "a held miss is not answered");
    assert_eq!(s.iommu().held(), 1);
    s.iommu().hold(false);
    serve_update(&be, 0);
    assert!(
        nothing_within(&mut channel, 150),
        "no ack without NEED_REPLY"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while s.iommu().answers().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(s.iommu().answers()[0].ack, None);
    assert_eq!(s.iommu().held(), 0);
}

#[test]
fn a_back_end_that_never_answers_the_update_is_recorded_and_the_session_goes_on() {
    let (mut s, be, channel) = session_with_channel();
    send_miss(&channel, MAPPING.iova, true);
    let m = be.recv().unwrap();
    assert_eq!(m.header.request, FrontendReq::IotlbMsg as u32);
    // No reply to the update: the channel gives up after the session's reply timeout.
    let ack = channel.recv_reply(BackendReq::IotlbMsg as u32).unwrap();
    assert_ne!(ack.u64(), Some(0));
    let a = &s.iommu().answers()[0];
    assert!(
        a.reply.as_ref().is_err_and(|e| e.contains("no reply")),
        "{a:?}"
    );
    // The main socket is free again for the session.
    let server = std::thread::spawn(move || serve_update(&be, 0));
    assert_eq!(s.iotlb_update(&MAPPING, false).unwrap(), Ack::Ok);
    assert_eq!(server.join().unwrap().kind, TYPE_UPDATE);
}

#[test]
fn behind_the_iommu_descriptors_and_ring_addresses_are_iovas() {
    let specs = GuestMemory::default_layout(4 << 20);
    let mut mem = GuestMemory::new(&specs).unwrap();
    let bases = GuestMemory::iova_bases_for(&specs);
    assert_eq!(bases, vec![specs[1].guest_addr, specs[0].guest_addr]);
    mem.map_iova(bases).unwrap();
    let mut q = DriverQueue::new(&mut mem, 0, 8, RingLayout::Split, false).unwrap();
    let a = q.vring_addr(&mem);
    // Ring 0 lives in region 0, whose IOVAs are region 1's guest range: neither user
    // addresses nor region 0's guest addresses.
    assert!(a.desc >= specs[1].guest_addr && a.desc < specs[1].guest_addr + specs[1].size);
    let buf = mem.alloc(64, 16).unwrap();
    let head = q
        .add_chain(
            &mem,
            &[Buffer {
                gpa: buf,
                len: 64,
                writable: true,
            }],
        )
        .unwrap();
    let desc_gpa = a.desc - specs[1].guest_addr + specs[0].guest_addr + 16 * u64::from(head);
    let mut raw = [0u8; 16];
    mem.read(desc_gpa, &mut raw).unwrap();
    let d = SplitDesc::read_from_bytes(&raw).unwrap();
    assert_eq!(d.addr, mem.device_addr(buf));
    assert_eq!(d.addr, buf - specs[0].guest_addr + specs[1].guest_addr);
    let m = mem.iommu_mappings();
    assert_eq!(m.len(), 2);
    assert_eq!(
        (m[0].iova, m[0].uaddr),
        (specs[1].guest_addr, specs[0].user_addr)
    );
}

#[test]
fn updates_and_invalidations_read_their_u64_reply() {
    let (mut s, be, _channel) = session_with_channel();
    let server = std::thread::spawn(move || {
        let first = serve_update(&be, 0);
        let second = serve_update(&be, 1);
        (first, second)
    });
    assert_eq!(s.iotlb_update(&MAPPING, false).unwrap(), Ack::Ok);
    assert_eq!(s.iotlb_invalidate(&MAPPING, false).unwrap(), Ack::Failed(1));
    let (first, second) = server.join().unwrap();
    assert_eq!(first.kind, TYPE_UPDATE);
    assert_eq!(
        (second.kind, second.iova, second.size),
        (3, MAPPING.iova, MAPPING.size)
    );
    let h = Header::request(FrontendReq::IotlbMsg as u32, 32, false);
    assert!(!h.need_reply());
}
