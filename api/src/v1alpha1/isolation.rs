//! `ApiIsolation`: quarantine a workload by hand (`kubectl apply`), and release it (`kubectl
//! delete`, or `spec.released: true` when the object lives in git).

use super::common::{
    CommonStatus, SELECTOR_OPERATOR_MESSAGE, SELECTOR_OPERATOR_RULE, SELECTOR_VALUES_MESSAGE,
    SELECTOR_VALUES_RULE,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most pods listed in an ApiIsolation's status (all are counted).
pub const MAX_ISOLATED_PODS_IN_STATUS: usize = 20;

/// CEL: every allow-list entry is a CIDR, not wider than /8 (IPv4) or /32 (IPv6).
const CIDRS_RULE: &str = "self.all(c, isCIDR(c) && (cidr(c).ip().family() == 4 ? cidr(c).prefixLength() >= 8 : cidr(c).prefixLength() >= 32))";
const CIDR_MESSAGE: &str = "must be a CIDR such as 10.8.0.0/16, no wider than /8 for IPv4 or /32 for IPv6: a wider range would let most of the network in and the isolation would protect nothing";

/// Isolates the selected pods of this namespace: they accept new inbound connections only from
/// the allow-list (same-namespace pods, named CIDRs, the node's own addresses for health probes)
/// and, with `denyEgress`, open new connections only to it. Established connections, DNS and
/// ICMP pass. Enforced in the kernel on every node that runs a selected pod, until `ttl` passes
/// (counted from the object's creation), `released` is set, or the object is deleted.
///
/// Pods whose isolation would cut the node off from the API server, or the agents off from the
/// operator (host-network pods, the control plane's pods, Palisade's own), are refused.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "ApiIsolation",
    namespaced,
    status = "ApiIsolationStatus",
    shortname = "apiiso",
    category = "palisade",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Pods", type_ = "integer", json_path = ".status.isolatedPods"),
    printcolumn(name = "Expires", type_ = "date", json_path = ".status.expires"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ApiIsolationSpec {
    /// Pods of this namespace to isolate.
    #[x_kube(validation = Rule::new(SELECTOR_OPERATOR_RULE).message(SELECTOR_OPERATOR_MESSAGE))]
    #[x_kube(validation = Rule::new(SELECTOR_VALUES_RULE).message(SELECTOR_VALUES_MESSAGE))]
    #[x_kube(validation = Rule::new("has(self.matchLabels) || has(self.matchExpressions)").message("workloadSelector must not be empty: isolating every pod of the namespace is refused"))]
    pub workload_selector: LabelSelector,

    /// How long the isolation lasts from the object's creation: a positive duration such as 10m
    /// or 2h (at most 720h). Unset: until released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('720h')").message("ttl must be more than 0s and at most 720h"))]
    pub ttl: Option<String>,

    /// Ends the isolation while keeping the object (for isolations kept in git).
    #[serde(default)]
    pub released: bool,

    /// Who may still connect.
    #[serde(default)]
    pub allow: IsolationAllow,

    /// Also deny new outbound connections to anything outside the allow-list (DNS still passes).
    #[serde(default)]
    pub deny_egress: bool,
}

/// The allow-list of an isolation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct IsolationAllow {
    /// Pods of the same namespace may still connect. Default: true.
    #[serde(default = "yes")]
    pub same_namespace: bool,
    /// The node's own addresses (kubelet health probes) may still connect. Default: true.
    #[serde(default = "yes")]
    pub node_probes: bool,
    /// Further networks that may still connect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 3, max = 64)))]
    #[x_kube(validation = Rule::new(CIDRS_RULE).message(CIDR_MESSAGE))]
    pub cidrs: Vec<String>,
}

fn yes() -> bool {
    true
}

impl Default for IsolationAllow {
    fn default() -> Self {
        IsolationAllow {
            same_namespace: true,
            node_probes: true,
            cidrs: vec![],
        }
    }
}

/// Where the isolation is enforced.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiIsolationStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// `Pending` (not enforced yet), `Active`, `Expired`, `Released` or `Refused`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub phase: String,
    /// Pods isolated in the kernel now, all nodes.
    #[serde(default)]
    pub isolated_pods: u32,
    /// When the isolation ends (unset: until released).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,
    /// The selected pods (at most 20), failures first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<IsolatedPodStatus>,
}

/// One selected pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IsolatedPodStatus {
    pub pod: String,
    pub node: String,
    /// `Isolated`, `Adopted` (still enforced across an agent restart), `Pending` or `Failed`.
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Inbound packets the kernel dropped (a lower bound).
    #[serde(default)]
    pub dropped_inbound: u64,
    /// Outbound packets the kernel dropped (a lower bound).
    #[serde(default)]
    pub dropped_outbound: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}
