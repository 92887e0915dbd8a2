//! An ApiMonitor's `ports` and `capture.samplingPercent`, applied in the kernel: a pod serving on
//! two ports, a monitor on one of them sampling half the connections, then all of them.

use anyhow::{Context, Result};
use palisade_e2e::palisade::{
    endpoint_requests, get_json, http_get_body, http_request, metric_sample, wait_for, wait_for_object, Stack,
};
use palisade_e2e::PodLaunch;
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(45);
const FILTERED: &str = r#"palisade_agent_capture_kernel_total{reason="packets_filtered"}"#;

fn monitor(sampling_percent: u32) -> String {
    format!(
        r#"
apiVersion: palisade.dev/v1alpha1
kind: ApiMonitor
metadata: {{name: sampled, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: two-ports}}}}
  ports: [8081]
  capture: {{samplingPercent: {sampling_percent}}}
"#
    )
}

/// Waits until the node applies the monitor's current generation with the pod captured.
async fn applied(stack: &Stack) -> Result<()> {
    wait_for_object(
        &stack.cp,
        "the node applies the monitor",
        ("apimonitor", "demo", "sampled"),
        WAIT,
        |m| {
            let generation = m.pointer("/metadata/generation")?;
            let node = m.pointer("/status/nodes/details/0")?;
            let applied = m.pointer("/status/observedGeneration")? == generation
                && node["inSync"] == true
                && node["probesAttached"] == 2;
            applied.then_some(())
        },
    )
    .await
}

fn requests(stack: &Stack, path: &str) -> u64 {
    get_json(&stack.cp, "apimonitor", "demo", "sampled")
        .ok()
        .and_then(|m| endpoint_requests(&m, "GET", path))
        .unwrap_or(0)
}

/// The endpoint's count once the agent's reports have caught up: non-zero and the same over 3 s
/// (the agent reports every 500 ms here).
async fn settled(stack: &Stack, path: &str) -> Result<u64> {
    let mut last = None;
    wait_for(WAIT, || {
        let now = requests(stack, path);
        let same = last == Some(now) && now > 0;
        last = Some(now);
        std::thread::sleep(Duration::from_secs(3));
        Ok(same.then_some(now))
    })
    .await
    .with_context(|| format!("{path}'s count did not settle: {last:?}"))
}

fn packets_filtered(stack: &Stack) -> f64 {
    http_get_body(stack.agent_metrics, "/metrics")
        .ok()
        .and_then(|m| metric_sample(&m, FILTERED))
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_ports_are_skipped_and_half_the_connections_sampled() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let stack = Stack::start("sampling-node").await?;
    stack.cp.kubectl_ok(&["create", "namespace", "demo"])?;
    let www = tempfile::tempdir()?;
    std::fs::write(www.path().join("a.txt"), "a\n")?;
    let dir = www.path().display().to_string();
    // Python's http.server answers HTTP/1.0: one connection per request.
    let pod = stack
        .kubelet
        .start_pod(PodLaunch {
            namespace: "demo".into(),
            name: "two-ports-0".into(),
            labels: BTreeMap::from([("app".to_string(), "two-ports".to_string())]),
            command: vec![
                "sh".into(),
                "-c".into(),
                format!(
                    "python3 -m http.server -d '{dir}' 8082 & exec python3 -m http.server -d '{dir}' 8081"
                ),
            ],
            port: 8081,
        })
        .await?;
    wait_for(WAIT, || {
        Ok(http_request(pod.addr(8082), "GET", "/a.txt", &[], "")
            .ok()
            .map(|_| ()))
    })
    .await?;
    let manifest = www.path().join("monitor.yaml");
    std::fs::write(&manifest, monitor(50))?;
    stack
        .cp
        .kubectl_ok(&["apply", "-f", &manifest.display().to_string()])?;
    applied(&stack).await?;

    // The other port: its packets are skipped in the kernel and counted; nothing is captured.
    let filtered_before = packets_filtered(&stack);
    for _ in 0..5 {
        assert_eq!(http_request(pod.addr(8082), "GET", "/other-port", &[], "")?, 404);
    }
    wait_for(WAIT, || {
        Ok((packets_filtered(&stack) >= filtered_before + 10.0).then_some(()))
    })
    .await
    .with_context(|| {
        format!(
            "packets_filtered: {filtered_before} before, {} now",
            packets_filtered(&stack)
        )
    })?;

    // The monitored port at 50 %: 60 connections, about half of them captured. (Each request
    // is counted or not as a whole: a binomial(60, 1/2) count, in 10..=50 but with a chance
    // of 1e-7 against.)
    for _ in 0..60 {
        assert_eq!(http_request(pod.addr(8081), "GET", "/a.txt", &[], "")?, 200);
    }
    let sampled = settled(&stack, "/a.txt").await?;
    println!("a 50 % sample captured {sampled} of 60 connections");
    assert!(
        (10..=50).contains(&sampled),
        "{sampled} of 60 connections captured at 50 %"
    );
    assert_eq!(
        requests(&stack, "/other-port"),
        0,
        "port 8082 is not the monitor's"
    );

    // Every connection, once the node applies samplingPercent: 100.
    std::fs::write(&manifest, monitor(100))?;
    stack
        .cp
        .kubectl_ok(&["apply", "-f", &manifest.display().to_string()])?;
    applied(&stack).await?;
    for _ in 0..20 {
        assert_eq!(http_request(pod.addr(8081), "GET", "/a.txt", &[], "")?, 200);
    }
    let all = settled(&stack, "/a.txt").await?;
    assert_eq!(all, sampled + 20, "at 100 % every connection is captured");
    Ok(())
}
