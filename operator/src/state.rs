//! The operator's shared state: the cluster view (reflector stores), the per-node desired
//! configurations handed to agents, and what agents reported (applied versions, errors,
//! endpoints, findings). Controllers read it to write status; the gRPC service writes into it.
//! It also holds the ConfigMaps that monitors reference for their OpenAPI documents, and those
//! documents parsed (see [`crate::openapi_source`]).

use crate::compile;
use crate::inventory::EndpointTotals;
use crate::openapi_source::{load_document, ConfigMapKey, ConfigMapState, OpenApiDocument, OpenApiSource};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::{ObjectRef, Store};
use palisade_api::agent::{self, AgentReport, NodeConfig};
use palisade_api::v1alpha1::{ApiIsolation, ApiMonitor, ApiPolicy, MAX_FINDINGS_IN_STATUS};
use prost::Message;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use tokio::sync::{mpsc, watch};

/// Most endpoints the operator keeps per monitor (all nodes together); the rest count as overflow.
pub const MAX_ENDPOINTS_PER_MONITOR: usize = 2000;

/// Reflector stores of everything the operator compiles from.
#[derive(Clone)]
pub struct ClusterView {
    pub pods: Store<Pod>,
    pub monitors: Store<ApiMonitor>,
    pub policies: Store<ApiPolicy>,
    pub nodes: Store<Node>,
    pub isolations: Store<ApiIsolation>,
}

/// Key of a namespaced object.
pub type ObjectKey = (String, String);

/// One node's agent, as far as the operator knows.
#[derive(Default, Clone, Debug)]
pub struct AgentState {
    pub connected: bool,
    pub instance: String,
    pub applied_version: u64,
    pub features: Vec<agent::FeatureProbe>,
    pub node_errors: Vec<String>,
    pub monitors: HashMap<ObjectKey, agent::MonitorReport>,
    /// The agent's last report per policy, findings removed.
    pub policies: HashMap<ObjectKey, agent::PolicyReport>,
    pub capture: agent::CaptureStats,
    /// The agent's last account of each isolation (a full state).
    pub isolations: HashMap<ObjectKey, agent::IsolationReport>,
}

#[derive(Default, Clone, Debug)]
pub struct MonitorTelemetry {
    pub endpoints: BTreeMap<(String, String), EndpointTotals>,
    pub overflow_requests: u64,
}

/// A finding as the operator keeps it: what the agent sent, and from which node.
#[derive(Clone, Debug)]
pub struct NodeFinding {
    pub node: String,
    pub finding: agent::Finding,
}

#[derive(Default, Clone, Debug)]
pub struct PolicyTelemetry {
    pub total: u64,
    /// rule -> (severity, count)
    pub by_rule: BTreeMap<String, (String, u64)>,
    pub last_finding_unix_ms: i64,
    /// Newest first, at most MAX_FINDINGS_IN_STATUS.
    pub recent: VecDeque<NodeFinding>,
    /// Findings not yet announced by an Event, aggregated by (rule, pod); drained by the policy controller.
    pub unannounced: BTreeMap<(String, String), PendingEvent>,
    /// The latest record of each action, by (node, pod, source, rule), with when it started.
    pub actions: BTreeMap<(String, String, String, String), (agent::ActionRecord, i64)>,
    /// Action changes not yet announced by an Event: (node, record).
    pub actions_unannounced: Vec<(String, agent::ActionRecord)>,
    /// Findings per (rule, pod), for the policy's PolicyReport.
    pub report: crate::policy_report::ReportTally,
}

/// Ended actions kept per policy (the ones in force are all kept).
pub const MAX_ENDED_ACTIONS: usize = 20;

/// Whether an action record leaves its action in force.
pub fn action_active(r: &agent::ActionRecord) -> bool {
    matches!(r.state.as_str(), "started" | "adopted" | "extended")
}

/// Findings waiting for an Event, aggregated.
#[derive(Clone, Debug, Default)]
pub struct PendingEvent {
    pub detector: String,
    pub severity: String,
    pub count: u64,
    pub pod_namespace: String,
    pub pod_name: String,
    pub sources: BTreeMap<String, u64>,
    pub endpoints: BTreeMap<String, u64>,
    pub node: String,
}

