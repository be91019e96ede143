//! One typed method per front-end message, GET_FEATURES to SET_DEVICE_STATE_FD: each builds the
//! body, sends it through the checked path and decodes the answer.

use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;

use vhu_protocol::wire::payload::{
    Body, ConfigHeader, DeviceStateParams, InflightDesc, IotlbMsg, MemRegion, VringAddr,
    VringState, vring_fd_word,
};
use vhu_protocol::{FrontendReq, Message};

use super::{Ack, ReplyViolation, Session, SessionError};
use crate::channel::{BackendChannel, IotlbLink};
use crate::inflight::{InflightBuffer, split_area_size};
use crate::iommu::{MainLink, Mapping};
use crate::memory::{GuestMemory, GuestRegion};

impl Session {
    /// GET_FEATURES: the virtio features the back-end offers (0 if the reply is not a u64).
    pub fn get_features(&mut self) -> Result<u64, SessionError> {
        self.u64_reply(FrontendReq::GetFeatures)
    }

    /// SET_FEATURES of `f`; the session records it as the acked virtio features.
    pub fn set_features(&mut self, f: u64) -> Result<Ack, SessionError> {
        self.ack(FrontendReq::SetFeatures, &Body::U64(f), &[])
    }

    /// GET_PROTOCOL_FEATURES: the protocol features the back-end offers.
    pub fn get_protocol_features(&mut self) -> Result<u64, SessionError> {
        self.u64_reply(FrontendReq::GetProtocolFeatures)
    }

    /// SET_PROTOCOL_FEATURES of `f`; the session records it as the acked protocol features
    /// (REPLY_ACK among them turns on NEED_REPLY).
    pub fn set_protocol_features(&mut self, f: u64) -> Result<Ack, SessionError> {
        self.ack(FrontendReq::SetProtocolFeatures, &Body::U64(f), &[])
    }

    /// SET_OWNER: claims the back-end for this session.
    pub fn set_owner(&mut self) -> Result<Ack, SessionError> {
        self.ack(FrontendReq::SetOwner, &Body::Empty, &[])
    }

    /// RESET_OWNER: releases ownership (deprecated by the spec).
    pub fn reset_owner(&mut self) -> Result<Ack, SessionError> {
        self.ack(FrontendReq::ResetOwner, &Body::Empty, &[])
    }

    /// GET_QUEUE_NUM: the largest number of queues the back-end supports (MQ).
    pub fn get_queue_num(&mut self) -> Result<u64, SessionError> {
        self.u64_reply(FrontendReq::GetQueueNum)
    }

    /// GET_MAX_MEM_SLOTS: how many regions ADD_MEM_REG may install (CONFIGURE_MEM_SLOTS).
    pub fn get_max_mem_slots(&mut self) -> Result<u64, SessionError> {
        self.u64_reply(FrontendReq::GetMaxMemSlots)
    }

    /// SET_MEM_TABLE with every region of `mem`, one fd each, in order.
    pub fn set_mem_table(&mut self, mem: &GuestMemory) -> Result<Ack, SessionError> {
        let fds: Vec<BorrowedFd<'_>> = mem.regions().iter().map(GuestRegion::fd).collect();
        self.ack(
            FrontendReq::SetMemTable,
            &Body::MemTable(mem.mem_regions()),
            &fds,
        )
    }

    /// ADD_MEM_REG of one region with its fd.
    pub fn add_mem_reg(&mut self, region: &GuestRegion) -> Result<Ack, SessionError> {
        self.ack(
            FrontendReq::AddMemReg,
            &Body::SingleRegion(region.mem_region()),
            &[region.fd()],
        )
    }

    /// REM_MEM_REG, no fd (R-MEM-13).
    pub fn rem_mem_reg(&mut self, region: MemRegion) -> Result<Ack, SessionError> {
        self.ack(FrontendReq::RemMemReg, &Body::SingleRegion(region), &[])
    }

    fn vring_state(&mut self, req: FrontendReq, index: u32, num: u32) -> Result<Ack, SessionError> {
        self.ack(req, &Body::VringState(VringState { index, num }), &[])
    }

    /// SET_VRING_NUM: the ring size of vring `index`.
    pub fn set_vring_num(&mut self, index: u32, num: u32) -> Result<Ack, SessionError> {
        self.vring_state(FrontendReq::SetVringNum, index, num)
    }

    /// SET_VRING_BASE: the next avail index the back-end reads on vring `index`.
    pub fn set_vring_base(&mut self, index: u32, base: u32) -> Result<Ack, SessionError> {
        self.vring_state(FrontendReq::SetVringBase, index, base)
    }

    /// SET_VRING_ENABLE: enables or disables vring `index`.
    pub fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<Ack, SessionError> {
        self.vring_state(FrontendReq::SetVringEnable, index, enable.into())
    }

    /// GET_VRING_BASE: stops the ring, returns its state.
    pub fn get_vring_base(&mut self, index: u32) -> Result<VringState, SessionError> {
        self.vring_base_of(FrontendReq::GetVringBase, index)
    }

