//! `vhu-conform --device net|rng|console|input` with no target runs the suite against the bundled reference
//! back-end started as that device (`vhu-conform mock-backend --device ...`); a device the
//! bundled back-end does not serve is a usage error naming the way out.

#![cfg(feature = "bundled-backend")]

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_vhu-conform"))
        .args(args)
        .args(["-j", "1", "--json-report"])
        .arg(&json)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(&json)
        .ok()
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or(serde_json::Value::Null);
    (out.status.code(), report, text)
}

#[test]
fn device_selects_the_bundled_back_ends_device() {
    for (device, scenario) in [
        ("net", "net/loopback"),
        ("rng", "rng/looks-random"),
        ("scmi", "scmi/base-version"),
        ("gpio", "gpio/get-line-names"),
        ("i2c", "i2c/read-one-byte"),
        ("console", "console/port-write"),
        ("input", "input/ev-bits"),
        ("sound", "sound/pcm-lifecycle"),
    ] {
        let (code, report, text) = run(&["--device", device, scenario]);
        assert_eq!(code, Some(0), "{text}");
        let results = report["results"].as_array().expect("a report");
        assert_eq!(results.len(), 1, "{text}");
        assert_eq!(results[0]["outcome"], "pass", "{text}");
        assert!(text.contains("bundled reference back-end"), "{text}");
    }
    // The blk default still runs blk scenarios (and a net scenario skips, saying why).
    let (code, report, text) = run(&["net/loopback"]);
    assert_eq!(code, Some(4), "nothing ran: {text}");
    let r = &report["results"][0];
    assert_eq!(r["outcome"], "skip", "{text}");
}

#[test]
fn a_device_the_bundled_back_end_does_not_serve_is_a_usage_error() {
    let (code, _, text) = run(&["--device", "crypto"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("not crypto") && text.contains("--spawn"),
        "{text}"
    );
}
