//! The back-end program conventions (spec "Backend program conventions", checklist 4.21 and
//! section 6): `--print-capabilities`, `--fd`, `--socket-path` with `--fd`, SIGTERM. They need
//! the `--spawn` command, and one that passes the socket as `--socket-path {socket}`: the other
//! invocations are derived from it by replacing that option.

use crate::rules::id;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{Builtin, BuiltinMeta, clean_session};
use crate::engine::{Ctx, StepError};

/// How long a program may take to print its capabilities, refuse options, or exit on SIGTERM.
const PROGRAM_WITHIN: Duration = Duration::from_secs(5);

/// How long a program that answered is watched for exiting while its socket still serves (a
/// daemonizing parent).
const DAEMON_WITHIN: Duration = Duration::from_millis(300);

/// The fd number the inherited socket gets in `--fd` probes.
const INHERITED_FD: i32 = 3;

/// The types `--print-capabilities` may report (`VHostUserBackendType`).
const TYPES: &[&str] = &[
    "9p",
    "balloon",
    "block",
    "caif",
    "console",
    "crypto",
    "gpu",
    "input",
    "net",
    "rng",
    "rpmsg",
    "rproc-serial",
    "scsi",
    "vsock",
    "fs",
];

/// `template` with its `--socket-path {socket}` option replaced by `with`, if it has one.
pub(crate) fn replace_socket_option(template: &str, with: &str) -> Option<String> {
    [
        "--socket-path {socket}",
        "--socket-path={socket}",
        "--socket-path '{socket}'",
        "--socket-path=\"{socket}\"",
    ]
    .into_iter()
    .find(|form| template.contains(form))
    .map(|form| template.replacen(form, with, 1))
}

/// The spawn command with its `--socket-path {socket}` option replaced by `with`, or why the
/// scenario does not apply.
fn derive(ctx: &Ctx<'_>, with: &str) -> Result<String, StepError> {
    let Some(template) = ctx.spawn_command() else {
        return Err(StepError::NotApplicable(
            "needs the back-end's command line (--spawn)".into(),
        ));
    };
    replace_socket_option(template, with).ok_or_else(|| {
        StepError::NotApplicable(
            "the --spawn command does not pass the socket as `--socket-path {socket}`, so the \
             program conventions cannot be exercised through it"
                .into(),
        )
    })
}

/// `command` run by `/bin/sh` in its own process group, stdin on /dev/null; a `{fs_dir}` in it
/// gets its own directory, as for spawned back-ends.
fn shell(command: &str) -> Result<Command, StepError> {
    let command = &crate::target::with_fresh_fs_dir(command)
        .map_err(|e| StepError::Harness(format!("cannot make a directory for {{fs_dir}}: {e}")))?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("{} {command}", crate::target::exec_prefix(command)))
        .stdin(Stdio::null())
        .process_group(0);
    Ok(cmd)
}

