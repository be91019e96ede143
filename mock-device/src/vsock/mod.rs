//! A hybrid virtio-vsock device (virtio 1.2 section 5.10): queues rx = 0, tx = 1, event = 2;
//! STREAM sockets only; the guest's peer is the host (CID 2), whose ports are Unix sockets.
//!
//! A guest REQUEST to port P connects to the Unix socket `<uds path>_<P>`: RESPONSE when it
//! accepts, RST when nothing listens (R-VSOCK-01). RW payload goes to the socket; what the host
//! writes comes back as RW within the guest's credit (R-VSOCK-07). Every packet the device
//! sends carries its own `buf_alloc` and `fwd_cnt` (R-VSOCK-03) and the guest's CID (R-VSOCK-02).
//! A packet of an unknown type or op, with the wrong CIDs, or for no connection is answered
//! with RST, never an RST itself (R-VSOCK-04); SHUTDOWN of both directions ends the connection
//! with RST (R-VSOCK-05); the host closing its socket sends SHUTDOWN to the guest.
//!
//! The host can also connect: a program connecting to `<uds path>` and writing
//! `CONNECT <port>\n` has the device send the guest a REQUEST, then reads `OK <host port>\n`
//! once the guest answers RESPONSE.
//!
//! rx is a device-to-driver queue: [`VirtioDevice::ready`] says yes only while packets wait.

mod conn;
mod host;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use zerocopy::{FromBytes, IntoBytes};

use crate::chain::Chain;
use crate::device::VirtioDevice;
use crate::memory::GuestMemory;
use crate::sg::{read_readable, write_writable};
use conn::{Conn, HostRead, State};
use host::{Handshake, Line, Listener};
use wire::{HDR_LEN, HOST_CID, Hdr, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, op};

pub use conn::BUF_ALLOC as VSOCK_BUF_ALLOC;

/// The virtio device id of virtio-vsock.
pub const VSOCK_DEVICE_ID: u32 = 19;
/// The receive queue (device to driver).
pub const VSOCK_RX: u16 = 0;
/// The transmit queue (driver to device).
pub const VSOCK_TX: u16 = 1;
/// The event queue (no events are sent).
pub const VSOCK_EVENT: u16 = 2;
/// Bytes of `struct virtio_vsock_config` (guest_cid, u64).
pub const VSOCK_CONFIG_SIZE: usize = 8;
/// Largest payload of one packet either way (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const VSOCK_MAX_PKT: usize = 64 * 1024;
/// The first port the device gives the host side of a host-initiated connection.
const FIRST_HOST_PORT: u32 = 1 << 30;

/// Deliberate vsock faults, set by the back-end's fault modes (default: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VsockFaults {
    /// A REQUEST to a port nobody listens on gets no answer (R-VSOCK-01).
    pub no_rst: bool,
    /// Every rx packet has dst_cid 0 (R-VSOCK-02).
    pub bad_dst_cid: bool,
    /// Host data is sent whatever the guest's credit (R-VSOCK-07).
    pub credit_overrun: bool,
}

/// Why the device cannot start.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0 to 2 are reserved and the CID must fit 32 bits (virtio 1.2 5.10.4, R-VSOCK-06).
    #[error("guest CID {0} is reserved or does not fit 32 bits (3 to 4294967295)")]
    BadCid(u64),
    /// The host-side listening socket cannot be bound.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The uds path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A packet waiting for a guest rx buffer.
#[derive(Debug)]
struct Packet {
    hdr: Hdr,
    payload: Vec<u8>,
}

/// A connection's key: (guest port, host port).
type Key = (u32, u32);

/// The reference virtio-vsock device.
#[derive(Debug)]
pub struct VsockDevice {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: Option<Listener>,
    handshakes: Vec<Handshake>,
    conns: HashMap<Key, Conn>,
    rx: VecDeque<Packet>,
    next_host_port: u32,
    faults: VsockFaults,
}

