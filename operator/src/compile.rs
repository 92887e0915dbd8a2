//! Compiles ApiMonitors, ApiPolicies and Pods into one desired configuration per node.
//!
//! Pure functions of their inputs, so they are unit-tested without a cluster. OpenAPI documents
//! come in already parsed (see [`crate::openapi_source`]).

use crate::openapi_source::{OpenApiDocument, OpenApiSource};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use palisade_api::agent::{
    string_match_config, CaptureConfig, HeaderMatchConfig, MonitorConfig, NamedPattern, NodeConfig,
    ObjectRef, PolicyConfig, RedactionConfig, RequestMatchConfig, RuleConfig, StringMatchConfig,
    WorkloadTarget,
};
use palisade_api::v1alpha1::{
    selector_matches, ApiMonitor, ApiPolicy, PolicyRule, StringMatch, DEFAULT_MAX_BODY_BYTES,
};
use std::collections::{BTreeMap, HashMap};

/// The parsed OpenAPI documents monitors reference.
pub type OpenApiDocuments = HashMap<OpenApiSource, OpenApiDocument>;

/// Whether a pod is one the agents should watch: scheduled, not finished, not being deleted.
pub fn pod_is_live(pod: &Pod) -> bool {
    let scheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    scheduled && pod.metadata.deletion_timestamp.is_none() && !matches!(phase, "Succeeded" | "Failed")
}

/// `pod IP -> namespace/name` for live pods (to name the pod behind a source address).
pub fn pods_by_ip(pods: &[std::sync::Arc<Pod>]) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    for p in pods.iter().filter(|p| pod_is_live(p)) {
        let name = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
        let status = p.status.as_ref();
        let ips = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|ip| ip.ip.clone());
        for ip in ips.chain(status.and_then(|s| s.pod_ip.clone())) {
            out.insert(ip, name.clone());
        }
    }
    out
}

pub fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// Live pods a monitor selects (same namespace, selector matches).
pub fn monitor_pods<'a>(monitor: &ApiMonitor, pods: &'a [std::sync::Arc<Pod>]) -> Vec<&'a Pod> {
    let ns = monitor.namespace().unwrap_or_default();
    pods.iter()
        .map(|p| p.as_ref())
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && pod_is_live(p))
        .filter(|p| selector_matches(&monitor.spec.selector, p.labels()))
        .collect()
}

/// Monitors (in the policy's namespace) a policy inspects.
pub fn policy_monitors<'a>(
    policy: &ApiPolicy,
    monitors: &'a [std::sync::Arc<ApiMonitor>],
) -> Vec<&'a ApiMonitor> {
    let ns = policy.namespace().unwrap_or_default();
    monitors
        .iter()
        .map(|m| m.as_ref())
        .filter(|m| m.namespace().as_deref() == Some(ns.as_str()))
        .filter(|m| policy.spec.monitors.is_empty() || policy.spec.monitors.contains(&m.name_any()))
        .collect()
}

/// Pods a policy applies to: pods of its monitors that its workload selector (if any) matches.
pub fn policy_pods<'a>(
    policy: &ApiPolicy,
    monitors: &[std::sync::Arc<ApiMonitor>],
    pods: &'a [std::sync::Arc<Pod>],
) -> Vec<&'a Pod> {
    let mut out: BTreeMap<String, &Pod> = BTreeMap::new();
    for monitor in policy_monitors(policy, monitors) {
        for pod in monitor_pods(monitor, pods) {
            let selected = policy
                .spec
                .workload_selector
                .as_ref()
                .is_none_or(|s| selector_matches(s, pod.labels()));
            if selected {
                out.insert(pod.uid().unwrap_or_default(), pod);
            }
        }
    }
    out.into_values().collect()
}

fn object_ref<K: kube::Resource>(obj: &K) -> ObjectRef {
    ObjectRef {
        namespace: obj.meta().namespace.clone().unwrap_or_default(),
        name: obj.meta().name.clone().unwrap_or_default(),
        generation: obj.meta().generation.unwrap_or_default(),
    }
}

