//! One direction of a TCP connection turned back into a byte stream, keyed by sequence numbers.
//!
//! In-order bytes go straight to the consumer. Retransmitted and overlapping bytes are trimmed so
//! nothing is delivered twice. Segments ahead of a hole are held (bounded) until the hole fills;
//! a hole that cannot fill (lost ring-buffer records, payload the kernel did not copy, the
//! buffer cap or the reorder timeout reached, the stream ended) is delivered as a count of
//! missing bytes. Sequence numbers are unwrapped into 64-bit stream offsets, so wrap-around at
//! 2^32 is invisible past this point.

use super::ParserDrops;
use std::collections::BTreeMap;

/// Most bytes (plus per-segment overhead) held out of order per direction.
pub const MAX_HELD_BYTES: usize = 64 * 1024;
/// Accounting cost of one held segment on top of its payload (allocation and map entry).
const SEGMENT_OVERHEAD: usize = 64;
/// A hole older than this (by capture timestamps) is given up.
pub const REORDER_TIMEOUT_NS: u64 = 1_000_000_000;
/// Offset of the first byte seen: leaves room below for sequence numbers that precede it.
const ORIGIN: u64 = 1 << 40;
/// Holes given up recently, to tell late arrivals from plain retransmits.
const RECENT_GAPS: usize = 4;

/// What the stream delivers, in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// Bytes, with the capture timestamp of the record that carried them.
    Data(&'a [u8], u64),
    /// This many bytes will never be seen.
    Missing(u64, u64),
}

#[derive(Debug)]
enum Seg {
    Data(Vec<u8>),
    Missing(u64),
}

impl Seg {
    fn len(&self) -> u64 {
        match self {
            Seg::Data(d) => d.len() as u64,
            Seg::Missing(n) => *n,
        }
    }

    fn cost(&self) -> usize {
        SEGMENT_OVERHEAD
            + match self {
                Seg::Data(d) => d.len(),
                Seg::Missing(_) => 0,
            }
    }

    /// The part `[from, to)` of a segment starting at `start`.
    fn slice(&self, start: u64, from: u64, to: u64) -> Seg {
        match self {
            Seg::Data(d) => Seg::Data(d[(from - start) as usize..(to - start) as usize].to_vec()),
            Seg::Missing(_) => Seg::Missing(to - from),
        }
    }
}

#[derive(Debug)]
struct Held {
    seg: Seg,
    ts: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Reassembler {
    /// Stream offset of the next byte to deliver, and its sequence number.
    next: Option<(u64, u32)>,
    held: BTreeMap<u64, Held>,
    held_cost: usize,
    recent_gaps: [(u64, u64); RECENT_GAPS],
    recent_next: usize,
    closed: bool,
    counters: Counters,
}

/// What the reassembler counted since [`Reassembler::take_counters`] last ran.
#[derive(Debug, Default)]
struct Counters {
    duplicate_bytes: u64,
    out_of_order_dropped: u64,
    gaps: u64,
    gap_bytes: u64,
}

impl Reassembler {
    /// Bytes held for memory accounting.
    pub(crate) fn buffered(&self) -> usize {
        self.held_cost
    }

    /// Adds what was counted to `drops`.
    pub(crate) fn take_counters(&mut self, drops: &mut ParserDrops) {
        let c = std::mem::take(&mut self.counters);
        drops.duplicate_bytes += c.duplicate_bytes;
        drops.out_of_order_dropped += c.out_of_order_dropped;
        drops.gaps += c.gaps;
        drops.gap_bytes += c.gap_bytes;
    }

    /// Sequence number of the next byte expected, once the stream started.
    pub(crate) fn next_seq(&self) -> Option<u32> {
        self.next.map(|(_, seq)| seq)
    }

    /// Stream offset of `seq`, relative to the next expected byte (within ±2^31).
    fn offset(&self, seq: u32) -> Option<u64> {
        let (off, next_seq) = self.next?;
        let delta = i64::from(seq.wrapping_sub(next_seq) as i32);
        u64::try_from(off as i64 + delta).ok()
    }

    /// Adds payload bytes that start at sequence number `seq`.
    pub(crate) fn push(&mut self, seq: u32, data: &[u8], ts: u64, deliver: &mut dyn FnMut(Piece)) {
        if self.closed || data.is_empty() {
            return;
        }
        if self.next.is_none() {
            self.next = Some((ORIGIN, seq));
        }
        let Some(start) = self.offset(seq) else { return };
        let end = start + data.len() as u64;
        let next = self.next_offset();
        if end <= next {
            self.count_old(start, end);
            return;
        }
        if start < next {
            self.count_old(start, next);
        }
        if start <= next {
            let skip = (next - start) as usize;
            self.deliver_data(&data[skip..], ts, deliver);
            self.drain(deliver);
        } else {
            self.insert(start, Seg::Data(data.to_vec()), ts);
            self.enforce_cap(deliver);
        }
    }

    /// Records that `len` bytes from `seq` will never be captured (the kernel copied only part of
    /// the skb). Bytes already seen win over this.
    pub(crate) fn push_missing(&mut self, seq: u32, len: u64, ts: u64, deliver: &mut dyn FnMut(Piece)) {
        if self.closed || len == 0 || self.next.is_none() {
            return;
        }
        let Some(start) = self.offset(seq) else { return };
        let next = self.next_offset();
        let end = start + len;
        if end <= next {
            return;
        }
        let start = start.max(next);
        self.insert(start, Seg::Missing(end - start), ts);
        self.drain(deliver);
        self.enforce_cap(deliver);
    }

