//! `palisade-bench`: what Palisade's capture costs, agent ON vs agent OFF, measured side by side in
//! one run on a real kernel (see bench/README.md and docs/benchmarks.md).
//!
//! Starts the end-to-end stack, two pods running the same nginx (one selected by an ApiMonitor,
//! one not), then alternates agent OFF / agent ON for a number of rounds, measuring saturation
//! throughput (wrk), latency at a fixed half load (an open-loop generator, coordinated-omission
//! safe) and CPU per request in each state. Prints markdown and writes docs/benchmarks.md.

/// Progress on stderr (stdout carries the markdown).
macro_rules! step {
    ($($arg:tt)*) => { eprintln!("[bench] {}", format!($($arg)*)) };
}

mod bpf;
mod enforcement;
mod loadgen;
mod measure;
mod nginx;
mod report;
mod tls;
mod uprobes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use palisade_e2e::palisade::{
    binaries, get_json, http_get_body, start_agent_with_metrics, wait_for_object, Stack,
};
use palisade_e2e::{ControlPlane, PodLaunch, RunningPod};

use crate::measure::{CpuSample, WrkResult};
use crate::report::{per_request_us, Completeness, DirectCost, Environment, Latency, Round, StateRun};

const NAMESPACE: &str = "demo";
const MONITOR: &str = "bench";
const STATUS_WAIT: Duration = Duration::from_secs(60);
/// Rounds run beyond `--rounds` at most, to replace rounds that other work on the machine disturbed.
const EXTRA_ROUNDS: u32 = 2;
/// A state is disturbed when the machine was at least this busy (all CPUs, %) in the second
/// before its measurements (after waiting up to 10 s for quiet) or in the second after them.
const BUSY_THRESHOLD: f64 = 25.0;
/// The largest `--body-bytes`: the ApiMonitor's `maxBodyBytes` maximum.
const MAX_BODY_BYTES: u64 = 1 << 20;

#[derive(Parser, Debug)]
#[command(about = "Palisade's overhead benchmark: agent ON vs OFF, side by side in one run (needs root)")]
struct Args {
    /// Rounds of (agent OFF, agent ON).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Seconds per measurement (wrk run, recorded open-loop window).
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Connections for wrk and for the open-loop generator.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Where to write the report (default: docs/benchmarks.md in the workspace).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the results only; do not write the report file.
    #[arg(long)]
    no_write: bool,
    /// Do not pin: by default (2 or more CPUs) both nginx workers run on CPU 0 and the clients
    /// (wrk, the open-loop generator) on CPU 1, so they do not trade places between runs; the
    /// agent and everything else float.
    #[arg(long)]
    no_pin: bool,
    /// Measure the enforcement programs instead of capture: allowed traffic to a pod isolated by
    /// an ApiIsolation vs not isolated (writes docs/benchmarks-enforcement.md).
    #[arg(long)]
    enforcement: bool,
    /// Measure TLS capture instead: one nginx pod serving HTTPS, an ApiMonitor with TLS capture
    /// enabled vs disabled, the agent running in both (writes docs/benchmarks-tls.md).
    #[arg(long, conflicts_with = "enforcement")]
    tls: bool,
    /// With --tls: nginx speaks TLS 1.2 only (AES-GCM), not TLS 1.3.
    #[arg(long, requires = "tls")]
    tls12: bool,
    /// Measure capture with response bodies: nginx returns a static JSON body of this many bytes
    /// (sendfile) and the ApiMonitor captures bodies up to that size; one full run per size, e.g.
    /// `--body-bytes 1024,65536` (writes docs/benchmarks-bodies.md).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["enforcement", "tls"])]
    body_bytes: Vec<u64>,
    /// Node name for the stand-in kubelet.
    #[arg(long, default_value = "bench-node")]
    node: String,
    /// Diagnostics: only run the open-loop generator against this address and print its figures.
    #[arg(long, hide = true)]
    probe_open_loop: Option<SocketAddr>,
    /// Diagnostics: the rate for --probe-open-loop, requests/s.
    #[arg(long, hide = true, default_value_t = 10_000.0)]
    probe_rate: f64,
}

