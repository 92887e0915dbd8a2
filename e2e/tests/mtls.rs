//! Mutual TLS between the agents and the operator, with real processes on a real kube-apiserver:
//! an agent with a client certificate from the client CA connects and applies its configuration;
//! a client without a certificate, or with one from another CA, or speaking for another node, is
//! refused; and certificates rotated on disk (a Secret volume's symlink swap) are used by new
//! connections without restarting the process that reads them.

use anyhow::{bail, ensure, Context, Result};
use palisade_api::agent::agent_control_client::AgentControlClient;
use palisade_api::agent::WatchConfigRequest;
use palisade_e2e::palisade::{
    condition, http_get_body, http_request, start_agent, wait_for, wait_for_object, Operator,
};
use palisade_e2e::{free_port, ControlPlane, FakeKubelet};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

const WAIT: Duration = Duration::from_secs(45);

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A leaf certificate for `names` (DNS names or IP addresses): (certificate PEM, key PEM).
    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Result<(String, String)> {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    fn server(&self) -> Result<(String, String)> {
        self.issue(&["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, node: &str) -> Result<(String, String)> {
        self.issue(&[node], ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// A directory laid out as the kubelet writes a Secret volume: the files are symlinks through
/// `..data`, which points at a timestamped directory, and an update swaps `..data` atomically.
struct SecretVolume {
    dir: PathBuf,
    generation: u32,
}

impl SecretVolume {
    fn create(dir: PathBuf, files: &[(&str, &str)]) -> Result<SecretVolume> {
        std::fs::create_dir_all(&dir)?;
        let mut volume = SecretVolume { dir, generation: 0 };
        volume.update(files)?;
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), volume.dir.join(name))?;
        }
        Ok(volume)
    }

    fn update(&mut self, files: &[(&str, &str)]) -> Result<()> {
        self.generation += 1;
        let version = format!("..2026_01_01_00_00_0{}", self.generation);
        let data = self.dir.join(&version);
        std::fs::create_dir(&data)?;
        for (name, text) in files {
            std::fs::write(data.join(name), text)?;
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version, &tmp)?;
        std::fs::rename(&tmp, self.dir.join("..data"))?;
        Ok(())
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A gRPC client over TLS that trusts `ca_pem` and presents `identity` (or no certificate).
fn tls_client(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<AgentControlClient<Channel>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder.with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes())?],
            PrivateKeyDer::from_pem_slice(key.as_bytes())?,
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let channel = Endpoint::from_shared(format!("https://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = ServerName::try_from("127.0.0.1")?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper_util::rt::TokioIo::new(tls))
            }
        }));
    Ok(AgentControlClient::new(channel))
}

/// Opens the configuration stream for `node` as the agent would: `Ok` once the operator accepts.
async fn watch(client: &mut AgentControlClient<Channel>, node: &str) -> Result<(), tonic::Status> {
    client
        .watch_config(WatchConfigRequest {
            node_name: node.into(),
            agent_version: "test".into(),
        })
        .await
        .map(|_| ())
}

/// Everything the status of a refused call says, source chain included.
fn refusal(status: &tonic::Status) -> String {
    let mut text = format!("{status}");
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        text.push_str(&format!(" / {s}"));
        source = s.source();
    }
    text
}

/// The value of one series in a Prometheus text exposition (`name{labels} value`).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn tls_operator(
    cp: &ControlPlane,
    name: &str,
    grpc: SocketAddr,
    volume: &SecretVolume,
) -> Result<Operator> {
    let args: Vec<String> = vec![
        "--tls-cert".into(),
        volume.path("tls.crt"),
        "--tls-key".into(),
        volume.path("tls.key"),
        "--tls-client-ca".into(),
        volume.path("ca.crt"),
        "--tls-reload-interval-ms".into(),
        "200".into(),
        "--tls-require-node-identity".into(),
    ];
    Operator::start_with_args(cp, name, grpc, &args).await
}

fn tls_agent_args(volume: &SecretVolume, grpc: SocketAddr) -> Vec<String> {
    vec![
        "--operator".into(),
        format!("https://{grpc}"),
        "--tls-cert".into(),
        volume.path("tls.crt"),
        "--tls-key".into(),
        volume.path("tls.key"),
        "--tls-ca".into(),
        volume.path("ca.crt"),
    ]
}

