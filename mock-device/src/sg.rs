//! A chain's buffers as two byte streams, the way fs and vsock read requests and write replies
//! (virtio 1.2 section 2.6.4: a message may be split across descriptors at any byte).

use crate::chain::Chain;
use crate::memory::{GuestMemory, MemError};

/// Total bytes of the chain's driver-readable buffers.
pub(crate) fn readable_len(chain: &Chain) -> u64 {
    chain
        .segments
        .iter()
        .filter(|s| !s.writable)
        .map(|s| u64::from(s.len))
        .sum()
}

/// Up to `cap` bytes from the start of the driver-readable buffers.
pub(crate) fn read_readable(
    mem: &dyn GuestMemory,
    chain: &Chain,
    cap: usize,
) -> Result<Vec<u8>, MemError> {
    let mut out = Vec::new();
    for s in chain.segments.iter().filter(|s| !s.writable) {
        let left = cap - out.len();
        if left == 0 {
            break;
        }
        let n = left.min(s.len as usize);
        let at = out.len();
        out.resize(at + n, 0);
        mem.read(s.gpa, &mut out[at..])?;
    }
    Ok(out)
}

/// Writes as much of `data` as the device-writable buffers hold, from their start, and
/// returns the bytes written (the used length).
pub(crate) fn write_writable(
    mem: &dyn GuestMemory,
    chain: &Chain,
    data: &[u8],
) -> Result<u32, MemError> {
    let mut done = 0usize;
    for s in chain.segments.iter().filter(|s| s.writable) {
        if done == data.len() {
            break;
        }
        let n = (data.len() - done).min(s.len as usize);
        mem.write(s.gpa, &data[done..done + n])?;
        done += n;
    }
    // Why: a chain never exceeds 4 GiB (ChainBuilder), so `done` fits.
    Ok(u32::try_from(done).unwrap_or(u32::MAX))
}

#[cfg(test)]
pub(crate) mod testing {
    //! Hand-built chains over a [`GuestMemoryMmap`] for the device tests.
    use crate::chain::{Chain, Segment};
    use crate::memory::{GuestMemory, anonymous};
    use vm_memory::GuestMemoryMmap;

    /// A chain of `(gpa, len, writable)` segments at fixed addresses.
    pub(crate) fn chain_at(segments: &[(u64, u32, bool)]) -> Chain {
        Chain {
            segments: segments
                .iter()
                .map(|&(gpa, len, writable)| Segment { gpa, len, writable })
                .collect(),
            ..Chain::default()
        }
    }

    /// `len` bytes of `mem` at `gpa`.
    pub(crate) fn read_at(mem: &GuestMemoryMmap, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0; len];
        mem.read(gpa, &mut b).unwrap();
        b
    }

    /// Lays buffers out one after another in one region and builds chains over them.
    pub(crate) struct Builder {
        pub(crate) mem: GuestMemoryMmap,
        next: u64,
    }

    impl Builder {
        /// 1 MiB of guest memory at 0x10000.
        pub(crate) fn new() -> Self {
            Self {
                mem: anonymous(0x10000, 1 << 20),
                next: 0x10000,
            }
        }

        fn alloc(&mut self, len: u32) -> u64 {
            let at = self.next;
            self.next += u64::from(len).div_ceil(64) * 64 + 64;
            assert!(self.next < 0x10000 + (1 << 20), "test memory exhausted");
            at
        }

        /// A chain of one readable buffer per item of `readable`, then writable buffers of
        /// the given sizes.
        pub(crate) fn chain(&mut self, readable: &[&[u8]], writable: &[u32]) -> Chain {
            let mut segments = Vec::new();
            for r in readable {
                let len = u32::try_from(r.len()).unwrap();
                let gpa = self.alloc(len);
                self.mem.write(gpa, r).unwrap();
                segments.push(Segment {
                    gpa,
                    len,
                    writable: false,
                });
            }
            for &len in writable {
                let gpa = self.alloc(len);
                segments.push(Segment {
                    gpa,
                    len,
                    writable: true,
                });
            }
            Chain {
                head: 0,
                id: 0,
                descriptors: u16::try_from(segments.len()).unwrap(),
                segments,
            }
        }

        /// The first `len` bytes of the chain's writable buffers, in order.
        pub(crate) fn written(&self, chain: &Chain, len: u32) -> Vec<u8> {
            let mut out = Vec::new();
            for s in chain.segments.iter().filter(|s| s.writable) {
                let n = (len as usize - out.len()).min(s.len as usize);
                let at = out.len();
                out.resize(at + n, 0);
                self.mem.read(s.gpa, &mut out[at..]).unwrap();
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Builder;
    use super::*;

    #[test]
    fn streams_cross_buffer_boundaries() {
        let mut b = Builder::new();
        let c = b.chain(&[b"abc", b"defg"], &[3, 5]);
        assert_eq!(readable_len(&c), 7);
        assert_eq!(read_readable(&b.mem, &c, 5).unwrap(), b"abcde");
        assert_eq!(read_readable(&b.mem, &c, 100).unwrap(), b"abcdefg");
        assert_eq!(write_writable(&b.mem, &c, b"0123456789").unwrap(), 8);
        assert_eq!(b.written(&c, 8), b"01234567");
    }
}
