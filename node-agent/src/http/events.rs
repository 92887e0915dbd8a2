//! What the tracker is given (limits) and gives back (events, drop counters).

use compact_str::CompactString;
use std::net::IpAddr;

/// What the caller wants kept of each message (the monitor's capture settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureLimits {
    /// Longest message head (request/status line and headers) buffered; longer heads are
    /// dropped and counted in `oversized_heads`. Also bounds chunked trailers.
    pub max_head_bytes: usize,
    /// Body bytes kept per message; 0 keeps none (bodies are still framed and counted).
    pub max_body_bytes: usize,
    /// Connections that start with a TLS ClientHello are decrypted with the session records of
    /// the `SSL_do_handshake` probes (see [`super::tls_decrypt`]), not parsed as they are.
    pub decrypt_tls: bool,
}

impl Default for CaptureLimits {
    fn default() -> Self {
        CaptureLimits {
            max_head_bytes: 8192,
            max_body_bytes: 0,
            decrypt_tls: false,
        }
    }
}

/// Which end of the connection the monitored pod is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodRole {
    /// The pod received the request.
    Server,
    /// The pod sent the request.
    Client,
}

/// A request: its head, and the first bytes of its body.
#[derive(Clone, Debug)]
pub struct Request {
    pub cgroup_id: u64,
    pub role: PodRole,
    /// Plaintext captured from a TLS library (uprobes, `FAMILY_TLS` records): `local` is then the
    /// process (tgid) and `remote` the `SSL *`, as IPv6-shaped values with port 0, not addresses.
    pub tls: bool,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    /// Inline when at most 24 bytes (every common method, most targets): the agent builds a
    /// request per captured exchange, and these were two of its few allocations.
    pub method: CompactString,
    pub target: CompactString,
    /// Header fields in order (values as lossy UTF-8), then any chunked trailer fields.
    pub headers: super::HeaderFields,
    /// Capture time of the head's first byte.
    pub timestamp_ns: u64,
    /// The body (de-chunked) from its first byte, at most `max_body_bytes`, contiguous: nothing
    /// after missing bytes is kept.
    pub body: Vec<u8>,
    /// Body length on the wire (de-chunked), missing bytes included.
    pub body_len: u64,
    /// `body` is not the whole body: limit reached, bytes missing, or the message cut short.
    pub body_truncated: bool,
}

/// A response, as paired with its request.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: super::HeaderFields,
    pub body: Vec<u8>,
    pub body_len: u64,
    pub body_truncated: bool,
    /// Capture time of the head's first byte.
    pub timestamp_ns: u64,
}

/// A request with its final response, once the response is complete.
#[derive(Clone, Debug)]
pub struct Exchange {
    /// Shared with the `HttpEvent::Request` emitted before (moving it out of the connection's
    /// queue and into the exchange was a copy of a few hundred bytes per exchange).
    pub request: std::sync::Arc<Request>,
    /// Same as `response.status`.
    pub status: u16,
    pub response: Response,
    /// From the request's first byte to the response's end.
    pub latency_ns: u64,
}

/// What the parser produced.
#[derive(Clone, Debug)]
pub enum HttpEvent {
    /// A request, once its head and body were read (or it was cut short). Shared with the
    /// connection, which keeps it until its response comes.
    Request(std::sync::Arc<Request>),
    /// A request and its response, once the response was read (boxed: events are moved
    /// around in vectors, and an exchange is large).
    Exchange(Box<Exchange>),
}

/// Counters of what the parser dropped, skipped or could not make sense of.
#[derive(Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParserDrops {
    /// Connections refused or evicted because MAX_CONNECTIONS were tracked.
    pub connections: u64,
    /// Message heads larger than the head limit (or with too many fields).
    pub oversized_heads: u64,
    /// Requests dropped because too many awaited a response.
    pub pending_overflow: u64,
    /// Responses that matched no request.
    pub unmatched_responses: u64,
    /// Holes in a stream given up (never captured, lost, or not filled in time).
    pub gaps: u64,
    /// Bytes in those holes.
    pub gap_bytes: u64,
    /// Partial heads dropped: bytes missing, stream closed, or memory pressure.
    pub partial_heads: u64,
    /// Messages that break HTTP/1.1 framing rules (bad Content-Length, Content-Length with
    /// Transfer-Encoding, bad chunked encoding, invalid head at a message boundary).
    pub protocol_violations: u64,
    /// Connections no longer parsed after a protocol switch (101, CONNECT, HTTP/2 preface).
    pub upgraded: u64,
    /// Directions given up as not HTTP.
    pub non_http: u64,
    /// Bytes that arrived after their hole had been given up.
    pub out_of_order_dropped: u64,
    /// Retransmitted bytes already seen (trimmed, not an error).
    pub duplicate_bytes: u64,
    /// Bytes skipped while looking for a message start.
    pub skipped_bytes: u64,
    /// Times a connection's buffers were dropped because the global budget was exceeded.
    pub budget_evictions: u64,
    /// Body bytes not kept: over `max_body_bytes`, after missing bytes, or under memory pressure.
    pub body_bytes_truncated: u64,
    /// Requests still waiting for a response when their connection ended.
    pub unanswered_requests: u64,
    /// TLS connections given up without decryption (TLS 1.2, an unsupported cipher suite, no
    /// session record, secrets not found, a hole or a record that did not decrypt).
    pub tls_not_decrypted: u64,
    /// Session records (completed handshakes) that matched no captured connection.
    pub tls_sessions_unmatched: u64,
    /// TLS connections decrypted in both directions (not a drop: what the two above compare to).
    pub tls_decrypted: u64,
}
