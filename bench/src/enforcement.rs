//! `palisade-bench --enforcement`: what the enforcement programs cost the traffic they let
//! through, and how long `kubectl apply` of an ApiIsolation takes to reach the node.
//!
//! One nginx pod, no ApiMonitor (so capture costs nothing here). Each round measures three
//! states: OFF (no enforcement program on the pod's cgroup), INGRESS (an ApiIsolation isolates
//! the pod: the ingress program) and BOTH (the same with `denyEgress`: ingress and egress
//! programs). The load generator runs on the node, whose addresses the isolation allows, so every
//! request is allowed traffic that pays the programs' lookups. Each state is measured with
//! keep-alive connections (the per-packet path) and with one connection per request
//! (`Connection: close`: every SYN is looked up in the allow-list trie). Ratios are against OFF
//! within a round.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use palisade_e2e::palisade::{wait_for_object, Stack};

use crate::measure::{self, WrkResult};
use crate::{bpf, Args, BenchPod, NAMESPACE};

const ISOLATION: &str = "bench-quarantine";

/// Throughput of one state, keep-alive and one connection per request.
struct StateFigures {
    keep_alive: WrkResult,
    new_connections: WrkResult,
}

struct RoundFigures {
    off: StateFigures,
    ingress: StateFigures,
    both: StateFigures,
    /// `kubectl apply` of the isolation -> the ingress program attached to the pod's cgroup.
    apply_to_attached: Duration,
}

impl RoundFigures {
    /// The round as logged and tabled: keep-alive OFF req/s, ingress and both ratios; the same
    /// with one connection per request; apply -> attached in ms.
    fn row(&self) -> [f64; 7] {
        let (off, ingress, both) = (&self.off, &self.ingress, &self.both);
        [
            off.keep_alive.rps,
            ingress.keep_alive.rps / off.keep_alive.rps,
            both.keep_alive.rps / off.keep_alive.rps,
            off.new_connections.rps,
            ingress.new_connections.rps / off.new_connections.rps,
            both.new_connections.rps / off.new_connections.rps,
            self.apply_to_attached.as_secs_f64() * 1e3,
        ]
    }
}

fn isolation_yaml(deny_egress: bool) -> String {
    format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: ApiIsolation\nmetadata: {{name: {ISOLATION}, namespace: {NAMESPACE}}}\n\
         spec:\n  workloadSelector: {{matchLabels: {{app: bench-protected}}}}\n  denyEgress: {deny_egress}\n"
    )
}

/// Applies the isolation and waits until the kernel has `programs` on the pod and the status is
/// Active; returns how long until the programs were attached.
async fn isolate(stack: &Stack, pod: &BenchPod, deny_egress: bool, programs: (u32, u32)) -> Result<Duration> {
    let file = stack.cp.dir().join("bench-isolation.yaml");
    std::fs::write(&file, isolation_yaml(deny_egress))
        .with_context(|| format!("writing {}", file.display()))?;
    let applied = Instant::now();
    stack
        .cp
        .kubectl_ok(&["apply", "-f", &file.display().to_string()])?;
    wait_programs(pod, programs).await?;
    let took = applied.elapsed();
    wait_for_object(
        &stack.cp,
        "the isolation Active",
        ("apiisolation", NAMESPACE, ISOLATION),
        Duration::from_secs(60),
        |o| (o.pointer("/status/phase")?.as_str()? == "Active").then_some(()),
    )
    .await?;
    Ok(took)
}

