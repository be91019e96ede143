//! Shared by the end-to-end tests against real back-ends (a module of each, not a test): runs
//! the suite against one of ../shared/targets/ or tests/targets/ and reads the JSON report.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One suite run: the report and the console text.
pub struct Run {
    pub report: serde_json::Value,
    pub text: String,
}

/// A start script of ../shared/targets/ (or of `$VHU_TARGETS`, another checkout's), or a loud
/// failure naming `install`.
pub fn shared_script(name: &str, install: &str) -> PathBuf {
    let dir = std::env::var_os("VHU_TARGETS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/targets"),
        PathBuf::from,
    );
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: the real targets are not set up (run {install})",
        p.display()
    );
    p.canonicalize().unwrap()
}

/// Runs every scenario with `--device DEVICE --spawn '<env>SCRIPT {socket}' -j 2`.
pub fn run_suite(device: &str, script_name: &str, env: &str) -> Run {
    let install = "../shared/targets/install.sh fs vsock";
    run_spawned(
        device,
        &shared_script(script_name, install),
        env,
        &["-j", "2"],
        install,
    )
}

/// The program a start script of tests/targets/ runs, installed by ci/install-devices.sh
/// (`bin/NAME` under VHU_TARGETS_DIR, default ~/.cache/vhu-targets), or a loud failure naming
/// the install step.
pub fn installed_device(name: &str, device: &str) -> PathBuf {
    let bin = std::env::var_os("VHU_TARGETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap()).join(".cache/vhu-targets"))
        .join("bin")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: run ci/install-devices.sh {device}",
        bin.display()
    );
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/targets")
        .join(format!("{name}.sh"))
}

/// Runs `vhu-conform --device DEVICE --spawn '<env>SCRIPT {socket}' ARGS --json-report ...`; a
/// run that gives no report (the target could not be started) fails naming `install`.
pub fn run_spawned(device: &str, script: &Path, env: &str, args: &[&str], install: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_vhu-conform"))
        .args(["--device", device, "--spawn"])
        .arg(format!("{env}'{}' {{socket}}", script.display()))
        .args(args)
        .arg("--json-report")
        .arg(&json)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = match std::fs::read_to_string(&json) {
        Ok(j) if out.status.code() != Some(3) => serde_json::from_str(&j).expect("a JSON report"),
        r => panic!(
            "{} could not be run (exit {:?}, {:?}); is it installed? run {install}\n{text}",
            script.display(),
            out.status.code(),
            r.err()
        ),
    };
    Run { report, text }
}

impl Run {
    /// Every scenario's result, in the suite's order.
    pub fn results(&self) -> &Vec<serde_json::Value> {
        self.report["results"].as_array().expect("results")
    }

    /// The outcome of scenario `id` (`pass`, `fail`, `skip`...).
    pub fn outcome(&self, id: &str) -> String {
        self.results()
            .iter()
            .find(|r| r["id"] == id)
            .map(|r| r["outcome"].as_str().unwrap_or("").to_string())
            .unwrap_or_else(|| panic!("no result for {id}"))
    }

    pub fn assert_ran_at_least(&self, n: usize) {
        let ran = self
            .results()
            .iter()
            .filter(|r| r["outcome"] != "skip")
            .count();
        assert!(
            ran >= n,
            "only {ran} scenarios ran (not skipped): {}",
            self.text
        );
        let errors: Vec<_> = self
            .results()
            .iter()
            .filter(|r| r["outcome"] == "error")
            .collect();
        assert!(errors.is_empty(), "harness errors: {errors:?}");
    }

    pub fn assert_data_path_passed(&self, prefix: &str, n: usize) {
        let passed: Vec<&str> = self
            .results()
            .iter()
            .filter(|r| r["outcome"] == "pass")
            .filter_map(|r| r["id"].as_str())
            .filter(|id| id.starts_with(prefix))
            .collect();
        assert!(
            passed.len() >= n,
            "only {passed:?} of the {prefix} scenarios passed: {}",
            self.text
        );
    }

    /// The ids of the scenarios under `prefix` that passed.
    pub fn passed(&self, prefix: &str) -> Vec<&str> {
        self.results()
            .iter()
            .filter(|r| r["outcome"] == "pass")
            .filter_map(|r| r["id"].as_str())
            .filter(|id| id.starts_with(prefix))
            .collect()
    }

    /// Every MUST finding of a failed scenario is one of `want` (scenario, rule) and each of
    /// `want` is found.
    pub fn assert_must_findings_exactly(&self, want: &[(&str, &str)]) {
        let got: std::collections::BTreeSet<(String, String)> = self
            .results()
            .iter()
            .filter(|r| r["outcome"] == "fail")
            .flat_map(|r| {
                let id = r["id"].as_str().unwrap_or("").to_string();
                r["findings"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|f| f["level"] == "must")
                    .map(move |f| (id.clone(), f["rule"].as_str().unwrap_or("").to_string()))
            })
            .collect();
        let want: std::collections::BTreeSet<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(got, want, "FAILs differ from the README's\n{}", self.text);
    }

    /// A pass is earned: every back-end rule a passing scenario cites was checked.
    pub fn assert_passes_checked_their_rules(&self) {
        for r in self.results().iter().filter(|r| r["outcome"] == "pass") {
            let checked = r["checked_rules"].as_array().expect("checked_rules");
            for rule in r["rules"].as_array().expect("rules") {
                let id = rule.as_str().unwrap_or("");
                if vhu_conform::rules::find(id)
                    .is_some_and(vhu_conform::rules::Rule::is_backend_check)
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

    /// The FAILs are exactly `want` (scenario, rule of its first finding).
    pub fn assert_fails_exactly(&self, want: &[(&str, &str)]) {
        let mut got: Vec<(String, String)> = self
            .results()
            .iter()
            .filter(|r| r["outcome"] == "fail")
            .map(|r| {
                (
                    r["id"].as_str().unwrap_or("").to_string(),
                    r["findings"][0]["rule"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        got.sort();
        let mut want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        want.sort();
        assert_eq!(got, want, "{}", self.text);
    }
}
