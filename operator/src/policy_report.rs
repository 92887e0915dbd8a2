//! Findings as Kubernetes Policy WG reports (`wgpolicyk8s.io/v1alpha2` PolicyReport), the format
//! Kyverno, Falco's policy-reporter and other tools read, so that Palisade's findings appear in
//! the dashboards and alerts a platform team already runs on them.
//!
//! One PolicyReport per ApiPolicy, in the policy's namespace (where every pod it watches lives),
//! named `palisade-<policy>` and owned by the policy, so it is garbage-collected with it. One
//! result per (rule, pod) with the count, first and last seen, and the last redacted evidence;
//! at most [`MAX_RESULTS`], the least recently seen dropped first. Written only when the CRD is
//! served (probed at start, again every `probe_interval` while it is not, and whenever a write
//! says it went away), by server-side apply, at most once per `interval` per report and only
//! when its content changed.

use crate::monitor_controller::FIELD_MANAGER;
use crate::state::{obj_key, Hub, ObjectKey};
use crate::throttle::WriteThrottle;
use crate::Error;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use palisade_api::agent;
use palisade_api::policy_report::{
    PolicyReport, PolicyReportContent, PolicyReportResult, PolicyReportSummary, PolicyResult,
    PolicyResultSeverity, Timestamp, API_VERSION,
};
use palisade_api::v1alpha1::ApiPolicy;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// `source` of every result Palisade writes.
pub const SOURCE: &str = "palisade";
/// Most results in one report (one per rule and pod): about 1 KiB each, far below the object
/// size limit, and more than a dashboard shows at once.
pub const MAX_RESULTS: usize = 100;
/// Longest evidence kept in a result's properties (it is already redacted on the node).
pub const MAX_EVIDENCE_CHARS: usize = 256;
/// Annotation counting the (rule, pod) pairs dropped to stay within [`MAX_RESULTS`].
pub const EVICTED_ANNOTATION: &str = "palisade.dev/results-evicted";
/// Label naming the ApiPolicy a report belongs to.
pub const POLICY_LABEL: &str = "palisade.dev/policy";

/// One result's identity: (rule, pod namespace, pod name).
pub type TargetKey = (String, String, String);

/// Findings of one rule on one pod, accumulated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetFindings {
    pub detector: String,
    pub severity: String,
    pub count: u64,
    pub first_seen_unix_ms: i64,
    pub last_seen_unix_ms: i64,
    pub node: String,
    pub last_source: String,
    pub last_endpoint: String,
    pub last_evidence: String,
    pub traffic: String,
}

/// What a policy's report is made of, kept in the operator's state beside the status counts.
#[derive(Clone, Debug, Default)]
pub struct ReportTally {
    pub targets: BTreeMap<TargetKey, TargetFindings>,
    /// Targets dropped to stay within [`MAX_RESULTS`].
    pub evicted: u64,
    /// Whether the report on the cluster was read back (once per operator process).
    pub seeded: bool,
    /// Fingerprint of the report last written (or found up to date).
    pub written: Option<u64>,
}

impl ReportTally {
    /// Adds one finding (a delta from an agent on `node`).
    pub fn add(&mut self, node: &str, f: &agent::Finding) {
        let key = (f.rule.clone(), f.pod_namespace.clone(), f.pod_name.clone());
        self.make_room_for(&key);
        let t = self.targets.entry(key).or_default();
        t.count += f.count;
        t.detector = f.detector.clone();
        t.severity = f.severity.clone();
        if t.first_seen_unix_ms == 0
            || (f.first_seen_unix_ms > 0 && f.first_seen_unix_ms < t.first_seen_unix_ms)
        {
            t.first_seen_unix_ms = f.first_seen_unix_ms;
        }
        if f.last_seen_unix_ms >= t.last_seen_unix_ms {
            t.last_seen_unix_ms = f.last_seen_unix_ms;
            t.node = node.to_string();
            t.last_source = f.source.clone();
            t.last_endpoint = format!("{} {}", f.method, f.path).trim().to_string();
            t.last_evidence = truncate_chars(&f.evidence, MAX_EVIDENCE_CHARS);
            t.traffic = f.traffic.clone();
        }
    }

