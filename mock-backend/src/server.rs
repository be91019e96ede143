//! Serving front-ends (spec "Backend program conventions", R-PROG-01/02/07, R-ROB-09): listen on
//! `--socket-path` and serve one front-end at a time, keeping on after each disconnects, or serve
//! the socket inherited with `--fd`. SIGTERM removes the socket file and exits 0 at once.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use vhu_protocol::Connection;

use crate::Error;
use crate::devices::Device;
use crate::faults::Faults;
use crate::session::{Limits, Session, Stop};

/// How long one read or write on the main socket may take once a message has begun; an idle
/// front-end is never timed out (the poll loop waits), a stalled half-message is.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket file to remove on SIGTERM.
static SOCKET_PATH: OnceLock<CString> = OnceLock::new();

extern "C" fn on_sigterm(_: libc::c_int) {
    if let Some(path) = SOCKET_PATH.get() {
        // SAFETY: unlink is async-signal-safe and `path` is a valid C string that lives forever.
        unsafe { libc::unlink(path.as_ptr()) };
    }
    // SAFETY: _exit is async-signal-safe; nothing needs flushing.
    unsafe { libc::_exit(0) };
}

fn install_sigterm(path: Option<&Path>) {
    if let Some(c) = path.and_then(|p| CString::new(p.as_os_str().as_bytes()).ok()) {
        let _ = SOCKET_PATH.set(c);
    }
    let action = SigAction::new(
        SigHandler::Handler(on_sigterm),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only calls async-signal-safe functions.
    let _ = unsafe { sigaction(Signal::SIGTERM, &action) };
}

/// Listens on `path` and serves front-ends one after another until a fault mode ends it.
///
/// # Errors
/// The socket cannot be bound, accepting fails, or a refusal ended it under
/// `exit-after-refusal`.
pub fn listen(
    path: &Path,
    dev: &mut Device,
    faults: &Faults,
    limits: &Limits,
) -> Result<(), Error> {
    let _ = std::fs::remove_file(path);
    let listener = match UnixListener::bind(path) {
        Ok(l) => l,
        Err(e) if faults.has(crate::faults::Fault::KeepRunningWithoutSocket) => {
            // `keep-running-without-socket`: the error is reported, the process lingers.
            eprintln!("vhu-mock-backend: cannot listen on {}: {e}", path.display());
            install_sigterm(None);
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        Err(source) => {
            return Err(Error::Listen {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    install_sigterm(Some(path));
    let mut result = Ok(());
    for stream in listener.incoming() {
        let stream = stream.map_err(Error::Accept)?;
        if let Some(stop) = serve(stream, dev, faults, limits) {
            result = stop;
            break;
        }
    }
    let _ = std::fs::remove_file(path);
    result
}

/// Serves the connected socket inherited as `fd` until the front-end leaves.
///
/// # Errors
/// `fd` is not an open socket, or a refusal ended it under `exit-after-refusal`.
pub fn inherited(fd: i32, dev: &mut Device, faults: &Faults, limits: &Limits) -> Result<(), Error> {
    if nix::sys::socket::getsockname::<nix::sys::socket::UnixAddr>(fd).is_err() {
        return Err(Error::NotASocket(fd));
    }
    install_sigterm(None);
    // SAFETY: the convention hands this process an open, connected socket as `fd` (checked just
    // above to be a Unix socket), owned by nobody else here.
    let stream = UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    serve(stream, dev, faults, limits).unwrap_or(Ok(()))
}

/// Serves one front-end; `Some` when the process must stop listening (fault modes), with how
/// it ends: `Ok` exits 0 (`exit-on-disconnect`), an error exits 1 (`exit-after-refusal`).
fn serve(
    stream: UnixStream,
    dev: &mut Device,
    faults: &Faults,
    limits: &Limits,
) -> Option<Result<(), Error>> {
    let conn = Connection::new(stream, Some(IO_TIMEOUT));
    let mut session = Session::new(conn, dev, faults, limits);
    session.serve();
    // The connection closes before the process goes: the front-end sees the nack, then EOF.
    let stop = session.stop();
    drop(session);
    stop.map(|s| match s {
        Stop::Disconnected => Ok(()),
        Stop::Refused(what) => Err(Error::ExitAfterRefusal(what)),
    })
}
