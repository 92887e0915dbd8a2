//! `ApiMonitor`: which workloads Palisade watches and what it captures from their HTTP traffic.

use super::common::{
    CommonStatus, SELECTOR_OPERATOR_MESSAGE, SELECTOR_OPERATOR_RULE, SELECTOR_VALUES_MESSAGE,
    SELECTOR_VALUES_RULE,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most endpoints listed in an ApiMonitor's status (the busiest first); `endpoints.total` counts all.
pub const MAX_ENDPOINTS_IN_STATUS: usize = 50;

/// Watch the HTTP APIs served by the pods a selector picks, out of band, with eBPF.
///
/// The operator resolves the selector to pods, and each node's agent attaches capture to those
/// pods' cgroups. Status says per node what is attached and what failed, and lists the endpoints seen.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "ApiMonitor",
    namespaced,
    status = "ApiMonitorStatus",
    shortname = "apimon",
    category = "palisade",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Pods", type_ = "integer", json_path = ".status.matchedPods"),
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".status.nodes.total"),
    printcolumn(name = "Endpoints", type_ = "integer", json_path = ".status.endpoints.total"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = Rule::new("!has(self.openApi) || self.discovery.enabled").message("openApi needs discovery.enabled: drift against the document is computed from discovered endpoints").field_path(".openApi"))]
#[serde(rename_all = "camelCase")]
pub struct ApiMonitorSpec {
    /// Pods in this namespace whose traffic is captured. An empty selector selects every pod in the namespace.
    #[x_kube(validation = Rule::new(SELECTOR_OPERATOR_RULE).message(SELECTOR_OPERATOR_MESSAGE))]
    #[x_kube(validation = Rule::new(SELECTOR_VALUES_RULE).message(SELECTOR_VALUES_MESSAGE))]
    pub selector: LabelSelector,

    /// TCP ports on which the selected pods serve HTTP. Empty: every port. The node's kernel
    /// skips the pods' connections on other ports before copying anything (unless another
    /// monitor selecting the pod watches every port, or captures TLS).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), extend("x-kubernetes-list-type" = "set"))]
    pub ports: Vec<Port>,

    /// What to capture from each HTTP message.
    #[serde(default)]
    pub capture: CaptureSpec,

    /// What to redact on the node before anything leaves it. Authorization, Cookie, Set-Cookie,
    /// Proxy-Authorization and API-key headers, bearer tokens and card numbers are always redacted.
    #[serde(default)]
    pub redaction: RedactionSpec,

    /// Plaintext capture of TLS traffic through uprobes on the pods' OpenSSL.
    #[serde(default)]
    pub tls: TlsSpec,

    /// An OpenAPI document (in a ConfigMap of this namespace) describing the API; traffic to
    /// endpoints it lacks is reported as shadow, to deprecated ones as zombie. OpenAPI 3.x or
    /// Swagger 2.0, JSON or YAML, at most 1 MiB and 2000 operations; paths are matched under the
    /// path of `servers[].url` (3.x) or `basePath` (2.0). Edits of the ConfigMap are followed; a
    /// document that cannot be used leaves capture on and sets `Degraded` with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_api: Option<OpenApiRef>,

    /// Endpoint discovery: an inventory of the endpoints seen, with templated paths.
    #[serde(default)]
    pub discovery: DiscoverySpec,
}

/// A TCP port.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(transparent)]
pub struct Port(#[schemars(range(min = 1, max = 65535))] pub i32);

/// What to capture from each HTTP message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.bodies || !has(self.maxBodyBytes) || self.maxBodyBytes == 0").message("maxBodyBytes is set but bodies is false: set bodies: true to capture bodies").field_path(".maxBodyBytes"))]
pub struct CaptureSpec {
    /// Capture request and response headers (redacted).
    #[serde(default = "default_true")]
    pub headers: bool,
    /// Capture request and response bodies (redacted, cut at maxBodyBytes and marked truncated).
    #[serde(default)]
    pub bodies: bool,
    /// Most header bytes kept per message.
    #[serde(default = "default_max_header_bytes")]
    #[schemars(range(min = 256, max = 65536))]
    pub max_header_bytes: i32,
    /// Most body bytes kept per message when bodies are captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1048576))]
    pub max_body_bytes: Option<i32>,
    /// Percentage of connections captured (1 to 100), picked in the node's kernel by a hash of
    /// each connection's ends with a random seed per agent. Endpoint counts, metrics and
    /// findings cover the captured connections only. On a pod that several monitors select,
    /// each listed port is captured at the highest percentage among the monitors listing it;
    /// if one of them lists no ports, every port is captured at the highest percentage of all;
    /// with tls.enabled, every connection of the pod is.
    #[serde(default = "default_sampling")]
    #[schemars(range(min = 1, max = 100))]
    pub sampling_percent: i32,
}

impl Default for CaptureSpec {
    fn default() -> Self {
        CaptureSpec {
            headers: true,
            bodies: false,
            max_header_bytes: default_max_header_bytes(),
            max_body_bytes: None,
            sampling_percent: default_sampling(),
        }
    }
}

/// Default body limit when `bodies` is on and `maxBodyBytes` is unset.
pub const DEFAULT_MAX_BODY_BYTES: i32 = 16384;

fn default_true() -> bool {
    true
}
fn default_max_header_bytes() -> i32 {
    8192
}
fn default_sampling() -> i32 {
    100
}

/// Redaction applied on the node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedactionSpec {
    /// More header names whose values are replaced by `[REDACTED]` (case-insensitive).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub headers: Vec<String>,
    /// JSON body fields to redact, as dotted paths (`user.password`, `items.*.card`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub json_fields: Vec<String>,
    /// More patterns (RE2 syntax) whose matches are redacted anywhere in captured text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub patterns: Vec<RedactionPattern>,
}

