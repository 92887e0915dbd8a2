//! ApiIsolation: which pods to isolate on which node (compiled into each node's configuration),
//! what is refused, and the controller that writes status and Events.
//!
//! Refused: pods whose isolation would cut the node off from the API server (host-network pods,
//! the control plane's static pods) or the agents off from the operator (Palisade's own pods).
//! The whole isolation is refused then, with a message naming the pod, rather than enforced in
//! part.

use crate::compile::{pod_is_live, pod_node, workload_target};
use crate::state::{obj_key, unix_ms_to_time, Hub};
use crate::status::{condition, node_state, pods_per_node, summarize, NodeExpectation, Reported};
use crate::Error;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use palisade_api::agent::{IsolationConfig, NodeConfig, ObjectRef};
use palisade_api::v1alpha1::{
    condition as cond, selector_matches, ApiIsolation, ApiIsolationStatus, CommonStatus, IsolatedPodStatus,
    NodeSummary, MAX_ISOLATED_PODS_IN_STATUS,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Labels that mark Palisade's own pods (the chart sets them).
const PART_OF: &str = "app.kubernetes.io/part-of";
/// Control-plane components whose pods are never isolated.
const CONTROL_PLANE: [&str; 4] = [
    "kube-apiserver",
    "etcd",
    "kube-controller-manager",
    "kube-scheduler",
];

/// Why a pod must not be isolated, if it must not.
pub fn protected_reason(pod: &Pod, operator_pod: Option<&(String, String)>) -> Option<&'static str> {
    let labels = pod.labels();
    if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
        return Some(
            "uses the host network: isolating it would filter the node's own traffic and could cut \
             the node off from the API server",
        );
    }
    let is_operator = operator_pod
        .is_some_and(|(ns, name)| pod.namespace().as_deref() == Some(ns.as_str()) && pod.name_any() == *name);
    if is_operator || labels.get(PART_OF).is_some_and(|v| v == "palisade") {
        return Some("is part of Palisade: isolating it would cut the agents off from the operator");
    }
    let component = labels.get("component").map(String::as_str).unwrap_or_default();
    if pod.namespace().as_deref() == Some("kube-system")
        && (CONTROL_PLANE.contains(&component) || labels.get("tier").is_some_and(|t| t == "control-plane"))
    {
        return Some("is part of the control plane: isolating it would cut the node off from the API server");
    }
    None
}

/// Why a policy's `isolate` actions are refused, if they are: one of the pods the policy
/// protects must never be isolated (see [`protected_reason`]). The policy keeps detecting and
/// its other actions; its isolate actions are not sent to the agents, and `Degraded` says why.
pub fn policy_isolate_refusal(
    policy: &palisade_api::v1alpha1::ApiPolicy,
    selected: &[&Pod],
    operator_pod: Option<&(String, String)>,
) -> Option<String> {
    let isolates = policy
        .spec
        .rules
        .iter()
        .flat_map(|r| {
            if r.actions.is_empty() {
                &policy.spec.default_actions
            } else {
                &r.actions
            }
        })
        .any(|a| a.type_ == palisade_api::v1alpha1::ActionType::Isolate);
    if !isolates {
        return None;
    }
    selected.iter().find_map(|pod| {
        protected_reason(pod, operator_pod).map(|why| {
            format!(
                "isolate actions refused: pod {}/{} {why}; the policy's isolate actions are not applied",
                pod.namespace().unwrap_or_default(),
                pod.name_any()
            )
        })
    })
}

/// What an isolation selects now.
pub enum Selection<'a> {
    Pods(Vec<&'a Pod>),
    /// Refused, with a message naming the pod.
    Refused(String),
}

