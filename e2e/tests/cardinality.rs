//! Attacker-controlled cardinality: 100,000 requests to distinct random paths (letters only, so
//! templating cannot fold them) keep the agent's memory bounded. The endpoint inventory stops at
//! the monitor's `maxEndpoints` and counts the rest as overflow, the Prometheus label sets stop at
//! their cap, the stateful detectors stay within their tables, and the agent's resident memory
//! grows by less than a fixed bound.

use anyhow::{ensure, Context, Result};
use palisade_e2e::palisade::{http_get_body, wait_for_object, Stack};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const REQUESTS: u64 = 100_000;
const MAX_ENDPOINTS: u64 = 200;
/// Growth of the agent's resident memory allowed over the whole flood.
const RSS_BOUND_KIB: u64 = 64 * 1024;

const MANIFESTS: &str = r#"
apiVersion: palisade.dev/v1alpha1
kind: ApiMonitor
metadata: {name: demo-api, namespace: demo}
spec:
  selector: {matchLabels: {app: demo-api}}
  ports: [8080]
  discovery: {maxEndpoints: 200}
---
apiVersion: palisade.dev/v1alpha1
kind: ApiPolicy
metadata: {name: stateful, namespace: demo}
spec:
  rules:
    - {name: sqli, detector: sqlInjection}
    - {name: enumeration, detector: bola}
    - {name: missing-auth, detector: missingAuth}
    - {name: flood, detector: rateAbuse, params: {perSource: "100000000", perEndpoint: "100000000"}}
"#;

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS in /proc/PID/status")
}

/// A random path of letters only: `/abcdefgh/ijklmn`.
fn random_path(state: &mut u64) -> String {
    let mut word = |len: usize| -> String {
        (0..len)
            .map(|_| {
                *state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (b'a' + ((*state >> 33) % 26) as u8) as char
            })
            .collect()
    };
    format!("/{}/{}", word(8), word(6))
}

/// Sends `count` GETs to random paths over one keep-alive connection, pipelined in batches;
/// returns the number of responses read.
fn flood(addr: SocketAddr, count: u64, seed: u64) -> Result<u64> {
    // Below the agent's cap on requests awaiting a response per connection (32).
    const BATCH: u64 = 16;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut state = seed;
    let mut answered = 0;
    let mut buf = vec![0u8; 1 << 16];
    while answered < count {
        let n = BATCH.min(count - answered);
        let mut batch = String::new();
        for _ in 0..n {
            batch.push_str(&format!(
                "GET {} HTTP/1.1\r\nHost: demo\r\n\r\n",
                random_path(&mut state)
            ));
        }
        stream.write_all(batch.as_bytes())?;
        // Every response of the demo API here is a 404 with a small JSON body.
        let mut seen = 0;
        let mut tail = Vec::new();
        while seen < n {
            let read = stream.read(&mut buf)?;
            ensure!(read > 0, "the server closed the connection");
            tail.extend_from_slice(&buf[..read]);
            let text = String::from_utf8_lossy(&tail);
            seen = text.matches("HTTP/1.1 404").count() as u64;
        }
        answered += n;
    }
    Ok(answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_random_paths_keep_agent_memory_bounded() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let stack = Stack::start("cardinality-node").await?;
    let cp = &stack.cp;
    cp.kubectl_ok(&["create", "namespace", "demo"])?;
    let pod = stack.start_demo_pod("demo-api-0").await?;
    cp.apply_yaml(MANIFESTS)?;
    palisade_e2e::palisade::wait_policy_ready(cp, "demo", "stateful").await?;

    // Warm up (allocator arenas, first label sets, the connection tables), then measure.
    let addr = pod.addr(8080);
    flood(addr, 2_000, 1)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(stack.agent.pid())?;

    let threads: Vec<_> = (0..4u64)
        .map(|t| std::thread::spawn(move || flood(addr, REQUESTS / 4, 1000 + t)))
        .collect();
    let mut sent = 0;
    for t in threads {
        sent += t.join().map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
    }
    assert_eq!(sent, REQUESTS);

    // Every request was counted: one each for the first MAX_ENDPOINTS distinct paths, the rest
    // as overflow, exactly (the status lists only the busiest endpoints, so read the totals).
    let warm_up = 2_000;
    let (endpoints, overflow) = wait_for_object(
        cp,
        "all requests counted",
        ("apimonitor", "demo", "demo-api"),
        Duration::from_secs(120),
        |m| {
            let e = m.pointer("/status/endpoints")?;
            let overflow = e["overflowRequests"].as_u64()?;
            (overflow >= REQUESTS + warm_up - MAX_ENDPOINTS)
                .then(|| (e["total"].as_u64().unwrap_or(0), overflow))
        },
    )
    .await?;
    let after = rss_kib(stack.agent.pid())?;
    println!(
        "agent RSS {before} KiB -> {after} KiB after {REQUESTS} random paths; endpoints {endpoints}, overflow {overflow}"
    );
    assert_eq!(endpoints, MAX_ENDPOINTS, "the inventory stops at its cap");
    assert_eq!(
        overflow,
        REQUESTS + warm_up - MAX_ENDPOINTS,
        "each request counted once"
    );
    assert!(
        after.saturating_sub(before) <= RSS_BOUND_KIB,
        "agent memory grew by {} KiB (bound {RSS_BOUND_KIB} KiB)",
        after.saturating_sub(before)
    );
    let metrics = http_get_body(stack.agent_metrics, "/metrics")?;
    let label_sets = metrics
        .lines()
        .filter(|l| l.starts_with("palisade_agent_http_requests_total{"))
        .count();
    assert!(
        label_sets <= 1001,
        "request metric label sets over the cap: {label_sets}"
    );
    ensure!(
        metrics.contains(r#"path="{overflow}""#),
        "overflowed requests are counted under one label"
    );
    Ok(())
}
