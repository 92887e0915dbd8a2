//! `palisade-node-agent`: follows its node's configuration from the operator, captures the HTTP
//! traffic of monitored pods with eBPF, and reports endpoints and findings back.

use anyhow::Context;
use clap::Parser;
use palisade_api::agent::agent_control_client::AgentControlClient;
use palisade_api::agent::{FeatureProbe, NodeConfig, WatchConfigRequest};
use palisade_common::CaptureCounters;
use palisade_node_agent::capture::tls::{ProbePlacement, TlsProbes};
use palisade_node_agent::capture::{AllowPrefix, CaptureProbes, CaptureRing};
use palisade_node_agent::features::probe_node_features;
use palisade_node_agent::runtime::{CaptureBackend, Runtime};
use palisade_node_agent::tls_client::{operator_channel, TlsFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tonic::transport::Channel;

/// Parsing a captured request makes and frees a few dozen small strings; mimalloc does that
/// faster than glibc's malloc (see the `capture` benchmark's `runtime` group).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(version, about = "Palisade node agent")]
struct Args {
    /// Name of the Kubernetes node this agent runs on.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// The operator's agent gRPC endpoint: `https://...` with the --tls-* flags (mutual TLS),
    /// `http://...` without (plaintext, for local demos).
    #[arg(long, env = "PALISADE_OPERATOR", default_value = "http://127.0.0.1:9443")]
    operator: String,
    /// PEM client certificate (chain) presented to the operator; re-read on every reconnect.
    #[arg(long, env = "PALISADE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "PALISADE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PEM CA (bundle) the operator's certificate must be signed by.
    #[arg(long, env = "PALISADE_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Name to verify the operator's certificate for (default: the host in --operator).
    #[arg(long, env = "PALISADE_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
    /// Where the BPF file system is (or is to be mounted).
    #[arg(long, default_value = "/sys/fs/bpf")]
    bpffs: PathBuf,
    /// Where enforcement pins its maps and links (blocks survive the agent): default
    /// `<bpffs>/palisade`.
    #[arg(long)]
    bpf_pin_dir: Option<PathBuf>,
    /// Do not mount bpffs or tracefs when they are missing.
    #[arg(long)]
    no_mount: bool,
    /// cgroup v2 root to find pods under (default: found in /proc/self/mountinfo).
    #[arg(long)]
    cgroup_root: Option<PathBuf>,
    /// Least time between two drains of the capture ring buffer, in milliseconds: an idle agent
    /// sleeps until the kernel says a record arrived; under load it reads records in batches at
    /// most this often. Each drain has a fixed cost (a wake-up, and caches refilled after other
    /// work ran): with 10 ms instead of 2 ms the agent's CPU per request fell by about a fifth in
    /// the overhead benchmark. The rings (one per CPU: 32 MiB together on up to 16 CPUs, 2 MiB
    /// each on more, and a shared 16 MiB one a full ring overflows into) hold 10 ms of more
    /// than 3 GB/s of capture; a longer interval only makes sense to test loss accounting
    /// (records the full rings cannot take are counted as lost).
    /// Findings leave the node once per report interval anyway.
    #[arg(long, env = "PALISADE_DRAIN_INTERVAL_MS", default_value = "10")]
    drain_interval_ms: u64,
    /// The gap between drains, in milliseconds, while each drain finds at least 1/16 of the ring
    /// (2 MiB): large bodies fill the ring fast, and draining it sooner keeps its room for the
    /// moments the agent is not scheduled. At most `--drain-interval-ms`.
    #[arg(long, env = "PALISADE_BUSY_DRAIN_INTERVAL_MS", default_value = "1")]
    busy_drain_interval_ms: u64,
    /// How often to report to the operator, in milliseconds.
    #[arg(long, default_value = "1000")]
    report_interval_ms: u64,
    /// Where to serve Prometheus metrics (`/metrics`) and `/healthz`.
    #[arg(long, env = "PALISADE_METRICS_LISTEN", default_value = "0.0.0.0:9464")]
    metrics_listen: std::net::SocketAddr,
    /// Log as JSON lines.
    #[arg(long, env = "PALISADE_LOG_JSON")]
    log_json: bool,
    /// How TLS plaintext is captured in the processes of pods whose monitor enables TLS:
    /// `keys`: a uprobe on `SSL_do_handshake` only, once per connection; the agent decrypts the
    /// captured TLS 1.3 and 1.2 records with the session's secrets (no trap per request; what
    /// it cannot decrypt is counted as not decrypted). `calls`: every read and write is probed, in
    /// OpenSSL's internal read and write functions when they are found in the library's code
    /// (fewer, cheaper traps), else in the exported ones. `auto`: `keys`, and `calls` too for a
    /// process with a connection the agent could not decrypt. `exported`: always `SSL_read`,
    /// `SSL_read_ex`, `SSL_write`, `SSL_write_ex` (the escape hatch, and the benchmark's
    /// reference).
    #[arg(long, env = "PALISADE_TLS_PROBES", default_value = "auto", value_parser = ["auto", "calls", "exported", "keys"])]
    tls_probes: String,
}

/// The kernel side: cgroup_skb capture, and TLS uprobes once a monitor asks for them.
struct KernelCapture {
    probes: CaptureProbes,
    /// `None` until a monitor enables TLS; then the loaded probes or why they did not load.
    tls: Option<Result<TlsProbes, String>>,
    tls_placement: ProbePlacement,
}

impl KernelCapture {
    /// Loads the TLS probes (once) so that they write into the capture ring.
    fn ensure_tls(&mut self, ring: Option<&CaptureRing>, bpffs: Option<&Path>) {
        if self.tls.is_some() {
            return;
        }
        let loaded = match (ring, bpffs) {
            (Some(ring), Some(bpffs)) => TlsProbes::load_sharing(ring, bpffs).map_err(|e| e.to_string()),
            (None, _) => Err("the capture ring is not available".to_string()),
            (_, None) => {
                Err("TLS capture needs bpffs to share the capture ring (see node errors)".to_string())
            }
        };
        let loaded = loaded.map(|mut tls| {
            tls.set_placement(self.tls_placement);
            tls
        });
        match &loaded {
            Ok(_) => tracing::info!(placement = ?self.tls_placement, "TLS probes loaded"),
            Err(reason) => tracing::warn!(%reason, "TLS probes not loaded"),
        }
        self.tls = Some(loaded);
    }
}

impl CaptureBackend for KernelCapture {
    fn attach(&mut self, cgroup_dir: &Path) -> Result<u64, String> {
        self.probes.attach_cgroup(cgroup_dir).map_err(|e| e.to_string())
    }
    fn detach(&mut self, cgroup_dir: &Path) -> Result<(), String> {
        self.probes.detach_cgroup(cgroup_dir).map_err(|e| e.to_string())
    }
    fn enforce_pod(&mut self, pod_uid: &str, cgroup_dir: &Path, egress: bool) -> Result<bool, String> {
        self.probes
            .enforce_cgroup(pod_uid, cgroup_dir, egress)
            .map(|a| a == palisade_node_agent::capture::EnforcementAttach::Adopted)
            .map_err(|e| e.to_string())
    }
    fn release_pod(&mut self, pod_uid: &str) {
        self.probes.release_cgroup(pod_uid);
    }
    fn pinned_enforcement_pods(&mut self) -> Vec<String> {
        self.probes.pinned_enforcement_pods()
    }
    fn block(&mut self, key: palisade_common::BlockKey, expires_ns: u64) -> Result<(), String> {
        self.probes.block(key, expires_ns).map_err(|e| e.to_string())
    }
    fn unblock(&mut self, key: &palisade_common::BlockKey) -> Result<u64, String> {
        self.probes.unblock(key).map_err(|e| e.to_string())
    }
    fn blocks(&mut self) -> Vec<(palisade_common::BlockKey, palisade_common::BlockValue)> {
        self.probes.blocks().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the blocked-sources map");
            vec![]
        })
    }
    fn isolate(
        &mut self,
        cgroup_id: u64,
        expires_ns: u64,
        flags: u64,
        cause: [u8; 16],
        allow: &[AllowPrefix],
        remove: &[AllowPrefix],
    ) -> Result<(), String> {
        self.probes
            .isolate(cgroup_id, expires_ns, flags, cause, allow, remove)
            .map_err(|e| e.to_string())
    }
    fn unisolate(&mut self, cgroup_id: u64, allow: &[AllowPrefix]) -> Result<(), String> {
        self.probes
            .unisolate(cgroup_id, allow)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn isolations(&mut self) -> Vec<(u64, palisade_common::IsolationValue)> {
        self.probes.isolations().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "reading the isolated-workloads map");
            vec![]
        })
    }
    fn set_capture_filter(
        &mut self,
        key: palisade_common::CaptureFilterKey,
        filter: Option<&palisade_common::CaptureFilter>,
    ) -> Result<(), String> {
        self.probes.set_filter(key, filter).map_err(|e| e.to_string())
    }
    fn counters(&self) -> CaptureCounters {
        let mut c = self.probes.counters().unwrap_or_default();
        // The TLS programs keep their own copy of the counters: add them up.
        if let Some(Ok(tls)) = &self.tls {
            c.add(&tls.counters().unwrap_or_default());
        }
        c
    }
    fn tls_decrypts(&self) -> bool {
        self.tls_placement.decrypts()
    }
    fn tls_session_pointer(&mut self, pid: u32, offset: usize) -> Result<(), String> {
        let offset = u32::try_from(offset).map_err(|e| e.to_string())?;
        match &mut self.tls {
            Some(Ok(tls)) => tls.set_session_pointer(pid, offset).map_err(|e| e.to_string()),
            _ => self.tls_ready(),
        }
    }
    fn tls_fall_back(&mut self, pid: u32) -> Result<bool, String> {
        if self.tls_placement != ProbePlacement::Auto {
            return Ok(false);
        }
        match &mut self.tls {
            Some(Ok(tls)) => tls
                .add_call_probes(pid)
                .map(|att| {
                    tracing::info!(pid, functions = ?att.functions, "TLS probes on every read and write added");
                    true
                })
                .map_err(|e| e.to_string()),
            _ => self.tls_ready().map(|()| false),
        }
    }
    fn tls_ready(&self) -> Result<(), String> {
        match &self.tls {
            Some(Ok(_)) => Ok(()),
            Some(Err(reason)) => Err(reason.clone()),
            None => Err("TLS probes are loaded when a monitor enables TLS".into()),
        }
    }
    fn attach_tls(&mut self, pid: u32, libssl: &Path) -> Result<(), String> {
        match &mut self.tls {
            Some(Ok(tls)) => tls
                .attach_tls(pid, libssl)
                .map(|att| {
                    tracing::info!(
                        pid,
                        functions = ?att.functions,
                        internal_not_used = att.internal_not_used.as_deref().unwrap_or(""),
                        "TLS probes placed"
                    );
                })
                .map_err(|e| e.to_string()),
            _ => self.tls_ready(),
        }
    }
    fn detach_tls(&mut self, pid: u32) {
        if let Some(Ok(tls)) = &mut self.tls {
            if let Err(error) = tls.detach_tls(pid) {
                tracing::debug!(%error, pid, "TLS detach");
            }
        }
    }
}

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Follows the node's configuration stream, reconnecting with backoff; publishes each version.
/// Records read per drain at most (then the loop serves its other work and drains again).
const DRAIN_BATCH: usize = 16_384;
/// A drain at least this often (or every drain interval, if longer) whatever the ring's
/// notifications say.
const DRAIN_FALLBACK_MS: u64 = 100;