/// A named redaction pattern.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedactionPattern {
    /// Name shown in place of the match: `[REDACTED:<name>]`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Regular expression (RE2 syntax, no look-around).
    #[schemars(length(min = 1, max = 1024))]
    pub regex: String,
}

/// TLS plaintext capture.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Capture the TLS plaintext of OpenSSL in the selected pods' processes; off by default. With
    /// the agent's default placement, a uprobe on SSL_do_handshake copies each connection's
    /// secrets once and the agent decrypts TLS 1.3 and 1.2 itself (no cost per request); a process
    /// with a connection it cannot decrypt (a CBC suite) has its reads and writes probed from then on (a
    /// few microseconds per call). Other TLS stacks are reported as not covered.
    #[serde(default)]
    pub enabled: bool,
}

/// Where the API's OpenAPI document lives (see `spec.openApi`; parsed by
/// [`crate::openapi::parse_operations`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OpenApiRef {
    /// ConfigMap in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub config_map: String,
    /// Key of the document in the ConfigMap (`data`, or `binaryData` holding UTF-8 text).
    #[serde(default = "default_openapi_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_openapi_key() -> String {
    "openapi.json".into()
}

/// Endpoint discovery settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiscoverySpec {
    /// Keep an inventory of endpoints.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Most distinct endpoints (method + path template) tracked per node; the rest are counted as overflow.
    #[serde(default = "default_max_endpoints")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_endpoints: i32,
}

impl Default for DiscoverySpec {
    fn default() -> Self {
        DiscoverySpec {
            enabled: true,
            max_endpoints: default_max_endpoints(),
        }
    }
}

fn default_max_endpoints() -> i32 {
    1000
}

/// What the monitor sees and where it is applied.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiMonitorStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Pods the selector matches, on all nodes.
    #[serde(default)]
    pub matched_pods: u32,
    /// The endpoint inventory (busiest first, at most 50 listed).
    #[serde(default)]
    pub endpoints: EndpointInventory,
    /// TLS plaintext coverage, when `spec.tls.enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsCoverageStatus>,
}

/// Which selected pods' TLS traffic is captured in plaintext.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsCoverageStatus {
    /// Pods whose TLS traffic is captured (OpenSSL found and probed in their processes).
    pub covered_pods: u32,
    /// Pods whose TLS traffic is not captured, with the reason in `details`.
    pub uncovered_pods: u32,
    /// Per pod, uncovered ones first, at most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<TlsPodCoverage>,
}

/// TLS coverage of one pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsPodCoverage {
    /// `namespace/name`.
    pub pod: String,
    pub covered: bool,
    /// What covers it, or why it is not covered (for example a Go or rustls TLS stack).
    pub detail: String,
}

/// A bounded endpoint inventory.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointInventory {
    /// Distinct endpoints seen (method + path template).
    pub total: u32,
    /// Requests that fell outside the per-node endpoint cap and were counted only here.
    #[serde(default)]
    pub overflow_requests: u64,
    /// The busiest endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<EndpointStatus>,
}

/// One endpoint: a method and a path template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    pub method: String,
    /// Path with identifiers replaced by `{id}`, query removed.
    pub path: String,
    /// Requests seen.
    pub requests: u64,
    /// Of those, requests from inside the cluster's pod networks (east-west); the rest came from outside (north-south).
    #[serde(default)]
    pub east_west_requests: u64,
    /// Of those, server errors (5xx) whose body shows an exception: a stack trace or a debug page
    /// (counted when the monitor captures bodies).
    #[serde(default)]
    pub exceptions: u64,
    /// Responses by status code.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<StatusCount>,
    /// How requests presented credentials: `none` (no credentials), an Authorization scheme
    /// (`bearer`, `basic`, `digest`, `negotiate`, `authorization` for any other), an API-key
    /// header (`x-api-key`, `api-key`, `x-auth-token`, `x-access-token`) or `cookie`. Only the
    /// scheme is kept, never the credential.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub auth_schemes: Vec<String>,
    /// Media types of the requests' bodies (Content-Type without parameters), at most 4.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_content_types: Vec<String>,
    /// Media types of the responses' bodies, at most 4.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_content_types: Vec<String>,
    /// Kinds of personal data and secrets seen in response bodies (`card`, `nationalId`,
    /// `email`, `jwt`, `cloudKey`, `privateKey`), when the monitor captures bodies. Each node
    /// scans the first few responses per endpoint and status in every report interval (1 s by
    /// default), not all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pii_types: Vec<String>,
    /// Time from the request's first byte to the response's end, as the node saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<EndpointLatency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Time>,
}

/// An endpoint's latency: percentiles read from counts per bucket.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointLatency {
    /// Half of the exchanges took at most this long, in microseconds: the upper bound of the
    /// bucket that holds the median, so at most one bucket high.
    pub p50_micros: u64,
    /// 99 % of the exchanges took at most this long, in microseconds (a bucket bound, as above).
    pub p99_micros: u64,
    /// The slowest exchange, in microseconds.
    pub max_micros: u64,
    /// Exchanges per latency bucket, fastest first; empty buckets are left out. The buckets end
    /// at 100, 250 and 500 µs, 1, 2.5, 5, 10, 25, 50, 100, 250 and 500 ms, 1, 2.5, 5 and 10 s,
    /// and a last one counts everything slower.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 17))]
    pub buckets: Vec<LatencyBucket>,
}

/// Exchanges that took at most `upToMicros` (and more than the bucket before).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencyBucket {
    /// The bucket's upper bound in microseconds; absent for the last bucket (slower than 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to_micros: Option<u64>,
    pub count: u64,
}

/// Responses with one status code.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusCount {
    pub code: u16,
    pub count: u64,
}
