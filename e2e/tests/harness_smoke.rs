//! Smoke test of the harness itself: control plane, CRDs, fake kubelet, one real pod.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ObjectMeta, PostParams};
use kube::Api;
use palisade_e2e::{control_plane::yaml_files, ControlPlane, FakeKubelet, PodLaunch};

/// GET / over plain HTTP/1.0 and return the status line (bounded by timeouts).
fn http_get_status(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET / HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: palisade-e2e\r\n\r\n"
    )?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_smoke() -> anyhow::Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let t0 = Instant::now();
    let cp = ControlPlane::start().await?;
    println!(
        "control plane started in {:?} (total incl. finding binaries {:?})",
        cp.started_in(),
        t0.elapsed()
    );

    let version = cp.kubectl_ok(&["version"])?;
    println!("kubectl version:\n{version}");
    assert!(
        version.contains("Server Version: v1.35.4"),
        "unexpected kubectl version output: {version}"
    );

    let crds = palisade_e2e::workspace_root().join("crds");
    if yaml_files(&crds)?.is_empty() {
        println!(
            "NOTE: {} has no yaml files: skipping the CRD step",
            crds.display()
        );
    } else {
        cp.apply_crds(&crds).await?;
        println!("CRDs from {} applied and Established", crds.display());
    }

    let client = cp.client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("smoke".into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces.create(&PostParams::default(), &ns).await?;

    let kubelet = FakeKubelet::start(client.clone(), "palisade-e2e-node").await?;
    println!(
        "fake kubelet: bridge {} at {}",
        kubelet.bridge_name(),
        kubelet.bridge_ip()
    );

    let t_pod = Instant::now();
    let pod = kubelet
        .start_pod(PodLaunch {
            namespace: "smoke".into(),
            name: "web".into(),
            labels: BTreeMap::from([("app".to_owned(), "web".to_owned())]),
            command: ["python3", "-m", "http.server", "--bind", "0.0.0.0", "8080"]
                .map(String::from)
                .to_vec(),
            port: 8080,
        })
        .await?;
    println!(
        "pod smoke/web running in {:?}: uid {} ip {} pid {} netns {} cgroup {}",
        t_pod.elapsed(),
        pod.uid,
        pod.ip,
        pod.pid,
        pod.netns,
        pod.cgroup_dir.display()
    );

    let listing = cp.kubectl_ok(&["get", "nodes,pods", "-A", "-o", "wide"])?;
    println!("kubectl get nodes,pods -A -o wide:\n{listing}");

    let status_line = http_get_status(pod.addr(8080))?;
    println!("GET http://{}/ -> {status_line}", pod.addr(8080));
    assert!(
        status_line.starts_with("HTTP/1.0 200"),
        "unexpected status line {status_line:?}"
    );

    // exec_in_pod_netns: the pod's own eth0 carries its IP.
    let out = kubelet.exec_in_pod_netns(&pod, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && shown.contains(&pod.ip.to_string()),
        "eth0 in the pod netns: {shown}"
    );

    // East-west: a second pod fetches from the first across the bridge.
    let client_pod = kubelet
        .start_pod(PodLaunch {
            namespace: "smoke".into(),
            name: "client".into(),
            labels: BTreeMap::from([("app".to_owned(), "client".to_owned())]),
            command: ["python3", "-m", "http.server", "--bind", "0.0.0.0", "9090"]
                .map(String::from)
                .to_vec(),
            port: 9090,
        })
        .await?;
    let url = format!("http://{}/", pod.addr(8080));
    let script = format!("import urllib.request; print(urllib.request.urlopen('{url}', timeout=5).status)");
    let out = kubelet.exec_in_pod_netns(&client_pod, &["timeout", "20", "python3", "-c", &script]);
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    println!("east-west {} -> {url}: {answer} ({})", client_pod.ip, out.status);
    assert_eq!(
        answer,
        "200",
        "east-west GET failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    client_pod.stop(client.clone()).await?;

    let pods: Api<Pod> = Api::namespaced(client.clone(), "smoke");
    let api_pod = pods.get("web").await?;
    let status = api_pod.status.clone().unwrap_or_default();
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.pod_ip.as_deref(), Some(pod.ip.to_string().as_str()));
    assert_eq!(
        status.host_ip.as_deref(),
        Some(kubelet.bridge_ip().to_string().as_str())
    );
    let cs = status.container_statuses.unwrap_or_default();
    assert_eq!(
        cs.first().and_then(|c| c.container_id.clone()),
        Some(format!("palisade://{}", pod.pid))
    );
    assert_eq!(api_pod.metadata.uid.as_deref(), Some(pod.uid.as_str()));
    println!(
        "API: pod smoke/web phase Running, podIP {}, containerID palisade://{}",
        pod.ip, pod.pid
    );

    let procs = palisade_e2e::cgroup_pids(&pod.cgroup_dir)?;
    assert!(
        procs.contains(&pod.pid),
        "pid {} not in {}/cgroup.procs: {procs:?}",
        pod.pid,
        pod.cgroup_dir.display()
    );
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", pod.pid))?;
    println!(
        "cgroup.procs of {} = {procs:?} (pid {} is {})",
        pod.cgroup_dir.display(),
        pod.pid,
        comm.trim()
    );

    let (netns_path, cgroup_dir, pid) = (pod.netns_path(), pod.cgroup_dir.clone(), pod.pid);
    pod.stop(client.clone()).await?;
    assert!(
        !netns_path.exists(),
        "netns {} still exists",
        netns_path.display()
    );
    assert!(
        !cgroup_dir.exists(),
        "cgroup {} still exists",
        cgroup_dir.display()
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still alive"
    );
    assert!(
        pods.get_opt("web").await?.is_none(),
        "pod object smoke/web still exists"
    );
    println!("pod stopped: netns, cgroup dir, process and pod object gone");

    let bridge = kubelet.bridge_name().to_owned();
    drop(kubelet);
    assert!(
        !std::path::Path::new("/sys/class/net").join(&bridge).exists(),
        "bridge {bridge} still exists"
    );
    drop(cp);
    println!("harness smoke test done in {:?}", t0.elapsed());
    Ok(())
}

