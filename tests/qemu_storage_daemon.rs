//! End to end: the `vhu-conform` binary against a real back-end written by others,
//! qemu-storage-daemon's vhost-user-blk export, one fresh process per scenario.

use std::path::Path;
use std::process::Command;

// Only the one-run half of the golden verdicts is used here.
#[allow(dead_code)]
#[path = "common/golden.rs"]
mod golden;

#[test]
fn every_applicable_scenario_reaches_a_verdict_against_qemu_storage_daemon() {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/targets/qemu-storage-daemon.sh");
    assert!(
        script.exists(),
        "missing {}: this test needs ../shared/targets and qemu-utils",
        script.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let junit = dir.path().join("junit.xml");
    let out = Command::new(env!("CARGO_BIN_EXE_vhu-conform"))
        .arg("--spawn")
        .arg(format!("{} {{socket}}", script.display()))
        .args(["--device", "blk"])
        .arg("--json-report")
        .arg(&json)
        .arg("--junit")
        .arg(&junit)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["schema_version"], 1);
    let results = report["results"].as_array().unwrap();
    assert!(results.len() >= 25, "{} scenarios ran", results.len());
    for r in results {
        let outcome = r["outcome"].as_str().unwrap();
        assert_ne!(
            outcome, "error",
            "harness error in {}: {}\n{stdout}",
            r["id"], r["reason"]
        );
        for f in r["findings"].as_array().unwrap() {
            assert!(
                f["rule"].as_str().unwrap().starts_with("R-"),
                "a finding must cite a rule: {f}"
            );
            assert!(
                !f["sent"].as_str().unwrap().is_empty()
                    && !f["received"].as_str().unwrap().is_empty()
            );
        }
        if outcome == "fail" {
            assert!(
                !r["findings"].as_array().unwrap().is_empty(),
                "a failure names its findings"
            );
            assert!(
                !r["transcript"].as_array().unwrap().is_empty(),
                "a failure keeps its transcript"
            );
        }
    }
    let outcome_of = |id: &str| {
        results
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["outcome"].as_str().unwrap().to_string())
    };
    // The data path really works against a real back-end.
    assert_eq!(
        outcome_of("blk/write-read").as_deref(),
        Some("pass"),
        "{stdout}"
    );
    assert_eq!(
        outcome_of("negotiation/full-session").as_deref(),
        Some("pass"),
        "{stdout}"
    );
    assert_eq!(
        outcome_of("vring/get-vring-base-reached").as_deref(),
        Some("pass"),
        "{stdout}"
    );
    let fails = results.iter().filter(|r| r["outcome"] == "fail").count();
    assert_eq!(
        out.status.code(),
        Some(if fails > 0 { 1 } else { 0 }),
        "{stdout}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<testsuites") && xml.contains("blk/write-read"));
    // Every scenario reaches the verdict it reached before.
    if let Err(diff) = golden::check("qemu-storage-daemon.txt", &golden::verdicts(&report)) {
        panic!("{diff}\n{stdout}");
    }
}
