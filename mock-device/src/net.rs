//! virtio-net (virtio 1.2 section 5.1) as a loopback port: queues receiveq0 = 0,
//! transmitq0 = 1, controlq = 2. Every transmitted frame is queued (a bounded backlog) and
//! delivered on the receive queue as soon as the driver has a buffer for it. The layouts are
//! this crate's own reading of the spec (the harness has its own in `vhu-protocol`).

use std::collections::VecDeque;

use vhu_protocol::wire::VirtioFeatures;

use crate::blk::iov::Iov;
use crate::chain::Chain;
use crate::device::VirtioDevice;
use crate::memory::GuestMemory;

/// The virtio device id of a network card (virtio 1.2 section 5).
pub const NET_DEVICE_ID: u32 = 1;
/// receiveq0.
pub const NET_RX: u16 = 0;
/// transmitq0.
pub const NET_TX: u16 = 1;
/// controlq (with CTRL_VQ, after the single queue pair: 5.1.2).
pub const NET_CTRL: u16 = 2;

/// Feature bits (5.1.3).
const F_MTU: u64 = 1 << 3;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MAC: u64 = 1 << 5;
const F_MRG_RXBUF: u64 = 1 << 15;
const F_STATUS: u64 = 1 << 16;
const F_CTRL_VQ: u64 = 1 << 17;
const F_CTRL_RX: u64 = 1 << 18;

/// `struct virtio_net_hdr_v1` (5.1.6): flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers; 12 bytes with VERSION_1.
pub const NET_HDR_LEN: usize = 12;
/// The legacy header without `num_buffers` (what the `rx_legacy_header` fault writes).
const LEGACY_HDR_LEN: usize = 10;
/// Offset of `num_buffers` in the header.
const HDR_NUM_BUFFERS: usize = 10;
/// `VIRTIO_NET_HDR_F_DATA_VALID` (5.1.6): what the `rx_csum_flag` fault sets.
const HDR_F_DATA_VALID: u8 = 2;

/// The config space (5.1.4): `mac[6]`, status u16, max_virtqueue_pairs u16, mtu u16.
pub const NET_CONFIG_SIZE: usize = 12;
/// The MAC address: locally administered (bit 1 of the first octet), unicast.
pub const NET_MAC: [u8; 6] = [0x02, 0x76, 0x68, 0x75, 0x00, 0x01];
/// The MTU in config (with VIRTIO_NET_F_MTU).
pub const NET_MTU: u16 = 1500;
/// `VIRTIO_NET_S_LINK_UP`.
const S_LINK_UP: u16 = 1;

/// Frames waiting for a receive buffer. Why bounded: a driver that transmits without ever
/// posting receive buffers must not grow the back-end without limit; dropping is what a
/// network does when it is full.
pub const NET_BACKLOG: usize = 256;
/// The largest frame looped back (a 64 KiB GSO-sized frame plus an Ethernet header); longer
/// ones are dropped.
const MAX_FRAME: usize = 65_550;
/// The most receive chains one packet is spread over with MRG_RXBUF. Why: a frame bigger than
/// every buffer the driver will ever post must not block the frames behind it for good.
pub const MAX_MERGE: usize = 64;

/// Control classes and commands (5.1.6.5).
const CTRL_CLASS_RX: u8 = 0;
const CTRL_RX_PROMISC: u8 = 0;
const CTRL_RX_ALLMULTI: u8 = 1;
/// `VIRTIO_NET_OK` and `VIRTIO_NET_ERR`.
pub const NET_OK: u8 = 0;
/// See [`NET_OK`].
pub const NET_ERR: u8 = 1;

/// Deliberate departures of the net device (the back-end's fault modes; default: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetFaults {
    /// Received frames get the 10-byte legacy header (breaks R-NET-02).
    pub rx_legacy_header: bool,
    /// Received headers carry `num_buffers` 0 (breaks R-NET-03).
    pub num_buffers_0: bool,
    /// Transmit chains are used with the frame's length instead of 0 (breaks R-NET-01).
    pub tx_used_len: bool,
    /// Control chains are used with length 0 and no ack byte written (breaks R-NET-06).
    pub ctrl_no_ack: bool,
    /// Received headers carry DATA_VALID without GUEST_CSUM negotiated (breaks R-NET-04).
    pub rx_csum_flag: bool,
}

