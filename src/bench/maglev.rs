//! The `maglev` part of `sluice bench`: how long a Maglev table build takes (issue 5's target:
//! a service of 1,000 backends in a 16381-slot table in under 10 ms).
//!
//! Contract:
//! - Pure user space: no kernel, no anchor, no root; `sluice bench --parts maglev` runs it
//!   alone anywhere.
//! - The backends are [`BACKENDS`] IPv4 addresses 10.1.0.1, 10.1.0.2, ... port 8080; the
//!   table has [`TableSize::DEFAULT`] slots. Three rows, each [`WARMUP`] untimed builds then
//!   `builds` timed ones (each a full [`Table::build`]: permutations, weights, population, the
//!   returned table): equal weights; weights 1, 2, 3, 4 cycled; and the rebuild after the
//!   first backend is removed (equal weights), which also reports how many slots changed hands.
//! - Figures are wall time of one build: median, fastest, slowest.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use sluice::lb::maglev::{Backend, MaglevError, Table, TableSize};

/// Backends of the benchmarked service.
pub const BACKENDS: usize = 1000;
/// Timed builds per row, by default.
pub const BUILDS: usize = 200;
/// Untimed builds before each row.
const WARMUP: usize = 10;
/// The target for one build, in milliseconds.
pub const TARGET_MS: f64 = 10.0;

/// One row: a kind of build and its times.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildRow {
    pub name: &'static str,
    pub backends: usize,
    /// Milliseconds per build, one sample per timed build.
    pub ms: Vec<f64>,
}

impl BuildRow {
    pub fn median_ms(&self) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min_ms(&self) -> f64 {
        self.ms.iter().copied().fold(f64::INFINITY, f64::min)
    }

    pub fn max_ms(&self) -> f64 {
        self.ms.iter().copied().fold(0.0, f64::max)
    }
}

/// The part's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct MaglevResult {
    pub table_size: u32,
    pub rows: Vec<BuildRow>,
    /// Slots whose backend changed when the first backend was removed.
    pub moved_slots: usize,
    /// Slots that backend held before.
    pub removed_slots: usize,
}

fn backends(weights: &[u32]) -> Vec<Backend> {
    (0..BACKENDS)
        .map(|i| {
            // 10.1.0.1 + i: at most 1,000 addresses, all inside 10.1.0.0/16.
            let addr = Ipv4Addr::from(0x0a01_0001 + i as u32);
            Backend { weight: weights[i % weights.len()], ..Backend::new(IpAddr::V4(addr), 8080) }
        })
        .collect()
}

fn time_builds(name: &'static str, set: &[Backend], builds: usize) -> Result<BuildRow, MaglevError> {
    for _ in 0..WARMUP {
        std::hint::black_box(Table::build(set, TableSize::DEFAULT)?);
    }
    let mut ms = Vec::with_capacity(builds);
    for _ in 0..builds {
        let t = Instant::now();
        std::hint::black_box(Table::build(std::hint::black_box(set), TableSize::DEFAULT)?);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(BuildRow { name, backends: set.len(), ms })
}

/// Runs the part with `builds` timed builds per row.
pub fn measure(builds: usize) -> Result<MaglevResult, MaglevError> {
    let equal = backends(&[1]);
    let weighted = backends(&[1, 2, 3, 4]);
    let rest = &equal[1..];
    let rows = vec![
        time_builds("equal weights", &equal, builds)?,
        time_builds("weights 1, 2, 3, 4", &weighted, builds)?,
        time_builds("rebuild, first backend removed", rest, builds)?,
    ];
    let before = Table::build(&equal, TableSize::DEFAULT)?;
    let after = Table::build(rest, TableSize::DEFAULT)?;
    // `rest[i]` is `equal[i + 1]`.
    let moved_slots = before.slots().iter().zip(after.slots()).filter(|&(&b, &a)| b != a + 1).count();
    let removed_slots = before.slots().iter().filter(|&&b| b == 0).count();
    Ok(MaglevResult { table_size: TableSize::DEFAULT.get(), rows, moved_slots, removed_slots })
}

impl MaglevResult {
    /// This part's section of the report.
    pub fn render(&self, s: &mut String) {
        let _ = writeln!(s, "# sluice bench: Maglev table build\n");
        let builds = self.rows.first().map_or(0, |r| r.ms.len());
        let _ = writeln!(
            s,
            "- {BACKENDS} backends (10.1.0.1 + i, port 8080), M = {} slots; {WARMUP} untimed then {builds} \
             timed `Table::build` calls per row (wall time, one thread)\n",
            self.table_size
        );
        let _ = writeln!(s, "| build | backends | median | fastest | slowest | target | met |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---|---|");
        for r in &self.rows {
            let median = r.median_ms();
            let _ = writeln!(
                s,
                "| {} | {} | {:.3} ms | {:.3} ms | {:.3} ms | < {TARGET_MS} ms | {} |",
                r.name,
                r.backends,
                median,
                r.min_ms(),
                r.max_ms(),
                super::met(median < TARGET_MS)
            );
        }
        let _ = writeln!(
            s,
            "\nRemoving the first backend changed {} of {} slots: the {} it held and {} others ({:.2}% of the table).",
            self.moved_slots,
            self.table_size,
            self.removed_slots,
            self.moved_slots - self.removed_slots.min(self.moved_slots),
            (self.moved_slots - self.removed_slots.min(self.moved_slots)) as f64 * 100.0
                / f64::from(self.table_size)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_reports_every_row() {
        let result = measure(2).unwrap();
        assert_eq!(result.rows.len(), 3);
        assert!(result.rows.iter().all(|r| r.ms.len() == 2));
        // 16381 / 1000: every backend holds 16 or 17 slots, all of which move.
        assert!((16..=17).contains(&result.removed_slots), "{}", result.removed_slots);
        assert!(result.moved_slots >= result.removed_slots);
        let mut s = String::new();
        result.render(&mut s);
        assert!(s.contains("| equal weights | 1000 | "), "{s}");
        assert!(s.contains("| rebuild, first backend removed | 999 | "), "{s}");
    }
}
