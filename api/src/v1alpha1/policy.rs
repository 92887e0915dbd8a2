//! `ApiPolicy`: what to detect in monitored traffic and what to do about it.

use super::common::{
    CommonStatus, Severity, SELECTOR_OPERATOR_MESSAGE, SELECTOR_OPERATOR_RULE, SELECTOR_VALUES_MESSAGE,
    SELECTOR_VALUES_RULE,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Hard cap on findings kept in status, whatever `limits.findingsInStatus` asks.
pub const MAX_FINDINGS_IN_STATUS: usize = 50;

/// Detect attacks on the APIs that ApiMonitors watch, and respond: alert, block the source, or
/// isolate the workload.
///
/// Findings are counted exactly in status (by rule and severity, with the most recent ones and
/// redacted evidence) and raised as aggregated, rate-limited Warning Events on the policy and the pod.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "ApiPolicy",
    namespaced,
    status = "ApiPolicyStatus",
    shortname = "apipol",
    category = "palisade",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Findings", type_ = "integer", json_path = ".status.findings.total"),
    printcolumn(
        name = "Last Finding",
        type_ = "date",
        json_path = ".status.findings.lastFindingTime"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ApiPolicySpec {
    /// Names of ApiMonitors in this namespace whose traffic this policy inspects. Empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)), extend("x-kubernetes-list-type" = "set"))]
    pub monitors: Vec<String>,

    /// Narrows the policy to monitored pods with these labels. Unset: every monitored pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(SELECTOR_OPERATOR_RULE).message(SELECTOR_OPERATOR_MESSAGE))]
    #[x_kube(validation = Rule::new(SELECTOR_VALUES_RULE).message(SELECTOR_VALUES_MESSAGE))]
    pub workload_selector: Option<LabelSelector>,

    /// `audit` records what the actions would have done; `enforce` does it.
    #[serde(default)]
    pub mode: PolicyMode,

    /// Detection rules. Rule names are unique.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub rules: Vec<PolicyRule>,

    /// Actions for rules that name none. Default: alert.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub default_actions: Vec<PolicyAction>,

    /// Bounds on what the policy writes.
    #[serde(default)]
    pub limits: PolicyLimits,
}

/// Whether actions are carried out.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PolicyMode {
    /// Detect and record; actions are counted as "would have" only.
    #[default]
    Audit,
    /// Detect and act.
    Enforce,
}

impl PolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Audit => "audit",
            PolicyMode::Enforce => "enforce",
        }
    }
}

/// One detection rule: a built-in detector or a custom match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.detector) != has(self.match)").message("a rule sets exactly one of detector or match"))]
pub struct PolicyRule {
    /// Rule name, unique in the policy; findings and Events carry it.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// A built-in detector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<Detector>,
    /// Detector parameters (see the README's detector table); unknown keys are reported in status.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub params: BTreeMap<String, String>,
    /// A custom match on the request.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<RequestMatch>,
    /// Severity of findings from this rule. Default: the detector's own (high for injections, medium otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
    /// What to do on a finding. Default: the policy's defaultActions, else alert.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    pub actions: Vec<PolicyAction>,
}

/// Built-in detectors.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Detector {
    /// `../` and its encodings in the path or query.
    PathTraversal,
    SqlInjection,
    Xss,
    CommandInjection,
    /// Internal and cloud-metadata addresses in parameters.
    Ssrf,
    /// JNDI lookups (log4shell) anywhere in the request.
    JndiInjection,
    /// MongoDB query operators where a value belongs (`user[$ne]=x`, `{"code": {"$ne": 1}}`) and
    /// `$where` JavaScript.
    NosqlInjection,
    /// Bursts of 401/403 per source on a login endpoint.
    BruteForce,
    /// Requests without credentials to endpoints that normally carry them.
    MissingAuth,
    /// One source touching many object IDs of one endpoint (BOLA / enumeration).
    Bola,
    /// PII and secrets in responses.
    DataExposure,
    RateAbuse,
    /// Traffic to endpoints absent from (shadow) or deprecated in (zombie) the monitor's OpenAPI document.
    ShadowEndpoint,
}

