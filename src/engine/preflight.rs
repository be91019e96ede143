//! The preflight: one connection before the scenarios, reading what the back-end offers, how
//! long it takes to answer its first message, and the largest ring it accepts; and, in spawn
//! mode, the device type its `--print-capabilities` reports.

use std::time::{Duration, Instant};

use thiserror::Error;
use vhu_mock_frontend::{Ack, Session, SessionError};
use vhu_protocol::{ProtocolFeatures, VirtioFeatures};

use super::{DEFAULT_QUEUE_SIZE, Offer, RunOptions, chain};
use crate::device::{DeviceSource, DeviceType};
use crate::target::{Instance, TargetSpec};

/// Why the preflight could not read the offer.
#[derive(Debug, Error)]
pub enum PreflightError {
    /// The back-end could not be reached or started: it cannot be judged at all.
    #[error("{0}")]
    Unreachable(String),
    /// The back-end answered, but not properly: scenarios still run (and show where).
    #[error("{0}")]
    Misbehaved(String),
}

/// Reads what the back-end offers on a first connection, and the ring size to use.
pub fn preflight(spec: &TargetSpec, opts: &RunOptions) -> Result<Offer, PreflightError> {
    let mut inst = Instance::start(spec, opts.connect_timeout)
        .map_err(|e| PreflightError::Unreachable(chain(&e)))?;
    let stream = inst
        .connect()
        .map_err(|e| PreflightError::Unreachable(chain(&e)))?;
    // The first reply of a starting back-end may take longer than a step (DPDK: ~1 s).
    let mut s = super::session::open(stream, first_reply_wait(opts));
    let started = Instant::now();
    let mut offer = read_offer(&mut s).map_err(PreflightError::Misbehaved)?;
    offer.first_reply = started.elapsed();
    s.set_reply_timeout(opts.step_timeout);
    offer.queue_size = match opts.queue_size {
        Some(n) => n,
        None => largest_ring(s, &mut inst, &offer, opts),
    };
    Ok(offer)
}

/// How long a back-end may take to answer the first message on a connection at preflight.
fn first_reply_wait(opts: &RunOptions) -> Duration {
    (opts.step_timeout + Duration::from_secs(2)).min(opts.connect_timeout)
}

fn read_offer(s: &mut Session) -> Result<Offer, String> {
    let features = s
        .get_features()
        .map_err(|e| format!("the back-end did not answer GET_FEATURES (R-NEG-01): {e}"))?;
    let mut offer = Offer {
        features,
        ..Offer::default()
    };
    if features & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        offer.protocol = s.get_protocol_features().map_err(|e| {
            format!("the back-end did not answer GET_PROTOCOL_FEATURES (R-NEG-02): {e}")
        })?;
    }
    Ok(offer)
}

/// The largest power of two up to 256 that the back-end accepts in SET_VRING_NUM for ring 0:
/// vhost-user has no message that tells the maximum, and many back-ends refuse more than 64.
/// A refusal shows as a non-zero ack (with REPLY_ACK) or as the connection closing (seen by a
/// GET_FEATURES after it); a back-end that shows neither is taken at 256.
fn largest_ring(mut s: Session, inst: &mut Instance, offer: &Offer, opts: &RunOptions) -> u16 {
    let reply_ack = offer.protocol & ProtocolFeatures::REPLY_ACK.bits() != 0;
    let mut n = DEFAULT_QUEUE_SIZE;
    while n > 1 {
        match try_ring(&mut s, offer, reply_ack, n) {
            Ok(true) => return n,
            Ok(false) => {}
            // Closed: a new connection (a new process if this one went away) for the next try.
            Err(()) => {
                drop(s);
                match reconnect(inst, opts) {
                    Some(fresh) => s = fresh,
                    // Nothing more can be learnt: the next size down, untested.
                    None => return n / 2,
                }
            }
        }
        n /= 2;
    }
    1
}

/// A new negotiated session after the back-end closed the last one. The connect is retried
/// until the connect timeout: a back-end that serves one front-end at a time may take a moment
/// to listen again (a rust-vmm daemon re-creates its listener; under load a single try was seen
/// to fail, and the probe then settled on a size it had not tested). A back-end that accepts but
/// does not answer is not waited for again.
fn reconnect(inst: &mut Instance, opts: &RunOptions) -> Option<Session> {
    let deadline = std::time::Instant::now() + opts.connect_timeout;
    let stream = loop {
        if inst.is_spawned() && inst.wait_exit(Duration::from_millis(100)).death().is_some() {
            *inst = Instance::start(&inst.spec().clone(), opts.connect_timeout).ok()?;
        }
        match inst.connect() {
            Ok(stream) => break stream,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(_) => return None,
        }
    };
    let mut s = super::session::open(stream, first_reply_wait(opts));
    read_offer(&mut s).ok()?;
    s.set_reply_timeout(opts.step_timeout);
    Some(s)
}

/// Whether SET_VRING_NUM `n` for ring 0 is accepted; `Err` when the connection closed.
fn try_ring(s: &mut Session, offer: &Offer, reply_ack: bool, n: u16) -> Result<bool, ()> {
    if reply_ack {
        let acked = s.set_protocol_features(offer.protocol & ProtocolFeatures::REPLY_ACK.bits());
        if acked.is_err() {
            return Err(());
        }
    }
    let _ = s.set_owner();
    let r = s.set_vring_num(0, n.into());
    let answered = s.get_features();
    match (r, answered) {
        (Ok(Ack::Failed(_)), Ok(_)) | (Err(SessionError::Nack { .. }), Ok(_)) => Ok(false),
        (_, Err(_)) | (Err(_), _) => Err(()),
        (Ok(_), Ok(_)) => Ok(true),
    }
}

/// The device type the spawned program reports with `--print-capabilities` (replacing its
/// `--socket-path {socket}` option), if it answers with one within a few seconds.
pub fn device_from_capabilities(template: &str) -> Option<DeviceType> {
    use crate::builtin::program::{output, replace_socket_option, start, stop, wait};
    let command = replace_socket_option(template, "--print-capabilities")?;
    let mut child = start(&command, None).ok()?;
    let status = wait(&mut child, Duration::from_secs(3));
    if status.is_none() {
        stop(&mut child);
        return None;
    }
    let (out, _) = output(&mut child);
    let v: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
    DeviceType::parse(v.get("type")?.as_str()?).ok()
}

/// The device type and where it came from: the user's word first, then the program's.
pub fn device_type(
    given: Option<(DeviceType, DeviceSource)>,
    spec: &TargetSpec,
) -> Option<(DeviceType, DeviceSource)> {
    given.or_else(|| match spec {
        TargetSpec::Spawn(cmd) => {
            device_from_capabilities(cmd).map(|d| (d, DeviceSource::PrintCapabilities))
        }
        _ => None,
    })
}
