//! `vhu-conform mock-frontend --socket-path PATH --device blk [--fault NAME]`: a small front-end
//! built on the mock-frontend crate, to prove every front-end check. Honest, it does a normal
//! session (negotiate, memory table, ring 0, a few blk requests, stop the ring) and exits 0; it
//! gives up with status 1 when the back-end refuses something or goes away. Each fault mode
//! breaks exactly one front-end rule, which a front-end scenario must catch.
//!
//! The command line and its entry point live here; the faults are in `fault`, the faulty
//! back-end channel in `channel`, the session's connection in `connection` and its migration
//! steps in `state`.

mod channel;
mod connection;
mod fault;
mod state;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vhu_mock_frontend::SessionError;
use vhu_protocol::{FrontendReq, Header, RawMessage};

use crate::device::DeviceType;

use connection::session;
pub use fault::FeFault;

/// The mock front-end's command line.
#[derive(Debug, Parser)]
#[command(
    name = "vhu-conform mock-frontend",
    about = "A mock vhost-user front-end with fault modes"
)]
pub struct MockArgs {
    /// The back-end's socket.
    #[arg(long)]
    pub socket_path: PathBuf,
    /// The device type (blk gets requests; the others ring setup only).
    #[arg(long, default_value = "blk")]
    pub device: String,
    /// A fault mode.
    #[arg(long, value_enum)]
    pub fault: Option<FeFault>,
}

/// `vhu-conform mock-frontend ARGS`.
pub fn run_from_args(argv: Vec<OsString>) -> ExitCode {
    let rest = std::iter::once(OsString::from("vhu-conform mock-frontend"))
        .chain(argv.into_iter().skip(2));
    let a = match MockArgs::try_parse_from(rest) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let device = match DeviceType::parse(&a.device) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match session(&a, device) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if a.fault == Some(FeFault::AbortOnDisconnect) && e.is_backend_fault() {
                std::process::abort();
            }
            eprintln!("vhu-conform mock-frontend: {e}");
            ExitCode::from(1)
        }
    }
}

fn gave_up(what: &str, value: u64) -> SessionError {
    SessionError::Local {
        what: format!("the back-end refused {what} ({value}): giving up"),
        source: std::io::Error::other("refused"),
    }
}

fn raw(code: FrontendReq, flags: u32, payload: Vec<u8>) -> RawMessage {
    let header = Header {
        request: code as u32,
        flags,
        size: payload.len() as u32,
    };
    RawMessage::new(header, payload)
}
