//! The figures: per-round measurements, paired ON/OFF ratios, medians, and the markdown that goes
//! to stdout and to docs/benchmarks.md.

use std::fmt::Write as _;

use palisade_common::CaptureCounters;

use crate::bpf::ProgramRuns;
use crate::measure::{BodyCounts, WrkResult};

/// Goals from the benchmark issue.
pub const GOAL_MONITORED_RATIO: f64 = 0.95;
pub const GOAL_UNMONITORED_RATIO: f64 = 0.99;
pub const GOAL_ADDED_P99_US: f64 = 50.0;
pub const GOAL_ADDED_CPU_US: f64 = 2.5;
pub const GOAL_AGENT_CPU_US: f64 = 0.5;

/// Latency at a fixed rate.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub completed: u64,
    pub errors: u64,
    /// The open-loop generator's own CPU per completed request, µs.
    pub client_cpu_us: f64,
    /// Busy share of all CPUs during the run.
    pub machine_busy_percent: f64,
    /// CPU time of all CPUs together (every process, kernel and user, interrupts) per response
    /// received during the run, warm-up included, µs.
    pub machine_cpu_us: f64,
}

/// Everything measured in one state (agent ON or OFF) of one round.
#[derive(Debug, Clone, Default)]
pub struct StateRun {
    /// Busy share of all CPUs in the second before the measurements (other work on the machine).
    pub background_busy_percent: f64,
    /// Busy share of all CPUs in the second after the measurements.
    pub busy_after_percent: f64,
    /// Other work on the machine overlapped this state (busy before or after, see main.rs).
    pub disturbed: bool,
    /// etcd + kube-apiserver + operator CPU during each wrk run, % of one CPU (on this test node
    /// they share the CPUs; in a cluster they would not).
    pub control_plane_monitored_percent: f64,
    pub control_plane_unmonitored_percent: f64,
    pub monitored: WrkResult,
    pub unmonitored: WrkResult,
    /// nginx worker utime+stime per request during the wrk run, µs.
    pub nginx_monitored_us: f64,
    pub nginx_unmonitored_us: f64,
    /// Agent CPU per monitored request during the monitored wrk run, µs (sum of its threads'
    /// schedstat run time; utime+stime has 10 ms ticks, too coarse for the agent).
    pub agent_us: Option<f64>,
    /// The agent's CPU during the unmonitored pod's wrk run, per request of that run, µs (should be ~0).
    pub agent_unmonitored_us: Option<f64>,
    pub latency_monitored: Latency,
    pub latency_unmonitored: Latency,
}

impl StateRun {
    pub fn errors(&self) -> u64 {
        self.monitored.errors
            + self.unmonitored.errors
            + self.latency_monitored.errors
            + self.latency_unmonitored.errors
    }
}

/// Whether the agent counted what was sent while it was ON.
#[derive(Debug, Clone, Default)]
pub struct Completeness {
    /// Responses the clients received from the monitored pod (wrk + open-loop).
    pub sent: u64,
    /// Growth of the ApiMonitor's `GET /` request count over the ON state.
    pub counted: u64,
    /// The agent's kernel counters at the end of the ON state (the agent instance started with it).
    pub kernel: Option<CaptureCounters>,
    /// The agent's own loss counters from its /metrics.
    pub agent: Option<crate::measure::AgentLosses>,
}

/// What the agent costs at half load, measured directly rather than as the difference of two
/// noisy totals: the kernel's own accounting of the capture programs' run time (BPF statistics)
/// and the agent process's CPU, over one more open-loop run at the round's fixed rate, with the
/// statistics on for that run only.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectCost {
    /// Responses the open-loop generator received during the run.
    pub requests: u64,
    /// The programs on the monitored pod's cgroup, at ingress and at egress.
    pub ingress: ProgramRuns,
    pub egress: ProgramRuns,
    /// The agent's CPU (schedstat, all threads) over the run.
    pub agent_ns: u64,
}

impl DirectCost {
    /// Both programs' runs together.
    fn programs(&self) -> ProgramRuns {
        self.ingress.plus(&self.egress)
    }
    /// The capture programs' run time per request, µs.
    pub fn programs_us(&self) -> f64 {
        per_request_us(self.programs().run_time_ns, self.requests)
    }
    pub fn agent_us(&self) -> f64 {
        per_request_us(self.agent_ns, self.requests)
    }
    /// Programs + agent per request, µs.
    pub fn total_us(&self) -> f64 {
        self.programs_us() + self.agent_us()
    }
    /// Program runs (packets) per request, both directions.
    pub fn runs_per_request(&self) -> f64 {
        self.programs().runs as f64 / self.requests.max(1) as f64
    }
    /// Mean run time of one program run, ns.
    pub fn ns_per_run(&self) -> f64 {
        self.programs().ns_per_run()
    }
    pub fn ingress_ns_per_run(&self) -> f64 {
        self.ingress.ns_per_run()
    }
    pub fn egress_ns_per_run(&self) -> f64 {
        self.egress.ns_per_run()
    }
}

/// `ns` spread over `requests`, in µs (NaN for no request).
pub fn per_request_us(ns: u64, requests: u64) -> f64 {
    if requests == 0 {
        return f64::NAN;
    }
    ns as f64 / requests as f64 / 1_000.0
}

#[derive(Debug, Clone, Default)]
pub struct Round {
    pub index: u32,
    pub off: StateRun,
    pub on: StateRun,
    pub completeness: Completeness,
    /// `None` when the kernel's BPF statistics could not be turned on.
    pub direct: Option<DirectCost>,
}

