//! Reporters consume the engine's events and results; they never decide verdicts.
//! Human output (progress and recap), JSON (versioned schema) and JUnit XML.

use std::fmt::Write as _;
use std::io::Write;

use serde::Serialize;
use vhu_mock_frontend::transcript::render;

use crate::engine::{Offer, Outcome, RunEvent, ScenarioResult};
use crate::rules::RuleCoverage;

/// A consumer of the engine's events: shows progress while the run goes and writes its report
/// at the end. Reporters never decide verdicts; they render the engine's.
pub trait Reporter {
    /// One event of the run, as it happens.
    fn event(&mut self, e: &RunEvent<'_>);
    /// The run is over: write the report.
    fn finish(&mut self, run: &RunReport<'_>) -> std::io::Result<()>;
}

/// Everything a finished run reports.
#[derive(Clone, Copy, Debug)]
pub struct RunReport<'a> {
    /// One result per selected scenario, in run order.
    pub results: &'a [ScenarioResult],
    /// What the back-end offered.
    pub offer: &'a Offer,
    /// Every rule of the checklist and where it stands after this run.
    pub rules: &'a [RuleCoverage],
    /// Print the whole rule table (human output).
    pub show_rules: bool,
    /// `--expect` entries that matched no scenario.
    pub stale: &'a [crate::expect::Entry],
}

/// Version of the JSON report's schema; bumped on incompatible changes.
pub const JSON_SCHEMA_VERSION: u32 = 1;

/// Counts per outcome.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    /// Passed.
    pub pass: usize,
    /// Failed.
    pub fail: usize,
    /// Passed with warnings.
    pub warn: usize,
    /// Skipped.
    pub skip: usize,
    /// Harness errors.
    pub error: usize,
    /// Failures (or warnings) an `--expect` entry expected: not counted in `fail` or `warn`.
    pub xfail: usize,
    /// Passes where a failure was expected (also counted in `pass`).
    pub xpass: usize,
}

impl Totals {
    /// Counts the results.
    pub fn of(results: &[ScenarioResult]) -> Self {
        use crate::expect::Verdict;
        let mut t = Self::default();
        for r in results {
            match r.expectation.as_ref().map(|a| &a.verdict) {
                Some(Verdict::Xfail) => {
                    t.xfail += 1;
                    continue;
                }
                Some(Verdict::Xpass) => t.xpass += 1,
                _ => {}
            }
            match r.outcome {
                Outcome::Pass => t.pass += 1,
                Outcome::Fail => t.fail += 1,
                Outcome::Warn => t.warn += 1,
                Outcome::Skip { .. } => t.skip += 1,
                Outcome::Error { .. } => t.error += 1,
            }
        }
        t
    }
}

/// The verdict's word on the progress line: a failure caused by a crash reads CRASH.
fn label_of(r: &ScenarioResult) -> &'static str {
    use crate::expect::Verdict;
    match r.expectation.as_ref().map(|a| &a.verdict) {
        Some(Verdict::Xfail) => return "XFAIL",
        Some(Verdict::Xpass) => return "XPASS",
        _ => {}
    }
    if matches!(r.outcome, Outcome::Fail) && r.findings.iter().any(|f| f.crash.is_some()) {
        "CRASH"
    } else {
        label(&r.outcome)
    }
}

fn label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Pass => "PASS",
        Outcome::Fail => "FAIL",
        Outcome::Warn => "WARN",
        Outcome::Skip { .. } => "SKIP",
        Outcome::Error { .. } => "ERROR",
    }
}

/// A verdict label padded to five columns, in its colour when `color`.
fn paint(tag: &str, color: bool) -> String {
    if !color {
        return format!("{tag:<5}");
    }
    let style = match tag {
        "PASS" => console::Style::new().green(),
        "FAIL" | "CRASH" | "XPASS" => console::Style::new().red().bold(),
        "WARN" | "XFAIL" => console::Style::new().yellow(),
        "ERROR" | "STALE" => console::Style::new().magenta().bold(),
        _ => console::Style::new().dim(),
    };
    // Padded before painting: escape codes would break `{:<5}`.
    style
        .force_styling(true)
        .apply_to(format!("{tag:<5}"))
        .to_string()
}

