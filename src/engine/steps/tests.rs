//! The interpreter and `judge_ack` against a scripted fake back-end: a thread serving a real
//! Unix socket answers each request as its script says, so each verdict can be checked
//! against exactly what the back-end did.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::{Offer, Outcome, RunOptions, ScenarioResult, run_scenario};
use crate::rules::{RuleId, id};
use crate::target::TargetSpec;

/// What the fake back-end does with one request.
enum Answer {
    /// Sends a reply with this payload.
    Reply(Vec<u8>),
    /// Reads it and answers nothing.
    Nothing,
    /// Closes the connection.
    Close,
    /// Writes these bytes as they are (a reply with a header of the script's making).
    Raw(Vec<u8>),
}

/// A script: the answer to the `n`-th request (counted per connection from 0) with `code`,
/// `flags` and `payload`.
type Script = fn(n: usize, code: u32, flags: u32, payload: &[u8]) -> Answer;

/// A scripted back-end listening on a socket in its own directory; it records the request
/// codes it received, in order, over every connection.
struct Fake {
    _dir: tempfile::TempDir,
    path: PathBuf,
    seen: Arc<Mutex<Vec<u32>>>,
}

/// NEED_REPLY in a header's flags.
const NEED_REPLY: u32 = 1 << 3;
/// GET_FEATURES.
const GET_FEATURES: u32 = 1;
/// SET_VRING_NUM.
const SET_VRING_NUM: u32 = 8;

fn fake(script: Script) -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let seen = Arc::new(Mutex::new(vec![]));
    let log = Arc::clone(&seen);
    // Detached: it serves until the test process ends (a connection ends when the harness
    // closes it).
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let log = Arc::clone(&log);
            std::thread::spawn(move || serve(stream, script, &log));
        }
    });
    Fake {
        _dir: dir,
        path,
        seen,
    }
}

/// Serves one connection: header, payload, the script's answer, until the peer leaves.
fn serve(mut s: UnixStream, script: Script, log: &Mutex<Vec<u32>>) {
    for n in 0.. {
        let mut header = [0u8; 12];
        if s.read_exact(&mut header).is_err() {
            return;
        }
        let word = |i: usize| u32::from_ne_bytes(header[i..i + 4].try_into().unwrap());
        let (code, flags, size) = (word(0), word(4), word(8));
        let mut payload = vec![0; size as usize];
        if s.read_exact(&mut payload).is_err() {
            return;
        }
        log.lock().unwrap().push(code);
        match script(n, code, flags, &payload) {
            Answer::Reply(body) => {
                let mut reply = Vec::with_capacity(12 + body.len());
                reply.extend(code.to_ne_bytes());
                // Version 1, the reply bit.
                reply.extend(0x5u32.to_ne_bytes());
                reply.extend((body.len() as u32).to_ne_bytes());
                reply.extend(body);
                if s.write_all(&reply).is_err() {
                    return;
                }
            }
            Answer::Nothing => {}
            Answer::Close => return,
            Answer::Raw(bytes) => {
                if s.write_all(&bytes).is_err() {
                    return;
                }
            }
        }
    }
}

/// A message with this header and a u64 payload.
fn raw_u64(code: u32, flags: u32, v: u64) -> Answer {
    let mut m = Vec::with_capacity(20);
    m.extend(code.to_ne_bytes());
    m.extend(flags.to_ne_bytes());
    m.extend(8u32.to_ne_bytes());
    m.extend(v.to_ne_bytes());
    Answer::Raw(m)
}

fn u64_reply(v: u64) -> Answer {
    Answer::Reply(v.to_ne_bytes().to_vec())
}

/// What a plain back-end answers: GET_FEATURES with VERSION_1, NEED_REPLY with an ack of 0.
fn plain(code: u32, flags: u32) -> Answer {
    match code {
        GET_FEATURES => u64_reply(1 << 32),
        _ if flags & NEED_REPLY != 0 => u64_reply(0),
        _ => Answer::Nothing,
    }
}

/// Runs the scenario whose steps are `steps` (TOML) against `fake`, citing `rules`.
fn run(fake: &Fake, rules: &str, steps: &str) -> ScenarioResult {
    let text = format!("id = \"t/fake\"\ntitle = \"t\"\nrules = [{rules}]\n{steps}");
    let s = crate::scenario::parse(Path::new("fake.toml"), &text).unwrap();
    let opts = RunOptions {
        step_timeout: Duration::from_millis(300),
        ..RunOptions::default()
    };
    let spec = TargetSpec::Connect(fake.path.clone());
    run_scenario(&s, &spec, None, &Offer::default(), &opts)
}