impl Round {
    pub fn disturbed(&self) -> bool {
        self.off.disturbed || self.on.disturbed
    }
    fn label(&self) -> String {
        if self.disturbed() {
            format!("{} (disturbed)", self.index)
        } else {
            self.index.to_string()
        }
    }
    pub fn monitored_ratio(&self) -> f64 {
        ratio(self.on.monitored.rps, self.off.monitored.rps)
    }
    pub fn unmonitored_ratio(&self) -> f64 {
        ratio(self.on.unmonitored.rps, self.off.unmonitored.rps)
    }
    pub fn added_p50(&self) -> f64 {
        self.on.latency_monitored.p50_us - self.off.latency_monitored.p50_us
    }
    pub fn added_p99(&self) -> f64 {
        self.on.latency_monitored.p99_us - self.off.latency_monitored.p99_us
    }
    pub fn unmonitored_added_p50(&self) -> f64 {
        self.on.latency_unmonitored.p50_us - self.off.latency_unmonitored.p50_us
    }
    pub fn unmonitored_added_p99(&self) -> f64 {
        self.on.latency_unmonitored.p99_us - self.off.latency_unmonitored.p99_us
    }
    /// Machine CPU per request at half load, ON minus OFF: what the agent adds in total.
    pub fn added_cpu(&self) -> f64 {
        self.on.latency_monitored.machine_cpu_us - self.off.latency_monitored.machine_cpu_us
    }
    pub fn unmonitored_added_cpu(&self) -> f64 {
        self.on.latency_unmonitored.machine_cpu_us - self.off.latency_unmonitored.machine_cpu_us
    }
    fn direct(&self, f: fn(&DirectCost) -> f64) -> f64 {
        self.direct.as_ref().map_or(f64::NAN, f)
    }
}

/// The machine and the run.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub date: String,
    pub kernel: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub nginx: String,
    pub wrk: String,
    pub commit: String,
    pub agent_binary: String,
    /// Rounds asked for (`--rounds`) and rounds run (more when some were disturbed).
    pub rounds: u32,
    pub rounds_run: u32,
    pub seconds: u64,
    pub connections: u32,
    pub runtime_secs: u64,
    /// Which process runs on which CPU.
    pub pinning: String,
    /// /proc/loadavg (1, 5, 15 min) when the run started and when it ended.
    pub load_before: String,
    pub load_after: String,
    /// `--body-bytes`: the size of the body nginx returned and the ApiMonitor captured; `None`
    /// for hello world without body capture.
    pub body_bytes: Option<u64>,
}

/// One run of `--body-bytes`: the body size and the run's rounds.
pub struct BodyRun {
    pub size: u64,
    pub env: Environment,
    pub rounds: Vec<Round>,
}

fn ratio(on: f64, off: f64) -> f64 {
    if off > 0.0 {
        on / off
    } else {
        f64::NAN
    }
}

/// The median (mean of the middle two for an even count); NaN for no values.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

fn signed(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{v:+.0}")
    }
}

/// Like [`signed`], with two decimals (CPU µs per request).
fn signed_f(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{v:+.2}")
    }
}

fn opt_us(v: Option<f64>) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.2}"))
}

/// The medians the goals are judged on.
pub struct Summary {
    pub monitored_ratio: f64,
    pub unmonitored_ratio: f64,
    pub added_p50: f64,
    pub added_p99: f64,
    pub unmonitored_added_p50: f64,
    pub unmonitored_added_p99: f64,
    pub added_cpu: f64,
    pub unmonitored_added_cpu: f64,
    pub nginx_off_us: f64,
    pub nginx_on_us: f64,
    pub agent_us: f64,
    pub sent: u64,
    pub counted: u64,
    pub kernel_lost: u64,
    pub agent_dropped: u64,
}

pub fn summarize(rounds: &[Round]) -> Summary {
    let col = |f: &dyn Fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    Summary {
        monitored_ratio: col(&Round::monitored_ratio),
        unmonitored_ratio: col(&Round::unmonitored_ratio),
        added_p50: col(&Round::added_p50),
        added_p99: col(&Round::added_p99),
        unmonitored_added_p50: col(&Round::unmonitored_added_p50),
        unmonitored_added_p99: col(&Round::unmonitored_added_p99),
        added_cpu: col(&Round::added_cpu),
        unmonitored_added_cpu: col(&Round::unmonitored_added_cpu),
        nginx_off_us: col(&|r| r.off.nginx_monitored_us),
        nginx_on_us: col(&|r| r.on.nginx_monitored_us),
        agent_us: col(&|r| r.on.agent_us.unwrap_or(f64::NAN)),
        sent: rounds.iter().map(|r| r.completeness.sent).sum(),
        counted: rounds.iter().map(|r| r.completeness.counted).sum(),
        kernel_lost: rounds
            .iter()
            .filter_map(|r| r.completeness.kernel.map(|k| k.records_lost))
            .sum(),
        agent_dropped: rounds
            .iter()
            .filter_map(|r| r.completeness.agent.map(|a| a.dropped))
            .sum(),
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**not met**"
    }
}

/// A verdict, marked when the control (the unmonitored pod, nothing attached) moved by more than
/// the goal allows: then the machine's noise, not the agent, decides the verdict.
fn resolved(verdict: &str, noisy: bool) -> String {
    if noisy {
        format!("{verdict} (the control moved more than the goal allows: not resolvable on this machine)")
    } else {
        verdict.to_string()
    }
}

/// A goals-table row for an added figure (ON minus OFF, µs) with an upper limit: the median with
/// its spread, the verdict, and the same figure for the control. `[median, min, max]` each.
fn added_goal_row(
    out: &mut String,
    goal: &str,
    limit: f64,
    fmt: fn(f64) -> String,
    [median, lo, hi]: [f64; 3],
    [control, clo, chi]: [f64; 3],
) {
    let _ = writeln!(
        out,
        "| {goal} | ≤ {limit} µs | {} µs ({} … {} µs) | {} | {} µs ({} … {} µs) |",
        fmt(median),
        fmt(lo),
        fmt(hi),
        resolved(met(median <= limit), clo.abs().max(chi.abs()) > limit),
        fmt(control),
        fmt(clo),
        fmt(chi),
    );
}

/// The rounds the medians are taken over: the undisturbed ones when there are at least 3 of them,
/// otherwise all.
pub fn judged(rounds: &[Round]) -> Vec<Round> {
    let clean: Vec<Round> = rounds.iter().filter(|r| !r.disturbed()).cloned().collect();
    if clean.len() >= 3 {
        clean
    } else {
        rounds.to_vec()
    }
}

