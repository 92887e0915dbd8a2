//! `palisade-bench --tls`: what TLS plaintext capture (uprobes on OpenSSL in the pod's processes)
//! costs an HTTPS server, and how many uprobe hits it takes per request.
//!
//! One nginx pod serving HTTPS (TLS 1.3, self-signed ECDSA certificate, system OpenSSL), one
//! ApiMonitor on its port. Each round measures TLS capture **OFF** (the monitor with
//! `tls.enabled: false`) and then ON (`tls.enabled: true`) with each probe placement of the
//! agent (`--tls-probes exported`: `SSL_read`/`SSL_write` and their `_ex` twins; `calls`:
//! OpenSSL's internal read and write functions; `keys`: `SSL_do_handshake` only, the agent
//! decrypting the captured records, which is what the default `auto` does while the
//! connections decrypt), the agent restarted between them, their order rotating by
//! round. The agent runs in every state: its `cgroup_skb` capture of the
//! (encrypted) port and everything else stay the same, so the differences are the uprobes and
//! the plaintext they feed to the agent. The agent-off cost of the `cgroup_skb` capture itself is
//! what docs/benchmarks.md measures.
//!
//! Checked in the kernel, not only in the status: the agent's TLS counters (uprobe program runs)
//! must not move during an OFF state and must move during an ON state.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use palisade_common::CaptureCounters;
use palisade_e2e::palisade::{binaries, get_json, start_agent_with_metrics, wait_for_object, Stack};

use crate::measure::WrkResult;
use crate::nginx::{Scheme, TLS_PORT};
use crate::report::{self, median};
use crate::uprobes::{self, ReturnPath};
use crate::{
    apply_monitor, bpf, control_plane_pids, environment, loadavg, per_request_us, publish_report, quiet_gate,
    settled_count, start_with_one_pod, wrk_with_cpu, Args, BenchPod, BUSY_THRESHOLD, MONITOR, NAMESPACE,
    STATUS_WAIT,
};

/// The agent's TLS counters over one wrk run.
#[derive(Debug, Clone, Copy, Default)]
struct TlsCounts {
    /// Uprobe program runs at function entry (SSL_read/_ex, SSL_write/_ex, SSL_free).
    entry_hits: u64,
    /// Uretprobe program runs (returns of SSL_read/_ex, SSL_write/_ex).
    return_hits: u64,
    /// Calls that moved plaintext.
    data_calls: u64,
    /// Records the kernel could not put in the ring buffer (all programs).
    records_lost: u64,
}

impl TlsCounts {
    fn between(before: &CaptureCounters, after: &CaptureCounters) -> TlsCounts {
        TlsCounts {
            entry_hits: after.tls_entry_hits.saturating_sub(before.tls_entry_hits),
            return_hits: after.tls_return_hits.saturating_sub(before.tls_return_hits),
            data_calls: after.tls_data_calls.saturating_sub(before.tls_data_calls),
            records_lost: after.records_lost.saturating_sub(before.records_lost),
        }
    }
}

/// One state (TLS capture OFF or ON) of one round.
#[derive(Debug, Clone, Default)]
struct TlsState {
    wrk: WrkResult,
    /// nginx worker CPU per request, µs.
    nginx_us: f64,
    /// Agent CPU per request, µs.
    agent_us: f64,
    counts: TlsCounts,
    /// Busy share of the machine in the second before (other work), %.
    background_busy_percent: f64,
}

impl TlsState {
    fn per_request(&self, n: u64) -> f64 {
        if self.wrk.requests == 0 {
            f64::NAN
        } else {
            n as f64 / self.wrk.requests as f64
        }
    }
    /// Uprobe program runs per request: each is one breakpoint trap at entry, or one return
    /// through the uretprobe trampoline.
    fn hits_per_request(&self) -> f64 {
        self.per_request(self.counts.entry_hits + self.counts.return_hits)
    }
}

/// The agent's `--tls-probes` placements, as measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// `SSL_read`, `SSL_read_ex`, `SSL_write`, `SSL_write_ex` (the reference).
    Exported = 0,
    /// The internal read and write functions.
    Internal = 1,
    /// `SSL_do_handshake` only; the agent decrypts the records `cgroup_skb` captures (the
    /// agent's default, `auto`, does this while connections decrypt).
    Keys = 2,
}

const PLACEMENTS: [Placement; 3] = [Placement::Exported, Placement::Internal, Placement::Keys];

