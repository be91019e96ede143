//! The bundled reference back-end as a virtio-fs and a virtio-vsock device
//! (`mock-backend --device fs --shared-dir {fs_dir}`, `--device vsock`, hybrid vsock at
//! `<socket>.vsock`): every fs and vsock scenario passes, and each of its fs-* and vsock-* fault
//! modes is caught by a FAIL (or a WARN for a SHOULD rule) whose finding cites the rule the
//! fault breaks.

use std::process::Command;

#[path = "common/report.rs"]
#[allow(dead_code)]
mod report;

const EXE: &str = env!("CARGO_BIN_EXE_vhu-conform");

/// The spawn command of the bundled back-end as `device`, with `--fault` when given.
fn spawn(device: &str, fault: Option<&str>) -> String {
    let extra = match device {
        "fs" => " --shared-dir {fs_dir}",
        _ => "",
    };
    let fault = fault.map(|f| format!(" --fault {f}")).unwrap_or_default();
    format!("'{EXE}' mock-backend --device {device} --socket-path {{socket}}{extra}{fault}")
}

/// Runs the `device/*` scenarios; the report and the console text.
fn run(device: &str, fault: Option<&str>) -> (serde_json::Value, String) {
    report::run_with_report(
        Command::new(EXE)
            .args(["--device", device, "--spawn", &spawn(device, fault)])
            .args(["-j", "2", "--step-timeout-ms", "1000"])
            .arg(format!("{device}/*")),
    )
    .expect_report(&format!("no report for {device} {fault:?}"))
}

/// The fault modes the back-end lists for `device` (`NAME  RULE  --device DEVICE: ...`).
fn faults(device: &str) -> Vec<(String, String)> {
    let out = Command::new(EXE)
        .args(["mock-backend", "--list-faults"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    let found: Vec<(String, String)> = list
        .lines()
        .filter(|l| l.contains(&format!("--device {device}:")))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect();
    assert!(!found.is_empty(), "no {device} fault modes listed:\n{list}");
    found
}

fn check_device(device: &str) {
    let (report, text) = run(device, None);
    let results = report["results"].as_array().unwrap();
    assert!(results.len() >= 10, "{text}");
    for r in results {
        assert_eq!(r["outcome"], "pass", "{}: {text}", r["id"]);
    }
    for (fault, rule) in faults(device) {
        let (report, text) = run(device, Some(&fault));
        let caught = report["results"].as_array().unwrap().iter().any(|r| {
            (r["outcome"] == "fail" || r["outcome"] == "warn")
                && r["findings"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f["rule"] == rule.as_str())
        });
        assert!(caught, "fault {fault} ({rule}) not caught: {text}");
    }
}

#[test]
fn the_reference_fs_device_passes_and_each_fs_fault_is_caught() {
    check_device("fs");
}

#[test]
fn the_reference_vsock_device_passes_and_each_vsock_fault_is_caught() {
    check_device("vsock");
}
