//! Redaction on the node: nothing that leaves the agent (reports, logs, metrics) carries secrets.

use std::borrow::Cow;

/// Header names whose values are always redacted (lower case).
pub const DEFAULT_SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
    "x-csrf-token",
    "x-amz-security-token",
];

/// Query parameter names whose values are redacted (substring match, lower case).
const SECRET_PARAM_HINTS: &[&str] = &[
    "token", "password", "passwd", "secret", "key", "auth", "session", "sig",
];

pub const REDACTED: &str = "[REDACTED]";

/// Whether a header's value must be redacted, given extra names from the ApiMonitor.
pub fn is_secret_header(name: &str, extra: &[String]) -> bool {
    let lower = name.to_ascii_lowercase();
    DEFAULT_SECRET_HEADERS.contains(&lower.as_str()) || extra.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Luhn check for a run of 13 to 19 digits.
pub fn luhn_valid(digits: &[u8]) -> bool {
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = (d - b'0') as u32;
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Cloud and service credentials recognisable by their shape, each with the name shown instead.
const CREDENTIAL_SOURCES: &[(&str, &str)] = &[
    (
        "aws-access-key",
        r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b",
    ),
    (
        "aws-secret-key",
        r"(?i)aws_secret_access_key\s*[=:]\s*[A-Za-z0-9/+=]{40}",
    ),
    (
        "private-key",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
    ),
    ("github-token", r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    ("slack-token", r"\bxox[abpors]-[A-Za-z0-9-]{10,}\b"),
    ("stripe-key", r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}\b"),
    ("google-api-key", r"\bAIza[0-9A-Za-z_-]{35}\b"),
];

/// Values of secret-named keys in JSON-like (`"password": "x"`) or form-like (`password=x`)
/// fragments of free text, such as evidence cut from a request body.
const SECRET_KEY_VALUE_SOURCE: &str = r#"(?i)("?[a-z0-9_-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|authorization|cookie|session|cvv|ssn)[a-z0-9_-]*"?\s*[:=]\s*)("[^"]*"|[^&\r\n,;}"]+)"#;

/// Each credential pattern with its index in [`CREDENTIAL_SOURCES`] and its name.
static CREDENTIAL_PATTERNS: std::sync::LazyLock<Vec<(usize, &'static str, regex::Regex)>> =
    std::sync::LazyLock::new(|| {
        CREDENTIAL_SOURCES
            .iter()
            .enumerate()
            .filter_map(|(i, (name, re))| regex::Regex::new(re).ok().map(|r| (i, *name, r)))
            .collect()
    });

static SECRET_KEY_VALUE: std::sync::LazyLock<Option<regex::Regex>> =
    std::sync::LazyLock::new(|| regex::Regex::new(SECRET_KEY_VALUE_SOURCE).ok());

/// Every pattern above in one automaton, index for index (the key-value pattern last): one pass
/// says which of them can match, so text without any credential is read once, not once per
/// pattern.
static ANY_SECRET_PATTERN: std::sync::LazyLock<Option<regex::RegexSet>> = std::sync::LazyLock::new(|| {
    regex::RegexSet::new(
        CREDENTIAL_SOURCES
            .iter()
            .map(|(_, re)| *re)
            .chain([SECRET_KEY_VALUE_SOURCE]),
    )
    .ok()
});

/// Replaces card numbers (Luhn-valid runs of 13-19 digits, spaces or dashes allowed between),
/// bearer tokens, JWT-shaped strings, cloud credentials and values of secret-named keys in free
/// text.
pub fn redact_text(text: &str) -> Cow<'_, str> {
    let hits = ANY_SECRET_PATTERN.as_ref().map(|set| set.matches(text));
    // Without the set (it always compiles), every pattern is tried.
    let may_match = |i: usize| hits.as_ref().is_none_or(|h| h.matched(i));
    let mut text = Cow::Borrowed(text);
    for (i, name, re) in CREDENTIAL_PATTERNS.iter() {
        if may_match(*i) && re.is_match(&text) {
            text = Cow::Owned(
                re.replace_all(&text, format!("[REDACTED:{name}]").as_str())
                    .into_owned(),
            );
        }
    }
    if let Some(re) = SECRET_KEY_VALUE.as_ref() {
        if may_match(CREDENTIAL_SOURCES.len()) && re.is_match(&text) {
            text = Cow::Owned(re.replace_all(&text, "${1}[REDACTED]").into_owned());
        }
    }
    match text {
        Cow::Borrowed(t) => redact_scan(t),
        Cow::Owned(t) => Cow::Owned(redact_scan(&t).into_owned()),
    }
}

/// Cards, bearer tokens and JWTs, in one pass.
fn redact_scan(text: &str) -> Cow<'_, str> {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut changed = false;
    while i < bytes.len() {
        // Card numbers.
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
            let mut j = i;
            let mut digits = Vec::new();
            while j < bytes.len()
                && (bytes[j].is_ascii_digit()
                    || ((bytes[j] == b' ' || bytes[j] == b'-') && digits.len() < 19))
            {
                if bytes[j].is_ascii_digit() {
                    digits.push(bytes[j]);
                }
                j += 1;
            }
            while j > i && !bytes[j - 1].is_ascii_digit() {
                j -= 1;
            }
            if luhn_valid(&digits) && (j == bytes.len() || !bytes[j].is_ascii_alphanumeric()) {
                out.push_str("[REDACTED:card]");
                i = j;
                changed = true;
                continue;
            }
        }
        // Bearer tokens.
        // Compared as bytes: `i + 7` may fall inside a multi-byte character.
        if bytes.len() - i >= 7
            && text.is_char_boundary(i)
            && bytes[i..i + 7].eq_ignore_ascii_case(b"bearer ")
        {
            let end = text[i + 7..]
                .find(|c: char| c.is_whitespace() || c == '"' || c == '&')
                .map(|e| i + 7 + e)
                .unwrap_or(text.len());
            if end > i + 7 {
                out.push_str("Bearer [REDACTED]");
                i = end;
                changed = true;
                continue;
            }
        }
        // JWTs: three base64url parts starting with eyJ.
        if text.is_char_boundary(i) && text[i..].starts_with("eyJ") {
            let end = text[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
                .map(|e| i + e)
                .unwrap_or(text.len());
            if text[i..end].matches('.').count() == 2 {
                out.push_str("[REDACTED:jwt]");
                i = end;
                changed = true;
                continue;
            }
        }
        let ch_len = text[i..].chars().next().map(|c| c.len_utf8()).unwrap_or(1);
        out.push_str(&text[i..i + ch_len]);
        i += ch_len;
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(text)
    }
}

/// Redacts the values of secret-looking query parameters, then free-text secrets.
pub fn redact_target(target: &str) -> String {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut out = redact_text(path).into_owned();
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _))
                    if SECRET_PARAM_HINTS
                        .iter()
                        .any(|h| k.to_ascii_lowercase().contains(h)) =>
                {
                    format!("{k}={REDACTED}")
                }
                _ => redact_text(kv).into_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

/// Cuts a string to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_pattern_compiles_alone_and_in_the_set() {
        assert_eq!(CREDENTIAL_PATTERNS.len(), CREDENTIAL_SOURCES.len());
        assert!(SECRET_KEY_VALUE.is_some());
        let set = ANY_SECRET_PATTERN.as_ref().expect("the set compiles");
        assert_eq!(set.len(), CREDENTIAL_SOURCES.len() + 1);
        // The set's verdicts line up with the patterns, index for index.
        let text = "ghp_0123456789abcdefghijABCDEFGHIJ012345 and password=hunter2";
        let hits = set.matches(text);
        let github = CREDENTIAL_SOURCES
            .iter()
            .position(|(n, _)| *n == "github-token")
            .expect("named");
        assert!(hits.matched(github) && hits.matched(CREDENTIAL_SOURCES.len()));
        assert_eq!(hits.iter().count(), 2);
        let out = redact_text(text);
        assert!(!out.contains("ghp_0123") && !out.contains("hunter2"), "{out}");
    }

    #[test]
    fn secret_headers_are_recognised() {
        assert!(is_secret_header("Authorization", &[]));
        assert!(is_secret_header("COOKIE", &[]));
        assert!(is_secret_header("X-Internal", &["x-internal".to_string()]));
        assert!(!is_secret_header("Accept", &[]));
    }

    #[test]
    fn cards_tokens_and_jwts_are_redacted() {
        assert_eq!(
            redact_text("card 4111 1111 1111 1111 ok"),
            "card [REDACTED:card] ok"
        );
        assert_eq!(redact_text("4111-1111-1111-1111"), "[REDACTED:card]");
        assert_eq!(
            redact_text("order 4111111111111112"),
            "order 4111111111111112",
            "fails Luhn"
        );
        assert_eq!(
            redact_text("Authorization: Bearer abc.def"),
            "Authorization: [REDACTED]"
        );
        assert_eq!(
            redact_text("sent Bearer abc.def here"),
            "sent Bearer [REDACTED] here"
        );
        assert_eq!(
            redact_text("t=eyJhbGciOi.eyJzdWIiOi.c2lnbmF0dXJl!"),
            "t=[REDACTED:jwt]!"
        );
        assert_eq!(redact_text("ünïcode 42"), "ünïcode 42");
    }

    #[test]
    fn multi_byte_text_anywhere_is_safe() {
        // Every prefix cut of texts mixing multi-byte characters with what the scan looks for.
        for text in [
            "response 200 carries card number ×1",
            "é Bearer ×",
            "×eyJ.a.b ü 4111 1111 1111 1111 é",
        ] {
            for (i, _) in text.char_indices() {
                let _ = redact_text(&text[i..]);
            }
        }
        assert_eq!(redact_text("×1 Bearer abc ×"), "×1 Bearer [REDACTED] ×");
    }

    #[test]
    fn secret_keys_in_json_and_form_fragments_are_redacted() {
        let t = redact_text(r#"{"user":"bob","password":"hunter2","q":"x"} and api_key=abc123&x=1"#);
        assert!(!t.contains("hunter2") && !t.contains("abc123"), "{t}");
        assert!(t.contains(r#""user":"bob""#) && t.contains("x=1"), "{t}");
    }

    #[test]
    fn cloud_credentials_are_redacted() {
        let t = redact_text(
            "key AKIAIOSFODNN7EXAMPLE and aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY!",
        );
        assert!(
            !t.contains("AKIAIOSFODNN7EXAMPLE") && !t.contains("wJalrXUtnFEMI"),
            "{t}"
        );
        assert!(
            t.contains("[REDACTED:aws-access-key]") && t.contains("[REDACTED:aws-secret-key]"),
            "{t}"
        );
        let pem = "x -----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY----- y";
        assert_eq!(redact_text(pem), "x [REDACTED:private-key] y");
        assert!(redact_text("ghp_0123456789abcdefghijABCDEFGHIJ012345").contains("[REDACTED:github-token]"));
        assert_eq!(redact_text("plain words"), "plain words");
    }

    #[test]
    fn query_secrets_are_redacted() {
        assert_eq!(
            redact_target("/login?user=bob&password=hunter2&api_key=xyz"),
            "/login?user=bob&password=[REDACTED]&api_key=[REDACTED]"
        );
        assert_eq!(redact_target("/pay?n=4111111111111111"), "/pay?n=[REDACTED:card]");
    }
}

/// JSON keys whose values are always redacted, wherever they appear (lower case, substring).
const SECRET_JSON_KEY_HINTS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "authorization",
    "cookie",
    "cvv",
    "ssn",
];

/// The redaction an ApiMonitor asks for, compiled once per configuration, on top of the
/// defaults that always apply.
#[derive(Debug, Default)]
pub struct Redactor {
    extra_headers: Vec<String>,
    /// Dotted JSON paths split into segments (`*` matches any key or array index).
    json_paths: Vec<Vec<String>>,
    patterns: Vec<(String, regex::Regex)>,
}

impl Redactor {
    /// Compiles the monitor's redaction; invalid patterns are returned as errors (they become
    /// a status condition) and skipped.
    pub fn compile(cfg: Option<&palisade_api::agent::RedactionConfig>) -> (Redactor, Vec<String>) {
        let mut errors = vec![];
        let Some(cfg) = cfg else {
            return (Redactor::default(), errors);
        };
        let patterns = cfg
            .patterns
            .iter()
            .filter_map(
                |p| match regex::RegexBuilder::new(&p.regex).size_limit(1 << 20).build() {
                    Ok(re) => Some((p.name.clone(), re)),
                    Err(e) => {
                        errors.push(format!("redaction pattern {}: invalid regex: {e}", p.name));
                        None
                    }
                },
            )
            .collect();
        let redactor = Redactor {
            extra_headers: cfg.headers.clone(),
            json_paths: cfg
                .json_fields
                .iter()
                .map(|p| p.split('.').map(str::to_string).collect())
                .collect(),
            patterns,
        };
        (redactor, errors)
    }

    /// Headers with secret values replaced.
    pub fn headers(&self, headers: &[(String, String)]) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(k, v)| {
                if is_secret_header(k, &self.extra_headers) {
                    (k.clone(), REDACTED.to_string())
                } else {
                    (k.clone(), self.text(v))
                }
            })
            .collect()
    }

    /// Free text with default secrets (cards, bearer tokens, JWTs) and the monitor's patterns replaced.
    pub fn text(&self, text: &str) -> String {
        let mut out = redact_text(text).into_owned();
        for (name, re) in &self.patterns {
            if re.is_match(&out) {
                out = re
                    .replace_all(&out, format!("[REDACTED:{name}]").as_str())
                    .into_owned();
            }
        }
        out
    }

    /// A request target with secret query values and free-text secrets replaced.
    pub fn target(&self, target: &str) -> String {
        self.text(&redact_target(target))
    }

    /// A body: JSON bodies have secret keys and the monitor's paths redacted; everything is then
    /// redacted as text. Bodies that are not valid JSON are treated as text.
    pub fn body(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(mut value) if value.is_object() || value.is_array() => {
                redact_json_keys(&mut value);
                for path in &self.json_paths {
                    redact_json_path(&mut value, path);
                }
                self.text(&value.to_string())
            }
            _ => self.text(&text),
        }
    }
}

