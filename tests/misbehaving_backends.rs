//! Back-ends that misbehave get the right verdict within the timeouts: one that never answers,
//! one that closes the socket, one that crashes. The doubles are real processes and sockets: the
//! crashing one is this test executable re-run in double mode.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vhu_conform::engine::{self, Outcome, RunOptions};
use vhu_conform::scenario;
use vhu_conform::target::TargetSpec;
use vhu_protocol::wire::payload::Body;
use vhu_protocol::{Connection, FrontendReq};

/// Serves GET_FEATURES (no bit 30, so no protocol negotiation) and then does `after` with the
/// first other message: the preflight succeeds, the scenario meets the misbehaviour.
fn serve(listener: UnixListener, after: fn(Connection)) {
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let conn = Connection::new(stream, Some(Duration::from_secs(30)));
            loop {
                let Ok(msg) = conn.recv() else { break };
                if msg.header.request == FrontendReq::GetFeatures as u32 {
                    let _ = conn.send_reply(1, &Body::U64(1 << 32), &[]);
                } else {
                    after(conn);
                    break;
                }
            }
        }
    });
}

fn opts() -> RunOptions {
    RunOptions {
        step_timeout: Duration::from_millis(500),
        scenario_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        strict: false,
        queue_size: None,
        host: Default::default(),
        keep_process: false,
    }
}

fn run(spec: &TargetSpec, id: &str) -> engine::ScenarioResult {
    let all = scenario::load_all(&[]).unwrap();
    let s = scenario::select(all, &[id.to_string()]);
    assert_eq!(s.len(), 1);
    let offer = engine::preflight(spec, &opts()).unwrap();
    let mut results = engine::run_suite(&s, spec, &offer, &opts(), &mut |_| {});
    results.remove(0)
}

fn socket_dir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("double.sock");
    (d, p)
}