/// Resolves when the ring should be drained: not before `not_before`, then at once if the last
/// drain left records behind, else when the kernel says records arrived. Never without a ring.
async fn ring_ready(ring: Option<&AsyncFd<CaptureRing>>, not_before: tokio::time::Instant, backlog: bool) {
    tokio::time::sleep_until(not_before).await;
    let Some(ring) = ring else {
        return std::future::pending().await;
    };
    if backlog {
        return;
    }
    match ring.readable().await {
        // Cleared before the drain: a record that arrives during it notifies again.
        Ok(mut guard) => guard.clear_ready(),
        Err(e) => {
            tracing::warn!(error = %e, "polling the capture ring failed; draining on the fallback tick");
            std::future::pending().await
        }
    }
}

/// Payload bytes per drain from which the next drain comes after the busy gap
/// (`--busy-drain-interval-ms`): 1/16 of the ring.
const BUSY_DRAIN_BYTES: usize = palisade_common::CAPTURE_RING_BYTES as usize / 16;

/// What one drain read.
struct Drained {
    /// Records were left in the rings (at [`DRAIN_BATCH`], later than the merge's watermark, or
    /// arrived during the drain): the next drain comes after the gap without waiting for a
    /// notification.
    backlog: bool,
    /// Payload bytes read.
    bytes: usize,
}

