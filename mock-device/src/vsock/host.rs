//! The host side's own connections (hybrid vsock as Firecracker and vhost-device-vsock do it):
//! a host program connects to the listening Unix socket and writes `CONNECT <port>\n`; the
//! device then asks the guest for a connection to that port and, once the guest answers
//! RESPONSE, writes `OK <host port>\n` back.

use std::io::{ErrorKind, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Longest handshake line accepted.
const LINE_MAX: usize = 64;

/// A host connection that has not finished its CONNECT line.
#[derive(Debug)]
pub(crate) struct Handshake {
    pub(crate) stream: UnixStream,
    line: Vec<u8>,
}

/// What a handshake read gave.
#[derive(Debug)]
pub(crate) enum Line {
    /// Not complete yet.
    Pending,
    /// `CONNECT <port>`.
    Connect(u32),
    /// A bad line, EOF or an error: close it.
    Bad,
}

impl Handshake {
    /// Reads what arrived; a complete line is parsed.
    pub(crate) fn read(&mut self) -> Line {
        let mut buf = [0u8; LINE_MAX];
        loop {
            // Why: read byte by byte up to the newline, so payload after it stays in the
            // socket for the connection to forward.
            match self.stream.read(&mut buf[..1]) {
                Ok(0) => return Line::Bad,
                Ok(_) if buf[0] == b'\n' => return parse_connect(&self.line),
                Ok(_) => {
                    self.line.push(buf[0]);
                    if self.line.len() > LINE_MAX {
                        return Line::Bad;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Line::Pending,
                Err(_) => return Line::Bad,
            }
        }
    }
}

fn parse_connect(line: &[u8]) -> Line {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    match text
        .strip_prefix("CONNECT ")
        .map(|p| p.trim().parse::<u32>())
    {
        Some(Ok(port)) => Line::Connect(port),
        _ => Line::Bad,
    }
}

/// The listening socket at the uds path.
#[derive(Debug)]
pub(crate) struct Listener {
    sock: UnixListener,
    path: PathBuf,
}

impl Listener {
    /// Listens on `path`, replacing a stale socket file left there.
    pub(crate) fn bind(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(m) = path.symlink_metadata() {
            if m.file_type().is_socket() {
                std::fs::remove_file(path)?;
            }
        }
        let sock = UnixListener::bind(path)?;
        sock.set_nonblocking(true)?;
        Ok(Self {
            sock,
            path: path.to_path_buf(),
        })
    }

    /// The listening socket.
    pub(crate) fn socket(&self) -> &UnixListener {
        &self.sock
    }

    /// Every connection waiting, without blocking.
    pub(crate) fn accept_all(&self) -> Vec<Handshake> {
        let mut out = Vec::new();
        while let Ok((stream, _)) = self.sock.accept() {
            if stream.set_nonblocking(true).is_ok() {
                out.push(Handshake {
                    stream,
                    line: Vec::new(),
                });
            }
        }
        out
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert!(matches!(
            parse_connect(b"CONNECT 1234"),
            Line::Connect(1234)
        ));
        assert!(matches!(parse_connect(b"CONNECT 5\r"), Line::Connect(5)));
        assert!(matches!(parse_connect(b"CONNECT x"), Line::Bad));
        assert!(matches!(parse_connect(b"HELLO"), Line::Bad));
    }
}
