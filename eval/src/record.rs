//! One corpus record (see shared/corpora/README.md): method, target, headers and body, taken from
//! `raw_request_b64` when it is there (the bytes as sent), else from the parsed fields; and the
//! request as bytes on the wire, for replaying it through a real server.

use serde_json::Value;

/// Attack categories judged on the response, not the request.
pub const RESPONSE_SIDE: &[&str] = &["pii_exposure", "response_data_leakage", "response_web_shell"];

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub source: String,
    pub id: String,
    pub category: String,
    pub method: String,
    pub target: String,
    /// The request line's version; `None` means HTTP/1.1 (the record has no `version`).
    pub version: Option<String>,
    /// In wire order.
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// `meta.paranoia_level` (CRS records).
    pub paranoia_level: Option<u64>,
    /// The record carries a response (response-side case).
    pub has_response: bool,
    /// The request came from `raw_request_b64`.
    pub raw: bool,
    /// `raw_request_b64`, decoded: the bytes to send, whether or not httparse could read them.
    pub wire: Option<Vec<u8>>,
}

impl Record {
    #[cfg(test)]
    pub fn parse(line: &str) -> Result<Record, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
        Record::from_json(&v, line)
    }

    /// A record from its parsed JSON `v`; `line` is the text `v` was parsed from (only the
    /// order of its headers is read from it).
    pub fn from_json(v: &Value, line: &str) -> Result<Record, String> {
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let order = header_order(line);
        let mut record = Record {
            source: text("source"),
            id: text("id"),
            category: text("category"),
            method: text("method"),
            target: text("uri"),
            version: v.get("version").and_then(Value::as_str).map(str::to_string),
            headers: v
                .get("headers")
                .and_then(Value::as_object)
                .map(|h| {
                    // serde_json's map is sorted by name; the wire order comes from the text.
                    let mut names: Vec<&String> = h.keys().collect();
                    if order.len() == h.len() && order.iter().all(|k| h.contains_key(k)) {
                        names = order.iter().collect();
                    }
                    names
                        .into_iter()
                        .filter_map(|k| {
                            let v = h.get(k)?;
                            Some((
                                k.clone(),
                                v.as_str().map_or_else(|| v.to_string(), str::to_string),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            body: None,
            paranoia_level: v.pointer("/meta/paranoia_level").and_then(Value::as_u64),
            has_response: v.get("response").is_some_and(|r| !r.is_null()),
            raw: false,
            wire: None,
        };
        if let Some(body) = v.get("body").and_then(Value::as_str) {
            record.body = Some(
                if v.get("body_encoding").and_then(Value::as_str) == Some("base64") {
                    base64_decode(body).ok_or_else(|| format!("record {}: body is not base64", record.id))?
                } else {
                    body.as_bytes().to_vec()
                },
            );
        }
        if let Some(raw) = v.get("raw_request_b64").and_then(Value::as_str) {
            let bytes = base64_decode(raw)
                .ok_or_else(|| format!("record {}: raw_request_b64 is not base64", record.id))?;
            // Raw requests are authoritative; a head httparse cannot read keeps the parsed fields.
            if let Some((method, target, headers, body)) = parse_raw(&bytes) {
                record.method = method;
                record.target = target;
                record.headers = headers;
                record.body = body;
                record.raw = true;
            }
            record.wire = Some(bytes);
        }
        Ok(record)
    }

    /// The request as sent: `raw_request_b64` verbatim, else request line, headers and body
    /// exactly as the record gives them, plus a Content-Length when there is a body and neither
    /// Content-Length nor Transfer-Encoding is given.
    pub fn to_wire(&self) -> Vec<u8> {
        if let Some(wire) = &self.wire {
            return wire.clone();
        }
        let version = self.version.as_deref().unwrap_or("HTTP/1.1");
        let mut out = format!("{} {} {version}\r\n", self.method, self.target).into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        let body = self.body.as_deref().unwrap_or_default();
        let framed = self.headers.iter().any(|(k, _)| {
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
        });
        if !body.is_empty() && !framed {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
        out
    }

    pub fn is_benign(&self) -> bool {
        self.category == "benign"
    }

    pub fn is_unverified(&self) -> bool {
        self.category == "unverified_negative"
    }

    /// Response-side cases are not for the request detectors.
    pub fn is_response_side(&self) -> bool {
        RESPONSE_SIDE.contains(&self.category.as_str()) || (self.is_benign() && self.has_response)
    }
}

/// The names of the top-level `headers` object, in the order the line has them. A small scan
/// over the JSON text (strings, nesting); empty when the line has no such object.
fn header_order(line: &str) -> Vec<String> {
    let b = line.as_bytes();
    let mut containers: Vec<u8> = Vec::new();
    let mut expect_key = false;
    let mut top_key = String::new();
    let mut in_headers = false;
    let mut names = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                if expect_key {
                    let key = line
                        .get(start..=i)
                        .and_then(|raw| serde_json::from_str::<String>(raw).ok())
                        .unwrap_or_default();
                    match containers.len() {
                        1 => top_key = key,
                        2 if in_headers => names.push(key),
                        _ => {}
                    }
                }
                expect_key = false;
            }
            b'{' => {
                containers.push(b'{');
                expect_key = true;
                if containers.len() == 2 {
                    in_headers = top_key == "headers";
                }
            }
            b'[' => {
                containers.push(b'[');
                expect_key = false;
            }
            b'}' | b']' => {
                containers.pop();
                if containers.len() < 2 {
                    in_headers = false;
                }
            }
            b',' => expect_key = containers.last() == Some(&b'{'),
            _ => {}
        }
        i += 1;
    }
    names
}

type RawRequest = (String, String, Vec<(String, String)>, Option<Vec<u8>>);

/// Parses raw request bytes with httparse; the body is de-chunked when the request says so.
pub fn parse_raw(bytes: &[u8]) -> Option<RawRequest> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let method = req.method?.to_string();
    let target = req.path?.to_string();
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned()))
        .collect();
    let rest = &bytes[head_len..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    });
    let body = if rest.is_empty() {
        None
    } else if chunked {
        Some(dechunk(rest))
    } else {
        Some(rest.to_vec())
    };
    Some((method, target, headers, body))
}

