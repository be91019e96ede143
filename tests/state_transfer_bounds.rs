//! Device state transfer against scripted fake back-ends (a thread on a real Unix socket, real
//! pipes): one that writes its state without end, one that never closes its end, one that never
//! reads the state loaded into it, and one that hands out its own channel. Each step ends
//! within its deadline, with a finding where the back-end is wrong, and leaves no thread
//! behind (counted in /proc/self/status). One test function, so no other test's threads are
//! counted.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhu_conform::engine::{self, Offer, Outcome, RunOptions, ScenarioResult};
use vhu_conform::scenario;
use vhu_conform::target::TargetSpec;
use vhu_protocol::wire::payload::Body;
use vhu_protocol::{Connection, FrontendReq, ProtocolFeatures, VirtioFeatures};

/// What the fake does with the fd of SET_DEVICE_STATE_FD(save).
#[derive(Clone, Copy)]
enum Save {
    /// Writes until the harness closes its end.
    Endless,
    /// Writes a little, keeps the fd open, never closes it.
    NeverCloses,
    /// Writes this many bytes and closes.
    Bytes(usize),
    /// Returns its own pipe's read end (bit 8 clear) and writes this many bytes into it.
    OwnChannel(usize),
}

/// What the fake does with the fd of SET_DEVICE_STATE_FD(load).
#[derive(Clone, Copy)]
enum Load {
    /// Keeps the fd, never reads it.
    NeverReads,
}

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

/// Serves one connection: negotiation (bit 30, DEVICE_STATE), SET_DEVICE_STATE_FD as `save`
/// and `load` say, CHECK_DEVICE_STATE = 0. Every fd it is given is held until `release`.
fn fake(
    listener: UnixListener,
    save: Save,
    load: Load,
    release: mpsc::Receiver<()>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let Some(stream) = accept(&listener) else {
            return;
        };
        let conn = Connection::new(stream, Some(Duration::from_secs(30)));
        let mut held: Vec<OwnedFd> = vec![];
        while let Ok(m) = conn.recv() {
            let code = m.header.request;
            let reply = |body: Body, fds: &[std::os::fd::BorrowedFd<'_>]| {
                let _ = conn.send_reply(code, &body, fds);
            };
            match FrontendReq::from_code(code) {
                Ok(FrontendReq::GetFeatures) => reply(
                    Body::U64(
                        (VirtioFeatures::PROTOCOL_FEATURES | VirtioFeatures::VERSION_1).bits(),
                    ),
                    &[],
                ),
                Ok(FrontendReq::GetProtocolFeatures) => {
                    reply(Body::U64(ProtocolFeatures::DEVICE_STATE.bits()), &[]);
                }
                Ok(FrontendReq::CheckDeviceState) => reply(Body::U64(0), &[]),
                Ok(FrontendReq::SetDeviceStateFd) => {
                    let direction = m.payload.first().copied().unwrap_or(0);
                    let fd = m.fds.into_iter().next().unwrap();
                    if direction == 1 {
                        reply(Body::U64(0x100), &[]);
                        match load {
                            Load::NeverReads => held.push(fd),
                        }
                        continue;
                    }
                    match save {
                        Save::OwnChannel(n) => {
                            drop(fd);
                            let (r, w) = nix::unistd::pipe().unwrap();
                            reply(Body::U64(0), &[r.as_fd()]);
                            drop(r);
                            std::fs::File::from(w).write_all(&vec![3u8; n]).unwrap();
                        }
                        Save::Bytes(n) => {
                            reply(Body::U64(0x100), &[]);
                            std::fs::File::from(fd).write_all(&vec![5u8; n]).unwrap();
                        }
                        Save::NeverCloses => {
                            reply(Body::U64(0x100), &[]);
                            let mut f = std::fs::File::from(fd);
                            f.write_all(b"some state, and then nothing").unwrap();
                            held.push(f.into());
                        }
                        Save::Endless => {
                            reply(Body::U64(0x100), &[]);
                            let mut f = std::fs::File::from(fd);
                            let chunk = vec![9u8; 1 << 16];
                            // Until the harness closes its end (EPIPE).
                            while f.write_all(&chunk).is_ok() {}
                        }
                    }
                }
                _ if m.header.need_reply() => reply(Body::U64(0), &[]),
                _ => {}
            }
        }
        let _ = release.recv();
        drop(held);
    })
}

