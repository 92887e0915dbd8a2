//! ApiPolicy controller: writes status (conditions, per-node account, findings) and raises
//! aggregated, rate-limited Warning Events on the policy and on the pod under attack.

use crate::compile::{policy_monitors, policy_pods};
use crate::state::{obj_key, unix_ms_to_time, Hub, PendingEvent};
use crate::status::{conditions_from_nodes, node_states, pods_per_node, summarize, Reported};
use crate::throttle::{EventBudget, WriteThrottle};
use crate::Error;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};
use palisade_api::v1alpha1::{
    ActionStatus, ActionsSummary, ApiPolicy, ApiPolicyStatus, CommonStatus, FindingRecord, FindingsSummary,
    RuleCount, Severity,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct PolicyContext {
    pub client: kube::Client,
    pub hub: Arc<Hub>,
    pub reporter: Reporter,
    pub status_throttle: WriteThrottle,
    pub event_budget: EventBudget,
    /// Writes a PolicyReport per policy when the CRD is installed; `None` when turned off.
    pub policy_reports: Option<crate::policy_report::PolicyReports>,
}

/// The status a policy should have now.
pub fn desired_status(policy: &ApiPolicy, hub: &Hub) -> ApiPolicyStatus {
    let key = obj_key(policy);
    let generation = policy.metadata.generation;
    let monitors = hub.view.monitors.state();
    let pods = hub.view.pods.state();
    let selected = policy_pods(policy, &monitors, &pods);
    let per_node = pods_per_node(&selected);
    let states = node_states(
        hub,
        &per_node,
        &Reported::Policy(&key, generation.unwrap_or_default()),
    );
    let nodes = summarize(states, false);
    let missing: Vec<&String> = policy
        .spec
        .monitors
        .iter()
        .filter(|name| {
            !policy_monitors(policy, &monitors)
                .iter()
                .any(|m| &m.name_any() == *name)
        })
        .collect();
    let extra_problem = (!missing.is_empty()).then(|| {
        let names = missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        (
            "MonitorNotFound",
            format!("spec.monitors names ApiMonitors that do not exist in this namespace: {names}"),
        )
    });
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.common.conditions.clone())
        .unwrap_or_default();
    let ready_msg = format!(
        "{} rules applied to {} pods on {} nodes ({} mode)",
        policy.spec.rules.len(),
        selected.len(),
        nodes.total,
        policy.spec.mode.as_str()
    );
    let mut conditions = conditions_from_nodes(
        &previous,
        generation,
        selected.len() as u32,
        &nodes,
        extra_problem,
        ready_msg,
    );
    if let Some(msg) = crate::isolation::policy_isolate_refusal(policy, &selected, hub.operator_pod()) {
        crate::status::add_degraded_problem(&mut conditions, &previous, "IsolateRefused", msg, generation);
    }

    hub.seed_policy(&key, policy.status.as_ref());
    let t = hub.policy_telemetry(&key);
    let pods_by_ip = crate::compile::pods_by_ip(&pods);
    let keep = policy.spec.limits.findings_in_status.max(0) as usize;
    let findings = FindingsSummary {
        total: t.total,
        last_finding_time: (t.last_finding_unix_ms > 0).then(|| unix_ms_to_time(t.last_finding_unix_ms)),
        by_rule: t
            .by_rule
            .iter()
            .map(|(rule, (severity, count))| RuleCount {
                rule: rule.clone(),
                severity: Severity::parse(severity).unwrap_or(Severity::Medium),
                count: *count,
            })
            .collect(),
        recent: t
            .recent
            .iter()
            .take(keep)
            .map(|nf| {
                let f = &nf.finding;
                FindingRecord {
                    rule: f.rule.clone(),
                    detector: f.detector.clone(),
                    severity: Severity::parse(&f.severity).unwrap_or(Severity::Medium),
                    count: f.count,
                    source: f.source.clone(),
                    source_pod: pods_by_ip.get(&f.source).cloned(),
                    traffic: f.traffic.clone(),
                    pod: format!("{}/{}", f.pod_namespace, f.pod_name),
                    node: nf.node.clone(),
                    endpoint: format!("{} {}", f.method, f.path),
                    evidence: f.evidence.clone(),
                    first_seen: unix_ms_to_time(f.first_seen_unix_ms),
                    last_seen: unix_ms_to_time(f.last_seen_unix_ms),
                }
            })
            .collect(),
    };
    ApiPolicyStatus {
        common: CommonStatus {
            observed_generation: generation,
            conditions,
            nodes,
        },
        matched_pods: selected.len() as u32,
        findings,
        actions: actions_summary(&t),
    }
}

