//! The harness plays the kubelet: a Node object for this machine, and pods that run as real
//! processes in their own cgroup (kubelet cgroupfs layout, by pod UID) and network namespace.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::host::{self, PodResources, POD_RANGE_PREFIX};
use crate::process::ChildGuard;

const PORT_TIMEOUT: Duration = Duration::from_secs(30);
const FIELD_MANAGER: &str = "palisade-fake-kubelet";
/// The image name written into pod specs (nothing pulls it).
pub const FAKE_IMAGE: &str = "palisade.local/e2e-process:latest";

/// What to run as a pod.
#[derive(Debug, Clone, Default)]
pub struct PodLaunch {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// argv of the workload; it must listen on `port` (TCP, on 0.0.0.0 or the pod IP).
    pub command: Vec<String>,
    pub port: u16,
}

/// A pod whose workload is running. Dropping it kills the workload and removes its netns, veth
/// and cgroup dir (the Pod object stays; use [`RunningPod::stop`] to delete it too).
#[derive(Debug)]
pub struct RunningPod {
    pub uid: String,
    pub ip: Ipv4Addr,
    pub namespace: String,
    pub name: String,
    pub cgroup_dir: PathBuf,
    pub netns: String,
    pub pid: u32,
    /// stdout and stderr of the workload.
    pub log_path: PathBuf,
    resources: PodResources,
}

impl RunningPod {
    /// Kills the workload, force-deletes the Pod object (grace period 0) and removes the pod's
    /// cgroup dir and netns.
    pub async fn stop(mut self, client: Client) -> Result<()> {
        self.resources.cleanup();
        let pods: Api<Pod> = Api::namespaced(client, &self.namespace);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        match pods.delete(&self.name, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(e).with_context(|| format!("deleting pod {}/{}", self.namespace, self.name));
            }
        }
        tracing::info!(pod = %format!("{}/{}", self.namespace, self.name), "pod stopped");
        Ok(())
    }

    /// The path of the pod's network namespace, for `nsenter --net=`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// `podIP:port`.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }
}

/// The kubelet of this machine as far as the API server and the node agent can tell.
/// First host octet of pod IPs (the podCIDR is the upper /25 of the bridge's /24).
const POD_IP_FIRST: u8 = 129;

pub struct FakeKubelet {
    client: Client,
    node_name: String,
    bridge: String,
    bridge_ip: Ipv4Addr,
    run_id: String,
    cgroup_root: PathBuf,
    /// Next host octet for a pod IP, and a counter for netns/veth names.
    next: Mutex<(u8, u32)>,
    log_dir: Option<tempfile::TempDir>,
    log_path: PathBuf,
}

impl FakeKubelet {
    /// Creates (or updates) the Node `node_name` with a Ready condition and an InternalIP (the
    /// bridge address), and a bridge in the root netns with a free 10.231.x.0/24.
    pub async fn start(client: Client, node_name: &str) -> Result<FakeKubelet> {
        let cgroup_root = host::cgroup2_root()?;
        let run_id = host::random_hex(6);
        let bridge = format!("plbr{run_id}");
        let bridge_ip = {
            let _lock = host::net_lock()?;
            let x = host::pick_subnet()?;
            let ip = Ipv4Addr::new(POD_RANGE_PREFIX[0], POD_RANGE_PREFIX[1], x, 1);
            host::create_bridge(&bridge, ip)?;
            ip
        };
        let log_dir = tempfile::Builder::new()
            .prefix("palisade-e2e-kubelet-")
            .tempdir()
            .context("creating the fake kubelet's log dir")?;
        let kubelet = FakeKubelet {
            client,
            node_name: node_name.to_owned(),
            bridge,
            bridge_ip,
            run_id,
            cgroup_root,
            // Pod IPs come from the upper half of the /24 (the node's podCIDR, x.y.z.128/25), so
            // the bridge address .1, the host's, is outside the pod network: traffic from the
            // test process is north-south, traffic from another pod east-west.
            next: Mutex::new((POD_IP_FIRST, 0)),
            log_path: log_dir.path().to_owned(),
            log_dir: Some(log_dir),
        };
        kubelet.register_node().await?;
        tracing::info!(node = %kubelet.node_name, bridge = %kubelet.bridge, ip = %kubelet.bridge_ip,
            "fake kubelet started");
        Ok(kubelet)
    }

