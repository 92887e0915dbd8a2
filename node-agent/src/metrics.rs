//! The agent's Prometheus metrics: RED per endpoint template (with a hard cap on label sets, so an
//! attacker sending random paths cannot blow up cardinality), findings, and every loss counter.
//!
//! Labels carry templated paths only, never raw targets, so no secret reaches a metric.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// Most distinct endpoint label sets; later ones are counted under `path="{overflow}"`.
pub const MAX_ENDPOINT_SERIES: usize = 1000;
pub const OVERFLOW_PATH: &str = "{overflow}";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub namespace: String,
    pub monitor: String,
    pub method: String,
    pub path: String,
    pub code_class: String,
}

/// One endpoint series: its labels and metric handles. [`AgentMetrics::series`] hands it out
/// shared, so a caller that counts the same endpoint again can keep it and skip the lookup.
#[derive(Debug)]
pub struct EndpointSeries {
    labels: EndpointLabels,
    requests: Counter,
    duration: Histogram,
}

impl EndpointSeries {
    /// Counts one exchange of this endpoint and status class.
    pub fn record(&self, metrics: &AgentMetrics, seconds: f64, exception: bool) {
        self.requests.inc();
        self.duration.observe(seconds);
        if exception {
            metrics.exceptions.get_or_create(&self.labels).inc();
        }
    }
}

const CODE_CLASSES: [&str; 6] = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub namespace: String,
    pub policy: String,
    pub rule: String,
    pub severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BodyLabels {
    pub direction: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: String,
}

/// Which message of an exchange a body belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyDirection {
    Request = 0,
    Response = 1,
}

/// Counter handles for the bodies of one direction, made once (no label lookup per exchange).
#[derive(Clone)]
struct BodyCounters {
    complete: Counter,
    truncated: Counter,
    bytes: Counter,
}

/// All of the agent's metrics. Cloning shares them.
#[derive(Clone)]
pub struct AgentMetrics {
    registry: Arc<Registry>,
    requests: Family<EndpointLabels, Counter>,
    duration: Family<EndpointLabels, Histogram>,
    findings: Family<FindingLabels, Counter>,
    exceptions: Family<EndpointLabels, Counter>,
    kernel: Family<ReasonLabels, Counter<u64, AtomicU64>>,
    dropped: Family<ReasonLabels, Counter<u64, AtomicU64>>,
    attached_pods: Gauge,
    blocked_sources: Gauge,
    block_latency: Histogram,
    isolate_latency: Histogram,
    isolated_pods: Gauge,
    connections: Gauge,
    drained: Counter,
    ring_fill: Gauge<f64, AtomicU64>,
    ring_bytes: Gauge,
    shared_ring_records: Counter<u64, AtomicU64>,
    tls_decrypted: Counter<u64, AtomicU64>,
    tls_fallbacks: Counter<u64, AtomicU64>,
    tls_session_pointers: Counter<u64, AtomicU64>,
    /// Request and response bodies, indexed by [`BodyDirection`].
    bodies: [BodyCounters; 2],
    /// Endpoint label sets seen so far, by an Fx hash of their parts, with their metric handles:
    /// one lookup per request and no label allocation once an endpoint is known.
    series: Arc<Mutex<rustc_hash::FxHashMap<u64, Vec<Arc<EndpointSeries>>>>>,
    series_count: Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One exchange as the RED metrics count it.
#[derive(Clone, Copy, Debug)]
pub struct ExchangeSample<'a> {
    pub namespace: &'a str,
    pub monitor: &'a str,
    pub method: &'a str,
    /// The path template.
    pub path: &'a str,
    pub status: u16,
    pub seconds: f64,
    /// A server error whose body shows a stack trace or a debug page.
    pub exception: bool,
}

