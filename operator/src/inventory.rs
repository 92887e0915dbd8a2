//! One endpoint of a monitor's inventory as the operator keeps it: every node's deltas added up,
//! and taken back from the status a previous operator wrote, so a restart loses nothing.
//!
//! Everything kept per endpoint is bounded: the authentication schemes and kinds of personal
//! data by their fixed vocabularies, content types by
//! [`MAX_CONTENT_TYPES_PER_ENDPOINT`], latency by its fixed buckets.

use palisade_api::agent::EndpointDelta;
use palisade_api::inventory::{
    latency_bucket, latency_quantile, AuthScheme, LATENCY_BUCKETS, LATENCY_BUCKET_BOUNDS_MICROS,
    MAX_CONTENT_TYPES_PER_ENDPOINT,
};
use palisade_api::v1alpha1::{EndpointLatency, EndpointStatus, LatencyBucket, StatusCount};
use std::collections::BTreeMap;

/// Kinds of personal data an endpoint's responses showed (the agent's names; see
/// `EndpointStatus::pii_types`). Unknown names from a newer agent are listed too, within bounds.
const MAX_PII_TYPES: usize = 8;
/// Longest name accepted for a kind of personal data or a content type.
const MAX_NAME_BYTES: usize = 100;

/// Accumulated counts and observations for one endpoint of one monitor.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct EndpointTotals {
    pub requests: u64,
    pub east_west: u64,
    pub exceptions: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub last_seen_unix_ms: i64,
    /// Set of [`AuthScheme::bit`]s.
    pub auth: u16,
    pub request_types: Vec<String>,
    pub response_types: Vec<String>,
    pub pii_types: Vec<String>,
    /// Exchanges per latency bucket (empty until one was counted).
    pub latency: Vec<u64>,
    pub latency_max_micros: u64,
}

/// Adds the names in `new` to `kept` in order, skipping repeats and overlong names, until `kept`
/// holds `max`.
fn add_names<'a>(kept: &mut Vec<String>, new: impl IntoIterator<Item = &'a String>, max: usize) {
    for name in new {
        if kept.len() >= max {
            return;
        }
        if name.len() <= MAX_NAME_BYTES && !kept.contains(name) {
            kept.push(name.clone());
        }
    }
}

impl EndpointTotals {
    /// Adds one node's delta for this endpoint (one status).
    pub fn add(&mut self, e: &EndpointDelta) {
        self.requests += e.count;
        self.east_west += e.east_west;
        self.exceptions += e.exceptions;
        *self.statuses.entry(e.status.min(999) as u16).or_default() += e.count;
        self.last_seen_unix_ms = self.last_seen_unix_ms.max(e.last_seen_unix_ms);
        self.add_observations(
            &e.auth_schemes,
            &e.request_content_types,
            &e.response_content_types,
            &e.pii_types,
        );
        self.add_latency(&e.latency_buckets, e.latency_max_micros);
    }

    /// Takes over what a previous operator wrote in status for this endpoint.
    pub fn seed(&mut self, item: &EndpointStatus) {
        self.requests += item.requests;
        self.east_west += item.east_west_requests;
        self.exceptions += item.exceptions;
        for s in &item.statuses {
            *self.statuses.entry(s.code).or_default() += s.count;
        }
        let seen = item.last_seen.as_ref().map(|t| t.0.as_millisecond()).unwrap_or(0);
        self.last_seen_unix_ms = self.last_seen_unix_ms.max(seen);
        self.add_observations(
            &item.auth_schemes,
            &item.request_content_types,
            &item.response_content_types,
            &item.pii_types,
        );
        if let Some(l) = &item.latency {
            let mut counts = [0u64; LATENCY_BUCKETS];
            for b in &l.buckets {
                let i = b.up_to_micros.map_or(LATENCY_BUCKETS - 1, latency_bucket);
                counts[i] = counts[i].saturating_add(b.count);
            }
            self.add_latency(&counts, l.max_micros);
        }
    }

    fn add_observations(&mut self, auth: &[String], request: &[String], response: &[String], pii: &[String]) {
        for name in auth {
            self.auth |= AuthScheme::parse(name).map_or(0, AuthScheme::bit);
        }
        add_names(&mut self.request_types, request, MAX_CONTENT_TYPES_PER_ENDPOINT);
        add_names(&mut self.response_types, response, MAX_CONTENT_TYPES_PER_ENDPOINT);
        add_names(&mut self.pii_types, pii, MAX_PII_TYPES);
    }

    fn add_latency(&mut self, buckets: &[u64], max_micros: u64) {
        if buckets.iter().all(|n| *n == 0) {
            return;
        }
        self.latency.resize(LATENCY_BUCKETS, 0);
        // A longer list (a newer agent's finer buckets) is not ours to read: its tail is dropped.
        for (mine, theirs) in self.latency.iter_mut().zip(buckets) {
            *mine = mine.saturating_add(*theirs);
        }
        self.latency_max_micros = self.latency_max_micros.max(max_micros);
    }

