//! Every fault mode of the bundled reference back-end is caught: run the suite against the
//! back-end with that one fault, and at least one scenario must fail (or warn, for SHOULD and
//! robustness rules) with a finding that names the rule the fault breaks; a death by a signal
//! (R-CRASH-01) must fail. Without a fault, everything passes, and against each legal variation
//! of real back-ends (`faults::VARIATIONS`) nothing fails and nothing errs.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Mutex;

#[path = "common/golden.rs"]
mod golden;
#[path = "common/report.rs"]
#[allow(dead_code)]
mod report;

/// Step timeout of the fault runs: short, since many faults make steps time out.
const STEP_TIMEOUT_MS: u32 = 400;
/// Step timeout against the legal variations, where no step should time out: generous, so a
/// debug build on a loaded machine (a device state save scans the 64 MiB disk) is not judged.
const LEGAL_STEP_TIMEOUT_MS: u32 = 1500;

fn run_suite(fault: Option<&str>) -> (Option<i32>, serde_json::Value, String) {
    run_suite_on(device_of(fault), fault)
}

/// As [`run_suite`], against the back-end started with `--device DEVICE` (`None`: blk).
fn run_suite_on(
    device: Option<&str>,
    fault: Option<&str>,
) -> (Option<i32>, serde_json::Value, String) {
    let (code, report, text) = try_run_suite_on(device, fault, STEP_TIMEOUT_MS);
    (code, report.unwrap_or_else(|e| panic!("{e}: {text}")), text)
}

/// The `--device` a fault needs (`None` for blk's and every device's).
fn device_of(fault: Option<&str>) -> Option<&'static str> {
    let f = vhu_mock_backend::faults::parse(fault?).ok()?;
    vhu_mock_backend::faults::device(f)
        .filter(|d| *d != vhu_mock_backend::cli::DeviceKind::Blk)
        .map(vhu_mock_backend::cli::DeviceKind::name)
}

/// As [`run_suite`], the report or why there is none.
fn try_run_suite(
    fault: Option<&str>,
    step_timeout_ms: u32,
) -> (Option<i32>, Result<serde_json::Value, String>, String) {
    try_run_suite_on(device_of(fault), fault, step_timeout_ms)
}

/// As [`try_run_suite`], against `--device DEVICE` (`None`: blk, with its SHMEM region).
fn try_run_suite_on(
    device: Option<&str>,
    fault: Option<&str>,
    step_timeout_ms: u32,
) -> (Option<i32>, Result<serde_json::Value, String>, String) {
    let exe = env!("CARGO_BIN_EXE_vhu-conform");
    let fault_arg = fault.map(|f| format!(" --fault {f}")).unwrap_or_default();
    // SHMEM is blk's; another device is named (its faults need it) and has no region.
    let device_arg = device.map_or(" --shmem 0:0x100000".to_string(), |d| {
        format!(" --device {d}")
    });
    let ran = report::run_with_report(
        Command::new(exe)
            .arg("--spawn")
            .arg(format!(
                "'{exe}' mock-backend --socket-path {{socket}}{device_arg}{fault_arg}"
            ))
            .arg("--step-timeout-ms")
            .arg(step_timeout_ms.to_string())
            // One scenario at a time: the fault-mode tests already run three suites at once.
            .args(["-j", "1", "--scenario-timeout-ms", "8000"]),
    );
    (ran.code, ran.report, ran.text)
}

#[test]
fn the_reference_back_end_passes_everything() {
    let (code, report, text) = run_suite(None);
    assert_eq!(code, Some(0), "{text}");
    // Everything passes but the scenarios written for another device (net, rng...) and those
    // needing a feature the reference does not offer (postcopy, cross-endian), which skip saying
    // so; no other skip.
    let results = report["results"].as_array().unwrap();
    let allowed_skip = |r: &serde_json::Value| {
        r["outcome"] == "skip"
            && r["reason"].as_str().is_some_and(|w| {
                w.contains("the back-end is a block device") || w.contains("does not offer")
            })
    };
    let gated = results.iter().filter(|r| allowed_skip(r)).count();
    assert_eq!(
        report["totals"]["pass"].as_u64().unwrap() as usize,
        results.len() - gated,
        "{text}"
    );
    if let Err(diff) = golden::check("bundled-blk.txt", &golden::verdicts(&report)) {
        panic!("{diff}");
    }
}

