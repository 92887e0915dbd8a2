//! The benchmark's server: Debian's nginx, one worker, hello world on 8080 (or HTTPS on 8443 with
//! a self-signed certificate; or a static JSON body of a given size, `--body-bytes`), with every
//! path it writes (pid, error log, temp dirs, key and certificate, the body) inside a directory of
//! its own.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// The port the benchmark's nginx listens on for plain HTTP.
pub const PORT: u16 = 8080;
/// The port it listens on for HTTPS (`--tls`).
pub const TLS_PORT: u16 = 8443;

/// Plain HTTP on [`PORT`] or HTTPS on [`TLS_PORT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    /// TLS 1.3 only.
    Https,
    /// TLS 1.2 only (`palisade-bench --tls --tls12`).
    Https12,
}

impl Scheme {
    pub fn port(self) -> u16 {
        match self {
            Scheme::Http => PORT,
            Scheme::Https | Scheme::Https12 => TLS_PORT,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https | Scheme::Https12 => "https",
        }
    }
}

/// The file `GET /` returns when a body size is given.
const BODY_FILE: &str = "body.json";

/// Writes `<dir>/nginx.conf` (and for HTTPS a fresh self-signed certificate; with `body_bytes`,
/// `<dir>/body.json` of exactly that size, which `GET /` then returns) and returns the pod
/// command that runs nginx with it.
pub fn prepare(dir: &Path, scheme: Scheme, body_bytes: Option<u64>) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if scheme != Scheme::Http {
        self_signed_certificate(dir)?;
    }
    if let Some(size) = body_bytes {
        let path = dir.join(BODY_FILE);
        std::fs::write(&path, json_body(size)).with_context(|| format!("writing {}", path.display()))?;
    }
    let compiled = std::process::Command::new("nginx")
        .arg("-V")
        .output()
        .context("running `nginx -V` (install Debian's nginx-light: bash hack/bench-overhead.sh does)")?;
    let options = String::from_utf8_lossy(&compiled.stderr).into_owned();
    let conf = config(dir, &options, scheme, body_bytes.is_some());
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    Ok(vec![
        "nginx".into(),
        "-p".into(),
        dir.display().to_string(),
        "-e".into(),
        dir.join("error.log").display().to_string(),
        "-c".into(),
        path.display().to_string(),
    ])
}

/// `<dir>/tls.crt` and `<dir>/tls.key`: an ECDSA P-256 key (handshakes cost less CPU than with
/// RSA, so the few per wrk run weigh nothing next to the requests) and a one-day certificate.
fn self_signed_certificate(dir: &Path) -> Result<()> {
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=palisade-bench",
        ])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .arg("-keyout")
        .arg(dir.join("tls.key"))
        .arg("-out")
        .arg(dir.join("tls.crt"))
        .output()
        .context("running `openssl req` (Debian package openssl)")?;
    if !out.status.success() {
        bail!("openssl req failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A JSON array of `size` bytes (at least 2): an API's list response, items like
/// `{"id":17,"name":"item-17","price":17.25,"tags":["a","b"]}`, padded with spaces to the exact
/// size (whitespace is valid JSON).
pub fn json_body(size: u64) -> Vec<u8> {
    let size = size.max(2) as usize;
    let mut out = Vec::with_capacity(size);
    out.push(b'[');
    for id in 0.. {
        let item = format!(
            "{}{{\"id\":{id},\"name\":\"item-{id}\",\"price\":{id}.25,\"tags\":[\"a\",\"b\"]}}",
            if id == 0 { "" } else { "," }
        );
        if out.len() + item.len() + 1 > size {
            break;
        }
        out.extend_from_slice(item.as_bytes());
    }
    out.resize(size - 1, b' ');
    out.push(b']');
    out
}

/// The configuration. `compiled` is `nginx -V`'s output: temp paths are set only for the
/// modules this nginx has. `body`: `GET /` returns `<dir>/body.json` (sendfile) instead of hello.
fn config(dir: &Path, compiled: &str, scheme: Scheme, body: bool) -> String {
    let d = dir.display();
    let listen = match scheme {
        Scheme::Http => format!("listen {PORT};"),
        Scheme::Https | Scheme::Https12 => format!(
            "listen {TLS_PORT} ssl;\n            ssl_certificate {d}/tls.crt;\n            \
             ssl_certificate_key {d}/tls.key;\n            ssl_protocols {};",
            if scheme == Scheme::Https {
                "TLSv1.3"
            } else {
                "TLSv1.2"
            }
        ),
    };
    let location = if body {
        format!(
            "location = / {{\n                root {d};\n                default_type application/json;\n                \
             try_files /{BODY_FILE} =404;\n            }}"
        )
    } else {
        "location / {\n                return 200 \"hello\\n\";\n            }".to_string()
    };
    let mut temp = format!("        client_body_temp_path {d}/client_body;\n");
    for module in ["proxy", "fastcgi", "uwsgi", "scgi"] {
        if !compiled.contains(&format!("--without-http_{module}_module")) {
            temp.push_str(&format!("        {module}_temp_path {d}/{module};\n"));
        }
    }
    format!(
        r#"# palisade-bench: one worker, hello world, keep-alive.
user root;
worker_processes 1;
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
{temp}        access_log off;
        default_type text/plain;
        sendfile on;
        keepalive_timeout 65s;
        keepalive_requests 10000000;
        server {{
            {listen}
            {location}
        }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_every_path_in_the_dir_and_skips_missing_modules() {
        let conf = config(
            Path::new("/tmp/x"),
            "configure arguments: --without-http_uwsgi_module",
            Scheme::Http,
            false,
        );
        assert!(conf.contains("pid /tmp/x/nginx.pid;"));
        assert!(conf.contains("proxy_temp_path /tmp/x/proxy;"));
        assert!(!conf.contains("uwsgi_temp_path"));
        assert!(conf.contains("daemon off;"));
        assert!(conf.contains("worker_processes 1;"));
        assert!(conf.contains("access_log off;"));
        assert!(conf.contains(r#"return 200 "hello\n";"#));
        assert!(conf.contains("listen 8080;"));
        assert!(!conf.contains("ssl"));
    }

    #[test]
    fn https_listens_with_the_certificate_in_the_dir() {
        let conf = config(Path::new("/tmp/x"), "", Scheme::Https, false);
        assert!(conf.contains("listen 8443 ssl;"));
        assert!(conf.contains("ssl_certificate /tmp/x/tls.crt;"));
        assert!(conf.contains("ssl_certificate_key /tmp/x/tls.key;"));
        assert!(conf.contains("ssl_protocols TLSv1.3;"));
        let conf = config(Path::new("/tmp/x"), "", Scheme::Https12, false);
        assert!(conf.contains("listen 8443 ssl;"));
        assert!(conf.contains("ssl_protocols TLSv1.2;"));
    }

    #[test]
    fn body_mode_serves_the_file_and_the_body_is_exact_json() -> Result<()> {
        let conf = config(Path::new("/tmp/x"), "", Scheme::Http, true);
        assert!(conf.contains("location = / {"));
        assert!(conf.contains("root /tmp/x;"));
        assert!(conf.contains("try_files /body.json =404;"));
        assert!(!conf.contains("return 200"));
        for size in [2, 50, 1024, 65536] {
            let body = json_body(size);
            assert_eq!(body.len() as u64, size);
            let value: serde_json::Value = serde_json::from_slice(&body)?;
            assert!(value.is_array());
        }
        assert!(json_body(1024).starts_with(br#"[{"id":0,"name":"item-0""#));
        Ok(())
    }
}
