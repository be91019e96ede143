//! `vhu-conform frontend`'s command line: its arguments, the scenario filter, and the run of the
//! selected scenarios through the reporters to an exit code.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::device::DeviceType;
use crate::engine::{Offer, RunEvent, RunSummary};
use crate::exit_code;
use crate::exit_code::ExitPolicy;
use crate::report;
use crate::rules;

use super::scenarios::{self, FeScenario};
use super::{FeOptions, FeTarget, backend, coverage, run_scenario};

/// `vhu-conform frontend`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "vhu-conform frontend",
    about = "Judge a vhost-user FRONT-END: vhu-conform plays a strict back-end and checks every message",
    after_help = "Exit codes: 0 all passed; 1 failures; 2 usage; 3 setup; 4 nothing ran; 5 harness error"
)]
pub struct FeArgs {
    /// The front-end command, run once per scenario; `{socket}` is the path vhu-conform
    /// listens on.
    #[arg(long, conflicts_with = "listen")]
    pub exec: Option<String>,
    /// Listen on PATH and wait for a front-end that connects by itself (one scenario per
    /// front-end that comes).
    #[arg(long)]
    pub listen: Option<PathBuf>,
    /// The device the judging back-end plays: blk, net, fs, vsock, rng.
    #[arg(long, default_value = "blk")]
    pub device: String,
    /// Scenario ids or globs (`frontend/no-*`); none = all.
    pub filters: Vec<String>,
    /// List the scenarios and exit.
    #[arg(long)]
    pub list: bool,
    /// Print the front-end rule coverage table.
    #[arg(long)]
    pub rules: bool,
    /// How long one scenario may last (the front-end is then ended).
    #[arg(long, default_value_t = 30_000)]
    pub scenario_timeout_ms: u64,
    /// How long to wait for the front-end to connect.
    #[arg(long, default_value_t = 20_000)]
    pub connect_timeout_ms: u64,
    /// Warnings fail.
    #[arg(long)]
    pub strict: bool,
    /// Known departures (the same file format as the back-end side).
    #[arg(long)]
    pub expect: Option<PathBuf>,
    /// Write a JUnit XML report.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Write the JSON report.
    #[arg(long)]
    pub json_report: Option<PathBuf>,
    /// `json`: the JSON report on stdout instead of the human view.
    #[arg(long, default_value = "human")]
    pub format: String,
    /// Show notes and transcripts of every scenario.
    #[arg(short, long)]
    pub verbose: bool,
}

fn glob(pat: &str, s: &str) -> bool {
    match pat.split_once('*') {
        None => pat == s,
        Some((head, rest)) => {
            s.starts_with(head)
                && (0..=s.len() - head.len()).any(|i| glob(rest, &s[head.len() + i..]))
        }
    }
}

/// `vhu-conform frontend ARGS`.
pub fn run_from_args(argv: Vec<OsString>) -> ExitCode {
    let rest =
        std::iter::once(OsString::from("vhu-conform frontend")).chain(argv.into_iter().skip(2));
    match FeArgs::try_parse_from(rest) {
        Ok(a) => ExitCode::from(run_cli(&a)),
        Err(e) => {
            let _ = e.print();
            ExitCode::from(if e.use_stderr() {
                exit_code::USAGE
            } else {
                exit_code::ALL_PASSED
            })
        }
    }
}

fn run_cli(a: &FeArgs) -> u8 {
    let usage = |m: String| {
        eprintln!("vhu-conform frontend: {m}");
        exit_code::USAGE
    };
    let device = match DeviceType::parse(&a.device) {
        Ok(d) => d,
        Err(e) => return usage(e),
    };
    let selected: Vec<FeScenario> = scenarios::all()
        .into_iter()
        .filter(|s| a.filters.is_empty() || a.filters.iter().any(|f| glob(f, s.id)))
        .collect();
    if a.list {
        for s in &selected {
            println!(
                "{:<30} {:<7} {}",
                s.id,
                format!("{:?}", s.level).to_lowercase(),
                s.title
            );
        }
        if a.rules {
            print!("{}", rules::render(&coverage(None)));
        }
        return exit_code::ALL_PASSED;
    }
    if selected.is_empty() {
        eprintln!("vhu-conform frontend: no scenario matches");
        return exit_code::NOTHING_RAN;
    }
    let target = match (&a.exec, &a.listen) {
        (Some(c), None) => FeTarget::Exec(c.clone()),
        (None, Some(p)) => FeTarget::Listen(p.clone()),
        _ => return usage("give --exec 'CMD {socket}' or --listen PATH".into()),
    };
    let expect = match &a.expect {
        Some(p) => match crate::expect::Expectations::load(p) {
            Ok(x) => Some(x),
            Err(e) => return usage(e.to_string()),
        },
        None => None,
    };
    let mut reporters = report::Reporters::default();
    match a.format.as_str() {
        "human" => reporters.push(Box::new(
            report::Human::new(std::io::stdout(), a.verbose).show_rules(a.rules),
        )),
        "json" => reporters.push(Box::new(report::JsonReporter::new(std::io::stdout()))),
        other => return usage(format!("unknown format {other:?} (human, json)")),
    }
    for (p, json) in [(&a.junit, false), (&a.json_report, true)] {
        let Some(p) = p else { continue };
        match std::fs::File::create(p) {
            Ok(f) => {
                let w = std::io::BufWriter::new(f);
                if json {
                    reporters.push(Box::new(report::JsonReporter::new(w)));
                } else {
                    reporters.push(Box::new(report::JunitReporter::new(w)));
                }
            }
            Err(e) => return usage(format!("cannot write {}: {e}", p.display())),
        }
    }
    let opts = FeOptions {
        target,
        device,
        scenario_timeout: Duration::from_millis(a.scenario_timeout_ms),
        connect_timeout: Duration::from_millis(a.connect_timeout_ms),
        strict: a.strict,
    };
    let p = backend::Profile::for_device(device);
    let offer = Offer {
        features: p.features,
        protocol: p.protocol,
        device: Some(device),
        device_source: Some(crate::device::DeviceSource::Option),
        ..Offer::default()
    };
    // The same event stream as the back-end side's run, one scenario after the other.
    let mut emit = |e: RunEvent<'_>| reporters.emit(&e);
    emit(RunEvent::RunStarted {
        total: selected.len(),
        offer: &offer,
    });
    let mut results = Vec::new();
    for (index, s) in selected.iter().enumerate() {
        emit(RunEvent::ScenarioStarted { index, id: s.id });
        let mut res = run_scenario(&opts, s);
        if let Some(x) = &expect {
            x.apply(std::slice::from_mut(&mut res));
        }
        emit(RunEvent::scenario_done(index, &res));
        results.push(res);
    }
    let rules = coverage(Some(&results));
    let summary = RunSummary::new(&results, rules, vec![], ExitPolicy::default());
    emit(RunEvent::RunFinished(&summary));
    if let Err(e) = reporters.finish() {
        return usage(format!("cannot write a report: {e}"));
    }
    summary.exit.code()
}
