//! The device's declared spaces: GET_CONFIG reads the profile's config space, GET_SHMEM_CONFIG
//! lists its shared memory regions.

use vhu_protocol::wire::payload::{Body, ConfigHeader, ShmemConfig};
use vhu_protocol::{Connection, FrontendReq, Message};

use super::JudgingBackend;

impl JudgingBackend {
    /// GET_CONFIG (bytes past the profile's config space read 0) and GET_SHMEM_CONFIG.
    pub(super) fn handle_config(
        &mut self,
        conn: &Connection,
        msg: Message,
        req: FrontendReq,
        body: Option<Body>,
    ) {
        use FrontendReq::*;
        let code = msg.header.request;
        let p = &self.profile;
        match (req, body) {
            (GetConfig, Some(Body::Config(h, _))) => {
                let mut bytes = vec![0u8; h.size as usize];
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = p.config.get(h.offset as usize + i).copied().unwrap_or(0);
                }
                self.reply(conn, code, &Body::Config(ConfigHeader { ..h }, bytes));
            }
            (GetShmemConfig, _) => {
                let mut c = ShmemConfig::default();
                for (i, &size) in p.shmem.iter().enumerate().take(c.sizes.len()) {
                    c.sizes[i] = size;
                }
                c.nregions = p.shmem.iter().filter(|&&n| n != 0).count() as u32;
                self.reply(conn, code, &Body::ShmemConfig(Box::new(c)));
            }
            _ => self.not_implemented(conn, &msg, req),
        }
    }
}
