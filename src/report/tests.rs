//! The reporters fed a fixed run through the event stream, as the engine feeds them: what
//! each format shows, and snapshots of the human output, the JSON report and JUnit XML
//! (`src/report/snapshots/`; `cargo insta review` after an intended change). The results are
//! built here with zero durations, so nothing in a snapshot depends on the machine.

use vhu_mock_frontend::transcript::{Channel, Direction, Entry};

use super::*;
use crate::device::{DeviceSource, DeviceType};
use crate::engine::{Crash, Finding, Offer, Outcome, RunSummary, ScenarioResult};
use crate::exit_code::ExitPolicy;
use crate::expect::{Applied, Expected, Verdict};
use crate::rules::{RuleId, id};
use crate::scenario::Level;

fn transcript(messages: usize) -> Vec<Entry> {
    (0..messages as u64)
        .map(|seq| Entry {
            seq,
            at_us: seq * 100,
            channel: Channel::Main,
            direction: if seq % 2 == 0 {
                Direction::ToBackend
            } else {
                Direction::FromBackend
            },
            code: 1,
            name: format!("MSG_{seq}"),
            flags: 1,
            size: 0,
            fds: 0,
            decoded: String::new(),
        })
        .collect()
}

fn finding(rule: RuleId, level: Level) -> Finding {
    Finding {
        rule,
        level,
        summary: "step 3: ack 0 for a region that does not exist".into(),
        sent: "REM_MEM_REG".into(),
        received: "ack 0".into(),
        expected: "a non-zero ack".into(),
        crash: None,
    }
}

fn result(id: &str, outcome: Outcome, messages: usize) -> ScenarioResult {
    let findings = match outcome {
        Outcome::Fail => vec![finding(id::R_MEM_11, Level::Must)],
        Outcome::Warn => vec![finding(id::R_ROB_08, Level::Rob)],
        _ => vec![],
    };
    ScenarioResult {
        id: id.into(),
        title: format!("the title of {id}"),
        rules: vec![id::R_MEM_11],
        checked_rules: vec![id::R_MEM_11],
        level: Level::Must,
        source: format!("scenarios/{id}.toml"),
        outcome,
        findings,
        notes: vec![],
        duration_ms: 0,
        transcript: transcript(messages),
        expectation: None,
    }
}

fn expected(mut r: ScenarioResult, outcome: Expected, verdict: Verdict) -> ScenarioResult {
    r.expectation = Some(Applied {
        expected: outcome,
        reason: "upstream bug 42".into(),
        verdict,
    });
    r
}

/// One of each: pass, fail, crash, warning, skip, harness error, expected failure, unexpected
/// pass.
fn fixture() -> Vec<ScenarioResult> {
    let mut crash = result("descriptors/next-loop", Outcome::Fail, 3);
    crash.findings = vec![Finding {
        crash: Some(Crash {
            signal: 11,
            signal_name: "SIGSEGV".into(),
            stderr_tail: "segfault at 0".into(),
        }),
        summary: "the back-end died by SIGSEGV".into(),
        ..finding(id::R_CRASH_01, Level::Must)
    }];
    let mut warn = result("robustness/call-fd-flood", Outcome::Warn, 1);
    warn.notes = vec!["the back-end closed the connection after the 64th call fd".into()];
    vec![
        result("memory/add-rem-region", Outcome::Pass, 2),
        result("memory/rem-wrong-size", Outcome::Fail, 14),
        crash,
        warn,
        result(
            "shmem/get-shmem-config",
            Outcome::Skip {
                reason: "back-end does not offer protocol bit 20 (SHMEM)".into(),
            },
            0,
        ),
        result(
            "log/too-small",
            Outcome::Error {
                reason: "cannot create a memfd".into(),
            },
            0,
        ),
        expected(
            result("memory/rem-then-re-add", Outcome::Fail, 2),
            Expected::Fail,
            Verdict::Xfail,
        ),
        expected(
            result("memory/rem-unknown-region", Outcome::Pass, 2),
            Expected::Fail,
            Verdict::Xpass,
        ),
    ]
}

fn offer() -> Offer {
    Offer {
        features: 0x1_7000_0000,
        protocol: 0x8fbf,
        device: Some(DeviceType::Block),
        device_source: Some(DeviceSource::Option),
        ..Offer::default()
    }
}

