//! Types and names shared by Palisade's eBPF programs (`node-agent-ebpf`) and the node agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, with explicit padding and no `Option` or `bool`, so
//! the kernel and user space agree on every byte. Changing a layout changes both sides at once.
#![no_std]

/// Bytes of TCP payload in each record (chunk) of an skb over `CHUNK_BYTES` (smaller ones go in
/// pages, see [`chunk_bytes_for`]); each chunk has its own `chunk_offset`. A 64 KiB body takes 4 records,
/// not 16 of a page: each record costs the kernel a reservation and the agent a lookup of its
/// connection, which for bodies cost more than the bytes (the agent's CPU per 64 KiB response
/// fell by about a third with 16 KiB chunks, `cargo bench --bench capture`).
pub const CHUNK_BYTES: usize = 16384;
/// The size of the records (chunks) the capture programs split a packet of `payload_len` bytes
/// into: pages up to `CHUNK_BYTES` (a 5 KiB packet takes 8 KiB of the ring, not 16), chunks of
/// `CHUNK_BYTES` beyond. (A packet that fits one record takes just one, of the smallest size.)
pub const fn chunk_bytes_for(payload_len: usize) -> usize {
    if payload_len <= CHUNK_BYTES {
        PAGE_CHUNK_BYTES
    } else {
        CHUNK_BYTES
    }
}
/// Payload of the record for a packet of up to a page (a request with its body, a response head
/// and a body of a few KiB), and of each TLS plaintext chunk (an `SSL_write` of a response head
/// takes one page, not a 16 KiB chunk of the ring).
pub const PAGE_CHUNK_BYTES: usize = 4096;
/// The ring buffer's own header before each record (`BPF_RINGBUF_HDR_SZ`).
pub const RINGBUF_RECORD_HEADER_BYTES: usize = 8;
/// Payload of the record that fits a ring-buffer slot of `slot` bytes (the ring's own header
/// and ours included).
const fn payload_in_slot(slot: usize) -> usize {
    slot - RINGBUF_RECORD_HEADER_BYTES - core::mem::size_of::<CaptureHeader>()
}
/// Payload of the small records. A packet gets the smallest record it fits in, so short
/// messages (most requests and responses of an API) sit next to each other in the ring: the
/// kernel writes and the agent reads fewer cache lines per record, and the ring holds more of
/// them before it overflows. Bigger packets get a page ([`PAGE_CHUNK_BYTES`]), the biggest
/// chunks of `CHUNK_BYTES`.
pub const TINY_CHUNK_BYTES: usize = payload_in_slot(128);
pub const MEDIUM_CHUNK_BYTES: usize = payload_in_slot(256);
pub const SMALL_CHUNK_BYTES: usize = payload_in_slot(512);
/// Most chunks one skb is split into (up to 256 KiB of it) and one TLS call (pages: 64 KiB);
/// payload past them is counted as truncated.
pub const MAX_CHUNKS_PER_SKB: usize = 16;
/// Size of the shared capture ring buffer in bytes (a power of two, a multiple of the page
/// size), and the budget the per-CPU rings split between them (see [`MAP_CAPTURE_RINGS`]).
pub const CAPTURE_RING_BYTES: u32 = 32 * 1024 * 1024;

/// Name of the ring buffer map that carries the [`CaptureRecord`]s of a CPU without a ring of
/// its own in [`MAP_CAPTURE_RINGS`] (of every CPU, if the agent could not make them), and those
/// a CPU's full ring could not take.
pub const MAP_CAPTURE_RING: &str = "CAPTURE_RING";
/// Name of the array of ring buffers, one per CPU (index: the CPU's number), that the capture
/// programs (cgroup and TLS) write into. The agent creates the rings and puts them in; an empty slot
/// sends that CPU's records to [`MAP_CAPTURE_RING`], and so does a full ring: one busy CPU can
/// use the shared ring's room as well as its own. One ring per CPU: programs on different CPUs
/// no longer take the same lock and write the same positions for every record.
pub const MAP_CAPTURE_RINGS: &str = "CAPTURE_RINGS";
/// Slots in [`MAP_CAPTURE_RINGS`]: CPUs numbered from this up use the shared ring.
pub const CAPTURE_RINGS_MAX_CPUS: usize = 1024;
/// Name of the per-CPU array of [`CaptureCounters`] (one entry, index 0).
pub const MAP_CAPTURE_COUNTERS: &str = "CAPTURE_COUNTERS";
/// Program attached to a pod cgroup's ingress (packets delivered to the pod's sockets).
pub const PROG_CAPTURE_INGRESS: &str = "palisade_capture_ingress";
/// Program attached to a pod cgroup's egress (packets sent by the pod's sockets).
pub const PROG_CAPTURE_EGRESS: &str = "palisade_capture_egress";

