//! The mock front-end against a real back-end written by others: qemu-storage-daemon's
//! vhost-user-blk export (../shared/targets/qemu-storage-daemon.sh). A full session: negotiation,
//! a memory table of two regions with a hole and user addresses unlike guest addresses, queue 0,
//! then a write, a read of the same sectors, a flush, GET_ID and GET_VRING_BASE.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vhu_mock_frontend::blk::{blk_flush, blk_get_id, blk_read, blk_write};
use vhu_mock_frontend::{DriverQueue, GuestMemory, RingLayout, Session, SessionOptions, Wanted};
use vhu_protocol::VirtioFeatures;
use vhu_protocol::virtio::blk;

const T: Duration = Duration::from_secs(5);

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn target_script() -> PathBuf {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/targets/qemu-storage-daemon.sh");
    assert!(
        p.exists(),
        "the real back-end's start script is missing at {}: this test needs ../shared/targets (and qemu-utils installed)",
        p.display()
    );
    p
}

fn start(dir: &Path) -> (Daemon, PathBuf) {
    let sock = dir.join("qsd.sock");
    let child = Command::new(target_script())
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("qemu-storage-daemon.sh must start (is qemu-utils installed?)");
    let mut daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if let Some(status) = daemon.0.try_wait().unwrap() {
            panic!("qemu-storage-daemon exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "qemu-storage-daemon did not create {} within 10 s",
            sock.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (daemon, sock)
}

#[test]
fn a_full_session_with_qemu_storage_daemon_moves_real_data() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, sock) = start(dir.path());
    let mut s = Session::connect(&sock, SessionOptions::default()).unwrap();
    let n = s.negotiate(&Wanted::all()).unwrap();
    assert!(n.features & VirtioFeatures::PROTOCOL_FEATURES.bits() != 0);
    assert!(s.reply_ack(), "qemu-storage-daemon offers REPLY_ACK");

    let mut mem = GuestMemory::new(&GuestMemory::default_layout(8 << 20)).unwrap();
    assert_eq!(s.set_mem_table(&mem).unwrap(), vhu_mock_frontend::Ack::Ok);
    // Put the rings in the second region (non-zero mmap offset, behind the hole).
    mem.alloc(4 << 20, 4096).unwrap();
    let event_idx = n.features & VirtioFeatures::EVENT_IDX.bits() != 0;
    let mut q = DriverQueue::new(&mut mem, 0, 128, RingLayout::Split, event_idx).unwrap();
    q.setup(&mut s, &mem, 0).unwrap();
    assert_eq!(
        s.set_vring_enable(0, true).unwrap(),
        vhu_mock_frontend::Ack::Ok
    );

    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let w = blk_write(&mut q, &mut mem, 16, &data, T).unwrap();
    assert_eq!(w.status, blk::S_OK);
    assert_eq!(
        w.used_len, w.expected_used_len,
        "used length of a write is the status byte"
    );
    assert!(w.canary_intact && w.readonly_intact);

    let r = blk_read(&mut q, &mut mem, 16, 4096, T).unwrap();
    assert_eq!(r.status, blk::S_OK);
    assert_eq!(r.data, data, "the read returns what was written");
    assert_eq!(r.used_len, 4097);
    assert!(r.canary_intact);

    assert_eq!(blk_flush(&mut q, &mut mem, T).unwrap().status, blk::S_OK);
    let id = blk_get_id(&mut q, &mut mem, T).unwrap();
    assert_eq!(id.status, blk::S_OK);

    let state = s.get_vring_base(0).unwrap();
    assert_eq!(state.index, 0);
    assert_eq!(
        state.num,
        u32::from(q.avail_idx()),
        "GET_VRING_BASE returns the avail index reached"
    );
    assert_eq!(q.avail_idx(), 4);
    let t = s.transcript();
    assert!(t.entries.len() > 20, "every message is in the transcript");
    assert!(t.render().contains("SET_MEM_TABLE"));
    assert!(
        t.entries
            .iter()
            .any(|e| e.name == "SET_MEM_TABLE" && e.fds == 2)
    );
}
