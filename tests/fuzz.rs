//! `vhu-conform fuzz` and `replay` end to end, with real processes: the reference back-end passes,
//! each of its crash and leak fault modes is found and its saved reproducer replays the failure,
//! and a hostile back-end answering garbage never makes the harness panic.

use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use vhu_conform::fuzz::exec::{Limits, run_case};
use vhu_conform::fuzz::strategy::{Selection, case};
use vhu_conform::target::{Instance, TargetSpec};
use vhu_protocol::{Connection, Header};

const BIN: &str = env!("CARGO_BIN_EXE_vhu-conform");

fn mock(fault: Option<&str>) -> String {
    let fault = fault.map(|f| format!(" --fault {f}")).unwrap_or_default();
    format!("'{BIN}' mock-backend --socket-path {{socket}}{fault}")
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn fuzz(spawn: &str, cases: &str, seed: &str, out: &Path) -> Output {
    let out = out.to_str().unwrap();
    run(&[
        "fuzz",
        "--spawn",
        spawn,
        "--cases",
        cases,
        "--seed",
        seed,
        "--out",
        out,
        "--max-shrink-iters",
        "60",
        "--progress-secs",
        "0.2",
    ])
}

fn saved(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default()
}

#[test]
fn fuzzing_the_reference_backend_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let o = fuzz(&mock(None), "400", "7", dir.path());
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("400 cases in"), "{t}");
    assert!(t.contains("0 failures found, seed 0x7"), "{t}");
    assert!(
        t.contains("cases/s, 0 failures found"),
        "progress on stderr: {t}"
    );
    assert!(saved(dir.path()).is_empty());
}

/// Every crash- and leak-related fault mode of the reference back-end, with the rules the
/// reproducer may cite: an unknown code is R-ROB-01, except code 0, which has its own rule.
const FAULTS: &[(&str, &[&str])] = &[
    ("crash-on-bad-index", &["R-VRING-17"]),
    ("crash-on-unknown-code", &["R-ROB-01", "R-ROB-02"]),
    ("leak-fds", &["R-WIRE-09"]),
    ("exit-on-disconnect", &["R-ROB-09"]),
];

/// The rules a lying count breaks (`vhu_conform::fuzz::save::count_lie`, and R-WIRE-12 for a
/// payload where none belongs).
const COUNT_RULES: &[&str] = &[
    "R-MEM-01",
    "R-MEM-02",
    "R-WIRE-12",
    "R-CFG-07",
    "R-INFL-01",
    "R-INFL-03",
];