#[derive(Default)]
struct Inner {
    configs: BTreeMap<String, Arc<NodeConfig>>,
    channels: HashMap<String, watch::Sender<Arc<NodeConfig>>>,
    agents: HashMap<String, AgentState>,
    monitors: HashMap<ObjectKey, MonitorTelemetry>,
    policies: HashMap<ObjectKey, PolicyTelemetry>,
    /// Objects whose counts were taken over from their status after this operator started.
    seeded: std::collections::HashSet<(&'static str, ObjectKey)>,
    /// Referenced ConfigMaps, as their watches last reported them.
    config_maps: HashMap<ConfigMapKey, ConfigMapState>,
    /// Referenced documents, parsed, with the fingerprint of the ConfigMap they were parsed from.
    documents: HashMap<OpenApiSource, (String, OpenApiDocument)>,
}

/// Shared operator state.
pub struct Hub {
    pub view: ClusterView,
    /// Set once every store has its initial list; nothing is compiled before.
    ready: std::sync::atomic::AtomicBool,
    /// Pod networks given on the command line, added to the Nodes' podCIDRs.
    extra_cluster_cidrs: Vec<String>,
    inner: Mutex<Inner>,
    monitor_trigger: mpsc::UnboundedSender<ObjectRef<ApiMonitor>>,
    policy_trigger: mpsc::UnboundedSender<ObjectRef<ApiPolicy>>,
    isolation_trigger: mpsc::UnboundedSender<ObjectRef<ApiIsolation>>,
    /// The operator's own pod (namespace, name), which no isolation may select.
    operator_pod: std::sync::OnceLock<(String, String)>,
}

/// Receivers for the controllers' `reconcile_on`.
pub struct Triggers {
    pub monitors: mpsc::UnboundedReceiver<ObjectRef<ApiMonitor>>,
    pub policies: mpsc::UnboundedReceiver<ObjectRef<ApiPolicy>>,
    pub isolations: mpsc::UnboundedReceiver<ObjectRef<ApiIsolation>>,
}

fn content_bytes(cfg: &NodeConfig) -> Vec<u8> {
    let mut c = cfg.clone();
    c.version = 0;
    c.encode_to_vec()
}

fn key_of(r: &Option<agent::ObjectRef>) -> ObjectKey {
    r.as_ref()
        .map(|r| (r.namespace.clone(), r.name.clone()))
        .unwrap_or_default()
}

impl Hub {
    pub fn new(view: ClusterView) -> (Arc<Hub>, Triggers) {
        Self::with_cluster_cidrs(view, vec![])
    }

    pub fn with_cluster_cidrs(view: ClusterView, extra_cluster_cidrs: Vec<String>) -> (Arc<Hub>, Triggers) {
        let (monitor_trigger, monitors) = mpsc::unbounded_channel();
        let (policy_trigger, policies) = mpsc::unbounded_channel();
        let (isolation_trigger, isolations) = mpsc::unbounded_channel();
        let hub = Hub {
            view,
            ready: std::sync::atomic::AtomicBool::new(false),
            extra_cluster_cidrs,
            inner: Mutex::new(Inner::default()),
            monitor_trigger,
            policy_trigger,
            isolation_trigger,
            operator_pod: std::sync::OnceLock::new(),
        };
        (
            Arc::new(hub),
            Triggers {
                monitors,
                policies,
                isolations,
            },
        )
    }

    /// Names the operator's own pod, which isolations must not select (set once, at start).
    pub fn set_operator_pod(&self, namespace: String, name: String) {
        let _ = self.operator_pod.set((namespace, name));
    }

    pub fn operator_pod(&self) -> Option<&(String, String)> {
        self.operator_pod.get()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means another task panicked mid-update; the maps stay usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the controllers to reconcile every monitor and policy (their status depends on what changed).
    pub fn trigger_all(&self) {
        for m in self.view.monitors.state() {
            let _ = self.monitor_trigger.send(ObjectRef::from_obj(m.as_ref()));
        }
        for p in self.view.policies.state() {
            let _ = self.policy_trigger.send(ObjectRef::from_obj(p.as_ref()));
        }
        for i in self.view.isolations.state() {
            let _ = self.isolation_trigger.send(ObjectRef::from_obj(i.as_ref()));
        }
    }

    /// Marks the stores listed: from now on configurations are compiled.
    pub fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`Hub::set_ready`] was called.
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Records what the watch of a referenced ConfigMap says (see [`crate::openapi_source`]).
    pub fn set_config_map(&self, key: ConfigMapKey, state: ConfigMapState) {
        self.lock().config_maps.insert(key, state);
    }

