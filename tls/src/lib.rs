//! Mutual TLS for the AgentControl channel between the operator and the node agents, with
//! rustls (the ring provider).
//!
//! - [`server::ReloadingServerConfig`]: the operator's side. It requires a client certificate
//!   signed by the client CA, and re-reads its certificate, key and client CA when their files
//!   change on disk (a Secret volume update swaps a symlink), so new connections use the new
//!   ones without a restart. [`server::incoming`] turns a TCP listener into the stream of
//!   established TLS connections that tonic's `serve_with_incoming` takes.
//! - [`client::TlsConnector`]: the agent's side, a connector for tonic's `Endpoint` that reads
//!   its certificate, key and CA files on every (re)connect: a rotated certificate is used from
//!   the next connection on.
//! - [`identity::certificate_names`]: whether a peer certificate names a node, for the
//!   operator's optional check that an agent speaks only for its own node.
//!
//! tonic's own TLS features (`tls-ring`, ...) are deliberately not enabled anywhere in the
//! workspace: they configure TLS once per `Endpoint`/`Server` (no reload), and with them tonic
//! refuses an `https://` URI whose connector does TLS itself.

pub mod client;
pub mod identity;
pub mod server;

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What can go wrong loading certificates and building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path} holds no PEM private key")]
    NoPrivateKey { path: PathBuf },
    #[error("{path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("invalid server name {0:?}")]
    ServerName(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The crypto provider every configuration here uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// HTTP/2 only: gRPC.
pub(crate) const ALPN_H2: &[u8] = b"h2";

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file (a chain: leaf first), or an error if there is none.
pub(crate) fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|_| TlsError::NoPrivateKey {
        path: path.to_path_buf(),
    })
}

/// A root store of every certificate in a PEM file (a CA bundle).
pub(crate) fn root_store(path: &Path, pem: &[u8]) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path, pem)? {
        roots.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

#[cfg(test)]
pub(crate) mod testing {
    //! A throwaway PKI for the unit tests.
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

    pub struct Ca {
        pub pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    pub fn ca(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `names`, signed by `ca`.
    pub fn leaf(ca: &Ca, names: &[&str], client: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}