pub fn workload_target(pod: &Pod) -> WorkloadTarget {
    let status = pod.status.as_ref();
    let mut pod_ips: Vec<String> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|ip| ip.ip.clone())
        .collect();
    if pod_ips.is_empty() {
        pod_ips.extend(status.and_then(|s| s.pod_ip.clone()));
    }
    WorkloadTarget {
        pod_namespace: pod.namespace().unwrap_or_default(),
        pod_name: pod.name_any(),
        pod_uid: pod.uid().unwrap_or_default(),
        pod_ips,
        labels: pod.labels().clone().into_iter().collect(),
    }
}

fn monitor_config(
    monitor: &ApiMonitor,
    targets: Vec<WorkloadTarget>,
    openapi: &OpenApiDocuments,
) -> MonitorConfig {
    let spec = &monitor.spec;
    // Only a loaded document enables shadow and zombie endpoints; a pending or failed one leaves
    // them off (the monitor's status says why).
    let operations = OpenApiSource::of(monitor).and_then(|s| match openapi.get(&s) {
        Some(OpenApiDocument::Loaded(ops)) => Some(ops.as_ref().clone()),
        _ => None,
    });
    let max_body = if spec.capture.bodies {
        spec.capture.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES)
    } else {
        0
    };
    MonitorConfig {
        monitor: Some(object_ref(monitor)),
        targets,
        ports: spec.ports.iter().map(|p| p.0.clamp(0, 65535) as u32).collect(),
        capture: Some(CaptureConfig {
            headers: spec.capture.headers,
            bodies: spec.capture.bodies,
            max_header_bytes: spec.capture.max_header_bytes.max(0) as u32,
            max_body_bytes: max_body.max(0) as u32,
            sampling_percent: spec.capture.sampling_percent.clamp(1, 100) as u32,
        }),
        redaction: Some(RedactionConfig {
            headers: spec.redaction.headers.clone(),
            json_fields: spec.redaction.json_fields.clone(),
            patterns: spec
                .redaction
                .patterns
                .iter()
                .map(|p| NamedPattern {
                    name: p.name.clone(),
                    regex: p.regex.clone(),
                })
                .collect(),
        }),
        tls: spec.tls.enabled,
        discovery: spec.discovery.enabled,
        max_endpoints: spec.discovery.max_endpoints.max(1) as u32,
        openapi_loaded: operations.is_some(),
        api_operations: operations.unwrap_or_default(),
    }
}

fn string_match(m: &Option<StringMatch>) -> Option<StringMatchConfig> {
    let m = m.as_ref()?;
    let kind = if let Some(v) = &m.exact {
        string_match_config::Kind::Exact(v.clone())
    } else if let Some(v) = &m.contains {
        string_match_config::Kind::Contains(v.clone())
    } else {
        string_match_config::Kind::Regex(m.regex.clone().unwrap_or_default())
    };
    Some(StringMatchConfig { kind: Some(kind) })
}

fn rule_config(rule: &PolicyRule) -> RuleConfig {
    let severity = rule.severity.or(rule.detector.map(|d| d.default_severity()));
    RuleConfig {
        name: rule.name.clone(),
        detector: rule.detector.map(|d| d.as_str().to_string()).unwrap_or_default(),
        params: rule.params.clone().into_iter().collect(),
        severity: severity
            .map(|s| s.as_str().to_string())
            .unwrap_or_else(|| "medium".into()),
        actions: vec![],
        r#match: rule.match_.as_ref().map(|m| RequestMatchConfig {
            methods: m.methods.clone().unwrap_or_default(),
            path: string_match(&m.path),
            headers: m
                .headers
                .iter()
                .flatten()
                .map(|h| HeaderMatchConfig {
                    name: h.name.clone(),
                    value: string_match(&Some(h.value.clone())),
                })
                .collect(),
            query: string_match(&m.query),
            body: string_match(&m.body),
        }),
    }
}

