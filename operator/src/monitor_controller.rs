//! ApiMonitor controller: writes status (conditions, per-node account, endpoint inventory).
//!
//! The node configuration itself is compiled by [`crate::state::Hub::recompile`] whenever pods,
//! monitors, policies or referenced ConfigMaps change; this controller reports how it landed,
//! including an OpenAPI document that cannot be used (`Degraded`, reason `OpenApi...`).

use crate::compile::monitor_pods;
use crate::openapi_source::{OpenApiDocument, OpenApiSource};
use crate::state::{obj_key, Hub};
use crate::status::{
    add_degraded_problem, conditions_from_nodes, node_states, pods_per_node, summarize, Reported,
};
use crate::throttle::WriteThrottle;
use crate::Error;
use kube::runtime::controller::Action;
use kube::ResourceExt;
use palisade_api::v1alpha1::{
    ApiMonitor, ApiMonitorStatus, CommonStatus, EndpointInventory, EndpointStatus, TlsCoverageStatus,
    TlsPodCoverage, MAX_ENDPOINTS_IN_STATUS,
};
use std::sync::Arc;
use std::time::Duration;

pub const FIELD_MANAGER: &str = "palisade-operator";

pub struct MonitorContext {
    pub client: kube::Client,
    pub hub: Arc<Hub>,
    pub status_throttle: WriteThrottle,
}

/// The status a monitor should have now.
pub fn desired_status(monitor: &ApiMonitor, hub: &Hub) -> ApiMonitorStatus {
    let key = obj_key(monitor);
    let generation = monitor.metadata.generation;
    let pods = hub.view.pods.state();
    let selected = monitor_pods(monitor, &pods);
    let per_node = pods_per_node(&selected);
    let states = node_states(
        hub,
        &per_node,
        &Reported::Monitor(&key, generation.unwrap_or_default()),
    );
    let nodes = summarize(states, true);
    let previous = monitor
        .status
        .as_ref()
        .map(|s| s.common.conditions.clone())
        .unwrap_or_default();
    let mut ready_msg = format!(
        "capture attached to {} pods on {} nodes",
        selected.len(),
        nodes.total
    );
    let openapi = hub.openapi_document(monitor);
    if let (Some(source), Some(doc)) = (OpenApiSource::of(monitor), &openapi) {
        match doc {
            OpenApiDocument::Loaded(ops) => ready_msg.push_str(&format!(
                "; OpenAPI document from {source}: {} operations ({} deprecated)",
                ops.len(),
                ops.iter().filter(|o| o.deprecated).count()
            )),
            OpenApiDocument::Pending => {
                ready_msg.push_str(&format!("; OpenAPI document from {source}: loading"))
            }
            OpenApiDocument::Failed { .. } => {}
        }
    }
    let mut conditions = conditions_from_nodes(
        &previous,
        generation,
        selected.len() as u32,
        &nodes,
        None,
        ready_msg,
    );
    if let Some(OpenApiDocument::Failed { reason, message }) = openapi {
        add_degraded_problem(&mut conditions, &previous, reason, message, generation);
    }

    hub.seed_monitor(&key, monitor.status.as_ref());
    let telemetry = hub.monitor_telemetry(&key);
    let mut items: Vec<EndpointStatus> = telemetry
        .endpoints
        .iter()
        .map(|((method, path), t)| t.status(method, path))
        .collect();
    items.sort_by(|a, b| {
        b.requests
            .cmp(&a.requests)
            .then_with(|| (&a.path, &a.method).cmp(&(&b.path, &b.method)))
    });
    let total = items.len() as u32;
    items.truncate(MAX_ENDPOINTS_IN_STATUS);

    let tls = monitor.spec.tls.enabled.then(|| {
        let mut details: Vec<TlsPodCoverage> = per_node
            .keys()
            .filter_map(|node| hub.agent(node))
            .filter_map(|agent| agent.monitors.get(&key).cloned())
            .flat_map(|report| report.tls)
            .map(|t| TlsPodCoverage {
                pod: format!("{}/{}", t.pod_namespace, t.pod_name),
                covered: t.covered,
                detail: t.detail,
            })
            .collect();
        details.sort_by(|a, b| (a.covered, &a.pod).cmp(&(b.covered, &b.pod)));
        let covered_pods = details.iter().filter(|d| d.covered).count() as u32;
        let uncovered_pods = details.len() as u32 - covered_pods;
        details.truncate(palisade_api::v1alpha1::MAX_NODE_DETAILS);
        TlsCoverageStatus {
            covered_pods,
            uncovered_pods,
            details,
        }
    });

    ApiMonitorStatus {
        tls,
        common: CommonStatus {
            observed_generation: generation,
            conditions,
            nodes,
        },
        matched_pods: selected.len() as u32,
        endpoints: EndpointInventory {
            total,
            overflow_requests: telemetry.overflow_requests,
            items,
        },
    }
}

#[tracing::instrument(skip_all, fields(monitor = %format!("{}/{}", monitor.namespace().unwrap_or_default(), monitor.name_any())))]
pub async fn reconcile(monitor: Arc<ApiMonitor>, ctx: Arc<MonitorContext>) -> Result<Action, Error> {
    let status = desired_status(&monitor, &ctx.hub);
    // Compared as JSON: timestamps are stored to the second, so a typed comparison with the
    // millisecond values computed here would never be equal and the status would be rewritten forever.
    if serde_json::to_value(&monitor.status).ok() != serde_json::to_value(Some(&status)).ok() {
        if let Err(wait) = ctx
            .status_throttle
            .try_acquire(&obj_key(monitor.as_ref()), std::time::Instant::now())
        {
            return Ok(Action::requeue(wait));
        }
        crate::status::apply_status(&ctx.client, monitor.as_ref(), &status).await?;
        tracing::debug!("status written");
    }
    Ok(Action::requeue(Duration::from_secs(60)))
}

pub fn error_policy(_monitor: Arc<ApiMonitor>, error: &Error, _ctx: Arc<MonitorContext>) -> Action {
    tracing::warn!(%error, "ApiMonitor reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}
