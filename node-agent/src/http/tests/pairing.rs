//! Pairing responses with requests: keep-alive, pipelining, interim responses, upgrades, roles,
//! and the compatibility entry point.

use super::*;

#[test]
fn pipelined_requests_in_one_segment_are_answered_in_order() {
    let mut w = Wire::bodies(64);
    let mut reqs = get("/1");
    reqs.extend_from_slice(&post("/2", b"payload"));
    reqs.extend_from_slice(&get("/3"));
    let events = w.client(&reqs);
    assert_eq!(
        targets(&events),
        vec![
            ("GET".into(), "/1".into()),
            ("POST".into(), "/2".into()),
            ("GET".into(), "/3".into())
        ]
    );
    assert_eq!(requests(&events)[1].body, b"payload");
    let mut resps = ok(b"one");
    resps.extend_from_slice(&status(201));
    resps.extend_from_slice(&status(404));
    // Responses split at awkward places.
    let events = w.send(false, &resps, 13);
    assert_eq!(statuses(&events), s(&[("/1", 200), ("/2", 201), ("/3", 404)]));
    let x = exchanges(&events);
    assert_eq!(x[1].request.body, b"payload", "the exchange carries the request");
    assert_eq!(x[0].response.body, b"one");
    // Keep-alive: the connection goes on.
    w.client(&get("/4"));
    assert_eq!(statuses(&w.server(&status(200))), s(&[("/4", 200)]));
    assert_eq!(w.t.drops, ParserDrops::default());
}

#[test]
fn expect_100_continue_pairs_the_final_response() {
    let mut w = Wire::bodies(64);
    let events = w.client(b"PUT /file HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
    assert!(events.is_empty(), "the request is reported once its body is read");
    let start = w.ts;
    assert!(w.server(b"HTTP/1.1 100 Continue\r\n\r\n").is_empty());
    let events = w.client(b"hello");
    assert_eq!(requests(&events)[0].body, b"hello");
    let events = w.server(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
    );
    let x = exchanges(&events);
    assert_eq!(statuses(&events), s(&[("/file", 201)]));
    assert_eq!(
        x[0].latency_ns,
        w.ts - start,
        "from the request's first byte to the response's end"
    );
    assert_eq!(w.t.drops.unmatched_responses, 0);
}

#[test]
fn after_101_switching_protocols_nothing_more_is_parsed() {
    let mut w = Wire::bodies(64);
    w.client(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    let events = w.server(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello");
    assert_eq!(statuses(&events), s(&[("/ws", 101)]));
    let mut frames = b"\x81\x85\x00\x00\x00\x00GET / HTTP/1.1\r\n\r\n".to_vec();
    frames.extend((0..3000u32).map(|i| (i * 7) as u8));
    assert!(w.client(&frames).is_empty());
    assert!(w
        .server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        .is_empty());
    assert_eq!(w.t.drops.upgraded, 1);
    assert_eq!(w.t.drops.protocol_violations, 0);
    assert_eq!(w.t.drops.unmatched_responses, 0);
    assert_eq!(w.t.buffered_bytes(), 0);
    w.fin(true);
    w.fin(false);
    assert_eq!(
        w.t.connections(),
        0,
        "an upgraded connection is still forgotten at its end"
    );
}

#[test]
fn a_successful_connect_is_a_tunnel_and_a_refused_one_is_not() {
    let mut w = Wire::bodies(0);
    w.client(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n");
    let events = w.server(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 4\r\n\r\nnope");
    assert_eq!(statuses(&events), s(&[("db:5432", 407)]));
    w.client(b"CONNECT db:5432 HTTP/1.1\r\nProxy-Authorization: x\r\n\r\n");
    let events = w.server(b"HTTP/1.1 200 Connection established\r\n\r\n");
    assert_eq!(statuses(&events), s(&[("db:5432", 200)]));
    assert!(w
        .client(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03")
        .is_empty());
    assert!(w.client(&get("/inside-the-tunnel")).is_empty());
    assert_eq!(w.t.drops.upgraded, 1);
}

#[test]
fn an_http2_preface_stops_parsing() {
    let mut w = Wire::bodies(0);
    assert!(w
        .client(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04")
        .is_empty());
    assert!(w.client(&get("/x")).is_empty());
    assert_eq!(w.t.drops.upgraded, 1);
}

#[test]
fn unmatched_responses_and_the_pending_cap_are_counted() {
    let mut w = Wire::bodies(0);
    assert!(exchanges(&w.server(&status(200))).is_empty());
    assert_eq!(w.t.drops.unmatched_responses, 1);
    let mut reqs = vec![];
    for i in 0..40 {
        reqs.extend_from_slice(&get(&format!("/p/{i}")));
    }
    let events = w.client(&reqs);
    assert_eq!(requests(&events).len(), 40);
    assert_eq!(w.t.drops.pending_overflow, 8);
    // The first eight responses answer the dropped requests: nothing to pair, nothing misread.
    for _ in 0..8 {
        assert!(exchanges(&w.server(&status(404))).is_empty());
    }
    let events = w.server(&status(200));
    assert_eq!(
        statuses(&events),
        s(&[("/p/8", 200)]),
        "the oldest request still waiting gets the next response"
    );
    assert_eq!(
        w.t.drops.unmatched_responses, 1,
        "owed responses are not unmatched"
    );
}

#[test]
fn a_pod_acting_as_client_sends_requests_on_egress() {
    let mut w = Wire::bodies(0);
    w.pod_is_client = true;
    let events = w.client(&get("/upstream"));
    let r = requests(&events);
    assert_eq!(
        (r[0].role, r[0].local.1, r[0].remote.1),
        (PodRole::Client, 8080, 40000)
    );
    let events = w.server(&status(503));
    assert_eq!(statuses(&events), s(&[("/upstream", 503)]));
}

#[test]
fn a_response_before_the_request_body_ends_is_still_paired() {
    let mut w = Wire::bodies(100);
    let body = vec![b'z'; 10_000];
    let wire = post("/big", &body);
    let events = w.client(&wire[..3000]);
    assert!(events.is_empty());
    let events = w.server(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n");
    let r = requests(&events);
    assert_eq!(
        (r[0].target.as_str(), r[0].body_truncated, r[0].body.len()),
        ("/big", true, 100)
    );
    assert_eq!(statuses(&events), s(&[("/big", 413)]));
    // The rest of the body is framed but reported nowhere.
    assert!(w.client(&wire[3000..]).is_empty());
    w.client(&get("/after"));
    assert_eq!(statuses(&w.server(&status(200))), s(&[("/after", 200)]));
}

#[test]
fn connections_are_kept_apart() {
    let mut w = Wire::bodies(0);
    w.client(&get("/a"));
    w.port = 40001;
    w.seq = [77, 88];
    w.client(&get("/b"));
    assert_eq!(statuses(&w.server(&status(201))), s(&[("/b", 201)]));
    w.port = 40000;
    w.seq = [1000 + get("/a").len() as u32, 5_000_000];
    assert_eq!(statuses(&w.server(&status(200))), s(&[("/a", 200)]));
    assert_eq!(w.t.connections(), 2);
    w.t.forget_cgroup(CGROUP);
    assert_eq!((w.t.connections(), w.t.buffered_bytes()), (0, 0));
}