/// The actions as the agent takes them: TTLs in milliseconds (admission checked their syntax and
/// bounds; one that still does not parse becomes 0, which the agent refuses with a policy error);
/// for `isolate`, the allow-list resolved (`namespace_ips`: the live pods of the policy's
/// namespace, allowed unless `allow.sameNamespace` is false).
fn action_configs(
    actions: &[palisade_api::v1alpha1::PolicyAction],
    namespace_ips: &[String],
) -> Vec<palisade_api::agent::ActionConfig> {
    actions
        .iter()
        .map(|a| {
            let allow = a.allow.clone().unwrap_or_default();
            let isolate = a.type_ == palisade_api::v1alpha1::ActionType::Isolate;
            let mut allow_cidrs = vec![];
            if isolate {
                allow_cidrs.extend(allow.cidrs.iter().cloned());
                if allow.same_namespace {
                    allow_cidrs.extend(namespace_ips.iter().cloned());
                }
                allow_cidrs.sort();
                allow_cidrs.dedup();
            }
            (isolate, allow_cidrs, allow.node_probes, a)
        })
        .map(
            |(isolate, allow_cidrs, allow_node, a)| palisade_api::agent::ActionConfig {
                allow_cidrs,
                allow_node: isolate && allow_node,
                deny_egress: isolate && a.deny_egress.unwrap_or(false),
                r#type: match a.type_ {
                    palisade_api::v1alpha1::ActionType::Alert => "alert",
                    palisade_api::v1alpha1::ActionType::BlockSource => "blockSource",
                    palisade_api::v1alpha1::ActionType::Isolate => "isolate",
                }
                .into(),
                ttl_ms: a
                    .ttl
                    .as_deref()
                    .and_then(|t| palisade_api::duration::parse_duration_ns(t).ok())
                    .map(|ns| ns / 1_000_000)
                    .unwrap_or(0),
            },
        )
        .collect()
}

