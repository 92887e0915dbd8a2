//! palisade-eval: runs the node agent's request detectors over JSONL corpora (format of
//! shared/corpora/README.md) and prints markdown tables: detection rate per attack category,
//! per source and per CRS paranoia level, false-positive rate on benign records, and the cost per
//! request. Beside them, in the same run, the reference WAF: every request replayed through
//! nginx + ModSecurity v3 + OWASP CRS from Debian's packages (`waf.rs`). Scenario files (records
//! with `steps`, e.g. `api_abuse_scenarios.jsonl`) are replayed step by step through all the
//! detectors, the behavioural ones included (`scenario.rs`).
//!
//! ```text
//! cargo run --release -p palisade-eval -- ../shared/corpora/attacks.jsonl ../shared/corpora/benign.jsonl
//!     [../shared/corpora/api_abuse_scenarios.jsonl] [more.jsonl ...] [--level 1|2]
//!     [--waf auto|modsecurity|none] [--list-misses CATEGORY] [--list-fp] [--verdicts FILE]
//! ```

mod record;
mod report;
mod scenario;
mod verdicts;
mod waf;

use palisade_node_agent::detect::{CompiledRule, Inputs, RequestView, INJECTION_DETECTORS};
use palisade_node_agent::http::HeaderFields;
use record::Record;
use scenario::Scenario;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;
use waf::{Installation, Verdict, Waf};