impl Drained {
    /// When to drain next: after `gap`, or `busy_gap` while the ring fills fast.
    fn next_drain(&self, gap: Duration, busy_gap: Duration) -> tokio::time::Instant {
        let gap = if self.bytes >= BUSY_DRAIN_BYTES {
            gap.min(busy_gap)
        } else {
            gap
        };
        tokio::time::Instant::now() + gap
    }
}

/// Drains the ring into the runtime.
fn drain_ring<B: CaptureBackend>(
    ring: Option<&mut AsyncFd<CaptureRing>>,
    runtime: &mut Runtime<B>,
) -> Drained {
    let Some(ring) = ring else {
        return Drained {
            backlog: false,
            bytes: 0,
        };
    };
    let ring = ring.get_mut();
    let (fullest, total_bytes) = ring.fill();
    runtime.metrics().ring_fill(fullest, total_bytes);
    let mut bytes = 0;
    let drain = ring.drain(DRAIN_BATCH, |h, d| {
        bytes += d.len();
        runtime.on_record(h, d)
    });
    runtime.metrics().drained(drain.delivered as u64);
    runtime
        .metrics()
        .shared_ring_records(ring.records_per_ring().first().copied().unwrap_or(0));
    runtime.metrics().dropped("malformed_record", ring.bad_records());
    Drained {
        backlog: drain.more,
        bytes,
    }
}

