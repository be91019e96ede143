//! `vhu-mock-backend`: the harness's reference vhost-user back-end, a virtio-blk device on a RAM
//! disk (or, with `--device net|rng`, a virtio-net loopback port or a virtio-rng), following the back-end program conventions (spec "Backend program conventions",
//! checklist 6 and 4.21: `--socket-path`, `--fd`, `--print-capabilities`), with named fault modes
//! that each break one rule on purpose (`--fault NAME`, `--list-faults`).
//!
//! `--device fs` serves virtio-fs (FUSE 7.31) over `--shared-dir DIR` read-only, or an empty
//! root without it. `--device vsock` is a hybrid vsock (guest CID `--guest-cid`, default 3): a
//! guest connection to host port P reaches the Unix socket `<uds>_P`, and a host program
//! connecting to `<uds>` itself writes `CONNECT <port>\n` to reach the guest, where `<uds>` is
//! `--uds-path`, else `<socket-path>.vsock`.
//!
//! Layers: [`cli`] parses, `server` accepts front-ends, `session` holds one connection's
//! negotiated state and dispatches each request to one handler (`rings`, `channel`, `state`,
//! `inflight` group them by area), `memory` maps guest memory, `datapath` drains rings through
//! the `vhu-mock-device` crate (virtqueues and the virtio-blk RAM disk).
//!
//! # The SHMEM device request
//!
//! With `--shmem ID:SIZE` the back-end offers the SHMEM protocol feature. A virtio-blk request of
//! vendor type [`T_SHMEM_MAP`] (`0x8000_0001`) whose driver-readable body is 24 bytes
//! `{u8 shmid, [u8; 7] pad, u64 shm_offset, u64 len}` (native endian) makes the back-end create a
//! memfd of `len` bytes filled with `0xA5` and send BACKEND_SHMEM_MAP (read-write, fd offset 0)
//! on the back-end channel, with NEED_REPLY when REPLY_ACK is negotiated. The request completes
//! with status 0 if the front-end acked 0 (or no ack was asked for), `VIRTIO_BLK_S_IOERR`
//! otherwise. Type [`T_SHMEM_UNMAP`] (`0x8000_0002`) with the same body sends
//! BACKEND_SHMEM_UNMAP the same way. The back-end refuses locally (IOERR, nothing sent) a
//! request whose shmid is not declared, whose range is empty or leaves the region, overlaps an
//! existing mapping (map) or is not exactly one existing mapping (unmap), or when SHMEM and
//! BACKEND_REQ are not both negotiated with a back-end channel set (and, for a map, which
//! carries an fd, BACKEND_SEND_FD).

mod channel;
pub mod cli;
mod datapath;
pub mod devices;
pub mod faults;
mod inflight;
mod iotlb;
mod memory;
mod rings;
mod server;
mod session;
mod state;
mod xen;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// vhu-conform's request type: map a memfd into a shared memory region (see the crate docs).
pub use vhu_protocol::virtio::blk::T_VHU_SHMEM_MAP as T_SHMEM_MAP;
/// vhu-conform's request type: unmap a range mapped with [`T_SHMEM_MAP`].
pub use vhu_protocol::virtio::blk::T_VHU_SHMEM_UNMAP as T_SHMEM_UNMAP;

/// Why the back-end could not run (a misbehaving front-end is never one of these: the session
/// answers it or closes that connection).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Accepting a connection failed.
    #[error("accept failed")]
    Accept(#[source] std::io::Error),
    /// An option value out of range.
    #[error("invalid option: {0}")]
    BadOption(String),
    /// The socket path cannot be bound.
    #[error("cannot listen on {}", path.display())]
    Listen {
        /// The path.
        path: PathBuf,
        /// The I/O error the system reported.
        #[source]
        source: std::io::Error,
    },
    /// Neither or both of `--socket-path` and `--fd`.
    #[error("give exactly one of --socket-path PATH or --fd FDNUM")]
    NoSocket,
    /// `--fd` does not name a Unix socket.
    #[error("--fd {0} is not an open unix socket")]
    NotASocket(i32),
    /// An unknown `--fault` name, or a fault made for another `--device`.
    #[error("{0}")]
    UnknownFault(String),
    /// A `--device` the `VirtioDevice` dispatch does not build (blk has its own type).
    #[error("--device {0} is not served through the VirtioDevice dispatch")]
    UnsupportedDevice(&'static str),
    /// The device cannot start (an fs shared directory that is not one, a vsock CID or uds
    /// path that cannot be used).
    #[error("cannot start the device: {0}")]
    Device(String),
    /// The legal variation `exit-after-refusal`: a message was refused, so the process exits
    /// with status 1 (as C back-ends that `exit(1)` on a protocol error do).
    #[error("exit-after-refusal: {0}; exiting with status 1")]
    ExitAfterRefusal(String),
}

impl Error {
    /// A device that cannot start, its causes on one line.
    pub(crate) fn device(e: impl std::error::Error) -> Self {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        Self::Device(text)
    }
}

/// Parses `args` (`argv[0]` included) and runs the back-end.
pub fn run_from_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match cli::Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut line = format!("vhu-mock-backend: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                line.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the back-end the arguments describe.
///
/// # Errors
/// A bad option value, an unknown fault, or a socket that cannot be served.
pub fn run(args: &cli::Args) -> Result<(), Error> {
    if args.print_capabilities {
        println!("{}", cli::capabilities(args.device));
        return Ok(());
    }
    if args.list_faults {
        for line in faults::listing() {
            println!("{line}");
        }
        return Ok(());
    }
    args.check().map_err(Error::BadOption)?;
    let faults = faults::Faults::new(
        args.faults
            .iter()
            .map(|n| faults::parse(n))
            .collect::<Result<_, _>>()
            .map_err(Error::UnknownFault)?,
    );
    faults
        .check_device(args.device)
        .map_err(Error::UnknownFault)?;
    let mut dev = devices::build(args, &faults)?;
    let limits = session::Limits {
        // `max-ring-64`: the limit many rust-vmm back-ends have.
        queue_size_max: if faults.has(faults::Fault::MaxRing64) {
            args.queue_size_max.min(64)
        } else {
            args.queue_size_max
        },
        shmem: args.shmem.clone(),
    };
    match (&args.socket_path, args.fd) {
        (Some(path), None) => server::listen(path, &mut dev, &faults, &limits),
        (None, Some(fd)) => server::inherited(fd, &mut dev, &faults, &limits),
        _ => Err(Error::NoSocket),
    }
}
