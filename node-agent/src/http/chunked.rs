//! Streaming decoder for `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1), fed in pieces of
//! any size, with chunk extensions (skipped), trailers (parsed) and known-size gaps.

/// Chunk sizes above this are a protocol violation: no real peer sends a 1 TiB chunk, while huge
/// sizes are a classic way to desynchronise parsers.
pub(crate) const MAX_CHUNK_SIZE: u64 = 1 << 40;
/// Longest chunk-size line, extensions included.
const MAX_SIZE_LINE: usize = 4096;
/// Most trailer fields parsed.
const MAX_TRAILERS: usize = 64;

/// Why a chunked body could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkError {
    /// Not a hexadecimal chunk size, or a malformed line ending.
    Framing,
    /// A chunk size above [`MAX_CHUNK_SIZE`].
    SizeTooLarge,
    /// A chunk-size line (with extensions) longer than `MAX_SIZE_LINE`.
    LineTooLong,
    /// The trailer section exceeded the header limit.
    TrailersTooLarge,
    /// The trailer section is not a valid field list.
    BadTrailers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading hex digits; `ws` once whitespace followed them.
    Size {
        digits: u32,
        ws: bool,
    },
    /// Inside chunk extensions, up to the end of the line.
    Ext,
    /// After the CR that ends the size line.
    SizeLf,
    /// Inside chunk data; the bytes left in the chunk.
    Data(u64),
    /// After chunk data: CRLF expected.
    DataCr,
    DataLf,
    /// Reading the trailer section (possibly empty) up to its empty line.
    Trailer,
    Done,
}

/// What [`ChunkedDecoder::feed`] reached.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// All input consumed; the body continues.
    NeedMore,
    /// The body ended after `used` bytes of the input, with these trailer fields.
    Done {
        used: usize,
        trailers: super::HeaderFields,
    },
}

/// Where a known-size gap fell.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gap {
    /// Entirely inside chunk data: skipped, the framing is intact.
    Skipped,
    /// The gap covered framing bytes: `in_data` bytes were chunk data, the rest is unknown and
    /// the decoder cannot continue.
    LostSync { in_data: u64 },
}

#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: State,
    size: u64,
    line_len: usize,
    trailer: Vec<u8>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

fn hex(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some(u64::from(b - b'0')),
        b'a'..=b'f' => Some(u64::from(b - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(b - b'A' + 10)),
        _ => None,
    }
}

const SIZE_START: State = State::Size { digits: 0, ws: false };

impl ChunkedDecoder {
    pub(crate) fn new() -> Self {
        ChunkedDecoder {
            state: SIZE_START,
            size: 0,
            line_len: 0,
            trailer: Vec::new(),
        }
    }

    /// Bytes held for a trailer section being read.
    pub(crate) fn buffered(&self) -> usize {
        self.trailer.len()
    }

    /// Decodes `input`, passing chunk data to `body`. `max_trailer` bounds the trailer section.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        max_trailer: usize,
        body: &mut dyn FnMut(&[u8]),
    ) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Data(rest) => {
                    let n = usize::try_from(rest).unwrap_or(usize::MAX).min(input.len() - i);
                    body(&input[i..i + n]);
                    i += n;
                    let rest = rest - n as u64;
                    self.state = if rest == 0 {
                        State::DataCr
                    } else {
                        State::Data(rest)
                    };
                }
                State::Trailer => {
                    let b = input[i];
                    i += 1;
                    if self.trailer.len() >= max_trailer {
                        return Err(ChunkError::TrailersTooLarge);
                    }
                    self.trailer.push(b);
                    if b == b'\n' {
                        if let Some(trailers) = self.trailers_complete()? {
                            self.state = State::Done;
                            return Ok(Progress::Done { used: i, trailers });
                        }
                    }
                }
                State::Done => {
                    return Ok(Progress::Done {
                        used: i,
                        trailers: super::HeaderFields::new(),
                    })
                }
                _ => {
                    let b = input[i];
                    i += 1;
                    self.line_len += 1;
                    if self.line_len > MAX_SIZE_LINE {
                        return Err(ChunkError::LineTooLong);
                    }
                    self.byte(b)?;
                }
            }
        }
        Ok(Progress::NeedMore)
    }

    /// One byte of a chunk-size line or of the CRLF after chunk data.
    fn byte(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match (self.state, b) {
            (State::Size { digits, ws: false }, _) if hex(b).is_some() => {
                let digit = hex(b).unwrap_or(0);
                match self.size.checked_mul(16).and_then(|v| v.checked_add(digit)) {
                    Some(v) if v <= MAX_CHUNK_SIZE => {
                        self.size = v;
                        State::Size {
                            digits: digits + 1,
                            ws: false,
                        }
                    }
                    _ => return Err(ChunkError::SizeTooLarge),
                }
            }
            (State::Size { digits, .. }, b' ' | b'\t') if digits > 0 => State::Size { digits, ws: true },
            (State::Size { digits, .. }, b';') if digits > 0 => State::Ext,
            (State::Size { digits, .. }, b'\r') if digits > 0 => State::SizeLf,
            (State::Size { digits, .. }, b'\n') if digits > 0 => self.size_line_done(),
            (State::Ext, b'\n') | (State::SizeLf, b'\n') => self.size_line_done(),
            (State::Ext, _) => State::Ext,
            (State::DataCr, b'\r') => State::DataLf,
            (State::DataCr, b'\n') | (State::DataLf, b'\n') => {
                self.line_len = 0;
                self.size = 0;
                SIZE_START
            }
            _ => return Err(ChunkError::Framing),
        };
        Ok(())
    }

    fn size_line_done(&mut self) -> State {
        self.line_len = 0;
        if self.size == 0 {
            State::Trailer
        } else {
            State::Data(self.size)
        }
    }

    /// After a line feed in the trailer section: the parsed fields once it ended (empty line).
    fn trailers_complete(&mut self) -> Result<Option<super::HeaderFields>, ChunkError> {
        let t = &self.trailer;
        let ended = t == b"\r\n" || t == b"\n" || t.ends_with(b"\n\r\n") || t.ends_with(b"\n\n");
        if !ended {
            return Ok(None);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_TRAILERS];
        let fields = match httparse::parse_headers(t, &mut headers) {
            Ok(httparse::Status::Complete((_, fields))) => super::HeaderFields::from_httparse(fields),
            _ => return Err(ChunkError::BadTrailers),
        };
        self.trailer = Vec::new();
        Ok(Some(fields))
    }

    /// `n` bytes of the body are known to be missing at the current position.
    pub(crate) fn missing(&mut self, n: u64) -> Gap {
        match self.state {
            State::Data(rest) if n <= rest => {
                self.state = if n == rest {
                    State::DataCr
                } else {
                    State::Data(rest - n)
                };
                Gap::Skipped
            }
            State::Data(rest) => Gap::LostSync { in_data: rest },
            _ => Gap::LostSync { in_data: 0 },
        }
    }
}