/// The results: goals, paired ratios with medians, the per-round table.
pub fn results_markdown(env: &Environment, all_rounds: &[Round]) -> String {
    let rounds = &judged(all_rounds)[..];
    let left_out = all_rounds.len() - rounds.len();
    let mut s = summarize(rounds);
    // Completeness does not depend on noise: count every ON state.
    let all = summarize(all_rounds);
    (s.sent, s.counted, s.kernel_lost, s.agent_dropped) =
        (all.sent, all.counted, all.kernel_lost, all.agent_dropped);
    let mut out = String::new();
    let ratios: Vec<f64> = rounds.iter().map(Round::monitored_ratio).collect();
    let (mlo, mhi) = min_max(&ratios);
    let uratios: Vec<f64> = rounds.iter().map(Round::unmonitored_ratio).collect();
    let (ulo, uhi) = min_max(&uratios);
    let p99s: Vec<f64> = rounds.iter().map(Round::added_p99).collect();
    let (plo, phi) = min_max(&p99s);
    let up99s: Vec<f64> = rounds.iter().map(Round::unmonitored_added_p99).collect();
    let (uplo, uphi) = min_max(&up99s);

    let _ = writeln!(
        out,
        "### Goals (medians over {} rounds{})\n",
        rounds.len(),
        if left_out > 0 {
            format!(
                "; {left_out} round(s) disturbed by other work on the machine are listed below but left out"
            )
        } else if rounds.iter().any(Round::disturbed) {
            "; other work on the machine disturbed some of them (marked below), and too few were undisturbed to leave those out".to_string()
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "| goal | target | measured (median; min … max over rounds) | | the same figure for the unmonitored pod (noise; median; min … max) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| monitored pod throughput, ON / OFF | ≥ {GOAL_MONITORED_RATIO:.2} | {:.3} ({mlo:.3} … {mhi:.3}) | {} | {:.3} ({ulo:.3} … {uhi:.3}) |",
        s.monitored_ratio,
        met(s.monitored_ratio >= GOAL_MONITORED_RATIO),
        s.unmonitored_ratio,
    );
    let _ = writeln!(
        out,
        "| unmonitored pod throughput, ON / OFF | ≥ {GOAL_UNMONITORED_RATIO:.2} | {:.3} ({ulo:.3} … {uhi:.3}) | {} | (this is the control) |",
        s.unmonitored_ratio,
        resolved(
            met(s.unmonitored_ratio >= GOAL_UNMONITORED_RATIO),
            ulo.min(1.0 / uhi) < GOAL_UNMONITORED_RATIO
        )
    );
    added_goal_row(
        &mut out,
        "added p99 latency at half load (monitored pod)",
        GOAL_ADDED_P99_US,
        signed,
        [s.added_p99, plo, phi],
        [s.unmonitored_added_p99, uplo, uphi],
    );
    let cpus: Vec<f64> = rounds.iter().map(Round::added_cpu).collect();
    let (clo, chi) = min_max(&cpus);
    let ucpus: Vec<f64> = rounds.iter().map(Round::unmonitored_added_cpu).collect();
    let (uclo, uchi) = min_max(&ucpus);
    added_goal_row(
        &mut out,
        "added CPU per request at half load (all CPUs, every process, kernel + user)",
        GOAL_ADDED_CPU_US,
        signed_f,
        [s.added_cpu, clo, chi],
        [s.unmonitored_added_cpu, uclo, uchi],
    );
    let directs: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r.direct.map(|d| d.total_us()))
        .collect();
    if !directs.is_empty() {
        let (dlo, dhi) = min_max(&directs);
        let d = median(&directs);
        let _ = writeln!(
            out,
            "| the same, measured directly: the capture programs' run time (the kernel's BPF statistics) + the agent's CPU | ≤ {GOAL_ADDED_CPU_US} µs | {d:.2} µs ({dlo:.2} … {dhi:.2} µs) | {} | (a measurement of the agent's own work, not a difference: no control needed) |",
            met(d <= GOAL_ADDED_CPU_US),
        );
    }
    let agents: Vec<f64> = rounds.iter().filter_map(|r| r.on.agent_us).collect();
    let (alo, ahi) = min_max(&agents);
    let agent_idle_us = median(
        &rounds
            .iter()
            .filter_map(|r| r.on.agent_unmonitored_us)
            .collect::<Vec<_>>(),
    );
    let _ = writeln!(
        out,
        "| agent CPU per request at saturation | ≤ {GOAL_AGENT_CPU_US} µs | {:.2} µs ({alo:.2} … {ahi:.2} µs) | {} | {agent_idle_us:.2} µs (per request to the unmonitored pod) |",
        s.agent_us,
        met(s.agent_us <= GOAL_AGENT_CPU_US),
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Other medians: added p50 at half load {} µs; the unmonitored pod at the same rate (nothing attached to it, so this is the noise floor): added p50 {} µs, p99 {} µs ({} … {} µs); nginx worker CPU per request OFF {:.2} µs → ON {:.2} µs; agent CPU per request {} µs. Completeness over all ON states: the agent counted {} of {} requests the clients completed ({:.2} %), kernel ring-buffer records lost: {}, messages the agent's parser dropped: {}.\n",
        signed(s.added_p50),
        signed(s.unmonitored_added_p50),
        signed(s.unmonitored_added_p99),
        signed(uplo),
        signed(uphi),
        s.nginx_off_us,
        s.nginx_on_us,
        if s.agent_us.is_nan() { "n/a".to_string() } else { format!("{:.2}", s.agent_us) },
        s.counted,
        s.sent,
        if s.sent > 0 { 100.0 * s.counted as f64 / s.sent as f64 } else { f64::NAN },
        s.kernel_lost,
        s.agent_dropped,
    );

    let share = |f: &dyn Fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    let agent_cpu_share = share(&|r| r.on.agent_us.unwrap_or(f64::NAN) * r.on.monitored.rps / 1e6 * 100.0);
    let nginx_added = share(&|r| r.on.nginx_monitored_us - r.off.nginx_monitored_us);
    let busy_off = share(&|r| r.off.latency_monitored.machine_busy_percent);
    let busy_on = share(&|r| r.on.latency_monitored.machine_busy_percent);
    let client_us = share(&|r| r.off.latency_monitored.client_cpu_us);
    let cp_off = share(&|r| r.off.control_plane_unmonitored_percent);
    let cp_on = share(&|r| r.on.control_plane_unmonitored_percent);
    let agent_idle =
        share(&|r| r.on.agent_unmonitored_us.unwrap_or(f64::NAN) * r.on.unmonitored.rps / 1e6 * 100.0);
    let _ = writeln!(
        out,
        "Where the cost goes (medians): at saturation the agent used {agent_cpu_share:.0} % of one CPU; nginx's own CPU per request grew by {nginx_added:+.2} µs (the egress program runs in its `sendmsg`). During the monitored pod's half-load run all CPUs together were {busy_off:.0} % busy with the agent OFF and {busy_on:.0} % with it ON, the open-loop client itself using {client_us:.1} µs of CPU per request: when that nears 100 %, latency there is mostly waiting for a CPU. While only the unmonitored pod was loaded, the agent used {agent_idle:.1} % of one CPU, and etcd + kube-apiserver + the operator {cp_off:.1} % with the agent OFF and {cp_on:.1} % with it ON (on this one-node setup the control plane shares the node's CPUs).\n"
    );

    direct_markdown(&mut out, all_rounds);

    if let Some(size) = env.body_bytes {
        bodies_markdown(&mut out, size, env.connections, all_rounds);
    }

    let _ = writeln!(out, "### Paired: agent ON / agent OFF in the same round\n");
    let _ = writeln!(out, "| round | monitored throughput ON/OFF | unmonitored throughput ON/OFF | added p50 (µs) | added p99 (µs) | unmonitored added p50 / p99 (µs) | nginx CPU µs/req OFF → ON | agent CPU µs/req | agent counted / sent | kernel: records emitted, lost | agent: records drained, messages dropped |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in all_rounds {
        let c = &r.completeness;
        let agent = c.agent.map_or_else(
            || "not readable".to_string(),
            |a| format!("{}, {}", a.drained, a.dropped),
        );
        let kernel = c.kernel.map_or_else(
            || "not readable".to_string(),
            |k| format!("{}, {}", k.records_emitted, k.records_lost),
        );
        let _ = writeln!(
            out,
            "| {} | {:.3} | {:.3} | {} | {} | {} / {} | {:.2} → {:.2} | {} | {} / {} | {} | {} |",
            r.label(),
            r.monitored_ratio(),
            r.unmonitored_ratio(),
            signed(r.added_p50()),
            signed(r.added_p99()),
            signed(r.unmonitored_added_p50()),
            signed(r.unmonitored_added_p99()),
            r.off.nginx_monitored_us,
            r.on.nginx_monitored_us,
            opt_us(r.on.agent_us),
            c.counted,
            c.sent,
            kernel,
            agent,
        );
    }
    let _ = writeln!(
        out,
        "| **median{}** | **{:.3}** | **{:.3}** | **{}** | **{}** | **{} / {}** | **{:.2} → {:.2}** | **{}** | {} / {} | {} lost | {} dropped |",
        if left_out > 0 { " (undisturbed rounds)" } else { "" },
        s.monitored_ratio,
        s.unmonitored_ratio,
        signed(s.added_p50),
        signed(s.added_p99),
        signed(s.unmonitored_added_p50),
        signed(s.unmonitored_added_p99),
        s.nginx_off_us,
        s.nginx_on_us,
        if s.agent_us.is_nan() { "n/a".to_string() } else { format!("{:.2}", s.agent_us) },
        s.counted,
        s.sent,
        s.kernel_lost,
        s.agent_dropped,
    );
    let _ = writeln!(out);

    let _ = writeln!(out, "### Per round\n");
    let _ = writeln!(out, "wrk -t1 -c{} -d{}s for throughput; the open-loop generator at the fixed rate (half the monitored pod's agent-OFF throughput of the round, for both pods and both states) for latency.\n", env.connections, env.seconds);
    let _ = writeln!(out, "| round | agent | monitored req/s | unmonitored req/s | nginx CPU µs/req (monitored / unmonitored) | agent CPU µs/req (monitored / unmonitored run) | fixed rate (req/s) | monitored p50 / p99 (µs) | unmonitored p50 / p99 (µs) | monitored half-load run: machine busy (%), client CPU µs/req | control plane CPU during wrk (% of one CPU, monitored / unmonitored) | errors | machine busy before / after (%) |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in all_rounds {
        for (label, st) in [("OFF", &r.off), ("ON", &r.on)] {
            let _ = writeln!(
                out,
                "| {} | {label} | {:.0} | {:.0} | {:.2} / {:.2} | {} / {} | {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.0}, {:.1} | {:.0} / {:.0} | {} | {:.0} / {:.0} |",
                r.label(),
                st.monitored.rps,
                st.unmonitored.rps,
                st.nginx_monitored_us,
                st.nginx_unmonitored_us,
                opt_us(st.agent_us),
                opt_us(st.agent_unmonitored_us),
                st.latency_monitored.rate,
                st.latency_monitored.p50_us,
                st.latency_monitored.p99_us,
                st.latency_unmonitored.p50_us,
                st.latency_unmonitored.p99_us,
                st.latency_monitored.machine_busy_percent,
                st.latency_monitored.client_cpu_us,
                st.control_plane_monitored_percent,
                st.control_plane_unmonitored_percent,
                st.errors(),
                st.background_busy_percent,
                st.busy_after_percent,
            );
        }
    }
    out
}

