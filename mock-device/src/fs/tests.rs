//! The fs device over hand-built chains.

use std::path::PathBuf;

use zerocopy::{FromBytes, IntoBytes};

use super::wire::*;
use super::*;
use crate::sg::testing::Builder;

const S_IFDIR: u32 = 0o040_000;

/// A request's bytes: header (len filled in) and body.
fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let h = InHeader {
        len: (40 + body.len()) as u32,
        opcode,
        unique,
        nodeid,
        ..InHeader::default()
    };
    [h.as_bytes(), body].concat()
}

/// Sends one request with `room` writable bytes; returns the used length, the out header
/// (if written) and the body.
fn send(
    dev: &mut FsDevice,
    b: &mut Builder,
    queue: u16,
    req: &[u8],
    room: u32,
) -> (u32, Option<OutHeader>, Vec<u8>) {
    let writable: &[u32] = if room == 0 { &[] } else { &[room] };
    let chain = b.chain(&[req], writable);
    let used = dev.serve(queue, &b.mem, &chain);
    let bytes = b.written(&chain, used);
    let h = OutHeader::read_from_prefix(&bytes).ok().map(|(h, _)| h);
    (used, h, bytes.get(16..).unwrap_or_default().to_vec())
}

fn init_body(minor: u32) -> Vec<u8> {
    InitIn {
        major: 7,
        minor,
        max_readahead: 65536,
        flags: 0,
    }
    .as_bytes()
    .to_vec()
}

fn started(dir: Option<PathBuf>) -> (FsDevice, Builder) {
    let mut dev = FsDevice::new(dir).unwrap();
    let mut b = Builder::new();
    let (used, h, _) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::INIT, 1, 0, &init_body(31)),
        256,
    );
    assert_eq!((used, h.unwrap().error), (80, 0));
    (dev, b)
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("vhu-fs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("sub")).unwrap();
        std::fs::write(p.join("hello.txt"), b"hello, virtio-fs\n").unwrap();
        Self(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn config_is_tag_then_one_request_queue() {
    let dev = FsDevice::new(None).unwrap();
    let c = dev.config();
    assert_eq!(c.len(), 40);
    assert_eq!(&c[..12], b"vhu-mock-fs\0");
    assert!(c[12..36].iter().all(|&b| b == 0));
    assert_eq!(u32::from_le_bytes(c[36..].try_into().unwrap()), 1);
    assert_eq!((dev.device_id(), dev.num_queues()), (26, 2));
}

#[test]
fn init_first_then_requests() {
    let mut dev = FsDevice::new(None).unwrap();
    let mut b = Builder::new();
    let (used, h, _) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::GETATTR, 9, 1, &[0; 16]),
        256,
    );
    let h = h.unwrap();
    assert_eq!((used, h.len, h.error, h.unique), (16, 16, -errno::EIO, 9));

    let (used, h, body) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::INIT, 10, 0, &init_body(31)),
        256,
    );
    let h = h.unwrap();
    assert_eq!((used, h.len, h.error, h.unique), (80, 80, 0, 10));
    let out = InitOut::read_from_bytes(&body).unwrap();
    assert_eq!(
        (out.major, out.minor, out.max_write),
        (7, 31, ops::MAX_WRITE)
    );

    // An old driver gets the 24-byte compat reply.
    let (used, _, _) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::INIT, 11, 0, &init_body(22)),
        256,
    );
    assert_eq!(used, 40);
    // Major 6 is refused.
    let mut old = init_body(31);
    old[0] = 6;
    let (_, h, _) = send(&mut dev, &mut b, 1, &request(op::INIT, 12, 0, &old), 256);
    assert_eq!(h.unwrap().error, -errno::EPROTO);
}

#[test]
fn empty_root_is_a_directory_with_nothing_in_it() {
    let (mut dev, mut b) = started(None);
    let (used, h, body) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::GETATTR, 2, 1, &[0; 16]),
        256,
    );
    assert_eq!((used, h.unwrap().len), (120, 120));
    let a = AttrOut::read_from_bytes(&body).unwrap();
    assert_eq!((a.attr.ino, a.attr.mode & 0o170_000), (1, S_IFDIR));

    let (used, h, _) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::LOOKUP, 3, 1, b"nope\0"),
        256,
    );
    let h = h.unwrap();
    assert_eq!(
        (used, h.len, h.error, h.unique),
        (16, 16, -errno::ENOENT, 3)
    );

    let (used, h, _) = send(&mut dev, &mut b, 1, &request(999, 4, 1, &[]), 256);
    assert_eq!((used, h.unwrap().error), (16, -errno::ENOSYS));

    let (used, h, body) = send(&mut dev, &mut b, 1, &request(op::STATFS, 5, 1, &[]), 256);
    assert_eq!((used, h.unwrap().error, body.len()), (96, 0, 80));
}

