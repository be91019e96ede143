//! End to end: `vhu-conform --device scmi` against rust-vmm's vhost-device-scmi 0.4 (BASE and
//! SENSOR protocols over a fake sensor; no REPLY_ACK, no CONFIG), the whole suite. BASE commands
//! are answered, one by one, in bursts, through indirect tables and over wrapping rings; the
//! only FAIL is the departure the README writes up.

use std::path::Path;
use std::process::Command;

/// The FAILs the README ("What it finds in real back-ends", vhost-device-scmi) writes up: a
/// command over three descriptors (header, parameters, response) is never used, the daemon
/// takes exactly two (virtio 1.2 2.7.4.1: no assumption on the descriptor arrangement).
const KNOWN_FAILS: &[(&str, &str)] = &[("scmi/split-params", "R-SCMI-06")];

#[test]
fn scmi_data_path_against_vhost_device_scmi() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/vhost-device-scmi.sh");
    let bin = std::env::var_os("VHU_TARGETS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap()).join(".cache/vhu-targets"))
        .join("bin/vhost-device-scmi");
    assert!(
        bin.exists(),
        "{} is missing: run ci/install-devices.sh scmi",
        bin.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_vhu-conform"))
        .args(["--device", "scmi", "-j", "2", "--spawn"])
        .arg(format!("'{}' {{socket}}", script.display()))
        .arg("--json-report")
        .arg(&json)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        json.exists() && out.status.code() != Some(3),
        "vhost-device-scmi could not be started (exit {:?}): run ci/install-devices.sh scmi\n{text}",
        out.status.code()
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = report["results"].as_array().unwrap();
    let outcome = |r: &serde_json::Value| r["outcome"].as_str().unwrap().to_string();
    let ran = results.iter().filter(|r| outcome(r) != "skip").count();
    assert!(ran >= 15, "only {ran} scenarios ran (not skipped)\n{text}");
    for r in results {
        assert_ne!(
            outcome(r),
            "error",
            "harness error in {}: {}\n{text}",
            r["id"],
            r["reason"]
        );
    }
    let passed: Vec<&str> = results
        .iter()
        .filter(|r| outcome(r) == "pass")
        .filter_map(|r| r["id"].as_str())
        .filter(|id| id.starts_with("scmi/"))
        .collect();
    for id in [
        "scmi/base-version",
        "scmi/base-attributes",
        "scmi/unknown-protocol",
        "scmi/burst",
        "scmi/indirect",
        "scmi/event-idx",
        "scmi/discover-list-protocols",
        "scmi/no-p2a-notify-denied",
    ] {
        assert!(passed.contains(&id), "{id} did not pass\n{text}");
    }
    assert!(passed.len() >= 12, "scmi passes: {passed:?}\n{text}");
    let mut fails: Vec<(String, String)> = results
        .iter()
        .filter(|r| outcome(r) == "fail")
        .map(|r| {
            let rule = r["findings"][0]["rule"].as_str().unwrap_or("").to_string();
            (r["id"].as_str().unwrap().to_string(), rule)
        })
        .collect();
    fails.sort();
    let known: Vec<(String, String)> = KNOWN_FAILS
        .iter()
        .map(|(s, r)| (s.to_string(), r.to_string()))
        .collect();
    assert_eq!(fails, known, "FAILs differ from the README's\n{text}");
}