/// The direct measurement of each round (see [`DirectCost`]), if any round has one.
fn direct_markdown(out: &mut String, all_rounds: &[Round]) {
    if all_rounds.iter().all(|r| r.direct.is_none()) {
        return;
    }
    let _ = writeln!(
        out,
        "### Measured directly: the capture programs and the agent at half load
"
    );
    let _ = writeln!(out, "After each ON state, one more open-loop run against the monitored pod at the round's fixed rate, with the kernel's BPF run-time statistics on for that run only (`BPF_ENABLE_STATS`; they add two clock reads to each program run, so they are off during the other measurements). The kernel sums each program's run time and runs; the agent's CPU is its threads' `schedstat`. This is the agent's own work, the part of the *added CPU* goal that can be measured without subtracting two noisy totals. It leaves out indirect costs: caches the agent's work evicts, and wake-ups it causes in other processes.\n");
    let _ = writeln!(out, "| round | requests | program runs per request (ingress + egress) | ns per program run (ingress / egress) | capture programs µs/req | agent µs/req | total µs/req |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for r in all_rounds {
        match &r.direct {
            Some(d) => {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.2} ({:.2} + {:.2}) | {:.0} ({:.0} / {:.0}) | {:.2} | {:.2} | {:.2} |",
                    r.label(),
                    d.requests,
                    d.runs_per_request(),
                    d.ingress.runs as f64 / d.requests.max(1) as f64,
                    d.egress.runs as f64 / d.requests.max(1) as f64,
                    d.ns_per_run(),
                    d.ingress_ns_per_run(),
                    d.egress_ns_per_run(),
                    d.programs_us(),
                    d.agent_us(),
                    d.total_us(),
                );
            }
            None => {
                let _ = writeln!(out, "| {} | not measured | | | | | |", r.label());
            }
        }
    }
    let rounds = judged(all_rounds);
    let col = |f: fn(&DirectCost) -> f64| median(&rounds.iter().map(|r| r.direct(f)).collect::<Vec<_>>());
    let _ = writeln!(
        out,
        "| **median** | | **{:.2}** | **{:.0}** ({:.0} / {:.0}) | **{:.2}** | **{:.2}** | **{:.2}** |\n",
        col(DirectCost::runs_per_request),
        col(DirectCost::ns_per_run),
        col(DirectCost::ingress_ns_per_run),
        col(DirectCost::egress_ns_per_run),
        col(DirectCost::programs_us),
        col(DirectCost::agent_us),
        col(DirectCost::total_us),
    );
}

