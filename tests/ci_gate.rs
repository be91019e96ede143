//! What a back-end project's CI relies on: expectations, reruns of what failed, repetitions,
//! back-end discovery from a vhost-user JSON description, device types, a seeded order. Each
//! runs the real command against the bundled back-end, with a fault where a failure is needed.

mod common;

use std::path::Path;

use common::vhu;

/// The bundled back-end with a fault that makes memory/rem-then-re-add fail (R-MEM-11).
fn faulty() -> String {
    let exe = env!("CARGO_BIN_EXE_vhu-conform");
    format!("'{exe}' mock-backend --socket-path {{socket}} --fault ignore-rem-mem-reg")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn an_expected_failure_keeps_the_gate_green_and_a_stale_or_passing_entry_is_told() {
    let d = tempfile::tempdir().unwrap();
    let expect = write(
        d.path(),
        "expect.toml",
        "[[expect]]\nscenario = \"memory/rem-then-re-add\"\noutcome = \"fail\"\n\
         reason = \"upstream bug 42: REM_MEM_REG ignored\"\n",
    );
    let spawn = faulty();
    let base = ["--spawn", &spawn, "memory/rem-then-re-add"];
    // Without expectations the departure fails the run.
    assert_eq!(vhu(&base).0, Some(1));
    let (code, text) = vhu(&[&base[..], &["--expect", &expect]].concat());
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("XFAIL") && text.contains("upstream bug 42"),
        "{text}"
    );
    // Against the conformant back-end the entry is an unexpected pass: a failure when strict.
    let (code, text) = vhu(&[
        "memory/rem-then-re-add",
        "--expect",
        &expect,
        "--strict-expectations",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("XPASS"), "{text}");
    let stale = write(
        d.path(),
        "stale.toml",
        "[[expect]]\nscenario = \"gone/*\"\noutcome = \"skip\"\nreason = \"old\"\n",
    );
    let (code, text) = vhu(&["negotiation/get-features-first", "--expect", &stale]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("STALE"), "{text}");
    let (code, _) = vhu(&[
        "negotiation/get-features-first",
        "--expect",
        &stale,
        "--strict-expectations",
    ]);
    assert_eq!(code, Some(1));
}

#[test]
fn rerun_failed_runs_only_what_failed_last_time() {
    let d = tempfile::tempdir().unwrap();
    let report = d.path().join("r.json");
    let spawn = faulty();
    let (code, _) = vhu(&[
        "--spawn",
        &spawn,
        "memory/*",
        "--json-report",
        report.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1));
    let (code, text) = vhu(&[
        "--spawn",
        &spawn,
        "--rerun-failed",
        report.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(1), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text[..text.rfind('}').unwrap() + 1]).unwrap();
    let ids: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"memory/rem-then-re-add"), "{ids:?}");
    assert!(ids.len() < 5, "only the failures rerun: {ids:?}");
}

#[test]
fn repeat_reports_every_run_and_stops_at_the_first_failure_when_asked() {
    let (code, text) = vhu(&["negotiation/get-features-first", "--repeat", "3", "-v"]);
    assert_eq!(code, Some(0), "{text}");
    let spawn = faulty();
    let (code, text) = vhu(&[
        "--spawn",
        &spawn,
        "memory/rem-then-re-add",
        "--repeat",
        "5",
        "--until-failure",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("1 runs: fail") || text.contains("runs: fail"),
        "{text}"
    );
}

#[test]
fn a_backend_json_description_starts_its_binary_and_a_non_block_type_skips_blk_scenarios() {
    let d = tempfile::tempdir().unwrap();
    // The description's binary must take `--socket-path`: a wrapper around the bundled one.
    let exe = env!("CARGO_BIN_EXE_vhu-conform");
    let wrapper = d.path().join("vhu-mock-blk");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec '{exe}' mock-backend \"$@\"\n"),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&wrapper).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let json = write(
        d.path(),
        "50-mock.json",
        &format!(
            r#"{{"description": "mock", "type": "block", "binary": "{}"}}"#,
            wrapper.display()
        ),
    );
    let (code, text) = vhu(&["--backend-json", &json, "blk/flush"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("1 passed"), "{text}");
    let (code, text) = vhu(&["--backend-json", &json, "--device", "fs", "blk/flush"]);
    assert_eq!(code, Some(4), "{text}");
    assert!(text.contains("the back-end is a fs device"), "{text}");
    let bad = write(d.path(), "bad.json", r#"{"type": "block"}"#);
    let (code, text) = vhu(&["--backend-json", &bad]);
    assert_eq!(code, Some(2), "{text}");
}

#[test]
fn shuffle_prints_its_seed_and_the_same_seed_gives_the_same_order() {
    let order = |seed: &str| {
        let (code, text) = vhu(&["negotiation", "--shuffle", "--seed", seed]);
        assert_eq!(code, Some(0), "{text}");
        assert!(text.contains(&format!("--seed {seed}")), "{text}");
        text.lines()
            .filter(|l| l.starts_with('['))
            .map(|l| l.split_whitespace().nth(3).unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(order("11"), order("11"));
}
