//! Device state transfer (spec "Migrating back-end state", checklist 4.11, R-MIG-02..11):
//! SET_DEVICE_STATE_FD saves the device's state (config, ring bases, the disk) into the
//! front-end's pipe, or loads it, on a thread so the main socket keeps being served;
//! CHECK_DEVICE_STATE reports whether the transfer (and, for a load, applying it) succeeded.

use std::os::fd::OwnedFd;
use std::thread::JoinHandle;

use vhu_protocol::wire::payload::{Body, VRING_NOFD_MASK};

use crate::faults::Fault;
use crate::session::{Outcome, Session};

/// A transfer in progress: the thread moving the bytes (a load returns them).
pub type Transfer = JoinHandle<Result<Option<Vec<u8>>, String>>;

/// Direction 0 of SET_DEVICE_STATE_FD: the back-end writes its state.
const SAVE: u32 = 0;

impl Session<'_> {
    /// Starts a transfer over the front-end's pipe. Refused while a ring is started (R-MIG-03)
    /// or while another transfer runs. The reply's bit 8 says no fd of ours is returned
    /// (R-MIG-04).
    pub(crate) fn set_device_state_fd(&mut self, direction: u32, mut fds: Vec<OwnedFd>) -> Outcome {
        let running = self.queues.iter().any(crate::rings::Vring::started);
        // Device state is blk's (DEVICE_STATE is offered for blk only).
        let blk = self.dev.blk().is_some();
        let valid = blk && direction <= 1 && !running && self.transfer.is_none();
        let Some(fd) = fds.pop().filter(|_| valid) else {
            return Outcome::Refused(Body::U64(1));
        };
        let file = std::fs::File::from(fd);
        let spawned = if direction == SAVE {
            let bases: Vec<u8> = (self.queues.iter())
                .flat_map(|q| q.saved_base().to_le_bytes())
                .collect();
            // The state as it is now, built here: the scan for written blocks reads the disk
            // in place (a memcmp per block), where a copy of the whole 64 MiB disk for a
            // thread to scan faulted in 16,384 fresh pages per save and, with several back-ends
            // saving at once under load, took seconds. Only the write goes to the thread, so a
            // front-end slow to read the pipe does not hold up the main socket.
            let Some(blk) = self.dev.blk() else {
                return Outcome::Refused(Body::U64(1));
            };
            let mut state = blk.save(&bases);
            if self.has(Fault::BadDeviceState) {
                // The fault: a wrong checksum, so the state never loads elsewhere.
                if let Some(last) = state.last_mut() {
                    *last ^= 1;
                }
            }
            std::thread::Builder::new().spawn(move || write_state(file, &state))
        } else {
            std::thread::Builder::new().spawn(move || read_state(file))
        };
        match spawned {
            Ok(handle) => {
                self.transfer = Some(handle);
                Outcome::Reply(Body::U64(VRING_NOFD_MASK))
            }
            Err(_) => Outcome::Reply(Body::U64(1)),
        }
    }

    /// CHECK_DEVICE_STATE (R-MIG-08): 0 once the transfer completed and (for a load) the state
    /// applied; non-zero otherwise. A bad state leaves the device as it was.
    pub(crate) fn check_device_state(&mut self) -> Outcome {
        let result = match self.transfer.take().map(JoinHandle::join) {
            Some(Ok(Ok(None))) => Ok(()),
            Some(Ok(Ok(Some(state)))) => self.load(&state),
            _ => Err("no transfer, or it failed".to_string()),
        };
        Outcome::Reply(Body::U64(u64::from(result.is_err())))
    }
}

impl Session<'_> {
    /// Loads the device and, from the state's back-end section, the ring bases (u32 each, in
    /// queue order). The device checks the whole state (checksum included) before it changes.
    fn load(&mut self, state: &[u8]) -> Result<(), String> {
        let blk = self.dev.blk().ok_or("device state is blk's")?;
        let bases = blk.load(state).map_err(|e| e.to_string())?;
        for (q, b) in self.queues.iter_mut().zip(bases.chunks_exact(4)) {
            q.set_base(u32::from_le_bytes(b.try_into().expect("4 bytes")));
        }
        Ok(())
    }
}

fn write_state(mut file: std::fs::File, state: &[u8]) -> Result<Option<Vec<u8>>, String> {
    std::io::Write::write_all(&mut file, state)
        .map(|()| None)
        .map_err(|e| e.to_string())
}

fn read_state(mut file: std::fs::File) -> Result<Option<Vec<u8>>, String> {
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut buf)
        .map(|_| Some(buf))
        .map_err(|e| e.to_string())
}