/// Starts `command` in its own process group with stdin and stdout as given, stderr captured,
/// and `inherit` (if any) as fd 3.
pub(crate) fn start(command: &str, inherit: Option<&OwnedFd>) -> Result<Child, StepError> {
    let mut cmd = shell(command)?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(fd) = inherit {
        let raw = fd.as_raw_fd();
        // SAFETY: dup2 is async-signal-safe; it only touches this child's fd table, and the
        // duplicate (unlike the original) has no close-on-exec flag.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, INHERITED_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.spawn()
        .map_err(|e| StepError::Harness(format!("cannot run {command}: {e}")))
}

/// Waits up to `within` for the child; `None` if it is still running.
pub(crate) fn wait(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Ends the child's whole process group.
pub(crate) fn stop(child: &mut Child) {
    let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
    let _ = nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
}

pub(crate) fn output(child: &mut Child) -> (String, String) {
    let mut out = String::new();
    let mut err = String::new();
    if let Some(o) = child.stdout.as_mut() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(e) = child.stderr.as_mut() {
        let _ = e.read_to_string(&mut err);
    }
    (out, err.trim().replace('\n', " | "))
}

/// `--print-capabilities` prints one JSON object with a known `type` and exits 0 without
/// creating its socket (R-PROG-04, R-PROG-05).
#[derive(Debug)]
pub struct PrintCapabilities;

/// What [`PrintCapabilities`] declares.
const PRINT_CAPABILITIES_META: BuiltinMeta = BuiltinMeta {
    id: "program/print-capabilities",
    title: "--print-capabilities prints one JSON object with a known type, exits 0, creates no socket",
    rules: &[id::R_PROG_04, id::R_PROG_05],
    description: "Spawn mode with `--socket-path {socket}` in the command. The program is run with that \
option pointing at a fresh path plus --print-capabilities: it must print exactly one JSON object \
whose `type` is one of VHostUserBackendType, exit 0 within 5 s, and not create the socket.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for PrintCapabilities {
    fn meta(&self) -> &'static BuiltinMeta {
        &PRINT_CAPABILITIES_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let dir = tempfile::tempdir().map_err(|e| StepError::Harness(e.to_string()))?;
        let bogus = dir.path().join("must-not-appear.sock");
        let command = derive(
            ctx,
            &format!("--socket-path '{}' --print-capabilities", bogus.display()),
        )?;
        let mut child = start(&command, None)?;
        let Some(status) = wait(&mut child, PROGRAM_WITHIN) else {
            stop(&mut child);
            return Err(ctx.fail(
                id::R_PROG_04,
                "--print-capabilities did not exit",
                "print the capabilities and exit 0 at once",
                format!("still running after {PROGRAM_WITHIN:?}: {command}"),
            ));
        };
        let (out, err) = output(&mut child);
        let mut problems = Vec::new();
        if !status.success() {
            problems.push(format!("exit status {status}"));
        }
        if bogus.exists() {
            problems.push("the socket given with --socket-path was created".to_string());
        }
        let parsed = serde_json::Deserializer::from_str(&out)
            .into_iter::<serde_json::Value>()
            .collect::<Result<Vec<_>, _>>();
        let kind = match parsed.as_deref() {
            Ok([serde_json::Value::Object(o)]) => {
                o.get("type").and_then(|t| t.as_str()).map(str::to_string)
            }
            Ok(v) => {
                problems.push(format!(
                    "stdout holds {} JSON values, not one object",
                    v.len()
                ));
                None
            }
            Err(e) => {
                problems.push(format!("stdout is not JSON: {e}"));
                None
            }
        };
        if !problems.is_empty() {
            return Err(ctx.fail(
                id::R_PROG_04,
                &format!("--print-capabilities: {}", problems.join("; ")),
                "one JSON object on stdout, exit 0, no socket created",
                format!("stdout {out:?}; stderr {err:?}; {command}"),
            ));
        }
        match kind {
            Some(t) if TYPES.contains(&t.as_str()) => Ok(()),
            // A virtio device type the list has no entry for (scmi, gpio, i2c, sound...): the
            // program cannot name its type there; the list, not the program, is wanting.
            Some(t) if crate::device::DeviceType::parse(&t).is_ok() => {
                ctx.note(format!(
                    "--print-capabilities: type {t:?} is a virtio device type VHostUserBackendType has no entry for; R-PROG-05 not judged"
                ));
                Ok(())
            }
            other => Err(ctx.fail(
                id::R_PROG_05,
                "the capabilities' `type` is missing or not a VHostUserBackendType",
                &format!("one of {}", TYPES.join(", ")),
                format!("type {other:?} in {}", out.trim()),
            )),
        }
    }
}

/// `--fd N` serves the inherited, already connected socket (R-PROG-02).
#[derive(Debug)]
pub struct InheritedFd;

/// What [`InheritedFd`] declares.
const INHERITED_FD_META: BuiltinMeta = BuiltinMeta {
    id: "program/inherited-fd",
    title: "--fd 3 serves the inherited connected socket",
    rules: &[id::R_PROG_02],
    description: "Spawn mode with `--socket-path {socket}` in the command. The program is run with \
`--fd 3` instead, fd 3 being one end of a socketpair; on the other end a GET_FEATURES (and, \
with bit 30, GET_PROTOCOL_FEATURES) must be answered.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for InheritedFd {
    fn meta(&self) -> &'static BuiltinMeta {
        &INHERITED_FD_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let command = derive(ctx, &format!("--fd {INHERITED_FD}"))?;
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| StepError::Harness(format!("socketpair: {e}")))?;
        let theirs = OwnedFd::from(theirs);
        let mut child = start(&command, Some(&theirs))?;
        drop(theirs);
        let timeout = ctx.step_timeout().max(Duration::from_secs(2));
        let mut s = crate::engine::session::open(ours, timeout);
        let r = s.get_features();
        let exited = child.try_wait().ok().flatten();
        stop(&mut child);
        let (_, err) = output(&mut child);
        match r {
            Ok(_) => Ok(()),
            Err(e) => Err(ctx.fail(
                id::R_PROG_02,
                "no answer on the socket inherited with --fd",
                "GET_FEATURES answered on the inherited socket",
                format!("{e}; process {exited:?}; stderr {err:?}; {command}"),
            )),
        }
    }
}

/// `--socket-path` together with `--fd` is refused with a non-zero exit (R-PROG-03).
#[derive(Debug)]
pub struct SocketPathAndFd;