impl VsockDevice {
    /// A device for guest `guest_cid` whose host ports are `<uds_path>_<port>`; with `listen`
    /// it also accepts host-initiated connections on `uds_path` itself.
    ///
    /// # Errors
    /// A reserved CID, or `uds_path` cannot be bound.
    pub fn new(guest_cid: u64, uds_path: &Path, listen: bool) -> Result<Self, VsockError> {
        if guest_cid < 3 || guest_cid > u64::from(u32::MAX) {
            return Err(VsockError::BadCid(guest_cid));
        }
        let listener = if listen {
            Some(
                Listener::bind(uds_path).map_err(|source| VsockError::Listen {
                    path: uds_path.to_path_buf(),
                    source,
                })?,
            )
        } else {
            None
        };
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            handshakes: Vec::new(),
            conns: HashMap::new(),
            rx: VecDeque::new(),
            next_host_port: FIRST_HOST_PORT,
            faults: VsockFaults::default(),
        })
    }

    /// Sets the deliberate faults.
    pub fn set_faults(&mut self, faults: VsockFaults) {
        self.faults = faults;
    }

    /// The Unix socket of host port `port`: `<uds_path>_<port>`.
    pub fn port_path(&self, port: u32) -> PathBuf {
        let mut p = OsString::from(self.uds_path.as_os_str());
        p.push(format!("_{port}"));
        PathBuf::from(p)
    }

    /// Queues a control packet (no payload) from host port `key.1` to guest port `key.0`.
    fn queue(&mut self, key: Key, op: u16, flags: u32) {
        self.rx.push_back(Packet {
            hdr: Hdr {
                src_port: key.1,
                dst_port: key.0,
                op,
                flags,
                ..Hdr::default()
            },
            payload: Vec::new(),
        });
    }

    /// Answers `hdr` with RST, unless it is an RST itself.
    fn rst(&mut self, hdr: &Hdr) {
        if hdr.op != op::RST {
            self.queue((hdr.src_port, hdr.dst_port), op::RST, 0);
        }
    }

    /// Ends a connection and drops what was still queued for the guest on it.
    fn close(&mut self, key: Key) {
        self.conns.remove(&key);
        self.rx.retain(|p| (p.hdr.dst_port, p.hdr.src_port) != key);
    }

    /// One packet from the guest (virtio 1.2 5.10.6.3 to 5.10.6.6).
    fn on_packet(&mut self, hdr: Hdr, payload: &[u8]) {
        let key = (hdr.src_port, hdr.dst_port);
        if hdr.op == op::RST {
            if self.conns.contains_key(&key) {
                self.close(key);
            }
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.src_cid != self.guest_cid || hdr.kind != TYPE_STREAM {
            return self.rst(&hdr);
        }
        if hdr.op == op::REQUEST {
            return self.connect(hdr);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return self.rst(&hdr);
        };
        conn.update_credit(hdr.buf_alloc, hdr.fwd_cnt);
        match (hdr.op, conn.state) {
            (op::RESPONSE, State::Connecting) => {
                conn.state = State::Established;
                let ok = format!("OK {}\n", key.1);
                if conn.stream.write_all(ok.as_bytes()).is_err() {
                    self.close(key);
                    self.queue(key, op::RST, 0);
                }
            }
            (op::RW, State::Established) => {
                if !conn.send_to_host(payload) {
                    self.close(key);
                    self.queue(key, op::RST, 0);
                } else if conn.credit_update_due() {
                    self.queue(key, op::CREDIT_UPDATE, 0);
                }
            }
            (op::CREDIT_UPDATE, State::Established) => {}
            (op::CREDIT_REQUEST, State::Established) => self.queue(key, op::CREDIT_UPDATE, 0),
            (op::SHUTDOWN, State::Established) => {
                let both = SHUTDOWN_RCV | SHUTDOWN_SEND;
                if hdr.flags & both == both {
                    conn.flush();
                    self.close(key);
                    self.queue(key, op::RST, 0);
                } else {
                    if hdr.flags & SHUTDOWN_SEND != 0 {
                        conn.flush();
                        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                    }
                    conn.guest_no_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                }
            }
            _ => {
                // An unknown op, or one the connection's state does not allow.
                self.close(key);
                self.rst(&hdr);
            }
        }
    }

    /// A guest REQUEST: connect to the host port's Unix socket.
    fn connect(&mut self, hdr: Hdr) {
        let key = (hdr.src_port, hdr.dst_port);
        if self.conns.contains_key(&key) {
            self.close(key);
            return self.rst(&hdr);
        }
        let conn = UnixStream::connect(self.port_path(hdr.dst_port))
            .and_then(|s| Conn::new(s, State::Established));
        match conn {
            Ok(mut c) => {
                c.update_credit(hdr.buf_alloc, hdr.fwd_cnt);
                self.conns.insert(key, c);
                self.queue(key, op::RESPONSE, 0);
            }
            Err(_) if self.faults.no_rst => {}
            Err(_) => self.rst(&hdr),
        }
    }

    /// Takes what the host side has: new connections, CONNECT lines, data and closes.
    fn pump(&mut self) {
        if let Some(l) = &self.listener {
            let new = l.accept_all();
            self.handshakes.extend(new);
        }
        let mut i = 0;
        while i < self.handshakes.len() {
            match self.handshakes[i].read() {
                Line::Pending => i += 1,
                Line::Bad => drop(self.handshakes.swap_remove(i)),
                Line::Connect(port) => {
                    let hs = self.handshakes.swap_remove(i);
                    self.host_connect(hs.stream, port);
                }
            }
        }
        let overrun = self.faults.credit_overrun;
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            if !conn.flush() {
                self.close(key);
                self.queue(key, op::RST, 0);
                continue;
            }
            if !conn.wants_host_data(overrun) {
                continue;
            }
            let max = if overrun {
                VSOCK_MAX_PKT
            } else {
                (conn.credit() as usize).min(VSOCK_MAX_PKT)
            };
            match conn.read_host(max) {
                HostRead::Nothing => {}
                HostRead::Data(payload) => {
                    conn.rw_queued = true;
                    self.rx.push_back(Packet {
                        hdr: Hdr {
                            src_port: key.1,
                            dst_port: key.0,
                            len: payload.len() as u32,
                            op: op::RW,
                            ..Hdr::default()
                        },
                        payload,
                    });
                }
                HostRead::Closed => {
                    conn.host_closed = true;
                    self.queue(key, op::SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND);
                }
            }
        }
    }

    /// A host program asked for guest port `port`: send the guest a REQUEST.
    fn host_connect(&mut self, stream: UnixStream, port: u32) {
        let mut host_port = self.next_host_port;
        while self.conns.contains_key(&(port, host_port)) {
            host_port = host_port.wrapping_add(1).max(FIRST_HOST_PORT);
        }
        self.next_host_port = host_port.wrapping_add(1).max(FIRST_HOST_PORT);
        if let Ok(c) = Conn::new(stream, State::Connecting) {
            self.conns.insert((port, host_port), c);
            self.queue((port, host_port), op::REQUEST, 0);
        }
    }

    /// Puts the first waiting packet into an rx chain; returns the used length.
    fn deliver(&mut self, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        let room = usize::try_from(chain.writable_len()).unwrap_or(usize::MAX);
        if room < HDR_LEN {
            // Why: a buffer that cannot hold a header is returned unused; the packet waits.
            return 0;
        }
        let Some(mut pkt) = self.rx.pop_front() else {
            return 0;
        };
        if pkt.payload.len() > room - HDR_LEN {
            // An RW larger than the buffer goes in pieces, the rest first in line.
            let rest = pkt.payload.split_off(room - HDR_LEN);
            let mut hdr = pkt.hdr;
            hdr.len = rest.len() as u32;
            self.rx.push_front(Packet { hdr, payload: rest });
            pkt.hdr.len = pkt.payload.len() as u32;
        }
        let key = (pkt.hdr.dst_port, pkt.hdr.src_port);
        let more_rw = self
            .rx
            .front()
            .is_some_and(|p| p.hdr.op == op::RW && (p.hdr.dst_port, p.hdr.src_port) == key);
        let mut hdr = pkt.hdr;
        hdr.src_cid = HOST_CID;
        hdr.dst_cid = if self.faults.bad_dst_cid {
            0
        } else {
            self.guest_cid
        };
        hdr.kind = TYPE_STREAM;
        hdr.buf_alloc = conn::BUF_ALLOC;
        if let Some(c) = self.conns.get_mut(&key) {
            hdr.fwd_cnt = c.fwd_cnt;
            c.fwd_announced = c.fwd_cnt;
            if hdr.op == op::RW && !more_rw {
                c.rw_queued = false;
            }
        }
        let mut bytes = hdr.as_bytes().to_vec();
        bytes.extend_from_slice(&pkt.payload);
        write_writable(mem, chain, &bytes).unwrap_or(0)
    }
}