/// Name of the hash map that narrows capture to what the monitors asked for (key
/// [`CaptureFilterKey`], value [`CaptureFilter`]). The capture programs skip, before copying
/// anything, the packets of connections on other local ports and of connections outside the
/// sample. A socket whose cgroup has no entry of its own is captured whole: the agent learns of
/// a new container's cgroup from its first records and adds its entries.
pub const MAP_CAPTURE_FILTERS: &str = "CAPTURE_FILTERS";
/// Name of the array (one u64) that the agent bumps after each change of
/// [`MAP_CAPTURE_FILTERS`]: the programs keep the filter they used last per CPU, and look it up
/// again when this changed.
pub const MAP_CAPTURE_FILTER_GENERATION: &str = "CAPTURE_FILTER_GENERATION";
/// Entries of [`MAP_CAPTURE_FILTERS`]: the cgroups (pods and their containers) of the pods that
/// monitors select on one node, each with one entry and one per listed port.
pub const CAPTURE_FILTERS_MAX_ENTRIES: u32 = 65536;
/// [`CaptureFilterKey::local_port`] of a cgroup's own entry (no TCP connection has port 0).
pub const CAPTURE_FILTER_CGROUP_ENTRY: u16 = 0;

/// A [`MAP_CAPTURE_FILTERS`] key: a socket cgroup (`bpf_skb_cgroup_id`) and a local port, or
/// [`CAPTURE_FILTER_CGROUP_ENTRY`] for the cgroup's own entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaptureFilterKey {
    pub cgroup_id: u64,
    pub local_port: u16,
    pub _padding: [u8; 6],
}

impl CaptureFilterKey {
    pub fn new(cgroup_id: u64, local_port: u16) -> Self {
        CaptureFilterKey {
            cgroup_id,
            local_port,
            _padding: [0; 6],
        }
    }
}

/// What the capture programs take from a cgroup's sockets. The cgroup's own entry says whether
/// every port is captured (`every_port` 1, sampled as it says) or only the ports with an entry
/// of their own (`every_port` 0; each port's entry says how that port is sampled).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureFilter {
    /// Percentage of connections captured (1 to 100), chosen by [`connection_sampled`].
    pub sampling_percent: u8,
    pub every_port: u8,
    pub _padding: [u8; 2],
    /// The sample's hash seed, drawn at random by each agent so that no one outside the node
    /// can pick connections (source ports) that fall outside the sample.
    pub sampling_seed: u32,
}

impl CaptureFilter {
    /// Whether this entry's sample holds a connection with these ends.
    #[inline(always)]
    pub fn samples(&self, local_port: u16, remote_addr: &[u8; 16], remote_port: u16) -> bool {
        self.sampling_percent >= 100
            || connection_sampled(
                self.sampling_seed,
                remote_addr,
                remote_port,
                local_port,
                self.sampling_percent,
            )
    }
}