/// The live pods an isolation selects, or why it is refused.
pub fn select<'a>(
    iso: &ApiIsolation,
    pods: &'a [Arc<Pod>],
    operator_pod: Option<&(String, String)>,
) -> Selection<'a> {
    let ns = iso.namespace().unwrap_or_default();
    let mut selected = vec![];
    for pod in pods.iter().map(|p| p.as_ref()) {
        if pod.namespace().as_deref() != Some(ns.as_str())
            || !pod_is_live(pod)
            || !selector_matches(&iso.spec.workload_selector, pod.labels())
        {
            continue;
        }
        if let Some(why) = protected_reason(pod, operator_pod) {
            return Selection::Refused(format!("pod {ns}/{} {why}", pod.name_any()));
        }
        selected.push(pod);
    }
    selected.sort_by_key(|p| p.name_any());
    Selection::Pods(selected)
}

/// When the isolation ends (Unix ms): its creation plus `ttl`. `None`: until released.
pub fn expires_unix_ms(iso: &ApiIsolation) -> Option<i64> {
    let ttl_ns = palisade_api::duration::parse_duration_ns(iso.spec.ttl.as_deref()?).ok()?;
    let created = iso.metadata.creation_timestamp.as_ref()?.0.as_millisecond();
    Some(created.saturating_add((ttl_ns / 1_000_000) as i64))
}

/// Whether the isolation is over (released or expired) at `now_ms`.
fn ended(iso: &ApiIsolation, now_ms: i64) -> Option<&'static str> {
    if iso.spec.released {
        Some("Released")
    } else if expires_unix_ms(iso).is_some_and(|e| e <= now_ms) {
        Some("Expired")
    } else {
        None
    }
}

/// Adds every isolation in force to the nodes that run its pods (creating their configurations
/// when they have none yet).
pub fn compile_isolations(
    isolations: &[Arc<ApiIsolation>],
    pods: &[Arc<Pod>],
    now_ms: i64,
    operator_pod: Option<&(String, String)>,
    nodes: &mut BTreeMap<String, NodeConfig>,
) {
    let mut sorted: Vec<&Arc<ApiIsolation>> = isolations.iter().collect();
    sorted.sort_by_key(|i| (i.namespace(), i.name_any()));
    for iso in sorted {
        if ended(iso, now_ms).is_some() {
            continue;
        }
        let Selection::Pods(selected) = select(iso, pods, operator_pod) else {
            continue;
        };
        let ns = iso.namespace().unwrap_or_default();
        let mut allow: Vec<String> = iso.spec.allow.cidrs.clone();
        if iso.spec.allow.same_namespace {
            allow.extend(
                pods.iter()
                    .filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && pod_is_live(p))
                    .flat_map(|p| workload_target(p).pod_ips),
            );
        }
        allow.sort();
        allow.dedup();
        let mut by_node: BTreeMap<&str, Vec<_>> = BTreeMap::new();
        for pod in selected {
            if let Some(node) = pod_node(pod) {
                by_node.entry(node).or_default().push(workload_target(pod));
            }
        }
        for (node, targets) in by_node {
            let cfg = nodes.entry(node.to_string()).or_insert_with(|| NodeConfig {
                node_name: node.to_string(),
                ..Default::default()
            });
            cfg.isolations.push(IsolationConfig {
                isolation: Some(ObjectRef {
                    namespace: ns.clone(),
                    name: iso.name_any(),
                    generation: iso.metadata.generation.unwrap_or_default(),
                }),
                targets,
                allow_cidrs: allow.clone(),
                allow_node: iso.spec.allow.node_probes,
                deny_egress: iso.spec.deny_egress,
                expires_unix_ms: expires_unix_ms(iso).unwrap_or(0),
            });
        }
    }
}

pub struct IsolationContext {
    pub client: kube::Client,
    pub hub: Arc<Hub>,
    pub reporter: Reporter,
    /// The operator's own pod (POD_NAMESPACE, POD_NAME), never isolated.
    pub operator_pod: Option<(String, String)>,
}

