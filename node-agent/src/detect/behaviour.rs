//! Behavioural detectors: they judge a request together with its response and with what the same
//! client did before, so they run on complete exchanges and keep state.
//!
//! * `bruteForce`: one source failing (401/403) again and again on an authentication endpoint, or
//!   trying it far more often than a person would (OTP and credential stuffing).
//! * `missingAuth`: a request without credentials answered successfully by an endpoint whose
//!   requests normally carry them; and bearer JWTs that cannot be genuine (`alg: none`, or the
//!   header and claims of a token seen before with a different signature).
//! * `bola`: one principal (a JWT's subject, else the source address) touching many distinct
//!   object IDs of one endpoint in a window.
//! * `rateAbuse`: requests per source, and optionally per endpoint, over a limit in a window.
//! * `dataExposure`: personal data and secrets in response bodies ([`super::exposure`]).
//!
//! Memory is bounded: each detector tracks at most `maxTracked` keys (default 10,000; `bola` keeps
//! at most `distinctIds` ≤ 1000 ID hashes per key); when the table is full of live windows, new
//! keys are not tracked and [`Behaviour::untracked`] counts them. Windows are fixed (tumbling),
//! starting at a key's first request.

use super::exposure::{Exposure, ExposureScanner};
use super::RequestView;
use rustc_hash::{FxHashMap, FxHashSet, FxHasher};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

/// What behavioural detectors see of an exchange.
pub struct ExchangeView<'a> {
    pub request: RequestView<'a>,
    /// The client's address as text ("unknown (TLS)" for TLS plaintext from uprobes).
    pub source: &'a str,
    /// The request path templated (`/users/{id}`).
    pub template: &'a str,
    /// Response status; 0 when unknown (no response seen).
    pub status: u16,
    /// The response body as captured (possibly truncated), if bodies are captured.
    pub response_body: Option<&'a [u8]>,
    /// Capture time of the request, in ns (any monotonic clock).
    pub now_ns: u64,
}

/// Parses `500ms`, `30s`, `5m`, `1h` (a bare number is seconds) into ns.
pub fn parse_window(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m or 1h"))?;
    let scale = match unit {
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    match n.checked_mul(scale) {
        Some(ns) if ns > 0 && ns <= 24 * 3_600_000_000_000 => Ok(ns),
        _ => Err(format!("{s:?} must be more than 0 and at most 24h")),
    }
}

fn describe_window(ns: u64) -> String {
    match ns {
        n if n % 3_600_000_000_000 == 0 => format!("{}h", n / 3_600_000_000_000),
        n if n % 60_000_000_000 == 0 => format!("{}m", n / 60_000_000_000),
        n if n % 1_000_000_000 == 0 => format!("{}s", n / 1_000_000_000),
        n => format!("{}ms", n / 1_000_000),
    }
}

fn hash_of(parts: &[&str]) -> u64 {
    let mut h = FxHasher::default();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

/// Per-key state in fixed windows, with a bounded number of keys.
struct Windows<V> {
    window_ns: u64,
    max_keys: usize,
    map: FxHashMap<u64, (u64, V)>,
    last_purge_ns: u64,
    untracked: u64,
}

impl<V: Default> Windows<V> {
    fn new(window_ns: u64, max_keys: usize) -> Self {
        Windows {
            window_ns,
            max_keys,
            map: FxHashMap::default(),
            last_purge_ns: 0,
            untracked: 0,
        }
    }

    /// The key's state in the current window (fresh when its window ended), or None when the
    /// table is full of live windows.
    fn get(&mut self, key: u64, now_ns: u64) -> Option<&mut V> {
        if !self.map.contains_key(&key) && self.map.len() >= self.max_keys {
            // Purge ended windows, at most once per quarter window (a purge walks the table).
            if now_ns.saturating_sub(self.last_purge_ns) >= self.window_ns / 4 {
                self.last_purge_ns = now_ns;
                let window = self.window_ns;
                self.map
                    .retain(|_, (start, _)| now_ns.saturating_sub(*start) < window);
            }
            if self.map.len() >= self.max_keys {
                self.untracked += 1;
                return None;
            }
        }
        let entry = self.map.entry(key).or_insert_with(|| (now_ns, V::default()));
        if now_ns.saturating_sub(entry.0) >= self.window_ns {
            *entry = (now_ns, V::default());
        }
        Some(&mut entry.1)
    }
}

/// Reads rule parameters, rejecting unknown ones.
struct Params<'a> {
    detector: &'a str,
    map: &'a BTreeMap<String, String>,
}

impl<'a> Params<'a> {
    fn new(detector: &'a str, map: &'a BTreeMap<String, String>, known: &[&str]) -> Result<Self, String> {
        let mut unknown: Vec<&String> = map.keys().filter(|k| !known.contains(&k.as_str())).collect();
        unknown.sort();
        if let Some(k) = unknown.first() {
            return Err(format!(
                "unknown parameter {k:?} for detector {detector} (known: {})",
                known.join(", ")
            ));
        }
        Ok(Params { detector, map })
    }

    fn number(&self, name: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> Result<u64, String> {
        match self.map.get(name) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if range.contains(&n) => Ok(n),
                _ => Err(format!(
                    "params.{name} of {} must be a whole number from {} to {}, not {v:?}",
                    self.detector,
                    range.start(),
                    range.end()
                )),
            },
        }
    }

    fn ratio(&self, name: &str, default: f64) -> Result<f64, String> {
        match self.map.get(name) {
            None => Ok(default),
            Some(v) => match v.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(format!(
                    "params.{name} of {} must be a number from 0 to 1, not {v:?}",
                    self.detector
                )),
            },
        }
    }

    fn window(&self, default: u64) -> Result<u64, String> {
        match self.map.get("window") {
            None => Ok(default),
            Some(v) => parse_window(v).map_err(|e| format!("params.window of {}: {e}", self.detector)),
        }
    }

    fn regex(&self, name: &str, default: &str) -> Result<regex::Regex, String> {
        let pattern = self.map.get(name).map(String::as_str).unwrap_or(default);
        regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| {
                format!(
                    "params.{name} of {}: invalid regex {pattern:?}: {e}",
                    self.detector
                )
            })
    }
}