fn finding_rules(r: &ScenarioResult) -> Vec<RuleId> {
    r.findings.iter().map(|f| f.rule).collect()
}

/// A SET_VRING_NUM with NEED_REPLY that must fail.
const MUST_FAIL: &str = "[[step]]\ndo = \"send\"\nrequest = \"SET_VRING_NUM\"\nbody = { index = 0, num = 8 }\nneed_reply = true\nexpect = \"ack_fail\"\n";

#[test]
fn a_non_zero_ack_meets_ack_fail_and_the_back_end_is_probed_after_it() {
    let f = fake(|_, code, flags, _| match code {
        SET_VRING_NUM => u64_reply(1),
        _ => plain(code, flags),
    });
    let r = run(&f, "\"R-VRING-17\"", MUST_FAIL);
    assert_eq!(r.outcome, Outcome::Pass, "{:?}", r.findings);
    assert!(r.checked_rules.contains(&id::R_VRING_17));
    assert!(r.checked_rules.contains(&id::R_ACK_04));
    // The refusal was followed by a liveness probe (GET_FEATURES).
    assert_eq!(*f.seen.lock().unwrap(), vec![SET_VRING_NUM, GET_FEATURES]);
}

#[test]
fn an_ack_of_zero_where_a_failure_is_due_cites_the_steps_rule() {
    let f = fake(|_, code, flags, _| plain(code, flags));
    let r = run(&f, "\"R-VRING-17\"", MUST_FAIL);
    // R-VRING-17 is a SHOULD: its finding warns, even in a MUST scenario.
    assert_eq!(r.outcome, Outcome::Warn);
    assert_eq!(finding_rules(&r), vec![id::R_VRING_17]);
    // The finding names the message acked, not the probe sent after it.
    assert!(
        r.findings[0].sent.contains("SET_VRING_NUM"),
        "{:?}",
        r.findings
    );
}

#[test]
fn an_ack_of_zero_then_a_close_is_an_ack_that_lied() {
    let f = fake(|n, code, flags, _| match code {
        GET_FEATURES if n > 0 => Answer::Close,
        _ => plain(code, flags),
    });
    let r = run(&f, "\"R-VRING-17\"", MUST_FAIL);
    assert_eq!(r.outcome, Outcome::Fail);
    assert_eq!(finding_rules(&r), vec![id::R_ACK_04]);
}

#[test]
fn an_ack_never_sent_is_a_timeout_under_the_ack_rule() {
    let f = fake(|_, code, flags, _| match code {
        SET_VRING_NUM => Answer::Nothing,
        _ => plain(code, flags),
    });
    let steps = "[[step]]\ndo = \"send\"\nrequest = \"SET_VRING_NUM\"\nbody = { index = 0, num = 8 }\nneed_reply = true\n";
    let r = run(&f, "\"R-VRING-17\"", steps);
    assert_eq!(r.outcome, Outcome::Fail);
    assert_eq!(finding_rules(&r), vec![id::R_ACK_01]);
}

#[test]
fn a_close_where_an_ack_of_zero_was_due_fails_the_step() {
    let f = fake(|_, code, flags, _| match code {
        SET_VRING_NUM => Answer::Close,
        _ => plain(code, flags),
    });
    let steps = "[[step]]\ndo = \"send\"\nrequest = \"SET_VRING_NUM\"\nbody = { index = 0, num = 8 }\nneed_reply = true\nexpect = \"ack_ok\"\nrule = \"R-NEG-01\"\n";
    let r = run(&f, "\"R-VRING-17\"", steps);
    assert_eq!(r.outcome, Outcome::Fail);
    assert_eq!(finding_rules(&r), vec![id::R_NEG_01]);
}

#[test]
fn a_reply_value_other_than_the_one_due_is_a_finding() {
    let f = fake(|_, code, flags, _| plain(code, flags));
    let steps = "[[step]]\ndo = \"send\"\nrequest = \"GET_FEATURES\"\nvalue = 5\n";
    let r = run(&f, "\"R-NEG-01\"", steps);
    assert_eq!(r.outcome, Outcome::Fail);
    assert_eq!(finding_rules(&r), vec![id::R_NEG_01]);
    assert!(
        r.findings[0].summary.contains("wanted 0x5"),
        "{:?}",
        r.findings
    );
}