impl Placement {
    fn agent_flag(self) -> &'static str {
        match self {
            Placement::Exported => "exported",
            Placement::Internal => "calls",
            Placement::Keys => "keys",
        }
    }
}

#[derive(Debug, Clone)]
struct TlsRound {
    off: TlsState,
    /// The ON states, indexed by [`Placement`].
    on: [TlsState; 3],
    /// Requests wrk completed in the ON states, and how much the monitor's `GET /` count grew
    /// over them.
    sent: u64,
    counted: u64,
}

impl TlsRound {
    fn on(&self, placement: Placement) -> &TlsState {
        &self.on[placement as usize]
    }
    fn ratio(&self, placement: Placement) -> f64 {
        self.on(placement).wrk.rps / self.off.wrk.rps
    }
    fn disturbed(&self) -> bool {
        std::iter::once(&self.off)
            .chain(&self.on)
            .any(|s| s.background_busy_percent >= BUSY_THRESHOLD)
    }
}

/// Applies the monitor with `tls.enabled` = `tls` and waits until the node runs its current
/// generation and, with TLS capture on, until the status reports the pod covered.
async fn set_tls(stack: &Stack, args: &Args, tls: bool) -> Result<()> {
    apply_monitor(&stack.cp, TLS_PORT, Some(tls), None)?;
    let generation = get_json(&stack.cp, "apimonitor", NAMESPACE, MONITOR)?
        .pointer("/metadata/generation")
        .and_then(|g| g.as_u64())
        .context("the ApiMonitor has no metadata.generation")?;
    wait_for_object(
        &stack.cp,
        &format!("TLS capture {} on {}", if tls { "on" } else { "off" }, args.node),
        ("apimonitor", NAMESPACE, MONITOR),
        STATUS_WAIT,
        |m| {
            let observed = m.pointer("/status/observedGeneration")?.as_u64()?;
            let details = m.pointer("/status/nodes/details")?.as_array()?;
            let d = details.iter().find(|d| d["node"] == args.node.as_str())?;
            let in_sync = d["inSync"].as_bool()?;
            let covered = m
                .pointer("/status/tls/coveredPods")
                .and_then(|c| c.as_u64())
                .unwrap_or(0);
            (observed == generation && in_sync && covered == u64::from(tls)).then_some(())
        },
    )
    .await?;
    Ok(())
}

/// One state: wrk over HTTPS with the CPU of nginx and the agent, and the agent's TLS counters
/// around it.
async fn measure_state(args: &Args, pod: &BenchPod, agent: u32, control: &[u32]) -> Result<TlsState> {
    let background_busy_percent = quiet_gate().await?;
    let before = bpf::agent_counters(agent)?.unwrap_or_default();
    let run = wrk_with_cpu(args, pod, Some(agent), control).await?;
    let after = bpf::agent_counters(agent)?.unwrap_or_default();
    if run.result.errors > 0 {
        bail!("wrk over HTTPS: {} errors", run.result.errors);
    }
    Ok(TlsState {
        nginx_us: per_request_us(run.nginx.stat_ns, run.result.requests),
        agent_us: run
            .agent
            .map_or(f64::NAN, |a| per_request_us(a.sched_ns, run.result.requests)),
        counts: TlsCounts::between(&before, &after),
        wrk: run.result,
        background_busy_percent,
    })
}

