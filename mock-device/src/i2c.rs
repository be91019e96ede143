//! virtio-i2c (virtio 1.2 section 5.19): one requestq; an adapter with one simulated
//! controlled device, a 256-byte register file at 7-bit address 0x20 (a write's first byte
//! sets the register pointer, the rest is stored from there; a read returns bytes from the
//! pointer on, both advancing it). Any other address does not answer: ERR, as a NACK on a
//! real bus. FAIL_NEXT groups fail together. No config space.

use crate::blk::iov::Iov;
use crate::chain::Chain;
use crate::device::VirtioDevice;
use crate::memory::GuestMemory;

/// The virtio device id of an I2C adapter (virtio 1.2 section 5).
pub const I2C_DEVICE_ID: u32 = 34;
/// The 7-bit address of the simulated controlled device.
pub const I2C_CLIENT_ADDR: u16 = 0x20;
/// VIRTIO_I2C_F_ZERO_LENGTH_REQUEST.
const F_ZERO_LENGTH_REQUEST: u64 = 1 << 0;
const FLAGS_FAIL_NEXT: u32 = 1 << 0;
const FLAGS_M_RD: u32 = 1 << 1;
const MSG_OK: u8 = 0;
const MSG_ERR: u8 = 1;
/// The status byte the `bad_status` fault writes.
pub const I2C_BAD_STATUS: u8 = 2;
/// The largest segment served. Why: an I2C segment is bounded by the driver's buffer, and a
/// bound keeps a huge one from costing anything.
const MAX_SEGMENT: u64 = 4096;

/// Deliberate departures of the I2C device (the back-end's fault modes; default: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct I2cFaults {
    /// The status byte is 2, neither OK nor ERR (breaks R-I2C-01).
    pub bad_status: bool,
    /// VIRTIO_I2C_F_ZERO_LENGTH_REQUEST is not offered (breaks R-I2C-02).
    pub no_zero_length: bool,
}

/// The reference virtio-i2c adapter.
#[derive(Clone, Debug)]
pub struct I2cDevice {
    regs: Vec<u8>,
    pointer: u8,
    /// The previous request failed with FAIL_NEXT set: this one fails too.
    fail_next: bool,
    faults: I2cFaults,
}

impl I2cDevice {
    /// An adapter whose client's registers read 0, breaking what `faults` says.
    pub fn new(faults: I2cFaults) -> Self {
        Self {
            regs: vec![0; 256],
            pointer: 0,
            fail_next: false,
            faults,
        }
    }

    /// Runs one segment: a write of `data`, or a read into `data`; whether the client answered.
    fn transfer(&mut self, addr: u16, read: bool, data: &mut [u8]) -> bool {
        if addr >> 1 != I2C_CLIENT_ADDR {
            return false;
        }
        if read {
            for b in data.iter_mut() {
                *b = self.regs[usize::from(self.pointer)];
                self.pointer = self.pointer.wrapping_add(1);
            }
        } else if let Some((&first, rest)) = data.split_first() {
            self.pointer = first;
            for &b in rest {
                self.regs[usize::from(self.pointer)] = b;
                self.pointer = self.pointer.wrapping_add(1);
            }
        }
        true
    }

    /// Serves one request; the status byte and the bytes of the read buffer (if any).
    fn request(&mut self, mem: &dyn GuestMemory, chain: &Chain) -> Option<(u8, Vec<u8>)> {
        let readable = Iov::of(chain.segments.iter().filter(|s| !s.writable));
        let writable = Iov::of(chain.segments.iter().filter(|s| s.writable));
        if readable.len() < 8 || writable.len() < 1 {
            return None;
        }
        let mut hdr = [0u8; 8];
        readable.read(mem, &mut hdr).ok()?;
        let addr = u16::from_le_bytes([hdr[0], hdr[1]]);
        let flags = u32::from_le_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        let read = flags & FLAGS_M_RD != 0;
        let len = if read {
            writable.len() - 1
        } else {
            readable.len() - 8
        };
        let mut data = vec![0u8; len.min(MAX_SEGMENT) as usize];
        if !read {
            let mut all = vec![0u8; 8 + data.len()];
            readable.read(mem, &mut all).ok()?;
            data.copy_from_slice(&all[8..]);
        }
        let failed_before = std::mem::take(&mut self.fail_next);
        let ok = !failed_before && self.transfer(addr, read, &mut data);
        if !ok && flags & FLAGS_FAIL_NEXT != 0 {
            self.fail_next = true;
        }
        let status = match (ok, self.faults.bad_status) {
            (_, true) => I2C_BAD_STATUS,
            (true, false) => MSG_OK,
            (false, false) => MSG_ERR,
        };
        Some((status, if read && ok { data } else { vec![] }))
    }
}

