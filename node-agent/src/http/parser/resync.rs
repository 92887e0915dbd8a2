//! Finding the next plausible message start after garbage, a gap or an unparsable head.

use super::{Sink, State, StreamParser, MAX_CARRY, NON_HTTP_GIVE_UP_BYTES};
use crate::http::head::{self, Candidate};

impl StreamParser {
    pub(super) fn skip(&mut self, n: usize, sink: &mut dyn Sink) {
        sink.drops().skipped_bytes += n as u64;
        if !self.parsed_any {
            self.skipped += n as u64;
            if self.skipped > NON_HTTP_GIVE_UP_BYTES {
                sink.drops().non_http += 1;
                self.stop();
            }
        }
    }

    pub(super) fn step_resync(&mut self, data: &[u8], boundary: bool, ts: u64, sink: &mut dyn Sink) -> usize {
        if !self.buf.is_empty() {
            // A carried tail that began at a plausible start: decide with the new bytes.
            let carried = self.buf.len();
            let extra = data.len().min(256);
            self.buf.extend_from_slice(&data[..extra]);
            match head::message_start(&self.buf, self.kind) {
                Candidate::Yes => {
                    self.buf.truncate(carried);
                    self.state = State::Head { speculative: true };
                    self.head_ts = ts;
                    self.parse_at = 0;
                    return 0;
                }
                Candidate::Maybe if extra == data.len() && self.buf.len() <= MAX_CARRY => return data.len(),
                _ => {
                    self.clear_buf();
                    self.skip(carried, sink);
                    if !self.is_stopped() {
                        self.state = State::Resync { boundary: false };
                    }
                    return 0;
                }
            }
        }
        let mut at = if boundary { Some(0) } else { next_line(data, 0) };
        while let Some(pos) = at {
            match head::message_start(&data[pos..], self.kind) {
                Candidate::Yes => {
                    self.skip(pos, sink);
                    if !self.is_stopped() {
                        self.state = State::Head { speculative: true };
                    }
                    return pos;
                }
                Candidate::Maybe if data.len() - pos <= MAX_CARRY => {
                    self.skip(pos, sink);
                    if !self.is_stopped() {
                        self.buf.extend_from_slice(&data[pos..]);
                        self.state = State::Resync { boundary: true };
                    }
                    return data.len();
                }
                _ => at = next_line(data, pos + 1),
            }
        }
        self.skip(data.len(), sink);
        if !self.is_stopped() {
            self.state = State::Resync {
                boundary: data.ends_with(b"\n"),
            };
        }
        data.len()
    }
}

/// Index just after the next line feed at or after `from`, if it is inside `data`.
fn next_line(data: &[u8], from: usize) -> Option<usize> {
    let nl = data.get(from..)?.iter().position(|b| *b == b'\n')?;
    let at = from + nl + 1;
    (at < data.len()).then_some(at)
}
