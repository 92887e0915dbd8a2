//! An OpenAPI 3.0.3 document from a monitor's discovered endpoints.

use super::OPERATION_METHODS;
use crate::inventory::AuthScheme;
use crate::v1alpha1::{ApiMonitorStatus, EndpointStatus};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

/// The endpoints a monitor discovered (`status.endpoints.items`: the busiest, at most 50) as an
/// OpenAPI 3.0.3 document:
///
/// - one operation per method and path template, with `x-palisade-requests` (and east-west
///   requests and last seen) from the inventory;
/// - a required string path parameter for every `{...}` segment; the agent names every
///   identifier `{id}`, and parameter names must be unique within a path, so repeats become
///   `{id2}`, `{id3}` (`/users/{id}/orders/{id}` is written `/users/{id}/orders/{id2}`);
/// - `responses` keyed by the status codes seen, each with `x-palisade-count`, or `default`
///   when no response was seen;
/// - `requestBody` with the request media types seen; the response media types, kinds of
///   personal data and latency percentiles as `x-palisade-…` extensions;
/// - `security` from the credentials requests presented, with their schemes under
///   `components.securitySchemes` (an empty requirement when some requests had none: auth is
///   optional there); every scheme seen is also listed in `x-palisade-auth-schemes`, since a
///   cookie's name, which OpenAPI needs, is not recorded;
/// - methods OpenAPI has no operation field for (WebDAV's `PROPFIND`, ...) under the path item's
///   `x-palisade-other-operations`, so the document stays valid.
///
/// `info.description` and `x-palisade-endpoints-total` say how many endpoints were discovered in
/// all when the status lists only some of them.
pub fn inventory_to_openapi(monitor_name: &str, status: &ApiMonitorStatus) -> Value {
    let inventory = &status.endpoints;
    let mut paths = Map::new();
    let mut security_schemes = Map::new();
    let mut operation_ids = BTreeSet::new();
    let mut items: Vec<&EndpointStatus> = inventory.items.iter().collect();
    items.sort_by(|a, b| (&a.path, &a.method).cmp(&(&b.path, &b.method)));
    for item in items {
        let (path, params) = openapi_path(&item.path);
        let method = item.method.to_ascii_lowercase();
        let mut id = operation_id(&method, &path);
        if !operation_ids.insert(id.clone()) {
            let mut n = 2;
            while !operation_ids.insert(format!("{id}_{n}")) {
                n += 1;
            }
            id = format!("{id}_{n}");
        }
        let mut operation = operation(item, id, &params);
        add_security(&mut operation, &item.auth_schemes, &mut security_schemes);
        let Value::Object(path_item) = paths.entry(path).or_insert_with(|| json!({})) else {
            continue;
        };
        if OPERATION_METHODS.contains(&method.as_str()) {
            path_item.insert(method, operation);
        } else if let Value::Object(others) = path_item
            .entry("x-palisade-other-operations")
            .or_insert_with(|| json!({}))
        {
            others.insert(item.method.clone(), operation);
        }
    }
    let listed = inventory.items.len();
    let total = inventory.total as usize;
    let mut description =
        format!("The HTTP endpoints Palisade observed for ApiMonitor {monitor_name}: {listed} endpoints");
    if total > listed {
        description.push_str(&format!(
            " (the busiest; {total} were discovered, the status lists at most {})",
            crate::v1alpha1::MAX_ENDPOINTS_IN_STATUS
        ));
    }
    if inventory.overflow_requests > 0 {
        description.push_str(&format!(
            "; {} more requests went to endpoints beyond the per-node limit and are not listed",
            inventory.overflow_requests
        ));
    }
    description.push_str(". Identifiers in paths are templated as path parameters.");
    let mut document = json!({
        "openapi": "3.0.3",
        "info": {
            "title": format!("{monitor_name} (discovered by Palisade)"),
            "version": "discovered",
            "description": description,
        },
        "paths": paths,
        "x-palisade-monitor": monitor_name,
        "x-palisade-endpoints-total": total,
        "x-palisade-overflow-requests": inventory.overflow_requests,
    });
    if !security_schemes.is_empty() {
        document["components"] = json!({"securitySchemes": security_schemes});
    }
    document
}

