//! Golden verdicts (a module of the tests that run whole suites, not a test): what every
//! scenario concluded in a run, kept under tests/golden/ and compared with each new run, so a
//! change to the engine or the scenario format that changes a verdict is caught.
//!
//! A verdict is `outcome` followed by the sorted, distinct rule ids of the findings (no
//! durations, no free text). A golden file holds one scenario a line, `id verdict`; a line may
//! give alternatives, `id pass | warn R-ROB-09`, where the same code was seen to give either
//! (timing under load), and a scenario absent from the run is `-`. A file of many runs (one per
//! fault mode) has a `[name]` section per run that lists only the scenarios whose verdict
//! differs from a base file (the run without a fault), which keeps it small.
//!
//! `VHU_UPDATE_GOLDEN=1` rewrites what a test compares (for a scenario added or changed on
//! purpose); `VHU_UPDATE_GOLDEN=merge` keeps what is there and adds what was seen as an
//! alternative (to record the verdicts that flip between runs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

/// Each scenario's verdict in one run, by id.
pub type Verdicts = BTreeMap<String, String>;

/// The alternatives a golden file allows, by id.
type Allowed = BTreeMap<String, BTreeSet<String>>;

/// What stands for a scenario the run did not report.
const ABSENT: &str = "-";

/// The verdicts of a JSON report (`--json-report`).
pub fn verdicts(report: &serde_json::Value) -> Verdicts {
    let results = report["results"].as_array().expect("a report has results");
    results
        .iter()
        .map(|r| {
            let rules: BTreeSet<&str> = r["findings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f["rule"].as_str())
                .collect();
            let mut v = r["outcome"].as_str().unwrap_or("?").to_string();
            for rule in rules {
                v.push(' ');
                v.push_str(rule);
            }
            (r["id"].as_str().unwrap_or("?").to_string(), v)
        })
        .collect()
}

/// How this run treats the golden files (`VHU_UPDATE_GOLDEN`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Compare,
    Rewrite,
    Merge,
}

fn mode() -> Mode {
    match std::env::var("VHU_UPDATE_GOLDEN").as_deref() {
        Ok("merge") => Mode::Merge,
        Ok("") | Err(_) | Ok("0") => Mode::Compare,
        Ok(_) => Mode::Rewrite,
    }
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// A golden file's sections (`""` for the lines before any `[name]`).
fn read(name: &str) -> BTreeMap<String, Allowed> {
    let text = std::fs::read_to_string(path(name)).unwrap_or_default();
    let mut out: BTreeMap<String, Allowed> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            out.entry(section.clone()).or_default();
            continue;
        }
        let (id, rest) = line.split_once(' ').unwrap_or((line, ABSENT));
        let alts = rest.split(" | ").map(|a| a.trim().to_string()).collect();
        out.entry(section.clone())
            .or_default()
            .insert(id.to_string(), alts);
    }
    out
}

/// What `section` allows for each id: its own lines over `base`'s.
fn allowed(base: &Allowed, section: Option<&Allowed>) -> Allowed {
    let mut all = base.clone();
    all.extend(section.cloned().unwrap_or_default());
    all
}

/// The mismatches of `got` against `want`, one line each.
fn mismatches(name: &str, want: &Allowed, got: &Verdicts) -> Vec<String> {
    let ids: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    let mut out = vec![];
    for id in ids {
        let now = got.get(id).map_or(ABSENT, String::as_str);
        let ok = want.get(id).is_some_and(|alts| alts.contains(now))
            || (now == ABSENT && !want.contains_key(id));
        if !ok {
            let was = want.get(id).map_or(ABSENT.to_string(), |alts| {
                alts.iter().cloned().collect::<Vec<_>>().join(" | ")
            });
            out.push(format!("  {name}{id}: golden `{was}`, now `{now}`"));
        }
    }
    out
}

/// The lines a section is written as: each id whose alternatives `base` does not allow.
fn lines(base: &Allowed, want: &Allowed, got: &Verdicts, mode: Mode) -> Vec<String> {
    let ids: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
    let mut out = vec![];
    for id in ids {
        let now = got.get(id).cloned().unwrap_or_else(|| ABSENT.into());
        let mut alts: BTreeSet<String> = [now].into();
        if mode == Mode::Merge {
            alts.extend(want.get(id).cloned().unwrap_or_default());
        }
        // What the base allows already needs no line (nor a scenario no run reports).
        let covered = match base.get(id) {
            Some(b) => alts.is_subset(b),
            None => alts.iter().all(|a| a == ABSENT),
        };
        if !covered {
            let alts: Vec<_> = alts.into_iter().collect();
            out.push(format!("{id} {}", alts.join(" | ")));
        }
    }
    out
}

const HEADER: &str = "\
# Golden verdicts (tests/common/golden.rs): `id outcome [finding rules]`, alternatives ` | `,
# `-` absent. Rewrite with VHU_UPDATE_GOLDEN=1 (or =merge to add alternatives).
";

/// Compares one run's verdicts with the golden file `name` (or rewrites it); `Err` lists
/// every scenario whose verdict changed.
pub fn check(name: &str, got: &Verdicts) -> Result<(), String> {
    check_runs(name, None, &BTreeMap::from([(String::new(), got.clone())]))
}

/// Compares several runs, each a `[section]` of the golden file `name` listing what differs
/// from the golden file `base` (or the whole run when there is none), or rewrites it.
pub fn check_runs(
    name: &str,
    base: Option<&str>,
    runs: &BTreeMap<String, Verdicts>,
) -> Result<(), String> {
    let base: Allowed = base
        .map(|b| read(b).remove("").unwrap_or_default())
        .unwrap_or_default();
    let file = read(name);
    let mode = mode();
    if mode != Mode::Compare {
        let mut text = HEADER.to_string();
        // Sections this run did not make are kept as they were.
        let mut sections: BTreeMap<&String, Vec<String>> = BTreeMap::new();
        for (run, section) in &file {
            let keep = section
                .iter()
                .map(|(id, alts)| {
                    let alts: Vec<_> = alts.iter().cloned().collect();
                    format!("{id} {}", alts.join(" | "))
                })
                .collect();
            sections.insert(run, keep);
        }
        for (run, got) in runs {
            let want = allowed(&base, file.get(run));
            sections.insert(run, lines(&base, &want, got, mode));
        }
        for (run, body) in sections {
            if !run.is_empty() {
                text.push_str(&format!("[{run}]\n"));
            }
            for l in body {
                text.push_str(&l);
                text.push('\n');
            }
        }
        std::fs::create_dir_all(path(name).parent().unwrap()).unwrap();
        std::fs::write(path(name), text).unwrap();
        return Ok(());
    }
    let mut out = vec![];
    for (run, got) in runs {
        let Some(section) = file.get(run) else {
            out.push(format!(
                "  [{run}]: no golden verdicts (VHU_UPDATE_GOLDEN=1 records them)"
            ));
            continue;
        };
        let label = if run.is_empty() {
            String::new()
        } else {
            format!("[{run}] ")
        };
        out.extend(mismatches(&label, &allowed(&base, Some(section)), got));
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "verdicts differ from tests/golden/{name} (VHU_UPDATE_GOLDEN=1 rewrites it when the \
             change is meant):\n{}",
            out.join("\n")
        ))
    }
}
