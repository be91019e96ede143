//! virtio-console driver requests on the device-neutral [`exchange`](crate::exchange) path
//! (virtio 1.2 section 5.3): the queue of each port, the 8-byte control message of the
//! MULTIPORT control queues, and the config space. Facts only: the engine judges them.

use crate::exchange::{ChainSpec, Exchanged};

/// Port 0's receiveq.
pub const RX0: u16 = 0;
/// Port 0's transmitq.
pub const TX0: u16 = 1;
/// The control receiveq (device to driver), with MULTIPORT.
pub const CTRL_RX: u16 = 2;
/// The control transmitq (driver to device), with MULTIPORT.
pub const CTRL_TX: u16 = 3;

/// Feature bit 0: `cols` and `rows` are valid.
pub const F_SIZE: u64 = 1 << 0;
/// Feature bit 1: several ports and the control queues; `max_nr_ports` is valid.
pub const F_MULTIPORT: u64 = 1 << 1;
/// Feature bit 2: `emerg_wr` is valid.
pub const F_EMERG_WRITE: u64 = 1 << 2;

/// Bytes of `struct virtio_console_config` (cols, rows, max_nr_ports, emerg_wr).
pub const CONFIG_SIZE: u32 = 12;
/// Bytes of `struct virtio_console_control`.
pub const CONTROL_SIZE: usize = 8;
/// Bytes of each control receive buffer the driver posts: the header and a port name.
pub const CONTROL_BUF: u32 = 128;

/// `VIRTIO_CONSOLE_DEVICE_READY`: driver to device, value 1 (ready) or 0 (failed).
pub const DEVICE_READY: u16 = 0;
/// `VIRTIO_CONSOLE_DEVICE_ADD`: device to driver, a port `id` exists.
pub const DEVICE_ADD: u16 = 1;
/// `VIRTIO_CONSOLE_DEVICE_REMOVE`: device to driver, port `id` is gone.
pub const DEVICE_REMOVE: u16 = 2;
/// `VIRTIO_CONSOLE_PORT_READY`: driver to device, port `id` is set up (value 1) or not.
pub const PORT_READY: u16 = 3;
/// `VIRTIO_CONSOLE_CONSOLE_PORT`: device to driver, port `id` is a console.
pub const CONSOLE_PORT: u16 = 4;
/// `VIRTIO_CONSOLE_RESIZE`: device to driver, followed by rows and cols.
pub const RESIZE: u16 = 5;
/// `VIRTIO_CONSOLE_PORT_OPEN`: both ways, port `id` opened (value 1) or closed (0).
pub const PORT_OPEN: u16 = 6;
/// `VIRTIO_CONSOLE_PORT_NAME`: device to driver, followed by the port's name.
pub const PORT_NAME: u16 = 7;

/// The name of a control event, for reports.
pub fn event_name(event: u16) -> &'static str {
    match event {
        DEVICE_READY => "DEVICE_READY",
        DEVICE_ADD => "DEVICE_ADD",
        DEVICE_REMOVE => "DEVICE_REMOVE",
        PORT_READY => "PORT_READY",
        CONSOLE_PORT => "CONSOLE_PORT",
        RESIZE => "RESIZE",
        PORT_OPEN => "PORT_OPEN",
        PORT_NAME => "PORT_NAME",
        _ => "unknown event",
    }
}

/// Whether the device may send `event` (5.3.6.2: the events of the device-to-driver direction).
pub fn is_device_event(event: u16) -> bool {
    matches!(
        event,
        DEVICE_ADD | DEVICE_REMOVE | CONSOLE_PORT | RESIZE | PORT_OPEN | PORT_NAME
    )
}

/// The receiveq and transmitq of `port` (5.3.2: port 0 on queues 0 and 1, port n >= 1 on
/// 2(n+1) and 2(n+1)+1, after the control queues).
pub fn port_queues(port: u32) -> (u16, u16) {
    let rx = if port == 0 { 0 } else { 2 * (port + 1) };
    let rx = u16::try_from(rx).unwrap_or(u16::MAX - 1);
    (rx, rx + 1)
}

/// A `struct virtio_console_control` (little-endian on the wire).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Control {
    /// The port.
    pub id: u32,
    /// The event (`DEVICE_READY` ...).
    pub event: u16,
    /// The event's value.
    pub value: u16,
}

