//! TCP-level behaviour seen through the tracker: reordering, retransmits, wrap-around, kernel
//! truncation, lost records, connection ends, and the memory bounds.

use super::*;

/// Bytes of one skb the kernel copies.
const COPIED: usize = palisade_common::MAX_CHUNKS_PER_SKB * palisade_common::CHUNK_BYTES;

#[test]
fn out_of_order_segments_are_put_back_in_order() {
    let mut w = Wire::bodies(64);
    let wire = post("/order", b"0123456789");
    let (a, rest) = wire.split_at(20);
    let (b, c) = rest.split_at(15);
    let base = w.seq[0];
    assert!(w.skb_at(true, base, a, 0).is_empty());
    assert!(
        w.skb_at(true, base + 35, c, 0).is_empty(),
        "held: a hole before it"
    );
    let events = w.skb_at(true, base + 20, b, 0);
    let r = requests(&events);
    assert_eq!((r.len(), r[0].body.as_slice()), (1, &b"0123456789"[..]));
    assert_eq!(w.t.drops.gaps, 0);
    assert_eq!(w.t.buffered_bytes(), w.t.recount_buffered_bytes());
}

#[test]
fn retransmits_with_overlapping_partial_data_are_not_counted_twice() {
    let mut w = Wire::bodies(64);
    let mut wire = post("/once", b"abcdefghij");
    wire.extend_from_slice(&get("/twice"));
    let base = w.seq[0];
    let at = |i: usize| base + i as u32;
    let mut events = w.skb_at(true, at(0), &wire[..30], 0);
    events.extend(w.skb_at(true, at(0), &wire[..30], 0)); // plain retransmit
    events.extend(w.skb_at(true, at(10), &wire[10..50], 0)); // overlaps, carries new bytes
    events.extend(w.skb_at(true, at(45), &wire[45..], 0));
    events.extend(w.skb_at(true, at(0), &wire, 0)); // everything again, coalesced
    assert_eq!(
        targets(&events),
        vec![("POST".into(), "/once".into()), ("GET".into(), "/twice".into())]
    );
    assert_eq!(requests(&events)[0].body, b"abcdefghij");
    assert_eq!(w.t.drops.duplicate_bytes, 30 + 20 + 5 + wire.len() as u64);
}

#[test]
fn sequence_numbers_wrap_around_mid_message() {
    let mut w = Wire::bodies(1024);
    w.seq = [u32::MAX - 80, u32::MAX - 5];
    let body = vec![b'q'; 500];
    let wire = post("/wrap", &body);
    // In order up to 50, then out of order: [50, 100) spans the wrap at 81.
    let base = w.seq[0];
    assert!(w.skb_at(true, base, &wire[..50], 0).is_empty());
    assert!(w.skb_at(true, base.wrapping_add(100), &wire[100..], 0).is_empty());
    let events = w.skb_at(true, base.wrapping_add(50), &wire[50..100], 0);
    let r = requests(&events);
    assert_eq!((r.len(), r[0].body.len(), r[0].body_truncated), (1, 500, false));
    w.seq[0] = base.wrapping_add(wire.len() as u32);
    let events = w.send(false, &ok(b"wrapped"), 3);
    assert_eq!(statuses(&events), s(&[("/wrap", 200)]));
    assert_eq!(w.t.drops.gaps, 0);
}

/// A 1 MiB upload in 4 KiB segments, one of which is an skb one chunk larger than the kernel copies.
fn upload_with_kernel_gap(max_body: usize) -> (Wire, Vec<HttpEvent>) {
    let mut w = Wire::bodies(max_body);
    let body: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let wire = post("/upload", &body);
    let head_len = wire.len() - body.len();
    let mut events = w.send(true, &wire[..head_len + 512 * 1024], 4096);
    // One GRO-merged skb one chunk larger than what the kernel copies: a chunk never seen.
    let skb = (palisade_common::MAX_CHUNKS_PER_SKB + 1) * palisade_common::CHUNK_BYTES;
    let at = head_len + 512 * 1024;
    let seq = w.seq[0];
    events.extend(w.skb_at(true, seq, &wire[at..at + skb], 0));
    w.seq[0] = seq.wrapping_add(skb as u32);
    events.extend(w.send(true, &wire[at + skb..], 4096));
    (w, events)
}

