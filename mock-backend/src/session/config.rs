//! The device's declared spaces: the config space read and written (R-CFG-02, R-CFG-03, the
//! `config-8` fault's shorter one) and the shared memory regions GET_SHMEM_CONFIG lists.

use vhu_protocol::ProtocolFeatures;
use vhu_protocol::wire::payload::{Body, ConfigHeader};

use crate::faults::Fault;

use super::{CONFIG_8_LEN, Outcome, Session};

impl Session<'_> {
    /// Whether `config-8` makes the config space end before `offset + len`.
    fn past_config_8(&self, offset: u32, len: usize) -> bool {
        self.has(Fault::Config8) && u64::from(offset) + len as u64 > CONFIG_8_LEN
    }

    pub(super) fn get_config(&mut self, h: ConfigHeader) -> Outcome {
        let read = self.dev.read_config(h.offset, h.size as usize);
        let inside = h.size > 0 && !self.past_config_8(h.offset, h.size as usize);
        let Some(mut data) = read.ok().filter(|_| inside) else {
            return Outcome::Refused(Body::Empty); // R-CFG-02: an empty payload signals the error.
        };
        if self.has(Fault::ConfigWrongSize) {
            data.resize(data.len() + 4, 0);
        }
        let header = ConfigHeader {
            size: data.len() as u32,
            ..h
        };
        Outcome::Reply(Body::Config(header, data))
    }

    /// R-CFG-03: a guest write (flags 0) may change only `writeback`; a migration restore
    /// (flags 1) any field.
    pub(super) fn set_config(&mut self, h: ConfigHeader, data: &[u8]) -> Outcome {
        if self.past_config_8(h.offset, data.len()) {
            return Outcome::Failed;
        }
        if self.has(Fault::ConfigWriteInvisible) && h.flags == 0 {
            return Outcome::Done;
        }
        match self.dev.write_config(h.offset, data, h.flags) {
            Ok(()) => Outcome::Done,
            Err(_) => Outcome::Failed,
        }
    }

    /// GET_SHMEM_CONFIG (R-SHM-02): sizes indexed by shmid, nregions counting the non-zero ones.
    pub(super) fn get_shmem_config(&mut self) -> Outcome {
        if !self.negotiated(ProtocolFeatures::SHMEM) {
            return Outcome::Failed; // R-NEG-11: not negotiated.
        }
        let mut c = vhu_protocol::wire::payload::ShmemConfig::default();
        for &(id, size) in &self.shmem.declared {
            c.sizes[usize::from(id)] = size + u64::from(self.has(Fault::ShmemSizeUnaligned));
        }
        c.nregions = c.sizes.iter().filter(|&&s| s != 0).count() as u32
            + u32::from(self.has(Fault::ShmemConfigCount));
        Outcome::Reply(Body::ShmemConfig(Box::new(c)))
    }
}
