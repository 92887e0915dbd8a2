//! Palisade's kernel side: `cgroup_skb` programs that copy the TCP payload of every packet sent or
//! received by the sockets of a watched cgroup v2 directory into a ring buffer.
//!
//! Capture is passive: both programs always return 1 (pass) and never drop traffic.
//!
//! TLS: uprobes on OpenSSL's `SSL_read`/`SSL_read_ex`/`SSL_write`/`SSL_write_ex` (entry: remember
//! the arguments per thread; return: copy the plaintext the call moved) and `SSL_free` (close
//! records), attached per process by the agent. They write into the same ring buffer with
//! `family == FAMILY_TLS` (record format: node-agent-common).
//!
//! Verifier notes (see docs/ebpf-toolchain.md): lengths are computed in u64 and bounded with an
//! explicit `if n == 0 || n > CHUNK_BYTES` before they reach `bpf_skb_load_bytes`.
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{ArrayOfMaps, RingBuf as BtfRingBuf},
    cty::c_void,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_probe_read_user,
        generated::{
            bpf_get_current_cgroup_id, bpf_ktime_get_ns, bpf_probe_read_user as bpf_probe_read_user_raw,
            bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id, bpf_skb_load_bytes,
        },
    },
    macros::{btf_map, cgroup_skb, map, uprobe, uretprobe},
    maps::{
        lpm_trie::Key as LpmKey, ring_buf::RingBufEntry, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray,
        RingBuf,
    },
    programs::{ProbeContext, RetProbeContext, SkBuffContext},
};
use palisade_common::{
    BlockKey, BlockValue, CaptureCounters, CaptureFilter, CaptureFilterKey, CaptureHeader, CaptureRecordOf,
    IsolationAllowKey, IsolationValue, PageCaptureRecord, TinyCaptureRecord, TlsCallArgs, TlsSessionRecord,
    TlsStreamKey, BLOCKED_SOURCES_MAX_ENTRIES, CAPTURE_FILTERS_MAX_ENTRIES, CAPTURE_FILTER_CGROUP_ENTRY,
    CAPTURE_RINGS_MAX_CPUS, CAPTURE_RING_BYTES, CHUNK_BYTES, DIRECTION_EGRESS, DIRECTION_INGRESS,
    ENFORCE_BLOCKS, ENFORCE_ISOLATION, ENFORCE_MAX_CGROUP_LEVEL, FAMILY_IPV4, FAMILY_IPV6, FAMILY_TLS,
    FAMILY_TLS_SESSION, ISOLATED_WORKLOADS_MAX_ENTRIES, ISOLATION_ALLOW_CGROUP_BITS,
    ISOLATION_ALLOW_MAX_ENTRIES, ISOLATION_DENY_EGRESS, MAX_CHUNKS_PER_SKB, MEDIUM_CHUNK_BYTES,
    PAGE_CHUNK_BYTES, SMALL_CHUNK_BYTES, TCP_FIN, TCP_RST, TINY_CHUNK_BYTES, TLS_SESSION_POINTER_NONE,
    TLS_SESSION_STRUCT_BYTES, TLS_SESSION_WINDOW_BYTES,
};

/// Records of a CPU without a ring in [`CAPTURE_RINGS`] (every CPU, if the agent could not make
/// them), and of TLS programs loaded on their own; see [`CaptureRecordOf`].
#[map]
static CAPTURE_RING: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);

/// One ring buffer per CPU for the capture programs (cgroup and TLS), created and put in by the agent
/// (the inner definition is only the template the outer map is created with; the agent's rings
/// may be of another size). Each CPU reserves in its own ring: the shared ring's lock and
/// producer position went back and forth between the client's CPU (ingress, in its softirq) and
/// the server's (egress, in its `sendmsg`) for every record. The agent merges the rings by
/// timestamp.
#[btf_map]
static CAPTURE_RINGS: ArrayOfMaps<BtfRingBuf<u8, { 1 << 20 }>, CAPTURE_RINGS_MAX_CPUS> = ArrayOfMaps::new();

/// One [`CaptureCounters`] per CPU at index 0.
#[map]
static CAPTURE_COUNTERS: PerCpuArray<CaptureCounters> = PerCpuArray::with_max_entries(1, 0);

/// What the monitors asked for, per socket cgroup (written by the agent; see
/// palisade_common::CaptureFilter). No entry: the socket's packets are all captured. Not
/// preallocated: the TLS programs' instance of the object never fills its copy.
#[map]
static CAPTURE_FILTERS: HashMap<CaptureFilterKey, CaptureFilter> =
    HashMap::with_max_entries(CAPTURE_FILTERS_MAX_ENTRIES, BPF_F_NO_PREALLOC as u32);

/// Bumped by the agent after each change of [`CAPTURE_FILTERS`] (index 0).
#[map]
static CAPTURE_FILTER_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// The filter each CPU looked up last, and for what. `tag` mixes the other fields: a program
/// that interrupts another's refill (the ingress program in a softirq, say) can leave fields of
/// both, and then the tag does not match them.
#[repr(C)]
#[derive(Clone, Copy)]
struct FilterCache {
    cgroup_id: u64,
    generation: u64,
    local_port: u16,
    _padding: [u8; 6],
    filter: CaptureFilter,
    tag: u64,
}

impl FilterCache {
    /// A mix of every other field.
    #[inline(always)]
    fn expected_tag(&self) -> u64 {
        let f = &self.filter;
        let filter = (u64::from(f.sampling_seed) << 16)
            | (u64::from(f.every_port) << 8)
            | u64::from(f.sampling_percent);
        (self.cgroup_id ^ 0x9e37_79b9_7f4a_7c15).wrapping_mul(0xff51_afd7_ed55_8ccd)
            ^ self.generation.rotate_left(17)
            ^ (u64::from(self.local_port) << 40)
            ^ filter.rotate_left(29)
    }
}

/// One [`FilterCache`] per CPU at index 0: consecutive packets mostly belong to the same pod
/// and port.
#[map]
static CAPTURE_FILTER_CACHE: PerCpuArray<FilterCache> = PerCpuArray::with_max_entries(1, 0);

/// One scratch word per CPU, see [`forget_bounds`].
#[map]
static CAPTURE_SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `value`, with everything the verifier knows about it forgotten but `value <= max`.
///
/// Each way through the IP and TCP headers (IPv4 with or without options, IPv6 with 0 to 4
/// extension headers, read in place or through helpers) reaches the payload with its own range
/// for the payload offset, and the length of every chunk copied is computed from it. The verifier
/// then walks the chunk loop once per way: close to its limit of 1,000,000 instructions. A value
/// read back from a map is one the verifier cannot know, so from here on all ways share one
/// state and the loop is walked once. `None` (never, in practice) if the map is unreadable.
#[inline(always)]
fn forget_bounds(value: u64, max: u64) -> Option<u64> {
    let slot = CAPTURE_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a per-CPU array, from a successful lookup; programs do not
    // migrate between CPUs while they run, so nothing else uses it meanwhile.
    let value = unsafe {
        *slot = value;
        core::ptr::read_volatile(slot)
    };
    (value <= max).then_some(value)
}

