//! The walking skeleton, end to end on a real kube-apiserver and the real kernel:
//! `kubectl apply` of the samples -> operator -> per-node config over gRPC -> agent attaches
//! cgroup_skb capture to the pod -> requests captured -> endpoints and a finding in status and a
//! Warning Event that `kubectl describe` shows -> selector change detaches -> delete cleans up.

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use palisade_e2e::palisade::{
    condition, demo_api_command, http_get_body, http_request, start_agent, wait_for, wait_for_object,
    Operator, Stack,
};
use palisade_e2e::{ControlPlane, FakeKubelet, PodLaunch};
use std::collections::BTreeMap;
use std::time::Duration;

const NODE: &str = "palisade-e2e-node";
const CANARY: &str = "CANARY-7f3a9c-SECRET";
const WAIT: Duration = Duration::from_secs(45);

async fn namespace(client: &kube::Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .context("creating namespace")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_capture_detect_describe_detach() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let stack = Stack::start(NODE).await?;
    let (cp, client, kubelet) = (&stack.cp, stack.client.clone(), &stack.kubelet);
    let mut agent = stack.agent;
    let operator = stack.operator;
    let metrics_addr = stack.agent_metrics;
    let grpc_wire = &stack.grpc_wire;

    // The samples create the demo namespace, the ApiMonitor and the ApiPolicy.
    let applied = cp.apply_samples()?;
    ensure!(
        applied.contains("apimonitor.palisade.dev/demo-api created"),
        "{applied}"
    );
    ensure!(
        applied.contains("apipolicy.palisade.dev/demo-api-guard created"),
        "{applied}"
    );

    let labels = BTreeMap::from([("app".to_string(), "demo-api".to_string())]);
    let pod = kubelet
        .start_pod(PodLaunch {
            namespace: "demo".into(),
            name: "demo-api-0".into(),
            labels,
            command: demo_api_command(8080),
            port: 8080,
        })
        .await?;

    // Ready, with both probes attached on this node.
    let probes = wait_for_object(
        cp,
        "ApiMonitor Ready with probes attached",
        ("apimonitor", "demo", "demo-api"),
        WAIT,
        |m| {
            let ready = condition(m, "Ready").is_some_and(|(s, _, _)| s == "True");
            let probes = m.pointer("/status/nodes/details/0/probesAttached")?.as_u64()?;
            (ready && m.pointer("/status/nodes/details/0/node")? == NODE).then_some(probes)
        },
    )
    .await?;
    palisade_e2e::palisade::wait_policy_ready(cp, "demo", "demo-api-guard").await?;
    assert_eq!(
        probes, 2,
        "ingress and egress capture attached to the pod's cgroup"
    );
    let table = cp.kubectl_ok(&["get", "apimonitors", "-n", "demo"])?;
    println!("{table}");
    assert!(table.contains("demo-api") && table.contains("True"), "{table}");

    // Traffic from outside the pod's network namespace.
    let addr = pod.addr(8080);
    for id in 1..=3 {
        assert_eq!(http_request(addr, "GET", &format!("/users/{id}"), &[], "")?, 200);
    }
    assert_eq!(http_request(addr, "GET", "/users/999", &[], "")?, 404);
    assert_eq!(
        http_request(
            addr,
            "POST",
            "/login",
            &[("Content-Type", "application/json")],
            r#"{"user":"alice","password":"nope"}"#
        )?,
        401
    );
    // The attack: path traversal, with secret canaries that must never leave the node.
    let auth = format!("Bearer {CANARY}");
    let attack = format!("/files/..%2f..%2f..%2fetc%2fpasswd?token={CANARY}");
    assert_eq!(
        http_request(
            addr,
            "GET",
            &attack,
            &[("Authorization", &auth), ("Cookie", &format!("s={CANARY}"))],
            ""
        )?,
        404
    );

    let endpoints = wait_for_object(
        cp,
        "the endpoint inventory",
        ("apimonitor", "demo", "demo-api"),
        WAIT,
        |m| {
            let items = m.pointer("/status/endpoints/items")?.as_array()?.clone();
            let users = items
                .iter()
                .find(|e| e["method"] == "GET" && e["path"] == "/users/{id}")?;
            (users["requests"].as_u64()? >= 4).then_some(items)
        },
    )
    .await?;
    let users = endpoints
        .iter()
        .find(|e| e["path"] == "/users/{id}")
        .context("users endpoint")?;
    let statuses: BTreeMap<u64, u64> = users["statuses"]
        .as_array()
        .context("statuses")?
        .iter()
        .filter_map(|s| Some((s["code"].as_u64()?, s["count"].as_u64()?)))
        .collect();
    assert_eq!(
        statuses,
        BTreeMap::from([(200, 3), (404, 1)]),
        "per-status counts are exact"
    );
    assert!(
        endpoints
            .iter()
            .any(|e| e["method"] == "POST" && e["path"] == "/login"),
        "{endpoints:?}"
    );

    let finding = wait_for_object(
        cp,
        "a path-traversal finding",
        ("apipolicy", "demo", "demo-api-guard"),
        WAIT,
        |p| {
            let recent = p.pointer("/status/findings/recent")?.as_array()?;
            recent.iter().find(|f| f["rule"] == "path-traversal").cloned()
        },
    )
    .await?;
    assert_eq!(finding["detector"], "pathTraversal");
    assert_eq!(finding["severity"], "high");
    assert_eq!(
        finding["source"],
        kubelet.bridge_ip().to_string(),
        "the source is the client outside the pod"
    );
    assert_eq!(finding["pod"], "demo/demo-api-0");
    assert_eq!(finding["node"], NODE);
    let evidence = finding["evidence"].as_str().unwrap_or_default();
    assert!(
        evidence.contains("../../../etc/passwd"),
        "decoded evidence: {evidence}"
    );
    assert_eq!(
        finding["traffic"], "north-south",
        "the test process is outside the pod network"
    );

    // East-west: another pod attacks the demo API; the finding names the source pod.
    let client_pod = kubelet
        .start_pod(PodLaunch {
            namespace: "demo".into(),
            name: "client-0".into(),
            labels: BTreeMap::from([("app".to_string(), "client".to_string())]),
            command: demo_api_command(9090),
            port: 9090,
        })
        .await?;
    let script = format!(
        "import http.client; c = http.client.HTTPConnection('{}', 8080, timeout=5); \
         c.request('GET', '/files/%2e%2e/%2e%2e/etc/hosts'); print(c.getresponse().status)",
        pod.ip
    );
    let out = kubelet.exec_in_pod_netns(&client_pod, &["timeout", "10", "python3", "-c", &script]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "404", "{out:?}");
    let east_west = wait_for_object(
        cp,
        "an east-west finding",
        ("apipolicy", "demo", "demo-api-guard"),
        WAIT,
        |p| {
            let recent = p.pointer("/status/findings/recent")?.as_array()?;
            recent.iter().find(|f| f["traffic"] == "east-west").cloned()
        },
    )
    .await?;
    assert_eq!(east_west["sourcePod"], "demo/client-0", "{east_west}");
    assert_eq!(east_west["source"], client_pod.ip.to_string());

    // The Warning Event, and what a person sees with the real kubectl.
    let describe = wait_for(WAIT, || {
        let out = cp.kubectl_ok(&["describe", "apipolicy", "demo-api-guard", "-n", "demo"])?;
        Ok(out.contains("AttackDetected").then_some(out))
    })
    .await?;
    println!("{describe}");
    assert!(
        describe.contains("Warning") && describe.contains("rule path-traversal"),
        "{describe}"
    );
    assert!(
        describe.contains("path-traversal") && describe.contains("pathTraversal"),
        "{describe}"
    );
    let pod_events = cp.kubectl_ok(&[
        "get",
        "events",
        "-n",
        "demo",
        "--field-selector",
        "involvedObject.kind=Pod,reason=AttackDetected",
        "-o",
        "name",
    ])?;
    assert!(
        !pod_events.trim().is_empty(),
        "the Event is recorded on the pod too"
    );

    // Secrets never leave the node: not in status, Events, or anything the operator logged.
    // RED metrics per endpoint template, and the loss counters, on the agent's /metrics.
    let metrics = http_get_body(metrics_addr, "/metrics")?;
    let users_2xx = metrics
        .lines()
        .find(|l| {
            l.starts_with("palisade_agent_http_requests_total{")
                && l.contains(r#"path="/users/{id}""#)
                && l.contains(r#"code_class="2xx""#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(users_2xx, Some(3), "{metrics}");
    assert!(metrics.contains(r#"palisade_agent_findings_total{namespace="demo",policy="demo-api-guard",rule="path-traversal",severity="high"} 2"#), "two traversal attacks: {metrics}");
    assert!(
        metrics.contains(r#"palisade_agent_capture_kernel_total{reason="records_lost"} 0"#),
        "{metrics}"
    );
    let grpc = String::from_utf8_lossy(&grpc_wire.recorded()).into_owned();
    assert!(
        grpc.contains("path-traversal"),
        "the recorder saw the agent's reports"
    );
    let everything = [
        grpc,
        metrics.clone(),
        cp.kubectl_ok(&["get", "apipolicy,apimonitor,events", "-n", "demo", "-o", "yaml"])?,
        describe.clone(),
        std::fs::read_to_string(operator.process.log_path()).unwrap_or_default(),
        std::fs::read_to_string(agent.log_path()).unwrap_or_default(),
    ]
    .join("\n");
    assert!(!everything.contains(CANARY), "a secret canary leaked");
    assert!(
        everything.contains("token=[REDACTED]"),
        "the query secret shows as redacted"
    );

    // A selector that matches nothing detaches capture; status says so.
    cp.kubectl_ok(&[
        "patch",
        "apimonitor",
        "demo-api",
        "-n",
        "demo",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"selector":{"matchLabels":{"app":"nothing"}}}}"#,
    ])?;
    let (_, reason, message) = wait_for_object(
        cp,
        "NoWorkloadsMatched",
        ("apimonitor", "demo", "demo-api"),
        WAIT,
        |m| {
            let gen = m.pointer("/metadata/generation")?.as_i64()?;
            let cond = condition(m, "Ready")?;
            let observed = m.pointer("/status/observedGeneration")?.as_i64()?;
            (observed == gen && cond.1 == "NoWorkloadsMatched").then_some(cond)
        },
    )
    .await?;
    println!("after selector change: {reason}: {message}");
    wait_for(WAIT, || {
        Ok(agent_log(&agent).contains("capture detached").then_some(()))
    })
    .await?;
    let before = endpoint_requests(cp, "/users/{id}")?;
    assert_eq!(http_request(addr, "GET", "/users/5", &[], "")?, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        endpoint_requests(cp, "/users/{id}")?,
        before,
        "no capture after detach"
    );

    // Deleting cleans up; the agent keeps running throughout.
    cp.kubectl_ok(&["delete", "apipolicy", "demo-api-guard", "-n", "demo"])?;
    cp.kubectl_ok(&["delete", "apimonitor", "demo-api", "-n", "demo"])?;
    let gone = cp.kubectl_ok(&["get", "apimonitors,apipolicies", "-n", "demo", "-o", "name"])?;
    assert!(gone.trim().is_empty(), "{gone}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    agent
        .ensure_running()
        .context("the agent must survive every step")?;
    pod.stop(client.clone()).await?;
    Ok(())
}

fn agent_log(agent: &palisade_e2e::ChildGuard) -> String {
    std::fs::read_to_string(agent.log_path()).unwrap_or_default()
}

fn endpoint_requests(cp: &ControlPlane, path: &str) -> Result<u64> {
    let m = palisade_e2e::palisade::get_json(cp, "apimonitor", "demo", "demo-api")?;
    let items = m
        .pointer("/status/endpoints/items")
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    Ok(items
        .iter()
        .filter(|e| e["path"] == path)
        .filter_map(|e| e["requests"].as_u64())
        .sum())
}

/// An agent that the kernel refuses (no CAP_BPF / CAP_SYS_ADMIN: BPF_PROG_LOAD and the bpffs
/// mount fail with EPERM) keeps running and reports why, per node, in the ApiMonitor's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_programs_become_a_node_error_not_a_crash() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let cp = ControlPlane::start().await?;
    cp.apply_crds(&palisade_e2e::workspace_root().join("crds"))
        .await?;
    let client = cp.client().await?;
    let node = "restricted-node";
    let kubelet = FakeKubelet::start(client.clone(), node).await?;
    let operator = Operator::start(&cp, "operator").await?;
    // Same uid 0, but every capability dropped: what a node with BPF locked down looks like. Its
    // bpffs path is an empty directory that it cannot mount (no CAP_SYS_ADMIN).
    let bpffs = tempfile::tempdir()?;
    let bpffs_arg = bpffs.path().display().to_string();
    let mut agent = start_agent(
        &cp,
        &operator,
        node,
        "agent",
        &["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"],
        &["--bpffs", &bpffs_arg],
    )?;
    namespace(&client, "demo").await?;
    let labels = BTreeMap::from([("app".to_string(), "demo-api".to_string())]);
    let _pod = kubelet
        .start_pod(PodLaunch {
            namespace: "demo".into(),
            name: "demo-api-0".into(),
            labels,
            command: demo_api_command(8080),
            port: 8080,
        })
        .await?;
    cp.kubectl_ok(&[
        "apply",
        "-f",
        &palisade_e2e::workspace_root()
            .join("config/samples/apimonitor.yaml")
            .display()
            .to_string(),
    ])?;

    let (errors, degraded) = wait_for_object(
        &cp,
        "a Degraded condition naming the kernel's refusal",
        ("apimonitor", "demo", "demo-api"),
        WAIT,
        |m| {
            let degraded = condition(m, "Degraded")?;
            let errors = m.pointer("/status/nodes/details/0/errors")?.as_array()?.clone();
            // Until the agent connects, the node's error is that no agent is connected: wait
            // for the agent's own report, not for the first error.
            let reported = serde_json::to_string(&errors)
                .ok()?
                .contains("capture programs not loaded");
            (degraded.0 == "True" && reported).then_some((errors, degraded))
        },
    )
    .await?;
    println!("Degraded: {} {}\nerrors: {errors:?}", degraded.1, degraded.2);
    let text = serde_json::to_string(&errors)?;
    assert!(text.contains("capture programs not loaded"), "{text}");
    assert!(
        text.contains("Operation not permitted"),
        "the kernel's reason is kept: {text}"
    );
    assert!(text.contains("bpffs"), "the missing bpffs is reported: {text}");
    assert_eq!(degraded.1, "NodeErrors");
    assert!(
        degraded.2.contains(node),
        "the message names the node: {}",
        degraded.2
    );
    let ready = condition(
        &palisade_e2e::palisade::get_json(&cp, "apimonitor", "demo", "demo-api")?,
        "Ready",
    )
    .context("Ready")?;
    assert_eq!(ready.0, "False");
    agent
        .ensure_running()
        .context("the agent keeps running on a node that refuses it")?;
    Ok(())
}
