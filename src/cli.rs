//! The `vhu-conform` command line: parses options, loads and selects scenarios, reaches the
//! back-end, runs the suite, writes reports and returns a documented exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::engine::{self, RunOptions};
use crate::exit_code;
use crate::report::{self, Human, JsonReporter, JunitReporter, Reporter};
use crate::scenario;
use crate::target::TargetSpec;

/// Output format on stdout.
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum Format {
    /// Progress lines and a recap.
    Human,
    /// The JSON report.
    Json,
}

/// A conformance and robustness harness for vhost-user back-ends.
#[derive(Debug, Parser)]
#[command(name = "vhu-conform", version, about, after_help = EXIT_CODES)]
pub struct Args {
    /// Connect to a back-end listening on this Unix socket.
    #[arg(long, value_name = "PATH", group = "target")]
    pub backend: Option<PathBuf>,
    /// Start a fresh back-end per scenario; `{socket}` is replaced by a socket path it must listen on.
    #[arg(long, value_name = "CMD", group = "target")]
    pub spawn: Option<String>,
    /// Listen on this Unix socket for a back-end that connects.
    #[arg(long, value_name = "PATH", group = "target")]
    pub listen: Option<PathBuf>,
    /// Scenario id globs to run (`memory/*`, `*rem*`, or an area such as `vring`).
    pub filters: Vec<String>,
    /// Also load scenario files from this directory (repeatable).
    #[arg(long = "scenarios", value_name = "DIR")]
    pub scenario_dirs: Vec<PathBuf>,
    /// List the scenarios with their rules (and, with a target, whether each would run).
    #[arg(long)]
    pub list: bool,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value = "human")]
    pub format: Format,
    /// Write a JUnit XML report to this file.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    pub json_report: Option<PathBuf>,
    /// Timeout per reply and per data-path completion, in milliseconds.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub step_timeout_ms: u64,
    /// Default deadline per scenario, in milliseconds.
    #[arg(long, default_value_t = 30000, value_name = "MS")]
    pub scenario_timeout_ms: u64,
    /// How long to wait for a back-end's socket or connection, in milliseconds.
    #[arg(long, default_value_t = 10000, value_name = "MS")]
    pub connect_timeout_ms: u64,
    /// Print the rule coverage table: after the run, or with --list without running anything.
    #[arg(long)]
    pub rules: bool,
    /// SHOULD-level and robustness findings fail instead of warn.
    #[arg(long)]
    pub strict: bool,
    /// Show transcripts of warnings too; with --list, each scenario's source and description.
    #[arg(long, short)]
    pub verbose: bool,
}

const EXIT_CODES: &str = "Exit codes: 0 all applicable scenarios passed; 1 failures; 2 usage or scenario-file error; \
3 setup error (back-end not reached); 4 no scenario ran; 5 harness error";

/// Parses the process's arguments and runs. `vhu-conform mock-backend ARGS` runs the bundled
/// reference back-end instead (it is what the default target spawns).
pub fn run() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "mock-backend") {
        let rest = std::iter::once("vhu-mock-backend".into()).chain(argv[2..].iter().cloned());
        return vhu_mock_backend::run_from_args(rest.collect::<Vec<std::ffi::OsString>>());
    }
    if argv.get(1).is_some_and(|a| a == "fuzz" || a == "replay") {
        return crate::fuzz::run_from_args(argv);
    }
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit_code::USAGE
            } else {
                exit_code::ALL_PASSED
            });
        }
    };
    ExitCode::from(run_with(&args))
}

fn target(args: &Args) -> Option<TargetSpec> {
    if let Some(p) = &args.backend {
        return Some(TargetSpec::Connect(p.clone()));
    }
    if let Some(p) = &args.listen {
        return Some(TargetSpec::Listen(p.clone()));
    }
    args.spawn.clone().map(TargetSpec::Spawn)
}

/// The bundled reference back-end, spawned from this very executable.
fn bundled_backend() -> Option<TargetSpec> {
    let exe = std::env::current_exe().ok()?;
    let quoted = format!("'{}'", exe.display().to_string().replace('\'', r"'\''"));
    Some(TargetSpec::Spawn(format!(
        "{quoted} mock-backend --socket-path {{socket}} --shmem 0:0x100000"
    )))
}

