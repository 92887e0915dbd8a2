//! Cost of the agent's user-space capture path, one core, no kernel: what the node agent spends
//! per request after the ring buffer hands it a record.
//!
//! ```text
//! cargo bench -p palisade-node-agent --bench capture
//! ```
//!
//! Groups:
//! - `parse`: [`HttpTracker::feed`] on one keep-alive connection, request and response records as
//!   the kernel emits them (bodies in pages or 16 KiB chunks), until the exchange is paired. Throughput in
//!   bytes of both messages, so criterion prints MB/s as well as the time per exchange.
//! - `parse` also has the hello GET over TLS 1.3 (AES-128-GCM, from rustls in memory),
//!   decrypted with the session's secrets as the agent does by default: the decryption's cost
//!   is that case against the plain one.
//! - `redact`: [`Redactor`] over what leaves the node for one request (headers, target, a JSON
//!   body with a card number and a token).
//! - `runtime`: [`Runtime::on_record`] end to end for the overhead benchmark's traffic (wrk's
//!   `GET /` to nginx, headers captured, discovery on: parse, pair, endpoint counts, RED metrics),
//!   with and without a policy of the six injection detectors, and the bodies benchmark's
//!   `GET /` of a 64 KiB file with the body kept.
//!
//! Every measured iteration is one exchange (request and response records) on one keep-alive
//! connection, so criterion's time is per exchange.

#![allow(clippy::expect_used, clippy::print_stdout)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use palisade_api::agent::{
    CaptureConfig, MonitorConfig, NodeConfig, ObjectRef, PolicyConfig, RedactionConfig, RuleConfig,
    WorkloadTarget,
};
use palisade_common::{
    chunk_bytes_for, CaptureCounters, CaptureHeader, DIRECTION_EGRESS, DIRECTION_INGRESS, FAMILY_IPV4,
    FAMILY_TLS_SESSION,
};
use palisade_node_agent::http::{CaptureLimits, HttpEvent, HttpTracker};
use palisade_node_agent::redact::Redactor;
use palisade_node_agent::runtime::{CaptureBackend, Runtime};
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

/// The agent binary's allocator, so the figures are the shipped agent's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const POD_CGROUP: u64 = 1001;
const POD_PORT: u16 = 8080;

/// wrk's request and nginx's answer in the overhead benchmark.
const WRK_GET: &str = "GET / HTTP/1.1\r\nHost: 10.244.0.2:8080\r\n\r\n";
const NGINX_HELLO: &str =
    "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 13:00:00 GMT\r\n\
Content-Type: text/plain\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nhello\n";

/// One direction of one connection: records with consistent sequence numbers.
struct Stream {
    direction: u8,
    seq: u32,
    client_port: u16,
}