    /// GET_VRING_BASE_SKIP_DRAIN (45, protocol bit 23): stops the ring without waiting for the
    /// requests in flight, which the back-end records in the inflight buffer; the reply is a
    /// vring state, as GET_VRING_BASE's.
    pub fn get_vring_base_skip_drain(&mut self, index: u32) -> Result<VringState, SessionError> {
        self.vring_base_of(FrontendReq::GetVringBaseSkipDrain, index)
    }

    fn vring_base_of(&mut self, req: FrontendReq, index: u32) -> Result<VringState, SessionError> {
        let m = self
            .request(
                req,
                &Body::VringState(VringState { index, num: 0 }),
                &[],
                None,
            )?
            .expect("explicit reply");
        match m.body(req.reply_body()) {
            Ok(Body::VringState(s)) => Ok(s),
            _ => Err(SessionError::BadReply {
                during: req,
                reason: ReplyViolation::NotVringState,
                message: Box::new(m),
            }),
        }
    }

    /// SET_VRING_ADDR: where vring `addr.index`'s three areas are, as user addresses.
    pub fn set_vring_addr(&mut self, addr: &VringAddr) -> Result<Ack, SessionError> {
        self.ack(FrontendReq::SetVringAddr, &Body::VringAddr(*addr), &[])
    }

