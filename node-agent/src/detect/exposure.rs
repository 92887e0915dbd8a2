//! Excessive data exposure: what kinds of personal data and secrets a response body carries.
//!
//! The scan reports kinds and counts, never the values: its output goes into findings, which
//! leave the node. Kinds: card numbers (Luhn-valid), national-ID-like numbers (US SSN in its
//! dashed form with the SSA's validity rules, UK National Insurance numbers), e-mail addresses
//! (reported in bulk only, from `min_emails` distinct addresses), JWTs, cloud and service keys,
//! private keys, stack traces and framework debug pages.

use std::collections::HashSet;
use std::sync::LazyLock;

/// A kind of sensitive content, in the spelling used by the `types` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Exposure {
    Card,
    NationalId,
    Email,
    Jwt,
    CloudKey,
    PrivateKey,
    StackTrace,
    DebugPage,
}

impl Exposure {
    pub const ALL: [Exposure; 8] = [
        Exposure::Card,
        Exposure::NationalId,
        Exposure::Email,
        Exposure::Jwt,
        Exposure::CloudKey,
        Exposure::PrivateKey,
        Exposure::StackTrace,
        Exposure::DebugPage,
    ];

    /// Personal data or a secret, as opposed to a sign of an error (stack traces, debug pages).
    pub fn is_data(self) -> bool {
        !matches!(self, Exposure::StackTrace | Exposure::DebugPage)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Exposure::Card => "card",
            Exposure::NationalId => "nationalId",
            Exposure::Email => "email",
            Exposure::Jwt => "jwt",
            Exposure::CloudKey => "cloudKey",
            Exposure::PrivateKey => "privateKey",
            Exposure::StackTrace => "stackTrace",
            Exposure::DebugPage => "debugPage",
        }
    }

    /// How findings name it.
    fn label(self) -> &'static str {
        match self {
            Exposure::Card => "card number",
            Exposure::NationalId => "national ID number",
            Exposure::Email => "e-mail address",
            Exposure::Jwt => "JWT",
            Exposure::CloudKey => "cloud/service key",
            Exposure::PrivateKey => "private key",
            Exposure::StackTrace => "stack trace",
            Exposure::DebugPage => "debug page",
        }
    }

    pub fn parse(s: &str) -> Option<Exposure> {
        Exposure::ALL
            .into_iter()
            .find(|e| e.as_str().eq_ignore_ascii_case(s))
    }
}

/// Kinds found in one body, with counts (distinct values for e-mail addresses).
#[derive(Debug, Default, PartialEq)]
pub struct ExposureScan {
    pub found: Vec<(Exposure, usize)>,
}

impl ExposureScan {
    /// `card number ×2, e-mail address ×50`.
    pub fn describe(&self) -> String {
        self.found
            .iter()
            .map(|(kind, n)| format!("{} ×{n}", kind.label()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn count(&self, kind: Exposure) -> usize {
        self.found.iter().find(|(k, _)| *k == kind).map_or(0, |(_, n)| *n)
    }
}

#[allow(clippy::expect_used)] // constant patterns; the tests compile every one
static CLOUD_KEY: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(concat!(
        r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b",
        r"|(?i:aws_secret_access_key)\s*[=:]\s*[A-Za-z0-9/+=]{40}",
        r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b",
        r"|\bxox[abpors]-[A-Za-z0-9-]{10,}\b",
        r"|\b[sr]k_live_[A-Za-z0-9]{16,}\b",
        r"|\bAIza[0-9A-Za-z_-]{35}\b",
    ))
    .expect("cloud key patterns compile")
});

#[allow(clippy::expect_used)] // constant patterns; the tests compile every one
static PRIVATE_KEY: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----").expect("private key pattern compiles")
});

#[allow(clippy::expect_used)] // constant patterns; the tests compile every one
static EMAIL: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b",
    )
    .expect("e-mail pattern compiles")
});

#[allow(clippy::expect_used)] // constant patterns; the tests compile every one
static JWT: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
        .expect("JWT pattern compiles")
});

/// US SSN (dashed) and UK National Insurance numbers; candidates are checked further below.
#[allow(clippy::expect_used)] // constant patterns; the tests compile every one
static NATIONAL_ID: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"\b(\d{3})-(\d{2})-(\d{4})\b|\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b",
    )
    .expect("national ID pattern compiles")
});

/// Lines that only stack traces have, per runtime.
#[allow(clippy::expect_used)] // constant patterns; the tests compile every one
static STACK_TRACE: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(concat!(
        r"Traceback \(most recent call last\):",                // Python
        r"|\n\s*at [\w$.<>]+\([\w$]+\.(?:java|kt|scala):\d+\)", // JVM
        r"|Exception in thread \x22",                           // JVM
        r"|goroutine \d+ \[running\]:",                         // Go
        r"|\n\s*at [^\n]{1,200} \((?:/|file:|node:)[^\n]{1,300}:\d+:\d+\)", // Node
        r"|\n\s*at [\w.<>`]+\([^\n]{0,200}\) in [^\n]{1,300}:line \d+", // .NET
        r"|PHP (?:Fatal|Parse) error:|Stack trace:\s*\n#0 ",    // PHP
        r"|\.rb:\d+:in `",                                      // Ruby
        r"|thread '[^'\n]{1,100}' panicked at ",                // Rust
    ))
    .expect("stack trace patterns compile")
});