/// Endpoints that authenticate (login, token, OTP...), matched on the templated path.
/// Whole path segments or dash/underscore/dot-separated words, so that `/authors` or
/// `/footprints` are not authentication endpoints.
const AUTH_ENDPOINTS: &str = r"(?i)(?:^|[/_.-])(?:log-?in|sign-?in|auth(?:enticate|orize|n)?|oauth2?|token|sessions?|passw(?:or)?d|otp|2fa|mfa|verify)(?:$|[/_.-])";
const MINUTE_NS: u64 = 60_000_000_000;
const DEFAULT_MAX_TRACKED: u64 = 10_000;

fn max_tracked(p: &Params) -> Result<usize, String> {
    Ok(p.number("maxTracked", DEFAULT_MAX_TRACKED, 100..=1_000_000)? as usize)
}

/// A behavioural detector with its parameters and state.
pub enum Behaviour {
    BruteForce(BruteForce),
    MissingAuth(MissingAuth),
    Bola(Bola),
    RateAbuse(RateAbuse),
    DataExposure(DataExposure),
}

impl Behaviour {
    /// The detectors implemented here, in their CRD spelling.
    pub const NAMES: &'static [&'static str] =
        &["bruteForce", "missingAuth", "bola", "rateAbuse", "dataExposure"];

    /// Compiles a behavioural detector; `Ok(None)` when `detector` is not one of them.
    pub fn compile(detector: &str, params: &BTreeMap<String, String>) -> Result<Option<Behaviour>, String> {
        Ok(Some(match detector {
            "bruteForce" => Behaviour::BruteForce(BruteForce::new(&Params::new(
                detector,
                params,
                &["failures", "attempts", "window", "paths", "maxTracked"],
            )?)?),
            "missingAuth" => Behaviour::MissingAuth(MissingAuth::new(&Params::new(
                detector,
                params,
                &["minSamples", "ratio", "maxTracked"],
            )?)?),
            "bola" => Behaviour::Bola(Bola::new(&Params::new(
                detector,
                params,
                &["distinctIds", "window", "maxTracked"],
            )?)?),
            "rateAbuse" => Behaviour::RateAbuse(RateAbuse::new(&Params::new(
                detector,
                params,
                &["perSource", "perEndpoint", "window", "maxTracked"],
            )?)?),
            "dataExposure" => Behaviour::DataExposure(DataExposure::new(&Params::new(
                detector,
                params,
                &["types", "minEmails", "skipPaths"],
            )?)?),
            _ => return Ok(None),
        }))
    }

    /// Judges one exchange; the evidence never carries secrets or personal data.
    pub fn evaluate(&mut self, ex: &ExchangeView) -> Option<String> {
        match self {
            Behaviour::BruteForce(d) => d.evaluate(ex),
            Behaviour::MissingAuth(d) => d.evaluate(ex),
            Behaviour::Bola(d) => d.evaluate(ex),
            Behaviour::RateAbuse(d) => d.evaluate(ex),
            Behaviour::DataExposure(d) => d.evaluate(ex),
        }
    }

    /// Whether the detector reads response bodies (the monitor must capture them).
    pub fn needs_response_body(&self) -> bool {
        matches!(self, Behaviour::DataExposure(_))
    }
}