    /// Forgets a ConfigMap no monitor references any more.
    pub fn forget_config_map(&self, key: &ConfigMapKey) {
        self.lock().config_maps.remove(key);
    }

    /// Whether the ConfigMap's watch has answered (present, missing or unreadable).
    pub fn config_map_known(&self, key: &ConfigMapKey) -> bool {
        self.lock().config_maps.contains_key(key)
    }

    /// Whether the ConfigMap was read.
    pub fn config_map_present(&self, key: &ConfigMapKey) -> bool {
        matches!(self.lock().config_maps.get(key), Some(ConfigMapState::Present(_)))
    }

    /// The OpenAPI document a monitor references, as of the last compile; `None` when it
    /// references none.
    pub fn openapi_document(&self, monitor: &ApiMonitor) -> Option<OpenApiDocument> {
        let source = OpenApiSource::of(monitor)?;
        let inner = self.lock();
        Some(
            inner
                .documents
                .get(&source)
                .map(|(_, doc)| doc.clone())
                .unwrap_or(OpenApiDocument::Pending),
        )
    }

    /// Recompiles if the stores are listed (see [`Hub::set_ready`]).
    pub fn recompile_if_ready(&self) {
        if self.ready.load(std::sync::atomic::Ordering::SeqCst) {
            self.recompile();
        }
    }

    /// Recompiles every node's configuration from the stores and pushes changed ones to agents.
    /// Returns the nodes whose configuration changed.
    pub fn recompile(&self) -> Vec<String> {
        let monitors = self.view.monitors.state();
        let policies = self.view.policies.state();
        let pods = self.view.pods.state();
        let cluster_cidrs = self.cluster_cidrs();
        let mut inner = self.lock();
        let documents = refresh_documents(&mut inner, &monitors);
        let known: Vec<String> = inner
            .configs
            .keys()
            .cloned()
            .chain(inner.agents.keys().cloned())
            .collect();
        let mut compiled = compile::compile(
            &monitors,
            &policies,
            &pods,
            known,
            &documents,
            self.operator_pod(),
        );
        crate::isolation::compile_isolations(
            &self.view.isolations.state(),
            &pods,
            now_unix_ms(),
            self.operator_pod(),
            &mut compiled,
        );
        let mut changed = vec![];
        for (node, mut cfg) in compiled {
            cfg.cluster_cidrs = cluster_cidrs.clone();
            let previous = inner.configs.get(&node);
            if previous.is_some_and(|p| content_bytes(p) == content_bytes(&cfg)) {
                continue;
            }
            cfg.version = previous.map(|p| p.version + 1).unwrap_or(1);
            let cfg = Arc::new(cfg);
            inner.configs.insert(node.clone(), cfg.clone());
            if let Some(tx) = inner.channels.get(&node) {
                tx.send_replace(cfg);
            }
            changed.push(node);
        }
        changed
    }

    /// The cluster's pod networks: every Node's podCIDRs and the configured extra ones, sorted.
    pub fn cluster_cidrs(&self) -> Vec<String> {
        let mut cidrs: Vec<String> = self
            .view
            .nodes
            .state()
            .iter()
            .filter_map(|n| n.spec.as_ref())
            .flat_map(|s| {
                s.pod_cidrs
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .chain(s.pod_cidr.clone())
            })
            .chain(self.extra_cluster_cidrs.iter().cloned())
            .collect();
        cidrs.sort();
        cidrs.dedup();
        cidrs
    }

    /// The config channel an agent on `node` follows (created on first use).
    pub fn subscribe(&self, node: &str) -> watch::Receiver<Arc<NodeConfig>> {
        let mut inner = self.lock();
        let current = inner.configs.get(node).cloned();
        let tx = inner.channels.entry(node.to_string()).or_insert_with(|| {
            let initial = current.unwrap_or_else(|| {
                Arc::new(NodeConfig {
                    node_name: node.to_string(),
                    ..Default::default()
                })
            });
            watch::channel(initial).0
        });
        tx.subscribe()
    }

