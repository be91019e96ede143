//! virtio-input driver requests on the device-neutral [`exchange`](crate::exchange) path
//! (virtio 1.2 section 5.8): the eventq's 8-byte event buffers, the statusq's events, and the
//! config space queried by select and subsel. Facts only: the engine judges them.

use crate::exchange::{ChainSpec, Exchanged};

/// The eventq (device to driver).
pub const EVENTQ: u16 = 0;
/// The statusq (driver to device).
pub const STATUSQ: u16 = 1;

/// Bytes of `struct virtio_input_event`.
pub const EVENT_SIZE: usize = 8;
/// Bytes of `struct virtio_input_config`: select, subsel, size, `reserved[5]`, the 128-byte
/// union.
pub const CONFIG_SIZE: u32 = 136;
/// Offset of the union `u` in the config space.
pub const UNION_OFFSET: usize = 8;
/// Bytes of the union `u`.
pub const UNION_SIZE: usize = 128;

/// `VIRTIO_INPUT_CFG_UNSET`.
pub const CFG_UNSET: u8 = 0x00;
/// `VIRTIO_INPUT_CFG_ID_NAME`: the name, a string.
pub const CFG_ID_NAME: u8 = 0x01;
/// `VIRTIO_INPUT_CFG_ID_SERIAL`: the serial number, a string.
pub const CFG_ID_SERIAL: u8 = 0x02;
/// `VIRTIO_INPUT_CFG_ID_DEVIDS`: bustype, vendor, product, version.
pub const CFG_ID_DEVIDS: u8 = 0x03;
/// `VIRTIO_INPUT_CFG_PROP_BITS`: the input properties bitmap.
pub const CFG_PROP_BITS: u8 = 0x10;
/// `VIRTIO_INPUT_CFG_EV_BITS`: the event codes of type `subsel`, a bitmap.
pub const CFG_EV_BITS: u8 = 0x11;
/// `VIRTIO_INPUT_CFG_ABS_INFO`: axis `subsel`'s min, max, fuzz, flat, res.
pub const CFG_ABS_INFO: u8 = 0x12;

/// Bytes of `struct virtio_input_devids`.
pub const DEVIDS_SIZE: u8 = 8;
/// Bytes of `struct virtio_input_absinfo`.
pub const ABSINFO_SIZE: u8 = 20;

/// Event type `EV_KEY` (Linux input-event-codes.h).
pub const EV_KEY: u16 = 0x01;
/// Event type `EV_LED`.
pub const EV_LED: u16 = 0x11;

/// The name of a select value, for reports; `None` for a value the spec does not define.
pub fn select_name(select: u8) -> Option<&'static str> {
    Some(match select {
        CFG_UNSET => "UNSET",
        CFG_ID_NAME => "ID_NAME",
        CFG_ID_SERIAL => "ID_SERIAL",
        CFG_ID_DEVIDS => "ID_DEVIDS",
        CFG_PROP_BITS => "PROP_BITS",
        CFG_EV_BITS => "EV_BITS",
        CFG_ABS_INFO => "ABS_INFO",
        _ => return None,
    })
}

/// A `struct virtio_input_event` (little-endian on the wire).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `EV_*`.
    pub ev_type: u16,
    /// The code within the type.
    pub code: u16,
    /// The event's value (a key's 1 down, 0 up; an LED's state; an axis position).
    pub value: u32,
}

impl Event {
    /// The 8 bytes on the wire.
    pub fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(EVENT_SIZE);
        b.extend_from_slice(&self.ev_type.to_le_bytes());
        b.extend_from_slice(&self.code.to_le_bytes());
        b.extend_from_slice(&self.value.to_le_bytes());
        b
    }

    /// The event at the start of `b`, when there are 8 bytes.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = b.get(..EVENT_SIZE)?;
        Some(Self {
            ev_type: u16::from_le_bytes(b[0..2].try_into().ok()?),
            code: u16::from_le_bytes(b[2..4].try_into().ok()?),
            value: u32::from_le_bytes(b[4..8].try_into().ok()?),
        })
    }
}

/// An eventq buffer: one device-writable event.
pub fn event_buffer(indirect: bool) -> ChainSpec {
    ChainSpec {
        readable: vec![],
        writable: vec![EVENT_SIZE as u32],
        indirect,
    }
}

/// A statusq event: one driver-readable buffer.
pub fn status_chain(ev: &Event, indirect: bool) -> ChainSpec {
    ChainSpec {
        readable: vec![ev.bytes()],
        writable: vec![],
        indirect,
    }
}

/// The event a used eventq buffer carries, when the device wrote 8 bytes.
pub fn received_event(done: &Exchanged) -> Option<Event> {
    Event::parse(&done.reply())
}

/// The answer to a query: what GET_CONFIG of the whole config space returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// The select read back.
    pub select: u8,
    /// The subsel read back.
    pub subsel: u8,
    /// Bytes of the union holding the answer.
    pub size: u8,
    /// The union.
    pub union: Vec<u8>,
}

impl Answer {
    /// The answer from the config bytes (at least 136).
    pub fn parse(cfg: &[u8]) -> Option<Self> {
        let union = cfg.get(UNION_OFFSET..UNION_OFFSET + UNION_SIZE)?.to_vec();
        Some(Self {
            select: cfg[0],
            subsel: cfg[1],
            size: cfg[2],
            union,
        })
    }

    /// The string answer (ID_NAME, ID_SERIAL), lossily decoded.
    pub fn string(&self) -> String {
        let n = usize::from(self.size).min(UNION_SIZE);
        String::from_utf8_lossy(&self.union[..n]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_little_endian() {
        let e = Event {
            ev_type: EV_LED,
            code: 1,
            value: 0x0102_0304,
        };
        assert_eq!(e.bytes(), vec![0x11, 0, 1, 0, 4, 3, 2, 1]);
        assert_eq!(Event::parse(&e.bytes()), Some(e));
        assert_eq!(Event::parse(&[0; 7]), None);
    }

    #[test]
    fn an_answer_reads_its_size_and_union() {
        let mut cfg = vec![0u8; CONFIG_SIZE as usize];
        cfg[0] = CFG_ID_NAME;
        cfg[2] = 3;
        cfg[8..11].copy_from_slice(b"kbd");
        let a = Answer::parse(&cfg).unwrap();
        assert_eq!((a.select, a.size), (CFG_ID_NAME, 3));
        assert_eq!(a.string(), "kbd");
        assert!(Answer::parse(&cfg[..100]).is_none());
        assert_eq!(select_name(0x11), Some("EV_BITS"));
        assert_eq!(select_name(0x7f), None);
    }
}