impl Detector {
    /// The name used on the wire and in findings (the CRD's spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::PathTraversal => "pathTraversal",
            Detector::SqlInjection => "sqlInjection",
            Detector::Xss => "xss",
            Detector::CommandInjection => "commandInjection",
            Detector::Ssrf => "ssrf",
            Detector::JndiInjection => "jndiInjection",
            Detector::NosqlInjection => "nosqlInjection",
            Detector::BruteForce => "bruteForce",
            Detector::MissingAuth => "missingAuth",
            Detector::Bola => "bola",
            Detector::DataExposure => "dataExposure",
            Detector::RateAbuse => "rateAbuse",
            Detector::ShadowEndpoint => "shadowEndpoint",
        }
    }

    /// Severity when the rule sets none.
    pub fn default_severity(self) -> Severity {
        match self {
            Detector::PathTraversal
            | Detector::SqlInjection
            | Detector::CommandInjection
            | Detector::JndiInjection
            | Detector::NosqlInjection
            | Detector::Ssrf => Severity::High,
            Detector::Xss | Detector::Bola | Detector::BruteForce | Detector::DataExposure => {
                Severity::Medium
            }
            Detector::MissingAuth | Detector::RateAbuse | Detector::ShadowEndpoint => Severity::Low,
        }
    }
}

/// A custom match; every field that is set must match.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.methods) || has(self.path) || has(self.headers) || has(self.query) || has(self.body)").message("match needs at least one of methods, path, headers, query, body"))]
pub struct RequestMatch {
    /// HTTP methods (upper case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16), inner(regex(pattern = r"^[A-Z]+$")))]
    pub methods: Option<Vec<String>>,
    /// Match on the URL path (decoded, without the query).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    /// Match on request headers, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 16))]
    pub headers: Option<Vec<HeaderMatch>>,
    /// Match on the decoded query string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<StringMatch>,
    /// Match on the request body (as captured, after decoding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<StringMatch>,
}

/// Exactly one of exact, contains, regex.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.exact) ? 1 : 0) + (has(self.contains) ? 1 : 0) + (has(self.regex) ? 1 : 0) == 1").message("set exactly one of exact, contains, regex"))]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub contains: Option<String>,
    /// RE2 syntax; an invalid expression becomes a condition on the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub regex: Option<String>,
}

/// A header name and how its value must match.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    #[serde(flatten)]
    pub value: StringMatch,
}

/// What to do on a finding.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'alert' || has(self.ttl)").message("blockSource and isolate need a ttl (an ApiIsolation isolates until released)").field_path(".ttl"))]
#[x_kube(validation = Rule::new("self.type != 'alert' || !has(self.ttl)").message("alert takes no ttl").field_path(".ttl"))]
#[x_kube(validation = Rule::new("self.type == 'isolate' || (!has(self.allow) && !has(self.denyEgress))").message("allow and denyEgress are for isolate only"))]
pub struct PolicyAction {
    /// `alert` records the finding; `blockSource` drops the source's traffic to the workload for
    /// `ttl`; `isolate` quarantines the attacked pod for `ttl`: new inbound connections only from
    /// `allow`, and with `denyEgress` new outbound ones only to it.
    #[serde(rename = "type")]
    pub type_: ActionType,
    /// How long the action lasts: a positive duration such as 30s, 10m or 1h (at most 168h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('168h')").message("ttl must be more than 0s and at most 168h"))]
    pub ttl: Option<String>,
    /// `isolate`: who may still connect (default: same namespace and the node's probes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<super::IsolationAllow>,
    /// `isolate`: also deny new outbound connections outside the allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_egress: Option<bool>,
}

