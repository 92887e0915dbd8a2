//! TLS plaintext end to end: a pod serving HTTPS through OpenSSL, an ApiMonitor with
//! `tls.enabled`, and the endpoints, a finding and TLS coverage in status, secrets redacted.
//! Twice: with `--tls-probes calls` (every read and write probed; the finding's source is
//! unknown), and with the default, `auto`: only `SSL_do_handshake` is probed and the agent
//! decrypts the captured TLS 1.3 records, so the finding names the client's real address; then a
//! TLS 1.2 connection with an AES-CBC suite, which the agent does not decrypt, makes it probe the
//! server's reads and writes, and later such requests are counted from there. Before that, TLS 1.2
//! with AES-GCM is decrypted from the first connection on, short ones (the return probe finds the
//! session and copies it at each handshake), with no fall back.

use anyhow::{ensure, Context, Result};
use palisade_e2e::palisade::{
    condition, demo_api_command, http_get_body, start_agent_with_metrics, wait_for_object, Stack,
};
use palisade_e2e::PodLaunch;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

const CANARY: &str = "CANARY-TLS-55d1e";
const WAIT: Duration = Duration::from_secs(45);

/// A metric's value from the agent's text exposition (`prefix` ends with the labels and a space).
fn metric(text: &str, prefix: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

const MONITOR: &str = r#"
apiVersion: palisade.dev/v1alpha1
kind: ApiMonitor
metadata: {name: secure-api, namespace: demo}
spec:
  selector: {matchLabels: {app: secure-api}}
  ports: [8443]
  tls: {enabled: true}
---
apiVersion: palisade.dev/v1alpha1
kind: ApiPolicy
metadata: {name: secure-guard, namespace: demo}
spec:
  monitors: [secure-api]
  rules:
    - {name: traversal, detector: pathTraversal}
"#;

/// HTTPS requests from the test process (python's ssl, no verification), bounded by timeouts;
/// one connection each.
fn https_requests(ip: &str, requests: &[(&str, &str)]) -> Result<Vec<u16>> {
    https_requests_with(ip, requests, "")
}

/// [`https_requests`] with `setup` run on the client's `ssl` context `ctx` first.
fn https_requests_with(ip: &str, requests: &[(&str, &str)], setup: &str) -> Result<Vec<u16>> {
    let mut script =
        format!("import http.client, ssl, sys\nctx = ssl._create_unverified_context()\n{setup}\nout = []\n");
    for (target, auth) in requests {
        script.push_str(&format!(
            "c = http.client.HTTPSConnection('{ip}', 8443, context=ctx, timeout=5)\n\
             c.request('GET', {target:?}, headers={{'Authorization': {auth:?}}})\n\
             out.append(str(c.getresponse().status)); c.close()\n"
        ));
    }
    script.push_str("print(' '.join(out))\n");
    run_client(&script)
}

/// Runs a python HTTPS client script that prints the statuses it got.
fn run_client(script: &str) -> Result<Vec<u16>> {
    let out = Command::new("timeout")
        .args(["30", "python3", "-c", script])
        .output()?;
    ensure!(
        out.status.success(),
        "HTTPS client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|s| s.parse().context("status"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_is_seen_in_plaintext_through_openssl_uprobes() -> Result<()> {
    https_scenario(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_is_decrypted_with_the_session_keys() -> Result<()> {
    https_scenario(true).await
}

/// `keys`: the agent runs with its default placement (session keys, falling back to probing
/// reads and writes); else with `--tls-probes calls`.
async fn https_scenario(keys: bool) -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let node = if keys { "tls-keys-node" } else { "tls-node" };
    let mut stack = Stack::start(node).await?;
    if !keys {
        stack.agent.kill();
        let via = format!("http://{}", stack.grpc_wire.listen);
        let (agent, metrics) = start_agent_with_metrics(
            &stack.cp,
            &stack.operator,
            node,
            "agent-calls",
            &[],
            &["--operator", &via, "--tls-probes", "calls"],
        )?;
        stack.agent = agent;
        stack.agent_metrics = metrics;
    }
    let cp = &stack.cp;
    let certs = tempfile::tempdir()?;
    let (pod, detail) = secure_pod(&stack, certs.path(), false).await?;
    let how = if keys {
        ": TLS 1.3 and 1.2 decrypted with the session keys"
    } else {
        ": reads and writes probed"
    };
    assert!(detail.ends_with(how), "{detail}");

    let ip = pod.ip.to_string();
    let bearer = format!("Bearer {CANARY}");
    let statuses = https_requests(
        &ip,
        &[
            ("/users/1", &bearer),
            ("/users/2", &bearer),
            ("/files/..%2f..%2fetc%2fpasswd", &bearer),
        ],
    )?;
    assert_eq!(statuses, vec![200, 200, 404]);

    let users = wait_users(&stack, "TLS endpoints", 2).await?;
    assert_eq!(users["requests"], 2, "{users}");
    let finding = wait_for_object(
        cp,
        "a finding from TLS plaintext",
        ("apipolicy", "demo", "secure-guard"),
        WAIT,
        |p| {
            p.pointer("/status/findings/recent")?
                .as_array()?
                .iter()
                .find(|f| f["rule"] == "traversal")
                .cloned()
        },
    )
    .await?;
    let source = finding["source"].as_str().unwrap_or_default();
    if keys {
        let peer: std::net::IpAddr = source
            .parse()
            .with_context(|| format!("decrypted TLS names the client's address: {finding}"))?;
        assert_ne!(peer.to_string(), ip, "the client, not the pod");
        let text = http_get_body(stack.agent_metrics, "/metrics")?;
        assert_eq!(
            metric(&text, "palisade_agent_tls_decrypted_connections_total "),
            Some(3),
            "one per HTTPS connection"
        );
        assert!(!text.contains(CANARY), "a secret canary leaked into the metrics");

        // TLS 1.2 with an AEAD suite is decrypted too, from its first connection on, each one
        // short: the SSL_do_handshake return probe found where the server's SSL objects point to
        // their SSL_SESSION (the master secret) at the server's first handshake, and copies the
        // session at each handshake, before OpenSSL wipes it at the connection's end.
        let aead12 = "ctx.maximum_version = ssl.TLSVersion.TLSv1_2";
        assert_eq!(
            https_requests_with(
                &ip,
                &[
                    ("/users/6", &bearer),
                    ("/users/7", &bearer),
                    ("/users/8", &bearer)
                ],
                aead12
            )?,
            vec![200, 200, 200]
        );
        wait_metric(&stack, "palisade_agent_tls_decrypted_connections_total ", 6).await?;
        let users = wait_users(&stack, "TLS 1.2 requests decrypted", 5).await?;
        assert_eq!(users["requests"], 5, "{users}");
        let text = http_get_body(stack.agent_metrics, "/metrics")?;
        assert_eq!(
            metric(&text, "palisade_agent_tls_fallbacks_total ").unwrap_or(0),
            0,
            "TLS 1.2 with AES-GCM needs no probes on reads and writes"
        );
        assert_eq!(
            metric(&text, "palisade_agent_tls_session_pointers_total ").unwrap_or(0),
            0,
            "the kernel found the session pointer itself: the agent had none to correct"
        );
        assert_eq!(
            metric(
                &text,
                "palisade_agent_messages_dropped_total{reason=\"tls_not_decrypted\"} "
            )
            .unwrap_or(0),
            0
        );

        // TLS 1.2 with AES-CBC: the first connection is not decrypted, and the server's reads
        // and writes are probed from then on; the next ones are counted through those probes.
        let tls12 = "ctx.maximum_version = ssl.TLSVersion.TLSv1_2\n\
                     ctx.set_ciphers('ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256')";
        assert_eq!(
            https_requests_with(&ip, &[("/users/3", &bearer)], tls12)?,
            vec![200]
        );
        // The first TLS 1.2 CBC connection: not decrypted, and its server falls back. (The drop
        // counters reach the metrics with the agent's next report.)
        wait_metric(&stack, "palisade_agent_tls_fallbacks_total ", 1).await?;
        wait_metric(
            &stack,
            "palisade_agent_messages_dropped_total{reason=\"tls_not_decrypted\"} ",
            1,
        )
        .await?;
        assert_eq!(
            https_requests_with(&ip, &[("/users/4", &bearer), ("/users/5", &bearer)], tls12)?,
            vec![200, 200]
        );
        let users = wait_users(&stack, "TLS 1.2 requests through the probed reads and writes", 7).await?;
        assert_eq!(
            users["requests"], 7,
            "5 decrypted + 2 through the probes, none twice: {users}"
        );
        let text = http_get_body(stack.agent_metrics, "/metrics")?;
        assert_eq!(
            metric(&text, "palisade_agent_tls_fallbacks_total "),
            Some(1),
            "one process fell back, counted once (its later CBC connections are probed, not new fall backs)"
        );
        wait_for_object(
            cp,
            "TLS coverage naming the fall back",
            ("apimonitor", "demo", "secure-api"),
            WAIT,
            |m| {
                let detail = m.pointer("/status/tls/details/0/detail")?.as_str()?;
                detail
                    .ends_with("session keys, reads and writes probed in 1")
                    .then_some(())
            },
        )
        .await?;
    } else {
        assert_eq!(source, "unknown (TLS)", "uprobes do not see the peer: {finding}");
    }
    let everything = cp.kubectl_ok(&["get", "apimonitor,apipolicy,events", "-n", "demo", "-o", "yaml"])?;
    assert!(!everything.contains(CANARY), "a secret canary leaked");
    Ok(())
}

/// The HTTPS demo API pod `demo/secure-api-0` (its certificate in `dir`), the monitor and policy
/// on it, once the monitor reports its TLS covered. `lazy`: the server never calls
/// `SSL_do_handshake` (OpenSSL handshakes inside its first `SSL_read`).
async fn secure_pod(
    stack: &Stack,
    dir: &std::path::Path,
    lazy: bool,
) -> Result<(palisade_e2e::RunningPod, String)> {
    let cp = &stack.cp;
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let gen = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=secure-api",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()?;
    ensure!(
        gen.status.success(),
        "openssl req: {}",
        String::from_utf8_lossy(&gen.stderr)
    );
    cp.kubectl_ok(&["create", "namespace", "demo"])?;
    let mut command = demo_api_command(8443);
    command.extend([cert.display().to_string(), key.display().to_string()]);
    if lazy {
        command.push("lazy".into());
    }
    let pod = stack
        .kubelet
        .start_pod(PodLaunch {
            namespace: "demo".into(),
            name: "secure-api-0".into(),
            labels: BTreeMap::from([("app".to_string(), "secure-api".to_string())]),
            command,
            port: 8443,
        })
        .await?;
    let manifests = dir.join("secure.yaml");
    std::fs::write(&manifests, MONITOR)?;
    cp.kubectl_ok(&["apply", "-f", &manifests.display().to_string()])?;
    let coverage = wait_for_object(
        cp,
        "TLS coverage",
        ("apimonitor", "demo", "secure-api"),
        WAIT,
        |m| {
            let tls = m.pointer("/status/tls")?;
            let ready = condition(m, "Ready").is_some_and(|(s, _, _)| s == "True");
            (ready && tls["coveredPods"].as_u64()? == 1).then(|| tls.clone())
        },
    )
    .await?;
    palisade_e2e::palisade::wait_policy_ready(cp, "demo", "secure-guard").await?;
    println!("TLS coverage: {coverage}");
    let detail = coverage
        .pointer("/details/0/detail")
        .and_then(|d| d.as_str())
        .unwrap_or_default();
    assert!(detail.contains("libssl"), "{detail}");
    Ok((pod, detail.to_string()))
}

/// The `/users/{id}` endpoint of the monitor's inventory, once it counted at least `requests`.
async fn wait_users(stack: &Stack, what: &str, requests: u64) -> Result<serde_json::Value> {
    wait_for_object(&stack.cp, what, ("apimonitor", "demo", "secure-api"), WAIT, |m| {
        let items = m.pointer("/status/endpoints/items")?.as_array()?;
        let users = items.iter().find(|e| e["path"] == "/users/{id}")?;
        (users["requests"].as_u64()? >= requests).then(|| users.clone())
    })
    .await
}

/// Waits until the agent's metric `name` (with its labels, then a space) reaches `want`.
async fn wait_metric(stack: &Stack, name: &str, want: u64) -> Result<()> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let text = http_get_body(stack.agent_metrics, "/metrics")?;
        if metric(&text, name) == Some(want) {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{name}never reached {want}: {}",
            text.lines()
                .filter(|l| l.contains("tls"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_without_ssl_do_handshake_falls_back_for_the_pod() -> Result<()> {
    // The default agent and a server whose handshakes never go through SSL_do_handshake: no
    // session record, so its first connection cannot be decrypted. That connection completed
    // its handshake on the wire, so the agent probes the pod's reads and writes from then on.
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let stack = Stack::start("tls-lazy-node").await?;
    let certs = tempfile::tempdir()?;
    let (pod, _) = secure_pod(&stack, certs.path(), true).await?;
    let ip = pod.ip.to_string();
    let bearer = format!("Bearer {CANARY}");
    assert_eq!(https_requests(&ip, &[("/users/1", &bearer)])?, vec![200]);
    wait_metric(&stack, "palisade_agent_tls_fallbacks_total ", 1).await?;
    wait_metric(
        &stack,
        "palisade_agent_messages_dropped_total{reason=\"tls_not_decrypted\"} ",
        1,
    )
    .await?;
    assert_eq!(
        https_requests(&ip, &[("/users/2", &bearer), ("/users/3", &bearer)])?,
        vec![200, 200]
    );
    let users = wait_users(&stack, "requests through the probed reads and writes", 2).await?;
    assert_eq!(
        users["requests"], 2,
        "the first connection lost and counted, the next two captured: {users}"
    );
    let text = http_get_body(stack.agent_metrics, "/metrics")?;
    assert_eq!(
        metric(&text, "palisade_agent_tls_decrypted_connections_total "),
        Some(0)
    );
    assert!(!text.contains(CANARY), "a secret canary leaked into the metrics");
    Ok(())
}
