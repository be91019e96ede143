//! virtio-sound (virtio 1.2 section 5.14): a sound card with one jack, an output stream (0)
//! and an input stream (1), each with a stereo channel map, and a null audio back-end: output
//! frames are consumed at once, input buffers get silence. The control queue answers the
//! item information requests and runs each stream's command lifecycle (5.14.6.6.1); the event
//! queue keeps its buffers (the device has no event to send).

use vhu_protocol::virtio::sound::{
    self as snd, ChmapInfo, Config, JackInfo, PcmHdr, PcmInfo, PcmSetParams, PcmStatus, QueryInfo,
};
use vhu_protocol::wire::VirtioFeatures;
use zerocopy::{FromBytes, IntoBytes};

use crate::chain::Chain;
use crate::device::VirtioDevice;
use crate::memory::GuestMemory;
use crate::sg::{read_readable, readable_len, write_writable};

/// Deliberate departures of the sound device (the back-end's fault modes; default: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoundFaults {
    /// A query past the announced items is answered OK with zeroed records (breaks R-SND-03).
    pub bad_start_ok: bool,
    /// Control requests are used with length 0, no status written (breaks R-SND-01).
    pub no_status: bool,
    /// PCM_INFO records carry a non-zero padding byte (breaks R-SND-04).
    pub pcm_padding: bool,
    /// A request of an undefined code is answered OK (breaks R-SND-07).
    pub unknown_ok: bool,
}

/// Where a stream is in its command lifecycle (5.14.6.6.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum State {
    /// Nothing set yet.
    #[default]
    Initial,
    /// SET_PARAMS accepted.
    Params,
    /// PREPARE accepted.
    Prepared,
    /// START accepted.
    Started,
    /// STOP accepted.
    Stopped,
    /// RELEASE accepted.
    Released,
}

/// One PCM stream.
#[derive(Clone, Debug)]
struct Stream {
    info: PcmInfo,
    state: State,
}

/// The reference virtio-sound device.
#[derive(Clone, Debug)]
pub struct SoundDevice {
    streams: Vec<Stream>,
    jacks: Vec<JackInfo>,
    chmaps: Vec<ChmapInfo>,
    /// Event queue buffers kept (never used: no event happens).
    events: Vec<Chain>,
    faults: SoundFaults,
}

fn stream_info(direction: u8) -> PcmInfo {
    PcmInfo {
        hda_fn_nid: 0,
        features: 0,
        formats: (1 << snd::PCM_FMT_S16) | (1 << 3),
        rates: (1 << snd::PCM_RATE_44100) | (1 << snd::PCM_RATE_48000),
        direction,
        channels_min: 1,
        channels_max: 2,
        padding: [0; 5],
    }
}

fn stereo(direction: u8) -> ChmapInfo {
    let mut positions = [0u8; snd::CHMAP_MAX_SIZE];
    // VIRTIO_SND_CHMAP_FL, VIRTIO_SND_CHMAP_FR.
    positions[0] = 3;
    positions[1] = 4;
    ChmapInfo {
        hda_fn_nid: 0,
        direction,
        channels: 2,
        positions,
    }
}

impl SoundDevice {
    /// The card, breaking what `faults` says.
    pub fn new(faults: SoundFaults) -> Self {
        let stream = |d| Stream {
            info: stream_info(d),
            state: State::Initial,
        };
        Self {
            streams: vec![stream(snd::D_OUTPUT), stream(snd::D_INPUT)],
            jacks: vec![JackInfo {
                connected: 1,
                ..JackInfo::default()
            }],
            chmaps: vec![stereo(snd::D_OUTPUT), stereo(snd::D_INPUT)],
            events: Vec::new(),
            faults,
        }
    }

    fn config_struct(&self) -> Config {
        Config {
            jacks: self.jacks.len() as u32,
            streams: self.streams.len() as u32,
            chmaps: self.chmaps.len() as u32,
        }
    }

