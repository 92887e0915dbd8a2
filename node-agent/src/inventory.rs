//! The endpoint inventory a node keeps between two reports: per monitor, per endpoint (method and
//! path template) and response status, how many exchanges were seen and what they showed (how
//! requests authenticated, content types, personal data in responses, latency). The operator
//! adds up every node's deltas in the monitor's status.
//!
//! Memory is bounded by the monitor's endpoint cap: an endpoint beyond it is counted only as
//! overflow, and every list kept per endpoint has a fixed maximum length.

use crate::detect::exposure::{Exposure, ExposureScanner};
use palisade_api::agent::EndpointDelta;
use palisade_api::inventory::{latency_bucket, AuthScheme, LATENCY_BUCKETS, MAX_CONTENT_TYPES_PER_ENDPOINT};
use std::sync::LazyLock;

/// Responses per endpoint and status whose bodies are scanned for personal data in each report
/// interval. The inventory lists kinds seen, not every occurrence (that is the `dataExposure`
/// detector's job), so a sample bounds the cost of bodies however busy the endpoint.
pub const PII_SCANS_PER_REPORT: u8 = 4;

/// One address is personal data already (the `dataExposure` detector waits for bulk).
static PII_SCANNER: LazyLock<ExposureScanner> =
    LazyLock::new(|| ExposureScanner::new(Exposure::ALL.into_iter().filter(|k| k.is_data()).collect(), 1));

/// What one exchange showed, as the inventory counts it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExchangeFacts<'a> {
    pub east_west: bool,
    pub exception: bool,
    pub now_ms: i64,
    /// Set of [`AuthScheme::bit`]s.
    pub auth: u16,
    /// The request's and the response's Content-Type values, as sent: only a media type not
    /// listed yet is checked ([`media_type`]), so the common case is one comparison.
    pub request_type: Option<&'a str>,
    pub response_type: Option<&'a str>,
    pub latency_micros: u64,
}

impl<'a> ExchangeFacts<'a> {
    /// The credentials and media type of a request, read in one pass over its fields.
    pub fn read_request(&mut self, headers: &'a crate::http::HeaderFields) {
        let mut auth = 0;
        for (name, value) in headers.iter() {
            if let Some(scheme) = AuthScheme::of_header(name, value) {
                auth |= scheme.bit();
            } else if self.request_type.is_none() && name.eq_ignore_ascii_case("content-type") {
                self.request_type = Some(value);
            }
        }
        self.auth = if auth == 0 { AuthScheme::None.bit() } else { auth };
    }
}

/// The media type of a Content-Type value (`type/subtype`, parameters dropped), if it has that
/// shape: RFC 9110 tokens, at most 100 bytes. Anything else is not listed.
pub fn media_type(value: &str) -> Option<&str> {
    let media = value.split(';').next().unwrap_or("").trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    let (kind, subtype) = media.split_once('/')?;
    (media.len() <= 100 && token(kind) && token(subtype)).then_some(media)
}

/// Adds the media type of a Content-Type value to `types` (in lower case) unless it is there,
/// the list is full, or it is not a media type.
fn add_media_type(types: &mut Vec<String>, content_type: &str) {
    // The common case, a type listed already, without splitting the value.
    let listed = |t: &String| {
        content_type.len() >= t.len()
            && content_type.as_bytes()[..t.len()].eq_ignore_ascii_case(t.as_bytes())
            && matches!(
                content_type.as_bytes().get(t.len()),
                None | Some(b';' | b' ' | b'\t')
            )
    };
    if types.iter().any(listed) || types.len() >= MAX_CONTENT_TYPES_PER_ENDPOINT {
        return;
    }
    let media = content_type.split(';').next().unwrap_or("").trim();
    if let Some(media) = media_type(media) {
        if !types.iter().any(|t| t.eq_ignore_ascii_case(media)) {
            types.push(media.to_ascii_lowercase());
        }
    }
}

/// Puts back media types of an undelivered report as they were reported (already checked and
/// redacted, which may have made them something other than a media type).
fn restore_media_types(types: &mut Vec<String>, reported: &[String]) {
    for media in reported {
        if !types.contains(media) && types.len() < MAX_CONTENT_TYPES_PER_ENDPOINT {
            types.push(media.clone());
        }
    }
}

