//! The markdown report: Palisade's detectors at paranoia 1 and 2 and, when it was measured in the
//! same run, the reference WAF beside them.

use crate::waf::{Verdict, ANOMALY_THRESHOLD, CONNECTIONS};
use crate::{Options, Outcome, WafColumn, WafRun};
use palisade_node_agent::detect::INJECTION_DETECTORS;
use std::collections::BTreeMap;

/// Attack category → the detector meant for it.
const CATEGORY_DETECTOR: &[(&str, &str)] = &[
    ("sqli", "sqlInjection"),
    ("xss", "xss"),
    ("path_traversal", "pathTraversal"),
    ("command_injection", "commandInjection"),
    ("ssrf", "ssrf"),
    ("jndi_log4shell", "jndiInjection"),
    ("nosql_injection", "nosqlInjection"),
];

fn detector_bit(name: &str) -> u8 {
    INJECTION_DETECTORS
        .iter()
        .position(|d| *d == name)
        .map_or(0, |i| 1 << i)
}

#[derive(Default, Clone, Copy)]
struct Count {
    n: usize,
    any: [usize; 2],
    right: [usize; 2],
    /// The WAF answered 403.
    waf_blocked: usize,
    /// The WAF could not be asked (nginx's own 4xx, timeout, reset).
    waf_lost: usize,
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
        match &o.waf {
            Some(Verdict::Blocked) => self.waf_blocked += 1,
            Some(Verdict::NotReplayable(_)) => self.waf_lost += 1,
            Some(Verdict::Passed) | None => {}
        }
    }

    /// The WAF's share blocked, of the requests it answered.
    fn waf_rate(&self) -> String {
        pct(self.waf_blocked, self.n - self.waf_lost)
    }

    fn waf_fpr(&self) -> String {
        pct2(self.waf_blocked, self.n - self.waf_lost)
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
pub(crate) fn today() -> String {
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

/// A markdown table whose WAF columns are there only when the WAF was measured.
struct Table {
    head: Vec<(String, bool)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `head`: (title, right-aligned).
    fn new(head: &[(&str, bool)]) -> Table {
        Table {
            head: head.iter().map(|(t, r)| (t.to_string(), *r)).collect(),
            rows: vec![],
        }
    }

    fn col(&mut self, title: String) {
        self.head.push((title, true));
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn print(&self) {
        let titles: Vec<&str> = self.head.iter().map(|(t, _)| t.as_str()).collect();
        println!("| {} |", titles.join(" | "));
        let rules: Vec<&str> = self
            .head
            .iter()
            .map(|(_, right)| if *right { "---:" } else { "---" })
            .collect();
        println!("|{}|", rules.join("|"));
        for row in &self.rows {
            println!("| {} |", row.join(" | "));
        }
    }
}

pub(crate) fn print(
    opts: &Options,
    outcomes: &[Outcome],
    waf: &WafColumn,
    response_side: &BTreeMap<String, usize>,
    benign_ns: &[u64],
    attack_ns: &[u64],
) {
    let run = match waf {
        WafColumn::Measured(run) => Some(run),
        WafColumn::Skipped(_) => None,
    };
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
    match waf {
        WafColumn::Measured(run) => print_waf_setup(run),
        WafColumn::Skipped(why) => println!("ModSecurity column skipped: {why}.\n"),
    }

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
    // The WAF's cells: its rate and the requests it could not be asked.
    let waf_cells = |t: &mut Vec<String>, c: &Count| {
        if run.is_some() {
            t.push(c.waf_rate());
            t.push(c.waf_lost.to_string());
        }
    };
    let waf_cols = |t: &mut Table| {
        if let Some(run) = run {
            t.col(run.label.clone());
            t.col("not replayable".into());
        }
    };

    println!("## Detection rate per attack category\n");
    let mut t = Table::new(&[
        ("category", false),
        ("n", true),
        ("Palisade PL1: any detector", true),
        ("right detector", true),
        ("Palisade PL2: any", true),
        ("right", true),
    ]);
    waf_cols(&mut t);
    for (cat, _) in CATEGORY_DETECTOR {
        let c = by_cat.get(cat).copied().unwrap_or_default();
        let mut row = vec![
            cat.to_string(),
            c.n.to_string(),
            pct(c.any[0], c.n),
            pct(c.right[0], c.n),
            pct(c.any[1], c.n),
            pct(c.right[1], c.n),
        ];
        waf_cells(&mut row, &c);
        t.row(row);
    }
    let mut row = vec![
        "all attack requests (incl. categories without a detector)".into(),
        all.n.to_string(),
        pct(all.any[0], all.n),
        String::new(),
        pct(all.any[1], all.n),
        String::new(),
    ];
    waf_cells(&mut row, &all);
    t.row(row);
    t.print();

    println!("\n### Categories without a Palisade detector\n");
    let mut t = Table::new(&[
        ("category", false),
        ("n", true),
        ("fired anyway (PL1)", true),
        ("fired anyway (PL2)", true),
    ]);
    waf_cols(&mut t);
    for (cat, c) in &by_cat {
        if CATEGORY_DETECTOR.iter().any(|(k, _)| k == cat) {
            continue;
        }
        let mut row = vec![
            format!("{cat} (no detector)"),
            c.n.to_string(),
            pct(c.any[0], c.n),
            pct(c.any[1], c.n),
        ];
        waf_cells(&mut row, c);
        t.row(row);
    }
    for (cat, n) in response_side {
        let cat = if cat == "benign" {
            "benign (records with a response)"
        } else {
            cat
        };
        let mut row = vec![
            cat.to_string(),
            n.to_string(),
            "not evaluated here (response-side)".into(),
        ];
        row.resize(t.head.len(), String::new());
        t.row(row);
    }
    t.print();

    println!("\n## Per category and source\n");
    let mut t = Table::new(&[
        ("category", false),
        ("source", false),
        ("n", true),
        ("PL1 any", true),
        ("PL1 right", true),
        ("PL2 any", true),
    ]);
    waf_cols(&mut t);
    for ((cat, src), c) in &by_cat_source {
        if !CATEGORY_DETECTOR.iter().any(|(k, _)| k == cat) {
            continue;
        }
        let mut row = vec![
            cat.to_string(),
            src.to_string(),
            c.n.to_string(),
            pct(c.any[0], c.n),
            pct(c.right[0], c.n),
            pct(c.any[1], c.n),
        ];
        waf_cells(&mut row, c);
        t.row(row);
    }
    t.print();

    println!("\n## CRS regression cases by the paranoia level of the rule they test\n");
    let mut t = Table::new(&[
        ("category", false),
        ("PL1–2 n", true),
        ("Palisade PL1", true),
        ("Palisade PL2", true),
    ]);
    if let Some(run) = run {
        t.col(format!("ModSecurity PL{}", run.level));
    }
    for title in ["PL3–4 n", "Palisade PL1", "Palisade PL2"] {
        t.col(title.into());
    }
    if let Some(run) = run {
        t.col(format!("ModSecurity PL{}", run.level));
    }
    for (cat, _) in CATEGORY_DETECTOR {
        let mut row = vec![cat.to_string()];
        for high in [false, true] {
            let c = by_cat_pl.get(&(*cat, high)).copied().unwrap_or_default();
            row.extend([c.n.to_string(), pct(c.any[0], c.n), pct(c.any[1], c.n)]);
            if run.is_some() {
                row.push(c.waf_rate());
            }
        }
        t.row(row);
    }
    t.print();

    print_false_positives(&benign, &unverified, run);
    if let Some(run) = run {
        print_not_replayable(outcomes, run);
    }
    print_cost(benign_ns, attack_ns);
    print_lists(opts, &attacks, &benign, run);
}

fn print_waf_setup(run: &WafRun) {
    let versions: Vec<String> = run.versions.iter().map(|(p, v)| format!("{p} {v}")).collect();
    println!(
        "Reference WAF, measured in this run: {} (Debian packages), CRS paranoia level {}, \
         inbound anomaly threshold {ANOMALY_THRESHOLD}, request bodies inspected. Every evaluated \
         request was sent as raw HTTP/1.1 over 127.0.0.1 (`raw_request_b64` verbatim), one connection \
         each, {CONNECTIONS} at a time: {} requests in {:.1} s. Blocked = HTTP 403. Its rates are over \
         the requests nginx answered with 200 or 403; the rest (nginx's own 4xx, timeouts, resets) are \
         counted as \"not replayable\". {} of its blocks came from the recommended configuration's own \
         rules (a body ModSecurity cannot parse, too many arguments, multipart errors), not from the CRS.\n",
        if versions.is_empty() {
            "nginx + ModSecurity + CRS, versions unknown (no dpkg)".to_string()
        } else {
            versions.join(", ")
        },
        run.level,
        run.requests,
        run.seconds,
        run.recommended_denials
    );
}

fn print_false_positives(benign: &[&Outcome], unverified: &[&Outcome], run: Option<&WafRun>) {
    let mut fp_source: BTreeMap<&str, Count> = BTreeMap::new();
    let mut fp_all = Count::default();
    let mut fp_without = Count::default();
    let mut fp_detector = [[0usize; 2]; 8];
    for o in benign {
        fp_source.entry(o.record.source.as_str()).or_default().add(o, 0);
        fp_all.add(o, 0);
        if o.record.source != "httpparams" {
            fp_without.add(o, 0);
        }
        for (l, per_level) in o.fired.iter().enumerate() {
            for (i, row) in fp_detector.iter_mut().enumerate().take(INJECTION_DETECTORS.len()) {
                if per_level & (1 << i) != 0 {
                    row[l] += 1;
                }
            }
        }
    }
    println!("\n## False positives on benign requests\n");
    let mut t = Table::new(&[
        ("benign set", false),
        ("n", true),
        ("FP PL1", true),
        ("FPR PL1", true),
        ("FP PL2", true),
        ("FPR PL2", true),
    ]);
    if let Some(run) = run {
        t.col(format!("{}: FP", run.label));
        t.col("FPR".into());
        t.col("not replayable".into());
    }
    let sets = std::iter::once(("all benign requests".to_string(), fp_all))
        .chain(fp_source.iter().map(|(src, c)| (format!("source {src}"), *c)))
        .chain([("benign without httpparams".to_string(), fp_without)]);
    for (name, c) in sets {
        let mut row = vec![
            name,
            c.n.to_string(),
            c.any[0].to_string(),
            pct2(c.any[0], c.n),
            c.any[1].to_string(),
            pct2(c.any[1], c.n),
        ];
        if run.is_some() {
            row.extend([c.waf_blocked.to_string(), c.waf_fpr(), c.waf_lost.to_string()]);
        }
        t.row(row);
    }
    t.print();
    println!("\nFalse positives per detector (a request can count for several):\n");
    println!("| detector | FP PL1 | FP PL2 |");
    println!("|---|---:|---:|");
    for (i, d) in INJECTION_DETECTORS.iter().enumerate() {
        println!("| {d} | {} | {} |", fp_detector[i][0], fp_detector[i][1]);
    }
    if !unverified.is_empty() {
        let mut u = Count::default();
        for o in unverified {
            u.add(o, 0);
        }
        let waf = match run {
            Some(run) => format!(
                "; ModSecurity PL{} blocked {} of {} replayed ({})",
                run.level,
                u.waf_blocked,
                u.n - u.waf_lost,
                u.waf_rate()
            ),
            None => String::new(),
        };
        println!(
            "\nUnverified CRS negatives (not benign for sure, not in the FPR): {} records, fired on {} at PL1 ({}), {} at PL2 ({}){waf}.",
            u.n,
            u.any[0],
            pct(u.any[0], u.n),
            u.any[1],
            pct(u.any[1], u.n)
        );
    }
}

/// Why requests could not be replayed, and of which kind they were.
fn print_not_replayable(outcomes: &[Outcome], run: &WafRun) {
    let mut by_reason: BTreeMap<&str, (BTreeMap<&str, usize>, Vec<&str>)> = BTreeMap::new();
    for o in outcomes {
        if let Some(Verdict::NotReplayable(why)) = &o.waf {
            let (cats, ids) = by_reason.entry(why.as_str()).or_default();
            *cats.entry(o.record.category.as_str()).or_default() += 1;
            ids.push(o.record.id.as_str());
        }
    }
    println!("\n## Requests the WAF could not be asked (PL{})\n", run.level);
    if by_reason.is_empty() {
        println!("None: nginx answered every request with 200 or 403.");
        return;
    }
    println!("| answer | n | categories | records |");
    println!("|---|---:|---|---|");
    for (why, (cats, ids)) in &by_reason {
        let n: usize = cats.values().sum();
        let list: Vec<String> = cats.iter().map(|(c, k)| format!("{c} {k}")).collect();
        let more = if ids.len() > 8 { ", …" } else { "" };
        println!(
            "| {why} | {n} | {} | {}{more} |",
            list.join(", "),
            ids[..ids.len().min(8)].join(", ")
        );
    }
}

fn print_cost(benign_ns: &[u64], attack_ns: &[u64]) {
    println!("\n## Cost\n");
    println!(
        "Input extraction plus all {} injection detectors at paranoia 1, one request at a time, this build:\n",
        INJECTION_DETECTORS.len()
    );
    println!("| requests | n | mean µs/request | p50 µs | p99 µs | max µs | requests/s per core |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, ns) in [("benign", benign_ns), ("attack and unverified", attack_ns)] {
        let mut v = ns.to_vec();
        v.sort_unstable();
        if v.is_empty() {
            continue;
        }
        let mean = v.iter().sum::<u64>() as f64 / v.len() as f64 / 1000.0;
        let q = |p: f64| v[((v.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
        // One request after the other on one core: 1e6 / mean µs.
        let per_second = if mean > 0.0 { 1e6 / mean } else { 0.0 };
        println!(
            "| {name} | {} | {mean:.2} | {:.2} | {:.2} | {:.2} | {per_second:.0} |",
            v.len(),
            q(0.5),
            q(0.99),
            q(1.0)
        );
    }
}

fn print_lists(opts: &Options, attacks: &[&Outcome], benign: &[&Outcome], run: Option<&WafRun>) {
    let level = opts.level - 1;
    let waf_note = |o: &Outcome| match (&o.waf, run) {
        (Some(Verdict::Blocked), Some(run)) => format!(" | ModSecurity PL{}: blocked", run.level),
        (Some(Verdict::Passed), Some(run)) => format!(" | ModSecurity PL{}: passed", run.level),
        (Some(Verdict::NotReplayable(why)), Some(_)) => format!(" | ModSecurity: not replayable ({why})"),
        _ => String::new(),
    };
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
                "- `{}` {} {} | {} | {}{}",
                o.record.id,
                o.record.method,
                short(&o.record.target, 160),
                headers.join(" ; "),
                short(&body, 200),
                waf_note(o)
            );
        }
    }
    if opts.list_fp {
        println!("\n## False positives at PL{}\n", opts.level);
        for o in benign.iter().filter(|o| o.fired[level] != 0) {
            println!(
                "- `{}` {} | {}{}",
                o.record.id,
                short(&o.record.target, 120),
                short(o.evidence[level].as_deref().unwrap_or(""), 200),
                waf_note(o)
            );
        }
    }
}