/// What [`SocketPathAndFd`] declares.
const SOCKET_PATH_AND_FD_META: BuiltinMeta = BuiltinMeta {
    id: "program/socket-path-and-fd",
    title: "--socket-path together with --fd is refused: the program exits non-zero",
    rules: &[id::R_PROG_03],
    description: "Spawn mode with `--socket-path {socket}` in the command. The program is run with both \
options (fd 3 a connected socket): the two are incompatible, so it must exit with a non-zero \
status within 5 s.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for SocketPathAndFd {
    fn meta(&self) -> &'static BuiltinMeta {
        &SOCKET_PATH_AND_FD_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let dir = tempfile::tempdir().map_err(|e| StepError::Harness(e.to_string()))?;
        let path = dir.path().join("both.sock");
        let command = derive(
            ctx,
            &format!("--socket-path '{}' --fd {INHERITED_FD}", path.display()),
        )?;
        let (_ours, theirs) =
            UnixStream::pair().map_err(|e| StepError::Harness(format!("socketpair: {e}")))?;
        let theirs = OwnedFd::from(theirs);
        let mut child = start(&command, Some(&theirs))?;
        drop(theirs);
        let status = wait(&mut child, PROGRAM_WITHIN);
        if status.is_none() {
            stop(&mut child);
        }
        let (_, err) = output(&mut child);
        match status {
            Some(st) if !st.success() && st.signal().is_none() => Ok(()),
            other => Err(ctx.fail(
                id::R_PROG_03,
                "--socket-path with --fd was not refused",
                "exit with a non-zero status",
                format!(
                    "{}; stderr {err:?}; {command}",
                    other.map_or_else(
                        || format!("still running after {PROGRAM_WITHIN:?}"),
                        |s| format!("status {s}")
                    )
                ),
            )),
        }
    }
}

/// SIGTERM ends the back-end promptly (R-PROG-07).
#[derive(Debug)]
pub struct Sigterm;

/// What [`Sigterm`] declares.
const SIGTERM_META: BuiltinMeta = BuiltinMeta {
    id: "program/sigterm",
    title: "SIGTERM during a session ends the back-end within 5 s, without a crash",
    rules: &[id::R_PROG_07],
    description: "Spawn mode. With a session running (memory, queue 0), the back-end's process group gets \
SIGTERM; it must be gone within 5 s, by exiting or by the signal, not by a crash signal.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for Sigterm {
    fn meta(&self) -> &'static BuiltinMeta {
        &SIGTERM_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        if !ctx.target().is_spawned() {
            return Err(StepError::NotApplicable(
                "needs a back-end started by the harness (--spawn)".into(),
            ));
        }
        clean_session(ctx, true)?;
        let Some(pid) = ctx.target().pid() else {
            return Err(StepError::NotApplicable("no process id".into()));
        };
        ctx.expect_exit();
        let pgid = nix::unistd::Pid::from_raw(-(pid as i32));
        nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM)
            .map_err(|e| StepError::Harness(format!("kill: {e}")))?;
        let st = ctx.target().wait_exit(PROGRAM_WITHIN);
        use crate::target::ProcessState;
        match st {
            ProcessState::Exited(_) => Ok(()),
            ProcessState::Signaled(sig) if sig == libc::SIGTERM => Ok(()),
            other => {
                let tail = ctx.target().stderr_tail(400);
                Err(ctx.fail(
                    id::R_PROG_07,
                    "the back-end did not end cleanly on SIGTERM",
                    "exit within 5 s (by exiting or by SIGTERM itself)",
                    format!("process {other} after {PROGRAM_WITHIN:?}; stderr {tail:?}"),
                ))
            }
        }
    }
}

/// `--socket-path PATH` is listened on within 5 s by a program whose stdin, stdout and stderr
/// are all /dev/null, which then serves while it stays the harness's child (R-PROG-01,
/// R-PROG-06, R-PROG-09).
#[derive(Debug)]
pub struct SocketPathQuietStdio;

