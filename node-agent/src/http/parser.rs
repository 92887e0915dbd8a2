//! One direction of a connection as a sequence of HTTP/1.x messages: heads, bodies, known-size
//! gaps, resynchronisation after garbage or lost bytes, and the end of parsing after an upgrade.
//!
//! The parser only frames messages; what a message means (pairing, events, limits on kept
//! bodies) is the [`Sink`]'s business.

use super::body::{Body, BodyGap, Step};
use super::head::{self, Framing, Head, Kind, Parsed, Start};
use super::{CaptureLimits, ParserDrops};

mod resync;

/// A direction that never produced a message stops being parsed (not HTTP) after this many
/// bytes were skipped looking for one.
pub const NON_HTTP_GIVE_UP_BYTES: u64 = 64 * 1024;
/// Longest tail kept between pieces while resynchronising (a message start split in two).
const MAX_CARRY: usize = 24;
/// Smallest head limit honoured (a smaller configured limit would reject every head).
const MIN_HEAD_BYTES: usize = 64;
/// A buffer above this capacity is released rather than cleared.
const KEEP_CAPACITY: usize = 1024;

/// Receives what the parser finds, in stream order.
pub(crate) trait Sink {
    fn drops(&mut self) -> &mut ParserDrops;
    /// The method of the request the next response answers, if one is waiting.
    fn answered_method(&self) -> Option<&str>;
    /// The direction turned out to carry `kind`.
    fn kind_decided(&mut self, kind: Kind);
    fn request_head(&mut self, head: Head, first_ts: u64);
    fn response_head(&mut self, head: Head, first_ts: u64);
    /// Body bytes; `announced` is how many more the framing says follow them (0 when it does not
    /// say: chunked, or until close).
    fn body(&mut self, data: &[u8], announced: u64);
    fn body_missing(&mut self, n: u64);
    fn trailers(&mut self, fields: super::HeaderFields);
    /// The current message ended; `cut` when it ended before its framing said (gap, error, EOF).
    fn message_end(&mut self, ts: u64, cut: bool);
    /// The connection switched protocols: stop parsing both directions.
    fn upgraded(&mut self);
}

#[derive(Debug)]
enum State {
    /// At a message start. `speculative` when it was only guessed (stream start, after a gap or
    /// garbage): a failure there is not a protocol violation.
    Head {
        speculative: bool,
    },
    /// Looking for a message start; `boundary` when the next byte is at a plausible one.
    Resync {
        boundary: bool,
    },
    Body(Body),
    /// Upgraded, not HTTP, or closed.
    Stopped,
}

#[derive(Debug)]
pub(crate) struct StreamParser {
    kind: Kind,
    state: State,
    /// A partial head, or a carried tail while resynchronising.
    buf: Vec<u8>,
    /// Bytes handed back to be parsed again before further input.
    replay: Vec<u8>,
    head_ts: u64,
    /// Re-parse a partial head without a blank line only once it reaches this size.
    parse_at: usize,
    skipped: u64,
    parsed_any: bool,
}

impl Default for StreamParser {
    fn default() -> Self {
        StreamParser {
            kind: Kind::Unknown,
            state: State::Head { speculative: true },
            buf: Vec::new(),
            replay: Vec::new(),
            head_ts: 0,
            parse_at: 0,
            skipped: 0,
            parsed_any: false,
        }
    }
}

impl StreamParser {
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    pub(crate) fn set_kind(&mut self, kind: Kind) {
        if self.kind == Kind::Unknown {
            self.kind = kind;
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped)
    }

    /// Bytes held for memory accounting.
    pub(crate) fn buffered(&self) -> usize {
        let body = match &self.state {
            State::Body(b) => b.buffered(),
            _ => 0,
        };
        self.buf.capacity() + self.replay.capacity() + body
    }

    /// Stops parsing (the connection was upgraded).
    pub(crate) fn stop(&mut self) {
        self.state = State::Stopped;
        self.buf = Vec::new();
    }

    /// Drops a partial head under memory pressure; returns whether there was one.
    pub(crate) fn shed(&mut self) -> bool {
        let had = !self.buf.is_empty();
        if had && matches!(self.state, State::Head { .. } | State::Resync { .. }) {
            self.buf = Vec::new();
            self.state = State::Resync { boundary: false };
        }
        had
    }

    fn clear_buf(&mut self) {
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }

