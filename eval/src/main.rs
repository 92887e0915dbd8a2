//! palisade-eval: runs the node agent's request detectors over JSONL corpora (format of
//! shared/corpora/README.md) and prints markdown tables: detection rate per attack category,
//! per source and per CRS paranoia level, false-positive rate on benign records, and the cost per
//! request.
//!
//! ```text
//! cargo run --release -p palisade-eval -- ../shared/corpora/attacks.jsonl ../shared/corpora/benign.jsonl
//!     [more.jsonl ...] [--list-misses CATEGORY] [--list-fp] [--level 1|2]
//! ```

mod record;

use palisade_node_agent::detect::{CompiledRule, Inputs, RequestView, INJECTION_DETECTORS};
use record::Record;
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

/// Attack category → the detector meant for it.
const CATEGORY_DETECTOR: &[(&str, &str)] = &[
    ("sqli", "sqlInjection"),
    ("xss", "xss"),
    ("path_traversal", "pathTraversal"),
    ("command_injection", "commandInjection"),
    ("ssrf", "ssrf"),
    ("jndi_log4shell", "jndiInjection"),
];

/// The reference WAF's measured detection (nginx + ModSecurity 3.0.9 + CRS 3.3.4, anomaly
/// threshold 5), from shared/notes/landscape.md: (PL1, PL2).
const CRS_REFERENCE: &[(&str, &str, &str)] = &[
    ("sqli", "94.5 %", "98.0 %"),
    ("xss", "94.0 %", "95.8 %"),
    ("path_traversal", "92.6 %", "93.0 %"),
    ("command_injection", "49.1 %", "58.3 %"),
    ("ssrf", "23.2 %", "59.6 %"),
    ("jndi_log4shell", "46.1 %", "46.1 %"),
    ("all", "86.9 %", "91.0 %"),
];
const CRS_REFERENCE_FPR: (&str, &str) = ("0.85 %", "3.0 %");
const CRS_LABEL: &str = "CRS 3.3.4 PL1, measured earlier, see landscape.md";

struct Options {
    files: Vec<String>,
    list_misses: Vec<String>,
    list_fp: bool,
    level: usize,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        files: vec![],
        list_misses: vec![],
        list_fp: false,
        level: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--list-misses" => o
                .list_misses
                .push(args.next().ok_or("--list-misses needs a category")?),
            "--list-fp" => o.list_fp = true,
            "--level" => {
                o.level = match args.next().as_deref() {
                    Some("1") => 1,
                    Some("2") => 2,
                    _ => return Err("--level takes 1 or 2".into()),
                }
            }
            "-h" | "--help" => {
                return Err(
                    "usage: palisade-eval FILE.jsonl... [--list-misses CATEGORY] [--list-fp] [--level 1|2]"
                        .into(),
                )
            }
            _ if a.starts_with("--") => return Err(format!("unknown option {a}")),
            _ => o.files.push(a),
        }
    }
    if o.files.is_empty() {
        return Err(
            "usage: palisade-eval FILE.jsonl... [--list-misses CATEGORY] [--list-fp] [--level 1|2]".into(),
        );
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

fn detector_bit(name: &str) -> u8 {
    INJECTION_DETECTORS
        .iter()
        .position(|d| *d == name)
        .map_or(0, |i| 1 << i)
}

struct Outcome {
    record: Record,
    /// Per level (index 0 = paranoia 1).
    fired: [u8; 2],
    evidence: [Option<String>; 2],
}

#[derive(Default, Clone, Copy)]
struct Count {
    n: usize,
    any: [usize; 2],
    right: [usize; 2],
}

impl Count {
    fn add(&mut self, o: &Outcome, right_bit: u8) {
        self.n += 1;
        for l in 0..2 {
            if o.fired[l] != 0 {
                self.any[l] += 1;
            }
            if o.fired[l] & right_bit != 0 {
                self.right[l] += 1;
            }
        }
    }
}

fn pct(k: usize, n: usize) -> String {
    if n == 0 {
        "–".into()
    } else {
        format!("{:.1} %", 100.0 * k as f64 / n as f64)
    }
}

fn pct2(k: usize, n: usize) -> String {
    if n == 0 {
        "–".into()
    } else {
        format!("{:.3} %", 100.0 * k as f64 / n as f64)
    }
}

/// Today's date (UTC) as YYYY-MM-DD, without a date crate.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn short(s: &str, max: usize) -> String {
    let mut out: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
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
            let record = match Record::parse(line) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{path}:{}: {e}", n + 1);
                    return ExitCode::FAILURE;
                }
            };
            if record.is_response_side() {
                *response_side.entry(record.category.clone()).or_default() += 1;
                continue;
            }
            let view = RequestView {
                method: &record.method,
                target: &record.target,
                headers: &record.headers,
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
            });
        }
    }

    report(&opts, &outcomes, &response_side, &timings_ns, &timings_attack_ns);
    ExitCode::SUCCESS
}

