//! A list of guest buffers read or written as one byte stream (virtio 1.2 section 2.6.4: a
//! request may be split across descriptors at any byte).

use crate::chain::Segment;
use crate::memory::{GuestMemory, MemError};

/// Guest ranges treated as one contiguous stream.
#[derive(Clone, Debug, Default)]
pub(crate) struct Iov {
    parts: Vec<(u64, u64)>,
}

impl Iov {
    /// The stream made of `segments` in order.
    pub(crate) fn of<'a>(segments: impl IntoIterator<Item = &'a Segment>) -> Self {
        let parts = segments
            .into_iter()
            .map(|s| (s.gpa, u64::from(s.len)))
            .collect();
        Self { parts }
    }

    /// Total length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.parts.iter().map(|p| p.1).sum()
    }

    /// The stream without its last byte, and the address of that byte.
    pub(crate) fn split_last_byte(&self) -> Option<(Iov, u64)> {
        let mut parts = self.parts.clone();
        while parts.last().is_some_and(|p| p.1 == 0) {
            parts.pop();
        }
        let last = parts.last_mut()?;
        last.1 -= 1;
        let at = last.0 + last.1;
        Some((Self { parts }, at))
    }

    /// The stream from byte `skip` on.
    pub(crate) fn skip(&self, skip: u64) -> Iov {
        let mut left = skip;
        let mut parts = Vec::new();
        for &(gpa, len) in &self.parts {
            if left >= len {
                left -= len;
                continue;
            }
            parts.push((gpa + left, len - left));
            left = 0;
        }
        Self { parts }
    }

    /// The end address of the last non-empty part.
    pub(crate) fn end(&self) -> Option<u64> {
        self.parts.iter().rev().find(|p| p.1 > 0).map(|p| p.0 + p.1)
    }

    /// Fills `buf` from the start of the stream (`buf` must not be longer than the stream).
    pub(crate) fn read(&self, mem: &dyn GuestMemory, buf: &mut [u8]) -> Result<(), MemError> {
        let mut done = 0usize;
        for &(gpa, len) in &self.parts {
            if done == buf.len() {
                break;
            }
            let n = (buf.len() - done).min(usize::try_from(len).unwrap_or(usize::MAX));
            mem.read(gpa, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Writes `data` from the start of the stream (`data` must not be longer than the stream).
    pub(crate) fn write(&self, mem: &dyn GuestMemory, data: &[u8]) -> Result<(), MemError> {
        let mut done = 0usize;
        for &(gpa, len) in &self.parts {
            if done == data.len() {
                break;
            }
            let n = (data.len() - done).min(usize::try_from(len).unwrap_or(usize::MAX));
            mem.write(gpa, &data[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::anonymous;

    fn seg(gpa: u64, len: u32) -> Segment {
        Segment {
            gpa,
            len,
            writable: true,
        }
    }

    #[test]
    fn stream_crosses_segment_boundaries() {
        let mem = anonymous(0, 0x100);
        let iov = Iov::of(&[seg(0x10, 3), seg(0x40, 0), seg(0x80, 5)]);
        assert_eq!(iov.len(), 8);
        iov.write(&mem, b"abcdefgh").unwrap();
        let mut b = [0u8; 8];
        iov.read(&mem, &mut b).unwrap();
        assert_eq!(&b, b"abcdefgh");
        let mut b = [0u8; 4];
        iov.skip(2).read(&mem, &mut b).unwrap();
        assert_eq!(&b, b"cdef");
        let (data, status) = iov.split_last_byte().unwrap();
        assert_eq!((data.len(), status), (7, 0x84));
        assert_eq!(data.end(), Some(0x84));
    }
}
