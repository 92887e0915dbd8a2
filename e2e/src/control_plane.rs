//! A real etcd and kube-apiserver on loopback, envtest-style (see
//! /work/shared/notes/k8s-control-plane.md in the project notes).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::sync::OnceCell;

use crate::certs::{self, Pki};
use crate::process::{check_output, free_ports, tcp_accepts, ChildGuard};

/// Env var naming a directory that holds etcd, kube-apiserver and kubectl (skips the build script).
pub const BIN_ENV: &str = "PALISADE_CONTROL_PLANE_BIN";
/// Env var that, when set, keeps the control plane's temp dir (logs, certs, etcd data) on drop.
pub const KEEP_ENV: &str = "PALISADE_E2E_KEEP";

const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
const APISERVER_TIMEOUT: Duration = Duration::from_secs(120);
const CRD_TIMEOUT: Duration = Duration::from_secs(60);

static BIN_DIR: OnceCell<PathBuf> = OnceCell::const_new();

/// A running etcd + kube-apiserver pair. Dropping it kills both (by pid) and removes its temp dir.
pub struct ControlPlane {
    bin_dir: PathBuf,
    root: PathBuf,
    dir: Option<tempfile::TempDir>,
    kubeconfig: PathBuf,
    server: String,
    pki: Option<Pki>,
    processes: Vec<ChildGuard>,
    started_in: Duration,
}

impl ControlPlane {
    /// [`ControlPlane::start`], then Palisade's CRDs (the workspace's `crds/`) applied and
    /// Established.
    pub async fn start_with_palisade_crds() -> Result<ControlPlane> {
        let cp = ControlPlane::start().await?;
        cp.apply_crds(&crate::workspace_root().join("crds")).await?;
        Ok(cp)
    }

    /// Finds (or builds) the binaries, makes the PKI, starts etcd and kube-apiserver and waits
    /// until `/readyz` answers `ok`.
    pub async fn start() -> Result<ControlPlane> {
        let bin_dir = bin_dir().await?;
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("palisade-e2e-cp-")
            .tempdir()
            .context("creating the control plane's temp dir")?;
        let root = dir.path().to_owned();
        let mut cp = ControlPlane {
            bin_dir,
            kubeconfig: root.join("admin.kubeconfig"),
            root,
            dir: Some(dir),
            server: String::new(),
            pki: None,
            processes: Vec::new(),
            started_in: Duration::ZERO,
        };
        let pki_dir = cp.root.join("pki");
        std::fs::create_dir(&pki_dir).context("creating the pki dir")?;
        let pki = tokio::task::spawn_blocking(move || certs::generate(&pki_dir))
            .await
            .context("joining the PKI generation task")?
            .context("generating the control plane's certificates")?;
        tracing::debug!(elapsed = ?started.elapsed(), "PKI generated");

        let ports = free_ports(3)?;
        let (etcd_port, peer_port, api_port) = (ports[0], ports[1], ports[2]);
        cp.start_etcd(etcd_port, peer_port).await?;
        cp.server = format!("https://127.0.0.1:{api_port}");
        cp.write_kubeconfig(&pki)?;
        cp.start_apiserver(&pki, etcd_port, api_port).await?;
        cp.pki = Some(pki);
        cp.started_in = started.elapsed();
        tracing::info!(server = %cp.server, dir = %cp.root.display(), started_in = ?cp.started_in,
            "control plane ready");
        Ok(cp)
    }

