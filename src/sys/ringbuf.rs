//! Reading a `BPF_MAP_TYPE_RINGBUF` map from user space, by mmap, as the kernel lays it
//! out (`kernel/bpf/ringbuf.c`; libbpf's `ringbuf.c` is the reference consumer).
//!
//! Layout of the map's file offsets:
//! - offset 0, one page: the consumer position (`unsigned long`), the only thing user
//!   space writes; mapped read-write.
//! - offset `page_size`, one page: the producer position; then the data area of
//!   `max_entries` bytes (a power of two, a multiple of the page size), which the kernel
//!   maps twice in a row so a record that wraps past the end reads as one contiguous run.
//!   Mapped read-only, `page_size + 2 * max_entries` bytes.
//!
//! A record is an 8-byte header `{u32 len, u32 pg_off}` and `len` bytes of sample, the
//! whole padded to 8 bytes. Bit 31 of `len` (BUSY) marks a record reserved but not yet
//! committed, bit 30 (DISCARD) one the program threw away. Positions only grow; a
//! position modulo `max_entries` is an offset in the data area.
//!
//! Contract:
//! - [`RingBuf::drain`] delivers every committed record in order, skips discarded ones and
//!   stops at the first BUSY one (the records after it are not ready in order). The
//!   producer position and each header are read with acquire semantics; the consumer
//!   position is stored with release semantics after each record, so the kernel reuses
//!   the space only once the callback is done with it.
//! - [`RingBuf::poll`] waits on an epoll set holding the map's descriptor.
//! - The ring holds its own duplicate of the map descriptor: it stays valid when the
//!   [`Map`] it came from is dropped. Both mappings are unmapped on drop.
//! - Failures are [`SysError::Io`] naming the operation (`mmap consumer page`,
//!   `epoll_wait`, ...), the map, and the errno. Nothing here panics.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use super::map::{Map, MapKind};
use super::{Result, SysError};

/// Bit 31 of a record's length: reserved, not yet committed.
pub const BUSY_BIT: u32 = 1 << 31;
/// Bit 30 of a record's length: discarded by the program.
pub const DISCARD_BIT: u32 = 1 << 30;
/// Size of a record header (`BPF_RINGBUF_HDR_SZ`).
pub const HDR_SIZE: usize = 8;

/// The space one record of `len` sample bytes takes in the data area.
pub const fn record_size(len: usize) -> usize {
    (len + HDR_SIZE).div_ceil(8) * 8
}

/// A consumer of one ring buffer map.
#[derive(Debug)]
pub struct RingBuf {
    /// Our own duplicate of the map descriptor (the mappings and the epoll registration
    /// refer to it).
    map_fd: OwnedFd,
    epoll: OwnedFd,
    name: String,
    page_size: usize,
    /// `max_entries`: the size of the data area.
    size: usize,
    /// The consumer page, `page_size` bytes, read-write.
    consumer: NonNull<u8>,
    /// The producer page followed by the data area twice, `producer_len` bytes, read-only.
    producer: NonNull<u8>,
    producer_len: usize,
}

// SAFETY: the raw pointers are to shared mappings owned by this value alone (unmapped in
// `drop`); they are not tied to the creating thread, and every access goes through
// `&mut self` or atomics.
unsafe impl Send for RingBuf {}

