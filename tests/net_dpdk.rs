//! End to end: `vhu-conform --device net` against DPDK 22.11 testpmd (net_vhost PMD, io
//! forwarding, loop topology: a frame sent on TX comes back on RX), one fresh process per
//! scenario. The net data path really moves frames both ways, and the only FAILs are the two
//! departures the README writes up.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The FAILs the README ("What it finds in real back-ends", DPDK) writes up as real departures.
const KNOWN_FAILS: &[(&str, &str)] = &[
    // Without MRG_RXBUF num_buffers is left unwritten (5.1.6.4.1: MUST set it to 1).
    ("net/loopback", "R-NET-03"),
    // A disabled TX ring is not processed: its frames are never consumed (vhost-user "Ring
    // states": "must process and discard any TX packets").
    ("net/disabled-tx-discards", "R-RING-06"),
];

#[test]
fn net_data_path_against_dpdk_testpmd() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/targets/dpdk-testpmd.sh");
    assert!(
        script.exists(),
        "missing {}: run ../shared/targets/install.sh net rng",
        script.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_vhu-conform"))
        .args(["--device", "net", "-j", "2", "--spawn"])
        .arg(format!("{} {{socket}}", script.display()))
        .arg("--json-report")
        .arg(&json)
        .args(["net", "negotiation", "session"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        json.exists() && out.status.code() != Some(3),
        "DPDK testpmd could not be started (exit {:?}): run ../shared/targets/install.sh net rng\n{text}",
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
    let net_passed: Vec<&str> = results
        .iter()
        .filter(|r| outcome(r) == "pass" && r["id"].as_str().unwrap().starts_with("net/"))
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(net_passed.len() >= 8, "net passes: {net_passed:?}\n{text}");
    // Frames went out and came back, split, merged and packed.
    for id in [
        "net/tx-used-len-zero",
        "net/loopback-mrg-rxbuf",
        "net/loopback-in-order",
        "net/loopback-segments",
        "net/packed-loopback",
    ] {
        assert!(net_passed.contains(&id), "{id} did not pass\n{text}");
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
    // A pass is earned: every back-end rule a passing net scenario cites was checked.
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
