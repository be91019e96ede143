//! Every fault mode of the bundled reference back-end is caught: run the suite against the
//! back-end with that one fault, and at least one scenario must fail (or warn, for SHOULD and
//! robustness rules) with a finding that names the rule the fault breaks. Without a fault,
//! everything passes.

use std::process::Command;

fn run_suite(fault: Option<&str>) -> (Option<i32>, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let exe = env!("CARGO_BIN_EXE_vhu-conform");
    let fault_arg = fault.map(|f| format!(" --fault {f}")).unwrap_or_default();
    let out = Command::new(exe)
        .arg("--spawn")
        .arg(format!(
            "'{exe}' mock-backend --socket-path {{socket}} --shmem 0:0x100000{fault_arg}"
        ))
        .args([
            "--step-timeout-ms",
            "400",
            "--scenario-timeout-ms",
            "8000",
            "--json-report",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_str(
        &std::fs::read_to_string(&json).unwrap_or_else(|_| panic!("no report: {text}")),
    )
    .unwrap();
    (out.status.code(), report, text)
}

#[test]
fn the_reference_back_end_passes_everything() {
    let (code, report, text) = run_suite(None);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        report["totals"]["pass"].as_u64().unwrap() as usize,
        report["results"].as_array().unwrap().len(),
        "{text}"
    );
}

#[test]
fn every_fault_mode_is_caught_by_a_scenario_citing_its_rule() {
    // Three suites at a time: the machine has two cores, and each run mostly waits on timeouts.
    let faults: Vec<_> = vhu_mock_backend::faults::ALL
        .iter()
        .map(|f| (f.1, f.2))
        .collect();
    let missed: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = faults
            .chunks(faults.len().div_ceil(3))
            .map(|chunk| {
                scope.spawn(move || {
                    let mut missed = Vec::new();
                    for &(name, rule) in chunk {
                        let (_, report, text) = run_suite(Some(name));
                        let caught = report["results"].as_array().unwrap().iter().any(|r| {
                            matches!(r["outcome"].as_str(), Some("fail" | "warn"))
                                && r["findings"]
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .any(|f| f["rule"] == rule)
                        });
                        if !caught {
                            missed.push(format!("{name} ({rule}):\n{text}"));
                        }
                    }
                    missed
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(
        missed.is_empty(),
        "fault modes not caught with their rule:\n{}",
        missed.join("\n")
    );
}
