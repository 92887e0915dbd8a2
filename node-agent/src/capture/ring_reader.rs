//! The consumer side of one BPF ring buffer (`BPF_MAP_TYPE_RINGBUF`), read through its memory
//! mapping as the kernel documents it (Documentation/bpf/ringbuf.rst): a consumer page the reader
//! writes its position to, then a producer page and the data pages, mapped twice in a row so that
//! a record that wraps around the end is contiguous.
//!
//! Unlike aya's `RingBuf`, a record can be looked at without consuming it (its `RecordSource::peek`)
//! — the merge of the per-CPU rings needs that, to leave a record for the next drain — and the
//! consumer position is published once per drain ([`RingReader::publish`]), not once per record:
//! the programs read it on every reservation, so each store the reader makes is a cache line the
//! producing CPU has to fetch again.

use std::{
    io,
    os::fd::{AsFd, BorrowedFd},
    ptr::NonNull,
    sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering},
};

use aya::maps::MapData;

use super::merge::RecordSource;

/// `BPF_RINGBUF_BUSY_BIT`: the record is reserved and not yet committed.
const BUSY_BIT: u32 = 1 << 31;
/// `BPF_RINGBUF_DISCARD_BIT`: the record was discarded; skip it.
const DISCARD_BIT: u32 = 1 << 30;
/// `BPF_RINGBUF_HDR_SZ`: the length word and the page offset before each record.
const RECORD_HEADER_BYTES: usize = 8;
/// Bytes of the next record fetched into the cache while the current one is processed: its
/// length word, the capture header and the start of the payload (a small API message whole).
const PREFETCH_BYTES: usize = 256;
const CACHE_LINE_BYTES: usize = 64;

/// Asks the CPU to bring `len` bytes at `at` into its cache, without waiting (a hint: it never
/// faults, whatever the address).
fn prefetch(at: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..len).step_by(CACHE_LINE_BYTES) {
        // SAFETY: a prefetch only hints the cache; it reads nothing the program sees and does
        // not fault on any address. `wrapping_add` keeps the address computation defined.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                at.wrapping_add(line).cast::<i8>(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (at, len);
}

/// One shared memory mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, prot: libc::c_int, offset: usize) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::other("mmap offset overflows"))?;
        // SAFETY: a fresh shared mapping of a file descriptor we borrow; the kernel checks the
        // length and offset against the map. Nothing else aliases the returned memory in Rust.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The reader of one ring buffer map.
pub(super) struct RingReader {
    map: MapData,
    consumer: Mapping,
    /// The producer page, then the data pages twice.
    producer: Mapping,
    page: usize,
    /// Data bytes (a power of two).
    size: usize,
    /// Where the next record starts (consumed up to here; published by [`Self::publish`]).
    pos: usize,
    /// The producer position read at the last [`Self::refresh`]: records up to it are looked at.
    limit: usize,
}

// SAFETY: the mappings are owned by the reader and only touched through `&mut self` (or through
// atomics the kernel writes concurrently); moving the reader to another thread is sound.
unsafe impl Send for RingReader {}

