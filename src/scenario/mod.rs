//! Scenarios: the file format ([`model`]), loading and checking files (embedded in the binary and
//! from user directories), and selection by id glob.

pub mod model;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use model::{Action, Expect, Level, ScenarioFile, Step};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded_scenarios.rs"));
}

/// A scenario ready to run.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The file's contents.
    pub spec: ScenarioFile,
    /// Where it came from (a file path, or `builtin:<module>`).
    pub source: String,
    /// The Rust body of a built-in scenario; `None` for a file scenario (its steps run).
    pub builtin: Option<&'static dyn crate::builtin::Builtin>,
}

/// What is wrong with a scenario file.
#[derive(Debug, Error)]
pub enum LoadErrorKind {
    /// The directory or file cannot be read.
    #[error("cannot read it: {0}")]
    Io(std::io::Error),
    /// TOML syntax or a field of the wrong type or name.
    #[error("{0}")]
    Syntax(String),
    /// Two scenarios share an id.
    #[error("id {0:?} is already used by {1}")]
    DuplicateId(String, String),
    /// A feature name no table knows.
    #[error("unknown {kind} feature name {name:?}")]
    UnknownFeature {
        /// "virtio" or "protocol".
        kind: &'static str,
        /// The name as the file wrote it.
        name: String,
    },
    /// No rule listed.
    #[error("a scenario must cite at least one rule")]
    NoRules,
}

impl LoadErrorKind {
    /// The 1-based line in `text` this problem is about, when it can be found: the line
    /// quoting the offending name.
    fn line_in(&self, text: &str) -> Option<usize> {
        let quoted = |name: &str| {
            let q = format!("\"{name}\"");
            text.lines().position(|l| l.contains(&q)).map(|i| i + 1)
        };
        match self {
            Self::UnknownFeature { name, .. } => quoted(name),
            Self::NoRules => text
                .lines()
                .position(|l| l.trim_start().starts_with("rules"))
                .map(|i| i + 1),
            _ => None,
        }
    }
}

/// A scenario file that cannot be used: which file, which line, what is wrong.
#[derive(Debug, Error)]
#[error("{}{}: {kind}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ScenarioLoadError {
    /// The scenario file (or directory) the problem is in.
    pub path: PathBuf,
    /// The line, when known.
    pub line: Option<usize>,
    /// What is wrong (in the message already, so not a `source`: a chain would say it twice).
    pub kind: LoadErrorKind,
}

/// Parses and checks one scenario file's text.
pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioLoadError> {
    let err = |line, kind| ScenarioLoadError {
        path: path.to_path_buf(),
        line,
        kind,
    };
    let spec: ScenarioFile = toml::from_str(text).map_err(|e| {
        let (line, message) = step_error(text).unwrap_or_else(|| {
            let line = e.span().map(|s| error_line(text, s, e.message()));
            (line, e.message().to_string())
        });
        err(line, LoadErrorKind::Syntax(message))
    })?;
    check(&spec).map_err(|kind| err(kind.line_in(text), kind))?;
    Ok(Scenario {
        spec,
        source: path.display().to_string(),
        builtin: None,
    })
}

/// The first step of `text` that does not parse, and why, with its line. A step is read from
/// its table in a second stage (its arguments depend on its `do`), where toml no longer knows
/// where the table was: the steps are read again here, each with its span.
fn step_error(text: &str) -> Option<(Option<usize>, String)> {
    #[derive(serde::Deserialize)]
    struct Steps {
        #[serde(rename = "step", default)]
        steps: Vec<toml::Spanned<toml::Table>>,
    }
    let steps: Steps = toml::from_str(text).ok()?;
    steps.steps.into_iter().find_map(|t| {
        let span = t.span();
        let e = toml::Value::Table(t.into_inner())
            .try_into::<Step>()
            .err()?;
        Some((
            Some(error_line(text, span, e.message())),
            e.message().to_string(),
        ))
    })
}