/// The reference virtio-net device: a loopback port.
#[derive(Clone, Debug)]
pub struct NetDevice {
    faults: NetFaults,
    features: u64,
    backlog: VecDeque<Vec<u8>>,
    /// Receive chains taken from receiveq0 and not yet filled.
    held: Vec<Chain>,
    /// Frames dropped (backlog full, too long, or too big for the receive chains).
    dropped: u64,
    promisc: bool,
    allmulti: bool,
}

impl NetDevice {
    /// A loopback port with nothing queued, breaking what `faults` says.
    pub fn new(faults: NetFaults) -> Self {
        Self {
            faults,
            features: 0,
            backlog: VecDeque::new(),
            held: Vec::new(),
            dropped: 0,
            promisc: false,
            allmulti: false,
        }
    }

    /// Frames dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The receive mode the driver set: (promiscuous, all-multicast). A loopback port delivers
    /// every frame either way; the mode is kept only to answer the commands truthfully.
    pub fn rx_mode(&self) -> (bool, bool) {
        (self.promisc, self.allmulti)
    }

    /// Frames waiting for a receive buffer.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    fn negotiated(&self, bit: u64) -> bool {
        self.features & bit != 0
    }

    /// 5.1.6.2: the header and the frame are driver-readable; the frame is queued for receive
    /// and nothing is written, so the used length is 0.
    fn transmit(&mut self, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        let readable = Iov::of(chain.segments.iter().filter(|s| !s.writable));
        let total = usize::try_from(readable.len()).unwrap_or(usize::MAX);
        let frame_len = total.saturating_sub(NET_HDR_LEN);
        let used = if self.faults.tx_used_len {
            u32::try_from(frame_len).unwrap_or(u32::MAX)
        } else {
            0
        };
        if total <= NET_HDR_LEN || frame_len > MAX_FRAME || self.backlog.len() >= NET_BACKLOG {
            self.dropped += 1;
            return used;
        }
        let mut frame = vec![0u8; frame_len];
        match readable.skip(NET_HDR_LEN as u64).read(mem, &mut frame) {
            Ok(()) => self.backlog.push_back(frame),
            Err(_) => self.dropped += 1,
        }
        used
    }

    /// The receive header the device writes: flags 0 and gso NONE (nothing negotiated allows
    /// more, 5.1.6.4.1) and `num_buffers`, the chains the packet spans.
    fn rx_header(&self, num_buffers: u16) -> Vec<u8> {
        let mut h = vec![0u8; NET_HDR_LEN];
        if self.faults.rx_csum_flag && !self.negotiated(F_GUEST_CSUM) {
            h[0] = HDR_F_DATA_VALID;
        }
        let num_buffers = if self.faults.num_buffers_0 {
            0
        } else {
            num_buffers
        };
        h[HDR_NUM_BUFFERS..].copy_from_slice(&num_buffers.to_le_bytes());
        if self.faults.rx_legacy_header {
            h.truncate(LEGACY_HDR_LEN);
        }
        h
    }

    /// Delivers queued frames into the receive chains held, oldest first; the chains
    /// completed. 5.1.6.4: without MRG_RXBUF a packet goes into one chain, the first held one
    /// it fits (the driver SHOULD post buffers of at least 1526 bytes, 5.1.6.3.1); with it,
    /// into the fewest held chains in order that hold it, `num_buffers` saying how many. A
    /// frame that does not fit waits for more chains, and is dropped once [`MAX_MERGE`] held
    /// chains cannot take it.
    fn deliver(&mut self, mem: &dyn GuestMemory) -> Vec<(Chain, u32)> {
        let mut done = Vec::new();
        while let Some(frame) = self.backlog.front() {
            let need = self.rx_header(1).len() + frame.len();
            let room = |c: &Chain| usize::try_from(c.writable_len()).unwrap_or(usize::MAX);
            let fit = if self.negotiated(F_MRG_RXBUF) {
                let mut sum = 0usize;
                let k = self.held.iter().position(|c| {
                    sum = sum.saturating_add(room(c));
                    sum >= need
                });
                k.map(|k| (0, k + 1))
            } else {
                self.held
                    .iter()
                    .position(|c| room(c) >= need)
                    .map(|i| (i, 1))
            };
            let take = match fit {
                Some(t) => Some(t),
                None if self.held.len() >= MAX_MERGE => None,
                None => break, // More chains may come.
            };
            let frame = self.backlog.pop_front().unwrap_or_default();
            let Some((first, n)) = take else {
                self.dropped += 1;
                continue;
            };
            let chains: Vec<Chain> = self.held.drain(first..first + n).collect();
            let packet = [self.rx_header(n as u16).as_slice(), &frame].concat();
            let mut at = 0usize;
            for chain in chains {
                let writable = Iov::of(chain.segments.iter().filter(|s| s.writable));
                let part = room(&chain).min(packet.len() - at);
                let len = match writable.write(mem, &packet[at..at + part]) {
                    Ok(()) => part,
                    Err(_) => 0, // Memory gone since the chain was taken: nothing written.
                };
                at += part;
                done.push((chain, u32::try_from(len).unwrap_or(u32::MAX)));
            }
        }
        done
    }

    /// 5.1.6.5: `{u8 class, u8 command, data...}` readable, the ack byte the last writable
    /// byte. Known: RX class PROMISC and ALLMULTI with one data byte (CTRL_RX negotiated);
    /// everything else answers VIRTIO_NET_ERR.
    fn control(&mut self, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        let readable = Iov::of(chain.segments.iter().filter(|s| !s.writable));
        let writable = Iov::of(chain.segments.iter().filter(|s| s.writable));
        let Some((_, ack_at)) = writable.split_last_byte() else {
            return 0; // No byte to answer in.
        };
        if self.faults.ctrl_no_ack {
            return 0;
        }
        let mut cmd = [0u8; 3];
        let len = usize::try_from(readable.len()).unwrap_or(usize::MAX);
        let ack = if len == 3 && readable.read(mem, &mut cmd).is_ok() {
            self.command(cmd[0], cmd[1], cmd[2])
        } else {
            NET_ERR
        };
        match mem.write(ack_at, &[ack]) {
            Ok(()) => 1,
            Err(_) => 0,
        }
    }

    fn command(&mut self, class: u8, command: u8, on: u8) -> u8 {
        if class != CTRL_CLASS_RX || !self.negotiated(F_CTRL_RX) {
            return NET_ERR;
        }
        match command {
            CTRL_RX_PROMISC => self.promisc = on != 0,
            CTRL_RX_ALLMULTI => self.allmulti = on != 0,
            _ => return NET_ERR,
        }
        NET_OK
    }
}