    pub fn set_connected(&self, node: &str, connected: bool) {
        self.lock().agents.entry(node.to_string()).or_default().connected = connected;
        self.trigger_all();
    }

    /// How many nodes' agents are connected now.
    pub fn connected_agents(&self) -> usize {
        self.lock().agents.values().filter(|a| a.connected).count()
    }

    pub fn current_version(&self, node: &str) -> u64 {
        self.lock().configs.get(node).map(|c| c.version).unwrap_or(0)
    }

    pub fn agent(&self, node: &str) -> Option<AgentState> {
        self.lock().agents.get(node).cloned()
    }

    pub fn config(&self, node: &str) -> Option<Arc<NodeConfig>> {
        self.lock().configs.get(node).cloned()
    }

    /// Records an agent's report: its applied state, and the endpoint and finding deltas it carries.
    pub fn record_report(&self, report: AgentReport) {
        let node = report.node_name.clone();
        let mut touched_monitors = vec![];
        let mut touched_policies = vec![];
        {
            let mut inner = self.lock();
            for m in &report.monitors {
                let key = key_of(&m.monitor);
                let tele = inner.monitors.entry(key.clone()).or_default();
                tele.overflow_requests += m.overflow_requests;
                for e in &m.endpoints {
                    let id = (e.method.clone(), e.path.clone());
                    if !tele.endpoints.contains_key(&id) && tele.endpoints.len() >= MAX_ENDPOINTS_PER_MONITOR
                    {
                        tele.overflow_requests += e.count;
                        continue;
                    }
                    tele.endpoints.entry(id).or_default().add(e);
                }
                touched_monitors.push(key);
            }
            for p in &report.policies {
                let key = key_of(&p.policy);
                let tele = inner.policies.entry(key.clone()).or_default();
                for f in &p.findings {
                    tele.total += f.count;
                    let entry = tele
                        .by_rule
                        .entry(f.rule.clone())
                        .or_insert((f.severity.clone(), 0));
                    entry.1 += f.count;
                    tele.last_finding_unix_ms = tele.last_finding_unix_ms.max(f.last_seen_unix_ms);
                    tele.recent.push_front(NodeFinding {
                        node: node.clone(),
                        finding: f.clone(),
                    });
                    tele.recent.truncate(MAX_FINDINGS_IN_STATUS);
                    tele.report.add(&node, f);
                    let pending = tele
                        .unannounced
                        .entry((f.rule.clone(), f.pod_name.clone()))
                        .or_default();
                    pending.detector = f.detector.clone();
                    pending.severity = f.severity.clone();
                    pending.count += f.count;
                    pending.pod_namespace = f.pod_namespace.clone();
                    pending.pod_name = f.pod_name.clone();
                    pending.node = node.clone();
                    *pending.sources.entry(f.source.clone()).or_default() += f.count;
                    *pending
                        .endpoints
                        .entry(format!("{} {}", f.method, f.path))
                        .or_default() += f.count;
                }
                for a in &p.actions {
                    let id = (
                        node.clone(),
                        format!("{}/{}", a.pod_namespace, a.pod_name),
                        a.source.clone(),
                        a.rule.clone(),
                    );
                    let since = match tele.actions.get(&id) {
                        Some((_, since)) if action_active(a) && a.state != "started" => *since,
                        _ => a.at_unix_ms,
                    };
                    tele.actions.insert(id, (a.clone(), since));
                    tele.actions_unannounced.push((node.clone(), a.clone()));
                }
                // Bounded: every action in force, and the latest ended ones.
                let mut ended: Vec<_> = tele
                    .actions
                    .iter()
                    .filter(|(_, (r, _))| !action_active(r))
                    .map(|(k, (r, _))| (r.at_unix_ms, k.clone()))
                    .collect();
                if ended.len() > MAX_ENDED_ACTIONS {
                    ended.sort();
                    for (_, k) in &ended[..ended.len() - MAX_ENDED_ACTIONS] {
                        tele.actions.remove(k);
                    }
                }
                touched_policies.push(key);
            }
            let agent = inner.agents.entry(node.clone()).or_default();
            agent.connected = true;
            agent.instance = report.agent_instance.clone();
            agent.applied_version = report.applied_version;
            agent.features = report.features.clone();
            agent.node_errors = report.node_errors.clone();
            agent.capture = report.capture.unwrap_or_default();
            agent.monitors = report
                .monitors
                .into_iter()
                .map(|mut m| {
                    m.endpoints.clear();
                    (key_of(&m.monitor), m)
                })
                .collect();
            agent.isolations = report
                .isolations
                .iter()
                .map(|r| (key_of(&r.isolation), r.clone()))
                .collect();
            agent.policies = report
                .policies
                .into_iter()
                .map(|mut p| {
                    p.findings.clear();
                    p.actions.clear();
                    (key_of(&p.policy), p)
                })
                .collect();
        }
        let _ = (touched_monitors, touched_policies);
        self.trigger_all();
    }

