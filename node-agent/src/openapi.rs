//! Shadow and zombie endpoints: which operation of the monitor's OpenAPI document a request is.
//!
//! The operator parses the document (`spec.openApi`) and sends its operations in
//! `MonitorConfig.api_operations`; [`OpenApiIndex`] compiles them into a segment trie that
//! classifies a request in one walk down the trie, without allocating:
//!
//! - `path` is the concrete request path: no query, percent-decoded once (by the caller).
//!   Templates' literal segments are percent-decoded once too, so both sides compare decoded.
//! - A literal segment matches exactly (case-sensitive); `{name}` matches any one non-empty
//!   segment; a segment mixing both (`{name}.json`, `v{major}`) matches its literals in order,
//!   each `{...}` standing for at least one character.
//! - When several templates match, the most specific wins, segment by segment from the left:
//!   literal over mixed over `{param}` (`/users/me` over `/users/{id}`), so a deprecated
//!   `/users/me` is a zombie even though `/users/{id}` is documented.
//! - The method must match: a template only counts if it has an operation for the request's
//!   method, so `DELETE /users/42` with only `GET /users/{id}` documented is `Undocumented` (a
//!   shadow *operation*; [`OpenApiIndex::documents_path`] tells it from an unknown path). When
//!   the most specific template lacks the method, less specific ones are tried: with
//!   `GET /users/me` and `DELETE /users/{id}`, `DELETE /users/me` is `Documented`.
//! - `HEAD` is answered by a `HEAD` operation, or else by the `GET` operation of the same
//!   template (HTTP servers answer HEAD for every GET). No other method is implied: `OPTIONS`
//!   (CORS preflight) is documented only if the document says so.
//! - Methods OpenAPI has no operations for (`PROPFIND`, `CONNECT`, lower-case spellings) are
//!   always `Undocumented`; so is a path that does not start with `/` (`*`, absolute-form).
//! - Trailing slash: tolerated on both sides, `/users/` is `/users` (most frameworks route them
//!   alike, and documents are inconsistent about it). Empty segments inside a path (`/a//b`) are
//!   not collapsed: they match no `{param}` and so, usually, nothing.

use palisade_api::agent::{ApiOperation, MonitorConfig};
use rustc_hash::FxHashMap;

/// What a request is with respect to the monitor's OpenAPI document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointClass {
    /// An operation of the document.
    Documented,
    /// An operation the document marks `deprecated: true` (a zombie endpoint).
    Deprecated,
    /// No operation of the document for this method and path (a shadow endpoint or operation).
    Undocumented,
}

/// The operation a request matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatchedOperation<'a> {
    /// The operation's method as documented (`GET` for a `HEAD` answered by a `GET` operation).
    pub method: &'static str,
    /// The operation's path template as documented, for example `/v1/users/{id}`.
    pub template: &'a str,
    pub deprecated: bool,
}

/// Methods with operations in OpenAPI, in a fixed order (the index of each in [`Node::ops`]).
const METHODS: [&str; 8] = [
    "GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE",
];
const GET: usize = 0;
const HEAD: usize = 5;
/// Deepest template indexed (segments); deeper operations are dropped.
const MAX_DEPTH: usize = 64;
/// Most `{...}` in one mixed segment; a segment with more is treated as one `{param}`.
const MAX_PARAMS_PER_SEGMENT: usize = 4;

fn method_index(method: &str) -> Option<usize> {
    METHODS.iter().position(|m| *m == method)
}

/// A segment mixing literals and `{params}`, such as `{name}.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(Box<str>),
    Param,
}

#[derive(Debug, Clone)]
struct Operation {
    template: Box<str>,
    deprecated: bool,
}

#[derive(Debug, Default)]
struct Node {
    literals: FxHashMap<Box<str>, u32>,
    /// Most literal characters first (the most specific).
    mixed: Vec<(Vec<Part>, u32)>,
    param: Option<u32>,
    /// Per method of [`METHODS`], the operation ending here.
    ops: [Option<u32>; 8],
}

/// The compiled operations of one monitor's OpenAPI document (see the module docs).
#[derive(Debug)]
pub struct OpenApiIndex {
    nodes: Vec<Node>,
    operations: Vec<Operation>,
    max_depth: usize,
}

