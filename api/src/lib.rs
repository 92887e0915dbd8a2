//! Palisade's public API: the `ApiMonitor` and `ApiPolicy` custom resources
//! (`palisade.dev/v1alpha1`), the operator–agent gRPC protocol, and OpenAPI documents read from
//! `spec.openApi` or written from a monitor's discovered endpoints ([`openapi`]), the vocabulary
//! of that endpoint inventory ([`inventory`]), and typed
//! `wgpolicyk8s.io` PolicyReports, which the operator writes when their CRD is installed
//! ([`policy_report`]).
//!
//! The operator and the node agent both depend on this crate and never on each other.

// kube's printcolumn(...) attributes repeat keys such as `type_` by design.
#![allow(clippy::duplicated_attributes)]

pub mod crdgen;
pub mod duration;
pub mod inventory;
pub mod openapi;
pub mod policy_report;
pub mod v1alpha1;

/// The operator–agent protocol (`proto/palisade/agent/v1/agent.proto`).
pub mod agent {
    #![allow(clippy::all, clippy::unwrap_used, clippy::expect_used)]
    tonic::include_proto!("palisade.agent.v1");
}
