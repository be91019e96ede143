//! The command line's exit codes, as documented.

mod common;

use common::vhu;

#[test]
fn a_bad_option_is_a_usage_error() {
    assert_eq!(vhu(&["--no-such-option"]).0, Some(2));
}

#[test]
fn an_unreachable_backend_is_a_setup_error_with_a_hint() {
    let (code, text) = vhu(&[
        "--backend",
        "/nonexistent/vhu.sock",
        "--connect-timeout-ms",
        "200",
    ]);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("use --spawn"), "{text}");
}

#[test]
fn a_filter_that_matches_nothing_means_nothing_ran() {
    assert_eq!(vhu(&["no-such-area/*"]).0, Some(4));
}

#[test]
fn list_shows_every_scenario_with_its_rules() {
    let (code, text) = vhu(&["--list"]);
    assert_eq!(code, Some(0));
    assert!(
        text.contains("memory/add-rem-region") && text.contains("R-MEM-11"),
        "{text}"
    );
}

#[test]
fn a_broken_user_scenario_file_is_a_usage_error_naming_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("bad.toml"),
        "id = \"mine/x\"\ntitle = \"t\"\nrules = [\"R-NEG-01\"]\n[[step]]\ndo = \"fly\"\n",
    )
    .unwrap();
    let (code, text) = vhu(&["--list", "--scenarios", d.path().to_str().unwrap()]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("bad.toml:5"), "{text}");
}

#[test]
fn list_verbose_shows_built_in_scenarios_with_their_description() {
    let (code, text) = vhu(&["--list", "-v", "robustness/call-fd-flood"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("R-ROB-07"), "{text}");
    assert!(
        text.contains("builtin:robustness/call-fd-flood (built-in)"),
        "{text}"
    );
    assert!(text.contains("| Spawn mode only."), "{text}");
}

#[test]
fn an_unwritable_report_file_is_a_usage_error_before_anything_runs() {
    let (code, text) = vhu(&[
        "--junit",
        "/nonexistent/dir/junit.xml",
        "negotiation/full-session",
    ]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("cannot write /nonexistent/dir/junit.xml"),
        "{text}"
    );
}

#[test]
fn color_always_paints_the_verdicts_and_piped_output_stays_plain() {
    let (code, painted) = vhu(&["vring/addr-before-memory", "--color", "always"]);
    assert_eq!(code, Some(0), "{painted}");
    assert!(
        painted.contains("\u{1b}[32mPASS \u{1b}[0m vring/addr-before-memory"),
        "{painted}"
    );
    // Into a pipe, `auto` (the default) means no escape codes and no progress bar.
    let (code, plain) = vhu(&["vring/addr-before-memory"]);
    assert_eq!(code, Some(0), "{plain}");
    assert!(!plain.contains('\u{1b}'), "{plain}");
    assert!(plain.contains("PASS  vring/addr-before-memory"), "{plain}");
    let (code, never) = vhu(&["vring/addr-before-memory", "--color", "never"]);
    assert_eq!(code, Some(0));
    assert!(!never.contains('\u{1b}'), "{never}");
}

#[test]
fn a_back_end_that_daemonizes_fails_r_prog_06_and_the_plain_one_passes() {
    use std::os::unix::fs::PermissionsExt;
    let exe = env!("CARGO_BIN_EXE_vhu-conform");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("daemonizing.sh");
    // Starts the reference back-end in the background and exits once its socket exists (as a
    // daemon's parent does when the child is ready): the served socket outlives the process
    // the front-end started.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n'{exe}' mock-backend \"$@\" >/dev/null 2>&1 &\n\
             for i in $(seq 500); do [ -S \"$2\" ] && exit 0; sleep 0.01; done\nexit 1\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spawn = format!("'{}' --socket-path {{socket}}", script.display());
    let (code, text) = vhu(&[
        "program/socket-path-devnull-stdio",
        "--spawn",
        &spawn,
        "--device",
        "blk",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("R-PROG-06") && text.contains("daemonized"),
        "{text}"
    );
    let (code, text) = vhu(&["program/socket-path-devnull-stdio"]);
    assert_eq!(code, Some(0), "{text}");
}
