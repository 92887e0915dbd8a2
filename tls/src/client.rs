//! The agent's side: a tonic connector that opens TCP, then TLS with the agent's client
//! certificate, reading the files on every connect so a rotated certificate or CA is used from
//! the next connection on.

use crate::{certificates, private_key, provider, read, root_store, TlsError, ALPN_H2};
use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The files of a client identity (PEM; e.g. a mounted Secret).
#[derive(Debug, Clone)]
pub struct ClientFiles {
    /// The client's certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA (bundle) the server's certificate must be signed by.
    pub ca: PathBuf,
    /// The name to verify the server's certificate for; default: the host of the URL.
    pub server_name: Option<String>,
}

impl ClientFiles {
    /// A client configuration from the files as they are now.
    pub fn config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let roots = root_store(&self.ca, &read(&self.ca)?)?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(
                certificates(&self.cert, &read(&self.cert)?)?,
                private_key(&self.key, &read(&self.key)?)?,
            )?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// A connector for `tonic::transport::Endpoint::connect_with_connector[_lazy]`: TCP to the
/// URI's host and port, then TLS with a configuration freshly read from [`ClientFiles`].
#[derive(Debug, Clone)]
pub struct TlsConnector {
    files: ClientFiles,
}

impl TlsConnector {
    pub fn new(files: ClientFiles) -> Self {
        Self { files }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let files = self.files.clone();
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| format!("{uri} has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let name = files.server_name.clone().unwrap_or_else(|| host.clone());
            let server_name = ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name))?;
            let config = files.config()?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(server_name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}