fn redact_json_keys(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let lower = k.to_ascii_lowercase();
                if SECRET_JSON_KEY_HINTS.iter().any(|h| lower.contains(h)) {
                    *v = serde_json::Value::String(REDACTED.into());
                } else {
                    redact_json_keys(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact_json_keys),
        _ => {}
    }
}

fn redact_json_path(value: &mut serde_json::Value, path: &[String]) {
    let Some((head, rest)) = path.split_first() else {
        *value = serde_json::Value::String(REDACTED.into());
        return;
    };
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if head == "*" || k == head {
                    redact_json_path(v, rest);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                if head == "*" || head.parse::<usize>() == Ok(i) {
                    redact_json_path(v, rest);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod redactor_tests {
    use super::*;
    use palisade_api::agent::{NamedPattern, RedactionConfig};

    fn redactor() -> Redactor {
        let cfg = RedactionConfig {
            headers: vec!["X-Session".into()],
            json_fields: vec!["user.ssnumber".into(), "items.*.note".into()],
            patterns: vec![NamedPattern {
                name: "employee-id".into(),
                regex: r"EMP-\d{6}".into(),
            }],
        };
        let (r, errors) = Redactor::compile(Some(&cfg));
        assert!(errors.is_empty());
        r
    }

    #[test]
    fn headers_json_paths_and_patterns_are_redacted() {
        let r = redactor();
        let h = r.headers(&[
            ("Authorization".into(), "Basic dXNlcjpwdw==".into()),
            ("x-session".into(), "abc".into()),
            ("X-Trace".into(), "EMP-123456".into()),
            ("Accept".into(), "application/json".into()),
        ]);
        assert_eq!(h[0].1, REDACTED);
        assert_eq!(h[1].1, REDACTED);
        assert_eq!(h[2].1, "[REDACTED:employee-id]");
        assert_eq!(h[3].1, "application/json");

        let body = br#"{"user":{"name":"bob","ssnumber":"123-45-6789","password":"hunter2"},
            "items":[{"note":"secret note","card":"4111 1111 1111 1111"}],"apiKey":"k"}"#;
        let out = r.body(body);
        for secret in [
            "123-45-6789",
            "hunter2",
            "secret note",
            "4111 1111 1111 1111",
            "\"k\"",
        ] {
            assert!(!out.contains(secret), "{secret} leaked: {out}");
        }
        assert!(out.contains("bob"), "{out}");
        assert_eq!(
            r.body(b"plain EMP-000001 text"),
            "plain [REDACTED:employee-id] text"
        );
    }

    #[test]
    fn invalid_patterns_are_reported_not_fatal() {
        let cfg = RedactionConfig {
            patterns: vec![NamedPattern {
                name: "bad".into(),
                regex: "(".into(),
            }],
            ..Default::default()
        };
        let (r, errors) = Redactor::compile(Some(&cfg));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("redaction pattern bad"), "{errors:?}");
        assert_eq!(r.text("4111111111111111"), "[REDACTED:card]");
    }
}