impl Stream {
    fn header(&self, payload_len: u32, chunk_offset: u32, captured: u32, ts: u64) -> CaptureHeader {
        let pod = [10, 244, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let client = [10, 244, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let ingress = self.direction == DIRECTION_INGRESS;
        CaptureHeader {
            timestamp_ns: ts,
            cgroup_id: POD_CGROUP,
            tcp_seq: self.seq,
            payload_len,
            chunk_offset,
            captured_len: captured,
            source_addr: if ingress { client } else { pod },
            dest_addr: if ingress { pod } else { client },
            source_port: if ingress { self.client_port } else { POD_PORT },
            dest_port: if ingress { POD_PORT } else { self.client_port },
            family: FAMILY_IPV4,
            direction: self.direction,
            tcp_flags: 0x18,
            _padding: [0],
        }
    }

    /// The records of one message sent as one skb, as the kernel copies them (pages up to 16 KiB,
    /// 16 KiB chunks beyond).
    fn records(&mut self, message: &[u8], ts: u64) -> Vec<(CaptureHeader, Vec<u8>)> {
        let len = message.len() as u32;
        let size = chunk_bytes_for(message.len());
        let out = message
            .chunks(size)
            .enumerate()
            .map(|(i, chunk)| {
                let off = (i * size) as u32;
                (self.header(len, off, chunk.len() as u32, ts), chunk.to_vec())
            })
            .collect();
        self.seq = self.seq.wrapping_add(len);
        out
    }
}

/// One keep-alive connection: the records of its next exchange, in capture order, with sequence
/// numbers and timestamps that keep advancing.
struct KeepAlive {
    up: Stream,
    down: Stream,
    ts: u64,
}

impl KeepAlive {
    fn new() -> Self {
        KeepAlive {
            up: Stream {
                direction: DIRECTION_INGRESS,
                seq: 1000,
                client_port: 40_000,
            },
            down: Stream {
                direction: DIRECTION_EGRESS,
                seq: 5000,
                client_port: 40_000,
            },
            ts: 1_000_000,
        }
    }

    fn next(&mut self, request: &[u8], response: &[u8]) -> Vec<(CaptureHeader, Vec<u8>)> {
        self.ts += 10_000;
        let mut records = self.up.records(request, self.ts);
        records.extend(self.down.records(response, self.ts + 5_000));
        records
    }
}

/// Times `handle` over `iters` exchanges of one keep-alive connection (making the records is not
/// timed).
fn time_exchanges(
    iters: u64,
    connection: &mut KeepAlive,
    request: &[u8],
    response: &[u8],
    mut handle: impl FnMut(&CaptureHeader, &[u8]),
) -> Duration {
    let mut elapsed = Duration::ZERO;
    for _ in 0..iters {
        let records = connection.next(request, response);
        let start = Instant::now();
        for (h, d) in &records {
            handle(h, d);
        }
        elapsed += start.elapsed();
    }
    elapsed
}

/// nginx's answer to `GET /` when it serves a JSON file of `len` bytes (the bodies benchmark).
fn nginx_file(len: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 13:00:00 GMT\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n\
         Last-Modified: Fri, 27 Nov 2026 12:00:00 GMT\r\nConnection: keep-alive\r\n\
         ETag: \"6747a6c0-10000\"\r\nAccept-Ranges: bytes\r\n\r\n{}",
        json_items(len)
    )
    .into_bytes()
}

/// A JSON document of exactly `len` bytes (for `len` of 64 or more): a list of small objects.
fn json_items(len: usize) -> String {
    let mut body = String::from("{\"items\":[");
    while body.len() + 40 < len {
        body.push_str("{\"id\":12345,\"name\":\"widget\",\"qty\":3},");
    }
    body.push_str("{\"id\":0}]}");
    while body.len() < len {
        body.push(' ');
    }
    body
}

fn post_with_body(body_len: usize) -> (Vec<u8>, Vec<u8>) {
    let body = json_items(body_len);
    let request = format!(
        "POST /api/v1/orders HTTP/1.1\r\nHost: shop\r\nContent-Type: application/json\r\n\
         Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = format!(
        "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    (request.into_bytes(), response.into_bytes())
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    let (post1k, created1k) = post_with_body(1024);
    let (post64k, created64k) = post_with_body(64 * 1024);
    let cases: [(&str, &[u8], &[u8], CaptureLimits); 4] = [
        (
            "hello GET, headers only",
            WRK_GET.as_bytes(),
            NGINX_HELLO.as_bytes(),
            limits(0),
        ),
        (
            "1 KiB JSON both ways, bodies kept",
            &post1k,
            &created1k,
            limits(16 * 1024),
        ),
        (
            "64 KiB JSON both ways, bodies kept to 16 KiB",
            &post64k,
            &created64k,
            limits(16 * 1024),
        ),
        (
            "64 KiB JSON both ways, bodies framed not kept",
            &post64k,
            &created64k,
            limits(0),
        ),
    ];
    for (name, request, response, limits) in cases {
        group.throughput(Throughput::Bytes((request.len() + response.len()) as u64));
        let mut tracker = HttpTracker::new();
        let mut connection = KeepAlive::new();
        let mut out = Vec::with_capacity(4);
        let mut exchanges = 0u64;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                time_exchanges(iters, &mut connection, request, response, |h, d| {
                    tracker.feed(h, d, &limits, &mut out);
                    for event in out.drain(..) {
                        exchanges += u64::from(matches!(event, HttpEvent::Exchange(_)));
                    }
                })
            });
        });
        // Nothing was fed when a filter on the command line skipped this case.
        let fed = connection.ts > KeepAlive::new().ts;
        assert!(
            !fed || exchanges > 0,
            "no exchange was paired: the bench measured nothing"
        );
    }
    group.finish();
}