impl RingBuf {
    /// Map the ring buffer `map` for reading and register it for [`RingBuf::poll`].
    pub fn new(map: &Map) -> Result<RingBuf> {
        let name = map.name().to_string();
        if map.map_type() != MapKind::RingBuf.type_id() {
            return Err(SysError::invalid(
                format!("map `{name}`"),
                format!("is of type {}, not a ring buffer ({})", map.map_type(), MapKind::RingBuf.type_id()),
            ));
        }
        // SAFETY: sysconf has no memory effects.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page_size = usize::try_from(page_size).unwrap_or(4096);
        let size = map.max_entries() as usize;
        if !size.is_power_of_two() || !size.is_multiple_of(page_size) {
            return Err(SysError::invalid(
                format!("ring buffer `{name}`"),
                format!("max_entries {size} is not a power-of-two multiple of the page size {page_size}"),
            ));
        }
        let producer_len = size
            .checked_mul(2)
            .and_then(|d| d.checked_add(page_size))
            .ok_or_else(|| SysError::invalid(format!("ring buffer `{name}`"), "too large to map"))?;
        let offset = libc::off_t::try_from(page_size)
            .map_err(|_| SysError::invalid(format!("ring buffer `{name}`"), "page size overflows off_t"))?;

        let what = || PathBuf::from(format!("ring buffer map {name}"));
        let io =
            |op: &'static str| SysError::Io { op, path: what(), source: std::io::Error::last_os_error() };
        let map_fd = map.fd().try_clone_to_owned().map_err(|source| SysError::Io {
            op: "dup",
            path: what(),
            source,
        })?;
        let fd = map_fd.as_raw_fd();

        // SAFETY: epoll_create1 only creates a descriptor.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io("epoll_create1"));
        }
        // SAFETY: `epfd` is a new descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 0 };
        // SAFETY: both descriptors are open and owned here; `event` is a live local the
        // kernel only reads.
        if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(io("epoll_ctl"));
        }

        // SAFETY: a fresh shared mapping placed by the kernel (NULL hint) of a descriptor we
        // own; no existing memory is affected.
        let consumer = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page_size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        let consumer = match NonNull::new(consumer.cast::<u8>()) {
            Some(p) if consumer != libc::MAP_FAILED => p,
            _ => return Err(io("mmap consumer page")),
        };
        // SAFETY: as above. The kernel refuses write access to this range; we ask to read.
        let producer = unsafe {
            libc::mmap(std::ptr::null_mut(), producer_len, libc::PROT_READ, libc::MAP_SHARED, fd, offset)
        };
        let producer = match NonNull::new(producer.cast::<u8>()) {
            Some(p) if producer != libc::MAP_FAILED => p,
            _ => {
                let err = io("mmap producer page and data");
                // SAFETY: `consumer` is the page-sized mapping made above, used by nothing else.
                unsafe { libc::munmap(consumer.as_ptr().cast(), page_size) };
                return Err(err);
            }
        };
        Ok(RingBuf { map_fd, epoll, name, page_size, size, consumer, producer, producer_len })
    }

    /// The map's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ring's own descriptor of the map.
    pub fn map_fd(&self) -> BorrowedFd<'_> {
        self.map_fd.as_fd()
    }

    /// Size of the data area in bytes (the map's `max_entries`).
    pub fn capacity(&self) -> usize {
        self.size
    }

    /// How far this consumer has read, in bytes since the map was created.
    pub fn consumer_position(&self) -> u64 {
        self.view().consumer().load(Ordering::Acquire) as u64
    }

    /// How far the producers have reserved, in bytes since the map was created.
    pub fn producer_position(&self) -> u64 {
        self.view().producer().load(Ordering::Acquire) as u64
    }

    /// Bytes written by producers and not yet consumed (records still BUSY included).
    pub fn pending(&self) -> usize {
        let view = self.view();
        let prod = view.producer().load(Ordering::Acquire);
        let cons = view.consumer().load(Ordering::Acquire);
        prod.wrapping_sub(cons)
    }

    /// Wait up to `timeout` for data. True when records are waiting to be drained; false
    /// on timeout or when a signal interrupted the wait.
    pub fn poll(&mut self, timeout: Duration) -> Result<bool> {
        if self.pending() > 0 {
            return Ok(true);
        }
        // Round up so a sub-millisecond timeout still waits instead of spinning.
        let millis = timeout.as_nanos().div_ceil(1_000_000);
        let millis = libc::c_int::try_from(millis).unwrap_or(libc::c_int::MAX);
        let mut events = [libc::epoll_event { events: 0, u64: 0 }];
        // SAFETY: the epoll descriptor is open; `events` is a live buffer of one entry.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 1, millis) };
        if n < 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EINTR) {
                return Ok(false);
            }
            return Err(SysError::Io {
                op: "epoll_wait",
                path: PathBuf::from(format!("ring buffer map {}", self.name)),
                source,
            });
        }
        Ok(n > 0 || self.pending() > 0)
    }

    /// Consume every committed record, handing each sample to `f`; returns how many were
    /// handed over. Discarded records are skipped; a BUSY record ends the drain.
    pub fn drain(&mut self, f: impl FnMut(&[u8])) -> usize {
        self.drain_at_most(usize::MAX, f)
    }

    /// As [`RingBuf::drain`], stopping after `max` records (the rest stay for later).
    pub fn drain_at_most(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let view = self.view();
        // SAFETY: `view` describes this ring's live mappings: the consumer page, the
        // producer page and the double-mapped data area of `size` bytes after it.
        unsafe { consume(&view, max, &mut f) }
    }

    fn view(&self) -> View {
        View {
            consumer: self.consumer.as_ptr().cast::<AtomicUsize>(),
            producer: self.producer.as_ptr().cast::<AtomicUsize>(),
            // SAFETY: the producer mapping is `page_size + 2 * size` bytes long, so one page
            // in is still inside it: the start of the first copy of the data area.
            data: unsafe { self.producer.as_ptr().add(self.page_size) },
            mask: self.size - 1,
        }
    }
}