    /// Takes over the results a previous operator wrote, adding them to what arrived since.
    pub fn seed(&mut self, report: &PolicyReport) {
        self.seeded = true;
        self.evicted += report
            .annotations()
            .get(EVICTED_ANNOTATION)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        for r in report.spec.results.iter().filter(|r| r.source == SOURCE) {
            let Some((ns, pod)) = r.properties.get("target").and_then(|t| t.split_once('/')) else {
                continue;
            };
            let Some(count) = r.properties.get("count").and_then(|c| c.parse::<u64>().ok()) else {
                continue;
            };
            let key = (r.rule.clone(), ns.to_string(), pod.to_string());
            let prop = |name: &str| r.properties.get(name).cloned().unwrap_or_default();
            let seen = |name: &str| {
                r.properties
                    .get(name)
                    .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                    .map(|t| t.as_millisecond())
                    .unwrap_or(0)
            };
            if !self.targets.contains_key(&key) {
                self.make_room_for(&key);
            }
            let t = self.targets.entry(key).or_default();
            t.count += count;
            let first = seen("firstSeen");
            if t.first_seen_unix_ms == 0 || (first > 0 && first < t.first_seen_unix_ms) {
                t.first_seen_unix_ms = first;
            }
            let last = r.timestamp.map(|ts| ts.unix_ms()).unwrap_or(0);
            if t.detector.is_empty() {
                t.detector = prop("detector");
                t.severity = r.severity.map(severity_name).unwrap_or_default().to_string();
            }
            if last > t.last_seen_unix_ms {
                t.last_seen_unix_ms = last;
                t.node = prop("node");
                t.last_source = prop("lastSource");
                t.last_endpoint = prop("lastEndpoint");
                t.last_evidence = prop("evidence");
                t.traffic = prop("traffic");
            }
        }
    }

    /// Drops the least recently seen target while a new `key` would exceed [`MAX_RESULTS`].
    fn make_room_for(&mut self, key: &TargetKey) {
        if self.targets.contains_key(key) {
            return;
        }
        while self.targets.len() >= MAX_RESULTS {
            let Some(oldest) = self
                .targets
                .iter()
                .min_by_key(|(k, t)| (t.last_seen_unix_ms, *k))
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            self.targets.remove(&oldest);
            self.evicted += 1;
        }
    }
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// The wg-policy severity of a Palisade severity; one this operator does not know (from a newer
/// agent) is `info`, not a guess.
pub fn severity(s: &str) -> PolicyResultSeverity {
    match s {
        "critical" => PolicyResultSeverity::Critical,
        "high" => PolicyResultSeverity::High,
        "medium" => PolicyResultSeverity::Medium,
        "low" => PolicyResultSeverity::Low,
        _ => PolicyResultSeverity::Info,
    }
}

fn severity_name(s: PolicyResultSeverity) -> &'static str {
    match s {
        PolicyResultSeverity::Critical => "critical",
        PolicyResultSeverity::High => "high",
        PolicyResultSeverity::Medium => "medium",
        PolicyResultSeverity::Low => "low",
        PolicyResultSeverity::Info => "info",
    }
}

fn rfc3339(ms: i64) -> String {
    crate::state::unix_ms_to_time(ms).0.to_string()
}

/// The report's name: `palisade-<policy>`, shortened with a hash suffix past 253 characters.
pub fn report_name(policy_name: &str) -> String {
    let name = format!("palisade-{policy_name}");
    if name.len() <= 253 {
        return name;
    }
    // FNV-1a: stable across processes and Rust versions.
    let hash = policy_name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut cut = 253 - 17;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}-{hash:016x}", name[..cut].trim_end_matches(['-', '.']))
}

