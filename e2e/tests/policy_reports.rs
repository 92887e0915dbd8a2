//! Findings become a Kubernetes Policy WG report (`wgpolicyk8s.io/v1alpha2` PolicyReport) on a
//! real API server, and the operator does without one when the CRD is missing:
//! - one report per ApiPolicy, owned by it, with one `fail` result per (rule, pod), exact counts
//!   and an exact summary, as `kubectl get policyreport -A` shows it; counts carry over an
//!   operator restart; at most 100 results, the evicted ones counted;
//! - without the CRD: the policy's status still counts every finding, the log says once that no
//!   reports are written, and a CRD installed later is picked up without a restart.
//!
//! Findings come from a stand-in agent over the operator's gRPC service (the agent's own
//! detection is covered by the other suites), which keeps these tests to a control plane and the
//! operator: no eBPF, no pods.

use anyhow::Result;
use palisade_api::agent::agent_control_client::AgentControlClient;
use palisade_api::agent::{self, AgentReport};
use palisade_e2e::palisade::{get_json, wait_for, wait_for_object, Operator};
use palisade_e2e::{workspace_root, ControlPlane};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(45);
const NODE: &str = "report-node";
const REPORT: (&str, &str, &str) = ("policyreport", "demo", "palisade-demo-api-guard");

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn finding(rule: &str, pod: &str, count: u64, last_seen: i64) -> agent::Finding {
    let (detector, severity) = match rule {
        "path-traversal" => ("pathTraversal", "high"),
        _ => ("", "medium"),
    };
    agent::Finding {
        rule: rule.into(),
        detector: detector.into(),
        severity: severity.into(),
        count,
        source: "203.0.113.7".into(),
        pod_namespace: "demo".into(),
        pod_name: pod.into(),
        method: "GET".into(),
        path: "/files/../../etc/passwd".into(),
        evidence: "path: /files/../../etc/passwd".into(),
        first_seen_unix_ms: last_seen - 10,
        last_seen_unix_ms: last_seen,
        traffic: "north-south".into(),
    }
}

/// Sends findings for `demo/demo-api-guard` as the agent of [`NODE`] would.
async fn report(operator: &Operator, findings: Vec<agent::Finding>) -> Result<()> {
    let mut client = AgentControlClient::connect(operator.url()).await?;
    client
        .report(AgentReport {
            node_name: NODE.into(),
            agent_instance: "stand-in".into(),
            policies: vec![agent::PolicyReport {
                policy: Some(agent::ObjectRef {
                    namespace: "demo".into(),
                    name: "demo-api-guard".into(),
                    generation: 1,
                }),
                findings,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// `(rule, pod, count)` of each result, in the report's order.
fn counts(r: &serde_json::Value) -> Vec<(String, String, u64)> {
    r["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            (
                x["rule"].as_str().unwrap_or_default().to_string(),
                x["resources"][0]["name"].as_str().unwrap_or_default().to_string(),
                x["properties"]["count"]
                    .as_str()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0),
            )
        })
        .collect()
}

fn triples(v: &[(&str, &str, u64)]) -> Vec<(String, String, u64)> {
    v.iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), *c))
        .collect()
}

/// Waits until the report's results are exactly `expected`.
async fn wait_for_results(
    cp: &ControlPlane,
    what: &str,
    expected: &[(&str, &str, u64)],
) -> Result<serde_json::Value> {
    let expected = triples(expected);
    wait_for_object(cp, what, REPORT, WAIT, |r| {
        (counts(r) == expected).then(|| r.clone())
    })
    .await
}

