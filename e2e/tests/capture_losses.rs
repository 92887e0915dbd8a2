//! Losses are counted exactly: with the agent draining its ring buffers only every 4 s (however
//! much each drain finds), a burst of requests overflows them (16 MiB per CPU on a 2-CPU
//! machine, then the shared 16 MiB ring they overflow into). Every record the kernel emitted is
//! drained, every record it could not deliver is counted as lost, the loss shows in status and
//! as a finding, and the agent's ring fill gauge showed a full ring.

use anyhow::{Context, Result};
use palisade_e2e::palisade::{get_json, http_get_body, start_agent_with_metrics, wait_for_object, Operator};
use palisade_e2e::{ControlPlane, FakeKubelet, PodLaunch};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The value of the first metric line starting with `prefix`.
fn metric_as<T: std::str::FromStr>(text: &str, prefix: &str) -> Option<T> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A counter's value.
fn metric(text: &str, prefix: &str) -> Option<u64> {
    metric_as(text, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losses_under_forced_overload_are_counted_exactly() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let cp = ControlPlane::start_with_palisade_crds().await?;
    let client = cp.client().await?;
    let node = "overload-node";
    let kubelet = FakeKubelet::start(client.clone(), node).await?;
    let operator = Operator::start(&cp, "operator").await?;
    let (mut agent, metrics) = start_agent_with_metrics(
        &cp,
        &operator,
        node,
        "agent",
        &[],
        &["--drain-interval-ms", "4000", "--busy-drain-interval-ms", "4000"],
    )?;
    cp.apply_samples()?;
    let pod = kubelet
        .start_pod(PodLaunch {
            namespace: "demo".into(),
            name: "demo-api-0".into(),
            labels: BTreeMap::from([("app".to_string(), "demo-api".to_string())]),
            command: palisade_e2e::palisade::demo_api_command(8080),
            port: 8080,
        })
        .await?;
    wait_for_object(
        &cp,
        "capture attached",
        ("apimonitor", "demo", "demo-api"),
        Duration::from_secs(45),
        |m| (m.pointer("/status/nodes/details/0/probesAttached")?.as_u64()? == 2).then_some(()),
    )
    .await?;
    palisade_e2e::palisade::wait_policy_ready(&cp, "demo", "demo-api-guard").await?;

    // A bounded burst from 4 threads: at most 4 x 3000 requests or 8 s. Each request carries a
    // 24 KiB header, so it takes at least six full 4 KiB ring records (packets of up to 432
    // bytes take records of 512 bytes or less, and 12,000 small exchanges would fit in the
    // rings). The rings hold 12,288 full records together (48 MiB on up to 16 CPUs); between two
    // drains (4 s) even a loaded CI machine, which managed 1,100 such requests a second with a
    // 1 KiB header, writes several times that. Meanwhile, and for 5 s after (a drain comes at
    // most 4 s after a loss, and finds the ring still full), the fill gauge is sampled.
    let addr = pod.addr(8080);
    let pad = "p".repeat(24 * 1024);
    let pad = pad.as_str();
    let deadline = Instant::now() + Duration::from_secs(8);
    let burst_over = std::sync::atomic::AtomicBool::new(false);
    let mut fullest_seen = 0.0f64;
    let sent: u64 = std::thread::scope(|s| {
        let sampler = s.spawn(|| {
            let mut fullest = 0.0f64;
            let mut stop_at = None;
            loop {
                if let Ok(text) = http_get_body(metrics, "/metrics") {
                    let fill = metric_as::<f64>(&text, "palisade_agent_capture_ring_fill_ratio ");
                    fullest = fullest.max(fill.unwrap_or(0.0));
                }
                if burst_over.load(std::sync::atomic::Ordering::Relaxed) {
                    let stop = *stop_at.get_or_insert_with(|| Instant::now() + Duration::from_secs(5));
                    if Instant::now() >= stop {
                        return fullest;
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(move || {
                    let mut n = 0u64;
                    while n < 3000 && Instant::now() < deadline {
                        if palisade_e2e::palisade::http_request(
                            addr,
                            "GET",
                            "/users/1",
                            &[("X-Pad", pad)],
                            "",
                        )
                        .is_ok()
                        {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        let sent = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
        burst_over.store(true, std::sync::atomic::Ordering::Relaxed);
        fullest_seen = sampler.join().unwrap_or(0.0);
        sent
    });
    println!("sent {sent} requests");

    // After the burst, the agent drains what the ring held; counters settle.
    let (lost, finding_count) = wait_for_object(
        &cp,
        "losses in status and a capture-loss finding",
        ("apipolicy", "demo", "demo-api-guard"),
        Duration::from_secs(60),
        |p| {
            let by_rule = p.pointer("/status/findings/byRule")?.as_array()?;
            let count = by_rule.iter().find(|r| r["rule"] == "capture-loss")?["count"].as_u64()?;
            let lost = p.pointer("/status/nodes/recordsLost")?.as_u64()?;
            (lost > 0 && count == lost).then_some((lost, count))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let text = http_get_body(metrics, "/metrics")?;
    let emitted = metric(
        &text,
        r#"palisade_agent_capture_kernel_total{reason="records_emitted"}"#,
    )
    .context("emitted")?;
    let kernel_lost = metric(
        &text,
        r#"palisade_agent_capture_kernel_total{reason="records_lost"}"#,
    )
    .context("lost")?;
    let overflowed =
        metric(&text, "palisade_agent_capture_shared_ring_records_total").context("shared ring records")?;
    let drained = metric(&text, "palisade_agent_records_drained_total").context("drained")?;
    let malformed = metric(
        &text,
        r#"palisade_agent_messages_dropped_total{reason="malformed_record"}"#,
    )
    .unwrap_or(0);
    println!("kernel emitted {emitted} ({overflowed} into the shared ring), lost {kernel_lost}; agent drained {drained} (+{malformed} malformed); status lost {lost}, finding count {finding_count}");
    assert!(kernel_lost > 0, "the burst must overflow the ring: {text}");
    // A CPU's ring that is full sends its records to the shared ring before any is lost.
    assert!(overflowed > 0, "no record went to the shared ring first: {text}");
    let ring_bytes = metric(&text, "palisade_agent_capture_ring_bytes ").context("ring bytes")?;
    println!("rings {ring_bytes} bytes together; the fullest was {fullest_seen:.4} full at a drain");
    assert!(
        fullest_seen > 0.99,
        "a ring lost records, so a drain found it full: the gauge said {fullest_seen}"
    );
    assert_eq!(
        drained + malformed,
        emitted,
        "every record the kernel emitted was read"
    );
    let policy = get_json(&cp, "apipolicy", "demo", "demo-api-guard")?;
    let status_lost = policy
        .pointer("/status/nodes/recordsLost")
        .and_then(|v| v.as_u64());
    assert_eq!(
        status_lost,
        Some(kernel_lost),
        "status carries the kernel's exact count"
    );
    let finding_total = policy
        .pointer("/status/findings/byRule")
        .and_then(|v| v.as_array())
        .and_then(|rules| rules.iter().find(|r| r["rule"] == "capture-loss"))
        .and_then(|r| r["count"].as_u64());
    assert_eq!(
        finding_total,
        Some(kernel_lost),
        "the capture-loss finding counts every lost record"
    );
    let describe = cp.kubectl_ok(&["describe", "apipolicy", "demo-api-guard", "-n", "demo"])?;
    assert!(describe.contains("capture-loss"), "{describe}");
    agent.ensure_running()?;
    Ok(())
}
