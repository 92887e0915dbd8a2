//! `palisade-operator`: see the crate docs in lib.rs and the README.

use anyhow::Context;
use clap::Parser;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use palisade_api::agent::agent_control_server::AgentControlServer;
use palisade_api::v1alpha1::{ApiIsolation, ApiMonitor, ApiPolicy};
use palisade_operator::grpc::AgentControlService;
use palisade_operator::isolation::{self, IsolationContext};
use palisade_operator::metrics::{instrumented, status_write_resource, OperatorMetrics};
use palisade_operator::monitor_controller::{self, MonitorContext};
use palisade_operator::openapi_source::{referenced_config_maps, ConfigMapWatches};
use palisade_operator::policy_controller::{self, PolicyContext};
use palisade_operator::policy_report::PolicyReports;
use palisade_operator::state::{ClusterView, Hub};
use palisade_operator::throttle::{EventBudget, WriteThrottle};
use palisade_operator::tls::GrpcTls;
use palisade_tls::server::ServerFiles;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::UnboundedReceiverStream;

#[derive(Parser, Debug)]
#[command(version, about = "Palisade operator")]
struct Args {
    /// Address the agents' gRPC service listens on.
    #[arg(long, env = "PALISADE_GRPC_LISTEN", default_value = "0.0.0.0:9443")]
    grpc_listen: SocketAddr,
    /// Minimum time between two status writes of one object.
    #[arg(long, default_value = "1000")]
    status_interval_ms: u64,
    /// Pod networks of the cluster beyond the Nodes' spec.podCIDRs (repeatable), used to tell
    /// east-west from north-south traffic.
    #[arg(long = "cluster-cidr")]
    cluster_cidrs: Vec<String>,
    /// Log as JSON lines.
    #[arg(long, env = "PALISADE_LOG_JSON")]
    log_json: bool,
    /// Where to serve Prometheus metrics (`/metrics`), `/healthz` and `/readyz`.
    #[arg(long, env = "PALISADE_METRICS_LISTEN", default_value = "0.0.0.0:9465")]
    metrics_listen: SocketAddr,
    /// PEM certificate (chain) of the gRPC service. With --tls-key and --tls-client-ca, agents
    /// must connect with mutual TLS; the files are re-read when they change (no restart).
    /// Without them the service is plaintext (a local demo only).
    #[arg(long, env = "PALISADE_TLS_CERT", requires_all = ["tls_key", "tls_client_ca"])]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "PALISADE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA (bundle) that agents' client certificates must be signed by.
    #[arg(long, env = "PALISADE_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// How often to check the TLS files for a change, in milliseconds.
    #[arg(long, default_value = "5000")]
    tls_reload_interval_ms: u64,
    /// Refuse an agent whose client certificate does not name (subjectAltName DNS) the node it
    /// claims: needs one certificate per node.
    #[arg(long, requires = "tls_cert")]
    tls_require_node_identity: bool,
    /// Write a wgpolicyk8s.io/v1alpha2 PolicyReport per ApiPolicy (for Kyverno's and Falco's
    /// policy-reporter and other readers of the Policy WG format) when the cluster has the
    /// PolicyReport CRD; without it the operator logs so once and writes none.
    #[arg(long, env = "PALISADE_POLICY_REPORTS", default_value_t = true, action = clap::ArgAction::Set)]
    policy_reports: bool,
    /// While the PolicyReport CRD is missing, how often to check whether it was installed, in seconds.
    #[arg(long, default_value = "60")]
    policy_report_probe_interval_s: u64,
}

type Signal = Pin<Box<dyn Stream<Item = ()> + Send>>;

/// Starts a reflector for `api`, returning its store and a stream that yields on every change.
fn reflect<K>(api: Api<K>) -> (Store<K>, Signal)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .filter_map(|ev| async move {
            match ev {
                Ok(_) => Some(()),
                Err(error) => {
                    tracing::warn!(%error, "watch error; retrying");
                    None
                }
            }
        });
    (reader, Box::pin(stream))
}