/// Framework debug and error pages that should never reach a client in production.
#[allow(clippy::expect_used)] // constant patterns; the tests compile every one
static DEBUG_PAGE: LazyLock<aho_corasick::AhoCorasick> = LazyLock::new(|| {
    aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build([
            "Werkzeug Debugger",
            "You're seeing this error because you have <code>DEBUG = True</code>",
            "Whoops\\Exception",
            "<title>phpinfo()</title>",
            "Symfony\\Component\\Debug",
            "ActionController::RoutingError",
            "<h2>Application Trace</h2>",
            "Server Error in '/' Application",
            "X-Debug-Token-Link",
            "Whitelabel Error Page",
        ])
        .expect("debug page patterns build")
});

/// Whether a response body shows an exception: a stack trace or a framework debug page (the APM
/// signal counted per endpoint for server errors, whatever the policies).
pub fn shows_exception(body: &[u8]) -> bool {
    if body.is_empty() {
        return false;
    }
    let text = String::from_utf8_lossy(body);
    STACK_TRACE.is_match(&text) || DEBUG_PAGE.is_match(text.as_bytes())
}

/// What to look for, from the rule's parameters.
#[derive(Clone, Debug)]
pub struct ExposureScanner {
    kinds: Vec<Exposure>,
    /// E-mail addresses count from this many distinct ones in one body.
    pub min_emails: usize,
}

impl Default for ExposureScanner {
    fn default() -> Self {
        ExposureScanner {
            kinds: Exposure::ALL.to_vec(),
            min_emails: 10,
        }
    }
}

impl ExposureScanner {
    pub fn new(kinds: Vec<Exposure>, min_emails: usize) -> Self {
        ExposureScanner {
            kinds,
            min_emails: min_emails.max(1),
        }
    }

    pub fn wants(&self, kind: Exposure) -> bool {
        self.kinds.contains(&kind)
    }

    /// Scans a response body (lossy UTF-8; binary bodies yield nothing useful and cost a pass).
    pub fn scan(&self, body: &[u8]) -> ExposureScan {
        let text = String::from_utf8_lossy(body);
        let mut found = Vec::new();
        let mut push = |kind: Exposure, n: usize| {
            if n > 0 {
                found.push((kind, n));
            }
        };
        if self.wants(Exposure::Card) {
            push(Exposure::Card, count_cards(text.as_bytes()));
        }
        if self.wants(Exposure::NationalId) {
            push(Exposure::NationalId, count_national_ids(&text));
        }
        if self.wants(Exposure::Email) && text.contains('@') {
            let distinct: HashSet<String> = EMAIL
                .find_iter(&text)
                .take(10_000)
                .map(|m| m.as_str().to_ascii_lowercase())
                .collect();
            if distinct.len() >= self.min_emails {
                push(Exposure::Email, distinct.len());
            }
        }
        if self.wants(Exposure::Jwt) && text.contains("eyJ") {
            push(Exposure::Jwt, JWT.find_iter(&text).count());
        }
        if self.wants(Exposure::CloudKey) {
            push(Exposure::CloudKey, CLOUD_KEY.find_iter(&text).count());
        }
        if self.wants(Exposure::PrivateKey) && text.contains("PRIVATE KEY-----") {
            push(Exposure::PrivateKey, PRIVATE_KEY.find_iter(&text).count());
        }
        if self.wants(Exposure::StackTrace) {
            push(Exposure::StackTrace, usize::from(STACK_TRACE.is_match(&text)));
        }
        if self.wants(Exposure::DebugPage) {
            push(
                Exposure::DebugPage,
                usize::from(DEBUG_PAGE.is_match(text.as_bytes())),
            );
        }
        ExposureScan { found }
    }
}

/// Luhn-valid runs of 13–19 digits (single spaces or dashes allowed between digits), not part of
/// a longer number or word. JSON numbers count too: a card sent as a number is still a card.
fn count_cards(bytes: &[u8]) -> usize {
    let mut count = 0;
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit()
            || (i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.'))
        {
            i += 1;
            continue;
        }
        let mut digits = [0u8; 19];
        let mut n = 0;
        let mut j = i;
        let mut end = i;
        while j < bytes.len() {
            let b = bytes[j];
            if b.is_ascii_digit() {
                if n == 19 {
                    n += 1; // too long: not a card
                    break;
                }
                digits[n] = b;
                n += 1;
                end = j + 1;
            } else if (b == b' ' || b == b'-')
                && j + 1 < bytes.len()
                && bytes[j + 1].is_ascii_digit()
                && j > i
            {
                // a separator between digits
            } else {
                break;
            }
            j += 1;
        }
        let bounded = end == bytes.len() || !(bytes[end].is_ascii_alphanumeric() || bytes[end] == b'.');
        if n <= 19 && bounded && crate::redact::luhn_valid(&digits[..n]) {
            count += 1;
            i = end;
        } else {
            // Separators may have joined neighbouring numbers: try again from the next group.
            i = bytes[i..end]
                .iter()
                .position(|b| *b == b' ' || *b == b'-')
                .map_or(end.max(i + 1), |p| i + p + 1);
        }
    }
    count
}

