//! `--listen`: the harness listens and a back-end connects to it (crosvm and rust-vmm daemons
//! often work this way). The back-end here is the bundled reference back-end's session code
//! driven over a connection this test opens, so it is a real back-end, only reversed.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn a_back_end_that_connects_is_judged_in_listen_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("harness.sock");
    // A connecting back-end: whenever the harness's socket is there, connect and hand the
    // connection to `vhu-conform mock-backend --fd` (a fresh back-end per connection).
    let p = path.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let connector = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let Ok(stream) = UnixStream::connect(&p) else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            let fd = std::os::fd::OwnedFd::from(stream);
            nix::fcntl::fcntl(
                &fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )
            .unwrap();
            let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
            let mut child = Command::new(env!("CARGO_BIN_EXE_vhu-conform"))
                .args(["mock-backend", "--fd", &raw.to_string()])
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            drop(fd);
            let _ = child.wait();
        }
    });
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_vhu-conform"))
        .arg("--listen")
        .arg(&path)
        .args(["--device", "blk", "negotiation/*", "blk/write-read"])
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("PASS  blk/write-read"), "{text}");
    assert!(start.elapsed() < Duration::from_secs(30));
    let _ = connector.join();
}
