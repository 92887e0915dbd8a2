//! Message heads (parsed with `httparse`), body framing rules (RFC 9112 §6) and the test for a
//! plausible message start used to resynchronise.

use super::HeaderFields;
use compact_str::CompactString;

/// Most header fields in a head; more is treated like an oversized head.
pub(crate) const MAX_HEADERS: usize = 100;
/// Longest method token accepted when looking for a request start.
const MAX_METHOD: usize = 20;

/// What a direction of a connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Nothing parsed yet: either.
    Unknown,
    Requests,
    Responses,
}

impl Kind {
    pub(crate) fn opposite(self) -> Kind {
        match self {
            Kind::Unknown => Kind::Unknown,
            Kind::Requests => Kind::Responses,
            Kind::Responses => Kind::Requests,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Start {
    Request {
        method: CompactString,
        target: CompactString,
    },
    Response {
        status: u16,
    },
}

/// A complete message head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) start: Start,
    pub(crate) headers: HeaderFields,
    /// What the fields say about the body's framing.
    pub(crate) framing: FramingFields,
    /// Bytes of the head, blank line included.
    pub(crate) len: usize,
}

#[derive(Debug)]
pub(crate) enum Parsed {
    Complete(Head),
    /// Valid so far; more bytes needed.
    Partial,
    Invalid {
        too_many_headers: bool,
    },
}

/// Whether `buf` begins with a response (`HTTP/`), after optional empty lines; `None` while too
/// short to tell.
fn is_response(buf: &[u8]) -> Option<bool> {
    let start = buf.iter().position(|b| *b != b'\r' && *b != b'\n')?;
    let rest = &buf[start..];
    if rest.len() >= 5 {
        Some(rest.starts_with(b"HTTP/"))
    } else if b"HTTP/".starts_with(rest) {
        None
    } else {
        Some(false)
    }
}

fn invalid(e: httparse::Error) -> Parsed {
    Parsed::Invalid {
        too_many_headers: e == httparse::Error::TooManyHeaders,
    }
}

/// Parses a head of the kind a direction carries.
pub(crate) fn parse(buf: &[u8], kind: Kind) -> Parsed {
    let response = match kind {
        Kind::Requests => false,
        Kind::Responses => true,
        Kind::Unknown => match is_response(buf) {
            Some(r) => r,
            None => return Parsed::Partial,
        },
    };
    // Uninitialised: writing 100 empty headers first cost more than parsing a small head.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let config = httparse::ParserConfig::default();
    if response {
        let mut resp = httparse::Response::new(&mut []);
        match config.parse_response_with_uninit_headers(&mut resp, buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => Parsed::Complete(Head {
                start: Start::Response {
                    status: resp.code.unwrap_or(0),
                },
                headers: HeaderFields::from_httparse(resp.headers),
                framing: FramingFields::read(resp.headers),
                len,
            }),
            Ok(httparse::Status::Partial) => Parsed::Partial,
            Err(e) => invalid(e),
        }
    } else {
        let mut req = httparse::Request::new(&mut []);
        match config.parse_request_with_uninit_headers(&mut req, buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => Parsed::Complete(Head {
                start: Start::Request {
                    method: CompactString::new(req.method.unwrap_or("")),
                    target: CompactString::new(req.path.unwrap_or("")),
                },
                headers: HeaderFields::from_httparse(req.headers),
                framing: FramingFields::read(req.headers),
                len,
            }),
            Ok(httparse::Status::Partial) => Parsed::Partial,
            Err(e) => invalid(e),
        }
    }
}

/// Whether a blank line (the end of a head) is in `buf`.
pub(crate) fn has_blank_line(buf: &[u8]) -> bool {
    buf.windows(2).any(|w| w == b"\n\n") || buf.windows(3).any(|w| w == b"\n\r\n")
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    NoBody,
    Length(u64),
    Chunked,
    /// Until the sender closes the connection.
    UntilClose,
    /// The connection switches protocols after this response (101, or 2xx to CONNECT).
    Upgrade,
}

/// Why a message cannot be framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Violation {
    InvalidContentLength,
    ContentLengthWithTransferEncoding,
    UnsupportedTransferEncoding,
}

/// What a head says about its body's framing, read in one pass over the fields as `httparse`
/// found them (this runs for every captured message; the bytes, not the text, are compared).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FramingFields {
    /// The Content-Length: every value (repeated fields, comma lists) must be the same plain
    /// decimal number.
    length: Result<Option<u64>, Violation>,
    /// `Some(chunked_is_final)` when Transfer-Encoding is present.
    transfer_encoding: Option<bool>,
}