// The TLS maps are declared with a placeholder size of 1 entry (the kernel rounds an LRU map up
// to one entry per CPU): loading this object for cgroup capture alone then allocates next to
// nothing for them. The agent's TLS loader sets the real sizes (TLS_ARGS_MAX_ENTRIES,
// TLS_STREAM_MAX_ENTRIES) when it loads the object for the uprobe programs.

/// Arguments of the SSL_read/_ex call each thread is in (key: pid_tgid).
#[map]
static TLS_READ_ARGS: LruHashMap<u64, TlsCallArgs> = LruHashMap::with_max_entries(1, 0);

/// Arguments of the SSL_write/_ex call each thread is in (key: pid_tgid).
#[map]
static TLS_WRITE_ARGS: LruHashMap<u64, TlsCallArgs> = LruHashMap::with_max_entries(1, 0);

/// The `SSL *` of the SSL_do_handshake call each thread is in (key: pid_tgid).
#[map]
static TLS_HANDSHAKE_ARGS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(1, 0);

/// Offset of the `SSL_SESSION` pointer in the `SSL` objects of a process (key: tgid; 0: the
/// default), written by the agent once it found it (TLS 1.2 master secrets live there).
#[map]
static TLS_SESSION_POINTERS: HashMap<u32, u32> = HashMap::with_max_entries(1, 0);

/// Next byte offset of each (SSL*, tgid, direction) plaintext stream.
#[map]
static TLS_STREAM_OFFSETS: LruHashMap<TlsStreamKey, u64> = LruHashMap::with_max_entries(1, 0);

const IPPROTO_TCP: u8 = 6;
const IPV6_HDR_LEN: u64 = 40;
const IPV4_MIN_HDR_LEN: u64 = 20;
const TCP_MIN_HDR_LEN: u64 = 20;
/// IPv6 extension headers skipped before giving up (hop-by-hop, routing, destination options).
const MAX_IPV6_EXT_HEADERS: usize = 4;
const CHUNK: u64 = CHUNK_BYTES as u64;
/// Pages in a chunk: packets up to a chunk are copied in pages.
const PAGES_PER_CHUNK: usize = CHUNK_BYTES / PAGE_CHUNK_BYTES;
/// TLS plaintext goes in pages: most calls move a response head or a small body.
const TLS_CHUNK: u64 = PAGE_CHUNK_BYTES as u64;
/// Ring-buffer submit flags: none, i.e. the kernel's adaptive wake-up. It notifies the reader only
/// when the record lands in a ring the reader had emptied (an idle agent wakes at once); while
/// the reader is behind (an agent under load draining in batches) nothing is signalled.
const ADAPTIVE_WAKEUP: u64 = 0;
const MAX_CHUNKS: u64 = MAX_CHUNKS_PER_SKB as u64;
/// Furthest the TCP payload can start: IPv6 and 4 extension headers of up to 2 KiB each, or
/// IPv4 with options, then TCP with options.
const MAX_PAYLOAD_OFFSET: u64 = IPV6_HDR_LEN + MAX_IPV6_EXT_HEADERS as u64 * 2048 + 60;

/// Pass verdict for cgroup_skb programs.
const PASS: i32 = 1;
/// Drop verdict for cgroup_skb programs.
const DROP: i32 = 0;

/// Blocked sources per protected pod (pinned by the agent; see palisade_common::BlockKey).
#[map]
static BLOCKED_SOURCES: HashMap<BlockKey, BlockValue> =
    HashMap::with_max_entries(BLOCKED_SOURCES_MAX_ENTRIES, 0);

/// Bits ENFORCE_BLOCKS / ENFORCE_ISOLATION (index 0); 0 lets every packet pass at the cost of
/// one lookup.
#[map]
static ENFORCE_ACTIVE: Array<u64> = Array::with_max_entries(1, 0);

/// Isolated pod cgroups (pinned by the agent; see palisade_common::IsolationValue).
#[map]
static ISOLATED_WORKLOADS: HashMap<u64, IsolationValue> =
    HashMap::with_max_entries(ISOLATED_WORKLOADS_MAX_ENTRIES, 0);

/// What each isolated pod still accepts (pinned by the agent; see IsolationAllowKey).
#[map]
static ISOLATION_ALLOW: LpmTrie<IsolationAllowKey, u8> =
    LpmTrie::with_max_entries(ISOLATION_ALLOW_MAX_ENTRIES, 0);

const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const DNS_PORT: u16 = 53;

/// Enforcement on a protected pod's cgroup, inbound: drops packets from the pod's blocked
/// sources until their block expires, and new connections from outside the allow-list of an
/// isolated pod. Attached only where a policy or an isolation may act; passes everything else.
#[cgroup_skb(ingress)]
pub fn palisade_enforce_ingress(ctx: SkBuffContext) -> i32 {
    if enforce(&ctx, true) {
        DROP
    } else {
        PASS
    }
}

/// Enforcement on a protected pod's cgroup, outbound: drops new connections of an isolated pod
/// whose egress is denied to destinations outside its allow-list.
#[cgroup_skb(egress)]
pub fn palisade_enforce_egress(ctx: SkBuffContext) -> i32 {
    if enforce(&ctx, false) {
        DROP
    } else {
        PASS
    }
}

/// What enforcement needs of a packet: the peer address (source inbound, destination outbound,
/// IPv4 as IPv4-mapped IPv6) and whether it opens a new connection or flow.
struct Peer {
    addr: [u8; 16],
    opens: bool,
}