/// SSNs must not start with 000, 666 or 9xx, nor have 00 or 0000 groups; repeated-digit
/// placeholders (111-11-1111) are not counted.
fn count_national_ids(text: &str) -> usize {
    NATIONAL_ID
        .captures_iter(text)
        .filter(|c| match (c.get(1), c.get(2), c.get(3)) {
            (Some(area), Some(group), Some(serial)) => {
                let (a, g, s) = (area.as_str(), group.as_str(), serial.as_str());
                let all_same = format!("{a}{g}{s}").bytes().collect::<HashSet<_>>().len() == 1;
                a != "000" && a != "666" && !a.starts_with('9') && g != "00" && s != "0000" && !all_same
            }
            _ => true,
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(body: &str) -> ExposureScan {
        ExposureScanner::default().scan(body.as_bytes())
    }

    #[test]
    fn personal_data_and_secrets_are_found_and_counted() {
        let s = scan(r#"{"card": "4111 1111 1111 1111", "n": 5500-0000-0000-0004, "ssn": "123-45-6789"}"#);
        assert_eq!(s.count(Exposure::Card), 2, "{s:?}");
        assert_eq!(s.count(Exposure::NationalId), 1, "{s:?}");
        assert_eq!(scan("NI: AB 12 34 56 C").count(Exposure::NationalId), 1);

        let many: Vec<String> = (0..12).map(|i| format!("\"user{i}@example.com\"")).collect();
        let s = scan(&format!("[{}]", many.join(",")));
        assert_eq!(s.count(Exposure::Email), 12);
        assert_eq!(s.describe(), "e-mail address ×12");

        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl";
        assert_eq!(scan(&format!(r#"{{"t": "{jwt}"}}"#)).count(Exposure::Jwt), 1);
        assert_eq!(scan("key AKIAIOSFODNN7EXAMPLE here").count(Exposure::CloudKey), 1);
        assert_eq!(
            scan("-----BEGIN RSA PRIVATE KEY-----\nMIIE").count(Exposure::PrivateKey),
            1
        );
    }

    #[test]
    fn stack_traces_and_debug_pages_of_common_runtimes() {
        for body in [
            "Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>",
            "java.lang.NullPointerException\n\tat com.acme.Api.get(Api.java:42)\n",
            "goroutine 1 [running]:\nmain.main()",
            "TypeError: x is undefined\n    at Object.<anonymous> (/srv/app.js:3:9)",
            "PHP Fatal error:  Uncaught Error",
            "app/models/user.rb:12:in `find'",
            "thread 'main' panicked at src/main.rs:2:5",
        ] {
            assert_eq!(scan(body).count(Exposure::StackTrace), 1, "{body}");
        }
        assert_eq!(
            scan("<title>Werkzeug Debugger</title>").count(Exposure::DebugPage),
            1
        );
    }

    #[test]
    fn ordinary_responses_carry_nothing() {
        for body in [
            r#"{"id": 4111111111111111111, "total": 1234567890123, "price": 10.4111111111111111}"#,
            r#"{"email": "one@example.com", "phone": "555-123-4567", "zip": "123-45-0000"}"#,
            r#"{"order": "000-12-3456", "build": "666-01-2345", "x": "111-11-1111"}"#,
            "Everything is fine. at least today (really: 3:4)",
            r#"{"timestamp": 1700000000000, "version": "1.2.3", "uuid": "f89b5f21-7829-45cb-a650-299a61090378"}"#,
        ] {
            assert_eq!(scan(body), ExposureScan::default(), "{body}");
        }
    }

    #[test]
    fn the_scan_says_kinds_and_counts_never_values() {
        let s = scan(r#"{"card": "4111111111111111", "ssn": "123-45-6789"}"#);
        let d = s.describe();
        assert_eq!(d, "card number ×1, national ID number ×1");
        assert!(!d.contains("4111") && !d.contains("6789"));
    }

    #[test]
    fn kinds_can_be_chosen_and_hostile_bodies_stay_cheap() {
        let only_cards = ExposureScanner::new(vec![Exposure::Card], 10);
        assert_eq!(
            only_cards.scan(b"123-45-6789 4111111111111111").found,
            vec![(Exposure::Card, 1)]
        );
        let hostile = "1-".repeat(200_000) + &"@a.bc ".repeat(50_000) + &"eyJ".repeat(50_000);
        // Linear scans; nothing here is a card, an address or a token.
        assert_eq!(
            ExposureScanner::default().scan(hostile.as_bytes()),
            ExposureScan::default()
        );
    }
}
