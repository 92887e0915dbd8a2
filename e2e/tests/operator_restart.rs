//! An operator restart loses no records: counts in status carry over, and new findings and
//! requests add on top. Agents reconnect by themselves.

use anyhow::Result;
use palisade_e2e::palisade::{http_request, wait_for_object, Operator, Stack};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(45);

fn total_findings(p: &serde_json::Value) -> Option<u64> {
    p.pointer("/status/findings/total")?.as_u64()
}

fn users_requests(m: &serde_json::Value) -> Option<u64> {
    let items = m.pointer("/status/endpoints/items")?.as_array()?;
    items.iter().find(|e| e["path"] == "/users/{id}")?["requests"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_survive_an_operator_restart() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let mut stack = Stack::start("restart-node").await?;
    stack.cp.apply_samples()?;
    let pod = stack.start_demo_pod("demo-api-0").await?;
    let cp = &stack.cp;
    wait_for_object(
        cp,
        "capture attached",
        ("apimonitor", "demo", "demo-api"),
        WAIT,
        |m| (m.pointer("/status/nodes/details/0/probesAttached")?.as_u64()? == 2).then_some(()),
    )
    .await?;
    palisade_e2e::palisade::wait_policy_ready(cp, "demo", "demo-api-guard").await?;
    let addr = pod.addr(8080);
    for i in 0..3 {
        http_request(addr, "GET", &format!("/files/..%2f..%2fsecret{i}"), &[], "")?;
        http_request(addr, "GET", &format!("/users/{}", i + 1), &[], "")?;
    }
    wait_for_object(
        cp,
        "3 findings",
        ("apipolicy", "demo", "demo-api-guard"),
        WAIT,
        |p| (total_findings(p)? == 3).then_some(()),
    )
    .await?;
    wait_for_object(
        cp,
        "3 user requests",
        ("apimonitor", "demo", "demo-api"),
        WAIT,
        |m| (users_requests(m)? == 3).then_some(()),
    )
    .await?;

    // Replace the operator (same gRPC address, as a Service would give).
    let grpc = stack.operator.grpc;
    stack.operator.process.kill();
    stack.operator = Operator::start_on(&stack.cp, "operator-2", grpc).await?;
    let cp = &stack.cp;
    for i in 0..2 {
        http_request(addr, "GET", &format!("/files/..%2f..%2fagain{i}"), &[], "")?;
        http_request(addr, "GET", &format!("/users/{}", i + 10), &[], "")?;
    }
    let total = wait_for_object(
        cp,
        "5 findings after the restart",
        ("apipolicy", "demo", "demo-api-guard"),
        WAIT,
        |p| total_findings(p).filter(|t| *t >= 5),
    )
    .await?;
    assert_eq!(
        total, 5,
        "3 from before the restart + 2 after, none lost or doubled"
    );
    let users = wait_for_object(
        cp,
        "5 user requests",
        ("apimonitor", "demo", "demo-api"),
        WAIT,
        |m| users_requests(m).filter(|n| *n >= 5),
    )
    .await?;
    assert_eq!(users, 5);
    // Nothing doubles later either.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = palisade_e2e::palisade::get_json(cp, "apipolicy", "demo", "demo-api-guard")?;
    assert_eq!(total_findings(&p), Some(5));
    Ok(())
}