#[test]
fn a_kernel_truncated_skb_inside_a_1_mib_body_is_skipped_and_counted() {
    let (mut w, events) = upload_with_kernel_gap(64 * 1024);
    let r = requests(&events);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].body_len, r[0].body_truncated, r[0].body.len()),
        (1 << 20, true, 64 * 1024)
    );
    assert!(r[0].body.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    assert_eq!(
        (w.t.drops.gaps, w.t.drops.gap_bytes),
        (1, palisade_common::CHUNK_BYTES as u64)
    );
    let events = w.server(&status(201));
    assert_eq!(statuses(&events), s(&[("/upload", 201)]));
    w.client(&get("/next"));
    assert_eq!(
        statuses(&w.server(&status(200))),
        s(&[("/next", 200)]),
        "still in sync"
    );

    // With room for the whole body, only the bytes before the gap are kept.
    let (w, events) = upload_with_kernel_gap(2 << 20);
    let r = requests(&events);
    assert_eq!((r[0].body_len, r[0].body.len()), (1 << 20, 512 * 1024 + COPIED));
    assert_eq!(
        w.t.drops.body_bytes_truncated,
        ((1 << 20) - 512 * 1024 - COPIED - palisade_common::CHUNK_BYTES) as u64
    );
}

#[test]
fn a_hole_inside_a_head_drops_the_partial_message_and_resyncs() {
    let mut w = Wire::bodies(0);
    let first = get("/lost-half");
    w.client(&first[..10]);
    w.lose(true, 10);
    w.client(&first[20..]);
    let events = w.client(&get("/whole"));
    assert!(events.is_empty(), "held behind the hole for now");
    // The hole is given up after the reorder timeout (on the next record, or housekeeping).
    w.ts += REORDER_TIMEOUT_NS;
    let events = w.client(&get("/later"));
    assert_eq!(
        targets(&events),
        vec![("GET".into(), "/whole".into()), ("GET".into(), "/later".into())]
    );
    assert_eq!(w.t.drops.partial_heads, 1);
    assert_eq!((w.t.drops.gaps, w.t.drops.gap_bytes), (1, 10));
    assert_eq!(w.t.drops.protocol_violations, 0);

    let mut w = Wire::bodies(0);
    w.client(b"GET /a");
    w.lose(true, 5);
    w.client(&get("/b"));
    let mut out = vec![];
    w.t.evict_idle_into(w.ts + REORDER_TIMEOUT_NS, &w.limits, &mut out);
    assert_eq!(targets(&out), vec![("GET".into(), "/b".into())]);
    assert_eq!(w.t.connections(), 1, "not idle yet");
}

#[test]
fn a_response_gives_up_request_holes_that_can_no_longer_fill() {
    let mut w = Wire::bodies(1 << 16);
    let body = vec![b'b'; 6000];
    let wire = post("/form", &body);
    w.client(&wire[..1000]);
    w.lose(true, 1460);
    w.client(&wire[2460..]);
    let events = w.server(&status(200));
    let r = requests(&events);
    assert_eq!((r[0].body_len, r[0].body_truncated), (6000, true));
    assert_eq!(statuses(&events), s(&[("/form", 200)]));
}

#[test]
fn a_full_reorder_buffer_gives_up_the_hole() {
    let mut w = Wire::bodies(0);
    let body = vec![b'k'; 200_000];
    let wire = post("/huge", &body);
    w.client(&wire[..100]);
    w.lose(true, 1000);
    let events = w.send(true, &wire[1100..], 4096);
    assert_eq!(
        requests(&events).len(),
        1,
        "the body completed once the hole was given up"
    );
    assert!(w.t.buffered_bytes() <= 2 * MAX_HELD_BYTES);
    assert_eq!(w.t.drops.gaps, 1);
}

