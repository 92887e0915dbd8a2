//! Reading [`palisade_common::CaptureRecordOf`]s from the capture ring buffers (one per CPU and
//! a shared one, see [`CaptureRing`]): chunks (`CaptureRecord`), pages (`PageCaptureRecord`) and
//! small ones (of `TINY_CHUNK_BYTES`, `MEDIUM_CHUNK_BYTES` or `SMALL_CHUNK_BYTES` of payload);
//! all are a header followed by `captured_len` payload bytes.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

use aya::maps::{Map, MapData};
use palisade_common::{CaptureHeader, CHUNK_BYTES, TLS_SESSION_STRUCT_BYTES, TLS_SESSION_WINDOW_BYTES};

use super::{
    merge::{merge, Merged, MERGE_SLACK_NS},
    monotonic_ns,
    ring_reader::RingReader,
};

/// The consumer side of the capture ring buffers: one ring per CPU and the shared ring (for CPUs
/// without a ring of their own, or whose ring is full), merged by timestamp ([`super::merge`]).
///
/// The programs submit with adaptive wake-ups (the kernel notifies only when a record arrives
/// while the reader is caught up with that ring): wait for readiness on [`CaptureRing::as_fd`]
/// (an epoll set of every ring), then drain, and leave some time between drains so that records
/// are read in batches under load.
pub struct CaptureRing {
    /// The shared ring first.
    rings: Vec<RingReader>,
    epoll: OwnedFd,
    bad_records: u64,
    /// Records read, per ring (the shared ring first).
    records_read: Vec<u64>,
    /// The array the per-CPU rings are in (`CAPTURE_RINGS`), if there are any: the TLS programs
    /// write into the same rings.
    per_cpu_outer: Option<MapData>,
}

impl std::fmt::Debug for CaptureRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureRing")
            .field("rings", &self.rings.len())
            .field("bad_records", &self.bad_records)
            .finish_non_exhaustive()
    }
}

/// What one drain did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingDrain {
    /// Records passed to the callback.
    pub delivered: usize,
    /// Records were left in the rings (the limit was reached, some are later than the merge's
    /// watermark, or some arrived while draining): drain again soon rather than wait for a
    /// notification.
    pub more: bool,
}

/// The ring buffer map inside an aya map, for [`CaptureRing::new`].
pub(super) fn ring_map_data(map: Map) -> Result<MapData, String> {
    match map {
        Map::RingBuf(data) => Ok(data),
        _ => Err("not a ring buffer map".into()),
    }
}

impl CaptureRing {
    /// Reads `shared` and the `per_cpu` rings (empty: the shared ring only), which are in the
    /// array `per_cpu_outer`.
    pub(super) fn new(
        shared: MapData,
        per_cpu: Vec<MapData>,
        per_cpu_outer: Option<MapData>,
    ) -> io::Result<Self> {
        let rings = std::iter::once(shared)
            .chain(per_cpu)
            .map(RingReader::new)
            .collect::<io::Result<Vec<_>>>()?;
        // SAFETY: epoll_create1 has no preconditions; the fd is checked and then owned.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh file descriptor nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        for (i, ring) in rings.iter().enumerate() {
            let mut event = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: both descriptors are open; the event is read during the call only.
            let added = unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    ring.as_fd().as_raw_fd(),
                    &mut event,
                )
            };
            if added < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let records_read = vec![0; rings.len()];
        Ok(Self {
            rings,
            epoll,
            bad_records: 0,
            records_read,
            per_cpu_outer,
        })
    }

    /// Drains up to `max` records without blocking, calling `f` with each header and its captured
    /// payload (`&data[..captured_len]`), in timestamp order across the rings.
    ///
    /// Records with a bad length are counted (see [`CaptureRing::bad_records`]) and skipped.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&CaptureHeader, &[u8])) -> RingDrain {
        // With one ring nothing can overtake anything: no watermark.
        let watermark = (self.rings.len() > 1).then(|| monotonic_ns().saturating_sub(MERGE_SLACK_NS));
        for ring in &mut self.rings {
            ring.refresh();
        }
        let (mut bad, mut passed) = (0, 0);
        let per_ring = &mut self.records_read;
        let Merged { delivered, held } = merge(&mut self.rings, max, watermark, |ring, record| {
            per_ring[ring] += 1;
            match parse_record(record) {
                Some((header, payload)) => {
                    f(&header, payload);
                    passed += 1;
                }
                None => bad += 1,
            }
        });
        self.bad_records += bad;
        // Published once per drain; then each ring is checked for records reserved meanwhile,
        // which the kernel may not have notified.
        let mut caught_up = true;
        for ring in &mut self.rings {
            ring.publish();
            caught_up &= ring.caught_up();
        }
        RingDrain {
            delivered: passed,
            more: held || delivered >= max || !caught_up,
        }
    }

    /// The number of rings read: 1 (the shared ring) + one per CPU that has its own.
    pub fn rings(&self) -> usize {
        self.rings.len()
    }

    /// How full the fullest ring is (0 to 1: records not yet consumed over its size), and the
    /// size of all rings together.
    pub fn fill(&self) -> (f64, usize) {
        self.rings.iter().fold((0.0, 0), |(fullest, total), r| {
            let fill = r.pending_bytes() as f64 / r.size() as f64;
            (fullest.max(fill), total + r.size())
        })
    }

    /// Records read from each ring so far (the shared ring first, then by CPU): which rings
    /// carry the traffic.
    pub fn records_per_ring(&self) -> &[u64] {
        &self.records_read
    }

    /// The shared ring's map.
    pub(super) fn shared_ring(&self) -> &MapData {
        self.rings[0].map()
    }

    /// The array of the per-CPU rings, if there are any.
    pub(super) fn per_cpu_rings(&self) -> Option<&MapData> {
        self.per_cpu_outer.as_ref()
    }

    /// The rings, registered with tokio's reactor to wait for records (readable when any
    /// ring's reader was notified). Must be called inside a tokio runtime.
    pub fn into_async(self) -> std::io::Result<tokio::io::unix::AsyncFd<CaptureRing>> {
        // SAFETY: the file descriptor is the epoll set's, owned by `self.epoll`: it stays open
        // and the same for as long as the AsyncFd owns this CaptureRing.
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)
    }

    /// Records skipped so far because their length did not match their header.
    pub fn bad_records(&self) -> u64 {
        self.bad_records
    }
}