impl Args {
    fn pinned(&self) -> bool {
        !self.no_pin && std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2
    }
    /// The CPU of the nginx workers.
    fn server_cpu(&self) -> Option<usize> {
        self.pinned().then_some(0)
    }
    /// The CPU of wrk and the open-loop generator.
    fn client_cpu(&self) -> Option<usize> {
        self.pinned().then_some(1)
    }
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("palisade-bench: building the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palisade-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A running benchmark pod and its nginx worker.
struct BenchPod {
    pod: RunningPod,
    worker: u32,
    scheme: nginx::Scheme,
}

impl BenchPod {
    fn addr(&self) -> SocketAddr {
        self.pod.addr(self.scheme.port())
    }
    fn url(&self) -> String {
        format!("{}://{}/", self.scheme.as_str(), self.addr())
    }
    /// A wrk run of `duration` whose figures are not kept (warm-up, or traffic to check on).
    async fn unmeasured_load(&self, args: &Args, duration: Duration) -> Result<WrkResult> {
        measure::wrk(&self.url(), 1, args.connections, duration, args.client_cpu()).await
    }
}

/// The stack, the namespace and one nginx pod `name` labelled `app=<app>` (the single-pod modes).
async fn start_with_one_pod(
    args: &Args,
    name: &str,
    app: &str,
    scheme: nginx::Scheme,
) -> Result<(Stack, BenchPod)> {
    step!("starting the stack (etcd, kube-apiserver, operator, agent, kubelet)");
    let stack = Stack::start(&args.node).await?;
    stack.cp.kubectl_ok(&["create", "namespace", NAMESPACE])?;
    let pod = start_nginx_pod(&stack, name, app, args.server_cpu(), scheme, None).await?;
    Ok((stack, pod))
}

/// Prints a mode's report and, unless `--no-write`, writes it to `--out` or to `default` (a
/// path in the workspace).
fn publish_report(args: &Args, default: &str, report: &str) -> Result<()> {
    println!("{report}");
    if !args.no_write {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| palisade_e2e::workspace_root().join(default));
        std::fs::write(&out, report).with_context(|| format!("writing {}", out.display()))?;
        step!("wrote {}", out.display());
    }
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    if args.rounds == 0 || args.seconds == 0 || args.connections == 0 {
        bail!("--rounds, --seconds and --connections must be at least 1");
    }
    if let Some(addr) = args.probe_open_loop {
        let l = open_loop(
            args.client_cpu(),
            addr,
            args.probe_rate,
            args.connections as usize,
            Duration::from_secs(args.seconds),
        )
        .await?;
        println!(
            "open loop against {addr} at {:.0} req/s: p50 {:.0} µs, p99 {:.0} µs, {} completed, {} errors",
            l.rate, l.p50_us, l.p99_us, l.completed, l.errors
        );
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root: it loads eBPF (through the agent), makes cgroups and network namespaces");
    }
    for (tool, package) in [("wrk", "wrk"), ("nginx", "nginx-light")] {
        if !on_path(tool) {
            bail!("`{tool}` is not installed (Debian package {package}; bash hack/bench-overhead.sh installs it)");
        }
    }
    if args.enforcement {
        return enforcement::run(&args).await;
    }
    if args.tls {
        return tls::run(&args).await;
    }
    if args.body_bytes.is_empty() {
        let (env, rounds) = capture_run(&args, None).await?;
        return publish_report(&args, "docs/benchmarks.md", &report::document(&env, &rounds));
    }
    if let Some(bad) = args.body_bytes.iter().find(|&&b| b == 0 || b > MAX_BODY_BYTES) {
        bail!("--body-bytes {bad}: each size must be 1 to {MAX_BODY_BYTES} (the ApiMonitor's maxBodyBytes limit)");
    }
    let mut runs = Vec::new();
    for &size in &args.body_bytes {
        step!("body size {size} bytes: a full run");
        let (env, rounds) = capture_run(&args, Some(size)).await?;
        runs.push(report::BodyRun { size, env, rounds });
    }
    publish_report(
        &args,
        "docs/benchmarks-bodies.md",
        &report::bodies_document(&runs),
    )
}

/// One capture benchmark run on a stack of its own: rounds of agent OFF / agent ON against the
/// two pods, serving hello world, or a static body of `body_bytes` that the ApiMonitor captures.
async fn capture_run(args: &Args, body_bytes: Option<u64>) -> Result<(Environment, Vec<Round>)> {
    let started = Instant::now();
    let load_before = loadavg();
    let agent_binary = binaries()?.join("palisade-node-agent");
    step!("agent binary: {}", agent_binary.display());
    if !agent_binary.display().to_string().contains("release") {
        step!("warning: the agent is not a release build; set PALISADE_BIN_DIR=<target>/release (hack/bench-overhead.sh does)");
    }

    step!("starting the stack (etcd, kube-apiserver, operator, agent, kubelet)");
    let mut stack = Stack::start(&args.node).await?;
    stack.cp.kubectl_ok(&["create", "namespace", NAMESPACE])?;

    let http = nginx::Scheme::Http;
    let cpu = args.server_cpu();
    let monitored = start_nginx_pod(&stack, "monitored", "bench-monitored", cpu, http, body_bytes).await?;
    let unmonitored = start_nginx_pod(&stack, "unmonitored", "bench-other", cpu, http, body_bytes).await?;
    step!(
        "pods: monitored {} (nginx worker {}), unmonitored {} (nginx worker {})",
        monitored.pod.ip,
        monitored.worker,
        unmonitored.pod.ip,
        unmonitored.worker
    );

    apply_monitor(&stack.cp, nginx::PORT, None, body_bytes)?;
    wait_probes(&stack.cp, &args.node, 2).await?;
    check_kernel_attach(&monitored, &unmonitored, true).await?;
    step!("ApiMonitor {NAMESPACE}/{MONITOR}: 2 probes attached; warming up both servers");
    for pod in [&monitored, &unmonitored] {
        pod.unmeasured_load(args, Duration::from_secs(2)).await?;
    }
    // Let the warm-up's requests reach the status before the first ON state counts from it.
    let mut counted_before = settled_count(&stack.cp, 0, Duration::from_secs(20)).await?;

    let control = control_plane_pids(&stack);
    let mut rounds: Vec<Round> = Vec::new();
    let mut index = 0;
    loop {
        index += 1;
        if index > args.rounds {
            step!(
                "round {index}: an extra round, because other work on the machine disturbed an earlier one"
            );
        }
        // Agent OFF: kill it; its links close with it.
        stack.agent.kill();
        check_kernel_attach(&monitored, &unmonitored, false).await?;
        wait_probes(&stack.cp, &args.node, 0).await?;
        step!("round {index}: agent OFF (nothing attached)");
        let off = measure_state(args, &monitored, &unmonitored, None, None, &control).await?;
        let rate = off.latency_monitored.rate;
        step!(
            "round {index}: OFF monitored {:.0} req/s, unmonitored {:.0} req/s, p50/p99 at {rate:.0} req/s: {:.0}/{:.0} µs",
            off.monitored.rps,
            off.unmonitored.rps,
            off.latency_monitored.p50_us,
            off.latency_monitored.p99_us
        );

        // Agent ON: start it again and wait until capture is attached.
        let (agent, metrics) = start_agent_with_metrics(
            &stack.cp,
            &stack.operator,
            &args.node,
            &format!("agent-round{index}"),
            &[],
            &[],
        )?;
        stack.agent = agent;
        wait_probes(&stack.cp, &args.node, 2).await?;
        check_kernel_attach(&monitored, &unmonitored, true).await?;
        step!("round {index}: agent ON (2 probes attached)");
        let agent_pid = stack.agent.pid();
        let on = measure_state(
            args,
            &monitored,
            &unmonitored,
            Some(rate),
            Some(agent_pid),
            &control,
        )
        .await?;
        stack
            .agent
            .ensure_running()
            .context("the agent died under load")?;
        let direct = match direct_cost(args, &monitored, rate, agent_pid).await {
            Ok(d) => {
                step!(
                    "round {index}: direct, at {rate:.0} req/s: capture programs {:.2} µs/req ({:.2} runs of {:.0} ns), agent {:.2} µs/req",
                    d.programs_us(),
                    d.runs_per_request(),
                    d.ns_per_run(),
                    d.agent_us()
                );
                Some(d)
            }
            Err(e) => {
                step!("round {index}: no direct measurement of the programs' run time: {e:#}");
                None
            }
        };
        let sent = on.monitored.requests + on.latency_monitored.completed + direct.map_or(0, |d| d.requests);
        // The agent's counts have settled (its last drain of the monitored pod's traffic, which
        // ended a moment ago with the direct run, reached the status) before its counters are
        // read, so records drained match records emitted.
        let after = settled_count(&stack.cp, counted_before + sent, Duration::from_secs(20)).await?;
        let kernel = match bpf::agent_counters(agent_pid) {
            Ok(k) => k,
            Err(e) => {
                step!("could not read the agent's kernel counters: {e:#}");
                None
            }
        };
        let losses = match http_get_body(metrics, "/metrics").and_then(|t| measure::parse_agent_metrics(&t)) {
            Ok(l) => Some(l),
            Err(e) => {
                step!("could not read the agent's /metrics: {e:#}");
                None
            }
        };
        let completeness = Completeness {
            sent,
            counted: after.saturating_sub(counted_before),
            kernel,
            agent: losses,
        };
        counted_before = after;
        step!(
            "round {index}: ON monitored {:.0} req/s ({:.3}), unmonitored {:.0} req/s ({:.3}), p50/p99 {:.0}/{:.0} µs; agent counted {} of {} sent{}{}",
            on.monitored.rps,
            on.monitored.rps / off.monitored.rps,
            on.unmonitored.rps,
            on.unmonitored.rps / off.unmonitored.rps,
            on.latency_monitored.p50_us,
            on.latency_monitored.p99_us,
            completeness.counted,
            completeness.sent,
            kernel.map_or_else(String::new, |k| format!(
                "; kernel: {} records emitted, {} lost",
                k.records_emitted, k.records_lost
            )),
            losses.map_or_else(String::new, |l| format!(
                "; agent: {} records drained, {} dropped",
                l.drained, l.dropped
            )),
        );
        rounds.push(Round {
            index,
            off,
            on,
            completeness,
            direct,
        });
        let clean = rounds.iter().filter(|r| !r.disturbed()).count() as u32;
        if index >= args.rounds && (clean >= args.rounds || index >= args.rounds + EXTRA_ROUNDS) {
            break;
        }
    }

    let mut env = environment(args, &agent_binary, started.elapsed());
    env.load_before = load_before;
    env.load_after = loadavg();
    env.rounds_run = rounds.len() as u32;
    env.body_bytes = body_bytes;

    // Pods first (their veths hang off the kubelet's bridge), then the stack.
    drop(monitored);
    drop(unmonitored);
    drop(stack);
    step!(
        "done in {:.0} s; everything stopped",
        started.elapsed().as_secs_f64()
    );
    Ok((env, rounds))
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_default()
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
}

async fn start_nginx_pod(
    stack: &Stack,
    name: &str,
    app: &str,
    cpu: Option<usize>,
    scheme: nginx::Scheme,
    body_bytes: Option<u64>,
) -> Result<BenchPod> {
    let command = nginx::prepare(&stack.cp.dir().join(format!("nginx-{name}")), scheme, body_bytes)?;
    let pod = stack
        .kubelet
        .start_pod(PodLaunch {
            namespace: NAMESPACE.into(),
            name: name.into(),
            labels: BTreeMap::from([("app".to_string(), app.to_string())]),
            command,
            port: scheme.port(),
        })
        .await?;
    let worker = measure::nginx_worker(pod.pid)
        .await
        .with_context(|| format!("pod {NAMESPACE}/{name}: log {}", pod.log_path.display()))?;
    if let Some(cpu) = cpu {
        measure::pin_to_cpu(worker, cpu)?;
    }
    Ok(BenchPod { pod, worker, scheme })
}

/// Applies the ApiMonitor `demo/bench` selecting `app=bench-monitored` on `port`; `tls` adds
/// `tls: {enabled: ..}` (the TLS benchmark toggles it, the capture benchmark leaves it out);
/// `body_bytes` captures bodies with that `maxBodyBytes` (the size nginx serves: kept whole).
fn apply_monitor(cp: &ControlPlane, port: u16, tls: Option<bool>, body_bytes: Option<u64>) -> Result<()> {
    let bodies = body_bytes.map_or_else(String::new, |max| {
        format!("    bodies: true\n    maxBodyBytes: {max}\n")
    });
    let mut yaml = format!(
        r#"apiVersion: palisade.dev/v1alpha1
kind: ApiMonitor
metadata:
  name: {MONITOR}
  namespace: {NAMESPACE}
spec:
  selector:
    matchLabels:
      app: bench-monitored
  ports: [{port}]
  capture:
    headers: true
    maxHeaderBytes: 8192
{bodies}  discovery:
    enabled: true
"#
    );
    if let Some(enabled) = tls {
        yaml.push_str(&format!("  tls:\n    enabled: {enabled}\n"));
    }
    let path = cp.dir().join("bench-apimonitor.yaml");
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    cp.kubectl_ok(&["apply", "-f", &path.display().to_string()])?;
    Ok(())
}

/// Waits until the ApiMonitor's status shows `probes` capture probes attached on `node` (and, for
/// a non-zero count, that the node applied the monitor's current generation).
async fn wait_probes(cp: &ControlPlane, node: &str, probes: u64) -> Result<()> {
    wait_for_object(
        cp,
        &format!("{probes} probes attached on {node}"),
        ("apimonitor", NAMESPACE, MONITOR),
        STATUS_WAIT,
        |m| {
            let details = m.pointer("/status/nodes/details")?.as_array()?;
            let d = details.iter().find(|d| d["node"] == node)?;
            let attached = d["probesAttached"].as_u64().unwrap_or(0);
            let in_sync = d["inSync"].as_bool().unwrap_or(false);
            (attached == probes && (probes == 0 || in_sync)).then_some(())
        },
    )
    .await
}

/// Checks with the kernel (BPF_PROG_QUERY) that the monitored pod's cgroup has one ingress and
/// one egress program when `attached`, none otherwise, and that the other pod's has none. Link
/// release after the agent exits may take a moment: polls for up to 10 s.
async fn check_kernel_attach(monitored: &BenchPod, unmonitored: &BenchPod, attached: bool) -> Result<()> {
    let want = if attached { (1, 1) } else { (0, 0) };
    let start = Instant::now();
    loop {
        let mon = bpf::cgroup_skb_programs(&monitored.pod.cgroup_dir)?;
        let other = bpf::cgroup_skb_programs(&unmonitored.pod.cgroup_dir)?;
        if mon == want && other == (0, 0) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(10) {
            bail!(
                "kernel: monitored pod's cgroup has {mon:?} (ingress, egress) programs, want {want:?}; unmonitored pod's has {other:?}, want (0, 0)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ApiMonitor's request count for `GET /`.
fn endpoint_count(cp: &ControlPlane) -> Result<u64> {
    let m = get_json(cp, "apimonitor", NAMESPACE, MONITOR)?;
    Ok(m.pointer("/status/endpoints/items")
        .and_then(|i| i.as_array())
        .and_then(|items| {
            items
                .iter()
                .find(|e| e["method"] == "GET" && e["path"] == "/")
                .and_then(|e| e["requests"].as_u64())
        })
        .unwrap_or(0))
}

/// Waits until the `GET /` count reaches `expected` and holds still for 1 s, or holds still for
/// 4 s, or `limit` passes; returns the last count.
async fn settled_count(cp: &ControlPlane, expected: u64, limit: Duration) -> Result<u64> {
    let start = Instant::now();
    let mut last = endpoint_count(cp)?;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = endpoint_count(cp)?;
        if now != last {
            last = now;
            since = Instant::now();
        }
        let still = since.elapsed();
        if (last >= expected && still >= Duration::from_secs(1))
            || still >= Duration::from_secs(4)
            || start.elapsed() >= limit
        {
            return Ok(last);
        }
    }
}

/// One state's measurements. `rate` is the fixed rate for the latency runs; `None` means half
/// of the monitored pod's throughput measured here (the OFF state).
async fn measure_state(
    args: &Args,
    monitored: &BenchPod,
    unmonitored: &BenchPod,
    rate: Option<f64>,
    agent: Option<u32>,
    control: &[u32],
) -> Result<StateRun> {
    let duration = Duration::from_secs(args.seconds);
    let background = quiet_gate().await?;
    let mon_run = wrk_with_cpu(args, monitored, agent, control).await?;
    let unmon_run = wrk_with_cpu(args, unmonitored, agent, control).await?;
    let (mon, nginx_mon, agent_cpu) = (mon_run.result, mon_run.nginx, mon_run.agent);
    let (unmon, nginx_unmon, agent_cpu_unmon) = (unmon_run.result, unmon_run.nginx, unmon_run.agent);
    let rate = rate.unwrap_or(mon.rps / 2.0);
    let latency_monitored = open_loop(
        args.client_cpu(),
        monitored.addr(),
        rate,
        args.connections as usize,
        duration,
    )
    .await?;
    let latency_unmonitored = open_loop(
        args.client_cpu(),
        unmonitored.addr(),
        rate,
        args.connections as usize,
        duration,
    )
    .await?;
    let busy_after = measure::machine_busy_percent(Duration::from_secs(1)).await?;
    if busy_after >= BUSY_THRESHOLD {
        step!("note: the machine was {busy_after:.0} % busy right after this measurement (other work on it)");
    }
    Ok(StateRun {
        nginx_monitored_us: per_request_us(nginx_mon.stat_ns, mon.requests),
        nginx_unmonitored_us: per_request_us(nginx_unmon.stat_ns, unmon.requests),
        agent_us: agent_cpu.map(|c| per_request_us(c.sched_ns, mon.requests)),
        agent_unmonitored_us: agent_cpu_unmon.map(|c| per_request_us(c.sched_ns, unmon.requests)),
        background_busy_percent: background,
        control_plane_monitored_percent: mon_run.control_plane_percent,
        control_plane_unmonitored_percent: unmon_run.control_plane_percent,
        monitored: mon,
        unmonitored: unmon,
        latency_monitored,
        latency_unmonitored,
        disturbed: background >= BUSY_THRESHOLD || busy_after >= BUSY_THRESHOLD,
        busy_after_percent: busy_after,
    })
}

/// One more open-loop run against the monitored pod at `rate`, with the kernel's BPF run-time
/// statistics on for it alone: the capture programs' run time and the agent's CPU per request.
async fn direct_cost(args: &Args, pod: &BenchPod, rate: f64, agent: u32) -> Result<DirectCost> {
    let (ingress_ids, egress_ids) = bpf::cgroup_skb_program_ids(&pod.pod.cgroup_dir)?;
    let stats = bpf::RunTimeStats::enable()?;
    let in0 = bpf::ProgramRuns::read(&ingress_ids)?;
    let eg0 = bpf::ProgramRuns::read(&egress_ids)?;
    let a0 = CpuSample::read(agent)?;
    let run = open_loop(
        args.client_cpu(),
        pod.addr(),
        rate,
        args.connections as usize,
        Duration::from_secs(args.seconds),
    )
    .await?;
    let a1 = CpuSample::read(agent)?;
    let in1 = bpf::ProgramRuns::read(&ingress_ids)?;
    let eg1 = bpf::ProgramRuns::read(&egress_ids)?;
    drop(stats);
    let direct = DirectCost {
        requests: run.completed,
        ingress: in1.since(&in0),
        egress: eg1.since(&eg0),
        agent_ns: a1.since(&a0).sched_ns,
    };
    if direct.ingress.runs == 0 || direct.egress.runs == 0 {
        bail!("the kernel counted no run of the capture programs with statistics on ({direct:?})");
    }
    Ok(direct)
}

/// Before measuring, waits (at most 10 s) for a second in which the machine is less than 25 %
/// busy (it is shared; other work skews both states alike but widens the spread). Returns the
/// busy share of the last second, recorded with the figures.
async fn quiet_gate() -> Result<f64> {
    let mut busy = 100.0;
    for _ in 0..10 {
        busy = measure::machine_busy_percent(Duration::from_secs(1)).await?;
        if busy < BUSY_THRESHOLD {
            break;
        }
    }
    if busy >= BUSY_THRESHOLD {
        step!("note: the machine was {busy:.0} % busy before this measurement (other work on it)");
    }
    Ok(busy)
}

/// wrk against `pod`, with the CPU its nginx worker (and the agent, if given) used meanwhile.
/// One wrk run and the CPU used meanwhile.
struct WrkRun {
    result: WrkResult,
    nginx: CpuSample,
    agent: Option<CpuSample>,
    /// etcd, kube-apiserver and the operator together, in percent of one CPU.
    control_plane_percent: f64,
}

/// wrk against `pod`, with the CPU its nginx worker, the agent (if given) and the control plane
/// (`control`: pids) used meanwhile.
async fn wrk_with_cpu(args: &Args, pod: &BenchPod, agent: Option<u32>, control: &[u32]) -> Result<WrkRun> {
    let control_cpu = || -> u64 {
        control
            .iter()
            .filter_map(|&pid| CpuSample::read(pid).ok())
            .map(|c| c.sched_ns)
            .sum()
    };
    let w0 = CpuSample::read(pod.worker)?;
    let a0 = agent.map(CpuSample::read).transpose()?;
    let c0 = control_cpu();
    let started = Instant::now();
    let result = measure::wrk(
        &pod.url(),
        1,
        args.connections,
        Duration::from_secs(args.seconds),
        args.client_cpu(),
    )
    .await?;
    let wall = started.elapsed();
    let c1 = control_cpu();
    let w1 = CpuSample::read(pod.worker)?;
    let a1 = agent.map(CpuSample::read).transpose()?;
    Ok(WrkRun {
        result,
        nginx: w1.since(&w0),
        agent: a0.zip(a1).map(|(a0, a1)| a1.since(&a0)),
        control_plane_percent: 100.0 * c1.saturating_sub(c0) as f64 / wall.as_nanos().max(1) as f64,
    })
}

/// The pids of the control plane (etcd and kube-apiserver: every process whose command line
/// mentions the control plane's directory) and the operator.
fn control_plane_pids(stack: &Stack) -> Vec<u32> {
    let dir = stack.cp.dir().display().to_string();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains(&dir))
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default();
    let me = std::process::id();
    pids.retain(|&p| p != me);
    pids.push(stack.operator.process.pid());
    pids
}

/// Runs the open-loop generator on a thread of its own and summarizes it.
async fn open_loop(
    cpu: Option<usize>,
    addr: SocketAddr,
    rate: f64,
    connections: usize,
    duration: Duration,
) -> Result<Latency> {
    let spec = loadgen::OpenLoop {
        addr,
        rate,
        connections,
        warmup: Duration::from_millis(500),
        duration,
        cpu,
    };
    let machine_before = measure::MachineCpu::read()?;
    let thread = std::thread::Builder::new()
        .name("loadgen".into())
        .spawn(move || loadgen::run(&spec))
        .context("starting the load generator thread")?;
    let result = tokio::task::spawn_blocking(move || thread.join())
        .await
        .context("joining the load generator")?
        .map_err(|_| anyhow::anyhow!("the load generator panicked"))??;
    let machine = measure::MachineCpu::read()?;
    if result.latencies_ns.is_empty() {
        bail!("the open-loop run against {addr} recorded no latency ({result:?})");
    }
    Ok(Latency {
        rate,
        p50_us: result.quantile_us(0.50).unwrap_or(f64::NAN),
        p99_us: result.quantile_us(0.99).unwrap_or(f64::NAN),
        completed: result.completed,
        client_cpu_us: per_request_us(result.cpu_ns, result.completed),
        machine_busy_percent: machine.busy_percent_since(&machine_before),
        machine_cpu_us: per_request_us(machine.busy_ns_since(&machine_before), result.completed),
        errors: result.errors
            + result.non_200
            + result.scheduled.saturating_sub(result.completed + result.errors),
    })
}

fn environment(args: &Args, agent_binary: &std::path::Path, elapsed: Duration) -> Environment {
    let run = |program: &str, argv: &[&str]| -> String {
        std::process::Command::new(program)
            .args(argv)
            .output()
            .map(|o| {
                let out = String::from_utf8_lossy(&o.stdout).trim().to_string();
                if out.is_empty() {
                    String::from_utf8_lossy(&o.stderr).trim().to_string()
                } else {
                    out
                }
            })
            .unwrap_or_default()
    };
    let root = palisade_e2e::workspace_root();
    let root = root.display().to_string();
    let commit = run("git", &["-C", &root, "rev-parse", "--short", "HEAD"]);
    let dirty = !run(
        "git",
        &["-C", &root, "status", "--porcelain", "--untracked-files=no"],
    )
    .is_empty();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    Environment {
        date: run("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        nginx: run("nginx", &["-v"]).replace("nginx version: ", ""),
        wrk: run("wrk", &["-v"])
            .lines()
            .next()
            .unwrap_or("wrk")
            .split(" Copyright")
            .next()
            .unwrap_or("wrk")
            .trim()
            .to_string(),
        commit: if dirty {
            format!("{commit} (with uncommitted changes)")
        } else {
            commit
        },
        agent_binary: agent_binary
            .strip_prefix(palisade_e2e::workspace_root())
            .unwrap_or(agent_binary)
            .display()
            .to_string(),
        rounds: args.rounds,
        seconds: args.seconds,
        connections: args.connections,
        runtime_secs: elapsed.as_secs(),
        pinning: if args.pinned() {
            "nginx workers on CPU 0; wrk and the open-loop generator on CPU 1; the agent, the control plane and the rest of the machine unpinned".into()
        } else {
            "none (--no-pin)".into()
        },
        ..Environment::default()
    }
}