impl FramingFields {
    pub(crate) fn read(headers: &[httparse::Header<'_>]) -> Self {
        let mut length = Ok(None);
        let mut transfer_encoding = None;
        for h in headers {
            if h.name.eq_ignore_ascii_case("content-length") {
                if let Ok(seen) = length {
                    length =
                        h.value
                            .split(|b| *b == b',')
                            .map(<[u8]>::trim_ascii)
                            .try_fold(seen, |seen, v| {
                                let n = content_length(v)?;
                                match seen {
                                    Some(l) if l != n => Err(Violation::InvalidContentLength),
                                    _ => Ok(Some(n)),
                                }
                            });
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h
                    .value
                    .rsplit(|b| *b == b',')
                    .map(<[u8]>::trim_ascii)
                    .find(|c| !c.is_empty());
                // A field with no coding leaves the last one of an earlier field in force.
                transfer_encoding = match (last, transfer_encoding) {
                    (Some(c), _) => Some(c.eq_ignore_ascii_case(b"chunked")),
                    (None, seen) => Some(seen.unwrap_or(false)),
                };
            }
        }
        FramingFields {
            length,
            transfer_encoding,
        }
    }
}

/// One Content-Length value: 1 to 19 ASCII digits (so it fits a u64).
fn content_length(v: &[u8]) -> Result<u64, Violation> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(Violation::InvalidContentLength);
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

pub(crate) fn request_framing(method: &str, fields: &FramingFields) -> Result<Framing, Violation> {
    if method == "CONNECT" {
        return Ok(Framing::NoBody);
    }
    let FramingFields {
        length,
        transfer_encoding,
    } = *fields;
    match transfer_encoding {
        Some(_) if !matches!(length, Ok(None)) => Err(Violation::ContentLengthWithTransferEncoding),
        Some(true) => Ok(Framing::Chunked),
        Some(false) => Err(Violation::UnsupportedTransferEncoding),
        None => match length? {
            Some(0) | None => Ok(Framing::NoBody),
            Some(n) => Ok(Framing::Length(n)),
        },
    }
}

/// `method` is the request's, when known.
pub(crate) fn response_framing(
    status: u16,
    method: Option<&str>,
    fields: &FramingFields,
) -> Result<Framing, Violation> {
    if status == 101 || (method == Some("CONNECT") && (200..300).contains(&status)) {
        return Ok(Framing::Upgrade);
    }
    if method == Some("HEAD") || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::NoBody);
    }
    let FramingFields {
        length,
        transfer_encoding,
    } = *fields;
    match transfer_encoding {
        Some(_) if !matches!(length, Ok(None)) => Err(Violation::ContentLengthWithTransferEncoding),
        Some(true) => Ok(Framing::Chunked),
        Some(false) => Ok(Framing::UntilClose),
        None => match length? {
            Some(0) => Ok(Framing::NoBody),
            Some(n) => Ok(Framing::Length(n)),
            None => Ok(Framing::UntilClose),
        },
    }
}

/// Whether a message could start at the beginning of `buf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Candidate {
    No,
    /// Too short to tell.
    Maybe,
    Yes,
}

/// A request line starts with an upper-case method token, a space and a target.
fn request_line_start(buf: &[u8]) -> Candidate {
    let token = buf
        .iter()
        .take(MAX_METHOD + 1)
        .take_while(|b| b.is_ascii_uppercase() || **b == b'-' || **b == b'_')
        .count();
    if token == buf.len() {
        return if token <= MAX_METHOD {
            Candidate::Maybe
        } else {
            Candidate::No
        };
    }
    if !(3..=MAX_METHOD).contains(&token) || buf[token] != b' ' {
        return Candidate::No;
    }
    match buf.get(token + 1) {
        None => Candidate::Maybe,
        Some(b) if b.is_ascii_graphic() => Candidate::Yes,
        Some(_) => Candidate::No,
    }
}

/// A status line starts with `HTTP/1.x ` and a digit.
fn status_line_start(buf: &[u8]) -> Candidate {
    const PREFIX: &[u8] = b"HTTP/1.";
    let n = buf.len().min(PREFIX.len());
    if buf[..n] != PREFIX[..n] {
        return Candidate::No;
    }
    let check = |i: usize, ok: fn(u8) -> bool| buf.get(i).map(|b| ok(*b));
    match (
        check(7, |b| b.is_ascii_digit()),
        check(8, |b| b == b' '),
        check(9, |b| b.is_ascii_digit()),
    ) {
        (Some(false), ..) | (_, Some(false), _) | (.., Some(false)) => Candidate::No,
        (Some(true), Some(true), Some(true)) => Candidate::Yes,
        _ => Candidate::Maybe,
    }
}

/// Whether a message of `kind` plausibly starts at `buf[0]`: the shape of a request or status
/// line, then `httparse` finds nothing wrong in the bytes available.
pub(crate) fn message_start(buf: &[u8], kind: Kind) -> Candidate {
    if buf.is_empty() {
        return Candidate::Maybe;
    }
    let shape = match kind {
        Kind::Requests => request_line_start(buf),
        Kind::Responses => status_line_start(buf),
        Kind::Unknown => match (request_line_start(buf), status_line_start(buf)) {
            (Candidate::Yes, _) | (_, Candidate::Yes) => Candidate::Yes,
            (Candidate::Maybe, _) | (_, Candidate::Maybe) => Candidate::Maybe,
            _ => Candidate::No,
        },
    };
    if shape != Candidate::Yes {
        return shape;
    }
    match parse(buf, kind) {
        Parsed::Invalid { .. } => Candidate::No,
        _ => Candidate::Yes,
    }
}