impl Drop for RingBuf {
    fn drop(&mut self) {
        // SAFETY: both mappings were made in `new` with these lengths and nothing borrowed
        // from them outlives `&mut self` (samples are only lent to `drain` callbacks).
        unsafe {
            libc::munmap(self.consumer.as_ptr().cast(), self.page_size);
            libc::munmap(self.producer.as_ptr().cast(), self.producer_len);
        }
    }
}

/// Where the positions and the data area are.
struct View {
    consumer: *const AtomicUsize,
    producer: *const AtomicUsize,
    /// Start of the data area; `2 * (mask + 1)` bytes are readable from here, the second
    /// half repeating the first.
    data: *const u8,
    mask: usize,
}

impl View {
    fn consumer(&self) -> &AtomicUsize {
        // SAFETY: `consumer` points at the page-aligned, writable consumer position, which
        // lives as long as the mapping (longer than `self`'s borrow).
        unsafe { &*self.consumer }
    }

    fn producer(&self) -> &AtomicUsize {
        // SAFETY: `producer` points at the page-aligned producer position. Its mapping is
        // read-only; only plain atomic loads are made through this reference, which Rust
        // allows on read-only memory for lock-free sizes (std::sync::atomic, "Atomic
        // accesses to read-only memory").
        unsafe { &*self.producer }
    }
}