    async fn register_node(&self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let o = self.bridge_ip.octets();
        let pod_cidr = format!("{}.{}.{}.128/25", o[0], o[1], o[2]);
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": arch,
                },
            },
        });
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        nodes
            .patch(&self.node_name, &pp, &Patch::Apply(&node))
            .await
            .with_context(|| format!("creating node {}", self.node_name))?;
        let now = now()?;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let condition = |type_: &str, status: &str, reason: &str| {
            json!({"type": type_, "status": status, "reason": reason, "message": "palisade fake kubelet",
                   "lastHeartbeatTime": now, "lastTransitionTime": now})
        };
        let status = json!({
            "status": {
                "conditions": [
                    condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                    condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                    condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                    condition("Ready", "True", "KubeletReady"),
                ],
                "addresses": [
                    {"type": "InternalIP", "address": self.bridge_ip.to_string()},
                    {"type": "Hostname", "address": self.node_name},
                ],
                "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                "nodeInfo": {
                    "machineID": "", "systemUUID": "", "bootID": "",
                    "kernelVersion": kernel.trim(),
                    "osImage": "palisade e2e host",
                    "containerRuntimeVersion": "palisade://0.1.0",
                    "kubeletVersion": "v1.35.4",
                    "kubeProxyVersion": "",
                    "operatingSystem": "linux",
                    "architecture": arch,
                },
            }
        });
        nodes
            .patch_status(&self.node_name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("writing the status of node {}", self.node_name))?;
        Ok(())
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The bridge's address: the pods' gateway, the node's InternalIP and the pods' hostIP.
    pub fn bridge_ip(&self) -> Ipv4Addr {
        self.bridge_ip
    }

    /// The bridge's interface name.
    pub fn bridge_name(&self) -> &str {
        &self.bridge
    }

    /// Where pod cgroups live: `<cgroup2 root>/kubepods/besteffort`.
    pub fn pods_cgroup_parent(&self) -> PathBuf {
        self.cgroup_root.join("kubepods").join("besteffort")
    }

    /// Creates the Pod object, runs its workload in the pod's cgroup and netns, waits until the
    /// port accepts connections and reports the pod Running and Ready through pods/status.
    pub async fn start_pod(&self, spec: PodLaunch) -> Result<RunningPod> {
        let what = format!("pod {}/{}", spec.namespace, spec.name);
        if spec.command.is_empty() {
            bail!("{what}: empty command");
        }
        let (host_octet, seq) = {
            let mut next = self
                .next
                .lock()
                .map_err(|_| anyhow::anyhow!("fake kubelet state poisoned"))?;
            if next.0 == 255 {
                bail!("{what}: no pod IP left in the bridge's /24");
            }
            let taken = *next;
            *next = (next.0 + 1, next.1 + 1);
            taken
        };
        let o = self.bridge_ip.octets();
        let ip = Ipv4Addr::new(o[0], o[1], o[2], host_octet);

        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &spec.namespace);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": spec.labels},
            "spec": {
                "nodeName": self.node_name,
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 0,
                "automountServiceAccountToken": false,
                "containers": [{
                    "name": "app",
                    "image": FAKE_IMAGE,
                    "command": spec.command,
                    "ports": [{"containerPort": spec.port, "protocol": "TCP"}],
                }],
            },
        }))
        .context("building the pod object")?;
        let created = pods
            .create(&PostParams::default(), &pod)
            .await
            .with_context(|| format!("creating {what}"))?;
        let uid = created
            .metadata
            .uid
            .clone()
            .with_context(|| format!("{what} has no uid"))?;

        match self.launch(&spec, &what, &pods, &uid, ip, seq).await {
            Ok(pod) => Ok(pod),
            Err(e) => {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                };
                if let Err(de) = pods.delete(&spec.name, &dp).await {
                    tracing::warn!(pod = %spec.name, namespace = %spec.namespace,
                        "deleting the pod object after a failed start: {de}");
                }
                Err(e)
            }
        }
    }

    async fn launch(
        &self,
        spec: &PodLaunch,
        what: &str,
        pods: &Api<Pod>,
        uid: &str,
        ip: Ipv4Addr,
        seq: u32,
    ) -> Result<RunningPod> {
        let mut res = PodResources::new(what);
        let cgroup_dir = self.pods_cgroup_parent().join(format!("pod{uid}"));
        res.make_cgroup(&cgroup_dir)?;
        // Like the kubelet, the workload runs in a container cgroup below the pod's.
        let container_dir = cgroup_dir.join(format!("app-{}-{seq}", self.run_id));
        std::fs::create_dir(&container_dir)
            .with_context(|| format!("creating container cgroup {}", container_dir.display()))?;
        let netns = format!("pal-{}-{seq}", self.run_id);
        let host_veth = format!("plv{}{seq:x}", self.run_id);
        res.make_netns(&netns, &host_veth, &self.bridge, ip, self.bridge_ip)?;

        let log_path = self
            .log_path
            .join(format!("{}_{}.log", spec.namespace, spec.name));
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"cg=$1; ns=$2; shift 2; echo $$ > "$cg/cgroup.procs" && exec nsenter --net="$ns" -- "$@""#)
            .arg("palisade-pod")
            .arg(&container_dir)
            .arg(Path::new("/run/netns").join(&netns))
            .args(&spec.command);
        let child = ChildGuard::spawn(what, &mut cmd, &log_path)?;
        let pid = child.pid();
        res.child = Some(child);

        wait_for_port(&mut res, what, SocketAddr::from((ip, spec.port))).await?;
        self.report_running(pods, &spec.name, ip, pid)
            .await
            .with_context(|| format!("reporting {what} running"))?;
        tracing::info!(pod = %format!("{}/{}", spec.namespace, spec.name), %uid, %ip, pid, "pod running");
        Ok(RunningPod {
            uid: uid.to_owned(),
            ip,
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            cgroup_dir,
            netns,
            pid,
            log_path,
            resources: res,
        })
    }

    async fn report_running(&self, pods: &Api<Pod>, name: &str, ip: Ipv4Addr, pid: u32) -> Result<()> {
        let now = now()?;
        let condition = |type_: &str| json!({"type": type_, "status": "True", "lastTransitionTime": now});
        let status = json!({
            "status": {
                "phase": "Running",
                "hostIP": self.bridge_ip.to_string(),
                "hostIPs": [{"ip": self.bridge_ip.to_string()}],
                "podIP": ip.to_string(),
                "podIPs": [{"ip": ip.to_string()}],
                "startTime": now,
                "conditions": [
                    condition("PodReadyToStartContainers"),
                    condition("Initialized"),
                    condition("Ready"),
                    condition("ContainersReady"),
                    condition("PodScheduled"),
                ],
                "containerStatuses": [{
                    "name": "app",
                    "image": FAKE_IMAGE,
                    "imageID": FAKE_IMAGE,
                    "containerID": format!("palisade://{pid}"),
                    "ready": true,
                    "started": true,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }],
            }
        });
        pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }

    /// Runs `cmd` inside the pod as `kubectl exec` would: in the workload's cgroup (so programs
    /// attached to the pod's cgroup see its traffic) and network namespace.
    pub fn exec_in_pod(&self, pod: &RunningPod, cmd: &[&str]) -> Output {
        // The workload's container cgroup: its last path component, below the pod's directory
        // (the path in /proc is relative to wherever the harness mounted cgroup2).
        let container = std::fs::read_to_string(format!("/proc/{}/cgroup", pod.pid))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("0::")
                        .map(|p| p.rsplit('/').next().unwrap_or_default().to_string())
                })
            })
            .unwrap_or_default();
        let dir = pod.cgroup_dir.join(container).display().to_string();
        let mut full = vec!["sh", "-c", r#"echo $$ > "$0/cgroup.procs" && exec "$@""#];
        full.push(&dir);
        full.extend_from_slice(cmd);
        self.exec_in_pod_netns(pod, &full)
    }

    /// Runs `cmd` in the pod's network namespace (via nsenter; the mount namespace is the
    /// host's). For east-west clients. Bring your own timeout (e.g. `timeout 10 curl ...`).
    pub fn exec_in_pod_netns(&self, pod: &RunningPod, cmd: &[&str]) -> Output {
        let result = Command::new("nsenter")
            .arg(format!("--net={}", pod.netns_path().display()))
            .arg("--")
            .args(cmd)
            .stdin(Stdio::null())
            .output();
        match result {
            Ok(out) => out,
            Err(e) => {
                use std::os::unix::process::ExitStatusExt;
                Output {
                    status: std::process::ExitStatus::from_raw(127 << 8),
                    stdout: Vec::new(),
                    stderr: format!("palisade-e2e: could not run nsenter for {cmd:?}: {e}").into_bytes(),
                }
            }
        }
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        if !crate::process::run_quiet("ip", &["link", "del", &self.bridge]) {
            tracing::warn!(bridge = %self.bridge, "could not delete bridge");
        }
        if let Some(dir) = self.log_dir.take() {
            if std::env::var_os(crate::control_plane::KEEP_ENV).is_some() {
                let kept = dir.keep();
                eprintln!("palisade-e2e: kept pod logs in {}", kept.display());
            } else {
                let _ = dir.close();
            }
        }
    }
}

async fn wait_for_port(res: &mut PodResources, what: &str, addr: SocketAddr) -> Result<()> {
    let start = Instant::now();
    loop {
        if let Some(child) = res.child.as_mut() {
            child
                .ensure_running()
                .with_context(|| format!("{what} exited before listening on {addr}"))?;
        }
        let ok = tokio::task::spawn_blocking(move || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(300))
        })
        .await
        .context("joining the connect task")?
        .is_ok();
        if ok {
            return Ok(());
        }
        if start.elapsed() > PORT_TIMEOUT {
            let tail = res.child.as_ref().map(|c| c.log_tail(30)).unwrap_or_default();
            bail!("timed out after {PORT_TIMEOUT:?} waiting for {what} to accept TCP on {addr}; log tail:\n{tail}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now() -> Result<serde_json::Value> {
    serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now())).context("formatting the current time")
}
