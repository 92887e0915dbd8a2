//! Request bodies are captured (with the monitor's limits), inspected by detectors and custom
//! rules, and their secrets (a JSON password, a card number) never leave the node: not in
//! status, Events, logs, metrics or the agent's gRPC traffic.

use anyhow::Result;
use palisade_e2e::palisade::{http_get_body, http_request, wait_for_object, Stack};
use std::time::Duration;

const PASSWORD: &str = "CANARY-PW-9c1f";
const CARD: &str = "4111 1111 1111 1111";
const WAIT: Duration = Duration::from_secs(45);

const MANIFESTS: &str = r#"
apiVersion: palisade.dev/v1alpha1
kind: ApiMonitor
metadata: {name: demo-api, namespace: demo}
spec:
  selector: {matchLabels: {app: demo-api}}
  ports: [8080]
  capture: {bodies: true, maxBodyBytes: 4096}
---
apiVersion: palisade.dev/v1alpha1
kind: ApiPolicy
metadata: {name: body-guard, namespace: demo}
spec:
  rules:
    - {name: sqli, detector: sqlInjection}
    - name: drop-table
      severity: critical
      match: {methods: [POST], body: {contains: "DROP TABLE"}}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_inspected_and_their_secrets_stay_on_the_node() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let stack = Stack::start("body-node").await?;
    let cp = &stack.cp;
    cp.kubectl_ok(&["create", "namespace", "demo"])?;
    let pod = stack.start_demo_pod("demo-api-0").await?;
    cp.apply_yaml(MANIFESTS)?;
    wait_for_object(
        cp,
        "capture attached",
        ("apimonitor", "demo", "demo-api"),
        WAIT,
        |m| (m.pointer("/status/nodes/details/0/probesAttached")?.as_u64()? == 2).then_some(()),
    )
    .await?;
    palisade_e2e::palisade::wait_policy_ready(cp, "demo", "body-guard").await?;

    let body = format!(
        r#"{{"user":"alice' OR '1'='1' --","password":"{PASSWORD}","card":"{CARD}","note":"x'; DROP TABLE users;--"}}"#
    );
    let status = http_request(
        pod.addr(8080),
        "POST",
        "/login",
        &[("Content-Type", "application/json")],
        &body,
    )?;
    assert_eq!(status, 401);

    let findings = wait_for_object(
        cp,
        "body findings",
        ("apipolicy", "demo", "body-guard"),
        WAIT,
        |p| {
            let recent = p.pointer("/status/findings/recent")?.as_array()?.clone();
            let rules: Vec<&str> = recent.iter().filter_map(|f| f["rule"].as_str()).collect();
            (rules.contains(&"sqli") && rules.contains(&"drop-table")).then_some(recent)
        },
    )
    .await?;
    let drop = findings
        .iter()
        .find(|f| f["rule"] == "drop-table")
        .map(|f| f["evidence"].to_string())
        .unwrap_or_default();
    println!("drop-table evidence: {drop}");
    assert!(
        drop.contains("DROP TABLE"),
        "the evidence comes from the body: {drop}"
    );
    let sqli = findings
        .iter()
        .find(|f| f["rule"] == "sqli")
        .map(|f| f["evidence"].to_string())
        .unwrap_or_default();
    println!("sqli evidence: {sqli}");
    assert!(sqli.contains("body"), "found in the body: {sqli}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let card_digits = CARD.replace(' ', "");
    let everything = [
        String::from_utf8_lossy(&stack.grpc_wire.recorded()).into_owned(),
        http_get_body(stack.agent_metrics, "/metrics")?,
        cp.kubectl_ok(&["get", "apipolicy,apimonitor,events", "-n", "demo", "-o", "yaml"])?,
        cp.kubectl_ok(&["describe", "apipolicy", "body-guard", "-n", "demo"])?,
        std::fs::read_to_string(stack.operator.process.log_path()).unwrap_or_default(),
        std::fs::read_to_string(stack.agent.log_path()).unwrap_or_default(),
    ]
    .join("\n");
    assert!(everything.contains("drop-table"), "the outputs were collected");
    for secret in [PASSWORD, CARD, card_digits.as_str()] {
        assert!(!everything.contains(secret), "{secret} left the node");
    }
    Ok(())
}
