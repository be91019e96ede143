//! The options of `vhu-conform fuzz` and `vhu-conform replay`, and what each prints.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser};

use super::FuzzError;
use super::exec::Limits;
use super::replay::{self, Replayed};
use super::runner::{self, RunConfig, Summary};
use super::strategy::Selection;
use crate::engine::{Outcome, RunOptions};
use crate::exit_code;
use crate::target::TargetSpec;

/// Where the back-end is (default: the bundled reference back-end, spawned).
#[derive(Debug, Args)]
#[group(multiple = false)]
pub struct TargetArgs {
    /// Connect to a back-end listening on this Unix socket (no crash or leak checks).
    #[arg(long, value_name = "PATH")]
    pub backend: Option<PathBuf>,
    /// Start the back-end with this command; `{socket}` is replaced by the socket path.
    #[arg(long, value_name = "CMD")]
    pub spawn: Option<String>,
}

impl TargetArgs {
    fn spec(&self) -> Option<TargetSpec> {
        self.backend
            .clone()
            .map(TargetSpec::Connect)
            .or_else(|| self.spawn.clone().map(TargetSpec::Spawn))
    }
}

/// Timeouts shared by both subcommands.
#[derive(Debug, Args)]
pub struct TimeoutArgs {
    /// Each reply and data-path completion; past it, a hang.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub timeout_ms: u64,
    /// How long a back-end may take to close fds and unmap memory after a disconnect.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub settle_ms: u64,
    /// How long to wait for a spawned back-end's socket.
    #[arg(long, default_value_t = 10000, value_name = "MS")]
    pub connect_timeout_ms: u64,
}

impl TimeoutArgs {
    fn limits(&self) -> Limits {
        Limits {
            timeout: Duration::from_millis(self.timeout_ms),
            settle: Duration::from_millis(self.settle_ms),
        }
    }
}

/// Property-based malformed input against a vhost-user back-end, with shrunk reproducers.
#[derive(Debug, Parser)]
#[command(name = "vhu-conform fuzz", after_help = FUZZ_AFTER)]
pub struct FuzzArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Cases to generate.
    #[arg(long, default_value_t = 256)]
    cases: u32,
    /// Seed (decimal or 0x hex); the same seed generates the same cases.
    #[arg(long, value_parser = parse_seed)]
    seed: Option<u64>,
    /// Only these messages (spec or CamelCase names, codes, `unknown`, `chain`).
    #[arg(long, num_args = 1.., value_name = "NAME")]
    message: Vec<String>,
    /// Directory for reproducers.
    #[arg(long, default_value = "vhu-fuzz-out", value_name = "DIR")]
    out: PathBuf,
    /// Stop after this many failures.
    #[arg(long, default_value_t = 1)]
    max_failures: usize,
    /// Shrink steps allowed per failure.
    #[arg(long, default_value_t = 200)]
    max_shrink_iters: u32,
    /// Seconds between progress lines on stderr.
    #[arg(long, default_value_t = 2.0)]
    progress_secs: f64,
    /// Workers running cases at once, each with its own back-end process (default: the number
    /// of CPUs, at least 2; one with --backend, whose one back-end serves one front-end at a
    /// time). The cases and the failures reported are the same whatever the number.
    #[arg(short = 'j', long = "jobs", value_name = "N")]
    jobs: Option<usize>,
    /// Every case on a new back-end process (default: one process per worker, kept while the
    /// oracle finds it healthy, replaced after any failure).
    #[arg(long)]
    fresh_process: bool,
    #[command(flatten)]
    timeouts: TimeoutArgs,
}

/// The default number of workers: the CPUs, at least 2 (a case mostly waits on the back-end,
/// so two workers pay off even on one CPU).
fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

const FUZZ_AFTER: &str = "Exit codes: 0 nothing found; 1 failures found (reproducers saved); 2 usage error; \
3 the back-end could not be started or fails a clean session; 5 harness error";

/// Reruns a saved reproducer (or any scenario file) against a back-end.
#[derive(Debug, Parser)]
#[command(name = "vhu-conform replay", after_help = REPLAY_AFTER)]
pub struct ReplayArgs {
    /// The reproducer or scenario file.
    file: PathBuf,
    #[command(flatten)]
    target: TargetArgs,
    #[command(flatten)]
    timeouts: TimeoutArgs,
}

const REPLAY_AFTER: &str = "Without --spawn or --backend a reproducer runs against the target its run used. \
Exit codes: 0 the failure did not reproduce (or the scenario passed); 1 it did; 2 usage error; 3 setup error; 5 harness error";

fn parse_seed(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| e.to_string())
}

/// The bundled reference back-end, spawned from this very executable.
fn bundled() -> Option<TargetSpec> {
    let exe = std::env::current_exe().ok()?;
    let quoted = format!("'{}'", exe.display().to_string().replace('\'', r"'\''"));
    Some(TargetSpec::Spawn(format!(
        "{quoted} mock-backend --socket-path {{socket}}"
    )))
}

