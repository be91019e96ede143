//! The mock front-end's migration steps: saving the device state through a pipe, and the
//! postcopy sequence.

use std::os::fd::AsFd;
use std::time::Duration;

use vhu_mock_frontend::{Session, SessionError};
use vhu_protocol::FrontendReq;
use vhu_protocol::wire::payload::Body;

use super::gave_up;

/// A save (direction 0) through a pipe: SET_DEVICE_STATE_FD, read to EOF (at most 2 s), then
/// CHECK_DEVICE_STATE.
pub(super) fn save_state(s: &mut Session) -> Result<(), SessionError> {
    use std::io::Read;
    let local = |what: &str, e: std::io::Error| SessionError::Local {
        what: what.into(),
        source: e,
    };
    let (r, w) = nix::unistd::pipe().map_err(|e| local("cannot create a pipe", e.into()))?;
    let mut m = s.set_device_state_fd(0, w.as_fd())?;
    drop(w);
    let v = m.u64().unwrap_or(1);
    if v & 0xff != 0 {
        return Err(gave_up("SET_DEVICE_STATE_FD", v));
    }
    // Bit 8 clear: the back-end's own fd replaces the pipe.
    let read_end = if v & 0x100 == 0 && !m.fds.is_empty() {
        m.fds.remove(0)
    } else {
        r
    };
    let mut f = std::fs::File::from(read_end);
    let _ = nix::fcntl::fcntl(
        &f,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    let until = std::time::Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < until {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(local("cannot read the device state", e)),
        }
    }
    let check = s.check_device_state()?;
    if check != 0 {
        return Err(gave_up("CHECK_DEVICE_STATE", check));
    }
    Ok(())
}

/// POSTCOPY_ADVISE, and with its userfaultfd POSTCOPY_LISTEN and POSTCOPY_END.
pub(super) fn postcopy(s: &mut Session, listen_first: bool) -> Result<(), SessionError> {
    if listen_first {
        s.request(FrontendReq::PostcopyListen, &Body::Empty, &[], None)?;
    }
    let advised = s.request(FrontendReq::PostcopyAdvise, &Body::Empty, &[], None)?;
    if advised.is_some_and(|m| m.fds.len() == 1) {
        s.request(FrontendReq::PostcopyListen, &Body::Empty, &[], None)?;
        s.request(FrontendReq::PostcopyEnd, &Body::Empty, &[], None)?;
    }
    Ok(())
}