impl Behaviour {
    /// Keys not tracked because the detector's table was full.
    pub fn untracked(&self) -> u64 {
        match self {
            Behaviour::BruteForce(d) => d.windows.untracked,
            Behaviour::MissingAuth(d) => d.untracked,
            Behaviour::Bola(d) => d.windows.untracked,
            Behaviour::RateAbuse(d) => d.per_source_windows.untracked + d.per_endpoint_windows.untracked,
            Behaviour::DataExposure(_) => 0,
        }
    }
}

/// Failed and total attempts of one source on one authentication endpoint.
#[derive(Default)]
struct AuthAttempts {
    failures: u64,
    attempts: u64,
}

pub struct BruteForce {
    failures: u64,
    attempts: u64,
    window_ns: u64,
    paths: regex::Regex,
    windows: Windows<AuthAttempts>,
}

impl BruteForce {
    fn new(p: &Params) -> Result<Self, String> {
        let window_ns = p.window(MINUTE_NS)?;
        Ok(BruteForce {
            failures: p.number("failures", 10, 1..=1_000_000)?,
            attempts: p.number("attempts", 30, 1..=1_000_000)?,
            window_ns,
            paths: p.regex("paths", AUTH_ENDPOINTS)?,
            windows: Windows::new(window_ns, max_tracked(p)?),
        })
    }

    fn evaluate(&mut self, ex: &ExchangeView) -> Option<String> {
        if !self.paths.is_match(ex.template) {
            return None;
        }
        let key = hash_of(&[ex.source, ex.request.method, ex.template]);
        let state = self.windows.get(key, ex.now_ns)?;
        // Successful logins are not attempts to guess (a service renewing its token often is
        // no attacker); unknown statuses (0) count.
        if !(200..400).contains(&ex.status) {
            state.attempts += 1;
        }
        if matches!(ex.status, 401 | 403) {
            state.failures += 1;
        }
        let window = describe_window(self.window_ns);
        if matches!(ex.status, 401 | 403) && state.failures >= self.failures {
            return Some(format!(
                "{} failed attempts (401/403) from {} on {} {} within {window} (limit {})",
                state.failures, ex.source, ex.request.method, ex.template, self.failures
            ));
        }
        (state.attempts >= self.attempts).then(|| {
            format!(
                "{} attempts from {} on {} {} within {window} (limit {})",
                state.attempts, ex.source, ex.request.method, ex.template, self.attempts
            )
        })
    }
}

/// Credential-carrying headers and query parameters.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
    "proxy-authorization",
];
const CREDENTIAL_PARAMS: &[&str] = &["access_token", "token", "api_key", "apikey", "key", "auth", "sig"];

/// Whether a request carries credentials of any scheme.
pub fn has_credentials(req: &RequestView) -> bool {
    if req
        .headers
        .iter()
        .any(|(n, v)| !v.trim().is_empty() && CREDENTIAL_HEADERS.iter().any(|h| n.eq_ignore_ascii_case(h)))
    {
        return true;
    }
    let query = req.target.split_once('?').map_or("", |(_, q)| q);
    query.split('&').any(|kv| {
        kv.split_once('=').is_some_and(|(k, v)| {
            !v.is_empty() && CREDENTIAL_PARAMS.iter().any(|p| k.eq_ignore_ascii_case(p))
        })
    })
}

/// The bearer JWT of a request, split: (header+claims, signature, decoded header, decoded claims).
struct BearerJwt<'a> {
    signed_part: &'a str,
    signature: &'a str,
    header: serde_json::Value,
    claims: serde_json::Value,
}

fn bearer_jwt<'a>(req: &RequestView<'a>) -> Option<BearerJwt<'a>> {
    let (_, value) = req
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))?;
    let token = value
        .trim()
        .strip_prefix("Bearer ")
        .or_else(|| value.trim().strip_prefix("bearer "))?;
    let token = token.trim();
    let (signed_part, signature) = token.rsplit_once('.')?;
    let (header, claims) = signed_part.split_once('.')?;
    let decode =
        |part: &str| -> Option<serde_json::Value> { serde_json::from_slice(&base64url_decode(part)?).ok() };
    Some(BearerJwt {
        signed_part,
        signature,
        header: decode(header)?,
        claims: decode(claims)?,
    })
}

