//! The operations of an OpenAPI document: JSON or YAML, OpenAPI 3.x or Swagger 2.0.
//!
//! What is read, and how:
//! - the version: `openapi: 3.x` or `swagger: "2.0"`; anything else is refused;
//! - `paths`: every path item and its operations (`get`, `put`, `post`, `delete`, `options`,
//!   `head`, `patch`, `trace`), with `deprecated: true` on operations; `x-` extension keys are
//!   skipped, path items given by a local `$ref` (`#/...`) are followed, external ones refused;
//! - the path prefix each operation is served under: Swagger 2.0's `basePath`; for 3.x the path
//!   component of `servers[].url` (variables replaced by their defaults, scheme and host dropped),
//!   where servers of an operation override those of its path item, which override the
//!   document's. An operation served under several prefixes is listed once per prefix.
//!
//! Nothing else (schemas, parameters, security) matters for shadow and zombie endpoints.

use super::OPERATION_METHODS;
use crate::agent::ApiOperation;
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Largest document accepted, in bytes (a ConfigMap holds at most 1 MiB anyway).
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Most operations accepted (after expansion over server prefixes).
pub const MAX_OPERATIONS: usize = 2000;
/// Most levels of local `$ref` followed for one path item.
const MAX_REF_DEPTH: usize = 8;

/// Why a document's operations could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenApiError {
    #[error("the document is {bytes} bytes, more than the {max} accepted")]
    TooLarge { bytes: usize, max: usize },
    #[error("the document is not valid {format}: {message}")]
    Syntax { format: &'static str, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("the document has more than {max} operations (counting each server path prefix)")]
    TooManyOperations { max: usize },
}

impl OpenApiError {
    /// A CamelCase reason for a status condition.
    pub fn reason(&self) -> &'static str {
        match self {
            OpenApiError::TooLarge { .. } => "OpenApiDocumentTooLarge",
            OpenApiError::Syntax { .. } => "OpenApiDocumentUnparsable",
            OpenApiError::Invalid(_) => "OpenApiDocumentInvalid",
            OpenApiError::TooManyOperations { .. } => "OpenApiTooManyOperations",
        }
    }
}

/// The operations of an OpenAPI 3.x or Swagger 2.0 document (JSON or YAML), sorted by path then
/// method, each `(method, path)` once; deprecated only if it is deprecated wherever it is listed.
pub fn parse_operations(text: &str) -> Result<Vec<ApiOperation>, OpenApiError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(OpenApiError::TooLarge {
            bytes: text.len(),
            max: MAX_DOCUMENT_BYTES,
        });
    }
    let root: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| OpenApiError::Syntax {
            format: "JSON",
            message: e.to_string(),
        })?
    } else {
        serde_yaml::from_str(text).map_err(|e| OpenApiError::Syntax {
            format: "YAML",
            message: e.to_string(),
        })?
    };
    let Some(doc) = root.as_mapping() else {
        return Err(invalid(if root.is_null() {
            "the document is empty".into()
        } else {
            "the document is not a mapping (expected `openapi: 3.x` and `paths` at the top level)".into()
        }));
    };
    let version = version(doc)?;
    let top_prefixes = match version {
        Version::Swagger2 => vec![swagger_base_path(doc)?],
        Version::OpenApi3 => {
            server_prefixes(doc.get("servers"), "servers")?.unwrap_or_else(|| vec![String::new()])
        }
    };

    let paths = match doc.get("paths") {
        None | Some(Value::Null) => return Ok(vec![]),
        Some(Value::Mapping(m)) => m,
        Some(_) => return Err(invalid("`paths` is not a mapping".into())),
    };
    // (path, method) -> deprecated
    let mut operations: BTreeMap<(String, String), bool> = BTreeMap::new();
    for (key, item) in paths {
        let Some(path) = key.as_str() else {
            return Err(invalid(format!("paths: key {} is not a string", describe(key))));
        };
        if path.starts_with("x-") {
            continue;
        }
        if !path.starts_with('/') {
            return Err(invalid(format!("paths: `{path}` does not start with /")));
        }
        let item = resolve_path_item(&root, path, item)?;
        let item_prefixes = match version {
            Version::Swagger2 => None,
            Version::OpenApi3 => server_prefixes(item.get("servers"), &format!("paths.{path}.servers"))?,
        };
        for (method_key, op) in item {
            let Some(method) = method_key
                .as_str()
                .map(|m| m.to_ascii_lowercase())
                .filter(|m| OPERATION_METHODS.contains(&m.as_str()))
            else {
                continue;
            };
            let Some(op) = op.as_mapping() else {
                return Err(invalid(format!("paths.{path}.{method} is not a mapping")));
            };
            let deprecated = match op.get("deprecated") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
                Some(other) => {
                    return Err(invalid(format!(
                        "paths.{path}.{method}.deprecated is {}, not true or false",
                        describe(other)
                    )))
                }
            };
            let op_prefixes = match version {
                Version::Swagger2 => None,
                Version::OpenApi3 => {
                    server_prefixes(op.get("servers"), &format!("paths.{path}.{method}.servers"))?
                }
            };
            let prefixes = op_prefixes
                .as_ref()
                .or(item_prefixes.as_ref())
                .unwrap_or(&top_prefixes);
            for prefix in prefixes {
                let full = join(prefix, path);
                let id = (full, method.to_ascii_uppercase());
                if !operations.contains_key(&id) && operations.len() >= MAX_OPERATIONS {
                    return Err(OpenApiError::TooManyOperations { max: MAX_OPERATIONS });
                }
                let entry = operations.entry(id).or_insert(deprecated);
                *entry = *entry && deprecated;
            }
        }
    }
    Ok(operations
        .into_iter()
        .map(|((path, method), deprecated)| ApiOperation {
            method,
            path,
            deprecated,
        })
        .collect())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Swagger2,
    OpenApi3,
}

