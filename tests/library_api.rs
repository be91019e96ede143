//! The library API as a back-end project uses it from its own `cargo test`: one call with a
//! spawn command, results as values. Here the back-end is the bundled reference back-end, once
//! as it is and once with a fault, so the example shows both a gate that passes and the
//! failure a real departure produces; the exit code the command would return comes with the
//! report, and the event stream a reporter gets is the same whatever the number of jobs.

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

#[test]
fn a_library_user_gets_the_exit_code_without_the_command_line() {
    use vhu_conform::exit_code;
    let pass = Suite::spawn(backend(""))
        .only("memory/rem-then-re-add")
        .run()
        .expect("the back-end could be started and reached");
    assert_eq!(
        pass.exit_code(),
        exit_code::ALL_PASSED,
        "{}",
        pass.summary()
    );
    let fail = Suite::spawn(backend("--fault ignore-rem-mem-reg"))
        .only("memory/rem-then-re-add")
        .run()
        .expect("the back-end could be started and reached");
    assert_eq!(fail.exit_code(), exit_code::FAILURES, "{}", fail.summary());
    // An entry that matches no scenario is told; it fails the run only when asked.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("expect.toml");
    std::fs::write(
        &stale,
        "[[expect]]\nscenario = \"gone/*\"\noutcome = \"skip\"\nreason = \"removed\"\n",
    )
    .unwrap();
    let suite = Suite::spawn(backend(""))
        .only("memory/rem-then-re-add")
        .expect_file(&stale)
        .unwrap();
    let lenient = suite.run().unwrap();
    assert_eq!(lenient.exit_code(), exit_code::ALL_PASSED);
    assert_eq!(lenient.stale.len(), 1);
    let strict = suite.strict_expectations(true).run().unwrap();
    assert_eq!(strict.exit_code(), exit_code::FAILURES, "{:?}", strict.exit);
    assert!(
        strict.exit.to_string().contains("1 stale entries"),
        "{}",
        strict.exit
    );
}

/// The events of a run, as `kind index id outcome` lines, `ScenarioStarted` apart.
fn events_of(suite: &Suite) -> (Vec<String>, Vec<(usize, String)>, u8) {
    use vhu_conform::engine::RunEvent;
    let (mut ordered, mut started) = (Vec::new(), Vec::new());
    let report = suite
        .run_with(&mut |e| match e {
            RunEvent::RunStarted { total, .. } => ordered.push(format!("run-started {total}")),
            RunEvent::ScenarioStarted { index, id } => {
                started.push((index, id.to_string()));
                // Where the scenario started among the ordered events.
                ordered.push(format!("(started {index})"));
            }
            RunEvent::ScenarioSkipped { index, result, .. } => {
                ordered.push(format!("skipped {index} {}", result.id));
            }
            RunEvent::ScenarioFinished { index, result } => ordered.push(format!(
                "finished {index} {} {:?}",
                result.id, result.outcome
            )),
            RunEvent::RunFinished(s) => ordered.push(format!(
                "run-finished {:?} {} rules {}",
                s.totals,
                s.exit.code(),
                s.rules.len()
            )),
        })
        .expect("the back-end could be started and reached");
    (ordered, started, report.exit_code())
}

#[test]
fn the_event_stream_is_the_same_for_one_job_and_several_but_for_start_times() {
    let suite = Suite::spawn(backend("")).only("memory").only("shmem");
    let (serial, started1, code1) = events_of(&suite.clone().jobs(1));
    let (parallel, started2, code2) = events_of(&suite.jobs(3));
    // A scenario starts before it is reported, in each run.
    for ordered in [&serial, &parallel] {
        for (i, line) in ordered.iter().enumerate() {
            if let Some(index) = line
                .split(' ')
                .nth(1)
                .filter(|_| line.starts_with("finished"))
            {
                let start = format!("(started {index})");
                assert!(
                    ordered[..i].contains(&start),
                    "{line} before it started: {ordered:#?}"
                );
            }
        }
    }
    let without_starts = |v: &[String]| -> Vec<String> {
        v.iter().filter(|l| !l.starts_with('(')).cloned().collect()
    };
    assert_eq!(without_starts(&serial), without_starts(&parallel));
    assert!(serial.first().unwrap().starts_with("run-started"));
    assert!(serial.last().unwrap().starts_with("run-finished"));
    assert!(
        serial.iter().any(|l| l.starts_with("finished")),
        "{serial:#?}"
    );
    // Without --shmem the SHMEM scenarios are skipped before they start.
    assert!(
        serial.iter().any(|l| l.starts_with("skipped")),
        "{serial:#?}"
    );
    let mut a = started1.clone();
    let mut b = started2.clone();
    a.sort();
    b.sort();
    assert_eq!(
        a, b,
        "the same scenarios start, whatever the number of jobs"
    );
    assert_eq!(code1, code2);
}
