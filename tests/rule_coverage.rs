//! A rule is `pass` only when a check that could have cited it ran: against the bundled
//! reference back-end (where every check runs to its end), every back-end rule a scenario cites
//! must be among the rules its checks marked. A scenario citing a rule none of its checks can
//! cite fails this test.

use std::process::Command;

#[test]
fn every_rule_a_scenario_cites_is_checked_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_vhu-conform"))
        .arg("--json-report")
        .arg(&json)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let backend_rule = |id: &str| {
        vhu_conform::rules::find(id).is_some_and(vhu_conform::rules::Rule::is_backend_check)
    };
    let mut unchecked = Vec::new();
    // A scenario for another device type (fs, vsock...) is skipped on this block device: it ran
    // no check to cover.
    for r in report["results"].as_array().unwrap().iter().filter(|r| {
        !(r["outcome"] == "skip"
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("the back-end is a block device")))
    }) {
        let checked: Vec<&str> = r["checked_rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        for rule in r["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
        {
            if backend_rule(rule) && !checked.contains(&rule) {
                unchecked.push(format!("{} cites {rule}", r["id"]));
            }
        }
    }
    assert!(
        unchecked.is_empty(),
        "cited but never checked:\n{}",
        unchecked.join("\n")
    );
    // And the coverage table agrees: nothing cited is `pass` without a check.
    for row in report["rules"].as_array().unwrap() {
        if row["status"] == "checked_pass" {
            let id = row["id"].as_str().unwrap();
            let ran = report["results"].as_array().unwrap().iter().any(|r| {
                r["checked_rules"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|v| v == id)
            });
            assert!(ran, "{id} is pass but no scenario checked it");
        }
    }
}
