//! Saturation throughput with `wrk`, and CPU time of processes from /proc.

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// One `wrk` run.
#[derive(Debug, Clone, Default)]
pub struct WrkResult {
    /// Completed requests (wrk's "N requests in ...").
    pub requests: u64,
    /// wrk's "Requests/sec".
    pub rps: f64,
    /// Socket errors (connect, read, write, timeout) and non-2xx/3xx responses.
    pub errors: u64,
}

/// Runs `wrk -t<threads> -c<connections> -d<secs>s <url>` (under `taskset -c <cpu>` when `cpu` is
/// given); bounded by wrk's duration + 20 s.
pub async fn wrk(
    url: &str,
    threads: u32,
    connections: u32,
    duration: Duration,
    cpu: Option<usize>,
) -> Result<WrkResult> {
    wrk_with_headers(url, threads, connections, duration, cpu, &[]).await
}

/// [`wrk`] with extra request headers (`-H`), e.g. `Connection: close` for one TCP connection
/// per request.
pub async fn wrk_with_headers(
    url: &str,
    threads: u32,
    connections: u32,
    duration: Duration,
    cpu: Option<usize>,
    headers: &[&str],
) -> Result<WrkResult> {
    let secs = duration.as_secs().max(1);
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = tokio::process::Command::new("taskset");
            c.args(["-c", &cpu.to_string(), "wrk"]);
            c
        }
        None => tokio::process::Command::new("wrk"),
    };
    cmd.args([
        &format!("-t{threads}"),
        &format!("-c{connections}"),
        &format!("-d{secs}s"),
        "--timeout",
        "2s",
    ])
    .args(headers.iter().flat_map(|h| ["-H", h]))
    .arg(url)
    .stdin(std::process::Stdio::null())
    .kill_on_drop(true);
    let limit = Duration::from_secs(secs + 20);
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .with_context(|| format!("wrk against {url} did not finish within {limit:?}"))?
        .context("running wrk (Debian package `wrk`)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk against {url} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text).with_context(|| format!("parsing wrk's output:\n{text}"))
}

/// Parses wrk's summary.
pub fn parse_wrk(text: &str) -> Result<WrkResult> {
    let mut result = WrkResult::default();
    let mut saw_requests = false;
    let mut saw_rps = false;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            result.rps = rest.trim().parse().context("Requests/sec")?;
            saw_rps = true;
        } else if line.contains(" requests in ") {
            result.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .context("N requests in")?;
            saw_requests = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            // "Socket errors: connect 0, read 0, write 0, timeout 0"
            result.errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            result.errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
    }
    if !(saw_requests && saw_rps) {
        bail!("no request count or Requests/sec in wrk's output");
    }
    Ok(result)
}

/// CPU time a process used, two ways: `utime + stime` from `/proc/<pid>/stat` (whole process, in
/// clock ticks, typically 10 ms each) and the sum of the run time of all its threads from
/// `/proc/<pid>/task/*/schedstat` (nanoseconds).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    pub stat_ns: u64,
    pub sched_ns: u64,
}

impl CpuSample {
    pub fn read(pid: u32) -> Result<CpuSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        let fields = stat_fields(&stat).with_context(|| format!("parsing /proc/{pid}/stat"))?;
        // Fields 14 and 15 (1-based) of stat; `stat_fields` starts at field 3.
        let ticks: u64 = fields
            .get(11)
            .and_then(|v| v.parse::<u64>().ok())
            .zip(fields.get(12).and_then(|v| v.parse::<u64>().ok()))
            .map(|(u, s)| u + s)
            .with_context(|| format!("no utime/stime in /proc/{pid}/stat"))?;
        let stat_ns = ticks * (1_000_000_000 / clock_ticks_per_sec());
        let mut sched_ns = 0;
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("listing /proc/{pid}/task"))?;
        for task in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
                sched_ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        Ok(CpuSample { stat_ns, sched_ns })
    }

    /// CPU time between two samples.
    pub fn since(&self, earlier: &CpuSample) -> CpuSample {
        CpuSample {
            stat_ns: self.stat_ns.saturating_sub(earlier.stat_ns),
            sched_ns: self.sched_ns.saturating_sub(earlier.sched_ns),
        }
    }
}