fn report(
    opts: &Options,
    outcomes: &[Outcome],
    response_side: &BTreeMap<String, usize>,
    benign_ns: &[u64],
    attack_ns: &[u64],
) {
    let attacks: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.record.is_benign() && !o.record.is_unverified())
        .collect();
    let benign: Vec<&Outcome> = outcomes.iter().filter(|o| o.record.is_benign()).collect();
    let unverified: Vec<&Outcome> = outcomes.iter().filter(|o| o.record.is_unverified()).collect();

    println!("# Palisade request detectors on the corpora\n");
    println!("Date: {} · files: {}", today(), opts.files.join(", "));
    println!(
        "\nRecords evaluated: {} attack requests, {} benign requests, {} unverified negatives. \
         Detectors: {} (each at paranoia 1 and 2). \
         A true positive is an attack record on which any detector fires; \"right detector\" is the \
         one meant for the category.\n",
        attacks.len(),
        benign.len(),
        unverified.len(),
        INJECTION_DETECTORS.join(", ")
    );

    // Per category.
    let mut by_cat: BTreeMap<&str, Count> = BTreeMap::new();
    let mut by_cat_source: BTreeMap<(&str, &str), Count> = BTreeMap::new();
    let mut by_cat_pl: BTreeMap<(&str, bool), Count> = BTreeMap::new();
    let mut all = Count::default();
    for o in &attacks {
        let cat = o.record.category.as_str();
        let bit = CATEGORY_DETECTOR
            .iter()
            .find(|(c, _)| *c == cat)
            .map_or(0, |(_, d)| detector_bit(d));
        by_cat.entry(cat).or_default().add(o, bit);
        by_cat_source
            .entry((cat, o.record.source.as_str()))
            .or_default()
            .add(o, bit);
        if let Some(pl) = o
            .record
            .paranoia_level
            .filter(|_| o.record.source == "coreruleset")
        {
            by_cat_pl.entry((cat, pl >= 3)).or_default().add(o, bit);
        }
        all.add(o, 0);
    }

    println!("## Detection rate per attack category\n");
    println!(
        "| category | n | Palisade PL1: any detector | right detector | Palisade PL2: any | right | {CRS_LABEL} | CRS 3.3.4 PL2 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (cat, _) in CATEGORY_DETECTOR {
        let c = by_cat.get(cat).copied().unwrap_or_default();
        let (r1, r2) = CRS_REFERENCE
            .iter()
            .find(|(k, _, _)| k == cat)
            .map_or(("", ""), |(_, a, b)| (*a, *b));
        println!(
            "| {cat} | {} | {} | {} | {} | {} | {r1} | {r2} |",
            c.n,
            pct(c.any[0], c.n),
            pct(c.right[0], c.n),
            pct(c.any[1], c.n),
            pct(c.right[1], c.n)
        );
    }
    let (r1, r2) = CRS_REFERENCE
        .iter()
        .find(|(k, _, _)| *k == "all")
        .map_or(("", ""), |(_, a, b)| (*a, *b));
    println!(
        "| all attack requests (incl. categories without a detector) | {} | {} | | {} | | {r1} | {r2} |",
        all.n,
        pct(all.any[0], all.n),
        pct(all.any[1], all.n)
    );

    println!("\n### Categories without a Palisade detector\n");
    println!("| category | n | fired anyway (PL1) | fired anyway (PL2) |");
    println!("|---|---:|---:|---:|");
    for (cat, c) in &by_cat {
        if CATEGORY_DETECTOR.iter().any(|(k, _)| k == cat) {
            continue;
        }
        println!(
            "| {cat} (no detector) | {} | {} | {} |",
            c.n,
            pct(c.any[0], c.n),
            pct(c.any[1], c.n)
        );
    }
    for (cat, n) in response_side {
        let cat = if cat == "benign" {
            "benign (records with a response)"
        } else {
            cat
        };
        println!("| {cat} | {n} | not evaluated here (response-side) | |");
    }

    println!("\n## Per category and source\n");
    println!("| category | source | n | PL1 any | PL1 right | PL2 any |");
    println!("|---|---|---:|---:|---:|---:|");
    for ((cat, src), c) in &by_cat_source {
        if !CATEGORY_DETECTOR.iter().any(|(k, _)| k == cat) {
            continue;
        }
        println!(
            "| {cat} | {src} | {} | {} | {} | {} |",
            c.n,
            pct(c.any[0], c.n),
            pct(c.right[0], c.n),
            pct(c.any[1], c.n)
        );
    }

    println!("\n## CRS regression cases by the paranoia level of the rule they test\n");
    println!("| category | PL1–2 n | Palisade PL1 | Palisade PL2 | PL3–4 n | Palisade PL1 | Palisade PL2 |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (cat, _) in CATEGORY_DETECTOR {
        let lo = by_cat_pl.get(&(*cat, false)).copied().unwrap_or_default();
        let hi = by_cat_pl.get(&(*cat, true)).copied().unwrap_or_default();
        println!(
            "| {cat} | {} | {} | {} | {} | {} | {} |",
            lo.n,
            pct(lo.any[0], lo.n),
            pct(lo.any[1], lo.n),
            hi.n,
            pct(hi.any[0], hi.n),
            pct(hi.any[1], hi.n)
        );
    }

    // False positives.
    let mut fp_source: BTreeMap<&str, Count> = BTreeMap::new();
    let mut fp_all = Count::default();
    let mut fp_detector = [[0usize; 2]; 8];
    for o in &benign {
        fp_source.entry(o.record.source.as_str()).or_default().add(o, 0);
        fp_all.add(o, 0);
        for (l, per_level) in o.fired.iter().enumerate() {
            for (i, row) in fp_detector.iter_mut().enumerate().take(INJECTION_DETECTORS.len()) {
                if per_level & (1 << i) != 0 {
                    row[l] += 1;
                }
            }
        }
    }
    println!("\n## False positives on benign requests\n");
    println!("| benign set | n | FP PL1 | FPR PL1 | FP PL2 | FPR PL2 | {CRS_LABEL} | CRS 3.3.4 PL2 |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| all benign requests | {} | {} | {} | {} | {} | {} | {} |",
        fp_all.n,
        fp_all.any[0],
        pct2(fp_all.any[0], fp_all.n),
        fp_all.any[1],
        pct2(fp_all.any[1], fp_all.n),
        CRS_REFERENCE_FPR.0,
        CRS_REFERENCE_FPR.1
    );
    for (src, c) in &fp_source {
        println!(
            "| source {src} | {} | {} | {} | {} | {} | | |",
            c.n,
            c.any[0],
            pct2(c.any[0], c.n),
            c.any[1],
            pct2(c.any[1], c.n)
        );
    }
    let without: Vec<&&Outcome> = benign
        .iter()
        .filter(|o| o.record.source != "httpparams")
        .collect();
    let w1 = without.iter().filter(|o| o.fired[0] != 0).count();
    let w2 = without.iter().filter(|o| o.fired[1] != 0).count();
    println!(
        "| benign without httpparams | {} | {w1} | {} | {w2} | {} | ~15 % | higher |",
        without.len(),
        pct2(w1, without.len()),
        pct2(w2, without.len())
    );
    println!("\nFalse positives per detector (a request can count for several):\n");
    println!("| detector | FP PL1 | FP PL2 |");
    println!("|---|---:|---:|");
    for (i, d) in INJECTION_DETECTORS.iter().enumerate() {
        println!("| {d} | {} | {} |", fp_detector[i][0], fp_detector[i][1]);
    }
    if !unverified.is_empty() {
        let u1 = unverified.iter().filter(|o| o.fired[0] != 0).count();
        let u2 = unverified.iter().filter(|o| o.fired[1] != 0).count();
        println!(
            "\nUnverified CRS negatives (not benign for sure, not in the FPR): {} records, fired on {} at PL1 ({}), {} at PL2 ({}).",
            unverified.len(),
            u1,
            pct(u1, unverified.len()),
            u2,
            pct(u2, unverified.len())
        );
    }

    println!("\n## Cost\n");
    println!("Input extraction plus all six detectors at paranoia 1, one request at a time, this build:\n");
    println!("| requests | n | mean µs/request | p50 µs | p99 µs | max µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, ns) in [("benign", benign_ns), ("attack and unverified", attack_ns)] {
        let mut v = ns.to_vec();
        v.sort_unstable();
        if v.is_empty() {
            continue;
        }
        let mean = v.iter().sum::<u64>() as f64 / v.len() as f64 / 1000.0;
        let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
        println!(
            "| {name} | {} | {mean:.2} | {:.2} | {:.2} | {:.2} |",
            v.len(),
            q(0.5),
            q(0.99),
            q(1.0)
        );
    }

    let level = opts.level - 1;
    for cat in &opts.list_misses {
        println!("\n## Missed at PL{} — {cat}\n", opts.level);
        for o in attacks
            .iter()
            .filter(|o| o.record.category == *cat && o.fired[level] == 0)
        {
            let body = o
                .record
                .body
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let headers: Vec<String> = o
                .record
                .headers
                .iter()
                .filter(|(k, v)| {
                    let k = k.to_ascii_lowercase();
                    let boring = matches!(
                        k.as_str(),
                        "host"
                            | "accept"
                            | "connection"
                            | "content-length"
                            | "accept-encoding"
                            | "accept-language"
                            | "keep-alive"
                            | "proxy-connection"
                    );
                    let test_agent = k == "user-agent" && v == "OWASP CRS test agent";
                    !(boring || test_agent)
                })
                .map(|(k, v)| format!("{k}: {}", short(v, 80)))
                .collect();
            println!(
                "- `{}` {} {} | {} | {}",
                o.record.id,
                o.record.method,
                short(&o.record.target, 160),
                headers.join(" ; "),
                short(&body, 200)
            );
        }
    }
    if opts.list_fp {
        println!("\n## False positives at PL{}\n", opts.level);
        for o in benign.iter().filter(|o| o.fired[level] != 0) {
            println!(
                "- `{}` {} | {}",
                o.record.id,
                short(&o.record.target, 120),
                short(o.evidence[level].as_deref().unwrap_or(""), 200)
            );
        }
    }
}
