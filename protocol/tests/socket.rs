//! The connection over real socketpairs: fds travel with messages, surplus fds are closed,
//! partial and lying messages are handled, and every wait times out.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use vhu_protocol::wire::payload::{Body, BodyKind, MemRegion};
use vhu_protocol::{ConnError, Connection, FrontendReq, Header, RawMessage};

const T: Option<Duration> = Some(Duration::from_secs(2));

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn memfd(size: u64) -> File {
    let m = memfd::MemfdOptions::default().create("vhu-test").unwrap();
    m.as_file().set_len(size).unwrap();
    m.into_file()
}

#[test]
fn a_memfd_and_an_eventfd_arrive_and_work_on_the_receiving_side() {
    let (a, b) = Connection::pair(T).unwrap();
    let mem = memfd(4096);
    let efd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
    let region = MemRegion {
        guest_addr: 0,
        size: 4096,
        user_addr: 0x7f00_0000_0000,
        mmap_offset: 0,
    };
    let body = Body::MemTable(vec![region]);
    a.send_request(
        FrontendReq::SetMemTable as u32,
        &body,
        true,
        &[mem.as_fd(), efd.as_fd()],
    )
    .unwrap();

    let msg = b.recv().unwrap();
    assert_eq!(msg.header.request, FrontendReq::SetMemTable as u32);
    assert!(msg.header.need_reply());
    assert_eq!(msg.body(BodyKind::MemTable).unwrap(), body);
    assert_eq!(msg.fds.len(), 2);

    // Write the guest memory through the received fd; the sender's memfd sees it.
    let mut received_mem = File::from(msg.fds[0].try_clone().unwrap());
    received_mem.write_all(b"written by the receiver").unwrap();
    let mut readback = vec![0u8; 23];
    let mut mem = mem;
    mem.seek(SeekFrom::Start(0)).unwrap();
    mem.read_exact(&mut readback).unwrap();
    assert_eq!(&readback, b"written by the receiver");

    // Signal the received eventfd; the sender's eventfd counts it.
    let mut received_efd = File::from(msg.fds[1].try_clone().unwrap());
    received_efd.write_all(&1u64.to_ne_bytes()).unwrap();
    assert_eq!(efd.read().unwrap(), 1);
}

#[test]
fn too_many_fds_are_refused_and_every_surplus_fd_is_closed() {
    let (a, mut b) = Connection::pair(T).unwrap();
    b.set_max_fds(2);
    let files: Vec<File> = (0..6).map(|_| memfd(4096)).collect();
    let fds: Vec<BorrowedFd<'_>> = files.iter().map(File::as_fd).collect();
    let before = open_fds();
    a.send_request(FrontendReq::GetFeatures as u32, &Body::Empty, false, &fds)
        .unwrap();
    match b.recv() {
        Err(ConnError::TooManyFds { max: 2, header, .. }) => assert_eq!(header.request, 1),
        other => panic!("expected TooManyFds, got {other:?}"),
    }
    assert_eq!(
        open_fds(),
        before,
        "the receiver must close every fd of the refused message"
    );
    // The stream stays in step: the next message is read normally.
    a.send_request(FrontendReq::GetFeatures as u32, &Body::Empty, false, &[])
        .unwrap();
    assert_eq!(b.recv().unwrap().header.request, 1);
}

#[test]
fn fds_sent_with_a_later_fragment_are_closed_not_kept() {
    let (a, b) = Connection::pair(T).unwrap();
    let f = memfd(4096);
    let bytes =
        RawMessage::new(Header::request(2, 8, false), 7u64.to_ne_bytes().to_vec()).to_bytes();
    let before = open_fds();
    a.send_bytes(&bytes[..12], &[]).unwrap();
    a.send_bytes(&bytes[12..], &[f.as_fd()]).unwrap();
    let msg = b.recv().unwrap();
    assert!(msg.fds.is_empty());
    assert_eq!(msg.u64(), Some(7));
    assert_eq!(open_fds(), before);
}

#[test]
fn a_message_split_over_writes_and_two_coalesced_messages_are_framed() {
    let (a, b) = Connection::pair(T).unwrap();
    let one = RawMessage::new(Header::request(2, 8, false), 1u64.to_ne_bytes().to_vec()).to_bytes();
    let t = std::thread::spawn(move || {
        a.send_bytes(&one[..5], &[]).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        a.send_bytes(&one[5..], &[]).unwrap();
        let mut two = one.clone();
        two.extend_from_slice(&one);
        a.send_bytes(&two, &[]).unwrap();
        a
    });
    for _ in 0..3 {
        assert_eq!(b.recv().unwrap().u64(), Some(1));
    }
    t.join().unwrap();
}

#[test]
fn an_oversized_size_field_is_refused_before_any_allocation() {
    let (a, b) = Connection::pair(T).unwrap();
    a.send_raw(
        &RawMessage::new(Header::request(1, u32::MAX, false), vec![]),
        &[],
    )
    .unwrap();
    match b.recv() {
        Err(ConnError::OversizedPayload { header, max }) => {
            assert_eq!(header.size, u32::MAX);
            assert_eq!(max, 4096);
        }
        other => panic!("expected OversizedPayload, got {other:?}"),
    }
}

#[test]
fn silence_times_out_and_a_half_message_then_close_is_a_short_read() {
    let (a, mut b) = Connection::pair(T).unwrap();
    b.set_timeout(Some(Duration::from_millis(100)));
    let start = Instant::now();
    assert!(b.recv().unwrap_err().is_timeout());
    assert!(start.elapsed() < Duration::from_secs(1));

    a.send_bytes(&Header::request(1, 8, false).to_bytes(), &[])
        .unwrap();
    a.send_bytes(&[0, 0, 0], &[]).unwrap();
    drop(a);
    let err = b.recv().unwrap_err();
    assert!(
        matches!(
            err,
            ConnError::ShortRead {
                part: "payload",
                got: 3,
                wanted: 8
            }
        ),
        "{err:?}"
    );
    assert!(err.is_peer_gone());
    assert!(matches!(b.recv(), Err(ConnError::PeerClosed)));
}

#[test]
fn bad_version_and_a_reply_that_answers_another_request_are_typed_errors() {
    let (a, b) = Connection::pair(T).unwrap();
    a.send_raw(
        &RawMessage::new(
            Header {
                request: 1,
                flags: 0x6,
                size: 0,
            },
            vec![],
        ),
        &[],
    )
    .unwrap();
    assert!(matches!(b.recv(), Err(ConnError::BadVersion { .. })));

    a.send_reply(15, &Body::U64(3), &[]).unwrap();
    match b.recv_reply(1) {
        Err(ConnError::UnexpectedReply {
            expected: 1,
            message,
        }) => assert_eq!(message.header.request, 15),
        other => panic!("expected UnexpectedReply, got {other:?}"),
    }
    a.send(Header::request(1, 0, false), &[], &[]).unwrap();
    assert!(matches!(
        b.recv_reply(1),
        Err(ConnError::UnexpectedReply { .. })
    ));
    a.send_reply(1, &Body::U64(0x4000_0000), &[]).unwrap();
    assert_eq!(b.recv_reply(1).unwrap().u64(), Some(0x4000_0000));
}

#[test]
fn sending_to_a_closed_peer_is_peer_gone_not_a_signal() {
    let (a, b) = UnixStream::pair().unwrap();
    drop(b);
    let a = Connection::new(a, T);
    let err = a.send_request(1, &Body::Empty, false, &[]).unwrap_err();
    assert!(err.is_peer_gone(), "{err:?}");
    let _: Option<OwnedFd> = None;
    let _ = a.as_raw_fd();
}