/// The 1-based line of a parse error: where in its span (a whole step, for what a step's
/// arguments refuse) the name the message quotes first is written (its key, else its value),
/// else where the span starts.
fn error_line(text: &str, span: std::ops::Range<usize>, message: &str) -> usize {
    let line_of = |at: usize| text[..at.min(text.len())].matches('\n').count() + 1;
    let start = line_of(span.start);
    let quoted = message
        .split(['`', '"'])
        .nth(1)
        .filter(|q| !q.is_empty() && !q.contains('\n'));
    let Some(name) = quoted else {
        return start;
    };
    // An array-of-tables element's span is its `[[step]]` header: its keys follow, up to the
    // next header.
    let rest = text.get(span.start..).unwrap_or_default();
    let end = rest
        .match_indices("\n[")
        .map(|(i, _)| i)
        .find(|&i| i + 1 >= span.len())
        .unwrap_or(rest.len());
    let region = &rest[..end.max(span.len().min(rest.len()))];
    // A field's key first (`name = ...`), else a line holding the quoted value.
    let key = |l: &str| {
        l.trim_start()
            .strip_prefix(name)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    let lines: Vec<&str> = region.lines().collect();
    lines
        .iter()
        .position(|l| key(l))
        .or_else(|| lines.iter().position(|l| l.contains(name)))
        .map_or(start, |i| start + i)
}

fn check(spec: &ScenarioFile) -> Result<(), LoadErrorKind> {
    if spec.rules.is_empty() {
        return Err(LoadErrorKind::NoRules);
    }
    for name in &spec.requires.virtio {
        crate::features::virtio_bit(name).ok_or_else(|| LoadErrorKind::UnknownFeature {
            kind: "virtio",
            name: name.clone(),
        })?;
    }
    for name in &spec.requires.protocol {
        crate::features::protocol_bit(name).ok_or_else(|| LoadErrorKind::UnknownFeature {
            kind: "protocol",
            name: name.clone(),
        })?;
    }
    Ok(())
}

/// Loads the built-in Rust scenarios, the embedded suite and every `*.toml` under `dirs`; ids
/// must be unique across all of them.
pub fn load_all(dirs: &[PathBuf]) -> Result<Vec<Scenario>, ScenarioLoadError> {
    let mut all = Vec::new();
    for b in crate::builtin::all() {
        let s = crate::builtin::to_scenario(*b);
        check(&s.spec).map_err(|kind| ScenarioLoadError {
            path: PathBuf::from(&s.source),
            line: None,
            kind,
        })?;
        all.push(s);
    }
    for (path, text) in embedded::EMBEDDED {
        all.push(parse(Path::new(path), text)?);
    }
    for dir in dirs {
        let mut files = Vec::new();
        collect(dir, &mut files).map_err(|e| ScenarioLoadError {
            path: dir.clone(),
            line: None,
            kind: LoadErrorKind::Io(e),
        })?;
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).map_err(|e| ScenarioLoadError {
                path: f.clone(),
                line: None,
                kind: LoadErrorKind::Io(e),
            })?;
            all.push(parse(&f, &text)?);
        }
    }
    for (i, s) in all.iter().enumerate() {
        if let Some(prev) = all[..i].iter().find(|p| p.spec.id == s.spec.id) {
            return Err(ScenarioLoadError {
                path: PathBuf::from(&s.source),
                line: None,
                kind: LoadErrorKind::DuplicateId(s.spec.id.clone(), prev.source.clone()),
            });
        }
    }
    all.sort_by(|a, b| (a.spec.fresh_process, &a.spec.id).cmp(&(b.spec.fresh_process, &b.spec.id)));
    Ok(all)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "toml") {
            out.push(p);
        }
    }
    Ok(())
}

/// Whether the scenario sends virtio-blk requests (its data path is virtio-blk's, and the
/// SHMEM device request travels as one), so only a block back-end can be judged by it.
pub fn required_device(s: &Scenario) -> Option<crate::device::DeviceType> {
    if let Some(b) = s.builtin {
        return b.meta().device;
    }
    s.spec
        .device
        .or_else(|| drives_blk(s).then_some(crate::device::DeviceType::Block))
}

fn drives_blk(s: &Scenario) -> bool {
    s.spec.steps.iter().any(|st| {
        st.action.is_blk_request()
            || matches!(
                st.action,
                Action::BlkComplete(_)
                    | Action::SwapCall(_)
                    | Action::ShmemMap(_)
                    | Action::ShmemUnmap(_)
            )
    })
}

/// Whether `id` matches the glob `pattern` (`*` any run of characters, `?` one character).
pub fn glob_match(pattern: &str, id: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &s[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), id.as_bytes())
}

