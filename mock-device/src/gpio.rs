//! virtio-gpio (virtio 1.2 section 5.18): one requestq, no VIRTIO_GPIO_F_IRQ (so no eventq).
//! Eight simulated lines, each named, each with a direction and an output value; an output
//! line reads back the value it drives, an input line reads low. The config space is
//! `virtio_gpio_config`: ngpio, zero padding, gpio_names_size.

use crate::blk::iov::Iov;
use crate::chain::Chain;
use crate::device::VirtioDevice;
use crate::memory::GuestMemory;

/// The virtio device id of a GPIO device (virtio 1.2 section 5).
pub const GPIO_DEVICE_ID: u32 = 41;
/// The lines of the reference chip.
pub const GPIO_LINES: u16 = 8;
const OK: u8 = 0;
const ERR: u8 = 1;
const GET_LINE_NAMES: u16 = 1;
const GET_DIRECTION: u16 = 2;
const SET_DIRECTION: u16 = 3;
const GET_VALUE: u16 = 4;
const SET_VALUE: u16 = 5;
/// VIRTIO_GPIO_DIRECTION_NONE, _OUT, _IN.
const DIR_NONE: u8 = 0;
const DIR_OUT: u8 = 1;
const DIR_IN: u8 = 2;

/// Deliberate departures of the GPIO device (the back-end's fault modes; default: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpioFaults {
    /// Only the status byte of a response is written, its value left as it was (breaks
    /// R-GPIO-01).
    pub value_unset: bool,
    /// A line past the last one is answered OK (breaks R-GPIO-05).
    pub past_end_ok: bool,
    /// The last name of the names block loses its terminator (breaks R-GPIO-03).
    pub names_unterminated: bool,
}

/// One line's state.
#[derive(Clone, Copy, Debug, Default)]
struct Line {
    direction: u8,
    value: u8,
}

/// The reference virtio-gpio device.
#[derive(Clone, Debug)]
pub struct GpioDevice {
    lines: Vec<Line>,
    faults: GpioFaults,
}

impl GpioDevice {
    /// A chip of [`GPIO_LINES`] lines, all unconfigured, breaking what `faults` says.
    pub fn new(faults: GpioFaults) -> Self {
        Self {
            lines: vec![Line::default(); GPIO_LINES.into()],
            faults,
        }
    }

    /// The names block: `vhu-gpio<N>` for every line, each zero-terminated.
    fn names(&self) -> Vec<u8> {
        let mut b = Vec::new();
        for n in 0..self.lines.len() {
            b.extend_from_slice(format!("vhu-gpio{n}").as_bytes());
            b.push(0);
        }
        b
    }

    /// The status and value bytes of one message.
    fn answer(&mut self, kind: u16, gpio: u16, value: u32) -> (u8, Vec<u8>) {
        if kind == GET_LINE_NAMES {
            let mut names = self.names();
            if self.faults.names_unterminated {
                let last = names.len() - 1;
                names[last] = b'x';
            }
            return (OK, names);
        }
        let Some(line) = self.lines.get_mut(usize::from(gpio)) else {
            let status = if self.faults.past_end_ok { OK } else { ERR };
            return (status, vec![0]);
        };
        match (kind, value) {
            (GET_DIRECTION, _) => (OK, vec![line.direction]),
            (SET_DIRECTION, v @ 0..=2) => {
                line.direction = v as u8;
                // 5.18.6.1: NONE discards the line's state.
                if line.direction == DIR_NONE {
                    *line = Line::default();
                }
                (OK, vec![0])
            }
            (GET_VALUE, _) if line.direction == DIR_OUT => (OK, vec![line.value]),
            (GET_VALUE, _) if line.direction == DIR_IN => (OK, vec![0]),
            (SET_VALUE, v @ 0..=1) => {
                line.value = v as u8;
                (OK, vec![0])
            }
            // GET_VALUE of an unconfigured line, bad values, unknown types.
            _ => (ERR, vec![0]),
        }
    }
}

impl VirtioDevice for GpioDevice {
    fn device_id(&self) -> u32 {
        GPIO_DEVICE_ID
    }