/// Human output: one progress line per scenario, details of failures, a recap. On a terminal
/// ([`Human::live`]) a progress bar under the lines shows how far the run is and which
/// scenarios are running; lines are the same either way.
pub struct Human<W: Write> {
    out: W,
    done: usize,
    total: usize,
    verbose: bool,
    color: bool,
    live: Option<indicatif::ProgressBar>,
    running: Vec<String>,
}

impl<W: Write> Human<W> {
    /// Writes to `out`; `verbose` shows transcripts of warnings too.
    pub fn new(out: W, verbose: bool) -> Self {
        Self {
            out,
            done: 0,
            total: 0,
            verbose,
            color: false,
            live: None,
            running: Vec::new(),
        }
    }

    /// Verdict labels in colour (ANSI escapes).
    pub fn with_color(mut self, color: bool) -> Self {
        self.color = color;
        self
    }

    /// A live progress bar on standard error (for a terminal: `cli` turns it on when both
    /// standard output and standard error are terminals).
    pub fn live(mut self, on: bool) -> Self {
        self.live = on.then(|| {
            // Hidden until the run starts and its size is known.
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::hidden(),
            );
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{pos:>3}/{len}] {elapsed} {wide_msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        self
    }

    /// Writes `text` above the progress bar (or plainly without one).
    fn print(&mut self, text: &str) {
        let out = &mut self.out;
        match &self.live {
            Some(bar) => bar.suspend(|| {
                let _ = out.write_all(text.as_bytes());
                let _ = out.flush();
            }),
            None => {
                let _ = out.write_all(text.as_bytes());
            }
        }
    }

    fn show_running(&self) {
        if let Some(bar) = &self.live {
            bar.set_position(self.done as u64);
            bar.set_message(format!("running: {}", self.running.join(", ")));
        }
    }

    /// Consumes one event.
    pub fn event(&mut self, e: &RunEvent<'_>) {
        match e {
            RunEvent::Started { total, offer } => {
                self.total = *total;
                if let Some(bar) = &self.live {
                    bar.set_length(*total as u64);
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    bar.enable_steady_tick(std::time::Duration::from_millis(120));
                }
                let mut text = format!(
                    "vhu-conform: {total} scenarios; back-end offers features {:#x}, protocol features {:#x}; rings of {}\n",
                    offer.features, offer.protocol, offer.queue_size
                );
                text.push_str(&match (offer.device, offer.device_source) {
                    (Some(d), Some(src)) => {
                        format!("vhu-conform: device type {d} (from {})\n", src.describe())
                    }
                    _ => "vhu-conform: DEVICE TYPE UNKNOWN: device-specific scenarios (data path, config layout) are skipped; pass --device TYPE (block, net, fs, vsock, rng, ...)\n".to_string(),
                });
                self.print(&text);
            }
            RunEvent::ScenarioStarted { id } => {
                self.running.push((*id).to_string());
                self.show_running();
            }
            RunEvent::Finished(r) => {
                self.done += 1;
                if let Some(at) = self.running.iter().position(|id| *id == r.id) {
                    self.running.remove(at);
                }
                let mut text = format!(
                    "[{:>3}/{}] {} {} ({} ms)\n",
                    self.done,
                    self.total,
                    paint(label_of(r), self.color),
                    r.id,
                    r.duration_ms
                );
                text.push_str(&details(r, self.verbose));
                self.print(&text);
                self.show_running();
            }
        }
    }

    /// The recap after the run.
    pub fn recap(&mut self, results: &[ScenarioResult]) {
        use crate::expect::Verdict;
        if let Some(bar) = self.live.take() {
            bar.finish_and_clear();
        }
        let t = Totals::of(results);
        let expected = if t.xfail + t.xpass > 0 {
            format!(
                ", {} expected failures, {} unexpected passes",
                t.xfail, t.xpass
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            self.out,
            "\n{} passed, {} failed, {} warned, {} skipped, {} errors{expected}",
            t.pass, t.fail, t.warn, t.skip, t.error
        );
        for r in results {
            let verdict = r
                .expectation
                .as_ref()
                .map(|a| (&a.verdict, a.reason.as_str()));
            let tag = match (verdict, &r.outcome) {
                (Some((Verdict::Xfail, _)), _) => "XFAIL",
                (Some((Verdict::Xpass, _)), _) => "XPASS",
                (Some((Verdict::Ran, _)), _) => "RAN",
                (_, Outcome::Fail | Outcome::Warn | Outcome::Error { .. }) => label_of(r),
                _ => continue,
            };
            let rules: Vec<&str> = r.findings.iter().map(|f| f.rule.as_str()).collect();
            let why = match verdict {
                Some((Verdict::Xfail, why)) => format!(" (expected: {why})"),
                Some((Verdict::Xpass, why)) => {
                    format!(" (a failure was expected: {why}; the entry can go)")
                }
                Some((Verdict::Ran, why)) => format!(" (a skip was expected: {why})"),
                _ => String::new(),
            };
            let tag = paint(tag, self.color);
            let _ = writeln!(self.out, "  {tag} {} {}{why}", r.id, rules.join(" "));
        }
        // How to reproduce: every scenario is its own reproducer, on a fresh process in spawn
        // mode (the transcript above shows what it sends).
        let failed = results.iter().find(|r| matches!(r.outcome, Outcome::Fail));
        if let Some(r) = failed {
            let _ = writeln!(
                self.out,
                "to reproduce: the same command with a scenario id as filter (`vhu-conform ... {}`), or all failures with --json-report FILE, then --rerun-failed FILE",
                r.id
            );
        }
    }

    /// Expectation entries that matched nothing.
    pub fn stale(&mut self, stale: &[crate::expect::Entry]) {
        for e in stale {
            let _ = writeln!(
                self.out,
                "  {} expectation {:?} matches no scenario ({})",
                paint("STALE", self.color),
                e.scenario,
                e.reason
            );
        }
    }
}

impl<W: Write> Reporter for Human<W> {
    fn event(&mut self, e: &RunEvent<'_>) {
        Human::event(self, e);
    }

    fn finish(&mut self, run: &RunReport<'_>) -> std::io::Result<()> {
        self.recap(run.results);
        self.stale(run.stale);
        if run.show_rules {
            writeln!(
                self.out,
                "\nRule coverage:\n{}",
                crate::rules::render(run.rules)
            )?;
        } else {
            let counts = crate::rules::summary(run.rules)
                .iter()
                .map(|(l, n)| format!("{n} {l}"))
                .collect::<Vec<_>>()
                .join(", ");
            writeln!(self.out, "rules: {counts} (--rules shows the table)")?;
        }
        self.out.flush()
    }
}

/// The JSON report ([`json`]) written to `out` at the end of the run.
pub struct JsonReporter<W: Write> {
    out: W,
}

impl<W: Write> JsonReporter<W> {
    /// Writes the report to `out` (stdout or a file).
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

impl<W: Write> Reporter for JsonReporter<W> {
    fn event(&mut self, _e: &RunEvent<'_>) {}

    fn finish(&mut self, run: &RunReport<'_>) -> std::io::Result<()> {
        writeln!(self.out, "{}", json(run))?;
        self.out.flush()
    }
}

/// The JUnit XML report ([`junit`]) written to `out` at the end of the run.
pub struct JunitReporter<W: Write> {
    out: W,
}

impl<W: Write> JunitReporter<W> {
    /// Writes the report to `out`.
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

impl<W: Write> Reporter for JunitReporter<W> {
    fn event(&mut self, _e: &RunEvent<'_>) {}

    fn finish(&mut self, run: &RunReport<'_>) -> std::io::Result<()> {
        self.out.write_all(junit(run.results).as_bytes())?;
        self.out.flush()
    }
}

/// What to show under a scenario's progress line.
pub fn details(r: &ScenarioResult, verbose: bool) -> String {
    let mut s = String::new();
    match &r.outcome {
        Outcome::Skip { reason } => {
            let _ = writeln!(s, "        skipped: {reason}");
        }
        Outcome::Error { reason } => {
            let _ = writeln!(
                s,
                "        harness error (not the back-end's fault): {reason}"
            );
        }
        _ => {}
    }
    for f in &r.findings {
        let _ = writeln!(s, "        {} [{:?}] {}", f.rule, f.level, f.summary);
        let _ = writeln!(s, "          sent:     {}", f.sent);
        let _ = writeln!(s, "          received: {}", f.received);
        let _ = writeln!(s, "          expected: {}", f.expected);
    }
    for n in &r.notes {
        let _ = writeln!(s, "        note: {n}");
    }
    let show = matches!(r.outcome, Outcome::Fail) || (verbose && !r.findings.is_empty());
    if show && !r.transcript.is_empty() {
        let tail = &r.transcript[r.transcript.len().saturating_sub(12)..];
        let _ = writeln!(s, "        transcript (last {} messages):", tail.len());
        for line in render(tail).lines() {
            let _ = writeln!(s, "          {line}");
        }
    }
    s
}

#[derive(Serialize)]
struct JsonReport<'a> {
    schema_version: u32,
    tool: &'static str,
    version: &'static str,
    offer: &'a Offer,
    totals: Totals,
    results: &'a [ScenarioResult],
    rules: &'a [RuleCoverage],
    stale_expectations: &'a [crate::expect::Entry],
}

/// The JSON report.
pub fn json(run: &RunReport<'_>) -> String {
    let r = JsonReport {
        schema_version: JSON_SCHEMA_VERSION,
        tool: "vhu-conform",
        version: env!("CARGO_PKG_VERSION"),
        offer: run.offer,
        totals: Totals::of(run.results),
        results: run.results,
        rules: run.rules,
        stale_expectations: run.stale,
    };
    serde_json::to_string_pretty(&r).expect("results serialize")
}

/// The JUnit XML report: one test case per scenario, grouped by area.
pub fn junit(results: &[ScenarioResult]) -> String {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("vhu-conform");
    let mut suites: Vec<TestSuite> = Vec::new();
    for r in results {
        let area = r.id.split('/').next().unwrap_or("scenarios").to_string();
        let xfail = r
            .expectation
            .as_ref()
            .filter(|a| a.verdict == crate::expect::Verdict::Xfail);
        let status = match &r.outcome {
            // An expected failure is reported as skipped with its reason, so CI stays green on
            // it and the reason stays visible.
            Outcome::Fail | Outcome::Warn if xfail.is_some() => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(format!(
                    "expected failure: {}",
                    xfail.map_or("", |a| a.reason.as_str())
                ));
                s.set_description(details(r, true));
                s
            }
            Outcome::Pass | Outcome::Warn => TestCaseStatus::success(),
            Outcome::Skip { reason } => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(reason.clone());
                s
            }
            Outcome::Fail | Outcome::Error { .. } => {
                let kind = if matches!(r.outcome, Outcome::Fail) {
                    NonSuccessKind::Failure
                } else {
                    NonSuccessKind::Error
                };
                let mut s = TestCaseStatus::non_success(kind);
                if r.findings.iter().any(|f| f.crash.is_some()) {
                    s.set_type("crash");
                }
                let msg = r
                    .findings
                    .iter()
                    .find(|f| f.crash.is_some())
                    .or(r.findings.first())
                    .map_or_else(
                        || format!("{:?}", r.outcome),
                        |f| format!("{} {}", f.rule, f.summary),
                    );
                s.set_message(msg);
                s.set_description(details(r, true));
                s
            }
        };
        let mut case = TestCase::new(r.id.clone(), status);
        case.set_classname(format!("vhu-conform.{area}"));
        case.set_time(std::time::Duration::from_millis(r.duration_ms));
        if matches!(r.outcome, Outcome::Warn) {
            // Warnings pass in JUnit terms; their findings still travel with the case.
            case.set_system_out(details(r, true));
        }
        match suites.iter_mut().find(|s| s.name.as_str() == area) {
            Some(s) => {
                s.add_test_case(case);
            }
            None => {
                let mut s = TestSuite::new(area);
                s.add_test_case(case);
                suites.push(s);
            }
        }
    }
    report.add_test_suites(suites);
    report.to_string().expect("junit serializes")
}

#[cfg(test)]
mod tests {
    use vhu_mock_frontend::transcript::{Channel, Direction, Entry};

    use super::*;
    use crate::engine::Finding;
    use crate::scenario::Level;

    fn result(id: &str, outcome: Outcome, messages: usize) -> ScenarioResult {
        let transcript = (0..messages as u64)
            .map(|seq| Entry {
                seq,
                at_us: seq,
                channel: Channel::Main,
                direction: Direction::ToBackend,
                code: 1,
                name: format!("MSG_{seq}"),
                flags: 1,
                size: 0,
                fds: 0,
                decoded: String::new(),
            })
            .collect();
        let findings = match outcome {
            Outcome::Fail | Outcome::Warn => vec![Finding {
                rule: crate::rules::id::R_MEM_11,
                level: Level::Must,
                summary: "step 3: ack 0 for a region that does not exist".into(),
                sent: "REM_MEM_REG".into(),
                received: "ack 0".into(),
                expected: "a non-zero ack".into(),
                crash: None,
            }],
            _ => vec![],
        };
        ScenarioResult {
            id: id.into(),
            title: "t".into(),
            rules: vec![crate::rules::id::R_MEM_11],
            checked_rules: vec![crate::rules::id::R_MEM_11],
            level: Level::Must,
            source: "scenarios/x.toml".into(),
            outcome,
            findings,
            notes: vec![],
            duration_ms: 3,
            transcript,
            expectation: None,
        }
    }

    #[test]
    fn a_failure_shows_its_finding_and_the_last_twelve_messages() {
        let text = details(&result("memory/x", Outcome::Fail, 30), false);
        assert!(text.contains("R-MEM-11") && text.contains("expected: a non-zero ack"));
        assert!(text.contains("transcript (last 12 messages)"), "{text}");
        assert!(
            text.contains("MSG_29") && !text.contains("MSG_17 "),
            "{text}"
        );
    }

    #[test]
    fn the_json_report_is_versioned_and_keeps_whole_transcripts() {
        let results = [
            result("a/pass", Outcome::Pass, 2),
            result("a/fail", Outcome::Fail, 30),
        ];
        let run = RunReport {
            results: &results,
            offer: &Offer::default(),
            rules: &crate::rules::coverage(&[], Some(&results)),
            show_rules: false,
            stale: &[],
        };
        let v: serde_json::Value = serde_json::from_str(&json(&run)).unwrap();
        assert_eq!(v["schema_version"], JSON_SCHEMA_VERSION);
        assert_eq!(v["totals"]["fail"], 1);
        assert_eq!(v["results"][1]["outcome"], "fail");
        assert_eq!(v["results"][1]["level"], "must");
        assert_eq!(v["results"][1]["transcript"].as_array().unwrap().len(), 30);
        // The failed scenario's finding cites R-MEM-11: the rule table says so.
        let rules = v["rules"].as_array().unwrap();
        let mem11 = rules.iter().find(|r| r["id"] == "R-MEM-11").unwrap();
        assert_eq!(mem11["status"], "checked_fail");
    }

    #[test]
    fn junit_marks_failures_and_errors_and_keeps_warning_findings() {
        let results = [
            result("a/fail", Outcome::Fail, 1),
            result("a/warn", Outcome::Warn, 1),
            result(
                "b/err",
                Outcome::Error {
                    reason: "no memfd".into(),
                },
                0,
            ),
            result(
                "b/skip",
                Outcome::Skip {
                    reason: "back-end does not offer protocol bit 15".into(),
                },
                0,
            ),
        ];
        let xml = junit(&results);
        assert!(
            xml.contains("<failure") && xml.contains("R-MEM-11"),
            "{xml}"
        );
        assert!(xml.contains("<error"), "{xml}");
        assert!(
            xml.contains("<skipped") && xml.contains("protocol bit 15"),
            "{xml}"
        );
        assert!(xml.contains("<system-out>"), "{xml}");
    }

    #[test]
    fn the_human_recap_counts_every_outcome() {
        let mut out = Vec::new();
        let mut h = Human::new(&mut out, false);
        let results = [
            result("a/pass", Outcome::Pass, 0),
            result("a/fail", Outcome::Fail, 0),
        ];
        let run = RunReport {
            results: &results,
            offer: &Offer::default(),
            rules: &crate::rules::coverage(&[], Some(&results)),
            show_rules: true,
            stale: &[],
        };
        Reporter::finish(&mut h, &run).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("1 passed, 1 failed, 0 warned, 0 skipped, 0 errors"),
            "{text}"
        );
        assert!(text.contains("R-MEM-11     BE     MUST   FAIL"), "{text}");
        assert!(text.contains("FAIL  a/fail R-MEM-11"), "{text}");
    }
}
