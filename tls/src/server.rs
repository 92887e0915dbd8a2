//! The operator's side: a rustls server configuration that requires client certificates and
//! follows its files on disk, and the stream of TLS connections tonic serves.

use crate::{certificates, private_key, provider, read, root_store, TlsError, ALPN_H2};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files the server configuration is built from (PEM; e.g. a mounted Secret).
#[derive(Debug, Clone)]
pub struct ServerFiles {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA (bundle) client certificates must be signed by.
    pub client_ca: PathBuf,
}

/// The contents a configuration was built from: a change of any byte means a rebuild.
#[derive(PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Vec<u8>,
}

impl ServerFiles {
    fn read(&self) -> Result<Contents, TlsError> {
        Ok(Contents {
            cert: read(&self.cert)?,
            key: read(&self.key)?,
            client_ca: read(&self.client_ca)?,
        })
    }

    fn build(&self, contents: &Contents) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = provider();
        let roots = root_store(&self.client_ca, &contents.client_ca)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
        // `with_single_cert` also checks that the key belongs to the certificate, so a rotation
        // caught between writing the two files is refused (and retried) rather than served.
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                certificates(&self.cert, &contents.cert)?,
                private_key(&self.key, &contents.key)?,
            )?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// A server configuration rebuilt whenever its files change. Connections take the current one
/// when they are accepted; established connections keep the one they started with.
pub struct ReloadingServerConfig {
    files: ServerFiles,
    current: RwLock<(Contents, Arc<ServerConfig>)>,
}

impl ReloadingServerConfig {
    /// Loads the files; fails if they do not make a valid configuration.
    pub fn load(files: ServerFiles) -> Result<Arc<Self>, TlsError> {
        let contents = files.read()?;
        let config = files.build(&contents)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new((contents, config)),
        }))
    }

    pub fn files(&self) -> &ServerFiles {
        &self.files
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(guard) => guard.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        }
    }

    /// Re-reads the files and, if any changed, rebuilds the configuration. `Ok(true)`: new
    /// connections now use the new files. On an error the previous configuration stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let contents = self.files.read()?;
        let unchanged = match self.current.read() {
            Ok(guard) => guard.0 == contents,
            Err(poisoned) => poisoned.into_inner().0 == contents,
        };
        if unchanged {
            return Ok(false);
        }
        let config = self.files.build(&contents)?;
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = (contents, config);
        Ok(true)
    }

    /// Polls the files every `interval` and reloads them when they change; `on_reload` hears
    /// each attempt that found a change (`Ok`) or failed (`Err`, the old configuration stays).
    pub fn spawn_reloader(
        self: &Arc<Self>,
        interval: Duration,
        on_reload: impl Fn(&Result<(), TlsError>) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            // Log a failure once per distinct error, not on every poll.
            let mut last_error: Option<String> = None;
            loop {
                tick.tick().await;
                match this.reload() {
                    Ok(false) => {}
                    Ok(true) => {
                        tracing::info!(
                            cert = %this.files.cert.display(),
                            client_ca = %this.files.client_ca.display(),
                            "TLS certificates reloaded; new connections use them"
                        );
                        last_error = None;
                        on_reload(&Ok(()));
                    }
                    Err(error) => {
                        let text = error.to_string();
                        if last_error.as_deref() != Some(text.as_str()) {
                            tracing::warn!(%error, "TLS certificates changed but cannot be loaded; keeping the previous ones");
                            last_error = Some(text);
                            on_reload(&Err(error));
                        }
                    }
                }
            }
        })
    }
}

/// An established server-side TLS connection that tells tonic who is at the other end: its
/// [`PeerInfo`] is in the extensions of every request that arrives over it.
pub struct PeerStream(TlsStream<TcpStream>);

/// The peer of a [`PeerStream`]: its address and the certificate chain it presented (verified
/// by the handshake against the client CA), leaf first.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote_addr: Option<SocketAddr>,
    pub certificates: Arc<Vec<CertificateDer<'static>>>,
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        let (tcp, session) = self.0.get_ref();
        PeerInfo {
            remote_addr: tcp.peer_addr().ok(),
            certificates: Arc::new(
                session
                    .peer_certificates()
                    .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default(),
            ),
        }
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` and yields those that complete a TLS handshake with
/// the current configuration (client certificate verified). Handshakes run concurrently, each
/// bounded by a timeout; failures are logged with the peer and the reason, and `on_reject`
/// hears each one.
pub fn incoming(
    listener: TcpListener,
    config: Arc<ReloadingServerConfig>,
    on_reject: impl Fn() + Send + Sync + 'static,
) -> ReceiverStream<Result<PeerStream, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let on_reject = Arc::new(on_reject);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and the like: wait a little rather than spin.
                    tracing::warn!(%error, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                break;
            }
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
            let tx = tx.clone();
            let on_reject = on_reject.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(PeerStream(stream))).await;
                    }
                    // A TCP check (a probe, a port scan) that closes without a word.
                    Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                        tracing::debug!(%peer, %error, "connection closed before the TLS handshake");
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%peer, %error, "TLS handshake rejected");
                        on_reject();
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "TLS handshake timed out");
                        on_reject();
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ca, leaf};

    fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reload_swaps_only_on_change_and_keeps_the_old_config_on_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca1 = ca("ca-1");
        let (cert, key) = leaf(&ca1, &["operator"], false);
        let files = ServerFiles {
            cert: write(dir.path(), "tls.crt", &cert),
            key: write(dir.path(), "tls.key", &key),
            client_ca: write(dir.path(), "ca.crt", &ca1.pem),
        };
        let tls = ReloadingServerConfig::load(files.clone()).unwrap();
        let first = tls.current();
        assert!(!tls.reload().unwrap(), "nothing changed");
        assert!(Arc::ptr_eq(&first, &tls.current()));

        // A new key without its certificate (a rotation half written): refused, old one kept.
        let ca2 = ca("ca-2");
        let (cert2, key2) = leaf(&ca2, &["operator"], false);
        write(dir.path(), "tls.key", &key2);
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&first, &tls.current()));

        write(dir.path(), "tls.crt", &cert2);
        write(dir.path(), "ca.crt", &ca2.pem);
        assert!(tls.reload().unwrap());
        assert!(!Arc::ptr_eq(&first, &tls.current()));
    }

    #[test]
    fn load_fails_without_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca1 = ca("ca-1");
        let (_, key) = leaf(&ca1, &["operator"], false);
        let files = ServerFiles {
            cert: write(dir.path(), "tls.crt", "not a certificate"),
            key: write(dir.path(), "tls.key", &key),
            client_ca: write(dir.path(), "ca.crt", &ca1.pem),
        };
        let err = ReloadingServerConfig::load(files).err().unwrap();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }
}
