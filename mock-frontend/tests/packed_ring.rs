//! The packed-ring driver (virtio 1.2 section 2.8) against a tiny in-test device that maps the
//! region memfds itself, finds the rings by the user addresses SET_VRING_ADDR would carry, and
//! follows the spec's avail/used flag bits and wrap counters: chains of several descriptors and
//! indirect tables, over enough requests to wrap the ring several times.

mod common;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use vhu_mock_frontend::{Buffer, DriverQueue, GuestMemory, RingLayout};
use vhu_protocol::virtio::{
    PackedDesc, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_USED,
    VIRTQ_DESC_F_WRITE,
};
use zerocopy::{FromBytes, IntoBytes};

use common::{BackendMemory, map_region};

const T: Duration = Duration::from_secs(3);

/// The device's side of one packed ring.
struct Device {
    mem: BackendMemory,
    desc: u64,
    size: u16,
    next: u16,
    wrap: bool,
}

impl Device {
    fn desc_at(&self, slot: u16) -> PackedDesc {
        let mut raw = [0u8; 16];
        self.mem
            .read(self.desc + 16 * u64::from(slot), &mut raw, true);
        PackedDesc::read_from_bytes(&raw).unwrap()
    }

    fn available(&self) -> bool {
        let f = self.desc_at(self.next).flags;
        (f & VIRTQ_DESC_F_AVAIL != 0) == self.wrap && (f & VIRTQ_DESC_F_USED != 0) != self.wrap
    }

    fn step(&mut self) {
        self.next += 1;
        if self.next == self.size {
            self.next = 0;
            self.wrap = !self.wrap;
        }
    }

    /// Serves one available chain: uppercases what it reads into what it may write. Returns
    /// false when nothing is available.
    fn serve_one(&mut self) -> bool {
        if !self.available() {
            return false;
        }
        fence(Ordering::Acquire);
        let head_slot = self.next;
        let mut descs = vec![];
        loop {
            let d = self.desc_at(self.next);
            self.step();
            if d.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                for k in 0..u64::from(d.len / 16) {
                    let mut raw = [0u8; 16];
                    self.mem.read(d.addr + 16 * k, &mut raw, false);
                    descs.push(PackedDesc::read_from_bytes(&raw).unwrap());
                }
            } else {
                descs.push(d);
            }
            if d.flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
        }
        let id = self.desc_at_last_id(&descs);
        let mut input = vec![];
        let mut written = 0u32;
        for d in &descs {
            let mut buf = vec![0u8; d.len as usize];
            if d.flags & VIRTQ_DESC_F_WRITE == 0 {
                self.mem.read(d.addr, &mut buf, false);
                input.extend(buf);
            } else {
                let out = input.to_ascii_uppercase();
                self.mem.write(d.addr, &out[..d.len as usize], false);
                written += d.len;
            }
        }
        // The used descriptor goes where the chain's head was: id and length, then the flags.
        let used = PackedDesc {
            addr: 0,
            len: written,
            id,
            flags: 0,
        };
        let at = self.desc + 16 * u64::from(head_slot);
        self.mem.write(at, &used.as_bytes()[..14], true);
        fence(Ordering::Release);
        let wrap_bits = if self.used_wrap_for(head_slot) {
            VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
        } else {
            0
        };
        self.mem.write(at + 14, &wrap_bits.to_le_bytes(), true);
        true
    }

    /// The buffer id: the driver writes it in the chain's descriptors (the last one counts).
    fn desc_at_last_id(&self, descs: &[PackedDesc]) -> u16 {
        // Indirect entries carry no id: the ring descriptor does, and it is the one just before
        // `next`.
        let prev = if self.next == 0 {
            self.size - 1
        } else {
            self.next - 1
        };
        let ring = self.desc_at(prev);
        if ring.flags & VIRTQ_DESC_F_INDIRECT != 0 {
            ring.id
        } else {
            descs.last().unwrap().id
        }
    }

    /// In this device used descriptors are written in place of the chain's head, in order, so
    /// the used wrap counter is the one the head slot was made available with.
    fn used_wrap_for(&self, head_slot: u16) -> bool {
        // `next` is past the chain: if it wrapped since the head, the head belongs to the
        // previous lap.
        if self.next > head_slot {
            self.wrap
        } else {
            !self.wrap
        }
    }
}

fn device_thread(mut dev: Device, kick: OwnedFd, call: OwnedFd, stop: Arc<AtomicBool>) -> usize {
    let mut served = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = [PollFd::new(kick.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut pfd, PollTimeout::from(20u16));
        let mut b = [0u8; 8];
        let _ = nix::unistd::read(&kick, &mut b);
        let mut any = false;
        while dev.serve_one() {
            served += 1;
            any = true;
        }
        if any {
            nix::unistd::write(&call, &1u64.to_ne_bytes()).unwrap();
        }
    }
    served
}

