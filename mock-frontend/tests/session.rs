//! The session against an in-test back-end over a real socketpair: NEED_REPLY appears once
//! REPLY_ACK is negotiated, the back-end channel acks and records a back-end request, an
//! indirect chain's table is readable through the shared memfd, and departures are typed.

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use vhu_mock_frontend::channel::ChannelViolation;
use vhu_mock_frontend::shmem::ShmemRefusal;
use vhu_mock_frontend::{
    Ack, Buffer, DriverQueue, GuestMemory, RingLayout, Session, SessionError, SessionOptions,
    Wanted,
};
use vhu_protocol::virtio::{SplitDesc, VIRTQ_DESC_F_INDIRECT};
use vhu_protocol::wire::payload::{Body, ShmemConfig, ShmemMapMsg};
use vhu_protocol::{BackendReq, Connection, FrontendReq, Header, ProtocolFeatures, VirtioFeatures};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

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
    let start = std::time::Instant::now();
    let e = s.get_features().unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(
            e,
            SessionError::Timeout {
                during: FrontendReq::GetFeatures,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1000),
        "the reply timeout (300 ms) bounds the wait, not the socket's: {took:?}"
    );
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

/// A SHMEM_MAP request with NEED_REPLY on the back-end channel, carrying `fd`.
fn shmem_msg(
    ch: &Connection,
    req: BackendReq,
    shm_offset: u64,
    len: u64,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Option<u64> {
    let mut m = ShmemMapMsg::new_zeroed();
    m.shm_offset = shm_offset;
    m.len = len;
    m.flags = 1;
    let fds: Vec<_> = fd.into_iter().collect();
    ch.send(
        Header::request(req as u32, m.as_bytes().len() as u32, true),
        m.as_bytes(),
        &fds,
    )
    .unwrap();
    ch.recv_reply(req as u32).unwrap().u64()
}

#[test]
fn shmem_map_requests_map_the_fd_into_the_declared_region_and_bad_ones_are_refused() {
    let (mut s, be) = pair();
    let backend = std::thread::spawn(move || {
        let pf =
            ProtocolFeatures::REPLY_ACK | ProtocolFeatures::BACKEND_REQ | ProtocolFeatures::SHMEM;
        let file = memfd::MemfdOptions::default()
            .create("be-shm")
            .unwrap()
            .into_file();
        file.set_len(0x2000).unwrap();
        file.write_all_at(b"device memory", 0x1000).unwrap();
        let (mut channel, mut acks, mut status_calls) = (None, vec![], 0);
        while let Ok(m) = be.recv() {
            let code = FrontendReq::from_code(m.header.request).unwrap();
            if code == FrontendReq::SetBackendReqFd {
                let sock = std::os::unix::net::UnixStream::from(m.fds.into_iter().next().unwrap());
                channel = Some(Connection::new(sock, T));
            }
            let reply = match code {
                FrontendReq::GetFeatures => Body::U64(VirtioFeatures::PROTOCOL_FEATURES.bits()),
                FrontendReq::GetProtocolFeatures => Body::U64(pf.bits()),
                FrontendReq::GetShmemConfig => {
                    let mut c = ShmemConfig {
                        nregions: 1,
                        ..Default::default()
                    };
                    c.sizes[0] = 0x10000;
                    Body::ShmemConfig(Box::new(c))
                }
                FrontendReq::GetStatus => {
                    let ch = channel.as_ref().unwrap();
                    let fd = Some(file.as_fd());
                    status_calls += 1;
                    if status_calls == 1 {
                        acks.push(shmem_msg(ch, BackendReq::ShmemMap, 0x4000, 0x2000, fd));
                        acks.push(shmem_msg(ch, BackendReq::ShmemMap, 0x5000, 0x1000, fd));
                        acks.push(shmem_msg(ch, BackendReq::ShmemUnmap, 0x4000, 0x1000, None));
                    } else {
                        acks.push(shmem_msg(ch, BackendReq::ShmemMap, 0x8000, 0x1000, fd));
                    }
                    Body::U64(0)
                }
                _ if m.header.need_reply() => Body::U64(0),
                _ => continue,
            };
            be.send_reply(m.header.request, &reply, &[]).unwrap();
        }
        acks
    });
    s.negotiate(&Wanted::all()).unwrap();
    s.get_shmem_config().unwrap();
    s.get_status().unwrap();
    let ch = s.channel().unwrap();
    let mut buf = [0u8; 13];
    ch.shmem_read(0, 0x5000, &mut buf).unwrap();
    assert_eq!(
        &buf, b"device memory",
        "the fd's page 1 shows at region offset 0x5000"
    );
    assert!(
        ch.shmem_read(0, 0x1000, &mut buf).is_err(),
        "nothing is mapped there"
    );
    assert_eq!(ch.shmem_mappings().len(), 1);
    let violations = ch.violations();
    assert_eq!(violations.len(), 2, "{violations:?}");
    assert!(
        matches!(
            &violations[0],
            ChannelViolation::Shmem {
                error: ShmemRefusal::Overlap { .. },
                ..
            }
        ) && matches!(
            &violations[1],
            ChannelViolation::Shmem {
                error: ShmemRefusal::NoSuchMapping { .. },
                ..
            }
        ),
        "{violations:?}"
    );

    s.channel().unwrap().refuse_next(1);
    s.get_status().unwrap();
    let ch = s.channel().unwrap();
    assert_eq!(ch.shmem_mappings().len(), 1, "a refused map is not mapped");
    assert_eq!(
        ch.violations().len(),
        2,
        "a refusal is not the back-end's violation"
    );
    assert_eq!(s.reset_device().unwrap(), Ack::Ok);
    assert!(
        s.channel().unwrap().shmem_mappings().is_empty(),
        "a reset drops the mappings (R-SHM-09)"
    );
    let records = s.channel().unwrap().requests();
    assert_eq!(records.len(), 4);
    assert!(records.iter().all(|r| r.ack.is_some()));
    drop(s);
    let acks = backend.join().unwrap();
    assert_eq!(acks.len(), 4);
    assert_eq!(acks[0], Some(0));
    assert!(
        acks[1..].iter().all(|a| a.is_some_and(|v| v != 0)),
        "{acks:?}"
    );
}

#[test]
fn leaving_waits_for_the_back_end_to_close_its_end_and_no_longer() {
    // A back-end that reads to EOF, sends a last message, then closes: `leave` sees it close.
    let (s, be) = pair();
    let backend = std::thread::spawn(move || {
        let r = be.recv();
        let _ = be.send_reply(FrontendReq::GetFeatures as u32, &Body::U64(0), &[]);
        drop(be);
        r
    });
    let start = std::time::Instant::now();
    assert!(s.leave(Duration::from_secs(2)));
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(backend.join().unwrap().is_err(), "the back-end read EOF");
    // One that keeps its end open: `leave` gives up after its bound.
    let (s, be) = pair();
    let start = std::time::Instant::now();
    assert!(!s.leave(Duration::from_millis(100)));
    assert!(start.elapsed() >= Duration::from_millis(100));
    drop(be);
}
