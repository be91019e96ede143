//! virtio-input (virtio 1.2 section 5.8): a keyboard with no keys pressed. The config space
//! answers the query the driver selects (select and subsel written, then the 136 bytes read):
//! ID_NAME, ID_SERIAL, ID_DEVIDS, EV_BITS of EV_KEY and EV_LED; anything else has size 0. The
//! eventq's buffers stay posted (no input); statusq events (LEDs) are consumed.

use crate::blk::ConfigError;
use crate::chain::Chain;
use crate::device::VirtioDevice;
use crate::memory::GuestMemory;

/// The virtio device id of an input device (virtio 1.2 section 5).
pub const INPUT_DEVICE_ID: u32 = 18;
/// Bytes of the config space: select, subsel, size, `reserved[5]`, the 128-byte union.
pub const INPUT_CONFIG_SIZE: usize = 136;

const EVENTQ: u16 = 0;
const STATUSQ: u16 = 1;

const CFG_ID_NAME: u8 = 0x01;
const CFG_ID_SERIAL: u8 = 0x02;
const CFG_ID_DEVIDS: u8 = 0x03;
const CFG_EV_BITS: u8 = 0x11;
const EV_KEY: u8 = 0x01;
const EV_LED: u8 = 0x11;

const NAME: &[u8] = b"vhu-mock-input keyboard";
const SERIAL: &[u8] = b"vhu-0001";
/// BUS_VIRTUAL, the virtio vendor id, product 1, version 1.
const DEVIDS: [u16; 4] = [0x06, 0x1af4, 0x0001, 0x0001];
/// Key codes offered: KEY_ESC (1) to KEY_KPDOT (83), the main block of a keyboard.
const LAST_KEY: u16 = 83;
/// LEDs offered: NUML, CAPSL, SCROLLL.
const LEDS: u8 = 0b111;

/// Deliberate departures of the input device (the back-end's fault modes; default: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InputFaults {
    /// ID_DEVIDS answers size 16, not the 8 bytes of virtio_input_devids (breaks R-INPUT-01).
    pub devids_size: bool,
    /// A select the spec does not define answers size 128 (breaks R-INPUT-02).
    pub unknown_select_size: bool,
    /// Posted eventq buffers are used at once, with length 0 and nothing written (breaks
    /// R-INPUT-03).
    pub empty_events: bool,
}

/// The reference virtio-input device.
#[derive(Clone, Debug, Default)]
pub struct InputDevice {
    faults: InputFaults,
    select: u8,
    subsel: u8,
    /// Status events consumed (LED changes).
    statuses: u64,
}

impl InputDevice {
    /// A keyboard breaking what `faults` says.
    pub fn new(faults: InputFaults) -> Self {
        Self {
            faults,
            ..Self::default()
        }
    }

    /// Statusq events consumed so far.
    pub fn statuses(&self) -> u64 {
        self.statuses
    }

    /// The union's bytes answering the current select and subsel (empty: size 0).
    fn answer(&self) -> Vec<u8> {
        match (self.select, self.subsel) {
            (CFG_ID_NAME, 0) => NAME.to_vec(),
            (CFG_ID_SERIAL, 0) => SERIAL.to_vec(),
            (CFG_ID_DEVIDS, 0) => {
                let mut b: Vec<u8> = DEVIDS.iter().flat_map(|v| v.to_le_bytes()).collect();
                if self.faults.devids_size {
                    b.resize(16, 0);
                }
                b
            }
            (CFG_EV_BITS, EV_KEY) => {
                let mut bits = vec![0u8; usize::from(LAST_KEY / 8 + 1)];
                for k in 1..=LAST_KEY {
                    bits[usize::from(k / 8)] |= 1 << (k % 8);
                }
                bits
            }
            (CFG_EV_BITS, EV_LED) => vec![LEDS],
            (s, _) if self.faults.unknown_select_size && !is_defined(s) => vec![0xee; 128],
            _ => Vec::new(),
        }
    }
}

/// Whether the spec defines `select` (0x00 UNSET included).
fn is_defined(select: u8) -> bool {
    matches!(select, 0x00..=0x03 | 0x10..=0x12)
}

impl VirtioDevice for InputDevice {
    fn device_id(&self) -> u32 {
        INPUT_DEVICE_ID
    }

    fn num_queues(&self) -> u16 {
        2
    }

    fn config(&self) -> Vec<u8> {
        let answer = self.answer();
        let mut c = vec![0u8; INPUT_CONFIG_SIZE];
        c[0] = self.select;
        c[1] = self.subsel;
        c[2] = u8::try_from(answer.len()).unwrap_or(128);
        c[8..8 + answer.len()].copy_from_slice(&answer);
        c
    }

    /// 5.8.4: the driver writes select and subsel; the rest is the device's.
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), ConfigError> {
        let end = offset as usize + data.len();
        if end > 2 {
            return Err(ConfigError::NotWritable {
                offset,
                len: data.len(),
            });
        }
        for (i, &b) in data.iter().enumerate() {
            match offset as usize + i {
                0 => self.select = b,
                _ => self.subsel = b,
            }
        }
        Ok(())
    }

    /// The statusq always; the eventq only with the empty-events fault (no input otherwise).
    fn ready(&self, queue: u16) -> bool {
        queue != EVENTQ || self.faults.empty_events
    }

    fn serve(&mut self, queue: u16, _mem: &dyn GuestMemory, _chain: &Chain) -> u32 {
        if queue == STATUSQ {
            self.statuses += 1;
        }
        0
    }

    fn reset(&mut self) {
        self.select = 0;
        self.subsel = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(dev: &mut InputDevice, select: u8, subsel: u8) -> Vec<u8> {
        dev.write_config(0, &[select, subsel]).unwrap();
        let c = dev.config();
        assert_eq!((c[0], c[1]), (select, subsel));
        c[8..8 + usize::from(c[2])].to_vec()
    }

    #[test]
    fn queries_answer_with_their_layouts() {
        let mut dev = InputDevice::new(InputFaults::default());
        assert_eq!(query(&mut dev, CFG_ID_NAME, 0), NAME);
        assert_eq!(query(&mut dev, CFG_ID_DEVIDS, 0).len(), 8);
        let keys = query(&mut dev, CFG_EV_BITS, EV_KEY);
        assert_eq!(keys[0], 0b1111_1110, "KEY_ESC is code 1");
        assert_eq!(query(&mut dev, CFG_EV_BITS, 0x02), Vec::<u8>::new());
        assert_eq!(query(&mut dev, 0x7f, 0), Vec::<u8>::new());
        assert!(dev.write_config(2, &[1]).is_err(), "size is the device's");
        assert!(!dev.ready(EVENTQ) && dev.ready(STATUSQ));
    }

    #[test]
    fn faults_break_the_answers() {
        let f = InputFaults {
            devids_size: true,
            unknown_select_size: true,
            empty_events: true,
        };
        let mut dev = InputDevice::new(f);
        assert_eq!(query(&mut dev, CFG_ID_DEVIDS, 0).len(), 16);
        assert_eq!(query(&mut dev, 0x7f, 0).len(), 128);
        assert!(dev.ready(EVENTQ));
    }
}
