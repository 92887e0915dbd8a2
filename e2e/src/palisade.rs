//! Starts Palisade itself (operator and node agent, built from this workspace) against a
//! [`ControlPlane`], and small HTTP and status helpers the end-to-end tests share.

use crate::process::{free_port, wait_until, ChildGuard};
use crate::{workspace_root, ControlPlane};
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Builds the operator and agent binaries (once per test process) and returns their directory.
/// `PALISADE_BIN_DIR` points at prebuilt ones instead.
pub fn binaries() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("PALISADE_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = Command::new(cargo)
                .current_dir(workspace_root())
                .args([
                    "build",
                    "-p",
                    "palisade-operator",
                    "-p",
                    "palisade-node-agent",
                    "--bins",
                ])
                .output()
                .map_err(|e| format!("running cargo build: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cargo build failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let target = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| workspace_root().join("target"));
            Ok(target.join("debug"))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// A running operator.
pub struct Operator {
    pub process: ChildGuard,
    pub grpc: SocketAddr,
    /// Where it serves `/metrics`, `/healthz` and `/readyz` (a free loopback port).
    pub metrics: SocketAddr,
}

impl Operator {
    pub async fn start(cp: &ControlPlane, name: &str) -> Result<Operator> {
        let grpc: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        Self::start_on(cp, name, grpc).await
    }

    /// Starts an operator whose gRPC service listens on `grpc` (to replace one that stopped).
    pub async fn start_on(cp: &ControlPlane, name: &str, grpc: SocketAddr) -> Result<Operator> {
        Self::start_with(cp, name, grpc, cp.kubeconfig_path(), &[]).await
    }

    /// Starts an operator on `grpc` with more arguments (`--tls-cert ...`, say).
    pub async fn start_with_args(
        cp: &ControlPlane,
        name: &str,
        grpc: SocketAddr,
        extra: &[String],
    ) -> Result<Operator> {
        Self::start_with(cp, name, grpc, cp.kubeconfig_path(), extra).await
    }

    /// Starts an operator that reaches the API server with `kubeconfig` instead of the admin's
    /// (to prove what a narrower identity, such as the chart's ServiceAccount, can do).
    pub async fn start_with_kubeconfig(cp: &ControlPlane, name: &str, kubeconfig: &Path) -> Result<Operator> {
        let grpc: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        Self::start_with(cp, name, grpc, kubeconfig, &[]).await
    }

    async fn start_with(
        cp: &ControlPlane,
        name: &str,
        grpc: SocketAddr,
        kubeconfig: &Path,
        extra: &[String],
    ) -> Result<Operator> {
        let bin = binaries()?.join("palisade-operator");
        let metrics: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let mut cmd = Command::new(&bin);
        cmd.env("KUBECONFIG", kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("PALISADE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .args(["--grpc-listen", &grpc.to_string(), "--status-interval-ms", "500"])
            .args(["--metrics-listen", &metrics.to_string()])
            .args(extra);
        let mut process = ChildGuard::spawn(name, &mut cmd, &cp.dir().join(format!("{name}.log")))?;
        let addr = grpc;
        wait_until(
            "the operator's gRPC port",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                process.ensure_running()?;
                Ok(crate::process::tcp_accepts(addr, Duration::from_millis(200)))
            },
        )
        .await?;
        Ok(Operator {
            process,
            grpc,
            metrics,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

/// Starts a node agent for `node`. `wrapper` runs it under another command (for example
/// `setpriv` to drop capabilities); `extra` are more agent arguments.
pub fn start_agent(
    cp: &ControlPlane,
    operator: &Operator,
    node: &str,
    name: &str,
    wrapper: &[&str],
    extra: &[&str],
) -> Result<ChildGuard> {
    start_agent_with_metrics(cp, operator, node, name, wrapper, extra).map(|(agent, _)| agent)
}

/// Like [`start_agent`], and returns where the agent serves `/metrics` (a free loopback port).
pub fn start_agent_with_metrics(
    cp: &ControlPlane,
    operator: &Operator,
    node: &str,
    name: &str,
    wrapper: &[&str],
    extra: &[&str],
) -> Result<(ChildGuard, SocketAddr)> {
    let bin = binaries()?.join("palisade-node-agent");
    let metrics: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.env(
        "RUST_LOG",
        std::env::var("PALISADE_LOG").unwrap_or_else(|_| "info".into()),
    )
    .args(["--node-name", node, "--report-interval-ms", "500"])
    .args(["--metrics-listen", &metrics.to_string()])
    .args(extra);
    // `extra` may route the agent elsewhere (through a WireRecorder, say).
    if !extra.contains(&"--operator") {
        cmd.args(["--operator", &operator.url()]);
    }
    if !extra.contains(&"--bpf-pin-dir") {
        cmd.arg("--bpf-pin-dir").arg(cp.bpf_pin_dir(node));
    }
    let agent = ChildGuard::spawn(name, &mut cmd, &cp.dir().join(format!("{name}.log")))?;
    Ok((agent, metrics))
}

/// GET `path` over plain HTTP/1.1 and return the body (bounded by timeouts and 4 MiB).
pub fn http_get_body(addr: SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut response = Vec::new();
    let _ = stream.take(4 << 20).read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok(body)
}

/// Sends one raw HTTP/1.1 request (the target is sent exactly as given, not normalised) and
/// returns the response status code. Bounded by timeouts.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes())?;
    let mut response = Vec::new();
    let _ = stream.take(64 * 1024).read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status in response to {method} {target}: {text:.200}"))?;
    Ok(status)
}

/// An ApiMonitor's request count for one endpoint of its inventory (`status.endpoints`).
pub fn endpoint_requests(monitor: &serde_json::Value, method: &str, path: &str) -> Option<u64> {
    let items = monitor.pointer("/status/endpoints/items")?.as_array()?;
    items
        .iter()
        .find(|e| e["method"] == method && e["path"] == path)?["requests"]
        .as_u64()
}

/// `kubectl get <kind> <name> -n <ns> -o json`, parsed.
pub fn get_json(cp: &ControlPlane, kind: &str, ns: &str, name: &str) -> Result<serde_json::Value> {
    let out = cp.kubectl_ok(&["get", kind, name, "-n", ns, "-o", "json"])?;
    serde_json::from_str(&out).context("parsing kubectl JSON")
}

/// The status ("True"/"False") and reason of a condition, if present.
pub fn condition(obj: &serde_json::Value, type_: &str) -> Option<(String, String, String)> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
}

/// Waits until `f` returns `Ok(Some(value))`, calling it every 250 ms; its errors end the wait.
pub async fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `check` returns `Ok(Some(value))`, re-reading the object every 250 ms.
pub async fn wait_for_object<T>(
    cp: &ControlPlane,
    what: &str,
    (kind, ns, name): (&str, &str, &str),
    timeout: Duration,
    mut check: impl FnMut(&serde_json::Value) -> Option<T>,
) -> Result<T> {
    let start = std::time::Instant::now();
    let mut last = serde_json::Value::Null;
    loop {
        if let Ok(obj) = get_json(cp, kind, ns, name) {
            if let Some(v) = check(&obj) {
                return Ok(v);
            }
            last = obj;
        }
        if start.elapsed() > timeout {
            bail!(
                "timed out after {timeout:?} waiting for {what}; last {kind} {ns}/{name}:\n{}",
                serde_json::to_string_pretty(&last.get("status")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A TCP relay on loopback that records every byte both ways: the e2e tests put it between the
/// agent and the operator and grep the gRPC traffic for secrets (protobuf strings travel as-is).
pub struct WireRecorder {
    pub listen: SocketAddr,
    bytes: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WireRecorder {
    pub async fn start(target: SocketAddr) -> Result<WireRecorder> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let listen = listener.local_addr()?;
        let bytes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = bytes.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let up = relay(&mut ri, &mut wo, sink.clone());
                    let down = relay(&mut ro, &mut wi, sink);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(WireRecorder { listen, bytes, task })
    }

    /// Everything relayed so far, both directions.
    pub fn recorded(&self) -> Vec<u8> {
        self.bytes.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

impl Drop for WireRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    sink: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        if let Ok(mut b) = sink.lock() {
            // Bounded: a test never needs more than 64 MiB of it.
            if b.len() < 64 << 20 {
                b.extend_from_slice(&buf[..n]);
            }
        }
        to.write_all(&buf[..n]).await?;
    }
}

/// The command line of the demo API (e2e/demo-api/demo_api.py) listening on `port`.
pub fn demo_api_command(port: u16) -> Vec<String> {
    let script = workspace_root().join("e2e/demo-api/demo_api.py");
    vec!["python3".into(), script.display().to_string(), port.to_string()]
}

/// A whole local Palisade: control plane with the CRDs, a stand-in kubelet for `node`, the
/// operator and one node agent.
pub struct Stack {
    pub agent: ChildGuard,
    /// Records the agent's gRPC traffic to the operator (the agent connects through it).
    pub grpc_wire: WireRecorder,
    /// Where the agent serves Prometheus metrics.
    pub agent_metrics: SocketAddr,
    pub operator: Operator,
    pub kubelet: crate::FakeKubelet,
    pub client: kube::Client,
    pub cp: ControlPlane,
}

impl Stack {
    pub async fn start(node: &str) -> Result<Stack> {
        let cp = ControlPlane::start_with_palisade_crds().await?;
        let client = cp.client().await?;
        let kubelet = crate::FakeKubelet::start(client.clone(), node).await?;
        let operator = Operator::start(&cp, "operator").await?;
        let grpc_wire = WireRecorder::start(operator.grpc).await?;
        let via = format!("http://{}", grpc_wire.listen);
        let (agent, agent_metrics) =
            start_agent_with_metrics(&cp, &operator, node, "agent", &[], &["--operator", &via])?;
        Ok(Stack {
            agent,
            grpc_wire,
            agent_metrics,
            operator,
            kubelet,
            client,
            cp,
        })
    }

    /// Starts a demo API pod labelled `app=demo-api` in namespace `demo`, serving on 8080.
    pub async fn start_demo_pod(&self, name: &str) -> Result<crate::RunningPod> {
        start_demo_pod(&self.kubelet, name).await
    }
}

/// Starts a demo API pod labelled `app=demo-api` in namespace `demo` on `kubelet`'s node,
/// serving on 8080 (what the samples' ApiMonitor selects).
pub async fn start_demo_pod(kubelet: &crate::FakeKubelet, name: &str) -> Result<crate::RunningPod> {
    let labels = std::collections::BTreeMap::from([("app".to_string(), "demo-api".to_string())]);
    kubelet
        .start_pod(crate::PodLaunch {
            namespace: "demo".into(),
            name: name.into(),
            labels,
            command: demo_api_command(8080),
            port: 8080,
        })
        .await
}

/// Waits until an ApiPolicy is Ready: the agent of every node with its pods runs the policy's
/// current generation. Attacks sent before that may meet a node that does not run it yet.
pub async fn wait_policy_ready(cp: &ControlPlane, namespace: &str, name: &str) -> Result<()> {
    wait_for_object(
        cp,
        "the ApiPolicy to be Ready",
        ("apipolicy", namespace, name),
        Duration::from_secs(45),
        |p| {
            condition(p, "Ready")
                .filter(|(status, _, _)| status == "True")
                .map(|_| ())
        },
    )
    .await
}

/// The Events of `namespace` about objects of `kind` with `reason`: their notes, one per line.
pub fn events(cp: &ControlPlane, namespace: &str, kind: &str, reason: &str) -> Result<String> {
    cp.kubectl_ok(&[
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        &format!("involvedObject.kind={kind},reason={reason}"),
        "-o",
        "jsonpath={range .items[*]}{.note}{.message}{\"\\n\"}{end}",
    ])
}

/// One SQL injection sent from inside `attacker` (its cgroup and network namespace) to
/// `target:8080`: the HTTP status, or "refused" when no connection could be made (SYN dropped:
/// connect times out after 1 s; or reset).
pub fn send_injection(stack: &Stack, attacker: &crate::RunningPod, target: &crate::RunningPod) -> String {
    let script = format!(
        "import socket\n\
         try:\n    s = socket.create_connection(('{}', 8080), timeout=1)\n    \
         s.sendall(b'GET /search?q=1%27%20UNION%20SELECT%20password%20FROM%20users-- HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n    \
         print(s.recv(64).split()[1].decode())\n\
         except OSError:\n    print('refused')\n",
        target.ip
    );
    let out = stack
        .kubelet
        .exec_in_pod(attacker, &["timeout", "10", "python3", "-c", &script]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The value of an unlabelled sample (`name value`) in Prometheus text.
pub fn metric_sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

/// A TCP connection from inside `from` (its cgroup and network namespace) to `to:port`: "open", or "refused"
/// when the SYN is dropped (connect times out after 1 s) or reset.
pub fn connect_from(stack: &Stack, from: &crate::RunningPod, to: &crate::RunningPod, port: u16) -> String {
    let script = format!(
        "import socket\n\
         try:\n    socket.create_connection(('{}', {port}), timeout=1).close()\n    print('open')\n\
         except OSError:\n    print('refused')\n",
        to.ip
    );
    // In the pod's cgroup too: its egress enforcement sees only the pod's own sockets.
    let out = stack
        .kubelet
        .exec_in_pod(from, &["timeout", "10", "python3", "-c", &script]);
    if out.stdout.is_empty() {
        eprintln!(
            "exec in {} failed: {}",
            from.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until the ApiPolicy `namespace/name`'s `status.actions.items` satisfy `check`.
pub async fn wait_policy_actions(
    cp: &ControlPlane,
    (namespace, name): (&str, &str),
    what: &str,
    check: impl Fn(&[serde_json::Value]) -> bool,
) -> Result<Vec<serde_json::Value>> {
    wait_for_object(
        cp,
        what,
        ("apipolicy", namespace, name),
        Duration::from_secs(45),
        |p| {
            let items = p.pointer("/status/actions/items")?.as_array()?.clone();
            check(&items).then_some(items)
        },
    )
    .await
}