impl OpenApiIndex {
    /// The index of a monitor's document, or `None` when the monitor has none that loaded
    /// (`openapi_loaded` false): shadow and zombie endpoints are then not detected.
    pub fn from_config(monitor: &MonitorConfig) -> Option<OpenApiIndex> {
        monitor
            .openapi_loaded
            .then(|| OpenApiIndex::new(&monitor.api_operations))
    }

    /// Compiles operations. Methods OpenAPI has no operations for and templates deeper than 64 segments are
    /// skipped. An operation listed twice is deprecated only if both say so.
    pub fn new(operations: &[ApiOperation]) -> OpenApiIndex {
        let mut index = OpenApiIndex {
            nodes: vec![Node::default()],
            operations: Vec::new(),
            max_depth: 0,
        };
        for op in operations {
            let Some(method) = method_index(&op.method.to_ascii_uppercase()) else {
                continue;
            };
            let segments: Vec<&str> = segments(&op.path).collect();
            if segments.len() > MAX_DEPTH {
                continue;
            }
            index.max_depth = index.max_depth.max(segments.len());
            let mut node = 0usize;
            for segment in segments {
                node = index.child(node, segment);
            }
            match index.nodes[node].ops[method] {
                Some(existing) => {
                    let existing = &mut index.operations[existing as usize];
                    existing.deprecated &= op.deprecated;
                }
                None => {
                    index.nodes[node].ops[method] = Some(index.operations.len() as u32);
                    index.operations.push(Operation {
                        template: op.path.as_str().into(),
                        deprecated: op.deprecated,
                    });
                }
            }
        }
        for node in &mut index.nodes {
            node.mixed.sort_by_key(|(parts, _)| {
                std::cmp::Reverse(
                    parts
                        .iter()
                        .map(|p| match p {
                            Part::Literal(l) => l.len(),
                            Part::Param => 0,
                        })
                        .sum::<usize>(),
                )
            });
        }
        index
    }

    /// Operations indexed (each method and template once).
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// Documented, deprecated or undocumented: see the module docs for the matching rules.
    pub fn classify(&self, method: &str, path: &str) -> EndpointClass {
        match self.lookup(method, path) {
            None => EndpointClass::Undocumented,
            Some(op) if op.deprecated => EndpointClass::Deprecated,
            Some(_) => EndpointClass::Documented,
        }
    }

    /// The most specific operation of the document for this method and concrete path.
    pub fn lookup(&self, method: &str, path: &str) -> Option<MatchedOperation<'_>> {
        let method = method_index(method)?;
        let mut buf = [""; MAX_DEPTH];
        let segs = self.split(path, &mut buf)?;
        let accept = |node: &Node| match node.ops[method] {
            Some(op) => Some((op, method)),
            None if method == HEAD => node.ops[GET].map(|op| (op, GET)),
            None => None,
        };
        let (op, method) = self.find(0, segs, &accept)?;
        let op = &self.operations[op as usize];
        Some(MatchedOperation {
            method: METHODS[method],
            template: &op.template,
            deprecated: op.deprecated,
        })
    }

    /// Whether some template matches the path, whatever its methods: tells a shadow operation
    /// (a documented path, another method) from a shadow path.
    pub fn documents_path(&self, path: &str) -> bool {
        let mut buf = [""; MAX_DEPTH];
        let Some(segs) = self.split(path, &mut buf) else {
            return false;
        };
        self.find(0, segs, &|node: &Node| {
            node.ops.iter().flatten().next().map(|op| (*op, 0))
        })
        .is_some()
    }

    /// The segments of a concrete path into `buf`; `None` when no template can match it.
    fn split<'p, 'b>(&self, path: &'p str, buf: &'b mut [&'p str; MAX_DEPTH]) -> Option<&'b [&'p str]> {
        if !path.starts_with('/') {
            return None;
        }
        let mut n = 0;
        for segment in segments(path) {
            if n >= self.max_depth {
                return None;
            }
            buf[n] = segment;
            n += 1;
        }
        Some(&buf[..n])
    }

    /// Depth-first, most specific child first; every trie node is visited at most once, so a
    /// lookup costs at most the size of the trie, and usually one hash lookup per segment.
    fn find<F>(&self, node: u32, segs: &[&str], accept: &F) -> Option<(u32, usize)>
    where
        F: Fn(&Node) -> Option<(u32, usize)>,
    {
        let n = &self.nodes[node as usize];
        let Some((seg, rest)) = segs.split_first() else {
            return accept(n);
        };
        if let Some(child) = n.literals.get(*seg) {
            if let Some(found) = self.find(*child, rest, accept) {
                return Some(found);
            }
        }
        for (parts, child) in &n.mixed {
            if mixed_matches(parts, seg) {
                if let Some(found) = self.find(*child, rest, accept) {
                    return Some(found);
                }
            }
        }
        match n.param {
            Some(child) if !seg.is_empty() => self.find(child, rest, accept),
            _ => None,
        }
    }

    /// The child of `node` for a template segment, created if needed.
    fn child(&mut self, node: usize, segment: &str) -> usize {
        let next = self.nodes.len() as u32;
        let n = &mut self.nodes[node];
        let child = match parse_segment(segment) {
            SegmentKind::Param => *n.param.get_or_insert(next),
            SegmentKind::Literal(lit) => *n.literals.entry(lit).or_insert(next),
            SegmentKind::Mixed(parts) => match n.mixed.iter().find(|(p, _)| *p == parts) {
                Some((_, existing)) => *existing,
                None => {
                    n.mixed.push((parts, next));
                    next
                }
            },
        };
        if child == next {
            self.nodes.push(Node::default());
        }
        child as usize
    }
}

/// The segments of a path: leading `/` dropped, one trailing `/` ignored, `/` itself has none.
fn segments(path: &str) -> impl Iterator<Item = &str> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let count = if trimmed.is_empty() { 0 } else { usize::MAX };
    trimmed.split('/').take(count)
}

