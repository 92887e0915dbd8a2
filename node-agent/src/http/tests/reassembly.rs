//! The reassembler on its own.

use super::super::reassembly::{Piece, Reassembler, MAX_HELD_BYTES, REORDER_TIMEOUT_NS};
use super::super::ParserDrops;

#[derive(Debug, PartialEq, Eq)]
enum Out {
    Data(Vec<u8>),
    Missing(u64),
}

/// A reassembler and what it delivered, adjacent data merged.
#[derive(Default)]
struct R {
    r: Reassembler,
    out: Vec<Out>,
    drops: ParserDrops,
}

impl R {
    fn sink(out: &mut Vec<Out>) -> impl FnMut(Piece) + '_ {
        move |p| match p {
            Piece::Data(d, _) => match out.last_mut() {
                Some(Out::Data(prev)) => prev.extend_from_slice(d),
                _ => out.push(Out::Data(d.to_vec())),
            },
            Piece::Missing(n, _) => out.push(Out::Missing(n)),
        }
    }

    fn push(&mut self, seq: u32, data: &[u8], ts: u64) {
        self.r.push(seq, data, ts, &mut Self::sink(&mut self.out));
        self.r.take_counters(&mut self.drops);
    }

    fn missing(&mut self, seq: u32, len: u64) {
        self.r.push_missing(seq, len, 0, &mut Self::sink(&mut self.out));
        self.r.take_counters(&mut self.drops);
    }

    fn take(&mut self) -> Vec<Out> {
        std::mem::take(&mut self.out)
    }
}

fn data(s: &[u8]) -> Out {
    Out::Data(s.to_vec())
}

#[test]
fn in_order_bytes_pass_and_retransmits_and_overlaps_are_trimmed() {
    let mut r = R::default();
    r.push(100, b"abc", 0);
    r.push(103, b"def", 0);
    r.push(100, b"abcdef", 0); // full retransmit
    r.push(101, b"bcdefgh", 0); // overlapping retransmit with new bytes
    r.push(104, b"ef", 0); // inside what was delivered
    assert_eq!(r.take(), vec![data(b"abcdefgh")]);
    assert_eq!(r.drops.duplicate_bytes, 6 + 5 + 2);
    assert_eq!(r.r.buffered(), 0);
}

#[test]
fn out_of_order_segments_wait_for_the_hole() {
    let mut r = R::default();
    r.push(0, b"ab", 0);
    r.push(6, b"gh", 0);
    r.push(4, b"ef", 0);
    assert_eq!(r.take(), vec![data(b"ab")]);
    assert!(r.r.buffered() > 4);
    // Overlapping held segments: first arrival wins, nothing is doubled.
    r.push(5, b"XYZW", 0);
    r.push(2, b"cd", 0);
    assert_eq!(r.take(), vec![data(b"cdefghW")]);
    assert_eq!(r.r.buffered(), 0);
    assert_eq!(r.drops.gaps, 0);
}

#[test]
fn sequence_numbers_wrap_around() {
    let mut r = R::default();
    let start = u32::MAX - 2;
    r.push(start, b"abc", 0); // u32::MAX-2 ..= u32::MAX
    r.push(3, b"gh", 0); // past the wrap, ahead of a hole
    r.push(0, b"def", 0); // 0..3 fills it
    r.push(start.wrapping_add(1), b"bcdefg", 0); // retransmit across the wrap
    r.push(5, b"ij", 0);
    assert_eq!(r.take(), vec![data(b"abcdefghij")]);
    assert_eq!(r.drops.duplicate_bytes, 6);
}

#[test]
fn a_full_buffer_gives_up_the_oldest_hole() {
    let mut r = R::default();
    r.push(0, b"start", 0);
    let seg = vec![b'x'; 4000];
    let mut seq = 1005u32; // 1000 bytes lost after "start"
    for _ in 0..20 {
        r.push(seq, &seg, 0);
        seq += 4000;
    }
    let out = r.take();
    assert_eq!(out[0], data(b"start"));
    assert_eq!(out[1], Out::Missing(1000));
    let delivered: usize = out
        .iter()
        .map(|o| match o {
            Out::Data(d) => d.len(),
            Out::Missing(_) => 0,
        })
        .sum();
    assert!(delivered > 5 + 4000, "the held data followed the hole");
    assert!(r.r.buffered() <= MAX_HELD_BYTES);
    assert_eq!((r.drops.gaps, r.drops.gap_bytes), (1, 1000));
    // The lost bytes arriving now are late, not a retransmit.
    r.push(5, &[b'y'; 1000], 0);
    assert_eq!(r.drops.out_of_order_dropped, 1000);
    assert!(r.take().is_empty());
}

#[test]
fn known_missing_ranges_pass_as_gaps_and_seen_bytes_win() {
    let mut r = R::default();
    r.push(0, b"0123", 0);
    r.missing(8, 4); // the kernel did not copy 8..12
    r.push(12, b"cd", 0);
    r.push(4, b"4567", 0);
    assert_eq!(r.take(), vec![data(b"01234567"), Out::Missing(4), data(b"cd")]);
    // A range marked missing that was already seen (or held) stays seen; at the in-order point
    // it is given up at once.
    r.push(14, b"ef", 0);
    r.push(18, b"ij", 0);
    r.missing(14, 6);
    r.push(16, b"gh", 0);
    assert_eq!(r.take(), vec![data(b"ef"), Out::Missing(2), data(b"ij")]);
    assert_eq!(r.drops.out_of_order_dropped, 2, "the given-up bytes came late");
}

#[test]
fn holes_expire_after_the_reorder_timeout() {
    let mut r = R::default();
    r.push(0, b"a", 10);
    r.push(5, b"f", 20);
    let mut out = vec![];
    r.r.expire(20 + REORDER_TIMEOUT_NS - 1, &mut R::sink(&mut out));
    assert!(out.is_empty(), "{out:?}");
    r.r.expire(20 + REORDER_TIMEOUT_NS, &mut R::sink(&mut out));
    assert_eq!(out, vec![Out::Missing(4), data(b"f")]);
}

#[test]
fn fin_flushes_gives_up_the_tail_and_ignores_later_data() {
    let mut r = R::default();
    r.push(0, b"ab", 0);
    r.push(4, b"ef", 0);
    r.push(9, b"late", 0); // crosses the FIN at 10: trimmed
    r.r.finish(10, 0, &mut R::sink(&mut r.out));
    r.push(10, b"after", 0);
    assert_eq!(
        r.take(),
        vec![
            data(b"ab"),
            Out::Missing(2),
            data(b"ef"),
            Out::Missing(3),
            data(b"l")
        ]
    );
}