#[test]
fn passthrough_lookup_open_read_release() {
    let dir = TempDir::new("rw");
    let (mut dev, mut b) = started(Some(dir.0.clone()));
    let (used, h, body) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::LOOKUP, 2, 1, b"hello.txt\0"),
        256,
    );
    assert_eq!((used, h.unwrap().error), (144, 0));
    let e = EntryOut::read_from_bytes(&body).unwrap();
    assert!(e.nodeid > 1);
    assert_eq!((e.attr.size, e.attr.mode & 0o170_000), (17, 0o100_000));

    let open = OpenIn::default();
    let (_, h, body) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::OPEN, 3, e.nodeid, open.as_bytes()),
        64,
    );
    assert_eq!(h.unwrap().error, 0);
    let fh = OpenOut::read_from_bytes(&body).unwrap().fh;
    // Write access is refused: the store is read-only.
    let rw = OpenIn {
        flags: 2,
        open_flags: 0,
    };
    let (_, h, _) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::OPEN, 4, e.nodeid, rw.as_bytes()),
        64,
    );
    assert_eq!(h.unwrap().error, -errno::EROFS);

    let read = ReadIn {
        fh,
        offset: 7,
        size: 4096,
        ..ReadIn::default()
    };
    let (used, h, body) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::READ, 5, e.nodeid, read.as_bytes()),
        4096,
    );
    assert_eq!((used, h.unwrap().len), (26, 26));
    assert_eq!(body, b"virtio-fs\n");
    // A reply never outgrows the room given: 16 + 4 bytes.
    let (used, _, body) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::READ, 6, e.nodeid, read.as_bytes()),
        20,
    );
    assert_eq!((used, body.as_slice()), (20, &b"virt"[..]));

    let rel = ReleaseIn {
        fh,
        ..ReleaseIn::default()
    };
    let (used, h, _) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::RELEASE, 7, e.nodeid, rel.as_bytes()),
        64,
    );
    assert_eq!((used, h.unwrap().error), (16, 0));
    let (_, h, _) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::READ, 8, e.nodeid, read.as_bytes()),
        4096,
    );
    assert_eq!(h.unwrap().error, -errno::EBADF);
}

#[test]
fn names_cannot_leave_the_shared_directory() {
    let dir = TempDir::new("names");
    let (mut dev, mut b) = started(Some(dir.0.clone()));
    for name in [&b"..\0"[..], b".\0", b"sub/../../etc\0", b"\0"] {
        let (_, h, _) = send(&mut dev, &mut b, 1, &request(op::LOOKUP, 2, 1, name), 256);
        assert_eq!(h.unwrap().error, -errno::EINVAL, "{name:?}");
    }
    let (_, h, _) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::LOOKUP, 3, 1, b"sub\0"),
        256,
    );
    assert_eq!(h.unwrap().error, 0);
}

#[test]
fn readdir_lists_dot_dotdot_and_names_in_order() {
    let dir = TempDir::new("dir");
    let (mut dev, mut b) = started(Some(dir.0.clone()));
    let (_, h, body) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::OPENDIR, 2, 1, &[0; 8]),
        64,
    );
    assert_eq!(h.unwrap().error, 0);
    let fh = OpenOut::read_from_bytes(&body).unwrap().fh;
    let read = ReadIn {
        fh,
        size: 4096,
        ..ReadIn::default()
    };
    let (_, _, body) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::READDIR, 3, 1, read.as_bytes()),
        4096,
    );
    let mut names = Vec::new();
    let mut rest = &body[..];
    while let Ok((d, tail)) = DirentHeader::read_from_prefix(rest) {
        names.push(String::from_utf8(tail[..d.namelen as usize].to_vec()).unwrap());
        let rec = (24 + d.namelen as usize).div_ceil(8) * 8;
        rest = &rest[rec..];
    }
    assert_eq!(names, [".", "..", "hello.txt", "sub"]);
    let read = ReadIn {
        fh,
        offset: 3,
        size: 4096,
        ..ReadIn::default()
    };
    let (_, _, body) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::READDIR, 4, 1, read.as_bytes()),
        4096,
    );
    assert_eq!(body.len(), 32); // "sub" only
    let rel = ReleaseIn {
        fh,
        ..ReleaseIn::default()
    };
    let (_, h, _) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::RELEASEDIR, 5, 1, rel.as_bytes()),
        64,
    );
    assert_eq!(h.unwrap().error, 0);
}

