//! The peer: rust-vmm's `vhost` front-end (`Frontend`) against a daemon of `vhost-user-backend`
//! serving a minimal back-end (no device work: it accepts what the framework hands it).

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use peer_vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vhost::vhost_user::message::VhostUserHeaderFlag;
use vhost::vhost_user::{Frontend, Listener, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock};
use vhu_mock_frontend::GuestMemory;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

/// A back-end with two queues that does nothing with them.
#[derive(Clone)]
pub struct NullBackend;

impl VhostUserBackend for NullBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        1024
    }

    fn features(&self) -> u64 {
        super::virtio_bits(0)
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::from_bits_retain(super::protocol_bits())
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Without an exit event the daemon's worker thread is never told to stop, and dropping
        // the daemon would wait for it forever.
        new_event_consumer_and_notifier(EventFlag::empty()).ok()
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        Ok(())
    }

    fn handle_event(
        &self,
        _device_event: u16,
        _evset: EventSet,
        _vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        Ok(())
    }
}

/// A negotiated `Frontend` connected to a running daemon.
pub struct Peer {
    /// The front-end.
    pub frontend: Frontend,
    _daemon: VhostUserDaemon<NullBackend>,
    _dir: tempfile::TempDir,
}

impl Peer {
    /// Starts the daemon on a socket in a temporary directory, connects and negotiates
    /// (GET_FEATURES, GET_PROTOCOL_FEATURES, SET_FEATURES, SET_PROTOCOL_FEATURES with REPLY_ACK,
    /// SET_OWNER). Requests carry no NEED_REPLY until [`need_reply`](Self::need_reply).
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path: PathBuf = dir.path().join("peer.sock");
        let mut listener = Listener::new(&path, true).expect("listen");
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut daemon = VhostUserDaemon::new("peer".into(), NullBackend, mem).expect("daemon");
        let connecting = std::thread::spawn(move || Frontend::connect(&path, 2).expect("connect"));
        daemon.start(&mut listener).expect("accept");
        let mut frontend = connecting.join().expect("connect thread");
        let features = frontend.get_features().expect("GET_FEATURES");
        let proto = frontend
            .get_protocol_features()
            .expect("GET_PROTOCOL_FEATURES");
        frontend.set_features(features).expect("SET_FEATURES");
        frontend
            .set_protocol_features(proto)
            .expect("SET_PROTOCOL_FEATURES");
        frontend.set_owner().expect("SET_OWNER");
        Self {
            frontend,
            _daemon: daemon,
            _dir: dir,
        }
    }

    /// Sets NEED_REPLY on every request from now on (`on`), or on none.
    pub fn need_reply(&self, on: bool) {
        let flags = if on {
            VhostUserHeaderFlag::NEED_REPLY
        } else {
            VhostUserHeaderFlag::empty()
        };
        self.frontend.set_hdr_flags(flags);
    }

    /// SET_MEM_TABLE with the regions of `mem` (its memfds, announced user addresses).
    pub fn set_mem_table(&self, mem: &GuestMemory) {
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .regions()
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.spec.guest_addr,
                memory_size: r.spec.size,
                userspace_addr: r.spec.user_addr,
                mmap_offset: r.spec.mmap_offset,
                mmap_handle: r.fd().as_raw_fd(),
            })
            .collect();
        self.frontend
            .set_mem_table(&regions)
            .expect("SET_MEM_TABLE");
    }
}