    /// This endpoint as `ApiMonitor` status shows it.
    pub fn status(&self, method: &str, path: &str) -> EndpointStatus {
        let latency =
            latency_quantile(&self.latency, 0.5, self.latency_max_micros).map(|p50| EndpointLatency {
                p50_micros: p50,
                p99_micros: latency_quantile(&self.latency, 0.99, self.latency_max_micros).unwrap_or(p50),
                max_micros: self.latency_max_micros,
                buckets: self
                    .latency
                    .iter()
                    .enumerate()
                    .filter(|(_, count)| **count > 0)
                    .map(|(i, count)| LatencyBucket {
                        up_to_micros: LATENCY_BUCKET_BOUNDS_MICROS.get(i).copied(),
                        count: *count,
                    })
                    .collect(),
            });
        EndpointStatus {
            method: method.to_string(),
            path: path.to_string(),
            requests: self.requests,
            east_west_requests: self.east_west,
            exceptions: self.exceptions,
            statuses: self
                .statuses
                .iter()
                .map(|(code, count)| StatusCount {
                    code: *code,
                    count: *count,
                })
                .collect(),
            auth_schemes: AuthScheme::from_bits(self.auth)
                .map(|s| s.as_str().to_string())
                .collect(),
            request_content_types: self.request_types.clone(),
            response_content_types: self.response_types.clone(),
            pii_types: self.pii_types.clone(),
            latency,
            last_seen: (self.last_seen_unix_ms > 0)
                .then(|| crate::state::unix_ms_to_time(self.last_seen_unix_ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_api::inventory::latency_bucket;

    fn delta(status: u32, count: u64, auth: &[&str], latency_micros: &[u64]) -> EndpointDelta {
        let mut buckets = vec![0; LATENCY_BUCKETS];
        for m in latency_micros {
            buckets[latency_bucket(*m)] += 1;
        }
        EndpointDelta {
            method: "GET".into(),
            path: "/users/{id}".into(),
            status,
            count,
            last_seen_unix_ms: 1_700_000_000_000,
            auth_schemes: auth.iter().map(|s| s.to_string()).collect(),
            response_content_types: vec!["application/json".into()],
            pii_types: vec!["email".into()],
            latency_max_micros: latency_micros.iter().copied().max().unwrap_or(0),
            latency_buckets: buckets,
            ..Default::default()
        }
    }

    #[test]
    fn nodes_deltas_add_up_and_the_status_reads_percentiles_from_the_buckets() {
        let mut t = EndpointTotals::default();
        // Node A: 99 fast answers; node B: one slow one with another scheme.
        t.add(&delta(200, 99, &["bearer"], &[90; 99]));
        t.add(&delta(404, 1, &["none", "made-up"], &[40_000]));
        let s = t.status("GET", "/users/{id}");
        assert_eq!(s.requests, 100);
        assert_eq!(
            s.auth_schemes,
            ["none", "bearer"],
            "known names, in a fixed order"
        );
        assert_eq!(s.response_content_types, ["application/json"], "listed once");
        assert_eq!(s.pii_types, ["email"]);
        let l = s.latency.expect("latency counted");
        assert_eq!((l.p50_micros, l.p99_micros, l.max_micros), (100, 100, 40_000));
        let bucket = |up_to_micros, count| LatencyBucket { up_to_micros, count };
        assert_eq!(
            l.buckets,
            [bucket(Some(100), 99), bucket(Some(50_000), 1)],
            "empty buckets are left out"
        );
    }

    #[test]
    fn lists_stay_bounded_whatever_clients_send() {
        let mut t = EndpointTotals::default();
        for i in 0..50 {
            let mut d = delta(200, 1, &[], &[10]);
            d.request_content_types = vec![format!("application/x-{i}")];
            d.pii_types = vec![format!("kind{i}"), "x".repeat(MAX_NAME_BYTES + 1)];
            t.add(&d);
        }
        assert_eq!(t.request_types.len(), MAX_CONTENT_TYPES_PER_ENDPOINT);
        assert_eq!(t.pii_types.len(), MAX_PII_TYPES);
        assert!(t.pii_types.iter().all(|n| n.len() <= MAX_NAME_BYTES));
    }

    #[test]
    fn an_operator_restart_takes_everything_back_from_status() {
        let mut before = EndpointTotals::default();
        before.add(&delta(200, 4, &["basic"], &[200, 300, 7_000_000, 60_000_000]));
        let status = before.status("GET", "/users/{id}");
        assert!(status.last_seen.is_some());
        let mut after = EndpointTotals::default();
        after.seed(&status);
        assert_eq!(after, before);
        // And a delta with no latency (an older agent) leaves it as it was.
        let mut old = delta(200, 1, &[], &[]);
        old.latency_buckets.clear();
        after.add(&old);
        assert_eq!(after.latency, before.latency);
    }
}
