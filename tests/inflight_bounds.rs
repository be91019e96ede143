//! The built-in inflight scenario against a scripted fake back-end (a thread on a real Unix
//! socket, a real memfd) whose GET_INFLIGHT_FD answer is absurd: an offset that overflows when
//! the harness adds to it, a size past the end of the fd, a size of u64::MAX, a pipe for a
//! memfd. Each is a finding citing R-INFL-01 (a failed scenario), never a panic (this runs in
//! debug builds) nor a harness error.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use vhu_conform::engine::{self, Offer, Outcome, RunOptions, ScenarioResult};
use vhu_conform::scenario;
use vhu_conform::target::TargetSpec;
use vhu_protocol::wire::payload::{Body, InflightDesc};
use vhu_protocol::{Connection, FrontendReq, ProtocolFeatures, VirtioFeatures};

const FEATURES: u64 = (1 << 30) | (1 << 32);

#[derive(Clone, Copy)]
enum Fd {
    Memfd(u64),
    Pipe,
}

/// Serves one connection: negotiation (bit 30, INFLIGHT_SHMFD), GET_INFLIGHT_FD answered with
/// `(mmap_offset, mmap_size)` and `fd`.
fn fake(listener: UnixListener, offset: u64, size: u64, fd: Fd) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Some(stream) = accept(&listener) else {
            return;
        };
        let conn = Connection::new(stream, Some(Duration::from_secs(30)));
        while let Ok(m) = conn.recv() {
            let code = m.header.request;
            match FrontendReq::from_code(code) {
                Ok(FrontendReq::GetFeatures) => {
                    let _ = conn.send_reply(code, &Body::U64(FEATURES), &[]);
                }
                Ok(FrontendReq::GetProtocolFeatures) => {
                    let pf = ProtocolFeatures::INFLIGHT_SHMFD.bits();
                    let _ = conn.send_reply(code, &Body::U64(pf), &[]);
                }
                Ok(FrontendReq::GetInflightFd) => {
                    let Ok(Body::Inflight(d)) = m.body(FrontendReq::GetInflightFd.reply_body())
                    else {
                        panic!("not an inflight request");
                    };
                    let body = Body::Inflight(InflightDesc {
                        mmap_offset: offset,
                        mmap_size: size,
                        ..d
                    });
                    let fd: OwnedFd = match fd {
                        Fd::Memfd(len) => {
                            let f = memfd::MemfdOptions::default()
                                .create("fake-inflight")
                                .unwrap()
                                .into_file();
                            f.set_len(len).unwrap();
                            f.into()
                        }
                        Fd::Pipe => nix::unistd::pipe().unwrap().0,
                    };
                    let _ = conn.send_reply(code, &body, &[fd.as_fd()]);
                }
                _ if m.header.need_reply() => {
                    let _ = conn.send_reply(code, &Body::U64(0), &[]);
                }
                _ => {}
            }
        }
    })
}

/// The harness's connection, if it comes within ten seconds.
fn accept(listener: &UnixListener) -> Option<std::os::unix::net::UnixStream> {
    listener.set_nonblocking(true).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok((stream, _)) = listener.accept() {
            stream.set_nonblocking(false).unwrap();
            return Some(stream);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn run(offset: u64, size: u64, fd: Fd) -> ScenarioResult {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let backend = fake(UnixListener::bind(&path).unwrap(), offset, size, fd);
    let all = scenario::load_all(&[]).unwrap();
    let s = scenario::select(all, &["inflight/bookkeeping".to_string()]);
    assert_eq!(s.len(), 1);
    let offer = Offer {
        features: FEATURES | VirtioFeatures::VERSION_1.bits(),
        protocol: ProtocolFeatures::INFLIGHT_SHMFD.bits(),
        device: Some(vhu_conform::device::DeviceType::Block),
        ..Offer::default()
    };
    let opts = RunOptions {
        step_timeout: Duration::from_millis(500),
        scenario_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(5),
        ..RunOptions::default()
    };
    let r = engine::run_scenario(&s[0], &TargetSpec::Connect(path), None, &offer, &opts);
    backend.join().unwrap();
    r
}

#[test]
fn absurd_inflight_answers_are_findings_not_panics_or_harness_errors() {
    let cases = [
        // offset + size is exactly u64::MAX: the old `mmap_offset + at` overflowed.
        ("offset at the top", u64::MAX - 4096, 4096, Fd::Memfd(8192)),
        ("u64::MAX size", 0, u64::MAX, Fd::Memfd(8192)),
        ("size past the fd", 0, 1 << 24, Fd::Memfd(8192)),
        ("offset past i64", 1 << 63, 4096, Fd::Memfd(8192)),
        ("too small", 0, 16, Fd::Memfd(8192)),
        ("a pipe", 0, 4096, Fd::Pipe),
    ];
    for (what, offset, size, fd) in cases {
        let r = run(offset, size, fd);
        assert_eq!(r.outcome, Outcome::Fail, "{what}: {r:?}");
        assert!(
            r.findings.iter().any(|f| f.rule == "R-INFL-01"),
            "{what}: {:?}",
            r.findings
        );
    }
}
