//! What the injection detectors inspect: the request split into decoded values, each with where
//! it came from (path, query parameter, header, cookie, body field).

use super::decode::{decode_layers_cow, find_str, form_decode_cow, html_decode};
use super::json::Json;
use super::scan::Scan;
use super::RequestView;
use std::borrow::Cow;

/// At most this much of a body is inspected.
pub const MAX_BODY_INSPECTED: usize = 256 * 1024;
/// At most this many values are taken from one request (a flood of tiny fields is cut off).
const MAX_INPUTS: usize = 512;
/// JSON nesting deeper than this is not walked.
const MAX_JSON_DEPTH: usize = 32;

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The decoded path.
    Path,
    /// One path segment with unusual characters, decoded like a form value (`+` is a space):
    /// for detectors that read a value as one expression (SQL).
    PathSegment,
    /// A query parameter's name.
    QueryName,
    /// A query parameter's value.
    QueryValue,
    /// A request header's value (`name` is the header name).
    Header,
    /// A cookie's value (`name` is the cookie name).
    Cookie,
    /// A body field's name (form field, JSON key, multipart part name or file name).
    BodyName,
    /// A body field's value (form, JSON string, multipart part, XML text or attribute).
    BodyValue,
    /// A body that is inspected whole (text that is not a known structured format).
    BodyRaw,
}

/// One decoded value. Borrowed from the request when there was nothing to decode (most values).
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub source: Source,
    pub name: Cow<'a, str>,
    /// Decoded (percent layers, `+` in query and forms, JSON escapes, XML references).
    pub value: Cow<'a, str>,
    /// One pass over `value`, made once for all the detectors ([`Scan::of`]).
    pub scan: Scan,
}

impl Input<'_> {
    /// Where the value is, for evidence: `query q`, `header User-Agent`, `body.user`...
    pub fn location(&self) -> String {
        match self.source {
            Source::Path => "path".into(),
            Source::PathSegment => "path segment".into(),
            Source::QueryName => "query name".into(),
            Source::QueryValue => format!("query {}", self.name),
            Source::Header => format!("header {}", self.name),
            Source::Cookie => format!("cookie {}", self.name),
            Source::BodyName => "body name".into(),
            Source::BodyValue => format!("body {}", self.name),
            Source::BodyRaw => "body".into(),
        }
    }

    /// Whether the value sits where secrets live (credentials, session cookies): evidence from
    /// it names the detector's reason only.
    pub fn is_secret_location(&self) -> bool {
        const HINTS: &[&str] = &[
            "token", "password", "passwd", "secret", "key", "auth", "session", "sig",
        ];
        let lower = self.name.to_ascii_lowercase();
        match self.source {
            Source::Cookie => true,
            Source::Header => crate::redact::is_secret_header(&self.name, &[]),
            Source::QueryValue | Source::BodyValue => HINTS.iter().any(|h| lower.contains(h)),
            _ => false,
        }
    }

    /// A value (not a name, not the path): where a bare host name means a target.
    pub fn is_value(&self) -> bool {
        matches!(
            self.source,
            Source::QueryValue | Source::BodyValue | Source::BodyRaw | Source::Cookie
        )
    }

    /// Headers and cookies are written by clients and proxies, not typed by users: detectors may
    /// hold them to stricter shapes.
    pub fn is_header(&self) -> bool {
        matches!(self.source, Source::Header | Source::Cookie)
    }

    fn into_owned<'b>(self) -> Input<'b> {
        Input {
            source: self.source,
            name: Cow::Owned(self.name.into_owned()),
            value: Cow::Owned(self.value.into_owned()),
            scan: self.scan,
        }
    }
}

