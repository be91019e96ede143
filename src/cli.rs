//! The `vhu-conform` command line: parses options, loads and selects scenarios, reaches the
//! back-end, runs the suite, writes reports and returns a documented exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::api::{RunExit, Suite, SuiteError};
use crate::device::DeviceSource;
use crate::engine::{self, RunOptions};
use crate::exit_code;
use crate::report::{Human, JsonReporter, JunitReporter, Reporters};
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
    /// Start the back-end described by a QEMU vhost-user JSON file (its `binary`, with
    /// `--socket-path {socket}`), one fresh process per scenario.
    #[arg(long, value_name = "FILE", group = "target")]
    pub backend_json: Option<PathBuf>,
    /// The back-end's device type (`block`/`blk`, `net`, `fs`, `vsock`, `rng`...; from
    /// --backend-json or the program's --print-capabilities when not given): device-specific
    /// scenarios run only for their type, and are skipped when the type is unknown.
    #[arg(long, value_name = "TYPE", value_parser = crate::device::DeviceType::parse)]
    pub device: Option<crate::device::DeviceType>,
    /// The ring size scenarios use (default: the largest power of two up to 256 that the
    /// back-end accepts at preflight).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=32768))]
    pub queue_size: Option<u16>,
    /// The directory a running fs back-end shares (fs scenarios that read a file create it
    /// there; without it, and without `{fs_dir}` in --spawn, they are skipped). In spawn mode a
    /// `{fs_dir}` in the command is replaced by a fresh empty directory per scenario.
    #[arg(long, value_name = "DIR")]
    pub fs_dir: Option<PathBuf>,
    /// The host side of a hybrid vsock back-end: a guest connection to host port P reaches the
    /// Unix socket PATH_P (`{socket}` is the back-end's socket; default `{socket}.vsock`).
    #[arg(long, value_name = "PATH")]
    pub vsock_uds: Option<String>,
    /// The host side of a console back-end's port 0: the TCP address (HOST:PORT) where the
    /// bytes the guest writes on the port can be read (vhost-device-console's network
    /// back-end); console scenarios then check the data arrives intact.
    #[arg(long, value_name = "HOST:PORT")]
    pub console_tcp: Option<String>,
    /// Expectations file (TOML): known failures and skips with their reasons.
    #[arg(long, value_name = "FILE")]
    pub expect: Option<PathBuf>,
    /// An unexpected pass, a scenario that ran against an expected skip, or a stale expectation
    /// fails the run.
    #[arg(long)]
    pub strict_expectations: bool,
    /// Rerun only the scenarios that failed or errored in this earlier JSON report.
    #[arg(long, value_name = "REPORT.json")]
    pub rerun_failed: Option<PathBuf>,
    /// Run each scenario N times (flaky back-ends); the first failing run is reported.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub repeat: u32,
    /// With --repeat, stop repeating a scenario at its first failure.
    #[arg(long)]
    pub until_failure: bool,
    /// Run the scenarios in a random order (seeded by --seed, printed), to find order effects.
    #[arg(long)]
    pub shuffle: bool,
    /// Seed for anything random (--shuffle); the run prints it so it can be repeated.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Scenarios run at once in spawn mode, each with its own back-end process (default: the
    /// number of CPUs, at least 2; four per CPU for the bundled back-end); the report and exit code are those of a serial run. With
    /// --backend or --listen (one running back-end) scenarios always run one at a time.
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Spawn mode: keep a back-end process for the next scenario while it stays healthy (the
    /// scenario passed, warned or was skipped and the process still runs) instead of a fresh
    /// one per scenario: for back-ends with a slow start-up. A scenario may then meet what an
    /// earlier one left, as with --backend; `fresh_process` scenarios still get a new process.
    #[arg(long)]
    pub keep_process: bool,
    /// Run only shard K of N of the selected scenarios, to split a run over a CI matrix:
    /// `count:K/N` (or `K/N`) takes every N-th from the K-th, `hash:K/N` those whose id's
    /// stable hash falls in shard K; applied after the filters, before --shuffle.
    #[arg(long, value_name = "K/N", value_parser = crate::api::Partition::parse)]
    pub partition: Option<crate::api::Partition>,
    /// Print the rule coverage table: after the run, or with --list without running anything.
    #[arg(long)]
    pub rules: bool,
    /// SHOULD-level and robustness findings fail instead of warn.
    #[arg(long)]
    pub strict: bool,
    /// Show transcripts of warnings too; with --list, each scenario's source and description.
    #[arg(long, short)]
    pub verbose: bool,
    /// Colour the verdicts: `auto` on a terminal unless NO_COLOR is set (as cargo and nextest).
    /// On a terminal a live progress bar shows the running scenarios; piped output is plain
    /// lines either way.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = ColorWhen::Auto)]
    pub color: ColorWhen,
}