/// Base64url without padding (padding tolerated), as JWTs use.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() > 8192 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in s.bytes().filter(|b| *b != b'=') {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// How often an endpoint's requests carried credentials.
#[derive(Default)]
struct AuthHabit {
    with: u64,
    total: u64,
}

pub struct MissingAuth {
    min_samples: u64,
    ratio: f64,
    max_tracked: usize,
    habits: FxHashMap<u64, AuthHabit>,
    /// Signatures of the bearer JWTs seen, by hash of their header and claims.
    signatures: FxHashMap<u64, u64>,
    untracked: u64,
}

impl MissingAuth {
    fn new(p: &Params) -> Result<Self, String> {
        Ok(MissingAuth {
            min_samples: p.number("minSamples", 20, 1..=1_000_000)?,
            ratio: p.ratio("ratio", 0.9)?,
            max_tracked: max_tracked(p)?,
            habits: FxHashMap::default(),
            signatures: FxHashMap::default(),
            untracked: 0,
        })
    }

    fn evaluate(&mut self, ex: &ExchangeView) -> Option<String> {
        let endpoint = format!("{} {}", ex.request.method, ex.template);
        if let Some(jwt) = bearer_jwt(&ex.request) {
            let alg = jwt.header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
            if alg.eq_ignore_ascii_case("none") || jwt.signature.is_empty() {
                return Some(format!(
                    "unsigned JWT (alg {alg:?}) from {} on {endpoint}",
                    ex.source
                ));
            }
            let claims_key = hash_of(&[jwt.signed_part]);
            let signature = hash_of(&[jwt.signature]);
            match self.signatures.get(&claims_key) {
                Some(seen) if *seen != signature => {
                    return Some(format!(
                        "forged JWT from {} on {endpoint}: the header and claims of an earlier token with another signature",
                        ex.source
                    ));
                }
                Some(_) => {}
                // Only tokens the server accepted are remembered as genuine.
                None if (200..400).contains(&ex.status) => {
                    if self.signatures.len() >= self.max_tracked {
                        // Every login mints a new token: start over rather than stop learning.
                        self.untracked += self.signatures.len() as u64;
                        self.signatures.clear();
                    }
                    {
                        self.signatures.insert(claims_key, signature);
                    }
                }
                None => {}
            }
        }
        let key = hash_of(&[ex.request.method, ex.template]);
        if !self.habits.contains_key(&key) && self.habits.len() >= self.max_tracked {
            self.untracked += 1;
            return None;
        }
        let habit = self.habits.entry(key).or_default();
        let with_credentials = has_credentials(&ex.request);
        let verdict = (!with_credentials
            && (200..300).contains(&ex.status)
            && habit.total >= self.min_samples
            && habit.with as f64 >= self.ratio * habit.total as f64)
            .then(|| {
                format!(
                    "request without credentials from {} answered {} on {endpoint}, where {} of {} earlier requests carried credentials",
                    ex.source, ex.status, habit.with, habit.total
                )
            });
        // The unauthenticated request that succeeded is not learned as a habit.
        if verdict.is_none() {
            habit.total += 1;
            habit.with += u64::from(with_credentials);
        }
        verdict
    }
}

/// The principal of a request for grouping: a bearer JWT's subject, else the source address.
fn principal(ex: &ExchangeView) -> (String, bool) {
    if let Some(jwt) = bearer_jwt(&ex.request) {
        for claim in ["sub", "user_id", "uid", "email", "username"] {
            match jwt.claims.get(claim) {
                Some(serde_json::Value::String(s)) if !s.is_empty() => return (s.clone(), true),
                Some(serde_json::Value::Number(n)) => return (n.to_string(), true),
                _ => {}
            }
        }
    }
    (ex.source.to_string(), false)
}

/// Object IDs a request names: identifier-like path segments and values of `*id` parameters.
pub fn object_ids(target: &str) -> Vec<&str> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut ids: Vec<&str> = path
        .split('/')
        .filter(|s| crate::template::is_identifier(s))
        .collect();
    for kv in query.split('&') {
        if let Some((k, v)) = kv.split_once('=') {
            let k = k.to_ascii_lowercase();
            if !v.is_empty() && (k == "id" || k.ends_with("_id") || k.ends_with("id") && k.len() > 2) {
                ids.push(v);
            }
        }
    }
    ids
}

/// Distinct object IDs one principal touched on one endpoint in the window.
#[derive(Default)]
struct IdsSeen {
    ids: FxHashSet<u64>,
}