/// Headers that carry protocol data, never user data worth inspecting for injections.
fn skipped_header(name: &str) -> bool {
    // Lower-cased on the stack: every name below is shorter than the buffer; longer names can
    // only have one of the prefixes.
    let mut buf = [0u8; 32];
    let Some(lower) = buf.get_mut(..name.len()) else {
        let b = name.as_bytes();
        return b[..4].eq_ignore_ascii_case(b"sec-") || b[..5].eq_ignore_ascii_case(b"x-b3-");
    };
    // Lower-cased as it is copied: a copy, then a lower-casing pass reading what the copy has
    // just written in other widths, waited on the stores.
    for (l, b) in lower.iter_mut().zip(name.bytes()) {
        *l = b.to_ascii_lowercase();
    }
    let lower: &[u8] = lower;
    matches!(
        lower,
        b"host"
            | b"content-length"
            | b"content-type"
            | b"connection"
            | b"keep-alive"
            | b"proxy-connection"
            | b"transfer-encoding"
            | b"te"
            | b"upgrade"
            | b"accept"
            | b"accept-encoding"
            | b"accept-language"
            | b"accept-charset"
            | b"cache-control"
            | b"pragma"
            | b"expect"
            | b"date"
            | b"dnt"
            | b"range"
            | b"if-match"
            | b"if-none-match"
            | b"if-modified-since"
            | b"if-unmodified-since"
            | b"if-range"
            | b"authorization"
            | b"proxy-authorization"
            | b"content-encoding"
            | b"upgrade-insecure-requests"
            | b"priority"
            | b"x-request-id"
            | b"x-correlation-id"
            | b"traceparent"
            | b"tracestate"
    ) || lower.starts_with(b"sec-")
        || lower.starts_with(b"x-b3-")
}

/// Percent layers of a value that may already be decoded otherwise (an XML reference, a JSON
/// escape): borrowed when neither step changed it.
fn decoded(text: Cow<'_, str>) -> Cow<'_, str> {
    match text {
        Cow::Borrowed(t) => decode_layers_cow(t),
        Cow::Owned(t) => {
            let changed = match decode_layers_cow(&t) {
                Cow::Borrowed(_) => None,
                Cow::Owned(d) => Some(d),
            };
            Cow::Owned(changed.unwrap_or(t))
        }
    }
}

/// All values of a request, decoded.
#[derive(Debug, Default)]
pub struct Inputs<'a> {
    pub items: Vec<Input<'a>>,
    /// Raw header values that were skipped above (JNDI lookups are looked for in every header).
    pub all_headers: Vec<(&'a str, &'a str)>,
    /// Values already taken before these (a body that is not UTF-8 is split apart, then appended).
    taken: usize,
}

impl<'a> Inputs<'a> {
    fn push(&mut self, source: Source, name: impl Into<Cow<'a, str>>, value: Cow<'a, str>) {
        if value.is_empty() || self.taken + self.items.len() >= MAX_INPUTS {
            return;
        }
        self.items.push(Input {
            source,
            name: name.into(),
            scan: Scan::of(&value),
            value,
        });
    }

    /// Splits and decodes a request.
    pub fn collect(req: &RequestView<'a>) -> Inputs<'a> {
        let mut inputs = Inputs {
            // Enough for most requests: growing the vector costs more than the guess.
            items: Vec::with_capacity(16),
            // At most one entry a header: one allocation, not one for each doubling.
            all_headers: Vec::with_capacity(req.headers.len()),
            ..Inputs::default()
        };
        let target: &'a str = req.target;
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        // An absolute-form target: inspect the path part only.
        let path = match find_str(path, "://") {
            Some(i) => path[i + 3..].find('/').map_or("/", |j| &path[i + 3 + j..]),
            None => path,
        };
        inputs.push(Source::Path, "", decode_layers_cow(path));
        for segment in path.split('/') {
            if segment
                .bytes()
                .any(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')))
            {
                inputs.push(Source::PathSegment, "", form_decode_cow(segment));
            }
        }
        if let Some(query) = query {
            let query = query.split_once('#').map_or(query, |(q, _)| q);
            inputs.form_pairs(query, Source::QueryName, Source::QueryValue);
        }
        let headers: &'a crate::http::HeaderFields = req.headers;
        for (name, value) in headers.iter() {
            if skipped_header(name) {
                inputs.all_headers.push((name, value));
                continue;
            }
            if name.eq_ignore_ascii_case("cookie") {
                for pair in value.split(';') {
                    let (k, v) = pair.split_once('=').unwrap_or(("", pair));
                    inputs.push(Source::Cookie, k.trim(), decode_layers_cow(v.trim()));
                    // Cookie names are attacker-chosen too.
                    if k.bytes()
                        .any(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b' ')))
                    {
                        inputs.push(Source::Cookie, "(name)", decode_layers_cow(k.trim()));
                    }
                }
                continue;
            }
            inputs.push(Source::Header, name, decode_layers_cow(value));
        }
        if let Some(body) = req.body {
            let body = &body[..body.len().min(MAX_BODY_INSPECTED)];
            let content_type = headers.get("content-type").unwrap_or("");
            // `from_utf8` first: it reads ASCII a word at a time, `from_utf8_lossy` a byte at a time.
            let text =
                std::str::from_utf8(body).map_or_else(|_| String::from_utf8_lossy(body), Cow::Borrowed);
            match text {
                Cow::Borrowed(text) => inputs.body(text, content_type),
                Cow::Owned(text) => {
                    // The values point into the repaired text: split it apart, then keep copies.
                    let mut owned = Inputs {
                        taken: inputs.items.len(),
                        ..Inputs::default()
                    };
                    owned.body(&text, content_type);
                    inputs
                        .items
                        .extend(owned.items.into_iter().map(Input::into_owned));
                }
            }
        }
        inputs
    }