fn invalid(message: String) -> OpenApiError {
    OpenApiError::Invalid(message)
}

/// A short, bounded rendering of a YAML value for error messages.
fn describe(v: &Value) -> String {
    let text = match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("`{s}`"),
        Value::Sequence(_) => "a list".to_string(),
        Value::Mapping(_) => "a mapping".to_string(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    };
    text.chars().take(80).collect()
}

/// A scalar as text (`3.0` unquoted in YAML is a number).
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn version(doc: &Mapping) -> Result<Version, OpenApiError> {
    if let Some(v) = doc.get("openapi") {
        let text = scalar_text(v).unwrap_or_default();
        return if text.starts_with("3.") || text == "3" {
            Ok(Version::OpenApi3)
        } else {
            Err(invalid(format!(
                "openapi version {} is not supported (OpenAPI 3.x and Swagger 2.0 are)",
                describe(v)
            )))
        };
    }
    if let Some(v) = doc.get("swagger") {
        let text = scalar_text(v).unwrap_or_default();
        return if text == "2.0" || text == "2" {
            Ok(Version::Swagger2)
        } else {
            Err(invalid(format!(
                "swagger version {} is not supported (OpenAPI 3.x and Swagger 2.0 are)",
                describe(v)
            )))
        };
    }
    Err(invalid(
        "neither `openapi: 3.x` nor `swagger: \"2.0\"` at the top level: not an OpenAPI document".into(),
    ))
}

/// Swagger 2.0's `basePath` as a prefix: `""` for `/`, else `/v1` (no trailing slash).
fn swagger_base_path(doc: &Mapping) -> Result<String, OpenApiError> {
    match doc.get("basePath") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(normalize_prefix(s)),
        Some(other) => Err(invalid(format!("basePath is {}, not a string", describe(other)))),
    }
}

/// The distinct path prefixes of a `servers` list; `None` when there is no (or an empty) list.
fn server_prefixes(servers: Option<&Value>, at: &str) -> Result<Option<Vec<String>>, OpenApiError> {
    let list = match servers {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Sequence(list)) => list,
        Some(other) => return Err(invalid(format!("{at} is {}, not a list", describe(other)))),
    };
    let mut prefixes = BTreeSet::new();
    for (i, server) in list.iter().enumerate() {
        let Some(url) = server.get("url").and_then(Value::as_str) else {
            return Err(invalid(format!("{at}[{i}].url is missing or not a string")));
        };
        prefixes.insert(server_path(url, server.get("variables")));
    }
    Ok((!prefixes.is_empty()).then(|| prefixes.into_iter().collect()))
}

/// The path component of a server URL as a prefix (`https://api.example.com/v1/` -> `/v1`),
/// `{variables}` replaced by their defaults; unknown variables stay templates (one segment each).
fn server_path(url: &str, variables: Option<&Value>) -> String {
    let mut url = url.to_string();
    if let Some(vars) = variables.and_then(Value::as_mapping) {
        for (name, var) in vars {
            let (Some(name), Some(default)) = (name.as_str(), var.get("default").and_then(scalar_text))
            else {
                continue;
            };
            url = url.replace(&format!("{{{name}}}"), &default);
        }
    }
    let without_query = url.split(['?', '#']).next().unwrap_or_default();
    let path = if let Some((_, rest)) = without_query.split_once("://") {
        rest.find('/').map(|i| &rest[i..]).unwrap_or("")
    } else if let Some(rest) = without_query.strip_prefix("//") {
        rest.find('/').map(|i| &rest[i..]).unwrap_or("")
    } else {
        without_query
    };
    normalize_prefix(path)
}

