//! Palisade's kernel side: `cgroup_skb` programs that copy the TCP payload of every packet sent or
//! received by the sockets of a watched cgroup v2 directory into a ring buffer.
//!
//! Capture is passive: both programs always return 1 (pass) and never drop traffic.
//!
//! Verifier notes (see docs/ebpf-toolchain.md): lengths are computed in u64 and bounded with an
//! explicit `if n == 0 || n > CHUNK_BYTES` before they reach `bpf_skb_load_bytes`.
#![no_std]
#![no_main]

use core::ptr::addr_of_mut;

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    cty::c_void,
    helpers::generated::{bpf_ktime_get_ns, bpf_skb_cgroup_id, bpf_skb_load_bytes},
    macros::{cgroup_skb, map},
    maps::{PerCpuArray, RingBuf},
    programs::SkBuffContext,
};
use palisade_common::{
    CaptureCounters, CaptureHeader, CaptureRecord, CAPTURE_RING_BYTES, CHUNK_BYTES, DIRECTION_EGRESS,
    DIRECTION_INGRESS, FAMILY_IPV4, FAMILY_IPV6, MAX_CHUNKS_PER_SKB, TCP_FIN, TCP_RST,
};

/// Records of TCP payload, see [`CaptureRecord`].
#[map]
static CAPTURE_RING: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);

/// One [`CaptureCounters`] per CPU at index 0.
#[map]
static CAPTURE_COUNTERS: PerCpuArray<CaptureCounters> = PerCpuArray::with_max_entries(1, 0);

const IPPROTO_TCP: u8 = 6;
const IPV6_HDR_LEN: u64 = 40;
const IPV4_MIN_HDR_LEN: u64 = 20;
const TCP_MIN_HDR_LEN: u64 = 20;
/// IPv6 extension headers skipped before giving up (hop-by-hop, routing, destination options).
const MAX_IPV6_EXT_HEADERS: usize = 4;
const CHUNK: u64 = CHUNK_BYTES as u64;
const MAX_CHUNKS: u64 = MAX_CHUNKS_PER_SKB as u64;

/// Pass verdict for cgroup_skb programs.
const PASS: i32 = 1;

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
            if ip[9] != IPPROTO_TCP {
                return Err(Skip::Ignored);
            }
            // A fragment other than the first carries no TCP header.
            let frag_off = (((ip[6] & 0x1f) as u16) << 8) | ip[7] as u16;
            if frag_off != 0 {
                return Err(Skip::Ignored);
            }
            hdr.family = FAMILY_IPV4;
            hdr.source_addr[..4].copy_from_slice(&ip[12..16]);
            hdr.dest_addr[..4].copy_from_slice(&ip[16..20]);
            Ok(ihl)
        }
        6 => {
            let ip: [u8; 40] = load(ctx, 0)?;
            hdr.family = FAMILY_IPV6;
            hdr.source_addr.copy_from_slice(&ip[8..24]);
            hdr.dest_addr.copy_from_slice(&ip[24..40]);
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
    let tcp_off = parse_ip(ctx, &mut hdr)?;
    let tcp: [u8; 20] = load(ctx, tcp_off)?;
    let doff = ((tcp[12] >> 4) as u64) * 4;
    if doff < TCP_MIN_HDR_LEN {
        return Err(Skip::Malformed);
    }
    let flags = tcp[13];
    let payload_off = tcp_off + doff;
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
    hdr.tcp_seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    hdr.tcp_flags = flags;
    hdr.payload_len = payload_len as u32;
    // SAFETY: plain helper calls on the program's own context.
    hdr.timestamp_ns = unsafe { bpf_ktime_get_ns() };
    hdr.cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };

    let mut chunk_off: u64 = 0;
    for _ in 0..MAX_CHUNKS {
        if chunk_off > 0 && chunk_off >= payload_len {
            break;
        }
        let remaining = payload_len - chunk_off;
        let n = if remaining > CHUNK { CHUNK } else { remaining };
        emit_chunk(ctx, &mut hdr, payload_off, chunk_off, n)?;
        chunk_off += CHUNK;
    }
    if payload_len > CHUNK * MAX_CHUNKS {
        count(Counter::BytesTruncated, payload_len - CHUNK * MAX_CHUNKS);
    }
    Ok(())
}

/// Copies `n` payload bytes starting at `chunk_off` into one ring-buffer record.
#[inline(always)]
fn emit_chunk(
    ctx: &SkBuffContext,
    hdr: &mut CaptureHeader,
    payload_off: u64,
    chunk_off: u64,
    n: u64,
) -> Result<(), Skip> {
    let Some(mut entry) = CAPTURE_RING.reserve::<CaptureRecord>(0) else {
        count(Counter::RecordsLost, 1);
        return Ok(());
    };
    let rec: *mut CaptureRecord = entry.as_mut_ptr();
    hdr.chunk_offset = chunk_off as u32;
    hdr.captured_len = n as u32;
    // SAFETY: `rec` points to a live reservation of size_of::<CaptureRecord>() bytes.
    unsafe { addr_of_mut!((*rec).header).write(*hdr) };
    if n > 0 {
        // The verifier needs an explicit bound on the very register passed as the length. LLVM
        // proves `n > 0` from other registers and would drop a plain check, so `n` is re-read
        // through a volatile stack slot (the verifier keeps the bounds of spilled scalars).
        // SAFETY: reading a local variable.
        let n = unsafe { core::ptr::read_volatile(&n) };
        if n == 0 || n > CHUNK {
            entry.discard(0);
            return Err(Skip::Malformed);
        }
        // SAFETY: the destination is the record's data array, `n <= CHUNK_BYTES` bytes long.
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
    entry.submit(BPF_RB_NO_WAKEUP as u64);
    count(Counter::RecordsEmitted, 1);
    Ok(())
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
