//! Saving a shrunk failure: one file that is both a scenario (drop it into `scenarios/`, or load
//! it with `--scenarios DIR`) and, in `#!` comment lines the scenario loader ignores, the exact
//! fuzz case with its seed, target and failure, which `vhu-conform replay` reruns with the whole
//! oracle. Descriptor-chain cases have no scenario step kind: their scenario part only reaches
//! the ring and checks the data path; replay runs the chains from the `#!` part.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FuzzError;
use super::case::{Case, Input, MessageCase, Stage};
use super::oracle::{Failure, FailureKind};
use crate::rules::{RuleId, id};
use crate::scenario::model::{
    Action, BlkIoArgs, Hex, Layout, Level, MemoryArgs, NoArgs, Queues, RawArgs, RawRequest,
    ScenarioFile, Step, Via, VringArgs,
};
use crate::target::TargetSpec;
use vhu_protocol::wire::payload::MAX_MEM_TABLE_REGIONS;

/// Prefix of the lines holding the fuzz case.
const MARK: &str = "#! ";

/// What `replay` needs: the case, how it failed, and where.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reproducer {
    /// The run's seed.
    pub seed: u64,
    /// The number of the case that found the failure (`--seed` and this name it whatever
    /// `-j` was); absent in files saved before cases were numbered.
    #[serde(default)]
    pub case_number: Option<u64>,
    /// The `--spawn` command of the run, if it spawned.
    pub spawn: Option<String>,
    /// The `--backend` socket of the run, if it connected.
    pub backend: Option<PathBuf>,
    /// The checklist rule the failure breaks.
    pub rule: String,
    /// How it failed.
    pub failure: Failure,
    /// The minimal case.
    pub case: Case,
}

impl Reproducer {
    /// The target the run used, if it was recorded.
    pub fn target(&self) -> Option<TargetSpec> {
        self.spawn
            .clone()
            .map(TargetSpec::Spawn)
            .or_else(|| self.backend.clone().map(TargetSpec::Connect))
    }
}

/// The checklist rule a failure of `case` breaks; `queues` is the back-end's queue count.
pub fn rule_for(case: &Case, failure: &Failure, queues: Option<u64>) -> RuleId {
    let m = match &case.input {
        Input::Chain(_) => return id::R_ROB_08,
        Input::Message(m) => m,
    };
    let version = m.flags & 3;
    let lie = vhu_protocol::FrontendReq::from_code(m.code)
        .ok()
        .and_then(|r| count_lie(r, m, queues));
    match vhu_protocol::FrontendReq::from_code(m.code) {
        _ if m.code == 0 => id::R_ROB_02,
        // A process that goes with a status chose to: what it breaks is serving the next
        // front-end on its socket, whatever the message was.
        _ if failure.kind == FailureKind::Exit => id::R_ROB_09,
        Err(_) => id::R_ROB_01,
        _ if failure.kind == FailureKind::FdLeak && m.fds > 0 => id::R_WIRE_09,
        _ if !m.framed() && m.size_field() > 4096 => id::R_WIRE_11,
        _ if !m.framed() => id::R_WIRE_15,
        _ if version != 1 => id::R_WIRE_13,
        _ if m.flags & !0xf != 0 => id::R_WIRE_14,
        _ if m.flags & 4 != 0 => id::R_ROB_03,
        Ok(r) if m.fds > r.fd_range().1 => id::R_WIRE_10,
        Ok(r)
            if r.request_size()
                .is_some_and(|n| n != m.payload_hex.len() / 2) =>
        {
            id::R_WIRE_12
        }
        Ok(_) if lie.is_some() => lie.unwrap_or(id::R_WIRE_12),
        Ok(r) if ring_index(r, m).zip(queues).is_some_and(|(i, q)| i >= q) => id::R_VRING_17,
        Ok(r) if ring_index(r, m).is_some() && case.stage < Stage::Memory => id::R_ROB_06,
        // Nothing in the message stands out: the back-end did not survive a session that
        // ended after it (a disconnect at that point, R-ROB-09), or mishandled a legal one.
        _ if failure.kind == FailureKind::Crash => id::R_ROB_09,
        _ => id::R_ROB_04,
    }
}

