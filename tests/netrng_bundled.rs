//! The net and rng scenarios against the bundled reference back-end (`vhu-mock-backend
//! --device net|rng`): clean, every scenario passes or is skipped saying why; with
//! each of its net and rng fault modes, the scenario written for that rule catches it, citing
//! the fault's rule.

use std::process::Command;

/// The scenario that must catch a net or rng fault, by the rule the fault breaks.
const SCENARIO_FOR_RULE: &[(&str, &str)] = &[
    ("R-NET-01", "net/tx-used-len-zero"),
    ("R-NET-02", "net/loopback"),
    ("R-NET-03", "net/loopback"),
    ("R-NET-04", "net/loopback"),
    ("R-NET-06", "net/ctrl-rx-promisc"),
    ("R-DEV-02", "rng/sizes"),
    ("R-RNG-01", "rng/sizes"),
    ("R-RNG-02", "rng/looks-random"),
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
    let report = serde_json::from_str(&report)
        .unwrap_or_else(|e| panic!("bad report ({e}): the bundled back-end did not run\n{text}"));
    (report, text)
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
                other => panic!("{id}: {other} {:?}\n{text}", r["findings"]),
            }
        }
        assert!(passed >= 8, "{passed} {device} scenarios passed\n{text}");
    }
}

#[test]
fn each_net_and_rng_fault_mode_is_caught_by_its_rule() {
    use vhu_mock_backend::cli::DeviceKind;
    let faults: Vec<_> = vhu_mock_backend::faults::ALL
        .iter()
        .filter_map(|f| match vhu_mock_backend::faults::device(f.0) {
            Some(DeviceKind::Net) => Some(("net", f.1, f.2)),
            Some(DeviceKind::Rng) => Some(("rng", f.1, f.2)),
            _ => None,
        })
        .collect();
    assert!(
        faults.len() >= 8,
        "{} net and rng fault modes",
        faults.len()
    );
    for (device, fault, rule) in faults {
        let scenario = SCENARIO_FOR_RULE
            .iter()
            .find(|(r, _)| *r == rule)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("fault {fault} breaks {rule}: name the scenario that catches it in SCENARIO_FOR_RULE"));
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
                && findings(r).any(|f| f == rule),
            "--fault {fault}: {scenario} did not catch it under {rule}: {} {:?}\n{text}",
            r["outcome"],
            r["findings"]
        );
    }
}
