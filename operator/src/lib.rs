//! Palisade operator: reconciles ApiMonitor and ApiPolicy with Pods and Nodes into one desired
//! configuration per node (with the OpenAPI documents monitors reference in ConfigMaps), streams
//! it to node agents over gRPC, and writes back status and Events.

pub mod compile;
pub mod grpc;
pub mod inventory;
pub mod isolation;
pub mod metrics;
pub mod monitor_controller;
pub mod openapi_source;
pub mod policy_controller;
pub mod policy_report;
pub mod state;
pub mod status;
pub mod throttle;
pub mod tls;

/// Errors of the operator's reconcilers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[source] kube::Error),
    #[error("object has no namespace")]
    MissingNamespace,
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::MissingNamespace => "missing_namespace",
        }
    }
}