impl VirtioDevice for NetDevice {
    fn device_id(&self) -> u32 {
        NET_DEVICE_ID
    }

    fn num_queues(&self) -> u16 {
        3
    }

    /// MAC, STATUS, MTU, MRG_RXBUF,
    /// CTRL_VQ, CTRL_RX, VERSION_1 and the ring layouts the queue code drives.
    fn device_features(&self) -> u64 {
        let ring = VirtioFeatures::VERSION_1
            | VirtioFeatures::INDIRECT_DESC
            | VirtioFeatures::EVENT_IDX
            | VirtioFeatures::RING_PACKED;
        F_MAC | F_STATUS | F_MTU | F_MRG_RXBUF | F_CTRL_VQ | F_CTRL_RX | ring.bits()
    }

    fn set_features(&mut self, features: u64) {
        self.features = features;
    }

    fn config(&self) -> Vec<u8> {
        let mut c = Vec::with_capacity(NET_CONFIG_SIZE);
        c.extend_from_slice(&NET_MAC);
        c.extend_from_slice(&S_LINK_UP.to_le_bytes());
        c.extend_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        c.extend_from_slice(&NET_MTU.to_le_bytes());
        c
    }

    /// The receive queue only while a frame waits (for chains to hold it); the others always.
    fn ready(&self, queue: u16) -> bool {
        queue != NET_RX || !self.backlog.is_empty()
    }

    /// A disabled transmitq is drained and its frames dropped; a disabled receiveq supplies
    /// nothing.
    fn discard_while_disabled(&self, queue: u16) -> bool {
        queue == NET_TX
    }

    /// Receive chains are gathered: held until a frame fills them.
    fn gathers(&self, queue: u16) -> bool {
        queue == NET_RX
    }

    fn offer(&mut self, queue: u16, mem: &dyn GuestMemory, chain: Chain) -> Vec<(Chain, u32)> {
        if queue != NET_RX {
            let len = self.serve(queue, mem, &chain);
            return vec![(chain, len)];
        }
        self.held.push(chain);
        self.deliver(mem)
    }

    fn flush(&mut self, queue: u16, mem: &dyn GuestMemory) -> Vec<(Chain, u32)> {
        if queue == NET_RX {
            self.deliver(mem)
        } else {
            Vec::new()
        }
    }

    fn serve(&mut self, queue: u16, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        match queue {
            // Receive chains go through `offer`; one served directly gets nothing.
            NET_RX => 0,
            NET_TX => self.transmit(mem, chain),
            NET_CTRL => self.control(mem, chain),
            _ => 0,
        }
    }