    fn form_pairs(&mut self, data: &'a str, name_source: Source, value_source: Source) {
        for pair in data.split('&') {
            if pair.is_empty() {
                continue;
            }
            match pair.split_once('=') {
                Some((k, v)) => {
                    let name = form_decode_cow(k);
                    self.push(value_source, name.clone(), form_decode_cow(v));
                    self.push(name_source, "", name);
                }
                None => self.push(name_source, "", form_decode_cow(pair)),
            }
        }
    }

    fn body(&mut self, text: &'a str, content_type: &str) {
        let ct = content_type.to_ascii_lowercase();
        let trimmed = text.trim_start();
        if ct.starts_with("multipart/") {
            if let Some(boundary) = boundary(content_type) {
                self.multipart(text, &boundary);
                return;
            }
        }
        if ct.contains("json") || (ct.is_empty() && (trimmed.starts_with('{') || trimmed.starts_with('['))) {
            if let Some(value) = Json::parse(text) {
                self.json(value, Cow::Borrowed(""), 0);
                return;
            }
        }
        if ct.contains("xml") || (ct.is_empty() && trimmed.starts_with('<')) {
            self.xml(text);
            if ct.is_empty() {
                // Without a declared type the markup itself may be the attack.
                self.push(Source::BodyRaw, "", decode_layers_cow(text));
            }
            return;
        }
        if ct.starts_with("application/x-www-form-urlencoded") {
            self.form_pairs(
                text.trim_end_matches(['\r', '\n']),
                Source::BodyName,
                Source::BodyValue,
            );
            return;
        }
        self.push(Source::BodyRaw, "", decode_layers_cow(text));
    }

    /// The strings of a parsed JSON document (borrowed from the body, or taken from the parser,
    /// when they need no decoding).
    fn json(&mut self, value: Json<'a>, key: Cow<'a, str>, depth: usize) {
        if depth > MAX_JSON_DEPTH {
            return;
        }
        match value {
            Json::String(s) => self.push(Source::BodyValue, key, decoded(s)),
            Json::Array(items) => {
                for item in items {
                    self.json(item, key.clone(), depth + 1);
                }
            }
            Json::Object(map) => {
                for (k, v) in map {
                    self.push(Source::BodyName, "", decoded(k.clone()));
                    self.json(v, k, depth + 1);
                }
            }
            Json::Other => {}
        }
    }