/// De-chunks a body; stops at the last chunk or at the first malformed size line.
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Ok(httparse::Status::Complete((used, size))) = httparse::parse_chunk_size(data) else {
            return out;
        };
        let Ok(size) = usize::try_from(size) else {
            return out;
        };
        if size == 0 {
            return out;
        }
        let end = (used + size).min(data.len());
        out.extend_from_slice(&data[used..end]);
        data = data.get(end + 2..).unwrap_or(&[]);
    }
}

/// Standard base64 (with or without padding; whitespace ignored).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(data: &[u8]) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (*b as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn parsed_fields() {
        let r = Record::parse(
            r#"{"source":"s","id":"a-1","category":"sqli","method":"POST","uri":"/p?q=1","headers":{"Content-Type":"application/json","X-N":"1"},"body":"{\"a\":\"b\"}","meta":{"paranoia_level":2}}"#,
        )
        .unwrap();
        assert_eq!((r.method.as_str(), r.target.as_str()), ("POST", "/p?q=1"));
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.body.as_deref(), Some(&br#"{"a":"b"}"#[..]));
        assert_eq!(r.paranoia_level, Some(2));
        assert!(!r.is_response_side() && !r.raw);
        assert_eq!(
            r.to_wire(),
            b"POST /p?q=1 HTTP/1.1\r\nContent-Type: application/json\r\nX-N: 1\r\nContent-Length: 9\r\n\r\n{\"a\":\"b\"}"
        );
    }

    #[test]
    fn headers_keep_wire_order_and_the_version_is_sent_as_given() {
        let r = Record::parse(
            r#"{"source":"s","id":"o","category":"sqli","method":"GET","uri":"/","version":"HTTP/1.0", "headers": {"Zeta": "a\"}", "Host": "h", "Alpha": "{\"Host\": 1}"},"body":null,"meta":{"headers":{"B":"1"}}}"#,
        )
        .unwrap();
        let names: Vec<&str> = r.headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["Zeta", "Host", "Alpha"]);
        assert_eq!(
            r.to_wire(),
            b"GET / HTTP/1.0\r\nZeta: a\"}\r\nHost: h\r\nAlpha: {\"Host\": 1}\r\n\r\n"
        );
        assert!(header_order(r#"{"id":"x","meta":{"headers":{"B":"1"}}}"#).is_empty());
    }

    #[test]
    fn raw_requests_are_authoritative_and_dechunked() {
        let raw = b"POST /x?a=%27 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let line = format!(
            r#"{{"source":"coreruleset","id":"r","category":"sqli","method":"GET","uri":"/wrong","headers":{{}},"body":null,"raw_request_b64":"{}"}}"#,
            b64(raw)
        );
        let r = Record::parse(&line).unwrap();
        assert!(r.raw);
        assert_eq!((r.method.as_str(), r.target.as_str()), ("POST", "/x?a=%27"));
        assert_eq!(r.body.as_deref(), Some(&b"abcde"[..]));
        assert_eq!(r.headers[0], ("Host".to_string(), "h".to_string()));
        assert_eq!(r.to_wire(), raw, "raw requests are replayed verbatim");
    }

    #[test]
    fn base64_bodies_and_response_cases() {
        let line = format!(
            r#"{{"source":"s","id":"b","category":"benign","method":"POST","uri":"/","headers":{{}},"body":"{}","body_encoding":"base64","response":{{"status":200}}}}"#,
            b64(&[0xff, 0x00, 0x41])
        );
        let r = Record::parse(&line).unwrap();
        assert_eq!(r.body.as_deref(), Some(&[0xff, 0x00, 0x41][..]));
        assert!(r.is_benign() && r.is_response_side());
        assert_eq!(base64_decode("aGk=").unwrap(), b"hi");
        assert!(Record::parse("{not json").is_err());
    }
}