#[test]
fn joining_mid_stream_resyncs_without_violations() {
    let mut w = Wire::bodies(0);
    let mut wire = b"ody of a request we never saw the head of\r\n".to_vec();
    wire.extend_from_slice(&get("/seen"));
    let events = w.client(&wire);
    assert_eq!(targets(&events), vec![("GET".into(), "/seen".into())]);
    let events = w.server(b"ONSE BODY\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(statuses(&events), s(&[("/seen", 200)]));
    assert_eq!(w.t.drops.protocol_violations, 0);
}

#[test]
fn rst_and_idle_eviction_report_cut_requests() {
    let mut w = Wire::bodies(64);
    w.client(&post("/cut", b"0123456789")[..60]);
    let events = w.rst(true);
    let r = requests(&events);
    assert_eq!((r[0].target.as_str(), r[0].body_truncated), ("/cut", true));
    assert_eq!((w.t.connections(), w.t.buffered_bytes()), (0, 0));
    assert_eq!(w.t.drops.unanswered_requests, 1);

    let mut w = Wire::bodies(64);
    w.client(&post("/slow", b"0123456789")[..60]);
    let mut out = vec![];
    w.t.evict_idle_into(w.ts + IDLE_TIMEOUT_NS, &w.limits, &mut out);
    assert_eq!(targets(&out), vec![("POST".into(), "/slow".into())]);
    assert_eq!((w.t.connections(), w.t.buffered_bytes()), (0, 0));
}

#[test]
fn fin_only_and_data_with_fin_end_the_stream() {
    let mut w = Wire::bodies(0);
    let mut req = get("/last");
    req.extend_from_slice(b"GET /partial HT");
    w.client(&req);
    let seq = w.seq[1];
    let resp = b"HTTP/1.1 200 OK\r\n\r\nbye";
    let events = w.skb_at(false, seq, resp, TCP_FIN);
    assert_eq!(statuses(&events), s(&[("/last", 200)]));
    let events = w.fin(true);
    assert!(events.is_empty());
    assert_eq!(w.t.drops.partial_heads, 1);
    assert_eq!(w.t.connections(), 0);
}

#[test]
fn the_global_budget_sheds_the_biggest_buffers() {
    let budget = 256 * 1024;
    let mut w = Wire::bodies(64 * 1024);
    w.t = HttpTracker::with_bounds(1000, budget);
    for port in 0..20u16 {
        w.port = 20000 + port;
        w.seq = [1, 1];
        // Bodies that never complete: kept while waiting.
        let wire = post("/pile", &vec![b'p'; 100_000]);
        w.send(true, &wire[..60_000], 4096);
        assert!(w.t.buffered_bytes() <= budget, "{}", w.t.buffered_bytes());
        assert_eq!(w.t.buffered_bytes(), w.t.recount_buffered_bytes());
    }
    assert!(w.t.drops.budget_evictions > 0);
    assert!(w.t.drops.body_bytes_truncated > 0);
}

#[test]
fn the_connection_cap_evicts_the_least_recently_active() {
    let mut w = Wire::bodies(0);
    w.t = HttpTracker::with_bounds(8, BUFFER_BUDGET_BYTES);
    for port in 0..20u16 {
        w.port = 30000 + port;
        w.seq = [1, 1];
        w.client(&get(&format!("/c/{port}")));
        assert!(w.t.connections() <= 8);
    }
    assert_eq!(w.t.drops.connections, 12);
    assert_eq!(w.t.drops.unanswered_requests, 12);
    // The most recent connection survived.
    w.seq = [1, 1];
    assert_eq!(statuses(&w.server(&status(200))), s(&[("/c/19", 200)]));
}

#[test]
fn inconsistent_record_headers_are_survived() {
    let mut w = Wire::bodies(16);
    let first = get("/x");
    // payload_len and captured_len that do not describe the data.
    let events = w.record(header(true, 40000, 1000, 0, 0, 0, 0, 1), &first);
    assert_eq!(targets(&events), vec![("GET".into(), "/x".into())]);
    let next = 1000 + first.len() as u32;
    // An absurd payload_len is not trusted for a kernel gap; a chunk offset far ahead is held.
    assert!(w
        .record(header(true, 40000, next, u32::MAX, 0, 9, 0, 2), &get("/y"))
        .iter()
        .all(|e| matches!(e, HttpEvent::Request(_))));
    w.record(header(true, 40000, next, 100, 1 << 30, 9, 0, 3), b"junk");
    // A FIN whose sequence number lies behind the stream, then data after it.
    w.record(header(true, 40000, next, u32::MAX - 5, 0, 0, TCP_FIN, 4), b"");
    w.record(header(true, 40000, next + 500, 0, 0, 0, 0, 5), &get("/z"));
    w.record(
        header(false, 40000, 9, 0, 0, 0, TCP_FIN | TCP_RST, 6),
        b"HTTP/1.1 200 OK\r\n\r\n",
    );
    assert_eq!(w.t.connections(), 0);
    assert_eq!(w.t.buffered_bytes(), 0);
}
