//! `--verdicts FILE`: every injection detector's verdict and evidence, at both paranoia levels,
//! on every single-request record and on generated values placed in 12 parts of a request. Two
//! files written before and after a change to the detectors' speed must be identical (`diff`):
//! a speed-up may not change what is found.
//!
//! Generated values splice pieces of the corpus requests (targets, header values, bodies) with
//! bytes of a hostile alphabet, from a fixed seed, so every run generates the same values.

use crate::record::Record;
use palisade_node_agent::detect::{CompiledRule, Inputs, RequestView};
use palisade_node_agent::http::HeaderFields;
use std::fmt::Write as _;
use std::io::Write as _;

/// Generated values (each placed in one part of a request).
const GENERATED: usize = 300_000;

/// Writes one line per (case, level, detector that fired): `case<TAB>level<TAB>detector<TAB>evidence`.
pub fn write(path: &str, records: &[&Record], levels: [&[CompiledRule]; 2]) -> Result<(), String> {
    let mut out = String::new();
    let mut judge = |case: &str, view: &RequestView| {
        let inputs = Inputs::collect(view);
        for (level, rules) in levels.iter().enumerate() {
            for rule in rules.iter() {
                if let Some(d) = rule.evaluate_with(view, &inputs) {
                    let evidence = d.evidence.replace('\n', "\\n");
                    let _ = writeln!(out, "{case}\t{}\t{}\t{evidence}", level + 1, rule.detector);
                }
            }
        }
    };
    for r in records {
        let headers: HeaderFields = r.headers.iter().map(|(k, v)| (k, v)).collect();
        judge(
            &r.id,
            &RequestView {
                method: &r.method,
                target: &r.target,
                headers: &headers,
                body: r.body.as_deref(),
            },
        );
    }
    let pool: Vec<String> = records
        .iter()
        .flat_map(|r| {
            let mut texts = vec![r.target.clone()];
            texts.extend(r.headers.iter().map(|(_, v)| v.clone()));
            texts.extend(r.body.as_deref().map(|b| String::from_utf8_lossy(b).into_owned()));
            texts
        })
        .filter(|t| !t.is_empty())
        .collect();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for n in 0..GENERATED {
        let value = generate(&mut rng, &pool);
        let place = n % 12;
        let case = format!("gen{n}/{place}");
        let (target, headers, body) = place_value(place, &value);
        let headers: HeaderFields = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        judge(
            &case,
            &RequestView {
                method: "POST",
                target: &target,
                headers: &headers,
                body: body.as_deref().map(str::as_bytes),
            },
        );
    }
    let mut file = std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?;
    file.write_all(out.as_bytes()).map_err(|e| format!("{path}: {e}"))
}

/// xorshift64*: a fixed sequence, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes and words that matter to the detectors, mixed into the spliced pieces.
const HOSTILE: &[&str] = &[
    "'",
    "\"",
    "<",
    ">",
    "(",
    ")",
    ";",
    "|",
    "&",
    "$",
    "{",
    "}",
    "`",
    "/",
    "\\",
    "..",
    "%",
    "%27",
    "%2e",
    "%00",
    "\0",
    "\n",
    "\r\n",
    " ",
    "+",
    "=",
    "#",
    "--",
    "/*",
    "*/",
    "@",
    ":",
    "//",
    "0x",
    "&#",
    "\\u",
    "${",
    "$(",
    "or ",
    " union ",
    "select",
    "sleep(",
    "<script>",
    "onerror=",
    "javascript:",
    "jndi:",
    "etc/passwd",
    "cat ",
    "127.0.0.1",
    "localhost",
    "http://",
    "file:/",
    "’",
    "ⓛ",
    "Ａ",
    "é",
    "∕",
    "A",
    "z",
    "1",
    "0",
];

/// A value: 1 to 3 slices of pool texts (at char boundaries), with hostile pieces between.
fn generate(rng: &mut Rng, pool: &[String]) -> String {
    let mut value = String::new();
    for _ in 0..1 + rng.below(3) {
        if let Some(text) = pool.get(rng.below(pool.len())) {
            let chars: Vec<char> = text.chars().collect();
            let start = rng.below(chars.len());
            let len = 1 + rng.below(80.min(chars.len() - start));
            value.extend(&chars[start..start + len]);
        }
        for _ in 0..rng.below(4) {
            value.push_str(HOSTILE[rng.below(HOSTILE.len())]);
        }
        if rng.below(4) == 0 {
            value = value.to_uppercase();
        }
    }
    value
}

/// Percent-encodes what cannot stand in a request target (and `%` half of the time, so that
/// some values are decoded once more).
fn escape(value: &str, all_percent: bool) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'&') && (b != b'%' || !all_percent) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

type Placed = (String, Vec<(&'static str, String)>, Option<String>);

/// A request with `value` in part `place` (0–11).
fn place_value(place: usize, value: &str) -> Placed {
    let header_safe: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    let json = serde_json::Value::String(value.to_string()).to_string();
    let plain = |target: String| (target, vec![("Host", "h".to_string())], None);
    let with_body = |ct: &str, body: String| {
        (
            "/api/x".to_string(),
            vec![("Host", "h".to_string()), ("Content-Type", ct.to_string())],
            Some(body),
        )
    };
    match place {
        0 => plain(format!("/api/{}/x", escape(value, false))),
        1 => plain(format!("/api?q={}&n=1", escape(value, false))),
        2 => plain(format!("/api?{}=1", escape(value, true))),
        3 => (
            "/".into(),
            vec![("Host", "h".into()), ("User-Agent", header_safe)],
            None,
        ),
        4 => (
            "/".into(),
            vec![("Host", "h".into()), ("Referer", header_safe)],
            None,
        ),
        5 => (
            "/".into(),
            vec![("Host", "h".into()), ("X-Custom", header_safe)],
            None,
        ),
        6 => (
            "/".into(),
            vec![
                ("Host", "h".into()),
                ("Cookie", format!("a=1; s={}", header_safe.replace(';', ""))),
            ],
            None,
        ),
        7 => with_body("application/json", format!("{{\"k\": {json}, \"n\": 1}}")),
        8 => with_body("application/json", format!("{{{json}: true}}")),
        9 => with_body(
            "application/x-www-form-urlencoded",
            format!("a=1&v={}", escape(value, false)),
        ),
        10 => with_body(
            "text/xml",
            format!("<r a=\"x\"><v>{}</v></r>", value.replace('<', "&lt;")),
        ),
        _ => with_body("text/plain", value.to_string()),
    }
}