/// Action kinds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ActionType {
    Alert,
    BlockSource,
    Isolate,
}

/// Bounds on the Events and status a policy produces, whatever the attack volume. Counts stay exact.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyLimits {
    /// Most Warning Events per minute for this policy (each aggregates many findings).
    #[serde(default = "default_events_per_minute")]
    #[schemars(range(min = 1, max = 600))]
    pub events_per_minute: i32,
    /// Most recent findings listed in status (counts cover all).
    #[serde(default = "default_findings_in_status")]
    #[schemars(range(min = 0, max = 50))]
    pub findings_in_status: i32,
}

impl Default for PolicyLimits {
    fn default() -> Self {
        PolicyLimits {
            events_per_minute: default_events_per_minute(),
            findings_in_status: default_findings_in_status(),
        }
    }
}

fn default_events_per_minute() -> i32 {
    12
}
fn default_findings_in_status() -> i32 {
    10
}

/// What the policy found and where it is applied.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiPolicyStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Monitored pods the policy applies to, on all nodes.
    #[serde(default)]
    pub matched_pods: u32,
    /// Findings, counted exactly, with the most recent ones listed.
    #[serde(default)]
    pub findings: FindingsSummary,
    /// Actions taken (enforce mode) or that would have been (audit mode): blocks in force and
    /// the latest ended ones.
    #[serde(default)]
    pub actions: ActionsSummary,
}

/// Bounded summary of actions.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionsSummary {
    /// Sources whose traffic the kernel drops now, all nodes.
    #[serde(default)]
    pub blocked_sources: u32,
    /// Sources that would be blocked now if the policy enforced (audit mode).
    #[serde(default)]
    pub would_block_sources: u32,
    /// Pods isolated now by this policy's `isolate` actions, all nodes.
    #[serde(default)]
    pub isolated_pods: u32,
    /// Pods that would be isolated now if the policy enforced (audit mode).
    #[serde(default)]
    pub would_isolate_pods: u32,
    /// Actions in force first, then the most recently ended, at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ActionStatus>,
}

/// One action on one source for one pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActionStatus {
    /// `blockSource` or `isolate`.
    pub action: String,
    pub rule: String,
    pub source: String,
    /// namespace/name of the protected pod.
    pub pod: String,
    pub node: String,
    /// `Enforced` (in the kernel), `Audit` (would have been) or `Failed`.
    pub mode: String,
    /// `Active` or `Ended`, and how: started, adopted (after an agent restart), expired, released, failed.
    pub state: String,
    pub last_change: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,
    /// Packets dropped by the block, as of its end (a lower bound).
    #[serde(default)]
    pub dropped_packets: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub since: Time,
}

/// Bounded summary of findings.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FindingsSummary {
    /// Malicious requests found, all rules.
    pub total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_finding_time: Option<Time>,
    /// Counts per rule (one entry per rule that fired).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_rule: Vec<RuleCount>,
    /// The most recent findings, newest first, evidence redacted on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent: Vec<FindingRecord>,
}

/// Findings of one rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleCount {
    pub rule: String,
    pub severity: Severity,
    pub count: u64,
}

/// One aggregated finding: a rule, a source and an endpoint within a window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FindingRecord {
    pub rule: String,
    pub detector: String,
    pub severity: Severity,
    /// Requests this record aggregates.
    pub count: u64,
    /// Source address of the requests.
    pub source: String,
    /// The pod that sent them (`namespace/name`), when the source is a pod of this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_pod: Option<String>,
    /// `east-west` (the source is inside the cluster's pod networks) or `north-south`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traffic: String,
    /// Pod that received them (`namespace/name`).
    pub pod: String,
    pub node: String,
    /// `METHOD /path/template`.
    pub endpoint: String,
    /// What matched, redacted and cut to 256 bytes.
    pub evidence: String,
    pub first_seen: Time,
    pub last_seen: Time,
}