/// What [`SocketPathQuietStdio`] declares.
const SOCKET_PATH_QUIET_STDIO_META: BuiltinMeta = BuiltinMeta {
    id: "program/socket-path-devnull-stdio",
    title: "With fds 0, 1, 2 on /dev/null, --socket-path is listened on within 5 s and served by the process itself (no daemonizing)",
    rules: &[id::R_PROG_01, id::R_PROG_06, id::R_PROG_09],
    description: "Spawn mode with `--socket-path {socket}` in the command. The program is run with a \
fresh socket path and stdin, stdout and stderr all on /dev/null (no terminal): the path must \
accept a connection within 5 s (R-PROG-01), a GET_FEATURES must be answered (R-PROG-09), and \
the process started must still be running while it serves (R-PROG-06: a back-end that forks \
and exits its parent has daemonized).",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for SocketPathQuietStdio {
    fn meta(&self) -> &'static BuiltinMeta {
        &SOCKET_PATH_QUIET_STDIO_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let dir = tempfile::tempdir()
            .map_err(|e| StepError::Harness(format!("cannot create a socket directory: {e}")))?;
        let path = dir.path().join("quiet.sock");
        let command = derive(ctx, &format!("--socket-path '{}'", path.display()))?;
        let mut cmd = shell(&command)?;
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .map_err(|e| StepError::Harness(format!("cannot run {command}: {e}")))?;
        let deadline = Instant::now() + PROGRAM_WITHIN;
        let stream = loop {
            if let Ok(s) = UnixStream::connect(&path) {
                break Some(s);
            }
            // A program that exited may have left a daemon listening: keep trying.
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        ctx.mark(id::R_PROG_01);
        let Some(stream) = stream else {
            let st = child.try_wait().ok().flatten();
            stop(&mut child);
            return Err(ctx.fail(
                id::R_PROG_01,
                "the socket path was not listened on",
                "a connection accepted on --socket-path within 5 s",
                format!(
                    "no listener at {} after {PROGRAM_WITHIN:?}; process {st:?}; {command}",
                    path.display()
                ),
            ));
        };
        let timeout = ctx.step_timeout().max(Duration::from_secs(2));
        let mut s = crate::engine::session::open(stream, timeout);
        let r = s.get_features();
        // A daemon's parent exits once the child serves: give it a moment, then ask again.
        let st = wait(&mut child, DAEMON_WITHIN);
        let still_served = st.is_some() && s.get_features().is_ok();
        stop(&mut child);
        ctx.mark(id::R_PROG_09);
        ctx.mark(id::R_PROG_06);
        if let Err(e) = r {
            return Err(ctx.fail(
                id::R_PROG_09,
                "with stdin, stdout and stderr on /dev/null the back-end did not answer",
                "GET_FEATURES answered (a back-end must not assume a terminal)",
                format!("{e}; process {st:?}; {command}"),
            ));
        }
        if let Some(st) = st.filter(|_| still_served) {
            return Err(ctx.fail(
                id::R_PROG_06,
                "the process started had exited while the socket was being served: it daemonized",
                "the process the front-end started is the one that serves (it stays its child)",
                format!("process exited with {st} while GET_FEATURES was answered; {command}"),
            ));
        }
        Ok(())
    }
}

/// A socket path that cannot be created (its directory does not exist) makes the program exit
/// early with a non-zero status (R-PROG-08).
#[derive(Debug)]
pub struct UnusableSocketPath;

/// What [`UnusableSocketPath`] declares.
const UNUSABLE_SOCKET_PATH_META: BuiltinMeta = BuiltinMeta {
    id: "program/unusable-socket-path",
    title: "A --socket-path in a directory that does not exist makes the program exit early with a non-zero status",
    rules: &[id::R_PROG_08],
    level: crate::scenario::Level::Should,
    description: "Spawn mode with `--socket-path {socket}` in the command. The program is run with a \
socket path inside a directory that does not exist, so it cannot listen: its initialisation \
fails, and it should exit within 5 s with a non-zero status (a message on stderr is allowed), \
not keep running without a socket nor crash.",
    ..BuiltinMeta::DEFAULT
};

impl Builtin for UnusableSocketPath {
    fn meta(&self) -> &'static BuiltinMeta {
        &UNUSABLE_SOCKET_PATH_META
    }
    fn run(&self, ctx: &mut Ctx<'_>) -> Result<(), StepError> {
        let dir = tempfile::tempdir().map_err(|e| StepError::Harness(e.to_string()))?;
        let path = dir.path().join("no-such-directory").join("x.sock");
        let command = derive(ctx, &format!("--socket-path '{}'", path.display()))?;
        let mut child = start(&command, None)?;
        let status = wait(&mut child, PROGRAM_WITHIN);
        if status.is_none() {
            stop(&mut child);
        }
        let (_, err) = output(&mut child);
        ctx.mark(id::R_PROG_08);
        match status {
            Some(st) if !st.success() && st.signal().is_none() => Ok(()),
            other => Err(ctx.fail(
                id::R_PROG_08,
                "a socket path that cannot be created did not end the program with an error",
                "an early exit with a non-zero status",
                format!(
                    "{}; stderr {err:?}; {command}",
                    other.map_or_else(
                        || format!("still running after {PROGRAM_WITHIN:?}"),
                        |s| format!("status {s}")
                    )
                ),
            )),
        }
    }
}
