//! Reading [`palisade_common::CaptureRecordOf`]s from the capture ring buffer: full records
//! (`CaptureRecord`) and small ones (of `TINY_CHUNK_BYTES`, `MEDIUM_CHUNK_BYTES` or
//! `SMALL_CHUNK_BYTES` of payload); all are a header followed by `captured_len` payload bytes.

use std::{
    mem::size_of,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
};

use aya::maps::{MapData, RingBuf};
use palisade_common::{CaptureHeader, CHUNK_BYTES};

/// The consumer side of the capture ring buffer.
///
/// The programs submit with adaptive wake-ups (the kernel notifies only when a record arrives
/// while the reader is caught up): wait for readiness on its file descriptor, then drain, and
/// leave some time between drains so that records are read in batches under load.
pub struct CaptureRing {
    ring: RingBuf<MapData>,
    bad_records: u64,
}

impl std::fmt::Debug for CaptureRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureRing")
            .field("bad_records", &self.bad_records)
            .finish_non_exhaustive()
    }
}

impl CaptureRing {
    pub(super) fn new(ring: RingBuf<MapData>) -> Self {
        Self { ring, bad_records: 0 }
    }

    /// Drains up to `max` records without blocking, calling `f` with each header and its captured
    /// payload (`&data[..captured_len]`); returns how many records were passed to `f`.
    ///
    /// Records with a bad length are counted (see [`CaptureRing::bad_records`]) and skipped.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&CaptureHeader, &[u8])) -> usize {
        let mut delivered = 0;
        let mut consumed = 0;
        while consumed < max {
            let Some(item) = self.ring.next() else {
                break;
            };
            consumed += 1;
            match parse_record(&item) {
                Some((header, payload)) => {
                    f(&header, payload);
                    delivered += 1;
                }
                None => self.bad_records += 1,
            }
        }
        delivered
    }

    /// The ring, registered with tokio's reactor to wait for records (readable when it holds
    /// any). Must be called inside a tokio runtime.
    pub fn into_async(self) -> std::io::Result<tokio::io::unix::AsyncFd<CaptureRing>> {
        // SAFETY: the file descriptor is the ring map's, owned by `self.ring`: it stays open and
        // the same for as long as the AsyncFd owns this CaptureRing (nothing replaces the map).
        unsafe { tokio::io::unix::AsyncFd::register_with_interest(self, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)
    }

    /// Records skipped so far because their length did not match their header.
    pub fn bad_records(&self) -> u64 {
        self.bad_records
    }
}

impl AsFd for CaptureRing {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for CaptureRing {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_fd().as_raw_fd()
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
    if captured > CHUNK_BYTES {
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
