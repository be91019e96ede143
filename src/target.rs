//! How to reach a back-end: connect to a listening socket, listen for one that connects, or spawn
//! a fresh process per scenario. Spawned processes are watched: exit code, signal, stderr tail,
//! and `/proc/<pid>` for hygiene checks. Every wait is bounded.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Where the back-end is.
#[derive(Clone, Debug)]
pub enum TargetSpec {
    /// A back-end listening on this socket.
    Connect(PathBuf),
    /// Listen on this socket for a back-end that connects.
    Listen(PathBuf),
    /// Start this command per scenario; `{socket}` is replaced by a fresh socket path and
    /// `{fs_dir}` by a fresh empty directory (the directory a file-system back-end shares).
    Spawn(String),
}

/// Host-side context that device scenarios need besides the vhost-user socket, given by the
/// user (`--fs-dir`, `--vsock-uds`) or made per spawned process (`{fs_dir}`).
#[derive(Clone, Debug, Default)]
pub struct HostContext {
    /// The directory a running fs back-end shares (`--fs-dir`).
    pub fs_dir: Option<PathBuf>,
    /// The host side of a hybrid vsock back-end (`--vsock-uds`): a path, where `{socket}` is
    /// the back-end's socket; default `{socket}.vsock`.
    pub vsock_uds: Option<String>,
    /// The host side of a console back-end's port 0 (`--console-tcp`): a TCP address
    /// (`127.0.0.1:PORT`) where what the guest writes on the port can be read.
    pub console_tcp: Option<String>,
}

/// The `{fs_dir}` placeholder of a spawn command.
pub const FS_DIR_PLACEHOLDER: &str = "{fs_dir}";

/// Why the back-end could not be reached: the back-end was never judged.
#[derive(Debug, Error)]
pub enum TargetError {
    /// Connecting failed.
    #[error("cannot connect to {path}{}", hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// A hint for the user.
        hint: Option<&'static str>,
        /// What connect said.
        #[source]
        source: std::io::Error,
    },
    /// Listening or accepting failed or timed out.
    #[error("no back-end connected to {path} within {waited:?}")]
    Accept {
        /// The socket.
        path: PathBuf,
        /// How long it waited.
        waited: Duration,
    },
    /// The program could not be started.
    #[error("cannot start `{command}`")]
    Spawn {
        /// The command.
        command: String,
        /// What the system said when starting it.
        #[source]
        source: std::io::Error,
    },
    /// The spawned program exited before its socket appeared.
    #[error(
        "`{command}` exited ({status}) before creating its socket{}",
        tail_suffix(stderr_tail)
    )]
    ExitedEarly {
        /// The command.
        command: String,
        /// How it ended.
        status: String,
        /// The end of its stderr.
        stderr_tail: String,
    },
    /// The spawned program is alive but never created its socket.
    #[error(
        "`{command}` did not create {socket} within {waited:?} (it may connect instead of listening: use --listen)"
    )]
    NoSocket {
        /// The command.
        command: String,
        /// The socket expected.
        socket: PathBuf,
        /// How long it waited.
        waited: Duration,
    },
    /// A temporary directory could not be made.
    #[error("cannot create a temporary directory")]
    TempDir(#[source] std::io::Error),
}

fn tail_suffix(t: &str) -> String {
    if t.is_empty() {
        String::new()
    } else {
        format!("; stderr: {t}")
    }
}

/// How a spawned process stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessState {
    /// Still running.
    Running,
    /// Exited with a code.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
    /// Not a spawned process (connect or listen mode).
    Unknown,
}

impl std::fmt::Display for ProcessState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Running => write!(f, "running"),
            Self::Exited(c) => write!(f, "exited with code {c}"),
            Self::Signaled(s) => {
                let name = nix::sys::signal::Signal::try_from(*s)
                    .map(|s| s.as_str())
                    .unwrap_or("?");
                write!(f, "killed by signal {s} ({name})")
            }
            Self::Unknown => write!(f, "not watched"),
        }
    }
}

/// The signals whose delivery means the back-end crashed: memory corruption or a failed
/// assertion (R-CRASH-01), as opposed to an exit with a status, which is a policy.
pub const CRASH_SIGNALS: [i32; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGABRT,
    libc::SIGILL,
    libc::SIGFPE,
];