/// The other generated reports, linked from this one's intro.
const RELATED: &str = "The other modes: [benchmarks-bodies.md](benchmarks-bodies.md) (the same with 1 KiB and 64 KiB response bodies, captured in full: `--body-bytes 1024,65536`), [benchmarks-tls.md](benchmarks-tls.md) (TLS capture: `--tls`; TLS 1.2 in [benchmarks-tls12.md](benchmarks-tls12.md): `--tls --tls12`) and [benchmarks-enforcement.md](benchmarks-enforcement.md) (enforcement programs: `--enforcement`). The agent's user-space cost per request, without the kernel or the noise of a whole machine: [benchmarks-agent.md](benchmarks-agent.md) (`cargo bench -p palisade-node-agent --bench capture`).";

/// The table of the machine and the run that opens each generated report.
pub fn environment_table(out: &mut String, env: &Environment, server: &str, clients: &str, run: &str) {
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| date | {} |", env.date);
    let _ = writeln!(
        out,
        "| machine | {} vCPU ({}), kernel `{}` (`uname -r`), a shared and noisy VM |",
        env.nproc, env.cpu_model, env.kernel
    );
    let _ = writeln!(out, "| server | {server} |");
    let _ = writeln!(out, "| clients | {clients} |");
    let _ = writeln!(
        out,
        "| Palisade | commit {}, agent binary `{}` |",
        env.commit, env.agent_binary
    );
    let _ = writeln!(out, "| run | {run} |");
    let _ = writeln!(out, "| CPU placement | {} |", env.pinning);
    let _ = writeln!(
        out,
        "| load average (1, 5, 15 min) | {} at the start, {} at the end |\n",
        env.load_before, env.load_after
    );
}

/// The whole docs/benchmarks.md.
pub fn document(env: &Environment, rounds: &[Round]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Benchmarks: what capture costs\n");
    let _ = writeln!(
        out,
        "<!-- Generated by `bash hack/bench-overhead.sh` (bench/src/report.rs); re-run it to refresh. -->\n"
    );
    let _ = writeln!(out, "```sh\nbash hack/bench-overhead.sh\n```\n");
    let _ = writeln!(out, "{RELATED}\n");
    let server = format!(
        "{} (one worker, hello world, keep-alive, `access_log off`) in each of two pods",
        env.nginx
    );
    let clients = format!(
        "{} (saturation), palisade-bench's open-loop generator (latency)",
        env.wrk
    );
    let run = format!(
        "{} rounds × (agent OFF, agent ON){}, {} s per measurement, {} connections, {} s in total",
        env.rounds_run.max(env.rounds),
        if env.rounds_run > env.rounds {
            format!(
                " ({} asked for, {} more to replace disturbed ones)",
                env.rounds,
                env.rounds_run - env.rounds
            )
        } else {
            String::new()
        },
        env.seconds,
        env.connections,
        env.runtime_secs
    );
    environment_table(&mut out, env, &server, &clients, &run);

    let _ = writeln!(out, "## What is measured\n");
    let _ = writeln!(out, "One run of `palisade-bench` starts the end-to-end stack (etcd, kube-apiserver, the operator, one node agent, the stand-in kubelet) and two pods, each a process in its own cgroup v2 directory and network namespace running the same nginx: `demo/monitored` (`app=bench-monitored`), selected by an ApiMonitor on port 8080 (headers captured), and `demo/unmonitored` (`app=bench-other`), selected by nothing. Clients run in the node's root network namespace and reach the pods over the bridge, as node-local traffic would.\n");
    let _ = writeln!(out, "Each round measures the agent **OFF** (process killed: its cgroup links close with it; the benchmark checks with BPF_PROG_QUERY that nothing is attached to either pod's cgroup, and waits for the ApiMonitor status to show 0 probes) and then **ON** (agent started again; the benchmark waits for `probesAttached == 2` in the status and checks that the kernel shows one ingress and one egress program on the monitored pod's cgroup and none on the other). In each state:\n");
    let _ = writeln!(out, "1. **Throughput**: `wrk -t1 -c{c} -d{d}s` against the monitored pod, then the same against the unmonitored pod.", c = env.connections, d = env.seconds);
    let _ = writeln!(out, "2. **Latency at half load**: the fixed rate is half the monitored pod's agent-OFF throughput of the same round. The open-loop generator (bench/src/loadgen.rs; one thread per 60 000 req/s; its timer wakes at most every 200 µs and releases all requests due) sends on a fixed schedule over {} keep-alive connections and measures each latency from the request's *scheduled* send time (coordinated-omission safe); 0.5 s warm-up, then {} s recorded; p50 and p99. Both pods, both states, same rate.", env.connections, env.seconds);
    let _ = writeln!(out, "3. **CPU per request**: the nginx worker's `utime + stime` (`/proc/<pid>/stat`) over the wrk run divided by the requests wrk completed; the agent's CPU over the monitored wrk run divided by those requests (summed `schedstat` run time of its threads: `utime + stime` counts 10 ms ticks, too coarse for a fraction of a microsecond per request). The **total** the agent adds: during each half-load run (a fixed rate, so ON and OFF do the same work), the busy time of all CPUs together (`/proc/stat`: every process, kernel and user, interrupts and softirqs, so the ingress program too) divided by the responses received; ON minus OFF of the same round. The unmonitored pod's run gives the same figure for the control.");
    let _ = writeln!(out, "4. **Completeness** (ON only): how much the ApiMonitor's `GET /` request count grew during the ON state, against the responses the clients received from the monitored pod; and the agent's kernel counters (records emitted / lost to a full ring buffer), read from its per-CPU counters map; and the agent's own /metrics (records drained from the ring buffer, messages its parser dropped). The count may exceed what the clients completed by up to {} per wrk run: requests in flight when wrk stops were answered by nginx and seen by the agent, but wrk does not count them.", env.connections);
    let _ = writeln!(out, "5. **Measured directly** (ON only, after the rest): one more half-load run against the monitored pod with the kernel's BPF run-time statistics on, for the capture programs' own run time per request beside the agent's CPU (see that section below). Its requests count towards completeness.\n");

    let _ = writeln!(out, "## How to read\n");
    let _ = writeln!(out, "The ratios are **paired**: ON divided by OFF of the same round, so slow drift of a shared VM cancels out, and the median over rounds is reported with the spread. A ratio of 1.000 means no measurable cost; the unmonitored pod's ratio and added latency show what noise alone does (nothing is attached to its cgroup, so any difference there is noise or shared-CPU contention from the agent). By default the nginx workers run on CPU 0 and the clients on CPU 1 (unpinned, wrk and nginx trade places between runs and throughput jumps by ±20 %); the agent floats, as a DaemonSet's pod would. On 2 vCPUs, nginx, the client and the agent still compete for the same two CPUs, so the monitored ratio includes the agent's user-space work as well as the in-kernel cost of the `cgroup_skb` programs. The egress program runs in nginx's own `sendmsg` and shows up in its `stime`; the ingress program runs in the receive softirq, which is mostly charged to the sending client, so the nginx CPU figure understates the in-kernel cost and the throughput ratio is the better total. Latencies include the client's own scheduling jitter; compare ON with OFF, not with other machines. The machine is shared: before each state's measurements the benchmark waits (up to 10 s) for a second in which all CPUs together are less than 25 % busy, and samples one more second after them; a round in which either state still saw the machine at least 25 % busy is marked *disturbed*, the run adds up to 2 rounds to replace such rounds, and the medians leave disturbed rounds out when at least 3 undisturbed ones remain (all rounds stay in the tables). This catches other work that lasts seconds, not every short burst: the unmonitored pod's figures show what got through.\n");

    let _ = writeln!(out, "## Results\n");
    out.push_str(&results_markdown(env, rounds));
    out
}