/// Brings a counter kept from an absolute total (kernel counters, drop counts) up to `total`.
/// Totals only grow; a smaller one (never, in practice) leaves the counter as it is.
fn raise_to(counter: &Counter<u64, AtomicU64>, total: u64) {
    let current = counter.get();
    if total > current {
        counter.inc_by(total - current);
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("palisade_agent");
        let requests = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests seen, by monitor and endpoint template",
            requests.clone(),
        );
        let duration = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
        });
        registry.register(
            "http_request_duration_seconds",
            "First request byte to last response byte",
            duration.clone(),
        );
        let findings = Family::<FindingLabels, Counter>::default();
        registry.register(
            "findings",
            "Malicious requests found, by policy and rule",
            findings.clone(),
        );
        let kernel = Family::<ReasonLabels, Counter<u64, AtomicU64>>::default();
        registry.register(
            "capture_kernel",
            "Capture program counters: packets_seen, records_emitted, records_lost (ring buffers full), bytes_truncated, parse_errors, packets_filtered (other ports, or connections outside the sample)",
            kernel.clone(),
        );
        let dropped = Family::<ReasonLabels, Counter<u64, AtomicU64>>::default();
        registry.register(
            "messages_dropped",
            "Data the agent's parser had to drop, by reason",
            dropped.clone(),
        );
        let attached_pods = Gauge::default();
        registry.register(
            "attached_pods",
            "Pods with capture attached on this node",
            attached_pods.clone(),
        );
        let exceptions = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "http_exceptions",
            "Server errors (5xx) whose body shows a stack trace or a debug page, per endpoint template",
            exceptions.clone(),
        );
        let blocked_sources = Gauge::default();
        registry.register(
            "blocked_sources",
            "Sources whose traffic to a protected pod the kernel drops now (blockSource, enforce mode)",
            blocked_sources.clone(),
        );
        let latency_buckets = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0,
        ];
        let block_latency = Histogram::new(latency_buckets);
        registry.register(
            "block_latency_seconds",
            "From the capture of the request that triggered a blockSource to the block in the kernel's map",
            block_latency.clone(),
        );
        let isolate_latency = Histogram::new(latency_buckets);
        registry.register(
            "isolate_latency_seconds",
            "From the capture of the request that triggered an isolate action to the pod's isolation in the kernel's maps",
            isolate_latency.clone(),
        );
        let isolated_pods = Gauge::default();
        registry.register(
            "isolated_pods",
            "Pods isolated in the kernel now (by ApiIsolations and by isolate actions)",
            isolated_pods.clone(),
        );
        let drained = Counter::default();
        registry.register(
            "records_drained",
            "Capture records read from the ring buffer by the agent",
            drained.clone(),
        );
        let ring_fill = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "capture_ring_fill_ratio",
            "How full the fullest capture ring buffer was when the last drain started (0 to 1; at 1 records are lost)",
            ring_fill.clone(),
        );
        let ring_bytes = Gauge::default();
        registry.register(
            "capture_ring_bytes",
            "Size of the capture ring buffers together (one per CPU and the shared one)",
            ring_bytes.clone(),
        );
        let shared_ring_records = Counter::<u64, AtomicU64>::default();
        registry.register(
            "capture_shared_ring_records",
            "Capture records read from the shared ring: written there because their CPU's ring was full (or the CPU has none). Not lost, but that CPU's traffic outruns the drains",
            shared_ring_records.clone(),
        );
        let tls_decrypted = Counter::<u64, AtomicU64>::default();
        registry.register(
            "tls_decrypted_connections",
            "TLS connections decrypted in both directions with their session's keys (--tls-probes keys); those given up are counted in palisade_agent_messages_dropped_total{reason=\"tls_not_decrypted\"}",
            tls_decrypted.clone(),
        );
        let tls_fallbacks = Counter::<u64, AtomicU64>::default();
        registry.register(
            "tls_fallbacks",
            "Processes whose reads and writes are probed because a connection of theirs could not be decrypted (TLS 1.1, a CBC cipher suite, secrets not found); --tls-probes auto",
            tls_fallbacks.clone(),
        );
        let tls_session_pointers = Counter::<u64, AtomicU64>::default();
        registry.register(
            "tls_session_pointers",
            "Processes whose TLS 1.2 SSL_SESSION (the master secret) the kernel copies at each handshake, once the agent found in their memory where their SSL objects point to it; before that, a short TLS 1.2 connection may end before the agent reads it",
            tls_session_pointers.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "tracked_connections",
            "TCP connections the parser tracks",
            connections.clone(),
        );
        let body_messages = Family::<BodyLabels, Counter>::default();
        registry.register(
            "http_bodies",
            "Bodies of server exchanges while bodies are captured, by direction and outcome: complete (kept whole) or truncated (cut at maxBodyBytes, bytes missing, or memory pressure)",
            body_messages.clone(),
        );
        let body_bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "http_body_bytes",
            "Body bytes kept from server exchanges, by direction",
            body_bytes.clone(),
        );
        let bodies = ["request", "response"].map(|direction| {
            let outcome = |outcome: &str| {
                body_messages
                    .get_or_create(&BodyLabels {
                        direction: direction.into(),
                        outcome: outcome.into(),
                    })
                    .clone()
            };
            BodyCounters {
                complete: outcome("complete"),
                truncated: outcome("truncated"),
                bytes: body_bytes
                    .get_or_create(&DirectionLabels {
                        direction: direction.into(),
                    })
                    .clone(),
            }
        });
        AgentMetrics {
            registry: Arc::new(registry),
            requests,
            duration,
            findings,
            exceptions,
            kernel,
            dropped,
            attached_pods,
            blocked_sources,
            block_latency,
            isolate_latency,
            isolated_pods,
            connections,
            drained,
            ring_fill,
            ring_bytes,
            shared_ring_records,
            tls_decrypted,
            tls_fallbacks,
            tls_session_pointers,
            bodies,
            series: Arc::new(Mutex::new(rustc_hash::FxHashMap::default())),
            series_count: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }
    }

    /// Records one request/response exchange, capping the number of label sets.
    pub fn exchange(&self, e: &ExchangeSample) {
        self.series(e).record(self, e.seconds, e.exception);
    }

    /// The series an exchange counts in, made on first use; past [`MAX_ENDPOINT_SERIES`], the
    /// shared overflow series. The caller may keep it for more exchanges of the same endpoint
    /// and status class (the agent does, per endpoint and report interval).
    pub fn series(&self, e: &ExchangeSample) -> Arc<EndpointSeries> {
        use std::hash::{Hash, Hasher};
        let ExchangeSample {
            namespace,
            monitor,
            method,
            path,
            status,
            ..
        } = *e;
        let class = CODE_CLASSES
            .get((status / 100) as usize)
            .copied()
            .unwrap_or("other");
        let mut hasher = rustc_hash::FxHasher::default();
        (namespace, monitor, method, path, class).hash(&mut hasher);
        let key = hasher.finish();
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = series.entry(key).or_default();
        let found = bucket.iter().find(|s| {
            let l = &s.labels;
            l.namespace == namespace
                && l.monitor == monitor
                && l.method == method
                && l.path == path
                && l.code_class == class
        });
        if let Some(s) = found {
            return Arc::clone(s);
        }
        let mut labels = EndpointLabels {
            namespace: namespace.to_string(),
            monitor: monitor.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            code_class: class.to_string(),
        };
        // Past the cap, new endpoints share one overflow series (which is not cached under their
        // own key, so they stay there).
        let counted = self.series_count.load(std::sync::atomic::Ordering::Relaxed);
        let overflow = counted >= MAX_ENDPOINT_SERIES;
        if overflow {
            labels.method = "*".into();
            labels.path = OVERFLOW_PATH.into();
        }
        let made = Arc::new(EndpointSeries {
            requests: self.requests.get_or_create(&labels).clone(),
            duration: self.duration.get_or_create(&labels).clone(),
            labels,
        });
        if !overflow {
            self.series_count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            bucket.push(Arc::clone(&made));
        }
        made
    }

    pub fn finding(&self, namespace: &str, policy: &str, rule: &str, severity: &str) {
        self.findings
            .get_or_create(&FindingLabels {
                namespace: namespace.into(),
                policy: policy.into(),
                rule: rule.into(),
                severity: severity.into(),
            })
            .inc();
    }

    /// Sets a kernel counter to its current absolute value (kernel counters only grow).
    pub fn kernel_counter(&self, reason: &str, value: u64) {
        raise_to(
            &self.kernel.get_or_create(&ReasonLabels {
                reason: reason.into(),
            }),
            value,
        );
    }

    /// Sets a parser drop counter to its current absolute value.
    pub fn dropped(&self, reason: &str, value: u64) {
        raise_to(
            &self.dropped.get_or_create(&ReasonLabels {
                reason: reason.into(),
            }),
            value,
        );
    }

    /// Adds `n` to a drop reason counted by increments (not from an absolute total).
    pub fn dropped_add(&self, reason: &str, n: u64) {
        self.dropped
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc_by(n);
    }

    /// Counts one message body of `len` bytes on the wire, of which `kept` were kept; `truncated`:
    /// the parser marked it cut. Bodies of length 0 are not counted.
    pub fn body(&self, direction: BodyDirection, kept: usize, len: u64, truncated: bool) {
        if len == 0 {
            return;
        }
        let c = &self.bodies[direction as usize];
        if truncated || (kept as u64) < len {
            c.truncated.inc();
        } else {
            c.complete.inc();
        }
        c.bytes.inc_by(kept as u64);
    }

    /// Counts records read from the ring buffer.
    pub fn drained(&self, n: u64) {
        self.drained.inc_by(n);
    }

    /// How full the rings are before a drain: the fullest one's fill, and all rings' size.
    pub fn ring_fill(&self, fullest: f64, total_bytes: usize) {
        self.ring_fill.set(fullest);
        self.ring_bytes
            .set(i64::try_from(total_bytes).unwrap_or(i64::MAX));
    }

    /// Sets the count of records read from the shared ring to `total` (it only grows).
    pub fn shared_ring_records(&self, total: u64) {
        raise_to(&self.shared_ring_records, total);
    }

    pub fn block_latency(&self, seconds: f64) {
        self.block_latency.observe(seconds);
    }

    pub fn isolate_latency(&self, seconds: f64) {
        self.isolate_latency.observe(seconds);
    }

    pub fn set_isolated_pods(&self, n: usize) {
        self.isolated_pods.set(n as i64);
    }

    pub fn set_blocked_sources(&self, n: usize) {
        self.blocked_sources.set(n as i64);
    }

    pub fn set_attached_pods(&self, n: usize) {
        self.attached_pods.set(n as i64);
    }

    /// TLS connections decrypted so far (an absolute total).
    pub fn tls_decrypted(&self, total: u64) {
        raise_to(&self.tls_decrypted, total);
    }

    /// One more process probed on every read and write after a connection it could not decrypt.
    pub fn tls_fallback(&self) {
        self.tls_fallbacks.inc();
    }

    /// One more process whose TLS 1.2 sessions the kernel copies.
    pub fn tls_session_pointer(&self) {
        self.tls_session_pointers.inc();
    }

    pub fn set_connections(&self, n: usize) {
        self.connections.set(n as i64);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `/metrics` and `/healthz` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, metrics: AgentMetrics) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_series_are_capped() {
        let m = AgentMetrics::new();
        for i in 0..(MAX_ENDPOINT_SERIES + 500) {
            m.exchange(&ExchangeSample {
                namespace: "demo",
                monitor: "api",
                method: "GET",
                path: &format!("/random/{i}x"),
                status: 200,
                seconds: 0.001,
                exception: false,
            });
        }
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("palisade_agent_http_requests_total{"))
            .count();
        assert_eq!(
            series,
            MAX_ENDPOINT_SERIES + 1,
            "the cap plus one overflow series"
        );
        assert!(text.contains(r#"path="{overflow}""#));
        let overflow = text
            .lines()
            .find(|l| l.starts_with("palisade_agent_http_requests_total{") && l.contains("{overflow}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok());
        assert_eq!(overflow, Some(500), "requests past the cap are still counted");
    }

    #[test]
    fn a_kept_series_counts_like_a_lookup() {
        let m = AgentMetrics::new();
        let sample = ExchangeSample {
            namespace: "demo",
            monitor: "api",
            method: "GET",
            path: "/users/{id}",
            status: 500,
            seconds: 0.002,
            exception: false,
        };
        let kept = m.series(&sample);
        assert!(
            Arc::ptr_eq(&kept, &m.series(&sample)),
            "one series per endpoint and class"
        );
        kept.record(&m, 0.002, false);
        m.exchange(&sample);
        kept.record(&m, 0.002, true);
        let text = m.encode();
        let value = |metric: &str| {
            text.lines()
                .find(|l| l.starts_with(metric) && l.contains(r#"path="/users/{id}""#) && l.contains("5xx"))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        assert_eq!(value("palisade_agent_http_requests_total{"), Some(3.0), "{text}");
        assert_eq!(
            value("palisade_agent_http_request_duration_seconds_count{"),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            value("palisade_agent_http_exceptions_total{"),
            Some(1.0),
            "{text}"
        );
    }

    #[test]
    fn bodies_are_counted_complete_or_truncated() {
        let m = AgentMetrics::new();
        m.body(BodyDirection::Response, 1024, 1024, false);
        m.body(BodyDirection::Response, 100, 1024, true);
        m.body(BodyDirection::Response, 100, 1024, false);
        m.body(BodyDirection::Request, 0, 0, false);
        let text = m.encode();
        for line in [
            r#"palisade_agent_http_bodies_total{direction="response",outcome="complete"} 1"#,
            r#"palisade_agent_http_bodies_total{direction="response",outcome="truncated"} 2"#,
            r#"palisade_agent_http_bodies_total{direction="request",outcome="complete"} 0"#,
            r#"palisade_agent_http_body_bytes_total{direction="response"} 1224"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }

    #[test]
    fn kernel_counters_follow_absolute_values() {
        let m = AgentMetrics::new();
        m.kernel_counter("records_lost", 5);
        m.kernel_counter("records_lost", 9);
        m.kernel_counter("records_lost", 9);
        assert!(
            m.encode()
                .contains(r#"palisade_agent_capture_kernel_total{reason="records_lost"} 9"#),
            "{}",
            m.encode()
        );
    }
}