/// `v1/` -> `/v1`, `/` -> `` (the empty prefix).
fn normalize_prefix(p: &str) -> String {
    let trimmed = p.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    }
}

fn join(prefix: &str, path: &str) -> String {
    if path == "/" && !prefix.is_empty() {
        prefix.to_string()
    } else {
        format!("{prefix}{path}")
    }
}

/// A path item, following local `$ref`s (`#/components/pathItems/x`).
fn resolve_path_item<'a>(root: &'a Value, path: &str, item: &'a Value) -> Result<&'a Mapping, OpenApiError> {
    let mut current = item;
    for _ in 0..=MAX_REF_DEPTH {
        let Some(map) = current.as_mapping() else {
            return Err(invalid(format!("paths.{path} is not a mapping")));
        };
        let Some(reference) = map.get("$ref") else {
            return Ok(map);
        };
        let Some(reference) = reference.as_str() else {
            return Err(invalid(format!("paths.{path}.$ref is not a string")));
        };
        let Some(pointer) = reference.strip_prefix('#') else {
            return Err(invalid(format!(
                "paths.{path}.$ref: the external reference `{reference}` is not supported; inline the path item"
            )));
        };
        current = json_pointer(root, pointer).ok_or_else(|| {
            invalid(format!(
                "paths.{path}.$ref: `{reference}` points to nothing in the document"
            ))
        })?;
    }
    Err(invalid(format!(
        "paths.{path}.$ref: more than {MAX_REF_DEPTH} levels of references"
    )))
}

