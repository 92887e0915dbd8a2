//! How the AgentControl gRPC service is served: plaintext (a local demo), or mutual TLS with
//! certificates read from files and reloaded when they change (see `palisade_tls`).

use palisade_tls::server::{incoming, ReloadingServerConfig, ServerFiles};
use palisade_tls::TlsError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::server::Router;

/// mTLS settings of the gRPC server.
#[derive(Debug, Clone)]
pub struct GrpcTls {
    pub files: ServerFiles,
    /// How often the files are checked for a change.
    pub reload_interval: Duration,
}

/// Why the gRPC server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the gRPC server's TLS certificates: {0}")]
    Tls(#[from] TlsError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Hooks for what the TLS layer sees (metrics).
pub trait TlsEvents: Send + Sync + 'static {
    /// A client failed the TLS handshake (no certificate, an unknown CA, a timeout, ...).
    fn handshake_rejected(&self) {}
    /// The certificate files changed: `ok` if the new ones are in use.
    fn reloaded(&self, _ok: bool) {}
}

impl TlsEvents for () {}

/// Serves `router` on `listen` until `shutdown` completes: with mTLS when `tls` is given (the
/// files must load, or this fails at once), else in plaintext.
pub async fn serve(
    router: Router,
    listen: SocketAddr,
    tls: Option<GrpcTls>,
    events: Arc<dyn TlsEvents>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let Some(tls) = tls else {
        tracing::warn!(
            %listen,
            "gRPC service for agents is PLAINTEXT and unauthenticated: anyone who reaches this port \
             can read node configurations and send reports; pass --tls-cert, --tls-key and \
             --tls-client-ca for mutual TLS"
        );
        router.serve_with_shutdown(listen, shutdown).await?;
        return Ok(());
    };
    let config = ReloadingServerConfig::load(tls.files.clone())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind { addr: listen, source })?;
    let reload_events = events.clone();
    let reloader = config.spawn_reloader(tls.reload_interval, move |r| reload_events.reloaded(r.is_ok()));
    tracing::info!(
        %listen,
        cert = %tls.files.cert.display(),
        client_ca = %tls.files.client_ca.display(),
        reload_every = ?tls.reload_interval,
        "gRPC service for agents requires mutual TLS"
    );
    let connections = incoming(listener, config, move || events.handshake_rejected());
    let served = router.serve_with_incoming_shutdown(connections, shutdown).await;
    reloader.abort();
    served?;
    Ok(())
}
