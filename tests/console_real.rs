//! End to end: `vhu-conform --device console` against rust-vmm's vhost-device-console 0.1.0
//! (ci/install-devices.sh console) with its `network` back-end, one fresh process per
//! scenario, one at a time (each binds the same TCP port). The harness reads port 0's host side
//! with --console-tcp, so what the guest writes is checked where it arrives. The only FAILs are
//! the departures the README writes up.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The FAILs the README ("What it finds in real back-ends", vhost-device-console) writes up:
/// driver-readable chains (control messages, port data) are used with the bytes read as used
/// length (virtio 1.2 2.7.8.2: the used length counts bytes written into device-writable
/// buffers; these chains have none).
///
/// Port data that is not UTF-8 is never consumed: the transmitq handler converts the bytes
/// with `String::from_utf8(..).unwrap()` and its thread panics (virtio 1.2 5.3.6: a port
/// carries characters, no encoding implied).
const KNOWN_FAILS: &[(&str, &str)] = &[
    ("console/binary-data", "R-CONSOLE-03"),
    ("console/device-ready", "R-DEV-02"),
    ("console/event-idx", "R-DEV-02"),
    ("console/indirect-control", "R-DEV-02"),
    ("console/port-write", "R-DEV-02"),
    ("console/restart-ring", "R-DEV-02"),
    ("console/second-port", "R-DEV-02"),
    ("console/segments", "R-DEV-02"),
    ("console/unknown-control", "R-DEV-02"),
    ("console/write-no-multiport", "R-DEV-02"),
];

/// A TCP port nothing listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn console_data_path_against_vhost_device_console() {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/vhost-device-console.sh");
    let bin = std::env::var("VHU_TARGETS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(&std::env::var("HOME").unwrap()).join(".cache/vhu-targets"))
        .join("bin/vhost-device-console");
    assert!(
        bin.exists(),
        "missing {}: run ci/install-devices.sh console",
        bin.display()
    );
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_vhu-conform"))
        .args(["--device", "console", "-j", "1", "--spawn"])
        .arg(format!(
            "env VHU_CONSOLE_TCP_PORT={port} '{}' {{socket}}",
            script.display()
        ))
        .arg("--console-tcp")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--json-report")
        .arg(&json)
        // The console scenarios and device-neutral areas: enough to run 15 and more.
        .args(["console", "negotiation", "session", "vring"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        json.exists() && out.status.code() != Some(3),
        "vhost-device-console could not be started (exit {:?}): run ci/install-devices.sh console\n{text}",
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
    // The console scenarios that move data through the rings ran to their end: no finding of
    // theirs but the written-up one.
    let moved = results
        .iter()
        .filter(|r| r["id"].as_str().unwrap().starts_with("console/") && outcome(r) != "skip")
        .filter(|r| {
            r["findings"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["rule"] == "R-DEV-02")
        })
        .count();
    assert!(
        moved >= 4,
        "only {moved} console scenarios moved data cleanly\n{text}"
    );
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
    let config = results.iter().find(|r| r["id"] == "console/config");
    assert_eq!(config.map(outcome).as_deref(), Some("pass"), "{text}");
}
