//! Judging front-ends (issue 16): `vhu-conform frontend --exec 'CMD {socket}' --device blk`.
//!
//! vhu-conform listens on a socket, starts the front-end (or waits for one, `--listen`), and
//! plays a strict judging back-end ([`backend`], written on `vhu-protocol` alone) while a
//! [`judge::Judge`] checks every message against the front-end rules. Each scenario
//! ([`scenarios`]) is one front-end process; the results go through the same reporters,
//! expectations and exit codes as the back-end side.
//!
//! Here: the errors, the front-end target and the run's options. The scenario run is in `run`,
//! the front-end process in `process`, the rule coverage in `coverage` and the command line in
//! `cli`.

pub mod backend;
pub mod judge;
pub mod memory;
pub mod mock;
pub mod scenarios;

mod cli;
mod coverage;
mod process;
mod run;

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;
use vhu_protocol::wire::payload::MemRegion;

use crate::device::DeviceType;

pub use cli::{FeArgs, run_from_args};
pub use coverage::coverage;
pub use run::run_scenario;

/// Errors of the front-end side.
#[derive(Debug, Error)]
pub enum FrontendError {
    /// A memory region could not be mapped.
    #[error("cannot map region {region:x?}: {why}")]
    Map {
        /// The region.
        region: MemRegion,
        /// What mmap said.
        why: String,
    },
    /// A local resource failed (socket, temp dir, spawn).
    #[error("{what}: {source}")]
    Local {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Where the front-end comes from.
#[derive(Clone, Debug)]
pub enum FeTarget {
    /// A command with `{socket}`, run once per scenario.
    Exec(String),
    /// A path to listen on; the front-end connects by itself.
    Listen(PathBuf),
}

/// How a front-end run goes.
#[derive(Clone, Debug)]
pub struct FeOptions {
    /// The front-end.
    pub target: FeTarget,
    /// The device the judging back-end plays.
    pub device: DeviceType,
    /// How long one scenario may last before the front-end is ended.
    pub scenario_timeout: Duration,
    /// How long to wait for the front-end to connect.
    pub connect_timeout: Duration,
    /// Warnings fail.
    pub strict: bool,
}