/// What one endpoint answered with one status since the last report.
#[derive(Debug, Default)]
pub struct EndpointCounter {
    count: u64,
    east_west: u64,
    exceptions: u64,
    last_seen_unix_ms: i64,
    auth: u16,
    request_types: Vec<String>,
    response_types: Vec<String>,
    /// Set of bits, one per index in [`Exposure::ALL`] (the data kinds; stack traces and debug
    /// pages are counted as exceptions instead).
    pii: u8,
    pii_scans: u8,
    latency: [u64; LATENCY_BUCKETS],
    latency_max_micros: u64,
    /// The endpoint's RED metrics series, looked up on its first exchange of the interval.
    pub(crate) metrics: Option<std::sync::Arc<crate::metrics::EndpointSeries>>,
}

impl EndpointCounter {
    pub fn add(&mut self, facts: &ExchangeFacts) {
        self.count += 1;
        self.exceptions += u64::from(facts.exception);
        self.east_west += u64::from(facts.east_west);
        self.last_seen_unix_ms = facts.now_ms;
        self.auth |= facts.auth;
        if let Some(media) = facts.request_type {
            add_media_type(&mut self.request_types, media);
        }
        if let Some(media) = facts.response_type {
            add_media_type(&mut self.response_types, media);
        }
        self.latency[latency_bucket(facts.latency_micros)] += 1;
        self.latency_max_micros = self.latency_max_micros.max(facts.latency_micros);
    }

    /// Scans a response body for personal data, if this endpoint's sample for the interval is
    /// not taken yet.
    pub fn sample_body(&mut self, body: &[u8]) {
        if body.is_empty() || self.pii_scans >= PII_SCANS_PER_REPORT {
            return;
        }
        self.pii_scans += 1;
        for (kind, _) in PII_SCANNER.scan(body).found {
            if let Some(i) = Exposure::ALL.iter().position(|k| *k == kind) {
                self.pii |= 1 << i;
            }
        }
    }

    /// Adds back the counts of a delta that could not be delivered.
    fn restore(&mut self, e: &EndpointDelta) {
        self.count += e.count;
        self.east_west += e.east_west;
        self.exceptions += e.exceptions;
        self.last_seen_unix_ms = self.last_seen_unix_ms.max(e.last_seen_unix_ms);
        for name in &e.auth_schemes {
            self.auth |= AuthScheme::parse(name).map_or(0, AuthScheme::bit);
        }
        restore_media_types(&mut self.request_types, &e.request_content_types);
        restore_media_types(&mut self.response_types, &e.response_content_types);
        for name in &e.pii_types {
            if let Some(i) = Exposure::ALL
                .iter()
                .position(|k| k.is_data() && k.as_str() == name)
            {
                self.pii |= 1 << i;
            }
        }
        for (mine, theirs) in self.latency.iter_mut().zip(&e.latency_buckets) {
            *mine += theirs;
        }
        self.latency_max_micros = self.latency_max_micros.max(e.latency_max_micros);
    }

    /// The delta to report; content types pass through `redact` (they are the client's text).
    fn into_delta(
        self,
        method: &str,
        path: &str,
        status: u32,
        redact: &dyn Fn(&str) -> String,
    ) -> EndpointDelta {
        EndpointDelta {
            method: method.to_string(),
            path: path.to_string(),
            status,
            count: self.count,
            last_seen_unix_ms: self.last_seen_unix_ms,
            east_west: self.east_west,
            exceptions: self.exceptions,
            auth_schemes: AuthScheme::from_bits(self.auth)
                .map(|s| s.as_str().to_string())
                .collect(),
            request_content_types: self.request_types.iter().map(|t| redact(t)).collect(),
            response_content_types: self.response_types.iter().map(|t| redact(t)).collect(),
            pii_types: Exposure::ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| self.pii & (1 << i) != 0)
                .map(|(_, k)| k.as_str().to_string())
                .collect(),
            latency_buckets: self.latency.to_vec(),
            latency_max_micros: self.latency_max_micros,
        }
    }
}