#[test]
fn the_reference_net_and_rng_back_ends_fail_nothing() {
    // Scenarios written for another device skip, and so do those needing what these devices
    // do not offer; what runs passes, and each device's own scenarios do run.
    for device in ["net", "rng", "sound", "gpu"] {
        let (code, report, text) = run_suite_on(Some(device), None);
        assert_eq!(code, Some(0), "--device {device}: {text}");
        let t = &report["totals"];
        assert_eq!(t["fail"], 0, "--device {device}: {text}");
        assert_eq!(t["error"], 0, "--device {device}: {text}");
        assert_eq!(t["warn"], 0, "--device {device}: {text}");
        let own_passed = report["results"].as_array().unwrap().iter().any(|r| {
            r["outcome"] == "pass"
                && r["id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(&format!("{device}/")))
        });
        assert!(
            own_passed,
            "--device {device}: no {device}/ scenario passed\n{text}"
        );
        let golden_file = format!("bundled-{device}.txt");
        if let Err(diff) = golden::check(&golden_file, &golden::verdicts(&report)) {
            panic!("{diff}");
        }
    }
}

/// Runs `check` on every item, three at a time (the machine has two cores, and each suite
/// mostly waits on timeouts); what the checks returned, in order.
fn three_at_a_time<T: Sync, R: Send>(
    items: &[T],
    check: impl Fn(&T) -> Option<R> + Sync,
) -> Vec<R> {
    let check = &check;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(items.len().div_ceil(3).max(1))
            .map(|chunk| scope.spawn(move || chunk.iter().filter_map(check).collect::<Vec<_>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    })
}

#[test]
fn every_fault_mode_is_caught_by_a_scenario_citing_its_rule() {
    // Device faults (`--device net: ...`) need that device: their own tests run them
    // (tests/fsvsock_bundled.rs for fs and vsock).
    let faults: Vec<_> = vhu_mock_backend::faults::ALL
        .iter()
        .filter(|f| !f.3.starts_with("--device "))
        .map(|f| (f.1, f.2))
        .collect();
    let runs = Mutex::new(BTreeMap::new());
    let reports = Mutex::new(BTreeMap::new());
    let missed = three_at_a_time(&faults, |&(name, rule)| {
        let (_, report, text) = run_suite(Some(name));
        let verdicts = golden::verdicts(&report);
        runs.lock().unwrap().insert(name.to_string(), verdicts);
        reports
            .lock()
            .unwrap()
            .insert(name.to_string(), report.clone());
        // A crash is always a failure; other rules may only warn (SHOULD, robustness).
        let verdicts: &[&str] = if rule == "R-CRASH-01" {
            &["fail"]
        } else {
            &["fail", "warn"]
        };
        let caught = report["results"].as_array().unwrap().iter().any(|r| {
            r["outcome"].as_str().is_some_and(|o| verdicts.contains(&o))
                && r["findings"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f["rule"] == rule)
        });
        (!caught).then(|| format!("{name} ({rule}):\n{text}"))
    });
    assert!(
        missed.is_empty(),
        "fault modes not caught with their rule:\n{}",
        missed.join("\n")
    );
    // Each fault's run gives the verdicts it gave before (what differs from the run without one).
    let runs = runs.into_inner().unwrap();
    if let Err(diff) = golden::check_runs("faults.txt", Some("bundled-blk.txt"), &runs) {
        let reports = reports.into_inner().unwrap();
        panic!("{diff}\n{}", findings_behind(&diff, &reports));
    }
}

/// For each `[fault] scenario:` line of a golden diff, the findings that scenario had in that
/// fault's run (a verdict that changed once in CI is diagnosed from the log alone).
fn findings_behind(diff: &str, reports: &BTreeMap<String, serde_json::Value>) -> String {
    let mut out = String::new();
    for line in diff.lines() {
        let Some((fault, rest)) = line
            .trim()
            .strip_prefix('[')
            .and_then(|l| l.split_once("] "))
        else {
            continue;
        };
        let Some((id, _)) = rest.split_once(':') else {
            continue;
        };
        let results = reports.get(fault).and_then(|r| r["results"].as_array());
        for r in results.into_iter().flatten().filter(|r| r["id"] == id) {
            for f in r["findings"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "  [{fault}] {id}: {}: {}; sent {}; received {}\n",
                    f["rule"], f["summary"], f["sent"], f["received"]
                ));
            }
        }
    }
    out
}

/// The devices of issue 17 whose fault modes this file runs (the others' are in
/// tests/netrng_bundled.rs and tests/fsvsock_bundled.rs).
const ISSUE17_DEVICES: &[vhu_mock_backend::cli::DeviceKind] =
    &[vhu_mock_backend::cli::DeviceKind::Sound];