#[test]
fn a_repeated_step_runs_that_many_times_and_stops_at_its_first_finding() {
    let f = fake(|_, code, flags, _| plain(code, flags));
    let steps =
        "[[step]]\ndo = \"send\"\nrequest = \"GET_FEATURES\"\nvalue = 0x100000000\nrepeat = 3\n";
    let r = run(&f, "\"R-NEG-01\"", steps);
    assert_eq!(r.outcome, Outcome::Pass, "{:?}", r.findings);
    assert_eq!(*f.seen.lock().unwrap(), vec![GET_FEATURES; 3]);
    // The third answer differs: the step fails there, and runs no more.
    let f = fake(|n, code, flags, _| match code {
        GET_FEATURES if n == 2 => u64_reply(7),
        _ => plain(code, flags),
    });
    let steps =
        "[[step]]\ndo = \"send\"\nrequest = \"GET_FEATURES\"\nvalue = 0x100000000\nrepeat = 5\n";
    let r = run(&f, "\"R-NEG-01\"", steps);
    assert_eq!(r.outcome, Outcome::Fail);
    assert_eq!(*f.seen.lock().unwrap(), vec![GET_FEATURES; 3]);
}

#[test]
fn a_raw_message_the_back_end_survives_is_alive() {
    // An unknown code, then the liveness round trip on the same connection.
    let f = fake(|_, code, flags, _| plain(code, flags));
    let steps = "[[step]]\ndo = \"raw\"\nrequest = 999\npayload_hex = \"00\"\nexpect = \"alive\"\n";
    let r = run(&f, "\"R-ROB-01\"", steps);
    assert_eq!(r.outcome, Outcome::Pass, "{:?}", r.findings);
    assert_eq!(*f.seen.lock().unwrap(), vec![999, GET_FEATURES]);
}

/// GET_FEATURES, whose reply the tests below break one way each.
const GET_FEATURES_STEP: &str = "[[step]]\ndo = \"send\"\nrequest = \"GET_FEATURES\"\n";

#[test]
fn a_reply_under_another_request_code_breaks_the_wire_rule_for_codes() {
    // GET_PROTOCOL_FEATURES (15) answering GET_FEATURES.
    let f = fake(|_, code, flags, _| match code {
        GET_FEATURES => raw_u64(15, 0x5, 1 << 32),
        _ => plain(code, flags),
    });
    let r = run(&f, "\"R-NEG-01\"", GET_FEATURES_STEP);
    assert_eq!(r.outcome, Outcome::Fail, "{:?}", r.findings);
    assert_eq!(finding_rules(&r), vec![id::R_WIRE_05]);
}

#[test]
fn a_reply_without_the_reply_flag_breaks_the_wire_rule_for_flags() {
    let f = fake(|_, code, flags, _| match code {
        GET_FEATURES => raw_u64(GET_FEATURES, 0x1, 1 << 32),
        _ => plain(code, flags),
    });
    let r = run(&f, "\"R-NEG-01\"", GET_FEATURES_STEP);
    assert_eq!(r.outcome, Outcome::Fail, "{:?}", r.findings);
    assert_eq!(finding_rules(&r), vec![id::R_WIRE_02]);
}

#[test]
fn a_reply_of_another_protocol_version_breaks_the_wire_rule_for_versions() {
    let f = fake(|_, code, flags, _| match code {
        GET_FEATURES => raw_u64(GET_FEATURES, 0x6, 1 << 32),
        _ => plain(code, flags),
    });
    let r = run(&f, "\"R-NEG-01\"", GET_FEATURES_STEP);
    assert_eq!(r.outcome, Outcome::Fail, "{:?}", r.findings);
    assert_eq!(finding_rules(&r), vec![id::R_WIRE_03]);
}

#[test]
fn an_ack_to_a_message_sent_without_need_reply_is_unrequested() {
    // SET_OWNER (3) without NEED_REPLY, acked anyway; the ack is in the way of the next reply.
    let f = fake(|_, code, flags, _| match code {
        3 => u64_reply(0),
        _ => plain(code, flags),
    });
    let steps = format!("[[step]]\ndo = \"send\"\nrequest = \"SET_OWNER\"\n{GET_FEATURES_STEP}");
    let r = run(&f, "\"R-NEG-01\"", &steps);
    assert_eq!(r.outcome, Outcome::Fail, "{:?}", r.findings);
    assert_eq!(finding_rules(&r), vec![id::R_ACK_03]);
}