/// The rule a count field of the payload breaks when it says more than the payload holds or
/// the protocol allows: SET_MEM_TABLE's `nregions` past the regions sent (R-WIRE-12, as
/// `counts/mem-table-nregions-past-payload`), past 8 (R-MEM-02) or not the number of fds
/// (R-MEM-01); GET/SET_CONFIG's `size` past 256 (R-CFG-07) or past the bytes sent (R-WIRE-12);
/// the inflight description's `num_queues` past the queues or `queue_size` past 32768
/// (R-INFL-01), its area past the end of the memfd sent or too small for those rings
/// (R-INFL-03).
pub fn count_lie(
    r: vhu_protocol::FrontendReq,
    m: &MessageCase,
    queues: Option<u64>,
) -> Option<RuleId> {
    use vhu_protocol::FrontendReq::*;
    let p = m.payload();
    let le = |at: usize, n: usize| {
        p.get(at..at + n)
            .map(|b| b.iter().rev().fold(0u64, |a, &x| a << 8 | u64::from(x)))
    };
    match r {
        SetMemTable => {
            let n = le(0, 4)?;
            let present = (p.len().saturating_sub(8) / 32) as u64;
            if n > MAX_MEM_TABLE_REGIONS as u64 {
                Some(id::R_MEM_02)
            } else if n > present {
                Some(id::R_WIRE_12)
            } else {
                (n != m.fds as u64).then_some(id::R_MEM_01)
            }
        }
        GetConfig | SetConfig => {
            let size = le(4, 4)?;
            if size > 256 {
                Some(id::R_CFG_07)
            } else {
                (size > p.len().saturating_sub(12) as u64).then_some(id::R_WIRE_12)
            }
        }
        GetInflightFd | SetInflightFd => {
            let (mmap_size, mmap_offset) = (le(0, 8)?, le(8, 8)?);
            let (num_queues, queue_size) = (le(16, 2)?, le(18, 2)?);
            if queues.is_some_and(|q| num_queues > q) || queue_size > 0x8000 {
                Some(id::R_INFL_01)
            } else {
                // The area must hold the rings it describes (at least a 16-byte header and
                // 16 bytes per entry for each queue) and lie inside the memfd sent.
                let area_lies = r == SetInflightFd
                    && m.fds > 0
                    && m.fd_kind == super::case::FdKind::Memfd
                    && (mmap_size.saturating_add(mmap_offset) > super::exec::MEMFD_BYTES
                        || mmap_size < num_queues * (16 + 16 * queue_size));
                area_lies.then_some(id::R_INFL_03)
            }
        }
        _ => None,
    }
}

/// The ring index a vring message names: the first u32 of a state or address payload, the low
/// byte of a KICK/CALL/ERR word.
fn ring_index(r: vhu_protocol::FrontendReq, m: &MessageCase) -> Option<u64> {
    use vhu_protocol::FrontendReq::*;
    let p = m.payload();
    let word = |n: usize| {
        p.get(..n)
            .map(|b| b.iter().rev().fold(0u64, |a, &x| a << 8 | u64::from(x)))
    };
    match r {
        SetVringKick | SetVringCall | SetVringErr => word(8).map(|w| w & 0xff),
        _ if format!("{r:?}").contains("Vring") => word(4),
        _ => None,
    }
}

/// Writes the reproducer as `DIR/fuzz-<seed>-<n>.toml`; returns the path.
pub fn save(dir: &Path, n: usize, r: &Reproducer) -> Result<PathBuf, FuzzError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FuzzError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let path = dir.join(format!("fuzz-{:016x}-{n}.toml", r.seed));
    let text = render(n, r)?;
    std::fs::write(&path, &text).map_err(io(&path))?;
    // The file must load as a scenario, or it could not be dropped into scenarios/.
    crate::scenario::parse(&path, &text)
        .map_err(|e| FuzzError::Harness(format!("the saved scenario does not load: {e}")))?;
    Ok(path)
}

/// The file's text: comments, the `#!` case, the scenario.
pub fn render(n: usize, r: &Reproducer) -> Result<String, FuzzError> {
    let case = toml::to_string(r).map_err(|e| FuzzError::Harness(e.to_string()))?;
    let scenario =
        toml::to_string(&scenario(n, r)).map_err(|e| FuzzError::Harness(e.to_string()))?;
    let mut text = format!(
        "# Saved by `vhu-conform fuzz --seed {}`: {}\n# Case: {}\n# Rerun it with the whole oracle: vhu-conform replay THIS_FILE\n# The lines starting with `#! ` are the case itself (read by replay, ignored as a scenario).\n",
        r.seed, r.failure, r.case
    );
    if matches!(r.case.input, Input::Chain(_)) {
        text.push_str(
            "# No scenario step writes descriptor chains: only replay reruns this case.\n",
        );
    }
    for line in case.lines() {
        text.push_str(MARK);
        text.push_str(line);
        text.push('\n');
    }
    text.push('\n');
    text.push_str(&scenario);
    Ok(text)
}

/// Reads the `#!` lines of a saved file; `None` if it has none (a plain scenario file).
pub fn load(text: &str) -> Option<Result<Reproducer, String>> {
    let body: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix(MARK).or_else(|| (l == "#!").then_some("")))
        .collect();
    (!body.is_empty()).then(|| toml::from_str(&body.join("\n")).map_err(|e| e.to_string()))
}

