//! Detection rules as the agent runs them: built-in detectors and custom matches, compiled from
//! the policy configuration the operator sends.

use palisade_api::agent::{string_match_config, RuleConfig, StringMatchConfig};
use regex::Regex;

/// What a detector sees of a request.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// The request target as sent (path and query, not decoded).
    pub target: &'a str,
    pub headers: &'a [(String, String)],
}

/// A match: the rule that fired and what matched (not yet redacted).
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub evidence: String,
}

/// Decodes `%XX` and `%uXXXX` escapes once. Overlong UTF-8 encodings of `.` `/` `\` (a classic
/// filter evasion, e.g. `%c0%ae`) decode to the character they stand for.
pub fn percent_decode_once(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if i + 5 < bytes.len() && (bytes[i + 1] == b'u' || bytes[i + 1] == b'U') {
                let code = (2..6).try_fold(0u32, |acc, k| hex(bytes[i + k]).map(|d| acc * 16 + d as u32));
                if let Some(c) = code.and_then(char::from_u32) {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    i += 6;
                    continue;
                }
            }
            if i + 2 < bytes.len() {
                if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    // Overlong two- and three-byte encodings of ASCII punctuation.
    let mut folded = Vec::with_capacity(out.len());
    let mut j = 0;
    while j < out.len() {
        if j + 1 < out.len() && (out[j] == 0xc0 || out[j] == 0xc1) && (0x80..0xc0).contains(&out[j + 1]) {
            folded.push(((out[j] & 0x01) << 6) | (out[j + 1] & 0x3f));
            j += 2;
            continue;
        }
        if j + 2 < out.len() && out[j] == 0xe0 && out[j + 1] == 0x80 && (0x80..0xc0).contains(&out[j + 2]) {
            folded.push(out[j + 2] & 0x3f);
            j += 3;
            continue;
        }
        folded.push(out[j]);
        j += 1;
    }
    String::from_utf8_lossy(&folded).into_owned()
}

/// Decodes up to three layers of percent-encoding (double encoding is a common evasion).
pub fn decode_layers(input: &str) -> String {
    let mut current = input.to_string();
    for _ in 0..3 {
        let next = percent_decode_once(&current);
        if next == current {
            break;
        }
        current = next;
    }
    current
}

/// Path traversal: a `..` path segment in the decoded path or in any decoded query value.
pub fn path_traversal(target: &str) -> Option<Detection> {
    let decoded = decode_layers(target).replace('\\', "/");
    let has_dotdot_segment = |s: &str| {
        s.split(['/', '=', '&', '?', ';']).any(|seg| {
            let seg = seg.trim_end_matches('\0');
            seg == ".." || seg == "..." || seg.starts_with("..\0")
        })
    };
    if has_dotdot_segment(&decoded) {
        Some(Detection { evidence: decoded })
    } else {
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
}

enum RuleKind {
    PathTraversal,
    Custom(CustomMatch),
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
            ("pathTraversal", _) => RuleKind::PathTraversal,
            ("", Some(m)) => {
                let compile = |m: &Option<StringMatchConfig>| {
                    m.as_ref().map(Matcher::compile).transpose().map(Option::flatten)
                };
                if m.body.is_some() {
                    return Err(format!(
                        "rule {}: match.body needs body capture, which this agent version does not do yet",
                        rule.name
                    ));
                }
                CustomMatch {
                    methods: m.methods.clone(),
                    path: compile(&m.path).map_err(|e| format!("rule {}: match.path: {e}", rule.name))?,
                    query: compile(&m.query).map_err(|e| format!("rule {}: match.query: {e}", rule.name))?,
                    headers: m
                        .headers
                        .iter()
                        .map(|h| Ok((h.name.to_ascii_lowercase(), compile(&h.value)?)))
                        .collect::<Result<_, String>>()
                        .map_err(|e| format!("rule {}: match.headers: {e}", rule.name))?,
                }
                .into()
            }
            ("", None) => return Err(format!("rule {}: neither detector nor match is set", rule.name)),
            (other, _) => {
                return Err(format!(
                    "rule {}: detector {other} is not implemented by this agent version yet",
                    rule.name
                ))
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

    pub fn evaluate(&self, req: &RequestView) -> Option<Detection> {
        match &self.kind {
            RuleKind::PathTraversal => path_traversal(req.target),
            RuleKind::Custom(m) => {
                if !m.methods.is_empty() && !m.methods.iter().any(|x| x == req.method) {
                    return None;
                }
                let decoded = decode_layers(req.target);
                let (path, query) = decoded.split_once('?').unwrap_or((decoded.as_str(), ""));
                if m.path.as_ref().is_some_and(|p| !p.matches(path))
                    || m.query.as_ref().is_some_and(|q| !q.matches(query))
                {
                    return None;
                }
                for (name, value) in &m.headers {
                    let found = req.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name));
                    match (found, value) {
                        (None, _) => return None,
                        (Some((_, v)), Some(matcher)) if !matcher.matches(v) => return None,
                        _ => {}
                    }
                }
                Some(Detection {
                    evidence: format!("{} {}", req.method, decoded),
                })
            }
        }
    }
}

impl From<CustomMatch> for RuleKind {
    fn from(m: CustomMatch) -> Self {
        RuleKind::Custom(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    fn custom(m: RequestMatchConfig) -> RuleConfig {
        RuleConfig {
            name: "c".into(),
            detector: String::new(),
            params: Default::default(),
            severity: "low".into(),
            r#match: Some(m),
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
            headers: &[],
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

        let unimplemented = RuleConfig {
            detector: "bola".into(),
            ..custom(RequestMatchConfig::default())
        };
        assert!(CompiledRule::compile(&unimplemented)
            .err()
            .is_some_and(|e| e.contains("not implemented")));
    }
}