/// The OpenAPI security scheme for credentials presented as `scheme`, under a component name;
/// `None` for no credentials and for cookies (their name is not recorded).
fn security_scheme(scheme: AuthScheme) -> Option<(&'static str, Value)> {
    let http = |name, scheme| Some((name, json!({"type": "http", "scheme": scheme})));
    let header = |name, header| Some((name, json!({"type": "apiKey", "in": "header", "name": header})));
    match scheme {
        AuthScheme::None | AuthScheme::Cookie => None,
        AuthScheme::Bearer => http("bearerAuth", "bearer"),
        AuthScheme::Basic => http("basicAuth", "basic"),
        AuthScheme::Digest => http("digestAuth", "digest"),
        AuthScheme::Negotiate => http("negotiateAuth", "negotiate"),
        AuthScheme::OtherAuthorization => header("authorizationHeader", "Authorization"),
        AuthScheme::XApiKey => header("xApiKey", "X-Api-Key"),
        AuthScheme::ApiKey => header("apiKey", "Api-Key"),
        AuthScheme::XAuthToken => header("xAuthToken", "X-Auth-Token"),
        AuthScheme::XAccessToken => header("xAccessToken", "X-Access-Token"),
    }
}

/// An operation's `security` and `x-palisade-auth-schemes` from the schemes its requests
/// presented; the schemes used go to `components`.
fn add_security(operation: &mut Value, seen: &[String], components: &mut Map<String, Value>) {
    let schemes: Vec<AuthScheme> = seen.iter().filter_map(|s| AuthScheme::parse(s)).collect();
    if schemes.is_empty() {
        return;
    }
    let mut requirements: Vec<Value> = vec![];
    for scheme in &schemes {
        if let Some((name, definition)) = security_scheme(*scheme) {
            components.insert(name.to_string(), definition);
            requirements.push(json!({ name: [] }));
        }
    }
    if !requirements.is_empty() && schemes.contains(&AuthScheme::None) {
        requirements.push(json!({}));
    }
    if let Value::Object(map) = operation {
        if !requirements.is_empty() {
            map.insert("security".into(), Value::Array(requirements));
        }
        map.insert("x-palisade-auth-schemes".into(), json!(seen));
    }
}

fn operation(item: &EndpointStatus, operation_id: String, params: &[String]) -> Value {
    let parameters: Vec<Value> = params
        .iter()
        .map(|name| {
            json!({
                "name": name,
                "in": "path",
                "required": true,
                "schema": {"type": "string"},
            })
        })
        .collect();
    let mut responses = Map::new();
    for s in &item.statuses {
        let code = if (100..=599).contains(&s.code) {
            s.code.to_string()
        } else {
            "default".to_string()
        };
        let count = responses
            .get(&code)
            .and_then(|r| r.get("x-palisade-count"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
            + s.count;
        responses.insert(
            code,
            json!({"description": reason_phrase(s.code), "x-palisade-count": count}),
        );
    }
    if responses.is_empty() {
        responses.insert("default".into(), json!({"description": "no response observed"}));
    }
    let mut op = json!({
        "operationId": operation_id,
        "summary": format!("{} {}", item.method, item.path),
        "responses": responses,
        "x-palisade-requests": item.requests,
        "x-palisade-east-west-requests": item.east_west_requests,
    });
    if let Value::Object(map) = &mut op {
        if !parameters.is_empty() {
            map.insert("parameters".into(), Value::Array(parameters));
        }
        if !item.request_content_types.is_empty() {
            let content: Map<String, Value> = item
                .request_content_types
                .iter()
                .map(|t| (t.clone(), json!({})))
                .collect();
            map.insert("requestBody".into(), json!({ "content": content }));
        }
        if !item.response_content_types.is_empty() {
            map.insert(
                "x-palisade-response-content-types".into(),
                json!(item.response_content_types),
            );
        }
        if !item.pii_types.is_empty() {
            map.insert("x-palisade-pii-types".into(), json!(item.pii_types));
        }
        if let Some(l) = &item.latency {
            map.insert(
                "x-palisade-latency".into(),
                json!({"p50Micros": l.p50_micros, "p99Micros": l.p99_micros, "maxMicros": l.max_micros}),
            );
        }
        if let Some(seen) = &item.last_seen {
            map.insert("x-palisade-last-seen".into(), json!(seen.0.to_string()));
        }
    }
    op
}

/// The path with unique parameter names, and those names in order.
fn openapi_path(template: &str) -> (String, Vec<String>) {
    let mut params: Vec<String> = vec![];
    let mut out = String::with_capacity(template.len());
    for (i, segment) in template.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let Some(inner) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
            out.push_str(segment);
            continue;
        };
        let base: String = inner
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        // The agent's `{...}` (a path cut at its segment limit) has no usable name.
        let base = if base.is_empty() { "rest".to_string() } else { base };
        let mut name = base.clone();
        let mut n = 2;
        while params.contains(&name) {
            name = format!("{base}{n}");
            n += 1;
        }
        out.push('{');
        out.push_str(&name);
        out.push('}');
        params.push(name);
    }
    if out.is_empty() {
        out.push('/');
    }
    (out, params)
}