    fn multipart(&mut self, text: &'a str, boundary: &str) {
        let delimiter = format!("--{boundary}");
        for part in text.split(delimiter.as_str()).skip(1) {
            if part.starts_with("--") {
                break;
            }
            let part = part
                .strip_prefix("\r\n")
                .or_else(|| part.strip_prefix('\n'))
                .unwrap_or(part);
            let (head, content) = match part.split_once("\r\n\r\n").or_else(|| part.split_once("\n\n")) {
                Some(split) => split,
                None => continue,
            };
            let content = content
                .strip_suffix("\r\n")
                .or_else(|| content.strip_suffix('\n'))
                .unwrap_or(content);
            let mut name = String::new();
            let mut part_type = String::new();
            for line in head.lines() {
                let lower = line.to_ascii_lowercase();
                if lower.starts_with("content-disposition:") {
                    if let Some(n) = disposition_param(line, "name") {
                        name = n;
                    }
                    if let Some(f) = disposition_param(line, "filename") {
                        self.push(Source::BodyName, "", decoded(Cow::Owned(f)));
                    }
                } else if let Some(t) = lower.strip_prefix("content-type:") {
                    part_type = t.trim().to_string();
                }
            }
            if !name.is_empty() {
                self.push(Source::BodyName, "", decoded(Cow::Owned(name.clone())));
            }
            if part_type.contains("json") {
                if let Some(value) = Json::parse(content) {
                    self.json(value, Cow::Owned(name), 1);
                    continue;
                }
            }
            self.push(Source::BodyValue, name, decode_layers_cow(content));
        }
    }

    /// Text nodes and attribute values of an XML document, with character references decoded.
    /// A scanner, not a parser: it never fails and never expands entities.
    fn xml(&mut self, text: &'a str) {
        let mut rest = text;
        while let Some(lt) = rest.find('<') {
            let node = rest[..lt].trim();
            if !node.is_empty() {
                self.push(Source::BodyValue, "xml", decoded(html_decode(node)));
            }
            rest = &rest[lt..];
            if let Some(cdata) = rest.strip_prefix("<![CDATA[") {
                let end = cdata.find("]]>").unwrap_or(cdata.len());
                self.push(Source::BodyValue, "xml", decode_layers_cow(&cdata[..end]));
                rest = cdata.get(end + 3..).unwrap_or("");
                continue;
            }
            let Some(gt) = tag_end(rest) else {
                self.push(Source::BodyValue, "xml", decoded(html_decode(rest)));
                return;
            };
            let tag = &rest[1..gt];
            let mut attrs = tag;
            while let Some(eq) = attrs.find('=') {
                let after = attrs[eq + 1..].trim_start();
                let Some(q) = after.chars().next().filter(|c| *c == '"' || *c == '\'') else {
                    attrs = &attrs[eq + 1..];
                    continue;
                };
                let body = &after[1..];
                let end = body.find(q).unwrap_or(body.len());
                self.push(Source::BodyValue, "xml", decoded(html_decode(&body[..end])));
                attrs = body.get(end + 1..).unwrap_or("");
            }
            rest = &rest[gt + 1..];
        }
        let tail = rest.trim();
        if !tail.is_empty() {
            self.push(Source::BodyValue, "xml", decoded(html_decode(tail)));
        }
    }
}

/// The `>` closing a tag, skipping quoted attribute values.
fn tag_end(s: &str) -> Option<usize> {
    let mut quote: Option<u8> = None;
    for (i, b) in s.bytes().enumerate().skip(1) {
        match (quote, b) {
            (None, b'"') | (None, b'\'') => quote = Some(b),
            (Some(q), c) if c == q => quote = None,
            (None, b'>') => return Some(i),
            _ => {}
        }
    }
    None
}

/// The `boundary` parameter of a multipart content type.
fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty())
    })
}

