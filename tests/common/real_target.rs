//! Shared by tests/fs_virtiofsd.rs and tests/vsock_real.rs (a module of each, not a test):
//! runs the whole suite against one of ../shared/targets/ and reads the JSON report.

use std::path::PathBuf;
use std::process::Command;

/// One suite run: the report and the console text.
pub struct Run {
    pub report: serde_json::Value,
    pub text: String,
}

/// The target script, or a loud failure naming the install step.
fn script(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/targets")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: the real targets are not set up (run ../shared/targets/install.sh fs vsock)",
        p.display()
    );
    p.canonicalize().unwrap()
}

/// Runs every scenario with `--device DEVICE --spawn '<env>SCRIPT {socket}' -j 2`.
pub fn run_suite(device: &str, script_name: &str, env: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let s = script(script_name);
    let out = Command::new(env!("CARGO_BIN_EXE_vhu-conform"))
        .args(["--device", device, "--spawn"])
        .arg(format!("{env}'{}' {{socket}}", s.display()))
        .args(["-j", "2", "--json-report"])
        .arg(&json)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = match std::fs::read_to_string(&json) {
        Ok(j) => serde_json::from_str(&j).expect("a JSON report"),
        Err(e) => panic!(
            "{script_name} could not be run ({e}); is it installed? run ../shared/targets/install.sh fs vsock\n{text}"
        ),
    };
    Run { report, text }
}

impl Run {
    fn results(&self) -> &Vec<serde_json::Value> {
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
