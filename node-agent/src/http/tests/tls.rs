//! Plaintext records from the TLS uprobes (`FAMILY_TLS`): byte offsets instead of sequence
//! numbers, the process and the `SSL *` instead of addresses, close records from SSL_free.

use super::*;
use palisade_common::{DIRECTION_EGRESS, FAMILY_TLS, PAGE_CHUNK_BYTES};

const TGID: u32 = 4242;
const SSL: u64 = 0x5555_0000_1234;

/// A TLS record: `ingress` is plaintext SSL_read returned.
fn tls(
    ingress: bool,
    offset: u32,
    call_len: u32,
    chunk_offset: u32,
    data: &[u8],
    flags: u8,
    ts: u64,
) -> CaptureHeader {
    let mut process = [0u8; 16];
    process[..4].copy_from_slice(&TGID.to_le_bytes());
    let mut ssl = [0u8; 16];
    ssl[..8].copy_from_slice(&SSL.to_le_bytes());
    CaptureHeader {
        timestamp_ns: ts,
        cgroup_id: CGROUP,
        tcp_seq: offset,
        payload_len: call_len,
        chunk_offset,
        captured_len: data.len() as u32,
        source_addr: if ingress { ssl } else { process },
        dest_addr: if ingress { process } else { ssl },
        source_port: 0,
        dest_port: 0,
        family: FAMILY_TLS,
        direction: if ingress {
            DIRECTION_INGRESS
        } else {
            DIRECTION_EGRESS
        },
        tcp_flags: flags,
        _padding: [0],
    }
}

fn feed(t: &mut HttpTracker, limits: &CaptureLimits, h: CaptureHeader, data: &[u8]) -> Vec<HttpEvent> {
    let mut out = vec![];
    t.feed(&h, data, limits, &mut out);
    out
}

#[test]
fn tls_plaintext_is_parsed_paired_and_closed_by_ssl_free() {
    let limits = CaptureLimits {
        max_head_bytes: 8192,
        max_body_bytes: 64,
        decrypt_tls: false,
    };
    let mut t = HttpTracker::new();
    let req = post("/secure", b"card=4111");
    let (a, b) = req.split_at(30);
    // Two SSL_read calls.
    assert!(feed(&mut t, &limits, tls(true, 0, 30, 0, a, 0, 1), a).is_empty());
    let events = feed(&mut t, &limits, tls(true, 30, b.len() as u32, 0, b, 0, 2), b);
    let r = requests(&events);
    assert_eq!(
        (r[0].target.as_str(), r[0].body.as_slice(), r[0].tls),
        ("/secure", &b"card=4111"[..], true)
    );
    assert_eq!((r[0].local.1, r[0].remote.1, r[0].role), (0, 0, PodRole::Server));
    let resp = ok(b"done");
    let events = feed(
        &mut t,
        &limits,
        tls(false, 0, resp.len() as u32, 0, &resp, 0, 3),
        &resp,
    );
    assert_eq!(statuses(&events), s(&[("/secure", 200)]));
    assert!(exchanges(&events)[0].request.tls);
    // SSL_free: one close record per direction, at the end offsets.
    feed(
        &mut t,
        &limits,
        tls(true, req.len() as u32, 0, 0, b"", TCP_FIN, 4),
        b"",
    );
    feed(
        &mut t,
        &limits,
        tls(false, resp.len() as u32, 0, 0, b"", TCP_FIN, 4),
        b"",
    );
    assert_eq!((t.connections(), t.drops.gaps), (0, 0));
}

#[test]
fn a_tls_stream_restarting_at_offset_zero_resyncs() {
    let limits = CaptureLimits::default();
    let mut t = HttpTracker::new();
    let first = get("/one");
    feed(
        &mut t,
        &limits,
        tls(true, 0, first.len() as u32, 0, &first, 0, 1),
        &first,
    );
    let partial = b"GET /cut-by-the-restart HT";
    let at = first.len() as u32;
    feed(
        &mut t,
        &limits,
        tls(true, at, partial.len() as u32, 0, partial, 0, 2),
        partial,
    );
    // The kernel's offset map evicted the stream: it counts from 0 again.
    let next = get("/two");
    let events = feed(
        &mut t,
        &limits,
        tls(true, 0, next.len() as u32, 0, &next, 0, 3),
        &next,
    );
    assert_eq!(targets(&events), vec![("GET".into(), "/two".into())]);
    assert_eq!((t.drops.gaps, t.drops.partial_heads), (1, 1));
}

#[test]
fn a_large_ssl_write_past_the_copy_limit_is_a_known_gap() {
    let limits = CaptureLimits {
        max_head_bytes: 8192,
        max_body_bytes: 1 << 20,
        decrypt_tls: false,
    };
    let mut t = HttpTracker::new();
    let req = get("/download");
    feed(
        &mut t,
        &limits,
        tls(true, 0, req.len() as u32, 0, &req, 0, 1),
        &req,
    );
    let copied = palisade_common::MAX_CHUNKS_PER_SKB * PAGE_CHUNK_BYTES;
    let body = vec![b'd'; copied + 20_000];
    let resp = ok(&body);
    // One SSL_write of the whole response: the records the kernel copies, the rest not copied.
    let mut events = vec![];
    for k in 0..palisade_common::MAX_CHUNKS_PER_SKB as u32 {
        let from = (k as usize) * PAGE_CHUNK_BYTES;
        let chunk = &resp[from..from + PAGE_CHUNK_BYTES];
        events.extend(feed(
            &mut t,
            &limits,
            tls(false, 0, resp.len() as u32, from as u32, chunk, 0, 2),
            chunk,
        ));
    }
    let x = exchanges(&events);
    assert_eq!(x.len(), 1);
    assert_eq!(
        (x[0].response.body_len, x[0].response.body_truncated),
        (body.len() as u64, true)
    );
    assert_eq!(t.drops.gap_bytes, (resp.len() - copied) as u64);
}
