//! The session against an in-test back-end over a real socketpair: NEED_REPLY appears once
//! REPLY_ACK is negotiated, the back-end channel acks and records a back-end request, an
//! indirect chain's table is readable through the shared memfd, and departures are typed.

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use vhu_mock_frontend::{
    Ack, Buffer, DriverQueue, GuestMemory, RingLayout, Session, SessionError, SessionOptions,
    Wanted,
};
use vhu_protocol::virtio::{SplitDesc, VIRTQ_DESC_F_INDIRECT};
use vhu_protocol::wire::payload::Body;
use vhu_protocol::{BackendReq, Connection, FrontendReq, Header, ProtocolFeatures, VirtioFeatures};
use zerocopy::FromBytes;

const T: Option<Duration> = Some(Duration::from_secs(2));

fn pair() -> (Session, Connection) {
    let (a, b) = Connection::pair(T).unwrap();
    (
        Session::new(
            a,
            SessionOptions {
                reply_timeout: Duration::from_millis(300),
                auto_need_reply: true,
            },
        ),
        b,
    )
}

#[test]
fn need_reply_follows_reply_ack_and_the_backend_channel_acks_and_records() {
    let (mut s, be) = pair();
    let backend = std::thread::spawn(move || {
        let offered_pf = (ProtocolFeatures::REPLY_ACK | ProtocolFeatures::BACKEND_REQ).bits();
        let mut need_reply_seen = vec![];
        let mut channel = None;
        loop {
            let Ok(m) = be.recv() else { break };
            let code = FrontendReq::from_code(m.header.request).unwrap();
            need_reply_seen.push((code, m.header.need_reply()));
            let reply = match code {
                FrontendReq::GetFeatures => Some(Body::U64(
                    VirtioFeatures::PROTOCOL_FEATURES.bits() | 1 << 32,
                )),
                FrontendReq::GetProtocolFeatures => Some(Body::U64(offered_pf)),
                _ if m.header.need_reply() => Some(Body::U64(0)),
                _ => None,
            };
            if code == FrontendReq::SetBackendReqFd {
                channel = Some(Connection::new(
                    std::os::unix::net::UnixStream::from(m.fds.into_iter().next().unwrap()),
                    T,
                ));
            }
            if let Some(b) = reply {
                be.send_reply(m.header.request, &b, &[]).unwrap();
            }
            if code == FrontendReq::SetFeatures {
                break;
            }
        }
        // A back-end request with NEED_REPLY on the channel: the front-end must ack it.
        let ch = channel.expect("SET_BACKEND_REQ_FD carried a socket");
        ch.send(
            Header::request(BackendReq::ConfigChangeMsg as u32, 0, true),
            &[],
            &[],
        )
        .unwrap();
        let ack = ch.recv_reply(BackendReq::ConfigChangeMsg as u32).unwrap();
        (need_reply_seen, ack.u64())
    });
    let n = s.negotiate(&Wanted::all()).unwrap();
    assert!(n.protocol & ProtocolFeatures::REPLY_ACK.bits() != 0);
    let (seen, ack) = backend.join().unwrap();
    assert_eq!(
        ack,
        Some(0),
        "CONFIG_CHANGE_MSG with NEED_REPLY is acked 0 (R-ACK-08)"
    );
    assert!(
        seen.contains(&(FrontendReq::SetProtocolFeatures, false)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(FrontendReq::SetOwner, true)),
        "NEED_REPLY once REPLY_ACK is on: {seen:?}"
    );
    assert!(seen.contains(&(FrontendReq::GetFeatures, false)));
    let records = s.channel().unwrap().requests();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].code, BackendReq::ConfigChangeMsg as u32);
    assert!(s.transcript().render().contains("CONFIG_CHANGE_MSG"));
}

#[test]
fn a_silent_a_closing_and_a_wrong_code_backend_are_typed_departures() {
    let (mut s, be) = pair();
    assert!(matches!(
        s.get_features(),
        Err(SessionError::Timeout {
            during: FrontendReq::GetFeatures,
            ..
        })
    ));
    let _ = be.recv();
    be.send_reply(FrontendReq::GetQueueNum as u32, &Body::U64(1), &[])
        .unwrap();
    let e = s.get_protocol_features().unwrap_err();
    assert!(
        matches!(&e, SessionError::BadReply { .. }) && e.is_backend_fault(),
        "{e:?}"
    );
    drop(be);
    let e = s.get_features().unwrap_err();
    assert!(matches!(e, SessionError::Closed { .. }), "{e:?}");
    let t = s.transcript();
    assert!(
        t.entries.iter().any(|e| e.name == "GET_QUEUE_NUM"),
        "the wrong reply is in the transcript"
    );
}

#[test]
fn an_indirect_chain_lives_in_shared_guest_memory() {
    let mut mem = GuestMemory::new(&GuestMemory::default_layout(2 << 20)).unwrap();
    let mut q = DriverQueue::new(&mut mem, 0, 8, RingLayout::Split, false).unwrap();
    let bufs = [
        Buffer {
            gpa: 0x8000,
            len: 16,
            writable: false,
        },
        Buffer {
            gpa: 0x9000,
            len: 512,
            writable: true,
        },
    ];
    let head = q.add_indirect(&mut mem, &bufs).unwrap();
    q.publish(&mem).unwrap();
    // Read the descriptor through the memfd, as a back-end would.
    let region = &mem.regions()[0];
    let file = std::fs::File::from(region.fd().try_clone_to_owned().unwrap());
    let addr = q.vring_addr(&mem);
    let desc_gpa = addr.desc - region.spec.user_addr + region.spec.guest_addr;
    let mut raw = [0u8; 16];
    file.read_exact_at(
        &mut raw,
        region.spec.mmap_offset + desc_gpa + 16 * u64::from(head),
    )
    .unwrap();
    let d = SplitDesc::read_from_bytes(&raw).unwrap();
    assert_eq!(d.flags, VIRTQ_DESC_F_INDIRECT);
    assert_eq!(d.len, 32);
    file.read_exact_at(&mut raw, d.addr + 16).unwrap();
    let second = SplitDesc::read_from_bytes(&raw).unwrap();
    assert_eq!((second.addr, second.len), (0x9000, 512));
    assert_eq!(q.avail_idx(), 1);
    let _ = (Ack::Ok, q.kick.as_fd());
}