/// The summary the engine would give, with the rule table cut to the rules the fixture cites
/// (so a new rule in spec/rules.toml changes no snapshot).
fn summary(results: &[ScenarioResult], policy: ExitPolicy) -> RunSummary {
    let stale = vec![crate::expect::Entry {
        scenario: "gone/*".into(),
        outcome: Expected::Skip,
        reason: "removed upstream".into(),
    }];
    let cited = [id::R_MEM_11, id::R_ROB_08, id::R_CRASH_01];
    let mut rules = crate::rules::coverage(&[], Some(results));
    rules.retain(|c| cited.contains(&c.rule.id));
    RunSummary::new(results, rules, stale, policy)
}

/// Feeds `reporter` the run of `results` as the engine would: started, each scenario (started
/// unless skipped), finished.
fn feed(reporter: &mut dyn Reporter, results: &[ScenarioResult], summary: &RunSummary) {
    let offer = offer();
    let mut events = vec![RunEvent::RunStarted {
        total: results.len(),
        offer: &offer,
    }];
    for (index, r) in results.iter().enumerate() {
        if !matches!(r.outcome, Outcome::Skip { .. }) {
            events.push(RunEvent::ScenarioStarted { index, id: &r.id });
        }
        events.push(RunEvent::scenario_done(index, r));
    }
    events.push(RunEvent::RunFinished(summary));
    for e in &events {
        reporter.on_event(e).unwrap();
    }
}

fn human(results: &[ScenarioResult], show_rules: bool) -> String {
    let mut out = Vec::new();
    let mut h = Human::new(&mut out, false).show_rules(show_rules);
    feed(&mut h, results, &summary(results, ExitPolicy::default()));
    String::from_utf8(out).unwrap()
}

fn json_of(results: &[ScenarioResult]) -> serde_json::Value {
    let mut out = Vec::new();
    feed(
        &mut JsonReporter::new(&mut out),
        results,
        &summary(results, ExitPolicy::default()),
    );
    serde_json::from_slice(&out).unwrap()
}

#[test]
fn a_failure_shows_its_finding_and_the_last_twelve_messages() {
    let text = details(&result("memory/x", Outcome::Fail, 30), false);
    assert!(text.contains("R-MEM-11") && text.contains("expected: a non-zero ack"));
    assert!(text.contains("transcript (last 12 messages)"), "{text}");
    assert!(
        text.contains("MSG_29") && !text.contains("MSG_17 "),
        "{text}"
    );
}

#[test]
fn the_json_report_is_versioned_and_keeps_whole_transcripts() {
    let results = [
        result("a/pass", Outcome::Pass, 2),
        result("a/fail", Outcome::Fail, 30),
    ];
    let v = json_of(&results);
    assert_eq!(v["schema_version"], JSON_SCHEMA_VERSION);
    assert_eq!(v["offer"]["device"], "block", "{v}");
    assert_eq!(v["totals"]["fail"], 1);
    assert_eq!(v["results"][1]["outcome"], "fail");
    assert_eq!(v["results"][1]["level"], "must");
    assert_eq!(v["results"][1]["transcript"].as_array().unwrap().len(), 30);
    // The failed scenario's finding cites R-MEM-11: the rule table says so.
    let rules = v["rules"].as_array().unwrap();
    let mem11 = rules.iter().find(|r| r["id"] == "R-MEM-11").unwrap();
    assert_eq!(mem11["status"], "checked_fail");
}

#[test]
fn junit_marks_failures_and_errors_and_keeps_warning_findings() {
    let xml = junit(&fixture());
    assert!(
        xml.contains("<failure") && xml.contains("R-MEM-11"),
        "{xml}"
    );
    assert!(
        xml.contains("<error") && xml.contains("cannot create a memfd"),
        "{xml}"
    );
    assert!(xml.contains("type=\"crash\""), "{xml}");
    assert!(
        xml.contains("<skipped") && xml.contains("protocol bit 20"),
        "{xml}"
    );
    assert!(xml.contains("expected failure: upstream bug 42"), "{xml}");
    assert!(xml.contains("<system-out>"), "{xml}");
}