    /// The answer to a control request: status and payload.
    fn control(&mut self, req: &[u8], room: u64) -> (u32, Vec<u8>) {
        let Some(code) = req
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
        else {
            return (snd::S_BAD_MSG, vec![]);
        };
        match code {
            snd::R_JACK_INFO | snd::R_PCM_INFO | snd::R_CHMAP_INFO => self.query(req, room),
            snd::R_PCM_SET_PARAMS => (self.set_params(req), vec![]),
            snd::R_PCM_PREPARE | snd::R_PCM_START | snd::R_PCM_STOP | snd::R_PCM_RELEASE => {
                (self.transition(req), vec![])
            }
            _ if self.faults.unknown_ok => (snd::S_OK, vec![]),
            _ => (snd::S_NOT_SUPP, vec![]),
        }
    }

    /// 5.14.6.1: `count` records of `size` bytes from `start_id` (each record cut or zero
    /// padded to `size`, the backward-compatible reading of `size`).
    fn query(&self, req: &[u8], room: u64) -> (u32, Vec<u8>) {
        let Ok((q, _)) = QueryInfo::read_from_prefix(req) else {
            return (snd::S_BAD_MSG, vec![]);
        };
        let all: Vec<Vec<u8>> = match q.code {
            snd::R_JACK_INFO => self.jacks.iter().map(|j| j.as_bytes().to_vec()).collect(),
            snd::R_PCM_INFO => self.streams.iter().map(|s| self.pcm_record(s)).collect(),
            _ => self.chmaps.iter().map(|c| c.as_bytes().to_vec()).collect(),
        };
        let (start, count, size) = (q.start_id as u64, q.count as u64, q.size as u64);
        let needed = 4 + count * size;
        if needed > room || size == 0 {
            return (snd::S_BAD_MSG, vec![]);
        }
        if start + count > all.len() as u64 {
            if self.faults.bad_start_ok {
                return (snd::S_OK, vec![0; (count * size) as usize]);
            }
            return (snd::S_BAD_MSG, vec![]);
        }
        let mut out = Vec::with_capacity((count * size) as usize);
        for r in &all[start as usize..(start + count) as usize] {
            let mut rec = r.clone();
            rec.resize(size as usize, 0);
            out.extend(rec);
        }
        (snd::S_OK, out)
    }

    fn pcm_record(&self, s: &Stream) -> Vec<u8> {
        let mut info = s.info;
        if self.faults.pcm_padding {
            info.padding[0] = 0xff;
        }
        info.as_bytes().to_vec()
    }

    /// 5.14.6.6.2: parameters the stream's info announces, the period dividing the buffer.
    fn set_params(&mut self, req: &[u8]) -> u32 {
        let Ok((p, _)) = PcmSetParams::read_from_prefix(req) else {
            return snd::S_BAD_MSG;
        };
        let Some(s) = self.streams.get_mut(p.hdr.stream_id as usize) else {
            return snd::S_BAD_MSG;
        };
        if !matches!(
            s.state,
            State::Initial | State::Params | State::Prepared | State::Released
        ) {
            return snd::S_BAD_MSG;
        }
        if p.period_bytes == 0 || p.buffer_bytes % p.period_bytes != 0 {
            return snd::S_BAD_MSG;
        }
        let i = &s.info;
        let supported = (i.channels_min..=i.channels_max).contains(&p.channels)
            && p.format < 64
            && i.formats & (1 << p.format) != 0
            && p.rate < 64
            && i.rates & (1 << p.rate) != 0
            && p.features & !i.features == 0;
        if !supported {
            return snd::S_NOT_SUPP;
        }
        s.state = State::Params;
        snd::S_OK
    }

