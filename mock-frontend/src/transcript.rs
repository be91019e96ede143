//! A record of every message exchanged, both directions and both channels, decoded, so a
//! failure can show what was sent and what came back.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use vhu_protocol::wire::payload::{Body, BodyKind};
use vhu_protocol::{BackendReq, FrontendReq, Header};

/// Which socket a message travelled on.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    /// The main socket.
    Main,
    /// The back-end request channel.
    Backend,
}

/// Which way a message travelled.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// Front-end to back-end.
    ToBackend,
    /// Back-end to front-end.
    FromBackend,
}

/// One message.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the transcript.
    pub seq: u64,
    /// Microseconds since the session started.
    pub at_us: u64,
    /// Which socket.
    pub channel: Channel,
    /// Which way.
    pub direction: Direction,
    /// Request code.
    pub code: u32,
    /// The spec name of the code (or "unknown").
    pub name: String,
    /// Header flags.
    pub flags: u32,
    /// Header size field.
    pub size: u32,
    /// Number of fds attached.
    pub fds: usize,
    /// The payload, decoded where its layout is known, else hex.
    pub decoded: String,
}

/// Every message of a session, in order.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Transcript {
    /// The messages.
    pub entries: Vec<Entry>,
}

impl Transcript {
    /// Records a message.
    pub fn record(
        &mut self,
        at_us: u64,
        channel: Channel,
        direction: Direction,
        header: &Header,
        payload: &[u8],
        fds: usize,
    ) {
        let (name, decoded) = describe(channel, direction, header, payload);
        self.entries.push(Entry {
            seq: self.entries.len() as u64,
            at_us,
            channel,
            direction,
            code: header.request,
            name,
            flags: header.flags,
            size: header.size,
            fds,
            decoded,
        });
    }

    /// The last `n` messages.
    pub fn tail(&self, n: usize) -> &[Entry] {
        &self.entries[self.entries.len().saturating_sub(n)..]
    }

    /// One line per message.
    pub fn render(&self) -> String {
        render(&self.entries)
    }
}

/// Messages kept as they went (time, channel, direction, header, payload, fd count) and decoded
/// only when a [`Transcript`] is asked for: recording costs one copy of the payload, so a
/// session that sends millions of messages is not slowed by formatting each one.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    raw: Vec<RawEntry>,
}

#[derive(Clone, Debug)]
struct RawEntry {
    at_us: u64,
    channel: Channel,
    direction: Direction,
    header: Header,
    payload: Vec<u8>,
    fds: usize,
}

impl Recorder {
    /// Records a message.
    pub fn record(
        &mut self,
        at_us: u64,
        channel: Channel,
        direction: Direction,
        header: &Header,
        payload: &[u8],
        fds: usize,
    ) {
        self.raw.push(RawEntry {
            at_us,
            channel,
            direction,
            header: *header,
            payload: payload.to_vec(),
            fds,
        });
    }

    /// Messages recorded so far.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Every message recorded, decoded.
    pub fn transcript(&self) -> Transcript {
        let mut t = Transcript {
            entries: Vec::with_capacity(self.raw.len()),
        };
        for r in &self.raw {
            t.record(
                r.at_us,
                r.channel,
                r.direction,
                &r.header,
                &r.payload,
                r.fds,
            );
        }
        t
    }
}

/// Renders entries one per line: `#3 +1.2ms -> SET_VRING_NUM flags=0x9 size=8 fds=0 VringState {..}`.
pub fn render(entries: &[Entry]) -> String {
    let mut out = String::new();
    for e in entries {
        let arrow = match (e.channel, e.direction) {
            (Channel::Main, Direction::ToBackend) => "->",
            (Channel::Main, Direction::FromBackend) => "<-",
            (Channel::Backend, Direction::FromBackend) => "<= (be-chan)",
            (Channel::Backend, Direction::ToBackend) => "=> (be-chan)",
        };
        let _ = writeln!(
            out,
            "#{} +{:.1}ms {arrow} {} flags={:#x} size={} fds={} {}",
            e.seq,
            e.at_us as f64 / 1000.0,
            e.name,
            e.flags,
            e.size,
            e.fds,
            e.decoded
        );
    }
    out
}

fn describe(
    channel: Channel,
    direction: Direction,
    header: &Header,
    payload: &[u8],
) -> (String, String) {
    let is_reply = header.is_reply();
    let kind_name: Option<(&'static str, BodyKind)> = match channel {
        Channel::Main => FrontendReq::from_code(header.request).ok().map(|r| {
            (
                r.spec_name(),
                if is_reply {
                    r.reply_body()
                } else {
                    r.request_body()
                },
            )
        }),
        Channel::Backend => BackendReq::from_code(header.request).ok().map(|r| {
            (
                r.spec_name(),
                if is_reply {
                    BodyKind::U64
                } else {
                    r.request_body()
                },
            )
        }),
    };
    let _ = direction;
    match kind_name {
        None => (format!("unknown code {}", header.request), hex(payload)),
        Some((name, kind)) => {
            let decoded = match Body::decode(kind, payload) {
                Ok(Body::Opaque(b)) => hex(&b),
                Ok(Body::ShmemConfig(c)) => format!("ShmemConfig {{ nregions: {} }}", c.nregions),
                Ok(b) => format!("{b:?}"),
                Err(v) => format!("undecodable ({v}): {}", hex(payload)),
            };
            (name.trim_start_matches("VHOST_USER_").to_string(), decoded)
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let shown: String = bytes.iter().take(64).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 64 {
        format!("{shown}... ({} bytes)", bytes.len())
    } else {
        shown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vhu_protocol::wire::payload::VringState;

    #[test]
    fn a_recorder_decodes_into_the_transcript_that_recording_directly_gives() {
        let body = Body::VringState(VringState { index: 1, num: 256 }).encode();
        let header = Header::request(FrontendReq::SetVringNum as u32, 8, true);
        let reply = Header::reply(FrontendReq::SetVringNum as u32, 8);
        let mut direct = Transcript::default();
        let mut rec = Recorder::default();
        for (at, h, p, dir) in [
            (1, header, &body[..], Direction::ToBackend),
            (2, reply, &0u64.to_ne_bytes()[..], Direction::FromBackend),
        ] {
            direct.record(at, Channel::Main, dir, &h, p, 0);
            rec.record(at, Channel::Main, dir, &h, p, 0);
        }
        assert_eq!(rec.len(), 2);
        assert_eq!(rec.transcript().render(), direct.render());
        assert!(direct.render().contains("SET_VRING_NUM"));
    }
}
