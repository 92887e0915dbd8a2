//! One corpus record (see shared/corpora/README.md): method, target, headers and body, taken from
//! `raw_request_b64` when it is there (the bytes as sent), else from the parsed fields.

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
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// `meta.paranoia_level` (CRS records).
    pub paranoia_level: Option<u64>,
    /// The record carries a response (response-side case).
    pub has_response: bool,
    /// The request came from `raw_request_b64`.
    pub raw: bool,
}

impl Record {
    pub fn parse(line: &str) -> Result<Record, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let mut record = Record {
            source: text("source"),
            id: text("id"),
            category: text("category"),
            method: text("method"),
            target: text("uri"),
            headers: v
                .get("headers")
                .and_then(Value::as_object)
                .map(|h| {
                    h.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str().map_or_else(|| v.to_string(), str::to_string),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            body: None,
            paranoia_level: v.pointer("/meta/paranoia_level").and_then(Value::as_u64),
            has_response: v.get("response").is_some_and(|r| !r.is_null()),
            raw: false,
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
        }
        Ok(record)
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
