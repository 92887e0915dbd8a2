//! `palisade-demo`: a local control plane, the operator, a node agent, the demo API as a pod,
//! the sample ApiMonitor and ApiPolicy, benign and attack traffic, and what `kubectl` then shows;
//! then an ApiIsolation quarantines the demo API (an outsider pod is refused, the node's probes
//! still get through) and `kubectl delete` releases it.
//! Run it through `bash hack/demo.sh` (as root). `--keep` leaves everything running until Ctrl-C.

use anyhow::{Context, Result};
use palisade_e2e::palisade::{connect_from, demo_api_command, http_request, wait_for, Stack};
use palisade_e2e::{workspace_root, PodLaunch};
use std::time::Duration;

fn show(stack: &Stack, args: &[&str]) -> Result<()> {
    println!("\n$ kubectl {}", args.join(" "));
    let out = stack.cp.kubectl(args)?;
    print!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let keep = std::env::args().any(|a| a == "--keep");
    if !palisade_e2e::require_root() {
        anyhow::bail!("the demo needs root: it loads eBPF and makes cgroups and network namespaces");
    }
    println!("starting a local control plane, the Palisade operator and a node agent ...");
    let stack = Stack::start("demo-node").await?;
    let samples = workspace_root().join("config/samples");
    show(&stack, &["apply", "-f", &samples.display().to_string()])?;
    let pod = stack.start_demo_pod("demo-api-0").await?;
    println!(
        "\ndemo API pod demo/demo-api-0 runs at {} in its own cgroup and network namespace",
        pod.ip
    );

    // Wait for capture to be attached before sending traffic.
    for _ in 0..120 {
        let out = stack.cp.kubectl_ok(&[
            "get",
            "apimonitor",
            "demo-api",
            "-n",
            "demo",
            "-o",
            "jsonpath={.status.nodes.details[0].probesAttached}",
        ])?;
        if out.trim() == "2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let addr = pod.addr(8080);
    println!("\nbenign traffic: 20 requests to /users/<id>, /search, /login");
    for i in 1..=10 {
        http_request(addr, "GET", &format!("/users/{i}"), &[], "")?;
    }
    for q in ["user1", "user2", "nobody"] {
        http_request(addr, "GET", &format!("/search?q={q}"), &[], "")?;
    }
    for _ in 0..7 {
        http_request(
            addr,
            "POST",
            "/login",
            &[("Content-Type", "application/json")],
            r#"{"user":"alice","password":"wonderland"}"#,
        )?;
    }
    println!(
        "attack traffic: path traversal (encoded, with a secret token that must not leak) and admin probing"
    );
    for target in [
        "/files/../../etc/passwd",
        "/files/..%2f..%2f..%2fetc%2fshadow?token=s3cr3t-demo-token",
        "/files/%252e%252e%252f%252e%252e%252fetc%252fhosts",
        "/admin/config",
        "/.env",
    ] {
        http_request(
            addr,
            "GET",
            target,
            &[("Authorization", "Bearer demo-secret-bearer")],
            "",
        )?;
    }
    // Reports arrive every 500 ms; status writes are throttled to one per object per 500 ms.
    tokio::time::sleep(Duration::from_secs(4)).await;

    show(&stack, &["get", "apimonitors,apipolicies", "-n", "demo"])?;
    show(&stack, &["describe", "apipolicy", "demo-api-guard", "-n", "demo"])?;
    show(&stack, &["get", "apimonitor", "demo-api", "-n", "demo", "-o", "jsonpath={range .status.endpoints.items[*]}{.method}{\" \"}{.path}{\"  requests=\"}{.requests}{\"\\n\"}{end}"])?;
    show(
        &stack,
        &[
            "get",
            "events",
            "-n",
            "demo",
            "--field-selector",
            "reason=AttackDetected",
        ],
    )?;

    isolation(&stack, &pod).await?;

    if keep {
        println!(
            "\nKUBECONFIG={} — everything keeps running until Ctrl-C",
            stack.cp.kubeconfig_path().display()
        );
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    }
    pod.stop(stack.client.clone()).await?;
    Ok(())
}

/// Quarantine the demo API with the sample ApiIsolation, show what it does, release it.
async fn isolation(stack: &Stack, api: &palisade_e2e::RunningPod) -> Result<()> {
    println!(
        "\nisolation: a pod in another namespace reaches the demo API, then an ApiIsolation quarantines it"
    );
    stack.cp.kubectl_ok(&["create", "namespace", "outside"])?;
    let outsider = stack
        .kubelet
        .start_pod(PodLaunch {
            namespace: "outside".into(),
            name: "outsider-0".into(),
            labels: [("app".to_string(), "outsider".to_string())].into(),
            command: demo_api_command(9090),
            port: 9090,
        })
        .await?;
    println!(
        "outside/outsider-0 -> demo-api:8080: {}",
        connect_from(stack, &outsider, api, 8080)
    );
    let sample = workspace_root().join("config/samples/response/apiisolation.yaml");
    let sample = sample.display().to_string();
    show(stack, &["apply", "-f", &sample])?;
    wait_for(Duration::from_secs(30), || {
        let phase = stack.cp.kubectl_ok(&[
            "get",
            "apiisolation",
            "quarantine-demo-api",
            "-n",
            "demo",
            "-o",
            "jsonpath={.status.phase}",
        ])?;
        Ok((phase.trim() == "Active").then_some(()))
    })
    .await
    .context("waiting for the isolation to be Active")?;
    println!(
        "outside/outsider-0 -> demo-api:8080: {}",
        connect_from(stack, &outsider, api, 8080)
    );
    println!(
        "the node (kubelet probes) -> demo-api:8080/healthz: HTTP {}",
        http_request(api.addr(8080), "GET", "/healthz", &[], "")?
    );
    show(
        stack,
        &["describe", "apiisolation", "quarantine-demo-api", "-n", "demo"],
    )?;
    show(stack, &["delete", "-f", &sample])?;
    wait_for(Duration::from_secs(30), || {
        Ok((connect_from(stack, &outsider, api, 8080) == "open").then_some(()))
    })
    .await
    .context("waiting for the release")?;
    println!("after kubectl delete: outside/outsider-0 -> demo-api:8080: open");
    outsider.stop(stack.client.clone()).await?;
    Ok(())
}