    /// PREPARE, START, STOP, RELEASE where the lifecycle allows them.
    fn transition(&mut self, req: &[u8]) -> u32 {
        let Ok((h, _)) = PcmHdr::read_from_prefix(req) else {
            return snd::S_BAD_MSG;
        };
        let Some(s) = self.streams.get_mut(h.stream_id as usize) else {
            return snd::S_BAD_MSG;
        };
        use State::*;
        let next = match (h.code, s.state) {
            (snd::R_PCM_PREPARE, Params | Prepared | Released) => Prepared,
            (snd::R_PCM_START, Prepared | Stopped) => Started,
            (snd::R_PCM_STOP, Started) => Stopped,
            (snd::R_PCM_RELEASE, Prepared | Stopped) => Released,
            _ => return snd::S_BAD_MSG,
        };
        s.state = next;
        snd::S_OK
    }

    fn serve_control(&mut self, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        if self.faults.no_status {
            return 0;
        }
        let cap = readable_len(chain).min(64) as usize;
        let Ok(req) = read_readable(mem, chain, cap) else {
            return 0;
        };
        let room = chain.writable_len();
        if room < 4 {
            // No room for even the status: nothing can be answered.
            return 0;
        }
        let (status, payload) = self.control(&req, room);
        let mut reply = status.to_le_bytes().to_vec();
        reply.extend(payload);
        write_writable(mem, chain, &reply).unwrap_or(0)
    }

    /// A PCM I/O message: the xfer header, frames, and the 8-byte status at the end of the
    /// device-writable part. Output frames are dropped (null back-end); input gets silence.
    fn serve_io(&mut self, queue: u16, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        let Ok(hdr) = read_readable(mem, chain, 4) else {
            return 0;
        };
        let room = chain.writable_len();
        if room < u64::from(snd::PCM_STATUS_SIZE) {
            return 0;
        }
        let want = if queue == snd::TX_QUEUE {
            snd::D_OUTPUT
        } else {
            snd::D_INPUT
        };
        let stream = hdr
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4")))
            .and_then(|id| self.streams.get(id as usize));
        let running = stream.is_some_and(|s| {
            s.info.direction == want && matches!(s.state, State::Prepared | State::Started)
        });
        let status = PcmStatus {
            status: if running { snd::S_OK } else { snd::S_IO_ERR },
            latency_bytes: 0,
        };
        // Input: silence up to the status; output: only the status is written.
        let frames = if queue == snd::TX_QUEUE {
            0
        } else {
            room - u64::from(snd::PCM_STATUS_SIZE)
        };
        let mut reply = vec![0u8; frames as usize];
        reply.extend(status.as_bytes());
        write_writable(mem, chain, &reply).unwrap_or(0)
    }
}

impl VirtioDevice for SoundDevice {
    fn device_id(&self) -> u32 {
        snd::DEVICE_ID
    }

    fn num_queues(&self) -> u16 {
        4
    }

    /// No device bits (5.14.3); the ring layouts the queue code drives.
    fn device_features(&self) -> u64 {
        (VirtioFeatures::VERSION_1
            | VirtioFeatures::INDIRECT_DESC
            | VirtioFeatures::EVENT_IDX
            | VirtioFeatures::RING_PACKED)
            .bits()
    }

    fn config(&self) -> Vec<u8> {
        self.config_struct().as_bytes().to_vec()
    }

    fn ready(&self, _queue: u16) -> bool {
        true
    }

    fn serve(&mut self, queue: u16, mem: &dyn GuestMemory, chain: &Chain) -> u32 {
        match queue {
            snd::CONTROL_QUEUE => self.serve_control(mem, chain),
            snd::TX_QUEUE | snd::RX_QUEUE => self.serve_io(queue, mem, chain),
            _ => 0,
        }
    }

    fn gathers(&self, queue: u16) -> bool {
        queue == snd::EVENT_QUEUE
    }

    /// Event buffers wait for an event that never comes.
    fn offer(&mut self, _queue: u16, _mem: &dyn GuestMemory, chain: Chain) -> Vec<(Chain, u32)> {
        self.events.push(chain);
        Vec::new()
    }