    /// Takes over the counts a previous operator wrote into a monitor's status, once per object
    /// and process, so an operator restart loses no records. Counts that agents reported since
    /// this operator started are added on top.
    pub fn seed_monitor(&self, key: &ObjectKey, status: Option<&palisade_api::v1alpha1::ApiMonitorStatus>) {
        let mut inner = self.lock();
        if !inner.seeded.insert(("monitor", key.clone())) {
            return;
        }
        let Some(status) = status else { return };
        let tele = inner.monitors.entry(key.clone()).or_default();
        tele.overflow_requests += status.endpoints.overflow_requests;
        for item in &status.endpoints.items {
            tele.endpoints
                .entry((item.method.clone(), item.path.clone()))
                .or_default()
                .seed(item);
        }
    }

    /// Like [`Hub::seed_monitor`], for a policy's findings.
    pub fn seed_policy(&self, key: &ObjectKey, status: Option<&palisade_api::v1alpha1::ApiPolicyStatus>) {
        let mut inner = self.lock();
        if !inner.seeded.insert(("policy", key.clone())) {
            return;
        }
        let Some(status) = status else { return };
        let f = &status.findings;
        let tele = inner.policies.entry(key.clone()).or_default();
        tele.total += f.total;
        for r in &f.by_rule {
            let e = tele
                .by_rule
                .entry(r.rule.clone())
                .or_insert((r.severity.as_str().to_string(), 0));
            e.1 += r.count;
        }
        let last = f
            .last_finding_time
            .as_ref()
            .map(|t| t.0.as_millisecond())
            .unwrap_or(0);
        tele.last_finding_unix_ms = tele.last_finding_unix_ms.max(last);
        for r in &f.recent {
            if tele.recent.len() >= MAX_FINDINGS_IN_STATUS {
                break;
            }
            let (pod_namespace, pod_name) = r.pod.split_once('/').unwrap_or(("", r.pod.as_str()));
            let (method, path) = r.endpoint.split_once(' ').unwrap_or(("", r.endpoint.as_str()));
            tele.recent.push_back(NodeFinding {
                node: r.node.clone(),
                finding: agent::Finding {
                    rule: r.rule.clone(),
                    detector: r.detector.clone(),
                    severity: r.severity.as_str().to_string(),
                    count: r.count,
                    source: r.source.clone(),
                    pod_namespace: pod_namespace.to_string(),
                    pod_name: pod_name.to_string(),
                    method: method.to_string(),
                    path: path.to_string(),
                    evidence: r.evidence.clone(),
                    first_seen_unix_ms: r.first_seen.0.as_millisecond(),
                    last_seen_unix_ms: r.last_seen.0.as_millisecond(),
                    traffic: r.traffic.clone(),
                },
            });
        }
        // Actions, so that blocks in force and their history survive an operator restart.
        for a in &status.actions.items {
            let (pod_namespace, pod_name) = a.pod.split_once('/').unwrap_or(("", a.pod.as_str()));
            let since = a.since.0.as_millisecond();
            let record = agent::ActionRecord {
                rule: a.rule.clone(),
                action: a.action.clone(),
                source: a.source.clone(),
                pod_namespace: pod_namespace.to_string(),
                pod_name: pod_name.to_string(),
                enforced: a.mode == "Enforced",
                state: a.last_change.clone(),
                expires_unix_ms: a.expires.as_ref().map(|t| t.0.as_millisecond()).unwrap_or(0),
                dropped_packets: a.dropped_packets,
                at_unix_ms: since,
                detail: a.detail.clone(),
            };
            let id = (a.node.clone(), a.pod.clone(), a.source.clone(), a.rule.clone());
            tele.actions.entry(id).or_insert((record, since));
        }
    }