/// Reads the peer and classifies the packet. `None`: not IP, or unreadable (passes).
#[inline(always)]
fn peer(ctx: &SkBuffContext, inbound: bool) -> Option<Peer> {
    let first = ctx.load::<u8>(0).ok()?;
    let mut addr = [0u8; 16];
    let (proto, l4) = match first >> 4 {
        4 => {
            let ip = ctx.load::<[u8; 20]>(0).ok()?;
            addr[10] = 0xff;
            addr[11] = 0xff;
            if inbound {
                addr[12..16].copy_from_slice(&ip[12..16]);
            } else {
                addr[12..16].copy_from_slice(&ip[16..20]);
            }
            // Later fragments carry no L4 header: they belong to a flow judged on its first.
            if ipv4_fragment_offset(&ip) != 0 {
                return Some(Peer { addr, opens: false });
            }
            (ip[9], ((ip[0] & 0x0f) as usize) * 4)
        }
        6 => {
            let ip = ctx.load::<[u8; 40]>(0).ok()?;
            if inbound {
                addr.copy_from_slice(&ip[8..24]);
            } else {
                addr.copy_from_slice(&ip[24..40]);
            }
            (ip[6], IPV6_HDR_LEN as usize)
        }
        _ => return None,
    };
    let opens = match proto {
        IPPROTO_TCP => match ctx.load::<u8>(l4 + 13) {
            Ok(flags) => flags & TCP_SYN != 0 && flags & TCP_ACK == 0,
            Err(_) => true,
        },
        IPPROTO_UDP => {
            // DNS answers in, DNS queries out pass: an isolated pod still resolves names.
            let port_off = if inbound { l4 } else { l4 + 2 };
            match ctx.load::<[u8; 2]>(port_off) {
                Ok(p) => u16::from_be_bytes(p) != DNS_PORT,
                Err(_) => true,
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => false,
        // Other protocols (and IPv6 extension headers) open flows the isolation does not vet:
        // denied inbound, allowed outbound.
        _ => inbound,
    };
    Some(Peer { addr, opens })
}

/// Whether to drop the packet: walks up from the socket's cgroup to the protected pod's.
#[inline(always)]
fn enforce(ctx: &SkBuffContext, inbound: bool) -> bool {
    let active = match ENFORCE_ACTIVE.get(0) {
        Some(n) if *n != 0 => *n,
        _ => return false,
    };
    if !inbound && active & ENFORCE_ISOLATION == 0 {
        return false;
    }
    let Some(peer) = peer(ctx, inbound) else {
        return false;
    };
    // Isolation only judges packets that open a connection or flow; blocks judge every inbound
    // packet. Everything else (established traffic of an isolated pod) passes without the walk.
    let check_blocks = inbound && active & ENFORCE_BLOCKS != 0;
    let check_isolation = active & ENFORCE_ISOLATION != 0 && peer.opens;
    if !check_blocks && !check_isolation {
        return false;
    }
    // SAFETY: helper call on the program's own skb.
    let now = unsafe { bpf_ktime_get_ns() };
    let skb = ctx.skb.skb;
    for level in 1..=ENFORCE_MAX_CGROUP_LEVEL {
        // SAFETY: helper call on the program's own skb; 0 means no cgroup at that level.
        let id = unsafe { bpf_skb_ancestor_cgroup_id(skb, level as i32) };
        if id == 0 {
            break;
        }
        if check_blocks {
            let key = BlockKey {
                cgroup_id: id,
                addr: peer.addr,
            };
            if let Some(value) = BLOCKED_SOURCES.get_ptr_mut(&key) {
                // SAFETY: the pointer comes from a successful lookup. The drop counter is a
                // plain add (the BPF target's core has no atomics): concurrent drops on several
                // CPUs may lose increments, so it is a lower bound.
                unsafe {
                    if now < (*value).expires_ns {
                        (*value).dropped_packets += 1;
                        return true;
                    }
                }
            }
        }
        if check_isolation {
            if let Some(iso) = ISOLATED_WORKLOADS.get_ptr_mut(&id) {
                // SAFETY: pointer from a successful lookup; counters are lower bounds as above.
                unsafe {
                    if now >= (*iso).expires_ns || (!inbound && (*iso).flags & ISOLATION_DENY_EGRESS == 0) {
                        return false;
                    }
                    let key = LpmKey::new(
                        ISOLATION_ALLOW_CGROUP_BITS + 128,
                        IsolationAllowKey {
                            cgroup_id: id,
                            addr: peer.addr,
                        },
                    );
                    if ISOLATION_ALLOW.get(&key).is_some() {
                        return false;
                    }
                    if inbound {
                        (*iso).dropped_ingress += 1;
                    } else {
                        (*iso).dropped_egress += 1;
                    }
                }
                return true;
            }
        }
    }
    false
}

#[cgroup_skb(ingress)]
pub fn palisade_capture_ingress(ctx: SkBuffContext) -> i32 {
    try_capture(&ctx, DIRECTION_INGRESS);
    PASS
}

#[cgroup_skb(egress)]
pub fn palisade_capture_egress(ctx: SkBuffContext) -> i32 {
    try_capture(&ctx, DIRECTION_EGRESS);
    PASS
}

#[derive(Clone, Copy)]
enum Counter {
    PacketsSeen,
    RecordsEmitted,
    RecordsLost,
    BytesTruncated,
    ParseErrors,
    TlsEntryHits,
    TlsReturnHits,
    TlsDataCalls,
    TlsRecordsEmitted,
    TlsBytesCaptured,
    TlsBytesTruncated,
    TlsReadErrors,
    TlsUnmatchedReturns,
    TlsSessionsEmitted,
    PacketsFiltered,
}

#[inline(always)]
fn count(counter: Counter, value: u64) {
    let Some(counters) = CAPTURE_COUNTERS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the pointer comes from a successful map lookup of this CPU's slot; per-CPU values
    // are not shared with programs running on other CPUs, so a plain add is enough.
    unsafe {
        let c = &mut *counters;
        match counter {
            Counter::PacketsSeen => c.packets_seen += value,
            Counter::RecordsEmitted => c.records_emitted += value,
            Counter::RecordsLost => c.records_lost += value,
            Counter::BytesTruncated => c.bytes_truncated += value,
            Counter::ParseErrors => c.parse_errors += value,
            Counter::PacketsFiltered => c.packets_filtered += value,
            Counter::TlsEntryHits => c.tls_entry_hits += value,
            Counter::TlsReturnHits => c.tls_return_hits += value,
            Counter::TlsDataCalls => c.tls_data_calls += value,
            Counter::TlsRecordsEmitted => c.tls_records_emitted += value,
            Counter::TlsBytesCaptured => c.tls_bytes_captured += value,
            Counter::TlsBytesTruncated => c.tls_bytes_truncated += value,
            Counter::TlsReadErrors => c.tls_read_errors += value,
            Counter::TlsUnmatchedReturns => c.tls_unmatched_returns += value,
            Counter::TlsSessionsEmitted => c.tls_sessions_emitted += value,
        }
    }
}

/// Why a packet was not captured. `Ignored` is not an error (not TCP, a non-first fragment, no
/// payload and no FIN/RST); `Malformed` counts as a parse error.
enum Skip {
    Ignored,
    Malformed,
}

#[inline(always)]
fn load<T>(ctx: &SkBuffContext, offset: u64) -> Result<T, Skip> {
    ctx.load::<T>(offset as usize).map_err(|_| Skip::Malformed)
}

/// The fragment offset of an IPv4 header: non-zero for every fragment but the first, and only
/// the first carries the L4 header.
#[inline(always)]
fn ipv4_fragment_offset(ip: &[u8; 20]) -> u16 {
    (((ip[6] & 0x1f) as u16) << 8) | ip[7] as u16
}

/// Whether a TCP header follows this IPv4 header: the protocol is TCP and the packet is not a
/// later fragment.
#[inline(always)]
fn ipv4_carries_tcp_header(ip: &[u8; 20]) -> bool {
    ip[9] == IPPROTO_TCP && ipv4_fragment_offset(ip) == 0
}

#[inline(always)]
fn set_ipv4_addrs(hdr: &mut CaptureHeader, ip: &[u8; 20]) {
    hdr.family = FAMILY_IPV4;
    hdr.source_addr[..4].copy_from_slice(&ip[12..16]);
    hdr.dest_addr[..4].copy_from_slice(&ip[16..20]);
}

#[inline(always)]
fn set_ipv6_addrs(hdr: &mut CaptureHeader, ip: &[u8; 40]) {
    hdr.family = FAMILY_IPV6;
    hdr.source_addr.copy_from_slice(&ip[8..24]);
    hdr.dest_addr.copy_from_slice(&ip[24..40]);
}

/// Fills `hdr`'s addresses and family and returns (offset of the TCP header).
#[inline(always)]
fn parse_ip(ctx: &SkBuffContext, hdr: &mut CaptureHeader) -> Result<u64, Skip> {
    let first: u8 = load(ctx, 0)?;
    match first >> 4 {
        4 => {
            let ip: [u8; 20] = load(ctx, 0)?;
            let ihl = ((ip[0] & 0x0f) as u64) * 4;
            if ihl < IPV4_MIN_HDR_LEN {
                return Err(Skip::Malformed);
            }
            if !ipv4_carries_tcp_header(&ip) {
                return Err(Skip::Ignored);
            }
            set_ipv4_addrs(hdr, &ip);
            Ok(ihl)
        }
        6 => {
            let ip: [u8; 40] = load(ctx, 0)?;
            set_ipv6_addrs(hdr, &ip);
            let mut next = ip[6];
            let mut off = IPV6_HDR_LEN;
            for _ in 0..MAX_IPV6_EXT_HEADERS {
                match next {
                    IPPROTO_TCP => return Ok(off),
                    // Hop-by-hop, routing, destination options: length in 8-byte units, + 8.
                    0 | 43 | 60 => {
                        let ext: [u8; 2] = load(ctx, off)?;
                        next = ext[0];
                        off += (ext[1] as u64 + 1) * 8;
                    }
                    _ => return Err(Skip::Ignored),
                }
            }
            if next == IPPROTO_TCP {
                Ok(off)
            } else {
                Err(Skip::Ignored)
            }
        }
        _ => Err(Skip::Ignored),
    }
}

/// The common case without helper calls: an IPv4 header without options or an IPv6 header
/// without extension headers, then TCP, all in the packet's linear part, read in place. Fills
/// `hdr`'s family and addresses and returns (offset of the TCP header, its first 20 bytes);
/// `None` sends the packet to [`parse_ip`], which reads through `bpf_skb_load_bytes` and handles
/// everything else (options, extension headers, fragments, other protocols, paged headers).
/// The helper calls were the largest part of the program's run time (perf, 2026-11-27).
#[inline(always)]
fn direct_headers(ctx: &SkBuffContext, hdr: &mut CaptureHeader) -> Option<(u64, [u8; 20])> {
    // SAFETY: reading the context's packet bounds; every read below is checked against `end`
    // first, as the verifier requires of direct packet access.
    let (data, end) = unsafe { ((*ctx.skb.skb).data as usize, (*ctx.skb.skb).data_end as usize) };
    const V4_HEADERS: usize = IPV4_MIN_HDR_LEN as usize + TCP_MIN_HDR_LEN as usize;
    const V6_HEADERS: usize = IPV6_HDR_LEN as usize + TCP_MIN_HDR_LEN as usize;
    if data + V4_HEADERS > end {
        return None;
    }
    // SAFETY (all reads below): within [data, end), checked above or just before.
    let first = unsafe { *(data as *const u8) };
    let tcp_off = if first == 0x45 {
        let ip = unsafe { *(data as *const [u8; 20]) };
        if !ipv4_carries_tcp_header(&ip) {
            return None;
        }
        set_ipv4_addrs(hdr, &ip);
        IPV4_MIN_HDR_LEN as usize
    } else if first >> 4 == 6 {
        if data + V6_HEADERS > end {
            return None;
        }
        let ip = unsafe { *(data as *const [u8; 40]) };
        if ip[6] != IPPROTO_TCP {
            return None;
        }
        set_ipv6_addrs(hdr, &ip);
        IPV6_HDR_LEN as usize
    } else {
        return None;
    };
    if data + tcp_off + TCP_MIN_HDR_LEN as usize > end {
        return None;
    }
    let tcp = unsafe { *((data + tcp_off) as *const [u8; 20]) };
    Some((tcp_off as u64, tcp))
}

#[inline(always)]
fn try_capture(ctx: &SkBuffContext, direction: u8) {
    match capture(ctx, direction) {
        Ok(()) | Err(Skip::Ignored) => {}
        Err(Skip::Malformed) => count(Counter::ParseErrors, 1),
    }
}

#[inline(always)]
fn capture(ctx: &SkBuffContext, direction: u8) -> Result<(), Skip> {
    let mut hdr = CaptureHeader {
        timestamp_ns: 0,
        cgroup_id: 0,
        tcp_seq: 0,
        payload_len: 0,
        chunk_offset: 0,
        captured_len: 0,
        source_addr: [0; 16],
        dest_addr: [0; 16],
        source_port: 0,
        dest_port: 0,
        family: 0,
        direction,
        tcp_flags: 0,
        _padding: [0; 1],
    };
    let (tcp_off, tcp) = match direct_headers(ctx, &mut hdr) {
        Some(headers) => headers,
        None => {
            let tcp_off = parse_ip(ctx, &mut hdr)?;
            (tcp_off, load::<[u8; 20]>(ctx, tcp_off)?)
        }
    };
    let doff = ((tcp[12] >> 4) as u64) * 4;
    if doff < TCP_MIN_HDR_LEN {
        return Err(Skip::Malformed);
    }
    let flags = tcp[13];
    let payload_off = forget_bounds(tcp_off + doff, MAX_PAYLOAD_OFFSET).ok_or(Skip::Malformed)?;
    // skb->len, not the IP total length: with BIG TCP the latter is 0.
    let skb_len = ctx.len() as u64;
    if payload_off > skb_len {
        return Err(Skip::Malformed);
    }
    let payload_len = skb_len - payload_off;
    if payload_len == 0 && flags & (TCP_FIN | TCP_RST) == 0 {
        return Err(Skip::Ignored);
    }
    if payload_len > 0 {
        count(Counter::PacketsSeen, 1);
    }

    hdr.source_port = u16::from_be_bytes([tcp[0], tcp[1]]);
    hdr.dest_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    // SAFETY: a plain helper call on the program's own context.
    hdr.cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    if !wanted(&hdr) {
        if payload_len > 0 {
            count(Counter::PacketsFiltered, 1);
        }
        return Err(Skip::Ignored);
    }
    hdr.tcp_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    hdr.tcp_flags = flags;
    hdr.payload_len = payload_len as u32;
    // SAFETY: the helper has no preconditions.
    hdr.timestamp_ns = unsafe { bpf_ktime_get_ns() };

    // A packet that fits a small record (most API messages, and FIN/RST without payload) gets
    // the smallest that fits; larger ones are cut into full chunks. (Only one of the two per
    // packet: choosing per chunk would multiply the paths the verifier walks at every chunk.)
    if payload_len <= TINY_CHUNK_BYTES as u64 {
        return emit_chunk::<TINY_CHUNK_BYTES>(ctx, &mut hdr, payload_off, 0, payload_len);
    }
    if payload_len <= MEDIUM_CHUNK_BYTES as u64 {
        return emit_chunk::<MEDIUM_CHUNK_BYTES>(ctx, &mut hdr, payload_off, 0, payload_len);
    }
    if payload_len <= SMALL_CHUNK_BYTES as u64 {
        return emit_chunk::<SMALL_CHUNK_BYTES>(ctx, &mut hdr, payload_off, 0, payload_len);
    }
    // Up to 16 KiB in pages (a 5 KiB packet takes 8 KiB of the ring, not 16), bigger ones in
    // 16 KiB chunks (a 64 KiB one takes 4 records, not 16).
    if payload_len <= CHUNK {
        return emit_chunks::<PAGE_CHUNK_BYTES, PAGES_PER_CHUNK>(ctx, &mut hdr, payload_off, payload_len);
    }
    emit_chunks::<CHUNK_BYTES, MAX_CHUNKS_PER_SKB>(ctx, &mut hdr, payload_off, payload_len)?;
    if payload_len > CHUNK * MAX_CHUNKS {
        count(Counter::BytesTruncated, payload_len - CHUNK * MAX_CHUNKS);
    }
    Ok(())
}

/// Copies the first `N * M` bytes of the payload into records of `N` bytes each.
#[inline(always)]
fn emit_chunks<const N: usize, const M: usize>(
    ctx: &SkBuffContext,
    hdr: &mut CaptureHeader,
    payload_off: u64,
    payload_len: u64,
) -> Result<(), Skip> {
    let mut chunk_off: u64 = 0;
    for _ in 0..M {
        if chunk_off > 0 && chunk_off >= payload_len {
            break;
        }
        let remaining = payload_len - chunk_off;
        let n = if remaining > N as u64 { N as u64 } else { remaining };
        emit_chunk::<N>(ctx, hdr, payload_off, chunk_off, n)?;
        chunk_off += N as u64;
    }
    Ok(())
}

/// Whether the monitors want the packet's connection: in the sample of its cgroup's and local
/// port's [`CaptureFilter`]. The filter comes from this CPU's [`CAPTURE_FILTER_CACHE`] when it
/// holds the same cgroup and port at the current [`CAPTURE_FILTER_GENERATION`] (array lookups,
/// inlined by the verifier), else from [`CAPTURE_FILTERS`]: the hash lookups were a third of a
/// capture program's run (250 ns per packet on the benchmark's VM).
#[inline(always)]
fn wanted(hdr: &CaptureHeader) -> bool {
    let (local_port, remote_addr, remote_port) = if hdr.direction == DIRECTION_INGRESS {
        (hdr.dest_port, &hdr.source_addr, hdr.source_port)
    } else {
        (hdr.source_port, &hdr.dest_addr, hdr.dest_port)
    };
    let generation = CAPTURE_FILTER_GENERATION.get(0).copied().unwrap_or(0);
    let filter = match CAPTURE_FILTER_CACHE.get_ptr_mut(0) {
        Some(cache) => {
            // SAFETY: this CPU's slot of a per-CPU map. A program that interrupts this one on
            // the same CPU may write it meanwhile: the copy is checked against its own tag.
            let cached = unsafe { *cache };
            if cached.cgroup_id == hdr.cgroup_id
                && cached.local_port == local_port
                && cached.generation == generation
                && cached.tag == cached.expected_tag()
            {
                cached.filter
            } else {
                let mut fresh = FilterCache {
                    cgroup_id: hdr.cgroup_id,
                    generation,
                    local_port,
                    _padding: [0; 6],
                    filter: filter_of(hdr.cgroup_id, local_port),
                    tag: 0,
                };
                // From the local copy: a tag read back from the slot could mix in another
                // program's fields.
                fresh.tag = fresh.expected_tag();
                // SAFETY: as above.
                unsafe { *cache = fresh };
                fresh.filter
            }
        }
        None => filter_of(hdr.cgroup_id, local_port),
    };
    filter.sampling_percent > 0 && filter.samples(local_port, remote_addr, remote_port)
}

/// The filter of a cgroup's connections on `local_port`, from [`CAPTURE_FILTERS`]: a cgroup
/// without an entry is captured whole (100 %), a port it does not list not at all (0 %).
#[inline(always)]
fn filter_of(cgroup_id: u64, local_port: u16) -> CaptureFilter {
    let everything = CaptureFilter {
        sampling_percent: 100,
        every_port: 1,
        _padding: [0; 2],
        sampling_seed: 0,
    };
    let own = CaptureFilterKey::new(cgroup_id, CAPTURE_FILTER_CGROUP_ENTRY);
    // SAFETY (both lookups): the values are copied out at once.
    let Some(cgroup) = (unsafe { CAPTURE_FILTERS.get(&own) }).copied() else {
        return everything;
    };
    if cgroup.every_port != 0 {
        return cgroup;
    }
    let port = CaptureFilterKey::new(cgroup_id, local_port);
    match unsafe { CAPTURE_FILTERS.get(&port) } {
        Some(f) => *f,
        None => CaptureFilter {
            sampling_percent: 0,
            ..everything
        },
    }
}

/// A record in this CPU's ring of [`CAPTURE_RINGS`], or in the shared ring if it has none or it
/// is full (one busy CPU then has the shared ring's room too).
#[inline(always)]
fn reserve_on_this_cpu<T: 'static>() -> Option<RingBufEntry<T>> {
    // SAFETY: the helper has no preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // The agent counts the records it reads from the shared ring: no counter here, whose
    // branches would double the paths the verifier walks through the chunk loop.
    if let Some(ring) = CAPTURE_RINGS.get(cpu) {
        if let Some(entry) = ring.reserve_untyped::<T>(0) {
            return Some(entry);
        }
    }
    CAPTURE_RING.reserve::<T>(0)
}

/// Copies `n` payload bytes starting at `chunk_off` into one ring-buffer record with room for
/// `N` payload bytes (`n <= N`).
#[inline(always)]
fn emit_chunk<const N: usize>(
    ctx: &SkBuffContext,
    hdr: &mut CaptureHeader,
    payload_off: u64,
    chunk_off: u64,
    n: u64,
) -> Result<(), Skip> {
    let Some(mut entry) = reserve_on_this_cpu::<CaptureRecordOf<N>>() else {
        count(Counter::RecordsLost, 1);
        return Ok(());
    };
    let rec: *mut CaptureRecordOf<N> = entry.as_mut_ptr();
    hdr.chunk_offset = chunk_off as u32;
    hdr.captured_len = n as u32;
    // SAFETY: `rec` points to a live reservation of size_of::<CaptureRecordOf<N>>() bytes.
    unsafe { addr_of_mut!((*rec).header).write(*hdr) };
    if n > 0 {
        // The verifier needs an explicit bound on the very register passed as the length. LLVM
        // proves `n > 0` from other registers and would drop a plain check, so `n` is re-read
        // through a volatile stack slot (the verifier keeps the bounds of spilled scalars).
        // SAFETY: reading a local variable.
        let n = unsafe { core::ptr::read_volatile(&n) };
        if n == 0 || n > N as u64 {
            entry.discard(0);
            return Err(Skip::Malformed);
        }
        // SAFETY: the destination is the record's data array, `n <= N` bytes long.
        let ret = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const c_void,
                (payload_off + chunk_off) as u32,
                addr_of_mut!((*rec).data) as *mut c_void,
                n as u32,
            )
        };
        if ret != 0 {
            entry.discard(0);
            return Err(Skip::Malformed);
        }
    }
    entry.submit(ADAPTIVE_WAKEUP);
    count(Counter::RecordsEmitted, 1);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// TLS plaintext through uprobes on libssl (attached per process by the agent).
