//! Building blocks of ApiMonitor and ApiPolicy status: the per-node account and the conditions.

use crate::state::{AgentState, ObjectKey};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use palisade_api::v1alpha1::{condition, NodeState, NodeSummary, MAX_ERRORS_PER_NODE, MAX_NODE_DETAILS};

/// Writes `status` to a namespaced object by server-side apply (the operator owns the status).
pub async fn apply_status<K>(
    client: &kube::Client,
    obj: &K,
    status: &impl serde::Serialize,
) -> Result<(), crate::Error>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    use kube::api::{Api, Patch, PatchParams};
    use kube::ResourceExt;
    let ns = obj.namespace().ok_or(crate::Error::MissingNamespace)?;
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(crate::monitor_controller::FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(crate::Error::Kube)?;
    Ok(())
}

/// What the operator expects of one node for one object.
pub struct NodeExpectation<'a> {
    pub node: &'a str,
    /// Selected pods on the node.
    pub workloads: u32,
    pub agent: Option<&'a AgentState>,
}

/// Which part of an agent report speaks for the object.
pub enum Reported<'a> {
    Monitor(&'a ObjectKey, i64),
    Policy(&'a ObjectKey, i64),
    /// An isolation: in sync when the agent enforces its current generation; each pod the agent
    /// failed to isolate is an error of the node.
    Isolation(&'a ObjectKey, i64),
}

/// Selected pods counted per node.
pub fn pods_per_node<'a>(
    pods: &[&'a k8s_openapi::api::core::v1::Pod],
) -> std::collections::BTreeMap<&'a str, u32> {
    let mut per_node = std::collections::BTreeMap::new();
    for node in pods.iter().filter_map(|p| crate::compile::pod_node(p)) {
        *per_node.entry(node).or_default() += 1;
    }
    per_node
}

/// The state of every node that runs selected pods, from the agents' last reports.
pub fn node_states(
    hub: &crate::state::Hub,
    per_node: &std::collections::BTreeMap<&str, u32>,
    reported: &Reported,
) -> Vec<NodeState> {
    per_node
        .iter()
        .map(|(node, workloads)| {
            node_state(
                &NodeExpectation {
                    node,
                    workloads: *workloads,
                    agent: hub.agent(node).as_ref(),
                },
                reported,
            )
        })
        .collect()
}

/// The state of one node for one object, from its agent's last report.
pub fn node_state(exp: &NodeExpectation, reported: &Reported) -> NodeState {
    let mut state = NodeState {
        node: exp.node.to_string(),
        workloads: exp.workloads,
        ..Default::default()
    };
    let Some(agent) = exp.agent.filter(|a| a.connected) else {
        state
            .errors
            .push("no Palisade agent is connected for this node".into());
        return state;
    };
    state.config_version = agent.applied_version;
    state.records_lost = agent.capture.records_lost;
    state.messages_dropped = agent.capture.messages_dropped;
    state.errors.extend(agent.node_errors.iter().cloned());
    state.missing_features = agent
        .features
        .iter()
        .filter(|f| !f.available)
        .map(|f| format!("{}: {}", f.name, f.reason))
        .collect();
    // In sync means: the agent runs this object's current generation. A newer node config in
    // flight for other reasons (a pod IP, another object) does not make this object un-Ready;
    // pods not yet attached show as probes missing instead.
    match reported {
        Reported::Monitor(key, generation) => {
            if let Some(m) = agent.monitors.get(*key) {
                state.probes_attached = m.probes_attached;
                state.errors.extend(m.errors.iter().cloned());
                state.in_sync = m.monitor.as_ref().map(|r| r.generation) == Some(*generation);
            }
        }
        Reported::Policy(key, generation) => {
            if let Some(p) = agent.policies.get(*key) {
                state.errors.extend(p.errors.iter().cloned());
                state.in_sync = p.policy.as_ref().map(|r| r.generation) == Some(*generation);
            }
            state.probes_attached = agent.monitors.values().map(|m| m.probes_attached).sum();
        }
        Reported::Isolation(key, generation) => {
            if let Some(r) = agent.isolations.get(*key) {
                state.in_sync = r.isolation.as_ref().map(|o| o.generation) == Some(*generation);
                state.errors.extend(
                    r.pods
                        .iter()
                        .filter(|p| p.state == "failed")
                        .map(|p| format!("pod {}/{}: {}", p.pod_namespace, p.pod_name, p.detail)),
                );
            }
        }
    }
    state.errors.truncate(MAX_ERRORS_PER_NODE);
    state
}

/// Whether a node runs the object fully.
pub fn node_ready(state: &NodeState, needs_probes: bool) -> bool {
    state.in_sync
        && state.errors.is_empty()
        && (!needs_probes || state.probes_attached >= 2 * state.workloads)
}

/// A bounded summary: counts of all nodes, detail for the first MAX_NODE_DETAILS (problems first).
pub fn summarize(mut states: Vec<NodeState>, needs_probes: bool) -> NodeSummary {
    let total = states.len() as u32;
    let ready = states.iter().filter(|s| node_ready(s, needs_probes)).count() as u32;
    let records_lost = states.iter().map(|s| s.records_lost).sum();
    let messages_dropped = states.iter().map(|s| s.messages_dropped).sum();
    states.sort_by_key(|s| (node_ready(s, needs_probes), s.errors.is_empty(), s.node.clone()));
    states.truncate(MAX_NODE_DETAILS);
    NodeSummary {
        total,
        ready,
        degraded: total - ready,
        records_lost,
        messages_dropped,
        details: states,
    }
}

/// A condition with `lastTransitionTime` kept from `previous` when the status did not change.
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| Time(k8s_openapi::jiff::Timestamp::now()));
    Condition {
        type_: type_.to_string(),
        status,
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Ready and Degraded from a node summary, for objects that need pods to be useful.
pub fn conditions_from_nodes(
    previous: &[Condition],
    generation: Option<i64>,
    matched_pods: u32,
    nodes: &NodeSummary,
    extra_problem: Option<(&str, String)>,
    ready_message: String,
) -> Vec<Condition> {
    let problem_nodes: Vec<&NodeState> = nodes.details.iter().filter(|s| !s.errors.is_empty()).collect();
    let (ready, ready_reason, ready_msg) = if let Some((reason, msg)) = &extra_problem {
        (false, *reason, msg.clone())
    } else if matched_pods == 0 {
        (
            false,
            "NoWorkloadsMatched",
            "no running pod matches; nothing is captured".to_string(),
        )
    } else if !problem_nodes.is_empty() {
        (
            false,
            "NodesDegraded",
            format!("{} of {} nodes report errors", nodes.degraded, nodes.total),
        )
    } else if nodes.ready < nodes.total {
        (
            false,
            "Applying",
            format!(
                "{} of {} nodes have applied generation {}",
                nodes.ready,
                nodes.total,
                generation.unwrap_or(0)
            ),
        )
    } else {
        (true, "Applied", ready_message)
    };
    let (degraded, degraded_reason, degraded_msg) = if let Some((reason, msg)) = extra_problem {
        (true, reason, msg)
    } else if let Some(first) = problem_nodes.first() {
        let reason = if first.errors.iter().any(|e| e.starts_with("no Palisade agent")) {
            "AgentNotConnected"
        } else {
            "NodeErrors"
        };
        let msg = problem_nodes
            .iter()
            .take(3)
            .map(|s| format!("{}: {}", s.node, s.errors.join("; ")))
            .collect::<Vec<_>>()
            .join(" | ");
        (true, reason, msg)
    } else {
        (false, "AsExpected", "no node reports errors".to_string())
    };
    vec![
        condition(
            previous,
            condition::READY,
            ready,
            ready_reason,
            ready_msg,
            generation,
        ),
        condition(
            previous,
            condition::DEGRADED,
            degraded,
            degraded_reason,
            degraded_msg,
            generation,
        ),
    ]
}

/// Adds a problem that leaves the object working in part (for example an OpenAPI document that
/// cannot be used: capture goes on without shadow detection). `Ready` is left as the nodes make
/// it; `Degraded` becomes True with this reason, or, when it is True already for another reason
/// (node errors come first), keeps that reason and gets this message appended.
pub fn add_degraded_problem(
    conditions: &mut [Condition],
    previous: &[Condition],
    reason: &str,
    message: String,
    generation: Option<i64>,
) {
    let Some(degraded) = conditions.iter_mut().find(|c| c.type_ == condition::DEGRADED) else {
        return;
    };
    if degraded.status == "True" {
        degraded.message = format!("{}; {message}", degraded.message);
    } else {
        *degraded = condition(previous, condition::DEGRADED, true, reason, message, generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_api::agent::{MonitorReport, ObjectRef};

    fn agent(applied: u64, probes: u32, errors: &[&str]) -> AgentState {
        agent_at(applied, 2, probes, errors)
    }

    fn agent_at(applied: u64, generation: i64, probes: u32, errors: &[&str]) -> AgentState {
        let key = ("demo".to_string(), "api".to_string());
        let mut a = AgentState {
            connected: true,
            applied_version: applied,
            ..Default::default()
        };
        a.monitors.insert(
            key,
            MonitorReport {
                monitor: Some(ObjectRef {
                    namespace: "demo".into(),
                    name: "api".into(),
                    generation,
                }),
                workloads: 1,
                probes_attached: probes,
                errors: errors.iter().map(|e| e.to_string()).collect(),
                ..Default::default()
            },
        );
        a
    }

    #[test]
    fn node_states_and_conditions_tell_the_story() {
        let key = ("demo".to_string(), "api".to_string());
        let reported = Reported::Monitor(&key, 2);
        let ok = node_state(
            &NodeExpectation {
                node: "n1",
                workloads: 1,
                agent: Some(&agent(4, 2, &[])),
            },
            &reported,
        );
        assert!(node_ready(&ok, true));
        let stale = node_state(
            &NodeExpectation {
                node: "n2",
                workloads: 1,
                // Still runs generation 1 of the monitor.
                agent: Some(&agent_at(4, 1, 2, &[])),
            },
            &reported,
        );
        assert!(!stale.in_sync);
        let failed = node_state(
            &NodeExpectation {
                node: "n3",
                workloads: 1,
                agent: Some(&agent(4, 0, &["attach cgroup_skb: EPERM"])),
            },
            &reported,
        );
        let absent = node_state(
            &NodeExpectation {
                node: "n4",
                workloads: 1,
                agent: None,
            },
            &reported,
        );
        assert_eq!(
            absent.errors,
            vec!["no Palisade agent is connected for this node"]
        );

        let summary = summarize(vec![ok.clone(), stale, failed, absent], true);
        assert_eq!((summary.total, summary.ready, summary.degraded), (4, 1, 3));
        assert_eq!(
            summary.details.last().map(|s| s.node.as_str()),
            Some("n1"),
            "healthy nodes listed last"
        );
        let conds = conditions_from_nodes(&[], Some(2), 4, &summary, None, "ok".into());
        assert_eq!(conds[0].status, "False");
        assert_eq!(conds[0].reason, "NodesDegraded");
        assert_eq!(conds[1].status, "True");
        assert!(conds[1].message.contains("EPERM"), "{}", conds[1].message);

        let healthy = summarize(vec![ok], true);
        let conds = conditions_from_nodes(&conds, Some(2), 1, &healthy, None, "capturing".into());
        assert_eq!(
            (conds[0].status.as_str(), conds[0].reason.as_str()),
            ("True", "Applied")
        );
        assert_eq!(conds[0].observed_generation, Some(2));
        let none = conditions_from_nodes(&conds, Some(3), 0, &summarize(vec![], true), None, String::new());
        assert_eq!(none[0].reason, "NoWorkloadsMatched");
    }

    #[test]
    fn a_partial_problem_degrades_without_hiding_node_errors() {
        let healthy = summarize(vec![], true);
        let mut conds = conditions_from_nodes(&[], Some(1), 1, &healthy, None, "ok".into());
        add_degraded_problem(&mut conds, &[], "OpenApiKeyNotFound", "no key".into(), Some(1));
        assert_eq!(
            (conds[0].status.as_str(), conds[0].reason.as_str()),
            ("True", "Applied"),
            "Ready stays what the nodes make it"
        );
        assert_eq!(
            (
                conds[1].status.as_str(),
                conds[1].reason.as_str(),
                conds[1].message.as_str()
            ),
            ("True", "OpenApiKeyNotFound", "no key")
        );

        let failing = summarize(
            vec![NodeState {
                node: "n1".into(),
                errors: vec!["EPERM".into()],
                ..Default::default()
            }],
            true,
        );
        let mut conds = conditions_from_nodes(&[], Some(1), 1, &failing, None, "ok".into());
        add_degraded_problem(&mut conds, &[], "OpenApiKeyNotFound", "no key".into(), Some(1));
        assert_eq!(conds[1].reason, "NodeErrors");
        assert_eq!(conds[1].message, "n1: EPERM; no key");
    }

    #[test]
    fn summary_is_bounded_however_many_nodes() {
        let states: Vec<NodeState> = (0..1000)
            .map(|i| NodeState {
                node: format!("n{i:04}"),
                in_sync: true,
                ..Default::default()
            })
            .collect();
        let s = summarize(states, false);
        assert_eq!(s.total, 1000);
        assert_eq!(s.details.len(), MAX_NODE_DETAILS);
    }
}
