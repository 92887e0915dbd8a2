//! Merging the capture rings into one stream in timestamp order.
//!
//! The cgroup programs write into the ring of the CPU they run on, so one connection's records
//! are spread over rings: a request's ingress record is in the ring of the CPU whose softirq
//! received it, the response's egress record in the ring of the server's CPU. The parser pairs a
//! response with the request before it, so the rings are merged by the records' timestamps
//! (`bpf_ktime_get_ns`, one clock on every CPU).
//!
//! A ring can only be merged up to a point in time all CPUs have passed: a program that took its
//! timestamp but has not committed its record yet would otherwise be overtaken. So records later
//! than a watermark, a little before the drain started, stay in their ring for the next drain.
//! Within one ring, records are passed on in ring order, as the kernel reserved them.

use std::{cmp::Reverse, collections::BinaryHeap};

/// How long before the drain's start the watermark lies: far longer than a program takes from
/// reading the clock to committing its record (microseconds, the 16 chunks of a 256 KiB skb
/// included), short enough to delay records by no more than a drain interval.
pub const MERGE_SLACK_NS: u64 = 2_000_000;

/// Records to merge, one source per ring.
pub(super) trait RecordSource {
    /// The next record without consuming it; `None` when the source has none ready.
    fn peek(&mut self) -> Option<&[u8]>;
    /// Consumes the record `peek` returned.
    fn consume(&mut self);
}

/// What one merge did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Merged {
    /// Records passed on.
    pub delivered: usize,
    /// Records are left in a source because they are later than the watermark.
    pub held: bool,
}