#[test]
fn issue17_device_fault_modes_are_caught_by_a_scenario_citing_their_rule() {
    // The whole suite against `--device D --fault F`: some scenario must fail (or warn, for a
    // SHOULD rule) with a finding naming the fault's rule.
    let faults: Vec<_> = vhu_mock_backend::faults::ALL
        .iter()
        .filter(|f| {
            vhu_mock_backend::faults::device(f.0).is_some_and(|d| ISSUE17_DEVICES.contains(&d))
        })
        .map(|f| (f.1, f.2))
        .collect();
    for d in ISSUE17_DEVICES {
        let n = faults
            .iter()
            .filter(|f| f.0.starts_with(&format!("{}-", d.name())))
            .count();
        assert!(
            n >= 2,
            "--device {}: {n} fault modes, at least 2 wanted",
            d.name()
        );
    }
    let missed = three_at_a_time(&faults, |&(name, rule)| {
        let (_, report, text) = run_suite(Some(name));
        let caught = report["results"].as_array().unwrap().iter().any(|r| {
            r["outcome"]
                .as_str()
                .is_some_and(|o| o == "fail" || o == "warn")
                && r["findings"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f["rule"] == rule)
        });
        (!caught).then(|| format!("{name} ({rule}):\n{text}"))
    });
    assert!(
        missed.is_empty(),
        "fault modes not caught with their rule:\n{}",
        missed.join("\n")
    );
}

/// At most `n` characters of `s`, on one line.
fn clip(s: &str, n: usize) -> String {
    let line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line,
    }
}

/// The scenarios of `report` that failed or erred, each with its findings (rule, summary,
/// received) or the error's reason.
fn dishonest_verdicts(report: &serde_json::Value) -> Vec<String> {
    let mut out = vec![];
    for r in report["results"].as_array().unwrap() {
        let outcome = r["outcome"].as_str().unwrap_or("?");
        if !matches!(outcome, "fail" | "error") {
            continue;
        }
        let mut s = format!(
            "  {} {}",
            r["id"].as_str().unwrap_or("?"),
            outcome.to_uppercase()
        );
        if let Some(reason) = r["reason"].as_str() {
            s.push_str(&format!(": {}", clip(reason, 300)));
        }
        for f in r["findings"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "\n    {} {}: {}\n      received: {}",
                f["rule"].as_str().unwrap_or("?"),
                f["level"].as_str().unwrap_or(""),
                clip(f["summary"].as_str().unwrap_or(""), 300),
                clip(f["received"].as_str().unwrap_or(""), 300),
            ));
        }
        out.push(s);
    }
    out
}

#[test]
fn legal_variations_give_no_fail() {
    // Each is something real back-ends do and the spec allows: the whole suite must give no
    // failure and no error (warnings are fine: exit-on-disconnect warns under R-ROB-09).
    let variations: Vec<&str> = vhu_mock_backend::faults::VARIATIONS
        .iter()
        .map(|v| v.1)
        .collect();
    let runs = Mutex::new(BTreeMap::new());
    let dishonest = three_at_a_time(&variations, |&name| {
        let (code, report, text) = try_run_suite(Some(name), LEGAL_STEP_TIMEOUT_MS);
        let verdicts = report.as_ref().map(golden::verdicts).unwrap_or_default();
        runs.lock().unwrap().insert(name.to_string(), verdicts);
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                return Some(format!(
                    "{name}: {e} (exit {code:?})\n{}",
                    clip(&text, 2000)
                ));
            }
        };
        let t = &report["totals"];
        let count = |k: &str| t[k].as_u64().unwrap_or(u64::MAX);
        let summary = format!(
            "{name}: {} pass, {} warn, {} fail, {} error, {} skip (exit {code:?})",
            count("pass"),
            count("warn"),
            count("fail"),
            count("error"),
            count("skip"),
        );
        println!("legal variation {summary}");
        if count("fail") == 0 && count("error") == 0 {
            return None;
        }
        let verdicts = dishonest_verdicts(&report);
        if verdicts.is_empty() {
            return Some(format!("{summary}\n{}", clip(&text, 2000)));
        }
        Some(format!("{summary}\n{}", verdicts.join("\n")))
    });
    assert!(
        dishonest.is_empty(),
        "failures or errors against legal variations (the spec allows them):\n{}",
        dishonest.join("\n")
    );
    let runs = runs.into_inner().unwrap();
    if let Err(diff) = golden::check_runs("variations.txt", Some("bundled-blk.txt"), &runs) {
        panic!("{diff}");
    }
}

/// The devices of issue 17 served by the reference back-end whose faults this file checks.
const SIMPLE_DEVICES: &[&str] = &["scmi", "gpio", "i2c"];

