//! Invalid ApiMonitors and ApiPolicies are rejected by the real kube-apiserver (OpenAPI schema and
//! CEL rules from crds/) with a message that names the field.

use anyhow::Result;
use palisade_e2e::ControlPlane;
use std::io::Write;

fn policy(rules: &str) -> String {
    format!("apiVersion: palisade.dev/v1alpha1\nkind: ApiPolicy\nmetadata:\n  name: bad\n  namespace: default\nspec:\n  rules:\n{rules}")
}

fn monitor(spec: &str) -> String {
    format!("apiVersion: palisade.dev/v1alpha1\nkind: ApiMonitor\nmetadata:\n  name: bad\n  namespace: default\nspec:\n{spec}")
}

/// Applies `yaml` and returns kubectl's stderr; fails the test if it was accepted.
fn rejected(cp: &ControlPlane, yaml: &str) -> Result<String> {
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(yaml.as_bytes())?;
    let out = cp.kubectl(&[
        "apply",
        "--dry-run=server",
        "-f",
        &file.path().display().to_string(),
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(
        !out.status.success(),
        "accepted but should be rejected:\n{yaml}\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_resources_are_rejected_with_the_field_named() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let cp = ControlPlane::start_with_palisade_crds().await?;

    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown action",
            policy("  - name: r\n    detector: pathTraversal\n    actions: [{type: nuke}]\n"),
            vec!["spec.rules[0].actions[0].type", "Unsupported value: \"nuke\""],
        ),
        (
            "negative ttl",
            policy("  - name: r\n    detector: pathTraversal\n    actions: [{type: blockSource, ttl: \"-5m\"}]\n"),
            vec!["spec.rules[0].actions[0].ttl"],
        ),
        (
            "zero ttl",
            policy("  - name: r\n    detector: pathTraversal\n    actions: [{type: blockSource, ttl: \"0s\"}]\n"),
            vec!["spec.rules[0].actions[0].ttl", "ttl must be more than 0s"],
        ),
        (
            "blockSource without ttl",
            policy("  - name: r\n    detector: pathTraversal\n    actions: [{type: blockSource}]\n"),
            vec!["spec.rules[0].actions[0].ttl", "blockSource and isolate need a ttl"],
        ),
        (
            "isolate without ttl",
            policy("  - name: r\n    detector: pathTraversal\n    actions: [{type: isolate}]\n"),
            vec!["spec.rules[0].actions[0].ttl", "blockSource and isolate need a ttl"],
        ),
        (
            "allow on a blockSource",
            policy("  - name: r\n    detector: pathTraversal\n    actions: [{type: blockSource, ttl: 1m, allow: {cidrs: ['10.0.0.0/8']}}]\n"),
            vec!["spec.rules[0].actions[0]", "allow and denyEgress are for isolate only"],
        ),
        (
            "isolate allowing the whole internet",
            policy("  - name: r\n    detector: pathTraversal\n    actions: [{type: isolate, ttl: 1m, allow: {cidrs: ['0.0.0.0/0']}}]\n"),
            vec!["spec.rules[0].actions[0].allow.cidrs", "no wider than /8"],
        ),
        (
            "detector and match both set",
            policy("  - name: r\n    detector: pathTraversal\n    match: {methods: [GET]}\n"),
            vec!["spec.rules[0]", "exactly one of detector or match"],
        ),
        ("unknown detector", policy("  - name: r\n    detector: telepathy\n"), vec!["spec.rules[0].detector", "Unsupported value"]),
        ("no rules", policy("").replace("rules:\n", "rules: []\n"), vec!["spec.rules", "at least 1 items"]),
        (
            "bad selector operator",
            monitor("  selector:\n    matchExpressions: [{key: app, operator: Like, values: [x]}]\n"),
            vec!["spec.selector", "operator must be one of In, NotIn, Exists, DoesNotExist"],
        ),
        (
            "In without values",
            monitor("  selector:\n    matchExpressions: [{key: app, operator: In}]\n"),
            vec!["spec.selector", "values must be non-empty for In and NotIn"],
        ),
        ("port out of range", monitor("  selector: {}\n  ports: [70000]\n"), vec!["spec.ports[0]"]),
        (
            "maxBodyBytes without bodies",
            monitor("  selector: {}\n  capture: {bodies: false, maxBodyBytes: 1024}\n"),
            vec!["spec.capture.maxBodyBytes", "bodies is false"],
        ),
        (
            "openApi without discovery",
            monitor("  selector: {}\n  discovery: {enabled: false}\n  openApi: {configMap: spec}\n"),
            vec!["spec.openApi", "needs discovery.enabled"],
        ),
    ];
    let mut failures = vec![];
    for (what, yaml, expected) in &cases {
        let stderr = rejected(&cp, yaml)?;
        println!("{what}: {}", stderr.trim());
        for needle in expected {
            if !stderr.contains(needle) {
                failures.push(format!("{what}: expected {needle:?} in: {stderr}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The samples themselves are valid.
    cp.kubectl_ok(&["create", "namespace", "demo"])?;
    let out = cp.kubectl_ok(&[
        "apply",
        "--dry-run=server",
        "-f",
        &palisade_e2e::workspace_root()
            .join("config/samples")
            .display()
            .to_string(),
    ])?;
    assert!(
        out.contains("apipolicy.palisade.dev/demo-api-guard created (server dry run)"),
        "{out}"
    );
    Ok(())
}
