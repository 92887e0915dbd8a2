//! Pairing responses with requests on one connection: the [`Sink`] the parsers report to, the
//! requests awaiting a response, and the events emitted (keep-alive, pipelining, responses that
//! come before the request body ends).

use super::head::{Head, Kind, Start};
use super::parser::Sink;
use super::{
    Exchange, FlowKey, HttpEvent, ParserDrops, PodRole, Request, Response, MAX_PENDING_PER_CONNECTION,
};
use std::collections::VecDeque;
use std::sync::Arc;

/// Which message a direction's body bytes belong to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Current {
    #[default]
    None,
    Request(u64),
    Response,
}

#[derive(Debug)]
pub(super) struct Pending {
    pub(super) id: u64,
    /// Shared with the `Request` event once emitted (no copy of the head per request); the
    /// event's holder drops its share before the response ends, so the exchange takes it back.
    /// Changed only while not shared ([`Pending::request_mut`]).
    pub(super) request: Arc<Request>,
    /// The request's body was read to its end.
    pub(super) done: bool,
    /// A `Request` event was sent.
    pub(super) emitted: bool,
    /// Bytes of its head fields, for memory accounting.
    pub(super) head_bytes: usize,
}

impl Pending {
    /// The request, to change while nobody else holds it: before its event, or after the
    /// event's holder let go of it (`None` otherwise).
    pub(super) fn request_mut(&mut self) -> Option<&mut Request> {
        Arc::get_mut(&mut self.request)
    }
}

#[derive(Debug)]
pub(super) struct ResponseBuild {
    pub(super) request_id: Option<u64>,
    pub(super) response: Response,
}

/// Everything the parser of one direction may touch, for the duration of one call.
pub(super) struct ConnSink<'a> {
    pub(super) ingress: bool,
    pub(super) key: &'a FlowKey,
    pub(super) current: &'a mut Current,
    pub(super) pending: &'a mut VecDeque<Pending>,
    pub(super) response: &'a mut Option<ResponseBuild>,
    pub(super) next_id: &'a mut u64,
    /// Responses owed to requests the pending cap dropped: they come first (HTTP/1.x answers in
    /// order), and must not be paired with the requests after them.
    pub(super) owed_responses: &'a mut u64,
    pub(super) upgraded: &'a mut bool,
    pub(super) decided: &'a mut Option<Kind>,
    pub(super) drops: &'a mut ParserDrops,
    pub(super) out: &'a mut Vec<HttpEvent>,
    pub(super) max_body: usize,
}

/// Appends body bytes to what is kept: a contiguous prefix of at most `max` bytes. When the kept
/// body must grow, it grows at once to what the framing announces (at most `max`), instead of
/// doubling and copying what it holds several times over a large body. Memory is reserved only
/// as bytes arrive, and never past `max`, so an announced length alone holds nothing.
fn keep(
    body: &mut Vec<u8>,
    len: &mut u64,
    truncated: &mut bool,
    (data, announced): (&[u8], u64),
    max: usize,
    drops: &mut ParserDrops,
) {
    *len += data.len() as u64;
    let room = if *truncated {
        0
    } else {
        max.saturating_sub(body.len())
    };
    let n = room.min(data.len());
    if body.capacity() - body.len() < n {
        if announced == 0 {
            body.reserve(n); // chunked or until close: amortised doubling
        } else {
            let announced = usize::try_from(announced).unwrap_or(usize::MAX);
            let whole = body.len().saturating_add(n).saturating_add(announced).min(max);
            body.reserve_exact(whole - body.len());
        }
    }
    body.extend_from_slice(&data[..n]);
    if n < data.len() {
        *truncated = true;
        if max > 0 {
            drops.body_bytes_truncated += (data.len() - n) as u64;
        }
    }
}

impl ConnSink<'_> {
    fn pending_mut(&mut self, id: u64) -> Option<&mut Pending> {
        self.pending.iter_mut().rev().find(|p| p.id == id)
    }

    fn finish_exchange(&mut self, ts: u64, cut: bool) {
        let Some(ResponseBuild {
            request_id,
            mut response,
        }) = self.response.take()
        else {
            return;
        };
        response.body_truncated |= cut;
        if request_id.is_none() || self.pending.front().map(|p| p.id) != request_id {
            return; // unmatched (counted) or its request was dropped by the pending cap
        }
        let Some(p) = self.pending.pop_front() else { return };
        let mut request = p.request;
        if !p.done {
            Arc::make_mut(&mut request).body_truncated = true;
        }
        if !p.emitted {
            self.out.push(HttpEvent::Request(Arc::clone(&request)));
        }
        let latency_ns = ts.saturating_sub(request.timestamp_ns);
        self.out.push(HttpEvent::Exchange(Box::new(Exchange {
            status: response.status,
            request,
            response,
            latency_ns,
        })));
    }
}

