//! The reference back-end's IOTLB over a real socket (VIRTIO_F_ACCESS_PLATFORM, checklist 4.18):
//! the bit is offered; IOTLB_MSG is answered with a u64 without NEED_REPLY, refused without the
//! bit and for user ranges outside the memory table; ring and descriptor addresses are IOVAs, an
//! access the IOTLB lacks is reported as a miss on the back-end channel, and the request
//! completes once the update comes.

mod common;

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;
use vhu_protocol::virtio::blk;
use vhu_protocol::wire::payload::{Body, IotlbMsg};
use vhu_protocol::{BackendReq, Connection, FrontendReq, ProtocolFeatures, VirtioFeatures};
use zerocopy::FromBytes;

const UPDATE: u8 = 2;
const INVALIDATE: u8 = 3;
const MISS: u8 = 1;

fn msg(kind: u8, iova: u64, size: u64, uaddr: u64) -> Body {
    Body::Iotlb(IotlbMsg {
        iova,
        size,
        uaddr,
        perm: 3,
        kind,
        padding: [0; 6],
    })
}

/// IOTLB_MSG without NEED_REPLY: the u64 reply it always gets.
fn iotlb(c: &Connection, body: &Body) -> u64 {
    c.send_request(FrontendReq::IotlbMsg as u32, body, false, &[])
        .unwrap();
    c.recv_reply(FrontendReq::IotlbMsg as u32)
        .unwrap()
        .u64()
        .unwrap()
}

/// Negotiates bit 30, VERSION_1 and `extra` virtio bits with REPLY_ACK and BACKEND_REQ; the
/// back-end channel's front-end end.
fn negotiate_with(c: &Connection, extra: VirtioFeatures) -> Connection {
    let protocol = ProtocolFeatures::REPLY_ACK | ProtocolFeatures::BACKEND_REQ;
    get_u64(c, FrontendReq::GetFeatures);
    get_u64(c, FrontendReq::GetProtocolFeatures);
    let pf = Body::U64(protocol.bits());
    assert_eq!(ack(c, FrontendReq::SetProtocolFeatures, &pf, &[]), 0);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = [theirs.as_fd()];
    assert_eq!(ack(c, FrontendReq::SetBackendReqFd, &Body::Empty, &fd), 0);
    let f = VirtioFeatures::PROTOCOL_FEATURES | VirtioFeatures::VERSION_1 | extra;
    assert_eq!(
        ack(c, FrontendReq::SetFeatures, &Body::U64(f.bits()), &[]),
        0
    );
    Connection::new(ours, Some(T))
}

fn table(c: &Connection, g: &Guest) {
    let t = Body::MemTable(vec![g.region()]);
    assert_eq!(ack(c, FrontendReq::SetMemTable, &t, &[g.file.as_fd()]), 0);
}

#[test]
fn access_platform_is_offered_unless_the_variation_leaves_it_out() {
    let bit = VirtioFeatures::ACCESS_PLATFORM.bits();
    let be = start(&[]);
    assert_ne!(
        get_u64(&connect(&be.sock), FrontendReq::GetFeatures) & bit,
        0
    );
    let be = start(&["--fault", "no-access-platform"]);
    assert_eq!(
        get_u64(&connect(&be.sock), FrontendReq::GetFeatures) & bit,
        0
    );
}

