//! The library API as a back-end project uses it from its own `cargo test`: one call with a
//! spawn command, results as values. Here the back-end is the bundled reference back-end, once
//! as it is and once with a fault, so the example shows both a gate that passes and the
//! failure a real departure produces.

use std::time::Duration;

use vhu_conform::api::Suite;

/// The bundled back-end's command line (a real project puts its own binary here).
fn backend(extra: &str) -> String {
    let exe = env!("CARGO_BIN_EXE_vhu-conform");
    format!("'{exe}' mock-backend --socket-path {{socket}} {extra}")
}

#[test]
fn a_conformant_back_end_passes_the_memory_and_vring_areas() {
    let report = Suite::spawn(backend(""))
        .only("memory")
        .only("vring")
        .step_timeout(Duration::from_millis(1000))
        .run()
        .expect("the back-end could be started and reached");
    assert!(report.passed(), "{}", report.summary());
    assert!(report.results.len() > 30, "{}", report.results.len());
    assert_eq!(report.totals().fail, 0);
}

#[test]
fn a_departure_is_a_failure_citing_its_rule_with_what_was_exchanged() {
    let report = Suite::spawn(backend("--fault ignore-rem-mem-reg"))
        .only("memory/rem-then-re-add")
        .run()
        .expect("the back-end could be started and reached");
    assert!(!report.passed());
    let failed: Vec<_> = report.failures().collect();
    assert_eq!(failed.len(), 1, "{}", report.summary());
    let finding = &failed[0].findings[0];
    assert_eq!(finding.rule, "R-MEM-11", "{finding:?}");
    assert!(
        finding.sent.contains("ADD_MEM_REG") || finding.sent.contains("REM_MEM_REG"),
        "{finding:?}"
    );
    assert!(report.summary().contains("R-MEM-11"));
}

#[test]
fn an_unreachable_back_end_is_an_error_not_a_report() {
    let err = Suite::backend("/nonexistent/vhu.sock").run().unwrap_err();
    assert!(
        err.to_string().contains("cannot reach the back-end"),
        "{err}"
    );
}
