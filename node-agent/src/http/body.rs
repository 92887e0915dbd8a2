//! Reading one message body as its framing says: a Content-Length, chunked coding, or until the
//! sender closes; known-size gaps are skipped where the framing allows it.

use super::chunked::{ChunkedDecoder, Gap, Progress};
use super::head::Framing;
use super::parser::Sink;

#[derive(Debug)]
pub(crate) enum Body {
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
    UntilClose,
}

/// What reading some bytes of a body reached.
pub(crate) enum Step {
    /// The body continues after these bytes.
    Used(usize),
    /// The body ended after `used` bytes, with these trailer fields.
    End {
        used: usize,
        trailers: super::HeaderFields,
    },
    /// The chunked framing is broken.
    Broken,
}

/// Where a known-size gap fell.
pub(crate) enum BodyGap {
    /// Inside the body: skipped.
    Skipped,
    /// The body ended inside the gap after `in_body` missing bytes; `past` more are missing.
    Ended { in_body: u64, past: u64 },
    /// The gap covered chunk framing: `in_body` bytes were body, the rest is unknown.
    LostSync { in_body: u64 },
}

impl Body {
    /// The body a framing announces, if any.
    pub(crate) fn new(framing: Framing) -> Option<Body> {
        match framing {
            Framing::NoBody | Framing::Length(0) | Framing::Upgrade => None,
            Framing::Length(n) => Some(Body::Length(n)),
            Framing::Chunked => Some(Body::Chunked(Box::default())),
            Framing::UntilClose => Some(Body::UntilClose),
        }
    }

    pub(crate) fn buffered(&self) -> usize {
        match self {
            Body::Chunked(d) => d.buffered(),
            _ => 0,
        }
    }

    /// Whether the end of the stream completes the body (rather than cutting it short).
    pub(crate) fn ends_at_close(&self) -> bool {
        matches!(self, Body::UntilClose)
    }

    /// Reads body bytes from the start of `data`, passing them (de-chunked) to `sink`.
    pub(crate) fn read(&mut self, data: &[u8], max_trailer: usize, sink: &mut dyn Sink) -> Step {
        match self {
            Body::Length(rest) => {
                let n = usize::try_from(*rest).unwrap_or(usize::MAX).min(data.len());
                *rest -= n as u64;
                sink.body(&data[..n], *rest);
                if *rest == 0 {
                    Step::End {
                        used: n,
                        trailers: super::HeaderFields::new(),
                    }
                } else {
                    Step::Used(n)
                }
            }
            Body::Chunked(decoder) => {
                match decoder.feed(data, max_trailer, &mut |b: &[u8]| sink.body(b, 0)) {
                    Ok(Progress::NeedMore) => Step::Used(data.len()),
                    Ok(Progress::Done { used, trailers }) => Step::End { used, trailers },
                    Err(_) => Step::Broken,
                }
            }
            Body::UntilClose => {
                sink.body(data, 0);
                Step::Used(data.len())
            }
        }
    }

    /// `n` bytes are missing at the current position.
    pub(crate) fn missing(&mut self, n: u64) -> BodyGap {
        match self {
            Body::Length(rest) if n < *rest => {
                *rest -= n;
                BodyGap::Skipped
            }
            Body::Length(rest) => BodyGap::Ended {
                in_body: *rest,
                past: n - *rest,
            },
            Body::Chunked(decoder) => match decoder.missing(n) {
                Gap::Skipped => BodyGap::Skipped,
                Gap::LostSync { in_data } => BodyGap::LostSync { in_body: in_data },
            },
            Body::UntilClose => BodyGap::Skipped,
        }
    }
}
