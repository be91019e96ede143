//! The net and rng scenarios against the bundled reference back-end (`vhu-mock-backend
//! --device net|rng`): clean, every scenario passes or is skipped saying why (except the
//! readings of the spec still open between the harness and the back-end, listed below); with
//! each of its net and rng fault modes, the scenario written for that rule catches it, citing
//! the fault's rule.

use std::process::Command;

/// Where the harness's reading of the spec and the reference back-end's still differ (reported
/// to the integrator); each entry is a scenario and the rule its FAIL cites.
const OPEN_DISAGREEMENTS: &[(&str, &str)] = &[
    // vhost-user "Ring states": a disabled net TX ring "must process and discard any TX
    // packets"; the reference back-end leaves them unused.
    ("net/disabled-tx-discards", "R-RING-06"),
    // MRG_RXBUF is offered but frames are not merged: a frame too big for one buffer leaves
    // buffers used with length 0, no header in them.
    ("net/loopback-mrg-rxbuf", "R-NET-02"),
    ("net/packed-loopback-mrg-rxbuf", "R-NET-02"),
];

/// Each net and rng fault mode, the scenario that must catch it and the rule it cites.
const FAULTS: &[(&str, &str, &str)] = &[
    ("net-rx-legacy-header", "net/loopback", "R-NET-02"),
    ("net-num-buffers-0", "net/loopback", "R-NET-03"),
    ("net-tx-used-len", "net/tx-used-len-zero", "R-NET-01"),
    ("net-ctrl-no-ack", "net/ctrl-rx-promisc", "R-NET-06"),
    ("net-rx-csum-flag", "net/loopback", "R-NET-04"),
    ("rng-used-len-past-buffer", "rng/sizes", "R-DEV-02"),
    ("rng-zero-len", "rng/sizes", "R-RNG-01"),
    ("rng-constant", "rng/looks-random", "R-RNG-02"),
];

/// Runs the suite's `filters` for `device` against the bundled back-end with `faults`; the
/// JSON report and the console text.
fn run(device: &str, faults: &[&str], filters: &[&str]) -> (serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let mut backend = format!(
        "{} mock-backend --socket-path {{socket}} --device {device}",
        env!("CARGO_BIN_EXE_vhu-conform")
    );
    for f in faults {
        backend.push_str(&format!(" --fault {f}"));
    }
    let out = Command::new(env!("CARGO_BIN_EXE_vhu-conform"))
        .args([
            "--device",
            device,
            "-j",
            "2",
            "--spawn",
            &backend,
            "--json-report",
        ])
        .arg(&json)
        .args(filters)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no report ({e}): the bundled back-end did not run\n{text}"));
    (serde_json::from_str(&report).unwrap(), text)
}

fn findings(r: &serde_json::Value) -> impl Iterator<Item = &str> {
    r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
}

#[test]
fn the_reference_backend_passes_the_net_and_rng_scenarios() {
    for device in ["net", "rng"] {
        let (report, text) = run(device, &[], &[device]);
        let results = report["results"].as_array().unwrap();
        assert!(
            results.len() >= 10,
            "{} {device} scenarios\n{text}",
            results.len()
        );
        let mut passed = 0;
        for r in results {
            let id = r["id"].as_str().unwrap();
            match r["outcome"].as_str().unwrap() {
                "pass" => {
                    passed += 1;
                    // A pass is earned: every back-end rule the scenario cites was checked.
                    let checked = r["checked_rules"].as_array().unwrap();
                    for rule in r["rules"].as_array().unwrap() {
                        let rid = rule.as_str().unwrap();
                        if vhu_conform::rules::find(rid)
                            .is_some_and(vhu_conform::rules::Rule::is_backend_check)
                        {
                            assert!(checked.contains(rule), "{id} passed without checking {rid}");
                        }
                    }
                }
                "skip" => assert!(!r["reason"].as_str().unwrap_or("").is_empty()),
                other => {
                    let open: Vec<&str> = OPEN_DISAGREEMENTS
                        .iter()
                        .filter(|(s, _)| *s == id)
                        .map(|(_, rule)| *rule)
                        .collect();
                    assert!(
                        other == "fail"
                            && !open.is_empty()
                            && findings(r).all(|f| open.contains(&f)),
                        "{id}: {other} {:?}\n{text}",
                        r["findings"]
                    );
                }
            }
        }
        assert!(passed >= 8, "{passed} {device} scenarios passed\n{text}");
    }
}

#[test]
fn each_net_and_rng_fault_mode_is_caught_by_its_rule() {
    for (fault, scenario, rule) in FAULTS {
        let device = &fault[..3];
        let (report, text) = run(device, &[fault], &[scenario]);
        let r = report["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == *scenario)
            .unwrap_or_else(|| panic!("{scenario} did not run\n{text}"));
        assert!(
            r["rules"].as_array().unwrap().iter().any(|x| x == rule),
            "{scenario} does not cite {rule}"
        );
        assert!(
            matches!(r["outcome"].as_str(), Some("fail" | "warn"))
                && findings(r).any(|f| f == *rule),
            "--fault {fault}: {scenario} did not catch it under {rule}: {} {:?}\n{text}",
            r["outcome"],
            r["findings"]
        );
    }
}