pub struct Bola {
    distinct_ids: u64,
    window_ns: u64,
    windows: Windows<IdsSeen>,
}

impl Bola {
    fn new(p: &Params) -> Result<Self, String> {
        let window_ns = p.window(MINUTE_NS)?;
        let distinct_ids = p.number("distinctIds", 10, 2..=1000)?;
        let max_keys = max_tracked(p)?;
        // Each key holds up to distinctIds 8-byte hashes: bound the product (16 MB of hashes).
        if max_keys as u64 * distinct_ids > 2_000_000 {
            return Err(format!(
                "params.maxTracked × params.distinctIds of bola must be at most 2000000 (memory), not {max_keys} × {distinct_ids}"
            ));
        }
        Ok(Bola {
            distinct_ids,
            window_ns,
            windows: Windows::new(window_ns, max_keys),
        })
    }

    fn evaluate(&mut self, ex: &ExchangeView) -> Option<String> {
        let ids = object_ids(ex.request.target);
        if ids.is_empty() {
            return None;
        }
        let (principal, from_token) = principal(ex);
        let key = hash_of(&[&principal, ex.request.method, ex.template]);
        let state = self.windows.get(key, ex.now_ns)?;
        // The set stops growing at the limit: from there on, every request with IDs is a finding.
        if (state.ids.len() as u64) < self.distinct_ids {
            state.ids.insert(hash_of(&ids));
        }
        let n = state.ids.len() as u64;
        (n >= self.distinct_ids).then(|| {
            let who = if from_token {
                format!("one token subject (via {})", ex.source)
            } else {
                ex.source.to_string()
            };
            format!(
                "{who} touched {n} distinct object IDs of {} {} within {} (limit {})",
                ex.request.method,
                ex.template,
                describe_window(self.window_ns),
                self.distinct_ids
            )
        })
    }
}

pub struct RateAbuse {
    per_source: u64,
    per_endpoint: u64,
    window_ns: u64,
    per_source_windows: Windows<u64>,
    per_endpoint_windows: Windows<u64>,
}

impl RateAbuse {
    fn new(p: &Params) -> Result<Self, String> {
        let window_ns = p.window(MINUTE_NS)?;
        let max = max_tracked(p)?;
        Ok(RateAbuse {
            per_source: p.number("perSource", 600, 1..=100_000_000)?,
            per_endpoint: p.number("perEndpoint", 0, 0..=100_000_000)?,
            window_ns,
            per_source_windows: Windows::new(window_ns, max),
            per_endpoint_windows: Windows::new(window_ns, max),
        })
    }

    fn evaluate(&mut self, ex: &ExchangeView) -> Option<String> {
        let window = describe_window(self.window_ns);
        // Both counts move on every request; the source's excess is reported first.
        let from_source = self
            .per_source_windows
            .get(hash_of(&[ex.source]), ex.now_ns)
            .map(|n| {
                *n += 1;
                *n
            });
        let to_endpoint = (self.per_endpoint > 0)
            .then(|| {
                let key = hash_of(&[ex.request.method, ex.template]);
                self.per_endpoint_windows.get(key, ex.now_ns).map(|n| {
                    *n += 1;
                    *n
                })
            })
            .flatten();
        match (from_source, to_endpoint) {
            (Some(n), _) if n > self.per_source => Some(format!(
                "{n} requests from {} within {window} (limit {})",
                ex.source, self.per_source
            )),
            (_, Some(n)) if n > self.per_endpoint => Some(format!(
                "{n} requests to {} {} within {window} (limit {})",
                ex.request.method, ex.template, self.per_endpoint
            )),
            _ => None,
        }
    }
}

pub struct DataExposure {
    scanner: ExposureScanner,
    skip_paths: Option<regex::Regex>,
}

