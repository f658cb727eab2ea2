//! The proxy's counters, rendered as Prometheus text.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Latency histogram bucket bounds, microseconds.
const BUCKETS_US: [u64; 10] = [50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 100_000, 1_000_000];

#[derive(Debug, Default)]
pub struct Metrics {
    allowed: AtomicU64,
    denied: AtomicU64,
    malformed: AtomicU64,
    upstream_errors: AtomicU64,
    active: AtomicU64,
    reloads: AtomicU64,
    buckets: [AtomicU64; BUCKETS_US.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    pub fn request(&self, allowed: bool) {
        if allowed { &self.allowed } else { &self.denied }.fetch_add(1, Relaxed);
    }
    pub fn malformed(&self) {
        self.malformed.fetch_add(1, Relaxed);
    }
    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Relaxed);
    }
    pub fn connection_opened(&self) {
        self.active.fetch_add(1, Relaxed);
    }
    pub fn connection_closed(&self) {
        self.active.fetch_sub(1, Relaxed);
    }
    pub fn rules_reloaded(&self) {
        self.reloads.fetch_add(1, Relaxed);
    }
    pub fn latency(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = BUCKETS_US.iter().position(|&b| us <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(us, Relaxed);
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, lines: &[(&str, u64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for (labels, v) in lines {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        counter(
            &mut out,
            "sluice_proxy_requests_total",
            "HTTP requests by verdict.",
            &[
                ("{verdict=\"forwarded\"}", self.allowed.load(Relaxed)),
                ("{verdict=\"denied\"}", self.denied.load(Relaxed)),
                ("{verdict=\"malformed\"}", self.malformed.load(Relaxed)),
            ],
        );
        counter(
            &mut out,
            "sluice_proxy_upstream_errors_total",
            "Upstream connect or send failures.",
            &[("", self.upstream_errors.load(Relaxed))],
        );
        counter(
            &mut out,
            "sluice_proxy_rule_reloads_total",
            "Rule reloads from the node file.",
            &[("", self.reloads.load(Relaxed))],
        );
        out.push_str(&format!(
            "# HELP sluice_proxy_active_connections Client connections open.\n# TYPE sluice_proxy_active_connections gauge\nsluice_proxy_active_connections {}\n",
            self.active.load(Relaxed)
        ));
        out.push_str("# HELP sluice_proxy_request_duration_seconds Time from request head to response head.\n# TYPE sluice_proxy_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS_US.iter().zip(&self.buckets) {
            cumulative += bucket.load(Relaxed);
            out.push_str(&format!(
                "sluice_proxy_request_duration_seconds_bucket{{le=\"{}\"}} {cumulative}\n",
                *bound as f64 / 1e6
            ));
        }
        let count = self.latency_count.load(Relaxed);
        out.push_str(&format!("sluice_proxy_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n"));
        out.push_str(&format!(
            "sluice_proxy_request_duration_seconds_sum {}\n",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        ));
        out.push_str(&format!("sluice_proxy_request_duration_seconds_count {count}\n"));
        out
    }
}
