//! Values a back-end sends are never trusted: a scripted fake back-end (a thread on a real
//! socketpair, real memfds and pipes) answers GET_INFLIGHT_FD with absurd descriptions, floods
//! the back-end channel without reading its acks, or stops reading the main socket. Each is a
//! typed back-end fault in bounded time, never a panic (these tests run in debug builds, where
//! overflowing arithmetic would panic) or a hang.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vhu_mock_frontend::inflight::{MAX_INFLIGHT_SIZE, split_area_size};
use vhu_mock_frontend::{Session, SessionError, SessionOptions};
use vhu_protocol::wire::payload::{Body, InflightDesc};
use vhu_protocol::{BackendReq, Connection, FrontendReq, Header};

const T: Option<Duration> = Some(Duration::from_secs(2));

fn session(conn: Connection) -> Session {
    Session::new(
        conn,
        SessionOptions {
            reply_timeout: Duration::from_millis(500),
            auto_need_reply: true,
        },
    )
}

fn memfd(len: u64) -> OwnedFd {
    let f = memfd::MemfdOptions::default()
        .create("fake-inflight")
        .unwrap()
        .into_file();
    f.set_len(len).unwrap();
    f.into()
}

/// What the fake back-end attaches to its GET_INFLIGHT_FD answer.
enum Attach {
    Memfd(u64),
    Pipe,
    Nothing,
    TwoMemfds,
}

/// Asks GET_INFLIGHT_FD of a fake back-end that answers `(mmap_offset, mmap_size)` with `attach`.
fn ask(offset: u64, size: u64, attach: Attach) -> Result<(), SessionError> {
    let (a, b) = Connection::pair(T).unwrap();
    let backend = std::thread::spawn(move || {
        let m = b.recv().unwrap();
        assert_eq!(m.header.request, FrontendReq::GetInflightFd as u32);
        let Ok(Body::Inflight(d)) = m.body(FrontendReq::GetInflightFd.reply_body()) else {
            panic!("not an inflight request");
        };
        let reply = Body::Inflight(InflightDesc {
            mmap_offset: offset,
            mmap_size: size,
            ..d
        });
        let fds: Vec<OwnedFd> = match attach {
            Attach::Memfd(len) => vec![memfd(len)],
            Attach::TwoMemfds => vec![memfd(8192), memfd(8192)],
            Attach::Pipe => {
                let (r, w) = nix::unistd::pipe().unwrap();
                vec![r, w].into_iter().take(1).collect()
            }
            Attach::Nothing => vec![],
        };
        let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
        b.send_reply(m.header.request, &reply, &borrowed).unwrap();
    });
    let mut s = session(a);
    let r = s.get_inflight_fd(1, 128).map(|buf| {
        // A usable buffer: its whole area can be read.
        let mut all = vec![0u8; buf.desc().mmap_size as usize];
        buf.read(0, &mut all).unwrap();
    });
    backend.join().unwrap();
    r
}

fn assert_bad_reply(r: Result<(), SessionError>, what: &str, wanted: &str) {
    match r {
        Err(e @ SessionError::BadReply { .. }) => {
            assert!(e.is_backend_fault());
            assert_eq!(e.during(), Some(FrontendReq::GetInflightFd));
            let SessionError::BadReply { reason, .. } = &e else {
                unreachable!()
            };
            assert!(reason.to_string().contains(wanted), "{what}: {reason}");
        }
        other => panic!("{what}: not a bad reply: {other:?}"),
    }
}

#[test]
fn absurd_inflight_descriptions_are_bad_replies_not_panics() {
    let needed = split_area_size(1, 128);
    let cases = [
        ("u64::MAX + u64::MAX", u64::MAX, u64::MAX, "overflows"),
        ("offset u64::MAX", u64::MAX, needed, "overflows"),
        ("size u64::MAX", 0, u64::MAX, "exceeds the bound"),
        (
            "past the cap",
            0,
            MAX_INFLIGHT_SIZE + 1,
            "exceeds the bound",
        ),
        (
            "offset past the end of the fd",
            1 << 62,
            needed,
            "past the end of the fd",
        ),
        (
            "size past the end of the fd",
            0,
            1 << 20,
            "past the end of the fd",
        ),
        ("zero size", 0, 0, "mmap_size is 0"),
        ("too small for the queue", 0, 64, "smaller than"),
    ];
    for (what, offset, size, wanted) in cases {
        assert_bad_reply(ask(offset, size, Attach::Memfd(8192)), what, wanted);
    }
}

#[test]
fn an_inflight_answer_needs_exactly_one_regular_file() {
    let needed = split_area_size(1, 128);
    assert_bad_reply(ask(0, needed, Attach::Nothing), "no fd", "0 fds");
    assert_bad_reply(ask(0, needed, Attach::TwoMemfds), "two fds", "2 fds");
    assert_bad_reply(ask(0, needed, Attach::Pipe), "a pipe", "not a regular file");
}

#[test]
fn a_sane_inflight_answer_is_a_usable_buffer() {
    let needed = split_area_size(1, 128);
    ask(0, needed, Attach::Memfd(needed)).unwrap();
    ask(4096, needed, Attach::Memfd(4096 + needed)).unwrap();
}

#[test]
fn a_back_end_that_floods_the_channel_and_never_reads_its_acks_cannot_hang_the_session() {
    let (a, b) = Connection::pair(T).unwrap();
    let mut s = session(a);
    let backend = std::thread::spawn(move || {
        let m = b.recv().unwrap();
        assert_eq!(m.header.request, FrontendReq::SetBackendReqFd as u32);
        let ch = Connection::new(
            UnixStream::from(m.fds.into_iter().next().unwrap()),
            Some(Duration::from_millis(500)),
        );
        // NEED_REPLY requests, acks never read: the front-end's acks fill the socket buffer.
        let start = Instant::now();
        let mut sent = 0u64;
        while start.elapsed() < Duration::from_secs(3) {
            let h = Header::request(BackendReq::ConfigChangeMsg as u32, 0, true);
            if ch.send(h, &[], &[]).is_err() {
                break;
            }
            sent += 1;
        }
        (sent, b, ch)
    });
    s.set_backend_req_fd().unwrap();
    // Let the acks pile up, then drop the session: it joins the channel's thread.
    std::thread::sleep(Duration::from_millis(800));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let start = Instant::now();
        let recorded = s.channel().map(|c| c.requests().len()).unwrap_or(0);
        drop(s);
        tx.send((start.elapsed(), recorded)).unwrap();
    });
    let (took, recorded) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("dropping the session hung on the back-end channel");
    assert!(took < Duration::from_secs(2), "drop took {took:?}");
    let (sent, _b, _ch) = backend.join().unwrap();
    assert!(recorded > 0 && sent > 0, "{recorded} recorded of {sent}");
}

#[test]
fn a_back_end_that_stops_reading_makes_a_request_fail_as_stalled_in_bounded_time() {
    let (a, _b) = Connection::pair(Some(Duration::from_millis(200))).unwrap();
    let mut s = session(a);
    let start = Instant::now();
    let err = loop {
        // SET_CONFIG without REPLY_ACK needs no reply: only the send can block.
        match s.set_config(0, 0, &[0xa5; 256]) {
            Ok(_) => assert!(start.elapsed() < Duration::from_secs(10), "never stalled"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, SessionError::Stalled { .. }),
        "not stalled: {err:?}"
    );
    assert!(err.is_backend_fault());
    assert_eq!(err.during(), Some(FrontendReq::SetConfig));
    assert!(start.elapsed() < Duration::from_secs(10));
}