/// One step of [`connection_sampled`]'s hash: a multiply-xorshift mix (MurmurHash3's finaliser).
#[inline(always)]
fn mix(h: u64, word: u64) -> u64 {
    let h = (h ^ word).wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

/// Whether a connection is in a sample of `percent` % (1 to 100): a hash of its remote address
/// and port and its local port, with `seed`. It names the connection's ends by role, not the
/// packet's source and destination, so both directions of a connection agree. (The local
/// address is left out: a pod's connections on one port differ in their remote ends.) Written
/// out without loops, for the verifier.
#[inline(always)]
pub fn connection_sampled(
    seed: u32,
    remote_addr: &[u8; 16],
    remote_port: u16,
    local_port: u16,
    percent: u8,
) -> bool {
    let a = remote_addr;
    let w0 = u64::from_le_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let w1 = u64::from_le_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    let ports = (u64::from(remote_port) << 16) | u64::from(local_port);
    let h = mix(mix(mix(u64::from(seed) ^ 0x9e37_79b9_7f4a_7c15, w0), w1), ports);
    let h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    (h ^ (h >> 33)) % 100 < u64::from(percent)
}

/// The packet was received by a socket in the watched cgroup.
pub const DIRECTION_INGRESS: u8 = 0;
/// The packet was sent by a socket in the watched cgroup.
pub const DIRECTION_EGRESS: u8 = 1;

pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// TCP flag bits as they appear in the TCP header's flags byte.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;

/// Describes one chunk of TCP payload seen at a pod's cgroup.
///
/// Addresses are in network byte order as on the wire (IPv4 in the first 4 bytes); ports are in
/// host byte order. `source`/`dest` are the packet's own source and destination.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CaptureHeader {
    /// `bpf_ktime_get_ns()` when the packet was seen.
    pub timestamp_ns: u64,
    /// cgroup v2 id (the inode of the cgroup directory) of the socket that owns the packet.
    pub cgroup_id: u64,
    /// TCP sequence number of the first payload byte of the skb (not of this chunk).
    pub tcp_seq: u32,
    /// Total TCP payload bytes in the skb.
    pub payload_len: u32,
    /// Offset of this chunk inside the skb's payload.
    pub chunk_offset: u32,
    /// Bytes of payload in this record's `data` (at most `CHUNK_BYTES`).
    pub captured_len: u32,
    pub source_addr: [u8; 16],
    pub dest_addr: [u8; 16],
    pub source_port: u16,
    pub dest_port: u16,
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub family: u8,
    /// `DIRECTION_INGRESS` or `DIRECTION_EGRESS`.
    pub direction: u8,
    /// TCP flags byte (FIN, SYN, RST, ...).
    pub tcp_flags: u8,
    pub _padding: [u8; 1],
}

/// One ring-buffer record: a header and up to `N` bytes of payload. Records come in five sizes
/// (`TINY_CHUNK_BYTES`, `MEDIUM_CHUNK_BYTES`, `SMALL_CHUNK_BYTES`, `PAGE_CHUNK_BYTES` and
/// `CHUNK_BYTES` of payload); a reader takes `header.captured_len` bytes after the header of
/// any of them.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CaptureRecordOf<const N: usize> {
    pub header: CaptureHeader,
    pub data: [u8; N],
}

/// A record with up to `CHUNK_BYTES` of payload.
pub type CaptureRecord = CaptureRecordOf<CHUNK_BYTES>;
/// A record with up to `PAGE_CHUNK_BYTES` of payload (packets up to a page, TLS plaintext).
pub type PageCaptureRecord = CaptureRecordOf<PAGE_CHUNK_BYTES>;
/// A record with up to `TINY_CHUNK_BYTES` of payload (a 128-byte slot: also FIN markers).
pub type TinyCaptureRecord = CaptureRecordOf<TINY_CHUNK_BYTES>;
/// A record with up to `SMALL_CHUNK_BYTES` of payload (a 512-byte slot of the ring).
pub type SmallCaptureRecord = CaptureRecordOf<SMALL_CHUNK_BYTES>;

// ---------------------------------------------------------------------------------------------
// TLS plaintext capture: uprobes on OpenSSL's libssl (SSL_read, SSL_read_ex, SSL_write,
// SSL_write_ex, SSL_free), attached per process. The records go into the capture ring buffer as
// [`PageCaptureRecord`]s (close markers as [`TinyCaptureRecord`]s) and reuse [`CaptureHeader`]
// with these meanings:
//
// | field          | TLS meaning                                                                  |
// |----------------|------------------------------------------------------------------------------|
// | `family`       | [`FAMILY_TLS`]: plaintext from a TLS library; no network addresses          |
// | `direction`    | [`DIRECTION_INGRESS`]: bytes SSL_read/_ex returned (plaintext received);     |
// |                | [`DIRECTION_EGRESS`]: bytes SSL_write/_ex accepted (plaintext to be sent)    |
// | `cgroup_id`    | `bpf_get_current_cgroup_id()` of the calling thread (the cgroup v2 id, as   |
// |                | `bpf_skb_cgroup_id` gives for the process's sockets)                        |
// | endpoints      | like a packet's: the *process* endpoint is `tgid` as a little-endian u32 in |
// |                | bytes 0..4 (rest zero); the *connection* endpoint is the `SSL *` pointer as |
// |                | a little-endian u64 in bytes 0..8 (rest zero). INGRESS: source = SSL*,      |
// |                | dest = tgid. EGRESS: source = tgid, dest = SSL*. So (cgroup, local, remote)  |
// |                | names one TLS connection in both directions, as a 4-tuple does for TCP.     |
// | ports          | 0                                                                            |
// | `tcp_seq`      | running byte offset of this call's first byte in its (tgid, SSL*, direction)|
// |                | stream, from 0 when capture first saw the stream; wraps at 2^32             |
// | `payload_len`  | bytes the call moved (SSL_read's return or `*readbytes`, SSL_write's return |
// |                | or `*written`), saturated at u32::MAX                                       |
// | `chunk_offset` | offset of this record's bytes inside the call's bytes                       |
// | `captured_len` | bytes in `data` (at most PAGE_CHUNK_BYTES)                                  |
// | `tcp_flags`    | 0 on data; [`TCP_FIN`] on the close records SSL_free emits for an SSL that  |
// |                | carried data: one per direction (INGRESS first), `captured_len == 0`,       |
// |                | `payload_len == 0`, `tcp_seq` = end offset (0 for a direction without data) |
//
// A call that moved more than `PAGE_CHUNK_BYTES * MAX_CHUNKS_PER_SKB` bytes is cut there (counted in
// `tls_bytes_truncated`); offsets still advance by the full length, so user space sees the gap.
// The thread id and the function (plain or `_ex`) are deliberately not in the endpoints: reads and
// writes of one connection may come from different threads and variants.

