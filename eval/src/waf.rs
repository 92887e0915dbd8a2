//! The reference WAF, measured live: Debian's nginx with the ModSecurity v3 module
//! (`libnginx-mod-http-modsecurity`) and the OWASP CRS (`modsecurity-crs`), started as a private
//! child process with its own prefix on 127.0.0.1, and requests replayed through it one
//! connection each. Blocked means HTTP 403.
//!
//! The server answers 200 by proxying to a second server block on a Unix socket: ModSecurity runs
//! its phases in nginx's access phase, after `return`, so a location that only says
//! `return 200` would never be inspected at all.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where Debian puts the pieces (the first existing path wins).
const MODULE: &[&str] = &[
    "/usr/lib/nginx/modules/ngx_http_modsecurity_module.so",
    "/usr/share/nginx/modules/ngx_http_modsecurity_module.so",
];
/// ModSecurity's recommended configuration. Debian ships it with the nginx module (the pristine
/// copy under docs, the admin's copy in /etc/nginx); other packagings call it
/// modsecurity.conf-recommended.
const RECOMMENDED: &[&str] = &[
    "/etc/modsecurity/modsecurity.conf-recommended",
    "/usr/share/nginx/docs/modsecurity/modsecurity.conf",
    "/etc/nginx/modsecurity.conf",
];
const UNICODE_MAP: &[&str] = &[
    "/usr/share/nginx/docs/modsecurity/unicode.mapping",
    "/etc/nginx/unicode.mapping",
    "/etc/modsecurity/unicode.mapping",
];
const CRS_SETUP: &[&str] = &[
    "/usr/share/modsecurity-crs/crs-setup.conf.example",
    "/etc/modsecurity/crs/crs-setup.conf.example",
    "/etc/modsecurity/crs/crs-setup.conf",
];
const CRS_RULES: &str = "/usr/share/modsecurity-crs/rules";
/// The packages whose versions label the column.
const PACKAGES: &[&str] = &[
    "nginx",
    "libnginx-mod-http-modsecurity",
    "libmodsecurity3",
    "modsecurity-crs",
];

/// The CRS inbound anomaly threshold (CRS's default).
pub const ANOMALY_THRESHOLD: u32 = 5;
/// Parallel connections of a replay.
pub const CONNECTIONS: usize = 4;
/// Deadline of one request, connect to status line. nginx's own client timeouts are 5 s, so a
/// request that is short of its declared body gets nginx's answer (or a close) before this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What the WAF did with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// HTTP 403.
    Blocked,
    /// HTTP 200 from the backend.
    Passed,
    /// Neither: nginx's own 4xx/5xx (its parser), a timeout, a reset or no answer.
    NotReplayable(String),
}

/// The installed pieces.
#[derive(Debug, Clone)]
pub struct Installation {
    nginx: PathBuf,
    module: PathBuf,
    recommended: PathBuf,
    unicode_map: Option<PathBuf>,
    crs_setup: PathBuf,
    /// `package version` per line, from dpkg.
    pub versions: Vec<(String, String)>,
}

impl Installation {
    /// Finds nginx, the module and the CRS; the error says what is missing.
    pub fn locate() -> Result<Installation, String> {
        let nginx = find_nginx().ok_or("nginx not found (PATH, /usr/sbin)")?;
        let first = |paths: &[&str]| paths.iter().map(PathBuf::from).find(|p| p.is_file());
        let module = first(MODULE).ok_or_else(|| {
            format!(
                "the ModSecurity module is not installed (none of {})",
                MODULE.join(", ")
            )
        })?;
        let recommended = first(RECOMMENDED).ok_or_else(|| {
            format!(
                "ModSecurity's recommended configuration not found (none of {})",
                RECOMMENDED.join(", ")
            )
        })?;
        let unicode_map = recommended
            .parent()
            .map(|d| d.join("unicode.mapping"))
            .filter(|p| p.is_file())
            .or_else(|| first(UNICODE_MAP));
        let crs_setup = first(CRS_SETUP).ok_or_else(|| {
            format!(
                "the OWASP CRS is not installed (none of {})",
                CRS_SETUP.join(", ")
            )
        })?;
        if !Path::new(CRS_RULES)
            .join("REQUEST-949-BLOCKING-EVALUATION.conf")
            .is_file()
        {
            return Err(format!("the OWASP CRS rules are not in {CRS_RULES}"));
        }
        Ok(Installation {
            nginx,
            module,
            recommended,
            unicode_map,
            crs_setup,
            versions: package_versions(),
        })
    }

