//! `PolicyReport` (`wgpolicyk8s.io/v1alpha2`), the report format of the Kubernetes Policy
//! working group that Kyverno, Falco's policy-reporter, Trivy and others read and write.
//!
//! Palisade does not own this API: these types are written from the upstream schema
//! (kubernetes-sigs/wg-policy-prototypes, `policy-report/crd/v1alpha2`) so that the operator is
//! typed, and so that the CRD the chart can install (`crds/optional/`) accepts what Kyverno's
//! does. The object has no `spec`: results and summary sit at the top level (`no_spec`).

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The API group and version of [`PolicyReport`].
pub const API_VERSION: &str = "wgpolicyk8s.io/v1alpha2";

/// A report of policy results for objects of one namespace.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "wgpolicyk8s.io",
    version = "v1alpha2",
    kind = "PolicyReport",
    plural = "policyreports",
    namespaced,
    no_spec,
    shortname = "polr",
    doc = "PolicyReport is the Schema for the policyreports API",
    // The chart installs this CRD as a template (it may already exist, from Kyverno): keep it,
    // and every report in it, when the release is uninstalled.
    annotation("helm.sh/resource-policy", "keep"),
    printcolumn(name = "Kind", type_ = "string", json_path = ".scope.kind", priority = "1"),
    printcolumn(name = "Name", type_ = "string", json_path = ".scope.name", priority = "1"),
    printcolumn(name = "Pass", type_ = "integer", json_path = ".summary.pass"),
    printcolumn(name = "Fail", type_ = "integer", json_path = ".summary.fail"),
    printcolumn(name = "Warn", type_ = "integer", json_path = ".summary.warn"),
    printcolumn(name = "Error", type_ = "integer", json_path = ".summary.error"),
    printcolumn(name = "Skip", type_ = "integer", json_path = ".summary.skip"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReportContent {
    /// Scope is an optional reference to the report scope (e.g. a Deployment, Namespace, or Node)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ObjectReference>,

    /// ScopeSelector is an optional selector for multiple scopes (e.g. Pods). Either one of, or
    /// none of, but not both of, Scope or ScopeSelector should be specified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_selector: Option<LabelSelector>,

    /// PolicyReportSummary provides a summary of results
    #[serde(default)]
    pub summary: PolicyReportSummary,

    /// PolicyReportResult provides result details
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<PolicyReportResult>,
}

/// PolicyReportSummary provides a status count summary
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PolicyReportSummary {
    /// Pass provides the count of policies whose requirements were met
    #[serde(default)]
    pub pass: i64,
    /// Fail provides the count of policies whose requirements were not met
    #[serde(default)]
    pub fail: i64,
    /// Warn provides the count of non-scored policies whose requirements were not met
    #[serde(default)]
    pub warn: i64,
    /// Error provides the count of policies that could not be evaluated
    #[serde(default)]
    pub error: i64,
    /// Skip indicates the count of policies that were not selected for evaluation
    #[serde(default)]
    pub skip: i64,
}

impl PolicyReportSummary {
    /// Counts `results` by outcome.
    pub fn of(results: &[PolicyReportResult]) -> PolicyReportSummary {
        let mut s = PolicyReportSummary::default();
        for r in results {
            match r.result {
                Some(PolicyResult::Pass) => s.pass += 1,
                Some(PolicyResult::Fail) => s.fail += 1,
                Some(PolicyResult::Warn) => s.warn += 1,
                Some(PolicyResult::Error) => s.error += 1,
                Some(PolicyResult::Skip) => s.skip += 1,
                None => {}
            }
        }
        s
    }
}

/// The outcome of a policy rule: pass (requirements met), fail (not met), warn (not met, not
/// scored), error (could not be evaluated), skip (not selected).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyResult {
    Pass,
    Fail,
    Warn,
    Error,
    Skip,
}

/// How critical a result is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PolicyResultSeverity {
    Critical,
    High,
    Low,
    Medium,
    Info,
}

/// A point in time as seconds and nanoseconds since the Unix epoch (`metav1.Timestamp`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Timestamp {
    /// Represents seconds of UTC time since Unix epoch 1970-01-01T00:00:00Z.
    pub seconds: i64,
    /// Non-negative fractions of a second at nanosecond resolution (0 to 999,999,999).
    pub nanos: i32,
}