/// Polls the kernel (BPF_PROG_QUERY) until the pod's cgroup has `want` (ingress, egress)
/// programs; returns how long it took.
async fn wait_programs(pod: &BenchPod, want: (u32, u32)) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let got = bpf::cgroup_skb_programs(&pod.pod.cgroup_dir)?;
        if got == want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the pod's cgroup has {got:?} (ingress, egress) programs, want {want:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn measure_state(args: &Args, pod: &BenchPod) -> Result<StateFigures> {
    let busy = crate::quiet_gate().await?;
    if busy >= 25.0 {
        eprintln!("[bench] the machine was {busy:.0} % busy before this measurement: figures disturbed");
    }
    let duration = Duration::from_secs(args.seconds);
    let keep_alive = measure::wrk(&pod.url(), 1, args.connections, duration, args.client_cpu()).await?;
    let new_connections = measure::wrk_with_headers(
        &pod.url(),
        1,
        args.connections,
        duration,
        args.client_cpu(),
        &["Connection: close"],
    )
    .await?;
    for (what, r) in [
        ("keep-alive", &keep_alive),
        ("one connection per request", &new_connections),
    ] {
        if r.errors > 0 {
            bail!(
                "{what}: {} errors: allowed traffic must all get through",
                r.errors
            );
        }
    }
    Ok(StateFigures {
        keep_alive,
        new_connections,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub async fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let (stack, pod) =
        crate::start_with_one_pod(args, "protected", "bench-protected", crate::nginx::Scheme::Http).await?;
    pod.unmeasured_load(args, Duration::from_secs(2)).await?;
    let mut rounds = vec![];
    for index in 1..=args.rounds {
        wait_programs(&pod, (0, 0)).await?;
        let off = measure_state(args, &pod).await?;
        let apply_to_attached = isolate(&stack, &pod, false, (1, 0)).await?;
        let ingress = measure_state(args, &pod).await?;
        isolate(&stack, &pod, true, (1, 1)).await?;
        let both = measure_state(args, &pod).await?;
        stack
            .cp
            .kubectl_ok(&["delete", "apiisolation", "-n", NAMESPACE, ISOLATION])?;
        let r = RoundFigures {
            off,
            ingress,
            both,
            apply_to_attached,
        };
        let [off_rps, ingress, both, off_conn_rps, ingress_conn, both_conn, attach_ms] = r.row();
        eprintln!(
            "[bench] round {index}: keep-alive OFF {off_rps:.0} req/s, ingress {ingress:.3}, both {both:.3}; one connection per request OFF {off_conn_rps:.0} req/s, ingress {ingress_conn:.3}, both {both_conn:.3}; apply -> attached {attach_ms:.0} ms"
        );
        rounds.push(r);
    }
    let report = markdown(args, &rounds, started.elapsed());
    crate::publish_report(args, "docs/benchmarks-enforcement.md", &report)?;
    drop(pod);
    drop(stack);
    Ok(())
}

fn markdown(args: &Args, rounds: &[RoundFigures], elapsed: Duration) -> String {
    let ratio = |f: &dyn Fn(&RoundFigures) -> f64| median(rounds.iter().map(f).collect());
    let keep_in = ratio(&|r| r.ingress.keep_alive.rps / r.off.keep_alive.rps);
    let keep_both = ratio(&|r| r.both.keep_alive.rps / r.off.keep_alive.rps);
    let new_in = ratio(&|r| r.ingress.new_connections.rps / r.off.new_connections.rps);
    let new_both = ratio(&|r| r.both.new_connections.rps / r.off.new_connections.rps);
    let apply_ms = ratio(&|r| r.apply_to_attached.as_secs_f64() * 1e3);
    let mut out = format!(
        "# Enforcement benchmark: the cost of the enforcement programs on allowed traffic\n\n\
         Generated by `bash hack/bench-overhead.sh --enforcement --rounds {} --seconds {}` (palisade-bench, \
         release build) on {} vCPU, kernel {}, in {:.0} s. Each round measures the same nginx pod in three \
         states: OFF (no enforcement program), INGRESS (an ApiIsolation isolates it: the ingress program, \
         the one blocks use too) and BOTH (the isolation with `denyEgress`: ingress and egress programs). \
         The load generator runs on the node, which the isolation allows, so all of it is allowed traffic. \
         wrk with {} connections, server and client pinned to separate CPUs. Ratios are against OFF within \
         a round; the summary is their median. No ApiMonitor: capture is not part of these figures.\n\n\
         | median ratio against OFF | INGRESS | BOTH | goal |\n|---|---|---|---|\n\
         | keep-alive requests (per-packet path) | {keep_in:.3} | {keep_both:.3} | ≥ 0.99 |\n\
         | one TCP connection per request (every SYN checked in the allow-list trie) | {new_in:.3} | {new_both:.3} | ≥ 0.99 |\n\n\
         `kubectl apply` of an ApiIsolation → the enforcement program attached on the node: median {apply_ms:.0} ms \
         (goal ≤ 1000 ms; the maps are written right after).\n\n\
         Reading these figures: on a shared VM the ratio of one round swings by ±10–15 % either way, \
         more than the programs cost; only the medians over many rounds say something, and more \
         `--rounds` tighten them.\n\n\
         | round | keep-alive OFF req/s | INGRESS | BOTH | per-request connections OFF req/s | INGRESS | BOTH | apply → attached |\n\
         |---|---|---|---|---|---|---|---|\n",
        args.rounds,
        args.seconds,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        elapsed.as_secs_f64(),
        args.connections,
    );
    for (i, r) in rounds.iter().enumerate() {
        let [off_rps, ingress, both, off_conn_rps, ingress_conn, both_conn, attach_ms] = r.row();
        out.push_str(&format!(
            "| {} | {off_rps:.0} | {ingress:.3} | {both:.3} | {off_conn_rps:.0} | {ingress_conn:.3} | {both_conn:.3} | {attach_ms:.0} ms |\n",
            i + 1,
        ));
    }
    out
}