//
// Reads and writes are both captured at return: SSL_read's bytes exist only then, and a write is
// captured with the length the call accepted, so a non-blocking SSL_write that returns
// WANT_WRITE and is retried with the same buffer is not captured twice.

#[uprobe]
pub fn palisade_tls_read_enter(ctx: ProbeContext) -> u32 {
    tls_enter(&ctx, &TLS_READ_ARGS, None);
    0
}

#[uprobe]
pub fn palisade_tls_read_ex_enter(ctx: ProbeContext) -> u32 {
    tls_enter(&ctx, &TLS_READ_ARGS, Some(3));
    0
}

#[uretprobe]
pub fn palisade_tls_read_exit(ctx: RetProbeContext) -> u32 {
    tls_exit(&ctx, &TLS_READ_ARGS, DIRECTION_INGRESS);
    0
}

#[uprobe]
pub fn palisade_tls_write_enter(ctx: ProbeContext) -> u32 {
    tls_enter(&ctx, &TLS_WRITE_ARGS, None);
    0
}

#[uprobe]
pub fn palisade_tls_write_ex_enter(ctx: ProbeContext) -> u32 {
    tls_enter(&ctx, &TLS_WRITE_ARGS, Some(3));
    0
}

/// OpenSSL 3.2+'s `ssl_write_internal(ssl, buf, num, flags, &written)` and `SSL_write_ex2`:
/// `written` comes fifth.
#[uprobe]
pub fn palisade_tls_write_flags_enter(ctx: ProbeContext) -> u32 {
    tls_enter(&ctx, &TLS_WRITE_ARGS, Some(4));
    0
}