/// The harness's connection, if it comes within ten seconds.
fn accept(listener: &UnixListener) -> Option<std::os::unix::net::UnixStream> {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok((stream, _)) = listener.accept() {
            stream.set_nonblocking(false).unwrap();
            return Some(stream);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn opts() -> RunOptions {
    RunOptions {
        step_timeout: Duration::from_millis(500),
        scenario_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(5),
        ..RunOptions::default()
    }
}

/// Runs `steps` against a fake; returns the result, how long it took and the threads it left
/// (counted while the fake still holds every fd it got).
fn run(steps: &str, save: Save, load: Load) -> (ScenarioResult, Duration, usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let (release, released) = mpsc::channel();
    let before = threads();
    let backend = fake(listener, save, load, released);
    let text = format!(
        "id = \"test/state-bounds\"\ntitle = \"bounded state transfer\"\nrules = [\"R-MIG-06\"]\n\
         requires = {{ protocol = [\"DEVICE_STATE\"] }}\n\n[[step]]\ndo = \"negotiate\"\n{steps}"
    );
    let s = scenario::parse(Path::new("state-bounds.toml"), &text).unwrap();
    let offer = Offer {
        features: (VirtioFeatures::PROTOCOL_FEATURES | VirtioFeatures::VERSION_1).bits(),
        protocol: ProtocolFeatures::DEVICE_STATE.bits(),
        ..Offer::default()
    };
    let start = Instant::now();
    let r = engine::run_scenario(&s, &TargetSpec::Connect(path), None, &offer, &opts());
    let took = start.elapsed();
    // The fake is still alive, holding its fds: any thread beyond it is the harness's.
    let left = threads().saturating_sub(before + 1);
    release.send(()).unwrap();
    backend.join().unwrap();
    (r, took, left)
}

const SAVE: &str = "\n[[step]]\ndo = \"save_state\"\n";
const SAVE_LOAD: &str = "\n[[step]]\ndo = \"save_state\"\n\n[[step]]\ndo = \"load_state\"\n";

#[test]
fn hostile_state_transfers_end_in_findings_within_the_deadline_and_leave_no_thread() {
    // The step's deadline: the step timeout, at least two seconds.
    let bound = Duration::from_secs(2) + Duration::from_secs(3);

    let (r, took, left) = run(SAVE, Save::Endless, Load::NeverReads);
    assert_eq!(r.outcome, Outcome::Fail, "endless writer: {r:?}");
    let f = &r.findings[0];
    assert!(
        f.summary.contains("exceeds") || f.summary.contains("never ended"),
        "{f:?}"
    );
    assert!(took < bound, "endless writer took {took:?}");
    assert_eq!(left, 0, "endless writer: threads left behind");

    let (r, took, left) = run(SAVE, Save::NeverCloses, Load::NeverReads);
    assert_eq!(r.outcome, Outcome::Fail, "never closes: {r:?}");
    assert!(r.findings[0].summary.contains("never ended"), "{r:?}");
    assert!(
        r.findings[0].received.contains("28 bytes read"),
        "{:?}",
        r.findings[0]
    );
    assert!(took < bound, "never closes took {took:?}");
    assert_eq!(left, 0, "never closes: threads left behind");

    // 1 MiB saved, then loaded into a back-end that never reads: more than a pipe holds.
    let (r, took, left) = run(SAVE_LOAD, Save::Bytes(1 << 20), Load::NeverReads);
    assert_eq!(r.outcome, Outcome::Fail, "never reads: {r:?}");
    assert!(
        r.findings[0].summary.contains("did not read the state"),
        "{r:?}"
    );
    assert!(took < bound, "never reads took {took:?}");
    assert_eq!(left, 0, "never reads: threads left behind");

    // A back-end that returns its own channel is read through it.
    let (r, _, left) = run(SAVE, Save::OwnChannel(100_000), Load::NeverReads);
    assert_eq!(r.outcome, Outcome::Pass, "own channel: {r:?}");
    assert_eq!(left, 0);
}