/// One monitor's endpoints since the last report.
#[derive(Default)]
pub struct MonitorPending {
    /// Method → path template → counts per status since the last report. Endpoints stay when
    /// their counts are taken: the keys are every endpoint seen since start (bounded by the
    /// monitor's cap).
    endpoints: rustc_hash::FxHashMap<String, rustc_hash::FxHashMap<String, Vec<(u32, EndpointCounter)>>>,
    /// Endpoints in `endpoints`.
    known: usize,
    /// Requests to endpoints beyond the cap since the last report.
    pub overflow_requests: u64,
}

impl MonitorPending {
    /// The counter of one endpoint and status, made when missing unless `cap` endpoints are
    /// known already (`None`). Looked up by borrowed strings: nothing is allocated for an
    /// endpoint seen before.
    pub fn counter(
        &mut self,
        method: &str,
        path: &str,
        status: u32,
        cap: usize,
    ) -> Option<&mut EndpointCounter> {
        if !self
            .endpoints
            .get(method)
            .is_some_and(|paths| paths.contains_key(path))
        {
            if self.known >= cap {
                return None;
            }
            self.known += 1;
            self.endpoints
                .entry(method.to_string())
                .or_default()
                .insert(path.to_string(), Vec::new());
        }
        let statuses = self.endpoints.get_mut(method)?.get_mut(path)?;
        let i = match statuses.iter().position(|(s, _)| *s == status) {
            Some(i) => i,
            None => {
                statuses.push((status, EndpointCounter::default()));
                statuses.len() - 1
            }
        };
        Some(&mut statuses[i].1)
    }

    /// Whether anything was counted since the last report.
    pub fn has_deltas(&self) -> bool {
        self.overflow_requests > 0
            || self
                .endpoints
                .values()
                .any(|paths| paths.values().any(|statuses| !statuses.is_empty()))
    }

    /// Takes the endpoint counts and overflow accumulated since the last report (sorted by
    /// method, path and status); the endpoints stay known. Content types pass through `redact`.
    pub fn take_deltas(&mut self, redact: &dyn Fn(&str) -> String) -> (Vec<EndpointDelta>, u64) {
        let mut endpoints = vec![];
        for (method, paths) in &mut self.endpoints {
            for (path, statuses) in paths {
                endpoints.extend(
                    statuses
                        .drain(..)
                        .map(|(status, c)| c.into_delta(method, path, status, redact)),
                );
            }
        }
        endpoints.sort_by(|a, b| (&a.method, &a.path, a.status).cmp(&(&b.method, &b.path, b.status)));
        (endpoints, std::mem::take(&mut self.overflow_requests))
    }