/// When to colour the output (`--color`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set.
    Auto,
    /// Always, even into a pipe.
    Always,
    /// Never.
    Never,
}

impl ColorWhen {
    /// Whether to colour output going to standard output.
    pub fn enabled(self) -> bool {
        use std::io::IsTerminal;
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Auto => {
                std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::io::stdout().is_terminal()
            }
        }
    }
}

const EXIT_CODES: &str = "Exit codes: 0 all applicable scenarios passed; 1 failures; 2 usage or scenario-file error; \
3 setup error (back-end not reached); 4 no scenario ran; 5 harness error";

/// Parses the process's arguments and runs. `vhu-conform mock-backend ARGS` runs the bundled
/// reference back-end instead (it is what the default target spawns; builds with the
/// `bundled-backend` feature only).
pub fn run() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == "mock-backend") {
        return mock_backend(&argv[2..]);
    }
    // Judging front-ends (issue 16) and the mock front-end that proves those checks.
    if argv.get(1).is_some_and(|a| a == "frontend") {
        return crate::frontend::run_from_args(argv);
    }
    if argv.get(1).is_some_and(|a| a == "mock-frontend") {
        return crate::frontend::mock::run_from_args(argv);
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

/// Why a build without the `bundled-backend` feature cannot run without a target.
#[cfg(not(feature = "bundled-backend"))]
const NO_BUNDLED_BACKEND: &str = "this build of vhu-conform has no bundled back-end (built without \
the `bundled-backend` feature): give the back-end with --spawn, --backend or --listen";

/// `vhu-conform mock-backend ARGS`: the bundled reference back-end.
#[cfg(feature = "bundled-backend")]
fn mock_backend(args: &[std::ffi::OsString]) -> ExitCode {
    let rest = std::iter::once("vhu-mock-backend".into()).chain(args.iter().cloned());
    vhu_mock_backend::run_from_args(rest.collect::<Vec<std::ffi::OsString>>())
}

/// `vhu-conform mock-backend ARGS` in a build without the bundled back-end: a usage error.
#[cfg(not(feature = "bundled-backend"))]
fn mock_backend(_args: &[std::ffi::OsString]) -> ExitCode {
    eprintln!("vhu-conform mock-backend: {NO_BUNDLED_BACKEND}");
    ExitCode::from(exit_code::USAGE)
}

/// The bundled reference back-end, spawned from this very executable as `device` (blk when
/// none); `Err` says why not.
#[cfg(feature = "bundled-backend")]
fn bundled_backend(device: Option<crate::device::DeviceType>) -> Result<TargetSpec, String> {
    use crate::device::DeviceType;
    // blk keeps its SHMEM region (the SHMEM scenarios); the others are blk-only options. fs
    // shares the fresh directory the harness makes per scenario; vsock's host side is the
    // harness's default, `{socket}.vsock`.
    let device_args = match device {
        None | Some(DeviceType::Block) => "--shmem 0:0x100000".to_string(),
        Some(DeviceType::Fs) => "--device fs --shared-dir {fs_dir}".to_string(),
        Some(DeviceType::Vsock) => "--device vsock --uds-path {socket}.vsock".to_string(),
        Some(
            d @ (DeviceType::Net
            | DeviceType::Rng
            | DeviceType::Scmi
            | DeviceType::Gpio
            | DeviceType::I2c
            | DeviceType::Console
            | DeviceType::Input
            | DeviceType::Sound
            | DeviceType::Gpu),
        ) => {
            format!("--device {d}")
        }
        Some(d) => {
            return Err(format!(
                "the bundled reference back-end serves blk, net, fs, vsock, rng, scmi, gpio, i2c, console, input, sound and gpu, not {d}: give the back-end with --spawn, --backend or --listen"
            ));
        }
    };
    let exe = std::env::current_exe().map_err(|e| {
        format!("no back-end given and the bundled one cannot be located ({e}): use --backend, --spawn or --listen")
    })?;
    let quoted = format!("'{}'", exe.display().to_string().replace('\'', r"'\''"));
    Ok(TargetSpec::Spawn(format!(
        "{quoted} mock-backend --socket-path {{socket}} {device_args}"
    )))
}

/// A build without the `bundled-backend` feature: no default target.
#[cfg(not(feature = "bundled-backend"))]
fn bundled_backend(_device: Option<crate::device::DeviceType>) -> Result<TargetSpec, String> {
    Err(format!("no back-end given: {NO_BUNDLED_BACKEND}"))
}

/// Why the command line could not run the suite to the end: what to tell the user, and the
/// exit code that goes with it (README "Exit codes"). A back-end that misbehaves is never this.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad option, an unreadable or invalid file, no bundled back-end in this build.
    #[error("{0}")]
    Usage(String),
    /// The back-end could not be reached or started: it was never judged.
    #[error("{0}")]
    Setup(String),
    /// Nothing was selected, or there is nothing to rerun.
    #[error("{0}")]
    NothingRan(String),
    /// The library could not make the run (it knows the exit code).
    #[error("{}", engine::chain(.0))]
    Suite(#[from] SuiteError),
}

impl CliError {
    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit_code::USAGE,
            Self::Setup(_) => exit_code::SETUP,
            Self::NothingRan(_) => exit_code::NOTHING_RAN,
            Self::Suite(e) => e.exit_code(),
        }
    }
}

