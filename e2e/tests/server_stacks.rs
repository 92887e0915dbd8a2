//! Capture across server stacks: nginx (a 256 KiB static file sent with sendfile, keep-alive,
//! pipelining) and Python's http.server (HTTP/1.0, close-delimited), each counted exactly.

use anyhow::{ensure, Context, Result};
use palisade_e2e::palisade::{endpoint_requests as requests, wait_for_object, Stack};
use palisade_e2e::PodLaunch;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(45);

const MONITOR: &str = r#"
apiVersion: palisade.dev/v1alpha1
kind: ApiMonitor
metadata: {name: stacks, namespace: demo}
spec:
  selector: {matchLabels: {tier: web}}
  capture: {bodies: true, maxBodyBytes: 65536}
"#;

fn nginx_conf(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  keepalive_timeout 30;\n\
           client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n  fastcgi_temp_path {d}/tmp;\n\
           uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
           server {{\n    listen 8080;\n    root {d}/www;\n  }}\n}}\n"
    )
}

/// Sends `raw` (one or more pipelined requests) on one connection and reads `responses`
/// responses, each framed by its Content-Length. Returns the statuses and body sizes.
fn exchange(addr: SocketAddr, raw: &str, responses: usize) -> Result<Vec<(u16, usize)>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(raw.as_bytes())?;
    let mut buf = Vec::new();
    let mut out = vec![];
    let mut chunk = [0u8; 65536];
    while out.len() < responses {
        let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        if let Some(end) = head_end {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head.split_whitespace().nth(1).context("status")?.parse()?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .context("content-length")?
                .parse()?;
            if buf.len() >= end + 4 + len {
                out.push((status, len));
                buf.drain(..end + 4 + len);
                continue;
            }
        }
        let n = s.read(&mut chunk)?;
        ensure!(n > 0, "connection closed after {} responses", out.len());
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_sendfile_and_python_are_counted_exactly() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let nginx = which("nginx").context("nginx is installed by hack/install-toolchain.sh")?;
    let stack = Stack::start("stacks-node").await?;
    let cp = &stack.cp;
    cp.kubectl_ok(&["create", "namespace", "demo"])?;
    let work = tempfile::tempdir()?;
    std::fs::create_dir_all(work.path().join("www"))?;
    std::fs::create_dir_all(work.path().join("tmp"))?;
    let big: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
    std::fs::write(work.path().join("www/big.bin"), &big)?;
    std::fs::write(work.path().join("www/index.html"), "<h1>hello</h1>\n")?;
    std::fs::write(work.path().join("nginx.conf"), nginx_conf(work.path()))?;
    std::fs::write(work.path().join("www/served.txt"), "served by python\n")?;

    let labels = BTreeMap::from([("tier".to_string(), "web".to_string())]);
    let nginx_pod = stack
        .kubelet
        .start_pod(PodLaunch {
            namespace: "demo".into(),
            name: "nginx-0".into(),
            labels: labels.clone(),
            command: vec![
                nginx.clone(),
                "-c".into(),
                work.path().join("nginx.conf").display().to_string(),
            ],
            port: 8080,
        })
        .await?;
    let www = work.path().join("www").display().to_string();
    let python_pod = stack
        .kubelet
        .start_pod(PodLaunch {
            namespace: "demo".into(),
            name: "python-0".into(),
            labels,
            command: vec![
                "python3".into(),
                "-m".into(),
                "http.server".into(),
                "8081".into(),
                "-d".into(),
                www,
            ],
            port: 8081,
        })
        .await?;
    let manifest = work.path().join("monitor.yaml");
    std::fs::write(&manifest, MONITOR)?;
    cp.kubectl_ok(&["apply", "-f", &manifest.display().to_string()])?;
    wait_for_object(
        cp,
        "capture on both pods",
        ("apimonitor", "demo", "stacks"),
        WAIT,
        |m| (m.pointer("/status/nodes/details/0/probesAttached")?.as_u64()? == 4).then_some(()),
    )
    .await?;

    // nginx: 3 keep-alive requests for the 256 KiB file (sendfile), then 2 pipelined in one write.
    let n = nginx_pod.addr(8080);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: nginx\r\n\r\n");
    let got = exchange(
        n,
        &[get("/big.bin"), get("/big.bin"), get("/big.bin")].concat(),
        3,
    )?;
    assert_eq!(got, vec![(200, big.len()); 3]);
    let got = exchange(n, &[get("/index.html"), get("/missing")].concat(), 2)?;
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![200, 404]);
    // Python's http.server: HTTP/1.0, one request per connection.
    for _ in 0..2 {
        let got = exchange(python_pod.addr(8081), "GET /served.txt HTTP/1.0\r\n\r\n", 1)?;
        assert_eq!(got, vec![(200, 17)]);
    }

    let m = wait_for_object(
        cp,
        "every exchange counted",
        ("apimonitor", "demo", "stacks"),
        WAIT,
        |m| {
            let done = requests(m, "GET", "/big.bin")? >= 3 && requests(m, "GET", "/served.txt")? >= 2;
            done.then(|| m.clone())
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = palisade_e2e::palisade::get_json(cp, "apimonitor", "demo", "stacks").unwrap_or(m);
    assert_eq!(
        requests(&m, "GET", "/big.bin"),
        Some(3),
        "sendfile responses, keep-alive"
    );
    assert_eq!(requests(&m, "GET", "/index.html"), Some(1), "pipelined");
    assert_eq!(requests(&m, "GET", "/missing"), Some(1), "pipelined");
    assert_eq!(requests(&m, "GET", "/served.txt"), Some(2), "python http.server");
    let lost = m.pointer("/status/nodes/recordsLost").and_then(|v| v.as_u64());
    assert_eq!(lost, Some(0));
    Ok(())
}

fn which(program: &str) -> Option<String> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|d| d.join(program))
            .find(|p| p.is_file())
            .map(|p| p.display().to_string())
    })
}
