//! The operator's Prometheus metrics, and its HTTP endpoint: `/metrics`, `/healthz` (the
//! process serves) and `/readyz` (every store holds its initial list and the first
//! configurations are compiled: agents get complete configurations from now on).
//!
//! Labels are bounded: controller kinds, error kinds from [`Error::metric_label`], API
//! resources, and node names (one series per node with an agent).

use crate::state::Hub;
use crate::Error;
use kube::runtime::controller::Action;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileErrorLabels {
    pub kind: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// All of the operator's metrics. Cloning shares them.
#[derive(Clone)]
pub struct OperatorMetrics {
    registry: Arc<Registry>,
    reconciles: Family<ReconcileLabels, Counter>,
    reconcile_errors: Family<ReconcileErrorLabels, Counter>,
    reconcile_duration: Family<KindLabels, Histogram>,
    connected_agents: Gauge,
    config_pushes: Family<NodeLabels, Counter>,
    config_version: Family<NodeLabels, Gauge>,
    status_writes: Family<ResourceLabels, Counter>,
    tls_rejections: Counter,
    tls_reloads: Family<ResultLabels, Counter>,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl OperatorMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("palisade_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciliations by controller kind and result (ok, error)",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ReconcileErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by controller kind and error kind",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            // 1 ms .. ~16 s.
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        });
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation takes, by controller kind",
            reconcile_duration.clone(),
        );
        let connected_agents = Gauge::default();
        registry.register(
            "connected_agents",
            "Nodes whose agent follows its configuration stream now",
            connected_agents.clone(),
        );
        let config_pushes = Family::<NodeLabels, Counter>::default();
        registry.register(
            "config_pushes",
            "Node configurations sent to agents, by node",
            config_pushes.clone(),
        );
        let config_version = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "config_version",
            "Version of the configuration last sent to each node's agent",
            config_version.clone(),
        );
        let status_writes = Family::<ResourceLabels, Counter>::default();
        registry.register(
            "status_writes",
            "Status writes (server-side apply of /status) sent to the API server, by resource",
            status_writes.clone(),
        );
        let tls_rejections = Counter::default();
        registry.register(
            "tls_handshake_rejections",
            "Connections to the agents' gRPC port refused in the TLS handshake (no or an untrusted client certificate, timeouts)",
            tls_rejections.clone(),
        );
        let tls_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "Changes of the TLS certificate files: loaded (ok) or refused (error, the previous ones stay)",
            tls_reloads.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconciles,
            reconcile_errors,
            reconcile_duration,
            connected_agents,
            config_pushes,
            config_version,
            status_writes,
            tls_rejections,
            tls_reloads,
        }
    }

    /// Records one reconciliation of `kind`.
    pub fn reconciled(&self, kind: &'static str, seconds: f64, result: Result<(), &Error>) {
        self.reconcile_duration
            .get_or_create(&KindLabels { kind })
            .observe(seconds);
        let label = match result {
            Ok(()) => "ok",
            Err(error) => {
                self.reconcile_errors
                    .get_or_create(&ReconcileErrorLabels {
                        kind,
                        error: error.metric_label(),
                    })
                    .inc();
                "error"
            }
        };
        self.reconciles
            .get_or_create(&ReconcileLabels { kind, result: label })
            .inc();
    }

    pub fn set_connected_agents(&self, n: usize) {
        self.connected_agents.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A configuration of `version` was sent to `node`'s agent.
    pub fn config_pushed(&self, node: &str, version: u64) {
        let labels = NodeLabels { node: node.into() };
        self.config_pushes.get_or_create(&labels).inc();
        self.config_version
            .get_or_create(&labels)
            .set(i64::try_from(version).unwrap_or(i64::MAX));
    }

    pub fn status_written(&self, resource: &str) {
        self.status_writes
            .get_or_create(&ResourceLabels {
                resource: resource.into(),
            })
            .inc();
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

impl crate::tls::TlsEvents for OperatorMetrics {
    fn handshake_rejected(&self) {
        self.tls_rejections.inc();
    }
    fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.tls_reloads.get_or_create(&ResultLabels { result }).inc();
    }
}

type ReconcileFuture = Pin<Box<dyn Future<Output = Result<Action, Error>> + Send>>;

/// Wraps a controller's `reconcile` so that each run is counted and timed as `kind`.
pub fn instrumented<K, C, F, Fut>(
    metrics: OperatorMetrics,
    kind: &'static str,
    reconcile: F,
) -> impl FnMut(Arc<K>, Arc<C>) -> ReconcileFuture
where
    F: Fn(Arc<K>, Arc<C>) -> Fut,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |obj, ctx| {
        let started = Instant::now();
        let run = reconcile(obj, ctx);
        let metrics = metrics.clone();
        Box::pin(async move {
            let result = run.await;
            metrics.reconciled(kind, started.elapsed().as_secs_f64(), result.as_ref().map(|_| ()));
            result
        })
    }
}