    /// A stopped receiveq's held chains are forgotten; queued frames wait for the next one.
    fn stop(&mut self, queue: u16) {
        if queue == NET_RX {
            self.held.clear();
        }
    }

    /// Drops queued frames and the receive mode. The features stay: in vhost-user they are the
    /// session's, set by SET_FEATURES, and a ring restart does not send them again.
    fn reset(&mut self) {
        self.backlog.clear();
        self.held.clear();
        self.promisc = false;
        self.allmulti = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::anonymous;
    use vm_memory::GuestMemoryMmap;

    use crate::sg::testing::{chain_at as chain, read_at as read};

    fn lens(done: &[(Chain, u32)]) -> Vec<u32> {
        done.iter().map(|d| d.1).collect()
    }

    #[test]
    fn with_mrg_rxbuf_a_frame_spans_the_fewest_chains_in_order() {
        let mem = anonymous(0, 0x10000);
        let mut dev = NetDevice::new(NetFaults::default());
        dev.set_features(F_MRG_RXBUF);
        let frame: Vec<u8> = (0..=255u8).cycle().take(600).collect();
        send(&mut dev, &mem, &frame);
        let rx = |i: u64| {
            let mut c = chain(&[(0x1000 + 0x400 * i, 256, true)]);
            c.head = i as u16;
            c
        };
        assert!(dev.offer(NET_RX, &mem, rx(0)).is_empty());
        assert!(dev.offer(NET_RX, &mem, rx(1)).is_empty());
        let done = dev.offer(NET_RX, &mem, rx(2));
        assert_eq!(lens(&done), [256, 256, 100]);
        assert_eq!(done.iter().map(|d| d.0.head).collect::<Vec<_>>(), [0, 1, 2]);
        let mut got = Vec::new();
        for (i, len) in [(0u64, 256usize), (1, 256), (2, 100)] {
            got.extend(read(&mem, 0x1000 + 0x400 * i, len));
        }
        assert_eq!(got[HDR_NUM_BUFFERS..NET_HDR_LEN], [3, 0], "num_buffers");
        assert_eq!(got[NET_HDR_LEN..], frame);
    }

    /// Transmits `frame` (header at 0, frame at 0x100).
    fn send(dev: &mut NetDevice, mem: &GuestMemoryMmap, frame: &[u8]) -> u32 {
        mem.write(0, &[0; NET_HDR_LEN]).unwrap();
        mem.write(0x100, frame).unwrap();
        let tx = chain(&[
            (0, NET_HDR_LEN as u32, false),
            (0x100, frame.len() as u32, false),
        ]);
        assert!(dev.ready(NET_TX));
        dev.serve(NET_TX, mem, &tx)
    }

    #[test]
    fn a_transmitted_frame_comes_back_behind_a_v1_header() {
        let mem = anonymous(0, 0x10000);
        let mut dev = NetDevice::new(NetFaults::default());
        assert!(!dev.ready(NET_RX));
        let frame: Vec<u8> = (0..60u8).collect();
        assert_eq!(send(&mut dev, &mem, &frame), 0);
        assert!(dev.ready(NET_RX));
        // The header and the frame split across two writable buffers at an odd point.
        mem.write(0x1000, &[0xEE; 2000]).unwrap();
        let rx = chain(&[(0x1000, 5, true), (0x2000, 1526, true)]);
        assert_eq!(lens(&dev.offer(NET_RX, &mem, rx)), [72]);
        let mut got = read(&mem, 0x1000, 5);
        got.extend(read(&mem, 0x2000, 67));
        let mut want = vec![0u8; NET_HDR_LEN];
        want[HDR_NUM_BUFFERS] = 1;
        want.extend(&frame);
        assert_eq!(got, want);
        assert!(!dev.ready(NET_RX));
    }

    #[test]
    fn frames_wait_for_a_chain_they_fit_and_the_backlog_is_bounded() {
        let mem = anonymous(0, 0x20000);
        let mut dev = NetDevice::new(NetFaults::default());
        send(&mut dev, &mem, &[1; 100]);
        send(&mut dev, &mem, &[2; 10]);
        // Too small for the first frame: held, and the frames stay in order.
        assert!(
            dev.offer(NET_RX, &mem, chain(&[(0x1000, 40, true)]))
                .is_empty()
        );
        let done = dev.offer(NET_RX, &mem, chain(&[(0x2000, 200, true)]));
        assert_eq!(lens(&done), [112, 22]);
        assert_eq!(done[0].0.segments[0].gpa, 0x2000);
        assert_eq!(read(&mem, 0x2000 + 12, 100), vec![1; 100]);
        assert_eq!(read(&mem, 0x1000 + 12, 10), vec![2; 10]);
        // A chain held when its ring stops is never filled.
        assert!(
            dev.offer(NET_RX, &mem, chain(&[(0x5000, 100, true)]))
                .is_empty()
        );
        dev.stop(NET_RX);
        // A chain with no frame for it is held, and filled when one comes.
        assert!(
            dev.offer(NET_RX, &mem, chain(&[(0x3000, 100, true)]))
                .is_empty()
        );
        assert!(dev.flush(NET_RX, &mem).is_empty());
        send(&mut dev, &mem, &[4; 30]);
        assert_eq!(lens(&dev.flush(NET_RX, &mem)), [42]);
        assert_eq!(read(&mem, 0x3000 + 12, 30), vec![4; 30]);
        // A frame no chain will ever hold is dropped once MAX_MERGE chains are held.
        send(&mut dev, &mem, &[5; 1000]);
        for i in 0..MAX_MERGE as u64 {
            let c = chain(&[(0x4000 + 0x40 * i, 40, true)]);
            assert!(dev.offer(NET_RX, &mem, c).is_empty());
        }
        assert_eq!(dev.dropped(), 1);
        send(&mut dev, &mem, &[6; 10]);
        assert_eq!(lens(&dev.flush(NET_RX, &mem)), [22]);
        for _ in 0..NET_BACKLOG + 5 {
            send(&mut dev, &mem, &[3; 10]);
        }
        assert_eq!(dev.backlog(), NET_BACKLOG);
        dev.reset();
        assert!(!dev.ready(NET_RX));
    }

    #[test]
    fn control_commands_are_acked_in_the_last_writable_byte() {
        let mem = anonymous(0, 0x10000);
        let mut dev = NetDevice::new(NetFaults::default());
        dev.set_features(F_CTRL_VQ | F_CTRL_RX);
        let mut ask = |cmd: &[u8]| {
            mem.write(0, cmd).unwrap();
            mem.write(0x100, &[0xAA; 2]).unwrap();
            let c = chain(&[(0, cmd.len() as u32, false), (0x100, 2, true)]);
            let used = dev.serve(NET_CTRL, &mem, &c);
            (used, read(&mem, 0x100, 2))
        };
        assert_eq!(ask(&[0, 0, 1]), (1, vec![0xAA, NET_OK]));
        assert_eq!(ask(&[0, 1, 0]), (1, vec![0xAA, NET_OK]));
        assert_eq!(ask(&[0, 5, 0]), (1, vec![0xAA, NET_ERR]));
        assert_eq!(ask(&[9, 0, 0]), (1, vec![0xAA, NET_ERR]));
        assert_eq!(ask(&[0, 0]), (1, vec![0xAA, NET_ERR]));
        assert_eq!(dev.rx_mode(), (true, false));
    }

    #[test]
    fn config_and_faults() {
        let dev = NetDevice::new(NetFaults::default());
        let c = dev.config();
        assert_eq!(c.len(), NET_CONFIG_SIZE);
        assert_eq!(&c[..6], &NET_MAC);
        assert_eq!(c[6..], [1, 0, 1, 0, 0xDC, 0x05]);
        let mem = anonymous(0, 0x10000);
        let faults = NetFaults {
            rx_legacy_header: true,
            tx_used_len: true,
            ..NetFaults::default()
        };
        let mut dev = NetDevice::new(faults);
        assert_eq!(send(&mut dev, &mem, &[7; 20]), 20);
        let rx = chain(&[(0x1000, 100, true)]);
        assert_eq!(lens(&dev.offer(NET_RX, &mem, rx.clone())), [30]);
        let faults = NetFaults {
            num_buffers_0: true,
            rx_csum_flag: true,
            ctrl_no_ack: true,
            ..NetFaults::default()
        };
        let mut dev = NetDevice::new(faults);
        send(&mut dev, &mem, &[7; 20]);
        assert_eq!(lens(&dev.offer(NET_RX, &mem, rx)), [32]);
        assert_eq!(read(&mem, 0x1000, 12), [2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        mem.write(0x100, &[0xAA]).unwrap();
        let c = chain(&[(0, 3, false), (0x100, 1, true)]);
        assert_eq!(dev.serve(NET_CTRL, &mem, &c), 0);
        assert_eq!(read(&mem, 0x100, 1), [0xAA]);
    }
}