impl RingReader {
    /// Maps the ring buffer `map` (its `max_entries` is the data size).
    pub(super) fn new(map: MapData) -> io::Result<Self> {
        let size = map
            .info()
            .map_err(|e| io::Error::other(format!("reading the ring's map info: {e}")))?
            .max_entries() as usize;
        if !size.is_power_of_two() {
            return Err(io::Error::other(format!(
                "ring size {size} is not a power of two"
            )));
        }
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("page size unknown"))?;
        let fd = map.fd().as_fd();
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + 2 * size, libc::PROT_READ, page)?;
        let mut reader = RingReader {
            map,
            consumer,
            producer,
            page,
            size,
            pos: 0,
            limit: 0,
        };
        reader.pos = reader.consumer_pos().load(Ordering::Acquire);
        reader.limit = reader.pos;
        Ok(reader)
    }

    fn consumer_pos(&self) -> &AtomicUsize {
        // SAFETY: the consumer page starts with the kernel's `unsigned long consumer_pos`,
        // page-aligned, and lives as long as `self.consumer`.
        unsafe { self.consumer.ptr.cast::<AtomicUsize>().as_ref() }
    }

    fn producer_pos(&self) -> &AtomicUsize {
        // SAFETY: the producer page starts with the kernel's `unsigned long producer_pos`.
        unsafe { self.producer.ptr.cast::<AtomicUsize>().as_ref() }
    }

    /// Reads how far the producers have reserved: records up to there are looked at until the
    /// next refresh.
    pub(super) fn refresh(&mut self) {
        self.limit = self.producer_pos().load(Ordering::Acquire);
    }

    /// Where the record at ring position `pos` starts in the producer mapping: after the
    /// producer page, at `pos` modulo the data size (below `page + size`).
    fn mapping_offset(&self, pos: usize) -> usize {
        self.page + (pos & (self.size - 1))
    }

    /// The length word (with its busy and discard bits) of the record at the consumer position.
    fn length_word(&self, order: Ordering) -> u32 {
        // SAFETY: the offset is below `page + size`, and the data pages follow the producer page
        // twice, so the record header (8 bytes, 8-aligned) lies inside the mapping.
        unsafe {
            self.producer
                .ptr
                .add(self.mapping_offset(self.pos))
                .cast::<AtomicU32>()
                .as_ref()
        }
        .load(order)
    }

    /// The ring position after the record at `pos` of `len` bytes.
    fn after(pos: usize, len: usize) -> usize {
        pos + (len + RECORD_HEADER_BYTES).next_multiple_of(8)
    }

    /// Moves the consumer position past a record of `len` bytes.
    fn step_over(&mut self, len: usize) {
        self.pos = Self::after(self.pos, len);
    }

    /// Gives the consumed records' room back to the producers. The kernel notifies a waiting
    /// reader only of a record committed at the published position, so after publishing, records
    /// reserved since [`Self::refresh`] may not be notified: the caller refreshes and looks again
    /// (see [`Self::caught_up`]).
    pub(super) fn publish(&mut self) {
        self.consumer_pos().store(self.pos, Ordering::Release);
    }

    /// After [`Self::publish`]: whether the producers have reserved nothing past what was
    /// consumed. The fence orders the published position before the producer position is read,
    /// as the kernel orders its commit before reading the consumer position: either this sees a
    /// new record, or that record's commit sees the reader caught up and notifies it.
    pub(super) fn caught_up(&mut self) -> bool {
        fence(Ordering::SeqCst);
        self.refresh();
        self.pos >= self.limit
    }

    /// Bytes reserved by the producers and not yet consumed.
    pub(super) fn pending_bytes(&self) -> usize {
        self.producer_pos()
            .load(Ordering::Relaxed)
            .saturating_sub(self.consumer_pos().load(Ordering::Relaxed))
    }

    /// Data bytes.
    pub(super) fn size(&self) -> usize {
        self.size
    }

    /// The ring's map.
    pub(super) fn map(&self) -> &MapData {
        &self.map
    }
}

impl RecordSource for RingReader {
    /// The next committed record (its bytes, without the ring's header), skipping discarded
    /// ones; `None` if there is none before the refreshed producer position, or the next one is
    /// still being written.
    fn peek(&mut self) -> Option<&[u8]> {
        while self.pos < self.limit {
            let word = self.length_word(Ordering::Acquire);
            if word & BUSY_BIT != 0 {
                return None;
            }
            let len = (word & !(BUSY_BIT | DISCARD_BIT)) as usize;
            if len > self.size - RECORD_HEADER_BYTES {
                // The kernel never writes this; stop rather than read past the record.
                return None;
            }
            if word & DISCARD_BIT != 0 {
                self.step_over(len);
                continue;
            }
            let start = self.mapping_offset(self.pos) + RECORD_HEADER_BYTES;
            // The kernel wrote the records on another CPU: each is a cache miss when first read.
            // The next one's lines are fetched now, while the caller processes this one.
            let next = Self::after(self.pos, len);
            if next < self.limit {
                let at = self.mapping_offset(next);
                prefetch(self.producer.ptr.as_ptr().wrapping_add(at), PREFETCH_BYTES);
            }
            // SAFETY: `start + len <= page + offset + size <= page + 2 * size`: inside the
            // mapping (the second copy of the data pages holds any part past the end). The
            // committed record is not written again until the consumer position passes it.
            return Some(unsafe { std::slice::from_raw_parts(self.producer.ptr.as_ptr().add(start), len) });
        }
        None
    }

    /// Consumes the record `peek` returned (the caller saw `Some`: its header is committed).
    fn consume(&mut self) {
        let len = (self.length_word(Ordering::Relaxed) & !(BUSY_BIT | DISCARD_BIT)) as usize;
        self.step_over(len);
    }
}

impl AsFd for RingReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.fd().as_fd()
    }
}
