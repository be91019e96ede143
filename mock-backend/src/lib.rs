//! `vhu-mock-backend`: the harness's reference vhost-user back-end, a virtio-blk device on a RAM
//! disk, following the back-end program conventions (spec "Backend program conventions":
//! `--socket-path`, `--fd`, `--print-capabilities`), with named fault modes that each break one
//! rule on purpose (`--fault NAME`, `--list-faults`).

mod device;
pub mod faults;
mod memory;
mod session;

use std::ffi::OsString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vhu_protocol::Connection;

/// Command line of the mock back-end.
#[derive(Debug, Parser)]
#[command(
    name = "vhu-mock-backend",
    about = "Reference vhost-user-blk back-end of vhu-conform, with fault modes"
)]
pub struct Args {
    /// Listen on this Unix socket; keep serving front-ends one after another.
    #[arg(long, value_name = "PATH", conflicts_with = "fd")]
    pub socket_path: Option<PathBuf>,
    /// Serve the already-connected socket inherited as this fd, then exit.
    #[arg(long, value_name = "FDNUM")]
    pub fd: Option<i32>,
    /// Print the capabilities as JSON and exit.
    #[arg(long)]
    pub print_capabilities: bool,
    /// Number of queues.
    #[arg(long, default_value_t = 2)]
    pub queues: u16,
    /// RAM disk size in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub capacity: u64,
    /// Declare a shared memory region (repeatable): `ID:SIZE`, SIZE a multiple of 4096 (hex
    /// with 0x allowed). Offers the SHMEM protocol feature and answers GET_SHMEM_CONFIG.
    #[arg(long = "shmem", value_name = "ID:SIZE", value_parser = parse_shmem)]
    pub shmem: Vec<(u8, u64)>,
    /// Break one rule on purpose (repeatable); see --list-faults.
    #[arg(long = "fault", value_name = "NAME")]
    pub faults: Vec<String>,
    /// List the fault modes with the rule each breaks.
    #[arg(long)]
    pub list_faults: bool,
}

fn parse_shmem(s: &str) -> Result<(u8, u64), String> {
    let (id, size) = s.split_once(':').ok_or("expected ID:SIZE")?;
    let id: u8 = id.parse().map_err(|e| format!("shmem id: {e}"))?;
    let size = match size.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => size.parse(),
    }
    .map_err(|e| format!("shmem size: {e}"))?;
    if size == 0 || size % 4096 != 0 {
        return Err("shmem size must be a non-zero multiple of 4096 (R-SHM-03)".into());
    }
    Ok((id, size))
}

/// Parses `args` (argv[0] included) and runs the back-end.
pub fn run_from_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vhu-mock-backend: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    if args.print_capabilities {
        println!(r#"{{"type":"block","features":[]}}"#);
        return Ok(());
    }
    if args.list_faults {
        for (_, name, rule, what) in faults::ALL {
            println!("{name:<24} {rule:<11} {what}");
        }
        return Ok(());
    }
    let faults = faults::Faults::new(
        args.faults
            .iter()
            .map(|n| faults::parse(n))
            .collect::<Result<_, _>>()?,
    );
    if args.queues == 0 || args.queues > 64 {
        return Err("--queues must be 1 to 64".into());
    }
    let mut dev = device::Blk::new(args.capacity, args.queues);
    dev.shmem = args.shmem.clone();
    match (&args.socket_path, args.fd) {
        (Some(path), None) => {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path)
                .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
            for stream in listener.incoming() {
                let stream = stream.map_err(|e| format!("accept failed: {e}"))?;
                let mut s = session::Session::new(
                    Connection::new(stream, Some(std::time::Duration::from_secs(5))),
                    &mut dev,
                    &faults,
                );
                s.serve();
                if s.exit_after() {
                    return Ok(());
                }
            }
            Ok(())
        }
        (None, Some(fd)) => {
            // SAFETY: the convention hands this process an open, connected socket as `fd`,
            // owned by nobody else here.
            let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
            session::Session::new(
                Connection::new(stream, Some(std::time::Duration::from_secs(5))),
                &mut dev,
                &faults,
            )
            .serve();
            Ok(())
        }
        _ => Err("give exactly one of --socket-path PATH or --fd FDNUM".into()),
    }
}