/// The case as a scenario: reach the stage, send the message raw (alive expected), then a
/// fresh connection runs a whole session and a blk write and read-back.
fn scenario(n: usize, r: &Reproducer) -> ScenarioFile {
    let mut steps = stage_steps(r.case.stage, 64);
    match &r.case.input {
        Input::Message(m) => steps.push(raw_step(m)),
        Input::Chain(_) => steps.push(Step::of(Action::Probe(NoArgs {}))),
    }
    steps.push(Step::of(Action::Reconnect(NoArgs {})));
    steps.extend(stage_steps(Stage::Rings, 128));
    let io = BlkIoArgs {
        queue: Some(Queues::Index(0)),
        sector: Some(0),
        sectors: Some(8),
        pattern: Some(0x5a),
        ..BlkIoArgs::default()
    };
    steps.push(Step::of(Action::BlkWrite(io.clone())));
    steps.push(Step::of(Action::BlkRead(io)));
    ScenarioFile {
        id: format!("fuzz/{:016x}-{n}", r.seed),
        title: format!(
            "fuzz reproducer: {:?} after one malformed input",
            r.failure.kind
        ),
        rules: vec![crate::rules::RuleId::parse(&r.rule).unwrap_or(crate::rules::id::R_ROB_01)],
        device: None,
        not_device: None,
        level: Level::Rob,
        requires: Default::default(),
        fresh_process: true,
        timeout_ms: None,
        description: format!("{}. Case: {}", r.failure, r.case),
        steps,
    }
}

fn stage_steps(stage: Stage, ring_size: u64) -> Vec<Step> {
    let mut steps = vec![];
    if stage >= Stage::Negotiated {
        steps.push(Step::of(Action::Negotiate(Default::default())));
    }
    if stage >= Stage::Memory {
        steps.push(Step::of(Action::Memory(MemoryArgs {
            layout: Some(Layout::Default),
            via: Some(Via::Table),
            ..MemoryArgs::default()
        })));
    }
    if stage >= Stage::Rings {
        steps.push(Step::of(Action::Vring(VringArgs {
            queue: Some(Queues::Index(0)),
            ring_size: Some(ring_size),
            ..VringArgs::default()
        })));
    }
    steps
}

fn raw_step(m: &MessageCase) -> Step {
    let with_fds = m.fds > 0;
    Step::of(Action::Raw(RawArgs {
        request: RawRequest(m.code),
        flags: Some(m.flags),
        header_size: m.size,
        payload_hex: Some(Hex(m.payload())),
        fds: with_fds.then_some(m.fds),
        fd_kind: with_fds.then(|| m.fd_kind.scenario_kind()),
        window_ms: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::case::{Addr, ChainCase, Desc, FdKind, Len};

    fn message() -> Case {
        Case {
            stage: Stage::Memory,
            input: Input::Message(MessageCase {
                code: 10,
                flags: 9,
                size: Some(9),
                payload_hex: "ff00000001000000".into(),
                fds: 2,
                fd_kind: FdKind::Socket,
            }),
        }
    }

    fn reproducer(case: Case) -> Reproducer {
        Reproducer {
            seed: 42,
            case_number: Some(17),
            spawn: Some("backend --socket-path {socket}".into()),
            backend: None,
            rule: "R-VRING-17".into(),
            failure: Failure::new(FailureKind::Crash, "killed by signal 6"),
            case,
        }
    }

    #[test]
    fn a_saved_message_case_is_a_scenario_and_a_reproducer() {
        let r = reproducer(message());
        let text = render(1, &r).unwrap();
        assert_eq!(load(&text).unwrap().unwrap(), r);
        let s = crate::scenario::parse(Path::new("x.toml"), &text).unwrap();
        let raw = s
            .spec
            .steps
            .iter()
            .find_map(|s| match &s.action {
                Action::Raw(a) => Some(a),
                _ => None,
            })
            .unwrap();
        assert_eq!(raw.header_size, Some(9));
        assert_eq!(raw.fds, Some(2));
        let last = &s.spec.steps.last().unwrap().action;
        assert!(matches!(last, Action::BlkRead(_)), "{last:?}");
    }

    #[test]
    fn a_saved_chain_case_round_trips() {
        let r = reproducer(Case {
            stage: Stage::Rings,
            input: Input::Chain(ChainCase {
                table: vec![Desc {
                    addr: Addr::Nested,
                    len: Len::Value(u32::MAX),
                    flags: 4,
                    next: 64,
                }],
                indirect: vec![],
                nested: vec![],
                heads: vec![0],
            }),
        });
        let text = render(2, &r).unwrap();
        assert_eq!(load(&text).unwrap().unwrap(), r);
        crate::scenario::parse(Path::new("y.toml"), &text).unwrap();
    }

    #[test]
    fn a_plain_scenario_has_no_reproducer() {
        assert!(load("id = \"a\"\n").is_none());
    }

    #[test]
    fn rules_follow_what_was_malformed() {
        let r = reproducer(message());
        assert_eq!(rule_for(&r.case, &r.failure, Some(2)), id::R_WIRE_15);
        let mut case = message();
        if let Input::Message(m) = &mut case.input {
            m.size = None;
            m.fds = 0;
        }
        assert_eq!(rule_for(&case, &r.failure, Some(2)), id::R_VRING_17);
        assert_eq!(rule_for(&case, &r.failure, Some(0x100)), id::R_ROB_09);
    }
}