    fn vring_fd(
        &mut self,
        req: FrontendReq,
        index: u8,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Ack, SessionError> {
        let word = vring_fd_word(index, fd.is_none());
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        self.ack(req, &Body::U64(word), &fds)
    }

    /// SET_VRING_KICK (None: bit 8, polling mode).
    pub fn set_vring_kick(
        &mut self,
        index: u8,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Ack, SessionError> {
        self.vring_fd(FrontendReq::SetVringKick, index, fd)
    }

    /// SET_VRING_CALL (None: bit 8).
    pub fn set_vring_call(
        &mut self,
        index: u8,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Ack, SessionError> {
        self.vring_fd(FrontendReq::SetVringCall, index, fd)
    }

    /// SET_VRING_ERR (None: bit 8).
    pub fn set_vring_err(
        &mut self,
        index: u8,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Ack, SessionError> {
        self.vring_fd(FrontendReq::SetVringErr, index, fd)
    }

    /// GET_CONFIG: the raw reply, for the engine to judge (R-CFG-01/02).
    pub fn get_config(&mut self, offset: u32, size: u32) -> Result<Message, SessionError> {
        let body = Body::Config(
            ConfigHeader {
                offset,
                size,
                flags: 0,
            },
            vec![0; size as usize],
        );
        Ok(self
            .request(FrontendReq::GetConfig, &body, &[], None)?
            .expect("explicit reply"))
    }

    /// SET_CONFIG: writes `data` at `offset` of the device config space.
    pub fn set_config(
        &mut self,
        offset: u32,
        flags: u32,
        data: &[u8],
    ) -> Result<Ack, SessionError> {
        let body = Body::Config(
            ConfigHeader {
                offset,
                size: data.len() as u32,
                flags,
            },
            data.to_vec(),
        );
        self.ack(FrontendReq::SetConfig, &body, &[])
    }

    /// SET_STATUS; status 0 resets the device, so the front-end drops every SHMEM mapping
    /// (R-SHM-09).
    pub fn set_status(&mut self, status: u8) -> Result<Ack, SessionError> {
        if let (0, Some(ch)) = (status, &self.channel) {
            ch.drop_shmem_mappings();
        }
        self.ack(FrontendReq::SetStatus, &Body::U64(status.into()), &[])
    }

    /// GET_STATUS: the device status byte, as a u64.
    pub fn get_status(&mut self) -> Result<u64, SessionError> {
        self.u64_reply(FrontendReq::GetStatus)
    }

    /// RESET_DEVICE; the front-end drops every SHMEM mapping (R-SHM-09).
    pub fn reset_device(&mut self) -> Result<Ack, SessionError> {
        if let Some(ch) = &self.channel {
            ch.drop_shmem_mappings();
        }
        self.ack(FrontendReq::ResetDevice, &Body::Empty, &[])
    }

    /// GET_SHMEM_CONFIG: the raw reply. A well-formed answer declares the regions the back-end
    /// channel maps SHMEM_MAP into.
    pub fn get_shmem_config(&mut self) -> Result<Message, SessionError> {
        let m = self
            .request(FrontendReq::GetShmemConfig, &Body::Empty, &[], None)?
            .expect("explicit reply");
        if let Ok(Body::ShmemConfig(c)) = m.body(FrontendReq::GetShmemConfig.reply_body()) {
            let sizes = c.sizes.to_vec();
            if let Some(ch) = &self.channel {
                ch.set_shmem_config(&sizes);
            }
            self.shmem_sizes = Some(sizes);
        }
        Ok(m)
    }

    /// GET_INFLIGHT_FD for `num_queues` split rings of `queue_size` entries: the area the
    /// back-end hands out, checked (see [`InflightBuffer::new`]). An answer without exactly one
    /// fd, or whose description is unusable (zero, wrapping, absurdly large, too small for the
    /// queues, past the end of the fd), is a [`SessionError::BadReply`]: the back-end's fault.
    pub fn get_inflight_fd(
        &mut self,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<InflightBuffer, SessionError> {
        let req = FrontendReq::GetInflightFd;
        let ask = Body::Inflight(InflightDesc {
            mmap_size: 0,
            mmap_offset: 0,
            num_queues,
            queue_size,
            padding: 0,
        });
        let mut m = self.request(req, &ask, &[], None)?.expect("explicit reply");
        let bad = |reason: ReplyViolation, m: Message| SessionError::BadReply {
            during: req,
            reason,
            message: Box::new(m),
        };
        let desc = match m.body(req.reply_body()) {
            Ok(Body::Inflight(d)) => d,
            other => {
                let what = format!("{other:?}");
                return Err(bad(ReplyViolation::NotInflightDesc(what), m));
            }
        };
        if m.fds.len() != 1 {
            let n = m.fds.len();
            return Err(bad(ReplyViolation::InflightFds { got: n }, m));
        }
        let fd = m.fds.remove(0);
        InflightBuffer::new(desc, fd, split_area_size(num_queues, queue_size)).map_err(|e| {
            if e.is_backend_fault() {
                bad(ReplyViolation::UnusableInflight(e.to_string()), m)
            } else {
                SessionError::Local {
                    what: "cannot inspect the inflight fd".into(),
                    source: std::io::Error::other(e.to_string()),
                }
            }
        })
    }

    /// SET_INFLIGHT_FD: gives a buffer back (R-INFL-03).
    pub fn set_inflight_fd(&mut self, buf: &InflightBuffer) -> Result<Ack, SessionError> {
        self.ack(
            FrontendReq::SetInflightFd,
            &Body::Inflight(buf.desc()),
            &[buf.fd()],
        )
    }

    /// IOTLB_MSG: `msg` as given (an update, an invalidation, or anything a test wants to
    /// send), with NEED_REPLY if `need_reply` (QEMU sets it whenever REPLY_ACK is negotiated),
    /// and the back-end's u64 answer, which is due either way (R-IOTLB-02): [`Ack::Ok`] for 0,
    /// [`Ack::Failed`] otherwise.
    pub fn iotlb_msg(&mut self, msg: &IotlbMsg, need_reply: bool) -> Result<Ack, SessionError> {
        let m = self.request(
            FrontendReq::IotlbMsg,
            &Body::Iotlb(*msg),
            &[],
            Some(need_reply),
        )?;
        Ok(match m.and_then(|m| m.u64()) {
            Some(0) => Ack::Ok,
            Some(v) => Ack::Failed(v),
            None => Ack::Failed(u64::MAX),
        })
    }

    /// IOTLB_MSG update of `m` (type 2: iova, size, user address, perm).
    pub fn iotlb_update(&mut self, m: &Mapping, need_reply: bool) -> Result<Ack, SessionError> {
        self.iotlb_msg(&m.update(), need_reply)
    }

    /// IOTLB_MSG invalidation of `m`'s range (type 3: iova, size).
    pub fn iotlb_invalidate(&mut self, m: &Mapping, need_reply: bool) -> Result<Ack, SessionError> {
        self.iotlb_msg(&m.invalidate(), need_reply)
    }

    /// SET_DEVICE_STATE_FD: the raw reply (u64 result, maybe an fd).
    pub fn set_device_state_fd(
        &mut self,
        direction: u32,
        fd: BorrowedFd<'_>,
    ) -> Result<Message, SessionError> {
        let body = Body::DeviceState(DeviceStateParams {
            direction,
            phase: 0,
        });
        Ok(self
            .request(FrontendReq::SetDeviceStateFd, &body, &[fd], None)?
            .expect("explicit reply"))
    }

    /// CHECK_DEVICE_STATE: the back-end's u64 result of the last state transfer (0 success).
    pub fn check_device_state(&mut self) -> Result<u64, SessionError> {
        self.u64_reply(FrontendReq::CheckDeviceState)
    }

    /// SET_BACKEND_REQ_FD: creates the channel's socketpair, starts serving it, hands one end over.
    pub fn set_backend_req_fd(&mut self) -> Result<Ack, SessionError> {
        let (ours, theirs) = UnixStream::pair().map_err(|source| SessionError::Local {
            what: "cannot create the back-end channel socketpair".into(),
            source,
        })?;
        let link = IotlbLink {
            main: MainLink::new(&self.conn),
            // As QEMU: NEED_REPLY on the update once REPLY_ACK is negotiated.
            need_reply: self.reply_ack(),
            iommu: self.iommu.clone(),
        };
        let channel = BackendChannel::start(ours, self.start, Some(link)).map_err(|source| {
            SessionError::Local {
                what: "cannot start the back-end channel".into(),
                source,
            }
        })?;
        if let Some(sizes) = &self.shmem_sizes {
            channel.set_shmem_config(sizes);
        }
        self.channel = Some(channel);
        let fd = std::os::fd::AsFd::as_fd(&theirs);
        self.ack(FrontendReq::SetBackendReqFd, &Body::Empty, &[fd])
    }
}
