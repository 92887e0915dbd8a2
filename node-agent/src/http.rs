//! HTTP/1.x message heads from captured TCP payload, per connection, with requests paired to
//! their responses.
//!
//! This is the walking-skeleton parser: it finds message heads at the start of segments, buffers a
//! head that spans segments (up to the monitor's header limit), pairs responses to requests in
//! order (keep-alive and pipelining), and skips retransmitted segments. Bodies are not reassembled
//! yet. Memory is bounded: a cap on connections, on buffered bytes per connection, and on pending
//! requests; everything dropped is counted.

use palisade_common::{CaptureHeader, DIRECTION_INGRESS, FAMILY_IPV4, TCP_FIN, TCP_RST};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most connections tracked at once.
pub const MAX_CONNECTIONS: usize = 65_536;
/// Most requests awaiting a response per connection (pipelining depth).
pub const MAX_PENDING_PER_CONNECTION: usize = 32;
/// Connections idle this long are forgotten.
pub const IDLE_TIMEOUT_NS: u64 = 120_000_000_000;
const MAX_HEADERS: usize = 64;

/// Which end of the connection the monitored pod is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodRole {
    /// The pod received the request.
    Server,
    /// The pod sent the request.
    Client,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FlowKey {
    cgroup_id: u64,
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
}

/// A parsed request head.
#[derive(Clone, Debug)]
pub struct Request {
    pub cgroup_id: u64,
    pub role: PodRole,
    pub local: (IpAddr, u16),
    pub remote: (IpAddr, u16),
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub timestamp_ns: u64,
}

/// A request with its response status, once the response head is seen.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub request: Request,
    pub status: u16,
    pub latency_ns: u64,
}

/// What the parser produced from one record.
#[derive(Debug)]
pub enum HttpEvent {
    Request(Request),
    Exchange(Exchange),
}

/// Counters of what the parser had to drop.
#[derive(Default, Clone, Copy, Debug)]
pub struct ParserDrops {
    /// New connections refused because MAX_CONNECTIONS were tracked.
    pub connections: u64,
    /// Message heads larger than the header limit.
    pub oversized_heads: u64,
    /// Requests dropped because too many awaited a response.
    pub pending_overflow: u64,
    /// Responses that matched no request.
    pub unmatched_responses: u64,
}

#[derive(Default)]
struct Conn {
    last_ns: u64,
    /// Partial head per direction (0: ingress, 1: egress).
    partial: [Vec<u8>; 2],
    last_seq: [Option<u32>; 2],
    pending: VecDeque<Request>,
}

pub struct HttpTracker {
    conns: HashMap<FlowKey, Conn>,
    pub drops: ParserDrops,
}

fn addr(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

enum Head {
    Request {
        method: String,
        target: String,
        headers: Vec<(String, String)>,
    },
    Response {
        status: u16,
    },
}

enum ParseOutcome {
    Complete(Head),
    Partial,
    NotHttp,
}

fn parse_head(buf: &[u8]) -> ParseOutcome {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    if buf.starts_with(b"HTTP/") {
        let mut resp = httparse::Response::new(&mut headers);
        return match resp.parse(buf) {
            Ok(httparse::Status::Complete(_)) => ParseOutcome::Complete(Head::Response {
                status: resp.code.unwrap_or(0),
            }),
            Ok(httparse::Status::Partial) => ParseOutcome::Partial,
            Err(_) => ParseOutcome::NotHttp,
        };
    }
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => ParseOutcome::Complete(Head::Request {
            method: req.method.unwrap_or("").to_string(),
            target: req.path.unwrap_or("").to_string(),
            headers: req
                .headers
                .iter()
                .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
                .collect(),
        }),
        Ok(httparse::Status::Partial) => {
            // Only keep buffering what already looks like a request line.
            let looks_like_request = buf
                .iter()
                .take(16)
                .position(|b| *b == b' ')
                .is_some_and(|sp| sp > 0 && buf[..sp].iter().all(|b| b.is_ascii_uppercase()))
                || (buf.len() < 16 && buf.iter().all(|b| b.is_ascii_uppercase()));
            if looks_like_request {
                ParseOutcome::Partial
            } else {
                ParseOutcome::NotHttp
            }
        }
        Err(_) => ParseOutcome::NotHttp,
    }
}

