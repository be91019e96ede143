//! The built-in hygiene scenarios judge a real process's `/proc/<pid>/fd`: a back-end that keeps
//! every fd it receives is caught, one that closes them passes, and without a process to sample
//! the scenarios are skipped with the reason. The doubles are this test executable re-run.

use std::os::unix::net::UnixListener;
use std::time::Duration;

use vhu_conform::engine::{self, Outcome, RunOptions, ScenarioResult};
use vhu_conform::scenario;
use vhu_conform::target::TargetSpec;
use vhu_protocol::wire::payload::Body;
use vhu_protocol::{Connection, FrontendReq};

/// Not a test of its own: with `VHU_DOUBLE_SOCKET` set this process becomes a back-end that
/// answers GET_FEATURES (no protocol features, so no acks are due) and keeps every fd it
/// receives when `VHU_DOUBLE_LEAK` is set, closes them otherwise.
#[test]
fn fd_keeping_double_entry() {
    let Ok(path) = std::env::var("VHU_DOUBLE_SOCKET") else {
        return;
    };
    let leak = std::env::var_os("VHU_DOUBLE_LEAK").is_some();
    let listener = UnixListener::bind(path).unwrap();
    let mut kept = Vec::new();
    for stream in listener.incoming().flatten() {
        let conn = Connection::new(stream, None);
        while let Ok(msg) = conn.recv() {
            if msg.header.request == FrontendReq::GetFeatures as u32 {
                conn.send_reply(1, &Body::U64(1 << 32), &[]).unwrap();
            }
            if leak {
                kept.extend(msg.fds);
            }
        }
    }
}

fn opts() -> RunOptions {
    RunOptions {
        step_timeout: Duration::from_millis(1000),
        scenario_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(5),
        strict: false,
        queue_size: None,
        host: Default::default(),
        keep_process: false,
    }
}

fn run(spec: &TargetSpec, id: &str) -> ScenarioResult {
    let s = scenario::select(scenario::load_all(&[]).unwrap(), &[id.to_string()]);
    assert_eq!(s.len(), 1, "{id}");
    let offer = engine::preflight(spec, &opts()).unwrap();
    engine::run_suite(&s, spec, &offer, &opts(), &mut |_| {}).remove(0)
}

fn double(leak: bool) -> TargetSpec {
    let exe = std::env::current_exe().unwrap();
    let env = if leak { "VHU_DOUBLE_LEAK=1 " } else { "" };
    TargetSpec::Spawn(format!(
        "env {env}VHU_DOUBLE_SOCKET={{socket}} {} --exact fd_keeping_double_entry --nocapture",
        exe.display()
    ))
}

#[test]
fn a_back_end_keeping_replaced_call_fds_is_flagged_under_r_rob_07() {
    let r = run(&double(true), "robustness/call-fd-flood");
    assert_eq!(
        r.outcome,
        Outcome::Warn,
        "a robustness finding warns: {r:?}"
    );
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert_eq!(r.findings[0].rule, "R-ROB-07");
    assert!(
        r.findings[0].summary.contains("fds grew"),
        "{:?}",
        r.findings
    );
}

#[test]
fn a_back_end_keeping_replaced_region_fds_is_flagged_by_the_table_replacement_check() {
    // Kept fds are a robustness finding (R-WIRE-09 is ROB in the checklist): a warning, and a
    // failure under --strict.
    let r = run(&double(true), "memory/table-replace-unmaps");
    assert_eq!(r.outcome, Outcome::Warn, "{r:?}");
    assert_eq!(r.findings[0].rule, "R-WIRE-09", "{:?}", r.findings);
    let spec = double(true);
    let strict = RunOptions {
        strict: true,
        ..opts()
    };
    let s = scenario::select(
        scenario::load_all(&[]).unwrap(),
        &["memory/table-replace-unmaps".to_string()],
    );
    let offer = engine::preflight(&spec, &strict).unwrap();
    let r = engine::run_suite(&s, &spec, &offer, &strict, &mut |_| {}).remove(0);
    assert_eq!(r.outcome, Outcome::Fail, "{r:?}");
}

#[test]
fn a_back_end_closing_what_it_receives_passes_both_hygiene_checks() {
    for id in ["robustness/call-fd-flood", "memory/table-replace-unmaps"] {
        let r = run(&double(false), id);
        assert_eq!(r.outcome, Outcome::Pass, "{id}: {r:?}");
    }
}

#[test]
fn without_a_spawned_process_hygiene_scenarios_are_skipped_with_the_reason() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("b.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let conn = Connection::new(stream, Some(Duration::from_secs(10)));
            while let Ok(msg) = conn.recv() {
                if msg.header.request == FrontendReq::GetFeatures as u32 {
                    let _ = conn.send_reply(1, &Body::U64(1 << 32), &[]);
                }
            }
        }
    });
    let r = run(&TargetSpec::Connect(path), "robustness/call-fd-flood");
    match &r.outcome {
        Outcome::Skip { reason } => assert!(reason.contains("--spawn"), "{reason}"),
        other => panic!("expected a skip, got {other:?}"),
    }
}
