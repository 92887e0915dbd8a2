//! Cost of request inspection: `Inputs::collect` plus the seven injection detectors at paranoia 1,
//! one request at a time, on typical API requests (and one attack for comparison).
//!
//! ```text
//! cargo bench -p palisade-node-agent --bench detect
//! ```
//!
//! Throughput is reported in requests: criterion's `elem/s` is requests per second on one core.
//! Before criterion's runs, each request is also timed alone 20,000 times, and the mean, p50 and
//! p99 of those single calls are printed (criterion reports means only).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use palisade_node_agent::detect::{CompiledRule, Inputs, RequestView, INJECTION_DETECTORS};
use palisade_node_agent::http::HeaderFields;
use std::hint::black_box;
use std::time::{Duration, Instant};

struct Request {
    name: &'static str,
    method: &'static str,
    target: &'static str,
    headers: HeaderFields,
    body: Option<&'static str>,
}

fn headers(pairs: &[(&str, &str)]) -> HeaderFields {
    pairs.iter().copied().collect()
}

fn requests() -> Vec<Request> {
    vec![
        Request {
            name: "browser GET, path id and 2 query params",
            method: "GET",
            target: "/api/v1/users/12345/orders?status=shipped&limit=20",
            headers: headers(&[
                ("Host", "shop.example.com"),
                (
                    "User-Agent",
                    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
                ),
                ("Accept", "application/json, text/plain, */*"),
                ("Accept-Language", "en-US,en;q=0.9"),
                ("Accept-Encoding", "gzip, deflate, br"),
                ("Referer", "https://shop.example.com/account/orders"),
                (
                    "Cookie",
                    "session=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJl; theme=dark; lang=en-US",
                ),
                ("Sec-Fetch-Mode", "cors"),
                ("Sec-Fetch-Site", "same-origin"),
                ("Connection", "keep-alive"),
            ]),
            body: None,
        },
        Request {
            name: "curl POST, small JSON body",
            method: "POST",
            target: "/api/v1/orders",
            headers: headers(&[
                ("Host", "api.example.com"),
                ("User-Agent", "curl/8.5.0"),
                ("Accept", "*/*"),
                ("Content-Type", "application/json"),
                ("Content-Length", "212"),
                ("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJl"),
            ]),
            body: Some(
                r#"{"customerId": 12345, "items": [{"sku": "SKU-1001", "quantity": 2}, {"sku": "SKU-2002", "quantity": 1}], "currency": "EUR", "note": "Please deliver after 5pm", "shippingAddress": {"street": "12 Main Street", "city": "Springfield", "zip": "12345"}}"#,
            ),
        },
        Request {
            name: "kubectl GET, list with a label selector",
            method: "GET",
            target: "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb&limit=500",
            headers: headers(&[
                ("Host", "10.96.0.1:443"),
                ("User-Agent", "kubectl/v1.30.0 (linux/amd64) kubernetes/7c48c2b"),
                (
                    "Accept",
                    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
                ),
                ("Accept-Encoding", "gzip"),
                ("Authorization", "Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJhZG1pbiJ9.c2ln"),
                ("Kubectl-Command", "kubectl get"),
                ("Kubectl-Session", "5f0c4b7e-2a1d-4c3e-9f5a-8b7c6d5e4f3a"),
            ]),
            body: None,
        },
        Request {
            name: "attack: SQL injection in a query parameter",
            method: "GET",
            target: "/api/v1/items?id=1%27%20union%20select%20username,password%20from%20users--&sort=name",
            headers: headers(&[("Host", "api.example.com"), ("User-Agent", "sqlmap/1.7.2#stable (https://sqlmap.org)")]),
            body: None,
        },
    ]
}

/// What the agent does per request: split it once, then run every rule on the split.
fn inspect(rules: &[CompiledRule], view: &RequestView) -> usize {
    let inputs = Inputs::collect(view);
    rules
        .iter()
        .filter(|rule| rule.evaluate_with(view, &inputs).is_some())
        .count()
}

fn detect(c: &mut Criterion) {
    let rules: Vec<CompiledRule> = INJECTION_DETECTORS
        .iter()
        .map(|d| CompiledRule::builtin(d, &[("paranoia", "1")]).unwrap_or_else(|e| panic!("{d}: {e}")))
        .collect();
    let requests = requests();
    for req in &requests {
        let view = RequestView {
            method: req.method,
            target: req.target,
            headers: &req.headers,
            body: req.body.map(str::as_bytes),
        };
        print_percentiles(req.name, || {
            black_box(inspect(&rules, black_box(&view)));
        });
    }
    let mut group = c.benchmark_group("collect + seven injection detectors, paranoia 1");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(3));
    for req in requests {
        let view = RequestView {
            method: req.method,
            target: req.target,
            headers: &req.headers,
            body: req.body.map(str::as_bytes),
        };
        group.bench_function(req.name, |b| b.iter(|| inspect(&rules, black_box(&view))));
    }
    group.finish();
}

/// Times `run` alone 20,000 times (after 2,000 untimed calls) and prints mean, p50 and p99.
fn print_percentiles(name: &str, mut run: impl FnMut()) {
    for _ in 0..2_000 {
        run();
    }
    let mut micros: Vec<f64> = (0..20_000)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    micros.sort_by(f64::total_cmp);
    let mean = micros.iter().sum::<f64>() / micros.len() as f64;
    let at = |q: f64| micros[((micros.len() - 1) as f64 * q) as usize];
    println!(
        "{name}: single calls: mean {mean:.2} µs, p50 {:.2} µs, p99 {:.2} µs, {:.0} requests/s",
        at(0.5),
        at(0.99),
        1e6 / mean
    );
}

criterion_group!(benches, detect);
criterion_main!(benches);