async fn monitor_ready(cp: &ControlPlane, node: &str) -> Result<()> {
    wait_for_object(
        cp,
        "the ApiMonitor Ready with capture attached by the TLS agent",
        ("apimonitor", "demo", "demo-api"),
        WAIT,
        |m| {
            let ready = condition(m, "Ready").is_some_and(|(s, _, _)| s == "True");
            let probes = m.pointer("/status/nodes/details/0/probesAttached")?.as_u64()?;
            (ready && probes == 2 && m.pointer("/status/nodes/details/0/node")? == node).then_some(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_need_a_certificate_from_the_client_ca() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    const NODE: &str = "mtls-node";
    let cp = ControlPlane::start_with_palisade_crds().await?;
    let kubelet = FakeKubelet::start(cp.client().await?, NODE).await?;

    let ca = Ca::new("palisade-test-ca")?;
    let (server_cert, server_key) = ca.server()?;
    let server = SecretVolume::create(
        cp.dir().join("operator-tls"),
        &[
            ("tls.crt", &server_cert),
            ("tls.key", &server_key),
            ("ca.crt", &ca.pem),
        ],
    )?;
    let agent_identity = ca.client(NODE)?;
    let agent_tls = SecretVolume::create(
        cp.dir().join("agent-tls"),
        &[
            ("tls.crt", &agent_identity.0),
            ("tls.key", &agent_identity.1),
            ("ca.crt", &ca.pem),
        ],
    )?;
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut operator = tls_operator(&cp, "operator", grpc, &server).await?;
    let args = tls_agent_args(&agent_tls, grpc);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = start_agent(&cp, &operator, NODE, "agent", &[], &args)?;

    cp.apply_samples()?;
    let _pod = palisade_e2e::palisade::start_demo_pod(&kubelet, "demo-api-0").await?;
    monitor_ready(&cp, NODE).await?;
    agent.ensure_running()?;
    let agent_log = log(agent.log_path());
    ensure!(agent_log.contains("connected to the operator"), "{agent_log}");

    // The operator's own endpoint: ready, and its metrics saw the reconciles and the agent.
    ensure!(http_request(operator.metrics, "GET", "/healthz", &[], "")? == 200);
    ensure!(http_request(operator.metrics, "GET", "/readyz", &[], "")? == 200);
    let metrics = http_get_body(operator.metrics, "/metrics")?;
    let reconciles = metric(
        &metrics,
        r#"palisade_operator_reconciles_total{kind="ApiMonitor",result="ok"}"#,
    );
    ensure!(
        reconciles.is_some_and(|n| n > 0.0),
        "no ApiMonitor reconcile counted:\n{metrics}"
    );
    ensure!(
        metric(&metrics, "palisade_operator_connected_agents") == Some(1.0),
        "not 1 connected agent:\n{metrics}"
    );
    ensure!(
        metric(
            &metrics,
            r#"palisade_operator_status_writes_total{resource="apimonitors"}"#
        )
        .is_some_and(|n| n > 0.0),
        "no status write counted:\n{metrics}"
    );
    ensure!(
        metric(
            &metrics,
            &format!(r#"palisade_operator_config_version{{node="{NODE}"}}"#)
        )
        .is_some_and(|v| v > 0.0),
        "no configuration version for {NODE}:\n{metrics}"
    );
    ensure!(
        metrics.contains(r#"palisade_operator_reconcile_duration_seconds_count{kind="ApiMonitor"}"#),
        "{metrics}"
    );

    // A client with a certificate of the client CA gets through (so the refusals below are
    // about certificates, not about this test client).
    let mut good = tls_client(grpc, &ca.pem, Some(&ca.client("client-node")?))?;
    watch(&mut good, "client-node")
        .await
        .map_err(|s| anyhow::anyhow!("a valid client was refused: {}", refusal(&s)))?;

    // No client certificate: the handshake fails. (With TLS 1.3 the client learns it when the
    // server closes the connection; the operator's log below says why.)
    let mut anonymous = tls_client(grpc, &ca.pem, None)?;
    let Err(status) = watch(&mut anonymous, NODE).await else {
        bail!("a client without a certificate was accepted");
    };
    let why = refusal(&status);
    ensure!(why.contains("transport error"), "not refused by TLS: {why}");

    // A certificate from another CA: refused too.
    let other = Ca::new("someone-else")?;
    let mut stranger = tls_client(grpc, &ca.pem, Some(&other.client(NODE)?))?;
    let Err(status) = watch(&mut stranger, NODE).await else {
        bail!("a client with a certificate of another CA was accepted");
    };
    let why = refusal(&status);
    ensure!(why.contains("transport error"), "not refused by TLS: {why}");

    // A valid certificate for another node cannot speak for this one.
    let mut impostor = tls_client(grpc, &ca.pem, Some(&ca.client("other-node")?))?;
    let Err(status) = watch(&mut impostor, NODE).await else {
        bail!("a certificate for other-node could watch {NODE}'s configuration");
    };
    ensure!(
        status.code() == tonic::Code::PermissionDenied,
        "unexpected refusal: {}",
        refusal(&status)
    );

    // Plaintext gRPC to the TLS port gets nowhere.
    let mut plain = AgentControlClient::new(
        Endpoint::from_shared(format!("http://{grpc}"))?
            .timeout(Duration::from_secs(5))
            .connect_lazy(),
    );
    ensure!(watch(&mut plain, NODE).await.is_err(), "plaintext accepted");

    // The operator says why it refused each handshake.
    operator.process.ensure_running()?;
    let operator_log = log(operator.process.log_path());
    ensure!(
        operator_log.contains("TLS handshake rejected") && operator_log.contains("no certificates"),
        "{operator_log}"
    );
    ensure!(operator_log.contains("UnknownIssuer"), "{operator_log}");
    let metrics = http_get_body(operator.metrics, "/metrics")?;
    let rejections = metric(&metrics, "palisade_operator_tls_handshake_rejections_total");
    ensure!(
        rejections.is_some_and(|n| n >= 2.0),
        "handshake rejections not counted:\n{metrics}"
    );
    drop(agent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_used_without_restart() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    const NODE: &str = "rotation-node";
    let cp = ControlPlane::start_with_palisade_crds().await?;
    let kubelet = FakeKubelet::start(cp.client().await?, NODE).await?;

    let old = Ca::new("palisade-ca-1")?;
    let (cert, key) = old.server()?;
    let mut server = SecretVolume::create(
        cp.dir().join("operator-tls"),
        &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &old.pem)],
    )?;
    let (cert, key) = old.client(NODE)?;
    let mut agent_tls = SecretVolume::create(
        cp.dir().join("agent-tls"),
        &[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &old.pem)],
    )?;
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let mut operator = tls_operator(&cp, "operator", grpc, &server).await?;
    let operator_pid = operator.process.pid();
    let args = tls_agent_args(&agent_tls, grpc);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = start_agent(&cp, &operator, NODE, "agent", &[], &args)?;
    cp.apply_samples()?;
    let _pod = palisade_e2e::palisade::start_demo_pod(&kubelet, "demo-api-0").await?;
    monitor_ready(&cp, NODE).await?;

    // Rotate the operator's certificate and client CA to a new CA, as a Secret update does.
    let new = Ca::new("palisade-ca-2")?;
    let (cert, key) = new.server()?;
    server.update(&[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &new.pem)])?;
    let new_client = new.client("client-node")?;
    let accepted = wait_for_async(Duration::from_secs(15), || async {
        let mut client = tls_client(grpc, &new.pem, Some(&new_client))?;
        Ok(watch(&mut client, "client-node").await.is_ok())
    })
    .await;
    accepted.with_context(|| {
        format!(
            "a client of the new CA was never accepted; operator log:\n{}",
            log(operator.process.log_path())
        )
    })?;
    operator.process.ensure_running()?;
    ensure!(
        operator.process.pid() == operator_pid,
        "the operator was restarted"
    );
    ensure!(
        log(operator.process.log_path()).contains("TLS certificates reloaded"),
        "no reload in the operator log"
    );
    // And the old CA is no longer trusted for new connections.
    let mut stale = tls_client(grpc, &old.pem, Some(&old.client("client-node")?))?;
    ensure!(
        watch(&mut stale, "client-node").await.is_err(),
        "a client of the old CA was still accepted after the rotation"
    );

    // The agent's side: its Secret is rotated too, and it keeps running. Its established
    // connection stays up; the next one (here: after an operator restart, which forces it)
    // must use the new files, since the operator no longer trusts the old CA.
    let (cert, key) = new.client(NODE)?;
    agent_tls.update(&[("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &new.pem)])?;
    let agent_pid = agent.pid();
    operator.process.kill();
    let connects_before = log(agent.log_path()).matches("connected to the operator").count();
    let mut operator = tls_operator(&cp, "operator-2", grpc, &server).await?;
    wait_for(WAIT, || {
        let connects = log(agent.log_path()).matches("connected to the operator").count();
        Ok((connects > connects_before).then_some(()))
    })
    .await
    .with_context(|| {
        format!(
            "the agent did not reconnect with its new certificate:\n{}",
            agent.log_tail(30)
        )
    })?;
    agent.ensure_running()?;
    ensure!(agent.pid() == agent_pid, "the agent was restarted");
    // It reports again through the new connection: the monitor is (still) Ready on the node.
    monitor_ready(&cp, NODE).await?;
    operator.process.ensure_running()?;
    Ok(())
}

/// Like [`wait_for`] for an async check that says `true` when done; 250 ms between tries.
async fn wait_for_async<F, Fut>(timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = std::time::Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