/// Runs with parsed arguments; returns the exit code.
pub fn run_with(args: &Args) -> u8 {
    match run_checked(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vhu-conform: {e}");
            e.exit_code()
        }
    }
}

/// The suite the options describe; `Err` is an exit code with its one-line reason.
fn suite(args: &Args) -> Result<Suite, CliError> {
    let usage = |e: &dyn std::error::Error| CliError::Usage(engine::chain(e));
    let description = match args.backend_json.as_deref().map(crate::backend_json::load) {
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => return Err(usage(&e)),
        None => None,
    };
    if let Some(d) = &description {
        eprintln!(
            "vhu-conform: {} back-end {:?} ({}): {}",
            d.kind,
            d.description,
            d.binary.display(),
            d.spawn_command()
        );
    }
    let mut bundled = false;
    let spec = match (target(args), &description) {
        (Some(t), _) => t,
        (None, Some(d)) => TargetSpec::Spawn(d.spawn_command()),
        (None, None) => {
            bundled = true;
            let t = bundled_backend(args.device).map_err(CliError::Usage)?;
            if !args.list {
                eprintln!(
                    "vhu-conform: no back-end given: running against the bundled reference back-end (vhu-conform mock-backend)"
                );
            }
            t
        }
    };
    let mut s = Suite::new(spec);
    s.filters = args.filters.clone();
    s.scenario_dirs = args.scenario_dirs.clone();
    s.options = RunOptions {
        step_timeout: Duration::from_millis(args.step_timeout_ms),
        scenario_timeout: Duration::from_millis(args.scenario_timeout_ms),
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        strict: args.strict,
        queue_size: args.queue_size,
        host: crate::target::HostContext {
            fs_dir: args.fs_dir.clone(),
            vsock_uds: args.vsock_uds.clone(),
            console_tcp: args.console_tcp.clone(),
        },
        keep_process: args.keep_process,
    };
    s.repeat = engine::Repeat {
        times: args.repeat.max(1),
        until_failure: args.until_failure,
    };
    if let Some(j) = args.jobs {
        s.jobs = j as usize;
    } else if bundled {
        s.jobs = engine::bundled_default_jobs();
    }
    s.partition = args.partition;
    s.exit_policy.strict_expectations = args.strict_expectations;
    let from_json = description
        .as_ref()
        .and_then(|d| crate::device::DeviceType::parse(&d.kind).ok());
    s.device = match (args.device, from_json) {
        (Some(d), _) => Some((d, DeviceSource::Option)),
        (None, Some(d)) => Some((d, DeviceSource::BackendJson)),
        (None, None) if bundled => Some((crate::device::DeviceType::Block, DeviceSource::Bundled)),
        (None, None) => None,
    };
    if let Some(p) = &args.expect {
        s = s.expect_file(p).map_err(|e| usage(&e))?;
    }
    if let Some(p) = &args.rerun_failed {
        let ids = failed_in(p).map_err(CliError::Usage)?;
        if ids.is_empty() {
            return Err(CliError::NothingRan(format!(
                "nothing failed in {}: nothing to rerun",
                p.display()
            )));
        }
        s.filters.extend(ids);
    }
    if args.shuffle {
        let seed = args.seed.unwrap_or_else(crate::seed::fresh);
        eprintln!("vhu-conform: scenario order shuffled with --seed {seed}");
        s.shuffle = Some(seed);
    }
    Ok(s)
}