/// Actions in force first (newest first), then the latest ended ones.
fn actions_summary(t: &crate::state::PolicyTelemetry) -> ActionsSummary {
    let mut items: Vec<(bool, i64, ActionStatus)> = t
        .actions
        .iter()
        .map(|((node, pod, _, _), (r, since))| {
            let active = crate::state::action_active(r);
            let mode = match (r.enforced, r.state.as_str()) {
                (_, "failed") => "Failed",
                (true, _) => "Enforced",
                (false, _) => "Audit",
            };
            (
                active,
                r.at_unix_ms,
                ActionStatus {
                    action: r.action.clone(),
                    rule: r.rule.clone(),
                    source: r.source.clone(),
                    pod: pod.clone(),
                    node: node.clone(),
                    mode: mode.into(),
                    state: if active { "Active" } else { "Ended" }.into(),
                    last_change: r.state.clone(),
                    expires: (r.expires_unix_ms > 0).then(|| unix_ms_to_time(r.expires_unix_ms)),
                    dropped_packets: r.dropped_packets,
                    detail: r.detail.clone(),
                    since: unix_ms_to_time(*since),
                },
            )
        })
        .collect();
    items.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let count = |action: &str, mode: &str| {
        items
            .iter()
            .filter(|(active, _, s)| *active && s.mode == mode && s.action == action)
            .count() as u32
    };
    ActionsSummary {
        blocked_sources: count("blockSource", "Enforced"),
        would_block_sources: count("blockSource", "Audit"),
        isolated_pods: count("isolate", "Enforced"),
        would_isolate_pods: count("isolate", "Audit"),
        items: items
            .into_iter()
            .take(crate::state::MAX_ENDED_ACTIONS)
            .map(|(_, _, s)| s)
            .collect(),
    }
}

/// Records `event` on the policy (an error if that fails) and on the pod (a warning), each naming
/// the other. A fresh recorder per Event: kube's recorder would fold repeats into a series that
/// keeps the first message, and each of ours carries new counts.
async fn publish_on_policy_and_pod(
    ctx: &PolicyContext,
    policy: &ApiPolicy,
    event: Event,
    pod_ref: &ObjectReference,
) -> Result<(), Error> {
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    recorder
        .publish(&event, &policy.object_ref(&()))
        .await
        .map_err(Error::Kube)?;
    let on_pod = Event {
        secondary: Some(policy.object_ref(&())),
        ..event
    };
    if let Err(error) = recorder.publish(&on_pod, pod_ref).await {
        tracing::warn!(%error, pod = ?pod_ref.name, "could not record the Event on the pod");
    }
    Ok(())
}

/// Announces action changes: an Event on the policy and on the pod for each.
async fn announce_actions(ctx: &PolicyContext, policy: &ApiPolicy) -> Result<(), Error> {
    let key = obj_key(policy);
    for (node, r) in ctx.hub.take_unannounced_actions(&key) {
        let isolate = r.action == "isolate";
        let (reason, type_, what) = match (isolate, r.state.as_str(), r.enforced) {
            (false, "failed", _) => ("BlockFailed", EventType::Warning, "could not block"),
            (false, "started", true) => ("SourceBlocked", EventType::Warning, "blocked"),
            (false, "started", false) => (
                "WouldBlockSource",
                EventType::Warning,
                "would have blocked (audit mode)",
            ),
            (false, "adopted", _) => (
                "BlockAdopted",
                EventType::Normal,
                "still blocks (adopted after an agent restart)",
            ),
            (false, "expired", _) => (
                "BlockExpired",
                EventType::Normal,
                "no longer blocks (TTL expired)",
            ),
            (false, _, _) => ("BlockReleased", EventType::Normal, "no longer blocks (released)"),
            (true, "failed", _) => ("IsolationFailed", EventType::Warning, "could not isolate"),
            (true, "started", true) => ("WorkloadIsolated", EventType::Warning, "isolated"),
            (true, "started", false) => (
                "WouldIsolateWorkload",
                EventType::Warning,
                "would have isolated (audit mode)",
            ),
            (true, "adopted", _) => (
                "IsolationAdopted",
                EventType::Normal,
                "still isolates (adopted after an agent restart)",
            ),
            (true, "expired", _) => (
                "IsolationExpired",
                EventType::Normal,
                "no longer isolates (TTL expired)",
            ),
            (true, _, _) => (
                "IsolationReleased",
                EventType::Normal,
                "no longer isolates (released)",
            ),
        };
        let mut note = if isolate {
            format!(
                "rule {}: {what} pod {}/{} on node {node} after an attack from {}",
                r.rule, r.pod_namespace, r.pod_name, r.source
            )
        } else {
            format!(
                "rule {}: {what} {} from pod {}/{} on node {node}",
                r.rule, r.source, r.pod_namespace, r.pod_name
            )
        };
        if action_is_timed(&r) {
            note.push_str(&format!(" until {}", unix_ms_to_time(r.expires_unix_ms).0));
        }
        if r.dropped_packets > 0 {
            note.push_str(&format!("; {} packets dropped", r.dropped_packets));
        }
        if !r.detail.is_empty() {
            note.push_str(&format!("; {}", r.detail));
        }
        note.truncate(1000);
        let pod_ref = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(r.pod_namespace.clone()),
            name: Some(r.pod_name.clone()),
            ..Default::default()
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: if isolate { "Isolate" } else { "BlockSource" }.into(),
            secondary: Some(pod_ref.clone()),
        };
        publish_on_policy_and_pod(ctx, policy, event, &pod_ref).await?;
    }
    Ok(())
}