    /// The installed version of a package, or "?".
    pub fn version(&self, package: &str) -> &str {
        self.versions
            .iter()
            .find(|(p, _)| p == package)
            .map_or("?", |(_, v)| v.as_str())
    }

    /// The column's name.
    pub fn label(&self, level: usize) -> String {
        format!(
            "ModSecurity {} + CRS {} PL{level}",
            self.version("libmodsecurity3"),
            self.version("modsecurity-crs")
        )
    }
}

fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

fn package_versions() -> Vec<(String, String)> {
    let Ok(out) = Command::new("dpkg-query")
        .args(["-W", "-f", "${db:Status-Abbrev} ${Package} ${Version}\n"])
        .args(PACKAGES)
        .stderr(Stdio::null())
        .output()
    else {
        return vec![];
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "ii").then_some(())?;
            Some((f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

/// A running nginx + ModSecurity + CRS on 127.0.0.1; stopped (and its directory removed) on drop.
pub struct Waf {
    child: Child,
    nginx: PathBuf,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Waf {
    /// Writes the configuration into a fresh temporary directory and starts nginx on a free
    /// port with CRS paranoia level `level`; returns once the port accepts connections.
    pub fn start(inst: &Installation, level: usize) -> Result<Waf, String> {
        let dir = temp_dir()?;
        let mut last_error = String::new();
        for _attempt in 0..3 {
            // Each try owns the directory only until it hands it to a Waf, whose Drop cleans up.
            fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let guard = DirGuard(Some(dir.clone()));
            write_rules(inst, &dir, level)?;
            let port = free_port()?;
            let conf = dir.join("nginx.conf");
            fs::write(&conf, nginx_conf(inst, &dir, port)).map_err(|e| format!("{}: {e}", conf.display()))?;
            let stderr = fs::File::create(dir.join("stderr.log")).map_err(|e| e.to_string())?;
            let child = Command::new(&inst.nginx)
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&conf)
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .map_err(|e| format!("starting {}: {e}", inst.nginx.display()))?;
            let mut waf = Waf {
                child,
                nginx: inst.nginx.clone(),
                dir: guard.release(),
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            };
            match waf.wait_ready() {
                Ok(()) => return Ok(waf),
                Err(e) => {
                    // A port taken between free_port and nginx's bind: try another.
                    let retry = e.contains("Address already in use");
                    last_error = e;
                    waf.stop();
                    if !retry {
                        break;
                    }
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        Err(last_error)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "nginx exited ({status}) at start-up: {}",
                    self.log_tail()
                ));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "nginx did not listen on {} within {START_TIMEOUT:?}: {}",
                    self.addr,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        for name in ["stderr.log", "error.log"] {
            text.push_str(&fs::read_to_string(self.dir.join(name)).unwrap_or_default());
        }
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    }

    /// Sends one request on a connection of its own. An error means the server is gone (the
    /// connection was refused), not that this request was odd.
    pub fn send(&self, request: &[u8]) -> Result<Verdict, String> {
        exchange(self.addr, request, REQUEST_TIMEOUT)
    }

    /// Replays every request over `CONNECTIONS` parallel connections; the verdicts are in the
    /// order of `requests`. Progress goes to stderr.
    pub fn replay(&mut self, requests: &[Vec<u8>]) -> Result<Vec<Verdict>, String> {
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let error = Mutex::new(None::<String>);
        let results = Mutex::new(Vec::with_capacity(requests.len()));
        let step = (requests.len() / 10).max(1);
        let this = &*self;
        std::thread::scope(|scope| {
            for _ in 0..CONNECTIONS {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(request) = requests.get(i) else { break };
                        match this.send(request) {
                            Ok(v) => mine.push((i, v)),
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                if let Ok(mut slot) = error.lock() {
                                    slot.get_or_insert(e);
                                }
                            }
                        }
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_multiple_of(step) {
                            eprintln!("ModSecurity replay: {n}/{}", requests.len());
                        }
                    }
                    if let Ok(mut all) = results.lock() {
                        all.append(&mut mine);
                    }
                });
            }
        });
        if let Some(e) = error.into_inner().ok().flatten() {
            return Err(e);
        }
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(format!(
                "nginx exited ({status}) during the replay: {}",
                self.log_tail()
            ));
        }
        let mut results = results.into_inner().map_err(|_| "a replay thread panicked")?;
        if results.len() != requests.len() {
            return Err(format!(
                "replayed {} of {} requests",
                results.len(),
                requests.len()
            ));
        }
        results.sort_unstable_by_key(|(i, _)| *i);
        Ok(results.into_iter().map(|(_, v)| v).collect())
    }

    /// Denials that came from the recommended configuration's own rules (200002–200007: a body
    /// ModSecurity cannot parse, too many arguments, multipart errors), not from the CRS; counted
    /// from nginx's error log.
    pub fn denials_by_recommended_rules(&self) -> usize {
        fs::read_to_string(self.dir.join("error.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ModSecurity: Access denied") && l.contains("[id \"20000"))
            .count()
    }

    /// SIGTERM to the master, which stops its workers (`kill`, or `nginx -s stop` where there
    /// is no `kill`); SIGKILL after 5 s. Then the directory goes.
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let quiet = |c: &mut Command| c.stdout(Stdio::null()).stderr(Stdio::null()).status();
            let term = quiet(Command::new("kill").args(["-TERM", &self.child.id().to_string()]));
            if !term.is_ok_and(|s| s.success()) {
                let _ = quiet(
                    Command::new(&self.nginx)
                        .arg("-p")
                        .arg(&self.dir)
                        .arg("-e")
                        .arg(self.dir.join("error.log"))
                        .arg("-c")
                        .arg(self.dir.join("nginx.conf"))
                        .args(["-s", "stop"]),
                );
            }
            let start = Instant::now();
            while matches!(self.child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Waf {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes a directory on drop unless released.
struct DirGuard(Option<PathBuf>);

impl DirGuard {
    fn release(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

fn temp_dir() -> Result<PathBuf, String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("palisade-waf-{}-{nanos}", std::process::id()));
    fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // The upstream socket's path must fit in sun_path.
    if dir.join("upstream.sock").as_os_str().len() > 100 {
        let _ = fs::remove_dir(&dir);
        return Err(format!(
            "temporary directory path too long for a Unix socket: {}",
            dir.display()
        ));
    }
    Ok(dir)
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

/// Writes modsecurity.conf (the recommended one, engine on), crs-setup.conf (with the paranoia
/// level and the anomaly threshold) and main.conf, which includes both and the CRS rules.
fn write_rules(inst: &Installation, dir: &Path, level: usize) -> Result<(), String> {
    let read = |p: &Path| fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    let tmp = dir.join("modsec-tmp");
    fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let t = tmp.display();
    let unicode = inst
        .unicode_map
        .as_ref()
        .map(|p| format!("SecUnicodeMapFile {} 20127", p.display()));
    let overrides: Vec<(&str, Option<String>)> = vec![
        ("SecRuleEngine", Some("SecRuleEngine On".into())),
        ("SecRequestBodyAccess", Some("SecRequestBodyAccess On".into())),
        // The corpus's largest body is 67 KB; these leave room for any corpus.
        ("SecRequestBodyLimit", Some("SecRequestBodyLimit 13107200".into())),
        (
            "SecRequestBodyNoFilesLimit",
            Some("SecRequestBodyNoFilesLimit 1048576".into()),
        ),
        // The backend's "ok" is not worth inspecting.
        ("SecResponseBodyAccess", Some("SecResponseBodyAccess Off".into())),
        ("SecAuditEngine", Some("SecAuditEngine Off".into())),
        ("SecAuditLog", None),
        ("SecDebugLog", None),
        ("SecTmpDir", Some(format!("SecTmpDir {t}/"))),
        ("SecDataDir", Some(format!("SecDataDir {t}/"))),
        ("SecUploadDir", Some(format!("SecUploadDir {t}/"))),
        // No DNS lookup announcing the version: nothing leaves the machine.
        ("SecStatusEngine", Some("SecStatusEngine Off".into())),
        ("SecUnicodeMapFile", unicode),
    ];
    let mut seen = vec![false; overrides.len()];
    let mut out = String::from("# palisade-eval: ModSecurity's recommended configuration, adjusted.\n");
    for line in read(&inst.recommended)?.lines() {
        let word = line.split_whitespace().next().unwrap_or("");
        if let Some(i) = overrides.iter().position(|(k, _)| *k == word) {
            seen[i] = true;
            if let Some(v) = &overrides[i].1 {
                out.push_str(v);
                out.push('\n');
            }
            continue;
        }
        // Every ModSecurity denial answers 403, so any other status is nginx's own.
        out.push_str(&line.replace("status:400", "status:403"));
        out.push('\n');
    }
    for (i, (_, v)) in overrides.iter().enumerate() {
        if let (false, Some(v)) = (seen[i], v) {
            out.push_str(v);
            out.push('\n');
        }
    }
    write("modsecurity.conf", out)?;

    let setup = read(&inst.crs_setup)?;
    let active: String = setup
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for id in ["id:900000", "id:900110"] {
        if active.contains(id) {
            return Err(format!(
                "{} already sets {id}; palisade-eval sets the paranoia level and threshold itself",
                inst.crs_setup.display()
            ));
        }
    }
    write(
        "crs-setup.conf",
        format!(
            "{setup}\n# palisade-eval\nSecAction \"id:900000,phase:1,nolog,pass,t:none,\
             setvar:tx.paranoia_level={level},setvar:tx.executing_paranoia_level={level}\"\n\
             SecAction \"id:900110,phase:1,nolog,pass,t:none,\
             setvar:tx.inbound_anomaly_score_threshold={ANOMALY_THRESHOLD},\
             setvar:tx.outbound_anomaly_score_threshold=4\"\n"
        ),
    )?;
    let d = dir.display();
    write(
        "main.conf",
        format!("Include {d}/modsecurity.conf\nInclude {d}/crs-setup.conf\nInclude {CRS_RULES}/*.conf\n"),
    )
}

fn nginx_conf(inst: &Installation, dir: &Path, port: u16) -> String {
    let d = dir.display();
    let mut temp = String::new();
    for module in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        temp.push_str(&format!("    {module}_temp_path {d}/{module}_temp;\n"));
    }
    format!(
        r#"# palisade-eval: the reference WAF, on loopback only.
load_module {module};
user root;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{
    worker_connections 256;
}}
http {{
{temp}    access_log off;
    default_type text/plain;
    keepalive_timeout 0;
    client_header_timeout 5s;
    client_body_timeout 5s;
    send_timeout 5s;
    client_max_body_size 16m;
    client_body_buffer_size 1m;
    large_client_header_buffers 4 32k;
    server {{
        listen 127.0.0.1:{port};
        modsecurity on;
        modsecurity_rules_file {d}/main.conf;
        location / {{
            proxy_pass http://unix:{d}/upstream.sock;
            proxy_read_timeout 5s;
        }}
    }}
    server {{
        listen unix:{d}/upstream.sock;
        location / {{
            return 200 "ok\n";
        }}
    }}
}}
"#,
        module = inst.module.display()
    )
}

/// One request on its own connection; reads up to the final status line.
fn exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<Verdict, String> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connecting to nginx on {addr}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    // nginx may answer (400) and close before it has read everything: a failed write can still
    // have a response behind it.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(verdict) = classify(&response) {
            return Ok(verdict);
        }
        let why = match stream.read(&mut buf) {
            Ok(0) if response.is_empty() => "closed without a response",
            Ok(0) => "incomplete response",
            Ok(n) => {
                response.extend_from_slice(&buf[..n]);
                if Instant::now() < deadline && response.len() < 1 << 20 {
                    continue;
                }
                "timeout"
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => "timeout",
            Err(_) if response.is_empty() => "reset without a response",
            Err(_) => "reset mid-response",
        };
        return Ok(classify(&response).unwrap_or_else(|| Verdict::NotReplayable(why.into())));
    }
}

