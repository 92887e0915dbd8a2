//! HTTP/1.x exchanges from captured TCP payload.
//!
//! Records from the capture ring buffer are put back in order per connection and direction by
//! TCP sequence number ([`reassembly`]): retransmits and overlaps are trimmed, out-of-order
//! segments wait (bounded) for their hole to fill, and a hole that cannot fill, like the payload
//! the kernel did not copy, is passed on as a count of missing bytes. Each direction is then
//! parsed as a stream of messages ([`parser`]): heads with `httparse`, bodies framed by
//! Content-Length, chunked encoding or the end of the connection, skipping missing bytes inside a
//! body and resynchronising at the next plausible message start otherwise. Responses pair with
//! requests in order (keep-alive, pipelining, interim 1xx); after a protocol switch the
//! connection is no longer parsed.
//!
//! Memory is bounded: connections (`MAX_CONNECTIONS`), bytes held out of order per direction,
//! head size (the caller's limit), requests awaiting a response per connection, kept body bytes
//! (the caller's limit) and, across all connections, a byte budget on everything buffered.
//! Whatever is dropped is counted in [`ParserDrops`].

mod body;
mod chunked;
mod conn;
mod events;
mod fields;
mod head;
mod pairing;
mod parser;
mod reassembly;
#[cfg(test)]
mod tests;
pub mod tls_decrypt;

pub use events::{CaptureLimits, Exchange, HttpEvent, ParserDrops, PodRole, Request, Response};
pub use fields::HeaderFields;
pub use parser::NON_HTTP_GIVE_UP_BYTES;
pub use reassembly::{MAX_HELD_BYTES, REORDER_TIMEOUT_NS};

use conn::Conn;
use palisade_common::{
    chunk_bytes_for, CaptureHeader, CHUNK_BYTES, DIRECTION_INGRESS, FAMILY_IPV4, FAMILY_TLS,
    MAX_CHUNKS_PER_SKB, PAGE_CHUNK_BYTES, TCP_FIN, TCP_RST,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most connections tracked at once.
pub const MAX_CONNECTIONS: usize = 65_536;
/// Most requests awaiting a response per connection (pipelining depth).
pub const MAX_PENDING_PER_CONNECTION: usize = 32;
/// Connections idle this long are forgotten.
pub const IDLE_TIMEOUT_NS: u64 = 120_000_000_000;
/// Default budget for bytes buffered across all connections.
pub const BUFFER_BUDGET_BYTES: usize = 64 * 1024 * 1024;
/// At the connection cap, idle connections are swept at most this often (capture time).
const SWEEP_INTERVAL_NS: u64 = 1_000_000_000;
/// At the connection cap, the least recently active of this many connections makes room.
const EVICTION_SAMPLE: usize = 16;
/// Payload lengths above this in a header are not trusted for a kernel-truncation gap.
const MAX_TRUSTED_PAYLOAD: u64 = 1 << 30;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    cgroup_id: u64,
    /// Plaintext from a TLS library: `local` is the process, `remote` the `SSL *`.
    tls: bool,
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
}

pub struct HttpTracker {
    /// Fx hashing: the keys are addresses and ports, and this map is looked up for every record.
    conns: rustc_hash::FxHashMap<FlowKey, Conn>,
    pub drops: ParserDrops,
    buffered: usize,
    budget: usize,
    max_connections: usize,
    last_sweep_ns: Option<u64>,
    /// TLS connections waiting for their session record, by client random. Entries of
    /// connections gone or keyed meanwhile are skipped at lookup and swept as the map grows.
    tls_waiting: rustc_hash::FxHashMap<[u8; tls_decrypt::CLIENT_RANDOM], FlowKey>,
    /// Processes whose reads and writes are probed: their connections are not decrypted.
    tls_call_pids: rustc_hash::FxHashSet<u32>,
    /// Processes with a connection given up because of their OpenSSL, and why: for the runtime
    /// to probe their reads and writes ([`Self::take_tls_fallbacks`]).
    tls_fallbacks: Vec<(u32, tls_decrypt::GiveUp)>,
    /// Cgroups whose TLS is captured by probes on reads and writes: not decrypted.
    tls_call_cgroups: rustc_hash::FxHashSet<u64>,
    /// Cgroups with a connection that completed a TLS handshake without a session record.
    tls_cgroup_fallbacks: Vec<u64>,
    /// Processes whose `SSL_SESSION` pointer offset was found in their memory (TLS 1.2): for
    /// the runtime to tell the kernel ([`Self::take_tls_session_pointers`]).
    tls_session_pointers: Vec<(u32, usize)>,
    /// Reads a process's memory (pid, address, into): TLS 1.2 sessions the kernel did not copy.
    session_reader: Box<SessionReader>,
}