impl VirtioDevice for VsockDevice {
    fn device_id(&self) -> u32 {
        VSOCK_DEVICE_ID
    }

    fn num_queues(&self) -> u16 {
        3
    }

    /// `struct virtio_vsock_config`: guest_cid (R-VSOCK-06).
    fn config(&self) -> Vec<u8> {
        self.guest_cid.to_le_bytes().to_vec()
    }

    fn ready(&self, queue: u16) -> bool {
        match queue {
            VSOCK_RX => !self.rx.is_empty(),
            VSOCK_TX => true,
            _ => false,
        }
    }

    fn serve(&mut self, queue: u16, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        match queue {
            VSOCK_RX => {
                let used = self.deliver(mem, chain);
                // Why: a delivered RW frees the connection to read more host data now.
                self.pump();
                used
            }
            VSOCK_TX => {
                let Ok(bytes) = read_readable(mem, chain, HDR_LEN + VSOCK_MAX_PKT) else {
                    return 0;
                };
                // A chain too short for a header names no connection to reset: dropped.
                if let Ok((hdr, rest)) = Hdr::read_from_prefix(&bytes) {
                    match rest.get(..hdr.len as usize) {
                        Some(payload) => self.on_packet(hdr, payload),
                        None => self.rst(&hdr),
                    }
                }
                self.pump();
                // tx buffers are driver-readable only: nothing written.
                0
            }
            // The event queue: no events; a buffer would be held, not used.
            _ => 0,
        }
    }

    fn input_fds(&self) -> Vec<RawFd> {
        let overrun = self.faults.credit_overrun;
        let listener = self.listener.iter().map(|l| l.socket().as_raw_fd());
        let shakes = self.handshakes.iter().map(|h| h.stream.as_raw_fd());
        let conns = self
            .conns
            .values()
            .filter(|c| c.wants_host_data(overrun))
            .map(|c| c.stream.as_raw_fd());
        listener.chain(shakes).chain(conns).collect()
    }

    fn on_input(&mut self) {
        self.pump();
    }

    fn reset(&mut self) {
        self.conns.clear();
        self.handshakes.clear();
        self.rx.clear();
    }
}

#[cfg(test)]
mod tests;