/// Keeps the scenarios matching any of the globs (all when there are none). A bare prefix such
/// as `memory` selects `memory/*`.
pub fn select(all: Vec<Scenario>, filters: &[String]) -> Vec<Scenario> {
    if filters.is_empty() {
        return all;
    }
    all.into_iter()
        .filter(|s| {
            filters.iter().any(|f| {
                glob_match(f, &s.spec.id)
                    || glob_match(&format!("{}/*", f.trim_end_matches('/')), &s.spec.id)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_suite_loads() {
        let all = load_all(&[]).unwrap();
        assert!(all.len() >= 25, "{} scenarios", all.len());
    }

    #[test]
    fn a_malformed_file_names_file_line_and_problem() {
        let text =
            "id = \"x/y\"\ntitle = \"t\"\nrules = [\"R-MEM-01\"]\n\n[[step]]\ndo = \"teleport\"\n";
        let e = parse(Path::new("mine/bad.toml"), text).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("mine/bad.toml:6: "), "{msg}");
        assert!(msg.contains("teleport"), "{msg}");
    }

    #[test]
    fn unknown_fields_rule_ids_and_feature_names_are_refused() {
        let base = "id = \"x/y\"\ntitle = \"t\"\n";
        let e = parse(
            Path::new("a.toml"),
            &format!("{base}rules = [\"MEM-01\"]\n"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown rule id \"MEM-01\""), "{e}");
        let e = parse(
            Path::new("a.toml"),
            &format!("{base}rules = [\"R-MEM-01\"]\ncolour = 1\n"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = parse(
            Path::new("a.toml"),
            &format!("{base}rules = [\"R-MEM-01\"]\nrequires = {{ protocol = [\"TELEPATHY\"] }}\n"),
        )
        .unwrap_err();
        assert!(matches!(e.kind, LoadErrorKind::UnknownFeature { .. }));
        let e = parse(
            Path::new("a.toml"),
            &format!("{base}rules = [\"R-MEM-01\"]\n[[step]]\ndo = \"send\"\n"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("missing field `request`"), "{e}");
    }

    #[test]
    fn built_in_scenarios_are_listed_and_selected_like_files() {
        let all = load_all(&[]).unwrap();
        let b: Vec<_> = all.iter().filter(|s| s.builtin.is_some()).collect();
        assert!(b.len() >= 3, "{} built-in scenarios", b.len());
        assert!(b.iter().all(|s| s.source.starts_with("builtin:")));
        let sel = select(all, &["robustness/call-fd-flood".to_string()]);
        assert_eq!(sel.len(), 1);
        assert!(sel[0].builtin.is_some());
    }

    fn load_err(body: &str) -> ScenarioLoadError {
        let text = format!("id = \"x/y\"\ntitle = \"t\"\nrules = [\"R-MEM-01\"]\n{body}");
        parse(Path::new("s.toml"), &text).unwrap_err()
    }

    #[test]
    fn a_missing_argument_names_the_line_of_its_step() {
        // The step's `[[step]]` header: the key is nowhere to point at.
        let e = load_err("[[step]]\ndo = \"probe\"\n\n[[step]]\ndo = \"send\"\n");
        assert_eq!(e.line, Some(7), "{e}");
        assert!(
            e.to_string()
                .starts_with("s.toml:7: missing field `request` (in a `send` step)"),
            "{e}"
        );
    }

    #[test]
    fn a_field_another_action_takes_is_refused_on_its_line() {
        // `size` was once the ring size of `vring`; a key the action does not take is an
        // error on the line that writes it, naming what the action does take.
        let e = load_err(
            "[[step]]\ndo = \"negotiate\"\n\n[[step]]\ndo = \"vring\"\nqueue = 0\nsize = 64\n",
        );
        let msg = e.to_string();
        assert_eq!(e.line, Some(10), "{msg}");
        assert!(msg.contains("unknown field `size`"), "{msg}");
        assert!(
            msg.contains("`ring_size`") && msg.contains("`vring` step"),
            "{msg}"
        );
        // A blk_get_id has no data: `sectors` belongs to reads and writes.
        let e = load_err("[[step]]\ndo = \"blk_get_id\"\nsectors = 8\n");
        assert_eq!(e.line, Some(6), "{e}");
        // A shared key is taken by every action; `repeat` must run the step at least once.
        load_err_free("[[step]]\ndo = \"probe\"\nrule = \"R-MEM-01\"\nrepeat = 3\n");
        let e = load_err("[[step]]\ndo = \"probe\"\nrepeat = 0\n");
        assert!(e.to_string().contains("`repeat` is 0"), "{e}");
    }

    fn load_err_free(body: &str) -> Scenario {
        let text = format!("id = \"x/y\"\ntitle = \"t\"\nrules = [\"R-MEM-01\"]\n{body}");
        parse(Path::new("s.toml"), &text).unwrap()
    }

    #[test]
    fn a_misplaced_field_in_a_scenario_file_is_refused_with_its_path_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mine").join("misplaced.toml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let text = "id = \"mine/misplaced\"\ntitle = \"t\"\nrules = [\"R-MEM-11\"]\n\n[[step]]\ndo = \"negotiate\"\n\n[[step]]\ndo = \"memory\"\n\n[[step]]\ndo = \"rem_mem_reg\"\nregion = 1\nwindow_ms = 100\n";
        std::fs::write(&file, text).unwrap();
        let e = load_all(&[dir.path().to_path_buf()]).unwrap_err();
        assert_eq!(e.path, file);
        assert_eq!(e.line, Some(14), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("{}:14: unknown field `window_ms`", file.display())),
            "{msg}"
        );
    }

    #[test]
    fn every_scenario_file_round_trips_through_the_step_types() {
        // What a fuzz reproducer writes is read back as the same steps.
        for s in load_all(&[])
            .unwrap()
            .iter()
            .filter(|s| s.builtin.is_none())
        {
            let text = toml::to_string(&s.spec).unwrap();
            let again = parse(Path::new("again.toml"), &text)
                .unwrap_or_else(|e| panic!("{}: {e}\n{text}", s.source));
            assert_eq!(
                format!("{:?}", again.spec.steps),
                format!("{:?}", s.spec.steps),
                "{}",
                s.source
            );
        }
    }

    #[test]
    fn a_bad_rule_id_names_its_line() {
        let text = "id = \"x/y\"\ntitle = \"t\"\nrules = [\"R-MEM-01\"]\n[[step]]\ndo = \"probe\"\nrule = \"MEM-1\"\n";
        let e = parse(Path::new("s.toml"), text).unwrap_err();
        assert!(e.to_string().contains("unknown rule id"), "{e}");
        assert_eq!(e.line, Some(6), "{e}");
    }

    #[test]
    fn unknown_request_names_and_values_are_refused_at_load_time() {
        let e = load_err("[[step]]\ndo = \"send\"\nrequest = \"SET_VRING_NUMB\"\n");
        assert!(e.to_string().contains("unknown request name"), "{e}");
        let e = load_err("[[step]]\ndo = \"memory\"\nlayout = \"huge\"\n");
        assert!(e.to_string().contains("unknown variant `huge`"), "{e}");
        assert_eq!(e.line, Some(6), "{e}");
        let e = load_err("[[step]]\ndo = \"raw\"\nrequest = 1\npayload_hex = \"0g\"\n");
        assert!(e.to_string().contains("hex digits"), "{e}");
        assert_eq!(e.line, Some(7), "{e}");
        let e = load_err("[[step]]\ndo = \"negotiate\"\nprotocol = [\"REPLY_ACK\", \"NOPE\"]\n");
        assert!(e.to_string().contains("\"NOPE\""), "{e}");
        assert_eq!(e.line, Some(6), "{e}");
        let e = load_err("[[step]]\ndo = \"vring\"\nqueue = \"every\"\n");
        assert!(e.to_string().contains("`queue`"), "{e}");
        assert_eq!(e.line, Some(6), "{e}");
        let e = load_err(
            "[[step]]\ndo = \"send\"\nrequest = \"GET_FEATURES\"\nfd_kind = \"socketpair\"\n",
        );
        assert!(e.to_string().contains("socketpair"), "{e}");
        assert_eq!(e.line, Some(7), "{e}");
        // Names that resolve are accepted in every spelling.
        for name in ["SET_VRING_NUM", "VHOST_USER_SET_VRING_NUM", "SetVringNum"] {
            let text = format!(
                "id = \"x/y\"\ntitle = \"t\"\nrules = [\"R-MEM-01\"]\n[[step]]\ndo = \"send\"\nrequest = \"{name}\"\n"
            );
            parse(Path::new("s.toml"), &text).unwrap();
        }
    }

    #[test]
    fn globs_select_by_id() {
        assert!(glob_match("memory/*", "memory/add-rem-region"));
        assert!(glob_match("*rem*", "memory/add-rem-region"));
        assert!(!glob_match("vring/*", "memory/add-rem-region"));
        let all = load_all(&[]).unwrap();
        let mem = select(all, &["memory".to_string()]);
        assert!(!mem.is_empty() && mem.iter().all(|s| s.spec.id.starts_with("memory/")));
    }
}