/// `CaptureHeader::family` of a record carrying plaintext from a TLS library (see the table above).
pub const FAMILY_TLS: u8 = 0x80;

// ---------------------------------------------------------------------------------------------
// TLS session keys (the `--tls-probes keys` placement): instead of hooking every read and write,
// a uprobe pair on `SSL_do_handshake` copies the first [`TLS_SESSION_WINDOW_BYTES`] of the `SSL`
// object once per completed handshake. That window holds the connection's client random and its
// TLS 1.3 application traffic secrets; the agent finds the connection whose ClientHello carried
// that random among the encrypted connections the `cgroup_skb` programs capture, and decrypts
// their records itself. No trap per request.
//
// The record is a [`TlsSessionRecord`] in the capture rings with `family ==
// FAMILY_TLS_SESSION`, `cgroup_id`, `source_addr`/`dest_addr` as in a TLS plaintext record of
// direction INGRESS (source = the `SSL *`, dest = the tgid), `payload_len` = bytes of the window
// that could be read. TLS 1.2 keeps its master secret in the `SSL_SESSION` the object points to:
// once it is known where that pointer is for a process ([`MAP_TLS_SESSION_POINTERS`]), the record
// also carries the session's first [`TLS_SESSION_STRUCT_BYTES`] right after the window,
// `captured_len` = window + those bytes, `chunk_offset` = the pointer's offset in the `SSL`
// object. Every other field is 0. Neither leaves the node's agent.
//
// Where the pointer is: at a process's first completed handshake the return probe looks for it
// itself, the first field of the window that points to memory starting like an `SSL_SESSION`
// ([`looks_like_tls_session`]), and records the field's offset (or
// [`TLS_SESSION_POINTER_NONE`]) for the process. So the session is copied from the first
// connection on, while it certainly exists; OpenSSL wipes it when a short connection closes,
// usually before the agent could read it. The agent's own search (trial decryption over the
// process's memory) corrects a wrong or missing one.

/// `CaptureHeader::family` of a record carrying the start of an `SSL` object (see above).
pub const FAMILY_TLS_SESSION: u8 = 0x81;
/// Bytes of the `SSL` object copied per handshake (OpenSSL 3.0: the traffic secrets end at
/// about 2 KiB). When the object's memory ends sooner, half of it is tried.
pub const TLS_SESSION_WINDOW_BYTES: usize = 4096;
/// Bytes of the `SSL_SESSION` copied after the window (OpenSSL 3.0: the master secret is at 80).
pub const TLS_SESSION_STRUCT_BYTES: usize = 256;
/// A [`FAMILY_TLS_SESSION`] record.
pub type TlsSessionRecord = CaptureRecordOf<{ TLS_SESSION_WINDOW_BYTES + TLS_SESSION_STRUCT_BYTES }>;
/// Where each process's `SSL` objects keep their `SSL_SESSION` pointer (key: tgid, 0 for every
/// process without an entry of its own; value: byte offset, below [`TLS_SESSION_WINDOW_BYTES`],
/// or [`TLS_SESSION_POINTER_NONE`]).
pub const MAP_TLS_SESSION_POINTERS: &str = "TLS_SESSION_POINTERS";
/// A [`MAP_TLS_SESSION_POINTERS`] value: the return probe looked for the pointer in this
/// process's `SSL` object and found none. It does not look again (the default entry, 0, still
/// applies); the agent's search may set one.
pub const TLS_SESSION_POINTER_NONE: u32 = u32::MAX;

