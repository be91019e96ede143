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

/// One whole-suite run: exit code, the JSON report, the JUnit report, the ids of the progress
/// lines in the order printed, and the output for assertion messages.
struct SuiteRun {
    code: Option<i32>,
    report: Value,
    junit: String,
    progress: Vec<String>,
    text: String,
}

/// A whole-suite run with `jobs`.
fn run_suite(jobs: &str) -> SuiteRun {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let junit_path = dir.path().join("junit.xml");
    let (code, stdout, text) = vhu(&[
        "-j",
        jobs,
        "--step-timeout-ms",
        "2000",
        "--json-report",
        json.to_str().unwrap(),
        "--junit",
        junit_path.to_str().unwrap(),
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
    let junit = std::fs::read_to_string(&junit_path)
        .unwrap_or_else(|e| panic!("no JUnit report from -j {jobs}: {e}: {text}"));
    SuiteRun {
        code,
        report,
        junit,
        progress,
        text,
    }
}

/// The JSON report without what is timing: durations, transcript timestamps and the order of
/// a transcript's messages (compared as a multiset: the mock front-end answers the back-end
/// channel, IOTLB misses included, on a thread of its own, so two near messages can be recorded
/// in either order in any run, `-j 1` against `-j 1` too; `seq` numbers that order).
fn without_timing(report: &Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("duration_ms");
                map.remove("at_us");
                map.remove("seq");
                map.values_mut().for_each(strip);
                if let Some(Value::Array(t)) = map.get_mut("transcript") {
                    t.sort_by_key(|m| m.to_string());
                }
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = report.clone();
    strip(&mut v);
    v
}

/// The JUnit report without its `time` and `timestamp` attributes.
fn junit_without_timing(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(at) = [" time=\"", " timestamp=\""]
        .iter()
        .filter_map(|a| rest.find(a).map(|i| (i, a.len())))
        .min()
    {
        out.push_str(&rest[..at.0]);
        let value = &rest[at.0 + at.1..];
        rest = &value[value.find('"').map_or(value.len(), |e| e + 1)..];
    }
    out.push_str(rest);
    out
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
    let serial = run_suite("1");
    let parallel = run_suite("6");
    let (text1, text2) = (&serial.text, &parallel.text);
    let (v1, v2) = (verdicts(&serial.report), verdicts(&parallel.report));
    assert!(v1.len() > 100, "the whole suite ran: {text1}");
    assert_eq!(v1, v2, "-j 1:\n{text1}\n-j 6:\n{text2}");
    assert_eq!(serial.code, parallel.code, "-j 1:\n{text1}\n-j 6:\n{text2}");
    // The whole reports, not only the verdicts: identical but for what is timing.
    let (r1, r2) = (
        without_timing(&serial.report),
        without_timing(&parallel.report),
    );
    for (a, b) in r1["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r2["results"].as_array().unwrap())
    {
        assert_eq!(
            a, b,
            "the JSON result of {} differs between -j 1 and -j 6",
            a["id"]
        );
    }
    assert_eq!(r1, r2, "the JSON reports differ between -j 1 and -j 6");
    assert_eq!(
        junit_without_timing(&serial.junit),
        junit_without_timing(&parallel.junit),
        "the JUnit reports differ between -j 1 and -j 6"
    );
    assert!(serial.junit.contains(" time=\""), "{}", serial.junit);
    // The progress lines come in the report's order, which is the suite's.
    let ids: Vec<String> = v1.iter().map(|v| v.0.clone()).collect();
    assert_eq!(serial.progress, ids, "{text1}");
    assert_eq!(parallel.progress, ids, "{text2}");
}

#[test]
fn the_junit_comparison_ignores_only_times() {
    let xml = r#"<testcase name="a" time="0.043"/><testsuite timestamp="2026" x="1">"#;
    assert_eq!(
        junit_without_timing(xml),
        r#"<testcase name="a"/><testsuite x="1">"#
    );
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
