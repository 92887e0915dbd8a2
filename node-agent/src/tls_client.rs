//! The agent's channel to the operator: plaintext for `http://` URLs, mutual TLS for
//! `https://` ones, with a client certificate read from files on every (re)connect, so a
//! rotated Secret is used from the next connection on without restarting the agent.

use palisade_tls::client::{ClientFiles, TlsConnector};
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// The agent's TLS flags, as given.
#[derive(Debug, Clone, Default)]
pub struct TlsFlags {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
}

/// Why the channel cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("--operator must be a URL such as https://operator:9443: {0}")]
    Url(#[source] tonic::transport::Error),
    #[error("--operator {0} is https: pass --tls-cert, --tls-key and --tls-ca")]
    HttpsWithoutTls(String),
    #[error("--tls-* flags are given but --operator {0} is not https://")]
    TlsWithoutHttps(String),
    #[error("--tls-cert, --tls-key and --tls-ca go together (missing: {0})")]
    Incomplete(&'static str),
}

impl TlsFlags {
    /// The client files, if TLS is configured; an error if only some of the flags are given.
    pub fn files(&self) -> Result<Option<ClientFiles>, ChannelError> {
        match (&self.cert, &self.key, &self.ca) {
            (None, None, None) if self.server_name.is_none() => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(ClientFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
                server_name: self.server_name.clone(),
            })),
            (None, _, _) => Err(ChannelError::Incomplete("--tls-cert")),
            (_, None, _) => Err(ChannelError::Incomplete("--tls-key")),
            (_, _, None) => Err(ChannelError::Incomplete("--tls-ca")),
        }
    }
}

/// A lazily connecting channel to the operator at `url`; it reconnects by itself, and with TLS
/// each connection reads the certificate files anew.
pub fn operator_channel(url: &str, tls: &TlsFlags) -> Result<Channel, ChannelError> {
    let files = tls.files()?;
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(ChannelError::Url)?
        .connect_timeout(Duration::from_secs(5));
    let https = endpoint.uri().scheme_str() == Some("https");
    match (files, https) {
        (Some(files), true) => Ok(endpoint.connect_with_connector_lazy(TlsConnector::new(files))),
        (None, false) => {
            tracing::warn!(operator = %url, "connecting to the operator in PLAINTEXT (no --tls-*): for local demos only");
            Ok(endpoint.connect_lazy())
        }
        (None, true) => Err(ChannelError::HttpsWithoutTls(url.to_string())),
        (Some(_), false) => Err(ChannelError::TlsWithoutHttps(url.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flags_and_scheme_must_agree() {
        let none = TlsFlags::default();
        assert!(operator_channel("http://127.0.0.1:9443", &none).is_ok());
        assert!(matches!(
            operator_channel("https://127.0.0.1:9443", &none),
            Err(ChannelError::HttpsWithoutTls(_))
        ));
        let all = TlsFlags {
            cert: Some("c".into()),
            key: Some("k".into()),
            ca: Some("ca".into()),
            server_name: None,
        };
        assert!(operator_channel("https://operator:9443", &all).is_ok());
        assert!(matches!(
            operator_channel("http://operator:9443", &all),
            Err(ChannelError::TlsWithoutHttps(_))
        ));
        let partial = TlsFlags { key: None, ..all };
        assert!(matches!(
            operator_channel("https://operator:9443", &partial),
            Err(ChannelError::Incomplete("--tls-key"))
        ));
    }
}