/// The consume loop of libbpf's `ringbuf_process_ring`.
///
/// # Safety
/// `view` must describe live memory laid out as the kernel's ring buffer: aligned consumer
/// and producer positions, and `2 * (mask + 1)` readable bytes at `data` in which the
/// second half mirrors the first, with `mask + 1` a power of two.
unsafe fn consume(view: &View, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
    let size = view.mask + 1;
    let mut cons = view.consumer().load(Ordering::Acquire);
    let mut delivered = 0;
    loop {
        let prod = view.producer().load(Ordering::Acquire);
        let mut progressed = false;
        while cons < prod {
            if delivered >= max {
                return delivered;
            }
            let off = cons & view.mask;
            // SAFETY: `off < size` and records are 8-byte aligned in a page-aligned area, so
            // the header is an aligned u32 inside the data area. The kernel writes it with
            // release semantics when it commits; we read it with acquire.
            let len = unsafe { (*view.data.add(off).cast::<AtomicU32>()).load(Ordering::Acquire) };
            if len & BUSY_BIT != 0 {
                return delivered;
            }
            let sample_len = (len & !(BUSY_BIT | DISCARD_BIT)) as usize;
            let total = record_size(sample_len);
            if total > size {
                // Not something the kernel writes; stop rather than read out of bounds.
                return delivered;
            }
            cons += total;
            if len & DISCARD_BIT == 0 {
                // SAFETY: `off + total <= (size - 8) + size`, inside the doubly mapped area,
                // so the sample is contiguous even when it wraps. The kernel does not touch
                // a committed record until the consumer position passes it, which happens
                // only after the callback returns.
                let sample = unsafe { std::slice::from_raw_parts(view.data.add(off + HDR_SIZE), sample_len) };
                f(sample);
                delivered += 1;
            }
            view.consumer().store(cons, Ordering::Release);
            progressed = true;
        }
        if !progressed {
            return delivered;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring laid out in ordinary memory: the producer side as a test writes it.
    struct FakeRing {
        consumer: Box<AtomicUsize>,
        producer: Box<AtomicUsize>,
        /// The data area twice (`u64`s for alignment).
        data: Vec<u64>,
        size: usize,
        prod: usize,
    }

    impl FakeRing {
        fn new(size: usize) -> FakeRing {
            FakeRing {
                consumer: Box::new(AtomicUsize::new(0)),
                producer: Box::new(AtomicUsize::new(0)),
                data: vec![0; 2 * size / 8],
                size,
                prod: 0,
            }
        }

        fn bytes(&mut self) -> &mut [u8] {
            // SAFETY: a `u64` buffer viewed as its bytes, same length in bytes.
            unsafe {
                std::slice::from_raw_parts_mut(self.data.as_mut_ptr().cast::<u8>(), self.data.len() * 8)
            }
        }

        /// Append a record with header bits `flags`, mirrored as the double mapping would.
        fn push(&mut self, sample: &[u8], flags: u32) {
            let size = self.size;
            let off = self.prod & (size - 1);
            let mut rec = vec![0u8; record_size(sample.len())];
            rec[0..4].copy_from_slice(&(sample.len() as u32 | flags).to_ne_bytes());
            rec[HDR_SIZE..HDR_SIZE + sample.len()].copy_from_slice(sample);
            let bytes = self.bytes();
            for (i, b) in rec.iter().enumerate() {
                let at = (off + i) % size;
                bytes[at] = *b;
                bytes[at + size] = *b;
            }
            self.prod += rec.len();
            self.producer.store(self.prod, Ordering::Release);
        }

        /// Clear the BUSY bit of the record at position `pos`.
        fn commit(&mut self, pos: usize) {
            let size = self.size;
            let off = pos & (size - 1);
            let bytes = self.bytes();
            bytes[off + 3] &= 0x7f;
            bytes[off + 3 + size] &= 0x7f;
        }

        fn drain(&mut self, max: usize) -> Vec<Vec<u8>> {
            let view = View {
                consumer: &*self.consumer,
                producer: &*self.producer,
                data: self.data.as_ptr().cast(),
                mask: self.size - 1,
            };
            let mut got = Vec::new();
            // SAFETY: the fake holds both positions and a mirrored data area of 2 * size.
            unsafe { consume(&view, max, &mut |s: &[u8]| got.push(s.to_vec())) };
            got
        }
    }

    #[test]
    fn record_sizes_include_the_header_and_padding() {
        assert_eq!(record_size(0), 8);
        assert_eq!(record_size(1), 16);
        assert_eq!(record_size(8), 16);
        assert_eq!(record_size(52), 64);
        assert_eq!(record_size(28), 40);
    }

    #[test]
    fn drains_in_order_skipping_discarded_and_stopping_at_busy() {
        let mut ring = FakeRing::new(256);
        ring.push(b"one", 0);
        ring.push(b"thrown away", DISCARD_BIT);
        ring.push(b"two", 0);
        let busy_at = ring.prod;
        ring.push(b"three", BUSY_BIT);
        ring.push(b"four", 0);
        assert_eq!(ring.drain(usize::MAX), [b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(ring.consumer.load(Ordering::Relaxed), busy_at, "stops in front of the busy record");
        assert!(ring.drain(usize::MAX).is_empty(), "still busy");
        ring.commit(busy_at);
        assert_eq!(ring.drain(usize::MAX), [b"three".to_vec(), b"four".to_vec()]);
        assert_eq!(ring.consumer.load(Ordering::Relaxed), ring.prod);
    }

    #[test]
    fn a_record_that_wraps_reads_contiguously() {
        let mut ring = FakeRing::new(64);
        ring.push(&[1; 20], 0); // 32 bytes
        assert_eq!(ring.drain(usize::MAX).len(), 1);
        ring.push(&[2; 16], 0); // 24 bytes: 32..56
        ring.push(&[3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], 0); // 56..88: wraps
        let got = ring.drain(usize::MAX);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], (3..=20).collect::<Vec<u8>>());
        assert_eq!(ring.consumer.load(Ordering::Relaxed), 88);
    }

    #[test]
    fn drain_at_most_leaves_the_rest() {
        let mut ring = FakeRing::new(256);
        for i in 0..5u8 {
            ring.push(&[i; 4], 0);
        }
        assert_eq!(ring.drain(2), [vec![0; 4], vec![1; 4]]);
        assert_eq!(ring.drain(usize::MAX).len(), 3);
    }

    #[test]
    fn a_corrupt_length_stops_the_drain() {
        let mut ring = FakeRing::new(64);
        ring.push(&[0; 4], 0);
        ring.bytes()[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(ring.drain(usize::MAX).is_empty());
        assert_eq!(ring.consumer.load(Ordering::Relaxed), 0);
    }
}