/// `get` + `/users/{id}` -> `get_users_id`.
fn operation_id(method: &str, path: &str) -> String {
    let words: Vec<&str> = path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        format!("{method}_root")
    } else {
        format!("{method}_{}", words.join("_"))
    }
}

fn reason_phrase(code: u16) -> &'static str {
    let phrase = match code {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    };
    if !phrase.is_empty() {
        return phrase;
    }
    match code {
        100..=199 => "Informational response",
        200..=299 => "Success",
        300..=399 => "Redirection",
        400..=499 => "Client error",
        500..=599 => "Server error",
        _ => "Response with a status code outside 100-599",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openapi::parse_operations;
    use crate::v1alpha1::{EndpointInventory, StatusCount};

    fn endpoint(method: &str, path: &str, requests: u64, statuses: &[(u16, u64)]) -> EndpointStatus {
        EndpointStatus {
            method: method.into(),
            path: path.into(),
            requests,
            east_west_requests: 1,
            exceptions: 0,
            statuses: statuses
                .iter()
                .map(|(code, count)| StatusCount {
                    code: *code,
                    count: *count,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn status(items: Vec<EndpointStatus>, total: u32) -> ApiMonitorStatus {
        ApiMonitorStatus {
            endpoints: EndpointInventory {
                total,
                overflow_requests: 0,
                items,
            },
            ..Default::default()
        }
    }

    #[test]
    fn one_operation_per_method_and_path_with_params_and_responses() {
        let doc = inventory_to_openapi(
            "demo-api",
            &status(
                vec![
                    endpoint("GET", "/users/{id}", 42, &[(200, 40), (404, 2)]),
                    endpoint("DELETE", "/users/{id}", 1, &[(204, 1)]),
                    endpoint("POST", "/login", 3, &[]),
                    endpoint("GET", "/users/{id}/orders/{id}", 5, &[(200, 5)]),
                    endpoint("PROPFIND", "/dav", 1, &[(207, 1)]),
                    endpoint("GET", "/", 2, &[(200, 2)]),
                ],
                6,
            ),
        );
        assert_eq!(doc["openapi"], "3.0.3");
        assert!(doc["info"]["title"]
            .as_str()
            .is_some_and(|t| t.contains("demo-api")));
        let get = &doc["paths"]["/users/{id}"]["get"];
        assert_eq!(get["x-palisade-requests"], 42);
        assert_eq!(get["operationId"], "get_users_id");
        assert_eq!(get["responses"]["200"]["x-palisade-count"], 40);
        assert_eq!(get["responses"]["404"]["description"], "Not Found");
        assert_eq!(
            get["parameters"],
            json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}])
        );
        assert_eq!(doc["paths"]["/users/{id}"]["delete"]["x-palisade-requests"], 1);
        let login = &doc["paths"]["/login"]["post"];
        assert!(login.get("parameters").is_none());
        assert_eq!(
            login["responses"]["default"]["description"],
            "no response observed"
        );
        let nested = &doc["paths"]["/users/{id}/orders/{id2}"]["get"];
        let names: Vec<&str> = nested["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(names, vec!["id", "id2"], "parameter names are unique in a path");
        assert_eq!(
            doc["paths"]["/dav"]["x-palisade-other-operations"]["PROPFIND"]["x-palisade-requests"],
            1
        );
        assert_eq!(doc["paths"]["/"]["get"]["operationId"], "get_root");
    }

    #[test]
    fn the_document_reads_back_as_the_inventory() {
        let items = vec![
            endpoint("GET", "/users/{id}", 4, &[(200, 4)]),
            endpoint("POST", "/login", 3, &[(401, 3)]),
            endpoint("GET", "/files/{...}", 1, &[(404, 1)]),
        ];
        let doc = inventory_to_openapi("m", &status(items, 3));
        let text = serde_json::to_string(&doc).unwrap_or_default();
        let ops: Vec<(String, String)> = parse_operations(&text)
            .unwrap_or_default()
            .into_iter()
            .map(|o| (o.method, o.path))
            .collect();
        assert_eq!(
            ops,
            vec![
                ("GET".to_string(), "/files/{rest}".to_string()),
                ("POST".to_string(), "/login".to_string()),
                ("GET".to_string(), "/users/{id}".to_string()),
            ]
        );
        let yaml = serde_yaml::to_string(&doc).unwrap_or_default();
        assert_eq!(parse_operations(&yaml).map(|o| o.len()), Ok(3), "{yaml}");
    }

    #[test]
    fn observed_credentials_media_types_and_latency_are_written_as_openapi() {
        let mut login = endpoint("POST", "/login", 3, &[(200, 2), (401, 1)]);
        login.request_content_types = vec!["application/json".into()];
        login.response_content_types = vec!["application/json".into()];
        login.auth_schemes = vec!["none".into()];
        let mut user = endpoint("GET", "/users/{id}", 9, &[(200, 9)]);
        user.auth_schemes = vec![
            "none".into(),
            "bearer".into(),
            "x-api-key".into(),
            "cookie".into(),
        ];
        user.pii_types = vec!["email".into()];
        user.latency = Some(crate::v1alpha1::EndpointLatency {
            p50_micros: 250,
            p99_micros: 1_000,
            max_micros: 900,
            buckets: vec![],
        });
        let doc = inventory_to_openapi("m", &status(vec![login, user], 2));
        let post = &doc["paths"]["/login"]["post"];
        assert_eq!(post["requestBody"], json!({"content": {"application/json": {}}}));
        assert_eq!(
            post["x-palisade-response-content-types"],
            json!(["application/json"])
        );
        assert!(post.get("security").is_none(), "no credentials: no requirement");
        let get = &doc["paths"]["/users/{id}"]["get"];
        assert_eq!(
            get["security"],
            json!([{"bearerAuth": []}, {"xApiKey": []}, {}]),
            "anonymous requests too: the empty requirement makes auth optional"
        );
        assert_eq!(
            get["x-palisade-auth-schemes"],
            json!(["none", "bearer", "x-api-key", "cookie"])
        );
        assert_eq!(get["x-palisade-pii-types"], json!(["email"]));
        assert_eq!(get["x-palisade-latency"]["p99Micros"], 1_000);
        assert_eq!(
            doc["components"]["securitySchemes"],
            json!({
                "bearerAuth": {"type": "http", "scheme": "bearer"},
                "xApiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
            })
        );
        let text = serde_json::to_string(&doc).unwrap_or_default();
        assert_eq!(
            parse_operations(&text).map(|o| o.len()),
            Ok(2),
            "still a document we read"
        );
    }

    #[test]
    fn a_truncated_inventory_says_so() {
        let doc = inventory_to_openapi("m", &status(vec![endpoint("GET", "/a", 1, &[])], 120));
        assert_eq!(doc["x-palisade-endpoints-total"], 120);
        let description = doc["info"]["description"].as_str().unwrap_or_default();
        assert!(description.contains("120 were discovered"), "{description}");
        let empty = inventory_to_openapi("m", &ApiMonitorStatus::default());
        assert_eq!(empty["paths"], json!({}));
    }
}
