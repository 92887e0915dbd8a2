//! The control plane's PKI, made with the `openssl` CLI: a CA, the apiserver's serving
//! certificate (127.0.0.1 and localhost), an admin client certificate (O=system:masters) and
//! the service-account signing key. All keys are ECDSA P-256 in PKCS#8 PEM.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::process::run_checked;

/// Paths of the generated files (all inside one directory).
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
}

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = palisade-e2e
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,IP:10.0.0.1
authorityKeyIdentifier = keyid
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
";

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

fn gen_key(path: &Path) -> Result<()> {
    run_checked(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            path_str(path)?,
        ],
    )
    .with_context(|| format!("generating key {}", path.display()))?;
    Ok(())
}

/// Issues a certificate for `key` signed by the CA, with the named extension section.
fn issue(
    dir: &Path,
    name: &str,
    subject: &str,
    ext: &str,
    pki: &Pki,
    cfg: &Path,
) -> Result<(PathBuf, PathBuf)> {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let cert = dir.join(format!("{name}.crt"));
    gen_key(&key)?;
    run_checked(
        "openssl",
        &[
            "req",
            "-new",
            "-config",
            path_str(cfg)?,
            "-key",
            path_str(&key)?,
            "-subj",
            subject,
            "-out",
            path_str(&csr)?,
        ],
    )
    .with_context(|| format!("making the {name} certificate request"))?;
    run_checked(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            path_str(&csr)?,
            "-CA",
            path_str(&pki.ca_cert)?,
            "-CAkey",
            path_str(&pki.ca_key)?,
            "-CAcreateserial",
            "-days",
            "7",
            "-sha256",
            "-extfile",
            path_str(cfg)?,
            "-extensions",
            ext,
            "-out",
            path_str(&cert)?,
        ],
    )
    .with_context(|| format!("signing the {name} certificate"))?;
    Ok((cert, key))
}

/// Generates the whole PKI into `dir` (which must exist).
pub fn generate(dir: &Path) -> Result<Pki> {
    let cfg = dir.join("openssl.cnf");
    std::fs::write(&cfg, OPENSSL_CONFIG).with_context(|| format!("writing {}", cfg.display()))?;
    let mut pki = Pki {
        ca_cert: dir.join("ca.crt"),
        ca_key: dir.join("ca.key"),
        serving_cert: PathBuf::new(),
        serving_key: PathBuf::new(),
        admin_cert: PathBuf::new(),
        admin_key: PathBuf::new(),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
    };
    gen_key(&pki.ca_key)?;
    run_checked(
        "openssl",
        &[
            "req",
            "-x509",
            "-new",
            "-config",
            path_str(&cfg)?,
            "-extensions",
            "ca_ext",
            "-key",
            path_str(&pki.ca_key)?,
            "-subj",
            "/CN=palisade-e2e-ca",
            "-days",
            "7",
            "-sha256",
            "-out",
            path_str(&pki.ca_cert)?,
        ],
    )
    .context("making the CA certificate")?;
    let (c, k) = issue(dir, "apiserver", "/CN=kube-apiserver", "server_ext", &pki, &cfg)?;
    pki.serving_cert = c;
    pki.serving_key = k;
    let (c, k) = issue(
        dir,
        "admin",
        "/O=system:masters/CN=palisade-e2e-admin",
        "client_ext",
        &pki,
        &cfg,
    )?;
    pki.admin_cert = c;
    pki.admin_key = k;
    gen_key(&pki.sa_key)?;
    run_checked(
        "openssl",
        &[
            "pkey",
            "-in",
            path_str(&pki.sa_key)?,
            "-pubout",
            "-out",
            path_str(&pki.sa_pub)?,
        ],
    )
    .context("extracting the service-account public key")?;
    Ok(pki)
}