fn log_of(operator: &Operator) -> String {
    std::fs::read_to_string(operator.process.log_path()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_become_a_policy_report_with_exact_counts() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let cp = ControlPlane::start_with_palisade_crds().await?;
    cp.apply_crds(&workspace_root().join("crds/optional")).await?;
    cp.apply_samples()?;
    let operator = Operator::start(&cp, "operator").await?;
    let t0 = now_ms();
    report(
        &operator,
        vec![
            finding("path-traversal", "demo-api-0", 3, t0),
            finding("admin-probe", "demo-api-0", 2, t0 + 1),
            finding("path-traversal", "demo-api-1", 1, t0 + 2),
        ],
    )
    .await?;
    let r = wait_for_results(
        &cp,
        "three results",
        &[
            ("admin-probe", "demo-api-0", 2),
            ("path-traversal", "demo-api-0", 3),
            ("path-traversal", "demo-api-1", 1),
        ],
    )
    .await?;
    assert_eq!(
        r["summary"],
        serde_json::json!({"pass": 0, "fail": 3, "warn": 0, "error": 0, "skip": 0})
    );
    let traversal = &r["results"][1];
    assert_eq!(traversal["source"], "palisade");
    assert_eq!(traversal["policy"], "demo-api-guard");
    assert_eq!(traversal["category"], "pathTraversal");
    assert_eq!(traversal["result"], "fail");
    assert_eq!(traversal["severity"], "high");
    assert_eq!(traversal["scored"], true);
    assert_eq!(traversal["timestamp"]["seconds"], t0.div_euclid(1000));
    assert_eq!(
        traversal["resources"][0],
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "namespace": "demo", "name": "demo-api-0"})
    );
    assert_eq!(
        traversal["properties"]["evidence"],
        "path: /files/../../etc/passwd"
    );
    assert_eq!(traversal["properties"]["mode"], "audit");
    assert_eq!(r["results"][0]["severity"], "medium");
    assert_eq!(r["results"][0]["category"], "custom");
    let policy = get_json(&cp, "apipolicy", "demo", "demo-api-guard")?;
    let owner = &r["metadata"]["ownerReferences"][0];
    assert_eq!(
        (
            &owner["kind"],
            &owner["name"],
            &owner["uid"],
            &owner["controller"]
        ),
        (
            &serde_json::json!("ApiPolicy"),
            &serde_json::json!("demo-api-guard"),
            &policy["metadata"]["uid"],
            &serde_json::json!(true)
        ),
        "owned by the policy: garbage-collected with it"
    );
    let table = cp.kubectl_ok(&["get", "policyreport", "-A"])?;
    println!("$ kubectl get policyreport -A\n{table}");
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.contains("palisade-demo-api-guard"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    assert_eq!(
        row.get(..7),
        Some(&["demo", "palisade-demo-api-guard", "0", "3", "0", "0", "0"][..]),
        "{table}"
    );

    // More findings add up on the same result.
    report(
        &operator,
        vec![finding("path-traversal", "demo-api-0", 4, t0 + 3)],
    )
    .await?;
    wait_for_results(
        &cp,
        "7 path traversals on demo-api-0",
        &[
            ("admin-probe", "demo-api-0", 2),
            ("path-traversal", "demo-api-0", 7),
            ("path-traversal", "demo-api-1", 1),
        ],
    )
    .await?;

    // An operator restart: the new one reads the report back and adds on top.
    let grpc = operator.grpc;
    let mut operator = operator;
    operator.process.kill();
    let operator = Operator::start_on(&cp, "operator-2", grpc).await?;
    report(
        &operator,
        vec![finding("path-traversal", "demo-api-0", 1, t0 + 4)],
    )
    .await?;
    wait_for_results(
        &cp,
        "8 path traversals after the restart",
        &[
            ("admin-probe", "demo-api-0", 2),
            ("path-traversal", "demo-api-0", 8),
            ("path-traversal", "demo-api-1", 1),
        ],
    )
    .await?;

    // A flood of pods: 105 more results, the cap is 100; the least recently seen go first.
    let flood: Vec<_> = (0..105)
        .map(|i| finding("path-traversal", &format!("flood-{i:03}"), 1, t0 + 100 + i))
        .collect();
    report(&operator, flood).await?;
    let r = wait_for_object(&cp, "the flood", REPORT, WAIT, |r| {
        (r.pointer("/metadata/annotations/palisade.dev~1results-evicted")? == "8").then(|| r.clone())
    })
    .await?;
    let results = counts(&r);
    assert_eq!(results.len(), 100);
    assert_eq!(r["summary"]["fail"], 100);
    assert!(
        results.iter().all(|(_, pod, _)| pod.starts_with("flood-")),
        "the 3 older results and the 5 oldest of the flood were dropped"
    );
    assert!(!results.iter().any(|(_, pod, _)| pod == "flood-004"));
    assert!(results.iter().any(|(_, pod, _)| pod == "flood-005"));
    let log = log_of(&operator);
    assert!(
        log.contains("the PolicyReport CRD (wgpolicyk8s.io/v1alpha2) is installed"),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_crd_the_operator_works_and_says_so_once() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let cp = ControlPlane::start_with_palisade_crds().await?;
    cp.apply_samples()?;
    let grpc = ([127, 0, 0, 1], palisade_e2e::process::free_port()?).into();
    let args = ["--policy-report-probe-interval-s".to_string(), "1".to_string()];
    let operator = Operator::start_with_args(&cp, "operator", grpc, &args).await?;
    let t0 = now_ms();
    report(&operator, vec![finding("path-traversal", "demo-api-0", 3, t0)]).await?;
    wait_for_object(
        &cp,
        "3 findings in status",
        ("apipolicy", "demo", "demo-api-guard"),
        WAIT,
        |p| (p.pointer("/status/findings/total")?.as_u64()? == 3).then_some(()),
    )
    .await?;
    // Several probes later (one a second while reconciles come), still one line.
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        report(
            &operator,
            vec![finding("path-traversal", "demo-api-0", 1, t0 + 1 + i)],
        )
        .await?;
    }
    let missing =
        "the PolicyReport CRD (wgpolicyk8s.io/v1alpha2) is not installed: no PolicyReports are written";
    let log = log_of(&operator);
    assert_eq!(log.matches(missing).count(), 1, "{log}");
    assert!(!log.contains("PolicyReport not written"), "{log}");
    assert!(!log.contains("reconcile failed"), "{log}");

    // Installed later (Kyverno, say): picked up without a restart, with what came before.
    cp.apply_crds(&workspace_root().join("crds/optional")).await?;
    // Past the probe interval: the next reconcile asks discovery again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    report(
        &operator,
        vec![finding("path-traversal", "demo-api-0", 1, t0 + 10)],
    )
    .await?;
    wait_for_results(
        &cp,
        "the report, once the CRD exists",
        &[("path-traversal", "demo-api-0", 8)],
    )
    .await?;
    wait_for(WAIT, || {
        Ok(log_of(&operator)
            .contains("the PolicyReport CRD (wgpolicyk8s.io/v1alpha2) is installed")
            .then_some(()))
    })
    .await?;
    Ok(())
}