impl VirtioDevice for I2cDevice {
    fn device_id(&self) -> u32 {
        I2C_DEVICE_ID
    }

    fn num_queues(&self) -> u16 {
        1
    }

    /// VIRTIO_I2C_F_ZERO_LENGTH_REQUEST, which 5.19.6.2 makes mandatory.
    fn device_features(&self) -> u64 {
        let rings = crate::device::RING_FEATURES;
        if self.faults.no_zero_length {
            rings
        } else {
            rings | F_ZERO_LENGTH_REQUEST
        }
    }

    /// 5.19.6: the status goes in the last writable byte, read data before it; a chain too
    /// short for an out header and a status is used with length 0.
    fn serve(&mut self, _queue: u16, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        let writable = Iov::of(chain.segments.iter().filter(|s| s.writable));
        let Some((status, data)) = self.request(mem, chain) else {
            return 0;
        };
        let Some((buf, at)) = writable.split_last_byte() else {
            return 0;
        };
        if buf.write(mem, &data).is_err() || mem.write(at, &[status]).is_err() {
            return 0;
        }
        u32::try_from(writable.len()).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::anonymous;
    use crate::sg::testing::{chain_at as chain, read_at as read};

    fn hdr(addr: u16, flags: u32) -> Vec<u8> {
        let mut h = (addr << 1).to_le_bytes().to_vec();
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&flags.to_le_bytes());
        h
    }

    #[test]
    fn a_write_then_a_read_come_back_and_other_addresses_fail() {
        let mem = anonymous(0, 0x1000);
        let mut dev = I2cDevice::new(I2cFaults::default());
        mem.write(0, &hdr(0x20, 0)).unwrap();
        mem.write(8, &[0x10, 0xaa, 0xbb]).unwrap();
        let w = chain(&[(0, 8, false), (8, 3, false), (0x100, 1, true)]);
        assert_eq!(dev.serve(0, &mem, &w), 1);
        assert_eq!(read(&mem, 0x100, 1), vec![MSG_OK]);
        mem.write(0x20, &hdr(0x20, FLAGS_FAIL_NEXT)).unwrap();
        mem.write(0x28, &[0x10]).unwrap();
        let set = chain(&[(0x20, 8, false), (0x28, 1, false), (0x100, 1, true)]);
        dev.serve(0, &mem, &set);
        mem.write(0x40, &hdr(0x20, FLAGS_M_RD)).unwrap();
        let r = chain(&[(0x40, 8, false), (0x200, 2, true), (0x300, 1, true)]);
        assert_eq!(dev.serve(0, &mem, &r), 3);
        assert_eq!(read(&mem, 0x200, 2), vec![0xaa, 0xbb]);
        assert_eq!(read(&mem, 0x300, 1), vec![MSG_OK]);
        mem.write(0x40, &hdr(0x50, FLAGS_M_RD)).unwrap();
        dev.serve(0, &mem, &r);
        assert_eq!(read(&mem, 0x300, 1), vec![MSG_ERR]);
    }

    #[test]
    fn a_failed_request_fails_the_next_of_its_group_and_faults_break_it() {
        let mem = anonymous(0, 0x1000);
        let mut dev = I2cDevice::new(I2cFaults::default());
        mem.write(0, &hdr(0x50, FLAGS_FAIL_NEXT)).unwrap();
        mem.write(0x40, &hdr(0x20, FLAGS_M_RD)).unwrap();
        let first = chain(&[(0, 8, false), (0x100, 1, true)]);
        let second = chain(&[(0x40, 8, false), (0x200, 1, true), (0x300, 1, true)]);
        dev.serve(0, &mem, &first);
        dev.serve(0, &mem, &second);
        assert_eq!(read(&mem, 0x300, 1), vec![MSG_ERR]);
        dev.serve(0, &mem, &second);
        assert_eq!(read(&mem, 0x300, 1), vec![MSG_OK]);
        let bad = I2cFaults {
            bad_status: true,
            ..I2cFaults::default()
        };
        I2cDevice::new(bad).serve(0, &mem, &second);
        assert_eq!(read(&mem, 0x300, 1), vec![I2C_BAD_STATUS]);
        let no_zero = I2cFaults {
            no_zero_length: true,
            ..I2cFaults::default()
        };
        assert_eq!(I2cDevice::new(no_zero).device_features() & 1, 0);
        assert_eq!(dev.device_features() & 1, 1);
    }
}