/// How a back-end process ended, as far as a verdict goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Death {
    /// Killed by a crash signal (directly, or reported by a wrapper shell as 128 + N).
    Crash {
        /// The signal number.
        signal: i32,
        /// Whether a wrapper reported it as an exit status of 128 + signal.
        via_status: bool,
    },
    /// Exited with a status (0, 1, a Rust panic's 101...): the back-end chose to go.
    Exit(i32),
    /// Killed by another signal (SIGKILL, SIGTERM...): not the back-end's own doing.
    Killed(i32),
}

impl Death {
    /// Whether this is a crash (R-CRASH-01).
    pub fn is_crash(&self) -> bool {
        matches!(self, Self::Crash { .. })
    }
}

/// The name of a signal (`SIGSEGV`), or `signal N`.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

impl ProcessState {
    /// How the process ended, if it has.
    pub fn death(&self) -> Option<Death> {
        match *self {
            Self::Signaled(s) if CRASH_SIGNALS.contains(&s) => Some(Death::Crash {
                signal: s,
                via_status: false,
            }),
            Self::Signaled(s) => Some(Death::Killed(s)),
            // The target scripts (and any `sh -c` wrapper) report a child's signal as 128 + N.
            Self::Exited(c) if c > 128 && CRASH_SIGNALS.contains(&(c - 128)) => {
                Some(Death::Crash {
                    signal: c - 128,
                    via_status: true,
                })
            }
            Self::Exited(c) => Some(Death::Exit(c)),
            Self::Running | Self::Unknown => None,
        }
    }
}

/// One reachable back-end: for spawn mode, one process with its own socket.
#[derive(Debug)]
pub struct Instance {
    spec: TargetSpec,
    socket: PathBuf,
    listener: Option<UnixListener>,
    child: Option<Child>,
    stderr: Option<File>,
    _dir: Option<tempfile::TempDir>,
    connect_timeout: Duration,
    /// Whether a connection was made before (for the "stopped listening" hint).
    connected_before: bool,
    /// The fresh directory substituted for `{fs_dir}` (spawn mode).
    fs_dir: Option<PathBuf>,
}

/// How `sh -c` runs `command` in its own place: `exec`, or `exec env` when the command starts
/// with `NAME=value` assignments (`exec VAR=value cmd` is not valid sh).
pub(crate) fn exec_prefix(command: &str) -> &'static str {
    if starts_with_assignment(command) {
        "exec env"
    } else {
        "exec"
    }
}

/// `command` with `{fs_dir}` replaced by a fresh empty directory that outlives this call (for
/// the one-off processes built-in scenarios start from the spawn command).
///
/// # Errors
/// The directory cannot be made.
pub(crate) fn with_fresh_fs_dir(command: &str) -> std::io::Result<String> {
    if !command.contains(FS_DIR_PLACEHOLDER) {
        return Ok(command.to_string());
    }
    let dir = tempfile::Builder::new().prefix("vhu-fs-").tempdir()?.keep();
    Ok(command.replace(FS_DIR_PLACEHOLDER, &shell_quote(&dir)))
}

