//! Prometheus metrics of the operator, served on the admin port.

use std::collections::BTreeSet;
use std::sync::Mutex;
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

/// One VideoDelivery. Not `namespace`/`name`: Prometheus sets `namespace` to the operator's own on scrape and would
/// rename ours to `exported_namespace`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabel {
    delivery_namespace: String,
    delivery: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyStateLabel {
    delivery_namespace: String,
    delivery: String,
    state: &'static str,
}

const KEY_STATES: [&str; 3] = ["pending", "active", "retiring"];

/// What the rotation metrics show of one VideoDelivery's keyring.
pub struct KeyringView {
    /// When the active key ages past `signing.rotationInterval` (Unix seconds).
    pub next_rotation: u64,
    /// When the active key became active (Unix seconds); None while the keyring has no active key.
    pub last_rotation: Option<u64>,
    /// Keys by state: pending, active, retiring.
    pub keys: [i64; 3],
}

pub struct Metrics {
    registry: Registry,
    next_rotation: Family<DeliveryLabel, Gauge>,
    last_rotation: Family<DeliveryLabel, Gauge>,
    keys: Family<KeyStateLabel, Gauge>,
    /// The VideoDeliveries with series, so a deleted one's are removed.
    deliveries: Mutex<BTreeSet<(String, String)>>,
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
            next_rotation: Family::default(),
            last_rotation: Family::default(),
            keys: Family::default(),
            deliveries: Mutex::new(BTreeSet::new()),
        };
        registry.register("reconciles", "Reconciles by result (ok, error)", m.reconciles.clone());
        registry.register("reconcile_duration_seconds", "Time one reconcile took", m.duration.clone());
        registry.register("key_events", "Keyring changes: created, published, promoted, removed", m.key_events.clone());
        registry.register("leader", "1 when this replica is the leader", m.leader.clone());
        registry.register(
            "next_rotation_timestamp_seconds",
            "When the active key of a VideoDelivery ages past signing.rotationInterval and is rotated, in Unix seconds",
            m.next_rotation.clone(),
        );
        registry.register(
            "last_rotation_timestamp_seconds",
            "When the active key of a VideoDelivery became active, in Unix seconds",
            m.last_rotation.clone(),
        );
        registry.register("keys", "Keys in a VideoDelivery's keyring, by state", m.keys.clone());
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

    /// Records a VideoDelivery's keyring after a reconcile.
    pub fn observe_keyring(&self, namespace: &str, name: &str, view: &KeyringView) {
        let d = DeliveryLabel { delivery_namespace: namespace.into(), delivery: name.into() };
        self.next_rotation.get_or_create(&d).set(view.next_rotation as i64);
        match view.last_rotation {
            Some(t) => {
                self.last_rotation.get_or_create(&d).set(t as i64);
            }
            None => {
                self.last_rotation.remove(&d);
            }
        }
        for (state, n) in KEY_STATES.iter().zip(view.keys) {
            let label =
                KeyStateLabel { delivery_namespace: d.delivery_namespace.clone(), delivery: d.delivery.clone(), state };
            self.keys.get_or_create(&label).set(n);
        }
        self.deliveries.lock().unwrap_or_else(|p| p.into_inner()).insert((d.delivery_namespace, d.delivery));
    }

    /// Removes the series of VideoDeliveries for which `keep(namespace, name)` is false (deleted ones).
    pub fn retain_deliveries(&self, keep: impl Fn(&str, &str) -> bool) {
        let mut known = self.deliveries.lock().unwrap_or_else(|p| p.into_inner());
        known.retain(|(ns, name)| {
            if keep(ns, name) {
                return true;
            }
            let d = DeliveryLabel { delivery_namespace: ns.clone(), delivery: name.clone() };
            self.next_rotation.remove(&d);
            self.last_rotation.remove(&d);
            for state in KEY_STATES {
                self.keys.remove(&KeyStateLabel { delivery_namespace: ns.clone(), delivery: name.clone(), state });
            }
            false
        });
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
