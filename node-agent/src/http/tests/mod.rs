//! Tests of the HTTP tracker through its public API, with a simulated connection; the
//! reassembler's own tests drive it directly.

mod chunked;
mod framing;
mod head;
mod pairing;
mod reassembly;
mod tcp;
mod tls;

use super::*;
use palisade_common::DIRECTION_EGRESS;

pub(super) const CLIENT: [u8; 4] = [10, 0, 0, 1];
pub(super) const POD: [u8; 4] = [10, 0, 0, 2];
pub(super) const CGROUP: u64 = 7;

/// A record header; `ingress` packets go from the client (port `client_port`) to the pod
/// (port 8080).
#[allow(clippy::too_many_arguments)] // every field of a record header
pub(super) fn header(
    ingress: bool,
    client_port: u16,
    seq: u32,
    payload_len: u32,
    chunk_offset: u32,
    captured: u32,
    flags: u8,
    ts: u64,
) -> CaptureHeader {
    let mut client = [0u8; 16];
    client[..4].copy_from_slice(&CLIENT);
    let mut pod = [0u8; 16];
    pod[..4].copy_from_slice(&POD);
    CaptureHeader {
        timestamp_ns: ts,
        cgroup_id: CGROUP,
        tcp_seq: seq,
        payload_len,
        chunk_offset,
        captured_len: captured,
        source_addr: if ingress { client } else { pod },
        dest_addr: if ingress { pod } else { client },
        source_port: if ingress { client_port } else { 8080 },
        dest_port: if ingress { 8080 } else { client_port },
        family: FAMILY_IPV4,
        direction: if ingress {
            DIRECTION_INGRESS
        } else {
            DIRECTION_EGRESS
        },
        tcp_flags: 0x18 | flags,
        _padding: [0],
    }
}

/// One simulated TCP connection to a pod acting as server (ingress carries the requests), or
/// as client when `pod_is_client`.
pub(super) struct Wire {
    pub t: HttpTracker,
    pub limits: CaptureLimits,
    pub port: u16,
    /// Next sequence number per direction: [ingress, egress].
    pub seq: [u32; 2],
    pub ts: u64,
    pub pod_is_client: bool,
}

impl Wire {
    pub fn new(limits: CaptureLimits) -> Self {
        Wire {
            t: HttpTracker::new(),
            limits,
            port: 40000,
            seq: [1000, 5_000_000],
            ts: 1_000,
            pod_is_client: false,
        }
    }

    pub fn bodies(max_body_bytes: usize) -> Self {
        Self::new(CaptureLimits {
            max_head_bytes: 8192,
            max_body_bytes,
            decrypt_tls: false,
        })
    }

    fn tick(&mut self) -> u64 {
        self.ts += 10;
        self.ts
    }

    /// Direction of the requests: the client sends them.
    fn ingress_for(&self, from_client: bool) -> bool {
        from_client != self.pod_is_client
    }

    /// Feeds one record as the kernel would emit it.
    pub fn record(&mut self, h: CaptureHeader, data: &[u8]) -> Vec<HttpEvent> {
        let mut out = vec![];
        self.t.feed(&h, data, &self.limits, &mut out);
        out
    }

    /// One skb at `seq`: records of [`chunk_bytes_for`] its length, payload past
    /// MAX_CHUNKS_PER_SKB chunks not captured (as the eBPF program does).
    pub fn skb_at(&mut self, ingress: bool, seq: u32, payload: &[u8], flags: u8) -> Vec<HttpEvent> {
        let ts = self.tick();
        let mut out = vec![];
        let len = payload.len() as u32;
        let chunk = palisade_common::chunk_bytes_for(payload.len());
        let mut offset = 0usize;
        loop {
            let n = (payload.len().saturating_sub(offset)).min(chunk);
            let h = header(ingress, self.port, seq, len, offset as u32, n as u32, flags, ts);
            self.t
                .feed(&h, &payload[offset..offset + n], &self.limits, &mut out);
            offset += chunk;
            if offset >= payload.len() || offset >= CHUNK_BYTES * MAX_CHUNKS_PER_SKB {
                break;
            }
        }
        out
    }

    /// Sends bytes from the client (`from_client`) or the server as skbs of `segment` bytes.
    pub fn send(&mut self, from_client: bool, bytes: &[u8], segment: usize) -> Vec<HttpEvent> {
        let ingress = self.ingress_for(from_client);
        let d = usize::from(!ingress);
        let mut out = vec![];
        for piece in bytes.chunks(segment.max(1)) {
            let seq = self.seq[d];
            out.extend(self.skb_at(ingress, seq, piece, 0));
            self.seq[d] = seq.wrapping_add(piece.len() as u32);
        }
        out
    }

    pub fn client(&mut self, bytes: &[u8]) -> Vec<HttpEvent> {
        self.send(true, bytes, 1460)
    }

    pub fn server(&mut self, bytes: &[u8]) -> Vec<HttpEvent> {
        self.send(false, bytes, 1460)
    }

    /// Skips `n` bytes of a direction without sending them (a lost record).
    pub fn lose(&mut self, from_client: bool, n: u32) {
        let d = usize::from(!self.ingress_for(from_client));
        self.seq[d] = self.seq[d].wrapping_add(n);
    }

    pub fn fin(&mut self, from_client: bool) -> Vec<HttpEvent> {
        let ingress = self.ingress_for(from_client);
        let seq = self.seq[usize::from(!ingress)];
        self.skb_at(ingress, seq, b"", TCP_FIN)
    }

    pub fn rst(&mut self, from_client: bool) -> Vec<HttpEvent> {
        let ingress = self.ingress_for(from_client);
        let seq = self.seq[usize::from(!ingress)];
        self.skb_at(ingress, seq, b"", TCP_RST)
    }
}

pub(super) fn requests(events: &[HttpEvent]) -> Vec<&Request> {
    events
        .iter()
        .filter_map(|e| match e {
            HttpEvent::Request(r) => Some(&**r),
            _ => None,
        })
        .collect()
}

pub(super) fn exchanges(events: &[HttpEvent]) -> Vec<&Exchange> {
    events
        .iter()
        .filter_map(|e| match e {
            HttpEvent::Exchange(x) => Some(&**x),
            _ => None,
        })
        .collect()
}

/// (method, target) of each request event.
pub(super) fn targets(events: &[HttpEvent]) -> Vec<(String, String)> {
    requests(events)
        .iter()
        .map(|r| (r.method.to_string(), r.target.to_string()))
        .collect()
}

/// (target, status) of each exchange event.
pub(super) fn statuses(events: &[HttpEvent]) -> Vec<(String, u16)> {
    exchanges(events)
        .iter()
        .map(|x| (x.request.target.to_string(), x.status))
        .collect()
}

pub(super) fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: api\r\n\r\n").into_bytes()
}

pub(super) fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "POST {path} HTTP/1.1\r\nHost: api\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    m.extend_from_slice(body);
    m
}

pub(super) fn ok(body: &[u8]) -> Vec<u8> {
    let mut m = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    m.extend_from_slice(body);
    m
}

pub(super) fn status(code: u16) -> Vec<u8> {
    format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

pub(super) fn s(pairs: &[(&str, u16)]) -> Vec<(String, u16)> {
    pairs.iter().map(|(t, c)| (t.to_string(), *c)).collect()
}