/// Resources of a pod whose owner panicked, and of a pod whose workload died at start, are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_cleans_up_after_failures() -> anyhow::Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("failures".into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces.create(&PostParams::default(), &ns).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "failures");

    // A workload that exits before listening: start_pod fails with its log, nothing is left.
    let kubelet = FakeKubelet::start(client.clone(), "palisade-e2e-failures").await?;
    let err = kubelet
        .start_pod(PodLaunch {
            namespace: "failures".into(),
            name: "crash".into(),
            command: ["sh", "-c", "echo boom-before-listen >&2; exit 3"]
                .map(String::from)
                .to_vec(),
            port: 8080,
            ..PodLaunch::default()
        })
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    println!("start_pod of a crashing workload failed as expected: {err}");
    assert!(
        err.contains("boom-before-listen") && err.contains("exited"),
        "error: {err}"
    );
    assert!(
        pods.get_opt("crash").await?.is_none(),
        "pod object failures/crash left behind"
    );

    // A panic while the kubelet and a running pod are owned by a task: Drop cleans up.
    let bridge = kubelet.bridge_name().to_owned();
    let task = tokio::spawn(async move {
        let pod = kubelet
            .start_pod(PodLaunch {
                namespace: "failures".into(),
                name: "web".into(),
                command: ["python3", "-m", "http.server", "--bind", "0.0.0.0", "8081"]
                    .map(String::from)
                    .to_vec(),
                port: 8081,
                ..PodLaunch::default()
            })
            .await;
        let info = pod
            .as_ref()
            .map(|p| (p.netns_path(), p.cgroup_dir.clone(), p.pid))
            .ok();
        if let Some(info) = &info {
            // The leak check below needs the paths: print them for the record.
            println!("about to panic while owning pod: {info:?}");
        }
        std::panic::panic_any(info)
    });
    let payload = match task.await {
        Ok(()) => anyhow::bail!("the task did not panic"),
        Err(e) => e.into_panic(),
    };
    let Ok(info) = payload.downcast::<Option<(std::path::PathBuf, std::path::PathBuf, u32)>>() else {
        anyhow::bail!("unexpected panic payload");
    };
    let Some((netns_path, cgroup_dir, pid)) = *info else {
        anyhow::bail!("the pod did not start");
    };
    assert!(
        !netns_path.exists(),
        "netns {} survived the panic",
        netns_path.display()
    );
    assert!(
        !cgroup_dir.exists(),
        "cgroup {} survived the panic",
        cgroup_dir.display()
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} survived the panic"
    );
    assert!(
        !std::path::Path::new("/sys/class/net").join(&bridge).exists(),
        "bridge {bridge} survived"
    );
    println!("after the panic: netns, cgroup dir, process {pid} and bridge {bridge} are gone");
    Ok(())
}