/// Whether a shell command begins with a `NAME=value` word.
fn starts_with_assignment(command: &str) -> bool {
    let word = command.split_whitespace().next().unwrap_or("");
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

impl Instance {
    /// Prepares the target: spawns the process (spawn mode) or binds the socket (listen mode).
    pub fn start(spec: &TargetSpec, connect_timeout: Duration) -> Result<Self, TargetError> {
        let mut inst = Self {
            spec: spec.clone(),
            socket: PathBuf::new(),
            listener: None,
            child: None,
            stderr: None,
            _dir: None,
            connect_timeout,
            connected_before: false,
            fs_dir: None,
        };
        match spec {
            TargetSpec::Connect(p) => inst.socket = p.clone(),
            TargetSpec::Listen(p) => {
                let _ = std::fs::remove_file(p);
                let l = UnixListener::bind(p).map_err(|source| TargetError::Connect {
                    path: p.clone(),
                    hint: None,
                    source,
                })?;
                l.set_nonblocking(true)
                    .map_err(|source| TargetError::Connect {
                        path: p.clone(),
                        hint: None,
                        source,
                    })?;
                inst.socket = p.clone();
                inst.listener = Some(l);
            }
            TargetSpec::Spawn(cmd) => inst.spawn(cmd)?,
        }
        Ok(inst)
    }

    fn spawn(&mut self, template: &str) -> Result<(), TargetError> {
        let dir = tempfile::Builder::new()
            .prefix("vhu-")
            .tempdir()
            .map_err(TargetError::TempDir)?;
        self.socket = dir.path().join("backend.sock");
        let mut command = template.replace("{socket}", &shell_quote(&self.socket));
        if command.contains(FS_DIR_PLACEHOLDER) {
            let share = dir.path().join("fs-share");
            std::fs::create_dir(&share).map_err(TargetError::TempDir)?;
            command = command.replace(FS_DIR_PLACEHOLDER, &shell_quote(&share));
            self.fs_dir = Some(share);
        }
        let exec = exec_prefix(&command);
        let err_path = dir.path().join("stderr");
        let err_file = File::create(&err_path).map_err(TargetError::TempDir)?;
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("{exec} {command}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file)
            .process_group(0)
            .spawn()
            .map_err(|source| TargetError::Spawn {
                command: command.clone(),
                source,
            })?;
        self.child = Some(child);
        self.stderr = File::open(&err_path).ok();
        self._dir = Some(dir);
        let deadline = Instant::now() + self.connect_timeout;
        while !self.socket.exists() {
            if let ProcessState::Exited(_) | ProcessState::Signaled(_) = self.state() {
                let mut status = self.state().to_string();
                if self.state() == ProcessState::Exited(0) {
                    // Exit 0 before listening is what a back-end that daemonizes does.
                    status.push_str(
                        "; a back-end must serve from the process started, not daemonize (R-PROG-06): run it in the foreground",
                    );
                }
                return Err(TargetError::ExitedEarly {
                    command,
                    status,
                    stderr_tail: self.stderr_tail(400),
                });
            }
            if Instant::now() >= deadline {
                return Err(TargetError::NoSocket {
                    command,
                    socket: self.socket.clone(),
                    waited: self.connect_timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The vhost-user socket path.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The directory made for `{fs_dir}` (spawn mode, when the command has the placeholder).
    pub fn fs_dir(&self) -> Option<&Path> {
        self.fs_dir.as_deref()
    }

    /// How this back-end is reached.
    pub fn spec(&self) -> &TargetSpec {
        &self.spec
    }

    /// A new connection to the back-end.
    pub fn connect(&mut self) -> Result<UnixStream, TargetError> {
        if let Some(l) = &self.listener {
            let deadline = Instant::now() + self.connect_timeout;
            loop {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        return Ok(s);
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => {
                        return Err(TargetError::Accept {
                            path: self.socket.clone(),
                            waited: self.connect_timeout,
                        });
                    }
                }
            }
        }
        let deadline = Instant::now() + self.connect_timeout.min(Duration::from_secs(2));
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(s) => {
                    self.connected_before = true;
                    return Ok(s);
                }
                Err(source)
                    if Instant::now() >= deadline
                        || self.state() != ProcessState::Running && self.child.is_some() =>
                {
                    let hint = match (&self.spec, self.connected_before) {
                        (TargetSpec::Connect(_), true) => Some(
                            "the back-end stopped listening after a front-end disconnected; use --spawn",
                        ),
                        (TargetSpec::Connect(_), false) => {
                            Some("is the back-end running and listening there? or use --spawn")
                        }
                        _ => None,
                    };
                    return Err(TargetError::Connect {
                        path: self.socket.clone(),
                        hint,
                        source,
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// The process's state (spawn mode).
    pub fn state(&mut self) -> ProcessState {
        let Some(child) = &mut self.child else {
            return ProcessState::Unknown;
        };
        match child.try_wait() {
            Ok(None) => ProcessState::Running,
            Ok(Some(st)) => st.code().map_or_else(
                || ProcessState::Signaled(st.signal().unwrap_or(0)),
                ProcessState::Exited,
            ),
            Err(_) => ProcessState::Unknown,
        }
    }

    /// Waits up to `within` for the process to leave the running state.
    pub fn wait_exit(&mut self, within: Duration) -> ProcessState {
        let deadline = Instant::now() + within;
        loop {
            let st = self.state();
            if st != ProcessState::Running || Instant::now() >= deadline {
                return st;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process id (spawn mode).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether each scenario gets its own process.
    pub fn is_spawned(&self) -> bool {
        self.child.is_some()
    }

    /// The last `max` bytes of the process's stderr, on one line.
    pub fn stderr_tail(&mut self, max: u64) -> String {
        let Some(f) = &mut self.stderr else {
            return String::new();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        s.trim().replace('\n', " | ")
    }

    /// Number of open fds of the process (`/proc/<pid>/fd`).
    pub fn fd_count(&self) -> Option<usize> {
        Some(
            std::fs::read_dir(format!("/proc/{}/fd", self.pid()?))
                .ok()?
                .count(),
        )
    }

    /// Mappings of the file with inode `ino` in the process (`/proc/<pid>/maps`): how many
    /// lines name it. A memfd the back-end still maps shows up here even after it closed the fd.
    pub fn maps_of_inode(&self, ino: u64) -> Option<usize> {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid()?)).ok()?;
        Some(
            maps.lines()
                .filter(|l| l.split_whitespace().nth(4) == Some(&ino.to_string()))
                .count(),
        )
    }

    /// Open fds of the process that refer to the file with inode `ino` (`/proc/<pid>/fd`).
    pub fn fds_of_inode(&self, ino: u64) -> Option<usize> {
        use std::os::unix::fs::MetadataExt;
        let dir = std::fs::read_dir(format!("/proc/{}/fd", self.pid()?)).ok()?;
        Some(
            dir.filter_map(Result::ok)
                .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == ino))
                .count(),
        )
    }

    /// Number of mappings of the process (`/proc/<pid>/maps`).
    pub fn map_count(&self) -> Option<usize> {
        Some(
            std::fs::read_to_string(format!("/proc/{}/maps", self.pid()?))
                .ok()?
                .lines()
                .count(),
        )
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            if let Ok(None) = child.try_wait() {
                // SIGTERM the whole group (the back-end may sit behind a wrapper script), then
                // SIGKILL after a grace period (checklist 6.1).
                let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
                let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
            } else {
                // The process started has ended, but what it left in its group (a daemonized
                // back-end, a wrapper's child) must not outlive the run.
                let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
                let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.wait();
        }
        if matches!(self.spec, TargetSpec::Listen(_)) {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_signals_and_wrapper_statuses_are_crashes_and_exits_are_not() {
        let crash = |s| {
            Some(Death::Crash {
                signal: s,
                via_status: false,
            })
        };
        assert_eq!(
            ProcessState::Signaled(libc::SIGSEGV).death(),
            crash(libc::SIGSEGV)
        );
        assert_eq!(
            ProcessState::Signaled(libc::SIGABRT).death(),
            crash(libc::SIGABRT)
        );
        // A wrapper shell reports its child's SIGSEGV as 139.
        assert_eq!(
            ProcessState::Exited(128 + libc::SIGSEGV).death(),
            Some(Death::Crash {
                signal: libc::SIGSEGV,
                via_status: true
            })
        );
        // Exits are the back-end's choice: 1, a Rust panic's 101, a SIGTERM'd wrapper's 143.
        for code in [0, 1, 101, 128 + libc::SIGTERM] {
            assert_eq!(ProcessState::Exited(code).death(), Some(Death::Exit(code)));
        }
        assert_eq!(
            ProcessState::Signaled(libc::SIGKILL).death(),
            Some(Death::Killed(libc::SIGKILL))
        );
        assert_eq!(ProcessState::Running.death(), None);
        assert_eq!(ProcessState::Unknown.death(), None);
        assert_eq!(signal_name(libc::SIGSEGV), "SIGSEGV");
    }

    #[test]
    fn leading_assignments_are_told_from_commands() {
        assert!(starts_with_assignment("VHU_FS_DIR='/x' ./virtiofsd.sh s"));
        assert!(!starts_with_assignment("./virtiofsd.sh --opt=1"));
        assert!(!starts_with_assignment("=x cmd"));
        assert!(!starts_with_assignment("1A=x cmd"));
    }

    #[test]
    fn fs_dir_placeholder_is_a_fresh_empty_directory_passed_to_the_command() {
        // The spawned command lists the directory it was given into its own socket path's
        // sibling, proving the substitution and the env(1) route for assignments.
        let spec = TargetSpec::Spawn(
            "D={fs_dir} sh -c 'test -d \"$D\" && test -z \"$(ls -A \"$D\")\" && touch \"$0\" && sleep 5' {socket}"
                .into(),
        );
        let inst = Instance::start(&spec, Duration::from_secs(5)).expect("starts");
        let dir = inst.fs_dir().expect("a directory was made").to_path_buf();
        assert!(dir.is_dir());
        assert!(inst.socket_path().exists());
    }
}
