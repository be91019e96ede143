//! Shared by the tests that run a whole suite (a module of each, not a test): the run's JSON
//! report and its console text.

use std::process::Command;

/// One run of `vhu-conform`: its exit code, its report (or why there is none) and its stdout
/// followed by its stderr.
pub struct Ran {
    pub code: Option<i32>,
    pub report: Result<serde_json::Value, String>,
    pub text: String,
}

/// Runs `cmd` (a `vhu-conform` command line) with `--json-report` into a fresh directory.
pub fn run_with_report(cmd: &mut Command) -> Ran {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = cmd.arg("--json-report").arg(&json).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(&json)
        .map_err(|e| format!("no report ({e})"))
        .and_then(|j| serde_json::from_str(&j).map_err(|e| format!("bad report ({e})")));
    Ran {
        code: out.status.code(),
        report,
        text,
    }
}

impl Ran {
    /// The report and the text, or a panic showing `what` and the text when there is no report.
    pub fn expect_report(self, what: &str) -> (serde_json::Value, String) {
        match self.report {
            Ok(r) => (r, self.text),
            Err(e) => panic!("{what}: {e}: {}", self.text),
        }
    }
}
