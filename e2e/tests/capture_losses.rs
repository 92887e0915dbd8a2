//! Losses are counted exactly: with the agent draining its ring buffer only every 4 s (however
//! much each drain finds), a burst of requests overflows the 32 MiB ring. Every record the
//! kernel emitted is drained, every record it could not deliver is counted as lost, and the loss
//! shows in status and as a finding.

use anyhow::{Context, Result};
use palisade_e2e::palisade::{get_json, http_get_body, start_agent_with_metrics, wait_for_object, Operator};
use palisade_e2e::{ControlPlane, FakeKubelet, PodLaunch};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn metric(text: &str, prefix: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
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
    // ring). The 32 MiB ring holds 8,192 full records; between two drains (4 s) even a loaded
    // CI machine, which managed 1,100 such requests a second with a 1 KiB header, writes several
    // times that.
    let addr = pod.addr(8080);
    let pad = "p".repeat(24 * 1024);
    let pad = pad.as_str();
    let deadline = Instant::now() + Duration::from_secs(8);
    let sent: u64 = std::thread::scope(|s| {
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
        workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
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
    let drained = metric(&text, "palisade_agent_records_drained_total").context("drained")?;
    let malformed = metric(
        &text,
        r#"palisade_agent_messages_dropped_total{reason="malformed_record"}"#,
    )
    .unwrap_or(0);
    println!("kernel emitted {emitted}, lost {kernel_lost}; agent drained {drained} (+{malformed} malformed); status lost {lost}, finding count {finding_count}");
    assert!(kernel_lost > 0, "the burst must overflow the ring: {text}");
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
