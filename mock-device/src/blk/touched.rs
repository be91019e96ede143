//! Which blocks of the RAM disk may hold a non-zero byte. A save reads only those and a load
//! zeroes only those: a scan of the whole 64 MiB disk faults in every untouched page first
//! (about 20 ms in a debug build, far more under load), and the save happens before the reply
//! to SET_DEVICE_STATE_FD.

use std::ops::Range;

/// Granularity of the map and of the saved state's sparse disk.
pub(super) const BLOCK: usize = 4096;

/// One bit per [`BLOCK`] of the disk: set once a write may have left data there.
#[derive(Clone, Debug)]
pub(super) struct Touched {
    words: Vec<u64>,
}

impl Touched {
    /// A map of a `disk_len`-byte disk with no block touched.
    pub(super) fn new(disk_len: usize) -> Self {
        Self {
            words: vec![0; disk_len.div_ceil(BLOCK).div_ceil(64)],
        }
    }

    /// Marks every block `bytes` overlaps.
    pub(super) fn mark(&mut self, bytes: Range<usize>) {
        if bytes.is_empty() {
            return;
        }
        for block in bytes.start / BLOCK..=(bytes.end - 1) / BLOCK {
            if let Some(w) = self.words.get_mut(block / 64) {
                *w |= 1 << (block % 64);
            }
        }
    }

    /// Marks every block (the disk was handed out for arbitrary writes).
    pub(super) fn mark_all(&mut self) {
        self.words.fill(u64::MAX);
    }

    /// Forgets every mark (the disk is all zeroes again).
    pub(super) fn clear(&mut self) {
        self.words.fill(0);
    }

    /// The marked blocks' indexes, in increasing order (may run past a disk whose length is
    /// not a multiple of 64 blocks after `mark_all`; callers bound them by the disk).
    pub(super) fn blocks(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            (0..64)
                .filter(move |b| w & (1 << b) != 0)
                .map(move |b| i * 64 + b)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_cover_the_blocks_a_range_overlaps_and_nothing_else() {
        let mut t = Touched::new(1 << 20);
        t.mark(BLOCK - 1..BLOCK + 1);
        t.mark(70 * BLOCK..70 * BLOCK);
        t.mark(100 * BLOCK + 5..100 * BLOCK + 6);
        assert_eq!(t.blocks().collect::<Vec<_>>(), [0, 1, 100]);
        t.clear();
        assert_eq!(t.blocks().count(), 0);
        t.mark_all();
        assert_eq!(t.blocks().count(), 256);
    }
}