impl Timestamp {
    /// The timestamp of `ms` milliseconds since the Unix epoch.
    pub fn from_unix_ms(ms: i64) -> Timestamp {
        Timestamp {
            seconds: ms.div_euclid(1000),
            nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_ms(&self) -> i64 {
        self.seconds * 1000 + i64::from(self.nanos) / 1_000_000
    }
}

/// PolicyReportResult provides the result for an individual policy
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReportResult {
    /// Source is an identifier for the policy engine that manages this report
    #[serde(default)]
    pub source: String,

    /// Policy is the name or identifier of the policy
    pub policy: String,

    /// Rule is the name or identifier of the rule within the policy
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rule: String,

    /// Category indicates policy category
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub category: String,

    /// Severity indicates policy check result criticality
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<PolicyResultSeverity>,

    /// Timestamp indicates the time the result was found
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,

    /// Result indicates the outcome of the policy rule execution
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<PolicyResult>,

    /// Scored indicates if this result is scored
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scored: bool,

    /// Subjects is an optional reference to the checked Kubernetes resources
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ObjectReference>,

    /// SubjectSelector is an optional label selector for checked Kubernetes resources. Either a
    /// Subject or a SubjectSelector can be specified. If neither are provided, the result is
    /// assumed to be for the policy report scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_selector: Option<LabelSelector>,

    /// Description is a short user friendly message for the policy rule
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,

    /// Properties provides additional information for the policy rule
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// The CRD of [`PolicyReport`] as the chart ships it: the derived one, with the schema made to
/// behave like upstream's, which has no defaults and no nullable fields (a defaulted field would
/// change what other tools read back from their own reports), and `listKind` spelt out.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = PolicyReport::crd();
    crd.spec.names.list_kind = Some("PolicyReportList".into());
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            if let Ok(mut value) = serde_json::to_value(&*schema) {
                strip_defaults_and_nulls(&mut value);
                if let Ok(stripped) = serde_json::from_value(value) {
                    *schema = stripped;
                }
            }
        }
    }
    crd
}

fn strip_defaults_and_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("default");
            map.remove("nullable");
            map.remove("title");
            if let Some(serde_json::Value::Array(values)) = map.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
            for (key, child) in map.iter_mut() {
                // Names of properties are data, not keywords: descend into their schemas only.
                if key == "properties" {
                    if let serde_json::Value::Object(props) = child {
                        props.values_mut().for_each(strip_defaults_and_nulls);
                    }
                } else {
                    strip_defaults_and_nulls(child);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_defaults_and_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_has_the_upstream_shape() {
        let crd = crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("policyreports.wgpolicyk8s.io"));
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.names.short_names, Some(vec!["polr".to_string()]));
        assert_eq!(crd.spec.names.list_kind.as_deref(), Some("PolicyReportList"));
        let version = &crd.spec.versions[0];
        assert_eq!(
            (version.name.as_str(), version.served, version.storage),
            ("v1alpha2", true, true)
        );
        let schema = serde_json::to_value(
            version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref()),
        )
        .unwrap_or_default();
        let keys = |pointer: &str| -> Vec<String> {
            let mut k: Vec<String> = schema
                .pointer(pointer)
                .and_then(|p| p.as_object())
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            k.sort();
            k
        };
        // The upstream v1alpha2 fields, no more, no fewer: what Kyverno's CRD accepts, ours does.
        assert_eq!(
            keys("/properties"),
            ["results", "scope", "scopeSelector", "summary"]
        );
        let text = serde_json::to_string(&schema).unwrap_or_default();
        for absent in ["\"default\"", "\"nullable\"", "null]", "null,"] {
            assert!(!text.contains(absent), "{absent} in the schema: {text}");
        }
        assert_eq!(
            keys("/properties/results/items/properties"),
            [
                "category",
                "message",
                "policy",
                "properties",
                "resourceSelector",
                "resources",
                "result",
                "rule",
                "scored",
                "severity",
                "source",
                "timestamp"
            ]
        );
        assert_eq!(
            schema.pointer("/properties/results/items/required"),
            Some(&serde_json::json!(["policy"]))
        );
        assert_eq!(
            keys("/properties/summary/properties"),
            ["error", "fail", "pass", "skip", "warn"]
        );
        let enum_of = |pointer: &str| {
            let mut v: Vec<String> = schema
                .pointer(pointer)
                .and_then(|e| e.as_array())
                .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                .unwrap_or_default();
            v.sort();
            v
        };
        assert_eq!(
            enum_of("/properties/results/items/properties/result/enum"),
            ["error", "fail", "pass", "skip", "warn"]
        );
        assert_eq!(
            enum_of("/properties/results/items/properties/severity/enum"),
            ["critical", "high", "info", "low", "medium"]
        );
        assert_eq!(
            keys("/properties/results/items/properties/timestamp/properties"),
            ["nanos", "seconds"]
        );
    }

    #[test]
    fn results_and_summary_serialize_as_upstream_names_them() {
        let report = PolicyReport::new(
            "r",
            PolicyReportContent {
                results: vec![PolicyReportResult {
                    source: "palisade".into(),
                    policy: "demo/guard".into(),
                    rule: "sqli".into(),
                    severity: Some(PolicyResultSeverity::High),
                    result: Some(PolicyResult::Fail),
                    timestamp: Some(Timestamp::from_unix_ms(1_700_000_000_123)),
                    scored: true,
                    ..Default::default()
                }],
                summary: PolicyReportSummary {
                    fail: 1,
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        let json = serde_json::to_value(&report).unwrap_or_default();
        assert_eq!(json["apiVersion"], "wgpolicyk8s.io/v1alpha2");
        assert!(json.get("spec").is_none(), "{json}");
        assert_eq!(json["summary"]["fail"], 1);
        assert_eq!(json["results"][0]["result"], "fail");
        assert_eq!(json["results"][0]["severity"], "high");
        assert_eq!(
            json["results"][0]["timestamp"],
            serde_json::json!({"seconds": 1_700_000_000i64, "nanos": 123_000_000})
        );
        assert_eq!(
            Timestamp::from_unix_ms(1_700_000_000_123).unix_ms(),
            1_700_000_000_123
        );
    }
}