/// A TLS 1.3 connection in memory (rustls both ends): what each exchange puts on the wire.
struct TlsWire {
    client: rustls::ClientConnection,
    server: rustls::ServerConnection,
}

#[derive(Debug, Default)]
struct KeyLog(std::sync::Mutex<Vec<(String, Vec<u8>)>>);

impl rustls::KeyLog for KeyLog {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        self.0
            .lock()
            .expect("key log")
            .push((label.to_string(), secret.to_vec()));
    }
}

impl TlsWire {
    /// The connection, its handshake bytes (client's, server's), and an `SSL` object copy with
    /// the client random at 352 and the secrets at 1860 and 1924 (as OpenSSL 3.0.19 has them).
    fn new() -> (TlsWire, Vec<u8>, Vec<u8>, Vec<u8>) {
        use rustls::crypto::ring as provider;
        let provider = std::sync::Arc::new(rustls::crypto::CryptoProvider {
            cipher_suites: vec![provider::cipher_suite::TLS13_AES_128_GCM_SHA256],
            ..provider::default_provider()
        });
        let cert = rcgen::generate_simple_self_signed(vec!["bench".to_string()]).expect("cert");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("server config");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).expect("root");
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let log = std::sync::Arc::new(KeyLog::default());
        client.key_log = log.clone();
        let mut wire = TlsWire {
            client: rustls::ClientConnection::new(
                std::sync::Arc::new(client),
                "bench".try_into().expect("name"),
            )
            .expect("client"),
            server: rustls::ServerConnection::new(std::sync::Arc::new(server)).expect("server"),
        };
        let (up, down) = wire.pump();
        let mut window = vec![0u8; 4096];
        window[352..384].copy_from_slice(&up[11..43]);
        for (label, secret) in log.0.lock().expect("key log").iter() {
            let at = match label.as_str() {
                "CLIENT_TRAFFIC_SECRET_0" => 1860,
                "SERVER_TRAFFIC_SECRET_0" => 1924,
                _ => continue,
            };
            window[at..at + secret.len()].copy_from_slice(secret);
        }
        (wire, up, down, window)
    }

    /// Moves pending bytes between the ends; what went up (client to server) and down.
    fn pump(&mut self) -> (Vec<u8>, Vec<u8>) {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        loop {
            let (u, d) = (up.len(), down.len());
            while self.client.wants_write() {
                self.client.write_tls(&mut up).expect("client write");
            }
            if up.len() > u {
                self.server.read_tls(&mut &up[u..]).expect("server read");
                self.server.process_new_packets().expect("server");
            }
            while self.server.wants_write() {
                self.server.write_tls(&mut down).expect("server write");
            }
            if down.len() > d {
                self.client.read_tls(&mut &down[d..]).expect("client read");
                self.client.process_new_packets().expect("client");
            }
            if up.len() == u && down.len() == d {
                return (up, down);
            }
        }
    }

    /// One request and its response, encrypted: (up, down).
    fn exchange(&mut self, request: &[u8], response: &[u8]) -> (Vec<u8>, Vec<u8>) {
        use std::io::{Read as _, Write as _};
        self.client.writer().write_all(request).expect("request");
        let (up, _) = self.pump();
        let mut sink = vec![0u8; request.len()];
        self.server
            .reader()
            .read_exact(&mut sink)
            .expect("server got the request");
        self.server.writer().write_all(response).expect("response");
        let (_, down) = self.pump();
        let mut sink = vec![0u8; response.len()];
        self.client
            .reader()
            .read_exact(&mut sink)
            .expect("client got the response");
        (up, down)
    }
}