impl Sink for ConnSink<'_> {
    fn drops(&mut self) -> &mut ParserDrops {
        self.drops
    }

    fn answered_method(&self) -> Option<&str> {
        self.pending.front().map(|p| p.request.method.as_str())
    }

    fn kind_decided(&mut self, kind: Kind) {
        *self.decided = Some(kind);
    }

    fn request_head(&mut self, head: Head, first_ts: u64) {
        let Start::Request { method, target } = head.start else {
            return;
        };
        if self.pending.len() >= MAX_PENDING_PER_CONNECTION {
            if let Some(old) = self.pending.pop_front() {
                self.drops.pending_overflow += 1;
                *self.owed_responses += 1;
                if !old.emitted {
                    self.out.push(HttpEvent::Request(old.request));
                }
            }
        }
        let id = *self.next_id;
        *self.next_id += 1;
        let (local, remote) = (self.key.local, self.key.remote);
        let head_bytes = method.len() + target.len() + head.headers.heap_bytes();
        self.pending.push_back(Pending {
            id,
            request: Arc::new(Request {
                cgroup_id: self.key.cgroup_id,
                tls: self.key.tls,
                role: if self.ingress {
                    PodRole::Server
                } else {
                    PodRole::Client
                },
                local,
                remote,
                method,
                target,
                headers: head.headers,
                timestamp_ns: first_ts,
                body: Vec::new(),
                body_len: 0,
                body_truncated: false,
            }),
            done: false,
            emitted: false,
            head_bytes,
        });
        *self.current = Current::Request(id);
    }

    fn response_head(&mut self, head: Head, first_ts: u64) {
        let Start::Response { status } = head.start else {
            return;
        };
        let request_id = if *self.owed_responses > 0 {
            // Answers a dropped request (already counted in pending_overflow).
            *self.owed_responses -= 1;
            None
        } else {
            let id = self.pending.front().map(|p| p.id);
            if id.is_none() {
                self.drops.unmatched_responses += 1;
            }
            id
        };
        *self.response = Some(ResponseBuild {
            request_id,
            response: Response {
                status,
                headers: head.headers,
                body: Vec::new(),
                body_len: 0,
                body_truncated: false,
                timestamp_ns: first_ts,
            },
        });
        *self.current = Current::Response;
    }

    fn body(&mut self, data: &[u8], announced: u64) {
        let max = self.max_body;
        match *self.current {
            Current::Request(id) => {
                let drops = &mut *self.drops;
                let pending = self.pending.iter_mut().rev().find(|p| p.id == id);
                if let Some(r) = pending.and_then(Pending::request_mut) {
                    keep(
                        &mut r.body,
                        &mut r.body_len,
                        &mut r.body_truncated,
                        (data, announced),
                        max,
                        drops,
                    );
                }
            }
            Current::Response => {
                if let Some(b) = self.response.as_mut() {
                    let r = &mut b.response;
                    keep(
                        &mut r.body,
                        &mut r.body_len,
                        &mut r.body_truncated,
                        (data, announced),
                        max,
                        self.drops,
                    );
                }
            }
            Current::None => {}
        }
    }

    fn body_missing(&mut self, n: u64) {
        let target = match *self.current {
            Current::Request(id) => self
                .pending_mut(id)
                .and_then(Pending::request_mut)
                .map(|r| (&mut r.body_len, &mut r.body_truncated)),
            Current::Response => self
                .response
                .as_mut()
                .map(|b| (&mut b.response.body_len, &mut b.response.body_truncated)),
            Current::None => None,
        };
        if let Some((len, truncated)) = target {
            *len = len.saturating_add(n);
            *truncated = true;
        }
    }

    fn trailers(&mut self, fields: super::HeaderFields) {
        match *self.current {
            Current::Request(id) => {
                if let Some(p) = self.pending_mut(id) {
                    p.head_bytes += fields.heap_bytes();
                    if let Some(r) = p.request_mut() {
                        r.headers.extend(&fields);
                    }
                }
            }
            Current::Response => {
                if let Some(b) = self.response.as_mut() {
                    b.response.headers.extend(&fields);
                }
            }
            Current::None => {}
        }
    }

    fn message_end(&mut self, ts: u64, cut: bool) {
        match std::mem::take(self.current) {
            Current::Request(id) => {
                let Some(p) = self.pending_mut(id) else { return };
                p.done = true;
                if let Some(r) = p.request_mut() {
                    r.body_truncated |= cut;
                }
                if !p.emitted {
                    p.emitted = true;
                    let event = HttpEvent::Request(Arc::clone(&p.request));
                    self.out.push(event);
                }
            }
            Current::Response => self.finish_exchange(ts, cut),
            Current::None => {}
        }
    }

    fn upgraded(&mut self) {
        *self.upgraded = true;
    }
}