/// RFC 6901 pointer (`/components/pathItems/a~1b`) into a YAML value.
fn json_pointer<'a>(root: &'a Value, pointer: &str) -> Option<&'a Value> {
    if pointer.is_empty() {
        return Some(root);
    }
    let mut current = root;
    for token in pointer.strip_prefix('/')?.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        current = match current {
            Value::Mapping(m) => m.get(token.as_str())?,
            Value::Sequence(s) => s.get(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(text: &str) -> Vec<(String, String, bool)> {
        parse_operations(text)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|o| (o.method, o.path, o.deprecated))
            .collect()
    }

    fn op(method: &str, path: &str, deprecated: bool) -> (String, String, bool) {
        (method.into(), path.into(), deprecated)
    }

    #[test]
    fn openapi3_yaml_with_servers_params_and_deprecation() {
        let doc = r#"
openapi: 3.0.3
info: {title: demo, version: "1"}
servers:
  - url: https://api.example.com/v1/
  - url: "{scheme}://staging.example.com/{base}"
    variables:
      scheme: {default: https}
      base: {default: v1}
paths:
  /users/{id}:
    parameters:
      - {name: id, in: path, required: true}
    get:
      responses:
        200: {description: ok}
    DELETE:
      deprecated: true
      responses:
        "204": {description: gone}
  /:
    get: {responses: {"200": {description: root}}}
  /internal/metrics:
    servers: [{url: /}]
    get: {deprecated: false}
    post:
      servers: [{url: "http://admin.local/admin"}]
  x-ignored: {get: {}}
"#;
        assert_eq!(
            ops(doc),
            vec![
                op("POST", "/admin/internal/metrics", false),
                op("GET", "/internal/metrics", false),
                op("GET", "/v1", false),
                op("DELETE", "/v1/users/{id}", true),
                op("GET", "/v1/users/{id}", false),
            ]
        );
    }

    #[test]
    fn openapi3_json_without_servers_and_unquoted_versions() {
        let doc = r#"{"openapi": "3.1.0", "info": {}, "paths": {
            "/login": {"post": {"responses": {}}},
            "/files/{name}": {"get": {"deprecated": true}, "summary": "files"}
        }}"#;
        assert_eq!(
            ops(doc),
            vec![op("GET", "/files/{name}", true), op("POST", "/login", false)]
        );
        assert_eq!(
            ops("openapi: 3.0\npaths: {/a: {get: {}}}"),
            vec![op("GET", "/a", false)]
        );
        assert_eq!(
            ops("openapi: 3.1.0\ninfo: {}"),
            vec![],
            "3.1 documents may have no paths"
        );
    }

    #[test]
    fn swagger2_json_and_yaml_with_base_path() {
        let json = r#"{"swagger": "2.0", "basePath": "/api/", "paths": {
            "/pets": {"get": {}, "post": {"deprecated": true}},
            "/pets/{petId}": {"get": {}}
        }}"#;
        assert_eq!(
            ops(json),
            vec![
                op("GET", "/api/pets", false),
                op("POST", "/api/pets", true),
                op("GET", "/api/pets/{petId}", false),
            ]
        );
        let yaml =
            "swagger: 2.0\npaths:\n  /pets:\n    get:\n      responses:\n        200: {description: ok}\n";
        assert_eq!(
            ops(yaml),
            vec![op("GET", "/pets", false)],
            "no basePath: served at /"
        );
    }

    #[test]
    fn local_refs_are_followed_and_duplicates_merged() {
        let doc = r##"
openapi: 3.1.0
servers: [{url: /v1}, {url: "https://other.example.com/v1"}]
components:
  pathItems:
    health: {get: {}}
paths:
  /healthz: {$ref: "#/components/pathItems/health"}
"##;
        assert_eq!(ops(doc), vec![op("GET", "/v1/healthz", false)]);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = |text: &str| parse_operations(text).err().map(|e| (e.reason(), e.to_string()));
        let (reason, msg) = err("{\"openapi\": \"3.0.0\", \"paths\": {").unwrap_or_default();
        assert_eq!(reason, "OpenApiDocumentUnparsable");
        assert!(msg.contains("not valid JSON") && msg.contains("line 1"), "{msg}");
        let (reason, msg) = err("openapi: 3.0.0\npaths: [unclosed").unwrap_or_default();
        assert_eq!(reason, "OpenApiDocumentUnparsable");
        assert!(msg.contains("not valid YAML"), "{msg}");
        let (reason, msg) = err("title: not an api\npaths: {}").unwrap_or_default();
        assert_eq!(reason, "OpenApiDocumentInvalid");
        assert!(msg.contains("not an OpenAPI document"), "{msg}");
        assert!(err("swagger: \"1.2\"").is_some_and(|(_, m)| m.contains("1.2")));
        assert!(err("openapi: 2.0.0").is_some_and(|(_, m)| m.contains("not supported")));
        assert!(err("").is_some_and(|(_, m)| m.contains("empty")));
        let relative = err("openapi: 3.0.0\npaths:\n  users: {get: {}}");
        assert!(relative.is_some_and(|(_, m)| m.contains("`users`")));
        assert!(err("openapi: 3.0.0\npaths:\n  /u: {get: {deprecated: 1}}")
            .is_some_and(|(_, m)| m.contains("deprecated")));
        assert!(err("openapi: 3.0.0\npaths:\n  /u: {$ref: 'other.yaml#/x'}")
            .is_some_and(|(_, m)| m.contains("external")));
        assert!(err("openapi: 3.0.0\npaths:\n  /u: {$ref: '#/nowhere'}")
            .is_some_and(|(_, m)| m.contains("points to nothing")));
        assert!(
            err("openapi: 3.0.0\nservers: {url: /}\npaths: {}").is_some_and(|(_, m)| m.contains("servers"))
        );

        let big = format!("openapi: 3.0.0\n# {}\n", "x".repeat(MAX_DOCUMENT_BYTES));
        assert_eq!(err(&big).map(|e| e.0), Some("OpenApiDocumentTooLarge"));

        let mut many = String::from("openapi: 3.0.0\npaths:\n");
        for i in 0..=MAX_OPERATIONS {
            many.push_str(&format!("  /p{i}: {{get: {{}}}}\n"));
        }
        assert_eq!(err(&many).map(|e| e.0), Some("OpenApiTooManyOperations"));
        let mut exactly = String::from("openapi: 3.0.0\npaths:\n");
        for i in 0..MAX_OPERATIONS {
            exactly.push_str(&format!("  /p{i}: {{get: {{}}}}\n"));
        }
        assert_eq!(parse_operations(&exactly).map(|o| o.len()), Ok(MAX_OPERATIONS));
    }

    #[test]
    fn yaml_alias_bombs_are_refused_not_expanded() {
        let mut doc = String::from("openapi: 3.0.0\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = i - 1;
            let refs = vec![format!("*a{prev}"); 10].join(", ");
            doc.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        doc.push_str("paths: {}\n");
        assert_eq!(
            parse_operations(&doc).err().map(|e| e.reason()),
            Some("OpenApiDocumentUnparsable")
        );
    }
}