    fn stop(&mut self, queue: u16) {
        if queue == snd::EVENT_QUEUE {
            self.events.clear();
        }
    }

    fn reset(&mut self) {
        self.events.clear();
        for s in &mut self.streams {
            s.state = State::Initial;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::anonymous;
    use crate::sg::testing::{chain_at as chain, read_at as read};
    use vm_memory::GuestMemoryMmap;

    fn ask(dev: &mut SoundDevice, mem: &GuestMemoryMmap, req: &[u8], room: u32) -> (u32, Vec<u8>) {
        mem.write(0, req).unwrap();
        let c = chain(&[(0, req.len() as u32, false), (0x1000, room, true)]);
        let used = dev.serve(snd::CONTROL_QUEUE, mem, &c);
        let out = read(mem, 0x1000, used as usize);
        (
            u32::from_le_bytes(out[..4].try_into().unwrap()),
            out[4..].to_vec(),
        )
    }

    fn query(code: u32, start_id: u32, count: u32, size: u32) -> Vec<u8> {
        QueryInfo {
            code,
            start_id,
            count,
            size,
        }
        .as_bytes()
        .to_vec()
    }

    #[test]
    fn queries_answer_records_in_range_and_bad_msg_past_it() {
        let mem = anonymous(0, 0x4000);
        let mut dev = SoundDevice::new(SoundFaults::default());
        let (st, recs) = ask(&mut dev, &mem, &query(snd::R_PCM_INFO, 0, 2, 32), 68);
        assert_eq!((st, recs.len()), (snd::S_OK, 64));
        let p = PcmInfo::read_from_bytes(&recs[..32]).unwrap();
        assert_eq!((p.direction, p.channels_max), (snd::D_OUTPUT, 2));
        let (st, recs) = ask(&mut dev, &mem, &query(snd::R_CHMAP_INFO, 2, 1, 24), 28);
        assert_eq!((st, recs.len()), (snd::S_BAD_MSG, 0));
        let ok = SoundDevice::new(SoundFaults {
            bad_start_ok: true,
            ..SoundFaults::default()
        });
        let (st, recs) = ask(
            &mut ok.clone(),
            &mem,
            &query(snd::R_JACK_INFO, 1, 1, 24),
            28,
        );
        assert_eq!((st, recs.len()), (snd::S_OK, 24));
    }

    #[test]
    fn the_lifecycle_runs_in_order_and_refuses_skipped_steps() {
        let mem = anonymous(0, 0x4000);
        let mut dev = SoundDevice::new(SoundFaults::default());
        let hdr = |code| PcmHdr { code, stream_id: 0 }.as_bytes().to_vec();
        assert_eq!(
            ask(&mut dev, &mem, &hdr(snd::R_PCM_START), 4).0,
            snd::S_BAD_MSG
        );
        let p = PcmSetParams {
            hdr: PcmHdr {
                code: snd::R_PCM_SET_PARAMS,
                stream_id: 0,
            },
            buffer_bytes: 4096,
            period_bytes: 1024,
            channels: 2,
            format: snd::PCM_FMT_S16,
            rate: snd::PCM_RATE_48000,
            ..PcmSetParams::default()
        };
        assert_eq!(ask(&mut dev, &mem, p.as_bytes(), 4).0, snd::S_OK);
        for code in [
            snd::R_PCM_PREPARE,
            snd::R_PCM_START,
            snd::R_PCM_STOP,
            snd::R_PCM_RELEASE,
        ] {
            assert_eq!(ask(&mut dev, &mem, &hdr(code), 4).0, snd::S_OK, "{code:#x}");
        }
        assert_eq!(
            ask(&mut dev, &mem, &hdr(snd::R_PCM_STOP), 4).0,
            snd::S_BAD_MSG
        );
    }
}