fn run_checked(args: &Args) -> Result<u8, CliError> {
    if args.list && args.rules {
        let all = scenario::load_all(&args.scenario_dirs)
            .map_err(|e| CliError::Usage(engine::chain(&e)))?;
        print!(
            "{}",
            crate::rules::render(&crate::rules::coverage(&all, None))
        );
        return Ok(exit_code::ALL_PASSED);
    }
    let suite = suite(args)?;
    let (selected, _) = suite.plan()?;
    // Report files are created before the run: a bad path is a usage error before any
    // back-end is judged.
    let mut reporters = reporters(args).map_err(CliError::Usage)?;
    if args.list {
        let offer = match engine::preflight(&suite.target, &suite.options) {
            Ok(o) => o,
            Err(engine::PreflightError::Unreachable(why)) => {
                return Err(CliError::Setup(format!("cannot reach the back-end: {why}")));
            }
            Err(engine::PreflightError::Misbehaved(_)) => engine::Offer::default(),
        };
        let device = engine::device_type(suite.device, &suite.target);
        let offer = engine::Offer {
            device: device.map(|d| d.0),
            device_source: device.map(|d| d.1),
            ..offer
        };
        list(&selected, Some(&offer), args.verbose);
        return Ok(exit_code::ALL_PASSED);
    }
    let report = suite.run_with(&mut |e| reporters.emit(&e))?;
    if let Some(why) = &report.preflight_warning {
        eprintln!("vhu-conform: {why}; the scenarios that need no feature ran");
    }
    reporters
        .finish()
        .map_err(|e| CliError::Usage(format!("cannot write a report: {e}")))?;
    if let RunExit::ExpectationsMissed { .. } = report.exit {
        eprintln!("vhu-conform: {}", report.exit);
    }
    Ok(report.exit_code())
}

/// Scenario ids that failed or errored in an earlier JSON report.
fn failed_in(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a vhu-conform JSON report: {e}", path.display()))?;
    let results = v["results"]
        .as_array()
        .ok_or_else(|| format!("{} has no `results` array", path.display()))?;
    Ok(results
        .iter()
        .filter(|r| matches!(r["outcome"].as_str(), Some("fail" | "error")))
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect())
}

/// The reporters the options ask for; report files are created before the run so a bad path
/// is a usage error before any back-end is judged.
fn reporters(args: &Args) -> Result<Reporters, String> {
    let create = |p: &PathBuf| {
        std::fs::File::create(p)
            .map(std::io::BufWriter::new)
            .map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    let mut out = Reporters::default();
    out.push(match args.format {
        Format::Human => {
            use std::io::IsTerminal;
            let live = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
            Box::new(
                Human::new(std::io::stdout(), args.verbose)
                    .with_color(args.color.enabled())
                    .show_rules(args.rules)
                    .live(live),
            )
        }
        Format::Json => Box::new(JsonReporter::new(std::io::stdout())),
    });
    if let Some(p) = &args.junit {
        out.push(Box::new(JunitReporter::new(create(p)?)));
    }
    if let Some(p) = &args.json_report {
        out.push(Box::new(JsonReporter::new(create(p)?)));
    }
    Ok(out)
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
            s.spec
                .rules
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(",")
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
