//! The `vhu-mock-backend` program over real sockets: back-end program conventions, and malformed
//! input answered with an error or a closed connection, never a panic, with the next
//! connection served normally.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vhu_protocol::wire::payload::Body;
use vhu_protocol::{Connection, FrontendReq, Header, ProtocolFeatures, RawMessage};

const EXE: &str = env!("CARGO_BIN_EXE_vhu-mock-backend");
const T: Option<Duration> = Some(Duration::from_secs(2));

/// The process, its socket, and the directory that holds the socket (kept alive).
struct Backend(Child, PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("be.sock");
    let child = Command::new(EXE)
        .arg("--socket-path")
        .arg(&sock)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() {
        assert!(Instant::now() < deadline, "no socket");
        std::thread::sleep(Duration::from_millis(10));
    }
    Backend(child, sock, dir)
}

/// Connects, retrying while the socket file exists but is not yet listening (the back-end binds,
/// then listens: a connect between the two is refused).
fn connect(path: &Path) -> Connection {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Connection::new(s, T),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                assert!(
                    Instant::now() < deadline,
                    "{path:?} refuses connections: {e}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("connect {path:?}: {e}"),
        }
    }
}

/// A session with REPLY_ACK, so failures show as non-zero acks.
fn negotiated(path: &Path) -> Connection {
    let c = connect(path);
    c.send_request(FrontendReq::GetFeatures as u32, &Body::Empty, false, &[])
        .unwrap();
    c.recv_reply(1).unwrap();
    c.send_request(
        FrontendReq::SetProtocolFeatures as u32,
        &Body::U64(ProtocolFeatures::REPLY_ACK.bits()),
        false,
        &[],
    )
    .unwrap();
    c
}

fn works(path: &Path) {
    let c = connect(path);
    c.send_request(FrontendReq::GetFeatures as u32, &Body::Empty, false, &[])
        .unwrap();
    assert!(c.recv_reply(1).unwrap().u64().unwrap() & (1 << 30) != 0);
}

/// Sends `raw` on a fresh negotiated connection; returns the ack, or None if it closed.
fn ack_or_close(path: &Path, raw: RawMessage) -> Option<u64> {
    let c = negotiated(path);
    c.send_raw(&raw, &[]).unwrap();
    match c.recv() {
        Ok(m) => m.u64(),
        Err(e) => {
            assert!(e.is_peer_gone() || e.is_timeout(), "{e:?}");
            assert!(!e.is_timeout(), "the back-end neither answered nor closed");
            None
        }
    }
}

#[test]
fn malformed_messages_get_an_error_or_a_close_and_the_next_connection_works() {
    let be = start();
    let cases = [
        (
            "bad version",
            RawMessage::new(
                Header {
                    request: 1,
                    flags: 0x2,
                    size: 0,
                },
                vec![],
            ),
        ),
        (
            "unknown code",
            RawMessage::new(Header::request(46, 0, true), vec![]),
        ),
        (
            "short SET_FEATURES",
            RawMessage::new(Header::request(2, 4, true), vec![0; 4]),
        ),
        (
            "SET_VRING_NUM past the queues",
            RawMessage::new(
                Header::request(8, 8, true),
                [200u32.to_ne_bytes(), 128u32.to_ne_bytes()].concat(),
            ),
        ),
        (
            "SET_MEM_TABLE without fds",
            RawMessage::new(
                Header::request(5, 40, true),
                Body::MemTable(vec![Default::default()]).encode(),
            ),
        ),
        (
            "size field of 4 GiB",
            RawMessage::new(Header::request(2, u32::MAX, true), vec![0; 8]),
        ),
    ];
    for (what, raw) in cases {
        let ack = ack_or_close(&be.1, raw);
        assert!(ack != Some(0), "{what}: acked 0");
        works(&be.1);
    }
    assert!(be.0.id() > 0);
}

#[test]
fn too_many_fds_are_refused_and_the_back_end_keeps_serving() {
    let be = start();
    let c = negotiated(&be.1);
    let files: Vec<std::fs::File> = (0..12).map(|_| tempfile::tempfile().unwrap()).collect();
    let fds: Vec<_> = files.iter().map(std::os::fd::AsFd::as_fd).collect();
    let _ = c.send_request(FrontendReq::SetOwner as u32, &Body::Empty, true, &fds);
    let _ = c.recv();
    works(&be.1);
}

#[test]
fn print_capabilities_prints_json_and_creates_no_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("never.sock");
    let out = Command::new(EXE)
        .arg("--print-capabilities")
        .arg("--socket-path")
        .arg(&sock)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["type"], "block");
    assert!(!sock.exists());
}

#[test]
fn socket_path_and_fd_together_are_refused() {
    let out = Command::new(EXE)
        .args(["--socket-path", "/tmp/x.sock", "--fd", "3"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn an_inherited_connected_socket_is_served_with_fd() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    nix::fcntl::fcntl(
        &theirs,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let mut child = Command::new(EXE)
        .arg("--fd")
        .arg(fd.to_string())
        .spawn()
        .unwrap();
    drop(theirs);
    let c = Connection::new(ours, T);
    c.send_request(FrontendReq::GetFeatures as u32, &Body::Empty, false, &[])
        .unwrap();
    assert!(c.recv_reply(1).unwrap().u64().is_some());
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "{st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "--fd mode must exit when its front-end leaves"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