    /// Puts back the endpoint counts of a report that was not delivered.
    pub fn restore(&mut self, endpoints: &[EndpointDelta], overflow_requests: u64) {
        self.overflow_requests += overflow_requests;
        for e in endpoints {
            // Endpoints of an undelivered report were counted under the cap already.
            if let Some(c) = self.counter(&e.method, &e.path, e.status, usize::MAX) {
                c.restore(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::HeaderFields;

    fn unredacted(s: &str) -> String {
        s.to_string()
    }

    fn facts_of(fields: &[(&str, &str)]) -> (HeaderFields, u16, Option<String>) {
        let headers: HeaderFields = fields.iter().copied().collect();
        let mut facts = ExchangeFacts::default();
        facts.read_request(&headers);
        let (auth, media) = (facts.auth, facts.request_type.map(str::to_string));
        (headers, auth, media)
    }

    #[test]
    fn a_request_without_credentials_is_counted_as_none() {
        let (_, auth, media) =
            facts_of(&[("Host", "a"), ("Content-Type", "application/json; charset=utf-8")]);
        assert_eq!(auth, AuthScheme::None.bit());
        assert_eq!(
            media.as_deref(),
            Some("application/json; charset=utf-8"),
            "as sent"
        );
        let (_, auth, media) = facts_of(&[
            ("Authorization", "Bearer t"),
            ("Cookie", "s=1"),
            ("x-api-key", "k"),
        ]);
        assert_eq!(
            auth,
            AuthScheme::Bearer.bit() | AuthScheme::Cookie.bit() | AuthScheme::XApiKey.bit()
        );
        assert_eq!(media, None);
    }

    #[test]
    fn only_well_formed_media_types_are_listed() {
        assert_eq!(media_type(" Text/HTML ;charset=x"), Some("Text/HTML"));
        assert_eq!(
            media_type("application/vnd.api+json"),
            Some("application/vnd.api+json")
        );
        for bad in [
            "",
            "json",
            "/json",
            "application/",
            "a/b c",
            "a b/c",
            "<script>/x",
            "a/b/c",
        ] {
            assert_eq!(media_type(bad), None, "{bad}");
        }
        assert_eq!(
            media_type(&format!("a/{}", "b".repeat(99))),
            None,
            "longer than 100 bytes"
        );
    }

    #[test]
    fn content_types_are_kept_once_in_lower_case_and_at_most_four() {
        let mut c = EndpointCounter::default();
        let sent = [
            "application/JSON",
            "application/json; charset=utf-8",
            "not a media type",
            "a/1",
            "a/2",
            "a/3",
            "a/4",
        ];
        for media in sent {
            c.add(&ExchangeFacts {
                response_type: Some(media),
                ..Default::default()
            });
        }
        let d = c.into_delta("GET", "/", 200, &unredacted);
        assert_eq!(
            d.response_content_types,
            ["application/json", "a/1", "a/2", "a/3"]
        );
        assert!(d.request_content_types.is_empty());
        assert_eq!(d.count, 7);
    }

    #[test]
    fn personal_data_is_found_in_a_sample_of_bodies_and_named_by_kind() {
        let mut c = EndpointCounter::default();
        c.sample_body(br#"{"email":"ann@example.com","note":"none"}"#);
        c.sample_body(b"{}");
        c.sample_body(b"{}");
        c.sample_body(b"{}");
        // Past the sample: not scanned.
        c.sample_body(br#"{"card":"4111 1111 1111 1111"}"#);
        let d = c.into_delta("GET", "/users/{id}", 200, &unredacted);
        assert_eq!(d.pii_types, ["email"]);
        assert!(!format!("{d:?}").contains("ann@"), "kinds, never values");
        let mut c = EndpointCounter::default();
        c.sample_body(br#"{"card":"4111 1111 1111 1111","ssn":"123-45-6789"}"#);
        c.sample_body(b"");
        let d = c.into_delta("GET", "/", 200, &unredacted);
        assert_eq!(d.pii_types, ["card", "nationalId"]);
    }

    #[test]
    fn deltas_carry_latency_buckets_and_survive_an_undelivered_report() {
        let mut pending = MonitorPending::default();
        for (micros, auth) in [(80, AuthScheme::None), (3_000, AuthScheme::Basic)] {
            let c = pending.counter("POST", "/login", 401, 10).expect("under the cap");
            c.add(&ExchangeFacts {
                auth: auth.bit(),
                latency_micros: micros,
                request_type: Some("application/json"),
                now_ms: 7,
                ..Default::default()
            });
            c.sample_body(
                br#"{"token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXZhbHVl"}"#,
            );
        }
        let redact = |s: &str| s.replace("json", "[x]");
        let (deltas, overflow) = pending.take_deltas(&redact);
        assert_eq!(overflow, 0);
        let [d] = &deltas[..] else {
            panic!("one delta: {deltas:?}")
        };
        assert_eq!(d.count, 2);
        assert_eq!(d.auth_schemes, ["none", "basic"]);
        assert_eq!(
            d.request_content_types,
            ["application/[x]"],
            "redacted on the way out"
        );
        assert_eq!(d.pii_types, ["jwt"]);
        assert_eq!(d.latency_buckets.len(), LATENCY_BUCKETS);
        assert_eq!(d.latency_buckets[0], 1);
        assert_eq!(d.latency_buckets[latency_bucket(3_000)], 1);
        assert_eq!(d.latency_max_micros, 3_000);
        assert!(!pending.has_deltas(), "taken");

        pending.restore(&deltas, 3);
        let (again, overflow) = pending.take_deltas(&unredacted);
        assert_eq!(overflow, 3);
        assert_eq!(again, deltas, "restored as reported");
    }
}