/// The rule a saved reproducer cites.
fn cited_rule(saved_text: &str) -> String {
    saved_text
        .lines()
        .find_map(|l| l.strip_prefix("rules = [\"")?.strip_suffix("\"]"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn each_crash_or_leak_fault_is_found_shrunk_saved_and_replayed() {
    for (fault, rules) in FAULTS {
        let dir = tempfile::tempdir().unwrap();
        let o = fuzz(&mock(Some(fault)), "500", "2", dir.path());
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{fault}: {t}");
        assert!(t.contains("1 failure found"), "{fault}: {t}");
        assert!(
            t.contains("rerun alone on a fresh back-end: fails again"),
            "{fault}: {t}"
        );
        let files = saved(dir.path());
        assert_eq!(files.len(), 1, "{fault}: {t}");
        let file = files[0].to_str().unwrap();
        let saved_text = std::fs::read_to_string(file).unwrap();
        assert!(
            rules.contains(&cited_rule(&saved_text).as_str()),
            "{fault}: {saved_text}"
        );
        assert!(saved_text.contains("#! case_number = "), "{saved_text}");

        let r = run(&["replay", file]);
        assert_eq!(r.status.code(), Some(1), "{fault} replay: {}", text(&r));
        assert!(text(&r).contains("REPRODUCED"), "{fault}: {}", text(&r));

        let clean = run(&["replay", file, "--spawn", &mock(None)]);
        assert_eq!(
            clean.status.code(),
            Some(0),
            "{fault} on a clean back-end: {}",
            text(&clean)
        );
    }
}

#[test]
fn lying_counts_crash_a_back_end_that_trusts_them_and_not_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let trusting = mock(Some("crash-on-lying-count"));
    let out = dir.path().to_str().unwrap();
    let o = run(&[
        "fuzz",
        "--spawn",
        &trusting,
        "--message",
        "counts",
        "--cases",
        "200",
        "--seed",
        "3",
        "--out",
        out,
        "--max-shrink-iters",
        "40",
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("SIGABRT") && t.contains("fails again"), "{t}");
    let files = saved(dir.path());
    assert_eq!(files.len(), 1, "{t}");
    let file = files[0].to_str().unwrap();
    let saved_text = std::fs::read_to_string(file).unwrap();
    let rule = cited_rule(&saved_text);
    assert!(COUNT_RULES.contains(&rule.as_str()), "{rule}: {saved_text}");
    let r = run(&["replay", file]);
    assert!(text(&r).contains("REPRODUCED"), "{}", text(&r));
    let clean = run(&["replay", file, "--spawn", &mock(None)]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));

    // The reference refuses or closes on every one of them, first on a new process or after
    // a normal setup, and stays healthy.
    let clean_dir = tempfile::tempdir().unwrap();
    let o = run(&[
        "fuzz",
        "--message",
        "counts",
        "--cases",
        "300",
        "--seed",
        "4",
        "--out",
        clean_dir.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

/// The line naming the case that found the failure, and the minimal case.
fn found_lines(t: &str) -> Vec<String> {
    t.lines()
        .filter(|l| l.contains("found by case") || l.contains("minimal case:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_failure_reported_is_the_same_whatever_the_number_of_workers() {
    let mut seen = vec![];
    for jobs in ["1", "2", "3"] {
        let dir = tempfile::tempdir().unwrap();
        let o = run(&[
            "fuzz",
            "--spawn",
            &mock(Some("crash-on-bad-index")),
            "--cases",
            "300",
            "--seed",
            "11",
            "--out",
            dir.path().to_str().unwrap(),
            "--max-shrink-iters",
            "30",
            "-j",
            jobs,
        ]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "-j {jobs}: {t}");
        assert!(t.contains(&format!("{jobs} worker")), "-j {jobs}: {t}");
        let lines = found_lines(&t);
        assert_eq!(lines.len(), 2, "-j {jobs}: {t}");
        seen.push((jobs, lines));
    }
    for (jobs, lines) in &seen[1..] {
        assert_eq!(lines, &seen[0].1, "-j {jobs} against -j 1");
    }
}

/// A spawn command that logs the pid of every back-end process it starts to `log`.
fn logged_mock(log: &Path) -> String {
    format!(
        "sh -c 'echo $$ >> {}; exec \"$0\" mock-backend --socket-path \"$1\"' '{BIN}' {{socket}}",
        log.display()
    )
}

#[test]
fn a_worker_keeps_its_process_while_healthy_unless_told_otherwise() {
    let processes = |extra: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("pids");
        let spawn = logged_mock(&log);
        let out = dir.path().join("out");
        let mut args = vec![
            "fuzz",
            "--spawn",
            &spawn,
            "--cases",
            "120",
            "--seed",
            "5",
            "--message",
            "SET_VRING_NUM",
            "--out",
            out.to_str().unwrap(),
            "-j",
            "2",
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(0), "{extra:?}: {}", text(&o));
        std::fs::read_to_string(&log).unwrap().lines().count()
    };
    // Two workers, a standby each, and one process per case that needs a process that served
    // nothing (a few in a hundred).
    let kept = processes(&[]);
    assert!((2..=30).contains(&kept), "{kept} processes for 120 cases");
    let fresh = processes(&["--fresh-process"]);
    assert!(
        fresh >= 120,
        "{fresh} processes for 120 cases on fresh processes"
    );
}

#[test]
fn a_saved_reproducer_runs_as_a_scenario_file() {
    let dir = tempfile::tempdir().unwrap();
    let o = fuzz(&mock(Some("crash-on-unknown-code")), "300", "5", dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let s = run(&[
        "--spawn",
        &mock(Some("crash-on-unknown-code")),
        "--scenarios",
        dir.path().to_str().unwrap(),
        "fuzz/*",
    ]);
    let t = text(&s);
    assert!(t.contains("the back-end process died"), "{t}");
    // A crash fails whatever the reproducer's level (R-CRASH-01), reported as CRASH.
    assert!(t.contains("CRASH") && t.contains("SIGABRT"), "{t}");
    assert!(t.contains("1 failed"), "{t}");
}

/// How the hostile back-end answers each request on one connection.
#[derive(Copy, Clone, Debug)]
enum Hostile {
    /// A reply header announcing 8 bytes, then 3.
    ShortPayload,
    /// A reply header announcing 4 GiB of payload.
    HugeSize,
    /// A well-sized reply carrying another request's code.
    WrongCode,
    /// A correct-looking reply with three eventfds attached.
    FdsWhereNoneBelong,
    /// Half a header, then the connection closes.
    Partial,
    /// Reads everything, answers nothing.
    Silence,
}

fn serve_hostile(listener: UnixListener) {
    let modes = [
        Hostile::ShortPayload,
        Hostile::HugeSize,
        Hostile::WrongCode,
        Hostile::FdsWhereNoneBelong,
        Hostile::Partial,
        Hostile::Silence,
    ];
    for (n, stream) in listener.incoming().enumerate() {
        let Ok(stream) = stream else { return };
        let mode = modes[n % modes.len()];
        std::thread::spawn(move || answer(Connection::new(stream, None), mode));
    }
}

fn answer(conn: Connection, mode: Hostile) {
    let efd = nix::sys::eventfd::EventFd::new().unwrap();
    while let Ok(m) = conn.recv_unchecked() {
        let code = m.header.request;
        let reply = |size: u32| Header::reply(code, size).to_bytes();
        let r = match mode {
            Hostile::ShortPayload => conn.send_bytes(&[&reply(8)[..], &[1, 2, 3]].concat(), &[]),
            Hostile::HugeSize => conn.send_bytes(&[&reply(u32::MAX)[..], &[0; 16]].concat(), &[]),
            Hostile::WrongCode => {
                let mut h = Header::reply(code.wrapping_add(7), 8).to_bytes().to_vec();
                h.extend_from_slice(&[0; 8]);
                conn.send_bytes(&h, &[])
            }
            Hostile::FdsWhereNoneBelong => {
                let fd = efd.as_fd();
                conn.send_bytes(&[&reply(8)[..], &[0; 8]].concat(), &[fd, fd, fd])
            }
            Hostile::Partial => {
                let _ = conn.send_bytes(&reply(8)[..6], &[]);
                return;
            }
            Hostile::Silence => Ok(()),
        };
        if r.is_err() {
            return;
        }
    }
}

#[test]
fn a_hostile_backend_never_makes_the_harness_panic() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("hostile.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || serve_hostile(listener));
    // The library path: every kind of case, each on connections answered with garbage.
    let spec = TargetSpec::Connect(sock.clone());
    let mut inst = Instance::start(&spec, Duration::from_secs(2)).unwrap();
    let limits = Limits {
        timeout: Duration::from_millis(150),
        settle: Duration::from_millis(20),
    };
    let strategy = case(&Selection::all());
    let mut runner = TestRunner::deterministic();
    let mut failures = 0;
    for n in 0..36u8 {
        let c = strategy.new_tree(&mut runner).unwrap().current();
        match run_case(&mut inst, &c, limits, n) {
            Ok(Some(_)) => failures += 1,
            Ok(None) => {}
            Err(e) => panic!("a hostile back-end is a finding, not a harness error: {e}"),
        }
    }
    assert_eq!(failures, 36, "garbage must never pass the oracle");
    // The command: exits with a verdict, never a panic.
    let o = run(&[
        "fuzz",
        "--backend",
        sock.to_str().unwrap(),
        "--cases",
        "10",
        "--timeout-ms",
        "150",
    ]);
    let t = text(&o);
    assert!(matches!(o.status.code(), Some(1 | 3)), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}