    /// In-order bytes of the stream.
    pub(crate) fn feed(&mut self, data: &[u8], ts: u64, limits: &CaptureLimits, sink: &mut dyn Sink) {
        let mut data = data;
        loop {
            if !self.replay.is_empty() {
                let mut r = std::mem::take(&mut self.replay);
                let mut pos = 0;
                while pos < r.len() {
                    pos += self.step(&r[pos..], ts, limits, sink);
                    if !self.replay.is_empty() {
                        let mut nested = std::mem::take(&mut self.replay);
                        nested.extend_from_slice(&r[pos..]);
                        r = nested;
                        pos = 0;
                    }
                }
            }
            if data.is_empty() {
                break;
            }
            let used = self.step(data, ts, limits, sink);
            data = &data[used.min(data.len())..];
        }
    }

    /// Processes a prefix of `data`; returns how much was used (0 only after a state change that
    /// guarantees progress on the next step).
    fn step(&mut self, data: &[u8], ts: u64, limits: &CaptureLimits, sink: &mut dyn Sink) -> usize {
        match self.state {
            State::Stopped => data.len(),
            State::Head { speculative } => self.step_head(data, speculative, ts, limits, sink),
            State::Resync { boundary } => self.step_resync(data, boundary, ts, sink),
            State::Body(_) => self.step_body(data, ts, limits, sink),
        }
    }

    fn step_head(
        &mut self,
        data: &[u8],
        speculative: bool,
        ts: u64,
        limits: &CaptureLimits,
        sink: &mut dyn Sink,
    ) -> usize {
        let max = limits.max_head_bytes.max(MIN_HEAD_BYTES);
        if self.buf.is_empty() {
            self.head_ts = ts;
            let window = &data[..data.len().min(max)];
            return match head::parse(window, self.kind) {
                Parsed::Complete(h) => {
                    let n = h.len;
                    self.on_head(h, ts, sink);
                    n
                }
                Parsed::Partial if data.len() >= max => {
                    sink.drops().oversized_heads += 1;
                    self.state = State::Resync { boundary: false };
                    0
                }
                Parsed::Partial => {
                    self.buf.extend_from_slice(data);
                    self.parse_at = data.len() * 2;
                    data.len()
                }
                Parsed::Invalid { too_many_headers } => {
                    self.invalid(window, speculative, too_many_headers, sink);
                    0
                }
            };
        }
        let old = self.buf.len();
        let take = data.len().min((max + 1).saturating_sub(old)).max(1);
        self.buf.extend_from_slice(&data[..take]);
        let blank = head::has_blank_line(&self.buf[old.saturating_sub(2)..]);
        if !blank && self.buf.len() < self.parse_at && self.buf.len() <= max {
            return take;
        }
        self.parse_at = self.buf.len() * 2;
        match head::parse(&self.buf, self.kind) {
            Parsed::Complete(h) => {
                let n = h.len;
                let used = if n >= old {
                    n - old
                } else {
                    self.replay = self.buf[n..].to_vec();
                    take
                };
                self.clear_buf();
                self.on_head(h, ts, sink);
                used
            }
            Parsed::Partial => {
                if self.buf.len() > max {
                    sink.drops().oversized_heads += 1;
                    self.clear_buf();
                    self.state = State::Resync { boundary: false };
                }
                take
            }
            Parsed::Invalid { too_many_headers } => {
                let buf = std::mem::take(&mut self.buf);
                self.invalid(&buf, speculative, too_many_headers, sink);
                if !self.is_stopped() {
                    self.replay = buf[1..].to_vec();
                }
                take
            }
        }
    }

    /// A head that cannot be parsed: resynchronise (or stop, for an HTTP/2 preface).
    fn invalid(&mut self, bytes: &[u8], speculative: bool, too_many_headers: bool, sink: &mut dyn Sink) {
        if bytes.starts_with(b"PRI * HTTP/2") {
            self.stop();
            sink.upgraded();
            return;
        }
        if too_many_headers {
            sink.drops().oversized_heads += 1;
        } else if !speculative {
            sink.drops().protocol_violations += 1;
        }
        self.state = State::Resync { boundary: false };
    }