impl Default for HttpTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpTracker {
    pub fn new() -> Self {
        HttpTracker {
            conns: HashMap::new(),
            drops: ParserDrops::default(),
        }
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Feeds one captured record. `max_head_bytes` bounds a buffered message head.
    pub fn on_record(&mut self, h: &CaptureHeader, data: &[u8], max_head_bytes: usize) -> Option<HttpEvent> {
        let src = (addr(h.family, &h.source_addr), h.source_port);
        let dst = (addr(h.family, &h.dest_addr), h.dest_port);
        let ingress = h.direction == DIRECTION_INGRESS;
        let (local, remote) = if ingress { (dst, src) } else { (src, dst) };
        let key = FlowKey {
            cgroup_id: h.cgroup_id,
            local,
            remote,
        };
        if h.tcp_flags & (TCP_FIN | TCP_RST) != 0 && data.is_empty() {
            self.conns.remove(&key);
            return None;
        }
        if data.is_empty() {
            return None;
        }
        if !self.conns.contains_key(&key) && self.conns.len() >= MAX_CONNECTIONS {
            self.evict_idle(h.timestamp_ns);
            if self.conns.len() >= MAX_CONNECTIONS {
                self.drops.connections += 1;
                return None;
            }
        }
        let dir = usize::from(!ingress);
        let conn = self.conns.entry(key).or_default();
        conn.last_ns = h.timestamp_ns;
        if h.chunk_offset == 0 {
            if conn.last_seq[dir] == Some(h.tcp_seq) {
                return None; // retransmission of a segment already seen
            }
            conn.last_seq[dir] = Some(h.tcp_seq);
        }
        let buf = &mut conn.partial[dir];
        if buf.is_empty() && h.chunk_offset != 0 {
            return None; // body bytes of a large segment
        }
        buf.extend_from_slice(data);
        let outcome = parse_head(buf);
        match outcome {
            ParseOutcome::Partial => {
                if buf.len() > max_head_bytes {
                    buf.clear();
                    self.drops.oversized_heads += 1;
                }
                None
            }
            ParseOutcome::NotHttp => {
                buf.clear();
                None
            }
            ParseOutcome::Complete(head) => {
                buf.clear();
                match head {
                    Head::Request {
                        method,
                        target,
                        headers,
                    } => {
                        let request = Request {
                            cgroup_id: h.cgroup_id,
                            role: if ingress { PodRole::Server } else { PodRole::Client },
                            local,
                            remote,
                            method,
                            target,
                            headers,
                            timestamp_ns: h.timestamp_ns,
                        };
                        if conn.pending.len() >= MAX_PENDING_PER_CONNECTION {
                            conn.pending.pop_front();
                            self.drops.pending_overflow += 1;
                        }
                        conn.pending.push_back(request.clone());
                        Some(HttpEvent::Request(request))
                    }
                    Head::Response { status } => {
                        if status / 100 == 1 && status != 101 {
                            return None; // interim response; the final one follows
                        }
                        match conn.pending.pop_front() {
                            Some(request) => {
                                let latency_ns = h.timestamp_ns.saturating_sub(request.timestamp_ns);
                                Some(HttpEvent::Exchange(Exchange {
                                    request,
                                    status,
                                    latency_ns,
                                }))
                            }
                            None => {
                                self.drops.unmatched_responses += 1;
                                None
                            }
                        }
                    }
                }
            }
        }
    }

    /// Forgets connections idle for longer than IDLE_TIMEOUT_NS.
    pub fn evict_idle(&mut self, now_ns: u64) {
        self.conns
            .retain(|_, c| now_ns.saturating_sub(c.last_ns) < IDLE_TIMEOUT_NS);
    }

    /// Forgets every connection of a cgroup (its pod is no longer watched).
    pub fn forget_cgroup(&mut self, cgroup_id: u64) {
        self.conns.retain(|k, _| k.cgroup_id != cgroup_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_common::DIRECTION_EGRESS;

    fn header(direction: u8, seq: u32, ts: u64, flags: u8) -> CaptureHeader {
        let (source, dest, sport, dport) = if direction == DIRECTION_INGRESS {
            ([10, 0, 0, 1], [10, 0, 0, 2], 40000, 8080)
        } else {
            ([10, 0, 0, 2], [10, 0, 0, 1], 8080, 40000)
        };
        let mut source_addr = [0u8; 16];
        source_addr[..4].copy_from_slice(&source);
        let mut dest_addr = [0u8; 16];
        dest_addr[..4].copy_from_slice(&dest);
        CaptureHeader {
            timestamp_ns: ts,
            cgroup_id: 7,
            tcp_seq: seq,
            payload_len: 0,
            chunk_offset: 0,
            captured_len: 0,
            source_addr,
            dest_addr,
            source_port: sport,
            dest_port: dport,
            family: FAMILY_IPV4,
            direction,
            tcp_flags: 0x18 | flags,
            _padding: [0],
        }
    }

    #[test]
    fn pairs_pipelined_requests_with_responses_and_skips_retransmits() {
        let mut t = HttpTracker::new();
        let req1 = b"GET /users/1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s\r\n\r\n";
        let Some(HttpEvent::Request(r)) = t.on_record(&header(DIRECTION_INGRESS, 1, 100, 0), req1, 8192)
        else {
            panic!("request expected")
        };
        assert_eq!(
            (r.method.as_str(), r.target.as_str(), r.role),
            ("GET", "/users/1", PodRole::Server)
        );
        assert_eq!(r.remote, (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 40000));
        assert!(
            t.on_record(&header(DIRECTION_INGRESS, 1, 101, 0), req1, 8192)
                .is_none(),
            "retransmit"
        );
        // A head split over two segments.
        assert!(t
            .on_record(&header(DIRECTION_INGRESS, 60, 110, 0), b"POST /login HT", 8192)
            .is_none());
        assert!(matches!(
            t.on_record(
                &header(DIRECTION_INGRESS, 74, 111, 0),
                b"TP/1.1\r\nContent-Length: 0\r\n\r\n",
                8192
            ),
            Some(HttpEvent::Request(_))
        ));
        assert!(t
            .on_record(
                &header(DIRECTION_EGRESS, 500, 150, 0),
                b"HTTP/1.1 100 Continue\r\n\r\n",
                8192
            )
            .is_none());
        let Some(HttpEvent::Exchange(e)) = t.on_record(
            &header(DIRECTION_EGRESS, 530, 200, 0),
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            8192,
        ) else {
            panic!("exchange expected")
        };
        assert_eq!(
            (e.request.target.as_str(), e.status, e.latency_ns),
            ("/users/1", 200, 100)
        );
        let Some(HttpEvent::Exchange(e)) = t.on_record(
            &header(DIRECTION_EGRESS, 600, 300, 0),
            b"HTTP/1.1 401 Unauthorized\r\n\r\n",
            8192,
        ) else {
            panic!("exchange expected")
        };
        assert_eq!((e.request.target.as_str(), e.status), ("/login", 401));
        assert!(t
            .on_record(
                &header(DIRECTION_EGRESS, 700, 300, 0),
                b"HTTP/1.1 200 OK\r\n\r\n",
                8192
            )
            .is_none());
        assert_eq!(t.drops.unmatched_responses, 1);
        assert!(t
            .on_record(&header(DIRECTION_INGRESS, 900, 400, TCP_FIN), b"", 8192)
            .is_none());
        assert_eq!(t.connections(), 0, "FIN forgets the connection");
    }

    #[test]
    fn garbage_and_oversized_heads_are_dropped_not_buffered() {
        let mut t = HttpTracker::new();
        assert!(t
            .on_record(
                &header(DIRECTION_INGRESS, 1, 1, 0),
                &[0xff, 0x00, 0x13, 0x37],
                8192
            )
            .is_none());
        assert!(t
            .on_record(
                &header(DIRECTION_INGRESS, 2, 2, 0),
                b"\x16\x03\x01 tls hello",
                8192
            )
            .is_none());
        let mut big = b"GET /a HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 300));
        assert!(t
            .on_record(&header(DIRECTION_INGRESS, 3, 3, 0), &big, 256)
            .is_none());
        assert_eq!(t.drops.oversized_heads, 1);
        for i in 0..1000u32 {
            let junk: Vec<u8> = (0..64).map(|j| ((i * 31 + j * 7) % 256) as u8).collect();
            let _ = t.on_record(&header(DIRECTION_INGRESS, 10 + i, 10, 0), &junk, 8192);
        }
        assert!(t.connections() <= 1);
    }
}
