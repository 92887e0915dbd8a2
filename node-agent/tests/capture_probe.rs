//! End-to-end test of the cgroup_skb capture programs on this machine (needs root).
//!
//! A python http.server runs inside a fresh cgroup v2 directory; the test (outside the cgroup)
//! sends requests and checks what the ring buffer carried: the request line on ingress, the status
//! line on egress, the ports, the cgroup id, several chunks for a large response, and silence
//! after detaching.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use palisade_common::{
    connection_sampled, CaptureFilter, CaptureFilterKey, CaptureHeader, CAPTURE_FILTER_CGROUP_ENTRY,
    CHUNK_BYTES, DIRECTION_EGRESS, DIRECTION_INGRESS, FAMILY_IPV4, FAMILY_IPV6, TCP_FIN,
};
use palisade_node_agent::{
    capture::{CaptureError, CaptureProbes, MERGE_SLACK_NS},
    features::{cgroup2_root_from_mountinfo, probe_node_features},
};

const BIG_FILE_BYTES: usize = 100 * 1024;
const CHILD_ENV: &str = "PALISADE_CAPTURE_NO_CAPS_CHILD";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// One record copied out of the ring.
#[derive(Clone, Debug)]
struct Rec {
    header: CaptureHeader,
    data: Vec<u8>,
}

/// Kills the server and removes the cgroup and the served directory, even when an assert fails.
struct Cleanup {
    server: Option<Child>,
    cgroup: PathBuf,
    www: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The cgroup can be removed once its last process is gone (that takes a moment).
        for _ in 0..50 {
            match fs::remove_dir(&self.cgroup) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
        let _ = fs::remove_dir_all(&self.www);
    }
}

fn free_port(ip: IpAddr) -> u16 {
    let l = TcpListener::bind((ip, 0)).unwrap();
    l.local_addr().unwrap().port()
}

