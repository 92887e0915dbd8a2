//! Message framing: heads, Content-Length, chunked, no-body responses, read-until-close, limits
//! and protocol violations.

use super::*;

#[test]
fn a_request_split_byte_by_byte_is_one_event_with_its_body() {
    let mut w = Wire::bodies(1024);
    let mut events = w.send(true, &post("/login", b"user=a&pass=b"), 1);
    assert_eq!(targets(&events), vec![("POST".into(), "/login".into())]);
    let r = requests(&events)[0];
    assert_eq!(
        (r.body.as_slice(), r.body_len, r.body_truncated),
        (&b"user=a&pass=b"[..], 13, false)
    );
    assert_eq!(r.headers.iter().next(), Some(("Host", "api")));
    assert_eq!((r.role, r.local.1, r.remote.1), (PodRole::Server, 8080, 40000));
    events = w.send(false, &ok(b"welcome"), 1);
    let x = exchanges(&events);
    assert_eq!(x.len(), 1);
    assert_eq!(
        (x[0].status, x[0].response.body.as_slice()),
        (200, &b"welcome"[..])
    );
    assert!(x[0].latency_ns > 0);
    assert_eq!(w.t.drops, ParserDrops::default(), "nothing dropped");
}

#[test]
fn bodies_are_kept_up_to_the_limit_and_counted_in_full() {
    let body: Vec<u8> = (0..100u8).collect();
    let mut w = Wire::bodies(10);
    let events = w.client(&post("/a", &body));
    let r = requests(&events)[0];
    assert_eq!(
        (r.body.as_slice(), r.body_len, r.body_truncated),
        (&body[..10], 100, true)
    );
    assert_eq!(w.t.drops.body_bytes_truncated, 90);

    let mut w = Wire::bodies(0);
    let events = w.client(&post("/a", &body));
    let r = requests(&events)[0];
    assert_eq!((r.body.len(), r.body_len, r.body_truncated), (0, 100, true));
    assert_eq!(
        w.t.drops.body_bytes_truncated, 0,
        "not keeping bodies is not a drop"
    );
    let events = w.client(&get("/next"));
    assert_eq!(
        targets(&events),
        vec![("GET".into(), "/next".into())],
        "the body was framed"
    );
}

#[test]
fn a_kept_body_is_allocated_once_for_its_announced_length_and_never_past_the_limit() {
    let body = vec![b'x'; 3000];
    for (limit, capacity) in [(4096, 3000), (1000, 1000)] {
        let mut w = Wire::bodies(limit);
        let events = w.send(true, &post("/a", &body), 100);
        let r = requests(&events)[0];
        assert_eq!(
            (r.body.len(), r.body.capacity()),
            (capacity, capacity),
            "limit {limit}"
        );
    }
    // Chunked bodies announce nothing: the kept body grows as bytes arrive.
    let mut w = Wire::bodies(1 << 20);
    let mut wire = b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..30 {
        wire.extend_from_slice(b"64\r\n");
        wire.extend_from_slice(&body[..100]);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let events = w.send(true, &wire, 200);
    let r = requests(&events)[0];
    assert_eq!(r.body.len(), 3000);
    assert!(r.body.capacity() < 8192, "{}", r.body.capacity());
}

#[test]
fn chunked_bodies_with_extensions_and_trailers() {
    let mut w = Wire::bodies(1024);
    let mut wire = b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    wire.extend_from_slice(
        b"4;name=\"quoted;value\"\r\nWiki\r\n5 ; x\r\npedia\r\n0\r\nX-Checksum: abc\r\n\r\n",
    );
    wire.extend_from_slice(&get("/after"));
    let events = w.send(true, &wire, 7);
    let r = requests(&events);
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].body.as_slice(), r[0].body_len, r[0].body_truncated),
        (&b"Wikipedia"[..], 9, false)
    );
    assert!(
        r[0].headers.iter().any(|f| f == ("X-Checksum", "abc")),
        "{:?}",
        r[0].headers
    );
    assert_eq!(r[1].target, "/after");

    let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n".to_vec();
    resp.extend_from_slice(b"3\r\nabc\r\n0\r\n\r\n");
    resp.extend_from_slice(&status(404));
    let events = w.send(false, &resp, 5);
    assert_eq!(statuses(&events), s(&[("/up", 200), ("/after", 404)]));
    let x = exchanges(&events);
    assert_eq!(
        (x[0].response.body.as_slice(), x[0].response.body_len),
        (&b"abc"[..], 3)
    );
}