/// Reads `buf.len()` bytes of a process's memory (pid, address, buf); false when it cannot.
type SessionReader = dyn FnMut(u32, u64, &mut [u8]) -> bool + Send;

/// Reads `buf.len()` bytes of process `pid`'s memory at `address` (`process_vm_readv`).
fn read_process_memory(pid: u32, address: u64, buf: &mut [u8]) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: address as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `local` covers `buf`, which outlives the call; the kernel checks `remote` against
    // the other process's address space (EFAULT, never a fault here).
    let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    usize::try_from(n).is_ok_and(|n| n == buf.len())
}

fn addr(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

/// The connection a record belongs to, and whether the pod received it.
fn flow(h: &CaptureHeader) -> (FlowKey, bool) {
    let src = (addr(h.family, &h.source_addr), h.source_port);
    let dst = (addr(h.family, &h.dest_addr), h.dest_port);
    let ingress = h.direction == DIRECTION_INGRESS;
    let (local, remote) = if ingress { (dst, src) } else { (src, dst) };
    (
        FlowKey {
            cgroup_id: h.cgroup_id,
            tls: h.family == FAMILY_TLS,
            local,
            remote,
        },
        ingress,
    )
}

/// Bytes the kernel copies of one skb (in chunks of CHUNK_BYTES) and of one TLS call (in pages).
const CAPTURED_PER_SKB: u64 = (CHUNK_BYTES * MAX_CHUNKS_PER_SKB) as u64;
const CAPTURED_PER_TLS_CALL: u64 = (PAGE_CHUNK_BYTES * MAX_CHUNKS_PER_SKB) as u64;

/// The chunk size and the most the kernel copies of the record's skb or TLS call.
fn copied(h: &CaptureHeader) -> (u64, u64) {
    if h.family == FAMILY_TLS {
        (PAGE_CHUNK_BYTES as u64, CAPTURED_PER_TLS_CALL)
    } else {
        (chunk_bytes_for(h.payload_len as usize) as u64, CAPTURED_PER_SKB)
    }
}

/// The part of the skb (or TLS call) the kernel did not copy (past MAX_CHUNKS_PER_SKB chunks),
/// if any.
fn kernel_gap(h: &CaptureHeader, len: usize) -> Option<(u32, u64)> {
    let payload = u64::from(h.payload_len);
    let consistent = u64::from(h.chunk_offset) + len as u64 <= payload;
    let (_, captured) = copied(h);
    (payload > captured && payload <= MAX_TRUSTED_PAYLOAD && consistent)
        .then(|| (h.tcp_seq.wrapping_add(captured as u32), payload - captured))
}

/// Whether the record is the skb's last captured chunk (its flags apply after its data).
fn last_chunk(h: &CaptureHeader) -> bool {
    let (chunk, captured) = copied(h);
    u64::from(h.chunk_offset) + chunk >= u64::from(h.payload_len).min(captured)
}

impl Default for HttpTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpTracker {
    pub fn new() -> Self {
        Self::with_bounds(MAX_CONNECTIONS, BUFFER_BUDGET_BYTES)
    }

    /// A tracker with other bounds than MAX_CONNECTIONS and BUFFER_BUDGET_BYTES (tests, small
    /// nodes).
    pub fn with_bounds(max_connections: usize, budget_bytes: usize) -> Self {
        HttpTracker {
            conns: rustc_hash::FxHashMap::default(),
            drops: ParserDrops::default(),
            buffered: 0,
            budget: budget_bytes,
            max_connections: max_connections.max(1),
            last_sweep_ns: None,
            tls_waiting: rustc_hash::FxHashMap::default(),
            tls_call_pids: rustc_hash::FxHashSet::default(),
            tls_fallbacks: Vec::new(),
            tls_call_cgroups: rustc_hash::FxHashSet::default(),
            tls_cgroup_fallbacks: Vec::new(),
            tls_session_pointers: Vec::new(),
            session_reader: Box::new(read_process_memory),
        }
    }

    /// Replaces how TLS 1.2 sessions are read from a process's memory (tests).
    pub fn set_session_reader(&mut self, reader: impl FnMut(u32, u64, &mut [u8]) -> bool + Send + 'static) {
        self.session_reader = Box::new(reader);
    }

    /// Connections tracked.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Bytes buffered across all connections (held segments, partial heads, kept heads and
    /// bodies awaiting their exchange); kept under the budget.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Recomputes [`Self::buffered_bytes`] from every connection (for tests and audits).
    pub fn recount_buffered_bytes(&self) -> usize {
        self.conns.values().map(Conn::buffered).sum()
    }

    /// Feeds one captured record; events it completes are appended to `out`, in order.
    pub fn feed(&mut self, h: &CaptureHeader, data: &[u8], limits: &CaptureLimits, out: &mut Vec<HttpEvent>) {
        let (key, ingress) = flow(h);
        let dir = usize::from(!ingress);
        let ts = h.timestamp_ns;
        let rst = h.tcp_flags & TCP_RST != 0;
        let fin = h.tcp_flags & TCP_FIN != 0 && last_chunk(h);
        if data.is_empty() && !rst && !fin {
            return;
        }
        // One lookup for a known connection (nearly every record); a new one is hashed again.
        let conn = match self.conns.get_mut(&key) {
            Some(conn) => conn,
            None => {
                if data.is_empty() {
                    return; // the end of a connection never seen
                }
                if !self.make_room(ts, limits, out) {
                    self.drops.connections += 1;
                    return;
                }
                let probed = self.tls_call_cgroups.contains(&key.cgroup_id);
                let conn = self
                    .conns
                    .entry(key.clone())
                    .or_insert_with(|| Conn::new(key.clone(), ts));
                if probed {
                    conn.skip_tls_detection();
                }
                conn
            }
        };
        conn.last_ns = conn.last_ns.max(ts);
        if !data.is_empty() {
            let seq = h.tcp_seq.wrapping_add(h.chunk_offset);
            let gap = kernel_gap(h, data.len());
            let was_waiting = conn.tls_awaiting_keys().is_some();
            conn.push(dir, seq, data, gap, ts, limits, &mut self.drops, out);
            if !was_waiting {
                if let Some(random) = conn.tls_awaiting_keys() {
                    self.tls_waiting.insert(*random, key.clone());
                }
            }
            if let Some(fallback) = conn.tls_take_fallback() {
                self.tls_fallbacks.push(fallback);
            }
            // TLS 1.2 keys found when a record came after the session record.
            if let Some(learnt) = conn.tls_take_learnt_pointer() {
                self.tls_session_pointers.push(learnt);
            }
            if let Some(cgroup) = conn.tls_without_session(false) {
                self.tls_cgroup_fallbacks.push(cgroup);
            }
        }
        if fin && !rst {
            let fin_seq = h.tcp_seq.wrapping_add(h.payload_len);
            conn.finish(dir, fin_seq, ts, limits, &mut self.drops, out);
        }
        if rst || conn.both_finished() {
            conn.close(ts, limits, &mut self.drops, out);
            if let Some(cgroup) = conn.tls_without_session(true) {
                self.tls_cgroup_fallbacks.push(cgroup);
            }
            self.buffered = self.buffered.saturating_sub(conn.counted());
            self.conns.remove(&key);
        } else {
            let (before, after) = conn.recount();
            self.buffered = (self.buffered + after).saturating_sub(before);
        }
        if self.buffered > self.budget {
            self.shed();
        }
    }

    /// A session record ([`palisade_common::FAMILY_TLS_SESSION`]): the start of an `SSL` object
    /// after its handshake, and for TLS 1.2 perhaps the start of its `SSL_SESSION`. The TLS
    /// connection whose client random it holds is decrypted from now on; events that completes
    /// are appended to `out`.
    pub fn tls_session(
        &mut self,
        h: &CaptureHeader,
        data: &[u8],
        limits: &CaptureLimits,
        out: &mut Vec<HttpEvent>,
    ) {
        let Some(pid) = crate::capture::tls::tls_endpoints(h).map(|e| e.pid) else {
            return;
        };
        let window_len = (h.payload_len as usize).min(data.len());
        let (window, copied) = data.split_at(window_len);
        let copied = (!copied.is_empty()).then_some((h.chunk_offset as usize, copied));
        let waiting = &self.tls_waiting;
        let conns = &self.conns;
        // Only a connection that still waits matches (a stale entry's random is skipped).
        let found = tls_decrypt::find_random(window, |random| {
            <&[u8; tls_decrypt::CLIENT_RANDOM]>::try_from(random)
                .ok()
                .and_then(|r| waiting.get(r))
                .and_then(|key| conns.get(key))
                .and_then(Conn::tls_awaiting_keys)
                .is_some_and(|r| r[..] == *random)
        });
        let Some(at) = found else {
            self.drops.tls_sessions_unmatched += 1;
            return;
        };
        let mut random = [0u8; tls_decrypt::CLIENT_RANDOM];
        random.copy_from_slice(&window[at..at + tls_decrypt::CLIENT_RANDOM]);
        let Some(key) = self.tls_waiting.remove(&random) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if self.tls_call_pids.contains(&pid) {
            conn.tls_captured_by_calls(pid);
        } else {
            let reader = &mut self.session_reader;
            let session = tls_decrypt::SessionSource {
                copied,
                read: &mut |address, buf| reader(pid, address, buf),
            };
            conn.tls_session(window, at, pid, session, limits, &mut self.drops, out);
            if let Some(fallback) = conn.tls_take_fallback() {
                self.tls_fallbacks.push(fallback);
            }
            if let Some(learnt) = conn.tls_take_learnt_pointer() {
                self.tls_session_pointers.push(learnt);
            }
        }
        let (before, after) = conn.recount();
        self.buffered = (self.buffered + after).saturating_sub(before);
        if self.tls_waiting.len() > 2 * self.conns.len() + 64 {
            let conns = &self.conns;
            self.tls_waiting
                .retain(|random, key| conns.get(key).and_then(Conn::tls_awaiting_keys) == Some(random));
        }
        if self.buffered > self.budget {
            self.shed();
        }
    }

    /// Processes to probe on every read and write, and why: each had a connection given up
    /// because of its OpenSSL. Tell [`Self::tls_captured_by_calls`] those that now are.
    pub fn take_tls_fallbacks(&mut self) -> Vec<(u32, tls_decrypt::GiveUp)> {
        std::mem::take(&mut self.tls_fallbacks)
    }

    /// Cgroups (of sockets) with a connection that completed a TLS handshake without a session
    /// record: their processes handshake without `SSL_do_handshake`, so their reads and writes
    /// are to be probed. Tell [`Self::tls_calls_cgroup`] those that now are.
    pub fn take_tls_cgroup_fallbacks(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.tls_cgroup_fallbacks)
    }

    /// Processes whose TLS 1.2 `SSL_SESSION` the agent found through a pointer at this offset of
    /// their `SSL` objects, by reading their memory: the kernel is to copy it from now on.
    pub fn take_tls_session_pointers(&mut self) -> Vec<(u32, usize)> {
        std::mem::take(&mut self.tls_session_pointers)
    }

    /// Whether [`Self::take_tls_fallbacks`], [`Self::take_tls_cgroup_fallbacks`] or
    /// [`Self::take_tls_session_pointers`] has something.
    pub fn has_tls_fallbacks(&self) -> bool {
        !self.tls_fallbacks.is_empty()
            || !self.tls_cgroup_fallbacks.is_empty()
            || !self.tls_session_pointers.is_empty()
    }

    /// The TLS of `cgroup`'s sockets is captured by probes on reads and writes (`true`): its new
    /// connections are not decrypted; or no longer (`false`).
    pub fn tls_calls_cgroup(&mut self, cgroup: u64, probed: bool) {
        if probed {
            self.tls_call_cgroups.insert(cgroup);
        } else {
            self.tls_call_cgroups.remove(&cgroup);
        }
    }

    /// Whether `pid`'s reads and writes are probed (its connections are not decrypted).
    pub fn tls_probes_calls_of(&self, pid: u32) -> bool {
        self.tls_call_pids.contains(&pid)
    }

    /// `pid`'s reads and writes are probed (`true`), or no longer (`false`: it exited): its
    /// connections are not decrypted (are again).
    pub fn tls_captured_by_calls(&mut self, pid: u32, probed: bool) {
        if probed {
            self.tls_call_pids.insert(pid);
        } else {
            self.tls_call_pids.remove(&pid);
        }
    }

    /// Makes room for a new connection at the cap: sweeps idle ones (rate-limited), else evicts
    /// the least recently active of a sample. Returns whether there is room.
    fn make_room(&mut self, now_ns: u64, limits: &CaptureLimits, out: &mut Vec<HttpEvent>) -> bool {
        if self.conns.len() < self.max_connections {
            return true;
        }
        if self
            .last_sweep_ns
            .is_none_or(|t| now_ns.saturating_sub(t) >= SWEEP_INTERVAL_NS)
        {
            self.last_sweep_ns = Some(now_ns);
            self.evict_idle_into(now_ns, limits, out);
            if self.conns.len() < self.max_connections {
                return true;
            }
        }
        let victim = self
            .conns
            .iter()
            .take(EVICTION_SAMPLE)
            .min_by_key(|(_, c)| c.last_ns)
            .map(|(k, _)| k.clone());
        let Some(victim) = victim else { return false };
        self.remove(&victim, now_ns, limits, out);
        self.drops.connections += 1;
        self.conns.len() < self.max_connections
    }

    /// Closes (emitting what completes) and forgets a connection.
    fn remove(&mut self, key: &FlowKey, now_ns: u64, limits: &CaptureLimits, out: &mut Vec<HttpEvent>) {
        if let Some(mut c) = self.conns.remove(key) {
            self.buffered = self.buffered.saturating_sub(c.counted());
            c.close(now_ns, limits, &mut self.drops, out);
            if let Some(cgroup) = c.tls_without_session(true) {
                self.tls_cgroup_fallbacks.push(cgroup);
            }
        }
    }

    /// Brings buffered bytes down to 3/4 of the budget, shedding the biggest connections first.
    fn shed(&mut self) {
        let target = self.budget / 4 * 3;
        let mut sizes: Vec<(usize, FlowKey)> = self
            .conns
            .iter()
            .map(|(k, c)| (c.counted(), k.clone()))
            .filter(|(size, _)| *size > 0)
            .collect();
        sizes.sort_unstable_by_key(|(size, _)| std::cmp::Reverse(*size));
        for (_, key) in sizes {
            if self.buffered <= target {
                break;
            }
            if let Some(c) = self.conns.get_mut(&key) {
                c.shed(&mut self.drops);
                let (before, after) = c.recount();
                self.buffered = (self.buffered + after).saturating_sub(before);
                self.drops.budget_evictions += 1;
            }
        }
    }

    /// Forgets connections idle for longer than IDLE_TIMEOUT_NS (what they complete is
    /// discarded; see [`Self::evict_idle_into`]).
    pub fn evict_idle(&mut self, now_ns: u64) {
        let mut discarded = Vec::new();
        self.evict_idle_into(now_ns, &CaptureLimits::default(), &mut discarded);
    }

    /// Housekeeping: closes connections idle for longer than IDLE_TIMEOUT_NS and gives up holes
    /// older than REORDER_TIMEOUT_NS; what that completes (requests cut short, responses read
    /// until close) is appended to `out`.
    pub fn evict_idle_into(&mut self, now_ns: u64, limits: &CaptureLimits, out: &mut Vec<HttpEvent>) {
        let idle: Vec<FlowKey> = self
            .conns
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_ns) >= IDLE_TIMEOUT_NS)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &idle {
            self.remove(key, now_ns, limits, out);
        }
        for c in self.conns.values_mut() {
            if c.counted() > 0 {
                c.expire(now_ns, limits, &mut self.drops, out);
                let (before, after) = c.recount();
                self.buffered = (self.buffered + after).saturating_sub(before);
            }
        }
    }

    /// Forgets every connection of a cgroup (its pod is no longer watched).
    pub fn forget_cgroup(&mut self, cgroup_id: u64) {
        self.tls_call_cgroups.remove(&cgroup_id);
        let mut freed = 0;
        self.conns.retain(|k, c| {
            let keep = k.cgroup_id != cgroup_id;
            if !keep {
                freed += c.counted();
            }
            keep
        });
        self.buffered = self.buffered.saturating_sub(freed);
    }
}
