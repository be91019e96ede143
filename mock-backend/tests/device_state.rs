//! Device state transfer between two back-end processes (R-MIG-02..11): state saved by one
//! `vhu-mock-backend` loads into a fresh one, and the data written before is read back after.
//! A truncated stream, a corrupt save (fault `bad-device-state`) and a transfer while a ring runs
//! are refused.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use vhu_mock_frontend::blk::{blk_read, blk_write};
use vhu_mock_frontend::{DriverQueue, GuestMemory, RingLayout, Session, SessionOptions, Wanted};
use vhu_protocol::virtio::blk;
use vhu_protocol::{ProtocolFeatures, VirtioFeatures};

const T: Duration = Duration::from_secs(3);

struct Backend(Child, PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(faults: &[&str]) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("be.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vhu-mock-backend"));
    cmd.arg("--socket-path").arg(&sock);
    faults.iter().for_each(|f| {
        cmd.args(["--fault", f]);
    });
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(10));
    }
    Backend(child, sock, dir)
}

struct Device {
    s: Session,
    mem: GuestMemory,
    q: DriverQueue,
}

fn device(be: &Backend, base: u16) -> Device {
    let mut s = Session::connect(&be.1, SessionOptions::default()).unwrap();
    let n = s.negotiate(&Wanted::all()).unwrap();
    assert!(n.protocol & ProtocolFeatures::DEVICE_STATE.bits() != 0);
    let mut mem = GuestMemory::new(&GuestMemory::default_layout(8 << 20)).unwrap();
    s.set_mem_table(&mem).unwrap();
    let mut q = DriverQueue::new(
        &mut mem,
        0,
        64,
        RingLayout::Split,
        n.features & VirtioFeatures::EVENT_IDX.bits() != 0,
    )
    .unwrap();
    q.setup(&mut s, &mem, base).unwrap();
    s.set_vring_enable(0, true).unwrap();
    Device { s, mem, q }
}

fn save(d: &mut Device) -> Vec<u8> {
    let (r, w) = nix::unistd::pipe().unwrap();
    let reply = d.s.set_device_state_fd(0, w.as_fd()).unwrap();
    drop(w);
    assert_eq!(
        reply.u64(),
        Some(0x100),
        "success, no fd returned (R-MIG-04)"
    );
    let mut state = Vec::new();
    std::fs::File::from(r).read_to_end(&mut state).unwrap();
    assert_eq!(d.s.check_device_state().unwrap(), 0, "R-MIG-08");
    state
}

/// Loads `state` into a fresh process's session (memory set, rings stopped); returns CHECK's value.
fn load(s: &mut Session, state: &[u8]) -> u64 {
    let (r, w) = nix::unistd::pipe().unwrap();
    let reply = s.set_device_state_fd(1, r.as_fd()).unwrap();
    drop(r);
    assert_eq!(reply.u64(), Some(0x100));
    std::fs::File::from(w).write_all(state).unwrap();
    s.check_device_state().unwrap()
}

fn fresh_session(be: &Backend) -> Session {
    let mut s = Session::connect(&be.1, SessionOptions::default()).unwrap();
    s.negotiate(&Wanted::all()).unwrap();
    s
}

#[test]
fn state_saved_by_one_process_loads_into_another_and_the_data_survives() {
    let a = start(&[]);
    let mut d = device(&a, 0);
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 13) as u8).collect();
    assert_eq!(
        blk_write(&mut d.q, &mut d.mem, 8, &data, T).unwrap().status,
        blk::S_OK
    );
    // A transfer while the ring runs is refused (R-MIG-03).
    let (_r, w) = nix::unistd::pipe().unwrap();
    assert_ne!(
        d.s.set_device_state_fd(0, w.as_fd()).unwrap().u64(),
        Some(0x100)
    );
    let base = d.s.get_vring_base(0).unwrap().num as u16;
    assert_eq!(base, 1);
    let state = save(&mut d);

    let b = start(&[]);
    let mut s = fresh_session(&b);
    assert_eq!(load(&mut s, &state), 0, "R-MIG-11: the state loads");
    drop(s);
    let mut d2 = device(&b, base);
    let r = blk_read(&mut d2.q, &mut d2.mem, 8, 4096, T).unwrap();
    assert_eq!(r.status, blk::S_OK);
    assert_eq!(
        r.data, data,
        "data written before the transfer is read back after it"
    );
}

#[test]
fn truncated_and_corrupt_states_are_refused() {
    let a = start(&["bad-device-state"]);
    let mut d = device(&a, 0);
    d.s.get_vring_base(0).unwrap();
    let corrupt = save(&mut d);
    let b = start(&[]);
    let mut s = fresh_session(&b);
    assert_ne!(
        load(&mut s, &corrupt),
        0,
        "a corrupt state must not load (R-MIG-09)"
    );
    assert_ne!(
        load(&mut s, &corrupt[..corrupt.len() / 2]),
        0,
        "a truncated state must not load"
    );
    assert_ne!(load(&mut s, &[7u8; 17]), 0, "17 random bytes must not load");
}
