//! One front-end scenario: its connections served by the judging back-end (the front-end
//! spawned per scenario, or awaited with `--listen`), and the result the judge's findings,
//! notes and transcript make.

use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vhu_mock_frontend::transcript::{Channel, Direction, Transcript};
use vhu_protocol::Connection;

use crate::engine::{Finding, Outcome, ScenarioResult};
use crate::rules::{RuleId, id};
use crate::scenario::Level;

use super::backend::{End, JudgingBackend};
use super::judge::{Judge, PASSIVE_RULES};
use super::process::{Spawned, accept, judge_process, local};
use super::scenarios::{self, FeScenario};
use super::{FeOptions, FeTarget, FrontendError};

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
                if !serve_connection(be, stream, deadline, &mut never, notes) {
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
            let mut until = Instant::now() + opts.connect_timeout;
            loop {
                let mut gone = || sp.poll().is_some();
                let Some(stream) = accept(&listener, until.min(deadline), &mut gone) else {
                    break;
                };
                let mut gone = || sp.poll().is_some();
                if !serve_connection(be, stream, deadline, &mut gone, notes) {
                    break;
                }
                // A front-end may reconnect: give it as long as it takes to start.
                until = Instant::now() + opts.connect_timeout;
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

/// Serves one connection of the front-end and tells the judge how it ended; `false` when
/// the scenario stops there (the judging back-end stopped, or the front-end hung).
fn serve_connection(
    be: &mut JudgingBackend,
    stream: UnixStream,
    deadline: Instant,
    stop: &mut dyn FnMut() -> bool,
    notes: &mut Vec<String>,
) -> bool {
    let end = be.serve(
        Connection::new(stream, Some(Duration::from_secs(2))),
        deadline,
        stop,
    );
    note_end(&end, notes);
    be.judge
        .connection_ended(end == End::FrontendClosed, judged_by_us(&end));
    !matches!(end, End::Stopped | End::Hung)
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