/// `1 KiB (1024 bytes)`, `64 KiB (65536 bytes)`, `1000 bytes`.
fn size_label(bytes: u64) -> String {
    if bytes.is_multiple_of(1024) {
        format!("{} KiB ({bytes} bytes)", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

/// Per round: what the agent kept of the response bodies, and the ring records a response took.
fn bodies_markdown(out: &mut String, size: u64, connections: u32, rounds: &[Round]) {
    let kept = |r: &Round| r.completeness.agent.map(|a| a.response_bodies);
    let total = rounds
        .iter()
        .filter_map(kept)
        .fold(BodyCounts::default(), |t, b| BodyCounts {
            complete: t.complete + b.complete,
            truncated: t.truncated + b.truncated,
            bytes: t.bytes + b.bytes,
        });
    let sent: u64 = rounds.iter().map(|r| r.completeness.sent).sum();
    let kernel_truncated: u64 = rounds
        .iter()
        .filter_map(|r| r.completeness.kernel.map(|k| k.bytes_truncated))
        .sum();
    let per_body = |b: &BodyCounts| {
        if b.complete + b.truncated == 0 {
            f64::NAN
        } else {
            b.bytes as f64 / (b.complete + b.truncated) as f64
        }
    };
    let _ = writeln!(out, "**Bodies** (the agent's `palisade_agent_http_bodies_total` and `palisade_agent_http_body_bytes_total`, over all ON states): of {sent} responses the clients received from the monitored pod, the agent kept {} response bodies whole ({:.2} %; like the request count, this may exceed what the clients received by up to {connections} per wrk run) and cut {}; it kept {:.0} bytes per body on average (each body is {size} bytes on the wire; the ApiMonitor's `maxBodyBytes` is {size}); payload bytes the kernel program did not copy (more than {} KiB in one skb): {kernel_truncated}.\n",
        total.complete,
        if sent > 0 { 100.0 * total.complete as f64 / sent as f64 } else { f64::NAN },
        total.truncated,
        per_body(&total),
        palisade_common::CHUNK_BYTES * palisade_common::MAX_CHUNKS_PER_SKB / 1024,
    );
    let _ = writeln!(out, "| round | responses received | bodies kept whole | bodies cut | bytes kept per body | kernel ring records per response (request + response) | kernel bytes not copied |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for r in rounds {
        let c = &r.completeness;
        let bodies = kept(r).map_or_else(
            || "not readable | not readable | not readable".to_string(),
            |b| format!("{} | {} | {:.0}", b.complete, b.truncated, per_body(&b)),
        );
        let kernel = c.kernel.map_or_else(
            || "not readable | not readable".to_string(),
            |k| {
                format!(
                    "{:.1} | {}",
                    k.records_emitted as f64 / c.counted.max(1) as f64,
                    k.bytes_truncated
                )
            },
        );
        let _ = writeln!(out, "| {} | {} | {bodies} | {kernel} |", r.label(), c.sent);
    }
    let _ = writeln!(out);
}

/// The medians and totals of one body size, as a row of the summary table.
fn body_summary_row(run: &BodyRun) -> String {
    let rounds = judged(&run.rounds);
    let s = summarize(&rounds);
    let all = summarize(&run.rounds);
    let spread = |f: fn(&Round) -> f64| min_max(&rounds.iter().map(f).collect::<Vec<_>>());
    let (mlo, mhi) = spread(Round::monitored_ratio);
    let (ulo, uhi) = spread(Round::unmonitored_ratio);
    let whole: u64 = run
        .rounds
        .iter()
        .filter_map(|r| r.completeness.agent.map(|a| a.response_bodies.complete))
        .sum();
    let disturbed = run.rounds.iter().filter(|r| r.disturbed()).count();
    format!(
        "| {} | {:.3} ({mlo:.3} … {mhi:.3}) | {:.3} ({ulo:.3} … {uhi:.3}) | {:.2} | {:.2} → {:.2} | {whole} / {} ({:.2} %) | {} of {} ({:.2} %) | {} | {} of {} |",
        size_label(run.size),
        s.monitored_ratio,
        s.unmonitored_ratio,
        s.agent_us,
        s.nginx_off_us,
        s.nginx_on_us,
        all.sent,
        if all.sent > 0 { 100.0 * whole as f64 / all.sent as f64 } else { f64::NAN },
        all.counted,
        all.sent,
        if all.sent > 0 { 100.0 * all.counted as f64 / all.sent as f64 } else { f64::NAN },
        all.kernel_lost,
        disturbed,
        run.rounds.len(),
    )
}

/// The whole docs/benchmarks-bodies.md: one section per body size, each with the figures of
/// docs/benchmarks.md.
pub fn bodies_document(runs: &[BodyRun]) -> String {
    let mut out = String::new();
    let sizes: Vec<String> = runs.iter().map(|r| r.size.to_string()).collect();
    let _ = writeln!(out, "# Benchmarks: what capture costs with response bodies\n");
    let _ = writeln!(
        out,
        "<!-- Generated by `bash hack/bench-overhead.sh --body-bytes {}` (bench/src/report.rs); re-run it to refresh. -->\n",
        sizes.join(",")
    );
    let _ = writeln!(
        out,
        "```sh\nbash hack/bench-overhead.sh --body-bytes {}\n```\n",
        sizes.join(",")
    );
    let Some(first) = runs.first() else {
        return out;
    };
    let mut env = first.env.clone();
    env.load_after = runs.last().map_or(String::new(), |r| r.env.load_after.clone());
    env.runtime_secs = runs.iter().map(|r| r.env.runtime_secs).sum();
    let server = format!(
        "{} (one worker, keep-alive, `access_log off`, `sendfile on`) in each of two pods, `GET /` returning a static JSON file (`application/json`, Content-Length) of each size in turn",
        env.nginx
    );
    let clients = format!(
        "{} (saturation), palisade-bench's open-loop generator (latency)",
        env.wrk
    );
    let run = format!(
        "one run per body size ({}), each on a fresh stack: {} rounds × (agent OFF, agent ON) (up to 2 more to replace disturbed ones), {} s per measurement, {} connections; {} s in total",
        sizes.join(", "),
        env.rounds,
        env.seconds,
        env.connections,
        env.runtime_secs
    );
    environment_table(&mut out, &env, &server, &clients, &run);

    let _ = writeln!(out, "## What is measured\n");
    let _ = writeln!(out, "The capture benchmark of [benchmarks.md](benchmarks.md), with the same method and the same figures (read its *What is measured* and *How to read*), except for what the pods return and what the agent keeps: both nginx pods answer `GET /` with a static JSON array of exactly the body size (an API's list response, padded with spaces; sent with `sendfile`), and the ApiMonitor captures bodies (`capture.bodies: true`, `maxBodyBytes` equal to the body size, so each body is kept whole, not cut). The agent reassembles each response's TCP payload, de-frames it by Content-Length and keeps the body; whether it kept each body whole is not assumed but read from its `/metrics` after each ON state: `palisade_agent_http_bodies_total{{direction=\"response\"}}` counts bodies kept whole (`outcome=\"complete\"`) and cut (`outcome=\"truncated\"`: over the limit, bytes missing from the capture, or memory pressure), `palisade_agent_http_body_bytes_total` the bytes kept.\n");
    let _ = writeln!(out, "In the kernel, the egress program copies each skb's TCP payload into ring-buffer records: the smallest of 128, 256 or 512 bytes or a page that holds it (48, 176, 432 or 4096 bytes of payload), otherwise pages up to 16 KiB and {} KiB chunks beyond, at most {} per skb (payload beyond is counted as *bytes not copied*). The request takes one small record; with `sendfile`, nginx writes a response's head and body separately, so the head takes a small record and the body records of its own: a 1 KiB body one page, a 64 KiB body, which TCP hands over as segmentation-offload skbs of up to 64 KiB including headers, at least 4. The column *kernel ring records per response* in each section shows what each size took.\n", palisade_common::CHUNK_BYTES / 1024, palisade_common::MAX_CHUNKS_PER_SKB);

    let _ = writeln!(out, "## Summary\n");
    let _ = writeln!(out, "Medians over the undisturbed rounds (over all rounds when fewer than 3 were undisturbed), with min … max; counts over all ON states. Goals as in benchmarks.md: monitored throughput ON / OFF ≥ {GOAL_MONITORED_RATIO:.2}, the unmonitored pod being the noise control.\n");
    let _ = writeln!(out, "| response body | monitored throughput ON / OFF | unmonitored throughput ON / OFF (control) | agent CPU µs/req | nginx CPU µs/req OFF → ON | response bodies kept whole / received | requests counted / received | ring records lost | rounds disturbed |");
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for run in runs {
        let _ = writeln!(out, "{}", body_summary_row(run));
    }
    let _ = writeln!(out);
    if let (Some(small), Some(large)) = (
        runs.iter().min_by_key(|r| r.size),
        runs.iter().max_by_key(|r| r.size),
    ) {
        if large.size > small.size {
            let (s, l) = (
                summarize(&judged(&small.rounds)),
                summarize(&judged(&large.rounds)),
            );
            let kib = (large.size - small.size) as f64 / 1024.0;
            let _ = writeln!(out, "Per KiB of body, from {} to {} (medians): the agent's CPU per request grows by {:.2} µs per KiB, and nginx's CPU per request with the agent ON minus OFF (the egress program copying the payload into the ring, in nginx's `sendfile`) by {:.2} µs per KiB.\n",
                size_label(small.size),
                size_label(large.size),
                (l.agent_us - s.agent_us) / kib,
                ((l.nginx_on_us - l.nginx_off_us) - (s.nginx_on_us - s.nginx_off_us)) / kib,
            );
        }
    }
    for run in runs {
        let _ = writeln!(out, "## {} response bodies\n", size_label(run.size));
        let _ = writeln!(
            out,
            "Run {}: {} rounds, {} s.\n",
            run.env.date, run.env.rounds_run, run.env.runtime_secs
        );
        out.push_str(&results_markdown(&run.env, &run.rounds));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(rps: f64, p99: f64) -> StateRun {
        StateRun {
            monitored: WrkResult {
                requests: (rps * 5.0) as u64,
                rps,
                errors: 0,
            },
            unmonitored: WrkResult {
                requests: 100_000,
                rps: 20_000.0,
                errors: 0,
            },
            latency_monitored: Latency {
                rate: 10_000.0,
                p50_us: 100.0,
                p99_us: p99,
                ..Latency::default()
            },
            ..StateRun::default()
        }
    }

    #[test]
    fn medians_and_paired_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
        let rounds: Vec<Round> = (1..=3)
            .map(|i| Round {
                index: i,
                off: state(20_000.0, 200.0),
                on: StateRun {
                    agent_us: Some(1.2),
                    ..state(19_000.0 + f64::from(i) * 100.0, 220.0)
                },
                completeness: Completeness {
                    sent: 10,
                    counted: 10,
                    kernel: None,
                    agent: None,
                },
                direct: Some(DirectCost {
                    requests: 1000,
                    ingress: ProgramRuns {
                        run_time_ns: 300_000,
                        runs: 2000,
                    },
                    egress: ProgramRuns {
                        run_time_ns: 500_000,
                        runs: 2000,
                    },
                    agent_ns: 1_000_000,
                }),
            })
            .collect();
        let mut rounds = rounds;
        for r in &mut rounds {
            r.off.latency_monitored.machine_cpu_us = 30.0;
            r.on.latency_monitored.machine_cpu_us = 31.5;
        }
        let s = summarize(&rounds);
        assert!((s.monitored_ratio - 0.96).abs() < 1e-9);
        assert!((s.unmonitored_ratio - 1.0).abs() < 1e-9);
        assert!((s.added_p99 - 20.0).abs() < 1e-9);
        let env = Environment::default();
        let doc = document(&env, &rounds);
        assert!(doc.contains("bash hack/bench-overhead.sh"));
        assert!(doc.contains("| monitored pod throughput, ON / OFF | ≥ 0.95 | 0.960"));
        assert!(doc.contains("**met**"));
        assert!(
            doc.contains("| ≤ 2.5 µs | +1.50 µs (+1.50 … +1.50 µs) | **met** | +0.00 µs"),
            "the added CPU goal: {doc}"
        );
        assert!(
            doc.contains(
                "| agent CPU per request at saturation | ≤ 0.5 µs | 1.20 µs (1.20 … 1.20 µs) | **not met**"
            ),
            "the agent CPU goal: {doc}"
        );
        assert!(
            doc.contains("the agent's CPU | ≤ 2.5 µs | 1.80 µs (1.80 … 1.80 µs) | **met** |"),
            "the direct added CPU: {doc}"
        );
        assert!(
            doc.contains(
                "| **median** | | **4.00** | **200** (150 / 250) | **0.80** | **1.00** | **1.80** |"
            ),
            "the direct measurement's table: {doc}"
        );

        // A disturbed round is listed but left out of the medians (3 undisturbed remain).
        let mut more = rounds.clone();
        more.push(Round {
            index: 4,
            off: state(20_000.0, 200.0),
            on: StateRun {
                disturbed: true,
                ..state(5_000.0, 9_000.0)
            },
            completeness: Completeness::default(),
            direct: None,
        });
        assert_eq!(judged(&more).len(), 3);
        let doc = document(&env, &more);
        assert!(doc.contains("| 4 (disturbed) |"));
        assert!(doc.contains("1 round(s) disturbed"));
        assert!(doc.contains("| monitored pod throughput, ON / OFF | ≥ 0.95 | 0.960"));
        assert!(!doc.contains("**Bodies**"));
    }

    #[test]
    fn bodies_document_has_a_summary_row_and_a_section_per_size() {
        let round = |index: u32, complete: u64| Round {
            index,
            off: state(20_000.0, 200.0),
            on: state(18_000.0, 220.0),
            completeness: Completeness {
                sent: 100,
                counted: 100,
                kernel: Some(CaptureCounters {
                    records_emitted: 1_700,
                    ..CaptureCounters::default()
                }),
                agent: Some(crate::measure::AgentLosses {
                    response_bodies: BodyCounts {
                        complete,
                        truncated: 100 - complete,
                        bytes: 100 * 65_536,
                    },
                    ..Default::default()
                }),
            },
            direct: None,
        };
        let runs: Vec<BodyRun> = [(1024, 100), (65_536, 90)]
            .into_iter()
            .map(|(size, complete)| BodyRun {
                size,
                env: Environment {
                    body_bytes: Some(size),
                    ..Environment::default()
                },
                rounds: (1..=3).map(|i| round(i, complete)).collect(),
            })
            .collect();
        let doc = bodies_document(&runs);
        assert!(doc.contains("bash hack/bench-overhead.sh --body-bytes 1024,65536"));
        assert!(doc.contains("| 1 KiB (1024 bytes) | 0.900 (0.900 … 0.900) |"));
        assert!(doc.contains("| 300 / 300 (100.00 %) |"));
        assert!(doc.contains("| 270 / 300 (90.00 %) |"));
        assert!(doc.contains("## 64 KiB (65536 bytes) response bodies"));
        assert!(doc.contains("the agent kept 270 response bodies whole (90.00 %; like"));
        assert!(doc.contains("| 1 | 100 | 90 | 10 | 65536 | 17.0 | 0 |"));
        assert!(doc.contains("Per KiB of body, from 1 KiB (1024 bytes) to 64 KiB (65536 bytes)"));
    }
}
