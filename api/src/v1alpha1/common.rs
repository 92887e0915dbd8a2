//! Types that ApiMonitor and ApiPolicy share: selectors, status building blocks.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Most per-node entries kept in a status; the rest are counted, not listed (see README: "Status at scale").
pub const MAX_NODE_DETAILS: usize = 16;
/// Most errors kept per node entry.
pub const MAX_ERRORS_PER_NODE: usize = 5;

/// CEL rules that make a `LabelSelector` as strict as Kubernetes' own validation of selectors.
pub(crate) const SELECTOR_OPERATOR_RULE: &str = "!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'])";
pub(crate) const SELECTOR_OPERATOR_MESSAGE: &str =
    "matchExpressions[].operator must be one of In, NotIn, Exists, DoesNotExist";
pub(crate) const SELECTOR_VALUES_RULE: &str = "!has(self.matchExpressions) || self.matchExpressions.all(e, (e.operator in ['In', 'NotIn']) == (has(e.values) && size(e.values) > 0))";
pub(crate) const SELECTOR_VALUES_MESSAGE: &str =
    "matchExpressions[].values must be non-empty for In and NotIn, and empty for Exists and DoesNotExist";

/// Condition types every Palisade status carries.
pub mod condition {
    /// The object's configuration is applied on every node that should run it.
    pub const READY: &str = "Ready";
    /// Something is applied only in part, or failed: the reason and message say what and where.
    pub const DEGRADED: &str = "Degraded";
}

/// What one node did with an object, as its agent last reported it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeState {
    /// Node name.
    pub node: String,
    /// Version of the node configuration the agent has applied (0: none yet).
    pub config_version: u64,
    /// Whether the node applies this object's current generation.
    pub in_sync: bool,
    /// Workloads (pods) on this node that the object selects.
    pub workloads: u32,
    /// Capture probes attached on this node for the object (two per pod: ingress and egress).
    pub probes_attached: u32,
    /// Errors on this node, each with the kernel's or the agent's reason (at most 5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Kernel features this node lacks, with the reason (for example "kprobe: CONFIG_KPROBES unset").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_features: Vec<String>,
    /// Capture records the kernel could not deliver on this node (ring buffer full), since the agent started.
    #[serde(default)]
    pub records_lost: u64,
    /// Messages the agent's parser had to drop on this node (limits, malformed traffic), since the agent started.
    #[serde(default)]
    pub messages_dropped: u64,
}

/// A bounded account of the nodes that run an object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSummary {
    /// Nodes that host at least one selected workload.
    pub total: u32,
    /// Of those, nodes whose agent applied the current generation without error.
    pub ready: u32,
    /// Of those, nodes that report errors or have not applied the current generation.
    pub degraded: u32,
    /// Capture records lost by the kernel, summed over all these nodes.
    #[serde(default)]
    pub records_lost: u64,
    /// Messages dropped by the agents' parsers, summed over all these nodes.
    #[serde(default)]
    pub messages_dropped: u64,
    /// Per-node detail for at most 16 nodes, nodes with errors first; `total` counts them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<NodeState>,
}

/// Status fields shared by both kinds; flattened into each status.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommonStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and `Degraded`, each tied to `observedGeneration`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Per-node account of what was applied and what failed.
    #[serde(default)]
    pub nodes: NodeSummary,
}

/// Severity of a finding, lowest first.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Severity> {
        match s {
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

/// Whether a label selector matches a set of labels (the Kubernetes semantics; an empty selector
/// matches everything).
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    if let Some(match_labels) = &selector.match_labels {
        if !match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            // Admission rejects other operators; one that slips through matches nothing.
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selector_semantics_follow_kubernetes() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "demo")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        assert!(selector_matches(&sel, &labels(&[("app", "demo")])));
        assert!(selector_matches(
            &sel,
            &labels(&[("app", "demo"), ("tier", "web")])
        ));
        assert!(!selector_matches(
            &sel,
            &labels(&[("app", "demo"), ("tier", "db")])
        ));
        assert!(!selector_matches(&sel, &labels(&[("app", "other")])));
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
        let bad = LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: "Like".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(!selector_matches(&bad, &labels(&[("app", "demo")])));
    }
}