    /// Takes over the results of a policy's PolicyReport as a previous operator wrote it (or
    /// notes that there is none), once per object and process; see [`Hub::seed_policy`].
    pub fn seed_report(&self, key: &ObjectKey, report: Option<&palisade_api::policy_report::PolicyReport>) {
        let mut inner = self.lock();
        let tally = &mut inner.policies.entry(key.clone()).or_default().report;
        if tally.seeded {
            return;
        }
        match report {
            Some(report) => tally.seed(report),
            None => tally.seeded = true,
        }
    }

    /// What a policy's PolicyReport is made of (without copying the rest of its telemetry).
    pub fn report_tally(&self, key: &ObjectKey) -> crate::policy_report::ReportTally {
        self.lock()
            .policies
            .get(key)
            .map(|t| t.report.clone())
            .unwrap_or_default()
    }

    /// Records the fingerprint of the PolicyReport just written for a policy.
    pub fn set_report_written(&self, key: &ObjectKey, fingerprint: u64) {
        self.lock()
            .policies
            .entry(key.clone())
            .or_default()
            .report
            .written = Some(fingerprint);
    }

    pub fn monitor_telemetry(&self, key: &ObjectKey) -> MonitorTelemetry {
        self.lock().monitors.get(key).cloned().unwrap_or_default()
    }

    pub fn policy_telemetry(&self, key: &ObjectKey) -> PolicyTelemetry {
        let inner = self.lock();
        let mut t = inner.policies.get(key).cloned().unwrap_or_default();
        t.unannounced.clear();
        t.actions_unannounced.clear();
        t
    }

    /// Takes the action changes not yet announced by an Event for a policy.
    pub fn take_unannounced_actions(&self, key: &ObjectKey) -> Vec<(String, agent::ActionRecord)> {
        self.lock()
            .policies
            .get_mut(key)
            .map(|t| std::mem::take(&mut t.actions_unannounced))
            .unwrap_or_default()
    }

    /// Takes the findings not yet announced by an Event for a policy.
    pub fn take_unannounced(&self, key: &ObjectKey) -> BTreeMap<(String, String), PendingEvent> {
        self.lock()
            .policies
            .get_mut(key)
            .map(|t| std::mem::take(&mut t.unannounced))
            .unwrap_or_default()
    }

    /// Puts back findings that could not be announced yet (rate limit), merging with newer ones.
    pub fn return_unannounced(&self, key: &ObjectKey, pending: BTreeMap<(String, String), PendingEvent>) {
        let mut inner = self.lock();
        let tele = inner.policies.entry(key.clone()).or_default();
        for (k, p) in pending {
            let e = tele.unannounced.entry(k).or_default();
            e.count += p.count;
            for (s, c) in p.sources {
                *e.sources.entry(s).or_default() += c;
            }
            for (s, c) in p.endpoints {
                *e.endpoints.entry(s).or_default() += c;
            }
            e.detector = p.detector;
            e.severity = p.severity;
            e.pod_namespace = p.pod_namespace;
            e.pod_name = p.pod_name;
            e.node = p.node;
        }
    }

