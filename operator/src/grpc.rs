//! The AgentControl gRPC service: agents follow their node's configuration and report back.

use crate::metrics::OperatorMetrics;
use crate::state::Hub;
use palisade_api::agent::agent_control_server::AgentControl;
use palisade_api::agent::{AgentReport, NodeConfig, ReportAck, WatchConfigRequest};
use palisade_tls::server::PeerInfo;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

pub struct AgentControlService {
    pub hub: Arc<Hub>,
    /// With mutual TLS: an agent's client certificate must name (subjectAltName DNS) the node
    /// it speaks for, so one node's credentials cannot read or report for another.
    pub require_node_identity: bool,
    pub metrics: OperatorMetrics,
}

impl AgentControlService {
    /// Refuses a request for `node` whose client certificate does not name that node (when
    /// [`Self::require_node_identity`] is on).
    fn check_identity<T>(&self, request: &Request<T>, node: &str) -> Result<(), Status> {
        if !self.require_node_identity {
            return Ok(());
        }
        let peer = request.extensions().get::<PeerInfo>();
        match peer.and_then(|p| p.certificates.first()) {
            Some(leaf) if palisade_tls::identity::certificate_names(leaf, node) => Ok(()),
            Some(_) => {
                tracing::warn!(%node, "client certificate does not name the node; refused");
                Err(Status::permission_denied(format!(
                    "the client certificate does not name node {node}"
                )))
            }
            None => Err(Status::permission_denied(
                "node identity is required but the connection has no client certificate",
            )),
        }
    }
}

/// Marks the node's agent disconnected when its config stream is dropped.
struct ConnectionGuard {
    hub: Arc<Hub>,
    metrics: OperatorMetrics,
    node: String,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        tracing::info!(node = %self.node, "agent disconnected");
        self.hub.set_connected(&self.node, false);
        self.metrics.set_connected_agents(self.hub.connected_agents());
    }
}

fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

type ConfigStream = Pin<Box<dyn Stream<Item = Result<NodeConfig, Status>> + Send>>;

#[tonic::async_trait]
impl AgentControl for AgentControlService {
    type WatchConfigStream = ConfigStream;

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node_name))]
    async fn watch_config(
        &self,
        request: Request<WatchConfigRequest>,
    ) -> Result<Response<ConfigStream>, Status> {
        if !valid_node_name(&request.get_ref().node_name) {
            return Err(Status::invalid_argument(
                "node_name must be a valid Kubernetes node name",
            ));
        }
        self.check_identity(&request, &request.get_ref().node_name)?;
        let req = request.into_inner();
        tracing::info!(agent_version = %req.agent_version, "agent connected");
        self.hub.set_connected(&req.node_name, true);
        self.metrics.set_connected_agents(self.hub.connected_agents());
        let guard = ConnectionGuard {
            hub: self.hub.clone(),
            metrics: self.metrics.clone(),
            node: req.node_name.clone(),
        };
        let rx = self.hub.subscribe(&req.node_name);
        // A node whose agent is new gets its (possibly empty) configuration compiled now.
        self.hub.recompile_if_ready();
        // Version 0 is the placeholder before the operator has compiled anything (its stores are
        // still listing): sending it would make the agent detach everything.
        let stream = WatchStream::new(rx)
            .filter(|cfg| cfg.version > 0)
            .map(move |cfg| {
                guard.metrics.config_pushed(&guard.node, cfg.version);
                Ok(NodeConfig::clone(&cfg))
            });
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all, fields(node = %request.get_ref().node_name, applied = request.get_ref().applied_version))]
    async fn report(&self, request: Request<AgentReport>) -> Result<Response<ReportAck>, Status> {
        if !valid_node_name(&request.get_ref().node_name) {
            return Err(Status::invalid_argument(
                "node_name must be a valid Kubernetes node name",
            ));
        }
        self.check_identity(&request, &request.get_ref().node_name)?;
        let report = request.into_inner();
        let node = report.node_name.clone();
        tracing::debug!(
            monitors = report.monitors.len(),
            findings = report.policies.iter().map(|p| p.findings.len()).sum::<usize>(),
            "report"
        );
        self.hub.record_report(report);
        Ok(Response::new(ReportAck {
            current_version: self.hub.current_version(&node),
        }))
    }
}
