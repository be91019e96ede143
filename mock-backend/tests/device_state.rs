//! Device state transfer between two back-end processes (R-MIG-02..11): state saved by one
//! `vhu-mock-backend` loads into a fresh one, and the data written before is read back after.
//! A truncated stream, a corrupt save (fault `bad-device-state`) and a transfer while a ring runs
//! are refused.

mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;

use common::{
    Backend, Guest, Ring, blk_read, blk_request, check_device_state, connect, get_vring_base,
    negotiate, prepare_ring_at, set_device_state_fd,
};
use vhu_protocol::virtio::blk;
use vhu_protocol::{Connection, ProtocolFeatures};

const FEATURES: ProtocolFeatures =
    ProtocolFeatures::REPLY_ACK.union(ProtocolFeatures::DEVICE_STATE);

/// `vhu-mock-backend` with `--fault F` for each of `faults`.
fn start(faults: &[&str]) -> Backend {
    let args: Vec<&str> = faults.iter().flat_map(|f| ["--fault", f]).collect();
    common::start(&args)
}

struct Device {
    c: Connection,
    g: Guest,
    r: Ring,
}

/// A session that negotiated DEVICE_STATE, with guest memory and ring 0 started from `base`
/// (the ring's indices in memory at `base` too).
fn device(be: &Backend, base: u16) -> Device {
    let c = fresh_session(be);
    let g = Guest::new();
    g.set_ring_indices(base);
    let r = prepare_ring_at(&c, &g, base, 0);
    r.start(&c);
    Device { c, g, r }
}

fn save(d: &mut Device) -> Vec<u8> {
    let (r, w) = nix::unistd::pipe().unwrap();
    let reply = set_device_state_fd(&d.c, 0, w.as_fd());
    drop(w);
    assert_eq!(reply, Some(0x100), "success, no fd returned (R-MIG-04)");
    let mut state = Vec::new();
    std::fs::File::from(r).read_to_end(&mut state).unwrap();
    assert_eq!(check_device_state(&d.c), 0, "R-MIG-08");
    state
}

/// Loads `state` into a fresh process's session (rings stopped); returns CHECK's value.
fn load(c: &Connection, state: &[u8]) -> u64 {
    let (r, w) = nix::unistd::pipe().unwrap();
    let reply = set_device_state_fd(c, 1, r.as_fd());
    drop(r);
    assert_eq!(reply, Some(0x100));
    std::fs::File::from(w).write_all(state).unwrap();
    check_device_state(c)
}

/// A connection that negotiated REPLY_ACK and DEVICE_STATE (the back-end must offer it).
fn fresh_session(be: &Backend) -> Connection {
    let c = connect(&be.sock);
    let offered = negotiate(&c, FEATURES);
    assert!(offered & ProtocolFeatures::DEVICE_STATE.bits() != 0);
    c
}

#[test]
fn state_saved_by_one_process_loads_into_another_and_the_data_survives() {
    let a = start(&[]);
    let mut d = device(&a, 0);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 13) as u8).collect();
    let (status, _) = blk_request(&mut d.g, &mut d.r, blk::T_OUT, 8, Some((&data, false)));
    assert_eq!(status, blk::S_OK);
    // A transfer while the ring runs is refused (R-MIG-03).
    let (_r, w) = nix::unistd::pipe().unwrap();
    assert_ne!(set_device_state_fd(&d.c, 0, w.as_fd()), Some(0x100));
    let base = get_vring_base(&d.c, 0) as u16;
    assert_eq!(base, 1);
    let state = save(&mut d);

    let b = start(&[]);
    let c = fresh_session(&b);
    assert_eq!(load(&c, &state), 0, "R-MIG-11: the state loads");
    drop(c);
    let mut d2 = device(&b, base);
    let (status, read) = blk_read(&mut d2.g, &mut d2.r, 8, 4096);
    assert_eq!(status, blk::S_OK);
    assert_eq!(
        read, data,
        "data written before the transfer is read back after it"
    );
}

#[test]
fn truncated_and_corrupt_states_are_refused() {
    let a = start(&["bad-device-state"]);
    let mut d = device(&a, 0);
    get_vring_base(&d.c, 0);
    let corrupt = save(&mut d);
    let b = start(&[]);
    let c = fresh_session(&b);
    assert_ne!(
        load(&c, &corrupt),
        0,
        "a corrupt state must not load (R-MIG-09)"
    );
    assert_ne!(
        load(&c, &corrupt[..corrupt.len() / 2]),
        0,
        "a truncated state must not load"
    );
    assert_ne!(load(&c, &[7u8; 17]), 0, "17 random bytes must not load");
}