/// The fields of a `/proc/<pid>/stat` line after `comm` (which may contain spaces): field 3 first.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let close = stat.rfind(')')?;
    Some(stat.get(close + 1..)?.split_whitespace().collect())
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// The machine's CPU time so far, from the first line of /proc/stat: busy (user, nice, system,
/// irq, softirq, steal) and total, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    pub fn read() -> Result<MachineCpu> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat.lines().next().context("empty /proc/stat")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        if v.len() < 8 {
            bail!("short cpu line in /proc/stat: {line}");
        }
        // user nice system idle iowait irq softirq steal
        let idle = v[3] + v[4];
        let total: u64 = v.iter().sum();
        Ok(MachineCpu {
            busy: total - idle,
            total,
        })
    }

    /// CPU time all CPUs together were busy since `earlier` (user, system, interrupts), in
    /// nanoseconds; the kernel counts it in clock ticks (`USER_HZ`, 10 ms).
    pub fn busy_ns_since(&self, earlier: &MachineCpu) -> u64 {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100);
        self.busy.saturating_sub(earlier.busy) * 1_000_000_000 / hz
    }

    /// Busy share of all CPUs since `earlier`, in percent.
    pub fn busy_percent_since(&self, earlier: &MachineCpu) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * self.busy.saturating_sub(earlier.busy) as f64 / total as f64
    }
}

/// Busy share of all CPUs over `window`, in percent.
pub async fn machine_busy_percent(window: Duration) -> Result<f64> {
    let before = MachineCpu::read()?;
    tokio::time::sleep(window).await;
    Ok(MachineCpu::read()?.busy_percent_since(&before))
}

/// Restricts the thread `tid` (0: the calling thread; a process id names its main thread) to CPU
/// `cpu`.
pub fn pin_to_cpu(tid: u32, cpu: usize) -> Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        bail!("cpu {cpu} is out of range");
    }
    // SAFETY: cpu_set_t is plain data and all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE, so CPU_SET writes inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc =
        unsafe { libc::sched_setaffinity(tid as libc::pid_t, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("pinning thread {tid} to cpu {cpu}"));
    }
    Ok(())
}

/// CPU time the calling thread has run, in nanoseconds (`/proc/thread-self/schedstat`).
pub fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// What the agent's Prometheus endpoint says about losses.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AgentLosses {
    /// `palisade_agent_records_drained_total`: records the agent read from the ring buffer.
    pub drained: u64,
    /// `palisade_agent_messages_dropped_total`, all reasons: data its parser had to drop.
    pub dropped: u64,
    /// `palisade_agent_capture_kernel_total{reason="records_lost"}`: ring buffer full.
    pub kernel_lost: u64,
    /// `palisade_agent_capture_kernel_total{reason="bytes_truncated"}`: payload past the chunks
    /// one skb may fill.
    pub kernel_bytes_truncated: u64,
    /// Response bodies the agent kept (`palisade_agent_http_bodies_total`,
    /// `palisade_agent_http_body_bytes_total`, direction `response`).
    pub response_bodies: BodyCounts,
}

/// What the agent kept of the bodies of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BodyCounts {
    /// Bodies kept whole.
    pub complete: u64,
    /// Bodies cut (limit, missing bytes, memory pressure).
    pub truncated: u64,
    /// Body bytes kept.
    pub bytes: u64,
}

/// Parses the agent's /metrics text (Prometheus exposition format).
pub fn parse_agent_metrics(text: &str) -> Result<AgentLosses> {
    let mut losses = AgentLosses::default();
    let mut seen_drained = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let value = value as u64;
        if name == "palisade_agent_records_drained_total" {
            losses.drained = value;
            seen_drained = true;
        } else if name.starts_with("palisade_agent_messages_dropped_total") {
            losses.dropped += value;
        } else if name == r#"palisade_agent_capture_kernel_total{reason="records_lost"}"# {
            losses.kernel_lost = value;
        } else if name == r#"palisade_agent_capture_kernel_total{reason="bytes_truncated"}"# {
            losses.kernel_bytes_truncated = value;
        } else if name == r#"palisade_agent_http_bodies_total{direction="response",outcome="complete"}"# {
            losses.response_bodies.complete = value;
        } else if name == r#"palisade_agent_http_bodies_total{direction="response",outcome="truncated"}"# {
            losses.response_bodies.truncated = value;
        } else if name == r#"palisade_agent_http_body_bytes_total{direction="response"}"# {
            losses.response_bodies.bytes = value;
        }
    }
    if !seen_drained {
        bail!("no palisade_agent_records_drained_total in the agent's metrics");
    }
    Ok(losses)
}