impl DataExposure {
    fn new(p: &Params) -> Result<Self, String> {
        let kinds = match p.map.get("types") {
            None => Exposure::ALL.to_vec(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| {
                    Exposure::parse(t).ok_or_else(|| {
                        format!(
                            "params.types of dataExposure: unknown type {t:?} (known: {})",
                            Exposure::ALL.map(Exposure::as_str).join(", ")
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(DataExposure {
            scanner: ExposureScanner::new(kinds, p.number("minEmails", 10, 1..=100_000)? as usize),
            skip_paths: p
                .map
                .get("skipPaths")
                .map(|_| p.regex("skipPaths", ""))
                .transpose()?,
        })
    }

    fn evaluate(&mut self, ex: &ExchangeView) -> Option<String> {
        let body = ex.response_body.filter(|b| !b.is_empty())?;
        if self.skip_paths.as_ref().is_some_and(|r| r.is_match(ex.template)) {
            return None;
        }
        let mut scan = self.scanner.scan(body);
        // Tokens are what authentication endpoints are for.
        if regex_auth_endpoint(ex.template) {
            scan.found.retain(|(k, _)| *k != Exposure::Jwt);
        }
        (!scan.found.is_empty()).then(|| format!("response {} carries {}", ex.status, scan.describe()))
    }
}

fn regex_auth_endpoint(template: &str) -> bool {
    static AUTH: std::sync::LazyLock<Option<regex::Regex>> =
        std::sync::LazyLock::new(|| regex::Regex::new(AUTH_ENDPOINTS).ok());
    AUTH.as_ref().is_some_and(|r| r.is_match(template))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn compile(detector: &str, params: &[(&str, &str)]) -> Behaviour {
        let params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match Behaviour::compile(detector, &params) {
            Ok(Some(b)) => b,
            Ok(None) => panic!("{detector} is not behavioural"),
            Err(e) => panic!("{e}"),
        }
    }

    struct Ex {
        method: &'static str,
        target: String,
        headers: crate::http::HeaderFields,
        source: &'static str,
        status: u16,
        body: Option<Vec<u8>>,
        at: u64,
    }

    fn ex(method: &'static str, target: &str, source: &'static str, status: u16, at: u64) -> Ex {
        Ex {
            method,
            target: target.into(),
            headers: crate::http::HeaderFields::new(),
            source,
            status,
            body: None,
            at,
        }
    }

    impl Ex {
        fn header(mut self, n: &str, v: &str) -> Self {
            self.headers.push(n, v);
            self
        }
        fn body(mut self, b: &str) -> Self {
            self.body = Some(b.as_bytes().to_vec());
            self
        }
        fn run(&self, d: &mut Behaviour) -> Option<String> {
            let template = crate::template::template_path(&self.target);
            d.evaluate(&ExchangeView {
                request: RequestView {
                    method: self.method,
                    target: &self.target,
                    headers: &self.headers,
                    body: None,
                },
                source: self.source,
                template: &template,
                status: self.status,
                response_body: self.body.as_deref(),
                now_ns: self.at,
            })
        }
    }

    fn jwt(header: &str, claims: &str, sig: &str) -> String {
        fn b64(s: &str) -> String {
            const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let bytes = s.as_bytes();
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
                for i in 0..=chunk.len() {
                    out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
        format!("{}.{}.{sig}", b64(header), b64(claims))
    }

    #[test]
    fn windows_are_parsed_and_bad_params_are_errors() {
        assert_eq!(parse_window("30s"), Ok(30 * S));
        assert_eq!(parse_window("5m"), Ok(300 * S));
        assert_eq!(parse_window("250ms"), Ok(S / 4));
        assert!(parse_window("0s").is_err());
        assert!(parse_window("2d").unwrap_err().contains("unit"));
        let bad = |d: &str, p: &[(&str, &str)]| {
            let params = p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            Behaviour::compile(d, &params).err().unwrap_or_default()
        };
        assert!(bad("bola", &[("distinctIds", "1")]).contains("params.distinctIds"));
        assert!(bad("bruteForce", &[("window", "soon")]).contains("params.window"));
        assert!(bad("bruteForce", &[("paths", "(")]).contains("invalid regex"));
        assert!(bad("rateAbuse", &[("perIp", "5")]).contains("unknown parameter \"perIp\""));
        assert!(bad("missingAuth", &[("ratio", "2")]).contains("params.ratio"));
        assert!(bad("dataExposure", &[("types", "card,dna")]).contains("unknown type \"dna\""));
        assert!(matches!(
            Behaviour::compile("sqlInjection", &BTreeMap::new()),
            Ok(None)
        ));
    }

    #[test]
    fn brute_force_fires_on_repeated_failures_and_on_floods_of_attempts() {
        let mut d = compile("bruteForce", &[("failures", "5")]);
        for i in 0..4 {
            assert_eq!(ex("POST", "/login", "10.0.0.9", 401, i * S).run(&mut d), None);
        }
        // Another source and a successful login do not add up.
        assert_eq!(ex("POST", "/login", "10.0.0.8", 401, 4 * S).run(&mut d), None);
        assert_eq!(ex("POST", "/login", "10.0.0.9", 200, 4 * S).run(&mut d), None);
        let hit = ex("POST", "/login", "10.0.0.9", 401, 5 * S).run(&mut d).unwrap();
        assert_eq!(
            hit,
            "5 failed attempts (401/403) from 10.0.0.9 on POST /login within 1m (limit 5)"
        );
        // A new window starts over; non-auth endpoints are not judged.
        assert_eq!(ex("POST", "/login", "10.0.0.9", 401, 70 * S).run(&mut d), None);
        for i in 0..20 {
            assert_eq!(ex("GET", "/users/1", "10.0.0.9", 403, i).run(&mut d), None);
        }
        // OTP guessing: statuses unknown or 400, but 30 tries in a minute.
        let mut d = compile("bruteForce", &[]);
        let hits: Vec<_> = (0..40)
            .filter_map(|i| {
                ex(
                    "POST",
                    "/identity/api/auth/v2/check-otp",
                    "10.0.0.7",
                    0,
                    i * S / 2,
                )
                .run(&mut d)
            })
            .collect();
        assert_eq!(hits.len(), 11);
        assert!(hits[0].starts_with("30 attempts from 10.0.0.7"), "{}", hits[0]);
    }

    #[test]
    fn brute_force_leaves_token_renewals_and_lookalike_paths_alone() {
        let mut d = compile("bruteForce", &[]);
        for i in 0..40 {
            assert_eq!(
                ex("POST", "/oauth/token", "10.0.0.5", 200, i * S).run(&mut d),
                None
            );
            assert_eq!(ex("GET", "/authors/7", "10.0.0.5", 403, i * S).run(&mut d), None);
            assert_eq!(ex("GET", "/footprints", "10.0.0.5", 401, i * S).run(&mut d), None);
        }
        let params = [("maxTracked", "100000"), ("distinctIds", "1000")];
        let params = params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let err = Behaviour::compile("bola", &params).err().unwrap_or_default();
        assert!(err.contains("at most 2000000"), "{err}");
    }

    #[test]
    fn missing_credentials_on_an_endpoint_that_normally_has_them() {
        let mut d = compile("missingAuth", &[("minSamples", "5")]);
        let unauthenticated = ex("GET", "/users/7", "10.0.0.9", 200, 0);
        // Not enough history yet.
        assert_eq!(unauthenticated.run(&mut d), None);
        for i in 0..12 {
            let e =
                ex("GET", &format!("/users/{i}"), "10.0.0.2", 200, 0).header("Authorization", "Basic YTpi");
            assert_eq!(e.run(&mut d), None);
        }
        let hit = unauthenticated.run(&mut d).unwrap();
        assert!(
            hit.contains("without credentials from 10.0.0.9 answered 200 on GET /users/{id}, where 12 of 13"),
            "{hit}"
        );
        // Rejected (the server enforces auth), or credentials in a cookie or query: fine.
        assert_eq!(ex("GET", "/users/7", "10.0.0.9", 401, 0).run(&mut d), None);
        assert_eq!(
            ex("GET", "/users/7", "1.2.3.4", 200, 0)
                .header("Cookie", "sid=1")
                .run(&mut d),
            None
        );
        assert_eq!(
            ex("GET", "/users/7?access_token=x", "1.2.3.4", 200, 0).run(&mut d),
            None
        );
        // An endpoint that is public by habit.
        for _ in 0..30 {
            assert_eq!(ex("GET", "/healthz", "10.0.0.3", 200, 0).run(&mut d), None);
        }
    }

    #[test]
    fn unsigned_and_forged_jwts_are_broken_authentication() {
        let mut d = compile("missingAuth", &[]);
        let genuine = jwt(r#"{"alg":"RS256"}"#, r#"{"sub":"alice"}"#, "c2lnLWFsaWNl");
        let forged = jwt(r#"{"alg":"RS256"}"#, r#"{"sub":"alice"}"#, "Zm9yZ2Vk");
        let none = jwt(r#"{"alg":"none"}"#, r#"{"sub":"admin"}"#, "");
        let bearer = |t: &str| format!("Bearer {t}");
        let e = |t: &str| ex("GET", "/dashboard", "10.0.0.9", 200, 0).header("Authorization", &bearer(t));
        assert_eq!(e(&genuine).run(&mut d), None);
        assert_eq!(e(&genuine).run(&mut d), None);
        let hit = e(&forged).run(&mut d).unwrap();
        assert!(
            hit.starts_with("forged JWT from 10.0.0.9 on GET /dashboard"),
            "{hit}"
        );
        let hit = e(&none).run(&mut d).unwrap();
        assert!(hit.starts_with("unsigned JWT (alg \"none\")"), "{hit}");
        assert!(!hit.contains("admin") && !hit.contains("alice"));
    }

    #[test]
    fn bola_counts_distinct_ids_per_principal_and_endpoint() {
        let mut d = compile("bola", &[("distinctIds", "5")]);
        // The same object again and again is not enumeration.
        for i in 0..20 {
            assert_eq!(ex("GET", "/users/42", "10.0.0.9", 200, i).run(&mut d), None);
        }
        for id in 1..=3 {
            assert_eq!(
                ex("GET", &format!("/users/{id}"), "10.0.0.9", 200, 0).run(&mut d),
                None
            );
        }
        // Query-parameter IDs count too (crAPI's mechanic_report?report_id=).
        for id in 1..=3 {
            let e = ex("GET", &format!("/report?report_id={id}"), "10.0.0.9", 200, 0);
            assert_eq!(e.run(&mut d), None);
        }
        let hit = ex("GET", "/users/4", "10.0.0.9", 404, 0).run(&mut d).unwrap();
        assert_eq!(
            hit,
            "10.0.0.9 touched 5 distinct object IDs of GET /users/{id} within 1m (limit 5)"
        );
        // One principal behind many addresses is still one principal.
        let mut d = compile("bola", &[("distinctIds", "3")]);
        let token = jwt(r#"{"alg":"HS256"}"#, r#"{"sub":"mallory@example.com"}"#, "c2ln");
        let sources = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];
        let hits: Vec<_> = sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                ex("GET", &format!("/orders/{}", i + 100), s, 200, 0)
                    .header("Authorization", &format!("Bearer {token}"))
                    .run(&mut d)
            })
            .collect();
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert!(hits[0].starts_with("one token subject (via 10.0.0.3)") && !hits[0].contains("mallory"));
    }

    #[test]
    fn rate_abuse_per_source_and_per_endpoint() {
        let mut d = compile(
            "rateAbuse",
            &[("perSource", "10"), ("perEndpoint", "15"), ("window", "10s")],
        );
        let hits: Vec<_> = (0..12)
            .filter_map(|i| ex("GET", "/a", "10.0.0.9", 200, i).run(&mut d))
            .collect();
        assert_eq!(
            hits,
            [
                "11 requests from 10.0.0.9 within 10s (limit 10)",
                "12 requests from 10.0.0.9 within 10s (limit 10)"
            ]
        );
        let hits: Vec<_> = (0..4)
            .filter_map(|i| ex("GET", "/a", "10.0.0.8", 200, i).run(&mut d))
            .collect();
        assert_eq!(hits, ["16 requests to GET /a within 10s (limit 15)"]);
        assert!(d.untracked() == 0);
        assert_eq!(ex("GET", "/a", "10.0.0.9", 200, 11 * S).run(&mut d), None);
    }

    #[test]
    fn data_exposure_reads_response_bodies_without_repeating_them() {
        let mut d = compile("dataExposure", &[]);
        let leak = ex("GET", "/users/1/card", "10.0.0.9", 200, 0).body(r#"{"card":"4111 1111 1111 1111"}"#);
        assert_eq!(leak.run(&mut d).unwrap(), "response 200 carries card number ×1");
        let token = jwt(r#"{"alg":"HS256"}"#, r#"{"sub":"alice"}"#, "c2lnbmF0dXJl");
        let login = ex("POST", "/login", "10.0.0.9", 200, 0).body(&format!(r#"{{"token":"{token}"}}"#));
        assert_eq!(login.run(&mut d), None);
        let elsewhere = ex("GET", "/debug", "10.0.0.9", 200, 0).body(&format!(r#"{{"token":"{token}"}}"#));
        assert_eq!(elsewhere.run(&mut d).unwrap(), "response 200 carries JWT ×1");
        assert_eq!(
            ex("GET", "/users/1", "10.0.0.9", 200, 0)
                .body(r#"{"id":1}"#)
                .run(&mut d),
            None
        );
    }

    #[test]
    fn state_is_bounded_and_what_is_not_tracked_is_counted() {
        let mut d = compile("bola", &[("distinctIds", "3"), ("maxTracked", "100")]);
        for i in 0..1000u64 {
            let source: &'static str = Box::leak(format!("10.1.{}.{}", i / 256, i % 256).into_boxed_str());
            let _ = ex("GET", &format!("/users/{i}"), source, 200, 0).run(&mut d);
        }
        assert_eq!(d.untracked(), 900);
        // Once the windows have ended, new keys are tracked again.
        assert_eq!(ex("GET", "/users/1", "10.2.0.1", 200, 61 * S).run(&mut d), None);
        assert_eq!(d.untracked(), 900);
    }
}