/// Runs with parsed arguments; returns the exit code.
pub fn run_with(args: &Args) -> u8 {
    let all = match scenario::load_all(&args.scenario_dirs) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vhu-conform: {}", engine::chain(&e));
            return exit_code::USAGE;
        }
    };
    if args.list && args.rules {
        print!(
            "{}",
            crate::rules::render(&crate::rules::coverage(&all, None))
        );
        return exit_code::ALL_PASSED;
    }
    let selected = scenario::select(all.clone(), &args.filters);
    if selected.is_empty() {
        eprintln!("vhu-conform: no scenario matches {:?}", args.filters);
        return exit_code::NOTHING_RAN;
    }
    let mut reporters = match reporters(args) {
        Ok(r) if !args.list => r,
        Ok(_) => Vec::new(),
        Err(why) => {
            eprintln!("vhu-conform: {why}");
            return exit_code::USAGE;
        }
    };
    let opts = RunOptions {
        step_timeout: Duration::from_millis(args.step_timeout_ms),
        scenario_timeout: Duration::from_millis(args.scenario_timeout_ms),
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        strict: args.strict,
    };
    let Some(spec) = target(args).or_else(bundled_backend) else {
        eprintln!(
            "vhu-conform: no back-end given and the bundled one cannot be located: use --backend, --spawn or --listen"
        );
        return exit_code::USAGE;
    };
    if target(args).is_none() && !args.list {
        eprintln!(
            "vhu-conform: no back-end given: running against the bundled reference back-end (vhu-conform mock-backend)"
        );
    }
    let offer = match engine::preflight(&spec, &opts) {
        Ok(o) => o,
        Err(engine::PreflightError::Unreachable(why)) => {
            eprintln!("vhu-conform: cannot reach the back-end: {why}");
            return exit_code::SETUP;
        }
        Err(engine::PreflightError::Misbehaved(why)) => {
            // The back-end is there but its offer is unreadable: run what needs no feature, so
            // the scenarios show the departure with its rule.
            eprintln!("vhu-conform: {why}; running the scenarios that need no feature");
            engine::Offer::default()
        }
    };
    if args.list {
        list(&selected, Some(&offer), args.verbose);
        return exit_code::ALL_PASSED;
    }
    let results = engine::run_suite(&selected, &spec, &offer, &opts, &mut |e| {
        for r in &mut reporters {
            r.event(&e);
        }
    });
    let rules = crate::rules::coverage(&all, Some(&results));
    let run = report::RunReport {
        results: &results,
        offer: &offer,
        rules: &rules,
        show_rules: args.rules,
    };
    for r in &mut reporters {
        if let Err(e) = r.finish(&run) {
            eprintln!("vhu-conform: cannot write a report: {e}");
            return exit_code::USAGE;
        }
    }
    exit_for(&results)
}

/// The reporters the options ask for; report files are created before the run so a bad path
/// is a usage error before any back-end is judged.
fn reporters(args: &Args) -> Result<Vec<Box<dyn Reporter>>, String> {
    let create = |p: &PathBuf| {
        std::fs::File::create(p)
            .map(std::io::BufWriter::new)
            .map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    let mut out: Vec<Box<dyn Reporter>> = vec![match args.format {
        Format::Human => Box::new(Human::new(std::io::stdout(), args.verbose)),
        Format::Json => Box::new(JsonReporter::new(std::io::stdout())),
    }];
    if let Some(p) = &args.junit {
        out.push(Box::new(JunitReporter::new(create(p)?)));
    }
    if let Some(p) = &args.json_report {
        out.push(Box::new(JsonReporter::new(create(p)?)));
    }
    Ok(out)
}

/// The exit code a set of results earns.
pub fn exit_for(results: &[engine::ScenarioResult]) -> u8 {
    let t = report::Totals::of(results);
    if t.fail > 0 {
        exit_code::FAILURES
    } else if t.error > 0 {
        exit_code::HARNESS_ERROR
    } else if t.pass + t.warn == 0 {
        exit_code::NOTHING_RAN
    } else {
        exit_code::ALL_PASSED
    }
}

fn list(selected: &[scenario::Scenario], offer: Option<&engine::Offer>, verbose: bool) {
    for s in selected {
        let runs = match offer.map(|o| engine::skip_reason(s, o)) {
            None => String::new(),
            Some(None) => "  [would run]".into(),
            Some(Some(why)) => format!("  [skip: {why}]"),
        };
        println!(
            "{:<45} {:<7} {}{runs}",
            s.spec.id,
            format!("{:?}", s.spec.level).to_lowercase(),
            s.spec.rules.join(",")
        );
        println!("    {}", s.spec.title);
        if verbose {
            let kind = if s.builtin.is_some() {
                "built-in"
            } else {
                "file"
            };
            println!("    source: {} ({kind})", s.source);
            for line in s.spec.description.lines().filter(|l| !l.trim().is_empty()) {
                println!("    | {}", line.trim());
            }
        }
    }
}