fn action_is_timed(r: &palisade_api::agent::ActionRecord) -> bool {
    crate::state::action_active(r) && r.expires_unix_ms > 0
}

fn top(map: &BTreeMap<String, u64>, n: usize) -> String {
    let mut v: Vec<_> = map.iter().collect();
    v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut s = v
        .iter()
        .take(n)
        .map(|(k, c)| format!("{k} ({c})"))
        .collect::<Vec<_>>()
        .join(", ");
    if v.len() > n {
        s.push_str(&format!(" and {} more", v.len() - n));
    }
    s
}

/// The Event text for aggregated findings of one rule on one pod. Sources that are pods of the
/// cluster are named.
pub fn event_note(
    policy: &ApiPolicy,
    rule: &str,
    p: &PendingEvent,
    pods_by_ip: &std::collections::HashMap<String, String>,
) -> String {
    let sources: BTreeMap<String, u64> = p
        .sources
        .iter()
        .map(|(ip, n)| match pods_by_ip.get(ip) {
            Some(pod) => (format!("{ip} (pod {pod})"), *n),
            None => (ip.clone(), *n),
        })
        .collect();
    let verb = match policy.spec.mode {
        palisade_api::v1alpha1::PolicyMode::Audit => "audit mode: recorded",
        palisade_api::v1alpha1::PolicyMode::Enforce => "enforce mode",
    };
    let mut note = format!(
        "rule {rule} ({}, {}): {} requests flagged on pod {}/{} on node {} from {}; endpoints {}; {verb}",
        p.detector,
        p.severity,
        p.count,
        p.pod_namespace,
        p.pod_name,
        p.node,
        top(&sources, 3),
        top(&p.endpoints, 3)
    );
    note.truncate(1000);
    note
}

async fn announce(ctx: &PolicyContext, policy: &ApiPolicy) -> Result<(), Error> {
    let key = obj_key(policy);
    let pending = ctx.hub.take_unannounced(&key);
    if pending.is_empty() {
        return Ok(());
    }
    let per_minute = policy.spec.limits.events_per_minute.max(1) as u32;
    let pods_by_ip = crate::compile::pods_by_ip(&ctx.hub.view.pods.state());
    let mut left = BTreeMap::new();
    let mut entries = pending.into_iter();
    for ((rule, pod), p) in entries.by_ref() {
        if !ctx.event_budget.take(&key, per_minute, Instant::now()) {
            left.insert((rule, pod), p);
            break;
        }
        let note = event_note(policy, &rule, &p, &pods_by_ip);
        let pod_ref = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(p.pod_namespace.clone()),
            name: Some(p.pod_name.clone()),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "AttackDetected".into(),
            note: Some(note),
            action: "Detect".into(),
            secondary: Some(pod_ref.clone()),
        };
        // The budget above bounds the rate.
        publish_on_policy_and_pod(ctx, policy, event, &pod_ref).await?;
    }
    left.extend(entries);
    if !left.is_empty() {
        ctx.hub.return_unannounced(&key, left);
    }
    Ok(())
}

#[tracing::instrument(skip_all, fields(policy = %format!("{}/{}", policy.namespace().unwrap_or_default(), policy.name_any())))]
pub async fn reconcile(policy: Arc<ApiPolicy>, ctx: Arc<PolicyContext>) -> Result<Action, Error> {
    announce(&ctx, &policy).await?;
    announce_actions(&ctx, &policy).await?;
    let mut next = Duration::from_secs(60);
    let status = desired_status(&policy, &ctx.hub);
    // Compared as JSON, as in the monitor controller (timestamps are stored to the second).
    if serde_json::to_value(&policy.status).ok() != serde_json::to_value(Some(&status)).ok() {
        if let Err(wait) = ctx
            .status_throttle
            .try_acquire(&obj_key(policy.as_ref()), Instant::now())
        {
            next = next.min(wait);
        } else {
            crate::status::apply_status(&ctx.client, policy.as_ref(), &status).await?;
        }
    }
    // The report is an extra: its failures are logged and retried, never fail the status.
    if let Some(reports) = &ctx.policy_reports {
        match reports.sync(&policy, &ctx.hub).await {
            Ok(Some(wait)) => next = next.min(wait),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "PolicyReport not written; retrying");
                next = next.min(Duration::from_secs(5));
            }
        }
    }
    Ok(Action::requeue(next))
}

pub fn error_policy(_policy: Arc<ApiPolicy>, error: &Error, _ctx: Arc<PolicyContext>) -> Action {
    tracing::warn!(%error, "ApiPolicy reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}