enum SegmentKind {
    Literal(Box<str>),
    Param,
    Mixed(Vec<Part>),
}

fn parse_segment(segment: &str) -> SegmentKind {
    if !segment.contains('{') {
        return SegmentKind::Literal(percent_decode(segment).into());
    }
    let mut parts = vec![];
    let mut rest = segment;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}').map(|c| open + c) else {
            break;
        };
        if open > 0 {
            parts.push(Part::Literal(percent_decode(&rest[..open]).into()));
        }
        if parts.last() != Some(&Part::Param) {
            parts.push(Part::Param);
        }
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(percent_decode(rest).into()));
    }
    let params = parts.iter().filter(|p| **p == Part::Param).count();
    if parts == [Part::Param] || params > MAX_PARAMS_PER_SEGMENT {
        SegmentKind::Param
    } else if params == 0 {
        SegmentKind::Literal(percent_decode(segment).into())
    } else {
        SegmentKind::Mixed(parts)
    }
}

/// Whether a concrete segment matches a mixed template segment (each param: 1+ characters).
fn mixed_matches(parts: &[Part], s: &str) -> bool {
    match parts.split_first() {
        None => s.is_empty(),
        Some((Part::Literal(lit), rest)) => s
            .strip_prefix(&**lit)
            .is_some_and(|tail| mixed_matches(rest, tail)),
        Some((Part::Param, rest)) => s
            .char_indices()
            .skip(1)
            .map(|(i, _)| i)
            .chain((!s.is_empty()).then_some(s.len()))
            .any(|i| mixed_matches(rest, &s[i..])),
    }
}