/// Whether the first 16 bytes of an object are those of an OpenSSL `SSL_SESSION` after a
/// handshake: `int ssl_version` (padded to 8 bytes), then `size_t master_key_length`: TLS 1.2
/// and its 48-byte master secret, or TLS 1.3 and its resumption secret, the hash's length (32
/// or 48) once a ticket was made, else 0 (a client before the server's ticket, a server without
/// tickets). OpenSSL 1.1.1 to 3.6 begin the struct so. A wrong match costs nothing but the
/// agent's own search: the copy it brings decrypts nothing.
pub fn looks_like_tls_session(head: [u64; 2]) -> bool {
    match head[0] as u32 {
        0x0303 => head[1] == 48,
        0x0304 => matches!(head[1], 0 | 32 | 48),
        _ => false,
    }
}
/// uprobe on `SSL_do_handshake` entry: remembers the `SSL *` for the calling thread.
pub const PROG_TLS_HANDSHAKE_ENTER: &str = "palisade_tls_handshake_enter";
/// uretprobe on `SSL_do_handshake`: on success (1), emits the [`TlsSessionRecord`].
pub const PROG_TLS_HANDSHAKE_EXIT: &str = "palisade_tls_handshake_exit";
/// Per-thread `SSL *` of an `SSL_do_handshake` call in progress (key: pid_tgid, value: u64).
pub const MAP_TLS_HANDSHAKE_ARGS: &str = "TLS_HANDSHAKE_ARGS";

/// uprobe on `SSL_read` entry: remembers (ssl, buf) for the calling thread.
pub const PROG_TLS_READ_ENTER: &str = "palisade_tls_read_enter";
/// uprobe on `SSL_read_ex` entry: remembers (ssl, buf, readbytes pointer).
pub const PROG_TLS_READ_EX_ENTER: &str = "palisade_tls_read_ex_enter";
/// uretprobe on `SSL_read` and `SSL_read_ex`: copies the bytes read.
pub const PROG_TLS_READ_EXIT: &str = "palisade_tls_read_exit";
/// uprobe on `SSL_write` entry: remembers (ssl, buf).
pub const PROG_TLS_WRITE_ENTER: &str = "palisade_tls_write_enter";
/// uprobe on `SSL_write_ex` entry: remembers (ssl, buf, written pointer).
pub const PROG_TLS_WRITE_EX_ENTER: &str = "palisade_tls_write_ex_enter";
/// uprobe on OpenSSL 3.2+'s `ssl_write_internal(ssl, buf, num, flags, &written)` or
/// `SSL_write_ex2` (same arguments) entry: remembers (ssl, buf, written pointer, the fifth
/// argument).
pub const PROG_TLS_WRITE_FLAGS_ENTER: &str = "palisade_tls_write_flags_enter";
/// uretprobe on `SSL_write`, `SSL_write_ex`, `SSL_write_ex2` and the internal write function:
/// copies the bytes the call accepted.
pub const PROG_TLS_WRITE_EXIT: &str = "palisade_tls_write_exit";
/// uprobe on `SSL_free` entry: emits the close records and forgets the SSL's offsets.
pub const PROG_TLS_FREE: &str = "palisade_tls_free";

/// Per-thread arguments of an SSL_read/_ex call in progress (key: pid_tgid, value [`TlsCallArgs`]).
pub const MAP_TLS_READ_ARGS: &str = "TLS_READ_ARGS";
/// Per-thread arguments of an SSL_write/_ex call in progress.
pub const MAP_TLS_WRITE_ARGS: &str = "TLS_WRITE_ARGS";
/// Running byte offsets per stream (key [`TlsStreamKey`], value u64).
pub const MAP_TLS_STREAM_OFFSETS: &str = "TLS_STREAM_OFFSETS";
/// Entries of the per-thread argument maps (LRU: a thread that never returns is evicted): threads
/// inside an SSL call at the same moment, over all attached processes.
///
/// The object declares the TLS maps with 1 entry; the TLS loader sets these sizes, so that an
/// object loaded for cgroup capture alone does not allocate them (~9 MiB at these sizes).
pub const TLS_ARGS_MAX_ENTRIES: u32 = 16384;
/// Entries of [`MAP_TLS_STREAM_OFFSETS`] (LRU: an evicted stream restarts at offset 0): live TLS
/// connections times 2 directions, over all attached processes.
pub const TLS_STREAM_MAX_ENTRIES: u32 = 65536;