    /// Gives up holes whose following segment waited longer than REORDER_TIMEOUT_NS.
    pub(crate) fn expire(&mut self, now_ns: u64, deliver: &mut dyn FnMut(Piece)) {
        while let Some((_, h)) = self.held.first_key_value() {
            if now_ns.saturating_sub(h.ts) < REORDER_TIMEOUT_NS {
                break;
            }
            self.skip_to_first_held(deliver);
        }
    }

    /// Delivers everything held, giving up the holes between.
    pub(crate) fn flush(&mut self, deliver: &mut dyn FnMut(Piece)) {
        while !self.held.is_empty() {
            self.skip_to_first_held(deliver);
        }
    }

    /// The stream ended with a FIN at `fin_seq`: delivers what came before it (giving up holes)
    /// and closes. Later data is ignored.
    pub(crate) fn finish(&mut self, fin_seq: u32, ts: u64, deliver: &mut dyn FnMut(Piece)) {
        if self.closed {
            return;
        }
        if let Some(fin) = self.offset(fin_seq) {
            // Nothing at or past the FIN is data.
            let beyond: Vec<u64> = self.held.range(fin..).map(|(k, _)| *k).collect();
            for k in beyond {
                self.remove(k);
            }
            if let Some((&k, h)) = self.held.last_key_value() {
                if k + h.seg.len() > fin {
                    if let Some(h) = self.remove(k) {
                        let seg = h.seg.slice(k, k, fin);
                        self.insert(k, seg, h.ts);
                    }
                }
            }
            self.flush(deliver);
            let next = self.next_offset();
            if fin > next && fin - next < 1 << 31 {
                self.give_up(next, fin, ts, deliver);
            }
        } else {
            self.flush(deliver);
        }
        self.close();
    }

    /// Stops the stream: held data is dropped, nothing more is delivered.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.held.clear();
        self.held_cost = 0;
    }

    /// Drops held out-of-order data (memory pressure); returns the bytes freed. The ranges become
    /// holes, given up later like any other.
    pub(crate) fn shed(&mut self) -> usize {
        let freed = self.held_cost;
        self.held.clear();
        self.held_cost = 0;
        freed
    }

    fn next_offset(&self) -> u64 {
        self.next.map_or(ORIGIN, |(off, _)| off)
    }

    fn advance(&mut self, n: u64) {
        if let Some((off, seq)) = self.next {
            self.next = Some((off + n, seq.wrapping_add(n as u32)));
        }
    }

    fn deliver_data(&mut self, data: &[u8], ts: u64, deliver: &mut dyn FnMut(Piece)) {
        if !data.is_empty() {
            self.advance(data.len() as u64);
            deliver(Piece::Data(data, ts));
        }
    }

    /// Counts bytes `[start, end)` that arrived after the stream passed them.
    fn count_old(&mut self, start: u64, end: u64) {
        let late: u64 = self
            .recent_gaps
            .iter()
            .map(|&(a, b)| end.min(b).saturating_sub(start.max(a)))
            .sum();
        let late = late.min(end - start);
        self.counters.out_of_order_dropped += late;
        self.counters.duplicate_bytes += end - start - late;
    }

    fn remove(&mut self, key: u64) -> Option<Held> {
        let h = self.held.remove(&key)?;
        self.held_cost -= h.seg.cost();
        Some(h)
    }

    /// Holds a segment, keeping only the parts not already held (first arrival wins).
    fn insert(&mut self, start: u64, seg: Seg, ts: u64) {
        let end = start + seg.len();
        let mut covered: Vec<(u64, u64)> = vec![];
        for (&k, h) in self.held.range(..end).rev() {
            let k_end = k + h.seg.len();
            if k_end <= start {
                break;
            }
            covered.push((k.max(start), k_end.min(end)));
        }
        if covered.is_empty() {
            self.held_cost += seg.cost();
            self.held.insert(start, Held { seg, ts });
            return;
        }
        covered.reverse();
        let mut at = start;
        for (a, b) in covered.into_iter().chain(std::iter::once((end, end))) {
            if a > at {
                let part = seg.slice(start, at, a);
                self.held_cost += part.cost();
                self.held.insert(at, Held { seg: part, ts });
            }
            at = at.max(b);
        }
    }

    /// Delivers held segments that the stream has reached.
    fn drain(&mut self, deliver: &mut dyn FnMut(Piece)) {
        while let Some((&k, _)) = self.held.first_key_value() {
            let next = self.next_offset();
            if k > next {
                break;
            }
            let Some(h) = self.remove(k) else { break };
            let end = k + h.seg.len();
            if end <= next {
                continue;
            }
            let skip = next - k;
            match h.seg {
                Seg::Data(d) => self.deliver_data(&d[skip as usize..], h.ts, deliver),
                Seg::Missing(_) => self.give_up(next, end, h.ts, deliver),
            }
        }
    }

    /// Gives up the hole before the first held segment, then delivers what follows it.
    fn skip_to_first_held(&mut self, deliver: &mut dyn FnMut(Piece)) {
        let Some((&k, h)) = self.held.first_key_value() else {
            return;
        };
        let next = self.next_offset();
        if k > next {
            let ts = h.ts;
            self.give_up(next, k, ts, deliver);
        }
        self.drain(deliver);
    }

    fn give_up(&mut self, from: u64, to: u64, ts: u64, deliver: &mut dyn FnMut(Piece)) {
        let n = to - from;
        self.counters.gaps += 1;
        self.counters.gap_bytes += n;
        self.recent_gaps[self.recent_next] = (from, to);
        self.recent_next = (self.recent_next + 1) % RECENT_GAPS;
        self.advance(n);
        deliver(Piece::Missing(n, ts));
    }

    fn enforce_cap(&mut self, deliver: &mut dyn FnMut(Piece)) {
        while self.held_cost > MAX_HELD_BYTES {
            self.skip_to_first_held(deliver);
        }
    }
}