const USAGE: &str = "\
usage: palisade-eval FILE.jsonl... [--level 1|2] [--waf auto|modsecurity|none]
                     [--list-misses CATEGORY] [--list-fp] [--verdicts FILE]

  FILE.jsonl     corpus records, one a line; a line with a `steps` array is a scenario, replayed
                 step by step through all detectors, behavioural ones included

  --level N      paranoia level of the ModSecurity column and of the lists below (default 1);
                 Palisade's detectors are always shown at both levels
  --waf MODE     the reference WAF column: every request replayed over 127.0.0.1 through a private
                 nginx + ModSecurity v3 + OWASP CRS (Debian's libnginx-mod-http-modsecurity and
                 modsecurity-crs, installed by hack/install-toolchain.sh); blocked = HTTP 403
                   auto         (default) when installed; otherwise the report says
                                \"ModSecurity column skipped: <why>\"
                   modsecurity  required: exit 1 when it cannot run
                   none         skip it
  --list-misses CATEGORY   attack records of CATEGORY that no detector caught (and the WAF's verdict)
  --list-fp      benign records on which a detector fired
  --verdicts FILE  write every detector's verdict and evidence at both levels, on every record
                 and on 300,000 generated values, to FILE: diff two of them to show that a change
                 to the detectors' speed found exactly the same";

/// Whether to measure the reference WAF.
#[derive(Clone, Copy, PartialEq, Eq)]
enum WafMode {
    Auto,
    Required,
    Off,
}

struct Options {
    files: Vec<String>,
    list_misses: Vec<String>,
    list_fp: bool,
    verdicts: Option<String>,
    level: usize,
    waf: WafMode,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        files: vec![],
        list_misses: vec![],
        list_fp: false,
        verdicts: None,
        level: 1,
        waf: WafMode::Auto,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--list-misses" => o
                .list_misses
                .push(args.next().ok_or("--list-misses needs a category")?),
            "--list-fp" => o.list_fp = true,
            "--verdicts" => o.verdicts = Some(args.next().ok_or("--verdicts needs a file")?),
            "--level" => {
                o.level = match args.next().as_deref() {
                    Some("1") => 1,
                    Some("2") => 2,
                    _ => return Err("--level takes 1 or 2".into()),
                }
            }
            "--waf" => {
                o.waf = match args.next().as_deref() {
                    Some("auto") => WafMode::Auto,
                    Some("modsecurity") => WafMode::Required,
                    Some("none") => WafMode::Off,
                    _ => return Err("--waf takes auto, modsecurity or none".into()),
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            _ if a.starts_with("--") => return Err(format!("unknown option {a}\n{USAGE}")),
            _ => o.files.push(a),
        }
    }
    if o.files.is_empty() {
        return Err(USAGE.into());
    }
    Ok(o)
}

/// The detectors at one paranoia level.
struct Engine {
    rules: Vec<CompiledRule>,
}

impl Engine {
    fn new(paranoia: &str) -> Result<Engine, String> {
        let rules = INJECTION_DETECTORS
            .iter()
            .map(|d| CompiledRule::builtin(d, &[("paranoia", paranoia)]))
            .collect::<Result<_, _>>()?;
        Ok(Engine { rules })
    }

    /// Bit i set: detector i fired. Also the first evidence.
    fn run(&self, view: &RequestView) -> (u8, Option<String>) {
        let inputs = Inputs::collect(view);
        let mut fired = 0u8;
        let mut evidence = None;
        for (i, rule) in self.rules.iter().enumerate() {
            if let Some(d) = rule.evaluate_with(view, &inputs) {
                fired |= 1 << i;
                evidence.get_or_insert_with(|| format!("{}: {}", rule.detector, d.evidence));
            }
        }
        (fired, evidence)
    }
}

struct Outcome {
    record: Record,
    /// Per level (index 0 = paranoia 1).
    fired: [u8; 2],
    evidence: [Option<String>; 2],
    /// The reference WAF's answer, when it was measured.
    waf: Option<Verdict>,
}

/// The reference WAF column: measured in this run, or why not.
enum WafColumn {
    Measured(WafRun),
    Skipped(String),
}

struct WafRun {
    /// Column header, with the versions used.
    label: String,
    versions: Vec<(String, String)>,
    level: usize,
    requests: usize,
    seconds: f64,
    /// Denials by the recommended configuration's own rules (body parse errors…), not the CRS.
    recommended_denials: usize,
}

/// Replays every evaluated request through nginx + ModSecurity + CRS and stores the verdicts.
fn measure_waf(outcomes: &mut [Outcome], level: usize) -> Result<WafRun, String> {
    let inst = Installation::locate()?;
    let label = inst.label(level);
    eprintln!("ModSecurity: starting nginx with the CRS at paranoia level {level}");
    let mut waf = Waf::start(&inst, level)?;
    let requests: Vec<Vec<u8>> = outcomes.iter().map(|o| o.record.to_wire()).collect();
    let start = Instant::now();
    let verdicts = waf.replay(&requests)?;
    let seconds = start.elapsed().as_secs_f64();
    for (o, v) in outcomes.iter_mut().zip(verdicts) {
        o.waf = Some(v);
    }
    Ok(WafRun {
        label,
        versions: inst.versions.clone(),
        level,
        requests: requests.len(),
        seconds,
        recommended_denials: waf.denials_by_recommended_rules(),
    })
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let engines = match (Engine::new("1"), Engine::new("2")) {
        (Ok(a), Ok(b)) => [a, b],
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("detectors do not compile: {e}");
            return ExitCode::FAILURE;
        }
    };

    let mut outcomes = Vec::new();
    let mut response_side: BTreeMap<String, usize> = BTreeMap::new();
    let mut timings_ns: Vec<u64> = Vec::new();
    let mut timings_attack_ns: Vec<u64> = Vec::new();
    let mut scenarios: Vec<Scenario> = Vec::new();
    let mut scenario_files: Vec<String> = Vec::new();
    for path in &opts.files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{path}: {e}");
                return ExitCode::FAILURE;
            }
        };
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<serde_json::Value>(line)
                .map_err(|e| format!("invalid JSON: {e}"))
                .and_then(|v| {
                    if Scenario::is_scenario(&v) {
                        Scenario::from_json(&v).map(Line::Scenario)
                    } else {
                        Record::from_json(&v, line).map(Line::Record)
                    }
                });
            let record = match parsed {
                Ok(Line::Record(r)) => r,
                Ok(Line::Scenario(s)) => {
                    if !scenario_files.contains(path) {
                        scenario_files.push(path.clone());
                    }
                    scenarios.push(s);
                    continue;
                }
                Err(e) => {
                    eprintln!("{path}:{}: {e}", n + 1);
                    return ExitCode::FAILURE;
                }
            };
            if record.is_response_side() {
                *response_side.entry(record.category.clone()).or_default() += 1;
                continue;
            }
            let headers: HeaderFields = record.headers.iter().map(|(k, v)| (k, v)).collect();
            let view = RequestView {
                method: &record.method,
                target: &record.target,
                headers: &headers,
                body: record.body.as_deref(),
            };
            let start = Instant::now();
            let (f1, e1) = engines[0].run(&view);
            let elapsed = start.elapsed().as_nanos() as u64;
            if record.is_benign() {
                timings_ns.push(elapsed);
            } else {
                timings_attack_ns.push(elapsed);
            }
            let (f2, e2) = engines[1].run(&view);
            outcomes.push(Outcome {
                record,
                fired: [f1, f2],
                evidence: [e1, e2],
                waf: None,
            });
        }
    }

    if let Some(path) = &opts.verdicts {
        let records: Vec<&Record> = outcomes.iter().map(|o| &o.record).collect();
        if let Err(e) = verdicts::write(path, &records, [&engines[0].rules, &engines[1].rules]) {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    }

    // After the detectors' timings, so that nginx does not share the CPU with them.
    let waf = match opts.waf {
        WafMode::Off => WafColumn::Skipped("not asked for (--waf none)".into()),
        _ if outcomes.is_empty() => WafColumn::Skipped("no single requests to replay".into()),
        WafMode::Auto | WafMode::Required => match measure_waf(&mut outcomes, opts.level) {
            Ok(run) => WafColumn::Measured(run),
            Err(why) if opts.waf == WafMode::Required => {
                eprintln!("ModSecurity: {why}");
                return ExitCode::FAILURE;
            }
            Err(why) => {
                eprintln!("ModSecurity column skipped: {why}");
                WafColumn::Skipped(why)
            }
        },
    };

    let mut replayed = Vec::with_capacity(scenarios.len());
    for s in &scenarios {
        match scenario::replay(s) {
            Ok(r) => replayed.push(r),
            Err(e) => {
                eprintln!("scenario {}: {e}", s.id);
                return ExitCode::FAILURE;
            }
        }
    }

    if outcomes.is_empty() && response_side.is_empty() {
        println!("# Palisade detectors on scenario sequences\n");
        println!("Date: {} · files: {}", report::today(), opts.files.join(", "));
    } else {
        report::print(
            &opts,
            &outcomes,
            &waf,
            &response_side,
            &timings_ns,
            &timings_attack_ns,
        );
    }
    if !replayed.is_empty() {
        scenario::print(&replayed, &scenario_files);
    }
    ExitCode::SUCCESS
}

/// One line of a corpus file.
enum Line {
    Record(Record),
    Scenario(Scenario),
}