#[test]
fn the_human_recap_counts_every_outcome_and_lists_what_needs_a_look() {
    let text = human(&fixture(), true);
    assert!(
        text.contains("2 passed, 2 failed, 1 warned, 1 skipped, 1 errors, 1 expected failures, 1 unexpected passes"),
        "{text}"
    );
    assert!(text.contains("R-MEM-11     BE     MUST   FAIL"), "{text}");
    assert!(
        text.contains("  FAIL  memory/rem-wrong-size R-MEM-11"),
        "{text}"
    );
    assert!(
        text.contains("  CRASH descriptors/next-loop R-CRASH-01"),
        "{text}"
    );
    assert!(text.contains("  XFAIL memory/rem-then-re-add"), "{text}");
    assert!(text.contains("STALE expectation \"gone/*\""), "{text}");
}

#[test]
fn the_live_line_and_the_recap_agree_on_an_expected_failure() {
    let text = human(&fixture(), false);
    assert!(
        text.contains("] XFAIL memory/rem-then-re-add (0 ms)"),
        "{text}"
    );
    assert!(
        !text.contains("] FAIL  memory/rem-then-re-add"),
        "the live line says XFAIL as the recap does: {text}"
    );
}

#[test]
fn the_human_view_snapshot() {
    insta::assert_snapshot!("human", human(&fixture(), false));
}

#[test]
fn the_human_view_with_the_rule_table_snapshot() {
    let results = fixture();
    let mut out = Vec::new();
    let mut h = Human::new(&mut out, true).show_rules(true);
    feed(
        &mut h,
        &results[..4],
        &summary(&results[..4], ExitPolicy::default()),
    );
    insta::assert_snapshot!("human_verbose_rules", String::from_utf8(out).unwrap());
}

#[test]
fn the_json_report_snapshot() {
    let mut v = json_of(&fixture());
    // The crate's version changes with every release, not with the format.
    v["version"] = "VERSION".into();
    insta::assert_snapshot!("json", serde_json::to_string_pretty(&v).unwrap());
}

#[test]
fn the_junit_report_snapshot() {
    let mut out = Vec::new();
    let results = fixture();
    feed(
        &mut JunitReporter::new(&mut out),
        &results,
        &summary(&results, ExitPolicy::default()),
    );
    let xml = String::from_utf8(out).unwrap();
    assert_eq!(
        xml,
        junit(&results),
        "the reporter writes what junit() gives"
    );
    insta::assert_snapshot!("junit", xml);
}

#[test]
fn the_run_summary_carries_the_exit_the_policy_gives() {
    let results = fixture();
    let s = summary(&results, ExitPolicy::default());
    assert_eq!(s.exit.code(), crate::exit_code::FAILURES);
    let passing: Vec<_> = results
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Fail | Outcome::Error { .. }))
        .cloned()
        .collect();
    assert_eq!(
        summary(&passing, ExitPolicy::default()).exit.code(),
        crate::exit_code::ALL_PASSED
    );
    let strict = ExitPolicy {
        strict_expectations: true,
    };
    assert_eq!(
        summary(&passing, strict).exit.code(),
        crate::exit_code::FAILURES,
        "an unexpected pass and a stale entry, under --strict-expectations"
    );
}

/// A report destination that refuses every write (a full disk, a closed pipe).
struct Refusing;

impl std::io::Write for Refusing {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("disk full"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_report_that_cannot_be_written_does_not_stop_the_others_and_is_told_at_the_end() {
    let results = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    let mut all = Reporters::default();
    all.push(Box::new(JunitReporter::new(Refusing)));
    all.push(Box::new(JsonReporter::new(
        std::fs::File::create(&path).unwrap(),
    )));
    let offer = offer();
    let summary = summary(&results, ExitPolicy::default());
    all.emit(&RunEvent::RunStarted {
        total: results.len(),
        offer: &offer,
    });
    for (i, r) in results.iter().enumerate() {
        all.emit(&RunEvent::scenario_done(i, r));
    }
    all.emit(&RunEvent::RunFinished(&summary));
    let err = all.finish().unwrap_err();
    assert_eq!(err.to_string(), "disk full");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), results.len());
}
