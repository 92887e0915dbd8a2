//! Shadow and zombie endpoints: traffic the API answers on operations its OpenAPI document does
//! not have (shadow), or marks `deprecated` (zombie). The document comes with the monitor
//! (`spec.openApi`), compiled into an [`OpenApiIndex`] per monitor by the runtime.
//!
//! Requests answered 404 or 405 by default are not judged: they reached nothing that exists
//! (scanners probe thousands of paths; that is `rateAbuse`'s business). CORS preflights
//! (`OPTIONS` with `Access-Control-Request-Method`) are not judged either.

use super::behaviour::ExchangeView;
use super::decode::percent_decode_once;
use crate::openapi::{EndpointClass, OpenApiIndex};
use std::collections::BTreeMap;

pub struct ShadowEndpoint {
    ignore_statuses: Vec<u16>,
    zombies: bool,
}

impl ShadowEndpoint {
    pub fn compile(params: &BTreeMap<String, String>) -> Result<ShadowEndpoint, String> {
        const KNOWN: &[&str] = &["ignoreStatuses", "zombies"];
        if let Some(k) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(format!(
                "unknown parameter {k:?} for detector shadowEndpoint (known: {})",
                KNOWN.join(", ")
            ));
        }
        let ignore_statuses = match params.get("ignoreStatuses") {
            None => vec![404, 405],
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| match s.parse::<u16>() {
                    Ok(code) if (100..=599).contains(&code) => Ok(code),
                    _ => Err(format!(
                        "params.ignoreStatuses of shadowEndpoint: {s:?} is not an HTTP status code"
                    )),
                })
                .collect::<Result<_, _>>()?,
        };
        let zombies = match params.get("zombies").map(|z| z.trim()) {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(format!(
                    "params.zombies of shadowEndpoint must be \"true\" or \"false\", not {other:?}"
                ))
            }
        };
        Ok(ShadowEndpoint {
            ignore_statuses,
            zombies,
        })
    }

    /// Judges an exchange against the monitor's document (None when the monitor has none: the
    /// runtime reports that as a policy error once, not per request).
    pub fn evaluate(&self, ex: &ExchangeView, index: Option<&OpenApiIndex>) -> Option<String> {
        let index = index?;
        if self.ignore_statuses.contains(&ex.status) {
            return None;
        }
        let method = ex.request.method;
        if method == "OPTIONS"
            && ex
                .request
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("access-control-request-method"))
        {
            return None;
        }
        let raw_path = ex.request.target.split(['?', '#']).next().unwrap_or("");
        let path = percent_decode_once(raw_path);
        match index.classify(method, &path) {
            EndpointClass::Documented => None,
            EndpointClass::Deprecated if !self.zombies => None,
            EndpointClass::Deprecated => {
                let op = index.lookup(method, &path)?;
                Some(format!(
                    "zombie endpoint: {} {} is deprecated in the OpenAPI document and still answered {}",
                    op.method, op.template, ex.status
                ))
            }
            EndpointClass::Undocumented if index.documents_path(&path) => Some(format!(
                "shadow operation: {method} {} is not in the OpenAPI document (the path is, with other methods); answered {}",
                ex.template, ex.status
            )),
            EndpointClass::Undocumented => Some(format!(
                "shadow endpoint: {method} {} is not in the OpenAPI document; answered {}",
                ex.template, ex.status
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::RequestView;
    use palisade_api::agent::ApiOperation;

    fn index() -> OpenApiIndex {
        let op = |method: &str, path: &str, deprecated: bool| ApiOperation {
            method: method.into(),
            path: path.into(),
            deprecated,
        };
        OpenApiIndex::new(&[
            op("GET", "/users/{id}", false),
            op("GET", "/v1/users/{id}", true),
            op("POST", "/login", false),
        ])
    }

    fn judge(rule: &ShadowEndpoint, method: &str, target: &str, status: u16) -> Option<String> {
        let template = crate::template::template_path(target);
        rule.evaluate(
            &ExchangeView {
                request: RequestView {
                    method,
                    target,
                    headers: crate::http::HeaderFields::empty(),
                    body: None,
                },
                source: "10.0.0.9",
                template: &template,
                status,
                response_body: None,
                now_ns: 0,
            },
            Some(&index()),
        )
    }

    #[test]
    fn shadow_zombie_and_documented_traffic() {
        let rule = ShadowEndpoint::compile(&BTreeMap::new()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(judge(&rule, "GET", "/users/7?x=1", 200), None);
        assert_eq!(judge(&rule, "HEAD", "/users/7", 200), None);
        assert_eq!(
            judge(&rule, "GET", "/export/users", 200).as_deref(),
            Some("shadow endpoint: GET /export/users is not in the OpenAPI document; answered 200")
        );
        assert_eq!(
            judge(&rule, "DELETE", "/users/7", 204).as_deref(),
            Some("shadow operation: DELETE /users/{id} is not in the OpenAPI document (the path is, with other methods); answered 204")
        );
        assert_eq!(
            judge(&rule, "GET", "/v1/users/3", 200).as_deref(),
            Some("zombie endpoint: GET /v1/users/{id} is deprecated in the OpenAPI document and still answered 200")
        );
        // Probes for things that do not exist are not shadow endpoints.
        assert_eq!(judge(&rule, "GET", "/wp-admin/setup.php", 404), None);
        assert_eq!(judge(&rule, "GET", "/%65xport/users", 404), None);
        assert!(judge(&rule, "GET", "/%65xport/users", 200).is_some_and(|e| e.contains("shadow endpoint")));
    }

    #[test]
    fn parameters_are_checked() {
        let params = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let quiet_zombies =
            ShadowEndpoint::compile(&params("zombies", "false")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(judge(&quiet_zombies, "GET", "/v1/users/3", 200), None);
        let strict = ShadowEndpoint::compile(&params("ignoreStatuses", "")).unwrap_or_else(|e| panic!("{e}"));
        assert!(judge(&strict, "GET", "/nothing", 404).is_some());
        for (k, v, needle) in [
            ("ignoreStatuses", "404,abc", "not an HTTP status"),
            ("zombies", "yes", "params.zombies"),
            ("deprecated", "true", "unknown parameter"),
        ] {
            let err = ShadowEndpoint::compile(&params(k, v)).err().unwrap_or_default();
            assert!(err.contains(needle), "{err}");
        }
    }
}
