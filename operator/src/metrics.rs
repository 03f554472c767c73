//! Prometheus metrics of the operator, served on the admin port.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    duration: Histogram,
    key_events: Family<EventLabel, Counter>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("videodelivery_operator");
        let m = Metrics {
            registry: Registry::default(),
            reconciles: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            key_events: Family::default(),
            leader: Gauge::default(),
        };
        registry.register("reconciles", "Reconciles by result (ok, error)", m.reconciles.clone());
        registry.register("reconcile_duration_seconds", "Time one reconcile took", m.duration.clone());
        registry.register("key_events", "Keyring changes: created, published, promoted, removed", m.key_events.clone());
        registry.register("leader", "1 when this replica is the leader", m.leader.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn observe_reconcile(&self, took: Duration, ok: bool) {
        self.duration.observe(took.as_secs_f64());
        self.reconciles.get_or_create(&ResultLabel { result: if ok { "ok" } else { "error" } }).inc();
    }

    pub fn key_event(&self, event: &'static str) {
        self.key_events.get_or_create(&EventLabel { event }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