/// The results of a policy's report: one `fail` per (rule, pod), sorted by rule and pod, at most
/// [`MAX_RESULTS`]. `pod_uid` finds a pod's UID (for tools that link results to objects by it).
pub fn results(
    policy: &ApiPolicy,
    tally: &ReportTally,
    pod_uid: impl Fn(&str, &str) -> Option<String>,
) -> Vec<PolicyReportResult> {
    let mode = policy.spec.mode.as_str();
    tally
        .targets
        .iter()
        .take(MAX_RESULTS)
        .map(|((rule, ns, pod), t)| {
            // Findings about no single pod (capture losses) name the node instead.
            let is_pod = !pod.starts_with('(') && !pod.is_empty();
            let resource = if is_pod {
                ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    namespace: Some(ns.clone()),
                    name: Some(pod.clone()),
                    uid: pod_uid(ns, pod),
                    ..Default::default()
                }
            } else {
                ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(t.node.clone()),
                    ..Default::default()
                }
            };
            let detector = if t.detector.is_empty() {
                "custom"
            } else {
                t.detector.as_str()
            };
            let what = if is_pod {
                format!("pod {ns}/{pod}")
            } else {
                pod.clone()
            };
            let mut message = format!(
                "{} requests flagged by rule {rule} ({detector}) on {what}; last {}from {} at {}",
                t.count,
                if t.last_endpoint.is_empty() {
                    String::new()
                } else {
                    format!("{} ", t.last_endpoint)
                },
                t.last_source,
                rfc3339(t.last_seen_unix_ms),
            );
            message = truncate_chars(&message, 512);
            let mut properties = BTreeMap::from([
                ("count".to_string(), t.count.to_string()),
                ("detector".to_string(), detector.to_string()),
                ("firstSeen".to_string(), rfc3339(t.first_seen_unix_ms)),
                ("lastSeen".to_string(), rfc3339(t.last_seen_unix_ms)),
                ("lastSource".to_string(), t.last_source.clone()),
                ("mode".to_string(), mode.to_string()),
                ("node".to_string(), t.node.clone()),
                ("target".to_string(), format!("{ns}/{pod}")),
            ]);
            for (name, value) in [
                ("lastEndpoint", &t.last_endpoint),
                ("evidence", &t.last_evidence),
                ("traffic", &t.traffic),
            ] {
                if !value.is_empty() {
                    properties.insert(name.to_string(), value.clone());
                }
            }
            PolicyReportResult {
                source: SOURCE.into(),
                policy: policy.name_any(),
                rule: rule.clone(),
                category: detector.to_string(),
                severity: Some(severity(&t.severity)),
                timestamp: Some(Timestamp::from_unix_ms(t.last_seen_unix_ms)),
                result: Some(PolicyResult::Fail),
                scored: true,
                resources: vec![resource],
                resource_selector: None,
                message,
                properties,
            }
        })
        .collect()
}

/// The report a policy should have now.
pub fn desired_report(
    policy: &ApiPolicy,
    tally: &ReportTally,
    pod_uid: impl Fn(&str, &str) -> Option<String>,
) -> PolicyReport {
    let results = results(policy, tally, pod_uid);
    let mut annotations = BTreeMap::new();
    if tally.evicted > 0 {
        annotations.insert(EVICTED_ANNOTATION.to_string(), tally.evicted.to_string());
    }
    PolicyReport {
        metadata: ObjectMeta {
            name: Some(report_name(&policy.name_any())),
            namespace: policy.namespace(),
            labels: Some(BTreeMap::from([
                (
                    "app.kubernetes.io/managed-by".to_string(),
                    "palisade-operator".to_string(),
                ),
                (POLICY_LABEL.to_string(), policy.name_any()),
            ])),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: policy.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: PolicyReportContent {
            summary: PolicyReportSummary::of(&results),
            results,
            ..Default::default()
        },
    }
}

fn fingerprint(report: &PolicyReport) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(report).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// Whether the API server serves the PolicyReport kind, as far as the operator knows.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Crd {
    Unknown,
    Served,
    /// Served until a write answered 404: ask discovery again before the next write.
    Recheck,
    /// Not served (or not writable) when last checked.
    Absent {
        checked: Instant,
    },
}

/// Writes PolicyReports; shared by the policy controller's reconciles.
pub struct PolicyReports {
    client: kube::Client,
    throttle: WriteThrottle,
    probe_interval: Duration,
    crd: tokio::sync::Mutex<Crd>,
}

impl PolicyReports {
    pub fn new(client: kube::Client, interval: Duration, probe_interval: Duration) -> PolicyReports {
        PolicyReports {
            client,
            throttle: WriteThrottle::new(interval),
            probe_interval,
            crd: tokio::sync::Mutex::new(Crd::Unknown),
        }
    }

