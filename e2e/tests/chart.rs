//! The Helm chart (charts/palisade) against a real kube-apiserver, and the Argo CD health checks
//! (config/samples/argocd/argocd-cm.yaml) against real objects:
//! - the chart's CRDs are the generated ones, byte for byte, and so is the optional PolicyReport
//!   CRD in its files/, rendered only with `policyReport.installCRD`;
//! - `helm lint` passes, and what `helm template` renders is accepted by the API server
//!   (`kubectl apply --dry-run=server`);
//! - the values schema refuses bad values with the field named;
//! - mTLS is on by default: the certificates Helm generates chain to their CA, are for the
//!   operator's Service names and for client auth, load in rustls as the operator and agent load
//!   them, and are mounted and passed to both; with `tls.certManager.enabled` cert-manager
//!   resources replace them;
//! - the operator, run with nothing but a token of the chart's ServiceAccount, reconciles an
//!   ApiMonitor and an ApiPolicy, watches their OpenAPI ConfigMap and records Events, and is
//!   refused what the chart does not grant; with the PolicyReport CRD installed it writes a
//!   PolicyReport for the policy (get, create and patch on policyreports, granted unless
//!   `policyReport.enabled=false`);
//! - the Lua health checks say Healthy, Progressing and Degraded for objects in those states, and
//!   the operator never writes spec (Argo CD sees no drift).

use anyhow::{bail, ensure, Context, Result};
use palisade_e2e::argocd::assert_health;
use palisade_e2e::palisade::{
    condition, demo_api_command, http_request, start_agent, wait_for_object, Operator,
};
use palisade_e2e::{workspace_root, ControlPlane, FakeKubelet, PodLaunch};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const NODE: &str = "palisade-chart-node";
const NAMESPACE: &str = "palisade-system";
const RELEASE: &str = "palisade";
const OPERATOR_SA: &str = "palisade-operator";
const WAIT: Duration = Duration::from_secs(45);

fn chart_dir() -> PathBuf {
    workspace_root().join("charts/palisade")
}

/// helm, built by hack/build-control-plane.sh beside kubectl. Missing helm fails the test: CI
/// builds it.
async fn helm_bin() -> Result<PathBuf> {
    let helm = palisade_e2e::control_plane::bin_dir().await?.join("helm");
    ensure!(
        helm.is_file(),
        "{} is missing: hack/build-control-plane.sh builds it",
        helm.display()
    );
    Ok(helm)
}

fn run(program: &Path, args: &[&str]) -> Result<Output> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", program.display()))
}

