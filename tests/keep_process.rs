//! `--keep-process` against the bundled reference back-end, as real processes: the verdicts are
//! those of a fresh process per scenario while far fewer processes start; a back-end that exits
//! when its front-end leaves gets fresh processes (and no failure); a process that dies by a
//! signal as a scenario's last connection closes fails that scenario (R-CRASH-01), kept or
//! fresh. Nothing here is timed.
#![cfg(feature = "bundled-backend")]

use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[path = "common/report.rs"]
#[allow(dead_code)]
mod report;

const EXE: &str = env!("CARGO_BIN_EXE_vhu-conform");

/// The bundled back-end behind a wrapper that counts its starts in `starts` (one line each),
/// with `extra` mock-backend arguments and `after` run by the wrapper once the back-end exits.
fn counted_spawn(starts: &Path, extra: &str, after: &str) -> String {
    // A shell of its own: the harness `exec`s the command, which would replace it by `echo`.
    format!(
        "sh -c 'echo start >> \"$0\"; \"$1\" mock-backend --socket-path \"$2\" --shmem 0:0x100000{extra}{after}' '{}' '{EXE}' {{socket}}",
        starts.display()
    )
}

/// Runs the suite (or the scenarios `filters` select) with `--spawn command` and `args`: the
/// JSON report and the output for assertion messages.
fn run(command: &str, filters: &[&str], args: &[&str]) -> (Value, String) {
    report::run_with_report(
        Command::new(EXE)
            .arg("--spawn")
            .arg(command)
            .args(filters)
            .args(args),
    )
    .expect_report("no JSON report")
}

/// Per scenario, in report order: id, outcome, and the rules its findings cite.
fn verdicts(report: &Value) -> Vec<(String, String, Vec<String>)> {
    let results = report["results"].as_array().expect("a results array");
    results
        .iter()
        .map(|r| {
            let rules = (r["findings"].as_array().unwrap().iter())
                .map(|f| f["rule"].as_str().unwrap().to_string())
                .collect();
            let id = r["id"].as_str().unwrap().to_string();
            (id, r["outcome"].as_str().unwrap().to_string(), rules)
        })
        .collect()
}

fn count_starts(file: &Path) -> usize {
    std::fs::read_to_string(file).map_or(0, |s| s.lines().count())
}

#[test]
fn kept_processes_give_the_verdicts_of_fresh_ones_with_far_fewer_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (fresh_starts, kept_starts) = (dir.path().join("fresh"), dir.path().join("kept"));
    let (fresh, fresh_text) = run(&counted_spawn(&fresh_starts, "", ""), &[], &["-j", "2"]);
    let (kept, kept_text) = run(
        &counted_spawn(&kept_starts, "", ""),
        &[],
        &["-j", "2", "--keep-process"],
    );
    let (vf, vk) = (verdicts(&fresh), verdicts(&kept));
    assert!(vf.len() > 100, "the whole suite ran: {fresh_text}");
    assert_eq!(vf, vk, "fresh:\n{fresh_text}\nkept:\n{kept_text}");
    assert_eq!(fresh["totals"], kept["totals"]);
    let (f, k) = (count_starts(&fresh_starts), count_starts(&kept_starts));
    let ran = (vf.iter()).filter(|v| v.1 != "skip").count();
    assert!(
        f >= ran,
        "fresh mode starts a process per scenario run: {f} for {ran}"
    );
    assert!(k * 2 < f, "kept: {k} starts, fresh: {f}");
}

#[test]
fn a_backend_that_exits_when_the_front_end_leaves_gets_fresh_processes() {
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    let command = counted_spawn(&starts, " --fault exit-on-disconnect", "");
    let (fresh, fresh_text) = run(&command, &["memory", "vring"], &["-j", "1"]);
    let fresh_starts = count_starts(&starts);
    let (kept, kept_text) = run(
        &command,
        &["memory", "vring"],
        &["-j", "1", "--keep-process"],
    );
    assert_eq!(
        verdicts(&fresh),
        verdicts(&kept),
        "fresh:\n{fresh_text}\nkept:\n{kept_text}"
    );
    assert_eq!(kept["totals"]["fail"], 0, "{kept_text}");
    assert_eq!(kept["totals"]["error"], 0, "{kept_text}");
    // The first kept process exits after its scenario: keeping stops, every scenario after
    // gets its own process, as in fresh mode.
    let kept_starts = count_starts(&starts) - fresh_starts;
    assert!(
        kept_starts + 1 >= fresh_starts,
        "kept {kept_starts}, fresh {fresh_starts}: {kept_text}"
    );
}

#[test]
fn a_process_killed_as_its_scenario_ends_fails_that_scenario_kept_or_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let starts = dir.path().join("starts");
    // The back-end leaves when its front-end does; the wrapper then dies of SIGSEGV, as a
    // back-end whose teardown crashes would.
    let command = counted_spawn(&starts, " --fault exit-on-disconnect", "; kill -SEGV $$");
    for mode in [&["--keep-process"][..], &[]] {
        let (report, text) = run(&command, &["memory/add-rem-region"], mode);
        assert_crashed(&report, &text);
    }
}

/// The one scenario of `report` failed with a SIGSEGV crash finding (R-CRASH-01).
fn assert_crashed(report: &Value, text: &str) {
    let v = verdicts(report);
    assert_eq!(v.len(), 1, "{text}");
    assert_eq!(v[0].1, "fail", "{text}");
    assert!(v[0].2.iter().any(|r| r == "R-CRASH-01"), "{v:?}\n{text}");
    let finding = &report["results"][0]["findings"];
    let crash = (finding.as_array().unwrap().iter())
        .find(|f| f["rule"] == "R-CRASH-01")
        .unwrap();
    assert_eq!(crash["crash"]["signal_name"], "SIGSEGV", "{crash}");
}