    fn on_head(&mut self, h: Head, ts: u64, sink: &mut dyn Sink) {
        self.parsed_any = true;
        let first_ts = self.head_ts;
        if self.kind == Kind::Unknown {
            self.kind = match h.start {
                Start::Request { .. } => Kind::Requests,
                Start::Response { .. } => Kind::Responses,
            };
            sink.kind_decided(self.kind);
        }
        match &h.start {
            Start::Request { method, .. } => match head::request_framing(method, &h.framing) {
                Err(_) => {
                    sink.drops().protocol_violations += 1;
                    self.state = State::Resync { boundary: true };
                }
                Ok(framing) => {
                    sink.request_head(h, first_ts);
                    self.begin_body(framing, ts, sink);
                }
            },
            Start::Response { status } => {
                let status = *status;
                if (100..200).contains(&status) && status != 101 {
                    // Interim (100 Continue, 103 Early Hints): the final response follows.
                    self.state = State::Head { speculative: false };
                    return;
                }
                let framing = head::response_framing(status, sink.answered_method(), &h.framing);
                sink.response_head(h, first_ts);
                match framing {
                    Err(_) => {
                        sink.drops().protocol_violations += 1;
                        sink.message_end(ts, true);
                        self.state = State::Resync { boundary: true };
                    }
                    Ok(Framing::Upgrade) => {
                        sink.message_end(ts, false);
                        self.stop();
                        sink.upgraded();
                    }
                    Ok(framing) => self.begin_body(framing, ts, sink),
                }
            }
        }
    }

    fn begin_body(&mut self, framing: Framing, ts: u64, sink: &mut dyn Sink) {
        match Body::new(framing) {
            Some(body) => self.state = State::Body(body),
            None => self.end_message(ts, false, sink),
        }
    }

    fn end_message(&mut self, ts: u64, cut: bool, sink: &mut dyn Sink) {
        sink.message_end(ts, cut);
        self.state = State::Head { speculative: false };
    }

    fn step_body(&mut self, data: &[u8], ts: u64, limits: &CaptureLimits, sink: &mut dyn Sink) -> usize {
        let max_trailer = limits.max_head_bytes.max(MIN_HEAD_BYTES);
        let State::Body(body) = &mut self.state else {
            return 0;
        };
        match body.read(data, max_trailer, sink) {
            Step::Used(n) => n,
            Step::End { used, trailers } => {
                if !trailers.is_empty() {
                    sink.trailers(trailers);
                }
                self.end_message(ts, false, sink);
                used
            }
            Step::Broken => {
                sink.drops().protocol_violations += 1;
                sink.message_end(ts, true);
                self.state = State::Resync { boundary: false };
                0
            }
        }
    }

    /// `n` bytes of the stream are missing at this point.
    pub(crate) fn missing(&mut self, n: u64, ts: u64, sink: &mut dyn Sink) {
        match &mut self.state {
            State::Stopped => {}
            State::Head { .. } | State::Resync { .. } => {
                if matches!(self.state, State::Head { .. }) && !self.buf.is_empty() {
                    sink.drops().partial_heads += 1;
                }
                self.clear_buf();
                self.state = State::Resync { boundary: true };
            }
            State::Body(body) => match body.missing(n) {
                BodyGap::Skipped => sink.body_missing(n),
                BodyGap::Ended { in_body, past } => {
                    sink.body_missing(in_body);
                    self.end_message(ts, false, sink);
                    if past > 0 {
                        self.state = State::Resync { boundary: true };
                    }
                }
                BodyGap::LostSync { in_body } => {
                    sink.body_missing(in_body);
                    sink.message_end(ts, true);
                    self.state = State::Resync { boundary: true };
                }
            },
        }
    }

    /// The stream lost continuity by an unknown amount: a message in progress is cut, parsing
    /// resumes at the next plausible message start.
    pub(crate) fn discontinuity(&mut self, ts: u64, sink: &mut dyn Sink) {
        match &self.state {
            State::Stopped => return,
            State::Head { .. } if !self.buf.is_empty() => sink.drops().partial_heads += 1,
            State::Body(_) => sink.message_end(ts, true),
            _ => {}
        }
        self.clear_buf();
        self.state = State::Resync { boundary: true };
    }

    /// The stream ended: a message read until close is complete, any other is cut short.
    pub(crate) fn eof(&mut self, ts: u64, sink: &mut dyn Sink) {
        match &self.state {
            State::Head { .. } if !self.buf.is_empty() => sink.drops().partial_heads += 1,
            State::Body(body) => sink.message_end(ts, !body.ends_at_close()),
            _ => {}
        }
        self.stop();
    }
}