/// The record's timestamp: its header's first field (`CaptureHeader::timestamp_ns`). A record
/// too short to have one (malformed; the caller counts it) sorts first.
fn record_timestamp(record: &[u8]) -> u64 {
    record
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// Passes up to `max` records of `sources` to `deliver` (with the index of their source),
/// oldest timestamp first, each source's records in its own order. With a `watermark`, a source
/// stops at its first record later than it; without one (a single source) every ready record
/// goes.
pub(super) fn merge<S: RecordSource>(
    sources: &mut [S],
    max: usize,
    watermark: Option<u64>,
    mut deliver: impl FnMut(usize, &[u8]),
) -> Merged {
    let watermark = watermark.unwrap_or(u64::MAX);
    let mut merged = Merged::default();
    // The head of each source that has one due: (timestamp, source), smallest first.
    let mut heads = BinaryHeap::with_capacity(sources.len());
    for (i, source) in sources.iter_mut().enumerate() {
        match source.peek().map(record_timestamp) {
            Some(ts) if ts <= watermark => heads.push(Reverse((ts, i))),
            Some(_) => merged.held = true,
            None => {}
        }
    }
    while merged.delivered < max {
        let Some(Reverse((_, i))) = heads.pop() else {
            break;
        };
        let source = &mut sources[i];
        // Take from this source for as long as it stays the oldest: records come in runs from
        // one CPU, and a run costs no heap operation.
        while let Some(record) = source.peek() {
            deliver(i, record);
            source.consume();
            merged.delivered += 1;
            if merged.delivered >= max {
                break;
            }
            match source.peek().map(record_timestamp) {
                Some(ts) if ts > watermark => {
                    merged.held = true;
                    break;
                }
                Some(ts) => {
                    if heads.peek().is_some_and(|Reverse((next, _))| *next < ts) {
                        heads.push(Reverse((ts, i)));
                        break;
                    }
                }
                None => break,
            }
        }
    }
    merged
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A ring of records, each its timestamp then a tag byte.
    struct Fake {
        records: Vec<Vec<u8>>,
        next: usize,
        /// Records from here on are not ready yet (being written).
        ready: usize,
    }

    impl Fake {
        fn new(records: &[(u64, u8)]) -> Self {
            let records: Vec<Vec<u8>> = records
                .iter()
                .map(|(ts, tag)| {
                    let mut r = ts.to_ne_bytes().to_vec();
                    r.push(*tag);
                    r
                })
                .collect();
            let ready = records.len();
            Fake {
                records,
                next: 0,
                ready,
            }
        }
    }

    impl RecordSource for Fake {
        fn peek(&mut self) -> Option<&[u8]> {
            (self.next < self.ready).then(|| self.records[self.next].as_slice())
        }
        fn consume(&mut self) {
            self.next += 1;
        }
    }

    fn run(sources: &mut [Fake], max: usize, watermark: Option<u64>) -> (Vec<u8>, Merged) {
        let mut tags = vec![];
        let merged = merge(sources, max, watermark, |_, r| tags.push(r[8]));
        (tags, merged)
    }

    #[test]
    fn a_request_in_one_ring_comes_before_its_response_in_another() {
        // The response's CPU (ring 0) is listed first; the request (ring 1) is older.
        let mut rings = [
            Fake::new(&[(20, b'R'), (40, b'S')]),
            Fake::new(&[(10, b'Q'), (30, b'P')]),
        ];
        let (tags, merged) = run(&mut rings, 100, Some(1_000));
        assert_eq!(tags, b"QRPS");
        assert_eq!(
            merged,
            Merged {
                delivered: 4,
                held: false
            }
        );
    }

    #[test]
    fn records_later_than_the_watermark_wait_for_the_next_drain() {
        let mut rings = [
            Fake::new(&[(5, b'a'), (50, b'c')]),
            Fake::new(&[(10, b'b'), (60, b'd')]),
        ];
        let (tags, merged) = run(&mut rings, 100, Some(20));
        assert_eq!(tags, b"ab");
        assert!(merged.held);
        let (tags, merged) = run(&mut rings, 100, Some(100));
        assert_eq!(tags, b"cd");
        assert!(!merged.held);
        let (tags, merged) = run(&mut rings, 100, Some(100));
        assert!(tags.is_empty());
        assert_eq!(merged, Merged::default());
    }

    #[test]
    fn a_ring_keeps_its_own_order() {
        // Ring 0 is slightly out of order within itself (a softirq between a program's clock
        // read and its reservation): its order is kept.
        let mut rings = [
            Fake::new(&[(1, b'a'), (3, b'b'), (2, b'c'), (9, b'f')]),
            Fake::new(&[(4, b'd'), (5, b'e')]),
        ];
        let (tags, _) = run(&mut rings, 100, None);
        assert_eq!(tags, b"abcdef");
    }

    #[test]
    fn a_record_still_being_written_stops_its_ring_only() {
        let mut rings = [Fake::new(&[(1, b'a'), (2, b'x')]), Fake::new(&[(3, b'b')])];
        rings[0].ready = 1;
        let (tags, merged) = run(&mut rings, 100, Some(10));
        assert_eq!(tags, b"ab");
        assert!(
            !merged.held,
            "a record being written is not held by the watermark"
        );
        rings[0].ready = 2;
        let (tags, _) = run(&mut rings, 100, Some(10));
        assert_eq!(tags, b"x");
    }

    #[test]
    fn at_most_max_records_go_and_the_rest_stay_in_order() {
        let mut rings = [
            Fake::new(&[(1, b'a'), (3, b'c'), (5, b'e')]),
            Fake::new(&[(2, b'b'), (4, b'd'), (6, b'f')]),
        ];
        let (tags, merged) = run(&mut rings, 4, Some(10));
        assert_eq!((tags.as_slice(), merged.delivered), (&b"abcd"[..], 4));
        let (tags, _) = run(&mut rings, 4, Some(10));
        assert_eq!(tags, b"ef");
    }

    #[test]
    fn one_source_without_a_watermark_goes_whatever_its_timestamps() {
        let mut rings = [Fake::new(&[(u64::MAX, b'a'), (0, b'b')])];
        let (tags, merged) = run(&mut rings, 100, None);
        assert_eq!(tags, b"ab");
        assert!(!merged.held);
    }

    #[test]
    fn a_record_too_short_for_a_timestamp_sorts_first() {
        assert_eq!(record_timestamp(&[1, 2, 3]), 0);
        assert_eq!(record_timestamp(&7u64.to_ne_bytes()), 7);
    }
}
