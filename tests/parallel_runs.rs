//! `--jobs` and `--partition` against the bundled reference back-end, run as real processes:
//! a parallel run reports what a serial one does, in the same order; the shards of a partition
//! select every scenario exactly once; a bad partition is a usage error. Nothing here is timed
//! (speed is for the benchmarks).
// The bundled back-end is what these run against (Cargo.toml lists no `[[test]]` entry for this
// file, so the gate is here).
#![cfg(feature = "bundled-backend")]

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_vhu-conform");

/// The bundled back-end as a spawn target: a fresh process per scenario.
fn spawn_command() -> String {
    format!("'{EXE}' mock-backend --socket-path {{socket}} --shmem 0:0x100000")
}

/// Runs `vhu-conform --spawn <bundled> ARGS`; exit code, stdout, stdout and stderr.
fn vhu(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(EXE)
        .arg("--spawn")
        .arg(spawn_command())
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code(), stdout, text)
}

/// A whole-suite run with `jobs`: exit code, the JSON report, the ids of the progress lines in
/// the order printed, and the output for assertion messages.
fn run_suite(jobs: &str) -> (Option<i32>, Value, Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let (code, stdout, text) = vhu(&[
        "-j",
        jobs,
        "--step-timeout-ms",
        "2000",
        "--json-report",
        json.to_str().unwrap(),
    ]);
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_else(|| panic!("no JSON report from -j {jobs}: {text}"));
    // `[ 14/158] PASS  memory/add-rem-region (13 ms)`
    let progress = stdout
        .lines()
        .filter(|l| l.starts_with('['))
        .filter_map(|l| l.split_once(']')?.1.split_whitespace().nth(1))
        .map(str::to_string)
        .collect();
    (code, report, progress, text)
}

/// Per scenario, in report order: id, outcome, and the rules its findings cite.
fn verdicts(report: &Value) -> Vec<(String, String, Vec<String>)> {
    report["results"]
        .as_array()
        .expect("a results array")
        .iter()
        .map(|r| {
            let rules = r["findings"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["rule"].as_str().unwrap().to_string())
                .collect();
            (
                r["id"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
                rules,
            )
        })
        .collect()
}

#[test]
fn a_parallel_run_reports_what_a_serial_run_does_in_the_same_order() {
    let (code1, report1, progress1, text1) = run_suite("1");
    let (code2, report2, progress2, text2) = run_suite("2");
    let (v1, v2) = (verdicts(&report1), verdicts(&report2));
    assert!(v1.len() > 100, "the whole suite ran: {text1}");
    assert_eq!(v1, v2, "-j 1:\n{text1}\n-j 2:\n{text2}");
    assert_eq!(code1, code2, "-j 1:\n{text1}\n-j 2:\n{text2}");
    assert_eq!(report1["totals"], report2["totals"]);
    assert_eq!(report1["rules"], report2["rules"]);
    // The progress lines come in the report's order, which is the suite's.
    let ids: Vec<String> = v1.iter().map(|v| v.0.clone()).collect();
    assert_eq!(progress1, ids, "{text1}");
    assert_eq!(progress2, ids, "{text2}");
}

/// The scenario ids `--list ARGS` prints, in order.
fn listed(args: &[&str]) -> Vec<String> {
    let (code, stdout, text) = vhu(&[&["--list"], args].concat());
    assert_eq!(code, Some(0), "--list {args:?}: {text}");
    stdout
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn the_shards_of_a_partition_select_every_scenario_exactly_once() {
    let all = listed(&[]);
    assert!(all.len() > 100, "{all:?}");
    for kind in ["count", "hash"] {
        let shards: Vec<Vec<String>> = (1..=3)
            .map(|k| listed(&["--partition", &format!("{kind}:{k}/3")]))
            .collect();
        let mut seen: Vec<&String> = shards.iter().flatten().collect();
        seen.sort();
        let mut expected: Vec<&String> = all.iter().collect();
        expected.sort();
        assert_eq!(seen, expected, "{kind}: every scenario once: {shards:?}");
        for shard in &shards {
            assert!(!shard.is_empty(), "{kind}: {shards:?}");
            // A shard keeps the suite's order.
            let positions: Vec<usize> = shard
                .iter()
                .map(|id| all.iter().position(|a| a == id).unwrap())
                .collect();
            assert!(
                positions.windows(2).all(|w| w[0] < w[1]),
                "{kind}: {shard:?}"
            );
        }
        if kind == "count" {
            // count:K/N takes every N-th from the K-th; plain K/N is count.
            for (k, shard) in shards.iter().enumerate() {
                let every_third: Vec<String> = all.iter().skip(k).step_by(3).cloned().collect();
                assert_eq!(shard, &every_third, "count:{}/3", k + 1);
                assert_eq!(
                    &listed(&["--partition", &format!("{}/3", k + 1)]),
                    shard,
                    "{}/3",
                    k + 1
                );
            }
        }
    }
}

#[test]
fn a_partition_applies_after_the_filters_and_before_the_shuffle() {
    let memory = listed(&["memory"]);
    let shard = listed(&["memory", "--partition", "2/3"]);
    let every_third: Vec<String> = memory.iter().skip(1).step_by(3).cloned().collect();
    assert_eq!(shard, every_third, "{memory:?}");
    let shuffled = listed(&["memory", "--partition", "2/3", "--shuffle", "--seed", "7"]);
    let (mut a, mut b) = (shard.clone(), shuffled);
    a.sort();
    b.sort();
    assert_eq!(a, b, "the shuffle orders the shard, it does not change it");
}

#[test]
fn a_shard_run_with_jobs_runs_exactly_its_scenarios() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let (code, _, text) = vhu(&[
        "memory",
        "--partition",
        "hash:1/2",
        "-j",
        "2",
        "--json-report",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{text}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ran: Vec<String> = verdicts(&report).into_iter().map(|v| v.0).collect();
    assert_eq!(
        ran,
        listed(&["memory", "--partition", "hash:1/2"]),
        "{text}"
    );
    let unique: BTreeSet<&String> = ran.iter().collect();
    assert_eq!(unique.len(), ran.len(), "{ran:?}");
}

#[test]
fn a_bad_partition_or_job_count_is_a_usage_error() {
    for (bad, says) in [
        ("4/3", "shard 4 of 3"),
        ("count:0/3", "shard 0 of 3"),
        ("hash:1/0", "at least 1"),
        ("1-3", "K/N"),
        ("x/3", "K/N"),
        ("random:1/3", "unknown partition kind"),
    ] {
        let (code, _, text) = vhu(&["--partition", bad, "--list"]);
        assert_eq!(code, Some(2), "--partition {bad}: {text}");
        assert!(text.contains("--partition"), "--partition {bad}: {text}");
        assert!(text.contains(says), "--partition {bad}: {text}");
    }
    let (code, _, text) = vhu(&["-j", "0", "--list"]);
    assert_eq!(code, Some(2), "-j 0: {text}");
}

#[test]
fn an_empty_shard_is_nothing_selected() {
    let (code, _, text) = vhu(&["session/serves-after-disconnect", "--partition", "2/2"]);
    assert_eq!(code, Some(4), "{text}");
    assert!(text.contains("partition count:2/2"), "{text}");
}