/// `name="..."` in a Content-Disposition line.
fn disposition_param(line: &str, param: &str) -> Option<String> {
    line.split(';').skip(1).find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(param)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of a request (owned: the request is built here).
    fn collect(target: &str, headers: &[(&str, &str)], body: Option<&str>) -> Vec<Input<'static>> {
        let headers: crate::http::HeaderFields = headers.iter().copied().collect();
        Inputs::collect(&RequestView {
            method: "POST",
            target,
            headers: &headers,
            body: body.map(str::as_bytes),
        })
        .items
        .into_iter()
        .map(Input::into_owned)
        .collect()
    }

    fn values(inputs: &[Input], source: Source) -> Vec<(String, String)> {
        inputs
            .iter()
            .filter(|i| i.source == source)
            .map(|i| (i.name.to_string(), i.value.to_string()))
            .collect()
    }

    #[test]
    fn protocol_headers_are_skipped_in_any_case() {
        for name in [
            "Host",
            "ACCEPT-ENCODING",
            "Sec-Fetch-Mode",
            "X-B3-TraceId",
            "traceparent",
        ] {
            assert!(skipped_header(name), "{name}");
        }
        assert!(skipped_header("Sec-A-Header-Name-Longer-Than-Thirty-Two-Bytes"));
        for name in [
            "User-Agent",
            "Referer",
            "X-Forwarded-For",
            "Cookie",
            "A-Header-Name-Longer-Than-Thirty-Two-Bytes",
        ] {
            assert!(!skipped_header(name), "{name}");
        }
    }

    #[test]
    fn query_path_headers_and_cookies() {
        let i = collect(
            "/a%2fb?x=1+2&y=%2527&flag",
            &[
                ("Host", "h"),
                ("User-Agent", "ua%20x"),
                ("Cookie", "sid=abc; pref=%3Cb%3E"),
            ],
            None,
        );
        assert_eq!(values(&i, Source::Path), vec![("".into(), "/a/b".into())]);
        assert_eq!(
            values(&i, Source::QueryValue),
            vec![("x".into(), "1 2".into()), ("y".into(), "'".into())]
        );
        assert!(values(&i, Source::QueryName).contains(&("".into(), "flag".into())));
        assert_eq!(
            values(&i, Source::Header),
            vec![("User-Agent".into(), "ua x".into())]
        );
        assert_eq!(values(&i, Source::Cookie)[1], ("pref".into(), "<b>".into()));
        assert!(i
            .iter()
            .any(|x| x.source == Source::Cookie && x.is_secret_location()));
    }

    #[test]
    fn bodies_by_content_type() {
        let json = collect(
            "/",
            &[("Content-Type", "application/json")],
            Some(r#"{"a": "\u0027 x", "n": [1, {"b": "%3C"}], "k y": true}"#),
        );
        let v = values(&json, Source::BodyValue);
        assert!(v.contains(&("a".into(), "' x".into())) && v.contains(&("b".into(), "<".into())));
        assert!(values(&json, Source::BodyName).contains(&("".into(), "k y".into())));

        let form = collect(
            "/",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some("u=a+b&p=%27"),
        );
        assert_eq!(
            values(&form, Source::BodyValue),
            vec![("u".into(), "a b".into()), ("p".into(), "'".into())]
        );

        let multipart = collect(
            "/",
            &[("Content-Type", "multipart/form-data; boundary=XyZ")],
            Some("--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"../x\"\r\n\r\nhello\r\n--XyZ\r\nContent-Disposition: form-data; name=\"g\"\r\n\r\nline1\r\nline2\r\n--XyZ--\r\n"),
        );
        assert_eq!(
            values(&multipart, Source::BodyValue),
            vec![
                ("f".into(), "hello".into()),
                ("g".into(), "line1\r\nline2".into())
            ]
        );
        assert!(values(&multipart, Source::BodyName).contains(&("".into(), "../x".into())));

        let xml = collect(
            "/",
            &[("Content-Type", "text/xml")],
            Some(r#"<?xml version="1.0"?><r a="&lt;b&gt;"><c>x &amp; y</c><![CDATA[<s>]]></r>"#),
        );
        let v: Vec<String> = values(&xml, Source::BodyValue).into_iter().map(|x| x.1).collect();
        assert!(v.contains(&"<b>".to_string()), "{v:?}");
        assert!(
            v.contains(&"x & y".to_string()) && v.contains(&"<s>".to_string()),
            "{v:?}"
        );

        let broken_json = collect(
            "/",
            &[("Content-Type", "application/json")],
            Some("{\"a\": \"x\"y\"}"),
        );
        assert_eq!(values(&broken_json, Source::BodyRaw).len(), 1);
    }
}
