//! Capture replay allocates nothing per packet once warm (issue 16, "Replay at speed": "no
//! allocation per packet; reuse contexts and maps"; `sluice::node::replay`'s contract: "once
//! warm, a packet allocates nothing").
//!
//! This test binary counts every allocation of its threads (a counting global allocator;
//! the count is per thread, so the test harness's own threads do not disturb it). The
//! capture is every golden prefilter case (every reason, every verdict, the longest and the
//! shortest frames) three times over: the first round warms the replay up (its buffers
//! grow to the largest packet, each verdict and reason gets its counter), and the two
//! rounds after it must allocate nothing at all, packet by packet.

use sluice::codegen::prefilter::NAME;
use sluice::golden::prefilter as gp;
use sluice::node::replay::replay;
use sluice::node::sim::SimNode;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    /// Allocations (and reallocations) made by this thread so far.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: never fail an allocation because the thread is being torn down.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is passed to `System` unchanged; counting touches only a
// thread-local `Cell` that needs no allocation (const-initialized, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from this allocator, that is from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A classic pcap (Ethernet) of `frames`.
fn pcap(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65535, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for (i, f) in frames.iter().enumerate() {
        for v in [i as u32, 0, f.len() as u32, f.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(f);
    }
    out
}

#[test]
fn replay_allocates_nothing_per_packet_once_warm() {
    const ROUNDS: usize = 3;
    let cfg = sluice::model::parse_str(gp::FIXTURE, gp::FIXTURE_ORIGIN).unwrap_or_else(|e| panic!("{e}"));
    let plan = sluice::node::plan(&cfg).unwrap_or_else(|e| panic!("planning {}: {e}", gp::FIXTURE_ORIGIN));
    let mut node = SimNode::new(&plan).unwrap_or_else(|e| panic!("{e}"));
    let cases = gp::cases();
    let frames: Vec<&[u8]> = (0..ROUNDS).flat_map(|_| cases.iter().map(|c| c.packet.as_slice())).collect();
    let capture = pcap(&frames);
    // The allocation count after each packet, into room made beforehand.
    let mut after: Vec<u64> = Vec::with_capacity(frames.len());
    let r =
        replay(&mut node, NAME, &capture, |_| after.push(allocations())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((r.packets, r.errors.len()), (frames.len(), 0), "every golden case runs: {:?}", r.errors);
    assert_eq!(after.len(), frames.len());
    // From the end of the first round on, the count must stand still.
    let warm = cases.len() - 1;
    let allocating: Vec<String> = (warm + 1..after.len())
        .filter(|&i| after[i] != after[i - 1])
        .map(|i| {
            let case = &cases[i % cases.len()];
            format!(
                "packet {i} (case `{}`, {} bytes): {} allocations",
                case.name,
                case.packet.len(),
                after[i] - after[i - 1]
            )
        })
        .collect();
    assert!(
        allocating.is_empty(),
        "{} of {} warm packets allocated:\n{}",
        allocating.len(),
        after.len() - warm - 1,
        allocating.join("\n")
    );
}