fn bench_parse_tls(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    let (request, response) = (WRK_GET.as_bytes(), NGINX_HELLO.as_bytes());
    group.throughput(Throughput::Bytes((request.len() + response.len()) as u64));
    let limits = CaptureLimits {
        decrypt_tls: true,
        ..limits(0)
    };
    let (mut wire, up, down, window) = TlsWire::new();
    let mut tracker = HttpTracker::new();
    let mut connection = KeepAlive::new();
    let mut out = Vec::with_capacity(4);
    for (h, d) in connection
        .up
        .records(&up, 1)
        .into_iter()
        .chain(connection.down.records(&down, 2))
    {
        tracker.feed(&h, &d, &limits, &mut out);
    }
    let session = CaptureHeader {
        family: FAMILY_TLS_SESSION,
        dest_addr: [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // the process (pid 1)
        source_addr: [0; 16],
        payload_len: window.len() as u32,
        captured_len: window.len() as u32,
        ..connection.up.header(0, 0, 0, 1)
    };
    tracker.tls_session(&session, &window, &limits, &mut out);
    let mut exchanges = 0u64;
    group.bench_function("hello GET over TLS 1.3, decrypted, headers only", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let (up, down) = wire.exchange(request, response);
                connection.ts += 10_000;
                let mut records = connection.up.records(&up, connection.ts);
                records.extend(connection.down.records(&down, connection.ts + 5_000));
                let start = Instant::now();
                for (h, d) in &records {
                    tracker.feed(h, d, &limits, &mut out);
                    for event in out.drain(..) {
                        exchanges += u64::from(matches!(event, HttpEvent::Exchange(_)));
                    }
                }
                elapsed += start.elapsed();
            }
            elapsed
        });
    });
    let fed = connection.ts > KeepAlive::new().ts;
    assert!(
        !fed || exchanges > 0,
        "no exchange was decrypted: the bench measured nothing"
    );
    group.finish();
}

fn limits(max_body_bytes: usize) -> CaptureLimits {
    CaptureLimits {
        max_head_bytes: 8192,
        max_body_bytes,
        decrypt_tls: false,
    }
}

