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
    #[error("cannot read it")]
    Io(#[source] std::io::Error),
    /// TOML syntax or a field of the wrong type or name.
    #[error("{0}")]
    Syntax(String),
    /// Two scenarios share an id.
    #[error("id {0:?} is already used by {1}")]
    DuplicateId(String, String),
    /// A step lacks a field its action needs.
    #[error("step {step} ({action:?}) needs the field `{field}`")]
    MissingField {
        /// 1-based step number.
        step: usize,
        /// The action.
        action: Action,
        /// The field.
        field: &'static str,
    },
    /// A feature name no table knows.
    #[error("unknown {kind} feature name {name:?}")]
    UnknownFeature {
        /// "virtio" or "protocol".
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// No rule listed.
    #[error("a scenario must cite at least one rule")]
    NoRules,
    /// A step field has a value its action does not accept.
    #[error("step {step} ({action:?}): `{field}` {why}")]
    BadValue {
        /// 1-based step number.
        step: usize,
        /// The action.
        action: Action,
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

impl LoadErrorKind {
    /// The 1-based line in `text` this problem is about, when it can be found: the step's
    /// `[[step]]` header, or the line quoting the offending name.
    fn line_in(&self, text: &str) -> Option<usize> {
        let quoted = |name: &str| {
            let q = format!("\"{name}\"");
            text.lines().position(|l| l.contains(&q)).map(|i| i + 1)
        };
        match self {
            Self::UnknownFeature { name, .. } => quoted(name),
            Self::MissingField { step, .. } | Self::BadValue { step, .. } => text
                .lines()
                .enumerate()
                .filter(|(_, l)| l.trim_start().starts_with("[[step]]"))
                .nth(step - 1)
                .map(|(i, _)| i + 1),
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
    /// The file.
    pub path: PathBuf,
    /// The line, when known.
    pub line: Option<usize>,
    /// What is wrong.
    #[source]
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
        let line = e.span().map(|s| text[..s.start].lines().count().max(1));
        err(line, LoadErrorKind::Syntax(e.message().to_string()))
    })?;
    check(&spec).map_err(|kind| err(kind.line_in(text), kind))?;
    Ok(Scenario {
        spec,
        source: path.display().to_string(),
        builtin: None,
    })
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
    for (i, s) in spec.steps.iter().enumerate() {
        check_values(i + 1, s)?;
        let missing = |field| LoadErrorKind::MissingField {
            step: i + 1,
            action: s.action,
            field,
        };
        match s.action {
            Action::Send | Action::Raw if s.request.is_none() => return Err(missing("request")),
            Action::AddMemReg | Action::RemMemReg
                if s.region.is_none() && s.action == Action::AddMemReg =>
            {
                return Err(missing("region"));
            }
            Action::RemMemReg if s.region.is_none() => return Err(missing("region")),
            Action::Sleep if s.ms.is_none() => return Err(missing("ms")),
            Action::Iotlb if s.op.is_none() => return Err(missing("op")),
            Action::NetCtrl if s.class.is_none() => return Err(missing("class")),
            Action::NetCtrl if s.command.is_none() => return Err(missing("command")),
            Action::RngRead
                if s.sizes
                    .as_ref()
                    .is_some_and(|v| v.is_empty() || v.contains(&0)) =>
            {
                return Err(LoadErrorKind::BadValue {
                    step: i + 1,
                    action: s.action,
                    field: "sizes",
                    why: "is empty or holds 0: each entropy request needs a writable byte".into(),
                });
            }
            Action::FsFile
            | Action::FsOpen
            | Action::FsRead
            | Action::FsRelease
            | Action::FsForget
                if s.name.is_none() =>
            {
                return Err(missing("name"));
            }
            Action::FsLookup if s.name.is_none() => return Err(missing("name")),
            Action::VsockListen
            | Action::VsockConnect
            | Action::VsockSend
            | Action::VsockRecv
            | Action::VsockCreditRequest
            | Action::VsockShutdown
            | Action::VsockUnknownType
            | Action::VsockNoConnection
            | Action::VsockHostConnect
                if s.port.is_none() =>
            {
                return Err(missing("port"));
            }
            Action::VsockSend | Action::VsockRecv if s.bytes.is_none() => {
                return Err(missing("bytes"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Values the interpreter would otherwise only refuse at run time (as a harness error).
fn check_values(step: usize, s: &Step) -> Result<(), LoadErrorKind> {
    let bad = |field, why: String| LoadErrorKind::BadValue {
        step,
        action: s.action,
        field,
        why,
    };
    let one_of = |field, v: &Option<String>, allowed: &[&str]| match v {
        Some(v) if !allowed.contains(&v.as_str()) => {
            Err(bad(field, format!("is {v:?}, not one of {allowed:?}")))
        }
        _ => Ok(()),
    };
    one_of("layout", &s.layout, &["default", "single"])?;
    one_of("via", &s.via, &["table", "add_mem_reg"])?;
    one_of(
        "fd_kind",
        &s.fd_kind,
        &["eventfd", "memfd", "pipe", "socket"],
    )?;
    match (&s.queue, s.action) {
        (Some(model::NumOrWord::Word(w)), Action::Send) if w != "past_end" => {
            return Err(bad(
                "queue",
                format!("is {w:?}: a send step takes \"past_end\""),
            ));
        }
        (Some(model::NumOrWord::Word(w)), a) if a != Action::Send && w != "all" => {
            return Err(bad("queue", format!("is {w:?}: a number or \"all\"")));
        }
        _ => {}
    }
    one_of("ring", &s.ring, &["split", "packed"])?;
    if let Some(model::NumOrWord::Word(w)) = &s.num {
        if w != "reached" {
            return Err(bad("num", format!("is {w:?}: a number or \"reached\"")));
        }
    }
    if let (Action::Send, Some(r)) = (s.action, &s.request) {
        r.resolve().map_err(|why| bad("request", why))?;
    }
    if let (Action::Raw, Some(model::RequestName::Name(_))) = (s.action, &s.request) {
        s.request
            .as_ref()
            .map(model::RequestName::resolve)
            .transpose()
            .map_err(|why| bad("request", why))?;
    }
    if let Some(h) = &s.payload_hex {
        let digits: String = h.chars().filter(|c| !c.is_whitespace()).collect();
        if digits.len() % 2 != 0 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad(
                "payload_hex",
                "is not an even number of hex digits".into(),
            ));
        }
    }
    let names = |field, sel: Option<&[String]>, lookup: fn(&str) -> Option<u64>| {
        for n in sel.unwrap_or_default() {
            if lookup(n).is_none() {
                return Err(bad(field, format!("names an unknown feature {n:?}")));
            }
        }
        Ok(())
    };
    let list = |l: &Option<model::NumOrWordList>| match l {
        Some(model::NumOrWordList::List(v)) => Some(v.clone()),
        Some(model::NumOrWordList::Word(w)) if w != "all" => Some(vec![w.clone()]),
        _ => None,
    };
    names(
        "features",
        list(&s.features).as_deref(),
        crate::features::virtio_bit,
    )?;
    names(
        "protocol",
        list(&s.protocol).as_deref(),
        crate::features::protocol_bit,
    )?;
    names(
        "exclude_protocol",
        s.exclude_protocol.as_deref(),
        crate::features::protocol_bit,
    )?;
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
        matches!(
            st.action,
            Action::BlkWrite
                | Action::BlkRead
                | Action::BlkFlush
                | Action::BlkGetId
                | Action::BlkComplete
                | Action::SwapCall
                | Action::ShmemMap
                | Action::ShmemUnmap
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
        assert!(matches!(
            e.kind,
            LoadErrorKind::MissingField {
                field: "request",
                ..
            }
        ));
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
    fn semantic_errors_name_the_line_of_the_offending_step() {
        let e = load_err("[[step]]\ndo = \"probe\"\n\n[[step]]\ndo = \"send\"\n");
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.to_string().starts_with("s.toml:7: step 2 (Send)"), "{e}");
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
        assert!(e.to_string().contains("`layout` is \"huge\""), "{e}");
        let e = load_err("[[step]]\ndo = \"raw\"\nrequest = 1\npayload_hex = \"0g\"\n");
        assert!(e.to_string().contains("payload_hex"), "{e}");
        let e = load_err("[[step]]\ndo = \"negotiate\"\nprotocol = [\"REPLY_ACK\", \"NOPE\"]\n");
        assert!(e.to_string().contains("\"NOPE\""), "{e}");
        let e = load_err("[[step]]\ndo = \"vring\"\nqueue = \"every\"\n");
        assert!(e.to_string().contains("`queue`"), "{e}");
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