/// Runs `vhu-conform fuzz ...` or `vhu-conform replay ...`; `argv[1]` names the subcommand.
pub fn run_from_args(argv: Vec<OsString>) -> ExitCode {
    let replay = argv.get(1).is_some_and(|a| a == "replay");
    let name = if replay {
        "vhu-conform replay"
    } else {
        "vhu-conform fuzz"
    };
    let rest = std::iter::once(OsString::from(name)).chain(argv.into_iter().skip(2));
    let code = if replay {
        ReplayArgs::try_parse_from(rest).map(|a| run_replay(&a))
    } else {
        FuzzArgs::try_parse_from(rest).map(|a| run_fuzz(&a))
    };
    ExitCode::from(code.unwrap_or_else(|e| {
        let _ = e.print();
        if e.use_stderr() {
            exit_code::USAGE
        } else {
            exit_code::ALL_PASSED
        }
    }))
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ u64::from(std::process::id()).rotate_left(32)
}

fn run_fuzz(a: &FuzzArgs) -> u8 {
    let selection = match Selection::from_names(&a.message) {
        Ok(s) => s,
        Err(e) => return report_error(&FuzzError::Usage(format!("--message: {e}"))),
    };
    let Some(target) = a.target.spec().or_else(bundled) else {
        return report_error(&FuzzError::Usage(
            "no target: give --spawn or --backend".into(),
        ));
    };
    let seed = a.seed.unwrap_or_else(random_seed);
    println!(
        "vhu-conform fuzz: seed {seed:#x} (repeat with --seed {seed:#x}), {} cases",
        a.cases
    );
    let cfg = RunConfig {
        target,
        cases: a.cases,
        seed,
        selection,
        out: a.out.clone(),
        limits: a.timeouts.limits(),
        connect_timeout: Duration::from_millis(a.timeouts.connect_timeout_ms),
        max_failures: a.max_failures.max(1),
        max_shrink_iters: a.max_shrink_iters,
        progress_every: Duration::from_secs_f64(a.progress_secs.max(0.05)),
        jobs: a.jobs.unwrap_or_else(default_jobs).max(1),
        fresh_process: a.fresh_process,
    };
    match runner::run(&cfg) {
        Ok(summary) => print_summary(&summary, seed),
        Err(e) => report_error(&e),
    }
}

fn print_summary(s: &Summary, seed: u64) -> u8 {
    for f in &s.found {
        let r = &f.reproducer;
        println!("FAIL  {} {}", r.rule, r.failure);
        if let Some(n) = r.case_number {
            println!("      found by case {n} of seed {seed:#x}");
        }
        println!("      minimal case: {}", r.case);
        println!(
            "      rerun alone on a fresh back-end: {}",
            if f.reproduced {
                "fails again"
            } else {
                "passed (flaky or order-dependent)"
            }
        );
        println!("      saved: {}", f.path.display());
        println!("      replay: vhu-conform replay {}", f.path.display());
    }
    let secs = s.elapsed.as_secs_f64();
    println!(
        "vhu-conform fuzz: {} cases in {secs:.1} s ({:.1} cases/s, {} worker{}), {} failure{} found, seed {seed:#x}",
        s.cases,
        s.cases as f64 / secs.max(1e-3),
        s.workers,
        if s.workers == 1 { "" } else { "s" },
        s.found.len(),
        if s.found.len() == 1 { "" } else { "s" }
    );
    if s.found.is_empty() {
        exit_code::ALL_PASSED
    } else {
        exit_code::FAILURES
    }
}

fn run_replay(a: &ReplayArgs) -> u8 {
    let opts = RunOptions {
        step_timeout: Duration::from_millis(a.timeouts.timeout_ms),
        connect_timeout: Duration::from_millis(a.timeouts.connect_timeout_ms),
        ..RunOptions::default()
    };
    match replay::replay(&a.file, a.target.spec(), a.timeouts.limits(), &opts) {
        Ok(Replayed::Reproduced(f)) => {
            println!("REPRODUCED  {}: {f}", a.file.display());
            exit_code::FAILURES
        }
        Ok(Replayed::NotReproduced) => {
            println!("not reproduced  {}: every check passed", a.file.display());
            exit_code::ALL_PASSED
        }
        Ok(Replayed::Scenario(outcome, details)) => {
            println!("{outcome:?}  {}", a.file.display());
            print!("{details}");
            match outcome {
                Outcome::Pass | Outcome::Skip { .. } => exit_code::ALL_PASSED,
                Outcome::Error { .. } => exit_code::HARNESS_ERROR,
                Outcome::Fail | Outcome::Warn => exit_code::FAILURES,
            }
        }
        Err(e) => report_error(&e),
    }
}

fn report_error(e: &FuzzError) -> u8 {
    eprintln!("vhu-conform: {}", crate::engine::chain(e));
    e.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_in_decimal_and_hex() {
        assert_eq!(parse_seed("42"), Ok(42));
        assert_eq!(parse_seed("0x2a"), Ok(42));
        assert!(parse_seed("x").is_err());
    }

    #[test]
    fn fuzz_options_parse() {
        let a = FuzzArgs::try_parse_from([
            "fuzz",
            "--spawn",
            "b {socket}",
            "--cases",
            "5",
            "--message",
            "SET_VRING_NUM",
            "chain",
            "-j",
            "3",
        ])
        .unwrap();
        assert_eq!(a.cases, 5);
        assert_eq!(a.message.len(), 2);
        assert_eq!(a.jobs, Some(3));
        assert!(!a.fresh_process);
        assert!(default_jobs() >= 2);
        assert!(FuzzArgs::try_parse_from(["fuzz", "--spawn", "x", "--backend", "y"]).is_err());
    }
}