/// The status an isolation should have now.
pub fn desired_status(
    iso: &ApiIsolation,
    hub: &Hub,
    operator_pod: Option<&(String, String)>,
    now_ms: i64,
) -> ApiIsolationStatus {
    let key = obj_key(iso);
    let generation = iso.metadata.generation;
    let previous = iso
        .status
        .as_ref()
        .map(|s| s.common.conditions.clone())
        .unwrap_or_default();
    let pods_state = hub.view.pods.state();
    let mut status = ApiIsolationStatus {
        expires: expires_unix_ms(iso).map(unix_ms_to_time),
        ..Default::default()
    };
    let mut nodes = NodeSummary::default();
    let (ready, reason, message) = if let Some(how) = ended(iso, now_ms) {
        status.phase = how.into();
        let why = if how == "Released" {
            "released (spec.released)"
        } else {
            "its ttl passed"
        };
        (true, how, format!("not enforced any more: {why}"))
    } else {
        match select(iso, &pods_state, operator_pod) {
            Selection::Refused(msg) => {
                status.phase = "Refused".into();
                (false, "Refused", format!("isolation refused: {msg}"))
            }
            Selection::Pods(selected) => {
                let per_node = pods_per_node(&selected);
                // Each node's agent state, read once: for the node's account and for its pods.
                let agents: BTreeMap<&str, Option<crate::state::AgentState>> =
                    per_node.keys().map(|node| (*node, hub.agent(node))).collect();
                let reported_by = Reported::Isolation(&key, generation.unwrap_or_default());
                let states = per_node
                    .iter()
                    .map(|(node, workloads)| {
                        let agent = agents.get(node).and_then(Option::as_ref);
                        let exp = NodeExpectation {
                            node,
                            workloads: *workloads,
                            agent,
                        };
                        node_state(&exp, &reported_by)
                    })
                    .collect();
                nodes = summarize(states, false);
                let mut pods = vec![];
                for pod in &selected {
                    let node = pod_node(pod).unwrap_or_default().to_string();
                    let name = pod.name_any();
                    let agent = agents.get(node.as_str()).and_then(Option::as_ref);
                    let reported = agent.and_then(|a| {
                        a.isolations
                            .get(&key)
                            .and_then(|r| r.pods.iter().find(|p| p.pod_name == name).cloned())
                    });
                    let mut st = IsolatedPodStatus {
                        pod: format!("{}/{}", key.0, name),
                        node: node.clone(),
                        ..Default::default()
                    };
                    match reported {
                        Some(r) => {
                            st.state = match r.state.as_str() {
                                "isolated" => "Isolated",
                                "adopted" => "Adopted",
                                _ => "Failed",
                            }
                            .into();
                            st.detail = r.detail;
                            st.dropped_inbound = r.dropped_ingress;
                            st.dropped_outbound = r.dropped_egress;
                            st.since = (r.since_unix_ms > 0).then(|| unix_ms_to_time(r.since_unix_ms));
                        }
                        None => {
                            st.state = "Pending".into();
                            st.detail = match agent {
                                Some(a) if a.connected => format!("waiting for the agent on node {node}"),
                                _ => format!("no Palisade agent connected on node {node}"),
                            };
                        }
                    }
                    pods.push(st);
                }
                let isolated = pods
                    .iter()
                    .filter(|p| p.state == "Isolated" || p.state == "Adopted")
                    .count();
                let failed: Vec<&IsolatedPodStatus> = pods.iter().filter(|p| p.state == "Failed").collect();
                status.isolated_pods = isolated as u32;
                status.phase = if isolated > 0 { "Active" } else { "Pending" }.into();
                let result = if selected.is_empty() {
                    (
                        false,
                        "NoWorkloadsMatched",
                        "no running pod of the namespace matches workloadSelector".to_string(),
                    )
                } else if let Some(f) = failed.first() {
                    (
                        false,
                        "IsolationFailed",
                        format!(
                            "{} of {} pods could not be isolated; {} on {}: {}",
                            failed.len(),
                            pods.len(),
                            f.pod,
                            f.node,
                            f.detail
                        ),
                    )
                } else if isolated < pods.len() {
                    (
                        false,
                        "Applying",
                        format!("{isolated} of {} pods isolated", pods.len()),
                    )
                } else {
                    (
                        true,
                        "Isolated",
                        format!("{isolated} pods isolated in the kernel"),
                    )
                };
                // Failures first, then by name; bounded.
                pods.sort_by_key(|p| (p.state != "Failed", p.pod.clone()));
                pods.truncate(MAX_ISOLATED_PODS_IN_STATUS);
                status.pods = pods;
                result
            }
        }
    };
    let degraded = matches!(reason, "Refused" | "IsolationFailed");
    status.common = CommonStatus {
        observed_generation: generation,
        conditions: vec![
            condition(&previous, cond::READY, ready, reason, message.clone(), generation),
            condition(
                &previous,
                cond::DEGRADED,
                degraded,
                if degraded { reason } else { "AsExpected" },
                if degraded {
                    message
                } else {
                    "no problem".to_string()
                },
                generation,
            ),
        ],
        nodes,
    };
    status
}

