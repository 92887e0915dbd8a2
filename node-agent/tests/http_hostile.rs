//! The HTTP tracker under randomised traffic (seeded, deterministic, bounded):
//!
//! - clean traffic, randomly segmented, reordered and retransmitted over many interleaved
//!   connections, must produce exactly the exchanges that were sent;
//! - hostile traffic (garbage, flipped bytes, lost, duplicated and truncated segments, bogus
//!   headers and flags, kernel-truncated skbs) must never panic, keep connections and buffered
//!   bytes under their bounds, and produce only well-formed events;
//! - 100k connections stay under the connection cap.

use palisade_common::{
    CaptureHeader, CHUNK_BYTES, DIRECTION_EGRESS, DIRECTION_INGRESS, FAMILY_IPV4, FAMILY_TLS,
    MAX_CHUNKS_PER_SKB, TCP_FIN, TCP_RST,
};
use palisade_node_agent::http::{
    CaptureLimits, HttpEvent, HttpTracker, Request, BUFFER_BUDGET_BYTES, MAX_CONNECTIONS,
};
use std::collections::{HashMap, VecDeque};

const CGROUP: u64 = 42;

/// Seeds per randomised test: `HTTP_HOSTILE_SEEDS=200 cargo test --test http_hostile` soaks.
fn seeds(default: u64) -> u64 {
    std::env::var("HTTP_HOSTILE_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// SplitMix64: small, seeded, good enough to drive tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// What one exchange should be seen as.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expected {
    method: String,
    target: String,
    request_body: Vec<u8>,
    status: u16,
    response_body: Vec<u8>,
}

/// Bytes one side sends at one step of a connection.
struct Send {
    from_client: bool,
    bytes: Vec<u8>,
}

fn chunked(rng: &mut Rng, body: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    let mut rest = body;
    while !rest.is_empty() {
        let n = rng.range(1, rest.len().min(3000));
        let ext = if rng.chance(300) { ";ext=\"a;b\"" } else { "" };
        out.extend_from_slice(format!("{n:x}{ext}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n");
    if rng.chance(300) {
        out.extend_from_slice(b"X-Trailer: t\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// A random exchange on connection `conn`: what is sent, in causal order, and what it should
/// be reported as.
fn exchange(rng: &mut Rng, conn: usize, i: usize) -> (Vec<Send>, Vec<Send>, Expected) {
    let target = format!("/c{conn}/r{i}?q={}", rng.below(1000));
    let body_len = *rng.pick(&[0usize, 1, 100, 1500, 5000, 20_000]);
    let request_body: Vec<u8> = rng.bytes(body_len);
    let kind = rng.below(6);
    let method = ["GET", "POST", "POST", "HEAD", "PUT", "DELETE"][kind];
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: svc\r\nUser-Agent: fuzz\r\n");
    let mut request = vec![];
    let mut late_body = vec![];
    let request_body = match kind {
        1 | 4 => {
            head.push_str(&format!("Content-Length: {}\r\n", request_body.len()));
            if kind == 4 {
                head.push_str("Expect: 100-continue\r\n");
                late_body = request_body.clone();
            } else {
                request.extend_from_slice(&request_body);
            }
            request_body
        }
        2 => {
            head.push_str("Transfer-Encoding: chunked\r\n");
            request = chunked(rng, &request_body);
            request_body
        }
        _ => vec![],
    };
    head.push_str("\r\n");
    let mut request_bytes = head.into_bytes();
    request_bytes.extend_from_slice(&request);
    let status = *rng.pick(&[200u16, 201, 204, 304, 404, 500]);
    let response_len = *rng.pick(&[0usize, 10, 2000, 30_000]);
    let mut response_body = rng.bytes(response_len);
    let mut response = format!("HTTP/1.1 {status} Reason\r\nServer: fuzz\r\n").into_bytes();
    let no_body = kind == 3 || status == 204 || status == 304;
    if !no_body && rng.chance(400) {
        response.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        response.extend(chunked(rng, &response_body));
    } else {
        response.extend_from_slice(format!("Content-Length: {}\r\n\r\n", response_body.len()).as_bytes());
        if no_body {
            response_body.clear();
        } else {
            response.extend_from_slice(&response_body);
        }
    }
    let requests = vec![Send {
        from_client: true,
        bytes: request_bytes,
    }];
    let mut responses = vec![];
    if kind == 4 {
        responses.push(Send {
            from_client: false,
            bytes: b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
        });
        responses.push(Send {
            from_client: true,
            bytes: late_body,
        });
    }
    responses.push(Send {
        from_client: false,
        bytes: response,
    });
    let expected = Expected {
        method: method.to_string(),
        target,
        request_body,
        status,
        response_body,
    };
    (requests, responses, expected)
}

/// One record to feed.
struct Rec {
    h: CaptureHeader,
    data: Vec<u8>,
}

fn header(
    conn: usize,
    ingress: bool,
    seq: u32,
    payload_len: u32,
    offset: u32,
    captured: u32,
    flags: u8,
) -> CaptureHeader {
    let mut client = [0u8; 16];
    client[..4].copy_from_slice(&[10, 1, (conn >> 8) as u8, conn as u8]);
    let mut pod = [0u8; 16];
    pod[..4].copy_from_slice(&[10, 0, 0, 2]);
    let client_port = 10_000 + (conn % 50_000) as u16;
    CaptureHeader {
        timestamp_ns: 0,
        cgroup_id: CGROUP,
        tcp_seq: seq,
        payload_len,
        chunk_offset: offset,
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

/// The records of one skb, as the eBPF program emits them.
fn skb(conn: usize, ingress: bool, seq: u32, payload: &[u8], flags: u8) -> Vec<Rec> {
    let mut recs = vec![];
    let mut offset = 0;
    let chunk = palisade_common::chunk_bytes_for(payload.len());
    loop {
        let n = payload.len().saturating_sub(offset).min(chunk);
        recs.push(Rec {
            h: header(
                conn,
                ingress,
                seq,
                payload.len() as u32,
                offset as u32,
                n as u32,
                flags,
            ),
            data: payload[offset..offset + n].to_vec(),
        });
        offset += chunk;
        if offset >= payload.len() || offset >= CHUNK_BYTES * MAX_CHUNKS_PER_SKB {
            return recs;
        }
    }
}

/// How a connection's segments are disturbed.
#[derive(Clone, Copy)]
struct Weather {
    /// Swap adjacent segments (per mille).
    reorder: u64,
    /// Send a segment, or a merge of two, again later (per mille).
    retransmit: u64,
    /// Hostile mutations (per mille for each kind).
    hostile: u64,
    max_segment: usize,
}

/// Turns a connection's sends into records: segments of random sizes, each an skb.
fn connection(rng: &mut Rng, conn: usize, sends: &[Send], weather: Weather) -> Vec<Rec> {
    let mut seq = [rng.next() as u32, rng.next() as u32];
    let mut started = [false; 2];
    let mut out: Vec<Rec> = vec![];
    for send in sends {
        let ingress = send.from_client;
        let d = usize::from(!ingress);
        let mut segs: Vec<(u32, Vec<u8>)> = vec![];
        let mut rest = &send.bytes[..];
        while !rest.is_empty() {
            let n = rng.range(1, rest.len().min(weather.max_segment));
            segs.push((seq[d], rest[..n].to_vec()));
            seq[d] = seq[d].wrapping_add(n as u32);
            rest = &rest[n..];
        }
        // The first segment of a direction is never reordered: with no SYN, the first bytes
        // seen define where the stream starts.
        let first = usize::from(!started[d]);
        started[d] = true;
        for i in first..segs.len().saturating_sub(1) {
            if rng.chance(weather.reorder) {
                segs.swap(i, i + 1);
            }
        }
        let mut emitted: Vec<(u32, Vec<u8>)> = vec![];
        for (s, bytes) in segs {
            let mut bytes = bytes;
            let mut s = s;
            if weather.hostile > 0 {
                if rng.chance(weather.hostile) {
                    continue; // lost
                }
                if rng.chance(weather.hostile) && !bytes.is_empty() {
                    let i = rng.below(bytes.len());
                    bytes[i] ^= 1 << rng.below(8); // flipped bit
                }
                if rng.chance(weather.hostile) {
                    s = s.wrapping_add(rng.next() as u32 % 100_000); // bogus sequence number
                }
                if rng.chance(weather.hostile) {
                    let n = rng.range(1, 3000);
                    bytes = rng.bytes(n); // garbage
                }
            }
            out.extend(skb(conn, ingress, s, &bytes, 0));
            emitted.push((s, bytes));
            if rng.chance(weather.retransmit) && !emitted.is_empty() {
                let k = rng.below(emitted.len());
                let (rs, mut rb) = emitted[k].clone();
                if let Some((next_seq, next)) = emitted.get(k + 1) {
                    if *next_seq == rs.wrapping_add(rb.len() as u32) && rng.chance(500) {
                        rb.extend_from_slice(next); // coalesced retransmit
                    }
                }
                out.extend(skb(conn, ingress, rs, &rb, 0));
            }
        }
    }
    if weather.hostile > 0 && rng.chance(weather.hostile * 5) {
        // An oversized skb: the kernel copies the first 16 KiB only.
        let n = rng.range(16_385, 70_000);
        let big = rng.bytes(n);
        out.extend(skb(conn, true, seq[0], &big, 0));
        seq[0] = seq[0].wrapping_add(big.len() as u32);
    }
    if weather.hostile > 0 && rng.chance(weather.hostile * 5) {
        out.extend(skb(conn, rng.chance(500), rng.next() as u32, b"", TCP_RST));
    } else {
        out.extend(skb(conn, true, seq[0], b"", TCP_FIN));
        out.extend(skb(conn, false, seq[1], b"", TCP_FIN));
    }
    out
}

/// Builds `n` connections of `per_conn` exchanges each (some pipelined).
fn traffic(
    rng: &mut Rng,
    n: usize,
    per_conn: usize,
    weather: Weather,
) -> (Vec<VecDeque<Rec>>, Vec<Vec<Expected>>) {
    let mut conns = vec![];
    let mut expected = vec![];
    for c in 0..n {
        let mut sends = vec![];
        let mut exp = vec![];
        let mut i = 0;
        while i < per_conn {
            let depth = rng.range(1, 3).min(per_conn - i);
            let mut later = vec![];
            for _ in 0..depth {
                let (reqs, resps, e) = exchange(rng, c, i);
                i += 1;
                let continues = resps.len() > 1;
                if continues {
                    // Responses come in request order: answer the pipelined ones first.
                    sends.append(&mut later);
                }
                sends.extend(reqs);
                exp.push(e);
                if continues {
                    sends.extend(resps); // 100-continue is not pipelined
                } else {
                    later.extend(resps);
                }
            }
            sends.extend(later);
        }
        conns.push(VecDeque::from(connection(rng, c, &sends, weather)));
        expected.push(exp);
    }
    (conns, expected)
}

/// Method, target, status and body lengths of each exchange (readable in a failure).
fn summary(exchanges: &[Expected]) -> Vec<String> {
    exchanges
        .iter()
        .map(|e| {
            let sum = |b: &[u8]| b.iter().map(|x| u64::from(*x)).sum::<u64>();
            format!(
                "{} {} {} req {}/{} resp {}/{}",
                e.method,
                e.target,
                e.status,
                e.request_body.len(),
                sum(&e.request_body),
                e.response_body.len(),
                sum(&e.response_body)
            )
        })
        .collect()
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_request(r: &Request, limits: &CaptureLimits, now: u64) {
    assert!(
        !r.method.is_empty() && r.method.bytes().all(is_tchar),
        "{:?}",
        r.method
    );
    assert!(!r.target.is_empty() && !r.target.contains(' '), "{:?}", r.target);
    assert!(r.body.len() <= limits.max_body_bytes);
    assert!(r.body.len() as u64 <= r.body_len);
    assert!(r.body.len() as u64 == r.body_len || r.body_truncated);
    assert!(r.headers.len() <= 100 + 64);
    assert!(r.headers.iter().all(|(n, _)| !n.is_empty()));
    assert!(r.timestamp_ns <= now);
    assert_eq!(r.cgroup_id, CGROUP);
}

fn check(e: &HttpEvent, limits: &CaptureLimits, now: u64) {
    match e {
        HttpEvent::Request(r) => check_request(r, limits, now),
        HttpEvent::Exchange(x) => {
            check_request(&x.request, limits, now);
            let r = &x.response;
            assert_eq!(x.status, r.status);
            assert!(x.status < 1000 && !((100..200).contains(&x.status) && x.status != 101));
            assert!(r.body.len() <= limits.max_body_bytes);
            assert!(r.body.len() as u64 == r.body_len || r.body_truncated);
            assert!(x.request.timestamp_ns + x.latency_ns <= now);
            assert!(r.timestamp_ns <= now);
        }
    }
}

/// Feeds the connections' records, interleaved at random; checks bounds and every event.
fn run(
    rng: &mut Rng,
    t: &mut HttpTracker,
    mut conns: Vec<VecDeque<Rec>>,
    limits: &CaptureLimits,
    cap: usize,
    budget: usize,
    step_ns: u64,
) -> Vec<HttpEvent> {
    let mut all = vec![];
    let mut out = vec![];
    let mut now = 1_000_000_000u64;
    let mut live: Vec<usize> = (0..conns.len()).collect();
    let mut fed = 0u64;
    while !live.is_empty() {
        let k = rng.below(live.len());
        let Some(mut rec) = conns[live[k]].pop_front() else {
            live.swap_remove(k);
            continue;
        };
        now += rng.below(step_ns as usize + 1) as u64;
        rec.h.timestamp_ns = now;
        t.feed(&rec.h, &rec.data, limits, &mut out);
        fed += 1;
        if fed.is_multiple_of(5000) {
            t.evict_idle_into(now, limits, &mut out);
        }
        assert!(t.connections() <= cap);
        assert!(t.buffered_bytes() <= budget, "{} > {budget}", t.buffered_bytes());
        if fed.is_multiple_of(97) {
            assert_eq!(t.buffered_bytes(), t.recount_buffered_bytes());
        }
        for e in &out {
            check(e, limits, now);
        }
        all.append(&mut out);
    }
    all
}

#[test]
fn clean_traffic_segmented_reordered_and_retransmitted_is_reported_exactly() {
    let limits = CaptureLimits {
        max_head_bytes: 8192,
        max_body_bytes: 64 * 1024,
        decrypt_tls: false,
    };
    for seed in 1..=seeds(3) {
        let mut rng = Rng(seed);
        let weather = Weather {
            reorder: 150,
            retransmit: 80,
            hostile: 0,
            max_segment: 9000,
        };
        let (conns, expected) = traffic(&mut rng, 60, 8, weather);
        let mut t = HttpTracker::new();
        let events = run(
            &mut rng,
            &mut t,
            conns,
            &limits,
            MAX_CONNECTIONS,
            BUFFER_BUDGET_BYTES,
            1000,
        );
        let mut seen: HashMap<u16, Vec<Expected>> = HashMap::new();
        let mut requests: HashMap<u16, usize> = HashMap::new();
        for e in &events {
            match e {
                HttpEvent::Exchange(x) => seen.entry(x.request.remote.1).or_default().push(Expected {
                    method: x.request.method.to_string(),
                    target: x.request.target.to_string(),
                    request_body: x.request.body.clone(),
                    status: x.status,
                    response_body: x.response.body.clone(),
                }),
                HttpEvent::Request(r) => *requests.entry(r.remote.1).or_default() += 1,
            }
        }
        for (c, exp) in expected.iter().enumerate() {
            let port = 10_000 + c as u16;
            let got = seen.get(&port).cloned().unwrap_or_default();
            assert_eq!(summary(&got), summary(exp), "seed {seed}, connection {c}");
            assert!(got == *exp, "seed {seed}, connection {c}: bodies differ");
            assert_eq!(
                requests.get(&port),
                Some(&exp.len()),
                "seed {seed}, connection {c}"
            );
        }
        let d = t.drops;
        assert_eq!(
            (
                d.gaps,
                d.protocol_violations,
                d.partial_heads,
                d.unmatched_responses,
                d.skipped_bytes
            ),
            (0, 0, 0, 0, 0),
            "seed {seed}: {d:?}"
        );
        assert!(d.duplicate_bytes > 0, "retransmits happened");
        assert_eq!(
            (t.connections(), t.buffered_bytes()),
            (0, 0),
            "every connection ended"
        );
    }
}

#[test]
fn hostile_traffic_never_panics_and_stays_bounded() {
    let limits = CaptureLimits {
        max_head_bytes: 1024,
        max_body_bytes: 4096,
        decrypt_tls: false,
    };
    let cap = 48;
    let budget = 512 * 1024;
    for seed in 100..100 + seeds(4) {
        let mut rng = Rng(seed);
        let weather = Weather {
            reorder: 200,
            retransmit: 100,
            hostile: 40,
            max_segment: 6000,
        };
        let (conns, _) = traffic(&mut rng, 150, 6, weather);
        let mut t = HttpTracker::with_bounds(cap, budget);
        let events = run(&mut rng, &mut t, conns, &limits, cap, budget, 20_000_000);
        let d = t.drops;
        assert!(!events.is_empty(), "seed {seed}");
        assert!(d.gaps > 0 && d.connections > 0, "seed {seed}: {d:?}");
    }
}

#[test]
fn pure_garbage_on_many_connections_stays_bounded() {
    let limits = CaptureLimits {
        max_head_bytes: 65536,
        max_body_bytes: 65536,
        decrypt_tls: false,
    };
    let mut rng = Rng(7);
    let mut t = HttpTracker::with_bounds(256, 4 << 20);
    let mut out = vec![];
    for i in 0..30_000u64 {
        let conn = rng.below(400);
        let mut h = header(conn, rng.chance(500), rng.next() as u32, 0, 0, 0, 0);
        h.payload_len = rng.next() as u32;
        h.chunk_offset = if rng.chance(900) { 0 } else { rng.next() as u32 };
        h.tcp_flags = if rng.chance(980) { 0x18 } else { rng.next() as u8 };
        h.family = *rng.pick(&[FAMILY_IPV4, 6, 0, 255, FAMILY_TLS]);
        if rng.chance(50) {
            h.tcp_seq = 0; // a TLS stream restarting, or a plain wrap
        }
        h.timestamp_ns = i * 1000;
        let n = rng.below(CHUNK_BYTES + 1);
        let mut data = rng.bytes(n);
        if rng.chance(300) {
            // Plausible fragments of HTTP among the noise.
            let frag: &[u8] = rng.pick::<&[u8]>(&[
                b"GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffff\r\n",
                b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                b"\r\n\r\n\r\n",
            ]);
            let at = rng.below(data.len() + 1);
            data.splice(at..at, frag.iter().copied());
        }
        t.feed(&h, &data, &limits, &mut out);
        assert!(t.connections() <= 256);
        assert!(t.buffered_bytes() <= 4 << 20);
        for e in out.drain(..) {
            check(&e, &limits, h.timestamp_ns);
        }
    }
    assert_eq!(t.buffered_bytes(), t.recount_buffered_bytes());
}

#[test]
fn out_of_order_floods_are_held_within_the_budget() {
    let limits = CaptureLimits {
        max_head_bytes: 8192,
        max_body_bytes: 0,
        decrypt_tls: false,
    };
    let budget = 8 << 20;
    let mut t = HttpTracker::with_bounds(10_000, budget);
    let mut out = vec![];
    // 4 KiB segments: 15 of them stay under the per-direction cap on held bytes.
    const SEG: usize = 4096;
    let seg = vec![b'o'; SEG];
    for conn in 0..400usize {
        // A first byte, then a hole and 60 KiB behind it that never fills.
        t.feed(&header(conn, true, 1, 1, 0, 1, 0), b"G", &limits, &mut out);
        for k in 0..15u32 {
            let h = header(conn, true, 1000 + k * SEG as u32, SEG as u32, 0, SEG as u32, 0);
            t.feed(&h, &seg, &limits, &mut out);
            assert!(t.buffered_bytes() <= budget);
        }
    }
    assert!(t.drops.budget_evictions > 0);
    assert_eq!(t.buffered_bytes(), t.recount_buffered_bytes());
}

#[test]
fn one_hundred_thousand_connections_stay_under_the_cap() {
    let limits = CaptureLimits::default();
    let mut rng = Rng(99);
    let mut t = HttpTracker::new();
    let mut out = vec![];
    let mut requests = 0usize;
    for i in 0..100_000usize {
        let mut h = header(i, true, rng.next() as u32, 0, 0, 0, 0);
        h.source_addr[1] = (i >> 16) as u8;
        h.source_addr[2] = (i >> 8) as u8;
        h.source_addr[3] = i as u8;
        h.source_port = rng.range(1024, 65535) as u16;
        h.timestamp_ns = i as u64 * 1000;
        let path: String = (0..rng.range(1, 60))
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect();
        let req = format!("GET /{path}/{} HTTP/1.1\r\nHost: x\r\n\r\n", rng.next());
        h.payload_len = req.len() as u32;
        h.captured_len = req.len() as u32;
        t.feed(&h, req.as_bytes(), &limits, &mut out);
        requests += out.iter().filter(|e| matches!(e, HttpEvent::Request(_))).count();
        out.clear();
        assert!(t.connections() <= MAX_CONNECTIONS);
    }
    assert_eq!(requests, 100_000, "every request was parsed");
    assert_eq!(t.connections(), MAX_CONNECTIONS);
    assert_eq!(t.drops.connections, (100_000 - MAX_CONNECTIONS) as u64);
    assert!(t.buffered_bytes() <= BUFFER_BUDGET_BYTES);
    assert_eq!(t.buffered_bytes(), t.recount_buffered_bytes());
    // Housekeeping long after: everything idle is forgotten.
    t.evict_idle_into(
        100_000 * 1000 + palisade_node_agent::http::IDLE_TIMEOUT_NS,
        &limits,
        &mut out,
    );
    assert_eq!((t.connections(), t.buffered_bytes()), (0, 0));
}