    /// Forgets telemetry of objects that no longer exist.
    pub fn forget_deleted(&self) {
        let monitors: Vec<ObjectKey> = self
            .view
            .monitors
            .state()
            .iter()
            .map(|m| obj_key(m.as_ref()))
            .collect();
        let policies: Vec<ObjectKey> = self
            .view
            .policies
            .state()
            .iter()
            .map(|p| obj_key(p.as_ref()))
            .collect();
        let mut inner = self.lock();
        inner.monitors.retain(|k, _| monitors.contains(k));
        inner.policies.retain(|k, _| policies.contains(k));
        inner.seeded.retain(|(kind, k)| {
            if *kind == "monitor" {
                monitors.contains(k)
            } else {
                policies.contains(k)
            }
        });
    }
}

/// Parses the documents monitors reference whose ConfigMap changed since they were last parsed,
/// forgets those no monitor references, and returns them all.
fn refresh_documents(inner: &mut Inner, monitors: &[Arc<ApiMonitor>]) -> compile::OpenApiDocuments {
    let sources: std::collections::HashSet<OpenApiSource> =
        monitors.iter().filter_map(|m| OpenApiSource::of(m)).collect();
    inner.documents.retain(|source, _| sources.contains(source));
    for source in sources {
        let state = inner.config_maps.get(&source.config_map_key());
        let fingerprint = state.map(ConfigMapState::fingerprint).unwrap_or_default();
        if inner
            .documents
            .get(&source)
            .is_some_and(|(seen, _)| *seen == fingerprint)
        {
            continue;
        }
        let document = load_document(&source, state);
        match &document {
            OpenApiDocument::Loaded(ops) => {
                tracing::info!(%source, operations = ops.len(), "OpenAPI document loaded")
            }
            OpenApiDocument::Failed { message, .. } => {
                tracing::warn!(%source, %message, "OpenAPI document not usable")
            }
            OpenApiDocument::Pending => {}
        }
        inner.documents.insert(source, (fingerprint, document));
    }
    inner
        .documents
        .iter()
        .map(|(source, (_, doc))| (source.clone(), doc.clone()))
        .collect()
}

pub fn obj_key<K: kube::Resource>(obj: &K) -> ObjectKey {
    (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

pub fn unix_ms_to_time(ms: i64) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    let ts = k8s_openapi::jiff::Timestamp::from_millisecond(ms)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts)
}

pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;
    use palisade_api::agent::{EndpointDelta, MonitorReport, PolicyReport};

