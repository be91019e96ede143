//! `vhu-conform replay FILE`: reruns a saved reproducer with the whole oracle (the `#!` case), or
//! runs a plain scenario file through the engine. Exit 1 when the failure is there.

use std::path::Path;

use super::FuzzError;
use super::exec::Limits;
use super::oracle::Failure;
use super::runner::Target;
use crate::engine::{self, Outcome, RunOptions};
use crate::target::TargetSpec;

/// What a replay saw.
#[derive(Debug)]
pub enum Replayed {
    /// The reproducer's case failed again.
    Reproduced(Failure),
    /// The case passed every check this time.
    NotReproduced,
    /// A plain scenario ran: its verdict, and the details to print.
    Scenario(Outcome, String),
}

/// Replays `file` against `target`, or the target the reproducer recorded.
pub fn replay(
    file: &Path,
    target: Option<TargetSpec>,
    limits: Limits,
    opts: &RunOptions,
) -> Result<Replayed, FuzzError> {
    let text = std::fs::read_to_string(file).map_err(|source| FuzzError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let Some(rep) = super::save::load(&text) else {
        let target = target.ok_or_else(|| {
            FuzzError::Usage("a plain scenario file needs --spawn or --backend".into())
        })?;
        return scenario(file, &text, &target, opts);
    };
    let rep = rep.map_err(|e| FuzzError::Usage(format!("{}: {e}", file.display())))?;
    let spec = target.or_else(|| rep.target()).ok_or_else(|| {
        FuzzError::Usage("the file records no target: give --spawn or --backend".into())
    })?;
    // No warm-up session first: the run confirms a failure on a process that saw nothing
    // before the case, and some crashes depend on that (state left by an earlier session).
    let mut t = Target::new(spec, opts.connect_timeout);
    Ok(match t.run(&rep.case, limits, 0x3c)? {
        Some(f) => Replayed::Reproduced(f),
        None => Replayed::NotReproduced,
    })
}

fn scenario(
    file: &Path,
    text: &str,
    target: &TargetSpec,
    opts: &RunOptions,
) -> Result<Replayed, FuzzError> {
    let s = crate::scenario::parse(file, text).map_err(|e| FuzzError::Usage(e.to_string()))?;
    let offer = engine::preflight(target, opts).map_err(|e| FuzzError::Setup(format!("{e:?}")))?;
    let r = engine::run_scenario(&s, target, None, &offer, opts);
    let details = crate::report::details(&r, true);
    Ok(Replayed::Scenario(r.outcome, details))
}