/// The verdict once the final (non-1xx) status line is in; `None` while it is not.
fn classify(mut response: &[u8]) -> Option<Verdict> {
    loop {
        if response.is_empty() {
            return None;
        }
        if !response.starts_with(&b"HTTP/"[..response.len().min(5)]) {
            return Some(Verdict::NotReplayable("not an HTTP response".into()));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        let status = parsed.parse(response);
        let code = parsed.code?;
        if (100..200).contains(&code) {
            // 100 Continue and friends: the final answer follows.
            match status {
                Ok(httparse::Status::Complete(n)) => {
                    response = &response[n..];
                    continue;
                }
                _ => return None,
            }
        }
        return Some(match code {
            403 => Verdict::Blocked,
            200 => Verdict::Passed,
            c => Verdict::NotReplayable(format!("HTTP {c}")),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_classified() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"HTTP/1.1 4"), None);
        assert_eq!(classify(b"HTTP/1.1 403 Forbidden\r\n"), Some(Verdict::Blocked));
        assert_eq!(
            classify(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"),
            Some(Verdict::Passed)
        );
        assert_eq!(classify(b"HTTP/1.1 100 Continue\r\n\r\n"), None);
        assert_eq!(
            classify(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\n"),
            Some(Verdict::Blocked)
        );
        assert_eq!(
            classify(b"HTTP/1.1 400 Bad Request\r\n"),
            Some(Verdict::NotReplayable("HTTP 400".into()))
        );
        assert_eq!(
            classify(b"ok\n"),
            Some(Verdict::NotReplayable("not an HTTP response".into()))
        );
    }

    /// End to end through Debian's nginx + ModSecurity + CRS: a clear SQL injection in the query
    /// and the same one only in a form body are blocked (the body one fails if ModSecurity never
    /// sees bodies, e.g. behind `return`), a benign GET and POST pass. Skipped with a reason when
    /// the packages are missing, except in CI (CI=true), which installs them first.
    #[test]
    fn modsecurity_blocks_sql_injection_and_passes_benign_requests() {
        let inst = match Installation::locate() {
            Ok(i) => i,
            Err(why) => {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("CI=true and the reference WAF is missing ({why}); hack/install-toolchain.sh installs it");
                }
                eprintln!("SKIPPED: modsecurity_blocks_sql_injection_and_passes_benign_requests: {why}");
                return;
            }
        };
        let mut waf = Waf::start(&inst, 1).unwrap();
        let get = |target: &str| {
            format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: palisade-eval test\r\nAccept: */*\r\nConnection: close\r\n\r\n").into_bytes()
        };
        let post = |body: &str| {
            format!(
                "POST /login HTTP/1.1\r\nHost: localhost\r\nUser-Agent: palisade-eval test\r\nAccept: */*\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        };
        let cases = [
            (get("/?id=1'%20OR%20'1'='1'%20--"), Verdict::Blocked),
            (get("/?id=1"), Verdict::Passed),
            (post("user=alice&id=1'%20OR%20'1'='1'%20--"), Verdict::Blocked),
            (post("user=alice&id=1"), Verdict::Passed),
            (
                b"GET / HTTP/1.1\r\n\x01\r\n\r\n".to_vec(),
                Verdict::NotReplayable("HTTP 400".into()),
            ),
        ];
        for (request, want) in &cases {
            assert_eq!(
                &waf.send(request).unwrap(),
                want,
                "{}",
                String::from_utf8_lossy(request)
            );
        }
        let requests: Vec<Vec<u8>> = cases.iter().map(|(r, _)| r.clone()).collect();
        let verdicts = waf.replay(&requests).unwrap();
        assert_eq!(verdicts, cases.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>());
        assert!(waf.addr.ip().is_loopback());
        let dir = waf.dir.clone();
        drop(waf);
        assert!(!dir.exists(), "the WAF's directory is removed when it stops");
    }
}