    fn monitor() -> ApiMonitor {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "ApiMonitor",
            "metadata": {"namespace": "demo", "name": "api", "generation": 1},
            "spec": {"selector": {"matchLabels": {"app": "api"}}}
        }))
        .expect("monitor")
    }

    fn pod(app: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": "demo", "name": "p", "uid": "u1", "labels": {"app": app}},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "x"}]},
            "status": {"phase": "Running"}
        }))
        .expect("pod")
    }

    #[test]
    fn versions_change_only_with_content_and_reports_accumulate_exactly() {
        let (pods, mut pod_writer) = store::<Pod>();
        let (monitors, mut monitor_writer) = store::<ApiMonitor>();
        let (policies, _policy_writer) = store::<ApiPolicy>();
        let (nodes, _node_writer) = store::<Node>();
        let (isolations, _isolation_writer) = store::<ApiIsolation>();
        let (hub, _triggers) = Hub::new(ClusterView {
            pods,
            monitors,
            policies,
            nodes,
            isolations,
        });
        monitor_writer.apply_watcher_event(&Event::Apply(monitor()));
        pod_writer.apply_watcher_event(&Event::Apply(pod("api")));

        let mut rx = hub.subscribe("n1");
        assert_eq!(hub.recompile(), vec!["n1".to_string()]);
        assert_eq!(hub.current_version("n1"), 1);
        assert!(
            rx.has_changed().unwrap_or(false),
            "the agent's stream sees the new version"
        );
        assert_eq!(rx.borrow_and_update().monitors[0].targets[0].pod_uid, "u1");
        assert!(hub.recompile().is_empty(), "no change, no new version");
        assert_eq!(hub.current_version("n1"), 1);

        pod_writer.apply_watcher_event(&Event::Apply(pod("other")));
        assert_eq!(hub.recompile(), vec!["n1".to_string()]);
        assert_eq!(hub.current_version("n1"), 2);
        assert!(
            rx.borrow_and_update().monitors.is_empty(),
            "the node keeps an empty config: detach all"
        );

        let key = ("demo".to_string(), "api".to_string());
        let report = |count| AgentReport {
            node_name: "n1".into(),
            applied_version: 2,
            monitors: vec![MonitorReport {
                monitor: Some(agent::ObjectRef {
                    namespace: "demo".into(),
                    name: "api".into(),
                    generation: 1,
                }),
                endpoints: vec![EndpointDelta {
                    method: "GET".into(),
                    path: "/u/{id}".into(),
                    status: 200,
                    count,
                    last_seen_unix_ms: 5,
                    east_west: 1,
                    exceptions: 0,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            policies: vec![PolicyReport {
                policy: Some(agent::ObjectRef {
                    namespace: "demo".into(),
                    name: "guard".into(),
                    generation: 1,
                }),
                findings: vec![agent::Finding {
                    rule: "t".into(),
                    severity: "high".into(),
                    count,
                    pod_name: "p".into(),
                    source: "1.2.3.4".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        hub.record_report(report(3));
        hub.record_report(report(4));
        let t = hub.monitor_telemetry(&key);
        assert_eq!(
            t.endpoints[&("GET".to_string(), "/u/{id}".to_string())].requests,
            7
        );
        assert_eq!(
            t.endpoints[&("GET".to_string(), "/u/{id}".to_string())].east_west,
            2
        );
        let guard = ("demo".to_string(), "guard".to_string());
        assert_eq!(hub.policy_telemetry(&guard).total, 7);
        let pending = hub.take_unannounced(&guard);
        assert_eq!(pending.values().map(|p| p.count).sum::<u64>(), 7);
        assert!(hub.take_unannounced(&guard).is_empty());
        hub.return_unannounced(&guard, pending);
        assert_eq!(
            hub.take_unannounced(&guard)
                .values()
                .map(|p| p.count)
                .sum::<u64>(),
            7,
            "returned, not lost"
        );
        assert_eq!(hub.agent("n1").map(|a| a.applied_version), Some(2));
    }

    #[test]
    fn config_map_edits_recompile_and_failures_are_kept_per_monitor() {
        let (pods, mut pod_writer) = store::<Pod>();
        let (monitors, mut monitor_writer) = store::<ApiMonitor>();
        let (policies, _policy_writer) = store::<ApiPolicy>();
        let (nodes, _node_writer) = store::<Node>();
        let (isolations, _isolation_writer) = store::<ApiIsolation>();
        let (hub, _triggers) = Hub::new(ClusterView {
            pods,
            monitors,
            policies,
            nodes,
            isolations,
        });
        let mut m = monitor();
        m.spec.open_api = Some(palisade_api::v1alpha1::OpenApiRef {
            config_map: "api-doc".into(),
            key: "openapi.yaml".into(),
        });
        monitor_writer.apply_watcher_event(&Event::Apply(m.clone()));
        pod_writer.apply_watcher_event(&Event::Apply(pod("api")));
        let key = ("demo".to_string(), "api-doc".to_string());
        let config_map = |rv: &str, doc: &str| {
            ConfigMapState::Present(Arc::new(
                serde_json::from_value(serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"namespace": "demo", "name": "api-doc", "uid": "cm1", "resourceVersion": rv},
                    "data": {"openapi.yaml": doc}
                }))
                .expect("config map"),
            ))
        };
        let loaded = |hub: &Hub| {
            hub.config("n1")
                .map(|c| {
                    let m = &c.monitors[0];
                    (
                        m.openapi_loaded,
                        m.api_operations
                            .iter()
                            .map(|o| o.path.clone())
                            .collect::<Vec<_>>(),
                    )
                })
                .unwrap_or_default()
        };

        hub.recompile();
        assert_eq!(loaded(&hub), (false, vec![]), "the watch has not answered yet");
        assert_eq!(hub.openapi_document(&m), Some(OpenApiDocument::Pending));

        hub.set_config_map(
            key.clone(),
            config_map("1", "openapi: 3.0.0\npaths: {/a: {get: {}}}"),
        );
        assert_eq!(hub.recompile(), vec!["n1".to_string()]);
        assert_eq!(loaded(&hub), (true, vec!["/a".to_string()]));
        let version = hub.current_version("n1");
        assert!(hub.recompile().is_empty(), "same resourceVersion: nothing new");

        hub.set_config_map(
            key.clone(),
            config_map("2", "openapi: 3.0.0\npaths: {/a: {get: {}}, /b: {get: {}}}"),
        );
        assert_eq!(hub.recompile(), vec!["n1".to_string()]);
        assert_eq!(hub.current_version("n1"), version + 1);
        assert_eq!(loaded(&hub), (true, vec!["/a".to_string(), "/b".to_string()]));

        hub.set_config_map(key.clone(), ConfigMapState::Missing);
        hub.recompile();
        assert_eq!(
            loaded(&hub),
            (false, vec![]),
            "a deleted document stops shadow detection"
        );
        assert!(matches!(
            hub.openapi_document(&m),
            Some(OpenApiDocument::Failed {
                reason: "OpenApiConfigMapNotFound",
                ..
            })
        ));
        assert_eq!(
            hub.config("n1").map(|c| c.monitors[0].targets.len()),
            Some(1),
            "capture goes on"
        );
    }
}
