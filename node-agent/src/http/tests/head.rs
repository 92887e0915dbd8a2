//! Head parsing, framing rules and message-start detection.

use super::super::head::*;

/// What framing reads of these fields.
fn h(pairs: &[(&str, &str)]) -> FramingFields {
    let headers: Vec<httparse::Header<'_>> = pairs
        .iter()
        .map(|(name, value)| httparse::Header {
            name,
            value: value.as_bytes(),
        })
        .collect();
    FramingFields::read(&headers)
}

#[test]
fn request_framing_follows_rfc_9112() {
    assert_eq!(request_framing("GET", &h(&[])), Ok(Framing::NoBody));
    assert_eq!(
        request_framing("POST", &h(&[("content-length", "12")])),
        Ok(Framing::Length(12))
    );
    assert_eq!(
        request_framing("POST", &h(&[("Content-Length", "5, 5"), ("content-length", "5")])),
        Ok(Framing::Length(5))
    );
    for bad in [
        "-1",
        "1.5",
        "5, 6",
        "",
        "0x10",
        "+3",
        "99999999999999999999",
        "1 2",
    ] {
        assert_eq!(
            request_framing("POST", &h(&[("Content-Length", bad)])),
            Err(Violation::InvalidContentLength),
            "{bad:?}"
        );
    }
    assert_eq!(
        request_framing("POST", &h(&[("Transfer-Encoding", "gzip, Chunked")])),
        Ok(Framing::Chunked)
    );
    assert_eq!(
        request_framing("POST", &h(&[("Transfer-Encoding", "chunked, gzip")])),
        Err(Violation::UnsupportedTransferEncoding)
    );
    assert_eq!(
        request_framing(
            "POST",
            &h(&[("Content-Length", "3"), ("Transfer-Encoding", "chunked")])
        ),
        Err(Violation::ContentLengthWithTransferEncoding)
    );
    assert_eq!(
        request_framing("CONNECT", &h(&[("Content-Length", "3")])),
        Ok(Framing::NoBody)
    );
}