#[test]
fn a_back_end_that_never_answers_fails_with_a_timeout_finding_in_bounded_time() {
    let (_d, path) = socket_dir();
    serve(UnixListener::bind(&path).unwrap(), |conn| {
        // Hold the connection open, say nothing.
        std::thread::sleep(Duration::from_secs(20));
        drop(conn);
    });
    let start = Instant::now();
    let r = run(&TargetSpec::Connect(path), "negotiation/full-session");
    assert_eq!(r.outcome, Outcome::Fail, "{r:?}");
    assert!(
        r.findings[0].summary.contains("no reply"),
        "{:?}",
        r.findings
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_back_end_that_closes_the_socket_fails_with_a_closed_finding() {
    let (_d, path) = socket_dir();
    serve(UnixListener::bind(&path).unwrap(), drop);
    let r = run(&TargetSpec::Connect(path), "negotiation/full-session");
    assert_eq!(r.outcome, Outcome::Fail, "{r:?}");
    assert!(r.findings[0].summary.contains("closed"), "{:?}", r.findings);
    assert!(!r.transcript.is_empty());
}

/// Not a test of its own: when `VHU_DOUBLE_SOCKET` is set this process becomes a back-end that
/// answers GET_FEATURES and aborts (SIGABRT) on any other message.
#[test]
fn crashing_double_entry() {
    let Ok(path) = std::env::var("VHU_DOUBLE_SOCKET") else {
        return;
    };
    let listener = UnixListener::bind(path).unwrap();
    for stream in listener.incoming().flatten() {
        let conn = Connection::new(stream, Some(Duration::from_secs(30)));
        while let Ok(msg) = conn.recv() {
            if msg.header.request == FrontendReq::GetFeatures as u32 {
                conn.send_reply(1, &Body::U64(1 << 32), &[]).unwrap();
            } else {
                std::process::abort();
            }
        }
    }
}

#[test]
fn a_back_end_that_crashes_fails_citing_the_signal_and_the_message() {
    let exe = std::env::current_exe().unwrap();
    let cmd = format!(
        "env VHU_DOUBLE_SOCKET={{socket}} {} --exact crashing_double_entry --nocapture",
        exe.display()
    );
    let start = Instant::now();
    let r = run(&TargetSpec::Spawn(cmd), "negotiation/full-session");
    assert_eq!(r.outcome, Outcome::Fail, "{r:?}");
    let text = format!("{:?}", r.findings);
    assert!(
        text.contains("signal 6") && text.contains("SIGABRT"),
        "{text}"
    );
    // One CRASH finding (R-CRASH-01, whatever the level); the check the crash interrupted
    // fails too, under its own rule.
    let crashes: Vec<_> = r.findings.iter().filter(|f| f.crash.is_some()).collect();
    assert_eq!(crashes.len(), 1, "one crash: {text}");
    assert_eq!(crashes[0].rule, "R-CRASH-01", "{text}");
    assert_eq!(
        crashes[0].level,
        vhu_conform::scenario::Level::Must,
        "{text}"
    );
    // Without REPLY_ACK nothing answers SET_OWNER, so the crash shows on the next round trip; the
    // transcript keeps the message that killed it.
    assert!(
        r.transcript.iter().any(|e| e.name == "SET_OWNER"),
        "{:?}",
        r.transcript
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// Serves GET_FEATURES forever; `keep` decides whether received fds are kept (leaked) or closed.
fn serve_features(listener: UnixListener, keep: bool) {
    std::thread::spawn(move || {
        let mut leaked = Vec::new();
        for stream in listener.incoming().flatten() {
            let conn = Connection::new(stream, Some(Duration::from_secs(30)));
            while let Ok(msg) = conn.recv() {
                if keep {
                    leaked.extend(msg.fds);
                }
                let _ = conn.send_reply(msg.header.request, &Body::U64(1 << 32), &[]);
            }
        }
    });
}

#[test]
fn the_fd_closure_probe_passes_a_back_end_that_closes_and_flags_one_that_keeps() {
    let (_d1, closing) = socket_dir();
    serve_features(UnixListener::bind(&closing).unwrap(), false);
    let r = run(
        &TargetSpec::Connect(closing),
        "robustness/fd-on-get-features",
    );
    assert_eq!(r.outcome, Outcome::Pass, "{r:?}");

    let (_d2, keeping) = socket_dir();
    serve_features(UnixListener::bind(&keeping).unwrap(), true);
    let r = run(
        &TargetSpec::Connect(keeping),
        "robustness/fd-on-get-features",
    );
    assert_eq!(r.outcome, Outcome::Warn, "{r:?}");
    assert_eq!(r.findings[0].rule, "R-WIRE-09");
}

#[test]
fn a_slow_back_end_is_stopped_by_the_scenario_deadline() {
    let (_d, path) = socket_dir();
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let conn = Connection::new(stream, Some(Duration::from_secs(30)));
            while let Ok(msg) = conn.recv() {
                // Each answer comes in time for the step timeout, but slowly.
                std::thread::sleep(Duration::from_millis(250));
                let _ = conn.send_reply(msg.header.request, &Body::U64(1 << 32), &[]);
            }
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let probes = "[[step]]\ndo = \"probe\"\n".repeat(20);
    std::fs::write(
        dir.path().join("slow.toml"),
        format!(
            "id = \"mine/slow\"\ntitle = \"t\"\nrules = [\"R-NEG-01\"]\ntimeout_ms = 1000\n{probes}"
        ),
    )
    .unwrap();
    let spec = TargetSpec::Connect(path);
    let s = scenario::select(
        scenario::load_all(&[dir.path().to_path_buf()]).unwrap(),
        &["mine/slow".to_string()],
    );
    let offer = engine::preflight(&spec, &opts()).unwrap();
    let start = Instant::now();
    let r = engine::run_suite(&s, &spec, &offer, &opts(), &mut |_| {}).remove(0);
    assert_eq!(r.outcome, Outcome::Fail, "{r:?}");
    assert!(
        r.findings[0].summary.contains("deadline"),
        "{:?}",
        r.findings
    );
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        start.elapsed()
    );
}
