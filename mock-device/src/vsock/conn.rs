//! One guest connection to a host Unix socket: its state and both directions of credit (virtio
//! 1.2 section 5.10.6.3.1: a sender may have at most `buf_alloc - (tx_cnt - fwd_cnt)` bytes in
//! flight, counted against the peer's last announced `buf_alloc` and `fwd_cnt`).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

/// The device's receive buffer per connection, announced in every packet.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Most bytes the driver may have sent beyond what the device forwarded before the
/// connection is reset: its credit plus nothing (the device never buffers more).
const TO_HOST_MAX: usize = BUF_ALLOC as usize;

/// Where the connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Host-initiated: REQUEST sent to the guest, waiting for its RESPONSE.
    Connecting,
    /// Data flows.
    Established,
}

/// What reading the host socket gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HostRead {
    /// Nothing now.
    Nothing,
    /// Bytes for the guest.
    Data(Vec<u8>),
    /// The host closed its end (or the socket failed).
    Closed,
}

/// One connection.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: UnixStream,
    pub(crate) state: State,
    /// The guest's last announced receive buffer and consumed count.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// RW payload bytes queued for the guest so far (wrapping).
    tx_cnt: u32,
    /// Guest bytes written to the host socket so far (wrapping): the device's fwd_cnt.
    pub(crate) fwd_cnt: u32,
    /// Guest bytes not yet written to the host socket.
    to_host: Vec<u8>,
    /// The host closed its end; SHUTDOWN was sent to the guest.
    pub(crate) host_closed: bool,
    /// The guest will receive no more (SHUTDOWN with RCV).
    pub(crate) guest_no_rcv: bool,
    /// An RW for the guest waits in the rx queue: read no more until it is delivered.
    pub(crate) rw_queued: bool,
    /// The fwd_cnt last carried by a packet to the guest.
    pub(crate) fwd_announced: u32,
}

impl Conn {
    /// A connection over `stream` (made non-blocking).
    pub(crate) fn new(stream: UnixStream, state: State) -> std::io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self {
            stream,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            to_host: Vec::new(),
            host_closed: false,
            guest_no_rcv: false,
            rw_queued: false,
            fwd_announced: 0,
        })
    }

    /// Takes the credit the guest announced in a packet's header.
    pub(crate) fn update_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Payload bytes the guest can take now.
    pub(crate) fn credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the device should read the host socket now.
    pub(crate) fn wants_host_data(&self, ignore_credit: bool) -> bool {
        self.state == State::Established
            && !self.host_closed
            && !self.guest_no_rcv
            && !self.rw_queued
            && (ignore_credit || self.credit() > 0)
    }

    /// Reads at most `max` bytes from the host socket, counting them as sent to the guest.
    pub(crate) fn read_host(&mut self, max: usize) -> HostRead {
        let mut buf = vec![0u8; max];
        match self.stream.read(&mut buf) {
            Ok(0) => HostRead::Closed,
            Ok(n) => {
                buf.truncate(n);
                self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                HostRead::Data(buf)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                HostRead::Nothing
            }
            Err(_) => HostRead::Closed,
        }
    }

    /// Queues guest payload for the host socket and writes what it takes. `false` when the
    /// guest sent more than its credit allows or the socket failed.
    pub(crate) fn send_to_host(&mut self, data: &[u8]) -> bool {
        if self.to_host.len() + data.len() > TO_HOST_MAX {
            return false;
        }
        self.to_host.extend_from_slice(data);
        self.flush()
    }

    /// Writes buffered guest payload to the host socket without blocking. `false` when the
    /// socket failed.
    pub(crate) fn flush(&mut self) -> bool {
        while !self.to_host.is_empty() {
            match self.stream.write(&self.to_host) {
                Ok(0) => return false,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return false,
            }
        }
        true
    }

    /// Whether enough was forwarded since the guest last heard that it should be told
    /// (half the buffer), so it does not stall waiting for credit.
    pub(crate) fn credit_update_due(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_announced) >= BUF_ALLOC / 2
    }
}