async fn follow_config(channel: Channel, node: String, tx: watch::Sender<Option<NodeConfig>>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut client = AgentControlClient::new(channel.clone());
        let request = WatchConfigRequest {
            node_name: node.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
        };
        match client.watch_config(request).await {
            Ok(response) => {
                tracing::info!("connected to the operator");
                backoff = Duration::from_millis(200);
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(cfg)) => {
                            tracing::info!(
                                version = cfg.version,
                                monitors = cfg.monitors.len(),
                                policies = cfg.policies.len(),
                                "configuration received"
                            );
                            tx.send_replace(Some(cfg));
                        }
                        Ok(None) => {
                            tracing::warn!("operator closed the configuration stream");
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(%status, "configuration stream failed");
                            break;
                        }
                    }
                }
            }
            Err(status) => tracing::warn!(%status, "cannot reach the operator; retrying"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }

    let features = probe_node_features(&args.bpffs, !args.no_mount);
    palisade_node_agent::detect::warm_up();
    for f in features.missing() {
        tracing::warn!(feature = %f.name, reason = %f.reason, "kernel feature not available");
    }
    let mut node_errors = vec![];
    if features.bpffs.is_none() {
        let reason = features
            .get("bpffs")
            .map(|f| f.reason.clone())
            .unwrap_or_default();
        node_errors.push(format!(
            "bpffs is not available at {}: {reason}",
            args.bpffs.display()
        ));
    }
    let cgroup_root = args.cgroup_root.clone().or(features.cgroup2_root.clone());
    let mut ring: Option<CaptureRing> = None;
    let pin_dir = args
        .bpf_pin_dir
        .clone()
        .unwrap_or_else(|| args.bpffs.join("palisade"));
    // Without a usable pin directory, capture still runs; enforcement then reports why not.
    let loaded = CaptureProbes::load_pinned(Some(&pin_dir)).or_else(|e| {
        tracing::error!(error = %e, pin_dir = %pin_dir.display(), "enforcement maps could not be pinned; loading capture without enforcement");
        CaptureProbes::load()
    });
    let backend = match loaded {
        Ok(mut probes) => match probes.take_ring() {
            Ok(r) => {
                ring = Some(r);
                Ok(KernelCapture {
                    probes,
                    tls: None,
                    tls_placement: match args.tls_probes.as_str() {
                        "calls" => ProbePlacement::Calls,
                        "exported" => ProbePlacement::Exported,
                        "keys" => ProbePlacement::SessionKeys,
                        _ => ProbePlacement::Auto,
                    },
                })
            }
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    if let Err(reason) = &backend {
        tracing::error!(%reason, "capture programs could not be loaded; the agent keeps running and reports this");
    }
    let probes: Vec<FeatureProbe> = features
        .probes
        .iter()
        .map(|f| FeatureProbe {
            name: f.name.clone(),
            available: f.available,
            reason: f.reason.clone(),
        })
        .collect();
    let instance = format!("{}-{}", std::process::id(), clock_ns(libc::CLOCK_REALTIME));
    let clock_offset = clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC);
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen).await;
    if let Err(e) = &metrics_listener {
        node_errors.push(format!(
            "metrics endpoint {} not served: {e}",
            args.metrics_listen
        ));
    }
    let mut runtime = Runtime::new(
        args.node_name.clone(),
        instance,
        cgroup_root,
        backend,
        node_errors,
        probes,
        clock_offset,
    );
    if let Ok(listener) = metrics_listener {
        let metrics = runtime.metrics();
        tokio::spawn(async move {
            if let Err(error) = palisade_node_agent::metrics::serve(listener, metrics).await {
                tracing::error!(%error, "metrics endpoint stopped");
            }
        });
    }

    let tls = TlsFlags {
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
        ca: args.tls_ca.clone(),
        server_name: args.tls_server_name.clone(),
    };
    let channel = operator_channel(&args.operator, &tls).context("the channel to the operator")?;
    let (cfg_tx, mut cfg_rx) = watch::channel(None);
    tokio::spawn(follow_config(channel.clone(), args.node_name.clone(), cfg_tx));
    let mut client = AgentControlClient::new(channel);

    // The capture programs submit with adaptive wake-ups: the kernel notifies only when a record
    // arrives while the reader has read everything. So an idle agent sleeps on the ring's file
    // descriptor (no timer wake-ups), and under load, where the agent waits at least the drain
    // interval between drains, the kernel does not notify at all and records are read in
    // batches. A slow tick guards against a missed notification.
    let mut ring = match ring.map(CaptureRing::into_async).transpose() {
        Ok(ring) => ring,
        Err(e) => anyhow::bail!("the capture ring buffer cannot be polled: {e}"),
    };
    let drain_gap = Duration::from_millis(args.drain_interval_ms.max(1));
    let busy_drain_gap = Duration::from_millis(args.busy_drain_interval_ms.max(1));
    let mut next_drain = tokio::time::Instant::now();
    let mut ring_backlog = false;
    let mut drain_fallback = tokio::time::interval(drain_gap.max(Duration::from_millis(DRAIN_FALLBACK_MS)));
    drain_fallback.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut report = tokio::time::interval(Duration::from_millis(args.report_interval_ms.max(100)));
    report.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut housekeeping = tokio::time::interval(Duration::from_secs(10));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tracing::info!(node = %args.node_name, operator = %args.operator, "agent started");

    loop {
        let mut send_report = false;
        tokio::select! {
            changed = cfg_rx.changed() => {
                if changed.is_err() { break; }
                let cfg = cfg_rx.borrow_and_update().clone();
                if let Some(cfg) = cfg {
                    if cfg.monitors.iter().any(|m| m.tls) {
                        let bpffs = features.bpffs.as_deref();
                        if let Some(backend) = runtime.backend_mut() {
                            backend.ensure_tls(ring.as_ref().map(AsyncFd::get_ref), bpffs);
                        }
                    }
                    runtime.apply(cfg);
                    send_report = true;
                }
            }
            () = ring_ready(ring.as_ref(), next_drain, ring_backlog) => {
                let drained = drain_ring(ring.as_mut(), &mut runtime);
                ring_backlog = drained.backlog;
                next_drain = drained.next_drain(drain_gap, busy_drain_gap);
            }
            _ = drain_fallback.tick() => {
                if tokio::time::Instant::now() >= next_drain {
                    let drained = drain_ring(ring.as_mut(), &mut runtime);
                    ring_backlog = drained.backlog;
                    next_drain = drained.next_drain(drain_gap, busy_drain_gap);
                }
            }
            _ = report.tick() => {
                runtime.expire_actions(clock_ns(libc::CLOCK_MONOTONIC) as u64);
                send_report = true;
            }
            _ = housekeeping.tick() => runtime.housekeeping(clock_ns(libc::CLOCK_MONOTONIC) as u64),
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
        if send_report {
            let r = runtime.take_report();
            match tokio::time::timeout(Duration::from_secs(2), client.report(r.clone())).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => {
                    tracing::warn!(%status, "report not delivered; kept for the next one");
                    runtime.restore(r);
                }
                Err(_) => {
                    tracing::warn!("report timed out; kept for the next one");
                    runtime.restore(r);
                }
            }
        }
    }
    tracing::info!(
        attached = runtime.attached_pods(),
        "agent stopping; capture detaches with it"
    );
    Ok(())
}