    fn num_queues(&self) -> u16 {
        1
    }

    fn config(&self) -> Vec<u8> {
        let mut c = (self.lines.len() as u16).to_le_bytes().to_vec();
        c.extend_from_slice(&[0, 0]);
        c.extend_from_slice(&(self.names().len() as u32).to_le_bytes());
        c
    }

    /// 5.18.6: an 8-byte request, then the response (status, value) in the writable buffers;
    /// a request shorter than 8 bytes is answered ERR.
    fn serve(&mut self, _queue: u16, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        let readable = Iov::of(chain.segments.iter().filter(|s| !s.writable));
        let writable = Iov::of(chain.segments.iter().filter(|s| s.writable));
        let mut req = [0u8; 8];
        let (status, value) = if readable.len() < 8 || readable.read(mem, &mut req).is_err() {
            (ERR, vec![0])
        } else {
            let kind = u16::from_le_bytes([req[0], req[1]]);
            let gpio = u16::from_le_bytes([req[2], req[3]]);
            let value = u32::from_le_bytes([req[4], req[5], req[6], req[7]]);
            self.answer(kind, gpio, value)
        };
        let mut resp = vec![status];
        if !self.faults.value_unset {
            resp.extend_from_slice(&value);
        }
        resp.truncate(usize::try_from(writable.len()).unwrap_or(usize::MAX));
        if writable.write(mem, &resp).is_err() {
            return 0;
        }
        resp.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::anonymous;
    use crate::sg::testing::{chain_at as chain, read_at as read};

    fn run(dev: &mut GpioDevice, kind: u16, gpio: u16, value: u32, resp: u32) -> Vec<u8> {
        let mem = anonymous(0, 0x1000);
        let mut req = kind.to_le_bytes().to_vec();
        req.extend_from_slice(&gpio.to_le_bytes());
        req.extend_from_slice(&value.to_le_bytes());
        mem.write(0, &req).unwrap();
        let c = chain(&[(0, 8, false), (0x100, resp, true)]);
        let n = dev.serve(0, &mem, &c);
        read(&mem, 0x100, n as usize)
    }

    #[test]
    fn lines_keep_direction_and_value_and_past_the_end_is_err() {
        let mut dev = GpioDevice::new(GpioFaults::default());
        assert_eq!(run(&mut dev, GET_DIRECTION, 1, 0, 2), vec![OK, DIR_NONE]);
        assert_eq!(run(&mut dev, SET_DIRECTION, 1, 1, 2), vec![OK, 0]);
        assert_eq!(run(&mut dev, SET_VALUE, 1, 1, 2), vec![OK, 0]);
        assert_eq!(run(&mut dev, GET_VALUE, 1, 0, 2), vec![OK, 1]);
        assert_eq!(run(&mut dev, GET_VALUE, 2, 0, 2), vec![ERR, 0]);
        assert_eq!(run(&mut dev, GET_DIRECTION, 8, 0, 2), vec![ERR, 0]);
        let size = u32::from_le_bytes(dev.config()[4..8].try_into().unwrap());
        let names = run(&mut dev, GET_LINE_NAMES, 0, 0, 1 + size);
        assert_eq!(names[0], OK);
        assert_eq!(names.iter().filter(|&&b| b == 0).count(), 9);
    }

    #[test]
    fn faults_break_what_they_say() {
        let f = |faults| GpioDevice::new(faults);
        let mut unset = f(GpioFaults {
            value_unset: true,
            ..GpioFaults::default()
        });
        assert_eq!(run(&mut unset, GET_DIRECTION, 0, 0, 2), vec![OK]);
        let mut past = f(GpioFaults {
            past_end_ok: true,
            ..GpioFaults::default()
        });
        assert_eq!(run(&mut past, GET_DIRECTION, 8, 0, 2)[0], OK);
        let mut names = f(GpioFaults {
            names_unterminated: true,
            ..GpioFaults::default()
        });
        let block = run(&mut names, GET_LINE_NAMES, 0, 0, 100);
        assert_eq!(*block.last().unwrap(), b'x');
    }
}