#[test]
fn iotlb_msg_is_answered_without_need_reply_and_refused_without_the_feature() {
    let be = start(&[]);
    let c = connect(&be.sock);
    let _channel = negotiate_with(&c, VirtioFeatures::empty());
    let g = Guest::new();
    table(&c, &g);
    let inside = msg(UPDATE, 0x1000, 0x1000, UA_BASE);
    assert_ne!(
        iotlb(&c, &inside),
        0,
        "no ACCESS_PLATFORM: no IOTLB to update"
    );

    let be = start(&[]);
    let c = connect(&be.sock);
    let _channel = negotiate_with(&c, VirtioFeatures::ACCESS_PLATFORM);
    table(&c, &g);
    assert_eq!(iotlb(&c, &inside), 0);
    assert_eq!(iotlb(&c, &msg(INVALIDATE, 0x1000, 0x1000, 0)), 0);
    // R-IOTLB-05: user ranges past the region, or straddling its end, are refused.
    assert_ne!(iotlb(&c, &msg(UPDATE, 0, 0x1000, UA_BASE + MEM_SIZE)), 0);
    assert_ne!(
        iotlb(&c, &msg(UPDATE, 0, 0x2000, UA_BASE + MEM_SIZE - 0x1000)),
        0
    );
    assert_ne!(iotlb(&c, &msg(UPDATE, 0, 0, UA_BASE)), 0, "an empty update");
    // A back-end-only type from the front-end is refused too.
    assert_ne!(iotlb(&c, &msg(MISS, 0, 0, 0)), 0);
    // Under the fault, only NEED_REPLY gets an answer.
    let be = start(&["--fault", "iotlb-ack-only"]);
    let mut c = connect(&be.sock);
    let _channel = negotiate_with(&c, VirtioFeatures::ACCESS_PLATFORM);
    table(&c, &g);
    c.set_timeout(Some(Duration::from_millis(300)));
    c.send_request(FrontendReq::IotlbMsg as u32, &inside, false, &[])
        .unwrap();
    assert!(c.recv_unchecked().unwrap_err().is_timeout());
    assert_eq!(ack(&c, FrontendReq::IotlbMsg, &inside, &[]), 0);
}

/// Reads the next miss the back-end sends on `channel`.
fn next_miss(channel: &Connection) -> IotlbMsg {
    let m = channel.recv().expect("a miss on the back-end channel");
    assert_eq!(m.header.request, BackendReq::IotlbMsg as u32);
    let miss = IotlbMsg::read_from_bytes(&m.payload).unwrap();
    assert_eq!(miss.kind, MISS);
    assert!(matches!(miss.perm, 1..=3), "{miss:?}");
    miss
}

#[test]
fn ring_and_buffer_iovas_miss_until_updated_and_the_request_completes() {
    let be = start(&[]);
    let c = connect(&be.sock);
    let channel = negotiate_with(&c, VirtioFeatures::ACCESS_PLATFORM);
    let mut g = Guest::new();
    // The ring addresses the common driver announces (UA_BASE + offset) are IOVAs now, and
    // its descriptors carry guest offsets: two IOVA ranges onto the one region, none mapped.
    let mut r = setup_ring(&c, &g);
    let ring_miss = next_miss(&channel);
    assert!(
        (UA_BASE..UA_BASE + MEM_SIZE).contains(&ring_miss.iova),
        "the first access is to the ring: {ring_miss:?}"
    );
    assert_eq!(iotlb(&c, &msg(UPDATE, UA_BASE, MEM_SIZE, UA_BASE)), 0);
    let data = vec![0x5e; 512];
    let hdr = g.alloc(16);
    g.write(hdr, &blk_header(blk::T_OUT, 3));
    let at = g.alloc(512);
    g.write(at, &data);
    let status = g.alloc(1);
    g.write(status, &[0xff]);
    r.submit(&g, &[(hdr, 16, false), (at, 512, false), (status, 1, true)]);
    r.kick();
    // The descriptors' IOVAs (guest offsets) are not mapped yet: a miss, no completion.
    let buf_miss = next_miss(&channel);
    assert!(buf_miss.iova < MEM_SIZE, "{buf_miss:?}");
    assert_eq!(r.used_idx(&g), 0);
    assert_eq!(iotlb(&c, &msg(UPDATE, 0, MEM_SIZE, UA_BASE)), 0);
    assert_eq!(
        r.wait_used(&g),
        Some(1),
        "the write completes after the update"
    );
    assert_eq!(g.read(status, 1)[0], blk::S_OK);
    let (st, back) = blk_read(&mut g, &mut r, 3, 512);
    assert_eq!((st, back), (blk::S_OK, data));
    // After invalidating the buffers' range, a request misses again.
    assert_eq!(iotlb(&c, &msg(INVALIDATE, 0, MEM_SIZE, 0)), 0);
    let hdr = g.alloc(16);
    g.write(hdr, &blk_header(blk::T_GET_ID, 0));
    let id = g.alloc(20);
    let status = g.alloc(1);
    r.submit(&g, &[(hdr, 16, false), (id, 20, true), (status, 1, true)]);
    r.kick();
    assert!(next_miss(&channel).iova < MEM_SIZE);
    assert_eq!(
        r.used_idx(&g),
        2,
        "not completed from the invalidated entry"
    );
}
