//! Child processes the harness owns: killed (SIGKILL) and reaped when their guard is dropped.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A spawned child process with its log file. Dropping the guard kills (SIGKILL) and reaps the
/// process, addressing it by its own pid only.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    pid: u32,
    log_path: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin closed and stdout and stderr appended to `log_path`.
    pub fn spawn(name: &str, cmd: &mut Command, log_path: &Path) -> Result<ChildGuard> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening log file {} for {name}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("duplicating log file handle for {name}"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let pid = child.id();
        tracing::debug!(name, pid, log = %log_path.display(), "spawned process");
        Ok(ChildGuard {
            name: name.to_owned(),
            child: Some(child),
            pid,
            log_path: log_path.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name given at spawn time (used in messages).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file that receives the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the process's log (for error messages).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path, lines)
    }

    /// `Some(status)` once the process has exited (it is reaped then), `None` while it runs.
    pub fn try_exited(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            None => bail!("{} (pid {}) was already killed", self.name, self.pid),
            Some(child) => child
                .try_wait()
                .with_context(|| format!("checking whether {} (pid {}) exited", self.name, self.pid)),
        }
    }

    /// Fails with the log tail if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_exited()? {
            bail!(
                "{} (pid {}) exited with {status}; last lines of {}:\n{}",
                self.name,
                self.pid,
                self.log_path.display(),
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// Sends SIGKILL (if still running) and reaps the process. Idempotent; never panics.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            match child.try_wait() {
                Ok(Some(_)) => {}
                _ => {
                    if let Err(e) = child.kill() {
                        tracing::warn!(name = %self.name, pid = self.pid, "SIGKILL failed: {e}");
                    }
                    if let Err(e) = child.wait() {
                        tracing::warn!(name = %self.name, pid = self.pid, "reaping failed: {e}");
                    }
                }
            }
            tracing::debug!(name = %self.name, pid = self.pid, "process stopped");
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `lines` lines of a text file (at most the last 64 KiB are read); a note if unreadable.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Picks a TCP port that is free on 127.0.0.1 right now.
pub fn free_port() -> Result<u16> {
    free_ports(1)?.into_iter().next().context("no free port picked")
}

/// Picks `n` distinct TCP ports that are free on 127.0.0.1 right now (all listeners are held
/// until every port is chosen, so the ports differ from each other).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0 to pick a free port")
        })
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr().context("reading the picked port")?.port()))
        .collect()
}

/// Whether a TCP connection to `addr` succeeds within `timeout`.
pub fn tcp_accepts(addr: SocketAddr, timeout: Duration) -> bool {
    TcpStream::connect_timeout(&addr, timeout).is_ok()
}

/// Polls `ready` every `every` until it returns true or `timeout` elapses; `what` names the
/// awaited condition in the error.
pub async fn wait_until<F>(what: &str, timeout: Duration, every: Duration, mut ready: F) -> Result<()>
where
    F: FnMut() -> Result<bool>,
{
    let start = Instant::now();
    loop {
        if ready()? {
            tracing::debug!(what, elapsed = ?start.elapsed(), "ready");
            return Ok(());
        }
        if start.elapsed() >= timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Runs a program to completion and fails (with its stderr) unless it exits 0. Returns stdout.
pub fn run_checked(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    check_output(&format!("{program} {}", args.join(" ")), &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Fails with stdout and stderr unless the output's status is success.
pub fn check_output(what: &str, out: &Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs a program, logging (not failing) when it does not succeed. For best-effort cleanup.
pub fn run_quiet(program: &str, args: &[&str]) -> bool {
    match Command::new(program).args(args).stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            tracing::debug!(
                "cleanup `{program} {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            false
        }
        Err(e) => {
            tracing::warn!("cleanup `{program} {}` could not run: {e}", args.join(" "));
            false
        }
    }
}
