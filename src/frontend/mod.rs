//! Judging front-ends (issue 16): `vhu-conform frontend --exec 'CMD {socket}' --device blk`.
//!
//! vhu-conform listens on a socket, starts the front-end (or waits for one, `--listen`), and
//! plays a strict judging back-end ([`backend`], written on `vhu-protocol` alone) while a
//! [`judge::Judge`] checks every message against the front-end rules. Each scenario
//! ([`scenarios`]) is one front-end process; the results go through the same reporters,
//! expectations and exit codes as the back-end side.

pub mod backend;
pub mod judge;
pub mod memory;
pub mod mock;
pub mod scenarios;

use std::ffi::OsString;
use std::os::unix::net::UnixListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use thiserror::Error;
use vhu_mock_frontend::transcript::{Channel, Direction, Transcript};
use vhu_protocol::Connection;
use vhu_protocol::wire::payload::MemRegion;

use crate::device::DeviceType;
use crate::engine::{Finding, Offer, Outcome, RunEvent, RunSummary, ScenarioResult};
use crate::exit_code;
use crate::exit_code::ExitPolicy;
use crate::report;
use crate::rules::{self, RuleCoverage, RuleId, Status, id};
use crate::scenario::Level;

use backend::{End, JudgingBackend};
use judge::{Judge, PASSIVE_RULES};
use scenarios::FeScenario;

/// Errors of the front-end side.
#[derive(Debug, Error)]
pub enum FrontendError {
    /// A memory region could not be mapped.
    #[error("cannot map region {region:x?}: {why}")]
    Map {
        /// The region.
        region: MemRegion,
        /// What mmap said.
        why: String,
    },
    /// A local resource failed (socket, temp dir, spawn).
    #[error("{what}: {source}")]
    Local {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Where the front-end comes from.
#[derive(Clone, Debug)]
pub enum FeTarget {
    /// A command with `{socket}`, run once per scenario.
    Exec(String),
    /// A path to listen on; the front-end connects by itself.
    Listen(PathBuf),
}

/// How a front-end run goes.
#[derive(Clone, Debug)]
pub struct FeOptions {
    /// The front-end.
    pub target: FeTarget,
    /// The device the judging back-end plays.
    pub device: DeviceType,
    /// How long one scenario may last before the front-end is ended.
    pub scenario_timeout: Duration,
    /// How long to wait for the front-end to connect.
    pub connect_timeout: Duration,
    /// Warnings fail.
    pub strict: bool,
}

/// The signals that mean a crash (memory corruption, an assertion).
const CRASH_SIGNALS: &[(i32, &str)] = &[
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGABRT, "SIGABRT"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGFPE, "SIGFPE"),
];

/// How the front-end process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum ProcessEnd {
    /// It exited by itself with this status.
    Exited(i32),
    /// A signal ended it that we did not send.
    Signalled(i32),
    /// We ended it (the scenario's time was up).
    EndedByUs,
}

fn crash_signal(end: &ProcessEnd) -> Option<(i32, &'static str)> {
    let sig = match end {
        ProcessEnd::Signalled(s) => *s,
        // A wrapper script reports its child's death by signal N as 128 + N.
        ProcessEnd::Exited(c) if *c > 128 => c - 128,
        _ => return None,
    };
    CRASH_SIGNALS.iter().copied().find(|(s, _)| *s == sig)
}

struct Spawned {
    child: Child,
    log: PathBuf,
    end: Option<ProcessEnd>,
}

impl Spawned {
    fn poll(&mut self) -> Option<ProcessEnd> {
        if self.end.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.end = Some(match (st.code(), st.signal()) {
                    (Some(c), _) => ProcessEnd::Exited(c),
                    (_, Some(s)) => ProcessEnd::Signalled(s),
                    _ => ProcessEnd::Exited(-1),
                });
            }
        }
        self.end.clone()
    }

    /// Ends the process group (SIGTERM, then SIGKILL after 2 s) unless it already ended.
    fn finish(&mut self) -> ProcessEnd {
        if let Some(e) = self.poll() {
            return e;
        }
        let pgid = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM);
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if self.poll().is_some() {
                return ProcessEnd::EndedByUs;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        self.end = Some(ProcessEnd::EndedByUs);
        ProcessEnd::EndedByUs
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }
}

fn local(what: &str) -> impl FnOnce(std::io::Error) -> FrontendError + '_ {
    move |source| FrontendError::Local {
        what: what.into(),
        source,
    }
}

