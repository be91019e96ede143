//! `vhu-conform fuzz` and `vhu-conform replay`: property-based malformed input (proptest
//! strategies over every front-end message and over descriptor chains), an oracle after each
//! case, failures shrunk by proptest and saved as scenario files that replay reruns.
//!
//! Layers: [`case`] (the data), [`strategy`] (generating it), [`exec`] (sending it), [`oracle`]
//! (judging what follows), [`save`] (reproducer files), [`progress`], [`runner`] (the proptest
//! loop), [`replay`], and [`cli`] (the two subcommands' options).

pub mod case;
pub mod cli;
pub mod exec;
pub mod oracle;
pub mod progress;
pub mod replay;
pub mod runner;
pub mod save;
pub mod strategy;

use std::path::PathBuf;

use thiserror::Error;

pub use cli::run_from_args;

/// Why a fuzz run or a replay could not judge the back-end.
#[derive(Debug, Error)]
pub enum FuzzError {
    /// The harness itself failed (a local resource, a bug): not the back-end's fault.
    #[error("harness error: {0}")]
    Harness(String),
    /// A file could not be read or written.
    #[error("cannot access {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error the system reported.
        #[source]
        source: std::io::Error,
    },
    /// The back-end could not be started or reached, or fails a clean session.
    #[error("setup: {0}")]
    Setup(String),
    /// The command line or a reproducer file is wrong.
    #[error("{0}")]
    Usage(String),
}

impl FuzzError {
    /// The documented exit code for this error.
    pub fn exit_code(&self) -> u8 {
        use crate::exit_code::*;
        match self {
            Self::Harness(_) => HARNESS_ERROR,
            Self::Io { .. } | Self::Usage(_) => USAGE,
            Self::Setup(_) => SETUP,
        }
    }
}