fn run_ok(program: &Path, args: &[&str]) -> Result<String> {
    let out = run(program, args)?;
    palisade_e2e::process::check_output(&format!("{} {}", program.display(), args.join(" ")), &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `helm template` of the chart in `NAMESPACE` with extra arguments (`--set ...`, `-f ...`).
async fn render(extra: &[&str]) -> Result<String> {
    let chart = chart_dir().display().to_string();
    let mut args = vec!["template", RELEASE, &chart, "--namespace", NAMESPACE];
    args.extend_from_slice(extra);
    run_ok(&helm_bin().await?, &args)
}

/// The YAML documents of a rendered chart, parsed.
fn documents(rendered: &str) -> Result<Vec<serde_yaml::Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(rendered) {
        let value = serde_yaml::Value::deserialize(doc).context("parsing rendered YAML")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn kind_of(doc: &serde_yaml::Value) -> &str {
    doc.get("kind").and_then(|k| k.as_str()).unwrap_or_default()
}

fn file_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = palisade_e2e::control_plane::yaml_files(dir)?
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Ok(names)
}

/// A rendered Secret's `data` field, base64-decoded.
fn secret_file(doc: &serde_yaml::Value, key: &str) -> Result<Vec<u8>> {
    use base64::Engine;
    let encoded = doc["data"][key]
        .as_str()
        .with_context(|| format!("no data.{key} in {doc:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.decode(encoded)?)
}

fn named<'a>(docs: &'a [serde_yaml::Value], kind: &str, name: &str) -> Result<&'a serde_yaml::Value> {
    docs.iter()
        .find(|d| kind_of(d) == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} rendered"))
}

fn container_args(doc: &serde_yaml::Value) -> Vec<String> {
    doc["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_is_on_by_default_with_certificates_that_work() -> Result<()> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    let docs = documents(&render(&[]).await?)?;
    let operator_secret = named(&docs, "Secret", "palisade-operator-tls")?;
    let agent_secret = named(&docs, "Secret", "palisade-agent-tls")?;
    let ca = secret_file(operator_secret, "ca.crt")?;
    ensure!(ca == secret_file(agent_secret, "ca.crt")?, "one CA for both");
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(&ca)?)?;
    let roots = std::sync::Arc::new(roots);

    // The operator's certificate and key make a rustls server configuration (the key matches),
    // and a client that trusts the CA accepts it for the Service's DNS name.
    let server_cert = CertificateDer::from_pem_slice(&secret_file(operator_secret, "tls.crt")?)?;
    let server_key = PrivateKeyDer::from_pem_slice(&secret_file(operator_secret, "tls.key")?)?;
    let client_verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()?;
    rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(client_verifier.clone())
        .with_single_cert(vec![server_cert.clone()], server_key)?;
    let server_verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()?;
    server_verifier.verify_server_cert(
        &server_cert,
        &[],
        &ServerName::try_from(format!("palisade-operator.{NAMESPACE}.svc"))?,
        &[],
        UnixTime::now(),
    )?;

    // The agents' certificate passes the operator's client verification.
    let client_cert = CertificateDer::from_pem_slice(&secret_file(agent_secret, "tls.crt")?)?;
    PrivateKeyDer::from_pem_slice(&secret_file(agent_secret, "tls.key")?)?;
    client_verifier.verify_client_cert(&client_cert, &[], UnixTime::now())?;
    // ...and a certificate of another CA does not (the check is not vacuous).
    ensure!(
        client_verifier
            .verify_client_cert(&server_cert_of_another_ca()?, &[], UnixTime::now())
            .is_err(),
        "a foreign certificate passed"
    );

    // Mounted and passed: the operator requires client certificates, the agents use https.
    let operator = named(&docs, "Deployment", "palisade-operator")?;
    let args = container_args(operator);
    for flag in [
        "--tls-cert=",
        "--tls-key=",
        "--tls-client-ca=",
        "--metrics-listen=",
    ] {
        ensure!(
            args.iter().any(|a| a.starts_with(flag)),
            "operator lacks {flag}: {args:?}"
        );
    }
    ensure!(
        operator["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"] == "palisade-operator-tls",
        "{operator:?}"
    );
    let probe = &operator["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"];
    ensure!(probe["path"] == "/readyz", "{probe:?}");
    let agent = named(&docs, "DaemonSet", "palisade-agent")?;
    let args = container_args(agent);
    ensure!(
        args.iter()
            .any(|a| a.starts_with("--operator=https://palisade-operator.")),
        "{args:?}"
    );
    for flag in ["--tls-cert=", "--tls-key=", "--tls-ca="] {
        ensure!(
            args.iter().any(|a| a.starts_with(flag)),
            "agent lacks {flag}: {args:?}"
        );
    }

    // cert-manager instead of Helm: Certificates for the same Secrets, no generated Secret.
    let docs = documents(&render(&["--set", "tls.certManager.enabled=true"]).await?)?;
    ensure!(
        !docs.iter().any(|d| kind_of(d) == "Secret"),
        "Helm still generated Secrets"
    );
    let certificate = named(&docs, "Certificate", "palisade-operator-tls")?;
    ensure!(certificate["spec"]["secretName"] == "palisade-operator-tls");
    let certificate = named(&docs, "Certificate", "palisade-agent-tls")?;
    ensure!(
        certificate["spec"]["usages"][2] == "client auth",
        "{certificate:?}"
    );
    named(&docs, "Issuer", "palisade-ca")?;

    // Plaintext only when asked for.
    let docs = documents(&render(&["--set", "tls.enabled=false"]).await?)?;
    let args = container_args(named(&docs, "DaemonSet", "palisade-agent")?);
    ensure!(
        args.iter().any(|a| a.starts_with("--operator=http://")),
        "{args:?}"
    );
    ensure!(!docs
        .iter()
        .any(|d| kind_of(d) == "Secret" || kind_of(d) == "Certificate"));
    Ok(())
}

/// A client certificate from a CA the chart never saw.
fn server_cert_of_another_ca() -> Result<rustls_pki_types::CertificateDer<'static>> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate()?;
    params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(params, ca_key);
    let mut leaf = rcgen::CertificateParams::new(vec!["palisade-agent".to_string()])?;
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate()?;
    Ok(leaf.signed_by(&key, &issuer)?.der().clone())
}

#[test]
fn chart_crds_are_the_generated_ones_byte_for_byte() -> Result<()> {
    let generated = workspace_root().join("crds");
    let in_chart = chart_dir().join("crds");
    let names = file_names(&generated)?;
    ensure!(!names.is_empty(), "no CRDs in {}", generated.display());
    assert_eq!(
        file_names(&in_chart)?,
        names,
        "charts/palisade/crds/ holds other files than crds/: run hack/sync-chart-crds.sh"
    );
    for name in &names {
        let a = std::fs::read(generated.join(name))?;
        let b = std::fs::read(in_chart.join(name))?;
        assert!(
            a == b,
            "charts/palisade/crds/{name} differs from crds/{name}: run hack/sync-chart-crds.sh"
        );
    }
    // The optional CRDs (kinds Palisade writes but does not own), in files/ for a template.
    let optional = generated.join("optional");
    let in_files = chart_dir().join("files");
    let names = file_names(&optional)?;
    ensure!(!names.is_empty(), "no CRDs in {}", optional.display());
    assert_eq!(
        file_names(&in_files)?,
        names,
        "charts/palisade/files/ holds other files than crds/optional/: run hack/sync-chart-crds.sh"
    );
    for name in &names {
        let a = std::fs::read(optional.join(name))?;
        let b = std::fs::read(in_files.join(name))?;
        assert!(
            a == b,
            "charts/palisade/files/{name} differs from crds/optional/{name}: run hack/sync-chart-crds.sh"
        );
    }
    Ok(())
}

/// The rules of the operator's ClusterRole that name `group`.
fn operator_rules_for(docs: &[serde_yaml::Value], group: &str) -> Result<Vec<serde_yaml::Value>> {
    let role = named(docs, "ClusterRole", OPERATOR_SA)?;
    Ok(role["rules"]
        .as_sequence()
        .context("ClusterRole rules")?
        .iter()
        .filter(|r| {
            r["apiGroups"]
                .as_sequence()
                .is_some_and(|g| g.iter().any(|g| g.as_str() == Some(group)))
        })
        .cloned()
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reports_follow_the_values() -> Result<()> {
    palisade_e2e::init_tracing();
    let crd_of = |docs: &[serde_yaml::Value]| {
        docs.iter()
            .filter(|d| kind_of(d) == "CustomResourceDefinition")
            .cloned()
            .collect::<Vec<_>>()
    };
    let operator_args = |docs: &[serde_yaml::Value]| -> Result<String> {
        let deployment = named(docs, "Deployment", OPERATOR_SA)?;
        Ok(serde_yaml::to_string(
            &deployment["spec"]["template"]["spec"]["containers"][0]["args"],
        )?)
    };

    // Defaults: reports on (when the CRD exists), RBAC for them, no CRD installed.
    let docs = documents(&render(&[]).await?)?;
    assert!(crd_of(&docs).is_empty(), "a CRD rendered by default");
    assert!(operator_args(&docs)?.contains("--policy-reports=true"));
    let rules = operator_rules_for(&docs, "wgpolicyk8s.io")?;
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        serde_yaml::to_string(&rules[0]["resources"])?.trim(),
        "- policyreports"
    );
    assert_eq!(
        serde_yaml::to_string(&rules[0]["verbs"])?.trim(),
        "- get\n- create\n- patch"
    );

    // installCRD: the generated CRD, as is, kept on uninstall.
    let docs = documents(&render(&["--set", "policyReport.installCRD=true"]).await?)?;
    let crds = crd_of(&docs);
    assert_eq!(crds.len(), 1);
    let generated: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(
        workspace_root().join("crds/optional/policyreports.wgpolicyk8s.io.yaml"),
    )?)?;
    assert_eq!(crds[0], generated);
    assert_eq!(
        crds[0]["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );

    // Off: no reports, no RBAC on them.
    let docs = documents(&render(&["--set", "policyReport.enabled=false"]).await?)?;
    assert!(operator_args(&docs)?.contains("--policy-reports=false"));
    assert!(operator_rules_for(&docs, "wgpolicyk8s.io")?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lint_and_server_side_dry_run_of_the_rendered_chart() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let helm = helm_bin().await?;
    let chart = chart_dir().display().to_string();
    let all_on = [
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "operator.clusterCidrs={10.244.0.0/16}",
    ];
    let lint = run_ok(&helm, &["lint", "--strict", &chart])?;
    assert!(lint.contains("1 chart(s) linted, 0 chart(s) failed"), "{lint}");
    let mut lint_args = vec!["lint", "--strict", &chart];
    lint_args.extend_from_slice(&all_on);
    run_ok(&helm, &lint_args)?;

    // A package carries real copies of the CRDs (a symlink out of the chart would not be packaged).
    let out_dir = tempfile::tempdir()?;
    let dest = out_dir.path().display().to_string();
    run_ok(&helm, &["package", &chart, "--destination", &dest])?;
    let packaged = std::fs::read_dir(out_dir.path())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .context("helm package wrote no .tgz")?;
    let listing = run_ok(Path::new("tar"), &["tzf", &packaged.display().to_string()])?;
    for name in file_names(&workspace_root().join("crds"))? {
        assert!(
            listing.contains(&format!("palisade/crds/{name}")),
            "{name} not packaged:\n{listing}"
        );
    }

    let cp = ControlPlane::start().await?;
    // CRDs first, as helm installs them before the templates.
    cp.apply_crds(&chart_dir().join("crds")).await?;
    cp.kubectl_ok(&["create", "namespace", NAMESPACE])?;

    let policy_report_crd = ["--set", "policyReport.installCRD=true"];
    for (what, extra) in [
        ("defaults", &[][..]),
        ("network policies on", &all_on[2..]),
        ("PolicyReport CRD installed", &policy_report_crd[..]),
    ] {
        let rendered = render(extra).await?;
        let file = cp.dir().join(format!("rendered-{}.yaml", what.replace(' ', "-")));
        std::fs::write(&file, &rendered)?;
        let out = cp.kubectl_ok(&["apply", "--dry-run=server", "-f", &file.display().to_string()])?;
        println!("{what}:\n{out}");
        let kinds: Vec<String> = documents(&rendered)?
            .iter()
            .map(|d| kind_of(d).to_string())
            .collect();
        for kind in [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "DaemonSet",
            "Service",
            "PodDisruptionBudget",
        ] {
            assert!(
                kinds.iter().any(|k| k == kind),
                "{what}: no {kind} rendered: {kinds:?}"
            );
        }
        assert_eq!(
            out.matches("(server dry run)").count(),
            kinds.len(),
            "{what}: every object accepted by the API server"
        );
        assert_eq!(
            kinds.iter().any(|k| k == "NetworkPolicy"),
            what == "network policies on",
            "NetworkPolicies only when enabled"
        );
        assert_eq!(
            kinds.iter().any(|k| k == "CustomResourceDefinition"),
            what == "PolicyReport CRD installed",
            "the PolicyReport CRD only when asked for"
        );
    }
    // A ServiceMonitor needs the Prometheus Operator's CRDs, which this API server lacks: check
    // that it renders, not that it applies.
    let with_monitor = render(&all_on[..2]).await?;
    let monitor = documents(&with_monitor)?
        .into_iter()
        .find(|d| kind_of(d) == "ServiceMonitor")
        .context("no ServiceMonitor rendered with serviceMonitor.enabled=true")?;
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_values_schema_refuses_bad_values_and_names_the_field() -> Result<()> {
    palisade_e2e::init_tracing();
    let helm = helm_bin().await?;
    let chart = chart_dir().display().to_string();
    let dir = tempfile::tempdir()?;
    let cases: [(&str, &str, &[&str]); 5] = [
        (
            "wrong type",
            "agent:\n  resources: lots\n",
            &["at '/agent/resources'", "got string, want object"],
        ),
        (
            "unknown key (a typo)",
            "agent:\n  resorces: {}\n",
            &["at '/agent'", "additional properties 'resorces' not allowed"],
        ),
        (
            "out of range",
            "operator:\n  grpcPort: 70000\n",
            &["at '/operator/grpcPort'", "maximum"],
        ),
        (
            "capability not on the list",
            "agent:\n  capabilities: [SYS_MODULE]\n",
            &["at '/agent/capabilities/0'", "value must be one of 'BPF'"],
        ),
        (
            "unknown top-level key",
            "replicas: 2\n",
            &["additional properties 'replicas' not allowed"],
        ),
    ];
    for (what, values, expected) in cases {
        let file = dir.path().join("values.yaml");
        std::fs::write(&file, values)?;
        let file = file.display().to_string();
        let out = run(&helm, &["template", RELEASE, &chart, "-f", &file])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{what}:\n{stderr}");
        assert!(!out.status.success(), "{what}: helm accepted\n{values}");
        assert!(
            stderr.contains("values don't meet the specifications of the schema"),
            "{what}: {stderr}"
        );
        for needle in expected {
            assert!(stderr.contains(needle), "{what}: {needle:?} not in:\n{stderr}");
        }
    }
    // And good values pass (the schema is not simply refusing everything).
    let file = dir.path().join("good.yaml");
    std::fs::write(
        &file,
        "agent:\n  capabilities: [BPF, PERFMON, NET_ADMIN]\n  resources:\n    limits:\n      memory: 2Gi\n\
         operator:\n  clusterCidrs: [10.244.0.0/16, fd00::/48]\n",
    )?;
    run_ok(
        &helm,
        &["template", RELEASE, &chart, "-f", &file.display().to_string()],
    )?;
    Ok(())
}

/// A kubeconfig for the API server of `cp` that authenticates with `token` only.
fn token_kubeconfig(cp: &ControlPlane, token: &str, path: &Path) -> Result<()> {
    let ca = cp.ca_cert_path().context("the control plane has no CA")?;
    let yaml = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: chart
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {OPERATOR_SA}
  user:
    token: {token}
contexts:
- name: chart
  context:
    cluster: chart
    user: {OPERATOR_SA}
current-context: chart
",
        server = cp.server_url(),
        ca = ca.display(),
    );
    std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
}

/// Runs kubectl as the operator's ServiceAccount.
fn kubectl_as(cp: &ControlPlane, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
    Command::new(cp.kubectl_bin())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .output()
        .context("running kubectl")
}

/// `metadata.generation` and `spec` of an object: what Argo CD compares.
fn desired(obj: &serde_json::Value) -> (serde_json::Value, serde_json::Value) {
    (obj["metadata"]["generation"].clone(), obj["spec"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_works_with_the_charts_privileges_and_no_more() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let cp = ControlPlane::start().await?;
    cp.apply_crds(&chart_dir().join("crds")).await?;
    // As `policyReport.installCRD=true` (or Kyverno) would have.
    cp.apply_crds(&chart_dir().join("files")).await?;
    let client = cp.client().await?;
    let kubelet = FakeKubelet::start(client.clone(), NODE).await?;
    cp.kubectl_ok(&["create", "namespace", NAMESPACE])?;

    // The chart's identities and RBAC, as rendered, for real.
    let rendered = render(&[]).await?;
    let rbac: Vec<String> = documents(&rendered)?
        .into_iter()
        .filter(|d| {
            matches!(
                kind_of(d),
                "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
            )
        })
        .map(|d| serde_yaml::to_string(&d))
        .collect::<Result<_, _>>()?;
    ensure!(
        rbac.len() >= 4,
        "expected 2 ServiceAccounts, a ClusterRole and its binding: {rbac:?}"
    );
    println!("{}", cp.apply_yaml(&rbac.join("---\n"))?);

    let token = cp.kubectl_ok(&["create", "token", OPERATOR_SA, "-n", NAMESPACE, "--duration=1h"])?;
    let kubeconfig = cp.dir().join("operator-sa.kubeconfig");
    token_kubeconfig(&cp, token.trim(), &kubeconfig)?;
    let whoami = String::from_utf8_lossy(
        &kubectl_as(
            &cp,
            &kubeconfig,
            &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
        )?
        .stdout,
    )
    .into_owned();
    assert_eq!(whoami, format!("system:serviceaccount:{NAMESPACE}:{OPERATOR_SA}"));

    // What the chart does not grant is refused, by the API server itself.
    let secrets = kubectl_as(&cp, &kubeconfig, &["get", "secrets", "-A"])?;
    let stderr = String::from_utf8_lossy(&secrets.stderr);
    assert!(!secrets.status.success(), "listing secrets was allowed");
    assert!(
        stderr.contains("Forbidden") && stderr.contains("cannot list resource \"secrets\""),
        "{stderr}"
    );
    let delete = kubectl_as(
        &cp,
        &kubeconfig,
        &["delete", "namespace", NAMESPACE, "--wait=false"],
    )?;
    let stderr = String::from_utf8_lossy(&delete.stderr);
    assert!(!delete.status.success(), "deleting a namespace was allowed");
    assert!(
        stderr.contains("Forbidden") && stderr.contains("cannot delete resource \"namespaces\""),
        "{stderr}"
    );
    // SelfSubjectAccessReviews name group, resource and subresource exactly (kubectl auth can-i
    // resolves names through discovery, which does not know apiisolations before its CRD).
    for (verb, group, resource, subresource, allowed) in [
        ("list", "", "pods", "", true),
        ("watch", "", "nodes", "", true),
        ("watch", "", "configmaps", "", true),
        ("patch", "palisade.dev", "apipolicies", "status", true),
        ("patch", "palisade.dev", "apiisolations", "status", true),
        ("watch", "palisade.dev", "apiisolations", "", true),
        ("create", "events.k8s.io", "events", "", true),
        ("get", "wgpolicyk8s.io", "policyreports", "", true),
        ("create", "wgpolicyk8s.io", "policyreports", "", true),
        ("patch", "wgpolicyk8s.io", "policyreports", "", true),
        ("list", "wgpolicyk8s.io", "policyreports", "", false),
        ("delete", "wgpolicyk8s.io", "policyreports", "", false),
        ("update", "palisade.dev", "apipolicies", "", false),
        ("patch", "palisade.dev", "apimonitors", "", false),
        ("update", "palisade.dev", "apimonitors", "status", false),
        ("get", "", "secrets", "", false),
        ("create", "", "pods", "", false),
        ("delete", "", "pods", "", false),
        ("create", "", "serviceaccounts", "token", false),
    ] {
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {
                "verb": verb, "group": group, "resource": resource, "subresource": subresource,
            }},
        });
        let file = cp.dir().join("access-review.json");
        std::fs::write(&file, review.to_string())?;
        let out = kubectl_as(
            &cp,
            &kubeconfig,
            &[
                "create",
                "--validate=false",
                "-f",
                &file.display().to_string(),
                "-o",
                "json",
            ],
        )?;
        palisade_e2e::process::check_output("kubectl create selfsubjectaccessreview", &out)?;
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(
            answer["status"]["allowed"].as_bool(),
            Some(allowed),
            "may the operator {verb} {resource}/{subresource} in {group:?}? {answer}"
        );
    }

    // The real operator, with that token only, and an agent.
    let operator = Operator::start_with_kubeconfig(&cp, "operator", &kubeconfig).await?;
    let _agent = start_agent(&cp, &operator, NODE, "agent", &[], &[])?;

    let samples = workspace_root().join("config/samples");
    let mut created = BTreeMap::new();
    for file in [
        "00-namespace.yaml",
        "01-demo-api-openapi.yaml",
        "apimonitor.yaml",
        "apipolicy.yaml",
    ] {
        let path = samples.join(file).display().to_string();
        let out = cp.kubectl_ok(&["create", "-f", &path, "-o", "json"])?;
        let obj: serde_json::Value = serde_json::from_str(&out)?;
        // Fresh from the API server, before the operator wrote anything: Progressing.
        if let Some(kind @ ("ApiMonitor" | "ApiPolicy")) = obj["kind"].as_str() {
            assert_health(kind, &obj, "Progressing")?;
            created.insert(kind.to_string(), desired(&obj));
        }
    }
    let pod = kubelet
        .start_pod(PodLaunch {
            namespace: "demo".into(),
            name: "demo-api-0".into(),
            labels: BTreeMap::from([("app".to_string(), "demo-api".to_string())]),
            command: demo_api_command(8080),
            port: 8080,
        })
        .await?;

    // Reconciled: Ready, and not Degraded (the OpenAPI ConfigMap was read through its watch).
    let monitor = wait_for_object(
        &cp,
        "the ApiMonitor Ready and not Degraded",
        ("apimonitor", "demo", "demo-api"),
        WAIT,
        |m| {
            let ready = condition(m, "Ready").is_some_and(|(s, _, _)| s == "True");
            let degraded = condition(m, "Degraded").is_some_and(|(s, _, _)| s == "True");
            let generation = m.pointer("/metadata/generation")?;
            (ready && !degraded && m.pointer("/status/observedGeneration")? == generation).then(|| m.clone())
        },
    )
    .await?;
    palisade_e2e::palisade::wait_policy_ready(&cp, "demo", "demo-api-guard").await?;

    // An attack: a finding in status and an Event (the Recorder's create is granted).
    let status = http_request(pod.addr(8080), "GET", "/files/%2e%2e/%2e%2e/etc/hosts", &[], "")?;
    assert!(status >= 400, "{status}");
    let policy = wait_for_object(
        &cp,
        "a finding in the ApiPolicy status",
        ("apipolicy", "demo", "demo-api-guard"),
        WAIT,
        |p| (p.pointer("/status/findings/total")?.as_u64()? > 0).then(|| p.clone()),
    )
    .await?;
    palisade_e2e::palisade::wait_for(WAIT, || {
        let out = cp.kubectl_ok(&["get", "events.events.k8s.io", "-n", "demo", "-o", "json"])?;
        Ok(out.contains("AttackDetected").then_some(()))
    })
    .await
    .context("waiting for the AttackDetected Event")?;
    // And a PolicyReport (the chart's get, create and patch on policyreports suffice).
    wait_for_object(
        &cp,
        "a fail result in the PolicyReport",
        ("policyreport", "demo", "palisade-demo-api-guard"),
        WAIT,
        |r| {
            let result = &r.pointer("/results")?.as_array()?.first()?.clone();
            (r.pointer("/summary/fail")?.as_u64()? == 1
                && result["rule"] == "path-traversal"
                && result["resources"][0]["name"] == "demo-api-0")
                .then_some(())
        },
    )
    .await?;
    let log = std::fs::read_to_string(operator.process.log_path())?;
    for refused in ["forbidden", "Forbidden"] {
        ensure!(
            !log.contains(refused),
            "the operator was refused something:\n{}",
            operator.process.log_tail(40)
        );
    }

    // Argo CD: Healthy, and no drift (the operator never writes spec or bumps the generation).
    let message = assert_health("ApiMonitor", &monitor, "Healthy")?;
    assert!(!message.is_empty());
    assert_health("ApiPolicy", &policy, "Healthy")?;
    for (kind, name) in [("ApiMonitor", "demo-api"), ("ApiPolicy", "demo-api-guard")] {
        let now = cp.kubectl_ok(&[
            "get",
            kind,
            name,
            "-n",
            "demo",
            "-o",
            "json",
            "--show-managed-fields",
        ])?;
        let now: serde_json::Value = serde_json::from_str(&now)?;
        assert_eq!(
            &desired(&now),
            &created[kind],
            "{kind} spec or generation changed after reconcile"
        );
        // Only status is written by anything but kubectl.
        for entry in now["metadata"]["managedFields"]
            .as_array()
            .context("managedFields")?
        {
            let manager = entry["manager"].as_str().unwrap_or_default();
            if !manager.starts_with("kubectl") {
                assert_eq!(
                    entry["subresource"], "status",
                    "{kind}: {manager} wrote more than status: {entry}"
                );
            }
        }
    }

    // A spec change the operator has not observed yet: Progressing (the object as the patch
    // returns it, status still of generation 1).
    let patched = cp.kubectl_ok(&[
        "patch",
        "apipolicy",
        "demo-api-guard",
        "-n",
        "demo",
        "--type=merge",
        "-p",
        r#"{"spec":{"limits":{"eventsPerMinute":6}}}"#,
        "-o",
        "json",
    ])?;
    let patched: serde_json::Value = serde_json::from_str(&patched)?;
    ensure!(patched["metadata"]["generation"] == 2, "{patched}");
    if patched["status"]["observedGeneration"] == 1 {
        let message = assert_health("ApiPolicy", &patched, "Progressing")?;
        assert!(message.contains("generation 2"), "{message}");
    } else {
        bail!(
            "the operator observed generation 2 before the patch returned: {}",
            patched["status"]
        );
    }

    // A policy whose monitor does not exist: Degraded (MonitorNotFound), from the real operator.
    let broken = cp.apply_yaml(
        "apiVersion: palisade.dev/v1alpha1
kind: ApiPolicy
metadata:
  name: orphan
  namespace: demo
spec:
  monitors: [no-such-monitor]
  rules:
    - name: traversal
      detector: pathTraversal
",
    )?;
    println!("{broken}");
    let orphan = wait_for_object(
        &cp,
        "the orphan ApiPolicy Degraded",
        ("apipolicy", "demo", "orphan"),
        WAIT,
        |p| {
            condition(p, "Degraded")
                .filter(|(s, _, _)| s == "True")
                .map(|_| p.clone())
        },
    )
    .await?;
    let message = assert_health("ApiPolicy", &orphan, "Degraded")?;
    assert!(
        message.starts_with("MonitorNotFound") && message.contains("no-such-monitor"),
        "{message}"
    );
    Ok(())
}
