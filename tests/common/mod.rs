//! Shared by the command-line tests: running the built `vhu-conform`.

use std::process::Command;

/// Runs `vhu-conform ARGS`; its exit code and its stdout followed by its stderr.
pub fn vhu(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vhu-conform"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}
