//! One TCP connection: two reassembled directions, their parsers, and the pairing state they
//! share (see [`super::pairing`]).

use super::head::Kind;
use super::pairing::{ConnSink, Current, Pending, ResponseBuild};
use super::parser::StreamParser;
use super::reassembly::{Piece, Reassembler};
use super::tls_decrypt::{SessionSource, TlsSession};
use super::{CaptureLimits, FlowKey, HttpEvent, ParserDrops};
use std::collections::VecDeque;

#[derive(Debug, Default)]
struct Direction {
    reasm: Reassembler,
    parser: StreamParser,
}

#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) key: FlowKey,
    pub(crate) last_ns: u64,
    /// 0: ingress (received by the pod), 1: egress.
    dirs: [Direction; 2],
    current: [Current; 2],
    pending: VecDeque<Pending>,
    response: Option<ResponseBuild>,
    next_id: u64,
    /// Responses still to come for requests dropped by the pending cap (the oldest ones).
    owed_responses: u64,
    upgraded: bool,
    finished: [bool; 2],
    /// [`Conn::buffered`] when the tracker last counted it into its total: the bytes to take
    /// back out before the next count, without recomputing them.
    counted: usize,
    /// The connection's first bytes were looked at for a TLS ClientHello.
    tls_checked: bool,
    /// A TLS connection being decrypted: its plaintext, not its bytes, goes to the parsers.
    tls: Option<Box<TlsSession>>,
    /// The TLS outcome (decrypted, given up) was counted.
    tls_counted: bool,
    /// [`Conn::tls_without_session`] answered once.
    tls_without_session_reported: bool,
}

/// What to do with one direction's reassembler.
enum Op<'d> {
    Push {
        seq: u32,
        data: &'d [u8],
        ts: u64,
    },
    Missing {
        seq: u32,
        len: u64,
        ts: u64,
    },
    Expire(u64),
    Finish {
        fin_seq: u32,
        ts: u64,
    },
    Flush {
        ts: u64,
    },
    /// The stream starts over at an unknown distance: nothing held survives.
    Restart {
        ts: u64,
    },
    /// The TLS session's keys came: decrypt what the direction holds.
    ReleaseTls,
}

impl Conn {
    pub(crate) fn new(key: FlowKey, now_ns: u64) -> Self {
        Conn {
            key,
            last_ns: now_ns,
            dirs: Default::default(),
            current: [Current::None; 2],
            pending: VecDeque::new(),
            response: None,
            next_id: 0,
            owed_responses: 0,
            upgraded: false,
            finished: [false; 2],
            counted: 0,
            tls_checked: false,
            tls: None,
            tls_counted: false,
            tls_without_session_reported: false,
        }
    }

    /// Its cgroup's TLS is captured by probes on reads and writes: the connection's bytes are
    /// parsed as they are (and given up as not HTTP when encrypted), not decrypted.
    pub(crate) fn skip_tls_detection(&mut self) {
        self.tls_checked = true;
    }

    /// Once, when this TLS connection completed its handshake without a session record and is
    /// over (`closing`) or given up: its cgroup, whose processes handshake some other way.
    pub(crate) fn tls_without_session(&mut self, closing: bool) -> Option<u64> {
        let tls = self.tls.as_ref()?;
        let over = closing || tls.failed().is_some();
        if self.tls_without_session_reported || !over || !tls.handshake_without_session() {
            return None;
        }
        self.tls_without_session_reported = true;
        Some(self.key.cgroup_id)
    }

    /// The client random of a TLS connection still waiting for its session record.
    pub(crate) fn tls_awaiting_keys(&self) -> Option<&[u8; super::tls_decrypt::CLIENT_RANDOM]> {
        self.tls
            .as_ref()
            .filter(|t| t.awaiting_keys())
            .map(|t| t.client_random())
    }

