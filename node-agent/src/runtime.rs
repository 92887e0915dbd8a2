//! The agent's state machine: applies a node configuration to the kernel (attach/detach capture
//! per pod), turns captured records into endpoint counts and findings, and builds reports.
//!
//! Kept free of I/O other than the kernel calls behind [`CaptureBackend`], so it is unit-tested
//! with a fake backend.

use crate::capture::monotonic_ns;
use crate::capture_filters::CaptureFilters;
use crate::cidr::{traffic_class, Cidr};
use crate::detect::behaviour::ExchangeView;
use crate::detect::{CompiledRule, Inputs, RequestView};
use crate::http::{CaptureLimits, Exchange, HttpEvent, HttpTracker, PodRole, Request};
use crate::inventory::{ExchangeFacts, MonitorPending};
use crate::metrics::AgentMetrics;
use crate::openapi::OpenApiIndex;
use crate::redact::{self, Redactor};
use crate::response::{BlockRequest, Responder};
use crate::template::template_path;
use crate::workloads::find_pod_cgroup;
use palisade_api::agent::{
    AgentReport, CaptureStats, FeatureProbe, Finding, MonitorConfig, MonitorReport, NodeConfig, ObjectRef,
    PolicyReport, RuleConfig, TlsCoverage,
};
use palisade_common::{
    BlockKey, BlockValue, CaptureCounters, CaptureFilter, CaptureFilterKey, CaptureHeader, FAMILY_TLS_SESSION,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The kernel side, behind a trait so the runtime can be tested without eBPF.
pub trait CaptureBackend {
    /// Attaches capture to a cgroup directory; returns its cgroup id.
    fn attach(&mut self, cgroup_dir: &Path) -> Result<u64, String>;
    fn detach(&mut self, cgroup_dir: &Path) -> Result<(), String>;
    fn counters(&self) -> CaptureCounters;
    /// Whether TLS probes are loaded (the error says why not).
    fn tls_ready(&self) -> Result<(), String> {
        Err("TLS capture is not available on this agent".into())
    }
    /// Attaches the TLS uprobes to one process using the OpenSSL at `libssl`.
    fn attach_tls(&mut self, _pid: u32, _libssl: &Path) -> Result<(), String> {
        Err("TLS capture is not available on this agent".into())
    }
    fn detach_tls(&mut self, _pid: u32) {}
    /// Whether the TLS probes copy session keys (`--tls-probes keys`) and the agent decrypts the
    /// captured TLS records, rather than probing every read and write.
    fn tls_decrypts(&self) -> bool {
        false
    }
    /// Adds probes on every read and write to an attached process whose connections cannot be
    /// decrypted; `Ok(false)` when this placement does not fall back.
    fn tls_fall_back(&mut self, _pid: u32) -> Result<bool, String> {
        Ok(false)
    }
    /// TLS 1.2: tells the kernel where `pid`'s `SSL` objects point to their `SSL_SESSION`, so
    /// that its session records carry the master secret.
    fn tls_session_pointer(&mut self, _pid: u32, _offset: usize) -> Result<(), String> {
        Ok(())
    }
    /// Attaches (or adopts, after a restart) the enforcement programs on a protected pod's
    /// cgroup: ingress always, egress exactly when `egress`; `Ok(true)` when adopted.
    fn enforce_pod(&mut self, _pod_uid: &str, _cgroup_dir: &Path, _egress: bool) -> Result<bool, String> {
        Err("enforcement is not available on this agent".into())
    }
    /// Detaches the enforcement program from a pod (also one pinned by an earlier agent).
    fn release_pod(&mut self, _pod_uid: &str) {}
    /// Pods with enforcement pinned by an earlier agent and not adopted.
    fn pinned_enforcement_pods(&mut self) -> Vec<String> {
        vec![]
    }
    /// Sets (`None`: removes) one entry of what capture copies from the sockets of a cgroup. A
    /// backend without filters in its kernel programs copies everything, which user space
    /// narrows.
    fn set_capture_filter(
        &mut self,
        _key: CaptureFilterKey,
        _filter: Option<&CaptureFilter>,
    ) -> Result<(), String> {
        Ok(())
    }
    /// Drops `key`'s traffic until `expires_ns` (CLOCK_MONOTONIC).
    fn block(&mut self, _key: BlockKey, _expires_ns: u64) -> Result<(), String> {
        Err("enforcement is not available on this agent".into())
    }
    /// Ends a block; returns the packets it dropped.
    fn unblock(&mut self, _key: &BlockKey) -> Result<u64, String> {
        Ok(0)
    }
    /// The kernel's blocks (including an earlier agent's).
    fn blocks(&mut self) -> Vec<(BlockKey, BlockValue)> {
        vec![]
    }
    /// Isolates a pod cgroup until `expires_ns`: adds `allow`, removes `remove` from its
    /// allow-list.
    fn isolate(
        &mut self,
        _cgroup_id: u64,
        _expires_ns: u64,
        _flags: u64,
        _cause: [u8; 16],
        _allow: &[crate::capture::AllowPrefix],
        _remove: &[crate::capture::AllowPrefix],
    ) -> Result<(), String> {
        Err("enforcement is not available on this agent".into())
    }
    /// Ends a pod cgroup's isolation.
    fn unisolate(&mut self, _cgroup_id: u64, _allow: &[crate::capture::AllowPrefix]) -> Result<(), String> {
        Ok(())
    }
    /// The kernel's isolations (including an earlier agent's).
    fn isolations(&mut self) -> Vec<(u64, palisade_common::IsolationValue)> {
        vec![]
    }
}

/// Finds the OpenSSL library a process maps (replaceable in tests).
pub type LibsslFinder = fn(u32) -> Option<PathBuf>;

type Key = (String, String);

/// Wall-clock milliseconds, for findings that do not come from a captured packet.
struct SystemTimeMs;

impl SystemTimeMs {
    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// Findings aggregate by rule, source, pod and endpoint.
type FindingKey = (String, String, String, String, String);

fn finding_key(f: &Finding) -> FindingKey {
    (
        f.rule.clone(),
        f.source.clone(),
        format!("{}/{}", f.pod_namespace, f.pod_name),
        f.method.clone(),
        f.path.clone(),
    )
}

fn key(r: &Option<ObjectRef>) -> Key {
    r.as_ref()
        .map(|r| (r.namespace.clone(), r.name.clone()))
        .unwrap_or_default()
}

struct Attachment {
    cgroup_dir: PathBuf,
    cgroup_id: u64,
}

#[derive(Clone)]
struct WatchedPod {
    uid: String,
    namespace: String,
    name: String,
    /// Monitors (indexes into the current config) that select the pod.
    monitors: Vec<usize>,
}

struct CompiledPolicy {
    reference: ObjectRef,
    /// Per monitor of the config (same order): whether it is one of the policy's. Looked up for
    /// every request of a pod the policy selects, so by index, not by name.
    watching: Vec<bool>,
    /// Looked up for every request and exchange: Fx hashing (SipHash of the UID cost more than
    /// most rules' verdicts on a plain request).
    pod_uids: rustc_hash::FxHashSet<String>,
    /// Each compiled rule with the configuration it came from (behavioural rules keep their
    /// state across configurations that leave the rule unchanged).
    rules: Vec<(RuleConfig, CompiledRule)>,
    errors: Vec<String>,
    /// `mode: enforce`: actions act; in audit mode they are only recorded.
    enforce: bool,
}

impl CompiledPolicy {
    /// Whether the policy judges a record of `pod` that the monitors `watched_by` (indexes into
    /// the config) watch.
    fn applies(&self, pod: &WatchedPod, watched_by: &[usize]) -> bool {
        self.pod_uids.contains(&pod.uid) && watched_by.iter().any(|i| self.watched_by(*i))
    }

    /// Whether the monitor at `index` of the config is one of the policy's.
    fn watched_by(&self, index: usize) -> bool {
        self.watching.get(index).copied().unwrap_or(false)
    }

    /// Whether some rule acts in the kernel, blocking sources or isolating pods (its pods need
    /// the enforcement programs in enforce mode).
    fn acts_in_kernel(&self) -> bool {
        self.rules.iter().any(|(cfg, _)| {
            cfg.actions
                .iter()
                .any(|a| a.r#type == "blockSource" || a.r#type == "isolate")
        })
    }

    /// The first rule with an `isolate` action, and that action.
    fn isolate_action(&self) -> Option<(&RuleConfig, &palisade_api::agent::ActionConfig)> {
        self.rules.iter().find_map(|(cfg, _)| {
            cfg.actions
                .iter()
                .find(|a| a.r#type == "isolate")
                .map(|a| (cfg, a))
        })
    }
}

/// Where a request came from, and whether from inside the cluster.
fn source_of(tls: bool, cluster_cidrs: &[Cidr], req: &Request) -> (String, &'static str) {
    // Uprobes on the TLS library see the process, not the peer's address.
    if tls {
        (TLS_PEER_UNKNOWN.to_string(), "")
    } else {
        (
            req.remote.0.to_string(),
            traffic_class(cluster_cidrs, req.remote.0),
        )
    }
}

/// Where and when a rule fired: what every finding of one request carries.
struct Seen<'a> {
    pod: &'a WatchedPod,
    req: &'a Request,
    source: &'a str,
    traffic: &'static str,
    template: &'a str,
    now_ms: i64,
}

impl Seen<'_> {
    /// A finding of `rule` (count 0: [`record_finding`] counts it), logged.
    fn finding(&self, policy: &ObjectRef, rule: &CompiledRule, evidence: String) -> Finding {
        tracing::info!(policy = %policy.name, rule = %rule.name, source = %self.source, method = %self.req.method, path = %self.template, %evidence, "finding");
        Finding {
            rule: rule.name.clone(),
            detector: rule.detector.clone(),
            severity: rule.severity.clone(),
            count: 0,
            source: self.source.to_string(),
            traffic: self.traffic.to_string(),
            pod_namespace: self.pod.namespace.clone(),
            pod_name: self.pod.name.clone(),
            method: self.req.method.to_string(),
            path: self.template.to_string(),
            evidence,
            first_seen_unix_ms: self.now_ms,
            last_seen_unix_ms: self.now_ms,
        }
    }
}

/// Adds one occurrence of a finding to the pending findings of its policy.
fn record_finding(
    findings: &mut HashMap<Key, BTreeMap<FindingKey, Finding>>,
    metrics: &AgentMetrics,
    policy: &ObjectRef,
    fresh: Finding,
) {
    metrics.finding(&policy.namespace, &policy.name, &fresh.rule, &fresh.severity);
    let now_ms = fresh.last_seen_unix_ms;
    let entry = findings
        .entry((policy.namespace.clone(), policy.name.clone()))
        .or_default()
        .entry(finding_key(&fresh))
        .or_insert(fresh);
    entry.count += 1;
    entry.last_seen_unix_ms = now_ms;
}

pub struct Runtime<B: CaptureBackend> {
    node: String,
    instance: String,
    cgroup_root: Option<PathBuf>,
    backend: Option<B>,
    node_errors: Vec<String>,
    features: Vec<FeatureProbe>,
    config: NodeConfig,
    applied_version: u64,
    attachments: HashMap<String, Attachment>,
    /// Looked up for every record: Fx hashing, and shared pod records (no clones per packet).
    by_cgroup: rustc_hash::FxHashMap<u64, std::sync::Arc<WatchedPod>>,
    monitor_errors: HashMap<Key, Vec<String>>,
    monitor_probes: HashMap<Key, u32>,
    policies: Vec<CompiledPolicy>,
    tracker: HttpTracker,
    /// Looked up for every exchange: Fx hashing.
    monitors_pending: rustc_hash::FxHashMap<Key, MonitorPending>,
    findings: HashMap<Key, BTreeMap<FindingKey, Finding>>,
    /// Offset from the capture clock (CLOCK_MONOTONIC) to Unix time, in ns.
    clock_offset_ns: i64,
    metrics: AgentMetrics,
    /// One per monitor of the current config, same order.
    redactors: Vec<Redactor>,
    /// One per monitor of the current config, same order: its (namespace, name), so the hot
    /// path borrows them instead of cloning.
    monitor_keys: Vec<Key>,
    /// What the parser keeps of each message, from the current config ([`Self::capture_limits`]).
    limits: CaptureLimits,
    /// Events of the record being processed (kept to reuse its allocation).
    events: Vec<HttpEvent>,
    /// One per monitor of the current config, same order: its OpenAPI document, when loaded.
    openapi: Vec<Option<OpenApiIndex>>,
    /// Kernel `records_lost` at the previous report.
    last_records_lost: u64,
    /// Untracked keys of the behavioural rules at the previous report.
    last_untracked: u64,
    /// The cluster's pod networks (east-west vs north-south).
    cluster_cidrs: Vec<Cidr>,
    last_cgroup_rescan_ns: u64,
    /// Per pod UID: processes with TLS uprobes attached.
    tls_pids: HashMap<String, BTreeMap<u32, PathBuf>>,
    /// Per pod UID: whether its TLS traffic is covered, and what covers it or why not.
    tls_coverage: HashMap<String, (bool, String)>,
    /// Pods whose processes handshake without `SSL_do_handshake`: every process of theirs gets
    /// probes on its reads and writes (`--tls-probes auto`).
    tls_calls_pods: HashSet<String>,
    find_libssl: LibsslFinder,
    /// Whether the record being processed is TLS plaintext (from uprobes).
    record_is_tls: bool,
    responder: Responder,
    /// Pods (UIDs) with the enforcement program attached.
    /// Pods (UIDs) with the enforcement programs attached, and whether the egress one is.
    enforced_pods: HashMap<String, bool>,
    /// The kernel's blocks left by an earlier agent were reconciled (on the first config).
    adopted: bool,
    isolator: crate::isolation::Isolator,
    /// This host's addresses (allowed to reach isolated pods: kubelet probes), refreshed with
    /// each configuration.
    node_addresses: Vec<std::net::IpAddr>,
    /// The ports and sampling the kernel applies per watched cgroup.
    capture_filters: CaptureFilters,
}

/// Records the cgroups found below a pod's cgroup `dir` (its containers') as the pod's.
fn learn_containers(
    by_cgroup: &mut rustc_hash::FxHashMap<u64, std::sync::Arc<WatchedPod>>,
    dir: &Path,
    pod: &std::sync::Arc<WatchedPod>,
) {
    for id in crate::workloads::descendant_cgroup_ids(dir) {
        by_cgroup.entry(id).or_insert_with(|| pod.clone());
    }
}

/// The source of a finding seen in TLS plaintext: uprobes do not see the peer's address.
pub const TLS_PEER_UNKNOWN: &str = "unknown (TLS)";

impl<B: CaptureBackend> Runtime<B> {
    pub fn new(
        node: String,
        instance: String,
        cgroup_root: Option<PathBuf>,
        backend: Result<B, String>,
        mut node_errors: Vec<String>,
        features: Vec<FeatureProbe>,
        clock_offset_ns: i64,
    ) -> Self {
        let backend = match backend {
            Ok(b) => Some(b),
            Err(reason) => {
                node_errors.push(format!("capture programs not loaded: {reason}"));
                None
            }
        };
        if cgroup_root.is_none() {
            node_errors.push("no cgroup v2 hierarchy is mounted: capture cannot attach to pods".into());
        }
        Runtime {
            node: node.clone(),
            instance,
            cgroup_root,
            backend,
            node_errors,
            features,
            config: NodeConfig {
                node_name: node,
                ..Default::default()
            },
            applied_version: 0,
            attachments: HashMap::new(),
            by_cgroup: rustc_hash::FxHashMap::default(),
            monitor_errors: HashMap::new(),
            monitor_probes: HashMap::new(),
            policies: vec![],
            tracker: HttpTracker::new(),
            monitors_pending: rustc_hash::FxHashMap::default(),
            findings: HashMap::new(),
            clock_offset_ns,
            metrics: AgentMetrics::new(),
            redactors: vec![],
            monitor_keys: vec![],
            limits: CaptureLimits::default(),
            events: Vec::new(),
            openapi: vec![],
            last_records_lost: 0,
            last_untracked: 0,
            cluster_cidrs: vec![],
            last_cgroup_rescan_ns: 0,
            tls_pids: HashMap::new(),
            tls_coverage: HashMap::new(),
            tls_calls_pods: HashSet::new(),
            find_libssl: crate::capture::tls::find_libssl,
            record_is_tls: false,
            responder: Responder::new(clock_offset_ns),
            enforced_pods: HashMap::new(),
            adopted: false,
            isolator: crate::isolation::Isolator::new(clock_offset_ns),
            node_addresses: vec![],
            capture_filters: CaptureFilters::new(),
        }
    }

    /// Replaces how OpenSSL is found in a process (tests).
    pub fn set_libssl_finder(&mut self, finder: LibsslFinder) {
        self.find_libssl = finder;
    }

    /// The capture backend, if it loaded.
    pub fn backend_mut(&mut self) -> Option<&mut B> {
        self.backend.as_mut()
    }

    /// Attaches TLS probes to the processes of pods whose monitors ask for TLS capture, detaches
    /// them from processes that are gone or no longer selected, and records coverage per pod.
    /// Called after each configuration and periodically (new processes appear).
    pub fn sync_tls(&mut self) {
        let mut wanted: BTreeMap<String, PathBuf> = BTreeMap::new();
        for monitor in self.config.monitors.iter().filter(|m| m.tls) {
            for t in &monitor.targets {
                if let Some(att) = self.attachments.get(&t.pod_uid) {
                    wanted.insert(t.pod_uid.clone(), att.cgroup_dir.clone());
                }
            }
        }
        // Pods no longer wanting TLS: detach all their processes.
        let gone: Vec<String> = self
            .tls_pids
            .keys()
            .filter(|uid| !wanted.contains_key(*uid))
            .cloned()
            .collect();
        for uid in gone {
            self.tls_calls_pods.remove(&uid);
            for pid in self.tls_pids.remove(&uid).unwrap_or_default().into_keys() {
                if let Some(b) = self.backend.as_mut() {
                    b.detach_tls(pid);
                }
                self.tracker.tls_captured_by_calls(pid, false);
            }
        }
        self.tls_coverage.retain(|uid, _| wanted.contains_key(uid));
        for (uid, dir) in wanted {
            let ready = match self.backend.as_ref() {
                Some(b) => b.tls_ready(),
                None => Err("capture programs are not loaded on this node".to_string()),
            };
            if let Err(reason) = ready {
                self.tls_coverage
                    .insert(uid, (false, format!("TLS probes not loaded: {reason}")));
                continue;
            }
            let pids = crate::workloads::cgroup_tree_pids(&dir);
            let attached = self.tls_pids.entry(uid.clone()).or_default();
            // Processes that exited.
            let exited: Vec<u32> = attached.keys().filter(|p| !pids.contains(p)).copied().collect();
            for pid in exited {
                attached.remove(&pid);
                if let Some(b) = self.backend.as_mut() {
                    b.detach_tls(pid);
                }
                self.tracker.tls_captured_by_calls(pid, false);
            }
            let mut errors = vec![];
            let mut fall_back = vec![];
            let new_pids: Vec<u32> = pids
                .iter()
                .copied()
                .filter(|p| !attached.contains_key(p))
                .collect();
            for pid in new_pids {
                let Some(lib) = (self.find_libssl)(pid) else {
                    continue;
                };
                match self.backend.as_mut().map(|b| b.attach_tls(pid, &lib)) {
                    Some(Ok(())) => {
                        tracing::info!(pod_uid = %uid, pid, libssl = %lib.display(), "TLS capture attached");
                        attached.insert(pid, lib);
                        if self.tls_calls_pods.contains(&uid) {
                            fall_back.push(pid);
                        }
                    }
                    Some(Err(e)) => errors.push(format!("pid {pid}: {e}")),
                    None => {}
                }
            }
            let coverage = if let Some(lib) = attached.values().next() {
                let name = lib
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                // How the plaintext is read: the session keys (and in how many processes the
                // reads and writes too, after a fall back), or the reads and writes.
                let how = if self.backend.as_ref().is_some_and(|b| b.tls_decrypts()) {
                    let calls = attached
                        .keys()
                        .filter(|pid| self.tracker.tls_probes_calls_of(**pid))
                        .count();
                    if calls == 0 {
                        "TLS 1.3 and 1.2 decrypted with the session keys".to_string()
                    } else {
                        format!("TLS 1.3 and 1.2 decrypted with the session keys, reads and writes probed in {calls}")
                    }
                } else {
                    "reads and writes probed".to_string()
                };
                (
                    true,
                    format!(
                        "OpenSSL ({name}) probed in {} of {} processes: {how}",
                        attached.len(),
                        pids.len()
                    ),
                )
            } else if let Some(e) = errors.first() {
                (false, format!("attaching TLS probes failed: {e}"))
            } else {
                (
                    false,
                    format!(
                        "none of the pod's {} processes maps OpenSSL's libssl; statically linked OpenSSL, Go, BoringSSL and rustls are not covered yet",
                        pids.len()
                    ),
                )
            };
            self.tls_coverage.insert(uid, coverage);
            // A pod whose processes handshake without SSL_do_handshake: new ones too.
            for pid in fall_back {
                self.tls_fall_back_pid(pid);
            }
        }
    }

    /// The agent's metrics (shared with the /metrics endpoint).
    pub fn metrics(&self) -> AgentMetrics {
        self.metrics.clone()
    }

    pub fn applied_version(&self) -> u64 {
        self.applied_version
    }

    pub fn attached_pods(&self) -> usize {
        self.attachments.len()
    }

    /// Applies a node configuration: attaches capture to newly selected pods, detaches it from
    /// pods no longer selected, and recompiles the policies. Errors are kept per monitor/policy.
    pub fn apply(&mut self, config: NodeConfig) {
        let mut desired: BTreeMap<String, WatchedPod> = BTreeMap::new();
        for (index, monitor) in config.monitors.iter().enumerate() {
            for target in &monitor.targets {
                desired
                    .entry(target.pod_uid.clone())
                    .or_insert_with(|| WatchedPod {
                        uid: target.pod_uid.clone(),
                        namespace: target.pod_namespace.clone(),
                        name: target.pod_name.clone(),
                        monitors: vec![],
                    })
                    .monitors
                    .push(index);
            }
        }
        let desired: BTreeMap<String, std::sync::Arc<WatchedPod>> = desired
            .into_iter()
            .map(|(uid, pod)| (uid, std::sync::Arc::new(pod)))
            .collect();
        // Container cgroups found under an attached pod point at its record: refresh them too
        // (the monitors selecting the pod may have changed).
        for entry in self.by_cgroup.values_mut() {
            if let Some(pod) = desired.get(&entry.uid) {
                *entry = pod.clone();
            }
        }

        // Detach pods no longer selected.
        let stale: Vec<String> = self
            .attachments
            .keys()
            .filter(|uid| !desired.contains_key(*uid))
            .cloned()
            .collect();
        for uid in stale {
            if let Some(att) = self.attachments.remove(&uid) {
                if let Some(backend) = self.backend.as_mut() {
                    if let Err(error) = backend.detach(&att.cgroup_dir) {
                        // The cgroup may be gone with its pod; nothing is left attached then.
                        tracing::debug!(%error, pod_uid = %uid, "detach");
                    }
                }
                let ids: Vec<u64> = self
                    .by_cgroup
                    .iter()
                    .filter(|(_, p)| p.uid == uid)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.by_cgroup.remove(&id);
                    self.tracker.forget_cgroup(id);
                }
                tracing::info!(pod_uid = %uid, "capture detached");
            }
        }

        // Attach newly selected pods.
        let mut pod_errors: HashMap<String, String> = HashMap::new();
        for (uid, pod) in &desired {
            if let Some(att) = self.attachments.get(uid) {
                self.by_cgroup.insert(att.cgroup_id, pod.clone());
                continue;
            }
            let result = match (&mut self.backend, &self.cgroup_root) {
                (None, _) => {
                    Err("capture programs are not loaded on this node (see node errors)".to_string())
                }
                (_, None) => Err("no cgroup v2 hierarchy on this node".to_string()),
                (Some(backend), Some(root)) => {
                    find_pod_cgroup(root, uid).and_then(|dir| backend.attach(&dir).map(|id| (dir, id)))
                }
            };
            match result {
                Ok((cgroup_dir, cgroup_id)) => {
                    tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), cgroup = %cgroup_dir.display(), "capture attached");
                    self.by_cgroup.insert(cgroup_id, pod.clone());
                    // Its containers' cgroups, where the sockets are: known from the start,
                    // their capture filters are in place before their first packet.
                    learn_containers(&mut self.by_cgroup, &cgroup_dir, pod);
                    self.attachments.insert(
                        uid.clone(),
                        Attachment {
                            cgroup_dir,
                            cgroup_id,
                        },
                    );
                }
                Err(reason) => {
                    tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.name), %reason, "capture not attached");
                    pod_errors.insert(
                        uid.clone(),
                        format!("pod {}/{}: {reason}", pod.namespace, pod.name),
                    );
                }
            }
        }

        self.monitor_errors.clear();
        self.monitor_probes.clear();
        self.redactors.clear();
        self.monitor_keys = config.monitors.iter().map(|m| key(&m.monitor)).collect();
        self.openapi = config.monitors.iter().map(OpenApiIndex::from_config).collect();
        for monitor in &config.monitors {
            let k = key(&monitor.monitor);
            let (redactor, mut errors) = Redactor::compile(monitor.redaction.as_ref());
            self.redactors.push(redactor);
            let mut probes = 0;
            for t in &monitor.targets {
                match pod_errors.get(&t.pod_uid) {
                    Some(e) => errors.push(e.clone()),
                    None if self.attachments.contains_key(&t.pod_uid) => probes += 2,
                    None => {}
                }
            }
            self.monitor_errors.insert(k.clone(), errors);
            self.monitor_probes.insert(k, probes);
        }

        // Rules whose configuration did not change are kept as they are, with their state.
        let mut previous: HashMap<(Key, String), (RuleConfig, CompiledRule)> =
            std::mem::take(&mut self.policies)
                .into_iter()
                .flat_map(|p| {
                    let k = (p.reference.namespace.clone(), p.reference.name.clone());
                    p.rules
                        .into_iter()
                        .map(move |(cfg, rule)| ((k.clone(), cfg.name.clone()), (cfg, rule)))
                })
                .collect();
        self.policies = config
            .policies
            .iter()
            .map(|p| {
                let mut errors = vec![];
                let policy_key = key(&p.policy);
                let rules: Vec<(RuleConfig, CompiledRule)> = p
                    .rules
                    .iter()
                    .filter_map(|r| match previous.remove(&(policy_key.clone(), r.name.clone())) {
                        Some((cfg, rule)) if cfg == *r => Some((cfg, rule)),
                        _ => CompiledRule::compile(r)
                            .map(|rule| (r.clone(), rule))
                            .map_err(|e| errors.push(e))
                            .ok(),
                    })
                    .collect();
                for (cfg, _) in rules.iter().filter(|(cfg, _)| cfg.detector == "dataExposure") {
                    let bodies = config.monitors.iter().any(|m| {
                        m.capture.as_ref().is_some_and(|c| c.bodies)
                            && p.monitors.iter().any(|name| *name == key(&m.monitor).1)
                    });
                    if !bodies {
                        errors.push(format!(
                            "rule {}: dataExposure reads response bodies, and none of the policy's monitors ({}) captures them (ApiMonitor spec.capture.bodies)",
                            cfg.name,
                            p.monitors.join(", ")
                        ));
                    }
                }
                for (_, rule) in rules.iter().filter(|(_, r)| r.needs_openapi()) {
                    let has_document = config.monitors.iter().any(|m| {
                        m.openapi_loaded && p.monitors.iter().any(|name| *name == key(&m.monitor).1)
                    });
                    if !has_document {
                        errors.push(format!(
                            "rule {}: shadowEndpoint needs an OpenAPI document, and none of the policy's monitors ({}) has one loaded (ApiMonitor spec.openApi)",
                            rule.name,
                            p.monitors.join(", ")
                        ));
                    }
                }
                for (cfg, _) in &rules {
                    for action in &cfg.actions {
                        match action.r#type.as_str() {
                            "alert" => {}
                            "blockSource" if action.ttl_ms == 0 => errors.push(format!(
                                "rule {}: blockSource needs a ttl (more than 0s)",
                                cfg.name
                            )),
                            "blockSource" => {}
                            "isolate" if action.ttl_ms == 0 => errors.push(format!(
                                "rule {}: isolate needs a ttl (more than 0s); an ApiIsolation isolates until released",
                                cfg.name
                            )),
                            "isolate" => {}
                            other => errors.push(format!(
                                "rule {}: action {other} is not implemented by this agent version yet",
                                cfg.name
                            )),
                        }
                    }
                }
                CompiledPolicy {
                    enforce: p.mode == "enforce",
                    reference: p.policy.clone().unwrap_or_default(),
                    watching: self
                        .monitor_keys
                        .iter()
                        .map(|(_, name)| p.monitors.contains(name))
                        .collect(),
                    pod_uids: p.pod_uids.iter().cloned().collect(),
                    rules,
                    errors,
                }
            })
            .collect();
        self.cluster_cidrs = config
            .cluster_cidrs
            .iter()
            .filter_map(|c| {
                Cidr::parse(c)
                    .map_err(|e| tracing::warn!(error = %e, "ignoring cluster CIDR"))
                    .ok()
            })
            .collect();
        self.applied_version = config.version;
        self.config = config;
        self.limits = self.capture_limits();
        self.sync_capture_filters();
        self.sync_enforcement();
        self.sync_tls();
    }

    /// Gives every watched cgroup (pods and the containers found under them) the ports and
    /// sampling of the monitors selecting its pod, in the kernel; removes the others.
    fn sync_capture_filters(&mut self) {
        let Some(backend) = self.backend.as_mut() else {
            return;
        };
        let filters = &self.capture_filters;
        let wanted = self
            .by_cgroup
            .iter()
            .flat_map(|(id, pod)| filters.entries_for(*id, &self.config.monitors, &pod.monitors))
            .collect();
        self.capture_filters
            .sync(wanted, |key, filter| backend.set_capture_filter(key, filter));
    }

    /// Attaches the enforcement program to the pods of enforcing policies that block sources,
    /// detaches it elsewhere, ends blocks that lost their policy or pod, and (once, after start)
    /// adopts or removes the kernel's blocks left by an earlier agent.
    fn sync_enforcement(&mut self) {
        let mut wanted: BTreeMap<String, usize> = BTreeMap::new();
        for (i, policy) in self.policies.iter().enumerate() {
            if policy.enforce && policy.acts_in_kernel() {
                for uid in policy
                    .pod_uids
                    .iter()
                    .filter(|u| self.attachments.contains_key(*u))
                {
                    wanted.entry(uid.clone()).or_insert(i);
                }
            }
        }
        self.node_addresses = crate::isolation::host_addresses();
        let (isolations, mut isolation_failures) = self.desired_isolations();
        // Every pod to protect: its cgroup, whether it needs the egress program (an isolation
        // that may deny egress) and the policy to blame for errors.
        let mut targets: BTreeMap<String, (PathBuf, bool, Option<usize>)> = BTreeMap::new();
        for (uid, policy) in &wanted {
            let Some(att) = self.attachments.get(uid) else {
                continue;
            };
            let egress = self.policies.iter().any(|p| {
                p.enforce
                    && p.pod_uids.contains(uid)
                    && p.rules
                        .iter()
                        .any(|(cfg, _)| cfg.actions.iter().any(|a| a.r#type == "isolate" && a.deny_egress))
            });
            targets.insert(uid.clone(), (att.cgroup_dir.clone(), egress, Some(*policy)));
        }
        for (uid, dir, d) in &isolations {
            let egress = d.flags & palisade_common::ISOLATION_DENY_EGRESS != 0;
            let entry = targets
                .entry(uid.clone())
                .or_insert_with(|| (dir.clone(), false, None));
            entry.1 |= egress;
        }
        if let Some(backend) = self.backend.as_mut() {
            for (uid, (dir, egress, policy)) in &targets {
                if self.enforced_pods.get(uid) == Some(egress) {
                    continue;
                }
                match backend.enforce_pod(uid, dir, *egress) {
                    Ok(adopted) => {
                        tracing::info!(pod_uid = %uid, adopted, egress, "enforcement attached");
                        self.enforced_pods.insert(uid.clone(), *egress);
                    }
                    Err(e) => {
                        tracing::warn!(pod_uid = %uid, error = %e, "enforcement not attached");
                        if let Some(p) = policy.and_then(|i| self.policies.get_mut(i)) {
                            p.errors
                                .push(format!("enforcement not attached to pod {uid}: {e}"));
                        }
                    }
                }
            }
            let stale: Vec<String> = self
                .enforced_pods
                .keys()
                .filter(|u| !targets.contains_key(*u))
                .cloned()
                .chain(
                    backend
                        .pinned_enforcement_pods()
                        .into_iter()
                        .filter(|u| !targets.contains_key(u)),
                )
                .collect();
            for uid in stale {
                backend.release_pod(&uid);
                self.enforced_pods.remove(&uid);
                tracing::info!(pod_uid = %uid, "enforcement detached");
            }
        }
        // Who protects each enforced cgroup now: (policy, first blocking rule, pod).
        let owners: HashMap<u64, (ObjectRef, String, String, String)> = wanted
            .iter()
            .filter_map(|(uid, i)| {
                let att = self.attachments.get(uid)?;
                let policy = self.policies.get(*i)?;
                let rule = policy
                    .rules
                    .iter()
                    .find(|(cfg, _)| cfg.actions.iter().any(|a| a.r#type == "blockSource"))
                    .map(|(cfg, _)| cfg.name.clone())?;
                let pod = self.by_cgroup.get(&att.cgroup_id)?;
                Some((
                    att.cgroup_id,
                    (
                        policy.reference.clone(),
                        rule,
                        pod.namespace.clone(),
                        pod.name.clone(),
                    ),
                ))
            })
            .collect();
        let now = monotonic_ns();
        if !self.adopted {
            self.adopted = true;
            if let Some(backend) = self.backend.as_mut() {
                let entries = backend.blocks();
                self.responder
                    .adopt(backend, entries, &|cgroup| owners.get(&cgroup).cloned(), now);
            }
        }
        let enforcing: HashSet<(String, String)> = self
            .policies
            .iter()
            .map(|p| (p.reference.namespace.clone(), p.reference.name.clone()))
            .collect();
        let protected: HashSet<u64> = self.attachments.values().map(|a| a.cgroup_id).collect();
        self.responder.release_others(
            self.backend.as_mut(),
            &|policy: &ObjectRef, cgroup| {
                enforcing.contains(&(policy.namespace.clone(), policy.name.clone()))
                    && protected.contains(&cgroup)
            },
            now,
        );
        // Isolations, once their pods carry the enforcement programs.
        let mut desired = vec![];
        for (uid, _, d) in isolations {
            if self.enforced_pods.contains_key(&uid) {
                desired.push(d);
            } else {
                isolation_failures.push(crate::isolation::FailedIsolation {
                    owner: d.owner,
                    pod_namespace: d.pod_namespace,
                    pod_name: d.pod_name,
                    detail: "the enforcement programs could not be attached to the pod (see the agent's log and node errors)".into(),
                });
            }
        }
        // Isolations rules triggered stay while their policy enforces an isolate rule on the pod;
        // after a restart, the kernel's entries such a policy owns are adopted.
        let isolating: HashMap<(String, String), usize> = self
            .policies
            .iter()
            .enumerate()
            .filter(|(_, p)| p.enforce && p.isolate_action().is_some())
            .map(|(i, p)| ((p.reference.namespace.clone(), p.reference.name.clone()), i))
            .collect();
        let keep = |owner: &ObjectRef, cgroup: u64| {
            isolating.contains_key(&(owner.namespace.clone(), owner.name.clone()))
                && protected.contains(&cgroup)
        };
        let mut adoptable: HashMap<u64, (crate::isolation::DesiredIsolation, String)> = HashMap::new();
        if !self.isolator.reconciled() {
            for att in self.attachments.values() {
                let Some(pod) = self.by_cgroup.get(&att.cgroup_id) else {
                    continue;
                };
                let Some((rule, action, reference)) = self
                    .policies
                    .iter()
                    .filter(|p| p.enforce && p.pod_uids.contains(&pod.uid))
                    .find_map(|p| p.isolate_action().map(|(r, a)| (r, a, &p.reference)))
                else {
                    continue;
                };
                if let Ok(d) = self.rule_isolation(reference, action, pod, att.cgroup_id, u64::MAX) {
                    adoptable.insert(att.cgroup_id, (d, rule.name.clone()));
                }
            }
        }
        let adopt = |cgroup: u64| adoptable.get(&cgroup).cloned();
        self.isolator.sync(
            self.backend.as_mut(),
            desired,
            isolation_failures,
            &keep,
            &adopt,
            now,
        );
        self.metrics.set_isolated_pods(self.isolator.isolated());
    }

    /// What a rule's `isolate` action puts in the kernel for a pod.
    fn rule_isolation(
        &self,
        policy: &ObjectRef,
        action: &palisade_api::agent::ActionConfig,
        pod: &WatchedPod,
        cgroup_id: u64,
        expires_ns: u64,
    ) -> Result<crate::isolation::DesiredIsolation, String> {
        let cfg = palisade_api::agent::IsolationConfig {
            allow_cidrs: action.allow_cidrs.clone(),
            allow_node: action.allow_node,
            deny_egress: action.deny_egress,
            ..Default::default()
        };
        let pod_ips: Vec<String> = self
            .config
            .monitors
            .iter()
            .flat_map(|m| &m.targets)
            .find(|t| t.pod_uid == pod.uid)
            .map(|t| t.pod_ips.clone())
            .unwrap_or_default();
        Ok(crate::isolation::DesiredIsolation {
            owner: policy.clone(),
            pod_namespace: pod.namespace.clone(),
            pod_name: pod.name.clone(),
            cgroup_id,
            expires_ns,
            flags: crate::isolation::flags(&cfg),
            allow: crate::isolation::allow_list(&cfg, &pod_ips, &self.node_addresses)?,
        })
    }

    /// The configuration's isolations, per pod: (uid, cgroup directory, what to put in the
    /// kernel), and the pods that cannot be isolated, with why.
    fn desired_isolations(
        &self,
    ) -> (
        Vec<(String, PathBuf, crate::isolation::DesiredIsolation)>,
        Vec<crate::isolation::FailedIsolation>,
    ) {
        use crate::isolation::{allow_list, flags, DesiredIsolation, FailedIsolation};
        let mut desired = vec![];
        let mut failed = vec![];
        if self.config.isolations.is_empty() {
            return (desired, failed);
        }
        let node_addresses = &self.node_addresses;
        let now_mono = monotonic_ns();
        let now_unix = SystemTimeMs::now();
        for cfg in &self.config.isolations {
            let owner = cfg.isolation.clone().unwrap_or_default();
            let expires_ns = if cfg.expires_unix_ms == 0 {
                u64::MAX
            } else if cfg.expires_unix_ms <= now_unix {
                continue; // over: the operator drops it from the next configuration
            } else {
                now_mono.saturating_add((cfg.expires_unix_ms - now_unix) as u64 * 1_000_000)
            };
            for t in &cfg.targets {
                let fail = |detail: String| FailedIsolation {
                    owner: owner.clone(),
                    pod_namespace: t.pod_namespace.clone(),
                    pod_name: t.pod_name.clone(),
                    detail,
                };
                // One isolation per pod in the kernel: the first (the operator sends them by
                // namespace/name) wins; the others say so instead of waiting for ever.
                if let Some((_, _, first)) = desired
                    .iter()
                    .find(|(uid, _, _): &&(String, PathBuf, DesiredIsolation)| *uid == t.pod_uid)
                {
                    failed.push(fail(format!(
                        "the pod is already isolated by ApiIsolation {}/{}: a pod is isolated by one ApiIsolation at a time (the first by namespace/name)",
                        first.owner.namespace, first.owner.name
                    )));
                    continue;
                }
                let located = match self.attachments.get(&t.pod_uid) {
                    Some(att) => Ok((att.cgroup_dir.clone(), att.cgroup_id)),
                    None => match &self.cgroup_root {
                        None => Err("no cgroup v2 hierarchy on this node".to_string()),
                        Some(root) => find_pod_cgroup(root, &t.pod_uid)
                            .and_then(|dir| crate::workloads::cgroup_id(&dir).map(|id| (dir, id))),
                    },
                };
                let (dir, cgroup_id) = match located {
                    Ok(found) => found,
                    Err(reason) => {
                        failed.push(fail(reason));
                        continue;
                    }
                };
                let allow = match allow_list(cfg, &t.pod_ips, node_addresses) {
                    Ok(a) => a,
                    Err(reason) => {
                        failed.push(fail(reason));
                        continue;
                    }
                };
                desired.push((
                    t.pod_uid.clone(),
                    dir,
                    DesiredIsolation {
                        owner: owner.clone(),
                        pod_namespace: t.pod_namespace.clone(),
                        pod_name: t.pod_name.clone(),
                        cgroup_id,
                        expires_ns,
                        flags: flags(cfg),
                        allow,
                    },
                ));
            }
        }
        (desired, failed)
    }

    /// Ends the blocks and rule-triggered isolations whose TTL passed and reports them.
    pub fn expire_actions(&mut self, now_ns: u64) {
        self.responder.expire(self.backend.as_mut(), now_ns);
        self.isolator.expire(self.backend.as_mut(), now_ns);
        self.metrics.set_isolated_pods(self.isolator.isolated());
        self.metrics.set_blocked_sources(self.responder.active());
    }

    /// Carries out the actions of a rule that fired on `req`.
    fn respond(&mut self, policy: usize, rule: usize, pod: &WatchedPod, req: &Request) {
        let Some(p) = self.policies.get(policy) else {
            return;
        };
        let Some((cfg, _)) = p.rules.get(rule) else { return };
        let Some(att) = self.attachments.get(&pod.uid) else {
            return;
        };
        for action in cfg
            .actions
            .iter()
            .filter(|a| a.r#type == "blockSource" && a.ttl_ms > 0)
        {
            if self.record_is_tls {
                // Uprobes do not see the peer's address: nothing to block.
                continue;
            }
            let blocked = self.responder.block_source(
                self.backend.as_mut(),
                BlockRequest {
                    policy: &p.reference,
                    rule: &cfg.name,
                    enforce: p.enforce,
                    pod_namespace: &pod.namespace,
                    pod_name: &pod.name,
                    cgroup_id: att.cgroup_id,
                    source: req.remote.0,
                    ttl_ns: action.ttl_ms.saturating_mul(1_000_000),
                },
                monotonic_ns().max(req.timestamp_ns),
            );
            if blocked {
                // From the kernel's capture of the triggering request to the block in its map.
                let seconds = monotonic_ns().saturating_sub(req.timestamp_ns) as f64 / 1e9;
                self.metrics.block_latency(seconds);
            }
        }
        let now = monotonic_ns().max(req.timestamp_ns);
        for action in cfg
            .actions
            .iter()
            .filter(|a| a.r#type == "isolate" && a.ttl_ms > 0)
        {
            if self.isolator.triggered_now(att.cgroup_id, p.enforce, now) {
                continue;
            }
            let expires_ns = now.saturating_add(action.ttl_ms.saturating_mul(1_000_000));
            let trigger = crate::isolation::Trigger {
                rule: cfg.name.clone(),
                source: req.remote.0,
                enforced: p.enforce,
            };
            match self.rule_isolation(&p.reference, action, pod, att.cgroup_id, expires_ns) {
                Ok(desired) => {
                    if self
                        .isolator
                        .trigger(self.backend.as_mut(), desired, trigger, now)
                    {
                        // From the kernel's capture of the triggering request to the isolation in
                        // its maps.
                        let seconds = monotonic_ns().saturating_sub(req.timestamp_ns) as f64 / 1e9;
                        self.metrics.isolate_latency(seconds);
                        self.metrics.set_isolated_pods(self.isolator.isolated());
                    }
                }
                Err(reason) => tracing::warn!(%reason, rule = %cfg.name, "isolate: allow-list refused"),
            }
        }
        self.metrics.set_blocked_sources(self.responder.active());
    }

    fn monitor(&self, index: usize) -> Option<&MonitorConfig> {
        self.config.monitors.get(index)
    }

    fn unix_ms(&self, ts_ns: u64) -> i64 {
        (ts_ns as i64).saturating_add(self.clock_offset_ns) / 1_000_000
    }

    /// What the parser keeps of each message: the largest limits among the monitors (bodies
    /// only for monitors that capture them).
    fn capture_limits(&self) -> CaptureLimits {
        let captures = || self.config.monitors.iter().filter_map(|m| m.capture.as_ref());
        CaptureLimits {
            max_head_bytes: captures()
                .map(|c| c.max_header_bytes as usize)
                .max()
                .unwrap_or(8192)
                .clamp(256, 65536),
            max_body_bytes: captures()
                .filter(|c| c.bodies)
                .map(|c| c.max_body_bytes as usize)
                .max()
                .unwrap_or(0)
                .min(1 << 20),
            decrypt_tls: self.backend.as_ref().is_some_and(|b| b.tls_decrypts())
                && self.config.monitors.iter().any(|m| m.tls),
        }
    }

    /// Processes one captured record.
    /// The caller counts the records it drains ([`AgentMetrics::drained`], once per batch).
    pub fn on_record(&mut self, header: &CaptureHeader, data: &[u8]) {
        if !self.knows_cgroup(header.cgroup_id, header.timestamp_ns) {
            return; // a pod detached a moment ago
        }
        let mut events = std::mem::take(&mut self.events);
        if header.family == FAMILY_TLS_SESSION {
            self.tracker.tls_session(header, data, &self.limits, &mut events);
        } else {
            self.tracker.feed(header, data, &self.limits, &mut events);
        }
        if self.tracker.has_tls_fallbacks() {
            self.tls_fall_back();
        }
        self.handle_events(&mut events);
        self.events = events;
    }

    /// Probes every read and write of the processes whose connections could not be decrypted
    /// (TLS 1.2, say), where the placement falls back (`--tls-probes auto`).
    fn tls_fall_back(&mut self) {
        for (pid, offset) in self.tracker.take_tls_session_pointers() {
            if let Some(backend) = self.backend.as_mut() {
                match backend.tls_session_pointer(pid, offset) {
                    Ok(()) => {
                        self.metrics.tls_session_pointer();
                        tracing::info!(
                            pid,
                            offset,
                            "TLS 1.2: the kernel copies this process's SSL_SESSION from now on"
                        );
                    }
                    Err(reason) => {
                        tracing::warn!(pid, %reason, "telling the kernel where a process's SSL_SESSION is")
                    }
                }
            }
        }
        for (pid, why) in self.tracker.take_tls_fallbacks() {
            if self.tracker.tls_probes_calls_of(pid) {
                continue; // fell back already
            }
            if self.tls_fall_back_pid(pid) {
                tracing::info!(pid, reason = ?why, "a TLS connection could not be decrypted: this process's reads and writes are probed from now on");
            }
        }
        // Handshakes without a session record: the process is not known, so every process of
        // the pod, and the ones it starts later (sync_tls).
        for cgroup in self.tracker.take_tls_cgroup_fallbacks() {
            let Some(pod) = self.by_cgroup.get(&cgroup).cloned() else {
                continue;
            };
            if self.tls_calls_pods.contains(&pod.uid) {
                // A cgroup of the pod found after it fell back.
                self.tracker.tls_calls_cgroup(cgroup, true);
                continue;
            }
            let pids: Vec<u32> = self
                .tls_pids
                .get(&pod.uid)
                .map(|p| p.keys().copied().collect())
                .unwrap_or_default();
            let mut fell_back = false;
            for pid in pids {
                fell_back |= self.tls_fall_back_pid(pid);
            }
            if !fell_back {
                continue;
            }
            tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), "a TLS handshake completed without SSL_do_handshake: this pod's reads and writes are probed from now on");
            self.tls_calls_pods.insert(pod.uid.clone());
            let cgroups: Vec<u64> = self
                .by_cgroup
                .iter()
                .filter(|(_, p)| p.uid == pod.uid)
                .map(|(id, _)| *id)
                .collect();
            for id in cgroups {
                self.tracker.tls_calls_cgroup(id, true);
            }
        }
    }

    /// Adds probes on every read and write to `pid`; whether they are there now.
    fn tls_fall_back_pid(&mut self, pid: u32) -> bool {
        let Some(backend) = self.backend.as_mut() else {
            return false;
        };
        match backend.tls_fall_back(pid) {
            Ok(true) => {
                self.tracker.tls_captured_by_calls(pid, true);
                self.metrics.tls_fallback();
                true
            }
            Ok(false) => false,
            Err(reason) => {
                tracing::warn!(pid, %reason, "probing the reads and writes of a process whose TLS could not be decrypted");
                false
            }
        }
    }

    /// Detection on requests, endpoint counts on exchanges. An event may belong to another
    /// connection than the record that completed it (one closed to make room, or by
    /// housekeeping), so the pod and the TLS flag come from the event.
    ///
    /// The pod's shared record is borrowed, not cloned, unless a policy selects the pod: each
    /// clone and drop is an atomic operation, and most monitored traffic has no policy.
    fn handle_events(&mut self, events: &mut Vec<HttpEvent>) {
        for event in events.drain(..) {
            let request = match &event {
                HttpEvent::Request(r) => r,
                HttpEvent::Exchange(x) => &x.request,
            };
            if request.role != PodRole::Server {
                continue;
            }
            let Some(pod) = self.by_cgroup.get(&request.cgroup_id) else {
                continue;
            };
            let policed = self.policies.iter().any(|p| p.pod_uids.contains(&pod.uid));
            self.record_is_tls = request.tls;
            match event {
                HttpEvent::Request(req) if policed => {
                    let pod = std::sync::Arc::clone(pod);
                    self.detect(&pod, &req);
                }
                HttpEvent::Request(_) => {}
                HttpEvent::Exchange(ex) => {
                    if self.limits.max_body_bytes > 0 {
                        self.count_bodies(&ex);
                    }
                    let mut pending = std::mem::take(&mut self.monitors_pending);
                    self.count_endpoint(&mut pending, pod, &ex);
                    self.monitors_pending = pending;
                    if policed {
                        let pod = std::sync::Arc::clone(pod);
                        self.detect_exchange(&pod, &ex);
                    }
                }
            }
        }
    }

    /// Whether a cgroup id belongs to a watched pod. Capture attaches to the pod's cgroup, but
    /// sockets belong to the container cgroups below it: unknown ids trigger a rescan of the
    /// attached pods' descendants, at most every 500 ms.
    fn knows_cgroup(&mut self, cgroup_id: u64, now_ns: u64) -> bool {
        if self.by_cgroup.contains_key(&cgroup_id) {
            return true;
        }
        if now_ns.saturating_sub(self.last_cgroup_rescan_ns) < 500_000_000 && self.last_cgroup_rescan_ns != 0
        {
            return false;
        }
        self.last_cgroup_rescan_ns = now_ns.max(1);
        for att in self.attachments.values() {
            let Some(pod) = self.by_cgroup.get(&att.cgroup_id).cloned() else {
                continue;
            };
            learn_containers(&mut self.by_cgroup, &att.cgroup_dir, &pod);
        }
        if self.capture_filters.cgroups() != self.by_cgroup.len() {
            self.sync_capture_filters();
        }
        self.by_cgroup.contains_key(&cgroup_id)
    }

    /// Whether a monitor watches the current record: TLS plaintext when it asked for TLS, other
    /// traffic on its ports.
    fn port_watched(&self, monitor: &MonitorConfig, port: u16) -> bool {
        if self.record_is_tls {
            return monitor.tls;
        }
        monitor.ports.is_empty() || monitor.ports.contains(&(port as u32))
    }

    /// Request rules. For pods a policy selects: [`Self::handle_events`] decides that first, as
    /// most monitored traffic has no policy.
    fn detect(&mut self, pod: &WatchedPod, req: &Request) {
        let watched_by = self.watching(pod, req.local.1);
        let Some(first) = self.redactor_index(&watched_by) else {
            return;
        };
        let redactor = &self.redactors[first];
        let view = RequestView {
            method: &req.method,
            target: &req.target,
            headers: &req.headers,
            body: Some(&req.body),
        };
        // The request is split into decoded inputs once, for every rule of every policy.
        let inputs = Inputs::collect(&view);
        // Where the request came from and its endpoint, made only if a rule fires (formatting
        // the address cost more than most rules' verdicts).
        let mut context = None;
        let mut triggered = vec![];
        for (pi, policy) in self.policies.iter().enumerate() {
            if !policy.applies(pod, &watched_by) {
                continue;
            }
            for (ri, (_, rule)) in policy.rules.iter().enumerate() {
                let Some(detection) = rule.evaluate_with(&view, &inputs) else {
                    continue;
                };
                let (source, traffic, template) = context.get_or_insert_with(|| {
                    let (source, traffic) = source_of(self.record_is_tls, &self.cluster_cidrs, req);
                    (source, traffic, template_path(&req.target))
                });
                let seen = Seen {
                    pod,
                    req,
                    source,
                    traffic,
                    template,
                    now_ms: self.unix_ms(req.timestamp_ns),
                };
                let evidence = redact::truncate(&redactor.target(&detection.evidence), 256);
                let fresh = seen.finding(&policy.reference, rule, evidence);
                record_finding(&mut self.findings, &self.metrics, &policy.reference, fresh);
                triggered.push((pi, ri));
            }
        }
        for (pi, ri) in triggered {
            self.respond(pi, ri, pod, req);
        }
    }

    /// The monitors of `pod` (indexes into the config) that watch the current record's port
    /// (inline: a pod has few monitors, and this runs for every request of a policed pod).
    fn watching(&self, pod: &WatchedPod, local_port: u16) -> smallvec::SmallVec<[usize; 4]> {
        pod.monitors
            .iter()
            .copied()
            .filter(|i| self.monitor(*i).is_some_and(|m| self.port_watched(m, local_port)))
            .collect()
    }

    /// The monitor whose redactor applies to a record its monitors watch: the first.
    fn redactor_index(&self, watched_by: &[usize]) -> Option<usize> {
        watched_by.first().copied().filter(|i| *i < self.redactors.len())
    }

    /// Behavioural rules judge the request together with its response.
    fn detect_exchange(&mut self, pod: &WatchedPod, ex: &Exchange) {
        // Called for pods a policy selects; most policies have no behavioural rule.
        if !self
            .policies
            .iter()
            .any(|p| p.rules.iter().any(|(_, r)| r.is_behavioural()) && p.pod_uids.contains(&pod.uid))
        {
            return;
        }
        let req = &ex.request;
        let watched_by = self.watching(pod, req.local.1);
        let Some(first) = self.redactor_index(&watched_by) else {
            return;
        };
        let redactor = &self.redactors[first];
        let (source, traffic) = source_of(self.record_is_tls, &self.cluster_cidrs, req);
        let template = template_path(&req.target);
        let now_ms = self.unix_ms(req.timestamp_ns);
        let seen = Seen {
            pod,
            req,
            source: &source,
            traffic,
            template: &template,
            now_ms,
        };
        let view = ExchangeView {
            request: RequestView {
                method: &req.method,
                target: &req.target,
                headers: &req.headers,
                body: Some(&req.body),
            },
            source: &source,
            template: &template,
            status: ex.status,
            response_body: Some(&ex.response.body),
            now_ns: req.timestamp_ns,
        };
        let mut triggered = vec![];
        for (pi, policy) in self.policies.iter_mut().enumerate() {
            if !policy.applies(pod, &watched_by) {
                continue;
            }
            // The document of the first monitor of this policy that watched the exchange.
            let openapi = watched_by
                .iter()
                .filter(|i| policy.watched_by(**i))
                .find_map(|i| self.openapi.get(*i).and_then(Option::as_ref));
            for (ri, (_, rule)) in policy.rules.iter_mut().enumerate() {
                let Some(detection) = rule.evaluate_exchange(&view, openapi) else {
                    continue;
                };
                let evidence = redact::truncate(&redactor.text(&detection.evidence), 256);
                let fresh = seen.finding(&policy.reference, rule, evidence);
                record_finding(&mut self.findings, &self.metrics, &policy.reference, fresh);
                triggered.push((pi, ri));
            }
        }
        for (pi, ri) in triggered {
            self.respond(pi, ri, pod, req);
        }
    }

    /// How much of the exchange's bodies the parser kept (metrics), while bodies are captured.
    fn count_bodies(&self, ex: &Exchange) {
        use crate::metrics::BodyDirection;
        let (req, resp) = (&ex.request, &ex.response);
        self.metrics.body(
            BodyDirection::Request,
            req.body.len(),
            req.body_len,
            req.body_truncated,
        );
        self.metrics.body(
            BodyDirection::Response,
            resp.body.len(),
            resp.body_len,
            resp.body_truncated,
        );
    }

    /// RED metrics and the endpoint inventory. Runs for every captured exchange: borrows the
    /// monitor's name, the method and (when it is its own template) the path.
    ///
    /// `monitors_pending` is the runtime's, taken out while the pod's record is borrowed.
    fn count_endpoint(
        &self,
        monitors_pending: &mut rustc_hash::FxHashMap<Key, MonitorPending>,
        pod: &WatchedPod,
        ex: &Exchange,
    ) {
        let template = template_path(&ex.request.target);
        let method = ex.request.method.as_str();
        let mut facts = ExchangeFacts {
            now_ms: self.unix_ms(ex.request.timestamp_ns + ex.latency_ns),
            // Server errors that show a stack trace or a debug page (APM), when bodies are captured.
            exception: ex.status >= 500 && crate::detect::exposure::shows_exception(&ex.response.body),
            east_west: !self.record_is_tls
                && traffic_class(&self.cluster_cidrs, ex.request.remote.0) == "east-west",
            response_type: ex.response.headers.get("content-type"),
            latency_micros: ex.latency_ns / 1_000,
            ..Default::default()
        };
        facts.read_request(&ex.request.headers);
        for &index in &pod.monitors {
            let (Some(monitor), Some(monitor_key)) = (self.monitor(index), self.monitor_keys.get(index))
            else {
                continue;
            };
            if !monitor.discovery || !self.port_watched(monitor, ex.request.local.1) {
                continue;
            }
            let cap = monitor.max_endpoints.max(1) as usize;
            let sample = crate::metrics::ExchangeSample {
                namespace: &monitor_key.0,
                monitor: &monitor_key.1,
                method,
                path: &template,
                status: ex.status,
                seconds: ex.latency_ns as f64 / 1e9,
                exception: facts.exception,
            };
            let bodies = monitor.capture.as_ref().is_some_and(|c| c.bodies);
            // Looked up once per exchange; the key is cloned only for a monitor's first one.
            let pending = match monitors_pending.get_mut(monitor_key) {
                Some(pending) => pending,
                None => monitors_pending.entry(monitor_key.clone()).or_default(),
            };
            let Some(counter) = pending.counter(method, &template, u32::from(ex.status), cap) else {
                pending.overflow_requests += 1;
                self.metrics.exchange(&sample);
                continue;
            };
            // The metrics series is the endpoint counter's for the interval: one lookup per
            // endpoint and interval, not per exchange.
            let metrics = &self.metrics;
            counter
                .metrics
                .get_or_insert_with(|| metrics.series(&sample))
                .record(metrics, sample.seconds, sample.exception);
            counter.add(&facts);
            if bodies {
                counter.sample_body(&ex.response.body);
            }
        }
    }

    /// Forgets idle connections.
    pub fn housekeeping(&mut self, now_ns: u64) {
        let mut events = Vec::new();
        self.tracker.evict_idle_into(now_ns, &self.limits, &mut events);
        self.handle_events(&mut events);
        self.sync_tls();
    }

    /// Builds a report and takes the deltas it carries; give it back with [`Self::restore`] if it
    /// could not be delivered.
    pub fn take_report(&mut self) -> AgentReport {
        let counters = self.backend.as_ref().map(|b| b.counters()).unwrap_or_default();
        let drops = self.tracker.drops;
        self.record_loss_metrics(&counters);
        self.raise_capture_loss(&counters);
        let mut monitors = vec![];
        for (i, m) in self.config.monitors.iter().enumerate() {
            let k = key(&m.monitor);
            let redactor = self.redactors.get(i);
            let redact = |text: &str| {
                redactor.map_or_else(|| redact::redact_text(text).into_owned(), |r| r.text(text))
            };
            let (endpoints, overflow_requests) = match self.monitors_pending.get_mut(&k) {
                Some(p) => p.take_deltas(&redact),
                None => (vec![], 0),
            };
            monitors.push(MonitorReport {
                monitor: m.monitor.clone(),
                workloads: m.targets.len() as u32,
                probes_attached: self.monitor_probes.get(&k).copied().unwrap_or(0),
                errors: self.monitor_errors.get(&k).cloned().unwrap_or_default(),
                endpoints,
                overflow_requests,
                tls: if m.tls {
                    m.targets
                        .iter()
                        .map(|t| {
                            let (covered, detail) =
                                self.tls_coverage.get(&t.pod_uid).cloned().unwrap_or_else(|| {
                                    (
                                        false,
                                        "capture is not attached to the pod (see errors)".to_string(),
                                    )
                                });
                            TlsCoverage {
                                pod_namespace: t.pod_namespace.clone(),
                                pod_name: t.pod_name.clone(),
                                covered,
                                detail,
                            }
                        })
                        .collect()
                } else {
                    vec![]
                },
            });
        }
        let mut findings = std::mem::take(&mut self.findings);
        for (policy, record) in self.isolator.take_records() {
            self.responder.push(&policy, record);
        }
        let mut actions = self.responder.take();
        let mut policies: Vec<PolicyReport> = self
            .policies
            .iter()
            .map(|p| {
                let k = (p.reference.namespace.clone(), p.reference.name.clone());
                PolicyReport {
                    policy: Some(p.reference.clone()),
                    errors: p.errors.clone(),
                    findings: findings
                        .remove(&k)
                        .map(|m| m.into_values().collect())
                        .unwrap_or_default(),
                    actions: actions.remove(&k).unwrap_or_default(),
                }
            })
            .collect();
        // Findings of policies that left this node's configuration since they were raised are
        // still reported: a configuration change must not lose what was already seen.
        policies.extend(
            findings
                .into_iter()
                .filter(|(_, f)| !f.is_empty())
                .map(|((namespace, name), f)| {
                    let k = (namespace, name);
                    PolicyReport {
                        actions: actions.remove(&k).unwrap_or_default(),
                        policy: Some(ObjectRef {
                            namespace: k.0,
                            name: k.1,
                            generation: 0,
                        }),
                        errors: vec![],
                        findings: f.into_values().collect(),
                    }
                }),
        );
        // And actions (releases) of policies that left the configuration.
        policies.extend(
            actions
                .into_iter()
                .map(|((namespace, name), actions)| PolicyReport {
                    policy: Some(ObjectRef {
                        namespace,
                        name,
                        generation: 0,
                    }),
                    actions,
                    ..Default::default()
                }),
        );
        // Likewise endpoint counts of monitors that left the configuration.
        let configured: HashSet<Key> = self.config.monitors.iter().map(|m| key(&m.monitor)).collect();
        for (k, pending) in self
            .monitors_pending
            .iter_mut()
            .filter(|(k, _)| !configured.contains(*k))
        {
            if !pending.has_deltas() {
                continue;
            }
            let (endpoints, overflow_requests) =
                pending.take_deltas(&|text| redact::redact_text(text).into_owned());
            monitors.push(MonitorReport {
                monitor: Some(ObjectRef {
                    namespace: k.0.clone(),
                    name: k.1.clone(),
                    generation: 0,
                }),
                endpoints,
                overflow_requests,
                ..Default::default()
            });
        }
        AgentReport {
            node_name: self.node.clone(),
            agent_instance: self.instance.clone(),
            applied_version: self.applied_version,
            features: self.features.clone(),
            node_errors: self.node_errors.clone(),
            monitors,
            policies,
            capture: Some(CaptureStats {
                packets_seen: counters.packets_seen,
                records_emitted: counters.records_emitted,
                records_lost: counters.records_lost,
                bytes_truncated: counters.bytes_truncated,
                messages_dropped: drops.connections
                    + drops.oversized_heads
                    + drops.pending_overflow
                    + drops.partial_heads
                    + drops.protocol_violations,
                tls_records_emitted: counters.tls_records_emitted,
                tls_uprobe_hits: counters.tls_entry_hits + counters.tls_return_hits,
            }),
            isolations: {
                self.isolator.refresh_counters(self.backend.as_mut());
                self.isolator.report()
            },
        }
    }

    /// Losses are themselves a finding: an attacker must not hide a request behind a flood that
    /// fills the ring buffer. Each policy on this node gets one, with the exact count.
    fn raise_capture_loss(&mut self, counters: &CaptureCounters) {
        let lost = counters.records_lost.saturating_sub(self.last_records_lost);
        self.last_records_lost = counters.records_lost;
        if lost == 0 {
            return;
        }
        let now_ms = SystemTimeMs::now();
        tracing::warn!(lost, "capture records lost: the ring buffer was full");
        for policy in self.policies.iter().filter(|p| !p.pod_uids.is_empty()) {
            let finding = Finding {
                rule: "capture-loss".into(),
                detector: "captureLoss".into(),
                severity: "medium".into(),
                count: lost,
                source: "kernel".into(),
                traffic: String::new(),
                pod_namespace: policy.reference.namespace.clone(),
                pod_name: format!("(all monitored pods on {})", self.node),
                method: String::new(),
                path: String::new(),
                evidence: format!(
                    "{lost} capture records lost since the last report (ring buffer full); {} lost since the agent started",
                    counters.records_lost
                ),
                first_seen_unix_ms: now_ms,
                last_seen_unix_ms: now_ms,
            };
            let map = self
                .findings
                .entry((policy.reference.namespace.clone(), policy.reference.name.clone()))
                .or_default();
            let e = map.entry(finding_key(&finding)).or_insert_with(|| Finding {
                count: 0,
                ..finding.clone()
            });
            e.count += finding.count;
            e.last_seen_unix_ms = now_ms;
            e.evidence = finding.evidence;
        }
    }

    fn record_loss_metrics(&mut self, counters: &CaptureCounters) {
        // Keys behavioural rules could not track (their tables were full of live windows). A
        // rule compiled anew starts from 0, so count what was added since the last report.
        let untracked: u64 = self
            .policies
            .iter()
            .flat_map(|p| p.rules.iter().map(|(_, r)| r.untracked()))
            .sum();
        let added = untracked.checked_sub(self.last_untracked).unwrap_or(untracked);
        self.last_untracked = untracked;
        let m = &self.metrics;
        m.dropped_add("detector_state_full", added);
        m.kernel_counter("packets_seen", counters.packets_seen);
        m.kernel_counter("records_emitted", counters.records_emitted);
        m.kernel_counter("records_lost", counters.records_lost);
        m.kernel_counter("bytes_truncated", counters.bytes_truncated);
        m.kernel_counter("parse_errors", counters.parse_errors);
        m.kernel_counter("packets_filtered", counters.packets_filtered);
        let d = self.tracker.drops;
        m.dropped("connection_limit", d.connections);
        m.dropped("oversized_head", d.oversized_heads);
        m.dropped("pending_overflow", d.pending_overflow);
        m.dropped("unmatched_response", d.unmatched_responses);
        m.dropped("partial_head", d.partial_heads);
        m.dropped("protocol_violation", d.protocol_violations);
        m.dropped("stream_gap", d.gaps);
        m.dropped("budget_eviction", d.budget_evictions);
        m.dropped("non_http", d.non_http);
        m.dropped("tls_not_decrypted", d.tls_not_decrypted);
        m.dropped("tls_session_unmatched", d.tls_sessions_unmatched);
        m.tls_decrypted(d.tls_decrypted);
        m.set_attached_pods(self.attachments.len());
        m.set_connections(self.tracker.connections());
    }

    /// Puts back the deltas of a report that was not delivered, so nothing is lost.
    pub fn restore(&mut self, report: AgentReport) {
        for m in report.monitors {
            self.monitors_pending
                .entry(key(&m.monitor))
                .or_default()
                .restore(&m.endpoints, m.overflow_requests);
        }
        for p in report.policies {
            if let Some(policy) = &p.policy {
                self.responder.restore(policy, p.actions);
            }
            let k = key(&p.policy);
            let map = self.findings.entry(k).or_default();
            for f in p.findings {
                let e = map.entry(finding_key(&f)).or_insert_with(|| Finding {
                    count: 0,
                    ..f.clone()
                });
                e.count += f.count;
                e.first_seen_unix_ms = e.first_seen_unix_ms.min(f.first_seen_unix_ms);
                e.last_seen_unix_ms = e.last_seen_unix_ms.max(f.last_seen_unix_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_api::agent::{CaptureConfig, PolicyConfig, RuleConfig, WorkloadTarget};
    use palisade_common::{DIRECTION_EGRESS, DIRECTION_INGRESS, FAMILY_IPV4};

    /// Records attach/detach calls; refuses cgroups whose path contains "refuse".
    #[derive(Default)]
    struct FakeBackend {
        attached: Vec<PathBuf>,
        tls_pids: std::rc::Rc<std::cell::RefCell<Vec<u32>>>,
        lost: std::rc::Rc<std::cell::Cell<u64>>,
        /// The kernel's blocked-sources map, as the fake holds it.
        blocked: std::rc::Rc<std::cell::RefCell<HashMap<BlockKey, u64>>>,
        enforced: Vec<String>,
        /// Whether each enforced pod carries the egress program.
        egress: HashMap<String, bool>,
        /// The kernel's isolations: cgroup id -> (expiry, flags, allow-list).
        isolated: HashMap<u64, (u64, u64, std::collections::BTreeSet<crate::capture::AllowPrefix>)>,
        /// The kernel's capture filters.
        filters: BTreeMap<CaptureFilterKey, CaptureFilter>,
    }

    impl CaptureBackend for FakeBackend {
        fn attach(&mut self, dir: &Path) -> Result<u64, String> {
            if dir.to_string_lossy().contains("refuse") {
                return Err("attaching refused: Operation not permitted (os error 1)".into());
            }
            self.attached.push(dir.to_path_buf());
            Ok(1000 + self.attached.len() as u64)
        }
        fn detach(&mut self, dir: &Path) -> Result<(), String> {
            self.attached.retain(|d| d != dir);
            Ok(())
        }
        fn set_capture_filter(
            &mut self,
            key: CaptureFilterKey,
            filter: Option<&CaptureFilter>,
        ) -> Result<(), String> {
            match filter {
                Some(f) => self.filters.insert(key, *f),
                None => self.filters.remove(&key),
            };
            Ok(())
        }
        fn tls_ready(&self) -> Result<(), String> {
            Ok(())
        }
        fn attach_tls(&mut self, pid: u32, _libssl: &Path) -> Result<(), String> {
            self.tls_pids.borrow_mut().push(pid);
            Ok(())
        }
        fn detach_tls(&mut self, pid: u32) {
            self.tls_pids.borrow_mut().retain(|p| *p != pid);
        }
        fn counters(&self) -> CaptureCounters {
            CaptureCounters {
                packets_seen: 7,
                records_lost: self.lost.get(),
                ..Default::default()
            }
        }
        fn enforce_pod(&mut self, pod_uid: &str, _dir: &Path, egress: bool) -> Result<bool, String> {
            self.enforced.retain(|u| u != pod_uid);
            self.enforced.push(pod_uid.to_string());
            self.egress.insert(pod_uid.to_string(), egress);
            Ok(false)
        }
        fn release_pod(&mut self, pod_uid: &str) {
            self.enforced.retain(|u| u != pod_uid);
        }
        fn block(&mut self, key: BlockKey, expires_ns: u64) -> Result<(), String> {
            self.blocked.borrow_mut().insert(key, expires_ns);
            Ok(())
        }
        fn unblock(&mut self, key: &BlockKey) -> Result<u64, String> {
            Ok(self.blocked.borrow_mut().remove(key).map(|_| 3).unwrap_or(0))
        }
        fn isolate(
            &mut self,
            cgroup_id: u64,
            expires_ns: u64,
            flags: u64,
            _cause: [u8; 16],
            allow: &[crate::capture::AllowPrefix],
            remove: &[crate::capture::AllowPrefix],
        ) -> Result<(), String> {
            let entry = self.isolated.entry(cgroup_id).or_default();
            entry.0 = expires_ns;
            entry.1 = flags;
            entry.2.extend(allow.iter().copied());
            for r in remove {
                entry.2.remove(r);
            }
            Ok(())
        }
        fn unisolate(
            &mut self,
            cgroup_id: u64,
            _allow: &[crate::capture::AllowPrefix],
        ) -> Result<(), String> {
            self.isolated.remove(&cgroup_id);
            Ok(())
        }
        fn isolations(&mut self) -> Vec<(u64, palisade_common::IsolationValue)> {
            self.isolated
                .iter()
                .map(|(id, (expires_ns, flags, _))| {
                    (
                        *id,
                        palisade_common::IsolationValue {
                            expires_ns: *expires_ns,
                            flags: *flags,
                            dropped_ingress: 4,
                            dropped_egress: 0,
                            cause: [0; 16],
                        },
                    )
                })
                .collect()
        }
        fn blocks(&mut self) -> Vec<(BlockKey, BlockValue)> {
            self.blocked
                .borrow()
                .iter()
                .map(|(k, e)| {
                    (
                        *k,
                        BlockValue {
                            expires_ns: *e,
                            dropped_packets: 0,
                        },
                    )
                })
                .collect()
        }
    }

    #[test]
    fn isolation_follows_the_configuration_and_reports_each_pod() {
        use crate::isolation::parse_allow;
        let root = std::env::temp_dir().join(format!("palisade-runtime-isolate-{}", std::process::id()));
        let dir = root.join("kubepods/besteffort/poduid-b");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let cgroup_id = crate::workloads::cgroup_id(&dir).expect("ino");
        let mut rt = runtime(&root);
        let isolation = |targets: Vec<WorkloadTarget>| palisade_api::agent::IsolationConfig {
            isolation: Some(ObjectRef {
                namespace: "demo".into(),
                name: "quarantine".into(),
                generation: 1,
            }),
            targets,
            allow_cidrs: vec!["10.1.0.0/16".into()],
            allow_node: false,
            deny_egress: true,
            expires_unix_ms: 0,
        };
        let mut b = target("uid-b", "b");
        b.pod_ips = vec!["10.0.0.9".into()];
        let mut c = config(1, vec![target("uid-a", "a")]);
        // uid-b is not monitored: isolation finds its cgroup by itself; uid-gone has none. A
        // second isolation of uid-b does not take it over: it says why it does not apply.
        let mut second = isolation(vec![b.clone()]);
        if let Some(r) = second.isolation.as_mut() {
            r.name = "zz-second".into();
        }
        c.isolations = vec![isolation(vec![b.clone(), target("uid-gone", "gone")]), second];
        rt.apply(c);
        let backend = rt.backend_mut().expect("backend");
        assert_eq!(backend.enforced, vec!["uid-b".to_string()]);
        assert_eq!(
            backend.egress.get("uid-b"),
            Some(&true),
            "egress denied: egress program too"
        );
        let (expires, flags, allow) = backend.isolated.get(&cgroup_id).cloned().expect("isolated");
        assert_eq!(
            (expires, flags),
            (u64::MAX, palisade_common::ISOLATION_DENY_EGRESS)
        );
        for want in ["10.1.0.0/16", "10.0.0.9", "127.0.0.0/8", "::1/128"] {
            assert!(
                allow.contains(&parse_allow(want).expect("cidr")),
                "{want} not allowed"
            );
        }
        let report = rt.take_report();
        assert_eq!(report.isolations.len(), 2);
        let second = &report.isolations[1].pods;
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].state, "failed");
        assert!(
            second[0]
                .detail
                .contains("already isolated by ApiIsolation demo/quarantine"),
            "{}",
            second[0].detail
        );
        let pods = &report.isolations[0].pods;
        assert_eq!(pods.len(), 2, "{pods:?}");
        assert_eq!(
            (pods[0].pod_name.as_str(), pods[0].state.as_str()),
            ("b", "isolated")
        );
        assert_eq!(pods[0].dropped_ingress, 4, "counters come from the kernel map");
        assert_eq!(
            (pods[1].pod_name.as_str(), pods[1].state.as_str()),
            ("gone", "failed")
        );
        assert!(pods[1].detail.contains("uid-gone"), "{}", pods[1].detail);

        // Released: the next configuration no longer holds it.
        rt.apply(config(2, vec![target("uid-a", "a")]));
        let backend = rt.backend_mut().expect("backend");
        assert!(backend.isolated.is_empty(), "isolation removed from the kernel");
        assert!(backend.enforced.is_empty(), "enforcement programs detached");
        assert!(rt.take_report().isolations.is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn isolate_action_isolates_the_attacked_pod_with_audit_expiry_and_release() {
        let root = std::env::temp_dir().join(format!("palisade-runtime-isolate-rule-{}", std::process::id()));
        std::fs::create_dir_all(root.join("kubepods/besteffort/poduid-a")).expect("mkdir");
        let mut rt = runtime(&root);
        let with_mode = |version: u64, mode: &str| {
            let mut t = target("uid-a", "a");
            t.pod_ips = vec!["10.0.0.2".into()];
            let mut c = config(version, vec![t]);
            c.policies[0].mode = mode.into();
            c.policies[0].rules = vec![RuleConfig {
                name: "traversal".into(),
                detector: "pathTraversal".into(),
                severity: "high".into(),
                actions: vec![palisade_api::agent::ActionConfig {
                    r#type: "isolate".into(),
                    ttl_ms: 60_000,
                    allow_cidrs: vec!["10.0.0.3".into()],
                    allow_node: false,
                    deny_egress: true,
                }],
                ..Default::default()
            }];
            c
        };
        let attack = |rt: &mut Runtime<FakeBackend>, seq: u32| {
            rt.on_record(
                &record(DIRECTION_INGRESS, seq, 1001, 8080),
                b"GET /files/..%2f..%2fetc%2fpasswd HTTP/1.1\r\n\r\n",
            );
        };
        let isolated =
            |rt: &mut Runtime<FakeBackend>| rt.backend_mut().map(|b| b.isolated.clone()).unwrap_or_default();
        // Audit: recorded once, nothing in the kernel.
        rt.apply(with_mode(1, "audit"));
        attack(&mut rt, 10);
        attack(&mut rt, 20);
        assert!(isolated(&mut rt).is_empty(), "audit mode never isolates");
        let a = rt.take_report().policies.remove(0).actions;
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(
            (
                a[0].action.as_str(),
                a[0].state.as_str(),
                a[0].enforced,
                a[0].source.as_str()
            ),
            ("isolate", "started", false, "10.0.0.1")
        );
        // Enforce: the attacked pod is isolated at once, with its allow-list, once per ttl.
        rt.apply(with_mode(2, "enforce"));
        attack(&mut rt, 100);
        attack(&mut rt, 200);
        let kernel = isolated(&mut rt);
        assert_eq!(kernel.len(), 1, "{kernel:?}");
        let (_, flags, allow) = kernel.values().next().cloned().expect("entry");
        assert_eq!(flags, palisade_common::ISOLATION_DENY_EGRESS);
        for want in ["10.0.0.3", "10.0.0.2", "127.0.0.0/8"] {
            assert!(
                allow.contains(&crate::isolation::parse_allow(want).expect("cidr")),
                "{want}"
            );
        }
        let a = rt.take_report().policies.remove(0).actions;
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(
            (a[0].action.as_str(), a[0].state.as_str(), a[0].enforced),
            ("isolate", "started", true)
        );
        assert!(
            rt.take_report().isolations.is_empty(),
            "reported as the policy's action only"
        );
        // Expiry ends it, with the drop count.
        rt.expire_actions(u64::MAX / 2);
        assert!(isolated(&mut rt).is_empty());
        let a = rt.take_report().policies.remove(0).actions;
        let ended: Vec<(&str, u64)> = a.iter().map(|r| (r.state.as_str(), r.dropped_packets)).collect();
        assert!(ended.contains(&("expired", 4)), "{ended:?}");
        // Isolated again, then the policy stops enforcing: released.
        attack(&mut rt, 300);
        assert_eq!(isolated(&mut rt).len(), 1);
        rt.apply(with_mode(3, "audit"));
        assert!(
            isolated(&mut rt).is_empty(),
            "released when the policy stops enforcing"
        );
        let states: Vec<String> = rt
            .take_report()
            .policies
            .iter()
            .flat_map(|p| p.actions.iter().map(|a| a.state.clone()))
            .collect();
        assert!(states.contains(&"released".to_string()), "{states:?}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn block_source_in_audit_then_enforce_mode_with_expiry_and_release() {
        let root = std::env::temp_dir().join(format!("palisade-runtime-block-{}", std::process::id()));
        std::fs::create_dir_all(root.join("kubepods/besteffort/poduid-a")).expect("mkdir");
        let mut rt = runtime(&root);
        let blocked = rt.backend_mut().map(|b| b.blocked.clone()).expect("backend");
        let with_mode = |version: u64, mode: &str| {
            let mut c = config(version, vec![target("uid-a", "a")]);
            c.policies[0].mode = mode.into();
            c.policies[0].rules = vec![RuleConfig {
                name: "traversal".into(),
                detector: "pathTraversal".into(),
                severity: "high".into(),
                actions: vec![palisade_api::agent::ActionConfig {
                    r#type: "blockSource".into(),
                    ttl_ms: 60_000,
                    ..Default::default()
                }],
                ..Default::default()
            }];
            c
        };
        let attack = |rt: &mut Runtime<FakeBackend>, seq: u32| {
            rt.on_record(
                &record(DIRECTION_INGRESS, seq, 1001, 8080),
                b"GET /files/..%2f..%2fetc%2fpasswd HTTP/1.1\r\n\r\n",
            );
        };
        rt.apply(with_mode(1, "audit"));
        attack(&mut rt, 10);
        assert!(blocked.borrow().is_empty(), "audit mode never blocks");
        let report = rt.take_report();
        let a = &report.policies[0].actions;
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(
            (a[0].state.as_str(), a[0].enforced, a[0].source.as_str()),
            ("started", false, "10.0.0.1")
        );

        rt.apply(with_mode(2, "enforce"));
        assert_eq!(
            rt.backend_mut().map(|b| b.enforced.clone()),
            Some(vec!["uid-a".to_string()])
        );
        attack(&mut rt, 100);
        attack(&mut rt, 200);
        assert_eq!(
            blocked.borrow().len(),
            1,
            "one block per source and pod, not per request"
        );
        let a = rt.take_report().policies.remove(0).actions;
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!((a[0].state.as_str(), a[0].enforced), ("started", true));

        // Expiry ends it in the kernel map and says so, with the drop count.
        rt.expire_actions(u64::MAX / 2);
        assert!(blocked.borrow().is_empty());
        let a = rt.take_report().policies.remove(0).actions;
        assert_eq!((a[0].state.as_str(), a[0].dropped_packets), ("expired", 3));

        // A new block, then the policy goes away: released, and the program detached.
        attack(&mut rt, 300);
        assert_eq!(blocked.borrow().len(), 1);
        let mut without = with_mode(3, "enforce");
        without.policies.clear();
        rt.apply(without);
        assert!(blocked.borrow().is_empty(), "a deleted policy's blocks end");
        assert_eq!(rt.backend_mut().map(|b| b.enforced.len()), Some(0));
        let released: Vec<String> = rt
            .take_report()
            .policies
            .iter()
            .flat_map(|p| p.actions.iter().map(|a| a.state.clone()))
            .collect();
        assert!(released.contains(&"released".to_string()), "{released:?}");
        let _ = std::fs::remove_dir_all(&root);
    }

    fn target(uid: &str, name: &str) -> WorkloadTarget {
        WorkloadTarget {
            pod_namespace: "demo".into(),
            pod_name: name.into(),
            pod_uid: uid.into(),
            ..Default::default()
        }
    }

    fn config(version: u64, targets: Vec<WorkloadTarget>) -> NodeConfig {
        let uids = targets.iter().map(|t| t.pod_uid.clone()).collect();
        NodeConfig {
            version,
            node_name: "n1".into(),
            cluster_cidrs: vec!["10.0.0.0/30".into()],
            isolations: vec![],
            monitors: vec![MonitorConfig {
                monitor: Some(ObjectRef {
                    namespace: "demo".into(),
                    name: "api".into(),
                    generation: 1,
                }),
                targets,
                ports: vec![8080],
                capture: Some(CaptureConfig {
                    max_header_bytes: 8192,
                    ..Default::default()
                }),
                discovery: true,
                max_endpoints: 2,
                ..Default::default()
            }],
            policies: vec![PolicyConfig {
                policy: Some(ObjectRef {
                    namespace: "demo".into(),
                    name: "guard".into(),
                    generation: 1,
                }),
                monitors: vec!["api".into()],
                pod_uids: uids,
                mode: "audit".into(),
                rules: vec![
                    RuleConfig {
                        name: "traversal".into(),
                        detector: "pathTraversal".into(),
                        severity: "high".into(),
                        ..Default::default()
                    },
                    RuleConfig {
                        name: "future".into(),
                        detector: "aDetectorFromANewerOperator".into(),
                        severity: "medium".into(),
                        ..Default::default()
                    },
                ],
            }],
        }
    }

    fn record(direction: u8, seq: u32, cgroup_id: u64, local_port: u16) -> CaptureHeader {
        let mut pod = [0u8; 16];
        pod[..4].copy_from_slice(&[10, 0, 0, 2]);
        let mut client = [0u8; 16];
        client[..4].copy_from_slice(&[10, 0, 0, 1]);
        let ingress = direction == DIRECTION_INGRESS;
        // One connection per exchange (seq 10 and 11, 20 and 21, ...): sequence numbers stay
        // consistent within each.
        let client_port = 40000 + (seq / 10) as u16;
        CaptureHeader {
            timestamp_ns: 1_000_000 + seq as u64,
            cgroup_id,
            tcp_seq: seq,
            payload_len: 0,
            chunk_offset: 0,
            captured_len: 0,
            source_addr: if ingress { client } else { pod },
            dest_addr: if ingress { pod } else { client },
            source_port: if ingress { client_port } else { local_port },
            dest_port: if ingress { local_port } else { client_port },
            family: FAMILY_IPV4,
            direction,
            tcp_flags: 0x18,
            _padding: [0],
        }
    }

    fn runtime(root: &Path) -> Runtime<FakeBackend> {
        Runtime::new(
            "n1".into(),
            "i1".into(),
            Some(root.to_path_buf()),
            Ok(FakeBackend::default()),
            vec![],
            vec![],
            0,
        )
    }

    #[test]
    fn capture_filters_follow_the_monitors_and_the_containers_found() {
        use std::os::unix::fs::MetadataExt as _;
        let root = std::env::temp_dir().join(format!("palisade-runtime-filters-{}", std::process::id()));
        let pod_dir = root.join("kubepods/besteffort/poduid-a");
        std::fs::create_dir_all(pod_dir.join("container-1")).expect("mkdir");
        let ino = |dir: &Path| std::fs::metadata(dir).expect("stat").ino();
        let first = ino(&pod_dir.join("container-1"));
        let mut rt = runtime(&root);
        // Per cgroup: its entries' ports (0: its own) and sampling.
        let filters = |rt: &mut Runtime<FakeBackend>| {
            let mut by_cgroup: BTreeMap<u64, Vec<(u16, u8)>> = BTreeMap::new();
            for (k, f) in &rt.backend_mut().expect("backend").filters {
                by_cgroup
                    .entry(k.cgroup_id)
                    .or_default()
                    .push((k.local_port, f.sampling_percent));
            }
            by_cgroup.into_iter().collect::<Vec<_>>()
        };
        let mut cfg = config(1, vec![target("uid-a", "a")]);
        cfg.monitors[0]
            .capture
            .as_mut()
            .expect("capture")
            .sampling_percent = 25;
        // The pod's cgroup and the container's that exists at attach.
        rt.apply(cfg.clone());
        let pod = vec![(0, 100), (8080, 25)];
        let mut want: BTreeMap<u64, Vec<(u16, u8)>> = [(1001, pod.clone()), (first, pod.clone())].into();
        assert_eq!(filters(&mut rt), want.clone().into_iter().collect::<Vec<_>>());

        // A container started later, found when its first record arrives.
        std::fs::create_dir(pod_dir.join("container-2")).expect("mkdir");
        let second = ino(&pod_dir.join("container-2"));
        let request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut h = record(DIRECTION_INGRESS, 10, second, 8080);
        h.payload_len = request.len() as u32;
        h.captured_len = request.len() as u32;
        rt.on_record(&h, request);
        want.insert(second, pod);
        assert_eq!(filters(&mut rt), want.into_iter().collect::<Vec<_>>());

        // The monitor changes: so do the pod's filters. Unselected: they are removed.
        cfg.version = 2;
        cfg.monitors[0].ports = vec![9090, 8080];
        cfg.monitors[0]
            .capture
            .as_mut()
            .expect("capture")
            .sampling_percent = 100;
        rt.apply(cfg);
        let both = vec![(0, 100), (8080, 100), (9090, 100)];
        let mut all: Vec<_> = [1001, first, second]
            .into_iter()
            .map(|id| (id, both.clone()))
            .collect();
        all.sort();
        assert_eq!(filters(&mut rt), all);
        rt.apply(config(3, vec![]));
        assert_eq!(filters(&mut rt), []);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn applies_config_counts_endpoints_raises_findings_and_keeps_undelivered_reports() {
        let root = std::env::temp_dir().join(format!("palisade-runtime-test-{}", std::process::id()));
        std::fs::create_dir_all(root.join("kubepods/besteffort/poduid-a")).expect("mkdir");
        std::fs::create_dir_all(root.join("kubepods/besteffort/poduid-refuse")).expect("mkdir");
        let mut rt = runtime(&root);
        rt.apply(config(
            3,
            vec![
                target("uid-a", "a"),
                target("uid-refuse", "b"),
                target("uid-missing", "c"),
            ],
        ));
        assert_eq!(rt.applied_version(), 3);
        assert_eq!(rt.attached_pods(), 1);

        let cg = 1001;
        let exchange = |rt: &mut Runtime<FakeBackend>, seq: u32, target: &str, status: u16, port: u16| {
            rt.on_record(
                &record(DIRECTION_INGRESS, seq, cg, port),
                format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
            );
            rt.on_record(
                &record(DIRECTION_EGRESS, seq + 1, cg, port),
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
            );
        };
        exchange(&mut rt, 10, "/users/1", 200, 8080);
        exchange(&mut rt, 20, "/users/2", 404, 8080);
        exchange(
            &mut rt,
            30,
            "/files/..%2f..%2fetc%2fpasswd?token=hunter2",
            404,
            8080,
        );
        exchange(&mut rt, 40, "/other", 200, 8080); // third endpoint: over max_endpoints=2
        exchange(&mut rt, 50, "/../secret", 200, 9090); // port not monitored

        let report = rt.take_report();
        assert_eq!(report.applied_version, 3);
        let m = &report.monitors[0];
        assert_eq!((m.workloads, m.probes_attached), (3, 2));
        assert_eq!(m.errors.len(), 2, "{:?}", m.errors);
        assert!(m
            .errors
            .iter()
            .any(|e| e.contains("pod demo/b") && e.contains("Operation not permitted")));
        assert!(m
            .errors
            .iter()
            .any(|e| e.contains("pod demo/c") && e.contains("no cgroup directory")));
        let mut endpoints: Vec<_> = m
            .endpoints
            .iter()
            .map(|e| (e.path.as_str(), e.status, e.count))
            .collect();
        endpoints.sort();
        assert_eq!(
            endpoints,
            vec![
                ("/files/..%2f..%2fetc%2fpasswd", 404, 1),
                ("/users/{id}", 200, 1),
                ("/users/{id}", 404, 1)
            ]
        );
        assert_eq!(m.overflow_requests, 1);
        let p = &report.policies[0];
        assert_eq!(
            p.errors.len(),
            1,
            "the unimplemented detector is reported: {:?}",
            p.errors
        );
        assert_eq!(p.findings.len(), 1);
        let f = &p.findings[0];
        assert_eq!(
            (f.rule.as_str(), f.source.as_str(), f.count),
            ("traversal", "10.0.0.1", 1)
        );
        assert!(
            f.evidence.contains("token=[REDACTED]") && !f.evidence.contains("hunter2"),
            "{}",
            f.evidence
        );
        assert_eq!(
            f.traffic, "east-west",
            "10.0.0.1 is inside the cluster's pod network"
        );
        assert_eq!(report.capture.map(|c| c.packets_seen), Some(7));

        // Not delivered: restored, then merged with new deltas, counted once each.
        rt.restore(report);
        exchange(&mut rt, 60, "/files/..%2f..%2fetc%2fpasswd", 404, 8080);
        let again = rt.take_report();
        assert_eq!(
            again.policies[0]
                .findings
                .iter()
                .map(|f| f.count)
                .collect::<Vec<_>>(),
            vec![2],
            "{:?}",
            again.policies[0].findings
        );
        let users: u64 = again.monitors[0]
            .endpoints
            .iter()
            .filter(|e| e.path == "/users/{id}")
            .map(|e| e.count)
            .sum();
        assert_eq!(users, 2);
        assert!(
            rt.take_report().policies[0].findings.is_empty(),
            "delivered deltas are not sent twice"
        );

        // The pod leaves the config: capture is detached.
        rt.apply(config(4, vec![]));
        assert_eq!(rt.attached_pods(), 0);
        exchange(&mut rt, 70, "/users/3", 200, 8080);
        assert!(rt.take_report().monitors[0].endpoints.is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_inventory_keeps_credentials_media_types_personal_data_and_latency_but_no_secret() {
        let root = std::env::temp_dir().join(format!("palisade-runtime-inventory-{}", std::process::id()));
        std::fs::create_dir_all(root.join("kubepods/besteffort/poduid-a")).expect("mkdir");
        for bodies in [true, false] {
            let mut rt = runtime(&root);
            let mut cfg = config(1, vec![target("uid-a", "a")]);
            cfg.policies.clear();
            cfg.monitors[0].capture = Some(CaptureConfig {
                max_header_bytes: 8192,
                bodies,
                max_body_bytes: 4096,
                ..Default::default()
            });
            rt.apply(cfg);
            let exchange = |rt: &mut Runtime<FakeBackend>, seq: u32, credentials: &str| {
                let body = r#"{"user":"ann"}"#;
                rt.on_record(
                    &record(DIRECTION_INGRESS, seq, 1001, 8080),
                    format!(
                        "POST /users HTTP/1.1\r\nHost: x\r\n{credentials}Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
                let answer = r#"{"id":7,"email":"ann@example.com"}"#;
                rt.on_record(
                    &record(DIRECTION_EGRESS, seq + 1, 1001, 8080),
                    format!(
                        "HTTP/1.1 201 Created\r\nContent-Type: Application/JSON\r\nContent-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    )
                    .as_bytes(),
                );
            };
            exchange(&mut rt, 10, "Authorization: Bearer hunter2-token\r\n");
            exchange(&mut rt, 20, "");
            let report = rt.take_report();
            let [e] = &report.monitors[0].endpoints[..] else {
                panic!("one endpoint and status: {:?}", report.monitors[0].endpoints)
            };
            assert_eq!((e.path.as_str(), e.status, e.count), ("/users", 201, 2));
            assert_eq!(e.auth_schemes, ["none", "bearer"]);
            assert_eq!(e.request_content_types, ["application/json"]);
            assert_eq!(e.response_content_types, ["application/json"]);
            let pii: &[&str] = if bodies { &["email"] } else { &[] };
            assert_eq!(e.pii_types, pii, "bodies captured: {bodies}");
            assert_eq!(e.latency_buckets.iter().sum::<u64>(), 2);
            let text = format!("{report:?}");
            assert!(!text.contains("hunter2") && !text.contains("ann@"), "{text}");
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn behavioural_rules_judge_exchanges_and_keep_their_state_across_configs() {
        let root = std::env::temp_dir().join(format!("palisade-runtime-bola-{}", std::process::id()));
        std::fs::create_dir_all(root.join("kubepods/besteffort/poduid-a")).expect("mkdir");
        let mut rt = runtime(&root);
        let with_rules = |version: u64| {
            let mut c = config(version, vec![target("uid-a", "a")]);
            c.monitors[0].max_endpoints = 100;
            c.policies[0].rules = vec![
                RuleConfig {
                    name: "enumeration".into(),
                    detector: "bola".into(),
                    severity: "medium".into(),
                    params: [("distinctIds".to_string(), "3".to_string())].into(),
                    ..Default::default()
                },
                RuleConfig {
                    name: "logins".into(),
                    detector: "bruteForce".into(),
                    severity: "medium".into(),
                    params: [("failures".to_string(), "2".to_string())].into(),
                    ..Default::default()
                },
            ];
            c
        };
        rt.apply(with_rules(1));
        let cg = 1001;
        let exchange = |rt: &mut Runtime<FakeBackend>, seq: u32, request: &str, status: u16| {
            rt.on_record(&record(DIRECTION_INGRESS, seq, cg, 8080), request.as_bytes());
            rt.on_record(
                &record(DIRECTION_EGRESS, seq + 1, cg, 8080),
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes(),
            );
        };
        exchange(&mut rt, 10, "GET /users/1 HTTP/1.1\r\n\r\n", 200);
        exchange(&mut rt, 20, "GET /users/2 HTTP/1.1\r\n\r\n", 404);
        // A new configuration with the same rules keeps what they learned.
        rt.apply(with_rules(2));
        exchange(&mut rt, 30, "GET /users/3 HTTP/1.1\r\n\r\n", 200);
        exchange(&mut rt, 40, "GET /users/4 HTTP/1.1\r\n\r\n", 200);
        let login = "POST /login HTTP/1.1\r\nContent-Length: 31\r\n\r\n{\"user\":\"a\",\"password\":\"x\"}";
        exchange(&mut rt, 50, login, 401);
        exchange(&mut rt, 60, login, 401);
        let report = rt.take_report();
        let p = &report.policies[0];
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let mut found: Vec<_> = p
            .findings
            .iter()
            .map(|f| (f.rule.as_str(), f.path.as_str(), f.count))
            .collect();
        found.sort();
        assert_eq!(
            found,
            [("enumeration", "/users/{id}", 2), ("logins", "/login", 1)]
        );
        let bola = p
            .findings
            .iter()
            .find(|f| f.rule == "enumeration")
            .expect("bola finding");
        assert_eq!(
            bola.evidence,
            "10.0.0.1 touched 3 distinct object IDs of GET /users/{id} within 1m (limit 3)"
        );
        assert_eq!(
            (bola.detector.as_str(), bola.source.as_str()),
            ("bola", "10.0.0.1")
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn ring_buffer_losses_become_an_exact_finding() {
        let root = std::env::temp_dir().join(format!("palisade-runtime-loss-{}", std::process::id()));
        std::fs::create_dir_all(root.join("kubepods/besteffort/poduid-a")).expect("mkdir");
        let backend = FakeBackend::default();
        let lost = backend.lost.clone();
        let mut rt = Runtime::new(
            "n1".into(),
            "i1".into(),
            Some(root.clone()),
            Ok(backend),
            vec![],
            vec![],
            0,
        );
        rt.apply(config(1, vec![target("uid-a", "a")]));
        assert!(rt.take_report().policies[0].findings.is_empty());
        lost.set(40);
        let r = rt.take_report();
        let f = &r.policies[0].findings[0];
        assert_eq!((f.rule.as_str(), f.count), ("capture-loss", 40));
        assert_eq!(r.capture.map(|c| c.records_lost), Some(40));
        lost.set(45);
        assert_eq!(
            rt.take_report().policies[0].findings[0].count,
            5,
            "only the new losses"
        );
        assert!(rt.take_report().policies[0].findings.is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn tls_follows_the_pods_processes_and_reports_coverage() {
        let root = std::env::temp_dir().join(format!("palisade-runtime-tls-{}", std::process::id()));
        let pod_a = root.join("kubepods/besteffort/poduid-a");
        let pod_b = root.join("kubepods/besteffort/poduid-b");
        std::fs::create_dir_all(pod_a.join("app")).expect("mkdir");
        std::fs::create_dir_all(&pod_b).expect("mkdir");
        // Plain files stand in for cgroupfs: pids 100 and 101 in pod a's container, 200 in pod b.
        std::fs::write(pod_a.join("cgroup.procs"), "").expect("write");
        std::fs::write(pod_a.join("app/cgroup.procs"), "100\n101\n").expect("write");
        std::fs::write(pod_b.join("cgroup.procs"), "200\n").expect("write");
        let backend = FakeBackend::default();
        let tls_pids = backend.tls_pids.clone();
        let mut rt = Runtime::new(
            "n1".into(),
            "i1".into(),
            Some(root.clone()),
            Ok(backend),
            vec![],
            vec![],
            0,
        );
        // Only pid 100 maps OpenSSL; pod b runs something else (say, a Go binary).
        rt.set_libssl_finder(|pid| (pid == 100).then(|| PathBuf::from("/usr/lib/libssl.so.3")));
        let mut cfg = config(1, vec![target("uid-a", "a"), target("uid-b", "b")]);
        cfg.monitors[0].tls = true;
        rt.apply(cfg.clone());
        assert_eq!(*tls_pids.borrow(), vec![100]);
        let report = rt.take_report();
        let tls = &report.monitors[0].tls;
        assert_eq!(tls.len(), 2);
        let a = tls.iter().find(|t| t.pod_name == "a").expect("a");
        assert!(
            a.covered
                && a.detail.contains("libssl.so.3")
                && a.detail.contains("1 of 2 processes")
                && a.detail.ends_with(": reads and writes probed"),
            "{a:?}"
        );
        let b = tls.iter().find(|t| t.pod_name == "b").expect("b");
        assert!(
            !b.covered && b.detail.contains("none of the pod's 1 processes maps OpenSSL"),
            "{b:?}"
        );

        // pid 100 exits: its probes go; TLS off: everything detaches.
        std::fs::write(pod_a.join("app/cgroup.procs"), "101\n").expect("write");
        rt.housekeeping(0);
        assert!(tls_pids.borrow().is_empty());
        rt.apply(config(2, vec![target("uid-a", "a")]));
        assert!(
            rt.take_report().monitors[0].tls.is_empty(),
            "no TLS coverage reported when TLS is off"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_node_without_capture_reports_why() {
        let mut rt: Runtime<FakeBackend> = Runtime::new(
            "n1".into(),
            "i1".into(),
            None,
            Err("BPF_PROG_LOAD refused: Operation not permitted".into()),
            vec![],
            vec![],
            0,
        );
        rt.apply(config(1, vec![target("uid-a", "a")]));
        let report = rt.take_report();
        assert!(report
            .node_errors
            .iter()
            .any(|e| e.contains("capture programs not loaded") && e.contains("Operation not permitted")));
        assert!(report
            .node_errors
            .iter()
            .any(|e| e.contains("no cgroup v2 hierarchy")));
        assert_eq!(report.monitors[0].probes_attached, 0);
        assert_eq!(report.monitors[0].errors.len(), 1);
    }
}
