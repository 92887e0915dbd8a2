//! Types and names shared by Palisade's eBPF programs (`node-agent-ebpf`) and the node agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, with explicit padding and no `Option` or `bool`, so
//! the kernel and user space agree on every byte. Changing a layout changes both sides at once.
#![no_std]

/// Bytes of TCP payload carried by one ring-buffer record. A larger skb is split into several
/// records (chunks), each with its own `chunk_offset`.
pub const CHUNK_BYTES: usize = 4096;
/// Most chunks one skb is split into; payload past `CHUNK_BYTES * MAX_CHUNKS_PER_SKB` is counted
/// as truncated.
pub const MAX_CHUNKS_PER_SKB: usize = 4;
/// Size of the capture ring buffer in bytes (a power of two, a multiple of the page size).
pub const CAPTURE_RING_BYTES: u32 = 32 * 1024 * 1024;

/// Name of the ring buffer map that carries [`CaptureRecord`]s.
pub const MAP_CAPTURE_RING: &str = "CAPTURE_RING";
/// Name of the per-CPU array of [`CaptureCounters`] (one entry, index 0).
pub const MAP_CAPTURE_COUNTERS: &str = "CAPTURE_COUNTERS";
/// Program attached to a pod cgroup's ingress (packets delivered to the pod's sockets).
pub const PROG_CAPTURE_INGRESS: &str = "palisade_capture_ingress";
/// Program attached to a pod cgroup's egress (packets sent by the pod's sockets).
pub const PROG_CAPTURE_EGRESS: &str = "palisade_capture_egress";

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

/// One ring-buffer record: a header and up to `CHUNK_BYTES` of payload.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CaptureRecord {
    pub header: CaptureHeader,
    pub data: [u8; CHUNK_BYTES],
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
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, #[repr(C)], no padding holes left implicit, every bit pattern valid.
    unsafe impl aya::Pod for super::CaptureHeader {}
    unsafe impl aya::Pod for super::CaptureRecord {}
    unsafe impl aya::Pod for super::CaptureCounters {}
}
