//! virtio-rng (virtio 1.2 section 5.4): one requestq; the device fills each chain's
//! device-writable buffers with random bytes and reports how many it wrote. No config space,
//! no device feature bits.

use crate::blk::iov::Iov;
use crate::chain::Chain;
use crate::device::VirtioDevice;
use crate::memory::GuestMemory;

/// The virtio device id of an entropy source (virtio 1.2 section 5).
pub const RNG_DEVICE_ID: u32 = 4;
/// The most bytes one request gets. Why: 5.4.6.1 lets the device use less than the whole
/// buffer, and bounding it bounds the work a huge buffer asks for.
pub const RNG_MAX_PER_REQUEST: u32 = 64 << 10;
/// How far past the buffer the `used_len_past_buffer` fault claims to have written.
pub const RNG_PAST_BUFFER: u32 = 16;

/// Deliberate departures of the rng device (the back-end's fault modes; default: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RngFaults {
    /// The used length is the buffer size plus [`RNG_PAST_BUFFER`] (breaks R-DEV-02).
    pub used_len_past_buffer: bool,
    /// Nothing is written and the used length is 0 (breaks R-RNG-01).
    pub zero_len: bool,
    /// Every byte written is 0x00 (breaks R-RNG-02, a SHOULD).
    pub constant: bool,
}

/// A fast PRNG (splitmix64) seeded once from `/dev/urandom`. Why not the kernel for every
/// request: the bytes only have to look random to a driver, and the data path stays fast.
#[derive(Clone, Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn from_urandom() -> Self {
        let mut seed = [0u8; 8];
        let read = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
        let seed = match read {
            Ok(()) => u64::from_ne_bytes(seed),
            // No /dev/urandom (a sandbox): the clock and the pid still differ run to run.
            Err(_) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                now ^ u64::from(std::process::id()).rotate_left(32)
            }
        };
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// The reference virtio-rng device.
#[derive(Clone, Debug)]
pub struct RngDevice {
    prng: SplitMix,
    faults: RngFaults,
}

impl RngDevice {
    /// A device seeded from `/dev/urandom`, breaking what `faults` says.
    pub fn new(faults: RngFaults) -> Self {
        Self {
            prng: SplitMix::from_urandom(),
            faults,
        }
    }
}

impl VirtioDevice for RngDevice {
    fn device_id(&self) -> u32 {
        RNG_DEVICE_ID
    }

    fn num_queues(&self) -> u16 {
        1
    }

    /// 5.4.6.1: one or more random bytes into the writable buffers (at most
    /// [`RNG_MAX_PER_REQUEST`]); readable buffers are ignored.
    fn serve(&mut self, _queue: u16, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        let writable = Iov::of(chain.segments.iter().filter(|s| s.writable));
        let total = u32::try_from(writable.len()).unwrap_or(u32::MAX);
        if self.faults.zero_len {
            return 0;
        }
        let n = total.min(RNG_MAX_PER_REQUEST);
        let mut bytes = vec![0u8; n as usize];
        if !self.faults.constant {
            self.prng.fill(&mut bytes);
        }
        if writable.write(mem, &bytes).is_err() {
            // The chain was checked when it was taken; memory removed since: nothing written.
            return 0;
        }
        if self.faults.used_len_past_buffer {
            return total.saturating_add(RNG_PAST_BUFFER);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::anonymous;

    use crate::sg::testing::{chain_at as chain, read_at as read};

    #[test]
    fn writable_buffers_get_random_bytes_and_readable_ones_stay() {
        let mem = anonymous(0, 0x4000);
        mem.write(0, &[0xAB; 16]).unwrap();
        let mut dev = RngDevice::new(RngFaults::default());
        let c = chain(&[(0, 16, false), (0x100, 100, true), (0x1000, 4000, true)]);
        assert_eq!(dev.serve(0, &mem, &c), 4100);
        assert_eq!(read(&mem, 0, 16), vec![0xAB; 16]);
        let a = read(&mem, 0x1000, 4000);
        assert!(a.iter().any(|&b| b != a[0]), "not all one value");
        dev.serve(0, &mem, &c);
        assert_ne!(
            read(&mem, 0x1000, 4000),
            a,
            "a second request repeats the first"
        );
        assert_eq!(dev.config(), Vec::<u8>::new());
    }

    #[test]
    fn a_huge_buffer_gets_part_of_it_and_faults_break_it() {
        let mem = anonymous(0, 0x40000);
        let big = chain(&[(0, 0x30000, true)]);
        let mut dev = RngDevice::new(RngFaults::default());
        assert_eq!(dev.serve(0, &mem, &big), RNG_MAX_PER_REQUEST);
        let small = chain(&[(0, 32, true)]);
        let past = RngFaults {
            used_len_past_buffer: true,
            ..RngFaults::default()
        };
        assert_eq!(RngDevice::new(past).serve(0, &mem, &small), 48);
        let zero = RngFaults {
            zero_len: true,
            ..RngFaults::default()
        };
        assert_eq!(RngDevice::new(zero).serve(0, &mem, &small), 0);
        let constant = RngFaults {
            constant: true,
            ..RngFaults::default()
        };
        assert_eq!(RngDevice::new(constant).serve(0, &mem, &small), 32);
        assert_eq!(read(&mem, 0, 32), vec![0; 32]);
    }
}