#[test]
fn the_reference_simple_devices_fail_nothing_and_their_faults_are_caught() {
    for device in SIMPLE_DEVICES {
        let (code, report, text) = run_suite_on(Some(device), None);
        assert_eq!(code, Some(0), "--device {device}: {text}");
        let t = &report["totals"];
        assert_eq!(
            (&t["fail"], &t["warn"], &t["error"]),
            (&0.into(), &0.into(), &0.into()),
            "--device {device}: {text}"
        );
        let own = report["results"].as_array().unwrap().iter().filter(|r| {
            r["outcome"] == "pass"
                && r["id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(&format!("{device}/")))
        });
        assert!(
            own.count() >= 6,
            "--device {device}: too few {device}/ passes\n{text}"
        );
        if let Err(diff) =
            golden::check(&format!("bundled-{device}.txt"), &golden::verdicts(&report))
        {
            panic!("{diff}");
        }
    }
    let faults: Vec<_> = vhu_mock_backend::faults::ALL
        .iter()
        .filter(|f| {
            SIMPLE_DEVICES
                .iter()
                .any(|d| f.3.starts_with(&format!("--device {d}:")))
        })
        .map(|f| (f.1, f.2))
        .collect();
    assert!(faults.len() >= 2 * SIMPLE_DEVICES.len(), "{faults:?}");
    let missed = three_at_a_time(&faults, |&(name, rule)| {
        let (_, report, text) = run_suite(Some(name));
        let caught = report["results"].as_array().unwrap().iter().any(|r| {
            r["outcome"] == "fail"
                && r["findings"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f["rule"] == rule)
        });
        (!caught).then(|| format!("{name} ({rule}):\n{text}"))
    });
    assert!(
        missed.is_empty(),
        "fault modes not caught with their rule:\n{}",
        missed.join("\n")
    );
}

/// As [`try_run_suite_on`] with only the scenarios `filter` selects, two at a time.
fn run_area(device: &str, fault: Option<&str>, filter: &str) -> (serde_json::Value, String) {
    let exe = env!("CARGO_BIN_EXE_vhu-conform");
    let fault_arg = fault.map(|f| format!(" --fault {f}")).unwrap_or_default();
    report::run_with_report(
        Command::new(exe)
            .args(["--device", device, "--spawn"])
            .arg(format!(
                "'{exe}' mock-backend --socket-path {{socket}} --device {device}{fault_arg}"
            ))
            .args(["--step-timeout-ms", &STEP_TIMEOUT_MS.to_string()])
            .args(["-j", "2", filter]),
    )
    .expect_report("no report")
}

#[test]
fn the_reference_console_and_input_back_ends_fail_nothing_and_each_fault_is_caught() {
    for device in ["console", "input"] {
        // Clean: the whole suite, nothing fails, warns or errs, the device's own scenarios pass.
        let (code, report, text) = run_suite_on(Some(device), None);
        assert_eq!(code, Some(0), "--device {device}: {text}");
        let t = &report["totals"];
        for k in ["fail", "error", "warn"] {
            assert_eq!(t[k], 0, "--device {device} {k}: {text}");
        }
        let prefix = format!("{device}/");
        let own: Vec<_> = report["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["id"].as_str().is_some_and(|id| id.starts_with(&prefix)))
            .collect();
        assert!(
            own.len() >= 6,
            "--device {device}: {} own scenarios",
            own.len()
        );
        for r in &own {
            assert_eq!(
                r["outcome"], "pass",
                "--device {device} {}: {text}",
                r["id"]
            );
            // A pass means the checks of every rule it cites ran (as tests/rule_coverage.rs
            // asks of the blk suite).
            let checked = r["checked_rules"].as_array().unwrap();
            for rule in r["rules"].as_array().unwrap() {
                assert!(
                    checked.contains(rule),
                    "{} passed without checking {rule}",
                    r["id"]
                );
            }
        }
        if let Err(diff) =
            golden::check(&format!("bundled-{device}.txt"), &golden::verdicts(&report))
        {
            panic!("{diff}");
        }
        // Each of the device's faults is caught by one of its scenarios, citing the fault's rule.
        let kind = vhu_mock_backend::faults::ALL
            .iter()
            .filter(|f| device_of(Some(f.1)) == Some(device));
        let mut n = 0;
        for (_, name, rule, _) in kind {
            n += 1;
            let (report, text) = run_area(device, Some(name), device);
            let caught = report["results"].as_array().unwrap().iter().any(|r| {
                matches!(r["outcome"].as_str(), Some("fail" | "warn"))
                    && r["findings"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|f| f["rule"] == *rule)
            });
            assert!(caught, "{name} ({rule}) not caught:\n{text}");
        }
        assert!(n >= 2, "--device {device}: {n} fault modes");
    }
}