#[test]
fn framing_reads_repeated_fields_as_one_list() {
    // The codings of all Transfer-Encoding fields form one list; the last one decides, and a
    // field with no coding changes nothing.
    for (fields, framing) in [
        (
            &[("Transfer-Encoding", "gzip"), ("transfer-encoding", "chunked")][..],
            Ok(Framing::Chunked),
        ),
        (
            &[("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "gzip")][..],
            Err(Violation::UnsupportedTransferEncoding),
        ),
        (
            &[("Transfer-Encoding", "chunked"), ("Transfer-Encoding", " , ")][..],
            Ok(Framing::Chunked),
        ),
        (
            &[("Transfer-Encoding", "")][..],
            Err(Violation::UnsupportedTransferEncoding),
        ),
        // A bad Content-Length beside Transfer-Encoding is still the smuggling shape.
        (
            &[("Content-Length", "x"), ("Transfer-Encoding", "chunked")][..],
            Err(Violation::ContentLengthWithTransferEncoding),
        ),
        (
            &[("Content-Length", "4"), ("Content-Length", "5")][..],
            Err(Violation::InvalidContentLength),
        ),
        (
            &[("Content-Length", "x"), ("Content-Length", "5")][..],
            Err(Violation::InvalidContentLength),
        ),
    ] {
        assert_eq!(request_framing("POST", &h(fields)), framing, "{fields:?}");
    }
    assert_eq!(
        response_framing(
            200,
            Some("GET"),
            &h(&[("Transfer-Encoding", "gzip"), ("Transfer-Encoding", "chunked")])
        ),
        Ok(Framing::Chunked)
    );
}

/// Optional whitespace around Content-Length and Transfer-Encoding values is SP and HTAB (RFC
/// 9110 §5.6.3): other whitespace, such as a no-break space, makes the value invalid.
#[test]
fn framing_trims_only_spaces_and_tabs() {
    assert_eq!(
        request_framing("POST", &h(&[("Content-Length", " \t5\t ")])),
        Ok(Framing::Length(5))
    );
    assert_eq!(
        request_framing("POST", &h(&[("Content-Length", "5\u{a0}")])),
        Err(Violation::InvalidContentLength)
    );
    assert_eq!(
        request_framing("POST", &h(&[("Transfer-Encoding", "chunked\u{a0}")])),
        Err(Violation::UnsupportedTransferEncoding)
    );
}

#[test]
fn response_framing_follows_rfc_9112() {
    let cl = h(&[("Content-Length", "7")]);
    assert_eq!(response_framing(200, Some("GET"), &cl), Ok(Framing::Length(7)));
    assert_eq!(response_framing(200, Some("HEAD"), &cl), Ok(Framing::NoBody));
    assert_eq!(response_framing(204, None, &cl), Ok(Framing::NoBody));
    assert_eq!(response_framing(304, None, &cl), Ok(Framing::NoBody));
    assert_eq!(response_framing(103, None, &h(&[])), Ok(Framing::NoBody));
    assert_eq!(response_framing(101, Some("GET"), &h(&[])), Ok(Framing::Upgrade));
    assert_eq!(
        response_framing(200, Some("CONNECT"), &h(&[])),
        Ok(Framing::Upgrade)
    );
    assert_eq!(
        response_framing(407, Some("CONNECT"), &cl),
        Ok(Framing::Length(7))
    );
    assert_eq!(response_framing(200, None, &h(&[])), Ok(Framing::UntilClose));
    assert_eq!(
        response_framing(200, None, &h(&[("Transfer-Encoding", "gzip")])),
        Ok(Framing::UntilClose)
    );
    assert_eq!(
        response_framing(200, None, &h(&[("Transfer-Encoding", "chunked")])),
        Ok(Framing::Chunked)
    );
    assert_eq!(
        response_framing(
            200,
            None,
            &h(&[("Transfer-Encoding", "chunked"), ("Content-Length", "7")])
        ),
        Err(Violation::ContentLengthWithTransferEncoding)
    );
}

#[test]
fn message_starts_are_recognised_and_garbage_is_not() {
    use Candidate::*;
    let cases: &[(&[u8], Kind, Candidate)] = &[
        (b"GET /x HTTP/1.1\r\n", Kind::Requests, Yes),
        (b"GET /x", Kind::Unknown, Yes),
        (b"GE", Kind::Requests, Maybe),
        (b"GET ", Kind::Requests, Maybe),
        (b"Get /x", Kind::Requests, No),
        (b"GET  /x", Kind::Requests, No),
        (b"GET /x HTTP/9.9\r\n", Kind::Requests, No),
        (b"HTTP/1.1 200 OK\r\n", Kind::Responses, Yes),
        (b"HTTP/1.", Kind::Responses, Maybe),
        (b"HTTP/2 200", Kind::Responses, No),
        (b"HTTP/1.1 200 OK\r\n", Kind::Requests, No),
        (b"GET /x HTTP/1.1\r\n", Kind::Responses, No),
        (b"\x16\x03\x01\x02\x00", Kind::Unknown, No),
        (b"", Kind::Unknown, Maybe),
    ];
    for (buf, kind, want) in cases {
        assert_eq!(
            message_start(buf, *kind),
            *want,
            "{:?} {kind:?}",
            String::from_utf8_lossy(buf)
        );
    }
}

#[test]
fn heads_parse_with_leading_blank_lines_and_lossy_values() {
    let Parsed::Complete(head) = parse(b"\r\nPOST /a HTTP/1.1\r\nX: caf\xe9\r\n\r\nbody", Kind::Unknown)
    else {
        panic!("complete expected")
    };
    assert_eq!(head.len, 31);
    assert!(matches!(head.start, Start::Request { ref method, .. } if method == "POST"));
    assert_eq!(
        head.headers.iter().collect::<Vec<_>>(),
        vec![("X", "caf\u{fffd}")]
    );
    assert!(matches!(parse(b"HTT", Kind::Unknown), Parsed::Partial));
    let many: Vec<u8> = b"GET / HTTP/1.1\r\n"
        .iter()
        .copied()
        .chain((0..MAX_HEADERS + 1).flat_map(|i| format!("h{i}: v\r\n").into_bytes()))
        .chain(*b"\r\n")
        .collect();
    assert!(matches!(
        parse(&many, Kind::Requests),
        Parsed::Invalid {
            too_many_headers: true
        }
    ));
}