    /// The session record of this TLS connection came: `window` is the start of the `SSL`
    /// object, with the client random at `random_at`; `session` gives a TLS 1.2 session's.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn tls_session(
        &mut self,
        window: &[u8],
        random_at: usize,
        pid: u32,
        session: SessionSource,
        limits: &CaptureLimits,
        drops: &mut ParserDrops,
        out: &mut Vec<HttpEvent>,
    ) {
        let Some(tls) = self.tls.as_mut() else { return };
        tls.set_window(window, random_at, pid, session);
        for dir in self.request_side_first() {
            self.run(dir, Op::ReleaseTls, limits, drops, out);
        }
    }

    /// The session record of a process whose reads and writes are probed: its plaintext comes
    /// from there, this connection's bytes are not parsed.
    pub(crate) fn tls_captured_by_calls(&mut self, pid: u32) {
        if let Some(tls) = self.tls.as_mut() {
            tls.captured_by_calls(pid);
            self.tls_counted = true;
        }
    }

    /// TLS 1.2: where this process's `SSL` objects point to their session, once, when the agent
    /// found it by reading the process's memory.
    pub(crate) fn tls_take_learnt_pointer(&mut self) -> Option<(u32, usize)> {
        self.tls.as_mut()?.take_learnt_pointer()
    }

    /// A TLS connection given up because of its process's OpenSSL: the process, and why (once).
    pub(crate) fn tls_take_fallback(&mut self) -> Option<(u32, super::tls_decrypt::GiveUp)> {
        self.tls.as_mut()?.take_fallback()
    }

    /// Counts how a TLS connection ended up, once: decrypted both ways, or given up.
    fn count_tls(&mut self, drops: &mut ParserDrops, closing: bool) {
        let Some(tls) = self.tls.as_ref() else { return };
        if self.tls_counted {
            return;
        }
        // A connection given up is counted once its session record came (which may say that
        // the process's reads and writes are probed: then it is captured there, not lost) or
        // when it closes.
        let given_up = tls.failed().is_some() && !tls.awaiting_keys();
        if given_up || (closing && !tls.keyed()) {
            drops.tls_not_decrypted += 1;
            self.tls_counted = true;
        } else if tls.keyed() {
            drops.tls_decrypted += 1;
            self.tls_counted = true;
        }
    }

    /// What the tracker counted of this connection so far.
    pub(crate) fn counted(&self) -> usize {
        self.counted
    }

    /// Counts the buffered bytes again after a change: (what was counted, what is now).
    pub(crate) fn recount(&mut self) -> (usize, usize) {
        let before = self.counted;
        self.counted = self.buffered();
        (before, self.counted)
    }

    /// Bytes buffered by this connection (held segments, partial heads, kept heads and bodies).
    pub(crate) fn buffered(&self) -> usize {
        let dirs: usize = self
            .dirs
            .iter()
            .map(|d| d.reasm.buffered() + d.parser.buffered())
            .sum::<usize>()
            + self.tls.as_ref().map_or(0, |t| t.buffered());
        let pending: usize = self
            .pending
            .iter()
            .map(|p| p.head_bytes + p.request.body.capacity())
            .sum();
        let response = self.response.as_ref().map_or(0, |b| {
            b.response.headers.heap_bytes() + b.response.body.capacity()
        });
        dirs + pending + response
    }

    pub(crate) fn both_finished(&self) -> bool {
        self.finished[0] && self.finished[1]
    }

    /// Runs `op` on direction `dir`, feeding what it delivers to that direction's parser.
    fn run(
        &mut self,
        dir: usize,
        op: Op,
        limits: &CaptureLimits,
        drops: &mut ParserDrops,
        out: &mut Vec<HttpEvent>,
    ) {
        let mut decided = None;
        let mut upgraded = self.upgraded;
        {
            let Conn {
                key,
                dirs,
                current,
                pending,
                response,
                next_id,
                owed_responses,
                tls,
                ..
            } = self;
            let Direction { reasm, parser } = &mut dirs[dir];
            let mut sink = ConnSink {
                ingress: dir == 0,
                key,
                current: &mut current[dir],
                pending,
                response,
                next_id,
                owed_responses,
                upgraded: &mut upgraded,
                decided: &mut decided,
                drops,
                out,
                max_body: limits.max_body_bytes,
            };
            let mut deliver = |piece: Piece| match (piece, tls.as_deref_mut()) {
                (Piece::Data(bytes, ts), None) => parser.feed(bytes, ts, limits, &mut sink),
                (Piece::Missing(n, ts), None) => parser.missing(n, ts, &mut sink),
                (Piece::Data(bytes, ts), Some(tls)) => tls.feed(dir, bytes, ts, &mut |plain, ts| {
                    parser.feed(plain, ts, limits, &mut sink)
                }),
                (Piece::Missing(..), Some(tls)) => tls.gap(),
            };
            match op {
                Op::Push { seq, data, ts } => reasm.push(seq, data, ts, &mut deliver),
                Op::Missing { seq, len, ts } => reasm.push_missing(seq, len, ts, &mut deliver),
                Op::Expire(now) => reasm.expire(now, &mut deliver),
                Op::Finish { fin_seq, ts } => {
                    reasm.finish(fin_seq, ts, &mut deliver);
                    parser.eof(ts, &mut sink);
                }
                Op::Restart { ts } => {
                    *reasm = Reassembler::default();
                    sink.drops.gaps += 1;
                    parser.discontinuity(ts, &mut sink);
                }
                Op::Flush { ts } => {
                    reasm.flush(&mut deliver);
                    reasm.close();
                    parser.eof(ts, &mut sink);
                }
                Op::ReleaseTls => {
                    if let Some(tls) = tls.as_deref_mut() {
                        tls.release(dir, &mut |plain, ts| parser.feed(plain, ts, limits, &mut sink));
                    }
                }
            }
            reasm.take_counters(drops);
        }
        if let Some(kind) = decided {
            self.dirs[1 - dir].parser.set_kind(kind.opposite());
        }
        self.count_tls(drops, false);
        if upgraded && !self.upgraded {
            self.upgraded = true;
            drops.upgraded += 1;
            for d in &mut self.dirs {
                d.parser.stop();
                d.reasm.close();
            }
        }
    }

    /// Before response bytes are parsed, gives up holes on the request side: a server answers
    /// only what it received, so a request-side hole still open now never fills.
    fn catch_up_requests(
        &mut self,
        dir: usize,
        ts: u64,
        limits: &CaptureLimits,
        drops: &mut ParserDrops,
        out: &mut Vec<HttpEvent>,
    ) {
        let other = 1 - dir;
        if self.dirs[dir].parser.kind() == Kind::Responses && self.dirs[other].reasm.buffered() > 0 {
            self.run(
                other,
                Op::Expire(ts.saturating_add(super::reassembly::REORDER_TIMEOUT_NS)),
                limits,
                drops,
                out,
            );
        }
    }

    /// Payload bytes starting at `seq`; `kernel_gap` is a range the kernel did not copy.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &mut self,
        dir: usize,
        seq: u32,
        data: &[u8],
        kernel_gap: Option<(u32, u64)>,
        ts: u64,
        limits: &CaptureLimits,
        drops: &mut ParserDrops,
        out: &mut Vec<HttpEvent>,
    ) {
        if self.upgraded {
            return;
        }
        if !self.tls_checked {
            self.tls_checked = true;
            if limits.decrypt_tls {
                self.tls = TlsSession::detect(dir, data).map(Box::new);
            }
        }
        if self.key.tls && seq == 0 && self.dirs[dir].reasm.next_seq().is_some_and(|s| s != 0) {
            // The kernel forgot this TLS stream's offset (LRU) and counts from 0 again.
            self.run(dir, Op::Restart { ts }, limits, drops, out);
        }
        self.catch_up_requests(dir, ts, limits, drops, out);
        self.run(dir, Op::Push { seq, data, ts }, limits, drops, out);
        if let Some((seq, len)) = kernel_gap {
            self.run(dir, Op::Missing { seq, len, ts }, limits, drops, out);
        }
        self.expire(ts, limits, drops, out);
    }

    /// Gives up holes that waited too long, in both directions.
    pub(crate) fn expire(
        &mut self,
        now_ns: u64,
        limits: &CaptureLimits,
        drops: &mut ParserDrops,
        out: &mut Vec<HttpEvent>,
    ) {
        for dir in self.request_side_first() {
            if self.dirs[dir].reasm.buffered() > 0 {
                self.run(dir, Op::Expire(now_ns), limits, drops, out);
            }
        }
    }

    /// The direction `dir` ended with a FIN at `fin_seq`.
    pub(crate) fn finish(
        &mut self,
        dir: usize,
        fin_seq: u32,
        ts: u64,
        limits: &CaptureLimits,
        drops: &mut ParserDrops,
        out: &mut Vec<HttpEvent>,
    ) {
        if !self.finished[dir] {
            self.catch_up_requests(dir, ts, limits, drops, out);
            self.run(dir, Op::Finish { fin_seq, ts }, limits, drops, out);
            self.finished[dir] = true;
        }
    }

    /// The connection is gone (RST, both FINs, eviction): completes what can be completed and
    /// emits requests not reported yet.
    pub(crate) fn close(
        &mut self,
        ts: u64,
        limits: &CaptureLimits,
        drops: &mut ParserDrops,
        out: &mut Vec<HttpEvent>,
    ) {
        for dir in self.request_side_first() {
            if !self.finished[dir] {
                self.run(dir, Op::Flush { ts }, limits, drops, out);
                self.finished[dir] = true;
            }
        }
        self.count_tls(drops, true);
        for mut p in self.pending.drain(..) {
            drops.unanswered_requests += 1;
            if !p.emitted {
                let done = p.done;
                if let Some(r) = p.request_mut() {
                    r.body_truncated |= !done;
                }
                out.push(HttpEvent::Request(p.request));
            }
        }
        self.response = None;
    }

    fn request_side_first(&self) -> [usize; 2] {
        if self.dirs[1].parser.kind() == Kind::Requests {
            [1, 0]
        } else {
            [0, 1]
        }
    }

    /// Frees buffered data under global memory pressure: held segments, partial heads, kept
    /// bodies, then the headers of requests already reported.
    pub(crate) fn shed(&mut self, drops: &mut ParserDrops) {
        if let Some(tls) = self.tls.as_mut() {
            if tls.shed() {
                self.count_tls(drops, false);
            }
        }
        for d in &mut self.dirs {
            d.reasm.shed();
            if d.parser.shed() {
                drops.partial_heads += 1;
            }
        }
        let mut strip = |body: &mut Vec<u8>, truncated: &mut bool| {
            if body.capacity() > 0 {
                drops.body_bytes_truncated += body.len() as u64;
                *body = Vec::new();
                *truncated = true;
            }
        };
        for p in &mut self.pending {
            let emitted = p.emitted;
            // A request whose event is still held elsewhere keeps its memory until the
            // exchange takes it back (events are handled right after the record that made them).
            let Some(r) = p.request_mut() else { continue };
            strip(&mut r.body, &mut r.body_truncated);
            if emitted {
                r.headers = super::HeaderFields::new();
                let bytes = r.method.len() + r.target.len();
                p.head_bytes = bytes;
            }
        }
        if let Some(b) = self.response.as_mut() {
            strip(&mut b.response.body, &mut b.response.body_truncated);
            b.response.headers = super::HeaderFields::new();
        }
    }
}