/// Arguments saved at the entry of an SSL_read/_ex or SSL_write/_ex call, read at its return.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlsCallArgs {
    /// The `SSL *`.
    pub ssl: u64,
    /// The caller's plaintext buffer.
    pub buf: u64,
    /// `size_t *readbytes` / `size_t *written` of the `_ex` variants; 0 for SSL_read/SSL_write.
    pub len_ptr: u64,
}

/// Key of [`MAP_TLS_STREAM_OFFSETS`]: one direction of one SSL object of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TlsStreamKey {
    /// The `SSL *`.
    pub ssl: u64,
    /// Process id (tgid) owning the SSL object.
    pub tgid: u32,
    /// `DIRECTION_INGRESS` or `DIRECTION_EGRESS`.
    pub direction: u8,
    pub _padding: [u8; 3],
}

/// Counters kept by the capture programs, per CPU; user space sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureCounters {
    /// Packets with TCP payload seen.
    pub packets_seen: u64,
    /// Records written to the ring buffer.
    pub records_emitted: u64,
    /// Records the kernel could not deliver because the ring buffer was full.
    pub records_lost: u64,
    /// Payload bytes not captured because an skb held more than `MAX_CHUNKS_PER_SKB` chunks.
    pub bytes_truncated: u64,
    /// Packets the programs could not parse (short headers, unexpected protocol layout).
    pub parse_errors: u64,
    // TLS uprobe counters (appended). The TLS programs are loaded as a separate instance of the
    // object with their own copy of this map: there, `records_emitted` and `records_lost` count
    // TLS records (read them with `TlsProbes::counters`, next to `CaptureProbes::counters`).
    /// Runs of the TLS uprobes at function entry (SSL_read/_ex, SSL_write/_ex, SSL_free).
    pub tls_entry_hits: u64,
    /// Runs of the TLS uretprobes (returns of SSL_read/_ex and SSL_write/_ex).
    pub tls_return_hits: u64,
    /// SSL_read/_ex and SSL_write/_ex calls that moved plaintext (and produced records).
    pub tls_data_calls: u64,
    /// Records with TLS plaintext or a TLS close marker written to the ring buffer.
    pub tls_records_emitted: u64,
    /// Plaintext bytes copied into TLS records.
    pub tls_bytes_captured: u64,
    /// Plaintext bytes not copied because a call moved more than `PAGE_CHUNK_BYTES * MAX_CHUNKS_PER_SKB`.
    pub tls_bytes_truncated: u64,
    /// `bpf_probe_read_user` of a plaintext buffer or length failed (record discarded).
    pub tls_read_errors: u64,
    /// Returns without saved entry arguments (attached in the middle of a call, or map evicted).
    pub tls_unmatched_returns: u64,
    /// [`TlsSessionRecord`]s written (completed handshakes seen by the `SSL_do_handshake` probes).
    pub tls_sessions_emitted: u64,
    /// Packets with TCP payload (counted in `packets_seen`) not captured because of their
    /// cgroup's [`CaptureFilter`]s: another local port, or a connection outside the sample.
    pub packets_filtered: u64,
}

impl CaptureCounters {
    /// Adds every counter of `other` (per-CPU entries, or the TLS programs' own copy).
    pub fn add(&mut self, other: &CaptureCounters) {
        self.packets_seen += other.packets_seen;
        self.records_emitted += other.records_emitted;
        self.records_lost += other.records_lost;
        self.bytes_truncated += other.bytes_truncated;
        self.parse_errors += other.parse_errors;
        self.tls_entry_hits += other.tls_entry_hits;
        self.tls_return_hits += other.tls_return_hits;
        self.tls_data_calls += other.tls_data_calls;
        self.tls_records_emitted += other.tls_records_emitted;
        self.tls_bytes_captured += other.tls_bytes_captured;
        self.tls_bytes_truncated += other.tls_bytes_truncated;
        self.tls_read_errors += other.tls_read_errors;
        self.tls_unmatched_returns += other.tls_unmatched_returns;
        self.tls_sessions_emitted += other.tls_sessions_emitted;
        self.packets_filtered += other.packets_filtered;
    }
}