/// Waits for a connection on `listener` (non-blocking) until `until` or `stop`.
fn accept(
    listener: &UnixListener,
    until: Instant,
    stop: &mut dyn FnMut() -> bool,
) -> Option<std::os::unix::net::UnixStream> {
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                let _ = s.set_nonblocking(false);
                return Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
        if Instant::now() >= until || stop() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs one scenario: one front-end process (or, with `--listen`, the connections of one
/// front-end) against the judging back-end.
pub fn run_scenario(opts: &FeOptions, s: &FeScenario) -> ScenarioResult {
    let started = Instant::now();
    let profile = scenarios::profile(s, opts.device);
    let judge = Judge::new(profile.clone(), s.level);
    let mut be = JudgingBackend::new(profile, s.misbehave, judge);
    be.idle_probe = s.idle_probe;
    let mut notes = Vec::new();
    let outcome = match drive(opts, &mut be, &mut notes) {
        Ok(()) => None,
        Err(e) => Some(Outcome::Error {
            reason: e.to_string(),
        }),
    };
    let findings = be.judge.findings();
    let mut checked = be.judge.checked();
    checked.sort();
    let outcome = outcome.unwrap_or_else(|| {
        if be.connections == 0 {
            Outcome::Error {
                reason: format!(
                    "the front-end never connected{}",
                    notes.last().map_or(String::new(), |n| format!(" ({n})"))
                ),
            }
        } else {
            verdict(&findings, opts.strict)
        }
    });
    notes.append(&mut be.notes);
    if be.served > 0 {
        notes.push(format!("served {} blk requests", be.served));
    }
    notes.push(format!(
        "{} connections, {} messages judged",
        be.connections, be.judge.messages
    ));
    let mut t = Transcript::default();
    for r in &be.records {
        let dir = if r.from_frontend {
            Direction::ToBackend
        } else {
            Direction::FromBackend
        };
        let (ch, dir) = if r.on_channel {
            // On the channel the roles swap: the judging back-end's requests go "from" it.
            let d = if r.from_frontend {
                Direction::ToBackend
            } else {
                Direction::FromBackend
            };
            (Channel::Backend, d)
        } else {
            (Channel::Main, dir)
        };
        t.record(r.at_us, ch, dir, &r.header, &r.payload, r.fds);
    }
    let mut cited: Vec<RuleId> = PASSIVE_RULES.to_vec();
    cited.extend_from_slice(s.rules);
    cited.push(id::R_FE_07);
    cited.sort();
    cited.dedup();
    ScenarioResult {
        id: s.id.into(),
        title: s.title.into(),
        rules: cited,
        level: s.level,
        source: format!("builtin:{}", s.id),
        outcome,
        findings,
        notes,
        checked_rules: checked,
        duration_ms: started.elapsed().as_millis() as u64,
        transcript: t.entries,
        expectation: None,
    }
}

fn verdict(findings: &[Finding], strict: bool) -> Outcome {
    let worst = findings.iter().map(|f| f.level).max();
    match worst {
        Some(Level::Must) => Outcome::Fail,
        Some(Level::Should | Level::Rob) if strict => Outcome::Fail,
        Some(Level::Should | Level::Rob) => Outcome::Warn,
        _ => Outcome::Pass,
    }
}

fn drive(
    opts: &FeOptions,
    be: &mut JudgingBackend,
    notes: &mut Vec<String>,
) -> Result<(), FrontendError> {
    let deadline = Instant::now() + opts.scenario_timeout;
    match &opts.target {
        FeTarget::Listen(path) => {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path).map_err(local("cannot listen"))?;
            listener
                .set_nonblocking(true)
                .map_err(local("cannot listen"))?;
            let mut never = || false;
            let mut until = Instant::now() + opts.connect_timeout;
            // One front-end: its first connection, and reconnects that follow within 1 s.
            while let Some(stream) = accept(&listener, until.min(deadline), &mut never) {
                let end = be.serve(
                    Connection::new(stream, Some(Duration::from_secs(2))),
                    deadline,
                    &mut never,
                );
                note_end(&end, notes);
                be.judge
                    .connection_ended(end == End::FrontendClosed, judged_by_us(&end));
                if matches!(end, End::Stopped | End::Hung) {
                    break;
                }
                until = Instant::now() + Duration::from_secs(1);
            }
            let _ = std::fs::remove_file(path);
            Ok(())
        }
        FeTarget::Exec(cmd) => {
            let dir = tempfile::tempdir().map_err(local("cannot make a temp dir"))?;
            let sock = dir.path().join("vhu.sock");
            let listener = UnixListener::bind(&sock).map_err(local("cannot listen"))?;
            listener
                .set_nonblocking(true)
                .map_err(local("cannot listen"))?;
            let line = cmd.replace("{socket}", &sock.display().to_string());
            let log = dir.path().join("frontend.log");
            let out = std::fs::File::create(&log).map_err(local("cannot create the log"))?;
            let err = out.try_clone().map_err(local("cannot create the log"))?;
            let child = Command::new("sh")
                .arg("-c")
                .arg(&line)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .map_err(local("cannot start the front-end"))?;
            let mut sp = Spawned {
                child,
                log,
                end: None,
            };
            let mut stop = || false;
            let mut until = Instant::now() + opts.connect_timeout;
            loop {
                let mut gone = || sp.poll().is_some();
                let Some(stream) = accept(&listener, until.min(deadline), &mut gone) else {
                    break;
                };
                let mut gone = || sp.poll().is_some();
                let end = be.serve(
                    Connection::new(stream, Some(Duration::from_secs(2))),
                    deadline,
                    &mut gone,
                );
                note_end(&end, notes);
                be.judge
                    .connection_ended(end == End::FrontendClosed, judged_by_us(&end));
                if matches!(end, End::Stopped | End::Hung) {
                    break;
                }
                // A front-end may reconnect: give it as long as it takes to start.
                until = Instant::now() + opts.connect_timeout;
                let _ = &mut stop;
            }
            // The connection is over; give the process a moment to exit on its own (a
            // front-end that gives up after a refusal), then end it.
            let grace = Instant::now() + Duration::from_millis(500);
            while Instant::now() < grace && sp.poll().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let end = sp.finish();
            judge_process(be, &end, &sp.tail(), notes);
            Ok(())
        }
    }
}

fn note_end(end: &End, notes: &mut Vec<String>) {
    match end {
        End::FrontendClosed => notes.push("the front-end closed the connection".into()),
        End::WeClosed => notes.push("the judging back-end closed the connection on purpose".into()),
        End::Unreadable(why) => notes.push(format!(
            "closed: the front-end sent an unreadable message: {why}"
        )),
        End::Hung => notes.push(
            "the front-end hung (no answer on its channel after a silence): the judging back-end hung up"
                .into(),
        ),
        End::Stopped => {}
    }
}

/// Whether the judging back-end ended the connection itself (on purpose, or after a hang).
fn judged_by_us(end: &End) -> bool {
    matches!(end, End::WeClosed | End::Hung)
}

/// The front-end process's end: a death by a crash signal is R-FE-07; any other end is
/// allowed (the spec lets a front-end give up on a back-end it cannot use).
fn judge_process(be: &mut JudgingBackend, end: &ProcessEnd, tail: &str, notes: &mut Vec<String>) {
    match crash_signal(end) {
        Some((sig, name)) => be.judge.push_finding(Finding {
            rule: id::R_FE_07,
            level: Level::Must,
            summary: format!("the front-end died by {name}"),
            sent: "the session in the transcript".into(),
            received: format!("{end:?}"),
            expected: "no death by a signal, whatever the back-end does".into(),
            crash: Some(crate::engine::Crash {
                signal: sig,
                signal_name: name.into(),
                stderr_tail: tail.into(),
            }),
        }),
        None => be.judge.mark_checked(id::R_FE_07),
    }
    notes.push(match end {
        ProcessEnd::Exited(c) => format!("the front-end exited with status {c}"),
        ProcessEnd::Signalled(s) => format!("the front-end was ended by signal {s}"),
        ProcessEnd::EndedByUs => {
            "the front-end was still running at the end: ended by vhu-conform".into()
        }
    });
    if !matches!(end, ProcessEnd::EndedByUs | ProcessEnd::Exited(0 | 124)) && !tail.is_empty() {
        notes.push(format!("its output ends: {}", tail.replace('\n', " | ")));
    }
}

/// The front-end rules and where they stand after `results` (or, without, what checks them).
pub fn coverage(results: Option<&[ScenarioResult]>) -> Vec<RuleCoverage> {
    let all = scenarios::all();
    let ids: Vec<&str> = all.iter().map(|s| s.id).collect();
    rules::all()
        .iter()
        .filter(|r| matches!(r.side, rules::Side::Frontend | rules::Side::Both))
        .map(|rule| {
            let passive = PASSIVE_RULES.contains(&rule.id) || rule.id == id::R_FE_07;
            // A passive rule is judged in every scenario; another only where one cites it.
            let scenarios: Vec<String> = if passive {
                ids.iter().map(|s| s.to_string()).collect()
            } else {
                all.iter()
                    .filter(|s| s.rules.contains(&rule.id))
                    .map(|s| s.id.to_string())
                    .collect()
            };
            let judged = !scenarios.is_empty();
            let status =
                match results {
                    _ if !judged => {
                        if rule.untestable.is_some() {
                            Status::Untestable
                        } else {
                            Status::NoScenario
                        }
                    }
                    None => Status::NotRun,
                    Some(rs) => {
                        let fs: Vec<&Finding> = rs
                            .iter()
                            .flat_map(|r| &r.findings)
                            .filter(|f| f.rule == rule.id)
                            .collect();
                        if fs.iter().any(|f| f.level == Level::Must) {
                            Status::CheckedFail
                        } else if !fs.is_empty() {
                            Status::CheckedWarn
                        } else if rs.iter().any(|r| r.checked_rules.contains(&rule.id)) {
                            Status::CheckedPass
                        } else if !rs.iter().any(|r| scenarios.contains(&r.id)) {
                            Status::NotRun
                        } else if rs.iter().filter(|r| scenarios.contains(&r.id)).any(|r| {
                            matches!(r.outcome, Outcome::Pass | Outcome::Warn | Outcome::Fail)
                        }) {
                            Status::NotObserved
                        } else {
                            Status::Error
                        }
                    }
                };
            RuleCoverage {
                rule: rule.clone(),
                status,
                scenarios,
            }
        })
        .collect()
}

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