#[test]
fn responses_to_head_and_204_304_have_no_body() {
    let mut w = Wire::bodies(64);
    let mut reqs = b"HEAD /h HTTP/1.1\r\n\r\n".to_vec();
    for p in ["/no-content", "/not-modified", "/last"] {
        reqs.extend_from_slice(&get(p));
    }
    assert_eq!(requests(&w.client(&reqs)).len(), 4);
    // Content-Length on HEAD/204/304 responses describes no body on the wire.
    let mut resps = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec();
    resps.extend_from_slice(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n");
    resps.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n");
    resps.extend_from_slice(&ok(b"done"));
    let events = w.server(&resps);
    assert_eq!(
        statuses(&events),
        s(&[
            ("/h", 200),
            ("/no-content", 204),
            ("/not-modified", 304),
            ("/last", 200)
        ])
    );
    assert_eq!(exchanges(&events)[3].response.body, b"done");
    assert!(exchanges(&events)[..3].iter().all(|x| x.response.body_len == 0));
}

#[test]
fn a_response_without_length_is_read_until_fin() {
    let mut w = Wire::bodies(1 << 20);
    w.client(&get("/stream"));
    let mut events = w.server(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nfirst ");
    events.extend(w.server(&vec![b'x'; 5000]));
    assert!(exchanges(&events).is_empty(), "not complete before the FIN");
    events = w.fin(false);
    let x = exchanges(&events);
    assert_eq!(x.len(), 1);
    assert_eq!(
        (x[0].response.body_len, x[0].response.body_truncated),
        (5006, false)
    );
    assert!(x[0].response.body.starts_with(b"first xx"));
    assert_eq!(w.t.connections(), 1, "the client has not closed yet");
    w.fin(true);
    assert_eq!(w.t.connections(), 0);

    // HTTP/1.0, no Content-Length, closed by RST: still paired.
    let mut w = Wire::bodies(16);
    w.client(b"GET /old HTTP/1.0\r\n\r\n");
    w.server(b"HTTP/1.0 200 OK\r\n\r\nhello");
    let events = w.rst(false);
    assert_eq!(statuses(&events), s(&[("/old", 200)]));
    assert_eq!(w.t.connections(), 0);
}

#[test]
fn oversized_heads_are_dropped_and_parsing_resumes() {
    let mut w = Wire::new(CaptureLimits {
        max_head_bytes: 256,
        max_body_bytes: 0,
        decrypt_tls: false,
    });
    let mut big = b"GET /big HTTP/1.1\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1000));
    big.extend_from_slice(b"\r\nOther: 1\r\n\r\n");
    big.extend_from_slice(&get("/next"));
    let events = w.send(true, &big, 100);
    assert_eq!(targets(&events), vec![("GET".into(), "/next".into())]);
    assert_eq!(w.t.drops.oversized_heads, 1);
    // Too many header fields counts the same way.
    let mut many = b"GET /many HTTP/1.1\r\n".to_vec();
    for i in 0..150 {
        many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let mut w = Wire::new(CaptureLimits {
        max_head_bytes: 65536,
        max_body_bytes: 0,
        decrypt_tls: false,
    });
    let mut wire = many;
    wire.extend_from_slice(&get("/fine"));
    let events = w.client(&wire);
    assert_eq!(targets(&events), vec![("GET".into(), "/fine".into())]);
    assert_eq!(w.t.drops.oversized_heads, 1);
}

#[test]
fn invalid_content_length_is_a_violation_and_parsing_resyncs() {
    for bad in ["abc", "-5", "5, 6", "1e3"] {
        let mut w = Wire::bodies(64);
        let mut wire = format!("POST /a HTTP/1.1\r\nContent-Length: {bad}\r\n\r\nxyz\r\n").into_bytes();
        wire.extend_from_slice(&get("/b"));
        let events = w.client(&wire);
        assert_eq!(targets(&events), vec![("GET".into(), "/b".into())], "{bad}");
        assert_eq!(w.t.drops.protocol_violations, 1, "{bad}");
    }
}

#[test]
fn content_length_with_transfer_encoding_is_a_violation_and_the_smuggled_request_is_seen() {
    let mut w = Wire::bodies(64);
    let mut wire =
        b"POST /front HTTP/1.1\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec();
    wire.extend_from_slice(b"GET /admin HTTP/1.1\r\nHost: internal\r\n\r\n");
    let events = w.client(&wire);
    assert_eq!(targets(&events), vec![("GET".into(), "/admin".into())]);
    assert_eq!(w.t.drops.protocol_violations, 1);
    // In a response: the exchange is still reported, its body marked truncated.
    let events = w.server(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
    let x = exchanges(&events);
    assert_eq!((x[0].status, x[0].response.body_truncated), (200, true));
    assert_eq!(w.t.drops.protocol_violations, 2);
}

#[test]
fn bad_chunked_framing_cuts_the_message_and_parsing_resyncs() {
    for bad in [
        "fffffffffffffffffffff\r\n",
        "10000000001\r\n",
        "zz\r\n",
        "3\r\nabcX",
    ] {
        let mut w = Wire::bodies(64);
        let mut wire = b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        wire.extend_from_slice(bad.as_bytes());
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&get("/d"));
        let events = w.client(&wire);
        let r = requests(&events);
        assert_eq!(r.len(), 2, "{bad:?}: {:?}", targets(&events));
        assert_eq!((r[0].target.as_str(), r[0].body_truncated), ("/c", true));
        assert_eq!(r[1].target, "/d");
        assert_eq!(w.t.drops.protocol_violations, 1, "{bad:?}");
    }
}

#[test]
fn garbage_between_messages_is_a_violation_and_skipped() {
    let mut w = Wire::bodies(0);
    w.client(&get("/1"));
    let mut wire = b"\x00\x01binary junk\r\nmore junk\n".to_vec();
    wire.extend_from_slice(&get("/2"));
    let events = w.client(&wire);
    assert_eq!(targets(&events), vec![("GET".into(), "/2".into())]);
    assert_eq!(w.t.drops.protocol_violations, 1);
    assert!(w.t.drops.skipped_bytes >= 20);
}

#[test]
fn non_http_connections_are_given_up() {
    let mut w = Wire::bodies(0);
    let tls: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let events = w.send(true, &tls, 1448);
    assert!(events.is_empty());
    assert_eq!(w.t.drops.non_http, 1);
    assert_eq!(w.t.drops.protocol_violations, 0, "a stream start is only a guess");
    assert!(w.t.drops.skipped_bytes <= NON_HTTP_GIVE_UP_BYTES + 1448);
    assert_eq!(w.t.buffered_bytes(), 0);
}