/// The resource of a status write (`PATCH .../<resource>/<name>/status`), if `request` is one.
pub fn status_write_resource<B>(request: &http::Request<B>) -> Option<String> {
    if request.method() != http::Method::PATCH {
        return None;
    }
    let mut segments = request.uri().path().rsplit('/');
    if segments.next() != Some("status") {
        return None;
    }
    let _name = segments.next()?;
    segments.next().map(str::to_string)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: OperatorMetrics,
    hub: Arc<Hub>,
) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    match metrics.encode() {
                        Ok(body) => (
                            StatusCode::OK,
                            [(
                                header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            body,
                        ),
                        Err(_) => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [(header::CONTENT_TYPE, "text/plain")],
                            "encoding metrics failed".to_string(),
                        ),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let hub = hub.clone();
                async move {
                    if hub.is_ready() {
                        (StatusCode::OK, "ok")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: the cluster's objects are still being listed",
                        )
                    }
                }
            }),
        );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reconciles_by_kind_and_result() {
        let m = OperatorMetrics::new();
        m.reconciled("ApiMonitor", 0.01, Ok(()));
        m.reconciled("ApiMonitor", 0.02, Err(&Error::MissingNamespace));
        m.set_connected_agents(1);
        m.config_pushed("node-a", 7);
        let text = m.encode().unwrap();
        assert!(
            text.contains(r#"palisade_operator_reconciles_total{kind="ApiMonitor",result="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"palisade_operator_reconciles_total{kind="ApiMonitor",result="error"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"palisade_operator_reconcile_errors_total{kind="ApiMonitor",error="missing_namespace"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"palisade_operator_reconcile_duration_seconds_count{kind="ApiMonitor"} 2"#),
            "{text}"
        );
        assert!(text.contains("palisade_operator_connected_agents 1"), "{text}");
        assert!(
            text.contains(r#"palisade_operator_config_version{node="node-a"} 7"#),
            "{text}"
        );
    }

    #[test]
    fn recognises_status_writes() {
        let req = |method: &str, path: &str| {
            http::Request::builder()
                .method(method)
                .uri(format!("https://api{path}?fieldManager=x"))
                .body(())
                .unwrap()
        };
        assert_eq!(
            status_write_resource(&req(
                "PATCH",
                "/apis/palisade.dev/v1alpha1/namespaces/demo/apimonitors/m/status"
            ))
            .as_deref(),
            Some("apimonitors")
        );
        assert_eq!(
            status_write_resource(&req(
                "PATCH",
                "/apis/palisade.dev/v1alpha1/namespaces/demo/apimonitors/m"
            )),
            None
        );
        assert_eq!(
            status_write_resource(&req(
                "GET",
                "/apis/palisade.dev/v1alpha1/namespaces/demo/apimonitors/m/status"
            )),
            None
        );
    }
}