    /// Whether PolicyReports can be written: asks discovery the first time, after a write
    /// answered 404, and every `probe_interval` while the CRD is absent. Logs only changes.
    pub async fn served(&self) -> bool {
        let mut crd = self.crd.lock().await;
        let was = *crd;
        match was {
            Crd::Served => return true,
            Crd::Absent { checked } if checked.elapsed() < self.probe_interval => return false,
            _ => {}
        }
        let served = match self.client.list_api_group_resources(API_VERSION).await {
            Ok(list) => list.resources.iter().any(|r| r.name == "policyreports"),
            Err(kube::Error::Api(status)) if status.code == 404 => false,
            Err(error) => {
                tracing::warn!(%error, "could not ask the API server whether it serves {API_VERSION}; checking again later");
                *crd = Crd::Absent {
                    checked: Instant::now(),
                };
                return false;
            }
        };
        let every = self.probe_interval.as_secs();
        match (was, served) {
            (Crd::Recheck, true) => {}
            (_, true) => tracing::info!(
                "the PolicyReport CRD ({API_VERSION}) is installed: writing a PolicyReport per ApiPolicy"
            ),
            (Crd::Recheck, false) => tracing::warn!(
                "the PolicyReport CRD ({API_VERSION}) went away: no PolicyReports are written until it is back; checking every {every}s"
            ),
            (Crd::Absent { .. }, false) => {}
            (_, false) => tracing::info!(
                "the PolicyReport CRD ({API_VERSION}) is not installed: no PolicyReports are written \
                 (install it with the chart's policyReport.installCRD=true, or Kyverno's); checking again every {every}s"
            ),
        }
        *crd = if served {
            Crd::Served
        } else {
            Crd::Absent {
                checked: Instant::now(),
            }
        };
        served
    }

    /// A write failed. A 404 may mean the CRD went away (or the namespace did): discovery tells
    /// before the next write. A 403 that is not a terminating namespace means RBAC does not
    /// allow reports: no writes until the next probe. Other errors are returned.
    async fn failed(&self, error: kube::Error) -> Result<(), Error> {
        let (code, message) = match &error {
            kube::Error::Api(status) => (status.code, status.message.clone()),
            _ => (0, String::new()),
        };
        match code {
            404 => {
                let mut crd = self.crd.lock().await;
                if *crd == Crd::Served {
                    *crd = Crd::Recheck;
                }
                Ok(())
            }
            403 if message.contains("being terminated") => Ok(()),
            403 => {
                tracing::warn!(%error, "not allowed to write PolicyReports (RBAC: get, create and patch on wgpolicyk8s.io policyreports); trying again in {}s", self.probe_interval.as_secs());
                *self.crd.lock().await = Crd::Absent {
                    checked: Instant::now(),
                };
                Ok(())
            }
            _ => Err(Error::Kube(error)),
        }
    }