fn bench_redact(c: &mut Criterion) {
    let (redactor, errors) = Redactor::compile(Some(&RedactionConfig {
        json_fields: vec!["password".into(), "card".into()],
        ..Default::default()
    }));
    assert!(errors.is_empty(), "{errors:?}");
    let headers: Vec<(String, String)> = [
        ("Host", "shop.example.com"),
        ("User-Agent", "curl/8.5.0"),
        (
            "Authorization",
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln",
        ),
        ("Cookie", "session=abc123; theme=dark"),
        ("Content-Type", "application/json"),
        ("X-Request-Id", "7f9c2a10-1b2c-4d5e-8f90-123456789abc"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let body = br#"{"user":"alice","password":"hunter2","card":"4111 1111 1111 1111","note":"call me at 555-0100","items":[1,2,3]}"#;
    let target = "/api/v1/users/12345?token=abcdef0123456789&page=2";
    let mut group = c.benchmark_group("redact");
    group.throughput(Throughput::Bytes(
        (headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() + body.len() + target.len()) as u64,
    ));
    group.bench_function("headers, target and a 110-byte JSON body", |b| {
        b.iter(|| {
            black_box(redactor.headers(black_box(&headers)));
            black_box(redactor.target(black_box(target)));
            black_box(redactor.body(black_box(body)));
        });
    });
    group.finish();
}

/// The kernel side, absent: attach succeeds, nothing else is called on the hot path.
struct NoKernel;

impl CaptureBackend for NoKernel {
    fn attach(&mut self, _cgroup_dir: &Path) -> Result<u64, String> {
        Ok(POD_CGROUP)
    }
    fn detach(&mut self, _cgroup_dir: &Path) -> Result<(), String> {
        Ok(())
    }
    fn counters(&self) -> CaptureCounters {
        CaptureCounters::default()
    }
}

/// The overhead benchmark's monitor (headers captured, discovery on; bodies kept up to
/// `max_body_bytes` when it is not 0) and a policy of `detectors` when there are any.
fn node_config(detectors: &[&str], max_body_bytes: u32) -> NodeConfig {
    let reference = |name: &str| ObjectRef {
        namespace: "demo".into(),
        name: name.into(),
        generation: 1,
    };
    NodeConfig {
        version: 1,
        node_name: "bench-node".into(),
        cluster_cidrs: vec!["10.244.0.0/16".into()],
        monitors: vec![MonitorConfig {
            monitor: Some(reference("bench")),
            targets: vec![WorkloadTarget {
                pod_namespace: "demo".into(),
                pod_name: "monitored".into(),
                pod_uid: "bench-uid".into(),
                ..Default::default()
            }],
            ports: vec![u32::from(POD_PORT)],
            capture: Some(CaptureConfig {
                headers: true,
                bodies: max_body_bytes > 0,
                max_header_bytes: 8192,
                max_body_bytes,
                sampling_percent: 100,
            }),
            discovery: true,
            max_endpoints: 500,
            ..Default::default()
        }],
        policies: if detectors.is_empty() {
            vec![]
        } else {
            vec![PolicyConfig {
                policy: Some(reference("guard")),
                monitors: vec!["bench".into()],
                pod_uids: vec!["bench-uid".into()],
                mode: "audit".into(),
                rules: detectors
                    .iter()
                    .map(|d| RuleConfig {
                        name: d.to_string(),
                        detector: d.to_string(),
                        severity: "high".into(),
                        ..Default::default()
                    })
                    .collect(),
            }]
        },
        ..Default::default()
    }
}

fn bench_runtime(c: &mut Criterion) {
    let root = std::env::temp_dir().join(format!("palisade-capture-bench-{}", std::process::id()));
    std::fs::create_dir_all(root.join("kubepods/besteffort/podbench-uid")).expect("a fake pod cgroup dir");
    let mut group = c.benchmark_group("runtime");
    group.throughput(Throughput::Elements(1));
    let injection = [
        "sqlInjection",
        "xss",
        "pathTraversal",
        "commandInjection",
        "ssrf",
        "jndiInjection",
    ];
    let file = nginx_file(64 * 1024);
    let cases: [(&str, &[&str], &[u8], u32); 3] = [
        ("wrk GET / to nginx, monitor only", &[], NGINX_HELLO.as_bytes(), 0),
        (
            "wrk GET / to nginx, six injection detectors",
            &injection,
            NGINX_HELLO.as_bytes(),
            0,
        ),
        (
            "wrk GET / to nginx, a 64 KiB file, body kept, monitor only",
            &[],
            &file,
            64 * 1024,
        ),
    ];
    for (name, detectors, response, max_body_bytes) in cases {
        let mut runtime = Runtime::new(
            "bench-node".into(),
            "bench".into(),
            Some(root.clone()),
            Ok(NoKernel),
            vec![],
            vec![],
            0,
        );
        runtime.apply(node_config(detectors, max_body_bytes));
        assert_eq!(runtime.attached_pods(), 1, "the bench pod must be attached");
        let mut connection = KeepAlive::new();
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                time_exchanges(iters, &mut connection, WRK_GET.as_bytes(), response, |h, d| {
                    runtime.on_record(h, d)
                })
            });
        });
        let report = runtime.take_report();
        let counted: u64 = report
            .monitors
            .iter()
            .flat_map(|m| &m.endpoints)
            .map(|e| e.count)
            .sum();
        let fed = connection.ts > KeepAlive::new().ts;
        assert!(
            !fed || counted > 0,
            "the runtime counted no exchange: the bench measured nothing"
        );
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&root);
}

criterion_group!(benches, bench_parse, bench_parse_tls, bench_redact, bench_runtime);
criterion_main!(benches);
