//! virtio-console (virtio 1.2 section 5.3) with VIRTIO_CONSOLE_F_MULTIPORT and two ports: port
//! 0, a console, on queues 0 (receiveq) and 1 (transmitq), the control receiveq (2) and
//! transmitq (3), and port 1, a named generic port, on queues 4 and 5. The driver's
//! DEVICE_READY is answered with DEVICE_ADD of each port; PORT_READY of port 0 with
//! CONSOLE_PORT and PORT_OPEN, of port 1 with PORT_NAME and PORT_OPEN. Port data written is
//! consumed (no host side: it is dropped, counted). No input from the host, so the receiveqs'
//! buffers stay posted.

use std::collections::VecDeque;

use crate::blk::ConfigError;
use crate::chain::Chain;
use crate::device::VirtioDevice;
use crate::memory::GuestMemory;
use crate::sg::{read_readable, readable_len, write_writable};

/// The virtio device id of a console (virtio 1.2 section 5).
pub const CONSOLE_DEVICE_ID: u32 = 3;
/// Bytes of the config space: cols, rows, max_nr_ports, emerg_wr.
pub const CONSOLE_CONFIG_SIZE: usize = 12;

const RX0: u16 = 0;
const TX0: u16 = 1;
const CTRL_RX: u16 = 2;
const CTRL_TX: u16 = 3;
const RX1: u16 = 4;
const TX1: u16 = 5;

const F_SIZE: u64 = 1 << 0;
const F_MULTIPORT: u64 = 1 << 1;

const DEVICE_READY: u16 = 0;
const DEVICE_ADD: u16 = 1;
const PORT_READY: u16 = 3;
const CONSOLE_PORT: u16 = 4;
const PORT_OPEN: u16 = 6;
const PORT_NAME: u16 = 7;

/// The ports the device has. Why two: port 0 and the control pair are what every driver uses,
/// and a second port puts its queues after the control pair (5.3.2).
const MAX_NR_PORTS: u32 = 2;
/// Port 1's name (PORT_NAME).
const PORT1_NAME: &[u8] = b"org.vhu.port1";
/// Columns and rows the config space reports (F_SIZE).
const COLS: u16 = 80;
const ROWS: u16 = 25;
/// Offset of the emergency write register, the one field a driver writes.
const EMERG_WR: u32 = 8;

/// Deliberate departures of the console device (the back-end's fault modes; default: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsoleFaults {
    /// DEVICE_READY is consumed but no DEVICE_ADD follows (breaks R-CONSOLE-01).
    pub no_device_add: bool,
    /// Control messages are written 6 bytes long, the value left out (breaks R-CONSOLE-02).
    pub short_control: bool,
    /// Transmitq chains are used with the bytes read as used length (breaks R-DEV-02).
    pub tx_used_len: bool,
    /// The config space's max_nr_ports is 0 (breaks R-CONSOLE-04).
    pub max_ports_zero: bool,
}

/// The reference virtio-console device.
#[derive(Clone, Debug, Default)]
pub struct ConsoleDevice {
    faults: ConsoleFaults,
    /// Control messages for the driver (header and any name), oldest first.
    to_driver: VecDeque<Vec<u8>>,
    /// Port data bytes consumed.
    consumed: u64,
}

impl ConsoleDevice {
    /// A console breaking what `faults` says.
    pub fn new(faults: ConsoleFaults) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }

    /// Port data bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    fn tell(&mut self, id: u32, event: u16, value: u16, name: &[u8]) {
        let mut m = Vec::with_capacity(8 + name.len());
        m.extend_from_slice(&id.to_le_bytes());
        m.extend_from_slice(&event.to_le_bytes());
        m.extend_from_slice(&value.to_le_bytes());
        if self.faults.short_control {
            m.truncate(6);
        } else {
            m.extend_from_slice(name);
        }
        self.to_driver.push_back(m);
    }

    /// The driver's control message (5.3.6.2); what the device does not act on is dropped.
    fn control(&mut self, msg: &[u8]) {
        let Some(m) = msg.get(..8) else { return };
        let id = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        let event = u16::from_le_bytes([m[4], m[5]]);
        let value = u16::from_le_bytes([m[6], m[7]]);
        match (event, value) {
            (DEVICE_READY, 1) if !self.faults.no_device_add => {
                for port in 0..MAX_NR_PORTS {
                    self.tell(port, DEVICE_ADD, 0, &[]);
                }
            }
            (PORT_READY, 1) if id == 0 => {
                self.tell(id, CONSOLE_PORT, 1, &[]);
                self.tell(id, PORT_OPEN, 1, &[]);
            }
            (PORT_READY, 1) if id < MAX_NR_PORTS => {
                self.tell(id, PORT_NAME, 1, PORT1_NAME);
                self.tell(id, PORT_OPEN, 1, &[]);
            }
            _ => {}
        }
    }
}

impl VirtioDevice for ConsoleDevice {
    fn device_id(&self) -> u32 {
        CONSOLE_DEVICE_ID
    }

    fn num_queues(&self) -> u16 {
        2 * (MAX_NR_PORTS as u16 + 1)
    }

    fn device_features(&self) -> u64 {
        crate::device::RING_FEATURES | F_SIZE | F_MULTIPORT
    }