/// Whether every reflector store has received its initial list.
fn stores_ready(view: &ClusterView) -> bool {
    view.pods
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
        && view
            .monitors
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok())
        && view
            .policies
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok())
        && view
            .nodes
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok())
        && view
            .isolations
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }

    let metrics = OperatorMetrics::new();
    // Bind before anything else: a port taken is a configuration error to see at once.
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("serving metrics on {}", args.metrics_listen))?;
    let kube_config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let status_metrics = metrics.clone();
    let client = kube::client::ClientBuilder::try_from(kube_config)
        .context("connecting to the Kubernetes API")?
        .with_layer(&tower::util::MapRequestLayer::new(
            move |request: http::Request<kube::client::Body>| {
                if let Some(resource) = status_write_resource(&request) {
                    status_metrics.status_written(&resource);
                }
                request
            },
        ))
        .build();
    let (pods, pod_changes) = reflect(Api::<Pod>::all(client.clone()));
    let (monitors, monitor_changes) = reflect(Api::<ApiMonitor>::all(client.clone()));
    let (policies, policy_changes) = reflect(Api::<ApiPolicy>::all(client.clone()));
    let (nodes, node_changes) = reflect(Api::<Node>::all(client.clone()));
    let (isolations, isolation_changes) = reflect(Api::<ApiIsolation>::all(client.clone()));
    let view = ClusterView {
        pods,
        monitors,
        policies,
        nodes,
        isolations,
    };
    let (hub, triggers) = Hub::with_cluster_cidrs(view.clone(), args.cluster_cidrs.clone());
    let operator_pod = match (std::env::var("POD_NAMESPACE"), std::env::var("POD_NAME")) {
        (Ok(ns), Ok(name)) if !ns.is_empty() && !name.is_empty() => Some((ns, name)),
        _ => None,
    };
    if let Some((ns, name)) = operator_pod.clone() {
        hub.set_operator_pod(ns, name);
    }
    let served_metrics = metrics.clone();
    let metrics_hub = hub.clone();
    tokio::spawn(async move {
        if let Err(error) =
            palisade_operator::metrics::serve(metrics_listener, served_metrics, metrics_hub).await
        {
            tracing::error!(%error, "metrics endpoint stopped");
        }
    });

    // ConfigMaps that monitors reference for their OpenAPI documents: one watch each, kept in
    // step with the monitors by the compile loop (see `openapi_source` for why not a reflector).
    let (config_map_tx, config_map_rx) = tokio::sync::mpsc::unbounded_channel();
    let config_map_changes: Signal = Box::pin(UnboundedReceiverStream::new(config_map_rx));
    let mut config_map_watches = ConfigMapWatches::new(client.clone(), hub.clone(), config_map_tx);

    // Recompile node configurations on any change, at most every 100 ms.
    let compile_hub = hub.clone();
    let mut changes = futures::stream::select_all([
        pod_changes,
        monitor_changes,
        policy_changes,
        node_changes,
        isolation_changes,
        config_map_changes,
    ]);
    let ready_view = view.clone();
    let compiler = tokio::spawn(async move {
        while changes.next().await.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // Drain what piled up while we slept: one recompile covers it all.
            while let Some(Some(())) = changes.next().now_or_never() {}
            // Until every store holds its initial list, a compile would push partial configs
            // (detaching capture cluster-wide) and forget counts of objects not listed yet.
            if !stores_ready(&ready_view) {
                continue;
            }
            config_map_watches.sync(&referenced_config_maps(&ready_view.monitors.state()));
            if !compile_hub.is_ready() {
                // The first compile waits (a little) for the referenced ConfigMaps, so that an
                // operator restart does not send agents a configuration without their documents.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                while !config_map_watches
                    .watched()
                    .iter()
                    .all(|key| compile_hub.config_map_known(key))
                {
                    match tokio::time::timeout_at(deadline, changes.next()).await {
                        Ok(Some(())) => {}
                        _ => break,
                    }
                }
            }
            compile_hub.set_ready();
            let changed = compile_hub.recompile();
            if !changed.is_empty() {
                tracing::info!(nodes = ?changed, "node configurations updated");
            }
            compile_hub.forget_deleted();
            compile_hub.trigger_all();
        }
    });

    let status_interval = Duration::from_millis(args.status_interval_ms);
    let monitor_ctx = Arc::new(MonitorContext {
        client: client.clone(),
        hub: hub.clone(),
        status_throttle: WriteThrottle::new(status_interval),
    });
    let monitor_controller =
        Controller::new(Api::<ApiMonitor>::all(client.clone()), watcher::Config::default())
            .reconcile_on(UnboundedReceiverStream::new(triggers.monitors))
            .shutdown_on_signal()
            .run(
                instrumented(metrics.clone(), "ApiMonitor", monitor_controller::reconcile),
                monitor_controller::error_policy,
                monitor_ctx,
            )
            .for_each(|_| futures::future::ready(()));

    let policy_reports = args.policy_reports.then(|| {
        PolicyReports::new(
            client.clone(),
            status_interval,
            Duration::from_secs(args.policy_report_probe_interval_s.max(1)),
        )
    });
    match &policy_reports {
        // Asked now so that the log says at start whether reports are written.
        Some(reports) => {
            reports.served().await;
        }
        None => tracing::info!("PolicyReports are turned off (--policy-reports=false)"),
    }
    let policy_ctx = Arc::new(PolicyContext {
        client: client.clone(),
        hub: hub.clone(),
        reporter: Reporter {
            controller: "palisade-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
        status_throttle: WriteThrottle::new(status_interval),
        event_budget: EventBudget::default(),
        policy_reports,
    });
    let policy_controller =
        Controller::new(Api::<ApiPolicy>::all(client.clone()), watcher::Config::default())
            .reconcile_on(UnboundedReceiverStream::new(triggers.policies))
            .shutdown_on_signal()
            .run(
                instrumented(metrics.clone(), "ApiPolicy", policy_controller::reconcile),
                policy_controller::error_policy,
                policy_ctx,
            )
            .for_each(|_| futures::future::ready(()));

    let isolation_ctx = Arc::new(IsolationContext {
        client: client.clone(),
        hub: hub.clone(),
        reporter: Reporter {
            controller: "palisade-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
        operator_pod,
    });
    let isolation_controller = Controller::new(
        Api::<ApiIsolation>::all(client.clone()),
        watcher::Config::default(),
    )
    .reconcile_on(UnboundedReceiverStream::new(triggers.isolations))
    .shutdown_on_signal()
    .run(
        instrumented(metrics.clone(), "ApiIsolation", isolation::reconcile),
        isolation::error_policy,
        isolation_ctx,
    )
    .for_each(|_| futures::future::ready(()));

    let grpc_tls = match (args.tls_cert, args.tls_key, args.tls_client_ca) {
        (Some(cert), Some(key), Some(client_ca)) => Some(GrpcTls {
            files: ServerFiles { cert, key, client_ca },
            reload_interval: Duration::from_millis(args.tls_reload_interval_ms.max(100)),
        }),
        _ => None,
    };
    let router =
        tonic::transport::Server::builder().add_service(AgentControlServer::new(AgentControlService {
            hub: hub.clone(),
            require_node_identity: args.tls_require_node_identity,
            metrics: metrics.clone(),
        }));
    let grpc = palisade_operator::tls::serve(
        router,
        args.grpc_listen,
        grpc_tls,
        Arc::new(metrics.clone()),
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    );
    tracing::info!(listen = %args.grpc_listen, metrics = %args.metrics_listen, "operator started");

    tokio::select! {
        _ = monitor_controller => tracing::info!("ApiMonitor controller stopped"),
        _ = policy_controller => tracing::info!("ApiPolicy controller stopped"),
        _ = isolation_controller => tracing::info!("ApiIsolation controller stopped"),
        r = grpc => r.context("gRPC server failed")?,
        _ = compiler => tracing::warn!("configuration compiler stopped"),
    }
    Ok(())
}