fn chain(mem: &mut GuestMemory, text: &[u8], parts: usize) -> (Vec<Buffer>, u64) {
    let mut bufs = vec![];
    let step = text.len().div_ceil(parts);
    for piece in text.chunks(step) {
        let gpa = mem.alloc(piece.len() as u64, 8).unwrap();
        mem.write(gpa, piece).unwrap();
        bufs.push(Buffer {
            gpa,
            len: piece.len() as u32,
            writable: false,
        });
    }
    let back = mem.alloc(text.len() as u64, 8).unwrap();
    mem.fill(back, text.len() as u64, 0).unwrap();
    bufs.push(Buffer {
        gpa: back,
        len: text.len() as u32,
        writable: true,
    });
    (bufs, back)
}

#[test]
fn packed_chains_and_indirect_tables_complete_across_several_wraps() {
    let mut mem = GuestMemory::new(&GuestMemory::default_layout(4 << 20)).unwrap();
    mem.alloc(2 << 20, 4096).unwrap();
    let size = 5;
    let mut q = DriverQueue::new(&mut mem, 0, size, RingLayout::Packed, false).unwrap();
    let base = q.initial_base();
    assert_eq!(base, 0x8000, "both wrap counters start at 1");
    q.set_base(&mem, base).unwrap();
    assert_eq!(q.base_word(base), 0x8000_8000);

    let addr = q.vring_addr(&mem);
    let regions = mem
        .regions()
        .iter()
        .map(|r| map_region(r.mem_region(), r.fd()));
    let dev = Device {
        mem: BackendMemory(regions.collect()),
        desc: addr.desc,
        size,
        next: 0,
        wrap: true,
    };
    let kick = q.kick.as_fd().try_clone_to_owned().unwrap();
    let call = q.call.as_fd().try_clone_to_owned().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let device = std::thread::spawn(move || device_thread(dev, kick, call, st));

    let mut slots_total = 0;
    for round in 0..12 {
        let mark = mem.mark();
        let text = format!("request number {round}");
        let indirect = round % 3 == 2;
        let parts = 1 + round % 3;
        let (bufs, back) = chain(&mut mem, text.as_bytes(), parts);
        let id = if indirect {
            q.add_indirect(&mut mem, &bufs).unwrap()
        } else {
            q.add_chain(&mem, &bufs).unwrap()
        };
        slots_total += if indirect { 1 } else { bufs.len() };
        q.publish(&mem).unwrap();
        q.kick();
        let used = q.wait_used(&mem, 1, T).unwrap();
        assert_eq!(used[0].id, u32::from(id), "round {round}");
        assert_eq!(used[0].len as usize, text.len(), "round {round}");
        let mut got = vec![0u8; text.len()];
        mem.read(back, &mut got).unwrap();
        assert_eq!(got, text.to_ascii_uppercase().into_bytes(), "round {round}");
        mem.release(mark);
    }
    assert!(
        slots_total > 4 * usize::from(size),
        "the ring wrapped several times"
    );
    let expected_wrap = (slots_total / usize::from(size)) % 2 == 0;
    let expected = (slots_total % usize::from(size)) as u16 | u16::from(expected_wrap) << 15;
    assert_eq!(q.avail_idx(), expected, "next slot and wrap counter");
    assert_eq!(q.used_idx(&mem), expected);
    assert!(q.calls >= 12);

    // Two chains at once: both complete, in one wait.
    let (a, _) = chain(&mut mem, b"first", 1);
    let (b, _) = chain(&mut mem, b"second", 2);
    q.add_chain(&mem, &a).unwrap();
    q.add_chain(&mem, &b).unwrap();
    q.publish(&mem).unwrap();
    q.kick();
    let used = q.wait_used(&mem, 2, T).unwrap();
    assert_eq!((used[0].len, used[1].len), (5, 6));

    stop.store(true, Ordering::Relaxed);
    assert_eq!(device.join().unwrap(), 14);
}

#[test]
fn a_packed_chain_longer_than_the_free_slots_is_refused() {
    let mut mem = GuestMemory::new(&GuestMemory::single_layout(1 << 20)).unwrap();
    let mut q = DriverQueue::new(&mut mem, 0, 4, RingLayout::Packed, false).unwrap();
    let buf = Buffer {
        gpa: 0x8000,
        len: 8,
        writable: true,
    };
    q.add_chain(&mem, &[buf; 3]).unwrap();
    assert!(q.add_chain(&mem, &[buf; 2]).is_err(), "only one slot left");
    q.add_chain(&mem, &[buf]).unwrap();
    assert!(q.add_indirect(&mut mem, &[buf; 2]).is_err(), "no slot left");
}
