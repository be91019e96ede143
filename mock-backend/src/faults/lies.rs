//! The payload check of fault `crash-on-lying-count`.

/// `crash-on-lying-count`: whether a count field of `req`'s payload says more than the payload
/// holds or the protocol allows: SET_MEM_TABLE's `nregions` past the regions sent, past 8 or
/// not the number of fds; GET/SET_CONFIG's `size` past the bytes after its header or past
/// 256; the inflight description's `num_queues` past the device's `queues` or `queue_size`
/// past 32768, or (SET_INFLIGHT_FD) its area past the end of the fd or smaller than those
/// rings need; GET_SHMEM_CONFIG's (unexpected) `nregions` past 256 or past the sizes sent.
pub fn count_lies(
    req: vhu_protocol::FrontendReq,
    payload: &[u8],
    fds: &[std::os::fd::OwnedFd],
    queues: usize,
) -> bool {
    use vhu_protocol::FrontendReq::*;
    let le = |at: usize, n: usize| {
        payload
            .get(at..at + n)
            .map(|b| b.iter().rev().fold(0u64, |a, &x| a << 8 | u64::from(x)))
    };
    let past = |n: u64, max: u64| n > max;
    match req {
        SetMemTable => le(0, 4).is_some_and(|n| {
            let present = (payload.len().saturating_sub(8) / 32) as u64;
            past(n, present) || past(n, 8) || n != fds.len() as u64
        }),
        GetConfig | SetConfig => le(4, 4).is_some_and(|size| {
            past(size, payload.len().saturating_sub(12) as u64) || past(size, 256)
        }),
        GetInflightFd | SetInflightFd => {
            let (Some(size), Some(offset), Some(n), Some(q)) =
                (le(0, 8), le(8, 8), le(16, 2), le(18, 2))
            else {
                return false;
            };
            let fd_len = fds
                .first()
                .and_then(|fd| nix::sys::stat::fstat(fd).ok())
                .map(|st| st.st_size as u64);
            let area_lies = req == SetInflightFd
                && fd_len.is_some_and(|len| {
                    past(size.saturating_add(offset), len) || size < n * (16 + 16 * q)
                });
            past(n, queues as u64) || past(q, 0x8000) || area_lies
        }
        GetShmemConfig => le(0, 4)
            .is_some_and(|n| past(n, 256) || past(n, (payload.len().saturating_sub(8) / 8) as u64)),
        _ => false,
    }
}