    /// Brings the policy's report up to date. `Ok(Some(wait))`: the report changed but was
    /// written too recently; try again after `wait`.
    pub async fn sync(&self, policy: &ApiPolicy, hub: &Hub) -> Result<Option<Duration>, Error> {
        if !self.served().await {
            return Ok(None);
        }
        let key: ObjectKey = obj_key(policy);
        let ns = policy.namespace().ok_or(Error::MissingNamespace)?;
        let name = report_name(&policy.name_any());
        let api: Api<PolicyReport> = Api::namespaced(self.client.clone(), &ns);
        let pod_uid = |ns: &str, pod: &str| {
            hub.view
                .pods
                .get(&kube::runtime::reflector::ObjectRef::new(pod).within(ns))
                .and_then(|p| p.metadata.uid.clone())
        };
        // The first sync of a policy reads back what an earlier operator wrote.
        let mut existing = None;
        if !hub.report_tally(&key).seeded {
            existing = match api.get_opt(&name).await {
                Ok(existing) => existing,
                Err(error) => return self.failed(error).await.map(|()| None),
            };
            hub.seed_report(&key, existing.as_ref());
        }
        let tally = hub.report_tally(&key);
        let desired = desired_report(policy, &tally, pod_uid);
        let print = fingerprint(&desired);
        // Found as it should be: nothing to write.
        if existing.is_some_and(|e| {
            e.spec == desired.spec
                && e.annotations().get(EVICTED_ANNOTATION) == desired.annotations().get(EVICTED_ANNOTATION)
                && e.owner_references() == desired.owner_references()
        }) {
            hub.set_report_written(&key, print);
            return Ok(None);
        }
        if tally.written == Some(print) {
            return Ok(None);
        }
        if let Err(wait) = self.throttle.try_acquire(&key, Instant::now()) {
            return Ok(Some(wait));
        }
        let patch = serde_json::to_value(&desired).map_err(|e| Error::Kube(kube::Error::SerdeError(e)))?;
        match api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
        {
            Ok(_) => {
                hub.set_report_written(&key, print);
                Ok(None)
            }
            Err(error) => self.failed(error).await.map(|()| None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: &str) -> ApiPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "ApiPolicy",
            "metadata": {"namespace": "shop", "name": "guard", "uid": "policy-uid"},
            "spec": {"mode": mode, "rules": [{"name": "sqli", "detector": "sqlInjection"}]}
        }))
        .unwrap_or_else(|e| panic!("policy: {e}"))
    }

    fn finding(rule: &str, severity: &str, pod: &str, count: u64, last_seen: i64) -> agent::Finding {
        agent::Finding {
            rule: rule.into(),
            detector: if rule == "admin-probe" {
                String::new()
            } else {
                "sqlInjection".into()
            },
            severity: severity.into(),
            count,
            source: "10.0.0.9".into(),
            pod_namespace: "shop".into(),
            pod_name: pod.into(),
            method: "GET".into(),
            path: "/search".into(),
            evidence: "q=1' UNION SELECT [REDACTED]".into(),
            first_seen_unix_ms: last_seen - 1000,
            last_seen_unix_ms: last_seen,
            traffic: "north-south".into(),
        }
    }

    #[test]
    fn one_fail_result_per_rule_and_pod_with_exact_counts_and_summary() {
        let mut tally = ReportTally::default();
        tally.add("n1", &finding("sqli", "high", "api-0", 3, 1_700_000_001_000));
        tally.add("n1", &finding("sqli", "high", "api-0", 2, 1_700_000_005_500));
        tally.add("n2", &finding("sqli", "high", "api-1", 1, 1_700_000_002_000));
        tally.add(
            "n1",
            &finding("admin-probe", "medium", "api-0", 4, 1_700_000_003_000),
        );
        tally.add(
            "n1",
            &finding("odd", "someday-severe", "api-0", 1, 1_700_000_003_000),
        );
        let report = desired_report(&policy("audit"), &tally, |ns, pod| {
            (ns == "shop" && pod == "api-0").then(|| "uid-0".to_string())
        });

        assert_eq!(report.metadata.name.as_deref(), Some("palisade-guard"));
        assert_eq!(report.metadata.namespace.as_deref(), Some("shop"));
        let owner = &report.owner_references()[0];
        assert_eq!(
            (
                owner.kind.as_str(),
                owner.name.as_str(),
                owner.uid.as_str(),
                owner.controller
            ),
            ("ApiPolicy", "guard", "policy-uid", Some(true))
        );
        let r = &report.spec.results;
        let ids: Vec<(&str, &str, u64)> = r
            .iter()
            .map(|r| {
                (
                    r.rule.as_str(),
                    r.resources[0].name.as_deref().unwrap_or_default(),
                    r.properties["count"].parse().unwrap_or(0),
                )
            })
            .collect();
        assert_eq!(
            ids,
            [
                ("admin-probe", "api-0", 4),
                ("odd", "api-0", 1),
                ("sqli", "api-0", 5),
                ("sqli", "api-1", 1)
            ]
        );
        assert_eq!(
            report.spec.summary,
            PolicyReportSummary {
                fail: 4,
                ..Default::default()
            },
            "the summary counts the results exactly"
        );
        let sqli = &r[2];
        assert_eq!(sqli.source, "palisade");
        assert_eq!(sqli.policy, "guard");
        assert_eq!(sqli.category, "sqlInjection");
        assert_eq!(sqli.result, Some(PolicyResult::Fail));
        assert_eq!(sqli.severity, Some(PolicyResultSeverity::High));
        assert_eq!(
            sqli.timestamp,
            Some(Timestamp {
                seconds: 1_700_000_005,
                nanos: 500_000_000
            }),
            "the last time seen"
        );
        assert_eq!(sqli.resources[0].kind.as_deref(), Some("Pod"));
        assert_eq!(sqli.resources[0].uid.as_deref(), Some("uid-0"));
        assert_eq!(r[3].resources[0].uid, None, "a pod no longer known has no uid");
        assert_eq!(sqli.properties["firstSeen"], "2023-11-14T22:13:20Z");
        assert_eq!(sqli.properties["lastSeen"], "2023-11-14T22:13:25.5Z");
        assert_eq!(sqli.properties["evidence"], "q=1' UNION SELECT [REDACTED]");
        assert_eq!(sqli.properties["mode"], "audit");
        assert!(sqli.message.starts_with("5 requests flagged by rule sqli (sqlInjection) on pod shop/api-0; last GET /search from 10.0.0.9"), "{}", sqli.message);
        assert_eq!(r[0].category, "custom", "a custom rule has no detector");
        assert_eq!(r[0].severity, Some(PolicyResultSeverity::Medium));
        assert_eq!(
            r[1].severity,
            Some(PolicyResultSeverity::Info),
            "an unknown severity is info"
        );
        for (palisade, wg) in [
            ("critical", PolicyResultSeverity::Critical),
            ("high", PolicyResultSeverity::High),
            ("medium", PolicyResultSeverity::Medium),
            ("low", PolicyResultSeverity::Low),
        ] {
            assert_eq!(severity(palisade), wg);
        }
    }

    #[test]
    fn capture_losses_name_the_node() {
        let mut tally = ReportTally::default();
        let mut f = finding("capture-loss", "medium", "(all monitored pods on n1)", 40, 5_000);
        f.detector = "captureLoss".into();
        f.method.clear();
        f.path.clear();
        tally.add("n1", &f);
        let r = results(&policy("audit"), &tally, |_, _| None);
        assert_eq!(r[0].resources[0].kind.as_deref(), Some("Node"));
        assert_eq!(r[0].resources[0].name.as_deref(), Some("n1"));
        assert!(!r[0].properties.contains_key("lastEndpoint"));
    }

    #[test]
    fn results_are_capped_dropping_the_least_recently_seen() {
        let mut tally = ReportTally::default();
        for i in 0..(MAX_RESULTS as i64 + 5) {
            tally.add(
                "n1",
                &finding("sqli", "high", &format!("api-{i:03}"), 1, 1_000 + i),
            );
        }
        assert_eq!(tally.targets.len(), MAX_RESULTS);
        assert_eq!(tally.evicted, 5);
        let report = desired_report(&policy("enforce"), &tally, |_, _| None);
        assert_eq!(report.spec.results.len(), MAX_RESULTS);
        assert_eq!(report.spec.summary.fail, MAX_RESULTS as i64);
        assert_eq!(report.annotations()[EVICTED_ANNOTATION], "5");
        let pods: Vec<_> = report
            .spec
            .results
            .iter()
            .filter_map(|r| r.resources[0].name.clone())
            .collect();
        assert!(!pods.contains(&"api-004".to_string()), "the oldest went first");
        assert!(pods.contains(&"api-005".to_string()));
        assert!(pods.contains(&"api-104".to_string()));
        // An existing target still adds up when the tally is full.
        tally.add("n1", &finding("sqli", "high", "api-050", 2, 9_000));
        assert_eq!(tally.evicted, 5);
        assert_eq!(
            tally.targets[&("sqli".into(), "shop".into(), "api-050".into())].count,
            3
        );
    }

    #[test]
    fn a_report_read_back_restores_the_counts() {
        let mut before = ReportTally::default();
        before.add("n1", &finding("sqli", "high", "api-0", 3, 1_700_000_001_000));
        before.add(
            "n1",
            &finding("admin-probe", "medium", "api-1", 2, 1_700_000_002_000),
        );
        before.evicted = 7;
        let written = desired_report(&policy("audit"), &before, |_, _| None);
        // Through JSON, as the API server returns it.
        let read: PolicyReport = serde_json::to_value(&written)
            .and_then(serde_json::from_value)
            .unwrap_or_else(|e| panic!("round trip: {e}"));

        let mut after = ReportTally::default();
        after.add("n1", &finding("sqli", "high", "api-0", 1, 1_700_000_009_000));
        after.seed(&read);
        assert!(after.seeded);
        assert_eq!(after.evicted, 7);
        let sqli = &after.targets[&("sqli".into(), "shop".into(), "api-0".into())];
        assert_eq!((sqli.count, sqli.last_seen_unix_ms), (4, 1_700_000_009_000));
        assert_eq!(
            sqli.first_seen_unix_ms, 1_700_000_000_000,
            "the earliest first-seen wins"
        );
        let admin = &after.targets[&("admin-probe".into(), "shop".into(), "api-1".into())];
        assert_eq!((admin.count, admin.severity.as_str()), (2, "medium"));
        assert_eq!(admin.last_evidence, "q=1' UNION SELECT [REDACTED]");

        let mut fresh = ReportTally::default();
        fresh.seed(&read);
        assert_eq!(
            desired_report(&policy("audit"), &fresh, |_, _| None).spec,
            written.spec,
            "read back unchanged, the same report: nothing to write"
        );
    }

    #[test]
    fn names_stay_valid() {
        assert_eq!(report_name("guard"), "palisade-guard");
        let long = "a".repeat(253);
        let name = report_name(&long);
        assert_eq!(name.len(), 253);
        assert_ne!(report_name(&"b".repeat(253)), name);
        assert_eq!(truncate_chars("ééé", 2), "éé…", "cut at a character boundary");
    }
}
