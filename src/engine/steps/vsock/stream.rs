//! The stream connection steps of virtio-vsock: listen, connect (either way), send, receive,
//! credit, shutdown and the RST a stray packet earns, each judged on the replies the device
//! gives (R-VSOCK-01, -03, -04, -05) and the bytes the host side saw.

use super::*;

impl Ctx<'_> {
    pub(super) fn vsock_listen(&mut self, step: &Step, port: u32) -> StepResult {
        let uds = self.vsock_uds();
        if !uds.exists() {
            return Err(StepError::NotApplicable(format!(
                "the back-end's host-side vsock socket {} is absent (not a hybrid vsock back-end, or pass --vsock-uds PATH)",
                uds.display()
            )));
        }
        let path = PathBuf::from(format!("{}_{port}", uds.display()));
        let first = bytes_of(step)
            .map(|n| stream_bytes(n, 0x31))
            .unwrap_or_default();
        let behaviour = if first.is_empty() {
            HostBehaviour::Echo
        } else {
            HostBehaviour::SendThenEcho(first.clone())
        };
        let l = HostListener::bind(&path, behaviour)
            .map_err(|e| StepError::Harness(format!("cannot listen on {}: {e}", path.display())))?;
        self.vsock.listeners.insert(port, (l, first));
        Ok(())
    }

    pub(super) fn vsock_connect(&mut self, step: &Step, port: u32) -> StepResult {
        let cid = self.guest_cid(step)?;
        self.ensure_rx(step)?;
        let local = self.vsock.local_port();
        let buf_alloc = buf_alloc_of(step).unwrap_or(DEFAULT_BUF_ALLOC);
        let mut conn = Conn::new(cid, vsock::HOST_CID, local, port, buf_alloc);
        let pkt = conn.packet(vsock::OP_REQUEST, 0, Vec::new());
        self.vsock.conns.insert(port, conn);
        self.vsock_tx(step, &pkt)?;
        let listening = self.vsock.listeners.contains_key(&port);
        let (rule, want) = if listening {
            (step.rule.unwrap_or(id::R_VSOCK_03), vsock::OP_RESPONSE)
        } else {
            (step.rule.unwrap_or(id::R_VSOCK_01), vsock::OP_RST)
        };
        let got = self.await_op(step, port, &[vsock::OP_RESPONSE], self.opts.step_timeout)?;
        self.mark(rule);
        let expected = if listening {
            format!("RESPONSE: the host listens on port {port}")
        } else {
            format!("RST: nobody listens on host port {port}")
        };
        let Some(h) = got else {
            return Err(self.fail(
                rule,
                &format!(
                    "REQUEST to host port {port}: no RESPONSE or RST within {:?}",
                    self.opts.step_timeout
                ),
                &expected,
                "nothing for the connection on the rx queue".into(),
            ));
        };
        if h.op != want {
            return Err(self.fail(
                rule,
                &format!("REQUEST to host port {port} answered {}", op_name(h.op)),
                &expected,
                show(&h),
            ));
        }
        if want == vsock::OP_RST {
            self.vsock.conns.remove(&port);
            return Ok(());
        }
        if h.buf_alloc == 0 {
            return Err(self.fail(
                rule,
                &format!("RESPONSE from host port {port} announces no receive space"),
                "buf_alloc filled: the space the host side has for the guest's data",
                show(&h),
            ));
        }
        self.vsock.established.insert(port);
        Ok(())
    }

    pub(super) fn established(&self, port: u32) -> Result<(), StepError> {
        if self.vsock.established.contains(&port) {
            Ok(())
        } else {
            Err(StepError::Harness(format!(
                "the connection to port {port} is not established: vsock_listen and vsock_connect first"
            )))
        }
    }

    /// Waits until the inbox of `port` holds `n` bytes, granting credit (a CREDIT_UPDATE) each
    /// time the device falls silent; the device's RW never exceeds the credit (checked in
    /// [`Self::pump`]).
    /// Gives up when no byte arrived for a step timeout (credit granted meanwhile), or at the
    /// scenario's deadline: a long transfer that keeps moving is not cut short.
    pub(super) fn collect_rx(
        &mut self,
        step: &Step,
        port: u32,
        n: usize,
    ) -> Result<Vec<u8>, StepError> {
        let quiet = Duration::from_millis(300).min(self.opts.step_timeout);
        let have = |s: &Self| s.vsock.inbox.get(&port).map_or(0, Vec::len);
        let (mut progress, mut seen) = (Instant::now(), 0);
        while have(self) < n
            && progress.elapsed() < self.opts.step_timeout
            && Instant::now() < self.deadline
        {
            if !self.vsock.conns.contains_key(&port) {
                break;
            }
            if have(self) > seen {
                (progress, seen) = (Instant::now(), have(self));
            }
            match self.pump(step, quiet)? {
                Some(h)
                    if h.op == vsock::OP_RST
                        && self.vsock.conns.get(&port).is_some_and(|c| c.owns(&h)) =>
                {
                    break;
                }
                Some(_) => {}
                None => self.conn_send(step, port, vsock::OP_CREDIT_UPDATE, 0)?,
            }
        }
        Ok(self.vsock.inbox.remove(&port).unwrap_or_default())
    }

    pub(super) fn vsock_send(&mut self, step: &Step, port: u32) -> StepResult {
        self.established(port)?;
        let n = bytes_of(step).unwrap_or(0) as usize;
        let data = stream_bytes(n as u32, pattern_of(step).unwrap_or(0x11));
        let rule = step.rule.unwrap_or(id::R_VSOCK_03);
        self.mark(rule);
        let before = self
            .vsock
            .listeners
            .get(&port)
            .map_or(0, |(l, _)| l.received().len());
        let mut sent = 0;
        while sent < n {
            let credit = self.conn(port)?.peer_credit() as usize;
            if credit == 0 {
                self.conn_send(step, port, vsock::OP_CREDIT_REQUEST, 0)?;
                let got = self.await_op(
                    step,
                    port,
                    &[vsock::OP_CREDIT_UPDATE],
                    self.opts.step_timeout,
                )?;
                if self.conn(port)?.peer_credit() == 0 {
                    return Err(self.fail(
                        rule,
                        &format!(
                            "the host side of port {port} gives no credit after {sent} of {n} bytes"
                        ),
                        "a CREDIT_UPDATE with room for more data",
                        got.map_or("nothing".into(), |h| show(&h)),
                    ));
                }
                continue;
            }
            let chunk = credit.min(TX_CHUNK).min(n - sent);
            let pkt = self.conn(port)?.rw(data[sent..sent + chunk].to_vec());
            self.vsock_tx(step, &pkt)?;
            sent += chunk;
        }
        let host = self
            .vsock
            .listeners
            .get(&port)
            .map(|(l, _)| l.wait_received(before + n, self.opts.step_timeout))
            .unwrap_or_default()
            .split_off(before);
        self.same_stream(
            rule,
            &host,
            &data,
            |got, at| {
                format!("the host side read {got} of the {n} bytes sent, differing from byte {at}")
            },
            "every RW payload byte delivered to the host side, in order",
        )?;
        // The host echoes: the same bytes must come back through the rx queue.
        let back = self.collect_rx(step, port, n)?;
        self.same_stream(
            rule,
            &back,
            &data,
            |got, at| {
                format!("the host's echo came back as {got} of {n} bytes, differing from byte {at}")
            },
            "the host side's bytes delivered in RW packets, in order",
        )
    }

    pub(super) fn vsock_recv(&mut self, step: &Step, port: u32) -> StepResult {
        self.established(port)?;
        let want = self
            .vsock
            .listeners
            .get(&port)
            .map(|(_, first)| first.clone())
            .unwrap_or_default();
        let n = (bytes_of(step).unwrap_or(0) as usize).min(want.len());
        self.mark(id::R_VSOCK_07);
        let got = self.collect_rx(step, port, n)?;
        let rule = step.rule.unwrap_or(id::R_VSOCK_03);
        self.mark(rule);
        // Bytes past the n asked for belong to a later step.
        self.same_stream(
            rule,
            &got[..got.len().min(n)],
            &want[..n],
            |got, at| {
                format!(
                    "{got} of the {n} bytes the host side wrote arrived, differing from byte {at}"
                )
            },
            "every byte the host side wrote, in RW packets, in order, as credit allows",
        )
    }

    /// `rule`'s check that a stream arrived whole and in order: `got` is `want`. `summary` is
    /// given how many bytes arrived and the first that differs.
    fn same_stream(
        &mut self,
        rule: RuleId,
        got: &[u8],
        want: &[u8],
        summary: impl FnOnce(usize, usize) -> String,
        expected: &str,
    ) -> StepResult {
        if got == want {
            return Ok(());
        }
        let at = first_difference(got, want);
        Err(self.fail(
            rule,
            &summary(got.len(), at),
            expected,
            format!("{} bytes", got.len()),
        ))
    }

    pub(super) fn vsock_credit_request(&mut self, step: &Step, port: u32) -> StepResult {
        self.established(port)?;
        self.conn_send(step, port, vsock::OP_CREDIT_REQUEST, 0)?;
        let got = self.await_op(
            step,
            port,
            &[vsock::OP_CREDIT_UPDATE],
            self.opts.step_timeout,
        )?;
        let rule = step.rule.unwrap_or(id::R_VSOCK_03);
        self.mark(rule);
        match got {
            Some(h) if h.op == vsock::OP_CREDIT_UPDATE && h.buf_alloc > 0 => Ok(()),
            other => Err(self.fail(
                rule,
                &format!("CREDIT_REQUEST on the connection to port {port} was not answered with a CREDIT_UPDATE"),
                "CREDIT_UPDATE with the host side's buf_alloc and fwd_cnt",
                other.map_or_else(|| format!("nothing within {:?}", self.opts.step_timeout), |h| show(&h)),
            )),
        }
    }

    pub(super) fn vsock_shutdown(&mut self, step: &Step, port: u32) -> StepResult {
        self.established(port)?;
        let flags = vsock::SHUTDOWN_RCV | vsock::SHUTDOWN_SEND;
        self.conn_send(step, port, vsock::OP_SHUTDOWN, flags)?;
        let got = self.await_op(step, port, &[], self.opts.step_timeout)?;
        let rule = step.rule.unwrap_or(id::R_VSOCK_05);
        self.mark(rule);
        self.vsock.established.remove(&port);
        if got.is_none() {
            return Err(self.fail(
                rule,
                &format!("SHUTDOWN (receive and send) of the connection to port {port}: no RST"),
                "RST ends the connection after the driver's full SHUTDOWN",
                format!("nothing within {:?}", self.opts.step_timeout),
            ));
        }
        self.vsock.conns.remove(&port);
        Ok(())
    }

    /// A host-initiated connection (hybrid vsock): `CONNECT <port>` on the back-end's socket;
    /// the device's REQUEST to guest `port` must be well formed (R-VSOCK-02), the driver
    /// accepts it, and the host side serves the connection like a listener's.
    pub(super) fn vsock_host_connect(&mut self, step: &Step, port: u32) -> StepResult {
        let cid = self.guest_cid(step)?;
        self.ensure_rx(step)?;
        let uds = self.vsock_uds();
        if !uds.exists() {
            return Err(StepError::NotApplicable(format!(
                "the back-end's host-side vsock socket {} is absent (not a hybrid vsock back-end, or pass --vsock-uds PATH)",
                uds.display()
            )));
        }
        let mut stream = drv::host_connect(&uds, port).map_err(|e| {
            StepError::NotApplicable(format!(
                "the back-end's host-side socket {} does not take a connection ({e})",
                uds.display()
            ))
        })?;
        self.vsock.awaiting.insert(port);
        let deadline = Instant::now() + self.opts.step_timeout;
        let mut request = None;
        while request.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(h) = self.pump(step, left)? else {
                break;
            };
            let (op, dp) = (h.op, h.dst_port);
            if op == vsock::OP_REQUEST && dp == port {
                request = Some(h);
            }
        }
        self.vsock.awaiting.remove(&port);
        let rule = step.rule.unwrap_or(id::R_VSOCK_03);
        self.mark(rule);
        let Some(h) = request else {
            return Err(self.fail(
                rule,
                &format!("the host side's CONNECT {port} brought no REQUEST to the guest"),
                &format!("a REQUEST to guest port {port} on the rx queue"),
                format!("nothing within {:?}", self.opts.step_timeout),
            ));
        };
        if h.type_ != vsock::TYPE_STREAM || h.buf_alloc == 0 {
            return Err(self.fail(
                id::R_VSOCK_02,
                &format!("the device's REQUEST to guest port {port}: {}", show(&h)),
                "type STREAM and the host side's buf_alloc filled",
                show(&h),
            ));
        }
        let buf_alloc = buf_alloc_of(step).unwrap_or(DEFAULT_BUF_ALLOC);
        let mut conn = Conn::new(cid, vsock::HOST_CID, port, h.src_port, buf_alloc);
        conn.on_packet(&h, 0);
        let pkt = conn.packet(vsock::OP_RESPONSE, 0, Vec::new());
        self.vsock.conns.insert(port, conn);
        self.vsock_tx(step, &pkt)?;
        self.vsock.established.insert(port);
        // The convention's acknowledgement to the host side; not virtio's, so only noted.
        match drv::read_line(&mut stream, self.opts.step_timeout) {
            Some(l) if l.starts_with("OK ") => {}
            other => self.note(format!(
                "step {}: after the guest's RESPONSE the host side got {other:?}, not \"OK <port>\"",
                self.step_no
            )),
        }
        let first = bytes_of(step)
            .map(|n| stream_bytes(n, 0x53))
            .unwrap_or_default();
        let behaviour = if first.is_empty() {
            HostBehaviour::Echo
        } else {
            HostBehaviour::SendThenEcho(first.clone())
        };
        let l = HostListener::adopt(stream, behaviour)
            .map_err(|e| StepError::Harness(format!("host-side stream: {e}")))?;
        self.vsock.listeners.insert(port, (l, first));
        Ok(())
    }

    /// A packet that must be answered with RST: a REQUEST of an unknown socket type, or an RW
    /// for a connection that does not exist (R-VSOCK-04).
    pub(super) fn vsock_probe_rst(&mut self, step: &Step, port: u32) -> StepResult {
        let cid = self.guest_cid(step)?;
        self.ensure_rx(step)?;
        let local = self.vsock.local_port();
        let mut conn = Conn::new(cid, vsock::HOST_CID, local, port, DEFAULT_BUF_ALLOC);
        let (pkt, what) = if matches!(step.action, Action::VsockUnknownType(_)) {
            let mut p = conn.packet(vsock::OP_REQUEST, 0, Vec::new());
            p.hdr.type_ = socket_type_of(step).unwrap_or(UNKNOWN_TYPE);
            let t = p.hdr.type_;
            (p, format!("REQUEST of socket type {t:#x} to port {port}"))
        } else {
            (
                conn.rw(b"vhu-conf".to_vec()),
                format!("RW for a connection to port {port} that does not exist"),
            )
        };
        // Keep the probe's addresses to match the reply, under a key no real connection uses.
        let key = u32::MAX - local;
        self.vsock.conns.insert(key, conn);
        self.vsock_tx(step, &pkt)?;
        let got = self.await_op(step, key, &[vsock::OP_RESPONSE], self.opts.step_timeout)?;
        self.vsock.conns.remove(&key);
        let rule: RuleId = step.rule.unwrap_or(id::R_VSOCK_04);
        self.mark(rule);
        match got {
            Some(h) if h.op == vsock::OP_RST => Ok(()),
            other => Err(self.fail(
                rule,
                &format!("{what}: not answered with RST"),
                "RST",
                other.map_or_else(
                    || {
                        format!(
                            "nothing within {:?} (the packet was dropped)",
                            self.opts.step_timeout
                        )
                    },
                    |h| show(&h),
                ),
            )),
        }
    }
}