/// `%XX` decoded once; the input unchanged if the result is not UTF-8.
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use EndpointClass::{Deprecated, Documented, Undocumented};

    fn op(method: &str, path: &str, deprecated: bool) -> ApiOperation {
        ApiOperation {
            method: method.into(),
            path: path.into(),
            deprecated,
        }
    }

    fn demo() -> OpenApiIndex {
        OpenApiIndex::new(&[
            op("GET", "/healthz", false),
            op("GET", "/users/{id}", false),
            op("DELETE", "/users/{userId}", false),
            op("GET", "/users/me", true),
            op("GET", "/users/{id}/orders/{orderId}", false),
            op("POST", "/login", false),
            op("GET", "/search", true),
            op("GET", "/files/{name}.json", false),
            op("GET", "/v{major}/status", false),
            op("GET", "/", false),
        ])
    }

    #[test]
    fn params_match_one_non_empty_segment_and_literals_match_exactly() {
        let idx = demo();
        assert_eq!(idx.len(), 10);
        assert_eq!(idx.classify("GET", "/users/42"), Documented);
        assert_eq!(idx.classify("GET", "/users/alice"), Documented);
        assert_eq!(idx.classify("GET", "/users/42/orders/7"), Documented);
        assert_eq!(
            idx.classify("GET", "/users"),
            Undocumented,
            "a param needs a segment"
        );
        assert_eq!(
            idx.classify("GET", "/users//orders/7"),
            Undocumented,
            "empty segment"
        );
        assert_eq!(idx.classify("GET", "/users/42/orders"), Undocumented);
        assert_eq!(idx.classify("GET", "/users/42/orders/7/items"), Undocumented);
        assert_eq!(idx.classify("GET", "/Healthz"), Undocumented, "case-sensitive");
        assert_eq!(idx.classify("GET", "/healthz"), Documented);
        assert_eq!(idx.classify("GET", "/admin"), Undocumented);
        assert_eq!(idx.classify("GET", "/"), Documented);
        assert_eq!(
            idx.classify("GET", "/a/b/c/d/e/f/g"),
            Undocumented,
            "deeper than any template"
        );
        assert_eq!(
            idx.lookup("GET", "/users/42/orders/7").map(|m| m.template),
            Some("/users/{id}/orders/{orderId}")
        );
    }

    #[test]
    fn the_most_specific_template_with_the_method_wins() {
        let idx = demo();
        assert_eq!(idx.classify("GET", "/users/me"), Deprecated, "literal over param");
        assert_eq!(
            idx.lookup("GET", "/users/me").map(|m| m.template),
            Some("/users/me")
        );
        // /users/me has no DELETE: the less specific /users/{userId} answers.
        assert_eq!(idx.classify("DELETE", "/users/me"), Documented);
        assert_eq!(idx.classify("GET", "/search"), Deprecated);
    }

    #[test]
    fn the_method_must_match() {
        let idx = demo();
        assert_eq!(
            idx.classify("POST", "/users/42"),
            Undocumented,
            "a shadow operation"
        );
        assert!(idx.documents_path("/users/42"), "... on a documented path");
        assert!(!idx.documents_path("/admin"));
        assert_eq!(idx.classify("GET", "/login"), Undocumented);
        assert_eq!(
            idx.classify("PROPFIND", "/users/42"),
            Undocumented,
            "unknown method"
        );
        assert_eq!(
            idx.classify("get", "/users/42"),
            Undocumented,
            "methods are case-sensitive"
        );
        assert_eq!(
            idx.classify("OPTIONS", "/login"),
            Undocumented,
            "OPTIONS is not implied"
        );
    }

    #[test]
    fn head_is_answered_by_get() {
        let idx = demo();
        assert_eq!(idx.classify("HEAD", "/users/42"), Documented);
        assert_eq!(idx.classify("HEAD", "/search"), Deprecated);
        assert_eq!(idx.lookup("HEAD", "/healthz").map(|m| m.method), Some("GET"));
        assert_eq!(
            idx.classify("HEAD", "/login"),
            Undocumented,
            "POST does not answer HEAD"
        );
        let explicit = OpenApiIndex::new(&[op("GET", "/a", false), op("HEAD", "/a", true)]);
        assert_eq!(
            explicit.classify("HEAD", "/a"),
            Deprecated,
            "a HEAD operation comes first"
        );
    }

    #[test]
    fn trailing_slashes_are_tolerated_both_ways() {
        let idx = OpenApiIndex::new(&[op("GET", "/users", false), op("GET", "/items/", false)]);
        assert_eq!(idx.classify("GET", "/users/"), Documented);
        assert_eq!(idx.classify("GET", "/users"), Documented);
        assert_eq!(idx.classify("GET", "/items"), Documented);
        assert_eq!(idx.classify("GET", "/items/"), Documented);
        assert_eq!(
            idx.classify("GET", "/users//"),
            Undocumented,
            "only one trailing slash"
        );
        assert_eq!(demo().classify("GET", "/healthz/"), Documented);
    }

    #[test]
    fn base_path_prefixes_are_part_of_the_templates() {
        // The operator prefixes servers[].url / basePath paths: /v1 + /users/{id}.
        let idx = OpenApiIndex::new(&[
            op("GET", "/v1/users/{id}", false),
            op("GET", "/v2/users/{id}", false),
            op("GET", "/v1/legacy", true),
        ]);
        assert_eq!(idx.classify("GET", "/v1/users/1"), Documented);
        assert_eq!(idx.classify("GET", "/v2/users/1"), Documented);
        assert_eq!(
            idx.classify("GET", "/users/1"),
            Undocumented,
            "not served without the prefix"
        );
        assert_eq!(idx.classify("GET", "/v3/users/1"), Undocumented);
        assert_eq!(idx.classify("GET", "/v1/legacy"), Deprecated);
    }

    #[test]
    fn mixed_segments_match_their_literals_in_order() {
        let idx = demo();
        assert_eq!(idx.classify("GET", "/files/report.json"), Documented);
        assert_eq!(
            idx.classify("GET", "/files/.json"),
            Undocumented,
            "params are non-empty"
        );
        assert_eq!(idx.classify("GET", "/files/report.xml"), Undocumented);
        assert_eq!(idx.classify("GET", "/v2/status"), Documented);
        assert_eq!(idx.classify("GET", "/v/status"), Undocumented);
        assert_eq!(idx.classify("GET", "/x2/status"), Undocumented);
        let multi = OpenApiIndex::new(&[op("GET", "/t/{a}-{b}.{ext}", false)]);
        assert_eq!(multi.classify("GET", "/t/x-y-z.tar.gz"), Documented);
        assert_eq!(multi.classify("GET", "/t/xy.gz"), Undocumented);
    }

    #[test]
    fn paths_outside_origin_form_and_odd_inputs() {
        let idx = demo();
        assert_eq!(idx.classify("OPTIONS", "*"), Undocumented);
        assert_eq!(idx.classify("GET", "http://example.com/healthz"), Undocumented);
        assert_eq!(idx.classify("GET", ""), Undocumented);
        let empty = OpenApiIndex::new(&[]);
        assert!(empty.is_empty());
        assert_eq!(
            empty.classify("GET", "/"),
            Undocumented,
            "a document without paths"
        );
    }

    #[test]
    fn literal_templates_are_percent_decoded_like_requests() {
        let idx = OpenApiIndex::new(&[op("GET", "/caf%C3%A9/a%20b", false)]);
        assert_eq!(idx.classify("GET", "/café/a b"), Documented);
        assert_eq!(
            idx.classify("GET", "/caf%C3%A9/a%20b"),
            Undocumented,
            "requests come decoded"
        );
    }

    #[test]
    fn duplicates_merge_and_only_a_loaded_document_makes_an_index() {
        let idx = OpenApiIndex::new(&[
            op("GET", "/a", true),
            op("get", "/a", false),
            op("GET", "/b/{x}", true),
            op("GET", "/b/{y}", true),
            op("BREW", "/pot", false),
        ]);
        assert_eq!(idx.len(), 2, "one per method and template; BREW skipped");
        assert_eq!(
            idx.classify("GET", "/a"),
            Documented,
            "documented wins over deprecated"
        );
        assert_eq!(idx.classify("GET", "/b/1"), Deprecated);

        let mut cfg = MonitorConfig {
            api_operations: vec![op("GET", "/a", false)],
            ..Default::default()
        };
        assert!(
            OpenApiIndex::from_config(&cfg).is_none(),
            "openapi_loaded is false"
        );
        cfg.openapi_loaded = true;
        assert_eq!(OpenApiIndex::from_config(&cfg).map(|i| i.len()), Some(1));
    }

    #[test]
    fn a_large_document_stays_a_walk_per_request() {
        let ops: Vec<ApiOperation> = (0..2000)
            .map(|i| op("GET", &format!("/svc{}/{{id}}/items/{i}", i % 50), i % 7 == 0))
            .collect();
        let idx = OpenApiIndex::new(&ops);
        assert_eq!(idx.len(), 2000);
        assert!(idx.nodes.len() < 4 * 2000);
        assert_eq!(idx.classify("GET", "/svc7/abc/items/7"), Deprecated);
        assert_eq!(idx.classify("GET", "/svc8/abc/items/8"), Documented);
        assert_eq!(idx.classify("GET", "/svc8/abc/items/9"), Undocumented);
    }
}
