//! Detection end to end against the deliberately vulnerable demo API running as a pod: a benign
//! traffic script yields no finding at all; then scripted attacks (SQL injection, ID
//! enumeration, credential stuffing, a request without credentials, PII and stack-trace leaks,
//! shadow and zombie endpoints against the sample OpenAPI document) each produce the right finding in `kubectl describe apipolicy` and a Warning Event on the
//! policy and on the pod. Evidence names kinds of data, never the data.

use anyhow::{ensure, Result};
use palisade_e2e::palisade::{http_request, wait_for_object, Stack};
use palisade_e2e::{ControlPlane, RunningPod};
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(45);
const TOKEN: &str = "Bearer demo-token-4c1d";

const MANIFESTS: &str = r#"
apiVersion: palisade.dev/v1alpha1
kind: ApiMonitor
metadata: {name: demo-api, namespace: demo}
spec:
  selector: {matchLabels: {app: demo-api}}
  ports: [8080]
  capture: {bodies: true, maxBodyBytes: 16384}
  openApi: {configMap: demo-api-openapi, key: openapi.yaml}
---
apiVersion: palisade.dev/v1alpha1
kind: ApiPolicy
metadata: {name: demo-api-detect, namespace: demo}
spec:
  monitors: [demo-api]
  rules:
    - {name: sql-injection, detector: sqlInjection}
    - {name: id-enumeration, detector: bola, params: {distinctIds: "10"}}
    - {name: credential-stuffing, detector: bruteForce, params: {failures: "5"}}
    - {name: missing-auth, detector: missingAuth, params: {minSamples: "10"}}
    - {name: pii-leak, detector: dataExposure}
    - {name: request-flood, detector: rateAbuse, params: {perSource: "1000"}}
    - {name: undocumented, detector: shadowEndpoint}
  limits: {eventsPerMinute: 60, findingsInStatus: 20}
"#;

/// What a well-behaved client of the demo API does: reads a few users with its token, searches,
/// logs in (one typo), reads a file, checks health.
fn benign_script(addr: SocketAddr) -> Result<usize> {
    let auth = [("Authorization", TOKEN)];
    let mut sent = 0;
    let mut send =
        |method: &str, target: &str, headers: &[(&str, &str)], body: &str, want: u16| -> Result<()> {
            let status = http_request(addr, method, target, headers, body)?;
            ensure!(status == want, "{method} {target}: {status}, expected {want}");
            sent += 1;
            Ok(())
        };
    send("GET", "/healthz", &[], "", 200)?;
    for round in 0..4 {
        for id in [1, 2, 3] {
            send("GET", &format!("/users/{id}"), &auth, "", 200)?;
        }
        send("GET", &format!("/search?q=user{}", 5 + round), &auth, "", 200)?;
    }
    let json = [("Content-Type", "application/json")];
    send(
        "POST",
        "/login",
        &json,
        r#"{"user":"alice","password":"wonderlnd"}"#,
        401,
    )?;
    send(
        "POST",
        "/login",
        &json,
        r#"{"user":"alice","password":"wonderland"}"#,
        200,
    )?;
    send("GET", "/files/readme.txt", &auth, "", 200)?;
    send("GET", "/users/2", &auth, "", 200)?;
    Ok(sent)
}

async fn requests_counted(cp: &ControlPlane, at_least: u64) -> Result<()> {
    wait_for_object(
        cp,
        "the agent to count the requests",
        ("apimonitor", "demo", "demo-api"),
        WAIT,
        |m| {
            let items = m.pointer("/status/endpoints/items")?.as_array()?;
            let total: u64 = items.iter().filter_map(|e| e["requests"].as_u64()).sum();
            (total >= at_least).then_some(())
        },
    )
    .await
}