/// The pids of the children of `parent` (from every process's `/proc/<pid>/stat`).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| stat_fields(&s)?.get(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect()
}

/// The one nginx worker of the master `master` (waits up to 5 s for it to appear).
pub async fn nginx_worker(master: u32) -> Result<u32> {
    for _ in 0..50 {
        let children = children_of(master);
        match children.as_slice() {
            [one] => return Ok(*one),
            [] => tokio::time::sleep(Duration::from_millis(100)).await,
            many => bail!(
                "nginx master {master} has {} children {many:?}; expected one worker",
                many.len()
            ),
        }
    }
    bail!("nginx master {master} started no worker within 5 s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() -> Result<()> {
        let text = "Running 5s test @ http://10.0.0.2:8080/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.05ms  201.11us   6.00ms   91.00%
    Req/Sec    30.51k     1.02k   32.00k    80.00%
  151822 requests in 5.00s, 23.02MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  30362.47
Transfer/sec:      4.60MB
";
        let r = parse_wrk(text)?;
        assert_eq!(r.requests, 151_822);
        assert!((r.rps - 30_362.47).abs() < 1e-6);
        assert_eq!(r.errors, 7);
        assert!(parse_wrk("garbage").is_err());
        Ok(())
    }

    #[test]
    fn parses_the_agents_loss_counters() -> Result<()> {
        let text = r#"# HELP palisade_agent_records_drained Capture records read
# TYPE palisade_agent_records_drained counter
palisade_agent_records_drained_total 1051546
palisade_agent_messages_dropped_total{reason="connections"} 2
palisade_agent_messages_dropped_total{reason="oversized_heads"} 1
palisade_agent_capture_kernel_total{reason="records_emitted"} 1051546
palisade_agent_capture_kernel_total{reason="records_lost"} 0
palisade_agent_capture_kernel_total{reason="bytes_truncated"} 12
palisade_agent_http_bodies_total{direction="response",outcome="complete"} 40
palisade_agent_http_bodies_total{direction="response",outcome="truncated"} 2
palisade_agent_http_bodies_total{direction="request",outcome="complete"} 7
palisade_agent_http_body_bytes_total{direction="response"} 42000
"#;
        assert_eq!(
            parse_agent_metrics(text)?,
            AgentLosses {
                drained: 1_051_546,
                dropped: 3,
                kernel_lost: 0,
                kernel_bytes_truncated: 12,
                response_bodies: BodyCounts {
                    complete: 40,
                    truncated: 2,
                    bytes: 42_000
                },
            }
        );
        assert!(parse_agent_metrics("").is_err());
        Ok(())
    }

    #[test]
    fn pins_a_thread() -> Result<()> {
        std::thread::spawn(|| -> Result<()> {
            pin_to_cpu(0, 0)?;
            let status = std::fs::read_to_string("/proc/thread-self/status")?;
            let allowed = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(str::trim)
                .unwrap_or_default()
                .to_string();
            assert_eq!(allowed, "0");
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread panicked"))?
    }

    #[test]
    fn reads_own_cpu_and_parent() -> Result<()> {
        let me = std::process::id();
        let sample = CpuSample::read(me)?;
        let later = CpuSample::read(me)?;
        assert!(later.sched_ns >= sample.sched_ns);
        let stat = std::fs::read_to_string(format!("/proc/{me}/stat"))?;
        let ppid: u32 = stat_fields(&stat)
            .and_then(|f| f.get(1)?.parse().ok())
            .context("ppid")?;
        assert!(children_of(ppid).contains(&me));
        Ok(())
    }
}