#[uretprobe]
pub fn palisade_tls_write_exit(ctx: RetProbeContext) -> u32 {
    tls_exit(&ctx, &TLS_WRITE_ARGS, DIRECTION_EGRESS);
    0
}

/// `void SSL_free(SSL *ssl)`: when the SSL object carried data, one close record (FIN, no data)
/// per direction, so that user space sees both ends of the connection (a direction that carried
/// nothing closes at offset 0); the stream offsets are forgotten.
#[uprobe]
pub fn palisade_tls_free(ctx: ProbeContext) -> u32 {
    count(Counter::TlsEntryHits, 1);
    let Some(ssl) = ctx.arg::<u64>(0) else {
        return 0;
    };
    if ssl == 0 {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let ingress_key = stream_key(ssl, tgid, DIRECTION_INGRESS);
    let egress_key = stream_key(ssl, tgid, DIRECTION_EGRESS);
    let ingress_end = take_offset(&ingress_key);
    let egress_end = take_offset(&egress_key);
    if ingress_end.is_none() && egress_end.is_none() {
        return 0;
    }
    emit_close(ssl, tgid, DIRECTION_INGRESS, ingress_end.unwrap_or(0));
    emit_close(ssl, tgid, DIRECTION_EGRESS, egress_end.unwrap_or(0));
    0
}

/// `int SSL_do_handshake(SSL *s)` entry: remembers `s` for the return probe of the same thread.
#[uprobe]
pub fn palisade_tls_handshake_enter(ctx: ProbeContext) -> u32 {
    count(Counter::TlsEntryHits, 1);
    if let Some(ssl) = ctx.arg::<u64>(0) {
        if ssl != 0 {
            let _ = TLS_HANDSHAKE_ARGS.insert(&bpf_get_current_pid_tgid(), &ssl, 0);
        }
    }
    0
}

/// `SSL_do_handshake` return: when the handshake is complete (1), copies the start of the `SSL`
/// object, where the connection's client random and traffic secrets are (see
/// [`TlsSessionRecord`]). Once per handshake, not per request.
#[uretprobe]
pub fn palisade_tls_handshake_exit(ctx: RetProbeContext) -> u32 {
    count(Counter::TlsReturnHits, 1);
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(saved) = TLS_HANDSHAKE_ARGS.get_ptr(&pid_tgid) else {
        count(Counter::TlsUnmatchedReturns, 1);
        return 0;
    };
    // SAFETY: pointer from a successful lookup; copied out before the entry is removed.
    let ssl = unsafe { *saved };
    let _ = TLS_HANDSHAKE_ARGS.remove(&pid_tgid);
    if ctx.ret::<i32>() != 1 {
        return 0;
    }
    let Some(mut entry) = reserve_on_this_cpu::<TlsSessionRecord>() else {
        count(Counter::RecordsLost, 1);
        return 0;
    };
    let rec: *mut TlsSessionRecord = entry.as_mut_ptr();
    // SAFETY: the destination is the record's data array of TLS_SESSION_WINDOW_BYTES bytes; the
    // source is user memory, which the helper reads safely (failing, not faulting).
    let window = unsafe { addr_of_mut!((*rec).data) as *mut c_void };
    let mut n = TLS_SESSION_WINDOW_BYTES as u32;
    // SAFETY: see above.
    let mut ret = unsafe { bpf_probe_read_user_raw(window, n, ssl as *const c_void) };
    if ret != 0 {
        // The object's memory may end before the window does.
        n /= 2;
        // SAFETY: see above.
        ret = unsafe { bpf_probe_read_user_raw(window, n, ssl as *const c_void) };
    }
    if ret != 0 {
        count(Counter::TlsReadErrors, 1);
        entry.discard(0);
        return 0;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let mut hdr = tls_header(ssl, tgid, DIRECTION_INGRESS, 0);
    hdr.family = FAMILY_TLS_SESSION;
    hdr.captured_len = n;
    hdr.payload_len = n;
    // TLS 1.2: the start of the SSL_SESSION, right after the window, once it is known where
    // its pointer is: looked for at the process's first handshake.
    if let Some(at) = session_pointer(tgid, window as *const u8, n) {
        let at = u64::from(at) & (TLS_SESSION_WINDOW_BYTES as u64 - 8);
        let mut session: u64 = 0;
        // SAFETY: reads 8 bytes of user memory into a local; the helper fails rather than faults.
        let ok = unsafe {
            bpf_probe_read_user_raw(
                addr_of_mut!(session) as *mut c_void,
                8,
                (ssl + at) as *const c_void,
            )
        } == 0;
        if ok && session != 0 {
            // `n` is the window size or half of it: the destination ends inside the record.
            // SAFETY: the record's data array has TLS_SESSION_WINDOW_BYTES +
            // TLS_SESSION_STRUCT_BYTES bytes and `n <= TLS_SESSION_WINDOW_BYTES`.
            let dst = unsafe { (window as *mut u8).add(n as usize) } as *mut c_void;
            // SAFETY: see above; the source is user memory.
            let copied = unsafe {
                bpf_probe_read_user_raw(dst, TLS_SESSION_STRUCT_BYTES as u32, session as *const c_void)
            };
            if copied == 0 {
                hdr.captured_len = n + TLS_SESSION_STRUCT_BYTES as u32;
                hdr.chunk_offset = at as u32;
            }
        }
    }
    // SAFETY: `rec` points to a live reservation of size_of::<TlsSessionRecord>() bytes.
    unsafe { addr_of_mut!((*rec).header).write(hdr) };
    entry.submit(ADAPTIVE_WAKEUP);
    count(Counter::RecordsEmitted, 1);
    count(Counter::TlsSessionsEmitted, 1);
    0
}

/// Where `tgid`'s `SSL` objects point to their `SSL_SESSION`: its own entry in
/// [`TLS_SESSION_POINTERS`], else the default (key 0); without either, the first field of the
/// `window` (the `n` bytes of the `SSL` object just copied) that points to memory starting like
/// a session, recorded as the process's entry, or [`TLS_SESSION_POINTER_NONE`] so that the
/// search runs once per process.
#[inline(always)]
fn session_pointer(tgid: u32, window: *const u8, n: u32) -> Option<u32> {
    // SAFETY: plain lookups; the values are u32s copied out at once.
    let own = unsafe { TLS_SESSION_POINTERS.get(&tgid) }.copied();
    if let Some(at) = own.filter(|at| *at != TLS_SESSION_POINTER_NONE) {
        return Some(at);
    }
    // SAFETY: as above.
    if let Some(at) = unsafe { TLS_SESSION_POINTERS.get(&0) }.copied() {
        return Some(at);
    }
    if own.is_some() {
        return None; // searched before
    }
    let found = find_session_pointer(window, n);
    let _ = TLS_SESSION_POINTERS.insert(&tgid, &found.unwrap_or(TLS_SESSION_POINTER_NONE), 0);
    found
}

/// The offset of the first 8-byte field among the first `n` bytes of `window` whose value is a
/// user-space address where [`palisade_common::looks_like_tls_session`] holds.
#[inline(always)]
fn find_session_pointer(window: *const u8, n: u32) -> Option<u32> {
    let fields = n as usize / 8;
    for i in 0..TLS_SESSION_WINDOW_BYTES / 8 {
        if i >= fields {
            break;
        }
        // SAFETY: `i * 8 + 8 <= n <= TLS_SESSION_WINDOW_BYTES`: inside the record's data array,
        // which is 8-byte aligned (the header before it is 72 bytes).
        let value = unsafe { *(window as *const u64).add(i) };
        // Aligned, above the first pages, below the top of a 47-bit user address space.
        if value & 7 != 0 || value < 0x1_0000 || value >= 0x8000_0000_0000 {
            continue;
        }
        let mut head = [0u64; 2];
        // SAFETY: reads 16 bytes of user memory into a local; the helper fails rather than
        // faults on an address that is not mapped.
        let read =
            unsafe { bpf_probe_read_user_raw(head.as_mut_ptr() as *mut c_void, 16, value as *const c_void) };
        if read == 0 && palisade_common::looks_like_tls_session(head) {
            return Some((i * 8) as u32);
        }
    }
    None
}

/// Removes a stream's offset entry and returns its value (the end offset).
#[inline(always)]
fn take_offset(key: &TlsStreamKey) -> Option<u64> {
    let offset = TLS_STREAM_OFFSETS.get_ptr(key)?;
    // SAFETY: pointer from a successful lookup; the value is a plain u64, copied before removal.
    let end = unsafe { *offset };
    let _ = TLS_STREAM_OFFSETS.remove(key);
    Some(end)
}

#[inline(always)]
fn emit_close(ssl: u64, tgid: u32, direction: u8, end: u64) {
    let mut hdr = tls_header(ssl, tgid, direction, end);
    hdr.tcp_flags = TCP_FIN;
    // No data: the smallest record.
    let Some(mut entry) = reserve_on_this_cpu::<TinyCaptureRecord>() else {
        count(Counter::RecordsLost, 1);
        return;
    };
    let rec: *mut TinyCaptureRecord = entry.as_mut_ptr();
    // SAFETY: `rec` points to a live reservation of size_of::<TinyCaptureRecord>() bytes.
    unsafe { addr_of_mut!((*rec).header).write(hdr) };
    entry.submit(ADAPTIVE_WAKEUP);
    count(Counter::RecordsEmitted, 1);
    count(Counter::TlsRecordsEmitted, 1);
}

#[inline(always)]
fn stream_key(ssl: u64, tgid: u32, direction: u8) -> TlsStreamKey {
    TlsStreamKey {
        ssl,
        tgid,
        direction,
        _padding: [0; 3],
    }
}

/// `SSL_read(ssl, buf, num)` / `SSL_read_ex(ssl, buf, num, &readbytes)` and the write twins:
/// remembers the arguments for the return probe of the same thread. `bytes_arg`: the argument
/// the byte count is stored through (3 for the `_ex` functions, 4 for OpenSSL 3.2+'s internal
/// write), `None` when the call returns it.
#[inline(always)]
fn tls_enter(ctx: &ProbeContext, args: &LruHashMap<u64, TlsCallArgs>, bytes_arg: Option<usize>) {
    count(Counter::TlsEntryHits, 1);
    let (Some(ssl), Some(buf)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
        return;
    };
    let len_ptr = match bytes_arg {
        Some(index) => match ctx.arg::<u64>(index) {
            Some(p) if p != 0 => p,
            _ => return,
        },
        None => 0,
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let _ = args.insert(&pid_tgid, &TlsCallArgs { ssl, buf, len_ptr }, 0);
}

#[inline(always)]
fn tls_exit(ctx: &RetProbeContext, args: &LruHashMap<u64, TlsCallArgs>, direction: u8) {
    count(Counter::TlsReturnHits, 1);
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(saved) = args.get_ptr(&pid_tgid) else {
        count(Counter::TlsUnmatchedReturns, 1);
        return;
    };
    // SAFETY: pointer from a successful lookup; copied out before the entry is removed.
    let call = unsafe { *saved };
    let _ = args.remove(&pid_tgid);
    // Both SSL_read/SSL_write and the _ex variants return an int.
    let ret: i32 = ctx.ret::<i32>();
    let len: u64 = if call.len_ptr != 0 {
        // _ex (1 on success) and the internal functions they share with SSL_read/SSL_write
        // (positive on success): the length is in *readbytes / *written.
        if ret <= 0 {
            return;
        }
        // SAFETY: reads a size_t from the caller's memory; failures are handled.
        match unsafe { bpf_probe_read_user(call.len_ptr as *const u64) } {
            Ok(n) => n,
            Err(_) => {
                count(Counter::TlsReadErrors, 1);
                return;
            }
        }
    } else if ret > 0 {
        ret as u64
    } else {
        return;
    };
    if len == 0 || call.buf == 0 {
        return;
    }
    let tgid = (pid_tgid >> 32) as u32;
    let key = stream_key(call.ssl, tgid, direction);
    let base = match TLS_STREAM_OFFSETS.get_ptr_mut(&key) {
        Some(offset) => {
            // SAFETY: pointer from a successful lookup. One SSL object is not read (or written)
            // by two threads at once, so there is no concurrent update of this stream.
            unsafe {
                let base = *offset;
                *offset = base + len;
                base
            }
        }
        None => {
            let _ = TLS_STREAM_OFFSETS.insert(&key, &len, 0);
            0
        }
    };
    count(Counter::TlsDataCalls, 1);
    let mut hdr = tls_header(call.ssl, tgid, direction, base);
    hdr.payload_len = if len > u32::MAX as u64 {
        u32::MAX
    } else {
        len as u32
    };

    let mut chunk_off: u64 = 0;
    for _ in 0..MAX_CHUNKS {
        if chunk_off >= len {
            break;
        }
        let remaining = len - chunk_off;
        let n = if remaining > TLS_CHUNK {
            TLS_CHUNK
        } else {
            remaining
        };
        if !emit_tls_chunk(&mut hdr, call.buf, chunk_off, n) {
            return;
        }
        chunk_off += TLS_CHUNK;
    }
    if len > TLS_CHUNK * MAX_CHUNKS {
        count(Counter::TlsBytesTruncated, len - TLS_CHUNK * MAX_CHUNKS);
    }
}

/// A TLS record header: see the TLS table in node-agent-common for the field meanings.
#[inline(always)]
fn tls_header(ssl: u64, tgid: u32, direction: u8, offset: u64) -> CaptureHeader {
    let mut process = [0u8; 16];
    process[..4].copy_from_slice(&tgid.to_le_bytes());
    let mut connection = [0u8; 16];
    connection[..8].copy_from_slice(&ssl.to_le_bytes());
    let (source_addr, dest_addr) = if direction == DIRECTION_INGRESS {
        (connection, process)
    } else {
        (process, connection)
    };
    CaptureHeader {
        // SAFETY: plain helper calls.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tcp_seq: offset as u32,
        payload_len: 0,
        chunk_offset: 0,
        captured_len: 0,
        source_addr,
        dest_addr,
        source_port: 0,
        dest_port: 0,
        family: FAMILY_TLS,
        direction,
        tcp_flags: 0,
        _padding: [0; 1],
    }
}

/// Copies `n` bytes of the caller's buffer at `buf + chunk_off` into one ring-buffer record;
/// false when the record could not be written (the rest of the call is skipped).
#[inline(always)]
fn emit_tls_chunk(hdr: &mut CaptureHeader, buf: u64, chunk_off: u64, n: u64) -> bool {
    let Some(mut entry) = reserve_on_this_cpu::<PageCaptureRecord>() else {
        count(Counter::RecordsLost, 1);
        return false;
    };
    let rec: *mut PageCaptureRecord = entry.as_mut_ptr();
    hdr.chunk_offset = chunk_off as u32;
    hdr.captured_len = n as u32;
    // SAFETY: `rec` points to a live reservation of size_of::<PageCaptureRecord>() bytes.
    unsafe { addr_of_mut!((*rec).header).write(*hdr) };
    // Same verifier recipe as emit_chunk: re-read the length through a volatile stack slot so the
    // bound check below is kept on the register passed to the helper.
    // SAFETY: reading a local variable.
    let n = unsafe { core::ptr::read_volatile(&n) };
    if n == 0 || n > TLS_CHUNK {
        entry.discard(0);
        return false;
    }
    // SAFETY: the destination is the record's data array, `n <= PAGE_CHUNK_BYTES` bytes long; the
    // source is user memory, which the helper reads safely (an error is returned on a fault).
    let ret = unsafe {
        bpf_probe_read_user_raw(
            addr_of_mut!((*rec).data) as *mut c_void,
            n as u32,
            (buf + chunk_off) as *const c_void,
        )
    };
    if ret != 0 {
        entry.discard(0);
        count(Counter::TlsReadErrors, 1);
        return false;
    }
    entry.submit(ADAPTIVE_WAKEUP);
    count(Counter::RecordsEmitted, 1);
    count(Counter::TlsRecordsEmitted, 1);
    count(Counter::TlsBytesCaptured, n);
    true
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the bpfel target aborts on panic and the verifier rejects any reachable panic path.
    unsafe { core::hint::unreachable_unchecked() }
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