fn pod_ref(pod: &str) -> ObjectReference {
    let (ns, name) = pod.split_once('/').unwrap_or(("", pod));
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

/// Events for what changed between the written status and the new one: on the isolation, and
/// on each pod concerned.
fn changes(old: Option<&ApiIsolationStatus>, new: &ApiIsolationStatus) -> Vec<(Event, Vec<String>)> {
    let mut out = vec![];
    let old_phase = old.map(|s| s.phase.as_str()).unwrap_or_default();
    let pods_in = |s: &ApiIsolationStatus, states: &[&str]| -> Vec<String> {
        s.pods
            .iter()
            .filter(|p| states.contains(&p.state.as_str()))
            .map(|p| p.pod.clone())
            .collect()
    };
    let message = new
        .common
        .conditions
        .first()
        .map(|c| c.message.clone())
        .unwrap_or_default();
    if old_phase != new.phase {
        let event = |type_, reason: &str, note: String| Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Isolate".into(),
            secondary: None,
        };
        let old_pods = old
            .map(|s| s.pods.iter().map(|p| p.pod.clone()).collect())
            .unwrap_or_default();
        match new.phase.as_str() {
            "Active" => {
                let pods = pods_in(new, &["Isolated", "Adopted"]);
                let mut note = format!("isolated {} pods: {}", pods.len(), pods.join(", "));
                if let Some(e) = &new.expires {
                    note.push_str(&format!(" until {}", e.0));
                }
                out.push((event(EventType::Warning, "Isolated", note), pods));
            }
            "Refused" => out.push((
                event(EventType::Warning, "IsolationRefused", message.clone()),
                vec![],
            )),
            "Expired" => out.push((
                event(
                    EventType::Normal,
                    "IsolationExpired",
                    "isolation ended: its ttl passed".into(),
                ),
                old_pods,
            )),
            "Released" => out.push((
                event(
                    EventType::Normal,
                    "IsolationReleased",
                    "isolation released".into(),
                ),
                old_pods,
            )),
            _ => {}
        }
    }
    // Per pod: adoption after an agent restart, and failures.
    for p in &new.pods {
        let before = old
            .and_then(|s| s.pods.iter().find(|o| o.pod == p.pod))
            .map(|o| o.state.as_str())
            .unwrap_or_default();
        if before == p.state {
            continue;
        }
        let (type_, reason, note) = match p.state.as_str() {
            "Adopted" => (
                EventType::Normal,
                "IsolationAdopted",
                format!("{} on {}: still isolated after an agent restart", p.pod, p.node),
            ),
            "Failed" => (
                EventType::Warning,
                "IsolationFailed",
                format!("{} on {}: {}", p.pod, p.node, p.detail),
            ),
            _ => continue,
        };
        out.push((
            Event {
                type_,
                reason: reason.into(),
                note: Some(note),
                action: "Isolate".into(),
                secondary: None,
            },
            vec![p.pod.clone()],
        ));
    }
    out
}

