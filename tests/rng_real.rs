//! End to end: `vhu-conform --device rng` against rust-vmm's vhost-device-rng 0.1 (over
//! /dev/urandom, no REPLY_ACK), one fresh process per scenario. Entropy requests of every size
//! are filled, many at once; the only FAILs are the departures the README writes up.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The FAILs the README ("What it finds in real back-ends", vhost-device-rng) writes up: a
/// request whose buffer spans several descriptors is never used (virtio 1.2 2.7.4.1: the
/// device MUST NOT assume a descriptor arrangement).
const KNOWN_FAILS: &[(&str, &str)] = &[
    ("rng/segments", "R-RNG-03"),
    ("rng/indirect-segments", "R-RNG-03"),
];

#[test]
fn rng_data_path_against_vhost_device_rng() {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/targets/vhost-device-rng.sh");
    assert!(
        script.exists(),
        "missing {}: run ../shared/targets/install.sh net rng",
        script.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_vhu-conform"))
        .args(["--device", "rng", "-j", "2", "--spawn"])
        .arg(format!("{} {{socket}}", script.display()))
        .arg("--json-report")
        .arg(&json)
        // The rng scenarios and the device-neutral areas this back-end can be judged on
        // without REPLY_ACK: enough to run 25 and more.
        .args(["rng", "negotiation", "robustness", "session"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        json.exists() && out.status.code() != Some(3),
        "vhost-device-rng could not be started (exit {:?}): run ../shared/targets/install.sh net rng\n{text}",
        out.status.code()
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    let outcome = |r: &serde_json::Value| r["outcome"].as_str().unwrap().to_string();
    let ran = results.iter().filter(|r| outcome(r) != "skip").count();
    assert!(ran >= 25, "only {ran} scenarios ran (not skipped)\n{text}");
    for r in results {
        assert_ne!(
            outcome(r),
            "error",
            "harness error in {}: {}\n{text}",
            r["id"],
            r["reason"]
        );
    }
    let rng_passed: Vec<&str> = results
        .iter()
        .filter(|r| outcome(r) == "pass" && r["id"].as_str().unwrap().starts_with("rng/"))
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(rng_passed.len() >= 8, "rng passes: {rng_passed:?}\n{text}");
    for id in [
        "rng/sizes",
        "rng/looks-random",
        "rng/many-in-flight",
        "rng/indirect",
        "rng/restart-from-base",
    ] {
        assert!(rng_passed.contains(&id), "{id} did not pass\n{text}");
    }
    let fails: BTreeSet<(String, String)> = results
        .iter()
        .filter(|r| outcome(r) == "fail")
        .flat_map(|r| {
            let id = r["id"].as_str().unwrap().to_string();
            r["findings"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["level"] == "must")
                .map(move |f| (id.clone(), f["rule"].as_str().unwrap().to_string()))
        })
        .collect();
    let known: BTreeSet<(String, String)> = KNOWN_FAILS
        .iter()
        .map(|(s, r)| (s.to_string(), r.to_string()))
        .collect();
    assert_eq!(fails, known, "FAILs differ from the README's\n{text}");
    for r in results.iter().filter(|r| outcome(r) == "pass") {
        let checked = r["checked_rules"].as_array().unwrap();
        for rule in r["rules"].as_array().unwrap() {
            let id = rule.as_str().unwrap();
            if vhu_conform::rules::find(id).is_some_and(vhu_conform::rules::Rule::is_backend_check)
            {
                assert!(
                    checked.contains(rule),
                    "{} passed without checking {id}",
                    r["id"]
                );
            }
        }
    }
}