fn wait_for_server(ip: IpAddr, port: u16) {
    let addr = SocketAddr::from((ip, port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("python http.server did not listen on {addr} within 20 s");
}

/// Sends one HTTP/1.1 request, reads the whole response (the server closes), returns
/// (client port, response bytes).
fn http_get(ip: IpAddr, port: u16, path: &str) -> (u16, Vec<u8>) {
    let addr = SocketAddr::from((ip, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let client_port = s.local_addr().unwrap().port();
    // One write, so the request goes out in one segment (write! would send each piece).
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: palisade-test\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    (client_port, resp)
}

/// Drains the ring until `done` says so or `timeout` passes; returns everything drained.
fn drain_until(
    ring: &mut palisade_node_agent::capture::CaptureRing,
    timeout: Duration,
    mut done: impl FnMut(&[Rec]) -> bool,
) -> Vec<Rec> {
    let deadline = Instant::now() + timeout;
    let mut recs = Vec::new();
    loop {
        ring.drain(4096, |h, d| {
            recs.push(Rec {
                header: *h,
                data: d.to_vec(),
            })
        });
        if done(&recs) || Instant::now() >= deadline {
            return recs;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn addr(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV6 {
        IpAddr::V6(Ipv6Addr::from(*raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

fn src(h: &CaptureHeader) -> IpAddr {
    addr(h.family, &h.source_addr)
}

fn dst(h: &CaptureHeader) -> IpAddr {
    addr(h.family, &h.dest_addr)
}

#[test]
fn capture_http_on_a_cgroup() {
    capture_scenario("capture_http_on_a_cgroup", IpAddr::V4(Ipv4Addr::LOCALHOST));
}

#[test]
fn capture_http_over_ipv6() {
    if TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_err() {
        println!("SKIPPED: capture_http_over_ipv6: cannot bind [::1] (IPv6 disabled on lo)");
        return;
    }
    capture_scenario("capture_http_over_ipv6", IpAddr::V6(Ipv6Addr::LOCALHOST));
}

/// The whole scenario (a)-(f) for a server bound to `ip`.
fn capture_scenario(name: &str, ip: IpAddr) {
    if !is_root() {
        println!("SKIPPED: {name}: needs root (BPF_PROG_LOAD, cgroup attach, mkdir in the cgroup v2 tree)");
        return;
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(cg_root) = cgroup2_root_from_mountinfo(&mountinfo) else {
        println!("SKIPPED: {name}: no cgroup v2 mount in /proc/self/mountinfo");
        return;
    };
    if Command::new("python3").arg("--version").output().is_err() {
        println!("SKIPPED: {name}: python3 not found");
        return;
    }
    let family = if ip.is_ipv6() { FAMILY_IPV6 } else { FAMILY_IPV4 };

    // (a) a fresh cgroup and a directory to serve.
    let tag = format!("palisade-capture-test-{}-{family}", std::process::id());
    let cgroup = cg_root.join(&tag);
    let www = std::env::temp_dir().join(&tag);
    let _ = fs::remove_dir(&cgroup);
    fs::create_dir(&cgroup).unwrap();
    let mut cleanup = Cleanup {
        server: None,
        cgroup: cgroup.clone(),
        www: www.clone(),
    };
    fs::create_dir_all(&www).unwrap();
    let big: Vec<u8> = (0..BIG_FILE_BYTES).map(|i| b'a' + (i % 26) as u8).collect();
    fs::write(www.join("big.bin"), &big).unwrap();

    // (b) attach.
    let t0 = Instant::now();
    let mut probes = CaptureProbes::load().unwrap_or_else(|e| panic!("load failed: {e}"));
    println!("loaded both programs in {:?}", t0.elapsed());
    let cgroup_id = probes
        .attach_cgroup(&cgroup)
        .unwrap_or_else(|e| panic!("attach failed: {e}"));
    // idempotent
    assert_eq!(probes.attach_cgroup(&cgroup).unwrap(), cgroup_id);
    assert_eq!(probes.attached_cgroups(), vec![cgroup.clone()]);
    println!("attached to {} (cgroup id {cgroup_id})", cgroup.display());
    let mut ring = probes.take_ring().unwrap();
    assert!(matches!(probes.take_ring(), Err(CaptureError::RingTaken)));

    // (c) the server, moved into the cgroup before it opens its socket. A "free" port can be
    // taken by another process between the probe and python's bind (busy machines, parallel
    // tests): then python exits and something else answers; start again on another port.
    let mut attempt = 0;
    let (port, server_pid) = loop {
        attempt += 1;
        let port = free_port(ip);
        let script = format!(
            "echo $$ > '{}/cgroup.procs' && exec python3 -m http.server --bind {ip} --directory '{}' {port}",
            cgroup.display(),
            www.display()
        );
        let mut server = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server_pid = server.id();
        wait_for_server(ip, port);
        let exited = server.try_wait().unwrap();
        cleanup.server = Some(server);
        if exited.is_none() || attempt == 3 {
            break (port, server_pid);
        }
        println!("server on port {port} exited ({exited:?}); retrying on another port");
    };
    let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap();
    assert!(
        procs.lines().any(|l| l.trim() == server_pid.to_string()),
        "server pid {server_pid} not in {}/cgroup.procs: {procs:?}",
        cgroup.display()
    );

    // (d) requests from outside the cgroup.
    let probe_path = "/palisade-probe/some-path";
    let mut small_ports = Vec::new();
    for _ in 0..3 {
        let (cport, resp) = http_get(ip, port, probe_path);
        assert!(
            resp.starts_with(b"HTTP/1.0 404"),
            "{:?}",
            String::from_utf8_lossy(&resp)
        );
        small_ports.push(cport);
    }
    let (big_port, resp) = http_get(ip, port, "/big.bin");
    assert!(
        resp.starts_with(b"HTTP/1.0 200"),
        "{:?}",
        String::from_utf8_lossy(&resp[..64])
    );
    assert!(resp.ends_with(&big[big.len() - 100..]));

    // (e) what the ring carried.
    let request_line = format!("GET {probe_path} HTTP/1.1").into_bytes();
    let recs = drain_until(&mut ring, Duration::from_secs(5), |recs| {
        let ing = recs
            .iter()
            .filter(|r| r.header.direction == DIRECTION_INGRESS && contains(&r.data, &request_line));
        let big_eg = recs
            .iter()
            .filter(|r| r.header.direction == DIRECTION_EGRESS && r.header.dest_port == big_port);
        ing.count() >= 3 && big_eg.map(|r| r.data.len()).sum::<usize>() >= 4 * CHUNK_BYTES
    });
    let counters = probes.counters().unwrap();
    println!(
        "[{name}] drained {} records; counters {counters:?}; bad records {}",
        recs.len(),
        ring.bad_records()
    );

    let mut by_dir = BTreeMap::new();
    for r in &recs {
        *by_dir
            .entry((r.header.direction, r.header.captured_len > 0))
            .or_insert(0) += 1;
    }
    println!("records by (direction, has payload): {by_dir:?}");
    // Each CPU writes into its own ring, the shared one carries TLS only.
    let per_ring = ring.records_per_ring().to_vec();
    println!("[{name}] records per ring (shared, then by CPU): {per_ring:?}");
    let possible_cpus = aya::util::nr_cpus().unwrap();
    assert_eq!(
        ring.rings(),
        1 + possible_cpus.min(1024),
        "one ring per CPU besides the shared one"
    );
    assert_eq!(per_ring[0], 0, "cgroup capture went through the shared ring");
    assert!(per_ring[1..].iter().sum::<u64>() >= recs.len() as u64);
    if std::env::var_os("PALISADE_TEST_DUMP").is_some() {
        for r in &recs {
            println!(
                "dir {} {}:{} -> {}:{} seq {} flags {:#x} payload_len {} off {} cap {} {:?}",
                r.header.direction,
                src(&r.header),
                r.header.source_port,
                dst(&r.header),
                r.header.dest_port,
                r.header.tcp_seq,
                r.header.tcp_flags,
                r.header.payload_len,
                r.header.chunk_offset,
                r.header.captured_len,
                String::from_utf8_lossy(&r.data[..r.data.len().min(40)])
            );
        }
    }

    for r in &recs {
        assert_eq!(
            r.header.cgroup_id, cgroup_id,
            "record of another cgroup: {:?}",
            r.header
        );
        assert_eq!(r.header.family, family);
        assert_eq!(src(&r.header), ip);
        assert_eq!(dst(&r.header), ip);
        assert!(r.header.captured_len as usize <= CHUNK_BYTES);
        assert_eq!(r.data.len(), r.header.captured_len as usize);
        assert!(r.header.chunk_offset + r.header.captured_len <= r.header.payload_len);
        match r.header.direction {
            DIRECTION_INGRESS => assert_eq!(r.header.dest_port, port, "{:?}", r.header),
            DIRECTION_EGRESS => assert_eq!(r.header.source_port, port, "{:?}", r.header),
            d => panic!("bad direction {d}"),
        }
    }

    // Request lines on ingress, one per small request, with the client's port as source.
    for cport in &small_ports {
        let hit = recs.iter().find(|r| {
            r.header.direction == DIRECTION_INGRESS
                && r.header.source_port == *cport
                && r.header.chunk_offset == 0
                && r.data.starts_with(&request_line)
        });
        let hit = hit.unwrap_or_else(|| panic!("no ingress request line from client port {cport}"));
        println!(
            "[{name}] INGRESS {} {} -> {} {} seq {} len {}: {:?}",
            src(&hit.header),
            hit.header.source_port,
            dst(&hit.header),
            hit.header.dest_port,
            hit.header.tcp_seq,
            hit.header.payload_len,
            String::from_utf8_lossy(&hit.data[..hit.data.len().min(60)])
        );
    }

    // Status lines on egress.
    for cport in &small_ports {
        let hit = recs.iter().find(|r| {
            r.header.direction == DIRECTION_EGRESS
                && r.header.dest_port == *cport
                && contains(&r.data, b"HTTP/1.0 404")
        });
        let hit = hit.unwrap_or_else(|| panic!("no egress 404 status line to client port {cport}"));
        println!(
            "[{name}] EGRESS  {} {} -> {} {} seq {} len {}: {:?}",
            src(&hit.header),
            hit.header.source_port,
            dst(&hit.header),
            hit.header.dest_port,
            hit.header.tcp_seq,
            hit.header.payload_len,
            String::from_utf8_lossy(&hit.data[..hit.data.len().min(40)])
        );
    }
    let big_recs: Vec<&Rec> = recs
        .iter()
        .filter(|r| r.header.direction == DIRECTION_EGRESS && r.header.dest_port == big_port)
        .collect();
    assert!(
        big_recs.iter().any(|r| contains(&r.data, b"HTTP/1.0 200")),
        "no egress 200 status line for the big response"
    );

    // Large response: some skb split into several chunks with increasing offsets, and the chunk
    // bytes are the file's bytes at that offset.
    let mut chunks_by_seq: BTreeMap<u32, Vec<&Rec>> = BTreeMap::new();
    for r in &big_recs {
        if r.header.captured_len > 0 {
            chunks_by_seq.entry(r.header.tcp_seq).or_default().push(r);
        }
    }
    let (seq, chunks) = chunks_by_seq
        .iter()
        .max_by_key(|(_, c)| c.len())
        .expect("no payload records for the big response");
    let offsets: Vec<u32> = chunks.iter().map(|r| r.header.chunk_offset).collect();
    println!(
        "[{name}] big response: {} egress records, {} skbs; largest skb seq {seq} payload_len {} split into chunks at {offsets:?}",
        big_recs.len(),
        chunks_by_seq.len(),
        chunks[0].header.payload_len
    );
    assert!(
        chunks.len() >= 2,
        "expected several chunks for one skb, got {offsets:?}"
    );
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + CHUNK_BYTES as u32),
        "{offsets:?}"
    );
    // Reassemble the captured prefix of each data skb and compare with the file.
    let header_end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let first_seq = big_recs
        .iter()
        .filter(|r| r.header.captured_len > 0)
        .map(|r| r.header.tcp_seq)
        .min()
        .unwrap();
    let mut checked = 0usize;
    for r in big_recs.iter().filter(|r| r.header.captured_len > 0) {
        let stream_off = r.header.tcp_seq.wrapping_sub(first_seq) as usize + r.header.chunk_offset as usize;
        let expect = &resp[stream_off..stream_off + r.data.len()];
        assert_eq!(expect, &r.data[..], "chunk at stream offset {stream_off} differs");
        checked += r.data.len();
    }
    assert!(header_end > 0 && checked >= 2 * CHUNK_BYTES);
    println!("[{name}] verified {checked} captured bytes of the big response against what the client read");
    assert!(
        big_recs.iter().any(|r| r.header.tcp_flags & TCP_FIN != 0),
        "no FIN seen on egress for the big response (server closes HTTP/1.0 connections)"
    );
    assert!(counters.records_emitted >= recs.len() as u64);
    assert_eq!(counters.records_lost, 0);
    assert_eq!(counters.parse_errors, 0);
    assert!(counters.packets_seen >= 8);

    // (e') what the monitors asked for, applied in the kernel.
    check_filters(name, ip, port, cgroup_id, &mut probes, &mut ring);

    // (f) detach: no more records.
    probes.detach_cgroup(&cgroup).unwrap();
    probes.detach_cgroup(&cgroup).unwrap(); // no-op
    assert!(probes.attached_cgroups().is_empty());
    let before = probes.counters().unwrap();
    let leftover = drain_until(&mut ring, Duration::from_millis(200), |_| false);
    assert!(leftover.is_empty(), "{} records after the drain", leftover.len());
    let (_, resp) = http_get(ip, port, probe_path);
    assert!(resp.starts_with(b"HTTP/1.0 404"));
    let after_detach = drain_until(&mut ring, Duration::from_millis(500), |_| false);
    let after = probes.counters().unwrap();
    println!(
        "[{name}] after detach: {} records, records_emitted {} -> {}",
        after_detach.len(),
        before.records_emitted,
        after.records_emitted
    );
    assert!(after_detach.is_empty());
    assert_eq!(before.records_emitted, after.records_emitted);

    // Re-attach works after a detach (same path, fresh links), and a reader that has read
    // everything is woken by the next record (the rings' epoll set, as the agent waits on it).
    assert_eq!(probes.attach_cgroup(&cgroup).unwrap(), cgroup_id);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let again = runtime.block_on(async {
        let mut ring = ring
            .into_async()
            .expect("the rings' epoll set registers with tokio");
        // Caught up: the kernel notifies the next record committed at the reader's position.
        let _ = ring.get_mut().drain(4096, |_, _| {});
        let woken = {
            let (_, _) = http_get(ip, port, probe_path);
            tokio::time::timeout(Duration::from_secs(3), ring.readable()).await
        };
        let mut guard = woken
            .expect("no wake-up within 3 s of a captured request")
            .expect("polling the rings");
        guard.clear_ready();
        drop(guard);
        // The merge holds records younger than its watermark: wait that out, then drain.
        tokio::time::sleep(Duration::from_nanos(MERGE_SLACK_NS) * 2).await;
        let mut recs = vec![];
        ring.get_mut().drain(4096, |h, d| {
            recs.push(Rec {
                header: *h,
                data: d.to_vec(),
            })
        });
        recs
    });
    assert!(
        again.iter().any(|r| r.data.starts_with(&request_line)),
        "no capture after re-attach"
    );
    probes.detach_cgroup(&cgroup).unwrap();
    drop(probes);
    drop(cleanup);
    assert!(!cgroup.exists(), "cgroup {} was not removed", cgroup.display());
}

/// The address bytes a capture header carries for `ip` (IPv4 in the first 4).
fn header_addr(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&v4.octets());
            a
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A cgroup's [`CaptureFilter`] entries: with only another port listed, nothing of the server's
/// connections is captured (their packets are counted as filtered); with its port listed at
/// 50 %, exactly the connections [`connection_sampled`] picks, both directions; without the
/// cgroup's own entry, everything.
fn check_filters(
    name: &str,
    ip: IpAddr,
    port: u16,
    cgroup_id: u64,
    probes: &mut CaptureProbes,
    ring: &mut palisade_node_agent::capture::CaptureRing,
) {
    let path = "/palisade-filter-probe";
    let own = CaptureFilterKey::new(cgroup_id, CAPTURE_FILTER_CGROUP_ENTRY);
    let entry = |sampling_percent, every_port| CaptureFilter {
        sampling_percent,
        every_port,
        sampling_seed: 0x5eed,
        ..Default::default()
    };
    // Only another port is listed.
    let other_port = CaptureFilterKey::new(cgroup_id, port.wrapping_add(1));
    probes.set_filter(other_port, Some(&entry(100, 0))).unwrap();
    probes.set_filter(own, Some(&entry(100, 0))).unwrap();
    let before = probes.counters().unwrap();
    for _ in 0..3 {
        let (_, resp) = http_get(ip, port, path);
        assert!(resp.starts_with(b"HTTP/1.0 404"));
    }
    let recs = drain_until(ring, Duration::from_millis(300), |_| false);
    let after = probes.counters().unwrap();
    assert!(
        recs.is_empty(),
        "another port's filter let {} records through",
        recs.len()
    );
    // Each exchange: the request and at least one response packet.
    let filtered = after.packets_filtered - before.packets_filtered;
    assert!(filtered >= 6, "{filtered} packets counted as filtered");
    assert_eq!(after.records_emitted, before.records_emitted);

    // The server's port is listed, with a 50 % sample.
    let filter = entry(50, 0);
    probes
        .set_filter(CaptureFilterKey::new(cgroup_id, port), Some(&filter))
        .unwrap();
    let client = header_addr(ip);
    let mut expected = BTreeMap::new();
    for _ in 0..40 {
        let (client_port, resp) = http_get(ip, port, path);
        assert!(resp.starts_with(b"HTTP/1.0 404"));
        let sampled = connection_sampled(filter.sampling_seed, &client, client_port, port, 50);
        expected.insert(client_port, sampled);
    }
    let want: Vec<u16> = expected.iter().filter(|(_, s)| **s).map(|(p, _)| *p).collect();
    assert!(
        (5..=35).contains(&want.len()),
        "{} of 40 connections in a 50 % sample",
        want.len()
    );
    let recs = drain_until(ring, Duration::from_secs(5), |recs| {
        want.iter().all(|p| {
            recs.iter()
                .any(|r| r.header.direction == DIRECTION_EGRESS && r.header.dest_port == *p)
        })
    });
    let client_port = |r: &Rec| {
        if r.header.direction == DIRECTION_INGRESS {
            r.header.source_port
        } else {
            r.header.dest_port
        }
    };
    for direction in [DIRECTION_INGRESS, DIRECTION_EGRESS] {
        let mut seen: Vec<u16> = recs
            .iter()
            .filter(|r| r.header.direction == direction && r.header.captured_len > 0)
            .map(client_port)
            .collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen, want, "direction {direction}: the connections captured");
    }
    println!(
        "[{name}] filters: another port captured 0 records ({filtered} packets filtered); a 50 % sample captured {} of 40 connections, as predicted",
        want.len()
    );

    // The cgroup's own entry removed: everything is captured again (whatever else is left).
    probes.set_filter(own, None).unwrap();
    probes.set_filter(own, None).unwrap(); // already gone: no error
    let (_, resp) = http_get(ip, port, path);
    assert!(resp.starts_with(b"HTTP/1.0 404"));
    let recs = drain_until(ring, Duration::from_secs(3), |recs| {
        recs.iter()
            .any(|r| r.data.starts_with(b"GET /palisade-filter-probe"))
    });
    assert!(
        recs.iter()
            .any(|r| r.data.starts_with(b"GET /palisade-filter-probe")),
        "nothing captured once the filter was removed"
    );
    // The rest of that connection (response, FINs), so that the next step starts from an
    // empty ring.
    drain_until(ring, Duration::from_millis(500), |_| false);
}

/// Not a test of its own: run by `load_fails_clearly_without_capabilities` in a process without
/// capabilities (hence ignored in normal runs).
#[test]
#[ignore = "helper run by load_fails_clearly_without_capabilities in a process without capabilities"]
fn no_caps_child() {
    assert!(
        std::env::var_os(CHILD_ENV).is_some(),
        "run only by load_fails_clearly_without_capabilities"
    );
    match CaptureProbes::load() {
        Ok(_) => {
            println!("CHILD: load unexpectedly succeeded");
            std::process::exit(3);
        }
        Err(e) => {
            println!("CHILD-ERROR: {e}");
        }
    }
}

#[test]
fn load_fails_clearly_without_capabilities() {
    if !is_root() {
        println!("SKIPPED: load_fails_clearly_without_capabilities: needs root to drop capabilities from");
        return;
    }
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let Ok(setpriv) = which("setpriv") else {
        println!("SKIPPED: load_fails_clearly_without_capabilities: setpriv (util-linux) not found");
        return;
    };
    let exe = std::env::current_exe().unwrap();
    // Root keeps no capabilities across exec when the bounding and inheritable sets are empty.
    let out = Command::new(setpriv)
        .args([
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--",
        ])
        .arg(&exe)
        .args([
            "--exact",
            "no_caps_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout
        .lines()
        .find(|l| l.contains("CHILD-ERROR:") || l.contains("CHILD:"))
        .unwrap_or_else(|| {
            panic!(
                "child printed no result: status {:?}\n{stdout}\n{stderr}",
                out.status
            )
        });
    let line = &line[line.find("CHILD").unwrap_or(0)..];
    println!("without capabilities: {line}");
    assert!(out.status.success(), "child failed: {stdout}\n{stderr}");
    assert!(line.contains("CHILD-ERROR:"), "{line}");
    assert!(line.contains("Operation not permitted (os error 1)"), "{line}");
    assert!(line.contains("CAP_BPF"), "{line}");
}

#[test]
fn node_features_report() {
    if !is_root() {
        println!("SKIPPED: node_features_report: probing program types needs root");
        return;
    }
    let f = probe_node_features(Path::new("/sys/fs/bpf"), true);
    for p in &f.probes {
        println!("feature {:<12} {:<5} {}", p.name, p.available, p.reason);
    }
    println!("cgroup2_root={:?} bpffs={:?}", f.cgroup2_root, f.bpffs);
    assert!(f.cgroup2_root.is_some());
    assert!(f.is_available("cgroup_skb"), "{:?}", f.get("cgroup_skb"));
    assert!(f.is_available("ring_buffer"));
    assert!(f.bpffs.is_some(), "{:?}", f.get("bpffs"));
    let missing: Vec<&str> = f.missing().map(|p| p.name.as_str()).collect();
    println!("missing: {missing:?}");
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

/// The kernel's verifier walks every path of a program, up to 1,000,000 instructions; a program
/// over that is refused at load, which would leave a node without capture. The capture and TLS
/// programs must stay far enough below the limit that a different compiler or kernel does not push them
/// over: at most half of it.
#[test]
fn capture_programs_verify_well_under_the_kernel_limit() {
    if !is_root() {
        println!("SKIPPED: capture_programs_verify_well_under_the_kernel_limit: loading programs needs root");
        return;
    }
    const VERIFIER_LIMIT: u32 = 1_000_000;
    let newest_before = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| p.id())
        .max()
        .unwrap_or(0);
    let _probes = CaptureProbes::load().expect("loading the capture programs");
    let _tls =
        palisade_node_agent::capture::tls::TlsProbes::load_standalone().expect("loading the TLS programs");
    let mut checked = 0;
    for info in aya::programs::loaded_programs().filter_map(Result::ok) {
        let name = info.name_as_str().unwrap_or_default().to_string();
        // The kernel keeps 15 bytes of a name: "palisade_captur", "palisade_enforc" and
        // "palisade_tls_*".
        if info.id() <= newest_before || !name.starts_with("palisade_") {
            continue;
        }
        let verified = info
            .verified_instruction_count()
            .expect("the kernel reports verified instructions (5.16+)");
        println!(
            "{name} (id {}): the verifier processed {verified} instructions",
            info.id()
        );
        assert!(
            verified <= VERIFIER_LIMIT / 2,
            "{name}: {verified} instructions verified, more than half the kernel's limit"
        );
        checked += 1;
    }
    assert!(
        checked >= 11,
        "found {checked} of the 11 programs just loaded (4 cgroup_skb, 7 TLS uprobes)"
    );
}