#[tracing::instrument(skip_all, fields(isolation = %format!("{}/{}", iso.namespace().unwrap_or_default(), iso.name_any())))]
pub async fn reconcile(iso: Arc<ApiIsolation>, ctx: Arc<IsolationContext>) -> Result<Action, Error> {
    let now_ms = crate::state::now_unix_ms();
    let expires = expires_unix_ms(&iso);
    if expires.is_some_and(|e| e <= now_ms) {
        // Over: make sure no node configuration holds it any more.
        ctx.hub.recompile_if_ready();
    }
    let status = desired_status(&iso, &ctx.hub, ctx.operator_pod.as_ref(), now_ms);
    if serde_json::to_value(&iso.status).ok() != serde_json::to_value(Some(&status)).ok() {
        crate::status::apply_status(&ctx.client, iso.as_ref(), &status).await?;
        let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
        let iso_ref = iso.object_ref(&());
        for (event, pods) in changes(iso.status.as_ref(), &status) {
            recorder.publish(&event, &iso_ref).await.map_err(Error::Kube)?;
            for pod in pods {
                let on_pod = Event {
                    type_: event.type_,
                    reason: event.reason.clone(),
                    note: event.note.clone(),
                    action: event.action.clone(),
                    secondary: Some(iso_ref.clone()),
                };
                if let Err(error) = recorder.publish(&on_pod, &pod_ref(&pod)).await {
                    tracing::warn!(%error, %pod, "could not record the Event on the pod");
                }
            }
        }
    }
    // Wake up at expiry; otherwise agent reports trigger reconciles.
    let wait = match expires {
        Some(e) if e > now_ms => Duration::from_millis((e - now_ms) as u64 + 50).min(Duration::from_secs(60)),
        _ => Duration::from_secs(60),
    };
    Ok(Action::requeue(wait))
}

