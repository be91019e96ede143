//! The `bundled-backend` feature (issue 12): without it the library does not link the reference
//! back-end (`vhu-mock-backend`), and the command says so when no target is given.

use std::path::Path;
use std::process::Command;

/// The package names (first word of each line) of `cargo tree -p vhu-conform -e normal` with
/// `features` (`--no-default-features` or nothing), offline from the workspace manifest.
fn normal_deps(features: &[&str]) -> Vec<String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--manifest-path"])
        .arg(&manifest)
        .args(["-p", "vhu-conform", "-e", "normal", "--prefix", "none"])
        .args(features)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "cargo tree failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn without_default_features_the_library_does_not_link_the_reference_back_end() {
    let lean = normal_deps(&["--no-default-features"]);
    assert!(
        lean.iter().any(|p| p == "vhu-conform") && lean.iter().any(|p| p == "vhu-protocol"),
        "the tree lists the package and its dependencies: {lean:?}"
    );
    assert!(
        !lean.iter().any(|p| p.starts_with("vhu-mock-backend")),
        "vhu-mock-backend linked without the bundled-backend feature: {lean:?}"
    );
    // The check can see it: with the default features the reference back-end is there.
    let full = normal_deps(&[]);
    assert!(
        full.iter().any(|p| p == "vhu-mock-backend"),
        "the default features link the bundled back-end: {full:?}"
    );
}

/// Runs `vhu-conform ARGS`; its exit code and its stdout followed by its stderr.
#[cfg(not(feature = "bundled-backend"))]
fn vhu(args: &[&str]) -> (Option<i32>, String) {
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

/// What a build without the bundled back-end says: that it has none, and the options to use.
#[cfg(not(feature = "bundled-backend"))]
fn says_no_bundled_backend(text: &str) {
    assert!(text.contains("no bundled back-end"), "{text}");
    for opt in ["--spawn", "--backend", "--listen"] {
        assert!(text.contains(opt), "{opt}: {text}");
    }
}

#[cfg(not(feature = "bundled-backend"))]
#[test]
fn without_the_feature_no_target_is_a_usage_error_naming_the_options() {
    for args in [&[][..], &["negotiation/full-session"], &["--list"]] {
        let (code, text) = vhu(args);
        assert_eq!(code, Some(2), "{args:?}: {text}");
        says_no_bundled_backend(&text);
    }
}

#[cfg(not(feature = "bundled-backend"))]
#[test]
fn without_the_feature_the_mock_backend_subcommand_is_a_usage_error() {
    let (code, text) = vhu(&["mock-backend", "--socket-path", "/nonexistent/be.sock"]);
    assert_eq!(code, Some(2), "{text}");
    says_no_bundled_backend(&text);
}

#[cfg(not(feature = "bundled-backend"))]
#[test]
fn without_the_feature_a_given_target_is_still_used() {
    let (code, text) = vhu(&[
        "--backend",
        "/nonexistent/vhu.sock",
        "--connect-timeout-ms",
        "200",
    ]);
    assert_eq!(
        code,
        Some(3),
        "a setup error, not the missing bundled back-end: {text}"
    );
    assert!(!text.contains("no bundled back-end"), "{text}");
}