/// The desired configuration of every node that hosts a monitored pod, plus an empty one for each
/// name in `known_nodes` (so an agent whose last workload went away detaches everything).
/// `version` is left 0: [`crate::state`] stamps versions when content changes.
pub fn compile(
    monitors: &[std::sync::Arc<ApiMonitor>],
    policies: &[std::sync::Arc<ApiPolicy>],
    pods: &[std::sync::Arc<Pod>],
    known_nodes: impl IntoIterator<Item = String>,
    openapi: &OpenApiDocuments,
    operator_pod: Option<&(String, String)>,
) -> BTreeMap<String, NodeConfig> {
    let mut nodes: BTreeMap<String, NodeConfig> = known_nodes
        .into_iter()
        .map(|n| {
            (
                n.clone(),
                NodeConfig {
                    node_name: n,
                    ..Default::default()
                },
            )
        })
        .collect();
    let entry = |nodes: &mut BTreeMap<String, NodeConfig>, node: &str| -> usize {
        let cfg = nodes.entry(node.to_string()).or_insert_with(|| NodeConfig {
            node_name: node.to_string(),
            ..Default::default()
        });
        cfg.monitors.len()
    };
    let mut sorted_monitors: Vec<_> = monitors.iter().collect();
    sorted_monitors.sort_by_key(|m| (m.namespace(), m.name_any()));
    for monitor in sorted_monitors {
        let mut by_node: BTreeMap<&str, Vec<WorkloadTarget>> = BTreeMap::new();
        for pod in monitor_pods(monitor, pods) {
            if let Some(node) = pod_node(pod) {
                by_node.entry(node).or_default().push(workload_target(pod));
            }
        }
        for (node, mut targets) in by_node {
            targets.sort_by(|a, b| a.pod_uid.cmp(&b.pod_uid));
            entry(&mut nodes, node);
            if let Some(cfg) = nodes.get_mut(node) {
                cfg.monitors.push(monitor_config(monitor, targets, openapi));
            }
        }
    }
    let mut sorted_policies: Vec<_> = policies.iter().collect();
    sorted_policies.sort_by_key(|p| (p.namespace(), p.name_any()));
    let mut namespace_ips: HashMap<String, Vec<String>> = HashMap::new();
    for pod in pods.iter().filter(|p| pod_is_live(p)) {
        namespace_ips
            .entry(pod.namespace().unwrap_or_default())
            .or_default()
            .extend(workload_target(pod).pod_ips);
    }
    for policy in sorted_policies {
        let same_namespace = namespace_ips
            .get(&policy.namespace().unwrap_or_default())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let monitor_names: Vec<String> = policy_monitors(policy, monitors)
            .iter()
            .map(|m| m.name_any())
            .collect();
        let selected = policy_pods(policy, monitors, pods);
        // A policy whose isolate actions could reach a protected pod keeps its other actions
        // (its status says why, see `isolation::policy_isolate_refusal`).
        let isolate_refused =
            crate::isolation::policy_isolate_refusal(policy, &selected, operator_pod).is_some();
        let mut by_node: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for pod in selected {
            if let Some(node) = pod_node(pod) {
                by_node
                    .entry(node)
                    .or_default()
                    .push(pod.uid().unwrap_or_default());
            }
        }
        for (node, pod_uids) in by_node {
            if let Some(cfg) = nodes.get_mut(node) {
                cfg.policies.push(PolicyConfig {
                    policy: Some(object_ref(policy.as_ref())),
                    monitors: monitor_names.clone(),
                    pod_uids,
                    mode: policy.spec.mode.as_str().to_string(),
                    rules: policy
                        .spec
                        .rules
                        .iter()
                        .map(|rule| {
                            let mut actions = action_configs(
                                if rule.actions.is_empty() {
                                    &policy.spec.default_actions
                                } else {
                                    &rule.actions
                                },
                                same_namespace,
                            );
                            if isolate_refused {
                                actions.retain(|a| a.r#type != "isolate");
                            }
                            RuleConfig {
                                actions,
                                ..rule_config(rule)
                            }
                        })
                        .collect(),
                });
            }
        }
    }
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn pod(ns: &str, name: &str, node: &str, labels: &[(&str, &str)], phase: &str) -> Arc<Pod> {
        let value = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"),
                         "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_,_>>()},
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "x"}]},
            "status": {"phase": phase, "podIP": "10.1.0.2"}
        });
        Arc::new(serde_json::from_value(value).expect("pod"))
    }

    fn monitor(ns: &str, name: &str, app: &str) -> Arc<ApiMonitor> {
        let value = serde_json::json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "ApiMonitor",
            "metadata": {"namespace": ns, "name": name, "generation": 3},
            "spec": {"selector": {"matchLabels": {"app": app}}, "ports": [8080]}
        });
        Arc::new(serde_json::from_value(value).expect("monitor"))
    }

    fn policy(ns: &str, name: &str, monitors: &[&str]) -> Arc<ApiPolicy> {
        let value = serde_json::json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "ApiPolicy",
            "metadata": {"namespace": ns, "name": name, "generation": 1},
            "spec": {"monitors": monitors, "rules": [{"name": "traversal", "detector": "pathTraversal"}]}
        });
        Arc::new(serde_json::from_value(value).expect("policy"))
    }

    #[test]
    fn pods_are_grouped_by_node_and_namespace_bounds_selection() {
        let pods = vec![
            pod("demo", "a", "n1", &[("app", "api")], "Running"),
            pod("demo", "b", "n2", &[("app", "api")], "Running"),
            pod("demo", "c", "n2", &[("app", "db")], "Running"),
            pod("other", "d", "n1", &[("app", "api")], "Running"),
            pod("demo", "e", "n1", &[("app", "api")], "Succeeded"),
        ];
        let monitors = vec![monitor("demo", "api", "api")];
        let policies = vec![policy("demo", "p", &["api"]), policy("demo", "q", &["missing"])];
        let cfg = compile(
            &monitors,
            &policies,
            &pods,
            ["n3".to_string()],
            &OpenApiDocuments::new(),
            None,
        );
        assert_eq!(cfg.keys().collect::<Vec<_>>(), vec!["n1", "n2", "n3"]);
        let n1 = &cfg["n1"];
        assert_eq!(n1.monitors.len(), 1);
        let targets: Vec<_> = n1.monitors[0]
            .targets
            .iter()
            .map(|t| t.pod_name.as_str())
            .collect();
        assert_eq!(
            targets,
            vec!["a"],
            "other namespace and finished pods are not watched"
        );
        assert_eq!(n1.monitors[0].ports, vec![8080]);
        assert_eq!(n1.monitors[0].monitor.as_ref().map(|m| m.generation), Some(3));
        assert_eq!(
            n1.policies.len(),
            1,
            "policy q names a monitor that does not exist"
        );
        assert_eq!(n1.policies[0].rules[0].detector, "pathTraversal");
        assert_eq!(n1.policies[0].rules[0].severity, "high");
        assert_eq!(n1.policies[0].pod_uids, vec!["uid-a"]);
        assert_eq!(cfg["n2"].monitors[0].targets.len(), 1);
        assert!(cfg["n3"].monitors.is_empty() && cfg["n3"].policies.is_empty());
        assert!(!n1.monitors[0].openapi_loaded && n1.monitors[0].api_operations.is_empty());
    }

    #[test]
    fn only_a_loaded_openapi_document_reaches_the_agents() {
        let with_doc = |name: &str| -> Arc<ApiMonitor> {
            let value = serde_json::json!({
                "apiVersion": "palisade.dev/v1alpha1", "kind": "ApiMonitor",
                "metadata": {"namespace": "demo", "name": name, "generation": 1},
                "spec": {"selector": {"matchLabels": {"app": name}},
                         "openApi": {"configMap": format!("{name}-doc")}}
            });
            Arc::new(serde_json::from_value(value).expect("monitor"))
        };
        let monitors = vec![with_doc("loaded"), with_doc("failed"), with_doc("pending")];
        let pods = vec![
            pod("demo", "a", "n1", &[("app", "loaded")], "Running"),
            pod("demo", "b", "n1", &[("app", "failed")], "Running"),
            pod("demo", "c", "n1", &[("app", "pending")], "Running"),
        ];
        let source = |name: &str| OpenApiSource {
            namespace: "demo".into(),
            config_map: format!("{name}-doc"),
            key: "openapi.json".into(),
        };
        let ops = vec![palisade_api::agent::ApiOperation {
            method: "GET".into(),
            path: "/users/{id}".into(),
            deprecated: false,
        }];
        let docs = OpenApiDocuments::from([
            (source("loaded"), OpenApiDocument::Loaded(Arc::new(ops.clone()))),
            (
                source("failed"),
                OpenApiDocument::Failed {
                    reason: "OpenApiKeyNotFound",
                    message: "no key".into(),
                },
            ),
            (source("pending"), OpenApiDocument::Pending),
        ]);
        let cfg = compile(&monitors, &[], &pods, [], &docs, None);
        let by_name: BTreeMap<&str, &MonitorConfig> = cfg["n1"]
            .monitors
            .iter()
            .map(|m| (m.monitor.as_ref().map(|r| r.name.as_str()).unwrap_or(""), m))
            .collect();
        assert!(by_name["loaded"].openapi_loaded);
        assert_eq!(by_name["loaded"].api_operations, ops);
        for name in ["failed", "pending"] {
            assert!(!by_name[name].openapi_loaded, "{name}");
            assert!(by_name[name].api_operations.is_empty(), "{name}");
        }
    }
}
