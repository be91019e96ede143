//! What the benches share: the mock back-end started in-process on a thread, a front-end session
//! negotiated with it, the floor (a raw ping-pong) and the peer (rust-vmm's `vhost` front-end
//! against a `vhost-user-backend` daemon). Each bench target uses part of it.
#![allow(dead_code)]

pub mod peer;

use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::thread::JoinHandle;
use std::time::Duration;

use criterion::Criterion;
use vhu_mock_frontend::memory::USER_ADDR_OFFSET;
use vhu_mock_frontend::{GuestMemory, RegionSpec, Session, SessionOptions};
use vhu_protocol::{Connection, ProtocolFeatures, VirtioFeatures};

/// Criterion settings that keep a whole `cargo bench` under a few minutes on 2 cores.
pub fn criterion() -> Criterion {
    Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
        .configure_from_args()
}

/// Pins the calling thread, and so every thread it starts from now on (they inherit it), to one
/// CPU: `VHU_BENCH_CPU` (default 0). A round trip then costs both sides' work plus two context
/// switches on that CPU, instead of depending on how the scheduler spreads two threads over
/// the cores and how deep the idle one sleeps, which varies by a factor of three from run to
/// run on a 2-core machine. Floor, ours and peer are all measured this way.
pub fn pin_to_one_cpu() {
    let cpu: usize = std::env::var("VHU_BENCH_CPU")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes one bit inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is reduced below CPU_SETSIZE, so the bit is inside `set`.
    unsafe { libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(rc, 0, "cannot pin the bench to CPU {cpu}");
}

/// The mock back-end (`vhu_mock_backend::run_from_args`) serving one end of a socketpair on a
/// thread, as `--fd N`; it returns when the other end closes.
pub struct MockBackend {
    thread: Option<JoinHandle<()>>,
}

impl MockBackend {
    /// Starts the back-end; returns it and the front-end's end of the socket.
    pub fn start() -> (Self, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let fd = theirs.into_raw_fd();
        let thread = std::thread::spawn(move || {
            let args = ["vhu-mock-backend", "--fd", &fd.to_string()];
            let _ = vhu_mock_backend::run_from_args(args);
        });
        (
            Self {
                thread: Some(thread),
            },
            ours,
        )
    }

    /// Waits for the back-end thread (after the front-end closed its end).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A stand-in back-end with no event loop: a thread that reads every message with
/// `vhu_protocol::Connection` and answers GET_FEATURES only. Against it, the front-end's
/// `Connection` shows what our framing costs without the mock back-end's poll loop and dispatch.
pub fn echo_backend() -> (Connection, JoinHandle<()>) {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let thread = std::thread::spawn(move || {
        let conn = Connection::new(theirs, None);
        let code = vhu_protocol::FrontendReq::GetFeatures as u32;
        while let Ok(msg) = conn.recv() {
            if msg.header.request == code {
                let body = vhu_protocol::wire::payload::Body::U64(virtio_bits(0));
                if conn.send_reply(code, &body, &[]).is_err() {
                    break;
                }
            }
        }
    });
    (Connection::new(ours, Some(Duration::from_secs(2))), thread)
}

/// Virtio bits the benches negotiate: VERSION_1 and bit 30, plus `extra`.
pub fn virtio_bits(extra: u64) -> u64 {
    (VirtioFeatures::VERSION_1 | VirtioFeatures::PROTOCOL_FEATURES).bits() | extra
}

/// Protocol bits the benches negotiate (both sides): REPLY_ACK and MQ.
pub fn protocol_bits() -> u64 {
    (ProtocolFeatures::REPLY_ACK | ProtocolFeatures::MQ).bits()
}

/// A front-end session with the mock back-end, negotiated the way QEMU does (GET_FEATURES,
/// GET/SET_PROTOCOL_FEATURES, SET_OWNER, SET_FEATURES) with REPLY_ACK and `virtio_extra`.
pub fn mock_session(virtio_extra: u64) -> (Session, MockBackend) {
    let (backend, stream) = MockBackend::start();
    let conn = Connection::new(stream, Some(Duration::from_secs(2)));
    let mut s = Session::new(conn, SessionOptions::default());
    let offered = s.get_features().expect("GET_FEATURES");
    let offered_pf = s.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
    s.set_protocol_features(offered_pf & protocol_bits())
        .expect("SET_PROTOCOL_FEATURES");
    s.set_owner().expect("SET_OWNER");
    s.set_features(offered & virtio_bits(virtio_extra))
        .expect("SET_FEATURES");
    (s, backend)
}

/// Eight 1 MiB memfd regions, 1 MiB apart in guest and user space.
pub fn eight_regions() -> GuestMemory {
    let specs: Vec<RegionSpec> = (0..8u64)
        .map(|i| RegionSpec {
            guest_addr: i * 0x20_0000,
            size: 0x10_0000,
            user_addr: USER_ADDR_OFFSET + i * 0x20_0000,
            mmap_offset: 0,
        })
        .collect();
    GuestMemory::new(&specs).expect("guest memory")
}

/// The floor: 20-byte messages (12-byte header + 8-byte payload) over a socketpair, read by a
/// thread with one plain `read` each; a message whose first byte is 1 is echoed back, any other
/// is only read.
pub struct Floor {
    stream: UnixStream,
    thread: Option<JoinHandle<()>>,
}

/// The floor's message size: a header and a u64.
pub const FLOOR_BYTES: usize = 20;

impl Floor {
    /// Starts the reading thread.
    pub fn start() -> Self {
        let (stream, mut echo) = UnixStream::pair().expect("socketpair");
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; FLOOR_BYTES];
            while echo.read_exact(&mut buf).is_ok() {
                if buf[0] == 1 && echo.write_all(&buf).is_err() {
                    break;
                }
            }
        });
        Self {
            stream,
            thread: Some(thread),
        }
    }

    /// One round trip: a write, the echo's read and write, a read.
    pub fn ping(&mut self) {
        let mut buf = [1u8; FLOOR_BYTES];
        self.stream.write_all(&buf).expect("floor write");
        self.stream.read_exact(&mut buf).expect("floor read");
    }

    /// `n` messages written without waiting, then one round trip that tells they were all read:
    /// the floor of pipelined one-way messages.
    pub fn one_way(&mut self, n: usize) {
        let buf = [0u8; FLOOR_BYTES];
        for _ in 0..n {
            self.stream.write_all(&buf).expect("floor write");
        }
        self.ping();
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