fn attack(pod: &RunningPod) -> Result<()> {
    let addr = pod.addr(8080);
    let auth = [("Authorization", TOKEN)];
    // Injection.
    let status = http_request(
        addr,
        "GET",
        "/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--",
        &auth,
        "",
    )?;
    ensure!(status == 200, "injection: {status}");
    // ID enumeration with a valid token: every user, one after the other.
    for id in 1..=30 {
        http_request(addr, "GET", &format!("/users/{id}"), &auth, "")?;
    }
    // Credential stuffing: many users, wrong passwords.
    for user in ["bob", "carol", "dave", "erin", "frank", "grace", "heidi"] {
        let body = format!(r#"{{"user":"{user}","password":"123456"}}"#);
        let status = http_request(
            addr,
            "POST",
            "/login",
            &[("Content-Type", "application/json")],
            &body,
        )?;
        ensure!(status == 401, "stuffing: {status}");
    }
    // The same endpoint, no credentials, and the API answers anyway.
    ensure!(http_request(addr, "GET", "/users/9", &[], "")? == 200);
    // PII and a stack trace leak from the responses.
    ensure!(http_request(addr, "GET", "/users/7/card", &auth, "")? == 200);
    ensure!(http_request(addr, "GET", "/debug/crash", &auth, "")? == 500);
    // What the OpenAPI document does not know, or calls deprecated.
    ensure!(http_request(addr, "GET", "/export/users", &auth, "")? == 200);
    ensure!(http_request(addr, "GET", "/v1/users/3", &auth, "")? == 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benign_traffic_is_quiet_and_each_scripted_attack_is_found_and_announced() -> Result<()> {
    palisade_e2e::init_tracing();
    if !palisade_e2e::require_root() {
        return Ok(());
    }
    let stack = Stack::start("detect-node").await?;
    let cp = &stack.cp;
    cp.kubectl_ok(&["create", "namespace", "demo"])?;
    let pod = stack.start_demo_pod("demo-api-0").await?;
    let openapi = palisade_e2e::workspace_root().join("config/samples/01-demo-api-openapi.yaml");
    cp.kubectl_ok(&["apply", "-f", &openapi.display().to_string()])?;
    cp.apply_yaml(MANIFESTS)?;
    palisade_e2e::palisade::wait_policy_ready(cp, "demo", "demo-api-detect").await?;

    // Benign traffic: counted in the inventory (so the agent has seen and judged all of it),
    // and no finding.
    let sent = benign_script(pod.addr(8080))?;
    requests_counted(cp, sent as u64).await?;
    // One more report interval for findings that would trail the counts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let policy = palisade_e2e::palisade::get_json(cp, "apipolicy", "demo", "demo-api-detect")?;
    let total = policy
        .pointer("/status/findings/total")
        .and_then(|t| t.as_u64())
        .unwrap_or(0);
    assert_eq!(
        total, 0,
        "benign traffic raised findings: {:#}",
        policy["status"]["findings"]
    );

    attack(&pod)?;
    let expected = [
        ("sql-injection", "sqlInjection", "/search"),
        ("id-enumeration", "bola", "/users/{id}"),
        ("credential-stuffing", "bruteForce", "/login"),
        ("missing-auth", "missingAuth", "/users/{id}"),
        ("pii-leak", "dataExposure", "/users/{id}/card"),
        ("pii-leak", "dataExposure", "/debug/crash"),
        ("pii-leak", "dataExposure", "/export/users"),
        ("undocumented", "shadowEndpoint", "/export/users"),
        ("undocumented", "shadowEndpoint", "/v1/users/{id}"),
    ];
    let recent = wait_for_object(
        cp,
        "a finding per attack",
        ("apipolicy", "demo", "demo-api-detect"),
        WAIT,
        |p| {
            let recent = p.pointer("/status/findings/recent")?.as_array()?.clone();
            expected
                .iter()
                .all(|(rule, _, path)| {
                    recent.iter().any(|f| {
                        f["rule"] == *rule && f["endpoint"].as_str().is_some_and(|e| e.ends_with(path))
                    })
                })
                .then_some(recent)
        },
    )
    .await
    .map_err(|e| e.context(format!("agent log:\n{}", stack.agent.log_tail(40))))?;
    for (rule, detector, path) in expected {
        let f = recent
            .iter()
            .find(|f| f["rule"] == rule && f["endpoint"].as_str().is_some_and(|e| e.ends_with(path)))
            .expect("found above");
        println!("{rule}: {}", f["evidence"]);
        assert_eq!(f["detector"], detector, "{f:#}");
        assert_eq!(f["pod"], "demo/demo-api-0");
    }
    let evidence = |rule: &str, path: &str| {
        recent
            .iter()
            .find(|f| f["rule"] == rule && f["endpoint"].as_str().is_some_and(|e| e.ends_with(path)))
            .and_then(|f| f["evidence"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(evidence("pii-leak", "/users/{id}/card").contains("card number ×1"));
    assert!(evidence("pii-leak", "/debug/crash").contains("stack trace"));
    // The same crash, as the APM signal every monitor keeps per endpoint (no policy needed).
    wait_for_object(
        cp,
        "the exception counted on its endpoint",
        ("apimonitor", "demo", "demo-api"),
        WAIT,
        |m| {
            let items = m.pointer("/status/endpoints/items")?.as_array()?;
            let crash = items.iter().find(|e| e["path"] == "/debug/crash")?;
            (crash["exceptions"].as_u64()? == 1).then_some(())
        },
    )
    .await?;
    // The inventory says how each endpoint is used: credentials, media types, personal data in
    // responses, latency; never a credential or a value.
    let monitor = wait_for_object(
        cp,
        "the inventory's observations",
        ("apimonitor", "demo", "demo-api"),
        WAIT,
        |m| {
            let items = m.pointer("/status/endpoints/items")?.as_array()?.clone();
            let find = |method: &str, path: &str| {
                items
                    .iter()
                    .find(|e| e["method"] == method && e["path"] == path)
                    .cloned()
            };
            let names = |e: &serde_json::Value, field: &str| -> Vec<String> {
                e[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            };
            let card = find("GET", "/users/{id}/card")?;
            let users = find("GET", "/users/{id}")?;
            let login = find("POST", "/login")?;
            let ready = names(&card, "piiTypes").contains(&"card".to_string())
                && names(&users, "authSchemes") == ["none", "bearer"]
                && names(&login, "requestContentTypes") == ["application/json"]
                && names(&login, "responseContentTypes") == ["application/json"];
            ready.then(|| m.clone())
        },
    )
    .await?;
    for item in monitor
        .pointer("/status/endpoints/items")
        .and_then(|i| i.as_array())
        .into_iter()
        .flatten()
    {
        let latency = &item["latency"];
        let buckets: u64 = latency["buckets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["count"].as_u64())
            .sum();
        assert_eq!(
            Some(buckets),
            item["requests"].as_u64(),
            "every exchange has a latency: {item:#}"
        );
        let (p50, p99, max) = (
            latency["p50Micros"].as_u64().unwrap_or(0),
            latency["p99Micros"].as_u64().unwrap_or(0),
            latency["maxMicros"].as_u64().unwrap_or(0),
        );
        assert!(0 < p50 && p50 <= p99 && p99 <= max, "{item:#}");
    }
    let described = cp.kubectl_ok(&["describe", "apimonitor", "demo-api", "-n", "demo"])?;
    println!("{described}");
    assert!(described.contains("Auth Schemes:"), "{described}");
    assert!(
        !described.contains(TOKEN.trim_start_matches("Bearer ")),
        "{described}"
    );
    assert!(evidence("id-enumeration", "/users/{id}").contains("distinct object IDs of GET /users/{id}"));
    assert!(evidence("credential-stuffing", "/login").contains("failed attempts (401/403)"));
    assert!(evidence("missing-auth", "/users/{id}").contains("without credentials"));
    assert!(evidence("pii-leak", "/export/users").contains("e-mail address ×50"));
    assert!(evidence("undocumented", "/export/users").starts_with("shadow endpoint: GET /export/users"));
    assert!(evidence("undocumented", "/v1/users/{id}").starts_with("zombie endpoint: GET /v1/users/{id}"));
    assert!(
        !recent.iter().any(|f| f["rule"] == "request-flood"),
        "a few dozen requests are no flood"
    );

    // What a person sees: `kubectl describe` lists every rule, and each has a Warning Event on
    // the policy and on the pod.
    let rules = [
        "sql-injection",
        "id-enumeration",
        "credential-stuffing",
        "missing-auth",
        "pii-leak",
        "undocumented",
    ];
    let describe = palisade_e2e::palisade::wait_for(WAIT, || {
        let out = cp.kubectl_ok(&["describe", "apipolicy", "demo-api-detect", "-n", "demo"])?;
        Ok(rules
            .iter()
            .all(|r| out.contains(&format!("rule {r} ")))
            .then_some(out))
    })
    .await?;
    println!("{describe}");
    let pod_events = cp.kubectl_ok(&[
        "get",
        "events",
        "-n",
        "demo",
        "--field-selector",
        "involvedObject.kind=Pod,involvedObject.name=demo-api-0,reason=AttackDetected",
        "-o",
        "jsonpath={range .items[*]}{.note}{.message}{\"\\n\"}{end}",
    ])?;
    for rule in rules {
        assert!(
            pod_events.contains(&format!("rule {rule} ")),
            "no Event on the pod for {rule}: {pod_events}"
        );
    }
    // The card number itself never left the node.
    let everything = [
        cp.kubectl_ok(&["get", "apipolicy,apimonitor,events", "-n", "demo", "-o", "yaml"])?,
        describe,
        std::fs::read_to_string(stack.agent.log_path()).unwrap_or_default(),
    ]
    .join("\n");
    // User 7's card is the second test number (demo_api.py).
    assert!(!everything.contains("5500 0000 0000 0004") && !everything.contains("5500000000000004"));
    assert!(everything.contains("card number"), "the outputs were collected");
    Ok(())
}