// ---------------------------------------------------------------------------------------------
// Enforcement: a `cgroup_skb` ingress program on each protected pod's cgroup drops packets from
// blocked sources. Its maps are pinned in bpffs by the agent, and its links too, so that blocks
// stay enforced when the agent dies and a restarted agent adopts them.

/// The enforcement program on inbound packets (cgroup_skb ingress): blocked sources, isolation.
pub const PROG_ENFORCE_INGRESS: &str = "palisade_enforce_ingress";
/// The enforcement program on outbound packets (cgroup_skb egress): isolation with egress denied.
pub const PROG_ENFORCE_EGRESS: &str = "palisade_enforce_egress";
/// `HashMap<BlockKey, BlockValue>`: blocked sources per protected pod cgroup.
pub const MAP_BLOCKED_SOURCES: &str = "BLOCKED_SOURCES";
/// `Array<u64>` with one entry: bit [`ENFORCE_BLOCKS`] set while `BLOCKED_SOURCES` may hold
/// entries, bit [`ENFORCE_ISOLATION`] while `ISOLATED_WORKLOADS` may. While it is 0 the programs
/// pass every packet without looking further.
pub const MAP_ENFORCE_ACTIVE: &str = "ENFORCE_ACTIVE";
/// `ENFORCE_ACTIVE` bit: blocked sources exist.
pub const ENFORCE_BLOCKS: u64 = 1;
/// `ENFORCE_ACTIVE` bit: isolated workloads exist.
pub const ENFORCE_ISOLATION: u64 = 2;
/// `HashMap<u64, IsolationValue>`: isolated pod cgroups (key: cgroup id).
pub const MAP_ISOLATED_WORKLOADS: &str = "ISOLATED_WORKLOADS";
/// `LpmTrie<IsolationAllowKey, u8>`: the addresses an isolated pod still accepts connections
/// from (and, with egress denied, still connects to).
pub const MAP_ISOLATION_ALLOW: &str = "ISOLATION_ALLOW";
/// Most isolated pods per node.
pub const ISOLATED_WORKLOADS_MAX_ENTRIES: u32 = 4096;
/// Most allow-list prefixes per node, all isolated pods together.
pub const ISOLATION_ALLOW_MAX_ENTRIES: u32 = 65536;
/// `IsolationValue::flags` bit: new outbound connections are denied too.
pub const ISOLATION_DENY_EGRESS: u64 = 1;
/// LPM prefix length of an [`IsolationAllowKey`] that matches one cgroup and every address
/// (the cgroup id's 64 bits); add the address prefix length (IPv4: 96 + its length).
pub const ISOLATION_ALLOW_CGROUP_BITS: u32 = 64;
/// Most blocked (pod, source) pairs per node.
pub const BLOCKED_SOURCES_MAX_ENTRIES: u32 = 16384;
/// Cgroup levels the program walks up from a socket's cgroup to find the protected pod's
/// (kubelet puts pods 2 or 3 levels below the root, containers one below their pod).
pub const ENFORCE_MAX_CGROUP_LEVEL: u32 = 8;

/// A blocked source of one protected pod: the pod's cgroup id (the inode of its cgroup v2
/// directory) and the source address, IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub cgroup_id: u64,
    pub addr: [u8; 16],
}

/// Until when a source is blocked, and how many of its packets were dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockValue {
    /// `CLOCK_MONOTONIC` (bpf_ktime_get_ns) time at which the block ends; the program stops
    /// dropping then, even if nobody removes the entry.
    pub expires_ns: u64,
    /// Packets dropped (updated by the program, atomically).
    pub dropped_packets: u64,
}

/// An isolated pod cgroup: until when, how, and what was dropped. The programs deny new inbound
/// connections (TCP SYN, UDP other than DNS answers, other protocols except ICMP) from sources
/// outside the pod's allow-list, and with [`ISOLATION_DENY_EGRESS`] new outbound ones
/// (TCP SYN, UDP other than DNS queries) to destinations outside it. Established connections
/// and ICMP pass.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IsolationValue {
    /// `CLOCK_MONOTONIC` time at which the isolation ends (`u64::MAX`: until released).
    pub expires_ns: u64,
    pub flags: u64,
    /// Inbound packets dropped (a lower bound, see `BlockValue::dropped_packets`).
    pub dropped_ingress: u64,
    /// Outbound packets dropped.
    pub dropped_egress: u64,
    /// For user space only: the source whose attack caused the isolation (IPv4-mapped IPv6),
    /// zero for an isolation asked by hand. Lets a restarted agent report what it adopts.
    pub cause: [u8; 16],
}