    async fn start_etcd(&mut self, port: u16, peer_port: u16) -> Result<()> {
        let client_url = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(self.bin_dir.join("etcd"));
        cmd.arg("--name=palisade-e2e")
            .arg(format!("--data-dir={}", self.root.join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=palisade-e2e={peer_url}"))
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        let guard = ChildGuard::spawn("etcd", &mut cmd, &self.root.join("etcd.log"))?;
        self.processes.push(guard);
        let addr = ([127, 0, 0, 1], port).into();
        let start = Instant::now();
        loop {
            self.last_process()?
                .ensure_running()
                .context("etcd did not start (set PALISADE_E2E_KEEP=1 to keep its temp dir)")?;
            if tcp_accepts(addr, Duration::from_millis(200)) {
                break;
            }
            if start.elapsed() > ETCD_TIMEOUT {
                let tail = self.last_process()?.log_tail(40);
                bail!(
                    "timed out after {ETCD_TIMEOUT:?} waiting for etcd to accept connections on {addr}; \
                     log tail:\n{tail}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::debug!(%client_url, elapsed = ?start.elapsed(), "etcd accepting connections");
        Ok(())
    }

    async fn start_apiserver(&mut self, pki: &Pki, etcd_port: u16, port: u16) -> Result<()> {
        let p = |p: &Path| p.display().to_string();
        let mut cmd = Command::new(self.bin_dir.join("kube-apiserver"));
        cmd.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--cert-dir={}",
                self.root.join("apiserver-certs").display()
            ))
            .arg(format!("--tls-cert-file={}", p(&pki.serving_cert)))
            .arg(format!("--tls-private-key-file={}", p(&pki.serving_key)))
            .arg(format!("--client-ca-file={}", p(&pki.ca_cert)))
            .arg(format!("--secure-port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--allow-privileged=true")
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", p(&pki.sa_pub)))
            .arg(format!("--service-account-signing-key-file={}", p(&pki.sa_key)))
            .arg("--endpoint-reconciler-type=none")
            .arg("--disable-admission-plugins=ServiceAccount");
        let guard = ChildGuard::spawn("kube-apiserver", &mut cmd, &self.root.join("kube-apiserver.log"))?;
        self.processes.push(guard);

        // Polled with kubectl rather than the kube client: the client logs every 500 answer of a
        // starting apiserver at ERROR level.
        let start = Instant::now();
        loop {
            self.last_process()?
                .ensure_running()
                .context("kube-apiserver did not start (set PALISADE_E2E_KEEP=1 to keep its temp dir)")?;
            let readyz = tokio::process::Command::new(self.kubectl_bin())
                .args(["get", "--raw=/readyz", "--request-timeout=5s"])
                .env("KUBECONFIG", &self.kubeconfig)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output();
            let last = match tokio::time::timeout(Duration::from_secs(10), readyz).await {
                Ok(Ok(out))
                    if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" =>
                {
                    break
                }
                Ok(Ok(out)) => {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    )
                }
                Ok(Err(e)) => format!("running kubectl: {e}"),
                Err(_) => "kubectl get --raw=/readyz timed out after 10s".to_owned(),
            };
            if start.elapsed() > APISERVER_TIMEOUT {
                let tail = self.last_process()?.log_tail(40);
                bail!(
                    "timed out after {APISERVER_TIMEOUT:?} waiting for kube-apiserver /readyz at {}; \
                     last answer: {last}; log tail:\n{tail}",
                    self.server
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tracing::debug!(elapsed = ?start.elapsed(), "kube-apiserver ready");
        Ok(())
    }

    fn last_process(&mut self) -> Result<&mut ChildGuard> {
        self.processes.last_mut().context("no process started")
    }

    fn write_kubeconfig(&self, pki: &Pki) -> Result<()> {
        let yaml = format!(
            "apiVersion: v1
kind: Config
clusters:
- name: palisade-e2e
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: palisade-e2e
  context:
    cluster: palisade-e2e
    user: admin
    namespace: default
current-context: palisade-e2e
",
            server = self.server,
            ca = pki.ca_cert.display(),
            cert = pki.admin_cert.display(),
            key = pki.admin_key.display(),
        );
        std::fs::write(&self.kubeconfig, yaml)
            .with_context(|| format!("writing kubeconfig {}", self.kubeconfig.display()))
    }

    /// The admin kubeconfig (client certificate in group system:masters).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The apiserver URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server
    }

    /// The temp dir holding logs (`etcd.log`, `kube-apiserver.log`), certificates and etcd data.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Where this test's agents pin their enforcement maps and links (on bpffs, one directory
    /// per control plane, removed with it), below it one per node.
    pub fn bpf_pin_dir(&self, node: &str) -> PathBuf {
        let id = self
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Path::new(BPF_PIN_ROOT).join(id).join(node)
    }

    /// The CA certificate that signed the serving and client certificates.
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.pki.as_ref().map(|p| p.ca_cert.as_path())
    }

    /// How long `start` took, from the binaries being found to `/readyz` answering `ok`.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The directory holding etcd, kube-apiserver and kubectl.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The kubectl built with the same version as the server.
    pub fn kubectl_bin(&self) -> PathBuf {
        self.bin_dir.join("kubectl")
    }

    /// A kube client authenticated as the admin.
    pub async fn client(&self) -> Result<Client> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading kubeconfig {}", self.kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .context("loading the admin kubeconfig")?;
        Client::try_from(config).context("building the kube client")
    }

    /// Runs kubectl with `KUBECONFIG` set to the admin kubeconfig; the exit status is not checked.
    pub fn kubectl(&self, args: &[&str]) -> Result<Output> {
        self.kubectl_os(args)
    }

    /// `kubectl apply` of YAML text (kept as a numbered file in the control plane's directory).
    pub fn apply_yaml(&self, yaml: &str) -> Result<String> {
        static APPLIED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = APPLIED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let file = self.root.join(format!("applied-{n}.yaml"));
        std::fs::write(&file, yaml).with_context(|| format!("writing {}", file.display()))?;
        self.kubectl_ok(&["apply", "-f", &file.display().to_string()])
    }

    /// `kubectl apply -f config/samples`: the demo namespace, OpenAPI ConfigMap, ApiMonitor and
    /// ApiPolicy, as the README applies them. Returns kubectl's output.
    pub fn apply_samples(&self) -> Result<String> {
        let samples = crate::workspace_root().join("config/samples");
        self.kubectl_ok(&["apply", "-f", &samples.display().to_string()])
    }

    /// Like [`ControlPlane::kubectl`], but fails (with stderr) on a non-zero exit and returns stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl(args)?;
        check_output(&format!("kubectl {}", args.join(" ")), &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn kubectl_os<S: AsRef<OsStr>>(&self, args: &[S]) -> Result<Output> {
        Command::new(self.kubectl_bin())
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.kubectl_bin().display()))
    }

    /// `kubectl apply --server-side -f` every `*.yaml`/`*.yml` file of `dir` (sorted by name), then
    /// waits until every CustomResourceDefinition they contain is Established.
    pub async fn apply_crds(&self, dir: &Path) -> Result<()> {
        let files = yaml_files(dir)?;
        if files.is_empty() {
            bail!("no *.yaml or *.yml files in {}", dir.display());
        }
        let mut names = Vec::new();
        for file in &files {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            names.extend(crd_names(&text).with_context(|| format!("parsing {}", file.display()))?);
            let args = [
                OsStr::new("apply"),
                OsStr::new("--server-side"),
                OsStr::new("--field-manager=palisade-e2e"),
                OsStr::new("-f"),
                file.as_os_str(),
            ];
            let out = self.kubectl_os(&args)?;
            check_output(
                &format!("kubectl apply --server-side -f {}", file.display()),
                &out,
            )?;
        }
        let crds: Api<CustomResourceDefinition> = Api::all(self.client().await?);
        let start = Instant::now();
        for name in &names {
            loop {
                let established = match crds.get_opt(name).await {
                    Ok(crd) => crd
                        .and_then(|c| c.status)
                        .and_then(|s| s.conditions)
                        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True")),
                    Err(e) => {
                        tracing::debug!(%name, "reading CRD: {e}");
                        false
                    }
                };
                if established {
                    break;
                }
                if start.elapsed() > CRD_TIMEOUT {
                    bail!("timed out after {CRD_TIMEOUT:?} waiting for CRD {name} to become Established");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tracing::info!(files = files.len(), crds = ?names, "CRDs applied and established");
        Ok(())
    }
}

/// bpffs directory under which e2e agents pin (see [`ControlPlane::bpf_pin_dir`]).
const BPF_PIN_ROOT: &str = "/sys/fs/bpf/palisade-e2e";

impl Drop for ControlPlane {
    fn drop(&mut self) {
        while let Some(mut p) = self.processes.pop() {
            p.kill();
        }
        // Unpinning releases the maps and the enforcement links (agents are stopped by now).
        if let Some(pins) = self.bpf_pin_dir("x").parent() {
            let _ = std::fs::remove_dir_all(pins);
        }
        if let Some(dir) = self.dir.take() {
            if std::env::var_os(KEEP_ENV).is_some() {
                // Logs, certificates and kubeconfig stay; etcd's data (>100 MB of WAL) does not.
                let _ = std::fs::remove_dir_all(self.root.join("etcd"));
                let kept = dir.keep();
                eprintln!(
                    "palisade-e2e: kept control plane dir {} ({KEEP_ENV} is set)",
                    kept.display()
                );
            } else if let Err(e) = dir.close() {
                tracing::warn!("removing {}: {e}", self.root.display());
            }
        }
    }
}

/// The `*.yaml` / `*.yml` files directly in `dir`, sorted. A missing dir yields an empty list.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if is_yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Names of the CustomResourceDefinitions in a (multi-document) YAML text.
fn crd_names(text: &str) -> Result<Vec<String>> {
    use serde::Deserialize;
    let mut names = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.get("kind").and_then(|k| k.as_str()) == Some("CustomResourceDefinition") {
            let name = value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                .context("a CustomResourceDefinition without metadata.name")?;
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// The directory holding etcd, kube-apiserver and kubectl: `$PALISADE_CONTROL_PLANE_BIN`, else the
/// last line printed by `hack/build-control-plane.sh` (run once per process, under a file lock so
/// concurrent test processes do not build the same binaries twice).
pub async fn bin_dir() -> Result<PathBuf> {
    BIN_DIR.get_or_try_init(find_bin_dir).await.cloned()
}

async fn find_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_ENV) {
        let dir = PathBuf::from(dir);
        check_bins(&dir).with_context(|| format!("checking {BIN_ENV}={}", dir.display()))?;
        return Ok(dir);
    }
    let script = crate::workspace_root().join("hack/build-control-plane.sh");
    let cache = std::env::var_os("PALISADE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/palisade")))
        .context("neither PALISADE_CACHE nor HOME is set")?;
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    let lock = cache.join("control-plane.build.lock");
    tracing::info!(script = %script.display(), "finding the control plane binaries (a cold build takes minutes)");
    let started = Instant::now();
    let out = tokio::process::Command::new("flock")
        .arg(&lock)
        .arg("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running flock {} bash {}", lock.display(), script.display()))?;
    if !out.status.success() {
        bail!("{} failed with {}", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .with_context(|| format!("{} printed no directory", script.display()))?;
    check_bins(&dir)?;
    tracing::info!(dir = %dir.display(), elapsed = ?started.elapsed(), "control plane binaries found");
    Ok(dir)
}

fn check_bins(dir: &Path) -> Result<()> {
    for bin in ["etcd", "kube-apiserver", "kubectl"] {
        let path = dir.join(bin);
        if !path.is_file() {
            bail!("{} is missing", path.display());
        }
    }
    Ok(())
}