impl Control {
    /// The 8 bytes on the wire.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(CONTROL_SIZE);
        b.extend_from_slice(&self.id.to_le_bytes());
        b.extend_from_slice(&self.event.to_le_bytes());
        b.extend_from_slice(&self.value.to_le_bytes());
        b
    }

    /// The message at the start of `b`, when there are 8 bytes.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = b.get(..CONTROL_SIZE)?;
        Some(Self {
            id: u32::from_le_bytes(b[0..4].try_into().ok()?),
            event: u16::from_le_bytes(b[4..6].try_into().ok()?),
            value: u16::from_le_bytes(b[6..8].try_into().ok()?),
        })
    }
}

impl std::fmt::Display for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (event {}) id {} value {}",
            event_name(self.event),
            self.event,
            self.id,
            self.value
        )
    }
}

/// A control message the driver sends: one driver-readable buffer.
pub fn control_chain(msg: &Control, indirect: bool) -> ChainSpec {
    ChainSpec {
        readable: vec![msg.bytes()],
        writable: vec![],
        indirect,
    }
}

/// A control receive buffer: one device-writable buffer of [`CONTROL_BUF`] bytes.
pub fn control_rx_chain(indirect: bool) -> ChainSpec {
    ChainSpec {
        readable: vec![],
        writable: vec![CONTROL_BUF],
        indirect,
    }
}

/// What a completed control receive buffer holds: the message and the bytes after it (a port
/// name), or `None` when fewer than 8 bytes were written.
pub fn received_control(done: &Exchanged) -> Option<(Control, Vec<u8>)> {
    let bytes = done.reply();
    let msg = Control::parse(&bytes)?;
    Some((msg, bytes[CONTROL_SIZE..].to_vec()))
}

/// Port data the driver writes: `data` over `segments` driver-readable descriptors.
pub fn data_chain(data: &[u8], segments: u32, indirect: bool) -> ChainSpec {
    let n = segments.clamp(1, data.len().max(1) as u32) as usize;
    let step = data.len().div_ceil(n).max(1);
    let readable = data.chunks(step).map(<[u8]>::to_vec).collect();
    ChainSpec {
        readable,
        writable: vec![],
        indirect,
    }
}

/// The config space: `struct virtio_console_config`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Columns (valid with F_SIZE).
    pub cols: u16,
    /// Rows (valid with F_SIZE).
    pub rows: u16,
    /// The most ports the device can have (valid with F_MULTIPORT).
    pub max_nr_ports: u32,
    /// The emergency write register (valid with F_EMERG_WRITE).
    pub emerg_wr: u32,
}

impl Config {
    /// The config from the bytes GET_CONFIG returned (at least 12).
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = b.get(..CONFIG_SIZE as usize)?;
        Some(Self {
            cols: u16::from_le_bytes(b[0..2].try_into().ok()?),
            rows: u16::from_le_bytes(b[2..4].try_into().ok()?),
            max_nr_ports: u32::from_le_bytes(b[4..8].try_into().ok()?),
            emerg_wr: u32::from_le_bytes(b[8..12].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_messages_round_trip_little_endian() {
        let m = Control {
            id: 0x0102_0304,
            event: PORT_READY,
            value: 1,
        };
        assert_eq!(m.bytes(), vec![4, 3, 2, 1, 3, 0, 1, 0]);
        assert_eq!(Control::parse(&m.bytes()), Some(m));
        assert_eq!(Control::parse(&[0; 7]), None);
        assert!(m.to_string().contains("PORT_READY"));
    }

    #[test]
    fn ports_map_to_their_queues() {
        assert_eq!(port_queues(0), (0, 1));
        assert_eq!(port_queues(1), (4, 5));
        assert_eq!(port_queues(2), (6, 7));
    }

    #[test]
    fn data_is_split_over_segments_and_config_parses() {
        let c = data_chain(&[7; 10], 3, false);
        assert_eq!(c.readable.iter().map(Vec::len).sum::<usize>(), 10);
        assert_eq!(c.readable.len(), 3);
        assert!(c.writable.is_empty());
        let cfg = Config::parse(&[80, 0, 25, 0, 1, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!((cfg.cols, cfg.rows, cfg.max_nr_ports), (80, 25, 1));
        assert!(is_device_event(DEVICE_ADD) && !is_device_event(DEVICE_READY));
    }
}
