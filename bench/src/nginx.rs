//! The benchmark's server: Debian's nginx, one worker, hello world on 8080, with every path it
//! writes (pid, error log, temp dirs) inside a directory of its own.

use std::path::Path;

use anyhow::{Context, Result};

/// The port the benchmark's nginx listens on.
pub const PORT: u16 = 8080;

/// Writes `<dir>/nginx.conf` and returns the pod command that runs nginx with it.
pub fn prepare(dir: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let compiled = std::process::Command::new("nginx")
        .arg("-V")
        .output()
        .context("running `nginx -V` (install Debian's nginx-light: bash hack/bench-overhead.sh does)")?;
    let options = String::from_utf8_lossy(&compiled.stderr).into_owned();
    let conf = config(dir, &options);
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

/// The configuration. `compiled` is `nginx -V`'s output: temp paths are set only for the
/// modules this nginx has.
fn config(dir: &Path, compiled: &str) -> String {
    let d = dir.display();
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
        keepalive_timeout 65s;
        keepalive_requests 10000000;
        server {{
            listen {PORT};
            location / {{
                return 200 "hello\n";
            }}
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
        );
        assert!(conf.contains("pid /tmp/x/nginx.pid;"));
        assert!(conf.contains("proxy_temp_path /tmp/x/proxy;"));
        assert!(!conf.contains("uwsgi_temp_path"));
        assert!(conf.contains("daemon off;"));
        assert!(conf.contains("worker_processes 1;"));
        assert!(conf.contains("access_log off;"));
        assert!(conf.contains(r#"return 200 "hello\n";"#));
    }
}