pub fn error_policy(_iso: Arc<ApiIsolation>, error: &Error, _ctx: Arc<IsolationContext>) -> Action {
    tracing::warn!(%error, "ApiIsolation reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, ip: &str, labels: serde_json::Value, host_network: bool) -> Arc<Pod> {
        let value = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{name}"), "labels": labels},
            "spec": {"nodeName": "n1", "hostNetwork": host_network, "containers": [{"name": "app", "image": "x"}]},
            "status": {"phase": "Running", "podIP": ip}
        });
        Arc::new(serde_json::from_value(value).expect("pod"))
    }

    fn isolation(spec: serde_json::Value) -> Arc<ApiIsolation> {
        let value = serde_json::json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "ApiIsolation",
            "metadata": {"namespace": "demo", "name": "q", "generation": 2,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": spec
        });
        Arc::new(serde_json::from_value(value).expect("isolation"))
    }

    #[test]
    fn compiles_targets_allow_list_and_expiry_per_node() {
        let pods = vec![
            pod(
                "demo",
                "api-0",
                "10.1.0.2",
                serde_json::json!({"app": "api"}),
                false,
            ),
            pod(
                "demo",
                "web-0",
                "10.1.0.3",
                serde_json::json!({"app": "web"}),
                false,
            ),
            pod(
                "other",
                "api-9",
                "10.1.0.9",
                serde_json::json!({"app": "api"}),
                false,
            ),
        ];
        let iso = isolation(serde_json::json!({
            "workloadSelector": {"matchLabels": {"app": "api"}},
            "ttl": "10m", "denyEgress": true,
            "allow": {"cidrs": ["192.168.0.0/16"], "nodeProbes": false}
        }));
        let created = 1_767_225_600_000i64; // 2026-01-01T00:00:00Z
        assert_eq!(expires_unix_ms(&iso), Some(created + 600_000));
        let mut nodes = BTreeMap::new();
        compile_isolations(
            std::slice::from_ref(&iso),
            &pods,
            created + 1000,
            None,
            &mut nodes,
        );
        let cfg = &nodes["n1"].isolations[0];
        assert_eq!(cfg.targets.len(), 1, "only the namespace's matching pods");
        assert_eq!(cfg.targets[0].pod_name, "api-0");
        assert_eq!(
            cfg.allow_cidrs,
            vec!["10.1.0.2", "10.1.0.3", "192.168.0.0/16"],
            "same namespace + cidrs"
        );
        assert!(cfg.deny_egress && !cfg.allow_node);
        assert_eq!(cfg.expires_unix_ms, created + 600_000);
        // Over: not compiled.
        let mut later = BTreeMap::new();
        compile_isolations(&[iso], &pods, created + 600_000, None, &mut later);
        assert!(later.get("n1").is_none_or(|c| c.isolations.is_empty()));
    }

    #[test]
    fn refuses_host_network_control_plane_and_palisade_pods() {
        let sel = serde_json::json!({"workloadSelector": {"matchLabels": {"app": "x"}}});
        let cases = [
            (
                pod("demo", "h", "10.0.0.1", serde_json::json!({"app": "x"}), true),
                "host network",
            ),
            (
                pod(
                    "demo",
                    "agent",
                    "10.1.0.4",
                    serde_json::json!({"app": "x", "app.kubernetes.io/part-of": "palisade"}),
                    false,
                ),
                "cut the agents off from the operator",
            ),
        ];
        for (p, why) in cases {
            match select(&isolation(sel.clone()), &[p], None) {
                Selection::Refused(msg) => assert!(msg.contains(why), "{msg}"),
                Selection::Pods(_) => panic!("not refused: {why}"),
            }
        }
        let operator = pod(
            "demo",
            "palisade-operator-0",
            "10.1.0.5",
            serde_json::json!({"app": "x"}),
            false,
        );
        let me = ("demo".to_string(), "palisade-operator-0".to_string());
        assert!(matches!(
            select(
                &isolation(sel.clone()),
                std::slice::from_ref(&operator),
                Some(&me)
            ),
            Selection::Refused(_)
        ));
        assert!(matches!(select(&isolation(sel), &[operator], None), Selection::Pods(p) if p.len() == 1));
        let apiserver = pod(
            "kube-system",
            "kube-apiserver-n1",
            "10.0.0.2",
            serde_json::json!({"component": "kube-apiserver", "tier": "control-plane"}),
            false,
        );
        assert!(protected_reason(&apiserver, None).is_some_and(|r| r.contains("API server")));
    }

    #[test]
    fn a_policy_that_would_isolate_a_protected_pod_is_compiled_without_its_isolate_actions() {
        let pods = vec![pod(
            "demo",
            "agent-0",
            "10.1.0.4",
            serde_json::json!({"app": "x", "app.kubernetes.io/part-of": "palisade"}),
            false,
        )];
        let monitor: Arc<palisade_api::v1alpha1::ApiMonitor> = Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "palisade.dev/v1alpha1", "kind": "ApiMonitor",
                "metadata": {"namespace": "demo", "name": "m"},
                "spec": {"selector": {"matchLabels": {"app": "x"}}}
            }))
            .unwrap(),
        );
        let policy: Arc<palisade_api::v1alpha1::ApiPolicy> = Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "palisade.dev/v1alpha1", "kind": "ApiPolicy",
                "metadata": {"namespace": "demo", "name": "p"},
                "spec": {"mode": "enforce", "rules": [{"name": "sqli", "detector": "sqlInjection",
                         "actions": [{"type": "isolate", "ttl": "1m"}, {"type": "blockSource", "ttl": "1m"}]}]}
            }))
            .unwrap(),
        );
        let selected = crate::compile::policy_pods(&policy, std::slice::from_ref(&monitor), &pods);
        let why = policy_isolate_refusal(&policy, &selected, None).expect("refused");
        assert!(why.contains("demo/agent-0"), "{why}");
        let nodes = crate::compile::compile(
            std::slice::from_ref(&monitor),
            std::slice::from_ref(&policy),
            &pods,
            [],
            &Default::default(),
            None,
        );
        let actions: Vec<&str> = nodes["n1"].policies[0].rules[0]
            .actions
            .iter()
            .map(|a| a.r#type.as_str())
            .collect();
        assert_eq!(actions, vec!["blockSource"], "isolate removed, the rest kept");
    }
}