/// The epoll set of every ring: readable when a ring's reader was notified.
impl AsFd for CaptureRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }
}

impl AsRawFd for CaptureRing {
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

/// Splits one raw record into its header and payload; `None` if the lengths do not add up.
fn parse_record(bytes: &[u8]) -> Option<(CaptureHeader, &[u8])> {
    let header_len = size_of::<CaptureHeader>();
    let header_bytes = bytes.get(..header_len)?;
    // SAFETY: `header_bytes` holds size_of::<CaptureHeader>() bytes, CaptureHeader is a
    // #[repr(C)] plain-old-data type valid for every bit pattern, and read_unaligned copes with
    // any alignment.
    let header = unsafe { std::ptr::read_unaligned(header_bytes.as_ptr().cast::<CaptureHeader>()) };
    let captured = usize::try_from(header.captured_len).ok()?;
    // The largest payload: a chunk of an skb, or a TLS session record's window and session.
    const MAX_PAYLOAD: usize = if CHUNK_BYTES > TLS_SESSION_PAYLOAD {
        CHUNK_BYTES
    } else {
        TLS_SESSION_PAYLOAD
    };
    const TLS_SESSION_PAYLOAD: usize = TLS_SESSION_WINDOW_BYTES + TLS_SESSION_STRUCT_BYTES;
    if captured > MAX_PAYLOAD {
        return None;
    }
    let payload = bytes.get(header_len..header_len.checked_add(captured)?)?;
    Some((header, payload))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use palisade_common::CaptureRecord;

    fn record(captured_len: u32) -> Vec<u8> {
        let header = CaptureHeader {
            timestamp_ns: 1,
            cgroup_id: 2,
            tcp_seq: 3,
            payload_len: captured_len,
            chunk_offset: 0,
            captured_len,
            source_addr: [0; 16],
            dest_addr: [0; 16],
            source_port: 80,
            dest_port: 1234,
            family: 4,
            direction: 1,
            tcp_flags: 0,
            _padding: [0],
        };
        let mut v = vec![0u8; size_of::<CaptureRecord>()];
        // SAFETY: v is large enough for a header.
        unsafe { std::ptr::write_unaligned(v.as_mut_ptr().cast::<CaptureHeader>(), header) };
        let hl = size_of::<CaptureHeader>();
        for (i, b) in v[hl..].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        v
    }

    #[test]
    fn parses_good_records() {
        let v = record(10);
        let (h, p) = parse_record(&v).unwrap();
        assert_eq!(h.source_port, 80);
        assert_eq!(p.len(), 10);
        assert_eq!(p[3], 3);
        let v = record(CHUNK_BYTES as u32);
        assert_eq!(parse_record(&v).unwrap().1.len(), CHUNK_BYTES);
        // A page record, read from a slice of exactly its size.
        let page = palisade_common::PAGE_CHUNK_BYTES;
        let v = record(page as u32);
        let page_record = size_of::<palisade_common::PageCaptureRecord>();
        assert_eq!(parse_record(&v[..page_record]).unwrap().1.len(), page);
        let v = record(0);
        assert_eq!(parse_record(&v).unwrap().1.len(), 0);
    }

    #[test]
    fn parses_small_records_of_every_size() {
        use palisade_common::{
            CaptureRecordOf, MEDIUM_CHUNK_BYTES, RINGBUF_RECORD_HEADER_BYTES, SMALL_CHUNK_BYTES,
            TINY_CHUNK_BYTES,
        };
        // Each small record fills a ring slot of 128, 256 or 512 bytes with the ring's header.
        let sizes = [
            (
                size_of::<CaptureRecordOf<TINY_CHUNK_BYTES>>(),
                TINY_CHUNK_BYTES,
                128,
            ),
            (
                size_of::<CaptureRecordOf<MEDIUM_CHUNK_BYTES>>(),
                MEDIUM_CHUNK_BYTES,
                256,
            ),
            (
                size_of::<palisade_common::SmallCaptureRecord>(),
                SMALL_CHUNK_BYTES,
                512,
            ),
        ];
        for (record_bytes, payload, slot) in sizes {
            assert_eq!(record_bytes + RINGBUF_RECORD_HEADER_BYTES, slot);
            let v = record(40);
            let (h, p) = parse_record(&v[..record_bytes]).unwrap();
            assert_eq!((h.captured_len, p.len(), p[39]), (40, 40, 39));
            let full = record(payload as u32);
            assert_eq!(parse_record(&full[..record_bytes]).unwrap().1.len(), payload);
            // A small record cannot claim more than it holds.
            let v = record(payload as u32 + 1);
            assert!(parse_record(&v[..record_bytes]).is_none());
        }
    }

    #[test]
    fn rejects_bad_lengths() {
        assert!(parse_record(&[0u8; 10]).is_none());
        let v = record(CHUNK_BYTES as u32 + 1);
        assert!(parse_record(&v).is_none());
        let v = record(100);
        assert!(parse_record(&v[..size_of::<CaptureHeader>() + 50]).is_none());
        let v = record(u32::MAX);
        assert!(parse_record(&v).is_none());
    }
}
