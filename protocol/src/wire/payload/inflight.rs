//! GET_INFLIGHT_FD / SET_INFLIGHT_FD: where the inflight tracking area is and what it covers.

wire_struct!(
    /// GET/SET_INFLIGHT_FD's description.
    InflightDesc {
        /// Size of the inflight area.
        mmap_size: u64,
        /// Offset of the area in the fd.
        mmap_offset: u64,
        /// Number of queues the area tracks.
        num_queues: u16,
        /// Size of each of those queues.
        queue_size: u16,
        /// C struct padding, 0.
        padding: u32,
    }
);