/// Restarts the agent with `placement` and waits until its probes run (a short wrk run moves
/// the new agent's TLS counters; that run is also the warm-up).
async fn restart_agent(
    stack: &mut Stack,
    args: &Args,
    pod: &BenchPod,
    placement: Placement,
    name: &str,
) -> Result<u32> {
    stack.agent.kill();
    let (agent, _metrics) = start_agent_with_metrics(
        &stack.cp,
        &stack.operator,
        &args.node,
        name,
        &[],
        &["--tls-probes", placement.agent_flag()],
    )?;
    stack.agent = agent;
    let pid = stack.agent.pid();
    let started = Instant::now();
    loop {
        let before = bpf::agent_counters(pid)?.unwrap_or_default();
        pod.unmeasured_load(args, Duration::from_secs(1)).await?;
        let after = bpf::agent_counters(pid)?.unwrap_or_default();
        if TlsCounts::between(&before, &after).entry_hits > 0 {
            return Ok(pid);
        }
        if started.elapsed() > STATUS_WAIT {
            bail!("the restarted agent ({placement:?} probes) did not attach TLS capture within {STATUS_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One ON state: the monitor's `GET /` count settled before and after, for completeness.
async fn measure_on(
    stack: &Stack,
    args: &Args,
    pod: &BenchPod,
    agent: u32,
    control: &[u32],
) -> Result<(TlsState, u64)> {
    let before = settled_count(&stack.cp, 0, Duration::from_secs(10)).await?;
    let state = measure_state(args, pod, agent, control).await?;
    if state.counts.entry_hits == 0 {
        bail!("TLS capture is on but no uprobe ran: nothing is attached");
    }
    let after = settled_count(&stack.cp, before + state.wrk.requests, Duration::from_secs(20)).await?;
    Ok((state, after.saturating_sub(before)))
}

pub async fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let load_before = loadavg();
    let agent_binary = binaries()?.join("palisade-node-agent");
    step!("tls: agent binary {}", agent_binary.display());
    let scheme = if args.tls12 {
        Scheme::Https12
    } else {
        Scheme::Https
    };
    let (mut stack, pod) = start_with_one_pod(args, "monitored", "bench-monitored", scheme).await?;
    step!(
        "tls: pod {} (nginx worker {}), {}",
        pod.pod.ip,
        pod.worker,
        pod.url()
    );
    set_tls(&stack, args, true).await?;
    let mut placement = Placement::Exported;
    let mut agent = restart_agent(&mut stack, args, &pod, placement, "agent-exported-0").await?;
    let return_path = uprobes::return_path(pod.worker)?;
    step!(
        "tls: uretprobe return path in the nginx worker: {}",
        return_path.describe()
    );
    let control = control_plane_pids(&stack);

    let mut rounds: Vec<TlsRound> = Vec::new();
    for index in 1..=args.rounds {
        set_tls(&stack, args, false).await?;
        let off = measure_state(args, &pod, agent, &control).await?;
        if off.counts.entry_hits + off.counts.return_hits > 0 {
            bail!(
                "round {index}: TLS capture is off but the uprobes ran {} times: they were not detached",
                off.counts.entry_hits + off.counts.return_hits
            );
        }
        set_tls(&stack, args, true).await?;
        // The placements in turn, starting with the one the agent runs: each round begins where
        // the last ended (one restart fewer), so every placement comes first, second and third.
        let start = placement as usize;
        let mut on: [TlsState; 3] = Default::default();
        let (mut sent, mut counted) = (0, 0);
        for step in 0..PLACEMENTS.len() {
            let next = PLACEMENTS[(start + step) % PLACEMENTS.len()];
            if next != placement {
                placement = next;
                agent = restart_agent(
                    &mut stack,
                    args,
                    &pod,
                    placement,
                    &format!("agent-{}-{index}", placement.agent_flag()),
                )
                .await?;
            }
            let (state, grew) = measure_on(&stack, args, &pod, agent, &control).await?;
            sent += state.wrk.requests;
            counted += grew;
            on[placement as usize] = state;
        }
        let round = TlsRound {
            off,
            on,
            sent,
            counted,
        };
        step!("tls round: {}", round_row(index as usize, &round));
        rounds.push(round);
    }
    stack
        .agent
        .ensure_running()
        .context("the agent died under load")?;

    let mut env = environment(args, &agent_binary, started.elapsed());
    env.load_before = load_before;
    env.load_after = loadavg();
    env.rounds_run = rounds.len() as u32;
    if args.pinned() {
        env.pinning = "the nginx worker on CPU 0; wrk on CPU 1; the agent, the control plane and the rest of the machine unpinned".into();
    }
    let doc = document(&env, &rounds, &return_path, args.tls12);
    let path = if args.tls12 {
        "docs/benchmarks-tls12.md"
    } else {
        "docs/benchmarks-tls.md"
    };
    publish_report(args, path, &doc)?;
    drop(pod);
    drop(stack);
    Ok(())
}

/// The medians of a round figure over the rounds judged (undisturbed ones when at least 3).
fn medians(rounds: &[TlsRound], f: impl Fn(&TlsRound) -> f64) -> (f64, f64, f64) {
    let v: Vec<f64> = rounds.iter().map(f).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(&v), lo, hi)
}

/// The report; `tls12`: nginx spoke TLS 1.2 only (`--tls12`).
fn document(env: &report::Environment, all: &[TlsRound], return_path: &ReturnPath, tls12: bool) -> String {
    let (version, flag) = if tls12 {
        ("TLS 1.2", " --tls12")
    } else {
        ("TLS 1.3", "")
    };
    let clean: Vec<TlsRound> = all.iter().filter(|r| !r.disturbed()).cloned().collect();
    let rounds = if clean.len() >= 3 { &clean[..] } else { all };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# TLS capture benchmark ({version}): what the OpenSSL uprobes cost\n"
    );
    let _ = writeln!(
        out,
        "<!-- Generated by `bash hack/bench-overhead.sh --tls{flag}` (bench/src/tls.rs); re-run it to refresh. -->\n"
    );
    let _ = writeln!(
        out,
        "```sh\nbash hack/bench-overhead.sh --tls{flag} --rounds {} --seconds {}\n```\n",
        env.rounds, env.seconds
    );
    let server = format!(
        "{} (one worker, HTTPS: {version} only, ECDSA P-256 self-signed certificate, system OpenSSL; hello world, keep-alive, `access_log off`) in one pod",
        env.nginx
    );
    let clients = format!("{} over HTTPS, keep-alive (saturation)", env.wrk);
    let run = format!(
        "{} rounds × (TLS capture OFF, ON with the exported-function probes, ON with the internal-function probes, ON with session keys), {} s per measurement, {} connections, {} s in total",
        env.rounds_run, env.seconds, env.connections, env.runtime_secs
    );
    report::environment_table(&mut out, env, &server, &clients, &run);
    let _ = writeln!(
        out,
        "uretprobe return path in the nginx worker: {}.\n",
        return_path.describe()
    );

    let _ = writeln!(out, "## What is measured\n");
    let _ = writeln!(out, "The end-to-end stack (etcd, kube-apiserver, the operator, one node agent, the stand-in kubelet) and one pod `demo/monitored` running nginx with HTTPS on port {TLS_PORT}, selected by the ApiMonitor `demo/bench` (port {TLS_PORT}, headers captured). Each round measures four states:\n");
    let _ = writeln!(out, "- **OFF**: the monitor with `tls.enabled: false`.");
    let _ = writeln!(out, "- **exported**: `tls.enabled: true`, the agent started with `--tls-probes exported`: entry and return probes on `SSL_read`, `SSL_write` and their `_ex` twins (how TLS capture worked before; the reference).");
    let _ = writeln!(out, "- **internal**: the same with `--tls-probes calls`: entry and return probes on the internal functions both twins call (found in the wrappers' machine code, node-agent/src/capture/openssl_entry.rs).");
    let _ = writeln!(out, "- **keys**: the same with `--tls-probes keys`: entry and return probes on `SSL_do_handshake` only, which copy the `SSL` object once per completed handshake; the agent decrypts the TLS 1.3 and 1.2 records its `cgroup_skb` programs capture (node-agent/src/http/tls_decrypt.rs; TLS 1.2's master secret from the `SSL_SESSION`, which the probe copies once the agent has found the pointer to it). The agent's default, `auto`, works the same until a process has a connection it cannot decrypt (a CBC suite, TLS 1.1): then it probes that process's reads and writes as **internal** does.\n");
    let _ = writeln!(out, "The agent is restarted between the ON states (their order rotates by round) and runs in every state with the same `cgroup_skb` capture of the encrypted port, so the differences are the uprobes and the plaintext they feed to the agent (what the agent's `cgroup_skb` capture costs against no agent is in [benchmarks.md](benchmarks.md)). The benchmark waits until the node runs the monitor's new generation (and reports the pod covered for ON) and checks in the kernel: the agent's TLS counters (uprobe program runs, read from its per-CPU counters maps) must not move in an OFF state and must move in the ON states, or the run stops.\n");
    let _ = writeln!(out, "In each state: `wrk -t1 -c{c} -d{d}s https://…/` (keep-alive; {c} TLS handshakes at the start of each run, none per request); the nginx worker's `utime + stime` and the agent's `schedstat` run time over the run, per request wrk completed; uprobe program runs per request (entry and return, from the counters); completeness in the ON states: how much the monitor's `GET /` count grew, against the requests wrk completed (it may exceed them by up to {c}: requests in flight when wrk stops).\n", c = env.connections, d = env.seconds);

    let fmt = |digits: usize, f: &dyn Fn(&TlsRound) -> f64| {
        let (m, lo, hi) = medians(rounds, f);
        if m.is_nan() {
            "–".to_string()
        } else {
            format!("{m:.digits$} ({lo:.digits$} … {hi:.digits$})")
        }
    };
    let ratio_of = |p: Placement| medians(rounds, |r| r.ratio(p)).0;
    let sent: u64 = all.iter().map(|r| r.sent).sum();
    let counted: u64 = all.iter().map(|r| r.counted).sum();
    let lost: u64 = all
        .iter()
        .map(|r| r.on.iter().map(|s| s.counts.records_lost).sum::<u64>())
        .sum();

    let _ = writeln!(out, "## Results\n");
    let left_out = all.len() - rounds.len();
    let _ = writeln!(
        out,
        "Medians over {} rounds (min … max){}.\n",
        rounds.len(),
        if left_out > 0 {
            format!("; {left_out} round(s) disturbed by other work on the machine are in the table below but left out")
        } else if clean.len() < all.len() {
            format!(
                "; {} of them disturbed by other work on the machine (at least {BUSY_THRESHOLD:.0} % busy before a state): with fewer than 3 undisturbed rounds the medians take them all, so read the spread",
                all.len() - clean.len()
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "| figure | OFF | exported (reference) | internal | keys (the default while connections decrypt) |\n|---|---|---|---|---|"
    );
    // One row: the figure per state; `f(state, off)` may use the OFF state of the same round.
    let row = |out: &mut String,
               label: &str,
               digits: usize,
               off_column: bool,
               f: &dyn Fn(&TlsState, &TlsState) -> f64| {
        let off = if off_column {
            fmt(digits, &|r| f(&r.off, &r.off))
        } else {
            String::new()
        };
        let _ = write!(out, "| {label} | {off} |");
        for p in PLACEMENTS {
            let _ = write!(out, " {} |", fmt(digits, &|r| f(r.on(p), &r.off)));
        }
        out.push('\n');
    };
    row(&mut out, "throughput, req/s", 0, true, &|s, _| s.wrk.rps);
    let _ = write!(out, "| **throughput ratio against OFF** (goal ≥ 0.6) | |");
    for p in PLACEMENTS {
        let _ = write!(out, " {} {} |", fmt(3, &|r| r.ratio(p)), met(ratio_of(p)));
    }
    out.push('\n');
    row(&mut out, "nginx worker CPU per request, µs", 1, true, &|s, _| {
        s.nginx_us
    });
    row(
        &mut out,
        "nginx CPU added per request, µs",
        1,
        false,
        &|s, off| s.nginx_us - off.nginx_us,
    );
    row(&mut out, "agent CPU per request, µs", 2, true, &|s, _| {
        s.agent_us
    });
    row(
        &mut out,
        "agent CPU added per request, µs",
        2,
        false,
        &|s, off| s.agent_us - off.agent_us,
    );
    row(
        &mut out,
        "uprobe program runs per request at entry",
        2,
        true,
        &|s, _| s.per_request(s.counts.entry_hits),
    );
    row(
        &mut out,
        "uprobe program runs per request at return",
        2,
        true,
        &|s, _| s.per_request(s.counts.return_hits),
    );
    row(
        &mut out,
        "calls that moved plaintext, per request",
        2,
        false,
        &|s, _| s.per_request(s.counts.data_calls),
    );
    row(
        &mut out,
        "nginx CPU added per uprobe program run, µs",
        1,
        false,
        &|s, off| {
            let hits = s.hits_per_request();
            if hits < 0.5 {
                f64::NAN // per handshake, not per request: not comparable
            } else {
                (s.nginx_us - off.nginx_us) / hits
            }
        },
    );
    out.push('\n');
    let _ = writeln!(
        out,
        "Completeness over all ON states: the monitor counted {counted} of {sent} requests wrk completed ({:.2} %); kernel ring-buffer records lost: {lost}.\n",
        100.0 * counted as f64 / sent.max(1) as f64
    );

    out.push_str(WHERE_THE_TIME_GOES);
    let _ = writeln!(out, "### Per round\n");
    let _ = writeln!(out, "| round | OFF req/s | ratio exported / internal / keys | nginx µs/req OFF / exported / internal / keys | agent µs/req OFF / exported / internal / keys | uprobe runs/req exported / internal / keys | counted / completed |\n|---|---|---|---|---|---|---|");
    for (i, r) in all.iter().enumerate() {
        let _ = writeln!(out, "{}", round_row(i + 1, r));
    }
    out
}

/// The explanation under the figures (measured by the counters above and by
/// bench/uprobe-cost/run.sh; see docs/ebpf-toolchain.md).
const WHERE_THE_TIME_GOES: &str = "## Where the time goes\n\nPer request nginx calls `SSL_read` twice (the first returns the request, the second returns `SSL_ERROR_WANT_READ`: nginx reads until the socket would block) and `SSL_write` once: 3 calls, each probed at entry and at return, so 6 uprobe program runs per request in the exported and internal states, as the counters show. What differs is what one hit costs:\n\n- **exported**: OpenSSL 3's `SSL_read` and `SSL_write` begin with `sub $0x18,%rsp`, which the kernel cannot emulate: each entry hit is a breakpoint trap *and* a single-step trap (the instruction runs out of line), so 3 calls make 6 traps plus 3 returns through the uretprobe trampoline. `bench/uprobe-cost/run.sh` measures one such hit at tens of µs of wall time on this VM (about 11 µs of it charged to the process as CPU time), against about 4 µs (1 µs CPU) for a hit on an emulated instruction (docs/ebpf-toolchain.md).\n- **internal**: `ssl_read_internal` and `ssl_write_internal` begin with `push %r13` / `push %r14`, which the kernel emulates inside the breakpoint trap: 3 traps plus 3 returns per request, no single-step. They carry the `_ex` calling convention, so one probe pair covers `SSL_read` and `SSL_read_ex` alike.\n- Returns go through the `uretprobe` system call (see above), not a breakpoint: a return probe adds about 3 µs of wall time per call in the micro-benchmark.\n- The agent: in OFF it parses the encrypted bytes its `cgroup_skb` programs capture on the port (and drops them); in ON it also receives the plaintext (2 records per request) and parses, templates and checks each request. On 2 vCPUs that CPU is taken from nginx and wrk, so it weighs on the ratio too.\n- **keys**: no probe runs per request at all. nginx calls `SSL_do_handshake` a few times per connection (wrk opens 32 per run, then keeps them alive); when it returns 1 the return probe copies 4 KiB of the `SSL` object, which holds the connection's client random and its TLS 1.3 traffic secrets (for TLS 1.2, once the agent has found where the `SSL` object points to its `SSL_SESSION`, the start of that session too, with the master secret). The agent finds the secrets in that copy by trial decryption (once per OpenSSL build), then decrypts every record it already captures with `cgroup_skb` (AES-GCM, a few hundred ns per record with AES-NI) and parses the plaintext as it would a plain connection, with the real client address. nginx's CPU per request is the OFF figure within noise; what remains is the agent's decryption and parsing, on the machine's other CPU. TLS 1.2 connections with an AES-GCM or ChaCha20-Poly1305 suite are decrypted the same way ([benchmarks-tls12.md](benchmarks-tls12.md): `--tls12`); a CBC suite is not (counted in `palisade_agent_messages_dropped_total{reason=\"tls_not_decrypted\"}`, and the process falls back to the **internal** probes).\n\nWhat would lower the per-call placements further: capturing `SSL_write` at entry only (its length argument is what a blocking write sends; non-blocking retries after `SSL_ERROR_WANT_WRITE` would then be captured twice, so it needs a way to tell retries apart) saves one return per request; the `SSL_read` that returns `WANT_READ` is a full entry and return for nothing but cannot be told apart before it returns. Zero traps per request needed another design, which the **keys** state measures.\n\n";

/// A round's row of the per-round table (also the progress line).
fn round_row(index: usize, r: &TlsRound) -> String {
    let each = |f: &dyn Fn(&TlsState) -> String| PLACEMENTS.map(|p| f(r.on(p))).join(" / ");
    format!(
        "| {index}{} | {:.0} | {} | {:.1} / {} | {:.2} / {} | {} | {} / {} |",
        if r.disturbed() { " (disturbed)" } else { "" },
        r.off.wrk.rps,
        PLACEMENTS.map(|p| format!("{:.3}", r.ratio(p))).join(" / "),
        r.off.nginx_us,
        each(&|s| format!("{:.1}", s.nginx_us)),
        r.off.agent_us,
        each(&|s| format!("{:.2}", s.agent_us)),
        each(&|s| format!("{:.2}", s.hits_per_request())),
        r.counted,
        r.sent,
    )
}

fn met(ratio: f64) -> &'static str {
    if ratio >= 0.6 {
        "**met**"
    } else {
        "**not met**"
    }
}