/// The data of an `ISOLATION_ALLOW` LPM key: the isolated pod's cgroup id (native byte order;
/// always matched in full) and an address, IPv4 as IPv4-mapped IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IsolationAllowKey {
    pub cgroup_id: u64,
    pub addr: [u8; 16],
}

#[cfg(feature = "user")]
mod user {
    unsafe impl aya::Pod for super::IsolationValue {}
    unsafe impl aya::Pod for super::IsolationAllowKey {}
    unsafe impl aya::Pod for super::BlockKey {}
    unsafe impl aya::Pod for super::BlockValue {}
    // SAFETY: plain-old-data, #[repr(C)], no padding holes left implicit, every bit pattern valid.
    unsafe impl aya::Pod for super::CaptureHeader {}
    unsafe impl aya::Pod for super::CaptureRecord {}
    unsafe impl aya::Pod for super::CaptureCounters {}
    unsafe impl aya::Pod for super::CaptureFilter {}
    unsafe impl aya::Pod for super::CaptureFilterKey {}
    unsafe impl aya::Pod for super::TlsCallArgs {}
    unsafe impl aya::Pod for super::TlsStreamKey {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::{connection_sampled, looks_like_tls_session, CaptureFilter};

    fn client(i: u32) -> ([u8; 16], u16) {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 244, (i >> 8) as u8, i as u8]);
        (addr, 32768 + (i % 28000) as u16)
    }

    #[test]
    fn the_sample_holds_about_the_percentage_asked_for() {
        for percent in [1u8, 10, 50, 90] {
            let n = 20_000u32;
            let kept = (0..n)
                .filter(|&i| {
                    let (addr, port) = client(i);
                    connection_sampled(7, &addr, port, 8080, percent)
                })
                .count() as f64;
            let share = kept / f64::from(n) * 100.0;
            assert!(
                (share - f64::from(percent)).abs() < 1.0 + f64::from(percent) * 0.1,
                "{percent} % asked, {share:.2} % kept"
            );
        }
        let (addr, port) = client(1);
        assert!((0..1000).all(|seed| connection_sampled(seed, &addr, port, 8080, 100)));
    }

    #[test]
    fn another_seed_samples_other_connections() {
        let picked = |seed| {
            (0..2000u32)
                .filter(|&i| {
                    let (addr, port) = client(i);
                    connection_sampled(seed, &addr, port, 8080, 50)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(picked(1), picked(1), "the same seed picks the same connections");
        assert_ne!(picked(1), picked(2));
    }

    #[test]
    fn a_filter_samples_its_share_and_everything_at_100() {
        let (addr, port) = client(3);
        let mut f = CaptureFilter {
            sampling_percent: 100,
            ..Default::default()
        };
        assert!(f.samples(8080, &addr, port));
        f.sampling_percent = 50;
        let kept = (0..1000u32)
            .filter(|&i| {
                let (addr, port) = client(i);
                f.samples(8080, &addr, port)
            })
            .count();
        assert!((400..600).contains(&kept), "{kept} of 1000 at 50 %");
    }

    #[test]
    fn tls_session_heads_are_told_from_other_objects() {
        // TLS 1.2 with its master secret; the 4 bytes after the int are padding, not looked at.
        assert!(looks_like_tls_session([0x0303, 48]));
        assert!(looks_like_tls_session([0xdead_beef_0000_0303, 48]));
        // TLS 1.3: a ticket's secret, or none yet.
        for len in [0, 32, 48] {
            assert!(looks_like_tls_session([0x0304, len]), "{len}");
        }
        // TLS 1.2 without a secret, older versions, a pointer, zeroes.
        assert!(!looks_like_tls_session([0x0303, 0]));
        assert!(!looks_like_tls_session([0x0303, 32]));
        assert!(!looks_like_tls_session([0x0302, 48]));
        assert!(!looks_like_tls_session([0x5555_5555_0304, 0x7fff_0000_1000]));
        assert!(!looks_like_tls_session([0, 0]));
    }
}