#[test]
fn forget_has_no_reply_on_either_queue() {
    let dir = TempDir::new("forget");
    let (mut dev, mut b) = started(Some(dir.0.clone()));
    let (_, _, body) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::LOOKUP, 2, 1, b"sub\0"),
        256,
    );
    let id = EntryOut::read_from_bytes(&body).unwrap().nodeid;
    assert_eq!(dev.session.store.node_count(), 2);
    let f = ForgetIn { nlookup: 1 };
    let (used, _, _) = send(
        &mut dev,
        &mut b,
        0,
        &request(op::FORGET, 3, id, f.as_bytes()),
        0,
    );
    assert_eq!(used, 0);
    assert_eq!(dev.session.store.node_count(), 1);
    // BATCH_FORGET on the request queue, with a writable buffer it must not use.
    send(
        &mut dev,
        &mut b,
        1,
        &request(op::LOOKUP, 4, 1, b"sub\0"),
        256,
    );
    let mut body = BatchForgetIn { count: 1, dummy: 0 }.as_bytes().to_vec();
    body.extend_from_slice(
        ForgetOne {
            nodeid: id + 1,
            nlookup: 1,
        }
        .as_bytes(),
    );
    let (used, _, _) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::BATCH_FORGET, 5, 0, &body),
        64,
    );
    assert_eq!(used, 0);
    assert_eq!(dev.session.store.node_count(), 1);
}

#[test]
fn malformed_requests_get_einval_or_nothing() {
    let (mut dev, mut b) = started(None);
    // Short header, room for a reply: -EINVAL with the unique the bytes hold.
    let short = &request(op::GETATTR, 77, 1, &[])[..20];
    let (used, h, _) = send(&mut dev, &mut b, 1, short, 64);
    let h = h.unwrap();
    assert_eq!((used, h.error, h.unique), (16, -errno::EINVAL, 77));
    // No room at all: nothing written.
    assert_eq!(send(&mut dev, &mut b, 1, short, 0).0, 0);
    assert_eq!(
        send(
            &mut dev,
            &mut b,
            1,
            &request(op::GETATTR, 3, 1, &[0; 16]),
            8
        )
        .0,
        0
    );
    // len larger than what was sent.
    let mut bad = request(op::GETATTR, 4, 1, &[0; 16]);
    bad[0] = 200;
    let (_, h, _) = send(&mut dev, &mut b, 1, &bad, 256);
    assert_eq!(h.unwrap().error, -errno::EINVAL);
    // A header fits, the attributes do not.
    let (used, h, _) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::GETATTR, 5, 1, &[0; 16]),
        32,
    );
    assert_eq!((used, h.unwrap().error), (16, -errno::EINVAL));
    // A short body.
    let (_, h, _) = send(&mut dev, &mut b, 1, &request(op::READ, 6, 1, &[0; 8]), 256);
    assert_eq!(h.unwrap().error, -errno::EINVAL);
}

#[test]
fn destroy_ends_the_session() {
    let (mut dev, mut b) = started(None);
    let (used, h, _) = send(&mut dev, &mut b, 1, &request(op::DESTROY, 2, 0, &[]), 64);
    assert_eq!((used, h.unwrap().error), (16, 0));
    let (_, h, _) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::GETATTR, 3, 1, &[0; 16]),
        256,
    );
    assert_eq!(h.unwrap().error, -errno::EIO);
}

#[test]
fn faults_break_their_rules() {
    let (mut dev, mut b) = started(None);
    dev.set_faults(FsFaults {
        unique_not_echoed: true,
        ..FsFaults::default()
    });
    let (_, h, _) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::GETATTR, 40, 1, &[0; 16]),
        256,
    );
    assert_eq!(h.unwrap().unique, 41);

    dev.set_faults(FsFaults {
        len_mismatch: true,
        ..FsFaults::default()
    });
    let (used, h, _) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::GETATTR, 41, 1, &[0; 16]),
        256,
    );
    assert_eq!((used, h.unwrap().len), (120, 128));

    dev.set_faults(FsFaults {
        positive_errno: true,
        ..FsFaults::default()
    });
    let (_, h, _) = send(
        &mut dev,
        &mut b,
        1,
        &request(op::LOOKUP, 42, 1, b"x\0"),
        256,
    );
    assert_eq!(h.unwrap().error, errno::ENOENT);

    dev.set_faults(FsFaults {
        forget_reply: true,
        ..FsFaults::default()
    });
    let f = ForgetIn { nlookup: 1 };
    let (used, _, _) = send(
        &mut dev,
        &mut b,
        0,
        &request(op::FORGET, 43, 2, f.as_bytes()),
        0,
    );
    assert_eq!(used, 16);
}