    fn config(&self) -> Vec<u8> {
        let max = if self.faults.max_ports_zero {
            0
        } else {
            MAX_NR_PORTS
        };
        let mut c = Vec::with_capacity(CONSOLE_CONFIG_SIZE);
        c.extend_from_slice(&COLS.to_le_bytes());
        c.extend_from_slice(&ROWS.to_le_bytes());
        c.extend_from_slice(&max.to_le_bytes());
        c.extend_from_slice(&0u32.to_le_bytes());
        c
    }

    /// 5.3.4: only emerg_wr is written by a driver; the byte goes nowhere (no host output).
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), ConfigError> {
        let end = offset as usize + data.len();
        if offset >= EMERG_WR && end <= CONSOLE_CONFIG_SIZE {
            return Ok(());
        }
        Err(ConfigError::NotWritable {
            offset,
            len: data.len(),
        })
    }

    /// The transmit queues always; the control receiveq while a message waits; the receiveq
    /// never (no host input).
    fn ready(&self, queue: u16) -> bool {
        match queue {
            RX0 | RX1 => false,
            CTRL_RX => !self.to_driver.is_empty(),
            _ => true,
        }
    }

    fn serve(&mut self, queue: u16, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        match queue {
            TX0 | TX1 => {
                let n = readable_len(chain);
                self.consumed += n;
                if self.faults.tx_used_len {
                    return u32::try_from(n).unwrap_or(u32::MAX);
                }
                0
            }
            CTRL_TX => {
                if let Ok(msg) = read_readable(mem, chain, 8) {
                    self.control(&msg);
                }
                0
            }
            CTRL_RX => {
                let Some(m) = self.to_driver.pop_front() else {
                    return 0;
                };
                write_writable(mem, chain, &m).unwrap_or(0)
            }
            _ => 0,
        }
    }

    fn reset(&mut self) {
        self.to_driver.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::anonymous;
    use crate::sg::testing::{chain_at as chain, read_at as read};

    #[test]
    fn device_ready_is_answered_with_device_add_then_console_port() {
        let mem = anonymous(0, 0x4000);
        let mut dev = ConsoleDevice::new(ConsoleFaults::default());
        assert!(!dev.ready(CTRL_RX));
        mem.write(0, &[0, 0, 0, 0, 0, 0, 1, 0]).unwrap();
        assert_eq!(dev.serve(CTRL_TX, &mem, &chain(&[(0, 8, false)])), 0);
        assert!(dev.ready(CTRL_RX));
        let rx = chain(&[(0x1000, 128, true)]);
        assert_eq!(dev.serve(CTRL_RX, &mem, &rx), 8);
        assert_eq!(read(&mem, 0x1000, 8), vec![0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(dev.serve(CTRL_RX, &mem, &rx), 8);
        assert_eq!(
            read(&mem, 0x1000, 8),
            vec![1, 0, 0, 0, 1, 0, 0, 0],
            "port 1 added"
        );
        mem.write(0, &[1, 0, 0, 0, 3, 0, 1, 0]).unwrap();
        dev.serve(CTRL_TX, &mem, &chain(&[(0, 8, false)]));
        assert_eq!(
            dev.serve(CTRL_RX, &mem, &rx),
            8 + 13,
            "PORT_NAME and the name"
        );
        assert_eq!(read(&mem, 0x1008, 13), b"org.vhu.port1".to_vec());
        dev.serve(CTRL_RX, &mem, &rx);
        mem.write(0, &[0, 0, 0, 0, 3, 0, 1, 0]).unwrap();
        dev.serve(CTRL_TX, &mem, &chain(&[(0, 8, false)]));
        dev.serve(CTRL_RX, &mem, &rx);
        assert_eq!(read(&mem, 0x1000, 8), vec![0, 0, 0, 0, 4, 0, 1, 0]);
        assert!(dev.ready(CTRL_RX), "PORT_OPEN follows");
        assert_eq!(dev.config()[4], 2, "max_nr_ports");
        assert_eq!(dev.num_queues(), 6);
    }

    #[test]
    fn port_data_is_consumed_and_faults_break_it() {
        let mem = anonymous(0, 0x4000);
        let tx = chain(&[(0, 10, false), (0x100, 6, false)]);
        let mut dev = ConsoleDevice::new(ConsoleFaults::default());
        assert_eq!(dev.serve(TX0, &mem, &tx), 0);
        assert_eq!(dev.consumed(), 16);
        let f = ConsoleFaults {
            tx_used_len: true,
            no_device_add: true,
            max_ports_zero: true,
            short_control: false,
        };
        let mut bad = ConsoleDevice::new(f);
        assert_eq!(bad.serve(TX0, &mem, &tx), 16);
        mem.write(0, &[0, 0, 0, 0, 0, 0, 1, 0]).unwrap();
        bad.serve(CTRL_TX, &mem, &chain(&[(0, 8, false)]));
        assert!(!bad.ready(CTRL_RX));
        assert_eq!(bad.config()[4], 0);
        assert!(bad.write_config(8, b"x").is_ok());
        assert!(bad.write_config(0, &[1]).is_err());
    }
}
